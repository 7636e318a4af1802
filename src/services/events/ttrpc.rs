//! ttrpc adapter: `containerd.services.events.ttrpc.v1.Events/Forward`, where runtime v2
//! shims publish task events (containerd's `pkg/shim/publisher.go`). The shim sends a
//! complete envelope (timestamp, namespace, topic, event) and the namespace again as
//! `containerd-namespace-ttrpc` metadata; the envelope's namespace wins, the metadata is
//! the fallback when the envelope has none. rust-protobuf types stop here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use protobuf::Enum;
use protobuf::well_known_types::empty::Empty;
use taskd_proto::ttrpc::v2::events::ForwardRequest;
use taskd_proto::ttrpc::v2::events_ttrpc::{Events, create_events};
use ttrpc::r#async::TtrpcContext;

use crate::errdefs::ErrorKind;
use crate::events::{Envelope, EventError, Forwarder};
use crate::server::TtrpcService;

/// The ttrpc metadata key carrying the namespace (containerd's `namespaces/ttrpc.go`).
pub const NAMESPACE_METADATA: &str = "containerd-namespace-ttrpc";

/// The ttrpc events service.
#[derive(Clone)]
pub struct TtrpcEvents {
    forwarder: Arc<dyn Forwarder>,
}

impl TtrpcEvents {
    pub fn new(forwarder: Arc<dyn Forwarder>) -> Self {
        TtrpcEvents { forwarder }
    }
}

impl TtrpcService for TtrpcEvents {
    fn services(&self) -> HashMap<String, ttrpc::r#async::Service> {
        create_events(Arc::new(self.clone()))
    }
}

/// A shim's envelope → the domain one.
fn envelope_from_ttrpc(req: ForwardRequest, metadata_ns: Option<&str>) -> Result<Envelope, EventError> {
    let e = req.envelope.into_option().ok_or(EventError::MissingEnvelope)?;
    let ts = e.timestamp.into_option().ok_or(EventError::MissingTimestamp)?;
    let timestamp = SystemTime::try_from(prost_types::Timestamp {
        seconds: ts.seconds,
        nanos: ts.nanos,
    })
    .map_err(|_| EventError::InvalidTimestamp {
        seconds: ts.seconds,
        nanos: ts.nanos,
    })?;
    let any = e.event.into_option().ok_or(EventError::MissingEvent)?;
    let namespace = if e.namespace.is_empty() {
        metadata_ns.unwrap_or_default().to_owned()
    } else {
        e.namespace
    };
    Ok(Envelope {
        timestamp,
        namespace,
        topic: e.topic,
        event: prost_types::Any {
            type_url: any.type_url,
            value: any.value,
        },
    })
}

/// A taskd error → a ttrpc status with the same code (gRPC and ttrpc share the numbers).
fn to_ttrpc(err: &EventError) -> ttrpc::Error {
    let code = ttrpc::Code::from_i32(err.kind().code()).unwrap_or(ttrpc::Code::UNKNOWN);
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, err.to_string()))
}

#[async_trait::async_trait]
impl Events for TtrpcEvents {
    async fn forward(&self, ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
        let metadata_ns = ctx
            .metadata
            .get(NAMESPACE_METADATA)
            .and_then(|v| v.first())
            .map(String::as_str);
        let envelope = envelope_from_ttrpc(req, metadata_ns).map_err(|e| to_ttrpc(&e))?;
        self.forwarder.forward(envelope).map_err(|e| {
            tracing::warn!(error = %e, "refused an event forwarded over ttrpc");
            to_ttrpc(&e)
        })?;
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use protobuf::MessageField;
    use protobuf::well_known_types::{any::Any, timestamp::Timestamp};
    use taskd_proto::ttrpc::v2::event::Envelope as TtrpcEnvelope;
    use taskd_proto::ttrpc::v2::events_ttrpc::EventsClient;

    use super::*;
    use crate::events::{Exchange, Subscriber};
    use crate::filters::Filter;

    fn request(namespace: &str, topic: &str) -> ForwardRequest {
        let mut any = Any::new();
        any.type_url = "containerd.events.TaskExit".into();
        any.value = vec![0x0a, 0x01, b'c'];
        let mut ts = Timestamp::new();
        ts.seconds = 1_700_000_000;
        ts.nanos = 7;
        let mut env = TtrpcEnvelope::new();
        env.timestamp = MessageField::some(ts);
        env.namespace = namespace.into();
        env.topic = topic.into();
        env.event = MessageField::some(any);
        let mut req = ForwardRequest::new();
        req.envelope = MessageField::some(env);
        req
    }

    /// A real ttrpc server and client on a temporary socket, as a shim would call it.
    #[tokio::test]
    async fn shim_forward_over_ttrpc_reaches_subscribers() {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("unix://{}", dir.path().join("ttrpc.sock").display());
        let exchange = Arc::new(Exchange::new().unwrap());
        let mut sub = exchange.subscribe("test", Filter::always());
        let mut server = ttrpc::r#async::Server::new()
            .bind(&addr)
            .unwrap()
            .register_service(TtrpcEvents::new(exchange.clone()).services());
        server.start().await.unwrap();

        let client = EventsClient::new(ttrpc::r#async::Client::connect(&addr).await.unwrap());
        let ctx = || {
            let mut md = HashMap::new();
            md.insert(NAMESPACE_METADATA.to_owned(), vec!["k8s.io".to_owned()]);
            ttrpc::context::with_metadata(md)
        };
        // what containerd-shim-runc-v2 sends: envelope namespace + namespace metadata
        client
            .forward(ctx(), &request("k8s.io", "/tasks/exit"))
            .await
            .unwrap();
        let env = tokio::time::timeout(Duration::from_secs(10), sub.receiver.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(env.namespace, "k8s.io");
        assert_eq!(env.topic, "/tasks/exit");
        assert_eq!(env.event.type_url, "containerd.events.TaskExit");
        assert_eq!(env.event.value, vec![0x0a, 0x01, b'c']);
        assert_eq!(
            env.timestamp,
            SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 7)
        );

        // no namespace in the envelope: the metadata supplies it
        client.forward(ctx(), &request("", "/tasks/exit")).await.unwrap();
        let env = sub.receiver.recv().await.unwrap();
        assert_eq!(env.namespace, "k8s.io");

        // a bad topic is InvalidArgument, with the same code over ttrpc
        let err = client
            .forward(ctx(), &request("k8s.io", "tasks"))
            .await
            .unwrap_err();
        match err {
            ttrpc::Error::RpcStatus(s) => {
                assert_eq!(s.code(), ttrpc::Code::INVALID_ARGUMENT);
                assert!(s.message().contains("topic"), "{}", s.message());
            }
            other => panic!("unexpected error {other:?}"),
        }
        // neither envelope namespace nor metadata
        let err = client
            .forward(ttrpc::context::with_timeout(0), &request("", "/tasks/exit"))
            .await
            .unwrap_err();
        assert!(matches!(err, ttrpc::Error::RpcStatus(ref s) if s.code() == ttrpc::Code::INVALID_ARGUMENT));

        server.shutdown().await.unwrap();
    }
}
