//! Transports: the gRPC server on the unix socket, the ttrpc server for shims, the HTTP
//! endpoint for metrics and health. Transport code depends on domain modules, never the
//! other way round.

pub mod grpc;
pub mod http;
pub mod namespace;
pub mod socket;
pub mod status;
pub mod ttrpc;

/// A gRPC transport adapter: a plugin of type `io.containerd.grpc.v1` provides this
/// capability, and the server adds every one of them to its router.
pub trait GrpcService: Send + Sync {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder);
}

/// A ttrpc service served on the ttrpc socket (where shims publish events).
pub trait TtrpcService: Send + Sync {
    fn services(&self) -> std::collections::HashMap<String, ::ttrpc::r#async::Service>;
}

/// The gRPC message size limit, both directions (16 MiB). Every generated tonic server is
/// wrapped with `.max_decoding_message_size(MAX_MESSAGE_SIZE).max_encoding_message_size(MAX_MESSAGE_SIZE)`
/// in its `GrpcService::register`.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;
