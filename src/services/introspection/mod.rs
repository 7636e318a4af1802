//! The introspection service (`containerd.services.introspection.v1.Introspection`):
//! what `ctr plugins ls` and `ctr version` show.
//!
//! - `Plugins`: every plugin of the live plugin table with its type, id, requirements,
//!   exports, capabilities and, for a plugin that did not come up, its init error — as
//!   containerd does, a `google.rpc.Status` with code Unknown whose message contains
//!   "skip plugin" for a skipped plugin (ctr prints `skip`) and the error otherwise (ctr
//!   prints `error`; `ctr plugins ls -d` prints the message). Disabled plugins are not
//!   listed, as in containerd. Filters (containerd syntax) see `type`, `id`,
//!   `capabilities` and `requires` (comma-joined) and `exports.<key>`.
//! - `Server`: a uuid created once in the plugin's root dir (`<root>/<type>.<id>/uuid`) and
//!   reused after restarts, the daemon's pid and pid namespace, and the deprecation
//!   warnings (see `crate::deprecation`).
//! - `PluginInfo`: one plugin by type and id.

pub mod grpc;
pub mod plugin;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::deprecation::{Deprecations, Warning};
use crate::errdefs::{ErrorKind, Kind};
use crate::filters::{self, Adaptor, FilterError};
use crate::plugin::{PluginError, PluginInfo, PluginStatus, PluginTable};

/// Introspection errors.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("read server uuid {path}: {source}")]
    ReadUuid { path: PathBuf, source: std::io::Error },
    #[error("write server uuid {path}: {source}")]
    WriteUuid { path: PathBuf, source: std::io::Error },
    #[error("server uuid file {path} does not hold a uuid: {content:?}")]
    InvalidUuid { path: PathBuf, content: String },
    #[error(transparent)]
    Filter(#[from] FilterError),
    #[error("plugin {type}.{id} not found")]
    PluginNotFound { r#type: String, id: String },
}

impl ErrorKind for IntrospectionError {
    fn kind(&self) -> Kind {
        match self {
            IntrospectionError::ReadUuid { .. }
            | IntrospectionError::WriteUuid { .. }
            | IntrospectionError::InvalidUuid { .. } => Kind::Internal,
            IntrospectionError::Filter(_) => Kind::InvalidArgument,
            IntrospectionError::PluginNotFound { .. } => Kind::NotFound,
        }
    }
}

/// Why a plugin is not usable, in containerd's `init_err` shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitError {
    pub kind: Kind,
    pub message: String,
}

/// One plugin as introspection reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    pub r#type: String,
    pub id: String,
    pub requires: Vec<String>,
    pub exports: BTreeMap<String, String>,
    pub capabilities: Vec<String>,
    pub init_err: Option<InitError>,
}

/// What `Server` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    pub uuid: String,
    pub pid: u64,
    pub pidns: u64,
    pub deprecations: Vec<Warning>,
}

/// The in-process introspection service.
pub struct Local {
    table: PluginTable,
    uuid: String,
    deprecations: Option<Arc<Deprecations>>,
}

impl Local {
    /// Loads the server uuid from `root/uuid`, creating it the first time.
    pub fn open(
        root: &Path,
        table: PluginTable,
        deprecations: Option<Arc<Deprecations>>,
    ) -> Result<Local, IntrospectionError> {
        Ok(Local {
            table,
            uuid: load_or_create_uuid(&root.join("uuid"))?,
            deprecations,
        })
    }

    /// The plugins matching any of `filters` (all when empty), in init order.
    pub fn plugins(&self, filters: &[String]) -> Result<Vec<Plugin>, IntrospectionError> {
        let filter = filters::parse(filters)?;
        Ok(self
            .table
            .snapshot()
            .iter()
            .filter_map(to_plugin)
            .filter(|p| filter.matches(p))
            .collect())
    }

    /// One plugin by type URI and id.
    pub fn plugin(&self, r#type: &str, id: &str) -> Result<Plugin, IntrospectionError> {
        self.table
            .snapshot()
            .iter()
            .filter_map(to_plugin)
            .find(|p| p.r#type == r#type && p.id == id)
            .ok_or_else(|| IntrospectionError::PluginNotFound {
                r#type: r#type.to_owned(),
                id: id.to_owned(),
            })
    }

    pub fn server(&self) -> ServerInfo {
        ServerInfo {
            uuid: self.uuid.clone(),
            pid: u64::from(std::process::id()),
            pidns: pid_namespace(),
            deprecations: self.deprecations.as_ref().map(|d| d.list()).unwrap_or_default(),
        }
    }
}

/// A table row → what introspection shows; `None` for plugins containerd would not list.
fn to_plugin(info: &PluginInfo) -> Option<Plugin> {
    let init_err = match &info.status {
        PluginStatus::Ok => None,
        PluginStatus::Skipped(reason) => Some(InitError {
            kind: Kind::Unknown,
            message: PluginError::Skip(reason.clone()).to_string(),
        }),
        PluginStatus::Failed(message) => Some(InitError {
            kind: Kind::Unknown,
            message: message.clone(),
        }),
        PluginStatus::Disabled | PluginStatus::Pending => return None,
    };
    Some(Plugin {
        r#type: info.id.r#type.uri().to_owned(),
        id: info.id.id.to_owned(),
        requires: info.requires.iter().map(|t| t.uri().to_owned()).collect(),
        exports: info.exports.iter().cloned().collect(),
        capabilities: info
            .capabilities
            .iter()
            .map(|c| c.trim_start_matches("dyn ").to_owned())
            .collect(),
        init_err,
    })
}

impl Adaptor for Plugin {
    fn field(&self, path: &[&str]) -> Option<String> {
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        match path {
            ["type"] => non_empty(self.r#type.clone()),
            ["id"] => non_empty(self.id.clone()),
            ["capabilities"] => non_empty(self.capabilities.join(",")),
            ["requires"] => non_empty(self.requires.join(",")),
            ["exports", rest @ ..] if !rest.is_empty() => self.exports.get(&rest.join(".")).cloned(),
            _ => None,
        }
    }
}

fn load_or_create_uuid(path: &Path) -> Result<String, IntrospectionError> {
    match std::fs::read_to_string(path) {
        Ok(content) => {
            let trimmed = content.trim();
            uuid::Uuid::parse_str(trimmed)
                .map(|u| u.hyphenated().to_string())
                .map_err(|_| IntrospectionError::InvalidUuid {
                    path: path.to_owned(),
                    content: trimmed.chars().take(64).collect(),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4().hyphenated().to_string();
            // write-then-rename so a crash never leaves a torn uuid file
            let tmp = path.with_extension("tmp");
            let write = |p: &Path| -> std::io::Result<()> {
                let mut f = std::fs::File::create(p)?;
                f.write_all(id.as_bytes())?;
                f.sync_all()
            };
            write(&tmp).map_err(|source| IntrospectionError::WriteUuid {
                path: tmp.clone(),
                source,
            })?;
            std::fs::rename(&tmp, path).map_err(|source| IntrospectionError::WriteUuid {
                path: path.to_owned(),
                source,
            })?;
            Ok(id)
        }
        Err(source) => Err(IntrospectionError::ReadUuid {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The inode of `/proc/self/ns/pid` (containerd's `pidns`), 0 when unavailable.
fn pid_namespace() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| m.ino())
        .unwrap_or(0)
}
