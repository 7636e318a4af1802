//! The one decorator every CRI RPC goes through (containerd's `instrumentedService`).
//!
//! ```text
//! Instrument::call(operation, runtime_handler, handler future)
//!   ├─ gate: not ready → Unavailable ("the CRI plugin is not ready yet"); the handler
//!   │        future is never polled
//!   ├─ span  cri{operation, runtime_handler}; debug log of the call (for OpenTelemetry
//!   │        the span is named after the operation, failed on a warn-level failure)
//!   ├─ run the handler inside the span
//!   ├─ metrics: taskd_cri_operations_total{operation,runtime_handler}
//!   │           taskd_cri_operation_duration_seconds{operation,runtime_handler}
//!   │           taskd_cri_operation_errors_total{operation,code} (failures only)
//!   └─ result: Ok → Response; Err → log (warn, debug for NotFound/Unimplemented) and
//!              server::status::to_status(&err) — the only error → Status mapping
//! ```

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::Instrument as _;

use crate::cri::error::CriError;
use crate::errdefs::{ErrorKind, Kind};
use crate::server::status::to_status;

/// Latency buckets (seconds): probes are milliseconds, pulls and pod starts seconds.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// The init gate plus the operation metrics.
pub struct Instrument {
    ready: AtomicBool,
    operations: IntCounterVec,
    errors: IntCounterVec,
    latency: HistogramVec,
}

impl Instrument {
    /// Creates the metrics and registers them in the daemon's registry. Not ready yet.
    pub fn register(registry: &Registry) -> Result<Instrument, prometheus::Error> {
        let i = Instrument::unregistered()?;
        registry.register(Box::new(i.operations.clone()))?;
        registry.register(Box::new(i.errors.clone()))?;
        registry.register(Box::new(i.latency.clone()))?;
        Ok(i)
    }

    /// Metrics not registered anywhere (unit tests).
    pub fn unregistered() -> Result<Instrument, prometheus::Error> {
        Ok(Instrument {
            ready: AtomicBool::new(false),
            operations: IntCounterVec::new(
                Opts::new(
                    "taskd_cri_operations_total",
                    "CRI operations handled, by operation and runtime handler",
                ),
                &["operation", "runtime_handler"],
            )?,
            errors: IntCounterVec::new(
                Opts::new(
                    "taskd_cri_operation_errors_total",
                    "CRI operations that failed, by operation and gRPC code",
                ),
                &["operation", "code"],
            )?,
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "taskd_cri_operation_duration_seconds",
                    "Latency of CRI operations, by operation and runtime handler",
                )
                .buckets(BUCKETS.to_vec()),
                &["operation", "runtime_handler"],
            )?,
        })
    }

    /// Opens the gate (the plugin finished initializing).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Runs one RPC's handler (see the module docs).
    pub async fn call<T, E, F>(
        &self,
        operation: &'static str,
        handler: &str,
        fut: F,
    ) -> Result<tonic::Response<T>, tonic::Status>
    where
        F: Future<Output = Result<T, E>>,
        E: ErrorKind + Display,
    {
        let span = tracing::info_span!("cri", operation, runtime_handler = handler, otel.name = operation);
        if !self.is_ready() {
            let err = CriError::NotReady;
            self.errors
                .with_label_values(&[operation, code_name(err.kind())])
                .inc();
            span.in_scope(|| tracing::debug!(error = %err, "CRI call refused"));
            return Err(to_status(&err));
        }
        let start = Instant::now();
        let result = async {
            tracing::debug!("CRI call");
            fut.await
        }
        .instrument(span.clone())
        .await;
        let elapsed = start.elapsed();
        self.operations.with_label_values(&[operation, handler]).inc();
        self.latency
            .with_label_values(&[operation, handler])
            .observe(elapsed.as_secs_f64());
        let _g = span.enter();
        match result {
            Ok(v) => {
                tracing::debug!(elapsed_ms = elapsed.as_millis() as u64, "CRI call done");
                Ok(tonic::Response::new(v))
            }
            Err(e) => {
                let kind = e.kind();
                self.errors.with_label_values(&[operation, code_name(kind)]).inc();
                match kind {
                    Kind::NotFound | Kind::NotImplemented | Kind::AlreadyExists => {
                        tracing::debug!(error = %e, code = code_name(kind), "CRI call failed");
                    }
                    _ => {
                        crate::telemetry::set_error(&span, e.to_string());
                        tracing::warn!(error = %e, code = code_name(kind), "CRI call failed");
                    }
                }
                Err(to_status(&e))
            }
        }
    }
}

/// gRPC code names as Prometheus label values.
fn code_name(k: Kind) -> &'static str {
    match k {
        Kind::Unknown => "Unknown",
        Kind::InvalidArgument => "InvalidArgument",
        Kind::NotFound => "NotFound",
        Kind::AlreadyExists => "AlreadyExists",
        Kind::FailedPrecondition => "FailedPrecondition",
        Kind::Unavailable => "Unavailable",
        Kind::NotImplemented => "Unimplemented",
        Kind::Canceled => "Canceled",
        Kind::DeadlineExceeded => "DeadlineExceeded",
        Kind::ResourceExhausted => "ResourceExhausted",
        Kind::PermissionDenied => "PermissionDenied",
        Kind::Aborted => "Aborted",
        Kind::OutOfRange => "OutOfRange",
        Kind::Internal => "Internal",
        Kind::DataLoss => "DataLoss",
        Kind::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn gate_refuses_until_ready_without_running_the_handler() {
        let i = Instrument::unregistered().unwrap();
        let ran = AtomicBool::new(false);
        let st = i
            .call("Version", "", async {
                ran.store(true, Ordering::SeqCst);
                Ok::<_, CriError>(1)
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert!(st.message().contains("not ready"), "{}", st.message());
        assert!(!ran.load(Ordering::SeqCst));
        i.set_ready();
        assert_eq!(
            i.call("Version", "", async { Ok::<_, CriError>(2) })
                .await
                .unwrap()
                .into_inner(),
            2
        );
    }

    #[tokio::test]
    async fn the_span_is_named_after_the_operation_and_failed_on_warn_level_errors() {
        use opentelemetry::trace::Status;
        let (subscriber, recorded, _provider) = crate::telemetry::testing::subscriber();
        let _g = tracing::subscriber::set_default(subscriber);
        let i = Instrument::unregistered().unwrap();
        i.set_ready();
        let _ = i
            .call("StartContainer", "runc", async {
                Err::<(), _>(CriError::FailedPrecondition {
                    what: "container c".into(),
                    reason: "not created".into(),
                })
            })
            .await;
        let _ = i
            .call("Exec", "", async {
                Err::<(), _>(CriError::Unimplemented {
                    rpc: "Exec",
                    missing: "the streaming server",
                })
            })
            .await;
        i.call("Version", "", async { Ok::<_, CriError>(()) })
            .await
            .unwrap();
        let start = &recorded.named("StartContainer")[0];
        assert!(
            matches!(&start.status, Status::Error { description } if description.contains("not created")),
            "{:?}",
            start.status
        );
        assert!(
            start
                .attributes
                .iter()
                .any(|kv| kv.key.as_str() == "runtime_handler" && kv.value.as_str() == "runc"),
            "{:?}",
            start.attributes
        );
        // A caller's mistake or a missing feature is not a failed span.
        assert_eq!(recorded.named("Exec")[0].status, Status::Unset);
        assert_eq!(recorded.named("Version")[0].status, Status::Unset);
    }

    #[tokio::test]
    async fn errors_map_to_their_code_and_are_counted() {
        let i = Instrument::unregistered().unwrap();
        i.set_ready();
        let st = i
            .call("Exec", "", async {
                Err::<(), _>(CriError::Unimplemented {
                    rpc: "Exec",
                    missing: "the streaming server",
                })
            })
            .await
            .unwrap_err();
        assert_eq!(st.code(), tonic::Code::Unimplemented);
        assert!(st.message().contains("streaming server"));
        assert_eq!(i.errors.with_label_values(&["Exec", "Unimplemented"]).get(), 1);
        assert_eq!(i.operations.with_label_values(&["Exec", ""]).get(), 1);
        i.call("RunPodSandbox", "runc", async { Ok::<_, CriError>(()) })
            .await
            .unwrap();
        assert_eq!(
            i.operations.with_label_values(&["RunPodSandbox", "runc"]).get(),
            1
        );
        assert_eq!(
            i.latency
                .with_label_values(&["RunPodSandbox", "runc"])
                .get_sample_count(),
            1
        );
    }
}
