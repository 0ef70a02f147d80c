//! The `aegis` command line.

pub mod db;
pub mod sensors;
pub mod workflow;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use aegis_config::{AgentConfig, ConfigError, LogFormat};
use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use crate::metrics::Metrics;
use crate::pipeline::RunOptions;
use crate::runtime::{RunRequest, RunSummary, run, select_backend};
use crate::tools::bench::{BenchOptions, bench_clip};
use crate::tools::sample::{SampleSpec, generate};

/// Exit code for invalid configuration or usage.
pub const EXIT_INVALID: u8 = 2;
/// Exit code of `aegis run` when some streams ended on an error while others ran to their end.
pub const EXIT_SOME_STREAMS_FAILED: u8 = 1;
/// Exit code of `aegis run` when every stream ended on an error (no source could be opened,
/// or each failed): nothing this configuration asked for ran.
pub const EXIT_ALL_STREAMS_FAILED: u8 = 3;

/// `aegis run` ended with streams that failed (see [`stream_failures`]).
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} streams ended with errors: {names}")]
pub struct StreamsFailed {
    /// Streams that ended with an error.
    pub failed: usize,
    /// Streams in the pipeline.
    pub total: usize,
    /// Their ids, comma-separated.
    pub names: String,
}

impl StreamsFailed {
    /// The process exit code this failure maps to.
    pub fn exit_code(&self) -> u8 {
        if self.failed == self.total {
            EXIT_ALL_STREAMS_FAILED
        } else {
            EXIT_SOME_STREAMS_FAILED
        }
    }
}

/// The demo's configuration, shipped inside the binary.
pub const DEMO_CONFIG: &str = include_str!("../../../config/examples/demo.yaml");
/// Where the demo and the benches keep generated clips.
pub const SAMPLES_DIR: &str = ".samples";

#[derive(Parser, Debug)]
#[command(
    name = "aegis",
    version,
    about = "Aegis Edge: video analytics agent for NVIDIA Jetson Orin"
)]
struct Cli {
    /// Log format (default: the config's `log.format`, else human; journald under systemd).
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
    Journald,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent with a config file until its input ends or SIGTERM.
    Run {
        /// The config file (YAML).
        #[arg(long, short)]
        config: PathBuf,
        /// Serve /metrics and /healthz here instead of `web.listen`.
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Pace every source at its frame rate (default: each source's `realtime`).
        #[arg(long)]
        realtime: bool,
    },
    /// Generate the sample clip if needed and play it through the demo pipeline.
    Demo {
        /// Decode as fast as possible instead of at the clip's frame rate.
        #[arg(long)]
        fast: bool,
        /// Keep serving /metrics after the clip ends, until Ctrl-C.
        #[arg(long)]
        serve: bool,
        /// Serve /metrics here instead of the demo config's 127.0.0.1:8080.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate config files; prints every problem, exits 2 if any file is invalid.
    CheckConfig {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the config (for editors).
    Schema {
        /// Only the pipeline part (the `Pipeline` block of a workflow).
        #[arg(long)]
        pipeline: bool,
    },
    /// Simulated devices (the agent's own fleet-link code) against one local mosquitto:
    /// connections, events/s delivered, command round trip.
    FleetSim {
        /// Simulated devices (comma-separated for several runs).
        #[arg(long, value_delimiter = ',', default_value = "100")]
        devices: Vec<usize>,
        /// Seconds each run is measured.
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Events per second per device.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Pings timed after the measurement.
        #[arg(long, default_value_t = 200)]
        pings: usize,
        /// Also write the results as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Sensors: simulate a drive with known truth, replay recorded NMEA/IMU through the
    /// fusion.
    Sensors {
        #[command(subcommand)]
        what: crate::cli::sensors::SensorsCommand,
    },
    /// (development) Write the CUDA kernels' golden files: inputs and CPU outputs.
    #[command(hide = true)]
    CudaGolden {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
    /// Signed workflows: apply one to the running agent, show what runs.
    Workflow {
        #[command(subcommand)]
        what: crate::cli::workflow::WorkflowCommand,
    },
    /// The local database: stats, integrity check, vacuum, export.
    Db {
        #[command(subcommand)]
        what: crate::cli::db::DbCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// Generate a test clip with known ground truth (CLIP and CLIP.truth.json).
    Sample(SampleSpec),
    /// Track objects through MOTChallenge detections (det.txt → res.txt), e.g. to score the
    /// tracker on public benchmark detections.
    Track {
        /// Detections: `frame,-1,left,top,width,height,conf[,…]` per line.
        #[arg(long)]
        det: PathBuf,
        /// Where to write the tracks (`frame,id,left,top,width,height,conf,-1,-1,-1`).
        #[arg(long)]
        out: PathBuf,
        /// Minimum IoU between a track's prediction and a detection to match.
        #[arg(long, default_value_t = 0.3)]
        iou: f64,
        /// Frames a track survives without a detection.
        #[arg(long, default_value_t = 30)]
        max_age: u32,
        /// Consecutive matches before a track is reported (its earlier frames are written too,
        /// once it is confirmed, unless --no-backfill).
        #[arg(long, default_value_t = 3)]
        min_hits: u32,
        /// Detections at or above this start tracks; weaker ones only extend tracks.
        #[arg(long, default_value_t = 0.5)]
        high_score: f64,
        /// Detections below this are ignored.
        #[arg(long, default_value_t = 0.1)]
        min_score: f64,
        /// Write only what live output reports: a track's frames from its confirmation on,
        /// not the first min_hits frames it was tentative in.
        #[arg(long)]
        no_backfill: bool,
    },
    /// Print versions of the agent and the libraries it loaded.
    Version,
    /// Create this device's key pairs: ML-DSA-65 (receipts) and ML-KEM-768 (sealed
    /// workflows), secret files 0600 in DIR, never overwritten; prints the public key ids
    /// to enrol with `chimera enroll`.
    Provision {
        /// Where the keys go (e.g. /var/lib/aegis/keys).
        #[arg(long, default_value = "/var/lib/aegis/keys")]
        dir: PathBuf,
        /// Instead: install a group sealing key delivered by the gateway (`chimera group-key`).
        #[arg(long, requires = "issuer")]
        group_key: Option<PathBuf>,
        /// The gateway public key that must have signed the delivery.
        #[arg(long)]
        issuer: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
    /// host↔device transfers per frame; into a discard sink and into H.264 recordings.
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_override = cli.log_format.map(|f| match f {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Journald => LogFormat::Journald,
    });
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            realtime,
        } => match load_config(&config) {
            Ok(cfg) => {
                crate::logging::init(log_override.unwrap_or(cfg.log.format), &cfg.log.level);
                let req = RunRequest {
                    listen,
                    options: RunOptions {
                        force_realtime: realtime.then_some(true),
                        decoder_threads: 0,
                        inference: None,
                        store: None,
                        events_topic: None,
                        snapshots: None,
                        sensing: None,
                        backend: None,
                    },
                    ..Default::default()
                };
                run_blocking(&cfg, req).and_then(|s| {
                    print_reports(&s);
                    stream_failures(&s)
                })
            }
            Err(code) => return code,
        },
        Command::Demo {
            fast,
            serve,
            listen,
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "info");
            demo(fast, serve, listen)
        }
        Command::CheckConfig { files } => return check_config(&files),
        Command::Schema { pipeline } => {
            let schema = if pipeline {
                aegis_config::pipeline_json_schema()
            } else {
                aegis_config::json_schema()
            };
            println!(
                "{}",
                serde_json::to_string_pretty(&schema).unwrap_or_default()
            );
            Ok(())
        }
        Command::Bench {
            what:
                BenchCommand::Pipeline {
                    clip,
                    threads,
                    no_ffmpeg,
                    json,
                    repeat,
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            bench(clip, threads, !no_ffmpeg, json, repeat)
        }
        Command::Bench {
            what:
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
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
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
        Command::Bench {
            what:
                BenchCommand::Stages {
                    config,
                    clip,
                    frames,
                    rounds,
                    json,
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            bench_stages(config, clip, frames, rounds, json)
        }
        Command::Bench {
            what:
                BenchCommand::Backends {
                    config,
                    clip,
                    frames,
                    streams,
                    all_stages,
                    json,
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            bench_backends(config, clip, frames, streams, all_stages, json)
        }
        Command::FleetSim {
            devices,
            seconds,
            rate,
            pings,
            json,
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
            fleet_sim(devices, seconds, rate, pings, json)
        }
        Command::Bench {
            what: BenchCommand::Sensors { json },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
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
        Command::Bench {
            what:
                BenchCommand::Workflow {
                    runs,
                    health_frames,
                    json,
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
            crate::tools::bench_workflow::bench_workflow(runs.max(2), health_frames.max(1))
                .and_then(|r| {
                    crate::tools::bench_workflow::print(&r);
                    write_json(json, &r)
                })
        }
        Command::Bench {
            what:
                BenchCommand::Fleet {
                    pings,
                    backlog,
                    json,
                },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
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
        Command::Bench {
            what: BenchCommand::Store { rows, json },
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "error");
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
        Command::Sensors { what } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            crate::cli::sensors::run(what)
        }
        Command::CudaGolden { out } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            crate::tools::cuda_golden::write(&out)
        }
        Command::Workflow { what } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            crate::cli::workflow::run(what)
        }
        Command::Db { what } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            crate::cli::db::run(what)
        }
        Command::Sample(spec) => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "info");
            generate(&spec).map(|n| {
                println!(
                    "wrote {} ({n} frames) and {}",
                    spec.out.display(),
                    crate::tools::sample::truth_path(&spec.out).display()
                );
            })
        }
        Command::Track {
            det,
            out,
            iou,
            max_age,
            min_hits,
            high_score,
            min_score,
            no_backfill,
        } => {
            let cfg = aegis_models::track::TrackerConfig {
                iou_threshold: iou,
                max_age,
                min_hits,
                high_score,
                min_score,
            };
            track(&det, &out, cfg, !no_backfill)
        }
        Command::Provision {
            dir,
            group_key,
            issuer,
        } => {
            crate::logging::init(log_override.unwrap_or(LogFormat::Human), "warn");
            match (group_key, issuer) {
                (Some(d), Some(i)) => install_group_key(&dir, &d, &i),
                _ => provision(&dir),
            }
        }
        Command::Version => {
            aegis_hal::init();
            println!("aegis {}", env!("CARGO_PKG_VERSION"));
            println!("{}", aegis_hal::libav_versions());
            println!(
                "H.264 encoder: {}",
                aegis_hal::codec::h264_encoder_name().unwrap_or("none")
            );
            println!(
                "backends in this build: cpu, cuda (CUDA driver {}, NVRTC {}, NVDEC {} here)",
                found(aegis_cuda::driver_present()),
                found(aegis_cuda::nvrtc_present()),
                found(aegis_cuda::nvdec::nvdec_present())
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", crate::error_text(&e));
            match e.downcast_ref::<StreamsFailed>() {
                Some(f) => ExitCode::from(f.exit_code()),
                None => ExitCode::FAILURE,
            }
        }
    }
}

fn found(present: bool) -> &'static str {
    if present { "found" } else { "not found" }
}

/// Loads and validates a config; on failure prints every problem and returns exit code 2.
fn load_config(path: &Path) -> Result<AgentConfig, ExitCode> {
    aegis_config::load(path).map_err(|e| {
        print_config_error(&e);
        ExitCode::from(EXIT_INVALID)
    })
}

fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { .. } => {
            let n = e.problems().len();
            eprintln!("{e}");
            eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
        }
        other => eprintln!("error: {other}"),
    }
}

fn check_config(files: &[PathBuf]) -> ExitCode {
    let mut bad = false;
    for f in files {
        match aegis_config::load(f) {
            Ok(cfg) => {
                let backend = crate::runtime::check_backend(&cfg).map(|b| b.to_string());
                match backend {
                    Ok(_) => println!("{}: ok", f.display()),
                    Err(e) => {
                        bad = true;
                        eprintln!("{}: {e}", f.display());
                    }
                }
            }
            Err(e) => {
                bad = true;
                print_config_error(&e);
            }
        }
    }
    if bad {
        ExitCode::from(EXIT_INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_blocking(cfg: &AgentConfig, mut req: RunRequest) -> anyhow::Result<RunSummary> {
    let backend = select_backend(cfg)?;
    let metrics = Arc::new(Metrics::new(backend.kind.as_str()));
    req.options.backend = Some(backend);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aegis-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run(cfg, req, metrics, |addr| {
        eprintln!("serving http://{addr}/metrics and http://{addr}/healthz");
    }))
}

fn print_reports(s: &RunSummary) {
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    for r in &s.streams {
        println!(
            "stream {}: {} frames decoded, {} delivered ({:.1} fps), {} dropped, {} decode errors, {} read errors{}{}",
            r.stream,
            r.decoded,
            r.delivered,
            r.delivered as f64 / secs,
            r.dropped,
            r.source.decode.errors,
            r.source.read_errors,
            if r.source.truncated {
                ", file truncated (it ends in the middle of its data)"
            } else {
                ""
            },
            r.source_error
                .as_ref()
                .map(|e| format!(", ended by error: {e}"))
                .unwrap_or_default()
        );
        let a = &r.analytics;
        if *a != Default::default() {
            println!(
                "  analytics: {} tracks started, {} frames with a moderation verdict, background replaced on {} frames",
                a.tracks, a.moderated, a.background_replaced
            );
        }
    }
}

/// `Err(StreamsFailed)` when any stream ended on an error (its source failed, or a sink
/// could not finish its recording).
fn stream_failures(s: &RunSummary) -> anyhow::Result<()> {
    let failed: Vec<_> = s
        .streams
        .iter()
        .filter(|r| r.source_error.is_some() || !r.sink_errors.is_empty())
        .map(|r| r.stream.as_str())
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(StreamsFailed {
            failed: failed.len(),
            total: s.streams.len(),
            names: failed.join(", "),
        }
        .into())
    }
}

/// Makes `path` with the standard sample scene if it does not exist yet.
pub fn ensure_sample(path: &Path, width: usize, height: usize) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let background = Path::new(SAMPLES_DIR).join("astronaut.png");
    let spec = SampleSpec {
        width,
        height,
        background: background.exists().then_some(background),
        ..SampleSpec::new(path)
    };
    eprintln!(
        "generating {} ({}x{}, {} s{})",
        path.display(),
        width,
        height,
        spec.seconds,
        if spec.background.is_some() {
            ", astronaut background"
        } else {
            ", procedural background"
        }
    );
    generate(&spec).map(|_| ())
}

/// The demo's local broker: an already running one on the configured port is used as is;
/// otherwise Debian's `mosquitto` is started on loopback for the demo's lifetime. Without
/// either, the demo runs without the fleet link (and says so).
struct DemoBroker(Option<std::process::Child>);

impl DemoBroker {
    fn ensure(cfg: &mut aegis_config::AgentConfig) -> DemoBroker {
        if !cfg.fleet.enabled {
            return DemoBroker(None);
        }
        let port = cfg
            .fleet
            .broker_url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
            .unwrap_or(1883);
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            println!("fleet: using the MQTT broker already on 127.0.0.1:{port}");
            return DemoBroker(None);
        }
        let dir = Path::new(".demo");
        let _ = std::fs::create_dir_all(dir);
        let conf = dir.join("mosquitto.conf");
        let spawned = std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .ok()
        .and_then(|_| {
            std::process::Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        });
        let Some(child) = spawned else {
            eprintln!(
                "fleet: no MQTT broker on 127.0.0.1:{port} and `mosquitto` is not installed; running without the fleet link"
            );
            cfg.fleet.enabled = false;
            return DemoBroker(None);
        };
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && t0.elapsed().as_secs() < 5
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        println!(
            "fleet: started mosquitto on 127.0.0.1:{port}; watch with: mosquitto_sub -p {port} -t 'aegis/#' -v"
        );
        DemoBroker(Some(child))
    }
}

impl Drop for DemoBroker {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn demo(fast: bool, serve: bool, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let mut cfg = aegis_config::from_yaml_str(DEMO_CONFIG, "demo.yaml (built in)")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure_sample(&Path::new(SAMPLES_DIR).join("demo.mp4"), 1280, 720)?;
    let track = Path::new(SAMPLES_DIR).join("demo-track");
    if !track.join("track.nmea").exists() {
        crate::cli::sensors::simulate(&track, 60.0, &aegis_sensors::sim::SensorModel::default())?;
    }
    let _broker = DemoBroker::ensure(&mut cfg);
    let req = RunRequest {
        listen,
        options: RunOptions {
            force_realtime: Some(!fast),
            decoder_threads: 0,
            inference: None,
            store: None,
            events_topic: None,
            snapshots: None,
            sensing: None,
            backend: None,
        },
        linger: serve,
        scrape_metrics: true,
    };
    let summary = run_blocking(&cfg, req)?;
    print_reports(&summary);
    if let Some(body) = &summary.final_metrics {
        println!(
            "\n/metrics (excerpt, scraped over HTTP from {}):",
            summary.listen
        );
        for line in body.lines().filter(|l| {
            // (aegis_stream_fps is left out: it reads 0 once the streams have ended.)
            l.starts_with("aegis_frames_total")
                || l.starts_with("aegis_copies_per_frame")
                || l.starts_with("aegis_recording_segments_total")
                || l.starts_with("aegis_tracks_total")
                || l.starts_with("aegis_objects_total")
                || l.starts_with("aegis_moderated_frames_total")
                || l.starts_with("aegis_component_counter")
                || l.starts_with("aegis_process_resident_memory_bytes")
                || (l.starts_with("aegis_stage_latency_seconds_sum"))
        }) {
            println!("  {line}");
        }
    }
    if let Ok(st) = crate::store::stats(&cfg.store.path) {
        let rows: Vec<String> = st.rows.iter().map(|(t, n)| format!("{n} {t}")).collect();
        println!(
            "\nstore {}: {} (try: aegis db export --db {} --since 1h --format csv)",
            cfg.store.path.display(),
            rows.join(", "),
            cfg.store.path.display()
        );
    }
    println!("\nrecordings:");
    for r in &summary.streams {
        let dir = cfg
            .pipeline
            .sinks
            .iter()
            .find_map(|s| match s {
                aegis_config::SinkConfig::Record(r) => Some(r.dir.clone()),
                _ => None,
            })
            .unwrap_or_default()
            .join(&r.stream);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        files.sort();
        for f in files.iter().rev().take(3).rev() {
            println!(
                "  {}  {}",
                f.display(),
                probe(f).unwrap_or_else(|| "(ffprobe not installed)".into())
            );
        }
    }
    stream_failures(&summary)
}

/// `codec WxH, N frames, D s` from ffprobe, if it is installed.
fn probe(path: &Path) -> Option<String> {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames:format=duration",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let s = &v["streams"][0];
    Some(format!(
        "{} {}x{}, {} frames, {:.2} s",
        s["codec_name"].as_str()?,
        s["width"],
        s["height"],
        s["nb_read_frames"].as_str().unwrap_or("?"),
        v["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse::<f64>().ok())
            .unwrap_or(0.0)
    ))
}

fn bench(
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

fn provision(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let sign = aegis_ota::sign::SecretKey::generate()?;
    let kem = aegis_ota::seal::SealSecret::generate()?;
    let (sk, sp) = (dir.join("device.key"), dir.join("device.pub"));
    let (kk, kp) = (dir.join("device.kem.key"), dir.join("device.kem.pub"));
    for p in [&sk, &kk] {
        anyhow::ensure!(
            !p.exists(),
            "{} exists: this device is provisioned already (keys are never overwritten)",
            p.display()
        );
    }
    sign.write(&sk)?;
    sign.public().write(&sp)?;
    kem.write(&kk)?;
    kem.public().write(&kp)?;
    println!("signing key {} -> {}", sign.public().id(), sp.display());
    println!("sealing key {} -> {}", kem.public().id(), kp.display());
    println!(
        "enrol on the gateway: chimera enroll DEVICE_ID {} --kem {}",
        sp.display(),
        kp.display()
    );
    Ok(())
}

fn install_group_key(dir: &Path, delivery: &Path, issuer: &Path) -> anyhow::Result<()> {
    let installed = aegis_ota::seal::install_group_key(dir, delivery, issuer)?;
    println!(
        "group {}: key {} installed in {}",
        installed.group,
        installed.key_id,
        installed.path.display()
    );
    Ok(())
}

fn write_json<T: serde::Serialize>(path: Option<PathBuf>, v: &T) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(&p, serde_json::to_string_pretty(v)?)?;
    }
    Ok(())
}

fn fleet_sim(
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
            "{} devices: {} connected, produced {:.0} events/s, delivered {:.0} events/s, backlog {}; ping p50 {:.2} ms, p99 {:.2} ms ({} pings)",
            r.devices,
            r.connected,
            r.produced_per_s,
            r.delivered_per_s,
            r.backlog,
            r.rtt_p50_ms,
            r.rtt_p99_ms,
            r.pings
        );
        results.push(r);
    }
    write_json(json, &results)
}

fn bench_stages(
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
fn config_or_demo(path: Option<&Path>) -> anyhow::Result<AgentConfig> {
    match path {
        Some(p) => aegis_config::load(p),
        None => aegis_config::from_yaml_str(DEMO_CONFIG, "demo.yaml (built in)"),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))
}

fn bench_backends(
    config: Option<PathBuf>,
    clip: Option<PathBuf>,
    frames: u64,
    streams: Vec<usize>,
    all_stages: bool,
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
    let r = crate::tools::bench_backends::run(&cfg, &clip, frames.max(1), &streams)?;
    crate::tools::bench_backends::print(&r);
    if let Some(p) = json {
        std::fs::write(&p, serde_json::to_string_pretty(&r)?)?;
    }
    Ok(())
}

fn bench_rtsp(
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

/// `aegis track`: `det` (MOTChallenge detections) through a fresh tracker into `out`; with
/// `backfill`, confirmed tracks' tentative frames are written too.
fn track(
    det: &Path,
    out: &Path,
    cfg: aegis_models::track::TrackerConfig,
    backfill: bool,
) -> anyhow::Result<()> {
    use aegis_models::track::{Tracker, mot};
    let text =
        std::fs::read_to_string(det).with_context(|| format!("reading {}", det.display()))?;
    let dets = mot::parse_detections(&text).with_context(|| format!("{}", det.display()))?;
    let mut tracker = Tracker::new(cfg);
    let res = mot::track_file(&mut tracker, &dets, backfill);
    std::fs::write(out, &res).with_context(|| format!("writing {}", out.display()))?;
    let ids: std::collections::HashSet<&str> =
        res.lines().filter_map(|l| l.split(',').nth(1)).collect();
    println!(
        "{} frames, {} detections → {} track boxes, {} tracks; wrote {}",
        dets.keys().next_back().copied().unwrap_or(0),
        dets.values().map(Vec::len).sum::<usize>(),
        res.lines().count(),
        ids.len(),
        out.display()
    );
    Ok(())
}

#[cfg(test)]
mod track_tests {
    use super::track;
    use aegis_models::track::TrackerConfig;

    /// `aegis track` writes a track's rows from its first detection (after the first
    /// min_hits frames of the file, where everything is reported anyway), unless told not to.
    #[test]
    fn track_writes_the_backfilled_rows_in_frame_order() {
        let dir = tempfile::tempdir().unwrap();
        let (det, res) = (dir.path().join("det.txt"), dir.path().join("res.txt"));
        let rows: String = (5..=9)
            .map(|f| format!("{f},-1,{},20,30,60,0.9,-1,-1,-1\n", 10 + 3 * f))
            .collect();
        std::fs::write(&det, rows).unwrap();
        let frames = |backfill: bool| -> Vec<(u64, u64)> {
            track(&det, &res, TrackerConfig::default(), backfill).unwrap();
            std::fs::read_to_string(&res)
                .unwrap()
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f[0].parse().unwrap(), f[1].parse().unwrap())
                })
                .collect()
        };
        assert_eq!(frames(true), [(5, 1), (6, 1), (7, 1), (8, 1), (9, 1)]);
        assert_eq!(frames(false), [(7, 1), (8, 1), (9, 1)]);
        let first = std::fs::read_to_string(&res).unwrap();
        assert!(first.starts_with("7,1,"), "{first}");
        track(&det, &res, TrackerConfig::default(), true).unwrap();
        let filled = std::fs::read_to_string(&res).unwrap();
        assert!(
            filled.starts_with("5,1,25.00,20.00,30.00,60.00,0.900,-1,-1,-1\n"),
            "{filled}"
        );
    }
}
