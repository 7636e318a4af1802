//! The explicit list of built-in plugins, in no particular order (the registry orders them by
//! their requirements). No link-time registration: a plugin exists if it is listed here.

use crate::plugin::Registration;

/// Every built-in plugin.
pub fn registrations() -> Vec<Registration> {
    vec![
        crate::events::exchange::plugin(),
        crate::deprecation::plugin(),
        crate::services::events::grpc_plugin(),
        crate::services::events::ttrpc_plugin(),
        crate::services::version::plugin(),
        crate::services::introspection::plugin(),
        crate::services::health::plugin(),
        crate::metadata::plugin::registration(),
        crate::content::plugin::registration(),
        crate::services::content::registration(),
        crate::services::content::grpc::registration(),
        crate::gc::plugin::registration(),
        crate::services::images::registration(),
        crate::services::images::grpc::registration(),
        crate::services::namespaces::registration(),
        crate::services::namespaces::grpc::registration(),
        crate::services::containers::registration(),
        crate::services::containers::grpc::registration(),
        crate::services::leases::registration(),
        crate::services::leases::grpc::registration(),
        crate::snapshots::plugin::overlayfs(),
        crate::snapshots::plugin::native(),
        crate::services::snapshots::registration(),
        crate::services::snapshots::grpc::registration(),
        crate::diff::plugin::registration(),
        crate::services::diff::grpc::registration(),
        crate::monitor::cgroups::registration(),
        crate::runtime::v2::registration(),
        crate::services::tasks::local::registration(),
        crate::services::tasks::grpc::registration(),
        crate::cri::registration(),
    ]
}
