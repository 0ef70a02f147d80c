//! Signed workflows end to end (MAML part 2), with the real binaries, a real mosquitto and
//! real crypto: chimera publishes, the agent verifies, switches its pipeline live, health
//! checks, keeps or rolls back, and answers with a receipt that chimera verifies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// The agent config: `pipeline` as YAML, workflows on, fleet link to `broker` (if any).
fn write_config(d: &Path, pipeline: &str, broker: Option<u16>, web: u16, models: bool) -> PathBuf {
    let fleet = match broker {
        Some(p) => format!(
            "fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{p}\", telemetry_s: 30, keepalive_s: 5 }}"
        ),
        None => String::new(),
    };
    let inference = if models {
        "inference:\n  runtime: .models/libonnxruntime.so.1.32.0\n  models:\n    - { name: nn, kind: nudenet, file: .models/nudenet-320n.onnx }\n    - { name: selfie, kind: selfie_segmentation, file: .models/selfie_segmentation.onnx }\n"
    } else {
        ""
    };
    let dir = d.display();
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"device: {{ id: orin-1, groups: [site-a] }}
pipeline:
{pipeline}
{inference}store: {{ path: {dir}/aegis.db }}
{fleet}
web: {{ listen: "127.0.0.1:{web}" }}
workflows:
  enabled: true
  state_dir: {dir}/wf
  keys_dir: {dir}/keys
  trust: {{ roots: [{dir}/root/root.pub], metadata: {dir}/trust.signed }}
  policy: {{ paths: [{dir}] }}
  health: {{ window_s: 3, frames: 5 }}
"#
        ),
    )
    .unwrap();
    cfg
}

/// An unsigned workflow for orin-1 (and group site-a) with `pipeline` (YAML, indented).
fn workflow(d: &Path, name: &str, seq: u64, pipeline: &str) -> PathBuf {
    draft_workflow(d, name, seq, pipeline, "[]")
}

fn agent(d: &Path, cfg: &Path, log: &str) -> Child {
    Command::new(aegis_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(d)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(d.join(format!("{log}.out"))).unwrap())
        .stderr(std::fs::File::create(d.join(format!("{log}.log"))).unwrap())
        .spawn()
        .unwrap()
}

/// `chimera watch-receipts` started before the publish (receipts are not retained).
fn watch(d: &Path, port: u16, count: usize) -> Child {
    let c = Command::new(chimera_bin())
        .args([
            "watch-receipts",
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
            "--count",
            &count.to_string(),
            "--timeout",
            "30",
        ])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    c
}

/// Publishes `file` to `to` with a receipt watcher running; the watcher's success and output.
fn publish_watched(d: &Path, port: u16, file: &str, to: &str) -> String {
    let w = watch(d, port, 1);
    chimera_ok(
        d,
        &[
            "publish",
            file,
            "--to",
            to,
            "--broker",
            &format!("mqtt://127.0.0.1:{port}"),
        ],
    );
    let (ok, out) = finish(w);
    assert!(ok, "{out}");
    out
}

fn finish(c: Child) -> (bool, String) {
    let o = c.wait_with_output().unwrap();
    (
        o.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

fn sign(d: &Path, wf: &Path, seal: bool) -> String {
    let mut f = wf.to_str().unwrap().to_string();
    if seal {
        chimera_ok(d, &["seal", &f, "--to", "orin-1"]);
        f = f.replace(".maml.md", ".sealed.maml.md");
    }
    chimera_ok(d, &["sign", &f, "--key", "gw.key"]);
    f.replace(".maml.md", ".signed.maml.md")
}

/// A signed (unsealed) workflow over the light pipeline with `stages`.
fn signed_light(d: &Path, name: &str, seq: u64, stages: &str) -> String {
    sign(d, &workflow(d, name, seq, &light(d, stages)), false)
}

const LIGHT: &str = "  sources: [{ id: cam0, url: \"file://CLIP\", loop: true, realtime: true }]\n  stages: [{ kind: timestamp_overlay }]\n  sinks: [{ kind: discard }]";

fn light(d: &Path, stages: &str) -> String {
    LIGHT
        .replace("CLIP", d.join("clip.mp4").to_str().unwrap())
        .replace("[{ kind: timestamp_overlay }]", stages)
}

#[test]
fn a_sealed_workflow_switches_stages_live_without_dropping_a_frame_and_a_failing_one_rolls_back() {
    if !have_mosquitto() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    let broker = Broker::start(&d.join("broker"));
    let clip = make_clip(d, "clip.mp4", 640, 360, 12.0);
    let rec = d.join("rec");
    let pipeline = |stages: &str| {
        format!(
            "  sources: [{{ id: cam0, url: \"file://{}\", realtime: true }}]\n  stages:\n{stages}\n  sinks: [{{ kind: record, dir: {}, segment_seconds: 4 }}]",
            clip.display(),
            rec.display()
        )
    };
    let default_stages = "    - { kind: moderate, model: nn, every_n_frames: 5 }\n    - { kind: virtual_background, model: selfie, blur: 8 }";
    let cfg = write_config(
        d,
        &pipeline(default_stages),
        Some(broker.port),
        free_port(),
        true,
    );
    let mut a = agent(d, &cfg, "agent");
    wait_online(broker.port);

    // 1. Background mode and moderation policy change: sealed for the device, published on
    //    its own topic; applied in place.
    let wf1 = workflow(
        d,
        "wf1",
        1,
        &pipeline(
            "    - { kind: moderate, model: nn, every_n_frames: 3, rules: [{ classes: [FACE_FEMALE, FACE_MALE], action: blur_region, min_score: 0.3 }] }\n    - { kind: virtual_background, model: selfie, colour: \"#00ff00\" }",
        ),
    );
    let wf1 = sign(d, &wf1, true);
    let out = publish_watched(d, broker.port, &wf1, "orin-1");
    assert!(
        out.contains("orin-1: applied")
            && out.contains("(in_place) — signature ok, digest ok, mirror ok"),
        "{out}"
    );
    // 2. A background picture the stage cannot fit (1×1): every frame fails, the health
    //    check rolls it back; published to the group topic this time.
    std::fs::write(d.join("tiny.png"), TINY_PNG).unwrap();
    let wf2 = workflow(
        d,
        "wf2",
        2,
        &pipeline(&format!(
            "    - {{ kind: virtual_background, model: selfie, image: {} }}",
            d.join("tiny.png").display()
        )),
    );
    let wf2 = sign(d, &wf2, false);
    let out = publish_watched(d, broker.port, &wf2, "site-a");
    assert!(
        out.contains("orin-1: rolled_back")
            && out.contains("health: stream cam0: stages failed")
            && out.contains("mirror ok"),
        "{out}"
    );
    // What runs is workflow 1.
    let status = aegis_ok(
        d,
        &["workflow", "status", "--config", cfg.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["state"]["active"]["sequence"], 1, "{status}");
    assert_eq!(v["active_verifies"], true, "{status}");
    assert_eq!(
        v["state"]["replay"]["sequences"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap(),
        2
    );
    // The gateway sees it in its fleet view (desired = wf2, which the device refused).
    let fleet = chimera_ok(
        d,
        &[
            "fleet",
            "status",
            "--broker",
            &format!("mqtt://127.0.0.1:{}", broker.port),
        ],
    );
    assert!(
        fleet.contains("orin-1") && fleet.contains("rolled_back"),
        "{fleet}"
    );

    // The clip ends; no frame was lost across either switch.
    let status = a.wait().unwrap();
    let out = std::fs::read_to_string(d.join("agent.out")).unwrap();
    let log = std::fs::read_to_string(d.join("agent.log")).unwrap();
    assert!(status.success(), "{out}\n{log}");
    let (decoded, delivered, dropped) = stream_counts(&out, "cam0");
    assert!(decoded >= 300, "{out}");
    assert_eq!((delivered, dropped), (decoded, 0), "{out}\n{log}");
}

/// A gateway, a provisioned `orin-1` (group `site-a`), a broker and a 2 s clip; `None`
/// (the test skips) without mosquitto.
fn fleet_fixture() -> Option<(tempfile::TempDir, Broker)> {
    if !have_mosquitto() {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    gateway_and_device(dir.path(), "orin-1", &["site-a"]);
    let broker = Broker::start(&dir.path().join("broker"));
    make_clip(dir.path(), "clip.mp4", 320, 240, 2.0);
    Some((dir, broker))
}

/// A 1×1 RGB PNG.
const TINY_PNG: &[u8] = &[
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 1, 0, 0, 0, 1, 8, 2, 0,
    0, 0, 144, 119, 83, 222, 0, 0, 0, 12, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 0, 0, 3, 1,
    1, 0, 201, 254, 146, 239, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
];

#[test]
fn an_offline_device_gets_the_retained_workflow_on_reconnect_and_converges_through_reconcile() {
    let Some((dir, broker)) = fleet_fixture() else {
        return;
    };
    let d = dir.path();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let cfg = write_config(
        d,
        &light(d, "[{ kind: timestamp_overlay }]"),
        Some(broker.port),
        free_port(),
        false,
    );

    // Published while the device is offline: the retained message reaches it on connect.
    let wf1 = signed_light(d, "wf1", 1, "[{ kind: passthrough }]");
    chimera_ok(d, &["publish", &wf1, "--to", "orin-1", "--broker", &url]);
    let w = watch(d, broker.port, 1);
    let mut a = agent(d, &cfg, "agent1");
    let (ok, out) = finish(w);
    assert!(ok && out.contains("orin-1: applied"), "{out}");
    sigterm(&mut a);

    // Offline again; this time the broker loses the retained message (cleared), so only
    // the gateway's reconcile can bring the device up to date.
    let wf2 = signed_light(d, "wf2", 2, "[{ kind: timestamp_overlay, scale: 3 }]");
    chimera_ok(d, &["publish", &wf2, "--to", "orin-1", "--broker", &url]);
    let cleared = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "aegis/v1/orin-1/workflows",
            "-r",
            "-n",
        ])
        .status()
        .unwrap();
    assert!(cleared.success());
    let mut a = agent(d, &cfg, "agent2");
    wait_online(broker.port);
    let fleet = chimera_ok(d, &["fleet", "status", "--broker", &url]);
    assert!(fleet.contains("behind"), "{fleet}");
    let w = watch(d, broker.port, 1);
    let rec = chimera_ok(d, &["fleet", "reconcile", "--broker", &url]);
    assert!(rec.contains("orin-1: re-sent"), "{rec}");
    let (ok, out) = finish(w);
    assert!(
        ok && out.contains("orin-1: applied") && out.contains("sequence 2"),
        "{out}"
    );
    let fleet = chimera_ok(d, &["fleet", "status", "--broker", &url]);
    assert!(fleet.contains("in sync"), "{fleet}");
    let again = chimera_ok(d, &["fleet", "reconcile", "--broker", &url]);
    assert!(
        again.contains("every device with a desired workflow runs it"),
        "{again}"
    );
    sigterm(&mut a);
}

fn sigterm(c: &mut Child) {
    // SAFETY: kill(2) on our own child's pid with a valid signal number.
    unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    c.wait().unwrap();
}

fn cpu_ms(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based) of the whole line.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks * 1000.0 / 100.0
}

#[test]
fn garbage_on_the_workflow_topic_is_counted_and_never_answered_with_a_signature() {
    let Some((dir, broker)) = fleet_fixture() else {
        return;
    };
    let d = dir.path();
    let web = free_port();
    let cfg = write_config(
        d,
        &light(d, "[{ kind: timestamp_overlay }]"),
        Some(broker.port),
        web,
        false,
    );
    let mut a = agent(d, &cfg, "agent");
    wait_online(broker.port);
    let receipts = d.join("receipts.txt");
    let mut sub = Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "aegis/v1/orin-1/receipts",
            "-F",
            "%p@@END@@",
        ])
        .stdout(std::fs::File::create(&receipts).unwrap())
        .spawn()
        .unwrap();
    wait_subscribed(broker.port, "aegis/v1/orin-1/receipts", &receipts);
    // 2000 lines of noise (one message each), then documents one bit off a valid one.
    let mut noise = Vec::new();
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for i in 0..2000 {
        let len = 1 + (i * 37) % 400;
        for _ in 0..len {
            let b = (rng.next_u64() % 94) as u8 + 33;
            noise.push(b);
        }
        noise.push(b'\n');
    }
    let cpu0 = cpu_ms(a.id());
    let mut p = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "aegis/v1/orin-1/workflows",
            "-q",
            "1",
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    p.stdin.take().unwrap().write_all(&noise).unwrap();
    assert!(p.wait().unwrap().success());
    let good = std::fs::read(signed_light(d, "wf1", 1, "[{ kind: passthrough }]")).unwrap();
    let flips = 20;
    for k in 0..flips {
        let mut bad = good.clone();
        let at = (k * 7919 + 101) % bad.len();
        bad[at] ^= 1 << (k % 8);
        let f = d.join(format!("bad{k}"));
        std::fs::write(&f, &bad).unwrap();
        let s = Command::new("/usr/bin/mosquitto_pub")
            .args([
                "-p",
                &broker.port.to_string(),
                "-t",
                "aegis/v1/orin-1/workflows",
                "-q",
                "1",
                "-f",
                f.to_str().unwrap(),
            ])
            .status()
            .unwrap();
        assert!(s.success());
    }
    let sent = 2000 + flips as u64;
    // Everything is accounted for: refused, or superseded by a newer message on the topic
    // before it was judged (counted; the topic's retained message is fetched again).
    let t0 = Instant::now();
    let (refused, busy) = loop {
        let (_, body) = http_get(&format!("127.0.0.1:{web}"), "/metrics").unwrap();
        let get = |c: &str| {
            metric(
                &body,
                &format!("aegis_component_counter{{component=\"workflows\",counter=\"{c}\"}}"),
            )
            .unwrap_or(0.0) as u64
        };
        let (r, b, applied, rejected) = (
            get("refused"),
            get("superseded"),
            get("applied"),
            get("rejected"),
        );
        assert_eq!(
            (applied, rejected),
            (0, 0),
            "a damaged document was accepted:\n{body}"
        );
        if r + b >= sent || t0.elapsed() > Duration::from_secs(30) {
            break (r, b);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let cpu = cpu_ms(a.id()) - cpu0;
    eprintln!(
        "garbage flood: {sent} messages, {refused} refused, {busy} superseded before judged; agent CPU {cpu:.0} ms ({:.3} ms per message, pipeline included)",
        cpu / sent as f64
    );
    assert_eq!(refused + busy, sent);
    // The positive signal that every answer to the flood has reached the subscriber: the
    // agent answers in order on one connection, so once the receipt of a valid document
    // sent after the flood is in, whatever it said about the flood is in before it.
    let good_file = d.join("good.signed.maml.md");
    std::fs::write(&good_file, &good).unwrap();
    let st = Command::new("/usr/bin/mosquitto_pub")
        .args(["-p", &broker.port.to_string(), "-q", "1"])
        .args(["-t", "aegis/v1/orin-1/workflows", "-f"])
        .arg(&good_file)
        .status()
        .unwrap();
    assert!(st.success());
    let signed = |m: &&str| m.trim_start().starts_with("---");
    let t0 = Instant::now();
    let out = loop {
        let out = std::fs::read_to_string(&receipts).unwrap();
        if out.split("@END@").any(|m| signed(&m)) {
            break out;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "gave up waiting for the receipt of the valid document: {out}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = sub.kill();
    let _ = sub.wait();
    // `-F %p@@END@@` prints `@END@` after each message (`@@` is an escaped `@`).
    // Receipts are `.mu` documents (front matter first); notices are unsigned JSON. The one
    // signed answer is the valid document's, after everything said about the garbage.
    let answers: Vec<&str> = out
        .split("@END@")
        .filter(|m| !m.trim().is_empty() && m.trim() != PROBE)
        .collect();
    let signed_at: Vec<usize> = (0..answers.len())
        .filter(|&k| signed(&answers[k]))
        .collect();
    assert_eq!(
        signed_at,
        [answers.len() - 1],
        "a signed answer to garbage (only the valid document's receipt, last, may be): {out}"
    );
    let notices = out.matches("rejection-notice").count();
    assert!((1..=3).contains(&notices), "{notices} notices: {out}");
    sigterm(&mut a);
}

/// Iterations of the kill -9 test (`AEGIS_SOAK_ITERATIONS`, `just soak` raises it).
fn soak_iterations() -> usize {
    std::env::var("AEGIS_SOAK_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

#[test]
fn kill_9_at_random_points_of_apply_always_restarts_signed_and_consistent() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    make_clip(d, "clip.mp4", 320, 240, 2.0);
    let web = free_port();
    let cfg = write_config(
        d,
        &light(d, "[{ kind: timestamp_overlay }]"),
        None,
        web,
        false,
    );
    let key = aegis_ota::sign::SecretKey::read(&d.join("gw.key")).unwrap();
    let sink2 = format!(
        "[{{ kind: record, dir: {}/rec, segment_seconds: 1 }}]",
        d.display()
    );
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut rand = move || rng.next_u64();
    let (mut applied_seen, mut killed_in_trial, mut acknowledged) = (0, 0, 0);
    let iterations = soak_iterations();
    for i in 1..=iterations as u64 {
        // Alternate stage sets (in place) and, every fifth, a different sink (rebuild).
        let mut p = light(
            d,
            if i % 2 == 0 {
                "[{ kind: passthrough }]"
            } else {
                "[{ kind: timestamp_overlay, scale: 2 }]"
            },
        );
        if i % 5 == 0 {
            p = p.replace("[{ kind: discard }]", &sink2);
        }
        let wf = workflow(d, "soak", i, &p);
        let mut signed = std::fs::read(&wf).unwrap();
        let block = key
            .sign_block(&signed, aegis_ota::sign::Purpose::Workflow)
            .unwrap();
        signed.extend_from_slice(block.render().as_bytes());
        let file = d.join("soak.signed.maml.md");
        std::fs::write(&file, &signed).unwrap();
        let mut a = agent(d, &cfg, "soak");
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "agent did not start: {}",
                std::fs::read_to_string(d.join("soak.log")).unwrap()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let apply = Command::new(aegis_bin())
            .args([
                "workflow",
                "apply",
                file.to_str().unwrap(),
                "--config",
                cfg.to_str().unwrap(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rand() % 250_000));
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(a.id() as i32, libc::SIGKILL) };
        a.wait().unwrap();
        // The client races the kill: it may have had its answer or lost the agent. Either
        // way it ends, and a failure says why.
        let apply = apply.wait_with_output().expect("workflow apply ran");
        let apply_err = String::from_utf8_lossy(&apply.stderr);
        assert!(
            apply.status.success() || !apply_err.trim().is_empty(),
            "iteration {i}: workflow apply failed without a word ({})",
            apply.status
        );
        // What the next start will find: state parses, the active document (if any) is
        // intact and verifies, the replay counter covers it.
        let st = aegis_ok(
            d,
            &["workflow", "status", "--config", cfg.to_str().unwrap()],
        );
        let v: serde_json::Value = serde_json::from_str(&st).unwrap();
        let active = &v["state"]["active"];
        // Exit 0 means "the workflow runs": that answer must survive the kill -9.
        if apply.status.success() {
            acknowledged += 1;
            assert_eq!(
                active["sequence"].as_u64(),
                Some(i),
                "iteration {i}: apply reported success, the state lost it: {st}"
            );
        }
        if !active.is_null() {
            assert_eq!(v["active_verifies"], true, "iteration {i}: {st}");
            let seq = active["sequence"].as_u64().unwrap();
            let replay = v["state"]["replay"]["sequences"]
                .as_object()
                .unwrap()
                .values()
                .next()
                .unwrap()
                .as_u64()
                .unwrap();
            assert!(replay >= seq, "iteration {i}: {st}");
            if seq == i {
                applied_seen += 1;
            }
            if v["state"]["trial"] == true {
                killed_in_trial += 1;
            }
        }
    }
    // A last clean start: an interrupted trial is rolled back, the state settles.
    let mut a = agent(d, &cfg, "soak");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() {
        assert!(t0.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(5));
    }
    sigterm(&mut a);
    let st = aegis_ok(
        d,
        &["workflow", "status", "--config", cfg.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["state"]["trial"], false, "{st}");
    assert_ne!(v["active_verifies"], false, "{st}");
    eprintln!(
        "kill -9 soak: {iterations} iterations; the new workflow was active (committed or on trial) after {applied_seen} ({acknowledged} acknowledged to the client before the kill), killed during its trial {killed_in_trial} times"
    );
    // The kills must have landed on both sides of the commit point.
    assert!(
        applied_seen > 0 && applied_seen < iterations,
        "{applied_seen} of {iterations}"
    );
}

fn workflow_counter(web: u16, name: &str) -> u64 {
    let (_, body) = http_get(&format!("127.0.0.1:{web}"), "/metrics").unwrap();
    metric(
        &body,
        &format!("aegis_component_counter{{component=\"workflows\",counter=\"{name}\"}}"),
    )
    .unwrap_or(0.0) as u64
}

fn wait_counter(web: u16, name: &str, at_least: u64) {
    let t0 = Instant::now();
    while workflow_counter(web, name) < at_least {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "{name} never reached {at_least}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn trust_metadata_from_the_fleet_revokes_an_issuer_and_its_running_workflow() {
    let Some((dir, broker)) = fleet_fixture() else {
        return;
    };
    let d = dir.path();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let web = free_port();
    let cfg = write_config(
        d,
        &light(d, "[{ kind: timestamp_overlay }]"),
        Some(broker.port),
        web,
        false,
    );
    let mut a = agent(d, &cfg, "agent1");
    wait_online(broker.port);
    let wf1 = signed_light(d, "wf1", 1, "[{ kind: passthrough }]");
    chimera_ok(d, &["publish", &wf1, "--to", "orin-1", "--broker", &url]);
    wait_counter(web, "applied", 1);
    // The root revokes the issuer; the new trust metadata goes out retained.
    let gw = aegis_ota::sign::PublicKey::read(&d.join("gw.pub")).unwrap();
    chimera_ok(
        d,
        &[
            "trust",
            "revoke",
            "--trust",
            "root/trust.json",
            "--key-id",
            gw.id(),
        ],
    );
    chimera_ok(
        d,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            "root/root.key",
            "--out",
            "trust3.signed",
        ],
    );
    let s = Command::new("/usr/bin/mosquitto_pub")
        .args([
            "-p",
            &broker.port.to_string(),
            "-t",
            "aegis/v1/fleet/trust",
            "-r",
            "-q",
            "1",
            "-f",
        ])
        .arg(d.join("trust3.signed"))
        .status()
        .unwrap();
    assert!(s.success());
    wait_counter(web, "trust_updates", 1);
    // The running workflow stops at once (no restart needed): the local default runs.
    wait_counter(web, "revoked", 1);
    // The revoked issuer's next workflow is unauthenticated now: refused, unsigned.
    let wf2 = signed_light(d, "wf2", 2, "[{ kind: timestamp_overlay, scale: 3 }]");
    chimera_ok(d, &["publish", &wf2, "--to", "orin-1", "--broker", &url]);
    wait_counter(web, "refused", 1);
    assert_eq!(workflow_counter(web, "applied"), 1);
    sigterm(&mut a);
    let st = aegis_ok(
        d,
        &["workflow", "status", "--config", cfg.to_str().unwrap()],
    );
    let v: serde_json::Value = serde_json::from_str(&st).unwrap();
    assert_eq!(v["trust_version"], 3, "{st}");
    assert!(v["state"]["active"].is_null(), "{st}");
    let log = std::fs::read_to_string(d.join("agent1.log")).unwrap();
    assert!(log.contains("no longer passes its checks"), "{log}");
}

/// `aegis workflow apply` reaches an agent serving HTTPS (`web.tls: on`) over TLS pinned to
/// the device certificate it reads from disk, and refuses a server whose certificate is not
/// that one; `aegis version --config` prints the fingerprint the server really presents.
#[test]
fn workflow_apply_reaches_an_https_agent_pinned_to_its_device_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    make_clip(d, "clip.mp4", 320, 240, 2.0);
    let web = free_port();
    let cfg = write_config(d, &light(d, "[{ kind: passthrough }]"), None, web, false);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("web: {{ listen: \"127.0.0.1:{web}\" }}"),
        &format!("web: {{ listen: \"127.0.0.1:{web}\", tls: on }}"),
    );
    std::fs::write(&cfg, text).unwrap();
    let mut a = agent(d, &cfg, "tls");
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", web)).is_err() || !d.join("web.crt").exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "agent did not start: {}",
            std::fs::read_to_string(d.join("tls.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The fingerprint printed is the one served.
    let version = aegis_ok(d, &["version", "--config", cfg.to_str().unwrap()]);
    let printed = version
        .lines()
        .find_map(|l| l.split_once("SHA-256 ").map(|(_, f)| f.trim().to_string()))
        .unwrap_or_else(|| panic!("no fingerprint in: {version}"));
    assert_eq!(printed.len(), 95, "{printed}");
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{web} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .expect("openssl");
    let served = String::from_utf8_lossy(&served.stdout);
    assert_eq!(
        served.trim().rsplit('=').next().unwrap_or_default(),
        printed,
        "{served}"
    );
    // The CLI applies through the pinned TLS connection.
    let wf = signed_light(d, "tls", 1, "[{ kind: timestamp_overlay }]");
    let apply = |file: &str| {
        Command::new(aegis_bin())
            .current_dir(d)
            .args(["workflow", "apply", file, "--config", cfg.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let o = apply(&wf);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    // Another certificate on disk than the one served: the CLI refuses the server.
    let other = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-subj", "/CN=impostor", "-days", "1", "-keyout"])
        .arg(d.join("other.key"))
        .arg("-out")
        .arg(d.join("web.crt"))
        .output()
        .unwrap();
    assert!(other.status.success(), "{other:?}");
    let wf2 = signed_light(d, "tls2", 2, "[{ kind: passthrough }]");
    let o = apply(&wf2);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "applied despite a foreign certificate");
    assert!(err.contains("fingerprint differs"), "{err}");
    sigterm(&mut a);
}
