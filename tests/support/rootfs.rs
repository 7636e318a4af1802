//! A busybox rootfs directory for `ctr run --rootfs DIR` and runtime tests, built from the
//! host's static `/bin/busybox` (Debian package busybox-static).

use std::path::Path;

use anyhow::{Context, bail};

const BUSYBOX: &str = "/bin/busybox";

/// Builds a minimal rootfs in `dir`: `/bin/busybox` plus one symlink per applet in `/bin`,
/// `/etc/passwd`, `/etc/group`, and empty `/tmp`, `/proc`, `/sys`, `/dev`, `/root`.
pub fn build(dir: &Path) -> anyhow::Result<()> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (apt-get install busybox-static)");
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "var",
    ] {
        std::fs::create_dir_all(dir.join(d)).with_context(|| format!("create {d} in {}", dir.display()))?;
    }
    let target = dir.join("bin/busybox");
    std::fs::copy(busybox, &target).with_context(|| format!("copy {BUSYBOX} to {}", target.display()))?;
    let out = std::process::Command::new(busybox)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    if !out.status.success() {
        bail!("busybox --list failed: {}", out.status);
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = dir.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", &link)
                .with_context(|| format!("symlink {}", link.display()))?;
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}
