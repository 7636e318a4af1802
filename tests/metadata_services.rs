//! Component tests: the namespaces, containers and leases `Local`s against a temporary redb
//! database, with a collecting event publisher. No daemon, no root.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use taskd::errdefs::{ErrorKind, Kind};
use taskd::events::{EventError, Publisher};
use taskd::metadata::{Container, Db, LeaseResource, MetadataError, Namespace, Runtime};
use taskd::services::containers::{self, Containers};
use taskd::services::leases::{self, Leases};
use taskd::services::namespaces::{self, Namespaces};
use taskd_proto::containerd::events as ev;

/// Records every published event: (namespace, topic, any).
#[derive(Default)]
struct Collect(Mutex<Vec<(String, String, prost_types::Any)>>);

impl Publisher for Collect {
    fn publish(&self, namespace: &str, topic: &str, event: prost_types::Any) -> Result<(), EventError> {
        self.0
            .lock()
            .unwrap()
            .push((namespace.to_owned(), topic.to_owned(), event));
        Ok(())
    }
}

impl Collect {
    fn topics(&self) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(n, t, _)| (n.clone(), t.clone()))
            .collect()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    events: Arc<Collect>,
    ns: Arc<dyn Namespaces>,
    containers: Arc<dyn Containers>,
    leases: Arc<dyn Leases>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
    let events = Arc::new(Collect::default());
    Env {
        ns: Arc::new(namespaces::Local::new(db.clone(), events.clone())),
        containers: Arc::new(containers::Local::new(db.clone(), events.clone())),
        leases: Arc::new(leases::Local::new(db)),
        events,
        _dir: dir,
    }
}

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        },
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.1.0"}"#.to_vec(),
        }),
        ..Default::default()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(std::string::ToString::to_string).collect()
}

#[track_caller]
fn assert_err(err: MetadataError, kind: Kind, mentions: &str) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string().contains(mentions),
        "{err} should mention {mentions}"
    );
}

#[tokio::test]
async fn containers_publish_create_update_delete_events() {
    let e = env();
    let c = e.containers.create("default", container("c1")).await.unwrap();
    assert!(c.created_at.is_some());
    let mut u = container("c1");
    u.labels.insert("k".into(), "v".into());
    e.containers.update("default", u, s(&["labels.k"])).await.unwrap();
    e.containers.delete("default", "c1").await.unwrap();
    // Failed calls publish nothing.
    e.containers.delete("default", "c1").await.unwrap_err();

    let got = e.events.0.lock().unwrap().clone();
    let topics: Vec<&str> = got.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        ["/containers/create", "/containers/update", "/containers/delete"]
    );
    assert!(got.iter().all(|(n, _, _)| n == "default"));
    assert_eq!(got[0].2.type_url, "containerd.events.ContainerCreate");
    let create = ev::ContainerCreate::decode(got[0].2.value.as_slice()).unwrap();
    assert_eq!(create.id, "c1");
    assert_eq!(create.runtime.unwrap().name, "io.containerd.runc.v2");
    let update = ev::ContainerUpdate::decode(got[1].2.value.as_slice()).unwrap();
    assert_eq!(update.labels.get("k").map(String::as_str), Some("v"));
    assert_eq!(got[2].2.type_url, "containerd.events.ContainerDelete");
}

#[tokio::test]
async fn namespaces_lifecycle_and_events() {
    let e = env();
    e.ns.create("n1", [("a".to_string(), "1".to_string())].into())
        .await
        .unwrap();
    assert_err(
        e.ns.create("n1", BTreeMap::new()).await.unwrap_err(),
        Kind::AlreadyExists,
        "n1",
    );
    assert_err(
        e.ns.create("n_1__x", BTreeMap::new()).await.unwrap_err(),
        Kind::InvalidArgument,
        "namespace",
    );
    e.ns.update(
        Namespace {
            name: "n1".into(),
            labels: [("b".to_string(), "2".to_string())].into(),
        },
        s(&["labels.b"]),
    )
    .await
    .unwrap();
    assert_eq!(e.ns.get("n1").await.unwrap().labels.len(), 2);

    // A container makes its namespace exist and keeps it from being deleted.
    e.containers.create("n2", container("c1")).await.unwrap();
    let names: Vec<String> = e.ns.list("").await.unwrap().into_iter().map(|n| n.name).collect();
    assert_eq!(names, ["n1", "n2"]);
    let names: Vec<String> =
        e.ns.list("labels.a==1")
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.name)
            .collect();
    assert_eq!(names, ["n1"]);
    let lease = e.leases.create("n2", "", BTreeMap::new()).await.unwrap();
    assert_err(
        e.ns.delete("n2").await.unwrap_err(),
        Kind::FailedPrecondition,
        "1 container, 1 lease",
    );
    e.containers.delete("n2", "c1").await.unwrap();
    e.leases.delete("n2", &lease.id, true).await.unwrap();
    e.ns.delete("n2").await.unwrap();
    e.ns.delete("n1").await.unwrap();
    assert_err(e.ns.delete("n1").await.unwrap_err(), Kind::NotFound, "n1");
    // Get of an unknown namespace answers like containerd: no labels, no error.
    assert_eq!(
        e.ns.get("n1").await.unwrap(),
        Namespace {
            name: "n1".into(),
            labels: BTreeMap::new()
        }
    );
    assert_err(
        e.ns.get("bad/name").await.unwrap_err(),
        Kind::InvalidArgument,
        "namespace",
    );

    let topics = e.events.topics();
    assert!(
        topics.contains(&("n1".into(), "/namespaces/create".into())),
        "{topics:?}"
    );
    assert!(
        topics.contains(&("n1".into(), "/namespaces/update".into())),
        "{topics:?}"
    );
    assert!(
        topics.contains(&("n1".into(), "/namespaces/delete".into())),
        "{topics:?}"
    );
    assert!(
        topics.contains(&("n2".into(), "/namespaces/delete".into())),
        "{topics:?}"
    );
}

#[tokio::test]
async fn leases_generate_ids_and_track_resources() {
    let e = env();
    let a = e.leases.create("default", "", BTreeMap::new()).await.unwrap();
    let b = e.leases.create("default", "", BTreeMap::new()).await.unwrap();
    assert_ne!(a.id, b.id);
    let named = e.leases.create("default", "mine", BTreeMap::new()).await.unwrap();
    assert_eq!(named.id, "mine");
    assert_err(
        e.leases
            .create("default", "mine", BTreeMap::new())
            .await
            .unwrap_err(),
        Kind::AlreadyExists,
        "mine",
    );
    let r = LeaseResource {
        id: "snap".into(),
        r#type: "snapshots/overlayfs".into(),
    };
    e.leases.add_resource("default", "mine", r.clone()).await.unwrap();
    assert_eq!(
        e.leases.list_resources("default", "mine").await.unwrap(),
        vec![r.clone()]
    );
    e.leases.delete_resource("default", "mine", r).await.unwrap();
    assert!(
        e.leases
            .list_resources("default", "mine")
            .await
            .unwrap()
            .is_empty()
    );
    let ids: Vec<String> = e
        .leases
        .list("default", s(&["id==mine"]))
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(ids, ["mine"]);
    assert_err(
        e.leases
            .add_resource(
                "default",
                "mine",
                LeaseResource {
                    id: "x".into(),
                    r#type: "images".into(),
                },
            )
            .await
            .unwrap_err(),
        Kind::NotImplemented,
        "resource.type",
    );
}

/// 8 clients × 100 Create/Update/Delete calls on 5 overlapping ids: only AlreadyExists and
/// NotFound errors, and no lost update (each client's label counter ends at the number of
/// updates it saw succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_update_delete_on_overlapping_ids() {
    let e = env();
    let ids = ["a", "b", "c", "d", "e"];
    let mut tasks = Vec::new();
    for client in 0..8usize {
        let containers = e.containers.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = [0usize; 3];
            for i in 0..100usize {
                let id = ids[(client * 7 + i * 3) % ids.len()];
                let r = match (client + i) % 3 {
                    0 => containers.create("default", container(id)).await.map(|_| ()),
                    1 => {
                        let mut c = container(id);
                        c.labels.insert(format!("client{client}"), i.to_string());
                        containers
                            .update("default", c, s(&[&format!("labels.client{client}")]))
                            .await
                            .map(|_| ())
                    }
                    _ => containers.delete("default", id).await,
                };
                match r {
                    Ok(()) => ok[(client + i) % 3] += 1,
                    Err(MetadataError::AlreadyExists { .. } | MetadataError::NotFound { .. }) => {}
                    Err(other) => panic!("client {client} call {i} on {id}: unexpected error {other}"),
                }
            }
            ok
        }));
    }
    let mut total = [0usize; 3];
    for t in tasks {
        let ok = t.await.unwrap();
        for k in 0..3 {
            total[k] += ok[k];
        }
    }
    assert!(total[0] > 0 && total[2] > 0, "{total:?}");
    // Accounting: every id exists iff it has one more successful create than delete.
    let left = e.containers.list("default", vec![]).await.unwrap();
    assert_eq!(
        total[0] - total[2],
        left.len(),
        "creates {} deletes {} left {:?}",
        total[0],
        total[2],
        left
    );
}

/// Concurrent label updates on ONE container: each client sets its own key; all survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_updates_lose_nothing() {
    let e = env();
    e.containers.create("default", container("shared")).await.unwrap();
    let mut tasks = Vec::new();
    for client in 0..8usize {
        let containers = e.containers.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..13usize {
                let mut c = container("shared");
                c.labels.insert(format!("client{client}-{i}"), "x".into());
                containers
                    .update("default", c, s(&[&format!("labels.client{client}-{i}")]))
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = e.containers.get("default", "shared").await.unwrap();
    assert_eq!(c.labels.len(), 8 * 13, "lost updates: {:?}", c.labels.keys());
    assert_eq!(e.events.topics().len(), 1 + 8 * 13);
}

#[tokio::test]
async fn expiry_in_the_past_is_removed_by_the_task() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
    let leases = leases::Local::new(db.clone());
    let past =
        prost_types::Timestamp::from(std::time::SystemTime::now() - Duration::from_secs(5)).to_string();
    leases
        .create(
            "default",
            "old",
            [(taskd::metadata::LABEL_GC_EXPIRE.to_string(), past)].into(),
        )
        .await
        .unwrap();
    let task = taskd::metadata::plugin::ExpiryTask::spawn(db, Duration::from_millis(10));
    let mut gone = false;
    for _ in 0..300 {
        if leases.list("default", vec![]).await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.stop().await;
    assert!(gone);
}
