//! A process's stdio: fifos (copied by the shim), `binary://` (a logging binary reads the
//! process's pipes), `file://` (the shim appends the output to a file), and a terminal whose
//! master runc hands over on a console socket.

use std::fs::File;
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::asynchronous::io::{IoTasks, Pty, Stdio};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use runc::io::{Io, IoOption, NullIo, PipedIo};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("stdio {uri}: {source}")]
    Open { uri: String, source: std::io::Error },
    #[error("unsupported stdio URI {uri:?} (fifo path, binary:// or file://)")]
    Scheme { uri: String },
    #[error("console socket {path}: {source}")]
    Console { path: PathBuf, source: std::io::Error },
    #[error("runc sent no terminal on the console socket {path}")]
    NoConsole { path: PathBuf },
}

fn open_err(uri: &str) -> impl FnOnce(std::io::Error) -> StdioError + '_ {
    move |source| StdioError::Open {
        uri: uri.to_owned(),
        source,
    }
}

/// Where the output goes.
enum Sink {
    Fifo,
    Binary,
    File(PathBuf),
}

fn sink(uri: &str) -> Result<Sink, StdioError> {
    match uri.split_once("://") {
        None => Ok(Sink::Fifo),
        Some(("fifo", _)) => Ok(Sink::Fifo),
        Some(("binary", _)) => Ok(Sink::Binary),
        Some(("file", p)) => Ok(Sink::File(PathBuf::from(p.split('?').next().unwrap_or(p)))),
        Some(_) => Err(StdioError::Scheme { uri: uri.to_owned() }),
    }
}

fn fifo_path(uri: &str) -> &str {
    uri.strip_prefix("fifo://").unwrap_or(uri)
}

/// Set up before runc create/exec, finished after it.
pub struct Pending {
    pub runc_io: Option<Arc<dyn Io>>,
    pub console: Option<(UnixListener, PathBuf)>,
    piped: Option<Arc<PipedIo>>,
}

/// The live stdio of a process.
#[derive(Default)]
pub struct ProcIo {
    pub tasks: IoTasks,
    pub pty: Option<Pty>,
    extra: Vec<JoinHandle<()>>,
}

/// Prepares the stdio of a process before runc runs it.
pub fn prepare(
    stdio: &Stdio,
    uid: u32,
    gid: u32,
    id: &str,
    namespace: &str,
    console_dir: &Path,
) -> Result<Pending, StdioError> {
    if stdio.terminal {
        // Not in the bundle: a unix socket path must stay under 108 bytes.
        let path = console_dir.join(format!("taskd-pty-{}-{}.sock", std::process::id(), unique()));
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).map_err(|source| StdioError::Console {
            path: path.clone(),
            source,
        })?;
        return Ok(Pending {
            runc_io: None,
            console: Some((l, path)),
            piped: None,
        });
    }
    if stdio.is_null() {
        let io = NullIo::new().map_err(open_err("null"))?;
        return Ok(Pending {
            runc_io: Some(Arc::new(io)),
            console: None,
            piped: None,
        });
    }
    let opt = IoOption {
        open_stdin: !stdio.stdin.is_empty(),
        open_stdout: !stdio.stdout.is_empty(),
        open_stderr: !stdio.stderr.is_empty(),
    };
    let piped = Arc::new(PipedIo::new(uid, gid, &opt).map_err(open_err(&stdio.stdout))?);
    if matches!(sink(&stdio.stdout)?, Sink::Binary) {
        start_logger(&stdio.stdout, &piped, id, namespace)?;
    }
    Ok(Pending {
        runc_io: Some(piped.clone()),
        console: None,
        piped: Some(piped),
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Starts the logging binary of a `binary://` URI on the output pipes (fd 3 stdout, fd 4
/// stderr) and waits until it closes fd 5, its ready signal.
fn start_logger(uri: &str, io: &PipedIo, id: &str, namespace: &str) -> Result<(), StdioError> {
    let rest = uri.trim_start_matches("binary://");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut cmd = std::process::Command::new(path);
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        cmd.arg(k);
        if !v.is_empty() {
            cmd.arg(v);
        }
    }
    let dup = |o: Option<&runc::Pipe>| -> Result<Option<OwnedFd>, StdioError> {
        o.map(|p| p.rd.try_clone()).transpose().map_err(open_err(uri))
    };
    let out = dup(io.stdout.as_ref())?;
    let err = dup(io.stderr.as_ref())?;
    let (ready_r, ready_w) = std::io::pipe().map_err(open_err(uri))?;
    let fds: [RawFd; 3] = [
        out.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
        err.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd),
        ready_w.as_raw_fd(),
    ];
    cmd.env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null());
    // SAFETY: only dup2 and close between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in fds.iter().enumerate() {
                let target = 3 + i as RawFd;
                if *fd < 0 {
                    libc::close(target);
                } else if libc::dup2(*fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(open_err(uri))?;
    drop(ready_w);
    drop(cmd);
    // The logger signals readiness by closing fd 5; EOF then.
    let mut r = ready_r;
    let mut b = [0u8; 1];
    let _ = std::io::Read::read(&mut r, &mut b);
    drop(child); // reaped by the shim's reaper
    Ok(())
}

/// Receives the terminal master runc sends on the console socket.
async fn receive_console(l: UnixListener, path: &Path) -> Result<File, StdioError> {
    let cerr = |source| StdioError::Console {
        path: path.to_owned(),
        source,
    };
    let (stream, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
        .await
        .map_err(|_| StdioError::NoConsole {
            path: path.to_owned(),
        })?
        .map_err(cerr)?;
    loop {
        stream.readable().await.map_err(cerr)?;
        let mut buf = [0u8; 4096];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        match recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(msg) => {
                for c in msg.cmsgs().map_err(|e| cerr(e.into()))? {
                    if let ControlMessageOwned::ScmRights(fds) = c
                        && let Some(fd) = fds.first()
                    {
                        // SAFETY: the fd was just received and nothing else owns it.
                        return Ok(unsafe { File::from_raw_fd(*fd) });
                    }
                }
                return Err(StdioError::NoConsole {
                    path: path.to_owned(),
                });
            }
            Err(nix::Error::EAGAIN) => continue,
            Err(e) => return Err(cerr(e.into())),
        }
    }
}

/// After runc created/exec'd the process: takes the terminal, starts the copies.
pub async fn finish(p: Pending, stdio: &Stdio) -> Result<ProcIo, StdioError> {
    let mut io = ProcIo::default();
    if let Some((l, path)) = p.console {
        let got = receive_console(l, &path).await;
        let _ = std::fs::remove_file(&path);
        let pty = Pty::new(got?).map_err(|e| StdioError::Console {
            path: path.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        if !stdio.stdin.is_empty() {
            io.tasks
                .copy_from_fifo(fifo_path(&stdio.stdin), pty.clone())
                .map_err(|e| StdioError::Open {
                    uri: stdio.stdin.clone(),
                    source: std::io::Error::other(e.to_string()),
                })?;
        }
        if !stdio.stdout.is_empty() {
            output(&mut io, Box::new(pty.clone()), &stdio.stdout).await?;
        }
        io.pty = Some(pty);
        return Ok(io);
    }
    let Some(piped) = p.piped else {
        return Ok(io);
    };
    if let Some(w) = piped.stdin() {
        io.tasks
            .copy_from_fifo(fifo_path(&stdio.stdin), w)
            .map_err(|e| StdioError::Open {
                uri: stdio.stdin.clone(),
                source: std::io::Error::other(e.to_string()),
            })?;
    }
    for (uri, r) in [(&stdio.stdout, piped.stdout()), (&stdio.stderr, piped.stderr())] {
        if let Some(r) = r {
            output(&mut io, r, uri).await?;
        }
    }
    Ok(io)
}

async fn output(
    io: &mut ProcIo,
    from: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    uri: &str,
) -> Result<(), StdioError> {
    match sink(uri)? {
        Sink::Fifo => {
            let path = fifo_path(uri);
            // Our own writer on the fifo, opened once the copy's reader holds it.
            let copy = io.tasks.copy_to_fifo(DrainFirst::new(from, path), path);
            copy.map_err(|e| StdioError::Open {
                uri: uri.to_owned(),
                source: std::io::Error::other(e.to_string()),
            })
        }
        Sink::Binary => Ok(()), // the logger reads the pipe itself
        Sink::File(path) => {
            if let Some(dir) = path.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(open_err(uri))?;
            }
            let mut f = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .await
                .map_err(open_err(uri))?;
            let mut from = from;
            io.extra.push(tokio::spawn(async move {
                let _ = tokio::io::copy(&mut from, &mut f).await;
                let _ = f.flush().await;
            }));
            Ok(())
        }
    }
}

/// How long output left in a fifo may wait for its reader once the process's output ended.
const DRAIN_WAIT: Duration = Duration::from_secs(5);
/// The first and the longest pause between two looks at what the fifo still holds: a reader
/// that is there takes the last bytes within a millisecond or so, and every short-lived
/// process (an exec of `echo`) waits for that look before its output ends, so the first
/// looks come quickly and only a reader that is away is looked for every 10 ms.
const DRAIN_TICK_FIRST: Duration = Duration::from_micros(500);
const DRAIN_TICK_MAX: Duration = Duration::from_millis(10);

/// The source of an output copy that, at its end, holds the fifo open for writing until
/// what is queued in it has been read (or [`DRAIN_WAIT`] passed). The copy never waits for
/// the daemon's reader to open the fifo, so without this a short-lived process's output
/// would be discarded with the fifo when the copy closed it before the reader came.
struct DrainFirst {
    inner: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    path: String,
    fifo: Option<File>,
    until: Option<tokio::time::Instant>,
    tick: std::pin::Pin<Box<tokio::time::Sleep>>,
    /// The next pause between looks (doubling from DRAIN_TICK_FIRST to DRAIN_TICK_MAX).
    pause: Duration,
}

impl DrainFirst {
    fn new(inner: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>, path: &str) -> Self {
        DrainFirst {
            inner,
            path: path.to_owned(),
            fifo: None,
            until: None,
            tick: Box::pin(tokio::time::sleep(Duration::ZERO)),
            pause: DRAIN_TICK_FIRST,
        }
    }

    /// Bytes queued in the fifo, unread.
    fn queued(&mut self) -> usize {
        use std::os::unix::fs::OpenOptionsExt;
        if self.fifo.is_none() {
            self.fifo = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path)
                .ok();
        }
        let Some(f) = &self.fifo else {
            return 0;
        };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int.
        if unsafe { libc::ioctl(f.as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
            return 0;
        }
        n.max(0) as usize
    }
}

impl tokio::io::AsyncRead for DrainFirst {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = &mut *self;
        if this.until.is_none() {
            let before = buf.filled().len();
            match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) if buf.filled().len() == before => {
                    this.until = Some(tokio::time::Instant::now() + DRAIN_WAIT);
                }
                other => {
                    // Opened early (while the copy holds the fifo), so the end can hold it.
                    if this.fifo.is_none() {
                        this.queued();
                    }
                    return other;
                }
            }
        }
        loop {
            let until = this.until.unwrap_or_else(tokio::time::Instant::now);
            if this.queued() == 0 || tokio::time::Instant::now() >= until {
                this.fifo = None;
                return Poll::Ready(Ok(()));
            }
            this.tick.as_mut().reset(tokio::time::Instant::now() + this.pause);
            this.pause = (this.pause * 2).min(DRAIN_TICK_MAX);
            if this.tick.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
    }
}

impl ProcIo {
    /// Lets the output drain, then stops every copy (process deleted).
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        for h in self.extra.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
        }
        self.pty = None;
    }

    pub fn resize(&self, width: u32, height: u32) -> std::io::Result<()> {
        let Some(pty) = &self.pty else {
            return Err(std::io::Error::other("the process has no terminal"));
        };
        use std::os::fd::AsFd;
        let ws = libc::winsize {
            ws_row: height as u16,
            ws_col: width as u16,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer.
        let r = unsafe { libc::ioctl(pty.as_fd().as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
