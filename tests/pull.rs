//! Server-side pull (`images::pull::Puller`, what the CRI adapter uses) against a real
//! `docker-registry`: plain http for 127.0.0.1, a multi-arch index resolved to
//! linux/amd64, a mirror for `docker.io`, blobs verified, present layers not fetched again.
//! hosts.toml directories (mirror, CA + client certificate, `_default`), platforms,
//! credentials kept from mirrors, hostile registries (bounded reads), GC during unpack.
//! Component test: the content and image stores on a temp redb, no daemon.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

#[path = "support/fake_registry.rs"]
mod fake_registry;
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
use taskd::images::pull::{PullAuth, PullConfig, Puller};
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

/// Two images with these layers, pushed as `app/a:v1` and `app/b:v1`.
fn push_pair(
    reg: &Registry,
    a_layers: Vec<LayerBuilder>,
    b_layers: Vec<LayerBuilder>,
) -> (
    String,
    support::registry::BuiltImage,
    String,
    support::registry::BuiltImage,
) {
    let build = |layers| {
        ImageBuilder {
            layers,
            ..Default::default()
        }
        .build()
    };
    let (a, b) = (build(a_layers), build(b_layers));
    let mut layout = OciLayout::new();
    layout.add_image("a", &a);
    layout.add_image("b", &b);
    let ra = reg.push(&layout, "a", "app/a", "v1");
    let rb = reg.push(&layout, "b", "app/b", "v1");
    (ra, a, rb, b)
}

/// A native snapshotter under the env's dir and an unpacker into it.
fn native_unpacker(
    e: &Env,
) -> (
    Arc<taskd::snapshots::FsSnapshotter>,
    taskd::images::unpack::Unpacker,
) {
    use taskd::diff::{LayerSource, Limits, Walking};
    use taskd::snapshots::{Backend, FsSnapshotter};
    let root = e._dir.path().join("native");
    let sn = Arc::new(FsSnapshotter::open("native", &root, Backend::Native, e.db.clone()).unwrap());
    let source: Arc<dyn LayerSource> = e.content.clone();
    let differ = Arc::new(Walking::new(
        Limits::default(),
        vec![root.join("snapshots")],
        Some(source),
    ));
    let u = taskd::images::unpack::Unpacker::new(sn.clone(), differ, e.db.clone());
    (sn, u)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs docker-registry, skopeo"]
async fn concurrent_pulls_fetch_a_shared_layer_once() {
    let reg = Registry::start();
    let shared = LayerBuilder::new().file("shared", vec![7u8; 300_000]);
    let (ra, a, rb, b) = push_pair(
        &reg,
        vec![shared.clone(), LayerBuilder::new().file("a", "a\n")],
        vec![shared, LayerBuilder::new().file("b", "b\n")],
    );
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
#[ignore = "e2e: needs docker-registry, skopeo"]
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
#[ignore = "e2e: needs root, docker-registry, skopeo"]
async fn pull_unpacks_into_snapshots_that_gc_keeps_with_the_image() {
    use taskd::snapshots::Snapshotter;

    support::require(&[support::Need::Root]);
    let reg = Registry::start();
    let (reference, built) = reg.push_busybox("busybox", "latest");
    let e = env();
    let (sn, u) = native_unpacker(&e);
    let p = puller(&e, PullConfig::default()).with_unpacker(Some(u));

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
#[ignore = "e2e: needs docker-registry, skopeo"]
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

/// A small image (one tiny layer) in a layout, tagged `v1`.
fn small_image(arch: &str, content: &str) -> (OciLayout, support::registry::BuiltImage) {
    let image = ImageBuilder {
        architecture: arch.into(),
        layers: vec![LayerBuilder::new().file("f", content)],
        ..Default::default()
    }
    .build();
    let mut layout = OciLayout::new();
    layout.add_image("v1", &image);
    (layout, image)
}

fn with_config_path(dir: &std::path::Path) -> PullConfig {
    PullConfig {
        config_path: Some(dir.to_owned()),
        ..Default::default()
    }
}

/// containerd's certs.d: a mirror given only by hosts.toml (an inline table for the same
/// registry is ignored), a TLS registry with its CA and a client certificate as files beside
/// hosts.toml (added between two pulls: read per pull), and the `_default` directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs docker-registry, skopeo"]
async fn hosts_toml_mirror_ca_client_certificate_and_default() {
    let plain = Registry::start();
    let secure = Registry::start_tls_client_auth();
    let (layout, image) = small_image("amd64", "hosts");
    plain.push(&layout, "v1", "lib/app", "v1");
    secure.push(&layout, "v1", "lib/app", "v1");
    let e = env();
    let certs = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = certs.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // A mirror only hosts.toml knows; the registry's own name does not resolve.
    std::fs::write(
        dir("mirror-only.invalid").join("hosts.toml"),
        format!(
            "server = \"https://mirror-only.invalid\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            plain.addr
        ),
    )
    .unwrap();
    let mut config = with_config_path(certs.path());
    config.registries.insert(
        "mirror-only.invalid".into(),
        RegistryConfig {
            mirrors: vec!["http://127.0.0.1:9".into()],
            ..Default::default()
        },
    );
    let p = puller(&e, config);
    let img = p.pull("ns", "mirror-only.invalid/lib/app:v1").await.unwrap();
    assert_eq!(img.target.digest, image.manifest.digest);

    // TLS with the registry's CA as ca.crt; it also wants a client certificate.
    let d = dir(&secure.addr);
    std::fs::write(
        d.join("hosts.toml"),
        format!("server = \"https://{}\"\n", secure.addr),
    )
    .unwrap();
    std::fs::copy(secure.ca_cert.as_ref().unwrap(), d.join("ca.crt")).unwrap();
    let reference = format!("{}/lib/app:v1", secure.addr);
    let err = p.pull("tls", &reference).await.unwrap_err();
    assert_eq!(err.kind(), Kind::Unavailable, "{err}");
    let (cert, key) = secure.client_cert.clone().unwrap();
    std::fs::copy(cert, d.join("client.cert")).unwrap();
    std::fs::copy(key, d.join("client.key")).unwrap();
    let img = p
        .pull("tls", &reference)
        .await
        .unwrap_or_else(|err| panic!("{err}\n{}", secure.log()));
    assert_eq!(img.target.digest, image.manifest.digest);

    // Any other registry: _default.
    std::fs::write(
        dir("_default").join("hosts.toml"),
        format!("[host.\"http://{}\"]\n", plain.addr),
    )
    .unwrap();
    let img = p.pull("ns", "elsewhere.invalid/lib/app:v1").await.unwrap();
    assert_eq!(img.target.digest, image.manifest.digest);
}

/// PullImage credentials go to the registry, not to a mirror that challenges for them
/// (unless its config allows it), and not when `server_address` names another registry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs docker-registry, skopeo"]
async fn credentials_never_reach_a_mirror() {
    use fake_registry::{FakeRegistry, Reply};
    let reg = Registry::start_basic_auth();
    let (layout, image) = small_image("amd64", "private");
    let reference = reg.push(&layout, "v1", "private", "v1");
    let me = Arc::new(std::sync::OnceLock::<String>::new());
    let me2 = me.clone();
    let mirror = FakeRegistry::start(move |_| {
        let realm = format!("http://{}/token", me2.get().map(String::as_str).unwrap_or(""));
        Reply::Full(
            401,
            vec![(
                "WWW-Authenticate".into(),
                format!("Bearer realm=\"{realm}\",service=\"mirror\""),
            )],
            Vec::new(),
        )
    });
    me.set(mirror.addr.clone()).unwrap();
    let config = |mirror_credentials| PullConfig {
        registries: [(
            reg.addr.clone(),
            RegistryConfig {
                mirrors: vec![format!("http://{}", mirror.addr)],
                mirror_credentials,
                ..Default::default()
            },
        )]
        .into(),
        ..Default::default()
    };
    let auth = |server: &str| {
        Some(PullAuth {
            auth: oci_client::secrets::RegistryAuth::Basic(AUTH_USER.into(), AUTH_PASSWORD.into()),
            server_address: server.to_owned(),
        })
    };
    let e = env();
    let img = puller(&e, config(false))
        .pull_with_auth("ns", &reference, auth(&reg.addr))
        .await
        .unwrap();
    assert_eq!(img.target.digest, image.manifest.digest);
    let seen = mirror.requests();
    assert!(!seen.is_empty(), "the mirror was not tried");
    for r in &seen {
        assert_eq!(r.header("authorization"), None, "{r:?}");
    }
    // Credentials for another registry are not used at all.
    let err = puller(&e, config(false))
        .pull_with_auth("other", &reference, auth("registry.example.com"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Kind::Unauthenticated, "{err}");
    // A mirror configured for them gets them.
    puller(&e, config(true))
        .pull_with_auth("third", &reference, auth(""))
        .await
        .unwrap();
    assert!(
        mirror
            .requests()
            .iter()
            .any(|r| r.header("authorization").is_some()),
        "{:?}",
        mirror.requests()
    );
}

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A hostile registry: an endless manifest, a config over the limit, a layer that does not
/// stop at its declared size, a layer listed twice with different sizes. Each pull fails at
/// once with a clear error, memory stays flat, no partial download stays in `ingest/`; the
/// collector removes an ingest whose lease is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registry_reads_are_bounded() {
    use fake_registry::{FakeRegistry, Reply};
    use support::registry::{MEDIA_MANIFEST, sha256};
    const ENDLESS: u64 = 512 << 20;
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:0000000000000000000000000000000000000000000000000000000000000000"]}}"#.to_vec();
    let config_digest = sha256(&config);
    let layer_digest = sha256(b"the layer the registry claims");
    let manifest = |config_size: usize, layers: &[(String, u64)]| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": layers.iter().map(|(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    let long = manifest(config.len(), &[(layer_digest.clone(), 1000)]);
    let big_config = manifest(9 << 20, &[(layer_digest.clone(), 1000)]);
    let repeated = manifest(
        config.len(),
        &[(layer_digest.clone(), 10), (layer_digest.clone(), 1_000_000)],
    );
    let (cd, ld) = (config_digest.clone(), layer_digest.clone());
    let reg = FakeRegistry::start(move |r| match r.path.as_str() {
        "/v2/evil/manifests/endless" => Reply::Endless {
            content_type: MEDIA_MANIFEST.into(),
            len: ENDLESS,
        },
        "/v2/evil/manifests/bigconfig" => Reply::json(&big_config, MEDIA_MANIFEST),
        "/v2/evil/manifests/long" => Reply::json(&long, MEDIA_MANIFEST),
        "/v2/evil/manifests/repeated" => Reply::json(&repeated, MEDIA_MANIFEST),
        p if p == format!("/v2/evil/blobs/{cd}") => Reply::json(&config, "application/octet-stream"),
        p if p == format!("/v2/evil/blobs/{ld}") => Reply::Endless {
            content_type: "application/octet-stream".into(),
            len: ENDLESS,
        },
        _ => Reply::status(404),
    });
    let e = env();
    let p = puller(&e, PullConfig::default());
    let before = vm_hwm_kib();
    for (tag, says) in [
        ("endless", "larger than 4194304 bytes"),
        ("bigconfig", "more than the limit of 8388608"),
        ("long", "more than the 1000 bytes its descriptor declares"),
        ("repeated", "two sizes"),
    ] {
        let started = std::time::Instant::now();
        let err = p
            .pull("ns", &format!("{}/evil:{tag}", reg.addr))
            .await
            .unwrap_err();
        eprintln!("{tag}: {err} ({:?})", started.elapsed());
        assert_eq!(err.kind(), Kind::FailedPrecondition, "{tag}: {err}");
        assert!(err.to_string().contains(says), "{tag}: {err}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{tag}: slow"
        );
    }
    let grown_mib = vm_hwm_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 64, "peak RSS grew by {grown_mib} MiB");
    let ingest = e._dir.path().join("content/ingest");
    let left: Vec<_> = std::fs::read_dir(&ingest).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
    // The config was kept only by the (deleted) pull lease: the collector removes it.
    let gc = taskd::gc::Collector::new(e.db.clone(), e.content.clone());
    gc.collect_async().await.unwrap();
    assert!(e.content.list("ns", &[]).unwrap().is_empty());

    // An ingest whose lease is gone (an expired pull) is removed by the collector.
    LeaseManager::create(&*e.db, "ns", "gone", BTreeMap::new()).unwrap();
    let mut w = e.content.writer("ns", "partial", 10, "", Some("gone")).unwrap();
    w.write(b"12345").unwrap();
    drop(w);
    let mut w = e.content.writer("ns", "client-write", 10, "", None).unwrap();
    w.write(b"12345").unwrap();
    drop(w);
    assert!(
        gc.collect_async().await.unwrap().ingests.is_empty(),
        "the lease still holds it"
    );
    LeaseManager::delete(&*e.db, "ns", "gone").unwrap();
    let report = gc.collect_async().await.unwrap();
    assert_eq!(report.ingests, vec![("ns".to_owned(), "partial".to_owned())]);
    let statuses: Vec<String> = e
        .content
        .list_statuses("ns", &[])
        .unwrap()
        .into_iter()
        .map(|s| s.r#ref)
        .collect();
    assert_eq!(
        statuses,
        vec!["client-write".to_owned()],
        "an ingest without lease stays"
    );
}

/// `platforms` picks another entry; an index without an accepted platform is NotFound naming
/// what it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs docker-registry, skopeo"]
async fn platforms_config_and_a_missing_platform() {
    let reg = Registry::start();
    let (_, arm) = small_image("arm64", "arm");
    let (_, s390) = small_image("s390x", "s390x");
    let mut layout = OciLayout::new();
    layout.add_index("multi", &[&arm, &s390]);
    let reference = reg.push(&layout, "multi", "multi", "v1");
    let e = env();
    let err = puller(
        &e,
        PullConfig {
            platforms: vec!["linux/amd64".parse().unwrap()],
            ..Default::default()
        },
    )
    .pull("ns", &reference)
    .await
    .unwrap_err();
    assert_eq!(err.kind(), Kind::NotFound, "{err}");
    assert!(
        err.to_string().contains("linux/amd64") && err.to_string().contains("linux/arm64, linux/s390x"),
        "{err}"
    );
    assert!(e.content.list("ns", &[]).unwrap().is_empty());
    puller(
        &e,
        PullConfig {
            platforms: ["linux/ppc64le", "linux/s390x", "linux/arm64/v8"]
                .iter()
                .map(|p| p.parse().unwrap())
                .collect(),
            ..Default::default()
        },
    )
    .pull("ns", &reference)
    .await
    .unwrap();
    e.content.info("ns", &s390.manifest.digest).unwrap();
    assert_eq!(
        e.content.info("ns", &arm.manifest.digest).unwrap_err().kind(),
        Kind::NotFound
    );
}

/// Unpack leases a chain snapshot that already exists before it builds on it: a GC that runs
/// right after the stat (the image that held the snapshot is gone) does not remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, docker-registry, skopeo"]
async fn gc_between_stat_and_commit_does_not_break_an_unpack() {
    use taskd::snapshots::Snapshotter;

    support::require(&[support::Need::Root]);
    let reg = Registry::start();
    let base = LayerBuilder::new().file("base", "1");
    let (ra, _, rb, _) = push_pair(
        &reg,
        vec![base.clone()],
        vec![base, LayerBuilder::new().file("top", "2")],
    );
    let e = env();
    let (sn, u) = native_unpacker(&e);
    let gc = taskd::gc::Collector::new(e.db.clone(), e.content.clone());
    gc.register_snapshotter(sn.clone());
    let collected = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (gc2, seen) = (gc.clone(), collected.clone());
    let hook: taskd::images::unpack::UnpackHook = Arc::new(move |chain: String| {
        let (gc, seen) = (gc2.clone(), seen.clone());
        Box::pin(async move {
            let report = gc.collect_async().await.unwrap();
            seen.lock().unwrap().push((chain, report.snapshots.len()));
        })
    });
    let p = puller(&e, PullConfig::default()).with_unpacker(Some(u.with_hook_after_stat(hook)));
    p.pull("ns", &ra).await.unwrap();
    // The base snapshot is now held by nothing but image a: drop a, then pull b.
    e.images.delete("ns", &ra, None).unwrap();
    p.pull("ns", &rb).await.unwrap();
    let seen = collected.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].1, 0,
        "the GC removed a snapshot the unpack relies on: {seen:?}"
    );
    assert_eq!(sn.walk("ns", vec![]).await.unwrap().len(), 2);
}
