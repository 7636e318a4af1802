//! Store tests against a temporary redb file: schema and migration, field masks, the
//! namespace rules, leases and their expiry.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};

use super::schema::{self, MIGRATIONS, Migration, SCHEMA_VERSION};
use super::*;
use super::{apply_container_update, apply_namespace_update};
use crate::errdefs::{ErrorKind, Kind};

fn db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&dir.path().join("meta.redb")).unwrap();
    (dir, db)
}

fn spec() -> Option<prost_types::Any> {
    Some(prost_types::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
        value: br#"{"ociVersion":"1.1.0"}"#.to_vec(),
    })
}

fn container(id: &str) -> Container {
    Container {
        id: id.into(),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        },
        spec: spec(),
        labels: [("app".to_string(), "x".to_string())].into(),
        ..Default::default()
    }
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn paths(p: &[&str]) -> Vec<String> {
    p.iter().map(std::string::ToString::to_string).collect()
}

#[track_caller]
fn assert_kind(err: MetadataError, kind: Kind, mentions: &str) {
    assert_eq!(err.kind(), kind, "{err}");
    assert!(
        err.to_string().contains(mentions),
        "{err:?} should mention {mentions}"
    );
}

#[test]
fn fresh_database_is_at_the_current_schema_version() {
    let (dir, db) = db();
    assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
    assert_eq!(MIGRATIONS.len() as u64, SCHEMA_VERSION);
    drop(db);
    // Reopening does not migrate again and keeps the data.
    let db = Db::open(&dir.path().join("meta.redb")).unwrap();
    assert_eq!(db.schema_version().unwrap(), SCHEMA_VERSION);
}

static V2_RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn v1_to_v2_test(tx: &WriteTransaction) -> Result<(), redb::Error> {
    V2_RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    // A step may rewrite records: here it labels every namespace.
    let mut t = tx.open_table(schema::NAMESPACES)?;
    let names: Vec<String> = t
        .iter()?
        .map(|e| e.map(|(k, _)| k.value().to_owned()))
        .collect::<Result<_, _>>()?;
    for n in names {
        let rec = super::records::NamespaceRecord {
            labels: [("migrated".to_string(), "v2".to_string())].into(),
        };
        t.insert(n.as_str(), prost::Message::encode_to_vec(&rec).as_slice())?;
    }
    Ok(())
}

#[test]
fn migration_hook_upgrades_an_older_file_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta.redb");
    {
        let db = Db::open(&path).unwrap();
        NamespaceStore::create(&db, "old", BTreeMap::new()).unwrap();
    }
    let steps: Vec<Migration> = vec![MIGRATIONS[0], v1_to_v2_test];
    let db = Db::open_with(&path, &steps).unwrap();
    assert_eq!(db.schema_version().unwrap(), 2);
    assert_eq!(V2_RUNS.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        NamespaceStore::get(&db, "old").unwrap().labels,
        labels(&[("migrated", "v2")])
    );
    drop(db);
    let db = Db::open_with(&path, &steps).unwrap();
    assert_eq!(V2_RUNS.load(std::sync::atomic::Ordering::SeqCst), 1, "ran twice");
    drop(db);

    // This taskd (v1) refuses the v2 file instead of misreading it.
    let err = Db::open(&path).unwrap_err();
    assert_kind(err, Kind::FailedPrecondition, "schema version 2");
}

#[test]
fn container_crud_keeps_timestamps() {
    let (_d, db) = db();
    let created = ContainerStore::create(&db, "default", container("c1")).unwrap();
    let created_at = created.created_at.unwrap();
    assert_eq!(created.updated_at, Some(created_at));
    assert_eq!(ContainerStore::get(&db, "default", "c1").unwrap(), created);

    let err = ContainerStore::create(&db, "default", container("c1")).unwrap_err();
    assert_kind(err, Kind::AlreadyExists, "c1");

    let mut c = container("c1");
    c.image = "other".into();
    std::thread::sleep(Duration::from_millis(2));
    let updated = ContainerStore::update(&db, "default", c, &paths(&["image"])).unwrap();
    assert_eq!(updated.image, "other");
    assert_eq!(updated.created_at, Some(created_at));
    assert!(updated.updated_at.unwrap() > created_at);
    assert_eq!(ContainerStore::get(&db, "default", "c1").unwrap(), updated);

    // Namespaces are separate, and creating in one makes it exist.
    assert_kind(
        ContainerStore::get(&db, "other", "c1").unwrap_err(),
        Kind::NotFound,
        "c1",
    );
    assert_eq!(
        NamespaceStore::list(&db)
            .unwrap()
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>(),
        ["default"]
    );

    ContainerStore::delete(&db, "default", "c1").unwrap();
    assert_kind(
        ContainerStore::delete(&db, "default", "c1").unwrap_err(),
        Kind::NotFound,
        "c1",
    );
    let err = ContainerStore::update(&db, "default", container("c1"), &[]).unwrap_err();
    assert_kind(err, Kind::NotFound, "c1");
}

#[test]
fn container_validation_happens_before_any_write() {
    let (_d, db) = db();
    let mut c = container("c1");
    c.runtime.name.clear();
    assert_kind(
        ContainerStore::create(&db, "default", c).unwrap_err(),
        Kind::InvalidArgument,
        "runtime.name",
    );
    assert_kind(
        ContainerStore::create(&db, "bad ns", container("c1")).unwrap_err(),
        Kind::InvalidArgument,
        "namespace",
    );
    assert_kind(
        ContainerStore::get(&db, "default", "../etc").unwrap_err(),
        Kind::InvalidArgument,
        "container id",
    );
    assert!(NamespaceStore::list(&db).unwrap().is_empty());
}

#[test]
fn container_list_filters() {
    let (_d, db) = db();
    for id in ["a", "b", "c"] {
        let mut c = container(id);
        c.labels.insert("name".into(), id.into());
        ContainerStore::create(&db, "default", c).unwrap();
    }
    ContainerStore::create(&db, "default2", container("z")).unwrap();
    let ids = |f: &[&str]| -> Vec<String> {
        ContainerStore::list(&db, "default", &paths(f))
            .unwrap()
            .into_iter()
            .map(|c| c.id)
            .collect()
    };
    assert_eq!(ids(&[]), ["a", "b", "c"]);
    assert_eq!(ids(&["id==b"]), ["b"]);
    assert_eq!(ids(&["labels.name==a", "labels.name==c"]), ["a", "c"]);
    assert_eq!(ids(&["runtime.name==io.containerd.runc.v2,id!=a"]), ["b", "c"]);
    let err = ContainerStore::list(&db, "default", &paths(&["image~=("])).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "filter");
}

#[test]
fn container_field_masks() {
    let existing = ContainerStore::create(&db().1, "default", container("c1")).unwrap();
    let mut incoming = container("c1");
    incoming.labels = labels(&[("new", "1"), ("app", "")]);
    incoming.image = "changed".into();
    incoming.snapshotter = "overlayfs".into();

    // labels.KEY sets one label; an empty value removes it; other fields stay.
    let u =
        apply_container_update(&existing, incoming.clone(), &paths(&["labels.new", "labels.app"])).unwrap();
    assert_eq!(u.labels, labels(&[("new", "1")]));
    assert_eq!(u.image, existing.image);

    // labels replaces the map.
    let u = apply_container_update(&existing, incoming.clone(), &paths(&["labels"])).unwrap();
    assert_eq!(u.labels, labels(&[("new", "1")]));

    // Named immutable-on-full-replace fields change when named.
    let u = apply_container_update(&existing, incoming.clone(), &paths(&["snapshotter", "image"])).unwrap();
    assert_eq!(
        (u.snapshotter.as_str(), u.image.as_str()),
        ("overlayfs", "changed")
    );

    // Full replace refuses a different snapshotter or runtime name.
    let err = apply_container_update(&existing, incoming.clone(), &[]).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "snapshotter");
    let mut other_runtime = container("c1");
    other_runtime.runtime.name = "io.containerd.runsc.v1".into();
    let err = apply_container_update(&existing, other_runtime.clone(), &[]).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "runtime.name");
    let u = apply_container_update(&existing, other_runtime, &paths(&["runtime"])).unwrap();
    assert_eq!(u.runtime.name, "io.containerd.runsc.v1");

    // Full replace of the mutable fields.
    let mut full = container("c1");
    full.image = "img2".into();
    full.labels = BTreeMap::new();
    let u = apply_container_update(&existing, full, &[]).unwrap();
    assert_eq!(u.image, "img2");
    assert!(u.labels.is_empty());

    // Extensions by key.
    let mut ext = container("c1");
    ext.extensions.insert("e".into(), prost_types::Any::default());
    let u = apply_container_update(&existing, ext, &paths(&["extensions.e"])).unwrap();
    assert!(u.extensions.contains_key("e"));
    let u = apply_container_update(&u, container("c1"), &paths(&["extensions.e"])).unwrap();
    assert!(u.extensions.is_empty());

    // Unknown paths name the mask.
    let err = apply_container_update(&existing, container("c1"), &paths(&["created_at"])).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "update_mask");
    assert!(err_text(&existing, "id").contains("\"id\""));
}

fn err_text(existing: &Container, path: &str) -> String {
    apply_container_update(existing, container("c1"), &paths(&[path]))
        .unwrap_err()
        .to_string()
}

#[test]
fn update_validates_the_merged_record() {
    let (_d, db) = db();
    ContainerStore::create(&db, "default", container("c1")).unwrap();
    let mut c = container("c1");
    c.spec = None;
    let err = ContainerStore::update(&db, "default", c, &paths(&["spec"])).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "spec");
    let mut c = container("c1");
    c.labels = labels(&[("big", &"v".repeat(4094))]);
    let err = ContainerStore::update(&db, "default", c, &paths(&["labels.big"])).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "labels");
    // Nothing was written.
    assert_eq!(
        ContainerStore::get(&db, "default", "c1").unwrap().labels,
        labels(&[("app", "x")])
    );
}

#[test]
fn namespaces_crud_and_labels() {
    let (_d, db) = db();
    let ns = NamespaceStore::create(&db, "k8s.io", labels(&[("a", "1")])).unwrap();
    assert_eq!(ns.labels, labels(&[("a", "1")]));
    assert_kind(
        NamespaceStore::create(&db, "k8s.io", BTreeMap::new()).unwrap_err(),
        Kind::AlreadyExists,
        "k8s.io",
    );
    assert_kind(
        NamespaceStore::create(&db, "-bad", BTreeMap::new()).unwrap_err(),
        Kind::InvalidArgument,
        "namespace",
    );
    assert_kind(
        NamespaceStore::create(&db, &"x".repeat(77), BTreeMap::new()).unwrap_err(),
        Kind::InvalidArgument,
        "namespace",
    );
    let set = Namespace {
        name: "k8s.io".into(),
        labels: labels(&[("b", "2")]),
    };
    let u = NamespaceStore::update(&db, set.clone(), &paths(&["labels.b"])).unwrap();
    assert_eq!(u.labels, labels(&[("a", "1"), ("b", "2")]));
    let u = NamespaceStore::update(&db, set.clone(), &paths(&["labels.a"])).unwrap();
    assert_eq!(u.labels, labels(&[("b", "2")]));
    let u = NamespaceStore::update(&db, set.clone(), &[]).unwrap();
    assert_eq!(NamespaceStore::get(&db, "k8s.io").unwrap(), u);
    let err = NamespaceStore::update(&db, set.clone(), &paths(&["name"])).unwrap_err();
    assert_kind(err, Kind::InvalidArgument, "update_mask");
    let missing = Namespace {
        name: "nope".into(),
        labels: BTreeMap::new(),
    };
    assert_kind(
        NamespaceStore::update(&db, missing, &[]).unwrap_err(),
        Kind::NotFound,
        "nope",
    );
    assert_kind(
        NamespaceStore::get(&db, "nope").unwrap_err(),
        Kind::NotFound,
        "nope",
    );
    NamespaceStore::delete(&db, "k8s.io").unwrap();
    assert_kind(
        NamespaceStore::delete(&db, "k8s.io").unwrap_err(),
        Kind::NotFound,
        "k8s.io",
    );
}

#[test]
fn namespace_mask_apply() {
    let existing = Namespace {
        name: "n".into(),
        labels: labels(&[("a", "1")]),
    };
    let u = apply_namespace_update(&existing, Namespace::default(), &paths(&["labels"])).unwrap();
    assert!(u.labels.is_empty());
}

struct Images;

impl NamespaceCheck for Images {
    fn remaining(&self, _tx: &WriteTransaction, namespace: &str) -> Result<Option<String>, MetadataError> {
        Ok((namespace == "busy").then(|| "3 images".to_string()))
    }
}

#[test]
fn deleting_a_non_empty_namespace_names_what_remains() {
    let (_d, db) = db();
    ContainerStore::create(&db, "busy", container("c1")).unwrap();
    ContainerStore::create(&db, "busy", container("c2")).unwrap();
    LeaseManager::create(&db, "busy", "l1", BTreeMap::new()).unwrap();
    db.register_namespace_check(Arc::new(Images));
    let err = NamespaceStore::delete(&db, "busy").unwrap_err();
    assert_kind(err, Kind::FailedPrecondition, "2 containers, 1 lease, 3 images");

    // A namespace sorting after "busy" with similar keys is not counted.
    ContainerStore::create(&db, "busy2", container("c9")).unwrap();
    ContainerStore::delete(&db, "busy", "c1").unwrap();
    ContainerStore::delete(&db, "busy", "c2").unwrap();
    LeaseManager::delete(&db, "busy", "l1").unwrap();
    let err = NamespaceStore::delete(&db, "busy").unwrap_err();
    assert_eq!(
        err.to_string(),
        "namespace \"busy\" must be empty, but it still holds 3 images"
    );
    ContainerStore::delete(&db, "busy2", "c9").unwrap();
    NamespaceStore::delete(&db, "busy2").unwrap();
}

#[test]
fn leases_and_resources() {
    let (_d, db) = db();
    let l = LeaseManager::create(&db, "default", "l1", labels(&[("x", "y")])).unwrap();
    assert!(l.created_at.is_some());
    assert_kind(
        LeaseManager::create(&db, "default", "l1", BTreeMap::new()).unwrap_err(),
        Kind::AlreadyExists,
        "l1",
    );
    LeaseManager::create(&db, "default", "l2", BTreeMap::new()).unwrap();
    let ids = |f: &[&str]| -> Vec<String> {
        LeaseManager::list(&db, "default", &paths(f))
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect()
    };
    assert_eq!(ids(&[]), ["l1", "l2"]);
    assert_eq!(ids(&["labels.x==y"]), ["l1"]);
    assert_eq!(ids(&["id==l2"]), ["l2"]);

    let digest = format!("sha256:{}", "0".repeat(64));
    let content = LeaseResource {
        id: digest.clone(),
        r#type: "content".into(),
    };
    let snap = LeaseResource {
        id: "snap-1".into(),
        r#type: "snapshots/overlayfs".into(),
    };
    LeaseManager::add_resource(&db, "default", "l1", content.clone()).unwrap();
    LeaseManager::add_resource(&db, "default", "l1", snap.clone()).unwrap();
    LeaseManager::add_resource(&db, "default", "l1", snap.clone()).unwrap();
    LeaseManager::add_resource(&db, "default", "l2", snap.clone()).unwrap();
    assert_eq!(
        LeaseManager::list_resources(&db, "default", "l1").unwrap(),
        vec![content.clone(), snap.clone()]
    );
    assert_kind(
        LeaseManager::add_resource(&db, "default", "nope", snap.clone()).unwrap_err(),
        Kind::NotFound,
        "nope",
    );
    assert_kind(
        LeaseManager::list_resources(&db, "default", "nope").unwrap_err(),
        Kind::NotFound,
        "nope",
    );
    LeaseManager::delete_resource(&db, "default", "l1", content.clone()).unwrap();
    LeaseManager::delete_resource(&db, "default", "l1", content).unwrap();
    assert_eq!(
        LeaseManager::list_resources(&db, "default", "l1").unwrap(),
        vec![snap.clone()]
    );

    // Deleting a lease drops its resources; a new lease with the same id starts empty.
    LeaseManager::delete(&db, "default", "l1").unwrap();
    assert_kind(
        LeaseManager::delete(&db, "default", "l1").unwrap_err(),
        Kind::NotFound,
        "l1",
    );
    LeaseManager::create(&db, "default", "l1", BTreeMap::new()).unwrap();
    assert!(
        LeaseManager::list_resources(&db, "default", "l1")
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        LeaseManager::list_resources(&db, "default", "l2").unwrap(),
        vec![snap]
    );
}

#[test]
fn expire_removes_only_leases_past_their_expiry() {
    let (_d, db) = db();
    let now = SystemTime::now();
    let at = |t: SystemTime| prost_types::Timestamp::from(t).to_string();
    let past = at(now - Duration::from_secs(60));
    let future = at(now + Duration::from_secs(3600));
    LeaseManager::create(&db, "a", "old", labels(&[(LABEL_GC_EXPIRE, &past)])).unwrap();
    LeaseManager::create(&db, "b", "old", labels(&[(LABEL_GC_EXPIRE, &past)])).unwrap();
    LeaseManager::create(&db, "a", "new", labels(&[(LABEL_GC_EXPIRE, &future)])).unwrap();
    LeaseManager::create(&db, "a", "forever", BTreeMap::new()).unwrap();
    LeaseManager::add_resource(
        &db,
        "a",
        "old",
        LeaseResource {
            id: "k".into(),
            r#type: "ingests".into(),
        },
    )
    .unwrap();
    let mut removed = LeaseManager::expire(&db, now).unwrap();
    removed.sort();
    assert_eq!(
        removed,
        vec![
            ("a".to_string(), "old".to_string()),
            ("b".to_string(), "old".to_string())
        ]
    );
    let left: Vec<String> = LeaseManager::list(&db, "a", &[])
        .unwrap()
        .into_iter()
        .map(|l| l.id)
        .collect();
    assert_eq!(left, ["forever", "new"]);
    assert!(LeaseManager::expire(&db, now).unwrap().is_empty());
    // No orphaned resources.
    let tx = db.database().begin_read().unwrap();
    assert_eq!(tx.open_table(schema::LEASE_RESOURCES).unwrap().len().unwrap(), 0);
}

#[tokio::test]
async fn expiry_task_removes_expired_leases_and_stops() {
    let (_d, db) = db();
    let db = Arc::new(db);
    let soon = prost_types::Timestamp::from(SystemTime::now() + Duration::from_millis(200)).to_string();
    LeaseManager::create(&*db, "default", "short", labels(&[(LABEL_GC_EXPIRE, &soon)])).unwrap();
    let task = plugin::ExpiryTask::spawn(db.clone(), Duration::from_millis(20));
    let mut gone = false;
    for _ in 0..500 {
        if LeaseManager::list(&*db, "default", &[]).unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    task.stop().await;
    assert!(gone, "expired lease was not removed");
}
