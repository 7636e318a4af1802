//! Pod networking: CNI plugin chains over pinned network namespaces.
//!
//! ```text
//! RunPodSandbox ──▶ netns::create(<state>/netns)            pinned by bind mount, lo up
//!                                                          (no loopback plugin process)
//!               ──▶ Cni::setup(id, netns, pod)
//!                     for each network (first max_conf_num of conf_dir, lexical order):
//!                        ADD plugin 1 ─result─▶ prevResult of plugin 2 ─▶ … ─▶ final result
//!                        cache the final result: <state>/cni-cache/<net>-<id>-<ifname>.json
//!                   ◀── IPs of the pod interface (eth0)
//! StopPodSandbox ──▶ Cni::teardown  DEL in reverse plugin order, prevResult from the cache
//!               ──▶ netns::remove
//! Status         ──▶ Cni::status    NetworkReady=false (NetworkPluginNotReady) until conf_dir
//!                                   holds a loadable network config
//! ```
//!
//! Plugin execution follows the CNI spec: the binary named by `type` is searched in the
//! bin dirs, run with `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`,
//! `CNI_ARGS`, `CNI_PATH` and the network config (with `name`, `cniVersion`,
//! `prevResult`, `runtimeConfig`) on stdin; success is exit 0 with a result on stdout,
//! failure a non-zero exit with a CNI error object on stdout.

pub mod cni;
pub mod netns;

pub use cni::{Cni, CniError, NetworkConfList, PodNetwork, PodRef, PortMapping};
pub use netns::NetnsError;
