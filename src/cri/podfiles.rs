//! The files a pod's containers share: `/etc/resolv.conf` (from the pod's DNS config, or
//! the host's when none is given), `/etc/hostname`, `/etc/hosts`. Written once per pod under
//! `<state>/sandboxes/<id>/` and bind-mounted into every container.

use std::path::{Path, PathBuf};

use taskd_proto::cri::v1::DnsConfig;

use super::spec::container::PodFiles;
use crate::errdefs::{ErrorKind, Kind};

/// A pod file that could not be written; names the path.
#[derive(Debug, thiserror::Error)]
#[error("write pod file {path}: {source}")]
pub struct PodFilesError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

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
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|source| PodFilesError {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    };
    std::fs::create_dir_all(dir).map_err(|source| PodFilesError {
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
}
