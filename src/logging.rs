//! Logging through `tracing`, as text or JSON on stderr.
//!
//! The level (an `EnvFilter` directive such as `info` or `info,taskd::server=debug`) comes
//! from, in order of precedence: `RUST_LOG` when set, then `--log-level`, then the config's
//! `[debug] level`. SIGHUP re-reads the config file and applies its level through the reload
//! handle, unless `RUST_LOG` or `--log-level` override it.
//!
//! JSON (`[debug] format = "json"`) is one object per line with the names log pipelines
//! (Loki, Elasticsearch, Cloud Logging) expect: `time` (RFC 3339), `level` (lowercase),
//! `msg`, `target`, then every field of the event and of its spans at the top level (an
//! event field wins over a span field of the same name), e.g.
//! `{"time":"…","level":"info","msg":"pod sandbox stopped","target":"taskd::cri::…","sandbox":"…"}`.
//!
//! The level filters the log layer only. With `[tracing] endpoint` set, a second layer
//! (`crate::telemetry`) exports taskd's INFO spans over OTLP whatever the log level; the
//! `otel.*` fields that name those spans are left out of both log formats.

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, JsonFields, Writer};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;
use crate::errdefs::{ErrorKind, Kind};
use crate::telemetry::{self, Export, TelemetryError, is_otel_field};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?} (from {from}): {source}")]
    Level {
        level: String,
        from: &'static str,
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("install the tracing subscriber: {0}")]
    Install(#[from] tracing_subscriber::util::TryInitError),
    #[error("reload the log level: {0}")]
    Reload(#[from] reload::Error),
    #[error("start the tracing export: {0}")]
    Telemetry(#[from] TelemetryError),
}

impl ErrorKind for LoggingError {
    fn kind(&self) -> Kind {
        match self {
            LoggingError::Level { .. } => Kind::InvalidArgument,
            LoggingError::Install(_) | LoggingError::Reload(_) => Kind::Unknown,
            LoggingError::Telemetry(e) => e.kind(),
        }
    }
}

/// Which source decides the level.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LevelSource {
    Env(String),
    Flag(String),
    Config(String),
}

impl LevelSource {
    /// Applies the precedence: RUST_LOG > --log-level > config.
    pub fn pick(env: Option<String>, flag: Option<String>, config: &str) -> LevelSource {
        match (env.filter(|s| !s.is_empty()), flag) {
            (Some(e), _) => LevelSource::Env(e),
            (None, Some(f)) => LevelSource::Flag(f),
            (None, None) => LevelSource::Config(config.to_owned()),
        }
    }

    fn parts(&self) -> (&str, &'static str) {
        match self {
            LevelSource::Env(l) => (l, "RUST_LOG"),
            LevelSource::Flag(l) => (l, "--log-level"),
            LevelSource::Config(l) => (l, "config [debug] level"),
        }
    }
}

fn filter(level: &str, from: &'static str) -> Result<EnvFilter, LoggingError> {
    EnvFilter::builder()
        .parse(level)
        .map_err(|source| LoggingError::Level {
            level: level.to_owned(),
            from,
            source,
        })
}

/// Handle to change the level at run time; holds the tracing export when there is one.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    source: LevelSource,
    export: Option<Export>,
}

/// Installs the global subscriber: the log layer (filtered by the level) and, when
/// `[tracing] endpoint` is set, the OpenTelemetry export layer. With an endpoint it must
/// be called inside the tokio runtime.
pub fn init(
    source: LevelSource,
    format: LogFormat,
    tracing_cfg: &crate::telemetry::Tracing,
) -> Result<Logging, LoggingError> {
    let (level, from) = source.parts();
    let (filter_layer, handle) = reload::Layer::new(filter(level, from)?);
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(PipelineJson)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let (export, otel) = match Export::start(tracing_cfg)? {
        Some((export, tracer)) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_filter(telemetry::filter());
            (Some(export), Some(layer))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter_layer))
        .with(otel)
        .try_init()?;
    if let Some(e) = &export {
        tracing::info!(endpoint = e.endpoint(), "exporting traces over OTLP");
    }
    Ok(Logging {
        handle,
        source,
        export,
    })
}

impl Logging {
    /// Sends the spans still queued and stops the export (blocking; call it outside async
    /// code while the runtime still runs). No-op without an export.
    pub fn shutdown_export(&mut self) {
        if let Some(e) = self.export.take() {
            e.shutdown();
        }
    }

    /// Applies a level read from the config file again (SIGHUP). Returns whether it changed
    /// anything; an override (RUST_LOG, --log-level) keeps winning.
    pub fn reload_from_config(&mut self, level: &str) -> Result<bool, LoggingError> {
        match &self.source {
            LevelSource::Env(_) | LevelSource::Flag(_) => {
                let (l, from) = self.source.parts();
                tracing::info!(
                    level = l,
                    from,
                    "log level is overridden; config level not applied"
                );
                Ok(false)
            }
            LevelSource::Config(current) => {
                let new = filter(level, "config [debug] level")?;
                if current == level {
                    return Ok(false);
                }
                self.handle.reload(new)?;
                tracing::info!(from = %current, to = level, "log level reloaded");
                self.source = LevelSource::Config(level.to_owned());
                Ok(true)
            }
        }
    }
}

/// The text format's fields: tracing-subscriber's, without the `otel.*` span fields.
struct TextFields;

impl<'w> tracing_subscriber::fmt::FormatFields<'w> for TextFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'w>, fields: R) -> std::fmt::Result {
        let mut v = SkipOtel(DefaultVisitor::new(writer, true));
        fields.record(&mut v);
        v.0.finish()
    }
}

/// Forwards every field but the `otel.*` ones.
struct SkipOtel<V>(V);

impl<V: Visit> Visit for SkipOtel<V> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !is_otel_field(field.name()) {
            self.0.record_debug(field, value);
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if !is_otel_field(field.name()) {
            self.0.record_str(field, value);
        }
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if !is_otel_field(field.name()) {
            self.0.record_error(field, value);
        }
    }
}

/// The JSON event format described in the module docs.
struct PipelineJson;

/// Collects an event's fields into a JSON map (`message` becomes `msg`).
struct JsonVisitor<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl JsonVisitor<'_> {
    fn put(&mut self, field: &Field, v: serde_json::Value) {
        if is_otel_field(field.name()) {
            return;
        }
        let name = match field.name() {
            "message" => "msg",
            n => n,
        };
        self.0.insert(name.to_owned(), v);
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, serde_json::Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, value.into());
    }
}

impl<S, N> FormatEvent<S, N> for PipelineJson
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'w> tracing_subscriber::fmt::FormatFields<'w> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut time = String::new();
        SystemTime.format_time(&mut Writer::new(&mut time))?;
        let meta = event.metadata();
        let mut obj = serde_json::Map::new();
        obj.insert("time".into(), time.into());
        obj.insert("level".into(), meta.level().as_str().to_ascii_lowercase().into());
        obj.insert("msg".into(), "".into());
        obj.insert("target".into(), meta.target().into());
        // Span fields, outermost first, so that inner spans and then the event win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                let Some(fields) = ext.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(serde_json::Value::Object(m)) = serde_json::from_str::<serde_json::Value>(fields) {
                    obj.extend(m.into_iter().filter(|(k, _)| !is_otel_field(k)));
                }
            }
        }
        event.record(&mut JsonVisitor(&mut obj));
        let line = serde_json::to_string(&obj).map_err(|_| std::fmt::Error)?;
        writeln!(writer, "{line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_env_then_flag_then_config() {
        let p = LevelSource::pick(Some("debug".into()), Some("warn".into()), "info");
        assert_eq!(p, LevelSource::Env("debug".into()));
        let p = LevelSource::pick(Some(String::new()), Some("warn".into()), "info");
        assert_eq!(p, LevelSource::Flag("warn".into()));
        let p = LevelSource::pick(None, None, "info");
        assert_eq!(p, LevelSource::Config("info".into()));
    }

    /// Everything written through the returned writer.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// An event in a span that has both plain and `otel.*` fields.
    fn log_one() {
        let span = tracing::info_span!(
            "cri",
            operation = "RunPodSandbox",
            otel.name = "RunPodSandbox",
            otel.kind = "server"
        );
        let _g = span.enter();
        tracing::info!(sandbox = "s1", "pod sandbox started");
    }

    #[test]
    fn json_lines_have_pipeline_names_and_span_fields_on_top_without_otel_fields() {
        let buf = Buf::default();
        let w = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(PipelineJson)
            .with_writer(move || w.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_one);
        let line = buf.text();
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        assert_eq!(v["level"], "info", "{line}");
        assert_eq!(v["msg"], "pod sandbox started", "{line}");
        assert_eq!(v["sandbox"], "s1", "{line}");
        assert_eq!(v["operation"], "RunPodSandbox", "{line}");
        assert!(v["time"].as_str().is_some_and(|t| t.contains('T')), "{line}");
        assert!(v.get("fields").is_none() && v.get("message").is_none(), "{line}");
        assert!(!line.contains("otel."), "{line}");
    }

    #[test]
    fn text_lines_leave_otel_fields_out() {
        let buf = Buf::default();
        let w = buf.clone();
        let layer = tracing_subscriber::fmt::layer()
            .fmt_fields(TextFields)
            .with_ansi(false)
            .with_writer(move || w.clone());
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log_one);
        let line = buf.text();
        assert!(
            line.contains("cri{operation=\"RunPodSandbox\"}: ")
                && line.contains("pod sandbox started sandbox=\"s1\""),
            "{line}"
        );
        assert!(!line.contains("otel."), "{line}");
    }

    #[test]
    fn bad_level_names_its_source() {
        let e = filter("[[[", "--log-level").unwrap_err();
        assert!(e.to_string().contains("--log-level"), "{e}");
    }
}
