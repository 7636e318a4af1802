//! The images service, fetch/pull, import/export and garbage collection through the real
//! `ctr` against a real taskd and a real `docker-registry` (tests/support/registry.rs).
//! The registry tests need `docker-registry` and `skopeo` (apt) and fail saying so when
//! they are missing; each takes about a second, so they are part of the default suite.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::time::{Duration, Instant};

use support::Daemon;
use support::registry::{ImageBuilder, LayerBuilder, OciLayout, Registry};
use taskd_proto::containerd::services::events::v1::SubscribeRequest;
use taskd_proto::containerd::services::events::v1::events_client::EventsClient;
use taskd_proto::containerd::services::images::v1 as api;
use taskd_proto::containerd::services::images::v1::images_client::ImagesClient;
use taskd_proto::containerd::types::Descriptor;
use tonic::Request;

fn with_ns<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

fn image(name: &str, digest: &str) -> api::Image {
    api::Image {
        name: name.into(),
        labels: [("team".to_string(), "a".to_string())].into(),
        target: Some(Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 10,
            annotations: Default::default(),
        }),
        ..Default::default()
    }
}

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

type Images = ImagesClient<tonic::transport::Channel>;

fn create_req(image: api::Image) -> api::CreateImageRequest {
    api::CreateImageRequest {
        image: Some(image),
        ..Default::default()
    }
}

/// A daemon and an images client on it.
async fn images_daemon() -> (Daemon, Images) {
    let d = Daemon::start();
    let c = ImagesClient::new(d.channel().await);
    (d, c)
}

/// Creates `example.com/a:1` (target D1) and `example.com/b:1` (target D2) in namespace `t`,
/// both labelled team=a; returns the first as created.
async fn create_a_and_b(c: &mut Images) -> api::Image {
    let a = c
        .create(with_ns("t", create_req(image("example.com/a:1", D1))))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    c.create(with_ns("t", create_req(image("example.com/b:1", D2))))
        .await
        .unwrap();
    a
}

/// A daemon holding the images of [`create_a_and_b`].
async fn daemon_with_a_and_b() -> (Daemon, Images) {
    let (d, mut c) = images_daemon().await;
    create_a_and_b(&mut c).await;
    (d, c)
}

async fn list_names(c: &mut Images, ns: &str, filters: &[&str]) -> Vec<String> {
    let req = api::ListImagesRequest {
        filters: filters.iter().map(ToString::to_string).collect(),
    };
    c.list(with_ns(ns, req))
        .await
        .unwrap()
        .into_inner()
        .images
        .into_iter()
        .map(|i| i.name)
        .collect()
}

/// Sets label team=b on `example.com/a:1` under the mask `labels.team`, with a request that
/// also carries another target (D2), which the mask leaves alone.
async fn relabel_a(c: &mut Images) -> api::Image {
    let mut upd = image("example.com/a:1", D2);
    upd.labels = [("team".to_string(), "b".to_string())].into();
    c.update(with_ns(
        "t",
        api::UpdateImageRequest {
            image: Some(upd),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["labels.team".into()],
            }),
            ..Default::default()
        },
    ))
    .await
    .unwrap()
    .into_inner()
    .image
    .unwrap()
}

/// Deletes `example.com/a:1` over gRPC naming the stale target D2.
async fn delete_a_with_a_stale_target(c: &mut Images) -> tonic::Status {
    c.delete(with_ns(
        "t",
        api::DeleteImageRequest {
            name: "example.com/a:1".into(),
            sync: false,
            target: Some(Descriptor {
                digest: D2.into(),
                ..Default::default()
            }),
        },
    ))
    .await
    .unwrap_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn create_returns_the_image_with_its_creation_time() {
    let (_d, mut c) = images_daemon().await;
    let created = create_a_and_b(&mut c).await;
    assert!(created.created_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn create_of_a_name_that_exists_is_already_exists() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    let err = c
        .create(with_ns("t", create_req(image("example.com/a:1", D1))))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn create_with_an_empty_name_or_a_bad_digest_is_invalid_argument() {
    let (_d, mut c) = images_daemon().await;
    for bad in [image("", D1), image("x", "sha256:nothex")] {
        let err = c.create(with_ns("t", create_req(bad))).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn list_returns_the_namespace_s_images_and_no_other_namespace_s() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    assert_eq!(list_names(&mut c, "t", &[]).await.len(), 2);
    assert!(list_names(&mut c, "other", &[]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn list_filters_by_target_digest() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    let by_digest = list_names(&mut c, "t", &[&format!("target.digest=={D2}")]).await;
    assert_eq!(by_digest, vec!["example.com/b:1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn list_filters_by_a_name_regexp_or_a_label() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    let by_name = list_names(&mut c, "t", &[r#"name~="/a:""#, "labels.team==zzz"]).await;
    assert_eq!(by_name.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn update_with_a_field_mask_changes_only_that_label() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    let updated = relabel_a(&mut c).await;
    assert_eq!(updated.labels.get("team").map(String::as_str), Some("b"));
    assert_eq!(updated.target.unwrap().digest, D1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn ctr_lists_the_images_created_over_grpc() {
    let (d, _c) = daemon_with_a_and_b().await;
    let ls = d.ctr_ok(&["-n", "t", "images", "ls", "-q"]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec!["example.com/a:1", "example.com/b:1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn a_namespace_holding_images_cannot_be_deleted() {
    let (d, _c) = daemon_with_a_and_b().await;
    let out = d.ctr(&["namespaces", "rm", "t"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 images"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn delete_naming_a_stale_target_is_not_found() {
    let (_d, mut c) = daemon_with_a_and_b().await;
    let err = delete_a_with_a_stale_target(&mut c).await;
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn an_image_removed_with_ctr_is_not_found() {
    let (d, mut c) = daemon_with_a_and_b().await;
    d.ctr_ok(&["-n", "t", "images", "rm", "--sync", "example.com/a:1"]);
    let err = c
        .get(with_ns(
            "t",
            api::GetImageRequest {
                name: "example.com/a:1".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

/// One sequence: the events come in the order of the calls, and the failed calls in between
/// (a duplicate, an invalid image, a stale delete) publish nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn create_update_and_delete_publish_image_events_in_order_and_failures_none() {
    let (d, mut c) = images_daemon().await;
    let mut events = EventsClient::new(d.channel().await)
        .subscribe(SubscribeRequest {
            filters: vec![r#"topic~="^/images/""#.into()],
        })
        .await
        .unwrap()
        .into_inner();
    create_a_and_b(&mut c).await;
    for bad in [image("example.com/a:1", D1), image("", D1)] {
        c.create(with_ns("t", create_req(bad))).await.unwrap_err();
    }
    relabel_a(&mut c).await;
    delete_a_with_a_stale_target(&mut c).await;
    d.ctr_ok(&["-n", "t", "images", "rm", "--sync", "example.com/a:1"]);

    let mut topics = Vec::new();
    while topics.len() < 4 {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("image events")
            .unwrap()
            .unwrap();
        topics.push(e.topic);
    }
    assert_eq!(
        topics,
        vec![
            "/images/create",
            "/images/create",
            "/images/update",
            "/images/delete"
        ]
    );
}

/// Polls `f` until it is true (the garbage collector runs in the background).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn blob_count(d: &Daemon) -> usize {
    std::fs::read_dir(d.root.join("io.containerd.content.v1.content/blobs/sha256"))
        .map(std::iter::Iterator::count)
        .unwrap_or(0)
}

#[test]
#[ignore = "e2e: needs ctr (containerd), docker-registry, skopeo"]
fn ctr_fetch_export_rm_import_and_gc_against_a_local_registry() {
    let reg = Registry::start();
    let (reference, built) = reg.push_busybox("busybox", "latest");
    let d = Daemon::start_with("[plugins.\"io.containerd.internal.v1.gc\"]\ninterval_ms = 200\n");
    let fetch = d.ctr_ok(&["-n", "p", "content", "fetch", "--plain-http", &reference]);
    assert!(fetch.contains("done"), "{fetch}");
    let ls = d.ctr_ok(&["-n", "p", "images", "ls"]);
    assert!(
        ls.contains(&reference) && ls.contains(&built.manifest.digest),
        "{ls}"
    );
    let content = d.ctr_ok(&["-n", "p", "content", "ls", "-q"]);
    for b in built.blobs() {
        assert!(content.contains(&b.digest), "{} missing:\n{content}", b.digest);
    }
    // The manifest carries the GC labels ctr set while fetching.
    let labels = d.ctr_ok(&["-n", "p", "content", "ls"]);
    assert!(labels.contains("containerd.io/gc.ref.content.config"), "{labels}");
    // The lease ctr used is gone; nothing in progress.
    assert!(d.ctr_ok(&["-n", "p", "content", "active"]).lines().count() <= 1);

    let export = d.dir.join("export.tar");
    d.ctr_ok(&[
        "-n",
        "p",
        "images",
        "export",
        export.to_str().unwrap(),
        &reference,
    ]);

    // Removing the image collects its blobs (synchronously with --sync).
    d.ctr_ok(&["-n", "p", "images", "rm", "--sync", &reference]);
    assert!(d.ctr_ok(&["-n", "p", "content", "ls", "-q"]).trim().is_empty());
    assert_eq!(blob_count(&d), 0);

    // Import the export back (no unpack: that is the snapshotter's part).
    let out = d.ctr_ok(&[
        "-n",
        "p",
        "images",
        "import",
        "--no-unpack",
        export.to_str().unwrap(),
    ]);
    assert!(
        out.contains(&reference) || d.ctr_ok(&["-n", "p", "images", "ls", "-q"]).contains(&reference),
        "{out}"
    );
    // The manifest, config and layer, plus the index the importer writes (unreferenced).
    assert!(blob_count(&d) >= 3);

    // An image removed without --sync is collected by the background run.
    d.ctr_ok(&["-n", "p", "images", "rm", &reference]);
    eventually("blobs of the removed image to be collected", || {
        blob_count(&d) == 0
    });
}

#[test]
#[ignore = "e2e: needs ctr (containerd), docker-registry, skopeo"]
fn ctr_import_of_a_built_oci_archive_and_multi_arch_fetch() {
    // An OCI archive built by the harness, imported with a base name.
    let img = ImageBuilder {
        layers: vec![LayerBuilder::new().dir("etc").file("etc/hello", "hi\n")],
        entrypoint: vec!["/bin/cat".into()],
        cmd: vec!["/etc/hello".into()],
        user: "65534".into(),
        working_dir: "/etc".into(),
        ..Default::default()
    }
    .build();
    let mut layout = OciLayout::new();
    layout.add_image("v1", &img);
    let d = Daemon::start();
    let archive = d.dir.join("oci.tar");
    std::fs::write(&archive, layout.tar()).unwrap();
    d.ctr_ok(&[
        "-n",
        "i",
        "images",
        "import",
        "--no-unpack",
        "--base-name",
        "example.com/hello",
        archive.to_str().unwrap(),
    ]);
    let ls = d.ctr_ok(&["-n", "i", "images", "ls"]);
    assert!(
        ls.contains("example.com/hello:v1") && ls.contains(&img.manifest.digest),
        "{ls}"
    );
    let config = d.ctr_ok(&["-n", "i", "content", "get", &img.config.digest]);
    assert!(config.contains("\"User\":\"65534\""), "{config}");

    // A multi-arch index in the registry: fetch resolves linux/amd64 and records the index.
    let reg = Registry::start();
    let arm = ImageBuilder {
        architecture: "arm64".into(),
        layers: vec![LayerBuilder::new().file("arch", "arm64\n")],
        ..Default::default()
    }
    .build();
    let mut layout = OciLayout::new();
    let idx = layout.add_index("multi", &[&img, &arm]);
    let reference = reg.push(&layout, "multi", "multi", "latest");
    d.ctr_ok(&[
        "-n",
        "m",
        "content",
        "fetch",
        "--plain-http",
        "--platform",
        "linux/amd64",
        &reference,
    ]);
    let ls = d.ctr_ok(&["-n", "m", "images", "ls"]);
    assert!(ls.contains(&idx.digest) && ls.contains("linux/amd64"), "{ls}");
    let content = d.ctr_ok(&["-n", "m", "content", "ls", "-q"]);
    assert!(content.contains(&img.layers[0].digest), "{content}");
    assert!(
        !content.contains(&arm.layers[0].digest),
        "arm64 layer fetched:\n{content}"
    );
}

/// `ctr images pull` drives content, leases, images, snapshots and diff; `ctr run --rm`
/// prints `hi`; removing the image
/// collects its blobs and its snapshots.
#[test]
#[ignore = "e2e: needs root, runc, the runc shim, ctr, docker-registry, skopeo"]
fn ctr_images_pull_run_echo_hi_then_rm_collects_blobs_and_snapshots() {
    let reg = Registry::start();
    let (reference, built) = reg.push_busybox("busybox", "latest");
    let d = Daemon::start();
    let out = d.ctr_ok(&["-n", "p", "images", "pull", "--plain-http", &reference]);
    assert!(out.contains("unpacking linux/amd64"), "{out}");
    let snapshots = |d: &Daemon| -> Vec<String> {
        d.ctr_ok(&["-n", "p", "snapshots", "ls"])
            .lines()
            .skip(1)
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect()
    };
    let snaps = snapshots(&d);
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    assert!(snaps[0].contains("Committed"), "{snaps:?}");
    let check = d.ctr_ok(&["-n", "p", "images", "check"]);
    assert!(
        check.contains("complete") && check.trim_end().ends_with("true"),
        "{check}"
    );
    // The config blob names the unpacked chain for the collector.
    let labels = d.ctr_ok(&["-n", "p", "content", "ls"]);
    let config_line = labels
        .lines()
        .find(|l| l.starts_with(&built.config.digest))
        .expect("config blob listed");
    assert!(
        config_line.contains("containerd.io/gc.ref.snapshot."),
        "{config_line}"
    );

    // And the image runs (tasks service, runc shim).
    support::require(&[support::Need::Root]);
    let hi = d.ctr_ok(&["-n", "p", "run", "--rm", &reference, "t1", "echo", "hi"]);
    assert_eq!(hi, "hi\n");
    assert_eq!(snapshots(&d).len(), 1, "the container's snapshot went with --rm");

    d.ctr_ok(&["-n", "p", "images", "rm", "--sync", &reference]);
    assert_eq!(blob_count(&d), 0);
    assert!(snapshots(&d).is_empty(), "{:?}", snapshots(&d));
    assert!(d.ctr_ok(&["-n", "p", "content", "ls", "-q"]).trim().is_empty());
}
