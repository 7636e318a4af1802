//! An exec's stdio fifos under `<state>/containers/<id>/exec/<exec id>/`: `stdin` (taskd
//! writes it), `stdout` and `stderr` (the shim writes them), each output drained by a
//! reader task until EOF.
//!
//! Each output's read end is opened at once (non-blocking) and taskd holds a write end of
//! its own until the exec has started ([`ExecOutput::started`]): the shim opens its write
//! ends during Start and may close one again within a millisecond (an `echo` leaves stderr
//! empty). A reader still on its way into a blocking open() then waited for a writer that
//! had come and gone, forever (a session that never ended, seen under load).
//!
//! ExecSync reads each output into a buffer capped at `cap` bytes (the rest is read and
//! dropped, so the process never blocks on a full pipe and a probe cannot exhaust the
//! daemon's memory); a streaming exec gives its own readers (forwarding to the client).

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

use super::LogError;

/// The stdio of an exec process: fifo paths the shim opens ("" = none) and whether the
/// process gets a terminal (then the shim copies it to `stdout` alone).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecIo {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// Drains one output fifo; what it returns is what `collect` hands back.
pub type Reader = Box<dyn FnOnce(pipe::Receiver) -> BoxFuture<'static, Vec<u8>> + Send>;

/// The fifos and their readers.
pub struct ExecOutput {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    /// stdout's reader, then stderr's.
    readers: [Option<JoinHandle<Vec<u8>>>; 2],
    /// taskd's write end of each output until the exec started (see the module doc).
    holds: Vec<pipe::Sender>,
    /// ExecSync's output as read so far (stdout, stderr): kept outside the readers, so a
    /// reader stopped at the drain bound loses nothing it read.
    captured: Option<[Captured; 2]>,
}

/// Output read so far, shared between a reader and [`ExecOutput::collect_within`].
type Captured = std::sync::Arc<std::sync::Mutex<Vec<u8>>>;

pub(super) fn mkfifo(path: &Path) -> Result<(), LogError> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| LogError::Open {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })
}

/// `path`'s read end opened at once (non-blocking: it never waits for a writer), with a
/// write end of taskd's own opened behind it. While that one is held the reader sees no
/// EOF; once no writer is left it does, even when no writer ever comes again.
pub(super) fn open_reader(path: &Path) -> Result<(pipe::Receiver, pipe::Sender), LogError> {
    let open_err = |source| LogError::Open {
        path: path.to_owned(),
        source,
    };
    let rx = pipe::OpenOptions::new().open_receiver(path).map_err(open_err)?;
    let ours = pipe::OpenOptions::new().open_sender(path).map_err(open_err)?;
    Ok((rx, ours))
}

/// A reader dropping everything (an output the client did not ask for: the shim still needs
/// its fifo drained).
pub fn discard() -> Reader {
    capped(0, Captured::default())
}

/// A reader keeping at most `cap` bytes in `into` (and reading the rest to drop it).
fn capped(cap: usize, into: Captured) -> Reader {
    Box::new(move |mut rx: pipe::Receiver| {
        Box::pin(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match rx.read(&mut buf).await {
                    Ok(0) | Err(_) => return Vec::new(),
                    Ok(n) => {
                        let mut out = into.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        let room = cap.saturating_sub(out.len());
                        out.extend_from_slice(&buf[..n.min(room)]);
                    }
                }
            }
        })
    })
}

impl ExecOutput {
    /// ExecSync: `dir/stdout` and `dir/stderr`, each read into at most `cap` bytes
    /// ([`ExecOutput::collect_within`] hands them back).
    pub fn create(dir: &Path, cap: usize) -> Result<ExecOutput, LogError> {
        let captured: [Captured; 2] = Default::default();
        let mut out = Self::with_readers(
            dir,
            false,
            Some(capped(cap, captured[0].clone())),
            Some(capped(cap, captured[1].clone())),
        )?;
        out.captured = Some(captured);
        Ok(out)
    }

    /// Creates `dir/stdin` when asked and an output fifo per reader given, and starts the
    /// readers.
    pub fn with_readers(
        dir: &Path,
        stdin: bool,
        stdout: Option<Reader>,
        stderr: Option<Reader>,
    ) -> Result<ExecOutput, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let mut out = ExecOutput {
            stdin: None,
            stdout: None,
            stderr: None,
            readers: [None, None],
            holds: Vec::new(),
            captured: None,
        };
        if stdin {
            let p = dir.join("stdin");
            mkfifo(&p)?;
            out.stdin = Some(p);
        }
        for (i, (name, reader)) in [("stdout", stdout), ("stderr", stderr)].into_iter().enumerate() {
            let Some(reader) = reader else { continue };
            let p = dir.join(name);
            mkfifo(&p)?;
            let (rx, ours) = open_reader(&p)?;
            out.holds.push(ours);
            out.readers[i] = Some(tokio::spawn(reader(rx)));
            if i == 0 {
                out.stdout = Some(p);
            } else {
                out.stderr = Some(p);
            }
        }
        Ok(out)
    }

    /// The paths as the shim takes them ("" = none).
    pub fn io(&self, terminal: bool) -> ExecIo {
        let s = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
        ExecIo {
            stdin: s(&self.stdin),
            stdout: s(&self.stdout),
            stderr: s(&self.stderr),
            terminal,
        }
    }

    /// taskd's write end of `stdin` (read-write, so opening never waits for the shim and
    /// the shim's reader sees EOF only once this and the shim's own write end are closed).
    pub fn open_stdin(&self) -> Option<Result<pipe::Sender, LogError>> {
        let p = self.stdin.as_ref()?;
        Some(
            pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(p)
                .map_err(|source| LogError::Open {
                    path: p.clone(),
                    source,
                }),
        )
    }

    /// The exec started (the shim holds its write ends): taskd lets go of its own, so the
    /// readers end when the shim's copies do.
    pub fn started(&mut self) {
        self.holds.clear();
    }

    /// The exec never started: the readers end (EOF once taskd's write ends are gone and
    /// no shim holds one), waited for up to 10 s.
    pub async fn release(&mut self) {
        self.holds.clear();
        self.finish(std::time::Duration::from_secs(10)).await;
    }

    /// Waits up to `grace` for the readers to reach EOF (a process that left a child
    /// holding its output open would keep them going), then stops them. A reader that
    /// ended is forgotten (`collect` no longer sees its output).
    pub async fn finish(&mut self, grace: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + grace;
        for slot in &mut self.readers {
            let Some(h) = slot else { continue };
            match tokio::time::timeout_at(deadline, &mut *h).await {
                Ok(_) => *slot = None,
                Err(_) => h.abort(),
            }
        }
    }

    /// ExecSync's outputs (see [`ExecOutput::create`]): read until both writers closed, or
    /// for `drain` at most, after which the readers stop and what they read is returned (a
    /// child the process left running may hold its output open forever).
    pub async fn collect_within(mut self, drain: std::time::Duration) -> (Vec<u8>, Vec<u8>) {
        self.finish(drain).await;
        let [out, err] = self.captured.take().unwrap_or_default();
        let take =
            |c: Captured| std::mem::take(&mut *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        (take(out), take(err))
    }
}

impl Drop for ExecOutput {
    fn drop(&mut self) {
        for h in self.readers.iter().flatten() {
            h.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Write;
    use std::time::Duration;

    /// The shim's write ends can come and go before a reader task ever ran (an `echo`'s
    /// empty stderr is closed within a millisecond of Start): what was written is read,
    /// and both readers end.
    #[tokio::test(flavor = "current_thread")]
    async fn writers_that_came_and_went_before_the_readers_ran_are_read_to_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ExecOutput::create(&dir.path().join("x"), 1024).unwrap();
        // No await since create: on this runtime the reader tasks have not run yet.
        let mut o = OpenOptions::new()
            .write(true)
            .open(out.stdout.clone().unwrap())
            .unwrap();
        o.write_all(b"hi\n").unwrap();
        drop(o);
        drop(
            OpenOptions::new()
                .write(true)
                .open(out.stderr.clone().unwrap())
                .unwrap(),
        );
        out.started();
        let (stdout, stderr) = out.collect_within(Duration::from_secs(10)).await;
        assert_eq!((stdout, stderr), (b"hi\n".to_vec(), Vec::new()));
    }

    /// Before the exec started, the readers wait for it (taskd's own write ends keep them
    /// from an early EOF); a failed start ends them at once.
    #[tokio::test(flavor = "current_thread")]
    async fn readers_wait_for_the_start_and_end_when_it_failed() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ExecOutput::create(&dir.path().join("x"), 1024).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            out.readers.iter().flatten().all(|h| !h.is_finished()),
            "no EOF before the start"
        );
        let t = std::time::Instant::now();
        out.release().await;
        assert!(out.readers.iter().all(Option::is_none), "both readers ended");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_capped_but_fully_drained() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
        let (o, e) = (out.stdout.clone().unwrap(), out.stderr.clone().unwrap());
        std::thread::spawn(move || {
            let mut o = OpenOptions::new().write(true).open(o).unwrap();
            let mut e = OpenOptions::new().write(true).open(e).unwrap();
            // Far more than a pipe buffer: the writer only finishes if we keep reading.
            o.write_all(&vec![b'a'; 1 << 20]).unwrap();
            e.write_all(b"err").unwrap();
        })
        .join()
        .unwrap();
        out.started();
        let (stdout, stderr) = out.collect_within(Duration::from_secs(10)).await;
        assert_eq!(stdout, b"aaaaaaaaaa");
        assert_eq!(stderr, b"err");
    }

    /// `sh -c 'sleep 600 & echo ok'`: the child keeps the output open after the process
    /// exited; ExecSync returns what was written once the drain bound passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_never_closes_is_cut_at_the_drain_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ExecOutput::create(&dir.path().join("x"), 100).unwrap();
        let (o, e) = (out.stdout.clone().unwrap(), out.stderr.clone().unwrap());
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let mut o = OpenOptions::new().write(true).open(o).unwrap();
            let _e = OpenOptions::new().write(true).open(e).unwrap();
            o.write_all(b"ok\n").unwrap();
            // Held open until the test is done.
            let _ = rx.recv();
        });
        // Let the reader take in what was written.
        tokio::time::sleep(Duration::from_millis(200)).await;
        out.started();
        let t0 = std::time::Instant::now();
        let (stdout, stderr) = out.collect_within(Duration::from_millis(300)).await;
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!((stdout.as_slice(), stderr.as_slice()), (&b"ok\n"[..], &b""[..]));
        drop(tx);
        holder.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_ends_readers_without_writers() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
        out.release().await;
        assert_eq!(
            out.collect_within(Duration::from_secs(10)).await,
            (vec![], vec![])
        );
    }
}
