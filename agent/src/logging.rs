//! Log output: human-readable by default, JSON lines on request, journald when running under
//! systemd (detected by `JOURNAL_STREAM`, which systemd sets for a service's stdout/stderr).
//!
//! Every log filter (the config's `log.level`, `RUST_LOG`, the fleet's `set_log_level` and
//! `log_level` toggle) goes through [`parse_filter`], which is stricter than tracing's own
//! parser: a bare word that is not a level is refused. tracing reads such a word as a target
//! name, so a typo like `verbose` used to enable one target that does not exist and silence
//! every log, warnings included.
//!
//! Colours (ANSI escape codes) only go to a terminal: a file, a pipe or the journal gets plain
//! text, and `NO_COLOR` (<https://no-color.org>) turns them off everywhere.

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};

use aegis_config::LogFormat;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// The filter in force, as given (`RUST_LOG`, `log.level` or the last [`set_level`]).
static IN_FORCE: Mutex<String> = Mutex::new(String::new());

/// The filter used when neither `RUST_LOG` nor the given level can be used.
const FALLBACK_LEVEL: &str = "info";

/// Why a log filter was refused or could not be installed; each names the filter.
#[derive(Debug, thiserror::Error)]
pub enum LogFilterError {
    /// Not a filter this agent accepts: a bare word that is not a level, a directive without
    /// a target or with a level that is not one, or no directive at all.
    #[error("log filter {spec:?}: {reason}")]
    Refused {
        /// The filter as given.
        spec: String,
        /// The offending directive and why (from `aegis_config::check_log_filter`).
        reason: String,
    },
    /// Accepted by the agent's own check, refused by tracing's parser.
    #[error("log filter {spec:?} is not a valid filter: {source}")]
    Invalid {
        /// The filter as given.
        spec: String,
        /// tracing's reason.
        source: tracing_subscriber::filter::ParseError,
    },
    /// [`set_level`] before [`init`].
    #[error("logging is not initialised")]
    NotInitialised,
    /// The subscriber refused the new filter.
    #[error("{source}")]
    Reload {
        /// Why.
        source: reload::Error,
    },
}

/// Parses a log filter: comma-separated directives, each either a level (`info`) or
/// `target=level` (`aegis_agent::fleet=debug`; tracing's `target[span{field=value}]=level`
/// also works), levels being `off`, `error`, `warn`, `info`, `debug`, `trace` in any case.
/// A bare level sets the default for every target, e.g. `warn,aegis_agent=debug`.
///
/// Refused, with an error naming the offending directive: an empty filter, a bare word that
/// is not a level (`verbose`), a directive without a target (`=debug`) or with a level that
/// is not one (`aegis_agent=loud`), and anything tracing itself cannot parse.
pub fn parse_filter(spec: &str) -> Result<EnvFilter, LogFilterError> {
    aegis_config::check_log_filter(spec).map_err(|reason| LogFilterError::Refused {
        spec: spec.to_string(),
        reason,
    })?;
    let directives: Vec<&str> = spec
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    EnvFilter::try_new(directives.join(",")).map_err(|source| LogFilterError::Invalid {
        spec: spec.to_string(),
        source,
    })
}

/// Replaces the log filter at run time (`info`, `debug`, `aegis_agent=debug,warn`, ...); a
/// filter [`parse_filter`] refuses leaves the one in force unchanged.
pub fn set_level(level: &str) -> Result<(), LogFilterError> {
    let filter = parse_filter(level)?;
    let handle = FILTER.get().ok_or(LogFilterError::NotInitialised)?;
    handle
        .reload(filter)
        .map_err(|source| LogFilterError::Reload { source })?;
    *IN_FORCE.lock().unwrap_or_else(|p| p.into_inner()) = level.trim().to_string();
    tracing::info!(level, "log filter changed");
    Ok(())
}

/// The log filter in force since [`init`] (`None` before): what `RUST_LOG`, `log.level` or
/// the last [`set_level`] said.
pub fn in_force() -> Option<String> {
    let f = IN_FORCE.lock().unwrap_or_else(|p| p.into_inner());
    (!f.is_empty()).then(|| f.clone())
}

/// Whether human-readable logs get ANSI colours: only on a terminal, and not when `NO_COLOR`
/// is set to a non-empty value.
fn colour_wanted(is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// The filter to start with: `RUST_LOG` when set, else `level`. One that [`parse_filter`]
/// refuses is not used (the next one is) and is returned as a message to log once logging
/// works.
fn initial_filter(rust_log: Option<&str>, level: &str) -> (EnvFilter, String, Vec<String>) {
    let mut refused = Vec::new();
    if let Some(env) = rust_log.filter(|v| !v.trim().is_empty()) {
        match parse_filter(env) {
            Ok(f) => return (f, env.trim().to_string(), refused),
            Err(e) => refused.push(format!("RUST_LOG ignored: {e}")),
        }
    }
    match parse_filter(level) {
        Ok(f) => (f, level.trim().to_string(), refused),
        Err(e) => {
            refused.push(format!("log level ignored, using {FALLBACK_LEVEL:?}: {e}"));
            (
                EnvFilter::new(FALLBACK_LEVEL),
                FALLBACK_LEVEL.to_string(),
                refused,
            )
        }
    }
}

/// Installs the global subscriber. `RUST_LOG`, when set and valid, overrides `level`; an
/// invalid one is refused with an error log and `level` applies.
/// Returns the format actually used (journald falls back to human if the socket is absent).
pub fn init(format: LogFormat, level: &str) -> LogFormat {
    let rust_log = std::env::var_os("RUST_LOG");
    let (filter, spec, refused) = initial_filter(
        rust_log.as_ref().map(|v| v.to_str().unwrap_or("\u{fffd}")),
        level,
    );
    let format = match format {
        LogFormat::Auto if std::env::var_os("JOURNAL_STREAM").is_some() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Human,
        f => f,
    };
    let ansi = colour_wanted(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let human = || {
        tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
    };
    let mut journald_error = None;
    let (filter, handle) = reload::Layer::new(filter);
    if FILTER.set(handle).is_ok() {
        *IN_FORCE.lock().unwrap_or_else(|p| p.into_inner()) = spec;
    }
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(RingLayer(ring()));
    let (result, used) = match format {
        LogFormat::Json => (
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .json()
                        .with_current_span(false)
                        .with_writer(std::io::stderr),
                )
                .try_init(),
            format,
        ),
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => (
                registry
                    .with(layer.with_syslog_identifier("aegis".into()))
                    .try_init(),
                format,
            ),
            Err(e) => {
                journald_error = Some(e);
                let r = registry.with(human()).try_init();
                let used = if r.is_ok() { LogFormat::Human } else { format };
                (r, used)
            }
        },
        LogFormat::Human | LogFormat::Auto => (registry.with(human()).try_init(), format),
    };
    // A second init (tests, or `demo` after `run`) keeps the first subscriber.
    let _ = result;
    for message in refused {
        // An error: the operator asked for logs and must see why they differ.
        tracing::error!("{message}");
    }
    if let Some(e) = journald_error {
        tracing::warn!(error = %e, "journald unavailable; logging to stderr");
    }
    used
}

/// How many lines [`ring`] keeps.
pub const RING_LINES: usize = 2000;

/// One log line kept for the web page.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LogLine {
    /// Sequence number, increasing from 1 (the web page's `after`).
    pub seq: u64,
    /// When, µs since the Unix epoch.
    pub ts_us: i64,
    /// `ERROR`, `WARN`, `INFO`, `DEBUG` or `TRACE`.
    pub level: &'static str,
    /// The event's target (module path).
    pub target: &'static str,
    /// The message and its fields, `key=value`.
    pub text: String,
}

/// The last `capacity` log lines (what passed the log filter), oldest dropped first.
#[derive(Debug)]
pub struct LogRing {
    capacity: usize,
    lines: Mutex<(u64, std::collections::VecDeque<LogLine>)>,
}

impl LogRing {
    /// An empty ring keeping at most `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        LogRing {
            capacity: capacity.max(1),
            lines: Mutex::new((0, std::collections::VecDeque::with_capacity(capacity))),
        }
    }

    /// Adds a line, dropping the oldest when full.
    pub fn push(&self, ts_us: i64, level: &'static str, target: &'static str, text: String) {
        let mut g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.0 += 1;
        let seq = g.0;
        if g.1.len() == self.capacity {
            g.1.pop_front();
        }
        g.1.push_back(LogLine {
            seq,
            ts_us,
            level,
            target,
            text,
        });
    }

    /// Lines after sequence number `after`, at `at_least` severity or worse (`None`: all).
    pub fn after(&self, after: u64, at_least: Option<tracing::Level>) -> Vec<LogLine> {
        let g = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        g.1.iter()
            .filter(|l| l.seq > after)
            .filter(|l| {
                at_least
                    .is_none_or(|min| l.level.parse::<tracing::Level>().is_ok_and(|lv| lv <= min))
            })
            .cloned()
            .collect()
    }
}

/// The process's log ring, fed by the subscriber [`init`] installs.
pub fn ring() -> std::sync::Arc<LogRing> {
    static RING: OnceLock<std::sync::Arc<LogRing>> = OnceLock::new();
    RING.get_or_init(|| std::sync::Arc::new(LogRing::new(RING_LINES)))
        .clone()
}

/// A tracing layer writing each event (that passed the filter) into a [`LogRing`]; the only
/// allocation per event is the line's text.
pub struct RingLayer(pub std::sync::Arc<LogRing>);

/// Formats an event's message and fields into one string.
struct LineVisitor(String);

impl tracing::field::Visit for LineVisitor {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = if field.name() == "message" {
            write!(self.0, "{value:?}")
        } else {
            write!(self.0, "{}={value:?}", field.name())
        };
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            if !self.0.is_empty() {
                self.0.push(' ');
            }
            self.0.push_str(value);
        } else {
            self.record_debug(field, &value);
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for RingLayer {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        let mut v = LineVisitor(String::new());
        event.record(&mut v);
        self.0.push(
            crate::store::now_us(),
            meta.level().as_str(),
            meta.target(),
            v.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_is_bounded_filtered_and_tails_by_sequence() {
        let ring = std::sync::Arc::new(LogRing::new(3));
        let sub = tracing_subscriber::registry().with(RingLayer(ring.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(n = 1, "one");
            tracing::warn!("two");
            tracing::debug!("three");
            tracing::error!(stream = "cam0", "four");
        });
        let all = ring.after(0, None);
        assert_eq!(all.iter().map(|l| l.seq).collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(all[2].text, "four stream=\"cam0\"");
        assert_eq!(all[2].level, "ERROR");
        let warn: Vec<_> = ring.after(0, Some(tracing::Level::WARN));
        assert_eq!(warn.iter().map(|l| l.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(ring.after(3, None).len(), 1);
        assert!(ring.after(4, None).is_empty());
    }

    #[test]
    fn levels_and_target_directives_are_accepted_in_any_case() {
        for ok in [
            "info",
            "INFO",
            " Debug ",
            "off",
            "trace",
            "aegis_agent=debug",
            "warn,aegis_agent::fleet=DEBUG",
            "aegis_agent=debug,warn,",
            "aegis_agent[run{stream=cam0}]=trace",
        ] {
            assert!(parse_filter(ok).is_ok(), "{ok:?} refused");
        }
    }

    #[test]
    fn a_bare_word_that_is_not_a_level_is_refused_by_name() {
        // tracing alone accepts it (as a target), which silenced every log.
        assert!(EnvFilter::try_new("verbose").is_ok());
        for (bad, named) in [
            ("verbose", "\"verbose\" is not a log level"),
            ("info,verbose", "\"verbose\" is not a log level"),
            ("*info", "\"*info\" is not a log level"),
            ("aegis_agent", "\"aegis_agent\" is not a log level"),
            (
                "aegis_agent=loud",
                "\"loud\" in \"aegis_agent=loud\" is not a log level",
            ),
            ("=debug", "\"=debug\" names no target"),
            ("", "holds no directive"),
            (" , ", "holds no directive"),
            ("aegis_agent=debug=info", "is not a valid filter"),
        ] {
            let e = parse_filter(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} accepted"))
                .to_string();
            assert!(e.contains(named), "{bad:?}: {e}");
        }
    }

    #[test]
    fn a_refused_rust_log_falls_back_to_the_configured_level_and_says_so() {
        let (f, spec, refused) = initial_filter(Some("verbose"), "debug");
        assert_eq!((f.to_string(), spec.as_str()), ("debug".into(), "debug"));
        assert_eq!(refused.len(), 1);
        assert!(refused[0].contains("RUST_LOG") && refused[0].contains("\"verbose\""));
        let (f, spec, refused) = initial_filter(Some(" aegis_agent=trace"), "debug");
        assert_eq!(f.to_string(), "aegis_agent=trace");
        assert_eq!(spec, "aegis_agent=trace");
        assert!(refused.is_empty());
        let (f, _, refused) = initial_filter(Some(""), "warn");
        assert_eq!(f.to_string(), "warn");
        assert!(refused.is_empty());
        let (f, _, refused) = initial_filter(None, "loud");
        assert_eq!(f.to_string(), FALLBACK_LEVEL);
        assert!(refused[0].contains("\"loud\""), "{refused:?}");
    }

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }
}
