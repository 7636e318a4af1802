//! CRI metrics beyond the per-operation ones of `instrument.rs`:
//!
//! ```text
//! taskd_cri_pod_start_duration_seconds{runtime_handler}  RunPodSandbox → the pod's first
//!                                                        container RUNNING (histogram)
//! taskd_cri_image_pulls_total{result}                    PullImage outcomes: success | failure
//! taskd_cri_image_pull_bytes_total                       size of the images PullImage pulled
//! ```

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// Pod start buckets (seconds).
const POD_START_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

pub struct CriMetrics {
    pub pod_start: HistogramVec,
    pub image_pulls: IntCounterVec,
    pub image_pull_bytes: IntCounter,
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
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.pod_start.clone()))?;
        registry.register(Box::new(self.image_pulls.clone()))?;
        registry.register(Box::new(self.image_pull_bytes.clone()))
    }
}
