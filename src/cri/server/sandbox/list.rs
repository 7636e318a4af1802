//! `ListPodSandbox`: filters by id (or unique prefix), state and labels (all must match).

use taskd_proto::cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse};

use crate::cri::convert;
use crate::cri::error::CriError;
use crate::cri::service::CriService;

impl CriService {
    pub async fn list_pod_sandbox(
        &self,
        req: ListPodSandboxRequest,
    ) -> Result<ListPodSandboxResponse, CriError> {
        let f = req.filter.unwrap_or_default();
        let id = self.sandboxes.id_filter(&f.id);
        let mut items: Vec<_> = self
            .sandboxes
            .list()
            .iter()
            .filter(|s| id.admits(&s.id))
            .filter(|s| {
                f.state
                    .as_ref()
                    .is_none_or(|st| st.state == convert::sandbox_state(s) as i32)
            })
            .filter(|s| convert::labels_match(&s.labels, &f.label_selector))
            .map(convert::pod_sandbox)
            .collect();
        items.sort_by_key(|s| s.created_at);
        Ok(ListPodSandboxResponse { items })
    }
}

#[cfg(test)]
mod tests {
    use taskd_proto::cri::v1 as cri;

    use crate::cri::service::testing::{sandbox, service};
    use crate::cri::store::sandbox::SandboxState;

    #[tokio::test]
    async fn filters_by_id_prefix_state_and_labels() {
        let dir = tempfile::tempdir().unwrap();
        let svc = service(dir.path());
        svc.sandboxes
            .add(sandbox("aaa1", "a", SandboxState::Ready, &[("app", "web")], 3))
            .unwrap();
        svc.sandboxes
            .add(sandbox("aaa2", "b", SandboxState::NotReady, &[("app", "web")], 2))
            .unwrap();
        svc.sandboxes
            .add(sandbox("bbb1", "c", SandboxState::Ready, &[("app", "db")], 1))
            .unwrap();
        let ids = |f: Option<cri::PodSandboxFilter>| {
            let svc = &svc;
            async move {
                svc.list_pod_sandbox(cri::ListPodSandboxRequest { filter: f })
                    .await
                    .unwrap()
                    .items
                    .into_iter()
                    .map(|s| s.id)
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(ids(None).await, ["aaa1", "aaa2", "bbb1"], "oldest first");
        let f = |id: &str, state: Option<cri::PodSandboxState>, labels: &[(&str, &str)]| {
            Some(cri::PodSandboxFilter {
                id: id.into(),
                state: state.map(|s| cri::PodSandboxStateValue { state: s as i32 }),
                label_selector: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })
        };
        assert_eq!(ids(f("bbb", None, &[])).await, ["bbb1"]);
        assert!(
            ids(f("aaa", None, &[])).await.is_empty(),
            "ambiguous prefix matches nothing"
        );
        assert!(ids(f("zzz", None, &[])).await.is_empty());
        assert_eq!(
            ids(f("", Some(cri::PodSandboxState::SandboxReady), &[])).await,
            ["aaa1", "bbb1"]
        );
        assert_eq!(ids(f("", None, &[("app", "web")])).await, ["aaa1", "aaa2"]);
        assert_eq!(
            ids(f(
                "",
                Some(cri::PodSandboxState::SandboxNotready),
                &[("app", "web")]
            ))
            .await,
            ["aaa2"]
        );
    }
}
