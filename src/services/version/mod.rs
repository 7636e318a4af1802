//! The version service (`containerd.services.version.v1.Version`): the crate version and
//! the git revision taskd was built from (`ctr version` prints both).

pub mod grpc;
pub mod plugin;

pub use crate::{REVISION, VERSION};

/// What the version service reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub version: String,
    pub revision: String,
}

/// The in-process version service.
#[derive(Debug, Clone, Default)]
pub struct Local;

impl Local {
    pub fn version(&self) -> Version {
        Version {
            version: VERSION.to_owned(),
            revision: REVISION.to_owned(),
        }
    }
}
