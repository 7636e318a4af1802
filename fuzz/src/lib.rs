//! The fuzz targets: each takes arbitrary bytes to one of taskd's parsers (through the same
//! public entry the daemon uses) and panics only on a bug: a panic inside taskd, or a broken
//! invariant checked here. Errors are fine: hostile input must get one, never a crash.
//!
//! `scripts/fuzz.sh TARGET SECONDS` fuzzes one with libFuzzer (src/bin/taskd-fuzz.rs);
//! `corpus/<target>/` holds its seeds and the inputs of crashes found (regression tests:
//! the tests below replay every file there).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness: a failed unwrap is a found bug

use std::time::{Duration, UNIX_EPOCH};

use prost::Message;
use taskd_proto::cri::v1 as cri;

/// A fuzz target: bytes in, a panic on a bug.
pub type Target = fn(&[u8]);

/// Every target by name (also the name of its corpus directory).
pub const TARGETS: &[(&str, Target)] = &[
    ("layer", layer),
    ("filter", filter),
    ("reference", reference),
    ("user", user),
    ("manifest", manifest),
    ("image_config", image_config),
    ("log_framer", log_framer),
    ("config", config),
    ("cri", cri_request),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

pub fn names() -> Vec<&'static str> {
    TARGETS.iter().map(|(n, _)| *n).collect()
}

/// Applies the bytes as a layer (plain tar, gzip or zstd: detected) into a fresh directory
/// `<tmp>/outer/target`. Whatever the layer holds (`..`, absolute and escaping symlinks,
/// hard links out, whiteouts), nothing appears beside `target` or above it.
pub fn layer(data: &[u8]) {
    let base = tempfile::tempdir().expect("temp dir");
    let outer = base.path().join("outer");
    let target = outer.join("target");
    std::fs::create_dir_all(&target).expect("create target");
    let opts = taskd::diff::ApplyOptions {
        limits: taskd::diff::Limits {
            max_bytes: 16 << 20,
            max_entries: 10_000,
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = taskd::diff::apply_layer(data, taskd::diff::MEDIA_TYPE_LAYER, &target, &opts);
    for (dir, only) in [(base.path(), "outer"), (outer.as_path(), "target")] {
        let names: Vec<_> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("dir entry").file_name())
            .collect();
        assert_eq!(
            names,
            [only],
            "the layer wrote beside its target, in {}",
            dir.display()
        );
    }
}

/// Lines of the bytes: one filter string each.
fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(str::to_owned)
        .collect()
}

/// A containerd filter (`labels."a b"==x,name~=^re$`): parsed, then matched.
pub fn filter(data: &[u8]) {
    struct Fields;
    impl taskd::filters::Adaptor for Fields {
        fn field(&self, path: &[&str]) -> Option<String> {
            Some(path.join("."))
        }
    }
    if let Ok(f) = taskd::filters::parse(&lines(data)) {
        let _ = f.matches(&Fields);
    }
}

/// An image reference: normalized, and the normal form is a fixed point.
pub fn reference(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(r) = taskd::images::reference::normalize(s) {
        let again = taskd::images::reference::normalize(&r.to_string())
            .unwrap_or_else(|e| panic!("{s:?} normalized to {r}, which does not parse: {e}"));
        assert_eq!(again.to_string(), r.to_string(), "normalizing {s:?} twice");
        let _ = r.name();
    }
}

/// `/etc/passwd`, `/etc/group` and the image's `User`, split at NUL bytes, resolved as
/// CreateContainer does (with and without run_as_* fields from the first byte).
pub fn user(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\0');
    let (image_user, passwd, group) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let sel = data.first().copied().unwrap_or(0);
    let groups = [i64::from(sel), 4_294_967_295];
    let wanted = taskd::cri::spec::user::Wanted {
        run_as_user: (sel & 1 != 0).then_some(i64::from(sel) * 1000),
        run_as_username: if sel & 2 != 0 { image_user } else { "" },
        run_as_group: (sel & 4 != 0).then_some(-i64::from(sel)),
        supplemental_groups: if sel & 8 != 0 { &groups } else { &[] },
        strict_groups: sel & 16 != 0,
    };
    if let Ok(u) = taskd::cri::spec::user::resolve(&wanted, image_user, Some(passwd), Some(group)) {
        for id in [u.uid, u.gid].iter().chain(&u.additional_gids) {
            assert!(*id <= taskd::cri::spec::user::MAX_ID, "{u:?} from {text:?}");
        }
        assert!(u.additional_gids.contains(&u.gid), "{u:?}");
    }
}

/// A manifest or index as pulls and the CRI decode it, with its checks.
pub fn manifest(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<taskd::images::oci::Manifest>(data) {
        let _ = m.is_index("");
        let _ = m.platforms();
        if let Ok(total) = m.check() {
            let sum: u128 = m.config.iter().chain(&m.layers).map(|d| d.size as u128).sum();
            assert!(u128::from(total) <= sum, "{total} > {sum}");
        }
    }
}

/// An image config as CreateContainer reads it, and its chain id.
pub fn image_config(data: &[u8]) {
    if let Ok((cfg, diff_ids)) = taskd::cri::backend::images::decode_image_config(data) {
        let chains = taskd::images::oci::chain_ids(&diff_ids);
        assert_eq!(chains.len(), diff_ids.len());
        let _ = cfg;
    }
}

/// Container output through the CRI log framer, cut into chunks (the first byte: the
/// longest line; each next byte below 8: a chunk boundary). Every record is
/// `<time> stdout P|F <content>`, no longer than the limit, and the contents give back the
/// stream.
pub fn log_framer(data: &[u8]) {
    let Some((&max, rest)) = data.split_first() else {
        return;
    };
    let max_line = usize::from(max % 64) + 1;
    let mut framer = taskd::cri::io::Framer::new(taskd::cri::io::Stream::Stdout, max_line);
    let now = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
    let mut out = Vec::new();
    let mut fed = Vec::new();
    for chunk in rest.split(|b| *b < 8) {
        framer.push(chunk, now, &mut out);
        fed.extend_from_slice(chunk);
    }
    framer.flush_partial(now, &mut out);
    assert!(!framer.has_pending());
    let prefix = format!("{} stdout ", taskd::cri::io::format_timestamp(now));
    let mut back = Vec::new();
    let mut rest = out.as_slice();
    while !rest.is_empty() {
        let rec = rest
            .strip_prefix(prefix.as_bytes())
            .unwrap_or_else(|| panic!("record without prefix: {:?}", String::from_utf8_lossy(rest)));
        let (tag, rec) = rec.split_at(2);
        let end = rec
            .iter()
            .position(|b| *b == b'\n')
            .expect("record ends with a newline");
        let content = &rec[..end];
        assert!(content.len() <= max_line, "{} > {max_line}", content.len());
        back.extend_from_slice(content);
        match tag {
            b"F " => back.push(b'\n'),
            b"P " => {}
            t => panic!("tag {:?}", String::from_utf8_lossy(t)),
        }
        rest = &rec[end + 1..];
    }
    assert_eq!(back, fed, "the records' contents are the stream");
}

/// A taskd config file: parsed and validated with every builtin plugin's table, as
/// `taskd config check` and startup do.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let regs = taskd::builtins::registrations();
    let _ = taskd::config::check(text, &taskd::config::Overrides::default(), &regs);
}

/// A CRI request: the first byte picks the message, the rest is its protobuf encoding
/// (what tonic decodes). Decoded, it goes through the checks and spec building of its
/// handler that run before anything changes (pods and containers get their OCI specs).
pub fn cri_request(data: &[u8]) {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    match sel % 8 {
        0 => {
            if let Ok(r) = cri::RunPodSandboxRequest::decode(body) {
                run_pod_sandbox(&r.config.unwrap_or_default());
            }
        }
        1 => {
            if let Ok(r) = cri::CreateContainerRequest::decode(body) {
                create_container(
                    &r.config.unwrap_or_default(),
                    &r.sandbox_config.unwrap_or_default(),
                );
            }
        }
        2 => {
            if let Ok(r) = cri::ExecRequest::decode(body) {
                let _ =
                    taskd::cri::server::container::exec::check_streams(r.stdin, r.stdout, r.stderr, r.tty);
            }
        }
        3 => {
            if let Ok(r) = cri::UpdateContainerResourcesRequest::decode(body) {
                let _ = taskd::cri::spec::resources::update_resources(&r.linux.unwrap_or_default());
            }
        }
        4 => {
            if let Ok(r) = cri::PullImageRequest::decode(body) {
                let _ = taskd::images::reference::normalize(&r.image.unwrap_or_default().image);
            }
        }
        5 => {
            if let Ok(r) = cri::AttachRequest::decode(body) {
                let _ =
                    taskd::cri::server::container::exec::check_streams(r.stdin, r.stdout, r.stderr, r.tty);
            }
        }
        6 => {
            if let Ok(r) = cri::ImageStatusRequest::decode(body) {
                let image = r.image.unwrap_or_default().image;
                if !taskd::images::reference::is_image_id(&image) {
                    let _ = taskd::images::reference::normalize(&image);
                }
            }
        }
        _ => {
            if let Ok(r) = cri::ExecSyncRequest::decode(body) {
                let _ = r.cmd.len();
            }
        }
    }
}

fn run_pod_sandbox(cfg: &cri::PodSandboxConfig) {
    use taskd::cri::spec::sandbox::{SandboxInput, sandbox_spec};
    let image = taskd::cri::store::image::ImageConfig::default();
    let _ = taskd::cri::spec::sandbox::pod_namespace_modes(cfg);
    // The pod's user namespace is validated (and, when valid, joined) like RunPodSandbox does.
    let Ok(userns) = taskd::cri::userns::of_pod(cfg) else {
        return;
    };
    let userns = userns.map(|map| taskd::cri::spec::UsernsSpec {
        path: "/run/taskd/podns/fuzz/user",
        map,
    });
    if let Ok(spec) = sandbox_spec(&SandboxInput {
        id: "fuzz-pod",
        config: cfg,
        image: &image,
        netns_path: Some("/var/run/netns/fuzz"),
        driver: Default::default(),
        min_oom_score_adj: -999,
        pod_annotations: &["example.com/*".to_owned()],
        userns,
    }) {
        let _ = taskd::cri::spec::to_any(&spec);
    }
}

fn create_container(config: &cri::ContainerConfig, sandbox: &cri::PodSandboxConfig) {
    use taskd::cri::spec::container::{ContainerInput, container_spec};
    let sec = config
        .linux
        .as_ref()
        .and_then(|l| l.security_context.clone())
        .unwrap_or_default();
    let wanted = taskd::cri::spec::user::Wanted::of(&sec);
    let passwd = "root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n";
    let Ok(user) = taskd::cri::spec::user::resolve(&wanted, "", Some(passwd), Some("root:x:0:\n")) else {
        return;
    };
    if taskd::cri::spec::apparmor::request(&sec).is_err()
        || taskd::cri::spec::seccomp::seccomp_choice(&sec).is_err()
    {
        return;
    }
    let image = taskd::cri::store::image::ImageConfig {
        cmd: vec!["sh".to_owned()],
        ..Default::default()
    };
    let all_caps = taskd::cri::spec::all_caps();
    if let Ok(spec) = container_spec(&ContainerInput {
        id: "fuzz-ctr",
        sandbox_id: "fuzz-pod",
        config,
        sandbox,
        image: &image,
        image_name: "docker.io/library/busybox:latest",
        sandbox_pid: 1,
        pod_ipc_ns: None,
        pod_uts_ns: None,
        netns_path: Some("/var/run/netns/fuzz"),
        target_pid: None,
        user,
        devices: Vec::new(),
        pod_files: Default::default(),
        driver: Default::default(),
        min_oom_score_adj: -999,
        localhost_seccomp: None,
        apparmor_profile: None,
        all_caps: &all_caps,
        hugetlb_controller: true,
        pod_annotations: &[],
        container_annotations: &["example.com/*".to_owned()],
        recursive_read_only_mounts: true,
        cgroup_ns: false,
        userns: None,
    }) {
        let _ = taskd::cri::spec::to_any(&spec);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of corpus/<target>/ (seeds, and the inputs of crashes fuzzing found)
    /// runs through its target without a panic.
    #[test]
    fn corpus_replays() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
        for (name, run) in TARGETS {
            let dir = root.join(name);
            let mut n = 0;
            for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
                let path = e.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| run(&data));
                assert!(r.is_ok(), "{name}: {} panics", path.display());
                n += 1;
            }
            assert!(n > 0, "{name} has seeds");
        }
    }
}

/// Properties of the parsers, in the normal suite (a few hundred cases each).
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    /// Matches a field path against one value.
    struct One(&'static str, String);
    impl taskd::filters::Adaptor for One {
        fn field(&self, path: &[&str]) -> Option<String> {
            (path.join(".") == self.0).then(|| self.1.clone())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn valid_references_normalize_to_a_fixed_point(
            r in "([a-z0-9]{1,8}\\.[a-z]{2,3}(:[0-9]{2,5})?/)?[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,10})?"
        ) {
            let n = taskd::images::reference::normalize(&r);
            prop_assert!(n.is_ok(), "{r}: {n:?}");
            reference(r.as_bytes());
        }

        #[test]
        fn framed_logs_give_back_the_stream(max in 0u8..64, data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut input = vec![max];
            input.extend(data);
            log_framer(&input);
        }

        #[test]
        fn equality_filters_match_their_value(v in "[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,19}", other in "[a-z]{1,5}") {
            let f = taskd::filters::parse(&[format!("name=={v}")]).unwrap();
            prop_assert!(f.matches(&One("name", v.clone())));
            let longer = v.clone() + &other;
            prop_assert!(!f.matches(&One("name", longer)));
            let f = taskd::filters::parse(&[format!("labels.\"a.b\"!={v}")]).unwrap();
            prop_assert!(!f.matches(&One("labels.a.b", v.clone())));
        }

        #[test]
        fn users_resolve_from_passwd(entries in proptest::collection::btree_map("[a-z][a-z0-9]{0,7}", (0u32..70_000, 0u32..70_000), 1..6)) {
            let passwd: String = entries.iter().map(|(n, (u, g))| format!("{n}:x:{u}:{g}::/:/bin/sh\n")).collect();
            for (name, (uid, gid)) in &entries {
                let u = taskd::cri::spec::user::resolve(&Default::default(), name, Some(&passwd), None).unwrap();
                // The first entry of that name counts (names are unique here).
                prop_assert_eq!((u.uid, u.gid), (*uid, *gid));
            }
        }

        #[test]
        fn manifest_totals_count_each_blob_once(sizes in proptest::collection::vec((0u8..4, 0i64..i64::MAX), 0..8)) {
            let layers: Vec<serde_json::Value> = sizes
                .iter()
                .map(|(c, s)| serde_json::json!({"digest": format!("sha256:{c}"), "size": s}))
                .collect();
            let m: taskd::images::oci::Manifest =
                serde_json::from_value(serde_json::json!({"layers": layers})).unwrap();
            let mut first: std::collections::BTreeMap<u8, i64> = Default::default();
            let consistent = sizes.iter().all(|(c, s)| *first.entry(*c).or_insert(*s) == *s);
            let sum: u128 = first.values().map(|s| *s as u128).sum();
            match m.check() {
                Ok(total) => prop_assert!(consistent && u128::from(total) == sum),
                Err(_) => prop_assert!(!consistent || sum > u128::from(u64::MAX)),
            }
        }

        #[test]
        fn cri_requests_never_panic(sel in 0u8..8, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut input = vec![sel];
            input.extend(body);
            cri_request(&input);
        }
    }
}
