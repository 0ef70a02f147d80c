//! Receipts and status from the broker, shared between replicas by MQTT 5 shared
//! subscriptions: every replica subscribes to `$share/GROUP/aegis/v1/+/receipts` and
//! `$share/GROUP/aegis/v1/+/status`, and the broker gives each message to one member of the
//! group (mosquitto: round robin over the connected members). The database, not the broker,
//! is the truth: receipts are idempotent rows, status rows are last-writer-wins guarded by
//! arrival time.
//!
//! **Receipts** are verified with the key enrolled for the device named by the *topic*
//! (`service::store_receipt`; a claim inside the receipt never picks the key), stored
//! (verified or not, with the reason), and a verified workflow receipt settles the rollout
//! targets waiting for it (an un-enrolled device's are stored unverified, saying so, and
//! its status is not stored). Not stored: model receipts (their own format and checks,
//! `chimera model status`; counted as skipped here) and the agents' unsigned rejection
//! notices (JSON; counted). Receipts are not retained messages.
//!
//! **Status** is the device's retained current state (`{"state": "online" | "offline",
//! "workflow": {"active": {"id", "digest"}}}`, offline being its last will). Live changes come
//! through the shared subscription with Retain Handling 2 ("never send retained"): mosquitto
//! 2.0.11 (Debian 12) otherwise hands retained messages to shared subscriptions too, so each
//! replica would get every device's status again on each (re)connect. The retained copies
//! are still wanted once — they are the fleet's current state, and it may have changed while
//! no replica ran — so on each (re)connect a replica also subscribes to
//! `aegis/v1/+/status` *without* `$share` (Retain Handling 0), reads the retained copies
//! until none came for `ingest.snapshot_quiet_ms`, and unsubscribes. A copy read that way
//! is stored only if nothing newer arrived since the snapshot began (a live status another
//! replica stored meanwhile wins). Keeping a non-shared status subscription for good would
//! make every replica process every status change (N times the database writes, N
//! reconciles racing for one claim), which the shared one avoids. Status is unsigned: it
//! drives display and reconcile only, never counts as an answer.
//!
//! **Bounded**: the connection asks the broker for packets of at most [`MAX_PACKET`] bytes
//! (MQTT 5 Maximum Packet Size: larger ones are not sent to us), receipts over
//! `MAX_RECEIPT_BYTES` and status over [`MAX_STATUS_BYTES`] are refused, and at most
//! `ingest.inbox` messages wait; when the inbox is full the connection stops reading until
//! there is room (the broker queues meanwhile) rather than dropping receipts. Bad messages
//! are counted, and logged at most once per device per minute. Nothing a message holds can
//! stop the ingest: every error is counted and the loop goes on; a lost connection is
//! re-made (clean start, session expiry 0: only connected replicas are group members, so
//! mosquitto never queues for a dead one).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::get;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, RetainForwardRule, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, Event};
use schemars::JsonSchema;
use serde::Serialize;
use tokio::sync::{Notify, mpsc};

use super::api::{ApiError, AppState, Route};
use super::events::Bus;
use super::publisher::Publisher;
use super::service::{self, MAX_RECEIPT_BYTES, Mirrors};
use super::store::{Role, Store, now_ms};
use super::store_rollouts::StatusReport;
use crate::json_receipts::Kind;

/// Largest status message accepted (an agent's status is a few KiB).
pub(crate) const MAX_STATUS_BYTES: usize = 64 * 1024;

/// Largest packet the broker may send us: the agents' largest payload (128 KiB) and room
/// for the topic and properties.
pub(crate) const MAX_PACKET: u32 = 128 * 1024 + 4096;

/// The status topics, every device's.
const STATUS_TOPICS: &str = "aegis/v1/+/status";

/// The ingest's counters (this replica's, since it started).
#[derive(Debug, Default)]
pub(crate) struct IngestCounters {
    received: AtomicU64,
    receipts_verified: AtomicU64,
    receipts_unverified: AtomicU64,
    statuses: AtomicU64,
    reconciles: AtomicU64,
    skipped_model_receipts: AtomicU64,
    skipped_firmware_receipts: AtomicU64,
    skipped_notices: AtomicU64,
    bad: AtomicU64,
    inbox_full: AtomicU64,
    errors: AtomicU64,
    connected: AtomicBool,
}

/// [`IngestCounters`] as the API shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, JsonSchema)]
pub(crate) struct IngestStats {
    /// Whether the replica is connected to the broker now.
    pub(crate) connected: bool,
    /// Messages received (receipts and status).
    pub(crate) received: u64,
    /// Receipts stored as verified.
    pub(crate) receipts_verified: u64,
    /// Receipts stored as not verified (bad signature, another device's name, …).
    pub(crate) receipts_unverified: u64,
    /// Status messages stored.
    pub(crate) statuses: u64,
    /// Desired documents re-sent to devices that came back.
    pub(crate) reconciles: u64,
    /// Model receipts on a receipts topic, not stored (their own format; `chimera model
    /// status` reads them).
    pub(crate) skipped_model_receipts: u64,
    /// Firmware receipts on a receipts topic, not stored (their own format; `chimera
    /// watch-receipts` verifies and records them).
    pub(crate) skipped_firmware_receipts: u64,
    /// Agents' unsigned rejection notices on a receipts topic, not stored.
    pub(crate) skipped_notices: u64,
    /// Messages refused: malformed topic or payload, too big, a device that is not enrolled.
    pub(crate) bad: u64,
    /// Times a message waited for room in the inbox.
    pub(crate) inbox_full: u64,
    /// Broker or database errors.
    pub(crate) errors: u64,
}

impl IngestCounters {
    /// The counters now.
    pub(crate) fn stats(&self) -> IngestStats {
        let g = |c: &AtomicU64| c.load(Relaxed);
        IngestStats {
            connected: self.connected.load(Relaxed),
            received: g(&self.received),
            receipts_verified: g(&self.receipts_verified),
            receipts_unverified: g(&self.receipts_unverified),
            statuses: g(&self.statuses),
            reconciles: g(&self.reconciles),
            skipped_model_receipts: g(&self.skipped_model_receipts),
            skipped_firmware_receipts: g(&self.skipped_firmware_receipts),
            skipped_notices: g(&self.skipped_notices),
            bad: g(&self.bad),
            inbox_full: g(&self.inbox_full),
            errors: g(&self.errors),
        }
    }
}

/// The routes of this module.
pub(crate) static ROUTES: &[Route] = &[Route {
    method: Method::GET,
    path: "/api/v1/ingest",
    role: Some(Role::Viewer),
    summary: "This replica's MQTT ingest counters: messages received, receipts stored \
              (verified or not), status messages, reconciles, skipped and refused messages.",
    params: &[],
    body: None,
    ok: 200,
    response: Some(|g| g.subschema_for::<IngestStats>()),
    make: || get(ingest_stats),
}];

async fn ingest_stats(State(s): State<AppState>) -> Result<Json<IngestStats>, ApiError> {
    match &s.ingest {
        Some(c) => Ok(Json(c.stats())),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service has no broker to ingest from (serve.yaml: broker)",
        )),
    }
}

/// Logs a problem at most once per key (a device) per minute; the counters count all.
#[derive(Default)]
pub(crate) struct OncePerMinute(std::sync::Mutex<HashMap<String, Instant>>);

impl OncePerMinute {
    const PERIOD: Duration = Duration::from_secs(60);
    /// Keys remembered at most (a flood of made-up device ids cannot grow it further).
    const KEYS: usize = 4096;

    /// Whether `key` may be logged now (and notes that it was).
    pub(crate) fn due(&self, key: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::KEYS {
            seen.retain(|_, t| now.duration_since(*t) < Self::PERIOD);
            if seen.len() >= Self::KEYS {
                seen.clear();
            }
        }
        match seen.get(key) {
            Some(t) if now.duration_since(*t) < Self::PERIOD => false,
            _ => {
                seen.insert(key.to_string(), now);
                true
            }
        }
    }
}

/// One message from the broker.
#[derive(Debug)]
struct Message {
    topic: String,
    payload: Vec<u8>,
    /// For a retained copy (the start-up snapshot): when the snapshot began.
    snapshot_of: Option<i64>,
    received_at: i64,
}

/// The start-up (and reconnect) snapshot of retained statuses.
#[derive(Default)]
struct Snapshot {
    generation: AtomicU64,
    started: AtomicI64,
    last: AtomicI64,
}

/// The ingest: the state it writes to and what it tells.
pub(crate) struct Ingest {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) events: Bus,
    pub(crate) counters: Arc<IngestCounters>,
    pub(crate) publisher: Arc<Publisher>,
    /// Woken when a receipt settled a rollout target.
    pub(crate) engine: Arc<Notify>,
    /// `rollouts.reconcile_cooldown_s`, in ms.
    pub(crate) reconcile_cooldown_ms: i64,
    pub(crate) mirrors: Mirrors,
    pub(crate) log: OncePerMinute,
}

/// `$share/GROUP/aegis/v1/+/receipts` and `…/status`, Retain Handling 2.
fn shared_filters(group: &str) -> Vec<Filter> {
    ["receipts", "status"]
        .into_iter()
        .map(|leaf| Filter {
            retain_forward_rule: RetainForwardRule::Never,
            ..Filter::new(
                format!("$share/{group}/aegis/v1/+/{leaf}"),
                QoS::AtLeastOnce,
            )
        })
        .collect()
}

impl Ingest {
    /// Connects to `broker` as `client_id` and runs until the process ends: one task reads
    /// the connection into the inbox (re-connecting and re-subscribing as needed), one
    /// processes the inbox in order.
    pub(crate) fn spawn(
        self: Arc<Self>,
        broker: &crate::broker::Broker,
        client_id: &str,
        cfg: &super::config::IngestConfig,
    ) -> anyhow::Result<()> {
        let mut o = broker.options(client_id);
        o.set_max_packet_size(Some(MAX_PACKET));
        o.set_clean_start(true);
        o.set_session_expiry_interval(None);
        let (client, mut events) = AsyncClient::new(o, 64);
        let (tx, mut rx) = mpsc::channel::<Message>(cfg.inbox);
        let (resend, mut resends) = mpsc::channel::<(String, String)>(cfg.inbox);
        let worker = self.clone();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                worker.handle(m, &resend).await;
            }
        });
        // Reconciles are sent off the ingest's path, those waiting together: one publish
        // (one broker session) per document for every device that needs it, so a fleet
        // coming back after a broker restart does not hold the ingest up one device at a
        // time.
        let sender = self.clone();
        tokio::spawn(async move {
            while let Some(first) = resends.recv().await {
                let mut by_digest: HashMap<String, Vec<String>> = HashMap::new();
                let mut next = Some(first);
                while let Some((digest, device)) = next {
                    by_digest.entry(digest).or_default().push(device);
                    next = resends.try_recv().ok();
                }
                for (digest, devices) in by_digest {
                    if let Err(e) = sender
                        .publisher
                        .to_devices(sender.store.as_ref(), &digest, devices.clone())
                        .await
                    {
                        sender.error(
                            "reconcile",
                            &format!("reconcile {}: {e}", devices.join(", ")),
                        );
                    }
                }
            }
        });
        let snapshot = Arc::new(Snapshot::default());
        let group = cfg.share_group.clone();
        let quiet_ms = cfg.snapshot_quiet_ms as i64;
        let broker = broker.clone();
        tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        self.counters.connected.store(true, Relaxed);
                        let snapshot_filter = Filter::new(STATUS_TOPICS, QoS::AtLeastOnce);
                        let subscribed = [shared_filters(&group), vec![snapshot_filter]]
                            .into_iter()
                            .try_for_each(|f| {
                                client.try_subscribe_many(f).map_err(|e| e.to_string())
                            });
                        if let Err(e) = subscribed {
                            self.error("broker", &format!("{broker}: cannot subscribe: {e}"));
                            continue;
                        }
                        let generation = snapshot.generation.fetch_add(1, Relaxed) + 1;
                        snapshot.started.store(now_ms(), Relaxed);
                        snapshot.last.store(now_ms(), Relaxed);
                        tokio::spawn(end_snapshot(
                            client.clone(),
                            snapshot.clone(),
                            generation,
                            quiet_ms,
                        ));
                    }
                    Ok(Event::Incoming(Packet::SubAck(ack))) => {
                        for code in &ack.return_codes {
                            if !matches!(code, SubscribeReasonCode::Success(_)) {
                                self.error(
                                    "broker",
                                    &format!("{broker} refused a subscription: {code:?}"),
                                );
                            }
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        self.counters.received.fetch_add(1, Relaxed);
                        let now = now_ms();
                        let snapshot_of = p.retain.then(|| {
                            snapshot.last.store(now, Relaxed);
                            snapshot.started.load(Relaxed)
                        });
                        let m = Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: p.payload.to_vec(),
                            snapshot_of,
                            received_at: now,
                        };
                        match tx.try_send(m) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(m)) => {
                                self.counters.inbox_full.fetch_add(1, Relaxed);
                                if self.log.due("inbox") {
                                    eprintln!(
                                        "chimera serve: ingest: the inbox is full; reading \
                                         from the broker waits for room (logged once a minute)"
                                    );
                                }
                                if tx.send(m).await.is_err() {
                                    return;
                                }
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        self.counters.connected.store(false, Relaxed);
                        self.error(
                            "broker",
                            &format!("{}; connecting again", broker.failed(&e)),
                        );
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        Ok(())
    }

    /// A broker or database error: counted, logged once a minute per `what`.
    fn error(&self, what: &str, message: &str) {
        self.counters.errors.fetch_add(1, Relaxed);
        if self.log.due(what) {
            eprintln!("chimera serve: ingest: {message} (logged once a minute)");
        }
    }

    /// A bad message about `device`: counted, logged once a minute per device.
    fn bad(&self, device: &str, topic: &str, why: &str) {
        self.counters.bad.fetch_add(1, Relaxed);
        self.note(device, topic, why);
    }

    /// Logs a problem with a message about `device`, once a minute per device.
    fn note(&self, device: &str, topic: &str, why: &str) {
        // Device keys apart from the ingest's own ("broker", "inbox", …).
        if self.log.due(&format!("device {device}")) {
            eprintln!(
                "chimera serve: ingest: {topic:?}: {why} (problems with {device:?} are \
                 counted, logged once a minute)"
            );
        }
    }

    async fn handle(&self, m: Message, resend: &mpsc::Sender<(String, String)>) {
        let Some((device, leaf)) = device_topic(&m.topic) else {
            self.bad("?", &m.topic, "not aegis/v1/DEVICE/receipts or …/status");
            return;
        };
        let outcome = match leaf {
            "receipts" => self.receipt(device, &m).await,
            _ => self.status(device, &m, resend).await,
        };
        if let Err(e) = outcome {
            self.error("database", &format!("{}: {e}", m.topic));
        }
    }

    async fn receipt(&self, device: &str, m: &Message) -> anyhow::Result<()> {
        let text = &m.payload;
        if text.len() > MAX_RECEIPT_BYTES {
            self.bad(
                device,
                &m.topic,
                &format!("{} bytes, over {MAX_RECEIPT_BYTES}", text.len()),
            );
            return Ok(());
        }
        // Model and firmware receipts are JSON too: told from notices by their `type`.
        if let Some(kind) = Kind::of(text) {
            let counter = match kind {
                Kind::Model => &self.counters.skipped_model_receipts,
                Kind::Firmware => &self.counters.skipped_firmware_receipts,
            };
            counter.fetch_add(1, Relaxed);
            return Ok(());
        }
        if text.first() == Some(&b'{') {
            self.counters.skipped_notices.fetch_add(1, Relaxed);
            return Ok(());
        }
        let Some(key) = service::device_key(self.store.as_ref(), device).await? else {
            self.bad(
                device,
                &m.topic,
                "a receipt for a device that is not enrolled",
            );
            return Ok(());
        };
        let r =
            service::store_receipt(self.store.as_ref(), &self.mirrors, device, &key, text).await?;
        let counter = if r.verified {
            &self.counters.receipts_verified
        } else {
            &self.counters.receipts_unverified
        };
        counter.fetch_add(1, Relaxed);
        if let Some(e) = &r.error {
            self.note(
                device,
                &m.topic,
                &format!("receipt stored as NOT verified: {e}"),
            );
        }
        self.events.send(
            "receipt",
            serde_json::json!({
                "device": device, "id": r.id, "verified": r.verified, "digest": r.digest,
                "verdict": r.verdict, "error": r.error,
            }),
        );
        if !r.changes.is_empty() {
            for c in &r.changes {
                self.events.send("rollout_target", c);
            }
            self.engine.notify_one();
        }
        Ok(())
    }

    async fn status(
        &self,
        device: &str,
        m: &Message,
        resend: &mpsc::Sender<(String, String)>,
    ) -> anyhow::Result<()> {
        if m.payload.is_empty() {
            // A retained status cleared: nothing to record.
            return Ok(());
        }
        let report = match parse_status(device, &m.payload, m.received_at, m.snapshot_of) {
            Ok(r) => r,
            Err(why) => {
                self.bad(device, &m.topic, &why);
                return Ok(());
            }
        };
        let Some(change) = self.store.record_status(report.clone()).await? else {
            self.bad(
                device,
                &m.topic,
                "status of a device that is not enrolled (or was un-enrolled)",
            );
            return Ok(());
        };
        if !change.stored {
            return Ok(());
        }
        self.counters.statuses.fetch_add(1, Relaxed);
        if change.changed {
            self.events.send(
                "status",
                serde_json::json!({
                    "device": device, "online": report.online,
                    "running_id": report.running_id, "running_digest": report.running_digest,
                }),
            );
        }
        if !report.online {
            return Ok(());
        }
        // Back online: its desired document goes out again now; online all along but
        // running something else: at most once per cooldown.
        let now = now_ms();
        let sent_before = if change.came_online {
            now + 1
        } else {
            now - self.reconcile_cooldown_ms
        };
        let Some(desired) = self
            .store
            .reconcile_claim(device.to_string(), sent_before)
            .await?
        else {
            return Ok(());
        };
        self.counters.reconciles.fetch_add(1, Relaxed);
        self.events.send(
            "reconcile",
            serde_json::json!({ "device": device, "digest": desired.digest,
                                "rollout": desired.rollout }),
        );
        // Waits for room when many are queued (the inbox waits meanwhile).
        let _ = resend.send((desired.digest, device.to_string())).await;
        Ok(())
    }
}

/// Ends a snapshot once no retained status came for `quiet_ms` (unless a reconnect began
/// another one).
async fn end_snapshot(client: AsyncClient, s: Arc<Snapshot>, generation: u64, quiet_ms: i64) {
    loop {
        tokio::time::sleep(Duration::from_millis((quiet_ms / 4).max(25) as u64)).await;
        if s.generation.load(Relaxed) != generation {
            return;
        }
        if now_ms() - s.last.load(Relaxed) >= quiet_ms {
            let _ = client.try_unsubscribe(STATUS_TOPICS);
            return;
        }
    }
}

/// `aegis/v1/DEVICE/receipts` or `…/status`: the device and the leaf.
fn device_topic(topic: &str) -> Option<(&str, &str)> {
    let mut parts = topic.split('/');
    let (Some("aegis"), Some("v1"), Some(device), Some(leaf), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let device_ok = !device.is_empty()
        && device.len() <= 128
        && !device.chars().any(char::is_control)
        && device != "groups";
    (device_ok && matches!(leaf, "receipts" | "status")).then_some((device, leaf))
}

/// A status message (hostile JSON): `state` online or offline, `workflow.active.id` and
/// `.digest` when present (a digest must be 64 hex digits), the agent's `version` and
/// `workflow.trust_version` when present.
fn parse_status(
    device: &str,
    payload: &[u8],
    received_at: i64,
    snapshot_of: Option<i64>,
) -> Result<StatusReport, String> {
    if payload.len() > MAX_STATUS_BYTES {
        return Err(format!(
            "status of {} bytes, over {MAX_STATUS_BYTES}",
            payload.len()
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| format!("status is not JSON: {e}"))?;
    let online = match v["state"].as_str() {
        Some("online") => true,
        Some("offline") => false,
        other => return Err(format!("status state {other:?}: not online or offline")),
    };
    let active = &v["workflow"]["active"];
    let running_id = match &active["id"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.len() <= 512 && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        _ => return Err("status workflow.active.id: not a short string".into()),
    };
    let running_digest = match &active["digest"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s)
            if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
        {
            Some(s.clone())
        }
        _ => return Err("status workflow.active.digest: not 64 hex digits".into()),
    };
    // Shown, never decided on: a short printable string, a number; anything else is
    // refused like the fields above (a device that sends junk gets its status logged).
    let agent_version = match &v["version"] {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.len() <= 64 && !s.chars().any(char::is_control) => {
            Some(s.clone())
        }
        _ => return Err("status version: not a short string".into()),
    };
    let trust_version = match &v["workflow"]["trust_version"] {
        serde_json::Value::Null => None,
        n => Some(
            n.as_u64()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or("status workflow.trust_version: not a whole number")?,
        ),
    };
    Ok(StatusReport {
        device: device.to_string(),
        online,
        running_id,
        running_digest,
        agent_version,
        trust_version,
        received_at,
        snapshot_of,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_name_one_device_and_a_known_leaf() {
        assert_eq!(
            device_topic("aegis/v1/cam-1/receipts"),
            Some(("cam-1", "receipts"))
        );
        assert_eq!(
            device_topic("aegis/v1/cam-1/status"),
            Some(("cam-1", "status"))
        );
        for bad in [
            "aegis/v1//receipts",
            "aegis/v1/cam-1/receipts/x",
            "aegis/v1/cam-1/telemetry",
            "aegis/v2/cam-1/status",
            "aegis/v1/groups/status",
            "aegis/v1/a\u{7}b/status",
        ] {
            assert_eq!(device_topic(bad), None, "{bad}");
        }
    }

    #[test]
    fn status_messages_are_read_strictly() {
        let digest = "ab".repeat(32);
        let ok = format!(
            r#"{{"state":"online","device":"someone-else","version":"0.9.1","workflow":{{"active":{{"id":"urn:uuid:1","digest":"{digest}"}},"trust_version":3}}}}"#
        );
        let r = parse_status("cam-1", ok.as_bytes(), 5, Some(3)).unwrap();
        // The topic names the device, never the payload.
        assert_eq!(r.device, "cam-1");
        assert!(r.online);
        assert_eq!(r.running_digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.snapshot_of, Some(3));
        assert_eq!(
            (r.agent_version.as_deref(), r.trust_version),
            (Some("0.9.1"), Some(3))
        );
        let will = parse_status("cam-1", br#"{"state":"offline"}"#, 5, None).unwrap();
        assert!(!will.online);
        assert_eq!(will.running_digest, None);
        assert_eq!((will.agent_version, will.trust_version), (None, None));
        for (bad, why) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"state":"dancing"}"#, "state"),
            (
                br#"{"state":"online","workflow":{"active":{"digest":"../x"}}}"#,
                "digest",
            ),
            (
                br#"{"state":"online","workflow":{"active":{"id":7}}}"#,
                "active.id",
            ),
            (br#"{"state":"online","version":1}"#, "version"),
            (br#"{"state":"online","version":"1\u0007"}"#, "version"),
            (
                br#"{"state":"online","workflow":{"trust_version":-1}}"#,
                "trust_version",
            ),
            (
                br#"{"state":"online","workflow":{"trust_version":"3"}}"#,
                "trust_version",
            ),
            (
                br#"{"state":"online","workflow":{"trust_version":18446744073709551615}}"#,
                "trust_version",
            ),
        ] {
            let e = parse_status("cam-1", bad, 5, None).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let huge = vec![b' '; MAX_STATUS_BYTES + 1];
        assert!(
            parse_status("cam-1", &huge, 5, None)
                .unwrap_err()
                .contains("over")
        );
    }

    #[test]
    fn logging_is_once_a_minute_per_device_and_bounded() {
        let log = OncePerMinute::default();
        assert!(log.due("cam-1"));
        assert!(!log.due("cam-1"));
        assert!(log.due("cam-2"));
        for i in 0..(OncePerMinute::KEYS * 2) {
            log.due(&format!("flood-{i}"));
        }
        assert!(log.0.lock().unwrap().len() <= OncePerMinute::KEYS);
    }
}
