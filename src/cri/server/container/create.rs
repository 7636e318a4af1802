//! `CreateContainer`.
//!
//! ```text
//! pod must be Ready; metadata + image required
//! runtime.image(ref)            image config, id, /etc/passwd + /etc/group
//! user (spec::user), devices (stat on the host; a directory: the devices under it;
//! privileged: the host's /dev too), Localhost seccomp profile (read;
//! spec::seccomp::seccomp_choice), TARGET pid (a running container of this pod),
//! hugetlb controller probe, pod files, the pod's user namespace (the container's own
//! userns_options, when given, must be the pod's) → spec::container
//! host sources of propagating mounts shared/slave (propagation.rs)
//! reserve id + name             (store: CREATED; a name in use → AlreadyExists)
//! ContainerIo (fifos → CRI log; a stdin fifo when `stdin`) when the pod has a log directory
//! and the container a log path
//! runtime.create                (record, rootfs, task); failure: io released, record removed
//! GetContainerEvents: CONTAINER_CREATED
//! ```

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use taskd_proto::cri::v1::{
    ContainerEventType, CreateContainerRequest, CreateContainerResponse, NamespaceMode,
};

use crate::cri::backend::contract::CreateContainer;
use crate::cri::error::CriError;
use crate::cri::io::ContainerIo;
use crate::cri::server::ensure_ready;
use crate::cri::server::sandbox::run::new_id;
use crate::cri::service::CriService;
use crate::cri::spec::container::{ContainerInput, container_spec};
use crate::cri::spec::devices::HostDevice;
use crate::cri::spec::mounts::PodFiles;
use crate::cri::spec::resources::{cgroup_v2_host, hugetlb_controller_present};
use crate::cri::spec::seccomp::{SeccompChoice, seccomp_choice};
use crate::cri::spec::{UsernsSpec, user};
use crate::cri::store::container::{Container, ContainerState, Exit, container_name};
use crate::cri::userns;
use crate::images::reference;
use crate::rollback::Rollback;

fn invalid(field: &'static str, reason: impl Into<String>) -> CriError {
    CriError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// A device node of the host as the spec wants it.
fn device_at(m: &std::fs::Metadata, container_path: String, permissions: &str) -> HostDevice {
    let rdev = m.rdev();
    HostDevice {
        container_path,
        char_device: m.file_type().is_char_device(),
        major: nix::sys::stat::major(rdev) as i64,
        minor: nix::sys::stat::minor(rdev) as i64,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        permissions: if permissions.is_empty() {
            "rwm".into()
        } else {
            permissions.to_owned()
        },
    }
}

fn is_device(m: &std::fs::Metadata) -> bool {
    m.file_type().is_char_device() || m.file_type().is_block_device()
}

/// The device nodes under a host directory, recursively, with their paths relative to it
/// (symlinks and other files skipped, directories named in `skip` not entered).
fn devices_under(dir: &Path, rel: &Path, skip: &[&str], out: &mut Vec<(PathBuf, std::fs::Metadata)>) {
    let Ok(entries) = std::fs::read_dir(dir.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Ok(m) = e.metadata() else {
            continue;
        };
        if m.is_dir() {
            if !skip.iter().any(|s| name == *s) {
                devices_under(dir, &rel.join(&name), skip, out);
            }
        } else if is_device(&m) {
            out.push((rel.join(&name), m));
        }
    }
}

/// `stat`s a CRI device on the host (symlinks followed); a directory gives every device
/// under it, at the same place under `container_path` (containerd's `WithDevices`).
fn host_device(d: &taskd_proto::cri::v1::Device) -> Result<Vec<HostDevice>, CriError> {
    if !d.host_path.starts_with('/') {
        return Err(invalid(
            "devices.host_path",
            format!("{:?} must be an absolute path", d.host_path),
        ));
    }
    let m = std::fs::metadata(&d.host_path)
        .map_err(|e| invalid("devices.host_path", format!("{}: {e}", d.host_path)))?;
    let container_path = if d.container_path.is_empty() {
        d.host_path.clone()
    } else {
        d.container_path.clone()
    };
    if is_device(&m) {
        return Ok(vec![device_at(&m, container_path, &d.permissions)]);
    }
    if !m.is_dir() {
        return Err(invalid(
            "devices.host_path",
            format!("{} is neither a device nor a directory", d.host_path),
        ));
    }
    let mut found = Vec::new();
    devices_under(Path::new(&d.host_path), Path::new(""), &[], &mut found);
    Ok(found
        .iter()
        .map(|(rel, m)| {
            device_at(
                m,
                Path::new(&container_path).join(rel).display().to_string(),
                &d.permissions,
            )
        })
        .collect())
}

/// Every device of the host's `/dev` for a privileged container (containerd's
/// `WithHostDevices`, runc's `HostDevices`: not pts, shm, fd, mqueue, the lxc/lxd/udev
/// directories, nor the console), at the same paths, `rwm`.
fn privileged_devices(dev: &Path) -> Vec<HostDevice> {
    let mut found = Vec::new();
    devices_under(
        dev,
        Path::new(""),
        &["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"],
        &mut found,
    );
    found
        .iter()
        .filter(|(rel, _)| rel.as_os_str() != "console")
        .map(|(rel, m)| device_at(m, Path::new("/dev").join(rel).display().to_string(), "rwm"))
        .collect()
}

/// Reads a Localhost seccomp profile (OCI `linux.seccomp` JSON; unknown keys such as a
/// Docker profile's `archMap` are ignored, as containerd's loader does).
fn localhost_profile(path: &Path) -> Result<oci_spec::runtime::LinuxSeccomp, CriError> {
    let bad = |e: &dyn std::fmt::Display| {
        invalid(
            "security_context.seccomp.localhost_ref",
            format!("seccomp profile {}: {e}", path.display()),
        )
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e))?;
    serde_json::from_str(&text).map_err(|e| bad(&e))
}

/// In a user namespace the kernel will not let runc drop the nosuid/nodev/noexec flags of a
/// bind mount's source (they are locked), and runc 1.1 remounts a read-only bind with only
/// the flags the spec names: each read-only bind names its source's flags too.
fn keep_locked_flags(spec: &mut oci_spec::runtime::Spec) {
    use nix::sys::statvfs::{FsFlags, statvfs};
    let Some(mut mounts) = spec.mounts().clone() else {
        return;
    };
    for m in &mut mounts {
        let mut opts = m.options().clone().unwrap_or_default();
        let bind = m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
        if !bind || !opts.iter().any(|o| o == "ro") {
            continue;
        }
        let Some(Ok(st)) = m.source().as_ref().map(statvfs) else {
            continue;
        };
        for (flag, name) in [
            (FsFlags::ST_NOSUID, "nosuid"),
            (FsFlags::ST_NODEV, "nodev"),
            (FsFlags::ST_NOEXEC, "noexec"),
        ] {
            if st.flags().contains(flag) && !opts.iter().any(|o| o == name) {
                opts.push(name.to_owned());
            }
        }
        m.set_options(Some(opts));
    }
    spec.set_mounts(Some(mounts));
}

impl CriService {
    pub async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResponse, CriError> {
        let runner = self.container_runtime("CreateContainer")?;
        let sandbox = self.sandboxes.get(&req.pod_sandbox_id)?;
        ensure_ready(&sandbox)?;
        let cfg = req.config.ok_or_else(|| invalid("config", "must be set"))?;
        let md = cfg
            .metadata
            .clone()
            .ok_or_else(|| invalid("config.metadata", "must be set"))?;
        if md.name.is_empty() {
            return Err(invalid("config.metadata.name", "must not be empty"));
        }
        let image_ref = cfg.image.as_ref().map(|i| i.image.clone()).unwrap_or_default();
        if image_ref.is_empty() {
            return Err(invalid("config.image.image", "must not be empty"));
        }
        if !reference::is_image_id(&image_ref) {
            reference::normalize(&image_ref)?;
        }
        let (handler_name, handler) =
            self.handler(&sandbox.runtime_handler)
                .ok_or_else(|| CriError::UnknownHandler {
                    handler: sandbox.runtime_handler.clone(),
                    known: self.handler_names().join(", "),
                })?;
        let image = runner.image(&image_ref).await?;

        let sec = cfg
            .linux
            .as_ref()
            .and_then(|l| l.security_context.clone())
            .unwrap_or_default();
        let resolved = user::resolve(
            &user::Wanted::of(&sec),
            &image.config.user,
            image.passwd.as_deref(),
            image.group.as_deref(),
        )?;
        let mut devices = Vec::new();
        for d in &cfg.devices {
            devices.extend(host_device(d)?);
        }
        if sec.privileged {
            // The CRI's own devices first; the host's fill in the other paths.
            let given: std::collections::HashSet<String> =
                devices.iter().map(|d| d.container_path.clone()).collect();
            devices.extend(
                privileged_devices(Path::new("/dev"))
                    .into_iter()
                    .filter(|d| !given.contains(&d.container_path)),
            );
        }
        let localhost_seccomp = match seccomp_choice(&sec)? {
            SeccompChoice::Localhost(path) => Some(localhost_profile(&path)?),
            _ => None,
        };
        let apparmor_profile = {
            use crate::cri::spec::apparmor;
            let host = apparmor::host_enabled();
            let profile = apparmor::profile(
                &apparmor::request(&sec)?,
                sec.privileged,
                host,
                apparmor::is_loaded,
            )?;
            if profile.as_deref() == Some(apparmor::DEFAULT_PROFILE) {
                let dir = self.state.join("apparmor");
                crate::cri::error::blocking("load the default AppArmor profile", move || {
                    apparmor::ensure_default_loaded(&dir)
                })
                .await?;
            }
            profile
        };
        let ns = sec.namespace_options.clone().unwrap_or_default();
        let target_pid = if ns.pid == NamespaceMode::Target as i32 {
            if ns.target_id.is_empty() {
                return Err(invalid(
                    "namespace_options.target_id",
                    "pid mode TARGET needs the target container's id",
                ));
            }
            let t = self.containers.get(&ns.target_id)?;
            // As containerd: the target must be a running container of the same pod.
            if t.sandbox_id != sandbox.id {
                return Err(CriError::FailedPrecondition {
                    what: format!("target container {}", t.id),
                    reason: format!("belongs to pod sandbox {}, not {}", t.sandbox_id, sandbox.id),
                });
            }
            if t.state != ContainerState::Running {
                return Err(CriError::FailedPrecondition {
                    what: format!("target container {}", t.id),
                    reason: "is not running".into(),
                });
            }
            Some(t.pid)
        } else {
            None
        };
        let pod_userns = userns::of_pod(&sandbox.config)?;
        // kubelet repeats the pod's user namespace in each container's options; the pod's
        // namespaces belong to it, so a container cannot have another one.
        if ns.userns_options.is_some() && userns::from_options(Some(&ns))? != pod_userns {
            return Err(invalid(
                "namespace_options.userns_options",
                "must be the pod sandbox's user namespace and mappings",
            ));
        }
        let user_pin = userns::pin_path(&self.podns_dir(&sandbox.id))
            .display()
            .to_string();
        let dir = self.sandbox_dir(&sandbox.id);
        let pod_files = PodFiles {
            hosts: Some(dir.join("hosts")).filter(|p| p.exists()),
            resolv_conf: Some(dir.join("resolv.conf")).filter(|p| p.exists()),
            hostname: Some(dir.join("hostname")).filter(|p| p.exists()),
            shm: crate::cri::podfiles::shm_of(&dir),
        };
        let id = new_id();
        let run_user = resolved.clone();
        let spec = container_spec(&ContainerInput {
            id: &id,
            sandbox_id: &sandbox.id,
            config: &cfg,
            sandbox: &sandbox.config,
            image: &image.config,
            image_name: &image.reference,
            sandbox_pid: sandbox.pid,
            pod_ipc_ns: (!sandbox.ipc_ns_path.is_empty()).then_some(sandbox.ipc_ns_path.as_str()),
            pod_uts_ns: (!sandbox.uts_ns_path.is_empty()).then_some(sandbox.uts_ns_path.as_str()),
            netns_path: (!sandbox.netns_path.is_empty()).then_some(sandbox.netns_path.as_str()),
            target_pid,
            user: resolved,
            devices,
            pod_files,
            driver: self.config.cgroup_driver,
            min_oom_score_adj: self.min_oom_score_adj,
            localhost_seccomp,
            apparmor_profile,
            hugetlb_controller: hugetlb_controller_present(),
            cgroup_ns: cgroup_v2_host(),
            all_caps: crate::cri::spec::current_caps(),
            pod_annotations: &handler.pod_annotations,
            container_annotations: &handler.container_annotations,
            recursive_read_only_mounts: self.handler_features(&handler_name).recursive_read_only_mounts,
            userns: pod_userns.map(|map| UsernsSpec { path: &user_pin, map }),
        })?;
        let mut spec = spec;
        if pod_userns.is_some() {
            keep_locked_flags(&mut spec);
        }
        // After the spec, so that a request the CRI API refuses gets InvalidArgument first.
        super::propagation::check_host_sources(&cfg.mounts)?;

        let log_path = if !sandbox.config.log_directory.is_empty() && !cfg.log_path.is_empty() {
            // Relative to the pod's log directory, and staying inside it.
            let rel = std::path::Path::new(&cfg.log_path);
            if rel.is_absolute()
                || rel
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_) | std::path::Component::CurDir))
            {
                return Err(CriError::InvalidArgument {
                    field: "config.log_path",
                    reason: format!(
                        "{:?} must be a relative path inside the pod's log directory",
                        cfg.log_path
                    ),
                });
            }
            PathBuf::from(&sandbox.config.log_directory).join(rel)
        } else {
            PathBuf::new()
        };
        let record = Container {
            id: id.clone(),
            name: container_name(
                &md.name,
                &sandbox.pod_name,
                &sandbox.pod_namespace,
                &sandbox.pod_uid,
                md.attempt,
            ),
            sandbox_id: sandbox.id.clone(),
            labels: cfg.labels.clone(),
            annotations: cfg.annotations.clone(),
            image: image.reference.clone(),
            image_ref: image.id.clone(),
            log_path: log_path.display().to_string(),
            created_at: SystemTime::now(),
            started_at: None,
            state: ContainerState::Created,
            pid: 0,
            exit: Exit::default(),
            log: None,
            user: Some(run_user),
            config: cfg.clone(),
        };
        self.containers.add(record)?;
        let mut rollback = Rollback::new(format!("create container {id}"));
        rollback.defer("remove the container's directory", || {
            let dir = self.container_dir(&id);
            async move {
                match std::fs::remove_dir_all(dir) {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    r => r,
                }
            }
        });
        rollback.defer("forget the container record", || async {
            self.containers.remove(&id);
            Ok(())
        });

        // With a tty the shim copies the console to stdout (stderr stays unused).
        let io = if log_path.as_os_str().is_empty() {
            None
        } else {
            match ContainerIo::create(
                &self.container_dir(&id).join("io"),
                &log_path,
                self.config.max_container_log_line_size,
                Duration::from_millis(self.config.log_partial_flush_ms),
                cfg.stdin,
            ) {
                Ok(io) => Some(io),
                Err(e) => {
                    rollback.undo().await;
                    return Err(e.into());
                }
            }
        };
        let (stdin, stdout, stderr) = io
            .as_ref()
            .map(|io| {
                (
                    io.stdin
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    io.stdout.display().to_string(),
                    io.stderr.display().to_string(),
                )
            })
            .unwrap_or_default();
        let created = runner
            .create(CreateContainer {
                id: id.clone(),
                sandbox_id: sandbox.id.clone(),
                image,
                spec,
                handler: handler.clone(),
                stdin,
                stdout,
                stderr,
                terminal: cfg.tty,
            })
            .await;
        if let Err(e) = created {
            if let Some(mut io) = io {
                io.release().await;
            }
            rollback.undo().await;
            return Err(e);
        }
        rollback.disarm();
        if let Some(mut io) = io {
            io.started();
            let log = io.log().clone();
            let _ = self.containers.update(&id, |c| {
                c.log = Some(log);
                Ok(())
            });
            self.ios
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(id.clone(), io);
        }
        self.emit_container_event(&id, &sandbox.id, ContainerEventType::ContainerCreatedEvent);
        tracing::info!(container = %id, pod = %sandbox.id, "container created");
        Ok(CreateContainerResponse { container_id: id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[ignore = "e2e: needs root (bind mounts)"]
    fn read_only_binds_name_their_sources_locked_flags() {
        crate::e2e_guard::require(&[crate::e2e_guard::Need::Root]);
        let bind = |src: &str, ro: &str| {
            let mut m = oci_spec::runtime::Mount::default();
            m.set_destination("/x".into())
                .set_typ(Some("bind".into()))
                .set_source(Some(src.into()))
                .set_options(Some(vec!["rbind".into(), ro.into()]));
            m
        };
        use nix::mount::{MntFlags, MsFlags, mount, umount2};
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().display().to_string();
        mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .unwrap();
        let mut spec = oci_spec::runtime::Spec::default();
        spec.set_mounts(Some(vec![bind(&src, "ro"), bind(&src, "rw")]));
        keep_locked_flags(&mut spec);
        umount2(dir.path(), MntFlags::MNT_DETACH).unwrap();
        let opts: Vec<Vec<String>> = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.options().clone().unwrap())
            .collect();
        assert_eq!(opts[0], ["rbind", "ro", "nosuid", "nodev", "noexec"]);
        assert_eq!(opts[1], ["rbind", "rw"], "a read-write bind is not remounted");
    }

    #[test]
    fn devices_from_the_host() {
        let dev = |host: &str, container: &str, perms: &str| taskd_proto::cri::v1::Device {
            container_path: container.into(),
            host_path: host.into(),
            permissions: perms.into(),
        };
        let null = host_device(&dev("/dev/null", "/dev/mynull", "rw")).unwrap();
        assert_eq!(
            (
                null[0].container_path.as_str(),
                null[0].char_device,
                null[0].major,
                null[0].minor,
                null[0].permissions.as_str()
            ),
            ("/dev/mynull", true, 1, 3, "rw")
        );
        assert_eq!(
            host_device(&dev("/dev/null", "", "")).unwrap()[0].container_path,
            "/dev/null"
        );
        assert_eq!(
            host_device(&dev("/dev/null", "", "")).unwrap()[0].permissions,
            "rwm"
        );
        for (bad, why) in [
            ("dev/null", "absolute"),
            ("/no/such/device", "No such file"),
            ("/proc/self/status", "neither a device"),
        ] {
            let e = host_device(&dev(bad, "", "")).unwrap_err().to_string();
            assert!(e.contains("devices.host_path") && e.contains(why), "{bad}: {e}");
        }

        // A directory: its devices, recursively, under the container path; other files
        // and symlinks are not devices. (A fixture of real nodes needs root: mknod.)
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub/pts")).unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        std::os::unix::fs::symlink("/dev/null", dir.path().join("link")).unwrap();
        let mknod = |p: &str, major, minor| {
            nix::sys::stat::mknod(
                &dir.path().join(p),
                nix::sys::stat::SFlag::S_IFCHR,
                nix::sys::stat::Mode::from_bits_truncate(0o600),
                nix::sys::stat::makedev(major, minor),
            )
        };
        if mknod("a", 1, 3).is_err() {
            eprintln!("devices_from_the_host: mknod needs root; the directory part is skipped");
            return;
        }
        mknod("sub/b", 1, 5).unwrap();
        mknod("sub/pts/0", 136, 0).unwrap();
        mknod("console", 5, 1).unwrap();
        let root = dir.path().display().to_string();
        let mut paths: Vec<String> = host_device(&dev(&root, "/dev/in", "r"))
            .unwrap()
            .into_iter()
            .map(|d| format!("{} {}:{} {}", d.container_path, d.major, d.minor, d.permissions))
            .collect();
        paths.sort();
        assert_eq!(
            paths,
            [
                "/dev/in/a 1:3 r",
                "/dev/in/console 5:1 r",
                "/dev/in/sub/b 1:5 r",
                "/dev/in/sub/pts/0 136:0 r"
            ]
        );
        // As a privileged container's /dev: no pts, no console, all rwm.
        let mut paths: Vec<String> = privileged_devices(dir.path())
            .into_iter()
            .map(|d| format!("{} {}", d.container_path, d.permissions))
            .collect();
        paths.sort();
        assert_eq!(paths, ["/dev/a rwm", "/dev/sub/b rwm"]);
    }
}
