//! Pod sandbox RPCs. Status and List read the sandbox store; Run/Stop/Remove land with the
//! tasks, images and snapshots services.

pub mod list;
pub mod status;
pub mod stream;
pub mod update_resources;
