//! `aegis-cuda-bench [--torch torch.json] [--json out.json] [--h264 CLIP [--dump DIR]]`: the CUDA kernels on a 1080p
//! NV12 frame, timed with CUDA events, against baselines measured in the same run:
//! a device-to-device copy of the same buffers (bandwidth) and, when given, PyTorch eager
//! doing the same preprocess on the same GPU (`tools/device/torch_preprocess.py`).

use std::time::Instant;

use aegis_cuda::{CudaError, Gpu};
use cudarc::driver::sys::CUevent_flags;

const W: usize = 1920;
const H: usize = 1080;
const RUNS: usize = 200;

/// Mean milliseconds of `f` over `RUNS` back-to-back launches, by CUDA events.
fn time_ms(gpu: &Gpu, mut f: impl FnMut() -> Result<(), CudaError>) -> Result<f64, CudaError> {
    for _ in 0..10 {
        f()?;
    }
    let a = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let b = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    a.record(&gpu.stream)?;
    for _ in 0..RUNS {
        f()?;
    }
    b.record(&gpu.stream)?;
    Ok(f64::from(a.elapsed_ms(&b)?) / RUNS as f64)
}

/// Runs the benchmark; an error is printed as its message (why the GPU cannot be used, say)
/// and the exit status is 1.
fn main() -> std::process::ExitCode {
    match bench() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn bench() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let t0 = Instant::now();
    let gpu = std::sync::Arc::new(Gpu::open(0, None)?);
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Inputs.
    let frame_bytes: Vec<u8> = (0..W * H * 3 / 2).map(|i| (i * 7 % 251) as u8).collect();
    let mut frame = gpu.alloc_nv12(W, H)?;
    gpu.upload_nv12(&frame_bytes, &mut frame)?;
    let mut bg = gpu.alloc_nv12(W, H)?;
    gpu.upload_nv12(
        &frame_bytes.iter().map(|b| b ^ 0x55).collect::<Vec<u8>>(),
        &mut bg,
    )?;
    let mask = gpu.upload(&(0..256 * 256).map(|i| (i % 256) as u8).collect::<Vec<u8>>())?;
    let rgb = gpu.upload(&(0..W * H * 3).map(|i| (i % 253) as u8).collect::<Vec<u8>>())?;
    let mut out_nv12 = gpu.alloc_nv12(W, H)?;
    let mut model_in = gpu.stream.alloc_zeros::<f32>(3 * 256 * 256)?;
    let mut full_rgb = gpu.stream.alloc_zeros::<f32>(3 * W * H)?;
    let mut scratch = gpu.stream.alloc_zeros::<u8>(W * H)?;
    let copies_before = gpu.host_copies();

    // Baseline: device-to-device copy of one NV12 surface (read + write).
    let mut copy_dst = gpu.stream.alloc_zeros::<u8>(frame.data.len())?;
    let memcpy_ms = time_ms(&gpu, || {
        gpu.stream.memcpy_dtod(&frame.data, &mut copy_dst)?;
        Ok(())
    })?;
    let nv12 = (frame.pitch * H * 3 / 2) as f64;
    // And at a size where a copy is bandwidth-bound rather than launch-bound (256 MiB).
    let big = 256usize << 20;
    let big_src = gpu.stream.alloc_zeros::<u8>(big)?;
    let mut big_dst = gpu.stream.alloc_zeros::<u8>(big)?;
    let big_ms = time_ms(&gpu, || {
        gpu.stream.memcpy_dtod(&big_src, &mut big_dst)?;
        Ok(())
    })?;
    drop((big_src, big_dst));
    let gbs = |bytes: f64, ms: f64| bytes / (ms * 1e-3) / 1e9;
    let memcpy_gbs = gbs(2.0 * nv12, memcpy_ms);
    let big_gbs = gbs(2.0 * big as f64, big_ms);

    // Full-frame kernels.
    let nv12_to_rgb_ms = time_ms(&gpu, || gpu.preprocess(&frame, &mut full_rgb, W, H))?;
    let nv12_to_rgb_gbs = gbs(nv12 + (3 * W * H * 4) as f64, nv12_to_rgb_ms);
    let rgb_to_nv12_ms = time_ms(&gpu, || gpu.rgb_to_nv12(&rgb, 3 * W, &mut out_nv12))?;
    let rgb_to_nv12_gbs = gbs((3 * W * H) as f64 + nv12, rgb_to_nv12_ms);
    // The composite reads frame and background and writes the frame (the 64 KB mask stays in cache).
    let composite_ms = time_ms(&gpu, || gpu.composite(&mut frame, &bg, &mask, 256))?;
    let composite_gbs = gbs(3.0 * nv12, composite_ms);
    let preprocess_ms = time_ms(&gpu, || gpu.preprocess(&frame, &mut model_in, 256, 256))?;
    let both_ms = time_ms(&gpu, || {
        gpu.composite(&mut frame, &bg, &mask, 256)?;
        gpu.preprocess(&frame, &mut model_in, 256, 256)
    })?;
    let blur_ms = time_ms(&gpu, || {
        gpu.blur_rect(&mut frame, 400, 300, 640, 480, 8, &mut scratch)
    })?;
    gpu.sync()?;
    let torch_us: Option<f64> = arg("--torch")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| {
            let i = t.find("\"preprocess_us\"")? + "\"preprocess_us\"".len();
            t[i..]
                .trim_start_matches([':', ' '])
                .split([',', '}'])
                .next()?
                .trim()
                .parse()
                .ok()
        });
    let pre_us = preprocess_ms * 1e3;
    println!(
        "GPU: {} (kernels {}; open {open_ms:.0} ms)",
        gpu.name, gpu.ptx_source
    );
    println!(
        "baseline D2D memcpy of a 1080p NV12 surface: {:.1} µs, {memcpy_gbs:.0} GB/s read+write (256 MiB copy: {big_gbs:.0} GB/s)",
        memcpy_ms * 1e3
    );
    for (name, ms, g) in [
        (
            "NV12 → RGB f32 planar (1080p)",
            nv12_to_rgb_ms,
            nv12_to_rgb_gbs,
        ),
        ("RGB24 → NV12 (1080p)", rgb_to_nv12_ms, rgb_to_nv12_gbs),
        (
            "composite (mask upsample + blend, 1080p)",
            composite_ms,
            composite_gbs,
        ),
    ] {
        println!(
            "{name}: {:.1} µs, {g:.0} GB/s effective = {:.2}× memcpy",
            ms * 1e3,
            g / memcpy_gbs
        );
    }
    println!("preprocess NV12 1080p → RGB f32 256×256: {pre_us:.2} µs/frame");
    if let Some(t) = torch_us {
        println!(
            "  PyTorch eager, same operation, same GPU: {t:.1} µs/frame → {:.0}× faster",
            t / pre_us
        );
    }
    println!(
        "composite + preprocess per 1080p frame (mask given): {:.1} µs",
        both_ms * 1e3
    );
    println!(
        "blur of a 640×480 region (factor 8): {:.1} µs",
        blur_ms * 1e3
    );
    println!(
        "host copies during the timed work: {}",
        gpu.host_copies() - copies_before
    );
    let mut nvdec_json = String::from("null");
    if let Some(clip) = arg("--h264") {
        nvdec_json = nvdec(&gpu, &clip, &mask, arg("--dump"))?;
    }
    if let Some(p) = arg("--json") {
        std::fs::write(
            p,
            format!(
                "{{\"gpu\":\"{}\",\"memcpy_gbs\":{memcpy_gbs:.1},\"memcpy_256mib_gbs\":{big_gbs:.1},\"nv12_to_rgb_gbs\":{nv12_to_rgb_gbs:.1},\"rgb_to_nv12_gbs\":{rgb_to_nv12_gbs:.1},\"composite_gbs\":{composite_gbs:.1},\"preprocess_us\":{pre_us:.3},\"torch_preprocess_us\":{},\"composite_preprocess_us\":{:.2},\"blur_us\":{:.2},\"nvdec\":{nvdec_json}}}\n",
                gpu.name,
                torch_us.map_or("null".into(), |t| format!("{t:.2}")),
                both_ms * 1e3,
                blur_ms * 1e3
            ),
        )?;
    }
    Ok(())
}

/// SHA-256 (hex) of every picture NVDEC decodes from `data`, in display order, each taken
/// as tightly packed NV12 (`w*h` luma bytes, then `w*h/2` interleaved CbCr): what
/// `tools/device/cpu_decode.py` compares with libavcodec's pictures. Not timed.
fn frame_hashes(
    gpu: &std::sync::Arc<Gpu>,
    data: &[u8],
) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    use aegis_cuda::nvdec::{Codec, Decoder};
    use sha2::Digest;
    let mut dec = Decoder::new(gpu, Codec::H264, 16, 2)?;
    let mut hashes = Vec::new();
    let mut drain = |dec: &mut Decoder| -> Result<(), Box<dyn std::error::Error>> {
        while let Some(d) = dec.next_frame() {
            let nv12 = gpu.download_nv12(&d.frame)?;
            d.pool.release(d.frame);
            hashes.push(
                sha2::Sha256::digest(&nv12)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
            );
        }
        Ok(())
    };
    for chunk in data.chunks(2048) {
        while !dec.feed(chunk, None)? {
            drain(&mut dec)?;
        }
        drain(&mut dec)?;
    }
    dec.flush()?;
    drain(&mut dec)?;
    if dec.stats().overrun > 0 {
        return Err(format!("{} frames overran the output pool", dec.stats().overrun).into());
    }
    Ok(hashes)
}

/// NVDEC over an Annex-B H.264 file: decode-only fps, then the full device pipeline
/// (decode → composite → preprocess → blur → the one download a CPU encoder needs) with its
/// host copies per frame. With `dump`, frames 0 and 100 are written there as NV12 and every
/// frame's hash to `nvdec-frames.sha256`, for the comparison with a CPU decoder.
fn nvdec(
    gpu: &std::sync::Arc<Gpu>,
    clip: &str,
    mask: &cudarc::driver::CudaSlice<u8>,
    dump: Option<String>,
) -> Result<String, Box<dyn std::error::Error>> {
    use aegis_cuda::nvdec::{Codec, Decoder};
    let data = std::fs::read(clip)?;
    // Pass 1: decode only.
    let run = |full: bool, delay: u32| -> Result<(u64, f64, u64), Box<dyn std::error::Error>> {
        let mut dec = Decoder::new(gpu, Codec::H264, 16, delay)?;
        let mut bg: Option<aegis_cuda::DeviceNv12> = None;
        let mut model_in = gpu.stream.alloc_zeros::<f32>(3 * 256 * 256)?;
        let mut scratch = gpu.stream.alloc_zeros::<u8>(W * H)?;
        let copies0 = gpu.host_copies();
        let t0 = Instant::now();
        let mut frames = 0u64;
        let mut handle = |dec: &mut Decoder,
                          frames: &mut u64|
         -> Result<(), Box<dyn std::error::Error>> {
            while let Some(d) = dec.next_frame() {
                let mut f = d.frame;
                if let Some(dir) = &dump
                    && !full
                    && (*frames == 0 || *frames == 100)
                {
                    std::fs::write(format!("{dir}/nvdec-{frames}.nv12"), gpu.download_nv12(&f)?)?;
                }
                if full {
                    let b = match bg.take() {
                        Some(b) => b,
                        None => gpu.alloc_nv12(f.width, f.height)?,
                    };
                    gpu.composite(&mut f, &b, mask, 256)?;
                    gpu.preprocess(&f, &mut model_in, 256, 256)?;
                    gpu.blur_rect(&mut f, 400, 300, 640, 480, 8, &mut scratch)?;
                    let _ = gpu.download_nv12(&f)?; // what a CPU encoder would take
                    bg = Some(b);
                }
                d.pool.release(f);
                *frames += 1;
            }
            Ok(())
        };
        // Small chunks: a demuxer hands one access unit per feed; a raw byte stream is cut
        // fine enough that one feed never yields more pictures than the free surfaces.
        for chunk in data.chunks(2048) {
            while !dec.feed(chunk, None)? {
                handle(&mut dec, &mut frames)?;
            }
            handle(&mut dec, &mut frames)?;
        }
        dec.flush()?;
        handle(&mut dec, &mut frames)?;
        gpu.sync()?;
        let secs = t0.elapsed().as_secs_f64();
        let st = dec.stats();
        if st.overrun > 0 {
            return Err(format!("{} frames overran the output pool", st.overrun).into());
        }
        Ok((frames, frames as f64 / secs, gpu.host_copies() - copies0))
    };
    if let Some(dir) = &dump {
        let hashes = frame_hashes(gpu, &data)?;
        std::fs::write(
            format!("{dir}/nvdec-frames.sha256"),
            hashes.join("\n") + "\n",
        )?;
        println!(
            "NVDEC frames hashed for the comparison with libavcodec: {}",
            hashes.len()
        );
    }
    let (n, fps0, _) = run(false, 0)?;
    let (_, fps, _) = run(false, 2)?;
    let (n2, full_fps, copies) = run(true, 2)?;
    let per_frame = copies as f64 / n2.max(1) as f64;
    // Several decoders at once (the GPU has several NVDEC engines), one thread each.
    let mut parallel = Vec::new();
    for k in [2usize, 4, 7] {
        let t0 = Instant::now();
        let total: Result<u64, String> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..k)
                .map(|_| {
                    s.spawn(|| -> Result<u64, String> {
                        gpu.ctx.bind_to_thread().map_err(|e| e.to_string())?;
                        let mut dec =
                            Decoder::new(gpu, Codec::H264, 16, 2).map_err(|e| e.to_string())?;
                        let mut frames = 0u64;
                        let drain = |dec: &mut Decoder, frames: &mut u64| {
                            while let Some(d) = dec.next_frame() {
                                d.pool.release(d.frame);
                                *frames += 1;
                            }
                        };
                        for chunk in data.chunks(2048) {
                            while !dec.feed(chunk, None).map_err(|e| e.to_string())? {
                                drain(&mut dec, &mut frames);
                            }
                            drain(&mut dec, &mut frames);
                        }
                        dec.flush().map_err(|e| e.to_string())?;
                        drain(&mut dec, &mut frames);
                        Ok(frames)
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().unwrap_or(Err("panicked".into())))
                .sum()
        });
        // A decoder that failed fails the benchmark (its frames are not quietly left out).
        let total = total.map_err(|e| format!("NVDEC, {k} decoders in parallel: {e}"))?;
        let agg = total as f64 / t0.elapsed().as_secs_f64();
        println!("NVDEC, {k} decoders in parallel: {total} frames, {agg:.0} fps in total");
        parallel.push(format!("\"{k}\":{agg:.1}"));
    }
    println!(
        "NVDEC H.264 1080p decode only: {n} frames, {fps:.0} fps (display delay 2; delay 0: {fps0:.0} fps)"
    );
    println!(
        "full device pipeline (NVDEC → composite → preprocess → blur → download): {full_fps:.0} fps, host copies per frame {per_frame:.2} (the final download only)"
    );
    Ok(format!(
        "{{\"frames\":{n},\"decode_fps\":{fps:.1},\"decode_fps_delay0\":{fps0:.1},\"parallel_fps\":{{{}}},\"pipeline_fps\":{full_fps:.1},\"host_copies_per_frame\":{per_frame:.2}}}",
        parallel.join(",")
    ))
}
