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
/// Repetitions of every measurement (reported as min / median / max).
const REPS: usize = 5;
/// Launches of a captured graph per measurement.
const GRAPH_LAUNCHES: usize = 5;

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

/// Mean milliseconds of `f` per call when `RUNS` calls are captured in one CUDA graph and
/// the graph is launched (no per-call launch overhead).
fn time_graph_ms(
    gpu: &Gpu,
    mut f: impl FnMut() -> Result<(), CudaError>,
) -> Result<f64, CudaError> {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    gpu.stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)?;
    let mut captured = Ok(());
    for _ in 0..RUNS {
        captured = f();
        if captured.is_err() {
            break;
        }
    }
    // The capture always ends, also after a failed call (the stream is usable again).
    let graph = gpu.stream.end_capture(CUgraphInstantiate_flags(0))?;
    captured?;
    let graph = graph.ok_or_else(|| CudaError::Size("the capture made no graph".into()))?;
    graph.launch()?;
    let a = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    let b = gpu.ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))?;
    a.record(&gpu.stream)?;
    for _ in 0..GRAPH_LAUNCHES {
        graph.launch()?;
    }
    b.record(&gpu.stream)?;
    Ok(f64::from(a.elapsed_ms(&b)?) / (RUNS * GRAPH_LAUNCHES) as f64)
}

/// Minimum, median and maximum of repeated measurements.
#[derive(Debug, Clone, Copy)]
struct Spread {
    min: f64,
    median: f64,
    max: f64,
}

fn spread(mut v: Vec<f64>) -> Spread {
    v.sort_by(f64::total_cmp);
    Spread {
        min: v[0],
        median: v[v.len() / 2],
        max: v[v.len() - 1],
    }
}

impl Spread {
    /// `min–max (median)` with `digits` decimals.
    fn show(&self, digits: usize) -> String {
        format!(
            "{:.d$}–{:.d$} ({:.d$})",
            self.min,
            self.max,
            self.median,
            d = digits
        )
    }

    fn json(&self) -> String {
        format!(
            "{{\"min\":{:.4},\"median\":{:.4},\"max\":{:.4}}}",
            self.min, self.median, self.max
        )
    }
}

/// The numbers of the array under `"key"` in a small JSON text (the PyTorch script's).
fn json_numbers(text: &str, key: &str) -> Option<Vec<f64>> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = &text[at..];
    let open = rest.find('[')?;
    let close = rest.find(']')?;
    rest[open + 1..close]
        .split(',')
        .map(|n| n.trim().parse().ok())
        .collect()
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
    if let Some(clip) = arg("--decode-only") {
        // One decoder over the clip (three times) in a process of its own, started at the
        // `--start-at` time (Unix seconds, after every process has opened its context);
        // prints the pictures decoded and the end time (for decode_processes).
        let gpu = std::sync::Arc::new(Gpu::open(0, None)?);
        let data = std::fs::read(clip)?.repeat(3);
        if let Some(at) = arg("--start-at").and_then(|a| a.parse::<f64>().ok()) {
            let wait = at - unix_secs();
            if wait > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(wait));
            }
        }
        let (frames, _) = decode_once(&gpu, &data)?;
        println!("{frames} {:.6}", unix_secs());
        return Ok(());
    }
    let t0 = Instant::now();
    let gpu = std::sync::Arc::new(Gpu::open(0, None)?);
    let open_ms = t0.elapsed().as_secs_f64() * 1e3;
    // The bench's buffers are used on the one stream only: without cudarc's per-slice
    // events, whose waits on events recorded before a capture invalidated the CUDA graph
    // captures (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED on an H100).
    // SAFETY: every buffer below is allocated, used and freed on `gpu.stream` alone.
    unsafe { gpu.ctx.disable_event_tracking() };
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

    // Baselines: device-to-device copies from two 256 MiB buffers. At that size a copy is
    // DRAM-bound; the per-kernel copies below move the bytes their kernel moves (a copy of
    // n bytes reads n and writes n), from the same L2-resident sizes.
    let big = 256usize << 20;
    let big_src = gpu.stream.alloc_zeros::<u8>(big)?;
    let mut big_dst = gpu.stream.alloc_zeros::<u8>(big)?;
    let copy = |bytes: usize, dst: &mut cudarc::driver::CudaSlice<u8>| {
        gpu.stream
            .memcpy_dtod(&big_src.slice(..bytes), &mut dst.slice_mut(..bytes))
            .map_err(CudaError::from)
    };
    let nv12 = frame.pitch * H * 3 / 2;
    // (name, bytes read, bytes written): sizes from the kernels' arguments; the 256×256
    // preprocess reads at most 2×2 luma and 2×2 CbCr pairs per output pixel.
    let kernels: [(&str, usize, usize); 5] = [
        ("NV12 → RGB f32 planar, 1080p", nv12, 3 * W * H * 4),
        ("RGB24 → NV12, 1080p", 3 * W * H, nv12),
        ("composite (mask upsample + blend), 1080p", 2 * nv12, nv12),
        (
            "preprocess NV12 1080p → RGB f32 256×256",
            256 * 256 * 12,
            3 * 256 * 256 * 4,
        ),
        (
            "blur of a 640×480 region (factor 8)",
            640 * 480 * 3 / 2,
            640 * 480 * 3 / 2,
        ),
    ];
    let mut launch = |k: usize| -> Result<(), CudaError> {
        match k {
            0 => gpu.preprocess(&frame, &mut full_rgb, W, H),
            1 => gpu.rgb_to_nv12(&rgb, 3 * W, &mut out_nv12),
            2 => gpu.composite(&mut frame, &bg, &mask, 256),
            3 => gpu.preprocess(&frame, &mut model_in, 256, 256),
            _ => gpu.blur_rect(&mut frame, 400, 300, 640, 480, 8, &mut scratch),
        }
    };
    // Every figure is taken REPS times, interleaved (kernel, its copy, both in graphs), and
    // reported as min / median / max.
    let mut big_ms = Vec::new();
    let mut rows: Vec<[Vec<f64>; 4]> = (0..kernels.len()).map(|_| Default::default()).collect();
    let mut both_ms = Vec::new();
    for _ in 0..REPS {
        big_ms.push(time_ms(&gpu, || copy(big, &mut big_dst))?);
        for (k, &(_, r, w)) in kernels.iter().enumerate() {
            let same = (r + w).div_ceil(2);
            rows[k][0].push(time_ms(&gpu, || launch(k))?);
            rows[k][1].push(time_ms(&gpu, || copy(same, &mut big_dst))?);
            rows[k][2].push(time_graph_ms(&gpu, || launch(k))?);
            rows[k][3].push(time_graph_ms(&gpu, || copy(same, &mut big_dst))?);
        }
        both_ms.push(time_ms(&gpu, || {
            launch(2)?;
            launch(3)
        })?);
    }
    gpu.sync()?;
    let gbs = |bytes: f64, ms: f64| bytes / (ms * 1e-3) / 1e9;
    let dram = spread(big_ms.iter().map(|&ms| gbs(2.0 * big as f64, ms)).collect());
    println!(
        "GPU: {} (kernels {}; open {open_ms:.0} ms)",
        gpu.name, gpu.ptx_source
    );
    println!(
        "DRAM baseline: 256 MiB device-to-device copy {} GB/s read+write (min / median / max of {REPS})",
        dram.show(0)
    );
    println!(
        "each kernel vs a copy of the bytes it reads + writes, back to back (launches) and in a CUDA graph of {RUNS}; µs per call:"
    );
    println!(
        "  {:<42} {:>9} {:>18} {:>18} {:>18} {:>18} {:>14} {:>14} {:>9}",
        "kernel",
        "MB r+w",
        "kernel",
        "copy",
        "kernel (graph)",
        "copy (graph)",
        "copy/kernel",
        "(graph)",
        "GB/s/DRAM"
    );
    let mut json_rows = Vec::new();
    for (k, &(name, r, w)) in kernels.iter().enumerate() {
        let us = |i: usize| spread(rows[k][i].iter().map(|ms| ms * 1e3).collect());
        // Ratios per repetition: > 1 means the kernel beats a copy of its own bytes.
        let ratio = |c: usize, k_: usize| {
            spread(
                rows[k][c]
                    .iter()
                    .zip(&rows[k][k_])
                    .map(|(c, k)| c / k)
                    .collect(),
            )
        };
        let (plain, graph) = (ratio(1, 0), ratio(3, 2));
        let dram_frac = gbs((r + w) as f64, us(2).median * 1e-3) / dram.median;
        println!(
            "  {name:<42} {:>9.2} {:>18} {:>18} {:>18} {:>18} {:>14} {:>14} {dram_frac:>9.2}",
            (r + w) as f64 / 1e6,
            us(0).show(1),
            us(1).show(1),
            us(2).show(1),
            us(3).show(1),
            plain.show(2),
            graph.show(2)
        );
        json_rows.push(format!(
            "{{\"kernel\":\"{name}\",\"bytes\":{},\"us\":{},\"copy_us\":{},\"graph_us\":{},\"copy_graph_us\":{},\"copy_over_kernel\":{},\"copy_over_kernel_graph\":{},\"gbs_over_dram\":{dram_frac:.3}}}",
            r + w,
            us(0).json(),
            us(1).json(),
            us(2).json(),
            us(3).json(),
            plain.json(),
            graph.json()
        ));
    }
    let both = spread(both_ms.iter().map(|ms| ms * 1e3).collect());
    println!(
        "composite + preprocess per 1080p frame (mask given): {} µs",
        both.show(1)
    );
    let pre_graph = spread(rows[3][2].iter().map(|ms| ms * 1e3).collect());
    let pre_plain = spread(rows[3][0].iter().map(|ms| ms * 1e3).collect());
    let torch = arg("--torch").and_then(|p| std::fs::read_to_string(p).ok());
    let torch_eager = torch.as_deref().and_then(|t| json_numbers(t, "eager_us"));
    let torch_graph = torch.as_deref().and_then(|t| json_numbers(t, "graph_us"));
    for (what, t) in [
        ("eager", &torch_eager),
        ("under a CUDA graph", &torch_graph),
    ] {
        if let Some(t) = t {
            let t = spread(t.clone());
            println!(
                "  PyTorch {what}, same preprocess, same GPU: {} µs/frame → ours (launched) is {:.0}–{:.0}× faster, {:.0}× at the medians",
                t.show(1),
                t.min / pre_plain.max,
                t.max / pre_plain.min,
                t.median / pre_plain.median
            );
        }
    }
    println!(
        "host copies during the timed work: {}",
        gpu.host_copies() - copies_before
    );
    drop((big_src, big_dst));
    let mut nvdec_json = String::from("null");
    if let Some(clip) = arg("--h264") {
        nvdec_json = nvdec(&gpu, &clip, &mask, arg("--dump"))?;
    }
    if let Some(p) = arg("--json") {
        let list = |v: &Option<Vec<f64>>| v.as_ref().map_or("null".into(), |v| format!("{:?}", v));
        std::fs::write(
            p,
            format!(
                "{{\"gpu\":\"{}\",\"dram_copy_gbs\":{},\"kernels\":[{}],\"composite_preprocess_us\":{},\"preprocess_graph_us\":{},\"torch_eager_us\":{},\"torch_graph_us\":{},\"nvdec\":{nvdec_json}}}\n",
                gpu.name,
                dram.json(),
                json_rows.join(","),
                both.json(),
                pre_graph.json(),
                list(&torch_eager),
                list(&torch_graph),
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
    // Several decoders at once (the GPU has several NVDEC engines), one thread each, and
    // the same number of processes (a context each): where scaling stops, the thread CPU
    // time says whether the feeding threads are busy (parser, driver calls) or waiting.
    let mut parallel = Vec::new();
    let long = data.repeat(3);
    for k in [1usize, 2, 4, 7] {
        let t = decode_threads(gpu, &long, k)
            .map_err(|e| format!("NVDEC, {k} decoders in parallel: {e}"))?;
        let p = decode_processes(clip, k)?;
        println!(
            "NVDEC, {k} decoder(s): threads of one process {:.0} fps in total (feeding threads on a CPU {:.0} % of the time); {k} processes {:.0} fps",
            t.fps,
            100.0 * t.cpu_share,
            p
        );
        parallel.push(format!(
            "\"{k}\":{{\"threads_fps\":{:.1},\"thread_cpu_share\":{:.3},\"processes_fps\":{p:.1}}}",
            t.fps, t.cpu_share
        ));
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

/// What `k` decoders in `k` threads of this process did.
struct Parallel {
    /// Pictures per second, all decoders.
    fps: f64,
    /// The feeding threads' CPU time over their wall time, averaged.
    cpu_share: f64,
}

/// Seconds since the Unix epoch.
fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// This thread's CPU time so far (Linux: /proc/thread-self/schedstat, nanoseconds).
fn thread_cpu_secs() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(f64::NAN, |ns| ns * 1e-9)
}

/// Decodes `data` (Annex-B H.264) to the end on a new decoder: pictures, and this thread's
/// CPU seconds over the wall seconds.
fn decode_once(gpu: &std::sync::Arc<Gpu>, data: &[u8]) -> Result<(u64, f64), String> {
    use aegis_cuda::nvdec::{Codec, Decoder};
    gpu.ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let (c0, t0) = (thread_cpu_secs(), Instant::now());
    let mut dec = Decoder::new(gpu, Codec::H264, 16, 2).map_err(|e| e.to_string())?;
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
    let share = (thread_cpu_secs() - c0) / t0.elapsed().as_secs_f64();
    Ok((frames, share))
}

/// `k` decoders in `k` threads of this process, one context.
fn decode_threads(gpu: &std::sync::Arc<Gpu>, data: &[u8], k: usize) -> Result<Parallel, String> {
    let t0 = Instant::now();
    let results: Result<Vec<(u64, f64)>, String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..k).map(|_| s.spawn(|| decode_once(gpu, data))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or(Err("panicked".into())))
            .collect()
    });
    // A decoder that failed fails the benchmark (its frames are not quietly left out).
    let results = results?;
    let secs = t0.elapsed().as_secs_f64();
    Ok(Parallel {
        fps: results.iter().map(|r| r.0).sum::<u64>() as f64 / secs,
        cpu_share: results.iter().map(|r| r.1).sum::<f64>() / k as f64,
    })
}

/// `k` processes of this program (`--decode-only CLIP`: a CUDA context each), started
/// together: pictures per second, all of them, from the first start to the last end.
fn decode_processes(clip: &str, k: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let exe = std::env::current_exe()?;
    // Every process opens its context first (NVRTC, module load), then all start together.
    let start = unix_secs() + 3.0;
    let children: Vec<_> = (0..k)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--decode-only", clip, "--start-at", &format!("{start:.6}")])
                .stdout(std::process::Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let (mut frames, mut end) = (0u64, start);
    for c in children {
        let out = c.wait_with_output()?;
        if !out.status.success() {
            return Err(format!("a --decode-only process failed: {}", out.status).into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut words = text.split_whitespace().map(str::parse::<f64>);
        let (Some(Ok(n)), Some(Ok(at))) = (words.next(), words.next()) else {
            return Err(format!("--decode-only printed {text:?}, not frames and end time").into());
        };
        frames += n as u64;
        end = end.max(at);
    }
    Ok(frames as f64 / (end - start))
}
