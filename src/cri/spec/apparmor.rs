//! AppArmor for CRI containers: which profile a container runs under, and loading taskd's
//! default profile.
//!
//! ```text
//! asked for (security_context.apparmor, else the deprecated apparmor_profile string)
//!                       host has AppArmor                      host without AppArmor
//! nothing               taskd-default (none if privileged)     none
//! runtime/default       taskd-default (none if privileged)     InvalidArgument "not supported"
//! unconfined            none                                    none
//! localhost/<name>      <name> if loaded, else InvalidArgument  InvalidArgument "not supported"
//! ```
//!
//! Without AppArmor this is containerd 1.6/1.7's CRI behaviour: a pod that asks for a profile
//! other than unconfined fails CreateContainer rather than running unconfined unnoticed (kubelet
//! itself refuses such pods on a node without AppArmor). "The host has AppArmor" is
//! [`host_enabled`]: `/sys/module/apparmor/parameters/enabled` reads `Y`, the securityfs
//! directory exists and `apparmor_parser` is installed (containerd's own test). `taskd-default` is loaded with `apparmor_parser -Kr` the first time a
//! container needs it (and again if it was unloaded), from [`DEFAULT_PROFILE_TEXT`].

use std::path::Path;

use taskd_proto::cri::v1::LinuxContainerSecurityContext;
use taskd_proto::cri::v1::security_profile::ProfileType;

use super::{SpecError, invalid};

/// The name taskd's default profile is loaded under.
pub const DEFAULT_PROFILE: &str = "taskd-default";

/// What a container's security context asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppArmorRequest {
    /// Nothing set.
    Unspecified,
    Unconfined,
    RuntimeDefault,
    /// A profile loaded on the node, by name.
    Localhost(String),
}

/// Reads the request: `apparmor` (SecurityProfile), else the deprecated `apparmor_profile`
/// string (`runtime/default`, `unconfined`, `localhost/<name>`).
#[allow(deprecated)] // apparmor_profile: older kubelets send it
pub fn request(sec: &LinuxContainerSecurityContext) -> Result<AppArmorRequest, SpecError> {
    const PREFIX: &str = "localhost/";
    let localhost = |field: &'static str, r: &str| {
        let name = r.strip_prefix(PREFIX).unwrap_or(r);
        if name.is_empty() {
            Err(invalid(field, "a Localhost profile needs a profile name"))
        } else {
            Ok(AppArmorRequest::Localhost(name.to_owned()))
        }
    };
    let Some(p) = &sec.apparmor else {
        return match sec.apparmor_profile.as_str() {
            "" => Ok(AppArmorRequest::Unspecified),
            "unconfined" => Ok(AppArmorRequest::Unconfined),
            "runtime/default" => Ok(AppArmorRequest::RuntimeDefault),
            r if r.starts_with(PREFIX) => localhost("security_context.apparmor_profile", r),
            r => Err(invalid(
                "security_context.apparmor_profile",
                format!("{r:?} is not runtime/default, unconfined or localhost/<profile>"),
            )),
        };
    };
    let typ = ProfileType::try_from(p.profile_type).map_err(|_| {
        invalid(
            "security_context.apparmor.profile_type",
            format!("unknown profile type {}", p.profile_type),
        )
    })?;
    match typ {
        ProfileType::Unconfined => Ok(AppArmorRequest::Unconfined),
        ProfileType::RuntimeDefault => Ok(AppArmorRequest::RuntimeDefault),
        ProfileType::Localhost => localhost("security_context.apparmor.localhost_ref", &p.localhost_ref),
    }
}

/// The profile for the spec's `process.apparmorProfile` (see the module table). `host`:
/// whether the host has AppArmor; `loaded`: whether a profile of that name is loaded.
pub fn profile(
    req: &AppArmorRequest,
    privileged: bool,
    host: bool,
    loaded: impl Fn(&str) -> bool,
) -> Result<Option<String>, SpecError> {
    if !host {
        return match req {
            AppArmorRequest::Unspecified | AppArmorRequest::Unconfined => Ok(None),
            AppArmorRequest::RuntimeDefault | AppArmorRequest::Localhost(_) => Err(invalid(
                "security_context.apparmor",
                "AppArmor is not supported on this host (not enabled in the kernel): only unconfined can be asked for",
            )),
        };
    }
    match req {
        AppArmorRequest::Unconfined => Ok(None),
        AppArmorRequest::Unspecified | AppArmorRequest::RuntimeDefault => {
            Ok((!privileged).then(|| DEFAULT_PROFILE.to_owned()))
        }
        AppArmorRequest::Localhost(name) => {
            if loaded(name) {
                Ok(Some(name.clone()))
            } else {
                Err(invalid(
                    "security_context.apparmor.localhost_ref",
                    format!("AppArmor profile {name:?} is not loaded on this host"),
                ))
            }
        }
    }
}

/// Whether the host has AppArmor, as containerd decides it: the module is enabled,
/// securityfs shows it, and `apparmor_parser` is installed (a host with the module but
/// without the tools, such as a minimal Debian image, runs containers unconfined).
pub fn host_enabled() -> bool {
    host_enabled_in(Path::new("/sys"))
        && ["/sbin/apparmor_parser", "/usr/sbin/apparmor_parser"]
            .iter()
            .any(|p| Path::new(p).is_file())
}

fn host_enabled_in(sys: &Path) -> bool {
    std::fs::read(sys.join("module/apparmor/parameters/enabled")).is_ok_and(|b| b.first() == Some(&b'Y'))
        && sys.join("kernel/security/apparmor").is_dir()
}

/// Whether `name` is a loaded profile (`/sys/kernel/security/apparmor/profiles`: one
/// `<name> (<mode>)` line each).
pub fn is_loaded(name: &str) -> bool {
    std::fs::read_to_string("/sys/kernel/security/apparmor/profiles").is_ok_and(|text| listed(&text, name))
}

fn listed(profiles: &str, name: &str) -> bool {
    profiles
        .lines()
        .any(|l| l.rsplit_once(" (").is_some_and(|(n, _)| n == name))
}

/// Loads [`DEFAULT_PROFILE`] unless it is loaded already (`apparmor_parser -Kr`, the profile
/// text written to `dir/taskd-default`). Blocking: run it on the blocking pool.
pub fn ensure_default_loaded(dir: &Path) -> Result<(), SpecError> {
    if is_loaded(DEFAULT_PROFILE) {
        return Ok(());
    }
    let read = |source| SpecError::Read {
        path: dir.join(DEFAULT_PROFILE),
        source,
    };
    std::fs::create_dir_all(dir).map_err(read)?;
    let file = dir.join(DEFAULT_PROFILE);
    std::fs::write(&file, DEFAULT_PROFILE_TEXT).map_err(read)?;
    let out = std::process::Command::new("apparmor_parser")
        .arg("-Kr")
        .arg(&file)
        .output()
        .map_err(read)?;
    if !out.status.success() {
        return Err(invalid(
            "security_context.apparmor",
            format!(
                "apparmor_parser could not load {DEFAULT_PROFILE}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    Ok(())
}

/// taskd's default profile: what a container may do by default, minus mounting, raw kernel
/// and security interfaces, and writes to the host-wide parts of /proc and /sys.
pub const DEFAULT_PROFILE_TEXT: &str = r#"#include <tunables/global>

profile taskd-default flags=(attach_disconnected,mediate_deleted) {
  #include <abstractions/base>

  network,
  capability,
  file,
  umount,
  signal (receive) peer=unconfined,
  signal (send,receive) peer=taskd-default,
  ptrace (trace,read,tracedby,readby) peer=taskd-default,

  deny mount,
  deny pivot_root,

  deny @{PROC}/* w,
  deny @{PROC}/{[^1-9],[^1-9][^0-9],[^1-9s][^0-9y][^0-9s],[^1-9][^0-9][^0-9][^0-9/]*}/** w,
  deny @{PROC}/sys/[^k]** w,
  deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,
  deny @{PROC}/sysrq-trigger rwklx,
  deny @{PROC}/kcore rwklx,
  deny @{PROC}/kmem rwklx,
  deny @{PROC}/mem rwklx,

  deny /sys/[^f]*/** wklx,
  deny /sys/f[^s]*/** wklx,
  deny /sys/fs/[^c]*/** wklx,
  deny /sys/fs/c[^g]*/** wklx,
  deny /sys/fs/cg[^r]*/** wklx,
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
}
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use taskd_proto::cri::v1::SecurityProfile;

    fn sec(apparmor: Option<(ProfileType, &str)>, legacy: &str) -> LinuxContainerSecurityContext {
        #[allow(deprecated)]
        LinuxContainerSecurityContext {
            apparmor: apparmor.map(|(t, r)| SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.to_owned(),
            }),
            apparmor_profile: legacy.to_owned(),
            ..Default::default()
        }
    }

    #[test]
    fn requests_are_read_from_both_fields() {
        use AppArmorRequest::*;
        assert_eq!(request(&sec(None, "")).unwrap(), Unspecified);
        assert_eq!(request(&sec(None, "unconfined")).unwrap(), Unconfined);
        assert_eq!(request(&sec(None, "runtime/default")).unwrap(), RuntimeDefault);
        assert_eq!(
            request(&sec(None, "localhost/my-prof")).unwrap(),
            Localhost("my-prof".into())
        );
        assert!(request(&sec(None, "docker-default")).is_err());
        assert!(request(&sec(None, "localhost/")).is_err());
        // The SecurityProfile field wins over the deprecated string.
        assert_eq!(
            request(&sec(Some((ProfileType::Localhost, "localhost/p")), "unconfined")).unwrap(),
            Localhost("p".into())
        );
        assert_eq!(
            request(&sec(Some((ProfileType::RuntimeDefault, "")), "")).unwrap(),
            RuntimeDefault
        );
        assert!(request(&sec(Some((ProfileType::Localhost, "")), "")).is_err());
    }

    #[test]
    fn with_apparmor_default_localhost_and_unconfined() {
        use AppArmorRequest::*;
        let loaded = |n: &str| n == "my-prof";
        let p = |r: &AppArmorRequest, privileged| profile(r, privileged, true, loaded);
        assert_eq!(
            p(&RuntimeDefault, false).unwrap().as_deref(),
            Some(DEFAULT_PROFILE)
        );
        assert_eq!(p(&Unspecified, false).unwrap().as_deref(), Some(DEFAULT_PROFILE));
        assert_eq!(p(&RuntimeDefault, true).unwrap(), None, "privileged: none");
        assert_eq!(p(&Unconfined, false).unwrap(), None);
        assert_eq!(
            p(&Localhost("my-prof".into()), false).unwrap().as_deref(),
            Some("my-prof")
        );
        assert_eq!(
            p(&Localhost("my-prof".into()), true).unwrap().as_deref(),
            Some("my-prof")
        );
        let e = p(&Localhost("other".into()), false).unwrap_err().to_string();
        assert!(e.contains("\"other\" is not loaded"), "{e}");
    }

    #[test]
    fn without_apparmor_as_containerd() {
        use AppArmorRequest::*;
        let p = |r: &AppArmorRequest| profile(r, false, false, |_| true);
        assert_eq!(p(&Unspecified).unwrap(), None);
        assert_eq!(p(&Unconfined).unwrap(), None);
        for r in [RuntimeDefault, Localhost("x".into())] {
            let e = p(&r).unwrap_err().to_string();
            assert!(e.contains("not supported"), "{r:?}: {e}");
        }
    }

    #[test]
    fn host_detection_and_loaded_profiles() {
        let sys = tempfile::tempdir().unwrap();
        assert!(!host_enabled_in(sys.path()));
        std::fs::create_dir_all(sys.path().join("module/apparmor/parameters")).unwrap();
        std::fs::write(sys.path().join("module/apparmor/parameters/enabled"), "Y\n").unwrap();
        assert!(!host_enabled_in(sys.path()), "securityfs not there");
        std::fs::create_dir_all(sys.path().join("kernel/security/apparmor")).unwrap();
        assert!(host_enabled_in(sys.path()));
        std::fs::write(sys.path().join("module/apparmor/parameters/enabled"), "N\n").unwrap();
        assert!(!host_enabled_in(sys.path()));
        let profiles = "taskd-default (enforce)\n/usr/bin/man (enforce)\nmy prof (complain)\n";
        assert!(listed(profiles, DEFAULT_PROFILE));
        assert!(listed(profiles, "my prof"));
        assert!(!listed(profiles, "taskd"));
    }
}
