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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn images_service_crud_filters_field_mask_and_events() {
    let d = Daemon::start();
    let ch = d.channel().await;
    let mut events = EventsClient::new(ch.clone())
        .subscribe(SubscribeRequest {
            filters: vec![r#"topic~="^/images/""#.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let mut c = ImagesClient::new(ch);

    let created = c
        .create(with_ns(
            "t",
            api::CreateImageRequest {
                image: Some(image("example.com/a:1", D1)),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap();
    assert!(created.created_at.is_some());
    let err = c
        .create(with_ns(
            "t",
            api::CreateImageRequest {
                image: Some(image("example.com/a:1", D1)),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    c.create(with_ns(
        "t",
        api::CreateImageRequest {
            image: Some(image("example.com/b:1", D2)),
            ..Default::default()
        },
    ))
    .await
    .unwrap();
    // Invalid: empty name, bad digest.
    for bad in [image("", D1), image("x", "sha256:nothex")] {
        let err = c
            .create(with_ns(
                "t",
                api::CreateImageRequest {
                    image: Some(bad),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    }

    let list = |filters: Vec<&str>| api::ListImagesRequest {
        filters: filters.into_iter().map(String::from).collect(),
    };
    let all = c
        .list(with_ns("t", list(vec![])))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(all.len(), 2);
    let by_digest = c
        .list(with_ns("t", list(vec![&format!("target.digest=={D2}")])))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(by_digest.len(), 1);
    assert_eq!(by_digest[0].name, "example.com/b:1");
    let by_name = c
        .list(with_ns("t", list(vec![r#"name~="/a:""#, "labels.team==zzz"])))
        .await
        .unwrap()
        .into_inner()
        .images;
    assert_eq!(by_name.len(), 1);
    assert!(
        c.list(with_ns("other", list(vec![])))
            .await
            .unwrap()
            .into_inner()
            .images
            .is_empty()
    );

    // Update only one label: target untouched.
    let mut upd = image("example.com/a:1", D2);
    upd.labels = [("team".to_string(), "b".to_string())].into();
    let updated = c
        .update(with_ns(
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
        .unwrap();
    assert_eq!(updated.labels.get("team").map(String::as_str), Some("b"));
    assert_eq!(updated.target.unwrap().digest, D1);

    // ctr sees them.
    let ls = d.ctr_ok(&["-n", "t", "images", "ls", "-q"]);
    assert_eq!(
        ls.lines().collect::<Vec<_>>(),
        vec!["example.com/a:1", "example.com/b:1"]
    );

    // A namespace with images cannot be deleted.
    let out = d.ctr(&["namespaces", "rm", "t"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("2 images"));

    // Delete with a stale target is NotFound; then delete for real.
    let err = c
        .delete(with_ns(
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
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
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
