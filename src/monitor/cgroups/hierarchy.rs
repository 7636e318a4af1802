//! Where a task's cgroup lives.
//!
//! ```text
//! cgroup v2 (unified)                     cgroup v1 (legacy / hybrid, this host)
//! <root>/cgroup.controllers  (detects v2) <root>/<controller>/   one hierarchy per controller
//! <root>/<path>/cpu.stat ...              <root>/cpuacct/<path>/cpuacct.usage
//!                                         <root>/memory/<path>/memory.stat ...
//! ```
//!
//! A task's `<path>` comes from `/proc/<pid>/cgroup` of its init process (`0::/path` on v2,
//! `N:memory:/path` per controller on v1), read once when the task is monitored (a pid can
//! be reused later, its cgroup cannot change under a running container). When the process
//! is already gone (a task recovered after a restart whose init died), `linux.cgroupsPath`
//! from the spec is used instead: `/a/b` (cgroupfs driver) or `slice:prefix:name` (systemd
//! driver, expanded as runc does). Paths never leave the cgroupfs root: `..` is refused.

use std::path::{Path, PathBuf};

use super::error::CgroupError;
use super::parse;

/// The cgroup mode of the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Legacy or hybrid: one hierarchy per controller.
    V1,
    /// Unified hierarchy with controllers (`cgroup.controllers` at the root).
    V2,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::V1 => "v1",
            Mode::V2 => "v2",
        }
    }
}

/// The v1 controllers the metric table reads.
pub const V1_CONTROLLERS: [&str; 6] = ["cpu", "cpuacct", "memory", "pids", "blkio", "hugetlb"];

/// The cgroupfs and procfs roots (injectable so tests use fixture trees) and the mode.
#[derive(Debug, Clone)]
pub struct Hierarchy {
    pub root: PathBuf,
    pub proc_root: PathBuf,
    pub mode: Mode,
}

/// A located cgroup: one directory per controller on v1, one directory on v2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupPaths {
    V1(Vec<(&'static str, PathBuf)>),
    V2(PathBuf),
}

impl CgroupPaths {
    /// The directory holding `controller`'s files (any controller on v2).
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        match self {
            CgroupPaths::V2(p) => Some(p),
            CgroupPaths::V1(dirs) => dirs
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, p)| p.as_path()),
        }
    }

    /// A directory that identifies the cgroup in logs (memory on v1).
    pub fn display_dir(&self) -> Option<&Path> {
        self.dir("memory").or_else(|| match self {
            CgroupPaths::V1(d) => d.first().map(|(_, p)| p.as_path()),
            CgroupPaths::V2(p) => Some(p),
        })
    }
}

impl Hierarchy {
    /// Detects the mode under `root`: `cgroup.controllers` at the root means v2; otherwise
    /// any v1 controller directory means v1 (hybrid hosts also mount an empty unified
    /// hierarchy at `<root>/unified`, which holds no controllers and is ignored).
    pub fn detect(root: &Path, proc_root: &Path) -> Result<Hierarchy, CgroupError> {
        let mode = if root.join("cgroup.controllers").is_file() {
            Mode::V2
        } else if V1_CONTROLLERS.iter().any(|c| root.join(c).is_dir()) {
            Mode::V1
        } else {
            return Err(CgroupError::NoHierarchy {
                root: root.to_path_buf(),
            });
        };
        Ok(Hierarchy::new(root, proc_root, mode))
    }

    pub fn new(root: &Path, proc_root: &Path, mode: Mode) -> Hierarchy {
        Hierarchy {
            root: root.to_path_buf(),
            proc_root: proc_root.to_path_buf(),
            mode,
        }
    }

    /// Locates a cgroup from the task's init pid (`pid > 0` and a `/proc` entry), else from
    /// its `cgroups_path`. `Ok(None)` when neither is available.
    pub fn locate(&self, pid: u32, cgroups_path: Option<&str>) -> Result<Option<CgroupPaths>, CgroupError> {
        if pid > 0
            && let Some(p) = self.locate_pid(pid)?
        {
            return Ok(Some(p));
        }
        match cgroups_path.filter(|p| !p.is_empty()) {
            Some(cp) => self.locate_cgroups_path(cp).map(Some),
            None => Ok(None),
        }
    }

    /// From `/proc/<pid>/cgroup`; `Ok(None)` if the process is gone.
    pub fn locate_pid(&self, pid: u32) -> Result<Option<CgroupPaths>, CgroupError> {
        let path = self.proc_root.join(pid.to_string()).join("cgroup");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e)
                if matches!(e.kind(), std::io::ErrorKind::NotFound)
                    || e.raw_os_error() == Some(libc::ESRCH) =>
            {
                return Ok(None);
            }
            Err(source) => return Err(CgroupError::Read { path, source }),
        };
        self.locate_proc_text(&path, &text).map(Some)
    }

    /// From the text of a `/proc/<pid>/cgroup` file.
    pub fn locate_proc_text(&self, path: &Path, text: &str) -> Result<CgroupPaths, CgroupError> {
        let lines = parse::proc_cgroup(path, text)?;
        match self.mode {
            Mode::V2 => {
                let line =
                    lines
                        .iter()
                        .find(|l| l.controllers.is_empty())
                        .ok_or_else(|| CgroupError::Parse {
                            path: path.to_path_buf(),
                            line: text.chars().take(200).collect(),
                            reason: "no unified (0::) line",
                        })?;
                Ok(CgroupPaths::V2(join(&self.root, &line.pathname)?))
            }
            Mode::V1 => {
                let mut dirs = Vec::new();
                for ctrl in V1_CONTROLLERS {
                    if let Some(line) = lines.iter().find(|l| l.controllers.iter().any(|c| c == ctrl)) {
                        dirs.push((ctrl, join(&self.root.join(ctrl), &line.pathname)?));
                    }
                }
                if dirs.is_empty() {
                    return Err(CgroupError::Parse {
                        path: path.to_path_buf(),
                        line: text.chars().take(200).collect(),
                        reason: "no line for any v1 controller",
                    });
                }
                Ok(CgroupPaths::V1(dirs))
            }
        }
    }

    /// From `linux.cgroupsPath`: `/a/b` relative to the root, or systemd's
    /// `slice:prefix:name`.
    pub fn locate_cgroups_path(&self, cgroups_path: &str) -> Result<CgroupPaths, CgroupError> {
        let rel = if !cgroups_path.starts_with('/') && cgroups_path.matches(':').count() == 2 {
            systemd_path(cgroups_path)?
        } else {
            cgroups_path.to_string()
        };
        match self.mode {
            Mode::V2 => Ok(CgroupPaths::V2(join(&self.root, &rel)?)),
            Mode::V1 => {
                // Only the controllers mounted on this host (no `hugetlb` here, for one):
                // an unmounted one would look like a removed cgroup.
                let mut dirs = Vec::new();
                for ctrl in V1_CONTROLLERS {
                    let mount = self.root.join(ctrl);
                    if mount.is_dir() {
                        dirs.push((ctrl, join(&mount, &rel)?));
                    }
                }
                Ok(CgroupPaths::V1(dirs))
            }
        }
    }
}

/// `base` + the components of `rel`, refusing `.` and `..` so the result stays under `base`.
fn join(base: &Path, rel: &str) -> Result<PathBuf, CgroupError> {
    let mut out = base.to_path_buf();
    for c in rel.split('/').filter(|c| !c.is_empty()) {
        if c == "." || c == ".." {
            return Err(CgroupError::InvalidPath {
                path: rel.to_string(),
                reason: "`.` and `..` components are not allowed",
            });
        }
        out.push(c);
    }
    Ok(out)
}

/// runc's systemd cgroup path: `parent.slice:prefix:name` →
/// `/<expanded parent>/<prefix>-<name>.scope` (`a-b.slice` expands to
/// `a.slice/a-b.slice`; a name ending in `.slice` is used as is).
fn systemd_path(p: &str) -> Result<String, CgroupError> {
    let invalid = |reason| CgroupError::InvalidPath {
        path: p.to_string(),
        reason,
    };
    let mut it = p.split(':');
    let (Some(parent), Some(prefix), Some(name)) = (it.next(), it.next(), it.next()) else {
        return Err(invalid("expected slice:prefix:name"));
    };
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(invalid("systemd unit names must be non-empty and have no `/`"));
    }
    let parent = if parent.is_empty() { "system.slice" } else { parent };
    let mut out = expand_slice(parent).ok_or_else(|| invalid("parent must be a valid `.slice` unit"))?;
    if name.ends_with(".slice") {
        out.push('/');
        out.push_str(name);
    } else if prefix.is_empty() {
        out.push_str(&format!("/{name}.scope"));
    } else {
        out.push_str(&format!("/{prefix}-{name}.scope"));
    }
    Ok(out)
}

fn expand_slice(slice: &str) -> Option<String> {
    let base = slice.strip_suffix(".slice")?;
    if base == "-" {
        return Some(String::new());
    }
    if base.is_empty() || base.contains('/') {
        return None;
    }
    let mut out = String::new();
    let mut prefix = String::new();
    for part in base.split('-') {
        if part.is_empty() {
            return None;
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        out.push_str(&format!("/{prefix}.slice"));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(mode: Mode) -> Hierarchy {
        Hierarchy::new(Path::new("/cg"), Path::new("/proc"), mode)
    }

    #[test]
    fn v1_from_proc_text_maps_comounted_controllers() {
        let text =
            "9:name=systemd:/\n8:pids:/default/t\n4:memory:/default/t\n2:cpu,cpuacct:/default/t\n0::/\n";
        let p = h(Mode::V1)
            .locate_proc_text(Path::new("/proc/1/cgroup"), text)
            .unwrap();
        assert_eq!(p.dir("cpuacct"), Some(Path::new("/cg/cpuacct/default/t")));
        assert_eq!(p.dir("cpu"), Some(Path::new("/cg/cpu/default/t")));
        assert_eq!(p.dir("memory"), Some(Path::new("/cg/memory/default/t")));
        assert_eq!(p.dir("blkio"), None);
    }

    #[test]
    fn v2_from_proc_text_uses_unified_line() {
        let p = h(Mode::V2)
            .locate_proc_text(Path::new("x"), "0::/default/t\n")
            .unwrap();
        assert_eq!(p, CgroupPaths::V2(PathBuf::from("/cg/default/t")));
    }

    #[test]
    fn cgroups_path_with_dotdot_is_refused() {
        let e = h(Mode::V2).locate_cgroups_path("/default/../../etc").unwrap_err();
        assert!(matches!(e, CgroupError::InvalidPath { .. }), "{e}");
        let e = h(Mode::V1)
            .locate_proc_text(Path::new("x"), "4:memory:/../x\n")
            .unwrap_err();
        assert!(matches!(e, CgroupError::InvalidPath { .. }), "{e}");
    }

    #[test]
    fn systemd_cgroups_path_is_expanded_like_runc() {
        let p = h(Mode::V2)
            .locate_cgroups_path("kubepods-besteffort-pod1.slice:cri-containerd:abc")
            .unwrap();
        assert_eq!(
            p,
            CgroupPaths::V2(PathBuf::from(
                "/cg/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-abc.scope"
            ))
        );
        let p = h(Mode::V2).locate_cgroups_path("system.slice:taskd:x").unwrap();
        assert_eq!(
            p,
            CgroupPaths::V2(PathBuf::from("/cg/system.slice/taskd-x.scope"))
        );
        assert!(h(Mode::V2).locate_cgroups_path("bad:taskd:x").is_err());
    }

    #[test]
    fn detect_finds_fixture_modes() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let v2 = Hierarchy::detect(&fixtures.join("cgroup2"), Path::new("/proc")).unwrap();
        assert_eq!(v2.mode, Mode::V2);
        let v1 = Hierarchy::detect(&fixtures.join("cgroup1"), Path::new("/proc")).unwrap();
        assert_eq!(v1.mode, Mode::V1);
        let none = Hierarchy::detect(&fixtures.join("proc"), Path::new("/proc")).unwrap_err();
        assert!(matches!(none, CgroupError::NoHierarchy { .. }));
    }
}
