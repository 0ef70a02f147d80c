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
//! Unauthenticated input (format or signature failures) gets no signed answer: it is
//! counted, audited, and at most one unsigned rejection notice per
//! [`NOTICE_INTERVAL`] summarises it, so the device is never a signing oracle and a flood
//! costs one failed check per message.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::{HealthCheckConfig, InferenceConfig, PipelineConfig};
use aegis_ota::receipt::Verdict;
use serde::Serialize;

use crate::inference::Inference;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions};
use crate::store::{Record, StoreHandle, now_us};
use crate::workflow::{Outcome, Workflows};

/// Unsigned rejection notices are sent at most this often.
pub const NOTICE_INTERVAL: Duration = Duration::from_secs(10);
/// Digests answered recently: a redelivered document (a retained message after a
/// reconnect, a flood of one valid document) gets no second receipt.
const RECENT: usize = 64;

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
}

impl Starter {
    /// Loads the models `cfg` needs, sharing those `loaded` has.
    pub fn load(&self, cfg: &PipelineConfig, loaded: &Inference) -> anyhow::Result<Arc<Inference>> {
        Inference::load_reusing(&self.inference, cfg, self.cuda_device, loaded)
    }

    /// Starts `cfg` with `inference`.
    pub fn start(
        &self,
        cfg: &PipelineConfig,
        inference: Arc<Inference>,
    ) -> anyhow::Result<Pipeline> {
        let mut opts = self.opts.clone();
        opts.inference = Some(inference);
        Ok(Pipeline::start(cfg, self.metrics.clone(), &opts)?)
    }
}

/// What became of one message.
#[derive(Debug, Clone, Serialize)]
pub struct Reply {
    /// `applied`, `rolled_back`, `rejected` (authenticated), `refused`
    /// (unauthenticated), `already_active` or `duplicate`.
    pub verdict: String,
    /// Why.
    pub reason: String,
    /// The signed receipt, when one was made.
    pub receipt: Option<String>,
    /// Milliseconds from arrival to verdict.
    pub apply_ms: f64,
}

/// A message for the applier.
pub struct Request {
    /// Topic it came on (`http` for the local endpoint).
    pub topic: String,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Where the reply goes (local callers).
    pub reply: Option<tokio::sync::oneshot::Sender<Reply>>,
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
    /// Unauthenticated (format/signature).
    pub refused: AtomicU64,
    /// Redeliveries ignored.
    pub duplicates: AtomicU64,
    /// Messages dropped because the applier was busy.
    pub busy: AtomicU64,
    /// Trust metadata updates accepted.
    pub trust_updates: AtomicU64,
}

/// The device's workflow applier; owned by the run loop (it switches the pipeline).
pub struct Applier {
    workflows: Workflows,
    starter: Arc<Starter>,
    inference: Arc<Inference>,
    health: HealthCheckConfig,
    store: StoreHandle,
    receipts_topic: Option<String>,
    /// Fleet link wake-up (receipt and status out now).
    pub nudge: Option<Arc<tokio::sync::Notify>>,
    status: Arc<Mutex<serde_json::Value>>,
    recent: VecDeque<String>,
    last_notice: Option<Instant>,
    unnoticed: u64,
    /// Counters.
    pub counters: Arc<ApplyCounters>,
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

impl Applier {
    /// An applier over the opened workflow state. `inference` is what the running pipeline
    /// uses; `status` is the shared desired-state report.
    pub fn new(
        workflows: Workflows,
        starter: Arc<Starter>,
        inference: Arc<Inference>,
        health: HealthCheckConfig,
        store: StoreHandle,
        receipts_topic: Option<String>,
        status: Arc<Mutex<serde_json::Value>>,
    ) -> Applier {
        *status.lock().unwrap_or_else(|p| p.into_inner()) = workflows.status();
        Applier {
            workflows,
            starter,
            inference,
            health,
            store,
            receipts_topic,
            nudge: None,
            status,
            recent: VecDeque::new(),
            last_notice: None,
            unnoticed: 0,
            counters: Arc::new(ApplyCounters::default()),
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

    /// The models the running pipeline uses.
    pub fn inference(&self) -> Arc<Inference> {
        self.inference.clone()
    }

    fn audit(&self, action: &str, detail: String) {
        self.store.submit(Record::Audit {
            ts_us: now_us(),
            actor: "workflow".into(),
            action: action.into(),
            detail,
        });
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
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = self.workflows.status();
        if let Some(n) = &self.nudge {
            n.notify_one();
        }
    }

    /// Unauthenticated input: counted, audited, and summarised by at most one unsigned
    /// notice per interval.
    fn refuse(&mut self, t0: Instant, reason: String) -> Reply {
        self.counters.refused.fetch_add(1, Relaxed);
        self.unnoticed += 1;
        let due = self
            .last_notice
            .is_none_or(|t| t.elapsed() >= NOTICE_INTERVAL);
        if due {
            self.audit(
                "workflow.refused",
                format!(
                    "{} unauthenticated message(s); last: {reason}",
                    self.unnoticed
                ),
            );
            let notice = serde_json::json!({
                "type": "rejection-notice",
                "signed": false,
                "count": self.unnoticed,
                "last_reason": reason,
            });
            self.send("notice", notice.to_string().into_bytes());
            self.last_notice = Some(Instant::now());
            self.unnoticed = 0;
        }
        Reply {
            verdict: "refused".into(),
            reason,
            receipt: None,
            apply_ms: ms(t0),
        }
    }

    fn seen(&mut self, digest: &str) -> bool {
        if self.recent.iter().any(|d| d == digest) {
            return true;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(digest.to_string());
        false
    }

    /// A signed answer for an authenticated document.
    fn answer(&mut self, doc: &aegis_ota::maml::Document, digest: &str, outcome: Outcome) -> Reply {
        let (counter, action) = match outcome.verdict {
            Verdict::Applied => (&self.counters.applied, "workflow.applied"),
            Verdict::RolledBack => (&self.counters.rolled_back, "workflow.rolled_back"),
            Verdict::Rejected => (&self.counters.rejected, "workflow.rejected"),
        };
        counter.fetch_add(1, Relaxed);
        self.audit(
            action,
            format!(
                "{} sequence {} sha256 {digest}: {}",
                doc.front.id, doc.front.sequence, outcome.reason
            ),
        );
        tracing::info!(workflow = %doc.front.id, sequence = doc.front.sequence,
            verdict = outcome.verdict.as_str(), mode = outcome.mode, ms = outcome.apply_ms,
            reason = %outcome.reason, "workflow");
        let receipt = match self.workflows.receipt(doc, digest, &outcome) {
            Ok(r) => {
                self.send("receipt", r.clone().into_bytes());
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the receipt");
                None
            }
        };
        Reply {
            verdict: outcome.verdict.as_str().into(),
            reason: outcome.reason,
            receipt,
            apply_ms: outcome.apply_ms,
        }
    }

    /// Handles one message; returns the (possibly replaced) pipeline and the reply.
    pub async fn handle(&mut self, pipeline: Pipeline, req: &Request) -> (Pipeline, Reply) {
        let t0 = Instant::now();
        self.counters.received.fetch_add(1, Relaxed);
        if req.topic == crate::fleet::TRUST_TOPIC {
            return (pipeline, self.trust(t0, &req.payload));
        }
        let doc = &req.payload;
        let v = match self.workflows.verify(doc) {
            Ok(v) => v,
            Err(r) if !r.authenticated() => return (pipeline, self.refuse(t0, r.to_string())),
            Err(r) => {
                let Some((parsed, digest)) = aegis_ota::authenticated_view(doc) else {
                    return (pipeline, self.refuse(t0, r.to_string()));
                };
                if self.seen(&digest) || self.is_active(&digest) {
                    return (pipeline, self.duplicate(t0, &digest));
                }
                let outcome = Outcome {
                    verdict: Verdict::Rejected,
                    reason: r.to_string(),
                    mode: "none",
                    apply_ms: ms(t0),
                };
                return (pipeline, self.answer(&parsed, &digest, outcome));
            }
        };
        if self.seen(&v.digest) {
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
            return (pipeline, self.answer(&v.document, &v.digest, outcome));
        };
        let (pipeline, outcome) = self.switch(pipeline, doc, &v, &new_cfg, t0).await;
        let reply = self.answer(&v.document, &v.digest, outcome);
        self.publish_status();
        (pipeline, reply)
    }

    fn is_active(&self, digest: &str) -> bool {
        self.workflows
            .state()
            .active
            .as_ref()
            .is_some_and(|a| a.digest == digest)
    }

    fn duplicate(&self, t0: Instant, digest: &str) -> Reply {
        self.counters.duplicates.fetch_add(1, Relaxed);
        let active = self.is_active(digest);
        Reply {
            verdict: if active {
                "already_active"
            } else {
                "duplicate"
            }
            .into(),
            reason: format!("{digest} was answered already"),
            receipt: None,
            apply_ms: ms(t0),
        }
    }

    fn trust(&mut self, t0: Instant, file: &[u8]) -> Reply {
        match self.workflows.update_trust(file) {
            Ok(version) => {
                self.counters.trust_updates.fetch_add(1, Relaxed);
                self.audit("trust.updated", format!("version {version}"));
                tracing::info!(version, "trust metadata updated");
                self.publish_status();
                Reply {
                    verdict: "applied".into(),
                    reason: format!("trust metadata version {version}"),
                    receipt: None,
                    apply_ms: ms(t0),
                }
            }
            // A retained copy of the version held comes back on every connect.
            Err(e) if e.to_string().contains("is not newer") => {
                self.counters.duplicates.fetch_add(1, Relaxed);
                Reply {
                    verdict: "duplicate".into(),
                    reason: e.to_string(),
                    receipt: None,
                    apply_ms: ms(t0),
                }
            }
            Err(e) => self.refuse(t0, format!("trust metadata: {e}")),
        }
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
                    return (pipeline, rejected(format!("models: {e:#}"), t0));
                }
                Err(e) => return (pipeline, rejected(format!("models: {e}"), t0)),
            }
        };
        let old_cfg = pipeline.config().clone();
        let in_place = pipeline.can_swap_in_place(new_cfg);
        if let Err(e) = self.workflows.begin(doc, v) {
            return (pipeline, rejected(format!("state: {e:#}"), t0));
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
                Err((old, e)) => {
                    let _ = self.workflows.rollback();
                    let outcome = Outcome {
                        verdict: Verdict::RolledBack,
                        reason: format!("start: {e:#}"),
                        mode,
                        apply_ms: ms(t0),
                    };
                    return (self.restore(old, &old_cfg).await, outcome);
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
    ) -> Result<Pipeline, (Option<Pipeline>, anyhow::Error)> {
        old.stop();
        let _ = tokio::task::spawn_blocking(move || old.wait()).await;
        let (starter, cfg) = (self.starter.clone(), cfg.clone());
        match tokio::task::spawn_blocking(move || starter.start(&cfg, inference)).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(e)) => Err((None, e)),
            Err(e) => Err((None, anyhow::anyhow!("{e}"))),
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
    async fn judge(&self, pipeline: &Pipeline, targets: &[u64]) -> Result<(), String> {
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
                    return Err(format!("stream {} stopped", s.stream));
                }
                if !current {
                    done = false;
                    continue;
                }
                let allowed = (h.max_error_ratio * need as f64).floor() as u64;
                if s.failed_frames > allowed {
                    return Err(format!(
                        "stream {}: stages failed on {} of {} frames (at most {allowed} of {need} allowed); last error: {}",
                        s.stream,
                        s.failed_frames,
                        s.frames,
                        s.last_error.as_deref().unwrap_or("?")
                    ));
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
                        return Err(format!(
                            "stream {}: stages failed on {} of {} frames; last error: {}",
                            s.stream,
                            s.failed_frames,
                            s.frames,
                            s.last_error.as_deref().unwrap_or("?")
                        ));
                    }
                }
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
