//! The files a pod's containers share: `/etc/resolv.conf` (from the pod's DNS config, or
//! the host's when none is given), `/etc/hostname`, `/etc/hosts`. Written once per pod under
//! `<state>/sandboxes/<id>/` and bind-mounted into every container. And, unless the pod uses
//! the host's IPC namespace, its `/dev/shm`: a 64 MiB tmpfs at `<state>/sandboxes/<id>/shm`
//! (as containerd's sandbox shm), mounted at RunPodSandbox, bound into each container,
//! unmounted at StopPodSandbox.

use std::path::{Path, PathBuf};

use taskd_proto::cri::v1::DnsConfig;

use super::spec::mounts::PodFiles;
use crate::errdefs::{ErrorKind, Kind, absent_ok};

/// A pod file that could not be written (or mounted); names the path.
#[derive(Debug, thiserror::Error)]
#[error("{op} pod file {path}: {source}")]
pub struct PodFilesError {
    pub op: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The size of a pod's `/dev/shm` (containerd's `defaultShmSize`).
pub const SHM_SIZE: u64 = 64 << 20;

impl ErrorKind for PodFilesError {
    fn kind(&self) -> Kind {
        Kind::Internal
    }
}

/// resolv.conf text for a pod's DNS config.
pub fn resolv_conf(dns: &DnsConfig) -> String {
    let mut s = String::new();
    if !dns.searches.is_empty() {
        s.push_str(&format!("search {}\n", dns.searches.join(" ")));
    }
    for ns in &dns.servers {
        s.push_str(&format!("nameserver {ns}\n"));
    }
    if !dns.options.is_empty() {
        s.push_str(&format!("options {}\n", dns.options.join(" ")));
    }
    s
}

/// /etc/hosts text (kubelet rewrites it for most pods; this is the fallback).
pub fn hosts(hostname: &str) -> String {
    let mut s = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
    );
    if !hostname.is_empty() {
        s.push_str(&format!("127.0.1.1\t{hostname}\n"));
    }
    s
}

/// Writes the pod's files in `dir` (created). `hostname` empty: the host's (host network).
pub fn write(dir: &Path, dns: Option<&DnsConfig>, hostname: &str) -> Result<PodFiles, PodFilesError> {
    let w = |name: &str, text: String| -> Result<PathBuf, PodFilesError> {
        use std::io::Write;
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let path = dir.join(name);
        let err = |source| PodFilesError {
            op: "write",
            path: path.clone(),
            source,
        };
        // 0644 whatever the umask (taskd's is 0077): these files are bind-mounted into every
        // container of the pod, whose users (any uid) read them. Only their content is
        // reachable: the directory they are in stays closed (0700 plugin directory above).
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&path)
            .map_err(err)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        Ok(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| PodFilesError {
        op: "create",
        path: dir.to_owned(),
        source,
    })?;
    let resolv = match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => resolv_conf(d),
        _ => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
    };
    let host = if hostname.is_empty() {
        nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default()
    } else {
        hostname.to_owned()
    };
    Ok(PodFiles {
        resolv_conf: Some(w("resolv.conf", resolv)?),
        hostname: Some(w("hostname", format!("{host}\n"))?),
        hosts: Some(w("hosts", hosts(&host))?),
        shm: None,
    })
}

/// Whether `path` is a mount point (another device than its parent's).
fn mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), path.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

/// Mounts the pod's `/dev/shm` tmpfs at `<dir>/shm` (`dir` must exist); idempotent.
pub fn mount_shm(dir: &Path) -> Result<PathBuf, PodFilesError> {
    use nix::mount::MsFlags;
    let path = dir.join("shm");
    let err = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source: std::io::Error| PodFilesError { op, path, source }
    };
    match std::fs::create_dir(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("create", &path)(e)),
    }
    if !mounted(&path) {
        // mode=1777 (as /dev/shm on a host): the pod's containers share it whatever their
        // users. Host users never reach it: it is below the 0700 CRI state directory.
        nix::mount::mount(
            Some("shm"),
            &path,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            Some(format!("mode=1777,size={SHM_SIZE}").as_str()),
        )
        .map_err(|e| err("mount", &path)(e.into()))?;
    }
    Ok(path)
}

/// The pod's `/dev/shm` under `dir`, when it is mounted.
pub fn shm_of(dir: &Path) -> Option<PathBuf> {
    Some(dir.join("shm")).filter(|p| mounted(p))
}

/// Unmounts the pod's `/dev/shm` (not mounted, or gone: fine).
pub fn unmount_shm(dir: &Path) -> Result<(), PodFilesError> {
    let path = dir.join("shm");
    while mounted(&path) {
        nix::mount::umount2(&path, nix::mount::MntFlags::MNT_DETACH).map_err(|e| PodFilesError {
            op: "unmount",
            path: path.clone(),
            source: e.into(),
        })?;
    }
    Ok(())
}

/// Unmounts the pod's `/dev/shm`, then removes `dir` (never across a mount); idempotent.
pub fn remove(dir: &Path) -> Result<(), PodFilesError> {
    unmount_shm(dir)?;
    absent_ok(std::fs::remove_dir_all(dir)).map_err(|source| PodFilesError {
        op: "remove",
        path: dir.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config() {
        let d = DnsConfig {
            servers: vec!["10.96.0.10".into()],
            searches: vec!["default.svc.cluster.local".into(), "svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&d),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
    }

    #[test]
    fn files_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let d = DnsConfig {
            servers: vec!["1.2.3.4".into()],
            ..Default::default()
        };
        let f = write(&dir.path().join("sb"), Some(&d), "web").unwrap();
        assert_eq!(
            std::fs::read_to_string(f.resolv_conf.unwrap()).unwrap(),
            "nameserver 1.2.3.4\n"
        );
        assert_eq!(std::fs::read_to_string(f.hostname.unwrap()).unwrap(), "web\n");
        assert!(
            std::fs::read_to_string(f.hosts.unwrap())
                .unwrap()
                .contains("127.0.1.1\tweb")
        );
    }

    #[test]
    #[ignore = "e2e: needs root (tmpfs mount)"]
    fn shm_is_a_sized_tmpfs_until_unmounted_and_remove_never_crosses_it() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("sb");
        write(&dir, None, "web").unwrap();
        assert_eq!(shm_of(&dir), None);
        let shm = mount_shm(&dir).unwrap();
        assert_eq!(mount_shm(&dir).unwrap(), shm, "idempotent");
        assert_eq!(shm_of(&dir).as_deref(), Some(shm.as_path()));
        let st = nix::sys::statfs::statfs(&shm).unwrap();
        assert_eq!(st.filesystem_type(), nix::sys::statfs::TMPFS_MAGIC);
        assert_eq!(st.blocks() * st.block_size() as u64, SHM_SIZE);
        let line = std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(shm.to_str().unwrap()))
            .map(str::to_owned)
            .unwrap();
        for opt in ["nosuid", "nodev", "noexec"] {
            assert!(line.contains(opt), "{line}");
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&shm).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        std::fs::write(shm.join("seg"), b"x").unwrap();
        remove(&dir).unwrap();
        assert!(!dir.exists());
        remove(&dir).unwrap();
    }
}
