//! taskd-node install → idempotent re-install → refused config → upgrade → failed upgrade
//! (rolled back by itself) → rollback → status → uninstall, against a temp host root, with the
//! real taskd started by a systemctl stand-in and its /readyz answering; the API calls go to a
//! test double of the API server (support/apiserver.rs: no API server binary is available
//! here). Needs root (taskd runs as root).
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;
use support::apiserver::ApiServer;
use support::{KillOnDrop, agent, fake_systemctl, free_port, http_status, taskd_bin, taskd_pid};

/// An image's /opt/taskd/bin: taskd (with `extra` appended, which keeps the ELF runnable and
/// makes it a different release), the runc shim and runc as the real ones on this machine.
fn source_dir(root: &Path, name: &str, extra: &[u8]) -> PathBuf {
    let dir = root.join(name);
    fs::create_dir_all(&dir).unwrap();
    let mut taskd = fs::read(taskd_bin()).unwrap();
    taskd.extend_from_slice(extra);
    fs::write(dir.join("taskd"), taskd).unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("taskd"), fs::Permissions::from_mode(0o755)).unwrap();
    for (from, to) in [
        ("/usr/bin/containerd-shim-runc-v2", "containerd-shim-runc-v2"),
        ("/usr/sbin/runc", "runc"),
    ] {
        fs::copy(from, dir.join(to)).unwrap_or_else(|e| panic!("{from} (apt: containerd, runc): {e}"));
    }
    dir
}

fn ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "taskd-node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn current_release(host: &Path) -> String {
    fs::read_link(host.join("opt/taskd/current"))
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The host has `cfg` as its config and taskd answers /readyz on `metrics`.
fn serves_config(host: &Path, cfg: &Path, metrics: &str) {
    let installed = fs::read(host.join("etc/taskd/config.toml")).unwrap();
    assert_eq!(installed, fs::read(cfg).unwrap());
    assert_eq!(http_status(metrics, "/readyz"), Some(200), "taskd serves /readyz");
}

#[test]
fn install_upgrade_rollback_uninstall_on_a_temp_host() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let host = t.join("host");
    let run = t.join("run");
    let data = t.join("data");
    for d in [&host, &run, &data] {
        fs::create_dir_all(d).unwrap();
    }
    let _kill = KillOnDrop(run.clone());
    let kubelet = host.join("var/lib/kubelet/config.yaml");
    fs::create_dir_all(kubelet.parent().unwrap()).unwrap();
    fs::write(
        &kubelet,
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncontainerRuntimeEndpoint: unix:///run/containerd/containerd.sock\n",
    )
    .unwrap();
    let port = free_port();
    let metrics = format!("127.0.0.1:{port}");
    let config = |extra: &str| {
        format!(
            "version = 1\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\naddress = \"{d}/taskd.sock\"\n{extra}[metrics]\naddress = \"{metrics}\"\n",
            d = data.display()
        )
    };
    let cfg1 = t.join("config1.toml");
    fs::write(&cfg1, config("")).unwrap();
    let systemctl = fake_systemctl(&run, &host);

    let api = ApiServer::start(t, support::agent_bin());
    api.add_node("node-a", json!({"kubernetes.io/hostname": "node-a"}));
    api.add_node("node-b", json!({}));
    // A RuntimeClass someone else made: taskd-node must leave it alone.
    api.add_class("foreign", "runc", json!({"team": "other"}));

    let global = [
        format!("--host-root={}", host.display()),
        format!("--systemctl={}", systemctl.display()),
    ];
    let run_agent = |args: &[&str]| {
        let mut all: Vec<&str> = global.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        agent(&api.kubeconfig, "node-a", &all)
    };
    let install = |src: &Path, cfg: &Path, cmd: &str, timeout: &str| {
        run_agent(&[
            cmd,
            &format!("--source-dir={}", src.display()),
            &format!("--config={}", cfg.display()),
            "--runtime-class=taskd=runc",
            "--runtime-class=foreign=runc",
            "--switch-kubelet",
            &format!("--ready-timeout={timeout}"),
        ])
    };

    // --- install
    let src1 = source_dir(t, "src1", b"");
    let out = ok(&install(&src1, &cfg1, "install", "30s"));
    assert_eq!(out.trim(), "Installed");
    let rel1 = current_release(&host);
    for bin in ["taskd", "containerd-shim-runc-v2", "runc"] {
        assert!(
            host.join("opt/taskd/current").join(bin).is_file(),
            "{bin} not installed"
        );
    }
    let unit = fs::read_to_string(host.join("etc/systemd/system/taskd.service")).unwrap();
    assert!(unit.contains("\nKillMode=process\n") && unit.contains("ExecStart=/opt/taskd/current/taskd"));
    serves_config(&host, &cfg1, &metrics);
    let pid1 = taskd_pid(&run).expect("taskd runs");
    let node = api.node("node-a");
    assert_eq!(node["metadata"]["labels"]["taskd.io/runtime"], "ready");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"], "node-a",
        "other labels kept"
    );
    assert_eq!(node["metadata"]["annotations"]["taskd.io/version"], "0.1.0");
    assert_eq!(node["metadata"]["annotations"]["taskd.io/release"], rel1.as_str());
    assert!(
        api.node("node-b")["metadata"]["labels"]
            .get("taskd.io/runtime")
            .is_none(),
        "only NODE_NAME is touched"
    );
    let rc = api.class("taskd").expect("RuntimeClass taskd created");
    assert_eq!(rc["handler"], "runc");
    assert_eq!(
        rc["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "taskd-node"
    );
    assert_eq!(rc["scheduling"]["nodeSelector"]["taskd.io/runtime"], "ready");
    assert_eq!(
        api.class("foreign").unwrap()["metadata"]["labels"],
        json!({"team": "other"})
    );
    assert!(api.requests("PUT", "runtimeclasses/foreign").is_empty());
    assert!(api.requests("DELETE", "runtimeclasses/foreign").is_empty());
    let kubelet_text = fs::read_to_string(&kubelet).unwrap();
    assert!(kubelet_text.contains(&format!(
        "containerRuntimeEndpoint: unix://{}/taskd.sock",
        data.display()
    )));
    let calls = fs::read_to_string(run.join("systemctl.log")).unwrap();
    assert!(calls.contains("daemon-reload\n") && calls.contains("enable taskd.service\n"));
    assert!(calls.contains("restart taskd.service\n") && calls.contains("restart kubelet.service\n"));
    let reasons = api.event_reasons();
    assert!(reasons.contains(&"TaskdInstalled".to_string()), "{reasons:?}");
    assert!(
        reasons.contains(&"TaskdRuntimeClassNotOwned".to_string()),
        "{reasons:?}"
    );
    let ev = api
        .events()
        .into_iter()
        .find(|e| e["reason"] == "TaskdInstalled")
        .unwrap();
    assert_eq!(ev["involvedObject"]["kind"], "Node");
    assert_eq!(ev["involvedObject"]["name"], "node-a");
    assert_eq!(ev["metadata"]["namespace"], "default");

    // --- the same install again changes nothing: no restart, no new Event
    let events_before = api.event_reasons().len();
    assert_eq!(ok(&install(&src1, &cfg1, "install", "30s")).trim(), "Unchanged");
    assert_eq!(
        taskd_pid(&run),
        Some(pid1),
        "an unchanged install does not restart taskd"
    );
    assert_eq!(
        api.event_reasons().len(),
        events_before + 1,
        "only the not-owned warning again"
    );

    // --- a config the new binary refuses: nothing is replaced
    let bad = t.join("bad.toml");
    fs::write(&bad, config("no_such_key = 1\n")).unwrap();
    let src2 = source_dir(t, "src2", b"\0release-2");
    let out = install(&src2, &bad, "upgrade", "30s");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused"),
        "{out:?}"
    );
    assert_eq!(current_release(&host), rel1);
    assert_eq!(
        fs::read(host.join("etc/taskd/config.toml")).unwrap(),
        fs::read(&cfg1).unwrap()
    );
    assert_eq!(taskd_pid(&run), Some(pid1));
    assert!(api.event_reasons().contains(&"TaskdInstallFailed".to_string()));

    // --- upgrade to other binaries
    let out = ok(&install(&src2, &cfg1, "upgrade", "30s"));
    assert!(out.starts_with("Upgraded"), "{out}");
    let rel2 = current_release(&host);
    assert_ne!(rel2, rel1);
    let pid2 = taskd_pid(&run).expect("taskd runs");
    assert_ne!(pid2, pid1, "the upgrade restarted taskd");
    assert_eq!(http_status(&metrics, "/readyz"), Some(200));
    assert_eq!(
        api.node("node-a")["metadata"]["annotations"]["taskd.io/release"],
        rel2.as_str()
    );
    assert!(
        host.join("opt/taskd/releases").join(&rel1).is_dir(),
        "previous release kept"
    );
    assert!(api.event_reasons().contains(&"TaskdUpgraded".to_string()));

    // --- an upgrade that never comes ready is rolled back by itself. Its config passes
    // `taskd config check` but taskd cannot start on it (the socket dir is a file).
    fs::write(t.join("afile"), "").unwrap();
    let unstartable = t.join("unstartable.toml");
    fs::write(
        &unstartable,
        config("").replace(
            &format!("{}/taskd.sock", data.display()),
            &format!("{}/afile/taskd.sock", t.display()),
        ),
    )
    .unwrap();
    let src3 = source_dir(t, "src3", b"\0release-3");
    let out = install(&src3, &unstartable, "upgrade", "3s");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("rolled back"),
        "{out:?}"
    );
    assert_eq!(current_release(&host), rel2, "back on the release that ran");
    serves_config(&host, &cfg1, &metrics);
    assert!(api.event_reasons().contains(&"TaskdRolledBack".to_string()));

    // --- manual rollback: to the release before
    let out = ok(&run_agent(&["rollback", "--ready-timeout=30s"]));
    assert!(out.contains("rolled back"), "{out}");
    let back = current_release(&host);
    assert_ne!(back, rel2);
    assert_eq!(http_status(&metrics, "/readyz"), Some(200));
    assert_eq!(
        api.node("node-a")["metadata"]["annotations"]["taskd.io/release"],
        back.as_str()
    );

    // --- status: every step ok
    let out = ok(&run_agent(&["status"]));
    for step in [
        "binaries",
        "config",
        "unit",
        "service",
        "readyz",
        "kubelet",
        "node label",
        "runtimeclasses",
    ] {
        assert!(
            out.lines().any(|l| l.starts_with(step) && l.contains(" ok ")),
            "{step}: {out}"
        );
    }
    assert!(ok(&run_agent(&["status", "--local"])).contains("readyz"));

    // --- uninstall; twice (idempotent)
    let out = ok(&run_agent(&["uninstall"]));
    assert_eq!(out.trim(), "uninstalled");
    assert_eq!(http_status(&metrics, "/readyz"), None, "taskd stopped");
    assert_eq!(taskd_pid(&run), None);
    for gone in [
        "opt/taskd",
        "etc/taskd",
        "etc/systemd/system/taskd.service",
        "var/lib/taskd-node",
    ] {
        assert!(!host.join(gone).exists(), "{gone} left behind");
    }
    assert!(data.join("root").is_dir(), "data dirs kept without --purge-data");
    assert!(
        fs::read_to_string(&kubelet)
            .unwrap()
            .contains("containerRuntimeEndpoint: unix:///run/containerd/containerd.sock")
    );
    let node = api.node("node-a");
    assert!(node["metadata"]["labels"].get("taskd.io/runtime").is_none());
    assert!(node["metadata"]["annotations"].get("taskd.io/version").is_none());
    assert!(
        api.class("taskd").is_none(),
        "owned RuntimeClass deleted (no node has taskd)"
    );
    assert!(api.class("foreign").is_some(), "foreign RuntimeClass kept");
    assert!(api.event_reasons().contains(&"TaskdUninstalled".to_string()));
    assert_eq!(
        ok(&run_agent(&["uninstall"])).trim(),
        "not installed (nothing to do)"
    );
    assert!(
        !run_agent(&["status", "--local"]).status.success(),
        "status fails when not installed"
    );
}

/// The chart's post-delete hook: `taskd-node cleanup` starts one uninstall pod per node
/// labelled taskd.io/runtime (the double runs each pod's command as that node's kubelet would,
/// with that node's host root), waits for them, deletes them and the owned RuntimeClasses.
#[test]
fn cleanup_hook_uninstalls_every_node_with_taskd() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (host_a, host_b, run, data) = (t.join("a"), t.join("b"), t.join("run"), t.join("data"));
    for d in [&host_a, &host_b, &run, &data] {
        fs::create_dir_all(d).unwrap();
    }
    let _kill = KillOnDrop(run.clone());
    let metrics = format!("127.0.0.1:{}", free_port());
    let cfg = t.join("config.toml");
    fs::write(
        &cfg,
        format!(
            "version = 1\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n[grpc]\naddress = \"{d}/taskd.sock\"\n[metrics]\naddress = \"{metrics}\"\n",
            d = data.display()
        ),
    )
    .unwrap();
    let systemctl = fake_systemctl(&run, &host_a);
    let api = ApiServer::start(t, support::agent_bin());
    api.add_node("node-a", json!({}));
    // node-b is labelled but has nothing installed: its uninstall has nothing to do.
    api.add_node("node-b", json!({"taskd.io/runtime": "ready"}));
    api.add_node("node-c", json!({}));
    api.add_class("foreign", "runc", json!({}));
    {
        let mut w = api.world.lock().unwrap();
        w.host_roots.insert("node-a".into(), host_a.clone());
        w.host_roots.insert("node-b".into(), host_b.clone());
    }
    let global = [
        format!("--host-root={}", host_a.display()),
        format!("--systemctl={}", systemctl.display()),
    ];
    let src = source_dir(t, "src", b"");
    let mut args: Vec<String> = global.to_vec();
    args.extend([
        "install".into(),
        format!("--source-dir={}", src.display()),
        format!("--config={}", cfg.display()),
        "--runtime-class=taskd=runc".into(),
    ]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&agent(&api.kubeconfig, "node-a", &argv));
    assert!(api.class("taskd").is_some());
    assert_eq!(http_status(&metrics, "/readyz"), Some(200));

    let mut args: Vec<String> = global.to_vec();
    args.extend(
        [
            "cleanup",
            "--image=example/taskd-installer:1",
            "--namespace=taskd-system",
            "--service-account=hook",
            "--timeout=60s",
        ]
        .map(String::from),
    );
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // The hook runs with no NODE_NAME of its own.
    let out = ok(&agent(&api.kubeconfig, "", &argv));
    assert!(out.contains("2 node(s)"), "{out}");
    let created = api.requests("POST", "/namespaces/taskd-system/pods");
    let mut nodes: Vec<String> = created
        .iter()
        .map(|r| r.body["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    nodes.sort();
    assert_eq!(
        nodes,
        ["node-a", "node-b"],
        "one pod per labelled node, none on node-c"
    );
    let pod = &created[0].body;
    assert_eq!(pod["spec"]["hostPID"], true);
    assert_eq!(pod["spec"]["serviceAccountName"], "hook");
    assert_eq!(pod["spec"]["containers"][0]["image"], "example/taskd-installer:1");
    assert_eq!(
        pod["spec"]["containers"][0]["securityContext"]["privileged"],
        true
    );
    assert!(
        pod["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!("uninstall"))
    );
    assert!(api.requests("DELETE", "/namespaces/taskd-system/pods/").len() >= 2);
    assert!(
        api.world.lock().unwrap().pods.is_empty(),
        "uninstall pods deleted"
    );
    for n in ["node-a", "node-b"] {
        assert!(
            api.node(n)["metadata"]["labels"]
                .get("taskd.io/runtime")
                .is_none(),
            "{n}"
        );
    }
    assert!(api.class("taskd").is_none());
    assert!(api.class("foreign").is_some());
    assert!(!host_a.join("opt/taskd").exists());
    assert_eq!(http_status(&metrics, "/readyz"), None);
}
