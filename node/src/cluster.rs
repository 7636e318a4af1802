//! What taskd-node does through the API server: the Node's label and annotations, the
//! RuntimeClasses it owns, Events on the Node, and (for the chart's post-delete hook) one
//! uninstall pod per node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, Event, EventSource, HostPathVolumeSource, Node, ObjectFieldSelector,
    ObjectReference, Pod, PodSpec, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::node::v1::{RuntimeClass, Scheduling};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

/// The Node label (value `ready`) the RuntimeClasses schedule on.
pub const RUNTIME_LABEL: &str = "taskd.io/runtime";
pub const VERSION_ANNOTATION: &str = "taskd.io/version";
pub const RELEASE_ANNOTATION: &str = "taskd.io/release";
/// The owner label: taskd-node changes or deletes only RuntimeClasses that carry it.
pub const OWNER_LABEL: &str = "app.kubernetes.io/managed-by";
pub const OWNER: &str = "taskd-node";
/// Where Node Events go (the namespace kubelet uses for them).
const EVENTS_NAMESPACE: &str = "default";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no Kubernetes client config (in-cluster or KUBECONFIG): {0}")]
    Config(String),
    #[error("{action} {kind} {name}: {source}")]
    Api {
        action: &'static str,
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("RuntimeClass {0} exists and is not owned by taskd-node (no {OWNER_LABEL}={OWNER}); left alone")]
    NotOwned(String),
    #[error("uninstall pod {pod} on node {node}: {reason}")]
    UninstallPod {
        pod: String,
        node: String,
        reason: String,
    },
}

fn api(action: &'static str, kind: &'static str, name: &str) -> impl FnOnce(kube::Error) -> Error {
    let name = name.to_string();
    move |source| Error::Api {
        action,
        kind,
        name,
        source,
    }
}

/// A RuntimeClass the values ask for: `name=handler`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantedClass {
    pub name: String,
    pub handler: String,
}

impl std::str::FromStr for WantedClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((n, h)) if !n.is_empty() && !h.is_empty() => Ok(WantedClass {
                name: n.to_string(),
                handler: h.to_string(),
            }),
            _ => Err(format!("{s:?}: expected NAME=HANDLER")),
        }
    }
}

pub async fn client() -> Result<Client, Error> {
    Client::try_default()
        .await
        .map_err(|e| Error::Config(e.to_string()))
}

pub struct Cluster {
    client: Client,
    node: String,
}

impl Cluster {
    pub fn new(client: Client, node: String) -> Cluster {
        Cluster { client, node }
    }

    fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    fn classes(&self) -> Api<RuntimeClass> {
        Api::all(self.client.clone())
    }

    async fn patch_node(&self, patch: &serde_json::Value) -> Result<(), Error> {
        self.nodes()
            .patch(&self.node, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map_err(api("patch", "Node", &self.node))?;
        Ok(())
    }

    /// Labels the Node `taskd.io/runtime=ready` and annotates version and release.
    pub async fn mark_ready(&self, version: &str, release: &str) -> Result<(), Error> {
        let patch = json!({"metadata": {
            "labels": {RUNTIME_LABEL: "ready"},
            "annotations": {VERSION_ANNOTATION: version, RELEASE_ANNOTATION: release},
        }});
        self.patch_node(&patch).await
    }

    /// Removes the label and annotations (absent ones are fine).
    pub async fn unmark(&self) -> Result<(), Error> {
        let patch = json!({"metadata": {
            "labels": {RUNTIME_LABEL: null},
            "annotations": {VERSION_ANNOTATION: null, RELEASE_ANNOTATION: null},
        }});
        self.patch_node(&patch).await
    }

    /// The Node's `taskd.io/runtime` label and version annotation.
    pub async fn node_marks(&self) -> Result<(Option<String>, Option<String>), Error> {
        let node = self
            .nodes()
            .get(&self.node)
            .await
            .map_err(api("get", "Node", &self.node))?;
        let label = node
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(RUNTIME_LABEL))
            .cloned();
        let version = node
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(VERSION_ANNOTATION))
            .cloned();
        Ok((label, version))
    }

    /// Other nodes that still have taskd (label present).
    pub async fn other_nodes_with_taskd(&self) -> Result<Vec<String>, Error> {
        Ok(self
            .nodes_with_taskd()
            .await?
            .into_iter()
            .filter(|n| *n != self.node)
            .collect())
    }

    async fn nodes_with_taskd(&self) -> Result<Vec<String>, Error> {
        let list = self
            .nodes()
            .list(&ListParams::default().labels(RUNTIME_LABEL))
            .await
            .map_err(api("list", "Node", RUNTIME_LABEL))?;
        Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
    }

    fn desired_class(w: &WantedClass) -> RuntimeClass {
        RuntimeClass {
            metadata: ObjectMeta {
                name: Some(w.name.clone()),
                labels: Some(BTreeMap::from([(OWNER_LABEL.to_string(), OWNER.to_string())])),
                ..Default::default()
            },
            handler: w.handler.clone(),
            scheduling: Some(Scheduling {
                node_selector: Some(BTreeMap::from([(RUNTIME_LABEL.to_string(), "ready".to_string())])),
                tolerations: None,
            }),
            overhead: None,
        }
    }

    fn owned(rc: &RuntimeClass) -> bool {
        rc.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .map(String::as_str)
            == Some(OWNER)
    }

    /// Makes the owned RuntimeClasses exactly `wanted`: creates missing ones, recreates one
    /// whose handler changed (the handler is immutable), updates one whose scheduling drifted,
    /// deletes owned ones no longer wanted. One not owned by taskd-node is never touched
    /// (reported in the returned list). Returns the names it changed and the refused ones.
    pub async fn sync_classes(&self, wanted: &[WantedClass]) -> Result<(Vec<String>, Vec<Error>), Error> {
        let classes = self.classes();
        let mut changed = Vec::new();
        let mut refused = Vec::new();
        for w in wanted {
            let desired = Self::desired_class(w);
            let existing = classes
                .get_opt(&w.name)
                .await
                .map_err(api("get", "RuntimeClass", &w.name))?;
            match existing {
                None => {
                    classes
                        .create(&PostParams::default(), &desired)
                        .await
                        .map_err(api("create", "RuntimeClass", &w.name))?;
                    changed.push(w.name.clone());
                }
                Some(rc) if !Self::owned(&rc) => refused.push(Error::NotOwned(w.name.clone())),
                Some(rc) if rc.handler != w.handler => {
                    classes
                        .delete(&w.name, &DeleteParams::default())
                        .await
                        .map_err(api("delete", "RuntimeClass", &w.name))?;
                    classes
                        .create(&PostParams::default(), &desired)
                        .await
                        .map_err(api("create", "RuntimeClass", &w.name))?;
                    changed.push(w.name.clone());
                }
                Some(rc) if rc.scheduling != desired.scheduling => {
                    let mut update = desired.clone();
                    update.metadata.resource_version = rc.metadata.resource_version.clone();
                    classes
                        .replace(&w.name, &PostParams::default(), &update)
                        .await
                        .map_err(api("update", "RuntimeClass", &w.name))?;
                    changed.push(w.name.clone());
                }
                Some(_) => {}
            }
        }
        for name in self.owned_classes().await? {
            if !wanted.iter().any(|w| w.name == name) {
                self.delete_class(&name).await?;
                changed.push(name);
            }
        }
        Ok((changed, refused))
    }

    /// Names of the RuntimeClasses that carry the owner label.
    pub async fn owned_classes(&self) -> Result<Vec<String>, Error> {
        let list = self
            .classes()
            .list(&ListParams::default().labels(&format!("{OWNER_LABEL}={OWNER}")))
            .await
            .map_err(api("list", "RuntimeClass", OWNER))?;
        Ok(list
            .items
            .into_iter()
            .filter(Self::owned)
            .filter_map(|rc| rc.metadata.name)
            .collect())
    }

    async fn delete_class(&self, name: &str) -> Result<(), Error> {
        match self.classes().delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(api("delete", "RuntimeClass", name)(e)),
        }
    }

    /// Deletes every owned RuntimeClass; returns their names.
    pub async fn delete_owned_classes(&self) -> Result<Vec<String>, Error> {
        let names = self.owned_classes().await?;
        for n in &names {
            self.delete_class(n).await?;
        }
        Ok(names)
    }

    /// Records an Event on the Node (`type_` Normal or Warning).
    pub async fn event(&self, type_: &str, reason: &str, message: &str) -> Result<(), Error> {
        let uid = self
            .nodes()
            .get_opt(&self.node)
            .await
            .ok()
            .flatten()
            .and_then(|n| n.metadata.uid);
        let now = Timestamp::now();
        let ev = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}.taskd-node.", self.node)),
                namespace: Some(EVENTS_NAMESPACE.into()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                uid,
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(type_.into()),
            source: Some(EventSource {
                component: Some(OWNER.into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some(OWNER.into()),
            reporting_instance: Some(self.node.clone()),
            action: Some(reason.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            ..Default::default()
        };
        Api::<Event>::namespaced(self.client.clone(), EVENTS_NAMESPACE)
            .create(&PostParams::default(), &ev)
            .await
            .map_err(api("create", "Event", reason))?;
        Ok(())
    }
}

/// How the post-delete hook's per-node uninstall pods look.
pub struct CleanupPods {
    pub image: String,
    pub namespace: String,
    pub service_account: String,
    /// taskd-node's arguments before the subcommand (host root, systemctl, kubelet config).
    pub global_args: Vec<String>,
    pub host_root: String,
    pub purge_data: bool,
    pub timeout: Duration,
}

impl CleanupPods {
    fn pod(&self, name: &str, node: &str) -> Pod {
        let mut args = self.global_args.clone();
        args.push("uninstall".into());
        if self.purge_data {
            args.push("--purge-data".into());
        }
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    (OWNER_LABEL.to_string(), OWNER.to_string()),
                    ("app.kubernetes.io/component".to_string(), "uninstall".to_string()),
                ])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some(node.into()),
                restart_policy: Some("Never".into()),
                host_pid: Some(true),
                host_network: Some(true),
                service_account_name: Some(self.service_account.clone()),
                priority_class_name: Some("system-node-critical".into()),
                tolerations: Some(vec![Toleration {
                    operator: Some("Exists".into()),
                    ..Default::default()
                }]),
                containers: vec![Container {
                    name: "uninstall".into(),
                    image: Some(self.image.clone()),
                    command: Some(vec!["/opt/taskd/bin/taskd-node".into()]),
                    args: Some(args),
                    env: Some(vec![EnvVar {
                        name: "NODE_NAME".into(),
                        value_from: Some(EnvVarSource {
                            field_ref: Some(ObjectFieldSelector {
                                field_path: "spec.nodeName".into(),
                                api_version: None,
                            }),
                            ..Default::default()
                        }),
                        value: None,
                    }]),
                    security_context: Some(SecurityContext {
                        privileged: Some(true),
                        ..Default::default()
                    }),
                    volume_mounts: Some(vec![VolumeMount {
                        name: "host".into(),
                        mount_path: self.host_root.clone(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }],
                volumes: Some(vec![Volume {
                    name: "host".into(),
                    host_path: Some(HostPathVolumeSource {
                        path: "/".into(),
                        type_: Some("Directory".into()),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Runs `taskd-node uninstall` on every node labelled `taskd.io/runtime`, one pod each,
    /// waits for them, deletes them, then deletes the owned RuntimeClasses. Returns the nodes.
    pub async fn run(&self, client: Client) -> Result<Vec<String>, Vec<Error>> {
        let cluster = Cluster::new(client.clone(), String::new());
        let nodes = cluster.nodes_with_taskd().await.map_err(|e| vec![e])?;
        let pods: Api<Pod> = Api::namespaced(client, &self.namespace);
        let mut errors = Vec::new();
        let mut started = Vec::new();
        for node in &nodes {
            let name = pod_name(node);
            // A pod left by an earlier attempt is replaced.
            let _ = pods.delete(&name, &DeleteParams::default()).await;
            match pods.create(&PostParams::default(), &self.pod(&name, node)).await {
                Ok(_) => started.push((name, node.clone())),
                Err(e) => errors.push(api("create", "Pod", &name)(e)),
            }
        }
        let deadline = Instant::now() + self.timeout;
        for (name, node) in &started {
            loop {
                let phase = match pods.get(name).await {
                    Ok(p) => p.status.and_then(|s| s.phase).unwrap_or_default(),
                    Err(e) => {
                        errors.push(api("get", "Pod", name)(e));
                        break;
                    }
                };
                if phase == "Succeeded" {
                    break;
                }
                if phase == "Failed" || Instant::now() >= deadline {
                    let reason = if phase == "Failed" {
                        "failed (see its logs)".to_string()
                    } else {
                        format!("not done after {:?} (phase {phase:?})", self.timeout)
                    };
                    errors.push(Error::UninstallPod {
                        pod: name.clone(),
                        node: node.clone(),
                        reason,
                    });
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
        for (name, _) in &started {
            if let Err(e) = pods.delete(name, &DeleteParams::default()).await {
                errors.push(api("delete", "Pod", name)(e));
            }
        }
        if let Err(e) = cluster.delete_owned_classes().await {
            errors.push(e);
        }
        if errors.is_empty() { Ok(nodes) } else { Err(errors) }
    }
}

/// `taskd-uninstall-<node>`, cut to a valid name.
fn pod_name(node: &str) -> String {
    let mut n = format!("taskd-uninstall-{node}");
    n.truncate(253);
    n.trim_end_matches(['-', '.']).to_string()
}
