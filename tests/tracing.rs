//! OpenTelemetry tracing (`[tracing]`, src/telemetry.rs) end to end: a real taskd exports
//! its spans over OTLP/gRPC to a collector stand-in on loopback that shares none of taskd's
//! HTTP/2 code (`tests/clients/otlp_collector.py`: Python grpcio + PyPI opentelemetry-proto).
//! A client sends a W3C `traceparent`; the collector must receive taskd's server span as its
//! child, and the CRI operation's span with its CNI and shim children below it.
//!
//! Run: `TASKD_E2E=1 cargo test --test tracing -- --include-ignored` (as root; needs what
//! `scripts/test.sh` installs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/clients.rs"]
mod clients;
#[path = "support/cri_world.rs"]
mod cri_world;
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clients::OtlpCollector;
use cri_world::CriWorld;
use k8s_cri::v1 as cri;
use serde_json::Value;
use support::Daemon;
use taskd_proto::containerd::services::version::v1::version_client::VersionClient;

/// Subnets 10.89.<160..209>.0/24 for this binary's worlds.
const OCTETS: u8 = 160;

/// A fresh (trace id, span id) for the client's `traceparent`.
fn client_ids() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    (trace, span)
}

fn traceparent(trace: &str, span: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("00-{trace}-{span}-01")
        .parse()
        .expect("a traceparent is ASCII")
}

/// The spans received, indexed by span id.
struct Spans(Vec<Value>);

impl Spans {
    fn named(&self, name: &str) -> Vec<&Value> {
        self.0.iter().filter(|s| s["name"] == name).collect()
    }

    fn by_id(&self) -> HashMap<&str, &Value> {
        self.0
            .iter()
            .filter_map(|s| Some((s["span_id"].as_str()?, s)))
            .collect()
    }

    /// Whether `span` is below the span `ancestor` (through its parents).
    fn descends(&self, span: &Value, ancestor: &str) -> bool {
        let ids = self.by_id();
        let mut cur = span["parent_span_id"].as_str().unwrap_or_default();
        for _ in 0..64 {
            if cur == ancestor {
                return true;
            }
            match ids.get(cur) {
                Some(p) => cur = p["parent_span_id"].as_str().unwrap_or_default(),
                None => return false,
            }
        }
        false
    }

    /// The spans named `name` below `ancestor`.
    fn below(&self, name: &str, ancestor: &str) -> Vec<&Value> {
        self.named(name)
            .into_iter()
            .filter(|s| self.descends(s, ancestor))
            .collect()
    }

    fn dump(&self) -> String {
        self.0
            .iter()
            .map(|s| {
                format!(
                    "{} {} parent={} trace={}",
                    s["name"], s["span_id"], s["parent_span_id"], s["trace_id"]
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Polls the collector until `done` holds for what it received (the batch exporter sends
/// every 5 s); panics with what arrived after `limit`.
async fn wait_for(
    collector: &OtlpCollector,
    what: &str,
    limit: Duration,
    done: impl Fn(&Spans) -> bool,
) -> Spans {
    let deadline = Instant::now() + limit;
    loop {
        let spans = Spans(collector.spans());
        if done(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}; received:\n{}",
            spans.dump()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The server span of `method` whose parent is the client's span.
fn server_span<'a>(spans: &'a Spans, method: &str, trace: &str, parent: &str) -> Option<&'a Value> {
    spans
        .named(method)
        .into_iter()
        .find(|s| s["trace_id"] == trace && s["parent_span_id"] == parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: root, runc, shim, CNI plugins, docker-registry, skopeo, python3 grpcio + opentelemetry-proto"]
async fn run_pod_sandbox_continues_the_callers_trace_with_cni_and_shim_children() {
    let collector = OtlpCollector::start();
    let w = CriWorld::start_with_tables(
        OCTETS,
        "",
        &format!(
            "[tracing]\nendpoint = {:?}\nservice_name = \"taskd-e2e\"\n",
            collector.endpoint()
        ),
    );
    let mut rt = w.runtime().await;
    let (trace, parent) = client_ids();
    let cfg = w.pod_config("traced");
    let mut req = tonic::Request::new(cri::RunPodSandboxRequest {
        config: Some(cfg.clone()),
        runtime_handler: String::new(),
    });
    req.metadata_mut()
        .insert("traceparent", traceparent(&trace, &parent));
    let pod = rt
        .run_pod_sandbox(req)
        .await
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e:?}\n--- server log ---\n{}", w.server_log()))
        .into_inner()
        .pod_sandbox_id;

    const RUN: &str = "runtime.v1.RuntimeService/RunPodSandbox";
    let spans = wait_for(
        &collector,
        "RunPodSandbox's spans",
        Duration::from_secs(60),
        |s| {
            let Some(server) = server_span(s, RUN, &trace, &parent) else {
                return false;
            };
            let id = server["span_id"].as_str().unwrap_or_default();
            [
                "RunPodSandbox",
                "cni.ADD",
                "image.pull",
                "shim.Create",
                "shim.Start",
            ]
            .iter()
            .all(|n| !s.below(n, id).is_empty())
        },
    )
    .await;
    // taskd's server span continues the client's trace, as the client's span's child.
    let server = server_span(&spans, RUN, &trace, &parent).expect("waited for it");
    assert_eq!(server["kind"], "server", "{server}");
    assert_eq!(server["service_name"], "taskd-e2e", "{server}");
    assert_eq!(server["status"], 0, "not failed: {server}");
    let server_id = server["span_id"].as_str().unwrap_or_default();
    // The CRI operation's span is the server span's child.
    let op = spans.below("RunPodSandbox", server_id);
    assert_eq!(op.len(), 1, "{}", spans.dump());
    assert_eq!(op[0]["parent_span_id"], server_id, "{}", op[0]);
    assert_eq!(op[0]["attributes"]["operation"], "RunPodSandbox", "{}", op[0]);
    assert_eq!(op[0]["trace_id"], trace.as_str());
    let op_id = op[0]["span_id"].as_str().unwrap_or_default();
    // CNI: the bridge plugin's ADD, a client span below the operation.
    let cni = spans.below("cni.ADD", op_id);
    assert!(
        cni.iter()
            .any(|s| s["attributes"]["plugin"] == "bridge" && s["kind"] == "client"),
        "{cni:?}"
    );
    // The shim: the pause task created and started, for this pod.
    for name in ["shim.Create", "shim.Start"] {
        let shim = spans.below(name, op_id);
        assert!(
            shim.iter().any(|s| s["attributes"]["id"] == pod.as_str()),
            "{name} of {pod}: {shim:?}"
        );
    }
    // The pause image, not yet in this world's taskd, is pulled inside the call: its blobs
    // are fetched below the pull.
    let pull = spans.below("image.pull", op_id);
    assert!(
        pull.len() == 1
            && pull[0]["attributes"]["image"]
                .as_str()
                .is_some_and(|i| i.contains("pause")),
        "{pull:?}"
    );
    let pull_id = pull[0]["span_id"].as_str().unwrap_or_default();
    assert!(
        spans.below("image.fetch", pull_id).len() >= 2,
        "config and layer: {}",
        spans.dump()
    );
    // Every span of the call is inside the client's trace and ends after it started.
    for s in spans.0.iter().filter(|s| spans.descends(s, server_id)) {
        assert_eq!(s["trace_id"], trace.as_str(), "{s}");
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
    }

    // A call without a traceparent starts a trace of its own; StopPodSandbox's CNI DEL is
    // in it.
    rt.stop_pod_sandbox(cri::StopPodSandboxRequest {
        pod_sandbox_id: pod.clone(),
    })
    .await
    .unwrap_or_else(|e| panic!("StopPodSandbox: {e:?}"));
    const STOP: &str = "runtime.v1.RuntimeService/StopPodSandbox";
    let spans = wait_for(
        &collector,
        "StopPodSandbox's spans",
        Duration::from_secs(60),
        |s| {
            s.named(STOP).iter().any(|stop| {
                !s.below("cni.DEL", stop["span_id"].as_str().unwrap_or_default())
                    .is_empty()
            })
        },
    )
    .await;
    let stop = spans.named(STOP)[0];
    assert_eq!(stop["parent_span_id"], "", "a root: {stop}");
    assert_ne!(stop["trace_id"], trace.as_str(), "{stop}");
    rt.remove_pod_sandbox(cri::RemovePodSandboxRequest { pod_sandbox_id: pod })
        .await
        .unwrap_or_else(|e| panic!("RemovePodSandbox: {e:?}"));
}

/// The OpenTelemetry SDK's batch exporter thread (its name as /proc shows it, 15 bytes).
const EXPORT_THREAD: &str = "OpenTelemetry.T";

fn threads(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the daemon's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|c| c.trim().to_owned())
        .collect()
}

/// Export is off by default (no exporter thread), and the containerd API on the main socket
/// continues a caller's trace too; `[tracing]` is not changed by a SIGHUP; the last spans are
/// sent when taskd stops.
// Multi-threaded: the client's connection closes while this thread waits for taskd to stop
// (else taskd's drain waits its grace period for it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs python3 with grpcio and opentelemetry-proto (pip)"]
async fn export_is_off_by_default_and_the_containerd_api_continues_a_trace() {
    support::require(&[support::Need::Bin("python3", "python3")]);
    let mut off = Daemon::start();
    assert!(
        !threads(off.pid()).iter().any(|t| t == EXPORT_THREAD),
        "{:?}",
        threads(off.pid())
    );
    assert!(!off.log().contains("exporting traces"), "{}", off.log());
    assert!(off.stop().success());

    let collector = OtlpCollector::start();
    let mut d = Daemon::start_with(&format!("[tracing]\nendpoint = {:?}\n", collector.endpoint()));
    assert!(
        threads(d.pid()).iter().any(|t| t == EXPORT_THREAD),
        "{:?}",
        threads(d.pid())
    );
    let (trace, parent) = client_ids();
    let mut req = tonic::Request::new(());
    req.metadata_mut()
        .insert("traceparent", traceparent(&trace, &parent));
    VersionClient::new(d.channel().await)
        .version(req)
        .await
        .expect("containerd Version");
    // [tracing] needs a restart: a SIGHUP names it and keeps the running export.
    let reload = d.reload_with(|cfg| {
        cfg["tracing"]
            .as_table_mut()
            .expect("[tracing] is a table")
            .insert("service_name".into(), "renamed".into());
    });
    assert!(
        reload
            .lines()
            .any(|l| l.contains("cannot change live") && l.contains("key=tracing")),
        "{reload}"
    );
    // SIGTERM: the spans still queued go out before taskd exits.
    assert!(d.stop().success(), "{}", d.log());
    let spans = Spans(collector.spans());
    let version = server_span(
        &spans,
        "containerd.services.version.v1.Version/Version",
        &trace,
        &parent,
    )
    .unwrap_or_else(|| panic!("no Version span continuing the client's trace:\n{}", spans.dump()));
    assert_eq!(version["kind"], "server", "{version}");
    assert_eq!(
        version["service_name"], "taskd",
        "the default service name: {version}"
    );
}
