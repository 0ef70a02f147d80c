//! `aegis bench rtsp`: live-source costs against a real RTSP server on loopback
//! (`tools/rtsp-server.py`, GStreamer): time from a server restart (after it was down for
//! `--down-s`) to the first decoded frame (p50/p99); a flapping camera (up `--flap-up-s`, down
//! `--flap-down-s`, repeated): time to the first frame in each up-window and how much of the
//! up-time was streamed; CPU per connected stream; and fps kept with 4 and 8 simultaneous
//! streams, with and without recording. Measured, printed and written as JSON; nothing
//! asserts on time.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_config::{
    EncoderConfig, PassthroughStage, PipelineConfig, RecordSink, SinkConfig, SourceConfig,
    StageConfig,
};
use aegis_hal::StreamId;
use aegis_hal::source::{LiveSource, LiveSourceSettings, VideoSource};
use anyhow::Context;
use serde::Serialize;

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions};

/// What to run.
#[derive(Debug, Clone)]
pub struct RtspBenchOptions {
    /// The clip the server streams (H.264 MP4, long enough for every run).
    pub clip: PathBuf,
    /// `tools/rtsp-server.py`.
    pub server_script: PathBuf,
    /// Server restarts to time.
    pub restarts: usize,
    /// How long the server stays down at each restart.
    pub down: Duration,
    /// Flapping camera: cycles of `flap_down` down, then `flap_up` up (0: skip).
    pub flap_cycles: usize,
    /// Flapping camera: up-time per cycle.
    pub flap_up: Duration,
    /// Flapping camera: down-time per cycle.
    pub flap_down: Duration,
    /// Stream counts to run at once.
    pub streams: Vec<usize>,
    /// Seconds each multi-stream run is measured for.
    pub seconds: f64,
    /// Scratch directory for recordings.
    pub scratch: PathBuf,
}

/// One multi-stream run.
#[derive(Debug, Clone, Serialize)]
pub struct LoadResult {
    /// Streams at once.
    pub streams: usize,
    /// Whether every stream was also encoded and recorded.
    pub recording: bool,
    /// Frames per second each stream delivered (lowest, mean).
    pub fps_min: f64,
    /// Mean over streams.
    pub fps_mean: f64,
    /// Agent CPU time over wall time (100 = one core).
    pub cpu_percent: f64,
}

/// A camera that keeps going up and down.
#[derive(Debug, Clone, Serialize)]
pub struct FlapResult {
    /// Seconds up per cycle.
    pub up_s: f64,
    /// Seconds down per cycle.
    pub down_s: f64,
    /// Up-windows.
    pub cycles: usize,
    /// Server up → first decoded frame in each up-window that had one, milliseconds, sorted.
    pub up_to_frame_ms: Vec<f64>,
    /// Median of the above.
    pub up_to_frame_p50_ms: f64,
    /// Largest of the above.
    pub up_to_frame_max_ms: f64,
    /// Up-windows without a single frame.
    pub windows_missed: usize,
    /// Share of the up-time during which frames flowed (from each window's first frame to
    /// its end, over all windows' up-time).
    pub streamed_fraction: f64,
}

/// Everything `bench rtsp` measured.
#[derive(Debug, Clone, Serialize)]
pub struct RtspBenchResult {
    /// Restart → first frame, milliseconds, sorted.
    pub restart_to_frame_ms: Vec<f64>,
    /// Median of the above.
    pub restart_p50_ms: f64,
    /// 99th percentile of the above (the maximum for fewer than 100 restarts).
    pub restart_p99_ms: f64,
    /// Restarts after which no frame came within 60 s (left out of the percentiles).
    pub restart_failures: usize,
    /// Seconds the server was down at each restart.
    pub restart_down_s: f64,
    /// The flapping camera, if run.
    pub flapping: Option<FlapResult>,
    /// CPU per connected, decoding stream with nothing downstream (percent of one core).
    pub cpu_percent_per_decoding_stream: f64,
    /// Multi-stream runs.
    pub load: Vec<LoadResult>,
    /// The clip's frame rate (what a stream keeping up delivers).
    pub clip_fps: f64,
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(script: &Path, port: u16, clip: &Path) -> anyhow::Result<Server> {
    let mut child = Command::new("/usr/bin/python3")
        .arg(script)
        .arg(port.to_string())
        .arg(format!("cam={}", clip.display()))
        .stdout(Stdio::piped())
        .spawn()
        .context(
            "starting the RTSP server (needs Debian's python3-gi and gir1.2-gst-rtsp-server-1.0)",
        )?;
    let mut line = String::new();
    let stdout = child.stdout.take().context("server stdout")?;
    BufReader::new(stdout).read_line(&mut line)?;
    anyhow::ensure!(line.trim() == "ready", "RTSP server did not start: {line}");
    Ok(Server(child))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs every measurement.
pub fn run(opts: &RtspBenchOptions) -> anyhow::Result<RtspBenchResult> {
    aegis_hal::init();
    let port = free_port()?;
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let clip_fps = {
        let d = aegis_hal::container::FileDemuxer::open(&opts.clip)?;
        let (n, den) = d.info().frame_rate;
        n as f64 / den.max(1) as f64
    };

    // 1. Restart → first frame, with the source's real backoff settings.
    let mut server = Some(serve(&opts.server_script, port, &opts.clip)?);
    let mut src = LiveSource::new(LiveSourceSettings::new(url.clone(), StreamId::new("bench")));
    let health = src.health();
    let stopper = src.stopper();
    let reader = std::thread::spawn(move || while let Ok(Some(_)) = src.next_frame() {});
    let wait_frames = |min: u64, limit: Duration| -> bool {
        let t0 = Instant::now();
        while health.snapshot().frames < min {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    };
    anyhow::ensure!(
        wait_frames(10, Duration::from_secs(20)),
        "no frames from the RTSP server"
    );
    let mut samples = Vec::with_capacity(opts.restarts);
    let mut restart_failures = 0;
    for _ in 0..opts.restarts {
        // A camera that ran fine for a while, then rebooted (down for `opts.down`).
        std::thread::sleep(Duration::from_millis(5500));
        drop(server.take());
        std::thread::sleep(opts.down);
        let before = health.snapshot().frames;
        server = Some(serve(&opts.server_script, port, &opts.clip)?);
        let t0 = Instant::now();
        if wait_frames(before + 1, Duration::from_secs(60)) {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        } else {
            restart_failures += 1;
        }
    }
    samples.sort_by(f64::total_cmp);

    // 2. A flapping camera: down, up, down, up ... with the same source (its backoff state
    //    carries over from window to window, as in the field).
    let flapping = (opts.flap_cycles > 0).then(|| -> anyhow::Result<FlapResult> {
        let mut ttff = Vec::new();
        let (mut missed, mut streamed) = (0, 0.0);
        for _ in 0..opts.flap_cycles {
            drop(server.take());
            std::thread::sleep(opts.flap_down);
            let before = health.snapshot().frames;
            server = Some(serve(&opts.server_script, port, &opts.clip)?);
            let t0 = Instant::now();
            let mut first = None;
            while t0.elapsed() < opts.flap_up {
                if first.is_none() && health.snapshot().frames > before {
                    first = Some(t0.elapsed());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            match first {
                Some(t) => {
                    ttff.push(t.as_secs_f64() * 1000.0);
                    streamed += (opts.flap_up - t).as_secs_f64();
                }
                None => missed += 1,
            }
        }
        ttff.sort_by(f64::total_cmp);
        Ok(FlapResult {
            up_s: opts.flap_up.as_secs_f64(),
            down_s: opts.flap_down.as_secs_f64(),
            cycles: opts.flap_cycles,
            up_to_frame_p50_ms: percentile(&ttff, 0.5),
            up_to_frame_max_ms: ttff.last().copied().unwrap_or(f64::NAN),
            up_to_frame_ms: ttff,
            windows_missed: missed,
            streamed_fraction: streamed / (opts.flap_up.as_secs_f64() * opts.flap_cycles as f64),
        })
    });
    let flapping = flapping.transpose()?;
    stopper.stop();
    let _ = reader.join();

    drop(server);

    // 3. Load: N streams decoding only, then N streams decoding + recording; each run gets a
    //    fresh server, so the clip plays from its start.
    let mut load = Vec::new();
    let mut per_stream_cpu = f64::NAN;
    for &n in &opts.streams {
        for recording in [false, true] {
            let r = load_run(n, recording, opts)?;
            if !recording && per_stream_cpu.is_nan() {
                per_stream_cpu = r.cpu_percent / n as f64;
            }
            load.push(r);
        }
    }
    Ok(RtspBenchResult {
        restart_p50_ms: percentile(&samples, 0.5),
        restart_p99_ms: percentile(&samples, 0.99),
        restart_failures,
        restart_down_s: opts.down.as_secs_f64(),
        flapping,
        restart_to_frame_ms: samples,
        cpu_percent_per_decoding_stream: per_stream_cpu,
        load,
        clip_fps,
    })
}

fn load_run(n: usize, recording: bool, opts: &RtspBenchOptions) -> anyhow::Result<LoadResult> {
    let port = free_port()?;
    let _server = serve(&opts.server_script, port, &opts.clip)?;
    let url = format!("rtsp://127.0.0.1:{port}/cam");
    let dir = opts.scratch.join(format!("load-{n}-{recording}"));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = PipelineConfig {
        sources: (0..n)
            .map(|i| SourceConfig::new(format!("cam{i}"), url.clone()))
            .collect(),
        stages: vec![StageConfig::Passthrough(PassthroughStage {})],
        sinks: if recording {
            vec![SinkConfig::Record(RecordSink {
                dir,
                segment_seconds: 3600.0,
                disk_budget_mb: 1 << 20,
                encoder: EncoderConfig::default(),
            })]
        } else {
            vec![SinkConfig::Discard(Default::default())]
        },
        pool_frames: 8,
        queue_depth: 4,
        rules: Vec::new(),
        evidence: None,
    };
    let metrics = Arc::new(Metrics::new("cpu"));
    let pipeline = Pipeline::start(&cfg, metrics.clone(), &RunOptions::default())?;
    // Warm up: every stream connected and decoding.
    let t0 = Instant::now();
    while metrics.source_health().iter().any(|(_, h)| h.frames < 10) {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "streams did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let frames0: Vec<u64> = metrics
        .source_health()
        .iter()
        .map(|(_, h)| h.frames)
        .collect();
    let cpu0 = crate::process::sample().map_or(0, |s| s.cpu_ms);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(opts.seconds));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = crate::process::sample().map_or(0, |s| s.cpu_ms) - cpu0;
    let fps: Vec<f64> = metrics
        .source_health()
        .iter()
        .zip(&frames0)
        .map(|((_, h), f0)| (h.frames - f0) as f64 / wall)
        .collect();
    pipeline.stop();
    pipeline.wait();
    Ok(LoadResult {
        streams: n,
        recording,
        fps_min: fps.iter().copied().fold(f64::INFINITY, f64::min),
        fps_mean: fps.iter().sum::<f64>() / fps.len().max(1) as f64,
        cpu_percent: cpu as f64 / 10.0 / wall,
    })
}

/// Prints the result.
pub fn print(r: &RtspBenchResult) {
    println!(
        "RTSP server restart after {:.1} s down → first decoded frame: p50 {:.0} ms, p99 {:.0} ms over {} restarts ({} without a frame within 60 s)",
        r.restart_down_s,
        r.restart_p50_ms,
        r.restart_p99_ms,
        r.restart_to_frame_ms.len(),
        r.restart_failures
    );
    if let Some(f) = &r.flapping {
        println!(
            "flapping camera ({:.0} s up / {:.0} s down, {} cycles): up → first frame p50 {:.0} ms, max {:.0} ms; {} up-windows missed; {:.0} % of the up-time streamed",
            f.up_s,
            f.down_s,
            f.cycles,
            f.up_to_frame_p50_ms,
            f.up_to_frame_max_ms,
            f.windows_missed,
            f.streamed_fraction * 100.0
        );
    }
    println!(
        "CPU per connected stream, decode only: {:.1} % of one core",
        r.cpu_percent_per_decoding_stream
    );
    println!(
        "clip rate {:.2} fps; per-stream fps kept (min / mean) and agent CPU:",
        r.clip_fps
    );
    for l in &r.load {
        println!(
            "  {} streams, {:<14} {:>6.2} / {:>6.2} fps   CPU {:>5.0} %",
            l.streams,
            if l.recording {
                "decode+record"
            } else {
                "decode only"
            },
            l.fps_min,
            l.fps_mean,
            l.cpu_percent
        );
    }
}
