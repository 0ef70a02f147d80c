//! `aegis bench backends`: the same pipeline on the cpu and the cuda backend, in one
//! process, on one clip: frames per second, copies per frame and, on the GPU, host↔device
//! transfers per frame (whole frames and model tensors apart).
//!
//! The pipeline is the clip (once per stream, not paced) → the config's stages → a discard
//! sink (what the backend itself costs) or the config's record sink (H.264 on the CPU after
//! the one download: what an appliance without NVENC does).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use aegis_config::{AgentConfig, BackendKind, InferenceProvider, PipelineConfig, SinkConfig};

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions};
use crate::runtime::{Backend, select_backend};

/// One measured run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendRun {
    /// `cpu` or `cuda`.
    pub backend: String,
    /// The ONNX Runtime provider the models ran on (`cpu`, `cuda`, `tensorrt`; empty
    /// without model stages).
    pub provider: String,
    /// `discard` or `record`.
    pub sink: String,
    /// Streams at once.
    pub streams: usize,
    /// Frames delivered, all streams.
    pub frames: u64,
    /// Frames per second per stream (the slowest stream).
    pub fps_per_stream: f64,
    /// Frames per second, all streams.
    pub fps_total: f64,
    /// Pixel copies per frame from decode to the sink's input (CPU: decoder picture →
    /// surface; CUDA: NVDEC picture → device surface, and the download).
    pub copies_per_frame: u32,
    /// Whole-frame host↔device transfers per frame (goal: 1, the final download).
    pub frame_transfers_per_frame: f64,
    /// All host↔device transfers per frame (adds model tensors and result lists).
    pub host_copies_per_frame: f64,
    /// Of those, detectors' result lists per frame (a few KiB each: the anchors worth
    /// decoding, listed on the GPU, instead of the whole output tensor).
    pub result_transfers_per_frame: f64,
    /// Each model's inference calls in this run.
    pub models: Vec<ModelCalls>,
}

/// One model's inference calls during a run (its batcher's counters): where a stream's
/// time goes when the models, not the pixels, limit the pipeline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelCalls {
    /// The model's name in the config.
    pub model: String,
    /// Inference calls.
    pub calls: u64,
    /// Requests per call.
    pub mean_batch: f64,
    /// Time inside the engine per call, ms.
    pub engine_ms_per_call: f64,
    /// The longest call, ms (the slowest since the model was loaded).
    pub slowest_ms: f64,
    /// Time a request waited for its call to start, mean, ms.
    pub queued_ms_per_request: f64,
}

/// The batch counters of the models `pipeline`'s stages use.
fn model_stats(
    pipeline: &PipelineConfig,
    inference: &Inference,
) -> Vec<(String, aegis_models::batch::BatchStats)> {
    crate::inference::used_models(&pipeline.stages)
        .into_iter()
        .filter_map(|m| Some((m.to_string(), inference.registry().get(m)?.stats())))
        .collect()
}

/// The results and where they ran.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackendsBench {
    /// The GPU, or why there is none.
    pub gpu: String,
    /// The clip.
    pub clip: String,
    /// Every run.
    pub runs: Vec<BackendRun>,
}

fn one_run(
    pipeline: &PipelineConfig,
    inference: &Arc<Inference>,
    backend: &Backend,
    sink: &str,
) -> anyhow::Result<BackendRun> {
    let metrics = Arc::new(Metrics::new(backend.kind.as_str()));
    let opts = RunOptions {
        force_realtime: Some(false),
        decoder_threads: 0,
        inference: Some(inference.clone()),
        backend: Some(backend.clone()),
        ..RunOptions::default()
    };
    let gpu_before = backend.gpu.as_ref().map_or((0, 0, 0), |g| {
        (g.frame_transfers(), g.host_copies(), g.result_transfers())
    });
    let models_before = model_stats(pipeline, inference);
    let t0 = Instant::now();
    let reports = Pipeline::start(pipeline, metrics, &opts)?.wait();
    let secs = t0.elapsed().as_secs_f64();
    let models = model_stats(pipeline, inference)
        .into_iter()
        .zip(models_before)
        .map(|((model, a), (_, b))| {
            let calls = a.batches - b.batches;
            let items = a.items - b.items;
            let ms = |d: std::time::Duration, n: u64| d.as_secs_f64() * 1e3 / n.max(1) as f64;
            ModelCalls {
                model,
                calls,
                mean_batch: items as f64 / calls.max(1) as f64,
                engine_ms_per_call: ms(a.engine - b.engine, calls),
                slowest_ms: a.slowest.as_secs_f64() * 1e3,
                queued_ms_per_request: ms(a.queued - b.queued, items),
            }
        })
        .collect();
    let frames: u64 = reports.iter().map(|r| r.delivered).sum();
    let slowest = reports.iter().map(|r| r.delivered).min().unwrap_or(0);
    if let Some(e) = reports.iter().find_map(|r| r.source_error.clone()) {
        anyhow::bail!("{} {sink}: a source failed: {e}", backend.kind);
    }
    let provider = inference.provider();
    let (ft, hc, rt) = backend.gpu.as_ref().map_or((0, 0, 0), |g| {
        (
            g.frame_transfers() - gpu_before.0,
            g.host_copies() - gpu_before.1,
            g.result_transfers() - gpu_before.2,
        )
    });
    let per = |n: u64| n as f64 / frames.max(1) as f64;
    Ok(BackendRun {
        backend: backend.kind.to_string(),
        provider,
        sink: sink.to_string(),
        streams: pipeline.sources.len(),
        frames,
        fps_per_stream: slowest as f64 / secs,
        fps_total: frames as f64 / secs,
        copies_per_frame: reports
            .iter()
            .map(|r| r.copies_per_frame)
            .max()
            .unwrap_or(0),
        frame_transfers_per_frame: per(ft),
        host_copies_per_frame: per(hc),
        result_transfers_per_frame: per(rt),
        models,
    })
}

/// Runs the config's stages on `clip` with `streams` streams each, on the cpu backend and
/// (when it opens) the cuda backend, into a discard sink and into the config's first record
/// sink. The cpu backend's models run on ONNX Runtime's CPU provider whatever the config
/// says (the baseline is an appliance without a GPU); the cuda backend's on the config's
/// provider.
pub fn run(
    cfg: &AgentConfig,
    clip: &Path,
    frames: u64,
    streams: &[usize],
    cuda_only: bool,
) -> anyhow::Result<BackendsBench> {
    aegis_hal::init();
    let inference = Inference::load(&cfg.inference, &cfg.pipeline, cfg.backend.cuda_device)?;
    let on_cpu = if cfg.inference.provider == InferenceProvider::Cpu || cuda_only {
        inference.clone()
    } else {
        let mut inf = cfg.inference.clone();
        inf.provider = InferenceProvider::Cpu;
        Inference::load(&inf, &cfg.pipeline, cfg.backend.cuda_device)?
    };
    let cpu = Backend::cpu();
    // The GPU backend against the CPU: `jetson` when configured (on an Orin, its NVMM
    // decoder and the CUDA stages on the lent surfaces), else `cuda`.
    let mut cuda_cfg = cfg.clone();
    cuda_cfg.backend.kind = match cfg.backend.kind {
        BackendKind::Jetson => BackendKind::Jetson,
        _ => BackendKind::Cuda,
    };
    cuda_cfg.backend.fallback = None;
    let (gpu, mut backends) = match select_backend(&cuda_cfg) {
        Ok(b) => {
            let name = b.gpu_summary().unwrap_or_default();
            (name, vec![cpu, b])
        }
        Err(e) if cuda_only => anyhow::bail!("--cuda-only, and no cuda backend: {e}"),
        Err(e) => (format!("none: {e}"), vec![cpu]),
    };
    if cuda_only {
        backends.remove(0);
    }
    let record = cfg
        .pipeline
        .sinks
        .iter()
        .find(|s| matches!(s, SinkConfig::Record(_)))
        .cloned();
    let mut sinks = vec![("discard", SinkConfig::Discard(Default::default()))];
    if let Some(r) = record {
        sinks.push(("record", r));
    }
    let mut runs = Vec::new();
    for &n in streams {
        for (sink_name, sink) in &sinks {
            let mut p = cfg.pipeline.clone();
            p.sources = (0..n)
                .map(|i| {
                    let mut s = cfg.pipeline.sources[0].clone();
                    s.id = format!("b{i}");
                    s.url = format!("file:{}", clip.display());
                    s.loop_ = true;
                    s.realtime = false;
                    s.max_frames = Some(frames);
                    s
                })
                .collect();
            p.sinks = vec![sink.clone()];
            for b in &backends {
                let models = match b.kind {
                    BackendKind::Cpu => &on_cpu,
                    _ => &inference,
                };
                let r = one_run(&p, models, b, sink_name)?;
                eprintln!(
                    "  {} ({}) {} x{}: {:.1} fps/stream",
                    r.backend, r.provider, r.sink, r.streams, r.fps_per_stream
                );
                for m in &r.models {
                    eprintln!(
                        "    {}: {} calls, {:.2} requests/call, {:.2} ms/call (slowest since load {:.1}), queued {:.2} ms/request",
                        m.model,
                        m.calls,
                        m.mean_batch,
                        m.engine_ms_per_call,
                        m.slowest_ms,
                        m.queued_ms_per_request
                    );
                }
                runs.push(r);
            }
        }
    }
    Ok(BackendsBench {
        gpu,
        clip: clip.display().to_string(),
        runs,
    })
}

/// Prints the table, with cuda/cpu ratios for matching runs.
pub fn print(b: &BackendsBench) {
    println!("backends on {} (GPU: {})", b.clip, b.gpu);
    println!(
        "  {:<6} {:<8} {:<8} {:>7} {:>8} {:>10} {:>9} {:>7} {:>14} {:>12} {:>10} {:>9}",
        "backend",
        "models",
        "sink",
        "streams",
        "frames",
        "fps/stream",
        "fps total",
        "copies",
        "frame xfers/f",
        "host cp/f",
        "results/f",
        "vs cpu"
    );
    for r in &b.runs {
        let base = b
            .runs
            .iter()
            .find(|c| c.backend == "cpu" && c.sink == r.sink && c.streams == r.streams);
        let ratio = base.map_or(f64::NAN, |c| r.fps_total / c.fps_total);
        println!(
            "  {:<6} {:<8} {:<8} {:>7} {:>8} {:>10.1} {:>9.1} {:>7} {:>14.2} {:>12.2} {:>10.2} {:>8.2}x",
            r.backend,
            r.provider,
            r.sink,
            r.streams,
            r.frames,
            r.fps_per_stream,
            r.fps_total,
            r.copies_per_frame,
            r.frame_transfers_per_frame,
            r.host_copies_per_frame,
            r.result_transfers_per_frame,
            ratio
        );
    }
}
