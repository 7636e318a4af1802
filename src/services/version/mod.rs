//! The version service (`containerd.services.version.v1.Version`): the crate version and
//! the git revision taskd was built from (`ctr version` prints both).

pub mod grpc;

use std::sync::Arc;

use crate::plugin::{Instance, PluginType, Registration, ids};
use crate::server::GrpcService;

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

/// `io.containerd.grpc.v1.version`.
pub fn plugin() -> Registration {
    Registration::new(PluginType::Grpc, ids::VERSION, |_cx| async move {
        let local = Arc::new(Local);
        Ok(Instance::new()
            .with::<dyn GrpcService>(Arc::new(grpc::VersionService::new(local.clone())))
            .with::<Local>(local))
    })
}
