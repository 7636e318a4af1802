//! CRI container logs: what a container writes on stdout/stderr becomes the kubelet log
//! format in the file the CRI request names (`log_directory/log_path`).
//!
//! ```text
//!  shim ──stdout fifo──▶ copy(Stream::Stdout) ─┐  Framer: split on '\n', cap each record at
//!  shim ──stderr fifo──▶ copy(Stream::Stderr) ─┤  max_line bytes, stamp it
//!                                              ▼
//!                       LogFile (one per container, shared by both streams)
//!                         Mutex<File>: a record is written whole under the lock, so records
//!                         never interleave; reopen() swaps the file under the same lock
//! ```
//!
//! One record: `<RFC3339Nano UTC> <stdout|stderr> <P|F> <content>\n`.
//! - `F`: the content ends a line (the newline itself is not part of the content);
//! - `P`: a partial line: a chunk of a line longer than `max_line` (the last chunk is `F`),
//!   output that has no newline when the stream ends, or a partial line that stayed idle
//!   longer than the flush interval (a prompt printed without a newline is still visible).
//!
//! Reopen (kubelet's rotation: rename the file, then `ReopenContainerLog`): records written
//! before the swap land in the renamed file through the old descriptor, records after it in
//! the new file; nothing is buffered across the swap, so no byte is lost.

mod container_io;
pub mod exec_output;
mod framer;
mod log_file;
mod tap;

pub use container_io::ContainerIo;
pub use exec_output::{ExecOutput, Reader as ExecReader, discard};
pub use framer::{Framer, Stream, Tag, format_timestamp};
pub use log_file::{LogFile, copy};
pub use tap::{TAP_QUEUE, Tap};

use std::path::PathBuf;

use crate::errdefs::{ErrorKind, Kind};

/// Errors of the log writer; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log path {path:?} must be absolute")]
    RelativePath { path: PathBuf },
    #[error("open log file {path}: {source}")]
    Open { path: PathBuf, source: std::io::Error },
    #[error("write log file {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("read container {stream} output for {path}: {source}")]
    Read {
        stream: Stream,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ErrorKind for LogError {
    fn kind(&self) -> Kind {
        match self {
            LogError::RelativePath { .. } => Kind::InvalidArgument,
            LogError::Open { .. } | LogError::Write { .. } | LogError::Read { .. } => Kind::Internal,
        }
    }
}
