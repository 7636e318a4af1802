//! Containers of pods.
//!
//! State machine (names as CRI shows them):
//!
//! ```text
//!   CreateContainer
//!        │ record added (name reserved), container + spec created
//!        ▼
//!  CONTAINER_CREATED ──StartContainer──▶ CONTAINER_RUNNING ──task exit / StopContainer──▶ CONTAINER_EXITED
//!        │                                                                                 ▲      │
//!        └──────────── start failed (exit code + reason "StartError") ─────────────────────┘      │
//!                                                                                RemoveContainer  │
//!  CONTAINER_UNKNOWN (recovered, task state not learned) ──▶ RUNNING | EXITED      (also from     ▼
//!                                                                                CREATED)     (gone)
//! ```
//!
//! A running container cannot be removed (FailedPrecondition: stop it first), and nothing
//! leaves EXITED.

use std::collections::HashMap;
use std::time::SystemTime;

use super::{Record, StoreError};

/// A container's lifecycle state (CRI's `ContainerState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ContainerState {
    Created,
    Running,
    Exited,
    Unknown,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Created => "CONTAINER_CREATED",
            ContainerState::Running => "CONTAINER_RUNNING",
            ContainerState::Exited => "CONTAINER_EXITED",
            ContainerState::Unknown => "CONTAINER_UNKNOWN",
        }
    }

    /// Whether the machine above has the edge `self → to` (staying put is allowed).
    pub fn can_go(self, to: ContainerState) -> bool {
        use ContainerState::*;
        self == to
            || matches!(
                (self, to),
                (Created | Unknown, Running) | (Created | Running | Unknown, Exited)
            )
    }

    /// Whether RemoveContainer may delete a container in this state.
    pub fn removable(self) -> bool {
        !matches!(self, ContainerState::Running)
    }
}

/// Timestamps and exit details.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Exit {
    pub code: i32,
    /// `Completed`, `Error`, `OOMKilled`, `StartError`.
    pub reason: String,
    pub message: String,
    pub finished_at: Option<SystemTime>,
    /// A `/tasks/oom` event was seen for the container (the exit reason becomes OOMKilled).
    pub oom_killed: bool,
}

/// One container (persisted as JSON by the store, without the open log file).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Container {
    pub id: String,
    /// `<name>_<pod name>_<pod namespace>_<pod uid>_<attempt>`.
    pub name: String,
    pub sandbox_id: String,
    pub labels: HashMap<String, String>,
    pub annotations: HashMap<String, String>,
    pub image: String,
    pub image_ref: String,
    pub log_path: String,
    pub created_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub state: ContainerState,
    pub pid: u32,
    pub exit: Exit,
    /// The CRI log file (None when kubelet asked for no log).
    #[serde(skip)]
    pub log: Option<std::sync::Arc<crate::cri::io::LogFile>>,
    #[serde(with = "super::proto_hex")]
    pub config: taskd_proto::cri::v1::ContainerConfig,
    /// The uid, gid and groups its process was created with (ContainerStatus.user); None for
    /// a record written before taskd kept it.
    #[serde(default)]
    pub user: Option<crate::cri::spec::user::ResolvedUser>,
}

impl Record for Container {
    const WHAT: &'static str = "container";
    fn id(&self) -> &str {
        &self.id
    }
    fn name(&self) -> &str {
        &self.name
    }
}

impl Container {
    /// Moves to `to` if the machine allows it.
    pub fn transition(&mut self, to: ContainerState) -> Result<(), StoreError> {
        if !self.state.can_go(to) {
            return Err(StoreError::Transition {
                what: "container",
                id: self.id.clone(),
                from: self.state.as_str(),
                to: to.as_str(),
            });
        }
        self.state = to;
        Ok(())
    }
}

/// The unique name of a container (containerd's `makeContainerName`).
pub fn container_name(
    name: &str,
    pod_name: &str,
    pod_namespace: &str,
    pod_uid: &str,
    attempt: u32,
) -> String {
    format!("{name}_{pod_name}_{pod_namespace}_{pod_uid}_{attempt}")
}

/// The reason CRI shows for an exit (`OOMKilled` wins; 0 is `Completed`).
pub fn exit_reason(code: i32, oom: bool) -> &'static str {
    if oom {
        "OOMKilled"
    } else if code == 0 {
        "Completed"
    } else {
        "Error"
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerState::*;
    use super::*;

    #[test]
    fn only_drawn_edges_are_allowed() {
        let all = [Created, Running, Exited, Unknown];
        let allowed = [
            (Created, Running),
            (Created, Exited),
            (Running, Exited),
            (Unknown, Running),
            (Unknown, Exited),
        ];
        for from in all {
            for to in all {
                assert_eq!(
                    from.can_go(to),
                    from == to || allowed.contains(&(from, to)),
                    "{from:?} -> {to:?}"
                );
            }
        }
        assert!(!Running.removable());
        assert!(Created.removable() && Exited.removable() && Unknown.removable());
    }

    #[test]
    fn exit_reasons() {
        assert_eq!(exit_reason(0, false), "Completed");
        assert_eq!(exit_reason(1, false), "Error");
        assert_eq!(exit_reason(137, true), "OOMKilled");
    }
}
