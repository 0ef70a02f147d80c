//! Receiver time jumps in a replayed log: two recordings joined into one file, the second
//! starting 52 minutes before the first ended and 52.8 km away (issue 16, item 5). The
//! replay (as `aegis sensors replay` runs it: no pacing, flushed at the end) must restart
//! the filter at the jump, not dead-reckon across it.

use std::sync::atomic::AtomicBool;

use aegis_sensors::ekf::LocalFrame;
use aegis_sensors::fusion::{Clock, Fusion, Input, Settings};
use aegis_sensors::nmea::{self, Sentence};

use aegis_sensors::sim::{self, Drive, Segment, SensorModel};

fn seg(duration: f64, accel: f64, yaw_rate: f64) -> Segment {
    Segment {
        duration,
        accel,
        yaw_rate,
    }
}

/// A recording: the drive, re-rendered as NMEA at `origin` from UTC `start_utc_s`.
struct Recording {
    drive: Drive,
    frame: LocalFrame,
    start_utc_s: f64,
    lines: Vec<String>,
}

fn record(seed: u64, origin: (f64, f64), start_utc_s: f64, seconds: f64) -> Recording {
    let m = SensorModel {
        seed,
        ..Default::default()
    };
    let segments = [
        seg(seconds / 3.0, 0.0, 0.0),
        seg(seconds / 3.0, 0.0, 0.03),
        seg(seconds / 3.0, 0.0, 0.0),
    ];
    let drive = sim::drive(&segments, 17.0, 0.6, &m);
    let frame = LocalFrame::new(origin.0, origin.1);
    let mut lines = Vec::new();
    for (t, _, (gx, gy)) in &drive.gps {
        let truth = sim::truth_at(&drive, *t).unwrap();
        let (lat, lon) = frame.to_geo(*gx, *gy);
        lines.extend(sim::nmea_epoch(
            start_utc_s + t,
            lat,
            lon,
            m.hdop,
            truth.v,
            truth.psi.to_degrees(),
        ));
    }
    Recording {
        drive,
        frame,
        start_utc_s,
        lines,
    }
}

/// What came out of the replay.
struct Outcome {
    fusion: Fusion,
    /// (replay time, receiver UTC) of every GGA in file order.
    gga: Vec<(f64, f64)>,
}

fn replay(text: &str) -> Outcome {
    let clock = Clock::new();
    let stop = AtomicBool::new(false);
    let mut fusion = Fusion::new(Settings {
        history_s: 1e7,
        ..Settings::default()
    });
    let mut gga = Vec::new();
    aegis_sensors::source::replay_nmea(
        text.as_bytes(),
        &clock,
        0.0,
        0.0,
        &stop,
        |t: f64, i: Input| {
            if let Input::Gps(Sentence::Gga(g)) = &i {
                gga.push((t, g.utc_s.unwrap()));
            }
            fusion.push(t, i);
        },
    )
    .unwrap();
    fusion.flush();
    Outcome { fusion, gga }
}

/// Position error (m) and σ of the fused pose at replay time `t` against `rec`'s truth at
/// its receiver time `utc`.
fn error_at(f: &Fusion, rec: &Recording, t: f64, utc: f64) -> (f64, f64) {
    let truth = sim::truth_at(&rec.drive, utc - rec.start_utc_s).unwrap();
    let Some(p) = f.pose_at(t) else {
        return (f64::INFINITY, f64::INFINITY);
    };
    let (x, y) = rec.frame.to_local(p.lat, p.lon);
    (
        ((x - truth.x).powi(2) + (y - truth.y).powi(2)).sqrt(),
        p.sigma_m,
    )
}

/// Rows of the fused track (10 Hz over the history's span, as `sensors replay --out`
/// writes it) whose σ exceeds 100 m.
fn wild_rows(f: &Fusion) -> (usize, usize) {
    let (first, last) = f.span().unwrap();
    let (mut rows, mut wild) = (0, 0);
    let mut t = first;
    while t <= last {
        if let Some(p) = f.pose_at(t) {
            rows += 1;
            wild += usize::from(p.sigma_m > 100.0);
        }
        t += 0.1;
    }
    (rows, wild)
}

#[test]
fn a_52_minute_back_jump_restarts_the_filter_instead_of_dead_reckoning_across_it() {
    replay_joined(-3_120.0);
}

#[test]
fn a_52_minute_forward_jump_is_passed_over_and_restarts_the_filter() {
    replay_joined(3_120.0);
}

/// Recording A: 12:00:00–12:02:00 near Munich. Recording B: from `jump_s` after A's end
/// (−3120: 11:10:00, 52 minutes before A ended), 0.4749° (52.8 km) further north.
fn replay_joined(jump_s: f64) {
    let a = record(1, (48.137, 11.575), 43_200.0, 120.0);
    let b = record(
        2,
        (48.137 + 0.4749, 11.575),
        43_200.0 + 120.0 + jump_s,
        120.0,
    );
    let text = format!("{}\r\n{}\r\n", a.lines.join("\r\n"), b.lines.join("\r\n"));
    let out = replay(&text);
    let f = &out.fusion;
    let (a_n, b_n) = (a.drive.gps.len(), b.drive.gps.len());
    assert_eq!(out.gga.len(), a_n + b_n);
    // The replay keeps the file's order: B comes after A on the replay's time line, and the
    // track covers the two recordings, not the 52 minutes between them.
    let last_a = out.gga[a_n - 1].0;
    let first_b = out.gga[a_n].0;
    assert!(
        first_b > last_a && first_b - last_a <= 1.0 + 1e-9,
        "A ends at {last_a}, B starts at {first_b}"
    );
    // The first five fixes after the jump (file order), and the worst fix of either part.
    let mut first = Vec::new();
    for &(t, utc) in &out.gga[a_n..a_n + 5] {
        first.push(error_at(f, &b, t, utc));
    }
    let worst = |rec: &Recording, range: std::ops::Range<usize>| {
        out.gga[range]
            .iter()
            .map(|&(t, utc)| error_at(f, rec, t, utc).0)
            .fold(0.0, f64::max)
    };
    let (worst_a, worst_b) = (worst(&a, 5..a_n), worst(&b, a_n + 5..a_n + b_n));
    let (rows, wild) = wild_rows(f);
    let max_err = first.iter().map(|e| e.0).fold(0.0, f64::max);
    let max_sigma = first.iter().map(|e| e.1).fold(0.0, f64::max);
    eprintln!(
        "replayed jump of {jump_s} s: first 5 fixes after it: max error {max_err:.1} m, max σ {max_sigma:.1} m; \
         worst fix of A (after 5 s) {worst_a:.1} m, of B {worst_b:.1} m; \
         {wild} of {rows} track rows with σ > 100 m; {:?}",
        f.stats
    );
    assert!(max_err < 15.0, "first fixes after the jump: {first:?}");
    assert!(max_sigma < 15.0, "first fixes after the jump: {first:?}");
    assert!(worst_a < 15.0 && worst_b < 15.0, "{worst_a} {worst_b}");
    assert_eq!(
        wild, 0,
        "{wild} of {rows} rows dead-reckoned across the jump"
    );
    assert_eq!(f.stats.restarts, 1, "{:?}", f.stats);
}

#[test]
fn a_52_minute_back_jump_on_a_live_input_restarts_the_filter_at_the_first_fix_after_it() {
    // A live input (serial, UDP) stamps sentences when they arrive: the agent's clock runs
    // on while the receiver's UTC jumps back 52 minutes and its position 52.8 km.
    let a = record(1, (48.137, 11.575), 43_200.0, 120.0);
    let b = record(
        2,
        (48.137 + 0.4749, 11.575),
        43_200.0 + 120.0 - 3_120.0,
        120.0,
    );
    let mut f = Fusion::new(Settings {
        history_s: 1e7,
        ..Settings::default()
    });
    let mut gga = Vec::new();
    for (k, line) in a.lines.iter().chain(&b.lines).enumerate() {
        // Two sentences an epoch, one epoch a second on the agent's clock.
        let t = (k / 2) as f64 + 0.01 * (k % 2) as f64;
        let s = nmea::parse(line.as_bytes()).unwrap();
        if let Sentence::Gga(g) = &s {
            gga.push((t, g.utc_s.unwrap()));
        }
        f.push(t, Input::Gps(s));
        f.advance(t);
    }
    f.flush();
    let a_n = a.drive.gps.len();
    let first: Vec<(f64, f64)> = gga[a_n..a_n + 5]
        .iter()
        .map(|&(t, utc)| error_at(&f, &b, t, utc))
        .collect();
    let max_err = first.iter().map(|e| e.0).fold(0.0, f64::max);
    let max_sigma = first.iter().map(|e| e.1).fold(0.0, f64::max);
    let (rows, wild) = wild_rows(&f);
    eprintln!(
        "live back jump of 52 min: first 5 fixes after it: max error {max_err:.1} m, max σ {max_sigma:.1} m; \
         {wild} of {rows} track rows with σ > 100 m; {:?}",
        f.stats
    );
    assert!(max_err < 15.0 && max_sigma < 15.0, "{first:?}");
    assert_eq!(f.stats.rejected, 0, "{:?}", f.stats);
    assert_eq!(f.stats.restarts, 1, "{:?}", f.stats);
}
