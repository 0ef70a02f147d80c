//! `chimera serve` rollouts and MQTT ingest end to end: the real binary, a mosquitto of its
//! own, and simulated devices (`common::fleet`: each with its own enrolled ML-DSA key,
//! checking every document with the device's own workflow state and answering with a
//! signed receipt). Rollouts to a whole group, a canary that fails (rejected, silent, and a
//! forged receipt that must not count) and rolls back, pause/resume/abort, an offline
//! device reconciled when it comes back, and two ingest replicas sharing the receipts.
//! Each test runs on SQLite, then on PostgreSQL (`on_each_backend`); with PostgreSQL the
//! two replicas share one database, as they would in production, and their event streams
//! are the whole fleet's (PostgreSQL only: `LISTEN/NOTIFY`).
#![cfg(feature = "gateway")]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use aegis_ota::receipt::Verdict;
use common::fleet::Behaviour;
use common::fleet_gateway::{FleetGateway, GROUP};
use common::serve::{Backend, Server, on_each_backend, wait_for};
use common::{have_mosquitto, have_postgres, postgres};
use serde_json::{Value, json};

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
        let g = FleetGateway::new(12, backend);
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
        // A firmware receipt on the same topic: counted as such, not stored as a workflow
        // receipt that failed, nor taken for an unsigned notice.
        let dev = &g.fleet.devices[0];
        g.fleet.publish(
            &format!("aegis/v1/{dev}/receipts"),
            g.fleet.firmware_receipt(dev, dev).as_bytes(),
            false,
        );
        let stats = wait_for("the ingest counted the firmware receipt", || {
            let stats = s.get("/api/v1/ingest", &g.operator);
            (stats["skipped_firmware_receipts"] == 1).then_some(stats)
        });
        assert_eq!(stats["receipts_unverified"], 0, "{stats}");
        assert_eq!(stats["skipped_notices"], 0, "{stats}");

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
        let g = FleetGateway::new(12, backend);
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
        let g = FleetGateway::new(8, backend);
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
        let g = FleetGateway::new(6, backend);
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
        let g = FleetGateway::new(10, backend);
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

/// A device un-enrolled in the middle of a rollout that waits for it: the rollout goes on
/// without it (its target `unenrolled`, not missing: the budget of none is not spent) and
/// completes; the answer it sends afterwards is stored unverified and settles nothing; the
/// next rollout to the group does not include it, whatever the registry file says.
#[test]
fn an_unenrolled_device_leaves_its_rollout_and_what_it_sends_then_counts_for_nothing() {
    if !have_mosquitto("chimera_rollouts") {
        return;
    }
    on_each_backend("chimera_rollouts", |backend| {
        let g = FleetGateway::new(4, backend);
        let s = g.start();
        g.all_online(&s);
        let events = s.events(&g.viewer);
        let w = g.upload(&s, &g.fleet.workflow(1, 60));
        let held = g.fleet.devices[0].clone();
        g.fleet.set(&held, &w, Behaviour::Hold);
        let created = g.create(
            &s,
            json!({ "workflow": w, "group": GROUP, "steps": [100], "answer_timeout_s": 3,
                    "budget": { "max_missing": 0 } }),
        );
        let id = created["id"].as_str().unwrap();
        wait_for("the others answered, the held one has it", || {
            let r = g.rollout(&s, id);
            (r["progress"][0]["applied"] == 3 && target(&r, &held)["state"] == "published")
                .then_some(())
        });
        // Below admin it is refused; an admin un-enrols it.
        let path = format!("/api/v1/devices/{held}");
        assert_eq!(s.bearer("DELETE", &path, &g.operator, None).0, 403);
        let (st, u) = s.bearer("DELETE", &path, &g.admin, None);
        assert_eq!(st, 200, "{u}");
        assert_eq!(u["groups"], json!([GROUP]));
        assert_eq!(u["rollouts"], json!([id]));
        let r = g.wait_state(&s, id, "completed");
        assert_eq!(target(&r, &held)["state"], "unenrolled", "{r}");
        assert_eq!(r["progress"][0]["unenrolled"], 1);
        assert_eq!(r["progress"][0]["missing"], 0);
        // What it sends now is kept, unverified, and settles nothing.
        g.fleet.release(&held);
        let stored = wait_for("its late receipt is stored", || {
            let list = s.get(&format!("/api/v1/receipts?device={held}"), &g.viewer);
            list.as_array()
                .unwrap()
                .iter()
                .find(|x| x["verified"] == false)
                .cloned()
        });
        assert!(
            stored["error"]
                .as_str()
                .unwrap()
                .contains("was un-enrolled"),
            "{stored}"
        );
        assert_eq!(target(&g.rollout(&s, id), &held)["state"], "unenrolled");
        let seen = events.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|(k, d)| k == "device" && d["device"] == held.as_str()),
            "{seen:?}"
        );
        assert!(seen.iter().any(|(k, d)| k == "rollout_target"
            && d["device"] == held.as_str()
            && d["state"] == "unenrolled"));
        // Gone from the fleet list; the registry file still names it, the service does not
        // count it in the group.
        let listed = s.get("/api/v1/devices", &g.viewer);
        assert_eq!(listed.as_array().unwrap().len(), 3);
        let w2 = g.upload(&s, &g.fleet.workflow(2, 60));
        let r2 = g.create(
            &s,
            json!({ "workflow": w2, "group": GROUP, "steps": [100] }),
        );
        let targets: Vec<&str> = r2["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["device"].as_str().unwrap())
            .collect();
        assert_eq!(targets.len(), 3, "{targets:?}");
        assert!(!targets.contains(&held.as_str()));
        let (st, b) = s.post(
            "/api/v1/rollouts",
            &g.operator,
            &json!({ "workflow": w2, "devices": [held] }),
        );
        assert_eq!(st, 422, "{b}");
        assert!(b["error"].as_str().unwrap().contains("un-enrolled"), "{b}");
        // A plain publish to the group leaves it out too; to it alone, it is refused.
        let publish = format!("/api/v1/workflows/{w2}/publish");
        let (st, p) = s.post(&publish, &g.operator, &json!({ "to": GROUP }));
        assert_eq!(st, 200, "{p}");
        let reached = p["devices"].as_array().unwrap();
        assert_eq!(reached.len(), 3, "{p}");
        assert!(!reached.contains(&json!(held)));
        let (st, p) = s.post(&publish, &g.operator, &json!({ "to": held }));
        assert_eq!(st, 422, "{p}");
    });
}

/// Everything a stream saw, each event as one comparable string, sorted.
fn sorted_events(seen: &std::sync::Mutex<Vec<(String, Value)>>) -> Vec<String> {
    let mut all: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(k, d)| format!("{k} {d}"))
        .collect();
    all.sort();
    all
}

/// With PostgreSQL every replica streams every replica's events. Replica B has no broker
/// (it neither ingests nor runs rollouts): its stream carries the receipts and statuses
/// replica A ingests and the steps A's engine takes, and A's carries B's own event (the
/// resume made through B's API) — each stream the same events, each once. B's listening
/// connection killed on the server, B listens again and tells its clients `lagged`.
#[test]
fn every_replica_streams_the_whole_fleet_and_a_lost_listener_says_lagged() {
    if !have_mosquitto("chimera_rollouts") || !have_postgres("chimera_rollouts") {
        return;
    }
    let g = FleetGateway::new(4, Backend::Postgres);
    g.config_replica("serve-a.yaml", "state-a", Some("events-a"), true);
    g.config_replica("serve-b.yaml", "state-b", Some("events-b"), false);
    let a = Server::start(g.path(), "serve-a.yaml");
    let b = Server::start(g.path(), "serve-b.yaml");
    for (s, scope) in [(&a, "fleet"), (&b, "fleet")] {
        let r = s.get("/api/v1/events/relay", &g.viewer);
        assert_eq!(r["scope"], scope, "{r}");
        assert_eq!(r["relay"]["listening"], true, "{r}");
    }
    let (at_a, at_b) = (a.events(&g.viewer), b.events(&g.viewer));
    g.all_online(&b);
    let w = g.upload(&b, &g.fleet.workflow(1, 60));
    let created = g.create(
        &a,
        json!({ "workflow": w, "group": GROUP, "steps": [50, 100], "paused": true }),
    );
    let id = created["id"].as_str().unwrap();
    assert_eq!(g.action(&b, id, "resume").0, 200);
    g.wait_state(&b, id, "completed");
    let completed = |seen: &std::sync::Mutex<Vec<(String, Value)>>| {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(k, d)| k == "rollout" && d["id"] == id && d["state"] == "completed")
    };
    wait_for("both streams saw the completion", || {
        (completed(&at_a) && completed(&at_b)).then_some(())
    });
    std::thread::sleep(SOME_TICKS);
    let (seen_a, seen_b) = (sorted_events(&at_a), sorted_events(&at_b));
    assert_eq!(seen_a, seen_b, "the same events on both replicas");
    let count = |kind: &str, f: &dyn Fn(&Value) -> bool| {
        at_b.lock()
            .unwrap()
            .iter()
            .filter(|(k, d)| k == kind && f(d))
            .count()
    };
    // Every receipt A ingested, once each; A's engine's steps; B's own resume.
    let receipts: BTreeSet<String> = at_b
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, d)| k == "receipt" && d["digest"] == w.as_str())
        .map(|(_, d)| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(receipts.len(), 4, "{seen_b:?}");
    assert_eq!(count("receipt", &|d| d["digest"] == w.as_str()), 4);
    assert_eq!(
        count("rollout", &|d| d["state"] == "running"
            && d["reason"].as_str().is_some_and(|r| r.contains("resume"))),
        1,
        "{seen_b:?}"
    );
    assert_eq!(
        count("rollout", &|d| d["step"] == 1
            && d["state"] == "running"
            && d["published"].is_null()),
        1,
        "{seen_b:?}"
    );
    assert_eq!(count("rollout", &|d| d["state"] == "completed"), 1);
    assert_eq!(count("rollout_target", &|d| d["state"] == "applied"), 4);
    assert_eq!(count("lagged", &|_| true), 0);
    let relay_b = b.get("/api/v1/events/relay", &g.viewer)["relay"].clone();
    assert!(relay_b["sent"].as_u64().unwrap() >= 1, "{relay_b}");
    assert_eq!(relay_b["reconnects"], 0, "{relay_b}");

    // B's listening connection is killed: it listens again and says so.
    let db = g.database_name().unwrap();
    let killed = postgres().psql(
        &db,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 'chimera-events:events-b'",
    );
    assert_eq!(killed, "1");
    let lagged = wait_for("B's stream says lagged", || {
        at_b.lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k == "lagged")
            .map(|(_, d)| d.clone())
    });
    assert!(lagged["missed"].is_null(), "{lagged}");
    assert!(
        lagged["reason"].as_str().unwrap().contains("interrupted"),
        "{lagged}"
    );
    let relay_b = b.get("/api/v1/events/relay", &g.viewer)["relay"].clone();
    assert_eq!(
        (&relay_b["reconnects"], &relay_b["listening"]),
        (&json!(1), &json!(true)),
        "{relay_b}"
    );
    // What A ingests next reaches B's clients again.
    let gone = g.fleet.devices[0].clone();
    g.fleet.stop(&gone);
    wait_for(
        "B streams the device going offline, as A ingested it",
        || {
            at_b.lock()
                .unwrap()
                .iter()
                .any(|(k, d)| k == "status" && d["device"] == gone.as_str() && d["online"] == false)
                .then_some(())
        },
    );
    std::thread::sleep(SOME_TICKS);
    let mut after_a = sorted_events(&at_a);
    let mut after_b = sorted_events(&at_b);
    after_b.retain(|e| !e.starts_with("lagged "));
    assert_eq!(
        after_a.len(),
        seen_a.len() + 1,
        "A: one more event: {after_a:?}"
    );
    after_a.sort();
    after_b.sort();
    assert_eq!(after_a, after_b);
    assert_eq!(count("lagged", &|_| true), 1);
}
