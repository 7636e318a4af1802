//! The pause container's spec.
//!
//! ```text
//! process   image entrypoint+cmd (default /pause), image env, uid/gid from the pod's
//!           run_as_user/run_as_group (default 0), default caps, no_new_privileges,
//!           oom_score_adj -998 clamped to taskd's own
//! root      rootfs, read-only
//! hostname  the pod's hostname (not with host networking: the host's UTS is kept)
//! ns        mount always new; network: the pinned netns (absent = host); pid/ipc new
//!           unless NODE; uts new unless host networking
//! linux     sysctls, cgroupsPath from the pod's cgroup_parent, cpu shares 2
//! mounts    defaults; host IPC also binds the host's /dev/shm
//! ```

use std::collections::HashMap;

use oci_spec::runtime::{LinuxCpu, LinuxNamespaceType, LinuxResources, Mount, Process, Root, Spec, User};
use taskd_proto::cri::v1::{NamespaceMode, PodSandboxConfig};

use super::{SpecError, annotations as a, caps_all_sets, cgroups_path, default_caps, invalid, namespace};
use crate::cri::config::CgroupDriver;
use crate::cri::store::image::ImageConfig;

/// containerd's `defaultSandboxOOMAdj` and `defaultSandboxCPUshares`.
const SANDBOX_OOM_SCORE_ADJ: i32 = -998;
const SANDBOX_CPU_SHARES: u64 = 2;

/// What the pause container's spec is made of.
pub struct SandboxInput<'a> {
    pub id: &'a str,
    pub config: &'a PodSandboxConfig,
    pub image: &'a ImageConfig,
    /// The pinned netns; None with host networking.
    pub netns_path: Option<&'a str>,
    pub driver: CgroupDriver,
    /// taskd's own oom_score_adj: nothing taskd starts goes below it.
    pub min_oom_score_adj: i32,
    /// The handler's `pod_annotations` patterns: the pod annotations the spec may carry.
    pub pod_annotations: &'a [String],
    /// The pod's user namespace (None: the host's).
    pub userns: Option<super::UsernsSpec<'a>>,
}

/// The namespace modes a pod asked for (network, pid, ipc).
pub fn pod_namespace_modes(config: &PodSandboxConfig) -> (NamespaceMode, NamespaceMode, NamespaceMode) {
    let opts = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .and_then(|s| s.namespace_options.as_ref());
    let mode = |v: Option<i32>| {
        v.and_then(|v| NamespaceMode::try_from(v).ok())
            .unwrap_or(NamespaceMode::Pod)
    };
    (
        mode(opts.map(|o| o.network)),
        mode(opts.map(|o| o.pid)),
        mode(opts.map(|o| o.ipc)),
    )
}

/// Builds the pause container's spec.
pub fn sandbox_spec(inp: &SandboxInput<'_>) -> Result<Spec, SpecError> {
    let cfg = inp.config;
    let md = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "must be set"))?;
    let (net_mode, pid_mode, ipc_mode) = pod_namespace_modes(cfg);
    let host_net = net_mode == NamespaceMode::Node;
    if !host_net && inp.netns_path.is_none() {
        return Err(invalid(
            "netns",
            "a pod without host networking needs its network namespace",
        ));
    }
    let linux_cfg = cfg.linux.clone().unwrap_or_default();
    let sec = linux_cfg.security_context.clone().unwrap_or_default();

    let mut spec = Spec::default();
    spec.set_hostname(if host_net {
        None
    } else {
        Some(cfg.hostname.clone())
    });

    let mut args: Vec<String> = inp
        .image
        .entrypoint
        .iter()
        .chain(inp.image.cmd.iter())
        .cloned()
        .collect();
    if args.is_empty() {
        args.push("/pause".to_owned());
    }
    let mut process = Process::default();
    let mut user = User::default();
    let uid = sec.run_as_user.map(|v| v.value).unwrap_or(0);
    let gid = sec.run_as_group.map(|v| v.value).unwrap_or(0);
    user.set_uid(super::user::to_id("security_context.run_as_user", uid)?)
        .set_gid(super::user::to_id("security_context.run_as_group", gid)?)
        .set_additional_gids(Some(
            sec.supplemental_groups
                .iter()
                .map(|g| super::user::to_id("security_context.supplemental_groups", *g))
                .collect::<Result<_, _>>()?,
        ));
    let mut env = vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned()];
    env.extend(inp.image.env.iter().filter(|e| !e.starts_with("PATH=")).cloned());
    if let Some(p) = inp.image.env.iter().find(|e| e.starts_with("PATH=")) {
        env[0] = p.clone();
    }
    process
        .set_args(Some(args))
        .set_env(Some(env))
        .set_cwd(if inp.image.working_dir.is_empty() {
            "/".into()
        } else {
            inp.image.working_dir.clone().into()
        })
        .set_user(user)
        .set_no_new_privileges(Some(true))
        .set_capabilities(Some(caps_all_sets(default_caps())))
        .set_oom_score_adj(Some(SANDBOX_OOM_SCORE_ADJ.max(inp.min_oom_score_adj)));
    spec.set_process(Some(process));

    let mut root = Root::default();
    root.set_path("rootfs".into()).set_readonly(Some(true));
    spec.set_root(Some(root));

    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !host_net {
        namespaces.push(namespace(LinuxNamespaceType::Network, inp.netns_path));
        namespaces.push(namespace(LinuxNamespaceType::Uts, None));
    }
    if pid_mode != NamespaceMode::Node {
        namespaces.push(namespace(LinuxNamespaceType::Pid, None));
    }
    if ipc_mode != NamespaceMode::Node {
        namespaces.push(namespace(LinuxNamespaceType::Ipc, None));
    }

    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    if ipc_mode == NamespaceMode::Node {
        mounts.retain(|m| m.destination().as_os_str() != "/dev/shm");
        let mut shm = Mount::default();
        shm.set_destination("/dev/shm".into())
            .set_typ(Some("bind".into()))
            .set_source(Some("/dev/shm".into()))
            .set_options(Some(vec!["rbind".into(), "ro".into()]));
        mounts.push(shm);
    }
    spec.set_mounts(Some(mounts));

    let mut cpu = LinuxCpu::default();
    cpu.set_shares(Some(SANDBOX_CPU_SHARES));
    let mut resources = LinuxResources::default();
    resources.set_cpu(Some(cpu));

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    super::join_userns(linux, &mut namespaces, inp.userns);
    linux
        .set_namespaces(Some(namespaces))
        .set_sysctl(Some(linux_cfg.sysctls.clone()))
        .set_cgroups_path(Some(
            cgroups_path(inp.driver, &linux_cfg.cgroup_parent, inp.id).into(),
        ))
        .set_resources(Some(resources));
    if sec.privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
    }

    let mut ann: HashMap<String, String> =
        super::passthrough_annotations(&cfg.annotations, inp.pod_annotations).collect();
    ann.insert(a::CONTAINER_TYPE.into(), a::TYPE_SANDBOX.into());
    ann.insert(a::SANDBOX_ID.into(), inp.id.into());
    ann.insert(a::SANDBOX_NAME.into(), md.name.clone());
    ann.insert(a::SANDBOX_NAMESPACE.into(), md.namespace.clone());
    ann.insert(a::SANDBOX_UID.into(), md.uid.clone());
    ann.insert(a::SANDBOX_LOG_DIR.into(), cfg.log_directory.clone());
    spec.set_annotations(Some(ann));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskd_proto::cri::v1::{
        Int64Value, LinuxPodSandboxConfig, LinuxSandboxSecurityContext, NamespaceOption, PodSandboxMetadata,
    };

    fn pod(net: NamespaceMode, pid: NamespaceMode, ipc: NamespaceMode) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: "web".into(),
                uid: "u1".into(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: "web-host".into(),
            log_directory: "/var/log/pods/x".into(),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: "/kubepods/besteffort/podu1".into(),
                sysctls: [("net.ipv4.ip_unprivileged_port_start".to_owned(), "0".to_owned())].into(),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: net as i32,
                        pid: pid as i32,
                        ipc: ipc as i32,
                        ..Default::default()
                    }),
                    run_as_user: Some(Int64Value { value: 65535 }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ns_types(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| (n.typ(), n.path().as_ref().map(|p| p.display().to_string())))
            .collect()
    }

    #[test]
    fn pod_network_namespace_hostname_sysctls_cgroups() {
        let cfg = pod(NamespaceMode::Pod, NamespaceMode::Container, NamespaceMode::Pod);
        let spec = sandbox_spec(&SandboxInput {
            id: "sb1",
            config: &cfg,
            image: &ImageConfig::default(),
            netns_path: Some("/run/taskd/netns/cni-1"),
            driver: CgroupDriver::Cgroupfs,
            min_oom_score_adj: -999,
            pod_annotations: &[],
            userns: None,
        })
        .unwrap();
        let ns = ns_types(&spec);
        assert!(ns.contains(&(LinuxNamespaceType::Network, Some("/run/taskd/netns/cni-1".into()))));
        assert!(ns.contains(&(LinuxNamespaceType::Uts, None)));
        assert!(ns.contains(&(LinuxNamespaceType::Pid, None)));
        assert!(!ns.iter().any(|n| n.0 == LinuxNamespaceType::Cgroup));
        assert_eq!(spec.hostname().as_deref(), Some("web-host"));
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/pause"]);
        assert_eq!(p.user().uid(), 65535);
        assert_eq!(p.oom_score_adj(), Some(-998));
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap().display().to_string(),
            "/kubepods/besteffort/podu1/sb1"
        );
        assert_eq!(
            linux.sysctl().as_ref().unwrap()["net.ipv4.ip_unprivileged_port_start"],
            "0"
        );
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());
        let ann = spec.annotations().as_ref().unwrap();
        assert_eq!(ann[a::CONTAINER_TYPE], "sandbox");
        assert_eq!(ann[a::SANDBOX_ID], "sb1");
    }

    #[test]
    fn host_modes_keep_host_namespaces() {
        let cfg = pod(NamespaceMode::Node, NamespaceMode::Node, NamespaceMode::Node);
        let spec = sandbox_spec(&SandboxInput {
            id: "sb2",
            config: &cfg,
            image: &ImageConfig {
                entrypoint: vec!["/custom-pause".into()],
                ..Default::default()
            },
            netns_path: None,
            driver: CgroupDriver::Systemd,
            min_oom_score_adj: 0,
            pod_annotations: &[],
            userns: None,
        })
        .unwrap();
        let ns = ns_types(&spec);
        assert_eq!(ns, [(LinuxNamespaceType::Mount, None)]);
        assert!(spec.hostname().is_none());
        assert_eq!(
            spec.process().as_ref().unwrap().oom_score_adj(),
            Some(0),
            "never below taskd's own"
        );
        assert!(
            spec.mounts()
                .as_ref()
                .unwrap()
                .iter()
                .any(|m| m.destination().as_os_str() == "/dev/shm"
                    && m.source().as_ref().is_some_and(|s| s.as_os_str() == "/dev/shm"))
        );
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .cgroups_path()
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
            "/kubepods/besteffort/podu1:taskd:sb2"
        );
    }

    #[test]
    fn only_allowed_pod_annotations_reach_the_spec() {
        let mut cfg = pod(NamespaceMode::Pod, NamespaceMode::Container, NamespaceMode::Pod);
        cfg.annotations = [
            ("org.systemd.property.CPUQuota", "1%"),
            ("io.containerd.runc.v2.group", "other-pod"),
            ("example.com/trace", "on"),
            ("example.com/deep/key", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let annotations = |allowed: &[String]| {
            let spec = sandbox_spec(&SandboxInput {
                id: "sb1",
                config: &cfg,
                image: &ImageConfig::default(),
                netns_path: Some("/run/taskd/netns/cni-1"),
                driver: CgroupDriver::Cgroupfs,
                min_oom_score_adj: 0,
                pod_annotations: allowed,
                userns: None,
            })
            .unwrap();
            let mut keys: Vec<String> = spec.annotations().clone().unwrap().into_keys().collect();
            keys.retain(|k| !k.starts_with("io.kubernetes.cri."));
            keys.sort();
            keys
        };
        assert!(annotations(&[]).is_empty(), "nothing passes by default");
        assert_eq!(
            annotations(&["example.com/*".into()]),
            ["example.com/trace"],
            "* stops at /"
        );
        assert_eq!(
            annotations(&[
                "org.systemd.property.*".into(),
                "io.containerd.runc.v2.group".into()
            ]),
            ["io.containerd.runc.v2.group", "org.systemd.property.CPUQuota"]
        );
    }

    #[test]
    fn missing_metadata_or_netns_is_invalid() {
        let mut cfg = pod(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod);
        let inp = |cfg: &PodSandboxConfig, ns: Option<&'static str>| {
            sandbox_spec(&SandboxInput {
                id: "x",
                config: cfg,
                image: &ImageConfig::default(),
                netns_path: ns,
                driver: CgroupDriver::Cgroupfs,
                min_oom_score_adj: 0,
                pod_annotations: &[],
                userns: None,
            })
            .map(|_| ())
        };
        assert!(inp(&cfg, None).unwrap_err().to_string().contains("netns"));
        cfg.metadata = None;
        assert!(
            inp(&cfg, Some("/x"))
                .unwrap_err()
                .to_string()
                .contains("metadata")
        );
    }
}
