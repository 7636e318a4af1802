//! Integration tests of the metadata store and the namespaces, containers and leases
//! services against a REAL taskd, with Debian's `ctr` and a tonic client
//! (`ctr containers create` needs an image, so container records are made through the API).
//!
//! Needs root and `ctr` (apt-get install containerd); fails saying so otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use support::Daemon;
use taskd_proto::containerd::services::containers::v1 as capi;
use taskd_proto::containerd::services::leases::v1 as lapi;
use taskd_proto::containerd::services::namespaces::v1 as napi;
use tonic::transport::Channel;
use tonic::{Code, Request};

type Containers = capi::containers_client::ContainersClient<Channel>;
type Leases = lapi::leases_client::LeasesClient<Channel>;
type Namespaces = napi::namespaces_client::NamespacesClient<Channel>;

fn daemon() -> Daemon {
    support::require(&[support::Need::Root, support::Need::Bin("ctr", "containerd")]);
    Daemon::start()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

fn in_ns<T>(ns: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("containerd-namespace", ns.parse().unwrap());
    r
}

/// A container record `ctr containers info` can print (its spec decodes as an OCI spec).
fn container(id: &str) -> capi::Container {
    capi::Container {
        id: id.into(),
        image: "docker.io/library/busybox:latest".into(),
        runtime: Some(capi::container::Runtime {
            name: "io.containerd.runc.v2".into(),
            options: None,
        }),
        spec: Some(prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.1.0","process":{"args":["sh"],"cwd":"/"},"root":{"path":"rootfs"}}"#
                .to_vec(),
        }),
        labels: HashMap::from([("app".to_string(), "web".to_string())]),
        ..Default::default()
    }
}

async fn create(
    c: &mut Containers,
    ns: &str,
    ctr: capi::Container,
) -> Result<capi::Container, tonic::Status> {
    c.create(in_ns(ns, capi::CreateContainerRequest { container: Some(ctr) }))
        .await
        .map(|r| r.into_inner().container.unwrap())
}

#[track_caller]
fn assert_status(r: Result<impl std::fmt::Debug, tonic::Status>, code: Code, mentions: &str) {
    let err = r.expect_err("call should fail");
    assert_eq!(err.code(), code, "{err:?}");
    assert!(
        err.message().contains(mentions),
        "{:?} should mention {mentions}",
        err.message()
    );
}

fn ctr_fails(d: &Daemon, args: &[&str]) -> String {
    let out = d.ctr(args);
    assert!(!out.status.success(), "ctr {args:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn ctr_namespaces_create_ls_label_rm() {
    let d = daemon();
    let plugins = d.ctr_ok(&["plugins", "ls"]);
    for (t, id) in [
        ("io.containerd.metadata.v1", "redb"),
        ("io.containerd.service.v1", "namespaces"),
        ("io.containerd.grpc.v1", "namespaces"),
        ("io.containerd.service.v1", "containers"),
        ("io.containerd.grpc.v1", "containers"),
        ("io.containerd.service.v1", "leases"),
        ("io.containerd.grpc.v1", "leases"),
    ] {
        assert!(
            plugins.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&t) && f.get(1) == Some(&id) && f.last() == Some(&"ok")
            }),
            "{t} {id} not ok:\n{plugins}"
        );
    }
    d.ctr_ok(&["namespaces", "create", "team-a", "owner=alice"]);
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("team-a") && l.contains("owner=alice")),
        "{ls}"
    );

    d.ctr_ok(&["namespaces", "label", "team-a", "tier=gold"]);
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    let line = ls.lines().find(|l| l.starts_with("team-a")).unwrap();
    assert!(line.contains("owner=alice") && line.contains("tier=gold"), "{ls}");
    // An empty value removes the label.
    d.ctr_ok(&["namespaces", "label", "team-a", "owner="]);
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(ls.lines().any(|l| l == "team-a"), "{ls}");
    let ls = d.ctr_ok(&["namespaces", "ls"]);
    assert!(!ls.contains("owner=alice"), "{ls}");

    let err = ctr_fails(&d, &["namespaces", "create", "team-a"]);
    assert!(err.contains("already exists"), "{err}");
    let err = ctr_fails(&d, &["namespaces", "create", "Bad..Name"]);
    assert!(err.contains("namespace"), "{err}");

    // A namespace holding a container (and a lease) is not removed; the error says what remains.
    rt().block_on(async {
        let mut c = Containers::new(d.channel().await);
        create(&mut c, "team-a", container("held")).await.unwrap();
    });
    d.ctr_ok(&["-n", "team-a", "leases", "create", "--id", "l1"]);
    let err = ctr_fails(&d, &["namespaces", "rm", "team-a"]);
    assert!(err.contains("1 container") && err.contains("1 lease"), "{err}");
    d.ctr_ok(&["-n", "team-a", "containers", "rm", "held"]);
    d.ctr_ok(&["-n", "team-a", "leases", "rm", "l1"]);

    let out = d.ctr_ok(&["namespaces", "rm", "team-a"]);
    assert_eq!(out.trim(), "team-a");
    let ls = d.ctr_ok(&["namespaces", "ls", "-q"]);
    assert!(!ls.lines().any(|l| l == "team-a"), "{ls}");
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn ctr_containers_ls_info_label_rm() {
    let d = daemon();
    rt().block_on(async {
        let mut c = Containers::new(d.channel().await);
        for id in ["web-1", "web-2"] {
            create(&mut c, "apps", container(id)).await.unwrap();
        }
        let mut other = container("db-1");
        other.image = "docker.io/library/postgres:16".into();
        other.labels = HashMap::from([("app".to_string(), "db".to_string())]);
        create(&mut c, "apps", other).await.unwrap();
    });

    let ls = d.ctr_ok(&["-n", "apps", "containers", "ls"]);
    for id in ["web-1", "web-2", "db-1"] {
        let line = ls
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing: {ls}"));
        assert!(line.contains("io.containerd.runc.v2"), "{line}");
    }
    let ls = d.ctr_ok(&["-n", "apps", "containers", "ls", "-q", "labels.app==db"]);
    assert_eq!(ls.trim(), "db-1");
    let ls = d.ctr_ok(&["-n", "apps", "containers", "ls", "-q", r"image~=busybox"]);
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["web-1", "web-2"]);
    // Other namespaces do not see them.
    assert_eq!(
        d.ctr_ok(&["-n", "elsewhere", "containers", "ls", "-q"]).trim(),
        ""
    );

    let info = d.ctr_ok(&["-n", "apps", "containers", "info", "web-1"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap_or_else(|e| panic!("{e}: {info}"));
    assert_eq!(v["ID"], "web-1");
    assert_eq!(v["Labels"]["app"], "web");
    assert_eq!(v["Runtime"]["Name"], "io.containerd.runc.v2");
    assert_eq!(v["Spec"]["ociVersion"], "1.1.0");
    assert!(
        v["CreatedAt"].as_str().is_some_and(|s| !s.starts_with("0001")),
        "{info}"
    );

    d.ctr_ok(&["-n", "apps", "containers", "label", "web-1", "tier=front"]);
    let info = d.ctr_ok(&["-n", "apps", "containers", "info", "web-1"]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["Labels"]["tier"], "front");
    assert_eq!(v["Labels"]["app"], "web");
    assert_ne!(v["UpdatedAt"], v["CreatedAt"], "{info}");

    d.ctr_ok(&["-n", "apps", "containers", "rm", "web-1"]);
    let ls = d.ctr_ok(&["-n", "apps", "containers", "ls", "-q"]);
    assert_eq!(ls.split_whitespace().collect::<Vec<_>>(), ["db-1", "web-2"]);
    let err = ctr_fails(&d, &["-n", "apps", "containers", "info", "web-1"]);
    assert!(err.contains("not found"), "{err}");
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn ctr_leases_create_ls_rm() {
    let d = daemon();
    let out = d.ctr_ok(&["leases", "create", "--id", "build-1", "purpose=test"]);
    assert!(out.contains("build-1"), "{out}");
    let generated = d.ctr_ok(&["leases", "create"]);
    let generated = generated.trim().to_string();
    assert!(!generated.is_empty());
    let ls = d.ctr_ok(&["leases", "ls"]);
    assert!(
        ls.lines()
            .any(|l| l.starts_with("build-1") && l.contains("purpose=test")),
        "{ls}"
    );
    // ctr gives every lease a 24h expiry label.
    assert!(ls.contains("containerd.io/gc.expire="), "{ls}");
    let q = d.ctr_ok(&["leases", "ls", "-q"]);
    assert!(q.lines().any(|l| l == generated), "{q} lacks {generated}");
    let q = d.ctr_ok(&["leases", "ls", "-q", "id==build-1"]);
    assert_eq!(q.trim(), "build-1");

    d.ctr_ok(&["leases", "rm", "--sync", "build-1"]);
    d.ctr_ok(&["leases", "rm", &generated]);
    assert_eq!(d.ctr_ok(&["leases", "ls", "-q"]).trim(), "");
    let err = ctr_fails(&d, &["leases", "rm", "build-1"]);
    assert!(err.contains("not found"), "{err}");
}

/// The metadata clients of one daemon.
struct Clients {
    c: Containers,
    n: Namespaces,
    l: Leases,
}

/// Runs `body` on a runtime against a fresh daemon and its clients.
fn with_daemon(body: impl AsyncFnOnce(Clients)) {
    let d = daemon();
    rt().block_on(async {
        let ch = d.channel().await;
        body(Clients {
            c: Containers::new(ch.clone()),
            n: Namespaces::new(ch.clone()),
            l: Leases::new(ch),
        })
        .await;
    });
}

async fn create_lease(
    l: &mut Leases,
    id: &str,
    labels: HashMap<String, String>,
) -> Result<(), tonic::Status> {
    l.create(in_ns(
        "default",
        lapi::CreateRequest {
            id: id.into(),
            labels,
        },
    ))
    .await
    .map(drop)
}

async fn add_resource(l: &mut Leases, lease: &str, r#type: &str, id: &str) -> Result<(), tonic::Status> {
    l.add_resource(in_ns(
        "default",
        lapi::AddResourceRequest {
            id: lease.into(),
            resource: Some(lapi::Resource {
                id: id.into(),
                r#type: r#type.into(),
            }),
        },
    ))
    .await
    .map(drop)
}

async fn list_resources(l: &mut Leases, lease: &str) -> Vec<lapi::Resource> {
    l.list_resources(in_ns("default", lapi::ListResourcesRequest { id: lease.into() }))
        .await
        .unwrap()
        .into_inner()
        .resources
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_create_without_a_runtime_name_is_invalid_argument_naming_it() {
    with_daemon(async |mut k| {
        let mut bad = container("x");
        bad.runtime = None;
        assert_status(
            create(&mut k.c, "default", bad).await,
            Code::InvalidArgument,
            "runtime.name",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_create_with_a_malformed_or_too_long_id_is_invalid_argument() {
    with_daemon(async |mut k| {
        assert_status(
            create(&mut k.c, "default", container("a/b")).await,
            Code::InvalidArgument,
            "container id",
        );
        assert_status(
            create(&mut k.c, "default", container(&"x".repeat(77))).await,
            Code::InvalidArgument,
            "container id",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_create_with_oversized_labels_is_invalid_argument_naming_them() {
    with_daemon(async |mut k| {
        let mut bad = container("x");
        bad.labels.insert("k".repeat(100), "v".repeat(4000));
        assert_status(
            create(&mut k.c, "default", bad).await,
            Code::InvalidArgument,
            "labels",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_create_without_a_spec_is_invalid_argument_naming_it() {
    with_daemon(async |mut k| {
        let mut bad = container("x");
        bad.spec = None;
        assert_status(
            create(&mut k.c, "default", bad).await,
            Code::InvalidArgument,
            "spec",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn a_call_without_a_namespace_or_with_a_malformed_one_is_invalid_argument() {
    with_daemon(async |mut k| {
        assert_status(
            k.c.create(Request::new(capi::CreateContainerRequest {
                container: Some(container("x")),
            }))
            .await,
            Code::InvalidArgument,
            "namespace",
        );
        assert_status(
            create(&mut k.c, "bad ns", container("x")).await,
            Code::InvalidArgument,
            "namespace",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_list_with_a_malformed_filter_is_invalid_argument() {
    with_daemon(async |mut k| {
        assert_status(
            k.c.list(in_ns(
                "default",
                capi::ListContainersRequest {
                    filters: vec!["image~=(".into()],
                },
            ))
            .await,
            Code::InvalidArgument,
            "filter",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_create_of_an_existing_id_is_already_exists_naming_it() {
    with_daemon(async |mut k| {
        create(&mut k.c, "default", container("x")).await.unwrap();
        assert_status(
            create(&mut k.c, "default", container("x")).await,
            Code::AlreadyExists,
            "x",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_update_of_the_id_is_invalid_argument_naming_the_mask() {
    with_daemon(async |mut k| {
        create(&mut k.c, "default", container("x")).await.unwrap();
        assert_status(
            k.c.update(in_ns(
                "default",
                capi::UpdateContainerRequest {
                    container: Some(container("x")),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec!["id".into()],
                    }),
                },
            ))
            .await,
            Code::InvalidArgument,
            "update_mask",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn container_delete_of_an_unknown_id_is_not_found_naming_it() {
    with_daemon(async |mut k| {
        assert_status(
            k.c.delete(in_ns(
                "default",
                capi::DeleteContainerRequest { id: "nope".into() },
            ))
            .await,
            Code::NotFound,
            "nope",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn namespace_create_with_a_malformed_name_is_invalid_argument() {
    with_daemon(async |mut k| {
        assert_status(
            k.n.create(napi::CreateNamespaceRequest {
                namespace: Some(napi::Namespace {
                    name: "-x".into(),
                    labels: HashMap::new(),
                }),
            })
            .await,
            Code::InvalidArgument,
            "namespace",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn namespace_delete_while_it_holds_a_container_is_failed_precondition_counting_them() {
    with_daemon(async |mut k| {
        create(&mut k.c, "default", container("x")).await.unwrap();
        assert_status(
            k.n.delete(napi::DeleteNamespaceRequest {
                name: "default".into(),
            })
            .await,
            Code::FailedPrecondition,
            "1 container",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn lease_create_with_a_malformed_expiry_label_is_invalid_argument_naming_it() {
    with_daemon(async |mut k| {
        let labels = HashMap::from([("containerd.io/gc.expire".to_string(), "soon".to_string())]);
        assert_status(
            create_lease(&mut k.l, "l", labels).await,
            Code::InvalidArgument,
            "containerd.io/gc.expire",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn lease_resource_of_content_with_a_malformed_digest_is_invalid_argument() {
    with_daemon(async |mut k| {
        create_lease(&mut k.l, "l", HashMap::new()).await.unwrap();
        assert_status(
            add_resource(&mut k.l, "l", "content", "not-a-digest").await,
            Code::InvalidArgument,
            "resource.id",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn lease_resource_of_an_unknown_type_is_unimplemented() {
    with_daemon(async |mut k| {
        create_lease(&mut k.l, "l", HashMap::new()).await.unwrap();
        assert_status(
            add_resource(&mut k.l, "l", "widgets", "x").await,
            Code::Unimplemented,
            "resource.type",
        );
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn list_stream_streams_what_any_filter_matches_in_id_order() {
    with_daemon(async |mut k| {
        for i in 0..25 {
            let mut ctr = container(&format!("c{i:02}"));
            ctr.labels
                .insert("parity".into(), if i % 2 == 0 { "even" } else { "odd" }.into());
            create(&mut k.c, "default", ctr).await.unwrap();
        }
        let mut stream =
            k.c.list_stream(in_ns(
                "default",
                capi::ListContainersRequest {
                    filters: vec!["labels.parity==odd".into(), "id==c00".into()],
                },
            ))
            .await
            .unwrap()
            .into_inner();
        let mut ids = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            ids.push(m.container.unwrap().id);
        }
        assert_eq!(ids.len(), 13, "{ids:?}");
        assert_eq!(ids[0], "c00");
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn update_with_a_mask_over_several_fields_keeps_created_at_and_moves_updated_at() {
    with_daemon(async |mut k| {
        let mut c01 = container("c01");
        c01.labels.insert("parity".into(), "odd".into());
        let before = create(&mut k.c, "default", c01).await.unwrap();
        let mut upd = container("c01");
        upd.image = "img:2".into();
        upd.snapshotter = "overlayfs".into();
        upd.snapshot_key = "c01-snap".into();
        upd.labels = HashMap::from([
            ("parity".to_string(), String::new()),
            ("new".to_string(), "1".to_string()),
        ]);
        let after =
            k.c.update(in_ns(
                "default",
                capi::UpdateContainerRequest {
                    container: Some(upd),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![
                            "image".into(),
                            "snapshotter".into(),
                            "snapshot_key".into(),
                            "labels.parity".into(),
                            "labels.new".into(),
                        ],
                    }),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap();
        assert_eq!(after.image, "img:2");
        assert_eq!(after.snapshot_key, "c01-snap");
        assert_eq!(
            after.labels,
            HashMap::from([
                ("app".to_string(), "web".to_string()),
                ("new".to_string(), "1".to_string())
            ])
        );
        assert_eq!(after.created_at, before.created_at);
        assert_ne!(after.updated_at, before.updated_at);
    });
}

/// A lease `hold` on a content digest and on the snapshot `c01-snap`; returns the digest.
async fn lease_holding_content_and_a_snapshot(l: &mut Leases) -> String {
    create_lease(l, "hold", HashMap::new()).await.unwrap();
    let digest = format!("sha256:{}", "ab".repeat(32));
    for (t, id) in [("content", digest.as_str()), ("snapshots/overlayfs", "c01-snap")] {
        add_resource(l, "hold", t, id).await.unwrap();
    }
    digest
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn lease_resources_added_are_listed() {
    with_daemon(async |mut k| {
        lease_holding_content_and_a_snapshot(&mut k.l).await;
        let res = list_resources(&mut k.l, "hold").await;
        assert_eq!(res.len(), 2, "{res:?}");
    });
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn a_lease_resource_deleted_is_no_longer_listed() {
    with_daemon(async |mut k| {
        let digest = lease_holding_content_and_a_snapshot(&mut k.l).await;
        k.l.delete_resource(in_ns(
            "default",
            lapi::DeleteResourceRequest {
                id: "hold".into(),
                resource: Some(lapi::Resource {
                    id: digest,
                    r#type: "content".into(),
                }),
            },
        ))
        .await
        .unwrap();
        assert_eq!(
            list_resources(&mut k.l, "hold").await,
            vec![lapi::Resource {
                id: "c01-snap".into(),
                r#type: "snapshots/overlayfs".into()
            }]
        );
    });
}

/// 8 clients, 100 Create/Update/Delete calls each on 6 overlapping ids: the only errors are
/// AlreadyExists and NotFound, every client's successful label updates all survive on the
/// containers that still exist, and creates − deletes = containers left.
#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn concurrent_grpc_writes_lose_no_update() {
    let d = daemon();
    rt().block_on(async {
        let ch = d.channel().await;
        let ids = ["a", "b", "c", "d", "e", "f"];
        let mut tasks = Vec::new();
        for client in 0..8usize {
            let mut c = Containers::new(ch.clone());
            tasks.push(tokio::spawn(async move {
                let (mut creates, mut deletes, mut updates) = (0usize, 0usize, 0usize);
                for i in 0..100usize {
                    let id = ids[(client * 5 + i * 7) % ids.len()];
                    let r = match (client + i) % 3 {
                        0 => create(&mut c, "conc", container(id)).await.map(|_| creates += 1),
                        1 => {
                            let mut u = container(id);
                            let key = format!("c{client}");
                            u.labels.insert(key.clone(), i.to_string());
                            c.update(in_ns(
                                "conc",
                                capi::UpdateContainerRequest {
                                    container: Some(u),
                                    update_mask: Some(prost_types::FieldMask {
                                        paths: vec![format!("labels.{key}")],
                                    }),
                                },
                            ))
                            .await
                            .map(|_| updates += 1)
                        }
                        _ => c
                            .delete(in_ns("conc", capi::DeleteContainerRequest { id: id.into() }))
                            .await
                            .map(|_| deletes += 1),
                    };
                    if let Err(s) = r {
                        assert!(
                            matches!(s.code(), Code::AlreadyExists | Code::NotFound),
                            "client {client} call {i} on {id}: {s:?}"
                        );
                    }
                }
                (creates, deletes, updates)
            }));
        }
        let (mut creates, mut deletes) = (0, 0);
        for t in tasks {
            let (c, del, _) = t.await.unwrap();
            creates += c;
            deletes += del;
        }
        let mut c = Containers::new(ch);
        let left = c
            .list(in_ns("conc", capi::ListContainersRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .containers;
        assert_eq!(
            creates - deletes,
            left.len(),
            "creates {creates} deletes {deletes}"
        );
    });
}

/// No lost update on one hot record: 8 clients each set 12 distinct labels concurrently.
#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn concurrent_grpc_label_updates_on_one_container_all_survive() {
    let d = daemon();
    rt().block_on(async {
        let ch = d.channel().await;
        let mut c = Containers::new(ch.clone());
        create(&mut c, "hot", container("one")).await.unwrap();
        let mut tasks = Vec::new();
        for client in 0..8usize {
            let mut c = Containers::new(ch.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0..12usize {
                    let key = format!("k{client}-{i}");
                    let mut u = container("one");
                    u.labels.insert(key.clone(), "1".into());
                    c.update(in_ns(
                        "hot",
                        capi::UpdateContainerRequest {
                            container: Some(u),
                            update_mask: Some(prost_types::FieldMask {
                                paths: vec![format!("labels.{key}")],
                            }),
                        },
                    ))
                    .await
                    .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let one = c
            .get(in_ns("hot", capi::GetContainerRequest { id: "one".into() }))
            .await
            .unwrap()
            .into_inner()
            .container
            .unwrap();
        assert_eq!(one.labels.len(), 1 + 8 * 12, "{:?}", one.labels.keys());
    });
}

/// kill -9 during a burst of concurrent creates; after a restart the database opens and
/// every create acknowledged before the kill is there.
#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn durability_kill9_during_concurrent_writes_keeps_acknowledged_writes() {
    let mut d = daemon();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    {
        let rt = rt();
        let ch = rt.block_on(d.channel());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for client in 0..8usize {
            let mut c = Containers::new(ch.clone());
            let (acked, stop) = (acked.clone(), stop.clone());
            tasks.push(rt.spawn(async move {
                for i in 0.. {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    let id = format!("w{client}-{i}");
                    match create(&mut c, "durable", container(&id)).await {
                        Ok(_) => {
                            acked.lock().unwrap().insert(id);
                        }
                        // The daemon died under us: stop this client.
                        Err(_) => break,
                    }
                }
            }));
        }
        // Let the burst run until a good number of writes were acknowledged, then kill.
        while acked.lock().unwrap().len() < 300 {
            std::thread::sleep(Duration::from_millis(5));
        }
        d.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in tasks {
            rt.block_on(t).unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    d.restart();
    let present: BTreeSet<String> = rt().block_on(async {
        let mut c = Containers::new(d.channel().await);
        c.list(in_ns("durable", capi::ListContainersRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect()
    });
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged writes lost: {missing:?}",
        missing.len()
    );
    // The database is writable after recovery.
    d.ctr_ok(&["namespaces", "create", "after-crash"]);
}

#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn expired_leases_are_removed_by_the_daemon() {
    support::require(&[support::Need::Root, support::Need::Bin("ctr", "containerd")]);
    let d = Daemon::start_with(
        r#"
[plugins."io.containerd.metadata.v1.redb"]
lease_expiry_interval_ms = 50
"#,
    );
    let soon = prost_types::Timestamp::from(SystemTime::now() + Duration::from_secs(1)).to_string();
    rt().block_on(async {
        let mut l = Leases::new(d.channel().await);
        for (id, labels) in [
            (
                "short",
                HashMap::from([("containerd.io/gc.expire".to_string(), soon.clone())]),
            ),
            ("kept", HashMap::new()),
        ] {
            create_lease(&mut l, id, labels).await.unwrap();
        }
    });
    let mut left = String::new();
    for _ in 0..400 {
        left = d.ctr_ok(&["leases", "ls", "-q"]);
        if !left.contains("short") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left.trim(), "kept", "the expired lease was not removed");
}

/// Each change reaches the events exchange: a `ctr events`-style subscriber sees
/// /namespaces/create, /containers/create, /containers/update, /containers/delete in order,
/// in the right namespace, with containerd's type URLs.
#[test]
#[ignore = "e2e: needs root, ctr (containerd)"]
fn changes_publish_events_on_the_exchange() {
    use taskd_proto::containerd::services::events::v1 as eapi;
    let d = daemon();
    rt().block_on(async {
        let ch = d.channel().await;
        let mut events = eapi::events_client::EventsClient::new(ch.clone());
        let mut stream = events
            .subscribe(eapi::SubscribeRequest {
                filters: vec![r#"topic~="^/(containers|namespaces)/""#.into()],
            })
            .await
            .unwrap()
            .into_inner();
        let mut n = Namespaces::new(ch.clone());
        n.create(napi::CreateNamespaceRequest {
            namespace: Some(napi::Namespace {
                name: "evt".into(),
                labels: HashMap::new(),
            }),
        })
        .await
        .unwrap();
        let mut c = Containers::new(ch);
        create(&mut c, "evt", container("e1")).await.unwrap();
        let mut u = container("e1");
        u.labels.insert("x".into(), "y".into());
        c.update(in_ns(
            "evt",
            capi::UpdateContainerRequest {
                container: Some(u),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["labels.x".into()],
                }),
            },
        ))
        .await
        .unwrap();
        c.delete(in_ns("evt", capi::DeleteContainerRequest { id: "e1".into() }))
            .await
            .unwrap();
        let mut got = Vec::new();
        while got.len() < 4 {
            let e = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("no event within 30s")
                .unwrap()
                .expect("stream ended");
            let any = e.event.unwrap();
            got.push((e.namespace, e.topic, any.type_url));
        }
        let want = [
            ("/namespaces/create", "containerd.events.NamespaceCreate"),
            ("/containers/create", "containerd.events.ContainerCreate"),
            ("/containers/update", "containerd.events.ContainerUpdate"),
            ("/containers/delete", "containerd.events.ContainerDelete"),
        ];
        for ((ns, topic, url), (wt, wu)) in got.iter().zip(want) {
            assert_eq!(
                (ns.as_str(), topic.as_str(), url.as_str()),
                ("evt", wt, wu),
                "{got:?}"
            );
        }
    });
}
