//! File system helpers of the snapshotters: recursive removal, disk usage, and the native
//! snapshotter's copy (modes, owners, times, symlinks, hard links and device nodes kept;
//! symlinks are copied as links and never followed).

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::error::SnapshotError;
use super::model::Usage;

/// Removes `path` (file or tree) without following symlinks; a missing path is fine.
pub fn remove_all(path: &Path) -> Result<(), SnapshotError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SnapshotError::io("stat", path)(e)),
    };
    let r = if meta.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SnapshotError::io("remove", path)(e)),
    }
}

/// Disk usage of a tree: allocated bytes (blocks × 512, each inode once) and inode count.
pub fn disk_usage(root: &Path) -> Result<Usage, SnapshotError> {
    let mut seen = BTreeSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(SnapshotError::io("stat", &p)(e)),
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += (meta.blocks() * 512) as i64;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&p).map_err(SnapshotError::io("read directory", &p))? {
                let entry = entry.map_err(SnapshotError::io("read directory", &p))?;
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

/// Copies the tree `src` to the new directory `dst` (which must not exist) as the native
/// snapshotter does (owners, modes, times, symlinks as links, hard links, device nodes).
pub fn copy_dir(src: &Path, dst: &Path) -> Result<(), SnapshotError> {
    let mut links: HashMap<(u64, u64), std::path::PathBuf> = HashMap::new();
    copy_entry(src, dst, &mut links)?;
    Ok(())
}

fn copy_entry(
    src: &Path,
    dst: &Path,
    links: &mut HashMap<(u64, u64), std::path::PathBuf>,
) -> Result<(), SnapshotError> {
    let meta = std::fs::symlink_metadata(src).map_err(SnapshotError::io("stat", src))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        std::fs::create_dir(dst).map_err(SnapshotError::io("create directory", dst))?;
        for entry in std::fs::read_dir(src).map_err(SnapshotError::io("read directory", src))? {
            let entry = entry.map_err(SnapshotError::io("read directory", src))?;
            copy_entry(&entry.path(), &dst.join(entry.file_name()), links)?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(SnapshotError::io("read link", src))?;
        std::os::unix::fs::symlink(&target, dst).map_err(SnapshotError::io("create symlink", dst))?;
    } else {
        if meta.nlink() > 1 {
            if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
                std::fs::hard_link(first, dst).map_err(SnapshotError::io("create hard link", dst))?;
                return Ok(());
            }
            links.insert((meta.dev(), meta.ino()), dst.to_owned());
        }
        if ft.is_file() {
            std::fs::copy(src, dst).map_err(SnapshotError::io("copy", dst))?;
        } else {
            // Device node, fifo or socket: recreate it.
            let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(dst, kind, perm, meta.rdev())
                .map_err(|e| SnapshotError::io("mknod", dst)(e.into()))?;
        }
    }
    std::os::unix::fs::lchown(dst, Some(meta.uid()), Some(meta.gid()))
        .map_err(SnapshotError::io("chown", dst))?;
    if !ft.is_symlink() {
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(SnapshotError::io("chmod", dst))?;
    }
    let atime = nix::sys::time::TimeSpec::new(meta.atime(), meta.atime_nsec());
    let mtime = nix::sys::time::TimeSpec::new(meta.mtime(), meta.mtime_nsec());
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        dst,
        &atime,
        &mtime,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| SnapshotError::io("set times", dst)(e.into()))?;
    Ok(())
}
