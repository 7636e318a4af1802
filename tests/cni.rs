//! The CRI plugin's CNI layer against the real containernetworking-plugins (Debian puts
//! them in /usr/lib/cni): a bridge + host-local IPAM network on a private subnet, only
//! inside network namespaces this test creates (the bridge gets no address and no masquerade:
//! nothing can leave the machine). Cleans up its netns, bridge and IPAM state by name/path.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use taskd::cri::config::CniConfig;
use taskd::cri::network::{Cni, CniError, PodRef, netns};

const BIN_DIR: &str = "/usr/lib/cni";

/// Everything the test creates; removed on drop (also on panic).
struct Env {
    dir: tempfile::TempDir,
    bridge: String,
    netns: Vec<PathBuf>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for p in &self.netns {
            let _ = netns::remove(p);
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).output();
    }
}

impl Env {
    /// `subnet_octet`: the third octet of 10.88.X.0/24, distinct per test.
    fn new(subnet_octet: u8, extra_plugins: &str) -> (Env, Cni) {
        support::require(&[
            support::Need::Root,
            support::Need::Bin("nsenter", "util-linux"),
            support::Need::Bin("ip", "iproute2"),
        ]);
        support::require(&support::CNI_PLUGINS);
        let dir = tempfile::tempdir().unwrap();
        let bridge = format!("tkd{}-{}", std::process::id() % 100_000, subnet_octet % 100);
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        let ipam_dir = dir.path().join("ipam");
        std::fs::write(
            conf_dir.join("10-tkd.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"tkdtest","plugins":[
                  {{"type":"bridge","bridge":"{bridge}","isGateway":false,"ipMasq":false,
                    "ipam":{{"type":"host-local","dataDir":"{}","ranges":[[{{"subnet":"10.88.{subnet_octet}.0/24"}}]]}}}}
                  {extra_plugins}]}}"#,
                ipam_dir.display()
            ),
        )
        .unwrap();
        let cfg = CniConfig {
            conf_dir,
            bin_dirs: vec![PathBuf::from(BIN_DIR)],
            ..Default::default()
        };
        let cni = Cni::new(&cfg, dir.path().join("cache"));
        (
            Env {
                dir,
                bridge,
                netns: Vec::new(),
            },
            cni,
        )
    }

    fn netns(&mut self) -> PathBuf {
        let p = netns::create(&self.dir.path().join("netns")).unwrap();
        self.netns.push(p.clone());
        p
    }

    /// IPs host-local has handed out (files named after the address).
    fn leases(&self) -> Vec<String> {
        let d = self.dir.path().join("ipam").join("tkdtest");
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|e| {
                e.filter_map(std::result::Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("10."))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

fn in_netns(ns: &Path, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net={}", ns.display()))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pod(id: &str) -> PodRef {
    PodRef {
        sandbox_id: id.into(),
        name: "p".into(),
        namespace: "default".into(),
        uid: "u-1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins, nsenter, ip"]
async fn bridge_with_host_local_add_check_del() {
    let (mut env, cni) = Env::new(201, "");
    let ns = env.netns();
    let net = cni.setup(&pod("sandbox1"), &ns, &[]).await.expect("ADD");
    assert_eq!(net.ips.len(), 1, "{net:?}");
    assert!(net.ips[0].starts_with("10.88.201."), "{net:?}");
    assert_eq!(env.leases(), net.ips);

    // Inside the pod's netns: eth0 has the address, loopback is up.
    let addr = in_netns(&ns, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    assert!(addr.contains(&format!("{}/24", net.ips[0])), "{addr}");
    let lo = in_netns(&ns, &["ip", "-o", "link", "show", "lo"]);
    assert!(lo.contains("UP"), "{lo}");
    let lo4 = in_netns(&ns, &["ip", "-o", "-4", "addr", "show", "lo"]);
    assert!(lo4.contains("127.0.0.1"), "{lo4}");

    cni.check(&pod("sandbox1"), &ns).await.expect("CHECK");

    // A second pod gets another address on the same bridge.
    let ns2 = env.netns();
    let net2 = cni.setup(&pod("sandbox2"), &ns2, &[]).await.expect("ADD 2");
    assert_ne!(net2.ips, net.ips);

    // DEL releases the address and the interface; twice is fine (idempotent).
    cni.teardown(&pod("sandbox1"), Some(&ns), &[]).await.expect("DEL");
    assert_eq!(env.leases(), net2.ips);
    let links = in_netns(&ns, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");
    cni.teardown(&pod("sandbox1"), Some(&ns), &[])
        .await
        .expect("DEL again");

    // DEL without a netns (already removed) still releases IPAM state.
    netns::remove(&ns2).unwrap();
    cni.teardown(&pod("sandbox2"), None, &[])
        .await
        .expect("DEL without netns");
    assert!(env.leases().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins, nsenter, ip"]
async fn failed_add_rolls_back_the_chain() {
    // The second plugin does not exist: ADD fails after bridge + IPAM succeeded.
    let (mut env, cni) = Env::new(202, r#",{"type":"no-such-plugin-tkd"}"#);
    let ns = env.netns();
    let err = cni.setup(&pod("sandbox3"), &ns, &[]).await.unwrap_err();
    assert!(
        matches!(err, CniError::PluginNotFound { ref plugin, .. } if plugin == "no-such-plugin-tkd"),
        "{err}"
    );
    assert!(env.leases().is_empty(), "IPAM address leaked: {:?}", env.leases());
    let links = in_netns(&ns, &["ip", "-o", "link"]);
    assert!(!links.contains("eth0"), "{links}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "e2e: needs root, CNI plugins, nsenter, ip"]
async fn plugin_error_carries_the_cni_error_message() {
    // host-local refuses a range that is not a subnet: the CNI error object reaches us.
    let (mut env, _) = Env::new(203, "");
    let conf = env.dir.path().join("net.d/10-tkd.conflist");
    let text = std::fs::read_to_string(&conf)
        .unwrap()
        .replace("10.88.203.0/24", "10.88.203.0/99");
    std::fs::write(&conf, text).unwrap();
    let cni = Cni::new(
        &CniConfig {
            conf_dir: env.dir.path().join("net.d"),
            bin_dirs: vec![PathBuf::from(BIN_DIR)],
            ..Default::default()
        },
        env.dir.path().join("cache"),
    );
    let ns = env.netns();
    let err = cni.setup(&pod("sandbox4"), &ns, &[]).await.unwrap_err();
    match &err {
        CniError::Plugin {
            plugin, command, msg, ..
        } => {
            assert_eq!((plugin.as_str(), *command), ("bridge", "ADD"));
            assert!(!msg.is_empty());
        }
        other => panic!("expected a plugin error, got {other}"),
    }
}
