//! The daemon's TOML config (`version = 1`), its embedded defaults, and validation.
//!
//! ```text
//! version = 1
//! root, state                        persistent / volatile dirs
//! disabled_plugins, required_plugins ["<type uri>.<id>", ...]
//! [grpc]     address, max_recv_message_size, max_send_message_size
//! [ttrpc]    address                 "" = "<grpc address>.ttrpc"
//! [metrics]  address                 "" = disabled; default 127.0.0.1:1338
//!            bearer_token_file       optional
//! [debug]    level, format           "text" | "json"
//! [shutdown] grace, hook_timeout     durations: "500ms", "10s", "2m", "1h", "1m30s"
//! [tracing]  endpoint                "" = no OpenTelemetry export; "http://host:port" (OTLP/gRPC)
//!            sampling_ratio          0.0..=1.0 of new traces (a caller's sampled flag is kept)
//!            service_name            service.name of the exported spans (default "taskd")
//! [plugins."<type uri>.<id>"]        checked by that plugin's PluginConfig::check
//! ```
//!
//! The defaults are `deploy/taskd.toml`, embedded with `include_str!` ([`DEFAULT_TOML`]);
//! [`default_toml`] appends every registered plugin's default table.
//!
//! Validation yields a [`Report`] of warnings and errors, each naming the key and, when the
//! key is in the file, its line (taken from the spans of the parsed document, never guessed).
//! The daemon refuses to start on any error.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::plugin::{PluginConfig, Registration};
use crate::server::socket;
use crate::telemetry::{Tracing, check_tracing_endpoint};

/// The embedded default config (`deploy/taskd.toml`).
pub const DEFAULT_TOML: &str = include_str!("../deploy/taskd.toml");

/// A duration written as `"500ms"`, `"10s"`, `"2m"`, `"1h"` or combined (`"1m30s"`, as
/// containerd's Go `ParseDuration` reads them); parsed by `humantime`, which also takes
/// spaces and longer unit names (`"1m 30s"`, `"2min"`). Written back in the largest exact
/// unit, Go-style (see the `Serialize` impl).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Duration, String> {
        humantime::parse_duration(s.trim()).map_err(|e| {
            format!("invalid duration {s:?}: {e} (e.g. \"500ms\", \"10s\", \"2m\", \"1h\", \"1m30s\")")
        })
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HumanDuration::parse(&s)
            .map(HumanDuration)
            .map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    /// The largest unit that is exact: `"500ms"`, `"10s"`, `"2m"`, `"1h"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ms = self.0.as_millis();
        let text = if !ms.is_multiple_of(1000) {
            format!("{ms}ms")
        } else if ms.is_multiple_of(3_600_000) && ms > 0 {
            format!("{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) && ms > 0 {
            format!("{}m", ms / 60_000)
        } else {
            format!("{}s", ms / 1000)
        };
        s.serialize_str(&text)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub version: i64,
    pub root: PathBuf,
    pub state: PathBuf,
    pub disabled_plugins: Vec<String>,
    pub required_plugins: Vec<String>,
    pub grpc: Grpc,
    pub ttrpc: Ttrpc,
    pub metrics: Metrics,
    pub debug: Debug,
    pub shutdown: Shutdown,
    pub tracing: Tracing,
    pub plugins: BTreeMap<String, toml::Table>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grpc {
    pub address: PathBuf,
    pub max_recv_message_size: i64,
    pub max_send_message_size: i64,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Ttrpc {
    /// Empty: `<grpc address>.ttrpc`.
    pub address: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Metrics {
    /// Empty: no HTTP endpoint.
    pub address: String,
    pub bearer_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Debug {
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shutdown {
    pub grace: HumanDuration,
    pub hook_timeout: HumanDuration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            version: 1,
            root: PathBuf::from("/var/lib/taskd"),
            state: PathBuf::from("/run/taskd"),
            disabled_plugins: Vec::new(),
            required_plugins: Vec::new(),
            grpc: Grpc::default(),
            ttrpc: Ttrpc::default(),
            metrics: Metrics::default(),
            debug: Debug::default(),
            shutdown: Shutdown::default(),
            tracing: Tracing::default(),
            plugins: BTreeMap::new(),
        }
    }
}

impl Default for Grpc {
    fn default() -> Self {
        Grpc {
            address: PathBuf::from("/run/taskd/taskd.sock"),
            max_recv_message_size: crate::server::MAX_MESSAGE_SIZE as i64,
            max_send_message_size: crate::server::MAX_MESSAGE_SIZE as i64,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            address: "127.0.0.1:1338".into(),
            bearer_token_file: None,
        }
    }
}

impl Default for Debug {
    fn default() -> Self {
        Debug {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown {
            grace: HumanDuration(Duration::from_secs(10)),
            hook_timeout: HumanDuration(Duration::from_secs(5)),
        }
    }
}

impl Config {
    /// The `[grpc]` message size limits handed to every gRPC service (validated to
    /// 1..=16 MiB; an out-of-range value, rejected by [`validate`], maps to the bound).
    pub fn grpc_limits(&self) -> crate::server::GrpcLimits {
        let max = crate::server::MAX_MESSAGE_SIZE;
        let bytes = |v: i64| usize::try_from(v).unwrap_or(1).clamp(1, max);
        crate::server::GrpcLimits {
            max_recv: bytes(self.grpc.max_recv_message_size),
            max_send: bytes(self.grpc.max_send_message_size),
        }
    }

    /// The ttrpc socket: `[ttrpc] address`, or `<grpc address>.ttrpc`.
    pub fn ttrpc_address(&self) -> PathBuf {
        if self.ttrpc.address.as_os_str().is_empty() {
            let mut s = self.grpc.address.clone().into_os_string();
            s.push(".ttrpc");
            PathBuf::from(s)
        } else {
            self.ttrpc.address.clone()
        }
    }

    /// The HTTP endpoint address, if enabled.
    pub fn metrics_address(&self) -> Option<&str> {
        Some(self.metrics.address.as_str()).filter(|a| !a.is_empty())
    }
}

/// Command-line values that override the file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub root: Option<PathBuf>,
    pub state: Option<PathBuf>,
    pub address: Option<PathBuf>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(r) = &self.root {
            cfg.root = r.clone();
        }
        if let Some(s) = &self.state {
            cfg.state = s.clone();
        }
        if let Some(a) = &self.address {
            cfg.grpc.address = a.clone();
        }
    }
}

/// One finding: the dotted key it is about, its line in the file when known, a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub key: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.key.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

impl Diagnostic {
    /// `ORIGIN:LINE: key: message` (compiler style), or `ORIGIN: key: message`.
    pub fn located(&self, origin: &str) -> String {
        let what = if self.key.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.key, self.message)
        };
        match self.line {
            Some(line) => format!("{origin}:{line}: {what}"),
            None => format!("{origin}: {what}"),
        }
    }
}

/// The outcome of validation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub warnings: Vec<Diagnostic>,
    pub errors: Vec<Diagnostic>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// A config file's text with its span-carrying parse, for locating keys.
struct Source<'a> {
    text: &'a str,
    doc: Option<Spanned<DeTable<'a>>>,
}

impl<'a> Source<'a> {
    fn new(text: &'a str) -> Self {
        Source {
            text,
            doc: DeTable::parse(text).ok(),
        }
    }

    fn line_at(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the key at `path` (e.g. `["grpc", "address"]`), if the file has it.
    fn line_of(&self, path: &[&str]) -> Option<usize> {
        let doc = self.doc.as_ref()?;
        let mut table: &DeTable = doc.get_ref();
        let mut line = None;
        for (i, seg) in path.iter().enumerate() {
            let (k, v) = table.iter().find(|(k, _)| k.get_ref().as_ref() == *seg)?;
            line = Some(self.line_at(k.span().start));
            if i + 1 < path.len() {
                table = v.get_ref().as_table()?;
            }
        }
        line
    }

    /// A deserialization error as a diagnostic: its span gives the line and the key.
    fn diagnostic(&self, e: &toml::de::Error) -> Diagnostic {
        let (key, line) = match e.span() {
            Some(span) => (self.key_at(span.start), Some(self.line_at(span.start))),
            None => (String::new(), None),
        };
        Diagnostic {
            key,
            line,
            message: e.message().to_owned(),
        }
    }

    /// The dotted path of the deepest key whose key or value span contains `offset`.
    fn key_at(&self, offset: usize) -> String {
        fn walk(table: &DeTable, offset: usize, path: &mut Vec<String>, best: &mut Vec<String>) {
            for (k, v) in table {
                path.push(k.get_ref().to_string());
                let hit =
                    |r: std::ops::Range<usize>| r.start <= offset && (offset < r.end || offset == r.start);
                if (hit(k.span()) || hit(v.span())) && path.len() > best.len() {
                    *best = path.clone();
                }
                match v.get_ref() {
                    DeValue::Table(t) => walk(t, offset, path, best),
                    DeValue::Array(items) => {
                        for item in items {
                            if let DeValue::Table(t) = item.get_ref() {
                                walk(t, offset, path, best);
                            }
                        }
                    }
                    _ => {}
                }
                path.pop();
            }
        }
        let mut best = Vec::new();
        if let Some(doc) = &self.doc {
            walk(doc.get_ref(), offset, &mut Vec::new(), &mut best);
        }
        dotted(&best.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// `a.b."c.d"`: segments that are not bare keys are quoted.
pub fn dotted(path: &[&str]) -> String {
    path.iter()
        .map(|s| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                (*s).to_owned()
            } else {
                format!("{s:?}")
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Parses a config file: syntax and schema (unknown keys, wrong types, bad values). Errors
/// name the key and its line.
pub fn parse(text: &str) -> Result<Config, Report> {
    let source = Source::new(text);
    if let Err(e) = DeTable::parse(text) {
        return Err(Report {
            warnings: vec![],
            errors: vec![Diagnostic {
                key: String::new(),
                line: e.span().map(|s| source.line_at(s.start)),
                message: format!("syntax error: {}", e.message()),
            }],
        });
    }
    let first = match toml::from_str::<Config>(text) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => source.diagnostic(&e),
    };
    // serde stops at the first problem; check the document key by key to report them all.
    let mut errors = schema_errors(&source);
    if errors.is_empty() {
        errors.push(first);
    }
    Err(Report {
        warnings: vec![],
        errors,
    })
}

/// Deserializes the config from one key at a time (one `key = value`, or one key of one
/// `[section]`), so every bad key gets its own error. The pieces keep the document's spans.
fn schema_errors(source: &Source) -> Vec<Diagnostic> {
    let Some(doc) = &source.doc else { return vec![] };
    let whole = 0..source.text.len();
    let check = |key: &Spanned<toml::de::DeString>, value: Spanned<DeValue>| -> Option<Diagnostic> {
        let mut piece = DeTable::new();
        piece.insert(key.clone(), value);
        let de = toml::de::Deserializer::from(Spanned::new(whole.clone(), piece));
        Config::deserialize(de).err().map(|e| source.diagnostic(&e))
    };
    let mut errors: Vec<Diagnostic> = Vec::new();
    for (k, v) in doc.get_ref() {
        let found: Vec<Diagnostic> = match v.get_ref() {
            DeValue::Table(t) if k.get_ref().as_ref() != "plugins" && !t.is_empty() => t
                .iter()
                .filter_map(|(k2, v2)| {
                    let mut one = DeTable::new();
                    one.insert(k2.clone(), v2.clone());
                    check(k, Spanned::new(v.span(), DeValue::Table(one)))
                })
                .collect(),
            _ => check(k, v.clone()).into_iter().collect(),
        };
        for d in found {
            if !errors.contains(&d) {
                errors.push(d);
            }
        }
    }
    errors.sort_by_key(|d| d.line.unwrap_or(usize::MAX));
    errors
}

/// Checks the meaning of a parsed config (after command-line overrides) against the
/// registered plugins. `text` is the file it came from, for line numbers.
pub fn validate(cfg: &Config, text: &str, registrations: &[Registration]) -> Report {
    let source = Source::new(text);
    let mut report = Report::default();
    let mut err = |path: &[&str], message: String| {
        report.errors.push(Diagnostic {
            key: dotted(path),
            line: source.line_of(path),
            message,
        });
    };
    if cfg.version != 1 {
        err(
            &["version"],
            format!("unsupported config version {}: only 1 is supported", cfg.version),
        );
    }
    for (key, dir) in [("root", &cfg.root), ("state", &cfg.state)] {
        if !dir.is_absolute() {
            err(&[key], format!("{} must be an absolute path", dir.display()));
        } else if dir.parent().is_none() {
            err(&[key], "must not be the file system root".into());
        }
    }
    if cfg.root == cfg.state {
        err(&["state"], "state must differ from root".into());
    }
    if let Err(e) = socket::check_path(&cfg.grpc.address) {
        err(&["grpc", "address"], e.to_string());
    }
    // A derived ttrpc address only fails when the gRPC one did: say it once.
    let derived = cfg.ttrpc.address.as_os_str().is_empty();
    if let Err(e) = socket::check_path(&cfg.ttrpc_address())
        && !(derived && socket::check_path(&cfg.grpc.address).is_err())
    {
        err(&["ttrpc", "address"], e.to_string());
    }
    if cfg.ttrpc_address() == cfg.grpc.address {
        err(&["ttrpc", "address"], "must differ from grpc.address".into());
    }
    let max = crate::server::MAX_MESSAGE_SIZE as i64;
    for key in ["max_recv_message_size", "max_send_message_size"] {
        let v = if key == "max_recv_message_size" {
            cfg.grpc.max_recv_message_size
        } else {
            cfg.grpc.max_send_message_size
        };
        if v <= 0 || v > max {
            err(
                &["grpc", key],
                format!("{v} is out of range: must be between 1 and {max} (16 MiB)"),
            );
        }
    }
    if let Some(addr) = cfg.metrics_address()
        && let Err(e) = addr.parse::<std::net::SocketAddr>()
    {
        err(
            &["metrics", "address"],
            format!("{addr:?} is not an ip:port address ({e}); use \"\" to disable"),
        );
    }
    if let Some(file) = &cfg.metrics.bearer_token_file
        && !file.is_absolute()
    {
        err(
            &["metrics", "bearer_token_file"],
            format!("{} must be an absolute path", file.display()),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&cfg.debug.level) {
        err(
            &["debug", "level"],
            format!("invalid log level {:?}: {e}", cfg.debug.level),
        );
    }
    for key in ["grace", "hook_timeout"] {
        let d = if key == "grace" {
            cfg.shutdown.grace.0
        } else {
            cfg.shutdown.hook_timeout.0
        };
        if d.is_zero() {
            err(&["shutdown", key], "must be greater than zero".into());
        }
    }
    if !cfg.tracing.endpoint.is_empty()
        && let Err(e) = check_tracing_endpoint(&cfg.tracing.endpoint)
    {
        err(&["tracing", "endpoint"], format!("{e}; use \"\" to disable"));
    }
    let ratio = cfg.tracing.sampling_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        err(
            &["tracing", "sampling_ratio"],
            format!("{ratio} is out of range: must be between 0.0 and 1.0"),
        );
    }
    if cfg.tracing.service_name.trim().is_empty() {
        err(&["tracing", "service_name"], "must not be empty".into());
    }

    let known: BTreeMap<String, Option<PluginConfig>> = registrations
        .iter()
        .map(|r| (r.plugin_id().to_string(), r.config))
        .collect();
    for (i, name) in cfg.required_plugins.iter().enumerate() {
        if !known.contains_key(name) {
            err(
                &["required_plugins"],
                format!("{name:?} (item {i}) is not a registered plugin"),
            );
        }
        if cfg.disabled_plugins.contains(name) {
            err(
                &["required_plugins"],
                format!("{name:?} is both required and disabled"),
            );
        }
    }
    for name in &cfg.plugins.keys().cloned().collect::<Vec<_>>() {
        let table = &cfg.plugins[name];
        match known.get(name) {
            None => err(&["plugins", name], "no registered plugin has this name".into()),
            Some(None) => err(&["plugins", name], "this plugin takes no configuration".into()),
            Some(Some(pc)) => {
                if let Err(whole) = (pc.check)(table.clone()) {
                    // Find the offending keys: each key checked alone, so the error lands on
                    // the key's own line from the document's spans.
                    let mut found = false;
                    for (k, v) in table {
                        let mut single = toml::Table::new();
                        single.insert(k.clone(), v.clone());
                        if let Err(e) = (pc.check)(single) {
                            found = true;
                            err(&["plugins", name, k], e.message().to_owned());
                        }
                    }
                    if !found {
                        err(&["plugins", name], whole.message().to_owned());
                    }
                }
            }
        }
    }
    let mut warn = |path: &[&str], message: String| {
        report.warnings.push(Diagnostic {
            key: dotted(path),
            line: source.line_of(path),
            message,
        });
    };
    for name in &cfg.disabled_plugins {
        if !known.contains_key(name) {
            warn(
                &["disabled_plugins"],
                format!("{name:?} is not a registered plugin"),
            );
        }
    }
    if let Some(file) = &cfg.metrics.bearer_token_file
        && file.is_absolute()
        && !file.exists()
    {
        warn(
            &["metrics", "bearer_token_file"],
            format!(
                "{} does not exist (the daemon will refuse to start)",
                file.display()
            ),
        );
    }
    if let Some(addr) = cfg
        .metrics_address()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
        && !addr.ip().is_loopback()
        && cfg.metrics.bearer_token_file.is_none()
    {
        warn(
            &["metrics", "address"],
            format!(
                "{addr} is not a loopback address and no bearer_token_file is set: metrics are unauthenticated"
            ),
        );
    }
    report
}

/// The plugins' meaning checks ([`crate::plugin::Registration::validate`]) of the tables
/// that parsed: one error per failing table, on the key it names. Not part of [`load`]: at
/// start such an error fails that plugin only (as containerd does, shown by `ctr plugins
/// ls`); `taskd config check` and the SIGHUP reload ([`check`]) treat it as an error.
pub fn plugin_meaning_errors(cfg: &Config, text: &str, registrations: &[Registration]) -> Vec<Diagnostic> {
    let source = Source::new(text);
    let mut errors = Vec::new();
    for r in registrations {
        let id = r.plugin_id().to_string();
        let (Some(pc), Some(table)) = (r.config, cfg.plugins.get(&id)) else {
            continue;
        };
        if (pc.check)(table.clone()).is_err() {
            continue; // reported by validate
        }
        if let Some(validate) = pc.validate
            && let Err((key, reason)) = validate(table.clone())
        {
            let mut path = vec!["plugins", id.as_str()];
            path.extend(key.split('.').filter(|s| !s.is_empty()));
            errors.push(Diagnostic {
                key: dotted(&path),
                line: source.line_of(&path),
                message: reason,
            });
        }
    }
    errors
}

/// [`load`] plus the plugins' meaning checks: what `taskd config check` and a reload accept.
pub fn check(text: &str, overrides: &Overrides, registrations: &[Registration]) -> (Option<Config>, Report) {
    let (cfg, mut report) = load(text, overrides, registrations);
    if let Some(c) = &cfg {
        report
            .errors
            .extend(plugin_meaning_errors(c, text, registrations));
    }
    (cfg, report)
}

/// Parses and validates one file's text with command-line overrides applied.
pub fn load(text: &str, overrides: &Overrides, registrations: &[Registration]) -> (Option<Config>, Report) {
    match parse(text) {
        Err(report) => (None, report),
        Ok(mut cfg) => {
            overrides.apply(&mut cfg);
            let report = validate(&cfg, text, registrations);
            (Some(cfg), report)
        }
    }
}

/// The complete default config: [`DEFAULT_TOML`] plus every registered plugin's default
/// table under `[plugins."<type uri>.<id>"]`.
pub fn default_toml(registrations: &[Registration]) -> String {
    let mut out = DEFAULT_TOML.to_owned();
    let mut plugins = toml::Table::new();
    for r in registrations {
        if let Some(pc) = r.config {
            plugins.insert(r.plugin_id().to_string(), toml::Value::Table((pc.default)()));
        }
    }
    if !plugins.is_empty() {
        let mut doc = toml::Table::new();
        doc.insert("plugins".into(), toml::Value::Table(plugins));
        out.push_str("\n# Per-plugin configuration, with every plugin's defaults.\n");
        match toml::to_string(&doc) {
            Ok(s) => out.push_str(&s),
            Err(e) => out.push_str(&format!("# could not render plugin defaults: {e}\n")),
        }
    }
    out
}

/// Reads a config file, naming the path on failure.
pub fn read(path: &Path) -> Result<String, std::io::Error> {
    std::fs::read_to_string(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("read config {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::{Instance, PluginType};

    #[derive(serde::Serialize, serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct DemoCfg {
        interval: u32,
        name: String,
        nested: Nested,
    }

    #[derive(serde::Serialize, serde::Deserialize, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Nested {
        on: bool,
    }

    fn regs() -> Vec<Registration> {
        vec![
            Registration::new(PluginType::Internal, "demo", |_cx| async { Ok(Instance::new()) })
                .config::<DemoCfg>()
                .validate(|t| match t.get("interval").and_then(toml::Value::as_integer) {
                    Some(i) if i > 1000 => Err(("interval".into(), format!("{i} is over 1000"))),
                    _ => Ok(()),
                }),
            Registration::new(PluginType::Grpc, "plain", |_cx| async { Ok(Instance::new()) }),
        ]
    }

    fn check(text: &str) -> Report {
        let (_, r) = super::check(text, &Overrides::default(), &regs());
        r
    }

    #[test]
    fn embedded_defaults_parse_to_default_config() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
        assert_eq!(parse("").unwrap(), Config::default());
        assert!(validate(&Config::default(), DEFAULT_TOML, &regs()).is_ok());
    }

    #[test]
    fn default_toml_includes_plugin_tables_and_checks_clean() {
        let text = default_toml(&regs());
        assert!(
            text.contains("[plugins.\"io.containerd.internal.v1.demo\"]"),
            "{text}"
        );
        assert!(
            text.contains("[plugins.\"io.containerd.internal.v1.demo\".nested]"),
            "{text}"
        );
        let r = check(&text);
        assert_eq!(r, Report::default());
    }

    #[test]
    fn ttrpc_address_defaults_next_to_grpc() {
        let c = Config::default();
        assert_eq!(c.ttrpc_address(), PathBuf::from("/run/taskd/taskd.sock.ttrpc"));
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let r = check("version = 1\n\nbogus = 3\n");
        assert_eq!(r.errors.len(), 1, "{r:?}");
        let d = &r.errors[0];
        assert_eq!(d.line, Some(3), "{d}");
        assert!(d.to_string().contains("bogus"), "{d}");
    }

    #[test]
    fn unknown_key_in_section_names_key_and_line() {
        let r = check("version = 1\n[grpc]\naddress = \"/run/x.sock\"\nadress2 = 1\n");
        let d = &r.errors[0];
        assert_eq!(d.line, Some(4), "{d}");
        assert_eq!(d.key, "grpc.adress2", "{d}");
    }

    #[test]
    fn bad_value_names_key_and_line() {
        let r = check("[shutdown]\ngrace = \"ten seconds\"\n");
        let d = &r.errors[0];
        assert_eq!((d.key.as_str(), d.line), ("shutdown.grace", Some(2)), "{d}");
        let r = check("[debug]\nformat = \"xml\"\n");
        assert_eq!(
            (r.errors[0].key.as_str(), r.errors[0].line),
            ("debug.format", Some(2))
        );
        let r = check("[grpc]\nmax_recv_message_size = \"big\"\n");
        assert_eq!(r.errors[0].key, "grpc.max_recv_message_size");
    }

    #[test]
    fn every_bad_key_is_reported_not_just_the_first() {
        let r = check(
            "version = 1\nbogus = 1\n[grpc]\naddres = \"/x\"\nmax_send_message_size = \"big\"\n[debug]\nformat = \"xml\"\n[nope]\na = 1\nb = 2\n",
        );
        let found: Vec<_> = r.errors.iter().map(|d| (d.key.as_str(), d.line)).collect();
        assert_eq!(
            found,
            vec![
                ("bogus", Some(2)),
                ("grpc.addres", Some(4)),
                ("grpc.max_send_message_size", Some(5)),
                ("debug.format", Some(7)),
                ("nope", Some(8)),
            ],
            "{r:?}"
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let r = check("version = 1\n[grpc\n");
        assert_eq!(r.errors[0].line, Some(2), "{:?}", r.errors);
    }

    #[test]
    fn semantic_errors_name_key_and_line() {
        let long = "x".repeat(120);
        let r = check(&format!(
            "version = 2\nroot = \"relative\"\n[grpc]\naddress = \"/tmp/{long}\"\n[metrics]\naddress = \"nope\"\n[debug]\nlevel = \"[[[\"\n[shutdown]\ngrace = \"0s\"\n"
        ));
        let keys: Vec<_> = r.errors.iter().map(|d| (d.key.as_str(), d.line)).collect();
        for expected in [
            ("version", Some(1)),
            ("root", Some(2)),
            ("grpc.address", Some(4)),
            ("metrics.address", Some(6)),
            ("debug.level", Some(8)),
            ("shutdown.grace", Some(10)),
        ] {
            assert!(keys.contains(&expected), "{expected:?} not in {keys:?}");
        }
        assert!(r.errors.iter().any(|d| d.message.contains("at most 107 bytes")));
    }

    #[test]
    fn overrides_are_validated_without_a_line() {
        let long = PathBuf::from(format!("/tmp/{}", "y".repeat(120)));
        let o = Overrides {
            address: Some(long),
            ..Default::default()
        };
        let (_, r) = load("", &o, &regs());
        assert_eq!(r.errors.len(), 1, "{r:?}"); // the derived ttrpc address is not repeated
        assert_eq!(r.errors[0].line, None);
        assert_eq!(
            r.errors[0].located("f"),
            format!("f: grpc.address: {}", r.errors[0].message)
        );
    }

    #[test]
    fn plugin_tables_are_checked_by_their_plugin() {
        let r = check(
            "version = 1\n[plugins.\"io.containerd.internal.v1.demo\"]\ninterval = 5\nnmae = \"x\"\n[plugins.\"io.containerd.internal.v1.demo\".nested]\non = \"yes\"\n",
        );
        let found: Vec<_> = r.errors.iter().map(|d| (d.key.as_str(), d.line)).collect();
        assert!(
            found.contains(&("plugins.\"io.containerd.internal.v1.demo\".nmae", Some(4))),
            "{found:?}"
        );
        assert!(
            found.contains(&("plugins.\"io.containerd.internal.v1.demo\".nested", Some(5))),
            "{found:?}"
        );
        assert!(r.errors.iter().any(|d| d.message.contains("nmae")), "{r:?}");
    }

    #[test]
    fn plugin_meaning_checks_name_key_and_line() {
        let r = check(
            "version = 1\n[plugins.\"io.containerd.internal.v1.demo\"]\nname = \"x\"\ninterval = 5000\n",
        );
        assert_eq!(r.errors.len(), 1, "{r:?}");
        let d = &r.errors[0];
        assert_eq!(
            (d.key.as_str(), d.line),
            ("plugins.\"io.containerd.internal.v1.demo\".interval", Some(4))
        );
        assert!(d.message.contains("over 1000"), "{d}");
    }

    #[test]
    fn unknown_and_unconfigurable_plugin_tables_are_errors() {
        let r = check(
            "[plugins.\"io.containerd.internal.v1.nope\"]\na = 1\n[plugins.\"io.containerd.grpc.v1.plain\"]\nb = 2\n",
        );
        assert_eq!(r.errors.len(), 2, "{r:?}");
        assert_eq!(r.errors[0].line, Some(3));
        assert_eq!(r.errors[1].line, Some(1));
    }

    #[test]
    fn plugin_lists_are_checked() {
        let r = check(
            "disabled_plugins = [\"io.containerd.x.v1.gone\"]\nrequired_plugins = [\"io.containerd.grpc.v1.plain\", \"io.containerd.y.v1.none\"]\n",
        );
        assert_eq!(r.warnings.len(), 1, "{r:?}");
        assert_eq!(r.warnings[0].line, Some(1));
        assert_eq!(r.errors.len(), 1, "{r:?}");
        assert_eq!(r.errors[0].line, Some(2));
        let r = check(
            "disabled_plugins = [\"io.containerd.grpc.v1.plain\"]\nrequired_plugins = [\"io.containerd.grpc.v1.plain\"]\n",
        );
        assert!(
            r.errors[0].message.contains("both required and disabled"),
            "{r:?}"
        );
    }

    #[test]
    fn grpc_message_sizes_become_the_limits_without_warning() {
        let text = "[grpc]\nmax_recv_message_size = 65536\nmax_send_message_size = 1024\n";
        assert_eq!(check(text), Report::default());
        let cfg = parse(text).unwrap();
        assert_eq!(
            cfg.grpc_limits(),
            crate::server::GrpcLimits {
                max_recv: 65536,
                max_send: 1024
            }
        );
        assert_eq!(
            Config::default().grpc_limits(),
            crate::server::GrpcLimits::default()
        );
    }

    #[test]
    fn non_loopback_metrics_without_token_warns() {
        let r = check("[metrics]\naddress = \"0.0.0.0:1338\"\n");
        assert!(r.is_ok());
        assert_eq!(r.warnings[0].key, "metrics.address");
        let r = check("[metrics]\naddress = \"\"\n");
        assert_eq!(r, Report::default());
    }

    #[test]
    fn tracing_is_off_by_default_and_checked() {
        assert_eq!(Config::default().tracing.endpoint, "");
        let text = "[tracing]\nendpoint = \"http://127.0.0.1:4317\"\nsampling_ratio = 0.25\nservice_name = \"node-a\"\n";
        assert_eq!(check(text), Report::default());
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.tracing.sampling_ratio, 0.25);
        let r =
            check("[tracing]\nendpoint = \"https://c:4317\"\nsampling_ratio = 2.0\nservice_name = \" \"\n");
        let found: Vec<_> = r.errors.iter().map(|d| (d.key.as_str(), d.line)).collect();
        assert_eq!(
            found,
            vec![
                ("tracing.endpoint", Some(2)),
                ("tracing.sampling_ratio", Some(3)),
                ("tracing.service_name", Some(4)),
            ],
            "{r:?}"
        );
        assert!(r.errors[0].message.contains("no TLS"), "{r:?}");
        let r = check("[tracing]\nendpont = \"x\"\n");
        assert_eq!(r.errors[0].key, "tracing.endpont", "{r:?}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(HumanDuration::parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(HumanDuration::parse("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(HumanDuration::parse("4h"), Ok(Duration::from_secs(4 * 3600)));
        assert_eq!(HumanDuration::parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(HumanDuration::parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(HumanDuration::parse(" 10s "), Ok(Duration::from_secs(10)));
        assert!(HumanDuration::parse("5").is_err());
        assert!(HumanDuration::parse("s").is_err());
        assert!(HumanDuration::parse("").is_err());
        assert!(HumanDuration::parse("-1s").is_err());
    }

    #[test]
    fn durations_serialize_back_to_what_parses() {
        for text in ["500ms", "1500ms", "10s", "0s", "2m", "90s", "1h"] {
            let d = HumanDuration(HumanDuration::parse(text).unwrap());
            let v = toml::Value::try_from(d).unwrap();
            assert_eq!(v.as_str(), Some(text));
        }
    }
}
