//! Compare: the changes between two trees as an OCI layer (tar), the inverse of `apply.rs`.
//!
//! Two sources of changes:
//! - [`Changes::OverlayUpper`]: an overlay upper dir *is* the change set. Its entries are
//!   written as they are, except overlay's markers, which become OCI whiteouts: a 0/0 char
//!   device `NAME` → an empty `.wh.NAME`; a dir with `trusted.overlay.opaque=y` → the dir
//!   plus `DIR/.wh..wh..opq`.
//! - [`Changes::Walk`]: a double walk of `lower` and `upper` (native snapshots, or a first
//!   layer with an empty lower): an upper entry that is new, or differs from the lower one
//!   in type, mode, owner, size, mtime (with nanoseconds), device or link target, is written;
//!   a lower entry missing from upper gets a `.wh.NAME` (only at the top of a removed tree).
//!
//! Entries are written in sorted order, parents first; hard links inside the change set are
//! kept as links; symlinks are never followed. xattrs are not carried (yet).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::apply::Compression;
use super::beneath::{Root, exactly};
use super::error::DiffError;
use super::model::Descriptor;

/// Where the changes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// The upper dir of an overlay whose lower dirs are the "before" state.
    OverlayUpper(PathBuf),
    /// Compare two trees; `lower` None = an empty "before".
    Walk { lower: Option<PathBuf>, upper: PathBuf },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> DiffError {
    let path = path.to_owned();
    move |source| DiffError::Io { op, path, source }
}

/// Writes the changes as an uncompressed tar into `out`.
pub fn write_changes(changes: &Changes, out: impl Write) -> Result<(), DiffError> {
    let mut w = Writer {
        b: tar::Builder::new(out),
        links: HashMap::new(),
    };
    w.b.follow_symlinks(false);
    match changes {
        Changes::OverlayUpper(upper) => {
            let root = Root::open(upper).map_err(io("open", upper))?;
            w.overlay(&root, Path::new(""))?;
        }
        Changes::Walk { lower, upper } => {
            let root = Root::open(upper).map_err(io("open", upper))?;
            w.walk(lower.as_deref(), &root, Path::new(""))?;
        }
    }
    let out = w.b.into_inner().map_err(io("finish tar", Path::new("")))?;
    drop(out);
    Ok(())
}

struct Writer<W: Write> {
    b: tar::Builder<W>,
    /// (dev, ino) of files already written → their archive path (hard links).
    links: HashMap<(u64, u64), PathBuf>,
}

fn sorted_names(dir: &Path) -> Result<Vec<OsString>, DiffError> {
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io("read directory", dir))? {
        names.push(e.map_err(io("read directory", dir))?.file_name());
    }
    names.sort();
    Ok(names)
}

fn opaque(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut buf = [0u8; 4];
    // SAFETY: NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            c"trusted.overlay.opaque".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    n == 1 && buf[0] == b'y'
}

/// Whether lower entry `a` (at `a_path`) and upper entry `b` (its link target from
/// `b_link`) are the same.
fn same(
    a: &std::fs::Metadata,
    b: &std::fs::Metadata,
    a_path: &Path,
    b_link: impl FnOnce() -> Option<PathBuf>,
) -> bool {
    let kind = |m: &std::fs::Metadata| m.mode() & libc::S_IFMT;
    if kind(a) != kind(b)
        || a.mode() != b.mode()
        || a.uid() != b.uid()
        || a.gid() != b.gid()
        || a.rdev() != b.rdev()
    {
        return false;
    }
    if a.is_dir() {
        return true;
    }
    if a.size() != b.size() || a.mtime() != b.mtime() || a.mtime_nsec() != b.mtime_nsec() {
        return false;
    }
    if a.file_type().is_symlink() {
        return std::fs::read_link(a_path).ok() == b_link();
    }
    true
}

impl<W: Write> Writer<W> {
    fn header(&self, meta: &std::fs::Metadata) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_mode(meta.mode() & 0o7777);
        h.set_uid(meta.uid() as u64);
        h.set_gid(meta.gid() as u64);
        h.set_mtime(meta.mtime().max(0) as u64);
        h.set_size(0);
        h
    }

    fn whiteout(&mut self, dir: &Path, name: &OsString) -> Result<(), DiffError> {
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        let path = dir.join(wh);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        self.b
            .append_data(&mut h, &path, std::io::empty())
            .map_err(io("write whiteout", &path))
    }

    /// Writes the entry `rel` of `root` (read beneath it, never through a symlink).
    fn entry(&mut self, root: &Root, rel: &Path, meta: &std::fs::Metadata) -> Result<(), DiffError> {
        let src = &root.path().join(rel);
        let mut h = self.header(meta);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            let mut p = rel.as_os_str().to_owned();
            p.push("/");
            return self
                .b
                .append_data(&mut h, Path::new(&p), std::io::empty())
                .map_err(io("write directory", src));
        }
        if !ft.is_symlink() && meta.nlink() > 1 {
            if let Some(first) = self.links.get(&(meta.dev(), meta.ino())).cloned() {
                h.set_entry_type(tar::EntryType::Link);
                return self
                    .b
                    .append_link(&mut h, rel, &first)
                    .map_err(io("write hard link", src));
            }
            self.links.insert((meta.dev(), meta.ino()), rel.to_owned());
        }
        if ft.is_symlink() {
            h.set_entry_type(tar::EntryType::Symlink);
            let target = root.read_link(rel).map_err(io("read link", src))?;
            return self
                .b
                .append_link(&mut h, rel, &target)
                .map_err(io("write symlink", src));
        }
        if ft.is_file() {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(meta.len());
            let f = root.open_file(rel, meta).map_err(io("open", src))?;
            return self
                .b
                .append_data(&mut h, rel, exactly(f, meta.len()))
                .map_err(io("write file", src));
        }
        let ty = if ft.is_fifo() {
            tar::EntryType::Fifo
        } else if ft.is_char_device() {
            tar::EntryType::Char
        } else if ft.is_block_device() {
            tar::EntryType::Block
        } else {
            // Sockets are not carried in layers.
            return Ok(());
        };
        h.set_entry_type(ty);
        if ty != tar::EntryType::Fifo {
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            h.set_device_major(major).map_err(io("write device", src))?;
            h.set_device_minor(minor).map_err(io("write device", src))?;
        }
        self.b
            .append_data(&mut h, rel, std::io::empty())
            .map_err(io("write special file", src))
    }

    fn overlay(&mut self, root: &Root, rel: &Path) -> Result<(), DiffError> {
        let dir = root.path().join(rel);
        for name in root.list(rel).map_err(io("read directory", &dir))? {
            let src = dir.join(&name);
            let r = rel.join(&name);
            let meta = root.lstat(&r).map_err(io("stat", &src))?;
            if meta.file_type().is_char_device() && meta.rdev() == 0 {
                self.whiteout(rel, &name)?;
                continue;
            }
            self.entry(root, &r, &meta)?;
            if meta.is_dir() {
                // By path: reads one flag, never file contents.
                if opaque(&src) {
                    self.whiteout(&r, &OsString::from(".wh..opq"))?;
                }
                self.overlay(root, &r)?;
            }
        }
        Ok(())
    }

    fn walk(&mut self, lower: Option<&Path>, upper: &Root, rel: &Path) -> Result<(), DiffError> {
        let udir = upper.path().join(rel);
        let unames = upper.list(rel).map_err(io("read directory", &udir))?;
        let ldir = lower.map(|l| l.join(rel));
        let lnames = match &ldir {
            Some(d) if std::fs::symlink_metadata(d).is_ok_and(|m| m.is_dir()) => sorted_names(d)?,
            _ => Vec::new(),
        };
        for name in &lnames {
            if unames.binary_search(name).is_err() {
                self.whiteout(rel, name)?;
            }
        }
        for name in unames {
            let src = udir.join(&name);
            let r = rel.join(&name);
            let meta = upper.lstat(&r).map_err(io("stat", &src))?;
            let lower_path = ldir.as_ref().map(|d| d.join(&name));
            let lmeta = lower_path
                .as_ref()
                .and_then(|p| std::fs::symlink_metadata(p).ok());
            let changed = match (&lmeta, &lower_path) {
                (Some(lm), Some(lp)) => !same(lm, &meta, lp, || upper.read_link(&r).ok()),
                _ => true,
            };
            if changed {
                self.entry(upper, &r, &meta)?;
            }
            if meta.is_dir() {
                // A dir replacing a non-dir has no lower children to compare with.
                let lower = match &lmeta {
                    Some(lm) if lm.is_dir() => lower,
                    _ => None,
                };
                self.walk(lower, upper, &r)?;
            }
        }
        Ok(())
    }
}

/// Writes the layer for `changes` compressed as `media_type` says (empty = tar+gzip, as
/// containerd's default) into `out`; returns (the layer's descriptor, uncompressed digest).
pub fn write_layer(
    changes: &Changes,
    media_type: &str,
    out: impl std::io::Write,
) -> Result<(Descriptor, String), DiffError> {
    use sha2::Digest;
    use std::io::Write;
    /// Hashes and counts what passes through.
    struct Hashing<W> {
        inner: W,
        h: sha2::Sha256,
        n: u64,
    }
    impl<W: std::io::Write> std::io::Write for Hashing<W> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.inner.write(buf)?;
            self.h.update(&buf[..n]);
            self.n += n as u64;
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.inner.flush()
        }
    }
    let media_type = if media_type.is_empty() {
        "application/vnd.oci.image.layer.v1.tar+gzip"
    } else {
        media_type
    };
    let compression = match media_type {
        "application/vnd.oci.image.layer.v1.tar" | "application/vnd.docker.image.rootfs.diff.tar" => {
            Compression::None
        }
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Compression::Gzip,
        "application/vnd.oci.image.layer.v1.tar+zstd" => Compression::Zstd,
        other => return Err(DiffError::UnsupportedMediaType(other.to_owned())),
    };
    let outer = Hashing {
        inner: out,
        h: sha2::Sha256::new(),
        n: 0,
    };
    let err = |source| DiffError::Io {
        op: "write layer",
        path: PathBuf::new(),
        source,
    };
    let (outer, uncompressed) = match compression {
        Compression::None => {
            let mut inner = Hashing {
                inner: outer,
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner, u)
        }
        Compression::Gzip => {
            let mut inner = Hashing {
                inner: flate2::write::GzEncoder::new(outer, flate2::Compression::default()),
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner.finish().map_err(err)?, u)
        }
        Compression::Zstd => {
            let mut inner = Hashing {
                inner: zstd::stream::write::Encoder::new(outer, 3).map_err(err)?,
                h: sha2::Sha256::new(),
                n: 0,
            };
            write_changes(changes, &mut inner)?;
            let u = format!("sha256:{:x}", inner.h.clone().finalize());
            (inner.inner.finish().map_err(err)?, u)
        }
    };
    let mut outer = outer;
    outer.flush().map_err(err)?;
    Ok((
        Descriptor {
            media_type: media_type.to_owned(),
            digest: format!("sha256:{:x}", outer.h.finalize()),
            size: outer.n as i64,
        },
        uncompressed,
    ))
}
