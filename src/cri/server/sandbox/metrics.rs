//! `ListMetricDescriptors` / `ListPodSandboxMetrics` / `StreamPodSandboxMetrics`: kubelet's
//! CRI-provided metrics (the `PodAndContainerStatsFromCRI` path), with cAdvisor's metric
//! names, as containerd 2.2 serves them.
//!
//! Every metric this file serves is described by [`ListMetricDescriptors`], and its label
//! values come in the order of its descriptor's label keys (kubelet builds Prometheus
//! descriptors from the keys and pairs the values by position):
//!
//! ```text
//! container metrics  container, pod, namespace, id [, extra]   from the task's cgroup sample
//! pod metrics        container="", pod, namespace, id=pod id, interface   network, from the netns
//! ```
//!
//! Counters of seconds are whole seconds (the CRI value is an unsigned integer), as
//! containerd reports them. Only ready pods are listed.

use std::time::SystemTime;

use taskd_proto::cri::v1 as cri;

use super::stats::pod_interfaces;
use crate::cri::convert::nanos;
use crate::cri::error::CriError;
use crate::cri::service::CriService;
use crate::cri::stats::{NetDev, Sample, decode_all};
use crate::cri::store::container::{Container, ContainerState};
use crate::cri::store::sandbox::{Sandbox, SandboxState};

/// The label keys every metric starts with.
const BASE_LABELS: [&str; 4] = ["container", "pod", "namespace", "id"];

type Getter = fn(&Sample) -> Option<u64>;

/// One container series: name, help, type, extra label (key, value) pairs, value.
struct Def {
    name: &'static str,
    help: &'static str,
    kind: cri::MetricType,
    extra: &'static [(&'static str, &'static str)],
    get: Getter,
}

const fn counter(name: &'static str, help: &'static str, get: Getter) -> Def {
    Def {
        name,
        help,
        kind: cri::MetricType::Counter,
        extra: &[],
        get,
    }
}

const fn gauge(name: &'static str, help: &'static str, get: Getter) -> Def {
    Def {
        name,
        help,
        kind: cri::MetricType::Gauge,
        extra: &[],
        get,
    }
}

fn secs(ns: Option<u64>) -> Option<u64> {
    ns.map(|n| n / 1_000_000_000)
}

const CONTAINER_DEFS: &[Def] = &[
    counter(
        "container_cpu_usage_seconds_total",
        "Cumulative CPU time consumed in seconds.",
        |s| secs(s.cpu_total_ns),
    ),
    counter(
        "container_cpu_user_seconds_total",
        "Cumulative user CPU time consumed in seconds.",
        |s| secs(s.cpu_user_ns),
    ),
    counter(
        "container_cpu_system_seconds_total",
        "Cumulative system CPU time consumed in seconds.",
        |s| secs(s.cpu_system_ns),
    ),
    counter(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        |s| s.cfs_periods,
    ),
    counter(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        |s| s.cfs_throttled_periods,
    ),
    counter(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        |s| secs(s.cfs_throttled_ns),
    ),
    gauge(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed",
        |s| s.mem_usage,
    ),
    gauge(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes",
        |s| s.mem_max_usage,
    ),
    gauge(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        |s| s.mem_working_set,
    ),
    gauge("container_memory_rss", "Size of RSS in bytes.", |s| s.mem_rss),
    gauge(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        |s| s.mem_cache,
    ),
    gauge(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        |s| s.mem_mapped_file,
    ),
    gauge("container_memory_swap", "Container swap usage in bytes.", |s| {
        s.mem_swap
    }),
    counter(
        "container_memory_failcnt",
        "Number of memory usage hits limits",
        |s| s.mem_failcnt,
    ),
    gauge(
        "container_memory_total_active_file_bytes",
        "Current total active file in bytes.",
        |s| s.mem_active_file,
    ),
    gauge(
        "container_memory_total_inactive_file_bytes",
        "Current total inactive file in bytes.",
        |s| s.mem_inactive_file,
    ),
    Def {
        name: "container_memory_failures_total",
        help: "Cumulative count of memory allocation failures.",
        kind: cri::MetricType::Counter,
        extra: &[("failure_type", "pgfault"), ("scope", "container")],
        get: |s| s.page_faults,
    },
    Def {
        name: "container_memory_failures_total",
        help: "Cumulative count of memory allocation failures.",
        kind: cri::MetricType::Counter,
        extra: &[("failure_type", "pgmajfault"), ("scope", "container")],
        get: |s| s.major_page_faults,
    },
    gauge(
        "container_processes",
        "Number of processes running inside the container.",
        |s| s.processes,
    ),
    counter(
        "container_oom_events_total",
        "Count of out of memory events observed for the container",
        |s| s.oom_kills,
    ),
];

type NetGetter = fn(&NetDev) -> u64;

/// Pod network series (label `interface` after the base labels).
const NETWORK_DEFS: &[(&str, &str, NetGetter)] = &[
    (
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received",
        |d| d.rx_bytes,
    ),
    (
        "container_network_receive_packets_total",
        "Cumulative count of packets received",
        |d| d.rx_packets,
    ),
    (
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving",
        |d| d.rx_dropped,
    ),
    (
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving",
        |d| d.rx_errors,
    ),
    (
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted",
        |d| d.tx_bytes,
    ),
    (
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted",
        |d| d.tx_packets,
    ),
    (
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting",
        |d| d.tx_dropped,
    ),
    (
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting",
        |d| d.tx_errors,
    ),
];

const START_TIME: &str = "container_start_time_seconds";
const LAST_SEEN: &str = "container_last_seen";

fn labels(extra: &[&str]) -> Vec<String> {
    BASE_LABELS
        .iter()
        .chain(extra)
        .map(std::string::ToString::to_string)
        .collect()
}

/// Every descriptor, one per metric name.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    let mut out: Vec<cri::MetricDescriptor> = Vec::new();
    for d in CONTAINER_DEFS {
        if out.iter().any(|o| o.name == d.name) {
            continue;
        }
        let extra: Vec<&str> = d.extra.iter().map(|(k, _)| *k).collect();
        out.push(cri::MetricDescriptor {
            name: d.name.into(),
            help: d.help.into(),
            label_keys: labels(&extra),
        });
    }
    for (name, help) in [
        (
            START_TIME,
            "Start time of the container since unix epoch in seconds.",
        ),
        (LAST_SEEN, "Last time a container was seen by the exporter"),
    ] {
        out.push(cri::MetricDescriptor {
            name: name.into(),
            help: help.into(),
            label_keys: labels(&[]),
        });
    }
    for (name, help, _) in NETWORK_DEFS {
        out.push(cri::MetricDescriptor {
            name: (*name).into(),
            help: (*help).into(),
            label_keys: labels(&["interface"]),
        });
    }
    out
}

fn metric(name: &str, kind: cri::MetricType, ts: i64, values: Vec<String>, v: u64) -> cri::Metric {
    cri::Metric {
        name: name.into(),
        timestamp: ts,
        metric_type: kind as i32,
        label_values: values,
        value: Some(cri::UInt64Value { value: v }),
    }
}

fn pod_meta(pod: &Sandbox) -> (String, String) {
    let m = pod.config.metadata.clone().unwrap_or_default();
    (m.name, m.namespace)
}

/// The container's series from its sample (plus start time and last seen).
fn container_metrics(
    pod: &Sandbox,
    c: &Container,
    sample: Option<&Sample>,
    now: SystemTime,
) -> cri::ContainerMetrics {
    let ts = nanos(Some(now));
    let (pod_name, namespace) = pod_meta(pod);
    let name = c
        .config
        .metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default();
    let base = vec![name, pod_name, namespace, c.id.clone()];
    let mut metrics = Vec::new();
    if let Some(s) = sample {
        for d in CONTAINER_DEFS {
            if let Some(v) = (d.get)(s) {
                let mut values = base.clone();
                values.extend(d.extra.iter().map(|(_, v)| v.to_string()));
                metrics.push(metric(d.name, d.kind, ts, values, v));
            }
        }
    }
    if let Some(started) = c
        .started_at
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
    {
        metrics.push(metric(
            START_TIME,
            cri::MetricType::Gauge,
            ts,
            base.clone(),
            started.as_secs(),
        ));
    }
    let seen = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    metrics.push(metric(LAST_SEEN, cri::MetricType::Gauge, ts, base, seen));
    cri::ContainerMetrics {
        container_id: c.id.clone(),
        metrics,
    }
}

/// The pod's own series: its network interfaces.
fn pod_metrics(pod: &Sandbox, devs: &[NetDev], ts: i64) -> Vec<cri::Metric> {
    let (pod_name, namespace) = pod_meta(pod);
    let mut out = Vec::new();
    for d in devs {
        for (name, _, get) in NETWORK_DEFS {
            let values = vec![
                String::new(),
                pod_name.clone(),
                namespace.clone(),
                pod.id.clone(),
                d.name.clone(),
            ];
            out.push(metric(name, cri::MetricType::Counter, ts, values, get(d)));
        }
    }
    out
}

impl CriService {
    pub async fn list_metric_descriptors(
        &self,
        _req: cri::ListMetricDescriptorsRequest,
    ) -> Result<cri::ListMetricDescriptorsResponse, CriError> {
        Ok(cri::ListMetricDescriptorsResponse {
            descriptors: descriptors(),
        })
    }

    pub async fn list_pod_sandbox_metrics(
        &self,
        _req: cri::ListPodSandboxMetricsRequest,
    ) -> Result<cri::ListPodSandboxMetricsResponse, CriError> {
        let runner = self.container_runtime("ListPodSandboxMetrics")?;
        let pods: Vec<Sandbox> = self
            .sandboxes
            .list()
            .into_iter()
            .filter(|p| p.state == SandboxState::Ready)
            .collect();
        let containers: Vec<Container> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| c.state == ContainerState::Running && pods.iter().any(|p| p.id == c.sandbox_id))
            .collect();
        let ids: Vec<String> = containers.iter().map(|c| c.id.clone()).collect();
        let samples = decode_all(&runner.stats(&ids).await?);
        let now = SystemTime::now();
        let ts = nanos(Some(now));
        let running: Vec<&Container> = containers.iter().collect();
        let pod_metrics = pods
            .iter()
            .map(|pod| cri::PodSandboxMetrics {
                pod_sandbox_id: pod.id.clone(),
                metrics: pod_metrics(pod, &pod_interfaces(pod, &running), ts),
                container_metrics: containers
                    .iter()
                    .filter(|c| c.sandbox_id == pod.id)
                    .map(|c| container_metrics(pod, c, samples.get(&c.id).map(|(_, s)| s), now))
                    .collect(),
            })
            .collect();
        Ok(cri::ListPodSandboxMetricsResponse { pod_metrics })
    }

    pub async fn stream_pod_sandbox_metrics(
        &self,
        req: cri::StreamPodSandboxMetricsRequest,
    ) -> Result<crate::cri::server::BoxStream<cri::StreamPodSandboxMetricsResponse>, CriError> {
        let _ = req;
        let all = self
            .list_pod_sandbox_metrics(cri::ListPodSandboxMetricsRequest {})
            .await?
            .pod_metrics;
        Ok(crate::cri::server::chunked(all, |pod_sandbox_metrics| {
            cri::StreamPodSandboxMetricsResponse { pod_sandbox_metrics }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::service::testing;

    #[test]
    fn every_served_metric_is_described_with_matching_label_count() {
        let desc = descriptors();
        let mut names: Vec<&str> = desc.iter().map(|d| d.name.as_str()).collect();
        names.sort();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "one descriptor per name");

        let pod = testing::sandbox("p1", "web", SandboxState::Ready, &[], 1);
        let mut c = testing::container("c1", "p1", ContainerState::Running, &[]);
        c.started_at = Some(SystemTime::now());
        let sample = Sample {
            cpu_total_ns: Some(3_500_000_000),
            page_faults: Some(9),
            major_page_faults: Some(1),
            mem_usage: Some(10),
            processes: Some(2),
            ..Default::default()
        };
        let cm = container_metrics(&pod, &c, Some(&sample), SystemTime::now());
        let net = pod_metrics(
            &pod,
            &[NetDev {
                name: "eth0".into(),
                rx_bytes: 5,
                ..Default::default()
            }],
            1,
        );
        assert_eq!(net.len(), NETWORK_DEFS.len());
        for m in cm.metrics.iter().chain(&net) {
            let d = desc
                .iter()
                .find(|d| d.name == m.name)
                .unwrap_or_else(|| panic!("{} served but not described", m.name));
            assert_eq!(d.label_keys.len(), m.label_values.len(), "{}", m.name);
        }
        let cpu = cm
            .metrics
            .iter()
            .find(|m| m.name == "container_cpu_usage_seconds_total")
            .unwrap();
        assert_eq!(cpu.value.as_ref().unwrap().value, 3);
        assert_eq!(cpu.label_values, vec!["c1", "web", "default", "c1"]);
        let faults: Vec<_> = cm
            .metrics
            .iter()
            .filter(|m| m.name == "container_memory_failures_total")
            .collect();
        assert_eq!(faults.len(), 2);
        assert!(cm.metrics.iter().any(|m| m.name == START_TIME));
    }
}
