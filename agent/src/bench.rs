//! `aegis bench pipeline`: throughput of decode → passthrough → encode, against isolated
//! stage times and against the `ffmpeg` CLI doing the same work on the same clip, in the same
//! process run, so machine noise hits both sides alike. Reports ratios, steady-state RSS and
//! allocations per frame. Numbers are printed and written as JSON; nothing here asserts on time.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aegis_config::{
    EncoderConfig, PassthroughStage, PipelineConfig, RecordSink, SinkConfig, SourceConfig,
    StageConfig,
};
use aegis_hal::StreamId;
use aegis_hal::record::{DiskBudget, SegmentRecorder};
use aegis_hal::source::{FileSource, FileSourceSettings};
use aegis_hal::stage::{Passthrough, Stage};
use anyhow::Context;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions, sinks::recorder_settings};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Clips to run.
    pub clips: Vec<PathBuf>,
    /// Codec threads for us and for ffmpeg.
    pub threads: usize,
    /// Also time the `ffmpeg` CLI (when on PATH).
    pub ffmpeg: bool,
    /// Where scratch recordings go.
    pub scratch: PathBuf,
}

/// Results for one clip. `*_fps` are frames per second of wall time.
#[derive(Debug, Clone, Serialize)]
pub struct ClipResult {
    /// The clip.
    pub clip: String,
    /// Frame size.
    pub width: usize,
    /// Frame size.
    pub height: usize,
    /// Frames in the clip.
    pub frames: u64,
    /// Codec threads used.
    pub threads: usize,
    /// Demux + decode into pooled surfaces, alone.
    pub decode_fps: f64,
    /// The passthrough stage alone.
    pub stage_fps: f64,
    /// Encode + fragmented-MP4 mux, alone.
    pub encode_fps: f64,
    /// 1 / (sum of the isolated per-frame times).
    pub serial_fps: f64,
    /// The whole pipeline (its threads overlap the steps).
    pub pipeline_fps: f64,
    /// pipeline_fps / serial_fps (goal ≥ 0.95; above 1 when threads overlap the steps).
    pub overhead_ratio: f64,
    /// `ffmpeg` decode + libx264 encode to MP4, same clip, same settings and threads.
    pub ffmpeg_fps: Option<f64>,
    /// `ffmpeg` decode alone (`-f null`).
    pub ffmpeg_decode_fps: Option<f64>,
    /// pipeline_fps / ffmpeg_fps.
    pub pipeline_vs_ffmpeg: Option<f64>,
    /// decode_fps / ffmpeg_decode_fps.
    pub decode_vs_ffmpeg: Option<f64>,
    /// Median RSS during the second half of the pipeline run.
    pub rss_steady_bytes: u64,
    /// Rust heap allocations per frame in steady state (difference of two run lengths).
    pub allocs_per_frame: f64,
    /// Pixel copies per frame between decoder output and encoder input.
    pub copies_per_frame: u32,
}

fn source_settings(
    clip: &Path,
    threads: usize,
    pool: usize,
    max: Option<u64>,
) -> FileSourceSettings {
    FileSourceSettings {
        path: clip.to_path_buf(),
        stream: StreamId::new("bench"),
        looping: false,
        realtime: false,
        max_frames: max,
        pool_frames: pool,
        decoder_threads: threads,
    }
}

fn record_cfg(dir: &Path, threads: usize) -> RecordSink {
    RecordSink {
        dir: dir.to_path_buf(),
        segment_seconds: 3600.0,
        disk_budget_mb: 1 << 20,
        encoder: EncoderConfig {
            threads: threads as u32,
            ..EncoderConfig::default()
        },
    }
}

/// Runs every measurement for one clip.
pub fn bench_clip(clip: &Path, opts: &BenchOptions) -> anyhow::Result<ClipResult> {
    aegis_hal::init();
    let t = opts.threads;
    let scratch = opts.scratch.join(
        clip.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "clip".into()),
    );
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch).with_context(|| format!("creating {}", scratch.display()))?;

    // 1. Decode alone.
    let mut src = FileSource::open(source_settings(clip, t, 8, None))?;
    let info = src.info().clone();
    let t0 = Instant::now();
    let mut frames = 0u64;
    while let Some(f) = src.next_frame()? {
        drop(f);
        frames += 1;
    }
    let t_dec = t0.elapsed();
    anyhow::ensure!(frames > 0, "{} decoded to no frames", clip.display());

    // Hold a window of decoded frames for the isolated stage and encoder runs.
    let held_n = frames.min(60) as usize;
    let mut src = FileSource::open(source_settings(clip, t, held_n + 1, Some(held_n as u64)))?;
    let mut held = Vec::with_capacity(held_n);
    while let Some(f) = src.next_frame()? {
        held.push(f);
    }

    // 2. The passthrough stage alone.
    let mut stage = Passthrough;
    let t0 = Instant::now();
    for i in 0..frames as usize {
        let n = held.len();
        stage.process(&mut held[i % n])?;
    }
    let t_stage = t0.elapsed();

    // 3. Encode + mux alone.
    let enc_dir = scratch.join("encode-only");
    let budget = DiskBudget::open(&enc_dir, u64::MAX)?;
    let rate = info.frame_rate;
    let mut rec = SegmentRecorder::new(
        recorder_settings(&record_cfg(&enc_dir, t), &StreamId::new("bench"), rate),
        budget,
    );
    let frame_us = info.frame_duration_us();
    let t0 = Instant::now();
    for i in 0..frames as usize {
        let n = held.len();
        let f = &mut held[i % n];
        f.pts_us = i as i64 * frame_us;
        rec.push(f)?;
    }
    rec.finish()?;
    let t_enc = t0.elapsed();
    drop(held);

    // 4. The whole pipeline: a short run then a full one; their difference gives the
    //    steady-state allocations per frame.
    let short = (frames / 3).max(1);
    let (_, _, _, allocs_short) = run_pipeline(clip, &scratch.join("short"), t, Some(short))?;
    let (t_full, rss, copies, allocs_full) = run_pipeline(clip, &scratch.join("full"), t, None)?;
    let allocs_per_frame = if frames > short {
        (allocs_full.saturating_sub(allocs_short)) as f64 / (frames - short) as f64
    } else {
        f64::NAN
    };

    let fps = |d: Duration| frames as f64 / d.as_secs_f64().max(1e-9);
    let serial = t_dec + t_stage + t_enc;
    let (ffmpeg_fps, ffmpeg_decode_fps) = if opts.ffmpeg {
        (
            ffmpeg_time(clip, t, &scratch.join("ffmpeg.mp4"), true).map(fps),
            ffmpeg_time(clip, t, &scratch.join("unused"), false).map(fps),
        )
    } else {
        (None, None)
    };
    let pipeline_fps = fps(t_full);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(ClipResult {
        clip: clip.display().to_string(),
        width: info.width,
        height: info.height,
        frames,
        threads: t,
        decode_fps: fps(t_dec),
        stage_fps: fps(t_stage),
        encode_fps: fps(t_enc),
        serial_fps: fps(serial),
        pipeline_fps,
        overhead_ratio: pipeline_fps / fps(serial),
        ffmpeg_fps,
        ffmpeg_decode_fps,
        pipeline_vs_ffmpeg: ffmpeg_fps.map(|f| pipeline_fps / f),
        decode_vs_ffmpeg: ffmpeg_decode_fps.map(|f| fps(t_dec) / f),
        rss_steady_bytes: rss,
        allocs_per_frame,
        copies_per_frame: copies,
    })
}

/// Runs the real pipeline (source → passthrough → record) over the clip; returns wall time,
/// steady RSS, copies per frame and the allocation count the run made.
fn run_pipeline(
    clip: &Path,
    dir: &Path,
    threads: usize,
    max_frames: Option<u64>,
) -> anyhow::Result<(Duration, u64, u32, u64)> {
    let cfg = PipelineConfig {
        sources: vec![SourceConfig {
            id: "bench".into(),
            url: clip.display().to_string(),
            loop_: false,
            realtime: false,
            max_frames,
        }],
        stages: vec![StageConfig::Passthrough(PassthroughStage {})],
        sinks: vec![SinkConfig::Record(record_cfg(dir, threads))],
        pool_frames: 8,
        queue_depth: 4,
    };
    let metrics = Arc::new(Metrics::new("cpu"));
    let opts = RunOptions {
        force_realtime: Some(false),
        decoder_threads: threads,
    };
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        std::thread::spawn(move || {
            // Preallocated so sampling does not show up in the allocation count.
            let mut rss = Vec::with_capacity(1 << 16);
            while sampling.load(Ordering::Relaxed) {
                if let Some(s) = crate::process::sample().filter(|_| rss.len() < rss.capacity()) {
                    rss.push(s.rss_bytes);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            rss
        })
    };
    let a0 = crate::alloc::count();
    let t0 = Instant::now();
    let pipeline = Pipeline::start(&cfg, metrics, &opts)?;
    let reports = pipeline.wait();
    let elapsed = t0.elapsed();
    let allocs = crate::alloc::count() - a0;
    sampling.store(false, Ordering::Relaxed);
    let rss = sampler.join().unwrap_or_default();
    let second_half = &rss[rss.len() / 2..];
    let mut sorted = second_half.to_vec();
    sorted.sort_unstable();
    let rss_steady = sorted.get(sorted.len() / 2).copied().unwrap_or(0);
    let report = reports.first().context("pipeline reported no stream")?;
    if let Some(e) = &report.source_error {
        anyhow::bail!("pipeline source failed: {e}");
    }
    if let Some(e) = report.sink_errors.first() {
        anyhow::bail!("pipeline sink failed: {e}");
    }
    Ok((elapsed, rss_steady, report.copies_per_frame, allocs))
}

/// Times `ffmpeg` decoding the clip, and encoding it with the recorder's settings when
/// `encode`. `None` when ffmpeg is missing or fails.
fn ffmpeg_time(clip: &Path, threads: usize, out: &Path, encode: bool) -> Option<Duration> {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-threads"])
        .arg(threads.to_string())
        .arg("-i")
        .arg(clip)
        .arg("-an");
    if encode {
        let enc = EncoderConfig::default();
        cmd.args(["-c:v", "libx264", "-preset", &enc.preset, "-b:v"])
            .arg(format!("{}k", enc.bitrate_kbps))
            .args(["-g", &enc.gop_frames.to_string(), "-bf", "0", "-threads"])
            .arg(threads.to_string())
            .args([
                "-movflags",
                "frag_keyframe+empty_moov+default_base_moof",
                "-y",
            ])
            .arg(out);
    } else {
        cmd.args(["-f", "null", "-"]);
    }
    let t0 = Instant::now();
    match cmd.status() {
        Ok(s) if s.success() => Some(t0.elapsed()),
        Ok(s) => {
            tracing::warn!(status = %s, "ffmpeg baseline failed");
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "ffmpeg not runnable; no baseline");
            None
        }
    }
}

/// Prints one result as an aligned block.
pub fn print(r: &ClipResult) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{unit}"));
    println!(
        "{} ({}x{}, {} frames, {} codec threads)",
        r.clip, r.width, r.height, r.frames, r.threads
    );
    println!(
        "  decode alone          {:>9.1} fps   ffmpeg decode {:>9}   ratio {}",
        r.decode_fps,
        opt(r.ffmpeg_decode_fps, ""),
        opt(r.decode_vs_ffmpeg, "x")
    );
    println!("  passthrough alone     {:>9.1} fps", r.stage_fps);
    println!("  encode+mux alone      {:>9.1} fps", r.encode_fps);
    println!("  sum of isolated steps {:>9.1} fps", r.serial_fps);
    println!(
        "  full pipeline         {:>9.1} fps   overhead ratio {:.3} (pipeline / serial)",
        r.pipeline_fps, r.overhead_ratio
    );
    println!(
        "  ffmpeg decode+encode  {:>9}       pipeline / ffmpeg {}",
        opt(r.ffmpeg_fps, " fps"),
        opt(r.pipeline_vs_ffmpeg, "x")
    );
    println!(
        "  steady RSS {:.1} MiB, allocations/frame {:.3}, copies/frame {}",
        r.rss_steady_bytes as f64 / (1 << 20) as f64,
        r.allocs_per_frame,
        r.copies_per_frame
    );
}
