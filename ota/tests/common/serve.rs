//! `chimera serve` for the tests: the real binary set up with the real CLI in a temporary
//! directory (root, issuer and device keys, trust metadata, enrolment, tokens), started on a
//! free loopback port and called over HTTP.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

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
}

pub const CONFIG: &str = "listen: 127.0.0.1:0\n\
database: state/chimera.db\n\
registry: devices.json\n\
state: state\n\
trust_metadata: trust.signed.json\n\
trust_roots: [root/root.pub]\n";

impl Gateway {
    pub fn new() -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ok(d, &["root", "init", "--dir", "root"]);
        ok(d, &["keygen", "--out", "gw"]);
        ok(
            d,
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
                "cam-1",
                "--groups",
                "lobby",
            ],
        );
        ok(
            d,
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
        // The offline root stays offline: the service never gets it.
        std::fs::remove_file(d.join("root/root.key")).unwrap();
        for cam in ["cam-1", "cam-2"] {
            ok(d, &["keygen", "--out", cam]);
            ok(
                d,
                &["enroll", cam, &format!("{cam}.pub"), "--group", "lobby"],
            );
        }
        std::fs::write(d.join("serve.yaml"), CONFIG).unwrap();
        let mut gw = Gateway {
            dir,
            viewer: String::new(),
            operator: String::new(),
            admin: String::new(),
        };
        gw.viewer = gw.token("viewer", "viewer", &[]);
        gw.operator = gw.token("operator", "operator", &[]);
        gw.admin = gw.token("admin", "admin", &[]);
        gw
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Rewrites `serve.yaml`: [`CONFIG`] and `extra` (more keys).
    pub fn write_config(&self, extra: &str) {
        std::fs::write(self.path().join("serve.yaml"), format!("{CONFIG}{extra}")).unwrap();
    }

    /// `chimera serve token create` with more arguments: the token.
    pub fn token(&self, role: &str, name: &str, more: &[&str]) -> String {
        let mut args = vec!["serve", "token", "create", "--role", role, "--name", name];
        args.extend_from_slice(more);
        ok(self.path(), &args).trim().to_string()
    }

    pub fn start(&self) -> Server {
        let mut child = command(self.path(), &["serve", "--config", "serve.yaml"])
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
    /// SIGTERM, then the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        // SAFETY: kill(2) on our own child's pid; no memory is passed.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
        self.child.wait().unwrap()
    }

    /// `method path` with an optional `Authorization` value and JSON body: status and body.
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
        let text = resp
            .body_mut()
            .with_config()
            .limit(16 * 1024 * 1024)
            .read_to_string()
            .unwrap_or_default();
        (status, text)
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

    pub fn get(&self, path: &str, token: &str) -> Value {
        let (status, body) = self.call("GET", path, Some(&format!("Bearer {token}")), None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
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
