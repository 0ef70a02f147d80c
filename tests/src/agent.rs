//! A running `aegis run --realtime` process for the end-to-end tests: started with a
//! config, its log kept in a file, waited on with a deadline that prints the log, stopped
//! with SIGTERM or killed with SIGKILL.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The agent process.
pub struct RunningAgent {
    child: Child,
    /// Its stderr (the log).
    pub log: PathBuf,
}

impl RunningAgent {
    /// Starts `aegis run --realtime --config cfg` in `dir` and waits until its web server
    /// answers `/healthz` on loopback `port`.
    pub fn start(dir: &Path, cfg: &Path, port: u16) -> RunningAgent {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let log = dir.join(format!("agent-{stamp}.log"));
        let child = Command::new(crate::aegis_bin())
            .args(["run", "--realtime", "--config", &cfg.to_string_lossy()])
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("agent log file"))
            .spawn()
            .expect("start aegis run");
        let a = RunningAgent { child, log };
        a.wait("the web page", || {
            crate::http_exchange(port, "GET", "/healthz", &[], b"").is_ok()
        });
        a
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (60 s at most, then fails printing the log) until `ok`.
    pub fn wait(&self, what: &str, mut ok: impl FnMut() -> bool) {
        let t0 = Instant::now();
        while !ok() {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "gave up waiting for {what}; agent log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a [`recorder_config`] adds to its skeleton.
#[derive(Debug, Default, Clone, Copy)]
pub struct ConfigExtra<'a> {
    /// Items appended to `pipeline.sinks` (each line indented four spaces, `- …`).
    pub sinks: &'a str,
    /// Keys under `pipeline:` after the sinks (indented two spaces).
    pub pipeline: &'a str,
    /// Keys at the root.
    pub root: &'a str,
}

/// Writes `dir/aegis.yaml`: device `id`, one source `cam0` looping `clip`, the timestamp
/// overlay, a recorder into `dir/rec` (`segment_seconds`, GOP 15, one encoder thread), the
/// store in `dir`, the web server on loopback `port`, and `extra`.
pub fn recorder_config(
    dir: &Path,
    id: &str,
    clip: &Path,
    port: u16,
    segment_seconds: u32,
    extra: ConfigExtra<'_>,
) -> PathBuf {
    let cfg = dir.join("aegis.yaml");
    let text = format!(
        r#"
device: {{ id: {id} }}
pipeline:
  sources:
    - {{ id: cam0, url: "file://{clip}", loop: true }}
  stages: [{{ kind: timestamp_overlay }}]
  sinks:
    - kind: record
      dir: {rec}
      segment_seconds: {segment_seconds}
      encoder: {{ gop_frames: 15, threads: 1 }}
{sinks}
{pipeline}
store: {{ path: {db} }}
web: {{ listen: "127.0.0.1:{port}" }}
{root}
"#,
        clip = clip.display(),
        rec = dir.join("rec").display(),
        db = dir.join("aegis.db").display(),
        sinks = extra.sinks,
        pipeline = extra.pipeline,
        root = extra.root,
    );
    std::fs::write(&cfg, text).expect("write aegis.yaml");
    cfg
}
