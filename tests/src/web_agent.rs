//! A running `aegis run` whose technician web page the browser tests drive: a short looping
//! clip at low resolution (paced in real time, so it costs little CPU), the web page on a
//! free loopback port (plain HTTP, as loopback listeners serve), one account of each role
//! created with `aegis user add` as a technician would, and events in the store.
//!
//! [`AgentSetup`] says what the config holds beyond that (stages, sinks, extra sections), so
//! a test that needs an overlay, a preview sink or workflows says so there; the agent is
//! stopped when the [`WebAgent`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A web page account the fixture creates.
#[derive(Debug, Clone, Copy)]
pub struct Account {
    /// Its login name.
    pub name: &'static str,
    /// Its role as `aegis user add --role` takes it.
    pub role: &'static str,
    /// Its password.
    pub password: &'static str,
}

/// The admin account.
pub const ADMIN: Account = Account {
    name: "ada",
    role: "admin",
    password: "admin-horse-battery",
};
/// The technician account.
pub const TECHNICIAN: Account = Account {
    name: "tess",
    role: "technician",
    password: "tech-horse-battery",
};
/// The viewer account.
pub const VIEWER: Account = Account {
    name: "vic",
    role: "viewer",
    password: "viewer-horse-battery",
};

/// The looping stream every fixture runs.
pub const STREAM: &str = "cam0";
/// The stream that cannot be opened, with [`AgentSetup::failing_source`].
pub const FAILING_STREAM: &str = "gone";
/// The kind of the events [`AgentSetup::seed_events`] writes (`aegis db stress`'s).
pub const SEEDED_KIND: &str = "stress";

/// What the fixture's config holds beyond the looping stream, the store and the web page.
#[derive(Debug, Clone)]
pub struct AgentSetup {
    /// `device.id`.
    pub device: String,
    /// `pipeline.stages`, each a YAML flow mapping (`{ kind: timestamp_overlay }`).
    pub stages: Vec<String>,
    /// `pipeline.sinks`, each a YAML flow mapping; none: `{ kind: discard }`.
    pub sinks: Vec<String>,
    /// Also run a source whose file does not exist ([`FAILING_STREAM`]): a failed tile on the
    /// cameras page and a `source_failed` event.
    pub failing_source: bool,
    /// Write at least this many events of kind [`SEEDED_KIND`] into the store before the
    /// agent starts (enough for more than one page of events).
    pub seed_events: usize,
    /// Top-level YAML sections appended to the config as they are (`fleet: {…}`).
    pub extra: String,
    /// The clip's size and length.
    pub clip: (u32, u32, f64),
    /// Play this file instead of making a clip.
    pub clip_file: Option<PathBuf>,
    /// Keep event clips: a record sink (when `sinks` names none), `pipeline.evidence` with
    /// a 1 s pre- and post-roll, and device keys made with `aegis provision`.
    pub evidence: bool,
    /// More `pipeline.sources`, each a YAML flow mapping (`{ id: pub0, url: "whip:", … }`).
    pub extra_sources: Vec<String>,
}

impl Default for AgentSetup {
    fn default() -> Self {
        AgentSetup {
            device: "browser-test".into(),
            stages: Vec::new(),
            sinks: Vec::new(),
            failing_source: false,
            seed_events: 0,
            extra: String::new(),
            clip: (320, 240, 2.0),
            clip_file: None,
            evidence: false,
            extra_sources: Vec::new(),
        }
    }
}

/// A running agent with its web page (see the module docs); stopped on drop.
pub struct WebAgent {
    dir: tempfile::TempDir,
    child: Option<Child>,
    addr: String,
    config: PathBuf,
    log: Arc<Mutex<String>>,
    seeded: usize,
}

impl WebAgent {
    /// Writes the config, creates the accounts and events, starts `aegis run --realtime`
    /// and waits until it serves. Panics (the test fails) naming the step that failed.
    pub fn start(setup: &AgentSetup) -> WebAgent {
        let dir = tempfile::tempdir().expect("tempdir");
        let (w, h, secs) = setup.clip;
        let clip = match &setup.clip_file {
            Some(f) => f.clone(),
            None => crate::make_clip(dir.path(), "clip.mp4", w, h, secs),
        };
        let config = dir.path().join("aegis.yaml");
        std::fs::write(&config, config_text(dir.path(), &clip, setup)).expect("write config");
        if setup.evidence {
            let keys = dir.path().join("keys");
            crate::aegis_ok(
                dir.path(),
                &["provision", "--dir", keys.to_str().expect("utf-8")],
            );
        }
        let cfg = config.to_str().expect("utf-8 path");
        for a in [ADMIN, TECHNICIAN, VIEWER] {
            add_account(dir.path(), cfg, a);
        }
        let db = dir.path().join("aegis.db");
        let mut seeded = 0;
        while seeded < setup.seed_events {
            seeded += seed(dir.path(), &db);
        }
        let mut child = Command::new(crate::aegis_bin())
            .args(["run", "--realtime", "--config", cfg])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn aegis run");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                // "serving http://ADDR/metrics and …": the address it bound (port 0 = free).
                if let Some(rest) = line.strip_prefix("serving http://") {
                    let _ = tx.send(rest.split('/').next().unwrap_or_default().to_string());
                }
                let mut l = sink.lock().unwrap_or_else(|p| p.into_inner());
                l.push_str(&line);
                l.push('\n');
            }
        });
        let mut agent = WebAgent {
            dir,
            child: Some(child),
            addr: String::new(),
            config,
            log,
            seeded,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => agent.addr = addr,
            Err(_) => panic!(
                "the agent did not announce its web address; its log:\n{}",
                agent.log()
            ),
        }
        agent
    }

    /// `http://ADDR` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ADDR` (`127.0.0.1:PORT`), for [`crate::http_get`].
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The agent's folder (config, clip, store, accounts).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file it runs with.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// How many events of kind [`SEEDED_KIND`] were written before it started.
    pub fn seeded_events(&self) -> usize {
        self.seeded
    }

    /// What it logged on stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops it (SIGTERM, then SIGKILL after 20 s) and returns how it exited.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for WebAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The config: the looping clip (and maybe the failing source), `setup`'s stages, sinks
/// and sections, the store and the web page on a free loopback port.
fn config_text(dir: &Path, clip: &Path, setup: &AgentSetup) -> String {
    let mut sources = format!(
        "    - {{ id: {STREAM}, url: \"file://{}\", loop: true }}\n",
        clip.display()
    );
    if setup.failing_source {
        sources.push_str(&format!(
            "    - {{ id: {FAILING_STREAM}, url: \"file://{}\" }}\n",
            dir.join("no-such-clip.mp4").display()
        ));
    }
    for s in &setup.extra_sources {
        sources.push_str(&format!("    - {s}\n"));
    }
    let list = |items: &[String], default: &str| {
        if items.is_empty() {
            format!("[{default}]")
        } else {
            format!("[{}]", items.join(", "))
        }
    };
    let (sinks, evidence) = if setup.evidence {
        let record = format!(
            "{{ kind: record, dir: {}, encoder: {{ gop_frames: 15, threads: 1 }} }}",
            dir.join("rec").display()
        );
        (
            list(&setup.sinks, &record),
            format!(
                "  evidence: {{ dir: {}, pre_roll_seconds: 1, post_roll_seconds: 1 }}\n\
                 workflows: {{ keys_dir: {} }}\n",
                dir.join("evidence").display(),
                dir.join("keys").display()
            ),
        )
    } else {
        (list(&setup.sinks, "{ kind: discard }"), String::new())
    };
    format!(
        "device: {{ id: {device} }}\npipeline:\n  sources:\n{sources}  stages: {stages}\n  \
         sinks: {sinks}\n{evidence}store: {{ path: {db} }}\nweb: {{ listen: \"127.0.0.1:0\" }}\n{extra}\n",
        device = setup.device,
        stages = list(&setup.stages, ""),
        db = dir.join("aegis.db").display(),
        extra = setup.extra,
    )
}

/// `aegis user add` for `a`, its password on standard input.
fn add_account(dir: &Path, cfg: &str, a: Account) {
    let mut child = Command::new(crate::aegis_bin())
        .args(["user", "add", a.name, "--role", a.role, "--config", cfg])
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aegis user add");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(format!("{}\n", a.password).as_bytes())
        .expect("write the password");
    let o = child.wait_with_output().expect("aegis user add");
    assert!(
        o.status.success(),
        "aegis user add {}: {}",
        a.name,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Writes a burst of events with `aegis db stress` (a fraction of a second of it); how many.
fn seed(dir: &Path, db: &Path) -> usize {
    let out = crate::aegis_ok(
        dir,
        &[
            "db",
            "stress",
            "--db",
            db.to_str().expect("utf-8 path"),
            "--seconds",
            "0.2",
        ],
    );
    out.lines()
        .find_map(|l| l.strip_prefix("wrote "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("aegis db stress said no count:\n{out}"))
}
