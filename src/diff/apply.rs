//! The layer applier: extracts an OCI layer (tar, optionally gzip/zstd compressed) into a
//! directory, hardened against hostile archives.
//!
//! # How paths are resolved
//!
//! The target is opened once (`O_DIRECTORY|O_NOFOLLOW`) and every operation is relative to a
//! directory fd obtained under it:
//!
//! 1. An entry name is cleaned lexically: a leading `/` is stripped (as containerd does),
//!    `.` and empty components dropped, `..` pops a component; popping above the root is
//!    refused ([`DiffError::PathEscape`]).
//! 2. The parent directory is opened with `openat2(root, parent, RESOLVE_BENEATH |
//!    RESOLVE_NO_MAGICLINKS)`: the kernel refuses any resolution (`..` or a symlink, absolute
//!    or relative) that leaves the root, so a symlink planted by the layer (or a lower layer)
//!    can never redirect a write outside it ([`DiffError::ParentEscape`]). Missing parents
//!    are created one level at a time under an fd obtained the same way.
//! 3. The leaf is handled with `*at` calls that never follow it (`O_NOFOLLOW|O_EXCL` on
//!    create, `AT_SYMLINK_NOFOLLOW`, `linkat` without `AT_SYMLINK_FOLLOW`). An existing leaf
//!    is removed first (recursively, never following symlinks) unless both are directories.
//!
//! Symlinks themselves may point anywhere: they are only created, never followed.
//! Hard link targets are cleaned and resolved the same way, must exist inside the root and
//! must not be directories. Device nodes are refused ([`DiffError::DeviceNode`]) unless
//! `allow_device_nodes`; a char device 0/0 is a whiteout (overlay's own format) and is
//! handled as one. Ownership, mode (incl. setuid), mtime and the `user.*` and
//! `security.capability` xattrs are applied; other xattrs (`trusted.*`, `security.selinux`,
//! ...) are skipped with a debug log so a layer cannot forge overlay metadata.
//!
//! # Whiteouts
//!
//! | entry             | native format                          | overlay format (upperdir)              |
//! |-------------------|----------------------------------------|----------------------------------------|
//! | `dir/.wh.NAME`    | remove `dir/NAME` (recursively)        | `dir/NAME` = char device 0/0           |
//! | `dir/.wh..wh..opq`| remove what `dir` held before this layer | xattr `trusted.overlay.opaque=y` on `dir` |
//!
//! In overlay format a parent missing from the upper dir is created with the mode and owner
//! it has in the first lower dir that holds it (else 0755 root).
//!
//! # Limits
//!
//! The decompressed stream passes through a guard that counts bytes (and hashes them for
//! the applied digest): more than `max_bytes`, more than `max_entries` entries, or (past
//! `ratio_min_bytes`) more than `max_ratio` uncompressed bytes per compressed byte stops the
//! apply with [`DiffError::Limit`]. A file whose header announces more than what is left of
//! the budget is refused before a byte of it is written.
//!
//! A refused layer leaves a partially applied target; callers discard the snapshot (as
//! containerd's unpacker removes the active snapshot on error).

use std::cell::Cell;
use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::sys::stat::{Mode, SFlag, fstatat, mkdirat, mknodat};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};
use sha2::{Digest, Sha256};

use super::error::{DiffError, LimitKind};
use super::model::{Applied, ApplyOptions, Format, MEDIA_TYPE_LAYER, check_media_type};

const WHITEOUT_PREFIX: &str = ".wh.";
const WHITEOUT_META_PREFIX: &str = ".wh..wh.";
const WHITEOUT_OPAQUE: &str = ".wh..wh..opq";
const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Which compression a stream uses (by its magic bytes, as containerd's DecompressStream).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

fn detect(head: &[u8]) -> Compression {
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else {
        Compression::None
    }
}

/// Shared counters between the compressed-side and uncompressed-side readers.
#[derive(Default)]
struct Counters {
    compressed: Cell<u64>,
    uncompressed: Cell<u64>,
    hit: Cell<Option<(LimitKind, u64)>>,
}

/// Counts bytes read from the (compressed) source.
struct CountIn<R> {
    inner: R,
    c: Rc<Counters>,
}

impl<R: Read> Read for CountIn<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.c.compressed.set(self.c.compressed.get() + n as u64);
        Ok(n)
    }
}

/// Counts, hashes and limits the decompressed stream.
struct Guard<R> {
    inner: R,
    c: Rc<Counters>,
    hasher: Sha256,
    max_bytes: u64,
    max_ratio: u64,
    ratio_min_bytes: u64,
    compressed: bool,
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some((kind, limit)) = self.c.hit.get() {
            return Err(limit_io(kind, limit));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        let total = self.c.uncompressed.get() + n as u64;
        self.c.uncompressed.set(total);
        if total > self.max_bytes {
            self.c.hit.set(Some((LimitKind::Bytes, self.max_bytes)));
            return Err(limit_io(LimitKind::Bytes, self.max_bytes));
        }
        if self.compressed && self.max_ratio > 0 && total > self.ratio_min_bytes {
            let compressed = self.c.compressed.get().max(1);
            if total / compressed > self.max_ratio {
                self.c.hit.set(Some((LimitKind::Ratio, self.max_ratio)));
                return Err(limit_io(LimitKind::Ratio, self.max_ratio));
            }
        }
        Ok(n)
    }
}

fn limit_io(kind: LimitKind, limit: u64) -> std::io::Error {
    std::io::Error::other(format!("layer limit exceeded: {kind:?} > {limit}"))
}

/// Applies the layer read from `reader` (media type `media_type`) to `target`.
///
/// Returns the digest and size of the uncompressed tar stream (containerd's "applied"
/// descriptor, which image configs list as `diff_ids`).
pub fn apply_layer(
    reader: impl Read,
    media_type: &str,
    target: &Path,
    opts: &ApplyOptions,
) -> Result<Applied, DiffError> {
    check_media_type(media_type)?;
    let counters = Rc::new(Counters::default());
    let mut source = BufReader::new(CountIn {
        inner: reader,
        c: counters.clone(),
    });
    let head = source.fill_buf().map_err(|source| DiffError::Read { source })?;
    let compression = detect(head);
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(source),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(source)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(source).map_err(|source| DiffError::Read { source })?,
        ),
    };
    let guard = Guard {
        inner: decompressed,
        c: counters.clone(),
        hasher: Sha256::new(),
        max_bytes: opts.limits.max_bytes,
        max_ratio: opts.limits.max_ratio,
        ratio_min_bytes: opts.limits.ratio_min_bytes,
        compressed: compression != Compression::None,
    };
    let limit_or = |counters: &Counters, e: DiffError| match counters.hit.get() {
        Some((kind, limit)) => DiffError::Limit { kind, limit },
        None => e,
    };
    let mut archive = tar::Archive::new(guard);
    let root = open_root(target)?;
    let mut applier = Applier {
        root,
        target: target.to_owned(),
        opts,
        created: HashSet::new(),
        dirs: Vec::new(),
        entries: 0,
    };
    applier
        .run(&mut archive, &counters)
        .map_err(|e| limit_or(&counters, e))?;
    // Drain what follows the end-of-archive marker: the digest covers the whole stream.
    let mut guard = archive.into_inner();
    std::io::copy(&mut guard, &mut std::io::sink())
        .map_err(|source| limit_or(&counters, DiffError::Read { source }))?;
    applier.finish_dirs()?;
    let digest = format!("sha256:{:x}", guard.hasher.finalize());
    Ok(Applied {
        media_type: MEDIA_TYPE_LAYER.to_owned(),
        digest,
        size: counters.uncompressed.get(),
    })
}

fn open_root(target: &Path) -> Result<OwnedFd, DiffError> {
    openat(
        nix::fcntl::AT_FDCWD,
        target,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| DiffError::Io {
        op: "open target directory",
        path: target.to_owned(),
        source: e.into(),
    })
}

/// Lexically cleans an entry path into components (see the module docs).
pub fn clean(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for comp in raw.split(|b| *b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(OsString::from_vec(c.to_vec())),
        }
    }
    Some(out)
}

fn join(comps: &[OsString]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in comps {
        p.push(c);
    }
    p
}

fn display(comps: &[OsString]) -> String {
    join(comps).display().to_string()
}

struct Applier<'a> {
    root: OwnedFd,
    target: PathBuf,
    opts: &'a ApplyOptions,
    /// Paths this layer created (native opaque dirs keep them).
    created: HashSet<Vec<OsString>>,
    /// Directories whose mtime is set at the end (children would change it).
    dirs: Vec<(Vec<OsString>, i64)>,
    entries: u64,
}

fn how_beneath(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

impl Applier<'_> {
    fn io(&self, op: &'static str, comps: &[OsString], e: impl Into<std::io::Error>) -> DiffError {
        DiffError::Io {
            op,
            path: self.target.join(join(comps)),
            source: e.into(),
        }
    }

    /// Opens directory `comps` under the root (kernel-checked to stay beneath it).
    fn open_dir(&self, comps: &[OsString]) -> Result<Result<OwnedFd, Errno>, DiffError> {
        if comps.is_empty() {
            return Ok(Ok(self
                .root
                .try_clone()
                .map_err(|e| self.io("dup root fd", comps, e))?));
        }
        let r = openat2(
            self.root.as_fd(),
            &join(comps),
            how_beneath(OFlag::O_DIRECTORY | OFlag::O_RDONLY),
        );
        Ok(r)
    }

    /// Opens (creating missing levels of) the parent directory `comps` of `entry`.
    fn parent(&mut self, entry: &[OsString], comps: &[OsString]) -> Result<OwnedFd, DiffError> {
        match self.open_dir(comps)? {
            Ok(fd) => return Ok(fd),
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(self.resolve_error(entry, comps, e)),
        }
        let mut fd = self.open_dir(&[])?.map_err(|e| self.io("open", &[], e))?;
        for i in 1..=comps.len() {
            let prefix = &comps[..i];
            match self.open_dir(prefix)? {
                Ok(next) => fd = next,
                Err(Errno::ENOENT) => {
                    let (mode, uid, gid) = self.lower_attrs(prefix);
                    let name = &comps[i - 1];
                    match mkdirat(fd.as_fd(), name.as_os_str(), Mode::from_bits_truncate(mode)) {
                        Ok(()) | Err(Errno::EEXIST) => {}
                        Err(e) => return Err(self.io("create directory", prefix, e)),
                    }
                    fd = self.open_dir(prefix)?.map_err(|e| match e {
                        // It exists (EEXIST above) yet does not resolve: a dangling symlink.
                        Errno::ENOENT => DiffError::ParentNotDir {
                            entry: display(entry),
                            parent: display(prefix),
                        },
                        e => self.resolve_error(entry, prefix, e),
                    })?;
                    nix::unistd::fchown(fd.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                        .map_err(|e| self.io("chown", prefix, e))?;
                    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                        .map_err(|e| self.io("chmod", prefix, e))?;
                }
                Err(e) => return Err(self.resolve_error(entry, prefix, e)),
            }
        }
        Ok(fd)
    }

    fn resolve_error(&self, entry: &[OsString], parent: &[OsString], e: Errno) -> DiffError {
        match e {
            Errno::EXDEV | Errno::ELOOP => DiffError::ParentEscape {
                entry: display(entry),
                parent: display(parent),
            },
            Errno::ENOTDIR => DiffError::ParentNotDir {
                entry: display(entry),
                parent: display(parent),
            },
            e => self.io("open parent directory", parent, e),
        }
    }

    /// Mode/owner for a parent created in an overlay upper dir: from the first lower holding
    /// it, else 0755 root.
    fn lower_attrs(&self, comps: &[OsString]) -> (u32, u32, u32) {
        if let Format::Overlay { lowers } = &self.opts.format {
            for lower in lowers {
                let Ok(lfd) = openat(
                    nix::fcntl::AT_FDCWD,
                    lower,
                    OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                ) else {
                    continue;
                };
                let Ok(fd) = openat2(
                    lfd.as_fd(),
                    &join(comps),
                    how_beneath(OFlag::O_DIRECTORY | OFlag::O_PATH),
                ) else {
                    continue;
                };
                if let Ok(st) = nix::sys::stat::fstat(fd.as_fd()) {
                    return (st.st_mode & 0o7777, st.st_uid, st.st_gid);
                }
            }
        }
        (0o755, 0, 0)
    }

    fn run<R: Read>(&mut self, archive: &mut tar::Archive<R>, counters: &Counters) -> Result<(), DiffError> {
        let entries = archive.entries().map_err(|source| DiffError::Tar { source })?;
        for entry in entries {
            let mut entry = entry.map_err(|source| DiffError::Tar { source })?;
            self.entries += 1;
            if self.entries > self.opts.limits.max_entries {
                return Err(DiffError::Limit {
                    kind: LimitKind::Entries,
                    limit: self.opts.limits.max_entries,
                });
            }
            let size = entry
                .header()
                .entry_size()
                .map_err(|source| DiffError::Tar { source })?;
            let used = counters.uncompressed.get();
            if size > self.opts.limits.max_bytes.saturating_sub(used) {
                return Err(DiffError::Limit {
                    kind: LimitKind::Bytes,
                    limit: self.opts.limits.max_bytes,
                });
            }
            self.entry(&mut entry)?;
        }
        Ok(())
    }

    /// One tar entry: a whiteout, or a node of one kind, created fresh in its parent
    /// (whatever was there is removed, a directory over a directory is kept).
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), DiffError> {
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean(&raw).ok_or_else(|| DiffError::PathEscape { entry: name.clone() })?;
        let ty = entry.header().entry_type();
        if matches!(ty, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
            return Ok(());
        }
        let Some((leaf, parent)) = comps.split_last() else {
            // The root itself ("./"): its attributes stay the snapshot's.
            return Ok(());
        };
        if leaf.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return self.whiteout_entry(&name, &comps);
        }
        let meta = Meta::of(entry.header(), &name)?;
        if matches!(ty, tar::EntryType::Char | tar::EntryType::Block) {
            let (major, minor) = device(entry.header());
            if ty == tar::EntryType::Char && major == 0 && minor == 0 {
                let pfd = self.parent(&comps, parent)?;
                return self.whiteout(pfd, &comps, leaf);
            }
            if !self.opts.limits.allow_device_nodes {
                return Err(DiffError::DeviceNode {
                    entry: name,
                    kind: if ty == tar::EntryType::Char {
                        "char"
                    } else {
                        "block"
                    },
                    major,
                    minor,
                });
            }
        }
        let pfd = self.parent(&comps, parent)?;
        let existing = fstatat(pfd.as_fd(), leaf.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok();
        let existing_is_dir = existing.is_some_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
        let is_dir = ty == tar::EntryType::Directory;
        if existing.is_some() && !(is_dir && existing_is_dir) {
            remove_at(pfd.as_fd(), leaf).map_err(|e| self.io("remove", &comps, e))?;
        }
        let xattrs = xattrs(entry, &name)?;
        let at = At {
            pfd: &pfd,
            leaf,
            comps: &comps,
        };
        match ty {
            tar::EntryType::Directory => self.directory(&at, &meta, &xattrs, existing_is_dir)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                self.regular(&at, &meta, &xattrs, entry)?;
            }
            tar::EntryType::Symlink => {
                let target = link_name(entry, &name, "symlink target")?;
                self.symlink(&at, &meta, &target)?;
            }
            tar::EntryType::Link => {
                let target = link_name(entry, &name, "hard link target")?;
                self.hard_link(&at, &name, &target)?;
            }
            tar::EntryType::Fifo | tar::EntryType::Char | tar::EntryType::Block => {
                let dev = match ty {
                    tar::EntryType::Fifo => None,
                    _ => Some(device(entry.header())),
                };
                self.node(&at, &meta, ty == tar::EntryType::Char, dev)?;
            }
            other => {
                return Err(DiffError::UnsupportedEntry {
                    entry: name,
                    kind: format!("{other:?}"),
                });
            }
        }
        self.created.insert(comps);
        Ok(())
    }

    /// `.wh..wh..opq` (opaque dir), `.wh..wh.*` (metadata, skipped) or `.wh.NAME`.
    fn whiteout_entry(&mut self, name: &str, comps: &[OsString]) -> Result<(), DiffError> {
        let Some((leaf, parent)) = comps.split_last() else {
            return Ok(());
        };
        let leaf_bytes = leaf.as_bytes();
        let pfd = self.parent(comps, parent)?;
        if leaf_bytes == WHITEOUT_OPAQUE.as_bytes() {
            return self.opaque(pfd, parent);
        }
        if leaf_bytes.starts_with(WHITEOUT_META_PREFIX.as_bytes()) {
            tracing::debug!(entry = %name, "skipping whiteout metadata entry");
            return Ok(());
        }
        let victim = OsStr::from_bytes(&leaf_bytes[WHITEOUT_PREFIX.len()..]).to_owned();
        if victim.is_empty() || victim == ".." || victim == "." {
            return Err(DiffError::PathEscape {
                entry: name.to_owned(),
            });
        }
        let mut vpath = parent.to_vec();
        vpath.push(victim.clone());
        self.whiteout(pfd, &vpath, &victim)
    }

    fn directory(
        &mut self,
        at: &At<'_>,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
        exists: bool,
    ) -> Result<(), DiffError> {
        if !exists {
            mkdirat(
                at.pfd.as_fd(),
                at.leaf.as_os_str(),
                Mode::from_bits_truncate(0o700),
            )
            .map_err(|e| self.io("create directory", at.comps, e))?;
        }
        let fd = openat(
            at.pfd.as_fd(),
            at.leaf.as_os_str(),
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open directory", at.comps, e))?;
        self.attrs(&fd, at.comps, meta.uid, meta.gid, meta.mode, xattrs)?;
        self.dirs.push((at.comps.to_vec(), meta.mtime));
        Ok(())
    }

    fn regular(
        &self,
        at: &At<'_>,
        meta: &Meta,
        xattrs: &[(String, Vec<u8>)],
        data: &mut impl Read,
    ) -> Result<(), DiffError> {
        let fd = openat(
            at.pfd.as_fd(),
            at.leaf.as_os_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| self.io("create file", at.comps, e))?;
        let mut file = std::fs::File::from(fd);
        std::io::copy(data, &mut file).map_err(|source| DiffError::Read { source })?;
        let fd = OwnedFd::from(file);
        self.attrs(&fd, at.comps, meta.uid, meta.gid, meta.mode, xattrs)?;
        set_times(&fd, meta.mtime).map_err(|e| self.io("set times", at.comps, e))
    }

    fn symlink(&self, at: &At<'_>, meta: &Meta, target: &[u8]) -> Result<(), DiffError> {
        let (pfd, leaf) = (at.pfd.as_fd(), at.leaf.as_os_str());
        symlinkat(OsStr::from_bytes(target), pfd, leaf)
            .map_err(|e| self.io("create symlink", at.comps, e))?;
        fchownat(
            pfd,
            leaf,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("chown", at.comps, e))?;
        let t = TimeSpec::new(meta.mtime, 0);
        nix::sys::stat::utimensat(pfd, leaf, &t, &t, nix::sys::stat::UtimensatFlags::NoFollowSymlink)
            .map_err(|e| self.io("set times", at.comps, e))
    }

    /// A hard link to an earlier entry of the layer, or a file of the lower layers: the target
    /// is resolved beneath the root like any path, and never a directory.
    fn hard_link(&self, at: &At<'_>, name: &str, target_raw: &[u8]) -> Result<(), DiffError> {
        let target = String::from_utf8_lossy(target_raw).into_owned();
        let escape = || DiffError::HardlinkEscape {
            entry: name.to_owned(),
            target: target.clone(),
        };
        let refused = |reason: &'static str| DiffError::HardlinkTarget {
            entry: name.to_owned(),
            target: target.clone(),
            reason,
        };
        let tcomps = clean(target_raw).ok_or_else(escape)?;
        let Some((tleaf, tparent)) = tcomps.split_last() else {
            return Err(escape());
        };
        let tfd = match self.open_dir(tparent)? {
            Ok(fd) => fd,
            Err(Errno::EXDEV | Errno::ELOOP) => return Err(escape()),
            Err(_) => return Err(refused("target not found in the layer's root")),
        };
        match fstatat(tfd.as_fd(), tleaf.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                return Err(refused("target is a directory"));
            }
            Ok(_) => {}
            Err(_) => return Err(refused("target not found in the layer's root")),
        }
        linkat(
            tfd.as_fd(),
            tleaf.as_os_str(),
            at.pfd.as_fd(),
            at.leaf.as_os_str(),
            AtFlags::empty(),
        )
        .map_err(|e| self.io("create hard link", at.comps, e))
    }

    /// A fifo (`dev` None) or a char (`char`) / block device node `dev` = (major, minor).
    fn node(&self, at: &At<'_>, meta: &Meta, char: bool, dev: Option<(u32, u32)>) -> Result<(), DiffError> {
        let (pfd, leaf) = (at.pfd.as_fd(), at.leaf.as_os_str());
        let (kind, dev) = match dev {
            None => (SFlag::S_IFIFO, 0),
            Some((major, minor)) => (
                if char { SFlag::S_IFCHR } else { SFlag::S_IFBLK },
                nix::sys::stat::makedev(u64::from(major), u64::from(minor)),
            ),
        };
        let mode = Mode::from_bits_truncate(meta.mode);
        mknodat(pfd, leaf, kind, mode, dev).map_err(|e| self.io("mknod", at.comps, e))?;
        // The new node is not a symlink; undo the umask.
        nix::sys::stat::fchmodat(pfd, leaf, mode, nix::sys::stat::FchmodatFlags::FollowSymlink)
            .map_err(|e| self.io("chmod", at.comps, e))?;
        let fd = openat(
            pfd,
            leaf,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.io("open", at.comps, e))?;
        fchownat(
            fd.as_fd(),
            "",
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|e| self.io("chown", at.comps, e))
    }

    fn attrs(
        &self,
        fd: &OwnedFd,
        comps: &[OsString],
        uid: u32,
        gid: u32,
        mode: u32,
        xattrs: &[(String, Vec<u8>)],
    ) -> Result<(), DiffError> {
        nix::unistd::fchown(fd.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
            .map_err(|e| self.io("chown", comps, e))?;
        // After chown: chown clears setuid/setgid bits.
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
            .map_err(|e| self.io("chmod", comps, e))?;
        for (name, value) in xattrs {
            set_xattr(fd, name, value).map_err(|e| self.io("set xattr", comps, e))?;
        }
        Ok(())
    }

    /// `.wh.NAME`: native removes NAME; overlay makes NAME a 0/0 char device.
    fn whiteout(&mut self, pfd: OwnedFd, path: &[OsString], victim: &OsStr) -> Result<(), DiffError> {
        remove_at(pfd.as_fd(), victim).map_err(|e| self.io("remove", path, e))?;
        if let Format::Overlay { .. } = self.opts.format {
            mknodat(
                pfd.as_fd(),
                victim,
                SFlag::S_IFCHR,
                Mode::empty(),
                nix::sys::stat::makedev(0, 0),
            )
            .map_err(|e| self.io("create whiteout", path, e))?;
            self.created.insert(path.to_vec());
        }
        Ok(())
    }

    /// `.wh..wh..opq` in `dir`: overlay marks the dir opaque; native removes every child
    /// this layer did not create.
    fn opaque(&mut self, pfd: OwnedFd, dir: &[OsString]) -> Result<(), DiffError> {
        match self.opts.format {
            Format::Overlay { .. } => {
                set_xattr(&pfd, OVERLAY_OPAQUE_XATTR, b"y").map_err(|e| self.io("set opaque xattr", dir, e))
            }
            Format::Native => self.prune(pfd, dir),
        }
    }

    fn prune(&self, dfd: OwnedFd, dir: &[OsString]) -> Result<(), DiffError> {
        for name in list_dir(&dfd).map_err(|e| self.io("read directory", dir, e))? {
            let mut path = dir.to_vec();
            path.push(name.clone());
            if !self.created.contains(&path) {
                remove_at(dfd.as_fd(), &name).map_err(|e| self.io("remove", &path, e))?;
                continue;
            }
            if let Ok(sub) = openat(
                dfd.as_fd(),
                name.as_os_str(),
                OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                Mode::empty(),
            ) {
                self.prune(sub, &path)?;
            }
        }
        Ok(())
    }

    fn finish_dirs(&mut self) -> Result<(), DiffError> {
        let dirs = std::mem::take(&mut self.dirs);
        for (comps, mtime) in dirs.iter().rev() {
            if let Ok(Ok(fd)) = self.open_dir(comps) {
                set_times(&fd, *mtime).map_err(|e| self.io("set times", comps, e))?;
            }
        }
        Ok(())
    }
}

/// Where an entry goes: its parent dir's fd, its name there, and its whole path.
struct At<'a> {
    pfd: &'a OwnedFd,
    leaf: &'a OsString,
    comps: &'a [OsString],
}

/// The owner, permission bits and mtime of an entry.
struct Meta {
    uid: u32,
    gid: u32,
    mode: u32,
    mtime: i64,
}

impl Meta {
    fn of(header: &tar::Header, name: &str) -> Result<Meta, DiffError> {
        let bad = |what: &'static str| DiffError::BadHeader {
            entry: name.to_owned(),
            what,
        };
        // An all-NUL/space numeric field reads as 0 (as Go's archive/tar parses it).
        let num = |field: &[u8], v: std::io::Result<u64>, what: &'static str| match v {
            Ok(v) => Ok(v),
            Err(_) if field.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
            Err(_) => Err(bad(what)),
        };
        let old = header.as_old();
        Ok(Meta {
            mode: num(&old.mode, header.mode().map(u64::from), "mode")? as u32 & 0o7777,
            uid: u32::try_from(num(&old.uid, header.uid(), "uid")?).map_err(|_| bad("uid"))?,
            gid: u32::try_from(num(&old.gid, header.gid(), "gid")?).map_err(|_| bad("gid"))?,
            mtime: header.mtime().unwrap_or(0) as i64,
        })
    }
}

/// A device entry's (major, minor); 0 where the header has none.
fn device(header: &tar::Header) -> (u32, u32) {
    (
        header.device_major().ok().flatten().unwrap_or(0),
        header.device_minor().ok().flatten().unwrap_or(0),
    )
}

/// A link entry's target.
fn link_name<R: Read>(
    entry: &tar::Entry<'_, R>,
    name: &str,
    what: &'static str,
) -> Result<Vec<u8>, DiffError> {
    entry
        .link_name_bytes()
        .map(std::borrow::Cow::into_owned)
        .ok_or_else(|| DiffError::BadHeader {
            entry: name.to_owned(),
            what,
        })
}

fn set_times(fd: &OwnedFd, mtime: i64) -> Result<(), Errno> {
    let t = TimeSpec::new(mtime, 0);
    nix::sys::stat::futimens(fd.as_fd(), &t, &t)
}

/// The xattrs of an entry worth applying (PAX `SCHILY.xattr.*`): `user.*` and
/// `security.capability`; the rest are skipped.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>, name: &str) -> Result<Vec<(String, Vec<u8>)>, DiffError> {
    let mut out = Vec::new();
    let Some(exts) = entry
        .pax_extensions()
        .map_err(|source| DiffError::Tar { source })?
    else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(|source| DiffError::Tar { source })?;
        let Ok(key) = ext.key() else { continue };
        let Some(attr) = key.strip_prefix("SCHILY.xattr.") else {
            continue;
        };
        if attr.starts_with("user.") || attr == "security.capability" {
            out.push((attr.to_owned(), ext.value_bytes().to_vec()));
        } else {
            tracing::debug!(entry = name, xattr = attr, "skipping xattr");
        }
    }
    Ok(out)
}

fn set_xattr(fd: &OwnedFd, name: &str, value: &[u8]) -> Result<(), std::io::Error> {
    let cname = std::ffi::CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: valid fd, NUL-terminated name, value pointer/len from a slice.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The names in a directory (via its fd; `.`/`..` excluded).
fn list_dir(fd: &OwnedFd) -> Result<Vec<OsString>, std::io::Error> {
    let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let mut out = Vec::new();
    for e in std::fs::read_dir(proc)? {
        out.push(e?.file_name());
    }
    Ok(out)
}

/// Removes `name` under `dfd` (a tree, recursively), never following symlinks; missing is
/// fine.
pub(crate) fn remove_at(dfd: std::os::fd::BorrowedFd<'_>, name: &OsStr) -> Result<(), Errno> {
    let st = match fstatat(dfd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        let sub = openat(
            dfd,
            name,
            OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let names = list_dir(&sub).map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
        for n in names {
            remove_at(sub.as_fd(), &n)?;
        }
        drop(sub);
        match unlinkat(dfd, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    } else {
        match unlinkat(dfd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
