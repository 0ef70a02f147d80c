//! `aegis bench stages`: per-stage latency (p50/p99) of the inference stages on real decoded
//! 720p frames, split into engine time and pre/post-processing; the gain of batching two
//! streams into one call; and full-pipeline throughput with the stages on, against the same
//! pipeline without them, in the same process. Nothing here asserts on time.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use aegis_config::{AgentConfig, PipelineConfig, SinkConfig, StageConfig};
use aegis_hal::source::{FileSource, FileSourceSettings};
use aegis_hal::{Frame, StreamId};
use serde::Serialize;

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions};
use crate::runtime::{Backend, select_backend};

/// One stage's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct StageResult {
    /// The stage kind.
    pub stage: String,
    /// Its model.
    pub model: String,
    /// Calls timed.
    pub calls: usize,
    /// Median latency of a call, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Mean engine (ONNX Runtime) time per call, ms.
    pub engine_ms: f64,
    /// Mean time outside the engine (pre/post-processing, compositing), ms.
    pub pre_post_ms: f64,
    /// Heap allocations per call (ours and ONNX Runtime's, whole process).
    pub allocs_per_call: f64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct StagesBenchResult {
    /// Frame size.
    pub width: usize,
    /// Frame size.
    pub height: usize,
    /// ONNX Runtime execution provider.
    pub provider: String,
    /// The backend the frames were decoded and processed on (`cpu`, or `cuda`: NVDEC
    /// frames in device memory, the stages' device paths).
    pub backend: String,
    /// Per stage (moderation and detection timed with the detector on every frame, whatever
    /// their `every_n_frames`).
    pub stages: Vec<StageResult>,
    /// Each model called by 1, 2 and 8 streams at once (batched into shared calls).
    pub throughput: Vec<ModelThroughput>,
    /// Full pipeline fps per stream, all stages on, 1 stream.
    pub pipeline_fps_1: f64,
    /// Full pipeline fps per stream, all stages on, 2 streams.
    pub pipeline_fps_2: f64,
    /// The same pipeline without inference stages, 1 stream (baseline).
    pub baseline_fps_1: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn decode_frames(clip: &Path, n: usize, backend: &Backend) -> anyhow::Result<Vec<Frame>> {
    let mut src = FileSource::open(FileSourceSettings {
        looping: true,
        // Held all at once: NVDEC feeds only while half its pool is free, and its end of
        // stream waits for every surface back, so the pool is twice the frames and the
        // source is dropped, not drained, after the n-th.
        pool_frames: 2 * n + 8,
        decoder_threads: 0,
        gpu: backend.stream_gpu("bench"),
        ..FileSourceSettings::new(clip, StreamId::new("bench"))
    })?;
    let mut frames = Vec::with_capacity(n);
    while frames.len() < n {
        match src.next_frame()? {
            Some(f) => frames.push(f),
            None => break,
        }
    }
    drop(src);
    anyhow::ensure!(!frames.is_empty(), "{} has no frames", clip.display());
    Ok(frames)
}

fn model_of(s: &StageConfig) -> Option<&str> {
    s.model().map(|m| m.name)
}

/// Times each model stage of `cfg` alone over `frames`.
fn time_stages(
    cfg: &AgentConfig,
    inference: &Inference,
    frames: &mut [Frame],
    rounds: usize,
) -> anyhow::Result<Vec<StageResult>> {
    let mut out = Vec::new();
    for s in &cfg.pipeline.stages {
        let Some(model) = model_of(s) else { continue };
        eprintln!("bench stages: timing {} ({model})", s.kind());
        // Moderation and detection are timed per analysis: the detector on every frame.
        let mut s = s.clone();
        match &mut s {
            StageConfig::Moderate(m) => m.every_n_frames = 1,
            StageConfig::Detect(d) => d.every_n_frames = 1,
            _ => {}
        }
        let mut stage = inference.build_stages(std::slice::from_ref(&s))?.remove(0);
        let loaded = inference
            .registry()
            .get(model)
            .ok_or_else(|| anyhow::anyhow!("model {model} not loaded"))?;
        for f in frames.iter_mut().take(3) {
            let _ = stage.process(f);
        }
        let before = loaded.stats();
        let mut lat = Vec::with_capacity(rounds * frames.len());
        let a0 = crate::alloc::count();
        for _ in 0..rounds {
            for f in frames.iter_mut() {
                let t0 = Instant::now();
                stage.process(f).map_err(|e| anyhow::anyhow!("{e}"))?;
                // A device frame's kernels run asynchronously: the call is done when its
                // stream is.
                if let Some(d) = &f.device {
                    d.gpu().sync()?;
                }
                lat.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        let allocs = crate::alloc::count() - a0;
        let after = loaded.stats();
        let calls = lat.len();
        let mean = lat.iter().sum::<f64>() / calls as f64;
        let engine = (after.engine - before.engine).as_secs_f64() * 1e3 / calls as f64;
        lat.sort_by(f64::total_cmp);
        out.push(StageResult {
            stage: stage.kind().to_string(),
            model: model.to_string(),
            calls,
            p50_ms: percentile(&lat, 0.5),
            p99_ms: percentile(&lat, 0.99),
            engine_ms: engine,
            pre_post_ms: mean - engine,
            allocs_per_call: allocs as f64 / calls as f64,
        });
    }
    Ok(out)
}

/// One model called by `clients` threads at once (one request each per turn, batched
/// into shared calls): requests per second, requests per call, per-request latency.
#[derive(Debug, Clone, Serialize)]
pub struct ModelThroughput {
    /// The model.
    pub model: String,
    /// Threads calling it at once (the largest batch a call can get).
    pub clients: usize,
    /// Requests per second, all clients.
    pub requests_per_s: f64,
    /// Requests per inference call (the batch size reached).
    pub batch: f64,
    /// Median request latency, ms.
    pub p50_ms: f64,
    /// 99th percentile request latency, ms.
    pub p99_ms: f64,
}

/// `model` called by `clients` threads, `requests` each: from host buffers, or with `gpu`
/// (the session binds device memory) from device buffers, as the stages on the cuda
/// backend call it.
fn model_throughput(
    inference: &Inference,
    model: &str,
    clients: usize,
    requests: usize,
    gpu: Option<&Arc<aegis_hal::backend::Gpu>>,
) -> anyhow::Result<ModelThroughput> {
    use aegis_models::gpu_io::{DeviceItem, device_ptr, device_ptr_mut};
    let loaded = inference
        .registry()
        .get(model)
        .ok_or_else(|| anyhow::anyhow!("model {model} not loaded"))?;
    let s = loaded.spec.input_size;
    let in_len = 3 * s * s;
    let out_len: usize = loaded.output_shape.iter().product();
    let gpu = gpu.filter(|_| loaded.client().on_device());
    let before = loaded.stats();
    let t0 = Instant::now();
    let mut lat = std::thread::scope(|scope| -> anyhow::Result<Vec<f64>> {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let mut c = loaded.client();
                scope.spawn(move || -> anyhow::Result<Vec<f64>> {
                    let mut lat = Vec::with_capacity(requests);
                    let mut bufs = match gpu {
                        Some(g) => Some((
                            g.upload(&vec![0.5f32; in_len])?,
                            g.alloc_zeros::<f32>(out_len)?,
                        )),
                        None => None,
                    };
                    c.input(in_len).fill(0.5);
                    for _ in 0..requests {
                        let t = Instant::now();
                        match (&mut bufs, gpu) {
                            (Some((input, output)), Some(g)) => {
                                c.run_device(DeviceItem {
                                    input: device_ptr(input, &g.stream),
                                    output: device_ptr_mut(output, &g.stream),
                                    output_len: out_len,
                                })?;
                            }
                            _ => {
                                c.run()?;
                            }
                        }
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("bench thread panicked"))??,
            );
        }
        Ok(all)
    })?;
    let secs = t0.elapsed().as_secs_f64();
    let after = loaded.stats();
    lat.sort_by(f64::total_cmp);
    Ok(ModelThroughput {
        model: model.to_string(),
        clients,
        requests_per_s: lat.len() as f64 / secs,
        batch: (after.items - before.items) as f64 / (after.batches - before.batches).max(1) as f64,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
    })
}

fn pipeline_fps(
    pipeline: &PipelineConfig,
    inference: Option<Arc<Inference>>,
    backend: &Backend,
) -> anyhow::Result<f64> {
    let metrics = Arc::new(Metrics::new(backend.kind.as_str()));
    let opts = RunOptions {
        force_realtime: Some(false),
        decoder_threads: 0,
        inference,
        backend: Some(backend.clone()),
        ..RunOptions::default()
    };
    let t0 = Instant::now();
    let reports = Pipeline::start(pipeline, metrics, &opts)?.wait();
    let secs = t0.elapsed().as_secs_f64();
    let delivered = reports.iter().map(|r| r.delivered).min().unwrap_or(0);
    Ok(delivered as f64 / secs)
}

/// Runs every measurement with the stages and models of `cfg` on `clip`.
pub fn run(
    cfg: &AgentConfig,
    clip: &Path,
    frames: usize,
    rounds: usize,
) -> anyhow::Result<StagesBenchResult> {
    aegis_hal::init();
    let inference = Inference::load(&cfg.inference, &cfg.pipeline, cfg.backend.cuda_device)?;
    // On `backend.kind: cuda`, NVDEC frames in device memory through the stages' device
    // paths (and the models' device binding when their provider is a GPU one).
    let backend = select_backend(cfg)?;
    let gpu = backend.gpu.as_ref();
    // Progress on standard error: a phase that stalls on a GPU machine is named.
    let phase = |what: &str| eprintln!("bench stages: {what}");
    let mut decoded = decode_frames(clip, frames, &backend)?;
    phase(&format!("{} frames decoded", decoded.len()));
    let (width, height) = (decoded[0].layout.width, decoded[0].layout.height);
    let stages = time_stages(cfg, &inference, &mut decoded, rounds)?;
    phase("stages timed");
    let mut models: Vec<&str> = cfg.pipeline.stages.iter().filter_map(model_of).collect();
    models.sort_unstable();
    models.dedup();
    let mut throughput = Vec::new();
    for m in models {
        for clients in [1, 2, 8] {
            phase(&format!("{m} at {clients} streams"));
            throughput.push(model_throughput(
                &inference,
                m,
                clients,
                frames * rounds,
                gpu,
            )?);
        }
    }
    drop(decoded);
    let provider = inference.provider();
    // Whole pipelines: the clip once per stream, discarded at the end (no encoder), so the
    // numbers are about the stages.
    let source = |id: &str| {
        let mut s = cfg.pipeline.sources[0].clone();
        s.id = id.to_string();
        s.url = format!("file:{}", clip.display());
        s.loop_ = false;
        s.realtime = false;
        s.max_frames = Some((frames * rounds) as u64);
        s
    };
    let mut p1 = cfg.pipeline.clone();
    p1.sources = vec![source("a")];
    p1.sinks = vec![SinkConfig::Discard(Default::default())];
    let mut p2 = p1.clone();
    p2.sources.push(source("b"));
    let mut base = p1.clone();
    base.stages.retain(|s| model_of(s).is_none());
    phase("pipelines");
    let baseline_fps_1 = pipeline_fps(&base, None, &backend)?;
    let pipeline_fps_1 = pipeline_fps(&p1, Some(inference.clone()), &backend)?;
    let pipeline_fps_2 = pipeline_fps(&p2, Some(inference.clone()), &backend)?;
    Ok(StagesBenchResult {
        width,
        height,
        provider,
        backend: backend.kind.to_string(),
        stages,
        throughput,
        pipeline_fps_1,
        pipeline_fps_2,
        baseline_fps_1,
    })
}

/// Prints the report.
pub fn print(r: &StagesBenchResult) {
    println!(
        "stages at {}x{} (backend {}, provider {}):",
        r.width, r.height, r.backend, r.provider
    );
    println!(
        "  {:<20} {:<12} {:>6} {:>9} {:>9} {:>10} {:>12} {:>12}",
        "stage", "model", "calls", "p50 ms", "p99 ms", "engine ms", "pre/post ms", "allocs/call"
    );
    for s in &r.stages {
        println!(
            "  {:<20} {:<12} {:>6} {:>9.1} {:>9.1} {:>10.1} {:>12.1} {:>12.1}",
            s.stage,
            s.model,
            s.calls,
            s.p50_ms,
            s.p99_ms,
            s.engine_ms,
            s.pre_post_ms,
            s.allocs_per_call
        );
    }
    println!(
        "  {:<12} {:>7} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "model", "streams", "requests/s", "vs 1", "per call", "p50 ms", "p99 ms"
    );
    for t in &r.throughput {
        let one = r
            .throughput
            .iter()
            .find(|o| o.model == t.model && o.clients == 1)
            .map_or(f64::NAN, |o| t.requests_per_s / o.requests_per_s);
        println!(
            "  {:<12} {:>7} {:>11.1} {:>7.2}x {:>9.2} {:>9.2} {:>9.2}",
            t.model, t.clients, t.requests_per_s, one, t.batch, t.p50_ms, t.p99_ms
        );
    }
    println!(
        "pipeline fps per stream with every stage: 1 stream {:.1}, 2 streams {:.1}; without the model stages {:.1} (ratio {:.2})",
        r.pipeline_fps_1,
        r.pipeline_fps_2,
        r.baseline_fps_1,
        r.pipeline_fps_1 / r.baseline_fps_1
    );
}
