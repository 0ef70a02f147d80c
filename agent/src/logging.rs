//! Log output: human-readable by default, JSON lines on request, journald when running under
//! systemd (detected by `JOURNAL_STREAM`, which systemd sets for a service's stdout/stderr).

use std::sync::OnceLock;

use aegis_config::LogFormat;
use tracing_subscriber::reload;
use tracing_subscriber::{EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Replaces the log filter at run time (`info`, `debug`, `aegis_agent=debug,warn`, ...).
pub fn set_level(level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("bad log filter {level:?}: {e}"))?;
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(filter).map_err(|e| e.to_string())?;
    tracing::info!(level, "log filter changed");
    Ok(())
}
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Installs the global subscriber. `RUST_LOG`, when set, overrides `level`.
/// Returns the format actually used (journald falls back to human if the socket is absent).
pub fn init(format: LogFormat, level: &str) -> LogFormat {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => registry
                .with(layer.with_syslog_identifier("aegis".into()))
                .try_init(),
            Err(e) => {
                let r = registry
                    .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
                    .try_init();
                tracing::warn!(error = %e, "journald unavailable; logging to stderr");
                return if r.is_ok() { LogFormat::Human } else { format };
            }
        },
        LogFormat::Human | LogFormat::Auto => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_target(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    // A second init (tests, or `demo` after `run`) keeps the first subscriber.
    let _ = result;
    format
}
