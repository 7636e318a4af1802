//! `Version`: the runtime's name and version, and the CRI API version it speaks.

use taskd_proto::cri::v1::{VersionRequest, VersionResponse};

use crate::cri::error::CriError;
use crate::cri::service::CriService;

/// The CRI API version kubelet checks (`runtime_api_version`).
pub const CRI_API_VERSION: &str = "v1";
/// The name kubelet shows as the container runtime.
pub const RUNTIME_NAME: &str = "taskd";
/// containerd answers `version` with the kubelet runtime API's own version number.
const KUBELET_API_VERSION: &str = "0.1.0";

impl CriService {
    pub async fn version(&self, _req: VersionRequest) -> Result<VersionResponse, CriError> {
        Ok(VersionResponse {
            version: KUBELET_API_VERSION.to_owned(),
            runtime_name: RUNTIME_NAME.to_owned(),
            runtime_version: crate::VERSION.to_owned(),
            runtime_api_version: CRI_API_VERSION.to_owned(),
        })
    }
}
