//! The node's filesystem as taskd-node sees it: the host's `/` mounted at `--host-root`.
//!
//! ```text
//! <host>/opt/taskd/releases/<id>/      one release: taskd, containerd-shim-*, runc (id = sha256 of them)
//! <host>/opt/taskd/current -> releases/<id>
//! <host>/etc/taskd/config.toml         the live config (config.toml.previous: the one before)
//! <host>/etc/taskd/metrics-token       bearer token for /metrics (when the chart sets one)
//! <host>/etc/systemd/system/taskd.service
//! <host>/var/lib/taskd-node/state.json current and previous release, kubelet's old endpoint
//! ```
//!
//! Every write goes to a temporary name first and is renamed into place, so a node never sees a
//! half-written binary, config or unit.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where taskd's binaries live on the host (the unit's ExecStart and PATH point here).
pub const OPT_DIR: &str = "opt/taskd";
pub const CONFIG: &str = "etc/taskd/config.toml";
pub const CONFIG_PREVIOUS: &str = "etc/taskd/config.toml.previous";
pub const METRICS_TOKEN: &str = "etc/taskd/metrics-token";
pub const UNIT_DIR: &str = "etc/systemd/system";
pub const STATE: &str = "var/lib/taskd-node/state.json";

/// The systemd unit shipped in deploy/, adapted to the release layout.
const UNIT_TEMPLATE: &str = include_str!("../../deploy/taskd.service");

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: bad state file: {source}")]
    State {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("source dir {0} has no taskd binary")]
    NoTaskd(PathBuf),
    #[error("release {0} is not on this node")]
    NoRelease(String),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// One installed set of binaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// First 16 hex digits of the sha256 over the binaries' names and contents.
    pub id: String,
    /// taskd's version (`taskd --version`).
    pub version: String,
}

/// What taskd-node installed on this node (`<host>/var/lib/taskd-node/state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub current: Option<Release>,
    /// The release (and `config.toml.previous`) a rollback goes back to.
    pub previous: Option<Release>,
    /// kubelet's `containerRuntimeEndpoint` before `--switch-kubelet` (empty: the key was absent).
    pub kubelet_endpoint: Option<String>,
}

/// The host root and the paths under it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
    unit: String,
}

impl Host {
    pub fn new(root: PathBuf, unit: String) -> Host {
        Host { root, unit }
    }

    /// `rel` (a host path, with or without its leading `/`) under the host root.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel.trim_start_matches('/'))
    }

    pub fn unit_name(&self) -> &str {
        &self.unit
    }

    pub fn unit_path(&self) -> PathBuf {
        self.path(UNIT_DIR).join(&self.unit)
    }

    fn releases(&self) -> PathBuf {
        self.path(OPT_DIR).join("releases")
    }

    pub fn release_dir(&self, id: &str) -> PathBuf {
        self.releases().join(id)
    }

    pub fn current_link(&self) -> PathBuf {
        self.path(OPT_DIR).join("current")
    }

    pub fn load_state(&self) -> Result<State, Error> {
        let path = self.path(STATE);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| Error::State { path, source }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    pub fn save_state(&self, state: &State) -> Result<(), Error> {
        let path = self.path(STATE);
        let body = serde_json::to_vec_pretty(state).map_err(|source| Error::State {
            path: path.clone(),
            source,
        })?;
        write_atomic(&path, &body, 0o600)
    }

    /// Copies the files (paths relative to `src`) into `releases/<id>` unless that release is
    /// already complete there.
    pub fn stage_release(&self, id: &str, src: &Path, files: &[PathBuf]) -> Result<PathBuf, Error> {
        let dir = self.release_dir(id);
        if files.iter().all(|f| dir.join(f).is_file()) {
            return Ok(dir);
        }
        let tmp = self.releases().join(format!(".{id}.tmp"));
        remove_path(&tmp)?;
        for f in files {
            let (from, to) = (src.join(f), tmp.join(f));
            let parent = to.parent().unwrap_or(&tmp);
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            fs::copy(&from, &to).map_err(io_err("copy", &from))?;
            fs::set_permissions(&to, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &to))?;
        }
        remove_path(&dir)?;
        fs::rename(&tmp, &dir).map_err(io_err("rename", &tmp))?;
        Ok(dir)
    }

    /// Points `opt/taskd/current` at `releases/<id>` (a relative link, replaced atomically).
    pub fn set_current(&self, id: &str) -> Result<(), Error> {
        if !self.release_dir(id).is_dir() {
            return Err(Error::NoRelease(id.to_string()));
        }
        let link = self.current_link();
        let tmp = self.path(OPT_DIR).join(".current.tmp");
        remove_path(&tmp)?;
        symlink(Path::new("releases").join(id), &tmp).map_err(io_err("symlink", &tmp))?;
        fs::rename(&tmp, &link).map_err(io_err("rename", &link))
    }

    /// The release `current` points at, if any.
    pub fn current_id(&self) -> Option<String> {
        let target = fs::read_link(self.current_link()).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// Removes every release but `keep`.
    pub fn prune_releases(&self, keep: &[&str]) -> Result<(), Error> {
        let dir = self.releases();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("read dir", &dir)(e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                remove_path(&entry.path())?;
            }
        }
        Ok(())
    }

    pub fn read(&self, rel: &str) -> Result<Option<Vec<u8>>, Error> {
        read_opt(&self.path(rel))
    }

    pub fn write(&self, rel: &str, body: &[u8], mode: u32) -> Result<(), Error> {
        write_atomic(&self.path(rel), body, mode)
    }

    pub fn remove(&self, rel: &str) -> Result<(), Error> {
        remove_path(&self.path(rel))
    }

    pub fn read_unit(&self) -> Result<Option<Vec<u8>>, Error> {
        read_opt(&self.unit_path())
    }

    pub fn write_unit(&self, body: &str) -> Result<(), Error> {
        write_atomic(&self.unit_path(), body.as_bytes(), 0o644)
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, Error> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Writes `path` through a temporary file in the same dir and a rename.
pub fn write_atomic(path: &Path, body: &[u8], mode: u32) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, body).map_err(io_err("write", &tmp))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(io_err("chmod", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename", &tmp))
}

/// Removes a file, link or dir tree; absent is fine.
pub fn remove_path(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    let r = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("remove", path)(e)),
        _ => Ok(()),
    }
}

/// The files of a release in the image's source dir, relative to it: `taskd` (required),
/// every `containerd-shim-*`, `runc` when present, and `lib/*` (the shared libraries
/// scripts/image.sh bundles next to them). Sorted.
pub fn source_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("read dir", dir))? {
        let entry = entry.map_err(io_err("read dir", dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if (name == "taskd" || name == "runc" || name.starts_with("containerd-shim-"))
            && entry.path().is_file()
        {
            out.push(PathBuf::from(name));
        }
    }
    let lib = dir.join("lib");
    if lib.is_dir() {
        for entry in fs::read_dir(&lib).map_err(io_err("read dir", &lib))? {
            let entry = entry.map_err(io_err("read dir", &lib))?;
            if entry.path().is_file() {
                out.push(Path::new("lib").join(entry.file_name()));
            }
        }
    }
    out.sort();
    if !out.iter().any(|p| p == Path::new("taskd")) {
        return Err(Error::NoTaskd(dir.to_path_buf()));
    }
    Ok(out)
}

/// The release id of a set of files: sha256 over each relative name and content, 16 hex digits.
pub fn release_id(src: &Path, files: &[PathBuf]) -> Result<String, Error> {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.to_string_lossy().as_bytes());
        h.update([0]);
        let path = src.join(f);
        let mut file = fs::File::open(&path).map_err(io_err("open", &path))?;
        io::copy(&mut file, &mut h).map_err(io_err("read", &path))?;
    }
    let digest = h.finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// The unit: deploy/taskd.service with taskd run from `opt/taskd/current` and that dir first
/// on PATH (so taskd finds the shim and runc of the same release). KillMode=process stays:
/// restarting taskd leaves the shims, and so the pods, running.
pub fn render_unit() -> String {
    let mut out = String::from(
        "# Installed by taskd-node (the taskd Helm chart); do not edit: the next install replaces it.\n",
    );
    for line in UNIT_TEMPLATE.lines() {
        if line.starts_with('#') && !out.contains("[Unit]") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ExecStart=/usr/local/bin/taskd") {
            out.push_str(&format!("ExecStart=/{OPT_DIR}/current/taskd{rest}\n"));
            out.push_str(&format!(
                "Environment=PATH=/{OPT_DIR}/current:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            ));
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Sets `containerRuntimeEndpoint` in a kubelet config file (YAML, edited line by line so
/// comments and layout stay). Returns the previous value ("" when the key was absent), or None
/// when it already was `endpoint`.
pub fn set_kubelet_endpoint(path: &Path, endpoint: &str) -> Result<Option<String>, Error> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    let key = "containerRuntimeEndpoint:";
    let mut previous = String::new();
    let mut found = false;
    let mut out = String::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix(key) {
            found = true;
            previous = v.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
            if previous == endpoint {
                return Ok(None);
            }
            if !endpoint.is_empty() {
                out.push_str(&format!("{key} {endpoint}\n"));
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if !found {
        if endpoint.is_empty() {
            return Ok(None);
        }
        out.push_str(&format!("{key} {endpoint}\n"));
    }
    let mode = fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    write_atomic(path, out.as_bytes(), mode)?;
    Ok(Some(previous))
}

/// kubelet's current `containerRuntimeEndpoint` ("" when absent).
pub fn kubelet_endpoint(path: &Path) -> Result<String, Error> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("containerRuntimeEndpoint:"))
        .map(|v| v.trim().trim_matches(|c| c == '"' || c == '\'').to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_runs_current_release_and_keeps_shims() {
        let u = render_unit();
        assert!(u.contains("ExecStart=/opt/taskd/current/taskd --config /etc/taskd/config.toml\n"));
        assert!(u.contains("Environment=PATH=/opt/taskd/current:"));
        assert!(u.contains("\nKillMode=process\n"));
        assert!(
            u.contains("\nUMask=0077\n"),
            "taskd's files are closed to other users"
        );
        assert!(u.starts_with("# Installed by taskd-node"));
        assert!(!u.contains("/usr/local/bin/taskd"));
    }

    #[test]
    fn kubelet_endpoint_switch_and_restore() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.yaml");
        fs::write(&p, "kind: KubeletConfiguration\n# keep me\ncontainerRuntimeEndpoint: \"unix:///run/containerd/containerd.sock\"\ncgroupDriver: systemd\n").unwrap();
        let prev = set_kubelet_endpoint(&p, "unix:///run/taskd/taskd.sock").unwrap();
        assert_eq!(prev.as_deref(), Some("unix:///run/containerd/containerd.sock"));
        assert_eq!(kubelet_endpoint(&p).unwrap(), "unix:///run/taskd/taskd.sock");
        assert_eq!(
            set_kubelet_endpoint(&p, "unix:///run/taskd/taskd.sock").unwrap(),
            None
        );
        set_kubelet_endpoint(&p, "unix:///run/containerd/containerd.sock").unwrap();
        let text = fs::read_to_string(&p).unwrap();
        assert!(text.contains("# keep me\n") && text.contains("cgroupDriver: systemd\n"));
        assert_eq!(
            kubelet_endpoint(&p).unwrap(),
            "unix:///run/containerd/containerd.sock"
        );

        // Absent key: added, and restoring "" removes it again.
        fs::write(&p, "kind: KubeletConfiguration\n").unwrap();
        assert_eq!(
            set_kubelet_endpoint(&p, "unix:///x.sock").unwrap().as_deref(),
            Some("")
        );
        set_kubelet_endpoint(&p, "").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "kind: KubeletConfiguration\n");
    }
}
