//! Server-side pull (`images::pull::Puller`, what the CRI adapter uses) against a real
//! `docker-registry`: plain http for 127.0.0.1, a multi-arch index resolved to
//! linux/amd64, a mirror for `docker.io`, blobs verified, present layers not fetched again.
//! Component test: the content and image stores on a temp redb, no daemon.

mod support;
#[path = "support/token_auth.rs"]
mod token_auth;

use std::collections::BTreeMap;
use std::sync::Arc;

use support::registry::{AUTH_PASSWORD, AUTH_USER, ImageBuilder, LayerBuilder, OciLayout, Registry};
use taskd::content::Store as ContentStore;
use taskd::errdefs::{ErrorKind, Kind};
use taskd::images::Store as ImageStore;
use taskd::images::hosts::RegistryConfig;
use taskd::images::pull::{PullConfig, Puller};
use taskd::metadata::{Db, LeaseManager};

struct Env {
    _dir: tempfile::TempDir,
    db: Arc<Db>,
    content: Arc<ContentStore>,
    images: Arc<ImageStore>,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Db::open(&dir.path().join("meta.redb")).unwrap());
    let content = ContentStore::open(db.clone(), &dir.path().join("content")).unwrap();
    let images = Arc::new(ImageStore::open(db.clone()).unwrap());
    Env {
        _dir: dir,
        db,
        content,
        images,
    }
}

fn puller(e: &Env, config: PullConfig) -> Puller {
    Puller::new(e.content.clone(), e.images.clone(), e.db.clone(), config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_from_a_loopback_registry_verifies_and_records_the_image() {
    let reg = Registry::start();
    let (reference, built) = reg.push_busybox("busybox", "latest");
    let e = env();
    let p = puller(&e, PullConfig::default());
    let img = p.pull("k8s.io", &reference).await.unwrap();
    assert_eq!(img.name, reference);
    assert_eq!(img.target.digest, built.manifest.digest);
    for b in built.blobs() {
        let info = e.content.info("k8s.io", &b.digest).unwrap();
        assert_eq!(info.size, b.data.len() as i64);
        assert_eq!(e.content.read_all("k8s.io", &b.digest).unwrap(), b.data);
    }
    let manifest = e.content.info("k8s.io", &built.manifest.digest).unwrap();
    assert_eq!(
        manifest.labels.get("containerd.io/gc.ref.content.config"),
        Some(&built.config.digest)
    );
    assert_eq!(
        manifest.labels.get("containerd.io/gc.ref.content.l.0"),
        Some(&built.layers[0].digest)
    );
    // The pull's lease is gone.
    assert!(LeaseManager::list(&*e.db, "k8s.io", &[]).unwrap().is_empty());
    assert_eq!(reg.blob_gets(&built.layers[0].digest), 1);

    // Pulling again fetches no layer; another namespace adopts the verified file.
    p.pull("k8s.io", &reference).await.unwrap();
    p.pull("other", &reference).await.unwrap();
    assert_eq!(reg.blob_gets(&built.layers[0].digest), 1, "{}", reg.log());
    assert_eq!(
        e.content.read_all("other", &built.layers[0].digest).unwrap(),
        built.layers[0].data
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_arch_index_resolves_to_linux_amd64() {
    let reg = Registry::start();
    let amd = ImageBuilder {
        layers: vec![
            LayerBuilder::new().file("arch", "amd64\n"),
            LayerBuilder::new().file("two", "2\n"),
        ],
        ..Default::default()
    }
    .build();
    let arm = ImageBuilder {
        architecture: "arm64".into(),
        layers: vec![LayerBuilder::new().file("arch", "arm64\n")],
        ..Default::default()
    }
    .build();
    let mut layout = OciLayout::new();
    let idx = layout.add_index("multi", &[&arm, &amd]);
    let reference = reg.push(&layout, "multi", "multi", "v1");
    let e = env();
    let img = puller(
        &e,
        PullConfig {
            max_concurrent_downloads: 1,
            ..Default::default()
        },
    )
    .pull("ns", &reference)
    .await
    .unwrap();
    assert_eq!(img.target.digest, idx.digest);
    assert_eq!(img.target.media_type, "application/vnd.oci.image.index.v1+json");
    for b in amd.blobs() {
        e.content.info("ns", &b.digest).unwrap();
    }
    for b in [&arm.manifest, &arm.layers[0]] {
        assert_eq!(
            e.content.info("ns", &b.digest).unwrap_err().kind(),
            Kind::NotFound
        );
    }
    let index = e.content.info("ns", &idx.digest).unwrap();
    assert!(
        index.labels.values().any(|v| *v == amd.manifest.digest),
        "{:?}",
        index.labels
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_io_served_by_a_configured_mirror() {
    let reg = Registry::start();
    let image = ImageBuilder::busybox().build();
    let mut layout = OciLayout::new();
    layout.add_image("latest", &image);
    reg.push(&layout, "latest", "library/busybox", "latest");
    let e = env();
    let mut registries = BTreeMap::new();
    registries.insert(
        "docker.io".to_string(),
        RegistryConfig {
            // An unreachable mirror first: the next one serves.
            mirrors: vec!["http://127.0.0.1:9".into(), format!("http://{}", reg.addr)],
            ..Default::default()
        },
    );
    let img = puller(
        &e,
        PullConfig {
            registries,
            ..Default::default()
        },
    )
    .pull("ns", "docker.io/library/busybox:latest")
    .await
    .unwrap();
    assert_eq!(img.name, "docker.io/library/busybox:latest");
    assert_eq!(img.target.digest, image.manifest.digest);
    e.content.info("ns", &image.layers[0].digest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_images_and_bad_references_are_clear_errors() {
    let reg = Registry::start();
    let e = env();
    let p = puller(&e, PullConfig::default());
    let err = p
        .pull("ns", &format!("{}/nothing:here", reg.addr))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nothing"), "{err}");
    let err = p.pull("ns", "UPPER/Case::bad").await.unwrap_err();
    assert_eq!(err.kind(), Kind::InvalidArgument, "{err}");
    assert!(e.content.list("ns", &[]).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_from_the_registry_config() {
    let reg = Registry::start_basic_auth();
    let (reference, built) = reg.push_busybox("private", "v1");
    let e = env();
    // Without credentials: refused, nothing stored.
    let err = puller(&e, PullConfig::default())
        .pull("ns", &reference)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Unauthenticated, "{err}");
    assert!(e.content.list("ns", &[]).unwrap().is_empty());
    // With the registry's credentials in the config.
    let mut registries = BTreeMap::new();
    registries.insert(
        reg.addr.clone(),
        RegistryConfig {
            username: AUTH_USER.into(),
            password: AUTH_PASSWORD.into(),
            ..Default::default()
        },
    );
    let img = puller(
        &e,
        PullConfig {
            registries,
            ..Default::default()
        },
    )
    .pull("ns", &reference)
    .await
    .unwrap();
    assert_eq!(img.target.digest, built.manifest.digest);
    e.content.info("ns", &built.layers[0].digest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_fetch_a_shared_layer_once() {
    let reg = Registry::start();
    let shared = LayerBuilder::new().file("shared", vec![7u8; 300_000]);
    let a = ImageBuilder {
        layers: vec![shared.clone(), LayerBuilder::new().file("a", "a\n")],
        ..Default::default()
    }
    .build();
    let b = ImageBuilder {
        layers: vec![shared, LayerBuilder::new().file("b", "b\n")],
        ..Default::default()
    }
    .build();
    let mut layout = OciLayout::new();
    layout.add_image("a", &a);
    layout.add_image("b", &b);
    let ra = reg.push(&layout, "a", "app/a", "v1");
    let rb = reg.push(&layout, "b", "app/b", "v1");
    assert_eq!(a.layers[0].digest, b.layers[0].digest);
    let e = env();
    let p = puller(&e, PullConfig::default());
    let (x, y) = tokio::join!(p.pull("ns", &ra), p.pull("ns", &rb));
    x.unwrap();
    y.unwrap();
    let gets = reg.blob_gets(&a.layers[0].digest);
    assert_eq!(gets, 1, "shared layer fetched {gets} times");
    e.content.info("ns", &a.layers[1].digest).unwrap();
    e.content.info("ns", &b.layers[1].digest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_registry_with_ca_file_or_skip_verify() {
    let reg = Registry::start_tls();
    let (reference, built) = reg.push_busybox("secure", "v1");
    let e = env();
    let with = |cfg: RegistryConfig| PullConfig {
        registries: [(reg.addr.clone(), cfg)].into(),
        ..Default::default()
    };
    // An unknown CA is refused.
    let err = puller(
        &e,
        with(RegistryConfig {
            plain_http: false,
            ca_file: None,
            skip_verify: false,
            mirrors: vec![format!("https://{}", reg.addr)],
            ..Default::default()
        }),
    )
    .pull("ns", &reference)
    .await
    .unwrap_err();
    assert!(e.content.list("ns", &[]).unwrap().is_empty(), "{err}");
    // The registry's certificate as CA file.
    let img = puller(
        &e,
        with(RegistryConfig {
            ca_file: reg.ca_cert.clone(),
            ..Default::default()
        }),
    )
    .pull("ca", &reference)
    .await
    .unwrap();
    assert_eq!(img.target.digest, built.manifest.digest);
    // Or no verification at all.
    let img = puller(
        &e,
        with(RegistryConfig {
            skip_verify: true,
            ..Default::default()
        }),
    )
    .pull("skip", &reference)
    .await
    .unwrap();
    assert_eq!(img.target.digest, built.manifest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_unpacks_into_snapshots_that_gc_keeps_with_the_image() {
    use taskd::diff::{LayerSource, Limits, Walking};
    use taskd::images::unpack::Unpacker;
    use taskd::snapshots::{Backend, FsSnapshotter, Snapshotter};

    support::require_root();
    let reg = Registry::start();
    let (reference, built) = reg.push_busybox("busybox", "latest");
    let e = env();
    let root = e._dir.path().join("native");
    let sn = Arc::new(FsSnapshotter::open("native", &root, Backend::Native, e.db.clone()).unwrap());
    let source: Arc<dyn LayerSource> = e.content.clone();
    let differ = Arc::new(Walking::new(
        Limits::default(),
        vec![root.join("snapshots")],
        Some(source),
    ));
    let p = puller(&e, PullConfig::default()).with_unpacker(Some(Unpacker::new(sn.clone(), differ, e.db.clone())));
    p.pull("ns", &reference).await.unwrap();

    let snaps = sn.walk("ns", vec![]).await.unwrap();
    assert_eq!(snaps.len(), 1, "{snaps:?}");
    let chain = snaps[0].name.clone();
    let config: serde_json::Value =
        serde_json::from_slice(&e.content.read_all("ns", &built.config.digest).unwrap()).unwrap();
    assert_eq!(config["rootfs"]["diff_ids"][0], chain.as_str());
    let mounts = sn.view("ns", "check", &chain, BTreeMap::new()).await.unwrap();
    let rootfs = std::path::PathBuf::from(&mounts[0].source);
    assert!(rootfs.join("bin/busybox").is_file(), "{mounts:?}");
    assert_eq!(
        std::fs::read_link(rootfs.join("bin/sh")).unwrap(),
        std::path::Path::new("busybox")
    );
    sn.remove("ns", "check").await.unwrap();
    let labels = e.content.info("ns", &built.config.digest).unwrap().labels;
    assert_eq!(labels.get("containerd.io/gc.ref.snapshot.native"), Some(&chain));
    // Pulling again unpacks nothing new.
    p.pull("ns", &reference).await.unwrap();
    assert_eq!(sn.walk("ns", vec![]).await.unwrap().len(), 1);

    // The collector keeps the snapshot while the image exists and removes it after.
    let gc = taskd::gc::Collector::new(e.db.clone(), e.content.clone());
    gc.register_snapshotter(sn.clone());
    assert!(gc.collect_async().await.unwrap().snapshots.is_empty());
    e.images.delete("ns", &reference, None).unwrap();
    let report = gc.collect_async().await.unwrap();
    assert_eq!(report.snapshots.len(), 1, "{report:?}");
    assert!(sn.walk("ns", vec![]).await.unwrap().is_empty());
}

/// The registry config entry for `addr` with these credentials.
fn with_credentials(addr: &str, username: &str, password: &str) -> PullConfig {
    let mut registries = BTreeMap::new();
    registries.insert(
        addr.to_owned(),
        RegistryConfig {
            username: username.into(),
            password: password.into(),
            ..Default::default()
        },
    );
    PullConfig {
        registries,
        ..Default::default()
    }
}

/// Docker's token flow: the registry (a token-auth front over docker-registry) answers 401
/// with a Bearer challenge; the puller gets a token from the realm with the configured
/// credentials (Basic) and pulls with it. No or wrong credentials: Unauthenticated, nothing
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_follows_the_bearer_challenge() {
    let reg = Registry::start();
    let (direct, built) = reg.push_busybox("private", "v1");
    let front = token_auth::TokenAuth::start(&reg.addr, AUTH_USER, AUTH_PASSWORD);
    let reference = direct.replacen(&reg.addr, &front.addr, 1);
    let e = env();

    for (what, config) in [
        ("no credentials", PullConfig::default()),
        (
            "wrong credentials",
            with_credentials(&front.addr, AUTH_USER, "wrong"),
        ),
    ] {
        let err = puller(&e, config).pull("ns", &reference).await.unwrap_err();
        eprintln!("{what}: {err}");
        assert_eq!(err.kind(), Kind::Unauthenticated, "{what}: {err}");
        assert!(err.to_string().contains(&front.addr), "{what}: {err}");
        assert!(e.content.list("ns", &[]).unwrap().is_empty(), "{what}");
    }
    assert!(
        front
            .requests()
            .iter()
            .any(|r| r.starts_with("GET /token") && r.ends_with("-> 401")),
        "{:?}",
        front.requests()
    );

    let img = puller(&e, with_credentials(&front.addr, AUTH_USER, AUTH_PASSWORD))
        .pull("ns", &reference)
        .await
        .unwrap_or_else(|err| panic!("{err}\n{:?}", front.requests()));
    assert_eq!(img.name, reference);
    assert_eq!(img.target.digest, built.manifest.digest);
    for b in built.blobs() {
        assert_eq!(e.content.read_all("ns", &b.digest).unwrap(), b.data);
    }
    let requests = front.requests();
    eprintln!("token front saw: {requests:#?}");
    let token = "GET /token?scope=repository%3Aprivate%3Apull&service=test -> 200";
    assert!(requests.iter().any(|r| r == token), "{requests:?}");
    // Everything that reached the registry went through with the token.
    let layer = format!("GET /v2/private/blobs/{} -> 200", built.layers[0].digest);
    assert!(requests.contains(&layer), "{requests:?}");
    assert_eq!(reg.blob_gets(&built.layers[0].digest), 1);
}
