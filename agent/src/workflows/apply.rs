//! Applying a signed workflow to the running pipeline (DESIGN §5, "Apply"): verify → load
//! the models it needs (sharing unchanged ones) → commit it on trial → switch → health check
//! → keep it or roll back → receipt. Every way in (fleet topics, `POST /workflow` used by
//! `aegis workflow apply`) goes through [`Applier::handle`].
//!
//! The switch is **in place** when only the stages differ: every stream's stage thread
//! picks up its new chain between two frames, so no frame is dropped and nothing is
//! reopened. Otherwise the pipeline is **rebuilt** (sources or sinks changed): the old one
//! stops cleanly (recordings finalised), the new one starts.
//!
//! The health check needs neither the broker nor a camera: each stream is judged on the
//! frames its new chain processed within `workflows.health.window_s` (stage failures above
//! `max_error_ratio`, or a stream that dies, fail it); a stream whose source delivers nothing
//! is judged on its build alone.
//!
//! Unauthenticated input (format or signature failures, anything while the device's trust
//! metadata is expired or lost) gets no signed answer: it is counted, each refusal gets an
//! audit row (rate-limited storage: beyond a budget per minute they are counted in a
//! summary row), and at most one unsigned rejection notice per [`NOTICE_INTERVAL`]
//! summarises it, so the device is never a signing oracle and a flood costs one failed
//! check per message.
//!
//! Fleet deliveries and local requests wait in separate places, so neither starves the
//! other: the fleet's [`FleetInbox`] keeps the latest message per topic (a message replaced
//! before it was judged is counted as superseded, and its topic's retained message is
//! fetched again once the topic is quiet, so a valid retained document is never lost to a
//! flood), and `POST /workflow` has its own small queue (a full queue answers 503).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::{HealthCheckConfig, InferenceConfig, PipelineConfig};
use aegis_ota::receipt::{Verdict, redact};
use aegis_ota::state::{Outcome, Stopped, Subject, TrustUpdate, Workflows};
use serde::Serialize;

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, PipelineError, RunOptions, StageHealth};
use crate::store::{Record, StoreHandle, now_us};

mod firmware;
mod models;
pub use firmware::is_firmware_topic;
pub use models::is_models_topic;

/// Unsigned rejection notices are sent at most this often.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// Window of the refusal audit budget.
pub const AUDIT_WINDOW: Duration = Duration::from_secs(60);
/// Refusals stored as their own audit row per window; the rest are counted in a summary row.
pub const AUDIT_ROWS_PER_WINDOW: u64 = 60;
/// A superseded topic's retained message is fetched again at most this often.
const REFETCH_INTERVAL: Duration = Duration::from_secs(2);
/// Signed `rejected` receipts per [`AUDIT_WINDOW`]; more are answered unsigned.
pub const SIGNED_REJECTIONS_PER_WINDOW: u32 = 30;
/// Local (`POST /workflow`) requests waiting for the applier.
pub const LOCAL_QUEUE: usize = 8;

/// Starts pipelines with the run's fixed options.
pub struct Starter {
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Run options (without `inference`, which comes with each pipeline).
    pub opts: RunOptions,
    /// The local config's inference section.
    pub inference: InferenceConfig,
    /// CUDA device index.
    pub cuda_device: u32,
    /// Models installed over the air (confirmed): each replaces the configured model of
    /// its name, or adds one.
    pub installed: Mutex<Vec<aegis_config::ModelConfig>>,
    /// Event clips of the pipelines it starts (`None`: never).
    pub evidence: Option<Arc<crate::evidence::EvidenceHost>>,
}

impl Starter {
    /// Loads the models `cfg` needs, sharing those `loaded` has.
    pub fn load(
        &self,
        cfg: &PipelineConfig,
        loaded: &Inference,
    ) -> Result<Arc<Inference>, crate::inference::InferenceError> {
        Inference::load_reusing(&self.models(None), cfg, self.cuda_device, loaded)
    }

    /// [`Starter::load`] with `trial` in place of the model of its name (a bundle on
    /// trial).
    pub fn load_with(
        &self,
        cfg: &PipelineConfig,
        loaded: &Inference,
        trial: &aegis_config::ModelConfig,
    ) -> Result<Arc<Inference>, crate::inference::InferenceError> {
        Inference::load_reusing(&self.models(Some(trial)), cfg, self.cuda_device, loaded)
    }

    /// The inference section with the installed models (and `trial`) in place.
    pub fn models(&self, trial: Option<&aegis_config::ModelConfig>) -> InferenceConfig {
        let mut inf = self.inference.clone();
        let installed = self.installed.lock().unwrap_or_else(|p| p.into_inner());
        for m in installed.iter().chain(trial) {
            inf.models.retain(|c| c.name != m.name);
            inf.models.push(m.clone());
        }
        inf
    }

    /// Starts `cfg` with `inference`.
    pub fn start(
        &self,
        cfg: &PipelineConfig,
        inference: Arc<Inference>,
    ) -> Result<Pipeline, PipelineError> {
        let mut opts = self.opts.clone();
        opts.inference = Some(inference);
        if let Some(host) = &self.evidence {
            opts.evidence = host.for_pipeline(cfg);
        }
        Pipeline::start(cfg, self.metrics.clone(), &opts)
    }
}

/// Why a pipeline did not start on its worker thread (the receipt's reason after `start: `).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The pipeline refused to start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The thread starting it panicked.
    #[error("{0}")]
    Panicked(tokio::task::JoinError),
}

/// Why a new pipeline failed its health check (the receipt's reason after `health: `).
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// A stream ended before its new chain was judged (its input did not end).
    #[error("stream {stream} stopped")]
    Stopped {
        /// The stream's id.
        stream: String,
    },
    /// A stream's new stages failed on more frames than `health.max_error_ratio` allows.
    #[error(
        "stream {stream}: stages failed on {failed} of {frames} frames (at most {allowed} of \
         {need} allowed); last error: {last_error}"
    )]
    TooManyFailures {
        /// The stream's id.
        stream: String,
        /// Frames on which a stage failed.
        failed: u64,
        /// Frames processed by the new chain.
        frames: u64,
        /// Failures allowed in `need` frames.
        allowed: u64,
        /// `health.frames`.
        need: u64,
        /// The last stage error (`?` when none was kept).
        last_error: String,
    },
    /// At the end of the window, a stream's failure ratio is above `health.max_error_ratio`.
    #[error(
        "stream {stream}: stages failed on {failed} of {frames} frames; last error: {last_error}"
    )]
    FailedInWindow {
        /// The stream's id.
        stream: String,
        /// Frames on which a stage failed.
        failed: u64,
        /// Frames processed.
        frames: u64,
        /// The last stage error (`?` when none was kept).
        last_error: String,
    },
}

/// The verdict of a reply: a signed verdict (the receipt says the same), or one that no
/// device key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// A verdict the device signs in a receipt (or would, but for the rejection budget).
    Signed(Verdict),
    /// Refused before it authenticated: nothing is signed.
    Refused,
    /// The document runs already (answered before).
    AlreadyActive,
    /// The document was answered before and does not run.
    Duplicate,
    /// Accepted for now; the verdict comes later (a model bundle being downloaded).
    Started,
    /// Authenticated, but it requires a model this device does not have yet: handled
    /// again when model delivery installs one (no receipt until then).
    Waiting,
}

impl Answer {
    /// The word used in replies and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Answer::Signed(v) => v.as_str(),
            Answer::Refused => "refused",
            Answer::AlreadyActive => "already_active",
            Answer::Duplicate => "duplicate",
            Answer::Started => "started",
            Answer::Waiting => "waiting",
        }
    }
}

impl serde::Serialize for Answer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What became of one message.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    /// What became of it (serialised as `applied`, `rolled_back`, `rejected`, `revoked`,
    /// `refused`, `already_active` or `duplicate`).
    pub verdict: Answer,
    /// Why.
    pub reason: String,
    /// The signed receipt, when one was made.
    pub receipt: Option<String>,
    /// Milliseconds from arrival to verdict.
    pub apply_ms: f64,
}

/// A local request for the applier (`POST /workflow`, or an upload on the web page's
/// workflows page): the same verification as a fleet delivery.
pub struct Request {
    /// The bytes.
    pub payload: Vec<u8>,
    /// Where the reply goes.
    pub reply: Option<tokio::sync::oneshot::Sender<Reply>>,
    /// The web page's user who uploaded it (None: the local API token, `aegis workflow
    /// apply`); named in the history and the refusal audit rows.
    pub user: Option<String>,
}

/// A new local default pipeline (the web page's config editor saved one): it runs at once
/// unless a signed workflow is active, which keeps running (the default is what runs when
/// none is).
pub struct DefaultPipeline {
    /// The pipeline, validated with the rest of the configuration file it was saved in.
    pub pipeline: PipelineConfig,
    /// Who saved it (the status reports the last local edit: `web:<user>`).
    pub by: String,
    /// Where the outcome goes.
    pub reply: tokio::sync::oneshot::Sender<DefaultOutcome>,
}

/// What became of a new local default pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultOutcome {
    /// It runs now: `in_place` (only the stages changed, no frame dropped) or `rebuild`.
    Running(&'static str),
    /// It is what ran already.
    Unchanged,
    /// A signed workflow is active and keeps running; the default is kept for when none is.
    WorkflowRuns {
        /// The active workflow's id.
        workflow: String,
    },
    /// It does not start here (its models do not load, a source or sink refuses to
    /// start): the pipeline that ran before runs again.
    Failed(String),
}

/// Applier counters (exported as `aegis_component_counter{component="workflows"}`).
#[derive(Debug, Default)]
pub struct ApplyCounters {
    /// Messages received.
    pub received: AtomicU64,
    /// Workflows applied and kept.
    pub applied: AtomicU64,
    /// Applied, failed the health check, rolled back.
    pub rolled_back: AtomicU64,
    /// Authenticated but refused.
    pub rejected: AtomicU64,
    /// Unauthenticated (format/signature, or trust expired or lost).
    pub refused: AtomicU64,
    /// Redeliveries ignored.
    pub duplicates: AtomicU64,
    /// Local requests answered 503 because the local queue was full.
    pub busy: AtomicU64,
    /// Fleet messages replaced by a newer one on the same topic before they were judged.
    pub superseded: AtomicU64,
    /// Retained messages fetched again after a topic's message was superseded.
    pub refetched: AtomicU64,
    /// Trust metadata updates accepted.
    pub trust_updates: AtomicU64,
    /// Running workflows stopped because they no longer pass their checks.
    pub revoked: AtomicU64,
}

impl ApplyCounters {
    /// Every counter by name, for metrics.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            ("received", self.received.load(Relaxed)),
            ("applied", self.applied.load(Relaxed)),
            ("rolled_back", self.rolled_back.load(Relaxed)),
            ("rejected", self.rejected.load(Relaxed)),
            ("refused", self.refused.load(Relaxed)),
            ("duplicates", self.duplicates.load(Relaxed)),
            ("busy", self.busy.load(Relaxed)),
            ("superseded", self.superseded.load(Relaxed)),
            ("refetched", self.refetched.load(Relaxed)),
            ("trust_updates", self.trust_updates.load(Relaxed)),
            ("revoked", self.revoked.load(Relaxed)),
        ]
    }
}

/// Fleet deliveries waiting for the applier: the latest message per topic. The fleet link
/// never blocks and never drops a topic: a message replaced before it was judged is counted,
/// and its topic is marked so the applier fetches the retained message again.
pub struct FleetInbox {
    inner: Mutex<InboxInner>,
    ready: tokio::sync::Notify,
    counters: Arc<ApplyCounters>,
}

/// One message taken from the [`FleetInbox`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its topic.
    pub topic: String,
    /// Its bytes.
    pub payload: Vec<u8>,
    /// Published while the device was subscribed (not a retained copy redelivered).
    pub live: bool,
}

#[derive(Default)]
struct InboxInner {
    /// Per topic: the payload and whether it came live.
    pending: BTreeMap<String, (Vec<u8>, bool)>,
    superseded: BTreeSet<String>,
    /// The topic served last: the next one is the first after it (round robin), so a
    /// flood on one topic never starves another.
    last: Option<String>,
}

impl FleetInbox {
    /// An empty inbox counting into `counters`.
    pub fn new(counters: Arc<ApplyCounters>) -> Arc<FleetInbox> {
        Arc::new(FleetInbox {
            inner: Mutex::new(InboxInner::default()),
            ready: tokio::sync::Notify::new(),
            counters,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InboxInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leaves `payload` for the applier (the fleet link's side; never blocks); `live` as
    /// in [`Delivered`].
    pub fn put(&self, topic: &str, payload: &[u8], live: bool) {
        let mut inner = self.lock();
        // The same bytes redelivered (a re-subscribe) keep an ask that waits.
        let live = live
            || inner
                .pending
                .get(topic)
                .is_some_and(|(p, l)| *l && p == payload);
        if inner
            .pending
            .insert(topic.to_string(), (payload.to_vec(), live))
            .is_some()
        {
            self.counters.superseded.fetch_add(1, Relaxed);
            inner.superseded.insert(topic.to_string());
        }
        drop(inner);
        self.ready.notify_one();
    }

    /// The next message, topics taken in turn (round robin in topic order, so after a
    /// connect the trust topic, `aegis/v1/fleet/trust`, comes before the workflow topics).
    pub fn take(&self) -> Option<Delivered> {
        let mut inner = self.lock();
        let after = inner.last.clone();
        let topic = match &after {
            Some(last) => inner
                .pending
                .range::<String, _>((std::ops::Bound::Excluded(last), std::ops::Bound::Unbounded))
                .next()
                .or_else(|| inner.pending.iter().next())
                .map(|(t, _)| t.clone())?,
            None => inner.pending.keys().next()?.clone(),
        };
        inner.last = Some(topic.clone());
        inner
            .pending
            .remove(&topic)
            .map(|(payload, live)| Delivered {
                topic,
                payload,
                live,
            })
    }

    /// Waits for the next message.
    pub async fn next(&self) -> Delivered {
        loop {
            if let Some(m) = self.take() {
                return m;
            }
            self.ready.notified().await;
        }
    }

    /// Topics whose message was superseded and that have nothing pending now: their
    /// retained message should be fetched again. Clears the marks returned.
    fn quiet_superseded(&self, ready: impl Fn(&str) -> bool) -> Vec<String> {
        let mut inner = self.lock();
        let topics: Vec<String> = inner
            .superseded
            .iter()
            .filter(|t| !inner.pending.contains_key(*t) && ready(t))
            .cloned()
            .collect();
        for t in &topics {
            inner.superseded.remove(t);
        }
        topics
    }
}

/// Audit rows for refused input. Every refusal gets its own row until
/// [`AUDIT_ROWS_PER_WINDOW`] rows were written in the current [`AUDIT_WINDOW`]; the rest are
/// counted per action and written as one summary row when the window ends: storage is
/// rate-limited, nothing is dropped silently.
pub struct RefusalAudit {
    store: StoreHandle,
    inner: Mutex<AuditWindow>,
}

struct AuditWindow {
    start: Instant,
    rows: u64,
    suppressed: BTreeMap<String, u64>,
    last: String,
}

impl RefusalAudit {
    /// An audit trail into `store`.
    pub fn new(store: StoreHandle) -> Arc<RefusalAudit> {
        Arc::new(RefusalAudit {
            store,
            inner: Mutex::new(AuditWindow {
                start: Instant::now(),
                rows: 0,
                suppressed: BTreeMap::new(),
                last: String::new(),
            }),
        })
    }

    fn row(&self, action: &str, detail: String) {
        self.store.submit(Record::Audit {
            ts_us: now_us(),
            actor: "workflow".into(),
            action: action.into(),
            detail,
        });
    }

    /// Writes an audit row that is not rate-limited (applied workflows, trust updates…);
    /// `detail` is redacted here.
    pub fn write(&self, action: &str, detail: &str) {
        self.row(action, redact(detail));
    }

    /// Records one refusal (`detail` is redacted here).
    pub fn record(&self, action: &str, detail: &str) {
        let detail = redact(detail);
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut w);
        if w.rows < AUDIT_ROWS_PER_WINDOW {
            w.rows += 1;
            drop(w);
            if action.contains("refused") || action.contains("rejected") {
                tracing::warn!(action, detail = %detail, "refused");
            } else {
                tracing::info!(action, detail = %detail, "audit");
            }
            self.row(action, detail);
        } else {
            *w.suppressed.entry(action.to_string()).or_insert(0) += 1;
            w.last = detail;
        }
    }

    /// Writes the summary row of a window that ended (called on the run loop's tick).
    pub fn flush(&self) {
        let mut w = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        self.roll(&mut w);
    }

    fn roll(&self, w: &mut AuditWindow) {
        if w.start.elapsed() < AUDIT_WINDOW {
            return;
        }
        if !w.suppressed.is_empty() {
            let total: u64 = w.suppressed.values().sum();
            let by: Vec<String> = w
                .suppressed
                .iter()
                .map(|(a, n)| format!("{a}: {n}"))
                .collect();
            let detail = format!(
                "{total} more refusal(s) in {} s beyond the {AUDIT_ROWS_PER_WINDOW} stored one by one ({}); last: {}",
                w.start.elapsed().as_secs(),
                by.join(", "),
                w.last
            );
            tracing::warn!(detail = %detail, "refusals summarised");
            self.row("refusals.summary", detail);
        }
        w.start = Instant::now();
        w.rows = 0;
        w.suppressed.clear();
        w.last.clear();
    }
}

/// The device's workflow applier; owned by the run loop (it switches the pipeline).
pub struct Applier {
    workflows: Workflows,
    starter: Arc<Starter>,
    inference: Arc<Inference>,
    health: HealthCheckConfig,
    store: StoreHandle,
    /// What runs when no signed workflow may (the local config's pipeline).
    default_pipeline: PipelineConfig,
    receipts_topic: Option<String>,
    /// Fleet link wake-up (receipt and status out now).
    pub nudge: Option<Arc<tokio::sync::Notify>>,
    /// Asks the fleet link to subscribe to a topic again (its retained message comes back).
    pub resubscribe: Option<tokio::sync::mpsc::Sender<String>>,
    inbox: Arc<FleetInbox>,
    status: Arc<Mutex<serde_json::Value>>,
    audit: Arc<RefusalAudit>,
    last_notice: Option<Instant>,
    unnoticed: u64,
    refetched: HashMap<String, Instant>,
    trust_health: Option<aegis_ota::state::TrustHealth>,
    /// Start of the signed-rejection window and the rejections signed in it.
    rejections: (Instant, u32),
    /// Where the message being handled came from ([`Via::name`]), for the history.
    via: String,
    /// The last local change of the default pipeline (who, when), reported in the status.
    local_edit: serde_json::Value,
    /// Counters.
    pub counters: Arc<ApplyCounters>,
    /// Model delivery (None: off).
    models: Option<crate::models_ota::delivery::Delivery>,
    /// Firmware updates (None: off).
    firmware: Option<crate::firmware::Firmware>,
    /// When the status went out last while a firmware order was under way (its progress).
    firmware_published: Option<Instant>,
    /// Fleet workflows that wait for a model (at most [`MAX_WAITING`], one per topic).
    waiting: Vec<Waiting>,
    /// The message being handled came live ([`Delivered::live`]): a duplicate is asked
    /// again.
    asked: bool,
    /// When a receipt went out again last, per document.
    again: aegis_ota::state::AnswerAgain,
    /// The store's file: receipts sent before are read back from `workflow_history`.
    history_db: Option<std::path::PathBuf>,
}

/// Most workflows kept waiting for a model at once (the oldest is dropped beyond).
pub const MAX_WAITING: usize = 4;

/// A fleet workflow, authenticated, that requires a model this device does not have yet:
/// handled again (verified from scratch) after model delivery installs a bundle.
struct Waiting {
    topic: String,
    doc: Vec<u8>,
    digest: String,
    needs: String,
    since: String,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// A stream's last stage error as a health failure quotes it (`?` when none was kept).
fn last_error(s: &StageHealth) -> String {
    s.last_error.as_deref().unwrap_or("?").to_string()
}

/// Runs `cfg` instead of `pipeline` (a new local default pipeline): in place when only
/// the stages differ (no frame dropped), else rebuilt. When `cfg` does not start, the
/// pipeline that ran starts again with the models it used, and the outcome says why; if
/// even that fails the agent exits (as the applier's restore does) so that systemd starts
/// it again from the files.
pub async fn switch_local(
    starter: &Arc<Starter>,
    inference: Arc<Inference>,
    mut pipeline: Pipeline,
    cfg: &PipelineConfig,
) -> (Pipeline, Arc<Inference>, DefaultOutcome) {
    if pipeline.config() == cfg {
        return (pipeline, inference, DefaultOutcome::Unchanged);
    }
    let loaded = {
        let (s, c, l) = (starter.clone(), cfg.clone(), inference.clone());
        tokio::task::spawn_blocking(move || s.load(&c, &l)).await
    };
    let new_inf = match loaded {
        Ok(Ok(i)) => i,
        Ok(Err(e)) => {
            let why = format!("models: {}", crate::causes_text(&e));
            return (pipeline, inference, DefaultOutcome::Failed(why));
        }
        Err(e) => {
            let why = format!("models: {e}");
            return (pipeline, inference, DefaultOutcome::Failed(why));
        }
    };
    if pipeline.can_swap_in_place(cfg) && pipeline.swap_stages(cfg, &new_inf).is_ok() {
        return (pipeline, new_inf, DefaultOutcome::Running("in_place"));
    }
    let old_cfg = pipeline.config().clone();
    pipeline.stop();
    let _ = tokio::task::spawn_blocking(move || pipeline.wait()).await;
    let started = {
        let (s, c, i) = (starter.clone(), cfg.clone(), new_inf.clone());
        tokio::task::spawn_blocking(move || s.start(&c, i)).await
    };
    let why = match started {
        Ok(Ok(p)) => return (p, new_inf, DefaultOutcome::Running("rebuild")),
        Ok(Err(e)) => format!("start: {}", crate::causes_text(&e)),
        Err(e) => format!("start: {e}"),
    };
    tracing::warn!(reason = %why, "the new local pipeline does not start; starting the previous one again");
    let again = {
        let (s, i) = (starter.clone(), inference.clone());
        tokio::task::spawn_blocking(move || s.start(&old_cfg, i)).await
    };
    match again {
        Ok(Ok(p)) => (p, inference, DefaultOutcome::Failed(why)),
        Ok(Err(e)) => {
            tracing::error!(error = %crate::causes_text(&e), "the previous pipeline does not start again; exiting");
            std::process::exit(70)
        }
        Err(e) => {
            tracing::error!(error = %e, "restarting the previous pipeline panicked; exiting");
            std::process::exit(70)
        }
    }
}

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'a> {
    /// A fleet topic.
    Fleet(&'a str),
    /// `POST /workflow` (the local API token).
    Local,
    /// An upload on the web page's workflows page, by this user.
    Web(&'a str),
}

impl Via<'_> {
    /// How the history and the audit rows name it: the topic, `http` or `web:<user>`.
    pub fn name(&self) -> String {
        match self {
            Via::Fleet(t) => (*t).to_string(),
            Via::Local => "http".into(),
            Via::Web(user) => format!("web:{user}"),
        }
    }
}

impl Applier {
    /// An applier over the opened workflow state. `inference` is what the running pipeline
    /// uses; `default_pipeline` is the local config's; `status` is the shared desired-state
    /// report; `inbox` is where the fleet link leaves deliveries.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        workflows: Workflows,
        starter: Arc<Starter>,
        inference: Arc<Inference>,
        health: HealthCheckConfig,
        store: StoreHandle,
        default_pipeline: PipelineConfig,
        receipts_topic: Option<String>,
        status: Arc<Mutex<serde_json::Value>>,
        inbox: Arc<FleetInbox>,
        counters: Arc<ApplyCounters>,
        audit: Arc<RefusalAudit>,
    ) -> Applier {
        *status.lock().unwrap_or_else(|p| p.into_inner()) = workflows.status();
        Applier {
            workflows,
            starter,
            inference,
            health,
            store,
            default_pipeline,
            receipts_topic,
            nudge: None,
            resubscribe: None,
            inbox,
            status,
            audit,
            last_notice: None,
            unnoticed: 0,
            refetched: HashMap::new(),
            trust_health: None,
            rejections: (Instant::now(), 0),
            via: String::new(),
            local_edit: serde_json::Value::Null,
            counters,
            models: None,
            firmware: None,
            firmware_published: None,
            waiting: Vec::new(),
            asked: false,
            again: Default::default(),
            history_db: None,
        }
    }

    /// Where the store's file is: a document asked again is answered with the receipt
    /// recorded in its workflow history.
    pub fn set_history_db(&mut self, path: std::path::PathBuf) {
        self.history_db = Some(path);
    }

    /// Handles one fleet delivery (see [`Applier::handle`]); a live one that was answered
    /// already gets its receipt again ([`aegis_ota::state::AnswerAgain`]).
    pub async fn handle_delivered(
        &mut self,
        pipeline: Pipeline,
        d: &Delivered,
    ) -> (Pipeline, Reply) {
        self.asked = d.live;
        let out = self
            .handle(pipeline, Via::Fleet(&d.topic), &d.payload)
            .await;
        self.asked = false;
        out
    }

    /// Makes `cfg` the local default pipeline (the web page's config editor saved it). It
    /// runs now unless a signed workflow is active (that keeps running; the default runs
    /// when none is). When it does not start, what ran before runs again and the previous
    /// default is kept.
    /// `by` names who saved it (`web:<user>`) in the status.
    pub async fn set_default(
        &mut self,
        pipeline: Pipeline,
        cfg: PipelineConfig,
        by: &str,
    ) -> (Pipeline, DefaultOutcome) {
        let (pipeline, outcome) = match &self.workflows.state().active {
            Some(active) => {
                let workflow = active.id.clone();
                (pipeline, DefaultOutcome::WorkflowRuns { workflow })
            }
            None => {
                let (pipeline, inference, outcome) =
                    switch_local(&self.starter, self.inference.clone(), pipeline, &cfg).await;
                self.inference = inference;
                (pipeline, outcome)
            }
        };
        if !matches!(outcome, DefaultOutcome::Failed(_)) {
            self.default_pipeline = cfg;
            // The fleet sees that the device's own pipeline was changed on site.
            self.local_edit = serde_json::json!({
                "by": by,
                "at": aegis_ota::maml::format_time(now_us() / 1_000_000),
                "runs": !matches!(outcome, DefaultOutcome::WorkflowRuns { .. }),
            });
            self.publish_status();
        }
        (pipeline, outcome)
    }

    /// Reports workflows that stopped before the applier existed (at start-up).
    pub fn report_stopped_at_start(&mut self, stopped: &[Stopped]) {
        for s in stopped {
            self.report_stopped(s);
        }
        if !stopped.is_empty() {
            self.publish_status();
        }
    }

    /// GPS time (trusted by the fusion's rule) raises the persisted time floor.
    pub fn raise_time_floor(&mut self, gps_s: i64) {
        match self.workflows.raise_time_floor(gps_s) {
            Ok(true) => {
                tracing::info!(gps_s, "trusted-time floor raised from GPS time");
                self.audit("time.floor", format!("raised to {gps_s} from GPS"));
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot save the time floor"),
        }
    }

    /// Periodic work (the run loop's tick): the refusal summary, and fetching again the
    /// retained message of topics whose delivery was superseded.
    pub fn tick(&mut self) {
        self.audit.flush();
        self.firmware_events();
        if self.firmware.as_ref().is_some_and(|f| f.busy())
            && self
                .firmware_published
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            self.firmware_published = Some(Instant::now());
            self.publish_status();
        }
        // Trust expires with time, not with a message: the status says so when it happens.
        let health = self.workflows.trust_health();
        if self.trust_health != Some(health) {
            if health != aegis_ota::state::TrustHealth::Valid {
                tracing::error!(
                    trust = health.as_str(),
                    "the device's trust metadata can vouch for no new workflow"
                );
                self.audit(
                    "trust.state",
                    format!(
                        "trust metadata version {}: {}",
                        self.workflows.trust_version(),
                        health.as_str()
                    ),
                );
            }
            self.trust_health = Some(health);
            self.publish_status();
        }
        let Some(tx) = &self.resubscribe else {
            return;
        };
        let now = Instant::now();
        let refetched = &self.refetched;
        let topics = self.inbox.quiet_superseded(|t| {
            refetched
                .get(t)
                .is_none_or(|at| now.duration_since(*at) >= REFETCH_INTERVAL)
        });
        for t in topics {
            if tx.try_send(t.clone()).is_ok() {
                self.counters.refetched.fetch_add(1, Relaxed);
                self.audit.record(
                    "workflow.refetch",
                    &format!("{t}: a delivery was superseded before it was judged; fetching the retained message again"),
                );
                self.refetched.insert(t, now);
            }
        }
    }

    /// The models the running pipeline uses.
    pub fn inference(&self) -> Arc<Inference> {
        self.inference.clone()
    }

    fn audit(&self, action: &str, detail: String) {
        self.audit.write(action, &detail);
    }

    /// Queues `payload` for the broker (durably) and wakes the link.
    fn send(&self, leaf: &str, payload: Vec<u8>) {
        let Some(topic) = &self.receipts_topic else {
            return;
        };
        let mut id = [0u8; 8];
        let _ = getrandom::fill(&mut id);
        self.store.submit(Record::Message {
            id: format!(
                "{leaf}-{}",
                id.iter().map(|b| format!("{b:02x}")).collect::<String>()
            ),
            topic: topic.clone(),
            payload,
            ts_us: now_us(),
        });
        let store = self.store.clone();
        let nudge = self.nudge.clone();
        tokio::task::spawn_blocking(move || {
            store.flush(Duration::from_secs(2));
            if let Some(n) = nudge {
                n.notify_one();
            }
        });
    }

    fn publish_status(&self) {
        let mut status = self.workflows.status();
        if !self.local_edit.is_null() {
            status["local_edit"] = self.local_edit.clone();
        }
        if !self.waiting.is_empty() {
            status["waiting"] = self
                .waiting
                .iter()
                .map(|w| {
                    serde_json::json!({ "topic": w.topic, "sha256": w.digest,
                                        "needs": w.needs, "since": w.since })
                })
                .collect();
        }
        if let Some(f) = &self.firmware {
            status["firmware"] = f.status();
        }
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = status;
        if let Some(n) = &self.nudge {
            n.notify_one();
        }
    }

    /// Unauthenticated input: counted, audited (one row each, rate-limited storage), and
    /// summarised by at most one unsigned notice per interval.
    fn refuse(
        &mut self,
        t0: Instant,
        via: Via<'_>,
        payload: &[u8],
        action: &str,
        reason: String,
    ) -> Reply {
        self.counters.refused.fetch_add(1, Relaxed);
        let reason = redact(&reason);
        self.audit.record(
            action,
            &format!(
                "via {}: {} bytes, sha256 {}: {reason}",
                via.name(),
                payload.len(),
                aegis_ota::sha256_hex(payload)
            ),
        );
        self.notice(&reason);
        Reply {
            verdict: Answer::Refused,
            reason,
            receipt: None,
            apply_ms: ms(t0),
        }
    }

    /// Counts a refusal for the next unsigned notice; sends one when it is due (at most
    /// one per [`NOTICE_INTERVAL`]).
    fn notice(&mut self, reason: &str) {
        self.unnoticed += 1;
        let due = self
            .last_notice
            .is_none_or(|t| t.elapsed() >= NOTICE_INTERVAL);
        if due {
            let notice = serde_json::json!({
                "type": "rejection-notice",
                "signed": false,
                "count": self.unnoticed,
                "last_reason": reason,
                "trust": self.workflows.trust_health().as_str(),
            });
            self.send("notice", notice.to_string().into_bytes());
            self.last_notice = Some(Instant::now());
            self.unnoticed = 0;
        }
    }

    /// A signed answer for a document whose signature verified against valid trust. The
    /// digest is remembered (persisted) first, so a redelivery gets no second receipt.
    /// Rejections (captured documents for other devices, old ones replayed) are signed at
    /// most [`SIGNED_REJECTIONS_PER_WINDOW`] times per [`AUDIT_WINDOW`]: beyond that they
    /// are answered like unauthenticated input, so cycling captured documents costs the
    /// device neither signatures nor flash writes.
    fn answer(&mut self, subject: Subject<'_>, outcome: Outcome) -> Reply {
        let (doc, digest) = match subject {
            Subject::Verified(v) => (&v.document, v.digest.as_str()),
            Subject::Authenticated(a) => (&a.document, a.digest.as_str()),
        };
        if outcome.verdict == Verdict::Rejected && !self.signed_rejection_due() {
            self.counters.rejected.fetch_add(1, Relaxed);
            let reason = redact(&outcome.reason);
            self.audit.record(
                "workflow.rejected.unsigned",
                &format!(
                    "{} sequence {} sha256 {digest}: more than {SIGNED_REJECTIONS_PER_WINDOW} \
                     rejections this minute, answered unsigned: {reason}",
                    doc.front.id, doc.front.sequence
                ),
            );
            // No history row either: beyond the budget a rejection costs no flash write
            // (the audit above is rate-limited).
            self.notice(&reason);
            return Reply {
                verdict: Answer::Signed(Verdict::Rejected),
                reason,
                receipt: None,
                apply_ms: outcome.apply_ms,
            };
        }
        let (counter, action) = match outcome.verdict {
            Verdict::Applied => (&self.counters.applied, "workflow.applied"),
            Verdict::RolledBack => (&self.counters.rolled_back, "workflow.rolled_back"),
            Verdict::Rejected => (&self.counters.rejected, "workflow.rejected"),
            Verdict::Revoked => (&self.counters.revoked, "workflow.revoked"),
        };
        counter.fetch_add(1, Relaxed);
        let reason = redact(&outcome.reason);
        self.audit(
            action,
            format!(
                "{} sequence {} sha256 {digest}: {reason}",
                doc.front.id, doc.front.sequence
            ),
        );
        tracing::info!(workflow = %doc.front.id, sequence = doc.front.sequence,
            verdict = outcome.verdict.as_str(), mode = outcome.mode, ms = outcome.apply_ms,
            reason = %reason, "workflow");
        if let Err(e) = self.workflows.record_answer(digest) {
            tracing::warn!(error = %e, "cannot remember the answered digest");
        }
        let receipt = match self.workflows.receipt(subject, &outcome) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the receipt");
                None
            }
        };
        // The history row first: the store writes in order, so once the receipt is out of
        // the outbox its row is there to be read back when the document is asked again.
        self.history(
            &doc.front.id,
            doc.front.sequence,
            digest,
            outcome.verdict,
            &reason,
            receipt.clone(),
        );
        if let Some(r) = &receipt {
            self.send("receipt", r.clone().into_bytes());
        }
        Reply {
            verdict: Answer::Signed(outcome.verdict),
            reason,
            receipt,
            apply_ms: outcome.apply_ms,
        }
    }

    /// Whether another signed rejection fits this window's budget (counts it if so).
    fn signed_rejection_due(&mut self) -> bool {
        if self.rejections.0.elapsed() >= AUDIT_WINDOW {
            self.rejections = (Instant::now(), 0);
        }
        if self.rejections.1 >= SIGNED_REJECTIONS_PER_WINDOW {
            return false;
        }
        self.rejections.1 += 1;
        true
    }

    /// Handles one message; returns the (possibly replaced) pipeline and the reply.
    pub async fn handle(
        &mut self,
        pipeline: Pipeline,
        via: Via<'_>,
        doc: &[u8],
    ) -> (Pipeline, Reply) {
        let t0 = Instant::now();
        self.counters.received.fetch_add(1, Relaxed);
        self.via = via.name();
        if via == Via::Fleet(crate::fleet::TRUST_TOPIC) {
            return self.trust(pipeline, t0, doc).await;
        }
        // Model messages: on a models topic, or handed in locally (`aegis models
        // rollback`): JSON, where a workflow starts with its front matter.
        let local_json = matches!(via, Via::Local | Via::Web(_))
            && doc.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if local_json || matches!(via, Via::Fleet(topic) if is_models_topic(topic)) {
            return self.model_message(pipeline, t0, via, doc).await;
        }
        if matches!(via, Via::Fleet(topic) if is_firmware_topic(topic)) {
            let reply = self.firmware_message(t0, via, doc);
            return (pipeline, reply);
        }
        if let Via::Fleet(topic) = via {
            // The latest message on a topic supersedes one waiting there.
            self.waiting.retain(|w| w.topic != topic);
        }
        let v = match self.workflows.verify(doc) {
            Ok(v) => v,
            Err(refusal) => {
                let Some(a) = refusal.authenticated else {
                    let action = match refusal.rejection {
                        aegis_ota::Rejection::Trust(_) => "workflow.refused.trust",
                        _ => "workflow.refused",
                    };
                    return (
                        pipeline,
                        self.refuse(t0, via, doc, action, refusal.rejection.to_string()),
                    );
                };
                if self.workflows.answered(&a.digest) || self.is_active(&a.digest) {
                    return (pipeline, self.duplicate(t0, &a.digest));
                }
                if let (Via::Fleet(topic), Some(needs)) =
                    (via, self.model_to_wait_for(&refusal.rejection))
                {
                    return (
                        pipeline,
                        self.wait_for_model(t0, topic, doc, &a.digest, needs),
                    );
                }
                let outcome = Outcome {
                    verdict: Verdict::Rejected,
                    reason: refusal.rejection.to_string(),
                    mode: "none",
                    apply_ms: ms(t0),
                };
                return (pipeline, self.answer(Subject::Authenticated(&a), outcome));
            }
        };
        if self.workflows.answered(&v.digest) {
            return (pipeline, self.duplicate(t0, &v.digest));
        }
        // Workflows::verify refuses documents without a pipeline; never panic on it anyway.
        let Some(new_cfg) = v.pipeline.clone() else {
            let outcome = Outcome {
                verdict: Verdict::Rejected,
                reason: "the workflow has no Pipeline section".into(),
                mode: "none",
                apply_ms: ms(t0),
            };
            return (pipeline, self.answer(Subject::Verified(&v), outcome));
        };
        let (pipeline, outcome) = self.switch(pipeline, doc, &v, &new_cfg, t0).await;
        let reply = self.answer(Subject::Verified(&v), outcome);
        self.publish_status();
        (pipeline, reply)
    }

    /// The model a refused workflow waits for: it requires one this device does not have
    /// and model delivery is on (a bundle may come).
    fn model_to_wait_for(&self, rejection: &aegis_ota::Rejection) -> Option<String> {
        match rejection {
            aegis_ota::Rejection::Policy(aegis_ota::device::PolicyError::ModelNotPinned {
                name,
                version,
                sha256,
            }) if self.models.is_some() => Some(format!(
                "model {name:?} version {version} (model file sha256 {sha256})"
            )),
            _ => None,
        }
    }

    /// Keeps a fleet workflow until a model bundle is installed (see [`Waiting`]).
    fn wait_for_model(
        &mut self,
        t0: Instant,
        topic: &str,
        doc: &[u8],
        digest: &str,
        needs: String,
    ) -> Reply {
        if self.waiting.len() >= MAX_WAITING {
            let dropped = self.waiting.remove(0);
            self.audit(
                "workflow.waiting.dropped",
                format!(
                    "sha256 {} on {}: more than {MAX_WAITING} workflows wait for models",
                    dropped.digest, dropped.topic
                ),
            );
        }
        self.audit(
            "workflow.waiting",
            format!("sha256 {digest} on {topic}: waits for {needs}"),
        );
        tracing::info!(%topic, sha256 = %digest, needs = %needs,
            "workflow waits for a model bundle");
        self.waiting.push(Waiting {
            topic: topic.to_string(),
            doc: doc.to_vec(),
            digest: digest.to_string(),
            needs: needs.clone(),
            since: aegis_ota::maml::format_time(aegis_ota::maml::now_s()),
        });
        self.publish_status();
        Reply {
            verdict: Answer::Waiting,
            reason: format!(
                "requires {needs}, not on this device yet: applied once model delivery \
                 installs it (a newer workflow on {topic} replaces this one)"
            ),
            receipt: None,
            apply_ms: ms(t0),
        }
    }

    /// A model bundle was installed: every waiting workflow is handled again.
    async fn retry_waiting(&mut self, mut pipeline: Pipeline) -> Pipeline {
        for w in std::mem::take(&mut self.waiting) {
            let (p, reply) = self.handle(pipeline, Via::Fleet(&w.topic), &w.doc).await;
            pipeline = p;
            tracing::info!(topic = %w.topic, sha256 = %w.digest,
                verdict = reply.verdict.as_str(), "waiting workflow handled again");
        }
        self.publish_status();
        pipeline
    }

    fn is_active(&self, digest: &str) -> bool {
        self.workflows
            .state()
            .active
            .as_ref()
            .is_some_and(|a| a.digest == digest)
    }

    fn duplicate(&mut self, t0: Instant, digest: &str) -> Reply {
        self.counters.duplicates.fetch_add(1, Relaxed);
        let active = self.is_active(digest);
        let receipt = match self.asked && self.again.due(digest) {
            true => {
                let r = self.receipt_sent(digest);
                if r.is_none() {
                    // Nothing went out: the next ask may find it.
                    self.again.forget(digest);
                }
                r
            }
            false => None,
        };
        if let Some(r) = &receipt {
            self.send("receipt", r.clone().into_bytes());
        }
        self.audit.record(
            "workflow.duplicate",
            &format!(
                "sha256 {digest}: answered already{}{}",
                if active { " (it runs)" } else { "" },
                if receipt.is_some() {
                    "; asked again: its receipt sent again"
                } else {
                    ""
                }
            ),
        );
        Reply {
            verdict: if active {
                Answer::AlreadyActive
            } else {
                Answer::Duplicate
            },
            reason: format!("{digest} was answered already"),
            receipt,
            apply_ms: ms(t0),
        }
    }

    /// The receipt recorded for `digest` (the newest), from the workflow history.
    fn receipt_sent(&self, digest: &str) -> Option<String> {
        let path = self.history_db.as_ref()?;
        let found = crate::store::open_reader(path)
            .map_err(|e| e.to_string())
            .and_then(|c| {
                c.query_row(
                    "SELECT receipt FROM workflow_history WHERE digest = ?1 \
                     AND receipt IS NOT NULL ORDER BY id DESC LIMIT 1",
                    [digest],
                    |r| r.get::<_, String>(0),
                )
                .map_err(|e| e.to_string())
            });
        match found {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::debug!(sha256 = %digest, error = %e, "no receipt to send again");
                None
            }
        }
    }

    /// Trust metadata from the fleet: installed (acknowledged with a signed trust receipt,
    /// and the running workflow checked again at once — a revoked issuer's workflow stops
    /// now), a duplicate of the version held (audited), or refused (audited, unsigned).
    async fn trust(&mut self, pipeline: Pipeline, t0: Instant, file: &[u8]) -> (Pipeline, Reply) {
        match self.workflows.update_trust(file) {
            Ok(TrustUpdate::Installed { version, digest }) => {
                self.counters.trust_updates.fetch_add(1, Relaxed);
                self.audit(
                    "trust.updated",
                    format!("version {version}, sha256 {digest}"),
                );
                tracing::info!(version, "trust metadata updated");
                match self.workflows.trust_receipt(version, &digest) {
                    Ok(r) => self.send("receipt", r.into_bytes()),
                    Err(e) => tracing::error!(error = %e, "cannot sign the trust receipt"),
                }
                let pipeline = self.revalidate(pipeline).await;
                self.publish_status();
                (
                    pipeline,
                    Reply {
                        verdict: Answer::Signed(Verdict::Applied),
                        reason: format!("trust metadata version {version}"),
                        receipt: None,
                        apply_ms: ms(t0),
                    },
                )
            }
            // A retained copy of the version held comes back on every connect.
            Ok(TrustUpdate::Duplicate(version)) => {
                self.counters.duplicates.fetch_add(1, Relaxed);
                self.audit.record(
                    "trust.duplicate",
                    &format!(
                        "{} bytes, sha256 {}: version {version}, held already",
                        file.len(),
                        aegis_ota::sha256_hex(file)
                    ),
                );
                (
                    pipeline,
                    Reply {
                        verdict: Answer::Duplicate,
                        reason: format!("trust metadata version {version} is held already"),
                        receipt: None,
                        apply_ms: ms(t0),
                    },
                )
            }
            Err(e) => {
                let reply = self.refuse(
                    t0,
                    Via::Fleet(crate::fleet::TRUST_TOPIC),
                    file,
                    "trust.refused",
                    format!("trust metadata: {}", crate::causes_text(&e)),
                );
                (pipeline, reply)
            }
        }
    }

    /// After a trust change: the active workflow is checked again. One that no longer
    /// passes stops now (signed `revoked` receipt, audit row, status): the previous
    /// workflow runs if it passes, else the local default. A workflow that can run again
    /// (trust recovered) is started.
    async fn revalidate(&mut self, pipeline: Pipeline) -> Pipeline {
        let (desired, stopped) = match self.workflows.active_pipeline() {
            Ok(x) => x,
            Err(e) => {
                // The state could not be saved: whatever runs may be what was just revoked.
                // Fail closed: the local default runs until the next start sorts it out.
                tracing::error!(error = %crate::causes_text(&e),
                    "cannot record the workflow change; running the local default pipeline");
                (None, Vec::new())
            }
        };
        for s in &stopped {
            self.report_stopped(s);
        }
        let cfg = match desired {
            Some((_, p)) => p,
            None => self.default_pipeline.clone(),
        };
        if *pipeline.config() == cfg {
            return pipeline;
        }
        tracing::info!("switching to the pipeline the checks allow now");
        match self.run_instead(pipeline, &cfg).await {
            Ok(p) => p,
            Err(p) => {
                // The allowed pipeline's models do not load: never keep running what was
                // revoked. The local default replaces it; if even that cannot start, the
                // agent exits (restore) and systemd restarts it from the recorded state.
                let default = self.default_pipeline.clone();
                match self.run_instead(p, &default).await {
                    Ok(p) => p,
                    Err(p) => self.restore(Some(p), &default).await,
                }
            }
        }
    }

    fn report_stopped(&mut self, s: &Stopped) {
        self.counters.revoked.fetch_add(1, Relaxed);
        let reason = redact(&s.reason);
        self.audit(
            "workflow.revoked",
            format!(
                "{} sequence {} sha256 {}: {reason}",
                s.entry.id, s.entry.sequence, s.entry.digest
            ),
        );
        tracing::warn!(workflow = %s.entry.id, reason = %reason, "running workflow stopped");
        let receipt = match self.workflows.stopped_receipt(s) {
            Ok(r) => {
                self.send("receipt", r.clone().into_bytes());
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the receipt");
                None
            }
        };
        let via = std::mem::replace(&mut self.via, "agent".into());
        self.history(
            &s.entry.id,
            s.entry.sequence,
            &s.entry.digest,
            Verdict::Revoked,
            &reason,
            receipt,
        );
        self.via = via;
    }

    /// A row of the workflow history (the web page's workflows page).
    fn history(
        &self,
        id: &str,
        sequence: u64,
        digest: &str,
        verdict: Verdict,
        reason: &str,
        receipt: Option<String>,
    ) {
        self.store.submit(Record::WorkflowAnswer(Box::new(
            crate::store::WorkflowAnswer {
                ts_us: now_us(),
                via: if self.via.is_empty() {
                    "agent".into()
                } else {
                    self.via.clone()
                },
                workflow_id: id.to_string(),
                sequence,
                digest: digest.to_string(),
                verdict: verdict.as_str().to_string(),
                reason: reason.to_string(),
                receipt,
            },
        )));
    }

    /// Runs `cfg` instead of what runs: in place when only the stages differ, else rebuilt.
    /// When its models do not load, the running pipeline is handed back as the error.
    async fn run_instead(
        &mut self,
        mut pipeline: Pipeline,
        cfg: &PipelineConfig,
    ) -> Result<Pipeline, Pipeline> {
        let loaded = {
            let (starter, c, loaded) = (self.starter.clone(), cfg.clone(), self.inference.clone());
            tokio::task::spawn_blocking(move || starter.load(&c, &loaded)).await
        };
        let inference = match loaded {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                tracing::error!(error = %crate::causes_text(&e), "models for the allowed pipeline do not load");
                return Err(pipeline);
            }
            Err(e) => {
                tracing::error!(error = %e, "loading models panicked");
                return Err(pipeline);
            }
        };
        if pipeline.can_swap_in_place(cfg) && pipeline.swap_stages(cfg, &inference).is_ok() {
            self.inference = inference;
            return Ok(pipeline);
        }
        self.inference = inference;
        Ok(self.restore(Some(pipeline), cfg).await)
    }

    /// Loads, commits on trial, switches, judges; keeps or rolls back.
    async fn switch(
        &mut self,
        mut pipeline: Pipeline,
        doc: &[u8],
        v: &aegis_ota::Verified,
        new_cfg: &PipelineConfig,
        t0: Instant,
    ) -> (Pipeline, Outcome) {
        let rejected = |reason: String, t0: Instant| Outcome {
            verdict: Verdict::Rejected,
            reason,
            mode: "none",
            apply_ms: ms(t0),
        };
        let new_inf = {
            let (starter, cfg, loaded) = (
                self.starter.clone(),
                new_cfg.clone(),
                self.inference.clone(),
            );
            match tokio::task::spawn_blocking(move || starter.load(&cfg, &loaded)).await {
                Ok(Ok(i)) => i,
                Ok(Err(e)) => {
                    let _ = self.workflows.consume_sequence(v);
                    return (
                        pipeline,
                        rejected(format!("models: {}", crate::causes_text(&e)), t0),
                    );
                }
                Err(e) => return (pipeline, rejected(format!("models: {e}"), t0)),
            }
        };
        let old_cfg = pipeline.config().clone();
        let in_place = pipeline.can_swap_in_place(new_cfg);
        if let Err(e) = self.workflows.begin(doc, v) {
            return (
                pipeline,
                rejected(format!("state: {}", crate::causes_text(&e)), t0),
            );
        }
        let mode = if in_place { "in_place" } else { "rebuild" };
        let targets: Vec<u64>;
        if in_place {
            targets = pipeline
                .stage_health()
                .iter()
                .map(|h| h.generation + 1)
                .collect();
            if let Err(e) = pipeline.swap_stages(new_cfg, &new_inf) {
                let _ = self.workflows.rollback();
                return (pipeline, rejected(format!("build: {e}"), t0));
            }
        } else {
            match self.rebuild(pipeline, new_cfg, new_inf.clone()).await {
                Ok(p) => pipeline = p,
                Err(e) => {
                    let _ = self.workflows.rollback();
                    let outcome = Outcome {
                        verdict: Verdict::RolledBack,
                        reason: format!("start: {}", crate::causes_text(&e)),
                        mode,
                        apply_ms: ms(t0),
                    };
                    return (self.restore(None, &old_cfg).await, outcome);
                }
            }
            targets = vec![0; pipeline.stage_health().len()];
        }
        match self.judge(&pipeline, &targets).await {
            Ok(()) => {
                if let Err(e) = self.workflows.commit() {
                    tracing::error!(error = %e, "cannot record the workflow as kept");
                }
                self.inference = new_inf;
                let outcome = Outcome {
                    verdict: Verdict::Applied,
                    reason: String::new(),
                    mode,
                    apply_ms: ms(t0),
                };
                (pipeline, outcome)
            }
            Err(why) => {
                tracing::warn!(reason = %why, "workflow failed its health check: rolling back");
                if let Err(e) = self.workflows.rollback() {
                    tracing::error!(error = %e, "cannot record the rollback");
                }
                let pipeline = if in_place {
                    match pipeline.swap_stages(&old_cfg, &self.inference) {
                        Ok(()) => pipeline,
                        Err(e) => {
                            tracing::error!(error = %e, "swapping the old stages back failed; rebuilding");
                            self.restore(Some(pipeline), &old_cfg).await
                        }
                    }
                } else {
                    self.restore(Some(pipeline), &old_cfg).await
                };
                let outcome = Outcome {
                    verdict: Verdict::RolledBack,
                    reason: format!("health: {why}"),
                    mode,
                    apply_ms: ms(t0),
                };
                (pipeline, outcome)
            }
        }
    }

    /// Stops `old` and starts `cfg`; on failure, returns the error (the old pipeline is gone).
    async fn rebuild(
        &self,
        old: Pipeline,
        cfg: &PipelineConfig,
        inference: Arc<Inference>,
    ) -> Result<Pipeline, StartError> {
        old.stop();
        let _ = tokio::task::spawn_blocking(move || old.wait()).await;
        let (starter, cfg) = (self.starter.clone(), cfg.clone());
        match tokio::task::spawn_blocking(move || starter.start(&cfg, inference)).await {
            Ok(started) => Ok(started?),
            Err(e) => Err(StartError::Panicked(e)),
        }
    }

    /// Brings back `cfg` with the models in use (stopping `current` if given).
    async fn restore(&self, current: Option<Pipeline>, cfg: &PipelineConfig) -> Pipeline {
        if let Some(p) = current {
            p.stop();
            let _ = tokio::task::spawn_blocking(move || p.wait()).await;
        }
        let (starter, cfg2, inf) = (self.starter.clone(), cfg.clone(), self.inference.clone());
        match tokio::task::spawn_blocking(move || starter.start(&cfg2, inf)).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                // The pipeline that ran a moment ago does not start again: nothing sane is
                // left to run. Exit so systemd restarts the agent from the stored state.
                tracing::error!(error = %e, "the previous pipeline does not start again; exiting");
                std::process::exit(70)
            }
            Err(e) => {
                tracing::error!(error = %e, "restoring the previous pipeline panicked; exiting");
                std::process::exit(70)
            }
        }
    }

    /// The health check: every stream's new chain (generation `targets[i]`) must process
    /// `health.frames` frames (or the window ends) with stage failures at most
    /// `max_error_ratio` of them, and no stream may die.
    async fn judge(&self, pipeline: &Pipeline, targets: &[u64]) -> Result<(), HealthError> {
        let h = &self.health;
        let deadline = Instant::now() + Duration::from_secs_f64(h.window_s);
        let need = u64::from(h.frames);
        loop {
            let health = pipeline.stage_health();
            let mut done = true;
            for (s, &target) in health.iter().zip(targets) {
                let current = s.generation >= target;
                if s.ended && (!current || s.frames == 0) {
                    if pipeline.is_finished() {
                        // The input ended (a file): nothing more to judge on.
                        continue;
                    }
                    return Err(HealthError::Stopped {
                        stream: s.stream.clone(),
                    });
                }
                if !current {
                    done = false;
                    continue;
                }
                let allowed = (h.max_error_ratio * need as f64).floor() as u64;
                if s.failed_frames > allowed {
                    return Err(HealthError::TooManyFailures {
                        stream: s.stream.clone(),
                        failed: s.failed_frames,
                        frames: s.frames,
                        allowed,
                        need,
                        last_error: last_error(s),
                    });
                }
                if s.frames < need && !s.ended {
                    done = false;
                }
            }
            if done {
                return Ok(());
            }
            if Instant::now() >= deadline {
                for s in &health {
                    if s.frames > 0 && s.failed_frames as f64 > h.max_error_ratio * s.frames as f64
                    {
                        return Err(HealthError::FailedInWindow {
                            stream: s.stream.clone(),
                            failed: s.failed_frames,
                            frames: s.frames,
                            last_error: last_error(s),
                        });
                    }
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inbox_keeps_the_latest_per_topic_and_serves_topics_in_turn() {
        let counters = Arc::new(ApplyCounters::default());
        let inbox = FleetInbox::new(counters.clone());
        let (trust, group, device) = (
            crate::fleet::TRUST_TOPIC,
            "aegis/v1/groups/g/workflows",
            "aegis/v1/orin-1/workflows",
        );
        // A flood on the group topic: only the latest waits, the rest are counted.
        for i in 0..100 {
            inbox.put(group, format!("junk {i}").as_bytes(), true);
        }
        inbox.put(device, b"valid", true);
        inbox.put(trust, b"trust", false);
        assert_eq!(counters.superseded.load(Relaxed), 99);
        let order: Vec<String> = std::iter::from_fn(|| inbox.take().map(|d| d.topic)).collect();
        assert_eq!(order, [trust, group, device]);
        // Round robin: a topic that keeps receiving does not starve the next one.
        inbox.put(group, b"a", false);
        inbox.put(device, b"b", true);
        let first = inbox.take().unwrap().topic;
        inbox.put(&first, b"again", true);
        let second = inbox.take().unwrap();
        assert!(second.live);
        let second = second.topic;
        assert_ne!(
            first, second,
            "the refilled topic was served twice in a row"
        );
        // The group topic was superseded: once quiet it is handed out for a re-fetch, once.
        while inbox.take().is_some() {}
        assert_eq!(inbox.quiet_superseded(|_| true), [group.to_string()]);
        assert!(inbox.quiet_superseded(|_| true).is_empty());
    }
}
