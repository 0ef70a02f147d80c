//! The filter against synthetic drives with known truth: straight, turn, stop, a GPS
//! outage, a GPS jump. Position error is measured at every GPS epoch (where the raw GPS
//! error is defined too) over several seeds.

use aegis_sensors::fusion::{Fusion, Input, Settings};
use aegis_sensors::nmea;
use aegis_sensors::sim::{self, Drive, Segment, SensorModel};

fn seg(duration: f64, accel: f64, yaw_rate: f64) -> Segment {
    Segment {
        duration,
        accel,
        yaw_rate,
    }
}

/// Runs the drive through the fusion (IMU and GPS interleaved by time) and returns it.
fn fuse(d: &Drive, with_imu: bool) -> Fusion {
    // The whole drive stays queryable (the agent keeps a minute).
    let mut f = Fusion::new(Settings {
        history_s: 1e6,
        ..Settings::default()
    });
    let mut gps = d.gps.iter().peekable();
    for s in &d.imu {
        while let Some((t, lines, _)) = gps.peek().filter(|(t, _, _)| *t <= s.t) {
            for l in lines {
                f.push(*t, Input::Gps(nmea::parse(l.as_bytes()).unwrap()));
            }
            gps.next();
        }
        if with_imu {
            f.push(s.t, Input::Imu(*s));
        }
        f.advance(s.t);
    }
    f.flush();
    f
}

struct Errors {
    fused_rmse: f64,
    gps_rmse: f64,
    fused_max: f64,
}

/// Errors at GPS epochs after the first `settle` seconds (the filter needs a few fixes to
/// learn the heading).
fn errors(d: &Drive, f: &Fusion, settle: f64) -> Errors {
    // Compare in the drive's own frame (the filter's starts at its first, noisy, fix).
    let frame = d.frame;
    let (mut se_f, mut se_g, mut max_f, mut n) = (0.0, 0.0, 0.0f64, 0.0);
    for (t, _, (gx, gy)) in d.gps.iter().filter(|(t, _, _)| *t >= settle) {
        let truth = sim::truth_at(d, *t).unwrap();
        let p = f.pose_at(*t).unwrap();
        let (fx, fy) = frame.to_local(p.lat, p.lon);
        let ef = (fx - truth.x).powi(2) + (fy - truth.y).powi(2);
        let eg = (gx - truth.x).powi(2) + (gy - truth.y).powi(2);
        se_f += ef;
        se_g += eg;
        max_f = max_f.max(ef.sqrt());
        n += 1.0;
    }
    Errors {
        fused_rmse: (se_f / n).sqrt(),
        gps_rmse: (se_g / n).sqrt(),
        fused_max: max_f,
    }
}

const SEEDS: [u64; 4] = [1, 2, 3, 4];
/// The stated margin: the fused position's RMSE is at most this share of raw GPS's.
const MARGIN: f64 = 0.5;

fn check(name: &str, segments: &[Segment], v0: f64) {
    for seed in SEEDS {
        let m = SensorModel {
            seed,
            ..Default::default()
        };
        let d = sim::drive(segments, v0, 0.6, &m);
        let f = fuse(&d, true);
        let e = errors(&d, &f, 10.0);
        eprintln!(
            "{name} seed {seed}: fused RMSE {:.2} m, raw GPS RMSE {:.2} m (ratio {:.2}), fused max {:.2} m",
            e.fused_rmse,
            e.gps_rmse,
            e.fused_rmse / e.gps_rmse,
            e.fused_max
        );
        assert!(
            e.fused_rmse <= MARGIN * e.gps_rmse,
            "{name} seed {seed}: fused {:.2} m vs GPS {:.2} m",
            e.fused_rmse,
            e.gps_rmse
        );
    }
}

#[test]
fn straight_drive_beats_raw_gps() {
    check("straight", &[seg(90.0, 0.0, 0.0)], 12.0);
}

#[test]
fn turning_drive_beats_raw_gps() {
    check(
        "turn",
        &[
            seg(20.0, 0.0, 0.0),
            seg(30.0, 0.0, 0.1),
            seg(20.0, 0.5, -0.05),
            seg(20.0, 0.0, 0.0),
        ],
        10.0,
    );
}

#[test]
fn stop_and_go_beats_raw_gps_and_stands_still() {
    let segments = [
        seg(20.0, 0.0, 0.0),
        seg(5.0, -2.0, 0.0),
        seg(30.0, 0.0, 0.0),
        seg(10.0, 1.0, 0.0),
        seg(20.0, 0.0, 0.0),
    ];
    check("stop", &segments, 10.0);
    // While stopped the fused speed is near zero.
    let d = sim::drive(&segments, 10.0, 0.6, &SensorModel::default());
    let f = fuse(&d, true);
    let p = f.pose_at(45.0).unwrap();
    assert!(p.speed < 0.5, "speed while stopped: {}", p.speed);
}

#[test]
fn a_gps_outage_is_bridged_by_dead_reckoning_with_growing_uncertainty() {
    let segments = [
        seg(30.0, 0.0, 0.0),
        seg(30.0, 0.0, 0.05),
        seg(30.0, 0.0, 0.0),
    ];
    let m = SensorModel {
        outage: Some((35.0, 55.0)),
        ..Default::default()
    };
    let d = sim::drive(&segments, 10.0, 0.6, &m);
    let f = fuse(&d, true);
    let frame = d.frame;
    let mut sigmas = Vec::new();
    let mut worst: f64 = 0.0;
    let mut t = 35.0;
    while t < 55.0 {
        let p = f.pose_at(t).unwrap();
        let truth = sim::truth_at(&d, t).unwrap();
        let (x, y) = frame.to_local(p.lat, p.lon);
        worst = worst.max(((x - truth.x).powi(2) + (y - truth.y).powi(2)).sqrt());
        sigmas.push(p.sigma_m);
        assert!(p.since_fix_s > 0.0);
        t += 1.0;
    }
    eprintln!(
        "outage 20 s at 10 m/s in a turn: worst error {worst:.1} m, σ {:.1} → {:.1} m",
        sigmas[0],
        sigmas.last().unwrap()
    );
    assert!(sigmas.windows(2).all(|w| w[1] >= w[0] - 1e-9), "{sigmas:?}");
    assert!(sigmas.last().unwrap() > &(2.0 * sigmas[0]));
    // Dead reckoning on the IMU keeps the 200 m of the gap within 15 m.
    assert!(worst < 15.0, "{worst}");
    // Back on GPS the error is small again.
    let e = errors(&d, &f, 65.0);
    assert!(
        e.fused_rmse < e.gps_rmse,
        "{} vs {}",
        e.fused_rmse,
        e.gps_rmse
    );
    // Without an IMU the same gap is bridged by constant velocity, much worse in a turn.
    let f2 = fuse(&d, false);
    let p = f2.pose_at(54.0).unwrap();
    let truth = sim::truth_at(&d, 54.0).unwrap();
    let (x, y) = d.frame.to_local(p.lat, p.lon);
    let no_imu = ((x - truth.x).powi(2) + (y - truth.y).powi(2)).sqrt();
    eprintln!("same gap without IMU: {no_imu:.1} m at its end");
    assert!(no_imu > worst);
}

#[test]
fn a_gps_jump_is_rejected() {
    let m = SensorModel {
        jump: Some((40.0, 60.0)),
        ..Default::default()
    };
    let d = sim::drive(&[seg(80.0, 0.0, 0.0)], 10.0, 0.6, &m);
    let f = fuse(&d, true);
    assert_eq!(f.stats.rejected, 1, "{:?}", f.stats);
    let e = errors(&d, &f, 10.0);
    eprintln!("jump of 60 m: fused max error {:.2} m", e.fused_max);
    assert!(e.fused_max < 6.0, "{}", e.fused_max);
}
