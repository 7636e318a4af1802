//! One vocabulary of error kinds, shared by every layer.
//!
//! Each module has its own `thiserror` enum; each enum implements [`ErrorKind`] with an
//! exhaustive `match`, so a new variant cannot silently become [`Kind::Unknown`]. The kind is
//! turned into a wire status exactly once, at the service boundary (see
//! `server::status`). gRPC and ttrpc share the same numeric status codes, so the mapping
//! here is to and from that number and this module needs neither tonic nor ttrpc.

use std::fmt;

/// The kinds of failure a caller can act on (containerd's `errdefs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Unknown,
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unavailable,
    NotImplemented,
    Canceled,
    DeadlineExceeded,
    ResourceExhausted,
    PermissionDenied,
    Aborted,
    OutOfRange,
    Internal,
    DataLoss,
    Unauthenticated,
}

impl Kind {
    /// The gRPC (and ttrpc) status code number for this kind.
    pub const fn code(self) -> i32 {
        match self {
            Kind::Canceled => 1,
            Kind::Unknown => 2,
            Kind::InvalidArgument => 3,
            Kind::DeadlineExceeded => 4,
            Kind::NotFound => 5,
            Kind::AlreadyExists => 6,
            Kind::PermissionDenied => 7,
            Kind::ResourceExhausted => 8,
            Kind::FailedPrecondition => 9,
            Kind::Aborted => 10,
            Kind::OutOfRange => 11,
            Kind::NotImplemented => 12,
            Kind::Internal => 13,
            Kind::Unavailable => 14,
            Kind::DataLoss => 15,
            Kind::Unauthenticated => 16,
        }
    }

    /// The kind for a gRPC (or ttrpc) status code number; `OK` and unknown numbers map to
    /// [`Kind::Unknown`].
    pub const fn from_code(code: i32) -> Kind {
        match code {
            1 => Kind::Canceled,
            3 => Kind::InvalidArgument,
            4 => Kind::DeadlineExceeded,
            5 => Kind::NotFound,
            6 => Kind::AlreadyExists,
            7 => Kind::PermissionDenied,
            8 => Kind::ResourceExhausted,
            9 => Kind::FailedPrecondition,
            10 => Kind::Aborted,
            11 => Kind::OutOfRange,
            12 => Kind::NotImplemented,
            13 => Kind::Internal,
            14 => Kind::Unavailable,
            15 => Kind::DataLoss,
            16 => Kind::Unauthenticated,
            _ => Kind::Unknown,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::Unknown => "unknown",
            Kind::InvalidArgument => "invalid argument",
            Kind::NotFound => "not found",
            Kind::AlreadyExists => "already exists",
            Kind::FailedPrecondition => "failed precondition",
            Kind::Unavailable => "unavailable",
            Kind::NotImplemented => "not implemented",
            Kind::Canceled => "canceled",
            Kind::DeadlineExceeded => "deadline exceeded",
            Kind::ResourceExhausted => "resource exhausted",
            Kind::PermissionDenied => "permission denied",
            Kind::Aborted => "aborted",
            Kind::OutOfRange => "out of range",
            Kind::Internal => "internal",
            Kind::DataLoss => "data loss",
            Kind::Unauthenticated => "unauthenticated",
        };
        f.write_str(s)
    }
}

/// Implemented by every error enum in taskd, with an exhaustive `match` over its variants.
pub trait ErrorKind: std::error::Error {
    fn kind(&self) -> Kind;
}

/// Idempotent removal: a NotFound error is success.
pub fn not_found_ok<E: ErrorKind>(r: Result<(), E>) -> Result<(), E> {
    match r {
        Err(e) if e.kind() == Kind::NotFound => Ok(()),
        other => other,
    }
}

/// Idempotent file system removal: "no such file or directory" is success.
pub fn absent_ok(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// An error that crossed a process boundary (a shim's ttrpc status, a registry's reply):
/// the kind survives the hop, so a shim's NotFound reaches kubelet as NOT_FOUND.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Remote {
    pub kind: Kind,
    pub message: String,
}

impl ErrorKind for Remote {
    fn kind(&self) -> Kind {
        self.kind
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for code in 1..=16 {
            let kind = Kind::from_code(code);
            if code != 2 {
                assert_eq!(kind.code(), code, "{kind}");
            }
        }
        assert_eq!(Kind::from_code(0), Kind::Unknown);
        assert_eq!(Kind::from_code(99), Kind::Unknown);
    }
}
