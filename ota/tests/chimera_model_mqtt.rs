//! `chimera model publish|status` against a real mosquitto: the gateway serves a bundle
//! over MQTT chunks (`--serve`) to a small device client built on the library's
//! `ChunkFetcher` and rumqttc; the broker is killed twice in the middle (once the device
//! keeps its fetcher, once it "restarts" and resumes from its `.part` files) and the staged
//! files must verify against the manifest. Then `model status` shows what the device
//! reports and its receipt (a forged one shown as unverified); `--url` publishes a
//! retained announcement that devices parse, and a bundle that does not match its manifest
//! is never announced.
#![cfg(feature = "gateway")]

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use aegis_config::BackendKind;
use aegis_ota::device::Identity;
use aegis_ota::model::{
    ModelContext, Platform, VerifiedManifest, verify_bundle_files, verify_manifest,
};
use aegis_ota::model_chunks::{ChunkFetcher, fetch_request_json};
use aegis_ota::model_wire::{
    Announcement, FetchRequest, MODEL_RECEIPT_TYPE, ModelMessage, ModelReceipt, chunk_topic,
    device_models_topic, fetch_topic, parse_model_message,
};
use aegis_ota::receipt::Verdict;
use aegis_ota::sign::{PublicKey, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};

mod common;
use common::serve::command;
use common::{Broker, have_mosquitto};

// ---------------------------------------------------------------------------------------
// chimera.

fn chimera(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("run chimera")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(
        o.status.success(),
        "chimera {args:?}: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Deterministic bytes (xorshift).
fn bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A gateway in `d`: issuer key `gw`, devices `orin-1` (group site-a, key `dev1`) and
/// `orin-2` (group site-b), a bundle (a model of about 1.5 MB: 13 chunks) packed and
/// signed for orin-1 as `manifest.json.signed`; returns the device's verified manifest.
fn gateway(d: &Path) -> VerifiedManifest {
    ok(d, &["keygen", "--out", "gw"]);
    ok(d, &["keygen", "--out", "dev1"]);
    ok(d, &["keygen", "--out", "dev2"]);
    ok(d, &["enroll", "orin-1", "dev1.pub", "--group", "site-a"]);
    ok(d, &["enroll", "orin-2", "dev2.pub", "--group", "site-b"]);
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("health")).unwrap();
    std::fs::write(bundle.join("model.onnx"), bytes(1, 1_500_000)).unwrap();
    std::fs::write(bundle.join("labels.txt"), "person\ncar\n").unwrap();
    std::fs::write(bundle.join("health/input.bin"), bytes(2, 4096)).unwrap();
    #[rustfmt::skip]
    ok(d, &[
        "model", "pack", "bundle", "--name", "moderation", "--version", "4", "--kind", "yolov8",
        "--device", "orin-1", "--model", "model.onnx", "--labels", "labels.txt",
        "--input", "images:float32:1x3x640x640", "--output", "output0:float32:1x84x8400",
        "--reference-input", "health/input.bin", "--expect", "output0:max:0.5:1",
        "--out", "manifest.json",
    ]);
    ok(d, &["model", "sign", "manifest.json", "--key", "gw.key"]);
    device_check(d, &std::fs::read(d.join("manifest.json.signed")).unwrap())
}

/// The device's check of a signed manifest (trust metadata letting `gw` ship models).
fn device_check(d: &Path, signed: &[u8]) -> VerifiedManifest {
    use base64::Engine as _;
    let key = PublicKey::read(&d.join("gw.pub")).unwrap();
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 1,
        expires_at: "9999-01-01T00:00:00Z".into(),
        root: Roots {
            threshold: 1,
            keys: vec![],
        },
        issuers: vec![Issuer {
            name: "fleet-gw-1".into(),
            key: base64::engine::general_purpose::STANDARD.encode(key.to_bytes()),
            devices: vec!["*".into()],
            groups: vec!["*".into()],
            models: true,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    let ctx = ModelContext {
        identity: Identity {
            id: "orin-1".into(),
            groups: vec!["site-a".into()],
        },
        platform: Platform {
            backend: BackendKind::Cpu,
            module: None,
            trt_version: None,
        },
        agent_version: env!("CARGO_PKG_VERSION").into(),
        now_s: aegis_ota::maml::now_s(),
        max_clock_skew_s: 300,
        installed_version: None,
        free_disk_bytes: 1 << 40,
        max_bundle_bytes: 1 << 30,
    };
    verify_manifest(signed, &trust, &ctx).expect("the device accepts the manifest")
}

fn mqtt(port: u16, id: &str) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_max_packet_size(Some(256 * 1024));
    AsyncClient::new(o, 64)
}

/// The retained message on `topic` (None when nothing arrives within `wait`).
async fn retained(port: u16, topic: &str, wait: Duration) -> Option<Vec<u8>> {
    let (client, mut el) = mqtt(port, "test-reader");
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let ev = tokio::time::timeout_at(deadline, el.poll()).await.ok()?;
        match ev.expect("broker") {
            Event::Incoming(Packet::ConnAck(_)) => {
                client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
            }
            Event::Incoming(Packet::Publish(p)) if !p.payload.is_empty() => {
                let _ = client.disconnect().await;
                return Some(p.payload.to_vec());
            }
            _ => {}
        }
    }
}

async fn publish_retained(port: u16, topic: &str, payload: Vec<u8>) {
    let (client, mut el) = mqtt(port, "test-writer");
    client
        .publish(topic, QoS::AtLeastOnce, true, payload)
        .await
        .unwrap();
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < Duration::from_secs(30), "no PUBACK");
        if let Event::Incoming(Packet::PubAck(_)) = el.poll().await.expect("broker") {
            let _ = client.disconnect().await;
            return;
        }
    }
}

/// What the device client saw.
#[derive(Default, Debug)]
struct Seen {
    /// Bytes on disk when each new fetcher started.
    resumed_at: Vec<u64>,
    reconnects: usize,
    ignored: u64,
    /// Chunk messages that reached orin-2's topic.
    untargeted_answers: usize,
}

/// A device on the broker: takes the retained announcement, fetches the bundle in chunks
/// into `staging`. At 30 % of the bundle it kills the broker and restarts it (keeping its
/// fetcher: outstanding chunks are asked again after the reconnect); at 60 % again, this
/// time dropping its fetcher as a device restart would (a new one resumes from the
/// parts). Also asks as orin-2, which the publish does not target.
async fn device(broker: &mut Broker, d: &Path, staging: &Path) -> (Seen, VerifiedManifest) {
    let port = broker.port;
    let (client, mut el) = mqtt(port, "orin-1");
    let mut seen = Seen::default();
    let mut verified: Option<VerifiedManifest> = None;
    let mut fetcher: Option<ChunkFetcher> = None;
    let mut kills = 0;
    let mut last_chunk = Instant::now();
    let t0 = Instant::now();
    let send = |client: &AsyncClient, reqs: Vec<FetchRequest>| {
        for r in reqs {
            // Dropped while the link is down: asked again after a timeout.
            let _ = client.try_publish(
                fetch_topic("orin-1"),
                QoS::AtLeastOnce,
                false,
                fetch_request_json(&r),
            );
        }
        // orin-2 asks too (the publish does not target it), alongside orin-1's requests
        // until chimera has seen one (a request sent before it subscribed is lost).
        if !serve_log(d).contains("orin-2: chunk requests ignored") {
            let r = FetchRequest {
                name: "moderation".into(),
                version: 4,
                file: "labels.txt".into(),
                offset: 0,
                length: 11,
            };
            let _ = client.try_publish(
                fetch_topic("orin-2"),
                QoS::AtLeastOnce,
                false,
                fetch_request_json(&r),
            );
        }
    };
    loop {
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "hang guard: the transfer never finished: {seen:?} {:?}",
            fetcher.as_ref().map(|f| f.progress())
        );
        if fetcher.as_ref().is_some_and(|f| f.is_done()) {
            break;
        }
        let ev = match tokio::time::timeout(Duration::from_millis(500), el.poll()).await {
            Err(_) => None,
            Ok(Ok(ev)) => Some(ev),
            Ok(Err(_)) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                None
            }
        };
        // Nothing for two seconds: ask again what is outstanding.
        if last_chunk.elapsed() > Duration::from_secs(2) {
            if let Some(f) = fetcher.as_mut() {
                f.on_timeout();
                send(&client, f.next_requests());
            }
            last_chunk = Instant::now();
        }
        let Some(ev) = ev else { continue };
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                seen.reconnects += 1;
                for t in [
                    device_models_topic("orin-1"),
                    chunk_topic("orin-1"),
                    chunk_topic("orin-2"),
                ] {
                    client.try_subscribe(t, QoS::AtLeastOnce).unwrap();
                }
                if let (None, Some(v)) = (&fetcher, &verified) {
                    // Restarted: a new fetcher resumes from the parts.
                    let f = ChunkFetcher::new(
                        &v.manifest.name,
                        v.manifest.version,
                        &v.manifest.files,
                        staging,
                    )
                    .unwrap();
                    seen.resumed_at.push(f.progress().done);
                    fetcher = Some(f);
                }
                if let Some(f) = fetcher.as_mut() {
                    f.on_timeout();
                    send(&client, f.next_requests());
                }
            }
            Event::Incoming(Packet::Publish(p)) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                if topic == device_models_topic("orin-1") {
                    if verified.is_some() {
                        continue; // the retained announcement again, after a reconnect
                    }
                    let ModelMessage::Announcement(a) = parse_model_message(&p.payload).unwrap()
                    else {
                        panic!("not an announcement");
                    };
                    assert_eq!(a.url, None, "files over MQTT");
                    let v = device_check(d, a.manifest.as_bytes());
                    let mut f = ChunkFetcher::new(
                        &v.manifest.name,
                        v.manifest.version,
                        &v.manifest.files,
                        staging,
                    )
                    .unwrap();
                    seen.resumed_at.push(f.progress().done);
                    send(&client, f.next_requests());
                    verified = Some(v);
                    fetcher = Some(f);
                    last_chunk = Instant::now();
                } else if topic == chunk_topic("orin-2") {
                    seen.untargeted_answers += 1;
                } else if topic == chunk_topic("orin-1") {
                    let Some(f) = fetcher.as_mut() else { continue };
                    last_chunk = Instant::now();
                    let p = f.on_chunk(&p.payload).expect("the transfer goes on");
                    seen.ignored = p.ignored;
                    let threshold = [30.0, 60.0].get(kills).copied();
                    if threshold.is_some_and(|t| p.percent >= t) && p.percent < 100.0 {
                        kills += 1;
                        broker.kill();
                        if kills == 2 {
                            fetcher = None; // the device restarts too
                        }
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                        broker.up();
                        continue;
                    }
                    send(&client, f.next_requests());
                }
            }
            _ => {}
        }
    }
    let _ = client.disconnect().await;
    (seen, verified.unwrap())
}

#[test]
fn a_bundle_served_over_mqtt_survives_broker_restarts_and_verifies() {
    if !have_mosquitto("chimera_model_mqtt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let v = gateway(d);
    let mut broker = Broker::start(&d.join("broker"));
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let mut serve = command(
        d,
        &[
            "model",
            "publish",
            "manifest.json.signed",
            "--broker",
            &broker.addr(),
            "--device",
            "orin-1",
            "--serve",
            "bundle",
            "--serve-for",
            "10m",
            "--state",
            "state",
        ],
    )
    .stdout(log.try_clone().unwrap())
    .stderr(log)
    .spawn()
    .expect("spawn chimera");
    struct Reap<'a>(&'a mut Child);
    impl Drop for Reap<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let serve = Reap(&mut serve);
    let staging = d.join("staging");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // The announcement is retained before chimera starts serving: wait for it.
    let t0 = Instant::now();
    while rt
        .block_on(retained(
            broker.port,
            &device_models_topic("orin-1"),
            Duration::from_secs(1),
        ))
        .is_none()
    {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no announcement: {}",
            serve_log(d)
        );
    }
    let (seen, verified) = rt.block_on(device(&mut broker, d, &staging));
    assert_eq!(verified.digest, v.digest);
    // The staged files are exactly the bundle.
    verify_bundle_files(&staging, &verified).unwrap();
    assert_eq!(
        std::fs::read(staging.join("model.onnx")).unwrap(),
        std::fs::read(d.join("bundle/model.onnx")).unwrap()
    );
    assert_eq!(seen.resumed_at.len(), 2, "{seen:?}");
    assert_eq!(seen.resumed_at[0], 0);
    let at_restart = seen.resumed_at[1];
    assert!(
        at_restart >= verified.total_bytes * 55 / 100 && at_restart < verified.total_bytes,
        "the second fetcher resumed from the parts at {at_restart} of {}",
        verified.total_bytes
    );
    assert!(seen.reconnects >= 3, "{seen:?}");
    assert_eq!(seen.untargeted_answers, 0, "orin-2 is not targeted");

    // The device answers; chimera, waiting for every targeted device, ends.
    let key = SecretKey::read(&d.join("dev1.key")).unwrap();
    let receipt = ModelReceipt {
        kind: MODEL_RECEIPT_TYPE.into(),
        device: "orin-1".into(),
        name: "moderation".into(),
        version: 4,
        manifest_sha256: verified.digest.clone(),
        action: "install".into(),
        verdict: Verdict::Applied,
        reason: String::new(),
        active_version: Some(4),
        trust_version: 1,
        at: aegis_ota::maml::format_time(aegis_ota::maml::now_s()),
        total_ms: Some(1234.0),
        phases: vec![],
    };
    let text = receipt.render_signed(&key).unwrap();
    let port = broker.port;
    let t0 = Instant::now();
    let status = loop {
        // Not retained (as devices send them): sent again until chimera has seen one.
        rt.block_on(async {
            let (client, mut el) = mqtt(port, "orin-1-receipt");
            client
                .publish(
                    "aegis/v1/orin-1/receipts",
                    QoS::AtLeastOnce,
                    false,
                    text.clone(),
                )
                .await
                .unwrap();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    if let Ok(Event::Incoming(Packet::PubAck(_))) = el.poll().await {
                        break;
                    }
                }
            })
            .await;
        });
        if let Some(st) = serve.0.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(500));
        if let Some(st) = serve.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "chimera never ended: {}",
            serve_log(d)
        );
    };
    let out = serve_log(d);
    assert!(status.success(), "{out}");
    for want in [
        "announced moderation version 4",
        "broker connection lost",
        "broker connection back",
        "orin-1: 100% of moderation version 4 served",
        "orin-2: chunk requests ignored: not targeted",
        "orin-1: model moderation version 4: applied",
        "every targeted device answered moderation version 4",
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }

    // `model status`: the device's retained status and its recorded receipt; a forged
    // receipt (another key) arriving meanwhile is shown as unverified.
    rt.block_on(publish_retained(
        port,
        "aegis/v1/orin-1/status",
        serde_json::to_vec(&serde_json::json!({
            "state": "online",
            "models": [{ "name": "moderation", "version": 4, "sha256": "ab", "source": "ota" }],
            "model_delivery": { "transfer": null },
        }))
        .unwrap(),
    ));
    let forger = SecretKey::read(&d.join("dev2.key")).unwrap();
    let forged = ModelReceipt {
        verdict: Verdict::RolledBack,
        ..receipt.clone()
    }
    .render_signed(&forger)
    .unwrap();
    rt.block_on(publish_retained(
        port,
        "aegis/v1/orin-1/receipts",
        forged.into_bytes(),
    ));
    let json = ok(
        d,
        &[
            "model",
            "status",
            "--broker",
            &broker.addr(),
            "--state",
            "state",
            "--wait",
            "2",
            "--json",
        ],
    );
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device"] == "orin-1")
        .unwrap();
    assert_eq!(row["online"], true, "{row}");
    assert_eq!(row["models"][0]["version"], 4, "{row}");
    assert_eq!(row["desired"]["moderation"]["via"], "mqtt", "{row}");
    assert_eq!(row["state"]["moderation"], "in sync", "{row}");
    let last = &row["last_receipt"];
    assert_eq!(last["verified"], true, "{row}");
    assert_eq!(last["receipt"]["verdict"], "applied", "{row}");
    assert_eq!(last["digest_matches"], true, "{row}");
    assert!(
        row["unverified_receipt"]
            .as_str()
            .is_some_and(|s| s.contains("signature")),
        "{row}"
    );
    let other = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["device"] == "orin-2")
        .unwrap();
    assert_eq!(other["online"], serde_json::Value::Null, "{other}");
    assert_eq!(other["last_receipt"], serde_json::Value::Null, "{other}");
    let table = ok(
        d,
        &[
            "model",
            "status",
            "--broker",
            &broker.addr(),
            "--state",
            "state",
            "--wait",
            "1",
        ],
    );
    assert!(table.contains("moderation v4 (ota)"), "{table}");
    assert!(table.contains("applied moderation v4"), "{table}");
    assert!(table.contains("UNVERIFIED"), "{table}");
}

fn serve_log(d: &Path) -> String {
    std::fs::read_to_string(d.join("serve.log")).unwrap_or_default()
}

#[test]
fn url_announcements_parse_and_a_mismatched_bundle_is_never_announced() {
    if !have_mosquitto("chimera_model_mqtt") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway(d);
    let broker = Broker::start(&d.join("broker"));
    let addr = broker.addr();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let topic = device_models_topic("orin-1");
    let refused = |args: &[&str]| -> String {
        let o = chimera(d, args);
        assert!(!o.status.success(), "chimera {args:?} should fail");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // An extra file in the bundle: refused before anything is announced.
    std::fs::write(d.join("bundle/extra.txt"), b"x").unwrap();
    let e = refused(&[
        "model",
        "publish",
        "manifest.json.signed",
        "--broker",
        &addr,
        "--device",
        "orin-1",
        "--serve",
        "bundle",
        "--state",
        "state",
    ]);
    assert!(
        e.contains("extra.txt") && e.contains("nothing announced"),
        "{e}"
    );
    std::fs::remove_file(d.join("bundle/extra.txt")).unwrap();
    // A device the manifest does not target, a group it does not name, a bad URL.
    let e = refused(&[
        "model",
        "publish",
        "manifest.json.signed",
        "--broker",
        &addr,
        "--device",
        "orin-2",
        "--url",
        "https://models.example/m4",
    ]);
    assert!(e.contains("does not target \"orin-2\""), "{e}");
    let e = refused(&[
        "model",
        "publish",
        "manifest.json.signed",
        "--broker",
        &addr,
        "--group",
        "site-a",
        "--url",
        "https://models.example/m4",
    ]);
    assert!(e.contains("targets groups"), "{e}");
    let e = refused(&[
        "model",
        "publish",
        "manifest.json.signed",
        "--broker",
        &addr,
        "--device",
        "orin-1",
        "--url",
        "https://models.example/m4?token=1",
    ]);
    assert!(e.contains("not allowed"), "{e}");
    assert_eq!(
        rt.block_on(retained(broker.port, &topic, Duration::from_secs(1))),
        None,
        "nothing was announced"
    );

    let out = ok(
        d,
        &[
            "model",
            "publish",
            "manifest.json.signed",
            "--broker",
            &addr,
            "--device",
            "orin-1",
            "--url",
            "https://models.example/m4",
            "--state",
            "state",
        ],
    );
    assert!(out.contains("from https://models.example/m4"), "{out}");
    let msg = rt
        .block_on(retained(broker.port, &topic, Duration::from_secs(10)))
        .expect("a retained announcement");
    let ModelMessage::Announcement(a) = parse_model_message(&msg).unwrap() else {
        panic!("not an announcement");
    };
    assert_eq!(
        a,
        Announcement::new(
            std::fs::read_to_string(d.join("manifest.json.signed")).unwrap(),
            Some("https://models.example/m4".into())
        )
    );
    let sent: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("state/models-sent.json")).unwrap()).unwrap();
    assert_eq!(sent["orin-1"]["moderation"]["version"], 4);
    assert_eq!(sent["orin-1"]["moderation"]["via"], "url");
}
