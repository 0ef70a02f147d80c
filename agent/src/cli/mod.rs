//! The `aegis` command line.

mod bench;
pub mod db;
mod device;
mod doctor;
pub mod evidence;
pub mod firmware;
pub mod models;
mod run;
pub mod sensors;
mod track;
pub mod user;
pub mod workflow;

pub use run::ensure_sample;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use aegis_config::LogFormat;
use clap::{Parser, Subcommand, ValueEnum};

use crate::pipeline::RunOptions;
use crate::runtime::RunRequest;
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
    /// Simulated devices that answer signed workflows with signed receipts (the agent's
    /// own fleet link and workflow checks, no pipeline): a fleet for gateway rollouts.
    SimDevices {
        #[command(subcommand)]
        what: SimDevicesCommand,
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
    /// Model bundles installed over the air: list them.
    Models {
        #[command(subcommand)]
        what: crate::cli::models::ModelsCommand,
    },
    /// The technician web page's accounts: add, change a password, delete, list.
    User {
        #[command(subcommand)]
        what: crate::cli::user::UserCommand,
    },
    /// The local database: stats, integrity check, vacuum, export.
    Db {
        #[command(subcommand)]
        what: crate::cli::db::DbCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: bench::BenchCommand,
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
    /// What a technician runs on a fresh device: the module and Jetson Linux release, GPU
    /// libraries and backend, hardware codecs, V4L2 cameras, ONNX Runtime and its
    /// providers, models, disk, clock sync, broker, keys and trust, and what the agent will
    /// use. Exits 1 when it cannot run (a FAIL line says why).
    Doctor {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: PathBuf,
        /// Read the platform files (/proc, /sys, /etc/nv_tegra_release, /dev) under this
        /// folder instead of / (an image's root filesystem).
        #[arg(long)]
        root: Option<PathBuf>,
        /// One JSON object instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Event clips: list, export (decrypted, checked against the signed manifest), legal
    /// hold.
    Evidence {
        #[command(subcommand)]
        what: evidence::EvidenceCommand,
    },
    /// Firmware A/B updates: the privileged helper, the boot check for the boot verifier,
    /// the firmware record.
    Firmware {
        #[command(subcommand)]
        what: firmware::FirmwareCommand,
    },
    /// Print versions of the agent and the libraries it loaded; with `--config`, also the
    /// SHA-256 fingerprint of the web page's device certificate (what a technician compares
    /// with the one the browser shows).
    Version {
        /// The agent's config (its store folder holds the certificate).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
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

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_override = cli.log_format.map(|f| match f {
        LogFormatArg::Human => LogFormat::Human,
        LogFormatArg::Json => LogFormat::Json,
        LogFormatArg::Journald => LogFormat::Journald,
    });
    let log_at = |level: &str| {
        crate::logging::init(log_override.unwrap_or(LogFormat::Human), level);
    };
    let result = match cli.command {
        Command::Run {
            config,
            listen,
            realtime,
        } => match run::load_config(&config) {
            Ok(cfg) => {
                crate::logging::init(log_override.unwrap_or(cfg.log.format), &cfg.log.level);
                let req = RunRequest {
                    listen,
                    options: RunOptions {
                        force_realtime: realtime.then_some(true),
                        ..Default::default()
                    },
                    config_path: Some(config.clone()),
                    ..Default::default()
                };
                run::run_blocking(&cfg, req).and_then(|s| {
                    run::print_reports(&s);
                    run::stream_failures(&s)
                })
            }
            Err(code) => return code,
        },
        Command::Demo {
            fast,
            serve,
            listen,
        } => {
            log_at("info");
            run::demo(fast, serve, listen)
        }
        Command::CheckConfig { files } => return run::check_config(&files),
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
        Command::Bench { what } => bench::run(what, log_at),
        Command::FleetSim {
            devices,
            seconds,
            rate,
            pings,
            json,
        } => {
            log_at("error");
            bench::fleet_sim(devices, seconds, rate, pings, json)
        }
        Command::SimDevices { what } => {
            log_at("error");
            match what {
                SimDevicesCommand::Provision {
                    dir,
                    devices,
                    prefix,
                    group,
                    trust,
                    root,
                } => crate::tools::fleet_devices::provision(
                    &dir, devices, &prefix, &group, &trust, &root,
                ),
                SimDevicesCommand::Run {
                    dir,
                    broker,
                    seconds,
                    fail,
                } => crate::tools::fleet_devices::run(&dir, &broker, seconds, fail),
            }
        }
        Command::Sensors { what } => {
            log_at("warn");
            crate::cli::sensors::run(what)
        }
        Command::CudaGolden { out } => {
            log_at("warn");
            crate::tools::cuda_golden::write(&out)
        }
        Command::Workflow { what } => {
            log_at("warn");
            crate::cli::workflow::run(what)
        }
        Command::Models { what } => {
            log_at("warn");
            crate::cli::models::run(what)
        }
        Command::User { what } => {
            log_at("warn");
            crate::cli::user::run(what)
        }
        Command::Db { what } => {
            log_at("warn");
            crate::cli::db::run(what)
        }
        Command::Sample(spec) => {
            log_at("info");
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
            track::track(&det, &out, cfg, !no_backfill)
        }
        Command::Provision {
            dir,
            group_key,
            issuer,
        } => {
            log_at("warn");
            match (group_key, issuer) {
                (Some(d), Some(i)) => device::install_group_key(&dir, &d, &i),
                _ => device::provision(&dir),
            }
        }
        Command::Version { config } => device::version(config.as_deref()),
        Command::Evidence { what } => {
            log_at("info");
            return evidence::evidence(what);
        }
        Command::Firmware { what } => {
            log_at("info");
            return firmware::firmware(what);
        }
        Command::Doctor { config, root, json } => {
            log_at("warn");
            return doctor::doctor(&config, root.as_deref(), json);
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

fn write_json<T: serde::Serialize>(path: Option<PathBuf>, v: &T) -> anyhow::Result<()> {
    if let Some(p) = path {
        std::fs::write(&p, serde_json::to_string_pretty(v)?)?;
    }
    Ok(())
}

/// `aegis sim-devices …`.
#[derive(Subcommand, Debug)]
pub enum SimDevicesCommand {
    /// Make N devices: their keys, `devices.json` (the gateway's registry format) and
    /// `fleet.json`, in DIR.
    Provision {
        /// Where the fleet lives.
        #[arg(long)]
        dir: PathBuf,
        /// How many devices.
        #[arg(long)]
        devices: usize,
        /// Device ids are PREFIX-00000, PREFIX-00001, …
        #[arg(long, default_value = "sim")]
        prefix: String,
        /// Groups every device is in (repeat for several).
        #[arg(long)]
        group: Vec<String>,
        /// The signed trust metadata the devices start with.
        #[arg(long)]
        trust: PathBuf,
        /// A root public key (repeat for several).
        #[arg(long)]
        root: Vec<PathBuf>,
    },
    /// Connect DIR's devices to a broker and answer every workflow until SIGTERM.
    Run {
        /// What `provision` made.
        #[arg(long)]
        dir: PathBuf,
        /// The broker, HOST:PORT (plain MQTT).
        #[arg(long)]
        broker: String,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<f64>,
        /// A workflow id whose pipeline "fails its health check" on every device: answered
        /// `rolled_back` (repeat for several).
        #[arg(long)]
        fail: Vec<String>,
    },
}
