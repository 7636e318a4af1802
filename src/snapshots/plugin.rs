//! The snapshotter plugins: `io.containerd.snapshotter.v1.overlayfs` and
//! `io.containerd.snapshotter.v1.native`. Both provide `dyn Snapshotter`.
//!
//! overlayfs checks at init that the backing file system of its root can host an overlay
//! (a test mount of a one-lower overlay in `<root>/check-<uuid>`, unmounted and removed at
//! once); when it cannot, the plugin skips itself with the mount error as the reason, and
//! `native` remains. A passed check is recorded in `<root>/overlay-checked` with what it
//! depends on (kernel release, the root's device and file system type): a restart on the same
//! kernel and file system trusts the record and mounts nothing. The test mount's unmount
//! waits for an RCU grace period, 10–160 ms here, which was the largest part of a full
//! node's restart.

use std::path::Path;
use std::sync::Arc;

use super::error::SnapshotError;
use super::snapshotter::Backend;
use super::{FsSnapshotter, Snapshotter};
use crate::metadata::Db;
use crate::plugin::{InitContext, Instance, PluginError, PluginType, Registration, ids};

/// The plugins this module registers; `builtins.rs` lists them.
pub fn registrations() -> Vec<Registration> {
    vec![overlayfs(), native()]
}

fn overlayfs() -> Registration {
    Registration::new(PluginType::Snapshotter, ids::OVERLAYFS, |cx| async move {
        let root = cx.root().to_owned();
        let check_root = root.clone();
        let checked = crate::blocking::run::<_, SnapshotError>("overlay check", move || {
            check_overlay_once(&check_root)
        })
        .await
        .map_err(PluginError::init)?;
        if let Err(reason) = checked {
            return Err(PluginError::Skip(reason));
        }
        let index_off = Path::new("/sys/module/overlay/parameters/index").exists();
        init(cx, ids::OVERLAYFS, Backend::Overlay { index_off }).await
    })
    .requires(&[PluginType::Metadata])
}

fn native() -> Registration {
    Registration::new(PluginType::Snapshotter, ids::NATIVE, |cx| async move {
        init(cx, ids::NATIVE, Backend::Native).await
    })
    .requires(&[PluginType::Metadata])
}

async fn init(cx: InitContext, name: &'static str, backend: Backend) -> Result<Instance, PluginError> {
    let db = cx.get::<Db>()?;
    let root = cx.root().to_owned();
    let sn = crate::blocking::try_run("open", move || FsSnapshotter::open(name, &root, backend, db))
        .await
        .map_err(PluginError::init)?;
    let fs = Arc::new(sn);
    let sn: Arc<dyn Snapshotter> = fs.clone();
    if let Err(error) = sn.cleanup().await {
        tracing::warn!(snapshotter = name, %error, "snapshot cleanup at startup failed");
    }
    Ok(Instance::new()
        .with::<FsSnapshotter>(fs)
        .with::<dyn Snapshotter>(sn)
        .export("root", cx.root().display().to_string()))
}

/// The record of a passed overlay check under the plugin's root.
pub const CHECKED: &str = "overlay-checked";

/// What an overlay check's result depends on: the kernel release, and the device and file
/// system type of `root`. None when one of them cannot be read (then the check runs).
pub fn check_fingerprint(root: &Path) -> Option<String> {
    let uts = nix::sys::utsname::uname().ok()?;
    let st = nix::sys::stat::stat(root).ok()?;
    let fs = nix::sys::statfs::statfs(root).ok()?;
    Some(format!(
        "kernel={}\ndev={}\nfs={:#x}\n",
        uts.release().to_string_lossy(),
        st.st_dev,
        fs.filesystem_type().0
    ))
}

/// [`check_overlay`], unless `<root>/overlay-checked` records a passed check for this
/// kernel and file system (see the module docs); a passed check writes the record (0600,
/// through a rename), a failed one removes it.
pub fn check_overlay_once(root: &Path) -> Result<(), String> {
    let record = root.join(CHECKED);
    let print = check_fingerprint(root);
    if print.is_some() && std::fs::read_to_string(&record).ok() == print {
        return Ok(());
    }
    let _ = std::fs::remove_file(&record);
    check_overlay(root)?;
    if let Some(print) = print {
        let tmp = root.join(format!("{CHECKED}.tmp"));
        let written = {
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .and_then(|mut f| f.write_all(print.as_bytes()))
                .and_then(|()| std::fs::rename(&tmp, &record))
        };
        if let Err(error) = written {
            // Only a cost: the next start checks again.
            tracing::debug!(path = %record.display(), %error, "overlay check not recorded");
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(())
}

/// Mounts a throwaway overlay under `root`; Err(reason) when overlay cannot work there.
pub fn check_overlay(root: &Path) -> Result<(), String> {
    use nix::mount::{MntFlags, MsFlags, mount, umount2};
    let dir = root.join(format!("check-{}", uuid::Uuid::new_v4().simple()));
    let (lower, upper, work, merged) = (
        dir.join("lower"),
        dir.join("upper"),
        dir.join("work"),
        dir.join("merged"),
    );
    let result = (|| {
        for d in [&lower, &upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(|e| format!("create {}: {e}", d.display()))?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(|e| {
            format!(
                "overlay is not supported on the file system of {}: test mount failed: {e}",
                root.display()
            )
        })?;
        umount2(&merged, MntFlags::MNT_DETACH).map_err(|e| format!("unmount {}: {e}", merged.display()))
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
