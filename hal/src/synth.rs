//! Synthetic test scenes with known ground truth.
//!
//! Tests and the demo need video whose content is known exactly: this module renders a
//! panning background (a photo that ships in a package, or a procedural texture when none is
//! given) with moving, bouncing objects whose bounding boxes are returned for every frame.
//! Clips are encoded with the project's own encoder (see `aegis sample`), never downloaded.

use crate::frame::{Frame, PixelFormat};
use crate::pixel::{Matrix, Plane, PlaneMut, rgb24_to_i420, scale_i420};
use crate::rng::XorShift;

// Kept here for the callers that name them through this module (models' stages and tests,
// the agent's inference wiring); new code uses `crate::image`.
use crate::image::RgbImage;

/// One object's box in one frame, in frame pixels (clipped to the frame).
#[derive(Debug, Clone, PartialEq)]
pub struct TruthBox {
    /// Object id, stable across frames.
    pub id: u32,
    /// Object class (`person`, `car`, `ball`).
    pub class: &'static str,
    /// Left edge.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width.
    pub w: usize,
    /// Height.
    pub h: usize,
}

#[derive(Debug, Clone)]
struct Mover {
    id: u32,
    class: &'static str,
    w: f64,
    h: f64,
    x: f64,
    y: f64,
    vx: f64,
    vy: f64,
    yuv: (u8, u8, u8),
}

/// Background in I420 at a size larger than the frame, so the camera can pan across it.
struct Backdrop {
    w: usize,
    h: usize,
    y: Vec<u8>,
    u: Vec<u8>,
    v: Vec<u8>,
}

/// A deterministic scene: panning background plus bouncing objects.
pub struct SyntheticScene {
    width: usize,
    height: usize,
    backdrop: Backdrop,
    movers: Vec<Mover>,
    frame_index: u64,
}

impl SyntheticScene {
    /// A `width`×`height` scene (even sizes) with `objects` movers, seeded for repeatability.
    /// With `background`, the camera pans across that image (scaled to 1.25× the frame);
    /// otherwise across a procedural texture.
    pub fn new(
        width: usize,
        height: usize,
        objects: usize,
        seed: u64,
        background: Option<&RgbImage>,
    ) -> Self {
        let (bw, bh) = ((width * 5 / 4 + 1) & !1, (height * 5 / 4 + 1) & !1);
        let backdrop = match background {
            Some(img) => backdrop_from_image(img, bw, bh),
            None => procedural_backdrop(bw, bh),
        };
        let mut rng = XorShift(seed.max(1));
        let classes = [
            ("person", 0.35, 2.6, (82, 90, 240)),
            ("car", 0.9, 0.5, (41, 240, 110)),
            ("ball", 0.3, 1.0, (210, 16, 146)),
        ];
        let base = height as f64 / 5.0;
        let movers = (0..objects)
            .map(|i| {
                let (class, wf, aspect, yuv) = classes[i % classes.len()];
                let w = (base * wf * (0.8 + 0.4 * rng.next_f64()))
                    .max(8.0)
                    .min(width as f64 * 0.8);
                let h = (w * aspect).min(height as f64 * 0.8);
                let speed = (width as f64 / 120.0) * (0.5 + rng.next_f64());
                let angle = rng.next_f64() * std::f64::consts::TAU;
                Mover {
                    id: i as u32 + 1,
                    class,
                    w,
                    h,
                    x: rng.next_f64() * (width as f64 - w),
                    y: rng.next_f64() * (height as f64 - h),
                    vx: speed * angle.cos(),
                    vy: speed * angle.sin(),
                    yuv,
                }
            })
            .collect();
        SyntheticScene {
            width,
            height,
            backdrop,
            movers,
            frame_index: 0,
        }
    }

    /// Renders the next frame into `frame` (I420, the scene's size) and returns the boxes.
    pub fn render(&mut self, frame: &mut Frame) -> Vec<TruthBox> {
        let (w, h) = (self.width, self.height);
        assert_eq!(
            frame.layout.format,
            PixelFormat::I420,
            "synthetic scenes render I420"
        );
        assert_eq!((frame.layout.width, frame.layout.height), (w, h));
        let t = self.frame_index as f64;
        self.frame_index += 1;
        // Camera pan: a slow ellipse over the backdrop, on even offsets (chroma alignment).
        let (mx, my) = (self.backdrop.w - w, self.backdrop.h - h);
        let ox = ((mx as f64 / 2.0) * (1.0 + (t / 90.0).sin())) as usize & !1;
        let oy = ((my as f64 / 2.0) * (1.0 + (t / 130.0).cos())) as usize & !1;
        let [py, pu, pv] = frame.planes_mut();
        blit(&self.backdrop.y, self.backdrop.w, ox, oy, py, w, h);
        let (cw, ch) = (w / 2, h / 2);
        blit(
            &self.backdrop.u,
            self.backdrop.w / 2,
            ox / 2,
            oy / 2,
            pu,
            cw,
            ch,
        );
        blit(
            &self.backdrop.v,
            self.backdrop.w / 2,
            ox / 2,
            oy / 2,
            pv,
            cw,
            ch,
        );
        let mut boxes = Vec::with_capacity(self.movers.len());
        for m in &mut self.movers {
            let b = TruthBox {
                id: m.id,
                class: m.class,
                x: m.x.round().max(0.0) as usize,
                y: m.y.round().max(0.0) as usize,
                w: m.w.round() as usize,
                h: m.h.round() as usize,
            };
            let b = TruthBox {
                w: b.w.min(w - b.x.min(w)),
                h: b.h.min(h - b.y.min(h)),
                ..b
            };
            fill_box(frame, &b, m.yuv);
            boxes.push(b);
            m.x += m.vx;
            m.y += m.vy;
            if m.x < 0.0 || m.x + m.w > w as f64 {
                m.vx = -m.vx;
                m.x = m.x.clamp(0.0, w as f64 - m.w);
            }
            if m.y < 0.0 || m.y + m.h > h as f64 {
                m.vy = -m.vy;
                m.y = m.y.clamp(0.0, h as f64 - m.h);
            }
        }
        boxes
    }
}

fn blit(
    src: &[u8],
    src_stride: usize,
    ox: usize,
    oy: usize,
    dst: PlaneMut<'_>,
    w: usize,
    h: usize,
) {
    for row in 0..h {
        let s = (oy + row) * src_stride + ox;
        let d = row * dst.stride;
        dst.data[d..d + w].copy_from_slice(&src[s..s + w]);
    }
}

/// Solid box with a 2-pixel dark outline, so detectors and eyes both see a clear edge.
fn fill_box(frame: &mut Frame, b: &TruthBox, (cy, cu, cv): (u8, u8, u8)) {
    let [py, pu, pv] = frame.planes_mut();
    for row in b.y..b.y + b.h {
        let line = &mut py.data[row * py.stride + b.x..row * py.stride + b.x + b.w];
        let edge_row = row < b.y + 2 || row + 2 >= b.y + b.h;
        for (i, px) in line.iter_mut().enumerate() {
            *px = if edge_row || i < 2 || i + 2 >= b.w {
                16
            } else {
                cy
            };
        }
    }
    for row in b.y / 2..(b.y + b.h) / 2 {
        let (x0, x1) = (b.x / 2, (b.x + b.w) / 2);
        pu.data[row * pu.stride + x0..row * pu.stride + x1].fill(cu);
        pv.data[row * pv.stride + x0..row * pv.stride + x1].fill(cv);
    }
}

fn backdrop_from_image(img: &RgbImage, bw: usize, bh: usize) -> Backdrop {
    // Convert at the image's own (even-cropped) size, then scale each plane to the backdrop.
    let (iw, ih) = (img.width & !1, img.height & !1);
    let (mut y, mut u, mut v) = (vec![0; iw * ih], vec![0; iw * ih / 4], vec![0; iw * ih / 4]);
    let converted = rgb24_to_i420(
        Plane {
            data: &img.data,
            stride: img.width * 3,
        },
        iw,
        ih,
        Matrix::Bt709,
        PlaneMut {
            data: &mut y,
            stride: iw,
        },
        PlaneMut {
            data: &mut u,
            stride: iw / 2,
        },
        PlaneMut {
            data: &mut v,
            stride: iw / 2,
        },
    );
    if converted.is_err() || iw < 2 || ih < 2 {
        return procedural_backdrop(bw, bh);
    }
    let mut out = Backdrop {
        w: bw,
        h: bh,
        y: vec![0; bw * bh],
        u: vec![0; bw * bh / 4],
        v: vec![0; bw * bh / 4],
    };
    // Crop to the backdrop's aspect ratio so the photo is not stretched: centred across,
    // high up and down (a portrait keeps its face, which the analytics stages look for).
    let (cw, ch) = if iw * bh > ih * bw {
        ((ih * bw / bh) & !1, ih)
    } else {
        (iw, (iw * bh / bw) & !1)
    };
    let (cx, cy) = (((iw - cw) / 2) & !1, ((ih - ch) / 8) & !1);
    let (yo, co) = (cy * iw + cx, (cy / 2) * (iw / 2) + cx / 2);
    let scaled = scale_i420(
        (
            Plane {
                data: &y[yo..],
                stride: iw,
            },
            Plane {
                data: &u[co..],
                stride: iw / 2,
            },
            Plane {
                data: &v[co..],
                stride: iw / 2,
            },
        ),
        cw,
        ch,
        (
            PlaneMut {
                data: &mut out.y,
                stride: bw,
            },
            PlaneMut {
                data: &mut out.u,
                stride: bw / 2,
            },
            PlaneMut {
                data: &mut out.v,
                stride: bw / 2,
            },
        ),
        bw,
        bh,
    );
    if scaled.is_err() {
        return procedural_backdrop(bw, bh);
    }
    out
}

fn procedural_backdrop(bw: usize, bh: usize) -> Backdrop {
    let mut y = vec![0; bw * bh];
    for (r, row) in y.chunks_exact_mut(bw).enumerate() {
        for (c, px) in row.iter_mut().enumerate() {
            let checker = if (r / 48 + c / 48) % 2 == 0 { 24 } else { 0 };
            *px = (40 + (c * 120 / bw) + (r * 60 / bh) + checker) as u8;
        }
    }
    let (cw, ch) = (bw / 2, bh / 2);
    let mut u = vec![0; cw * ch];
    let mut v = vec![0; cw * ch];
    for r in 0..ch {
        for c in 0..cw {
            u[r * cw + c] = (110 + c * 36 / cw) as u8;
            v[r * cw + c] = (140 - r * 30 / ch) as u8;
        }
    }
    Backdrop {
        w: bw,
        h: bh,
        y,
        u,
        v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{FrameLayout, StreamId};
    use crate::pool::SurfacePool;

    fn frame(pool: &SurfacePool) -> Frame {
        Frame::from_pool(pool, StreamId::new("t"), 0, 0, 33_333).unwrap()
    }

    #[test]
    fn boxes_stay_inside_and_objects_are_drawn_where_reported() {
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 320, 240), 1);
        let mut scene = SyntheticScene::new(320, 240, 3, 7, None);
        for _ in 0..200 {
            let mut f = frame(&pool);
            let boxes = scene.render(&mut f);
            assert_eq!(boxes.len(), 3);
            let [py, pu, _] = f.planes();
            for b in &boxes {
                assert!(b.x + b.w <= 320 && b.y + b.h <= 240, "{b:?}");
                if b.w > 6 && b.h > 6 {
                    // The outline is dark and the interior has the class colour.
                    assert_eq!(py.data[b.y * py.stride + b.x], 16);
                    let (cx, cy) = (b.x + b.w / 2, b.y + b.h / 2);
                    let expect_u = match b.class {
                        "person" => 90,
                        "car" => 240,
                        _ => 16,
                    };
                    // Another object may overlap; only check when this is the topmost box
                    // (with a 2-pixel margin: chroma covers 2x2 luma pixels).
                    let later = boxes.iter().skip_while(|o| o.id != b.id).skip(1).any(|o| {
                        cx + 2 >= o.x && cx < o.x + o.w + 2 && cy + 2 >= o.y && cy < o.y + o.h + 2
                    });
                    if !later {
                        assert_eq!(pu.data[(cy / 2) * pu.stride + cx / 2], expect_u, "{b:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn narrow_and_tiny_frames_do_not_panic() {
        for (w, h) in [(16, 720), (720, 16), (16, 16)] {
            let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, w, h), 1);
            let mut scene = SyntheticScene::new(w, h, 5, 3, None);
            for _ in 0..50 {
                let mut f = frame(&pool);
                for b in scene.render(&mut f) {
                    assert!(b.x + b.w <= w && b.y + b.h <= h, "{w}x{h}: {b:?}");
                }
            }
        }
    }

    #[test]
    fn scenes_are_repeatable() {
        let mut a = SyntheticScene::new(160, 120, 4, 42, None);
        let mut b = SyntheticScene::new(160, 120, 4, 42, None);
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 160, 120), 2);
        for _ in 0..10 {
            let (mut fa, mut fb) = (frame(&pool), frame(&pool));
            assert_eq!(a.render(&mut fa), b.render(&mut fb));
            assert_eq!(&fa.surface[..], &fb.surface[..]);
        }
    }
}
