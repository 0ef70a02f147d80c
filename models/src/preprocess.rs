//! Model inputs from pooled frames, written into caller-owned buffers (no per-frame
//! allocation).

use aegis_hal::{Frame, PixelFormat};

use crate::geometry::Letterbox;

/// The input buffer does not have the size the model input needs.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("input buffer holds {got} values; a 3x{size}x{size} tensor needs {}", 3 * size * size)]
pub struct BufferSizeError {
    /// Values in the buffer.
    pub got: usize,
    /// Model input side.
    pub size: usize,
}

/// A model input could not be built on the GPU.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    /// The frame's pixels are on the host.
    #[error("the frame is not on the device")]
    NotOnDevice,
    /// The buffers do not fit the model input.
    #[error(transparent)]
    BufferSize(#[from] BufferSizeError),
    /// The GPU kernels build RGB input for stretched fits only.
    #[error("stretched BGR input is not built on the GPU")]
    StretchedBgr,
    /// A CUDA call failed.
    #[error(transparent)]
    Gpu(#[from] aegis_cuda::CudaError),
}

/// BT.601 limited-range YCbCr (what H.264 cameras send) → RGB in 0..=1.
fn rgb(y: u8, u: u8, v: u8) -> [f32; 3] {
    use aegis_bt601::float::{BU, C_SCALE, C_ZERO, GU, GV, RV, Y_MIN, Y_SCALE};
    let (y, u, v) = (
        (y as f32 - Y_MIN) * Y_SCALE,
        (u as f32 - C_ZERO) * C_SCALE,
        (v as f32 - C_ZERO) * C_SCALE,
    );
    let r = y + RV * v;
    let g = y - GU * u - GV * v;
    let b = y + BU * u;
    [r, g, b].map(|c| (c / 255.0).clamp(0.0, 1.0))
}

/// Channel order of a model's input planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOrder {
    /// R, G, B planes (MediaPipe, Ultralytics exports).
    Rgb,
    /// B, G, R planes (NudeNet, OpenCV-trained models).
    Bgr,
}

/// How the frame is fitted into the model's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fit {
    /// Keep the aspect ratio in a square input, padding right and bottom with black
    /// (NudeNet), sampled at half-pixel centres (OpenCV's `INTER_LINEAR`).
    PadBottomRight,
    /// Keep the aspect ratio in a square input, centred, padding with grey `pad` (0..1;
    /// Ultralytics uses 114/255), half-pixel centres.
    Centred {
        /// Padding value.
        pad: f32,
    },
    /// Stretch to the input, sampled corner-aligned (`src = dst · w / W`, MediaPipe's
    /// ImageToTensor mapping for the selfie segmenter).
    Stretch,
}

/// A model input: `width`×`height` float planes in 0..1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InputSpec {
    /// Input width.
    pub width: usize,
    /// Input height.
    pub height: usize,
    /// Plane order.
    pub order: ChannelOrder,
    /// Fitting.
    pub fit: Fit,
}

/// How `spec` samples a `w`×`h` frame: what [`planar`] computes per input pixel, and what
/// the CUDA kernel gets for the same mapping.
struct Sampling {
    lb: Letterbox,
    pad: f32,
    /// Corner-aligned (stretch) rather than half-pixel centres.
    corner: bool,
    rx: f64,
    ry: f64,
    ox: f64,
    oy: f64,
    len_x: usize,
    len_y: usize,
}

fn sampling(spec: InputSpec, w: usize, h: usize) -> Sampling {
    let ow = spec.width;
    let oh = spec.height;
    let (lb, pad) = match spec.fit {
        Fit::PadBottomRight => (Letterbox::top_left(w, h, ow), 0.0),
        Fit::Centred { pad } => (Letterbox::centred(w, h, ow), pad),
        Fit::Stretch => (
            Letterbox {
                scale: ow as f64 / w.max(1) as f64,
                pad_x: 0.0,
                pad_y: 0.0,
            },
            0.0,
        ),
    };
    let corner = spec.fit == Fit::Stretch;
    // NudeNet pads first and resizes the padded square, so its samples clamp at the square's
    // edge (and blend the frame's last row with the black padding); the others resize the
    // frame itself and clamp at its edges.
    let (len_x, len_y) = match spec.fit {
        Fit::PadBottomRight => (w.max(h), w.max(h)),
        _ => (w, h),
    };
    let (rx, ry, ox, oy) = if corner {
        (w as f64 / ow as f64, h as f64 / oh as f64, 0.0, 0.0)
    } else {
        (1.0 / lb.scale, 1.0 / lb.scale, lb.pad_x, lb.pad_y)
    };
    Sampling {
        lb,
        pad,
        corner,
        rx,
        ry,
        ox,
        oy,
        len_x,
        len_y,
    }
}

/// [`planar`] for a frame whose pixels are on the GPU (CUDA backend): the same sampling by
/// a kernel into `dev` (`3*s*s` floats), then downloaded into `out` — the only copy; the
/// frame stays on the device. For an engine that reads device memory,
/// [`planar_in_device`] stops before the download.
pub fn planar_on_device(
    frame: &Frame,
    spec: InputSpec,
    dev: &mut aegis_cuda::CudaSlice<f32>,
    out: &mut [f32],
) -> Result<Letterbox, PreprocessError> {
    if out.len() != dev.len() {
        return Err(BufferSizeError {
            got: out.len(),
            size: spec.width,
        }
        .into());
    }
    let lb = planar_in_device(frame, spec, dev)?;
    let d = frame.device.as_ref().ok_or(PreprocessError::NotOnDevice)?;
    d.gpu().download_into(dev, out)?;
    Ok(lb)
}

/// [`planar`] for a frame on the GPU into `dev` (`3*s*s` floats), left there: queued on
/// the frame's stream (wait for it before another stream reads `dev`).
pub fn planar_in_device(
    frame: &Frame,
    spec: InputSpec,
    dev: &mut aegis_cuda::CudaSlice<f32>,
) -> Result<Letterbox, PreprocessError> {
    let d = frame.device.as_ref().ok_or(PreprocessError::NotOnDevice)?;
    let (src, gpu) = (d.nv12(), d.gpu());
    let (ow, oh) = (spec.width, spec.height);
    if dev.len() != 3 * ow * oh || ow != oh && spec.fit != Fit::Stretch {
        return Err(BufferSizeError {
            got: dev.len(),
            size: ow,
        }
        .into());
    }
    let (sw, sh) = d.size();
    let s = sampling(spec, sw, sh);
    if s.corner && spec.order == ChannelOrder::Rgb {
        gpu.preprocess(src, dev, ow, oh)?;
    } else if s.corner {
        return Err(PreprocessError::StretchedBgr);
    } else {
        let fit = aegis_cuda::Letterboxed {
            ratio_x: s.rx,
            ratio_y: s.ry,
            offset_x: s.ox,
            offset_y: s.oy,
            len_x: s.len_x,
            len_y: s.len_y,
            pad: s.pad,
            bgr: spec.order == ChannelOrder::Bgr,
        };
        gpu.preprocess_fit(src, dev, ow, oh, &fit)?;
    }
    Ok(s.lb)
}

/// Writes `frame` as `spec` says into `out` (3 planes, NCHW without the batch) with
/// bilinear interpolation, and returns the mapping of input pixels back to the frame.
pub fn planar(
    frame: &Frame,
    spec: InputSpec,
    out: &mut [f32],
) -> Result<Letterbox, BufferSizeError> {
    let (ow, oh) = (spec.width, spec.height);
    if out.len() != 3 * ow * oh || ow != oh && spec.fit != Fit::Stretch {
        return Err(BufferSizeError {
            got: out.len(),
            size: ow,
        });
    }
    let (w, h) = (frame.layout.width, frame.layout.height);
    let [py, p1, p2] = frame.planes();
    let nv12 = frame.layout.format == PixelFormat::Nv12;
    let Sampling {
        lb,
        pad,
        corner,
        rx,
        ry,
        ox,
        oy,
        len_x,
        len_y,
    } = sampling(spec, w, h);
    // Frame pixel (x, y) as RGB; the padding value outside the frame.
    let at = |x: isize, y: isize| -> [f32; 3] {
        if x < 0 || y < 0 || x as usize >= w || y as usize >= h {
            return [pad; 3];
        }
        let (x, y) = (x as usize, y as usize);
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
    // Input coordinate → source sample positions and weight, per axis.
    let axis =
        |d: usize, ratio: f64, offset: f64, len: usize, corner: bool| -> (isize, isize, f32) {
            let s = if corner {
                d as f64 * ratio
            } else {
                (d as f64 + 0.5 - offset) * ratio - 0.5
            };
            if corner {
                let i0 = (s.floor() as usize).min(len.saturating_sub(1));
                let i1 = (i0 + 1).min(len.saturating_sub(1));
                return (i0 as isize, i1 as isize, (s - s.floor()) as f32);
            }
            // Half-pixel sampling clamps at the frame's own edges; beyond them is padding.
            let inside = s >= -0.5 && s < len as f64 - 0.5;
            let sc = if inside {
                s.clamp(0.0, (len - 1) as f64)
            } else {
                s
            };
            let i0 = sc.floor() as isize;
            let i1 = if inside {
                (i0 + 1).min(len as isize - 1)
            } else {
                i0 + 1
            };
            (i0, i1, (sc - sc.floor()) as f32)
        };
    let order = match spec.order {
        ChannelOrder::Rgb => [(0, 0), (1, 1), (2, 2)],
        ChannelOrder::Bgr => [(2, 0), (1, 1), (0, 2)],
    };
    let plane = ow * oh;
    for dy in 0..oh {
        let (y0, y1, fy) = axis(dy, ry, oy, len_y, corner);
        for dx in 0..ow {
            let (x0, x1, fx) = axis(dx, rx, ox, len_x, corner);
            let (a, b, c, d) = (at(x0, y0), at(x1, y0), at(x0, y1), at(x1, y1));
            let i = dy * ow + dx;
            for (ch, plane_index) in order {
                let top = a[ch] + (b[ch] - a[ch]) * fx;
                let bottom = c[ch] + (d[ch] - c[ch]) * fx;
                out[plane_index * plane + i] = top + (bottom - top) * fy;
            }
        }
    }
    Ok(lb)
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
    planar(
        frame,
        InputSpec {
            width: size,
            height: size,
            order: ChannelOrder::Bgr,
            fit: Fit::PadBottomRight,
        },
        out,
    )
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
