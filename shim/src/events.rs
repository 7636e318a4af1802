//! Events to the daemon's ttrpc events socket (`TTRPC_ADDRESS`), in order, through a bounded
//! queue: one task forwards them one at a time; when the daemon is away (restarting) the
//! task reconnects and retries the same event, so nothing queued is lost or reordered.
//! Only a full queue drops an event (logged), and a daemon that rejects an event outright.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use containerd_shim::util::timestamp;
use containerd_shim_protos::protobuf::Message;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::shim_async::{Client, EventsClient};
use containerd_shim_protos::ttrpc;
use log::{debug, warn};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events the queue holds while the daemon is away.
const QUEUE: usize = 1024;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How long one forward may take.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Publisher {
    tx: mpsc::Sender<Envelope>,
    namespace: String,
    task: JoinHandle<()>,
    /// Events queued and not yet answered by the daemon (one may be on the wire).
    pending: Arc<AtomicUsize>,
}

impl Publisher {
    pub fn new(address: String, namespace: String) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        let pending = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(forward_loop(address, rx, pending.clone()));
        Publisher {
            tx,
            namespace,
            task,
            pending,
        }
    }

    /// Queues `event` under `topic`; never waits. Encoded through the message's own
    /// (generated) code: `write_to_bytes_dyn` would check it through reflection, which
    /// builds and keeps the descriptors of every .proto file the message's file imports
    /// (descriptor.proto included, through gogo.proto): about 0.6 MiB of heap.
    pub fn publish<M: Message>(&self, topic: &str, event: M) {
        let mut env = Envelope::new();
        env.topic = topic.to_owned();
        env.namespace = self.namespace.clone();
        env.timestamp = timestamp().ok().into();
        let Some(type_url) = type_url(topic) else {
            warn!("no event type for topic {topic}");
            return;
        };
        match event.write_to_bytes() {
            Ok(value) => env.event = Some(any(type_url, value)).into(),
            Err(e) => {
                warn!("event {topic} not encoded: {e}");
                return;
            }
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(env) {
            self.pending.fetch_sub(1, Ordering::SeqCst);
            warn!("event queue full, {topic} dropped: {e}");
        }
    }

    /// Gives the queue up to `within` to drain (Shutdown), then stops the forwarder.
    pub async fn flush(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        // Until the last event is answered, not merely taken off the queue: stopping the
        // forwarder mid-call would lose it (and the daemon's reply would hit a closed pipe).
        while self.pending.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.task.abort();
    }
}

/// containerd's type URL of a task event topic's message. Named here rather than read from
/// the protobuf descriptors, which the shim would otherwise build (and keep) at the first
/// event: a sizeable share of a small process's memory.
fn type_url(topic: &str) -> Option<&'static str> {
    Some(match topic.strip_prefix("/tasks/")? {
        "create" => "containerd.events.TaskCreate",
        "start" => "containerd.events.TaskStart",
        "exit" => "containerd.events.TaskExit",
        "delete" => "containerd.events.TaskDelete",
        "exec-added" => "containerd.events.TaskExecAdded",
        "exec-started" => "containerd.events.TaskExecStarted",
        "oom" => "containerd.events.TaskOOM",
        "paused" => "containerd.events.TaskPaused",
        "resumed" => "containerd.events.TaskResumed",
        "checkpointed" => "containerd.events.TaskCheckpointed",
        _ => return None,
    })
}

/// An `Any` of `type_url` without protobuf reflection.
pub fn any(type_url: &str, value: Vec<u8>) -> Any {
    Any {
        type_url: type_url.to_owned(),
        value,
        ..Default::default()
    }
}

async fn connect(address: &str) -> Option<EventsClient> {
    let addr = address.to_owned();
    let fd = tokio::task::spawn_blocking(move || containerd_shim::util::connect(addr))
        .await
        .ok()?
        .map_err(|e| debug!("events connect: {e}"))
        .ok()?;
    // SAFETY: `fd` is a connected unix socket that nothing else owns.
    let client = unsafe { Client::from_raw_unix_socket_fd(fd) };
    Some(EventsClient::new(client))
}

async fn forward_loop(address: String, mut rx: mpsc::Receiver<Envelope>, pending: Arc<AtomicUsize>) {
    let mut client: Option<EventsClient> = None;
    while let Some(env) = rx.recv().await {
        let mut req = ForwardRequest::new();
        req.envelope = Some(env).into();
        let mut backoff = Duration::from_millis(20);
        loop {
            if client.is_none() {
                client = connect(&address).await;
            }
            if let Some(c) = &client {
                let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
                match c.forward(ctx, &req).await {
                    Ok(_) => break,
                    Err(ttrpc::Error::RpcStatus(s)) => {
                        warn!("event rejected by the daemon: {}", s.message);
                        break;
                    }
                    Err(e) => {
                        debug!("event forward failed, reconnecting: {e}");
                        client = None;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn type_urls_match_the_messages() {
        assert_eq!(
            super::type_url("/tasks/exit"),
            Some(TaskExit::descriptor().full_name())
        );
        assert_eq!(
            super::type_url("/tasks/oom"),
            Some(TaskOOM::descriptor().full_name())
        );
        assert_eq!(super::type_url("/tasks/nope"), None);
    }
}
