//! Events, version, introspection and health against the real daemon and the real `ctr`
//! (Debian's containerd 1.6 client).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prost::Message;
use support::Daemon;
use taskd_proto::containerd::events::TaskOom;
use taskd_proto::containerd::services::events::v1::events_client::EventsClient;
use taskd_proto::containerd::services::events::v1::{PublishRequest, SubscribeRequest};

fn oom(id: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "containerd.events.TaskOOM".into(),
        value: TaskOom {
            container_id: id.into(),
        }
        .encode_to_vec(),
    }
}

/// Polls `cond` for up to 20s.
fn eventually(what: &str, d: &Daemon, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- daemon log ---\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of `taskd_events_subscribers{subscriber="grpc"}` on /v1/metrics.
fn grpc_subscribers(d: &Daemon) -> u64 {
    let (_, body) = d.http("/v1/metrics", None);
    body.lines()
        .find_map(|l| l.strip_prefix(r#"taskd_events_subscribers{subscriber="grpc"} "#))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// `ctr events ARGS` as a child, its stdout lines on a channel.
struct CtrEvents {
    child: Child,
    lines: mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl CtrEvents {
    fn spawn(d: &Daemon, filters: &[&str]) -> CtrEvents {
        support::require(&[support::Need::Bin("ctr", "containerd")]);
        let mut child = Command::new("ctr")
            .arg("--address")
            .arg(&d.socket)
            .arg("events")
            .args(filters)
            .env_remove("CONTAINERD_ADDRESS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn ctr events");
        let stdout = child.stdout.take().expect("ctr stdout");
        let (tx, lines) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        CtrEvents {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn next_line(&self, d: &Daemon) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("no line from ctr events ({e})\n--- daemon log ---\n{}", d.log()))
    }
}

impl Drop for CtrEvents {
    fn drop(&mut self) {
        // by pid, never by name
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

async fn publish(d: &Daemon, namespace: &str, topic: &str, event: prost_types::Any) {
    let mut client = EventsClient::new(d.channel().await);
    let mut req = tonic::Request::new(PublishRequest {
        topic: topic.into(),
        event: Some(event),
    });
    req.metadata_mut()
        .insert("containerd-namespace", namespace.parse().unwrap());
    client.publish(req).await.expect("publish");
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn ctr_version_shows_taskd_version_revision_and_a_persistent_uuid() {
    let mut d = Daemon::start();
    let out = d.ctr_ok(&["version"]);
    let server = out.split("Server:").nth(1).unwrap_or_else(|| panic!("{out}"));
    let field = |name: &str| {
        server
            .lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    assert_eq!(field("Version:"), env!("CARGO_PKG_VERSION"), "{out}");
    assert_eq!(field("Revision:"), taskd::services::version::REVISION, "{out}");
    assert!(!field("Revision:").is_empty());
    let uuid = field("UUID:");
    uuid::Uuid::parse_str(&uuid).unwrap_or_else(|e| panic!("{uuid}: {e}"));

    d.restart();
    let again = d.ctr_ok(&["version"]);
    assert!(
        again.contains(&format!("UUID: {uuid}")),
        "uuid changed across restart:\n{again}"
    );
    assert!(d.stop().success());
}

fn plugin_rows(ls: &str) -> HashMap<(String, String), String> {
    ls.lines()
        .skip(1)
        .filter_map(|l| {
            let c: Vec<_> = l.split_whitespace().collect();
            (c.len() == 4).then(|| ((c[0].to_owned(), c[1].to_owned()), c[3].to_owned()))
        })
        .collect()
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn ctr_plugins_ls_lists_plugins_with_their_status() {
    let mut d = Daemon::start();
    let rows = plugin_rows(&d.ctr_ok(&["plugins", "ls"]));
    for (ty, id) in [
        ("io.containerd.event.v1", "exchange"),
        ("io.containerd.internal.v1", "deprecations"),
        ("io.containerd.grpc.v1", "events"),
        ("io.containerd.ttrpc.v1", "events"),
        ("io.containerd.grpc.v1", "version"),
        ("io.containerd.grpc.v1", "introspection"),
        ("io.containerd.grpc.v1", "healthcheck"),
    ] {
        assert_eq!(
            rows.get(&(ty.to_owned(), id.to_owned())).map(String::as_str),
            Some("ok"),
            "{ty} {id} in {rows:?}"
        );
    }
    // filters go to the server (containerd syntax)
    let ids = d.ctr_ok(&["plugins", "ls", "-q", "type==io.containerd.event.v1"]);
    assert_eq!(ids.lines().collect::<Vec<_>>(), ["exchange"], "{ids}");
    let detail = d.ctr_ok(&["plugins", "ls", "-d", "id==exchange"]);
    assert!(detail.contains("queue_size"), "exports shown:\n{detail}");
    assert!(d.stop().success());
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn ctr_plugins_ls_shows_the_error_of_a_plugin_that_failed_through_config() {
    let mut d = Daemon::start_with("[plugins.\"io.containerd.event.v1.exchange\"]\nqueue_size = 0\n");
    let rows = plugin_rows(&d.ctr_ok(&["plugins", "ls"]));
    let status = |ty: &str, id: &str| rows.get(&(ty.to_owned(), id.to_owned())).cloned();
    assert_eq!(
        status("io.containerd.event.v1", "exchange").as_deref(),
        Some("error"),
        "{rows:?}"
    );
    // what needs the exchange is not up either, the rest is
    assert_eq!(
        status("io.containerd.grpc.v1", "events").as_deref(),
        Some("error"),
        "{rows:?}"
    );
    assert_eq!(
        status("io.containerd.grpc.v1", "version").as_deref(),
        Some("ok"),
        "{rows:?}"
    );
    let detail = d.ctr_ok(&["plugins", "ls", "-d", "id==exchange"]);
    assert!(detail.contains("Unknown"), "{detail}");
    assert!(
        detail.contains("queue_size = 0 is out of range"),
        "the init error is shown:\n{detail}"
    );
    assert!(d.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs ctr (containerd)"]
async fn ctr_events_streams_what_another_client_publishes() {
    let d = Daemon::start();
    let events = CtrEvents::spawn(&d, &[r#"topic=="/tasks/oom""#]);
    eventually("ctr events to subscribe", &d, || grpc_subscribers(&d) >= 1);

    publish(&d, "default", "/containers/delete", oom("filtered-out")).await;
    publish(&d, "taskd-test", "/tasks/oom", oom("c1")).await;
    // "<timestamp> <namespace> <topic> <event as JSON>"
    let line = events.next_line(&d);
    assert!(line.contains(" taskd-test /tasks/oom "), "{line}");
    assert!(line.ends_with(r#"{"container_id":"c1"}"#), "{line}");
    drop(events);
    eventually("the subscription to end", &d, || grpc_subscribers(&d) == 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttrpc_forward_on_the_daemon_socket_reaches_grpc_subscribers() {
    use protobuf::MessageField;
    use taskd_proto::ttrpc::v2::event::Envelope;
    use taskd_proto::ttrpc::v2::events::ForwardRequest;
    use taskd_proto::ttrpc::v2::events_ttrpc::EventsClient as TtrpcEventsClient;

    let d = Daemon::start();
    let mut stream = EventsClient::new(d.channel().await)
        .subscribe(SubscribeRequest {
            filters: vec!["namespace==k8s.io".into()],
        })
        .await
        .expect("subscribe")
        .into_inner();

    // what containerd-shim-runc-v2 sends to TTRPC_ADDRESS
    let client = ttrpc::r#async::Client::connect(&format!("unix://{}", d.ttrpc_socket.display()))
        .await
        .expect("connect to the ttrpc socket");
    let mut any = protobuf::well_known_types::any::Any::new();
    any.type_url = "containerd.events.TaskOOM".into();
    any.value = TaskOom {
        container_id: "shim-c".into(),
    }
    .encode_to_vec();
    let mut env = Envelope::new();
    env.timestamp = MessageField::some(protobuf::well_known_types::timestamp::Timestamp::now());
    env.namespace = "k8s.io".into();
    env.topic = "/tasks/oom".into();
    env.event = MessageField::some(any);
    let mut req = ForwardRequest::new();
    req.envelope = MessageField::some(env);
    let mut md = HashMap::new();
    md.insert("containerd-namespace-ttrpc".to_owned(), vec!["k8s.io".to_owned()]);
    TtrpcEventsClient::new(client)
        .forward(ttrpc::context::with_metadata(md), &req)
        .await
        .expect("forward");

    let got = tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("an envelope within 20s")
        .expect("stream ok")
        .expect("stream open");
    assert_eq!(got.namespace, "k8s.io");
    assert_eq!(got.topic, "/tasks/oom");
    assert_eq!(got.event, Some(oom("shim-c")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_is_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let d = Daemon::start();
    let resp = HealthClient::new(d.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(resp.status, ServingStatus::Serving as i32);
}

#[test]
#[ignore = "e2e: needs ctr (containerd)"]
fn sigterm_with_ctr_events_attached_exits_zero_and_ends_the_stream() {
    let mut d = Daemon::start();
    let mut events = CtrEvents::spawn(&d, &[]);
    eventually("ctr events to subscribe", &d, || grpc_subscribers(&d) >= 1);
    let status = d.stop();
    assert_eq!(status.code(), Some(0), "{status}\n{}", d.log());
    // the stream ended: ctr events exits by itself
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if events.child.try_wait().expect("wait ctr").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ctr events still running after the daemon exited"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
