//! The agent as a systemd service (docs/appliance.md), without systemd: the tests own the
//! notification socket (`NOTIFY_SOCKET`) and set `WATCHDOG_USEC` the way the service manager
//! does, then read what the agent says. And the unit file itself, checked with Debian's
//! `systemd-analyze`.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_tests::*;

const UNIT: &str = include_str!("../../deploy/systemd/aegis.service");

/// The datagrams the agent sent, in order.
#[derive(Clone, Default)]
struct Heard(Arc<Mutex<Vec<String>>>);

impl Heard {
    /// Binds `path` and collects every datagram on a thread.
    fn listen(path: &Path) -> Heard {
        let sock = UnixDatagram::bind(path).unwrap();
        let heard = Heard::default();
        let out = heard.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).to_string();
                out.0.lock().unwrap().push(msg);
            }
        });
        heard
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Every `KEY=value` line so far, in order.
    fn lines(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|m| m.lines().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }

    fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// Waits (60 s at most) for a line `f` accepts; returns it.
    fn wait(&self, what: &str, f: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| f(l)) {
                return l;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "never heard {what}; heard: {:?}",
                self.all()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

struct Agent {
    child: Child,
    dir: PathBuf,
}

impl Agent {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Starts `aegis run` in `d` with `sources` (YAML list items), recording into `d/rec`, a
/// watchdog of `WATCHDOG_USEC` = 1 s and `stall_s` = 2; `env` on top.
fn start(d: &Path, sources: &[String], env: &[(&str, &str)]) -> (Agent, Heard, u16) {
    let heard = Heard::listen(&d.join("notify.sock"));
    let web = free_port();
    let dd = d.display();
    std::fs::write(
        d.join("aegis.yaml"),
        format!(
            "device: {{ id: orin-1 }}\n\
             pipeline:\n  sources: [{}]\n  stages: [{{ kind: timestamp_overlay }}]\n  \
             sinks: [{{ kind: record, dir: {dd}/rec, segment_seconds: 60, disk_budget_mb: 50 }}]\n\
             store: {{ path: {dd}/aegis.db }}\n\
             web: {{ listen: \"127.0.0.1:{web}\" }}\n\
             watchdog: {{ stall_s: 2, applier_stall_s: 30 }}\n",
            sources.join(", ")
        ),
    )
    .unwrap();
    let mut cmd = Command::new(aegis_bin());
    cmd.args(["run", "--config", d.join("aegis.yaml").to_str().unwrap()])
        .current_dir(d)
        .env("NOTIFY_SOCKET", d.join("notify.sock"))
        .env("WATCHDOG_USEC", "1000000")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.join("agent.log")).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    (
        Agent {
            child,
            dir: d.to_path_buf(),
        },
        heard,
        web,
    )
}

fn looping_clip(d: &Path) -> String {
    let clip = make_clip(d, "clip.mp4", 320, 240, 2.0);
    format!(
        "{{ id: cam0, url: \"file://{}\", loop: true, realtime: true }}",
        clip.display()
    )
}

/// READY once the agent serves — with one camera dead (a refused RTSP port): not gated on
/// it; keep-alives keep coming while the dead camera reconnects; STATUS names the stream
/// that is not streaming; SIGTERM gives STOPPING and a finalised recording.
#[test]
fn ready_status_and_keepalives_with_a_dead_camera_then_stopping_finalises_the_recording() {
    if !have_ffprobe() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let dead = free_port();
    let (mut agent, heard, web) = start(
        d,
        &[
            looping_clip(d),
            format!("{{ id: cam1, url: \"rtsp://127.0.0.1:{dead}/none\" }}"),
        ],
        &[],
    );
    heard.wait("READY=1", |l| l == "READY=1");
    let first = heard.wait("a status", |l| l.starts_with("STATUS="));
    assert!(
        first.contains(&format!("serving 127.0.0.1:{web}")),
        "{first}"
    );
    // The live camera streams, the dead one does not, and the status says which.
    let status = heard.wait("cam0 streaming, cam1 not", |l| {
        l.starts_with("STATUS=") && l.contains("1/2 streams streaming") && l.contains("(cam1 ")
    });
    assert!(status.contains("local pipeline"), "{status}");
    // Keep-alives every third of WATCHDOG_USEC, while cam1 keeps failing.
    let before = heard.count("WATCHDOG=1");
    heard.wait("six more keep-alives", |_| {
        heard.count("WATCHDOG=1") >= before + 6
    });
    assert!(
        !heard.lines().iter().any(|l| l.contains("not progressing")),
        "{:?}\n{}",
        heard.all(),
        agent.log()
    );
    // SIGTERM: STOPPING=1, a clean exit, the recording finalised (readable to its end).
    // SAFETY: kill(2) on our own child with a valid signal number.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "{}", agent.log());
    heard.wait("STOPPING=1", |l| l == "STOPPING=1");
    let recordings = files_with_suffix(&d.join("rec"), ".mp4");
    assert!(!recordings.is_empty(), "no recording: {}", agent.log());
    let p = ffprobe(&recordings[0]);
    assert!(p.frames > 0, "{p:?}");
}

/// A stage thread that stops progressing (the `AEGIS_TEST_STALL` hook) stops the
/// keep-alives once it has been busy on one frame for longer than `watchdog.stall_s`, and
/// the status says which thread; systemd would restart the agent.
#[test]
fn a_stalled_stage_thread_stops_the_keepalives_and_the_status_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (agent, heard, _) = start(d, &[looping_clip(d)], &[("AEGIS_TEST_STALL", "cam0:20")]);
    heard.wait("READY=1", |l| l == "READY=1");
    heard.wait("a keep-alive", |l| l == "WATCHDOG=1");
    let stalled = heard.wait("the stall", |l| l.contains("not progressing"));
    assert!(
        stalled.starts_with("STATUS=not progressing: stg-cam0 busy on one item for")
            && stalled.contains("(limit 2 s)"),
        "{stalled}"
    );
    // From then on, no keep-alive: six watchdog periods (a third of a second each) pass
    // without one.
    let after = heard.count("WATCHDOG=1");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        heard.count("WATCHDOG=1"),
        after,
        "keep-alives went on: {:?}",
        heard.all()
    );
    assert!(agent.log().contains("keep-alives stop"), "{}", agent.log());
}

/// Whether `systemd-analyze` runs here (Debian's `systemd`); in CI its absence fails.
fn have_systemd_analyze() -> bool {
    have_command("systemd-analyze", "--version", "systemd")
}

/// The unit as shipped, with `ExecStart` pointing at the built binary (verify checks that
/// the command exists), in a temp dir.
fn unit_file(d: &Path) -> PathBuf {
    write_unit(d, "aegis.service", UNIT)
}

/// `systemd-analyze verify` passed without a word.
fn assert_silent_success(o: &std::process::Output) {
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success() && said.trim().is_empty(), "{said}");
}

/// `text` as `d/name`, its `ExecStart=/usr/bin/aegis` pointing at the built binary.
fn write_unit(d: &Path, name: &str, text: &str) -> PathBuf {
    let unit = text.replace(
        "ExecStart=/usr/bin/aegis ",
        &format!("ExecStart={} ", aegis_bin().display()),
    );
    assert_ne!(unit, text, "{name}: its ExecStart moved");
    let path = d.join(name);
    std::fs::write(&path, unit).unwrap();
    path
}

/// The firmware helper's units: `aegis-firmware.path` starts `aegis-firmware.service` (a
/// root oneshot running `aegis firmware helper`) when the agent's request appears in the
/// spool the agent uses (`<workflows.state_dir>/firmware/helper`, as configured by
/// default); both pass `systemd-analyze verify`.
#[test]
fn the_firmware_helper_units_verify_and_watch_the_agents_spool() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let path_unit = include_str!("../../deploy/systemd/aegis-firmware.path");
    let service = write_unit(
        d,
        "aegis-firmware.service",
        include_str!("../../deploy/systemd/aegis-firmware.service"),
    );
    std::fs::write(d.join("aegis-firmware.path"), path_unit).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(d.join("aegis-firmware.path"))
        .arg(&service)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", d.display()))
        .output()
        .unwrap();
    assert_silent_success(&o);
    // The path the unit watches is the agent's spool with the default configuration.
    let cfg = aegis_config::WorkflowsConfig::default();
    // (agent/src/firmware/steps.rs: SPOOL, REQUEST)
    let spool = cfg.firmware_dir().join("helper/request.json");
    assert!(
        path_unit.contains(&format!("PathExists={}\n", spool.display())),
        "aegis-firmware.path does not watch {}",
        spool.display()
    );
}

/// `systemd-analyze verify` accepts the unit without a word; it is a notify service with a
/// watchdog, hardened (`systemd-analyze security` exposure 2.0 or better, "OK"), without
/// `MemoryDenyWriteExecute` (NVRTC, TensorRT) and with a device allow-list.
#[test]
fn the_unit_verifies_and_is_hardened() {
    if !have_systemd_analyze() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = unit_file(dir.path());
    let o = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_silent_success(&o);
    let keys: Vec<(&str, &str)> = UNIT
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .collect();
    let has = |k: &str, v: &str| keys.iter().any(|(a, b)| *a == k && *b == v);
    for (k, v) in [
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("WatchdogSec", "30s"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "aegis"),
        ("DevicePolicy", "closed"),
        ("DeviceAllow", "char-video4linux rw"),
    ] {
        assert!(has(k, v), "{k}={v} missing");
    }
    assert!(!keys.iter().any(|(k, _)| *k == "MemoryDenyWriteExecute"));
    let o = Command::new("systemd-analyze")
        .args(["security", "--offline=true", path.to_str().unwrap()])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let level = out
        .lines()
        .find_map(|l| l.split("Overall exposure level for aegis.service: ").nth(1))
        .unwrap_or_else(|| panic!("no exposure level: {out}"));
    let score: f64 = level.split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("systemd-analyze security: exposure {level}");
    assert!(score <= 2.0 && level.contains("OK"), "{level}");
}

/// A fake Orin Nano root filesystem for `aegis doctor --root`: the device-tree model, the
/// Jetson Linux release file, the V4L2 decoder node (no encoder: the Nano has none) and one
/// USB camera.
fn orin_nano_root(d: &Path) -> PathBuf {
    let root = d.join("root");
    let put = |p: &str, text: &str| {
        let p = root.join(p);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "proc/device-tree/model",
        "NVIDIA Jetson Orin Nano Developer Kit\0",
    );
    put(
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    );
    put("dev/v4l2-nvdec", "");
    put("sys/class/video4linux/video0/name", "USB Camera\n");
    root
}

/// `aegis doctor` reads the platform (a fake Orin Nano here), says what is missing (no
/// NVENC, a configured camera not present, a broker that does not answer) without failing,
/// and exits 1 naming what keeps the agent from running (a model file that is not there,
/// one whose SHA-256 differs).
#[test]
fn doctor_reports_the_platform_warns_and_fails_only_when_the_agent_cannot_run() {
    let dir = dir_with_models_and_photo();
    let d = dir.path();
    let root = orin_nano_root(d);
    let closed = free_port();
    let config = |models: &str| {
        let path = d.join("aegis.yaml");
        std::fs::write(
            &path,
            format!(
                "device: {{ id: orin-1 }}\n\
                 pipeline:\n  sources:\n    - {{ id: cam0, url: \"v4l2:///dev/video0\" }}\n    - {{ id: cam1, url: \"v4l2:///dev/video2\" }}\n  \
                 stages: []\n  sinks: [{{ kind: discard }}]\n\
                 store: {{ path: {}/state/aegis.db }}\n\
                 fleet: {{ enabled: true, broker_url: \"mqtt://127.0.0.1:{closed}\" }}\n\
                 inference:\n  runtime: .models/libonnxruntime.so.1.32.0\n  models:\n{models}",
                d.display()
            ),
        )
        .unwrap();
        path
    };
    let run = |cfg: &Path, json: bool| {
        let mut args = vec![
            "doctor",
            "--config",
            cfg.to_str().unwrap(),
            "--root",
            root.to_str().unwrap(),
        ];
        if json {
            args.push("--json");
        }
        let o = aegis(d, &args);
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).to_string(),
        )
    };
    let good =
        "    - { name: seg, kind: selfie_segmentation, file: .models/selfie_segmentation.onnx }\n";
    let (code, out) = run(&config(good), false);
    assert_eq!(code, Some(0), "{out}");
    for want in [
        "ok    platform     NVIDIA Jetson Orin Nano Developer Kit; Jetson Linux R36.4.3 (JetPack 6.x",
        "ok    codecs       hardware decoder /dev/v4l2-nvdec present",
        "warn  codecs       this module has no NVENC (Orin Nano): H.264 encodes on the CPU",
        "ok    v4l2         /dev/video0 \"USB Camera\" (configured: cam0)",
        "warn  v4l2         /dev/video2: configured for cam1, not present",
        "ok    onnxruntime  .models/libonnxruntime.so.1.32.0: providers cpu",
        "ok    models       seg v1 .models/selfie_segmentation.onnx",
        &format!("warn  broker       mqtt://127.0.0.1:{closed}: not reachable"),
        "will use: H.264 encoder",
        "result: ready (",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    // The same as JSON.
    let (_, json) = run(&config(good), true);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(v["result"].as_str().unwrap().starts_with("ready"), "{v}");
    assert!(
        v["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["area"] == "platform")
    );
    // A model that is not there, and one whose file is not the one the config pins.
    let bad = format!(
        "{good}    - {{ name: gone, kind: nudenet, file: .models/missing.onnx }}\n    - {{ name: swapped, kind: nudenet, file: .models/nudenet-320n.onnx, sha256: {} }}\n",
        "0".repeat(64)
    );
    let (code, out) = run(&config(&bad), false);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("FAIL  models       gone .models/missing.onnx:"),
        "{out}"
    );
    assert!(
        out.contains("FAIL  models       swapped .models/nudenet-320n.onnx: sha256 c15d8273"),
        "{out}"
    );
    assert!(out.contains("result: cannot run: models\n"), "{out}");
}

/// The configuration the image installs (`deploy/aegis.yaml`) is valid, records under the
/// unit's state directory and serves the technician page over HTTPS.
#[test]
fn the_default_appliance_config_is_valid_and_stays_in_the_state_directory() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/aegis.yaml");
    let o = aegis(
        Path::new(env!("CARGO_MANIFEST_DIR")),
        &["check-config", path.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg: serde_json::Value = serde_json::to_value(aegis_config::load(&path).unwrap()).unwrap();
    assert_eq!(cfg["store"]["path"], "/var/lib/aegis/aegis.db");
    assert_eq!(cfg["web"]["tls"], "on");
    assert!(
        cfg["pipeline"]["sinks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["dir"]
                .as_str()
                .is_none_or(|d| d.starts_with("/var/lib/aegis/"))),
        "{cfg}"
    );
}
