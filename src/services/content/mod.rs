//! The content service (`containerd.services.content.v1.Content`): [`Local`] over the
//! content [`Store`], and the thin gRPC adapter in `grpc.rs`.
//!
//! Write is a session ([`WriteSession`]), one per client stream, following containerd's
//! `contentserver.Write`: the first message names the ref (and may give the expected size
//! and digest); every message is answered with the writer's offset.
//!
//! ```text
//!   STAT   → offset, total, digest so far, started/updated
//!   WRITE  → data appended at `offset` (offset 0 on a non-empty ingest restarts it;
//!            any other offset must equal the current one, else OutOfRange)
//!   COMMIT → WRITE, then size/digest verified and the blob made visible
//!   a message whose `expected` is committed already → AlreadyExists (the ingest is dropped)
//! ```
//!
//! Delete publishes `/content/delete`.

pub mod grpc;
pub mod plugin;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::Stream;
use taskd_proto::containerd::events::ContentDelete;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::content::{self, ContentError, Info, Status, Store, Writer};
use crate::events::{Publisher, topics};

/// Read chunk size (containerd's content server uses 1 MiB buffers).
pub const READ_CHUNK: usize = 1 << 20;

/// A stream of `(offset, bytes)` chunks of one blob.
pub type ReadStream = Pin<Box<dyn Stream<Item = Result<(i64, Vec<u8>), ContentError>> + Send>>;

/// What a write message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WriteAction {
    #[default]
    Stat,
    Write,
    Commit,
}

/// One message of a write session.
#[derive(Debug, Clone, Default)]
pub struct WriteRequest {
    pub action: WriteAction,
    pub r#ref: String,
    pub total: i64,
    pub expected: String,
    pub offset: i64,
    pub data: Vec<u8>,
    pub labels: BTreeMap<String, String>,
}

/// The answer to one write message.
#[derive(Debug, Clone, Default)]
pub struct WriteResponse {
    pub action: WriteAction,
    pub started_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub offset: i64,
    pub total: i64,
    pub digest: String,
}

/// The content service, in process.
#[async_trait]
pub trait Content: Send + Sync {
    async fn info(&self, namespace: &str, digest: &str) -> Result<Info, ContentError>;
    async fn update(
        &self,
        namespace: &str,
        info: Info,
        fieldpaths: Vec<String>,
    ) -> Result<Info, ContentError>;
    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Info>, ContentError>;
    async fn delete(&self, namespace: &str, digest: &str) -> Result<(), ContentError>;
    /// `offset <= 0` = from the start; `size <= 0` = to the end.
    async fn read(
        &self,
        namespace: &str,
        digest: &str,
        offset: i64,
        size: i64,
    ) -> Result<ReadStream, ContentError>;
    async fn status(&self, namespace: &str, r#ref: &str) -> Result<Status, ContentError>;
    async fn list_statuses(&self, namespace: &str, filters: Vec<String>)
    -> Result<Vec<Status>, ContentError>;
    async fn abort(&self, namespace: &str, r#ref: &str) -> Result<(), ContentError>;
    /// Starts a write session from its first message (which must name the ref).
    async fn write(
        &self,
        namespace: &str,
        lease: Option<String>,
        first: &WriteRequest,
    ) -> Result<WriteSession, ContentError>;
}

/// [`Content`] over the [`Store`].
pub struct Local {
    store: Arc<Store>,
    publisher: Arc<dyn Publisher>,
}

impl Local {
    pub fn new(store: Arc<Store>, publisher: Arc<dyn Publisher>) -> Self {
        Local { store, publisher }
    }
}

#[async_trait]
impl Content for Local {
    async fn info(&self, namespace: &str, digest: &str) -> Result<Info, ContentError> {
        let (s, ns, d) = (self.store.clone(), namespace.to_owned(), digest.to_owned());
        content::blocking("content info", move || s.info(&ns, &d)).await
    }

    async fn update(
        &self,
        namespace: &str,
        info: Info,
        fieldpaths: Vec<String>,
    ) -> Result<Info, ContentError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        content::blocking("content update", move || s.update(&ns, info, &fieldpaths)).await
    }

    async fn list(&self, namespace: &str, filters: Vec<String>) -> Result<Vec<Info>, ContentError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        content::blocking("content list", move || s.list(&ns, &filters)).await
    }

    async fn delete(&self, namespace: &str, digest: &str) -> Result<(), ContentError> {
        let (s, ns, d) = (self.store.clone(), namespace.to_owned(), digest.to_owned());
        content::blocking("content delete", move || s.delete(&ns, &d)).await?;
        let ev = ContentDelete {
            digest: digest.to_owned(),
        };
        self.publisher
            .publish_logged(namespace, topics::CONTENT_DELETE, &ev);
        Ok(())
    }

    async fn read(
        &self,
        namespace: &str,
        digest: &str,
        offset: i64,
        size: i64,
    ) -> Result<ReadStream, ContentError> {
        let (s, ns, d) = (self.store.clone(), namespace.to_owned(), digest.to_owned());
        let (path, blob_size) = content::blocking("content read", move || s.blob(&ns, &d)).await?;
        let offset = offset.max(0);
        if offset > blob_size {
            return Err(ContentError::ReadOutOfRange {
                digest: digest.to_owned(),
                offset,
                size: blob_size,
            });
        }
        let end = if size > 0 {
            (offset.saturating_add(size)).min(blob_size)
        } else {
            blob_size
        };
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| ContentError::io("open blob", &path, e))?;
        file.seek(std::io::SeekFrom::Start(offset as u64))
            .await
            .map_err(|e| ContentError::io("seek blob", &path, e))?;
        let stream =
            futures::stream::try_unfold((file, offset, path), move |(mut file, pos, path)| async move {
                if pos >= end {
                    return Ok(None);
                }
                let want = ((end - pos) as usize).min(READ_CHUNK);
                let mut buf = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    let n = file
                        .read(&mut buf[got..])
                        .await
                        .map_err(|e| ContentError::io("read blob", &path, e))?;
                    if n == 0 {
                        break;
                    }
                    got += n;
                }
                if got == 0 {
                    return Ok(None);
                }
                buf.truncate(got);
                Ok(Some(((pos, buf), (file, pos + got as i64, path))))
            });
        Ok(Box::pin(stream))
    }

    async fn status(&self, namespace: &str, r: &str) -> Result<Status, ContentError> {
        let (s, ns, r) = (self.store.clone(), namespace.to_owned(), r.to_owned());
        content::blocking("content status", move || s.status(&ns, &r)).await
    }

    async fn list_statuses(
        &self,
        namespace: &str,
        filters: Vec<String>,
    ) -> Result<Vec<Status>, ContentError> {
        let (s, ns) = (self.store.clone(), namespace.to_owned());
        content::blocking("content list statuses", move || s.list_statuses(&ns, &filters)).await
    }

    async fn abort(&self, namespace: &str, r: &str) -> Result<(), ContentError> {
        let (s, ns, r) = (self.store.clone(), namespace.to_owned(), r.to_owned());
        content::blocking("content abort", move || s.abort(&ns, &r)).await
    }

    async fn write(
        &self,
        namespace: &str,
        lease: Option<String>,
        first: &WriteRequest,
    ) -> Result<WriteSession, ContentError> {
        if first.r#ref.is_empty() {
            return Err(ContentError::InvalidArgument {
                field: "ref",
                reason: "first message must have a reference".into(),
            });
        }
        let (s, ns, r, total, expected) = (
            self.store.clone(),
            namespace.to_owned(),
            first.r#ref.clone(),
            first.total,
            first.expected.clone(),
        );
        let writer = content::blocking("content write", move || {
            s.writer(&ns, &r, total, &expected, lease.as_deref())
        })
        .await?;
        Ok(WriteSession {
            store: self.store.clone(),
            namespace: namespace.to_owned(),
            writer: Some(writer),
            total: first.total,
            expected: first.expected.clone(),
        })
    }
}

/// One client's write stream (holds the ref's lock until dropped).
pub struct WriteSession {
    store: Arc<Store>,
    namespace: String,
    writer: Option<Writer>,
    total: i64,
    expected: String,
}

impl WriteSession {
    /// Handles one message; an error ends the session.
    pub async fn handle(&mut self, req: WriteRequest) -> Result<WriteResponse, ContentError> {
        let writer = self.writer.take().ok_or_else(|| ContentError::InvalidArgument {
            field: "action",
            reason: "the write session has ended".into(),
        })?;
        let store = self.store.clone();
        let ns = self.namespace.clone();
        let (total, expected) = (self.total, self.expected.clone());
        let (writer, result) = crate::blocking::run::<_, ContentError>("content write", move || {
            let mut w = writer;
            let r = step(&store, &ns, &mut w, req, total, expected);
            (w, r)
        })
        .await?;
        let (resp, total, expected) = result?;
        self.total = total;
        self.expected = expected;
        self.writer = Some(writer);
        Ok(resp)
    }
}

/// containerd's `contentserver.Write` loop body, blocking.
fn step(
    store: &Store,
    ns: &str,
    w: &mut Writer,
    req: WriteRequest,
    mut total: i64,
    mut expected: String,
) -> Result<(WriteResponse, i64, String), ContentError> {
    let ws = w.status();
    let mut msg = WriteResponse {
        action: req.action,
        offset: ws.offset,
        ..Default::default()
    };
    if !req.expected.is_empty() {
        content::parse_digest("expected", &req.expected)?;
        expected = req.expected.clone();
        if store.info(ns, &req.expected).is_ok() {
            let r = w.r#ref().to_owned();
            if let Err(error) = store.blobs().remove_ingest(ns, &r) {
                tracing::warn!(%error, r#ref = %r, "remove ingest of existing content");
            }
            return Err(ContentError::AlreadyExists {
                namespace: ns.to_owned(),
                digest: req.expected,
            });
        }
    }
    if req.total > 0 {
        total = req.total;
    }
    w.expect(req.total, &req.expected)?;
    match req.action {
        WriteAction::Stat => {
            msg.digest = w.digest();
            msg.started_at = ws.started_at;
            msg.updated_at = ws.updated_at;
            msg.total = total;
        }
        WriteAction::Write | WriteAction::Commit => {
            if req.offset < 0 || (req.offset > 0 && req.offset != ws.offset) {
                return Err(ContentError::OffsetMismatch {
                    r#ref: w.r#ref().to_owned(),
                    offset: req.offset,
                    current: ws.offset,
                });
            }
            if req.offset == 0 && ws.offset > 0 {
                w.truncate()?;
                msg.offset = 0;
            }
            if !req.data.is_empty() {
                w.write(&req.data)?;
                msg.offset += req.data.len() as i64;
            }
            if req.action == WriteAction::Commit {
                w.commit(total, &expected, req.labels)?;
                let st = w.status();
                msg.started_at = ws.started_at;
                msg.updated_at = Some(SystemTime::now());
                msg.total = st.total;
                msg.offset = st.total;
            }
            msg.digest = w.digest();
        }
    }
    Ok((msg, total, expected))
}
