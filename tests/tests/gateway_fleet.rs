//! The gateway at fleet scale: `chimera serve` (SQLite, one replica) rolls signed workflows
//! out to simulated devices that answer through the agent's own fleet link and workflow
//! checks (`aegis sim-devices`), over one mosquitto. Every device must end on the new
//! workflow with a receipt the service verified with that device's enrolled key; a workflow
//! that fails on every device halts at its canary step and the canaries are rolled back.
//!
//! The same on PostgreSQL with two replicas: receipts/s with one replica and with two, a
//! failing canary halted and rolled back through the two, and one replica killed (SIGKILL)
//! mid-rollout: the other takes the rollout over when the claim's lease runs out and
//! finishes it (devices whose receipts died with the killed replica are asked again).
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

// The gateway's PostgreSQL test server (ota's test helpers, shared by path).
#[path = "../../ota/tests/common/pki.rs"]
mod pki;
#[path = "../../ota/tests/common/postgres.rs"]
mod postgres;
#[path = "../../ota/tests/common/tools.rs"]
mod tools;
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
    /// How long each call took (ms), for the API's percentiles under load.
    latencies: std::cell::RefCell<Vec<f64>>,
}

impl Api {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.try_call(method, path, body).expect("HTTP exchange")
    }

    /// `call`, None when the service does not answer at all (a replica that was killed).
    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Option<(u16, Value)> {
        let t0 = Instant::now();
        let req = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("Authorization", format!("Bearer {}", self.token))
            .header("Content-Type", "application/json")
            .body(body.map(|b| b.to_string()).unwrap_or_default())
            .unwrap();
        let mut resp = self.agent.run(req).ok()?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        self.latencies
            .borrow_mut()
            .push(t0.elapsed().as_secs_f64() * 1e3);
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
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

    /// p50 and p99 of the calls since the last time this was asked (ms).
    fn percentiles(&self) -> (f64, f64) {
        let mut v = std::mem::take(&mut *self.latencies.borrow_mut());
        v.sort_by(f64::total_cmp);
        let at = |p: f64| {
            v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
        };
        (at(0.5).unwrap_or(f64::NAN), at(0.99).unwrap_or(f64::NAN))
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

/// `chimera serve --config CONFIG` in `d`, once it listens, and its API as `token`.
fn serve(d: &Path, config: &str, token: String) -> (Proc, Api) {
    let log = d.join(format!("{config}.log"));
    let mut serve = Command::new(chimera_bin())
        .args(["serve", "--config", config])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let proc = Proc(serve);
    let base = line
        .trim()
        .strip_prefix("chimera serve: listening on ")
        .unwrap_or_else(|| {
            panic!(
                "chimera serve did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })
        .to_string();
    let api = Api {
        base,
        token,
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into(),
        latencies: Default::default(),
    };
    (proc, api)
}

/// Every device online, as the service sees it (their retained status, through the ingest).
fn all_online(api: &Api, n: usize) {
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
}

/// A directory for the fleet: on tmpfs where there is one (a thousand devices' state files
/// are fsynced).
fn fleet_dir() -> tempfile::TempDir {
    if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm").unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// `serve.yaml`'s keys but the database's, for the broker on `port`.
fn config_common(port: u16) -> String {
    format!(
        "listen: 127.0.0.1:0\nregistry: fleet/devices.json\nstate: state\n\
         trust_metadata: trust.signed\ntrust_roots: [root/root.pub]\n\
         broker: mqtt://127.0.0.1:{port}\nrollouts: {{ tick_ms: 200, lease_s: 3 }}\n"
    )
}

fn operator_token(d: &Path, config: &str) -> String {
    chimera_ok(
        d,
        &[
            "serve", "token", "create", "--role", "operator", "--name", "ci", "--config", config,
        ],
    )
    .trim()
    .to_string()
}

/// Rolls `digest` out to group `site-a` (1/10/100 %) and waits until it completed with every
/// device `applied`; `during` runs once the 10 % step was published. The rollout's record.
fn roll_out(apis: &[&Api], digest: &str, n: usize, during: impl FnMut(&Value)) -> Value {
    roll_out_answering_in(apis, digest, n, 60, during)
}

/// [`roll_out`] with devices' answers due `answer_timeout_s` after a send.
fn roll_out_answering_in(
    apis: &[&Api],
    digest: &str,
    n: usize,
    answer_timeout_s: u64,
    mut during: impl FnMut(&Value),
) -> Value {
    let api = apis[0];
    let created = api.post(
        "/api/v1/rollouts",
        json!({ "workflow": digest, "group": "site-a", "steps": [1, 10, 100],
                "answer_timeout_s": answer_timeout_s }),
    );
    let id = created["id"].as_str().unwrap().to_string();
    let mut called = false;
    let r = wait("the rollout completed", Duration::from_secs(300), || {
        // Through whichever replica answers (one may have been killed).
        let r = apis
            .iter()
            .find_map(|a| a.try_call("GET", &format!("/api/v1/rollouts/{id}"), None))
            .map(|(_, r)| r)
            .expect("a replica answers");
        assert!(
            !["halted", "rolled_back", "aborted"].contains(&r["state"].as_str().unwrap_or("")),
            "{}; targets not applied: {:?}",
            r["reason"],
            r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["state"] != "applied")
                .collect::<Vec<_>>()
        );
        if !called
            && r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["step"] == 1 && t["published_at"].is_i64())
        {
            called = true;
            during(&r);
        }
        (r["state"] == "completed").then_some(r)
    });
    assert_eq!(targets_in(&r, "applied"), n, "every device applied");
    let api = apis
        .iter()
        .find(|a| a.try_call("GET", "/healthz", None).is_some())
        .expect("a replica answers");
    assert_eq!(
        verified(api, digest, "applied"),
        n,
        "verified receipts for {digest}"
    );
    r
}

/// Receipts per second in the last step: its devices over publish → last answer.
fn last_step_rate(r: &Value) -> f64 {
    let t = r["targets"].as_array().unwrap();
    let last = t.iter().filter_map(|x| x["step"].as_u64()).max().unwrap();
    let of: Vec<&Value> = t.iter().filter(|x| x["step"] == last).collect();
    let p0 = of
        .iter()
        .filter_map(|x| x["published_at"].as_i64())
        .min()
        .unwrap();
    let a1 = of
        .iter()
        .filter_map(|x| x["answered_at"].as_i64())
        .max()
        .unwrap();
    of.len() as f64 / ((a1 - p0).max(1) as f64 / 1e3)
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
    let dir = fleet_dir();
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
        format!("{}database: state/chimera.db\n", config_common(broker.port)),
    )
    .unwrap();
    let token = operator_token(d, "serve.yaml");
    let t_fleet = Instant::now();
    let _sim = Proc(run_sim_fleet(d, broker.port, &bad_id));
    let (_serve, api) = serve(d, "serve.yaml", token);
    // Every device online, as the service sees it (their retained status, through the ingest).
    all_online(&api, n);
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
    api.percentiles();
    let t0 = Instant::now();
    // Each answer is a receipt the service verified with the device's enrolled key.
    let r = roll_out(&[&api], &digest, n, |_| {});
    let elapsed = t0.elapsed();
    let (p50, p99) = api.percentiles();
    eprintln!(
        "rollout to {n} devices (steps 1/10/100 %): create → completed, every receipt verified, {:.2} s ({:.2}x the baseline)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() / base.as_secs_f64()
    );
    eprintln!("{}", timeline(&r));
    eprintln!(
        "one SQLite replica: {:.0} receipts/s in the last step; API (GET rollout, every 100 ms) p50 {p50:.1} ms, p99 {p99:.1} ms",
        last_step_rate(&r)
    );

    // 2. A workflow that fails its health check on every device: the 1 % canaries answer
    //    rolled_back, the rollout halts and rolls them back; nobody else gets it.
    failing_canary_is_rolled_back(&api, d, &bad, &rollback, n);
}

/// Rolls out `bad` (it fails its health check on every device) with `rollback` as its
/// rollback document: the 1 % canaries answer rolled_back, the rollout halts and rolls them
/// back; nobody else gets it.
fn failing_canary_is_rolled_back(api: &Api, d: &Path, bad: &str, rollback: &str, n: usize) {
    let bad_digest = api.upload(d, bad);
    let rollback_digest = api.upload(d, rollback);
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
    // The budget allows no negative answer, so the first one halts the rollout: the other
    // canaries may not have answered yet (still `published`), but each is rolled back.
    assert!(
        canaries.iter().any(|c| c["state"] == "negative"),
        "halted without a negative answer: {r}"
    );
    for c in &canaries {
        assert!(
            c["state"] == "negative" || c["state"] == "published",
            "a canary neither answered negative nor is waiting: {c}"
        );
        assert!(!c["rollback_sent_at"].is_null(), "not rolled back: {c}");
    }
    // Every canary's own answer (rolled_back) still arrives and is recorded, and each then
    // applies the rollback document.
    let canary_ids: Vec<String> = canaries
        .iter()
        .map(|c| c["device"].as_str().unwrap().to_string())
        .collect();
    wait(
        "every canary answered negative and applied the rollback",
        Duration::from_secs(60),
        || {
            let r = api.get(&format!("/api/v1/rollouts/{id}"));
            let done = r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| canary_ids.iter().any(|c| t["device"] == c.as_str()))
                .filter(|t| t["state"] == "negative" && t["rollback_verdict"] == "applied")
                .count();
            (done == canary_ids.len()).then_some(())
        },
    );
}

/// Two replicas on one PostgreSQL database split the receipts; then the one holding a
/// rollout is killed mid-rollout and the other finishes it. Receipts the broker had handed
/// to the killed replica are lost with it (mosquitto does not give a shared subscription's
/// in-flight message to another member): the rollout engine asks those devices again
/// (`rollout::ASKS`) and they answer with the receipt they sent.
#[test]
fn two_replicas_on_postgresql_share_the_receipts_and_take_over_from_a_killed_one() {
    if !have_mosquitto() || !postgres::have_postgres("gateway_fleet") {
        return;
    }
    let n = devices();
    let dir = fleet_dir();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    let pipeline = sim_fleet(d, n);
    let (overlay, none) = ("[{ kind: timestamp_overlay }]", "[]");
    // Signed in the order the devices get them: a device refuses a document issued before
    // the newest it accepted (replay), and signing spans second boundaries under load.
    let mut docs: Vec<String> = [(1, overlay), (2, none)]
        .into_iter()
        .map(|(seq, stages)| signed(d, &format!("w{seq}"), seq, &pipeline(stages)).0)
        .collect();
    // Fails its health check on every device; the rollback re-issues w2's pipeline.
    let (bad, bad_id) = signed(d, "bad", 3, &pipeline(overlay));
    let (rollback, _) = signed(d, "rollback", 4, &pipeline(none));
    docs.push(signed(d, "w5", 5, &pipeline(overlay)).0);
    let broker = Broker::start(&d.join("broker"));
    let pg = postgres::postgres();
    let db = pg.create_database();
    std::fs::write(d.join("db.password"), pg.password()).unwrap();
    for replica in ["a", "b"] {
        std::fs::write(
            d.join(format!("serve-{replica}.yaml")),
            format!(
                "{}replica: gw-{replica}\ndatabase: {{ url: \"{}\", password_file: db.password, ca_file: {} }}\n",
                config_common(broker.port),
                pg.url(&db),
                pg.ca_file().display()
            ),
        )
        .unwrap();
    }
    let token = operator_token(d, "serve-a.yaml");
    let _sim = Proc(run_sim_fleet(d, broker.port, &bad_id));
    let (a, api_a) = serve(d, "serve-a.yaml", token.clone());
    all_online(&api_a, n);

    // One replica.
    let digest = api_a.upload(d, &docs[0]);
    let t0 = Instant::now();
    let r = roll_out(&[&api_a], &digest, n, |_| {});
    let one_s = t0.elapsed().as_secs_f64();
    let one = last_step_rate(&r);
    // Two replicas: the second takes half the receipts through the shared subscription.
    let (b, api_b) = serve(d, "serve-b.yaml", token);
    let digest = api_b.upload(d, &docs[1]);
    api_b.percentiles();
    let t0 = Instant::now();
    let r = roll_out(&[&api_b], &digest, n, |_| {});
    let two_s = t0.elapsed().as_secs_f64();
    let two = last_step_rate(&r);
    let (p50, p99) = api_b.percentiles();
    let ingested = |api: &Api| {
        api.get("/api/v1/ingest")["receipts_verified"]
            .as_u64()
            .unwrap()
    };
    eprintln!(
        "PostgreSQL, {n} devices: rollout create → completed, every receipt verified, {one_s:.2} s with one replica, {two_s:.2} s with two; {one:.0} receipts/s in the last step with one replica, {two:.0} with two ({:.2}x); API p50 {p50:.1} ms, p99 {p99:.1} ms; verified receipts ingested: a {}, b {}",
        two / one,
        ingested(&api_a),
        ingested(&api_b)
    );
    assert!(
        ingested(&api_b) > 0,
        "the second replica shared the receipts"
    );
    // A failing canary through the two replicas: halted and rolled back.
    failing_canary_is_rolled_back(&api_b, d, &bad, &rollback, n);

    // Kill the replica that holds the rollout once its 10 % step is out: the other takes it
    // over (the lease runs out) and finishes it; every target applied, none sent more than
    // twice (asked again once at most: a receipt lost with the killed replica, or a
    // document it had not published yet). Answers are due 20 s after a send here.
    let digest = api_a.upload(d, &docs[2]);
    let mut replicas = vec![("gw-a", a), ("gw-b", b)];
    let mut killed = String::new();
    let r = roll_out_answering_in(&[&api_a, &api_b], &digest, n, 20, |r| {
        let holder = r["claimed_by"].as_str().unwrap_or("gw-a").to_string();
        let i = replicas
            .iter()
            .position(|(name, _)| *name == holder)
            .unwrap_or(0);
        let (name, mut p) = replicas.remove(i);
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(p.0.id() as i32, libc::SIGKILL) };
        let _ = p.0.wait();
        killed = name.to_string();
    });
    assert!(!killed.is_empty(), "a replica was killed mid-rollout");
    let resent = r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["sends"].as_u64().unwrap_or(0) > 1)
        .count();
    assert!(
        r["targets"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["sends"].as_u64().is_some_and(|s| (1..=2).contains(&s))),
        "{r}"
    );
    eprintln!(
        "{killed} killed mid-rollout: the other finished it; {resent} devices were sent the document twice"
    );
}
