//! gRPC adapter: `containerd.services.events.v1.Events` → the exchange.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use taskd_proto::containerd::services::events::v1::events_server::{Events, EventsServer};
use taskd_proto::containerd::services::events::v1::{ForwardRequest, PublishRequest, SubscribeRequest};
use taskd_proto::containerd::types as pb;
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};

use crate::events::{Envelope, EventError, Forwarder, Publisher, Subscriber};
use crate::filters;
use crate::server::status::to_status;
use crate::server::{GrpcLimits, GrpcService, limited, namespace};

/// The subscriber name of gRPC `Subscribe` streams (metrics label, logs).
pub const SUBSCRIBER: &str = "grpc";

/// The gRPC events service.
#[derive(Clone)]
pub struct EventsService {
    publisher: Arc<dyn Publisher>,
    forwarder: Arc<dyn Forwarder>,
    subscriber: Arc<dyn Subscriber>,
}

impl EventsService {
    pub fn new(
        publisher: Arc<dyn Publisher>,
        forwarder: Arc<dyn Forwarder>,
        subscriber: Arc<dyn Subscriber>,
    ) -> Self {
        EventsService {
            publisher,
            forwarder,
            subscriber,
        }
    }

    /// The tonic server with the given message size limits.
    pub fn server(&self, limits: GrpcLimits) -> EventsServer<EventsService> {
        limited!(EventsServer::new(self.clone()), limits)
    }
}

impl GrpcService for EventsService {
    fn register(&self, routes: &mut tonic::service::RoutesBuilder, limits: GrpcLimits) {
        routes.add_service(self.server(limits));
    }
}

/// A wire envelope → the domain one; the timestamp is required.
pub fn envelope_from_proto(e: pb::Envelope) -> Result<Envelope, EventError> {
    let ts = e.timestamp.ok_or(EventError::MissingTimestamp)?;
    let timestamp = SystemTime::try_from(ts).map_err(|_| EventError::InvalidTimestamp {
        seconds: ts.seconds,
        nanos: ts.nanos,
    })?;
    Ok(Envelope {
        timestamp,
        namespace: e.namespace,
        topic: e.topic,
        event: e.event.ok_or(EventError::MissingEvent)?,
    })
}

/// The domain envelope → the wire one.
pub fn envelope_to_proto(e: Envelope) -> pb::Envelope {
    pb::Envelope {
        timestamp: Some(e.timestamp.into()),
        namespace: e.namespace,
        topic: e.topic,
        event: Some(e.event),
    }
}

type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<pb::Envelope, Status>> + Send>>;

#[tonic::async_trait]
impl Events for EventsService {
    async fn publish(&self, request: Request<PublishRequest>) -> Result<Response<()>, Status> {
        let ns = namespace::required(&request)?;
        let req = request.into_inner();
        let event = req.event.ok_or_else(|| to_status(&EventError::MissingEvent))?;
        self.publisher
            .publish(&ns, &req.topic, event)
            .map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<()>, Status> {
        let envelope = request
            .into_inner()
            .envelope
            .ok_or_else(|| to_status(&EventError::MissingEnvelope))?;
        let envelope = envelope_from_proto(envelope).map_err(|e| to_status(&e))?;
        self.forwarder.forward(envelope).map_err(|e| to_status(&e))?;
        Ok(Response::new(()))
    }

    type SubscribeStream = EnvelopeStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = filters::parse(&request.get_ref().filters).map_err(|e| to_status(&e))?;
        let subscription = self.subscriber.subscribe(SUBSCRIBER, filter);
        let stream = ReceiverStream::new(subscription.receiver).map(|e| Ok(envelope_to_proto(e)));
        Ok(Response::new(Box::pin(stream)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;

    use super::*;
    use crate::events::Exchange;

    fn service() -> (Arc<Exchange>, EventsService) {
        let x = Arc::new(Exchange::new().unwrap());
        let svc = EventsService::new(x.clone(), x.clone(), x.clone());
        (x, svc)
    }

    fn oom(id: &str) -> prost_types::Any {
        prost_types::Any {
            type_url: "containerd.events.TaskOOM".into(),
            value: prost::Message::encode_to_vec(&taskd_proto::containerd::events::TaskOom {
                container_id: id.into(),
            }),
        }
    }

    fn with_ns<T>(ns: &str, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert(namespace::HEADER, ns.parse().unwrap());
        req
    }

    async fn subscribe(svc: &EventsService, filters: &[&str]) -> EnvelopeStream {
        let req = Request::new(SubscribeRequest {
            filters: filters.iter().map(std::string::ToString::to_string).collect(),
        });
        svc.subscribe(req).await.unwrap().into_inner()
    }

    async fn next(stream: &mut EnvelopeStream) -> pb::Envelope {
        tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an envelope")
            .expect("stream open")
            .expect("ok")
    }

    #[tokio::test]
    async fn publish_reaches_filtered_subscribers_with_namespace_and_timestamp() {
        let (_x, svc) = service();
        let mut all = subscribe(&svc, &[]).await;
        let mut k8s = subscribe(&svc, &["namespace==k8s.io"]).await;
        let publish = |ns: &str, id: &str| {
            with_ns(
                ns,
                PublishRequest {
                    topic: "/tasks/oom".into(),
                    event: Some(oom(id)),
                },
            )
        };
        svc.publish(publish("default", "a")).await.unwrap();
        svc.publish(publish("k8s.io", "b")).await.unwrap();
        let e = next(&mut all).await;
        assert_eq!(
            (e.namespace.as_str(), e.topic.as_str()),
            ("default", "/tasks/oom")
        );
        assert!(e.timestamp.is_some());
        assert_eq!(e.event, Some(oom("a")));
        assert_eq!(next(&mut all).await.event, Some(oom("b")));
        let e = next(&mut k8s).await;
        assert_eq!((e.namespace.as_str(), e.event), ("k8s.io", Some(oom("b"))));
    }

    #[tokio::test]
    async fn publish_errors_are_invalid_argument() {
        let (_x, svc) = service();
        let no_ns = Request::new(PublishRequest {
            topic: "/tasks/oom".into(),
            event: Some(oom("a")),
        });
        let err = svc.publish(no_ns).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("namespace"), "{}", err.message());
        for (topic, event) in [("tasks", Some(oom("a"))), ("/tasks/oom", None)] {
            let req = with_ns(
                "default",
                PublishRequest {
                    topic: topic.into(),
                    event,
                },
            );
            let err = svc.publish(req).await.unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        }
        let err = svc
            .subscribe(Request::new(SubscribeRequest {
                filters: vec!["topic==\"unterminated".into()],
            }))
            .await
            .err()
            .unwrap();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[tokio::test]
    async fn forward_keeps_the_envelope_and_validates_it() {
        let (_x, svc) = service();
        let mut all = subscribe(&svc, &[r#"topic=="/tasks/exit""#]).await;
        let env = pb::Envelope {
            timestamp: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 5,
            }),
            namespace: "k8s.io".into(),
            topic: "/tasks/exit".into(),
            event: Some(oom("c")),
        };
        svc.forward(Request::new(ForwardRequest {
            envelope: Some(env.clone()),
        }))
        .await
        .unwrap();
        assert_eq!(next(&mut all).await, env);

        let bad = [
            None,
            Some(pb::Envelope {
                namespace: "bad ns".into(),
                ..env.clone()
            }),
            Some(pb::Envelope {
                timestamp: None,
                ..env.clone()
            }),
            Some(pb::Envelope {
                topic: "/".into(),
                ..env.clone()
            }),
        ];
        for envelope in bad {
            let err = svc
                .forward(Request::new(ForwardRequest { envelope }))
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
        }
    }

    #[tokio::test]
    async fn dropping_the_stream_unsubscribes() {
        let (x, svc) = service();
        let stream = subscribe(&svc, &[]).await;
        assert_eq!(x.subscriber_count(), 1);
        drop(stream);
        assert_eq!(x.subscriber_count(), 0);
    }
}
