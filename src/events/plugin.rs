//! Wiring of the event exchange.

use std::sync::Arc;

use super::exchange::{Exchange, ExchangeConfig, ExchangeError, MAX_QUEUE_SIZE};
use super::{Forwarder, Publisher, Subscriber};
use crate::plugin::{Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![registration()]
}

/// `io.containerd.event.v1.exchange`, providing `dyn Publisher`,
/// `dyn Forwarder`, `dyn Subscriber` and the concrete [`Exchange`].
fn registration() -> Registration {
    Registration::new(PluginType::Event, ids::EXCHANGE, |cx| async move {
        let config: ExchangeConfig = cx.config()?;
        if !(1..=MAX_QUEUE_SIZE).contains(&config.queue_size) {
            return Err(PluginError::init(ExchangeError::QueueSize {
                value: config.queue_size,
            }));
        }
        let exchange = Exchange::with_queue_size(config.queue_size)
            .map_err(|e| PluginError::init(ExchangeError::from(e)))?;
        exchange
            .register_metrics(cx.metrics())
            .map_err(|e| PluginError::init(ExchangeError::from(e)))?;
        let exchange = Arc::new(exchange);
        let closer = exchange.clone();
        Ok(Instance::new()
            .with::<dyn Publisher>(exchange.clone())
            .with::<dyn Forwarder>(exchange.clone())
            .with::<dyn Subscriber>(exchange.clone())
            .with::<Exchange>(exchange)
            .export("queue_size", config.queue_size.to_string())
            .on_shutdown(move || async move { closer.close() }))
    })
    .config::<ExchangeConfig>()
}
