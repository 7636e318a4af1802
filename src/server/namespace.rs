//! The `containerd-namespace` request header (and `containerd-namespace-ttrpc` for ttrpc).

use tonic::{Request, Status};

use crate::identifiers;

/// The gRPC metadata key that carries the namespace.
pub const HEADER: &str = "containerd-namespace";

/// The namespace of a request, validated; InvalidArgument when it is missing or invalid.
pub fn required<T>(req: &Request<T>) -> Result<String, Status> {
    optional(req)?.ok_or_else(|| {
        Status::invalid_argument(format!(
            "namespace is required: set the {HEADER:?} request header"
        ))
    })
}

/// The namespace of a request if it has one, validated.
pub fn optional<T>(req: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = req.metadata().get(HEADER) else {
        return Ok(None);
    };
    let ns = value
        .to_str()
        .map_err(|_| Status::invalid_argument(format!("{HEADER} header is not valid ASCII")))?;
    identifiers::validate("namespace", ns).map_err(|e| super::status::to_status(&e))?;
    Ok(Some(ns.to_owned()))
}
