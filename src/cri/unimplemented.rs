//! The RPCs not implemented yet, each with the reason it names to the caller.
//! An RPC leaves this list when its file under `server/<noun>/` exists.

/// Pod and container lifecycle when a service it needs is not loaded (a disabled plugin,
/// or the images service configured with `snapshotter = ""`, so nothing is unpacked).
pub const LIFECYCLE: &str = "pods and containers need the tasks and containers services and an images service that unpacks into a snapshotter; one of them is not loaded on this daemon (see `ctr plugins ls -d id==cri`, export `pods`)";
/// The image service when the images service or its unpack snapshotter is not loaded.
pub const IMAGES: &str = "the CRI image service needs the images service with an unpack snapshotter, which is not loaded on this daemon (disabled plugin, or the images service's `snapshotter` is empty)";
