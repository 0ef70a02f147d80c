//! systemd integration (sd_notify(3), through the `sd-notify` crate): `READY=1` once the
//! agent serves its HTTP endpoints, `STATUS=` lines for `systemctl status aegis`,
//! `STOPPING=1` when it stops, and `WATCHDOG=1` keep-alives from a supervisor task that
//! sends them only while the agent progresses ([`crate::liveness`]): a stage or sink thread
//! busy on one frame past `watchdog.stall_s`, or the applier on one message past
//! `watchdog.applier_stall_s`, stops them, and systemd (`WatchdogSec=`) restarts the agent.
//!
//! Without `NOTIFY_SOCKET` (not started by systemd) every call is a no-op. The unit is
//! `deploy/systemd/aegis.service`; docs/appliance.md says how it fits together.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

use crate::liveness::Liveness;

/// Longest `STATUS=` line sent (systemctl shows one line).
const MAX_STATUS: usize = 400;

/// How often the status line is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The agent's side of the notification socket.
#[derive(Debug)]
pub struct Notifier {
    /// `NOTIFY_SOCKET` is set.
    active: bool,
    /// `WATCHDOG_USEC` (for this process), if the unit has `WatchdogSec=`.
    watchdog: Option<Duration>,
    /// A send failed already (logged once).
    failed: AtomicBool,
}

impl Notifier {
    /// From the environment systemd gives a service (`NOTIFY_SOCKET`, `WATCHDOG_USEC`,
    /// `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        Notifier {
            active: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled().filter(|d| !d.is_zero()),
            failed: AtomicBool::new(false),
        }
    }

    /// The watchdog interval systemd expects keep-alives within, if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    fn send(&self, state: &[NotifyState<'_>]) {
        if !self.active {
            return;
        }
        if let Err(e) = sd_notify::notify(state)
            && !self.failed.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(error = %e, "systemd: cannot write to NOTIFY_SOCKET (logged once)");
        }
    }

    /// `READY=1` with a first status line.
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(&one_line(status))]);
    }

    /// `STOPPING=1` with why.
    pub fn stopping(&self, status: &str) {
        self.send(&[
            NotifyState::Stopping,
            NotifyState::Status(&one_line(status)),
        ]);
    }

    /// Starts the supervisor task: every third of the watchdog interval (or every
    /// [`STATUS_EVERY`] without one) it checks `liveness`; while nothing is stalled it sends
    /// `WATCHDOG=1` and the `status()` line (when it changed); once something is, the
    /// keep-alives stop, the status says what is stalled and an error is logged.
    pub fn supervise(
        self: &Arc<Self>,
        liveness: Arc<Liveness>,
        status: impl Fn() -> String + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.active {
            return None;
        }
        let me = self.clone();
        let period = me
            .watchdog
            .map_or(STATUS_EVERY, |w| (w / 3).max(Duration::from_millis(50)));
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_status = String::new();
            let mut wedged = false;
            loop {
                tick.tick().await;
                let stalled = liveness.stalled();
                let line = if stalled.is_empty() {
                    if wedged {
                        tracing::warn!("watchdog: progressing again; keep-alives resume");
                        wedged = false;
                    }
                    status()
                } else {
                    let what: Vec<String> = stalled.iter().map(ToString::to_string).collect();
                    let what = what.join(", ");
                    if !wedged {
                        tracing::error!(stalled = %what, watchdog = me.watchdog.is_some(),
                            "watchdog: the agent is not progressing; keep-alives stop (systemd restarts it)");
                        wedged = true;
                    }
                    format!("not progressing: {what}")
                };
                let line = one_line(&line);
                let mut state = Vec::with_capacity(2);
                if !wedged && me.watchdog.is_some() {
                    state.push(NotifyState::Watchdog);
                }
                if line != last_status {
                    state.push(NotifyState::Status(&line));
                }
                if !state.is_empty() {
                    me.send(&state);
                }
                last_status = line;
            }
        }))
    }
}

/// `s` on one line of at most [`MAX_STATUS`] bytes (the protocol is newline-separated).
fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if out.len() > MAX_STATUS {
        let mut end = MAX_STATUS;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_one_bounded_line() {
        assert_eq!(one_line("a\nb\r\tc"), "a b  c");
        let long = "é".repeat(MAX_STATUS);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_STATUS && cut.chars().all(|c| c == 'é'));
    }
}
