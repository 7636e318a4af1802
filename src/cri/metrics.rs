//! CRI metrics beyond the per-operation ones of `instrument.rs`:
//!
//! ```text
//! taskd_cri_pod_start_duration_seconds{runtime_handler}  RunPodSandbox → the pod's first
//!                                                        container RUNNING (histogram)
//! taskd_cri_image_pulls_total{result}                    PullImage outcomes: success | failure
//! taskd_cri_image_pull_bytes_total                       size of the images PullImage pulled
//! taskd_cri_image_pull_throughput_bytes_per_second       per successful pull: size / duration
//! taskd_cri_cni_operation_duration_seconds{plugin,command}  one CNI plugin exec (ADD, DEL, CHECK)
//! taskd_cri_cni_operation_errors_total{plugin,command}   CNI plugin execs that failed
//! taskd_cri_sandboxes{state}, taskd_cri_containers{state}   counts by state, read from the CRI
//!                                                        stores at scrape time (`StateCollector`)
//! ```

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Pod start buckets (seconds).
const POD_START_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// CNI plugin exec buckets (seconds): bridge + host-local take milliseconds.
const CNI_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Pull throughput buckets (bytes per second): 64 KiB/s … 1 GiB/s.
const THROUGHPUT_BUCKETS: &[f64] = &[
    65536.0,
    262144.0,
    1048576.0,
    4194304.0,
    16777216.0,
    67108864.0,
    268435456.0,
    1073741824.0,
];

/// The CNI plugin metrics, shared by every `Cni` the service builds.
#[derive(Clone)]
pub struct CniMetrics {
    pub duration: HistogramVec,
    pub errors: IntCounterVec,
}

pub struct CriMetrics {
    pub pod_start: HistogramVec,
    pub image_pulls: IntCounterVec,
    pub image_pull_bytes: IntCounter,
    pub image_pull_throughput: Histogram,
    pub cni: CniMetrics,
}

impl CriMetrics {
    /// The metrics, not registered anywhere yet.
    pub fn new() -> Result<CriMetrics, prometheus::Error> {
        Ok(CriMetrics {
            pod_start: HistogramVec::new(
                HistogramOpts::new(
                    "taskd_cri_pod_start_duration_seconds",
                    "Time from RunPodSandbox to the pod's first running container, by runtime handler",
                )
                .buckets(POD_START_BUCKETS.to_vec()),
                &["runtime_handler"],
            )?,
            image_pulls: IntCounterVec::new(
                Opts::new(
                    "taskd_cri_image_pulls_total",
                    "CRI image pulls, by result (success, failure)",
                ),
                &["result"],
            )?,
            image_pull_bytes: IntCounter::new(
                "taskd_cri_image_pull_bytes_total",
                "Total size of the images CRI PullImage pulled",
            )?,
            image_pull_throughput: Histogram::with_opts(
                HistogramOpts::new(
                    "taskd_cri_image_pull_throughput_bytes_per_second",
                    "Throughput of successful CRI image pulls: image size over pull duration",
                )
                .buckets(THROUGHPUT_BUCKETS.to_vec()),
            )?,
            cni: CniMetrics {
                duration: HistogramVec::new(
                    HistogramOpts::new(
                        "taskd_cri_cni_operation_duration_seconds",
                        "Latency of one CNI plugin exec, by plugin type and command (ADD, DEL, CHECK)",
                    )
                    .buckets(CNI_BUCKETS.to_vec()),
                    &["plugin", "command"],
                )?,
                errors: IntCounterVec::new(
                    Opts::new(
                        "taskd_cri_cni_operation_errors_total",
                        "CNI plugin execs that failed (error result, timeout, missing binary), by plugin type and command",
                    ),
                    &["plugin", "command"],
                )?,
            },
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.pod_start.clone()))?;
        registry.register(Box::new(self.image_pulls.clone()))?;
        registry.register(Box::new(self.image_pull_bytes.clone()))?;
        registry.register(Box::new(self.image_pull_throughput.clone()))?;
        registry.register(Box::new(self.cni.duration.clone()))?;
        registry.register(Box::new(self.cni.errors.clone()))
    }
}
