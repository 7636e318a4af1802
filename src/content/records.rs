//! On-disk record of a blob in one namespace (prost message, explicit tags; tags are never
//! reused, new fields get new tags).

use std::collections::BTreeMap;
use std::time::SystemTime;

use prost::Message;
use prost_types::Timestamp;

use super::error::ContentError;
use super::model::Info;

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ContentRecord {
    #[prost(int64, tag = "1")]
    pub size: i64,
    #[prost(message, optional, tag = "2")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "3")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, string", tag = "4")]
    pub labels: BTreeMap<String, String>,
}

impl ContentRecord {
    pub fn from_info(i: &Info) -> Self {
        ContentRecord {
            size: i.size,
            created_at: i.created_at.map(Timestamp::from),
            updated_at: i.updated_at.map(Timestamp::from),
            labels: i.labels.clone(),
        }
    }

    pub fn into_info(self, digest: &str) -> Info {
        Info {
            digest: digest.to_owned(),
            size: self.size,
            created_at: self.created_at.and_then(|t| SystemTime::try_from(t).ok()),
            updated_at: self.updated_at.and_then(|t| SystemTime::try_from(t).ok()),
            labels: self.labels,
        }
    }

    pub fn decode_for(namespace: &str, digest: &str, bytes: &[u8]) -> Result<Self, ContentError> {
        ContentRecord::decode(bytes).map_err(|source| ContentError::Corrupt {
            namespace: namespace.to_owned(),
            digest: digest.to_owned(),
            source,
        })
    }
}

/// Decodes a `content_blobs` row (for the garbage collector).
pub(crate) fn records_decode(namespace: &str, digest: &str, bytes: &[u8]) -> Result<Info, ContentError> {
    Ok(ContentRecord::decode_for(namespace, digest, bytes)?.into_info(digest))
}
