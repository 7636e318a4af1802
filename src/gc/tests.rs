use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use super::*;
use crate::content::{Store, digest_of};
use crate::images::{Descriptor, Image};
use crate::metadata::{Container, LeaseResource, Runtime};

/// A snapshotter in memory: (namespace, key) → snapshot.
#[derive(Default)]
struct FakeSnapshots(Mutex<BTreeMap<(String, String), GcSnapshot>>);

impl FakeSnapshots {
    fn add(&self, ns: &str, key: &str, parent: &str) {
        self.0.lock().unwrap().insert(
            (ns.into(), key.into()),
            GcSnapshot {
                key: key.into(),
                parent: parent.into(),
                labels: BTreeMap::new(),
            },
        );
    }

    fn keys(&self, ns: &str) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .keys()
            .filter(|(n, _)| n == ns)
            .map(|(_, k)| k.clone())
            .collect()
    }
}

impl SnapshotGc for FakeSnapshots {
    fn snapshotter(&self) -> &str {
        "fake"
    }

    fn snapshots(&self, namespace: &str) -> Result<Vec<GcSnapshot>, BoxError> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|((n, _), _)| n == namespace)
            .map(|(_, s)| s.clone())
            .collect())
    }

    fn remove(&self, namespace: &str, key: &str) -> Result<(), BoxError> {
        let mut m = self.0.lock().unwrap();
        if m.values().any(|s| s.parent == key) {
            return Err(format!("snapshot {key} has children").into());
        }
        m.remove(&(namespace.to_owned(), key.to_owned()));
        Ok(())
    }
}

struct Env {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    content: Arc<Store>,
    images: crate::images::Store,
    snaps: Arc<FakeSnapshots>,
    gc: Arc<Collector>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
    let content = Store::open(db.clone(), &dir.path().join("content")).unwrap();
    let images = crate::images::Store::open(db.clone()).unwrap();
    let gc = Collector::new(db.clone(), content.clone());
    let snaps = Arc::new(FakeSnapshots::default());
    gc.register_snapshotter(snaps.clone());
    Env {
        _dir: dir,
        db,
        content,
        images,
        snaps,
        gc,
    }
}

fn put(e: &Env, ns: &str, data: &[u8], labels: &[(&str, &str)]) -> String {
    let d = digest_of(data);
    let mut w = e.content.writer(ns, &format!("r-{d}"), 0, "", None).unwrap();
    w.write(data).unwrap();
    let labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    w.commit(0, &d, labels).unwrap()
}

fn image(e: &Env, ns: &str, name: &str, target: &str) {
    e.images
        .create(
            ns,
            Image {
                name: name.into(),
                target: Descriptor {
                    media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                    digest: target.into(),
                    size: 1,
                    annotations: BTreeMap::new(),
                },
                ..Default::default()
            },
        )
        .unwrap();
}

fn digests(e: &Env, ns: &str) -> Vec<String> {
    e.content
        .list(ns, &[])
        .unwrap()
        .into_iter()
        .map(|i| i.digest)
        .collect()
}

#[test]
fn image_keeps_its_tree_and_removing_it_collects_blobs_and_snapshots() {
    let e = env();
    let layer = put(&e, "ns", b"layer", &[]);
    let config = put(
        &e,
        "ns",
        b"config",
        &[("containerd.io/gc.ref.snapshot.fake", "chain2")],
    );
    let manifest = put(
        &e,
        "ns",
        b"manifest",
        &[
            ("containerd.io/gc.ref.content.config", &config),
            ("containerd.io/gc.ref.content.l.0", &layer),
        ],
    );
    let stray = put(&e, "ns", b"stray", &[]);
    e.snaps.add("ns", "chain1", "");
    e.snaps.add("ns", "chain2", "chain1");
    e.snaps.add("ns", "loose", "");
    image(&e, "ns", "img", &manifest);

    let r = e.gc.collect().unwrap();
    assert_eq!(r.content, vec![("ns".to_string(), stray.clone())]);
    assert_eq!(r.blobs, vec![stray]);
    assert_eq!(r.snapshots, vec![("ns".into(), "fake".into(), "loose".into())]);
    let mut kept = digests(&e, "ns");
    kept.sort();
    let mut want = vec![layer.clone(), config.clone(), manifest.clone()];
    want.sort();
    assert_eq!(kept, want);
    assert_eq!(e.snaps.keys("ns"), vec!["chain1", "chain2"]);

    e.images.delete("ns", "img", None).unwrap();
    let r = e.gc.collect().unwrap();
    assert_eq!(r.content.len(), 3);
    assert!(digests(&e, "ns").is_empty());
    assert!(e.content.blobs().list().unwrap().is_empty());
    // Leaf first: chain2 before its parent chain1.
    let removed: Vec<&str> = r.snapshots.iter().map(|(_, _, k)| k.as_str()).collect();
    assert_eq!(removed, vec!["chain2", "chain1"]);
    assert!(e.gc.collect().unwrap().is_empty());
}

#[test]
fn an_active_lease_protects_content_and_snapshots() {
    let e = env();
    LeaseManager::create(&*e.db, "ns", "pull", BTreeMap::new()).unwrap();
    let d = digest_of(b"in progress");
    let mut w = e.content.writer("ns", "r", 0, "", Some("pull")).unwrap();
    w.write(b"in progress").unwrap();
    w.commit(0, &d, BTreeMap::new()).unwrap();
    e.snaps.add("ns", "active", "");
    LeaseManager::add_resource(
        &*e.db,
        "ns",
        "pull",
        LeaseResource {
            id: "active".into(),
            r#type: "snapshots/fake".into(),
        },
    )
    .unwrap();
    assert!(e.gc.collect().unwrap().is_empty());
    assert_eq!(digests(&e, "ns"), vec![d.clone()]);

    LeaseManager::delete(&*e.db, "ns", "pull").unwrap();
    let r = e.gc.collect().unwrap();
    assert_eq!(r.blobs, vec![d]);
    assert!(e.snaps.keys("ns").is_empty());
}

#[test]
fn containers_root_their_snapshot_and_gc_root_labels_keep_content() {
    let e = env();
    e.snaps.add("ns", "base", "");
    e.snaps.add("ns", "c1-rootfs", "base");
    ContainerStore::create(
        &*e.db,
        "ns",
        Container {
            id: "c1".into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: Some(prost_types::Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            snapshotter: "fake".into(),
            snapshot_key: "c1-rootfs".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let root = put(&e, "ns", b"pinned", &[("containerd.io/gc.root", "1")]);
    assert!(e.gc.collect().unwrap().is_empty());
    assert_eq!(e.snaps.keys("ns"), vec!["base", "c1-rootfs"]);
    assert_eq!(digests(&e, "ns"), vec![root]);
}

#[test]
fn namespaces_are_collected_independently() {
    let e = env();
    let d = put(&e, "a", b"same", &[]);
    put(&e, "b", b"same", &[]);
    image(&e, "b", "keep", &d);
    let r = e.gc.collect().unwrap();
    assert_eq!(r.content, vec![("a".to_string(), d.clone())]);
    assert!(r.blobs.is_empty(), "b still holds the file");
    assert_eq!(e.content.read_all("b", &d).unwrap(), b"same");
}
