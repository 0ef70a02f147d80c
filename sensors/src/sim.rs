//! Synthetic trajectories with known truth: a vehicle driven by segments of (duration,
//! acceleration, yaw rate), a MEMS-grade IMU (noise, gyro bias, gravity) at `imu_hz`, and a
//! GPS receiver at `gps_hz` emitting real NMEA (GGA + RMC) with position noise, optional
//! outages and jumps. Used by the accuracy tests, the benchmark and the demo's replay track.

use crate::ekf::LocalFrame;
use crate::imu::ImuSample;

/// One piece of a drive.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    /// Seconds.
    pub duration: f64,
    /// Forward acceleration, m/s².
    pub accel: f64,
    /// Yaw rate, rad/s (counter-clockwise positive).
    pub yaw_rate: f64,
}

/// How the sensors behave.
#[derive(Debug, Clone, Copy)]
pub struct SensorModel {
    /// IMU rate, Hz.
    pub imu_hz: f64,
    /// GPS rate, Hz.
    pub gps_hz: f64,
    /// GPS position σ per axis, metres.
    pub gps_sigma: f64,
    /// HDOP the receiver reports.
    pub hdop: f64,
    /// Accelerometer noise σ, m/s².
    pub accel_sigma: f64,
    /// Gyro noise σ, rad/s.
    pub gyro_sigma: f64,
    /// Constant gyro bias, rad/s.
    pub gyro_bias: f64,
    /// No GPS between these times (seconds).
    pub outage: Option<(f64, f64)>,
    /// At this time the fix is off by this many metres east.
    pub jump: Option<(f64, f64)>,
    /// Random seed.
    pub seed: u64,
}

impl Default for SensorModel {
    fn default() -> Self {
        SensorModel {
            imu_hz: 100.0,
            gps_hz: 1.0,
            gps_sigma: 3.0,
            hdop: 1.2,
            accel_sigma: 0.05,
            gyro_sigma: 0.005,
            gyro_bias: 0.01,
            outage: None,
            jump: None,
            seed: 1,
        }
    }
}

/// The truth at one instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Truth {
    /// Seconds.
    pub t: f64,
    /// East, metres.
    pub x: f64,
    /// North, metres.
    pub y: f64,
    /// m/s.
    pub v: f64,
    /// Heading, radians clockwise from north.
    pub psi: f64,
}

/// A generated drive.
#[derive(Debug, Clone)]
pub struct Drive {
    /// Truth at every IMU instant.
    pub truth: Vec<Truth>,
    /// IMU samples.
    pub imu: Vec<ImuSample>,
    /// GPS epochs: (t, NMEA lines, the noisy position in local metres).
    pub gps: Vec<(f64, Vec<String>, (f64, f64))>,
    /// The local frame (origin of the drive).
    pub frame: LocalFrame,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    /// Standard normal (Box–Muller).
    fn gauss(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn ddmm(deg: f64, pos: char, neg: char, width: usize) -> String {
    let a = deg.abs();
    let d = a.trunc();
    let m = (a - d) * 60.0;
    format!(
        "{:0w$}{:07.4},{}",
        d as u32,
        m,
        if deg >= 0.0 { pos } else { neg },
        w = width
    )
}

/// GGA and RMC sentences for a fix at `utc_s` seconds since midnight on 2026-11-26.
pub fn nmea_epoch(
    utc_s: f64,
    lat: f64,
    lon: f64,
    hdop: f64,
    speed: f64,
    course_deg: f64,
) -> Vec<String> {
    let s = utc_s.rem_euclid(86_400.0);
    let hms = format!(
        "{:02}{:02}{:05.2}",
        (s / 3600.0) as u32,
        (s / 60.0) as u32 % 60,
        s % 60.0
    );
    let (la, lo) = (ddmm(lat, 'N', 'S', 2), ddmm(lon, 'E', 'W', 3));
    vec![
        crate::nmea::with_checksum(&format!(
            "$GPGGA,{hms},{la},{lo},1,10,{hdop:.1},500.0,M,47.0,M,,"
        )),
        crate::nmea::with_checksum(&format!(
            "$GPRMC,{hms},A,{la},{lo},{:.2},{:.1},261126,,,A",
            speed / 0.514_444,
            course_deg.rem_euclid(360.0)
        )),
    ]
}

/// Drives `segments` from speed `v0` (m/s) and heading `psi0` (radians clockwise from north),
/// starting at 48.137° N, 11.575° E at 12:00:00 UTC.
pub fn drive(segments: &[Segment], v0: f64, psi0: f64, m: &SensorModel) -> Drive {
    let frame = LocalFrame::new(48.137, 11.575);
    let mut rng = Rng(m.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let dt = 1.0 / m.imu_hz;
    let gps_every = (m.imu_hz / m.gps_hz).round().max(1.0) as usize;
    let (mut x, mut y, mut v, mut psi, mut t) = (0.0f64, 0.0f64, v0, psi0, 0.0f64);
    let mut d = Drive {
        truth: Vec::new(),
        imu: Vec::new(),
        gps: Vec::new(),
        frame,
    };
    let mut i = 0usize;
    for seg in segments {
        let steps = (seg.duration * m.imu_hz).round() as usize;
        for _ in 0..steps {
            // A stopped vehicle does not decelerate further.
            let a = if v <= 0.0 && seg.accel < 0.0 {
                0.0
            } else {
                seg.accel
            };
            d.truth.push(Truth { t, x, y, v, psi });
            d.imu.push(ImuSample {
                t,
                accel: [
                    a + m.accel_sigma * rng.gauss(),
                    m.accel_sigma * rng.gauss(),
                    9.81 + m.accel_sigma * rng.gauss(),
                ],
                gyro: [
                    m.gyro_sigma * rng.gauss(),
                    m.gyro_sigma * rng.gauss(),
                    seg.yaw_rate + m.gyro_bias + m.gyro_sigma * rng.gauss(),
                ],
                mag: None,
            });
            let in_outage = m.outage.is_some_and(|(a, b)| t >= a && t < b);
            if i.is_multiple_of(gps_every) && !in_outage {
                let mut gx = x + m.gps_sigma * rng.gauss();
                let gy = y + m.gps_sigma * rng.gauss();
                if let Some((jt, off)) = m.jump
                    && (t - jt).abs() < dt / 2.0
                {
                    gx += off;
                }
                let (lat, lon) = frame.to_geo(gx, gy);
                let speed = (v + 0.1 * rng.gauss()).max(0.0);
                let course = psi.to_degrees() + 1.0 * rng.gauss();
                d.gps.push((
                    t,
                    nmea_epoch(43_200.0 + t, lat, lon, m.hdop, speed, course),
                    (gx, gy),
                ));
            }
            // Integrate the truth (heading clockwise from north; yaw rate counter-clockwise).
            x += v * psi.sin() * dt;
            y += v * psi.cos() * dt;
            v = (v + a * dt).max(0.0);
            psi -= seg.yaw_rate * dt;
            t += dt;
            i += 1;
        }
    }
    d
}

/// The truth at `t` (nearest IMU instant).
pub fn truth_at(d: &Drive, t: f64) -> Option<Truth> {
    let i = d.truth.partition_point(|s| s.t < t);
    d.truth.get(i).or(d.truth.last()).copied()
}
