//! `chimera serve` rollouts and MQTT ingest end to end: the real binary, a mosquitto of its
//! own, and simulated devices (`common::fleet`: each with its own enrolled ML-DSA key,
//! checking every document with the device's own workflow state and answering with a
//! signed receipt). Rollouts to a whole group, a canary that fails (rejected, silent, and a
//! forged receipt that must not count) and rolls back, pause/resume/abort, an offline
//! device reconciled when it comes back, and two ingest replicas sharing the receipts.
//! Each test runs on SQLite, then on PostgreSQL (`on_each_backend`); with PostgreSQL the
//! two replicas share one database, as they would in production.
#![cfg(feature = "gateway")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use aegis_ota::receipt::Verdict;
use common::fleet::{Behaviour, Fleet, SignedWorkflow};
use common::serve::{Backend, Server, on_each_backend, wait_for};
use common::{Broker, have_mosquitto};
use serde_json::{Value, json};

/// A gateway directory with a provisioned fleet, a broker, tokens.
struct Setup {
    _dir: tempfile::TempDir,
    _broker: Broker,
    fleet: Fleet,
    operator: String,
    admin: String,
    backend: Backend,
    /// With PostgreSQL, the `database:` lines of every config (one database).
    postgres: Option<String>,
}

const GROUP: &str = "site";

impl Setup {
    /// `n` devices in one group, none running, on `backend`.
    fn new(n: usize, backend: Backend) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let broker = Broker::start(&d.join("broker"));
        let fleet = Fleet::provision(d, n, GROUP, broker.port);
        let token = |role: &str| format!("chimera_{}", aegis_ota::sha256_hex(role.as_bytes()));
        let (operator, admin) = (token("operator"), token("admin"));
        let hash = |t: &str| aegis_ota::sha256_hex(t.as_bytes());
        std::fs::write(
            d.join("tokens.yaml"),
            format!(
                "- {{ name: op, role: operator, sha256: \"{}\" }}\n\
                 - {{ name: admin, role: admin, sha256: \"{}\" }}\n",
                hash(&operator),
                hash(&admin)
            ),
        )
        .unwrap();
        let postgres = (backend == Backend::Postgres).then(|| backend.database(d, ""));
        let s = Setup {
            _dir: dir,
            _broker: broker,
            fleet,
            operator,
            admin,
            backend,
            postgres,
        };
        s.config("serve.yaml", "state");
        s
    }

    fn path(&self) -> &Path {
        &self.fleet.dir
    }

    /// A config whose state directory (and SQLite database) are in `state`; with
    /// PostgreSQL every config names the one database. Short engine ticks and leases, so a
    /// test waits tenths of seconds, not seconds.
    fn config(&self, name: &str, state: &str) {
        let database = match &self.postgres {
            Some(pg) => pg.clone(),
            None => format!("database: {state}/chimera.db\n"),
        };
        std::fs::write(
            self.path().join(name),
            format!(
                "listen: 127.0.0.1:0\n{database}registry: devices.json\n\
                 state: {state}\ntokens: tokens.yaml\ntrust_metadata: trust.signed.json\n\
                 trust_roots: [root.pub]\nbroker: mqtt://127.0.0.1:{}\n\
                 ingest: {{ snapshot_quiet_ms: 200 }}\n\
                 rollouts: {{ tick_ms: 100, lease_s: 2, reconcile_cooldown_s: 1 }}\n",
                self.fleet_port()
            ),
        )
        .unwrap();
    }

    fn fleet_port(&self) -> u16 {
        self._broker.port
    }

    fn start(&self) -> Server {
        Server::start(self.path(), "serve.yaml")
    }

    /// Uploads a signed workflow; its digest.
    fn upload(&self, s: &Server, w: &SignedWorkflow) -> String {
        let (st, b) = s.post(
            "/api/v1/workflows",
            &self.operator,
            &json!({ "document": w.text }),
        );
        assert!([200, 201].contains(&st), "{b}");
        assert_eq!(b["digest"], w.digest.as_str());
        w.digest.clone()
    }

    /// Starts every device and waits until the service has each one's online status.
    fn all_online(&self, s: &Server) {
        self.fleet.start(&self.fleet.devices);
        self.wait_online(s, &self.fleet.devices);
    }

    fn wait_online(&self, s: &Server, devices: &[String]) {
        wait_for("the devices' status reached the service", || {
            let list = s.get("/api/v1/devices", &self.operator);
            devices
                .iter()
                .all(|d| {
                    list.as_array()
                        .unwrap()
                        .iter()
                        .any(|x| x["id"] == d.as_str() && x["status"]["online"] == true)
                })
                .then_some(())
        });
    }

    fn rollout(&self, s: &Server, id: &str) -> Value {
        s.get(&format!("/api/v1/rollouts/{id}"), &self.operator)
    }

    /// Waits until the rollout is in `state`; returns it.
    fn wait_state(&self, s: &Server, id: &str, state: &str) -> Value {
        wait_for(&format!("rollout {id} {state}"), || {
            let r = self.rollout(s, id);
            (r["state"] == state).then_some(r)
        })
    }

    fn create(&self, s: &Server, body: Value) -> Value {
        let (st, b) = s.post("/api/v1/rollouts", &self.operator, &body);
        assert_eq!(st, 201, "{b}");
        b
    }

    fn action(&self, s: &Server, id: &str, verb: &str) -> (u16, Value) {
        s.post(
            &format!("/api/v1/rollouts/{id}/{verb}"),
            &self.operator,
            &json!({}),
        )
    }
}

fn target<'a>(r: &'a Value, device: &str) -> &'a Value {
    r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device"] == device)
        .unwrap_or_else(|| panic!("{device} not a target of {r}"))
}

/// The devices whose first step is `step`.
fn step_devices(r: &Value, step: u64) -> Vec<String> {
    r["targets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["step"] == step)
        .map(|t| t["device"].as_str().unwrap().to_string())
        .collect()
}

/// Long enough for several engine ticks (100 ms each): what a negative check waits.
/// Answer timeouts in these tests are 3 s: what a loaded CI machine needs for a simulated
/// device to answer, with room (the silent and the offline device wait that long).
const SOME_TICKS: Duration = Duration::from_millis(600);

#[test]
fn a_rollout_reaches_every_device_with_a_verified_receipt_and_is_streamed() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = Setup::new(12, backend);
        let s = g.start();
        g.all_online(&s);
        let events = s.events(&g.operator);
        let w = g.fleet.workflow(1, 60);
        let digest = g.upload(&s, &w);
        let created = g.create(&s, json!({ "workflow": digest, "group": GROUP }));
        assert_eq!(created["on_failure"], "halt");
        assert!(
            created["warnings"][0]
                .as_str()
                .unwrap()
                .contains("no rollback document"),
            "{created}"
        );
        assert_eq!(created["steps"], json!([1.0, 10.0, 100.0]));
        let id = created["id"].as_str().unwrap();
        let r = g.wait_state(&s, id, "completed");

        // 1 %, 10 %, 100 % of 12: 1, then 1 more, then the other 10.
        let added: Vec<u64> = r["progress"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["devices"].as_u64().unwrap())
            .collect();
        assert_eq!(added, [1, 1, 10]);
        for t in r["targets"].as_array().unwrap() {
            assert_eq!(t["state"], "applied", "{t}");
            assert_eq!(t["verdict"], "applied");
            assert_eq!(t["sends"], 1, "{t}");
            assert!(t["receipt_id"].is_string());
        }
        // Each step went out only once every device of the steps before it had answered.
        let times = |step: u64, field: &str| -> Vec<i64> {
            r["targets"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["step"] == step)
                .map(|t| t[field].as_i64().unwrap())
                .collect()
        };
        for k in 1..3 {
            let answered_before = (0..k).flat_map(|j| times(j, "answered_at")).max().unwrap();
            let published = times(k, "published_at").into_iter().min().unwrap();
            assert!(published >= answered_before, "step {k} went out early: {r}");
        }
        let receipts = s.get("/api/v1/receipts", &g.operator);
        let verified: BTreeSet<&str> = receipts
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["verified"] == true && x["digest"] == digest.as_str())
            .map(|x| x["device"].as_str().unwrap())
            .collect();
        assert_eq!(verified.len(), 12);
        for d in &g.fleet.devices {
            assert_eq!(g.fleet.answered(d), [(digest.clone(), "applied".into())]);
        }
        // What the devices say they run reached the service too.
        wait_for("every status names the new workflow", || {
            let list = s.get("/api/v1/devices", &g.operator);
            list.as_array()
                .unwrap()
                .iter()
                .all(|x| {
                    x["status"]["running_digest"] == digest.as_str()
                        && x["desired"]["digest"] == digest.as_str()
                })
                .then_some(())
        });
        let stats = s.get("/api/v1/ingest", &g.operator);
        assert_eq!(stats["receipts_verified"], 12, "{stats}");
        assert_eq!(stats["receipts_unverified"], 0, "{stats}");

        // The event stream saw every receipt and the rollout's steps and end.
        let seen = wait_for("the stream saw the completion", || {
            let e = events.lock().unwrap().clone();
            e.iter()
                .any(|(k, d)| k == "rollout" && d["state"] == "completed")
                .then_some(e)
        });
        let receipt_events = seen
            .iter()
            .filter(|(k, d)| {
                k == "receipt" && d["verified"] == true && d["digest"] == digest.as_str()
            })
            .count();
        assert_eq!(receipt_events, 12);
        assert!(
            seen.iter()
                .any(|(k, d)| k == "rollout" && d["step"] == 2 && d["state"] == "running")
        );
        assert!(
            seen.iter()
                .any(|(k, d)| k == "rollout_target" && d["state"] == "applied")
        );
        assert!(seen.iter().all(|(k, _)| k != "lagged"));
    });
}

#[test]
fn a_failing_canary_halts_rolls_the_canaries_back_and_a_forged_receipt_does_not_count() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = Setup::new(12, backend);
        let s = g.start();
        g.all_online(&s);
        let forward = g.upload(&s, &g.fleet.workflow(1, 60));
        // The previous pipeline issued again, later: the only rollback devices accept.
        let rollback = g.upload(&s, &g.fleet.workflow(2, 0));
        // A rollback document older than the rollout's is refused, saying why.
        let stale = g.upload(&s, &g.fleet.workflow(3, 600));
        let (st, b) = s.post(
            "/api/v1/rollouts",
            &g.operator,
            &json!({ "workflow": forward, "group": GROUP, "rollback": stale }),
        );
        assert_eq!(st, 422, "{b}");
        assert!(b["error"].as_str().unwrap().contains("issued at"), "{b}");

        // Created paused, to set up the canaries before anything is sent.
        let created = g.create(
            &s,
            json!({
                "workflow": forward, "group": GROUP, "steps": [25, 100],
                "budget": { "max_negative": 1, "max_missing": 0 },
                "answer_timeout_s": 3, "rollback": rollback, "paused": true,
            }),
        );
        assert_eq!(created["on_failure"], "rollback");
        assert_eq!(created["state"], "paused");
        let id = created["id"].as_str().unwrap();
        let canaries = step_devices(&created, 0);
        assert_eq!(canaries.len(), 3, "25 % of 12");
        let later = step_devices(&created, 1);
        let (rejecter, silent, applier) = (&canaries[0], &canaries[1], &canaries[2]);
        g.fleet.set(rejecter, &forward, Behaviour::Reject);
        g.fleet.set(silent, &forward, Behaviour::Silent);
        assert_eq!(g.action(&s, id, "resume").0, 200);

        // A receipt for the silent canary, "applied", signed with another canary's key and
        // published on the silent one's topic: stored, not verified, not an answer.
        wait_for("the silent canary got the document", || {
            g.fleet.received(silent).contains(&forward).then_some(())
        });
        let forged = g.fleet.receipt(applier, silent, &forward, Verdict::Applied);
        g.fleet.publish(
            &format!("aegis/v1/{silent}/receipts"),
            forged.as_bytes(),
            false,
        );
        let r = g.wait_state(&s, id, "rolled_back");
        assert!(
            r["reason"].as_str().unwrap().contains("silent"),
            "halted for the missing answer: {r}"
        );
        // Stored before the targets are looked at: had it counted, it would have moved the
        // silent canary's target even after the halt.
        let forged_row = wait_for("the forged receipt is stored", || {
            let stored = s.get(&format!("/api/v1/receipts?device={silent}"), &g.operator);
            stored
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["signed_text"] == forged.as_str())
                .cloned()
        });
        let r = g.rollout(&s, id);
        assert_eq!(target(&r, rejecter)["state"], "negative");
        assert_eq!(target(&r, rejecter)["verdict"], "rejected");
        assert_eq!(target(&r, applier)["state"], "applied");
        assert_eq!(
            target(&r, silent)["state"],
            "missing",
            "the forgery did not count"
        );
        assert_eq!(target(&r, silent)["receipt_id"], Value::Null);
        assert_eq!(forged_row["verified"], false);
        assert_eq!(forged_row["digest"], Value::Null);
        assert!(forged_row["error"].as_str().unwrap().contains("signature"));

        // The rollback went to every canary (each one got the rollout's document), and they
        // applied it: it is newer than what each of them runs.
        for c in &canaries {
            assert!(target(&r, c)["rollback_sent_at"].is_i64(), "{c}");
            wait_for(&format!("{c} answered the rollback"), || {
                let r = g.rollout(&s, id);
                (target(&r, c)["rollback_verdict"] == "applied").then_some(())
            });
            assert!(g.fleet.received(c).contains(&rollback));
        }
        // The later step was never published: its devices got nothing at all.
        for d in &later {
            let t = target(&r, d);
            assert_eq!(
                (t["state"].as_str(), t["sends"].as_u64()),
                (Some("pending"), Some(0))
            );
            assert!(
                g.fleet.received(d).is_empty(),
                "{d} got {:?}",
                g.fleet.received(d)
            );
        }
        let audit = s.get("/api/v1/audit", &g.admin).to_string();
        for a in [
            "rollout.create",
            "rollout.running",
            "rollout.halt",
            "rollout.rollback",
        ] {
            assert!(audit.contains(a), "{a} not audited");
        }
    });
}

#[test]
fn pause_resume_and_abort_stop_and_start_publishing() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = Setup::new(8, backend);
        let s = g.start();
        g.all_online(&s);
        let w = g.upload(&s, &g.fleet.workflow(1, 60));
        let created = g.create(
            &s,
            json!({ "workflow": w, "group": GROUP, "steps": [25, 50, 100], "paused": true }),
        );
        let id = created["id"].as_str().unwrap();
        let steps: Vec<Vec<String>> = (0..3).map(|k| step_devices(&created, k)).collect();
        assert_eq!(steps.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 4]);
        let nothing_received =
            |devices: &[String]| devices.iter().all(|d| !g.fleet.received(d).contains(&w));
        // Paused from the start: nothing goes out.
        std::thread::sleep(SOME_TICKS);
        assert!(nothing_received(&g.fleet.devices));
        assert_eq!(
            g.action(&s, id, "pause").0,
            409,
            "only a running rollout pauses"
        );

        // Resume with the first step's devices holding their answers; pause while they hold.
        for d in &steps[0] {
            g.fleet.set(d, &w, Behaviour::Hold);
        }
        assert_eq!(g.action(&s, id, "resume").0, 200);
        wait_for("step 1 published", || {
            steps[0]
                .iter()
                .all(|d| g.fleet.received(d).contains(&w))
                .then_some(())
        });
        let (st, r) = g.action(&s, id, "pause");
        assert_eq!((st, r["state"].as_str()), (200, Some("paused")), "{r}");
        // Answers still count while paused, but nothing moves on.
        for d in &steps[0] {
            g.fleet.release(d);
        }
        wait_for("step 1 answered", || {
            let r = g.rollout(&s, id);
            steps[0]
                .iter()
                .all(|d| target(&r, d)["state"] == "applied")
                .then_some(())
        });
        std::thread::sleep(SOME_TICKS);
        let r = g.rollout(&s, id);
        assert_eq!(
            (r["state"].as_str(), r["step"].as_u64()),
            (Some("paused"), Some(0))
        );
        assert!(nothing_received(&steps[1]));

        // Resumed: the second step goes out; aborted while it holds: the third never does.
        for d in &steps[1] {
            g.fleet.set(d, &w, Behaviour::Hold);
        }
        assert_eq!(g.action(&s, id, "resume").0, 200);
        wait_for("step 2 published", || {
            steps[1]
                .iter()
                .all(|d| g.fleet.received(d).contains(&w))
                .then_some(())
        });
        let (st, r) = g.action(&s, id, "abort");
        assert_eq!((st, r["state"].as_str()), (200, Some("aborted")), "{r}");
        for d in &steps[1] {
            g.fleet.release(d);
        }
        wait_for("step 2 answered", || {
            let r = g.rollout(&s, id);
            steps[1]
                .iter()
                .all(|d| target(&r, d)["state"] == "applied")
                .then_some(())
        });
        std::thread::sleep(SOME_TICKS);
        let r = g.rollout(&s, id);
        assert_eq!(r["state"], "aborted");
        assert!(nothing_received(&steps[2]));
        for verb in ["resume", "pause", "abort"] {
            let (st, b) = g.action(&s, id, verb);
            assert_eq!(st, 409, "{verb}: {b}");
            assert!(b["error"].as_str().unwrap().contains("aborted"), "{b}");
        }
        assert_eq!(g.action(&s, "no-such-rollout", "pause").0, 404);
        // An aborted rollout holds no device: a new one may take them.
        g.create(&s, json!({ "workflow": w, "group": GROUP, "paused": true }));
    });
}

#[test]
fn a_device_offline_during_its_step_is_reconciled_when_it_comes_back() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = Setup::new(6, backend);
        let s = g.start();
        let away = g.fleet.devices[0].clone();
        let present: Vec<String> = g.fleet.devices[1..].to_vec();
        g.fleet.start(&present);
        g.wait_online(&s, &present);
        let w = g.upload(&s, &g.fleet.workflow(1, 60));
        let created = g.create(
            &s,
            json!({ "workflow": w, "group": GROUP, "steps": [100], "answer_timeout_s": 3 }),
        );
        let id = created["id"].as_str().unwrap();
        // Its answer is overdue while it is offline: waiting, not counted; the rollout ends.
        let r = g.wait_state(&s, id, "completed");
        assert_eq!(target(&r, &away)["state"], "offline");
        assert_eq!(target(&r, &away)["sends"], 1);
        // The broker lost the retained document (say, restarted without persistence): only
        // the service's desired state can bring it back.
        g.fleet
            .publish(&format!("aegis/v1/{away}/workflows"), b"", true);
        g.fleet.start(std::slice::from_ref(&away));
        wait_for("the returning device applied it", || {
            let r = g.rollout(&s, id);
            (target(&r, &away)["state"] == "applied").then_some(())
        });
        let r = g.rollout(&s, id);
        assert_eq!(target(&r, &away)["sends"], 2, "sent again once");
        assert_eq!(g.fleet.answered(&away), [(w.clone(), "applied".into())]);
        let stats = s.get("/api/v1/ingest", &g.operator);
        assert!(stats["reconciles"].as_u64().unwrap() >= 1, "{stats}");
        // It comes back once more (a restart): it runs the document, nothing is re-sent.
        g.fleet.stop(&away);
        wait_for("the service saw it go", || {
            let d = s.get(&format!("/api/v1/devices/{away}"), &g.operator);
            (d["status"]["online"] == false).then_some(())
        });
        g.fleet.start(std::slice::from_ref(&away));
        g.wait_online(&s, std::slice::from_ref(&away));
        std::thread::sleep(SOME_TICKS);
        assert_eq!(target(&g.rollout(&s, id), &away)["sends"], 2);
        assert_eq!(g.fleet.received(&away), [w.clone(), w.clone()]);
    });
}

#[test]
fn two_ingest_replicas_share_the_receipts_and_each_is_stored_once() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = Setup::new(10, backend);
        // SQLite runs one replica per database file: two services on two databases, one
        // broker, one share group, stand for two replicas. With PostgreSQL they are two
        // replicas of one gateway: one database.
        g.config("serve-a.yaml", "state-a");
        g.config("serve-b.yaml", "state-b");
        let a = Server::start(g.path(), "serve-a.yaml");
        let b = Server::start(g.path(), "serve-b.yaml");
        g.fleet.start(&g.fleet.devices);
        // Status messages are shared out too: each device's reached one of them.
        wait_for("every device's status reached a replica", || {
            let online = |s: &Server| -> BTreeSet<String> {
                s.get("/api/v1/devices", &g.operator)
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|x| x["status"]["online"] == true)
                    .map(|x| x["id"].as_str().unwrap().to_string())
                    .collect()
            };
            (online(&a).union(&online(&b)).count() == 10).then_some(())
        });
        // Published to the whole group at once by someone else: every device answers.
        let w = g.fleet.workflow(1, 60);
        g.fleet.publish(
            &format!("aegis/v1/groups/{GROUP}/workflows"),
            w.text.as_bytes(),
            true,
        );
        let stored = |s: &Server| -> Vec<String> {
            s.get("/api/v1/receipts", &g.operator)
                .as_array()
                .unwrap()
                .iter()
                .filter(|x| x["verified"] == true)
                .map(|x| x["device"].as_str().unwrap().to_string())
                .collect()
        };
        let received = |s: &Server| {
            let st = s.get("/api/v1/ingest", &g.operator);
            st["receipts_verified"].as_u64().unwrap()
        };
        match g.backend {
            Backend::Sqlite => {
                let (in_a, in_b) = wait_for("every receipt stored by one replica", || {
                    let (in_a, in_b) = (stored(&a), stored(&b));
                    (in_a.len() + in_b.len() >= 10).then_some((in_a, in_b))
                });
                std::thread::sleep(SOME_TICKS);
                assert_eq!((stored(&a), stored(&b)), (in_a.clone(), in_b.clone()));
                let all: BTreeSet<&String> = in_a.iter().chain(&in_b).collect();
                assert_eq!(
                    all.len(),
                    10,
                    "each device's receipt once: {in_a:?} {in_b:?}"
                );
                assert_eq!(
                    in_a.len() + in_b.len(),
                    10,
                    "no receipt in both: {in_a:?} {in_b:?}"
                );
                assert!(
                    !in_a.is_empty() && !in_b.is_empty(),
                    "the broker shares them out: {in_a:?} {in_b:?}"
                );
            }
            // One database: both replicas list every receipt, each stored once.
            Backend::Postgres => {
                let in_a = wait_for("every receipt stored", || {
                    let in_a = stored(&a);
                    (in_a.len() >= 10).then_some(in_a)
                });
                std::thread::sleep(SOME_TICKS);
                let all: BTreeSet<&String> = in_a.iter().collect();
                assert_eq!((all.len(), in_a.len()), (10, 10), "{in_a:?}");
                assert_eq!(stored(&b), stored(&a));
                assert!(
                    received(&a) > 0 && received(&b) > 0,
                    "the broker shares them out: {} {}",
                    received(&a),
                    received(&b)
                );
            }
        }
        assert_eq!(received(&a) + received(&b), 10);
    });
}
