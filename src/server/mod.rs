//! Transports: the gRPC server on the unix socket, the ttrpc server for shims, the HTTP
//! endpoint for metrics and health. Transport code depends on domain modules, never the
//! other way round.

pub mod grpc;
pub mod http;
pub mod namespace;
pub mod notify;
pub mod scrape;
pub mod socket;
pub mod status;
pub mod ttrpc;

/// A gRPC transport adapter: a plugin of type `io.containerd.grpc.v1` provides this
/// capability, and the server adds every one of them to its router.
pub trait GrpcService: Send + Sync {
    /// Adds the service(s) to `routes`. Every generated tonic server must be wrapped with
    /// `.max_decoding_message_size(limits.max_recv).max_encoding_message_size(limits.max_send)`
    /// so `[grpc] max_recv_message_size` / `max_send_message_size` apply to it.
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: GrpcLimits);
}

/// A generated tonic server with the daemon's message size limits: `$server` wrapped with
/// `.max_decoding_message_size(limits.max_recv).max_encoding_message_size(limits.max_send)`,
/// as [`GrpcService::register`] requires of every server it adds.
macro_rules! limited {
    ($server:expr, $limits:expr) => {
        $server
            .max_decoding_message_size($limits.max_recv)
            .max_encoding_message_size($limits.max_send)
    };
}
pub(crate) use limited;

/// A thin gRPC adapter over an in-process service: `pub struct $name { local: Arc<$local> }`
/// (cheap to clone), its `new`, and the [`GrpcService`] that adds `$server::new(self.clone())`
/// under the message size limits. The adapter's own `impl` of the generated service trait
/// converts messages and maps errors.
macro_rules! grpc_adapter {
    ($(#[$attr:meta])* $name:ident($local:ty) => $($server:ident)::+) => {
        $(#[$attr])*
        #[derive(Clone)]
        pub struct $name {
            local: std::sync::Arc<$local>,
        }

        impl $name {
            pub fn new(local: std::sync::Arc<$local>) -> Self {
                $name { local }
            }
        }

        impl $crate::server::GrpcService for $name {
            fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: $crate::server::GrpcLimits) {
                routes.add_service($crate::server::limited!($($server)::+::new(self.clone()), limits));
            }
        }
    };
}
pub(crate) use grpc_adapter;

/// A ttrpc service served on the ttrpc socket (where shims publish events).
pub trait TtrpcService: Send + Sync {
    fn services(&self) -> std::collections::HashMap<String, ::ttrpc::r#async::Service>;
}

/// The default gRPC message size limit, both directions (16 MiB), and the largest value
/// `[grpc] max_recv_message_size` / `max_send_message_size` accept.
pub const MAX_MESSAGE_SIZE: usize = 16 << 20;

/// The gRPC message size limits in bytes, from `[grpc] max_recv_message_size` /
/// `max_send_message_size`; handed to every [`GrpcService::register`].
///
/// A request larger than `max_recv` fails with ResourceExhausted before it reaches the
/// service; so does a response larger than `max_send`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrpcLimits {
    /// Largest message the server decodes (requests).
    pub max_recv: usize,
    /// Largest message the server encodes (responses).
    pub max_send: usize,
}

impl Default for GrpcLimits {
    fn default() -> Self {
        GrpcLimits {
            max_recv: MAX_MESSAGE_SIZE,
            max_send: MAX_MESSAGE_SIZE,
        }
    }
}

/// The registration of a thin gRPC adapter (`io.containerd.grpc.v1.<id>`) over the in-process
/// service `L` that a plugin of type `io.containerd.service.v1` provides.
pub fn adapter_registration<L, S>(
    id: &'static str,
    make: fn(std::sync::Arc<L>) -> S,
) -> crate::plugin::Registration
where
    L: ?Sized + Send + Sync + 'static,
    S: GrpcService + 'static,
{
    use crate::plugin::{Instance, PluginType, Registration};
    Registration::new(PluginType::Grpc, id, move |cx| async move {
        let local = cx.get::<L>()?;
        Ok(Instance::new().with::<dyn GrpcService>(std::sync::Arc::new(make(local))))
    })
    .requires(&[PluginType::Service])
}
