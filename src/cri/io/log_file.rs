//! The reopenable log file and the copy loop that feeds it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{Framer, LogError, Stream, Tap};

/// One container's log file, shared by its stdout and stderr copiers.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<File>,
}

fn open_append(path: &Path) -> Result<File, LogError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|source| LogError::Open {
            path: path.to_owned(),
            source,
        })
}

impl LogFile {
    /// Opens (creating, appending) `path`, creating its directory when missing (kubelet
    /// makes the pod's log directory; the container's subdirectory may be left to us, as
    /// containerd creates it).
    pub fn open(path: &Path) -> Result<Arc<LogFile>, LogError> {
        if !path.is_absolute() {
            return Err(LogError::RelativePath {
                path: path.to_owned(),
            });
        }
        if let Some(dir) = path.parent()
            && !dir.exists()
        {
            std::fs::create_dir_all(dir).map_err(|source| LogError::Open {
                path: dir.to_owned(),
                source,
            })?;
        }
        Ok(Arc::new(LogFile {
            path: path.to_owned(),
            file: Mutex::new(open_append(path)?),
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, File> {
        // A poisoned lock only means a writer panicked mid-call; the file is still usable.
        self.file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens the path again and swaps the descriptor (kubelet renamed the old file). On
    /// error the old descriptor is kept, so output keeps flowing somewhere.
    pub fn reopen(&self) -> Result<(), LogError> {
        let new = open_append(&self.path)?;
        *self.lock() = new;
        Ok(())
    }

    /// Appends whole records (written under the lock: records never interleave).
    pub fn write(&self, records: &[u8]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        self.lock().write_all(records).map_err(|source| LogError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// Copies one stream into `log` until EOF, framing it (see the module docs), and hands
/// each chunk to the attached clients of `tap` (never waiting for them). A write failure
/// (disk full) is logged and the output dropped, so the container never blocks on a full
/// pipe; a read failure ends the copy. Returns the number of bytes read; `tap` is closed.
pub async fn copy<R: AsyncRead + Unpin>(
    reader: R,
    stream: Stream,
    log: Arc<LogFile>,
    max_line: usize,
    flush_after: Duration,
    tap: Arc<Tap>,
) -> Result<u64, LogError> {
    let r = copy_framed(reader, stream, log, max_line, flush_after, &tap).await;
    tap.close();
    r
}

async fn copy_framed<R: AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    log: Arc<LogFile>,
    max_line: usize,
    flush_after: Duration,
    tap: &Tap,
) -> Result<u64, LogError> {
    let mut framer = Framer::new(stream, max_line);
    let mut buf = vec![0u8; 32 * 1024];
    let mut out = Vec::with_capacity(buf.len() + 256);
    let mut total = 0u64;
    let write = |out: &mut Vec<u8>| {
        if let Err(e) = log.write(out) {
            tracing::warn!(error = %e, "dropping container log output");
        }
        out.clear();
    };
    loop {
        // Only an unfinished line needs the idle timer; `read` is cancel-safe.
        let read = if framer.has_pending() {
            match tokio::time::timeout(flush_after, reader.read(&mut buf)).await {
                Ok(r) => r,
                Err(_idle) => {
                    framer.flush_partial(SystemTime::now(), &mut out);
                    write(&mut out);
                    continue;
                }
            }
        } else {
            reader.read(&mut buf).await
        };
        match read {
            Ok(0) => {
                framer.flush_partial(SystemTime::now(), &mut out);
                write(&mut out);
                return Ok(total);
            }
            Ok(n) => {
                total += n as u64;
                tap.publish(&buf[..n]);
                framer.push(&buf[..n], SystemTime::now(), &mut out);
                write(&mut out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                framer.flush_partial(SystemTime::now(), &mut out);
                write(&mut out);
                return Err(LogError::Read {
                    stream,
                    path: log.path().to_owned(),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn records(path: &Path) -> Vec<(String, String, String)> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| {
                let mut p = l.splitn(4, ' ');
                let ts = p.next().unwrap().to_owned();
                assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
                (
                    p.next().unwrap().to_owned(),
                    p.next().unwrap().to_owned(),
                    p.next().unwrap_or("").to_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn relative_path_is_refused() {
        let e = LogFile::open(Path::new("pod/c.log")).unwrap_err();
        assert!(matches!(e, LogError::RelativePath { .. }));
    }

    #[test]
    fn open_error_names_the_path() {
        // A regular file where the log's directory should be: neither can be created.
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = LogFile::open(&f.path().join("app/c.log")).unwrap_err();
        assert!(
            e.to_string()
                .contains(&f.path().join("app").display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_missing_container_log_dir_is_created() {
        let dir = tempfile::tempdir().unwrap();
        LogFile::open(&dir.path().join("app/0.log")).unwrap();
        assert!(dir.path().join("app/0.log").is_file());
    }

    #[tokio::test]
    async fn both_streams_end_up_in_one_file_and_eof_flushes_the_partial_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        let (mut w1, r1) = tokio::io::duplex(64);
        let (mut w2, r2) = tokio::io::duplex(64);
        let t1 = tokio::spawn(copy(
            r1,
            Stream::Stdout,
            log.clone(),
            16 * 1024,
            Duration::from_secs(3600),
            Arc::default(),
        ));
        let t2 = tokio::spawn(copy(
            r2,
            Stream::Stderr,
            log.clone(),
            16 * 1024,
            Duration::from_secs(3600),
            Arc::default(),
        ));
        w1.write_all(b"out one\nout two\nno newline").await.unwrap();
        w2.write_all(b"err one\n").await.unwrap();
        drop(w1);
        drop(w2);
        assert_eq!(t1.await.unwrap().unwrap(), 26);
        assert_eq!(t2.await.unwrap().unwrap(), 8);
        let mut r = records(&path);
        r.sort();
        assert_eq!(
            r,
            [
                ("stderr".into(), "F".into(), "err one".into()),
                ("stdout".into(), "F".into(), "out one".into()),
                ("stdout".into(), "F".into(), "out two".into()),
                ("stdout".into(), "P".into(), "no newline".into()),
            ]
        );
    }

    #[tokio::test]
    async fn idle_partial_line_is_flushed_while_the_stream_stays_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        let (mut w, r) = tokio::io::duplex(64);
        let t = tokio::spawn(copy(
            r,
            Stream::Stdout,
            log.clone(),
            1024,
            Duration::from_millis(20),
            Arc::default(),
        ));
        w.write_all(b"prompt> ").await.unwrap();
        // The stream stays open: the partial line must show up anyway (wait for it).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::fs::metadata(&path).unwrap().len() == 0 {
            assert!(std::time::Instant::now() < deadline, "partial line never flushed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(records(&path), [("stdout".into(), "P".into(), "prompt> ".into())]);
        w.write_all(b"answer\n").await.unwrap();
        drop(w);
        t.await.unwrap().unwrap();
        assert_eq!(records(&path)[1], ("stdout".into(), "F".into(), "answer".into()));
    }

    #[tokio::test]
    async fn reopen_after_rename_loses_no_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let rotated = dir.path().join("c.log.1");
        let log = LogFile::open(&path).unwrap();
        let (mut w, r) = tokio::io::duplex(256);
        let t = tokio::spawn(copy(
            r,
            Stream::Stdout,
            log.clone(),
            16 * 1024,
            Duration::from_secs(3600),
            Arc::default(),
        ));
        let writer = tokio::spawn(async move {
            for i in 0..2000 {
                w.write_all(format!("line {i}\n").as_bytes()).await.unwrap();
                if i % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        });
        // Rotate while the writer runs, as kubelet does: rename, then reopen.
        tokio::task::yield_now().await;
        std::fs::rename(&path, &rotated).unwrap();
        log.reopen().unwrap();
        writer.await.unwrap();
        assert_eq!(
            t.await.unwrap().unwrap(),
            (0..2000).map(|i| format!("line {i}\n").len() as u64).sum::<u64>()
        );
        let mut all: Vec<String> = records(&rotated)
            .into_iter()
            .chain(records(&path))
            .map(|r| r.2)
            .collect();
        assert_eq!(all.len(), 2000, "every line exactly once across both files");
        let expected: Vec<String> = (0..2000).map(|i| format!("line {i}")).collect();
        all.sort_by_key(|l| l[5..].parse::<u32>().unwrap());
        assert_eq!(all, expected);
        assert!(!records(&path).is_empty() || !records(&rotated).is_empty());
    }

    #[test]
    fn reopen_recreates_a_removed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        log.reopen().unwrap();
        log.write(b"x\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"x\n");
    }
}
