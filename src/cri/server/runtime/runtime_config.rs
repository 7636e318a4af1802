//! `RuntimeConfig`: the cgroup driver kubelet must match.

use taskd_proto::cri::v1::{
    CgroupDriver, LinuxRuntimeConfiguration, RuntimeConfigRequest, RuntimeConfigResponse,
};

use crate::cri::config::CgroupDriver as Driver;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn runtime_config(
        &self,
        _req: RuntimeConfigRequest,
    ) -> Result<RuntimeConfigResponse, CriError> {
        let driver = match self.config.cgroup_driver {
            Driver::Cgroupfs => CgroupDriver::Cgroupfs,
            Driver::Systemd => CgroupDriver::Systemd,
        };
        Ok(RuntimeConfigResponse {
            linux: Some(LinuxRuntimeConfiguration {
                cgroup_driver: driver as i32,
            }),
        })
    }
}
