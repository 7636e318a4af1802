//! Image references, normalized the way containerd's CRI plugin does (docker's
//! `ParseNormalizedNamed` + `TagNameOnly`): the one reference parser of taskd, used by
//! server-side pulls (`pull.rs`) and the CRI (kubelet's image names) alike. The parsing
//! is `oci_spec::distribution::Reference`'s; [`normalize`] wraps it (taskd's error, the
//! extra checks it names).
//!
//! ```text
//! busybox                         → docker.io/library/busybox:latest
//! user/app:1.0                    → docker.io/user/app:1.0
//! index.docker.io/library/redis   → docker.io/library/redis:latest
//! localhost:5000/app              → localhost:5000/app:latest
//! quay.io/x/y@sha256:<64 hex>     → kept (a digest ref gets no tag)
//! sha256:<64 hex>                 → an image id, not a reference (see `is_image_id`)
//! ```

use std::fmt;

use oci_spec::distribution::ParseError;

use crate::errdefs::{ErrorKind, Kind};

/// A reference that does not parse; names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    pub reference: String,
    pub reason: &'static str,
}

impl ErrorKind for ReferenceError {
    fn kind(&self) -> Kind {
        Kind::InvalidArgument
    }
}

/// A normalized reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub domain: String,
    pub path: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path` without tag or digest (what repo tags and digests are built from).
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// `sha256:<64 hex>`.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Whether `s` is an image id (a bare config digest) rather than a reference.
pub fn is_image_id(s: &str) -> bool {
    is_digest(s)
}

/// The crate's parse error as a reason.
fn reason(e: &ParseError) -> &'static str {
    match e {
        ParseError::DigestInvalidFormat | ParseError::DigestInvalidLength | ParseError::DigestUnsupported => {
            DIGEST_REASON
        }
        ParseError::NameContainsUppercase => "repository name must be lowercase",
        ParseError::NameEmpty => "empty",
        ParseError::NameTooLong => NAME_TOO_LONG,
        ParseError::TagInvalidFormat => "invalid tag",
        ParseError::ReferenceInvalidFormat => {
            "not [domain[:port]/]path[:tag][@digest] (path: lowercase alphanumerics separated by \
             '.', '_', '__', '-' or '/'; tag: at most 128 of [A-Za-z0-9_.-])"
        }
    }
}

const DIGEST_REASON: &str = "digest must be sha256:<64 lowercase hex>";
const NAME_TOO_LONG: &str = "repository name longer than 255 characters";

/// Parses and normalizes; a reference without tag or digest gets `:latest`.
///
/// The grammar and the normalization (`docker.io`, `library/`, `:latest`) are
/// `oci_spec::distribution::Reference`'s (distribution/reference's grammar); taskd adds what
/// the CRI needs on top: a bare `sha256:<hex>` is an image id, not a reference; a digest is
/// sha256 in lowercase hex (the only digest taskd's content store computes); a tag is ASCII
/// (the crate's `\w` is Unicode); a path is lowercase; and the 255-character limit is the
/// normalized name's (domain and path, as distribution/reference has it; the crate counts
/// only the path).
pub fn normalize(input: &str) -> Result<Reference, ReferenceError> {
    let err = |reason| ReferenceError {
        reference: input.to_owned(),
        reason,
    };
    if input.is_empty() {
        return Err(err("empty"));
    }
    // The longest reference: a 255-character name, a 128-character tag and a digest.
    if input.len() > 255 + 1 + 128 + 1 + 71 {
        return Err(err("too long"));
    }
    if is_image_id(input) {
        return Err(err("an image id, not a reference"));
    }
    let parsed: oci_spec::distribution::Reference = input.parse().map_err(|e| err(reason(&e)))?;
    // The crate's grammar reads a first component without '.' or ':' as a domain (which
    // may hold capitals) and then puts it in the path; distribution/reference refuses it.
    if parsed.repository().bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(err("repository name must be lowercase"));
    }
    if parsed.digest().is_some_and(|d| !is_digest(d)) {
        return Err(err(DIGEST_REASON));
    }
    if parsed.tag().is_some_and(|t| !t.is_ascii()) {
        return Err(err("invalid tag"));
    }
    if parsed.registry().len() + 1 + parsed.repository().len() > 255 {
        return Err(err(NAME_TOO_LONG));
    }
    Ok(Reference {
        domain: parsed.registry().to_owned(),
        path: parsed.repository().to_owned(),
        tag: parsed.tag().map(str::to_owned),
        digest: parsed.digest().map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length limit is the name's (255), not the input's: a name just under it keeps its
    /// normal form when `:latest` is added (found by the `reference` fuzz target), and a
    /// name that normalizes past it is refused.
    #[test]
    fn the_length_limit_is_the_names() {
        let name = format!("example.com/{}", "a".repeat(255 - "example.com/".len()));
        let r = normalize(&name).unwrap();
        assert_eq!(r.to_string(), format!("{name}:latest"));
        assert_eq!(normalize(&r.to_string()).unwrap(), r);
        let tagged = format!("{name}:{}", "t".repeat(128));
        assert_eq!(normalize(&tagged).unwrap().to_string(), tagged);
        let long = format!("example.com/{}", "a".repeat(256 - "example.com/".len()));
        assert!(normalize(&long).unwrap_err().to_string().contains("255"));
        // docker.io/library/ is part of the name.
        let short = "a".repeat(250);
        assert!(normalize(&short).is_err());
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn normalizes_like_kubelet_expects() {
        let n = |s: &str| normalize(s).unwrap().to_string();
        assert_eq!(n("busybox"), "docker.io/library/busybox:latest");
        assert_eq!(n("busybox:1.36"), "docker.io/library/busybox:1.36");
        assert_eq!(n("user/app:1.0"), "docker.io/user/app:1.0");
        assert_eq!(
            n("index.docker.io/library/redis"),
            "docker.io/library/redis:latest"
        );
        assert_eq!(n("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(n("127.0.0.1:5000/a/b:v2"), "127.0.0.1:5000/a/b:v2");
        assert_eq!(n(&format!("quay.io/x/y@{D}")), format!("quay.io/x/y@{D}"));
        assert_eq!(
            n(&format!("busybox:1@{D}")),
            format!("docker.io/library/busybox:1@{D}")
        );
        assert_eq!(
            normalize("localhost:5000/app").unwrap().name(),
            "localhost:5000/app"
        );
    }

    #[test]
    fn rejects_bad_references_naming_them() {
        for bad in [
            "",
            "UPPER/case",
            "busybox:",
            "a@sha256:short",
            "bad//path",
            "x:tag with space",
            D,
        ] {
            let e = normalize(bad).unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument);
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(is_image_id(D));
    }

    /// What taskd checks on top of the crate's grammar.
    #[test]
    fn digests_are_sha256_and_tags_ascii() {
        let sha512 = format!("sha512:{}", "f".repeat(128));
        let upper = format!("sha256:{}", "F".repeat(64));
        for bad in [
            format!("busybox@{sha512}"),
            format!("busybox@{upper}"),
            "busybox:é".to_owned(),
        ] {
            let e = normalize(&bad).unwrap_err();
            assert_eq!(e.kind(), Kind::InvalidArgument, "{bad}");
        }
        assert!(normalize(&format!("busybox@{D}")).is_ok());
    }
}
