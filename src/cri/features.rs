//! What each runtime handler can do, probed once when the CRI plugin starts and reported in
//! `Status` (`runtime_handlers[].features`), which recent kubelets read to turn pod features
//! on or off. A feature reported true works end to end; anything not probed true is false.
//!
//! ```text
//! recursive_read_only_mounts   the handler runs runc (a runc shim: io.containerd.taskd.v2 or .runc.v2) whose
//!                              `runc features` lists the `rro` mount option, and the kernel has
//!                              mount_setattr(2) (5.12+), which `rro` needs
//! user_namespaces              the handler runs runc whose `runc features` lists the `user`
//!                              namespace, and taskd could create a user namespace with a
//!                              mapping and a netns it owns (`cri/userns.rs` probe: the
//!                              kernel has them and lets root use them). Pods get it with
//!                              their mapping; rootfs = a per-pod remapped image copy, volumes
//!                              plain bind mounts (no idmapped mounts: runc 1.1 has none)
//! ```
//!
//! The runc binary is the handler's `BinaryName` option, else `runc` on PATH, as the shim
//! picks it. `runc features` runs with a 5 s bound; a runc without the subcommand (before
//! 1.1) has no `rro` either.

use std::collections::HashMap;
use std::time::Duration;

use super::config::{CriConfig, RuntimeHandler};

/// One handler's features.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandlerFeatures {
    pub recursive_read_only_mounts: bool,
    pub user_namespaces: bool,
}

/// Probes every handler of `config` (the default handler answers to "" too).
pub async fn probe(config: &CriConfig) -> HashMap<String, HandlerFeatures> {
    let kernel_rro = kernel_has_mount_setattr();
    let kernel_userns = match tokio::task::spawn_blocking(super::userns::probe).await {
        Ok(Ok(())) => true,
        Ok(Err(error)) => {
            tracing::info!(%error, "cannot create a user namespace: no user namespaces for pods");
            false
        }
        Err(error) => {
            tracing::warn!(%error, "user namespace probe panicked: no user namespaces for pods");
            false
        }
    };
    let mut out = HashMap::new();
    for (name, h) in &config.runtimes {
        let runc = runc_binary(h);
        let features = match &runc {
            Some(bin) => runc_features(bin).await,
            None => RuncFeatures::default(),
        };
        let runc_rro = features.mount_options.iter().any(|o| o == "rro");
        let runc_userns = features.linux.namespaces.iter().any(|n| n == "user");
        let f = HandlerFeatures {
            recursive_read_only_mounts: runc_rro && kernel_rro,
            user_namespaces: runc_userns && kernel_userns,
        };
        tracing::info!(
            handler = %name,
            runc = ?runc,
            runc_rro,
            kernel_mount_setattr = kernel_rro,
            runc_userns,
            kernel_userns,
            recursive_read_only_mounts = f.recursive_read_only_mounts,
            user_namespaces = f.user_namespaces,
            "runtime handler features"
        );
        out.insert(name.clone(), f);
    }
    out
}

/// The runc a runc-shim handler runs; None for other runtimes.
fn runc_binary(h: &RuntimeHandler) -> Option<String> {
    if !crate::cri::config::is_runc(&h.runtime_type) {
        return None;
    }
    Some(
        h.options
            .get("BinaryName")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .unwrap_or("runc")
            .to_owned(),
    )
}

/// What taskd reads of `<runc> features` (empty when it fails).
async fn runc_features(bin: &str) -> RuncFeatures {
    let run = tokio::process::Command::new(bin)
        .arg("features")
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(out)) if out.status.success() => parse_features(&out.stdout),
        Ok(Ok(out)) => {
            tracing::info!(runc = bin, status = %out.status, "`runc features` failed: no rro, no userns");
            RuncFeatures::default()
        }
        Ok(Err(e)) => {
            tracing::info!(runc = bin, error = %e, "`runc features` did not run: no rro, no userns");
            RuncFeatures::default()
        }
        Err(_) => {
            tracing::warn!(runc = bin, "`runc features` took over 5 s: no rro, no userns");
            RuncFeatures::default()
        }
    }
}

#[derive(Debug, Default, serde::Deserialize)]
struct RuncFeatures {
    #[serde(rename = "mountOptions", default)]
    mount_options: Vec<String>,
    #[serde(default)]
    linux: RuncLinuxFeatures,
}

#[derive(Debug, Default, serde::Deserialize)]
struct RuncLinuxFeatures {
    #[serde(default)]
    namespaces: Vec<String>,
}

fn parse_features(features_json: &[u8]) -> RuncFeatures {
    serde_json::from_slice(features_json).unwrap_or_default()
}

/// Whether the kernel has mount_setattr(2): called with a bad fd, it fails with EBADF (or
/// EINVAL) when it exists and ENOSYS when it does not.
fn kernel_has_mount_setattr() -> bool {
    // SAFETY: no pointer is dereferenced for an invalid fd; the path is a valid C string.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            -1,
            c"".as_ptr(),
            0,
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_handlers_name_their_binary() {
        let mut h = RuntimeHandler::default();
        assert_eq!(runc_binary(&h).as_deref(), Some("runc"));
        h.options.insert("BinaryName".into(), "/opt/runc".into());
        assert_eq!(runc_binary(&h).as_deref(), Some("/opt/runc"));
        h.runtime_type = "io.containerd.kata.v2".into();
        assert_eq!(runc_binary(&h), None);
    }

    #[test]
    fn mount_options_and_namespaces_come_from_the_features_json() {
        let json = br#"{"ociVersionMin":"1.0.0","mountOptions":["ro","rro","rbind"],
            "linux":{"namespaces":["ipc","user"]}}"#;
        let f = parse_features(json);
        assert_eq!(f.mount_options, ["ro", "rro", "rbind"]);
        assert_eq!(f.linux.namespaces, ["ipc", "user"]);
        assert!(parse_features(b"not json").mount_options.is_empty());
        assert!(parse_features(b"{}").linux.namespaces.is_empty());
    }

    #[tokio::test]
    async fn a_missing_runc_has_no_features() {
        let mut c = CriConfig::default().with_default_runtimes();
        c.runtimes
            .get_mut("runc")
            .unwrap()
            .options
            .insert("BinaryName".into(), "/nonexistent/runc".into());
        assert_eq!(probe(&c).await["runc"], HandlerFeatures::default());
    }
}
