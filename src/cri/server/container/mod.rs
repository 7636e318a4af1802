//! Container RPCs. Status, List and ReopenContainerLog read the container store;
//! Create/Start/Stop/Remove land with the tasks, images and snapshots services.

pub mod events;
pub mod list;
pub mod reopen_log;
pub mod status;
pub mod stream;
