//! Image records (containerd's `images.Store`): a name → target descriptor map per
//! namespace, in the metadata database.
//!
//! ```text
//! meta.redb (table created by the images service plugin on init)
//! └── images   (<ns>, <name>) → ImageRecord { labels, target { media_type, digest, size,
//!                                 annotations }, created_at, updated_at }
//! ```
//!
//! An image is a garbage-collection root for its target (see `crate::gc`). The name is
//! free-form (a reference such as `docker.io/library/busybox:latest`), non-empty and at
//! most [`MAX_NAME`] bytes. Every mutation is one redb write transaction.

pub mod error;
pub mod hosts;
pub mod oci;
pub mod platform;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;
use prost_types::Timestamp;
use redb::{ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use crate::content::parse_digest;
use crate::errdefs::{ErrorKind, Kind};
use crate::filters;
use crate::identifiers;
use crate::metadata::schema::NAMESPACES;
use crate::metadata::{CountObjects, Db, MetadataError, validate_labels};

/// `(<ns>, <name>) → ImageRecord`.
pub(crate) const IMAGES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("images");

/// The longest image name accepted, in bytes.
pub const MAX_NAME: usize = 4096;

/// An OCI descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    pub annotations: BTreeMap<String, String>,
}

/// An image (containerd's `images.Image`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Image {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub target: Descriptor,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

/// Errors of the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {name:?} not found in namespace {namespace:?}")]
    NotFound { namespace: String, name: String },
    #[error("image {name:?} already exists in namespace {namespace:?}")]
    AlreadyExists { namespace: String, name: String },
    #[error("{field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Filter(#[from] crate::filters::FilterError),
    #[error(transparent)]
    Identifier(#[from] crate::identifiers::InvalidIdentifier),
    #[error("image store: corrupt record {namespace}/{name}: {source}")]
    Corrupt {
        namespace: String,
        name: String,
        source: prost::DecodeError,
    },
    #[error("image store: {op}: {source}")]
    Storage {
        op: &'static str,
        source: Box<redb::Error>,
    },
    #[error("image store: {op} did not complete: {reason}")]
    Interrupted { op: &'static str, reason: String },
}

impl ErrorKind for ImageError {
    fn kind(&self) -> Kind {
        match self {
            ImageError::NotFound { .. } => Kind::NotFound,
            ImageError::AlreadyExists { .. } => Kind::AlreadyExists,
            ImageError::InvalidArgument { .. } | ImageError::Identifier(_) => Kind::InvalidArgument,
            ImageError::Content(e) => e.kind(),
            ImageError::Metadata(e) => e.kind(),
            ImageError::Filter(e) => e.kind(),
            ImageError::Corrupt { .. } => Kind::DataLoss,
            ImageError::Storage { .. } | ImageError::Interrupted { .. } => Kind::Internal,
        }
    }
}

trait Ctx<T> {
    fn ctx(self, op: &'static str) -> Result<T, ImageError>;
}

impl<T, E: Into<redb::Error>> Ctx<T> for Result<T, E> {
    fn ctx(self, op: &'static str) -> Result<T, ImageError> {
        self.map_err(|e| ImageError::Storage {
            op,
            source: Box::new(e.into()),
        })
    }
}

#[derive(Clone, PartialEq, Message)]
struct DescriptorRecord {
    #[prost(string, tag = "1")]
    media_type: String,
    #[prost(string, tag = "2")]
    digest: String,
    #[prost(int64, tag = "3")]
    size: i64,
    #[prost(btree_map = "string, string", tag = "4")]
    annotations: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
struct ImageRecord {
    #[prost(btree_map = "string, string", tag = "1")]
    labels: BTreeMap<String, String>,
    #[prost(message, optional, tag = "2")]
    target: Option<DescriptorRecord>,
    #[prost(message, optional, tag = "3")]
    created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    updated_at: Option<Timestamp>,
}

impl ImageRecord {
    fn from_image(i: &Image) -> Self {
        ImageRecord {
            labels: i.labels.clone(),
            target: Some(DescriptorRecord {
                media_type: i.target.media_type.clone(),
                digest: i.target.digest.clone(),
                size: i.target.size,
                annotations: i.target.annotations.clone(),
            }),
            created_at: i.created_at.map(Timestamp::from),
            updated_at: i.updated_at.map(Timestamp::from),
        }
    }

    fn into_image(self, name: &str) -> Image {
        let t = self.target.unwrap_or_default();
        Image {
            name: name.to_owned(),
            labels: self.labels,
            target: Descriptor {
                media_type: t.media_type,
                digest: t.digest,
                size: t.size,
                annotations: t.annotations,
            },
            created_at: self.created_at.and_then(|t| SystemTime::try_from(t).ok()),
            updated_at: self.updated_at.and_then(|t| SystemTime::try_from(t).ok()),
        }
    }
}

/// Decodes the image row `(ns, name)`.
pub(crate) fn decode(ns: &str, name: &str, bytes: &[u8]) -> Result<Image, ImageError> {
    ImageRecord::decode(bytes)
        .map(|r| r.into_image(name))
        .map_err(|source| ImageError::Corrupt {
            namespace: ns.to_owned(),
            name: name.to_owned(),
            source,
        })
}

/// Filter fields: `name`, `target.digest`, `target.mediatype`, `labels.KEY`,
/// `annotations.KEY` (of the target).
pub struct ImageFields<'a>(pub &'a Image);

impl filters::Adaptor for ImageFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => Some(self.0.name.clone()),
            ["target", "digest"] => Some(self.0.target.digest.clone()),
            ["target", "mediatype" | "media_type"] => Some(self.0.target.media_type.clone()),
            ["labels", _] => filters::label_field(&self.0.labels, path),
            ["annotations", key] => self.0.target.annotations.get(*key).cloned(),
            _ => None,
        }
    }
}

fn validate(image: &Image) -> Result<(), ImageError> {
    if image.name.is_empty() {
        return Err(ImageError::InvalidArgument {
            field: "image.name",
            reason: "must not be empty".into(),
        });
    }
    if image.name.len() > MAX_NAME || image.name.contains(['\0', '\n']) {
        return Err(ImageError::InvalidArgument {
            field: "image.name",
            reason: format!("must be at most {MAX_NAME} bytes without NUL or newline"),
        });
    }
    validate_labels("image.labels", &image.labels)?;
    if image.target.media_type.is_empty() {
        return Err(ImageError::InvalidArgument {
            field: "image.target.media_type",
            reason: "must be set".into(),
        });
    }
    parse_digest("image.target.digest", &image.target.digest)?;
    if image.target.size < 0 {
        return Err(ImageError::InvalidArgument {
            field: "image.target.size",
            reason: "must not be negative".into(),
        });
    }
    Ok(())
}

fn drop_empty(labels: &mut BTreeMap<String, String>) {
    labels.retain(|_, v| !v.is_empty());
}

fn not_found(ns: &str, name: &str) -> ImageError {
    ImageError::NotFound {
        namespace: ns.to_owned(),
        name: name.to_owned(),
    }
}

/// The image store over the metadata database.
pub struct Store {
    db: Arc<Db>,
}

/// Creates the images table if needed (the store and the garbage collector both read it).
pub fn create_table(db: &Db) -> Result<(), ImageError> {
    let tx = db.database().begin_write().ctx("create images table")?;
    tx.open_table(IMAGES).ctx("create images table")?;
    tx.commit().ctx("create images table")
}

impl Store {
    /// Creates the table (idempotent) and registers the namespace check.
    pub fn open(db: Arc<Db>) -> Result<Store, ImageError> {
        create_table(&db)?;
        db.register_namespace_check(Arc::new(CountObjects::new(IMAGES, "image", "images")));
        Ok(Store { db })
    }

    fn write<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&WriteTransaction) -> Result<T, ImageError>,
    ) -> Result<T, ImageError> {
        crate::metadata::write_tx(self.db.database(), op, f, |op, e| ImageError::Storage {
            op,
            source: Box::new(e),
        })
    }

    pub fn get(&self, namespace: &str, name: &str) -> Result<Image, ImageError> {
        identifiers::validate("namespace", namespace)?;
        let op = "get image";
        let tx = self.db.database().begin_read().ctx(op)?;
        let t = tx.open_table(IMAGES).ctx(op)?;
        let v = t
            .get((namespace, name))
            .ctx(op)?
            .ok_or_else(|| not_found(namespace, name))?;
        decode(namespace, name, v.value())
    }

    pub fn list(&self, namespace: &str, filters: &[String]) -> Result<Vec<Image>, ImageError> {
        identifiers::validate("namespace", namespace)?;
        let filter = filters::parse(filters)?;
        let op = "list images";
        let tx = self.db.database().begin_read().ctx(op)?;
        let t = tx.open_table(IMAGES).ctx(op)?;
        let mut out = Vec::new();
        for entry in t.range::<(&str, &str)>((namespace, "")..).ctx(op)? {
            let (k, v) = entry.ctx(op)?;
            let (ns, name) = k.value();
            if ns != namespace {
                break;
            }
            let img = decode(ns, name, v.value())?;
            if filter.matches(&ImageFields(&img)) {
                out.push(img);
            }
        }
        Ok(out)
    }

    pub fn create(&self, namespace: &str, mut image: Image) -> Result<Image, ImageError> {
        identifiers::validate("namespace", namespace)?;
        drop_empty(&mut image.labels);
        validate(&image)?;
        let op = "create image";
        self.write(op, |tx| {
            let mut t = tx.open_table(IMAGES).ctx(op)?;
            if t.get((namespace, image.name.as_str())).ctx(op)?.is_some() {
                return Err(ImageError::AlreadyExists {
                    namespace: namespace.to_owned(),
                    name: image.name.clone(),
                });
            }
            let now = SystemTime::now();
            image.created_at = Some(now);
            image.updated_at = Some(now);
            t.insert(
                (namespace, image.name.as_str()),
                ImageRecord::from_image(&image).encode_to_vec().as_slice(),
            )
            .ctx(op)?;
            drop(t);
            let mut ns = tx.open_table(NAMESPACES).ctx(op)?;
            if ns.get(namespace).ctx(op)?.is_none() {
                ns.insert(namespace, [].as_slice()).ctx(op)?;
            }
            Ok(image)
        })
    }

    /// `fieldpaths` empty = replace labels and target; else `labels`, `labels.KEY`,
    /// `target`, `annotations`, `annotations.KEY` (of the target).
    pub fn update(&self, namespace: &str, image: Image, fieldpaths: &[String]) -> Result<Image, ImageError> {
        identifiers::validate("namespace", namespace)?;
        if image.name.is_empty() {
            return Err(ImageError::InvalidArgument {
                field: "image.name",
                reason: "must not be empty".into(),
            });
        }
        let op = "update image";
        self.write(op, |tx| {
            let mut t = tx.open_table(IMAGES).ctx(op)?;
            let mut updated = {
                let v = t
                    .get((namespace, image.name.as_str()))
                    .ctx(op)?
                    .ok_or_else(|| not_found(namespace, &image.name))?;
                decode(namespace, &image.name, v.value())?
            };
            if fieldpaths.is_empty() {
                updated.labels = image.labels.clone();
                updated.target = image.target.clone();
            }
            for p in fieldpaths {
                if let Some(key) = p.strip_prefix("labels.") {
                    crate::metadata::apply_key(&mut updated.labels, &image.labels, key);
                } else if let Some(key) = p.strip_prefix("annotations.") {
                    match image.target.annotations.get(key) {
                        Some(v) => {
                            updated.target.annotations.insert(key.to_owned(), v.clone());
                        }
                        None => {
                            updated.target.annotations.remove(key);
                        }
                    }
                } else {
                    match p.as_str() {
                        "labels" => updated.labels = image.labels.clone(),
                        "target" => updated.target = image.target.clone(),
                        "annotations" => updated.target.annotations = image.target.annotations.clone(),
                        other => {
                            return Err(ImageError::InvalidArgument {
                                field: "update_mask",
                                reason: format!("cannot update field {other:?} of image {:?}", image.name),
                            });
                        }
                    }
                }
            }
            drop_empty(&mut updated.labels);
            validate(&updated)?;
            updated.updated_at = Some(SystemTime::now());
            t.insert(
                (namespace, updated.name.as_str()),
                ImageRecord::from_image(&updated).encode_to_vec().as_slice(),
            )
            .ctx(op)?;
            Ok(updated)
        })
    }

    /// Deletes `name`; with `target`, only when the image still points at that digest
    /// (NotFound otherwise, as containerd).
    pub fn delete(&self, namespace: &str, name: &str, target: Option<&str>) -> Result<(), ImageError> {
        identifiers::validate("namespace", namespace)?;
        let op = "delete image";
        self.write(op, |tx| {
            let mut t = tx.open_table(IMAGES).ctx(op)?;
            let existing = {
                let v = t
                    .get((namespace, name))
                    .ctx(op)?
                    .ok_or_else(|| not_found(namespace, name))?;
                decode(namespace, name, v.value())?
            };
            if let Some(d) = target
                && d != existing.target.digest
            {
                return Err(not_found(namespace, name));
            }
            t.remove((namespace, name)).ctx(op)?;
            Ok(())
        })
    }
}

crate::blocking::interrupted!(ImageError);

/// Runs a blocking image store call on tokio's blocking pool.
pub use crate::blocking::try_run as blocking;
