//! Component test: Debian's `ctr` 1.6 renders taskd's version and introspection answers,
//! including a plugin that skipped (`skip`) and one that failed (`error`, message with
//! `-d`), which a stock daemon cannot easily produce on demand. Served by a plain tonic
//! server on a temporary unix socket over the built-in plugins plus those two, through the
//! real registry. The daemon-level tests live in `tests/events.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use taskd::plugin::{PluginError, PluginType, Plugins, Registration, Registry, RegistryConfig};
use taskd::server::GrpcService;
use tokio::net::UnixListener;

fn ctr_binary() -> Result<PathBuf> {
    let path = PathBuf::from("/usr/bin/ctr");
    if !path.exists() {
        bail!("ctr is missing: install Debian's containerd package (apt-get install containerd)");
    }
    Ok(path)
}

struct Served {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _plugins: Plugins,
    server: tokio::task::JoinHandle<()>,
}

async fn serve() -> Result<Served> {
    let dir = tempfile::tempdir()?;
    let mut regs = taskd::builtins::registrations();
    regs.push(Registration::new(PluginType::Snapshotter, "btrfs", |_cx| async {
        Err(PluginError::Skip("path /x must be a btrfs filesystem".into()))
    }));
    regs.push(
        Registration::new(PluginType::Metadata, "broken", |_cx| async {
            Err(PluginError::init(std::io::Error::other("database is corrupt")))
        })
        .requires(&[PluginType::Event]),
    );
    let plugins = Registry::new(regs)?
        .init(RegistryConfig {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            ..Default::default()
        })
        .await?;
    let mut routes = tonic::service::RoutesBuilder::default();
    for (_, service) in plugins.get_all::<dyn GrpcService>() {
        service.register(&mut routes, taskd::server::GrpcLimits::default());
    }
    let socket = dir.path().join("taskd.sock");
    let listener = UnixListener::bind(&socket)?;
    let router = tonic::transport::Server::builder().add_routes(routes.routes());
    let server = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            eprintln!("test server: {e}");
        }
    });
    Ok(Served {
        _dir: dir,
        socket,
        _plugins: plugins,
        server,
    })
}

async fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(ctr_binary()?)
        .arg("--address")
        .arg(socket)
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        bail!(
            "ctr {args:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs Debian's ctr (containerd)"]
async fn ctr_version_and_plugins() -> Result<()> {
    let s = serve().await?;
    let version = ctr(&s.socket, &["version"]).await?;
    let server = version.split("Server:").nth(1).context("no Server section")?;
    assert!(
        server.contains(&format!("Version:  {}", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    assert!(server.contains("Revision: "), "{version}");
    assert!(!server.contains("Revision: \n"), "{version}");
    let uuid = server
        .lines()
        .find_map(|l| l.trim().strip_prefix("UUID: "))
        .context("no UUID")?;
    uuid::Uuid::parse_str(uuid)?;

    let ls = ctr(&s.socket, &["plugins", "ls"]).await?;
    let row = |ty: &str, id: &str| {
        ls.lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|c| c.len() == 4 && c[0] == ty && c[1] == id)
            .map(|c| c[3].to_owned())
    };
    for (ty, id) in [
        ("io.containerd.event.v1", "exchange"),
        ("io.containerd.grpc.v1", "events"),
        ("io.containerd.ttrpc.v1", "events"),
        ("io.containerd.grpc.v1", "version"),
        ("io.containerd.grpc.v1", "introspection"),
        ("io.containerd.grpc.v1", "healthcheck"),
    ] {
        assert_eq!(row(ty, id).as_deref(), Some("ok"), "{ty} {id}:\n{ls}");
    }
    assert_eq!(
        row("io.containerd.snapshotter.v1", "btrfs").as_deref(),
        Some("skip"),
        "{ls}"
    );
    assert_eq!(
        row("io.containerd.metadata.v1", "broken").as_deref(),
        Some("error"),
        "{ls}"
    );

    let detail = ctr(&s.socket, &["plugins", "ls", "-d", "id==broken"]).await?;
    assert!(detail.contains("Code:") && detail.contains("Unknown"), "{detail}");
    assert!(detail.contains("database is corrupt"), "{detail}");

    let grpc = ctr(&s.socket, &["plugins", "ls", "-q", "type==io.containerd.grpc.v1"]).await?;
    let ids: Vec<_> = grpc.lines().collect();
    for id in ["events", "version", "introspection", "healthcheck"] {
        assert!(ids.contains(&id), "{id} missing:\n{grpc}");
    }
    assert!(!ids.contains(&"exchange") && !ids.contains(&"btrfs"), "{grpc}");
    s.server.abort();
    Ok(())
}
