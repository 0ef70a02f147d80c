//! `chimera serve` for the tests: the real binary (through the cross-test emulator when one
//! is set) set up with the real CLI in a temporary directory (root, issuer and device keys,
//! trust metadata, enrolment, tokens), started on a free loopback port, called over HTTP, its
//! server-sent events read on a thread. On either state backend ([`Backend`]): a SQLite file,
//! or a database of the test binary's PostgreSQL server reached as production reaches it
//! (TCP, TLS verified against a CA file, a password from a file).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{have_postgres, postgres};

/// The state backend a test runs the service on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs `test` on SQLite, then on PostgreSQL (where it is not installed, a skip is recorded
/// for `suite`, and under CI that fails).
pub fn on_each_backend(suite: &str, test: impl Fn(Backend)) {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        if backend == Backend::Postgres && !have_postgres(suite) {
            continue;
        }
        eprintln!("--- on {backend:?}");
        test(backend);
    }
}

impl Backend {
    /// The `database:` lines of a config in `dir`: a SQLite file `file` there, or a fresh
    /// PostgreSQL database (TLS against the server's CA, the password in a file there).
    pub fn database(self, dir: &Path, file: &str) -> String {
        match self {
            Backend::Sqlite => format!("database: {file}\n"),
            Backend::Postgres => {
                let pg = postgres();
                std::fs::write(dir.join("pg-password"), format!("{}\n", pg.password())).unwrap();
                format!(
                    "database:\n  url: {}\n  password_file: pg-password\n  ca_file: {}\n",
                    pg.url(&pg.create_database()),
                    pg.ca_file().display()
                )
            }
        }
    }
}

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

pub fn chimera(dir: &Path, args: &[&str]) -> Output {
    command(dir, args).output().expect("run chimera")
}

/// In `dir`: an offline root (`root/`), issuer `gw-1` (`gw.key`) allowed `devices` and
/// `groups` (comma-separated), and the root-signed trust metadata `trust.signed.json`.
pub fn root_and_issuer(dir: &Path, devices: &str, groups: &str) {
    ok(dir, &["root", "init", "--dir", "root"]);
    ok(dir, &["keygen", "--out", "gw"]);
    ok(
        dir,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "gw-1",
            "--key",
            "gw.pub",
            "--devices",
            devices,
            "--groups",
            groups,
        ],
    );
    ok(
        dir,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            "root/root.key",
            "--out",
            "trust.signed.json",
        ],
    );
}

pub fn ok(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(
        o.status.success(),
        "chimera {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A gateway directory: trust (root key removed), an issuer key, two enrolled devices, a
/// config, one token per role.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub viewer: String,
    pub operator: String,
    pub admin: String,
    /// The config's `database:` lines.
    pub database: String,
}

/// The config, less its `database:` lines.
pub const CONFIG: &str = "listen: 127.0.0.1:0\n\
registry: devices.json\n\
state: state\n\
trust_metadata: trust.signed.json\n\
trust_roots: [root/root.pub]\n";

impl Gateway {
    /// On SQLite.
    pub fn new() -> Gateway {
        Gateway::on(Backend::Sqlite)
    }

    /// On `backend`.
    pub fn on(backend: Backend) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let database = backend.database(d, "state/chimera.db");
        root_and_issuer(d, "cam-1", "lobby");
        // The offline root stays offline: the service never gets it.
        std::fs::remove_file(d.join("root/root.key")).unwrap();
        for cam in ["cam-1", "cam-2"] {
            ok(d, &["keygen", "--out", cam]);
            ok(
                d,
                &["enroll", cam, &format!("{cam}.pub"), "--group", "lobby"],
            );
        }
        std::fs::write(d.join("serve.yaml"), format!("{database}{CONFIG}")).unwrap();
        let mut gw = Gateway {
            dir,
            viewer: String::new(),
            operator: String::new(),
            admin: String::new(),
            database,
        };
        gw.viewer = gw.token("viewer", "viewer", &[]);
        gw.operator = gw.token("operator", "operator", &[]);
        gw.admin = gw.token("admin", "admin", &[]);
        gw
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites `serve.yaml`: its database, [`CONFIG`] and `extra` (more keys).
    pub fn write_config(&self, extra: &str) {
        std::fs::write(
            self.path().join("serve.yaml"),
            format!("{}{CONFIG}{extra}", self.database),
        )
        .unwrap();
    }

    /// `chimera serve token create` with more arguments: the token.
    pub fn token(&self, role: &str, name: &str, more: &[&str]) -> String {
        let mut args = vec!["serve", "token", "create", "--role", role, "--name", name];
        args.extend_from_slice(more);
        ok(self.path(), &args).trim().to_string()
    }

    pub fn start(&self) -> Server {
        Server::start(self.path(), "serve.yaml")
    }
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
        Server::start_env(dir, config, &[])
    }

    /// [`Server::start`] with more environment variables (`SOFTHSM2_CONF`, say).
    pub fn start_env(dir: &Path, config: &str, env: &[(&str, &Path)]) -> Server {
        let mut s = Server::spawned(
            command(dir, &["serve", "--config", config])
                .envs(env.iter().copied())
                .stderr(Stdio::inherit()),
        );
        s.await_listening(None);
        s
    }

    /// [`Server::start`] with its stderr in the file `log`, for tests that read what it
    /// logged.
    pub fn start_logged(dir: &Path, config: &str, log: &Path) -> Server {
        let mut s = Server::spawned(
            command(dir, &["serve", "--config", config])
                .stderr(std::fs::File::create(log).expect("create the log file")),
        );
        s.await_listening(Some(log));
        s
    }

    /// Spawns `cmd` (a `chimera serve`) with stdout piped; [`Server::await_listening`]
    /// before calling it. Killed on drop, whatever happens in between.
    pub fn spawned(cmd: &mut Command) -> Server {
        let child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .expect("start chimera serve");
        Server {
            child,
            base: String::new(),
        }
    }

    /// Waits for the line saying where it listens; if it does not come, the panic quotes
    /// `stderr_log`, the file its stderr went to.
    pub fn await_listening(&mut self, stderr_log: Option<&Path>) {
        let mut line = String::new();
        BufReader::new(self.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let Some(base) = line.trim().strip_prefix("chimera serve: listening on ") else {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let err = stderr_log
                .map(|p| std::fs::read_to_string(p).unwrap_or_default())
                .unwrap_or_default();
            panic!("chimera serve did not start: {line:?} {err}")
        };
        self.base = base.to_string();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        self.sigterm();
        self.child.wait().unwrap()
    }

    /// SIGTERM, then the exit status if it exits within `limit` (a hang guard: None means
    /// it did not stop, and dropping the server kills it).
    pub fn terminate_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        self.sigterm();
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is passed.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
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
        let (status, _, text) = self.exchange(method, path, auth, body);
        (status, text)
    }

    /// [`Server::call`] with the answer's headers.
    pub fn exchange(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&str>,
    ) -> (u16, ureq::http::HeaderMap, String) {
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
        let headers = resp.headers().clone();
        if content_type.starts_with("text/event-stream") {
            return (status, headers, content_type);
        }
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        (status, headers, text)
    }

    /// `method path` with `Authorization: Bearer TOKEN`: status and body as JSON (null when
    /// not JSON).
    pub fn bearer(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let (status, text) = self.call(method, path, Some(&format!("Bearer {token}")), body);
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
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

/// `value` (an object, or an array of them) has exactly the properties the served OpenAPI
/// document gives schema `name`, with every required one present.
pub fn assert_shape(s: &Server, name: &str, value: &Value) {
    let (_, body) = s.call("GET", "/api/v1/openapi.json", None, None);
    let doc: Value = serde_json::from_str(&body).unwrap();
    let schema = &doc["components"]["schemas"][name];
    let mut documented: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    documented.sort();
    let objects = match value {
        Value::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    assert!(!objects.is_empty(), "no {name} to check");
    for o in objects {
        let mut keys: Vec<&String> = o.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(keys, documented, "{name}: {o}");
    }
}

pub fn role_rank(r: &str) -> u8 {
    match r {
        "viewer" => 0,
        "operator" => 1,
        "admin" => 2,
        other => panic!("unknown role {other:?}"),
    }
}
