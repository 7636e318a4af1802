//! Component tests of the snapshotters on temp dirs (a real redb file; real overlay mounts
//! as root, unmounted by path).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::*;
use crate::diff::{Differ, Limits, Walking};
use crate::errdefs::{ErrorKind, Kind as EK};
use crate::metadata::{Db, NamespaceStore};

struct Env {
    tmp: tempfile::TempDir,
    db: Arc<Db>,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&tmp.path().join("meta.redb")).unwrap());
        Env { tmp, db }
    }

    fn snapshotter(&self, name: &str, backend: Backend) -> FsSnapshotter {
        FsSnapshotter::open(name, &self.tmp.path().join(name), backend, self.db.clone()).unwrap()
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn none() -> BTreeMap<String, String> {
    BTreeMap::new()
}

#[tokio::test]
async fn lifecycle_parent_chains_and_errors() {
    let env = Env::new();
    let s = env.snapshotter("native", Backend::Native);
    let m = s.prepare("ns", "base", "", labels(&[("a", "1")])).await.unwrap();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "bind");
    assert_eq!(m[0].options, vec!["rw", "rbind"]);
    std::fs::write(Path::new(&m[0].source).join("hello"), b"hi").unwrap();

    // Errors before commit.
    let e = s.prepare("ns", "base", "", none()).await.unwrap_err();
    assert_eq!(e.kind(), EK::AlreadyExists);
    let e = s.prepare("ns", "child", "base", none()).await.unwrap_err();
    assert_eq!(e.kind(), EK::InvalidArgument, "{e}");
    assert!(e.to_string().contains("not committed"), "{e}");
    let e = s.prepare("ns", "child", "nope", none()).await.unwrap_err();
    assert_eq!(e.kind(), EK::NotFound);
    let e = s.prepare("ns", "", "", none()).await.unwrap_err();
    assert_eq!(e.kind(), EK::InvalidArgument);

    s.commit("ns", "base-c", "base", labels(&[("c", "1")]))
        .await
        .unwrap();
    assert_eq!(s.stat("ns", "base").await.unwrap_err().kind(), EK::NotFound);
    let info = s.stat("ns", "base-c").await.unwrap();
    assert_eq!(info.kind, Kind::Committed);
    assert_eq!(info.labels, labels(&[("c", "1")]));
    assert!(s.usage("ns", "base-c").await.unwrap().inodes >= 2);

    // Native copies the parent.
    let m = s.prepare("ns", "child", "base-c", none()).await.unwrap();
    assert_eq!(
        std::fs::read(Path::new(&m[0].source).join("hello")).unwrap(),
        b"hi"
    );
    let v = s.view("ns", "v", "base-c", none()).await.unwrap();
    assert_eq!(v[0].options, vec!["ro", "rbind"]);
    let e = s.commit("ns", "v-c", "v", none()).await.unwrap_err();
    assert_eq!(e.kind(), EK::FailedPrecondition, "{e}");

    // Removing a parent with children fails; children first works.
    let e = s.remove("ns", "base-c").await.unwrap_err();
    assert_eq!(e.kind(), EK::FailedPrecondition);
    assert!(e.to_string().contains("child"), "{e}");

    // Walk + filters.
    let all = s.walk("ns", vec![]).await.unwrap();
    let names: Vec<_> = all.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, vec!["base-c", "child", "v"]);
    let active = s.walk("ns", vec!["kind==Active".into()]).await.unwrap();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].name, "child");
    let by_parent = s.walk("ns", vec!["parent==base-c".into()]).await.unwrap();
    assert_eq!(by_parent.len(), 2);
    let by_label = s.walk("ns", vec!["labels.c==1".into()]).await.unwrap();
    assert_eq!(by_label.len(), 1);

    // Update: labels only.
    let mut upd = info.clone();
    upd.labels = labels(&[("x", "y")]);
    let got = s
        .update("ns", upd.clone(), vec!["labels.x".into()])
        .await
        .unwrap();
    assert_eq!(got.labels, labels(&[("c", "1"), ("x", "y")]));
    let got = s.update("ns", upd.clone(), vec![]).await.unwrap();
    assert_eq!(got.labels, labels(&[("x", "y")]));
    let e = s.update("ns", upd, vec!["parent".into()]).await.unwrap_err();
    assert_eq!(e.kind(), EK::InvalidArgument);

    // Namespaces are separate.
    assert_eq!(s.stat("other", "base-c").await.unwrap_err().kind(), EK::NotFound);
    s.prepare("other", "child", "", none()).await.unwrap();
    let e = NamespaceStore::delete(&*env.db, "ns").unwrap_err();
    assert!(e.to_string().contains("3 snapshots (native)"), "{e}");

    for k in ["child", "v", "base-c"] {
        s.remove("ns", k).await.unwrap();
    }
    assert!(s.walk("ns", vec![]).await.unwrap().is_empty());
    NamespaceStore::delete(&*env.db, "ns").unwrap();
    // Only the other namespace's directory is left.
    let dirs = std::fs::read_dir(env.tmp.path().join("native/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1);
}

#[tokio::test]
async fn overlay_mounts_have_containerd_shapes() {
    let env = Env::new();
    let s = env.snapshotter("overlayfs", Backend::Overlay { index_off: true });
    let root = env.tmp.path().join("overlayfs/snapshots");
    let m = s.prepare("ns", "l1", "", none()).await.unwrap();
    assert_eq!(
        m,
        vec![Mount {
            r#type: "bind".into(),
            source: root.join("1/fs").display().to_string(),
            target: String::new(),
            options: vec!["rw".into(), "rbind".into()],
        }]
    );
    s.commit("ns", "L1", "l1", none()).await.unwrap();
    s.prepare("ns", "l2", "L1", none()).await.unwrap();
    s.commit("ns", "L2", "l2", none()).await.unwrap();
    let m = s.prepare("ns", "top", "L2", none()).await.unwrap();
    assert_eq!(m[0].r#type, "overlay");
    assert_eq!(m[0].source, "overlay");
    assert_eq!(
        m[0].options,
        vec![
            "index=off".to_string(),
            format!("workdir={}", root.join("3/work").display()),
            format!("upperdir={}", root.join("3/fs").display()),
            format!(
                "lowerdir={}:{}",
                root.join("2/fs").display(),
                root.join("1/fs").display()
            ),
        ]
    );
    assert_eq!(s.mounts("ns", "top").await.unwrap(), m);
    // A view of one layer is a read-only bind of it; of two, a lower-only overlay.
    let v1 = s.view("ns", "v1", "L1", none()).await.unwrap();
    assert_eq!(v1[0].r#type, "bind");
    assert_eq!(v1[0].source, root.join("1/fs").display().to_string());
    assert_eq!(v1[0].options, vec!["ro", "rbind"]);
    let v2 = s.view("ns", "v2", "L2", none()).await.unwrap();
    assert_eq!(v2[0].r#type, "overlay");
    assert_eq!(
        v2[0].options,
        vec![
            "index=off".to_string(),
            format!(
                "lowerdir={}:{}",
                root.join("2/fs").display(),
                root.join("1/fs").display()
            ),
        ]
    );
    let tree: BTreeMap<String, String> = s
        .walk("ns", vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i.name, i.parent))
        .collect();
    assert_eq!(tree["L2"], "L1");
    assert_eq!(tree["top"], "L2");
}

#[tokio::test]
async fn cleanup_removes_orphan_dirs_and_gc_hook_removes_children_first() {
    let env = Env::new();
    let s = env.snapshotter("native", Backend::Native);
    s.prepare("ns", "a", "", none()).await.unwrap();
    s.commit("ns", "A", "a", none()).await.unwrap();
    s.prepare("ns", "b", "A", none()).await.unwrap();
    s.commit("ns", "B", "b", none()).await.unwrap();
    s.prepare("ns", "c", "B", none()).await.unwrap();
    s.prepare("ns", "other", "", none()).await.unwrap();
    let orphan = env.tmp.path().join("native/snapshots/999");
    std::fs::create_dir_all(orphan.join("fs")).unwrap();
    s.cleanup().await.unwrap();
    assert!(!orphan.exists());
    assert_eq!(s.walk("ns", vec![]).await.unwrap().len(), 4);

    // Keep B (and so A); c and other go, c before its parent could.
    let removed = s
        .remove_unreferenced("ns", BTreeSet::from(["B".to_string()]))
        .await
        .unwrap();
    assert_eq!(removed.len(), 2);
    let left: Vec<_> = s
        .walk("ns", vec![])
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(left, vec!["A", "B"]);
    let removed = s.remove_unreferenced("ns", BTreeSet::new()).await.unwrap();
    assert_eq!(removed, vec!["B", "A"]);
}

/// Mounts `m` read-only at `at`; unmounted (by path) on drop.
struct Mounted(PathBuf);

impl Mounted {
    fn new(m: &Mount, at: &Path) -> Mounted {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(at).unwrap();
        match m.r#type.as_str() {
            "overlay" => {
                let opts = m.options.join(",");
                mount(
                    Some("overlay"),
                    at,
                    Some("overlay"),
                    MsFlags::MS_RDONLY,
                    Some(opts.as_str()),
                )
                .unwrap();
            }
            "bind" => {
                mount(
                    Some(m.source.as_str()),
                    at,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .unwrap();
            }
            other => panic!("unexpected mount type {other}"),
        }
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let raw = b.into_inner().unwrap();
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut e, &raw).unwrap();
    e.finish().unwrap()
}

fn add(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o644);
    h.set_size(data.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Two layers (the second with a whiteout and an opaque dir) unpacked through the walking
/// differ into real snapshots, then the top viewed through a real mount.
async fn unpack_and_view(backend: Backend, name: &str) {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let env = Env::new();
    let s = env.snapshotter(name, backend);
    let differ = Walking::new(
        Limits::default(),
        vec![env.tmp.path().join(name).join("snapshots")],
        None,
    );
    let l1 = layer(|b| {
        add(b, "etc/os-release", b"v1");
        add(b, "etc/gone", b"x");
        add(b, "opq/old", b"x");
    });
    let l2 = layer(|b| {
        add(b, "etc/.wh.gone", b"");
        add(b, "opq/.wh..wh..opq", b"");
        add(b, "opq/new", b"n");
        add(b, "bin/app", b"app");
    });
    let m = s.prepare("ns", "x1", "", none()).await.unwrap();
    differ
        .apply_reader(TGZ, Box::new(std::io::Cursor::new(l1)), m)
        .await
        .unwrap();
    s.commit("ns", "L1", "x1", none()).await.unwrap();
    let m = s.prepare("ns", "x2", "L1", none()).await.unwrap();
    let applied = differ
        .apply_reader(TGZ, Box::new(std::io::Cursor::new(l2)), m)
        .await
        .unwrap();
    assert!(applied.digest.starts_with("sha256:"));
    s.commit("ns", "L2", "x2", none()).await.unwrap();
    let v = s.view("ns", "view", "L2", none()).await.unwrap();
    let at = env.tmp.path().join("mnt");
    {
        let _m = Mounted::new(&v[0], &at);
        assert_eq!(std::fs::read(at.join("etc/os-release")).unwrap(), b"v1");
        assert!(!at.join("etc/gone").exists(), "whiteout hides the lower file");
        assert!(
            !at.join("opq/old").exists(),
            "opaque dir hides the lower dir's content"
        );
        assert_eq!(std::fs::read(at.join("opq/new")).unwrap(), b"n");
        assert_eq!(std::fs::read(at.join("bin/app")).unwrap(), b"app");
    }
    // An active snapshot on top is writable through its overlay and counts its own usage.
    let m = s.prepare("ns", "rw", "L2", none()).await.unwrap();
    let at = env.tmp.path().join("mnt-rw");
    if m[0].r#type == "overlay" {
        use nix::mount::{MsFlags, mount};
        std::fs::create_dir_all(&at).unwrap();
        let opts = m[0].options.join(",");
        mount(
            Some("overlay"),
            &at,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .unwrap();
        let _m = Mounted(at.clone());
        std::fs::write(at.join("new-file"), vec![1u8; 64 * 1024]).unwrap();
    } else {
        std::fs::write(Path::new(&m[0].source).join("new-file"), vec![1u8; 64 * 1024]).unwrap();
    }
    let u = s.usage("ns", "rw").await.unwrap();
    assert!(u.size >= 64 * 1024, "{u:?}");
    for k in ["rw", "view", "L2", "L1"] {
        s.remove("ns", k).await.unwrap();
    }
}

#[tokio::test]
#[ignore = "e2e: needs root (overlay mounts)"]
async fn overlay_unpacked_layers_mount_with_whiteouts_applied() {
    unpack_and_view(Backend::Overlay { index_off: false }, "overlayfs").await;
}

#[tokio::test]
#[ignore = "e2e: needs root (mounts)"]
async fn native_unpacked_layers_mount_with_whiteouts_applied() {
    unpack_and_view(Backend::Native, "native").await;
}

#[test]
#[ignore = "e2e: needs root (overlay mount)"]
fn overlay_check_mounts_on_this_host() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let tmp = tempfile::tempdir().unwrap();
    plugin::check_overlay(tmp.path()).unwrap();
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the check cleans up"
    );
}

#[test]
#[ignore = "e2e: needs root (overlay mount)"]
fn a_passed_overlay_check_is_recorded_and_trusted_until_kernel_or_fs_change() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let tmp = tempfile::tempdir().unwrap();
    let record = tmp.path().join(plugin::CHECKED);
    plugin::check_overlay_once(tmp.path()).unwrap();
    let print = plugin::check_fingerprint(tmp.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&record).unwrap(), print);
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&record).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        1,
        "only the record is left"
    );
    // A record of another kernel is not trusted: the check runs again and rewrites it.
    std::fs::write(&record, print.replace("kernel=", "kernel=0.0-other-")).unwrap();
    plugin::check_overlay_once(tmp.path()).unwrap();
    assert_eq!(std::fs::read_to_string(&record).unwrap(), print);
}

#[test]
fn a_matching_overlay_record_skips_the_test_mount() {
    // As a normal user the test mount would fail (EPERM): a matching record must answer
    // without it, and a record that does not match must not.
    let tmp = tempfile::tempdir().unwrap();
    let print = plugin::check_fingerprint(tmp.path()).unwrap();
    assert!(print.starts_with("kernel=") && print.contains("\ndev=") && print.contains("\nfs=0x"));
    std::fs::write(tmp.path().join(plugin::CHECKED), &print).unwrap();
    plugin::check_overlay_once(tmp.path()).unwrap();
    if !nix::unistd::geteuid().is_root() {
        std::fs::write(tmp.path().join(plugin::CHECKED), "kernel=other\n").unwrap();
        assert!(
            plugin::check_overlay_once(tmp.path()).is_err(),
            "a stale record is not trusted"
        );
        assert!(
            !tmp.path().join(plugin::CHECKED).exists(),
            "a failed check removes the record"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_prepares_of_one_key_create_exactly_one_snapshot() {
    let env = Env::new();
    let s = Arc::new(env.snapshotter("native", Backend::Native));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(
            async move { s.prepare("ns", "same", "", none()).await },
        ));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.kind(), EK::AlreadyExists, "{e}"),
        }
    }
    assert_eq!(ok, 1);
    let dirs = std::fs::read_dir(env.tmp.path().join("native/snapshots"))
        .unwrap()
        .count();
    assert_eq!(dirs, 1, "losers removed their directories");
}
