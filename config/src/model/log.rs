//! The `log` section.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default log filter.
const DEFAULT_LOG_LEVEL: &str = "info";

fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_owned()
}

/// Logging output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format: `auto` (journald when started by systemd, otherwise
    /// human-readable), `human`, `json` or `journald`.
    #[serde(default)]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `info,aegis_hal=debug`: comma-separated
    /// levels (`off`, `error`, `warn`, `info`, `debug`, `trace`) and
    /// `target=level` directives; a bare word that is not a level is refused
    /// (tracing would read it as a target and log nothing else).
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// journald when running under systemd (`JOURNAL_STREAM` is set),
    /// otherwise `human`.
    #[default]
    Auto,
    /// Human-readable text lines.
    Human,
    /// One JSON object per line.
    Json,
    /// Native systemd journal fields.
    Journald,
}
