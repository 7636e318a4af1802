//! The shim's one error type: what a TaskService call fails with, and the ttrpc code each
//! kind answers with.

use containerd_shim_protos::ttrpc::{self, Code};

use crate::stdio::StdioError;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("container {id} not found")]
    NotFound { id: String },
    #[error("exec {exec_id} of container {id} not found")]
    ExecNotFound { id: String, exec_id: String },
    #[error("container {id} already exists in this shim")]
    Exists { id: String },
    #[error("exec {exec_id} already exists in container {id}")]
    ExecExists { id: String, exec_id: String },
    #[error("process {id}/{exec_id} is {state}: {what}")]
    State {
        id: String,
        exec_id: String,
        state: &'static str,
        what: &'static str,
    },
    #[error("process {id}/{exec_id}: process already finished")]
    Finished { id: String, exec_id: String },
    #[error("bad request for {id}: {reason}")]
    Invalid { id: String, reason: String },
    #[error("runc {op} {id}: {msg}")]
    Runc {
        op: &'static str,
        id: String,
        msg: String,
    },
    #[error("{id}: {source}")]
    Stdio { id: String, source: StdioError },
    #[error("{id}: mount rootfs: {msg}")]
    Mount { id: String, msg: String },
    #[error("{op} is not supported by this shim")]
    Unsupported { op: &'static str },
    #[error("{op} {id} ended without an answer: {msg}")]
    Aborted {
        op: &'static str,
        id: String,
        msg: String,
    },
}

impl From<ServiceError> for ttrpc::Error {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            // NotFound for a finished process, as the stock shim answers a Kill to it (and
            // the daemon's stop paths expect).
            ServiceError::NotFound { .. }
            | ServiceError::ExecNotFound { .. }
            | ServiceError::Finished { .. } => Code::NOT_FOUND,
            ServiceError::Exists { .. } | ServiceError::ExecExists { .. } => Code::ALREADY_EXISTS,
            ServiceError::State { .. } => Code::FAILED_PRECONDITION,
            ServiceError::Invalid { .. } => Code::INVALID_ARGUMENT,
            ServiceError::Runc { .. }
            | ServiceError::Stdio { .. }
            | ServiceError::Mount { .. }
            | ServiceError::Aborted { .. } => Code::UNKNOWN,
            ServiceError::Unsupported { .. } => Code::UNIMPLEMENTED,
        };
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
    }
}
