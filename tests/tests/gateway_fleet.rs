//! The gateway at fleet scale: `chimera serve` (SQLite, one replica) rolls signed workflows
//! out to simulated devices that answer through the agent's own fleet link and workflow
//! checks (`aegis sim-devices`), over one mosquitto. Every device must end on the new
//! workflow with a receipt the service verified with that device's enrolled key; a workflow
//! that fails on every device halts at its canary step and the canaries are rolled back.
//!
//! Devices: `AEGIS_FLEET_DEVICES` (default 300; `just bench-rollout` runs 1,000 with release
//! builds). The timings printed are the benchmark's — publish → last verified receipt, for a
//! rollout in canary steps and, as the baseline, for `chimera publish` to the group topic (one
//! retained message, no steps, no judging) — nothing here asserts on time.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;
use serde_json::{Value, json};

fn devices() -> usize {
    std::env::var("AEGIS_FLEET_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The service's HTTP API as one token.
struct Api {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = self.agent.run(req).expect("HTTP exchange");
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    fn get(&self, path: &str) -> Value {
        let (st, v) = self.call("GET", path, None);
        assert_eq!(st, 200, "GET {path}: {v}");
        v
    }

    fn post(&self, path: &str, body: Value) -> Value {
        let (st, v) = self.call("POST", path, Some(&body));
        assert!([200, 201].contains(&st), "POST {path}: {st} {v}");
        v
    }

    /// Uploads a signed workflow file: its digest.
    fn upload(&self, d: &Path, signed: &str) -> String {
        let text = std::fs::read_to_string(d.join(signed)).unwrap();
        let v = self.post("/api/v1/workflows", json!({ "document": text }));
        v["digest"].as_str().unwrap().to_string()
    }
}

/// Polls `f` every 100 ms until it gives something; the limit is a hang guard only.
fn wait<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `draft_workflow` for group `site-a` (every simulated device), signed with `gw.key`: the
/// signed file's name.
fn signed(d: &Path, name: &str, seq: u64, pipeline: &str) -> (String, String) {
    let draft = draft_workflow(d, name, seq, pipeline, "[]");
    chimera_ok(d, &["sign", draft.to_str().unwrap(), "--key", "gw.key"]);
    let text = std::fs::read_to_string(&draft).unwrap();
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("id: "))
        .unwrap()
        .trim()
        .to_string();
    (format!("{name}.signed.maml.md"), id)
}

/// Per step: devices, first and last publish, last answer (ms after the first publish).
fn timeline(r: &Value) -> String {
    let t = r["targets"].as_array().unwrap();
    let at = |x: &Value, k: &str| x[k].as_i64();
    let start = t
        .iter()
        .filter_map(|x| at(x, "published_at"))
        .min()
        .unwrap_or(0);
    let mut out = Vec::new();
    for step in 0.. {
        let of: Vec<&Value> = t.iter().filter(|x| x["step"] == step).collect();
        if of.is_empty() {
            break;
        }
        let span = |k: &str| {
            let v: Vec<i64> = of.iter().filter_map(|x| at(x, k)).collect();
            (
                v.iter().min().map_or(-1, |m| m - start),
                v.iter().max().map_or(-1, |m| m - start),
            )
        };
        let (p0, p1) = span("published_at");
        let (_, a1) = span("answered_at");
        out.push(format!(
            "step {step}: {} devices, published {p0}..{p1} ms, last answer {a1} ms",
            of.len()
        ));
    }
    out.join("\n")
}

/// Devices with a verified receipt with `verdict` for `digest` (the newest receipts, up to
/// the API's 1,000 per page, are enough: each phase's answers are the newest).
fn verified(api: &Api, digest: &str, verdict: &str) -> usize {
    let receipts = api.get("/api/v1/receipts?limit=1000");
    let devices: std::collections::BTreeSet<&str> = receipts
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verified"] == true && x["digest"] == digest && x["verdict"] == verdict)
        .filter_map(|x| x["device"].as_str())
        .collect();
    devices.len()
}

fn targets_in(r: &Value, state: &str) -> usize {
    r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] == state)
        .count()
}

#[test]
fn a_rollout_reaches_every_simulated_device_and_a_failing_canary_is_rolled_back() {
    if !have_mosquitto() {
        return;
    }
    let n = devices();
    // On tmpfs where there is one: a thousand devices' state files are fsynced.
    let dir = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    let pipeline = sim_fleet(d, n);
    let (baseline, _) = signed(d, "baseline", 1, &pipeline("[]"));
    let (good, _) = signed(d, "good", 2, &pipeline("[{ kind: timestamp_overlay }]"));
    let (bad, bad_id) = signed(d, "bad", 3, &pipeline("[]"));
    // The good pipeline issued again, after the bad one: what the canaries roll back to.
    let (rollback, _) = signed(d, "rollback", 4, &pipeline("[{ kind: timestamp_overlay }]"));

    let broker = Broker::start(&d.join("broker"));
    std::fs::write(
        d.join("serve.yaml"),
        format!(
            "listen: 127.0.0.1:0\ndatabase: state/chimera.db\nregistry: fleet/devices.json\n\
             state: state\ntrust_metadata: trust.signed\ntrust_roots: [root/root.pub]\n\
             broker: mqtt://127.0.0.1:{}\nrollouts: {{ tick_ms: 200, lease_s: 3 }}\n",
            broker.port
        ),
    )
    .unwrap();
    let token = chimera_ok(
        d,
        &[
            "serve",
            "token",
            "create",
            "--role",
            "operator",
            "--name",
            "ci",
            "--config",
            "serve.yaml",
        ],
    )
    .trim()
    .to_string();
    let t_fleet = Instant::now();
    let _sim = Proc(run_sim_fleet(d, broker.port, &bad_id));
    let mut serve = Command::new(chimera_bin())
        .args(["serve", "--config", "serve.yaml"])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.join("serve.log")).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _serve = Proc(serve);
    let base = line
        .trim()
        .strip_prefix("chimera serve: listening on ")
        .unwrap_or_else(|| panic!("chimera serve did not start: {line:?}"))
        .to_string();
    let api = Api {
        base,
        token,
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into(),
    };
    // Every device online, as the service sees it (their retained status, through the ingest).
    wait(
        "every simulated device online at the service",
        Duration::from_secs(180),
        || {
            let list = api.get("/api/v1/devices");
            let online = list
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["status"]["online"] == true)
                .count();
            (online == n).then_some(())
        },
    );
    eprintln!(
        "{n} devices online at the service after {:.1} s",
        t_fleet.elapsed().as_secs_f64()
    );

    // 0. Baseline: the CLI's one retained group message, until every device's receipt is
    //    verified at the service.
    let base_digest = api.upload(d, &baseline);
    let t0 = Instant::now();
    chimera_ok(
        d,
        &[
            "publish",
            &baseline,
            "--to",
            "site-a",
            "--broker",
            &format!("mqtt://127.0.0.1:{}", broker.port),
        ],
    );
    wait(
        "every device's baseline receipt verified",
        Duration::from_secs(300),
        || (verified(&api, &base_digest, "applied") == n).then_some(()),
    );
    let base = t0.elapsed();
    eprintln!(
        "baseline, chimera publish to the group: publish → last verified receipt {:.2} s",
        base.as_secs_f64()
    );

    // 1. The good workflow to everyone, in canary steps.
    let digest = api.upload(d, &good);
    let t0 = Instant::now();
    let created = api.post(
        "/api/v1/rollouts",
        json!({ "workflow": digest, "group": "site-a", "steps": [1, 10, 100], "answer_timeout_s": 60 }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let r = wait("the rollout completed", Duration::from_secs(300), || {
        let r = api.get(&format!("/api/v1/rollouts/{id}"));
        assert!(
            !["halted", "rolled_back", "aborted"].contains(&r["state"].as_str().unwrap_or("")),
            "{}",
            r["reason"]
        );
        (r["state"] == "completed").then_some(r)
    });
    let elapsed = t0.elapsed();
    assert_eq!(targets_in(&r, "applied"), n, "every device applied");
    // Each answer is a receipt the service verified with the device's enrolled key.
    assert_eq!(
        verified(&api, &digest, "applied"),
        n,
        "verified receipts for {digest}"
    );
    eprintln!(
        "rollout to {n} devices (steps 1/10/100 %): create → completed, every receipt verified, {:.2} s ({:.2}x the baseline)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / base.as_secs_f64()
    );
    eprintln!("{}", timeline(&r));

    // 2. A workflow that fails its health check on every device: the 1 % canaries answer
    //    rolled_back, the rollout halts and rolls them back; nobody else gets it.
    let bad_digest = api.upload(d, &bad);
    let rollback_digest = api.upload(d, &rollback);
    let created = api.post(
        "/api/v1/rollouts",
        json!({
            "workflow": bad_digest, "group": "site-a", "steps": [1, 10, 100],
            "budget": { "max_negative": 0 }, "answer_timeout_s": 60, "rollback": rollback_digest,
        }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let r = wait(
        "the failing rollout rolled back",
        Duration::from_secs(120),
        || {
            let r = api.get(&format!("/api/v1/rollouts/{id}"));
            (r["state"] == "rolled_back").then_some(r)
        },
    );
    let canaries: Vec<&Value> = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["state"] != "pending")
        .collect();
    assert_eq!(
        canaries.len(),
        n.div_ceil(100),
        "only the 1 % step was published: {r}"
    );
    assert_eq!(targets_in(&r, "pending"), n - canaries.len());
    for c in &canaries {
        assert_eq!(c["state"], "negative", "{c}");
    }
    wait(
        "every canary applied the rollback",
        Duration::from_secs(60),
        || {
            let r = api.get(&format!("/api/v1/rollouts/{id}"));
            let done = r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["rollback_verdict"] == "applied")
                .count();
            (done == canaries.len()).then_some(())
        },
    );
}
