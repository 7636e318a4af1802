//! The events exchange: one broadcaster that implements [`Publisher`], [`Forwarder`] and
//! [`Subscriber`] (containerd's `events/exchange`).
//!
//! ```text
//!  publish(ns, topic, any) ──validate ns + topic, stamp time──┐
//!  forward(envelope)       ──validate ns + topic──────────────┤
//!                                                             ▼
//!                                  broadcast (under the subscriber list lock, so every
//!                                  subscriber sees envelopes in one global order)
//!                                     │ for each subscriber whose filter matches:
//!                                     │   try_send into its bounded queue (never waits)
//!                                     │     full   → dropped for that subscriber, counted
//!                                     │              in taskd_events_dropped_total{subscriber},
//!                                     │              logged at most once per interval
//!                                     │     closed → the Subscription was dropped: removed
//!                                     ▼
//!                          Subscription.receiver (one mpsc queue per subscriber)
//! ```
//!
//! A slow subscriber therefore never blocks a publisher, and never slows down the others.
//! Metrics: `taskd_events_published_total` (publishes and forwards),
//! `taskd_events_dropped_total{subscriber}`, `taskd_events_subscribers{subscriber}` (live
//! subscriptions). `close()` ends every subscription (daemon shutdown: lets `Subscribe`
//! streams finish so the gRPC server can drain).
//! The lock is a plain mutex held only while filters are evaluated and `try_send` is called:
//! nothing under it awaits.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use super::error::EventError;
use super::fields::EnvelopeFields;
use super::model::{Envelope, Subscription};
use super::topics;
use super::{Forwarder, Publisher, Subscriber};
use crate::errdefs::{ErrorKind, Kind};
use crate::filters::Filter;
use crate::identifiers;

/// The default capacity of each subscriber's queue.
pub const DEFAULT_QUEUE_SIZE: usize = 1024;

/// At most one "dropping events" warning per subscriber per interval.
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// The events exchange.
pub struct Exchange {
    queue_size: usize,
    state: Arc<Mutex<State>>,
    published: IntCounter,
    dropped: IntCounterVec,
    subscribers: IntGaugeVec,
}

#[derive(Default)]
struct State {
    next_id: u64,
    closed: bool,
    subscribers: Vec<Sub>,
}

struct Sub {
    id: u64,
    name: &'static str,
    filter: Filter,
    tx: mpsc::Sender<Envelope>,
    dropped: IntCounter,
    /// `taskd_events_subscribers{subscriber}`: incremented on subscribe, decremented on drop.
    live: IntGauge,
    /// Drops not yet reported in a log line.
    unlogged: u64,
    last_log: Option<Instant>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding this lock cannot leave State inconsistent in a way that
    // matters (at worst a subscriber misses an event), so recover from poisoning.
    state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Collects `taskd_events_subscribers` after pruning ended subscriptions, so a scrape sees
/// a dropped Subscription gone even when nothing was published since.
struct SubscribersCollector {
    state: Arc<Mutex<State>>,
    gauge: IntGaugeVec,
}

impl prometheus::core::Collector for SubscribersCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.gauge.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        lock(&self.state).subscribers.retain(Sub::is_live);
        self.gauge.collect()
    }
}

impl Sub {
    /// Whether the Subscription still exists; accounts for it when it does not.
    fn is_live(&self) -> bool {
        if self.tx.is_closed() {
            self.ended();
            return false;
        }
        true
    }

    fn ended(&self) {
        self.live.dec();
        tracing::debug!(subscriber = self.name, id = self.id, "subscription ended");
    }
}

impl Exchange {
    /// An exchange with [`DEFAULT_QUEUE_SIZE`] per subscriber. Fails only if the metric
    /// definitions are invalid.
    pub fn new() -> Result<Exchange, prometheus::Error> {
        Exchange::with_queue_size(DEFAULT_QUEUE_SIZE)
    }

    /// An exchange whose subscribers each get a queue of `queue_size` envelopes (at least 1).
    pub fn with_queue_size(queue_size: usize) -> Result<Exchange, prometheus::Error> {
        let published = IntCounter::new(
            "taskd_events_published_total",
            "Events published or forwarded to the events exchange.",
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "taskd_events_dropped_total",
                "Events dropped for a subscriber whose queue was full.",
            ),
            &["subscriber"],
        )?;
        let subscribers = IntGaugeVec::new(
            Opts::new(
                "taskd_events_subscribers",
                "Live subscriptions to the events exchange.",
            ),
            &["subscriber"],
        )?;
        Ok(Exchange {
            queue_size: queue_size.max(1),
            state: Arc::new(Mutex::new(State::default())),
            published,
            dropped,
            subscribers,
        })
    }

    /// Registers the exchange's counters in `registry`.
    pub fn register_metrics(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.published.clone()))?;
        registry.register(Box::new(self.dropped.clone()))?;
        registry.register(Box::new(SubscribersCollector {
            state: self.state.clone(),
            gauge: self.subscribers.clone(),
        }))?;
        Ok(())
    }

    /// The number of live subscriptions (dropped ones are pruned on the next broadcast).
    pub fn subscriber_count(&self) -> usize {
        let mut state = self.lock();
        state.subscribers.retain(Sub::is_live);
        state.subscribers.len()
    }

    /// Ends every subscription (their receivers see the end of the stream) and refuses
    /// new ones; publishing after this is a no-op.
    pub fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        for sub in state.subscribers.drain(..) {
            sub.live.dec();
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn broadcast(&self, envelope: Envelope) {
        self.published.inc();
        let fields = EnvelopeFields::new(&envelope);
        let mut state = self.lock();
        state.subscribers.retain_mut(|sub| {
            if !sub.filter.matches(&fields) {
                return sub.is_live();
            }
            match sub.tx.try_send(envelope.clone()) {
                Ok(()) => true,
                Err(TrySendError::Closed(_)) => {
                    sub.ended();
                    false
                }
                Err(TrySendError::Full(_)) => {
                    sub.dropped.inc();
                    sub.unlogged += 1;
                    let now = Instant::now();
                    if sub
                        .last_log
                        .is_none_or(|t| now.duration_since(t) >= DROP_LOG_INTERVAL)
                    {
                        tracing::warn!(
                            subscriber = sub.name,
                            id = sub.id,
                            dropped = sub.unlogged,
                            topic = %envelope.topic,
                            "subscriber is not keeping up: its event queue is full, dropping events"
                        );
                        sub.unlogged = 0;
                        sub.last_log = Some(now);
                    }
                    true
                }
            }
        });
    }
}

impl Publisher for Exchange {
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), EventError> {
        identifiers::validate("namespace", namespace)?;
        topics::validate(topic)?;
        tracing::debug!(namespace, topic, r#type = %event.type_url, "event published");
        self.broadcast(Envelope {
            timestamp: SystemTime::now(),
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            event,
        });
        Ok(())
    }
}

impl Forwarder for Exchange {
    fn forward(&self, envelope: Envelope) -> Result<(), EventError> {
        identifiers::validate("namespace", &envelope.namespace)?;
        topics::validate(&envelope.topic)?;
        tracing::debug!(
            namespace = %envelope.namespace,
            topic = %envelope.topic,
            r#type = %envelope.event.type_url,
            "event forwarded"
        );
        self.broadcast(envelope);
        Ok(())
    }
}

impl Subscriber for Exchange {
    fn subscribe(&self, name: &'static str, filter: Filter) -> Subscription {
        let (tx, receiver) = mpsc::channel(self.queue_size);
        let mut state = self.lock();
        if !state.closed {
            state.next_id += 1;
            let sub = Sub {
                id: state.next_id,
                name,
                filter,
                tx,
                dropped: self.dropped.with_label_values(&[name]),
                live: self.subscribers.with_label_values(&[name]),
                unlogged: 0,
                last_log: None,
            };
            sub.live.inc();
            state.subscribers.push(sub);
        }
        Subscription { receiver }
    }
}

/// The largest per-subscriber queue the config accepts.
pub const MAX_QUEUE_SIZE: usize = 1 << 20;

/// `[plugins."io.containerd.event.v1.exchange"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExchangeConfig {
    /// Envelopes buffered per subscriber before events are dropped for it (1..=1048576).
    pub queue_size: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig {
            queue_size: DEFAULT_QUEUE_SIZE,
        }
    }
}

/// Why the exchange plugin did not come up.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("queue_size = {value} is out of range: it must be between 1 and {MAX_QUEUE_SIZE}")]
    QueueSize { value: usize },
    #[error("register events metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ErrorKind for ExchangeError {
    fn kind(&self) -> Kind {
        match self {
            ExchangeError::QueueSize { .. } => Kind::InvalidArgument,
            ExchangeError::Metrics(_) => Kind::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filters;

    fn any(n: u32) -> prost_types::Any {
        prost_types::Any {
            type_url: "containerd.events.TaskStart".into(),
            value: prost::Message::encode_to_vec(&taskd_proto::containerd::events::TaskStart {
                container_id: format!("c{n}"),
                pid: n,
            }),
        }
    }

    fn pid(env: &Envelope) -> u32 {
        <taskd_proto::containerd::events::TaskStart as prost::Message>::decode(env.event.value.as_slice())
            .unwrap()
            .pid
    }

    fn filter(s: &str) -> Filter {
        filters::parse(&[s.to_owned()]).unwrap()
    }

    #[test]
    fn order_is_preserved_and_envelopes_are_stamped() {
        let x = Exchange::new().unwrap();
        let mut sub = x.subscribe("test", Filter::always());
        let before = SystemTime::now();
        for n in 0..100 {
            x.publish("default", "/tasks/start", any(n)).unwrap();
        }
        for n in 0..100 {
            let env = sub.receiver.try_recv().unwrap();
            assert_eq!(pid(&env), n);
            assert_eq!(env.namespace, "default");
            assert_eq!(env.topic, "/tasks/start");
            assert!(env.timestamp >= before);
        }
        assert!(sub.receiver.try_recv().is_err());
    }

    #[test]
    fn forward_keeps_the_envelope() {
        let x = Exchange::new().unwrap();
        let mut sub = x.subscribe("test", Filter::always());
        let env = Envelope {
            timestamp: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
            namespace: "k8s.io".into(),
            topic: "/tasks/exit".into(),
            event: any(7),
        };
        x.forward(env.clone()).unwrap();
        assert_eq!(sub.receiver.try_recv().unwrap(), env);
    }

    #[test]
    fn invalid_namespace_or_topic_is_refused() {
        let x = Exchange::new().unwrap();
        let mut sub = x.subscribe("test", Filter::always());
        for (ns, topic) in [
            ("", "/a"),
            ("bad ns", "/a"),
            ("default", "a"),
            ("default", "/a//b"),
        ] {
            let err = x.publish(ns, topic, any(0)).unwrap_err();
            assert_eq!(err.kind(), Kind::InvalidArgument, "{ns:?} {topic:?}: {err}");
            let err = x
                .forward(Envelope {
                    timestamp: SystemTime::now(),
                    namespace: ns.into(),
                    topic: topic.into(),
                    event: any(0),
                })
                .unwrap_err();
            assert_eq!(err.kind(), Kind::InvalidArgument);
        }
        assert!(sub.receiver.try_recv().is_err());
    }

    #[test]
    fn filters_are_honoured() {
        let x = Exchange::new().unwrap();
        let mut exits = x.subscribe("test", filter(r#"topic=="/tasks/exit""#));
        let mut k8s = x.subscribe("test", filter("namespace==k8s.io"));
        let mut c2 = x.subscribe("test", filter("event.container_id==c2"));
        let mut either = x.subscribe(
            "test",
            filters::parse(&[r#"topic=="/tasks/exit""#.into(), "namespace==k8s.io".into()]).unwrap(),
        );
        x.publish("default", "/tasks/start", any(1)).unwrap();
        x.publish("default", "/tasks/exit", any(2)).unwrap();
        x.publish("k8s.io", "/tasks/start", any(3)).unwrap();
        let drain = |s: &mut Subscription| {
            let mut v = Vec::new();
            while let Ok(e) = s.receiver.try_recv() {
                v.push(pid(&e));
            }
            v
        };
        assert_eq!(drain(&mut exits), vec![2]);
        assert_eq!(drain(&mut k8s), vec![3]);
        assert_eq!(drain(&mut c2), vec![2]);
        assert_eq!(drain(&mut either), vec![2, 3]);
    }

    #[test]
    fn slow_subscriber_drops_are_counted_and_fast_one_gets_everything() {
        let registry = Registry::new();
        let x = Exchange::with_queue_size(4).unwrap();
        x.register_metrics(&registry).unwrap();
        let slow = x.subscribe("slow", Filter::always());
        let mut fast = x.subscribe("fast", Filter::always());
        let mut got = Vec::new();
        for n in 0..10 {
            // never blocks, even though `slow` stops reading after 4
            x.publish("default", "/tasks/start", any(n)).unwrap();
            got.push(pid(&fast.receiver.try_recv().unwrap()));
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        assert_eq!(x.dropped.with_label_values(&["slow"]).get(), 6);
        assert_eq!(x.dropped.with_label_values(&["fast"]).get(), 0);
        assert_eq!(x.published.get(), 10);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap();
        assert!(
            text.contains(r#"taskd_events_dropped_total{subscriber="slow"} 6"#),
            "{text}"
        );
        assert!(text.contains("taskd_events_published_total 10"), "{text}");
        // the slow subscriber kept the oldest envelopes
        let mut slow = slow;
        let kept: Vec<_> = std::iter::from_fn(|| slow.receiver.try_recv().ok())
            .map(|e| pid(&e))
            .collect();
        assert_eq!(kept, vec![0, 1, 2, 3]);
    }

    #[test]
    fn dropping_the_subscription_unsubscribes() {
        let x = Exchange::new().unwrap();
        let a = x.subscribe("a", Filter::always());
        let mut b = x.subscribe("b", filter(r#"topic=="/nothing""#));
        assert_eq!(x.subscriber_count(), 2);
        assert_eq!(x.subscribers.with_label_values(&["a"]).get(), 1);
        drop(a);
        x.publish("default", "/tasks/start", any(1)).unwrap();
        assert_eq!(x.subscriber_count(), 1);
        drop(b.receiver.try_recv());
        drop(b);
        // pruned even when its filter did not match
        x.publish("default", "/tasks/start", any(2)).unwrap();
        assert_eq!(x.state.lock().unwrap().subscribers.len(), 0);
        assert_eq!(x.subscribers.with_label_values(&["a"]).get(), 0);
        assert_eq!(x.subscribers.with_label_values(&["b"]).get(), 0);
    }

    #[test]
    fn scrape_sees_a_dropped_subscription_without_a_publish() {
        let registry = Registry::new();
        let x = Exchange::new().unwrap();
        x.register_metrics(&registry).unwrap();
        let scrape = || {
            prometheus::TextEncoder::new()
                .encode_to_string(&registry.gather())
                .unwrap()
        };
        let sub = x.subscribe("grpc", Filter::always());
        assert!(
            scrape().contains(r#"taskd_events_subscribers{subscriber="grpc"} 1"#),
            "{}",
            scrape()
        );
        drop(sub);
        assert!(
            scrape().contains(r#"taskd_events_subscribers{subscriber="grpc"} 0"#),
            "{}",
            scrape()
        );
    }

    #[tokio::test]
    async fn close_ends_subscriptions() {
        let x = Exchange::new().unwrap();
        let mut sub = x.subscribe("a", Filter::always());
        x.publish("default", "/tasks/start", any(1)).unwrap();
        x.close();
        assert_eq!(pid(&sub.receiver.recv().await.unwrap()), 1);
        assert!(sub.receiver.recv().await.is_none());
        let mut late = x.subscribe("b", Filter::always());
        assert!(late.receiver.recv().await.is_none());
        x.publish("default", "/tasks/start", any(2)).unwrap();
    }

    #[tokio::test]
    async fn plugin_config_queue_size_is_validated() {
        use crate::plugin::{PluginStatus, Registry, RegistryConfig};
        for (size, ok) in [(0_i64, false), (8, true), (1 << 21, false)] {
            let dir = tempfile::tempdir().unwrap();
            let mut table = toml::Table::new();
            table.insert("queue_size".into(), toml::Value::Integer(size));
            let plugins = Registry::new(crate::events::plugin::registrations())
                .unwrap()
                .init(RegistryConfig {
                    root: dir.path().join("root"),
                    state: dir.path().join("state"),
                    plugins: [("io.containerd.event.v1.exchange".to_owned(), table)].into(),
                    ..Default::default()
                })
                .await
                .unwrap();
            let status = plugins.table().snapshot()[0].status.clone();
            if ok {
                assert_eq!(status, PluginStatus::Ok);
                assert_eq!(plugins.get::<Exchange>().unwrap().queue_size, 8);
            } else {
                match status {
                    PluginStatus::Failed(msg) => {
                        assert!(msg.contains("queue_size"), "{msg}");
                    }
                    other => panic!("{size}: {other:?}"),
                }
            }
        }
    }
}
