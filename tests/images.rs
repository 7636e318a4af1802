//! The images service, pull, import/export and garbage collection through the real `ctr`
//! against a real taskd and a real `docker-registry`.

mod support;

use support::Daemon;
use support::registry::Registry;

/// Debug helper: keeps a registry with busybox up for manual checks (TASKD_HOLD_REGISTRY=1).
#[test]
#[ignore]
fn hold_registry() {
    let reg = Registry::start();
    let (reference, _) = reg.push_busybox("busybox", "latest");
    println!("REGISTRY {reference}");
    std::fs::write("/tmp/scratch/registry-ref", &reference).unwrap();
    std::thread::sleep(std::time::Duration::from_secs(1800));
    drop(reg);
    let _ = Daemon::start;
}
