//! Unit tests of the layer applier: formats, whiteouts, and hostile layers. Each hostile
//! layer is applied to `<tmp>/target` beside `<tmp>/sentinel`; the test asserts the clear
//! error and that the sentinel dir is exactly as before.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::*;
use crate::snapshots::Mount;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TGZ: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TZST: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// A layer under construction; names and link names are written raw into the header so
/// hostile paths (`..`, absolute) survive the tar crate's own checks.
struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn raw(&mut self, name: &str, ty: tar::EntryType, link: &str, mode: u32, data: &[u8]) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        {
            let old = h.as_old_mut();
            old.name.fill(0);
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname.fill(0);
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(ty);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Directory, "", 0o755, b"")
    }

    fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(name, tar::EntryType::Regular, "", 0o644, data)
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Symlink, target, 0o777, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name, tar::EntryType::Link, target, 0o644, b"")
    }

    fn device(&mut self, name: &str, ty: tar::EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_entry_type(ty);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        h.set_size(0);
        h.set_cksum();
        self.b.append(&h, &b""[..]).unwrap();
        self
    }

    fn tar(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

/// `<tmp>/target` (empty) and `<tmp>/sentinel/secret`.
struct Dirs {
    _tmp: tempfile::TempDir,
    target: PathBuf,
    sentinel: PathBuf,
    before: Vec<(String, u64, i64, Vec<u8>)>,
}

fn snapshot_of(dir: &Path) -> Vec<(String, u64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = std::fs::symlink_metadata(e.path()).unwrap();
        let data = if m.is_file() {
            std::fs::read(e.path()).unwrap()
        } else {
            Vec::new()
        };
        out.push((
            e.file_name().to_string_lossy().into_owned(),
            m.ino(),
            m.mtime(),
            data,
        ));
    }
    out.sort();
    out
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("target");
        let sentinel = tmp.path().join("sentinel");
        std::fs::create_dir(&target).unwrap();
        std::fs::create_dir(&sentinel).unwrap();
        std::fs::write(sentinel.join("secret"), b"untouched").unwrap();
        let before = snapshot_of(&sentinel);
        Dirs {
            _tmp: tmp,
            target,
            sentinel,
            before,
        }
    }

    fn assert_sentinel_untouched(&self) {
        assert_eq!(
            snapshot_of(&self.sentinel),
            self.before,
            "the sentinel dir beside the target changed"
        );
        assert_eq!(std::fs::read(self.sentinel.join("secret")).unwrap(), b"untouched");
    }

    fn apply(&self, data: &[u8], media_type: &str) -> Result<Applied, DiffError> {
        apply_layer(data, media_type, &self.target, &ApplyOptions::default())
    }

    fn apply_with(&self, data: &[u8], media_type: &str, opts: &ApplyOptions) -> Result<Applied, DiffError> {
        apply_layer(data, media_type, &self.target, opts)
    }
}

fn sha(data: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(data))
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn applies_files_dirs_links_and_reports_the_uncompressed_digest() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let tar = Layer::new()
        .dir("etc/")
        .file("etc/hostname", b"box\n")
        .raw("bin/tool", tar::EntryType::Regular, "", 0o4755, b"#!/bin/sh\n")
        .symlink("etc/link", "/etc/hostname")
        .hardlink("etc/hard", "etc/hostname")
        .raw("run/fifo", tar::EntryType::Fifo, "", 0o600, b"")
        .tar();
    for (bytes, mt) in [(tar.clone(), TAR), (gzip(&tar), TGZ), (zstd(&tar), TZST)] {
        let d = Dirs::new();
        let applied = d.apply(&bytes, mt).unwrap();
        assert_eq!(applied.digest, sha(&tar), "{mt}");
        assert_eq!(applied.size, tar.len() as u64);
        assert_eq!(applied.media_type, MEDIA_TYPE_LAYER);
        let t = &d.target;
        assert_eq!(std::fs::read(t.join("etc/hostname")).unwrap(), b"box\n");
        assert_eq!(
            std::fs::read_link(t.join("etc/link")).unwrap(),
            Path::new("/etc/hostname")
        );
        assert_eq!(
            std::fs::metadata(t.join("etc/hard")).unwrap().ino(),
            std::fs::metadata(t.join("etc/hostname")).unwrap().ino()
        );
        let tool = std::fs::metadata(t.join("bin/tool")).unwrap();
        assert_eq!(tool.permissions().mode() & 0o7777, 0o4755, "setuid kept");
        assert_eq!(tool.mtime(), 1_700_000_000);
        assert!(
            std::fs::symlink_metadata(t.join("run/fifo"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        assert_eq!(std::fs::metadata(t.join("etc")).unwrap().mtime(), 1_700_000_000);
    }
}

#[test]
fn unknown_media_type_is_not_implemented() {
    let d = Dirs::new();
    let e = d
        .apply(b"", "application/vnd.oci.image.config.v1+json")
        .unwrap_err();
    assert_eq!(
        crate::errdefs::ErrorKind::kind(&e),
        crate::errdefs::Kind::NotImplemented
    );
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn native_whiteouts_remove_and_opaque_dirs_keep_only_this_layer() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    let lower = Layer::new()
        .file("a/gone", b"1")
        .file("a/kept", b"1")
        .file("o/old1", b"1")
        .file("o/sub/old2", b"1")
        .tar();
    d.apply(&lower, TAR).unwrap();
    let upper = Layer::new()
        .file("a/.wh.gone", b"")
        .file("o/new", b"2")
        .file("o/.wh..wh..opq", b"")
        .tar();
    d.apply(&upper, TAR).unwrap();
    let t = &d.target;
    assert!(!t.join("a/gone").exists());
    assert!(!t.join("a/.wh.gone").exists(), "whiteout files are not created");
    assert!(t.join("a/kept").exists());
    assert!(!t.join("o/old1").exists());
    assert!(!t.join("o/sub").exists());
    assert_eq!(
        std::fs::read(t.join("o/new")).unwrap(),
        b"2",
        "entries of the same layer stay"
    );
    assert!(!t.join("o/.wh..wh..opq").exists());
}

fn getxattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 64];
    let r = unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    (r >= 0).then(|| buf[..r as usize].to_vec())
}

#[test]
#[ignore = "e2e: needs root (mknod, trusted.* xattrs)"]
fn overlay_format_makes_char_device_whiteouts_and_opaque_xattrs() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    let lower = d.target.parent().unwrap().join("lower");
    std::fs::create_dir_all(lower.join("a")).unwrap();
    std::fs::set_permissions(lower.join("a"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let opts = ApplyOptions {
        format: Format::Overlay {
            lowers: vec![lower.clone()],
        },
        limits: Limits::default(),
    };
    let layer = Layer::new()
        .file("a/.wh.gone", b"")
        .file("o/.wh..wh..opq", b"")
        .file("o/new", b"x")
        .device("c/.wh.zero", tar::EntryType::Char, 0, 0)
        .device("c/zero", tar::EntryType::Char, 0, 0)
        .tar();
    d.apply_with(&layer, TAR, &opts).unwrap();
    let t = &d.target;
    let wh = std::fs::symlink_metadata(t.join("a/gone")).unwrap();
    assert!(wh.file_type().is_char_device());
    assert_eq!(wh.rdev(), 0);
    assert_eq!(
        std::fs::metadata(t.join("a")).unwrap().permissions().mode() & 0o7777,
        0o750,
        "a parent missing from the upper dir takes the lower dir's mode"
    );
    assert_eq!(
        getxattr(&t.join("o"), "trusted.overlay.opaque"),
        Some(b"y".to_vec())
    );
    assert!(t.join("o/new").exists());
    assert!(
        std::fs::symlink_metadata(t.join("c/zero"))
            .unwrap()
            .file_type()
            .is_char_device()
    );
    d.assert_sentinel_untouched();
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn hostile_path_traversal_is_refused() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    for name in [
        "../sentinel/pwned",
        "a/../../sentinel/pwned",
        "/../sentinel/pwned",
    ] {
        let layer = Layer::new().file(name, b"pwned").tar();
        let e = d.apply(&layer, TAR).unwrap_err();
        assert!(matches!(e, DiffError::PathEscape { .. }), "{name}: {e}");
        assert!(e.to_string().contains("escapes the root"), "{e}");
        d.assert_sentinel_untouched();
    }
    // An absolute path is taken relative to the root (containerd strips the leading '/').
    let abs = format!("{}/abs", d.sentinel.display());
    let layer = Layer::new().file(&abs, b"inside").tar();
    d.apply(&layer, TAR).unwrap();
    assert_eq!(
        std::fs::read(d.target.join(abs.trim_start_matches('/'))).unwrap(),
        b"inside"
    );
    d.assert_sentinel_untouched();
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn hostile_symlink_out_of_the_root_then_write_through_it_is_refused() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    let sentinel = d.sentinel.display().to_string();
    let cases: Vec<(&str, String)> = vec![
        ("abs", sentinel.clone()),
        ("rel", "../sentinel".to_owned()),
        ("deep", "a/../../sentinel".to_owned()),
    ];
    for (link, target) in cases {
        let layer = Layer::new()
            .dir("a/")
            .symlink(link, &target)
            .file(&format!("{link}/pwned"), b"pwned")
            .tar();
        let e = d.apply(&layer, TAR).unwrap_err();
        assert!(matches!(e, DiffError::ParentEscape { .. }), "{link}: {e}");
        assert!(e.to_string().contains("outside the root"), "{e}");
        d.assert_sentinel_untouched();
        // The symlink itself was created: symlinks may point anywhere.
        assert_eq!(
            std::fs::read_link(d.target.join(link)).unwrap(),
            Path::new(&target)
        );
    }
    // A dangling symlink as a parent is refused too (never created through).
    let layer = Layer::new()
        .symlink("dangling", "missing/../../sentinel")
        .file("dangling/pwned", b"pwned")
        .tar();
    let e = d.apply(&layer, TAR).unwrap_err();
    assert!(matches!(e, DiffError::ParentNotDir { .. }), "{e}");
    d.assert_sentinel_untouched();
    // A symlink chain in two layers: the lower layer plants it, the upper writes through it.
    let lower = Layer::new().symlink("etc", &sentinel).tar();
    d.apply(&lower, TAR).unwrap();
    let upper = Layer::new().file("etc/passwd", b"root::0:0::/:/bin/sh").tar();
    assert!(matches!(
        d.apply(&upper, TAR).unwrap_err(),
        DiffError::ParentEscape { .. }
    ));
    // A symlink as the leaf is replaced, never written through.
    let layer = Layer::new()
        .symlink("leaf", &format!("{sentinel}/secret"))
        .file("leaf", b"replaced")
        .tar();
    d.apply(&layer, TAR).unwrap();
    assert_eq!(std::fs::read(d.target.join("leaf")).unwrap(), b"replaced");
    d.assert_sentinel_untouched();
    // A symlink that stays inside the root may be traversed.
    let layer = Layer::new()
        .dir("usr/lib/")
        .symlink("lib", "usr/lib")
        .file("lib/libx.so", b"x")
        .tar();
    d.apply(&layer, TAR).unwrap();
    assert_eq!(std::fs::read(d.target.join("usr/lib/libx.so")).unwrap(), b"x");
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn hostile_hardlinks_out_of_the_tree_are_refused() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    let sentinel = d.sentinel.display().to_string();
    let layer = Layer::new().hardlink("hl", "../sentinel/secret").tar();
    let e = d.apply(&layer, TAR).unwrap_err();
    assert!(matches!(e, DiffError::HardlinkEscape { .. }), "{e}");
    // Absolute targets are relative to the root: the host file is not reachable.
    let layer = Layer::new().hardlink("hl", &format!("{sentinel}/secret")).tar();
    let e = d.apply(&layer, TAR).unwrap_err();
    assert!(matches!(e, DiffError::HardlinkTarget { .. }), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");
    // Through a symlinked parent that leaves the root.
    let layer = Layer::new()
        .symlink("s", &sentinel)
        .hardlink("hl", "s/secret")
        .tar();
    let e = d.apply(&layer, TAR).unwrap_err();
    assert!(matches!(e, DiffError::HardlinkEscape { .. }), "{e}");
    // To a directory.
    let layer = Layer::new().dir("d/").hardlink("hl", "d").tar();
    assert!(matches!(
        d.apply(&layer, TAR).unwrap_err(),
        DiffError::HardlinkTarget { .. }
    ));
    // A hard link to a symlink links the symlink, not what it points to.
    let layer = Layer::new()
        .symlink("ls", &format!("{sentinel}/secret"))
        .hardlink("hl2", "ls")
        .tar();
    d.apply(&layer, TAR).unwrap();
    assert!(
        std::fs::symlink_metadata(d.target.join("hl2"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::metadata(d.sentinel.join("secret")).unwrap().nlink(), 1);
    d.assert_sentinel_untouched();
}

#[test]
fn hostile_device_nodes_are_refused() {
    let d = Dirs::new();
    for (ty, major, minor, kind) in [
        (tar::EntryType::Char, 1, 3, "char"),
        (tar::EntryType::Block, 8, 0, "block"),
    ] {
        let layer = Layer::new().device("dev/node", ty, major, minor).tar();
        let e = d.apply(&layer, TAR).unwrap_err();
        assert!(matches!(e, DiffError::DeviceNode { .. }), "{e}");
        assert!(
            e.to_string()
                .contains(&format!("{kind} device node {major}:{minor}")),
            "{e}"
        );
        assert!(!d.target.join("dev/node").exists());
        d.assert_sentinel_untouched();
    }
}

fn limits(f: impl FnOnce(&mut Limits)) -> ApplyOptions {
    let mut l = Limits::default();
    f(&mut l);
    ApplyOptions {
        format: Format::Native,
        limits: l,
    }
}

#[test]
fn hostile_decompression_bomb_is_refused_by_the_ratio_guard() {
    let d = Dirs::new();
    let zeros = vec![0u8; 16 << 20];
    let tar = Layer::new().file("bomb", &zeros).tar();
    let opts = limits(|l| {
        l.max_ratio = 100;
        l.ratio_min_bytes = 1 << 20;
    });
    for (bytes, mt) in [(gzip(&tar), TGZ), (zstd(&tar), TZST)] {
        assert!(bytes.len() * 100 < tar.len(), "the test layer must compress well");
        let e = d.apply_with(&bytes, mt, &opts).unwrap_err();
        assert!(
            matches!(
                e,
                DiffError::Limit {
                    kind: LimitKind::Ratio,
                    limit: 100
                }
            ),
            "{mt}: {e}"
        );
        assert!(e.to_string().contains("compression ratio"), "{e}");
        assert_eq!(
            crate::errdefs::ErrorKind::kind(&e),
            crate::errdefs::Kind::ResourceExhausted
        );
        d.assert_sentinel_untouched();
    }
}

#[test]
#[ignore = "e2e: needs root (chown)"]
fn hostile_huge_layer_is_refused_by_size_and_entry_limits() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    let d = Dirs::new();
    // Size announced by a header: refused before any byte of it is written.
    let tar = Layer::new().file("big", &vec![7u8; 2 << 20]).tar();
    let opts = limits(|l| l.max_bytes = 1 << 20);
    let e = d.apply_with(&tar, TAR, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            DiffError::Limit {
                kind: LimitKind::Bytes,
                ..
            }
        ),
        "{e}"
    );
    assert!(!d.target.join("big").exists());
    // Many small entries.
    let mut l = Layer::new();
    for i in 0..50 {
        l.file(&format!("f{i}"), b"x");
    }
    let tar = l.tar();
    let opts = limits(|l| l.max_entries = 10);
    let e = d.apply_with(&gzip(&tar), TGZ, &opts).unwrap_err();
    assert!(
        matches!(
            e,
            DiffError::Limit {
                kind: LimitKind::Entries,
                limit: 10
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("entry count"), "{e}");
    // A header that lies about its size (claims 1 TiB) with the default limits.
    let mut h = tar::Header::new_ustar();
    h.set_path("liar").unwrap();
    h.set_size(1 << 40);
    h.set_mode(0o644);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.extend_from_slice(&[0u8; 1024]);
    let e = d.apply(&raw, TAR).unwrap_err();
    assert!(
        matches!(
            e,
            DiffError::Limit {
                kind: LimitKind::Bytes,
                ..
            }
        ),
        "{e}"
    );
    d.assert_sentinel_untouched();
}

#[test]
fn target_must_be_inside_a_snapshot_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("snapshots");
    std::fs::create_dir_all(allowed.join("1/fs")).unwrap();
    let w = Walking::new(Limits::default(), vec![allowed.clone()], None);
    let bind = |src: &Path, opts: &[&str]| Mount {
        r#type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: opts.iter().map(std::string::ToString::to_string).collect(),
    };
    assert!(w.target(&[bind(&allowed.join("1/fs"), &["rw", "rbind"])]).is_ok());
    let e = w.target(&[bind(tmp.path(), &["rw", "rbind"])]).unwrap_err();
    assert!(e.to_string().contains("not a snapshot directory"), "{e}");
    let e = w
        .target(&[bind(&allowed.join("1/fs/../../.."), &["rw", "rbind"])])
        .unwrap_err();
    assert!(e.to_string().contains("not a snapshot directory"), "{e}");
    let e = w
        .target(&[bind(&allowed.join("1/fs"), &["ro", "rbind"])])
        .unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
    let overlay = Mount {
        r#type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options: vec![
            format!("upperdir={}", allowed.join("1/fs").display()),
            format!("lowerdir={}", allowed.join("1/fs").display()),
        ],
    };
    let (_, format) = w.target(&[overlay]).unwrap();
    assert!(matches!(format, Format::Overlay { .. }));
}

/// Everything under `root` as (path, kind, mode, uid, content or link target), sorted.
fn tree(root: &Path) -> Vec<(String, u32, u32, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let r = rel.join(e.file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let data = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                stack.push(r.clone());
            }
            out.push((
                r.display().to_string(),
                m.mode() & libc::S_IFMT,
                m.mode() & 0o7777,
                m.uid(),
                data,
            ));
        }
    }
    out.sort();
    out
}

fn populate(dir: &Path) {
    std::fs::create_dir_all(dir.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(dir.join("var/cache/x")).unwrap();
    std::fs::write(dir.join("etc/keep"), b"keep").unwrap();
    std::fs::write(dir.join("etc/change"), b"old").unwrap();
    std::fs::write(dir.join("etc/remove"), b"bye").unwrap();
    std::fs::write(dir.join("etc/conf.d/a"), b"a").unwrap();
    std::fs::write(dir.join("var/cache/x/blob"), b"blob").unwrap();
    std::fs::write(dir.join("mode"), b"m").unwrap();
}

fn mutate(dir: &Path) {
    std::fs::write(dir.join("etc/change"), b"new content").unwrap();
    std::fs::remove_file(dir.join("etc/remove")).unwrap();
    std::fs::remove_dir_all(dir.join("var/cache")).unwrap();
    std::fs::remove_dir_all(dir.join("etc/conf.d")).unwrap();
    std::fs::create_dir(dir.join("etc/conf.d")).unwrap();
    std::fs::write(dir.join("etc/conf.d/b"), b"b").unwrap();
    std::fs::set_permissions(dir.join("mode"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::write(dir.join("usr/bin/app"), b"app").unwrap();
    std::os::unix::fs::symlink("/usr/bin/app", dir.join("usr/bin/alias")).unwrap();
    std::fs::hard_link(dir.join("usr/bin/app"), dir.join("usr/bin/app2")).unwrap();
}

/// write_layer(changes) applied onto a copy of the lower tree gives the upper tree.
fn roundtrip(changes: &Changes, lower: &Path, expect: &Path, media_type: &str) {
    let mut layer = Vec::new();
    let (desc, uncompressed) = write_layer(changes, media_type, &mut layer).unwrap();
    assert_eq!(desc.size, layer.len() as i64);
    assert_eq!(desc.digest, sha(&layer));
    let d = Dirs::new();
    crate::snapshots::copy_tree(lower, &d.target.join("rootfs")).unwrap();
    let applied = apply_layer(
        &layer[..],
        if media_type.is_empty() { TGZ } else { media_type },
        &d.target.join("rootfs"),
        &ApplyOptions::default(),
    )
    .unwrap();
    assert_eq!(applied.digest, uncompressed);
    assert_eq!(tree(&d.target.join("rootfs")), tree(expect));
}

#[test]
fn compare_walk_roundtrips_through_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper) = (tmp.path().join("lower"), tmp.path().join("upper"));
    populate(&lower);
    crate::snapshots::copy_tree(&lower, &upper).unwrap();
    mutate(&upper);
    let changes = Changes::Walk {
        lower: Some(lower.clone()),
        upper: upper.clone(),
    };
    for mt in ["", TAR, TZST] {
        roundtrip(&changes, &lower, &upper, mt);
    }
    // Unchanged files are not in the layer; removed ones are whiteouts.
    let mut raw = Vec::new();
    write_changes(&changes, &mut raw).unwrap();
    let names: Vec<String> = tar::Archive::new(&raw[..])
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert!(!names.iter().any(|n| n == "etc/keep"), "{names:?}");
    assert!(names.iter().any(|n| n == "etc/.wh.remove"), "{names:?}");
    assert!(names.iter().any(|n| n == "var/.wh.cache"), "{names:?}");
    assert!(!names.iter().any(|n| n.starts_with("var/cache/")), "{names:?}");
    // A first layer: everything.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    roundtrip(
        &Changes::Walk {
            lower: None,
            upper: upper.clone(),
        },
        &empty,
        &upper,
        "",
    );
}

#[test]
#[ignore = "e2e: needs root (overlay mount)"]
fn compare_overlay_upper_roundtrips_through_apply() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let tmp = tempfile::tempdir().unwrap();
    let (lower, upper, work, merged) = (
        tmp.path().join("lower"),
        tmp.path().join("upper"),
        tmp.path().join("work"),
        tmp.path().join("merged"),
    );
    populate(&lower);
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .unwrap();
    mutate(&merged);
    let expect = tmp.path().join("expect");
    crate::snapshots::copy_tree(&merged, &expect).unwrap();
    umount2(&merged, MntFlags::MNT_DETACH).unwrap();
    roundtrip(&Changes::OverlayUpper(upper.clone()), &lower, &expect, "");
}

#[test]
#[ignore = "e2e: needs root (chown, mknod)"]
fn gnu_tar_layers_apply_like_the_source_tree() {
    crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
    // A layer as GNU tar writes it (PAX, long names, symlinks, hard links, a fifo), gzipped.
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let zoneinfo = Path::new("/usr/share/zoneinfo");
    if zoneinfo.is_dir() {
        crate::snapshots::copy_tree(zoneinfo, &src.join("zoneinfo")).unwrap();
    }
    let long = src.join("a".repeat(120)).join("b".repeat(120));
    std::fs::create_dir_all(&long).unwrap();
    std::fs::write(long.join("c".repeat(200)), b"long").unwrap();
    std::fs::write(src.join("orig"), b"shared").unwrap();
    std::fs::hard_link(src.join("orig"), src.join("link")).unwrap();
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    let layer = tmp.path().join("layer.tar.gz");
    let st = std::process::Command::new("tar")
        .args(["--format=pax", "-czf"])
        .arg(&layer)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .expect("run GNU tar (apt-get install tar)");
    assert!(st.success());
    let d = Dirs::new();
    let bytes = std::fs::read(&layer).unwrap();
    d.apply(&bytes, "application/vnd.docker.image.rootfs.diff.tar.gzip")
        .unwrap();
    assert_eq!(tree(&d.target), tree(&src));
    assert_eq!(
        std::fs::metadata(d.target.join("orig")).unwrap().ino(),
        std::fs::metadata(d.target.join("link")).unwrap().ino()
    );
}

#[test]
fn compare_understands_the_mount_pairs_ctr_snapshots_diff_sends() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("snapshots");
    for id in 1..=3 {
        std::fs::create_dir_all(root.join(format!("{id}/fs"))).unwrap();
    }
    let w = Walking::new(Limits::default(), vec![root.clone()], None);
    let fs = |id: u32| root.join(format!("{id}/fs")).display().to_string();
    let m = |ty: &str, source: &str, options: Vec<String>| Mount {
        r#type: ty.into(),
        source: source.into(),
        target: String::new(),
        options,
    };
    let bind = |id: u32, flag: &str| m("bind", &fs(id), vec![flag.into(), "rbind".into()]);
    let overlay = |opts: Vec<String>| m("overlay", "overlay", opts);
    let canon = |id: u32| root.join(format!("{id}/fs")).canonicalize().unwrap();
    // Active over one parent: lower = view of the parent (a ro bind).
    let active = overlay(vec![
        format!("workdir={}", root.join("3/work").display()),
        format!("upperdir={}", fs(3)),
        format!("lowerdir={}", fs(1)),
    ]);
    assert_eq!(
        w.changes(&[bind(1, "ro")], std::slice::from_ref(&active))
            .unwrap(),
        Changes::OverlayUpper(canon(3))
    );
    // The wrong lower is refused rather than diffed wrongly.
    assert!(w.changes(&[bind(2, "ro")], &[active]).is_err());
    // A view of a committed snapshot over two layers: lower = view of its parent chain.
    let view = overlay(vec![format!("lowerdir={}:{}:{}", fs(3), fs(2), fs(1))]);
    let lower = overlay(vec![format!("lowerdir={}:{}", fs(2), fs(1))]);
    assert_eq!(
        w.changes(&[lower], &[view]).unwrap(),
        Changes::OverlayUpper(canon(3))
    );
    // A first layer (or native): two binds, walked.
    assert_eq!(
        w.changes(&[bind(1, "ro")], &[bind(2, "rw")]).unwrap(),
        Changes::Walk {
            lower: Some(canon(1)),
            upper: canon(2)
        }
    );
    assert_eq!(
        w.changes(&[], &[bind(2, "ro")]).unwrap(),
        Changes::Walk {
            lower: None,
            upper: canon(2)
        }
    );
    // Host paths are refused.
    let host = m("bind", "/etc", vec!["ro".into()]);
    assert!(w.changes(&[], &[host]).is_err());
}
