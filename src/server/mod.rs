//! Transports: the gRPC server on the unix socket, the ttrpc server for shims, the HTTP
//! endpoint for metrics and health. Transport code depends on domain modules, never the
//! other way round.

pub mod namespace;
pub mod status;

/// A gRPC transport adapter: a plugin of type `io.containerd.grpc.v1` provides this
/// capability, and the server adds every one of them to its router.
pub trait GrpcService: Send + Sync {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder);
}

/// A ttrpc service served on the ttrpc socket (where shims publish events).
pub trait TtrpcService: Send + Sync {
    fn services(&self) -> std::collections::HashMap<String, ttrpc::r#async::Service>;
}
