//! ITU-R BT.601 limited-range colour constants, in the one copy that every pixel kernel uses.
//!
//! The CPU pixel kernels (`aegis_hal::pixel`) and the CUDA kernels (`aegis-cuda`, CUDA C
//! compiled at run time with NVRTC) must agree bit for bit: the device tests compare them
//! byte for byte. Their coefficients, offsets and rounding therefore come from here and only
//! from here — hal reads the consts, and aegis-cuda prepends [`cuda_defines`] to the kernel
//! source, so `kernels.cu` carries no literal coefficient of its own (a test of aegis-cuda
//! fails if one creeps back).
//!
//! The fixed-point derivation ([`RgbToYuv::new`], [`YuvToRgb::new`]) takes `Kr`/`Kb`, so hal's
//! BT.709 conversion is derived by the same code; BT.601's own values are [`RGB_TO_YUV`],
//! [`YUV_TO_RGB`] and the float weights in [`float`].
//!
//! This crate must stay dependency-free and hold numbers only, never a pixel loop: the
//! loops live beside their callers (CPU in hal, device in `kernels.cu`).

/// BT.601 luma weight of red.
pub const KR: f64 = 0.299;
/// BT.601 luma weight of blue (`Kg = 1 - Kr - Kb`).
pub const KB: f64 = 0.114;

/// Black level of limited-range ("TV") luma.
pub const Y_MIN: i32 = 16;
/// White level of limited-range luma.
pub const Y_MAX: i32 = 235;
/// Lowest limited-range chroma value.
pub const C_MIN: i32 = 16;
/// Highest limited-range chroma value.
pub const C_MAX: i32 = 240;
/// Chroma of a grey (zero colour difference).
pub const C_ZERO: i32 = 128;

/// Fixed-point precision of the integer coefficients: they are `x * 2^SHIFT`, rounded.
pub const SHIFT: u32 = 16;
/// One half in fixed point: added before the final shift so results round half up.
pub const HALF: i32 = 1 << (SHIFT - 1);

/// Rounds `x * 2^SHIFT` to the nearest integer, halves away from zero (usable in const
/// context).
pub const fn fx(x: f64) -> i32 {
    let v = x * (1u32 << SHIFT) as f64;
    if v >= 0.0 {
        (v + 0.5) as i32
    } else {
        (v - 0.5) as i32
    }
}

/// Fixed-point weights for RGB → limited-range YCbCr (`x * 2^SHIFT`).
///
/// Luma is `(yr*R + yg*G + yb*B + (Y_MIN << SHIFT) + HALF) >> SHIFT`; chroma is taken from
/// the sum of a 2×2 block (two more fractional bits): `(ur*ΣR + ug*ΣG + ub*ΣB + (C_ZERO <<
/// (SHIFT+2)) + (1 << (SHIFT+1))) >> (SHIFT+2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RgbToYuv {
    /// Red's weight in luma.
    pub yr: i32,
    /// Green's weight in luma.
    pub yg: i32,
    /// Blue's weight in luma.
    pub yb: i32,
    /// Red's weight in Cb.
    pub ur: i32,
    /// Green's weight in Cb.
    pub ug: i32,
    /// Blue's weight in Cb.
    pub ub: i32,
    /// Red's weight in Cr.
    pub vr: i32,
    /// Green's weight in Cr.
    pub vg: i32,
    /// Blue's weight in Cr.
    pub vb: i32,
}

impl RgbToYuv {
    /// The weights of the matrix with luma weights `kr`, `kb`.
    pub const fn new(kr: f64, kb: f64) -> Self {
        let ys = 219.0 / 255.0;
        let cs = 224.0 / 255.0;
        let yr = fx(ys * kr);
        let yb = fx(ys * kb);
        // Force the luma weights to sum to the exactly rounded total so that
        // white maps to exactly 235 and greys stay neutral.
        let yg = fx(ys) - yr - yb;
        let ur = -fx(cs * kr / (2.0 * (1.0 - kb)));
        let ub = fx(cs * 0.5);
        let vr = ub;
        let vb = -fx(cs * kb / (2.0 * (1.0 - kr)));
        // Chroma weights must sum to exactly zero so greys give Cb = Cr = 128.
        let ug = -(ur + ub);
        let vg = -(vr + vb);
        RgbToYuv {
            yr,
            yg,
            yb,
            ur,
            ug,
            ub,
            vr,
            vg,
            vb,
        }
    }

    /// The nine weights in the order `yr yg yb ur ug ub vr vg vb`.
    pub const fn to_array(self) -> [i32; 9] {
        [
            self.yr, self.yg, self.yb, self.ur, self.ug, self.ub, self.vr, self.vg, self.vb,
        ]
    }
}

/// Fixed-point weights for limited-range YCbCr → RGB (`x * 2^SHIFT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct YuvToRgb {
    /// 255/219, applied to `Y - Y_MIN`.
    pub y: i32,
    /// Cr contribution to R.
    pub rv: i32,
    /// Cb contribution to G (subtracted).
    pub gu: i32,
    /// Cr contribution to G (subtracted).
    pub gv: i32,
    /// Cb contribution to B.
    pub bu: i32,
}

impl YuvToRgb {
    /// The weights of the matrix with luma weights `kr`, `kb`.
    pub const fn new(kr: f64, kb: f64) -> Self {
        let kg = 1.0 - kr - kb;
        let ys = 255.0 / 219.0;
        let cs = 255.0 / 224.0;
        YuvToRgb {
            y: fx(ys),
            rv: fx(cs * 2.0 * (1.0 - kr)),
            gu: fx(cs * 2.0 * (1.0 - kb) * kb / kg),
            gv: fx(cs * 2.0 * (1.0 - kr) * kr / kg),
            bu: fx(cs * 2.0 * (1.0 - kb)),
        }
    }
}

/// BT.601 RGB → YCbCr in fixed point (the CPU's `rgb24_to_nv12` and CUDA's `rgb_to_nv12`).
pub const RGB_TO_YUV: RgbToYuv = RgbToYuv::new(KR, KB);
/// BT.601 YCbCr → RGB in fixed point (the CPU's NV12/I420 → RGB24).
pub const YUV_TO_RGB: YuvToRgb = YuvToRgb::new(KR, KB);

/// BT.601 YCbCr → RGB in `f32`, as the models' float preprocessing computes it (and the CUDA
/// preprocess kernels, operation for operation): `y' = (Y - Y_MIN) * Y_SCALE`,
/// `u' = (Cb - C_ZERO) * C_SCALE` (likewise `v'`), `R = y' + RV*v'`,
/// `G = y' - GU*u' - GV*v'`, `B = y' + BU*u'`, then `/ 255` clamped to 0..=1.
///
/// The weights are the customary 6-digit ones, not derived from [`KR`]/[`KB`] (the models'
/// float outputs were fixed with these).
pub mod float {
    /// `Y_MIN` as a float.
    pub const Y_MIN: f32 = super::Y_MIN as f32;
    /// `C_ZERO` as a float.
    pub const C_ZERO: f32 = super::C_ZERO as f32;
    /// Limited-range luma to full range: 255/219, rounded to `f32` once.
    pub const Y_SCALE: f32 = 255.0 / 219.0;
    /// Limited-range chroma to full range: 255/224, rounded to `f32` once.
    pub const C_SCALE: f32 = 255.0 / 224.0;
    /// Cr contribution to R.
    pub const RV: f32 = 1.402;
    /// Cb contribution to G (subtracted).
    pub const GU: f32 = 0.344_136;
    /// Cr contribution to G (subtracted).
    pub const GV: f32 = 0.714_136;
    /// Cb contribution to B.
    pub const BU: f32 = 1.772;
}

/// Every constant the CUDA kernels use, as `(name, C literal)`: integers in decimal, floats
/// in their shortest decimal form that reads back as the same `f32` (with an `f` suffix).
pub fn cuda_constants() -> Vec<(&'static str, String)> {
    let int = |v: i32| {
        if v < 0 {
            format!("({v})")
        } else {
            v.to_string()
        }
    };
    // `{:?}` prints the shortest decimal that round-trips and always has a `.` or an exponent.
    let flt = |v: f32| format!("{v:?}f");
    let c = RGB_TO_YUV;
    vec![
        ("BT601_SHIFT", SHIFT.to_string()),
        ("BT601_Y_MIN", int(Y_MIN)),
        ("BT601_Y_MAX", int(Y_MAX)),
        ("BT601_C_MIN", int(C_MIN)),
        ("BT601_C_MAX", int(C_MAX)),
        ("BT601_C_ZERO", int(C_ZERO)),
        ("BT601_YR", int(c.yr)),
        ("BT601_YG", int(c.yg)),
        ("BT601_YB", int(c.yb)),
        ("BT601_UR", int(c.ur)),
        ("BT601_UG", int(c.ug)),
        ("BT601_UB", int(c.ub)),
        ("BT601_VR", int(c.vr)),
        ("BT601_VG", int(c.vg)),
        ("BT601_VB", int(c.vb)),
        ("BT601_F_Y_MIN", flt(float::Y_MIN)),
        ("BT601_F_C_ZERO", flt(float::C_ZERO)),
        ("BT601_F_Y_SCALE", flt(float::Y_SCALE)),
        ("BT601_F_C_SCALE", flt(float::C_SCALE)),
        ("BT601_F_RV", flt(float::RV)),
        ("BT601_F_GU", flt(float::GU)),
        ("BT601_F_GV", flt(float::GV)),
        ("BT601_F_BU", flt(float::BU)),
    ]
}

/// The `#define` lines aegis-cuda prepends to its kernel source, one per
/// [`cuda_constants`] entry.
pub fn cuda_defines() -> String {
    let mut s = String::from("// Generated from the aegis-bt601 crate's consts (do not copy).\n");
    for (name, value) in cuda_constants() {
        s.push_str(&format!("#define {name} {value}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_keep_greys_neutral_and_white_at_235() {
        let c = RGB_TO_YUV;
        assert_eq!(c.ur + c.ug + c.ub, 0);
        assert_eq!(c.vr + c.vg + c.vb, 0);
        let white = (c.yr + c.yg + c.yb) * 255 + (Y_MIN << SHIFT) + HALF;
        assert_eq!(white >> SHIFT, Y_MAX);
        let black = (Y_MIN << SHIFT) + HALF;
        assert_eq!(black >> SHIFT, Y_MIN);
    }

    #[test]
    fn float_literals_read_back_as_the_same_bits() {
        for (name, value) in cuda_constants() {
            let Some(f) = value.strip_suffix('f') else {
                continue;
            };
            let want = match name {
                "BT601_F_Y_MIN" => float::Y_MIN,
                "BT601_F_C_ZERO" => float::C_ZERO,
                "BT601_F_Y_SCALE" => float::Y_SCALE,
                "BT601_F_C_SCALE" => float::C_SCALE,
                "BT601_F_RV" => float::RV,
                "BT601_F_GU" => float::GU,
                "BT601_F_GV" => float::GV,
                "BT601_F_BU" => float::BU,
                other => panic!("unexpected float constant {other}"),
            };
            let got: f32 = f
                .parse()
                .unwrap_or_else(|e| panic!("{name} = {value}: {e}"));
            assert_eq!(got.to_bits(), want.to_bits(), "{name} = {value}");
            assert!(
                f.contains('.') || f.contains('e'),
                "{name} = {value}: not a float literal"
            );
        }
        // 255/219 in f32 is what `255.0f / 219.0f` gives in C (one IEEE division).
        assert_eq!(float::Y_SCALE.to_bits(), (255.0f32 / 219.0f32).to_bits());
    }

    #[test]
    fn defines_are_one_line_each_and_unique() {
        let d = cuda_defines();
        let names: Vec<&str> = d
            .lines()
            .filter_map(|l| l.strip_prefix("#define "))
            .map(|l| l.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(names.len(), cuda_constants().len());
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len());
    }
}
