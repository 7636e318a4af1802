//! The shape of a metric table row and how a row turns cgroup files into samples.
//!
//! A row is data: `(type, name, unit, help, extra labels, source)`, exactly like
//! containerd's `core/metrics/cgroups/{v1,v2}/*.go` `metric` structs. The fully qualified
//! name is `container_<name>_<unit>` (docker/go-metrics' `Namespace.NewDesc`). The
//! [`Source`] says which file and which key/parser produce the value; evaluating a row reads
//! through [`Files`], which reads each file at most once per task and scrape.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::rc::Rc;

use super::error::CgroupError;
use super::hierarchy::CgroupPaths;
use super::parse;

/// Prometheus value type of a row (containerd's `prometheus.ValueType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    Gauge,
    Counter,
}

/// What a single-value file's `max` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Max {
    /// `max` → `u64::MAX` (cgroup v2 limits, as containerd's cgroups v2 library reads them).
    Inf,
    /// `max` → 0 (v1 `pids.max`, as containerd's cgroups v1 library reads it).
    Zero,
}

/// Where a row's values come from. File names are relative to the task's cgroup directory
/// (on v1, the controller directory named by the file's prefix: `cpuacct.usage` →
/// `cpuacct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A single-value file.
    Single(&'static str, Max),
    /// `key` of a flat keyed file.
    Key(&'static str, &'static str),
    /// `key` of a flat keyed file in USER_HZ ticks, reported in nanoseconds
    /// (`cpuacct.stat`).
    Ticks(&'static str, &'static str),
    /// One value per cpu (`cpuacct.usage_percpu`); labels `cpu`.
    PerCpu(&'static str),
    /// v1 blkio rows from the first of these files that has any; labels
    /// `op, device, major, minor`.
    Blkio(&'static [&'static str]),
    /// `key` of every device of a nested keyed file (`io.stat`); labels `major, minor`.
    Nested(&'static str, &'static str),
    /// `hugetlb.<page>.<suffix>` for every page size; labels `page`.
    Hugetlb(&'static str),
}

impl Source {
    /// The extra labels this source produces, in order.
    pub fn labels(&self) -> &'static [&'static str] {
        match self {
            Source::Single(..) | Source::Key(..) | Source::Ticks(..) => &[],
            Source::PerCpu(_) => &["cpu"],
            Source::Blkio(_) => &["op", "device", "major", "minor"],
            Source::Nested(..) => &["major", "minor"],
            Source::Hugetlb(_) => &["page"],
        }
    }
}

/// One row of a metric table.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub vt: ValueType,
    /// containerd's short name (`cpu_total`).
    pub name: &'static str,
    /// docker/go-metrics unit suffix (`nanoseconds`, `bytes`, `total`, ...).
    pub unit: &'static str,
    pub help: &'static str,
    /// Extra variable labels after `container_id`, `namespace` (and our `runtime`).
    pub labels: &'static [&'static str],
    pub source: Source,
}

// The unit parts of the metric names the v1 and v2 tables share.
pub const BYTES: &str = "bytes";
pub const TOTAL: &str = "total";
pub const LIMIT: &str = "limit";
pub const CURRENT: &str = "current";

/// A table row without extra labels.
pub const fn row(
    vt: ValueType,
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    source: Source,
) -> MetricDef {
    row_l(vt, name, unit, help, &[], source)
}

/// A table row with extra labels.
pub const fn row_l(
    vt: ValueType,
    name: &'static str,
    unit: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
    source: Source,
) -> MetricDef {
    MetricDef {
        vt,
        name,
        unit,
        help,
        labels,
        source,
    }
}

impl MetricDef {
    /// `container_<name>_<unit>`.
    pub fn fq_name(&self) -> String {
        if self.unit.is_empty() {
            format!("container_{}", self.name)
        } else {
            format!("container_{}_{}", self.name, self.unit)
        }
    }
}

/// One value with its extra label values (in the row's `labels` order).
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: f64,
    pub labels: Vec<String>,
}

impl Sample {
    fn plain(value: u64) -> Sample {
        Sample {
            value: value as f64,
            labels: Vec::new(),
        }
    }
}

/// Reads a task's cgroup files, each at most once per scrape. An absent file (controller
/// not enabled, kernel without that file) yields no samples; an absent cgroup directory is
/// [`CgroupError::Gone`].
pub struct Files<'a> {
    paths: &'a CgroupPaths,
    /// `(major, minor)` → `/dev/name`, for the v1 blkio `device` label.
    devices: &'a HashMap<(u64, u64), String>,
    cache: HashMap<String, Option<Rc<str>>>,
    /// Directories known to exist (checked once, on the first absent file in them).
    present: Vec<&'a Path>,
    /// Files known to be absent in this cgroup (from earlier scrapes; a cgroup's files are
    /// fixed when it is created), and the ones found absent now.
    absent: HashSet<String>,
    newly_absent: Vec<String>,
    /// Flat keyed files parsed once (`memory.stat` serves ~30 rows).
    flat: HashMap<String, Rc<parse::Flat>>,
}

impl<'a> Files<'a> {
    pub fn new(
        paths: &'a CgroupPaths,
        devices: &'a HashMap<(u64, u64), String>,
        absent: HashSet<String>,
    ) -> Self {
        Files {
            paths,
            devices,
            cache: HashMap::new(),
            present: Vec::new(),
            absent,
            newly_absent: Vec::new(),
            flat: HashMap::new(),
        }
    }

    /// Files found absent during this scrape (to skip them next time).
    pub fn take_newly_absent(&mut self) -> Vec<String> {
        std::mem::take(&mut self.newly_absent)
    }

    fn dir(&self, file: &str) -> Option<&'a Path> {
        let controller = file.split('.').next().unwrap_or(file);
        self.paths.dir(controller)
    }

    /// The text of `file`, `None` if absent.
    fn read(&mut self, file: &str) -> Result<Option<(Rc<str>, &'a Path)>, CgroupError> {
        let Some(dir) = self.dir(file) else {
            return Ok(None);
        };
        if let Some(hit) = self.cache.get(file) {
            return Ok(hit.clone().map(|t| (t, dir)));
        }
        if self.absent.contains(file) {
            return Ok(None);
        }
        let path = dir.join(file);
        let text: Option<Rc<str>> = match read_small(&path) {
            Ok(t) => Some(t.into()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if !self.present.contains(&dir) {
                    if !dir.exists() {
                        return Err(CgroupError::Gone {
                            path: dir.to_path_buf(),
                        });
                    }
                    self.present.push(dir);
                }
                self.newly_absent.push(file.to_string());
                None
            }
            // ENODEV: the cgroup was removed while we read it.
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {
                return Err(CgroupError::Gone {
                    path: dir.to_path_buf(),
                });
            }
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        self.cache.insert(file.to_string(), text.clone());
        Ok(text.map(|t| (t, dir)))
    }

    /// `key` of the flat keyed `file`; the file is parsed once per scrape.
    fn key(&mut self, file: &str, key: &str) -> Result<Option<u64>, CgroupError> {
        let parsed = match self.flat.get(file) {
            Some(p) => Rc::clone(p),
            None => {
                let Some((text, dir)) = self.read(file)? else {
                    return Ok(None);
                };
                let p = Rc::new(parse::Flat::new(&dir.join(file), &text));
                self.flat.insert(file.to_string(), Rc::clone(&p));
                p
            }
        };
        parsed.get(key)
    }

    /// The samples of one row.
    pub fn samples(&mut self, def: &MetricDef) -> Result<Vec<Sample>, CgroupError> {
        match def.source {
            Source::Single(file, max) => {
                let Some((text, dir)) = self.read(file)? else {
                    return Ok(Vec::new());
                };
                let v = parse::single(&dir.join(file), &text)?.unwrap_or(match max {
                    Max::Inf => u64::MAX,
                    Max::Zero => 0,
                });
                Ok(vec![Sample::plain(v)])
            }
            Source::Key(file, key) => Ok(self.key(file, key)?.map(Sample::plain).into_iter().collect()),
            Source::Ticks(file, key) => {
                let ns = |ticks: u64| (ticks as u128 * 1_000_000_000 / clock_ticks() as u128) as u64;
                Ok(self
                    .key(file, key)?
                    .map(|t| Sample::plain(ns(t)))
                    .into_iter()
                    .collect())
            }
            Source::PerCpu(file) => {
                let Some((text, dir)) = self.read(file)? else {
                    return Ok(Vec::new());
                };
                Ok(parse::list(&dir.join(file), &text)?
                    .into_iter()
                    .enumerate()
                    .map(|(cpu, v)| Sample {
                        value: v as f64,
                        labels: vec![cpu.to_string()],
                    })
                    .collect())
            }
            Source::Blkio(files) => {
                for file in files {
                    let Some((text, dir)) = self.read(file)? else {
                        continue;
                    };
                    let entries = parse::blkio(&dir.join(file), &text)?;
                    if entries.is_empty() {
                        continue;
                    }
                    return Ok(entries
                        .into_iter()
                        .map(|e| Sample {
                            value: e.value as f64,
                            labels: vec![
                                e.op,
                                self.devices.get(&(e.major, e.minor)).cloned().unwrap_or_default(),
                                e.major.to_string(),
                                e.minor.to_string(),
                            ],
                        })
                        .collect());
                }
                Ok(Vec::new())
            }
            Source::Nested(file, key) => {
                let Some((text, dir)) = self.read(file)? else {
                    return Ok(Vec::new());
                };
                Ok(parse::nested(&dir.join(file), &text, key)?
                    .into_iter()
                    .map(|(maj, min, v)| Sample {
                        value: v as f64,
                        labels: vec![maj.to_string(), min.to_string()],
                    })
                    .collect())
            }
            Source::Hugetlb(suffix) => {
                let mut out = Vec::new();
                for page in self.hugetlb_pages()? {
                    let file = format!("hugetlb.{page}.{suffix}");
                    if let Some((text, dir)) = self.read(&file)? {
                        let v = parse::single(&dir.join(&file), &text)?.unwrap_or(u64::MAX);
                        out.push(Sample {
                            value: v as f64,
                            labels: vec![page],
                        });
                    }
                }
                Ok(out)
            }
        }
    }

    /// Page sizes of the hugetlb controller (`hugetlb.2MB.usage_in_bytes` → `2MB`), sorted.
    fn hugetlb_pages(&mut self) -> Result<Vec<String>, CgroupError> {
        let Some(dir) = self.paths.dir("hugetlb") else {
            return Ok(Vec::new());
        };
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(CgroupError::Read {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        };
        let mut pages: Vec<String> = rd
            .filter_map(std::result::Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let page = name.strip_prefix("hugetlb.")?.strip_suffix(".usage_in_bytes")?;
                (!page.contains('.')).then(|| page.to_string())
            })
            .collect();
        pages.sort();
        Ok(pages)
    }
}

/// Reads a small pseudo-file: open, read until EOF, close. Unlike `fs::read_to_string`, no
/// `statx` for a size hint (cgroupfs reports size 0 anyway): one syscall fewer per file.
fn read_small(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = f.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// `sysconf(_SC_CLK_TCK)` (USER_HZ), 100 if unavailable.
fn clock_ticks() -> u64 {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf has no preconditions; it only reads a system constant.
        let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        if t > 0 { t as u64 } else { 100 }
    })
}
