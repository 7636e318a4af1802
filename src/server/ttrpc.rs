//! The ttrpc server on the ttrpc socket (`<grpc socket>.ttrpc` by default): where runtime-v2
//! shims publish their events (`containerd.services.events.ttrpc.v1.Events/Forward`). It
//! serves every [`TtrpcService`] capability of the plugins that are up.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::net::UnixListener;

use super::TtrpcService;
use crate::errdefs::{ErrorKind, Kind};
use crate::plugin::PluginId;

#[derive(Debug, thiserror::Error)]
pub enum TtrpcError {
    #[error("start ttrpc server: {0}")]
    Start(::ttrpc::Error),
}

impl ErrorKind for TtrpcError {
    fn kind(&self) -> Kind {
        match self {
            TtrpcError::Start(_) => Kind::Unavailable,
        }
    }
}

/// A running ttrpc server.
pub struct TtrpcServer {
    server: ::ttrpc::r#async::Server,
}

/// Serves every [`TtrpcService`] on `listener`.
pub async fn serve(
    listener: UnixListener,
    services: Vec<(PluginId, Arc<dyn TtrpcService>)>,
) -> Result<TtrpcServer, TtrpcError> {
    let mut all: HashMap<String, ::ttrpc::r#async::Service> = HashMap::new();
    for (id, service) in &services {
        for (name, svc) in service.services() {
            tracing::debug!(plugin = %id, service = %name, "adding ttrpc service");
            all.insert(name, svc);
        }
    }
    let mut server = ::ttrpc::r#async::Server::new()
        .add_listener(::ttrpc::r#async::transport::Listener::from(listener))
        .register_service(all);
    server.start().await.map_err(TtrpcError::Start)?;
    Ok(TtrpcServer { server })
}

impl TtrpcServer {
    /// Stops accepting and closes the connections, waiting at most `grace` (ttrpc's own
    /// bound is 10s).
    pub async fn shutdown(mut self, grace: std::time::Duration) {
        match tokio::time::timeout(grace, self.server.shutdown()).await {
            Ok(Ok(())) => tracing::debug!("ttrpc server stopped"),
            Ok(Err(e)) => tracing::warn!(error = %e, "ttrpc server shutdown"),
            Err(_) => tracing::warn!(?grace, "ttrpc connections still open after the grace period"),
        }
    }
}
