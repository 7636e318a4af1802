//! A file tree given to a pod's user namespace: every file owned by a container id the
//! mapping covers gets the host id it maps to (containerd's `WithRemappedSnapshot`, before
//! idmapped mounts). Used on a fresh writable snapshot of an image, so the pod's root (a
//! host id) owns its rootfs and runc, running inside the namespace, can set it up.
//!
//! ```text
//! pass 1  lstat every path (no symlink followed, no mount crossed): its owner, mode and
//!         file capabilities, before any change (hard links then get the same owner however
//!         the file system shares their inodes)
//! pass 2  lchown each path to the mapped ids (ids outside the mapping stay); chown clears
//!         setuid/setgid and `security.capability`, so the mode and the capabilities are
//!         put back
//! ```

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::userns::PodUserns;

const CAPS_XATTR: &std::ffi::CStr = c"security.capability";

struct Entry {
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
    symlink: bool,
    caps: Option<Vec<u8>>,
}

fn collect(path: &Path, dev: u64, out: &mut Vec<Entry>) -> std::io::Result<()> {
    let m = std::fs::symlink_metadata(path)?;
    let symlink = m.file_type().is_symlink();
    out.push(Entry {
        path: path.to_owned(),
        uid: m.uid(),
        gid: m.gid(),
        mode: m.mode() & 0o7777,
        symlink,
        caps: if m.is_file() { file_caps(path) } else { None },
    });
    if m.is_dir() && m.dev() == dev {
        for e in std::fs::read_dir(path)? {
            collect(&e?.path(), dev, out)?;
        }
    }
    Ok(())
}

fn file_caps(path: &Path) -> Option<Vec<u8>> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = vec![0u8; 64];
    // SAFETY: c is NUL-terminated; buf is writable for its length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            CAPS_XATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n > 0).then(|| {
        buf.truncate(n as usize);
        buf
    })
}

fn set_file_caps(path: &Path, caps: &[u8]) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: c is NUL-terminated; caps is readable for its length.
    let r = unsafe {
        libc::lsetxattr(
            c.as_ptr(),
            CAPS_XATTR.as_ptr(),
            caps.as_ptr().cast(),
            caps.len(),
            0,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Remaps the owners of every file under `root` (itself included) by `map`. Blocking.
pub fn remap_tree(root: &Path, map: &PodUserns) -> std::io::Result<usize> {
    let dev = std::fs::symlink_metadata(root)?.dev();
    let mut entries = Vec::new();
    collect(root, dev, &mut entries)?;
    let with = |e: &Entry, err: std::io::Error| {
        std::io::Error::new(err.kind(), format!("{}: {err}", e.path.display()))
    };
    for e in &entries {
        let uid = map.uid.to_host(e.uid).unwrap_or(e.uid);
        let gid = map.gid.to_host(e.gid).unwrap_or(e.gid);
        if (uid, gid) == (e.uid, e.gid) {
            continue;
        }
        std::os::unix::fs::lchown(&e.path, Some(uid), Some(gid)).map_err(|err| with(e, err))?;
        if !e.symlink && e.mode & 0o6000 != 0 {
            std::fs::set_permissions(&e.path, std::fs::Permissions::from_mode(e.mode))
                .map_err(|err| with(e, err))?;
        }
        if let Some(caps) = &e.caps {
            set_file_caps(&e.path, caps).map_err(|err| with(e, err))?;
        }
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::userns::IdMap;

    #[test]
    #[ignore = "e2e: needs root (chown)"]
    fn owners_move_into_the_host_range_and_special_bits_stay() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("fs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::write(root.join("su"), "").unwrap();
        std::fs::set_permissions(root.join("su"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(root.join("user"), "").unwrap();
        std::os::unix::fs::lchown(root.join("user"), Some(1000), Some(100)).unwrap();
        std::fs::write(root.join("far"), "").unwrap();
        std::os::unix::fs::lchown(root.join("far"), Some(70000), Some(70000)).unwrap();
        std::fs::hard_link(root.join("user"), root.join("user-link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let map = PodUserns {
            uid: IdMap {
                container_id: 0,
                host_id: 200_000,
                length: 65536,
            },
            gid: IdMap {
                container_id: 0,
                host_id: 300_000,
                length: 65536,
            },
        };
        assert_eq!(remap_tree(&root, &map).unwrap(), 8);
        let owner = |p: &str| {
            let m = std::fs::symlink_metadata(root.join(p)).unwrap();
            (m.uid(), m.gid(), m.mode() & 0o7777)
        };
        assert_eq!(owner("").0, 200_000);
        assert_eq!(owner("etc/passwd"), (200_000, 300_000, 0o644));
        assert_eq!(owner("su"), (200_000, 300_000, 0o4755), "setuid kept");
        assert_eq!(owner("user"), (201_000, 300_100, 0o644), "hard link mapped once");
        assert_eq!(owner("far"), (70000, 70000, 0o644), "outside the mapping");
        assert_eq!((owner("link").0, owner("link").1), (200_000, 300_000));
        // The symlink's target on the host is untouched.
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0);
    }
}
