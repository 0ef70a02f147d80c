//! The constant-velocity box filter of SORT: state (cx, cy, area, aspect, vcx, vcy, varea),
//! measurement (cx, cy, area, aspect). Fixed-size arrays: no allocation per update.

// Matrix arithmetic reads best with explicit row/column indices.
#![allow(clippy::needless_range_loop)]

type M7 = [[f64; 7]; 7];
type M4 = [[f64; 4]; 4];

use crate::geometry::BoxXywh;

/// The filter's view of a box: measurement vector and state.
impl BoxXywh {
    pub(crate) fn to_z(self) -> [f64; 4] {
        [
            self.x + self.w / 2.0,
            self.y + self.h / 2.0,
            self.w * self.h,
            self.w / self.h.max(1e-9),
        ]
    }

    pub(crate) fn from_state(x: &[f64; 7]) -> Self {
        let area = x[2].max(0.0);
        let w = (area * x[3].max(0.0)).sqrt();
        let h = if w > 0.0 { area / w } else { 0.0 };
        BoxXywh {
            x: x[0] - w / 2.0,
            y: x[1] - h / 2.0,
            w,
            h,
        }
    }
}

/// One tracked box's filter.
#[derive(Debug, Clone)]
pub struct BoxFilter {
    x: [f64; 7],
    p: M7,
}

fn diag7(d: [f64; 7]) -> M7 {
    let mut m = [[0.0; 7]; 7];
    for i in 0..7 {
        m[i][i] = d[i];
    }
    m
}

/// Process noise (SORT's: velocities change slowly, area velocity very slowly).
const Q: [f64; 7] = [1.0, 1.0, 1.0, 1.0, 0.01, 0.01, 0.0001];
/// Measurement noise (area and aspect are noisier than the centre).
const R: [f64; 4] = [1.0, 1.0, 10.0, 10.0];

impl BoxFilter {
    /// A filter at `b`, velocity unknown (large initial uncertainty on it).
    pub fn new(b: BoxXywh) -> Self {
        let z = b.to_z();
        BoxFilter {
            x: [z[0], z[1], z[2], z[3], 0.0, 0.0, 0.0],
            p: diag7([10.0, 10.0, 10.0, 10.0, 1e4, 1e4, 1e4]),
        }
    }

    /// Advances one frame; returns the predicted box.
    pub fn predict(&mut self) -> BoxXywh {
        if self.x[2] + self.x[6] <= 0.0 {
            self.x[6] = 0.0;
        }
        self.x[0] += self.x[4];
        self.x[1] += self.x[5];
        self.x[2] += self.x[6];
        // P = F P Fᵀ + Q, with F = I + (0→4, 1→5, 2→6).
        let p = self.p;
        let mut fp = p;
        for (r, v) in [(0, 4), (1, 5), (2, 6)] {
            for c in 0..7 {
                fp[r][c] = p[r][c] + p[v][c];
            }
        }
        let mut fpf = fp;
        for r in 0..7 {
            for (c, v) in [(0, 4), (1, 5), (2, 6)] {
                fpf[r][c] = fp[r][c] + fp[r][v];
            }
        }
        for (i, q) in Q.iter().enumerate() {
            fpf[i][i] += q;
        }
        self.p = fpf;
        self.state_box()
    }

    /// Corrects with a measured box.
    pub fn update(&mut self, b: BoxXywh) {
        let z = b.to_z();
        // S = H P Hᵀ + R is P's top-left 4×4 plus R.
        let mut s: M4 = [[0.0; 4]; 4];
        for r in 0..4 {
            for c in 0..4 {
                s[r][c] = self.p[r][c];
            }
            s[r][r] += R[r];
        }
        let Some(si) = invert4(&s) else {
            return;
        };
        // K = P Hᵀ S⁻¹ (7×4): P's first four columns times S⁻¹.
        let mut k = [[0.0; 4]; 7];
        for r in 0..7 {
            for c in 0..4 {
                k[r][c] = (0..4).map(|j| self.p[r][j] * si[j][c]).sum();
            }
        }
        let y: [f64; 4] = std::array::from_fn(|i| z[i] - self.x[i]);
        for r in 0..7 {
            self.x[r] += (0..4).map(|j| k[r][j] * y[j]).sum::<f64>();
        }
        // P = (I − K H) P: subtract K times P's first four rows.
        let p = self.p;
        for r in 0..7 {
            for c in 0..7 {
                self.p[r][c] = p[r][c] - (0..4).map(|j| k[r][j] * p[j][c]).sum::<f64>();
            }
        }
    }

    /// The current estimate as a box.
    pub fn state_box(&self) -> BoxXywh {
        BoxXywh::from_state(&self.x)
    }
}

/// Gauss–Jordan inverse with partial pivoting; `None` if singular.
fn invert4(m: &M4) -> Option<M4> {
    let mut a = *m;
    let mut inv: M4 = [[0.0; 4]; 4];
    for (i, row) in inv.iter_mut().enumerate() {
        row[i] = 1.0;
    }
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        inv.swap(col, pivot);
        let d = a[col][col];
        for c in 0..4 {
            a[col][c] /= d;
            inv[col][c] /= d;
        }
        for r in 0..4 {
            if r != col {
                let f = a[r][col];
                for c in 0..4 {
                    a[r][c] -= f * a[col][c];
                    inv[r][c] -= f * inv[col][c];
                }
            }
        }
    }
    Some(inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_a_constant_velocity_and_predicts_it() {
        let b = |t: f64| BoxXywh {
            x: 100.0 + 5.0 * t,
            y: 50.0 - 2.0 * t,
            w: 40.0,
            h: 80.0,
        };
        let mut f = BoxFilter::new(b(0.0));
        for t in 1..30 {
            f.predict();
            f.update(b(t as f64));
        }
        // Coast five frames without measurements.
        let mut p = f.state_box();
        for _ in 0..5 {
            p = f.predict();
        }
        let want = b(34.0);
        assert!(
            (p.x - want.x).abs() < 1.0 && (p.y - want.y).abs() < 1.0,
            "{p:?} vs {want:?}"
        );
        assert!(
            (p.w - 40.0).abs() < 1.0 && (p.h - 80.0).abs() < 1.0,
            "{p:?}"
        );
    }

    #[test]
    fn iou_and_inverse() {
        let a = BoxXywh {
            x: 0.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        let b = BoxXywh {
            x: 5.0,
            y: 0.0,
            w: 10.0,
            h: 10.0,
        };
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(a.iou(&BoxXywh { x: 20.0, ..a }), 0.0);
        let m = [
            [4.0, 1.0, 0.0, 0.0],
            [1.0, 3.0, 0.0, 0.0],
            [0.0, 0.0, 2.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
        ];
        let i = invert4(&m).unwrap();
        for r in 0..4 {
            for c in 0..4 {
                let v: f64 = (0..4).map(|k| m[r][k] * i[k][c]).sum();
                assert!((v - f64::from(u8::from(r == c))).abs() < 1e-12);
            }
        }
        assert!(invert4(&[[0.0; 4]; 4]).is_none());
    }
}
