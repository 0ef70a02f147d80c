//! `chimera serve` as a real process for the gateway's tests: the binary (through the
//! cross-test emulator when one is set), started on a free loopback port, called over HTTP,
//! its server-sent events read on a thread.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// `chimera ARGS` in `dir`.
pub fn command(dir: &Path, args: &[&str]) -> Command {
    let exe = env!("CARGO_BIN_EXE_chimera");
    // Under tools/cross-test.sh the binary is built for the Jetson (aarch64): it runs
    // through the same emulator as this test (AEGIS_CROSS_RUNNER).
    let runner = std::env::var("AEGIS_CROSS_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut cmd = match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    cmd.current_dir(dir).args(args);
    cmd
}

/// A running `chimera serve`, stopped on drop.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `chimera serve --config CONFIG` in `dir`; returns once it listens.
    pub fn start(dir: &Path, config: &str) -> Server {
        let mut child = command(dir, &["serve", "--config", config])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chimera serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("chimera serve: listening on ")
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!("chimera serve did not start: {line:?}")
            })
            .to_string();
        Server { child, base }
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is passed.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.child.wait().unwrap()
    }

    /// `method path` with an optional `Authorization` value and JSON body: status and body.
    /// An event stream's body is not read (it never ends): its content type is returned.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        let mut req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        if body.is_some() {
            req = req.header("Content-Type", "application/json");
        }
        let req = req.body(body.unwrap_or("").to_string()).unwrap();
        let mut resp = agent.run(req).expect("HTTP exchange");
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if content_type.starts_with("text/event-stream") {
            return (status, content_type);
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        (status, text)
    }

    /// GET `path` as `token`: 200 and its JSON.
    pub fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(&format!("Bearer {token}")), None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// POST `body` to `path` as `token`: status and JSON (or the text when not JSON).
    pub fn post(&self, path: &str, token: &str, body: &Value) -> (u16, Value) {
        let (status, text) = self.call(
            "POST",
            path,
            Some(&format!("Bearer {token}")),
            Some(&body.to_string()),
        );
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Reads `GET /api/v1/events` on a thread from now on: `(event, data)` pairs as they
    /// come. Returns once the stream is open (events after that are all seen).
    pub fn events(&self, token: &str) -> Arc<Mutex<Vec<(String, Value)>>> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let agent: ureq::Agent = ureq::Agent::config_builder().build().into();
        let resp = agent
            .get(format!("{}/api/v1/events", self.base))
            .header("Authorization", format!("Bearer {token}"))
            .call()
            .expect("open the event stream");
        let out = seen.clone();
        std::thread::spawn(move || {
            let reader = BufReader::new(resp.into_body().into_reader());
            let mut event = String::new();
            for line in reader.lines() {
                let Ok(line) = line else { return };
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    let data = serde_json::from_str(d).unwrap_or(Value::Null);
                    out.lock().unwrap().push((std::mem::take(&mut event), data));
                }
            }
        });
        seen
    }
}

/// Polls `f` until it gives something (every 50 ms). The limit is a hang guard, not a
/// speed check: it is far above what any of this takes.
pub fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never happened: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
