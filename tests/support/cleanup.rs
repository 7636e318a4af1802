//! Teardown that runs after a test daemon is gone and before its directories are removed.
//!
//! The tasks helper fills [`after_daemon`]: kill the shims started under `state` (by the pids
//! recorded in their bundles, never by process name) and unmount their rootfs, so removing
//! the temp dirs never crosses a mount.

use std::path::Path;

/// Called by `Daemon`'s `Drop` after the daemon process was killed and reaped.
pub fn after_daemon(_state: &Path) {}
