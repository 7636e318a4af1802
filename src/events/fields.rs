//! The filter adaptor of an [`Envelope`] (containerd's `Envelope.Field`).
//!
//! ```text
//! namespace            the envelope's namespace
//! topic                the envelope's topic
//! event.<path>         a field of the decoded event, for containerd's event types:
//!                      string fields (present when non-empty), bool fields, nested
//!                      messages (event.runtime.name, event.io.stdout) and labels
//!                      (event.labels.<key>); numbers and timestamps are not exposed,
//!                      as in containerd's generated fieldpath code
//! ```
//!
//! The event is decoded lazily, once per envelope, and only when a filter asks for an
//! `event.` field. An event of a type this table does not know has no fields.

use std::cell::OnceCell;
use std::collections::HashMap;
use std::sync::LazyLock;

use prost::{Message, Name};
use taskd_proto::containerd::events as ev;
use taskd_proto::containerd::services::images::v1 as images;

use super::model::Envelope;
use crate::filters::Adaptor;

/// Borrows an envelope and answers filter field lookups on it.
pub struct EnvelopeFields<'a> {
    envelope: &'a Envelope,
    event: OnceCell<Option<Box<dyn EventFields>>>,
}

impl<'a> EnvelopeFields<'a> {
    pub fn new(envelope: &'a Envelope) -> Self {
        EnvelopeFields {
            envelope,
            event: OnceCell::new(),
        }
    }

    fn event(&self) -> Option<&dyn EventFields> {
        self.event.get_or_init(|| decode(&self.envelope.event)).as_deref()
    }
}

impl Adaptor for EnvelopeFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["namespace"] => non_empty(&self.envelope.namespace),
            ["topic"] => non_empty(&self.envelope.topic),
            ["event", rest @ ..] if !rest.is_empty() => self.event()?.field(rest),
            _ => None,
        }
    }
}

/// Field lookup on a decoded event.
trait EventFields {
    fn field(&self, path: &[&str]) -> Option<String>;
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn label(labels: &HashMap<String, String>, rest: &[&str]) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

/// `impl EventFields` for an event type from its string fields, plus `labels` when the
/// type has a label map.
macro_rules! event_fields {
    ($ty:ty { $($f:ident),* $(,)? }) => {
        impl EventFields for $ty {
            fn field(&self, path: &[&str]) -> Option<String> {
                let [name] = path else { return None };
                $(if *name == stringify!($f) { return non_empty(&self.$f); })*
                None
            }
        }
    };
    ($ty:ty { $($f:ident),* $(,)? } + labels) => {
        impl EventFields for $ty {
            fn field(&self, path: &[&str]) -> Option<String> {
                if let ["labels", rest @ ..] = path {
                    return label(&self.labels, rest);
                }
                let [name] = path else { return None };
                $(if *name == stringify!($f) { return non_empty(&self.$f); })*
                None
            }
        }
    };
}

event_fields!(
    ev::ContainerUpdate {
        id,
        image,
        snapshot_key
    } + labels
);
event_fields!(ev::ContainerDelete { id });
event_fields!(ev::ContentCreate { digest });
event_fields!(ev::ContentDelete { digest });
event_fields!(ev::NamespaceCreate { name } + labels);
event_fields!(ev::NamespaceUpdate { name } + labels);
event_fields!(ev::NamespaceDelete { name });
event_fields!(ev::SandboxCreate { sandbox_id });
event_fields!(ev::SandboxStart { sandbox_id });
event_fields!(ev::SandboxExit { sandbox_id });
event_fields!(ev::SnapshotPrepare {
    key,
    parent,
    snapshotter
});
event_fields!(ev::SnapshotCommit {
    key,
    name,
    snapshotter
});
event_fields!(ev::SnapshotRemove { key, snapshotter });
event_fields!(ev::TaskStart { container_id });
event_fields!(ev::TaskDelete { container_id, id });
event_fields!(ev::TaskExit { container_id, id });
event_fields!(ev::TaskOom { container_id });
event_fields!(ev::TaskExecAdded {
    container_id,
    exec_id
});
event_fields!(ev::TaskExecStarted {
    container_id,
    exec_id
});
event_fields!(ev::TaskPaused { container_id });
event_fields!(ev::TaskResumed { container_id });
event_fields!(ev::TaskCheckpointed {
    container_id,
    checkpoint
});
event_fields!(images::ImageCreate { name } + labels);
event_fields!(images::ImageUpdate { name } + labels);
event_fields!(images::ImageDelete { name });

impl EventFields for ev::ContainerCreate {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => non_empty(&self.id),
            ["image"] => non_empty(&self.image),
            ["runtime", "name"] => non_empty(&self.runtime.as_ref()?.name),
            _ => None,
        }
    }
}

impl EventFields for ev::TaskCreate {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["container_id"] => non_empty(&self.container_id),
            ["bundle"] => non_empty(&self.bundle),
            ["checkpoint"] => non_empty(&self.checkpoint),
            ["io", rest @ ..] => self.io.as_ref()?.field(rest),
            _ => None,
        }
    }
}

impl EventFields for ev::TaskIo {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["stdin"] => non_empty(&self.stdin),
            ["stdout"] => non_empty(&self.stdout),
            ["stderr"] => non_empty(&self.stderr),
            ["terminal"] => Some(self.terminal.to_string()),
            _ => None,
        }
    }
}

type Decoder = fn(&[u8]) -> Option<Box<dyn EventFields>>;

fn decode_as<M: Message + Default + EventFields + 'static>(value: &[u8]) -> Option<Box<dyn EventFields>> {
    M::decode(value).ok().map(|m| Box::new(m) as Box<dyn EventFields>)
}

fn entry<M: Name + Message + Default + EventFields + 'static>() -> (String, Decoder) {
    (M::full_name(), decode_as::<M>)
}

/// Type URL (containerd's: the message's full protobuf name) → decoder.
static DECODERS: LazyLock<HashMap<String, Decoder>> = LazyLock::new(|| {
    HashMap::from([
        entry::<ev::ContainerCreate>(),
        entry::<ev::ContainerUpdate>(),
        entry::<ev::ContainerDelete>(),
        entry::<ev::ContentCreate>(),
        entry::<ev::ContentDelete>(),
        entry::<ev::NamespaceCreate>(),
        entry::<ev::NamespaceUpdate>(),
        entry::<ev::NamespaceDelete>(),
        entry::<ev::SandboxCreate>(),
        entry::<ev::SandboxStart>(),
        entry::<ev::SandboxExit>(),
        entry::<ev::SnapshotPrepare>(),
        entry::<ev::SnapshotCommit>(),
        entry::<ev::SnapshotRemove>(),
        entry::<ev::TaskCreate>(),
        entry::<ev::TaskStart>(),
        entry::<ev::TaskDelete>(),
        entry::<ev::TaskExit>(),
        entry::<ev::TaskOom>(),
        entry::<ev::TaskExecAdded>(),
        entry::<ev::TaskExecStarted>(),
        entry::<ev::TaskPaused>(),
        entry::<ev::TaskResumed>(),
        entry::<ev::TaskCheckpointed>(),
        entry::<images::ImageCreate>(),
        entry::<images::ImageUpdate>(),
        entry::<images::ImageDelete>(),
    ])
});

/// Decodes an event by its type URL (`containerd.events.TaskExit`, with or without a
/// `host/` prefix such as `type.googleapis.com/`).
fn decode(any: &prost_types::Any) -> Option<Box<dyn EventFields>> {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    DECODERS.get(name).and_then(|d| d(&any.value))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;
    use crate::filters;

    fn envelope(topic: &str, type_url: &str, msg: &impl Message) -> Envelope {
        Envelope {
            timestamp: SystemTime::now(),
            namespace: "k8s.io".into(),
            topic: topic.into(),
            event: prost_types::Any {
                type_url: type_url.into(),
                value: msg.encode_to_vec(),
            },
        }
    }

    fn matches(filter: &str, env: &Envelope) -> bool {
        filters::parse(&[filter.to_owned()])
            .unwrap()
            .matches(&EnvelopeFields::new(env))
    }

    #[test]
    fn envelope_fields() {
        let exit = envelope(
            "/tasks/exit",
            "containerd.events.TaskExit",
            &ev::TaskExit {
                container_id: "web".into(),
                id: "web".into(),
                pid: 42,
                exit_status: 1,
                exited_at: None,
            },
        );
        let f = EnvelopeFields::new(&exit);
        assert_eq!(f.field(&["topic"]).as_deref(), Some("/tasks/exit"));
        assert_eq!(f.field(&["namespace"]).as_deref(), Some("k8s.io"));
        assert_eq!(f.field(&["event", "container_id"]).as_deref(), Some("web"));
        assert_eq!(f.field(&["event", "pid"]), None);
        assert_eq!(f.field(&["event"]), None);
        assert_eq!(f.field(&["timestamp"]), None);
        assert!(matches(r#"topic=="/tasks/exit""#, &exit));
        assert!(matches(r#"topic~="^/tasks/""#, &exit));
        assert!(matches("namespace==k8s.io,event.container_id==web", &exit));
        assert!(!matches("namespace==default", &exit));
        assert!(!matches("event.container_id==db", &exit));
    }

    #[test]
    fn type_urls_are_containerds() {
        assert_eq!(ev::TaskOom::full_name(), "containerd.events.TaskOOM");
        assert_eq!(
            images::ImageCreate::full_name(),
            "containerd.services.images.v1.ImageCreate"
        );
        assert!(DECODERS.contains_key("containerd.events.TaskExit"));
        assert_eq!(DECODERS.len(), 27);
    }

    #[test]
    fn nested_and_label_fields() {
        let create = envelope(
            "/containers/create",
            "containerd.events.ContainerCreate",
            &ev::ContainerCreate {
                id: "c1".into(),
                image: "busybox".into(),
                runtime: Some(ev::container_create::Runtime {
                    name: "io.containerd.runc.v2".into(),
                    options: None,
                }),
            },
        );
        assert!(matches("event.runtime.name==io.containerd.runc.v2", &create));
        let update = envelope(
            "/namespaces/update",
            "type.googleapis.com/containerd.events.NamespaceUpdate",
            &ev::NamespaceUpdate {
                name: "ns".into(),
                labels: HashMap::from([("a.b".to_owned(), "c".to_owned())]),
            },
        );
        assert!(matches(r#"event.labels."a.b"==c"#, &update));
        assert!(matches("event.labels.a.b==c", &update));
        assert!(matches("event.name==ns", &update));
    }

    #[test]
    fn unknown_or_undecodable_event_has_no_fields() {
        let mut env = envelope("/x", "example.Unknown", &ev::TaskOom::default());
        assert!(!matches("event.container_id", &env));
        env.event = prost_types::Any {
            type_url: "containerd.events.TaskOOM".into(),
            value: vec![0xff, 0xff, 0xff],
        };
        assert!(!matches("event.container_id", &env));
        assert!(matches(r#"topic=="/x""#, &env));
    }
}
