//! The CRI's backends: what the CRI server calls to reach the layers below it.
//!
//! ```text
//! server/, streaming/ ──▶ contract.rs   SandboxController, ContainerRuntime, ImageBackend
//!                                       (+ RootfsProvider, between the two below)
//!                            ▲      ▲
//!          tasks.rs (TaskRuntime)   images.rs (ImageSide)
//!   tasks + containers services     images service, puller, content store, snapshots
//! ```

pub mod contract;
pub mod images;
pub mod tasks;
