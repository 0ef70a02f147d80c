//! `aegis bench …` and `aegis fleet-sim`: the benchmarks (their code is in
//! `crate::tools`), each reporting ratios against a baseline run in the same process.

use std::path::{Path, PathBuf};

use aegis_config::AgentConfig;
use anyhow::Context;
use clap::Subcommand;

use super::{DEMO_CONFIG, SAMPLES_DIR, ensure_sample, write_json};
use crate::tools::bench::{BenchOptions, bench_clip};
use crate::tools::sample::{SampleSpec, generate};

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Fleet link: command round trip through a loopback mosquitto, and the drain rate of a
    /// SQLite outbox backlog once the broker is back.
    Fleet {
        /// Pings to time.
        #[arg(long, default_value_t = 200)]
        pings: usize,
        /// Outbox rows built up during the outage.
        #[arg(long, default_value_t = 10_000)]
        backlog: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Sensors: samples/s through NMEA/IMU parsing and the fusion on one core, vs parsing
    /// alone; the per-frame cost of the pose lookup and rule evaluation.
    Sensors {
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Signed workflows: publish → verified → pipeline switched → receipt through a
    /// loopback mosquitto against a real agent, vs the command round trip.
    Workflow {
        /// Workflows to apply.
        #[arg(long, default_value_t = 40)]
        runs: usize,
        /// Frames the health check watches per switch (`workflows.health.frames`).
        #[arg(long, default_value_t = 5)]
        health_frames: u32,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Event clips: the pre-roll ring's CPU cost per stream (recording with and without
    /// it), its memory, and clips sealed/signed per second against `ffmpeg -c copy` of the
    /// same span from the recording.
    Evidence {
        /// Frame width.
        #[arg(long, default_value_t = 1920)]
        width: usize,
        /// Frame height.
        #[arg(long, default_value_t = 1080)]
        height: usize,
        /// Frames per run (30 fps).
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Runs per arm.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Clips in the burst.
        #[arg(long, default_value_t = 40)]
        clips: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Model delivery: a bundle announced → downloaded → installed → health-checked →
    /// swapped into a running pipeline → receipt, through a loopback mosquitto and HTTP
    /// server, against restarting the agent with the new model (the baseline).
    Models {
        /// Bundles to install per transport (each the next version; HTTP and MQTT runs
        /// alternate).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        /// The model (NudeNet 320, ONNX).
        #[arg(long, default_value = ".models/nudenet-320n.onnx")]
        model: PathBuf,
        /// The ONNX Runtime library.
        #[arg(long, default_value = ".models/libonnxruntime.so.1.32.0")]
        runtime: PathBuf,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Store ingest: the batching writer vs one row per transaction (both with a cached
    /// prepared statement), and one row per transaction preparing each time.
    Store {
        /// Rows per run.
        #[arg(long, default_value_t = 20_000)]
        rows: u64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The cpu and cuda backends on one 1080p clip, same process: fps, copies per frame,
    /// host↔device transfers per frame; into a discard sink and into H.264 recordings. A
    /// config with `backend.kind: jetson` runs the jetson backend in cuda's place (on an
    /// Orin: the hardware decoder into NVMM, the CUDA stages on the lent surfaces).
    Backends {
        /// Config whose stages, models and record sink to use (default: the demo config
        /// with only its virtual background stage).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Clip (default: the 1080p bench sample).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Frames per stream per run.
        #[arg(long, default_value_t = 300)]
        frames: u64,
        /// Stream counts to run.
        #[arg(long, value_delimiter = ',', default_value = "1,4")]
        streams: Vec<usize>,
        /// Without --config: every stage of the demo config (moderation, virtual
        /// background, face detection + tracking, timestamp), not only the background.
        #[arg(long)]
        all_stages: bool,
        /// The cuda backend only: no cpu baseline, so no ratios (for comparing settings
        /// of the GPU path).
        #[arg(long)]
        cuda_only: bool,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The streaming outputs of a real agent on a 30 fps clip: glass-to-glass latency per
    /// protocol (RTSP over TCP and UDP, SRT and RTMP push; the wall clock drawn into each
    /// frame, read back by a decoding client; LL-HLS at the live edge) and the agent's CPU per
    /// output and consumer against recording alone.
    Outputs {
        /// Clip (default: the 720p bench sample).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Rounds of the CPU setups (recording alone; + RTSP with 0, 1, 4 clients; + SRT
        /// push; + RTMP push; + LL-HLS with a client; + WebRTC with 1 and 4 viewers).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Seconds per measured window.
        #[arg(long, default_value_t = 5.0)]
        window_s: f64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The inference stages at 720p: p50/p99 per stage, engine vs pre/post time, batching
    /// gain, and pipeline fps with the stages on vs off.
    Stages {
        /// Config whose stages and models to time (default: the built-in demo config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Clip to decode frames from (default: the 720p demo sample).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Frames decoded and timed per round.
        #[arg(long, default_value_t = 60)]
        frames: usize,
        /// Rounds over the frames.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// The technician page against a real agent playing a 30 fps clip into a recorder: page
    /// load p50/p95, and agent CPU, bytes/s and delivery latency with 0, 1 and 4 live viewers
    /// (interleaved rounds; CPU as a ratio to no viewer).
    Web {
        /// Clip (default: the 720p bench sample).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// Rounds of (0, 1, 4) viewers.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Seconds per window.
        #[arg(long, default_value_t = 8.0)]
        window_s: f64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Live RTSP sources against a loopback GStreamer server: restart → first frame, CPU per
    /// stream, fps kept with several streams.
    Rtsp {
        /// Clip the server streams (default: a 60 s 720p sample, generated if missing).
        #[arg(long)]
        clip: Option<PathBuf>,
        /// The loopback RTSP server script.
        #[arg(long, default_value = "tools/rtsp-server.py")]
        server: PathBuf,
        /// Server restarts to time.
        #[arg(long, default_value_t = 10)]
        restarts: usize,
        /// Seconds the server stays down at each restart.
        #[arg(long, default_value_t = 5.0)]
        down_s: f64,
        /// Flapping camera: cycles of `--flap-up-s` up, `--flap-down-s` down (0: skip).
        #[arg(long, default_value_t = 6)]
        flap_cycles: usize,
        /// Flapping camera: seconds up per cycle.
        #[arg(long, default_value_t = 8.0)]
        flap_up_s: f64,
        /// Flapping camera: seconds down per cycle.
        #[arg(long, default_value_t = 5.0)]
        flap_down_s: f64,
        /// Stream counts to run at once.
        #[arg(long, value_delimiter = ',', default_value = "4,8")]
        streams: Vec<usize>,
        /// Seconds each multi-stream run is measured.
        #[arg(long, default_value_t = 8.0)]
        seconds: f64,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// decode → passthrough → encode vs isolated steps and vs the ffmpeg CLI.
    Pipeline {
        /// Clips to run (default: 720p and 1080p samples, generated if missing).
        #[arg(long)]
        clip: Vec<PathBuf>,
        /// Codec threads for both us and ffmpeg.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Skip the ffmpeg baseline.
        #[arg(long)]
        no_ffmpeg: bool,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Runs of each measurement (interleaved); the best of each is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
    },
}

/// Runs one benchmark; `log` sets the log output at the level each benchmark keeps quiet at.
pub(super) fn run(what: BenchCommand, log: impl Fn(&str)) -> anyhow::Result<()> {
    match what {
        BenchCommand::Pipeline {
            clip,
            threads,
            no_ffmpeg,
            json,
            repeat,
        } => {
            log("warn");
            bench(clip, threads, !no_ffmpeg, json, repeat)
        }
        BenchCommand::Rtsp {
            clip,
            server,
            restarts,
            down_s,
            flap_cycles,
            flap_up_s,
            flap_down_s,
            streams,
            seconds,
            json,
        } => {
            log("error");
            let opts = crate::tools::bench_rtsp::RtspBenchOptions {
                clip: PathBuf::new(),
                server_script: server,
                restarts,
                down: std::time::Duration::from_secs_f64(down_s.max(0.0)),
                flap_cycles,
                flap_up: std::time::Duration::from_secs_f64(flap_up_s.max(0.5)),
                flap_down: std::time::Duration::from_secs_f64(flap_down_s.max(0.0)),
                streams,
                seconds,
                scratch: std::env::temp_dir()
                    .join(format!("aegis-bench-rtsp-{}", std::process::id())),
            };
            bench_rtsp(clip, opts, json)
        }
        BenchCommand::Stages {
            config,
            clip,
            frames,
            rounds,
            json,
        } => {
            log("warn");
            bench_stages(config, clip, frames, rounds, json)
        }
        BenchCommand::Backends {
            config,
            clip,
            frames,
            streams,
            all_stages,
            cuda_only,
            json,
        } => {
            log("warn");
            bench_backends(config, clip, frames, streams, (all_stages, cuda_only), json)
        }
        BenchCommand::Sensors { json } => {
            log("error");
            crate::cli::sensors::bench().and_then(|r| {
                println!(
                    "sensors, one core: {} samples; parsing alone {:.0} samples/s, parsing + fusion {:.0} samples/s (fusion keeps {:.0} % of the parse rate)",
                    r.samples, r.parse_per_s, r.fused_per_s, r.ratio * 100.0
                );
                println!(
                    "per frame: pose lookup + 3 rules p50 {:.2} µs, p99 {:.2} µs (goal < 500 µs)",
                    r.per_frame_p50_us, r.per_frame_p99_us
                );
                write_json(json, &r)
            })
        }
        BenchCommand::Outputs {
            clip,
            rounds,
            window_s,
            json,
        } => {
            log("error");
            let clip = clip.unwrap_or_else(|| Path::new(SAMPLES_DIR).join("bench-720p.mp4"));
            ensure_sample(&clip, 1280, 720)?;
            let r = crate::tools::bench_outputs::bench_outputs(
                &clip,
                rounds.max(1),
                std::time::Duration::from_secs_f64(window_s.clamp(1.0, 600.0)),
            )?;
            crate::tools::bench_outputs::print(&r);
            write_json(json, &r)
        }
        BenchCommand::Web {
            clip,
            rounds,
            window_s,
            json,
        } => {
            log("error");
            let clip = clip.unwrap_or_else(|| Path::new(SAMPLES_DIR).join("bench-720p.mp4"));
            anyhow::ensure!(
                clip.exists(),
                "{} is missing (tools/fetch-media.sh, or pass --clip)",
                clip.display()
            );
            let clip = std::fs::canonicalize(&clip)?;
            let window = std::time::Duration::from_secs_f64(window_s.clamp(1.0, 120.0));
            crate::tools::bench_web::bench_web(&clip, rounds, window).and_then(|r| {
                crate::tools::bench_web::print(&r);
                write_json(json, &r)
            })
        }
        BenchCommand::Workflow {
            runs,
            health_frames,
            json,
        } => {
            log("error");
            crate::tools::bench_workflow::bench_workflow(runs.max(2), health_frames.max(1))
                .and_then(|r| {
                    crate::tools::bench_workflow::print(&r);
                    write_json(json, &r)
                })
        }
        BenchCommand::Evidence {
            width,
            height,
            frames,
            runs,
            clips,
            json,
        } => {
            log("error");
            crate::tools::bench_evidence::bench_evidence(
                width,
                height,
                frames.max(60),
                runs.max(1),
                clips.max(2),
            )
            .and_then(|r| {
                crate::tools::bench_evidence::print(&r);
                write_json(json, &r)
            })
        }
        BenchCommand::Models {
            runs,
            model,
            runtime,
            json,
        } => {
            log("error");
            crate::tools::bench_models::bench_models(runs.max(1), &model, &runtime).and_then(|r| {
                crate::tools::bench_models::print(&r);
                write_json(json, &r)
            })
        }
        BenchCommand::Fleet {
            pings,
            backlog,
            json,
        } => {
            log("error");
            crate::tools::fleet_sim::bench_fleet(pings, backlog).and_then(|r| {
                println!(
                    "command round trip (loopback mosquitto, {} pings): p50 {:.2} ms, p99 {:.2} ms",
                    r.pings, r.rtt_p50_ms, r.rtt_p99_ms
                );
                println!(
                    "outbox drain after an outage: {} rows delivered to a consumer in {:.2} s = {:.0} rows/s ({} duplicates)",
                    r.backlog, r.drain_s, r.drain_rows_per_s, r.duplicates
                );
                write_json(json, &r)
            })
        }
        BenchCommand::Store { rows, json } => {
            log("error");
            tempfile::tempdir()
                .map_err(anyhow::Error::from)
                .and_then(|d| crate::tools::fleet_sim::bench_store(rows, d.path()))
                .and_then(|r| {
                    println!(
                        "store ingest ({} event rows, cached prepared statement in both): batched writer {:.0} rows/s, one row per transaction {:.0} rows/s, batching alone {:.1}x",
                        r.rows, r.batched_rows_per_s, r.single_rows_per_s, r.ratio
                    );
                    println!(
                        "  for reference, one row per transaction preparing the statement each time: {:.0} rows/s",
                        r.single_unprepared_rows_per_s
                    );
                    write_json(json, &r)
                })
        }
    }
}

pub(super) fn bench(
    clips: Vec<PathBuf>,
    threads: usize,
    ffmpeg: bool,
    json: Option<PathBuf>,
    repeat: usize,
) -> anyhow::Result<()> {
    let clips = if clips.is_empty() {
        let a = Path::new(SAMPLES_DIR).join("bench-720p.mp4");
        let b = Path::new(SAMPLES_DIR).join("bench-1080p.mp4");
        ensure_sample(&a, 1280, 720)?;
        ensure_sample(&b, 1920, 1080)?;
        vec![a, b]
    } else {
        clips
    };
    let opts = BenchOptions {
        clips: clips.clone(),
        threads,
        ffmpeg,
        scratch: std::env::temp_dir().join(format!("aegis-bench-{}", std::process::id())),
        repeat,
    };
    let mut results = Vec::new();
    for c in &clips {
        let r = bench_clip(c, &opts).with_context(|| format!("benchmarking {}", c.display()))?;
        crate::tools::bench::print(&r);
        results.push(r);
    }
    let _ = std::fs::remove_dir_all(&opts.scratch);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn fleet_sim(
    devices: Vec<usize>,
    seconds: f64,
    rate: f64,
    pings: usize,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut results = Vec::new();
    for n in devices {
        let r = crate::tools::fleet_sim::simulate(n, seconds, rate, pings)?;
        println!(
            "{} devices: {} connected, produced {:.0} events/s, delivered {:.0} events/s, backlog {}; ping p50 {:.2} ms, p99 {:.2} ms ({} pings); {:.2} MB resident per device",
            r.devices,
            r.connected,
            r.produced_per_s,
            r.delivered_per_s,
            r.backlog,
            r.rtt_p50_ms,
            r.rtt_p99_ms,
            r.pings,
            r.rss_per_device as f64 / 1e6
        );
        results.push(r);
    }
    write_json(json, &results)
}

pub(super) fn bench_stages(
    config: Option<PathBuf>,
    clip: Option<PathBuf>,
    frames: usize,
    rounds: usize,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let cfg = config_or_demo(config.as_deref())?;
    let clip = match clip {
        Some(c) => c,
        None => {
            let c = Path::new(SAMPLES_DIR).join("demo.mp4");
            ensure_sample(&c, 1280, 720)?;
            c
        }
    };
    let r = crate::tools::bench_stages::run(&cfg, &clip, frames.max(1), rounds.max(1))?;
    crate::tools::bench_stages::print(&r);
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

/// The config at `path`, or the built-in demo config (what the benches default to).
pub(super) fn config_or_demo(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    match path {
        Some(p) => aegis_config::load(p),
        None => aegis_config::from_yaml_str(DEMO_CONFIG, "demo.yaml (built in)"),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))
}

pub(super) fn bench_backends(
    config: Option<PathBuf>,
    clip: Option<PathBuf>,
    frames: u64,
    streams: Vec<usize>,
    (all_stages, cuda_only): (bool, bool),
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut cfg = config_or_demo(config.as_deref())?;
    if config.is_none() && !all_stages {
        cfg.pipeline
            .stages
            .retain(|s| matches!(s, aegis_config::StageConfig::VirtualBackground(_)));
    }
    let clip = match clip {
        Some(c) => c,
        None => {
            let c = Path::new(SAMPLES_DIR).join("bench-1080p.mp4");
            ensure_sample(&c, 1920, 1080)?;
            c
        }
    };
    let r = crate::tools::bench_backends::run(&cfg, &clip, frames.max(1), &streams, cuda_only)?;
    crate::tools::bench_backends::print(&r);
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

pub(super) fn bench_rtsp(
    clip: Option<PathBuf>,
    mut opts: crate::tools::bench_rtsp::RtspBenchOptions,
    json: Option<PathBuf>,
) -> anyhow::Result<()> {
    opts.clip = match clip {
        Some(c) => c,
        None => {
            let c = Path::new(SAMPLES_DIR).join("rtsp-720p.mp4");
            if !c.exists() {
                let background = Path::new(SAMPLES_DIR).join("astronaut.png");
                let spec = SampleSpec {
                    seconds: 60.0,
                    background: background.exists().then_some(background),
                    ..SampleSpec::new(&c)
                };
                eprintln!("generating {} (720p, 60 s)", c.display());
                generate(&spec)?;
            }
            c
        }
    };
    let r = crate::tools::bench_rtsp::run(&opts);
    let _ = std::fs::remove_dir_all(&opts.scratch);
    let r = r?;
    crate::tools::bench_rtsp::print(&r);
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&r)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
