//! The diff service (`containerd.services.diff.v1.Diff`): the gRPC adapter in `grpc.rs`
//! over the walking differ (`crate::diff::Differ`), which is its own in-process `Local`.

pub mod grpc;
pub mod plugin;
