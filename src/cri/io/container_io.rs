//! A container's stdio: two fifos the shim writes (`stdout`, `stderr` under
//! `<state>/containers/<id>/io/`), each drained by a copier into the CRI log file, and for
//! a container created with `stdin: true` a `stdin` fifo taskd writes (Attach).
//!
//! ```text
//! create():  mkfifo stdout, stderr (+ stdin, opened read-write by taskd and kept: the
//!            shim keeps a write end of its own too, so the process sees EOF only after
//!            CloseIO and taskd's end closed); open the log file
//!            per fifo: the read end opened at once (non-blocking), then a write end taskd
//!            holds until the task was created (`started`: the shim holds its own by
//!            then), so no copier sees EOF before the shim came; a copier task copy()s
//!            until EOF (the process and the shim's copy ended)
//! release(): task create failed: taskd's write ends go, the copiers read EOF
//! wait():    join the copiers (all output is in the log file after this)
//! attach():  after a taskd restart: the same copiers on the fifos that already exist (the
//!            shim keeps a read end of each open while nobody reads, so its writes never
//!            fail and nothing written meanwhile is lost: it waits in the fifo); a write
//!            end opened and closed right after each read end makes the copier see EOF
//!            once no writer is left: a task that ended while taskd was down has none, and
//!            its copiers read what waits and end (a blocking open() used to wait for a
//!            writer forever there, one blocking thread per such container); the stdin
//!            fifo, when there, is opened again
//! taps:      each copier hands what it reads to the attached clients (`Tap`: bounded
//!            queue per client, a slow one is dropped, the log never waits)
//! ```

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::exec_output::{mkfifo, open_reader};
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
    /// taskd's write end of stdout and stderr until the task was created (`started`).
    holds: Vec<pipe::Sender>,
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
        Self::open(dir, log_path, max_line, flush_after, true)
    }

    /// Starts the copiers on the fifos already in `dir` (a container taskd knew before it
    /// restarted), appending to `log_path`.
    pub fn attach(
        dir: &Path,
        log_path: &Path,
        max_line: usize,
        flush_after: Duration,
    ) -> Result<ContainerIo, LogError> {
        Self::open(dir, log_path, max_line, flush_after, false)
    }

    /// The copiers on the fifos in `dir`; with `hold`, taskd keeps a write end of each
    /// until [`ContainerIo::started`].
    fn open(
        dir: &Path,
        log_path: &Path,
        max_line: usize,
        flush_after: Duration,
        hold: bool,
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
        let mut copiers = Vec::with_capacity(2);
        let mut holds = Vec::new();
        for (fifo, stream, tap) in [
            (stdout.clone(), Stream::Stdout, taps[0].clone()),
            (stderr.clone(), Stream::Stderr, taps[1].clone()),
        ] {
            // taskd's write end is held until the task was created (`started`), else
            // closed at once: a task that ended while taskd was down leaves no writer, and
            // the copier reads what waits and ends; a shim still writing keeps it going.
            let (rx, ours) = open_reader(&fifo)?;
            if hold {
                holds.push(ours);
            }
            let log = log.clone();
            copiers.push(tokio::spawn(async move {
                if let Err(e) = copy(rx, stream, log, max_line, flush_after, tap).await {
                    tracing::warn!(error = %e, fifo = %fifo.display(), "container output copy ended with an error");
                }
            }));
        }
        Ok(ContainerIo {
            stdin,
            stdout,
            stderr,
            stdin_writer: std::sync::Mutex::new(stdin_writer),
            taps,
            log,
            copiers,
            holds,
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

    /// The task was created (the shim holds its write ends): taskd lets go of its own.
    pub fn started(&mut self) {
        self.holds.clear();
    }

    /// Ends the copiers: taskd's write ends go (task create failed, or the task is gone),
    /// and the copiers are waited for, up to 10 s (a process that left a child holding
    /// its output open keeps them going), then stopped.
    pub async fn release(&mut self) {
        self.holds.clear();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        for h in &mut self.copiers {
            if tokio::time::timeout_at(deadline, &mut *h).await.is_err() {
                tracing::warn!(fifo = %self.stdout.display(), "container io copiers did not end; aborting them");
                h.abort();
            }
        }
        self.copiers.clear();
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
        io.started();
        io.wait().await;
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        lines.sort();
        assert_eq!(lines, ["stderr F oops", "stdout F hello", "stdout P world"]);
    }

    /// After a restart, a container whose task ended while taskd was down has fifos no
    /// writer will ever open again: the copiers take what waits and end (they used to wait
    /// in open() forever, each holding a blocking thread).
    #[tokio::test(flavor = "current_thread")]
    async fn attach_to_fifos_without_a_writer_ends_the_copiers() {
        let dir = tempfile::tempdir().unwrap();
        let io_dir = dir.path().join("io");
        let log = dir.path().join("c.log");
        let mut first = ContainerIo::create(&io_dir, &log, 1024, Duration::from_secs(60), false).unwrap();
        first.abort();
        drop(first);
        let mut again = ContainerIo::attach(&io_dir, &log, 1024, Duration::from_secs(60)).unwrap();
        tokio::time::timeout(Duration::from_secs(5), again.wait())
            .await
            .expect("copiers ended");
    }

    /// A shim write end that came and went before the copier task ran: what it wrote is
    /// in the log.
    #[tokio::test(flavor = "current_thread")]
    async fn a_writer_that_came_and_went_before_the_copier_ran_is_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("c.log");
        let mut io =
            ContainerIo::create(&dir.path().join("io"), &log, 1024, Duration::from_secs(60), false).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&io.stdout)
            .unwrap()
            .write_all(b"quick\n")
            .unwrap();
        drop(OpenOptions::new().write(true).open(&io.stderr).unwrap());
        io.started();
        tokio::time::timeout(Duration::from_secs(5), io.wait())
            .await
            .expect("copiers ended");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.ends_with(" stdout F quick\n"), "{text:?}");
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
