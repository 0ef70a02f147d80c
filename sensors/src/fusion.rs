//! One clock and the fusion service: samples from every driver are stamped on the agent's
//! monotonic clock ([`Clock`]), reordered within a short window, run through the [`Ekf`] in
//! time order, and kept as a pose history that frames and events query at their own
//! timestamps ([`Fusion::pose_at`]).
//!
//! Late and out-of-order samples: everything waits [`Settings::reorder_s`] before it is
//! processed, so a sample that arrives up to that much late still lands in order. Older
//! ones are counted (`late`) and dropped — re-running the filter for them would move poses
//! that events have already been stamped with.
//!
//! Time jumps: when the receiver's UTC moves by more than [`MAX_TIME_JUMP_S`] more or less
//! than the agent's clock between two GGA/RMC sentences (either direction: a receiver
//! reset, two recordings joined), or the receiver was silent for over
//! [`MAX_GPS_SILENCE_S`], the filter restarts at the next fix (new state, new local frame)
//! instead of dead-reckoning across the break; counted as `restarts`. Poses from before
//! the restart stay queryable; none is interpolated across it.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::ekf::{Ekf, FixOutcome, LocalFrame, Noise};
use crate::imu::{ImuSample, Mounting};
use crate::nmea::Sentence;

/// The agent's clock: monotonic seconds since start, with the wall-clock time at start.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
    wall_origin_us: i64,
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

impl Clock {
    /// Starts now.
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
            wall_origin_us: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64),
        }
    }

    /// Monotonic seconds now.
    pub fn now(&self) -> f64 {
        self.at(Instant::now())
    }

    /// Monotonic seconds at `t` (e.g. a frame's decode instant).
    pub fn at(&self, t: Instant) -> f64 {
        match t.checked_duration_since(self.origin) {
            Some(d) => d.as_secs_f64(),
            None => -(self.origin - t).as_secs_f64(),
        }
    }

    /// Wall-clock microseconds at monotonic `t` (as the store's timestamps).
    pub fn wall_us(&self, t: f64) -> i64 {
        self.wall_origin_us + (t * 1e6) as i64
    }
}

/// A fused pose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Monotonic seconds.
    pub t: f64,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// m/s.
    pub speed: f64,
    /// Degrees clockwise from true north.
    pub heading_deg: f64,
    /// Position σ, metres (grows while dead reckoning).
    pub sigma_m: f64,
    /// Seconds since the last accepted GPS fix (dead reckoning beyond a fix interval).
    pub since_fix_s: f64,
}

/// Fusion settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Filter noise.
    pub noise: Noise,
    /// IMU mounting.
    pub mounting: Mounting,
    /// Seconds samples wait for stragglers.
    pub reorder_s: f64,
    /// Seconds of pose history kept.
    pub history_s: f64,
    /// Poses are extrapolated at most this far past the last sample.
    pub max_extrapolate_s: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            noise: Noise::default(),
            mounting: Mounting::default(),
            reorder_s: 0.2,
            history_s: 60.0,
            max_extrapolate_s: 2.0,
        }
    }
}

/// A sample for the filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Input {
    /// An NMEA sentence.
    Gps(Sentence),
    /// An IMU sample.
    Imu(ImuSample),
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// GPS fixes used.
    pub fixes: u64,
    /// Fixes rejected as outliers.
    pub rejected: u64,
    /// Re-centrings after lasting rejections.
    pub recentred: u64,
    /// Fixes without a usable position (no fix, invalid).
    pub no_fix: u64,
    /// IMU samples used.
    pub imu: u64,
    /// Samples older than the reorder window, dropped.
    pub late: u64,
    /// Restarts of the filter at a receiver time jump or after a silence.
    pub restarts: u64,
}

/// A pose in the history: time, state, position σ, time of the last accepted fix, the
/// local frame of the state, and the run (filter restarts) it belongs to.
#[derive(Debug, Clone, Copy)]
struct Past {
    t: f64,
    s: [f64; 5],
    sigma: f64,
    fix_t: f64,
    frame: LocalFrame,
    run: u64,
}

/// GPS time once the fix is good (see [`Fusion::gps_time`]).
#[derive(Debug, Clone, Copy, Default)]
struct GpsTime {
    /// (date from RMC as days since epoch, last RMC utc seconds, monotonic t) of the last good
    /// epoch.
    last: Option<(i64, f64, f64)>,
    /// Consecutive consistent good epochs.
    streak: u32,
}

/// The fusion service.
#[derive(Debug)]
pub struct Fusion {
    settings: Settings,
    ekf: Ekf,
    frame: Option<LocalFrame>,
    pending: Vec<(f64, Input)>,
    processed_t: Option<f64>,
    imu_input: Option<(f64, f64)>,
    last_fix_utc: Option<f64>,
    last_fix_t: f64,
    last_hdop: f64,
    /// (receiver UTC seconds of day, agent time) of the last GGA/RMC with a time.
    last_utc: Option<(f64, f64)>,
    history: VecDeque<Past>,
    gps_time: GpsTime,
    /// Counters.
    pub stats: Stats,
}

impl Fusion {
    /// A fusion service.
    pub fn new(settings: Settings) -> Fusion {
        Fusion {
            settings,
            ekf: Ekf::new(settings.noise),
            frame: None,
            pending: Vec::new(),
            processed_t: None,
            imu_input: None,
            last_fix_utc: None,
            last_fix_t: f64::NEG_INFINITY,
            last_hdop: 2.0,
            last_utc: None,
            history: VecDeque::new(),
            gps_time: GpsTime::default(),
            stats: Stats::default(),
        }
    }

    /// Queues a sample stamped `t` (monotonic seconds).
    pub fn push(&mut self, t: f64, input: Input) {
        if self.processed_t.is_some_and(|p| t < p) {
            self.stats.late += 1;
            return;
        }
        self.pending.push((t, input));
    }

    /// Runs every queued sample older than `now − reorder_s`, in time order.
    pub fn advance(&mut self, now: f64) {
        self.flush_until(now - self.settings.reorder_s);
    }

    /// Runs every queued sample (end of a replay).
    pub fn flush(&mut self) {
        self.flush_until(f64::INFINITY);
    }

    fn flush_until(&mut self, horizon: f64) {
        if self.pending.is_empty() {
            return;
        }
        self.pending.sort_by(|a, b| a.0.total_cmp(&b.0));
        let n = self.pending.partition_point(|(t, _)| *t <= horizon);
        let ready: Vec<(f64, Input)> = self.pending.drain(..n).collect();
        for (t, input) in ready {
            self.step(t, input);
        }
    }

    fn step(&mut self, t: f64, input: Input) {
        if let Some(p) = self.processed_t {
            self.ekf.predict(t - p, self.imu_input);
        }
        self.processed_t = Some(t);
        match input {
            Input::Imu(s) => {
                self.imu_input = Some(self.settings.mounting.drive_inputs(&s));
                self.stats.imu += 1;
            }
            Input::Gps(Sentence::Gga(g)) => {
                self.watch_time(t, g.utc_s);
                if let Some(h) = g.hdop {
                    self.last_hdop = h;
                }
                match (g.quality, g.lat, g.lon) {
                    (1.., Some(lat), Some(lon)) => {
                        self.use_fix(t, g.utc_s, lat, lon, g.hdop.unwrap_or(self.last_hdop));
                    }
                    _ => self.stats.no_fix += 1,
                }
            }
            Input::Gps(Sentence::Rmc(r)) => {
                self.watch_time(t, r.utc_s);
                if !r.valid {
                    self.stats.no_fix += 1;
                } else {
                    if let (Some(lat), Some(lon)) = (r.lat, r.lon) {
                        self.use_fix(t, r.utc_s, lat, lon, self.last_hdop);
                    }
                    self.ekf.velocity(r.speed_mps, r.course_deg);
                    self.gps_epoch(t, &r);
                }
            }
            Input::Gps(Sentence::Vtg(v)) => self.ekf.velocity(v.speed_mps, v.course_deg),
            Input::Gps(Sentence::Gsa(g)) => {
                if let Some(h) = g.hdop {
                    self.last_hdop = h;
                }
            }
        }
        if self.ekf.initialised()
            && let Some(frame) = self.frame
        {
            self.history.push_back(Past {
                t,
                s: self.ekf.s,
                sigma: self.ekf.position_sigma(),
                fix_t: self.last_fix_t,
                frame,
                run: self.stats.restarts,
            });
            while self
                .history
                .front()
                .is_some_and(|p| t - p.t > self.settings.history_s)
            {
                self.history.pop_front();
            }
        }
    }

    /// Restarts the filter when the receiver's time broke away from the agent's clock, or
    /// after a long silence (see the module doc).
    fn watch_time(&mut self, t: f64, utc: Option<f64>) {
        let Some(u) = utc else {
            return;
        };
        if let Some((pu, pt)) = self.last_utc {
            let dt = t - pt;
            // The receiver's step, taken across midnight the short way round.
            let du = (u - pu + 43_200.0).rem_euclid(86_400.0) - 43_200.0;
            if ((du - dt).abs() > MAX_TIME_JUMP_S || dt > MAX_GPS_SILENCE_S)
                && self.ekf.initialised()
            {
                self.restart();
            }
        }
        self.last_utc = Some((u, t));
    }

    fn restart(&mut self) {
        self.ekf = Ekf::new(self.settings.noise);
        self.frame = None;
        self.last_fix_utc = None;
        self.last_fix_t = f64::NEG_INFINITY;
        self.stats.restarts += 1;
    }

    fn use_fix(&mut self, t: f64, utc: Option<f64>, lat: f64, lon: f64, hdop: f64) {
        // One position an epoch: the same epoch's GGA and RMC both carry it, in either order
        // (the first one's, with the GGA's HDOP when it came first).
        if utc.is_some() && utc == self.last_fix_utc {
            return;
        }
        self.last_fix_utc = utc;
        let frame = *self.frame.get_or_insert_with(|| LocalFrame::new(lat, lon));
        let (x, y) = frame.to_local(lat, lon);
        match self.ekf.fix(x, y, hdop) {
            FixOutcome::Initialised | FixOutcome::Accepted => {
                self.stats.fixes += 1;
                self.last_fix_t = t;
            }
            FixOutcome::Rejected => self.stats.rejected += 1,
            FixOutcome::Recentred => {
                self.stats.recentred += 1;
                self.last_fix_t = t;
            }
        }
    }

    fn gps_epoch(&mut self, t: f64, r: &crate::nmea::Rmc) {
        let (Some((y, m, d)), Some(utc)) = (r.date, r.utc_s) else {
            return;
        };
        // A date that does not exist is a receiver fault: not an epoch to count.
        let Some(day) =
            aegis_config::civil::days_from_civil(i64::from(y), i64::from(m), i64::from(d))
        else {
            return;
        };
        let g = &mut self.gps_time;
        let consistent = g.last.is_some_and(|(pd, pu, pt)| {
            let gps_dt = (day - pd) as f64 * 86_400.0 + (utc - pu);
            // GPS time advanced as much as our monotonic clock did (±0.5 s).
            (gps_dt - (t - pt)).abs() <= 0.5 && gps_dt > 0.0
        });
        g.streak = if consistent { g.streak + 1 } else { 0 };
        g.last = Some((day, utc, t));
    }

    /// Trusted GPS time (Unix seconds) at monotonic `now`, once the receiver has reported a
    /// valid fix with a date for [`GPS_TIME_EPOCHS`] consecutive epochs whose time advanced
    /// exactly as the agent's monotonic clock did. The agent uses it only to *raise* its
    /// persisted time floor (workflow expiry), never to lower it, and never to set the
    /// system clock. A spoofer must therefore fake a consistent GPS signal to move the
    /// floor forward (freezing the device's updates until the floor passes the spoofed
    /// time would need a second, root-signed trust update anyway).
    pub fn gps_time(&self, now: f64) -> Option<i64> {
        let (day, utc, t) = self.gps_time.last?;
        if self.gps_time.streak + 1 < GPS_TIME_EPOCHS || now - t > 5.0 {
            return None;
        }
        Some(day * 86_400 + (utc + (now - t)) as i64)
    }

    /// The fused pose at monotonic `t`: interpolated inside the history, extrapolated at
    /// most `max_extrapolate_s` past its end (dead reckoning on the last state).
    ///
    /// Between the last pose before a restart and the first after it there is no
    /// interpolation: the earlier run is extrapolated as at the end of the history.
    pub fn pose_at(&self, t: f64) -> Option<Pose> {
        let first = self.history.front()?;
        let last = self.history.back()?;
        if t < first.t || t > last.t + self.settings.max_extrapolate_s {
            return None;
        }
        let i = self.history.partition_point(|p| p.t <= t);
        let a = &self.history[i - 1];
        let (s, sigma, fix_t, frame) = match self.history.get(i) {
            Some(b) if b.run == a.run => {
                let w = if b.t > a.t {
                    (t - a.t) / (b.t - a.t)
                } else {
                    0.0
                };
                let mut s = a.s;
                for k in [0, 1, 2, 4] {
                    s[k] = a.s[k] + (b.s[k] - a.s[k]) * w;
                }
                s[3] = a.s[3] + crate::ekf::wrap(b.s[3] - a.s[3]) * w;
                (s, a.sigma + (b.sigma - a.sigma) * w, a.fix_t, a.frame)
            }
            _ => {
                let dt = t - a.t;
                if dt > self.settings.max_extrapolate_s {
                    return None;
                }
                let [x, y, v, psi, b] = a.s;
                let grow = self.settings.noise.no_imu_accel * dt * dt / 2.0;
                (
                    [x + v * psi.sin() * dt, y + v * psi.cos() * dt, v, psi, b],
                    a.sigma + grow,
                    a.fix_t,
                    a.frame,
                )
            }
        };
        let (lat, lon) = frame.to_geo(s[0], s[1]);
        Some(Pose {
            t,
            lat,
            lon,
            speed: s[2],
            heading_deg: s[3].to_degrees().rem_euclid(360.0),
            sigma_m: sigma,
            since_fix_s: t - fix_t,
        })
    }

    /// The time span the pose history covers (monotonic seconds), once a fix arrived.
    pub fn span(&self) -> Option<(f64, f64)> {
        Some((self.history.front()?.t, self.history.back()?.t))
    }

    /// The local frame (metres east/north of the first fix since the last restart), once a
    /// fix arrived.
    pub fn frame(&self) -> Option<LocalFrame> {
        self.frame
    }

    /// Samples waiting in the reorder window.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Consecutive consistent epochs before GPS time is trusted.
pub const GPS_TIME_EPOCHS: u32 = 3;

/// A receiver time jump: between two GGA/RMC sentences the receiver's UTC moved this many
/// seconds more (or less) than the agent's clock. Serial latency and buffering, a leap
/// second and receivers' 0.1–2 s epochs stay well inside it; a reset or joined recordings
/// do not.
pub const MAX_TIME_JUMP_S: f64 = 5.0;

/// A receiver silent (no GGA/RMC with a time) this long: its next fix restarts the filter
/// rather than correcting a minute of dead reckoning (without an IMU the position σ is
/// about 500 m by then). A receiver that keeps talking without a fix (a tunnel) is an
/// outage and is dead-reckoned through, however long.
pub const MAX_GPS_SILENCE_S: f64 = 60.0;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nmea;

    fn rmc(utc: &str, date: &str) -> Input {
        let s = nmea::with_checksum(&format!(
            "$GPRMC,{utc},A,4807.0380,N,01131.0000,E,0.0,0.0,{date},,,A"
        ));
        Input::Gps(nmea::parse(s.as_bytes()).unwrap())
    }

    #[test]
    fn out_of_order_samples_within_the_window_are_reordered_and_later_ones_counted() {
        let mut f = Fusion::new(Settings::default());
        f.push(1.0, rmc("120001.00", "261126"));
        f.push(0.9, rmc("120000.90", "261126"));
        f.advance(1.5);
        assert_eq!(f.stats.late, 0);
        assert_eq!(f.stats.fixes, 2);
        f.push(0.5, rmc("120000.50", "261126"));
        assert_eq!(f.stats.late, 1);
        assert!(f.pose_at(0.95).is_some() && f.pose_at(0.5).is_none());
    }

    #[test]
    fn gps_time_needs_consistent_epochs() {
        let mut f = Fusion::new(Settings::default());
        f.push(10.0, rmc("235959.00", "251126"));
        f.push(11.0, rmc("000000.00", "261126"));
        f.flush();
        assert_eq!(f.gps_time(11.0), None);
        f.push(12.0, rmc("000001.00", "261126"));
        f.flush();
        // 2026-11-26T00:00:01Z = 1_795_651_201.
        assert_eq!(f.gps_time(12.0), Some(1_795_651_201));
        assert_eq!(f.gps_time(14.0), Some(1_795_651_203));
        // A jump of the GPS clock breaks the streak.
        f.push(13.0, rmc("000500.00", "261126"));
        f.flush();
        assert_eq!(f.gps_time(13.0), None);
    }

    fn gga(utc: &str, quality: u8) -> Input {
        let s = nmea::with_checksum(&format!(
            "$GPGGA,{utc},4807.0380,N,01131.0000,E,{quality},08,0.9,545.4,M,46.9,M,,"
        ));
        Input::Gps(nmea::parse(s.as_bytes()).unwrap())
    }

    #[test]
    fn an_epoch_gives_one_position_whichever_sentence_comes_first() {
        let mut f = Fusion::new(Settings::default());
        // u-blox order: RMC, then GGA of the same epoch; then the other way round.
        f.push(1.0, rmc("120001.00", "261126"));
        f.push(1.01, gga("120001.00", 1));
        f.push(2.0, gga("120002.00", 1));
        f.push(2.01, rmc("120002.00", "261126"));
        f.flush();
        assert_eq!(f.stats.fixes, 2, "{:?}", f.stats);
    }

    #[test]
    fn a_receiver_silent_for_over_a_minute_restarts_the_filter_one_talking_without_a_fix_does_not()
    {
        let mut f = Fusion::new(Settings {
            history_s: 1e6,
            ..Settings::default()
        });
        f.push(0.0, gga("120000.00", 1));
        // 90 s in a tunnel, the receiver still talking: dead reckoning, no restart.
        for k in 1..=90 {
            f.push(
                f64::from(k),
                gga(&format!("12{:02}{:02}.00", k / 60, k % 60), 0),
            );
        }
        f.push(91.0, gga("120131.00", 1));
        f.flush();
        assert_eq!((f.stats.restarts, f.stats.fixes), (0, 2), "{:?}", f.stats);
        // Then silent for 61 s.
        f.push(152.0, gga("120232.00", 1));
        f.flush();
        assert_eq!((f.stats.restarts, f.stats.fixes), (1, 3), "{:?}", f.stats);
        // No pose is interpolated across the restart; the run before it is extrapolated
        // for at most `max_extrapolate_s`.
        assert!(f.pose_at(92.0).is_some());
        assert!(f.pose_at(120.0).is_none());
        assert!(f.pose_at(152.0).is_some_and(|p| p.since_fix_s == 0.0));
    }
}
