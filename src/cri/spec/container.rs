//! A container's spec. This file builds the process and the namespaces and puts the
//! parts together; the other concerns have a file each: `mounts.rs`, `devices.rs`,
//! `resources.rs` (and the host's cgroup probes), `seccomp.rs` (which profile, and
//! RuntimeDefault), `apparmor.rs`, `user.rs`.
//!
//! ```text
//! process  args: CRI command+args | image entrypoint + CRI args | entrypoint + cmd
//!          env: image env, CRI envs override by key; cwd: CRI > image > "/"
//!          user: resolved by user.rs; tty; oom_score_adj ≥ taskd's own
//!          caps: defaults ± add/drop (ALL: taskd's own set); privileged = taskd's own set
//!          no_new_privs; seccomp (RuntimeDefault, Unconfined, Localhost; the deprecated
//!          seccomp_profile_path too; none if privileged); AppArmor profile as chosen by
//!          apparmor.rs
//! mounts   defaults, then the pod's /etc/hosts, /etc/resolv.conf, /etc/hostname,
//!          then CRI mounts (rbind, ro, propagation; selinux_relabel ignored); a CRI
//!          mount replaces a default at the same destination; rootfs propagation rshared
//!          with a BIDIRECTIONAL mount, else rslave with a HOST_TO_CONTAINER one;
//!          recursive_read_only adds runc's `rro` (only readonly, PRIVATE, and where the
//!          handler supports it)
//! devices  CRI devices (resolved on the host by the caller) + cgroup allow rules
//! ns       mount new; net + uts from the sandbox (host: none); ipc POD → sandbox's,
//!          NODE → host; pid POD → sandbox's, CONTAINER → new, NODE → host, TARGET →
//!          the target container's
//! linux    resources (cpu shares/quota/period, cpuset, memory, hugepages when the host has
//!          the hugetlb controller, unified),
//!          cgroupsPath under the pod's parent, masked/readonly paths (none if privileged)
//! ```

use std::collections::{HashMap, HashSet};

use oci_spec::runtime::{
    Capability, LinuxNamespace, LinuxNamespaceType, LinuxSeccomp, Process, Root, Spec, User,
};
use taskd_proto::cri::v1::{
    ContainerConfig, LinuxContainerResources, LinuxContainerSecurityContext, NamespaceMode, NamespaceOption,
    PodSandboxConfig,
};

use super::devices::{HostDevice, container_devices};
use super::mounts::{PodFiles, RootfsPropagation, container_mounts};
use super::resources::container_resources;
use super::sandbox::pod_namespace_modes;
use super::seccomp::container_seccomp;
use super::user::ResolvedUser;
use super::{
    SpecError, annotations as a, capability, caps_all_sets, cgroups_path, default_caps, invalid, namespace,
};
use crate::cri::config::CgroupDriver;
use crate::cri::store::image::ImageConfig;

/// What a container's spec is made of.
pub struct ContainerInput<'a> {
    pub id: &'a str,
    pub sandbox_id: &'a str,
    pub config: &'a ContainerConfig,
    pub sandbox: &'a PodSandboxConfig,
    pub image: &'a ImageConfig,
    pub image_name: &'a str,
    /// The pause process (0: the pod has none).
    pub sandbox_pid: u32,
    /// The pinned IPC and UTS namespaces of a pod without a pause process (used instead of
    /// `/proc/<sandbox_pid>/ns/…`).
    pub pod_ipc_ns: Option<&'a str>,
    pub pod_uts_ns: Option<&'a str>,
    /// The pod's netns (None with host networking).
    pub netns_path: Option<&'a str>,
    /// The init pid of `namespace_options.target_id` (pid mode TARGET).
    pub target_pid: Option<u32>,
    pub user: ResolvedUser,
    pub devices: Vec<HostDevice>,
    pub pod_files: PodFiles,
    pub driver: CgroupDriver,
    pub min_oom_score_adj: i32,
    /// A Localhost seccomp profile, already read and parsed by the caller.
    pub localhost_seccomp: Option<LinuxSeccomp>,
    /// The AppArmor profile (`process.apparmorProfile`), chosen and loaded by the caller
    /// ([`super::apparmor::profile`]).
    pub apparmor_profile: Option<String>,
    /// What a privileged container or `add: ALL` gets ([`super::current_caps`]: taskd's own).
    pub all_caps: &'a HashSet<Capability>,
    /// The host has the hugetlb cgroup controller ([`super::resources::hugetlb_controller_present`]); without
    /// it hugepage limits are skipped, as containerd does by default.
    pub hugetlb_controller: bool,
    /// The handler's `pod_annotations` and `container_annotations` patterns: the pod's and
    /// the container's annotations the spec may carry.
    pub pod_annotations: &'a [String],
    pub container_annotations: &'a [String],
    /// The handler supports `rro` ([`crate::cri::features`]).
    pub recursive_read_only_mounts: bool,
    /// The host is cgroup v2 ([`super::resources::cgroup_v2_host`]): the container gets a private cgroup
    /// namespace (`/proc/self/cgroup` reads `0::/`, `/sys/fs/cgroup` is its own cgroup), a
    /// privileged one too; on v1 it shares the host's, as containerd does.
    pub cgroup_ns: bool,
    /// The pod's user namespace (None: the host's).
    pub userns: Option<super::UsernsSpec<'a>>,
}

/// The process args (see the module docs); empty is an error.
pub fn process_args(config: &ContainerConfig, image: &ImageConfig) -> Result<Vec<String>, SpecError> {
    let args: Vec<String> = if !config.command.is_empty() {
        config.command.iter().chain(config.args.iter()).cloned().collect()
    } else if !config.args.is_empty() {
        image
            .entrypoint
            .iter()
            .chain(config.args.iter())
            .cloned()
            .collect()
    } else {
        image.entrypoint.iter().chain(image.cmd.iter()).cloned().collect()
    };
    if args.is_empty() {
        return Err(invalid(
            "config.command",
            "no command given and the image has neither entrypoint nor cmd",
        ));
    }
    Ok(args)
}

/// Image env then CRI envs, a later key replacing an earlier one in place.
pub fn merge_env(image: &[String], cri: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut put = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_owned();
        match out.iter_mut().find(|e| e.split('=').next() == Some(key.as_str())) {
            Some(slot) => *slot = kv,
            None => out.push(kv),
        }
    };
    for e in image {
        put(e.clone());
    }
    for (k, v) in cri {
        put(format!("{k}={v}"));
    }
    if !out.iter().any(|e| e.starts_with("PATH=")) {
        out.insert(
            0,
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    out
}

/// Builds a container's spec.
pub fn container_spec(inp: &ContainerInput<'_>) -> Result<Spec, SpecError> {
    let cfg = inp.config;
    let md = cfg
        .metadata
        .as_ref()
        .ok_or_else(|| invalid("config.metadata", "must be set"))?;
    let linux_cfg = cfg.linux.clone().unwrap_or_default();
    let sec = linux_cfg.security_context.clone().unwrap_or_default();
    let res = linux_cfg.resources.clone().unwrap_or_default();
    // As containerd: a privileged container only in a privileged pod.
    let pod_privileged = inp
        .sandbox
        .linux
        .as_ref()
        .and_then(|l| l.security_context.as_ref())
        .is_some_and(|s| s.privileged);
    if sec.privileged && !pod_privileged {
        return Err(invalid(
            "security_context.privileged",
            "a privileged container needs a privileged pod sandbox",
        ));
    }
    let (pod_net, _, _) = pod_namespace_modes(inp.sandbox);
    let host_net = pod_net == NamespaceMode::Node;
    let ns_opts = sec.namespace_options.clone().unwrap_or_default();
    let mode = |v: i32| NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod);

    let mut spec = Spec::default();
    spec.set_hostname(None);

    let (process, caps) = process(inp, &sec, &res)?;
    spec.set_process(Some(process));

    let mut root = Root::default();
    root.set_path("rootfs".into())
        .set_readonly(Some(sec.readonly_rootfs));
    spec.set_root(Some(root));

    let defaults = spec.mounts().clone().unwrap_or_default();
    let (mounts, rootfs_propagation) = container_mounts(
        defaults,
        &cfg.mounts,
        &inp.pod_files,
        &sec,
        mode(ns_opts.ipc),
        inp.recursive_read_only_mounts,
    )?;
    spec.set_mounts(Some(mounts));

    let mut namespaces = namespaces(inp, &ns_opts, host_net)?;

    let (devices, dev_rules) = container_devices(&inp.devices, sec.privileged)?;
    let resources = container_resources(&res, inp.hugetlb_controller, dev_rules);
    let seccomp = container_seccomp(&sec, &caps, inp.localhost_seccomp.as_ref())?;

    let linux = spec.linux_mut().get_or_insert_with(Default::default);
    super::join_userns(linux, &mut namespaces, inp.userns);
    linux
        .set_namespaces(Some(namespaces))
        .set_devices((!devices.is_empty()).then_some(devices))
        .set_resources(Some(resources))
        .set_seccomp(seccomp)
        .set_cgroups_path(Some(
            cgroups_path(
                inp.driver,
                &inp.sandbox
                    .linux
                    .as_ref()
                    .map(|l| l.cgroup_parent.clone())
                    .unwrap_or_default(),
                inp.id,
            )
            .into(),
        ));
    match rootfs_propagation {
        RootfsPropagation::Private => {}
        RootfsPropagation::Slave => {
            linux.set_rootfs_propagation(Some("rslave".into()));
        }
        RootfsPropagation::Shared => {
            linux.set_rootfs_propagation(Some("rshared".into()));
        }
    }
    if sec.privileged {
        linux.set_masked_paths(None).set_readonly_paths(None);
    } else {
        if !sec.masked_paths.is_empty() {
            linux.set_masked_paths(Some(sec.masked_paths.clone()));
        }
        if !sec.readonly_paths.is_empty() {
            linux.set_readonly_paths(Some(sec.readonly_paths.clone()));
        }
    }

    let mut ann: HashMap<String, String> =
        super::passthrough_annotations(&inp.sandbox.annotations, inp.pod_annotations)
            .chain(super::passthrough_annotations(
                &cfg.annotations,
                inp.container_annotations,
            ))
            .collect();
    ann.insert(a::CONTAINER_TYPE.into(), a::TYPE_CONTAINER.into());
    ann.insert(a::SANDBOX_ID.into(), inp.sandbox_id.into());
    ann.insert(a::CONTAINER_NAME.into(), md.name.clone());
    ann.insert(a::IMAGE_NAME.into(), inp.image_name.into());
    if let Some(m) = &inp.sandbox.metadata {
        ann.insert(a::SANDBOX_NAME.into(), m.name.clone());
        ann.insert(a::SANDBOX_NAMESPACE.into(), m.namespace.clone());
        ann.insert(a::SANDBOX_UID.into(), m.uid.clone());
    }
    spec.set_annotations(Some(ann));
    Ok(spec)
}

/// The container's process: args, env, cwd, user, capabilities (returned as well: the
/// RuntimeDefault seccomp profile follows them), no_new_privs, oom_score_adj, AppArmor.
fn process(
    inp: &ContainerInput<'_>,
    sec: &LinuxContainerSecurityContext,
    res: &LinuxContainerResources,
) -> Result<(Process, HashSet<Capability>), SpecError> {
    let cfg = inp.config;
    let envs: Vec<(String, String)> = cfg
        .envs
        .iter()
        .map(|kv| (kv.key.clone(), String::from_utf8_lossy(&kv.value).into_owned()))
        .collect();
    let cwd = if !cfg.working_dir.is_empty() {
        cfg.working_dir.clone()
    } else if !inp.image.working_dir.is_empty() {
        inp.image.working_dir.clone()
    } else {
        "/".to_owned()
    };
    let mut user = User::default();
    user.set_uid(inp.user.uid)
        .set_gid(inp.user.gid)
        .set_additional_gids(Some(inp.user.additional_gids.clone()));
    let caps = if sec.privileged {
        inp.all_caps.clone()
    } else {
        let mut set = default_caps();
        let c = sec.capabilities.clone().unwrap_or_default();
        if c.drop_capabilities.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
            set.clear();
        }
        if c.add_capabilities.iter().any(|d| d.eq_ignore_ascii_case("ALL")) {
            set = inp.all_caps.clone();
        }
        for add in c
            .add_capabilities
            .iter()
            .filter(|d| !d.eq_ignore_ascii_case("ALL"))
        {
            set.insert(capability(add)?);
        }
        for drop in c
            .drop_capabilities
            .iter()
            .filter(|d| !d.eq_ignore_ascii_case("ALL"))
        {
            set.remove(&capability(drop)?);
        }
        set
    };
    let oom = i32::try_from(res.oom_score_adj)
        .map_err(|_| {
            invalid(
                "resources.oom_score_adj",
                format!("{} is out of range", res.oom_score_adj),
            )
        })?
        .max(inp.min_oom_score_adj);
    let mut process = Process::default();
    process
        .set_args(Some(process_args(cfg, inp.image)?))
        .set_env(Some(merge_env(&inp.image.env, &envs)))
        .set_cwd(cwd.into())
        .set_terminal(Some(cfg.tty))
        .set_user(user)
        .set_no_new_privileges(Some(sec.no_new_privs))
        .set_capabilities(Some(caps_all_sets(caps.clone())))
        .set_oom_score_adj(Some(oom))
        .set_apparmor_profile(inp.apparmor_profile.clone());
    Ok((process, caps))
}

/// The container's namespaces: a new mount namespace; the pod's network and UTS (none with
/// host networking); IPC and PID by mode; a private cgroup namespace on cgroup v2.
fn namespaces(
    inp: &ContainerInput<'_>,
    ns_opts: &NamespaceOption,
    host_net: bool,
) -> Result<Vec<LinuxNamespace>, SpecError> {
    let mode = |v: i32| NamespaceMode::try_from(v).unwrap_or(NamespaceMode::Pod);
    let proc_ns = |pid: u32, ns: &str| format!("/proc/{pid}/ns/{ns}");
    // The pod's shared namespace `ns`: its pinned file, else the pause process's.
    let pod_ns = |pinned: Option<&str>, ns: &str| match pinned {
        Some(p) => Ok(p.to_owned()),
        None if inp.sandbox_pid > 0 => Ok(proc_ns(inp.sandbox_pid, ns)),
        None => Err(invalid(
            "namespace_options",
            format!("the pod has no shared {ns} namespace (it runs without a pause container)"),
        )),
    };
    let mut namespaces = vec![namespace(LinuxNamespaceType::Mount, None)];
    if !host_net {
        let netns = inp
            .netns_path
            .ok_or_else(|| invalid("netns", "the pod has no network namespace"))?;
        namespaces.push(namespace(LinuxNamespaceType::Network, Some(netns)));
        namespaces.push(namespace(
            LinuxNamespaceType::Uts,
            Some(&pod_ns(inp.pod_uts_ns, "uts")?),
        ));
    }
    match mode(ns_opts.ipc) {
        NamespaceMode::Node => {}
        NamespaceMode::Container => namespaces.push(namespace(LinuxNamespaceType::Ipc, None)),
        _ => namespaces.push(namespace(
            LinuxNamespaceType::Ipc,
            Some(&pod_ns(inp.pod_ipc_ns, "ipc")?),
        )),
    }
    match mode(ns_opts.pid) {
        NamespaceMode::Node => {}
        NamespaceMode::Pod => {
            namespaces.push(namespace(LinuxNamespaceType::Pid, Some(&pod_ns(None, "pid")?)));
        }
        NamespaceMode::Container => namespaces.push(namespace(LinuxNamespaceType::Pid, None)),
        NamespaceMode::Target => {
            let pid = inp.target_pid.ok_or_else(|| {
                invalid(
                    "namespace_options.target_id",
                    "pid mode TARGET needs a running target container",
                )
            })?;
            namespaces.push(namespace(LinuxNamespaceType::Pid, Some(&proc_ns(pid, "pid"))));
        }
    }
    // runc mounts the spec's `cgroup` mount as cgroup2 from inside the new namespace: the
    // container's own cgroup (writable for a privileged container, see the mounts above).
    if inp.cgroup_ns {
        namespaces.push(namespace(LinuxNamespaceType::Cgroup, None));
    }
    Ok(namespaces)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cri::spec::resources::{cgroup_v2_in, hugetlb_controller_in, resource_parts};
    use crate::cri::spec::seccomp::{SeccompChoice, seccomp_choice};
    use taskd_proto::cri::v1 as cri;
    use taskd_proto::cri::v1::MountPropagation;
    use taskd_proto::cri::v1::security_profile::ProfileType;

    use oci_spec::runtime::LinuxSeccompAction;
    fn base(cfg: ContainerConfig) -> (ContainerConfig, PodSandboxConfig, ImageConfig) {
        (
            cfg,
            PodSandboxConfig {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "default".into(),
                    attempt: 0,
                }),
                linux: Some(cri::LinuxPodSandboxConfig {
                    cgroup_parent: "/kubepods/podu1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ImageConfig {
                entrypoint: vec!["/entry".into()],
                cmd: vec!["default-arg".into()],
                env: vec!["PATH=/img/bin".into(), "A=image".into()],
                working_dir: "/srv".into(),
                ..Default::default()
            },
        )
    }

    fn meta() -> Option<cri::ContainerMetadata> {
        Some(cri::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        })
    }

    /// The spec's namespaces as (type, path).
    fn namespaces(spec: &Spec) -> Vec<(LinuxNamespaceType, Option<String>)> {
        spec.linux()
            .as_ref()
            .unwrap()
            .namespaces()
            .clone()
            .unwrap()
            .into_iter()
            .map(|n| (n.typ(), n.path().clone().map(|p| p.display().to_string())))
            .collect()
    }

    static ALL_CAPS: std::sync::LazyLock<HashSet<Capability>> =
        std::sync::LazyLock::new(super::super::all_caps);

    fn input<'a>(
        cfg: &'a ContainerConfig,
        pod: &'a PodSandboxConfig,
        img: &'a ImageConfig,
    ) -> ContainerInput<'a> {
        ContainerInput {
            id: "c1",
            sandbox_id: "sb1",
            config: cfg,
            sandbox: pod,
            image: img,
            image_name: "docker.io/library/busybox:latest",
            sandbox_pid: 42,
            pod_ipc_ns: None,
            pod_uts_ns: None,
            netns_path: Some("/run/netns/x"),
            target_pid: Some(77),
            user: ResolvedUser::default(),
            devices: vec![],
            pod_files: PodFiles {
                resolv_conf: Some("/state/sb1/resolv.conf".into()),
                shm: Some("/state/sb1/shm".into()),
                ..Default::default()
            },
            driver: CgroupDriver::Cgroupfs,
            min_oom_score_adj: -500,
            localhost_seccomp: None,
            apparmor_profile: None,
            hugetlb_controller: true,
            cgroup_ns: false,
            all_caps: &ALL_CAPS,
            pod_annotations: &[],
            container_annotations: &[],
            recursive_read_only_mounts: true,
            userns: None,
        }
    }

    #[test]
    fn a_pod_user_namespace_is_joined_first_with_its_mappings() {
        let (cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        let map = crate::cri::userns::IdMap {
            container_id: 0,
            host_id: 65536,
            length: 65536,
        };
        let spec = container_spec(&ContainerInput {
            userns: Some(crate::cri::spec::UsernsSpec {
                path: "/state/podns/sb1/user",
                map: crate::cri::userns::PodUserns { uid: map, gid: map },
            }),
            ..input(&cfg, &pod, &img)
        })
        .unwrap();
        assert_eq!(
            namespaces(&spec)[0],
            (LinuxNamespaceType::User, Some("/state/podns/sb1/user".into()))
        );
        let linux = spec.linux().as_ref().unwrap();
        let uids = linux.uid_mappings().as_ref().unwrap();
        assert_eq!(
            (uids[0].container_id(), uids[0].host_id(), uids[0].size()),
            (0, 65536, 65536)
        );
        assert_eq!(linux.gid_mappings().as_ref().unwrap().len(), 1);
        let host = container_spec(&input(&cfg, &pod, &img)).unwrap();
        assert!(!namespaces(&host).iter().any(|n| n.0 == LinuxNamespaceType::User));
        assert!(host.linux().as_ref().unwrap().uid_mappings().is_none());
    }

    /// AppArmor in the generated spec (this host has no AppArmor: the choice for a host that
    /// has it is made by `apparmor::profile`, tested in apparmor.rs, and lands here).
    #[test]
    fn apparmor_profile_lands_in_the_process() {
        use super::super::apparmor::{self, AppArmorRequest, DEFAULT_PROFILE};
        let (cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        let spec_with = |profile: Option<String>| {
            let mut inp = input(&cfg, &pod, &img);
            inp.apparmor_profile = profile;
            container_spec(&inp).unwrap()
        };
        let on_apparmor_host =
            apparmor::profile(&AppArmorRequest::RuntimeDefault, false, true, |_| false).unwrap();
        let spec = spec_with(on_apparmor_host);
        assert_eq!(
            spec.process().as_ref().unwrap().apparmor_profile().as_deref(),
            Some(DEFAULT_PROFILE)
        );
        let local = apparmor::profile(
            &AppArmorRequest::Localhost("k8s-nginx".into()),
            false,
            true,
            |n| n == "k8s-nginx",
        )
        .unwrap();
        let spec = spec_with(local);
        assert_eq!(
            spec.process().as_ref().unwrap().apparmor_profile().as_deref(),
            Some("k8s-nginx")
        );
        for unconfined in [
            apparmor::profile(&AppArmorRequest::Unconfined, false, true, |_| true).unwrap(),
            apparmor::profile(&AppArmorRequest::Unspecified, false, false, |_| true).unwrap(),
        ] {
            let spec = spec_with(unconfined);
            assert_eq!(spec.process().as_ref().unwrap().apparmor_profile(), &None);
        }
    }

    fn build(cfg: &ContainerConfig, pod: &PodSandboxConfig, img: &ImageConfig) -> Result<Spec, SpecError> {
        container_spec(&input(cfg, pod, img))
    }

    #[test]
    fn args_merge_like_containerd() {
        let img = ImageConfig {
            entrypoint: vec!["/e".into()],
            cmd: vec!["c".into()],
            ..Default::default()
        };
        let c = |command: &[&str], args: &[&str]| ContainerConfig {
            command: command.iter().map(std::string::ToString::to_string).collect(),
            args: args.iter().map(std::string::ToString::to_string).collect(),
            ..Default::default()
        };
        assert_eq!(process_args(&c(&[], &[]), &img).unwrap(), ["/e", "c"]);
        assert_eq!(process_args(&c(&[], &["a"]), &img).unwrap(), ["/e", "a"]);
        assert_eq!(process_args(&c(&["/x"], &["a"]), &img).unwrap(), ["/x", "a"]);
        assert!(process_args(&c(&[], &[]), &ImageConfig::default()).is_err());
    }

    #[test]
    fn env_merges_by_key() {
        let e = merge_env(
            &["PATH=/p".into(), "A=1".into()],
            &[("A".into(), "2".into()), ("B".into(), "x=y".into())],
        );
        assert_eq!(e, ["PATH=/p", "A=2", "B=x=y"]);
        assert!(merge_env(&[], &[])[0].starts_with("PATH="));
    }

    #[test]
    fn namespaces_follow_the_modes() {
        let ns_of = |pid: NamespaceMode, ipc: NamespaceMode| {
            let (mut cfg, pod, img) = base(ContainerConfig {
                metadata: meta(),
                ..Default::default()
            });
            cfg.linux = Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        pid: pid as i32,
                        ipc: ipc as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            namespaces(&build(&cfg, &pod, &img).unwrap())
        };
        let pod = ns_of(NamespaceMode::Pod, NamespaceMode::Pod);
        assert!(pod.contains(&(LinuxNamespaceType::Pid, Some("/proc/42/ns/pid".into()))));
        assert!(pod.contains(&(LinuxNamespaceType::Ipc, Some("/proc/42/ns/ipc".into()))));
        assert!(pod.contains(&(LinuxNamespaceType::Uts, Some("/proc/42/ns/uts".into()))));
        assert!(pod.contains(&(LinuxNamespaceType::Network, Some("/run/netns/x".into()))));
        assert!(
            ns_of(NamespaceMode::Container, NamespaceMode::Pod).contains(&(LinuxNamespaceType::Pid, None))
        );
        assert!(
            !ns_of(NamespaceMode::Node, NamespaceMode::Node)
                .iter()
                .any(|n| matches!(n.0, LinuxNamespaceType::Pid | LinuxNamespaceType::Ipc))
        );
        assert!(
            ns_of(NamespaceMode::Target, NamespaceMode::Pod)
                .contains(&(LinuxNamespaceType::Pid, Some("/proc/77/ns/pid".into())))
        );
    }

    #[test]
    fn a_pod_without_a_pause_process_shares_its_pinned_namespaces() {
        let (cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        let without_pause = |cfg: &ContainerConfig| {
            container_spec(&ContainerInput {
                sandbox_pid: 0,
                pod_ipc_ns: Some("/state/podns/sb1/ipc"),
                pod_uts_ns: Some("/state/podns/sb1/uts"),
                target_pid: None,
                ..input(cfg, &pod, &img)
            })
        };
        let mut cfg = cfg;
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(cri::NamespaceOption {
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let ns = namespaces(&without_pause(&cfg).unwrap());
        assert!(ns.contains(&(LinuxNamespaceType::Ipc, Some("/state/podns/sb1/ipc".into()))));
        assert!(ns.contains(&(LinuxNamespaceType::Uts, Some("/state/podns/sb1/uts".into()))));
        assert!(ns.contains(&(LinuxNamespaceType::Pid, None)));
        // Sharing the pod's PID namespace needs the pause process the pod does not have.
        if let Some(l) = cfg.linux.as_mut()
            && let Some(sc) = l.security_context.as_mut()
        {
            sc.namespace_options.as_mut().unwrap().pid = NamespaceMode::Pod as i32;
        }
        let e = without_pause(&cfg).unwrap_err();
        assert!(e.to_string().contains("no shared pid namespace"), "{e}");
    }

    #[test]
    fn process_mounts_resources_security() {
        let (mut cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            args: vec!["--flag".into()],
            envs: vec![cri::KeyValue {
                key: "A".into(),
                value: b"cri".to_vec(),
            }],
            mounts: vec![cri::Mount {
                container_path: "/data".into(),
                host_path: "/var/lib/kubelet/pods/u1/volumes/v".into(),
                readonly: true,
                selinux_relabel: true,
                propagation: MountPropagation::PropagationHostToContainer as i32,
                ..Default::default()
            }],
            ..Default::default()
        });
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(cri::LinuxContainerResources {
                cpu_shares: 512,
                cpu_quota: 50_000,
                cpu_period: 100_000,
                memory_limit_in_bytes: 64 << 20,
                oom_score_adj: -999,
                cpuset_cpus: "0".into(),
                hugepage_limits: vec![cri::HugepageLimit {
                    page_size: "2MB".into(),
                    limit: 0,
                }],
                ..Default::default()
            }),
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["NET_ADMIN".into()],
                    drop_capabilities: vec!["KILL".into()],
                    ..Default::default()
                }),
                no_new_privs: true,
                readonly_rootfs: true,
                masked_paths: vec!["/proc/kcore".into()],
                seccomp: Some(cri::SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
        });
        let spec = build(&cfg, &pod, &img).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &["/entry", "--flag"]);
        assert!(p.env().as_ref().unwrap().contains(&"A=cri".to_owned()));
        assert_eq!(p.cwd().display().to_string(), "/srv");
        assert_eq!(p.oom_score_adj(), Some(-500), "clamped to taskd's own");
        assert!(p.no_new_privileges().unwrap());
        let caps = p.capabilities().as_ref().unwrap().bounding().clone().unwrap();
        assert!(caps.contains(&Capability::NetAdmin) && !caps.contains(&Capability::Kill));
        assert!(spec.root().as_ref().unwrap().readonly().unwrap());

        let mounts = spec.mounts().as_ref().unwrap();
        let data = mounts
            .iter()
            .find(|m| m.destination().as_os_str() == "/data")
            .unwrap();
        assert_eq!(data.options().as_ref().unwrap(), &["rbind", "ro", "rslave"]);
        assert_eq!(
            spec.linux().as_ref().unwrap().rootfs_propagation().as_deref(),
            Some("rslave"),
            "a HOST_TO_CONTAINER mount makes the rootfs a slave"
        );
        assert!(
            mounts
                .iter()
                .any(|m| m.destination().as_os_str() == "/etc/resolv.conf")
        );
        // One /dev/shm: the pod's.
        let shm: Vec<_> = mounts
            .iter()
            .filter(|m| m.destination().as_os_str() == "/dev/shm")
            .collect();
        assert_eq!(shm.len(), 1, "{shm:?}");
        assert_eq!(
            (
                shm[0].typ().as_deref(),
                shm[0].source().as_ref().map(|p| p.display().to_string())
            ),
            (Some("bind"), Some("/state/sb1/shm".into()))
        );

        let linux = spec.linux().as_ref().unwrap();
        let r = linux.resources().as_ref().unwrap();
        let cpu = r.cpu().as_ref().unwrap();
        assert_eq!(
            (cpu.shares(), cpu.quota(), cpu.period()),
            (Some(512), Some(50_000), Some(100_000))
        );
        assert_eq!(cpu.cpus().as_deref(), Some("0"));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(r.hugepage_limits().as_ref().unwrap()[0].page_size(), "2MB");
        assert_eq!(linux.masked_paths().as_ref().unwrap(), &["/proc/kcore"]);
        assert_eq!(
            linux.cgroups_path().as_ref().unwrap().display().to_string(),
            "/kubepods/podu1/c1"
        );
        // RuntimeDefault: the deny-by-default profile (its rules: spec::seccomp's tests).
        let sc = linux.seccomp().as_ref().unwrap();
        assert_eq!(sc.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert!(
            sc.syscalls().as_ref().unwrap()[0]
                .names()
                .contains(&"read".to_owned())
        );
        let ann = spec.annotations().as_ref().unwrap();
        assert_eq!(
            (ann[a::CONTAINER_TYPE].as_str(), ann[a::SANDBOX_ID].as_str()),
            ("container", "sb1")
        );
    }

    #[test]
    fn privileged_gets_everything_and_no_seccomp() {
        let (mut cfg, mut pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                privileged: true,
                seccomp: Some(cri::SecurityProfile {
                    profile_type: ProfileType::RuntimeDefault as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let e = build(&cfg, &pod, &img).unwrap_err().to_string();
        assert!(e.contains("privileged pod"), "{e}");
        pod.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
            privileged: true,
            ..Default::default()
        });
        let spec = build(&cfg, &pod, &img).unwrap();
        let caps = spec
            .process()
            .as_ref()
            .unwrap()
            .capabilities()
            .as_ref()
            .unwrap()
            .bounding()
            .clone()
            .unwrap();
        assert!(caps.contains(&Capability::SysAdmin));
        for dest in ["/sys", "/sys/fs/cgroup"] {
            let m = spec
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.destination().as_os_str() == dest)
                .unwrap();
            let opts = m.options().as_ref().unwrap();
            assert!(
                opts.contains(&"rw".to_owned()) && !opts.contains(&"ro".to_owned()),
                "{dest}: {opts:?}"
            );
        }
        let linux = spec.linux().as_ref().unwrap();
        assert!(linux.seccomp().is_none() && linux.masked_paths().is_none());
        assert!(linux.resources().as_ref().unwrap().devices().as_ref().unwrap()[0].allow());
    }

    #[test]
    fn bad_input_names_the_field() {
        let (mut cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        cfg.mounts = vec![cri::Mount {
            container_path: "relative".into(),
            host_path: "/x".into(),
            ..Default::default()
        }];
        assert!(
            build(&cfg, &pod, &img)
                .unwrap_err()
                .to_string()
                .contains("mounts.container_path")
        );
        cfg.mounts.clear();
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                capabilities: Some(cri::Capability {
                    add_capabilities: vec!["FLY".into()],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert!(build(&cfg, &pod, &img).unwrap_err().to_string().contains("FLY"));
        cfg.linux = None;
        cfg.metadata = None;
        assert!(
            build(&cfg, &pod, &img)
                .unwrap_err()
                .to_string()
                .contains("metadata")
        );
    }

    fn sec_ctx(profile: Option<(ProfileType, &str)>, path: &str) -> cri::LinuxContainerSecurityContext {
        #[allow(deprecated)]
        cri::LinuxContainerSecurityContext {
            seccomp: profile.map(|(t, r)| cri::SecurityProfile {
                profile_type: t as i32,
                localhost_ref: r.into(),
            }),
            seccomp_profile_path: path.into(),
            ..Default::default()
        }
    }

    #[test]
    fn seccomp_choice_reads_the_profile_like_containerd() {
        use SeccompChoice::*;
        let ok = |p, path| seccomp_choice(&sec_ctx(p, path)).unwrap();
        let err = |p, path| seccomp_choice(&sec_ctx(p, path)).unwrap_err().to_string();
        assert_eq!(ok(None, ""), Unconfined);
        assert_eq!(ok(Some((ProfileType::RuntimeDefault, "")), ""), RuntimeDefault);
        assert_eq!(
            ok(Some((ProfileType::Unconfined, "")), "runtime/default"),
            Unconfined
        );
        assert_eq!(
            ok(Some((ProfileType::Localhost, "/p/deny.json")), ""),
            Localhost("/p/deny.json".into())
        );
        assert_eq!(
            ok(Some((ProfileType::Localhost, "localhost//p/deny.json")), ""),
            Localhost("/p/deny.json".into()),
            "the localhost/ prefix is trimmed"
        );
        assert!(err(Some((ProfileType::Localhost, "deny.json")), "").contains("absolute path"));
        assert!(err(Some((ProfileType::RuntimeDefault, "/p/x.json")), "").contains("localhost_ref"));
        // The deprecated string field, when `seccomp` is unset.
        assert_eq!(ok(None, "runtime/default"), RuntimeDefault);
        assert_eq!(ok(None, "docker/default"), RuntimeDefault);
        assert_eq!(ok(None, "unconfined"), Unconfined);
        assert_eq!(
            ok(None, "localhost//p/deny.json"),
            Localhost("/p/deny.json".into())
        );
        assert!(err(None, "bogus").contains("seccomp_profile_path"));
        let mut bad_type = sec_ctx(Some((ProfileType::RuntimeDefault, "")), "");
        bad_type.seccomp.as_mut().unwrap().profile_type = 9;
        assert!(
            seccomp_choice(&bad_type)
                .unwrap_err()
                .to_string()
                .contains("profile_type")
        );
        // Privileged: no profile, and a Localhost one is not looked at.
        let mut privileged = sec_ctx(Some((ProfileType::Localhost, "relative")), "");
        privileged.privileged = true;
        assert_eq!(seccomp_choice(&privileged).unwrap(), Unconfined);
    }

    #[test]
    fn localhost_profile_goes_into_the_spec_and_must_be_loaded() {
        let (mut cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        cfg.linux = Some(cri::LinuxContainerConfig {
            security_context: Some(sec_ctx(Some((ProfileType::Localhost, "/p/deny.json")), "")),
            ..Default::default()
        });
        assert!(
            build(&cfg, &pod, &img)
                .unwrap_err()
                .to_string()
                .contains("/p/deny.json")
        );
        let profile: LinuxSeccomp = serde_json::from_str(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","archMap":[],"syscalls":[
                {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1,"comment":"x"}]}"#,
        )
        .unwrap();
        let spec = container_spec(&ContainerInput {
            localhost_seccomp: Some(profile.clone()),
            ..input(&cfg, &pod, &img)
        })
        .unwrap();
        assert_eq!(spec.linux().as_ref().unwrap().seccomp().as_ref(), Some(&profile));
    }

    #[test]
    fn pod_and_container_annotations_pass_only_when_allowed() {
        let (mut cfg, mut pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        let kv = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        pod.annotations = [
            kv("org.systemd.property.CPUQuota", "1%"),
            kv("pod.example/a", "1"),
        ]
        .into();
        cfg.annotations = [kv("io.containerd.runc.v2.group", "g"), kv("ctr.example/b", "2")].into();
        let keys = |pods: &[String], ctrs: &[String]| {
            let mut i = input(&cfg, &pod, &img);
            i.pod_annotations = pods;
            i.container_annotations = ctrs;
            let mut k: Vec<String> = container_spec(&i)
                .unwrap()
                .annotations()
                .clone()
                .unwrap()
                .into_keys()
                .collect();
            k.retain(|k| !k.starts_with("io.kubernetes.cri."));
            k.sort();
            k
        };
        assert!(keys(&[], &[]).is_empty());
        assert_eq!(
            keys(&["pod.example/*".into()], &["ctr.example/*".into()]),
            ["ctr.example/b", "pod.example/a"]
        );
        assert_eq!(
            keys(&["*".into()], &[]),
            ["org.systemd.property.CPUQuota"],
            "* does not cross /"
        );
    }

    #[test]
    fn recursive_read_only_mounts_as_the_cri_api_says() {
        let mount = |readonly, propagation: MountPropagation| cri::Mount {
            container_path: "/data".into(),
            host_path: "/srv".into(),
            readonly,
            recursive_read_only: true,
            propagation: propagation as i32,
            ..Default::default()
        };
        let build_with = |m: cri::Mount, supported: bool| {
            let (cfg, pod, img) = base(ContainerConfig {
                metadata: meta(),
                mounts: vec![m],
                ..Default::default()
            });
            let mut i = input(&cfg, &pod, &img);
            i.recursive_read_only_mounts = supported;
            container_spec(&i).map(|s| {
                let data = s
                    .mounts()
                    .clone()
                    .unwrap()
                    .into_iter()
                    .find(|m| m.destination().as_os_str() == "/data");
                data.unwrap().options().clone().unwrap()
            })
        };
        use MountPropagation::*;
        assert_eq!(
            build_with(mount(true, PropagationPrivate), true).unwrap(),
            ["rbind", "ro", "rprivate", "rro"]
        );
        for (m, supported, why) in [
            (mount(false, PropagationPrivate), true, "readonly"),
            (
                mount(true, PropagationHostToContainer),
                true,
                "PROPAGATION_PRIVATE",
            ),
            (mount(true, PropagationPrivate), false, "does not support"),
        ] {
            let e = build_with(m, supported).unwrap_err();
            assert!(
                matches!(
                    e,
                    SpecError::Invalid {
                        field: "mounts.recursive_read_only",
                        ..
                    }
                ) && e.to_string().contains(why),
                "{e}"
            );
        }
    }

    #[test]
    fn rootfs_propagation_follows_the_most_propagating_mount() {
        let rootfs = |props: &[MountPropagation]| {
            let (cfg, pod, img) = base(ContainerConfig {
                metadata: meta(),
                mounts: props
                    .iter()
                    .enumerate()
                    .map(|(i, p)| cri::Mount {
                        container_path: format!("/m{i}"),
                        host_path: format!("/h{i}"),
                        propagation: *p as i32,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            });
            let spec = build(&cfg, &pod, &img).unwrap();
            spec.linux().as_ref().unwrap().rootfs_propagation().clone()
        };
        use MountPropagation::*;
        assert_eq!(rootfs(&[]), None, "runc's default");
        assert_eq!(rootfs(&[PropagationPrivate]), None);
        assert_eq!(
            rootfs(&[PropagationHostToContainer, PropagationPrivate]).as_deref(),
            Some("rslave")
        );
        assert_eq!(
            rootfs(&[PropagationBidirectional, PropagationHostToContainer]).as_deref(),
            Some("rshared")
        );
        assert_eq!(
            rootfs(&[PropagationHostToContainer, PropagationBidirectional]).as_deref(),
            Some("rshared")
        );
    }

    #[test]
    fn hugepages_only_with_the_hugetlb_controller() {
        let (mut cfg, pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        let res = cri::LinuxContainerResources {
            hugepage_limits: vec![cri::HugepageLimit {
                page_size: "2MB".into(),
                limit: 4 << 20,
            }],
            ..Default::default()
        };
        cfg.linux = Some(cri::LinuxContainerConfig {
            resources: Some(res.clone()),
            ..Default::default()
        });
        let limits = |present: bool| {
            container_spec(&ContainerInput {
                hugetlb_controller: present,
                ..input(&cfg, &pod, &img)
            })
            .unwrap()
            .linux()
            .as_ref()
            .unwrap()
            .resources()
            .as_ref()
            .unwrap()
            .hugepage_limits()
            .clone()
        };
        let with = limits(true).unwrap();
        assert_eq!((with[0].page_size().as_str(), with[0].limit()), ("2MB", 4 << 20));
        assert!(limits(false).is_none());
        assert!(resource_parts(&res, false).2.is_empty());

        let dir = tempfile::tempdir().unwrap();
        assert!(
            !hugetlb_controller_in(dir.path()),
            "v1 without a hugetlb hierarchy"
        );
        std::fs::create_dir(dir.path().join("hugetlb")).unwrap();
        assert!(hugetlb_controller_in(dir.path()), "v1 with one");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(!hugetlb_controller_in(dir.path()), "v2 without it");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu hugetlb memory\n").unwrap();
        assert!(hugetlb_controller_in(dir.path()), "v2 with it");
    }

    #[test]
    fn a_cgroup_namespace_on_v2_only_privileged_too() {
        let cgroup_ns = |privileged: bool, cgroup_ns: bool| {
            let (cfg, mut pod, img) = base(ContainerConfig {
                metadata: meta(),
                linux: Some(cri::LinuxContainerConfig {
                    security_context: Some(cri::LinuxContainerSecurityContext {
                        privileged,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            });
            pod.linux.as_mut().unwrap().security_context = Some(cri::LinuxSandboxSecurityContext {
                privileged,
                ..Default::default()
            });
            let spec = container_spec(&ContainerInput {
                cgroup_ns,
                ..input(&cfg, &pod, &img)
            })
            .unwrap();
            let ns = namespaces(&spec).contains(&(LinuxNamespaceType::Cgroup, None));
            let cgroup_mount = spec
                .mounts()
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.destination().as_os_str() == "/sys/fs/cgroup")
                .and_then(|m| m.options().clone())
                .unwrap_or_default();
            (ns, cgroup_mount.contains(&"rw".to_owned()))
        };
        assert_eq!(
            cgroup_ns(false, true),
            (true, false),
            "v2: own namespace, read-only mount"
        );
        assert_eq!(
            cgroup_ns(true, true),
            (true, true),
            "v2 privileged: own namespace, writable"
        );
        assert_eq!(
            cgroup_ns(false, false),
            (false, false),
            "v1: the host's namespace"
        );
        assert_eq!(
            cgroup_ns(true, false),
            (false, true),
            "v1 privileged: the host's, writable"
        );

        let dir = tempfile::tempdir().unwrap();
        assert!(!cgroup_v2_in(dir.path()), "v1: no cgroup.controllers at the root");
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        assert!(cgroup_v2_in(dir.path()), "v2");
    }

    #[test]
    fn systemd_driver_cgroups_path() {
        let (cfg, mut pod, img) = base(ContainerConfig {
            metadata: meta(),
            ..Default::default()
        });
        pod.linux.as_mut().unwrap().cgroup_parent = "kubepods-besteffort-podu1.slice".into();
        let spec = container_spec(&ContainerInput {
            driver: CgroupDriver::Systemd,
            ..input(&cfg, &pod, &img)
        })
        .unwrap();
        assert_eq!(
            spec.linux()
                .as_ref()
                .unwrap()
                .cgroups_path()
                .as_ref()
                .unwrap()
                .display()
                .to_string(),
            "kubepods-besteffort-podu1.slice:taskd:c1",
            "runc's slice:prefix:name"
        );
    }
}
