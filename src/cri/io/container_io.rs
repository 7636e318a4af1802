//! A container's stdio: two fifos the shim writes (`stdout`, `stderr` under
//! `<state>/containers/<id>/io/`), each drained by a copier into the CRI log file.
//!
//! ```text
//! create():  mkfifo stdout, stderr; open the log file
//!            per fifo, a copier task: blocking open(O_RDONLY) on the blocking pool —
//!            returns when the shim opens its write end during task create — then
//!            copy() until EOF (the process and the shim's copy ended)
//! release(): task create failed: open each fifo O_WRONLY|O_NONBLOCK and close it, which
//!            completes a reader waiting in open() with an immediate EOF (retried until
//!            every copier ended: a reader may not be in open() yet)
//! wait():    join the copiers (all output is in the log file after this)
//! attach():  after a taskd restart: the same copiers on the fifos that already exist (the
//!            shim keeps a read end of each open while nobody reads, so its writes never
//!            fail and nothing written meanwhile is lost: it waits in the fifo)
//! ```

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{LogError, LogFile, Stream, copy};

/// The fifos and copiers of one container.
pub struct ContainerIo {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    log: Arc<LogFile>,
    copiers: Vec<JoinHandle<()>>,
}

fn mkfifo(path: &Path) -> Result<(), LogError> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| LogError::Open {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })
}

impl ContainerIo {
    /// Creates the fifos in `dir` and starts the copiers into `log_path`.
    pub fn create(
        dir: &Path,
        log_path: &Path,
        max_line: usize,
        flush_after: Duration,
    ) -> Result<ContainerIo, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        mkfifo(&stdout)?;
        mkfifo(&stderr)?;
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
        let copiers = [(stdout.clone(), Stream::Stdout), (stderr.clone(), Stream::Stderr)]
            .into_iter()
            .map(|(fifo, stream)| {
                let log = log.clone();
                tokio::spawn(async move {
                    if let Err(e) = drain(&fifo, stream, log, max_line, flush_after).await {
                        tracing::warn!(error = %e, fifo = %fifo.display(), "container output copy ended with an error");
                    }
                })
            })
            .collect();
        Ok(ContainerIo {
            stdout,
            stderr,
            log,
            copiers,
        })
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
    copy(rx, stream, log, max_line, flush_after).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_on_the_fifos_ends_up_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut io =
            ContainerIo::create(&dir.path().join("io"), &log, 16 * 1024, Duration::from_secs(60)).unwrap();
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
        )
        .unwrap();
        // Immediately: the readers may not be in open() yet; release copes with both.
        io.release().await;
        assert_eq!(std::fs::read(dir.path().join("c.log")).unwrap(), b"");
    }
}
