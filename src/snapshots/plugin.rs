//! The snapshotter plugins: `io.containerd.snapshotter.v1.overlayfs` and
//! `io.containerd.snapshotter.v1.native`. Both provide `dyn Snapshotter`.
//!
//! overlayfs checks at init that the backing file system of its root can host an overlay
//! (a test mount of a one-lower overlay in `<root>/check-<uuid>`, unmounted and removed at
//! once); when it cannot, the plugin skips itself with the mount error as the reason, and
//! `native` remains.

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
        let checked =
            crate::blocking::run::<_, SnapshotError>("overlay check", move || check_overlay(&check_root))
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
