//! The RuntimeDefault seccomp profile: deny by default, as containerd's.
//!
//! The profile is data, `seccomp_default.json` beside this file, built into the binary. Its
//! shape is containerd's default profile with conditions:
//!
//! ```text
//! defaultAction SCMP_ACT_ERRNO (EPERM)   every syscall no rule allows (new ones included)
//! architectures {<Rust target arch>: [SCMP_ARCH_…]}   the host's entry is used
//! syscalls      [{names, action, args?, errnoRet?, includes?, excludes?}]
//!               includes/excludes: {arches: [Rust arch], caps: [CAP_…], minKernel: "4.8"}
//!               a rule applies when every `includes` condition holds and no `excludes`
//!               condition does (caps: the container's bounding set holds one of them)
//! ```
//!
//! What it allows: containerd's allow list, per-architecture additions, syscalls guarded by
//! a capability when the container holds it, `personality` with the five personas glibc
//! and old binaries use, `clone` without namespace flags (all of `clone` with CAP_SYS_ADMIN),
//! `clone3` → ENOSYS without CAP_SYS_ADMIN so glibc falls back to `clone`.
//!
//! Where it differs from containerd 1.6's list, as later containerd and moby releases do:
//! the `io_uring_*` calls are not allowed (a large kernel attack surface that seccomp cannot
//! filter by argument), and `socket` is allowed for every family but AF_VSOCK (40), which
//! reaches the host's hypervisor services.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use oci_spec::runtime::{Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSyscall};
use serde::Deserialize;
use taskd_proto::cri::v1::LinuxContainerSecurityContext;
use taskd_proto::cri::v1::security_profile::ProfileType;

use super::{SpecError, capability, invalid};

const PROFILE_JSON: &str = include_str!("seccomp_default.json");

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Profile {
    default_action: LinuxSeccompAction,
    default_errno_ret: Option<u32>,
    architectures: std::collections::HashMap<String, Vec<Arch>>,
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
struct Rule {
    #[serde(flatten)]
    syscall: LinuxSyscall,
    #[serde(default)]
    includes: Condition,
    #[serde(default)]
    excludes: Condition,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Condition {
    #[serde(default)]
    arches: Vec<String>,
    #[serde(default)]
    caps: Vec<String>,
    min_kernel: Option<String>,
}

/// What a rule's conditions are checked against.
struct Host<'a> {
    arch: &'a str,
    kernel: (u32, u32),
    caps: &'a HashSet<Capability>,
}

impl Condition {
    fn holds_all(&self, h: &Host) -> bool {
        (self.arches.is_empty() || self.arches.iter().any(|a| a == h.arch))
            && (self.caps.is_empty() || self.held_cap(h))
            && self
                .min_kernel
                .as_deref()
                .is_none_or(|v| kernel_at_least(h.kernel, v))
    }

    fn holds_any(&self, h: &Host) -> bool {
        self.arches.iter().any(|a| a == h.arch)
            || self.held_cap(h)
            || self
                .min_kernel
                .as_deref()
                .is_some_and(|v| kernel_at_least(h.kernel, v))
    }

    fn held_cap(&self, h: &Host) -> bool {
        self.caps
            .iter()
            .any(|c| capability(c).is_ok_and(|c| h.caps.contains(&c)))
    }
}

fn kernel_at_least(have: (u32, u32), want: &str) -> bool {
    parse_kernel(want).is_some_and(|w| have >= w)
}

/// `major.minor` of a kernel release (`6.1.0-13-amd64` → (6, 1)).
fn parse_kernel(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .trim_end_matches(|c: char| !c.is_ascii_digit())
        .parse()
        .ok()?;
    Some((major, minor))
}

fn host_kernel() -> (u32, u32) {
    static KERNEL: OnceLock<(u32, u32)> = OnceLock::new();
    *KERNEL.get_or_init(|| {
        nix::sys::utsname::uname()
            .ok()
            .and_then(|u| parse_kernel(&u.release().to_string_lossy()))
            .unwrap_or((0, 0))
    })
}

fn profile() -> &'static Profile {
    static PROFILE: OnceLock<Profile> = OnceLock::new();
    // The file is part of the binary and a unit test parses it: it cannot fail at run time.
    PROFILE.get_or_init(|| {
        serde_json::from_str(PROFILE_JSON).unwrap_or_else(|e| panic!("seccomp_default.json: {e}"))
    })
}

/// The RuntimeDefault profile for a container whose bounding set is `caps`.
pub fn runtime_default(caps: &HashSet<Capability>) -> LinuxSeccomp {
    build(
        profile(),
        &Host {
            arch: std::env::consts::ARCH,
            kernel: host_kernel(),
            caps,
        },
    )
}

fn build(p: &Profile, h: &Host) -> LinuxSeccomp {
    let syscalls: Vec<LinuxSyscall> = p
        .syscalls
        .iter()
        .filter(|r| r.includes.holds_all(h) && !r.excludes.holds_any(h))
        .map(|r| r.syscall.clone())
        .collect();
    let mut s = LinuxSeccomp::default();
    s.set_default_action(p.default_action)
        .set_default_errno_ret(p.default_errno_ret)
        .set_architectures(p.architectures.get(h.arch).cloned())
        .set_syscalls(Some(syscalls));
    s
}

/// The seccomp profile a container runs under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SeccompChoice {
    Unconfined,
    RuntimeDefault,
    /// A profile file on the node (OCI `linux.seccomp` JSON), by absolute path.
    Localhost(PathBuf),
}

/// The seccomp profile of a security context, read as containerd's CRI plugin does:
/// `seccomp`, else the deprecated `seccomp_profile_path` (`runtime/default`,
/// `docker/default`, `unconfined`, `localhost/<path>`), else unconfined; always unconfined
/// when privileged (a Localhost file is then not even read). A `localhost_ref` may carry the
/// `localhost/` prefix; it must name an absolute path, and only a Localhost profile has one.
#[allow(deprecated)] // seccomp_profile_path: kubelet no longer sends it, older clients do
pub fn seccomp_choice(sec: &LinuxContainerSecurityContext) -> Result<SeccompChoice, SpecError> {
    const PREFIX: &str = "localhost/";
    if sec.privileged {
        return Ok(SeccompChoice::Unconfined);
    }
    let localhost = |field: &'static str, r: &str| {
        let path = PathBuf::from(r.strip_prefix(PREFIX).unwrap_or(r));
        if path.is_absolute() {
            Ok(SeccompChoice::Localhost(path))
        } else {
            Err(invalid(field, format!("{r:?} must be an absolute path")))
        }
    };
    let Some(p) = &sec.seccomp else {
        return match sec.seccomp_profile_path.as_str() {
            "" | "unconfined" => Ok(SeccompChoice::Unconfined),
            "runtime/default" | "docker/default" => Ok(SeccompChoice::RuntimeDefault),
            r if r.starts_with(PREFIX) => localhost("security_context.seccomp_profile_path", r),
            r => Err(invalid(
                "security_context.seccomp_profile_path",
                format!("{r:?} is not runtime/default, docker/default, unconfined or localhost/<path>"),
            )),
        };
    };
    let typ = ProfileType::try_from(p.profile_type).map_err(|_| {
        invalid(
            "security_context.seccomp.profile_type",
            format!("unknown profile type {}", p.profile_type),
        )
    })?;
    if typ != ProfileType::Localhost && !p.localhost_ref.is_empty() {
        return Err(invalid(
            "security_context.seccomp.localhost_ref",
            "must only be set with profile_type Localhost",
        ));
    }
    match typ {
        ProfileType::Unconfined => Ok(SeccompChoice::Unconfined),
        ProfileType::RuntimeDefault => Ok(SeccompChoice::RuntimeDefault),
        ProfileType::Localhost => localhost("security_context.seccomp.localhost_ref", &p.localhost_ref),
    }
}

/// A container's `linux.seccomp`: none when unconfined (always for a privileged container),
/// the RuntimeDefault profile for its capabilities, or the Localhost profile the caller read.
pub fn container_seccomp(
    sec: &LinuxContainerSecurityContext,
    caps: &HashSet<Capability>,
    localhost: Option<&LinuxSeccomp>,
) -> Result<Option<LinuxSeccomp>, SpecError> {
    Ok(match seccomp_choice(sec)? {
        SeccompChoice::Unconfined => None,
        SeccompChoice::RuntimeDefault => Some(runtime_default(caps)),
        SeccompChoice::Localhost(path) => Some(localhost.cloned().ok_or_else(|| {
            invalid(
                "security_context.seccomp.localhost_ref",
                format!("profile {} not loaded", path.display()),
            )
        })?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::spec::default_caps;
    use oci_spec::runtime::LinuxSeccompOperator;

    fn host(arch: &'static str, caps: &HashSet<Capability>) -> LinuxSeccomp {
        build(
            profile(),
            &Host {
                arch,
                kernel: (6, 1),
                caps,
            },
        )
    }

    fn allowed(s: &LinuxSeccomp, name: &str) -> Vec<LinuxSyscall> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.action() == LinuxSeccompAction::ScmpActAllow && r.names().iter().any(|n| n == name))
            .cloned()
            .collect()
    }

    fn unconditional(s: &LinuxSeccomp, name: &str) -> bool {
        allowed(s, name)
            .iter()
            .any(|r| r.args().as_ref().is_none_or(std::vec::Vec::is_empty))
    }

    #[test]
    fn deny_by_default_with_the_hosts_architectures() {
        let s = host("x86_64", &default_caps());
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(libc::EPERM as u32));
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        let arm = host("aarch64", &default_caps());
        assert_eq!(
            arm.architectures().as_deref(),
            Some(&[Arch::ScmpArchArm, Arch::ScmpArchAarch64][..])
        );
        assert!(unconditional(&arm, "set_tls") && !unconditional(&arm, "arch_prctl"));
        assert!(unconditional(&s, "arch_prctl") && !unconditional(&s, "set_tls"));
    }

    #[test]
    fn the_default_set_gets_the_allow_list_and_nothing_guarded() {
        let s = host("x86_64", &default_caps());
        for call in [
            "read",
            "write",
            "execve",
            "openat",
            "futex",
            "exit_group",
            "ptrace",
            "chown",
        ] {
            assert!(unconditional(&s, call), "{call} allowed");
        }
        for call in [
            "io_uring_setup",
            "keyctl",
            "unshare",
            "mount",
            "setns",
            "kexec_load",
            "reboot",
            "bpf",
            "init_module",
            "open_by_handle_at",
        ] {
            assert!(allowed(&s, call).is_empty(), "{call} not allowed");
        }
        // socket: every family but AF_VSOCK.
        let socket = allowed(&s, "socket");
        let a = &socket[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (a.index(), a.value(), a.op()),
            (0, 40, LinuxSeccompOperator::ScmpCmpNe)
        );
        // personality: only the listed personas.
        let personas: Vec<u64> = allowed(&s, "personality")
            .iter()
            .map(|r| r.args().as_ref().unwrap()[0].value())
            .collect();
        assert_eq!(personas, [0, 8, 0x20000, 0x20008, 0xffff_ffff]);
        // clone: without namespace flags; clone3: ENOSYS so glibc falls back to clone.
        let clone = allowed(&s, "clone");
        assert_eq!(clone.len(), 1);
        let a = &clone[0].args().as_ref().unwrap()[0];
        assert_eq!(
            (a.index(), a.value(), a.value_two(), a.op()),
            (0, 0x7E02_0000, Some(0), LinuxSeccompOperator::ScmpCmpMaskedEq)
        );
        let clone3: Vec<_> = s
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|r| r.names().iter().any(|n| n == "clone3"))
            .collect();
        assert_eq!(clone3.len(), 1);
        assert_eq!(
            (clone3[0].action(), clone3[0].errno_ret()),
            (LinuxSeccompAction::ScmpActErrno, Some(libc::ENOSYS as u32))
        );
    }

    #[test]
    fn capabilities_unlock_their_syscalls() {
        let mut caps = default_caps();
        caps.insert(Capability::SysAdmin);
        caps.insert(Capability::SysTime);
        let s = host("x86_64", &caps);
        for call in ["mount", "unshare", "setns", "clone3", "settimeofday"] {
            assert!(unconditional(&s, call), "{call} allowed with its capability");
        }
        // With CAP_SYS_ADMIN: clone without a flags rule, clone3 allowed, no ENOSYS rule.
        assert!(
            s.syscalls()
                .as_ref()
                .unwrap()
                .iter()
                .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow)
        );
        assert!(allowed(&s, "reboot").is_empty());
    }

    #[test]
    fn s390x_clone_flags_are_the_second_argument() {
        let s = host("s390x", &default_caps());
        let clone = allowed(&s, "clone");
        assert_eq!(clone.len(), 1);
        assert_eq!(clone[0].args().as_ref().unwrap()[0].index(), 1);
    }

    #[test]
    fn kernel_conditions() {
        assert_eq!(parse_kernel("6.18.44-fc-v1272"), Some((6, 18)));
        assert_eq!(parse_kernel("4.19.0-27-amd64"), Some((4, 19)));
        assert_eq!(parse_kernel("junk"), None);
        let old = build(
            profile(),
            &Host {
                arch: "x86_64",
                kernel: (4, 4),
                caps: &default_caps(),
            },
        );
        assert!(
            allowed(&old, "ptrace").is_empty(),
            "ptrace needs 4.8 (seccomp bypass before)"
        );
    }
}
