//! Helpers for the cross-crate, end-to-end tests in `tests/tests/`: they drive the real
//! `aegis` binary (built by `just test` before the tests run) against real media files and
//! real tools (`ffprobe`, mosquitto, Chromium through chromedriver: [`browser`], with the
//! agent it drives in [`web_agent`]).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod agent;
pub mod browser;
pub mod files;
pub mod web_agent;

/// The deterministic generator the tests draw "random" kill points, noise and inputs from
/// (the workspace's one xorshift, in aegis-hal).
pub use aegis_hal::rng::XorShift;

/// The variable naming the file where skipped tests are recorded (`just test` sets it, lists
/// the file at the end and fails when anything was skipped under `CI`).
pub const SKIP_LOG_VAR: &str = "AEGIS_SKIP_LOG";

/// Says loudly that the running test skips for `why`, and records it: one line
/// `<test binary> <test>: <why>` appended to the file `$AEGIS_SKIP_LOG` names, when set.
pub fn record_skip(why: &str) {
    let line = skip_line(why);
    eprintln!("SKIPPED {line}");
    if let Some(log) = std::env::var_os(SKIP_LOG_VAR) {
        append_skip(Path::new(&log), &line);
    }
}

/// `<test binary> <test>: <why>`: the binary without cargo's hash suffix, the test from the
/// thread libtest runs it on.
fn skip_line(why: &str) -> String {
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let bin = bin.rsplit_once('-').map_or(bin.as_str(), |(b, _)| b);
    let thread = std::thread::current();
    format!("{bin} {}: {why}", thread.name().unwrap_or("?"))
}

/// Appends `line` to `log` in one `write` on a file opened for appending, so lines from test
/// processes running in parallel never interleave. A log that cannot be written fails the
/// test: a skip nobody hears about is what the log exists to prevent.
fn append_skip(log: &Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
    if let Err(e) = written {
        panic!("cannot record the skip in {}: {e}", log.display());
    }
}

/// The `aegis` binary: `$AEGIS_BIN`, else `aegis` next to this test's target directory.
pub fn aegis_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AEGIS_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/aegis
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let bin = dir.join("aegis");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p aegis-agent` first (just test does)",
        bin.display()
    );
    bin
}

/// Runs `aegis ARGS` in `cwd` and returns its output.
pub fn aegis(cwd: &Path, args: &[&str]) -> Output {
    Command::new(aegis_bin())
        .args(args)
        .current_dir(cwd)
        .env("RUST_LOG", "warn")
        .output()
        .expect("spawn aegis")
}

/// Runs `aegis ARGS` in `cwd`, requires success, and returns its stdout.
pub fn aegis_ok(cwd: &Path, args: &[&str]) -> String {
    let o = aegis(cwd, args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "aegis {args:?} failed:\n{out}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Frames `(decoded, delivered, dropped)` of `stream`, from `aegis run`'s closing report
/// (`stream ID: N frames decoded, M delivered (x fps), K dropped, ...`).
pub fn stream_counts(report: &str, stream: &str) -> (u64, u64, u64) {
    let prefix = format!("stream {stream}: ");
    let counts = report
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|rest| {
            let mut parts = rest
                .split(", ")
                .map(|p| p.split(' ').next().and_then(|n| n.parse().ok()));
            Some((parts.next()??, parts.next()??, parts.next()??))
        });
    counts.unwrap_or_else(|| panic!("no report for {stream} in:\n{report}"))
}

/// The rows of `table` (`events`, `sensors`, `fused`, …) in the database `db`, exported by
/// `aegis db export` as JSON lines, oldest first.
pub fn db_export(cwd: &Path, db: &Path, table: &str) -> Vec<serde_json::Value> {
    let db = db.to_str().expect("utf-8 path");
    aegis_ok(
        cwd,
        &[
            "db", "export", "--db", db, "--since", "all", "--table", table,
        ],
    )
    .lines()
    .map(|l| serde_json::from_str(l).expect("a JSON line"))
    .collect()
}

/// Frames delivered to the sinks of `stream`, from `aegis run`'s closing report.
pub fn delivered_frames(report: &str, stream: &str) -> u64 {
    stream_counts(report, stream).1
}

/// Makes a small synthetic clip with `aegis sample`.
pub fn make_clip(dir: &Path, name: &str, width: u32, height: u32, seconds: f64) -> PathBuf {
    let out = dir.join(name);
    let o = aegis(
        dir,
        &[
            "sample",
            "--out",
            out.to_str().expect("utf-8 path"),
            "--width",
            &width.to_string(),
            "--height",
            &height.to_string(),
            "--seconds",
            &seconds.to_string(),
        ],
    );
    assert!(
        o.status.success(),
        "aegis sample failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// Whether `ffprobe` can be run. In CI its absence is a failure (CI installs it).
pub fn have_ffprobe() -> bool {
    have_command("ffprobe", "-version", "ffmpeg")
}

/// Whether `program arg` runs and succeeds. Without it the test skips (recorded); in CI
/// that is a failure naming `package`, which tools/setup.sh installs.
pub fn have_command(program: &str, arg: &str, package: &str) -> bool {
    let ok = Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("{program} is required in CI (tools/setup.sh installs {package})");
    }
    if !ok {
        record_skip(&format!("{program} not found"));
    }
    ok
}

/// What ffprobe sees in a file after decoding every frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    /// Codec name.
    pub codec: String,
    /// Width.
    pub width: u64,
    /// Height.
    pub height: u64,
    /// Frames decoded.
    pub frames: u64,
    /// Anything ffprobe printed on stderr (errors).
    pub errors: String,
}

/// Decodes every frame of `path` with ffprobe.
pub fn ffprobe(path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ffprobe json for {}: {e}", path.display()));
    let s = &v["streams"][0];
    Probe {
        codec: s["codec_name"].as_str().unwrap_or_default().to_string(),
        width: s["width"].as_u64().unwrap_or(0),
        height: s["height"].as_u64().unwrap_or(0),
        frames: s["nb_read_frames"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0),
        errors: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Files under `dir` (one level of stream subdirectories) whose names end with `suffix`.
pub fn files_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_with_suffix(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// A blocking HTTP/1.0 GET on loopback; returns (status line, body).
pub fn http_get(addr: &str, path: &str) -> std::io::Result<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf.split_once("\r\n\r\n").unwrap_or((&buf, ""));
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    ))
}

/// The value of the first metric line that starts with `prefix` (name plus labels).
pub fn metric(body: &str, prefix: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A loopback RTSP server (GStreamer's rtsp-server via `tools/rtsp-server.py`); killed on drop.
pub struct RtspServer {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether the GStreamer RTSP server can run here. In CI its absence is a failure.
pub fn have_rtsp_server() -> bool {
    let ok = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import gi; gi.require_version('GstRtspServer', '1.0')",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI needs python3-gi and gir1.2-gst-rtsp-server-1.0 (tools/setup.sh installs them)");
    }
    if !ok {
        record_skip("GStreamer RTSP server not installed");
    }
    ok
}

/// Serves `clip` at `rtsp://127.0.0.1:PORT/cam` (optionally requiring `user:pass`), on
/// `port` or, with 0, on a free one.
pub fn rtsp_server(clip: &Path, port: u16, user: Option<&str>) -> RtspServer {
    use std::io::BufRead;
    let port = match port {
        0 => std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port"),
        p => p,
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/rtsp-server.py");
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg(script)
        .arg(port.to_string())
        .arg(format!("cam={}", clip.display()));
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start rtsp server");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read server output");
    assert_eq!(line.trim(), "ready", "rtsp server did not start");
    RtspServer { child, port }
}

/// A fresh directory laid out like a checkout after `just models` and tools/fetch-media.sh:
/// `.models` (linked to the repository's) and the photo the sample clips pan over.
pub fn dir_with_models_and_photo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::os::unix::fs::symlink(
        repo.join(".models")
            .canonicalize()
            .expect("run `just models`"),
        dir.path().join(".models"),
    )
    .expect("link .models");
    std::fs::create_dir(dir.path().join(".samples")).expect("mkdir .samples");
    std::fs::copy(
        repo.join(".samples/astronaut.png"),
        dir.path().join(".samples/astronaut.png"),
    )
    .expect("run tools/fetch-media.sh");
    dir
}

/// Whether Debian's `mosquitto` broker and clients are installed. In CI their absence is a
/// failure (`.ci/run` installs them).
pub fn have_mosquitto() -> bool {
    let ok = [
        "/usr/sbin/mosquitto",
        "/usr/bin/mosquitto_sub",
        "/usr/bin/mosquitto_pub",
    ]
    .iter()
    .all(|p| Path::new(p).exists());
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install mosquitto"
    );
    if !ok {
        record_skip("mosquitto not installed");
    }
    ok
}

/// A mosquitto broker on a free loopback port, with persistence in its own directory (so
/// persistent subscriber sessions survive a restart, as a real fleet broker's do).
pub struct Broker {
    /// Its port.
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl Broker {
    /// Starts one allowing anonymous clients; persistence and config live in `dir`.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_with(dir, "allow_anonymous true\n")
    }

    /// Starts one with `listener_options` (TLS files, authentication) for its listener.
    pub fn start_with(dir: &Path, listener_options: &str) -> Broker {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        std::fs::create_dir_all(dir).expect("broker dir");
        // Started as root, mosquitto drops to user `mosquitto`, which cannot write here.
        // SAFETY: getuid(2) has no preconditions.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\n{listener_options}persistence true\n\
                 persistence_location {}/\nautosave_interval 1\nmax_queued_messages 100000\n{user}",
                dir.display()
            ),
        )
        .expect("broker config");
        let mut b = Broker {
            port,
            dir: dir.to_path_buf(),
            child: None,
        };
        b.up();
        b
    }

    /// (Re)starts the broker process and waits until it accepts connections.
    pub fn up(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("mosquitto.log"))
            .expect("log");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        // A hang guard, not a speed check: generous for a loaded 2-core machine.
        let t0 = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                t0.elapsed().as_secs() < 120,
                "gave up waiting for mosquitto to listen on {}: {}",
                self.port,
                self.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// What the broker logged so far (connections, refusals, TLS errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Stops it (SIGTERM: it saves its persistent sessions) and waits.
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid with a valid signal number.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The payload [`wait_subscribed`] publishes: not JSON and not a signed document, so tests
/// reading the subscriber's output can tell it from what they are after.
pub const PROBE: &str = "aegis-test-probe";

/// Waits until the `mosquitto_sub` writing to `out` receives on `topic` (a positive signal
/// that its subscription is in place): publishes [`PROBE`] there (QoS 1) until `out` shows
/// it. A hang guard only: gives up after two minutes.
pub fn wait_subscribed(port: u16, topic: &str, out: &Path) {
    let t0 = std::time::Instant::now();
    loop {
        let st = Command::new("/usr/bin/mosquitto_pub")
            .args(["-p", &port.to_string(), "-q", "1", "-t", topic, "-m", PROBE])
            .status()
            .expect("mosquitto_pub");
        assert!(st.success(), "mosquitto_pub to {topic}: {st}");
        let seen = std::fs::read_to_string(out).unwrap_or_default();
        if seen.contains(PROBE) {
            return;
        }
        assert!(
            t0.elapsed().as_secs() < 120,
            "gave up waiting for the subscriber of {topic} to receive"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// The `chimera` gateway binary (next to `aegis`).
pub fn chimera_bin() -> PathBuf {
    aegis_bin().with_file_name("chimera")
}

/// Runs `chimera ARGS` in `dir`.
pub fn chimera(dir: &Path, args: &[&str]) -> Output {
    let bin = chimera_bin();
    assert!(
        bin.exists(),
        "{} missing: cargo build -p aegis-ota --bins",
        bin.display()
    );
    Command::new(bin)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spawn chimera")
}

/// Runs `chimera ARGS` in `dir`, requires success, returns stdout.
pub fn chimera_ok(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(
        o.status.success(),
        "chimera {args:?} failed: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// An unsigned workflow `DIR/NAME.maml.md` by issuer `fleet-gw-1` for `orin-1` (and group
/// `site-a`), sequence `seq`, issued a minute ago for a day, running `pipeline` (YAML,
/// indented by two spaces); `requires_models` is the `requires.models` list (`[]`: none).
/// Sign it with `chimera sign FILE --key gw.key` (→ `NAME.signed.maml.md`).
pub fn draft_workflow(
    dir: &Path,
    name: &str,
    seq: u64,
    pipeline: &str,
    requires_models: &str,
) -> PathBuf {
    let now = aegis_ota::maml::now_s();
    let (issued, expires) = (
        aegis_ota::maml::format_time(now - 60),
        aegis_ota::maml::format_time(now + 86_400),
    );
    let mut id = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut id))
        .expect("urandom");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let id = format!("00000000-0000-4000-8000-{hex}");
    let text = aegis_ota::maml::workflow_text(
        &aegis_ota::maml::Draft {
            id: &id,
            issuer: "fleet-gw-1",
            devices: &["orin-1"],
            groups: &["site-a"],
            sequence: seq,
            issued_at: &issued,
            expires_at: &expires,
        },
        pipeline,
    )
    .replace(
        "requires: { models: [], ",
        &format!("requires: {{ models: {requires_models}, "),
    );
    let p = dir.join(format!("{name}.maml.md"));
    std::fs::write(&p, text).expect("write the workflow");
    p
}

/// A gateway and one provisioned device in `dir`: root (`root/`), issuer `fleet-gw-1`
/// (`gw.key`, allowed any device and group), signed trust metadata (`trust.signed`), the
/// device's keys (`keys/`, by `aegis provision`), and its enrolment in `devices.json`
/// with `groups`.
pub fn gateway_and_device(dir: &Path, device: &str, groups: &[&str]) {
    chimera_ok(dir, &["root", "init", "--dir", "root"]);
    chimera_ok(dir, &["keygen", "--out", "gw"]);
    chimera_ok(
        dir,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "fleet-gw-1",
            "--key",
            "gw.pub",
            "--devices",
            "*",
            "--groups",
            "*",
        ],
    );
    sign_trust(dir);
    aegis_ok(dir, &["provision", "--dir", "keys"]);
    let mut enrol = vec![
        "enroll",
        device,
        "keys/device.pub",
        "--kem",
        "keys/device.kem.pub",
    ];
    for g in groups {
        enrol.extend(["--group", g]);
    }
    chimera_ok(dir, &enrol);
}

/// Signs `root/trust.json` with the root key into `trust.signed` in `dir` (replacing it):
/// after [`gateway_and_device`], once a test changed the trust (another issuer).
pub fn sign_trust(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("trust.signed"));
    chimera_ok(
        dir,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            "root/root.key",
            "--out",
            "trust.signed",
        ],
    );
}

/// Waits for `orin-1`'s retained status on the broker at `port` to say online (the agent is
/// up and subscribed).
pub fn wait_online(port: u16) {
    let t0 = std::time::Instant::now();
    loop {
        let o = Command::new("/usr/bin/mosquitto_sub")
            .args([
                "-p",
                &port.to_string(),
                "-t",
                "aegis/v1/orin-1/status",
                "-C",
                "1",
                "-W",
                "2",
            ])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("\"online\"") {
            // Subscriptions go out right after the status.
            std::thread::sleep(std::time::Duration::from_millis(300));
            return;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(60),
            "agent never came online"
        );
    }
}

/// `n` simulated devices in group `site-a` (`aegis sim-devices provision` into `DIR/fleet`,
/// trusting what [`gateway_and_device`] made in `dir`), and a pipeline for them
/// (`stages`: a YAML list) whose source is a file under the fleet's directory, which their
/// policy allows.
pub fn sim_fleet(dir: &Path, n: usize) -> impl Fn(&str) -> String + use<> {
    aegis_ok(
        dir,
        &[
            "sim-devices",
            "provision",
            "--dir",
            "fleet",
            "--devices",
            &n.to_string(),
            "--group",
            "site-a",
            "--trust",
            "trust.signed",
            "--root",
            "root/root.pub",
        ],
    );
    let fleet = dir.join("fleet");
    move |stages: &str| {
        format!(
            "  sources: [{{ id: cam0, url: \"file://{}/clip.mp4\" }}]\n  stages: {stages}\n  sinks: [{{ kind: discard }}]",
            fleet.display()
        )
    }
}

/// `aegis sim-devices run` for `DIR/fleet` against the broker on `port`, every device
/// failing workflow `fail` (an id); its output in `DIR/sim.out`.
pub fn run_sim_fleet(dir: &Path, port: u16, fail: &str) -> std::process::Child {
    Command::new(aegis_bin())
        .args(["sim-devices", "run", "--dir", "fleet", "--broker"])
        .arg(format!("127.0.0.1:{port}"))
        .args(["--fail", fail])
        .current_dir(dir)
        .stdout(std::fs::File::create(dir.join("sim.out")).expect("sim.out"))
        .spawn()
        .expect("start aegis sim-devices run")
}

/// One HTTP/1.0 exchange with the agent on loopback `port`: status, head (as sent), body
/// bytes; the error when it does not answer (not listening yet).
pub fn http_exchange(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    s.write_all(&bytes)?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(buf.len());
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf.get(split + 4..).unwrap_or_default().to_vec();
    Ok((status, head, body))
}

/// Logs in to the web page on loopback `port` (`POST /login`): the session cookie
/// (`aegis_session=…`) to send with later requests.
pub fn login_cookie(port: u16, user: &str, password: &str) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).into(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let form = format!("user={}&password={}", enc(user), enc(password));
    let (code, head, _) = http_exchange(
        port,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    )
    .expect("the web page answers");
    assert_eq!(code, 303, "login as {user}: {head}");
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("set-cookie").then(|| v.trim())
        })
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("login as {user} set no cookie: {head}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_from_parallel_writers_land_as_whole_lines_naming_the_test() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skips.log");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let log = log.clone();
                std::thread::Builder::new()
                    .name(format!("gated_test_{i}"))
                    .spawn(move || {
                        for _ in 0..50 {
                            append_skip(&log, &skip_line(&format!("tool {i} not installed")));
                        }
                    })
                    .unwrap()
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 400, "{text}");
        for i in 0..8 {
            let want = format!(" gated_test_{i}: tool {i} not installed");
            let n = text.lines().filter(|l| l.ends_with(&want)).count();
            assert_eq!(n, 50, "lines of gated_test_{i} in {text}");
        }
    }

    #[test]
    fn a_skip_log_that_cannot_be_written_fails_the_test() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("no-such-dir").join("skips.log");
        let r = std::panic::catch_unwind(|| append_skip(&log, "x: y"));
        assert!(r.is_err(), "an unwritable skip log must not be ignored");
    }
}
