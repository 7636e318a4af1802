//! Recovery at plugin start: the pods and containers a previous taskd ran, from their
//! persisted records (`<cri root>/{sandboxes,containers}/<id>.json`, see `store`), matched
//! against what the tasks service (which recovered the shims first) says now.
//!
//! ```text
//! sandbox   pause task running                  → READY (pid from the task)
//!           pause task stopped / gone           → NOTREADY
//!           no pause container: was READY and its pinned namespaces are still there → READY,
//!           else NOTREADY
//! container task running | paused              → RUNNING, output copied to its log again
//!           task created                        → CREATED, output copied to its log again
//!           task stopped                        → EXITED: exit code + finish time from the task,
//!                                                 CONTAINER_STOPPED for GetContainerEvents
//!           no task (record said CREATED/RUNNING) → EXITED 255, reason Unknown, same event
//!           record already EXITED               → unchanged
//! ```
//!
//! Nothing here stops, starts or deletes a task: recovery only learns. Records that cannot be
//! read were skipped by the store (each logged); a task that cannot be queried leaves its
//! container UNKNOWN (CRI's `CONTAINER_UNKNOWN`), which Stop/Remove still handle.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use futures::StreamExt;

use taskd_proto::cri::v1::ContainerEventType;

use super::io::ContainerIo;
use super::network::netns;
use super::service::CriService;
use super::store::container::{ContainerState, exit_reason};
use super::store::sandbox::SandboxState;
use crate::runtime::Status;

/// How many task states recovery asks for at once.
const STATE_PARALLEL: usize = 64;

/// The exit code recorded for a container whose task vanished while taskd was down.
pub const UNKNOWN_EXIT_CODE: i32 = 255;

/// What recovery found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub sandboxes: usize,
    pub ready: usize,
    pub containers: usize,
    pub running: usize,
    /// Containers that exited while taskd was down.
    pub exited_while_down: usize,
    pub unknown: usize,
}

/// Brings the loaded records up to date with the tasks (see the module docs).
pub async fn recover(svc: &CriService) -> Report {
    let mut report = Report::default();
    let Some(runner) = svc.runner.clone() else {
        // Without a runtime nothing can run: every record is shown as not running.
        return report;
    };
    let started = std::time::Instant::now();
    let sandboxes = svc.sandboxes.list();
    let all = svc.containers.list();
    report.containers = all.len();
    let containers: Vec<_> = all
        .into_iter()
        .filter(|c| c.state != ContainerState::Exited)
        .collect();
    // Every task's state at once (each is a round trip to its shim): a full node's pods
    // must not come back one after another.
    let ids = sandboxes
        .iter()
        .filter(|sb| sb.infra)
        .map(|sb| sb.id.clone())
        .chain(containers.iter().map(|c| c.id.clone()))
        .collect::<Vec<_>>();
    let mut states: HashMap<String, _> = futures::stream::iter(ids)
        .map(|id| {
            let runner = runner.clone();
            async move {
                let state = runner.task_state(&id).await;
                (id, state)
            }
        })
        .buffer_unordered(STATE_PARALLEL)
        .collect()
        .await;
    for sb in sandboxes {
        report.sandboxes += 1;
        if !sb.infra {
            // No process: the pod is as ready as it was, while its pinned namespaces last.
            let pinned = |p: &str| p.is_empty() || netns::is_pinned(std::path::Path::new(p));
            let ready = sb.state == SandboxState::Ready
                && (!sb.netns_path.is_empty() || sb.host.network)
                && pinned(&sb.netns_path)
                && pinned(&sb.ipc_ns_path)
                && pinned(&sb.uts_ns_path);
            if ready {
                report.ready += 1;
            }
            let _ = svc.sandboxes.update(&sb.id, |s| {
                s.state = if ready {
                    SandboxState::Ready
                } else {
                    SandboxState::NotReady
                };
                Ok(())
            });
            continue;
        }
        let state = states.remove(&sb.id).unwrap_or(Ok(None));
        let (to, pid) = match &state {
            Ok(Some(t)) if matches!(t.status, Status::Running | Status::Paused | Status::Pausing) => {
                (SandboxState::Ready, t.pid)
            }
            Ok(_) => (SandboxState::NotReady, 0),
            Err(e) => {
                tracing::warn!(pod = %sb.id, error = %e, "recover: pause task state unknown");
                (SandboxState::Unknown, sb.pid)
            }
        };
        if to == SandboxState::Ready {
            report.ready += 1;
        }
        let _ = svc.sandboxes.update(&sb.id, |s| {
            // Recovery states what is, whatever the record said (an interrupted RunPodSandbox
            // left Initializing): set, not transition.
            s.state = to;
            s.pid = pid;
            Ok(())
        });
    }
    for c in containers {
        let state = match states.remove(&c.id).unwrap_or(Ok(None)) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(container = %c.id, error = %e, "recover: task state unknown");
                report.unknown += 1;
                let _ = svc.containers.update(&c.id, |r| {
                    r.state = ContainerState::Unknown;
                    Ok(())
                });
                continue;
            }
        };
        // Output still in the fifos (and all that comes) goes to the same log file.
        let io_dir = svc.container_dir(&c.id).join("io");
        if !c.log_path.is_empty() && state.is_some() && io_dir.join("stdout").exists() {
            match ContainerIo::attach(
                &io_dir,
                std::path::Path::new(&c.log_path),
                svc.config.max_container_log_line_size,
                Duration::from_millis(svc.config.log_partial_flush_ms),
            ) {
                Ok(io) => {
                    let log = io.log().clone();
                    let _ = svc.containers.update(&c.id, |r| {
                        r.log = Some(log);
                        Ok(())
                    });
                    svc.ios
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(c.id.clone(), io);
                }
                Err(e) => {
                    tracing::warn!(container = %c.id, error = %e, "recover: container log not reattached");
                }
            }
        }
        let exited = match &state {
            Some(t) if matches!(t.status, Status::Running | Status::Paused | Status::Pausing) => {
                report.running += 1;
                let pid = t.pid;
                let _ = svc.containers.update(&c.id, |r| {
                    // The event loop (already subscribed) may have seen it exit since.
                    if r.state != ContainerState::Exited {
                        r.state = ContainerState::Running;
                        r.pid = pid;
                    }
                    Ok(())
                });
                None
            }
            Some(t) if t.status == Status::Created => {
                let _ = svc.containers.update(&c.id, |r| {
                    r.state = ContainerState::Created;
                    Ok(())
                });
                None
            }
            Some(t) if t.status == Status::Stopped => Some((
                t.exit_status as i32,
                t.exited_at.unwrap_or_else(SystemTime::now),
                String::new(),
            )),
            Some(_) => {
                report.unknown += 1;
                let _ = svc.containers.update(&c.id, |r| {
                    r.state = ContainerState::Unknown;
                    Ok(())
                });
                None
            }
            None => Some((
                UNKNOWN_EXIT_CODE,
                SystemTime::now(),
                "the container's task was gone when taskd restarted".to_owned(),
            )),
        };
        if let Some((code, at, message)) = exited {
            report.exited_while_down += 1;
            let _ = svc.containers.update(&c.id, |r| {
                if r.state == ContainerState::Exited {
                    return Ok(()); // the event loop recorded the exit first
                }
                r.state = ContainerState::Exited;
                r.pid = 0;
                r.exit.code = code;
                r.exit.finished_at = Some(at);
                r.exit.reason = if message.is_empty() {
                    exit_reason(code, r.exit.oom_killed).to_owned()
                } else {
                    "Unknown".to_owned()
                };
                r.exit.message = message.clone();
                Ok(())
            });
            svc.events.emit_recovered(svc.container_event(
                &c.id,
                &c.sandbox_id,
                ContainerEventType::ContainerStoppedEvent,
            ));
        }
    }
    tracing::debug!(ms = started.elapsed().as_millis() as u64, "CRI recovery done");
    report
}
