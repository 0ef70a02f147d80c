//! Burning text (timestamps, camera names) into YUV 4:2:0 frames.
//!
//! Recorded evidence clips need a visible timestamp that survives
//! re-encoding and screenshots, so the "timestamp overlay" pipeline stage
//! draws it straight into the pixels of the decoded frame before encoding.
//! Text is rendered with the embedded 5x7 font ([`super::font`]) scaled by
//! an integer factor, white ([`TEXT_LUMA`]) on a solid dark box
//! ([`BOX_LUMA`]) with neutral chroma so it stays legible on any scene.
//!
//! Layout, in font pixels (each `scale` x `scale` frame pixels): one pixel
//! of padding on every side of the text, glyphs [`GLYPH_W`] wide with one
//! pixel of spacing after each (the last spacing doubles as the right-hand
//! padding). [`text_size`] returns the resulting box size.
//!
//! The box is placed with its top-left corner at `(x, y0)` and clipped to
//! the frame: text partly or wholly outside is cut, never an error.
//! Chroma is set to neutral for every 4:2:0 chroma sample that the clipped
//! box touches, so at an odd box edge the neutral chroma extends half a
//! chroma sample (one luma column / row) beyond the box; luma outside the
//! box is never modified.

use super::font::{self, GLYPH_H, GLYPH_W};
use super::{PixelError, PlaneMut, check_even};

/// Luma of glyph pixels (limited-range white).
pub const TEXT_LUMA: u8 = 235;
/// Luma of the background box (limited-range black).
pub const BOX_LUMA: u8 = 16;
/// Chroma written under the box (neutral grey).
pub const NEUTRAL_CHROMA: u8 = 128;

/// Padding around the text, in font pixels.
const PAD: usize = 1;
/// Horizontal advance per character, in font pixels.
const CELL_W: usize = GLYPH_W + 1;
/// Box height in font pixels.
const BOX_H: usize = PAD + GLYPH_H + PAD;

/// Size `(width, height)` in frame pixels of the box drawn for `text` at
/// integer `scale`, including the one-font-pixel padding on every side.
///
/// Every `char` counts as one glyph (non-printable ones render as `?`).
/// Returns `(0, 0)` for empty text or `scale == 0`, in which case nothing
/// is drawn. Saturates instead of overflowing for absurd inputs.
pub fn text_size(text: &str, scale: usize) -> (usize, usize) {
    let n = text.chars().count();
    if n == 0 || scale == 0 {
        return (0, 0);
    }
    let w = n
        .saturating_mul(CELL_W)
        .saturating_add(PAD)
        .saturating_mul(scale);
    (w, BOX_H.saturating_mul(scale))
}

/// Clipped box in frame pixel coordinates: columns `x0..x1`, rows `y0..y1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rect {
    x0: usize,
    x1: usize,
    y0: usize,
    y1: usize,
}

impl Rect {
    /// `[x, x + w) x [y, y + h)` clipped to `[0, cw) x [0, ch)`, or `None`
    /// if empty.
    fn clipped(x: usize, y: usize, w: usize, h: usize, cw: usize, ch: usize) -> Option<Self> {
        let r = Rect {
            x0: x,
            x1: x.saturating_add(w).min(cw),
            y0: y,
            y1: y.saturating_add(h).min(ch),
        };
        (r.x0 < r.x1 && r.y0 < r.y1).then_some(r)
    }
}

/// Fills `rect` of a validated one-byte-per-pixel plane with `value`.
fn fill(plane: &mut PlaneMut<'_>, rect: Rect, value: u8) {
    for r in rect.y0..rect.y1 {
        let start = r * plane.stride;
        plane.data[start + rect.x0..start + rect.x1].fill(value);
    }
}

/// Draws box and glyphs into a validated `w`x`h` luma plane. Returns the
/// clipped box, or `None` if nothing is visible.
fn draw_luma(
    y: &mut PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    scale: usize,
    text: &str,
) -> Option<Rect> {
    let (bw, bh) = text_size(text, scale);
    let bx = Rect::clipped(x, y0, bw, bh, w, h)?;
    fill(y, bx, BOX_LUMA);
    for (i, c) in text.chars().enumerate() {
        let cell_x = x.saturating_add(
            i.saturating_mul(CELL_W)
                .saturating_add(PAD)
                .saturating_mul(scale),
        );
        if cell_x >= bx.x1 {
            break;
        }
        let g = font::glyph(c);
        for (gx, &col) in g.iter().enumerate() {
            if col == 0 {
                continue;
            }
            let px = cell_x.saturating_add(gx * scale);
            if px >= bx.x1 {
                break;
            }
            for gy in 0..GLYPH_H {
                if (col >> gy) & 1 == 0 {
                    continue;
                }
                let py = y0.saturating_add((PAD + gy).saturating_mul(scale));
                if let Some(dot) = Rect::clipped(px, py, scale, scale, bx.x1, bx.y1) {
                    fill(y, dot, TEXT_LUMA);
                }
            }
        }
    }
    Some(bx)
}

/// Chroma rectangle (in chroma samples) covering the luma rectangle `r`.
fn chroma_rect(r: Rect) -> Rect {
    Rect {
        x0: r.x0 / 2,
        x1: r.x1.div_ceil(2),
        y0: r.y0 / 2,
        y1: r.y1.div_ceil(2),
    }
}

/// Checks an I420 frame's planes, lets `luma` draw into Y, and makes the chroma under the
/// rectangle it drew neutral.
fn on_i420(
    mut y: PlaneMut<'_>,
    mut u: PlaneMut<'_>,
    mut v: PlaneMut<'_>,
    w: usize,
    h: usize,
    luma: impl FnOnce(&mut PlaneMut<'_>) -> Option<Rect>,
) -> Result<(), PixelError> {
    check_even("I420 frame", w, h)?;
    y.check("Y", w, h)?;
    u.check("U", w / 2, h / 2)?;
    v.check("V", w / 2, h / 2)?;
    if let Some(bx) = luma(&mut y) {
        let c = chroma_rect(bx);
        fill(&mut u, c, NEUTRAL_CHROMA);
        fill(&mut v, c, NEUTRAL_CHROMA);
    }
    Ok(())
}

/// [`on_i420`] for NV12 (interleaved chroma: two bytes per chroma sample).
fn on_nv12(
    mut y: PlaneMut<'_>,
    mut uv: PlaneMut<'_>,
    w: usize,
    h: usize,
    luma: impl FnOnce(&mut PlaneMut<'_>) -> Option<Rect>,
) -> Result<(), PixelError> {
    check_even("NV12 frame", w, h)?;
    y.check("Y", w, h)?;
    uv.check("UV", w, h / 2)?;
    if let Some(bx) = luma(&mut y) {
        let c = chroma_rect(bx);
        let bytes = Rect {
            x0: 2 * c.x0,
            x1: 2 * c.x1,
            ..c
        };
        fill(&mut uv, bytes, NEUTRAL_CHROMA);
    }
    Ok(())
}

/// Blocks of a [`draw_code_i420`] code: a white and a black reference, then 32 bits.
pub const CODE_BLOCKS: usize = 34;

/// Draws the code of `value` into a validated luma plane: [`CODE_BLOCKS`] squares of
/// `block` pixels in a row from `(x, y0)` — white, black, then `value`'s bits from the most
/// significant (white = 1). Returns the clipped rectangle.
fn code_luma(
    y: &mut PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    block: usize,
    value: u32,
) -> Option<Rect> {
    let all = Rect::clipped(x, y0, CODE_BLOCKS.saturating_mul(block), block, w, h)?;
    for i in 0..CODE_BLOCKS {
        let white = match i {
            0 => true,
            1 => false,
            b => (value >> (31 - (b - 2))) & 1 == 1,
        };
        let bx = x.saturating_add(i.saturating_mul(block));
        if let Some(r) = Rect::clipped(bx, y0, block, block, all.x1, all.y1) {
            fill(y, r, if white { TEXT_LUMA } else { BOX_LUMA });
        }
    }
    Some(all)
}

/// Draws a machine-readable code of `value` (a row of [`CODE_BLOCKS`] black/white squares of
/// `block` pixels, see [`code_luma`]) into an I420 frame at `(x, y0)`, clipped like text:
/// what a latency probe reads back from the displayed picture (the wall clock at the time
/// the frame was stamped).
#[allow(clippy::too_many_arguments)]
pub fn draw_code_i420(
    y: PlaneMut<'_>,
    u: PlaneMut<'_>,
    v: PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    block: usize,
    value: u32,
) -> Result<(), PixelError> {
    on_i420(y, u, v, w, h, |y| code_luma(y, w, h, x, y0, block, value))
}

/// [`draw_code_i420`] for NV12 frames.
#[allow(clippy::too_many_arguments)]
pub fn draw_code_nv12(
    y: PlaneMut<'_>,
    uv: PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    block: usize,
    value: u32,
) -> Result<(), PixelError> {
    on_nv12(y, uv, w, h, |y| code_luma(y, w, h, x, y0, block, value))
}

/// Reads back the value of a code drawn at `(x, y0)` with squares of `block` pixels, from
/// the middle row of the squares of a decoded picture's luma plane (`w` pixels wide): `None`
/// when the code is not there (the reference squares, white then black, do not differ by
/// at least 100 levels, or the row is outside the plane). The threshold is halfway between
/// the reference squares, so a lossy encode's level shifts do not flip bits.
pub fn read_code(y: super::Plane<'_>, w: usize, x: usize, y0: usize, block: usize) -> Option<u32> {
    let row = y0.checked_add(block / 2)?;
    let start = row.checked_mul(y.stride)?;
    let line = y.data.get(start..start.checked_add(w)?)?;
    let lum = |i: usize| line.get(x + i * block + block / 2).map(|&v| i32::from(v));
    let (white, black) = (lum(0)?, lum(1)?);
    if white - black < 100 {
        return None;
    }
    let threshold = (white + black) / 2;
    let mut value = 0u32;
    for i in 2..CODE_BLOCKS {
        value = value << 1 | u32::from(lum(i)? > threshold);
    }
    Some(value)
}

/// Draws `text` into an I420 frame of `w`x`h` pixels (both even), with the
/// top-left corner of its background box at pixel `(x, y0)` and glyphs
/// scaled by `scale`. See the module docs for layout and clipping.
///
/// Errors only for odd dimensions or planes too small for the frame.
#[allow(clippy::too_many_arguments)]
pub fn draw_text_i420(
    y: PlaneMut<'_>,
    u: PlaneMut<'_>,
    v: PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    scale: usize,
    text: &str,
) -> Result<(), PixelError> {
    on_i420(y, u, v, w, h, |y| draw_luma(y, w, h, x, y0, scale, text))
}

/// Draws `text` into an NV12 frame of `w`x`h` pixels (both even); same
/// behaviour as [`draw_text_i420`].
#[allow(clippy::too_many_arguments)]
pub fn draw_text_nv12(
    y: PlaneMut<'_>,
    uv: PlaneMut<'_>,
    w: usize,
    h: usize,
    x: usize,
    y0: usize,
    scale: usize,
    text: &str,
) -> Result<(), PixelError> {
    on_nv12(y, uv, w, h, |y| draw_luma(y, w, h, x, y0, scale, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pixel::testutil::Buf;

    const BG_Y: u8 = 100;
    const BG_U: u8 = 90;
    const BG_V: u8 = 160;

    struct Frame {
        w: usize,
        h: usize,
        y: Buf,
        u: Buf,
        v: Buf,
    }

    fn frame(w: usize, h: usize) -> Frame {
        Frame {
            w,
            h,
            y: Buf::filled(w, h, 3, BG_Y),
            u: Buf::filled(w / 2, h / 2, 1, BG_U),
            v: Buf::filled(w / 2, h / 2, 2, BG_V),
        }
    }

    fn draw(f: &mut Frame, x: usize, y0: usize, scale: usize, text: &str) {
        draw_text_i420(
            f.y.plane_mut(),
            f.u.plane_mut(),
            f.v.plane_mut(),
            f.w,
            f.h,
            x,
            y0,
            scale,
            text,
        )
        .unwrap();
        f.y.assert_padding_intact();
        f.u.assert_padding_intact();
        f.v.assert_padding_intact();
    }

    /// Independent per-pixel model of the layout (u128 maths, no clipping
    /// logic): expected luma at frame pixel (px, py), or None if outside
    /// the box.
    fn model_luma(
        px: usize,
        py: usize,
        x: usize,
        y0: usize,
        scale: usize,
        text: &str,
    ) -> Option<u8> {
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() || scale == 0 || px < x || py < y0 {
            return None;
        }
        let (lx, ly) = ((px - x) as u128, (py - y0) as u128);
        let s = scale as u128;
        let (fx, fy) = (lx / s, ly / s);
        if fx >= (1 + 6 * chars.len()) as u128 || fy >= 9 {
            return None;
        }
        if fx == 0 || fy == 0 || fy == 8 {
            return Some(BOX_LUMA);
        }
        let ci = ((fx - 1) / 6) as usize;
        let gx = ((fx - 1) % 6) as usize;
        let on = font::pixel(chars[ci], gx, (fy - 1) as usize);
        Some(if on { TEXT_LUMA } else { BOX_LUMA })
    }

    fn check_against_model(f: &Frame, x: usize, y0: usize, scale: usize, text: &str) {
        for py in 0..f.h {
            for px in 0..f.w {
                let want = model_luma(px, py, x, y0, scale, text).unwrap_or(BG_Y);
                assert_eq!(
                    f.y.at(px, py),
                    want,
                    "luma ({px},{py}) for {text:?} at ({x},{y0}) scale {scale}"
                );
            }
        }
        // Chroma: neutral exactly where a covered 2x2 block touches the box.
        for cy in 0..f.h / 2 {
            for cx in 0..f.w / 2 {
                let touched = (0..2).any(|dy| {
                    (0..2).any(|dx| {
                        model_luma(2 * cx + dx, 2 * cy + dy, x, y0, scale, text).is_some()
                    })
                });
                let (wu, wv) = if touched {
                    (NEUTRAL_CHROMA, NEUTRAL_CHROMA)
                } else {
                    (BG_U, BG_V)
                };
                assert_eq!(
                    (f.u.at(cx, cy), f.v.at(cx, cy)),
                    (wu, wv),
                    "chroma ({cx},{cy})"
                );
            }
        }
    }

    #[test]
    fn text_size_layout() {
        assert_eq!(text_size("12:34", 1), (31, 9));
        assert_eq!(text_size("12:34", 3), (93, 27));
        assert_eq!(text_size("", 2), (0, 0));
        assert_eq!(text_size("abc", 0), (0, 0));
        assert_eq!(text_size("é", 1), (7, 9));
        assert_eq!(text_size("x", usize::MAX), (usize::MAX, usize::MAX));
    }

    #[test]
    fn clock_changes_luma_only_inside_box() {
        let mut f = frame(100, 40);
        let (x, y0, scale) = (11, 5, 2);
        draw(&mut f, x, y0, scale, "12:34");
        let (bw, bh) = text_size("12:34", scale);
        let mut ink = 0;
        for py in 0..f.h {
            for px in 0..f.w {
                let v = f.y.at(px, py);
                let inside = (x..x + bw).contains(&px) && (y0..y0 + bh).contains(&py);
                if inside {
                    assert!(v == BOX_LUMA || v == TEXT_LUMA, "({px},{py}) = {v}");
                    ink += usize::from(v == TEXT_LUMA);
                } else {
                    assert_eq!(v, BG_Y, "pixel ({px},{py}) outside box changed");
                }
            }
        }
        // '1' 11 dots, '2' 14, ':' 8, '3' 14, '4' 13 => 60 dots of 2x2.
        let dots: usize = "12:34"
            .chars()
            .map(|c| {
                font::glyph(c)
                    .iter()
                    .map(|b| b.count_ones() as usize)
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(ink, dots * scale * scale);
        // Top-left of the ':' glyph's upper dot: char 2, glyph column 1, row 1.
        let cx = x + (1 + 2 * 6 + 1) * scale;
        let cy = y0 + (1 + 1) * scale;
        assert_eq!(f.y.at(cx, cy), TEXT_LUMA);
        assert_eq!(f.y.at(cx, cy - 1), BOX_LUMA);
        check_against_model(&f, x, y0, scale, "12:34");
    }

    #[test]
    fn nv12_matches_i420() {
        let mut f = frame(64, 32);
        draw(&mut f, 3, 7, 1, "Cam 7 @ 23:59:59");
        let mut y = Buf::filled(64, 32, 5, BG_Y);
        let mut uv = Buf::new(64, 16, 4, |xb, _| if xb % 2 == 0 { BG_U } else { BG_V });
        draw_text_nv12(
            y.plane_mut(),
            uv.plane_mut(),
            64,
            32,
            3,
            7,
            1,
            "Cam 7 @ 23:59:59",
        )
        .unwrap();
        y.assert_padding_intact();
        uv.assert_padding_intact();
        assert_eq!(y.visible(), f.y.visible());
        for r in 0..16 {
            for cx in 0..32 {
                assert_eq!(uv.at(2 * cx, r), f.u.at(cx, r));
                assert_eq!(uv.at(2 * cx + 1, r), f.v.at(cx, r));
            }
        }
    }

    #[test]
    fn non_printable_draws_question_mark() {
        let mut a = frame(40, 12);
        let mut b = frame(40, 12);
        draw(&mut a, 0, 0, 1, "a\u{e9}\n\u{1F600}");
        draw(&mut b, 0, 0, 1, "a???");
        assert_eq!(a.y.visible(), b.y.visible());
    }

    #[test]
    fn clipping_fuzz_never_panics_and_matches_model() {
        let (w, h) = (34, 18);
        let texts = ["12:34", "W", "\u{e9}x~", ""];
        let mut coords = vec![0, 1, 2, 5, 17, 30, 33, 34, 35, 1000];
        coords.extend([usize::MAX, usize::MAX - 1, usize::MAX / 2, usize::MAX - 40]);
        let mut cases = 0;
        for text in texts {
            for scale in [0, 1, 2, 3, 7, usize::MAX / 3, usize::MAX] {
                for &x in &coords {
                    for &y0 in &coords {
                        let mut f = frame(w, h);
                        draw(&mut f, x, y0, scale, text);
                        // Huge scales only put (at most) the top-left padding
                        // in view; the model handles them with u128 maths.
                        check_against_model(&f, x, y0, scale, text);
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 4 * 7 * coords.len() * coords.len());
    }

    #[test]
    fn text_straddling_right_and_bottom_edges_is_clipped() {
        let mut f = frame(20, 10);
        draw(&mut f, 15, 6, 2, "88");
        check_against_model(&f, 15, 6, 2, "88");
        // Box pixels exist in the corner, pixels left/above are untouched.
        assert_eq!(f.y.at(15, 6), BOX_LUMA);
        assert_eq!(f.y.at(14, 6), BG_Y);
        assert_eq!(f.y.at(15, 5), BG_Y);
        // Odd box x: chroma column 7 (luma 14..16) is neutralised.
        assert_eq!(f.u.at(7, 3), NEUTRAL_CHROMA);
        assert_eq!(f.u.at(6, 3), BG_U);
    }

    #[test]
    fn errors_name_the_plane() {
        let mut y = [0u8; 64];
        let mut u = [0u8; 16];
        let mut v = [0u8; 15];
        let e = draw_text_i420(
            PlaneMut::new(&mut y, 8),
            PlaneMut::new(&mut u, 4),
            PlaneMut::new(&mut v, 4),
            8,
            8,
            0,
            0,
            1,
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("V plane"), "{e}");
        assert!(y.iter().all(|&b| b == 0), "nothing drawn on error");
        let mut uv = [0u8; 32];
        let e = draw_text_nv12(
            PlaneMut::new(&mut y, 8),
            PlaneMut::new(&mut uv, 8),
            8,
            7,
            0,
            0,
            1,
            "x",
        )
        .unwrap_err();
        assert!(
            matches!(e, PixelError::OddDimensions { height: 7, .. }),
            "{e}"
        );
        let e = draw_text_nv12(
            PlaneMut::new(&mut y, 8),
            PlaneMut::new(&mut uv[..31], 8),
            8,
            8,
            0,
            0,
            1,
            "x",
        )
        .unwrap_err();
        assert!(
            matches!(e, PixelError::BufferTooSmall { plane: "UV", .. }),
            "{e}"
        );
    }
}

#[cfg(test)]
mod code_tests {
    use super::*;
    use crate::pixel::Plane;

    #[test]
    fn code_round_trips_and_clips() {
        let (w, h) = (640, 64);
        for value in [0u32, 1, 0x8000_0001, 0xDEAD_BEEF, u32::MAX] {
            let mut y = vec![100u8; w * h];
            let mut u = vec![7u8; w * h / 4];
            let mut v = vec![9u8; w * h / 4];
            draw_code_i420(
                PlaneMut::new(&mut y, w),
                PlaneMut::new(&mut u, w / 2),
                PlaneMut::new(&mut v, w / 2),
                w,
                h,
                10,
                20,
                16,
                value,
            )
            .unwrap();
            assert_eq!(read_code(Plane::new(&y, w), w, 10, 20, 16), Some(value));
            // Chroma under the code is neutral, outside untouched.
            assert_eq!(u[(20 / 2) * (w / 2) + 10 / 2 + 1], NEUTRAL_CHROMA);
            assert_eq!(u[0], 7);
        }
        // No code there (uniform grey), or its row outside the plane: nothing read.
        let grey = vec![100u8; w * h];
        assert_eq!(read_code(Plane::new(&grey, w), w, 10, 20, 16), None);
        assert_eq!(read_code(Plane::new(&grey, w), w, 10, 60, 16), None);
        // Partly outside the frame: clipped, not an error.
        let mut y = vec![0u8; w * h];
        let mut uv = vec![0u8; w * h / 2];
        draw_code_nv12(
            PlaneMut::new(&mut y, w),
            PlaneMut::new(&mut uv, w),
            w,
            h,
            600,
            60,
            16,
            5,
        )
        .unwrap();
    }
}
