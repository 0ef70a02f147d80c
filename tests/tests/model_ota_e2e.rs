//! Model bundles over the air, end to end with the real binaries, a real mosquitto, a local
//! HTTP server and the real NudeNet model: `chimera model pack|sign`, an announcement on the
//! device's models topic, the agent's check of the signed manifest before any download,
//! the resumable download, the health check on the reference input, the swap between two
//! frames on a running pipeline, and the signed model receipt.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aegis_ota::model_wire::{Announcement, ModelReceipt};
use aegis_tests::files::{Files, free_port};
use aegis_tests::*;

/// Model receipts on orin-1's receipts topic.
struct Receipts(aegis_tests::files::Receipts);

impl Receipts {
    fn watch(port: u16) -> Receipts {
        Receipts(aegis_tests::files::Receipts::watch(
            port,
            "orin-1",
            "model-receipt",
        ))
    }

    /// Every model receipt so far that verifies with the device key.
    fn all(&self, device_pub: &aegis_ota::sign::PublicKey) -> Vec<ModelReceipt> {
        self.0
            .verified(|t| ModelReceipt::verify(t, device_pub).ok())
    }

    /// The `n`-th model receipt (0-based), verified with the device key.
    fn nth(&self, n: usize, device_pub: &aegis_ota::sign::PublicKey) -> ModelReceipt {
        self.0.nth(n, |t| ModelReceipt::verify(t, device_pub).ok())
    }
}

/// Packs bundle `dir` as `nn` version `version` with the health bound `expect`, for
/// `issuer`, with `extra` options; returns the manifest's file name.
fn pack_json(
    d: &Path,
    dir: &str,
    version: u64,
    expect: &str,
    issuer: &str,
    extra: &[&str],
) -> String {
    let out = format!("{dir}.json");
    let version = version.to_string();
    let mut args = vec![
        "model",
        "pack",
        dir,
        "--name",
        "nn",
        "--version",
        &version,
        "--kind",
        "nudenet",
        "--issuer",
        issuer,
        "--group",
        "site-a",
        "--model",
        "model.onnx",
        "--input",
        "images:float32:-1x3x320x320",
        "--output",
        "output0:float32:-1x22x2100",
        "--reference-input",
        "health/input.bin",
        "--expect",
        expect,
        "--out",
        &out,
    ];
    args.extend_from_slice(extra);
    chimera_ok(d, &args);
    out
}

/// Signs manifest file `json` with `key`; returns the signed manifest.
fn sign_json(d: &Path, json: &str, key: &str) -> String {
    chimera_ok(d, &["model", "sign", json, "--key", key]);
    std::fs::read_to_string(d.join(format!("{json}.signed"))).unwrap()
}

/// Packs and signs bundle `dir` (see [`pack_json`]) by `issuer` with its key file `key`.
fn pack_by(d: &Path, dir: &str, version: u64, expect: &str, issuer: &str, key: &str) -> String {
    let json = pack_json(d, dir, version, expect, issuer, &[]);
    sign_json(d, &json, key)
}

/// [`pack_by`] the issuer that may ship models.
fn pack(d: &Path, dir: &str, version: u64, expect: &str) -> String {
    pack_by(d, dir, version, expect, "models-gw", "models.key")
}

/// A bundle directory: the NudeNet model, a grey reference input.
fn bundle(d: &Path, name: &str) {
    let b = d.join(name);
    std::fs::create_dir_all(b.join("health")).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models/nudenet-320n.onnx"),
        b.join("model.onnx"),
    )
    .unwrap();
    let grey: Vec<u8> = std::iter::repeat_n(0.5f32.to_le_bytes(), 3 * 320 * 320)
        .flatten()
        .collect();
    std::fs::write(b.join("health/input.bin"), grey).unwrap();
}

fn announce(port: u16, signed: &str, url: &str) {
    publish_announcement(port, signed, url, false);
}

fn announce_retained(port: u16, signed: &str, url: &str) {
    publish_announcement(port, signed, url, true);
}

fn publish_announcement(port: u16, signed: &str, url: &str, retain: bool) {
    let a = Announcement::new(signed.to_string(), Some(url.to_string()));
    let port = port.to_string();
    let mut args = vec!["-p", &port, "-t", "aegis/v1/orin-1/models", "-q", "1", "-s"];
    if retain {
        args.push("-r");
    }
    let mut p = Command::new("/usr/bin/mosquitto_pub")
        .args(args)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&a.to_json()).unwrap();
    assert!(p.wait().unwrap().success());
}

/// A gateway, a provisioned `orin-1` (group `site-a`), a second issuer `models-gw` that
/// may ship models (the workflow issuer `fleet-gw-1` may not), a broker, a 30 s clip and
/// the agent's config: two streams of the clip (`source`: extra source options) through a
/// moderation stage using the configured NudeNet model `nn`, model delivery on.
fn fixture(d: &Path, source: &str) -> (Broker, PathBuf) {
    gateway_and_device(d, "orin-1", &["site-a"]);
    // A second issuer that may ship models; the workflow issuer may not.
    chimera_ok(d, &["keygen", "--out", "models"]);
    chimera_ok(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "models-gw",
            "--key",
            "models.pub",
            "--groups",
            "site-a",
            "--models",
        ],
    );
    sign_trust(d);
    let broker = Broker::start(&d.join("broker"));
    let clip = make_clip(d, "clip.mp4", 640, 360, 30.0);
    let (web, dirs) = (free_port(), d.display().to_string());
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"device: {{ id: orin-1, groups: [site-a] }}
pipeline:
  sources:
    - {{ id: cam0, url: "file://{clip}", {source} }}
    - {{ id: cam1, url: "file://{clip}", {source} }}
  stages: [{{ kind: moderate, model: nn, every_n_frames: 2 }}]
  sinks: [{{ kind: discard }}]
inference:
  runtime: .models/libonnxruntime.so.1.32.0
  models: [{{ name: nn, kind: nudenet, file: .models/nudenet-320n.onnx }}]
store: {{ path: {dirs}/aegis.db }}
fleet: {{ enabled: true, broker_url: "mqtt://127.0.0.1:{port}", telemetry_s: 30, keepalive_s: 5 }}
web: {{ listen: "127.0.0.1:{web}" }}
workflows:
  enabled: true
  state_dir: {dirs}/wf
  keys_dir: {dirs}/keys
  trust: {{ roots: [{dirs}/root/root.pub], metadata: {dirs}/trust.signed }}
  policy: {{ paths: [{dirs}] }}
  health: {{ window_s: 3, frames: 5 }}
  models: {{ dir: {dirs}/models, download_hosts: [127.0.0.1], https_only: false }}
"#,
            clip = clip.display(),
            port = broker.port,
        ),
    )
    .unwrap();
    (broker, cfg)
}

#[test]
fn a_bundle_goes_live_without_dropping_a_frame_a_failing_one_rolls_back_and_bad_ones_are_refused_before_download()
 {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let (broker, cfg) = fixture(d, "realtime: true");
    let files = Files::serve(d.to_path_buf());
    let device_pub = aegis_ota::sign::PublicKey::read(&d.join("keys/device.pub")).unwrap();
    let mut agent = Command::new(aegis_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(d.join("agent.out")).unwrap())
        .stderr(std::fs::File::create(d.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    wait_online(broker.port);
    let receipts = Receipts::watch(broker.port);

    // 1. A good bundle, its first transfer cut half way: resumed with a range request,
    //    installed, health-checked, swapped in between two frames.
    bundle(d, "b2");
    let v2 = pack(d, "b2", 2, "output0:max:0:1000");
    files.cut.store(4 << 20, Ordering::SeqCst);
    files.cuts.store(1, Ordering::SeqCst);
    announce(broker.port, &v2, &files.url("b2"));
    let r = receipts.nth(0, &device_pub);
    assert_eq!(
        (
            r.name.as_str(),
            r.version,
            r.verdict.as_str(),
            r.active_version
        ),
        ("nn", 2, "applied", Some(2)),
        "{r:?}"
    );
    assert!(
        files.ranged.load(Ordering::SeqCst) >= 1,
        "the cut transfer was not resumed with a range request"
    );

    // 2. A bundle whose health check fails (a bound the real output cannot meet): rolled
    //    back, version 2 stays active.
    bundle(d, "b3");
    let v3 = pack(d, "b3", 3, "output0:max:5000:6000");
    announce(broker.port, &v3, &files.url("b3"));
    let r = receipts.nth(1, &device_pub);
    assert_eq!(
        (r.version, r.verdict.as_str(), r.active_version),
        (3, "rolled_back", Some(2)),
        "{r:?}"
    );
    assert!(r.reason.starts_with("health: "), "{r:?}");

    // 3. Refused before anything is downloaded: an older version, a manifest from an
    //    issuer that may not ship models, a tampered file (caught by its hash, never
    //    installed).
    let before = files.requests.load(Ordering::SeqCst);
    bundle(d, "b1");
    let v1 = pack(d, "b1", 1, "output0:max:0:1000");
    announce(broker.port, &v1, &files.url("b1"));
    let r = receipts.nth(2, &device_pub);
    assert_eq!((r.version, r.verdict.as_str()), (1, "rejected"), "{r:?}");
    assert!(r.reason.contains("version"), "{r:?}");
    assert_eq!(
        files.requests.load(Ordering::SeqCst),
        before,
        "v1 was fetched"
    );

    bundle(d, "b4");
    let wrong_issuer = pack_by(d, "b4", 4, "output0:max:0:1000", "fleet-gw-1", "gw.key");
    announce(broker.port, &wrong_issuer, &files.url("b4"));
    let r = receipts.nth(3, &device_pub);
    assert_eq!((r.version, r.verdict.as_str()), (4, "rejected"), "{r:?}");
    assert!(r.reason.contains("model"), "{r:?}");
    assert_eq!(
        files.requests.load(Ordering::SeqCst),
        before,
        "v4 was fetched"
    );

    // A manifest for another platform (a Jetson-only bundle; this device runs on the CPU)
    // and an expired one (signed, but its announcement window is over).
    bundle(d, "b6");
    let json = pack_json(
        d,
        "b6",
        6,
        "output0:max:0:1000",
        "models-gw",
        &["--backend", "jetson"],
    );
    announce(
        broker.port,
        &sign_json(d, &json, "models.key"),
        &files.url("b6"),
    );
    let r = receipts.nth(4, &device_pub);
    assert_eq!((r.version, r.verdict.as_str()), (6, "rejected"), "{r:?}");
    assert!(r.reason.contains("backend"), "{r:?}");
    bundle(d, "b7");
    let json = pack_json(d, "b7", 7, "output0:max:0:1000", "models-gw", &[]);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join(&json)).unwrap()).unwrap();
    let now = aegis_ota::maml::now_s();
    m["issued_at"] = aegis_ota::maml::format_time(now - 7200).into();
    m["expires_at"] = aegis_ota::maml::format_time(now - 3600).into();
    std::fs::write(d.join(&json), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    announce(
        broker.port,
        &sign_json(d, &json, "models.key"),
        &files.url("b7"),
    );
    let r = receipts.nth(5, &device_pub);
    assert_eq!((r.version, r.verdict.as_str()), (7, "rejected"), "{r:?}");
    assert!(r.reason.contains("expire"), "{r:?}");
    assert_eq!(
        files.requests.load(Ordering::SeqCst),
        before,
        "b6 or b7 was fetched"
    );

    bundle(d, "b5");
    let v5 = pack(d, "b5", 5, "output0:max:0:1000");
    let mut m = std::fs::read(d.join("b5/model.onnx")).unwrap();
    let n = m.len();
    m[n / 2] ^= 0xff;
    std::fs::write(d.join("b5/model.onnx"), m).unwrap();
    announce(broker.port, &v5, &files.url("b5"));
    let r = receipts.nth(6, &device_pub);
    assert_eq!(
        (r.version, r.verdict.as_str(), r.active_version),
        (5, "rejected", Some(2)),
        "{r:?}"
    );
    assert!(r.reason.contains("sha256"), "{r:?}");

    // 4. A signed rollback order, handed in locally: version 8 goes live over 2, then the
    //    order takes the device back to 2 (swapped in between two frames); replayed, it
    //    changes nothing.
    bundle(d, "b8");
    let v8 = pack(d, "b8", 8, "output0:max:0:1000");
    announce(broker.port, &v8, &files.url("b8"));
    let r = receipts.nth(7, &device_pub);
    assert_eq!(
        (r.version, r.verdict.as_str(), r.active_version),
        (8, "applied", Some(8)),
        "{r:?}"
    );
    chimera_ok(
        d,
        &[
            "model",
            "rollback",
            "--name",
            "nn",
            "--from",
            "8",
            "--to",
            "2",
            "--group",
            "site-a",
            "--issuer",
            "models-gw",
            "--key",
            "models.key",
            "--reason",
            "false positives",
            "--out",
            "rb.signed",
        ],
    );
    let out = aegis_ok(
        d,
        &[
            "models",
            "rollback",
            "rb.signed",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    assert!(out.contains("rb.signed: applied"), "{out}");
    let r = receipts.nth(8, &device_pub);
    assert_eq!(
        (
            r.action.as_str(),
            r.version,
            r.verdict.as_str(),
            r.active_version
        ),
        ("rollback", 2, "applied", Some(2)),
        "{r:?}"
    );
    let again = Command::new(aegis_bin())
        .args([
            "models",
            "rollback",
            "rb.signed",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        !again.status.success(),
        "a replayed order was applied again"
    );

    // The status names the installed version.
    let status = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "aegis/v1/orin-1/status",
            "-C",
            "1",
            "-W",
            "5",
        ])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let nn = status["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "nn")
        .unwrap()
        .clone();
    assert_eq!(
        (nn["version"].as_u64(), nn["source"].as_str()),
        (Some(2), Some("ota")),
        "{status}"
    );

    // The clips end; no frame of either stream was lost across the swap and the rollback.
    let st = agent.wait().unwrap();
    let out = std::fs::read_to_string(d.join("agent.out")).unwrap();
    let log = std::fs::read_to_string(d.join("agent.log")).unwrap();
    assert!(st.success(), "{out}\n{log}");
    for cam in ["cam0", "cam1"] {
        let (decoded, delivered, dropped) = stream_counts(&out, cam);
        assert!(decoded >= 600, "{out}");
        assert_eq!((delivered, dropped), (decoded, 0), "{cam}: {out}\n{log}");
    }
    assert!(log.contains("model health check passed"), "{log}");
    // `aegis models list` reads the store: version 2 active again, 8 installed once (and
    // ordered back), so nothing at or below 8 is taken again.
    let list: serde_json::Value = serde_json::from_str(&aegis_ok(
        d,
        &[
            "models",
            "list",
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(
        (
            &list[0]["name"],
            &list[0]["active"]["version"],
            &list[0]["trial"],
            &list[0]["highest"]
        ),
        (
            &serde_json::json!("nn"),
            &serde_json::json!(2),
            &serde_json::Value::Null,
            &serde_json::json!(8)
        ),
        "{list}"
    );

    // After a restart the installed version runs from the start (its kept manifest hashes
    // to the store's digest; the registry checks the model file's pin as it loads it).
    let mut again = Command::new(aegis_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(d.join("again.out")).unwrap())
        .stderr(std::fs::File::create(d.join("again.log")).unwrap())
        .spawn()
        .unwrap();
    wait_online(broker.port);
    let log = std::fs::read_to_string(d.join("again.log")).unwrap();
    let loaded = log
        .lines()
        .find(|l| l.contains("model loaded") && l.contains("model=nn"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(loaded.contains("version=2"), "{loaded}");
    // SAFETY: kill(2) on our own child, which has not been waited for.
    unsafe { libc::kill(again.id() as i32, libc::SIGTERM) };
    assert!(again.wait().unwrap().success());
}

/// A child process killed (SIGKILL) and reaped when dropped.
struct Killed(Child);

impl Killed {
    /// `aegis run --config CFG` in `d`, its output in `LOG.out` and `LOG.log`.
    fn agent(d: &Path, cfg: &Path, log: &str, rust_log: &str) -> Killed {
        Killed(
            Command::new(aegis_bin())
                .args(["run", "--config", cfg.to_str().unwrap()])
                .current_dir(d)
                .env("RUST_LOG", rust_log)
                .stdout(std::fs::File::create(d.join(format!("{log}.out"))).unwrap())
                .stderr(std::fs::File::create(d.join(format!("{log}.log"))).unwrap())
                .spawn()
                .unwrap(),
        )
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        // SAFETY: kill(2) on our own child, which has not been waited for.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `orin-1`'s retained status, when it says online.
fn online_status(port: u16) -> Option<serde_json::Value> {
    let o = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-t",
            "aegis/v1/orin-1/status",
            "-C",
            "1",
            "-W",
            "3",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    (v["state"] == "online").then_some(v)
}

/// The version of `nn` the status says runs, and where it comes from.
fn running_nn(port: u16) -> Option<(u64, String)> {
    let v = online_status(port)?;
    let nn = v["models"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == "nn")?
        .clone();
    Some((
        nn["version"].as_u64()?,
        nn["source"].as_str().unwrap_or("config").to_string(),
    ))
}

/// Iterations of the kill -9 soak (CI: a few; `AEGIS_MODEL_SOAK` for more).
fn model_soak_iterations() -> u64 {
    std::env::var("AEGIS_MODEL_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
}

#[test]
fn kill_9_during_download_install_or_swap_never_leaves_a_broken_model_and_the_update_completes() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let (broker, cfg) = fixture(d, "loop: true, realtime: true");
    let files = Files::serve(d.to_path_buf());
    // Each agent is killed when its guard drops, so a failing assertion never leaves one
    // looping the clip.
    let start = |n: u64| Killed::agent(d, &cfg, &format!("run{n}"), "info");
    // Kill points spread from the announcement: during the transfer, the install, the
    // load, the health check, the swap and the judging window.
    let mut agent = start(0);
    wait_online(broker.port);
    let receipts = Receipts::watch(broker.port);
    let device_pub = aegis_ota::sign::PublicKey::read(&d.join("keys/device.pub")).unwrap();
    let iterations = model_soak_iterations();
    let mut outcomes = Vec::new();
    // What runs before each iteration: the configured model, then each completed version.
    let mut before = (1u64, "config".to_string());
    for i in 0..iterations {
        let version = 2 + i;
        let name = format!("k{version}");
        bundle(d, &name);
        let signed = pack(d, &name, version, "output0:max:0:1000");
        // Retained: a restarted agent gets the announcement again and finishes the job.
        announce_retained(broker.port, &signed, &files.url(&name));
        std::thread::sleep(Duration::from_millis(i * 1400 / iterations.max(1)));
        // SIGKILL (the guard), before the next agent starts on the same store and ports.
        drop(agent);
        agent = start(i + 1);
        wait_online(broker.port);
        // Either the update completes (killed before its trial began: the transfer starts
        // again from the retained announcement), or it was on trial when the agent died and
        // stays rolled back (tried once, as a model that crashes the agent must not be
        // retried in a loop). Never anything else.
        let t0 = Instant::now();
        let outcome = loop {
            let list: serde_json::Value = serde_json::from_str(&aegis_ok(
                d,
                &[
                    "models",
                    "list",
                    "--config",
                    cfg.to_str().unwrap(),
                    "--json",
                ],
            ))
            .unwrap();
            // (A trial may be under way: the restarted agent got the announcement again.)
            let settled = list[0]["trial"].is_null();
            let running = running_nn(broker.port);
            if running
                .as_ref()
                .is_some_and(|(v, src)| *v == version && src == "ota")
                && settled
            {
                assert_eq!(list[0]["active"]["version"], version, "{list}");
                break "completed";
            }
            if settled && list[0]["highest"] == version && list[0]["active"]["version"] != version {
                // Rolled back by the crash: what runs is what ran before.
                if running.as_ref() == Some(&before) {
                    break "rolled back";
                }
            }
            assert!(
                t0.elapsed() < Duration::from_secs(90),
                "iteration {i}: version {version} neither active nor rolled back; status {:?}, store {list}\n{}",
                running,
                std::fs::read_to_string(d.join(format!("run{}.log", i + 1))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        outcomes.push((version, outcome));
        if outcome == "completed" {
            before = (version, "ota".to_string());
        }
    }
    // Each version rolled back by a crash was answered at the next start with a signed
    // `rolled_back` receipt; each completed one with `applied`.
    let t0 = Instant::now();
    loop {
        let got = receipts.all(&device_pub);
        let missing: Vec<&(u64, &str)> = outcomes
            .iter()
            .filter(|(v, o)| {
                let want = if *o == "completed" {
                    "applied"
                } else {
                    "rolled_back"
                };
                !got.iter().any(|r| {
                    r.version == *v
                        && r.verdict.as_str() == want
                        && (want == "applied" || r.reason.contains("stopped while"))
                })
            })
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no receipt for {missing:?}; receipts: {:?}",
            got.iter()
                .map(|r| (r.version, r.verdict.as_str(), r.reason.as_str()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let outcomes: Vec<&str> = outcomes.iter().map(|(_, o)| *o).collect();
    eprintln!("kill -9 soak, {iterations} iterations: {outcomes:?}");
    assert!(
        outcomes.contains(&"completed"),
        "no iteration completed: {outcomes:?}"
    );
    // The receipt of an update that completed just before a kill may have died with the
    // agent: the running version, announced again (retained) to the next agent, is answered
    // `applied` again. One more version, left to complete, then a restart.
    let version = 2 + iterations;
    let name = format!("k{version}");
    bundle(d, &name);
    let signed = pack(d, &name, version, "output0:max:0:1000");
    announce_retained(broker.port, &signed, &files.url(&name));
    let t0 = Instant::now();
    while running_nn(broker.port) != Some((version, "ota".to_string())) {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "version {version} never ran"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let answers = |got: &[ModelReceipt]| {
        got.iter()
            .filter(|r| r.version == version && r.verdict.as_str() == "applied")
            .count()
    };
    while answers(&receipts.all(&device_pub)) < 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "no receipt for {version}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    let last = iterations + 1;
    let agent = start(last);
    let t0 = Instant::now();
    loop {
        let got = receipts.all(&device_pub);
        if answers(&got) == 2 {
            let again = got.iter().rev().find(|r| r.version == version).unwrap();
            assert!(
                again.reason.contains("announced again"),
                "{:?}",
                again.reason
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the running version {version} was not answered again after a restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    let out = std::fs::read_to_string(d.join(format!("run{last}.out"))).unwrap();
    for cam in ["cam0", "cam1"] {
        let (decoded, delivered, dropped) = stream_counts(&out, cam);
        assert!(decoded > 0, "{out}");
        assert_eq!((delivered, dropped), (decoded, 0), "{cam}: {out}");
    }
}

/// A TCP forwarder to 127.0.0.1:`to` whose broker-to-client direction passes at most
/// `rate` bytes per second, so that a transfer through it lasts long enough to be
/// interrupted at a chosen point. A connection to the broker that fails closes the
/// client's (it connects again).
fn paced_proxy(to: u16, rate: u64) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            let Ok(b) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let (c2, b2) = (c.try_clone().unwrap(), b.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut &c, &mut &b);
                let _ = b.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || pace(b2, c2, rate));
        }
    });
    port
}

/// Copies `from` to `to` at most `rate` bytes per second (a token bucket without burst).
fn pace(mut from: TcpStream, mut to: TcpStream, rate: u64) {
    let mut free_at = Instant::now();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        free_at = free_at.max(Instant::now()) + Duration::from_secs_f64(n as f64 / rate as f64);
        std::thread::sleep(free_at.saturating_duration_since(Instant::now()));
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

/// Bytes of the part of `file` staged under `root` (0: none yet).
fn staged_part(root: &Path, file: &str) -> u64 {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().and_then(|n| n.to_str()) == Some(&format!("{file}.part")) {
                return e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    0
}

#[test]
fn a_bundle_announced_without_a_url_comes_over_mqtt_through_a_broker_restart_and_a_kill_9() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let (mut broker, cfg) = fixture(d, "loop: true, realtime: true");
    // The agent reaches the broker through a link of 1.5 MB/s: the 13 MB bundle takes
    // about 9 s, long enough to restart the broker and kill the agent on the way.
    let proxy = paced_proxy(broker.port, 1_500_000);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("mqtt://127.0.0.1:{}", broker.port),
        &format!("mqtt://127.0.0.1:{proxy}"),
    );
    std::fs::write(&cfg, text).unwrap();
    let device_pub = aegis_ota::sign::PublicKey::read(&d.join("keys/device.pub")).unwrap();
    let start = |n: u64| {
        Killed::agent(
            d,
            &cfg,
            &format!("mqtt{n}"),
            "info,aegis_agent::models_ota=debug",
        )
    };
    let agent = start(0);
    wait_online(broker.port);

    bundle(d, "m2");
    pack(d, "m2", 2, "output0:max:0:1000");
    // A signed workflow that requires the bundle's model (nn version 2, its file's SHA-256)
    // comes first: it waits (no receipt, the status says for what) and is applied once the
    // bundle is installed.
    let sha = aegis_ota::sha256_hex(&std::fs::read(d.join("m2/model.onnx")).unwrap());
    let clip = d.join("clip.mp4");
    let pipeline = format!(
        "  sources:\n    - {{ id: cam0, url: \"file://{c}\", loop: true, realtime: true }}\n    - {{ id: cam1, url: \"file://{c}\", loop: true, realtime: true }}\n  stages: [{{ kind: moderate, model: nn, every_n_frames: 3 }}]\n  sinks: [{{ kind: discard }}]",
        c = clip.display()
    );
    draft_workflow(
        d,
        "needs-nn2",
        1,
        &pipeline,
        &format!("[{{ name: nn, version: 2, sha256: {sha} }}]"),
    );
    chimera_ok(d, &["sign", "needs-nn2.maml.md", "--key", "gw.key"]);
    let broker_url = format!("mqtt://127.0.0.1:{}", broker.port);
    chimera_ok(
        d,
        &[
            "publish",
            "needs-nn2.signed.maml.md",
            "--to",
            "orin-1",
            "--broker",
            &broker_url,
        ],
    );
    let port = broker.port;
    let waiting = |what: &str| {
        let t0 = Instant::now();
        loop {
            let st = online_status(port);
            let needs = st.as_ref().and_then(|v| {
                v["workflow"]["waiting"][0]["needs"]
                    .as_str()
                    .map(String::from)
            });
            if needs
                .as_deref()
                .is_some_and(|n| n.contains("\"nn\" version 2"))
            {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{what}: the workflow does not wait for nn version 2: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    waiting("before the bundle");
    let log = std::fs::File::create(d.join("serve.log")).unwrap();
    let serve = Killed(
        Command::new(chimera_bin())
            .args([
                "model",
                "publish",
                "m2.json.signed",
                "--broker",
                &format!("127.0.0.1:{}", broker.port),
                "--device",
                "orin-1",
                "--serve",
                "m2",
                "--serve-for",
                "10m",
            ])
            .current_dir(d)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let serve_log = || std::fs::read_to_string(d.join("serve.log")).unwrap_or_default();
    let agent_log = |n: u64| std::fs::read_to_string(d.join(format!("mqtt{n}.log"))).unwrap();
    let wait_part = |at_least: u64, n: u64| {
        let t0 = Instant::now();
        loop {
            let have = staged_part(&d.join("models"), "model.onnx");
            if have >= at_least {
                return have;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "model.onnx.part at {have} bytes, not {at_least}\nserve: {}\nagent: {}",
                serve_log(),
                agent_log(n)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    // 1. The broker restarts a quarter of the way: the link reconnects, the transfer asks
    //    again for what was outstanding and goes on from there.
    let cut1 = wait_part(3 << 20, 0);
    // Progress in the metrics meanwhile (bytes, percent, ETA of the transfer under way).
    let web = std::fs::read_to_string(&cfg)
        .unwrap()
        .split("listen: \"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let metric = |body: &str, name: &str| {
        metric(
            body,
            &format!("aegis_component_counter{{component=\"models\",counter=\"{name}\"}}"),
        )
        .map(|v| v as u64)
    };
    let (_, body) = http_get(&web, "/metrics").unwrap();
    let (done, total) = (
        metric(&body, "transfer_done_bytes"),
        metric(&body, "transfer_total_bytes"),
    );
    assert!(
        done.is_some_and(|d| d >= 3 << 20)
            && total > done
            && metric(&body, "transfer_percent") > Some(0),
        "{body}"
    );
    broker.down();
    std::thread::sleep(Duration::from_secs(1));
    broker.up();
    // 2. The agent is killed (SIGKILL) past half way and started again: the retained
    //    announcement comes again, the part is hashed and continued.
    let cut2 = wait_part(cut1 + (3 << 20), 0);
    drop(agent);
    let receipts = Receipts::watch(broker.port);
    let agent = start(1);
    // The restarted agent gets the retained workflow again: it waits again.
    waiting("after the restart");
    let r = receipts.nth(0, &device_pub);
    assert_eq!(
        (
            r.name.as_str(),
            r.version,
            r.verdict.as_str(),
            r.active_version
        ),
        ("nn", 2, "applied", Some(2)),
        "{r:?}\n{}",
        agent_log(1)
    );
    assert!(
        agent_log(1).contains("fetching over MQTT"),
        "{}",
        agent_log(1)
    );
    // The waiting workflow was handled again and runs now.
    let t0 = Instant::now();
    loop {
        let st = online_status(broker.port).unwrap_or_default();
        if st["workflow"]["active"]["sequence"] == 1 && st["workflow"]["waiting"].is_null() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the workflow needing nn version 2 does not run: {st}\n{}",
            agent_log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The gateway stops by itself once the device answered, and says how much it served.
    let t0 = Instant::now();
    let mut serve = serve;
    while serve.0.try_wait().unwrap().is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "chimera still serving: {}",
            serve_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = serve_log();
    let line = out
        .lines()
        .find(|l| l.starts_with("orin-1: ") && l.contains(" chunks served ("))
        .unwrap_or_else(|| panic!("{out}"));
    // "orin-1: N chunks served (M again), …"
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (served, again) = (nums[1], nums[2]);
    let bundle_bytes: u64 = ["m2/model.onnx", "m2/health/input.bin"]
        .iter()
        .map(|f| std::fs::metadata(d.join(f)).unwrap().len())
        .sum();
    let chunks = bundle_bytes.div_ceil(120 * 1024) + 1;
    // Resumed twice, never restarted: each chunk served about once; only the few in
    // flight at each cut went again (not the 2 × 3 MB before them).
    assert!(
        served >= chunks - 1 && again <= 24 && served <= chunks + again,
        "{served} chunks served, {again} again, for {chunks} chunks (cuts at {cut1} and \
         {cut2} bytes)\n{out}"
    );
    eprintln!(
        "MQTT transfer: {chunks} chunks, {served} served, {again} again; cut at {cut1} and {cut2} bytes"
    );
    drop(agent);
}
