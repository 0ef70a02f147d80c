//! `aegis bench workflow`: publish → verified → pipeline reconfigured → receipt, through a
//! loopback mosquitto, against a real agent process (this binary, `aegis run`) playing a
//! 30 fps clip. Each workflow is signed and sealed for the device (as `chimera` does),
//! alternates between two stage chains (an in-place switch), and is timed from the publish
//! (after sealing and signing, which are timed apart) to the arrival of its verified receipt. The baseline, in the same run, is the
//! `cmd/ping` round trip through the same broker and agent: the transport's floor.
//! At the end the agent stops and its frame counts show whether any frame was lost.

use std::time::{Duration, Instant};

use aegis_ota::maml;
use aegis_ota::seal::SealSecret;
use aegis_ota::sign::{Purpose, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct WorkflowBench {
    /// Workflows applied.
    pub runs: usize,
    /// Health-check frames per switch.
    pub health_frames: u32,
    /// Publish → verified receipt, ms: from just before the publish (the document already
    /// sealed and signed) to the receipt's arrival and verification.
    pub round_trip_p50_ms: f64,
    /// Publish → verified receipt, ms.
    pub round_trip_p99_ms: f64,
    /// Arrival → verdict inside the agent (the receipt's `apply_ms`), ms.
    pub apply_p50_ms: f64,
    /// Arrival → verdict inside the agent, ms.
    pub apply_p99_ms: f64,
    /// Baseline: command round trip through the same broker and agent, ms.
    pub ping_p50_ms: f64,
    /// Sealing and signing each workflow on the gateway side, before the publish (not in the
    /// round trip), ms.
    pub prepare_p50_ms: f64,
    /// Round trip p50 / ping p50.
    pub ratio_p50: f64,
    /// Frames the agent decoded / delivered / dropped over the whole run.
    pub frames: (u64, u64, u64),
}

pub(crate) fn b64(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The `p` quantile (0 to 1) of `v` (sorted here).
pub(crate) fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Waits for the next publish on a topic ending in `suffix` (30 s at most).
pub(crate) async fn next(
    el: &mut rumqttc::v5::EventLoop,
    suffix: &[u8],
) -> anyhow::Result<rumqttc::v5::mqttbytes::v5::Publish> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), el.poll())
            .await
            .map_err(|_| anyhow::anyhow!("no answer within 30 s"))??;
        if let Event::Incoming(Packet::Publish(p)) = ev
            && p.topic.ends_with(suffix)
        {
            return Ok(p);
        }
    }
}

/// Waits (60 s at most) for a retained status saying `online` on a subscribed status topic.
pub(crate) async fn wait_online(el: &mut rumqttc::v5::EventLoop) -> anyhow::Result<()> {
    wait_state(el, "online").await?;
    // Subscriptions go out right after the status.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(())
}

/// Waits (60 s at most) for a status whose `state` is `state` on a subscribed status topic.
pub(crate) async fn wait_state(el: &mut rumqttc::v5::EventLoop, state: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), el.poll())
            .await
            .map_err(|_| anyhow::anyhow!("the agent's status never said {state}"))??;
        if let Event::Incoming(Packet::Publish(p)) = ev
            && p.topic.ends_with(b"/status")
            && serde_json::from_slice::<serde_json::Value>(&p.payload)
                .is_ok_and(|v| v["state"] == state)
        {
            return Ok(());
        }
    }
}

/// A root and one issuer `issuer` (any device; `models`: may ship models) in `d`:
/// `root.pub`, `trust.signed`, and the device's signing key in `keys/device.key`. Returns
/// the issuer's and the device's keys.
pub(crate) fn bench_trust(
    d: &std::path::Path,
    issuer: &str,
    models: bool,
) -> anyhow::Result<(SecretKey, SecretKey)> {
    let root = SecretKey::generate()?;
    let key = SecretKey::generate()?;
    std::fs::write(d.join("root.pub"), root.public().to_file_text())?;
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 1,
        expires_at: maml::format_time(maml::now_s() + 86_400),
        root: Roots {
            threshold: 1,
            keys: vec![b64(&root.public().to_bytes())],
        },
        issuers: vec![Issuer {
            name: issuer.into(),
            key: b64(&key.public().to_bytes()),
            devices: vec!["*".into()],
            groups: vec![],
            models,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    std::fs::write(d.join("trust.signed"), trust.sign(&[&root])?)?;
    std::fs::create_dir(d.join("keys"))?;
    let device_key = SecretKey::generate()?;
    device_key.write(&d.join("keys/device.key"))?;
    Ok((key, device_key))
}

/// Runs the benchmark: `runs` workflows, each judged on `health_frames` frames.
pub fn bench_workflow(runs: usize, health_frames: u32) -> anyhow::Result<WorkflowBench> {
    let broker = crate::tools::fleet_sim::LocalBroker::start()?;
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let (gw, device_key) = bench_trust(d, "gw", false)?;
    let seal_key = SealSecret::generate()?;
    seal_key.write(&d.join("keys").join(aegis_ota::seal::DEVICE_SECRET_KEY_FILE))?;
    let clip = d.join("clip.mp4");
    let mut spec = crate::tools::sample::SampleSpec::new(&clip);
    (spec.width, spec.height, spec.seconds) = (640, 360, 4.0);
    crate::tools::sample::generate(&spec)?;
    let web = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let pipeline = |stages: &str| {
        format!(
            "sources: [{{ id: cam0, url: \"file://{}\", loop: true, realtime: true }}]\nstages: {stages}\nsinks: [{{ kind: discard }}]",
            clip.display()
        )
    };
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            "device: {{ id: bench-1 }}\npipeline:\n{}\nstore: {{ path: {dd}/aegis.db }}\n\
             fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{port}\", telemetry_s: 60 }}\n\
             web: {{ listen: \"{web}\" }}\n\
             workflows:\n  enabled: true\n  state_dir: {dd}/wf\n  keys_dir: {dd}/keys\n  \
             trust: {{ roots: [{dd}/root.pub], metadata: {dd}/trust.signed }}\n  \
             policy: {{ paths: [{dd}] }}\n  health: {{ frames: {health_frames}, window_s: 5 }}\n",
            pipeline("[{ kind: timestamp_overlay }]")
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n"),
            dd = d.display(),
            port = broker.port,
        ),
    )?;
    let agent = std::process::Command::new(std::env::current_exe()?)
        .args(["run", "--config", cfg.to_str().unwrap_or_default()])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut o = MqttOptions::new("bench-gateway", "127.0.0.1", broker.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(256 * 1024));
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut el) = AsyncClient::new(o, 64);
        client
            .subscribe("aegis/v1/bench-1/receipts", QoS::AtLeastOnce)
            .await?;
        client
            .subscribe("aegis/v1/bench-1/status", QoS::AtLeastOnce)
            .await?;
        client.subscribe("bench/replies", QoS::AtLeastOnce).await?;
        wait_online(&mut el).await?;
        // Baseline: command round trips.
        let mut pings = Vec::new();
        for i in 0..30u32 {
            let props = PublishProperties {
                response_topic: Some("bench/replies".into()),
                correlation_data: Some(bytes::Bytes::from(i.to_le_bytes().to_vec())),
                ..Default::default()
            };
            let t0 = Instant::now();
            client
                .publish_with_properties(
                    "aegis/v1/bench-1/cmd/ping",
                    QoS::AtLeastOnce,
                    false,
                    "{}",
                    props,
                )
                .await?;
            next(&mut el, b"bench/replies").await?;
            pings.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        let (mut trips, mut applies, mut prepares) = (Vec::new(), Vec::new(), Vec::new());
        for i in 1..=runs as u64 {
            let stages = if i % 2 == 1 {
                "[{ kind: passthrough }]"
            } else {
                "[{ kind: timestamp_overlay, scale: 3 }]"
            };
            let now = maml::now_s();
            let (id, issued, expires) = (
                format!("00000000-0000-4000-8000-{i:012x}"),
                maml::format_time(now - 60),
                maml::format_time(now + 3600),
            );
            let draft = maml::Draft {
                id: &id,
                issuer: "gw",
                devices: &["bench-1"],
                groups: &[],
                sequence: i,
                issued_at: &issued,
                expires_at: &expires,
            };
            let text = maml::workflow_text(&draft, &pipeline(stages));
            // The gateway's work (seal, sign) is timed on its own: the round trip starts
            // at the publish.
            let t_prepare = Instant::now();
            let sealed = aegis_ota::seal::seal(&text, std::slice::from_ref(seal_key.public()))?;
            let mut doc = sealed.into_bytes();
            let block = gw.sign_block(&doc, Purpose::Workflow)?;
            doc.extend_from_slice(block.render().as_bytes());
            prepares.push(t_prepare.elapsed().as_secs_f64() * 1e3);
            let t0 = Instant::now();
            client
                .publish("aegis/v1/bench-1/workflows", QoS::AtLeastOnce, false, doc)
                .await?;
            let p = next(&mut el, b"/receipts").await?;
            let r = aegis_ota::receipt::Receipt::verify(&p.payload, device_key.public())?;
            trips.push(t0.elapsed().as_secs_f64() * 1e3);
            anyhow::ensure!(
                r.verdict == aegis_ota::receipt::Verdict::Applied && r.mode == "in_place",
                "workflow {i}: {} ({}) {}",
                r.verdict.as_str(),
                r.mode,
                r.reason
            );
            applies.push(r.apply_ms.unwrap_or(f64::NAN));
        }
        anyhow::Ok((pings, trips, applies, prepares))
    });
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let out = agent.wait_with_output()?;
    let (mut pings, mut trips, mut applies, mut prepares) = result?;
    let report = String::from_utf8_lossy(&out.stdout);
    let frames = frame_counts(&report)
        .ok_or_else(|| anyhow::anyhow!("no stream report from the agent:\n{report}"))?;
    let ping_p50 = pct(&mut pings, 0.5);
    let p50 = pct(&mut trips, 0.5);
    Ok(WorkflowBench {
        runs,
        health_frames,
        round_trip_p50_ms: p50,
        round_trip_p99_ms: pct(&mut trips, 0.99),
        apply_p50_ms: pct(&mut applies, 0.5),
        apply_p99_ms: pct(&mut applies, 0.99),
        ping_p50_ms: ping_p50,
        prepare_p50_ms: pct(&mut prepares, 0.5),
        ratio_p50: p50 / ping_p50,
        frames,
    })
}

/// (decoded, delivered, dropped) from `aegis run`'s report line `stream cam0: …`.
pub(crate) fn frame_counts(report: &str) -> Option<(u64, u64, u64)> {
    stream_frames(report, "cam0")
}

/// (decoded, delivered, dropped) of `stream` from `aegis run`'s report.
pub(crate) fn stream_frames(report: &str, stream: &str) -> Option<(u64, u64, u64)> {
    let prefix = format!("stream {stream}: ");
    let line = report.lines().find(|l| l.starts_with(&prefix))?;
    let num = |s: &str| s.split(' ').next()?.parse().ok();
    let mut parts = line[prefix.len()..].split(", ");
    Some((
        num(parts.next()?)?,
        num(parts.next()?)?,
        num(parts.next()?)?,
    ))
}

/// Prints the results.
pub fn print(r: &WorkflowBench) {
    println!(
        "workflow publish → verified receipt (loopback mosquitto, {} sealed workflows, in-place switch, health on {} frames at 30 fps): p50 {:.1} ms, p99 {:.1} ms",
        r.runs, r.health_frames, r.round_trip_p50_ms, r.round_trip_p99_ms
    );
    println!(
        "  inside the agent (arrival → verdict, health check included): p50 {:.1} ms, p99 {:.1} ms",
        r.apply_p50_ms, r.apply_p99_ms
    );
    println!(
        "  not in the round trip: sealing and signing on the gateway side, p50 {:.1} ms",
        r.prepare_p50_ms
    );
    println!(
        "  baseline cmd/ping round trip: p50 {:.2} ms; workflow / ping = {:.0}x",
        r.ping_p50_ms, r.ratio_p50
    );
    println!(
        "  frames over the run: {} decoded, {} delivered, {} dropped",
        r.frames.0, r.frames.1, r.frames.2
    );
}
