//! The gateway's online side: publish signed workflows over MQTT 5 (DESIGN §6), verify the
//! devices' `.mu` receipts against what was sent (and their signed model receipts), and
//! reconcile the fleet's desired state.
//!
//! Gateway state (`--state DIR`):
//! - `sent.json`: per device, the workflow it should run (id, digest, sequence, the file,
//!   the expected mirror, topic, when) — written by `publish`.
//! - `receipts.json`: per device, the last verified receipt — written by `watch-receipts`.
//! - `model-receipts.json`: per device, the last verified model receipt — written by
//!   `watch-receipts`, `model publish --serve` and `model status` (see `model_gateway`).
//! - `firmware-receipts.json`: per device, the last verified firmware receipt — written by
//!   `watch-receipts` (see `json_receipts`).
//!
//! Topics: a device's workflows go retained to `aegis/v1/{device}/workflows`, a group's to
//! `aegis/v1/groups/{group}/workflows`, so a device that was offline gets the latest one
//! when it reconnects; `fleet reconcile` re-sends to the devices whose retained status
//! still names something else.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aegis_ota::maml;
use aegis_ota::receipt::{MirrorEntry, Receipt};
use aegis_ota::sign::PublicKey;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::broker::Broker;

/// What a device should run (one `sent.json` entry).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sent {
    /// Workflow id.
    pub id: String,
    /// SHA-256 of the signed bytes.
    pub digest: String,
    /// Its sequence.
    pub sequence: u64,
    /// The signed file (for reconcile).
    pub file: PathBuf,
    /// Where it was published.
    pub topic: String,
    /// The mirror a correct receipt carries (None: sealed, and no cleartext mirror known).
    pub mirror: Option<Vec<MirrorEntry>>,
    /// When (RFC 3339).
    pub sent_at: String,
}

/// The device registry (`chimera enroll`): device or group name → entry.
pub(crate) type Registry = serde_json::Map<String, serde_json::Value>;

pub(crate) fn read_json<T: for<'de> Deserialize<'de> + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

pub(crate) fn write_json<T: Serialize>(path: &Path, v: &T) -> anyhow::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::create_dir(d)?;
    }
    // Readable as before (0666 less the umask), now also fsynced before it replaces the old.
    aegis_ota::fsutil::write_atomic_mode(path, &serde_json::to_vec_pretty(v)?, 0o666)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

pub(crate) fn registry(path: &Path) -> anyhow::Result<Registry> {
    let r: Registry = read_json(path)?;
    anyhow::ensure!(!r.is_empty(), "{}: no enrolled devices", path.display());
    Ok(r)
}

/// The enrolled devices of `group`.
pub(crate) fn members(reg: &Registry, group: &str) -> Vec<String> {
    reg.iter()
        .filter(|(_, e)| {
            e["groups"]
                .as_array()
                .is_some_and(|g| g.iter().any(|x| x == group))
        })
        .map(|(d, _)| d.clone())
        .collect()
}

/// A device's enrolled signing key (receipts are verified with it).
pub(crate) fn device_key(reg: &Registry, device: &str) -> Option<PublicKey> {
    use base64::Engine as _;
    let b64 = reg.get(device)?["signing_key"].as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    PublicKey::from_bytes(&bytes).ok()
}

/// The ML-KEM sealing key the registry holds for `name`, a device (`chimera enroll --kem`)
/// or a group (`chimera group-key`): what `chimera seal --to NAME` and the service's sealing
/// encapsulate the content key for. Errors name the entry and the registry file.
pub(crate) fn sealing_key(
    reg: &Registry,
    registry_path: &Path,
    name: &str,
) -> anyhow::Result<aegis_ota::seal::SealPublic> {
    use base64::Engine as _;
    let kem = reg
        .get(name)
        .and_then(|e| e.get("kem_key"))
        .and_then(|k| k.as_str())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{name:?} is not a device or group with an ML-KEM key in {}",
                registry_path.display()
            )
        })?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(kem)
        .map_err(|e| anyhow::anyhow!("{}: {name}'s kem_key: {e}", registry_path.display()))?;
    aegis_ota::seal::SealPublic::from_bytes(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {name}'s kem_key: {e}", registry_path.display()))
}

/// An MQTT 5 session to the broker.
pub(crate) struct Session {
    pub(crate) client: AsyncClient,
    pub(crate) events: EventLoop,
    /// Where it is connected (errors are explained with it).
    pub(crate) broker: Broker,
}

impl Session {
    /// Connects and waits for the CONNACK (10 s at most).
    pub(crate) async fn connect(broker: &Broker, client_id: &str) -> anyhow::Result<Session> {
        let (client, mut events) = AsyncClient::new(broker.options(client_id), 64);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ev = tokio::time::timeout_at(deadline.into(), events.poll())
                .await
                .map_err(|_| anyhow::anyhow!("{broker}: no CONNACK within 10 s"))?
                .map_err(|e| anyhow::anyhow!("{}", broker.failed(&e)))?;
            if let Event::Incoming(Packet::ConnAck(_)) = ev {
                return Ok(Session {
                    client,
                    events,
                    broker: broker.clone(),
                });
            }
        }
    }

    /// Publishes retained QoS 1 messages and waits for every PUBACK.
    pub(crate) async fn publish_retained(
        &mut self,
        msgs: Vec<(String, Vec<u8>)>,
    ) -> anyhow::Result<()> {
        let n = msgs.len();
        // Requests are queued while the event loop runs: the client's request queue is
        // bounded (64), so queueing all first would stall a publish to a large audience.
        let client = self.client.clone();
        let send = async move {
            for (t, p) in msgs {
                client.publish(t, QoS::AtLeastOnce, true, p).await?;
            }
            anyhow::Ok(())
        };
        let (events, broker) = (&mut self.events, &self.broker);
        let acks = async move {
            let mut acked = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while acked < n {
                let ev = tokio::time::timeout_at(deadline.into(), events.poll())
                    .await
                    .map_err(|_| {
                        anyhow::anyhow!("{acked} of {n} publishes acknowledged within 10 s")
                    })?
                    .map_err(|e| anyhow::anyhow!("{}", broker.failed(&e)))?;
                if let Event::Incoming(Packet::PubAck(_)) = ev {
                    acked += 1;
                }
            }
            anyhow::Ok(())
        };
        let (sent, acked) = tokio::join!(send, acks);
        sent?;
        acked
    }

    /// Messages on `filters` until `until` says stop or `wait` passes.
    pub(crate) async fn collect(
        &mut self,
        filters: &[&str],
        wait: Duration,
        mut until: impl FnMut(&str, &[u8]) -> bool,
    ) -> anyhow::Result<()> {
        for filter in filters {
            self.client.subscribe(*filter, QoS::AtLeastOnce).await?;
        }
        let deadline = Instant::now() + wait;
        loop {
            let ev = match tokio::time::timeout_at(deadline.into(), self.events.poll()).await {
                Err(_) => return Ok(()),
                Ok(ev) => ev.map_err(|e| anyhow::anyhow!("{}", self.broker.failed(&e)))?,
            };
            if let Event::Incoming(Packet::Publish(p)) = ev {
                let topic = String::from_utf8_lossy(&p.topic).to_string();
                if until(&topic, &p.payload) {
                    return Ok(());
                }
            }
        }
    }

    /// Disconnects cleanly (bounded).
    pub(crate) async fn close(self) {
        let Session {
            client, mut events, ..
        } = self;
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while events.poll().await.is_ok() {}
        })
        .await;
    }
}

/// The runtime the online commands run on (one thread: a CLI).
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A client id of its own per run (`chimera-WHAT-RANDOM`).
pub(crate) fn client_id(what: &str) -> String {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    format!("chimera-{what}-{:08x}", u32::from_le_bytes(b))
}

/// Which devices a canary of `percent` takes from `members`: a stable choice per key (a
/// workflow's id, a model's name: the same run picks the same devices), at least one.
pub(crate) fn canary(members: &[String], workflow_id: &str, percent: f64) -> Vec<String> {
    let mut ranked: Vec<(Vec<u8>, String)> = members
        .iter()
        .map(|d| {
            let h = sha2::Sha256::digest(format!("{workflow_id}|{d}").as_bytes()).to_vec();
            (h, d.clone())
        })
        .collect();
    ranked.sort();
    let n = ((members.len() as f64 * percent / 100.0).ceil() as usize).clamp(1, members.len());
    ranked.into_iter().take(n).map(|(_, d)| d).collect()
}

/// Where a publish goes: `--to` (either, decided by the registry) for workflows, or
/// `--device` / `--group` for models.
#[derive(Debug, Clone, Copy)]
pub(crate) enum To<'a> {
    /// An enrolled device or a group of the registry.
    Either(&'a str),
    /// An enrolled device.
    Device(&'a str),
    /// A group of the registry.
    Group(&'a str),
}

/// What a published document says about its audience, and its topics.
pub(crate) struct AudienceRules<'a> {
    /// The document, as errors name it.
    pub(crate) what: &'a str,
    /// The canary's stable key (a workflow's id, a model's name).
    pub(crate) canary_key: &'a str,
    /// Devices the document targets.
    pub(crate) target_devices: &'a [String],
    /// Groups the document targets.
    pub(crate) target_groups: &'a [String],
    /// A device's topic.
    pub(crate) device_topic: &'a dyn Fn(&str) -> String,
    /// A group's topic.
    pub(crate) group_topic: &'a dyn Fn(&str) -> String,
}

/// The devices a publish reaches and the topics it goes to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Audience {
    /// The devices that get it.
    pub(crate) devices: Vec<String>,
    /// One group topic, or one topic per device (a device, or a canary's members).
    pub(crate) topics: Vec<String>,
}

/// Resolves where a document goes: a group (its enrolled members; with a canary, a stable
/// share of them, each on its own topic) the document targets, or one enrolled device the
/// document targets by id or through one of its groups. Refuses what devices would refuse.
pub(crate) fn audience(
    reg: &Registry,
    registry_path: &Path,
    to: To<'_>,
    canary_percent: Option<f64>,
    rules: &AudienceRules<'_>,
) -> anyhow::Result<Audience> {
    let is_group =
        |g: &str| reg.get(g).is_some_and(|e| e["group"] == true) || !members(reg, g).is_empty();
    let group = match to {
        To::Either(x) if is_group(x) => Some(x),
        To::Either(x) | To::Device(x) => {
            anyhow::ensure!(
                reg.contains_key(x) && !(matches!(to, To::Device(_)) && is_group(x)),
                "{x:?} is {} in {}",
                if matches!(to, To::Device(_)) {
                    "not an enrolled device"
                } else {
                    "neither an enrolled device nor a group"
                },
                registry_path.display()
            );
            None
        }
        To::Group(g) => {
            anyhow::ensure!(
                is_group(g),
                "{g:?} is not a group in {}",
                registry_path.display()
            );
            Some(g)
        }
    };
    let Some(to) = group else {
        let to = match to {
            To::Either(x) | To::Device(x) | To::Group(x) => x,
        };
        anyhow::ensure!(canary_percent.is_none(), "--canary needs a group");
        anyhow::ensure!(
            rules.target_devices.iter().any(|d| d == to)
                || rules
                    .target_groups
                    .iter()
                    .any(|g| members(reg, g).iter().any(|m| m == to)),
            "{} does not target {to:?}: the device would refuse it",
            rules.what
        );
        return Ok(Audience {
            devices: vec![to.to_string()],
            topics: vec![(rules.device_topic)(to)],
        });
    };
    anyhow::ensure!(
        rules.target_groups.iter().any(|g| g == to),
        "{} targets groups {:?}, not {to:?}: devices would refuse it",
        rules.what,
        rules.target_groups
    );
    let all = members(reg, to);
    anyhow::ensure!(!all.is_empty(), "group {to:?} has no enrolled members");
    Ok(match canary_percent {
        Some(p) => {
            let chosen = canary(&all, rules.canary_key, p);
            let topics = chosen.iter().map(|d| (rules.device_topic)(d)).collect();
            Audience {
                devices: chosen,
                topics,
            }
        }
        None => Audience {
            devices: all,
            topics: vec![(rules.group_topic)(to)],
        },
    })
}

/// `chimera publish`: [`plan_publish`], then [`send_publish`].
pub fn publish(
    file: &Path,
    to: &str,
    canary_percent: Option<f64>,
    broker: &Broker,
    registry_path: &Path,
    state: &Path,
) -> anyhow::Result<()> {
    let plan = plan_publish(file, to, canary_percent, registry_path)?;
    send_publish(&plan, broker, state)?;
    println!("{}", plan.summary());
    Ok(())
}

/// A publish decided, not yet sent: the document, what it is, who gets it on which topics.
pub(crate) struct PublishPlan {
    /// The signed file (recorded in `sent.json` for reconcile).
    pub(crate) file: PathBuf,
    /// Its bytes as published.
    pub(crate) doc: Vec<u8>,
    /// Workflow id.
    pub(crate) id: String,
    /// Its sequence.
    pub(crate) sequence: u64,
    /// SHA-256 of the signed bytes.
    pub(crate) digest: String,
    /// The mirror a correct receipt carries.
    pub(crate) mirror: Option<Vec<MirrorEntry>>,
    /// The devices that get it.
    pub(crate) devices: Vec<String>,
    /// The topics it goes to.
    pub(crate) topics: Vec<String>,
    /// The canary percentage, if any.
    pub(crate) canary_percent: Option<f64>,
}

impl PublishPlan {
    /// The line `chimera publish` prints.
    pub(crate) fn summary(&self) -> String {
        format!(
            "published {} (sequence {}, sha256 {}) to {} for {} device(s){}",
            self.id,
            self.sequence,
            &self.digest[..16],
            self.topics.join(", "),
            self.devices.len(),
            self.canary_percent
                .map(|p| format!(" (canary {p}%)"))
                .unwrap_or_default()
        )
    }
}

/// Reads the signed file and decides who gets it (registry, targets, canary): every refusal
/// a device would make about its audience happens here, before the broker is involved.
pub(crate) fn plan_publish(
    file: &Path,
    to: &str,
    canary_percent: Option<f64>,
    registry_path: &Path,
) -> anyhow::Result<PublishPlan> {
    // The document first: a missing or unsigned file is what an error names, whatever the
    // registry holds.
    let read = read_plan(file)?;
    plan_audience(
        read,
        file,
        to,
        canary_percent,
        &registry(registry_path)?,
        registry_path,
    )
}

/// [`plan_publish`] with the registry read already (`chimera serve` takes the devices it
/// un-enrolled out of it); `registry_path` names it in errors.
pub(crate) fn plan_publish_in(
    file: &Path,
    to: &str,
    canary_percent: Option<f64>,
    reg: &Registry,
    registry_path: &Path,
) -> anyhow::Result<PublishPlan> {
    plan_audience(
        read_plan(file)?,
        file,
        to,
        canary_percent,
        reg,
        registry_path,
    )
}

/// The devices and topics `file` (read already) goes to.
fn plan_audience(
    (mut plan, parsed): (PublishPlan, maml::Document),
    file: &Path,
    to: &str,
    canary_percent: Option<f64>,
    reg: &Registry,
    registry_path: &Path,
) -> anyhow::Result<PublishPlan> {
    let f = &parsed.front;
    let Audience { devices, topics } = audience(
        reg,
        registry_path,
        To::Either(to),
        canary_percent,
        &AudienceRules {
            what: &file.display().to_string(),
            canary_key: &f.id,
            target_devices: &f.target.devices,
            target_groups: &f.target.groups,
            device_topic: &|d| workflow_topic(d),
            group_topic: &|g| format!("aegis/v1/groups/{g}/workflows"),
        },
    )?;
    plan.devices = devices;
    plan.topics = topics;
    plan.canary_percent = canary_percent;
    Ok(plan)
}

/// A device's retained workflow topic.
pub(crate) fn workflow_topic(device: &str) -> String {
    format!("aegis/v1/{device}/workflows")
}

/// A plan for `devices`, each on its own retained topic, whose audience was decided
/// already (a rollout's step, a rollback, a reconcile: checked when the rollout was made).
pub(crate) fn plan_devices(file: &Path, devices: Vec<String>) -> anyhow::Result<PublishPlan> {
    let (mut plan, _) = read_plan(file)?;
    plan.topics = devices.iter().map(|d| workflow_topic(d)).collect();
    plan.devices = devices;
    Ok(plan)
}

/// The signed file read and parsed into a plan with no audience yet.
fn read_plan(file: &Path) -> anyhow::Result<(PublishPlan, maml::Document)> {
    let doc = crate::read_file(file)?;
    let (signed, _) =
        maml::split_signed(&doc).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let parsed = maml::parse(&signed).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let digest = aegis_ota::sha256_hex(&signed);
    // Devices mirror the sections as transmitted (for a sealed document, the ciphertext):
    // a receipt never carries digests of sealed cleartext.
    let mirror = Some(aegis_ota::receipt::mirror(&parsed));
    let f = &parsed.front;
    let plan = PublishPlan {
        file: std::fs::canonicalize(file)
            .map_err(|e| anyhow::anyhow!("cannot resolve {}: {e}", file.display()))?,
        doc,
        id: f.id.clone(),
        sequence: f.sequence,
        digest,
        mirror,
        devices: Vec::new(),
        topics: Vec::new(),
        canary_percent: None,
    };
    Ok((plan, parsed))
}

/// Publishes a plan (retained, QoS 1, every PUBACK awaited) and records it in `sent.json`.
pub(crate) fn send_publish(
    plan: &PublishPlan,
    broker: &Broker,
    state: &Path,
) -> anyhow::Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(broker, &client_id("publish")).await?;
        s.publish_retained(
            plan.topics
                .iter()
                .map(|t| (t.clone(), plan.doc.clone()))
                .collect(),
        )
        .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    let sent_path = state.join("sent.json");
    let mut sent: BTreeMap<String, Sent> = read_json(&sent_path)?;
    for (i, d) in plan.devices.iter().enumerate() {
        sent.insert(
            d.clone(),
            Sent {
                id: plan.id.clone(),
                digest: plan.digest.clone(),
                sequence: plan.sequence,
                file: plan.file.clone(),
                topic: plan.topics.get(i).unwrap_or(&plan.topics[0]).clone(),
                mirror: plan.mirror.clone(),
                sent_at: crate::now_rfc3339(0),
            },
        );
    }
    write_json(&sent_path, &sent)
}

/// One receipt judged against what was sent.
#[derive(Debug, Serialize, Deserialize)]
struct Judged {
    verdict: String,
    workflow_id: String,
    sequence: u64,
    digest_matches: bool,
    mirror: String,
    reason: String,
    apply_ms: Option<f64>,
    at: String,
}

/// `chimera watch-receipts`: verifies each receipt's signature with the device's enrolled
/// key — a workflow receipt's digest and mirror against what was sent too; a model or
/// firmware receipt (told by its `type`) is printed and kept in `model-receipts.json` or
/// `firmware-receipts.json` ([`crate::json_receipts`]) — and exits non-zero if any fails.
pub fn watch_receipts(
    broker: &Broker,
    registry_path: &Path,
    state: &Path,
    count: usize,
    timeout: Duration,
) -> anyhow::Result<()> {
    let reg = registry(registry_path)?;
    let sent_path = state.join("sent.json");
    let receipts_path = state.join("receipts.json");
    let mut judged: BTreeMap<String, Judged> = read_json(&receipts_path)?;
    let mut seen = 0usize;
    let mut bad = 0usize;
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(broker, &client_id("receipts")).await?;
        s.collect(&["aegis/v1/+/receipts"], timeout, |topic, payload| {
            let device = topic.split('/').nth(2).unwrap_or("?").to_string();
            if let Some(kind) = crate::json_receipts::Kind::of(payload) {
                // A model or firmware receipt: verified, recorded in its own file (for
                // `chimera model status`, the firmware records); not one of the workflow
                // receipts counted here.
                match kind.record_line(&reg, state, &device, payload) {
                    Ok(line) => println!("{device}: {line}"),
                    Err(e) => {
                        println!("{device}: BAD {}: {e}", kind.name());
                        bad += 1;
                    }
                }
                return false;
            }
            if payload.first() == Some(&b'{') {
                println!(
                    "{device}: unsigned rejection notice {}",
                    String::from_utf8_lossy(payload)
                );
                return false;
            }
            seen += 1;
            let Some(key) = device_key(&reg, &device) else {
                println!("{device}: BAD receipt from a device not in the registry");
                bad += 1;
                return seen >= count;
            };
            match Receipt::verify(payload, &key) {
                Err(e) => {
                    println!("{device}: BAD {e}");
                    bad += 1;
                }
                Ok(r) if r.mode == "trust" => {
                    // A trust metadata acknowledgement: not a workflow answer.
                    seen -= 1;
                    println!(
                        "{device}: trust metadata version {} installed (sha256 {}) — signature ok",
                        r.sequence, r.workflow_sha256
                    );
                }
                Ok(r) => {
                    // Read now: a publish may have happened after the watch began.
                    let sent: BTreeMap<String, Sent> = read_json(&sent_path).unwrap_or_default();
                    let expected = sent.get(&device).filter(|x| x.id == r.workflow_id);
                    let digest_ok = expected.is_some_and(|x| x.digest == r.workflow_sha256);
                    let mirror = match expected.map(|x| &x.mirror) {
                        None => "not sent from here".to_string(),
                        Some(None) => "not checked (sent by an older chimera)".into(),
                        Some(Some(m)) if *m == r.mirror => "ok".into(),
                        Some(Some(_)) => "MISMATCH".into(),
                    };
                    let sent_here = expected.is_some();
                    if sent_here && (!digest_ok || mirror == "MISMATCH") {
                        bad += 1;
                    }
                    println!(
                        "{device}: {} {} sequence {} ({}) — signature ok, digest {}, mirror {}{}{}",
                        r.verdict.as_str(),
                        r.workflow_id,
                        r.sequence,
                        r.mode,
                        if !sent_here {
                            "?"
                        } else if digest_ok {
                            "ok"
                        } else {
                            "MISMATCH"
                        },
                        mirror,
                        r.apply_ms
                            .map(|m| format!(", {m:.1} ms"))
                            .unwrap_or_default(),
                        if r.reason.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", r.reason)
                        }
                    );
                    judged.insert(
                        device,
                        Judged {
                            verdict: r.verdict.as_str().into(),
                            workflow_id: r.workflow_id,
                            sequence: r.sequence,
                            digest_matches: digest_ok,
                            mirror,
                            reason: r.reason,
                            apply_ms: r.apply_ms,
                            at: r.at,
                        },
                    );
                }
            }
            seen >= count
        })
        .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    write_json(&receipts_path, &judged)?;
    anyhow::ensure!(bad == 0, "{bad} receipt(s) failed verification");
    anyhow::ensure!(
        seen >= count,
        "{seen} of {count} receipt(s) arrived within {timeout:?}"
    );
    Ok(())
}

/// A device's line in `fleet status`.
#[derive(Debug, Serialize)]
struct Row {
    device: String,
    online: Option<bool>,
    running: Option<String>,
    running_digest: Option<String>,
    desired: Option<String>,
    state: &'static str,
    last_receipt: Option<String>,
}

fn fleet_rows(
    broker: &Broker,
    registry_path: &Path,
    state: &Path,
    wait: Duration,
) -> anyhow::Result<(Vec<Row>, BTreeMap<String, Sent>)> {
    let reg = registry(registry_path)?;
    let sent: BTreeMap<String, Sent> = read_json(&state.join("sent.json"))?;
    let receipts: BTreeMap<String, Judged> = read_json(&state.join("receipts.json"))?;
    let devices: Vec<String> = reg
        .iter()
        .filter(|(_, e)| e["group"] != true)
        .map(|(d, _)| d.clone())
        .collect();
    let mut status: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(broker, &client_id("status")).await?;
        let n = devices.len();
        s.collect(&["aegis/v1/+/status"], wait, |topic, payload| {
            let device = topic.split('/').nth(2).unwrap_or("?").to_string();
            if let Ok(v) = serde_json::from_slice(payload) {
                status.insert(device, v);
            }
            status.len() >= n
        })
        .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    let rows = devices
        .into_iter()
        .map(|d| {
            let st = status.get(&d);
            let active = st.map(|s| &s["workflow"]["active"]);
            let running_digest = active.and_then(|a| a["digest"].as_str()).map(String::from);
            let desired = sent.get(&d);
            let state = match (st, desired) {
                (None, _) => "unknown",
                (Some(_), None) => "no desired workflow",
                (Some(_), Some(x)) if running_digest.as_deref() == Some(x.digest.as_str()) => {
                    "in sync"
                }
                (Some(_), Some(_)) => "behind",
            };
            Row {
                online: st.map(|s| s["state"] == "online"),
                running: active.and_then(|a| a["id"].as_str()).map(String::from),
                running_digest,
                desired: desired.map(|x| x.id.clone()),
                state,
                last_receipt: receipts
                    .get(&d)
                    .map(|r| format!("{} {} (sequence {})", r.verdict, r.workflow_id, r.sequence)),
                device: d,
            }
        })
        .collect();
    Ok((rows, sent))
}

/// `chimera fleet status`.
pub fn fleet_status(
    broker: &Broker,
    registry_path: &Path,
    state: &Path,
    wait: Duration,
    json: bool,
) -> anyhow::Result<()> {
    let (rows, _) = fleet_rows(broker, registry_path, state, wait)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<20} {:<8} {:<22} {:<45} last receipt",
        "device", "online", "state", "running"
    );
    for r in &rows {
        println!(
            "{:<20} {:<8} {:<22} {:<45} {}",
            r.device,
            match r.online {
                Some(true) => "yes",
                Some(false) => "no",
                None => "?",
            },
            r.state,
            r.running.as_deref().unwrap_or("(local default)"),
            r.last_receipt.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

/// `chimera fleet reconcile`: re-sends the desired workflow (retained, on the device's own
/// topic) to every device whose status names something else — except where the device
/// already answered that workflow with a rollback or rejection (re-sending cannot help;
/// it needs a new workflow).
pub fn fleet_reconcile(
    broker: &Broker,
    registry_path: &Path,
    state: &Path,
    wait: Duration,
) -> anyhow::Result<()> {
    let (rows, sent) = fleet_rows(broker, registry_path, state, wait)?;
    let receipts: BTreeMap<String, Judged> = read_json(&state.join("receipts.json"))?;
    let mut msgs = Vec::new();
    for r in rows
        .iter()
        .filter(|r| r.state == "behind" || (r.state == "unknown" && sent.contains_key(&r.device)))
    {
        let x = &sent[&r.device];
        if let Some(j) = receipts
            .get(&r.device)
            .filter(|j| j.workflow_id == x.id && j.verdict != "applied")
        {
            println!(
                "{}: skipped — it answered {} with {} ({})",
                r.device, x.id, j.verdict, j.reason
            );
            continue;
        }
        let doc = crate::read_file(&x.file)?;
        msgs.push((
            r.device.clone(),
            format!("aegis/v1/{}/workflows", r.device),
            doc,
        ));
    }
    if msgs.is_empty() {
        println!("every device with a desired workflow runs it");
        return Ok(());
    }
    let rt = runtime()?;
    rt.block_on(async {
        let mut s = Session::connect(broker, &client_id("reconcile")).await?;
        s.publish_retained(
            msgs.iter()
                .map(|(_, t, d)| (t.clone(), d.clone()))
                .collect(),
        )
        .await?;
        s.close().await;
        anyhow::Ok(())
    })?;
    for (d, t, _) in &msgs {
        println!("{d}: re-sent {} on {t}", sent[d].id);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_of_devices_groups_and_canaries() {
        let mut reg = Registry::new();
        for i in 0..10 {
            reg.insert(format!("d{i}"), serde_json::json!({ "groups": ["site-a"] }));
        }
        reg.insert("x".into(), serde_json::json!({ "groups": ["site-b"] }));
        let groups = vec!["site-a".to_string()];
        let rules = AudienceRules {
            what: "m.signed",
            canary_key: "model:moderation",
            target_devices: &[],
            target_groups: &groups,
            device_topic: &|d| format!("aegis/v1/{d}/models"),
            group_topic: &|g| format!("aegis/v1/groups/{g}/models"),
        };
        let path = Path::new("devices.json");
        let all = audience(&reg, path, To::Group("site-a"), None, &rules).unwrap();
        assert_eq!(all.devices.len(), 10);
        assert_eq!(
            all.topics,
            vec!["aegis/v1/groups/site-a/models".to_string()]
        );
        let c = audience(&reg, path, To::Group("site-a"), Some(20.0), &rules).unwrap();
        let members: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        assert_eq!(c.devices, canary(&members, "model:moderation", 20.0));
        assert_eq!(
            c.topics,
            c.devices
                .iter()
                .map(|d| format!("aegis/v1/{d}/models"))
                .collect::<Vec<_>>()
        );
        let one = audience(&reg, path, To::Device("d3"), None, &rules).unwrap();
        assert_eq!(one.topics, vec!["aegis/v1/d3/models".to_string()]);
        for (to, canary, why) in [
            (To::Device("site-a"), None, "not an enrolled device"),
            (To::Group("d3"), None, "not a group"),
            (To::Device("x"), None, "does not target \"x\""),
            (To::Group("site-b"), None, "targets groups"),
            (To::Device("d3"), Some(10.0), "--canary needs a group"),
            (
                To::Either("nobody"),
                None,
                "neither an enrolled device nor a group",
            ),
        ] {
            let e = audience(&reg, path, to, canary, &rules)
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{to:?}: {e}");
        }
    }

    #[test]
    fn canary_is_stable_and_sized() {
        let m: Vec<String> = (0..10).map(|i| format!("d{i}")).collect();
        let a = canary(&m, "urn:uuid:1", 20.0);
        assert_eq!(a.len(), 2);
        assert_eq!(a, canary(&m, "urn:uuid:1", 20.0));
        assert_eq!(canary(&m, "urn:uuid:1", 0.1).len(), 1);
        assert_eq!(canary(&m, "urn:uuid:1", 100.0).len(), 10);
    }
}
