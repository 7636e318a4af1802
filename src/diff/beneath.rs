//! Reading a tree that someone else may be changing (a running container's upper dir)
//! without ever leaving it.
//!
//! A walk by path checks an entry (`lstat`: a regular file) and later opens it by the same
//! path; in between, the container can swap the file for a symlink to `/etc/shadow`, and the
//! open, done by taskd in the host's mount namespace, would read the host's file into the
//! archive. Here every lookup is `openat2` relative to the tree's root fd with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: a symlink anywhere on the path, the last
//! component included, fails the open (ELOOP) instead of being followed. Metadata comes from
//! the opened fd (`O_PATH | O_NOFOLLOW` for stat and readlink), and an opened file is
//! checked to be the entry that was stat'ed (device, inode, regular), so a swap between the
//! two is an error ("changed during the walk"), never a read of something else.
//!
//! [`write_tree`] tars a whole tree this way (CheckpointContainer's `rootfs-diff.tar`);
//! `compare.rs` reads overlay upper dirs through [`Root`] too.

use std::ffi::OsString;
use std::fs::{File, Metadata};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::sys::stat::Mode;

/// A directory tree, read only through lookups that stay beneath it.
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

fn nix_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

fn changed(rel: &Path) -> std::io::Error {
    std::io::Error::other(format!("{} changed during the walk", rel.display()))
}

impl Root {
    /// Opens the tree's root (a path taskd chose, inside its own directories).
    pub fn open(path: &Path) -> std::io::Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(nix_io)?;
        Ok(Root {
            fd,
            path: path.to_owned(),
        })
    }

    /// The root's path (for messages only; never used to open anything).
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn at(&self, rel: &Path, flags: OFlag) -> std::io::Result<OwnedFd> {
        let rel = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        openat2(self.fd.as_fd(), rel, how).map_err(nix_io)
    }

    /// `lstat` of `rel` (a symlink's own metadata; a symlink on the way fails).
    pub fn lstat(&self, rel: &Path) -> std::io::Result<Metadata> {
        File::from(self.at(rel, OFlag::O_PATH)?).metadata()
    }

    /// The target of the symlink `rel`.
    pub fn read_link(&self, rel: &Path) -> std::io::Result<PathBuf> {
        let f = File::from(self.at(rel, OFlag::O_PATH)?);
        if !f.metadata()?.file_type().is_symlink() {
            return Err(changed(rel));
        }
        // An O_PATH fd of a symlink: readlinkat with an empty path reads that link.
        nix::fcntl::readlinkat(f.as_fd(), "")
            .map(PathBuf::from)
            .map_err(nix_io)
    }

    /// The names in directory `rel`, sorted.
    pub fn list(&self, rel: &Path) -> std::io::Result<Vec<OsString>> {
        let fd = self.at(rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
        let mut dir = nix::dir::Dir::from_fd(fd).map_err(nix_io)?;
        let mut names = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(nix_io)?;
            let name = e.file_name().to_bytes();
            if name != b"." && name != b".." {
                names.push(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name).to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    /// Opens the regular file `rel` for reading, checked to be the entry `meta` describes.
    pub fn open_file(&self, rel: &Path, meta: &Metadata) -> std::io::Result<File> {
        let f = File::from(self.at(rel, OFlag::O_RDONLY | OFlag::O_NONBLOCK)?);
        let now = f.metadata()?;
        if !now.file_type().is_file() || now.dev() != meta.dev() || now.ino() != meta.ino() {
            return Err(changed(rel));
        }
        Ok(f)
    }
}

/// Exactly `size` bytes of `f`: a file that shrank meanwhile is padded with zeros, one that
/// grew is cut, so the tar header written from the stat stays true.
pub fn exactly(f: File, size: u64) -> impl Read {
    f.take(size).chain(std::io::repeat(0)).take(size)
}

/// Tars the tree at `root` as it is (overlay whiteouts stay 0/0 character devices) into
/// `out`, entries sorted, symlinks never followed.
pub fn write_tree(root: &Path, out: impl Write) -> std::io::Result<()> {
    let root = Root::open(root)?;
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    tree(&root, Path::new(""), &mut b)?;
    b.into_inner()?;
    Ok(())
}

fn tree<W: Write>(root: &Root, rel: &Path, b: &mut tar::Builder<W>) -> std::io::Result<()> {
    for name in root.list(rel)? {
        let r = rel.join(&name);
        let meta = root.lstat(&r)?;
        let ft = meta.file_type();
        let mut h = tar::Header::new_gnu();
        h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if ft.is_dir() {
            let mut p = r.as_os_str().to_owned();
            p.push("/");
            b.append_data(&mut h, Path::new(&p), std::io::empty())?;
            tree(root, &r, b)?;
        } else if ft.is_file() {
            let f = root.open_file(&r, &meta)?;
            b.append_data(&mut h, &r, exactly(f, meta.len()))?;
        } else if ft.is_symlink() {
            b.append_link(&mut h, &r, root.read_link(&r)?)?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            b.append_data(&mut h, &r, std::io::empty())?;
        }
        // Sockets are not carried.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_are_never_followed_and_a_swap_is_caught() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "host secret").unwrap();
        let tree_dir = dir.path().join("tree");
        std::fs::create_dir_all(tree_dir.join("sub")).unwrap();
        std::fs::write(tree_dir.join("sub/file"), "data").unwrap();
        std::os::unix::fs::symlink(&secret, tree_dir.join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path(), tree_dir.join("dirlink")).unwrap();

        let root = Root::open(&tree_dir).unwrap();
        assert_eq!(root.list(Path::new("")).unwrap(), ["dirlink", "link", "sub"]);
        assert!(root.lstat(Path::new("link")).unwrap().file_type().is_symlink());
        assert_eq!(root.read_link(Path::new("link")).unwrap(), secret);
        // Through a symlinked directory: refused, not followed.
        assert!(root.lstat(Path::new("dirlink/secret")).is_err());
        assert!(root.list(Path::new("dirlink")).is_err());
        // The file stat'ed, then swapped for a symlink: the open fails.
        let meta = root.lstat(Path::new("sub/file")).unwrap();
        // Held open: its inode number cannot be reused by the file written below.
        let _held = File::open(tree_dir.join("sub/file")).unwrap();
        std::fs::remove_file(tree_dir.join("sub/file")).unwrap();
        std::os::unix::fs::symlink(&secret, tree_dir.join("sub/file")).unwrap();
        assert!(root.open_file(Path::new("sub/file"), &meta).is_err());
        // Swapped for another regular file: caught by the inode check.
        std::fs::remove_file(tree_dir.join("sub/file")).unwrap();
        std::fs::write(tree_dir.join("sub/file"), "other").unwrap();
        assert!(root.open_file(Path::new("sub/file"), &meta).is_err());

        let mut out = Vec::new();
        write_tree(&tree_dir, &mut out).unwrap();
        let mut a = tar::Archive::new(&out[..]);
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let mut body = String::new();
            e.read_to_string(&mut body).unwrap();
            assert!(!body.contains("host secret"));
            seen.push((e.path().unwrap().display().to_string(), e.header().entry_type()));
        }
        assert_eq!(
            seen,
            [
                ("dirlink".to_owned(), tar::EntryType::Symlink),
                ("link".to_owned(), tar::EntryType::Symlink),
                ("sub/".to_owned(), tar::EntryType::Directory),
                ("sub/file".to_owned(), tar::EntryType::Regular),
            ]
        );
    }

    #[test]
    fn a_file_that_changes_size_keeps_its_header_true() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "12345678").unwrap();
        let mut short = String::new();
        exactly(File::open(&p).unwrap(), 4)
            .read_to_string(&mut short)
            .unwrap();
        assert_eq!(short, "1234");
        let mut padded = Vec::new();
        exactly(File::open(&p).unwrap(), 10)
            .read_to_end(&mut padded)
            .unwrap();
        assert_eq!(padded, b"12345678\0\0");
    }
}
