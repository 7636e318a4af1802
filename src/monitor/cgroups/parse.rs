//! Parsers for the cgroupfs and procfs file formats the tables read. Pure functions over
//! the file text; the path is only carried for error messages.
//!
//! | format | example | used by |
//! |---|---|---|
//! | single value | `123\n`, `max\n` | `memory.usage_in_bytes`, `memory.max`, `pids.max` |
//! | flat keyed | `key value` per line | `memory.stat`, `cpu.stat`, `memory.events`, `memory.oom_control` |
//! | space list | `v0 v1 v2` | `cpuacct.usage_percpu` |
//! | nested keyed | `maj:min k=v k=v` | `io.stat` |
//! | blkio | `maj:min Op value` / `maj:min value` / `Total value` | `blkio.*_recursive` |
//! | proc cgroup | `id:ctrl,ctrl:/path` | `/proc/<pid>/cgroup` |
//! | partitions | `major minor #blocks name` | `/proc/partitions` |

use std::collections::HashMap;
use std::path::Path;

use super::error::CgroupError;

fn parse_err(path: &Path, line: &str, reason: &'static str) -> CgroupError {
    CgroupError::Parse {
        path: path.to_path_buf(),
        line: line.chars().take(200).collect(),
        reason,
    }
}

fn u64_of(path: &Path, line: &str, s: &str) -> Result<u64, CgroupError> {
    s.parse::<u64>()
        .map_err(|_| parse_err(path, line, "expected an unsigned integer"))
}

/// A single-value file. `max` (cgroup v2 and `pids.max` "no limit") is returned as
/// `None`; the table decides what it means.
pub fn single(path: &Path, text: &str) -> Result<Option<u64>, CgroupError> {
    let t = text.trim();
    if t == "max" {
        return Ok(None);
    }
    u64_of(path, t, t).map(Some)
}

/// A flat keyed file (`key value` per line) parsed once. A line that does not parse is
/// only an error for the caller that asks for its key.
pub struct Flat {
    path: std::path::PathBuf,
    values: HashMap<String, Result<u64, String>>,
}

impl Flat {
    pub fn new(path: &Path, text: &str) -> Flat {
        let values = text
            .lines()
            .filter_map(|line| {
                let mut it = line.split_whitespace();
                let k = it.next()?;
                let v = it
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| line.to_string());
                Some((k.to_string(), v))
            })
            .collect();
        Flat {
            path: path.to_path_buf(),
            values,
        }
    }

    /// The value of `key`, if the key is there.
    pub fn get(&self, key: &str) -> Result<Option<u64>, CgroupError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(Ok(v)) => Ok(Some(*v)),
            Some(Err(line)) => Err(parse_err(&self.path, line, "expected `key <unsigned integer>`")),
        }
    }
}

/// A space-separated list of values (`cpuacct.usage_percpu`).
pub fn list(path: &Path, text: &str) -> Result<Vec<u64>, CgroupError> {
    text.split_whitespace().map(|v| u64_of(path, text, v)).collect()
}

/// One `maj:min` device.
fn device(path: &Path, line: &str, s: &str) -> Result<(u64, u64), CgroupError> {
    let (maj, min) = s
        .split_once(':')
        .ok_or_else(|| parse_err(path, line, "expected major:minor"))?;
    Ok((u64_of(path, line, maj)?, u64_of(path, line, min)?))
}

/// `key` for every device of a nested keyed file (`io.stat`: `8:0 rbytes=1 wbytes=2 ...`).
/// Devices without the key are left out.
pub fn nested(path: &Path, text: &str, key: &str) -> Result<Vec<(u64, u64, u64)>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(dev) = it.next() else { continue };
        let (maj, min) = device(path, line, dev)?;
        for kv in it {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| parse_err(path, line, "expected key=value"))?;
            if k == key {
                out.push((maj, min, u64_of(path, line, v)?));
            }
        }
    }
    Ok(out)
}

/// One row of a v1 blkio file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    /// `Read`, `Write`, `Sync`, `Async`, `Discard`, `Total`, or empty for files without an op
    /// column (`blkio.time_recursive`, `blkio.sectors_recursive`).
    pub op: String,
    pub value: u64,
}

/// A v1 blkio file: `maj:min Op value` or `maj:min value` rows; the trailing `Total value`
/// row is skipped (as containerd does).
pub fn blkio(path: &Path, text: &str) -> Result<Vec<BlkioEntry>, CgroupError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [] | ["Total", _] => continue,
            [dev, value] => {
                let (major, minor) = device(path, line, dev)?;
                out.push(BlkioEntry {
                    major,
                    minor,
                    op: String::new(),
                    value: u64_of(path, line, value)?,
                });
            }
            [dev, op, value] => {
                let (major, minor) = device(path, line, dev)?;
                out.push(BlkioEntry {
                    major,
                    minor,
                    op: (*op).to_string(),
                    value: u64_of(path, line, value)?,
                });
            }
            _ => return Err(parse_err(path, line, "expected `maj:min [op] value`")),
        }
    }
    Ok(out)
}

/// `/proc/<pid>/cgroup`: `hierarchy-id:controller,controller:/path` per line (procfs'
/// parser). A line's `controllers` is empty for the unified (v2) hierarchy (`0::/path`);
/// named hierarchies keep their `name=` prefix.
pub fn proc_cgroup(path: &Path, text: &str) -> Result<Vec<procfs::ProcessCGroup>, CgroupError> {
    use procfs::FromRead;
    procfs::ProcessCGroups::from_read(text.as_bytes())
        .map(|c| c.0)
        .map_err(|_| CgroupError::Parse {
            path: path.to_path_buf(),
            line: text.chars().take(200).collect(),
            reason: "expected id:controllers:path per line",
        })
}

/// `/proc/partitions`: `(major, minor)` → `/dev/<name>` (containerd's blkio `device`
/// label). Hand-written, not procfs': its `PartitionEntry` keeps the minor in a `u16`, but
/// Linux minors have 20 bits (loop and dm devices pass 65535), and one such line fails
/// the whole file there; here a line that does not parse is skipped.
pub fn partitions(text: &str) -> HashMap<(u64, u64), String> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            match f.as_slice() {
                [maj, min, _blocks, name] => {
                    Some(((maj.parse().ok()?, min.parse().ok()?), format!("/dev/{name}")))
                }
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("/fixture")
    }

    #[test]
    fn single_values_and_max() {
        assert_eq!(single(p(), "123\n").unwrap(), Some(123));
        assert_eq!(single(p(), "max\n").unwrap(), None);
        assert!(matches!(single(p(), "12a"), Err(CgroupError::Parse { .. })));
    }

    #[test]
    fn flat_keyed() {
        let t = "nr_periods 4\nnr_throttled 2\nthrottled_time 900\n";
        assert_eq!(Flat::new(p(), t).get("nr_throttled").unwrap(), Some(2));
        assert_eq!(Flat::new(p(), t).get("nr_bursts").unwrap(), None);
        assert!(Flat::new(p(), "oom\n").get("oom").is_err());
    }

    #[test]
    fn nested_io_stat() {
        let t = "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n254:16 rbytes=10 wbytes=20\n";
        assert_eq!(nested(p(), t, "wbytes").unwrap(), vec![(8, 0, 2), (254, 16, 20)]);
        assert_eq!(nested(p(), t, "rios").unwrap(), vec![(8, 0, 3)]);
        assert!(nested(p(), "8:0 rbytes\n", "rbytes").is_err());
    }

    #[test]
    fn blkio_rows_skip_total() {
        let t = "254:0 Read 4096\n254:0 Write 0\n254:0 Total 4096\nTotal 4096\n";
        let e = blkio(p(), t).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].op, "Read");
        assert_eq!(e[2].op, "Total");
        let e = blkio(p(), "8:0 77\n").unwrap();
        assert_eq!(e[0].op, "");
        assert_eq!(e[0].value, 77);
        assert!(blkio(p(), "8:0 a b c\n").is_err());
    }

    #[test]
    fn proc_cgroup_lines() {
        let t = "4:memory:/default/a\n2:cpu,cpuacct:/default/a\n1:name=systemd:/\n0::/\n";
        let l = proc_cgroup(p(), t).unwrap();
        assert_eq!(l[1].controllers, vec!["cpu", "cpuacct"]);
        assert!(l[3].controllers.is_empty());
        assert_eq!(l[3].pathname, "/");
        assert!(proc_cgroup(p(), "garbage\n").is_err());
    }

    #[test]
    fn partitions_table() {
        let t = "major minor  #blocks  name\n\n 254        0  268435456 vda\n";
        assert_eq!(partitions(t).get(&(254, 0)).map(String::as_str), Some("/dev/vda"));
    }
}
