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
    /// Runs of each measurement; the best is kept.
    pub repeat: usize,
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
        max_frames: max,
        pool_frames: pool,
        decoder_threads: threads,
        ..FileSourceSettings::new(clip, StreamId::new("bench"))
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

    // The whole pipeline first, so its RSS is not inflated by the heap the isolated runs
    // leave behind; then a shorter run: the difference in allocations between the two runs is
    // the steady-state allocations per frame.
    let (t_full, rss, copies, allocs_full, frames) =
        run_pipeline(clip, &scratch.join("full"), t, None)?;
    anyhow::ensure!(frames > 0, "{} decoded to no frames", clip.display());
    let short = (frames / 3).max(1);
    let (_, _, _, allocs_short, _) = run_pipeline(clip, &scratch.join("short"), t, Some(short))?;
    let allocs_per_frame = if frames > short {
        (allocs_full.saturating_sub(allocs_short)) as f64 / (frames - short) as f64
    } else {
        f64::NAN
    };

    // Then every measurement `repeat` times, interleaved so that machine noise spreads over
    // all of them; each keeps its best (shortest) time.
    let best = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let mut t_full = Some(t_full);
    let (mut t_dec, mut t_stage, mut t_enc, mut t_ff, mut t_ffdec) = (None, None, None, None, None);
    let mut info = None;
    for round in 0..opts.repeat.max(1) {
        if round > 0 {
            t_full = best(
                t_full,
                Some(run_pipeline(clip, &scratch.join("full"), t, None)?.0),
            );
        }
        let (i, dec) = time_decode(clip, t, frames)?;
        info = Some(i);
        t_dec = best(t_dec, Some(dec));
        let (stage, enc) = time_stage_and_encode(clip, t, frames, &scratch)?;
        t_stage = best(t_stage, Some(stage));
        t_enc = best(t_enc, Some(enc));
        if opts.ffmpeg {
            t_ff = best(
                t_ff,
                ffmpeg_time(clip, t, &scratch.join("ffmpeg.mp4"), true),
            );
            t_ffdec = best(
                t_ffdec,
                ffmpeg_time(clip, t, &scratch.join("unused"), false),
            );
        }
    }
    let (Some(info), Some(t_full), Some(t_dec), Some(t_stage), Some(t_enc)) =
        (info, t_full, t_dec, t_stage, t_enc)
    else {
        anyhow::bail!("no measurement was taken");
    };
    let fps = |d: Duration| frames as f64 / d.as_secs_f64().max(1e-9);
    let serial = t_dec + t_stage + t_enc;
    let (ffmpeg_fps, ffmpeg_decode_fps) = (t_ff.map(fps), t_ffdec.map(fps));
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

/// Demux + decode of the whole clip into pooled surfaces, frames dropped at once.
fn time_decode(
    clip: &Path,
    threads: usize,
    frames: u64,
) -> anyhow::Result<(aegis_hal::container::StreamInfo, Duration)> {
    let mut src = FileSource::open(source_settings(clip, threads, 8, None))?;
    let info = src.info().clone();
    let t0 = Instant::now();
    let mut decoded = 0u64;
    while let Some(f) = src.next_frame()? {
        drop(f);
        decoded += 1;
    }
    let elapsed = t0.elapsed();
    anyhow::ensure!(
        decoded == frames,
        "{}: decoding alone gave {decoded} frames, the pipeline {frames}",
        clip.display()
    );
    Ok((info, elapsed))
}

/// The passthrough stage and then encode + mux, each over `frames` frames cycled from a held
/// window of decoded frames (so decoding is not part of either time).
fn time_stage_and_encode(
    clip: &Path,
    threads: usize,
    frames: u64,
    scratch: &Path,
) -> anyhow::Result<(Duration, Duration)> {
    let held_n = frames.min(60) as usize;
    let mut src = FileSource::open(source_settings(
        clip,
        threads,
        held_n + 1,
        Some(held_n as u64),
    ))?;
    let info = src.info().clone();
    let mut held = Vec::with_capacity(held_n);
    while let Some(f) = src.next_frame()? {
        held.push(f);
    }
    anyhow::ensure!(!held.is_empty(), "{} decoded to no frames", clip.display());
    let n = held.len();

    let mut stage = Passthrough;
    let t0 = Instant::now();
    for i in 0..frames as usize {
        stage.process(&mut held[i % n])?;
    }
    let t_stage = t0.elapsed();

    let enc_dir = scratch.join("encode-only");
    let _ = std::fs::remove_dir_all(&enc_dir);
    let budget = DiskBudget::open(&enc_dir, u64::MAX)?;
    let mut rec = SegmentRecorder::new(
        recorder_settings(
            &record_cfg(&enc_dir, threads),
            &StreamId::new("bench"),
            info.frame_rate,
            threads,
        ),
        budget,
    );
    let frame_us = info.frame_duration_us();
    let t0 = Instant::now();
    for i in 0..frames as usize {
        let f = &mut held[i % n];
        f.pts_us = i as i64 * frame_us;
        rec.push(f)?;
    }
    rec.finish()?;
    Ok((t_stage, t0.elapsed()))
}

/// Runs the real pipeline (source → passthrough → record) over the clip; returns wall time,
/// steady RSS, copies per frame, the allocation count the run made and the frames delivered.
fn run_pipeline(
    clip: &Path,
    dir: &Path,
    threads: usize,
    max_frames: Option<u64>,
) -> anyhow::Result<(Duration, u64, u32, u64, u64)> {
    let cfg = PipelineConfig {
        sources: vec![SourceConfig {
            max_frames,
            ..SourceConfig::new("bench", clip.display().to_string())
        }],
        stages: vec![StageConfig::Passthrough(PassthroughStage {})],
        sinks: vec![SinkConfig::Record(record_cfg(dir, threads))],
        pool_frames: 8,
        queue_depth: 4,
        rules: Vec::new(),
        evidence: None,
    };
    let metrics = Arc::new(Metrics::new("cpu"));
    let opts = RunOptions {
        force_realtime: Some(false),
        decoder_threads: threads,
        ..Default::default()
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
    Ok((
        elapsed,
        rss_steady,
        report.copies_per_frame,
        allocs,
        report.delivered,
    ))
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
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.1}{unit}"));
    let ratio = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.2}x"));
    let ms = |fps: f64| 1000.0 / fps;
    println!(
        "{} ({}x{}, {} frames, {} codec threads)",
        r.clip, r.width, r.height, r.frames, r.threads
    );
    println!(
        "  decode alone          {:>8.1} fps {:>7.3} ms/frame   ffmpeg decode {} fps, ratio {}",
        r.decode_fps,
        ms(r.decode_fps),
        opt(r.ffmpeg_decode_fps, ""),
        ratio(r.decode_vs_ffmpeg)
    );
    println!(
        "  passthrough alone                {:>7.4} ms/frame",
        ms(r.stage_fps)
    );
    println!(
        "  encode+mux alone      {:>8.1} fps {:>7.3} ms/frame",
        r.encode_fps,
        ms(r.encode_fps)
    );
    println!(
        "  sum of isolated steps {:>8.1} fps {:>7.3} ms/frame",
        r.serial_fps,
        ms(r.serial_fps)
    );
    println!(
        "  full pipeline         {:>8.1} fps {:>7.3} ms/frame   overhead ratio {:.3} (pipeline fps / serial fps)",
        r.pipeline_fps,
        ms(r.pipeline_fps),
        r.overhead_ratio
    );
    println!(
        "  ffmpeg decode+encode  {:>8} fps                    pipeline / ffmpeg {}",
        opt(r.ffmpeg_fps, ""),
        ratio(r.pipeline_vs_ffmpeg)
    );
    println!(
        "  steady RSS {:.1} MiB, allocations/frame {:.3}, copies/frame {}",
        r.rss_steady_bytes as f64 / (1 << 20) as f64,
        r.allocs_per_frame,
        r.copies_per_frame
    );
}
