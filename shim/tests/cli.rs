//! The shim's command line without any daemon: `--version` and `-info`.
//!
//! Being an integration test of this package, it also makes `cargo test --workspace` build
//! the shim binary (with the workspace's features, next to taskd in target/debug), where the
//! daemon's tests find it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed unwrap is a failed test

const RUNTIME: &str = "io.containerd.taskd.v2";

#[test]
fn version_and_info_need_no_daemon() {
    let bin = env!("CARGO_BIN_EXE_containerd-shim-taskd-v2");
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("run shim");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("containerd-shim-taskd-v2") && text.contains(RUNTIME),
        "{text}"
    );
    let out = std::process::Command::new(bin)
        .arg("-info")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run shim -info");
    assert!(out.status.success(), "{out:?}");
    // RuntimeInfo { name = 1 }: the runtime id as its first field.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(RUNTIME),
        "{:?}",
        out.stdout
    );
}
