//! The Aegis Edge agent: runtime wiring for the `aegis` binary.
//!
//! The agent owns no codec, pixel or crypto logic: it reads the config (`aegis-config`),
//! builds the pipeline from HAL pieces (`aegis-hal`), runs it on threads, exports metrics
//! and serves the local HTTP endpoints. See `docs/architecture.md`.

pub mod alloc;
pub mod cli;
pub mod evidence;
pub mod firmware;
pub mod fleet;
pub mod http;
pub mod inference;
pub mod live;
pub mod liveness;
pub mod logging;
pub mod metrics;
pub mod models_ota;
pub mod outputs;
pub mod pipeline;
pub mod process;
pub mod runtime;
pub mod sensing;
pub mod store;
pub mod systemd;
pub mod tools;
pub mod web;
pub mod workflows;

/// An error and its causes, each said once: `anyhow`'s `{:#}` repeats a cause whose message the
/// outer error already quotes (`cannot open X: No such file…: No such file…`).
pub fn error_text(e: &anyhow::Error) -> String {
    causes_text(e.as_ref())
}

/// [`error_text`] for a typed error: it and its sources, each said once.
pub fn causes_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = String::new();
    for cause in std::iter::successors(Some(e), |c| c.source()) {
        let c = cause.to_string();
        if text.contains(&c) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&c);
    }
    text
}
