//! Simulated devices for the gateway's tests. Each has its own ML-DSA key (enrolled in the
//! `devices.json` this writes), runs the device's own workflow state — `aegis_ota::state::
//! Workflows`: the checks of DESIGN §5 against its trust metadata, trial and commit,
//! anti-replay, the answered digests, the signed `.mu` receipt — and speaks MQTT 5 as the
//! agent's fleet link does: a retained status with an `offline` last will, the per-device and
//! group workflow topics, receipts with QoS 1. What a device does with a document it verified
//! can be set per document ([`Behaviour`]): apply it (the default), reject it, fail its
//! health check, stay silent, or hold it until released.
//!
//! Everything lives under one directory and runs on one runtime the [`Fleet`] owns, so a
//! test stays synchronous. Sized for a handful to a few hundred devices per process (each
//! device is a task and an MQTT connection; each answer writes its state file, fsynced).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_ota::firmware::{self, FirmwareReceipt};
use aegis_ota::maml::{Draft, format_time, normalise, now_s, workflow_text};
use aegis_ota::receipt::{Receipt, Verdict};
use aegis_ota::sign::{Purpose, SecretKey};
use aegis_ota::state::{Outcome, Subject, Workflows};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::json;
use tokio::sync::mpsc;

/// What a device does with a document whose checks passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Applies it and answers `applied`.
    Apply,
    /// Answers `rejected` (as for a policy refusal), keeps what it runs.
    Reject,
    /// Applies it, fails the health check, goes back, answers `rolled_back`.
    FailHealth,
    /// Never answers (and does not apply it).
    Silent,
    /// Keeps it unanswered until [`Fleet::release`], then applies it.
    Hold,
}

/// A signed workflow for the fleet's group.
#[derive(Debug, Clone)]
pub struct SignedWorkflow {
    /// The signed text.
    pub text: String,
    /// SHA-256 of the signed bytes (what receipts name).
    pub digest: String,
}

/// What the devices saw and did, shared with their tasks.
#[derive(Default)]
struct Shared {
    /// Per device and digest (`""`: any), the behaviour; default Apply.
    behaviour: HashMap<(String, String), Behaviour>,
    /// Per device: the digests of the documents received, in order.
    received: HashMap<String, Vec<String>>,
    /// Per device: (digest, verdict) of each receipt sent.
    answered: HashMap<String, Vec<(String, String)>>,
}

/// A running device's tasks; dropping it cuts the connection without a DISCONNECT, so the
/// broker publishes its `offline` last will.
struct Running {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

enum Command {
    Release,
}

/// Provisioned devices, their trust, the issuer, and the devices that run.
pub struct Fleet {
    /// The directory everything is in.
    pub dir: PathBuf,
    /// The group every device is in.
    pub group: String,
    /// Device ids, sorted.
    pub devices: Vec<String>,
    /// The issuer key (`gw-1` in the trust metadata, may target any device or group).
    pub issuer: SecretKey,
    port: u16,
    rt: tokio::runtime::Runtime,
    shared: Arc<Mutex<Shared>>,
    running: Mutex<HashMap<String, Running>>,
}

fn b64(k: &SecretKey) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(k.public().to_bytes())
}

impl Fleet {
    /// Provisions `n` devices (`dev-0000`, …) in `group` under `dir`: `root.pub`,
    /// `trust.signed.json` (issuer `gw-1`), `devices.json` (the registry), and per device
    /// `devices/ID/{aegis.yaml, keys/device.key}`. Nothing runs yet; the broker is on
    /// `port`.
    pub fn provision(dir: &Path, n: usize, group: &str, port: u16) -> Fleet {
        let root = SecretKey::generate().unwrap();
        let issuer = SecretKey::generate().unwrap();
        std::fs::write(dir.join("root.pub"), root.public().to_file_text()).unwrap();
        let trust = TrustMetadata {
            kind: "aegis-trust".into(),
            version: 1,
            expires_at: format_time(now_s() + 86_400),
            root: Roots {
                threshold: 1,
                keys: vec![b64(&root)],
            },
            issuers: vec![Issuer {
                name: "gw-1".into(),
                key: b64(&issuer),
                devices: vec!["*".into()],
                groups: vec!["*".into()],
                models: false,
                firmware: Default::default(),
            }],
            revoked: vec![],
        };
        std::fs::write(dir.join("trust.signed.json"), trust.sign(&[&root]).unwrap()).unwrap();
        let mut registry = serde_json::Map::new();
        let mut devices = Vec::new();
        for i in 0..n {
            let id = format!("dev-{i:04}");
            let d = dir.join("devices").join(&id);
            std::fs::create_dir_all(d.join("keys")).unwrap();
            let key = SecretKey::generate().unwrap();
            key.write(&d.join("keys/device.key")).unwrap();
            registry.insert(
                id.clone(),
                json!({ "signing_key": b64(&key), "key_id": key.public().id(),
                        "groups": [group] }),
            );
            std::fs::write(
                d.join("aegis.yaml"),
                format!(
                    "device: {{ id: {id}, groups: [{group}] }}\n\
                     pipeline:\n  sources: [{{ id: cam0, url: \"file://{top}/clip.mp4\" }}]\n  \
                     stages: []\n  sinks: [{{ kind: discard }}]\n\
                     store: {{ path: {d}/aegis.db }}\n\
                     workflows:\n  enabled: true\n  state_dir: {d}/wf\n  keys_dir: {d}/keys\n  \
                     trust: {{ roots: [{top}/root.pub], metadata: {top}/trust.signed.json }}\n  \
                     policy: {{ paths: [{top}] }}\n",
                    top = dir.display(),
                    d = d.display()
                ),
            )
            .unwrap();
            devices.push(id);
        }
        std::fs::write(
            dir.join("devices.json"),
            serde_json::to_vec_pretty(&registry).unwrap(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Fleet {
            dir: dir.to_path_buf(),
            group: group.to_string(),
            devices,
            issuer,
            port,
            rt,
            shared: Default::default(),
            running: Default::default(),
        }
    }

    /// A workflow for the group, signed by the issuer: `sequence`, issued `age_s` ago
    /// (a rollback is a later sequence issued later: a smaller age).
    pub fn workflow(&self, sequence: u64, age_s: i64) -> SignedWorkflow {
        let now = now_s();
        let text = workflow_text(
            &Draft {
                id: &format!("00000000-0000-4000-8000-{sequence:012x}"),
                issuer: "gw-1",
                devices: &[],
                groups: &[&self.group],
                sequence,
                issued_at: &format_time(now - age_s),
                expires_at: &format_time(now + 86_400),
            },
            &format!(
                "sources: [{{ id: cam0, url: \"file://{}/clip.mp4\" }}]\n\
                 stages: [{{ kind: passthrough }}]\nsinks: [{{ kind: discard }}]",
                self.dir.display()
            ),
        );
        let mut signed = normalise(text.as_bytes());
        let digest = aegis_ota::sha256_hex(&signed);
        let block = self.issuer.sign_block(&signed, Purpose::Workflow).unwrap();
        signed.extend_from_slice(block.render().as_bytes());
        SignedWorkflow {
            text: String::from_utf8(signed).unwrap(),
            digest,
        }
    }

    /// Sets what `device` does with document `digest` (`""`: with any document).
    pub fn set(&self, device: &str, digest: &str, b: Behaviour) {
        self.shared
            .lock()
            .unwrap()
            .behaviour
            .insert((device.to_string(), digest.to_string()), b);
    }

    /// Starts these devices (each connects, says online, subscribes, answers).
    pub fn start(&self, devices: &[String]) {
        for id in devices {
            let (commands, rx) = mpsc::unbounded_channel();
            let tasks = self.rt.block_on(async {
                spawn_device(
                    id.clone(),
                    self.dir.join("devices").join(id).join("aegis.yaml"),
                    self.group.clone(),
                    self.port,
                    self.shared.clone(),
                    rx,
                )
            });
            self.running
                .lock()
                .unwrap()
                .insert(id.clone(), Running { tasks, commands });
        }
    }

    /// Stops a device abruptly (its last will says offline); its state stays on disk.
    pub fn stop(&self, device: &str) {
        self.running.lock().unwrap().remove(device);
    }

    /// Lets a device answer what it holds (it applies it).
    pub fn release(&self, device: &str) {
        if let Some(r) = self.running.lock().unwrap().get(device) {
            let _ = r.commands.send(Command::Release);
        }
    }

    /// The digests of the documents `device` received, in order.
    pub fn received(&self, device: &str) -> Vec<String> {
        let s = self.shared.lock().unwrap();
        s.received.get(device).cloned().unwrap_or_default()
    }

    /// (digest, verdict) of every receipt `device` sent.
    pub fn answered(&self, device: &str) -> Vec<(String, String)> {
        let s = self.shared.lock().unwrap();
        s.answered.get(device).cloned().unwrap_or_default()
    }

    /// Publishes `payload` on `topic` (QoS 1) as a client of its own; an empty retained
    /// payload clears the topic's retained message.
    pub fn publish(&self, topic: &str, payload: &[u8], retain: bool) {
        let port = self.port;
        self.rt.block_on(async move {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let client_id = format!("fleet-test-{}-{n}", std::process::id());
            let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
            o.set_max_packet_size(Some(256 * 1024));
            let (client, mut events) = AsyncClient::new(o, 16);
            client
                .publish(topic, QoS::AtLeastOnce, retain, payload.to_vec())
                .await
                .unwrap();
            // A hang guard, not a speed check.
            tokio::time::timeout(Duration::from_secs(30), async {
                loop {
                    if let Event::Incoming(Packet::PubAck(_)) = events.poll().await.unwrap() {
                        break;
                    }
                }
            })
            .await
            .expect("no PUBACK");
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
        });
    }

    /// A workflow receipt `claims` to be from device `claims`, signed with `signer`'s key
    /// (a forgery when they differ).
    pub fn receipt(&self, signer: &str, claims: &str, digest: &str, verdict: Verdict) -> String {
        Receipt {
            kind: "receipt".into(),
            device: claims.into(),
            workflow_id: "urn:uuid:00000000-0000-4000-8000-000000000001".into(),
            workflow_sha256: digest.into(),
            sequence: 1,
            verdict,
            reason: String::new(),
            trust_version: 1,
            at: format_time(now_s()),
            mode: "in_place".into(),
            apply_ms: Some(1.0),
            mirror: vec![],
        }
        .render_signed(&self.key(signer))
        .unwrap()
    }

    /// A firmware receipt (`aegis-image` 1.4.0 applied, running in slot B) that `claims`
    /// to be from device `claims`, signed with `signer`'s key.
    pub fn firmware_receipt(&self, signer: &str, claims: &str) -> String {
        FirmwareReceipt {
            kind: firmware::RECEIPT_TYPE.into(),
            device: claims.into(),
            image: "aegis-image".into(),
            version: "1.4.0".into(),
            order_sha256: "ab".repeat(32),
            verdict: Verdict::Applied,
            reason: String::new(),
            running_version: "1.4.0".into(),
            slot: Some(firmware::Slot::B),
            trust_version: 1,
            at: format_time(now_s()),
        }
        .render_signed(&self.key(signer))
        .unwrap()
    }

    /// `device`'s signing key.
    pub fn key(&self, device: &str) -> SecretKey {
        SecretKey::read(
            &self
                .dir
                .join("devices")
                .join(device)
                .join("keys/device.key"),
        )
        .unwrap()
    }
}

/// A device's inputs, in order: connection events and documents.
enum Input {
    Connected,
    Document(Vec<u8>),
}

fn spawn_device(
    id: String,
    config: PathBuf,
    group: String,
    port: u16,
    shared: Arc<Mutex<Shared>>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let status_topic = format!("aegis/v1/{id}/status");
    let mut o = MqttOptions::new(id.clone(), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(5));
    o.set_clean_start(true);
    o.set_max_packet_size(Some(256 * 1024));
    o.set_last_will(LastWill::new(
        status_topic.clone(),
        json!({ "state": "offline", "device": id }).to_string(),
        QoS::AtLeastOnce,
        true,
        None,
    ));
    let (client, mut events) = AsyncClient::new(o, 64);
    let (tx, mut inputs) = mpsc::unbounded_channel();
    // The connection: its events go to the device in order (the link's event loop).
    let link = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = tx.send(Input::Connected);
                }
                Ok(Event::Incoming(Packet::Publish(p))) if !p.payload.is_empty() => {
                    let _ = tx.send(Input::Document(p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    let device = tokio::spawn(async move {
        let cfg = aegis_config::load(&config).unwrap();
        let mut wf = Workflows::open(&cfg).unwrap();
        let mut held: Vec<Vec<u8>> = Vec::new();
        let status = |wf: &Workflows| {
            json!({ "state": "online", "device": id, "workflow": wf.status() })
                .to_string()
                .into_bytes()
        };
        loop {
            let (doc, release) = tokio::select! {
                i = inputs.recv() => match i {
                    Some(Input::Connected) => {
                        let _ = client
                            .publish(&status_topic, QoS::AtLeastOnce, true, status(&wf))
                            .await;
                        for t in [
                            format!("aegis/v1/{id}/workflows"),
                            format!("aegis/v1/groups/{group}/workflows"),
                        ] {
                            let _ = client.subscribe(t, QoS::AtLeastOnce).await;
                        }
                        continue;
                    }
                    Some(Input::Document(doc)) => (doc, false),
                    None => return,
                },
                c = commands.recv() => match c {
                    Some(Command::Release) if !held.is_empty() => (held.remove(0), true),
                    Some(Command::Release) => continue,
                    None => return,
                },
            };
            let digest = aegis_ota::maml::split_signed(&doc)
                .map(|(signed, _)| aegis_ota::sha256_hex(&signed))
                .unwrap_or_else(|_| "?".into());
            let behaviour = {
                let mut s = shared.lock().unwrap();
                if !release {
                    s.received
                        .entry(id.clone())
                        .or_default()
                        .push(digest.clone());
                }
                let b = |d: &str| s.behaviour.get(&(id.clone(), d.to_string())).copied();
                match (release, b(&digest).or_else(|| b(""))) {
                    (true, _) => Behaviour::Apply,
                    (false, b) => b.unwrap_or(Behaviour::Apply),
                }
            };
            if behaviour == Behaviour::Hold {
                held.push(doc);
                continue;
            }
            let Some((verdict, receipt)) = answer(&mut wf, &doc, behaviour) else {
                continue;
            };
            let _ = client
                .publish(
                    format!("aegis/v1/{id}/receipts"),
                    QoS::AtLeastOnce,
                    false,
                    receipt.into_bytes(),
                )
                .await;
            let _ = client
                .publish(&status_topic, QoS::AtLeastOnce, true, status(&wf))
                .await;
            shared
                .lock()
                .unwrap()
                .answered
                .entry(id.clone())
                .or_default()
                .push((digest, verdict));
        }
    });
    vec![link, device]
}

/// What the agent's applier does with one document (`agent/src/workflows/apply.rs`,
/// `Applier::handle`), without a pipeline: unauthenticated input gets no signed answer, a
/// digest answered before (or running) gets none again, an authenticated refusal is
/// answered `rejected`, a verified document is applied on trial and committed (or, by
/// `behaviour`, refused or rolled back). The answer is recorded before its receipt is
/// signed. Returns the verdict and the signed receipt.
fn answer(wf: &mut Workflows, doc: &[u8], behaviour: Behaviour) -> Option<(String, String)> {
    let running = |wf: &Workflows, digest: &str| {
        wf.state()
            .active
            .as_ref()
            .is_some_and(|a| a.digest == digest)
    };
    let outcome = |verdict, reason: &str, mode| Outcome {
        verdict,
        reason: reason.to_string(),
        mode,
        apply_ms: 1.0,
    };
    let v = match wf.verify(doc) {
        Ok(v) => v,
        Err(refusal) => {
            let a = refusal.authenticated?;
            if wf.answered(&a.digest) || running(wf, &a.digest) {
                return None;
            }
            wf.record_answer(&a.digest).unwrap();
            let o = outcome(Verdict::Rejected, &refusal.rejection.to_string(), "none");
            let r = wf.receipt(Subject::Authenticated(&a), &o).unwrap();
            return Some(("rejected".into(), r));
        }
    };
    if wf.answered(&v.digest) || running(wf, &v.digest) {
        return None;
    }
    let o = match behaviour {
        Behaviour::Silent | Behaviour::Hold => return None,
        Behaviour::Apply => {
            wf.begin(doc, &v).unwrap();
            wf.commit().unwrap();
            outcome(Verdict::Applied, "", "in_place")
        }
        Behaviour::FailHealth => {
            wf.begin(doc, &v).unwrap();
            wf.rollback().unwrap();
            outcome(Verdict::RolledBack, "health: injected failure", "in_place")
        }
        Behaviour::Reject => {
            wf.consume_sequence(&v).unwrap();
            outcome(Verdict::Rejected, "policy: injected refusal", "none")
        }
    };
    wf.record_answer(&v.digest).unwrap();
    let r = wf.receipt(Subject::Verified(&v), &o).unwrap();
    Some((o.verdict.as_str().to_string(), r))
}
