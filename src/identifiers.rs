//! Identifier rules shared by namespaces, containers, tasks, leases and snapshots
//! (containerd's `identifiers.Validate`): alphanumerics joined by single `.`, `_` or `-`,
//! starting and ending with an alphanumeric, at most 76 characters.

use crate::errdefs::{ErrorKind, Kind};

pub const MAX_LENGTH: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidIdentifier {
    #[error("{what}: identifier must not be empty")]
    Empty { what: &'static str },
    #[error("{what}: identifier {id:?} is longer than {MAX_LENGTH} characters")]
    TooLong { what: &'static str, id: String },
    #[error(
        "{what}: identifier {id:?} must be alphanumerics joined by single '.', '_' or '-' (regex [A-Za-z0-9]+(?:[._-][A-Za-z0-9]+)*)"
    )]
    BadFormat { what: &'static str, id: String },
}

impl ErrorKind for InvalidIdentifier {
    fn kind(&self) -> Kind {
        match self {
            InvalidIdentifier::Empty { .. }
            | InvalidIdentifier::TooLong { .. }
            | InvalidIdentifier::BadFormat { .. } => Kind::InvalidArgument,
        }
    }
}

/// Validates `id`; `what` names the field in the error ("namespace", "container id", ...).
pub fn validate(what: &'static str, id: &str) -> Result<(), InvalidIdentifier> {
    if id.is_empty() {
        return Err(InvalidIdentifier::Empty { what });
    }
    if id.len() > MAX_LENGTH {
        return Err(InvalidIdentifier::TooLong {
            what,
            id: id.to_owned(),
        });
    }
    let bytes = id.as_bytes();
    let mut prev_sep = true; // the first character must be alphanumeric
    for &b in bytes {
        let sep = matches!(b, b'.' | b'_' | b'-');
        if sep {
            if prev_sep {
                return Err(InvalidIdentifier::BadFormat {
                    what,
                    id: id.to_owned(),
                });
            }
        } else if !b.is_ascii_alphanumeric() {
            return Err(InvalidIdentifier::BadFormat {
                what,
                id: id.to_owned(),
            });
        }
        prev_sep = sep;
    }
    if prev_sep {
        return Err(InvalidIdentifier::BadFormat {
            what,
            id: id.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_containerd_identifiers() {
        for ok in ["default", "k8s.io", "a", "a-b_c.d", "A1", &"x".repeat(76)] {
            validate("namespace", ok).unwrap();
        }
    }

    #[test]
    fn rejects_bad_identifiers_naming_the_field() {
        for bad in ["", "-a", "a-", "a..b", "a/b", "a b", "ü", &"x".repeat(77), "../x"] {
            let err = validate("container id", bad).unwrap_err();
            assert_eq!(err.kind(), Kind::InvalidArgument);
            assert!(err.to_string().starts_with("container id:"), "{err}");
        }
    }
}
