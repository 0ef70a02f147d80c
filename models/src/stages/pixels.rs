//! Pixel helpers the stages share: blur by area-downscale + bilinear upscale (cheap, no
//! ringing, strength = the downscale factor), alpha compositing, rectangles. They work on
//! the frame's own planes (I420 or NV12) and on caller-owned scratch buffers.

use aegis_hal::pixel::{Plane, PlaneMut, scale_plane, scale_plane_uv};
use aegis_hal::{Frame, PixelFormat};

/// A rectangle in luma pixels, even-aligned so chroma rectangles are exact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left.
    pub x: usize,
    /// Top.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

impl Rect {
    /// `[x1, y1, x2, y2]` (float pixels) grown by `margin` of its size on each side, clipped
    /// to a `fw`×`fh` frame and aligned to even coordinates; `None` when nothing is left.
    pub fn from_box(b: [f32; 4], margin: f32, fw: usize, fh: usize) -> Option<Rect> {
        let (bw, bh) = (b[2] - b[0], b[3] - b[1]);
        let x1 = (b[0] - bw * margin).max(0.0) as usize & !1;
        let y1 = (b[1] - bh * margin).max(0.0) as usize & !1;
        let x2 = ((b[2] + bw * margin).max(0.0) as usize).min(fw & !1) & !1;
        let y2 = ((b[3] + bh * margin).max(0.0) as usize).min(fh & !1) & !1;
        (x2 > x1 && y2 > y1).then(|| Rect {
            x: x1,
            y: y1,
            w: x2 - x1,
            h: y2 - y1,
        })
    }
}

/// A `w`×`h` area of `bpp`-byte pixels (1, or 2 for NV12 chroma) starting at byte `offset`
/// of a plane with `stride`.
#[derive(Clone, Copy)]
struct Area {
    stride: usize,
    offset: usize,
    w: usize,
    h: usize,
    bpp: usize,
}

/// Blurs `area` of `data` by shrinking it `factor` times (area average) and scaling it back
/// (bilinear). `small` is scratch.
fn blur_area(data: &mut [u8], area: Area, factor: usize, small: &mut Vec<u8>) {
    let Area {
        stride,
        offset,
        w,
        h,
        bpp,
    } = area;
    let (sw, sh) = ((w / factor).max(1), (h / factor).max(1));
    if w == 0 || h == 0 || (sw == w && sh == h) {
        return;
    }
    small.resize(sw * sh * bpp, 0);
    let scale = if bpp == 2 {
        scale_plane_uv
    } else {
        scale_plane
    };
    // Both calls only fail on geometry, which is checked by construction here.
    let _ = scale(
        Plane::new(&data[offset..], stride),
        w,
        h,
        PlaneMut::new(small, sw * bpp),
        sw,
        sh,
    );
    let _ = scale(
        Plane::new(small, sw * bpp),
        sw,
        sh,
        PlaneMut::new(&mut data[offset..], stride),
        w,
        h,
    );
}

/// Blurs rectangle `r` of `frame` in place (`factor` ≥ 2 is the strength).
pub fn blur_rect(frame: &mut Frame, r: Rect, factor: usize, small: &mut Vec<u8>) {
    let format = frame.layout.format;
    let [y, p1, p2] = frame.planes_mut();
    let a = |stride, offset, w, h, bpp| Area {
        stride,
        offset,
        w,
        h,
        bpp,
    };
    let luma = a(y.stride, r.y * y.stride + r.x, r.w, r.h, 1);
    blur_area(y.data, luma, factor, small);
    let (cx, cy, cw, ch) = (r.x / 2, r.y / 2, r.w / 2, r.h / 2);
    match format {
        PixelFormat::I420 => {
            for p in [p1, p2] {
                let area = a(p.stride, cy * p.stride + cx, cw, ch, 1);
                blur_area(p.data, area, factor, small);
            }
        }
        PixelFormat::Nv12 => {
            let area = a(p1.stride, cy * p1.stride + 2 * cx, cw, ch, 2);
            blur_area(p1.data, area, factor, small);
        }
    }
}

/// Blurs a packed `w`×`h` plane buffer in place.
pub fn blur_packed(buf: &mut [u8], w: usize, h: usize, factor: usize, small: &mut Vec<u8>) {
    let area = Area {
        stride: w,
        offset: 0,
        w,
        h,
        bpp: 1,
    };
    blur_area(buf, area, factor, small);
}

/// `dst = (dst · alpha + bg · (255 - alpha)) / 255` over a `w`×`h` plane whose pixels are `bpp` bytes;
/// `bg` (packed, one byte per sample) and `alpha` (packed, one per pixel) come per pixel,
/// so NV12 chroma takes `bg` as interleaved U,V too.
fn blend(dst: PlaneMut<'_>, w: usize, h: usize, bpp: usize, bg: &[u8], alpha: &[u8]) {
    for row in 0..h {
        let d = &mut dst.data[row * dst.stride..row * dst.stride + w * bpp];
        let b = &bg[row * w * bpp..(row + 1) * w * bpp];
        let a = &alpha[row * w..(row + 1) * w];
        for (i, (dp, bp)) in d.iter_mut().zip(b).enumerate() {
            let a = u32::from(a[i / bpp]);
            let (f, g) = (u32::from(*dp), u32::from(*bp));
            // Non-negative terms only: alpha 255 gives the frame, 0 the background, exactly.
            *dp = ((f * a + g * (255 - a) + 127) / 255) as u8;
        }
    }
}

/// A background picture at frame size, in the frame's own layout: packed luma, and chroma
/// packed planar (I420) or interleaved (NV12) — exactly what [`composite`] blends from.
#[derive(Debug, Default, Clone)]
pub struct BgPlanes {
    /// Width and height it was made for.
    pub size: (usize, usize),
    /// Format it was made for.
    pub format: Option<PixelFormat>,
    /// Luma, `w*h`.
    pub y: Vec<u8>,
    /// Chroma: I420 → U then V (`2 * w/2 * h/2`); NV12 → interleaved UV (same length).
    pub c: Vec<u8>,
}

impl BgPlanes {
    /// Copies the frame's own pixels in (for blurring).
    pub fn copy_from(&mut self, frame: &Frame) {
        let (w, h) = (frame.layout.width, frame.layout.height);
        let (cw, ch) = (w / 2, h / 2);
        self.size = (w, h);
        self.format = Some(frame.layout.format);
        self.y.resize(w * h, 0);
        self.c.resize(2 * cw * ch, 0);
        let [y, p1, p2] = frame.planes();
        for r in 0..h {
            self.y[r * w..(r + 1) * w].copy_from_slice(&y.data[r * y.stride..r * y.stride + w]);
        }
        match frame.layout.format {
            PixelFormat::I420 => {
                for (k, p) in [p1, p2].into_iter().enumerate() {
                    let base = k * cw * ch;
                    for r in 0..ch {
                        self.c[base + r * cw..base + (r + 1) * cw]
                            .copy_from_slice(&p.data[r * p.stride..r * p.stride + cw]);
                    }
                }
            }
            PixelFormat::Nv12 => {
                for r in 0..ch {
                    self.c[r * 2 * cw..(r + 1) * 2 * cw]
                        .copy_from_slice(&p1.data[r * p1.stride..r * p1.stride + 2 * cw]);
                }
            }
        }
    }

    /// Blurs every plane in place.
    pub fn blur(&mut self, factor: usize, small: &mut Vec<u8>) {
        let (w, h) = self.size;
        let (cw, ch) = (w / 2, h / 2);
        blur_packed(&mut self.y, w, h, factor, small);
        match self.format {
            Some(PixelFormat::Nv12) => {
                let area = Area {
                    stride: 2 * cw,
                    offset: 0,
                    w: cw,
                    h: ch,
                    bpp: 2,
                };
                blur_area(&mut self.c, area, factor, small);
            }
            _ => {
                let (u, v) = self.c.split_at_mut(cw * ch);
                blur_packed(u, cw, ch, factor, small);
                blur_packed(v, cw, ch, factor, small);
            }
        }
    }

    /// A solid colour (limited-range YCbCr).
    pub fn fill(&mut self, w: usize, h: usize, format: PixelFormat, yuv: [u8; 3]) {
        let (cw, ch) = (w / 2, h / 2);
        self.size = (w, h);
        self.format = Some(format);
        self.y.clear();
        self.y.resize(w * h, yuv[0]);
        self.c.resize(2 * cw * ch, 0);
        match format {
            PixelFormat::I420 => {
                let (u, v) = self.c.split_at_mut(cw * ch);
                u.fill(yuv[1]);
                v.fill(yuv[2]);
            }
            PixelFormat::Nv12 => {
                for pair in self.c.chunks_exact_mut(2) {
                    pair.copy_from_slice(&yuv[1..]);
                }
            }
        }
    }
}

/// Composites `frame` over `bg` with per-pixel `alpha_y` (`w*h`) and `alpha_c`
/// (`w/2 * h/2`): 255 keeps the frame, 0 shows the background.
pub fn composite(frame: &mut Frame, bg: &BgPlanes, alpha_y: &[u8], alpha_c: &[u8]) {
    let (w, h) = (frame.layout.width, frame.layout.height);
    let (cw, ch) = (w / 2, h / 2);
    let format = frame.layout.format;
    let [y, p1, p2] = frame.planes_mut();
    blend(y, w, h, 1, &bg.y, alpha_y);
    match format {
        PixelFormat::I420 => {
            blend(p1, cw, ch, 1, &bg.c[..cw * ch], alpha_c);
            blend(p2, cw, ch, 1, &bg.c[cw * ch..], alpha_c);
        }
        PixelFormat::Nv12 => blend(p1, cw, ch, 2, &bg.c, alpha_c),
    }
}

/// Draws the outline of `r` into the luma plane (`value`, 2 px thick).
pub fn outline(frame: &mut Frame, r: Rect, value: u8) {
    let [y, _, _] = frame.planes_mut();
    let (x2, y2) = (r.x + r.w - 1, r.y + r.h - 1);
    for t in 0..2usize {
        for x in r.x..=x2 {
            for yy in [r.y + t.min(r.h - 1), y2 - t.min(r.h - 1)] {
                y.data[yy * y.stride + x] = value;
            }
        }
        for yy in r.y..=y2 {
            for x in [r.x + t.min(r.w - 1), x2 - t.min(r.w - 1)] {
                y.data[yy * y.stride + x] = value;
            }
        }
    }
}

/// Limited-range BT.601 YCbCr of an sRGB colour.
pub fn rgb_to_yuv(rgb: [u8; 3]) -> [u8; 3] {
    let [r, g, b] = rgb.map(f32::from);
    let y = 16.0 + 0.256_79 * r + 0.504_13 * g + 0.097_91 * b;
    let u = 128.0 - 0.148_22 * r - 0.290_99 * g + 0.439_22 * b;
    let v = 128.0 + 0.439_22 * r - 0.367_79 * g - 0.071_43 * b;
    [y, u, v].map(|c| c.round().clamp(0.0, 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_hal::frame::FrameLayout;
    use aegis_hal::{StreamId, SurfacePool};

    fn frame(pool: &SurfacePool) -> Frame {
        let mut f = Frame::from_pool(pool, StreamId::new("t"), 0, 0, 0).unwrap();
        let [y, u, v] = f.planes_mut();
        // Vertical stripes of 0 / 255, 4 px wide: a blur must bring them together.
        for r in 0..64 {
            for x in 0..64 {
                y.data[r * y.stride + x] = if (x / 4) % 2 == 0 { 0 } else { 255 };
            }
        }
        u.data.fill(128);
        v.data.fill(128);
        f
    }

    #[test]
    fn blur_rect_only_touches_its_rectangle() {
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 64, 64), 1);
        let mut f = frame(&pool);
        let before: Vec<u8> = f.planes()[0].data.to_vec();
        let r = Rect::from_box([16.0, 16.0, 48.0, 48.0], 0.0, 64, 64).unwrap();
        blur_rect(&mut f, r, 8, &mut Vec::new());
        let y = f.planes()[0];
        for row in 0..64 {
            for x in 0..64 {
                let inside = (16..48).contains(&row) && (16..48).contains(&x);
                let v = y.data[row * y.stride + x];
                if inside {
                    assert!((60..=195).contains(&v), "({x},{row}) = {v} not blurred");
                } else {
                    assert_eq!(v, before[row * y.stride + x], "({x},{row}) changed");
                }
            }
        }
    }

    #[test]
    fn composite_follows_alpha() {
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::Nv12, 64, 64), 1);
        let mut f = frame(&pool);
        let mut bg = BgPlanes::default();
        bg.fill(64, 64, PixelFormat::Nv12, rgb_to_yuv([0, 255, 0]));
        // Left half keeps the frame, right half shows the background.
        let alpha_y: Vec<u8> = (0..64 * 64)
            .map(|i| if i % 64 < 32 { 255 } else { 0 })
            .collect();
        let alpha_c: Vec<u8> = (0..32 * 32)
            .map(|i| if i % 32 < 16 { 255 } else { 0 })
            .collect();
        let orig = f.planes()[0].data[5];
        composite(&mut f, &bg, &alpha_y, &alpha_c);
        let [y, uv, _] = f.planes();
        assert_eq!(y.data[5], orig);
        assert_eq!(y.data[40], bg.y[0]);
        assert_eq!(&uv.data[2 * 20..2 * 20 + 2], &bg.c[..2]);
        assert_eq!(&uv.data[..2], &[128, 128]);
    }

    #[test]
    fn rects_are_clipped_and_even() {
        assert_eq!(
            Rect::from_box([-10.0, 3.0, 33.0, 100.0], 0.0, 64, 64),
            Some(Rect {
                x: 0,
                y: 2,
                w: 32,
                h: 62
            })
        );
        assert_eq!(Rect::from_box([70.0, 0.0, 80.0, 5.0], 0.0, 64, 64), None);
        assert_eq!(rgb_to_yuv([255, 255, 255]), [235, 128, 128]);
    }
}
