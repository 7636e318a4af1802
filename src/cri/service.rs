//! `CriService`: the state every CRI handler works on (config, stores, CNI, runtime
//! state). Handlers live in `server/<noun>/<rpc>.rs` as `impl CriService` blocks.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use super::config::CriConfig;
use super::network::Cni;
use super::store::Store;
use super::store::container::Container;
use super::store::image::ImageStore;
use super::store::sandbox::Sandbox;

/// What UpdateRuntimeConfig set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// The node's pod CIDR, as kubelet last sent it ("" until then).
    pub pod_cidr: String,
}

/// The CRI plugin's state.
pub struct CriService {
    pub config: CriConfig,
    pub sandboxes: Store<Sandbox>,
    pub containers: Store<Container>,
    pub images: ImageStore,
    pub cni: Cni,
    /// `<state>/netns`: pinned pod network namespaces.
    pub netns_dir: PathBuf,
    pub root: PathBuf,
    pub state: PathBuf,
    pub runtime: RwLock<RuntimeState>,
}

impl CriService {
    /// `root`/`state`: the plugin's own directories.
    pub fn new(config: CriConfig, root: &Path, state: &Path) -> CriService {
        let cni = Cni::new(&config.cni, state.join("cni-cache"));
        CriService {
            sandboxes: Store::default(),
            containers: Store::default(),
            images: ImageStore::default(),
            cni,
            netns_dir: state.join("netns"),
            root: root.to_owned(),
            state: state.to_owned(),
            runtime: RwLock::new(RuntimeState::default()),
            config,
        }
    }

    pub fn runtime_state(&self) -> RuntimeState {
        self.runtime.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
