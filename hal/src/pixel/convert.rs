//! Pixel-format conversion between NV12, I420 and packed RGB24.
//!
//! Hardware decoders and V4L2 cameras hand out NV12 (a Y plane plus one
//! interleaved Cb/Cr plane), software codecs and most encoders want I420
//! (three separate planes), and detection models consume packed RGB24.
//! These conversions sit on the per-frame hot path, so they are written as
//! allocation-free, branch-light row loops with integer fixed-point maths.
//!
//! Colour maths follows ITU-R BT.601 / BT.709 with limited range
//! (Y 16..=235, Cb/Cr 16..=240), using 16-bit fixed-point coefficients
//! derived at compile time from the standard `Kr`/`Kb` constants, so every
//! output is within 1 of the exactly rounded real-valued result.
//!
//! Chroma handling for 4:2:0:
//! * YUV → RGB replicates each chroma sample over its 2x2 luma block
//!   (nearest-neighbour upsampling, as libyuv does by default).
//! * RGB → YUV uses the average of each 2x2 block for the chroma sample.

use super::{
    Matrix, PixelError, Plane, PlaneMut, check_even, row_pairs, row_pairs_mut, rows, rows_mut,
};

// The coefficients, offsets and rounding are aegis-bt601's: the CUDA kernels get the same
// consts injected, so CPU and GPU cannot drift apart. BT.709 is derived by the same code.
use aegis_bt601::{C_MAX, C_MIN, C_ZERO, HALF, RgbToYuv, SHIFT, Y_MAX, Y_MIN, YuvToRgb};

const YUV_TO_RGB_709: YuvToRgb = {
    let (kr, kb) = Matrix::Bt709.kr_kb();
    YuvToRgb::new(kr, kb)
};
const RGB_TO_YUV_709: RgbToYuv = {
    let (kr, kb) = Matrix::Bt709.kr_kb();
    RgbToYuv::new(kr, kb)
};

/// Fixed-point YCbCr → RGB weights of `m`.
const fn yuv_to_rgb(m: Matrix) -> YuvToRgb {
    match m {
        Matrix::Bt601 => aegis_bt601::YUV_TO_RGB,
        Matrix::Bt709 => YUV_TO_RGB_709,
    }
}

/// Fixed-point RGB → YCbCr weights of `m`.
const fn rgb_to_yuv(m: Matrix) -> RgbToYuv {
    match m {
        Matrix::Bt601 => aegis_bt601::RGB_TO_YUV,
        Matrix::Bt709 => RGB_TO_YUV_709,
    }
}

#[inline(always)]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// Converts one pair of luma samples sharing a chroma sample into two RGB
/// pixels (`out.len() == 6`).
#[inline(always)]
fn yuv2_to_rgb(c: &YuvToRgb, y: &[u8], u: u8, v: u8, out: &mut [u8]) {
    let u = i32::from(u) - C_ZERO;
    let v = i32::from(v) - C_ZERO;
    let r_add = c.rv * v + HALF;
    let g_add = HALF - c.gu * u - c.gv * v;
    let b_add = c.bu * u + HALF;
    for (&yy, px) in y.iter().zip(out.chunks_exact_mut(3)) {
        let yv = c.y * (i32::from(yy) - Y_MIN);
        px[0] = clamp_u8((yv + r_add) >> SHIFT);
        px[1] = clamp_u8((yv + g_add) >> SHIFT);
        px[2] = clamp_u8((yv + b_add) >> SHIFT);
    }
}

/// One RGB row from a luma row and planar chroma rows.
#[inline]
fn row_i420_to_rgb(c: &YuvToRgb, y: &[u8], u: &[u8], v: &[u8], out: &mut [u8]) {
    for (((yp, &uu), &vv), px) in y.chunks_exact(2).zip(u).zip(v).zip(out.chunks_exact_mut(6)) {
        yuv2_to_rgb(c, yp, uu, vv, px);
    }
}

/// One RGB row from a luma row and an interleaved chroma row.
#[inline]
fn row_nv12_to_rgb(c: &YuvToRgb, y: &[u8], uv: &[u8], out: &mut [u8]) {
    for ((yp, cp), px) in y
        .chunks_exact(2)
        .zip(uv.chunks_exact(2))
        .zip(out.chunks_exact_mut(6))
    {
        yuv2_to_rgb(c, yp, cp[0], cp[1], px);
    }
}

/// Converts a 2x2 RGB block (two 6-byte runs from consecutive rows) into
/// four luma samples and one averaged chroma pair.
#[inline(always)]
fn rgb2x2_to_yuv(c: &RgbToYuv, p0: &[u8], p1: &[u8], y0: &mut [u8], y1: &mut [u8]) -> (u8, u8) {
    let luma = |r: i32, g: i32, b: i32| -> u8 {
        ((c.yr * r + c.yg * g + c.yb * b + (Y_MIN << SHIFT) + HALF) >> SHIFT).clamp(Y_MIN, Y_MAX)
            as u8
    };
    let (mut rs, mut gs, mut bs) = (0i32, 0i32, 0i32);
    for (src, dst) in [(p0, y0), (p1, y1)] {
        for (px, yo) in src.chunks_exact(3).zip(dst.iter_mut()) {
            let (r, g, b) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
            *yo = luma(r, g, b);
            rs += r;
            gs += g;
            bs += b;
        }
    }
    // Sums of four pixels: two extra fractional bits.
    const S: u32 = SHIFT + 2;
    let u = ((c.ur * rs + c.ug * gs + c.ub * bs + (C_ZERO << S) + (1 << (S - 1))) >> S)
        .clamp(C_MIN, C_MAX);
    let v = ((c.vr * rs + c.vg * gs + c.vb * bs + (C_ZERO << S) + (1 << (S - 1))) >> S)
        .clamp(C_MIN, C_MAX);
    (u as u8, v as u8)
}

/// Copies `rows` rows of `width_bytes` bytes from `src` to `dst`, honouring
/// both strides. Padding bytes of `dst` are left untouched.
///
/// Errors if either plane is too short or has a stride below `width_bytes`.
pub fn copy_plane(
    src: Plane<'_>,
    dst: PlaneMut<'_>,
    width_bytes: usize,
    rows: usize,
) -> Result<(), PixelError> {
    src.check("src", width_bytes, rows)?;
    dst.check("dst", width_bytes, rows)?;
    copy_rows(src, dst, width_bytes, rows);
    Ok(())
}

/// [`copy_plane`] without validation (callers have checked already).
pub(crate) fn copy_rows(src: Plane<'_>, dst: PlaneMut<'_>, width_bytes: usize, n: usize) {
    if width_bytes == 0 || n == 0 {
        return;
    }
    if src.stride == width_bytes && dst.stride == width_bytes {
        let len = width_bytes * n;
        dst.data[..len].copy_from_slice(&src.data[..len]);
        return;
    }
    for (s, d) in rows(src.data, src.stride, width_bytes, n).zip(rows_mut(
        dst.data,
        dst.stride,
        width_bytes,
        n,
    )) {
        d.copy_from_slice(s);
    }
}

/// Splits NV12 into I420: copies luma and de-interleaves the CbCr plane.
///
/// `w` and `h` are the frame size in pixels and must be even. The `uv`
/// plane holds `h / 2` rows of `w` bytes (Cb, Cr, Cb, Cr, ...); `ou`/`ov`
/// receive `h / 2` rows of `w / 2` bytes each.
pub fn nv12_to_i420(
    y: Plane<'_>,
    uv: Plane<'_>,
    w: usize,
    h: usize,
    oy: PlaneMut<'_>,
    ou: PlaneMut<'_>,
    ov: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("NV12 frame", w, h)?;
    let (cw, ch) = (w / 2, h / 2);
    y.check("src Y", w, h)?;
    uv.check("src UV", w, ch)?;
    oy.check("dst Y", w, h)?;
    ou.check("dst U", cw, ch)?;
    ov.check("dst V", cw, ch)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    copy_rows(y, oy, w, h);
    for ((s, u), v) in rows(uv.data, uv.stride, w, ch)
        .zip(rows_mut(ou.data, ou.stride, cw, ch))
        .zip(rows_mut(ov.data, ov.stride, cw, ch))
    {
        for ((p, uu), vv) in s.chunks_exact(2).zip(u.iter_mut()).zip(v.iter_mut()) {
            *uu = p[0];
            *vv = p[1];
        }
    }
    Ok(())
}

/// Merges I420 into NV12: copies luma and interleaves Cb and Cr.
///
/// `w` and `h` must be even; see [`nv12_to_i420`] for the plane shapes.
pub fn i420_to_nv12(
    y: Plane<'_>,
    u: Plane<'_>,
    v: Plane<'_>,
    w: usize,
    h: usize,
    oy: PlaneMut<'_>,
    ouv: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("I420 frame", w, h)?;
    let (cw, ch) = (w / 2, h / 2);
    y.check("src Y", w, h)?;
    u.check("src U", cw, ch)?;
    v.check("src V", cw, ch)?;
    oy.check("dst Y", w, h)?;
    ouv.check("dst UV", w, ch)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    copy_rows(y, oy, w, h);
    for ((d, uu), vv) in rows_mut(ouv.data, ouv.stride, w, ch)
        .zip(rows(u.data, u.stride, cw, ch))
        .zip(rows(v.data, v.stride, cw, ch))
    {
        for ((p, &a), &b) in d.chunks_exact_mut(2).zip(uu).zip(vv) {
            p[0] = a;
            p[1] = b;
        }
    }
    Ok(())
}

/// Converts I420 (limited range, matrix `m`) to packed RGB24.
///
/// `w` and `h` must be even. `out` receives `h` rows of `3 * w` bytes
/// (R, G, B order), so `out.stride >= 3 * w`. Each chroma sample is applied
/// to its whole 2x2 luma block.
pub fn i420_to_rgb24(
    y: Plane<'_>,
    u: Plane<'_>,
    v: Plane<'_>,
    w: usize,
    h: usize,
    m: Matrix,
    out: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("I420 frame", w, h)?;
    let (cw, ch) = (w / 2, h / 2);
    y.check("src Y", w, h)?;
    u.check("src U", cw, ch)?;
    v.check("src V", cw, ch)?;
    out.check("dst RGB", 3 * w, h)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    let c = yuv_to_rgb(m);
    for ((((y0, y1), (o0, o1)), ur), vr) in row_pairs(y.data, y.stride, w, ch)
        .zip(row_pairs_mut(out.data, out.stride, 3 * w, ch))
        .zip(rows(u.data, u.stride, cw, ch))
        .zip(rows(v.data, v.stride, cw, ch))
    {
        row_i420_to_rgb(&c, y0, ur, vr, o0);
        row_i420_to_rgb(&c, y1, ur, vr, o1);
    }
    Ok(())
}

/// Converts NV12 (limited range, matrix `m`) to packed RGB24.
///
/// `w` and `h` must be even. `out` receives `h` rows of `3 * w` bytes
/// (R, G, B order). Each chroma sample is applied to its 2x2 luma block.
pub fn nv12_to_rgb24(
    y: Plane<'_>,
    uv: Plane<'_>,
    w: usize,
    h: usize,
    m: Matrix,
    out: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("NV12 frame", w, h)?;
    let ch = h / 2;
    y.check("src Y", w, h)?;
    uv.check("src UV", w, ch)?;
    out.check("dst RGB", 3 * w, h)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    let c = yuv_to_rgb(m);
    for (((y0, y1), (o0, o1)), cr) in row_pairs(y.data, y.stride, w, ch)
        .zip(row_pairs_mut(out.data, out.stride, 3 * w, ch))
        .zip(rows(uv.data, uv.stride, w, ch))
    {
        row_nv12_to_rgb(&c, y0, cr, o0);
        row_nv12_to_rgb(&c, y1, cr, o1);
    }
    Ok(())
}

/// Converts packed RGB24 to I420 (limited range, matrix `m`).
///
/// `w` and `h` must be even; `rgb` holds `h` rows of `3 * w` bytes. Each
/// chroma sample is computed from the average colour of its 2x2 block.
pub fn rgb24_to_i420(
    rgb: Plane<'_>,
    w: usize,
    h: usize,
    m: Matrix,
    oy: PlaneMut<'_>,
    ou: PlaneMut<'_>,
    ov: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("RGB frame", w, h)?;
    let (cw, ch) = (w / 2, h / 2);
    rgb.check("src RGB", 3 * w, h)?;
    oy.check("dst Y", w, h)?;
    ou.check("dst U", cw, ch)?;
    ov.check("dst V", cw, ch)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    let c = rgb_to_yuv(m);
    for ((((r0, r1), (y0, y1)), ur), vr) in row_pairs(rgb.data, rgb.stride, 3 * w, ch)
        .zip(row_pairs_mut(oy.data, oy.stride, w, ch))
        .zip(rows_mut(ou.data, ou.stride, cw, ch))
        .zip(rows_mut(ov.data, ov.stride, cw, ch))
    {
        for (((((p0, p1), ya), yb), uo), vo) in r0
            .chunks_exact(6)
            .zip(r1.chunks_exact(6))
            .zip(y0.chunks_exact_mut(2))
            .zip(y1.chunks_exact_mut(2))
            .zip(ur.iter_mut())
            .zip(vr.iter_mut())
        {
            let (uu, vv) = rgb2x2_to_yuv(&c, p0, p1, ya, yb);
            *uo = uu;
            *vo = vv;
        }
    }
    Ok(())
}

/// Converts packed RGB24 to NV12 (limited range, matrix `m`).
///
/// `w` and `h` must be even; `rgb` holds `h` rows of `3 * w` bytes. Each
/// chroma pair is computed from the average colour of its 2x2 block.
pub fn rgb24_to_nv12(
    rgb: Plane<'_>,
    w: usize,
    h: usize,
    m: Matrix,
    oy: PlaneMut<'_>,
    ouv: PlaneMut<'_>,
) -> Result<(), PixelError> {
    check_even("RGB frame", w, h)?;
    let ch = h / 2;
    rgb.check("src RGB", 3 * w, h)?;
    oy.check("dst Y", w, h)?;
    ouv.check("dst UV", w, ch)?;
    if w == 0 || h == 0 {
        return Ok(());
    }
    let c = rgb_to_yuv(m);
    for (((r0, r1), (y0, y1)), cr) in row_pairs(rgb.data, rgb.stride, 3 * w, ch)
        .zip(row_pairs_mut(oy.data, oy.stride, w, ch))
        .zip(rows_mut(ouv.data, ouv.stride, w, ch))
    {
        for ((((p0, p1), ya), yb), co) in r0
            .chunks_exact(6)
            .zip(r1.chunks_exact(6))
            .zip(y0.chunks_exact_mut(2))
            .zip(y1.chunks_exact_mut(2))
            .zip(cr.chunks_exact_mut(2))
        {
            let (uu, vv) = rgb2x2_to_yuv(&c, p0, p1, ya, yb);
            co[0] = uu;
            co[1] = vv;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixel::testutil::{Buf, XorShift};

    const MATRICES: [Matrix; 2] = [Matrix::Bt601, Matrix::Bt709];

    // ---- f64 reference implementation ----

    fn ref_yuv_to_rgb(m: Matrix, y: u8, u: u8, v: u8) -> [f64; 3] {
        let (kr, kb) = m.kr_kb();
        let kg = 1.0 - kr - kb;
        let yf = (f64::from(y) - 16.0) * 255.0 / 219.0;
        let pb = (f64::from(u) - 128.0) * 255.0 / 224.0;
        let pr = (f64::from(v) - 128.0) * 255.0 / 224.0;
        let r = yf + 2.0 * (1.0 - kr) * pr;
        let b = yf + 2.0 * (1.0 - kb) * pb;
        let g = (yf - kr * r - kb * b) / kg;
        [r, g, b]
    }

    fn ref_rgb_to_yuv(m: Matrix, rgb: [f64; 3]) -> [f64; 3] {
        let (kr, kb) = m.kr_kb();
        let kg = 1.0 - kr - kb;
        let [r, g, b] = rgb;
        let yl = kr * r + kg * g + kb * b;
        let y = 16.0 + 219.0 / 255.0 * yl;
        let u = 128.0 + 224.0 / 255.0 * (b - yl) / (2.0 * (1.0 - kb));
        let v = 128.0 + 224.0 / 255.0 * (r - yl) / (2.0 * (1.0 - kr));
        [y, u, v]
    }

    fn round_clamp(x: f64) -> u8 {
        x.round().clamp(0.0, 255.0) as u8
    }

    fn diff(a: u8, b: u8) -> u8 {
        a.abs_diff(b)
    }

    struct I420 {
        y: Buf,
        u: Buf,
        v: Buf,
    }

    fn random_i420(w: usize, h: usize, pad: usize, rng: &mut XorShift) -> I420 {
        I420 {
            y: Buf::random(w, h, pad, rng),
            u: Buf::random(w / 2, h / 2, pad, rng),
            v: Buf::random(w / 2, h / 2, pad + 1, rng),
        }
    }

    fn check_rgb_against_ref(m: Matrix, w: usize, h: usize, f: &I420, out: &Buf) {
        let mut max = 0;
        for r in 0..h {
            for x in 0..w {
                let yy = f.y.at(x, r);
                let uu = f.u.at(x / 2, r / 2);
                let vv = f.v.at(x / 2, r / 2);
                let want = ref_yuv_to_rgb(m, yy, uu, vv);
                for (c, &wc) in want.iter().enumerate() {
                    let got = out.at(3 * x + c, r);
                    let d = diff(got, round_clamp(wc));
                    max = max.max(d);
                    assert!(
                        d <= 1,
                        "{m:?} pixel ({x},{r}) ch {c}: got {got} want {wc:.3} (yuv {yy},{uu},{vv})"
                    );
                }
            }
        }
        assert!(max <= 1);
    }

    #[test]
    fn i420_to_rgb_matches_reference_with_padding() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for m in MATRICES {
            let (w, h) = (38, 22);
            let f = random_i420(w, h, 5, &mut rng);
            let mut out = Buf::filled(3 * w, h, 7, 0);
            // Put sentinels in padding (Buf::filled only fills visible bytes).
            i420_to_rgb24(
                f.y.plane(),
                f.u.plane(),
                f.v.plane(),
                w,
                h,
                m,
                out.plane_mut(),
            )
            .unwrap();
            out.assert_padding_intact();
            check_rgb_against_ref(m, w, h, &f, &out);
        }
    }

    #[test]
    fn nv12_to_rgb_matches_reference_and_i420_path() {
        let mut rng = XorShift(0xfeed_beef_0bad_cafe);
        for m in MATRICES {
            let (w, h) = (30, 14);
            let f = random_i420(w, h, 3, &mut rng);
            let uv = Buf::new(w, h / 2, 2, |x, r| {
                if x % 2 == 0 {
                    f.u.at(x / 2, r)
                } else {
                    f.v.at(x / 2, r)
                }
            });
            let mut out = Buf::filled(3 * w, h, 4, 0);
            nv12_to_rgb24(f.y.plane(), uv.plane(), w, h, m, out.plane_mut()).unwrap();
            out.assert_padding_intact();
            check_rgb_against_ref(m, w, h, &f, &out);
            let mut out2 = Buf::filled(3 * w, h, 0, 0);
            i420_to_rgb24(
                f.y.plane(),
                f.u.plane(),
                f.v.plane(),
                w,
                h,
                m,
                out2.plane_mut(),
            )
            .unwrap();
            assert_eq!(out.visible(), out2.visible());
        }
    }

    #[test]
    fn yuv_to_rgb_exhaustive_grid_within_one() {
        // Every (Y, U, V) on a step-3 grid, including out-of-range codes that
        // must clamp.
        for m in MATRICES {
            let c = yuv_to_rgb(m);
            let mut out = [0u8; 6];
            let (mut total, mut off_by_one) = (0u32, 0u32);
            for y in (0..=255u16).step_by(3) {
                for u in (0..=255u16).step_by(3) {
                    for v in (0..=255u16).step_by(3) {
                        let yy = [y as u8, (255 - y) as u8];
                        yuv2_to_rgb(&c, &yy, u as u8, v as u8, &mut out);
                        for (i, &ys) in yy.iter().enumerate() {
                            let want = ref_yuv_to_rgb(m, ys, u as u8, v as u8);
                            for ch in 0..3 {
                                let d = diff(out[3 * i + ch], round_clamp(want[ch]));
                                assert!(d <= 1, "{m:?} yuv {ys},{u},{v}");
                                total += 1;
                                off_by_one += u32::from(d);
                            }
                        }
                    }
                }
            }
            // Fixed-point rounding is essentially exact: off-by-one only
            // where the real value sits within ~1e-4 of a .5 boundary.
            assert!(
                off_by_one * 1000 < total,
                "{m:?}: {off_by_one} of {total} samples off by one"
            );
        }
    }

    fn check_yuv_against_ref(
        m: Matrix,
        w: usize,
        h: usize,
        rgb: &Buf,
        y: &Buf,
        u: &[u8],
        v: &[u8],
    ) {
        let mut off_by_one = 0;
        for r in 0..h {
            for x in 0..w {
                let p = [0, 1, 2].map(|c| f64::from(rgb.at(3 * x + c, r)));
                let want = ref_rgb_to_yuv(m, p)[0];
                let got = y.at(x, r);
                let d = diff(got, round_clamp(want));
                assert!(d <= 1, "{m:?} Y({x},{r}) got {got} want {want:.3}");
                off_by_one += usize::from(d);
            }
        }
        let cw = w / 2;
        for cr in 0..h / 2 {
            for cx in 0..cw {
                let mut avg = [0.0; 3];
                for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                    for (c, a) in avg.iter_mut().enumerate() {
                        *a += f64::from(rgb.at(3 * (2 * cx + dx) + c, 2 * cr + dy)) / 4.0;
                    }
                }
                let want = ref_rgb_to_yuv(m, avg);
                let (gu, gv) = (u[cr * cw + cx], v[cr * cw + cx]);
                assert!(
                    diff(gu, round_clamp(want[1])) <= 1,
                    "U({cx},{cr}) {gu} vs {:.3}",
                    want[1]
                );
                assert!(
                    diff(gv, round_clamp(want[2])) <= 1,
                    "V({cx},{cr}) {gv} vs {:.3}",
                    want[2]
                );
                off_by_one += usize::from(diff(gu, round_clamp(want[1])));
                off_by_one += usize::from(diff(gv, round_clamp(want[2])));
            }
        }
        // Rounding is essentially exact; allow a stray boundary case.
        assert!(
            off_by_one * 100 < w * h,
            "{m:?}: {off_by_one} samples off by one"
        );
    }

    #[test]
    fn rgb_to_i420_matches_reference_with_padding() {
        let mut rng = XorShift(0x0123_4567_89ab_cdef);
        for m in MATRICES {
            let (w, h) = (34, 18);
            let rgb = Buf::random(3 * w, h, 5, &mut rng);
            let mut y = Buf::filled(w, h, 3, 0);
            let mut u = Buf::filled(w / 2, h / 2, 1, 0);
            let mut v = Buf::filled(w / 2, h / 2, 6, 0);
            rgb24_to_i420(
                rgb.plane(),
                w,
                h,
                m,
                y.plane_mut(),
                u.plane_mut(),
                v.plane_mut(),
            )
            .unwrap();
            y.assert_padding_intact();
            u.assert_padding_intact();
            v.assert_padding_intact();
            check_yuv_against_ref(m, w, h, &rgb, &y, &u.visible(), &v.visible());
        }
    }

    #[test]
    fn rgb_to_nv12_matches_reference_and_i420_path() {
        let mut rng = XorShift(0x5555_aaaa_1234_4321);
        for m in MATRICES {
            let (w, h) = (26, 10);
            let rgb = Buf::random(3 * w, h, 0, &mut rng);
            let mut y = Buf::filled(w, h, 2, 0);
            let mut uv = Buf::filled(w, h / 2, 3, 0);
            rgb24_to_nv12(rgb.plane(), w, h, m, y.plane_mut(), uv.plane_mut()).unwrap();
            y.assert_padding_intact();
            uv.assert_padding_intact();
            let uvv = uv.visible();
            let u: Vec<u8> = uvv.iter().step_by(2).copied().collect();
            let v: Vec<u8> = uvv.iter().skip(1).step_by(2).copied().collect();
            check_yuv_against_ref(m, w, h, &rgb, &y, &u, &v);
        }
    }

    #[test]
    fn known_colours() {
        let colour = |m: Matrix, rgb: [u8; 3]| -> [u8; 3] {
            let px: Vec<u8> = rgb.iter().copied().cycle().take(12).collect();
            let (mut y, mut u, mut v) = ([0u8; 4], [0u8; 1], [0u8; 1]);
            rgb24_to_i420(
                Plane::new(&px, 6),
                2,
                2,
                m,
                PlaneMut::new(&mut y, 2),
                PlaneMut::new(&mut u, 1),
                PlaneMut::new(&mut v, 1),
            )
            .unwrap();
            assert!(y.iter().all(|&s| s == y[0]));
            [y[0], u[0], v[0]]
        };
        for m in MATRICES {
            assert_eq!(colour(m, [255, 255, 255]), [235, 128, 128], "{m:?} white");
            assert_eq!(colour(m, [0, 0, 0]), [16, 128, 128], "{m:?} black");
            assert_eq!(colour(m, [128, 128, 128]), [126, 128, 128], "{m:?} grey");
        }
        // Textbook BT.601 red: Y 81.48, Cb 90.22, Cr 240.
        let red = colour(Matrix::Bt601, [255, 0, 0]);
        for (got, want) in red.iter().zip([81u8, 90, 240]) {
            assert!(diff(*got, want) <= 1, "601 red {red:?}");
        }
        // BT.709 red: Y 62.5, Cb 101.6, Cr 240.
        let red = colour(Matrix::Bt709, [255, 0, 0]);
        for (got, want) in red.iter().zip([63u8, 102, 240]) {
            assert!(diff(*got, want) <= 1, "709 red {red:?}");
        }

        // And the inverse direction for the same anchors.
        let to_rgb = |m: Matrix, yuv: [u8; 3]| -> [u8; 3] {
            let y = [yuv[0]; 4];
            let mut out = [0u8; 12];
            i420_to_rgb24(
                Plane::new(&y, 2),
                Plane::new(&yuv[1..2], 1),
                Plane::new(&yuv[2..3], 1),
                2,
                2,
                m,
                PlaneMut::new(&mut out, 6),
            )
            .unwrap();
            [out[0], out[1], out[2]]
        };
        for m in MATRICES {
            assert_eq!(to_rgb(m, [235, 128, 128]), [255, 255, 255]);
            assert_eq!(to_rgb(m, [16, 128, 128]), [0, 0, 0]);
            // Super-white / super-black clamp instead of wrapping.
            assert_eq!(to_rgb(m, [255, 128, 128]), [255, 255, 255]);
            assert_eq!(to_rgb(m, [0, 128, 128]), [0, 0, 0]);
        }
        let r = to_rgb(Matrix::Bt601, [81, 90, 240]);
        assert!(r[0] >= 253 && r[1] <= 2 && r[2] <= 2, "{r:?}");
    }

    #[test]
    fn rgb_round_trip_on_smooth_image() {
        // Smooth gradients inside the limited-range gamut; the only losses
        // are quantisation and 2x2 chroma averaging, so the error is small.
        for m in MATRICES {
            let (w, h) = (64, 48);
            let rgb = Buf::new(3 * w, h, 4, |xb, r| {
                let x = xb / 3;
                match xb % 3 {
                    0 => (40 + 2 * x + r) as u8,
                    1 => (200 - 2 * r - x / 2) as u8,
                    _ => (60 + x + 2 * r) as u8,
                }
            });
            let mut y = Buf::filled(w, h, 0, 0);
            let mut u = Buf::filled(w / 2, h / 2, 0, 0);
            let mut v = Buf::filled(w / 2, h / 2, 0, 0);
            rgb24_to_i420(
                rgb.plane(),
                w,
                h,
                m,
                y.plane_mut(),
                u.plane_mut(),
                v.plane_mut(),
            )
            .unwrap();
            let mut back = Buf::filled(3 * w, h, 2, 0);
            i420_to_rgb24(y.plane(), u.plane(), v.plane(), w, h, m, back.plane_mut()).unwrap();
            back.assert_padding_intact();
            let mut max = 0;
            for r in 0..h {
                for xb in 0..3 * w {
                    max = max.max(diff(rgb.at(xb, r), back.at(xb, r)));
                }
            }
            // Tolerance: 2 LSB quantisation + up to ~3 LSB of local gradient
            // lost to chroma averaging over a 2x2 block.
            assert!(max <= 5, "{m:?} round trip max error {max}");
        }
    }

    #[test]
    fn rgb_round_trip_flat_blocks_within_two() {
        // Where every 2x2 block is a single colour (no chroma averaging
        // loss), RGB -> I420 -> RGB is within 2 of the original.
        let mut rng = XorShift(77);
        for m in MATRICES {
            let (w, h) = (32, 32);
            let mut colours = vec![[0u8; 3]; (w / 2) * (h / 2)];
            for c in colours.iter_mut() {
                // Keep away from the gamut edges where clamping dominates.
                *c = [0; 3].map(|_| 30 + rng.below(196) as u8);
            }
            let rgb = Buf::new(3 * w, h, 0, |xb, r| {
                colours[(r / 2) * (w / 2) + xb / 6][xb % 3]
            });
            let mut y = Buf::filled(w, h, 0, 0);
            let mut uv = Buf::filled(w, h / 2, 0, 0);
            rgb24_to_nv12(rgb.plane(), w, h, m, y.plane_mut(), uv.plane_mut()).unwrap();
            let mut back = Buf::filled(3 * w, h, 0, 0);
            nv12_to_rgb24(y.plane(), uv.plane(), w, h, m, back.plane_mut()).unwrap();
            for r in 0..h {
                for xb in 0..3 * w {
                    let d = diff(rgb.at(xb, r), back.at(xb, r));
                    assert!(
                        d <= 2,
                        "{m:?} ({xb},{r}) {} vs {}",
                        rgb.at(xb, r),
                        back.at(xb, r)
                    );
                }
            }
        }
    }

    #[test]
    fn nv12_i420_round_trip_is_exact_and_respects_padding() {
        let mut rng = XorShift(99);
        let (w, h) = (20, 12);
        let y = Buf::random(w, h, 3, &mut rng);
        let uv = Buf::random(w, h / 2, 5, &mut rng);
        let mut y2 = Buf::filled(w, h, 1, 0);
        let mut u = Buf::filled(w / 2, h / 2, 2, 0);
        let mut v = Buf::filled(w / 2, h / 2, 0, 0);
        nv12_to_i420(
            y.plane(),
            uv.plane(),
            w,
            h,
            y2.plane_mut(),
            u.plane_mut(),
            v.plane_mut(),
        )
        .unwrap();
        y2.assert_padding_intact();
        u.assert_padding_intact();
        assert_eq!(u.at(3, 2), uv.at(6, 2));
        assert_eq!(v.at(3, 2), uv.at(7, 2));
        let mut y3 = Buf::filled(w, h, 4, 0);
        let mut uv3 = Buf::filled(w, h / 2, 1, 0);
        i420_to_nv12(
            y2.plane(),
            u.plane(),
            v.plane(),
            w,
            h,
            y3.plane_mut(),
            uv3.plane_mut(),
        )
        .unwrap();
        y3.assert_padding_intact();
        uv3.assert_padding_intact();
        assert_eq!(y3.visible(), y.visible());
        assert_eq!(uv3.visible(), uv.visible());
    }

    #[test]
    fn copy_plane_honours_strides() {
        let mut rng = XorShift(5);
        let src = Buf::random(13, 7, 9, &mut rng);
        let mut dst = Buf::filled(13, 7, 4, 0);
        copy_plane(src.plane(), dst.plane_mut(), 13, 7).unwrap();
        dst.assert_padding_intact();
        assert_eq!(src.visible(), dst.visible());
        // Tight (stride == width) fast path.
        let src = Buf::random(8, 4, 0, &mut rng);
        let mut dst = vec![0u8; 32];
        copy_plane(src.plane(), PlaneMut::new(&mut dst, 8), 8, 4).unwrap();
        assert_eq!(src.visible(), dst);
        // Errors name the plane.
        let e = copy_plane(src.plane(), PlaneMut::new(&mut dst[..31], 8), 8, 4).unwrap_err();
        assert!(e.to_string().contains("dst"), "{e}");
        let e = copy_plane(Plane::new(&[0; 10], 4), PlaneMut::new(&mut dst, 8), 8, 1).unwrap_err();
        assert!(
            matches!(e, PixelError::StrideTooSmall { plane: "src", .. }),
            "{e}"
        );
    }

    #[test]
    fn odd_dimensions_are_rejected() {
        let y = [0u8; 64];
        let c = [0u8; 64];
        let mut o = [0u8; 256];
        let e = i420_to_rgb24(
            Plane::new(&y, 8),
            Plane::new(&c, 4),
            Plane::new(&c, 4),
            7,
            4,
            Matrix::Bt601,
            PlaneMut::new(&mut o, 24),
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PixelError::OddDimensions {
                width: 7,
                height: 4,
                ..
            }
        ));
        assert!(e.to_string().contains("7x4"), "{e}");
        let e = nv12_to_rgb24(
            Plane::new(&y, 8),
            Plane::new(&c, 8),
            8,
            5,
            Matrix::Bt709,
            PlaneMut::new(&mut o, 24),
        )
        .unwrap_err();
        assert!(matches!(e, PixelError::OddDimensions { height: 5, .. }));
        let (mut a, mut b, mut d) = ([0u8; 64], [0u8; 16], [0u8; 16]);
        let e = rgb24_to_i420(
            Plane::new(&o, 9),
            3,
            2,
            Matrix::Bt601,
            PlaneMut::new(&mut a, 3),
            PlaneMut::new(&mut b, 2),
            PlaneMut::new(&mut d, 2),
        )
        .unwrap_err();
        assert!(e.to_string().contains("RGB frame"), "{e}");
        // Output untouched on error.
        assert!(a.iter().all(|&x| x == 0));
    }

    #[test]
    fn short_buffers_name_the_plane() {
        let (w, h) = (16, 8);
        let y = vec![0u8; w * h];
        let u = vec![0u8; w * h / 4];
        let mut oy = vec![0u8; w * h];
        let mut ouv = vec![0u8; w * h / 2];
        // Short source V plane.
        let e = i420_to_nv12(
            Plane::new(&y, w),
            Plane::new(&u, w / 2),
            Plane::new(&u[..w * h / 4 - 1], w / 2),
            w,
            h,
            PlaneMut::new(&mut oy, w),
            PlaneMut::new(&mut ouv, w),
        )
        .unwrap_err();
        assert!(
            matches!(e, PixelError::BufferTooSmall { plane: "src V", .. }),
            "{e}"
        );
        assert!(e.to_string().starts_with("src V plane"), "{e}");
        // Short destination UV plane.
        let e = i420_to_nv12(
            Plane::new(&y, w),
            Plane::new(&u, w / 2),
            Plane::new(&u, w / 2),
            w,
            h,
            PlaneMut::new(&mut oy, w),
            PlaneMut::new(&mut ouv[..w * h / 2 - 1], w),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                PixelError::BufferTooSmall {
                    plane: "dst UV",
                    ..
                }
            ),
            "{e}"
        );
        // RGB output stride narrower than 3 * w.
        let mut rgb = vec![0u8; 3 * w * h];
        let e = nv12_to_rgb24(
            Plane::new(&y, w),
            Plane::new(&y[..w * h / 2], w),
            w,
            h,
            Matrix::Bt601,
            PlaneMut::new(&mut rgb, 3 * w - 1),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                PixelError::StrideTooSmall {
                    plane: "dst RGB",
                    ..
                }
            ),
            "{e}"
        );
        // Short source RGB.
        let e = rgb24_to_nv12(
            Plane::new(&rgb[..3 * w * h - 1], 3 * w),
            w,
            h,
            Matrix::Bt601,
            PlaneMut::new(&mut oy, w),
            PlaneMut::new(&mut ouv, w),
        )
        .unwrap_err();
        assert!(e.to_string().contains("src RGB"), "{e}");
        // Short luma for nv12_to_i420.
        let (mut ou, mut ov) = (vec![0u8; 32], vec![0u8; 32]);
        let e = nv12_to_i420(
            Plane::new(&y[..10], w),
            Plane::new(&y, w),
            w,
            h,
            PlaneMut::new(&mut oy, w),
            PlaneMut::new(&mut ou, w / 2),
            PlaneMut::new(&mut ov, w / 2),
        )
        .unwrap_err();
        assert!(
            matches!(e, PixelError::BufferTooSmall { plane: "src Y", .. }),
            "{e}"
        );
    }

    #[test]
    fn empty_frames_are_noops() {
        let mut o: [u8; 0] = [];
        i420_to_rgb24(
            Plane::new(&[], 0),
            Plane::new(&[], 0),
            Plane::new(&[], 0),
            0,
            0,
            Matrix::Bt601,
            PlaneMut::new(&mut o, 0),
        )
        .unwrap();
        let mut oy = [0u8; 0];
        let mut ouv = [0u8; 0];
        rgb24_to_nv12(
            Plane::new(&[], 0),
            0,
            4,
            Matrix::Bt709,
            PlaneMut::new(&mut oy, 0),
            PlaneMut::new(&mut ouv, 0),
        )
        .unwrap();
    }

    #[test]
    fn coefficients_are_consistent() {
        for m in MATRICES {
            let c = rgb_to_yuv(m);
            assert_eq!(c.ur + c.ug + c.ub, 0);
            assert_eq!(c.vr + c.vg + c.vb, 0);
            let (kr, kb) = m.kr_kb();
            let one = f64::from(1u32 << SHIFT);
            assert!((f64::from(c.yg) / one - (1.0 - kr - kb) * 219.0 / 255.0).abs() < 2.0 / one);
            let d = yuv_to_rgb(m);
            assert!((f64::from(d.y) / one - 255.0 / 219.0).abs() < 1.0 / one);
        }
    }
}
