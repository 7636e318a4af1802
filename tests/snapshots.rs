//! The snapshots and diff services against the real daemon: Debian's `ctr` 1.6 drives
//! `snapshots prepare/ls/mounts/tree/info/usage/commit/view/label/rm` on both snapshotters,
//! the printed mount commands are run for real (overlay as root), and a tonic client covers
//! List filters, Update masks, leases, and the Diff service's errors.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/rootfs.rs"]
mod rootfs;
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::Daemon;
use taskd_proto::containerd::services::diff::v1 as diff;
use taskd_proto::containerd::services::leases::v1 as leases;
use taskd_proto::containerd::services::snapshots::v1 as snapshots;
use taskd_proto::containerd::types as ctypes;
use tonic::Request;

fn with_ns<T>(msg: T, ns: &str) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

/// Runs a `mount -t TYPE SRC TARGET -o OPTS` line as printed by `ctr snapshots mounts`,
/// with TARGET replaced; returns a guard that unmounts that path.
struct Mounted(PathBuf);

impl Mounted {
    fn run(line: &str, at: &Path) -> Mounted {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[0], "mount", "unexpected mount line {line:?}");
        let (ty, src, opts) = (words[2], words[3], words[6]);
        std::fs::create_dir_all(at).unwrap();
        // ctr prints "bind"/"rbind" as a type; mount(8) wants --bind.
        let mut c = Command::new("mount");
        if ty == "bind" {
            c.args(["--rbind", src]).arg(at);
            if opts.split(',').any(|o| o == "ro") {
                let st = c.status().unwrap();
                assert!(st.success());
                let st = Command::new("mount")
                    .args(["-o", "remount,bind,ro"])
                    .arg(at)
                    .status()
                    .unwrap();
                assert!(st.success());
                return Mounted(at.to_owned());
            }
        } else {
            c.args(["-t", ty, src]).arg(at).args(["-o", opts]);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn prereqs() {
    support::require(&[
        support::Need::Root,
        support::Need::Bin("ctr", "containerd"),
        support::Need::Bin("mount", "mount"),
    ]);
}

fn ctr_sn(d: &Daemon, sn: &str, args: &[&str]) -> String {
    ctr_sn_in(d, "default", sn, args)
}

/// `ctr -n NS snapshots --snapshotter SN ARGS...`.
fn ctr_sn_in(d: &Daemon, ns: &str, sn: &str, args: &[&str]) -> String {
    let mut all = vec!["-n", ns, "snapshots", "--snapshotter", sn];
    all.extend_from_slice(args);
    d.ctr_ok(&all)
}

fn ctr_sn_err(d: &Daemon, sn: &str, args: &[&str]) -> String {
    let mut all = vec!["snapshots", "--snapshotter", sn];
    all.extend_from_slice(args);
    let out = d.ctr(&all);
    assert!(!out.status.success(), "ctr {all:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// prepare → write through the real mount → commit → prepare a child → the child's real
/// mount shows the parent's file; plus ls, tree, info, usage, label, view, rm.
fn ctr_lifecycle(d: &Daemon, sn: &str) {
    let mnt = d.dir.join(format!("mnt-{sn}"));
    ctr_sn(d, sn, &["prepare", "base", ""]);
    let line = ctr_sn(d, sn, &["mounts", "/TARGET", "base"]);
    assert!(line.contains("bind") && line.contains("rw,rbind"), "{line}");
    {
        let _m = Mounted::run(line.trim(), &mnt);
        std::fs::write(mnt.join("hello"), b"from base").unwrap();
    }
    ctr_sn(d, sn, &["commit", "base-c", "base"]);
    ctr_sn(d, sn, &["prepare", "child", "base-c"]);
    ctr_sn(d, sn, &["prepare", "child2", "base-c"]);
    let line = ctr_sn(d, sn, &["mounts", "/TARGET", "child"]);
    if sn == "overlayfs" {
        assert!(line.starts_with("mount -t overlay overlay /TARGET -o "), "{line}");
        for o in ["workdir=", "upperdir=", "lowerdir="] {
            assert!(line.contains(o), "{o} missing in {line}");
        }
    } else {
        assert!(line.contains("-t bind") && line.contains("rw,rbind"), "{line}");
    }
    {
        let _m = Mounted::run(line.trim(), &mnt);
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from base");
        std::fs::write(mnt.join("child-file"), vec![7u8; 100 * 1024]).unwrap();
    }

    let ls = ctr_sn(d, sn, &["ls"]);
    let rows: Vec<Vec<&str>> = ls
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(rows.contains(&vec!["base-c", "Committed"]), "{ls}");
    assert!(rows.contains(&vec!["child", "base-c", "Active"]), "{ls}");
    let tree = ctr_sn(d, sn, &["tree"]);
    assert!(tree.contains("base-c") && tree.contains("\\_ child"), "{tree}");

    let info = ctr_sn(d, sn, &["info", "child"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["Kind"], "Active");
    assert_eq!(v["Parent"], "base-c");
    assert!(v["Labels"]["containerd.io/gc.root"].is_string(), "{info}");

    let usage = ctr_sn(d, sn, &["usage", "-b", "child"]);
    let size: i64 = usage
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("usage output {usage:?}"));
    assert!(size >= 100 * 1024, "{usage}");

    ctr_sn(d, sn, &["label", "base-c", "team=storage"]);
    let info: serde_json::Value = serde_json::from_str(&ctr_sn(d, sn, &["info", "base-c"])).unwrap();
    assert_eq!(info["Labels"]["team"], "storage");

    ctr_sn(d, sn, &["view", "ro", "base-c"]);
    let line = ctr_sn(d, sn, &["mounts", "/TARGET", "ro"]);
    assert!(line.contains("ro,rbind"), "{line}");

    // A parent with children cannot go.
    let err = ctr_sn_err(d, sn, &["rm", "base-c"]);
    assert!(
        err.contains("failed precondition") && err.contains("child"),
        "{err}"
    );
    let err = ctr_sn_err(d, sn, &["prepare", "child", "base-c"]);
    assert!(err.contains("already exists"), "{err}");
    let err = ctr_sn_err(d, sn, &["prepare", "x", "missing"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn ctr_drives_both_snapshotters_and_state_survives_kill9() {
    prereqs();
    let mut d = Daemon::start();
    let plugins = d.ctr_ok(&["plugins", "ls"]);
    for p in ["overlayfs", "native", "snapshots", "walking", "diff"] {
        assert!(
            plugins
                .lines()
                .any(|l| l.contains(p) && l.trim_end().ends_with("ok")),
            "{p} not ok:\n{plugins}"
        );
    }
    for sn in ["overlayfs", "native"] {
        ctr_lifecycle(&d, sn);
    }
    // The namespace holds snapshots: it cannot be deleted.
    let out = d.ctr(&["namespaces", "rm", "default"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("snapshots (overlayfs)") && err.contains("snapshots (native)"),
        "{err}"
    );

    // Survives kill -9: records and directories.
    d.kill9();
    d.restart();
    let ls = ctr_sn(&d, "overlayfs", &["ls"]);
    assert!(ls.contains("child2"), "{ls}");
    let mnt = d.dir.join("mnt-after");
    let line = ctr_sn(&d, "overlayfs", &["mounts", "/TARGET", "child2"]);
    {
        let _m = Mounted::run(line.trim(), &mnt);
        assert_eq!(std::fs::read(mnt.join("hello")).unwrap(), b"from base");
    }

    // Children first, then the parent; the namespace can go once empty.
    for sn in ["overlayfs", "native"] {
        ctr_sn(&d, sn, &["rm", "child", "child2", "ro"]);
        ctr_sn(&d, sn, &["rm", "base-c"]);
        assert_eq!(
            ctr_sn(&d, sn, &["ls"]).lines().count(),
            1,
            "only the header is left"
        );
    }
    let dirs = std::fs::read_dir(d.root.join("io.containerd.snapshotter.v1.overlayfs/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 0, "removed snapshots leave no directories");
    d.ctr_ok(&["namespaces", "rm", "default"]);
    d.stop();
}

type SnClient = snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel>;

/// The namespace the gRPC tests below work in.
const NS: &str = "grpc-test";

/// A daemon (after the root/ctr/mount checks), its channel and a snapshots client.
async fn grpc_daemon() -> (Daemon, tonic::transport::Channel, SnClient) {
    prereqs();
    let d = Daemon::start();
    let ch = d.channel().await;
    let sn = SnClient::new(ch.clone());
    (d, ch, sn)
}

fn prepare(key: &str, parent: &str, labels: &[(&str, &str)]) -> snapshots::PrepareSnapshotRequest {
    snapshots::PrepareSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// Prepare `prepared` under the lease `lease` (the `containerd-lease` header).
async fn prepare_under_lease(
    sn: &mut SnClient,
    prepared: snapshots::PrepareSnapshotRequest,
    lease: &str,
) -> Result<tonic::Response<snapshots::PrepareSnapshotResponse>, tonic::Status> {
    let mut req = with_ns(prepared, NS);
    req.metadata_mut()
        .insert("containerd-lease", lease.parse().unwrap());
    sn.prepare(req).await
}

/// Commit the active snapshot `a` as `A` with the label tier=base.
async fn commit_a(sn: &mut SnClient) {
    sn.commit(with_ns(
        snapshots::CommitSnapshotRequest {
            snapshotter: "overlayfs".into(),
            name: "A".into(),
            key: "a".into(),
            labels: [("tier".to_string(), "base".to_string())].into(),
        },
        NS,
    ))
    .await
    .unwrap();
}

/// The committed snapshot `A` (label tier=base) and the active children `c000`..`c{n-1}`
/// on it.
async fn committed_a_with_children(sn: &mut SnClient, n: usize) {
    sn.prepare(with_ns(prepare("a", "", &[("app", "web")]), NS))
        .await
        .unwrap();
    commit_a(sn).await;
    for i in 0..n {
        sn.prepare(with_ns(prepare(&format!("c{i:03}"), "A", &[]), NS))
            .await
            .unwrap();
    }
}

/// The whole `List` of the overlayfs snapshotter under `filters`, as the batches it came in.
async fn list_batches(
    sn: &mut SnClient,
    filters: Vec<String>,
) -> Result<Vec<Vec<snapshots::Info>>, tonic::Status> {
    let req = snapshots::ListSnapshotsRequest {
        snapshotter: "overlayfs".into(),
        filters,
    };
    let mut stream = sn.list(with_ns(req, NS)).await?.into_inner();
    let mut batches = Vec::new();
    while let Some(m) = stream.message().await? {
        batches.push(m.info);
    }
    Ok(batches)
}

/// An update of snapshot `A` that sets `labels` under the mask `paths`, and tries to change
/// the parent and the kind (which the mask decides whether to touch).
fn update_a(labels: &[(&str, &str)], paths: &[&str]) -> snapshots::UpdateSnapshotRequest {
    snapshots::UpdateSnapshotRequest {
        snapshotter: "overlayfs".into(),
        info: Some(snapshots::Info {
            name: "A".into(),
            parent: "ignored".into(),
            kind: snapshots::Kind::Active as i32,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(std::string::ToString::to_string).collect(),
        }),
    }
}

/// A diff Apply of a made-up blob of `media_type` onto `mounts`.
fn apply(mounts: Vec<ctypes::Mount>, media_type: &str) -> diff::ApplyRequest {
    diff::ApplyRequest {
        diff: Some(ctypes::Descriptor {
            media_type: media_type.into(),
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            size: 10,
            annotations: HashMap::new(),
        }),
        mounts,
        payloads: HashMap::new(),
        sync_fs: false,
    }
}

const LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The mounts of the active snapshot `key`.
async fn mounts_of(sn: &mut SnClient, key: &str) -> Vec<ctypes::Mount> {
    sn.mounts(with_ns(
        snapshots::MountsRequest {
            snapshotter: "overlayfs".into(),
            key: key.into(),
        },
        NS,
    ))
    .await
    .unwrap()
    .into_inner()
    .mounts
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn prepare_without_a_snapshotter_is_invalid_argument() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    let mut p = prepare("k", "", &[]);
    p.snapshotter = String::new();
    let e = sn.prepare(with_ns(p, NS)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("snapshotter argument missing"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn prepare_on_a_snapshotter_not_loaded_names_it() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    let mut p = prepare("k", "", &[]);
    p.snapshotter = "zfs".into();
    let e = sn.prepare(with_ns(p, NS)).await.unwrap_err();
    assert!(e.message().contains("snapshotter not loaded: zfs"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn a_lease_in_the_header_holds_the_prepared_snapshot() {
    let (_d, ch, mut sn) = grpc_daemon().await;
    let mut lc = leases::leases_client::LeasesClient::new(ch);
    lc.create(with_ns(
        leases::CreateRequest {
            id: "l1".into(),
            labels: HashMap::new(),
        },
        NS,
    ))
    .await
    .unwrap();
    prepare_under_lease(&mut sn, prepare("a", "", &[("app", "web")]), "l1")
        .await
        .unwrap();
    let res = lc
        .list_resources(with_ns(leases::ListResourcesRequest { id: "l1".into() }, NS))
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].id, "a");
    assert_eq!(res[0].r#type, "snapshots/overlayfs");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn prepare_under_an_unknown_lease_is_not_found_and_creates_nothing() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    let e = prepare_under_lease(&mut sn, prepare("b", "", &[]), "no-such-lease")
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let e = sn
        .stat(with_ns(
            snapshots::StatSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "b".into(),
            },
            NS,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::NotFound,
        "nothing created under an unknown lease"
    );
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn prepare_and_commit_publish_events_and_a_failed_prepare_publishes_none() {
    let (_d, ch, mut sn) = grpc_daemon().await;
    let mut events = taskd_proto::containerd::services::events::v1::events_client::EventsClient::new(ch)
        .subscribe(taskd_proto::containerd::services::events::v1::SubscribeRequest {
            filters: vec![format!("namespace=={NS},topic~=^/snapshot/")],
        })
        .await
        .unwrap()
        .into_inner();
    prepare_under_lease(&mut sn, prepare("b", "", &[]), "no-such-lease")
        .await
        .unwrap_err();
    sn.prepare(with_ns(prepare("a", "", &[("app", "web")]), NS))
        .await
        .unwrap();
    commit_a(&mut sn).await;
    // The events: prepare of "a" (the failed one under an unknown lease published nothing),
    // then the commit.
    let mut next = async || {
        tokio::time::timeout(std::time::Duration::from_secs(20), events.message())
            .await
            .expect("an event within 20s")
            .unwrap()
            .unwrap()
    };
    let e = next().await;
    assert_eq!(e.topic, "/snapshot/prepare");
    let ev = <taskd_proto::containerd::events::SnapshotPrepare as prost::Message>::decode(
        &e.event.unwrap().value[..],
    )
    .unwrap();
    assert_eq!((ev.key.as_str(), ev.snapshotter.as_str()), ("a", "overlayfs"));
    let e = next().await;
    assert_eq!(e.topic, "/snapshot/commit");
    let ev = <taskd_proto::containerd::events::SnapshotCommit as prost::Message>::decode(
        &e.event.unwrap().value[..],
    )
    .unwrap();
    assert_eq!((ev.key.as_str(), ev.name.as_str()), ("a", "A"));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn list_streams_in_batches_of_a_hundred() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 150).await;
    let sizes: Vec<usize> = list_batches(&mut sn, vec![])
        .await
        .unwrap()
        .iter()
        .map(Vec::len)
        .collect();
    assert_eq!(sizes, vec![100, 51]);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn list_filters_in_containerd_syntax_match_any_of_them() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 10).await;
    let filters = vec!["kind==Committed".into(), "name==c007".into()];
    let names: Vec<String> = list_batches(&mut sn, filters)
        .await
        .unwrap()
        .into_iter()
        .flatten()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, vec!["A", "c007"]);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn list_with_a_malformed_filter_is_invalid_argument() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    let e = list_batches(&mut sn, vec!["name==".into(), "(".into()])
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn update_with_a_field_mask_sets_only_that_label() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 0).await;
    let info = sn
        .update(with_ns(update_a(&[("x", "1")], &["labels.x"]), NS))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.labels.get("tier").map(String::as_str), Some("base"));
    assert_eq!(info.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(info.parent, "");
    assert_eq!(info.kind, snapshots::Kind::Committed as i32);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn update_of_an_immutable_field_is_invalid_argument() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 0).await;
    let e = sn
        .update(with_ns(update_a(&[], &["parent"]), NS))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn remove_of_a_snapshot_with_children_is_failed_precondition() {
    let (_d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 1).await;
    let e = sn
        .remove(with_ns(
            snapshots::RemoveSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "A".into(),
            },
            NS,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn cleanup_removes_directories_no_snapshot_names() {
    let (d, _ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 1).await;
    let orphan = d
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots/999999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    sn.cleanup(with_ns(
        snapshots::CleanupRequest {
            snapshotter: "overlayfs".into(),
        },
        NS,
    ))
    .await
    .unwrap();
    assert!(!orphan.exists());
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_apply_refuses_mounts_outside_the_snapshotters() {
    let (_d, ch, _sn) = grpc_daemon().await;
    let mut df = diff::diff_client::DiffClient::new(ch);
    let host = vec![ctypes::Mount {
        r#type: "bind".into(),
        source: "/etc".into(),
        target: String::new(),
        options: vec!["rw".into(), "rbind".into()],
    }];
    let e = df
        .apply(with_ns(apply(host, LAYER_TAR_GZIP), NS))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("not a snapshot directory"), "{e}");
}

/// A diff Apply of a made-up blob of `media_type` onto the active snapshot `c000` (a child
/// of the committed `A`); it must fail, with this status.
async fn apply_onto_an_active_snapshot(media_type: &str) -> tonic::Status {
    let (_d, ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 1).await;
    let mounts = mounts_of(&mut sn, "c000").await;
    diff::diff_client::DiffClient::new(ch)
        .apply(with_ns(apply(mounts, media_type), NS))
        .await
        .unwrap_err()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_apply_of_a_layer_missing_from_the_content_store_is_not_found() {
    let e = apply_onto_an_active_snapshot(LAYER_TAR_GZIP).await;
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("not found"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_apply_of_a_media_type_that_is_not_a_layer_is_unimplemented() {
    let e = apply_onto_an_active_snapshot("application/vnd.oci.image.config.v1+json").await;
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_compare_of_an_overlay_and_its_parent_view_writes_the_layer_to_content() {
    let (d, ch, mut sn) = grpc_daemon().await;
    committed_a_with_children(&mut sn, 1).await;
    let mounts = mounts_of(&mut sn, "c000").await;
    // The mount shapes are understood (an overlay against its own lower layers); the layer
    // lands in the content store.
    let view = overlay_view(&mut sn, NS, "va", "A").await;
    let mut df = diff::diff_client::DiffClient::new(ch);
    let layer = df
        .diff(with_ns(
            diff::DiffRequest {
                left: view,
                right: mounts,
                ..Default::default()
            },
            NS,
        ))
        .await
        .unwrap()
        .into_inner()
        .diff
        .expect("a layer descriptor");
    let listed = d.ctr_ok(&["-n", NS, "content", "ls", "-q"]);
    assert!(listed.contains(&layer.digest), "{listed}");
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_compare_without_mounts_is_unimplemented() {
    let (_d, ch, _sn) = grpc_daemon().await;
    let mut df = diff::diff_client::DiffClient::new(ch);
    let e = df
        .diff(with_ns(diff::DiffRequest::default(), NS))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}

/// A committed busybox layer under an active overlay snapshot serves as a container's rootfs:
/// the real shim and runc run on the mounted snapshot, and what the test wrote through the
/// overlay (the upper dir) is visible in the container.
#[test]
#[ignore = "e2e: needs root, ctr, runc, the runc shim"]
fn ctr_run_on_an_overlay_snapshot_of_a_busybox_layer() {
    prereqs();
    support::require(&[
        support::Need::Bin("runc", "runc"),
        support::Need::Bin("containerd-shim-runc-v2", "containerd"),
    ]);
    let d = Daemon::start();
    let base = d.dir.join("mnt-base");
    ctr_sn(&d, "overlayfs", &["prepare", "bb", ""]);
    let line = ctr_sn(&d, "overlayfs", &["mounts", "/TARGET", "bb"]);
    {
        let _m = Mounted::run(line.trim(), &base);
        rootfs::build(&base).expect("build busybox rootfs (apt-get install busybox-static)");
    }
    ctr_sn(&d, "overlayfs", &["commit", "busybox", "bb"]);
    ctr_sn(&d, "overlayfs", &["prepare", "c1", "busybox"]);
    let line = ctr_sn(&d, "overlayfs", &["mounts", "/TARGET", "c1"]);
    assert!(line.contains("-t overlay"), "{line}");
    let rootfs = d.dir.join("mnt-c1");
    {
        let _m = Mounted::run(line.trim(), &rootfs);
        std::fs::write(rootfs.join("etc/greeting"), b"from the upper layer\n").unwrap();
        let out = d.ctr_ok(&[
            "run",
            "--rm",
            "--rootfs",
            rootfs.to_str().unwrap(),
            "snap-t1",
            "/bin/sh",
            "-c",
            "cat /etc/greeting; test -x /bin/busybox && echo busybox-from-lower",
        ]);
        assert_eq!(out.trim_end(), "from the upper layer\nbusybox-from-lower");
    }
    // The write landed in the snapshot's own layer, not in the committed parent.
    let snaps = d.root.join("io.containerd.snapshotter.v1.overlayfs/snapshots");
    assert!(
        snaps.join("2/fs/etc/greeting").is_file(),
        "c1's upper dir holds the write"
    );
    assert!(
        !snaps.join("1/fs/etc/greeting").exists(),
        "the committed layer is untouched"
    );
    ctr_sn(&d, "overlayfs", &["rm", "c1"]);
    ctr_sn(&d, "overlayfs", &["rm", "busybox"]);
}

/// Ingests `data` into the daemon's content store with `ctr content ingest`; returns its digest.
fn ingest(d: &Daemon, ns: &str, data: &[u8]) -> String {
    use sha2::Digest;
    use std::io::Write;
    let digest = format!("sha256:{:x}", sha2::Sha256::digest(data));
    let mut child = Command::new("ctr")
        .arg("--address")
        .arg(&d.socket)
        .args(["-n", ns, "content", "ingest", "--expected-digest", &digest])
        .args([
            "--expected-size",
            &data.len().to_string(),
            &format!("ref-{}", &digest[7..19]),
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success(), "ctr content ingest failed");
    digest
}

/// A hostile layer in the content store, applied through the Diff service onto a real
/// snapshot: refused with a clear error, and nothing beside the snapshot is touched; a good
/// layer applies and reports its diff id.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_apply_through_the_daemon_refuses_hostile_layers() {
    prereqs();
    let d = Daemon::start();
    let ns = "hostile";
    let sentinel = d.dir.join("sentinel");
    std::fs::create_dir(&sentinel).unwrap();
    std::fs::write(sentinel.join("secret"), b"untouched").unwrap();
    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(d.channel().await);
    let mut df = diff::diff_client::DiffClient::new(d.channel().await);
    let tar = |build: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    };
    let file = |b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    };
    let s = sentinel.display().to_string();
    let evil = tar(&|b| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "evil", &s).unwrap();
        file(b, "evil/pwned", b"pwned");
    });
    let good = tar(&|b| file(b, "etc/motd", b"hello"));
    for (i, (layer, hostile)) in [(evil, true), (good, false)].into_iter().enumerate() {
        let key = format!("k{i}");
        let mounts = sn
            .prepare(with_ns(
                snapshots::PrepareSnapshotRequest {
                    snapshotter: "overlayfs".into(),
                    key: key.clone(),
                    parent: String::new(),
                    labels: HashMap::new(),
                },
                ns,
            ))
            .await
            .unwrap()
            .into_inner()
            .mounts;
        let digest = ingest(&d, ns, &layer);
        let res = df
            .apply(with_ns(
                diff::ApplyRequest {
                    diff: Some(ctypes::Descriptor {
                        media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                        digest: digest.clone(),
                        size: layer.len() as i64,
                        annotations: HashMap::new(),
                    }),
                    mounts: mounts.clone(),
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                ns,
            ))
            .await;
        if hostile {
            let e = res.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
            assert!(e.message().contains("outside the root"), "{e}");
        } else {
            let applied = res.unwrap().into_inner().applied.unwrap();
            assert_eq!(
                applied.digest, digest,
                "an uncompressed layer's diff id is its digest"
            );
            assert_eq!(
                std::fs::read(Path::new(&mounts[0].source).join("etc/motd")).unwrap(),
                b"hello"
            );
        }
        let entries: Vec<_> = std::fs::read_dir(&sentinel)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, vec![std::ffi::OsString::from("secret")]);
        assert_eq!(std::fs::read(sentinel.join("secret")).unwrap(), b"untouched");
    }
}

/// The Diff service on an active snapshot while its owner races it: a file in the upper dir
/// is swapped for a symlink to a host sentinel again and again during the walks. The walk
/// reads beneath the upper dir's fd and never through a symlink, so no layer it writes holds
/// the sentinel's bytes (a swap mid-walk is an error or the link itself, never the target).
#[tokio::test(flavor = "multi_thread")]
#[ignore = "e2e: needs root, ctr (containerd)"]
async fn diff_of_an_active_snapshot_never_reads_through_a_planted_symlink() {
    prereqs();
    let d = Daemon::start();
    let ch = d.channel().await;
    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(ch.clone());
    let mut df = diff::diff_client::DiffClient::new(ch.clone());
    let ns = "race";
    ctr_sn_in(&d, ns, "overlayfs", &["prepare", "base-a", ""]);
    ctr_sn_in(&d, ns, "overlayfs", &["commit", "base", "base-a"]);
    ctr_sn_in(&d, ns, "overlayfs", &["prepare", "c1", "base"]);
    let mounts = |key: &str| snapshots::MountsRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
    };
    let active = sn
        .mounts(with_ns(mounts("c1"), ns))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let upper = active[0]
        .options
        .iter()
        .find_map(|o| o.strip_prefix("upperdir="))
        .map(PathBuf::from)
        .expect("an overlay upper dir");
    let view = overlay_view(&mut sn, ns, "v", "base").await;

    let sentinel_bytes = format!("HOST-SENTINEL-{}", std::process::id());
    let sentinel = d.dir.join("sentinel");
    std::fs::write(&sentinel, &sentinel_bytes).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let racer = {
        let stop = stop.clone();
        let (upper, sentinel) = (upper.clone(), sentinel.clone());
        std::thread::spawn(move || {
            let f = upper.join("f");
            let tmp_file = upper.join(".f-file");
            let tmp_link = upper.join(".f-link");
            let mut swaps = 0u64;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let _ = std::fs::write(&tmp_file, [b'x'; 4096]);
                let _ = std::fs::rename(&tmp_file, &f);
                let _ = std::os::unix::fs::symlink(&sentinel, &tmp_link);
                let _ = std::fs::rename(&tmp_link, &f);
                swaps += 1;
            }
            swaps
        })
    };

    let (mut written, mut refused) = (0, Vec::new());
    for _ in 0..60 {
        let r = df
            .diff(with_ns(
                diff::DiffRequest {
                    left: view.clone(),
                    right: active.clone(),
                    media_type: "application/vnd.oci.image.layer.v1.tar".into(),
                    ..Default::default()
                },
                ns,
            ))
            .await;
        match r {
            Ok(r) => {
                let layer = r.into_inner().diff.expect("a layer descriptor");
                let out = Command::new("ctr")
                    .arg("--address")
                    .arg(&d.socket)
                    .args(["-n", ns, "content", "get", &layer.digest])
                    .output()
                    .unwrap();
                assert!(out.status.success());
                let blob = String::from_utf8_lossy(&out.stdout);
                assert!(
                    !blob.contains(&sentinel_bytes),
                    "the layer holds the host file's bytes"
                );
                written += 1;
            }
            Err(e) => refused.push(e.message().to_owned()),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let swaps = racer.join().unwrap();
    eprintln!(
        "{written} layers written, {} refused, {swaps} swaps; refusals: {:?}",
        refused.len(),
        refused.first()
    );
    assert!(swaps > 60, "the racer ran ({swaps} swaps)");
    assert!(written > 0, "some walks finish: {refused:?}");
    for m in &refused {
        assert!(
            m.contains("changed during the walk")
                || m.contains("symbolic links")
                || m.contains("No such file"),
            "a refused walk says why: {m}"
        );
    }
}

/// The mounts of a new overlayfs view `key` of `parent`.
async fn overlay_view(
    sn: &mut snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel>,
    ns: &str,
    key: &str,
    parent: &str,
) -> Vec<ctypes::Mount> {
    sn.view(with_ns(
        snapshots::ViewSnapshotRequest {
            snapshotter: "overlayfs".into(),
            key: key.into(),
            parent: parent.into(),
            labels: HashMap::new(),
        },
        ns,
    ))
    .await
    .unwrap()
    .into_inner()
    .mounts
}
