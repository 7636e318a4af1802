//! Registry hosts for server-side pulls: which endpoints serve a registry, in which order,
//! and how to talk to each (containerd's `hosts.toml`, written as plugin config).
//!
//! ```toml
//! [plugins."io.containerd.service.v1.images-service".registries."docker.io"]
//! mirrors = ["http://127.0.0.1:5000", "https://mirror.example.com"]   # tried in order
//! skip_verify = false          # TLS: accept any certificate
//! ca_file = "/etc/taskd/ca.pem" # TLS: an extra root certificate (PEM)
//! plain_http = false           # the registry itself over http
//! username = "u"               # basic auth (token auth follows the registry's challenge)
//! password = "p"
//! ```
//!
//! Rules (as containerd): mirrors first, in order, then the registry itself; a mirror's
//! scheme decides http or https for it (none = https, or http when `plain_http`). A registry
//! named `localhost`, `127.0.0.1` or `::1` (any port) uses plain http without any config,
//! unless its entry asks for TLS (`skip_verify` or `ca_file`).
//! `docker.io` is served by `registry-1.docker.io`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One registry's config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub mirrors: Vec<String>,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub password: String,
}

/// How to reach one endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// `host[:port]` as used in the request URLs.
    pub host: String,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub password: String,
}

/// Whether `registry` (`host[:port]`) is a loopback name that may use plain http.
pub fn is_local(registry: &str) -> bool {
    let host = if let Some(rest) = registry.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        registry.rsplit_once(':').map(|(h, _)| h).unwrap_or(registry)
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

/// The endpoints for `registry`, in the order to try them.
pub fn endpoints(registries: &BTreeMap<String, RegistryConfig>, registry: &str) -> Vec<Endpoint> {
    let cfg = registries.get(registry).cloned().unwrap_or_default();
    let wants_tls = cfg.skip_verify || cfg.ca_file.is_some();
    let mut out = Vec::new();
    for m in &cfg.mirrors {
        let (host, plain) = if let Some(h) = m.strip_prefix("http://") {
            (h, true)
        } else if let Some(h) = m.strip_prefix("https://") {
            (h, false)
        } else {
            (m.as_str(), cfg.plain_http || (is_local(m) && !wants_tls))
        };
        let host = host.trim_end_matches('/').to_owned();
        out.push(Endpoint {
            plain_http: plain,
            skip_verify: cfg.skip_verify,
            ca_file: cfg.ca_file.clone(),
            username: cfg.username.clone(),
            password: cfg.password.clone(),
            host,
        });
    }
    let host = if registry == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    };
    out.push(Endpoint {
        plain_http: cfg.plain_http || (is_local(registry) && !wants_tls),
        skip_verify: cfg.skip_verify,
        ca_file: cfg.ca_file,
        username: cfg.username,
        password: cfg.password,
        host,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_plain_http_without_config() {
        let none = BTreeMap::new();
        for r in ["localhost:5000", "127.0.0.1:41234", "[::1]:5000", "localhost"] {
            let e = endpoints(&none, r);
            assert_eq!(e.len(), 1);
            assert!(e[0].plain_http, "{r}");
        }
        let e = endpoints(&none, "registry.k8s.io");
        assert!(!e[0].plain_http);
        assert_eq!(endpoints(&none, "docker.io")[0].host, "registry-1.docker.io");
        // TLS settings on a loopback registry mean https.
        let mut tls = BTreeMap::new();
        tls.insert(
            "127.0.0.1:5000".to_string(),
            RegistryConfig {
                skip_verify: true,
                ..Default::default()
            },
        );
        assert!(!endpoints(&tls, "127.0.0.1:5000")[0].plain_http);
    }

    #[test]
    fn mirrors_come_first_in_order_with_their_scheme() {
        let mut regs = BTreeMap::new();
        regs.insert(
            "docker.io".to_string(),
            RegistryConfig {
                mirrors: vec![
                    "http://127.0.0.1:5000/".into(),
                    "https://mirror.example.com".into(),
                    "localhost:6000".into(),
                ],
                skip_verify: true,
                ..Default::default()
            },
        );
        let e = endpoints(&regs, "docker.io");
        let hosts: Vec<(&str, bool)> = e.iter().map(|e| (e.host.as_str(), e.plain_http)).collect();
        assert_eq!(
            hosts,
            vec![
                ("127.0.0.1:5000", true),
                ("mirror.example.com", false),
                // skip_verify asks for TLS: a scheme-less loopback mirror is https here.
                ("localhost:6000", false),
                ("registry-1.docker.io", false),
            ]
        );
        assert!(e.iter().all(|e| e.skip_verify));
    }
}
