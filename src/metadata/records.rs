//! On-disk records: protobuf messages (prost derive, explicit tags). Storage types only,
//! converted to and from the domain types in `mod.rs`; never sent on the wire.
//!
//! Compatibility rules: tags are never reused; new fields get new tags and a default that
//! means "absent", so an older taskd reading a newer record ignores the new fields.

use std::collections::BTreeMap;
use std::time::SystemTime;

use prost::Message;
use prost_types::{Any, Timestamp};

use super::error::MetadataError;
use super::model::{Container, Lease, Namespace, Runtime};

#[derive(Clone, PartialEq, Message)]
pub(crate) struct NamespaceRecord {
    #[prost(btree_map = "string, string", tag = "1")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct ContainerRecord {
    #[prost(btree_map = "string, string", tag = "1")]
    pub labels: BTreeMap<String, String>,
    #[prost(string, tag = "2")]
    pub image: String,
    #[prost(string, tag = "3")]
    pub runtime_name: String,
    #[prost(message, optional, tag = "4")]
    pub runtime_options: Option<Any>,
    #[prost(message, optional, tag = "5")]
    pub spec: Option<Any>,
    #[prost(string, tag = "6")]
    pub snapshotter: String,
    #[prost(string, tag = "7")]
    pub snapshot_key: String,
    #[prost(message, optional, tag = "8")]
    pub created_at: Option<Timestamp>,
    #[prost(message, optional, tag = "9")]
    pub updated_at: Option<Timestamp>,
    #[prost(btree_map = "string, message", tag = "10")]
    pub extensions: BTreeMap<String, Any>,
    #[prost(string, tag = "11")]
    pub sandbox: String,
}

#[derive(Clone, PartialEq, Message)]
pub(crate) struct LeaseRecord {
    #[prost(message, optional, tag = "1")]
    pub created_at: Option<Timestamp>,
    #[prost(btree_map = "string, string", tag = "2")]
    pub labels: BTreeMap<String, String>,
}

fn ts(t: Option<SystemTime>) -> Option<Timestamp> {
    t.map(Timestamp::from)
}

fn time(t: Option<Timestamp>) -> Option<SystemTime> {
    t.and_then(|t| SystemTime::try_from(t).ok())
}

pub(crate) fn decode<M: Message + Default>(
    what: &'static str,
    key: &str,
    bytes: &[u8],
) -> Result<M, MetadataError> {
    M::decode(bytes).map_err(|source| MetadataError::Corrupt {
        what,
        key: key.to_owned(),
        source,
    })
}

impl NamespaceRecord {
    pub fn into_namespace(self, name: &str) -> Namespace {
        Namespace {
            name: name.to_owned(),
            labels: self.labels,
        }
    }
}

impl ContainerRecord {
    pub fn from_container(c: &Container) -> Self {
        ContainerRecord {
            labels: c.labels.clone(),
            image: c.image.clone(),
            runtime_name: c.runtime.name.clone(),
            runtime_options: c.runtime.options.clone(),
            spec: c.spec.clone(),
            snapshotter: c.snapshotter.clone(),
            snapshot_key: c.snapshot_key.clone(),
            created_at: ts(c.created_at),
            updated_at: ts(c.updated_at),
            extensions: c.extensions.clone(),
            sandbox: c.sandbox.clone(),
        }
    }

    pub fn into_container(self, id: &str) -> Container {
        Container {
            id: id.to_owned(),
            labels: self.labels,
            image: self.image,
            runtime: Runtime {
                name: self.runtime_name,
                options: self.runtime_options,
            },
            spec: self.spec,
            snapshotter: self.snapshotter,
            snapshot_key: self.snapshot_key,
            created_at: time(self.created_at),
            updated_at: time(self.updated_at),
            extensions: self.extensions,
            sandbox: self.sandbox,
        }
    }
}

impl LeaseRecord {
    pub fn from_lease(l: &Lease) -> Self {
        LeaseRecord {
            created_at: ts(l.created_at),
            labels: l.labels.clone(),
        }
    }

    pub fn into_lease(self, id: &str) -> Lease {
        Lease {
            id: id.to_owned(),
            created_at: time(self.created_at),
            labels: self.labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_record_round_trips() {
        let c = Container {
            id: "c1".into(),
            labels: [("a".to_string(), "b".to_string())].into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: Some(Any {
                    type_url: "x".into(),
                    value: vec![1, 2],
                }),
            },
            spec: Some(Any {
                type_url: "types.containerd.io/opencontainers/runtime-spec/1/Spec".into(),
                value: b"{}".to_vec(),
            }),
            snapshotter: "overlayfs".into(),
            snapshot_key: "c1".into(),
            created_at: Some(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(1_700_000_000_123_456_789),
            ),
            updated_at: Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_001)),
            extensions: [(
                "ext".to_string(),
                Any {
                    type_url: "y".into(),
                    value: vec![3],
                },
            )]
            .into(),
            sandbox: "sb".into(),
        };
        let bytes = ContainerRecord::from_container(&c).encode_to_vec();
        let back: ContainerRecord = decode("container", "c1", &bytes).unwrap();
        assert_eq!(back.into_container("c1"), c);
    }

    #[test]
    fn corrupt_record_is_data_loss_naming_the_key() {
        use crate::errdefs::{ErrorKind, Kind};
        let err = decode::<ContainerRecord>("container", "default/c1", &[0xff, 0xff, 0xff]).unwrap_err();
        assert_eq!(err.kind(), Kind::DataLoss);
        assert!(err.to_string().contains("default/c1"), "{err}");
    }
}
