//! The RPCs not implemented yet, each with the reason it names to the caller.
//! An RPC leaves this list when its file under `server/<noun>/` exists.

use crate::cri::CriError;

/// Pod and container lifecycle needs the in-process tasks service plus an image store and
/// snapshotters for the pause and container root file systems.
pub const LIFECYCLE: &str =
    "pods and containers need the tasks, images and snapshots services, which are not on this build yet";
/// The image service needs the content store, the images service and server-side pull.
pub const IMAGES: &str =
    "the image service needs the content store and server-side pull, which are not on this build yet";
/// Exec, Attach, PortForward.
pub const STREAMING: &str = "the CRI streaming server (exec/attach/port-forward) does not exist yet";
/// ExecSync, stats, events, checkpoint, metrics, Stream* (CRI part 2, issue 8).
pub const PART2: &str = "part of CRI part 2 (issue 8: exec, stats, events, checkpoint), not implemented yet";

pub async fn unimplemented<T>(rpc: &'static str, missing: &'static str) -> Result<T, CriError> {
    Err(CriError::Unimplemented { rpc, missing })
}
