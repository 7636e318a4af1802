//! Loading CNI network configs and running plugin chains (see the module docs above).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tracing::Instrument as _;

use crate::cri::config::CniConfig;
use crate::errdefs::{ErrorKind, Kind};

/// The interface name of the pod's network inside its namespace.
pub const POD_IFNAME: &str = "eth0";

/// Errors of the CNI layer; each names the file, plugin or network involved.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no network config found in {dir}")]
    NoConfig { dir: PathBuf },
    #[error("read cni config dir {dir}: {source}")]
    ReadDir { dir: PathBuf, source: std::io::Error },
    #[error("read cni config {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("invalid cni config {path}: {reason}")]
    InvalidConfig { path: PathBuf, reason: String },
    #[error("cni plugin {plugin:?} not found in {dirs}")]
    PluginNotFound { plugin: String, dirs: String },
    #[error("run cni plugin {binary} {command}: {source}")]
    Exec {
        binary: PathBuf,
        command: &'static str,
        source: std::io::Error,
    },
    #[error("cni plugin {plugin} {command} timed out after {timeout:?}")]
    Timeout {
        plugin: String,
        command: &'static str,
        timeout: Duration,
    },
    #[error("cni plugin {plugin} {command} failed (network {network}): code {code}: {msg}{details}")]
    Plugin {
        network: String,
        plugin: String,
        command: &'static str,
        code: i64,
        msg: String,
        details: String,
    },
    #[error("cni plugin {plugin} {command} returned an invalid result: {reason}")]
    BadResult {
        plugin: String,
        command: &'static str,
        reason: String,
    },
    #[error("cni result cache {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

impl ErrorKind for CniError {
    fn kind(&self) -> Kind {
        match self {
            CniError::NoConfig { .. } | CniError::PluginNotFound { .. } => Kind::FailedPrecondition,
            CniError::InvalidConfig { .. } => Kind::InvalidArgument,
            CniError::Timeout { .. } => Kind::DeadlineExceeded,
            CniError::ReadDir { .. }
            | CniError::ReadFile { .. }
            | CniError::Exec { .. }
            | CniError::Plugin { .. }
            | CniError::BadResult { .. }
            | CniError::Cache { .. } => Kind::Internal,
        }
    }
}

/// One network: a named chain of plugins (a `.conflist`, or a `.conf` wrapped in one).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkConfList {
    pub name: String,
    pub cni_version: String,
    pub disable_check: bool,
    pub plugins: Vec<Map<String, Value>>,
    pub source: PathBuf,
}

impl NetworkConfList {
    /// Parses a config file's bytes (`.conflist` → a list, otherwise a single plugin).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<NetworkConfList, CniError> {
        let invalid = |reason: String| CniError::InvalidConfig {
            path: path.to_owned(),
            reason,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(invalid("not a JSON object".into()));
        };
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| invalid("missing \"name\"".into()))?
            .to_owned();
        let cni_version = obj
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("0.1.0")
            .to_owned();
        let is_list = path.extension().is_some_and(|e| e == "conflist");
        let plugins = if is_list {
            let list = obj
                .get("plugins")
                .and_then(Value::as_array)
                .ok_or_else(|| invalid("missing \"plugins\" list".into()))?;
            if list.is_empty() {
                return Err(invalid("\"plugins\" is empty".into()));
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(m)
                        if m.get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.is_empty()) =>
                    {
                        Ok(m.clone())
                    }
                    _ => Err(invalid(format!("plugins[{i}]: missing \"type\""))),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            if obj.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
                return Err(invalid("missing \"type\"".into()));
            }
            vec![obj.clone()]
        };
        Ok(NetworkConfList {
            name,
            cni_version,
            disable_check: obj.get("disableCheck").and_then(Value::as_bool).unwrap_or(false),
            plugins,
            source: path.to_owned(),
        })
    }

    /// The config handed to one plugin of the chain.
    fn plugin_config(&self, i: usize, prev: Option<&Value>, runtime: &Map<String, Value>) -> Value {
        let mut conf = self.plugins[i].clone();
        conf.insert("name".into(), Value::String(self.name.clone()));
        conf.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        // runtimeConfig: only the capabilities the plugin declares.
        let caps = conf.get("capabilities").and_then(Value::as_object).cloned();
        let mut rc = Map::new();
        if let Some(caps) = caps {
            for (cap, on) in caps {
                if on.as_bool() == Some(true)
                    && let Some(v) = runtime.get(&cap)
                {
                    rc.insert(cap, v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
        Value::Object(conf)
    }
}

/// Who a network operation is for (becomes `CNI_CONTAINERID` and `CNI_ARGS`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodRef {
    pub sandbox_id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// A port mapping for the portmap plugin (`runtimeConfig.portMappings`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_port: i32,
    pub container_port: i32,
    pub protocol: String,
    pub host_ip: String,
}

/// What setup produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodNetwork {
    /// Addresses of the pod interface, without prefix length, primary first.
    pub ips: Vec<String>,
    /// The final result of each network, by network name.
    pub results: BTreeMap<String, Value>,
}

/// The CNI manager: configs from `conf_dir`, plugins from `bin_dirs`, results cached in
/// `cache_dir`.
#[derive(Debug, Clone)]
pub struct Cni {
    conf_dir: PathBuf,
    bin_dirs: Vec<PathBuf>,
    max_conf_num: usize,
    timeout: Duration,
    cache_dir: PathBuf,
    metrics: Option<crate::cri::metrics::CniMetrics>,
}

impl std::fmt::Debug for crate::cri::metrics::CniMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CniMetrics")
    }
}

impl Cni {
    pub fn new(cfg: &CniConfig, cache_dir: PathBuf) -> Cni {
        Cni {
            conf_dir: cfg.conf_dir.clone(),
            bin_dirs: cfg.bin_dirs.clone(),
            max_conf_num: cfg.max_conf_num,
            timeout: Duration::from_millis(cfg.plugin_timeout_ms),
            cache_dir,
            metrics: None,
        }
    }

    /// Records every plugin exec in `taskd_cri_cni_operation_*{plugin,command}`.
    pub fn with_metrics(mut self, metrics: crate::cri::metrics::CniMetrics) -> Cni {
        self.metrics = Some(metrics);
        self
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// The networks pods join: the first `max_conf_num` loadable configs of `conf_dir`, in
    /// lexical order of file name (`*.conflist`, `*.conf`, `*.json`). A missing dir or no
    /// config is [`CniError::NoConfig`]; a file that does not parse is an error naming it.
    pub fn load(&self) -> Result<Vec<NetworkConfList>, CniError> {
        let entries = match std::fs::read_dir(&self.conf_dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CniError::NoConfig {
                    dir: self.conf_dir.clone(),
                });
            }
            Err(source) => {
                return Err(CniError::ReadDir {
                    dir: self.conf_dir.clone(),
                    source,
                });
            }
        };
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| matches!(e, "conflist" | "conf" | "json"))
            })
            .collect();
        files.sort();
        let mut nets = Vec::new();
        for path in files {
            if nets.len() == self.max_conf_num {
                break;
            }
            let bytes = std::fs::read(&path).map_err(|source| CniError::ReadFile {
                path: path.clone(),
                source,
            })?;
            nets.push(NetworkConfList::parse(&path, &bytes)?);
        }
        if nets.is_empty() {
            return Err(CniError::NoConfig {
                dir: self.conf_dir.clone(),
            });
        }
        Ok(nets)
    }

    /// Ok when pods can be networked (what Status reports as NetworkReady).
    pub fn status(&self) -> Result<(), CniError> {
        self.load().map(|_| ())
    }

    /// ADDs every network (`lo` is already up: `netns::create` brings it up, so no loopback
    /// plugin runs); on a failure, what was added is
    /// deleted again (the error of the ADD is returned; a cleanup error is logged).
    pub async fn setup(
        &self,
        pod: &PodRef,
        netns: &Path,
        ports: &[PortMapping],
    ) -> Result<PodNetwork, CniError> {
        let nets = self.load()?;
        let runtime = runtime_config(ports);
        let mut out = PodNetwork::default();
        for (i, net) in nets.iter().enumerate() {
            match self.add_chain(net, pod, netns, POD_IFNAME, &runtime).await {
                Ok(result) => {
                    if i == 0 {
                        out.ips = result_ips(&result, POD_IFNAME);
                    }
                    if let Err(e) = self.cache_put(net, pod, &result) {
                        tracing::warn!(error = %e, "cannot cache cni result; DEL will run without prevResult");
                    }
                    out.results.insert(net.name.clone(), result);
                }
                Err(e) => {
                    for done in nets[..=i].iter().rev() {
                        if let Err(ce) = self.del_chain(done, pod, Some(netns), POD_IFNAME, &runtime).await {
                            tracing::warn!(network = %done.name, error = %ce, "cni rollback after a failed ADD");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(out)
    }

    /// DELs every network in reverse; idempotent, works without a netns
    /// (`netns` None: the namespace is already gone, plugins release IPAM state only).
    pub async fn teardown(
        &self,
        pod: &PodRef,
        netns: Option<&Path>,
        ports: &[PortMapping],
    ) -> Result<(), CniError> {
        let nets = self.load()?;
        let runtime = runtime_config(ports);
        let mut first_err = None;
        for net in nets.iter().rev() {
            if let Err(e) = self.del_chain(net, pod, netns, POD_IFNAME, &runtime).await {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    /// CHECKs every network (skipped for networks with `disableCheck` or a CNI version
    /// before 0.4.0, which have no CHECK).
    pub async fn check(&self, pod: &PodRef, netns: &Path) -> Result<(), CniError> {
        for net in self.load()? {
            if net.disable_check || version_lt(&net.cni_version, (0, 4, 0)) {
                continue;
            }
            let prev = self.cache_get(&net, pod);
            for i in 0..net.plugins.len() {
                let conf = net.plugin_config(i, prev.as_ref(), &Map::new());
                self.exec(&net, i, "CHECK", pod, Some(netns), POD_IFNAME, &conf)
                    .await?;
            }
        }
        Ok(())
    }

    async fn add_chain(
        &self,
        net: &NetworkConfList,
        pod: &PodRef,
        netns: &Path,
        ifname: &str,
        runtime: &Map<String, Value>,
    ) -> Result<Value, CniError> {
        let mut prev: Option<Value> = None;
        for i in 0..net.plugins.len() {
            let conf = net.plugin_config(i, prev.as_ref(), runtime);
            let out = self.exec(net, i, "ADD", pod, Some(netns), ifname, &conf).await?;
            let result: Value = serde_json::from_slice(&out).map_err(|e| CniError::BadResult {
                plugin: plugin_type(net, i),
                command: "ADD",
                reason: e.to_string(),
            })?;
            prev = Some(result);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    async fn del_chain(
        &self,
        net: &NetworkConfList,
        pod: &PodRef,
        netns: Option<&Path>,
        ifname: &str,
        runtime: &Map<String, Value>,
    ) -> Result<(), CniError> {
        // Every plugin gets its DEL even when an earlier one failed (each releases its
        // own resources: IPAM addresses, host veths, port mappings); the first error wins.
        let prev = self.cache_get(net, pod);
        let mut first_err = None;
        for i in (0..net.plugins.len()).rev() {
            let conf = net.plugin_config(i, prev.as_ref(), runtime);
            if let Err(e) = self.exec(net, i, "DEL", pod, netns, ifname, &conf).await {
                tracing::warn!(network = %net.name, error = %e, "cni DEL failed");
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            None => {
                self.cache_remove(net, pod);
                Ok(())
            }
            Some(e) => Err(e),
        }
    }

    /// Finds a plugin binary in the bin dirs.
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        if !plugin.contains('/') && plugin != "." && plugin != ".." {
            for d in &self.bin_dirs {
                let p = d.join(plugin);
                if p.is_file() {
                    return Ok(p);
                }
            }
        }
        Err(CniError::PluginNotFound {
            plugin: plugin.to_owned(),
            dirs: self.cni_path(),
        })
    }

    fn cni_path(&self) -> String {
        self.bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":")
    }

    /// One plugin exec ([`Cni::exec_plugin`]) in a span `cni{network, plugin, command}`
    /// (OpenTelemetry: `cni.ADD`, ...), timed and counted per plugin type and command.
    #[allow(clippy::too_many_arguments)]
    async fn exec(
        &self,
        net: &NetworkConfList,
        i: usize,
        command: &'static str,
        pod: &PodRef,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> Result<Vec<u8>, CniError> {
        let started = std::time::Instant::now();
        let plugin = plugin_type(net, i);
        let span = tracing::info_span!(
            "cni",
            network = %net.name,
            plugin = %plugin,
            command,
            otel.name = %format_args!("cni.{command}"),
            otel.kind = "client",
        );
        let result = self
            .exec_plugin(net, i, command, pod, netns, ifname, conf)
            .instrument(span.clone())
            .await;
        if let Err(e) = &result {
            crate::telemetry::set_error(&span, e.to_string());
        }
        if let Some(m) = &self.metrics {
            m.duration
                .with_label_values(&[plugin.as_str(), command])
                .observe(started.elapsed().as_secs_f64());
            if result.is_err() {
                m.errors.with_label_values(&[plugin.as_str(), command]).inc();
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    async fn exec_plugin(
        &self,
        net: &NetworkConfList,
        i: usize,
        command: &'static str,
        pod: &PodRef,
        netns: Option<&Path>,
        ifname: &str,
        conf: &Value,
    ) -> Result<Vec<u8>, CniError> {
        let plugin = plugin_type(net, i);
        let binary = self.find(&plugin)?;
        let stdin = serde_json::to_vec(conf).map_err(|e| CniError::BadResult {
            plugin: plugin.clone(),
            command,
            reason: format!("encode config: {e}"),
        })?;
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            pod.namespace, pod.name, pod.sandbox_id, pod.uid
        );
        let exec_err = |source| CniError::Exec {
            binary: binary.clone(),
            command,
            source,
        };
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &pod.sandbox_id)
            .env(
                "CNI_NETNS",
                netns.map(std::path::Path::as_os_str).unwrap_or_default(),
            )
            .env("CNI_IFNAME", ifname)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", self.cni_path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(exec_err)?;
        let child_stdin = child.stdin.take();
        // The config is written while the output is read, and a plugin that exits without
        // reading all of it (a broken pipe) is judged by its exit and output, as libcni does.
        let feed = async move {
            let Some(mut s) = child_stdin else {
                return Ok(());
            };
            match s.write_all(&stdin).await {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                r => r,
            }
        };
        let run = async {
            let (fed, out) = tokio::join!(feed, child.wait_with_output());
            fed?;
            out
        };
        let out = match tokio::time::timeout(self.timeout, run).await {
            Ok(r) => r.map_err(exec_err)?,
            Err(_) => {
                return Err(CniError::Timeout {
                    plugin,
                    command,
                    timeout: self.timeout,
                });
            }
        };
        tracing::debug!(network = %net.name, %plugin, command, ifname, status = %out.status, "cni plugin ran");
        if out.status.success() {
            return Ok(out.stdout);
        }
        let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        let details = err
            .get("details")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(|d| format!(" ({d})"))
            .or_else(|| (!stderr.is_empty()).then(|| format!(" (stderr: {stderr})")))
            .unwrap_or_default();
        Err(CniError::Plugin {
            network: net.name.clone(),
            plugin,
            command,
            code: err.get("code").and_then(Value::as_i64).unwrap_or(-1),
            msg: err
                .get("msg")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("exited with {}", out.status)),
            details,
        })
    }

    fn cache_path(&self, net: &NetworkConfList, pod: &PodRef) -> PathBuf {
        self.cache_dir
            .join(format!("{}-{}-{}.json", net.name, pod.sandbox_id, POD_IFNAME))
    }

    fn cache_put(&self, net: &NetworkConfList, pod: &PodRef, result: &Value) -> Result<(), CniError> {
        let path = self.cache_path(net, pod);
        std::fs::create_dir_all(&self.cache_dir).map_err(|source| CniError::Cache {
            path: self.cache_dir.clone(),
            source,
        })?;
        std::fs::write(&path, result.to_string()).map_err(|source| CniError::Cache { path, source })
    }

    fn cache_get(&self, net: &NetworkConfList, pod: &PodRef) -> Option<Value> {
        let bytes = std::fs::read(self.cache_path(net, pod)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn cache_remove(&self, net: &NetworkConfList, pod: &PodRef) {
        let _ = std::fs::remove_file(self.cache_path(net, pod));
    }
}

fn plugin_type(net: &NetworkConfList, i: usize) -> String {
    net.plugins[i]
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn runtime_config(ports: &[PortMapping]) -> Map<String, Value> {
    let mut rc = Map::new();
    if !ports.is_empty() {
        let pm: Vec<Value> = ports
            .iter()
            .map(|p| {
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": p.protocol,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = Value::String(p.host_ip.clone());
                }
                m
            })
            .collect();
        rc.insert("portMappings".into(), Value::Array(pm));
    }
    rc
}

/// The IPs a result gives the interface `ifname` (any IP without an interface index also
/// counts), IPv4 first, prefix length dropped. Understands results from 0.3.0 on (`ips`)
/// and 0.2.0 (`ip4`/`ip6`).
pub fn result_ips(result: &Value, ifname: &str) -> Vec<String> {
    let ifaces = result.get("interfaces").and_then(Value::as_array);
    let mut ips: Vec<String> = Vec::new();
    if let Some(list) = result.get("ips").and_then(Value::as_array) {
        for ip in list {
            let on_pod_if = match ip.get("interface").and_then(Value::as_u64) {
                None => true,
                Some(idx) => ifaces
                    .and_then(|l| l.get(idx as usize))
                    .and_then(|i| i.get("name"))
                    .and_then(Value::as_str)
                    .is_none_or(|n| n == ifname),
            };
            if on_pod_if && let Some(a) = ip.get("address").and_then(Value::as_str) {
                ips.push(a.split('/').next().unwrap_or(a).to_owned());
            }
        }
    } else {
        for key in ["ip4", "ip6"] {
            if let Some(a) = result.get(key).and_then(|v| v.get("ip")).and_then(Value::as_str) {
                ips.push(a.split('/').next().unwrap_or(a).to_owned());
            }
        }
    }
    ips.sort_by_key(|a| a.contains(':'));
    ips
}

fn version_lt(v: &str, min: (u32, u32, u32)) -> bool {
    let mut p = v.split('.').map(|x| x.parse::<u32>().unwrap_or(0));
    let t = (
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
        p.next().unwrap_or(0),
    );
    t < min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_and_conf_parse() {
        let l = NetworkConfList::parse(
            Path::new("/x/10-a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        assert_eq!((l.name.as_str(), l.plugins.len()), ("a", 2));
        let c = NetworkConfList::parse(
            Path::new("/x/20-b.conf"),
            br#"{"cniVersion":"0.4.0","name":"b","type":"ptp"}"#,
        )
        .unwrap();
        assert_eq!(c.plugins[0]["type"], "ptp");
        for (name, bad) in [
            ("a.conflist", &br#"{"name":"a","plugins":[]}"#[..]),
            ("a.conflist", br#"{"name":"a","plugins":[{"x":1}]}"#),
            ("a.conf", br#"{"name":"a"}"#),
            ("a.conf", br#"{"type":"bridge"}"#),
            ("a.conf", b"not json"),
        ] {
            let e = NetworkConfList::parse(&Path::new("/x").join(name), bad).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
        }
    }

    #[test]
    fn plugin_config_carries_name_version_prev_and_declared_capabilities_only() {
        let l = NetworkConfList::parse(
            Path::new("/x/a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"net","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .unwrap();
        let rc = runtime_config(&[PortMapping {
            host_port: 8080,
            container_port: 80,
            protocol: "tcp".into(),
            host_ip: String::new(),
        }]);
        let c0 = l.plugin_config(0, None, &rc);
        assert_eq!(c0["name"], "net");
        assert_eq!(c0["cniVersion"], "1.0.0");
        assert!(c0.get("runtimeConfig").is_none() && c0.get("prevResult").is_none());
        let prev = json!({"ips":[]});
        let c1 = l.plugin_config(1, Some(&prev), &rc);
        assert_eq!(c1["prevResult"], prev);
        assert_eq!(c1["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
    }

    #[test]
    fn result_ips_of_the_pod_interface_ipv4_first() {
        let r = json!({
            "interfaces":[{"name":"cni0"},{"name":"veth1"},{"name":"eth0","sandbox":"/run/netns/x"}],
            "ips":[
                {"address":"fd00::5/64","interface":2},
                {"address":"10.88.0.5/16","gateway":"10.88.0.1","interface":2},
                {"address":"10.88.0.1/16","interface":0}
            ]
        });
        assert_eq!(result_ips(&r, "eth0"), ["10.88.0.5", "fd00::5"]);
        assert_eq!(
            result_ips(&json!({"ip4":{"ip":"10.1.2.3/24"}}), "eth0"),
            ["10.1.2.3"]
        );
    }

    #[test]
    fn load_picks_lexical_order_and_max_conf_num() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = CniConfig {
            conf_dir: dir.path().join("net.d"),
            ..Default::default()
        };
        let cni = Cni::new(&cfg, dir.path().join("cache"));
        assert!(matches!(cni.load(), Err(CniError::NoConfig { .. })));
        std::fs::create_dir(&cfg.conf_dir).unwrap();
        assert!(matches!(cni.status(), Err(CniError::NoConfig { .. })));
        std::fs::write(cfg.conf_dir.join("README"), "ignored").unwrap();
        std::fs::write(cfg.conf_dir.join("20-b.conf"), r#"{"name":"b","type":"ptp"}"#).unwrap();
        std::fs::write(
            cfg.conf_dir.join("10-a.conflist"),
            r#"{"name":"a","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert_eq!(
            cni.load()
                .unwrap()
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>(),
            ["a"]
        );
        cfg.max_conf_num = 5;
        let cni = Cni::new(&cfg, dir.path().join("cache"));
        assert_eq!(
            cni.load()
                .unwrap()
                .iter()
                .map(|n| n.name.clone())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
    }

    #[test]
    fn plugin_lookup_refuses_paths() {
        let cni = Cni::new(&CniConfig::default(), PathBuf::from("/nonexistent"));
        for p in ["../../bin/sh", "/bin/sh", ".."] {
            assert!(matches!(cni.find(p), Err(CniError::PluginNotFound { .. })), "{p}");
        }
    }

    /// A plugin that answers without reading its config (slow-cni DEL in the e2e suite) is
    /// judged by its exit and output; the broken pipe of the unread config is no error.
    #[tokio::test]
    async fn a_plugin_that_leaves_its_config_unread_is_judged_by_its_exit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let plugin = bin.join("early");
        std::fs::write(&plugin, "#!/bin/sh\necho '{\"cniVersion\":\"1.0.0\"}'\n").unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = CniConfig {
            bin_dirs: vec![bin],
            ..Default::default()
        };
        let cni = Cni::new(&cfg, dir.path().join("cache"));
        let net = NetworkConfList::parse(
            Path::new("/x/a.conflist"),
            br#"{"cniVersion":"1.0.0","name":"a","plugins":[{"type":"early"}]}"#,
        )
        .unwrap();
        let pod = PodRef {
            sandbox_id: "s".into(),
            name: "p".into(),
            namespace: "n".into(),
            uid: "u".into(),
        };
        // Far more than a pipe holds, so the write outlives the plugin.
        let conf = json!({"name": "a", "type": "early", "pad": "x".repeat(1 << 20)});
        for _ in 0..3 {
            let out = cni
                .exec_plugin(&net, 0, "DEL", &pod, None, "eth0", &conf)
                .await
                .unwrap();
            assert_eq!(out, b"{\"cniVersion\":\"1.0.0\"}\n");
        }
    }

    #[test]
    fn versions_compare() {
        assert!(version_lt("0.3.1", (0, 4, 0)));
        assert!(!version_lt("1.0.0", (0, 4, 0)));
        assert!(!version_lt("0.4.0", (0, 4, 0)));
    }
}
