//! Registry hosts for server-side pulls: which endpoints serve a registry, in which order,
//! and how to talk to each. Two sources: containerd's `hosts.toml` directories
//! (`config_path`) and taskd's inline `registries` tables.
//!
//! Inline (plugin config of `io.containerd.service.v1.images-service`):
//! ```toml
//! [plugins."io.containerd.service.v1.images-service".registries."docker.io"]
//! mirrors = ["http://127.0.0.1:5000", "https://mirror.example.com"]   # tried in order
//! skip_verify = false          # TLS: accept any certificate
//! ca_file = "/etc/taskd/ca.pem" # TLS: an extra root certificate (PEM)
//! plain_http = false           # the registry itself over http
//! username = "u"               # basic auth (token auth follows the registry's challenge)
//! password = "p"
//! mirror_credentials = false   # send the credentials to the mirrors too
//! ```
//!
//! Directories, read as containerd reads its `certs.d`
//! (`config_path = "/etc/taskd/certs.d"`):
//! ```text
//! <config_path>/<registry host[:port]>/hosts.toml     or <config_path>/_default/hosts.toml
//!   server = "https://registry.example.com"            the registry itself (last endpoint)
//!   [host."https://mirror:5000"]                       mirrors, in file order
//!     capabilities = ["pull", "resolve"]               default pull, resolve, push
//!     skip_verify = true
//!     ca = "ca.pem" | ["a.pem", "b.pem"]               relative to the directory
//!     client = "both.pem" | [["c.cert", "c.key"]]
//!     header = { x-tenant = "a" }                      or lists of values
//!     override_path = true                             the URL's path is the API root
//!     send_credentials = true                          (taskd) the pull's credentials may go here
//!   the same keys at top level apply to `server`
//! <dir>/*.crt (CAs), <dir>/*.cert + *.key (client pairs): for `server`
//! ```
//!
//! Precedence, per registry: its own directory `<config_path>/<host>/` (an inline table
//! for the same registry is then ignored, with a warning), else its inline table, else
//! `<config_path>/_default/`, else the built-in defaults. The directory is read on every
//! pull: edits apply to the next pull without a restart.
//!
//! Rules (as containerd): mirrors first, in order, then the registry itself; a mirror's
//! scheme decides http or https for it (none = https, or http when `plain_http`). A registry
//! named `localhost`, `127.0.0.1` or `::1` (any port) uses plain http without any config,
//! unless its entry asks for TLS (`skip_verify` or `ca_file`).
//! `docker.io` is served by `registry-1.docker.io`. A tag is resolved only by endpoints
//! with `resolve`; content is fetched only from endpoints with `pull`.
//!
//! Credentials (of a PullImage, or `username`/`password`) go to the registry's own endpoint
//! only; a mirror gets them only with `mirror_credentials` (inline) or `send_credentials`
//! (hosts.toml). See `registry.rs` for the plain-http rule.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One registry's inline config.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    pub mirrors: Vec<String>,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub ca_file: Option<PathBuf>,
    pub username: String,
    pub password: String,
    /// The credentials may go to the mirrors too.
    pub mirror_credentials: bool,
}

/// Where endpoints come from: what `[plugins."io.containerd.service.v1.images-service"]`
/// says about registries (replaceable at run time, see `Puller::replace_hosts`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HostsConfig {
    /// Per registry (`docker.io`, `registry.k8s.io`, `127.0.0.1:5000`).
    pub registries: BTreeMap<String, RegistryConfig>,
    /// A containerd `certs.d`-style directory; None = not used.
    pub config_path: Option<PathBuf>,
}

/// How to reach one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoint {
    /// `host[:port]` as used in the request URLs.
    pub host: String,
    /// The API root's path: `/v2`, or what the hosts.toml URL gives.
    pub path: String,
    pub plain_http: bool,
    pub skip_verify: bool,
    pub ca_files: Vec<PathBuf>,
    /// Client certificate and key files.
    pub client_certs: Vec<(PathBuf, PathBuf)>,
    pub headers: BTreeMap<String, Vec<String>>,
    pub username: String,
    pub password: String,
    /// May fetch content by digest.
    pub pull: bool,
    /// May resolve a tag.
    pub resolve: bool,
    /// May receive the pull's credentials.
    pub send_credentials: bool,
}

/// Errors of the hosts config.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("registry hosts {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("registry hosts {path}: {source}")]
    Toml {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("registry hosts {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

impl crate::errdefs::ErrorKind for HostsError {
    fn kind(&self) -> crate::errdefs::Kind {
        match self {
            HostsError::Io { .. } | HostsError::Toml { .. } | HostsError::Invalid { .. } => {
                crate::errdefs::Kind::FailedPrecondition
            }
        }
    }
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

/// The host that serves `registry` when nothing else is said.
fn default_host(registry: &str) -> String {
    if registry == "docker.io" {
        "registry-1.docker.io".to_owned()
    } else {
        registry.to_owned()
    }
}

/// The endpoints for `registry`, in the order to try them (see the module docs).
pub fn endpoints(config: &HostsConfig, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    if let Some(root) = &config.config_path {
        let safe = !registry.is_empty() && !registry.contains('/') && registry != "." && registry != "..";
        let own = root.join(registry);
        if safe && own.is_dir() {
            if config.registries.contains_key(registry) {
                tracing::warn!(
                    registry,
                    dir = %own.display(),
                    "registry has both a hosts.toml directory and an inline registries table; the directory is used"
                );
            }
            return from_dir(&own, registry);
        }
        if let Some(cfg) = config.registries.get(registry) {
            return Ok(inline(cfg, registry));
        }
        let fallback = root.join("_default");
        if fallback.is_dir() {
            return from_dir(&fallback, registry);
        }
    }
    Ok(inline(
        &config.registries.get(registry).cloned().unwrap_or_default(),
        registry,
    ))
}

/// The endpoints of an inline table.
pub fn inline(cfg: &RegistryConfig, registry: &str) -> Vec<Endpoint> {
    let wants_tls = cfg.skip_verify || cfg.ca_file.is_some();
    let base = Endpoint {
        path: "/v2".into(),
        skip_verify: cfg.skip_verify,
        ca_files: cfg.ca_file.iter().cloned().collect(),
        username: cfg.username.clone(),
        password: cfg.password.clone(),
        pull: true,
        resolve: true,
        ..Default::default()
    };
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
            send_credentials: cfg.mirror_credentials || host == registry,
            host,
            ..base.clone()
        });
    }
    out.push(Endpoint {
        plain_http: cfg.plain_http || (is_local(registry) && !wants_tls),
        host: default_host(registry),
        send_credentials: true,
        ..base
    });
    out
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ClientField {
    One(String),
    Pairs(Vec<Vec<String>>),
    Files(Vec<String>),
}

/// The keys of a `[host."…"]` table (and of the top level, for `server`). Unknown keys are
/// ignored, as containerd does.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostFields {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    client: Option<ClientField>,
    header: BTreeMap<String, OneOrMany>,
    override_path: bool,
    send_credentials: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    top: HostFields,
    host: BTreeMap<String, toml::Spanned<HostFields>>,
}

/// The endpoints a `certs.d` directory gives `registry`.
fn from_dir(dir: &Path, registry: &str) -> Result<Vec<Endpoint>, HostsError> {
    let file = dir.join("hosts.toml");
    let parsed: HostsFile = match std::fs::read_to_string(&file) {
        Ok(text) => toml::from_str(&text).map_err(|e| HostsError::Toml {
            path: file.clone(),
            source: Box::new(e),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => HostsFile::default(),
        Err(source) => return Err(HostsError::Io { path: file, source }),
    };
    let mut hosts: Vec<(String, toml::Spanned<HostFields>)> = parsed.host.into_iter().collect();
    hosts.sort_by_key(|(_, h)| h.span().start);
    let mut out = Vec::new();
    for (url, fields) in hosts {
        out.push(endpoint_of(
            dir,
            &file,
            &url,
            fields.into_inner(),
            false,
            registry,
        )?);
    }
    let server = parsed.server.unwrap_or_else(|| {
        let h = default_host(registry);
        if is_local(&h) {
            format!("http://{h}")
        } else {
            format!("https://{h}")
        }
    });
    let mut e = endpoint_of(dir, &file, &server, parsed.top, true, registry)?;
    // Certificate files beside hosts.toml serve the registry itself.
    let mut names: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.filter_map(|d| d.ok().map(|d| d.path())).collect(),
        Err(source) => {
            return Err(HostsError::Io {
                path: dir.to_owned(),
                source,
            });
        }
    };
    names.sort();
    for p in names {
        match p.extension().and_then(|x| x.to_str()) {
            Some("crt") => e.ca_files.push(p),
            Some("cert") => {
                let key = p.with_extension("key");
                if !key.exists() {
                    return Err(HostsError::Invalid {
                        path: p,
                        reason: format!("client certificate without its key {}", key.display()),
                    });
                }
                e.client_certs.push((p, key));
            }
            _ => {}
        }
    }
    out.push(e);
    Ok(out)
}

fn endpoint_of(
    dir: &Path,
    file: &Path,
    url: &str,
    f: HostFields,
    is_server: bool,
    registry: &str,
) -> Result<Endpoint, HostsError> {
    let invalid = |reason: String| HostsError::Invalid {
        path: file.to_owned(),
        reason,
    };
    let (plain, rest) = if let Some(r) = url.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (false, r)
    } else if url.contains("://") {
        return Err(invalid(format!("host {url:?}: only http and https")));
    } else {
        (is_local(url.split('/').next().unwrap_or(url)), url)
    };
    let (host, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if host.is_empty() {
        return Err(invalid(format!("host {url:?} has no host name")));
    }
    let path = if f.override_path || path.ends_with("/v2") {
        path.to_owned()
    } else {
        format!("{path}/v2")
    };
    let (mut pull, mut resolve) = (true, true);
    if let Some(caps) = &f.capabilities {
        pull = caps.iter().any(|c| c == "pull");
        resolve = caps.iter().any(|c| c == "resolve");
        if let Some(c) = caps
            .iter()
            .find(|c| !["pull", "resolve", "push"].contains(&c.as_str()))
        {
            return Err(invalid(format!("host {url:?}: unknown capability {c:?}")));
        }
    }
    let rel = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { dir.join(p) }
    };
    let client_certs = match f.client {
        None => Vec::new(),
        Some(ClientField::One(p)) => vec![(rel(p.clone()), rel(p))],
        Some(ClientField::Files(v)) => v.into_iter().map(|p| (rel(p.clone()), rel(p))).collect(),
        Some(ClientField::Pairs(v)) => {
            let mut out = Vec::new();
            for pair in v {
                match <[String; 2]>::try_from(pair) {
                    Ok([c, k]) if k.is_empty() => out.push((rel(c.clone()), rel(c))),
                    Ok([c, k]) => out.push((rel(c), rel(k))),
                    Err(_) => return Err(invalid(format!("host {url:?}: client pairs are [cert, key]"))),
                }
            }
            out
        }
    };
    Ok(Endpoint {
        host: host.to_owned(),
        path,
        plain_http: plain,
        skip_verify: f.skip_verify.unwrap_or(false),
        ca_files: f
            .ca
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(rel)
            .collect(),
        client_certs,
        headers: f.header.into_iter().map(|(k, v)| (k, v.into_vec())).collect(),
        username: String::new(),
        password: String::new(),
        pull,
        resolve,
        send_credentials: f.send_credentials.unwrap_or(is_server || host == registry),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(regs: &BTreeMap<String, RegistryConfig>, r: &str) -> Vec<Endpoint> {
        let cfg = HostsConfig {
            registries: regs.clone(),
            config_path: None,
        };
        super::endpoints(&cfg, r).unwrap()
    }

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

    #[test]
    fn hosts_toml_directories_and_precedence() {
        let root = tempfile::tempdir().unwrap();
        let d = root.path().join("docker.io");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("hosts.toml"),
            r#"
server = "https://registry-1.docker.io"
[host."https://z-mirror.example/custom"]
  capabilities = ["pull"]
  ca = ["ca.pem", "/abs/ca2.pem"]
  client = [["c.cert", "c.key"]]
  header = { x-tenant = "a", x-multi = ["1", "2"] }
  override_path = true
[host."http://a-mirror.example:5000"]
  skip_verify = true
  send_credentials = true
"#,
        )
        .unwrap();
        std::fs::write(d.join("reg.crt"), "").unwrap();
        std::fs::write(d.join("me.cert"), "").unwrap();
        std::fs::write(d.join("me.key"), "").unwrap();
        let mut registries = BTreeMap::new();
        registries.insert("docker.io".to_owned(), RegistryConfig::default());
        registries.insert(
            "quay.io".to_owned(),
            RegistryConfig {
                mirrors: vec!["https://q".into()],
                ..Default::default()
            },
        );
        let cfg = HostsConfig {
            registries,
            config_path: Some(root.path().to_owned()),
        };
        let e = super::endpoints(&cfg, "docker.io").unwrap();
        // File order, then the server.
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(
            (e[0].host.as_str(), e[0].path.as_str()),
            ("z-mirror.example", "/custom")
        );
        assert!(e[0].pull && !e[0].resolve && !e[0].send_credentials);
        assert_eq!(
            e[0].ca_files,
            vec![d.join("ca.pem"), PathBuf::from("/abs/ca2.pem")]
        );
        assert_eq!(e[0].client_certs, vec![(d.join("c.cert"), d.join("c.key"))]);
        assert_eq!(e[0].headers["x-multi"], vec!["1".to_owned(), "2".to_owned()]);
        assert_eq!(
            (e[1].host.as_str(), e[1].path.as_str(), e[1].plain_http),
            ("a-mirror.example:5000", "/v2", true)
        );
        assert!(e[1].skip_verify && e[1].send_credentials);
        assert_eq!(e[2].host, "registry-1.docker.io");
        assert!(e[2].send_credentials && e[2].resolve);
        assert_eq!(e[2].ca_files, vec![d.join("reg.crt")]);
        assert_eq!(e[2].client_certs, vec![(d.join("me.cert"), d.join("me.key"))]);
        // No directory: the inline table, then _default, then the defaults.
        assert_eq!(super::endpoints(&cfg, "quay.io").unwrap()[0].host, "q");
        assert_eq!(super::endpoints(&cfg, "ghcr.io").unwrap().len(), 1);
        std::fs::create_dir_all(root.path().join("_default")).unwrap();
        std::fs::write(
            root.path().join("_default/hosts.toml"),
            "[host.\"https://fallback\"]\n",
        )
        .unwrap();
        let e = super::endpoints(&cfg, "ghcr.io").unwrap();
        assert_eq!((e[0].host.as_str(), e[1].host.as_str()), ("fallback", "ghcr.io"));
        assert_eq!(super::endpoints(&cfg, "quay.io").unwrap()[0].host, "q");
        // A bad file is a clear error naming it.
        std::fs::write(d.join("hosts.toml"), "[host.\"ftp://x\"]\n").unwrap();
        let err = super::endpoints(&cfg, "docker.io").unwrap_err();
        assert!(
            err.to_string().contains("hosts.toml") && err.to_string().contains("ftp"),
            "{err}"
        );
    }
}
