//! The gRPC health service (`grpc.health.v1.Health`, via tonic-health).
//!
//! The overall status (service name "") is SERVING from the moment the gRPC server
//! serves: the plugin is initialized before the server starts, and nothing can ask before
//! it listens. The daemon flips it to NOT_SERVING when it starts draining
//! ([`Health::set_serving`]), and the shutdown hook does so in any case.

pub mod plugin;

use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::server::{GrpcLimits, GrpcService};

/// The health reporter and the gRPC service that serves it.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    /// Overall status SERVING.
    pub fn new() -> Health {
        Health {
            reporter: HealthReporter::new(),
        }
    }

    /// Sets the overall status (service "") and notifies watchers.
    pub async fn set_serving(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
    }
}

impl GrpcService for Health {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: GrpcLimits) {
        let health = HealthService::from_health_reporter(self.reporter.clone());
        routes.add_service(crate::server::limited!(HealthServer::new(health), limits));
    }
}

#[cfg(test)]
mod tests {
    use tonic::Request;
    use tonic_health::pb::health_check_response::ServingStatus as Pb;
    use tonic_health::pb::health_server::Health as _;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

    use super::*;

    async fn check(h: &Health) -> i32 {
        let svc = HealthService::from_health_reporter(h.reporter.clone());
        let resp: HealthCheckResponse = svc
            .check(Request::new(HealthCheckRequest {
                service: String::new(),
            }))
            .await
            .unwrap()
            .into_inner();
        resp.status
    }

    #[tokio::test]
    async fn serving_until_told_otherwise() {
        let h = Health::new();
        assert_eq!(check(&h).await, Pb::Serving as i32);
        h.set_serving(false).await;
        assert_eq!(check(&h).await, Pb::NotServing as i32);
        h.set_serving(true).await;
        assert_eq!(check(&h).await, Pb::Serving as i32);
    }
}
