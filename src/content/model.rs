//! What the content store speaks: blob [`Info`], write [`Status`], their filter fields, the
//! garbage-collection labels, and the digest and ingest-ref rules.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::error::ContentError;

/// The label prefix naming content a blob references (containerd's GC).
pub const LABEL_GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// The label prefix naming snapshots a blob references: `…snapshot.<snapshotter>[.<x>]`.
pub const LABEL_GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";
/// A blob with this label is a garbage-collection root.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";

/// The longest ingest ref accepted, in bytes.
pub const MAX_REF: usize = 4096;

/// Information about a committed blob, as seen in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Info {
    pub digest: String,
    pub size: i64,
    pub created_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
    pub labels: BTreeMap<String, String>,
}

/// The status of an in-progress write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub r#ref: String,
    pub offset: i64,
    pub total: i64,
    pub expected: String,
    pub started_at: Option<SystemTime>,
    pub updated_at: Option<SystemTime>,
}

/// Parses `sha256:<64 lowercase hex>`; returns the hex part.
pub fn parse_digest<'a>(field: &'static str, digest: &'a str) -> Result<&'a str, ContentError> {
    let invalid = |reason| ContentError::InvalidDigest {
        field,
        digest: digest.chars().take(200).collect(),
        reason,
    };
    if digest.is_empty() {
        return Err(invalid("must not be empty"));
    }
    let Some((alg, hex)) = digest.split_once(':') else {
        return Err(invalid("must be <algorithm>:<hex>"));
    };
    if alg != "sha256" {
        return Err(invalid("unsupported algorithm (only sha256)"));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("sha256 digests are 64 lowercase hex characters"));
    }
    Ok(hex)
}

/// `sha256:<hex>` of the bytes.
pub fn digest_of(data: &[u8]) -> String {
    use sha2::Digest;
    format_digest(&sha2::Sha256::digest(data))
}

pub(crate) fn format_digest(sum: &[u8]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in sum {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Validates an ingest ref: non-empty, bounded, no NUL or newline.
pub fn validate_ref(r: &str) -> Result<(), ContentError> {
    if r.is_empty() {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: "must not be empty".into(),
        });
    }
    if r.len() > MAX_REF {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: format!("longer than {MAX_REF} bytes"),
        });
    }
    if r.contains(['\0', '\n']) {
        return Err(ContentError::InvalidArgument {
            field: "ref",
            reason: "must not contain NUL or newline".into(),
        });
    }
    Ok(())
}

/// Filter fields of [`Info`]: `digest`, `size`, `labels.KEY`.
pub struct InfoFields<'a>(pub &'a Info);

impl crate::filters::Adaptor for InfoFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["digest"] => Some(self.0.digest.clone()),
            ["size"] => Some(self.0.size.to_string()),
            ["labels", _] => crate::filters::label_field(&self.0.labels, path),
            _ => None,
        }
    }
}

/// Filter fields of [`Status`]: `ref`, `expected`.
pub struct StatusFields<'a>(pub &'a Status);

impl crate::filters::Adaptor for StatusFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["ref"] => Some(self.0.r#ref.clone()),
            ["expected"] => Some(self.0.expected.clone()),
            _ => None,
        }
    }
}
