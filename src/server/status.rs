//! Errors become `tonic::Status` here, once, at the service boundary.

use std::fmt::Display;

use crate::errdefs::{ErrorKind, Kind, Remote};

/// Maps any taskd error to a gRPC status with the code of its kind and its message.
pub fn to_status<E: ErrorKind + Display + ?Sized>(err: &E) -> tonic::Status {
    tonic::Status::new(tonic::Code::from_i32(err.kind().code()), err.to_string())
}

/// Maps a gRPC status (from a remote peer) back to a kind-carrying error.
pub fn from_status(status: &tonic::Status) -> Remote {
    Remote {
        kind: Kind::from_code(status.code() as i32),
        message: status.message().to_owned(),
    }
}
