//! `taskd config migrate FILE`: a containerd `config.toml` (version 2 or 3) as a taskd config.
//!
//! ```text
//! containerd (v2 | v3)                                  taskd
//! root, state                                           root, state
//! [grpc] address, max_{recv,send}_message_size          [grpc] same keys
//! [ttrpc] address · [metrics] address · [debug] level, format   same keys
//! CRI  (v2: plugins."io.containerd.grpc.v1.cri";        [plugins."io.containerd.cri.v1.cri"]
//!       v3: cri.v1.runtime, cri.v1.images, grpc.v1.cri)
//!   sandbox_image (v3: pinned_images.sandbox)           sandbox_image
//!   containerd.default_runtime_name                     default_runtime
//!   containerd.runtimes.<h>.{runtime_type, runtime_path, runtimes.<h>.{same}, options (runc's, non-zero)
//!     pod_annotations, container_annotations, options}
//!   runc options.SystemdCgroup of the default handler   cgroup_driver = "systemd" | "cgroupfs"
//!   cni.{bin_dir | bin_dirs, conf_dir, max_conf_num}     cni.{bin_dirs, conf_dir, max_conf_num}
//!   max_container_log_line_size, stream_*, x509_key_pair_streaming, enable_tls_streaming
//!   registry.config_path                                [plugins."io.containerd.service.v1.images-service"] config_path
//!   registry.mirrors.<r>.endpoint                        … registries.<r>.mirrors (the registry itself dropped:
//!                                                          taskd always tries it last)
//!   registry.configs.<h>.tls.{insecure_skip_verify, ca_file}, auth.{username, password, auth}
//!                                                        … registries.<h>.{skip_verify, ca_file, username, password}
//!   max_concurrent_downloads, containerd.snapshotter    images-service max_concurrent_downloads, snapshotter
//! plugins."io.containerd.tracing.processor.v1.otlp"     [tracing] endpoint: only with protocol = "grpc" (taskd
//!   endpoint, protocol, insecure                          exports OTLP/gRPC, without TLS): "host:port" with
//!                                                         insecure = true → "http://host:port"
//! plugins."io.containerd.internal.v1.tracing"           [tracing] sampling_ratio, service_name
//!   sampling_ratio, service_name
//! ```
//!
//! Every other key (and a mapped key whose value taskd cannot take) is listed after the config
//! as a TOML comment with the reason. A key left at containerd's zero value whose taskd
//! default means the same is carried by that default and not repeated.

use std::collections::BTreeMap;

use base64::Engine;
use toml::{Table, Value};

use crate::errdefs::{ErrorKind, Kind};

const CRI: &str = "io.containerd.cri.v1.cri";
const IMAGES: &str = "io.containerd.service.v1.images-service";
const RUNC_OPTIONS: &[&str] = &[
    "BinaryName",
    "Root",
    "SystemdCgroup",
    "NoPivotRoot",
    "NoNewKeyring",
    "ShimCgroup",
    "IoUid",
    "IoGid",
    "CriuImagePath",
    "CriuWorkPath",
];

/// Why a containerd config cannot be migrated at all.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("{origin}: not TOML: {message}")]
    Syntax { origin: String, message: String },
    #[error(
        "{origin}: containerd config version {version} is not supported: version 2 or 3 \
         (a file without `version` is version 1: `containerd config migrate` converts it)"
    )]
    Version { origin: String, version: i64 },
    #[error("{origin}: the migrated config does not render as TOML: {message}")]
    Render { origin: String, message: String },
}

impl ErrorKind for MigrateError {
    fn kind(&self) -> Kind {
        match self {
            MigrateError::Syntax { .. } | MigrateError::Version { .. } => Kind::InvalidArgument,
            MigrateError::Render { .. } => Kind::Internal,
        }
    }
}

/// The result: taskd's table, and every source key not carried over with its reason.
#[derive(Debug, Default)]
pub struct Migration {
    pub version: i64,
    pub config: Table,
    /// (dotted containerd key, its value as TOML, reason)
    pub unmapped: Vec<(String, String, String)>,
}

impl Migration {
    /// The taskd config file: a header, the config, then the unmapped keys as comments.
    pub fn render(&self, origin: &str) -> Result<String, MigrateError> {
        let mut config = self.config.clone();
        config.remove("version");
        let body = toml::to_string(&config).map_err(|e| MigrateError::Render {
            origin: origin.to_owned(),
            message: e.to_string(),
        })?;
        let mut out = format!(
            "# taskd config migrated from {origin} (containerd config version {}) by `taskd config migrate`.\n\
             # Check it with `taskd config check`.\n\nversion = 1\n{body}",
            self.version
        );
        if !self.unmapped.is_empty() {
            out.push_str(&format!(
                "\n# Not migrated: {} key(s) of {origin} have no taskd equivalent or a value taskd cannot take.\n",
                self.unmapped.len()
            ));
            for (key, value, reason) in &self.unmapped {
                out.push_str(&format!("#   {key} = {value}\n#       {reason}\n"));
            }
        }
        Ok(out)
    }
}

type Path = Vec<String>;

fn path(parts: &[&str]) -> Path {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

/// The source's leaf keys, taken one by one as they are mapped.
struct Source {
    leaves: BTreeMap<Path, Value>,
}

impl Source {
    fn new(doc: &Table) -> Source {
        fn walk(prefix: &mut Path, t: &Table, out: &mut BTreeMap<Path, Value>) {
            for (k, v) in t {
                prefix.push(k.clone());
                match v {
                    Value::Table(inner) => walk(prefix, inner, out),
                    other => {
                        out.insert(prefix.clone(), other.clone());
                    }
                }
                prefix.pop();
            }
        }
        let mut leaves = BTreeMap::new();
        walk(&mut Vec::new(), doc, &mut leaves);
        Source { leaves }
    }

    fn take(&mut self, p: &[String]) -> Option<Value> {
        self.leaves.remove(p)
    }

    /// The names of the tables directly under `p` (e.g. the runtime handlers).
    fn children(&self, p: &[String]) -> Vec<String> {
        let mut names: Vec<String> = self
            .leaves
            .keys()
            .filter(|k| k.len() > p.len() + 1 && k.starts_with(p))
            .map(|k| k[p.len()].clone())
            .collect();
        names.dedup();
        names
    }

    /// Every remaining leaf under `p`.
    fn under(&self, p: &[String]) -> Vec<Path> {
        self.leaves.keys().filter(|k| k.starts_with(p)).cloned().collect()
    }
}

/// containerd's zero value: nothing set.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Integer(i) => *i == 0,
        Value::Float(f) => *f == 0.0,
        Value::Boolean(b) => !b,
        Value::Array(a) => a.is_empty(),
        Value::Table(t) => t.is_empty(),
        Value::Datetime(_) => false,
    }
}

fn set(out: &mut Table, p: &[&str], v: Value) {
    let Some((last, dirs)) = p.split_last() else {
        return;
    };
    let mut t = out;
    for d in dirs {
        let entry = t
            .entry((*d).to_owned())
            .or_insert_with(|| Value::Table(Table::new()));
        if !entry.is_table() {
            *entry = Value::Table(Table::new());
        }
        let Value::Table(inner) = entry else { return };
        t = inner;
    }
    t.insert((*last).to_owned(), v);
}

/// A Go duration (`"4h0m0s"`, `"1m30s"`, `"500ms"`) in milliseconds.
fn go_duration_ms(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter(|&i| i > 0)?;
        let value: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let ms = match &rest[..u] {
            "h" => 3_600_000.0,
            "m" => 60_000.0,
            "s" => 1000.0,
            "ms" => 1.0,
            "us" | "µs" => 0.001,
            "ns" => 0.000_001,
            _ => return None,
        };
        total += value * ms;
        rest = &rest[u..];
    }
    Some(total.round() as u64)
}

fn duration_value(ms: u64) -> Value {
    match toml::Value::try_from(crate::config::HumanDuration(std::time::Duration::from_millis(ms))) {
        Ok(v) => v,
        Err(_) => Value::String(format!("{ms}ms")),
    }
}

struct Migrator {
    src: Source,
    out: Table,
    unmapped: Vec<(String, String, String)>,
}

impl Migrator {
    fn skip(&mut self, p: &[String], v: &Value, reason: &str) {
        let reason = if is_zero(v) {
            format!("{reason} (unset in the source: nothing lost)")
        } else {
            reason.to_owned()
        };
        self.note(p, v, reason);
    }

    /// Lists a key as not migrated, its reason as given.
    fn note(&mut self, p: &[String], v: &Value, reason: String) {
        let shown = if p.iter().any(|s| {
            matches!(
                s.as_str(),
                "password" | "auth" | "identitytoken" | "identity_token"
            )
        }) {
            "<redacted>".to_owned()
        } else {
            let s = v.to_string();
            if s.chars().count() > 80 {
                format!("{}…", s.chars().take(80).collect::<String>())
            } else {
                s
            }
        };
        let parts: Vec<&str> = p.iter().map(String::as_str).collect();
        self.unmapped.push((crate::config::dotted(&parts), shown, reason));
    }

    /// Moves `from` to `to` when set (a zero value keeps taskd's default: nothing to write).
    fn copy(&mut self, from: &[String], to: &[&str]) -> Option<Value> {
        let v = self.src.take(from)?;
        if !is_zero(&v) {
            set(&mut self.out, to, v.clone());
        }
        Some(v)
    }

    fn top_level(&mut self) {
        for key in ["root", "state"] {
            self.copy(&path(&[key]), &[key]);
        }
        for key in ["address", "max_recv_message_size", "max_send_message_size"] {
            let from = path(&["grpc", key]);
            if key != "address"
                && let Some(v) = self.src.leaves.get(&from)
                && !v
                    .as_integer()
                    .is_some_and(|n| n > 0 && n <= crate::server::MAX_MESSAGE_SIZE as i64)
            {
                let v = v.clone();
                self.src.take(&from);
                self.skip(&from, &v, "taskd takes 1 to 16777216 (16 MiB)");
                continue;
            }
            self.copy(&from, &["grpc", key]);
        }
        self.copy(&path(&["ttrpc", "address"]), &["ttrpc", "address"]);
        // containerd's "" turns the endpoint off; so does taskd's (whose default is on).
        if let Some(v) = self.src.take(&path(&["metrics", "address"])) {
            set(&mut self.out, &["metrics", "address"], v);
        }
        if let Some(v) = self.src.take(&path(&["debug", "level"])) {
            match v.as_str() {
                Some("") | None => {}
                Some("fatal" | "panic") => set(&mut self.out, &["debug", "level"], Value::from("error")),
                Some(level) => set(&mut self.out, &["debug", "level"], Value::from(level)),
            }
        }
        let format = path(&["debug", "format"]);
        if let Some(v) = self.src.take(&format) {
            match v.as_str() {
                Some("" | "text" | "json") => self.copy_value(&v, &["debug", "format"]),
                _ => self.skip(&format, &v, "taskd's log formats are \"text\" and \"json\""),
            }
        }
    }

    /// containerd's OTLP processor and tracing settings → `[tracing]`.
    fn tracing(&mut self) {
        let otlp = |k: &str| path(&["plugins", "io.containerd.tracing.processor.v1.otlp", k]);
        let (ep_key, proto_key, insecure_key) = (otlp("endpoint"), otlp("protocol"), otlp("insecure"));
        let endpoint = self.src.take(&ep_key);
        let protocol = self.src.take(&proto_key);
        let insecure = self.src.take(&insecure_key);
        let grpc = protocol.as_ref().and_then(Value::as_str) == Some("grpc");
        match endpoint
            .as_ref()
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            None => {
                // Export off in containerd as in taskd: the rest says nothing.
                for (k, v) in [
                    (ep_key, endpoint),
                    (proto_key, protocol),
                    (insecure_key, insecure),
                ] {
                    if let Some(v) = v {
                        self.skip(
                            &k,
                            &v,
                            "no endpoint: tracing stays off ([tracing] endpoint = \"\")",
                        );
                    }
                }
            }
            Some(ep) if !grpc => {
                let ep = Value::from(ep);
                self.note(
                    &ep_key,
                    &ep,
                    "taskd exports OTLP over gRPC only (containerd's protocol here is http/protobuf, its \
                     default): set [tracing] endpoint to the collector's gRPC address, e.g. \"http://host:4317\""
                        .to_owned(),
                );
                if let Some(p) = protocol {
                    self.skip(&proto_key, &p, "taskd's OTLP protocol is always gRPC");
                }
                if let Some(i) = insecure {
                    self.skip(&insecure_key, &i, "taskd's OTLP export is always plain text");
                }
            }
            Some(ep) => {
                let url = if ep.contains("://") {
                    ep.to_owned()
                } else if insecure.as_ref().and_then(Value::as_bool) == Some(true) {
                    format!("http://{ep}")
                } else {
                    format!("https://{ep}")
                };
                match crate::telemetry::check_tracing_endpoint(&url) {
                    Ok(()) => set(&mut self.out, &["tracing", "endpoint"], Value::from(url)),
                    Err(reason) => {
                        let ep = Value::from(ep);
                        self.note(&ep_key, &ep, reason);
                        if let Some(i) = insecure {
                            self.skip(&insecure_key, &i, "taskd's OTLP export is always plain text");
                        }
                    }
                }
            }
        }
        let cfg = |k: &str| path(&["plugins", "io.containerd.internal.v1.tracing", k]);
        let ratio_key = cfg("sampling_ratio");
        if let Some(v) = self.src.take(&ratio_key) {
            let ratio = v.as_float().or_else(|| v.as_integer().map(|i| i as f64));
            match ratio {
                // containerd's 0 samples nothing, as taskd's does: copied as it is.
                Some(r) if (0.0..=1.0).contains(&r) => {
                    set(&mut self.out, &["tracing", "sampling_ratio"], Value::Float(r));
                }
                _ => self.skip(&ratio_key, &v, "taskd takes a sampling ratio from 0.0 to 1.0"),
            }
        }
        self.copy(&cfg("service_name"), &["tracing", "service_name"]);
    }

    fn copy_value(&mut self, v: &Value, to: &[&str]) {
        if !is_zero(v) {
            set(&mut self.out, to, v.clone());
        }
    }

    /// The CRI keys. `rt`: runtimes, CNI, log lines; `img`: registry, sandbox image,
    /// snapshotter; `grpc`: streaming (all three are one table in version 2).
    fn cri(&mut self, rt: &[String], img: &[String], grpc: &[String], version: i64) {
        let join = |base: &[String], rest: &[&str]| -> Path {
            let mut p = base.to_vec();
            p.extend(rest.iter().map(|s| (*s).to_owned()));
            p
        };
        let sandbox = if version >= 3 {
            join(img, &["pinned_images", "sandbox"])
        } else {
            join(img, &["sandbox_image"])
        };
        self.copy(&sandbox, &["plugins", CRI, "sandbox_image"]);

        let line = join(rt, &["max_container_log_line_size"]);
        if let Some(v) = self.src.take(&line) {
            match v.as_integer() {
                Some(n) if n >= 64 => set(&mut self.out, &["plugins", CRI, "max_container_log_line_size"], v),
                _ => self.skip(
                    &line,
                    &v,
                    "taskd always splits long lines: it takes a size of at least 64 bytes (default 16384)",
                ),
            }
        }
        for key in [
            "stream_server_address",
            "stream_server_port",
            "enable_tls_streaming",
        ] {
            self.copy(&join(grpc, &[key]), &["plugins", CRI, key]);
        }
        for key in ["tls_cert_file", "tls_key_file"] {
            self.copy(
                &join(grpc, &["x509_key_pair_streaming", key]),
                &["plugins", CRI, "x509_key_pair_streaming", key],
            );
        }
        let idle = join(grpc, &["stream_idle_timeout"]);
        if let Some(v) = self.src.take(&idle) {
            match v.as_str().and_then(go_duration_ms) {
                Some(ms) if ms > 0 => set(
                    &mut self.out,
                    &["plugins", CRI, "stream_idle_timeout"],
                    duration_value(ms),
                ),
                _ => self.skip(&idle, &v, "not a positive duration taskd can take"),
            }
        }
        let drain = join(rt, &["drain_exec_sync_io_timeout"]);
        if let Some(v) = self.src.take(&drain) {
            match v.as_str().and_then(go_duration_ms) {
                Some(ms) if ms > 0 => set(
                    &mut self.out,
                    &["plugins", CRI, "drain_exec_sync_io_timeout"],
                    duration_value(ms),
                ),
                _ => self.skip(&drain, &v, "taskd always bounds the ExecSync drain (default 1s)"),
            }
        }

        // CNI.
        let cni = join(rt, &["cni"]);
        if let Some(v) = self.src.take(&join(&cni, &["bin_dirs"])) {
            self.copy_value(&v, &["plugins", CRI, "cni", "bin_dirs"]);
        }
        if let Some(v) = self.src.take(&join(&cni, &["bin_dir"]))
            && let Some(dir) = v.as_str().filter(|d| !d.is_empty())
        {
            set(
                &mut self.out,
                &["plugins", CRI, "cni", "bin_dirs"],
                Value::Array(vec![Value::from(dir)]),
            );
        }
        self.copy(&join(&cni, &["conf_dir"]), &["plugins", CRI, "cni", "conf_dir"]);
        let max = join(&cni, &["max_conf_num"]);
        if let Some(v) = self.src.take(&max) {
            match v.as_integer() {
                Some(n) if n >= 1 => set(&mut self.out, &["plugins", CRI, "cni", "max_conf_num"], v),
                _ => self.skip(
                    &max,
                    &v,
                    "containerd's 0 means every network of conf_dir; taskd takes a count (at least 1): set cni.max_conf_num",
                ),
            }
        }

        self.runtimes(&join(rt, &["containerd"]));
        self.registry(&join(img, &["registry"]));

        for (from, key) in [
            (
                join(img, &["max_concurrent_downloads"]),
                "max_concurrent_downloads",
            ),
            (
                if version >= 3 {
                    join(img, &["snapshotter"])
                } else {
                    join(img, &["containerd", "snapshotter"])
                },
                "snapshotter",
            ),
        ] {
            let Some(v) = self.src.take(&from) else { continue };
            match (key, v.as_str()) {
                ("snapshotter", Some("overlayfs" | "native")) | ("max_concurrent_downloads", None) => {
                    self.copy_value(&v, &["plugins", IMAGES, key]);
                }
                ("snapshotter", _) => self.skip(&from, &v, "taskd's snapshotters are overlayfs and native"),
                _ => self.skip(&from, &v, "not a value taskd takes"),
            }
        }
    }

    fn runtimes(&mut self, ctd: &[String]) {
        let mut base = ctd.to_vec();
        base.push("runtimes".into());
        let default_key = [ctd, &["default_runtime_name".to_owned()]].concat();
        let default = self
            .src
            .take(&default_key)
            .and_then(|v| v.as_str().map(str::to_owned))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| crate::cri::config::DEFAULT_HANDLER.to_owned());
        let handlers = self.src.children(&base);
        if handlers.contains(&default) {
            set(
                &mut self.out,
                &["plugins", CRI, "default_runtime"],
                Value::from(default.clone()),
            );
        } else if default != crate::cri::config::DEFAULT_HANDLER {
            self.skip(
                &default_key,
                &Value::from(default.clone()),
                "no runtime of that name is configured; taskd's default handler (runc) stays",
            );
        }
        // One cgroup driver for taskd: the default handler's SystemdCgroup decides it.
        let systemd_of = |src: &Source, h: &str| {
            let mut p = base.clone();
            p.extend([h.to_owned(), "options".into(), "SystemdCgroup".into()]);
            src.leaves.get(&p).and_then(Value::as_bool)
        };
        let systemd = systemd_of(&self.src, &default).unwrap_or(false);
        if systemd {
            set(
                &mut self.out,
                &["plugins", CRI, "cgroup_driver"],
                Value::from("systemd"),
            );
        }
        for h in handlers {
            let mut hp = base.clone();
            hp.push(h.clone());
            let at = |k: &[&str]| [hp.as_slice(), &path(k)].concat();
            let kind = self
                .src
                .leaves
                .get(&at(&["runtime_type"]))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if kind == "io.containerd.runtime.v1.linux" || kind.is_empty() {
                for p in self.src.under(&hp) {
                    if let Some(v) = self.src.take(&p) {
                        self.skip(
                            &p,
                            &v,
                            &format!(
                                "runtime {h:?}: runtime_type {kind:?} is not a v2 shim runtime taskd can start"
                            ),
                        );
                    }
                }
                continue;
            }
            let runc = matches!(kind.as_str(), "io.containerd.runc.v2" | "io.containerd.runc.v1");
            let to = |k: &str| ["plugins", CRI, "runtimes", h.as_str(), k].map(str::to_owned);
            for key in [
                "runtime_type",
                "runtime_path",
                "pod_annotations",
                "container_annotations",
            ] {
                if let Some(v) = self.src.take(&at(&[key])) {
                    let t = to(key);
                    self.copy_value(&v, &t.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
            for p in self.src.under(&at(&["options"])) {
                let Some(v) = self.src.take(&p) else { continue };
                let opt = p.last().cloned().unwrap_or_default();
                if !runc {
                    self.skip(&p, &v, "taskd passes runtime options to runc shims only");
                } else if !RUNC_OPTIONS.contains(&opt.as_str()) {
                    self.skip(&p, &v, "not a runc option taskd passes on");
                } else if opt == "SystemdCgroup" && v.as_bool() != Some(systemd) {
                    self.note(
                        &p,
                        &v,
                        format!(
                            "taskd has one cgroup_driver, taken from the default runtime {default:?} \
                             (SystemdCgroup = {systemd}); every runc handler follows it"
                        ),
                    );
                } else if opt == "SystemdCgroup" && systemd {
                    let t = to("options");
                    let mut t: Vec<&str> = t.iter().map(String::as_str).collect();
                    t.push("SystemdCgroup");
                    set(&mut self.out, &t, v);
                } else {
                    let t = to("options");
                    let mut t: Vec<&str> = t.iter().map(String::as_str).collect();
                    t.push(&opt);
                    self.copy_value(&v, &t);
                }
            }
            for p in self.src.under(&hp) {
                let Some(v) = self.src.take(&p) else { continue };
                let reason = match p.last().map(String::as_str) {
                    Some("privileged_without_host_devices") => {
                        "taskd always gives privileged containers the host's devices"
                    }
                    Some("base_runtime_spec") => "taskd has no base OCI spec file per runtime",
                    Some("cni_conf_dir" | "cni_max_conf_num") => {
                        "taskd has one CNI config for every handler ([plugins.\"io.containerd.cri.v1.cri\".cni])"
                    }
                    Some("runtime_root" | "runtime_engine") => {
                        "deprecated in containerd; use the runc option Root / BinaryName"
                    }
                    Some("sandbox_mode" | "sandboxer") => {
                        "taskd runs every pod in its own sandbox (podsandbox)"
                    }
                    Some("snapshotter") => "taskd unpacks every image into the images service's snapshotter",
                    _ => "no taskd equivalent for a runtime handler",
                };
                self.skip(&p, &v, reason);
            }
        }
    }

    fn registry(&mut self, reg: &[String]) {
        let at = |k: &[&str]| [reg, &path(k)].concat();
        // The images service's hosts.toml directory (added by the hosts.toml work).
        self.copy(&at(&["config_path"]), &["plugins", IMAGES, "config_path"]);
        let mirrors = at(&["mirrors"]);
        for r in self.src.children(&mirrors) {
            let ep = [mirrors.as_slice(), &path(&[&r, "endpoint"])].concat();
            let Some(v) = self.src.take(&ep) else { continue };
            if r == "*" {
                self.skip(
                    &ep,
                    &v,
                    "taskd has no wildcard registry: repeat the mirrors under each registry",
                );
                continue;
            }
            let upstream = if r == "docker.io" {
                "registry-1.docker.io"
            } else {
                r.as_str()
            };
            let mut list = Vec::new();
            for e in v.as_array().into_iter().flatten().filter_map(Value::as_str) {
                let host = e
                    .trim_start_matches("https://")
                    .trim_start_matches("http://")
                    .trim_end_matches('/');
                if host == upstream || host == r {
                    // The registry itself: taskd always tries it after the mirrors.
                    if e.starts_with("http://") {
                        set(
                            &mut self.out,
                            &["plugins", IMAGES, "registries", &r, "plain_http"],
                            Value::Boolean(true),
                        );
                    }
                } else {
                    list.push(Value::from(e));
                }
            }
            if !list.is_empty() {
                set(
                    &mut self.out,
                    &["plugins", IMAGES, "registries", &r, "mirrors"],
                    Value::Array(list),
                );
            }
        }
        let configs = at(&["configs"]);
        for h in self.src.children(&configs) {
            let key = |k: &[&str]| [configs.as_slice(), &path(&[&h]), &path(k)].concat();
            let to = |k: &str| ["plugins", IMAGES, "registries", h.as_str(), k].map(str::to_owned);
            for (from, target) in [
                (key(&["tls", "insecure_skip_verify"]), "skip_verify"),
                (key(&["tls", "ca_file"]), "ca_file"),
                (key(&["auth", "username"]), "username"),
                (key(&["auth", "password"]), "password"),
            ] {
                if let Some(v) = self.src.take(&from) {
                    let t = to(target);
                    self.copy_value(&v, &t.iter().map(String::as_str).collect::<Vec<_>>());
                }
            }
            let auth = key(&["auth", "auth"]);
            if let Some(v) = self.src.take(&auth) {
                let decoded = v
                    .as_str()
                    .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
                    .and_then(|b| String::from_utf8(b).ok());
                match decoded.as_deref().and_then(|s| s.split_once(':')) {
                    Some((user, pass)) => {
                        set(
                            &mut self.out,
                            &["plugins", IMAGES, "registries", &h, "username"],
                            Value::from(user),
                        );
                        set(
                            &mut self.out,
                            &["plugins", IMAGES, "registries", &h, "password"],
                            Value::from(pass),
                        );
                    }
                    None if is_zero(&v) => {}
                    None => self.skip(&auth, &v, "not base64 of user:password"),
                }
            }
            for p in self.src.under(&key(&[])) {
                let Some(v) = self.src.take(&p) else { continue };
                let reason = match p.last().map(String::as_str) {
                    Some("cert_file" | "key_file") => {
                        "client certificates: put them in a hosts.toml under config_path (`client`)"
                    }
                    Some("identitytoken") => "taskd has no identity-token auth: use username/password",
                    _ => "no taskd equivalent for a registry",
                };
                self.skip(&p, &v, reason);
            }
        }
        for p in self.src.under(reg) {
            let Some(v) = self.src.take(&p) else { continue };
            let reason = match p.get(reg.len()).map(String::as_str) {
                Some("auths") => {
                    "deprecated in containerd: use configs.<host>.auth (taskd: registries.<host> username/password)"
                }
                Some("headers") => {
                    "taskd sends no extra registry headers (hosts.toml `header` under config_path)"
                }
                _ => "no taskd equivalent for registry settings",
            };
            self.skip(&p, &v, reason);
        }
    }

    /// The reason a leftover key has no taskd equivalent.
    fn reason(p: &[String]) -> &'static str {
        let first = p.first().map(String::as_str).unwrap_or("");
        let last = p.last().map(String::as_str).unwrap_or("");
        let plugin = if first == "plugins" {
            p.get(1).map(String::as_str).unwrap_or("")
        } else {
            ""
        };
        match (first, plugin, last) {
            ("version", _, _) => "taskd's config is version 1 (written above)",
            ("imports", _, _) => "taskd reads one file: merge the imported files into this one",
            ("oom_score", _, _) => "set OOMScoreAdjust in taskd's systemd unit instead",
            ("plugin_dir" | "proxy_plugins", _, _) => "taskd loads no external plugins",
            ("temp", _, _) => "taskd has no temp directory setting",
            ("disabled_plugins" | "required_plugins", _, _) => {
                "plugin ids differ between containerd and taskd: `taskd config default` lists taskd's"
            }
            ("cgroup", _, _) => "taskd's own cgroup is set by its service manager (the systemd unit)",
            ("debug", _, _) => "taskd has no debug socket: logs and /v1/metrics serve instead",
            ("grpc" | "ttrpc", _, "uid" | "gid") => "taskd's sockets are owned by root: not configurable",
            ("grpc", _, _) => "taskd serves gRPC on its unix socket only",
            ("metrics", _, "grpc_histogram") => "taskd always records per-RPC latency histograms",
            ("timeouts", _, _) => "taskd's internal timeouts are fixed",
            ("stream_processors", _, _) => "taskd has no stream processors (no encrypted layers)",
            ("plugins", "io.containerd.gc.v1.scheduler", _) => {
                "taskd's collector is configured by [plugins.\"io.containerd.internal.v1.gc\"] interval_ms"
            }
            ("plugins", p, _) if p.starts_with("io.containerd.snapshotter.") => {
                "taskd keeps its snapshotters (overlayfs, native) under its root: no per-snapshotter settings"
            }
            ("plugins", "io.containerd.metadata.v1.bolt", _) => {
                "taskd's content store is always shared between namespaces (containerd's \"shared\" policy)"
            }
            ("plugins", "io.containerd.monitor.v1.cgroups", _) => {
                "taskd's task metrics are always registered"
            }
            ("plugins", "io.containerd.runtime.v1.linux", _) => {
                "taskd has no v1 linux runtime (v2 shims only)"
            }
            ("plugins", "io.containerd.internal.v1.restart", _) => "taskd has no restart monitor",
            ("plugins", "io.containerd.internal.v1.opt", _) => "taskd has no /opt plugin",
            ("plugins", "io.containerd.runtime.v2.task", _) => "not configurable in taskd's task runtime",
            ("plugins", "io.containerd.service.v1.diff-service", _) => "taskd's differ is fixed",
            ("plugins", "io.containerd.service.v1.tasks-service", _) => "taskd has no RDT support",
            (
                "plugins",
                "io.containerd.grpc.v1.cri" | "io.containerd.cri.v1.runtime" | "io.containerd.cri.v1.images",
                _,
            ) => match last {
                "disable_apparmor" => "taskd applies AppArmor profiles when the host has AppArmor",
                "enable_selinux" | "selinux_category_range" => "taskd has no SELinux labelling",
                "restrict_oom_score_adj" => "taskd passes the OOM score kubelet asks for",
                "systemd_cgroup" => "for the removed v1 linux runtime: use the runc option SystemdCgroup",
                "stats_collect_period" => "taskd reads stats when asked",
                "disable_tcp_service" => "taskd has no TCP gRPC service",
                "max_concurrent_downloads" | "snapshotter" => "not a value taskd takes",
                "key_model" => "taskd has no image decryption",
                "conf_template" | "ip_pref" | "setup_serially" | "use_internal_loopback" => {
                    "taskd's CNI has no such setting"
                }
                _ => "no taskd equivalent in the CRI plugin",
            },
            _ => "no taskd equivalent",
        }
    }
}

/// Migrates one containerd config's text. `origin` names it in errors and the header.
pub fn migrate(text: &str, origin: &str) -> Result<Migration, MigrateError> {
    let doc: Table = text.parse().map_err(|e: toml::de::Error| MigrateError::Syntax {
        origin: origin.to_owned(),
        message: e.message().to_owned(),
    })?;
    let version = doc.get("version").and_then(Value::as_integer).unwrap_or(1);
    if !(version == 2 || version == 3) {
        return Err(MigrateError::Version {
            origin: origin.to_owned(),
            version,
        });
    }
    let mut m = Migrator {
        src: Source::new(&doc),
        out: Table::new(),
        unmapped: Vec::new(),
    };
    m.src.take(&path(&["version"]));
    set(&mut m.out, &["version"], Value::Integer(1));
    m.top_level();
    m.tracing();
    if version >= 3 {
        m.cri(
            &path(&["plugins", "io.containerd.cri.v1.runtime"]),
            &path(&["plugins", "io.containerd.cri.v1.images"]),
            &path(&["plugins", "io.containerd.grpc.v1.cri"]),
            version,
        );
    } else {
        let cri = path(&["plugins", "io.containerd.grpc.v1.cri"]);
        m.cri(&cri, &cri, &cri, version);
    }
    let rest: Vec<Path> = m.src.leaves.keys().cloned().collect();
    for p in rest {
        if let Some(v) = m.src.take(&p) {
            m.skip(&p, &v, Migrator::reason(&p));
        }
    }
    Ok(Migration {
        version,
        config: m.out,
        unmapped: m.unmapped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration_ms("4h0m0s"), Some(4 * 3_600_000));
        assert_eq!(go_duration_ms("1m30s"), Some(90_000));
        assert_eq!(go_duration_ms("500ms"), Some(500));
        assert_eq!(go_duration_ms("0s"), Some(0));
        assert_eq!(go_duration_ms("4 hours"), None);
        assert_eq!(go_duration_ms(""), None);
    }

    #[test]
    fn version_1_and_garbage_are_refused() {
        let e = migrate("[plugins.cri]\nx = 1\n", "f").unwrap_err().to_string();
        assert!(
            e.contains("version 1") && e.contains("containerd config migrate"),
            "{e}"
        );
        assert!(migrate("version = 2\n[x\n", "f").is_err());
    }

    #[test]
    fn registries_runtimes_and_driver_are_mapped() {
        let m = migrate(
            r#"version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "crun"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
  runtime_type = "io.containerd.runc.v2"
  privileged_without_host_devices = true
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
  BinaryName = "/usr/bin/crun"
  SystemdCgroup = true
  CriuPath = "/x"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
  endpoint = ["https://mirror.example", "https://registry-1.docker.io"]
[plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example".tls]
  insecure_skip_verify = true
  cert_file = "/c.pem"
[plugins."io.containerd.grpc.v1.cri".registry.configs."mirror.example".auth]
  auth = "dTpw"
"#,
            "f",
        )
        .unwrap();
        let cri = &m.config["plugins"][CRI];
        assert_eq!(cri["default_runtime"].as_str(), Some("crun"));
        assert_eq!(cri["cgroup_driver"].as_str(), Some("systemd"));
        assert_eq!(
            cri["runtimes"]["crun"]["options"]["BinaryName"].as_str(),
            Some("/usr/bin/crun")
        );
        assert!(cri["runtimes"]["runc"].get("options").is_none());
        let img = &m.config["plugins"][IMAGES];
        assert_eq!(img["config_path"].as_str(), Some("/etc/containerd/certs.d"));
        let mirrors = img["registries"]["docker.io"]["mirrors"].as_array().unwrap();
        assert_eq!(mirrors, &vec![Value::from("https://mirror.example")]);
        let host = &img["registries"]["mirror.example"];
        assert_eq!(host["skip_verify"].as_bool(), Some(true));
        assert_eq!(
            (host["username"].as_str(), host["password"].as_str()),
            (Some("u"), Some("p"))
        );
        let keys: Vec<&str> = m.unmapped.iter().map(|u| u.0.as_str()).collect();
        for k in [
            "CriuPath",
            "privileged_without_host_devices",
            "runc.options.SystemdCgroup",
            "cert_file",
        ] {
            assert!(keys.iter().any(|u| u.ends_with(k)), "{k} not in {keys:?}");
        }
        let text = m.render("f").unwrap();
        assert!(
            text.contains(
                "#   plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.crun.options.CriuPath = \"/x\""
            ),
            "{text}"
        );
        assert!(!text.contains("dTpw"), "{text}");
    }

    #[test]
    fn tracing_maps_grpc_endpoints_only() {
        let m = migrate(
            r#"version = 2
[plugins."io.containerd.tracing.processor.v1.otlp"]
  endpoint = "127.0.0.1:4317"
  protocol = "grpc"
  insecure = true
[plugins."io.containerd.internal.v1.tracing"]
  sampling_ratio = 0.5
  service_name = "node-7"
"#,
            "f",
        )
        .unwrap();
        let t = &m.config["tracing"];
        assert_eq!(t["endpoint"].as_str(), Some("http://127.0.0.1:4317"));
        assert_eq!(t["sampling_ratio"].as_float(), Some(0.5));
        assert_eq!(t["service_name"].as_str(), Some("node-7"));
        assert!(m.unmapped.is_empty(), "{:?}", m.unmapped);

        // containerd's default protocol (http/protobuf), and TLS: listed, not carried over.
        for (extra, says) in [
            ("", "gRPC only"),
            ("protocol = \"http/protobuf\"\n", "gRPC only"),
            ("protocol = \"grpc\"\n", "no TLS"),
        ] {
            let m = migrate(
                &format!(
                    "version = 2\n[plugins.\"io.containerd.tracing.processor.v1.otlp\"]\nendpoint = \"c:4317\"\n{extra}"
                ),
                "f",
            )
            .unwrap();
            assert!(m.config.get("tracing").is_none(), "{extra}: {:?}", m.config);
            let (key, _, reason) = &m.unmapped[0];
            assert!(key.ends_with("otlp\".endpoint"), "{key}");
            assert!(reason.contains(says), "{extra}: {reason}");
        }

        // Off (containerd 1.6's defaults): nothing turned on, the keys listed as unset.
        let m = migrate(
            r#"version = 2
[plugins."io.containerd.tracing.processor.v1.otlp"]
  endpoint = ""
  insecure = false
  protocol = ""
[plugins."io.containerd.internal.v1.tracing"]
  sampling_ratio = 1.0
  service_name = "containerd"
"#,
            "f",
        )
        .unwrap();
        assert!(m.config["tracing"].get("endpoint").is_none());
        assert_eq!(m.unmapped.len(), 3, "{:?}", m.unmapped);
        assert!(
            m.unmapped.iter().all(|u| u.2.contains("nothing lost")),
            "{:?}",
            m.unmapped
        );
    }

    #[test]
    fn version_3_tables_are_read() {
        let m = migrate(
            r#"version = 3
[plugins."io.containerd.cri.v1.images".pinned_images]
  sandbox = "registry.k8s.io/pause:3.10"
[plugins."io.containerd.cri.v1.runtime"]
  max_container_log_line_size = 32768
[plugins."io.containerd.cri.v1.runtime".cni]
  bin_dirs = ["/opt/cni/bin"]
  max_conf_num = 0
[plugins."io.containerd.grpc.v1.cri"]
  stream_idle_timeout = "30m0s"
"#,
            "f",
        )
        .unwrap();
        let cri = &m.config["plugins"][CRI];
        assert_eq!(cri["sandbox_image"].as_str(), Some("registry.k8s.io/pause:3.10"));
        assert_eq!(cri["max_container_log_line_size"].as_integer(), Some(32768));
        assert_eq!(cri["stream_idle_timeout"].as_str(), Some("30m"));
        assert_eq!(m.unmapped.len(), 1, "{:?}", m.unmapped);
        assert!(m.unmapped[0].0.ends_with("cni.max_conf_num"));
    }
}
