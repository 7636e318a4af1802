//! Checkpoints in the content store, as containerd 1.6's `services/tasks/local.go`:
//!
//! - Checkpoint: the shim CRIU-dumps the task into a fresh image dir
//!   (`<tasks root>/checkpoint/dump-<uuid>`), the dir is tarred into the content store as
//!   [`MEDIA_TYPE_CHECKPOINT`] (ingest ref = the dir's path), the container's spec (the
//!   protobuf `Any`) as [`MEDIA_TYPE_CHECKPOINT_CONFIG`] (ref `<dir>/spec`); both under the
//!   request's lease. The dir is removed afterwards, whatever happened.
//! - Create with a checkpoint descriptor: only [`MEDIA_TYPE_CHECKPOINT`] is accepted
//!   (`unsupported checkpoint type`); the blob is unpacked with the hardened layer applier
//!   (no path escapes, no symlink or hardlink tricks, no device nodes, size limits) into
//!   `<tasks root>/restore/<ns>/<id>/<uuid>`, which becomes the shim's `checkpoint` path.
//!   The shim reads it at Start (`runc restore`), so it stays until the task is deleted (or
//!   its create fails).
//! - runc's own paths win, as in containerd: `CheckpointOptions.image_path` dumps there and
//!   stores nothing; `Options.criu_image_path` restores from there.
//!
//! A CRIU failure is the shim's error plus the `Error` lines of the CRIU log it names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use prost::Message;
use sha2::Digest;

use super::{Descriptor, Result, TasksError};
use crate::content::{ContentError, Store};
use crate::errdefs::{ErrorKind, Kind};
use crate::runtime::RuntimeError;

/// The CRIU image dir as a tar (containerd's `images.MediaTypeContainerd1Checkpoint`).
pub const MEDIA_TYPE_CHECKPOINT: &str = "application/vnd.containerd.container.criu.checkpoint.criu.tar";
/// The container spec, a protobuf `Any` (`images.MediaTypeContainerd1CheckpointConfig`).
pub const MEDIA_TYPE_CHECKPOINT_CONFIG: &str =
    "application/vnd.containerd.container.checkpoint.config.v1+proto";

const RUNC_OPTIONS: &str = "containerd.runc.v1.Options";
const RUNC_CHECKPOINT_OPTIONS: &str = "containerd.runc.v1.CheckpointOptions";

/// Where checkpoints are staged, and the content store they go to.
#[derive(Clone)]
pub struct Checkpoints {
    content: Arc<Store>,
    /// The tasks service's root: `checkpoint/` and `restore/` below it.
    root: PathBuf,
}

fn io_err(op: &'static str, path: &Path, source: std::io::Error) -> TasksError {
    TasksError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Removes a staging dir on drop (CRIU images hold plain files: nothing is mounted there).
struct Staged(PathBuf);

impl Drop for Staged {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.0.display(), error = %e, "remove checkpoint staging dir");
        }
    }
}

/// A dump dir (removed on drop).
pub struct DumpDir(Staged);

impl DumpDir {
    pub fn path(&self) -> &Path {
        &self.0.0
    }
}

impl Checkpoints {
    pub fn new(content: Arc<Store>, root: PathBuf) -> Checkpoints {
        Checkpoints { content, root }
    }

    fn dump_root(&self) -> PathBuf {
        self.root.join("checkpoint")
    }

    /// `restore/<ns>/<id>`: every restore dir of one task.
    pub fn restore_dir(&self, ns: &str, id: &str) -> PathBuf {
        self.root.join("restore").join(ns).join(id)
    }

    /// Removes what a previous run left: every dump dir, and the restore dirs of tasks
    /// `alive` does not name.
    pub fn clean_stale(&self, alive: impl Fn(&str, &str) -> bool) {
        let _ = std::fs::remove_dir_all(self.dump_root());
        let Ok(namespaces) = std::fs::read_dir(self.root.join("restore")) else {
            return;
        };
        for ns in namespaces.flatten() {
            let Ok(ids) = std::fs::read_dir(ns.path()) else {
                continue;
            };
            let ns_name = ns.file_name().to_string_lossy().into_owned();
            for id in ids.flatten() {
                if !alive(&ns_name, &id.file_name().to_string_lossy()) {
                    drop(Staged(id.path()));
                }
            }
            let _ = std::fs::remove_dir(ns.path());
        }
    }

    /// Removes the restore dirs of task `ns/id` (after its delete).
    pub fn remove_restored(&self, ns: &str, id: &str) {
        let dir = self.restore_dir(ns, id);
        if dir.exists() {
            drop(Staged(dir));
            let _ = std::fs::remove_dir(self.root.join("restore").join(ns));
        }
    }

    /// A fresh, empty dump dir for the shim, removed when it drops.
    pub fn dump_dir(&self) -> Result<DumpDir> {
        let root = self.dump_root();
        std::fs::create_dir_all(&root).map_err(|e| io_err("create", &root, e))?;
        let dir = root.join(format!("dump-{}", uuid::Uuid::new_v4().simple()));
        mkdir_private(&dir)?;
        Ok(DumpDir(Staged(dir)))
    }

    /// Stores the CRIU image in `dir` and `spec` in namespace `ns` under `lease`; returns
    /// their descriptors (image first, as containerd).
    pub async fn store(
        &self,
        ns: &str,
        spec: Option<&prost_types::Any>,
        lease: Option<&str>,
        dir: &DumpDir,
    ) -> Result<Vec<Descriptor>> {
        let spec = spec.map(Message::encode_to_vec).unwrap_or_default();
        let (store, ns, lease) = (self.content.clone(), ns.to_owned(), lease.map(str::to_owned));
        let dir = dir.path().to_owned();
        let run = move || -> Result<Vec<Descriptor>> {
            let image_ref = dir.to_string_lossy().into_owned();
            let image = write_content(
                &store,
                &ns,
                &image_ref,
                lease.as_deref(),
                MEDIA_TYPE_CHECKPOINT,
                |w| tar_dir(&dir, w),
            )?;
            let spec_ref = dir.join("spec").to_string_lossy().into_owned();
            let spec = write_content(
                &store,
                &ns,
                &spec_ref,
                lease.as_deref(),
                MEDIA_TYPE_CHECKPOINT_CONFIG,
                |w| w.write_all(&spec),
            )?;
            Ok(vec![image, spec])
        };
        crate::blocking::try_run("write checkpoint", run).await
    }

    /// Unpacks checkpoint `desc` of namespace `ns` into a new restore dir of task `id`;
    /// returns the dir.
    pub async fn unpack(&self, ns: &str, id: &str, desc: &Descriptor) -> Result<PathBuf> {
        check_media_type(&desc.media_type)?;
        let (path, _) = self.content.blob(ns, &desc.digest)?;
        let parent = self.restore_dir(ns, id);
        std::fs::create_dir_all(&parent).map_err(|e| io_err("create", &parent, e))?;
        let dir = parent.join(uuid::Uuid::new_v4().simple().to_string());
        mkdir_private(&dir)?;
        let digest = desc.digest.clone();
        let target = dir.clone();
        let applied = crate::blocking::run("unpack checkpoint", move || -> Result<()> {
            let file = std::fs::File::open(&path).map_err(|e| io_err("open", &path, e))?;
            crate::diff::apply_layer(
                std::io::BufReader::new(file),
                "application/vnd.oci.image.layer.v1.tar",
                &target,
                &crate::diff::ApplyOptions::default(),
            )
            .map_err(|source| TasksError::CheckpointArchive { digest, source })?;
            Ok(())
        })
        .await;
        match applied.and_then(|r| r) {
            Ok(()) => Ok(dir),
            Err(e) => {
                self.discard(ns, id, &dir);
                Err(e)
            }
        }
    }

    /// Removes one restore dir (its create failed).
    pub fn discard(&self, ns: &str, id: &str, dir: &Path) {
        drop(Staged(dir.to_owned()));
        let _ = std::fs::remove_dir(self.restore_dir(ns, id));
        let _ = std::fs::remove_dir(self.root.join("restore").join(ns));
    }
}

fn mkdir_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err("create", dir, e))
}

/// containerd's check in Create.
pub fn check_media_type(media_type: &str) -> Result<()> {
    if media_type == MEDIA_TYPE_CHECKPOINT {
        Ok(())
    } else {
        Err(TasksError::UnsupportedCheckpoint {
            media_type: media_type.to_owned(),
        })
    }
}

/// `CheckpointOptions.image_path` of runc checkpoint options (containerd's
/// `getCheckpointPath`): the caller's own image dir, nothing goes to the content store.
pub fn checkpoint_path(options: Option<&prost_types::Any>) -> Result<String> {
    match options {
        Some(o) if o.type_url.ends_with(RUNC_CHECKPOINT_OPTIONS) => {
            let opts =
                taskd_proto::containerd::types::runc::options::CheckpointOptions::decode(o.value.as_slice())
                    .map_err(|e| TasksError::InvalidArgument {
                        field: "options",
                        reason: format!("decode {RUNC_CHECKPOINT_OPTIONS}: {e}"),
                    })?;
            Ok(opts.image_path)
        }
        _ => Ok(String::new()),
    }
}

/// `Options.criu_image_path` of runc task options (containerd's `getRestorePath`).
pub fn restore_path(options: Option<&prost_types::Any>) -> Result<String> {
    match options {
        Some(o) if o.type_url.ends_with(RUNC_OPTIONS) => {
            let opts = taskd_proto::containerd::types::runc::options::Options::decode(o.value.as_slice())
                .map_err(|e| TasksError::InvalidArgument {
                    field: "options",
                    reason: format!("decode {RUNC_OPTIONS}: {e}"),
                })?;
            Ok(opts.criu_image_path)
        }
        _ => Ok(String::new()),
    }
}

/// A `Write` into a content writer that hashes and counts what passes.
struct ContentSink<'a> {
    w: &'a mut crate::content::Writer,
    hash: sha2::Sha256,
    size: i64,
}

impl Write for ContentSink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf).map_err(std::io::Error::other)?;
        self.hash.update(buf);
        self.size += buf.len() as i64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// containerd's `writeContent`: writes what `fill` produces under `reference` and commits
/// it. Content the namespace holds already is kept (and leased).
fn write_content(
    store: &Arc<Store>,
    ns: &str,
    reference: &str,
    lease: Option<&str>,
    media_type: &str,
    fill: impl FnOnce(&mut ContentSink<'_>) -> std::io::Result<()>,
) -> Result<Descriptor> {
    let mut w = store.writer(ns, reference, 0, "", lease)?;
    // A stale ingest of the same ref starts over.
    w.truncate()?;
    let mut sink = ContentSink {
        w: &mut w,
        hash: sha2::Sha256::new(),
        size: 0,
    };
    if let Err(e) = fill(&mut sink) {
        drop(w);
        let _ = store.abort(ns, reference);
        return Err(io_err("write checkpoint content", Path::new(reference), e));
    }
    let (digest, size) = (format!("sha256:{:x}", sink.hash.finalize_reset()), sink.size);
    match w.commit(size, &digest, Default::default()) {
        Ok(_) => {}
        Err(ContentError::AlreadyExists { .. }) => {
            store.adopt(ns, &digest, size, lease)?;
        }
        Err(e) => {
            let _ = store.abort(ns, reference);
            return Err(e.into());
        }
    }
    Ok(Descriptor {
        media_type: media_type.to_owned(),
        digest,
        size,
        annotations: Default::default(),
    })
}

/// The dir as a tar (containerd's `archive.Diff("", dir)`): relative names, symlinks kept
/// as symlinks.
fn tar_dir(dir: &Path, out: &mut impl Write) -> std::io::Result<()> {
    let mut b = tar::Builder::new(out);
    b.follow_symlinks(false);
    b.mode(tar::HeaderMode::Complete);
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(dir.join(&rel))?.collect::<std::io::Result<Vec<_>>>()?;
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let name = rel.join(e.file_name());
            b.append_path_with_name(e.path(), &name)?;
            if e.file_type()?.is_dir() {
                stack.push(name);
            }
        }
    }
    b.finish()
}

/// The `Error` lines of the CRIU log a shim/runc error names (`path= FILE` from the shim's
/// checkpoint, `log file: FILE` from runc), joined; empty when there is none.
pub fn criu_log_errors(message: &str) -> String {
    let file = ["path= ", "log file: "].iter().find_map(|key| {
        let at = message.find(key)? + key.len();
        let rest = &message[at..];
        let end = rest
            .find(|c: char| c.is_whitespace() || c == '"')
            .unwrap_or(rest.len());
        Some(rest[..end].trim_end_matches(['.', ',', ')', ':', ';']).to_owned())
    });
    let Some(file) = file.filter(|f| f.starts_with('/')) else {
        return String::new();
    };
    let Ok(text) = std::fs::read_to_string(&file) else {
        return String::new();
    };
    text.lines()
        .filter(|l| l.contains("Error ("))
        .map(|l| {
            // drop CRIU's "(00.012345) " timestamp
            l.trim_start()
                .strip_prefix('(')
                .and_then(|r| r.split_once(") "))
                .map_or(l, |(_, rest)| rest)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A CRIU failure as a task error: the shim's message plus the CRIU log's `Error` lines.
pub fn criu_failure(id: &str, op: &'static str, source: RuntimeError) -> TasksError {
    let criu = criu_log_errors(&source.to_string());
    TasksError::Criu {
        id: id.to_owned(),
        op,
        source: Box::new(source),
        criu: if criu.is_empty() {
            criu
        } else {
            format!("; CRIU: {criu}")
        },
    }
}

/// The kind of a CRIU failure: the shim says Unknown; this host cannot checkpoint.
pub fn criu_kind(source: &RuntimeError) -> Kind {
    match source.kind() {
        Kind::Unknown => Kind::FailedPrecondition,
        k => k,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_is_checked() {
        assert!(check_media_type(MEDIA_TYPE_CHECKPOINT).is_ok());
        let e = check_media_type("application/vnd.oci.image.layer.v1.tar").unwrap_err();
        assert_eq!(
            e.to_string(),
            "unsupported checkpoint type \"application/vnd.oci.image.layer.v1.tar\""
        );
        assert_eq!(e.kind(), Kind::InvalidArgument);
    }

    #[test]
    fn criu_errors_are_read_from_the_named_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("criu-dump.log");
        std::fs::write(
            &log,
            "(00.01) Version: 3.17.1\n(00.02) Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds\n(00.03) Error (criu/kerndat.c:1615): kerndat failed\n",
        )
        .unwrap();
        let msg = format!(
            "runc did not terminate successfully: exit status 1: criu failed: type DUMP errno 0 path= {}: unknown",
            log.display()
        );
        assert_eq!(
            criu_log_errors(&msg),
            "Error (criu/vdso.c:381): vdso: Unexpected rt vDSO area bounds; Error (criu/kerndat.c:1615): kerndat failed"
        );
        let msg = format!("criu failed: type RESTORE errno 0\nlog file: {}", log.display());
        assert!(criu_log_errors(&msg).starts_with("Error (criu/vdso.c:381)"));
        assert_eq!(criu_log_errors("no log here"), "");
    }

    #[test]
    fn runc_paths_are_read_from_options() {
        let o = taskd_proto::containerd::types::runc::options::CheckpointOptions {
            image_path: "/x".into(),
            ..Default::default()
        };
        let any = prost_types::Any {
            type_url: format!("containerd.runc.v1.{}", "CheckpointOptions"),
            value: o.encode_to_vec(),
        };
        assert_eq!(checkpoint_path(Some(&any)).unwrap(), "/x");
        assert_eq!(restore_path(Some(&any)).unwrap(), "");
        assert_eq!(checkpoint_path(None).unwrap(), "");
    }

    /// The content half without CRIU: a dump dir (as CRIU would leave it) goes into the
    /// content store under the lease, twice (the second time the blobs exist already), and
    /// comes back out through `unpack`; the staging dirs go.
    #[tokio::test]
    async fn store_and_unpack_round_trip() {
        use crate::metadata::{Db, LeaseManager};
        let d = tempfile::tempdir().unwrap();
        let db = Arc::new(Db::open(&d.path().join("meta.redb")).unwrap());
        let content = Store::open(db.clone(), &d.path().join("content")).unwrap();
        let cp = Checkpoints::new(content.clone(), d.path().join("tasks"));
        db.create("ns", "l1", Default::default()).unwrap();
        let spec = prost_types::Any {
            type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
            value: br#"{"ociVersion":"1.0.2"}"#.to_vec(),
        };
        let mut first = None;
        for _ in 0..2 {
            let dir = cp.dump_dir().unwrap();
            std::fs::write(dir.path().join("inventory.img"), b"criu image").unwrap();
            std::fs::write(dir.path().join("pages-1.img"), vec![7u8; 100_000]).unwrap();
            let descs = cp.store("ns", Some(&spec), Some("l1"), &dir).await.unwrap();
            let path = dir.path().to_owned();
            drop(dir);
            assert!(!path.exists());
            assert_eq!(descs.len(), 2);
            assert_eq!(descs[0].media_type, MEDIA_TYPE_CHECKPOINT);
            assert_eq!(descs[1].media_type, MEDIA_TYPE_CHECKPOINT_CONFIG);
            let stored = content.read_all("ns", &descs[1].digest).unwrap();
            assert_eq!(prost_types::Any::decode(stored.as_slice()).unwrap(), spec);
            assert_eq!(content.info("ns", &descs[0].digest).unwrap().size, descs[0].size);
            if let Some(first) = &first {
                assert_eq!(first, &descs, "same image, same blobs");
            }
            first = Some(descs);
        }
        let descs = first.unwrap();
        let leased: Vec<String> = db
            .list_resources("ns", "l1")
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect();
        for desc in &descs {
            assert!(leased.contains(&desc.digest), "{leased:?}");
        }
        assert!(
            content.list_statuses("ns", &[]).unwrap().is_empty(),
            "no ingest left"
        );

        let restored = cp.unpack("ns", "t1", &descs[0]).await.unwrap();
        assert!(restored.starts_with(cp.restore_dir("ns", "t1")));
        assert_eq!(
            std::fs::read(restored.join("inventory.img")).unwrap(),
            b"criu image"
        );
        assert_eq!(
            std::fs::read(restored.join("pages-1.img")).unwrap().len(),
            100_000
        );
        // the spec is no CRIU image
        let err = cp.unpack("ns", "t1", &descs[1]).await.unwrap_err();
        assert_eq!(err.kind(), Kind::InvalidArgument);
        cp.remove_restored("ns", "t1");
        assert!(!cp.restore_dir("ns", "t1").exists());
        cp.clean_stale(|_, _| false);
        assert!(!d.path().join("tasks/checkpoint").exists());
    }

    #[test]
    fn tar_dir_holds_relative_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("inventory.img"), b"x").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/f"), b"y").unwrap();
        let mut out = Vec::new();
        tar_dir(d.path(), &mut out).unwrap();
        let mut a = tar::Archive::new(out.as_slice());
        let names: Vec<String> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["inventory.img", "sub", "sub/f"]);
    }
}
