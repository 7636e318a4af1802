//! The runtime's Prometheus series: the shim start and task create histograms, observed by
//! the manager, and `taskd_tasks{state}` / `taskd_shims_running`, computed at scrape from
//! the task table and the connections plus `/proc` (no shim call at scrape time).

use std::sync::{Arc, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

use super::conns::Connections;
use super::shim::{self, TaskTable, lock};
use crate::runtime::Status;

/// The histograms the manager observes.
pub struct RuntimeMetrics {
    pub shim_start: prometheus::Histogram,
    pub task_create: prometheus::Histogram,
}

fn histogram(name: &str, help: &str) -> prometheus::Result<prometheus::Histogram> {
    prometheus::Histogram::with_opts(
        prometheus::HistogramOpts::new(name, help)
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
    )
}

impl RuntimeMetrics {
    pub fn new() -> prometheus::Result<RuntimeMetrics> {
        Ok(RuntimeMetrics {
            shim_start: histogram(
                "taskd_shim_start_duration_seconds",
                "Time to run `<shim> start` and connect to the shim",
            )?,
            task_create: histogram(
                "taskd_task_create_duration_seconds",
                "Time to create a task (bundle, shim, runc create)",
            )?,
        })
    }

    /// Registers the histograms and the scrape-time gauges of `tasks` and `conns`.
    pub fn register(
        &self,
        registry: &prometheus::Registry,
        tasks: &Arc<TaskTable>,
        conns: &Arc<Connections>,
    ) -> prometheus::Result<()> {
        registry.register(Box::new(self.shim_start.clone()))?;
        registry.register(Box::new(self.task_create.clone()))?;
        registry.register(Box::new(StateCollector::new(
            Arc::downgrade(tasks),
            Arc::downgrade(conns),
        )?))?;
        Ok(())
    }
}

fn task_gauge() -> prometheus::Result<prometheus::IntGaugeVec> {
    prometheus::IntGaugeVec::new(
        prometheus::Opts::new("taskd_tasks", "Tasks known to the runtime, by state"),
        &["state"],
    )
}

fn shim_gauge() -> prometheus::Result<prometheus::IntGauge> {
    prometheus::IntGauge::new(
        "taskd_shims_running",
        "Shim processes taskd is connected to (idle warm pool shims included)",
    )
}

/// `taskd_tasks{state}` and `taskd_shims_running`.
struct StateCollector {
    tasks: Weak<TaskTable>,
    conns: Weak<Connections>,
    descs: Vec<Desc>,
}

impl StateCollector {
    fn new(tasks: Weak<TaskTable>, conns: Weak<Connections>) -> prometheus::Result<Self> {
        let mut descs: Vec<Desc> = task_gauge()?.desc().into_iter().cloned().collect();
        descs.extend(shim_gauge()?.desc().into_iter().cloned());
        Ok(StateCollector { tasks, conns, descs })
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (Ok(tasks), Ok(shims)) = (task_gauge(), shim_gauge()) else {
            return Vec::new();
        };
        if let Some(table) = self.tasks.upgrade() {
            for s in [Status::Created, Status::Running, Status::Paused, Status::Stopped] {
                tasks.with_label_values(&[s.as_str()]).set(0);
            }
            for t in lock(&table).values() {
                let state = match t.known_status() {
                    Status::Running | Status::Paused | Status::Created | Status::Pausing
                        if !shim::pid_alive(t.pid()) =>
                    {
                        Status::Stopped
                    }
                    s => s,
                };
                tasks.with_label_values(&[state.as_str()]).inc();
            }
        }
        if let Some(conns) = self.conns.upgrade() {
            shims.set(i64::try_from(conns.live_shims()).unwrap_or(i64::MAX));
        }
        let mut out = tasks.collect();
        out.extend(shims.collect());
        out
    }
}
