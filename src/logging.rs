//! Logging through `tracing`, as text or JSON on stderr.
//!
//! The level (an `EnvFilter` directive such as `info` or `info,taskd::server=debug`) comes
//! from, in order of precedence: `RUST_LOG` when set, then `--log-level`, then the config's
//! `[debug] level`. SIGHUP re-reads the config file and applies its level through the reload
//! handle, unless `RUST_LOG` or `--log-level` override it.

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, reload};

use crate::config::LogFormat;
use crate::errdefs::{ErrorKind, Kind};

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
}

impl ErrorKind for LoggingError {
    fn kind(&self) -> Kind {
        match self {
            LoggingError::Level { .. } => Kind::InvalidArgument,
            LoggingError::Install(_) | LoggingError::Reload(_) => Kind::Unknown,
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

/// Handle to change the level at run time.
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    source: LevelSource,
}

/// Installs the global subscriber.
pub fn init(source: LevelSource, format: LogFormat) -> Result<Logging, LoggingError> {
    let (level, from) = source.parts();
    let (filter_layer, handle) = reload::Layer::new(filter(level, from)?);
    let fmt = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter_layer)
        .with(fmt)
        .try_init()?;
    Ok(Logging { handle, source })
}

impl Logging {
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

    #[test]
    fn bad_level_names_its_source() {
        let e = filter("[[[", "--log-level").unwrap_err();
        assert!(e.to_string().contains("--log-level"), "{e}");
    }
}
