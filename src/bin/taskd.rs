//! taskd: flags → config (validated before anything binds) → logging → lock root → bind
//! sockets → plugins → serve gRPC + ttrpc + HTTP → wait for a signal → drain → shutdown
//! hooks → remove sockets → exit 0.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

use taskd::config::{self, Config, Overrides};
use taskd::logging::{self, LevelSource};
use taskd::plugin::{Addresses, Registry, RegistryConfig};
use taskd::server::notify::Notifier;
use taskd::server::{GrpcService, TtrpcService, grpc, http, socket, ttrpc};

/// A Kubernetes node container runtime serving containerd's APIs.
#[derive(Parser)]
#[command(name = "taskd", args_override_self = true, version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("TASKD_REVISION"), ")"))]
struct Cli {
    /// Config file (TOML). Without it, the embedded defaults (`taskd config default`).
    #[arg(long, short = 'c', global = true, env = "TASKD_CONFIG")]
    config: Option<PathBuf>,
    /// Log level or filter directives; RUST_LOG, when set, wins over this.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Persistent state directory (overrides `root`).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `state`).
    #[arg(long, global = true)]
    state: Option<PathBuf>,
    /// gRPC socket path (overrides `[grpc] address`).
    #[arg(long, short = 'a', global = true)]
    address: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Config file helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the complete default config, with every plugin's default table.
    Default,
    /// Validate a config file: unknown keys and bad values are errors naming key and line.
    Check { file: PathBuf },
    /// Print the taskd config equivalent to a containerd config.toml (version 2 or 3); the
    /// keys it could not carry over follow as comments, with the reason.
    Migrate { file: PathBuf },
}

fn main() -> ExitCode {
    // glibc gives each thread that allocates its own arena (up to 8 per CPU), and freed
    // memory stays in them: with the blocking pool's short-lived threads (fifo opens,
    // store commits) that is most of a long-running daemon's RSS. Two arenas are plenty.
    // SAFETY: mallopt only sets an allocator parameter; called before any thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
    // SAFETY: no other thread exists yet (the runtime is built in `serve`).
    let notifier = Arc::new(unsafe { Notifier::take_env() });
    let cli = Cli::parse();
    let registry = match Registry::new(taskd::builtins::registrations()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("taskd: {e}");
            return ExitCode::FAILURE;
        }
    };
    match &cli.command {
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{}", config::default_toml(registry.registrations()));
            ExitCode::SUCCESS
        }
        Some(Command::Config {
            command: ConfigCommand::Check { file },
        }) => check(file, &registry),
        Some(Command::Config {
            command: ConfigCommand::Migrate { file },
        }) => migrate(file),
        None => match serve(cli, registry, notifier) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "taskd failed");
                eprintln!("taskd: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// `taskd config check FILE`: prints every finding as `FILE:LINE: key: message`.
fn check(file: &std::path::Path, registry: &Registry) -> ExitCode {
    let text = match config::read(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("taskd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (_, report) = config::load(&text, &Overrides::default(), registry.registrations());
    print_report(&file.display().to_string(), &report);
    if report.is_ok() {
        println!("{}: ok", file.display());
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `taskd config migrate FILE`: the migrated config on stdout.
fn migrate(file: &std::path::Path) -> ExitCode {
    let origin = file.display().to_string();
    let rendered = config::read(file)
        .map_err(|e| e.to_string())
        .and_then(|text| taskd::migrate::migrate(&text, &origin).map_err(|e| e.to_string()))
        .and_then(|m| m.render(&origin).map_err(|e| e.to_string()));
    match rendered {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("taskd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_report(origin: &str, report: &config::Report) {
    for w in &report.warnings {
        eprintln!("warning: {}", w.located(origin));
    }
    for e in &report.errors {
        eprintln!("error: {}", e.located(origin));
    }
}

/// Loads the config file (or the embedded defaults) with the flags applied.
fn load_config(cli: &Cli, registry: &Registry) -> anyhow::Result<(Config, String)> {
    let (text, origin) = match &cli.config {
        Some(path) => (config::read(path)?, path.display().to_string()),
        None => (config::DEFAULT_TOML.to_owned(), "<embedded defaults>".to_owned()),
    };
    let overrides = Overrides {
        root: cli.root.clone(),
        state: cli.state.clone(),
        address: cli.address.clone(),
    };
    let (cfg, report) = config::load(&text, &overrides, registry.registrations());
    print_report(&origin, &report);
    match cfg {
        Some(cfg) if report.is_ok() => Ok((cfg, origin)),
        _ => bail!("invalid config {origin}: {} error(s)", report.errors.len()),
    }
}

fn serve(cli: Cli, registry: Registry, notifier: Arc<Notifier>) -> anyhow::Result<()> {
    let (cfg, origin) = load_config(&cli, &registry)?;
    let level = LevelSource::pick(
        std::env::var("RUST_LOG").ok(),
        cli.log_level.clone(),
        &cfg.debug.level,
    );
    let mut logs = logging::init(level, cfg.debug.format)?;
    tracing::info!(version = taskd::VERSION, revision = taskd::REVISION, config = %origin, "starting taskd");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    runtime.block_on(run(cli, cfg, registry, &mut logs, notifier))
}

async fn run(
    cli: Cli,
    cfg: Config,
    registry: Registry,
    logs: &mut logging::Logging,
    notifier: Arc<Notifier>,
) -> anyhow::Result<()> {
    // Claim the root and the sockets before any plugin touches the disk.
    socket::own_dir_0711(&cfg.root)?;
    socket::own_dir_0711(&cfg.state)?;
    let _lock = socket::lock_root(&cfg.root)?;
    let ttrpc_path = cfg.ttrpc_address();
    let (grpc_listener, grpc_socket) = socket::bind(&cfg.grpc.address)?;
    let (ttrpc_listener, ttrpc_socket) = match socket::bind(&ttrpc_path) {
        Ok(b) => b,
        Err(e) => {
            grpc_socket.remove();
            return Err(e.into());
        }
    };
    let sockets = [grpc_socket, ttrpc_socket];
    let listeners = (grpc_listener, ttrpc_listener);
    let result = serve_until_signal(&cli, &cfg, registry, logs, listeners, &notifier).await;
    for s in &sockets {
        s.remove();
    }
    tracing::info!("taskd stopped");
    result
}

async fn serve_until_signal(
    cli: &Cli,
    cfg: &Config,
    registry: Registry,
    logs: &mut logging::Logging,
    (grpc_listener, ttrpc_listener): (tokio::net::UnixListener, tokio::net::UnixListener),
    notifier: &Arc<Notifier>,
) -> anyhow::Result<()> {
    let mut sigterm = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut sighup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;

    let metrics = prometheus::Registry::new();
    http::register_process_metrics(&metrics)?;
    let rpc_metrics = grpc::RpcMetrics::register(&metrics)?;
    let ready = http::Readiness::default();
    let http_server = match cfg.metrics_address() {
        Some(address) => {
            let token = cfg
                .metrics
                .bearer_token_file
                .as_deref()
                .map(http::read_token)
                .transpose()?;
            let listener = http::bind(address).await?;
            tracing::info!(%address, auth = token.is_some(), "serving metrics and health over HTTP");
            Some(http::serve(listener, metrics.clone(), ready.clone(), token))
        }
        None => None,
    };

    let plugins = registry
        .init(RegistryConfig {
            root: cfg.root.clone(),
            state: cfg.state.clone(),
            plugins: cfg.plugins.clone(),
            disabled_plugins: cfg.disabled_plugins.clone(),
            required_plugins: cfg.required_plugins.clone(),
            addresses: Addresses {
                grpc: cfg.grpc.address.clone(),
                ttrpc: cfg.ttrpc_address(),
                metrics: cfg.metrics_address().map(str::to_owned),
            },
            metrics: metrics.clone(),
        })
        .await?;

    if let Some(deprecations) = plugins.get::<taskd::deprecation::Deprecations>() {
        deprecations.scan_plugin_config(&cfg.plugins);
    }
    let mut grpc_server = grpc::serve(
        grpc_listener,
        plugins.get_all::<dyn GrpcService>(),
        cfg.grpc_limits(),
        rpc_metrics,
    );
    let ttrpc_server = ttrpc::serve(ttrpc_listener, plugins.get_all::<dyn TtrpcService>()).await?;
    ready.set(true);
    notifier.ready();
    let _watchdog = notifier.watchdog();
    tracing::info!(
        grpc = %cfg.grpc.address.display(),
        ttrpc = %cfg.ttrpc_address().display(),
        "taskd is serving"
    );

    let mut failure = None;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = sighup.recv() => reload(cli, logs),
            why = grpc_server.ended() => {
                tracing::error!(%why, "shutting down");
                failure = Some(why);
                break;
            }
        }
    }

    ready.set(false);
    notifier.stopping();
    if let Some(health) = plugins.get::<taskd::services::health::Health>() {
        health.set_serving(false).await;
    }
    // End event streams (`ctr events`, Subscribe) so they do not hold the drain.
    if let Some(exchange) = plugins.get::<taskd::events::Exchange>() {
        exchange.close();
    }
    let grace = cfg.shutdown.grace.0;
    let drain = async {
        tokio::join!(grpc_server.shutdown(grace), ttrpc_server.shutdown(grace));
        plugins.shutdown(cfg.shutdown.hook_timeout.0).await;
        if let Some(h) = http_server {
            h.shutdown(grace).await;
        }
    };
    // A second SIGTERM/SIGINT during the drain skips the rest of it.
    tokio::select! {
        _ = drain => {}
        _ = sigterm.recv() => bail!("second SIGTERM: exiting without finishing the drain"),
        _ = sigint.recv() => bail!("second SIGINT: exiting without finishing the drain"),
    }
    match failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// SIGHUP: re-read the config file's log level. Never fatal.
fn reload(cli: &Cli, logs: &mut logging::Logging) {
    let Some(path) = &cli.config else {
        tracing::info!(
            "SIGHUP: reload is not supported without a config file (running on embedded defaults)"
        );
        return;
    };
    let level = config::read(path)
        .map_err(|e| e.to_string())
        .and_then(|text| config::parse(&text).map_err(|r| format!("{:?}", r.errors)))
        .map(|c| c.debug.level);
    match level {
        Ok(level) => {
            if let Err(e) = logs.reload_from_config(&level) {
                tracing::warn!(error = %e, "SIGHUP: log level not reloaded");
            }
        }
        Err(e) => tracing::warn!(config = %path.display(), error = %e, "SIGHUP: config not reloaded"),
    }
}
