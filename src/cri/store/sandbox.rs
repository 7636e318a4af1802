//! Pod sandboxes.
//!
//! State machine (CRI shows `Ready` as SANDBOX_READY, every other state as
//! SANDBOX_NOTREADY):
//!
//! ```text
//!   RunPodSandbox
//!        │ record added (name reserved)
//!        ▼
//!   Initializing ──setup failed: everything rolled back, record removed──▶ ✗
//!        │ netns + CNI + pause task started
//!        ▼
//!      Ready ──StopPodSandbox, or the pause task exited──▶ NotReady ──RemovePodSandbox──▶ (gone)
//!                                                           ▲    │
//!   Unknown (recovered; task state not learned yet) ────────┘    └─StopPodSandbox (idempotent)
//!      └──────────── task found running ──▶ Ready
//! ```

use std::collections::HashMap;
use std::time::SystemTime;

use super::{Record, StoreError};

/// A sandbox's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SandboxState {
    Initializing,
    Ready,
    NotReady,
    Unknown,
}

impl SandboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxState::Initializing => "initializing",
            SandboxState::Ready => "ready",
            SandboxState::NotReady => "notready",
            SandboxState::Unknown => "unknown",
        }
    }

    /// Whether the machine above has the edge `self → to` (staying put is allowed).
    pub fn can_go(self, to: SandboxState) -> bool {
        use SandboxState::*;
        self == to
            || matches!(
                (self, to),
                (Initializing | Unknown, Ready) | (Initializing | Ready | Unknown, NotReady)
            )
    }

    /// What CRI shows (`SANDBOX_READY` only for `Ready`).
    pub fn is_ready(self) -> bool {
        self == SandboxState::Ready
    }
}

/// Host namespaces a pod asked to share.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostNamespaces {
    pub network: bool,
    pub pid: bool,
    pub ipc: bool,
}

/// One pod sandbox (persisted as JSON by the store).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Sandbox {
    pub id: String,
    /// `<name>_<namespace>_<uid>_<attempt>`.
    pub name: String,
    pub pod_name: String,
    pub pod_namespace: String,
    pub pod_uid: String,
    pub attempt: u32,
    pub runtime_handler: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub created_at: SystemTime,
    pub state: SandboxState,
    /// Pinned netns path; empty with host networking (or once removed).
    pub netns_path: String,
    pub ip: String,
    pub additional_ips: Vec<String>,
    pub host: HostNamespaces,
    /// Whether the pod has a pause container (its namespaces are the pause process's).
    /// Without one, `pid` is 0 and the IPC/UTS namespaces are pinned files.
    #[serde(default = "infra_default")]
    pub infra: bool,
    /// The pinned IPC namespace of a pod without a pause container ("" = none).
    #[serde(default)]
    pub ipc_ns_path: String,
    /// The pinned UTS namespace of a pod without a pause container ("" = none).
    #[serde(default)]
    pub uts_ns_path: String,
    pub pid: u32,
    /// The pod-level cgroup parent (from the sandbox config).
    pub cgroup_parent: String,
    /// The CRI config as given, for status and for containers joining the pod.
    #[serde(with = "super::proto_hex")]
    pub config: taskd_proto::cri::v1::PodSandboxConfig,
}

/// Records written before pods could run without a pause container all had one.
fn infra_default() -> bool {
    true
}

impl Record for Sandbox {
    const WHAT: &'static str = "sandbox";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Sandbox {
    /// Moves to `to` if the machine allows it.
    pub fn transition(&mut self, to: SandboxState) -> Result<(), StoreError> {
        if !self.state.can_go(to) {
            return Err(StoreError::Transition {
                what: "sandbox",
                id: self.id.clone(),
                from: self.state.as_str(),
                to: to.as_str(),
            });
        }
        self.state = to;
        Ok(())
    }
}

/// The unique name of a pod (containerd's `makeSandboxName`).
pub fn sandbox_name(name: &str, namespace: &str, uid: &str, attempt: u32) -> String {
    format!("{name}_{namespace}_{uid}_{attempt}")
}

#[cfg(test)]
mod tests {
    use super::SandboxState::*;
    use super::*;

    #[test]
    fn only_drawn_edges_are_allowed() {
        let all = [Initializing, Ready, NotReady, Unknown];
        let allowed = [
            (Initializing, Ready),
            (Initializing, NotReady),
            (Ready, NotReady),
            (Unknown, Ready),
            (Unknown, NotReady),
        ];
        for from in all {
            for to in all {
                let expect = from == to || allowed.contains(&(from, to));
                assert_eq!(from.can_go(to), expect, "{from:?} -> {to:?}");
            }
        }
        assert!(!NotReady.can_go(Ready), "a stopped pod never becomes ready again");
    }

    #[test]
    fn names_are_unique_per_attempt() {
        assert_eq!(sandbox_name("web", "default", "u1", 0), "web_default_u1_0");
    }
}
