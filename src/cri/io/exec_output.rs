//! ExecSync's output: two fifos the shim writes, each read to EOF into a buffer capped at
//! `cap` bytes (the rest is read and dropped, so the process never blocks on a full pipe
//! and a probe cannot exhaust the daemon's memory).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::AsyncReadExt;
use tokio::task::JoinHandle;

use super::LogError;

/// The fifos and their readers.
pub struct ExecOutput {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    readers: Vec<JoinHandle<Vec<u8>>>,
}

fn mkfifo(path: &Path) -> Result<(), LogError> {
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(|e| LogError::Open {
        path: path.to_owned(),
        source: std::io::Error::from(e),
    })
}

async fn read_capped(fifo: PathBuf, cap: usize) -> Vec<u8> {
    let path = fifo.clone();
    let Ok(Ok(file)) = tokio::task::spawn_blocking(move || OpenOptions::new().read(true).open(&path)).await
    else {
        return Vec::new();
    };
    let Ok(mut rx) = tokio::net::unix::pipe::Receiver::from_file(file) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => {
                let room = cap.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

impl ExecOutput {
    /// Creates `dir/stdout` and `dir/stderr` and starts their readers.
    pub fn create(dir: &Path, cap: usize) -> Result<ExecOutput, LogError> {
        std::fs::create_dir_all(dir).map_err(|source| LogError::Open {
            path: dir.to_owned(),
            source,
        })?;
        let stdout = dir.join("stdout");
        let stderr = dir.join("stderr");
        mkfifo(&stdout)?;
        mkfifo(&stderr)?;
        let readers = vec![
            tokio::spawn(read_capped(stdout.clone(), cap)),
            tokio::spawn(read_capped(stderr.clone(), cap)),
        ];
        Ok(ExecOutput {
            stdout,
            stderr,
            readers,
        })
    }

    /// Ends readers no writer will ever open (the exec never started), retrying until
    /// they are done (a reader may not be in open() yet).
    pub async fn release(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.readers.iter().any(|h| !h.is_finished()) && std::time::Instant::now() < deadline {
            for p in [&self.stdout, &self.stderr] {
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Both outputs, once both writers closed.
    pub async fn collect(mut self) -> (Vec<u8>, Vec<u8>) {
        let mut outs = Vec::new();
        for h in self.readers.drain(..) {
            outs.push(h.await.unwrap_or_default());
        }
        let err = outs.pop().unwrap_or_default();
        let out = outs.pop().unwrap_or_default();
        (out, err)
    }
}

impl Drop for ExecOutput {
    fn drop(&mut self) {
        for h in &self.readers {
            h.abort();
        }
        if self.readers.iter().any(|h| !h.is_finished()) {
            for p in [&self.stdout, &self.stderr] {
                let _ = OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn output_is_capped_but_fully_drained() {
        let dir = tempfile::tempdir().unwrap();
        let out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
        let (o, e) = (out.stdout.clone(), out.stderr.clone());
        std::thread::spawn(move || {
            let mut o = OpenOptions::new().write(true).open(o).unwrap();
            let mut e = OpenOptions::new().write(true).open(e).unwrap();
            // Far more than a pipe buffer: the writer only finishes if we keep reading.
            o.write_all(&vec![b'a'; 1 << 20]).unwrap();
            e.write_all(b"err").unwrap();
        })
        .join()
        .unwrap();
        let (stdout, stderr) = out.collect().await;
        assert_eq!(stdout, b"aaaaaaaaaa");
        assert_eq!(stderr, b"err");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn release_ends_readers_without_writers() {
        let dir = tempfile::tempdir().unwrap();
        let out = ExecOutput::create(&dir.path().join("x"), 10).unwrap();
        out.release().await;
        assert_eq!(out.collect().await, (vec![], vec![]));
    }
}
