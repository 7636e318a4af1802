//! `taskd_cri_sandboxes{state}` and `taskd_cri_containers{state}`: counts by state, read from
//! the CRI stores at scrape time.

use std::sync::Weak;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntGaugeVec, Opts, Registry};

use crate::cri::service::CriService;
use crate::cri::store::container::ContainerState;
use crate::cri::store::sandbox::SandboxState;

const SANDBOX_STATES: &[SandboxState] = &[
    SandboxState::Initializing,
    SandboxState::Ready,
    SandboxState::NotReady,
    SandboxState::Unknown,
];
const CONTAINER_STATES: &[ContainerState] = &[
    ContainerState::Created,
    ContainerState::Running,
    ContainerState::Exited,
    ContainerState::Unknown,
];

/// `taskd_cri_sandboxes{state}` and `taskd_cri_containers{state}`, counted from the CRI
/// stores when scraped (every state is exported, 0 included). Holds the service weakly.
pub struct StateCollector {
    service: Weak<CriService>,
    descs: Vec<Desc>,
}

fn state_gauges() -> Result<(IntGaugeVec, IntGaugeVec), prometheus::Error> {
    Ok((
        IntGaugeVec::new(
            Opts::new("taskd_cri_sandboxes", "CRI pod sandboxes, by state"),
            &["state"],
        )?,
        IntGaugeVec::new(
            Opts::new("taskd_cri_containers", "CRI containers, by state"),
            &["state"],
        )?,
    ))
}

/// `CONTAINER_RUNNING` → `running`.
fn container_state_label(s: ContainerState) -> String {
    s.as_str().trim_start_matches("CONTAINER_").to_ascii_lowercase()
}

impl StateCollector {
    pub fn register(service: Weak<CriService>, registry: &Registry) -> Result<(), prometheus::Error> {
        let (s, c) = state_gauges()?;
        let descs = s.desc().into_iter().chain(c.desc()).cloned().collect();
        registry.register(Box::new(StateCollector { service, descs }))
    }
}

impl Collector for StateCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let (Some(service), Ok((sandboxes, containers))) = (self.service.upgrade(), state_gauges()) else {
            return Vec::new();
        };
        for s in SANDBOX_STATES {
            sandboxes.with_label_values(&[s.as_str()]).set(0);
        }
        for s in CONTAINER_STATES {
            containers.with_label_values(&[&container_state_label(*s)]).set(0);
        }
        for sb in service.sandboxes.list() {
            sandboxes.with_label_values(&[sb.state.as_str()]).inc();
        }
        for c in service.containers.list() {
            containers
                .with_label_values(&[&container_state_label(c.state)])
                .inc();
        }
        let mut out = sandboxes.collect();
        out.extend(containers.collect());
        out
    }
}
