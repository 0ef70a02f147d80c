//! Real receiver logs (excerpts of gpsd's regression logs, BSD-2-Clause, in `tests/data/`;
//! each file's header names its source): what each chipset sends must give one fix an
//! epoch, comments and other sentence types are ignored rather than refused, and time
//! jumps in real recordings restart the filter (issue 16, items 5, 6, 8).

use std::sync::atomic::AtomicBool;

use aegis_sensors::ekf::LocalFrame;
use aegis_sensors::fusion::{Clock, Fusion, Input, Settings};
use aegis_sensors::nmea::{self, Epochs, Fix, Sentence};
use aegis_sensors::source::{DriverStats, replay_nmea};

const MAGELLAN_RMC_ONLY: &str = include_str!("data/magellan-ec10x.nmea");
const UBLOX_RMC_FIRST: &str = include_str!("data/ublox-lea-5h.nmea");
const UBLOX8_CUT: &str = include_str!("data/nl2008u.nmea");

fn fusion() -> Fusion {
    Fusion::new(Settings {
        history_s: 1e7,
        ..Settings::default()
    })
}

/// What [`replay`] gives: the fusion, the fixes the epochs gave (replay time, fix), the
/// driver's counts, and (replay time, sentence) of each GGA and RMC.
type Replayed = (Fusion, Vec<(f64, Fix)>, DriverStats, Vec<(f64, Sentence)>);

/// Replays `text` unpaced (as `aegis sensors replay`).
fn replay(text: &str) -> Replayed {
    let (clock, stop) = (Clock::new(), AtomicBool::new(false));
    let mut f = fusion();
    let mut epochs = Epochs::default();
    let mut fixes = Vec::new();
    let mut timed = Vec::new();
    let st = replay_nmea(
        text.as_bytes(),
        &clock,
        0.0,
        0.0,
        &stop,
        |t: f64, i: Input| {
            if let Input::Gps(s) = &i {
                epochs.push(t, s, |t, fix| fixes.push((t, fix)));
                if matches!(s, Sentence::Gga(_) | Sentence::Rmc(_)) {
                    timed.push((t, *s));
                }
            }
            f.push(t, i);
        },
    )
    .unwrap();
    epochs.finish(|t, fix| fixes.push((t, fix)));
    f.flush();
    (f, fixes, st, timed)
}

fn comments(text: &str) -> u64 {
    text.lines().filter(|l| l.starts_with('#')).count() as u64
}

/// Unix µs of a UTC date and time.
fn unix_us(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: f64) -> i64 {
    let day = aegis_config::civil::days_from_civil(y, mo, d).unwrap();
    (day * 86_400 + h * 3600 + mi * 60) * 1_000_000 + (s * 1e6) as i64
}

#[test]
fn a_receiver_that_sends_only_rmc_gives_a_fix_an_epoch() {
    let (f, fixes, st, _) = replay(MAGELLAN_RMC_ONLY);
    // Eleven epochs with a valid RMC, none with GGA.
    assert_eq!(fixes.len(), 11, "{fixes:?}");
    let (_, first) = fixes[0];
    assert_eq!(first.quality, None);
    assert!((first.lat - 44.092_6).abs() < 1e-4 && (first.lon + 121.306_63).abs() < 1e-4);
    assert_eq!(first.utc_us, Some(unix_us(2005, 6, 9, 20, 52, 6.0)));
    assert!(fixes.windows(2).all(|w| w[1].0 - w[0].0 == 2.0));
    assert_eq!(f.stats.fixes, 11, "{:?}", f.stats);
    // The comments and the RMB sentences are sound lines of no use here, not bad ones.
    let rmb = MAGELLAN_RMC_ONLY.matches("$GPRMB").count() as u64;
    assert_eq!(
        st,
        DriverStats {
            samples: 13,
            bad: 0,
            ignored: comments(MAGELLAN_RMC_ONLY) + rmb
        }
    );
}

#[test]
fn a_receiver_that_sends_rmc_before_gga_gives_one_fix_an_epoch() {
    let (f, fixes, st, _) = replay(UBLOX_RMC_FIRST);
    assert_eq!(fixes.len(), 4, "{fixes:?}");
    for (_, fix) in &fixes {
        // GGA's quality and HDOP, RMC's speed and date, in one fix.
        assert_eq!(
            (fix.quality, fix.satellites, fix.hdop),
            (Some(1), Some(8), Some(1.0))
        );
        assert!(fix.speed_mps.is_some_and(|v| v < 0.1));
    }
    assert_eq!(
        fixes[0].1.utc_us,
        Some(unix_us(2010, 8, 21, 8, 55, 16.0)),
        "{:?}",
        fixes[0]
    );
    // The filter, too, takes one position an epoch.
    assert_eq!(f.stats.fixes, 4, "{:?}", f.stats);
    assert_eq!(st.bad, 0);
    assert_eq!(st.ignored, comments(UBLOX_RMC_FIRST));
}

#[test]
fn a_real_recording_with_sections_cut_out_is_replayed_without_waiting_out_the_cuts() {
    // A u-blox 8 in a car; 2.5 and 19.7 minutes were cut out of the log.
    let (f, fixes, st, timed) = replay(UBLOX8_CUT);
    assert_eq!(fixes.len(), 9);
    assert_eq!((st.bad, st.samples), (0, 27));
    // Each cut restarted the filter; the replay's time line covers the nine epochs.
    assert_eq!(f.stats.restarts, 2, "{:?}", f.stats);
    let (first, last) = f.span().unwrap();
    assert!(
        last - first <= 8.0 + 1e-9,
        "the track spans {first}..{last}"
    );
    // Every fused pose at a fix is within a few metres of the receiver's position.
    let frame = LocalFrame::new(48.2, 8.4);
    for (t, s) in &timed {
        let Sentence::Gga(g) = s else { continue };
        let p = f.pose_at(*t).unwrap();
        let (px, py) = frame.to_local(p.lat, p.lon);
        let (gx, gy) = frame.to_local(g.lat.unwrap(), g.lon.unwrap());
        let e = (px - gx).hypot(py - gy);
        assert!(e < 5.0 && p.sigma_m < 10.0, "{e} m, σ {} at {t}", p.sigma_m);
    }
}

#[test]
fn two_real_recordings_joined_with_a_40_minute_back_jump_on_a_live_input() {
    // The Schramberg drive (ends 09:34:53) and then Rotterdam (from 08:55:16), ~530 km
    // apart, fed as a serial input would: stamped on arrival, one epoch a second.
    let text = format!("{UBLOX8_CUT}{UBLOX_RMC_FIRST}");
    let mut f = fusion();
    let (mut t, mut last_utc) = (0.0, None);
    let mut gga = Vec::new();
    for line in text.lines() {
        let Ok(s) = nmea::parse(line.as_bytes()) else {
            continue;
        };
        let utc = match &s {
            Sentence::Gga(g) => g.utc_s,
            Sentence::Rmc(r) => r.utc_s,
            _ => None,
        };
        if utc.is_some() && last_utc.is_some() && utc != last_utc {
            t += 1.0;
        }
        last_utc = utc.or(last_utc);
        if let Sentence::Gga(g) = &s {
            gga.push((t, g.lat.unwrap(), g.lon.unwrap()));
        }
        f.push(t, Input::Gps(s));
        f.advance(t);
    }
    f.flush();
    // Every fix, after the cuts and after the jump too, is where the receiver said (before
    // the restarts: the two fixes after the 19.7-minute cut were rejected and the pose
    // stayed 642 m behind with σ 1.5 m).
    assert_eq!(gga.len(), 9 + 4);
    for (t, lat, lon) in &gga {
        let p = f.pose_at(*t).unwrap();
        let (px, py) = LocalFrame::new(*lat, *lon).to_local(p.lat, p.lon);
        let e = px.hypot(py);
        assert!(
            e < 5.0 && p.sigma_m < 10.0,
            "{e:.0} m off the fix, σ {:.1} m at {t} ({:?})",
            p.sigma_m,
            f.stats
        );
    }
    // The two cuts in the first log and the jump between the logs.
    assert_eq!(f.stats.restarts, 3, "{:?}", f.stats);
    assert_eq!(f.stats.rejected, 0, "{:?}", f.stats);
}
