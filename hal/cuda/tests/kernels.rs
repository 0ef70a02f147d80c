//! Every kernel against the CPU implementation it mirrors, on a real GPU. The expected
//! outputs come from the CPU code (`aegis cuda-golden --out DIR`, where libav and the models
//! crate are); `AEGIS_CUDA_GOLDEN=DIR` points here. They are `#[ignore]`d, so a plain
//! `cargo test` (CI, no GPU) lists them as ignored; `tools/device-test.sh` runs them on the
//! GPU machine with `--include-ignored`, where a missing driver or golden file fails them.

use std::path::PathBuf;

use aegis_cuda::Gpu;

const W: usize = 1920;
const H: usize = 1080;

fn setup() -> (Gpu, PathBuf) {
    assert!(
        aegis_cuda::driver_present(),
        "no CUDA driver on this machine"
    );
    let dir = std::env::var_os("AEGIS_CUDA_GOLDEN")
        .map(PathBuf::from)
        .expect("AEGIS_CUDA_GOLDEN (aegis cuda-golden --out DIR)");
    let gpu = Gpu::open(0, None).expect("open the GPU");
    (gpu, dir)
}

fn read(dir: &std::path::Path, name: &str) -> Vec<u8> {
    std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Counts differing bytes and the largest difference.
fn diff(got: &[u8], want: &[u8]) -> (usize, u8) {
    assert_eq!(got.len(), want.len());
    got.iter().zip(want).fold((0, 0), |(n, m), (a, b)| {
        let d = a.abs_diff(*b);
        (n + usize::from(d != 0), m.max(d))
    })
}

/// The float kernel too is exact, not close: it does the CPU's operations in the CPU's
/// order, each IEEE-rounded (NVRTC with `--fmad=false`, and its defaults: IEEE division,
/// no flush-to-zero), and the CPU side is plain f32 Rust, which never fuses or reorders.
#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn preprocess_is_bit_exact() {
    let (gpu, dir) = setup();
    let mut frame = gpu.alloc_nv12(W, H).unwrap();
    gpu.upload_nv12(&read(&dir, "frame.nv12"), &mut frame)
        .unwrap();
    let mut out = gpu.stream.alloc_zeros::<f32>(3 * 256 * 256).unwrap();
    gpu.preprocess(&frame, &mut out, 256, 256).unwrap();
    let got = gpu.download(&out).unwrap();
    let want: Vec<f32> = read(&dir, "preprocess.f32")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(got.len(), want.len());
    let (mut max, mut differ) = (0f32, 0usize);
    for (a, b) in got.iter().zip(&want) {
        max = max.max((a - b).abs());
        differ += usize::from(a.to_bits() != b.to_bits());
    }
    eprintln!(
        "preprocess: {differ} of {} values differ in their bits (max |Δ| {max:e})",
        want.len()
    );
    assert_eq!(differ, 0, "max |Δ| {max:e}");
}

#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn composite_is_bit_exact() {
    let (gpu, dir) = setup();
    let mut frame = gpu.alloc_nv12(W, H).unwrap();
    gpu.upload_nv12(&read(&dir, "frame.nv12"), &mut frame)
        .unwrap();
    let mut bg = gpu.alloc_nv12(W, H).unwrap();
    gpu.upload_nv12(&read(&dir, "bg.nv12"), &mut bg).unwrap();
    let mask = gpu.upload(&read(&dir, "mask.u8")).unwrap();
    gpu.composite(&mut frame, &bg, &mask, 256).unwrap();
    let got = gpu.download_nv12(&frame).unwrap();
    let (n, m) = diff(&got, &read(&dir, "composite.nv12"));
    eprintln!("composite: {n} bytes differ (max {m})");
    assert_eq!((n, m), (0, 0));
}

#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn blur_is_bit_exact() {
    let (gpu, dir) = setup();
    let m: serde_like::Blur = serde_like::blur(&read(&dir, "manifest.json"));
    let mut frame = gpu.alloc_nv12(W, H).unwrap();
    gpu.upload_nv12(&read(&dir, "frame.nv12"), &mut frame)
        .unwrap();
    let mut scratch = gpu.stream.alloc_zeros::<u8>(m.w * m.h).unwrap();
    gpu.blur_rect(&mut frame, m.x, m.y, m.w, m.h, m.factor, &mut scratch)
        .unwrap();
    let got = gpu.download_nv12(&frame).unwrap();
    let (n, mx) = diff(&got, &read(&dir, "blur.nv12"));
    eprintln!("blur: {n} bytes differ (max {mx})");
    assert_eq!((n, mx), (0, 0));
}

#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn rgb_to_nv12_is_bit_exact() {
    let (gpu, dir) = setup();
    let rgb = gpu.upload(&read(&dir, "rgb.rgb24")).unwrap();
    let mut out = gpu.alloc_nv12(W, H).unwrap();
    gpu.rgb_to_nv12(&rgb, 3 * W, &mut out).unwrap();
    let got = gpu.download_nv12(&out).unwrap();
    let (n, m) = diff(&got, &read(&dir, "rgb2nv12.nv12"));
    eprintln!("rgb_to_nv12: {n} bytes differ (max {m})");
    assert_eq!((n, m), (0, 0));
}

#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn surfaces_are_pooled_and_copies_counted() {
    let (gpu, _) = setup();
    let pool = aegis_cuda::DevicePool::new(&gpu, W, H, 2).unwrap();
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert!(
        pool.acquire().is_none(),
        "a full pool is backpressure, not growth"
    );
    assert_eq!(a.pitch % 256, 0);
    pool.release(a);
    assert_eq!(pool.available(), 1);
    pool.release(b);
    let before = gpu.host_copies();
    let f = pool.acquire().unwrap();
    let _ = gpu.download_nv12(&f).unwrap();
    assert_eq!(gpu.host_copies(), before + 1);
}

/// Planes the kernels did not allocate, as a Jetson's EGL mapping hands them over: luma and
/// CbCr in separate allocations, a pitch that is not `alloc_nv12`'s (not a multiple of 256),
/// padding bytes past each row's width. Each kernel runs on such planes through
/// `Nv12Planes` and must produce the golden output and leave the padding alone.
#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn kernels_work_in_place_on_planes_they_did_not_allocate() {
    use aegis_cuda::Nv12Planes;
    use aegis_cuda::cudarc::driver::DevicePtr;
    const P: usize = W + 72;
    const PAD: u8 = 0xA5;
    let (gpu, dir) = setup();
    let frame = read(&dir, "frame.nv12");
    let m = serde_like::blur(&read(&dir, "manifest.json"));
    // Runs `op` on the frame's pixels in two foreign planes; the packed result.
    let on_planes = |name: &str, op: &mut dyn FnMut(&mut Nv12Planes<'_>)| -> Vec<u8> {
        let mut y = vec![PAD; P * H];
        let mut uv = vec![PAD; P * H / 2];
        for r in 0..H {
            y[r * P..r * P + W].copy_from_slice(&frame[r * W..r * W + W]);
        }
        for r in 0..H / 2 {
            uv[r * P..r * P + W].copy_from_slice(&frame[(H + r) * W..(H + r) * W + W]);
        }
        let (y_dev, uv_dev) = (gpu.upload(&y).unwrap(), gpu.upload(&uv).unwrap());
        {
            let (yp, _y) = y_dev.device_ptr(&gpu.stream);
            let (uvp, _uv) = uv_dev.device_ptr(&gpu.stream);
            // SAFETY: both allocations hold P × rows bytes and live past the sync below.
            let mut planes = unsafe { Nv12Planes::new(yp, uvp, W, H, P) }.unwrap();
            op(&mut planes);
            gpu.sync().unwrap();
        }
        let (y, uv) = (
            gpu.download(&y_dev).unwrap(),
            gpu.download(&uv_dev).unwrap(),
        );
        let mut packed = Vec::with_capacity(W * H * 3 / 2);
        for (plane, rows) in [(&y, H), (&uv, H / 2)] {
            for r in 0..rows {
                let row = &plane[r * P..(r + 1) * P];
                assert!(
                    row[W..].iter().all(|&b| b == PAD),
                    "{name}: row {r} written past its width"
                );
                packed.extend_from_slice(&row[..W]);
            }
        }
        packed
    };
    let bg = {
        let mut bg = gpu.alloc_nv12(W, H).unwrap();
        gpu.upload_nv12(&read(&dir, "bg.nv12"), &mut bg).unwrap();
        bg
    };
    let mask = gpu.upload(&read(&dir, "mask.u8")).unwrap();
    let got = on_planes("composite", &mut |f| {
        gpu.composite(f, &bg, &mask, 256).unwrap()
    });
    assert_eq!(
        diff(&got, &read(&dir, "composite.nv12")),
        (0, 0),
        "composite"
    );
    let got = on_planes("blur", &mut |f| {
        let mut scratch = gpu.stream.alloc_zeros::<u8>(m.w * m.h).unwrap();
        gpu.blur_rect(f, m.x, m.y, m.w, m.h, m.factor, &mut scratch)
            .unwrap()
    });
    assert_eq!(diff(&got, &read(&dir, "blur.nv12")), (0, 0), "blur");
    let rgb = gpu.upload(&read(&dir, "rgb.rgb24")).unwrap();
    let got = on_planes("rgb_to_nv12", &mut |f| {
        gpu.rgb_to_nv12(&rgb, 3 * W, f).unwrap()
    });
    assert_eq!(
        diff(&got, &read(&dir, "rgb2nv12.nv12")),
        (0, 0),
        "rgb_to_nv12"
    );
    // The model input read from foreign planes equals the golden one, bit for bit, and
    // reading leaves the planes as they were.
    let mut out = gpu.stream.alloc_zeros::<f32>(3 * 256 * 256).unwrap();
    let untouched = on_planes("preprocess", &mut |f| {
        gpu.preprocess(&*f, &mut out, 256, 256).unwrap();
    });
    assert_eq!(untouched, frame, "preprocess wrote into its source");
    let want = read(&dir, "preprocess.f32");
    let got: Vec<u8> = gpu
        .download(&out)
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(diff(&got, &want), (0, 0), "preprocess");
    eprintln!(
        "kernels on foreign planes (pitch {P}): composite, blur, rgb_to_nv12, preprocess exact"
    );
}

/// The manifest's blur rectangle, without a JSON dependency in this crate.
mod serde_like {
    pub struct Blur {
        pub x: usize,
        pub y: usize,
        pub w: usize,
        pub h: usize,
        pub factor: usize,
    }

    pub fn blur(manifest: &[u8]) -> Blur {
        let text = String::from_utf8_lossy(manifest);
        let part = &text[text.find("\"blur\"").expect("blur in manifest")..];
        let num = |k: &str| -> usize {
            let i = part.find(&format!("\"{k}\"")).expect(k) + k.len() + 2;
            part[i..]
                .trim_start_matches([':', ' '])
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .expect(k)
        };
        Blur {
            x: num("x"),
            y: num("y"),
            w: num("w"),
            h: num("h"),
            factor: num("factor"),
        }
    }
}

/// The overview's GPU memory: the driver's figures, and an allocation shows in them.
#[test]
#[ignore = "needs a CUDA GPU and golden files: tools/device-test.sh runs it"]
fn device_memory_is_reported_and_grows_with_an_allocation() {
    let (gpu, _) = setup();
    let (free0, total) = gpu.memory().unwrap();
    assert!(total > 0 && free0 <= total, "{free0} of {total}");
    let block = gpu.stream.alloc_zeros::<u8>(256 << 20).unwrap();
    let (free1, _) = gpu.memory().unwrap();
    eprintln!("device memory: {total} bytes, free {free0} then {free1} after 256 MiB");
    assert!(free1 + (200 << 20) <= free0, "{free0} → {free1}");
    drop(block);
}
