//! Validation at the edge of the store: every error is InvalidArgument (or NotImplemented
//! for an unknown lease resource type) and names the field.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::SystemTime;

use super::error::MetadataError;
use super::model::{Container, LABEL_GC_EXPIRE, LeaseResource};
use crate::identifiers;

/// containerd's `labels.Validate`: key plus value at most this many bytes.
pub const MAX_LABEL_SIZE: usize = 4096;
/// How much of an oversized key an error message quotes (containerd: 64).
const KEY_QUOTE: usize = 64;
/// Lease ids are not identifiers (containerd's clients generate `<nanos>-<base64url>`), but
/// they are bounded and printable.
const MAX_LEASE_ID: usize = 256;

/// containerd's `labels.Validate` over a map; `field` names the map ("labels").
pub fn validate_labels(field: &str, labels: &BTreeMap<String, String>) -> Result<(), MetadataError> {
    for (k, v) in labels {
        let total = k.len() + v.len();
        if total > MAX_LABEL_SIZE {
            let mut end = k.len().min(KEY_QUOTE);
            while !k.is_char_boundary(end) {
                end -= 1;
            }
            return Err(MetadataError::invalid(
                field,
                format!(
                    "label key and value length ({total} bytes) greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {}",
                    &k[..end]
                ),
            ));
        }
        if k.is_empty() {
            return Err(MetadataError::invalid(field, "label keys must not be empty"));
        }
    }
    Ok(())
}

/// containerd's `validateContainer`, run on create and on the merged record of an update.
pub fn validate_container(c: &Container) -> Result<(), MetadataError> {
    identifiers::validate("container id", &c.id)?;
    if c.extensions.keys().any(String::is_empty) {
        return Err(MetadataError::invalid(
            "extensions",
            "extension keys must not be empty",
        ));
    }
    validate_labels("labels", &c.labels)?;
    if c.runtime.name.is_empty() {
        return Err(MetadataError::invalid(
            "runtime.name",
            "a runtime name is required",
        ));
    }
    if c.spec.is_none() {
        return Err(MetadataError::invalid("spec", "a container spec is required"));
    }
    if !c.snapshot_key.is_empty() && c.snapshotter.is_empty() {
        return Err(MetadataError::invalid(
            "snapshotter",
            "must be set when snapshot_key is set",
        ));
    }
    Ok(())
}

/// A lease id: 1..=256 printable ASCII characters, no whitespace and no `/`.
pub fn validate_lease_id(id: &str) -> Result<(), MetadataError> {
    if id.is_empty() {
        return Err(MetadataError::invalid("lease id", "must not be empty"));
    }
    if id.len() > MAX_LEASE_ID {
        return Err(MetadataError::invalid(
            "lease id",
            format!("{id:?} is longer than {MAX_LEASE_ID} bytes"),
        ));
    }
    if !id.bytes().all(|b| b.is_ascii_graphic() && b != b'/') {
        return Err(MetadataError::invalid(
            "lease id",
            format!("{id:?} must be printable ASCII without whitespace or '/'"),
        ));
    }
    Ok(())
}

/// The lease's labels, including a parseable expiry.
pub fn validate_lease_labels(labels: &BTreeMap<String, String>) -> Result<(), MetadataError> {
    validate_labels("labels", labels)?;
    if let Some(v) = labels.get(LABEL_GC_EXPIRE) {
        parse_expiry(v).ok_or_else(|| {
            MetadataError::invalid(
                format!("labels.{LABEL_GC_EXPIRE:?}"),
                format!("{v:?} is not an RFC 3339 time"),
            )
        })?;
    }
    Ok(())
}

/// Parses an RFC 3339 expiry (`2026-11-29T10:00:00Z`, any offset).
pub fn parse_expiry(v: &str) -> Option<SystemTime> {
    let ts = prost_types::Timestamp::from_str(v).ok()?;
    SystemTime::try_from(ts).ok()
}

/// containerd's `parseLeaseResource`: checks a resource and returns it normalized.
pub fn validate_resource(r: &LeaseResource) -> Result<(), MetadataError> {
    if r.id.is_empty() {
        return Err(MetadataError::invalid("resource.id", "must not be empty"));
    }
    if r.id.len() > 1024 || r.id.chars().any(char::is_control) {
        return Err(MetadataError::invalid(
            "resource.id",
            "must be at most 1024 bytes without control characters",
        ));
    }
    let parts: Vec<&str> = r.r#type.split('/').collect();
    match parts.as_slice() {
        ["content"] => {
            if !is_digest(&r.id) {
                return Err(MetadataError::invalid(
                    "resource.id",
                    format!("content resource id {:?} is not a digest (algorithm:hex)", r.id),
                ));
            }
        }
        ["ingests"] => {}
        ["snapshots", snapshotter] => {
            identifiers::validate("resource.type snapshotter", snapshotter)?;
        }
        ["content" | "ingests" | "snapshots", ..] => {
            return Err(MetadataError::invalid(
                "resource.type",
                format!(
                    "invalid resource type {:?} (want content, ingests or snapshots/<snapshotter>)",
                    r.r#type
                ),
            ));
        }
        _ => {
            return Err(MetadataError::UnsupportedResource {
                r#type: r.r#type.clone(),
            });
        }
    }
    Ok(())
}

/// An OCI digest: `algorithm:encoded`, sha256/sha512 checked for length and lowercase hex.
fn is_digest(s: &str) -> bool {
    let Some((alg, enc)) = s.split_once(':') else {
        return false;
    };
    let hex = |n: usize| enc.len() == n && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match alg {
        "sha256" => hex(64),
        "sha512" => hex(128),
        _ => {
            !alg.is_empty()
                && alg
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b))
                && !enc.is_empty()
                && enc
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"=_-".contains(&b))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errdefs::{ErrorKind, Kind};
    use crate::metadata::model::Runtime;

    fn container() -> Container {
        Container {
            id: "c1".into(),
            runtime: Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            },
            spec: Some(prost_types::Any::default()),
            ..Default::default()
        }
    }

    #[track_caller]
    fn assert_invalid(err: MetadataError, field: &str) {
        assert_eq!(err.kind(), Kind::InvalidArgument, "{err}");
        assert_eq!(err.kind().code(), tonic_code_invalid_argument());
        assert!(err.to_string().contains(field), "{err:?} should name {field}");
    }

    fn tonic_code_invalid_argument() -> i32 {
        3
    }

    #[test]
    fn label_of_exactly_4096_bytes_is_accepted_one_more_is_not() {
        let mut labels = BTreeMap::new();
        labels.insert("k".repeat(96), "v".repeat(4000));
        validate_labels("labels", &labels).unwrap();
        labels.insert("k".repeat(97), "v".repeat(4000));
        let err = validate_labels("labels", &labels).unwrap_err();
        assert_invalid(err, "labels");
    }

    #[test]
    fn oversized_label_message_quotes_at_most_64_key_bytes() {
        let labels = [("é".repeat(3000), String::new())].into();
        let msg = validate_labels("labels", &labels).unwrap_err().to_string();
        assert!(msg.contains("(6000 bytes)"), "{msg}");
        assert!(!msg.contains(&"é".repeat(33)), "{msg}");
    }

    #[test]
    fn container_rules_name_the_field() {
        validate_container(&container()).unwrap();

        let mut c = container();
        c.id = "bad/id".into();
        assert_invalid(validate_container(&c).unwrap_err(), "container id");

        let mut c = container();
        c.runtime.name.clear();
        assert_invalid(validate_container(&c).unwrap_err(), "runtime.name");

        let mut c = container();
        c.spec = None;
        assert_invalid(validate_container(&c).unwrap_err(), "spec");

        let mut c = container();
        c.snapshot_key = "k".into();
        assert_invalid(validate_container(&c).unwrap_err(), "snapshotter");

        let mut c = container();
        c.extensions.insert(String::new(), prost_types::Any::default());
        assert_invalid(validate_container(&c).unwrap_err(), "extensions");

        let mut c = container();
        c.labels.insert("k".into(), "v".repeat(5000));
        assert_invalid(validate_container(&c).unwrap_err(), "labels");
    }

    #[test]
    fn lease_ids_accept_containerd_random_ids() {
        for ok in ["123456789-AbC_", "123-a-_-", "my.lease", "x"] {
            validate_lease_id(ok).unwrap();
        }
        for bad in ["", "a b", "a/b", &"x".repeat(257), "tab\t"] {
            assert_invalid(validate_lease_id(bad).unwrap_err(), "lease id");
        }
    }

    #[test]
    fn lease_expiry_must_be_rfc3339() {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_GC_EXPIRE.to_string(), "2026-11-29T10:00:00Z".to_string());
        validate_lease_labels(&labels).unwrap();
        labels.insert(
            LABEL_GC_EXPIRE.to_string(),
            "2026-11-29T10:00:00+02:00".to_string(),
        );
        validate_lease_labels(&labels).unwrap();
        labels.insert(LABEL_GC_EXPIRE.to_string(), "tomorrow".to_string());
        assert_invalid(validate_lease_labels(&labels).unwrap_err(), LABEL_GC_EXPIRE);
        assert_eq!(
            parse_expiry("1970-01-01T00:01:00Z"),
            Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(60))
        );
    }

    #[test]
    fn lease_resources_follow_containerd() {
        let r = |t: &str, id: &str| LeaseResource {
            id: id.into(),
            r#type: t.into(),
        };
        let digest = format!("sha256:{}", "a".repeat(64));
        validate_resource(&r("content", &digest)).unwrap();
        validate_resource(&r("ingests", "default-ref")).unwrap();
        validate_resource(&r("snapshots/overlayfs", "key-1")).unwrap();

        assert_invalid(
            validate_resource(&r("content", "nope")).unwrap_err(),
            "resource.id",
        );
        assert_invalid(validate_resource(&r("content", "")).unwrap_err(), "resource.id");
        assert_invalid(
            validate_resource(&r("snapshots", "k")).unwrap_err(),
            "resource.type",
        );
        assert_invalid(
            validate_resource(&r("ingests/x", "k")).unwrap_err(),
            "resource.type",
        );
        let err = validate_resource(&r("images", "k")).unwrap_err();
        assert_eq!(err.kind(), Kind::NotImplemented);
        assert!(err.to_string().contains("resource.type"), "{err}");
    }
}
