//! Model inputs from pooled frames, written into caller-owned buffers (no per-frame
//! allocation).

use aegis_hal::{Frame, PixelFormat};

use crate::yolo::Letterbox;

/// The input buffer does not have the size the model input needs.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("input buffer holds {got} values; a 3x{size}x{size} tensor needs {}", 3 * size * size)]
pub struct BufferSizeError {
    /// Values in the buffer.
    pub got: usize,
    /// Model input side.
    pub size: usize,
}

/// BT.601 limited-range YCbCr (what H.264 cameras send) → RGB in 0..=1.
fn rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    let (y, u, v) = (
        (y as f32 - 16.0) * (255.0 / 219.0),
        (u as f32 - 128.0) * (255.0 / 224.0),
        (v as f32 - 128.0) * (255.0 / 224.0),
    );
    let r = y + 1.402 * v;
    let g = y - 0.344_136 * u - 0.714_136 * v;
    let b = y + 1.772 * u;
    [r, g, b].map(|c| (c / 255.0).clamp(0.0, 1.0))
}

/// NudeNet's input layout: the frame padded right and bottom with black to a square, resized
/// to `size`×`size` with bilinear interpolation at half-pixel centres (OpenCV's
/// `INTER_LINEAR`, no anti-aliasing), planes in **B, G, R** order, values 0..1. Returns the
/// letterbox that maps detections back to the frame.
pub fn square_bgr_planar(
    frame: &Frame,
    size: usize,
    out: &mut [f32],
) -> Result<Letterbox, BufferSizeError> {
    if out.len() != 3 * size * size {
        return Err(BufferSizeError {
            got: out.len(),
            size,
        });
    }
    let (w, h) = (frame.layout.width, frame.layout.height);
    let side = w.max(h).max(1);
    let [py, p1, p2] = frame.planes();
    let nv12 = frame.layout.format == PixelFormat::Nv12;
    // The padded square's pixel at (x, y): the frame inside, black outside.
    let at = |x: usize, y: usize| -> [f32; 3] {
        if x >= w || y >= h {
            return [0.0; 3];
        }
        let yy = py.data[y * py.stride + x];
        let (cx, cy) = (x / 2, y / 2);
        let (u, v) = if nv12 {
            let i = cy * p1.stride + 2 * cx;
            (p1.data[i], p1.data[i + 1])
        } else {
            (p1.data[cy * p1.stride + cx], p2.data[cy * p2.stride + cx])
        };
        rgb(yy, u, v)
    };
    let ratio = side as f64 / size as f64;
    let src = |d: usize| -> (usize, usize, f32) {
        let s = ((d as f64 + 0.5) * ratio - 0.5).max(0.0);
        let i0 = (s.floor() as usize).min(side - 1);
        let i1 = (i0 + 1).min(side - 1);
        (i0, i1, (s - s.floor()) as f32)
    };
    let plane = size * size;
    for dy in 0..size {
        let (y0, y1, fy) = src(dy);
        for dx in 0..size {
            let (x0, x1, fx) = src(dx);
            let (a, b, c, d) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
            let i = dy * size + dx;
            for (ch, plane_index) in [(2, 0), (1, 1), (0, 2)] {
                let top = a[ch] + (b[ch] - a[ch]) * fx;
                let bottom = c[ch] + (d[ch] - c[ch]) * fx;
                out[plane_index * plane + i] = top + (bottom - top) * fy;
            }
        }
    }
    Ok(Letterbox::top_left(w, h, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_hal::frame::FrameLayout;
    use aegis_hal::{StreamId, SurfacePool};

    fn solid(pool: &SurfacePool, yuv: (u8, u8, u8)) -> Frame {
        let mut f = Frame::from_pool(pool, StreamId::new("t"), 0, 0, 0).unwrap();
        f.meta.keyframe = true;
        let [y, u, v] = f.planes_mut();
        y.data.fill(yuv.0);
        u.data.fill(yuv.1);
        v.data.fill(yuv.2);
        f
    }

    #[test]
    fn pads_right_and_bottom_and_orders_planes_bgr() {
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 640, 480), 1);
        // BT.601 limited-range pure red.
        let f = solid(&pool, (81, 90, 240));
        let mut input = vec![0.0; 3 * 320 * 320];
        let lb = square_bgr_planar(&f, 320, &mut input).unwrap();
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.5, 0.0, 0.0));
        let px = |plane: usize, x: usize, y: usize| input[plane * 320 * 320 + y * 320 + x];
        // Inside the frame (rows < 240): B ≈ 0, G ≈ 0, R ≈ 1.
        for (x, y) in [(0, 0), (319, 100), (160, 238)] {
            assert!(px(0, x, y) < 0.02 && px(1, x, y) < 0.02, "B/G at {x},{y}");
            assert!(px(2, x, y) > 0.98, "R at {x},{y}: {}", px(2, x, y));
        }
        // The padding below the frame is black.
        for (x, y) in [(0, 241), (319, 319)] {
            assert_eq!(
                [px(0, x, y), px(1, x, y), px(2, x, y)],
                [0.0; 3],
                "at {x},{y}"
            );
        }
        // At exactly 2x the frame's last row pair maps to output row 239 and the padding
        // starts at row 240 (half-pixel centres: output row r samples rows 2r and 2r+1).
        assert!(px(2, 10, 239) > 0.98 && px(2, 10, 240) == 0.0);
        assert_eq!(
            square_bgr_planar(&f, 320, &mut input[1..]),
            Err(BufferSizeError {
                got: 3 * 320 * 320 - 1,
                size: 320
            })
        );
    }
}
