//! `Status`: RuntimeReady and NetworkReady conditions, runtime handlers with their
//! features, and (verbose) the config and the last CNI load status.
//!
//! NetworkReady is false, reason `NetworkPluginNotReady`, until `cni.conf_dir` holds a
//! loadable network config; the message says why (no config, or which file is invalid).

use std::collections::HashMap;

use taskd_proto::cri::v1::{
    RuntimeCondition, RuntimeFeatures, RuntimeHandler, RuntimeHandlerFeatures, RuntimeStatus, StatusRequest,
    StatusResponse,
};

use crate::cri::error::CriError;
use crate::cri::service::CriService;

pub const RUNTIME_READY: &str = "RuntimeReady";
pub const NETWORK_READY: &str = "NetworkReady";
pub const NETWORK_NOT_READY_REASON: &str = "NetworkPluginNotReady";

impl CriService {
    pub async fn status(&self, req: StatusRequest) -> Result<StatusResponse, CriError> {
        let cni = self.cni();
        // Reading conf_dir is blocking file I/O.
        let net = tokio::task::spawn_blocking(move || cni.status())
            .await
            .unwrap_or_else(|_| {
                Err(crate::cri::network::CniError::NoConfig {
                    dir: self.cni().conf_dir().to_owned(),
                })
            });
        let network = match &net {
            Ok(()) => RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: true,
                ..Default::default()
            },
            Err(e) => RuntimeCondition {
                r#type: NETWORK_READY.into(),
                status: false,
                reason: NETWORK_NOT_READY_REASON.into(),
                message: format!("Network plugin returns error: {e}"),
            },
        };
        let runtime = RuntimeCondition {
            r#type: RUNTIME_READY.into(),
            status: true,
            ..Default::default()
        };
        // The default handler answers to "" as well as its own name.
        let features = |name: &str| {
            let f = self.handler_features(name);
            Some(RuntimeHandlerFeatures {
                recursive_read_only_mounts: f.recursive_read_only_mounts,
                user_namespaces: f.user_namespaces,
            })
        };
        let mut runtime_handlers = vec![RuntimeHandler {
            name: String::new(),
            features: features(&self.config.default_runtime),
        }];
        runtime_handlers.extend(self.handler_names().into_iter().map(|name| RuntimeHandler {
            features: features(&name),
            name,
        }));
        let mut info = HashMap::new();
        if req.verbose {
            let config =
                serde_json::to_string(&self.config).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
            info.insert("config".to_owned(), config);
            info.insert(
                "lastCNILoadStatus".to_owned(),
                match &net {
                    Ok(()) => "OK".to_owned(),
                    Err(e) => e.to_string(),
                },
            );
            info.insert("podCIDR".to_owned(), self.runtime_state().pod_cidr);
        }
        Ok(StatusResponse {
            status: Some(RuntimeStatus {
                conditions: vec![runtime, network],
            }),
            info,
            runtime_handlers,
            features: Some(RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
            }),
        })
    }
}
