//! `UpdateRuntimeConfig`: kubelet hands over the node's pod CIDR. It is kept in memory
//! (kubelet sends it again after a restart) and shown in verbose Status.

use taskd_proto::cri::v1::{UpdateRuntimeConfigRequest, UpdateRuntimeConfigResponse};

use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn update_runtime_config(
        &self,
        req: UpdateRuntimeConfigRequest,
    ) -> Result<UpdateRuntimeConfigResponse, CriError> {
        let cidr = req
            .runtime_config
            .and_then(|c| c.network_config)
            .map(|n| n.pod_cidr)
            .unwrap_or_default();
        if cidr.is_empty() {
            // containerd ignores an empty CIDR rather than clearing the stored one.
            return Ok(UpdateRuntimeConfigResponse {});
        }
        for c in cidr.split(',') {
            validate_cidr(c.trim())?;
        }
        let mut state = self
            .runtime
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.pod_cidr != cidr {
            tracing::info!(pod_cidr = %cidr, "pod CIDR updated");
        }
        state.pod_cidr = cidr;
        Ok(UpdateRuntimeConfigResponse {})
    }
}

/// `a.b.c.d/n` or `x::y/n`.
fn validate_cidr(c: &str) -> Result<(), CriError> {
    let bad = |reason: String| CriError::InvalidArgument {
        field: "runtime_config.network_config.pod_cidr",
        reason,
    };
    let (addr, len) = c
        .split_once('/')
        .ok_or_else(|| bad(format!("{c:?} is not a CIDR (address/prefix)")))?;
    let ip: std::net::IpAddr = addr
        .parse()
        .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match len.parse::<u8>() {
        Ok(n) if n <= max => Ok(()),
        _ => Err(bad(format!("prefix length {len:?} is not in 0..={max}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        validate_cidr("10.244.0.0/24").unwrap();
        validate_cidr("fd00::/64").unwrap();
        for bad in ["10.244.0.0", "10.244.0.0/33", "x/8", "fd00::/129"] {
            assert!(validate_cidr(bad).is_err(), "{bad}");
        }
    }
}
