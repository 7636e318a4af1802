//! Deprecation warnings (containerd's `warning` service): a plugin or the daemon that
//! notices a deprecated setting calls [`Deprecations::emit`]; introspection's `Server`
//! reports every warning with its last occurrence.
//!
//! The plugin `io.containerd.internal.v1.deprecations` provides the shared
//! `Arc<Deprecations>`; a plugin that wants to warn requires `PluginType::Internal` and
//! takes `cx.get_optional::<Deprecations>()`.

pub mod plugin;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

/// `io.containerd.runtime.v1.linux` in a config or a request.
pub const RUNTIME_V1: &str = "io.containerd.deprecation/runtime-v1";
pub const RUNTIME_V1_MESSAGE: &str = "The `io.containerd.runtime.v1.linux` runtime is deprecated since containerd v1.4 and removed in containerd v2.0; taskd does not support it. Use the `io.containerd.runc.v2` runtime instead.";
/// `io.containerd.runc.v1` in a config or a request.
pub const RUNC_V1: &str = "io.containerd.deprecation/runc-v1";
pub const RUNC_V1_MESSAGE: &str = "The `io.containerd.runc.v1` runtime is deprecated since containerd v1.4 and removed in containerd v2.0; taskd does not support it. Use the `io.containerd.runc.v2` runtime instead.";

/// One deprecation warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub id: String,
    pub message: String,
    pub last_occurrence: SystemTime,
}

/// The set of deprecation warnings seen since the daemon started.
#[derive(Debug, Default)]
pub struct Deprecations {
    warnings: Mutex<BTreeMap<String, Warning>>,
}

impl Deprecations {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a warning (logged the first time an id is seen; later occurrences only
    /// update its time).
    pub fn emit(&self, id: &str, message: &str) {
        let mut warnings = self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now();
        match warnings.get_mut(id) {
            Some(w) => {
                w.last_occurrence = now;
                w.message = message.to_owned();
            }
            None => {
                tracing::warn!(id, "{message}");
                warnings.insert(
                    id.to_owned(),
                    Warning {
                        id: id.to_owned(),
                        message: message.to_owned(),
                        last_occurrence: now,
                    },
                );
            }
        }
    }

    /// Every warning, ordered by id.
    pub fn list(&self) -> Vec<Warning> {
        let warnings = self
            .warnings
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        warnings.values().cloned().collect()
    }
}

/// Deprecated values that may appear anywhere in a config: (value, warning id, message).
const DEPRECATED_VALUES: [(&str, &str, &str); 2] = [
    ("io.containerd.runtime.v1.linux", RUNTIME_V1, RUNTIME_V1_MESSAGE),
    ("io.containerd.runc.v1", RUNC_V1, RUNC_V1_MESSAGE),
];

impl Deprecations {
    /// Warns for every deprecated runtime name used as a value in the plugin tables
    /// (`[plugins."<type>.<id>"]`, at any depth: `runtime_type`, `default_runtime_name`, ...).
    /// The daemon calls this once after loading its config.
    pub fn scan_plugin_config<'a>(&self, tables: impl IntoIterator<Item = (&'a String, &'a toml::Table)>) {
        fn walk(d: &Deprecations, plugin: &str, path: &str, value: &toml::Value) {
            match value {
                toml::Value::String(s) => {
                    for (name, id, message) in DEPRECATED_VALUES {
                        if s == name {
                            d.emit(id, &format!("{message} (config: [plugins.\"{plugin}\"] {path})"));
                        }
                    }
                }
                toml::Value::Array(items) => {
                    for (i, v) in items.iter().enumerate() {
                        walk(d, plugin, &format!("{path}[{i}]"), v);
                    }
                }
                toml::Value::Table(t) => {
                    for (k, v) in t {
                        let p = if path.is_empty() {
                            k.clone()
                        } else {
                            format!("{path}.{k}")
                        };
                        walk(d, plugin, &p, v);
                    }
                }
                _ => {}
            }
        }
        for (plugin, table) in tables {
            for (k, v) in table {
                walk(self, plugin, k, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emit_records_once_per_id_and_updates_the_time() {
        let d = Deprecations::new();
        d.emit(RUNTIME_V1, RUNTIME_V1_MESSAGE);
        let first = d.list();
        assert_eq!(first.len(), 1);
        d.emit(RUNTIME_V1, RUNTIME_V1_MESSAGE);
        d.emit(RUNC_V1, RUNC_V1_MESSAGE);
        let all = d.list();
        assert_eq!(
            all.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            vec![RUNC_V1, RUNTIME_V1]
        );
        assert!(all[1].last_occurrence >= first[0].last_occurrence);
    }

    #[test]
    fn deprecated_runtime_names_in_plugin_config_are_reported() {
        let tables: std::collections::BTreeMap<String, toml::Table> = [(
            "io.containerd.cri.v1.cri".to_owned(),
            toml::from_str(
                "default_runtime_name = \"runc\"\n[runtimes.runc]\nruntime_type = \"io.containerd.runc.v1\"\n[runtimes.old]\nruntime_type = \"io.containerd.runtime.v1.linux\"\n[runtimes.ok]\nruntime_type = \"io.containerd.runc.v2\"\n",
            )
            .unwrap(),
        )]
        .into();
        let d = Deprecations::new();
        d.scan_plugin_config(&tables);
        let all = d.list();
        assert_eq!(
            all.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
            vec![RUNC_V1, RUNTIME_V1]
        );
        assert!(
            all[0].message.contains("runtimes.runc.runtime_type"),
            "{}",
            all[0].message
        );
        let clean = Deprecations::new();
        clean.scan_plugin_config(&std::collections::BTreeMap::new());
        assert!(clean.list().is_empty());
    }
}
