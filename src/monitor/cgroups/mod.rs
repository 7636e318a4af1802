//! The cgroups task monitor (`io.containerd.monitor.task.v1.cgroups`).
//!
//! The tasks service calls [`TaskMonitor::monitor`] when a task is created or recovered
//! (labels carry `runtime`) and [`TaskMonitor::stop`] when it is deleted. The monitor keeps
//! the set of monitored tasks and is a `prometheus::core::Collector` registered in the
//! daemon's registry, so every scrape of `/v1/metrics` collects:
//!
//! ```text
//! scrape ─▶ Registry::gather ─▶ CgroupsMonitor::collect (sync, scraping thread)
//!              snapshot the task set (read lock, no I/O under it)
//!              pool::run: ≤ parallelism OS threads, each task bounded by `timeout`
//!                 task ─▶ locate cgroup (cached) ─▶ read files once ─▶ table rows ─▶ samples
//!              skipped + logged: cgroup gone, unreadable, timed out
//!              merge samples per row into one MetricFamily each
//! ```
//!
//! Design choices:
//! - **Read cgroupfs directly**, never through the shim: no per-scrape ttrpc round trip, so
//!   a stuck or dead shim cannot slow a scrape, and the cost grows linearly with the number
//!   of tasks (see `benches/scrape.rs`, `docs/BENCHMARKS.md`).
//! - **Collect at scrape time** rather than from a cache refreshed in the background: the
//!   values are as fresh as the scrape, and there is no timer to own. `collect` is
//!   synchronous, so reads run on plain threads with a per-task timeout ([`pool`]); a task
//!   whose reads hang is dropped from that scrape and logged, never failing it.
//! - **Tables as data** ([`v1::METRICS`], [`v2::METRICS`]): containerd's names, help
//!   texts, units, types and extra labels, plus the file/key each value comes from.
//! - **Labels** `container_id`, `namespace` (containerd's) and `runtime` from the Monitor
//!   labels. The tasks service re-monitors recovered tasks with their runtime, so `runtime`
//!   survives a daemon restart (containerd loses it there).
//! - **OOM** is read from the kernel's own counters (v1 `memory.oom_control` `oom_kill`, v2
//!   `memory.events` `oom`), not from `/tasks/oom` events: exact across daemon restarts and
//!   events dropped under load, and no subscriber to keep alive.
//!
//! The scrape is blocking work (file reads, at most ~`timeout` when a cgroup hangs); the HTTP
//! handler gathers the registry on tokio's blocking pool, so it never stalls a runtime worker.

mod error;
pub mod hierarchy;
mod parse;
pub mod plugin;
pub mod pool;
pub mod table;
pub mod v1;
pub mod v2;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto;
use serde::{Deserialize, Serialize};

pub use self::error::CgroupError;
pub use self::hierarchy::{CgroupPaths, Hierarchy, Mode};
use self::table::{Files, MetricDef, Sample, ValueType};
use super::{MonitoredTask, TaskMonitor};

/// The labels every series carries, before the row's extra labels.
pub const BASE_LABELS: [&str; 3] = ["container_id", "namespace", "runtime"];

/// `[plugins."io.containerd.monitor.task.v1.cgroups"]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Do not register the collector (containerd's `no_prometheus`): tasks are still tracked.
    pub no_prometheus: bool,
    /// The cgroupfs mount root.
    pub cgroup_root: PathBuf,
    /// Per-task budget for reading its cgroup files during one scrape, in milliseconds.
    pub task_timeout_ms: u64,
    /// At most this many tasks are read at the same time during one scrape.
    pub parallelism: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            no_prometheus: false,
            cgroup_root: PathBuf::from("/sys/fs/cgroup"),
            task_timeout_ms: 2000,
            parallelism: 8,
        }
    }
}

/// How one scrape reads tasks.
#[derive(Debug, Clone, Copy)]
pub struct CollectOptions {
    pub task_timeout: Duration,
    pub parallelism: usize,
}

impl Default for CollectOptions {
    fn default() -> Self {
        let c = Config::default();
        CollectOptions {
            task_timeout: Duration::from_millis(c.task_timeout_ms),
            parallelism: c.parallelism,
        }
    }
}

/// One monitored task.
struct Entry {
    task: MonitoredTask,
    runtime: String,
    /// Located at `monitor` time from the pid; retried from `cgroups_path` while `None`.
    cgroup: Mutex<Option<Arc<CgroupPaths>>>,
    /// Whether a failure was already logged at warn level (later ones go to debug).
    warned: AtomicBool,
    /// Files absent from this task's cgroup, not tried again.
    absent: Mutex<HashSet<String>>,
}

struct Inner {
    hierarchy: Hierarchy,
    table: &'static [MetricDef],
    descs: Vec<Desc>,
    opts: CollectOptions,
    tasks: RwLock<BTreeMap<(String, String), Arc<Entry>>>,
}

/// The cgroups task monitor; cheap to clone (one shared state), one clone lives in the
/// Prometheus registry.
#[derive(Clone)]
pub struct CgroupsMonitor {
    inner: Arc<Inner>,
}

/// What one task contributed to a scrape: samples per table row.
type TaskSamples = Vec<Vec<Sample>>;

impl CgroupsMonitor {
    /// A monitor over `hierarchy` using the table of its mode.
    pub fn new(hierarchy: Hierarchy, opts: CollectOptions) -> Result<Self, CgroupError> {
        let table: &'static [MetricDef] = match hierarchy.mode {
            Mode::V1 => v1::METRICS,
            Mode::V2 => v2::METRICS,
        };
        let descs = table
            .iter()
            .map(|def| {
                let labels = BASE_LABELS
                    .iter()
                    .chain(def.labels)
                    .map(std::string::ToString::to_string)
                    .collect();
                Desc::new(def.fq_name(), def.help.to_string(), labels, HashMap::new()).map_err(|source| {
                    CgroupError::Descriptor {
                        name: def.fq_name(),
                        source,
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(CgroupsMonitor {
            inner: Arc::new(Inner {
                hierarchy,
                table,
                descs,
                opts,
                tasks: RwLock::new(BTreeMap::new()),
            }),
        })
    }

    pub fn mode(&self) -> Mode {
        self.inner.hierarchy.mode
    }

    /// Registers the collector in `registry`.
    pub fn register(&self, registry: &prometheus::Registry) -> Result<(), CgroupError> {
        registry
            .register(Box::new(self.clone()))
            .map_err(CgroupError::Register)
    }

    /// The number of monitored tasks.
    pub fn len(&self) -> usize {
        self.inner
            .tasks
            .read()
            .map(|t| t.len())
            .unwrap_or_else(|p| p.into_inner().len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<Entry>> {
        let guard = self
            .inner
            .tasks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.values().cloned().collect()
    }
}

impl TaskMonitor for CgroupsMonitor {
    fn monitor(&self, task: MonitoredTask) {
        let cgroup = if task.pid > 0 {
            match self.inner.hierarchy.locate_pid(task.pid) {
                Ok(found) => found.map(Arc::new),
                Err(e) => {
                    tracing::warn!(namespace = %task.namespace, id = %task.id, pid = task.pid, error = %e,
                        "cgroups monitor: cannot read the task's cgroup from procfs; will use cgroups_path");
                    None
                }
            }
        } else {
            None
        };
        let runtime = task.labels.get("runtime").cloned().unwrap_or_default();
        let key = (task.namespace.clone(), task.id.clone());
        let entry = Arc::new(Entry {
            task,
            runtime,
            cgroup: Mutex::new(cgroup),
            warned: AtomicBool::new(false),
            absent: Mutex::new(HashSet::new()),
        });
        let mut guard = self
            .inner
            .tasks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.insert(key, entry);
    }

    fn stop(&self, namespace: &str, id: &str) {
        let mut guard = self
            .inner
            .tasks
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.remove(&(namespace.to_string(), id.to_string()));
    }
}

impl Inner {
    /// The task's cgroup: cached, else from `cgroups_path` (the pid is not reused for this:
    /// it may belong to another process by now).
    fn cgroup(&self, entry: &Entry) -> Result<Arc<CgroupPaths>, CgroupError> {
        let mut guard = entry
            .cgroup
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = guard.as_ref() {
            return Ok(Arc::clone(p));
        }
        let found = self.hierarchy.locate(0, entry.task.cgroups_path.as_deref())?;
        let found = Arc::new(found.ok_or_else(|| CgroupError::NotLocated {
            namespace: entry.task.namespace.clone(),
            id: entry.task.id.clone(),
            pid: entry.task.pid,
        })?);
        *guard = Some(Arc::clone(&found));
        Ok(found)
    }

    /// Reads every row for one task.
    fn read_task(
        &self,
        entry: &Entry,
        devices: &HashMap<(u64, u64), String>,
    ) -> Result<TaskSamples, CgroupError> {
        let paths = self.cgroup(entry)?;
        let absent = entry
            .absent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut files = Files::new(&paths, devices, absent);
        let samples = self.table.iter().map(|def| files.samples(def)).collect();
        let newly_absent = files.take_newly_absent();
        if !newly_absent.is_empty() {
            entry
                .absent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(newly_absent);
        }
        samples
    }
}

impl CgroupsMonitor {
    /// One collection: every task's samples (tasks that fail or time out are skipped and
    /// logged), merged into one family per table row.
    pub fn collect_families(&self) -> Vec<proto::MetricFamily> {
        let entries = self.snapshot();
        if entries.is_empty() {
            return Vec::new();
        }
        let devices = Arc::new(match self.inner.hierarchy.mode {
            Mode::V1 => std::fs::read_to_string(self.inner.hierarchy.proc_root.join("partitions"))
                .map(|t| parse::partitions(&t))
                .unwrap_or_default(),
            Mode::V2 => HashMap::new(),
        });
        let inner = Arc::clone(&self.inner);
        let outcomes = pool::run(
            entries.clone(),
            self.inner.opts.parallelism,
            self.inner.opts.task_timeout,
            move |entry: &Arc<Entry>| inner.read_task(entry, &devices),
        );
        let mut families: Vec<proto::MetricFamily> = self
            .inner
            .table
            .iter()
            .map(|def| {
                let mut mf = proto::MetricFamily::default();
                mf.set_name(def.fq_name());
                mf.set_help(def.help.to_string());
                mf.set_field_type(match def.vt {
                    ValueType::Gauge => proto::MetricType::GAUGE,
                    ValueType::Counter => proto::MetricType::COUNTER,
                });
                mf
            })
            .collect();
        for (entry, outcome) in entries.iter().zip(outcomes) {
            let samples = match outcome {
                pool::Outcome::Done(Ok(samples)) => {
                    entry.warned.store(false, Ordering::Relaxed);
                    samples
                }
                pool::Outcome::Done(Err(e)) => {
                    self.skipped(entry, &e.to_string());
                    continue;
                }
                pool::Outcome::TimedOut => {
                    let why = format!(
                        "reading its cgroup took longer than {:?}",
                        self.inner.opts.task_timeout
                    );
                    self.skipped(entry, &why);
                    continue;
                }
                pool::Outcome::NotStarted => {
                    self.skipped(entry, "no stats thread left (other tasks' cgroup reads hang)");
                    continue;
                }
            };
            for ((def, mf), row) in self.inner.table.iter().zip(families.iter_mut()).zip(samples) {
                for s in row {
                    mf.mut_metric().push(metric(def, entry, s));
                }
            }
        }
        families.retain(|mf| !mf.get_metric().is_empty());
        families
    }

    fn skipped(&self, entry: &Entry, why: &str) {
        let t = &entry.task;
        if entry.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(namespace = %t.namespace, id = %t.id, reason = why, "cgroups monitor: task skipped in scrape");
        } else {
            tracing::warn!(namespace = %t.namespace, id = %t.id, reason = why, "cgroups monitor: task skipped in scrape");
        }
    }
}

fn label(name: &str, value: &str) -> proto::LabelPair {
    let mut l = proto::LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

/// One sample as a Prometheus metric, labels sorted by name.
fn metric(def: &MetricDef, entry: &Entry, s: Sample) -> proto::Metric {
    let mut labels = vec![
        label("container_id", &entry.task.id),
        label("namespace", &entry.task.namespace),
        label("runtime", &entry.runtime),
    ];
    labels.extend(def.labels.iter().zip(s.labels.iter()).map(|(n, v)| label(n, v)));
    labels.sort_by(|a, b| a.name().cmp(b.name()));
    let mut m = proto::Metric::from_label(labels);
    match def.vt {
        ValueType::Gauge => {
            let mut g = proto::Gauge::default();
            g.set_value(s.value);
            m.set_gauge(g);
        }
        ValueType::Counter => {
            let mut c = proto::Counter::default();
            c.set_value(s.value);
            m.set_counter(c);
        }
    }
    m
}

impl Collector for CgroupsMonitor {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.descs.iter().collect()
    }

    /// Blocking file reads, bounded by the per-task timeout (callers gather off the async
    /// runtime: see `server::http`).
    fn collect(&self) -> Vec<proto::MetricFamily> {
        self.collect_families()
    }
}
