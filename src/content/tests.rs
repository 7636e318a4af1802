use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;
use crate::errdefs::{ErrorKind, Kind};
use crate::metadata::{Db, LeaseManager, LeaseResource, NamespaceStore};

struct Env {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    store: Arc<Store>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
    let store = Store::open(db.clone(), &dir.path().join("content")).unwrap();
    Env { _dir: dir, db, store }
}

fn put(store: &Arc<Store>, ns: &str, data: &[u8]) -> String {
    let d = digest_of(data);
    let mut w = store.writer(ns, &format!("ref-{d}"), 0, "", None).unwrap();
    w.write(data).unwrap();
    w.commit(data.len() as i64, &d, BTreeMap::new()).unwrap()
}

#[test]
fn commit_makes_content_visible_with_size_and_digest() {
    let e = env();
    let d = put(&e.store, "ns", b"hello");
    assert_eq!(d, digest_of(b"hello"));
    let info = e.store.info("ns", &d).unwrap();
    assert_eq!(info.size, 5);
    assert_eq!(e.store.read_all("ns", &d).unwrap(), b"hello");
    assert!(
        e.store.status("ns", &format!("ref-{d}")).is_err(),
        "ingest removed"
    );
    // Not visible in another namespace.
    assert_eq!(e.store.info("other", &d).unwrap_err().kind(), Kind::NotFound);
}

#[test]
fn digest_mismatch_is_failed_precondition_naming_both_and_never_visible() {
    let e = env();
    let wrong = digest_of(b"something else");
    let mut w = e.store.writer("ns", "r1", 0, "", None).unwrap();
    w.write(b"hello").unwrap();
    let err = w.commit(5, &wrong, BTreeMap::new()).unwrap_err();
    assert_eq!(err.kind(), Kind::FailedPrecondition);
    let msg = err.to_string();
    assert!(
        msg.contains(&wrong) && msg.contains(&digest_of(b"hello")),
        "{msg}"
    );
    assert!(e.store.list("ns", &[]).unwrap().is_empty());
    assert!(e.store.blobs().list().unwrap().is_empty());
    drop(w);
    // The ingest stays for a retry.
    assert_eq!(e.store.status("ns", "r1").unwrap().offset, 5);
}

#[test]
fn size_mismatch_is_failed_precondition() {
    let e = env();
    let mut w = e.store.writer("ns", "r1", 0, "", None).unwrap();
    w.write(b"hello!").unwrap();
    let err = w.commit(5, "", BTreeMap::new()).unwrap_err();
    assert_eq!(err.kind(), Kind::FailedPrecondition);
    assert!(err.to_string().contains("unexpected size"), "{err}");
    assert!(e.store.list("ns", &[]).unwrap().is_empty());
}

#[test]
fn write_resumes_at_the_offset_after_the_writer_is_dropped() {
    let e = env();
    let data = b"0123456789";
    let d = digest_of(data);
    let mut w = e.store.writer("ns", "resume", 10, &d, None).unwrap();
    w.write(&data[..4]).unwrap();
    drop(w);
    let st = e.store.status("ns", "resume").unwrap();
    assert_eq!((st.offset, st.total, st.expected.as_str()), (4, 10, d.as_str()));
    let mut w = e.store.writer("ns", "resume", 0, "", None).unwrap();
    assert_eq!(w.status().offset, 4);
    w.write(&data[4..]).unwrap();
    assert_eq!(w.commit(10, &d, BTreeMap::new()).unwrap(), d);
}

#[test]
fn second_writer_on_a_ref_is_unavailable_until_the_first_is_dropped() {
    let e = env();
    let w = e.store.writer("ns", "r", 0, "", None).unwrap();
    let err = e.store.writer("ns", "r", 0, "", None).unwrap_err();
    assert_eq!(err.kind(), Kind::Unavailable);
    assert_eq!(e.store.abort("ns", "r").unwrap_err().kind(), Kind::Unavailable);
    // Same ref in another namespace is independent.
    e.store.writer("other", "r", 0, "", None).unwrap();
    drop(w);
    e.store.writer("ns", "r", 0, "", None).unwrap();
}

#[test]
fn abort_removes_the_ingest() {
    let e = env();
    let mut w = e.store.writer("ns", "r", 0, "", None).unwrap();
    w.write(b"abc").unwrap();
    drop(w);
    assert_eq!(e.store.list_statuses("ns", &[]).unwrap().len(), 1);
    assert!(e.store.list_statuses("other", &[]).unwrap().is_empty());
    e.store.abort("ns", "r").unwrap();
    assert!(e.store.list_statuses("ns", &[]).unwrap().is_empty());
    assert_eq!(e.store.abort("ns", "r").unwrap_err().kind(), Kind::NotFound);
}

#[test]
fn existing_expected_digest_is_already_exists() {
    let e = env();
    let d = put(&e.store, "ns", b"x");
    let err = e.store.writer("ns", "again", 0, &d, None).unwrap_err();
    assert_eq!(err.kind(), Kind::AlreadyExists);
}

#[test]
fn delete_keeps_the_file_while_another_namespace_holds_it() {
    let e = env();
    let d = put(&e.store, "a", b"shared");
    put(&e.store, "b", b"shared");
    let path = e.store.blobs().blob_path(&d).unwrap();
    e.store.delete("a", &d).unwrap();
    assert!(path.exists());
    assert_eq!(e.store.read_all("b", &d).unwrap(), b"shared");
    e.store.delete("b", &d).unwrap();
    assert!(!path.exists());
    assert_eq!(e.store.delete("b", &d).unwrap_err().kind(), Kind::NotFound);
}

#[test]
fn update_labels_with_field_mask_and_list_filters() {
    let e = env();
    let d = put(&e.store, "ns", b"l");
    let mut labels = BTreeMap::new();
    labels.insert("a".to_string(), "1".to_string());
    labels.insert("b".to_string(), "2".to_string());
    let info = Info {
        digest: d.clone(),
        labels,
        ..Default::default()
    };
    e.store.update("ns", info.clone(), &[]).unwrap();
    let mut only_b = info.clone();
    only_b.labels.insert("b".into(), "3".into());
    only_b.labels.remove("a");
    let got = e.store.update("ns", only_b, &["labels.b".into()]).unwrap();
    assert_eq!(got.labels.get("a").map(String::as_str), Some("1"));
    assert_eq!(got.labels.get("b").map(String::as_str), Some("3"));
    let err = e.store.update("ns", info, &["size".into()]).unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument);
    put(&e.store, "ns", b"other");
    assert_eq!(e.store.list("ns", &["labels.b==3".into()]).unwrap().len(), 1);
    assert_eq!(e.store.list("ns", &[format!("digest=={d}")]).unwrap().len(), 1);
    assert_eq!(e.store.list("ns", &[]).unwrap().len(), 2);
}

#[test]
fn invalid_digests_and_refs_are_invalid_argument() {
    let e = env();
    for d in ["", "sha256:xyz", "md5:abc", "sha256:ABCDEF"] {
        assert_eq!(
            e.store.info("ns", d).unwrap_err().kind(),
            Kind::InvalidArgument,
            "{d}"
        );
    }
    assert_eq!(
        e.store.writer("ns", "", 0, "", None).unwrap_err().kind(),
        Kind::InvalidArgument
    );
}

#[test]
fn namespace_with_content_cannot_be_deleted() {
    let e = env();
    let d = put(&e.store, "ns", b"keep");
    let err = NamespaceStore::delete(&*e.db, "ns").unwrap_err();
    assert_eq!(err.kind(), Kind::FailedPrecondition);
    assert!(err.to_string().contains("1 content blob"), "{err}");
    e.store.delete("ns", &d).unwrap();
    NamespaceStore::delete(&*e.db, "ns").unwrap();
}

#[test]
fn writes_under_a_lease_record_ingest_then_content() {
    let e = env();
    LeaseManager::create(&*e.db, "ns", "l1", BTreeMap::new()).unwrap();
    let mut w = e.store.writer("ns", "r", 0, "", Some("l1")).unwrap();
    let res = LeaseManager::list_resources(&*e.db, "ns", "l1").unwrap();
    assert_eq!(
        res,
        vec![LeaseResource {
            id: "r".into(),
            r#type: "ingests".into()
        }]
    );
    w.write(b"leased").unwrap();
    let d = w.commit(0, "", BTreeMap::new()).unwrap();
    let res = LeaseManager::list_resources(&*e.db, "ns", "l1").unwrap();
    assert_eq!(
        res,
        vec![LeaseResource {
            id: d,
            r#type: "content".into()
        }]
    );
    let err = e.store.writer("ns", "r2", 0, "", Some("nope")).unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound);
    // The lock was released on the error path.
    e.store.writer("ns", "r2", 0, "", None).unwrap();
}
