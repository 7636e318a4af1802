//! A container's stdio: two fifos the shim writes (`stdout`, `stderr` under
//! `<state>/containers/<id>/io/`), each drained by a copier into the CRI log file, and for
//! a container created with `stdin: true` a `stdin` fifo taskd writes (Attach).
//!
//! ```text
//! create():  mkfifo stdout, stderr (+ stdin, opened read-write by taskd and kept: the
//!            shim keeps a write end of its own too, so the process sees EOF only after
//!            CloseIO and taskd's end closed); open the log file
//!            per fifo, a copier task: blocking open(O_RDONLY) on the blocking pool —
//!            returns when the shim opens its write end during task create — then
//!            copy() until EOF (the process and the shim's copy ended)
//! release(): task create failed: open each fifo O_WRONLY|O_NONBLOCK and close it, which
//!            completes a reader waiting in open() with an immediate EOF (retried until
//!            every copier ended: a reader may not be in open() yet)
//! wait():    join the copiers (all output is in the log file after this)
//! attach():  after a taskd restart: the same copiers on the fifos that already exist (the
//!            shim keeps a read end of each open while nobody reads, so its writes never
//!            fail and nothing written meanwhile is lost: it waits in the fifo); the stdin
//!            fifo, when there, is opened again
//! taps:      each copier hands what it reads to the attached clients (`Tap`: bounded
//!            queue per client, a slow one is dropped, the log never waits)
//! ```

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::exec_output::mkfifo;
use super::{LogError, LogFile, Stream, Tap, copy};

/// The fifos and copiers of one container.
pub struct ContainerIo {
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// taskd's end of `stdin` (read-write, never read); None once stdin was closed.
    stdin_writer: std::sync::Mutex<Option<std::fs::File>>,
    /// Attached clients of stdout and stderr.
    taps: [Arc<Tap>; 2],
    log: Arc<LogFile>,
    copiers: Vec<JoinHandle<()>>,
}

fn open_stdin(path: &Path) -> Result<std::fs::File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

impl ContainerIo {
    /// Creates the fifos in `dir` (`stdin` too when asked) and starts the copiers into
    /// `log_path`.
    pub fn create(
        dir: &Path,
        log_path: &Path,
        max_line: usize,
        flush_after: Duration,
        stdin: bool,
    ) -> Result<ContainerIo, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        mkfifo(&stdout)?;
        mkfifo(&stderr)?;
        let stdin_path = dir.join("stdin");
        if stdin {
            mkfifo(&stdin_path)?;
        } else {
            let _ = std::fs::remove_file(&stdin_path);
        }
        Self::attach(dir, log_path, max_line, flush_after)
    }

    /// Starts the copiers on the fifos already in `dir` (a container taskd knew before it
    /// restarted), appending to `log_path`.
    pub fn attach(
        dir: &Path,
        log_path: &Path,
        max_line: usize,
        flush_after: Duration,
    ) -> Result<ContainerIo, LogError> {
        let log = LogFile::open(log_path)?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        let stdin_path = dir.join("stdin");
        let (stdin, stdin_writer) = if stdin_path.exists() {
            (Some(stdin_path.clone()), Some(open_stdin(&stdin_path)?))
        } else {
            (None, None)
        };
        let taps: [Arc<Tap>; 2] = Default::default();
        let copiers = [
            (stdout.clone(), Stream::Stdout, taps[0].clone()),
            (stderr.clone(), Stream::Stderr, taps[1].clone()),
        ]
        .into_iter()
            .map(|(fifo, stream, tap)| {
                let log = log.clone();
                tokio::spawn(async move {
                    if let Err(e) = drain(&fifo, stream, log, max_line, flush_after, tap).await {
                        tracing::warn!(error = %e, fifo = %fifo.display(), "container output copy ended with an error");
                    }
                })
            })
            .collect();
        Ok(ContainerIo {
            stdin,
            stdout,
            stderr,
            stdin_writer: std::sync::Mutex::new(stdin_writer),
            taps,
            log,
            copiers,
        })
    }

    /// The attached clients of `stream`.
    pub fn tap(&self, stream: Stream) -> Arc<Tap> {
        match stream {
            Stream::Stdout => self.taps[0].clone(),
            Stream::Stderr => self.taps[1].clone(),
        }
    }

    /// A write end of the container's stdin of its own (a dup of taskd's end); None when
    /// the container has no stdin or it was closed.
    pub fn stdin_writer(&self) -> Option<std::io::Result<tokio::net::unix::pipe::Sender>> {
        let w = self
            .stdin_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let dup = w.as_ref()?.try_clone();
        Some(dup.and_then(tokio::net::unix::pipe::Sender::from_file))
    }

    /// Closes taskd's end of stdin for good (`stdin_once`).
    pub fn close_stdin(&self) {
        self.stdin_writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    /// The log file (ReopenContainerLog).
    pub fn log(&self) -> &Arc<LogFile> {
        &self.log
    }

    /// Ends copiers whose fifo no writer will ever open (task create failed), and waits
    /// for them. A copier may not have reached its open() yet (then the nonblocking open
    /// fails with ENXIO), so this retries until every copier is done.
    pub async fn release(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.copiers.iter().any(|h| !h.is_finished()) {
            self.poke();
            if std::time::Instant::now() > deadline {
                tracing::warn!(fifo = %self.stdout.display(), "container io copiers did not end; aborting them");
                for h in &self.copiers {
                    h.abort();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.wait().await;
    }

    /// One nonblocking open+close of each write end: a reader blocked in open() gets EOF.
    fn poke(&self) {
        for p in [&self.stdout, &self.stderr] {
            let _ = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(p);
        }
    }

    /// Stops copying without draining: the fifos and what waits in them stay for whoever
    /// attaches next (what a taskd that goes away leaves behind).
    pub fn abort(&mut self) {
        for h in self.copiers.drain(..) {
            h.abort();
        }
    }

    /// Waits until both streams reached EOF and are in the log file.
    pub async fn wait(&mut self) {
        for h in self.copiers.drain(..) {
            let _ = h.await;
        }
    }
}

impl Drop for ContainerIo {
    fn drop(&mut self) {
        // Copiers end at EOF on their own; a copier still running when its owner is gone
        // would leak, so make sure none waits forever in open().
        if self.copiers.iter().any(|h| !h.is_finished()) {
            self.poke();
        }
    }
}

async fn drain(
    fifo: &Path,
    stream: Stream,
    log: Arc<LogFile>,
    max_line: usize,
    flush_after: Duration,
    tap: Arc<Tap>,
) -> Result<u64, LogError> {
    let path = fifo.to_owned();
    let file = tokio::task::spawn_blocking(move || OpenOptions::new().read(true).open(&path))
        .await
        .map_err(|e| LogError::Read {
            stream,
            path: fifo.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|source| LogError::Read {
            stream,
            path: fifo.to_owned(),
            source,
        })?;
    let rx = tokio::net::unix::pipe::Receiver::from_file(file).map_err(|source| LogError::Read {
        stream,
        path: fifo.to_owned(),
        source,
    })?;
    copy(rx, stream, log, max_line, flush_after, tap).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_on_the_fifos_ends_up_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut io = ContainerIo::create(
            &dir.path().join("io"),
            &log,
            16 * 1024,
            Duration::from_secs(60),
            false,
        )
        .unwrap();
        let (out, err) = (io.stdout.clone(), io.stderr.clone());
        // Like the shim: open the write ends (blocking until our readers are there), write, close.
        let w = std::thread::spawn(move || {
            let mut o = OpenOptions::new().write(true).open(out).unwrap();
            let mut e = OpenOptions::new().write(true).open(err).unwrap();
            o.write_all(b"hello\nworld").unwrap();
            e.write_all(b"oops\n").unwrap();
        });
        w.join().unwrap();
        io.wait().await;
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        lines.sort();
        assert_eq!(lines, ["stderr F oops", "stdout F hello", "stdout P world"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_ends_copiers_no_writer_ever_opened() {
        let dir = tempfile::tempdir().unwrap();
        let mut io = ContainerIo::create(
            &dir.path().join("io"),
            &dir.path().join("c.log"),
            1024,
            Duration::from_secs(60),
            false,
        )
        .unwrap();
        // Immediately: the readers may not be in open() yet; release copes with both.
        io.release().await;
        assert_eq!(std::fs::read(dir.path().join("c.log")).unwrap(), b"");
    }
}
