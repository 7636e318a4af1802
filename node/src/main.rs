//! taskd-node: the node agent of the taskd Helm chart. It installs taskd on the node it runs
//! on (host root mounted at --host-root), upgrades and rolls it back, removes it, and reports
//! each step; through the API server it labels its Node, keeps the RuntimeClasses and records
//! Events. docs/ARCHITECTURE.md ("Node agent") and docs/INSTALL.md describe it.

mod agent;
mod cluster;
mod host;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use agent::{Agent, InstallArgs};
use cluster::{CleanupPods, Cluster, WantedClass};
use host::Host;
use service::Systemctl;

#[derive(Parser)]
#[command(
    name = "taskd-node",
    version,
    about = "Installs, upgrades, rolls back and removes taskd on this node"
)]
struct Cli {
    /// Where the host's / is mounted.
    #[arg(long, env = "TASKD_NODE_HOST_ROOT", default_value = "/host", global = true)]
    host_root: PathBuf,
    /// The node this agent acts on (and only this one).
    #[arg(long, env = "NODE_NAME", global = true)]
    node_name: Option<String>,
    /// The command that runs systemctl on the host; systemctl's arguments are appended.
    #[arg(
        long,
        env = "TASKD_NODE_SYSTEMCTL",
        default_value = "nsenter -t 1 -m -u -i -n -p -- systemctl",
        global = true
    )]
    systemctl: String,
    /// kubelet's config file on the host (for --switch-kubelet and its undo).
    #[arg(long, default_value = "/var/lib/kubelet/config.yaml", global = true)]
    kubelet_config: String,
    /// The systemd unit name.
    #[arg(long, default_value = "taskd.service", global = true)]
    unit: String,
    /// Do not talk to the API server (no Node label, RuntimeClasses or Events).
    #[arg(long, global = true)]
    no_api: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct InstallOpts {
    /// The dir holding taskd, containerd-shim-* and runc (the image's /opt/taskd/bin).
    #[arg(long, default_value = "/opt/taskd/bin")]
    source_dir: PathBuf,
    /// The taskd config to install (the chart's ConfigMap).
    #[arg(long)]
    config: PathBuf,
    /// A RuntimeClass to keep, NAME=HANDLER (repeatable).
    #[arg(long = "runtime-class")]
    runtime_classes: Vec<WantedClass>,
    /// Point kubelet's containerRuntimeEndpoint at taskd and restart kubelet (drain first).
    #[arg(long)]
    switch_kubelet: bool,
    /// A file whose contents become /etc/taskd/metrics-token on the host.
    #[arg(long)]
    metrics_token: Option<PathBuf>,
    /// How long taskd may take to answer /readyz after a restart.
    #[arg(long, default_value = "60s", value_parser = parse_secs)]
    ready_timeout: Duration,
    /// After installing, stay running until SIGTERM (the DaemonSet's container).
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Install taskd, or upgrade it when the binaries or config differ from what runs.
    Install(InstallOpts),
    /// Same as install, but refuses when taskd is not installed yet.
    Upgrade(InstallOpts),
    /// Go back to the previous release and config.
    Rollback {
        #[arg(long, default_value = "60s", value_parser = parse_secs)]
        ready_timeout: Duration,
    },
    /// Remove taskd from this node (data dirs kept unless --purge-data).
    Uninstall {
        #[arg(long)]
        purge_data: bool,
    },
    /// Report each step; exit 1 when one is not ok.
    Status {
        /// Only the node's own checks (no API server): the DaemonSet's readiness probe.
        #[arg(long)]
        local: bool,
    },
    /// The chart's post-delete hook: run `uninstall` on every node with taskd, one pod each.
    Cleanup {
        #[arg(long)]
        image: String,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long, default_value = "300s", value_parser = parse_secs)]
        timeout: Duration,
        #[arg(long)]
        purge_data: bool,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let n = s.strip_suffix('s').unwrap_or(s);
    n.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("{s:?}: expected seconds like 60s"))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("taskd-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), agent::Error> {
    let systemctl = Systemctl::new(&cli.systemctl)?;
    if let Command::Cleanup {
        image,
        namespace,
        service_account,
        timeout,
        purge_data,
    } = &cli.command
    {
        let pods = CleanupPods {
            image: image.clone(),
            namespace: namespace.clone(),
            service_account: service_account.clone(),
            global_args: vec![
                format!("--host-root={}", cli.host_root.display()),
                format!("--systemctl={}", cli.systemctl),
                format!("--kubelet-config={}", cli.kubelet_config),
            ],
            host_root: cli.host_root.display().to_string(),
            purge_data: *purge_data,
            timeout: *timeout,
        };
        let client = cluster::client().await?;
        return match pods.run(client).await {
            Ok(nodes) => {
                println!("taskd uninstalled from {} node(s): {nodes:?}", nodes.len());
                Ok(())
            }
            Err(errors) => {
                for e in &errors {
                    eprintln!("taskd-node: {e}");
                }
                Err(agent::Error::Unhealthy(errors.len()))
            }
        };
    }
    let local = matches!(cli.command, Command::Status { local: true });
    let cluster = if cli.no_api || local {
        None
    } else {
        let node = cli
            .node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or(agent::Error::NoNodeName)?;
        Some(Cluster::new(cluster::client().await?, node))
    };
    let ready_timeout = match &cli.command {
        Command::Install(o) | Command::Upgrade(o) => o.ready_timeout,
        Command::Rollback { ready_timeout } => *ready_timeout,
        _ => Duration::from_secs(60),
    };
    let agent = Agent {
        host: Host::new(cli.host_root.clone(), cli.unit.clone()),
        systemctl,
        kubelet_config: cli.kubelet_config.clone(),
        cluster,
        ready_timeout,
    };
    let upgrade = matches!(cli.command, Command::Upgrade(_));
    match cli.command {
        Command::Install(o) | Command::Upgrade(o) => {
            let args = InstallArgs {
                require_installed: upgrade,
                source_dir: o.source_dir,
                config: o.config,
                runtime_classes: o.runtime_classes,
                switch_kubelet: o.switch_kubelet,
                metrics_token: o.metrics_token,
            };
            let outcome = agent.install(&args).await?;
            println!("{outcome:?}");
            if o.wait {
                wait_for_signal().await;
            }
            Ok(())
        }
        Command::Rollback { .. } => {
            let r = agent.rollback().await?;
            println!("rolled back to taskd {} ({})", r.version, r.id);
            Ok(())
        }
        Command::Uninstall { purge_data } => {
            let had = agent.uninstall(purge_data).await?;
            println!(
                "{}",
                if had {
                    "uninstalled"
                } else {
                    "not installed (nothing to do)"
                }
            );
            Ok(())
        }
        Command::Status { .. } => agent.status(&mut std::io::stdout()).await,
        Command::Cleanup { .. } => Ok(()),
    }
}

/// Until SIGTERM or SIGINT. taskd keeps running: a DaemonSet rolling update replaces this pod
/// and the new one upgrades; only the uninstall hook removes taskd.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
