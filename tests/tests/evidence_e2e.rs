//! End to end: event clips from the real `aegis` binary. A technician asks for clips on the
//! web page; overlapping requests make one clip, sealed at rest, that starts on a keyframe
//! with its pre-roll; the page plays it decrypted; `aegis evidence export` writes the plain
//! MP4 and `chimera evidence verify` checks it off the device — and refuses it edited by one
//! byte. A `kill -9` while a clip is being written leaves no half clip after the restart.
//! The fleet asks for, lists and fetches clips over MQTT commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;

const PASSWORD: &str = "tech-horse-battery";

use aegis_tests::agent::RunningAgent as Agent;

/// One HTTP/1.0 exchange: status, head (lowercase), body bytes.
fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    let (code, head, body) = http_exchange(port, method, path, headers, body)?;
    Ok((code, head.to_lowercase(), body))
}

/// `chimera evidence verify CLIP` with the device's public key (from `aegis provision`).
fn verify(dir: &Path, clip: &Path) -> std::process::Output {
    let pubkey = dir.join("keys/device.pub");
    chimera(
        dir,
        &[
            "evidence",
            "verify",
            clip.to_str().unwrap(),
            "--device-key",
            pubkey.to_str().unwrap(),
        ],
    )
}

fn setup(dir: &Path, post_roll: f64, extra: &str) -> (PathBuf, u16) {
    let clip = make_clip(dir, "clip.mp4", 320, 240, 4.0);
    let keys = dir.join("keys");
    aegis_ok(dir, &["provision", "--dir", keys.to_str().unwrap()]);
    let port = aegis_tests::files::free_port();
    let pipeline = format!(
        "  evidence:\n    dir: {ev}\n    pre_roll_seconds: 1\n    post_roll_seconds: {post_roll}\n    keep: [{{ on: manual, retention_days: 7 }}]",
        ev = dir.join("evidence").display()
    );
    let root = format!("workflows: {{ keys_dir: {} }}\n{extra}", keys.display());
    let cfg = aegis_tests::agent::recorder_config(
        dir,
        "evidence-e2e",
        &clip,
        port,
        60,
        aegis_tests::agent::ConfigExtra {
            sinks: "",
            pipeline: &pipeline,
            root: &root,
        },
    );
    let mut add = Command::new(aegis_bin())
        .args(["user", "add", "tess", "--role", "technician", "--config"])
        .arg(&cfg)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    assert!(add.wait().unwrap().success());
    (cfg, port)
}

/// Logs in as the technician: the session cookie and its CSRF token.
fn login(port: u16) -> (String, String) {
    let cookie = aegis_tests::login_cookie(port, "tess", PASSWORD);
    let (_, _, page) = try_http(port, "GET", "/clips", &[("Cookie", &cookie)], b"").unwrap();
    let page = String::from_utf8_lossy(&page).into_owned();
    let at = page
        .find("name=\"csrf\" value=\"")
        .expect("the clips page has the trigger form");
    let rest = &page[at + 19..];
    let csrf = rest[..rest.find('"').unwrap()].to_string();
    (cookie, csrf)
}

fn clips(port: u16, cookie: &str) -> serde_json::Value {
    let (code, _, body) = try_http(port, "GET", "/api/clips", &[("Cookie", cookie)], b"").unwrap();
    assert_eq!(code, 200);
    serde_json::from_slice(&body).unwrap()
}

fn trigger(port: u16, cookie: &str, csrf: &str) {
    let (code, _, body) = try_http(
        port,
        "POST",
        "/api/clips",
        &[("Cookie", cookie), ("X-CSRF-Token", csrf)],
        b"stream=cam0",
    )
    .unwrap();
    assert_eq!(code, 202, "{}", String::from_utf8_lossy(&body));
}

/// (key, pts seconds) of each frame ffprobe decodes.
fn frames(path: &Path) -> Vec<(bool, f64)> {
    let o = Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
        .args(["frame=key_frame,pts_time", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()? == "1", f.next()?.parse().ok()?))
        })
        .collect()
}

#[test]
fn clips_asked_on_the_web_page_are_sealed_signed_played_and_verified_off_the_device() {
    if !have_ffprobe() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (cfg, port) = setup(dir, 1.0, "");
    let agent = Agent::start(dir, &cfg, port);
    let (cookie, csrf) = login(port);
    // Two requests half a second apart: one clip covers both.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    trigger(port, &cookie, &csrf);
    std::thread::sleep(Duration::from_millis(500));
    trigger(port, &cookie, &csrf);
    let mut listed = serde_json::Value::Null;
    agent.wait("the clip", || {
        listed = clips(port, &cookie);
        listed["clips"].as_array().is_some_and(|c| !c.is_empty())
    });
    let available_after = asked.elapsed();
    let all = listed["clips"].as_array().unwrap();
    assert_eq!(all.len(), 1, "{listed}");
    let c = &all[0];
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(c["kinds"], "manual,manual");
    assert_eq!(c["sealed"], true);
    assert_eq!(listed["status"]["state"], "on");
    // At rest: sealed, no MP4 box in the clear.
    let path = PathBuf::from(c["path"].as_str().unwrap());
    let at_rest = std::fs::read(&path).unwrap();
    assert!(at_rest.starts_with(b"AEGISEV1"));
    assert!(!at_rest.windows(4).any(|w| w == b"ftyp" || w == b"moof"));
    // The page plays it decrypted: a keyframe first, the pre-roll (1 s) + 0.5 s between the
    // requests + the post-roll (1 s).
    let (code, head, mp4) = try_http(
        port,
        "GET",
        &format!("/api/clips/{id}/video"),
        &[("Cookie", &cookie)],
        b"",
    )
    .unwrap();
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("video/mp4"));
    let played = dir.join("played.mp4");
    std::fs::write(&played, &mp4).unwrap();
    let f = frames(&played);
    assert!(f[0].0, "the clip starts on a keyframe");
    let span = f.last().unwrap().1 - f[0].1;
    assert!(
        span >= 2.3,
        "{span} s: pre-roll + both requests + post-roll"
    );
    eprintln!("clip available {available_after:?} after the first request; {span:.2} s long");
    agent.stop();

    // Exported for a technician, checked off the device with the device's public key.
    let out = dir.join("exported.mp4");
    let said = aegis_ok(
        dir,
        &[
            "evidence",
            "export",
            "--config",
            cfg.to_str().unwrap(),
            &id,
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(said.contains(&id), "{said}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        mp4,
        "the page played the exported bytes"
    );
    let o = verify(dir, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // One byte edited: refused.
    let mut edited = std::fs::read(&out).unwrap();
    let mid = edited.len() / 2;
    edited[mid] ^= 1;
    std::fs::write(&out, &edited).unwrap();
    let o = verify(dir, &out);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not match the manifest"), "{err}");
    // The list and the audit trail.
    let list = aegis_ok(
        dir,
        &["evidence", "list", "--config", cfg.to_str().unwrap()],
    );
    assert!(list.contains(&id));
    let audit = db_export(dir, &dir.join("aegis.db"), "audit");
    for action in ["evidence.trigger", "evidence.play", "evidence.export"] {
        assert!(
            audit.iter().any(|a| a["action"] == action),
            "no {action} in {audit:?}"
        );
    }
}

#[test]
fn kill_9_while_a_clip_is_written_leaves_no_half_clip_and_finished_ones_stay_indexed() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let (cfg, port) = setup(dir, 30.0, "");
    let agent = Agent::start(dir, &cfg, port);
    let (cookie, csrf) = login(port);
    std::thread::sleep(Duration::from_secs(2));
    // A 30 s post-roll: the clip is still being written when the agent is killed.
    trigger(port, &cookie, &csrf);
    let ev = dir.join("evidence/cam0");
    agent.wait("a clip being written", || {
        files_with_suffix(&ev, ".part")
            .iter()
            .any(|p| std::fs::metadata(p).is_ok_and(|m| m.len() > 10_000))
    });
    agent.kill9();
    assert!(!files_with_suffix(&ev, ".part").is_empty());

    let agent = Agent::start(dir, &cfg, port);
    let (cookie, _) = login(port);
    // The half clip is gone, and nothing half-finished is listed.
    assert!(files_with_suffix(&ev, ".part").is_empty());
    assert!(files_with_suffix(&ev, ".manifest.json").is_empty());
    let listed = clips(port, &cookie);
    assert_eq!(listed["clips"].as_array().unwrap().len(), 0, "{listed}");
    agent.stop();
}

/// `mosquitto_sub` for one reply of `name` (`-C count`): correlation, properties, hex body.
fn reply_listener(port: u16, name: &str, count: usize) -> Child {
    Command::new("/usr/bin/mosquitto_sub")
        .args([
            "-p",
            &port.to_string(),
            "-V",
            "mqttv5",
            "-t",
            &format!("replies/{name}"),
        ])
        .args(["-C", &count.to_string(), "-W", "30", "-F", "%D|%P|%x"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn command(port: u16, name: &str, payload: &str) {
    let st = Command::new("/usr/bin/mosquitto_pub")
        .args(["-p", &port.to_string(), "-V", "mqttv5", "-q", "1"])
        .args(["-t", &format!("aegis/v1/evidence-e2e/cmd/{name}")])
        .args([
            "-D",
            "publish",
            "response-topic",
            &format!("replies/{name}"),
        ])
        .args(["-D", "publish", "correlation-data", name, "-m", payload])
        .status()
        .unwrap();
    assert!(st.success());
}

fn unhex(h: &str) -> Vec<u8> {
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The JSON reply of a command sent now.
fn ask(port: u16, name: &str, payload: &str) -> serde_json::Value {
    let l = reply_listener(port, name, 1);
    std::thread::sleep(Duration::from_millis(200));
    command(port, name, payload);
    let out = String::from_utf8_lossy(&l.wait_with_output().unwrap().stdout).into_owned();
    let hex = out.trim().rsplit('|').next().unwrap_or("");
    serde_json::from_slice(&unhex(hex)).unwrap_or_else(|e| panic!("{name}: {e}: {out}"))
}

#[test]
fn the_fleet_asks_for_lists_and_fetches_a_clip_that_verifies() {
    if !have_mosquitto() || !have_ffprobe() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let broker = Broker::start(&dir.join("broker"));
    let fleet = format!(
        "fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{}\", keepalive_s: 5 }}",
        broker.port
    );
    let (cfg, port) = setup(dir, 0.5, &fleet);
    let agent = Agent::start(dir, &cfg, port);
    let p = broker.port;
    agent.wait("the fleet link", || {
        std::process::Command::new("/usr/bin/mosquitto_sub")
            .args([
                "-p",
                &p.to_string(),
                "-t",
                "aegis/v1/evidence-e2e/status",
                "-C",
                "1",
                "-W",
                "2",
            ])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("online"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let kept = ask(p, "keep_clip", r#"{"stream": "cam0"}"#);
    assert_eq!(kept["ok"], true, "{kept}");
    let refused = ask(p, "keep_clip", r#"{"stream": "nope"}"#);
    assert_eq!(refused["ok"], false, "{refused}");
    let mut listed = serde_json::Value::Null;
    agent.wait("the clip in list_clips", || {
        listed = ask(p, "list_clips", r#"{"limit": 5}"#);
        listed["result"]["clips"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    });
    let id = listed["result"]["clips"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let manifest = ask(p, "get_clip_manifest", &format!(r#"{{"id": "{id}"}}"#));
    let manifest = manifest["result"]["manifest"].as_str().unwrap().to_string();
    // The MP4 comes in chunks, each saying i/n.
    let l = reply_listener(p, "get_clip", 1);
    std::thread::sleep(Duration::from_millis(200));
    command(p, "get_clip", &format!(r#"{{"id": "{id}"}}"#));
    let first = String::from_utf8_lossy(&l.wait_with_output().unwrap().stdout).into_owned();
    let n: usize = first
        .split("chunk:")
        .nth(1)
        .and_then(|r| r.split('/').nth(1))
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no chunk property: {first}"));
    // Ask again with a listener for all n chunks (the first answer showed how many).
    let l = reply_listener(p, "get_clip", n);
    std::thread::sleep(Duration::from_millis(200));
    command(p, "get_clip", &format!(r#"{{"id": "{id}"}}"#));
    let out = String::from_utf8_lossy(&l.wait_with_output().unwrap().stdout).into_owned();
    let mp4: Vec<u8> = out
        .lines()
        .flat_map(|line| unhex(line.rsplit('|').next().unwrap_or("")))
        .collect();
    agent.stop();
    let exported = dir.join("fleet.mp4");
    std::fs::write(&exported, &mp4).unwrap();
    std::fs::write(dir.join("fleet.mp4.manifest.json"), &manifest).unwrap();
    let o = verify(dir, &exported);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(frames(&exported)[0].0);
}

#[test]
fn a_face_in_a_zone_and_a_rule_keep_one_clip_and_moderation_hits_keep_no_frames() {
    if !have_ffprobe() {
        return;
    }
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    // The astronaut's face panning by: one stable track, flagged by the moderation rule.
    let clip = d.join("face.mp4");
    aegis_ok(
        d,
        &[
            "sample",
            "--out",
            clip.to_str().unwrap(),
            "--width",
            "640",
            "--height",
            "360",
            "--seconds",
            "4",
            "--background",
            ".samples/astronaut.png",
        ],
    );
    let keys = d.join("keys");
    aegis_ok(d, &["provision", "--dir", keys.to_str().unwrap()]);
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
device: {{ id: evidence-models }}
pipeline:
  sources:
    - id: cam0
      url: "file://{clip}"
      zones: [{{ name: all, polygon: [[0, 0], [1, 0], [1, 1], [0, 1]] }}]
  stages:
    - {{ kind: moderate, model: nn, every_n_frames: 3, rules: [{{ classes: [FACE_FEMALE], action: alert, min_score: 0.3 }}] }}
    - {{ kind: detect, model: nn, classes: [FACE_FEMALE, FACE_MALE], min_score: 0.4, every_n_frames: 2 }}
  sinks:
    - {{ kind: record, dir: {rec}, encoder: {{ gop_frames: 15, threads: 1 }} }}
  rules:
    - {{ name: face_seen, when: {{ track: {{ label: FACE_FEMALE }} }} }}
  evidence:
    dir: {ev}
    pre_roll_seconds: 1
    post_roll_seconds: 1
    encrypt: false
    keep:
      - {{ on: detection, labels: [FACE_FEMALE, FACE_MALE], zone: all, retention_days: 3 }}
      - {{ on: rule, rule: face_seen }}
      - {{ on: moderation }}
inference:
  runtime: .models/libonnxruntime.so.1.32.0
  models: [{{ name: nn, kind: nudenet, file: .models/nudenet-320n.onnx }}]
workflows: {{ keys_dir: {keys} }}
store: {{ path: {db} }}
web: {{ listen: "127.0.0.1:0" }}
"#,
            clip = clip.display(),
            rec = d.join("rec").display(),
            ev = d.join("evidence").display(),
            keys = keys.display(),
            db = d.join("aegis.db").display(),
        ),
    )
    .unwrap();
    aegis_ok(d, &["run", "--config", cfg.to_str().unwrap()]);
    let rows: Vec<serde_json::Value> = aegis_ok(
        d,
        &[
            "evidence",
            "list",
            "--config",
            cfg.to_str().unwrap(),
            "--limit",
            "500",
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).unwrap())
    .collect();
    let (video, metadata): (Vec<_>, Vec<_>) = rows.iter().partition(|r| r["imagery"] == true);
    // The face's track and the rule it satisfies overlap: one clip, both events in it.
    assert_eq!(video.len(), 1, "{rows:?}");
    let kinds = video[0]["kinds"].as_str().unwrap();
    assert!(
        kinds.contains("detection") && kinds.contains("rule"),
        "{kinds}"
    );
    let path = PathBuf::from(video[0]["path"].as_str().unwrap());
    assert!(frames(&path)[0].0, "the clip starts on a keyframe");
    // Moderation hits: rows with the event and nothing else — no file, no hash.
    assert!(!metadata.is_empty(), "no moderation record in {rows:?}");
    for m in &metadata {
        assert_eq!(m["kinds"], "moderation");
        assert!(m["path"].is_null() && m["sha256"].is_null(), "{m}");
    }
    // On disk: the one clip and its manifest.
    let files = files_with_suffix(&d.join("evidence"), "");
    assert_eq!(files.len(), 2, "{files:?}");
}
