//! The CRI plugin's config table, `[plugins."io.containerd.cri.v1.cri"]`.
//!
//! ```text
//! [plugins."io.containerd.cri.v1.cri"]
//! ├── sandbox_image = "registry.k8s.io/pause:3.10"   image of the pods' pause containers
//! ├── drop_infra_container = true                      no pause container unless the pod shares
//! │                                                    its PID namespace (IPC/UTS pinned instead)
//! ├── cgroup_driver = "cgroupfs" | "systemd"          reported by RuntimeConfig, used for cgroup parents
//! ├── default_runtime = "runc"                         handler used when a pod names none ("");
//! │                                                    the built-in `runc` runs io.containerd.taskd.v2
//! ├── max_container_log_line_size = 16384              longer lines are split into P chunks
//! ├── log_partial_flush_ms = 1000                      a partial line idle this long is written as P
//! ├── max_exec_output_bytes = 16777216                 ExecSync output cap, per stream
//! ├── drain_exec_sync_io_timeout = "1s"                ExecSync reads output this long after the exit
//!                                                      (a background child holding it cannot hang it)
//! ├── stream_server_address = "127.0.0.1"              streaming server (Exec/Attach/PortForward URLs)
//! ├── stream_server_port = "0"                         "0": a free port, chosen at start
//! ├── stream_idle_timeout = "4h"                       a session without traffic this long is closed
//! ├── stream_max_sessions = 128                        streaming sessions at once (more: HTTP 429)
//! ├── enable_tls_streaming = false                     https URLs
//! ├── [x509_key_pair_streaming]                        PEM pair; both empty: self-signed at start
//! │   ├── tls_cert_file = ""
//! │   └── tls_key_file = ""
//! ├── [cni]
//! │   ├── conf_dir = "/etc/cni/net.d"                  *.conflist / *.conf / *.json, lexical order
//! │   ├── bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]  searched in order for plugin binaries
//! │   ├── max_conf_num = 1                             how many networks of conf_dir a pod joins
//! │   └── plugin_timeout_ms = 60000                    one plugin exec (ADD/DEL/CHECK)
//! └── [runtimes.<handler>]                             RuntimeClass handler → runtime
//!     ├── runtime_type = "io.containerd.taskd.v2"      shim runtime name (or the stock
//!     │                                                "io.containerd.runc.v2")
//!     ├── runtime_path = ""                            absolute shim binary path (optional)
//!     ├── options = { ... }                            runc options as containerd names them (BinaryName,
//!     │                                                Root, SystemdCgroup, NoPivotRoot, NoNewKeyring,
//!     │                                                ShimCgroup, IoUid, IoGid, CriuImagePath, CriuWorkPath),
//!     │                                                sent to the shim with each container
//!     ├── pod_annotations = []                         glob patterns of pod annotations passed into the
//!     │                                                sandbox's and containers' OCI specs (none by default)
//!     └── container_annotations = []                   glob patterns of container annotations passed into
//!                                                      the container's OCI spec (none by default)
//! ```
//!
//! A `[runtimes.<name>]` table adds a handler; the built-in `runc` stays (merged, as
//! containerd merges). A runc handler's `SystemdCgroup` must agree with `cgroup_driver`
//! (`taskd config check` names both keys when they differ); unset, it follows the driver. `serde` checks the shape (unknown keys are errors, with their line); [`CriConfig::validate`]
//! checks the meaning and runs in the plugin's init.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::errdefs::{ErrorKind, Kind};

/// The handler name runc is registered under by default.
pub const DEFAULT_HANDLER: &str = "runc";

/// How cgroups are named and delegated (kubelet must use the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CgroupDriver {
    #[default]
    Cgroupfs,
    Systemd,
}

/// The plugin config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriConfig {
    pub sandbox_image: String,
    /// Pods that do not share one PID namespace get no pause container: their IPC and UTS
    /// namespaces are pinned by taskd (as the network namespace always is), saving a shim
    /// start and two runc calls per pod (CRI-O's `drop_infra_ctr`).
    pub drop_infra_container: bool,
    pub cgroup_driver: CgroupDriver,
    pub default_runtime: String,
    pub max_container_log_line_size: usize,
    pub log_partial_flush_ms: u64,
    pub max_exec_output_bytes: usize,
    /// How long ExecSync keeps reading output after its process exited (a child it left
    /// running may hold the pipes open forever); containerd's key, but bounded by default.
    pub drain_exec_sync_io_timeout: crate::config::HumanDuration,
    /// The streaming server's IP address (containerd's key).
    pub stream_server_address: String,
    /// Its port, a string as in containerd ("0" = a free port).
    pub stream_server_port: String,
    pub stream_idle_timeout: crate::config::HumanDuration,
    /// Streaming sessions (exec, attach, port-forward connections) at once.
    pub stream_max_sessions: usize,
    pub enable_tls_streaming: bool,
    pub x509_key_pair_streaming: X509KeyPair,
    pub cni: CniConfig,
    pub runtimes: BTreeMap<String, RuntimeHandler>,
}

impl Default for CriConfig {
    fn default() -> Self {
        let mut runtimes = BTreeMap::new();
        runtimes.insert(DEFAULT_HANDLER.to_owned(), RuntimeHandler::default());
        CriConfig {
            sandbox_image: "registry.k8s.io/pause:3.10".to_owned(),
            drop_infra_container: true,
            cgroup_driver: CgroupDriver::Cgroupfs,
            default_runtime: DEFAULT_HANDLER.to_owned(),
            max_container_log_line_size: 16 * 1024,
            log_partial_flush_ms: 1000,
            max_exec_output_bytes: 16 << 20,
            drain_exec_sync_io_timeout: crate::config::HumanDuration(std::time::Duration::from_secs(1)),
            stream_server_address: "127.0.0.1".to_owned(),
            stream_server_port: "0".to_owned(),
            stream_idle_timeout: crate::config::HumanDuration(std::time::Duration::from_secs(4 * 3600)),
            stream_max_sessions: 128,
            enable_tls_streaming: false,
            x509_key_pair_streaming: X509KeyPair::default(),
            cni: CniConfig::default(),
            runtimes,
        }
    }
}

/// The streaming server's certificate and key (PEM files).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct X509KeyPair {
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

/// Where CNI configs and plugins live.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CniConfig {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub max_conf_num: usize,
    pub plugin_timeout_ms: u64,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            // /usr/lib/cni: where Debian's containernetworking-plugins installs them.
            bin_dirs: vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")],
            max_conf_num: 1,
            plugin_timeout_ms: 60_000,
        }
    }
}

/// One RuntimeClass handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeHandler {
    pub runtime_type: String,
    pub runtime_path: String,
    pub options: toml::Table,
    /// Pod annotations that reach the OCI specs of this handler's sandboxes and containers
    /// (glob patterns, as containerd's `pod_annotations`); none by default, so that a pod
    /// cannot hand the runtime `io.containerd.runc.v2.group` or `org.systemd.property.*`.
    pub pod_annotations: Vec<String>,
    /// Container annotations that reach the container's OCI spec (containerd's
    /// `container_annotations`).
    pub container_annotations: Vec<String>,
}

impl Default for RuntimeHandler {
    fn default() -> Self {
        RuntimeHandler {
            runtime_type: DEFAULT_RUNTIME_TYPE.to_owned(),
            runtime_path: String::new(),
            options: toml::Table::new(),
            pod_annotations: Vec::new(),
            container_annotations: Vec::new(),
        }
    }
}

/// The `Any` type URL runc shims decode their runtime options with.
pub const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

/// The built-in `runc` handler's runtime: taskd's own shim (`containerd-shim-taskd-v2`, the
/// workspace's `shim/` crate), which drives runc as the stock runc shim does.
pub const DEFAULT_RUNTIME_TYPE: &str = "io.containerd.taskd.v2";

/// Whether a runtime type is served by a runc shim (whose options taskd can encode): the
/// stock runc shims and taskd's own.
pub fn is_runc(runtime_type: &str) -> bool {
    matches!(
        runtime_type,
        "io.containerd.runc.v2" | "io.containerd.runc.v1" | DEFAULT_RUNTIME_TYPE
    )
}

impl RuntimeHandler {
    /// The handler's `options` as the runc shim reads them (`containerd.runc.v1.Options`,
    /// keys as containerd's TOML names them: `BinaryName`, `SystemdCgroup`, …); None when
    /// there are none. An unknown key, a value of the wrong type, or options for a runtime
    /// that is not runc are errors naming the key.
    pub fn runtime_options(&self, name: &str) -> Result<Option<prost_types::Any>, ConfigError> {
        use taskd_proto::containerd::types::runc::options::Options;
        if self.options.is_empty() {
            return Ok(None);
        }
        let field = |k: &str| format!("runtimes.{name}.options.{k}");
        if !is_runc(&self.runtime_type) {
            return Err(invalid(
                format!("runtimes.{name}.options"),
                format!(
                    "options are understood for the runc runtimes only, not {:?}",
                    self.runtime_type
                ),
            ));
        }
        let mut o = Options::default();
        for (k, v) in &self.options {
            let string = || {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(field(k), "must be a string"))
            };
            let boolean = || {
                v.as_bool()
                    .ok_or_else(|| invalid(field(k), "must be true or false"))
            };
            let id = || {
                v.as_integer()
                    .and_then(|i| u32::try_from(i).ok())
                    .ok_or_else(|| invalid(field(k), "must be a uid/gid number"))
            };
            match k.as_str() {
                "NoPivotRoot" => o.no_pivot_root = boolean()?,
                "NoNewKeyring" => o.no_new_keyring = boolean()?,
                "ShimCgroup" => o.shim_cgroup = string()?,
                "IoUid" => o.io_uid = id()?,
                "IoGid" => o.io_gid = id()?,
                "BinaryName" => o.binary_name = string()?,
                "Root" => o.root = string()?,
                "SystemdCgroup" => o.systemd_cgroup = boolean()?,
                "CriuImagePath" => o.criu_image_path = string()?,
                "CriuWorkPath" => o.criu_work_path = string()?,
                other => {
                    return Err(invalid(
                        field(other),
                        "unknown runc option (BinaryName, Root, SystemdCgroup, NoPivotRoot, \
                         NoNewKeyring, ShimCgroup, IoUid, IoGid, CriuImagePath, CriuWorkPath)",
                    ));
                }
            }
        }
        // (A bare BinaryName is looked up on PATH by the shim, as containerd allows.)
        if !o.root.is_empty() && !o.root.starts_with('/') {
            return Err(invalid(field("Root"), "must be an absolute path"));
        }
        Ok(Some(prost_types::Any {
            type_url: RUNC_OPTIONS_TYPE_URL.to_owned(),
            value: prost::Message::encode_to_vec(&o),
        }))
    }
}

/// A config value that parses but makes no sense.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cri config: {field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ErrorKind for ConfigError {
    fn kind(&self) -> Kind {
        match self {
            ConfigError::Invalid { .. } => Kind::InvalidArgument,
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

impl CriConfig {
    /// The streaming server's address (`stream_server_port` "0" = a free port), or why the
    /// two keys do not make one.
    pub fn stream_address(&self) -> Result<std::net::SocketAddr, &'static str> {
        let ip: std::net::IpAddr = self
            .stream_server_address
            .parse()
            .map_err(|_| "the address must be an IP address")?;
        let port: u16 = self
            .stream_server_port
            .parse()
            .map_err(|_| "the port must be a number from 0 to 65535")?;
        Ok(std::net::SocketAddr::new(ip, port))
    }

    /// Adds the built-in handlers a config table did not name: a `[runtimes.kata]` table
    /// adds kata next to runc instead of replacing the map (containerd merges the same way).
    /// A runc handler that does not set `SystemdCgroup` gets `SystemdCgroup = true` under
    /// `cgroup_driver = "systemd"` (runc must manage the cgroups the way the driver names them).
    pub fn with_default_runtimes(mut self) -> CriConfig {
        for (name, h) in CriConfig::default().runtimes {
            self.runtimes.entry(name).or_insert(h);
        }
        if self.cgroup_driver == CgroupDriver::Systemd {
            for h in self.runtimes.values_mut() {
                if is_runc(&h.runtime_type) && !h.options.contains_key("SystemdCgroup") {
                    h.options
                        .insert("SystemdCgroup".to_owned(), toml::Value::Boolean(true));
                }
            }
        }
        self
    }

    /// The plugin table's meaning check for `taskd config check` and reloads: what the
    /// plugin's init checks, as `(key, reason)`.
    pub fn check_table(table: toml::Table) -> Result<(), (String, String)> {
        let c: CriConfig = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| (String::new(), e.message().to_owned()))?;
        c.with_default_runtimes().validate().map_err(|e| match e {
            ConfigError::Invalid { field, reason } => (field, reason),
        })
    }

    /// Checks what serde cannot: paths absolute, the default handler exists, sizes sane.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.sandbox_image.trim().is_empty() {
            return Err(invalid("sandbox_image", "must not be empty"));
        }
        if !self.runtimes.contains_key(&self.default_runtime) {
            return Err(invalid(
                "default_runtime",
                format!(
                    "{:?} is not a key of [runtimes] (have: {})",
                    self.default_runtime,
                    self.runtimes.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (name, h) in &self.runtimes {
            if name.is_empty() {
                return Err(invalid("runtimes", "a handler name must not be empty"));
            }
            if h.runtime_type.is_empty() {
                return Err(invalid(
                    format!("runtimes.{name}.runtime_type"),
                    "must not be empty",
                ));
            }
            if !h.runtime_path.is_empty() && !h.runtime_path.starts_with('/') {
                return Err(invalid(
                    format!("runtimes.{name}.runtime_path"),
                    format!("{:?} must be an absolute path", h.runtime_path),
                ));
            }
            h.runtime_options(name)?;
            if let Some(systemd) = h.options.get("SystemdCgroup").and_then(toml::Value::as_bool)
                && systemd != (self.cgroup_driver == CgroupDriver::Systemd)
            {
                return Err(invalid(
                    format!("runtimes.{name}.options.SystemdCgroup"),
                    format!(
                        "SystemdCgroup = {systemd} disagrees with cgroup_driver = \"{}\": runc must \
                         manage cgroups as the driver names them (set both to systemd, or both to cgroupfs)",
                        format!("{:?}", self.cgroup_driver).to_lowercase()
                    ),
                ));
            }
            for (key, patterns) in [
                ("pod_annotations", &h.pod_annotations),
                ("container_annotations", &h.container_annotations),
            ] {
                for p in patterns {
                    glob::Pattern::new(p).map_err(|e| {
                        invalid(
                            format!("runtimes.{name}.{key}"),
                            format!("{p:?} is not a glob pattern: {e}"),
                        )
                    })?;
                }
            }
        }
        if self.max_container_log_line_size < 64 {
            return Err(invalid(
                "max_container_log_line_size",
                "must be at least 64 bytes",
            ));
        }
        if self.max_exec_output_bytes == 0 {
            return Err(invalid("max_exec_output_bytes", "must be positive"));
        }
        if let Err(reason) = self.stream_address() {
            return Err(invalid(
                "stream_server_address/stream_server_port",
                format!(
                    "{:?} / {:?}: {reason}",
                    self.stream_server_address, self.stream_server_port
                ),
            ));
        }
        if self.stream_idle_timeout.0.is_zero() {
            return Err(invalid("stream_idle_timeout", "must be positive"));
        }
        if self.stream_max_sessions == 0 {
            return Err(invalid("stream_max_sessions", "must be at least 1"));
        }
        let pair = &self.x509_key_pair_streaming;
        if pair.tls_cert_file.is_empty() != pair.tls_key_file.is_empty() {
            return Err(invalid(
                "x509_key_pair_streaming",
                "tls_cert_file and tls_key_file go together (or neither, for a self-signed pair)",
            ));
        }
        if !self.cni.conf_dir.is_absolute() {
            return Err(invalid("cni.conf_dir", "must be an absolute path"));
        }
        if self.cni.bin_dirs.is_empty() {
            return Err(invalid("cni.bin_dirs", "must name at least one directory"));
        }
        if let Some(d) = self.cni.bin_dirs.iter().find(|d| !d.is_absolute()) {
            return Err(invalid(
                "cni.bin_dirs",
                format!("{} must be an absolute path", d.display()),
            ));
        }
        if self.cni.max_conf_num == 0 {
            return Err(invalid("cni.max_conf_num", "must be at least 1"));
        }
        if self.cni.plugin_timeout_ms == 0 {
            return Err(invalid("cni.plugin_timeout_ms", "must be positive"));
        }
        Ok(())
    }

    /// The handler for a pod's `runtime_handler` ("" = the default one).
    pub fn handler(&self, name: &str) -> Option<(&str, &RuntimeHandler)> {
        let key = if name.is_empty() {
            self.default_runtime.as_str()
        } else {
            name
        };
        self.runtimes.get_key_value(key).map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let c = CriConfig::default();
        c.validate().unwrap();
        let t = toml::Table::try_from(c.clone()).unwrap();
        let back: CriConfig = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(back, c);
        assert_eq!(c.cni.bin_dirs[1], PathBuf::from("/usr/lib/cni"));
    }

    #[test]
    fn unknown_keys_and_bad_driver_are_rejected() {
        assert!(toml::from_str::<CriConfig>("sandbox_imag = \"x\"").is_err());
        assert!(toml::from_str::<CriConfig>("cgroup_driver = \"cgroupv3\"").is_err());
        let c: CriConfig = toml::from_str("cgroup_driver = \"systemd\"").unwrap();
        assert_eq!(c.cgroup_driver, CgroupDriver::Systemd);
    }

    #[test]
    fn annotation_patterns_must_be_globs() {
        let c: CriConfig = toml::from_str("[runtimes.runc]\npod_annotations = [\"ok/*\", \"bad[\"]").unwrap();
        let e = c.with_default_runtimes().validate().unwrap_err().to_string();
        assert!(
            e.contains("runtimes.runc.pod_annotations") && e.contains("bad["),
            "{e}"
        );
        let c: CriConfig = toml::from_str("[runtimes.runc]\ncontainer_annotations = [\"io.x/*\"]").unwrap();
        c.with_default_runtimes().validate().unwrap();
    }

    #[test]
    fn validate_names_the_field() {
        let c: CriConfig = toml::from_str("default_runtime = \"kata\"").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("default_runtime") && e.contains("kata"), "{e}");

        let c: CriConfig = toml::from_str("[cni]\nconf_dir = \"rel/dir\"").unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("cni.conf_dir"));

        let c: CriConfig =
            toml::from_str("default_runtime = \"x\"\n[runtimes.x]\nruntime_path = \"shim\"").unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("runtimes.x.runtime_path")
        );
        assert!(!c.runtimes.contains_key("runc"));
        let c = c.with_default_runtimes();
        assert!(c.runtimes.contains_key("runc") && c.runtimes.contains_key("x"));
    }

    #[test]
    fn runc_options_are_encoded_and_bad_ones_named() {
        use taskd_proto::containerd::types::runc::options::Options;
        let c: CriConfig = toml::from_str(
            "cgroup_driver = \"systemd\"\n[runtimes.alt]\nruntime_type = \"io.containerd.runc.v2\"\n\
             [runtimes.alt.options]\nBinaryName = \"/usr/local/bin/runc-x\"\nSystemdCgroup = true\nIoUid = 1000\n",
        )
        .unwrap();
        let c = c.with_default_runtimes();
        c.validate().unwrap();
        let any = c.runtimes["alt"].runtime_options("alt").unwrap().unwrap();
        assert_eq!(any.type_url, RUNC_OPTIONS_TYPE_URL);
        let o = <Options as prost::Message>::decode(any.value.as_slice()).unwrap();
        assert_eq!(
            (o.binary_name.as_str(), o.systemd_cgroup, o.io_uid),
            ("/usr/local/bin/runc-x", true, 1000)
        );
        assert_eq!(
            CriConfig::default().runtimes["runc"]
                .runtime_options("runc")
                .unwrap(),
            None
        );
        for (table, want) in [
            ("Bogus = 1", "runtimes.alt.options.Bogus"),
            ("SystemdCgroup = \"yes\"", "runtimes.alt.options.SystemdCgroup"),
            ("IoUid = -1", "runtimes.alt.options.IoUid"),
            ("Root = \"rel\"", "runtimes.alt.options.Root"),
        ] {
            let c: CriConfig = toml::from_str(&format!("[runtimes.alt.options]\n{table}\n")).unwrap();
            let e = c.with_default_runtimes().validate().unwrap_err().to_string();
            assert!(e.contains(want), "{table}: {e}");
        }
        let c: CriConfig = toml::from_str(
            "[runtimes.kata]\nruntime_type = \"io.containerd.kata.v2\"\n[runtimes.kata.options]\nX = 1\n",
        )
        .unwrap();
        assert!(
            c.with_default_runtimes()
                .validate()
                .unwrap_err()
                .to_string()
                .contains("runc runtimes only")
        );
    }

    #[test]
    fn systemd_cgroup_must_agree_with_the_cgroup_driver() {
        // Differ: an error naming both keys.
        for text in [
            "[runtimes.runc.options]\nSystemdCgroup = true\n",
            "cgroup_driver = \"systemd\"\n[runtimes.runc.options]\nSystemdCgroup = false\n",
        ] {
            let t: toml::Table = text.parse().unwrap();
            let (key, reason) = CriConfig::check_table(t).unwrap_err();
            assert_eq!(key, "runtimes.runc.options.SystemdCgroup", "{text}");
            assert!(reason.contains("cgroup_driver"), "{reason}");
        }
        // Unset: follows the driver.
        let t: toml::Table = "cgroup_driver = \"systemd\"\n".parse().unwrap();
        CriConfig::check_table(t.clone()).unwrap();
        let c: CriConfig = toml::Value::Table(t).try_into().unwrap();
        let c = c.with_default_runtimes();
        assert_eq!(c.runtimes["runc"].options["SystemdCgroup"].as_bool(), Some(true));
        let t: toml::Table = "[runtimes.runc.options]\nSystemdCgroup = false\n"
            .parse()
            .unwrap();
        CriConfig::check_table(t).unwrap();
    }

    #[test]
    fn streaming_keys_parse_and_are_checked() {
        let c: CriConfig = toml::from_str(
            "stream_server_address = \"0.0.0.0\"\nstream_server_port = \"10010\"\nstream_idle_timeout = \"30m\"\n\
             enable_tls_streaming = true\n[x509_key_pair_streaming]\ntls_cert_file = \"/c\"\ntls_key_file = \"/k\"\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.stream_idle_timeout.0, std::time::Duration::from_secs(1800));
        assert_eq!(CriConfig::default().stream_idle_timeout.0.as_secs(), 4 * 3600);
        for (table, want) in [
            ("stream_server_port = \"99999\"", "stream_server_port"),
            ("stream_server_address = \"my-host\"", "stream_server_address"),
            ("stream_max_sessions = 0", "stream_max_sessions"),
            (
                "[x509_key_pair_streaming]\ntls_cert_file = \"/c\"",
                "x509_key_pair_streaming",
            ),
        ] {
            let c: CriConfig = toml::from_str(table).unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{table}: {e}");
        }
        assert!(toml::from_str::<CriConfig>("stream_idle_timeout = \"4\"").is_err());
    }

    #[test]
    fn handler_lookup_uses_default_for_empty_name() {
        let c = CriConfig::default();
        assert_eq!(c.handler("").unwrap().0, "runc");
        assert_eq!(
            c.handler("runc").unwrap().1.runtime_type,
            "io.containerd.taskd.v2"
        );
        assert!(is_runc("io.containerd.taskd.v2") && is_runc("io.containerd.runc.v2"));
        assert!(c.handler("kata").is_none());
    }
}
