//! `aegis fleet-sim devices …`: simulated devices that answer signed workflows, for gateway
//! rollouts at fleet scale (issue 21: `chimera serve` against 1,000 devices).
//!
//! Each device is the agent's own code minus the pipeline: its [`FleetLink`] (connect,
//! retained status, outbox, subscriptions to its workflow topics), and its
//! [`Workflows`] state (signature and policy checks, anti-replay, trial and commit, the
//! device-signed receipt), with its own key and state directory. Only the pipeline switch is
//! simulated: a workflow applies at once, or — for the workflow ids named with `--fail` —
//! fails its "health check" and rolls back, as a bad pipeline would on every device.
//!
//! `provision` writes the devices' keys and a `devices.json` in the format `chimera enroll`
//! writes, so a gateway imports the whole simulated fleet; `run` connects them to a broker
//! and answers until stopped.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_ota::receipt::Verdict;
use aegis_ota::state::{Outcome, Subject, Workflows};
use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::fleet_sim::{MemOutbox, MemOutboxRef, raise_nofile, settings};
use crate::fleet::{CommandError, FleetHost, FleetLink};

/// What `provision` records for `run` (`fleet.json` in the directory).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    /// Device ids, in order.
    devices: Vec<String>,
    /// Groups every device is in.
    groups: Vec<String>,
    /// The signed trust metadata the devices start from.
    trust_metadata: PathBuf,
    /// Root public keys.
    roots: Vec<PathBuf>,
}

/// Writes `n` devices under `dir` (`DEVICE/keys/device.key`), `dir/devices.json` (the
/// gateway's registry format) and `dir/fleet.json`.
pub fn provision(
    dir: &Path,
    n: usize,
    prefix: &str,
    groups: &[String],
    trust_metadata: &Path,
    roots: &[PathBuf],
) -> anyhow::Result<()> {
    use base64::Engine as _;
    anyhow::ensure!(n > 0, "--devices: at least one");
    anyhow::ensure!(!roots.is_empty(), "--root: at least one root public key");
    let abs = |p: &Path| std::path::absolute(p).with_context(|| p.display().to_string());
    let mut registry = serde_json::Map::new();
    let mut devices = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}-{i:05}");
        let keys = dir.join(&id).join("keys");
        std::fs::create_dir_all(&keys).with_context(|| keys.display().to_string())?;
        let key = aegis_ota::sign::SecretKey::generate()?;
        key.write(&keys.join("device.key"))?;
        key.public().write(&keys.join("device.pub"))?;
        registry.insert(
            id.clone(),
            json!({
                "signing_key": base64::engine::general_purpose::STANDARD.encode(key.public().to_bytes()),
                "key_id": key.public().id(),
                "groups": groups,
            }),
        );
        devices.push(id);
    }
    let fleet = FleetFile {
        devices,
        groups: groups.to_vec(),
        trust_metadata: abs(trust_metadata)?,
        roots: roots.iter().map(|r| abs(r)).collect::<Result<_, _>>()?,
    };
    std::fs::write(
        dir.join("devices.json"),
        serde_json::to_vec_pretty(&registry)?,
    )?;
    std::fs::write(dir.join("fleet.json"), serde_json::to_vec_pretty(&fleet)?)?;
    Ok(())
}

/// Counters of a run.
#[derive(Debug, Default)]
struct Answers {
    applied: AtomicU64,
    rolled_back: AtomicU64,
    rejected: AtomicU64,
    duplicate: AtomicU64,
    /// Duplicates asked again and answered with the receipt sent before.
    answered_again: AtomicU64,
    refused: AtomicU64,
}

/// Receipts a simulated device keeps to answer again (the newest).
const KEPT_RECEIPTS: usize = 8;

/// One simulated device: the agent's workflow state behind its fleet link.
struct Device {
    id: String,
    workflows: Mutex<Workflows>,
    outbox: Arc<MemOutbox>,
    /// Set once the link runs: wakes it to send the receipt and the new status at once.
    nudge: Mutex<Option<Arc<tokio::sync::Notify>>>,
    /// Workflow ids whose "pipeline" fails its health check here.
    fail: Arc<Vec<String>>,
    /// Messages to handle, off the link's task (verification and signing take time).
    work: tokio::sync::mpsc::UnboundedSender<(Arc<Device>, Vec<u8>, bool)>,
    me: std::sync::Weak<Device>,
    answers: Arc<Answers>,
    /// The receipts sent last (digest, text) and when each went out again: the agent's
    /// workflow history and `AnswerAgain`.
    sent: Mutex<(VecDeque<(String, String)>, aegis_ota::state::AnswerAgain)>,
}

impl Device {
    /// What the agent's applier does with a fleet workflow, minus the pipeline: verify,
    /// skip what was answered, try it (begin, judge, commit or roll back), answer with a
    /// device-signed receipt; a document answered already and asked again (`live`) gets
    /// the receipt sent before.
    fn handle(&self, doc: &[u8], live: bool) {
        let t0 = Instant::now();
        let mut wf = self.workflows.lock().unwrap_or_else(|p| p.into_inner());
        let ms = || t0.elapsed().as_secs_f64() * 1e3;
        let answer = |wf: &mut Workflows, subject: Subject<'_>, verdict, reason: String| {
            let outcome = Outcome {
                verdict,
                reason,
                mode: "in_place",
                apply_ms: ms(),
            };
            wf.receipt(subject, &outcome)
        };
        let (digest, receipt) = match wf.verify(doc) {
            Err(refusal) => {
                let Some(a) = refusal.authenticated else {
                    self.answers.refused.fetch_add(1, Relaxed);
                    return;
                };
                if wf.answered(&a.digest) {
                    drop(wf);
                    return self.duplicate(&a.digest, live);
                }
                let _ = wf.record_answer(&a.digest);
                self.answers.rejected.fetch_add(1, Relaxed);
                let r = answer(
                    &mut wf,
                    Subject::Authenticated(&a),
                    Verdict::Rejected,
                    refusal.rejection.to_string(),
                );
                (a.digest, r)
            }
            Ok(v) => {
                if wf.answered(&v.digest) {
                    drop(wf);
                    return self.duplicate(&v.digest, live);
                }
                let fails = self.fail.contains(&v.document.front.id);
                let outcome = match wf.begin(doc, &v) {
                    Err(e) => Err(format!("state: {e}")),
                    Ok(()) if fails => {
                        let _ = wf.rollback();
                        Err("health: simulated health check failure (fleet-sim --fail)".into())
                    }
                    Ok(()) => wf.commit().map_err(|e| format!("state: {e}")),
                };
                let _ = wf.record_answer(&v.digest);
                let (verdict, reason) = match outcome {
                    Ok(()) => {
                        self.answers.applied.fetch_add(1, Relaxed);
                        (Verdict::Applied, String::new())
                    }
                    Err(reason) => {
                        self.answers.rolled_back.fetch_add(1, Relaxed);
                        (Verdict::RolledBack, reason)
                    }
                };
                let r = answer(&mut wf, Subject::Verified(&v), verdict, reason);
                (v.digest, r)
            }
        };
        drop(wf);
        match receipt {
            Ok(r) => {
                let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
                if sent.0.len() >= KEPT_RECEIPTS {
                    sent.0.pop_front();
                }
                sent.0.push_back((digest, r.clone()));
                drop(sent);
                self.send(r);
            }
            Err(e) => tracing::error!(device = %self.id, error = %e, "cannot sign a receipt"),
        }
    }

    /// A document answered already: counted; asked again, its receipt goes out again.
    fn duplicate(&self, digest: &str, live: bool) {
        self.answers.duplicate.fetch_add(1, Relaxed);
        let mut sent = self.sent.lock().unwrap_or_else(|p| p.into_inner());
        let (kept, again) = &mut *sent;
        let again = live && again.due(digest);
        let Some(r) = kept
            .iter()
            .rev()
            .find(|(d, _)| again && d == digest)
            .map(|(_, r)| r.clone())
        else {
            return;
        };
        drop(sent);
        self.answers.answered_again.fetch_add(1, Relaxed);
        self.send(r);
    }

    /// Queues a receipt and wakes the link.
    fn send(&self, receipt: String) {
        self.outbox.push(
            format!("aegis/v1/{}/receipts", self.id),
            receipt.into_bytes(),
        );
        if let Some(n) = &*self.nudge.lock().unwrap_or_else(|p| p.into_inner()) {
            n.notify_one();
        }
    }
}

impl FleetHost for Device {
    fn status(&self) -> Value {
        let wf = self.workflows.lock().unwrap_or_else(|p| p.into_inner());
        json!({ "state": "online", "device": self.id, "simulated": true, "workflow": wf.status() })
    }
    fn telemetry(&self) -> Value {
        json!({ "device": self.id, "simulated": true })
    }
    fn config(&self) -> Value {
        json!({})
    }
    fn restart_pipeline(&self) -> Result<(), CommandError> {
        Err(CommandError::Simulated)
    }
    fn set_log_level(&self, _: &str) -> Result<(), CommandError> {
        Err(CommandError::Simulated)
    }
    fn workflow(&self, topic: &str, payload: &[u8], live: bool) {
        if topic == crate::fleet::TRUST_TOPIC {
            return; // The simulated fleet keeps its provisioned trust metadata.
        }
        if let Some(me) = self.me.upgrade() {
            let _ = self.work.send((me, payload.to_vec(), live));
        }
    }
}

/// The agent configuration of simulated device `id` (its workflow side only).
fn device_config(dir: &Path, id: &str, f: &FleetFile) -> anyhow::Result<aegis_config::AgentConfig> {
    let d = dir.join(id);
    let yaml = json!({
        "device": { "id": id, "groups": f.groups },
        // Never started: the configured pipeline only has to be valid.
        "pipeline": {
            "sources": [{ "id": "cam0", "url": format!("file://{}/clip.mp4", dir.display()) }],
            "sinks": [{ "kind": "discard" }],
        },
        "store": { "path": d.join("aegis.db") },
        "workflows": {
            "enabled": true,
            "state_dir": d.join("state"),
            "keys_dir": d.join("keys"),
            "trust": { "roots": f.roots, "metadata": f.trust_metadata },
            // Workflows may name files under the fleet's directory (a clip there).
            "policy": { "paths": [dir] },
        },
    });
    Ok(aegis_config::from_yaml_str(
        &serde_json::to_string(&yaml)?,
        &format!("fleet-sim device {id}"),
    )?)
}

/// Runs the devices of `dir` against the broker at `broker` (HOST:PORT) for `seconds`
/// (until SIGTERM when None), answering every workflow; prints the counts as they change.
pub fn run(
    dir: &Path,
    broker: &str,
    seconds: Option<f64>,
    fail: Vec<String>,
) -> anyhow::Result<()> {
    let (host, port) = broker
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("--broker {broker:?}: HOST:PORT"))?;
    let dir = &std::path::absolute(dir).with_context(|| dir.display().to_string())?;
    let fleet: FleetFile = serde_json::from_slice(
        &std::fs::read(dir.join("fleet.json")).context("fleet.json (run `provision` first)")?,
    )
    .context("fleet.json")?;
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let answers = Arc::new(Answers::default());
    let fail = Arc::new(fail);
    rt.block_on(async move {
        let (work, mut queue) = tokio::sync::mpsc::unbounded_channel::<(Arc<Device>, Vec<u8>, bool)>();
        // Verification and signing off the links' tasks, a few at a time.
        let workers = tokio::spawn(async move {
            let limit = Arc::new(tokio::sync::Semaphore::new(8));
            while let Some((dev, doc, live)) = queue.recv().await {
                let permit = limit.clone().acquire_owned().await;
                tokio::task::spawn_blocking(move || {
                    dev.handle(&doc, live);
                    drop(permit);
                });
            }
        });
        let mut links = Vec::with_capacity(fleet.devices.len());
        for id in &fleet.devices {
            let cfg = device_config(dir, id, &fleet)?;
            let wf = Workflows::open(&cfg).with_context(|| format!("device {id}"))?;
            let outbox = Arc::new(MemOutbox::default());
            let dev = Arc::new_cyclic(|me| Device {
                id: id.clone(),
                workflows: Mutex::new(wf),
                outbox: outbox.clone(),
                nudge: Mutex::new(None),
                fail: fail.clone(),
                work: work.clone(),
                me: me.clone(),
                answers: answers.clone(),
                sent: Default::default(),
            });
            let mut s = settings(id, port, Duration::from_secs(60));
            s.host = host.to_string();
            s.workflow_groups = Some(fleet.groups.clone());
            let link = FleetLink::start(s, Box::new(MemOutboxRef(outbox)), dev.clone());
            *dev.nudge.lock().unwrap_or_else(|p| p.into_inner()) = Some(link.nudge.clone());
            links.push(link);
        }
        drop(work);
        let connected = |links: &[FleetLink]| {
            links
                .iter()
                .map(|l| l.counters.connected.load(Relaxed))
                .sum::<u64>()
        };
        let t0 = Instant::now();
        let until = seconds.map(Duration::from_secs_f64);
        let mut stop = std::pin::pin!(shutdown());
        let mut last = String::new();
        loop {
            let line = format!(
                "fleet-sim devices: {} devices, {} connected; applied {}, rolled back {}, rejected {}, duplicates {} ({} answered again), refused {}",
                links.len(),
                connected(&links),
                answers.applied.load(Relaxed),
                answers.rolled_back.load(Relaxed),
                answers.rejected.load(Relaxed),
                answers.duplicate.load(Relaxed),
                answers.answered_again.load(Relaxed),
                answers.refused.load(Relaxed),
            );
            if line != last {
                println!("{line}");
                last = line;
            }
            if until.is_some_and(|u| t0.elapsed() >= u) {
                break;
            }
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        for l in links {
            l.stop().await;
        }
        workers.abort();
        anyhow::Ok(())
    })
}

/// SIGTERM or SIGINT.
async fn shutdown() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => {}
                _ = i.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}
