//! Service implementations: for each service an in-process `Local` and a thin gRPC adapter.
pub mod tasks;
