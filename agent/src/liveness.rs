//! Is the agent progressing? The threads and tasks that work on items (a stream's stage and
//! sink threads, the workflow applier) each hold a [`Beat`] and mark it busy while they work
//! on one item; [`Liveness::stalled`] names those busy on one item for longer than their
//! limit. Waiting for input is not busy: a camera that sends nothing, a quiet broker or an
//! idle applier never count as stalled. systemd's watchdog keep-alives
//! ([`crate::systemd`]) stop while anything is stalled.
//!
//! Marking busy is two relaxed atomic stores per item, no allocation (the frame path).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

/// The registry of beats (weakly held: a beat whose owner ended leaves by itself).
#[derive(Debug, Default)]
pub struct Liveness {
    beats: Mutex<Vec<Weak<Beat>>>,
}

/// One worker's heartbeat: since when it works on its current item, if it does.
#[derive(Debug)]
pub struct Beat {
    name: String,
    limit: Duration,
    /// Milliseconds since [`epoch`] + 1 when the current item started; 0 while idle.
    busy_since: AtomicU64,
}

/// Busy until dropped (see [`Beat::busy`]).
#[must_use = "the beat is busy only while this guard lives"]
pub struct Busy<'a>(&'a Beat);

/// Where a pipeline's stage and sink threads report progress, and how long one frame may
/// take before they count as stalled (`watchdog.stall_s`).
#[derive(Debug, Clone)]
pub struct Watch {
    /// The registry.
    pub liveness: Arc<Liveness>,
    /// The limit per frame.
    pub stall: Duration,
}

impl Watch {
    /// A beat named `name` with this watch's limit.
    pub fn beat(&self, name: impl Into<String>) -> Arc<Beat> {
        self.liveness.register(name, self.stall)
    }
}

/// A worker busy on one item past its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stalled {
    /// The worker (`stg-cam0`, `snk-cam0`, `applier`).
    pub name: String,
    /// How long it has been busy on that item.
    pub busy_for: Duration,
    /// Its limit.
    pub limit: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} busy on one item for {} s (limit {} s)",
            self.name,
            self.busy_for.as_secs(),
            self.limit.as_secs()
        )
    }
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

impl Liveness {
    /// A new beat named `name` that counts as stalled when busy for longer than `limit`.
    pub fn register(&self, name: impl Into<String>, limit: Duration) -> Arc<Beat> {
        epoch();
        let beat = Arc::new(Beat {
            name: name.into(),
            limit,
            busy_since: AtomicU64::new(0),
        });
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.retain(|b| b.strong_count() > 0);
        beats.push(Arc::downgrade(&beat));
        beat
    }

    /// The beats busy on one item for longer than their limit, now.
    pub fn stalled(&self) -> Vec<Stalled> {
        let now = now_ms();
        let mut beats = self.beats.lock().unwrap_or_else(|p| p.into_inner());
        beats.retain(|b| b.strong_count() > 0);
        beats
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|b| {
                let since = b.busy_since.load(Ordering::Relaxed);
                let busy_for = Duration::from_millis(now.saturating_sub(since));
                (since != 0 && busy_for > b.limit).then(|| Stalled {
                    name: b.name.clone(),
                    busy_for,
                    limit: b.limit,
                })
            })
            .collect()
    }
}

impl Beat {
    /// Marks the beat busy on one item until the guard is dropped.
    pub fn busy(&self) -> Busy<'_> {
        self.busy_since.store(now_ms(), Ordering::Relaxed);
        Busy(self)
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy_since.store(0, Ordering::Relaxed);
    }
}

/// The environment variable of the stall test hook ([`test_stall`]).
pub const TEST_STALL_ENV: &str = "AEGIS_TEST_STALL";

/// Test hook: with `AEGIS_TEST_STALL=<stream>:<frames>` in the environment, the stage thread
/// of stream `<stream>` stops making progress on the frame after `<frames>` frames (it
/// sleeps, busy, until the process ends): how the tests show the watchdog keep-alives
/// stopping for a wedged agent. Read at each stream start; a warning says it is set.
pub fn test_stall(stream: &str) -> Option<u64> {
    let v = std::env::var(TEST_STALL_ENV).ok()?;
    let (s, n) = v.split_once(':')?;
    let n = n.parse().ok().filter(|_| s == stream)?;
    tracing::warn!(
        stream,
        frames = n,
        "{TEST_STALL_ENV} is set: this stream's stage thread will stall (a test hook)"
    );
    Some(n)
}

/// Where [`test_stall`] leaves a stage thread: asleep for good.
pub fn stall_for_test(stream: &str) -> ! {
    tracing::warn!(stream, "stage thread stalled on purpose ({TEST_STALL_ENV})");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_work_on_one_item_past_the_limit_is_stalled_and_ended_beats_leave() {
        let l = Liveness::default();
        let slow = l.register("stg-cam0", Duration::from_millis(30));
        let patient = l.register("applier", Duration::from_secs(600));
        let idle = l.register("snk-cam0", Duration::from_millis(30));
        {
            let (_a, _b) = (slow.busy(), patient.busy());
            std::thread::sleep(Duration::from_millis(80));
            // Both busy for as long; only the one past its limit is stalled; the idle one
            // (a camera that sends nothing) never is.
            let s = l.stalled();
            assert_eq!(s.len(), 1, "{s:?}");
            assert_eq!(s[0].name, "stg-cam0");
            assert!(s[0].busy_for > s[0].limit);
        }
        // Done with the item: no longer stalled.
        assert!(l.stalled().is_empty());
        // Many short items never add up to a stall.
        for _ in 0..20 {
            let _b = slow.busy();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(l.stalled().is_empty());
        // A beat whose owner ended leaves the registry, even while marked busy.
        let gone = l.register("gone", Duration::from_millis(1));
        std::mem::forget(gone.busy());
        std::thread::sleep(Duration::from_millis(10));
        assert_eq!(l.stalled().len(), 1);
        drop((gone, idle, patient));
        assert!(l.stalled().is_empty());
        assert_eq!(l.beats.lock().unwrap().len(), 1, "only stg-cam0 is left");
    }
}
