//! The explicit list of built-in plugins, in no particular order (the registry orders them by
//! their requirements). No link-time registration: a plugin exists if it is listed here.
//! Every plugin's wiring lives in the `plugin.rs` beside its module, as `registrations()`.

use crate::plugin::Registration;

/// Every built-in plugin.
pub fn registrations() -> Vec<Registration> {
    [
        crate::events::plugin::registrations(),
        crate::deprecation::plugin::registrations(),
        crate::services::events::plugin::registrations(),
        crate::services::version::plugin::registrations(),
        crate::services::introspection::plugin::registrations(),
        crate::services::health::plugin::registrations(),
        crate::metadata::plugin::registrations(),
        crate::content::plugin::registrations(),
        crate::services::content::plugin::registrations(),
        crate::gc::plugin::registrations(),
        crate::services::images::plugin::registrations(),
        crate::services::namespaces::plugin::registrations(),
        crate::services::containers::plugin::registrations(),
        crate::services::leases::plugin::registrations(),
        crate::snapshots::plugin::registrations(),
        crate::services::snapshots::plugin::registrations(),
        crate::diff::plugin::registrations(),
        crate::services::diff::plugin::registrations(),
        crate::monitor::cgroups::plugin::registrations(),
        crate::runtime::v2::plugin::registrations(),
        crate::services::tasks::plugin::registrations(),
        crate::cri::plugin::registrations(),
    ]
    .into_iter()
    .flatten()
    .collect()
}
