//! The CRI adapter: kubelet's RuntimeService and ImageService (`runtime.v1`) on taskd's
//! socket, served by the `io.containerd.cri.v1.cri` plugin.
//!
//! ```text
//! kubelet ──CRI gRPC──▶ server::{RuntimeApi, ImageApi}     (tonic traits; one line per RPC)
//!                          │ every RPC goes through instrument::Instrument::call:
//!                          │   init gate (Unavailable until the plugin is ready) → span →
//!                          │   log → metrics → error → Status (server::status::to_status)
//!                          ▼
//!                 server/<noun>/<rpc>.rs   one file per RPC, on CriService
//!                          │
//!      ┌───────────────────┼───────────────────────┬───────────────────┐
//!      ▼                   ▼                       ▼                   ▼
//!  store/ (pods,      network/ (CNI chains,   io/ (CRI log files)   in-process Locals
//!  containers,        pinned netns)                                  (tasks, containers,
//!  images: state                                                     images, snapshots;
//!  machines)                                                         namespace k8s.io)
//! ```
//!
//! The adapter never talks to shims: pods and containers become tasks through the tasks
//! service's `Local`, as containerd's CRI plugin does with in-memory services. Images and
//! root file systems come from `backend::images::ImageSide` (images service, server-side
//! pull, content store, the snapshotter pulls unpack into). When a service is not loaded,
//! the RPCs that need it answer Unimplemented naming what is missing.

pub mod backend;
pub mod config;
pub mod container_events;
pub mod convert;
pub mod detach;
pub mod error;
pub mod events;
pub mod features;
pub mod instrument;
pub mod io;
pub mod metrics;
pub mod network;
pub mod plugin;
pub mod podfiles;
pub mod podns;
pub mod recover;
pub mod remap;
pub mod server;
pub mod service;
pub mod spec;
pub mod state_metrics;
pub mod stats;
pub mod store;
pub mod stream_front;
pub mod stream_tokens;
pub mod streaming;
pub mod unimplemented;
pub mod userns;
