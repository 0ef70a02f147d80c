//! `aegis bench models`: a model bundle announced → verified → downloaded → installed →
//! health-checked → swapped into a running two-stream moderation pipeline → signed
//! receipt, through a loopback mosquitto and a loopback HTTP server — or, every other run,
//! with the files in chunks over the same broker (announced without a URL, served by this
//! process with `ChunkServer` as `chimera model publish --serve` does) — against a real agent
//! process (this binary, `aegis run`) playing a 30 fps clip on each stream. Every run
//! announces the next version of the same model (the real NudeNet file), so each one loads,
//! checks and swaps a 12 MB model. The receipt's phases say where the time went.
//!
//! Baseline, in the same run: what an operator does without model delivery — write the new
//! model into the configuration and restart the agent. It is timed from SIGTERM to the
//! restarted agent's retained `online` status (published once its pipeline runs with the
//! model loaded); a live camera loses every frame of that gap. At the end the agent stops
//! and its frame counts show whether a swap lost any frame.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_config::{BackendKind, ModelKindConfig};
use aegis_ota::maml;
use aegis_ota::model::{
    BundleFile, DType, HealthCheck, ModelManifest, ModelTarget, OutputBound, PlatformSpec, Runtime,
    Statistic, TensorSpec, sign_manifest,
};
use aegis_ota::model_chunks::{ChunkServer, parse_fetch_request};
use aegis_ota::model_wire::{Announcement, ModelReceipt, chunk_topic};
use rumqttc::v5::Event;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, MqttOptions};
use serde::Serialize;

use super::bench_workflow::{bench_trust, next, pct, stream_frames, wait_online, wait_state};

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct ModelsBench {
    /// Bundles installed per transport (HTTP, then as many over MQTT).
    pub runs: usize,
    /// Size of the model file, bytes.
    pub model_bytes: u64,
    /// Announcement published → verified `applied` receipt received, ms (files over HTTP).
    pub round_trip_p50_ms: f64,
    /// Announcement published → verified receipt, ms (files over HTTP).
    pub round_trip_p99_ms: f64,
    /// The same with the files over MQTT in chunks (served by this process from the
    /// bundle directory through the broker, as `chimera model publish --serve` does), p50.
    pub mqtt_round_trip_p50_ms: f64,
    /// The same over MQTT, p99.
    pub mqtt_round_trip_p99_ms: f64,
    /// The transfer phase's p50 over HTTP and over MQTT, ms.
    pub transfer_p50_ms: (f64, f64),
    /// Inside the agent: verify + install + load + health + swap (no transfer, no judging
    /// window), ms.
    pub install_swap_p50_ms: f64,
    /// The same, p99.
    pub install_swap_p99_ms: f64,
    /// Each phase's p50 over both transports (verify, transfer, install, load, health,
    /// swap, judge), ms.
    pub phases_p50_ms: Vec<(String, f64)>,
    /// Baseline: SIGTERM → restarted agent online with the new model, ms: the time the
    /// streams run without analytics (a live camera's frames are lost).
    pub restart_ms: f64,
    /// The OTA path's time without the new chain: the swap step (every stream's chain
    /// built and handed over; each stream takes it between two frames), p50 ms.
    pub swap_p50_ms: f64,
    /// Analytics downtime, restart / OTA swap.
    pub ratio_downtime: f64,
    /// Frames decoded / delivered / dropped per stream over the OTA runs.
    pub frames: Vec<(String, u64, u64, u64)>,
}

/// A static file server on loopback for the bundle directory (plain HTTP, no ranges:
/// each transfer here is whole).
fn serve(root: PathBuf) -> anyhow::Result<u16> {
    use std::io::{BufRead, BufReader, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || -> std::io::Result<()> {
                let mut r = BufReader::new(s.try_clone()?);
                let mut line = String::new();
                r.read_line(&mut line)?;
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h)? == 0 || h == "\r\n" {
                        break;
                    }
                }
                let path = line.split_whitespace().nth(1).unwrap_or("/");
                let mut s = s;
                // Only plain names under the root (the bench's own files).
                let safe = !path.contains("..");
                match std::fs::read(root.join(path.trim_start_matches('/'))) {
                    Ok(data) if safe => {
                        write!(
                            s,
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            data.len()
                        )?;
                        s.write_all(&data)
                    }
                    _ => s.write_all(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    ),
                }
            });
        }
    });
    Ok(port)
}

fn start_agent(cfg: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .args(["run", "--config", cfg.to_str().unwrap_or_default()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?)
}

fn stop(agent: Child) -> anyhow::Result<String> {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The manifest of version `version` of `nn` over `files`.
fn manifest(version: u64, files: Vec<BundleFile>) -> ModelManifest {
    let now = maml::now_s();
    ModelManifest {
        issuer: "models-gw".into(),
        target: ModelTarget {
            devices: vec!["bench-1".into()],
            groups: vec![],
        },
        issued_at: maml::format_time(now - 60),
        expires_at: maml::format_time(now + 3600),
        kind: ModelKindConfig::Nudenet,
        labels: None,
        inputs: vec![TensorSpec {
            name: "images".into(),
            dtype: DType::Float32,
            shape: vec![-1, 3, 320, 320],
        }],
        outputs: vec![TensorSpec {
            name: "output0".into(),
            dtype: DType::Float32,
            shape: vec![-1, 22, 2100],
        }],
        platform: PlatformSpec {
            backends: vec![BackendKind::Cpu, BackendKind::Cuda, BackendKind::Jetson],
            runtime: Runtime::Onnx {},
        },
        min_agent_version: env!("CARGO_PKG_VERSION").into(),
        health: HealthCheck {
            reference_input: "input.bin".into(),
            expected: vec![OutputBound {
                output: "output0".into(),
                statistic: Statistic::Max,
                min: 0.0,
                max: 1000.0,
            }],
        },
        ..ModelManifest::example("nn", version, files)
    }
}

/// Answers the agent's chunk requests from `server` until its receipt arrives (30 s at
/// most without one).
async fn serve_until_receipt(
    client: &AsyncClient,
    el: &mut rumqttc::v5::EventLoop,
    server: &ChunkServer,
) -> anyhow::Result<rumqttc::v5::mqttbytes::v5::Publish> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), el.poll())
            .await
            .map_err(|_| anyhow::anyhow!("no receipt within 30 s"))??;
        let Event::Incoming(Packet::Publish(p)) = ev else {
            continue;
        };
        if p.topic.ends_with(b"/receipts") {
            return Ok(p);
        }
        if p.topic.ends_with(b"/ota/fetch") {
            let req = parse_fetch_request(&p.payload).map_err(anyhow::Error::msg)?;
            client.try_publish(
                chunk_topic("bench-1"),
                QoS::AtLeastOnce,
                false,
                server.answer(&req).message,
            )?;
        }
    }
}

/// Runs the benchmark: `runs` bundles over each transport of `model` (NudeNet 320, ONNX) and `runtime` (the
/// ONNX Runtime library).
pub fn bench_models(runs: usize, model: &Path, runtime: &Path) -> anyhow::Result<ModelsBench> {
    let model = model
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e} (run `just models`)", model.display()))?;
    let runtime = runtime
        .canonicalize()
        .map_err(|e| anyhow::anyhow!("{}: {e} (run `just models`)", runtime.display()))?;
    let broker = crate::tools::fleet_sim::LocalBroker::start()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    // Root, a model issuer and trust metadata; the device's key.
    let (issuer, device_key) = bench_trust(d, "models-gw", true)?;
    // The bundle's files, served from `bundle/`.
    let bundle = d.join("bundle");
    std::fs::create_dir(&bundle)?;
    std::fs::copy(&model, bundle.join("model.onnx"))?;
    let grey: Vec<u8> = std::iter::repeat_n(0.5f32.to_le_bytes(), 3 * 320 * 320)
        .flatten()
        .collect();
    std::fs::write(bundle.join("input.bin"), grey)?;
    let files: Vec<BundleFile> = aegis_ota::model::scan_bundle(&bundle)?;
    let model_bytes = std::fs::metadata(bundle.join("model.onnx"))?.len();
    let http = serve(d.to_path_buf())?;
    let clip = d.join("clip.mp4");
    let mut spec = crate::tools::sample::SampleSpec::new(&clip);
    (spec.width, spec.height, spec.seconds) = (640, 360, 4.0);
    crate::tools::sample::generate(&spec)?;
    let web = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let write_cfg = |model_file: &Path| -> anyhow::Result<PathBuf> {
        let cfg = d.join("aegis.yaml");
        std::fs::write(
            &cfg,
            format!(
                "device: {{ id: bench-1 }}\npipeline:\n  sources:\n    - {{ id: cam0, url: \"file://{clip}\", loop: true, realtime: true }}\n    - {{ id: cam1, url: \"file://{clip}\", loop: true, realtime: true }}\n  stages: [{{ kind: moderate, model: nn, every_n_frames: 2 }}]\n  sinks: [{{ kind: discard }}]\n\
                 inference:\n  runtime: {rt}\n  models: [{{ name: nn, kind: nudenet, file: {m} }}]\n\
                 store: {{ path: {dd}/aegis.db }}\n\
                 fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{port}\", telemetry_s: 60 }}\n\
                 web: {{ listen: \"{web}\" }}\n\
                 workflows:\n  enabled: true\n  state_dir: {dd}/wf\n  keys_dir: {dd}/keys\n  \
                 trust: {{ roots: [{dd}/root.pub], metadata: {dd}/trust.signed }}\n  \
                 policy: {{ paths: [{dd}] }}\n  health: {{ frames: 5, window_s: 5 }}\n  \
                 models: {{ dir: {dd}/models, download_hosts: [127.0.0.1], https_only: false }}\n",
                clip = clip.display(),
                rt = runtime.display(),
                m = model_file.display(),
                dd = d.display(),
                port = broker.port,
            ),
        )?;
        Ok(cfg)
    };
    let cfg = write_cfg(&model)?;
    let mut agent = start_agent(&cfg)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let url = format!("http://127.0.0.1:{http}/bundle");
    let bundle = bundle.clone();
    let result = rt.block_on(async {
        let mut o = MqttOptions::new("bench-gateway", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(256 * 1024));
        let (client, mut el) = AsyncClient::new(o, 64);
        client
            .subscribe("aegis/v1/bench-1/receipts", QoS::AtLeastOnce)
            .await?;
        client
            .subscribe("aegis/v1/bench-1/status", QoS::AtLeastOnce)
            .await?;
        wait_online(&mut el).await?;
        client
            .subscribe("aegis/v1/bench-1/ota/fetch", QoS::AtLeastOnce)
            .await?;
        let (mut trips, mut inside) = ([Vec::new(), Vec::new()], Vec::new());
        let mut transfers = [Vec::new(), Vec::new()];
        let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
        // Alternating: even runs over HTTP, odd ones over MQTT.
        for (i, version) in (2..(2 + 2 * runs as u64)).enumerate() {
            let m = manifest(version, files.clone());
            let json = serde_json::to_vec(&m)?;
            let signed = String::from_utf8(sign_manifest(&json, &issuer)?)?;
            let via = i % 2;
            let (url, server) = match via {
                0 => (Some(url.clone()), None),
                _ => (None, Some(ChunkServer::new(&bundle, &m)?)),
            };
            let announcement = Announcement::new(signed, url).to_json();
            let t0 = Instant::now();
            client
                .publish(
                    "aegis/v1/bench-1/models",
                    QoS::AtLeastOnce,
                    false,
                    announcement,
                )
                .await?;
            let p = match &server {
                None => next(&mut el, b"/receipts").await?,
                Some(server) => serve_until_receipt(&client, &mut el, server).await?,
            };
            let r = ModelReceipt::verify(&p.payload, device_key.public())?;
            trips[via].push(t0.elapsed().as_secs_f64() * 1e3);
            if let Some((_, ms)) = r.phases.iter().find(|(k, _)| k == "transfer") {
                transfers[via].push(*ms);
            }
            anyhow::ensure!(
                r.verdict == aegis_ota::receipt::Verdict::Applied && r.version == version,
                "version {version}: {} {}",
                r.verdict.as_str(),
                r.reason
            );
            inside.push(
                r.phases
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "transfer" | "judge"))
                    .map(|(_, v)| v)
                    .sum::<f64>(),
            );
            for (k, v) in r.phases {
                match phases.iter_mut().find(|(n, _)| *n == k) {
                    Some((_, list)) => list.push(v),
                    None => phases.push((k, vec![v])),
                }
            }
        }
        anyhow::Ok((trips, inside, phases, transfers))
    });
    let report = stop(agent)?;
    let ([mut trips, mut mqtt_trips], mut inside, phases, [mut http_t, mut mqtt_t]) = result?;
    let frames = ["cam0", "cam1"]
        .iter()
        .map(|s| {
            stream_frames(&report, s)
                .map(|(a, b, c)| (s.to_string(), a, b, c))
                .ok_or_else(|| anyhow::anyhow!("no report for {s} from the agent:\n{report}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Baseline: the new model written into the configuration, the agent restarted.
    let replacement = d.join("replacement.onnx");
    std::fs::copy(&model, &replacement)?;
    let cfg = write_cfg(&replacement)?;
    agent = start_agent(&cfg)?;
    let restart_ms = rt.block_on(async {
        let mut o = MqttOptions::new("bench-restart", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(30));
        let (client, mut el) = AsyncClient::new(o, 64);
        client
            .subscribe("aegis/v1/bench-1/status", QoS::AtLeastOnce)
            .await?;
        wait_online(&mut el).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pid = agent.id() as i32;
        let t0 = Instant::now();
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        agent.wait()?;
        let mut again = start_agent(&cfg)?;
        // The stopping agent says offline first; then the new process's online status.
        wait_state(&mut el, "offline").await?;
        let r = wait_state(&mut el, "online").await;
        let ms = t0.elapsed().as_secs_f64() * 1e3;
        // SAFETY: as above, on the new child.
        unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
        again.wait()?;
        r.map(|_| ms)
    })?;
    let p50 = pct(&mut trips, 0.5);
    let swap_p50 = phases
        .iter()
        .find(|(k, _)| k == "swap")
        .map(|(_, v)| pct(&mut v.clone(), 0.5))
        .unwrap_or(f64::NAN);
    Ok(ModelsBench {
        runs,
        model_bytes,
        round_trip_p50_ms: p50,
        round_trip_p99_ms: pct(&mut trips, 0.99),
        mqtt_round_trip_p50_ms: pct(&mut mqtt_trips, 0.5),
        mqtt_round_trip_p99_ms: pct(&mut mqtt_trips, 0.99),
        transfer_p50_ms: (pct(&mut http_t, 0.5), pct(&mut mqtt_t, 0.5)),
        install_swap_p50_ms: pct(&mut inside, 0.5),
        install_swap_p99_ms: pct(&mut inside, 0.99),
        phases_p50_ms: phases
            .into_iter()
            .map(|(k, mut v)| (k, pct(&mut v, 0.5)))
            .collect(),
        restart_ms,
        swap_p50_ms: swap_p50,
        ratio_downtime: restart_ms / swap_p50,
        frames,
    })
}

/// Prints the results.
pub fn print(r: &ModelsBench) {
    println!(
        "model bundle announcement → verified receipt (loopback mosquitto and HTTP, {} bundles of a {} MB NudeNet model, two 30 fps streams): p50 {:.0} ms, p99 {:.0} ms",
        r.runs,
        r.model_bytes / 1_000_000,
        r.round_trip_p50_ms,
        r.round_trip_p99_ms
    );
    println!(
        "  the same with the files over MQTT (chunks through the broker): p50 {:.0} ms, p99 {:.0} ms; transfer p50: HTTP {:.0} ms, MQTT {:.0} ms ({:.1}x)",
        r.mqtt_round_trip_p50_ms,
        r.mqtt_round_trip_p99_ms,
        r.transfer_p50_ms.0,
        r.transfer_p50_ms.1,
        r.transfer_p50_ms.1 / r.transfer_p50_ms.0
    );
    println!(
        "  verify + install + load + health check + swap inside the agent: p50 {:.0} ms, p99 {:.0} ms",
        r.install_swap_p50_ms, r.install_swap_p99_ms
    );
    let phases: Vec<String> = r
        .phases_p50_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.1}"))
        .collect();
    println!("  phases, p50 ms: {}", phases.join(", "));
    println!(
        "  analytics downtime: OTA swap p50 {:.2} ms (between two frames) vs the baseline, the model changed in the config and the agent restarted, {:.0} ms (SIGTERM → online; ≈{:.0} frames per 30 fps camera lost): {:.0}x",
        r.swap_p50_ms,
        r.restart_ms,
        r.restart_ms * 30.0 / 1e3,
        r.ratio_downtime
    );
    for (s, dec, del, drop) in &r.frames {
        println!("  {s} over the OTA runs: {dec} decoded, {del} delivered, {drop} dropped");
    }
}
