//! Serving: the daemonized shim process (`-socket ADDR`). Child subreaper; a SIGCHLD loop
//! reaps every child and hands exits to the exit monitor (which the task service and the
//! runc spawner subscribe to); the task service on a ttrpc socket under both API names,
//! `containerd.task.v2.Task` (containerd 1.6/1.7, taskd) and `.v3.Task` (containerd 2).

use std::collections::HashMap;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::Flags;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::monitor::monitor_notify_by_pid;
use containerd_shim_protos::shim_async::{Client, create_task};
use containerd_shim_protos::ttrpc::r#async::Server;
use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use tokio::signal::unix::{SignalKind, signal};

use crate::events::Publisher;
use crate::service::Service;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("listen on {socket}: {source}")]
    Listen { socket: String, source: std::io::Error },
    #[error("set up {what}: {source}")]
    Setup {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("ttrpc server: {0}")]
    Ttrpc(String),
    #[error("TTRPC_ADDRESS is not set")]
    NoEventsAddress,
}

fn setup(what: &'static str) -> impl FnOnce(std::io::Error) -> ServeError {
    move |source| ServeError::Setup { what, source }
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Binds the group's socket. When it is taken by a live shim, that shim serves the group:
/// None (the stock shim's rule); a dead one's socket is replaced.
async fn listen(address: &str) -> Result<Option<UnixListener>, ServeError> {
    let path = socket_path(address);
    let lerr = |source| ServeError::Listen {
        socket: address.to_owned(),
        source,
    };
    if let Some(dir) = Path::new(path).parent() {
        std::fs::create_dir_all(dir).map_err(lerr)?;
    }
    match UnixListener::bind(path) {
        Ok(l) => Ok(Some(l)),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            for _ in 0..5 {
                if Client::connect(address).await.is_ok() {
                    return Ok(None);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            remove_socket(path);
            UnixListener::bind(path).map(Some).map_err(lerr)
        }
        Err(e) => Err(lerr(e)),
    }
}

fn remove_socket(path: &str) {
    if std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// Reaps every exited child and reports it to the exit monitor.
async fn reap_loop(mut sigchld: tokio::signal::unix::Signal) {
    while sigchld.recv().await.is_some() {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => {
                    let _ = monitor_notify_by_pid(pid.as_raw(), code).await;
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    let _ = monitor_notify_by_pid(pid.as_raw(), 128 + sig as i32).await;
                }
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

pub async fn serve(flags: Flags) -> Result<(), ServeError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(setup("child subreaper")(std::io::Error::last_os_error()));
    }
    // Signals are set up before any child exists, so no exit is missed.
    let sigchld = signal(SignalKind::child()).map_err(setup("SIGCHLD"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(setup("SIGTERM"))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(setup("SIGINT"))?;
    let mut sigpipe = signal(SignalKind::pipe()).map_err(setup("SIGPIPE"))?;
    if let Err(e) = containerd_shim::logger::init(flags.debug, "info", &flags.namespace, &flags.id) {
        eprintln!("no shim log: {e}");
    }
    let events = std::env::var("TTRPC_ADDRESS").map_err(|_| ServeError::NoEventsAddress)?;
    let Some(listener) = listen(&flags.socket).await? else {
        // Another shim serves the group; `start` already wrote its address.
        signal_started();
        return Ok(());
    };
    let exit = Arc::new(ExitSignal::default());
    let reaper = tokio::spawn(reap_loop(sigchld));
    let service = Service::new(
        Publisher::new(events, flags.namespace.clone()),
        flags.namespace.clone(),
        exit.clone(),
    )
    .await;
    let task: Arc<dyn containerd_shim_protos::shim_async::Task + Send + Sync> = Arc::new(service);
    let mut services: HashMap<_, _> = create_task(task.clone());
    // The same messages under the v2 name (containerd 1.6/1.7 and taskd speak v2).
    if let Some(svc) = create_task(task).remove("containerd.task.v3.Task") {
        services.insert("containerd.task.v2.Task".to_owned(), svc);
    }
    let listener = Listener::try_from(listener).map_err(setup("ttrpc listener"))?;
    let mut server = Server::new().add_listener(listener).register_service(services);
    server
        .start()
        .await
        .map_err(|e| ServeError::Ttrpc(e.to_string()))?;
    signal_started();
    loop {
        tokio::select! {
            () = exit.wait() => break,
            _ = sigterm.recv() => log::debug!("SIGTERM ignored: the daemon shuts shims down"),
            _ = sigint.recv() => {}
            _ = sigpipe.recv() => {}
        }
    }
    let _ = server.shutdown().await;
    reaper.abort();
    remove_socket(socket_path(&flags.socket));
    Ok(())
}

/// Tells `start` (our parent, reading our stdout until EOF) that the server is up.
fn signal_started() {
    // SAFETY: dup2 of the process's own standard descriptors.
    unsafe {
        libc::dup2(libc::STDERR_FILENO, libc::STDOUT_FILENO);
    }
}
