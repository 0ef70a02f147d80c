//! End to end: the real `aegis` binary runs a multi-stream pipeline over real clips, serves
//! /metrics, and on SIGTERM finalises recordings that ffprobe can play frame for frame.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;

fn write_config(dir: &Path, clip: &Path, listen: &str, looping: bool) -> std::path::PathBuf {
    let cfg = dir.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
device: {{ id: e2e-test }}
pipeline:
  sources:
    - {{ id: cam0, url: "file://{clip}", loop: {looping} }}
    - {{ id: cam1, url: "file://{clip}", loop: {looping} }}
  stages:
    - kind: passthrough
    - kind: timestamp_overlay
  sinks:
    - kind: record
      dir: {rec}
      segment_seconds: 1
      disk_budget_mb: 64
      encoder: {{ gop_frames: 15, threads: 1 }}
store: {{ path: {db} }}
web: {{ listen: "{listen}" }}
"#,
            clip = clip.display(),
            rec = dir.join("rec").display(),
            db = dir.join("aegis.db").display(),
        ),
    )
    .unwrap();
    cfg
}

/// Waits (bounded, as a safety net only) until `pred` holds.
fn wait_for(what: &str, limit: Duration, mut pred: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !pred() {
        assert!(t0.elapsed() < limit, "gave up waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_finalises_playable_recordings_and_metrics_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.mp4", 320, 240, 2.0);
    let cfg = write_config(dir.path(), &clip, "127.0.0.1:0", true);
    let mut child = Command::new(aegis_bin())
        .args(["run", "--realtime", "--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The agent prints the address it serves on (port 0 = any free port).
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("serving http://") {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("agent announced its address");

    // Looping sources keep running; wait for ~2.5 s of video per stream (> 2 segments).
    let mut body = String::new();
    wait_for(
        "frames through both streams",
        Duration::from_secs(60),
        || {
            body = http_get(&addr, "/metrics").map(|r| r.1).unwrap_or_default();
            ["cam0", "cam1"].iter().all(|s| {
                metric(
                    &body,
                    &format!("aegis_frames_total{{stream=\"{s}\",stage=\"sink\"}}"),
                )
                .is_some_and(|n| n >= 75.0)
            })
        },
    );
    for needle in [
        "aegis_stage_latency_seconds_bucket{",
        "aegis_queue_depth{",
        // Counted on the frame where the copies are made: libavcodec's picture → the surface,
        // the surface → the record sink's encoder (the overlay draws in place).
        "aegis_copies_per_frame{stream=\"cam0\"} 2",
        "aegis_process_resident_memory_bytes",
        "aegis_process_cpu_milliseconds",
        "aegis_frames_dropped_total",
        "aegis_pool_free_surfaces{",
    ] {
        assert!(body.contains(needle), "/metrics lacks {needle}:\n{body}");
    }
    let (status, health) = http_get(&addr, "/healthz").unwrap();
    assert!(status.contains("200"), "{status}");
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["device"], "e2e-test");
    assert_eq!(health["streams_running"], 2);

    // SIGTERM: the agent must stop the sources, drain, and close the open segments.
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "agent did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "exit {status:?}; stdout:\n{out}");
    assert!(
        files_with_suffix(&dir.path().join("rec"), ".part").is_empty(),
        "unfinished segments left"
    );

    for stream in ["cam0", "cam1"] {
        let delivered = delivered_frames(&out, stream);
        let segs = files_with_suffix(&dir.path().join("rec").join(stream), ".mp4");
        assert!(segs.len() >= 2, "{stream}: {segs:?}");
        if have_ffprobe() {
            let mut total = 0;
            for s in &segs {
                let p = ffprobe(s);
                assert_eq!(
                    (p.codec.as_str(), p.width, p.height),
                    ("h264", 320, 240),
                    "{s:?}"
                );
                assert!(p.errors.trim().is_empty(), "{s:?}: {}", p.errors);
                total += p.frames;
            }
            // Every delivered frame is in a finalised segment, including the last one cut short
            // by SIGTERM.
            assert_eq!(
                total, delivered,
                "{stream}: frames in segments vs delivered"
            );
        }
    }
}

/// A config with one stream per `(id, url)`, recording nothing, storing into `aegis.db`.
fn streams_config(dir: &Path, sources: &[(&str, String)]) -> std::path::PathBuf {
    let cfg = dir.join("streams.yaml");
    let list: String = sources
        .iter()
        .map(|(id, url)| format!("    - {{ id: {id}, url: \"{url}\" }}\n"))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "device: {{ id: e2e-test }}\npipeline:\n  sources:\n{list}  stages: []\n  \
             sinks: [{{ kind: discard }}]\nstore: {{ path: {db} }}\n\
             web: {{ listen: \"127.0.0.1:0\" }}\n",
            db = dir.join("aegis.db").display()
        ),
    )
    .unwrap();
    cfg
}

#[test]
fn an_unopenable_source_ends_only_its_own_stream() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.mp4", 320, 240, 1.0);
    let missing = dir.path().join("missing.mp4");
    let cfg = streams_config(
        dir.path(),
        &[
            ("good", format!("file://{}", clip.display())),
            ("bad", format!("file://{}", missing.display())),
            ("also_good", format!("file://{}", clip.display())),
        ],
    );
    let o = aegis(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    // The healthy streams ran to the end of their clip; the run reports the one failure
    // with exit code 1 (some streams failed), naming the stream and the path.
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    for stream in ["good", "also_good"] {
        assert_eq!(delivered_frames(&out, stream), 30, "{stream}: {out}");
    }
    let line = out
        .lines()
        .find(|l| l.starts_with("stream bad:"))
        .unwrap_or_else(|| panic!("no summary for the bad stream: {out}"));
    assert!(line.contains(&missing.display().to_string()), "{line}");
    // One cause, said once.
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
    assert!(
        err.contains("1 of 3 streams ended with errors: bad"),
        "{err}"
    );
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("error:"))
            .map(|l| l.matches("No such file").count())
            .sum::<usize>(),
        0,
        "{err}"
    );
    // The failure is an event (stored, and published when the fleet link is on).
    let events = db_export(dir.path(), &dir.path().join("aegis.db"), "events");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e["kind"] == "source_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{events:?}");
    assert_eq!(failed[0]["stream"], "bad");
    assert!(
        failed[0]["payload"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("missing.mp4")),
        "{failed:?}"
    );
}

#[test]
fn when_every_source_fails_the_run_exits_3() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = streams_config(
        dir.path(),
        &[
            (
                "cam0",
                format!("file://{}", dir.path().join("gone0.mp4").display()),
            ),
            (
                "cam1",
                format!("file://{}", dir.path().join("gone1.mp4").display()),
            ),
        ],
    );
    let o = aegis(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(
        err.contains("2 of 2 streams ended with errors: cam0, cam1"),
        "{err}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("gone0.mp4") && out.contains("gone1.mp4"),
        "{out}"
    );
}

#[test]
fn a_model_with_the_wrong_checksum_stops_the_start_naming_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "clip.mp4", 320, 240, 1.0);
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models");
    let cfg = write_config(dir.path(), &clip, "127.0.0.1:0", false);
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "    - kind: passthrough\n",
        "    - { kind: moderate, model: nn }\n",
    ) + &format!(
        "inference:\n  runtime: {}\n  models:\n    - {{ name: nn, kind: nudenet, file: {}, sha256: {} }}\n",
        models.join("libonnxruntime.so.1.32.0").display(),
        models.join("nudenet-320n.onnx").display(),
        "0".repeat(64)
    );
    std::fs::write(&cfg, text).unwrap();
    let o = aegis(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("model nn") && err.contains("SHA-256 mismatch"),
        "{err}"
    );
    // Nothing started: no recordings.
    assert!(!dir.path().join("rec").exists());
}

#[test]
fn demo_runs_end_to_end_in_a_fresh_directory() {
    let dir = dir_with_models_and_photo();
    let out = aegis_ok(dir.path(), &["demo", "--fast", "--listen", "127.0.0.1:0"]);
    assert!(
        out.contains("aegis_frames_total{stream=\"cam0\",stage=\"sink\"} 300"),
        "{out}"
    );
    // All three analytics stages did their work on both streams: the astronaut's face is one
    // stable track, every frame had its background replaced, the harmless clip has no
    // moderation verdict.
    assert_eq!(
        out.matches("analytics: 1 tracks started, 0 frames with a moderation verdict, background replaced on 300 frames").count(),
        2,
        "{out}"
    );
    let segs = files_with_suffix(&dir.path().join(".demo/recordings"), ".mp4");
    // 10 s clip, 4 s segments, two streams.
    assert_eq!(segs.len(), 6, "{segs:?}");
    if have_ffprobe() {
        let frames: u64 = segs.iter().map(|s| ffprobe(s).frames).sum();
        assert_eq!(frames, 600);
    }
}

#[test]
fn bench_stages_reports_every_stage() {
    let dir = dir_with_models_and_photo();
    let json = dir.path().join("stages.json");
    let out = aegis_ok(
        dir.path(),
        &[
            "bench",
            "stages",
            "--frames",
            "4",
            "--rounds",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    for stage in ["moderate", "virtual_background", "detect"] {
        assert!(out.contains(stage), "{out}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["stages"].as_array().unwrap().len(), 3, "{r}");
    for s in r["stages"].as_array().unwrap() {
        let (p50, engine) = (
            s["p50_ms"].as_f64().unwrap(),
            s["engine_ms"].as_f64().unwrap(),
        );
        assert!(p50 > 0.0 && engine > 0.0, "{s}");
    }
    assert!(r["pipeline_fps_2"].as_f64().unwrap() > 0.0, "{r}");
}

#[test]
fn bench_reports_ratios_and_no_per_frame_allocations() {
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "bench.mp4", 320, 240, 4.0);
    let json = dir.path().join("bench.json");
    let o = aegis(
        dir.path(),
        &[
            "bench",
            "pipeline",
            "--clip",
            clip.to_str().unwrap(),
            "--threads",
            "1",
            "--repeat",
            "1",
            "--json",
            json.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let r = &v[0];
    assert_eq!(r["frames"], 120);
    for k in ["decode_fps", "encode_fps", "pipeline_fps", "overhead_ratio"] {
        assert!(r[k].as_f64().is_some_and(|x| x > 0.0), "{k} in {r}");
    }
    // Counted, not declared: decoder picture → surface, surface → encoder.
    assert_eq!(r["copies_per_frame"], 2);
    // Steady state must not allocate per frame (a per-frame allocation shows as >= 1).
    let apf = r["allocs_per_frame"].as_f64().unwrap();
    assert!(apf < 0.1, "allocations per frame: {apf}");
}

#[test]
fn resolution_change_mid_stream_is_recorded_in_both_sizes() {
    if !have_ffprobe() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut raw = Vec::new();
    for (name, w, h) in [("small.mp4", 320, 240), ("large.mp4", 640, 360)] {
        let clip = make_clip(dir.path(), name, w, h, 1.0);
        let annexb = dir.path().join(format!("{name}.h264"));
        let ok = Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-i"])
            .arg(&clip)
            .args(["-c", "copy", "-bsf:v", "h264_mp4toannexb", "-f", "h264"])
            .arg(&annexb)
            .status()
            .expect("ffmpeg");
        assert!(ok.success());
        raw.extend(std::fs::read(&annexb).unwrap());
    }
    let both = dir.path().join("both.h264");
    std::fs::write(&both, raw).unwrap();
    let cfg = write_config(dir.path(), &both, "127.0.0.1:0", false);
    let out = aegis_ok(dir.path(), &["run", "--config", cfg.to_str().unwrap()]);
    assert!(
        out.contains("stream cam0: 60 frames decoded, 60 delivered"),
        "{out}"
    );
    let sizes: Vec<(u64, u64, u64)> = files_with_suffix(&dir.path().join("rec/cam0"), ".mp4")
        .iter()
        .map(|s| {
            let p = ffprobe(s);
            (p.width, p.height, p.frames)
        })
        .collect();
    let frames_of = |w| sizes.iter().filter(|s| s.0 == w).map(|s| s.2).sum::<u64>();
    assert_eq!((frames_of(320), frames_of(640)), (30, 30), "{sizes:?}");
}

#[test]
fn rtsp_camera_reconnects_and_its_health_is_reported_without_the_password() {
    if !have_rtsp_server() || !have_ffprobe() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = make_clip(dir.path(), "cam.mp4", 320, 240, 20.0);
    let server = rtsp_server(&clip, 0, Some("viewer:Sup3r@Secret"));
    let port = server.port;
    let cfg = dir.path().join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"
device: {{ id: rtsp-test }}
pipeline:
  sources:
    - {{ id: door, url: "rtsp://127.0.0.1:{port}/cam", username: viewer, password: "Sup3r@Secret" }}
  sinks:
    - {{ kind: record, dir: {rec}, segment_seconds: 2, encoder: {{ threads: 1 }} }}
web: {{ listen: "127.0.0.1:0" }}
store: {{ path: {db} }}
"#,
            rec = dir.path().join("rec").display(),
            db = dir.path().join("aegis.db").display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(aegis_bin())
        .args(["run", "--config", cfg.to_str().unwrap()])
        .current_dir(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let logs = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("serving http://") {
                let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("agent announced its address");
    let health = |addr: &str| -> serde_json::Value {
        let body = http_get(addr, "/healthz").map(|r| r.1).unwrap_or_default();
        serde_json::from_str(&body).unwrap_or_default()
    };
    let door = |v: &serde_json::Value| v["streams"][0].clone();
    wait_for("the camera to stream", Duration::from_secs(60), || {
        let d = door(&health(&addr));
        d["state"] == "streaming" && d["frames"].as_u64().unwrap_or(0) >= 30
    });
    let metrics = http_get(&addr, "/metrics").unwrap().1;
    assert!(
        metrics.contains("aegis_source_state{stream=\"door\",state=\"streaming\"} 1"),
        "{metrics}"
    );

    // The camera goes away: the stream reports it, and comes back by itself.
    drop(server);
    wait_for("the outage to be reported", Duration::from_secs(30), || {
        let d = door(&health(&addr));
        d["state"] != "streaming" && d["last_error"].is_string()
    });
    let during = health(&addr);
    assert_eq!(during["status"], "degraded", "{during}");
    let _server = rtsp_server(&clip, port, Some("viewer:Sup3r@Secret"));
    wait_for("the camera to come back", Duration::from_secs(60), || {
        let d = door(&health(&addr));
        d["state"] == "streaming" && d["reconnects"].as_u64().unwrap_or(0) >= 1
    });
    let back = std::time::SystemTime::now();
    let frames_back = door(&health(&addr))["frames"].as_u64().unwrap_or(0);
    wait_for("video after the outage", Duration::from_secs(30), || {
        door(&health(&addr))["frames"].as_u64().unwrap_or(0) >= frames_back + 30
    });
    let metrics = http_get(&addr, "/metrics").unwrap().1;

    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let logs = logs.join().unwrap();
    assert!(status.success(), "{out}\n{logs}");
    for (what, text) in [
        ("stdout", &out),
        ("logs", &logs),
        ("metrics", &metrics),
        ("healthz", &during.to_string()),
    ] {
        for form in ["Sup3r@Secret", "Sup3r%40Secret"] {
            assert!(
                !text.contains(form),
                "the password leaked into {what} as {form}"
            );
        }
    }
    // The outage is one `source_down` and one `source_up` event, however many attempts it
    // took, and the stored error holds no password either.
    let events = db_export(dir.path(), &dir.path().join("aegis.db"), "events");
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["stream"] == "door")
        .filter_map(|e| e["kind"].as_str())
        .filter(|k| k.starts_with("source_"))
        .collect();
    assert_eq!(kinds, ["source_down", "source_up"], "{events:?}");
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains("Sup3r"), "{text}");
    let delivered = delivered_frames(&out, "door");
    let segs = files_with_suffix(&dir.path().join("rec/door"), ".mp4");
    let recorded: u64 = segs.iter().map(|s| ffprobe(s).frames).sum();
    assert_eq!(
        recorded, delivered,
        "every delivered frame is in a playable segment: {segs:?}"
    );
    // Recording resumed by itself: segments written after the camera came back hold video.
    let after: u64 = segs
        .iter()
        .filter(|s| {
            std::fs::metadata(s)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t > back)
        })
        .map(|s| ffprobe(s).frames)
        .sum();
    assert!(
        after >= 30,
        "{after} frames recorded after the camera came back: {segs:?}"
    );
}

/// `(run, n)` of every stress event in the database at `db`.
fn stress_rows(dir: &Path, db: &str) -> std::collections::HashSet<(String, u64)> {
    let out = aegis_ok(
        dir,
        &[
            "db", "export", "--db", db, "--since", "all", "--table", "events",
        ],
    );
    out.lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let p = &v["payload"];
            match (p["run"].as_str(), p["n"].as_u64()) {
                (Some(run), Some(n)) => (run.to_string(), n),
                _ => panic!("not a stress event: {l}"),
            }
        })
        .collect()
}

#[test]
fn the_database_survives_kill_9_at_random_points_while_writing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("stress.db");
    let db_arg = db.to_str().unwrap();
    // Every (run, first, last) span the writers reported committed before they were killed.
    let mut committed: Vec<(String, u64, u64)> = Vec::new();
    // Deterministic "random" kill points between 30 and 600 ms after the writer is ready.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for round in 0..8 {
        let mut child = Command::new(aegis_bin())
            .args(["db", "stress", "--db", db_arg, "--seconds", "30"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let run = line
            .trim()
            .strip_prefix("ready ")
            .unwrap_or_else(|| panic!("round {round}: {line:?}"))
            .to_string();
        // The kill lands while it writes: after its first commit (on a loaded machine the
        // first transaction can take longer than the shortest kill delay).
        let mut first = String::new();
        out.read_line(&mut first).unwrap();
        std::thread::sleep(Duration::from_millis(30 + rng.next_u64() % 570));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // Everything it printed before it died: each span was printed after its commit.
        let before = committed.len();
        let first = first.trim_end().to_string();
        let rest = out.lines().map(Result::unwrap);
        for l in std::iter::once(first).filter(|l| !l.is_empty()).chain(rest) {
            let span: Vec<u64> = l
                .strip_prefix("committed ")
                .unwrap_or_else(|| panic!("round {round}: unexpected line {l:?}"))
                .split(' ')
                .map(|n| n.parse().unwrap())
                .collect();
            assert!(
                span.len() == 2 && span[0] <= span[1],
                "round {round}: {l:?}"
            );
            committed.push((run.clone(), span[0], span[1]));
        }
        assert!(
            committed.len() > before,
            "round {round}: the writer reported no commit before it was killed"
        );
        // Opens clean every time, and every row reported committed, in this round and all
        // before, is there.
        let check = aegis_ok(dir.path(), &["db", "check", "--db", db_arg]);
        assert!(check.trim().ends_with(": ok"), "round {round}: {check}");
        let rows = stress_rows(dir.path(), db_arg);
        for (run, first, last) in &committed {
            for n in *first..=*last {
                assert!(
                    rows.contains(&(run.clone(), n)),
                    "round {round}: row {n} of run {run} was reported committed and is gone"
                );
            }
        }
    }
}
