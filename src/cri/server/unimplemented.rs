//! The RPCs not implemented yet, each with the reason it names to the caller.
//! An RPC leaves this list when its file under `server/<noun>/` exists.

use crate::cri::CriError;

/// Pod and container lifecycle needs root file systems for the pause and container images,
/// from the images service and a snapshotter, which the CRI plugin is not wired to yet.
pub const LIFECYCLE: &str = "pods and containers need image root file systems (images service + snapshotter), which the CRI plugin is not wired to yet";
/// The image service needs the images service and server-side pull behind the CRI plugin.
pub const IMAGES: &str = "the CRI image service is not wired to the images service and server-side pull yet";
/// Exec, Attach, PortForward.
pub const STREAMING: &str = "the CRI streaming server (exec/attach/port-forward) does not exist yet";
/// ExecSync, stats, events, checkpoint, metrics, Stream* (CRI part 2, issue 8).
pub const PART2: &str = "part of CRI part 2 (issue 8: exec, stats, events, checkpoint), not implemented yet";

pub async fn unimplemented<T>(rpc: &'static str, missing: &'static str) -> Result<T, CriError> {
    Err(CriError::Unimplemented { rpc, missing })
}
