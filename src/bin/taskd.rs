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
    // Nothing taskd creates is for other users unless it says so with an explicit mode (the
    // pod files bound into containers, the pod's shm): plugin data (CRI records with container
    // env, meta.redb, ingests, snapshots) never depends on the umask it was started with.
    // The unit sets `UMask=0077` too. Shims (and so runc) are started with 0022
    // (runtime::v2::binary).
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
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
    let (_, report) = config::check(&text, &Overrides::default(), registry.registrations());
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
    let (cfg, report) = config::load(&text, &overrides(cli), registry.registrations());
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")?;
    // The tracing export's OTLP channel is made on the runtime.
    let mut logs = {
        let _rt = runtime.enter();
        logging::init(level, cfg.debug.format, &cfg.tracing)?
    };
    tracing::info!(version = taskd::VERSION, revision = taskd::REVISION, config = %origin, "starting taskd");
    let result = runtime.block_on(run(cli, cfg, registry, &mut logs, notifier));
    // The last spans go out while the runtime (and so the OTLP channel) still runs.
    logs.shutdown_export();
    result
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
    let metrics_token = http::Token::default();
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
            metrics_token.set(token);
            Some(http::serve(
                listener,
                metrics.clone(),
                ready.clone(),
                metrics_token.clone(),
            ))
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
            _ = sighup.recv() => reload(cli, cfg, logs, &plugins, &metrics_token),
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
        () = drain => {}
        _ = sigterm.recv() => bail!("second SIGTERM: exiting without finishing the drain"),
        _ = sigint.recv() => bail!("second SIGINT: exiting without finishing the drain"),
    }
    match failure {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// The plugin tables a reload applies (the rest need a restart).
const CRI_PLUGIN: &str = "io.containerd.cri.v1.cri";
const IMAGES_PLUGIN: &str = "io.containerd.service.v1.images-service";

/// The command-line overrides (applied to every load of the file).
fn overrides(cli: &Cli) -> Overrides {
    Overrides {
        root: cli.root.clone(),
        state: cli.state.clone(),
        address: cli.address.clone(),
    }
}

/// A plugin's table of `cfg` as its config type (its defaults when the file has none).
fn plugin_table<T: serde::de::DeserializeOwned + Default>(cfg: &Config, id: &str) -> Result<T, String> {
    match cfg.plugins.get(id) {
        None => Ok(T::default()),
        Some(t) => toml::Value::Table(t.clone())
            .try_into()
            .map_err(|e: toml::de::Error| format!("plugins.\"{id}\": {}", e.message())),
    }
}

/// SIGHUP: re-reads the config file. A file that fails `taskd config check` (or whose
/// metrics token cannot be read) is rejected whole and the running config stays. Otherwise
/// applied live: `[debug] level`, the metrics bearer token (re-read, so a rotated token file
/// takes effect), the CRI's runtime handlers (a handler pods use is kept) and CNI settings,
/// the images service's `registries`. Every other key that differs from the running config
/// is named in the log as needing a restart. Never fatal.
fn reload(
    cli: &Cli,
    running: &Config,
    logs: &mut logging::Logging,
    plugins: &taskd::plugin::Plugins,
    token: &http::Token,
) {
    let Some(path) = &cli.config else {
        tracing::info!(
            "SIGHUP: reload is not supported without a config file (running on embedded defaults)"
        );
        return;
    };
    let origin = path.display().to_string();
    let rejected = |why: &str| {
        tracing::warn!(config = %origin, reason = why, "SIGHUP: config rejected; the running config stays");
    };
    let text = match config::read(path) {
        Ok(t) => t,
        Err(e) => return rejected(&e.to_string()),
    };
    let registrations = taskd::builtins::registrations();
    let (cfg, report) = config::check(&text, &overrides(cli), &registrations);
    for w in &report.warnings {
        tracing::warn!(warning = %w.located(&origin), "SIGHUP: config warning");
    }
    let cfg = match cfg {
        Some(cfg) if report.is_ok() => cfg,
        _ => {
            for e in &report.errors {
                tracing::warn!(error = %e.located(&origin), "SIGHUP: config error");
            }
            return rejected(&format!("{} error(s)", report.errors.len()));
        }
    };
    // Everything that can still fail is read before anything is applied.
    let new_token = match cfg
        .metrics
        .bearer_token_file
        .as_deref()
        .map(http::read_token)
        .transpose()
    {
        Ok(t) => t,
        Err(e) => return rejected(&e.to_string()),
    };
    let cri: taskd::cri::config::CriConfig = match plugin_table(&cfg, CRI_PLUGIN) {
        Ok(c) => c,
        Err(e) => return rejected(&e),
    };
    let pull: taskd::images::pull::PullConfig = match plugin_table(&cfg, IMAGES_PLUGIN) {
        Ok(c) => c,
        Err(e) => return rejected(&e),
    };

    let mut applied = Vec::new();
    let mut not_live: Vec<String> = Vec::new();
    for (key, differs) in [
        ("root", running.root != cfg.root),
        ("state", running.state != cfg.state),
        ("grpc", running.grpc != cfg.grpc),
        ("ttrpc", running.ttrpc != cfg.ttrpc),
        ("metrics.address", running.metrics.address != cfg.metrics.address),
        ("debug.format", running.debug.format != cfg.debug.format),
        ("shutdown", running.shutdown != cfg.shutdown),
        ("tracing", running.tracing != cfg.tracing),
        (
            "disabled_plugins",
            running.disabled_plugins != cfg.disabled_plugins,
        ),
        (
            "required_plugins",
            running.required_plugins != cfg.required_plugins,
        ),
    ] {
        if differs {
            not_live.push(key.to_owned());
        }
    }
    for (id, table) in &cfg.plugins {
        if id != CRI_PLUGIN && id != IMAGES_PLUGIN && running.plugins.get(id) != Some(table) {
            not_live.push(format!("plugins.\"{id}\""));
        }
    }
    for id in running.plugins.keys() {
        if id != CRI_PLUGIN && id != IMAGES_PLUGIN && !cfg.plugins.contains_key(id) {
            not_live.push(format!("plugins.\"{id}\""));
        }
    }

    if let Err(e) = logs.reload_from_config(&cfg.debug.level) {
        tracing::warn!(error = %e, "SIGHUP: log level not reloaded");
    }
    if running.metrics_address().is_some() {
        tracing::info!(
            auth = new_token.is_some(),
            "SIGHUP: metrics bearer token reloaded"
        );
        token.set(new_token);
    }
    if let Some(service) = plugins.get::<taskd::cri::service::CriService>() {
        let r = service.reload(cri);
        applied.extend(r.applied.iter().map(|a| format!("plugins.\"{CRI_PLUGIN}\".{a}")));
        for name in &r.kept {
            tracing::warn!(
                handler = %name,
                "SIGHUP: runtime handler kept: pods use it (or it is the default handler); remove it once they are gone"
            );
        }
        not_live.extend(r.not_live.iter().map(|k| format!("plugins.\"{CRI_PLUGIN}\".{k}")));
    }
    if let Some(puller) = plugins.get::<taskd::images::pull::Puller>() {
        let old: taskd::images::pull::PullConfig = plugin_table(running, IMAGES_PLUGIN).unwrap_or_default();
        // The images service's registry hosts config, replaced in one call (the next pull
        // uses it).
        puller.replace_hosts(pull.hosts());
        applied.push(format!("plugins.\"{IMAGES_PLUGIN}\".registries"));
        applied.push(format!("plugins.\"{IMAGES_PLUGIN}\".config_path"));
        let rest = taskd::images::pull::PullConfig {
            registries: old.registries.clone(),
            config_path: old.config_path.clone(),
            ..pull
        };
        if rest != old {
            not_live.push(format!(
                "plugins.\"{IMAGES_PLUGIN}\" (keys other than registries and config_path)"
            ));
        }
    }
    for key in &not_live {
        tracing::warn!(%key, "SIGHUP: cannot change live; the running value stays until taskd restarts");
    }
    tracing::info!(config = %origin, applied = ?applied, not_live = not_live.len(), "SIGHUP: config reloaded");
}
