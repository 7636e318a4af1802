//! An exec's stdio fifos under `<state>/containers/<id>/exec/<exec id>/`: `stdin` (taskd
//! writes it), `stdout` and `stderr` (the shim writes them), each output drained by a
//! reader task until EOF.
//!
//! ExecSync reads each output into a buffer capped at `cap` bytes (the rest is read and
//! dropped, so the process never blocks on a full pipe and a probe cannot exhaust the
//! daemon's memory); a streaming exec gives its own readers (forwarding to the client).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
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

/// Opens `fifo` for reading (blocking until the shim opens its write end) and runs `reader`.
async fn read_fifo(fifo: PathBuf, reader: Reader) -> Vec<u8> {
    let path = fifo.clone();
    let Ok(Ok(file)) = tokio::task::spawn_blocking(move || OpenOptions::new().read(true).open(&path)).await
    else {
        return Vec::new();
    };
    let Ok(rx) = pipe::Receiver::from_file(file) else {
        return Vec::new();
    };
    reader(rx).await
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

fn poke(p: &Path) {
    let _ = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(p);
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
            out.readers[i] = Some(tokio::spawn(read_fifo(p.clone(), reader)));
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

    fn outputs(&self) -> impl Iterator<Item = &PathBuf> {
        self.stdout.iter().chain(self.stderr.iter())
    }

    fn running(&self) -> bool {
        self.readers.iter().flatten().any(|h| !h.is_finished())
    }

    /// Ends readers no writer will ever open (the exec never started), retrying until
    /// they are done (a reader may not be in open() yet).
    pub async fn release(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.running() && std::time::Instant::now() < deadline {
            self.outputs().for_each(|p| poke(p));
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
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
        if self.running() {
            self.outputs().for_each(|p| poke(p));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_capped_but_fully_drained() {
        let dir = tempfile::tempdir().unwrap();
        let out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
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
        let (stdout, stderr) = out.collect_within(Duration::from_secs(10)).await;
        assert_eq!(stdout, b"aaaaaaaaaa");
        assert_eq!(stderr, b"err");
    }

    /// `sh -c 'sleep 600 & echo ok'`: the child keeps the output open after the process
    /// exited; ExecSync returns what was written once the drain bound passes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_that_never_closes_is_cut_at_the_drain_bound() {
        let dir = tempfile::tempdir().unwrap();
        let out = ExecOutput::create(&dir.path().join("x"), 100).unwrap();
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
        let out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
        out.release().await;
        assert_eq!(
            out.collect_within(Duration::from_secs(10)).await,
            (vec![], vec![])
        );
    }
}
