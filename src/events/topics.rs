//! Topic names and topic validation (containerd's `exchange.validateTopic`).
//!
//! A topic is `/` followed by one or more `/`-separated components; each component is a
//! containerd identifier (alphanumerics joined by single `.`, `_` or `-`, at most 76
//! characters), and the whole topic is at most [`MAX_LENGTH`] bytes.

use super::error::EventError;
use crate::identifiers;

/// The longest topic accepted, in bytes.
pub const MAX_LENGTH: usize = 255;

pub const TASK_CREATE: &str = "/tasks/create";
pub const TASK_START: &str = "/tasks/start";
pub const TASK_OOM: &str = "/tasks/oom";
pub const TASK_EXIT: &str = "/tasks/exit";
pub const TASK_DELETE: &str = "/tasks/delete";
pub const TASK_EXEC_ADDED: &str = "/tasks/exec-added";
pub const TASK_EXEC_STARTED: &str = "/tasks/exec-started";
pub const TASK_PAUSED: &str = "/tasks/paused";
pub const TASK_RESUMED: &str = "/tasks/resumed";
pub const TASK_CHECKPOINTED: &str = "/tasks/checkpointed";
pub const CONTAINER_CREATE: &str = "/containers/create";
pub const CONTAINER_UPDATE: &str = "/containers/update";
pub const CONTAINER_DELETE: &str = "/containers/delete";
pub const NAMESPACE_CREATE: &str = "/namespaces/create";
pub const NAMESPACE_UPDATE: &str = "/namespaces/update";
pub const NAMESPACE_DELETE: &str = "/namespaces/delete";
pub const IMAGE_CREATE: &str = "/images/create";
pub const IMAGE_UPDATE: &str = "/images/update";
pub const IMAGE_DELETE: &str = "/images/delete";
pub const CONTENT_DELETE: &str = "/content/delete";
pub const SNAPSHOT_PREPARE: &str = "/snapshot/prepare";
pub const SNAPSHOT_COMMIT: &str = "/snapshot/commit";
pub const SNAPSHOT_REMOVE: &str = "/snapshot/remove";

/// Checks a topic; the error says what is wrong and, for a bad component, which one.
pub fn validate(topic: &str) -> Result<(), EventError> {
    let invalid = |reason| EventError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    };
    if topic.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if !topic.starts_with('/') {
        return Err(invalid("must start with '/'"));
    }
    if topic.len() == 1 {
        return Err(invalid("must have at least one component"));
    }
    if topic.len() > MAX_LENGTH {
        return Err(invalid("must be at most 255 bytes"));
    }
    for component in topic[1..].split('/') {
        identifiers::validate("topic component", component).map_err(|source| {
            EventError::InvalidTopicComponent {
                topic: topic.to_owned(),
                component: component.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errdefs::{ErrorKind, Kind};

    #[test]
    fn accepts_containerd_topics() {
        for t in [
            TASK_CREATE,
            TASK_EXEC_ADDED,
            SNAPSHOT_PREPARE,
            "/a",
            "/a.b/c_d/e-f/1",
        ] {
            validate(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        }
    }

    #[test]
    fn rejects_bad_topics_as_invalid_argument() {
        let long = format!("/{}", vec!["abcdefghij"; 24].join("/"));
        assert!(long.len() > MAX_LENGTH);
        for (t, needle) in [
            ("", "must not be empty"),
            ("tasks/create", "must start with '/'"),
            ("/", "at least one component"),
            ("//x", "component \"\""),
            ("/tasks/", "component \"\""),
            ("/tasks//create", "component \"\""),
            ("/tasks/cr eate", "component \"cr eate\""),
            ("/tasks/-x", "component \"-x\""),
            ("/tasks/a..b", "component \"a..b\""),
            ("/tasks/ünï", "component"),
            (long.as_str(), "at most 255 bytes"),
        ] {
            let err = validate(t).expect_err(t);
            assert_eq!(err.kind(), Kind::InvalidArgument, "{t}");
            let msg = err.to_string();
            assert!(msg.contains(needle), "{t}: {msg}");
        }
    }
}
