//! The snapshots and diff services against the real daemon: Debian's `ctr` 1.6 drives
//! `snapshots prepare/ls/mounts/tree/info/usage/commit/view/label/rm` on both snapshotters,
//! the printed mount commands are run for real (overlay as root), and a tonic client covers
//! List filters, Update masks, leases, and the Diff service's errors.

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
    support::require_root();
    support::require_bin("ctr", "containerd");
    support::require_bin("mount", "mount");
}

fn ctr_sn(d: &Daemon, sn: &str, args: &[&str]) -> String {
    let mut all = vec!["snapshots", "--snapshotter", sn];
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

#[tokio::test(flavor = "multi_thread")]
async fn grpc_filters_update_masks_leases_and_diff_errors() {
    prereqs();
    let d = Daemon::start();
    let ch = d.channel().await;
    let mut sn = snapshots::snapshots_client::SnapshotsClient::new(ch.clone());
    let ns = "grpc-test";
    let prepare = |key: &str, parent: &str, labels: &[(&str, &str)]| snapshots::PrepareSnapshotRequest {
        snapshotter: "overlayfs".into(),
        key: key.into(),
        parent: parent.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    };

    // The snapshotter field is required and must name a loaded plugin.
    let mut p = prepare("k", "", &[]);
    p.snapshotter = String::new();
    let e = sn.prepare(with_ns(p.clone(), ns)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("snapshotter argument missing"), "{e}");
    p.snapshotter = "zfs".into();
    let e = sn.prepare(with_ns(p, ns)).await.unwrap_err();
    assert!(e.message().contains("snapshotter not loaded: zfs"), "{e}");

    // A lease from the header holds the new snapshots.
    let mut lc = leases::leases_client::LeasesClient::new(ch.clone());
    lc.create(with_ns(
        leases::CreateRequest {
            id: "l1".into(),
            labels: HashMap::new(),
        },
        ns,
    ))
    .await
    .unwrap();
    let mut req = with_ns(prepare("a", "", &[("app", "web")]), ns);
    req.metadata_mut()
        .insert("containerd-lease", "l1".parse().unwrap());
    sn.prepare(req).await.unwrap();
    let res = lc
        .list_resources(with_ns(leases::ListResourcesRequest { id: "l1".into() }, ns))
        .await
        .unwrap()
        .into_inner()
        .resources;
    assert_eq!(res.len(), 1);
    assert_eq!(res[0].id, "a");
    assert_eq!(res[0].r#type, "snapshots/overlayfs");
    let mut req = with_ns(prepare("b", "", &[]), ns);
    req.metadata_mut()
        .insert("containerd-lease", "no-such-lease".parse().unwrap());
    assert_eq!(sn.prepare(req).await.unwrap_err().code(), tonic::Code::NotFound);
    let e = sn
        .stat(with_ns(
            snapshots::StatSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "b".into(),
            },
            ns,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        tonic::Code::NotFound,
        "nothing created under an unknown lease"
    );

    sn.commit(with_ns(
        snapshots::CommitSnapshotRequest {
            snapshotter: "overlayfs".into(),
            name: "A".into(),
            key: "a".into(),
            labels: [("tier".to_string(), "base".to_string())].into(),
        },
        ns,
    ))
    .await
    .unwrap();
    for i in 0..150 {
        sn.prepare(with_ns(prepare(&format!("c{i:03}"), "A", &[]), ns))
            .await
            .unwrap();
    }

    // List streams in batches; filters are containerd's syntax.
    let list = |filters: Vec<String>| snapshots::ListSnapshotsRequest {
        snapshotter: "overlayfs".into(),
        filters,
    };
    let mut stream = sn.list(with_ns(list(vec![]), ns)).await.unwrap().into_inner();
    let mut batches = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        batches.push(m.info.len());
    }
    assert_eq!(batches, vec![100, 51]);
    let mut stream = sn
        .list(with_ns(
            list(vec!["kind==Committed".into(), "name==c007".into()]),
            ns,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut names = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        names.extend(m.info.into_iter().map(|i| i.name));
    }
    assert_eq!(names, vec!["A", "c007"]);
    let e = sn
        .list(with_ns(list(vec!["name==".into(), "(".into()]), ns))
        .await;
    let e = match e {
        Err(e) => e,
        Ok(s) => s.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    // Update with a field mask: one label; name/parent/kind are immutable.
    let update = |labels: &[(&str, &str)], paths: &[&str]| snapshots::UpdateSnapshotRequest {
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
            paths: paths.iter().map(|s| s.to_string()).collect(),
        }),
    };
    let info = sn
        .update(with_ns(update(&[("x", "1")], &["labels.x"]), ns))
        .await
        .unwrap()
        .into_inner()
        .info
        .unwrap();
    assert_eq!(info.labels.get("tier").map(String::as_str), Some("base"));
    assert_eq!(info.labels.get("x").map(String::as_str), Some("1"));
    assert_eq!(info.parent, "");
    assert_eq!(info.kind, snapshots::Kind::Committed as i32);
    let e = sn
        .update(with_ns(update(&[], &["parent"]), ns))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);

    let e = sn
        .remove(with_ns(
            snapshots::RemoveSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "A".into(),
            },
            ns,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);

    // Cleanup removes directories no snapshot names.
    let orphan = d
        .root
        .join("io.containerd.snapshotter.v1.overlayfs/snapshots/999999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    sn.cleanup(with_ns(
        snapshots::CleanupRequest {
            snapshotter: "overlayfs".into(),
        },
        ns,
    ))
    .await
    .unwrap();
    assert!(!orphan.exists());

    // Diff: Apply refuses mounts outside the snapshotters and (until the content store is
    // wired) says clearly that it cannot read layers.
    let mut df = diff::diff_client::DiffClient::new(ch.clone());
    let mounts = sn
        .mounts(with_ns(
            snapshots::MountsRequest {
                snapshotter: "overlayfs".into(),
                key: "c000".into(),
            },
            ns,
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let apply = |mounts: Vec<ctypes::Mount>, media_type: &str| diff::ApplyRequest {
        diff: Some(ctypes::Descriptor {
            media_type: media_type.into(),
            digest: "sha256:0000000000000000000000000000000000000000000000000000000000000000".into(),
            size: 10,
            annotations: HashMap::new(),
        }),
        mounts,
        payloads: HashMap::new(),
        sync_fs: false,
    };
    let host = vec![ctypes::Mount {
        r#type: "bind".into(),
        source: "/etc".into(),
        target: String::new(),
        options: vec!["rw".into(), "rbind".into()],
    }];
    let e = df
        .apply(with_ns(
            apply(host, "application/vnd.oci.image.layer.v1.tar+gzip"),
            ns,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("not a snapshot directory"), "{e}");
    let e = df
        .apply(with_ns(
            apply(mounts.clone(), "application/vnd.oci.image.layer.v1.tar+gzip"),
            ns,
        ))
        .await
        .unwrap_err();
    // The layer is not in the content store.
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("not found"), "{e}");
    let e = df
        .apply(with_ns(
            apply(mounts.clone(), "application/vnd.oci.image.config.v1+json"),
            ns,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented, "{e}");
    // Compare: the mount shapes are understood (an overlay against its own lower layers);
    // the layer lands in the content store.
    let view = sn
        .view(with_ns(
            snapshots::ViewSnapshotRequest {
                snapshotter: "overlayfs".into(),
                key: "va".into(),
                parent: "A".into(),
                labels: HashMap::new(),
            },
            ns,
        ))
        .await
        .unwrap()
        .into_inner()
        .mounts;
    let layer = df
        .diff(with_ns(
            diff::DiffRequest {
                left: view,
                right: mounts,
                ..Default::default()
            },
            ns,
        ))
        .await
        .unwrap()
        .into_inner()
        .diff
        .expect("a layer descriptor");
    let listed = d.ctr_ok(&["-n", ns, "content", "ls", "-q"]);
    assert!(listed.contains(&layer.digest), "{listed}");
    let e = df
        .diff(with_ns(diff::DiffRequest::default(), ns))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unimplemented);
}
