//! OCI runtime specs for pod sandboxes (the pause container) and containers, built from the
//! CRI configs and the image config. Pure functions: everything they need from the host
//! (netns path, sandbox pid, the image's /etc/passwd) is passed in, so they are unit-tested.
//!
//! ```text
//! sandbox_spec(SandboxInput)      pause process, hostname, sysctls, namespaces (host modes),
//!                                 cgroup parent, read-only rootfs, CRI annotations
//! container_spec(ContainerInput)  process (image entrypoint/cmd ⊕ CRI command/args, env,
//!                                 cwd, user), mounts, devices, resources, security context,
//!                                 namespaces joined from the sandbox by mode (POD/CONTAINER/
//!                                 NODE/TARGET), CRI annotations
//! ```

pub mod apparmor;
pub mod container;
pub mod devices;
pub mod mounts;
pub mod resources;
pub mod sandbox;
pub mod seccomp;
pub mod user;

use std::collections::{HashMap, HashSet};
use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxCapabilities, LinuxNamespace, LinuxNamespaceType, Spec};

use crate::cri::config::CgroupDriver;
use crate::errdefs::{ErrorKind, Kind};

/// The `Any` type URL containerd stores specs under.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// CRI annotations the runc shim and tools read (containerd's `annotations` package).
pub mod annotations {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const TYPE_SANDBOX: &str = "sandbox";
    pub const TYPE_CONTAINER: &str = "container";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_LOG_DIR: &str = "io.kubernetes.cri.sandbox-log-directory";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
}

/// The annotations of `from` whose key matches one of `patterns`: a handler's
/// `pod_annotations` / `container_annotations` (containerd's passthrough annotations, matched
/// as Go's `filepath.Match`: `*` and `?` do not cross a `/`). Everything else stays out of the
/// OCI spec, where the runtime would read it.
pub fn passthrough_annotations(
    from: &HashMap<String, String>,
    patterns: &[String],
) -> impl Iterator<Item = (String, String)> {
    let patterns: Vec<glob::Pattern> = patterns
        .iter()
        .filter_map(|p| glob::Pattern::new(p).ok())
        .collect();
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    from.iter()
        .filter(move |(k, _)| patterns.iter().any(|p| p.matches_with(k, opts)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect::<Vec<_>>()
        .into_iter()
}

/// containerd's default capability set for unprivileged containers.
pub const DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Errors building a spec; each names the CRI field.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("user {user:?} not found in the image's /etc/passwd")]
    UnknownUser { user: String },
    #[error("group {group:?} not found in the image's /etc/group")]
    UnknownGroup { group: String },
    #[error("read {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("encode the runtime spec: {0}")]
    Encode(#[from] serde_json::Error),
}

impl ErrorKind for SpecError {
    fn kind(&self) -> Kind {
        match self {
            SpecError::Invalid { .. } | SpecError::UnknownUser { .. } | SpecError::UnknownGroup { .. } => {
                Kind::InvalidArgument
            }
            SpecError::Read { .. } | SpecError::Encode(_) => Kind::Internal,
        }
    }
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// The spec as containerd stores it in a container record.
pub fn to_any(spec: &Spec) -> Result<prost_types::Any, SpecError> {
    Ok(prost_types::Any {
        type_url: SPEC_TYPE_URL.to_owned(),
        value: serde_json::to_vec(spec)?,
    })
}

/// `linux.cgroupsPath` for a pod or container: cgroupfs `<parent>/<id>`; systemd
/// `<parent slice>:taskd:<id>` (runc's `slice:prefix:name` form).
pub fn cgroups_path(driver: CgroupDriver, parent: &str, id: &str) -> String {
    match driver {
        CgroupDriver::Cgroupfs => {
            let parent = parent.trim_end_matches('/');
            if parent.is_empty() {
                format!("/taskd/{id}")
            } else {
                format!("{parent}/{id}")
            }
        }
        CgroupDriver::Systemd => {
            let slice = if parent.is_empty() { "system.slice" } else { parent };
            format!("{slice}:taskd:{id}")
        }
    }
}

/// Parses a CRI capability name (`NET_ADMIN` or `CAP_NET_ADMIN`, any case).
pub fn capability(name: &str) -> Result<Capability, SpecError> {
    let upper = name.to_ascii_uppercase();
    // oci-spec parses names without the prefix (`NET_ADMIN`).
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| invalid("capabilities", format!("unknown capability {name:?}")))
}

/// Every capability the kernel headers know (privileged containers, `add: ALL`).
pub fn all_caps() -> HashSet<Capability> {
    strum_like::ALL
        .iter()
        .filter_map(|c| capability(c).ok())
        .collect()
}

/// The capability names, for `ALL` (kept here to not depend on oci-spec's strum), in the
/// kernel's order: a name's index is its capability number (`CapEff` bits).
mod strum_like {
    pub const ALL: &[&str] = &[
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];
}

/// The capabilities of a `/proc/<pid>/status` mask (`CapEff: 000001ffffffffff`).
pub fn caps_from_mask(mask: u64) -> HashSet<Capability> {
    strum_like::ALL
        .iter()
        .enumerate()
        .filter(|(bit, _)| mask & (1u64 << bit) != 0)
        .filter_map(|(_, c)| capability(c).ok())
        .collect()
}

/// What taskd itself may hand out: its effective capabilities (containerd's
/// `WithAllCurrentCapabilities`, for privileged containers and `add: ALL`), read once; every
/// known one if `/proc/self/status` cannot be read. A capability outside the daemon's own
/// set would make runc fail the container ("unable to apply caps").
pub fn current_caps() -> &'static HashSet<Capability> {
    static CURRENT: std::sync::OnceLock<HashSet<Capability>> = std::sync::OnceLock::new();
    CURRENT.get_or_init(|| {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            })
            .map(caps_from_mask)
            .unwrap_or_else(all_caps)
    })
}

/// The same set in every capability list runc reads (ambient stays empty, as containerd).
pub fn caps_all_sets(set: HashSet<Capability>) -> LinuxCapabilities {
    let mut c = LinuxCapabilities::default();
    c.set_bounding(Some(set.clone()))
        .set_effective(Some(set.clone()))
        .set_permitted(Some(set))
        .set_inheritable(None)
        .set_ambient(None);
    c
}

/// The default set as capabilities.
pub fn default_caps() -> HashSet<Capability> {
    DEFAULT_CAPS.iter().filter_map(|c| capability(c).ok()).collect()
}

/// The pod's user namespace as a spec carries it: the pinned namespace (joined, never
/// created by runc) and its mappings (runc 1.1 wants them with the path too).
#[derive(Debug, Clone, Copy)]
pub struct UsernsSpec<'a> {
    pub path: &'a str,
    pub map: crate::cri::userns::PodUserns,
}

/// Joins the pod's user namespace: first in `namespaces` (runc joins it before the others,
/// which it owns) and the mappings in `linux`.
pub fn join_userns(
    linux: &mut oci_spec::runtime::Linux,
    namespaces: &mut Vec<LinuxNamespace>,
    userns: Option<UsernsSpec<'_>>,
) {
    let Some(u) = userns else {
        return;
    };
    namespaces.insert(0, namespace(LinuxNamespaceType::User, Some(u.path)));
    linux
        .set_uid_mappings(Some(vec![u.map.uid.to_oci()]))
        .set_gid_mappings(Some(vec![u.map.gid.to_oci()]));
}

/// A namespace entry (`path` None: a new namespace).
pub fn namespace(typ: LinuxNamespaceType, path: Option<&str>) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ).set_path(path.map(Into::into));
    ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroups_paths_per_driver() {
        assert_eq!(
            cgroups_path(CgroupDriver::Cgroupfs, "/kubepods/pod1", "abc"),
            "/kubepods/pod1/abc"
        );
        assert_eq!(cgroups_path(CgroupDriver::Cgroupfs, "", "abc"), "/taskd/abc");
        assert_eq!(
            cgroups_path(CgroupDriver::Systemd, "kubepods-pod1.slice", "abc"),
            "kubepods-pod1.slice:taskd:abc"
        );
    }

    #[test]
    fn capability_names() {
        assert_eq!(capability("net_admin").unwrap(), Capability::NetAdmin);
        assert_eq!(capability("CAP_SYS_ADMIN").unwrap(), Capability::SysAdmin);
        assert!(capability("FLY").unwrap_err().to_string().contains("FLY"));
        assert!(all_caps().len() >= 40);
        assert_eq!(caps_from_mask(0x1ff_ffff_ffff), all_caps());
        // Bit 24 (CAP_SYS_RESOURCE) missing, as on a host whose bounding set lacks it.
        let some = caps_from_mask(0x1ff_feff_ffff);
        assert!(!some.contains(&Capability::SysResource) && some.contains(&Capability::SysAdmin));
        assert_eq!(some.len(), all_caps().len() - 1);
        assert_eq!(
            caps_from_mask(1 << 21 | 1),
            [Capability::SysAdmin, Capability::Chown].into_iter().collect()
        );
        assert_eq!(default_caps().len(), DEFAULT_CAPS.len());
    }
}
