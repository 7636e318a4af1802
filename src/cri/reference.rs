//! Image references as kubelet sends them, normalized the way containerd's CRI plugin does
//! (docker's `ParseNormalizedNamed` + `TagNameOnly`):
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

fn path_component_ok(c: &str) -> bool {
    // [a-z0-9]+ joined by '.', '_', '__' or '-'+
    if c.is_empty()
        || !c.as_bytes()[0].is_ascii_alphanumeric()
        || !c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
    {
        return false;
    }
    c.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
        && !c.contains("..")
        && !c.contains("___")
}

fn tag_ok(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && (t.as_bytes()[0].is_ascii_alphanumeric() || t.as_bytes()[0] == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Parses and normalizes; a reference without tag or digest gets `:latest`.
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
    let (rest, digest) = match input.split_once('@') {
        Some((r, d)) => {
            if !is_digest(d) {
                return Err(err("digest must be sha256:<64 lowercase hex>"));
            }
            (r, Some(d.to_owned()))
        }
        None => (input, None),
    };
    let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => {
            let t = &rest[last_slash + i + 1..];
            if !tag_ok(t) {
                return Err(err("invalid tag"));
            }
            (&rest[..last_slash + i], Some(t.to_owned()))
        }
        None => (rest, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, remainder)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_owned(), remainder.to_owned())
        }
        _ => ("docker.io".to_owned(), name.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_owned()
    } else {
        domain
    };
    let path = if domain == "docker.io" && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    if path.is_empty() || !path.split('/').all(path_component_ok) {
        return Err(err(
            "repository name must be lowercase alphanumerics separated by '.', '_', '-' or '/'",
        ));
    }
    if domain.is_empty() || domain.starts_with('-') || domain.ends_with('-') {
        return Err(err("invalid domain"));
    }
    // As distribution/reference: the normalized name (domain and path, without tag or
    // digest) is at most 255 characters.
    if domain.len() + 1 + path.len() > 255 {
        return Err(err("repository name longer than 255 characters"));
    }
    let tag = match (&tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        _ => tag,
    };
    Ok(Reference {
        domain,
        path,
        tag,
        digest,
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
}
