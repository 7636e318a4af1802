//! `ListContainers`: filters by id (or unique prefix), state, pod sandbox id (or prefix)
//! and labels (all must match).

use taskd_proto::cri::v1::{ListContainersRequest, ListContainersResponse};

use crate::cri::convert;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn list_containers(
        &self,
        req: ListContainersRequest,
    ) -> Result<ListContainersResponse, CriError> {
        let f = req.filter.unwrap_or_default();
        let id = self.containers.id_filter(&f.id);
        let pod = self.sandboxes.id_filter(&f.pod_sandbox_id);
        let mut containers: Vec<_> = self
            .containers
            .list()
            .iter()
            .filter(|c| id.admits(&c.id) && pod.admits(&c.sandbox_id))
            .filter(|c| {
                f.state
                    .as_ref()
                    .is_none_or(|st| st.state == convert::container_state(c.state) as i32)
            })
            .filter(|c| convert::labels_match(&c.labels, &f.label_selector))
            .map(convert::container)
            .collect();
        containers.sort_by_key(|c| c.created_at);
        Ok(ListContainersResponse { containers })
    }
}

#[cfg(test)]
mod tests {
    use taskd_proto::cri::v1 as cri;

    use crate::cri::service::testing::{container, sandbox, service};
    use crate::cri::store::container::ContainerState;
    use crate::cri::store::sandbox::SandboxState;

    #[tokio::test]
    async fn filters_by_pod_state_and_labels_and_status_reports_exit() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.sandboxes
            .add(sandbox("pod1", "a", SandboxState::Ready, &[], 1))
            .unwrap();
        svc.containers
            .add(container("c1", "pod1", ContainerState::Running, &[("tier", "x")]))
            .unwrap();
        let mut exited = container("c2", "pod1", ContainerState::Exited, &[]);
        exited.exit.code = 137;
        exited.exit.reason = "OOMKilled".into();
        svc.containers.add(exited).unwrap();
        svc.containers
            .add(container("c3", "pod2", ContainerState::Created, &[]))
            .unwrap();
        let list = |f: cri::ContainerFilter| {
            let svc = &svc;
            async move {
                let mut v: Vec<String> = svc
                    .list_containers(cri::ListContainersRequest { filter: Some(f) })
                    .await
                    .unwrap()
                    .containers
                    .into_iter()
                    .map(|c| c.id)
                    .collect();
                v.sort();
                v
            }
        };
        assert_eq!(list(Default::default()).await, ["c1", "c2", "c3"]);
        let pod = cri::ContainerFilter {
            pod_sandbox_id: "pod1".into(),
            ..Default::default()
        };
        assert_eq!(list(pod.clone()).await, ["c1", "c2"]);
        let running = cri::ContainerFilter {
            state: Some(cri::ContainerStateValue {
                state: cri::ContainerState::ContainerRunning as i32,
            }),
            ..pod.clone()
        };
        assert_eq!(list(running).await, ["c1"]);
        let labelled = cri::ContainerFilter {
            label_selector: [("tier".to_owned(), "x".to_owned())].into(),
            ..Default::default()
        };
        assert_eq!(list(labelled).await, ["c1"]);

        let st = svc
            .container_status(cri::ContainerStatusRequest {
                container_id: "c2".into(),
                verbose: true,
            })
            .await
            .unwrap();
        let s = st.status.unwrap();
        assert_eq!((s.exit_code, s.reason.as_str()), (137, "OOMKilled"));
        assert_eq!(s.state, cri::ContainerState::ContainerExited as i32);
        assert!(st.info["info"].contains("CONTAINER_EXITED"));

        // Reopen: only for running containers with a log.
        let e = svc
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: "c2".into(),
            })
            .await
            .unwrap_err();
        assert!(e.to_string().contains("not running"), "{e}");
        let e = svc
            .reopen_container_log(cri::ReopenContainerLogRequest {
                container_id: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(
            crate::errdefs::ErrorKind::kind(&e),
            crate::errdefs::Kind::NotFound
        );

        // PodSandboxStatus carries its containers' statuses.
        let ps = svc
            .pod_sandbox_status(cri::PodSandboxStatusRequest {
                pod_sandbox_id: "pod1".into(),
                verbose: false,
            })
            .await
            .unwrap();
        assert_eq!(ps.containers_statuses.len(), 2);
        assert_eq!(ps.status.unwrap().network.unwrap().ip, "10.88.0.2");
    }
}
