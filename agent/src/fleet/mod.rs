//! The MQTT 5 fleet link (DESIGN §6): retained status with a last will, periodic telemetry,
//! events from the SQLite outbox (store-and-forward), and commands with request/response.
//!
//! ```text
//! aegis/v1/{device}/status      retained; {"state":"online",...}; last will {"state":"offline"}
//! aegis/v1/{device}/telemetry   every fleet.telemetry_s
//! aegis/v1/{device}/events      outbox rows, in order, QoS 1
//! aegis/v1/{device}/cmd/{name}  commands; the reply goes to the request's response topic
//!                               (default aegis/v1/{device}/cmd/{name}/reply) with its
//!                               correlation data
//! aegis/v1/{device}/toggles/{name}/set    runtime toggles (log_level, telemetry_s) …
//! aegis/v1/{device}/toggles/{name}/state  … and the value in force (retained)
//! ```
//! At most 5 slashes per topic, QoS 0/1 only, payloads under 128 KB: the scheme runs
//! unchanged on AWS IoT Core.
//!
//! **Delete after PUBACK, exactly.** `rumqttc` does not hand back the packet id of a
//! publish, but its event loop reports every publish it writes (`Outgoing::Publish(pkid)`)
//! in the order the publishes were requested. The link runs the event loop on its own task
//! and publishes from that same task, so it keeps a FIFO of what it asked to publish (an
//! outbox sequence number, or nothing for status/telemetry/replies) and pairs each
//! `Outgoing::Publish` with the FIFO's head; a successful PUBACK for that packet id then
//! deletes exactly that outbox row (through the store's single writer). The pairing holds
//! because the FIFO and `rumqttc`'s request queue always hold the same requests:
//! - nothing is requested while offline (a reply finished then is dropped), so nothing waits
//!   in `rumqttc`'s channel across a reconnect;
//! - on a connection error the link empties `rumqttc`'s queues (`EventLoop::clean`, then its
//!   `pending` list and any publish parked on a packet-id collision) together with the FIFO,
//!   so `rumqttc` resends nothing from the old connection, even to a broker that claims a
//!   session; the drain restarts from the oldest unacknowledged row (at-least-once;
//!   consumers de-duplicate on the event id);
//! - a PUBACK with a failure reason code deletes nothing: the row goes out again after the
//!   next reconnect.
//!
//! The `a_puback_deletes_exactly_its_own_row…` tests drive the link through random
//! schedules against `rumqttc`'s own protocol state.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde_json::{Value, json};

use crate::logging::LogFilterError;
use crate::pipeline::snapshot::SnapshotError;
use crate::store::{self, Record, StoreHandle};

/// Runtime toggles (`…/toggles/{name}/set` → `…/toggles/{name}/state`).
pub const TOGGLES: &[&str] = &["log_level", "telemetry_s"];

/// How long a stopping link keeps draining the outbox to a reachable broker.
const DRAIN_ON_STOP: Duration = Duration::from_secs(3);

/// Largest payload sent in one message (AWS IoT Core's limit is 128 KB).
pub const MAX_PAYLOAD: usize = 128 * 1024;

/// Most events one `query_events` reply carries; a larger `limit` is clamped to it and the
/// reply says so (`"clamped": true`).
pub const QUERY_EVENTS_MAX: u64 = 1000;

/// Events a `query_events` without `limit` returns.
const QUERY_EVENTS_DEFAULT: u64 = 100;

/// Why the fleet link cannot be set up from the config; each names the config path and, for
/// TLS, the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum FleetSetupError {
    /// `fleet.broker_url` lacks `scheme://`.
    #[error("fleet.broker_url: {url:?} has no scheme")]
    NoScheme {
        /// The URL as configured.
        url: String,
    },
    /// Neither `mqtt://` nor `mqtts://`.
    #[error("fleet.broker_url: unsupported scheme {scheme}://")]
    UnsupportedScheme {
        /// The scheme found.
        scheme: String,
    },
    /// The port after the last `:` is not a number from 0 to 65535.
    #[error("fleet.broker_url: bad port {port:?}")]
    BadPort {
        /// The text found.
        port: String,
    },
    /// A PEM file (`fleet.tls.ca_file`, `fleet.tls.cert_file`) cannot be opened.
    #[error("fleet.tls: cannot read {}: {source}", path.display())]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds a section that is not a valid certificate.
    #[error("fleet.tls: {}: {source}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds no certificate at all.
    #[error("fleet.tls: {} holds no certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A CA certificate is not usable as a trust anchor.
    #[error("fleet.tls.ca_file {}: {source}", path.display())]
    CaCertificate {
        /// `fleet.tls.ca_file`.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// The TLS provider offers no protocol version rustls accepts.
    #[error("fleet.tls: {source}")]
    Protocols {
        /// Why.
        source: rustls::Error,
    },
    /// `fleet.tls.key_file` cannot be read as a PEM private key.
    #[error("fleet.tls.key_file {}: {source}", path.display())]
    Key {
        /// `fleet.tls.key_file`.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// The client certificate and key do not make a usable identity.
    #[error("fleet.tls: client certificate: {source}")]
    ClientCertificate {
        /// Why.
        source: rustls::Error,
    },
}

/// Why a command or toggle was refused; the message is the `error` text of the reply (or of
/// the toggle's state).
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `restart_pipeline` while a restart is pending.
    #[error("a restart is already under way")]
    RestartUnderWay,
    /// A log filter the agent refuses (`set_log_level`, the `log_level` toggle).
    #[error(transparent)]
    LogFilter(#[from] LogFilterError),
    /// This device does not run the command (the fleet simulator's devices).
    #[error("simulated device")]
    Simulated,
    /// A toggle's `…/set` payload is empty.
    #[error("empty payload: send {{\"value\": …}} or the bare value")]
    EmptyPayload,
    /// A toggle's `…/set` payload is neither JSON nor text.
    #[error("payload is neither JSON nor UTF-8 text")]
    NotText,
    /// `telemetry_s` out of range.
    #[error("telemetry_s must be 1 to 3600")]
    TelemetryRange,
    /// A known toggle got a value of the wrong JSON type.
    #[error("wrong value type for {toggle}: {value}")]
    WrongType {
        /// The toggle.
        toggle: String,
        /// The value received.
        value: Value,
    },
    /// No such toggle.
    #[error("unknown toggle {toggle:?}; known: {}", TOGGLES.join(", "))]
    UnknownToggle {
        /// The name received.
        toggle: String,
    },
}

/// Why the outbox could not be read (the link retries on its next drain).
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    /// The database cannot be opened for reading.
    #[error(transparent)]
    Open(#[from] store::StoreError),
    /// A query failed (the reader is reopened next time: the file may have been replaced).
    #[error(transparent)]
    Query(#[from] rusqlite::Error),
}

/// How the link connects and what it publishes.
#[derive(Clone)]
pub struct FleetSettings {
    /// Device id (topic prefix).
    pub device: String,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id.
    pub client_id: String,
    /// User name and password.
    pub credentials: Option<(String, String)>,
    /// Keepalive.
    pub keepalive: Duration,
    /// Telemetry period.
    pub telemetry_every: Duration,
    /// Most unacknowledged outbox messages in flight.
    pub inflight: usize,
    /// TLS (`mqtts://`), built from the PEM files at start-up.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The log filter in force (the `log_level` toggle's initial state): `RUST_LOG` when it
    /// overrode `log.level`.
    pub log_level: String,
    /// Groups whose workflow topics the link subscribes to (with workflows enabled).
    pub workflow_groups: Option<Vec<String>>,
    /// Subscribe to the device's and the groups' models topics too (model delivery on).
    pub models: bool,
    /// With `models`: where model bundles announced without a URL are fetched over the
    /// broker (the link subscribes to the device's chunk topic, hands its messages and
    /// every connect to the port, and publishes the port's requests on the fetch topic).
    pub model_chunks: Option<Arc<crate::models_ota::mqtt::ChunkPort>>,
    /// Subscribe to the device's and the groups' firmware topics too (firmware updates on).
    pub firmware: bool,
}

impl FleetSettings {
    /// Settings from the config; fails on a broker URL this build cannot use.
    pub fn from_config(cfg: &aegis_config::AgentConfig) -> Result<FleetSettings, FleetSetupError> {
        let f = &cfg.fleet;
        let (scheme, rest) =
            f.broker_url
                .split_once("://")
                .ok_or_else(|| FleetSetupError::NoScheme {
                    url: f.broker_url.clone(),
                })?;
        let tls = match scheme {
            "mqtt" => None,
            "mqtts" => Some(tls_config(&f.tls)?),
            other => {
                return Err(FleetSetupError::UnsupportedScheme {
                    scheme: other.to_string(),
                });
            }
        };
        let default_port = if tls.is_some() { 8883 } else { 1883 };
        let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| FleetSetupError::BadPort {
                    port: p.to_string(),
                })?,
            ),
            None => (rest.trim_end_matches('/').to_string(), default_port),
        };
        Ok(FleetSettings {
            device: cfg.device.id.clone(),
            host,
            port,
            client_id: f.client_id.clone().unwrap_or_else(|| cfg.device.id.clone()),
            credentials: f.username.clone().map(|u| {
                (
                    u,
                    f.password
                        .as_ref()
                        .map(|p| p.expose().to_string())
                        .unwrap_or_default(),
                )
            }),
            keepalive: Duration::from_secs(u64::from(f.keepalive_s)),
            telemetry_every: Duration::from_secs(u64::from(f.telemetry_s)),
            inflight: f.inflight as usize,
            tls,
            log_level: crate::logging::in_force().unwrap_or_else(|| cfg.log.level.clone()),
            workflow_groups: cfg.workflows.enabled.then(|| cfg.device.groups.clone()),
            models: cfg.workflows.enabled && cfg.workflows.models.enabled,
            model_chunks: None,
            firmware: cfg.workflows.enabled && cfg.workflows.firmware.enabled,
        })
    }

    fn topic(&self, leaf: &str) -> String {
        format!("aegis/v1/{}/{leaf}", self.device)
    }

    /// The topics of signed documents this device subscribes to (workflows, trust, and
    /// with their delivery on, models and firmware), device topics before group topics.
    fn signed_topics(&self) -> Vec<String> {
        let Some(groups) = &self.workflow_groups else {
            return Vec::new();
        };
        let mut topics = vec![self.topic("workflows"), TRUST_TOPIC.to_string()];
        topics.extend(groups.iter().map(|g| group_workflow_topic(g)));
        if self.models {
            topics.push(aegis_ota::model_wire::device_models_topic(&self.device));
            topics.extend(
                groups
                    .iter()
                    .map(|g| aegis_ota::model_wire::group_models_topic(g)),
            );
        }
        if self.firmware {
            topics.push(aegis_ota::firmware::device_topic(&self.device));
            topics.extend(groups.iter().map(|g| aegis_ota::firmware::group_topic(g)));
        }
        topics
    }
}

/// Where the link's messages wait: the agent's SQLite outbox ([`SqliteOutbox`]), or memory
/// in the fleet simulator.
pub trait Outbox: Send {
    /// Rows after `seq`, in order, at most `limit`.
    fn after(&mut self, seq: i64, limit: usize) -> Result<Vec<store::OutboxRow>, OutboxError>;
    /// The oldest row's seq (`None` when empty).
    fn oldest(&mut self) -> Result<Option<i64>, OutboxError>;
    /// The broker acknowledged these rows: they may go.
    fn acked(&mut self, seqs: Vec<i64>);
    /// Waits (bounded) until what was queued so far is readable (shutdown only).
    fn flush(&mut self, limit: Duration);
    /// Stored events since `since_us` (the `query_events` command).
    fn events_since(
        &mut self,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<store::Event>, OutboxError>;
}

/// The agent's outbox: rows read from the store on a read-only connection, deletions through
/// the store's single writer.
pub struct SqliteOutbox {
    db: PathBuf,
    store: StoreHandle,
    reader: Option<rusqlite::Connection>,
}

impl SqliteOutbox {
    /// The outbox of the database at `db`, written through `store`.
    pub fn new(db: PathBuf, store: StoreHandle) -> Self {
        SqliteOutbox {
            db,
            store,
            reader: None,
        }
    }

    fn with<T>(
        &mut self,
        f: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T, OutboxError> {
        let conn = match &self.reader {
            Some(conn) => conn,
            None => self.reader.insert(store::open_reader(&self.db)?),
        };
        let result = f(conn);
        if result.is_err() {
            // Reopen next time (the file may have been replaced).
            self.reader = None;
        }
        Ok(result?)
    }
}

impl Outbox for SqliteOutbox {
    fn after(&mut self, seq: i64, limit: usize) -> Result<Vec<store::OutboxRow>, OutboxError> {
        self.with(|c| store::outbox_after(c, seq, limit))
    }
    fn oldest(&mut self) -> Result<Option<i64>, OutboxError> {
        self.with(|c| store::outbox_depth(c).map(|(_, oldest)| oldest))
    }
    fn acked(&mut self, seqs: Vec<i64>) {
        // A lost ack record only means a re-send after the next reconnect.
        self.store.submit(Record::OutboxAck(seqs));
    }
    fn flush(&mut self, limit: Duration) {
        self.store.flush(limit);
    }
    fn events_since(
        &mut self,
        since_us: i64,
        limit: usize,
    ) -> Result<Vec<store::Event>, OutboxError> {
        self.with(|c| store::events_since(c, since_us, limit))
    }
}

/// A rustls client config (ring provider) from PEM files: the CAs the broker's certificate
/// must chain to, and optionally this device's certificate and key (mutual TLS).
pub fn tls_config(
    t: &aegis_config::FleetTls,
) -> Result<Arc<rustls::ClientConfig>, FleetSetupError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read_certs =
        |p: &std::path::Path| -> Result<Vec<CertificateDer<'static>>, FleetSetupError> {
            let certs = CertificateDer::pem_file_iter(p)
                .map_err(|source| FleetSetupError::ReadPem {
                    path: p.to_path_buf(),
                    source,
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| FleetSetupError::BadPem {
                    path: p.to_path_buf(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(FleetSetupError::NoCertificate {
                    path: p.to_path_buf(),
                });
            }
            Ok(certs)
        };
    let mut roots = rustls::RootCertStore::empty();
    for c in read_certs(&t.ca_file)? {
        roots
            .add(c)
            .map_err(|source| FleetSetupError::CaCertificate {
                path: t.ca_file.clone(),
                source,
            })?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|source| FleetSetupError::Protocols { source })?
    .with_root_certificates(roots);
    let config = match (&t.cert_file, &t.key_file) {
        (Some(cert), Some(key)) => {
            let key = PrivateKeyDer::from_pem_file(key).map_err(|source| FleetSetupError::Key {
                path: key.clone(),
                source,
            })?;
            builder
                .with_client_auth_cert(read_certs(cert)?, key)
                .map_err(|source| FleetSetupError::ClientCertificate { source })?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// What the link asks the rest of the agent.
pub trait FleetHost: Send + Sync {
    /// The status document (retained on `.../status`, also the `get_status` reply).
    fn status(&self) -> Value;
    /// The telemetry snapshot.
    fn telemetry(&self) -> Value;
    /// The effective config with secrets redacted (`get_config`).
    fn config(&self) -> Value;
    /// Restart the pipeline (`restart_pipeline`); Err explains why not.
    fn restart_pipeline(&self) -> Result<(), CommandError>;
    /// Change the log filter (`set_log_level`).
    fn set_log_level(&self, level: &str) -> Result<(), CommandError>;
    /// The next frame of `stream` (default: the first) as a JPEG (`snapshot`).
    fn snapshot(
        &self,
        _stream: Option<&str>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<u8>, SnapshotError>>, SnapshotError> {
        Err(SnapshotError::Unavailable)
    }
    /// A message on a workflow or trust topic (signed documents; anything may arrive).
    /// `live`: published while this device was subscribed, not a retained copy redelivered
    /// on (re)subscribe — a document answered already is then asked again
    /// (`aegis_ota::state::AnswerAgain`).
    fn workflow(&self, _topic: &str, _payload: &[u8], _live: bool) {}
    /// Event clips (`keep_clip`, `list_clips`, `get_clip_manifest`): the command's JSON
    /// result, or why not.
    fn clips(&self, _command: &str, _args: &Value) -> Result<Value, String> {
        Err("event clips are not available on this device".into())
    }
    /// A clip's plain MP4, checked against its signed manifest (`get_clip`).
    fn clip_video(&self, _id: &str) -> Result<Vec<u8>, String> {
        Err("event clips are not available on this device".into())
    }
}

/// Topic of group `g`'s workflows (retained: a member that was offline gets the latest on
/// its next connect).
pub fn group_workflow_topic(g: &str) -> String {
    format!("aegis/v1/groups/{g}/workflows")
}

/// Topic of root-signed trust metadata updates (retained).
pub const TRUST_TOPIC: &str = "aegis/v1/fleet/trust";

/// A reply finished off the link's task (snapshots, clips): where it goes and what it is.
struct LateReply {
    topic: String,
    correlation: Option<bytes::Bytes>,
    body: Result<Vec<u8>, String>,
    /// The content type of `body`'s chunks.
    content_type: &'static str,
}

/// Link counters (exported as metrics by the agent).
#[derive(Debug, Default)]
pub struct FleetCounters {
    /// Outbox messages acknowledged by the broker.
    pub acked: std::sync::atomic::AtomicU64,
    /// Outbox messages published (including re-sends after a reconnect).
    pub published: std::sync::atomic::AtomicU64,
    /// Connections made.
    pub connects: std::sync::atomic::AtomicU64,
    /// Commands answered.
    pub commands: std::sync::atomic::AtomicU64,
    /// Currently connected (0/1).
    pub connected: std::sync::atomic::AtomicU64,
    /// Outbox messages the broker refused (PUBACK with a failure reason); they stay in the
    /// outbox and go out again after the next reconnect.
    pub refused: std::sync::atomic::AtomicU64,
}

impl FleetCounters {
    /// Every counter by name, for metrics.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            ("connected", self.connected.load(Relaxed)),
            ("connects", self.connects.load(Relaxed)),
            ("published", self.published.load(Relaxed)),
            ("acked", self.acked.load(Relaxed)),
            ("commands", self.commands.load(Relaxed)),
        ]
    }
}

/// A running link; stop it with [`FleetLink::stop`].
pub struct FleetLink {
    /// Wake the link now: republish the retained status and drain the outbox (after a
    /// workflow switch, so receipts and the new desired state go out at once).
    pub nudge: Arc<tokio::sync::Notify>,
    /// Subscribe to a topic again, so the broker sends its retained message once more (a
    /// workflow delivery that was superseded before it was judged).
    pub resubscribe: tokio::sync::mpsc::Sender<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Counters.
    pub counters: Arc<FleetCounters>,
}

impl FleetLink {
    /// Starts the link on the current tokio runtime.
    pub fn start(
        settings: FleetSettings,
        outbox: Box<dyn Outbox>,
        host: Arc<dyn FleetHost>,
    ) -> FleetLink {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let counters = Arc::new(FleetCounters::default());
        let link = Link::new(settings, outbox, host, counters.clone());
        let nudge = Arc::new(tokio::sync::Notify::new());
        let (resubscribe, resub_rx) = tokio::sync::mpsc::channel(16);
        let task = tokio::spawn(link.run(stop_rx, nudge.clone(), resub_rx));
        FleetLink {
            nudge,
            resubscribe,
            stop: Some(stop_tx),
            task: Some(task),
            counters,
        }
    }

    /// Publishes `offline` (retained), disconnects cleanly and waits for the task (bounded).
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(8), t).await;
        }
    }
}

struct Link {
    s: FleetSettings,
    outbox: Box<dyn Outbox>,
    host: Arc<dyn FleetHost>,
    counters: Arc<FleetCounters>,
    client: AsyncClient,
    events: EventLoop,
    /// What each requested publish was (an outbox seq, or nothing), in request order: exactly
    /// the publishes `rumqttc` has queued and not yet written.
    fifo: VecDeque<Option<i64>>,
    /// Packet id → outbox seq of publishes written, not yet acknowledged.
    inflight: HashMap<u16, i64>,
    /// Highest outbox seq handed to the client in this session.
    cursor: i64,
    /// Acknowledged seqs whose deletion may not have reached the database yet.
    acked: BTreeSet<i64>,
    acks_to_store: Vec<i64>,
    connected: bool,
    /// The current outage was logged at warn level already.
    warned: bool,
    backoff: Duration,
    last_telemetry: Instant,
    started: Instant,
    late_tx: tokio::sync::mpsc::Sender<LateReply>,
    late_rx: tokio::sync::mpsc::Receiver<LateReply>,
    /// Fetch requests of the model transfer under way, to publish (None: no MQTT transfer).
    chunk_requests: Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
}

/// The next request on an optional channel (never, without one).
async fn next_request(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>>,
) -> Option<Vec<u8>> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(d.as_nanos() as u64);
    let f = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    d.mul_f64(f)
}

/// A toggle's value from a `…/set` payload: `{"value": v}`, a bare JSON value (`7`,
/// `"debug"`), or, when the payload is not JSON, its text as a string (`debug`, `warn,aegis_agent=debug`).
fn toggle_payload(payload: &[u8]) -> Result<Value, CommandError> {
    match serde_json::from_slice::<Value>(payload) {
        Ok(Value::Object(mut m)) if m.contains_key("value") => {
            Ok(m.remove("value").unwrap_or(Value::Null))
        }
        Ok(v) => Ok(v),
        Err(_) => match std::str::from_utf8(payload).map(str::trim) {
            Ok("") => Err(CommandError::EmptyPayload),
            Ok(text) => Ok(Value::String(text.to_string())),
            Err(_) => Err(CommandError::NotText),
        },
    }
}

impl Link {
    fn new(
        s: FleetSettings,
        outbox: Box<dyn Outbox>,
        host: Arc<dyn FleetHost>,
        counters: Arc<FleetCounters>,
    ) -> Link {
        let mut o = MqttOptions::new(s.client_id.clone(), s.host.clone(), s.port);
        o.set_keep_alive(s.keepalive);
        o.set_clean_start(true);
        // Commands are small request/response messages: no Nagle delay (~40 ms per hop).
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        o.set_max_packet_size(Some(MAX_PAYLOAD as u32 + 4096));
        // rumqttc sizes its table of unacknowledged publishes by this bound (one slot per
        // packet id), 65,535 slots (about 14 MB) when it is not set; the link never has
        // more than its outbox window plus a few status/reply messages in flight.
        o.set_outgoing_inflight_upper_limit(
            u16::try_from(s.inflight.max(16) + 16).unwrap_or(u16::MAX),
        );
        if let Some((u, p)) = &s.credentials {
            o.set_credentials(u.clone(), p.clone());
        }
        if let Some(tls) = &s.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        o.set_last_will(LastWill::new(
            s.topic("status"),
            json!({ "state": "offline", "device": s.device }).to_string(),
            QoS::AtLeastOnce,
            true,
            None,
        ));
        let (client, events) = AsyncClient::new(o, 4 * s.inflight.max(16));
        let (late_tx, late_rx) = tokio::sync::mpsc::channel(16);
        let chunk_requests = s
            .model_chunks
            .as_ref()
            .filter(|_| s.models)
            .and_then(|p| p.attach());
        Link {
            s,
            outbox,
            host,
            counters,
            client,
            events,
            fifo: VecDeque::new(),
            inflight: HashMap::new(),
            cursor: 0,
            acked: BTreeSet::new(),
            acks_to_store: Vec::new(),
            connected: false,
            warned: false,
            backoff: Duration::from_millis(200),
            last_telemetry: Instant::now(),
            started: Instant::now(),
            late_tx,
            late_rx,
            chunk_requests,
        }
    }

    /// Requests a publish, recording what it is; false when the client's queue is full or
    /// the link is offline (nothing may wait in `rumqttc`'s queue across a reconnect: the
    /// FIFO pairing would shift).
    fn publish(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        qos: QoS,
        retain: bool,
        props: Option<PublishProperties>,
        seq: Option<i64>,
    ) -> bool {
        if !self.connected {
            return false;
        }
        self.fifo.push_back(seq);
        let r = match props {
            Some(p) => self
                .client
                .try_publish_with_properties(topic, qos, retain, payload, p),
            None => self.client.try_publish(topic, qos, retain, payload),
        };
        if r.is_err() {
            self.fifo.pop_back();
            return false;
        }
        true
    }

    async fn run(
        mut self,
        mut stop: tokio::sync::oneshot::Receiver<()>,
        nudge: Arc<tokio::sync::Notify>,
        mut resubscribe: tokio::sync::mpsc::Receiver<String>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.events.poll() => match ev {
                    Ok(ev) => self.on_event(ev),
                    Err(e) => {
                        let broker = format!("{}:{}", self.s.host, self.s.port);
                        if self.connected {
                            tracing::warn!(error = %e, %broker,
                                "fleet broker connection lost; events wait in the outbox");
                        } else if !self.warned {
                            tracing::warn!(error = %e, %broker,
                                "fleet broker unreachable; events wait in the outbox, retrying with backoff");
                        } else {
                            tracing::debug!(error = %e, %broker, "fleet broker unreachable");
                        }
                        self.warned = true;
                        self.on_disconnect();
                        tokio::select! {
                            _ = tokio::time::sleep(jitter(self.backoff)) => {}
                            _ = &mut stop => break,
                        }
                        self.backoff = (self.backoff * 2).min(Duration::from_secs(30));
                    }
                },
                _ = tick.tick() => self.on_tick(),
                _ = nudge.notified() => if self.connected {
                    self.publish_status();
                    self.flush_acks();
                    self.drain_outbox();
                },
                Some(r) = self.late_rx.recv() => self.late_reply(r),
                Some(topic) = resubscribe.recv() => self.resubscribe(topic),
                Some(request) = next_request(&mut self.chunk_requests) => {
                    let topic = aegis_ota::model_wire::fetch_topic(&self.s.device);
                    // Offline or queue full: dropped; the transfer asks again after the
                    // next connect or when nothing came.
                    self.publish(topic, request, QoS::AtLeastOnce, false, None, None);
                }
                _ = &mut stop => break,
            }
        }
        self.shutdown().await;
    }

    /// Subscribes to a workflow topic again (MQTT replaces the subscription and sends the
    /// topic's retained message once more). Only workflow and trust topics; while offline
    /// nothing is needed: the next connect subscribes afresh.
    fn resubscribe(&mut self, topic: String) {
        if self.connected && self.is_workflow_topic(&topic) {
            let _ = self.client.try_subscribe(topic, QoS::AtLeastOnce);
        }
    }

    /// The model chunk port, when this link carries MQTT model transfers.
    fn chunk_port(&self) -> Option<&Arc<crate::models_ota::mqtt::ChunkPort>> {
        self.chunk_requests
            .as_ref()
            .and(self.s.model_chunks.as_ref())
    }

    /// Exactly the workflow and trust topics this device subscribed to (not a command
    /// that happens to be named `workflows`).
    fn is_workflow_topic(&self, topic: &str) -> bool {
        self.s.signed_topics().iter().any(|t| t == topic)
    }

    /// After a connection error (or a failed connect attempt): forgets everything in flight,
    /// on both sides. `rumqttc` would otherwise keep what was still in its request channel
    /// (a failed connect does not touch it) and, with a broker claiming a session, resend its
    /// unacknowledged publishes and replay `pending`; each such write would pop a FIFO entry
    /// that is not its own. A publish parked on a packet-id collision is dropped as well:
    /// `rumqttc` keeps it across a reconnect, where the PUBACK that would release it never
    /// comes, and stops taking requests for good.
    fn on_disconnect(&mut self) {
        self.connected = false;
        self.counters
            .connected
            .store(0, std::sync::atomic::Ordering::Relaxed);
        self.events.clean();
        self.events.pending.clear();
        self.events.state.collision = None;
        self.fifo.clear();
        self.inflight.clear();
        self.cursor = 0;
        self.flush_acks();
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Incoming(Packet::ConnAck(_)) => {
                tracing::info!(broker = %format!("{}:{}", self.s.host, self.s.port), "fleet broker connected");
                self.connected = true;
                self.counters
                    .connected
                    .store(1, std::sync::atomic::Ordering::Relaxed);
                self.counters
                    .connects
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.backoff = Duration::from_millis(200);
                self.warned = false;
                // The FIFO, the in-flight map and the cursor were reset with `rumqttc`'s
                // queues when the last connection ended (nothing is requested while offline);
                // clearing the FIFO here, apart from those queues, is what would shift it.
                self.prune_acked();
                let _ = self
                    .client
                    .try_subscribe(self.s.topic("cmd/+"), QoS::AtLeastOnce);
                let _ = self
                    .client
                    .try_subscribe(self.s.topic("toggles/+/set"), QoS::AtLeastOnce);
                for name in TOGGLES {
                    self.publish_toggle_state(name);
                }
                // Status first: the gateway sees what runs before the retained workflows
                // (subscribed next) are judged.
                self.publish_status();
                for t in self.s.signed_topics() {
                    let _ = self.client.try_subscribe(t, QoS::AtLeastOnce);
                }
                if let Some(port) = self.chunk_port() {
                    let _ = self.client.try_subscribe(
                        aegis_ota::model_wire::chunk_topic(&self.s.device),
                        QoS::AtLeastOnce,
                    );
                    // Subscribed (queued before any request the transfer sends now).
                    port.connected();
                }
            }
            Event::Outgoing(Outgoing::Publish(pkid)) => match self.fifo.pop_front() {
                Some(Some(seq)) if pkid != 0 => {
                    self.inflight.insert(pkid, seq);
                }
                Some(_) => {}
                None => {
                    tracing::error!(pkid, "fleet: a publish nobody requested (bookkeeping bug)")
                }
            },
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(seq) = self.inflight.remove(&ack.pkid) {
                    if matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        self.acked.insert(seq);
                        self.acks_to_store.push(seq);
                        self.counters
                            .acked
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        // Not taken: the row stays (behind the cursor, so it goes out again
                        // after the next reconnect).
                        self.counters
                            .refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(seq, reason = ?ack.reason,
                            "fleet: the broker refused an outbox message; it stays in the outbox");
                    }
                    // Refill the window as it empties, not only on the timer: a backlog
                    // drains at the broker's pace.
                    if self.connected
                        && self.inflight.len() + self.fifo.len() <= self.s.inflight / 2
                    {
                        self.flush_acks();
                        self.drain_outbox();
                    }
                }
            }
            Event::Incoming(Packet::Publish(p)) => self.on_command(p),
            _ => {}
        }
    }

    /// The retained status (what runs: the desired-state report).
    fn publish_status(&mut self) {
        let status = self.host.status().to_string().into_bytes();
        self.publish(
            self.s.topic("status"),
            status,
            QoS::AtLeastOnce,
            true,
            None,
            None,
        );
    }

    /// Forgets acknowledged seqs whose rows are gone from the outbox (deleted for good).
    fn prune_acked(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        match self.outbox.oldest() {
            Ok(Some(oldest)) => self.acked = self.acked.split_off(&oldest),
            Ok(None) => self.acked.clear(),
            Err(_) => {}
        }
    }

    fn flush_acks(&mut self) {
        if self.acks_to_store.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.acks_to_store);
        self.outbox.acked(seqs);
    }

    fn on_tick(&mut self) {
        self.flush_acks();
        if !self.connected {
            return;
        }
        self.drain_outbox();
        if self.acked.len() > 10_000 {
            self.prune_acked();
        }
        if self.last_telemetry.elapsed() >= self.s.telemetry_every {
            self.last_telemetry = Instant::now();
            let mut t = self.host.telemetry();
            t["uptime_s"] = json!(self.started.elapsed().as_secs());
            t["outbox_inflight"] = json!(self.inflight.len());
            let body = t.to_string().into_bytes();
            self.publish(
                self.s.topic("telemetry"),
                body,
                QoS::AtMostOnce,
                false,
                None,
                None,
            );
        }
    }

    fn drain_outbox(&mut self) {
        let room = self
            .s
            .inflight
            .saturating_sub(self.inflight.len() + self.fifo.len());
        if room == 0 {
            return;
        }
        let rows = match self
            .outbox
            .after(self.cursor, room + self.acked.len().min(1000))
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: reading the outbox failed");
                return;
            }
        };
        let mut sent = 0;
        for row in rows {
            if sent >= room {
                break;
            }
            if self.acked.contains(&row.seq) {
                self.cursor = row.seq;
                continue;
            }
            if !self.publish(
                row.topic,
                row.payload,
                QoS::AtLeastOnce,
                false,
                None,
                Some(row.seq),
            ) {
                break;
            }
            self.cursor = row.seq;
            sent += 1;
            self.counters
                .published
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn toggle_value(&self, name: &str) -> Value {
        match name {
            "log_level" => json!(self.s.log_level),
            "telemetry_s" => json!(self.s.telemetry_every.as_secs()),
            _ => Value::Null,
        }
    }

    /// Retained `…/toggles/{name}/state` with the value in force.
    fn publish_toggle_state(&mut self, name: &str) {
        let body = json!({ "value": self.toggle_value(name) })
            .to_string()
            .into_bytes();
        self.publish(
            self.s.topic(&format!("toggles/{name}/state")),
            body,
            QoS::AtLeastOnce,
            true,
            None,
            None,
        );
    }

    /// Installs the log filter `level` (trimmed) and records it as the `log_level` toggle's
    /// value; a filter the host refuses changes nothing.
    fn apply_log_level(&mut self, level: &str) -> Result<(), CommandError> {
        let level = level.trim();
        self.host.set_log_level(level)?;
        self.s.log_level = level.to_string();
        Ok(())
    }

    /// `…/toggles/{name}/set`: applied, then the retained state topic says what is in force;
    /// a refused value is answered on the state topic, not retained, with `error` and the
    /// value still in force.
    fn on_toggle(&mut self, name: &str, payload: &[u8]) {
        let result = toggle_payload(payload).and_then(|v| match (name, &v) {
            ("log_level", Value::String(l)) => self.apply_log_level(l),
            ("telemetry_s", Value::Number(n)) => {
                match n.as_u64().filter(|s| (1..=3600).contains(s)) {
                    Some(secs) => {
                        self.s.telemetry_every = Duration::from_secs(secs);
                        Ok(())
                    }
                    None => Err(CommandError::TelemetryRange),
                }
            }
            (n, _) if TOGGLES.contains(&n) => Err(CommandError::WrongType {
                toggle: n.to_string(),
                value: v.clone(),
            }),
            (n, _) => Err(CommandError::UnknownToggle {
                toggle: n.to_string(),
            }),
        });
        match result {
            Ok(()) => self.publish_toggle_state(name),
            Err(e) => {
                let body = json!({ "value": self.toggle_value(name), "error": e.to_string() })
                    .to_string()
                    .into_bytes();
                let topic = self.s.topic(&format!("toggles/{name}/state"));
                // Not retained: the retained state stays the value in force.
                self.publish(topic, body, QoS::AtLeastOnce, false, None, None);
            }
        }
    }

    fn on_command(&mut self, p: rumqttc::v5::mqttbytes::v5::Publish) {
        let topic = String::from_utf8_lossy(&p.topic).to_string();
        if let Some(port) = self.chunk_port()
            && topic == aegis_ota::model_wire::chunk_topic(&self.s.device)
        {
            port.chunk(&p.payload);
            return;
        }
        if self.is_workflow_topic(&topic) {
            // Retained deletions arrive as empty payloads: nothing to judge.
            if !p.payload.is_empty() {
                self.host.workflow(&topic, &p.payload, !p.retain);
            }
            return;
        }
        if let Some(name) = topic
            .strip_prefix(&self.s.topic("toggles/"))
            .and_then(|rest| rest.strip_suffix("/set"))
        {
            let name = name.to_string();
            self.on_toggle(&name, &p.payload);
            return;
        }
        let prefix = self.s.topic("cmd/");
        let Some(name) = topic.strip_prefix(&prefix).map(str::to_string) else {
            return;
        };
        let props = p.properties.clone().unwrap_or_default();
        let reply_topic = props
            .response_topic
            .clone()
            .unwrap_or_else(|| format!("{topic}/reply"));
        if name == "snapshot" {
            self.counters
                .commands
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let args: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            let stream = args.get("stream").and_then(Value::as_str);
            let late = self.late_tx.clone();
            let correlation = props.correlation_data.clone();
            match self.host.snapshot(stream) {
                Ok(rx) => {
                    tokio::spawn(async move {
                        let body = match tokio::time::timeout(Duration::from_secs(5), rx).await {
                            Ok(Ok(r)) => r,
                            Ok(Err(_)) => Err(SnapshotError::Ended),
                            Err(_) => Err(SnapshotError::Timeout),
                        };
                        let _ = late
                            .send(LateReply {
                                topic: reply_topic,
                                correlation,
                                body: body.map_err(|e| e.to_string()),
                                content_type: "image/jpeg",
                            })
                            .await;
                    });
                }
                Err(e) => self.late_reply(LateReply {
                    topic: reply_topic,
                    correlation,
                    body: Err(e.to_string()),
                    content_type: "image/jpeg",
                }),
            }
            return;
        }
        if name == "get_clip" {
            // Decrypting and checking a clip takes a while: off the link's task, the MP4
            // in chunks as a snapshot's JPEG.
            self.counters
                .commands
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let args: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
            let id = args
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let late = self.late_tx.clone();
            let correlation = props.correlation_data.clone();
            let host = self.host.clone();
            tokio::spawn(async move {
                let body = tokio::task::spawn_blocking(move || host.clip_video(&id))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                let _ = late
                    .send(LateReply {
                        topic: reply_topic,
                        correlation,
                        body,
                        content_type: "video/mp4",
                    })
                    .await;
            });
            return;
        }
        let reply = match serde_json::from_slice::<Value>(if p.payload.is_empty() {
            b"{}"
        } else {
            &p.payload
        }) {
            Err(e) => json!({ "ok": false, "error": format!("payload is not JSON: {e}") }),
            Ok(args) => self.command(&name, &args),
        };
        self.counters
            .commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut body = reply.to_string().into_bytes();
        if body.len() > MAX_PAYLOAD {
            body = json!({ "ok": false, "error": format!("reply of {} bytes exceeds {MAX_PAYLOAD}", body.len()) })
                .to_string()
                .into_bytes();
        }
        let out_props = PublishProperties {
            correlation_data: props.correlation_data.clone(),
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        self.publish(
            reply_topic,
            body,
            QoS::AtLeastOnce,
            false,
            Some(out_props),
            None,
        );
    }

    /// A binary reply (a JPEG), in chunks of at most [`MAX_PAYLOAD`] bytes, each carrying the
    /// correlation data and a `chunk` user property `i/n` (1-based); an error is a JSON reply.
    /// Dropped while offline (the requester times out).
    fn late_reply(&mut self, r: LateReply) {
        if !self.connected {
            tracing::debug!(topic = %r.topic, "fleet: offline; a late reply is dropped");
            return;
        }
        let props = |content_type: &str, chunk: Option<(usize, usize)>| PublishProperties {
            correlation_data: r.correlation.clone(),
            content_type: Some(content_type.into()),
            user_properties: chunk
                .map(|(i, n)| vec![("chunk".to_string(), format!("{i}/{n}"))])
                .unwrap_or_default(),
            ..Default::default()
        };
        match &r.body {
            Ok(data) => {
                let n = data.len().div_ceil(MAX_PAYLOAD).max(1);
                for (i, part) in data.chunks(MAX_PAYLOAD).enumerate() {
                    let p = props(r.content_type, Some((i + 1, n)));
                    self.publish(
                        r.topic.clone(),
                        part.to_vec(),
                        QoS::AtLeastOnce,
                        false,
                        Some(p),
                        None,
                    );
                }
            }
            Err(e) => {
                let body = json!({ "ok": false, "error": e.to_string() })
                    .to_string()
                    .into_bytes();
                let p = props("application/json", None);
                self.publish(
                    r.topic.clone(),
                    body,
                    QoS::AtLeastOnce,
                    false,
                    Some(p),
                    None,
                );
            }
        }
    }

    fn command(&mut self, name: &str, args: &Value) -> Value {
        let ok = |v: Value| json!({ "ok": true, "result": v });
        let fail = |e: String| json!({ "ok": false, "error": e });
        match name {
            "ping" => ok(json!({ "pong": true, "ts_us": store::now_us() })),
            "get_status" => ok(self.host.status()),
            "get_config" => ok(self.host.config()),
            "restart_pipeline" => match self.host.restart_pipeline() {
                Ok(()) => ok(json!("restarting")),
                Err(e) => fail(e.to_string()),
            },
            "set_log_level" => match args.get("level").and_then(Value::as_str).map(str::trim) {
                Some(l) => match self.apply_log_level(l) {
                    Ok(()) => {
                        // The toggle's retained state follows: one value in force.
                        self.publish_toggle_state("log_level");
                        ok(json!({ "level": l }))
                    }
                    Err(e) => fail(e.to_string()),
                },
                None => fail(
                    "set_log_level needs {\"level\": \"info\"}: a level (off, error, warn, info, \
                     debug, trace) or target=level directives, comma-separated"
                        .into(),
                ),
            },
            "query_events" => self.query_events(args),
            "keep_clip" | "list_clips" | "get_clip_manifest" | "hold_clip" => {
                match self.host.clips(name, args) {
                    Ok(v) => ok(v),
                    Err(e) => fail(e),
                }
            }
            other => fail(format!(
                "unknown command {other:?}; known: ping, get_status, get_config, restart_pipeline, \
                 set_log_level, query_events, snapshot, keep_clip, list_clips, get_clip_manifest, \
                 get_clip, hold_clip"
            )),
        }
    }

    /// `query_events {"since_us": µs, "limit": n}`: stored events with `ts_us >= since_us`,
    /// oldest first. `limit` (default 100) above [`QUERY_EVENTS_MAX`] is clamped and the reply
    /// says so; a wrong type or a limit of 0 is refused.
    fn query_events(&mut self, args: &Value) -> Value {
        let fail = |e: &str| json!({ "ok": false, "error": e });
        let since = match args.get("since_us") {
            None | Some(Value::Null) => 0,
            Some(v) => match v.as_i64() {
                Some(s) => s,
                None => {
                    return fail(&format!(
                        "since_us must be an integer (µs since the Unix epoch), got {v}"
                    ));
                }
            },
        };
        let asked = match args.get("limit") {
            None | Some(Value::Null) => QUERY_EVENTS_DEFAULT,
            Some(v) => match v.as_u64().filter(|&n| n > 0) {
                Some(n) => n,
                None => {
                    return fail(&format!(
                        "limit must be a whole number from 1 to {QUERY_EVENTS_MAX}, got {v}"
                    ));
                }
            },
        };
        let limit = asked.min(QUERY_EVENTS_MAX);
        let clamped = asked > limit;
        match self.outbox.events_since(since, limit as usize) {
            Ok(mut evs) => {
                // Stay under the payload limit: drop from the end and say so.
                let mut truncated = false;
                while serde_json::to_vec(&evs).map_or(0, |v| v.len()) > MAX_PAYLOAD - 1024
                    && !evs.is_empty()
                {
                    let keep = evs.len() * 3 / 4;
                    evs.truncate(keep);
                    truncated = true;
                }
                json!({ "ok": true, "result": {
                    "events": evs, "truncated": truncated, "limit": limit, "clamped": clamped,
                } })
            }
            Err(e) => json!({ "ok": false, "error": e.to_string() }),
        }
    }

    async fn shutdown(&mut self) {
        self.flush_acks();
        if !self.connected {
            return;
        }
        // Final drain: what the pipeline wrote before it stopped, while the broker is there.
        self.outbox.flush(Duration::from_secs(1));
        let deadline = Instant::now() + DRAIN_ON_STOP;
        while Instant::now() < deadline && self.connected {
            self.drain_outbox();
            if self.inflight.is_empty() && self.fifo.is_empty() {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(100), self.events.poll()).await {
                Ok(Ok(ev)) => self.on_event(ev),
                Ok(Err(_)) => self.on_disconnect(),
                Err(_) => {}
            }
        }
        self.flush_acks();
        if !self.connected {
            return;
        }
        let offline = json!({ "state": "offline", "device": self.s.device, "reason": "shutdown" });
        self.publish(
            self.s.topic("status"),
            offline.to_string().into_bytes(),
            QoS::AtLeastOnce,
            true,
            None,
            None,
        );
        let _ = self.client.try_disconnect();
        // Drive the event loop until the disconnect is written (bounded).
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), self.events.poll()).await {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) | Ok(Err(_)) => break,
                Ok(Ok(ev)) => self.on_event(ev),
                Err(_) => {}
            }
        }
        self.flush_acks();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rumqttc::v5::Request;
    use rumqttc::v5::mqttbytes::v5::Publish;

    use super::*;

    /// A host whose log filter goes through the agent's real validation.
    #[derive(Default)]
    struct TestHost {
        levels: Mutex<Vec<String>>,
    }

    impl FleetHost for TestHost {
        fn status(&self) -> Value {
            json!({ "state": "online" })
        }
        fn telemetry(&self) -> Value {
            json!({})
        }
        fn config(&self) -> Value {
            json!({})
        }
        fn restart_pipeline(&self) -> Result<(), CommandError> {
            Ok(())
        }
        fn set_log_level(&self, level: &str) -> Result<(), CommandError> {
            crate::logging::parse_filter(level)?;
            self.levels.lock().unwrap().push(level.to_string());
            Ok(())
        }
    }

    /// `n` stored events, one per µs from 1; remembers the limits it was asked for.
    struct TestOutbox {
        events: usize,
        limits: Arc<Mutex<Vec<usize>>>,
    }

    impl Outbox for TestOutbox {
        fn after(&mut self, _: i64, _: usize) -> Result<Vec<store::OutboxRow>, OutboxError> {
            Ok(Vec::new())
        }
        fn oldest(&mut self) -> Result<Option<i64>, OutboxError> {
            Ok(None)
        }
        fn acked(&mut self, _: Vec<i64>) {}
        fn flush(&mut self, _: Duration) {}
        fn events_since(
            &mut self,
            since_us: i64,
            limit: usize,
        ) -> Result<Vec<store::Event>, OutboxError> {
            self.limits.lock().unwrap().push(limit);
            Ok((1..=self.events as i64)
                .filter(|&ts| ts >= since_us)
                .take(limit)
                .map(|ts| store::Event {
                    id: store::new_event_id(),
                    ts_us: ts,
                    stream: None,
                    kind: "test".into(),
                    payload: json!({}),
                })
                .collect())
        }
    }

    struct Harness {
        link: Link,
        host: Arc<TestHost>,
        limits: Arc<Mutex<Vec<usize>>>,
    }

    fn harness() -> Harness {
        let settings = FleetSettings {
            device: "dev1".into(),
            host: "127.0.0.1".into(),
            port: 1,
            client_id: "dev1".into(),
            credentials: None,
            keepalive: Duration::from_secs(5),
            telemetry_every: Duration::from_secs(1),
            inflight: 16,
            tls: None,
            log_level: "info".into(),
            workflow_groups: None,
            models: false,
            model_chunks: None,
            firmware: false,
        };
        let host = Arc::new(TestHost::default());
        let limits = Arc::new(Mutex::new(Vec::new()));
        let outbox = TestOutbox {
            events: 5000,
            limits: limits.clone(),
        };
        let mut link = Link::new(
            settings,
            Box::new(outbox),
            host.clone(),
            Arc::new(FleetCounters::default()),
        );
        // As after a CONNACK: the link publishes only while connected.
        link.connected = true;
        Harness { link, host, limits }
    }

    impl Harness {
        /// A message from the broker on `aegis/v1/dev1/{leaf}`.
        fn receive(&mut self, leaf: &str, payload: &str) {
            let p = Publish::new(
                format!("aegis/v1/dev1/{leaf}"),
                QoS::AtLeastOnce,
                payload.as_bytes().to_vec(),
                None,
            );
            self.link.on_command(p);
        }

        /// What the link asked to publish since the last call: (topic, retained, JSON body).
        fn published(&mut self) -> Vec<(String, bool, Value)> {
            self.link.events.clean();
            self.link
                .events
                .pending
                .drain(..)
                .filter_map(|r| match r {
                    Request::Publish(p) => Some((
                        String::from_utf8_lossy(&p.topic).into_owned(),
                        p.retain,
                        serde_json::from_slice(&p.payload).unwrap(),
                    )),
                    _ => None,
                })
                .collect()
        }

        /// The reply to command `name` with `args`.
        fn command(&mut self, name: &str, args: &str) -> Value {
            self.receive(&format!("cmd/{name}"), args);
            let reply_topic = format!("aegis/v1/dev1/cmd/{name}/reply");
            let replies: Vec<Value> = self
                .published()
                .into_iter()
                .filter(|(t, _, _)| *t == reply_topic)
                .map(|(_, _, v)| v)
                .collect();
            assert_eq!(replies.len(), 1, "{replies:?}");
            replies.into_iter().next().unwrap_or_default()
        }

        /// Sends `payload` to toggle `name`; returns what the state topic got.
        fn toggle(&mut self, name: &str, payload: &str) -> (bool, Value) {
            self.receive(&format!("toggles/{name}/set"), payload);
            let state = format!("aegis/v1/dev1/toggles/{name}/state");
            let states: Vec<(bool, Value)> = self
                .published()
                .into_iter()
                .filter(|(t, _, _)| *t == state)
                .map(|(_, r, v)| (r, v))
                .collect();
            assert_eq!(states.len(), 1, "{states:?}");
            states.into_iter().next().unwrap_or_default()
        }
    }

    /// A TLS file that cannot be used is refused with its config key and path.
    #[test]
    fn tls_files_that_cannot_be_used_are_named() {
        let d = tempfile::tempdir().unwrap();
        let ca = d.path().join("ca.pem");
        let tls = aegis_config::FleetTls {
            ca_file: ca.clone(),
            cert_file: None,
            key_file: None,
        };
        let Err(e) = tls_config(&tls) else {
            panic!("a missing CA file is refused");
        };
        assert!(
            matches!(e, FleetSetupError::ReadPem { ref path, .. } if *path == ca),
            "{e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("fleet.tls: cannot read {}: ", ca.display())),
            "{e}"
        );
        std::fs::write(&ca, "no certificate here\n").unwrap();
        let Err(e) = tls_config(&tls) else {
            panic!("a CA file without a certificate is refused");
        };
        assert_eq!(
            e.to_string(),
            format!("fleet.tls: {} holds no certificate", ca.display())
        );
    }

    #[test]
    fn set_log_level_refuses_a_word_that_is_not_a_level_and_keeps_the_one_in_force() {
        let mut h = harness();
        let reply = h.command("set_log_level", r#"{"level": "verbose"}"#);
        assert_eq!(reply["ok"], false, "{reply}");
        let error = reply["error"].as_str().unwrap();
        assert!(error.contains("\"verbose\" is not a log level"), "{error}");
        assert!(h.host.levels.lock().unwrap().is_empty());
        assert_eq!(h.link.s.log_level, "info");
        let reply = h.command("set_log_level", r#"{"level": 3}"#);
        assert!(
            reply["error"].as_str().unwrap().contains("needs"),
            "{reply}"
        );
    }

    #[test]
    fn set_log_level_also_updates_the_retained_toggle_state() {
        let mut h = harness();
        h.receive(
            "cmd/set_log_level",
            r#"{"level": "warn,aegis_agent=debug"}"#,
        );
        let out = h.published();
        let reply = out
            .iter()
            .find(|(t, _, _)| t.ends_with("/cmd/set_log_level/reply"))
            .unwrap();
        assert_eq!(reply.2["ok"], true, "{out:?}");
        let state = out
            .iter()
            .find(|(t, _, _)| t == "aegis/v1/dev1/toggles/log_level/state")
            .unwrap_or_else(|| panic!("no toggle state published: {out:?}"));
        assert!(state.1, "the state in force is retained");
        assert_eq!(state.2["value"], "warn,aegis_agent=debug");
    }

    #[test]
    fn the_log_level_toggle_takes_bare_text_or_json_and_never_retains_a_refused_value() {
        let mut h = harness();
        for (payload, level) in [
            ("debug", "debug"),
            (r#""WARN""#, "WARN"),
            (
                r#"{"value": "info,aegis_agent=trace"}"#,
                "info,aegis_agent=trace",
            ),
            (" error\n", "error"),
        ] {
            let (retained, state) = h.toggle("log_level", payload);
            assert!(retained, "{payload:?}");
            assert_eq!(state, json!({ "value": level }), "{payload:?}");
        }
        for (payload, named) in [
            ("verbose", "\"verbose\" is not a log level"),
            (r#"{"value": "verbose"}"#, "\"verbose\" is not a log level"),
            ("2", "wrong value type for log_level"),
            ("", "empty payload"),
        ] {
            let (retained, state) = h.toggle("log_level", payload);
            assert!(
                !retained,
                "a refused value must not be retained: {payload:?}"
            );
            assert_eq!(state["value"], "error", "the level in force: {state}");
            let e = state["error"].as_str().unwrap();
            assert!(e.contains(named), "{payload:?}: {e}");
        }
        assert_eq!(h.link.s.log_level, "error");
    }

    #[test]
    fn the_telemetry_toggle_takes_a_number_in_range() {
        let mut h = harness();
        assert_eq!(h.toggle("telemetry_s", "7"), (true, json!({ "value": 7 })));
        assert_eq!(
            h.toggle("telemetry_s", r#"{"value": 9}"#),
            (true, json!({ "value": 9 }))
        );
        let (retained, state) = h.toggle("telemetry_s", "0");
        assert!(!retained && state["error"].as_str().unwrap().contains("1 to 3600"));
        let (_, state) = h.toggle("telemetry_s", "often");
        assert!(
            state["error"]
                .as_str()
                .unwrap()
                .contains("wrong value type")
        );
        assert_eq!(state["value"], 9);
    }

    #[test]
    fn query_events_clamps_a_limit_above_the_bound_and_says_so() {
        let mut h = harness();
        let reply = h.command("query_events", r#"{"since_us": 0, "limit": 5000}"#);
        let r = &reply["result"];
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(r["limit"], QUERY_EVENTS_MAX);
        assert_eq!(r["clamped"], true);
        assert_eq!(*h.limits.lock().unwrap(), [QUERY_EVENTS_MAX as usize]);
        // (1000 small events fit one message.)
        assert_eq!(r["events"].as_array().unwrap().len(), 1000);
        assert_eq!(r["truncated"], false);

        let reply = h.command("query_events", r#"{"since_us": 4990, "limit": 5}"#);
        let r = &reply["result"];
        assert_eq!(
            (r["limit"].as_u64(), r["clamped"].as_bool()),
            (Some(5), Some(false))
        );
        let ts: Vec<i64> = r["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["ts_us"].as_i64().unwrap())
            .collect();
        assert_eq!(ts, [4990, 4991, 4992, 4993, 4994]);

        let reply = h.command("query_events", "{}");
        assert_eq!(reply["result"]["limit"], QUERY_EVENTS_DEFAULT);
    }

    #[test]
    fn query_events_refuses_arguments_of_the_wrong_kind() {
        let mut h = harness();
        for (args, named) in [
            (
                r#"{"limit": 0}"#,
                "limit must be a whole number from 1 to 1000, got 0",
            ),
            (r#"{"limit": -5}"#, "got -5"),
            (r#"{"limit": "all"}"#, "got \"all\""),
            (
                r#"{"since_us": "yesterday"}"#,
                "since_us must be an integer",
            ),
        ] {
            let reply = h.command("query_events", args);
            assert_eq!(reply["ok"], false, "{args}: {reply}");
            assert!(reply["error"].as_str().unwrap().contains(named), "{reply}");
        }
        assert!(h.limits.lock().unwrap().is_empty(), "nothing was queried");
    }

    // ---- Delete after PUBACK, exactly: the pkid ↔ outbox-row pairing under a simulated
    // broker. The link is the real `Link`; `rumqttc` is the link's own `EventLoop`: its
    // `MqttState` (packet ids, flow control, collisions, PUBACK handling) and its request
    // queues, driven as `EventLoop::poll` drives them (the channel; `pending`, which a
    // connection error fills and a CONNACK without a session clears), minus the socket.

    /// A deterministic generator (SplitMix64): a failing seed replays the same schedule.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    /// What the test knows about the outbox: rows, deletions, and what the broker accepted.
    #[derive(Default)]
    struct Ledger {
        rows: std::collections::BTreeMap<i64, store::OutboxRow>,
        next_seq: i64,
        /// Deletions submitted by the link, not yet applied (the store's writer lags).
        to_delete: Vec<i64>,
        /// Every seq the link asked to delete, in order.
        deleted: Vec<i64>,
        /// Rows whose own successful PUBACK reached the link.
        acknowledged: BTreeSet<i64>,
        /// Deletions asked for before the row's PUBACK arrived (must stay empty).
        premature: Vec<i64>,
    }

    struct MemOutbox(Arc<Mutex<Ledger>>);

    impl Outbox for MemOutbox {
        fn after(&mut self, seq: i64, limit: usize) -> Result<Vec<store::OutboxRow>, OutboxError> {
            let l = self.0.lock().unwrap();
            Ok(l.rows
                .range(seq + 1..)
                .take(limit)
                .map(|(_, r)| store::OutboxRow {
                    seq: r.seq,
                    topic: r.topic.clone(),
                    payload: r.payload.clone(),
                })
                .collect())
        }
        fn oldest(&mut self) -> Result<Option<i64>, OutboxError> {
            Ok(self.0.lock().unwrap().rows.keys().next().copied())
        }
        fn acked(&mut self, seqs: Vec<i64>) {
            let mut l = self.0.lock().unwrap();
            for s in seqs {
                if !l.acknowledged.contains(&s) {
                    l.premature.push(s);
                }
                l.deleted.push(s);
                l.to_delete.push(s);
            }
        }
        fn flush(&mut self, _: Duration) {}
        fn events_since(&mut self, _: i64, _: usize) -> Result<Vec<store::Event>, OutboxError> {
            Ok(Vec::new())
        }
    }

    /// `rumqttc` and a broker around a real `Link`.
    struct Sim {
        link: Link,
        ledger: Arc<Mutex<Ledger>>,
        /// Receive maximum: rumqttc's packet ids run 1..=max_inflight.
        max_inflight: u16,
        /// `link.events.pending` holds rumqttc's `pending` (the first `p_len` requests)
        /// followed by what is still in its request channel, in order.
        p_len: usize,
        /// Packets written, not yet read by the broker (lost on a disconnect).
        wire: VecDeque<Publish>,
        /// QoS 1 publishes the broker received and has not acknowledged: (pkid, outbox seq).
        unacked: Vec<(u16, Option<i64>)>,
        online: bool,
        /// Connections so far; `deliveries[seq]` lists the connection of each delivery.
        epoch: usize,
        deliveries: HashMap<i64, Vec<usize>>,
        /// The broker answers some PUBACKs with NotAuthorized.
        rejects: bool,
        rng: Rng,
        /// What the schedule exercised (so that a passing run is not a vacuous one).
        seen: Seen,
    }

    /// Counts of the situations a schedule went through.
    #[derive(Debug, Default, Clone, Copy)]
    struct Seen {
        collisions: usize,
        drops_with_rows_in_flight: usize,
        connects_with_session: usize,
        offline_replies: usize,
    }

    impl Sim {
        fn new(seed: u64, window: usize, max_inflight: u16, rejects: bool) -> Sim {
            let ledger = Arc::new(Mutex::new(Ledger {
                next_seq: 1,
                ..Ledger::default()
            }));
            let settings = FleetSettings {
                device: "dev1".into(),
                host: "127.0.0.1".into(),
                port: 1,
                client_id: "dev1".into(),
                credentials: None,
                keepalive: Duration::from_secs(5),
                telemetry_every: Duration::ZERO,
                inflight: window,
                tls: None,
                log_level: "info".into(),
                workflow_groups: None,
                models: false,
                model_chunks: None,
                firmware: false,
            };
            let mut link = Link::new(
                settings,
                Box::new(MemOutbox(ledger.clone())),
                Arc::new(TestHost::default()),
                Arc::new(FleetCounters::default()),
            );
            // The broker's receive maximum: packet ids run 1..=max_inflight.
            link.events.state = rumqttc::v5::MqttState::new(max_inflight, false);
            Sim {
                link,
                ledger,
                max_inflight,
                p_len: 0,
                wire: VecDeque::new(),
                unacked: Vec::new(),
                online: false,
                epoch: 0,
                deliveries: HashMap::new(),
                rejects,
                rng: Rng(seed),
                seen: Seen::default(),
            }
        }

        /// Moves what the link requested from rumqttc's channel into the model (after the
        /// link ran: it may have emptied rumqttc's queues).
        fn pull(&mut self) {
            self.p_len = self.p_len.min(self.link.events.pending.len());
            // `clean` appends the channel to `pending`, in order; the protocol state is kept
            // out of its reach (a live connection keeps it).
            let state = std::mem::replace(
                &mut self.link.events.state,
                rumqttc::v5::MqttState::new(1, false),
            );
            self.link.events.clean();
            self.link.events.state = state;
        }

        /// Hands rumqttc's events to the link, one at a time, as `poll` does.
        fn deliver(&mut self) {
            while let Some(ev) = self.link.events.state.events.pop_front() {
                if matches!(ev, Event::Outgoing(Outgoing::AwaitAck(_))) {
                    self.seen.collisions += 1;
                }
                self.link.on_event(ev);
                self.pull();
            }
        }

        /// rumqttc takes its next request (pending first, then the channel under flow
        /// control) and writes it.
        fn write_next(&mut self) {
            let q = &mut self.link.events.pending;
            let req = if self.p_len > 0 {
                self.p_len -= 1;
                q.pop_front()
            } else if self.link.events.state.inflight() < self.max_inflight
                && self.link.events.state.collision.is_none()
            {
                q.pop_front()
            } else {
                None
            };
            let Some(req) = req else { return };
            match self.link.events.state.handle_outgoing_packet(req) {
                Ok(Some(Packet::Publish(p))) => self.wire.push_back(p),
                Ok(_) => {}
                Err(e) => panic!("rumqttc refused a request: {e}"),
            }
            self.deliver();
        }

        /// The broker reads the next packet off the wire.
        fn broker_reads(&mut self) {
            let Some(p) = self.wire.pop_front() else {
                return;
            };
            let seq = (p.topic.as_ref() == b"aegis/v1/dev1/events").then(|| {
                std::str::from_utf8(&p.payload)
                    .unwrap()
                    .parse::<i64>()
                    .unwrap()
            });
            if let Some(s) = seq {
                self.deliveries.entry(s).or_default().push(self.epoch);
            }
            if p.qos == QoS::AtLeastOnce {
                self.unacked.push((p.pkid, seq));
            }
        }

        /// The broker acknowledges one received publish, in any order.
        fn broker_acks(&mut self) {
            if self.unacked.is_empty() {
                return;
            }
            let i = self.rng.below(self.unacked.len() as u64) as usize;
            let refuse = self.rejects && self.rng.chance(6);
            self.ack_at(i, refuse);
        }

        /// The broker answers the `i`th publish it holds unacknowledged: accepted, or
        /// refused (NotAuthorized).
        fn ack_at(&mut self, i: usize, refuse: bool) {
            let (pkid, seq) = self.unacked.remove(i);
            let mut ack = rumqttc::v5::mqttbytes::v5::PubAck::new(pkid, None);
            if refuse {
                ack.reason = PubAckReason::NotAuthorized;
            } else if let Some(s) = seq {
                self.ledger.lock().unwrap().acknowledged.insert(s);
            }
            match self
                .link
                .events
                .state
                .handle_incoming_packet(Packet::PubAck(ack))
            {
                // A publish that waited on this packet id (a collision) goes out now.
                Ok(Some(Packet::Publish(p))) => self.wire.push_back(p),
                Ok(_) => {}
                Err(e) => panic!("rumqttc refused a PUBACK: {e}"),
            }
            self.deliver();
        }

        /// The connection drops: what was written but not read is lost, and rumqttc moves
        /// its unacknowledged publishes and its channel to `pending` (`EventLoop::clean`).
        fn drop_connection(&mut self) {
            if !self.link.inflight.is_empty() {
                self.seen.drops_with_rows_in_flight += 1;
            }
            let resend = self.link.events.state.clean();
            let at = self.p_len;
            for (i, r) in resend.into_iter().enumerate() {
                self.link.events.pending.insert(at + i, r);
            }
            self.p_len = self.link.events.pending.len();
            self.wire.clear();
            self.unacked.clear();
            self.online = false;
            self.link.on_disconnect();
            self.pull();
        }

        /// A connect attempt that fails: rumqttc's queues stay as they are.
        fn connect_fails(&mut self) {
            self.link.on_disconnect();
            self.pull();
        }

        fn connect(&mut self, session_present: bool) {
            if !session_present {
                self.link.events.pending.drain(..self.p_len);
                self.p_len = 0;
            }
            self.online = true;
            self.epoch += 1;
            self.seen.connects_with_session += usize::from(session_present);
            let connack = rumqttc::v5::mqttbytes::v5::ConnAck {
                session_present,
                code: rumqttc::v5::mqttbytes::v5::ConnectReturnCode::Success,
                properties: None,
            };
            self.link
                .events
                .state
                .handle_incoming_packet(Packet::ConnAck(connack))
                .unwrap();
            self.deliver();
        }

        /// rumqttc writes all it can and the broker reads it all.
        fn flow(&mut self) {
            loop {
                let before = (self.link.events.pending.len(), self.wire.len());
                self.write_next();
                while !self.wire.is_empty() {
                    self.broker_reads();
                }
                if (self.link.events.pending.len(), self.wire.len()) == before {
                    return;
                }
            }
        }

        /// Writes what is queued, lets the link drain the outbox on a tick, writes again.
        fn drain(&mut self) {
            self.flow();
            self.link.on_tick();
            self.pull();
            self.flow();
        }

        /// The broker accepts every publish it holds that is not an outbox row.
        fn ack_others(&mut self) {
            while let Some(i) = self.unacked.iter().position(|&(_, s)| s.is_none()) {
                self.ack_at(i, false);
            }
            self.flow();
        }

        /// Index in `unacked` of the broker's copy of outbox row `seq`.
        fn held(&self, seq: i64) -> usize {
            self.unacked
                .iter()
                .position(|&(_, s)| s == Some(seq))
                .unwrap_or_else(|| {
                    panic!("row {seq} is not held by the broker: {:?}", self.unacked)
                })
        }

        /// Asserts the link asked to delete exactly the rows whose own PUBACK it got.
        fn assert_pairing(&mut self) {
            self.link.flush_acks();
            let l = self.ledger.lock().unwrap();
            assert!(
                l.premature.is_empty(),
                "deleted without a PUBACK: {:?}",
                l.premature
            );
            let deleted: BTreeSet<i64> = l.deleted.iter().copied().collect();
            assert_eq!(deleted, l.acknowledged);
        }

        fn append_rows(&mut self, n: usize) {
            let mut l = self.ledger.lock().unwrap();
            for _ in 0..n {
                let seq = l.next_seq;
                l.next_seq += 1;
                l.rows.insert(
                    seq,
                    store::OutboxRow {
                        seq,
                        topic: "aegis/v1/dev1/events".into(),
                        payload: seq.to_string().into_bytes(),
                    },
                );
            }
        }

        fn apply_deletions(&mut self) {
            let mut l = self.ledger.lock().unwrap();
            for s in std::mem::take(&mut l.to_delete) {
                l.rows.remove(&s);
            }
        }

        fn late_reply(&mut self) {
            self.seen.offline_replies += usize::from(!self.online);
            self.link.late_reply(LateReply {
                topic: "aegis/v1/dev1/cmd/snapshot/reply".into(),
                correlation: None,
                body: Err(SnapshotError::Timeout.to_string()),
                content_type: "image/jpeg",
            });
            self.pull();
        }

        fn command(&mut self) {
            let p = Publish::new("aegis/v1/dev1/cmd/ping", QoS::AtLeastOnce, "{}", None);
            self.link.on_command(p);
            self.pull();
        }

        fn step(&mut self) {
            let r = self.rng.below(100);
            if self.online {
                match r {
                    0..=24 => self.write_next(),
                    25..=44 => self.broker_reads(),
                    45..=64 => self.broker_acks(),
                    65..=71 => {
                        self.link.on_tick();
                        self.pull();
                    }
                    72..=77 => self.command(),
                    78..=81 => self.late_reply(),
                    82..=89 => {
                        let n = 1 + self.rng.below(4) as usize;
                        self.append_rows(n);
                    }
                    90..=95 => self.apply_deletions(),
                    _ => self.drop_connection(),
                }
            } else {
                match r {
                    0..=29 => self.late_reply(),
                    30..=44 => {
                        self.link.on_tick();
                        self.pull();
                    }
                    45..=54 => self.append_rows(1),
                    55..=64 => self.apply_deletions(),
                    65..=79 => self.connect_fails(),
                    _ => {
                        let session = self.rng.chance(4);
                        self.connect(session);
                    }
                }
            }
        }

        /// No more faults: runs until every row is acknowledged and deleted, reconnecting
        /// when nothing moves (a rejected row goes out again on the next connection).
        fn settle(&mut self, ctx: &str) {
            self.rejects = false;
            let mut left = usize::MAX;
            let mut still = 0;
            for _ in 0..100_000 {
                if !self.online {
                    self.connect(false);
                }
                self.link.flush_acks();
                self.apply_deletions();
                let rows = self.ledger.lock().unwrap().rows.len();
                if rows == 0 {
                    return;
                }
                (left, still) = if rows < left {
                    (rows, 0)
                } else {
                    (left, still + 1)
                };
                if still == 2000 {
                    self.drop_connection();
                    still = 0;
                }
                // rumqttc writes faster than the link ticks (each tick adds telemetry).
                match self.rng.below(10) {
                    0..=3 => self.write_next(),
                    4..=6 => self.broker_reads(),
                    7 | 8 => self.broker_acks(),
                    _ => {
                        self.link.on_tick();
                        self.pull();
                    }
                }
            }
            panic!(
                "{ctx}: the outbox never emptied: rows {:?}, link FIFO {:?}, in flight {:?}, \
                 cursor {}, acked {:?}, rumqttc queue {} (pending {}), collision {:?}, \
                 rumqttc in flight {}, wire {}, broker unacked {:?}",
                self.ledger.lock().unwrap().rows.keys().collect::<Vec<_>>(),
                self.link.fifo,
                self.link.inflight,
                self.link.cursor,
                self.link.acked,
                self.link.events.pending.len(),
                self.p_len,
                self.link.events.state.collision.as_ref().map(|p| p.pkid),
                self.link.events.state.inflight(),
                self.wire.len(),
                self.unacked,
            );
        }

        /// Deliveries, per connection, of rows that had been delivered before.
        fn duplicates_per_connection(&self) -> Vec<usize> {
            let mut dups = vec![0; self.epoch + 1];
            for epochs in self.deliveries.values() {
                for &e in &epochs[1..] {
                    dups[e] += 1;
                }
            }
            dups
        }
    }

    /// Runs one random schedule; panics naming the seed when a property fails.
    fn run_schedule(seed: u64, steps: usize, rejects: bool) -> Seen {
        let mut rng = Rng(seed);
        let window = 1 + rng.below(6) as usize;
        let max_inflight = 2 + rng.below(10) as u16;
        let mut sim = Sim::new(seed, window, max_inflight, rejects);
        sim.append_rows(3);
        let ctx = format!(
            "seed {seed} (window {window}, receive maximum {max_inflight}, rejects {rejects})"
        );
        for _ in 0..steps {
            sim.step();
        }
        sim.settle(&ctx);
        let l = sim.ledger.lock().unwrap();
        assert!(
            l.premature.is_empty(),
            "{ctx}: rows deleted without their own PUBACK: {:?}",
            l.premature
        );
        let deleted: BTreeSet<i64> = l.deleted.iter().copied().collect();
        assert_eq!(
            deleted, l.acknowledged,
            "{ctx}: deleted rows differ from acknowledged rows"
        );
        assert_eq!(deleted.len(), l.deleted.len(), "{ctx}: a row deleted twice");
        for seq in 1..l.next_seq {
            assert!(
                sim.deliveries.contains_key(&seq),
                "{ctx}: row {seq} was never delivered"
            );
        }
        if !rejects {
            let dups = sim.duplicates_per_connection();
            assert!(
                dups.iter().all(|&d| d <= window),
                "{ctx}: duplicates per connection {dups:?} exceed the window"
            );
        }
        sim.seen
    }

    /// Runs `seeds`; asserts the schedules went through every situation, many times.
    fn run_schedules(seeds: std::ops::Range<u64>, rejects: bool) {
        let mut total = Seen::default();
        for seed in seeds {
            let s = run_schedule(seed, 600, rejects);
            total.collisions += s.collisions;
            total.drops_with_rows_in_flight += s.drops_with_rows_in_flight;
            total.connects_with_session += s.connects_with_session;
            total.offline_replies += s.offline_replies;
        }
        let Seen {
            collisions,
            drops_with_rows_in_flight,
            connects_with_session,
            offline_replies,
        } = total;
        assert!(
            [
                collisions,
                drops_with_rows_in_flight,
                connects_with_session,
                offline_replies
            ]
            .iter()
            .all(|&n| n >= 50),
            "the schedules missed a situation: {total:?}"
        );
    }

    #[test]
    fn a_reply_finished_while_offline_does_not_shift_the_pairing() {
        let mut sim = Sim::new(1, 16, 20, false);
        sim.connect(false);
        sim.flow();
        sim.ack_others();
        sim.drop_connection();
        // The snapshot reply completes during the outage; then the broker is back.
        sim.late_reply();
        sim.connect(false);
        // A backlog: the link drains it before rumqttc has written the CONNACK's publishes.
        sim.append_rows(3);
        sim.link.on_tick();
        sim.pull();
        sim.flow();
        // Acknowledge the non-row publishes (toggle states, status) first, then each row;
        // every PUBACK must delete exactly its own row (before the fix the reply, left in
        // rumqttc's channel while the FIFO was cleared on CONNACK, put the FIFO one entry
        // ahead: the status PUBACK deleted row 1, row 1's deleted row 2, …).
        while let Some(i) = sim.unacked.iter().position(|&(_, s)| s.is_none()) {
            sim.ack_at(i, false);
            sim.assert_pairing();
        }
        for seq in 1..=3 {
            let i = sim.held(seq);
            sim.ack_at(i, false);
            sim.assert_pairing();
        }
        assert_eq!(sim.ledger.lock().unwrap().deleted, [1, 2, 3]);
    }

    #[test]
    fn a_broker_claiming_a_session_gets_nothing_stale_and_the_pairing_holds() {
        let mut sim = Sim::new(2, 16, 20, false);
        sim.connect(false);
        sim.append_rows(2);
        sim.drain();
        // Rows 1 and 2 reached the broker, unacknowledged; the link also queued a reply.
        sim.command();
        sim.drop_connection();
        // Against MQTT 5 (the link asks for a clean start) the broker says a session exists:
        // rumqttc would replay its `pending` (rows 1, 2, the reply) ahead of the link's new
        // requests, each write pairing with someone else's FIFO entry.
        sim.connect(true);
        sim.drain();
        let resent: Vec<i64> = sim.unacked.iter().filter_map(|&(_, s)| s).collect();
        assert_eq!(
            resent,
            [1, 2],
            "each unacknowledged row once, from the outbox"
        );
        while !sim.unacked.is_empty() {
            let i = sim.unacked.len() - 1;
            sim.ack_at(i, false);
            sim.assert_pairing();
        }
        assert_eq!(
            sim.ledger.lock().unwrap().acknowledged,
            BTreeSet::from([1, 2])
        );
        assert_eq!(sim.duplicates_per_connection(), [0, 0, 2]);
    }

    #[test]
    fn a_publish_parked_on_a_packet_id_collision_does_not_block_the_next_connection() {
        // Receive maximum 3: packet ids run 1, 2, 3, 1, …
        let mut sim = Sim::new(3, 8, 3, false);
        sim.connect(false);
        // The CONNACK's two subscribes and three QoS 1 publishes (toggle states, status)
        // took ids 1, 2 | 3, 1, 2. The broker acknowledges all but the first publish (id 3),
        // so the next publish, row 1, gets id 3 and waits on a collision.
        sim.flow();
        while sim.unacked.len() > 1 {
            sim.ack_at(1, false);
        }
        sim.append_rows(3);
        sim.drain();
        assert!(
            sim.link.events.state.collision.is_some(),
            "the schedule must park a publish on a collision"
        );
        sim.drop_connection();
        sim.connect(false);
        sim.flow();
        sim.ack_others();
        sim.drain();
        let held: BTreeSet<i64> = sim.unacked.iter().filter_map(|&(_, s)| s).collect();
        assert_eq!(
            held,
            BTreeSet::from([1, 2, 3]),
            "rumqttc takes requests again"
        );
    }

    #[test]
    fn a_refused_puback_keeps_the_row_until_an_accepted_one() {
        let mut sim = Sim::new(4, 16, 20, false);
        sim.connect(false);
        sim.flow();
        sim.ack_others();
        sim.append_rows(2);
        sim.drain();
        let i = sim.held(1);
        sim.ack_at(i, true);
        let i = sim.held(2);
        sim.ack_at(i, false);
        sim.assert_pairing();
        assert_eq!(sim.ledger.lock().unwrap().deleted, [2]);
        assert_eq!(
            sim.link
                .counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            1
        );
        // Not resent on this connection; sent again after the next reconnect.
        sim.drain();
        assert!(sim.unacked.iter().all(|&(_, s)| s.is_none()));
        sim.drop_connection();
        sim.connect(false);
        sim.drain();
        let i = sim.held(1);
        sim.ack_at(i, false);
        sim.assert_pairing();
        assert_eq!(sim.ledger.lock().unwrap().deleted, [2, 1]);
    }

    /// Random schedules of outbox rows, QoS 0/1 status, telemetry, command and late replies
    /// (online and offline), PUBACKs in any order, packet-id collisions, disconnects
    /// mid-flight, failed connect attempts and reconnects with or without a session: every
    /// deleted row had its own PUBACK, every acknowledged row is deleted, nothing is lost, and
    /// no connection re-delivers more rows than the in-flight window.
    #[test]
    fn a_puback_deletes_exactly_its_own_row_under_random_schedules() {
        run_schedules(0..1000, false);
    }

    /// The same with a broker that refuses some publishes (PUBACK reason NotAuthorized): a
    /// refused row is kept and sent again after the next reconnect, never deleted.
    #[test]
    fn a_refused_publish_keeps_its_row() {
        run_schedules(1000..1300, true);
    }
}
