//! Wiring of the deprecations list.

use std::sync::Arc;

use super::Deprecations;
use crate::plugin::{Instance, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.internal.v1.deprecations`, providing `Arc<Deprecations>`.
fn registration() -> Registration {
    Registration::new(PluginType::Internal, ids::DEPRECATIONS, |_cx| async move {
        Ok(Instance::new().with::<Deprecations>(Arc::new(Deprecations::new())))
    })
}
