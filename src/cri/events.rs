//! The CRI event loop: task events from the exchange update the stores.
//!
//! ```text
//! exchange ──subscribe("cri", namespace k8s.io, /tasks/exit | /tasks/oom)──▶ run()
//!   /tasks/oom  {container_id}           container.exit.oom_killed = true
//!   /tasks/exit {container_id, id, ...}  init process only (id == container_id):
//!                 a container → EXITED with exit code, finish time, reason
//!                               (OOMKilled | Completed | Error), pid 0;
//!                               GetContainerEvents: CONTAINER_STOPPED (replayed to later
//!                               subscribers when it exited before this taskd started)
//!                 a sandbox   → NotReady (the pause process is gone)
//! ```
//!
//! An event for an id the stores do not know is ignored (a container created through
//! `ctr` in the k8s.io namespace, or one already removed). A record already EXITED keeps
//! its first exit details (StopContainer may have recorded them from Wait).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use taskd_proto::containerd::events::{TaskExit, TaskOom};
use taskd_proto::cri::v1::ContainerEventType;
use tokio::task::JoinHandle;

use super::service::CriService;
use super::store::StoreError;
use super::store::container::{ContainerState, exit_reason};
use super::store::sandbox::SandboxState;
use crate::events::{Envelope, Subscriber};
use crate::filters;

/// Subscribes and runs the loop until the exchange closes the subscription.
pub fn spawn(
    svc: Arc<CriService>,
    subscriber: &dyn Subscriber,
) -> Result<JoinHandle<()>, filters::FilterError> {
    let filter = filters::parse(&[
        format!(
            r#"namespace=="{}",topic=="/tasks/exit""#,
            crate::cri::error::NAMESPACE
        ),
        format!(
            r#"namespace=="{}",topic=="/tasks/oom""#,
            crate::cri::error::NAMESPACE
        ),
    ])?;
    let mut sub = subscriber.subscribe("cri", filter);
    Ok(tokio::spawn(async move {
        while let Some(env) = sub.receiver.recv().await {
            handle(&svc, &env);
        }
        // The exchange closed (shutdown): end the GetContainerEvents streams too.
        svc.events.close();
        tracing::debug!("CRI event loop ended");
    }))
}

/// Applies one event to the stores.
pub fn handle(svc: &CriService, env: &Envelope) {
    match env.topic.as_str() {
        "/tasks/oom" => match TaskOom::decode(env.event.value.as_slice()) {
            Ok(e) => {
                let _ = svc.containers.update(&e.container_id, |c| {
                    c.exit.oom_killed = true;
                    Ok(())
                });
            }
            Err(err) => tracing::warn!(error = %err, "undecodable TaskOOM event"),
        },
        "/tasks/exit" => match TaskExit::decode(env.event.value.as_slice()) {
            Ok(e) if e.id == e.container_id || e.id.is_empty() => exited(svc, &e),
            Ok(_) => {} // an exec process
            Err(err) => tracing::warn!(error = %err, "undecodable TaskExit event"),
        },
        _ => {}
    }
}

fn exited(svc: &CriService, e: &TaskExit) {
    let at = e
        .exited_at
        .as_ref()
        .map(|t| UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32))
        .unwrap_or_else(SystemTime::now);
    let code = e.exit_status as i32;
    let r = svc.containers.update(&e.container_id, |c| {
        if c.state == ContainerState::Exited {
            return Ok(None);
        }
        c.transition(ContainerState::Exited)?;
        c.exit.code = code;
        c.exit.finished_at = Some(at);
        c.exit.reason = exit_reason(code, c.exit.oom_killed).to_owned();
        c.pid = 0;
        Ok(Some(c.sandbox_id.clone()))
    });
    match r {
        Ok(changed) => {
            if let Some(sandbox_id) = changed {
                tracing::info!(container = %e.container_id, exit_status = code, "container exited");
                let ev = svc.container_event(
                    &e.container_id,
                    &sandbox_id,
                    ContainerEventType::ContainerStoppedEvent,
                );
                if at < svc.started_at {
                    // It exited while taskd was down (the shim delivers the event late):
                    // a recovery event, kept for subscribers that reconnect.
                    svc.events.emit_recovered(ev);
                } else {
                    svc.events.emit(ev);
                }
            }
            return;
        }
        Err(StoreError::NotFound { .. }) => {}
        Err(err) => {
            tracing::warn!(error = %err, "container exit not applied");
            return;
        }
    }
    let r = svc.sandboxes.update(&e.container_id, |s| {
        if s.state != SandboxState::NotReady {
            s.transition(SandboxState::NotReady)?;
        }
        Ok(())
    });
    match r {
        Ok(()) => tracing::info!(sandbox = %e.container_id, "pod sandbox pause process exited"),
        Err(StoreError::NotFound { .. }) => {
            tracing::debug!(id = %e.container_id, "exit of a task CRI does not know");
        }
        Err(err) => tracing::warn!(error = %err, "sandbox exit not applied"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::service::testing::{container, sandbox, service};
    use crate::events::{Exchange, Publisher, any};

    #[tokio::test]
    async fn exits_and_ooms_reach_the_stores_through_the_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let svc = Arc::new(service(dir.path()));
        svc.sandboxes
            .add(sandbox("pod1", "a", SandboxState::Ready, &[], 1))
            .unwrap();
        svc.containers
            .add(container("c1", "pod1", ContainerState::Running, &[]))
            .unwrap();
        svc.containers
            .add(container("c2", "pod1", ContainerState::Running, &[]))
            .unwrap();
        let ex = Arc::new(Exchange::with_queue_size(16).unwrap());
        let mut feed = svc.events.subscribe();
        let h = spawn(svc.clone(), ex.as_ref()).unwrap();

        let exit = |id: &str, exec: &str, status: u32| TaskExit {
            container_id: id.into(),
            id: exec.into(),
            pid: 5,
            exit_status: status,
            exited_at: Some(prost_types::Timestamp {
                seconds: 100,
                nanos: 0,
            }),
        };
        ex.publish(
            "k8s.io",
            "/tasks/oom",
            any(&TaskOom {
                container_id: "c1".into(),
            }),
        )
        .unwrap();
        ex.publish("k8s.io", "/tasks/exit", any(&exit("c1", "c1", 137)))
            .unwrap();
        ex.publish("k8s.io", "/tasks/exit", any(&exit("c2", "exec-1", 1)))
            .unwrap(); // an exec: ignored
        ex.publish("default", "/tasks/exit", any(&exit("c2", "c2", 1)))
            .unwrap(); // other namespace
        ex.publish("k8s.io", "/tasks/exit", any(&exit("pod1", "pod1", 0)))
            .unwrap();
        ex.publish("k8s.io", "/tasks/exit", any(&exit("unknown", "unknown", 0)))
            .unwrap();
        ex.close();
        h.await.unwrap();

        let c1 = svc.containers.get("c1").unwrap();
        assert_eq!(c1.state, ContainerState::Exited);
        assert_eq!((c1.exit.code, c1.exit.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(c1.exit.finished_at, Some(UNIX_EPOCH + Duration::from_secs(100)));
        assert_eq!(svc.containers.get("c2").unwrap().state, ContainerState::Running);
        assert_eq!(svc.sandboxes.get("pod1").unwrap().state, SandboxState::NotReady);

        let ev = feed.recv().await.unwrap();
        assert_eq!(ev.container_id, "c1");
        assert_eq!(
            ev.container_event_type,
            ContainerEventType::ContainerStoppedEvent as i32
        );
        assert_eq!(ev.containers_statuses.len(), 2);
        assert!(ev.pod_sandbox_status.is_some());
    }

    #[test]
    fn first_exit_wins_and_codes_map_to_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.containers
            .add(container("c1", "p", ContainerState::Running, &[]))
            .unwrap();
        let env = |status: u32| Envelope {
            timestamp: SystemTime::now(),
            namespace: "k8s.io".into(),
            topic: "/tasks/exit".into(),
            event: any(&TaskExit {
                container_id: "c1".into(),
                id: "c1".into(),
                pid: 1,
                exit_status: status,
                exited_at: None,
            }),
        };
        handle(&svc, &env(0));
        handle(&svc, &env(2));
        let c = svc.containers.get("c1").unwrap();
        assert_eq!((c.exit.code, c.exit.reason.as_str()), (0, "Completed"));
    }
}
