//! Plane resizing (bilinear / box filter) for YUV frames.
//!
//! Cameras deliver one resolution, but the models want a fixed input size
//! and the recording / streaming outputs may want others. Scaling in YUV
//! before colour conversion is cheaper than scaling RGB, so this module
//! resizes individual planes and whole I420 / NV12 frames in place of
//! libyuv or swscale, with no allocation.
//!
//! Filter choice, made independently per axis:
//! * **Bilinear** (2 taps, 8-bit weights) when upscaling or downscaling by
//!   less than 2x. Sample positions are pixel-centre aligned
//!   (`src = (dst + 0.5) * s / d - 0.5`, clamped at the edges), so identity
//!   along an axis is exact and a 2x reduction averages pixel pairs.
//! * **Box** (area average over the integer source span
//!   `[i * s / d, (i + 1) * s / d)`) when downscaling by 2x or more, which
//!   avoids the aliasing a 2-tap filter would produce.
//!
//! Same-size scaling is a plain copy. Chroma planes of 4:2:0 frames are
//! scaled as independent planes with the same centre-aligned mapping; the
//! resulting sub-pixel siting shift is negligible for analytics use.

use super::convert::copy_rows;
use super::{PixelError, Plane, PlaneMut, check_even, rows_mut};

/// Fractional bits of the source-position accumulator.
const POS_BITS: u32 = 32;
/// Bits of the bilinear interpolation weights.
const W_BITS: u32 = 8;
const W_ONE: u32 = 1 << W_BITS;

/// How one output coordinate maps onto the source along one axis.
#[derive(Clone, Copy, Debug)]
struct Axis {
    /// Source length in pixels (non-zero).
    src: usize,
    /// Destination length in pixels (non-zero).
    dst: usize,
    /// Source step per destination pixel, `POS_BITS` fixed point.
    step: i64,
    /// Source position of destination pixel 0, `POS_BITS` fixed point.
    start: i64,
    /// Use an area average instead of linear interpolation.
    boxed: bool,
}

/// Source taps for one output coordinate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Taps {
    /// `(s0 * (W_ONE - f) + s1 * f) / W_ONE`.
    Linear { i0: usize, i1: usize, f: u32 },
    /// Mean of source pixels `start..end`.
    Box { start: usize, end: usize },
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let step = ((src as i64) << POS_BITS) / dst as i64;
        Axis {
            src,
            dst,
            step,
            start: step / 2 - (1i64 << (POS_BITS - 1)),
            boxed: src >= dst.saturating_mul(2),
        }
    }

    /// Linear taps for destination index `i`.
    #[inline(always)]
    fn linear(&self, i: usize) -> (usize, usize, u32) {
        let pos = self.start + i as i64 * self.step;
        if pos <= 0 {
            return (0, 0, 0);
        }
        let i0 = (pos >> POS_BITS) as usize;
        if i0 + 1 >= self.src {
            let last = self.src - 1;
            return (last, last, 0);
        }
        let f = ((pos >> (POS_BITS - W_BITS)) as u32) & (W_ONE - 1);
        (i0, i0 + 1, f)
    }

    /// Taps for destination index `i`, honouring the axis' filter choice.
    #[inline]
    fn taps(&self, i: usize) -> Taps {
        if self.boxed {
            let s = self.src as u64;
            let d = self.dst as u64;
            let start = (i as u64 * s / d) as usize;
            let end = ((i as u64 + 1) * s / d) as usize;
            Taps::Box {
                start,
                end: end.max(start + 1),
            }
        } else {
            let (i0, i1, f) = self.linear(i);
            Taps::Linear { i0, i1, f }
        }
    }
}

impl Taps {
    /// Sum of the weights of [`Taps::for_each`].
    #[inline(always)]
    fn total(&self) -> u64 {
        match *self {
            Taps::Linear { .. } => u64::from(W_ONE),
            Taps::Box { start, end } => (end - start) as u64,
        }
    }

    /// Calls `f(index, weight)` for each tap with non-zero weight.
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(usize, u64)) {
        match *self {
            Taps::Linear { i0, i1, f: w } => {
                f(i0, u64::from(W_ONE - w));
                if w != 0 {
                    f(i1, u64::from(w));
                }
            }
            Taps::Box { start, end } => (start..end).for_each(|i| f(i, 1)),
        }
    }
}

/// Validates one plane pair for a scale of `C`-byte pixels.
#[allow(clippy::too_many_arguments)]
fn check_scale<const C: usize>(
    src: &Plane<'_>,
    sw: usize,
    sh: usize,
    dst: &PlaneMut<'_>,
    dw: usize,
    dh: usize,
    sname: &'static str,
    dname: &'static str,
) -> Result<(), PixelError> {
    src.check(sname, sw.saturating_mul(C), sh)?;
    dst.check(dname, dw.saturating_mul(C), dh)?;
    if dw != 0 && dh != 0 && (sw == 0 || sh == 0) {
        return Err(PixelError::EmptySource {
            plane: sname,
            width: sw,
            height: sh,
        });
    }
    Ok(())
}

/// Scales a validated plane of `C`-byte pixels.
fn scale_unchecked<const C: usize>(
    src: Plane<'_>,
    sw: usize,
    sh: usize,
    dst: PlaneMut<'_>,
    dw: usize,
    dh: usize,
) {
    if dw == 0 || dh == 0 {
        return;
    }
    if sw == dw && sh == dh {
        copy_rows(src, dst, sw * C, sh);
        return;
    }
    let ax = Axis::new(sw, dw);
    let ay = Axis::new(sh, dh);
    if ax.boxed || ay.boxed {
        scale_general::<C>(src, sw, ax, ay, dst, dw, dh);
    } else {
        scale_bilinear::<C>(src, sw, ax, ay, dst, dw, dh);
    }
}

/// Bilinear on both axes: fixed 8-bit weights, result normalised by shift. Separable: each
/// output row first blends its two source rows (once per distinct row pair, which upscaling
/// reuses across output rows), then interpolates along the row with horizontal taps computed
/// once per call. The integer sums equal the direct 2×2 formula exactly. Scratch lives in a
/// per-thread buffer, so the frame path stops allocating once it has seen its widest row.
fn scale_bilinear<const C: usize>(
    src: Plane<'_>,
    sw: usize,
    ax: Axis,
    ay: Axis,
    dst: PlaneMut<'_>,
    dw: usize,
    dh: usize,
) {
    type Scratch = (Vec<(u32, u32, u32)>, Vec<u32>);
    thread_local! {
        static SCRATCH: std::cell::RefCell<Scratch> =
            const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
    }
    SCRATCH.with_borrow_mut(|(taps, vrow)| {
        taps.clear();
        taps.extend((0..dw).map(|dx| {
            let (x0, x1, f) = ax.linear(dx);
            ((x0 * C) as u32, (x1 * C) as u32, f)
        }));
        let row_bytes = sw * C;
        vrow.clear();
        vrow.resize(row_bytes, 0);
        let row = |i: usize| &src.data[i * src.stride..i * src.stride + row_bytes];
        let mut blended = None;
        for (dy, out) in rows_mut(dst.data, dst.stride, dw * C, dh).enumerate() {
            let (y0, y1, fy) = ay.linear(dy);
            if blended != Some((y0, y1, fy)) {
                let (r0, r1) = (row(y0), row(y1));
                let (wy0, wy1) = (W_ONE - fy, fy);
                for ((v, &a), &b) in vrow.iter_mut().zip(r0).zip(r1) {
                    *v = u32::from(a) * wy0 + u32::from(b) * wy1;
                }
                blended = Some((y0, y1, fy));
            }
            for (px, &(x0, x1, fx)) in out.chunks_exact_mut(C).zip(taps.iter()) {
                let (x0, x1) = (x0 as usize, x1 as usize);
                let (wx0, wx1) = (W_ONE - fx, fx);
                for (c, o) in px.iter_mut().enumerate() {
                    let v = vrow[x0 + c] * wx0 + vrow[x1 + c] * wx1;
                    *o = ((v + (1 << (2 * W_BITS - 1))) >> (2 * W_BITS)) as u8;
                }
            }
        }
    });
}

/// Any mix of box / linear taps; normalised by division.
fn scale_general<const C: usize>(
    src: Plane<'_>,
    sw: usize,
    ax: Axis,
    ay: Axis,
    dst: PlaneMut<'_>,
    dw: usize,
    dh: usize,
) {
    let row_bytes = sw * C;
    for (dy, out) in rows_mut(dst.data, dst.stride, dw * C, dh).enumerate() {
        let ty = ay.taps(dy);
        for (dx, px) in out.chunks_exact_mut(C).enumerate() {
            let tx = ax.taps(dx);
            let mut acc = [0u64; C];
            ty.for_each(|sy, wy| {
                let r = &src.data[sy * src.stride..sy * src.stride + row_bytes];
                let mut h = [0u64; C];
                tx.for_each(|sx, wx| {
                    for (c, hc) in h.iter_mut().enumerate() {
                        *hc += wx * u64::from(r[sx * C + c]);
                    }
                });
                for (a, hc) in acc.iter_mut().zip(h) {
                    *a += wy * hc;
                }
            });
            let total = tx.total() * ty.total();
            for (o, a) in px.iter_mut().zip(acc) {
                *o = ((a + total / 2) / total) as u8;
            }
        }
    }
}

/// Scales a single-byte-per-pixel plane (e.g. luma) from `sw`x`sh` to
/// `dw`x`dh`.
///
/// Any ratio is allowed. A zero-sized destination is a no-op; a zero-sized
/// source with a non-empty destination is [`PixelError::EmptySource`].
pub fn scale_plane(
    src: Plane<'_>,
    sw: usize,
    sh: usize,
    dst: PlaneMut<'_>,
    dw: usize,
    dh: usize,
) -> Result<(), PixelError> {
    check_scale::<1>(&src, sw, sh, &dst, dw, dh, "src", "dst")?;
    scale_unchecked::<1>(src, sw, sh, dst, dw, dh);
    Ok(())
}

/// Scales an interleaved two-byte-per-pixel plane (NV12 CbCr) from
/// `sw`x`sh` to `dw`x`dh`. Widths are in chroma *pixels*, so each row
/// holds `2 * sw` (resp. `2 * dw`) bytes. Channels are filtered
/// independently.
pub fn scale_plane_uv(
    src: Plane<'_>,
    sw: usize,
    sh: usize,
    dst: PlaneMut<'_>,
    dw: usize,
    dh: usize,
) -> Result<(), PixelError> {
    check_scale::<2>(&src, sw, sh, &dst, dw, dh, "src UV", "dst UV")?;
    scale_unchecked::<2>(src, sw, sh, dst, dw, dh);
    Ok(())
}

/// Scales an I420 frame `(Y, U, V)` from `sw`x`sh` to `dw`x`dh` luma
/// pixels. All four dimensions must be even. Every plane is validated
/// before anything is written.
pub fn scale_i420(
    src: (Plane<'_>, Plane<'_>, Plane<'_>),
    sw: usize,
    sh: usize,
    dst: (PlaneMut<'_>, PlaneMut<'_>, PlaneMut<'_>),
    dw: usize,
    dh: usize,
) -> Result<(), PixelError> {
    check_even("src frame", sw, sh)?;
    check_even("dst frame", dw, dh)?;
    let (sy, su, sv) = src;
    let (oy, ou, ov) = dst;
    let (scw, sch, dcw, dch) = (sw / 2, sh / 2, dw / 2, dh / 2);
    check_scale::<1>(&sy, sw, sh, &oy, dw, dh, "src Y", "dst Y")?;
    check_scale::<1>(&su, scw, sch, &ou, dcw, dch, "src U", "dst U")?;
    check_scale::<1>(&sv, scw, sch, &ov, dcw, dch, "src V", "dst V")?;
    scale_unchecked::<1>(sy, sw, sh, oy, dw, dh);
    scale_unchecked::<1>(su, scw, sch, ou, dcw, dch);
    scale_unchecked::<1>(sv, scw, sch, ov, dcw, dch);
    Ok(())
}

/// Scales an NV12 frame `(Y, UV)` from `sw`x`sh` to `dw`x`dh` luma pixels.
/// All four dimensions must be even. Both planes are validated before
/// anything is written.
pub fn scale_nv12(
    src: (Plane<'_>, Plane<'_>),
    sw: usize,
    sh: usize,
    dst: (PlaneMut<'_>, PlaneMut<'_>),
    dw: usize,
    dh: usize,
) -> Result<(), PixelError> {
    check_even("src frame", sw, sh)?;
    check_even("dst frame", dw, dh)?;
    let (sy, suv) = src;
    let (oy, ouv) = dst;
    let (scw, sch, dcw, dch) = (sw / 2, sh / 2, dw / 2, dh / 2);
    check_scale::<1>(&sy, sw, sh, &oy, dw, dh, "src Y", "dst Y")?;
    check_scale::<2>(&suv, scw, sch, &ouv, dcw, dch, "src UV", "dst UV")?;
    scale_unchecked::<1>(sy, sw, sh, oy, dw, dh);
    scale_unchecked::<2>(suv, scw, sch, ouv, dcw, dch);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixel::testutil::{Buf, XorShift};

    fn scale_buf(src: &Buf, sw: usize, sh: usize, dw: usize, dh: usize, pad: usize) -> Buf {
        let mut dst = Buf::filled(dw, dh, pad, 0);
        scale_plane(src.plane(), sw, sh, dst.plane_mut(), dw, dh).unwrap();
        dst.assert_padding_intact();
        dst
    }

    const SIZES: [(usize, usize); 12] = [
        (1, 1),
        (1, 7),
        (2, 2),
        (3, 5),
        (7, 3),
        (16, 9),
        (17, 31),
        (32, 32),
        (64, 2),
        (100, 75),
        (2, 64),
        (160, 120),
    ];

    #[test]
    fn constant_plane_stays_constant() {
        for &(sw, sh) in &SIZES {
            for &(dw, dh) in &SIZES {
                let src = Buf::filled(sw, sh, 3, 173);
                let dst = scale_buf(&src, sw, sh, dw, dh, 2);
                assert!(
                    dst.visible().iter().all(|&v| v == 173),
                    "{sw}x{sh} -> {dw}x{dh}"
                );
            }
        }
    }

    #[test]
    fn identity_is_exact_copy() {
        let mut rng = XorShift(3);
        for &(w, h) in &SIZES {
            let src = Buf::random(w, h, 5, &mut rng);
            let dst = scale_buf(&src, w, h, w, h, 3);
            assert_eq!(src.visible(), dst.visible());
        }
        // Horizontal identity, vertical scale of a column pattern: exact.
        let src = Buf::new(9, 4, 0, |x, _| (x * 20) as u8);
        let dst = scale_buf(&src, 9, 4, 9, 11, 0);
        for r in 0..11 {
            for x in 0..9 {
                assert_eq!(dst.at(x, r), (x * 20) as u8);
            }
        }
    }

    #[test]
    fn checkerboard_2x_down_is_mid_grey() {
        let src = Buf::new(64, 48, 4, |x, r| if (x + r) % 2 == 0 { 0 } else { 255 });
        let dst = scale_buf(&src, 64, 48, 32, 24, 3);
        assert!(
            dst.visible().iter().all(|&v| v == 128),
            "{:?}",
            dst.visible()
        );
        // 4x down (box path) too.
        let dst = scale_buf(&src, 64, 48, 16, 12, 0);
        assert!(dst.visible().iter().all(|&v| v == 128));
        // 2x down on the UV plane: each channel independently.
        let uv = Buf::new(2 * 32, 16, 2, |xb, r| {
            let x = xb / 2;
            if xb % 2 == 0 {
                if (x + r) % 2 == 0 { 0 } else { 255 }
            } else {
                77
            }
        });
        let mut out = Buf::filled(2 * 16, 8, 5, 0);
        scale_plane_uv(uv.plane(), 32, 16, out.plane_mut(), 16, 8).unwrap();
        out.assert_padding_intact();
        for (i, &v) in out.visible().iter().enumerate() {
            assert_eq!(v, if i % 2 == 0 { 128 } else { 77 });
        }
    }

    #[test]
    fn horizontal_gradient_stays_monotonic() {
        let src = Buf::new(50, 6, 1, |x, _| (x * 5) as u8);
        for dw in [1, 2, 3, 7, 24, 25, 26, 49, 50, 51, 99, 100, 333] {
            for dh in [1, 3, 6, 13] {
                let dst = scale_buf(&src, 50, 6, dw, dh, 2);
                for r in 0..dh {
                    for x in 1..dw {
                        assert!(
                            dst.at(x, r) >= dst.at(x - 1, r),
                            "50->{dw}: not monotonic at {x}"
                        );
                    }
                    // Rows are all identical since the source has no vertical
                    // variation.
                    assert_eq!(dst.at(dw - 1, r), dst.at(dw - 1, 0));
                }
                if dw > 1 {
                    assert!(dst.at(dw - 1, 0) > dst.at(0, 0));
                }
            }
        }
    }

    #[test]
    fn matches_float_bilinear_reference() {
        let mut rng = XorShift(11);
        let (sw, sh) = (23, 17);
        let src = Buf::random(sw, sh, 2, &mut rng);
        for (dw, dh) in [(31, 29), (40, 20), (13, 11), (23, 30)] {
            let dst = scale_buf(&src, sw, sh, dw, dh, 1);
            let map = |i: usize, s: usize, d: usize| -> (usize, usize, f64) {
                let p = ((i as f64 + 0.5) * s as f64 / d as f64 - 0.5).max(0.0);
                let i0 = (p.floor() as usize).min(s - 1);
                let i1 = (i0 + 1).min(s - 1);
                let f = if i0 + 1 >= s { 0.0 } else { p - i0 as f64 };
                (i0, i1, f)
            };
            for r in 0..dh {
                let (y0, y1, fy) = map(r, sh, dh);
                for x in 0..dw {
                    let (x0, x1, fx) = map(x, sw, dw);
                    let s = |x: usize, y: usize| f64::from(src.at(x, y));
                    let top = s(x0, y0) * (1.0 - fx) + s(x1, y0) * fx;
                    let bot = s(x0, y1) * (1.0 - fx) + s(x1, y1) * fx;
                    let want = top * (1.0 - fy) + bot * fy;
                    let got = f64::from(dst.at(x, r));
                    // 8-bit weights: up to ~1/256 * 255 per axis of error.
                    assert!(
                        (got - want).abs() <= 2.0,
                        "{dw}x{dh} ({x},{r}): {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn box_filter_is_area_average() {
        let mut rng = XorShift(13);
        let src = Buf::random(30, 20, 3, &mut rng);
        let dst = scale_buf(&src, 30, 20, 10, 5, 2);
        for r in 0..5 {
            for x in 0..10 {
                let mut sum = 0u32;
                for yy in 4 * r..4 * r + 4 {
                    for xx in 3 * x..3 * x + 3 {
                        sum += u32::from(src.at(xx, yy));
                    }
                }
                assert_eq!(u32::from(dst.at(x, r)), (sum + 6) / 12);
            }
        }
    }

    #[test]
    fn extreme_ratios_and_tiny_sizes_do_not_panic() {
        let mut rng = XorShift(17);
        let big = Buf::random(1000, 3, 0, &mut rng);
        let d = scale_buf(&big, 1000, 3, 1, 1, 0);
        let mean = big.visible().iter().map(|&v| u32::from(v)).sum::<u32>() as f64 / 3000.0;
        assert!((f64::from(d.at(0, 0)) - mean).abs() <= 1.0);
        scale_buf(&big, 1000, 3, 3, 500, 1);
        let one = Buf::filled(1, 1, 0, 9);
        let d = scale_buf(&one, 1, 1, 700, 3, 0);
        assert!(d.visible().iter().all(|&v| v == 9));
        scale_buf(&one, 1, 1, 1, 1, 0);
        let tall = Buf::random(1, 999, 2, &mut rng);
        scale_buf(&tall, 1, 999, 5, 2, 0);
        scale_buf(&tall, 1, 999, 2, 1999, 0);
        // Empty destination: no-op, even with an empty source.
        let mut empty: [u8; 0] = [];
        scale_plane(Plane::new(&[], 0), 0, 0, PlaneMut::new(&mut empty, 0), 0, 5).unwrap();
        // Empty source with real destination: error.
        let mut out = [0u8; 4];
        let e =
            scale_plane(Plane::new(&[], 0), 0, 3, PlaneMut::new(&mut out, 2), 2, 2).unwrap_err();
        assert!(matches!(e, PixelError::EmptySource { .. }), "{e}");
    }

    #[test]
    fn errors_name_the_plane() {
        let src = [0u8; 100];
        let mut dst = [0u8; 100];
        let e = scale_plane(
            Plane::new(&src, 10),
            10,
            10,
            PlaneMut::new(&mut dst, 9),
            9,
            12,
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("dst plane"), "{e}");
        let e = scale_plane_uv(Plane::new(&src, 10), 6, 5, PlaneMut::new(&mut dst, 4), 2, 2)
            .unwrap_err();
        assert!(
            matches!(
                e,
                PixelError::StrideTooSmall {
                    plane: "src UV",
                    ..
                }
            ),
            "{e}"
        );

        let (y, c) = (vec![0u8; 64 * 48], vec![0u8; 32 * 24]);
        let (mut oy, mut ou, mut ov) = (vec![0u8; 32 * 24], vec![0u8; 16 * 12], vec![0u8; 16 * 11]);
        let e = scale_i420(
            (Plane::new(&y, 64), Plane::new(&c, 32), Plane::new(&c, 32)),
            64,
            48,
            (
                PlaneMut::new(&mut oy, 32),
                PlaneMut::new(&mut ou, 16),
                PlaneMut::new(&mut ov, 16),
            ),
            32,
            24,
        )
        .unwrap_err();
        assert!(
            matches!(e, PixelError::BufferTooSmall { plane: "dst V", .. }),
            "{e}"
        );
        // Nothing was written before the error was detected.
        assert!(oy.iter().all(|&v| v == 0) && ou.iter().all(|&v| v == 0));
        let e = scale_i420(
            (Plane::new(&y, 64), Plane::new(&c, 32), Plane::new(&c, 32)),
            64,
            48,
            (
                PlaneMut::new(&mut oy, 32),
                PlaneMut::new(&mut ou, 16),
                PlaneMut::new(&mut ov, 16),
            ),
            31,
            24,
        )
        .unwrap_err();
        assert!(matches!(
            e,
            PixelError::OddDimensions {
                what: "dst frame",
                width: 31,
                ..
            }
        ));
        let mut ouv = vec![0u8; 10];
        let e = scale_nv12(
            (Plane::new(&y, 64), Plane::new(&c, 64)),
            64,
            48,
            (PlaneMut::new(&mut oy, 32), PlaneMut::new(&mut ouv, 32)),
            32,
            24,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("src UV") || e.to_string().contains("dst UV"),
            "{e}"
        );
        let e = scale_nv12(
            (Plane::new(&y, 64), Plane::new(&c, 64)),
            63,
            48,
            (PlaneMut::new(&mut oy, 32), PlaneMut::new(&mut ouv, 32)),
            32,
            24,
        )
        .unwrap_err();
        assert!(e.to_string().contains("src frame"), "{e}");
    }

    #[test]
    fn i420_and_nv12_frames_scale_consistently() {
        let mut rng = XorShift(23);
        let (sw, sh, dw, dh) = (40, 30, 26, 18);
        let y = Buf::random(sw, sh, 3, &mut rng);
        let u = Buf::random(sw / 2, sh / 2, 1, &mut rng);
        let v = Buf::random(sw / 2, sh / 2, 2, &mut rng);
        let uv = Buf::new(sw, sh / 2, 4, |xb, r| {
            if xb % 2 == 0 {
                u.at(xb / 2, r)
            } else {
                v.at(xb / 2, r)
            }
        });
        let mut oy = Buf::filled(dw, dh, 2, 0);
        let mut ou = Buf::filled(dw / 2, dh / 2, 3, 0);
        let mut ov = Buf::filled(dw / 2, dh / 2, 0, 0);
        scale_i420(
            (y.plane(), u.plane(), v.plane()),
            sw,
            sh,
            (oy.plane_mut(), ou.plane_mut(), ov.plane_mut()),
            dw,
            dh,
        )
        .unwrap();
        oy.assert_padding_intact();
        ou.assert_padding_intact();
        let mut ny = Buf::filled(dw, dh, 1, 0);
        let mut nuv = Buf::filled(dw, dh / 2, 5, 0);
        scale_nv12(
            (y.plane(), uv.plane()),
            sw,
            sh,
            (ny.plane_mut(), nuv.plane_mut()),
            dw,
            dh,
        )
        .unwrap();
        ny.assert_padding_intact();
        nuv.assert_padding_intact();
        assert_eq!(oy.visible(), ny.visible());
        for r in 0..dh / 2 {
            for x in 0..dw / 2 {
                assert_eq!(nuv.at(2 * x, r), ou.at(x, r));
                assert_eq!(nuv.at(2 * x + 1, r), ov.at(x, r));
            }
        }
    }
}
