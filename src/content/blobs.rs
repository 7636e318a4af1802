//! The raw, un-namespaced file store: `blobs/sha256/<hex>` and `ingest/<key>/` (see the
//! module docs of `content`). It knows nothing about namespaces' visibility or leases; the
//! namespaced [`Store`](super::store::Store) owns that and serializes installs and removals.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ContentError;
use super::model::{Status, format_digest, parse_digest};

/// The file store under one root directory.
#[derive(Debug)]
pub struct Blobs {
    root: PathBuf,
}

/// `meta.json` of an ingest.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct IngestMeta {
    namespace: String,
    r#ref: String,
    #[serde(default)]
    expected: String,
    #[serde(default)]
    total: i64,
    /// Nanoseconds since the Unix epoch.
    started_at: u128,
    /// The lease that held it when it was opened ("" = none): once that lease is gone, the
    /// garbage collector removes the ingest.
    #[serde(default)]
    lease: String,
}

fn to_nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn from_nanos(n: u128) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(n.min(u64::MAX as u128) as u64)
}

impl Blobs {
    /// Creates `blobs/sha256` and `ingest` under `root` if needed.
    pub fn open(root: &Path) -> Result<Blobs, ContentError> {
        let b = Blobs {
            root: root.to_owned(),
        };
        for d in [b.root.join("blobs").join("sha256"), b.root.join("ingest")] {
            fs::create_dir_all(&d).map_err(|e| ContentError::io("create directory", &d, e))?;
        }
        Ok(b)
    }

    /// The path of a committed blob (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        let hex = parse_digest("digest", digest)?;
        Ok(self.root.join("blobs").join("sha256").join(hex))
    }

    /// The size of a committed blob, or `None` when the file does not exist.
    pub fn size(&self, digest: &str) -> Result<Option<i64>, ContentError> {
        let p = self.blob_path(digest)?;
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len() as i64)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ContentError::io("stat blob", p, e)),
        }
    }

    /// Removes a blob file; a missing file is not an error.
    pub fn remove(&self, digest: &str) -> Result<(), ContentError> {
        let p = self.blob_path(digest)?;
        match fs::remove_file(&p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ContentError::io("remove blob", p, e)),
        }
    }

    /// Every committed blob's digest (files with a valid name only).
    pub fn list(&self) -> Result<Vec<String>, ContentError> {
        let dir = self.root.join("blobs").join("sha256");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ContentError::io("list blobs", &dir, e))? {
            let e = e.map_err(|e| ContentError::io("list blobs", &dir, e))?;
            if let Some(name) = e.file_name().to_str() {
                let d = format!("sha256:{name}");
                if parse_digest("digest", &d).is_ok() {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    fn ingest_dir(&self, namespace: &str, r: &str) -> PathBuf {
        let key = format_digest(&Sha256::digest(format!("{namespace}\n{r}").as_bytes()));
        self.root.join("ingest").join(&key["sha256:".len()..])
    }

    /// Opens the ingest of `(namespace, ref)`: resumes it when it exists (rehashing what was
    /// written), else creates it. `total`/`expected` update the recorded expectations when
    /// set. The caller holds the ref's lock.
    pub fn open_ingest(
        &self,
        namespace: &str,
        r: &str,
        total: i64,
        expected: &str,
        lease: Option<&str>,
    ) -> Result<Ingest, ContentError> {
        let dir = self.ingest_dir(namespace, r);
        let data = dir.join("data");
        let meta_path = dir.join("meta.json");
        let mut meta = match read_meta(&meta_path)? {
            Some(m) => m,
            None => {
                fs::create_dir_all(&dir).map_err(|e| ContentError::io("create ingest", &dir, e))?;
                IngestMeta {
                    namespace: namespace.to_owned(),
                    r#ref: r.to_owned(),
                    expected: String::new(),
                    total: 0,
                    started_at: to_nanos(SystemTime::now()),
                    lease: String::new(),
                }
            }
        };
        if total > 0 {
            meta.total = total;
        }
        if !expected.is_empty() {
            meta.expected = expected.to_owned();
        }
        if let Some(l) = lease {
            meta.lease = l.to_owned();
        }
        write_meta(&meta_path, &meta)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data)
            .map_err(|e| ContentError::io("open ingest data", &data, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut offset = 0i64;
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| ContentError::io("rehash ingest data", &data, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            offset += n as i64;
        }
        let updated_at = fs::metadata(&data)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        Ok(Ingest {
            dir,
            data,
            meta_path,
            file,
            hasher,
            offset,
            meta,
            updated_at,
        })
    }

    /// The status of `(namespace, ref)`'s ingest, if there is one.
    pub fn ingest_status(&self, namespace: &str, r: &str) -> Result<Option<Status>, ContentError> {
        let dir = self.ingest_dir(namespace, r);
        status_of(&dir).map(|o| o.map(|(_, s)| s))
    }

    /// Every ingest: (namespace, status).
    pub fn list_ingests(&self) -> Result<Vec<(String, Status)>, ContentError> {
        let dir = self.root.join("ingest");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ContentError::io("list ingests", &dir, e))? {
            let e = e.map_err(|e| ContentError::io("list ingests", &dir, e))?;
            match status_of(&e.path()) {
                Ok(Some(s)) => out.push(s),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "skipping unreadable ingest"),
            }
        }
        Ok(out)
    }

    /// Every ingest opened under a lease: (namespace, ref, lease).
    pub fn leased_ingests(&self) -> Result<Vec<(String, String, String)>, ContentError> {
        let dir = self.root.join("ingest");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).map_err(|e| ContentError::io("list ingests", &dir, e))? {
            let e = e.map_err(|e| ContentError::io("list ingests", &dir, e))?;
            if let Ok(Some(m)) = read_meta(&e.path().join("meta.json"))
                && !m.lease.is_empty()
            {
                out.push((m.namespace, m.r#ref, m.lease));
            }
        }
        Ok(out)
    }

    /// Removes `(namespace, ref)`'s ingest; returns whether there was one.
    pub fn remove_ingest(&self, namespace: &str, r: &str) -> Result<bool, ContentError> {
        let dir = self.ingest_dir(namespace, r);
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(ContentError::io("remove ingest", dir, e)),
        }
    }
}

fn read_meta(path: &Path) -> Result<Option<IngestMeta>, ContentError> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|source| ContentError::CorruptIngest {
                path: path.to_owned(),
                source,
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ContentError::io("read ingest meta", path, e)),
    }
}

fn write_meta(path: &Path, meta: &IngestMeta) -> Result<(), ContentError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(|source| ContentError::CorruptIngest {
        path: path.to_owned(),
        source,
    })?;
    fs::write(&tmp, bytes).map_err(|e| ContentError::io("write ingest meta", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| ContentError::io("write ingest meta", path, e))
}

fn status_of(dir: &Path) -> Result<Option<(String, Status)>, ContentError> {
    let Some(meta) = read_meta(&dir.join("meta.json"))? else {
        return Ok(None);
    };
    let data = dir.join("data");
    let (offset, updated_at) = match fs::metadata(&data) {
        Ok(m) => (m.len() as i64, m.modified().ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (0, None),
        Err(e) => return Err(ContentError::io("stat ingest data", data, e)),
    };
    let started = from_nanos(meta.started_at);
    Ok(Some((
        meta.namespace,
        Status {
            r#ref: meta.r#ref,
            offset,
            total: meta.total,
            expected: meta.expected,
            started_at: Some(started),
            updated_at: Some(updated_at.unwrap_or(started)),
        },
    )))
}

/// An open ingest (the caller holds its ref's lock).
#[derive(Debug)]
pub struct Ingest {
    dir: PathBuf,
    data: PathBuf,
    meta_path: PathBuf,
    file: File,
    hasher: Sha256,
    offset: i64,
    meta: IngestMeta,
    updated_at: SystemTime,
}

impl Ingest {
    pub fn status(&self) -> Status {
        Status {
            r#ref: self.meta.r#ref.clone(),
            offset: self.offset,
            total: self.meta.total,
            expected: self.meta.expected.clone(),
            started_at: Some(from_nanos(self.meta.started_at)),
            updated_at: Some(self.updated_at),
        }
    }

    /// The digest of the bytes written so far.
    pub fn digest(&self) -> String {
        format_digest(&self.hasher.clone().finalize())
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Appends `data` at the current offset.
    pub fn write(&mut self, data: &[u8]) -> Result<(), ContentError> {
        self.file
            .seek(SeekFrom::Start(self.offset as u64))
            .and_then(|_| self.file.write_all(data))
            .map_err(|e| ContentError::io("write ingest data", &self.data, e))?;
        self.hasher.update(data);
        self.offset += data.len() as i64;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Drops everything written (a write at offset 0 restarts the ingest).
    pub fn truncate(&mut self) -> Result<(), ContentError> {
        self.file
            .set_len(0)
            .map_err(|e| ContentError::io("truncate ingest data", &self.data, e))?;
        self.hasher = Sha256::new();
        self.offset = 0;
        self.updated_at = SystemTime::now();
        Ok(())
    }

    /// Records new expectations (a later message may carry them).
    pub fn expect(&mut self, total: i64, expected: &str) -> Result<(), ContentError> {
        let mut changed = false;
        if total > 0 && total != self.meta.total {
            self.meta.total = total;
            changed = true;
        }
        if !expected.is_empty() && expected != self.meta.expected {
            self.meta.expected = expected.to_owned();
            changed = true;
        }
        if changed {
            write_meta(&self.meta_path, &self.meta)?;
        }
        Ok(())
    }

    /// Checks size (when `size > 0`) and digest (when `expected` is set) of what was
    /// written; returns the digest. Nothing changes on a mismatch.
    pub fn verify(&self, size: i64, expected: &str) -> Result<String, ContentError> {
        if size > 0 && size != self.offset {
            return Err(ContentError::SizeMismatch {
                r#ref: self.meta.r#ref.clone(),
                expected: size,
                actual: self.offset,
            });
        }
        let actual = self.digest();
        if !expected.is_empty() && expected != actual {
            return Err(ContentError::DigestMismatch {
                r#ref: self.meta.r#ref.clone(),
                expected: expected.to_owned(),
                actual,
            });
        }
        Ok(actual)
    }

    /// Moves the verified data to `blobs/` as `digest` (read-only) and removes the ingest.
    /// When the blob exists already, the data is dropped. The caller serializes installs.
    pub fn install(self, blobs: &Blobs, digest: &str) -> Result<(), ContentError> {
        let target = blobs.blob_path(digest)?;
        self.file
            .sync_all()
            .map_err(|e| ContentError::io("sync ingest data", &self.data, e))?;
        drop(self.file);
        if fs::symlink_metadata(&target).is_err() {
            // Read-only, and root's alone: an image config can carry secrets in its env.
            fs::set_permissions(&self.data, fs::Permissions::from_mode(0o400))
                .map_err(|e| ContentError::io("chmod ingest data", &self.data, e))?;
            fs::rename(&self.data, &target).map_err(|e| ContentError::io("commit blob", &target, e))?;
            if let Some(parent) = target.parent()
                && let Ok(d) = File::open(parent)
            {
                let _ = d.sync_all();
            }
        }
        fs::remove_dir_all(&self.dir).map_err(|e| ContentError::io("remove ingest", &self.dir, e))
    }
}
