//! `aegis cuda-golden --out DIR` (hidden): inputs and the outputs of the CPU implementations
//! the CUDA kernels must reproduce, written here (where libav and the models crate live) and
//! carried to the GPU machine, whose test binary has neither. Deterministic: the same files
//! every time.
//!
//! Files (tightly packed, little-endian): `frame.nv12` and `bg.nv12` (1920×1080), `mask.u8`
//! (256×256), `rgb.rgb24` (1920×1080), and the expected `preprocess.f32` (3×256×256 planar
//! RGB, `Fit::Stretch`), `composite.nv12`, `blur.nv12` (rectangle and factor in
//! `manifest.json`), `rgb2nv12.nv12`.

use std::path::Path;

use aegis_hal::pixel::{Matrix, Plane, PlaneMut, rgb24_to_nv12, scale_plane};
use aegis_hal::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};
use aegis_models::preprocess::{ChannelOrder, Fit, InputSpec, planar};
use aegis_models::stages::pixels::{BgPlanes, Rect, blur_rect, composite};

const W: usize = 1920;
const H: usize = 1080;
const S: usize = 256;

struct Rng(aegis_hal::rng::XorShift);
impl Rng {
    fn next(&mut self) -> u8 {
        (self.0.next_u64() >> 24) as u8
    }
}

/// A frame with gradients, edges and noise (every code path of the kernels sees varied data).
fn pattern(pool: &SurfacePool, seed: u64) -> Frame {
    let mut f = Frame::from_pool(pool, StreamId::new("golden"), 0, 0, 0).expect("pool frame");
    let mut r = Rng(aegis_hal::rng::XorShift(seed));
    let [y, uv, _] = f.planes_mut();
    for row in 0..H {
        for x in 0..W {
            let g = ((x * 255 / W) as u8).wrapping_add(((row / 64) as u8).wrapping_mul(17));
            y.data[row * y.stride + x] = if (x / 97 + row / 61) % 5 == 0 {
                r.next()
            } else {
                g
            };
        }
    }
    for row in 0..H / 2 {
        for x in 0..W {
            uv.data[row * uv.stride + x] =
                16u8.saturating_add(((x + 3 * row) % 225) as u8) ^ (r.next() & 7);
        }
    }
    f
}

fn packed(f: &Frame) -> Vec<u8> {
    let [y, uv, _] = f.planes();
    let mut out = Vec::with_capacity(W * H * 3 / 2);
    for row in 0..H {
        out.extend_from_slice(&y.data[row * y.stride..row * y.stride + W]);
    }
    for row in 0..H / 2 {
        out.extend_from_slice(&uv.data[row * uv.stride..row * uv.stride + W]);
    }
    out
}

/// Writes the golden files into `out`.
pub fn write(out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::Nv12, W, H), 4);
    let frame = pattern(&pool, 1);
    let bg_frame = pattern(&pool, 2);
    std::fs::write(out.join("frame.nv12"), packed(&frame))?;
    let bg_packed = packed(&bg_frame);
    std::fs::write(out.join("bg.nv12"), &bg_packed)?;
    // Preprocess.
    let mut pre = vec![0f32; 3 * S * S];
    planar(
        &frame,
        InputSpec {
            width: S,
            height: S,
            order: ChannelOrder::Rgb,
            fit: Fit::Stretch,
        },
        &mut pre,
    )?;
    std::fs::write(
        out.join("preprocess.f32"),
        pre.iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<u8>>(),
    )?;
    // Mask: a soft blob with hard 0/255 regions and noise.
    let mut r = Rng(aegis_hal::rng::XorShift(3));
    let mask: Vec<u8> = (0..S * S)
        .map(|i| {
            let (x, y) = ((i % S) as f64 - 128.0, (i / S) as f64 - 140.0);
            let d = (x * x + y * y).sqrt();
            let v = ((110.0 - d) * 4.0).clamp(0.0, 255.0) as u8;
            if i % 13 == 0 { r.next() } else { v }
        })
        .collect();
    std::fs::write(out.join("mask.u8"), &mask)?;
    // Composite, as the virtual background stage does it.
    let mut comp = pattern(&pool, 1);
    let (mut ay, mut ac) = (vec![0u8; W * H], vec![0u8; W / 2 * H / 2]);
    scale_plane(Plane::new(&mask, S), S, S, PlaneMut::new(&mut ay, W), W, H)?;
    scale_plane(
        Plane::new(&mask, S),
        S,
        S,
        PlaneMut::new(&mut ac, W / 2),
        W / 2,
        H / 2,
    )?;
    let bg = BgPlanes {
        size: (W, H),
        format: Some(PixelFormat::Nv12),
        y: bg_packed[..W * H].to_vec(),
        c: bg_packed[W * H..].to_vec(),
    };
    composite(&mut comp, &bg, &ay, &ac);
    std::fs::write(out.join("composite.nv12"), packed(&comp))?;
    // Moderation blur.
    let (rect, factor) = (
        Rect {
            x: 400,
            y: 300,
            w: 640,
            h: 480,
        },
        8,
    );
    let mut blurred = pattern(&pool, 1);
    let mut small = Vec::new();
    blur_rect(&mut blurred, rect, factor, &mut small);
    std::fs::write(out.join("blur.nv12"), packed(&blurred))?;
    // RGB → NV12.
    let mut r = Rng(aegis_hal::rng::XorShift(4));
    let rgb: Vec<u8> = (0..W * H * 3)
        .map(|i| {
            if i % 7 == 0 {
                r.next()
            } else {
                ((i / 3) % 251) as u8
            }
        })
        .collect();
    std::fs::write(out.join("rgb.rgb24"), &rgb)?;
    let (mut y, mut uv) = (vec![0u8; W * H], vec![0u8; W * H / 2]);
    rgb24_to_nv12(
        Plane::new(&rgb, 3 * W),
        W,
        H,
        Matrix::Bt601,
        PlaneMut::new(&mut y, W),
        PlaneMut::new(&mut uv, W),
    )?;
    y.extend_from_slice(&uv);
    std::fs::write(out.join("rgb2nv12.nv12"), &y)?;
    std::fs::write(
        out.join("manifest.json"),
        serde_json::to_string_pretty(&serde_json::json!({
            "width": W, "height": H, "mask": S, "preprocess": [S, S],
            "blur": { "x": rect.x, "y": rect.y, "w": rect.w, "h": rect.h, "factor": factor },
        }))?,
    )?;
    println!("golden files for the CUDA kernels in {}", out.display());
    Ok(())
}
