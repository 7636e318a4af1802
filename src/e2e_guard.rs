//! The one guard of the end-to-end tests, shared by the unit tests (`crate::e2e_guard`, test
//! builds only) and the integration tests (`tests/support`, which includes this file).
//!
//! An end-to-end test is one that needs root or a program the Rust toolchain does not bring
//! (runc, ctr, the shims, docker-registry, CNI plugins, criu, go, python3, promtool, ...).
//! Such a test is marked `#[ignore = "e2e: <what it needs>"]`, so a run without
//! `--include-ignored` (`cargo test`, `scripts/test.sh --fast`) lists it as ignored, never as
//! passed; `scripts/test.sh --e2e` and CI run it. Its first line is [`require`] with what it
//! needs: when it runs on a host without it, it fails saying what is missing and how to get it,
//! instead of returning early and passing.

use std::path::Path;

/// One thing an end-to-end test needs from the host.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// Root: mounts, namespaces, cgroups, chown, mknod, bridges.
    Root,
    /// A program on PATH, and the Debian package that installs it.
    Bin(&'static str, &'static str),
    /// A file at an absolute path (e.g. a CNI plugin in /usr/lib/cni), and the Debian package
    /// that installs it.
    File(&'static str, &'static str),
}

/// The CNI plugins the pod tests use (bridge + host-local IPAM + loopback).
pub const CNI_PLUGINS: [Need; 3] = [
    Need::File("/usr/lib/cni/bridge", "containernetworking-plugins"),
    Need::File("/usr/lib/cni/host-local", "containernetworking-plugins"),
    Need::File("/usr/lib/cni/loopback", "containernetworking-plugins"),
];

impl Need {
    /// What is missing, or `None` when the host has it.
    fn missing(self) -> Option<String> {
        match self {
            Need::Root if nix::unistd::Uid::effective().is_root() => None,
            Need::Root => {
                Some("root (run the end-to-end tests as root: sudo -E scripts/test.sh --e2e)".into())
            }
            Need::Bin(bin, _) if on_path(bin) => None,
            Need::Bin(bin, package) => Some(format!("{bin} on PATH (apt-get install {package})")),
            Need::File(path, _) if Path::new(path).is_file() => None,
            Need::File(path, package) => Some(format!("{path} (apt-get install {package})")),
        }
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(bin).is_file()))
}

/// Panics, naming everything missing, unless the host has all of `needs`. The first line of
/// every end-to-end test (and of the harness pieces they share).
pub fn require(needs: &[Need]) {
    let missing: Vec<String> = needs.iter().filter_map(|n| n.missing()).collect();
    assert!(
        missing.is_empty(),
        "this end-to-end test cannot run here; it needs:\n  - {}",
        missing.join("\n  - ")
    );
}
