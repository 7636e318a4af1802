//! Stats: the task's cgroup metrics (`io.containerd.cgroups.v1.Metrics` or `.v2.Metrics`).

use containerd_shim::util::convert_to_any;
use containerd_shim_protos::protobuf::well_known_types::any::Any;

use crate::service::ServiceError;

pub async fn collect(id: &str, pid: u32) -> Result<Any, ServiceError> {
    let id2 = id.to_owned();
    let err = move |e: &dyn std::fmt::Display| ServiceError::Invalid {
        id: id2.clone(),
        reason: format!("stats: {e}"),
    };
    let e2 = err.clone();
    tokio::task::spawn_blocking(move || {
        let cg = containerd_shim::cgroup::get_cgroup(pid).map_err(|e| err(&e))?;
        if cg.v2() {
            let m = containerd_shim::cgroup::collect_metrics_v2(&cg).map_err(|e| err(&e))?;
            convert_to_any(Box::new(m)).map_err(|e| err(&e))
        } else {
            let m = containerd_shim::cgroup::collect_metrics(&cg).map_err(|e| err(&e))?;
            convert_to_any(Box::new(m)).map_err(|e| err(&e))
        }
    })
    .await
    .map_err(|e| e2(&e))?
}
