//! `aegis run`, `aegis demo` and `aegis check-config`: load and validate the config, run
//! the agent until its input ends or a signal, report each stream and exit with a code that
//! says how the streams ended.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use aegis_config::{AgentConfig, ConfigError};
use anyhow::Context;

use super::{DEMO_CONFIG, EXIT_INVALID, SAMPLES_DIR, StreamsFailed};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::pipeline::RunOptions;
use crate::runtime::{RunRequest, RunSummary, run, select_backend};
use crate::tools::sample::{SampleSpec, generate};

/// Loads and validates a config; on failure prints every problem and returns exit code 2.
pub(super) fn load_config(path: &Path) -> Result<AgentConfig, ExitCode> {
    aegis_config::load(path).map_err(|e| {
        print_config_error(&e);
        ExitCode::from(EXIT_INVALID)
    })
}

pub(super) fn print_config_error(e: &ConfigError) {
    match e {
        ConfigError::Invalid { .. } => {
            let n = e.problems().len();
            eprintln!("{e}");
            eprintln!("{n} problem{} found", if n == 1 { "" } else { "s" });
        }
        other => eprintln!("error: {other}"),
    }
}

pub(super) fn check_config(files: &[PathBuf]) -> ExitCode {
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

pub(super) fn run_blocking(cfg: &AgentConfig, mut req: RunRequest) -> anyhow::Result<RunSummary> {
    let backend = select_backend(cfg)?;
    let metrics = Arc::new(Metrics::new(backend.kind.as_str()));
    req.options.backend = Some(backend);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("aegis-io")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = rt.block_on(run(cfg, req, metrics, |addr| {
        eprintln!("serving http://{addr}/metrics and http://{addr}/healthz");
    }));
    // Everything `run` owns has stopped; a blocking task still going (a model transfer
    // waiting for its next chunk or byte) must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    summary
}

pub(super) fn print_reports(s: &RunSummary) {
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
pub(super) fn stream_failures(s: &RunSummary) -> anyhow::Result<()> {
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
pub(super) struct DemoBroker(Option<std::process::Child>);

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

pub(super) fn demo(fast: bool, serve: bool, listen: Option<SocketAddr>) -> anyhow::Result<()> {
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
            ..Default::default()
        },
        linger: serve,
        scrape_metrics: true,
        config_path: None,
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
pub(super) fn probe(path: &Path) -> Option<String> {
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
