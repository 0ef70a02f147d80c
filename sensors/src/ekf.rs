//! The fusion filter: an extended Kalman filter over position, speed, heading and gyro bias,
//! driven by the IMU (forward acceleration, yaw rate) and corrected by GPS fixes (position,
//! and speed/course when moving).
//!
//! **State** `s = [x, y, v, ψ, b]`: east and north position in metres in a local tangent
//! plane ([`LocalFrame`], origin at the first good fix), speed along the heading (m/s),
//! heading ψ (radians, clockwise from north, as GPS course), and the gyro's yaw-rate bias b
//! (rad/s).
//!
//! **Prediction** over `dt` with IMU inputs `a` (forward acceleration, m/s²) and `ω` (yaw
//! rate about the up axis, counter-clockwise positive, rad/s — ROS REP 103):
//! `x += v·sin ψ·dt, y += v·cos ψ·dt, v += a·dt, ψ -= (ω − b)·dt, b unchanged`.
//! Without an IMU the same model runs with `a = 0, ω = b` (constant velocity and heading)
//! and the larger process noise of [`Noise::no_imu_accel`].
//!
//! **Process noise** (per second, white): acceleration `accel` (m/s²), yaw rate `gyro`
//! (rad/s), bias random walk `bias_walk` (rad/s/√s). **Measurement noise**: GPS position σ =
//! `uere_m × HDOP` per axis; speed σ `speed_mps`; course σ `course_rad` (course only above
//! `min_course_speed`, where it means something).
//!
//! **Outliers**: a fix whose innovation's Mahalanobis distance² exceeds `gate` (χ² with 2
//! degrees of freedom; 13.8 = 0.1 % false rejection) is rejected; after `max_rejections` in
//! a row the filter re-centres on GPS (the vehicle really is elsewhere, e.g. after a ferry).
//! **Gaps**: without fixes the prediction runs on (dead reckoning) and the covariance grows,
//! so the first fix after a gap is accepted with the weight it deserves.

// Small dense matrix algebra reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

/// State dimension.
const N: usize = 5;
type Vec5 = [f64; N];
type Mat5 = [[f64; N]; N];

/// Noise parameters (documented defaults for a consumer GNSS receiver and a MEMS IMU).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Noise {
    /// Acceleration process noise with an IMU, m/s².
    pub accel: f64,
    /// Acceleration process noise without an IMU (manoeuvres are unobserved), m/s².
    pub no_imu_accel: f64,
    /// Yaw-rate process noise, rad/s.
    pub gyro: f64,
    /// Gyro bias random walk, rad/s/√s.
    pub bias_walk: f64,
    /// User-equivalent range error: position σ per axis = uere × HDOP, metres.
    pub uere_m: f64,
    /// GPS speed σ, m/s.
    pub speed_mps: f64,
    /// GPS course σ, radians.
    pub course_rad: f64,
    /// Course is used above this speed, m/s.
    pub min_course_speed: f64,
    /// Mahalanobis distance² gate for position fixes.
    pub gate: f64,
    /// Consecutive rejected fixes before re-centring on GPS.
    pub max_rejections: u32,
}

impl Default for Noise {
    fn default() -> Self {
        Noise {
            accel: 0.5,
            no_imu_accel: 2.0,
            gyro: 0.02,
            bias_walk: 0.001,
            uere_m: 2.5,
            speed_mps: 0.3,
            course_rad: 5f64.to_radians(),
            min_course_speed: 2.0,
            gate: 13.8,
            max_rejections: 5,
        }
    }
}

/// A local east-north tangent plane around an origin (equirectangular on the WGS84
/// ellipsoid's radii at the origin: < 1 cm error within 10 km).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocalFrame {
    lat0: f64,
    lon0: f64,
    m_per_deg_lat: f64,
    m_per_deg_lon: f64,
}

impl LocalFrame {
    /// The plane around `(lat, lon)` in degrees.
    pub fn new(lat: f64, lon: f64) -> LocalFrame {
        const A: f64 = 6_378_137.0;
        const E2: f64 = 6.694_379_990_14e-3;
        let phi = lat.to_radians();
        let s = 1.0 - E2 * phi.sin().powi(2);
        let m = A * (1.0 - E2) / s.powf(1.5);
        let n = A / s.sqrt();
        LocalFrame {
            lat0: lat,
            lon0: lon,
            m_per_deg_lat: m.to_radians(),
            m_per_deg_lon: (n * phi.cos()).to_radians(),
        }
    }

    /// Degrees → metres east, north.
    pub fn to_local(&self, lat: f64, lon: f64) -> (f64, f64) {
        (
            (lon - self.lon0) * self.m_per_deg_lon,
            (lat - self.lat0) * self.m_per_deg_lat,
        )
    }

    /// Metres east, north → degrees.
    pub fn to_geo(&self, x: f64, y: f64) -> (f64, f64) {
        (
            self.lat0 + y / self.m_per_deg_lat,
            self.lon0 + x / self.m_per_deg_lon,
        )
    }
}

/// What a fix did to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FixOutcome {
    /// The first fix: the filter starts here.
    Initialised,
    /// Used.
    Accepted,
    /// Rejected as an outlier (a GPS jump).
    Rejected,
    /// Too many rejections in a row: re-centred on GPS.
    Recentred,
}

/// The filter.
#[derive(Debug, Clone)]
pub struct Ekf {
    /// State.
    pub s: Vec5,
    /// Covariance.
    pub p: Mat5,
    noise: Noise,
    rejections: u32,
    initialised: bool,
}

fn zero() -> Mat5 {
    [[0.0; N]; N]
}

fn mul(a: &Mat5, b: &Mat5) -> Mat5 {
    let mut c = zero();
    for i in 0..N {
        for k in 0..N {
            let aik = a[i][k];
            if aik != 0.0 {
                for j in 0..N {
                    c[i][j] += aik * b[k][j];
                }
            }
        }
    }
    c
}

fn transpose(a: &Mat5) -> Mat5 {
    let mut t = zero();
    for i in 0..N {
        for j in 0..N {
            t[j][i] = a[i][j];
        }
    }
    t
}

/// An angle in (−π, π].
pub(crate) fn wrap(a: f64) -> f64 {
    let t = (a + std::f64::consts::PI).rem_euclid(std::f64::consts::TAU);
    t - std::f64::consts::PI
}

impl Ekf {
    /// An uninitialised filter (the first fix starts it).
    pub fn new(noise: Noise) -> Ekf {
        Ekf {
            s: [0.0; N],
            p: zero(),
            noise,
            rejections: 0,
            initialised: false,
        }
    }

    /// Whether a fix has started the filter.
    pub fn initialised(&self) -> bool {
        self.initialised
    }

    /// Position standard deviation (metres, the larger axis).
    pub fn position_sigma(&self) -> f64 {
        self.p[0][0].max(self.p[1][1]).sqrt()
    }

    /// Predicts over `dt` seconds; `imu` = (forward acceleration, yaw rate).
    pub fn predict(&mut self, dt: f64, imu: Option<(f64, f64)>) {
        if !self.initialised || dt <= 0.0 {
            return;
        }
        let [x, y, v, psi, b] = self.s;
        let (a, w, q_a) = match imu {
            Some((a, w)) => (a, w, self.noise.accel),
            None => (0.0, b, self.noise.no_imu_accel),
        };
        let (sp, cp) = psi.sin_cos();
        self.s = [
            x + v * sp * dt,
            y + v * cp * dt,
            (v + a * dt).max(0.0),
            wrap(psi - (w - b) * dt),
            b,
        ];
        // Jacobian F = ∂f/∂s.
        let mut f = zero();
        for (i, row) in f.iter_mut().enumerate() {
            row[i] = 1.0;
        }
        f[0][2] = sp * dt;
        f[0][3] = v * cp * dt;
        f[1][2] = cp * dt;
        f[1][3] = -v * sp * dt;
        f[3][4] = dt;
        let mut p = mul(&mul(&f, &self.p), &transpose(&f));
        // Q: acceleration drives v (and position through it), yaw-rate noise ψ, bias walk b.
        let qa = q_a * q_a * dt;
        p[2][2] += qa;
        p[0][0] += qa * dt * dt / 4.0;
        p[1][1] += qa * dt * dt / 4.0;
        p[3][3] += self.noise.gyro.powi(2) * dt;
        p[4][4] += self.noise.bias_walk.powi(2) * dt;
        self.p = p;
    }

    /// Kalman update with measurement rows `h` (m ≤ 2), innovation `z`, covariance `r`.
    /// Returns the Mahalanobis distance² of the innovation (before the update).
    fn update(
        &mut self,
        h: &[Vec5],
        z: &[f64],
        r: &[[f64; 2]; 2],
        gate: Option<f64>,
    ) -> Option<f64> {
        let m = h.len();
        // S = H P Hᵀ + R, PHt = P Hᵀ.
        let mut pht = [[0.0; 2]; N];
        for i in 0..N {
            for (k, hk) in h.iter().enumerate() {
                pht[i][k] = (0..N).map(|j| self.p[i][j] * hk[j]).sum();
            }
        }
        let mut s = [[0.0; 2]; 2];
        for a in 0..m {
            for c in 0..m {
                s[a][c] = (0..N).map(|j| h[a][j] * pht[j][c]).sum::<f64>() + r[a][c];
            }
        }
        let inv = if m == 1 {
            if s[0][0] <= 0.0 {
                return None;
            }
            [[1.0 / s[0][0], 0.0], [0.0, 0.0]]
        } else {
            let det = s[0][0] * s[1][1] - s[0][1] * s[1][0];
            if det <= 0.0 {
                return None;
            }
            [
                [s[1][1] / det, -s[0][1] / det],
                [-s[1][0] / det, s[0][0] / det],
            ]
        };
        let mut d2 = 0.0;
        for a in 0..m {
            for c in 0..m {
                d2 += z[a] * inv[a][c] * z[c];
            }
        }
        if gate.is_some_and(|g| d2 > g) {
            return Some(d2);
        }
        // K = P Hᵀ S⁻¹; s += K z; P = (I − K H) P.
        let mut k = [[0.0; 2]; N];
        for i in 0..N {
            for c in 0..m {
                k[i][c] = (0..m).map(|a| pht[i][a] * inv[a][c]).sum();
            }
        }
        for i in 0..N {
            self.s[i] += (0..m).map(|c| k[i][c] * z[c]).sum::<f64>();
        }
        self.s[3] = wrap(self.s[3]);
        self.s[2] = self.s[2].max(0.0);
        let mut ikh = zero();
        for i in 0..N {
            for j in 0..N {
                ikh[i][j] =
                    if i == j { 1.0 } else { 0.0 } - (0..m).map(|c| k[i][c] * h[c][j]).sum::<f64>();
            }
        }
        self.p = mul(&ikh, &self.p);
        // Keep P symmetric against rounding.
        for i in 0..N {
            for j in 0..i {
                let v = 0.5 * (self.p[i][j] + self.p[j][i]);
                self.p[i][j] = v;
                self.p[j][i] = v;
            }
        }
        Some(d2)
    }

    /// A position fix (local metres) with its HDOP.
    pub fn fix(&mut self, x: f64, y: f64, hdop: f64) -> FixOutcome {
        let sigma = self.noise.uere_m * hdop.clamp(0.5, 50.0);
        if !self.initialised {
            self.s = [x, y, 0.0, 0.0, 0.0];
            self.p = zero();
            self.p[0][0] = sigma * sigma;
            self.p[1][1] = sigma * sigma;
            self.p[2][2] = 25.0;
            self.p[3][3] = std::f64::consts::PI.powi(2);
            self.p[4][4] = 0.01f64.powi(2);
            self.initialised = true;
            return FixOutcome::Initialised;
        }
        let r = [[sigma * sigma, 0.0], [0.0, sigma * sigma]];
        let h = [[1.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0]];
        let z = [x - self.s[0], y - self.s[1]];
        let d2 = self.update(&h, &z, &r, Some(self.noise.gate));
        if d2.is_some_and(|d| d > self.noise.gate) {
            self.rejections += 1;
            if self.rejections >= self.noise.max_rejections {
                self.s[0] = x;
                self.s[1] = y;
                self.p[0][0] = sigma * sigma;
                self.p[1][1] = sigma * sigma;
                for i in 2..N {
                    self.p[0][i] = 0.0;
                    self.p[i][0] = 0.0;
                    self.p[1][i] = 0.0;
                    self.p[i][1] = 0.0;
                }
                self.p[0][1] = 0.0;
                self.p[1][0] = 0.0;
                self.rejections = 0;
                return FixOutcome::Recentred;
            }
            return FixOutcome::Rejected;
        }
        self.rejections = 0;
        FixOutcome::Accepted
    }

    /// GPS speed (m/s) and course (degrees true, used when fast enough).
    pub fn velocity(&mut self, speed: Option<f64>, course_deg: Option<f64>) {
        if !self.initialised {
            return;
        }
        if let Some(v) = speed {
            let r = [[self.noise.speed_mps.powi(2), 0.0], [0.0, 0.0]];
            self.update(&[[0.0, 0.0, 1.0, 0.0, 0.0]], &[v - self.s[2]], &r, None);
            if let Some(c) = course_deg
                && v >= self.noise.min_course_speed
            {
                // At the first usable course the heading is unknown (σ = π): take it.
                let r = [[self.noise.course_rad.powi(2), 0.0], [0.0, 0.0]];
                let innov = wrap(c.to_radians() - self.s[3]);
                self.update(&[[0.0, 0.0, 0.0, 1.0, 0.0]], &[innov], &r, None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_frame_round_trips_and_has_the_right_scale() {
        let f = LocalFrame::new(48.137, 11.575);
        let (x, y) = f.to_local(48.137 + 0.01, 11.575 + 0.01);
        // 0.01° of latitude ≈ 1112 m; of longitude at 48° ≈ 745 m.
        assert!((y - 1112.0).abs() < 3.0, "{y}");
        assert!((x - 745.0).abs() < 3.0, "{x}");
        let (lat, lon) = f.to_geo(x, y);
        assert!((lat - 48.147).abs() < 1e-9 && (lon - 11.585).abs() < 1e-9);
    }

    #[test]
    fn the_covariance_grows_in_a_gap_and_shrinks_with_a_fix() {
        let mut k = Ekf::new(Noise::default());
        k.fix(0.0, 0.0, 1.0);
        let s0 = k.position_sigma();
        let mut last = s0;
        for _ in 0..100 {
            k.predict(0.1, None);
            let s = k.position_sigma();
            assert!(s >= last);
            last = s;
        }
        assert!(last > 2.0 * s0);
        assert_eq!(k.fix(0.5, 0.5, 1.0), FixOutcome::Accepted);
        assert!(k.position_sigma() < last);
    }

    #[test]
    fn a_jump_is_rejected_and_a_lasting_one_recentres() {
        let mut k = Ekf::new(Noise::default());
        k.fix(0.0, 0.0, 1.0);
        for _ in 0..10 {
            k.predict(1.0, Some((0.0, 0.0)));
            k.fix(0.0, 0.0, 1.0);
        }
        assert_eq!(k.fix(80.0, 0.0, 1.0), FixOutcome::Rejected);
        assert!(k.s[0].abs() < 1.0);
        let outcomes: Vec<_> = (0..4).map(|_| k.fix(80.0, 0.0, 1.0)).collect();
        assert_eq!(
            outcomes.last(),
            Some(&FixOutcome::Recentred),
            "{outcomes:?}"
        );
        assert!((k.s[0] - 80.0).abs() < 1e-9);
    }
}
