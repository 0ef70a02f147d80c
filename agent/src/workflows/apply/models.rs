//! Model bundles through the applier (docs/models.md): an announcement on a models topic is
//! checked (the signed manifest, before anything is downloaded), its files fetched on a
//! task of their own, then — back in the applier, between other deliveries — installed on
//! trial, loaded beside the running model, health-checked on the manifest's reference
//! input, swapped in between two frames, judged on the first frames, and confirmed or
//! rolled back; every authenticated outcome is answered with a signed model receipt.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use aegis_ota::model::{ModelContext, ModelRejection, VerifiedManifest, verify_manifest_against};
use aegis_ota::model_wire::{Announcement, MODEL_RECEIPT_TYPE, ModelMessage, ModelReceipt};
use aegis_ota::receipt::{Verdict, redact};

use super::{Answer, Applier, Reply, Via, ms};
use crate::models_ota::delivery::Staged;
use crate::models_ota::install::{health_check, model_config};
use crate::pipeline::Pipeline;

/// Whether `topic` carries model messages (a device's or a group's models topic).
pub fn is_models_topic(topic: &str) -> bool {
    topic.ends_with("/models") && topic.starts_with("aegis/v1/")
}

/// What one model message led to, before it is answered.
struct ModelOutcome {
    verdict: Verdict,
    reason: String,
}

/// What a receipt answers: an announcement (`install`) or a rollback order (`rollback`).
#[derive(Clone, Copy)]
enum Action {
    Install,
    Rollback,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Install => "install",
            Action::Rollback => "rollback",
        }
    }
}

impl Applier {
    /// Where the fleet link meets a model transfer over MQTT (None: model delivery off).
    pub fn model_chunk_port(&self) -> Option<std::sync::Arc<crate::models_ota::mqtt::ChunkPort>> {
        self.models.as_ref().map(|d| d.port.clone())
    }

    /// Model delivery on this device (None: off).
    pub fn set_models(&mut self, d: crate::models_ota::delivery::Delivery) {
        for r in &d.recovered {
            self.audit("model.recovered", r.clone());
        }
        let crashed = d.store.rolled_back_at_open().to_vec();
        self.models = Some(d);
        let installed = self
            .starter
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        self.workflows
            .set_installed_models(requirements(&installed));
        // A version the agent stopped on while judging it (a crash, a kill, a power cut)
        // was rolled back by the store: answered now with a signed receipt (it goes out
        // with the outbox once the link is up), and remembered, so the announcement's
        // next delivery is a duplicate rather than a second answer.
        for (name, rec) in crashed {
            if self.workflows.answered(&rec.digest) {
                continue;
            }
            if let Some(d) = &self.models {
                d.status.counters.rolled_back.fetch_add(1, Relaxed);
            }
            self.model_answer(
                Some((name.clone(), rec.version)),
                &rec.digest,
                Instant::now(),
                ModelOutcome {
                    verdict: Verdict::RolledBack,
                    reason: format!(
                        "the agent stopped while model {name:?} version {} was on trial \
                         (a crash, a kill or a power cut): rolled back at start-up; a version \
                         is tried once, ship a fix as a new version",
                        rec.version
                    ),
                },
            );
        }
    }

    /// A message on a models topic.
    pub(super) async fn model_message(
        &mut self,
        pipeline: Pipeline,
        t0: Instant,
        via: Via<'_>,
        payload: &[u8],
    ) -> (Pipeline, Reply) {
        let Some(d) = self.models.as_ref() else {
            return (
                pipeline,
                self.refuse(
                    t0,
                    via,
                    payload,
                    "model.refused",
                    "model delivery is off".into(),
                ),
            );
        };
        d.status.counters.received.fetch_add(1, Relaxed);
        match aegis_ota::model_wire::parse_model_message(payload) {
            Err(e) => (pipeline, self.refuse(t0, via, payload, "model.refused", e)),
            Ok(ModelMessage::Announcement(a)) => {
                let reply = self.announce(t0, via, payload, a);
                (pipeline, reply)
            }
            Ok(ModelMessage::Rollback { order }) => {
                self.rollback_order(pipeline, t0, via, payload, order.as_bytes())
                    .await
            }
        }
    }

    /// Checks an announcement's manifest and starts its transfer.
    fn announce(&mut self, t0: Instant, via: Via<'_>, payload: &[u8], a: Announcement) -> Reply {
        let signed = a.manifest.into_bytes();
        let checked = self.check_manifest(&signed);
        if let Some(d) = self.models.as_mut() {
            d.phases = vec![("verify".into(), ms(t0))];
        }
        let v = match checked {
            Ok(v) => v,
            Err(None) => {
                return self.refuse(
                    t0,
                    via,
                    payload,
                    "model.refused.trust",
                    "trust lost: no model is accepted until the trust metadata is delivered \
                     again"
                        .into(),
                );
            }
            Err(Some(rej)) if !rej.authenticated() => {
                return self.refuse(t0, via, payload, "model.refused", rej.to_string());
            }
            Err(Some(rej)) => {
                // Authenticated but refused: signed (budgeted) answer naming the manifest.
                let digest = aegis_ota::model::split_manifest(&signed)
                    .map(|(json, _)| aegis_ota::sha256_hex(&json))
                    .unwrap_or_else(|_| aegis_ota::sha256_hex(&signed));
                if let Some(reply) = self.answer_again(&rej, &digest, t0) {
                    return reply;
                }
                if self.workflows.answered(&digest) {
                    return self.duplicate(t0, &digest);
                }
                let reason = self.explain(&rej);
                return self.model_answer(
                    peek(&signed),
                    &digest,
                    t0,
                    ModelOutcome {
                        verdict: Verdict::Rejected,
                        reason,
                    },
                );
            }
        };
        let d = self.models.as_mut().expect("checked above");
        if d.store
            .active(&v.manifest.name)
            .is_some_and(|(ver, _)| ver == v.manifest.version)
        {
            return self.duplicate(t0, &v.digest);
        }
        if self.workflows.answered(&v.digest) {
            return self.duplicate(t0, &v.digest);
        }
        if let Some(busy) = &d.transfer {
            let reason = if *busy == v.digest {
                "its transfer is under way".to_string()
            } else if let Via::Fleet(topic) = via {
                // Kept (the latest one) and handled when the transfer under way ends.
                d.pending = Some((topic.to_string(), payload.to_vec()));
                "another bundle's transfer is under way; this one follows".to_string()
            } else {
                "another bundle's transfer is under way; try again later".to_string()
            };
            return Reply {
                verdict: Answer::Duplicate,
                reason,
                receipt: None,
                apply_ms: ms(t0),
            };
        }
        let staging = match d.store.staging_dir(&v) {
            Ok(s) => s,
            Err(e) => {
                let digest = v.digest.clone();
                return self.model_answer(
                    head(&v),
                    &digest,
                    t0,
                    ModelOutcome {
                        verdict: Verdict::Rejected,
                        reason: format!("store: {}", crate::causes_text(&e)),
                    },
                );
            }
        };
        match a.url {
            Some(url) => {
                tracing::info!(model = %v.manifest.name, version = v.manifest.version,
                    bytes = v.total_bytes, url = %redact(&url), "model bundle announced: downloading");
                self.audit(
                    "model.download",
                    format!(
                        "{} version {} sha256 {}: {} bytes from {}",
                        v.manifest.name,
                        v.manifest.version,
                        v.digest,
                        v.total_bytes,
                        redact(&url)
                    ),
                );
                if let Some(d) = self.models.as_mut() {
                    d.start_http(v, signed, url, staging, t0);
                }
                Reply {
                    verdict: Answer::Started,
                    reason: "downloading".into(),
                    receipt: None,
                    apply_ms: ms(t0),
                }
            }
            None if d.mqtt_available() => {
                tracing::info!(model = %v.manifest.name, version = v.manifest.version,
                    bytes = v.total_bytes, "model bundle announced: fetching over MQTT");
                self.audit(
                    "model.download",
                    format!(
                        "{} version {} sha256 {}: {} bytes over MQTT",
                        v.manifest.name, v.manifest.version, v.digest, v.total_bytes
                    ),
                );
                if let Some(d) = self.models.as_mut() {
                    d.start_mqtt(v, signed, staging, t0);
                }
                Reply {
                    verdict: Answer::Started,
                    reason: "fetching over MQTT".into(),
                    receipt: None,
                    apply_ms: ms(t0),
                }
            }
            None => {
                let digest = v.digest.clone();
                self.model_answer(
                    head(&v),
                    &digest,
                    t0,
                    ModelOutcome {
                        verdict: Verdict::Rejected,
                        reason: "the announcement names no URL, so its files come over the \
                                 fleet broker, and this agent runs no fleet link \
                                 (fleet.enabled is false)"
                            .into(),
                    },
                )
            }
        }
    }

    /// The version that runs, announced again (a retained announcement after a restart, a
    /// gateway reconciling a device whose receipt it never got): answered `applied` again,
    /// once per manifest per run. Its first answer may have died with the agent (a kill
    /// between the swap and the queued receipt), and a receipt is what the fleet waits on.
    fn answer_again(&mut self, rej: &ModelRejection, digest: &str, t0: Instant) -> Option<Reply> {
        let ModelRejection::NotNewer { name, offered, .. } = rej else {
            return None;
        };
        let d = self.models.as_mut()?;
        let runs = d
            .store
            .list()
            .into_iter()
            .find(|e| e.name == *name)
            .and_then(|e| e.record.active)
            .is_some_and(|a| a.version == *offered && a.digest == digest);
        if !runs || !d.answered_again.insert(digest.to_string()) {
            return None;
        }
        let outcome = ModelOutcome {
            verdict: Verdict::Applied,
            reason: format!(
                "version {offered} already runs here (announced again: answered again)"
            ),
        };
        Some(self.model_answer(Some((name.clone(), *offered)), digest, t0, outcome))
    }

    /// The reason for a refusal, said plainly where the store knows more: a version that is
    /// not newer because it was itself tried here and rolled back.
    fn explain(&self, rej: &ModelRejection) -> String {
        if let ModelRejection::NotNewer {
            name,
            offered,
            installed,
        } = rej
            && offered == installed
            && let Some(d) = &self.models
            && d.store.active(name).is_none_or(|(v, _)| v != *offered)
        {
            return format!(
                "version: model {name:?} version {offered} was tried on this device and rolled \
                 back (its health check or first frames failed, or the agent stopped while it \
                 was on trial): a version is tried once; ship the fix as a new version"
            );
        }
        rej.to_string()
    }

    /// `verify_manifest_against` this device and its store: Err(None) while trust is lost.
    fn check_manifest(&self, signed: &[u8]) -> Result<VerifiedManifest, Option<ModelRejection>> {
        let d = self.models.as_ref().ok_or(None)?;
        let (trust, me, now_s, skew) = self.workflows.model_checks().ok_or(None)?;
        let ctx = ModelContext {
            identity: me.clone(),
            platform: d.platform.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            now_s,
            max_clock_skew_s: skew,
            installed_version: None,
            free_disk_bytes: d.free_disk(),
            max_bundle_bytes: d.download.max_bytes,
        };
        // The highest version ever installed under the name the verified parse reads.
        let highest = |name: &str| {
            d.store
                .list()
                .into_iter()
                .find(|e| e.name == name)
                .map(|e| e.record.highest)
                .filter(|h| *h > 0)
        };
        verify_manifest_against(signed, trust, &ctx, &highest).map_err(Some)
    }

    /// A transfer ended (the supervisor hands it over): install, load, check, swap, judge.
    pub async fn model_staged(&mut self, pipeline: Pipeline, s: Staged) -> (Pipeline, Reply) {
        let (mut pipeline, reply) = self.finish_transfer(pipeline, s).await;
        if reply.verdict == Answer::Signed(Verdict::Applied) {
            pipeline = self.retry_waiting(pipeline).await;
        }
        // An announcement that came during the transfer goes next.
        if let Some((topic, payload)) = self.models.as_mut().and_then(|d| d.pending.take()) {
            let (p, _) = self
                .model_message(pipeline, Instant::now(), Via::Fleet(&topic), &payload)
                .await;
            pipeline = p;
        }
        (pipeline, reply)
    }

    async fn finish_transfer(&mut self, mut pipeline: Pipeline, s: Staged) -> (Pipeline, Reply) {
        let Some(d) = self.models.as_mut() else {
            return (
                pipeline,
                Reply {
                    verdict: Answer::Refused,
                    reason: "model delivery is off".into(),
                    receipt: None,
                    apply_ms: ms(s.t0),
                },
            );
        };
        d.transfer_ended();
        d.phases.push(("transfer".into(), s.transfer_ms));
        let v = &s.verified;
        let (name, version) = (v.manifest.name.clone(), v.manifest.version);
        if let Err((why, transient)) = &s.outcome {
            let outcome = ModelOutcome {
                verdict: Verdict::Rejected,
                reason: format!("download: {why}"),
            };
            if *transient {
                // Not remembered as answered: the next delivery of the announcement (a
                // reconnect, a new publish) resumes the staged part.
                return (pipeline, self.model_answer_once(v, s.t0, outcome));
            }
            let digest = v.digest.clone();
            return (pipeline, self.model_answer(head(v), &digest, s.t0, outcome));
        }
        let outcome = self.try_install(&mut pipeline, &s).await;
        let d = self.models.as_mut().expect("checked above");
        match outcome.verdict {
            Verdict::Applied => {
                d.status.counters.installed.fetch_add(1, Relaxed);
            }
            Verdict::RolledBack => {
                d.status.counters.rolled_back.fetch_add(1, Relaxed);
            }
            _ => {}
        }
        d.status.set_store(&d.store);
        tracing::info!(model = %name, version, verdict = outcome.verdict.as_str(),
            reason = %outcome.reason, ms = ms(s.t0), "model bundle");
        let digest = v.digest.clone();
        let reply = self.model_answer(head(v), &digest, s.t0, outcome);
        (pipeline, reply)
    }

    /// Install on trial → load beside the running model → reference input → swap → first
    /// frames → confirm; any failure rolls the store and the pipeline back.
    async fn try_install(&mut self, pipeline: &mut Pipeline, s: &Staged) -> ModelOutcome {
        let v = &s.verified;
        let name = v.manifest.name.clone();
        let d = self.models.as_mut().expect("checked by the caller");
        let rejected = |reason: String| ModelOutcome {
            verdict: Verdict::Rejected,
            reason,
        };
        let mut mark = Instant::now();
        let installed = match d.store.install(v, &s.signed) {
            Ok(i) => i,
            Err(e) => return rejected(format!("install: {}", crate::causes_text(&e))),
        };
        phase(d, "install", &mut mark);
        let mc = match model_config(&v.manifest, &installed.dir) {
            Ok(m) => m,
            Err(why) => {
                let _ = d.store.rollback(&name);
                return rejected(format!("model: {why}"));
            }
        };
        let rolled_back = |d: &mut crate::models_ota::delivery::Delivery, reason: String| {
            if let Err(e) = d.store.rollback(&name) {
                tracing::error!(error = %e, model = %name, "cannot roll the model store back");
            }
            ModelOutcome {
                verdict: Verdict::RolledBack,
                reason,
            }
        };
        // Loaded beside the running model: the registry shares every unchanged model and
        // loads this one anew (checksum, session, warm-up).
        let loaded = {
            let (starter, cfg, inf, mc2) = (
                self.starter.clone(),
                pipeline.config().clone(),
                self.inference.clone(),
                mc.clone(),
            );
            tokio::task::spawn_blocking(move || -> Result<_, String> {
                let new_inf = starter
                    .load_with(&cfg, &inf, &mc2)
                    .map_err(|e| crate::causes_text(&e))?;
                // A model no stage uses is loaded on its own for the check.
                let model = match new_inf.registry().get(&mc2.name) {
                    Some(m) => m,
                    None => std::sync::Arc::new(
                        aegis_models::registry::load(
                            &crate::inference::engine_settings(
                                &starter.models(Some(&mc2)),
                                starter.cuda_device,
                            ),
                            &crate::inference::spec_of(&mc2),
                            aegis_models::registry::BatchSettings::default(),
                        )
                        .map_err(|e| e.to_string())?,
                    ),
                };
                Ok((new_inf, model))
            })
            .await
        };
        let d = self.models.as_mut().expect("checked by the caller");
        phase(d, "load", &mut mark);
        let (new_inf, model) = match loaded {
            Ok(Ok(x)) => x,
            Ok(Err(why)) => return rolled_back(d, format!("load: {why}")),
            Err(e) => return rolled_back(d, format!("load: {e}")),
        };
        let checked = {
            let (manifest, dir, model) = (v.manifest.clone(), installed.dir.clone(), model.clone());
            tokio::task::spawn_blocking(move || health_check(&model, &manifest, &dir)).await
        };
        phase(d, "health", &mut mark);
        match checked {
            Ok(Ok(report)) => {
                tracing::info!(model = %name, seen = ?report.seen, "model health check passed");
            }
            Ok(Err(why)) => return rolled_back(d, format!("health: {why}")),
            Err(e) => return rolled_back(d, format!("health: {e}")),
        }
        drop(model);
        let used =
            crate::inference::used_models(&pipeline.config().stages).contains(&name.as_str());
        if used {
            let targets: Vec<u64> = pipeline
                .stage_health()
                .iter()
                .map(|h| h.generation + 1)
                .collect();
            let cfg = pipeline.config().clone();
            if let Err(e) = pipeline.swap_stages(&cfg, &new_inf) {
                return rolled_back(d, format!("swap: {e}"));
            }
            phase(d, "swap", &mut mark);
            let judged = self.judge(pipeline, &targets).await;
            if let Some(d) = self.models.as_mut() {
                phase(d, "judge", &mut mark);
            }
            if let Err(why) = judged {
                let old = self.inference.clone();
                if let Err(e) = pipeline.swap_stages(&cfg, &old) {
                    tracing::error!(error = %e, "swapping the old model back failed");
                }
                let d = self.models.as_mut().expect("checked by the caller");
                return rolled_back(d, format!("first frames: {why}"));
            }
        }
        let d = self.models.as_mut().expect("checked by the caller");
        if let Err(e) = d.store.confirm(&name) {
            // The trial stays recorded: the next start rolls it back.
            let old = self.inference.clone();
            if used {
                let cfg = pipeline.config().clone();
                let _ = pipeline.swap_stages(&cfg, &old);
            }
            return ModelOutcome {
                verdict: Verdict::RolledBack,
                reason: format!("confirm: {}", crate::causes_text(&e)),
            };
        }
        {
            let mut installed = self
                .starter
                .installed
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            installed.retain(|m| m.name != mc.name);
            installed.push(mc);
            d.status.set_running(&installed);
            self.workflows
                .set_installed_models(requirements(&installed));
        }
        self.inference = if used {
            new_inf
        } else {
            self.inference.clone()
        };
        ModelOutcome {
            verdict: Verdict::Applied,
            reason: String::new(),
        }
    }

    /// A signed rollback order: checked like a manifest (trust, issuer allowed to ship
    /// models, target, time), applied by the store only when its `from_version` is the
    /// active version and its `to_version` the previous one (so it applies once), then the
    /// version returned to is loaded, checked on its reference input and swapped in as an
    /// install would be. Answered with a signed `rollback` receipt.
    async fn rollback_order(
        &mut self,
        mut pipeline: Pipeline,
        t0: Instant,
        via: Via<'_>,
        payload: &[u8],
        order: &[u8],
    ) -> (Pipeline, Reply) {
        let checked = {
            let Some(d) = self.models.as_ref() else {
                return (
                    pipeline,
                    self.refuse(
                        t0,
                        via,
                        payload,
                        "model.refused",
                        "model delivery is off".into(),
                    ),
                );
            };
            self.workflows
                .model_checks()
                .map(|(trust, me, now_s, skew)| {
                    let ctx = ModelContext {
                        identity: me.clone(),
                        platform: d.platform.clone(),
                        agent_version: env!("CARGO_PKG_VERSION").into(),
                        now_s,
                        max_clock_skew_s: skew,
                        installed_version: None,
                        free_disk_bytes: 0,
                        max_bundle_bytes: d.download.max_bytes,
                    };
                    aegis_ota::model_rollback::verify_rollback_order(order, trust, &ctx)
                })
        };
        let v = match checked {
            None => {
                return (
                    pipeline,
                    self.refuse(
                        t0,
                        via,
                        payload,
                        "model.refused.trust",
                        "trust lost: no rollback order is accepted until the trust metadata is \
                         delivered again"
                            .into(),
                    ),
                );
            }
            Some(Err(rej)) if !rej.authenticated() => {
                return (
                    pipeline,
                    self.refuse(t0, via, payload, "model.refused", rej.to_string()),
                );
            }
            Some(Err(rej)) => {
                let digest = aegis_ota::model::manifest_digest(order)
                    .unwrap_or_else(|_| aegis_ota::sha256_hex(order));
                if self.workflows.answered(&digest) {
                    return (pipeline, self.duplicate(t0, &digest));
                }
                let reply = self.model_reply(
                    Action::Rollback,
                    None,
                    &digest,
                    t0,
                    ModelOutcome {
                        verdict: Verdict::Rejected,
                        reason: rej.to_string(),
                    },
                    true,
                );
                return (pipeline, reply);
            }
            Some(Ok(v)) => v,
        };
        if self.workflows.answered(&v.digest) {
            return (pipeline, self.duplicate(t0, &v.digest));
        }
        let (name, to) = (v.order.name.clone(), v.order.to_version);
        let head = Some((name.clone(), to));
        let d = self.models.as_mut().expect("checked above");
        if let Err(e) = d.store.rollback_to(&v) {
            let reply = self.model_reply(
                Action::Rollback,
                head,
                &v.digest,
                t0,
                ModelOutcome {
                    verdict: Verdict::Rejected,
                    reason: format!("store: {}", crate::causes_text(&e)),
                },
                true,
            );
            return (pipeline, reply);
        }
        d.status.set_store(&d.store);
        // What runs now: the store's confirmed versions, each verified again.
        let (installed, problems) = d.installed(self.workflows.model_checks());
        for p in &problems {
            tracing::error!(problem = %p, "installed model");
        }
        d.status.set_running(&installed);
        *self
            .starter
            .installed
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = installed.clone();
        self.workflows
            .set_installed_models(requirements(&installed));
        let outcome = self.reload(&mut pipeline, &name).await;
        let reply = self.model_reply(Action::Rollback, head, &v.digest, t0, outcome, true);
        (pipeline, reply)
    }

    /// After the store changed what `name` is: the pipeline's models loaded again (the
    /// others shared) and, when a stage uses `name`, its streams swapped between two frames
    /// and judged. A version that does not load or fails its first frames leaves the old
    /// chain running, and the verdict says so.
    async fn reload(&mut self, pipeline: &mut Pipeline, name: &str) -> ModelOutcome {
        let used = crate::inference::used_models(&pipeline.config().stages).contains(&name);
        if !used {
            return ModelOutcome {
                verdict: Verdict::Applied,
                reason: String::new(),
            };
        }
        let loaded = {
            let (starter, cfg, inf) = (
                self.starter.clone(),
                pipeline.config().clone(),
                self.inference.clone(),
            );
            tokio::task::spawn_blocking(move || starter.load(&cfg, &inf)).await
        };
        let new_inf = match loaded {
            Ok(Ok(i)) => i,
            Ok(Err(e)) => {
                return ModelOutcome {
                    verdict: Verdict::RolledBack,
                    reason: format!(
                        "load: {}; the stages keep the model they ran",
                        crate::causes_text(&e)
                    ),
                };
            }
            Err(e) => {
                return ModelOutcome {
                    verdict: Verdict::RolledBack,
                    reason: format!("load: {e}"),
                };
            }
        };
        let targets: Vec<u64> = pipeline
            .stage_health()
            .iter()
            .map(|h| h.generation + 1)
            .collect();
        let cfg = pipeline.config().clone();
        if let Err(e) = pipeline.swap_stages(&cfg, &new_inf) {
            return ModelOutcome {
                verdict: Verdict::RolledBack,
                reason: format!("swap: {e}"),
            };
        }
        if let Err(why) = self.judge(pipeline, &targets).await {
            let old = self.inference.clone();
            let _ = pipeline.swap_stages(&cfg, &old);
            return ModelOutcome {
                verdict: Verdict::RolledBack,
                reason: format!("first frames: {why}; the stages keep the model they ran"),
            };
        }
        self.inference = new_inf;
        ModelOutcome {
            verdict: Verdict::Applied,
            reason: String::new(),
        }
    }

    /// Answers without remembering the digest (a transient failure: a redelivery retries).
    fn model_answer_once(&mut self, v: &VerifiedManifest, t0: Instant, o: ModelOutcome) -> Reply {
        self.model_reply(Action::Install, head(v), &v.digest.clone(), t0, o, false)
    }

    /// Answers an authenticated manifest: remembered, audited, receipt signed and sent.
    fn model_answer(
        &mut self,
        v: Option<(String, u64)>,
        digest: &str,
        t0: Instant,
        o: ModelOutcome,
    ) -> Reply {
        self.model_reply(Action::Install, v, digest, t0, o, true)
    }

    fn model_reply(
        &mut self,
        action: Action,
        v: Option<(String, u64)>,
        digest: &str,
        t0: Instant,
        o: ModelOutcome,
        remember: bool,
    ) -> Reply {
        let reason = redact(&o.reason);
        if let Some(d) = &self.models
            && o.verdict == Verdict::Rejected
        {
            d.status.counters.rejected.fetch_add(1, Relaxed);
        }
        if o.verdict == Verdict::Rejected && !self.signed_rejection_due() {
            self.audit.record(
                "model.rejected.unsigned",
                &format!("sha256 {digest}: answered unsigned (budget): {reason}"),
            );
            self.notice(&reason);
            return Reply {
                verdict: Answer::Signed(Verdict::Rejected),
                reason,
                receipt: None,
                apply_ms: ms(t0),
            };
        }
        let (name, version) = v.unwrap_or_default();
        self.audit(
            &format!("model.{}", o.verdict.as_str()),
            format!(
                "{} {name} version {version} sha256 {digest}: {reason}",
                action.as_str()
            ),
        );
        if remember && let Err(e) = self.workflows.record_answer(digest) {
            tracing::warn!(error = %e, "cannot remember the answered digest");
        }
        let active_version = self
            .models
            .as_ref()
            .and_then(|d| d.store.active(&name))
            .map(|(v, _)| v);
        let total_ms = ms(t0);
        let receipt = ModelReceipt {
            kind: MODEL_RECEIPT_TYPE.into(),
            device: String::new(),
            name: name.clone(),
            version,
            manifest_sha256: digest.to_string(),
            action: action.as_str().into(),
            verdict: o.verdict,
            reason: reason.clone(),
            active_version,
            trust_version: 0,
            at: String::new(),
            total_ms: Some(total_ms),
            phases: self
                .models
                .as_ref()
                .map(|d| d.phases.clone())
                .unwrap_or_default(),
        };
        let receipt = match self.workflows.model_receipt(receipt) {
            Ok(r) => {
                self.send("receipt", r.clone().into_bytes());
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot sign the model receipt");
                None
            }
        };
        if let Some(d) = &self.models {
            d.status.set_last(serde_json::json!({
                "name": name, "version": version, "verdict": o.verdict.as_str(),
                "reason": reason, "total_ms": total_ms, "at_us": crate::store::now_us(),
                "phases_ms": d.phases.iter().map(|(k, v)| (k.clone(), serde_json::json!(v))).collect::<serde_json::Map<String, serde_json::Value>>(),
            }));
        }
        self.publish_status();
        Reply {
            verdict: Answer::Signed(o.verdict),
            reason,
            receipt,
            apply_ms: total_ms,
        }
    }
}

/// Records the milliseconds since `mark` as step `name`, and restarts `mark`.
fn phase(d: &mut crate::models_ota::delivery::Delivery, name: &str, mark: &mut Instant) {
    d.phases.push((name.into(), ms(*mark)));
    *mark = Instant::now();
}

/// What workflows' `requires.models` may name: (name, version, model file SHA-256).
fn requirements(installed: &[aegis_config::ModelConfig]) -> Vec<(String, u32, String)> {
    installed
        .iter()
        .map(|m| {
            (
                m.name.clone(),
                m.version,
                m.sha256.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// A verified manifest's name and version.
fn head(v: &VerifiedManifest) -> Option<(String, u64)> {
    Some((v.manifest.name.clone(), v.manifest.version))
}

/// The `name` and `version` of a manifest, read leniently: to find the installed version
/// the real check compares against (the check parses the signed bytes itself), and to name
/// an authenticated manifest that the check refused in its receipt.
fn peek(signed: &[u8]) -> Option<(String, u64)> {
    let (json, _) = aegis_ota::model::split_manifest(signed).ok()?;
    #[derive(serde::Deserialize)]
    struct Head {
        name: String,
        version: u64,
    }
    serde_json::from_slice::<Head>(&json)
        .ok()
        .map(|h| (h.name, h.version))
}
