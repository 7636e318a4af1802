//! Service implementations: for each service an in-process `Local` and a thin gRPC adapter.

pub mod containers;
pub mod events;
pub mod health;
pub mod introspection;
pub mod leases;
pub mod namespaces;
pub mod tasks;
pub mod version;
