//! Filter adaptors (containerd's `core/metadata/adaptors.go`): which field paths a List
//! filter can name on each object. An absent or empty field is "not present", so
//! `image==""` never matches but `!image`-style presence checks work as in containerd.
//!
//! | object    | fields                                                                    |
//! |-----------|---------------------------------------------------------------------------|
//! | container | `id`, `image`, `runtime.name`, `snapshotter`, `snapshot_key`, `sandbox`, `labels.KEY` |
//! | lease     | `id`, `labels.KEY`                                                        |
//! | namespace | `name`, `labels.KEY`                                                      |
//!
//! `labels.KEY` joins the remaining path with `.`, so `labels.a.b` and `labels."a.b"` name the
//! same label.

use std::collections::BTreeMap;

use super::model::{Container, Lease, Namespace};
use crate::filters::Adaptor;

fn present(v: &str) -> Option<String> {
    (!v.is_empty()).then(|| v.to_owned())
}

fn label(labels: &BTreeMap<String, String>, rest: &[&str]) -> Option<String> {
    if rest.is_empty() {
        return None;
    }
    labels.get(&rest.join(".")).cloned()
}

/// Filter view of a [`Container`].
pub struct ContainerFields<'a>(pub &'a Container);

impl Adaptor for ContainerFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        let c = self.0;
        match path {
            ["id"] => present(&c.id),
            ["image"] => present(&c.image),
            ["runtime", "name"] => present(&c.runtime.name),
            ["snapshotter"] => present(&c.snapshotter),
            ["snapshot_key" | "snapshotkey"] => present(&c.snapshot_key),
            ["sandbox"] => present(&c.sandbox),
            ["labels", rest @ ..] => label(&c.labels, rest),
            _ => None,
        }
    }
}

/// Filter view of a [`Lease`].
pub struct LeaseFields<'a>(pub &'a Lease);

impl Adaptor for LeaseFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => present(&self.0.id),
            ["labels", rest @ ..] => label(&self.0.labels, rest),
            _ => None,
        }
    }
}

/// Filter view of a [`Namespace`].
pub struct NamespaceFields<'a>(pub &'a Namespace);

impl Adaptor for NamespaceFields<'_> {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["name"] => present(&self.0.name),
            ["labels", rest @ ..] => label(&self.0.labels, rest),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errdefs::{ErrorKind, Kind};
    use crate::filters;
    use crate::metadata::model::Runtime;

    fn c(id: &str, image: &str, runtime: &str, labels: &[(&str, &str)]) -> Container {
        Container {
            id: id.into(),
            image: image.into(),
            runtime: Runtime {
                name: runtime.into(),
                options: None,
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    fn matching(filters: &[&str], all: &[Container]) -> Vec<String> {
        let f: Vec<String> = filters.iter().map(std::string::ToString::to_string).collect();
        let f = filters::parse(&f).unwrap();
        all.iter()
            .filter(|c| f.matches(&ContainerFields(c)))
            .map(|c| c.id.clone())
            .collect()
    }

    #[test]
    fn container_filters_follow_containerd() {
        let all = vec![
            c(
                "web",
                "docker.io/library/nginx:1",
                "io.containerd.runc.v2",
                &[("app", "web"), ("io.k8s.pod", "p1")],
            ),
            c(
                "db",
                "docker.io/library/postgres:16",
                "io.containerd.runc.v2",
                &[("app", "db")],
            ),
            c("job", "", "io.containerd.runsc.v1", &[]),
        ];
        assert_eq!(matching(&[], &all), ["web", "db", "job"]);
        assert_eq!(matching(&["id==web"], &all), ["web"]);
        assert_eq!(matching(&["id!=web"], &all), ["db", "job"]);
        assert_eq!(matching(&[r#"labels."app"==db"#], &all), ["db"]);
        assert_eq!(matching(&[r#"labels."io.k8s.pod"==p1"#], &all), ["web"]);
        assert_eq!(matching(&["labels.io.k8s.pod==p1"], &all), ["web"]);
        assert_eq!(matching(&["labels.app"], &all), ["web", "db"]);
        assert_eq!(matching(&[r"image~=^docker\.io/library/n"], &all), ["web"]);
        assert_eq!(matching(&["image"], &all), ["web", "db"]);
        assert_eq!(matching(&["runtime.name==io.containerd.runsc.v1"], &all), ["job"]);
        // `,` is AND, several filters are OR.
        assert_eq!(matching(&["labels.app==web,id==db"], &all), Vec::<String>::new());
        assert_eq!(matching(&["labels.app==web,id==web"], &all), ["web"]);
        assert_eq!(matching(&["id==job", "labels.app==db"], &all), ["db", "job"]);
        assert_eq!(matching(&["nosuchfield==x"], &all), Vec::<String>::new());
    }

    #[test]
    fn bad_filter_is_invalid_argument_naming_the_filter() {
        let err = filters::parse(&["image~=(".into()]).unwrap_err();
        let err = crate::metadata::error::MetadataError::from(err);
        assert_eq!(err.kind(), Kind::InvalidArgument);
        assert!(err.to_string().contains("filter"), "{err}");
    }

    #[test]
    fn lease_and_namespace_fields() {
        let l = Lease {
            id: "l1".into(),
            created_at: None,
            labels: [("containerd.io/gc.expire".to_string(), "x".to_string())].into(),
        };
        assert_eq!(LeaseFields(&l).field(&["id"]).as_deref(), Some("l1"));
        assert_eq!(
            LeaseFields(&l)
                .field(&["labels", "containerd.io/gc.expire"])
                .as_deref(),
            Some("x")
        );
        assert_eq!(LeaseFields(&l).field(&["labels"]), None);
        let n = Namespace {
            name: "k8s.io".into(),
            labels: BTreeMap::new(),
        };
        assert_eq!(NamespaceFields(&n).field(&["name"]).as_deref(), Some("k8s.io"));
        assert_eq!(NamespaceFields(&n).field(&["labels", "x"]), None);
    }
}
