//! The device's workflow state (DESIGN §5, "Agent side"): trust, identity, policy, keys, and
//! the persisted record of which signed workflow runs.
//!
//! On disk, in `workflows.state_dir` (off the A/B firmware slots):
//!
//! ```text
//! state.json                    anti-replay state + active/previous/trial entries (atomic)
//! docs/<sha256>.maml.md         the signed documents the entries name, as received
//! trust.json                    trust metadata newer than the provisioned one
//! ```
//!
//! Apply is a two-step commit. [`Workflows::begin`] writes the document (temp file, fsync,
//! rename) and then `state.json` naming it as active *on trial*, with its sequence accepted;
//! after the health check [`Workflows::commit`] clears the trial mark or
//! [`Workflows::rollback`] makes the previous workflow active again. `state.json` is the only
//! commit point, replaced atomically, so a crash at any moment leaves either the old state or
//! the new one. A trial found at start-up (the agent died before the verdict) is rolled back:
//! the device only keeps a workflow that passed its health check.

use std::path::{Path, PathBuf};

use aegis_config::{AgentConfig, PipelineConfig};
use aegis_ota::device::{Identity, Policy, ReplayState};
use aegis_ota::receipt::{Receipt, Verdict};
use aegis_ota::seal::SealSecret;
use aegis_ota::sign::{PublicKey, SecretKey};
use aegis_ota::trust::TrustMetadata;
use aegis_ota::{Rejection, Verified};
use serde::{Deserialize, Serialize};

/// One applied workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its `id`.
    pub id: String,
    /// SHA-256 of its signed bytes (names its file).
    pub digest: String,
    /// Its sequence.
    pub sequence: u64,
    /// When it was applied (RFC 3339).
    pub applied_at: String,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Anti-replay counters, time floor, trust version.
    pub replay: ReplayState,
    /// The workflow that runs (None: the local default pipeline).
    pub active: Option<Entry>,
    /// The one before (the rollback target).
    pub previous: Option<Entry>,
    /// Set while `active` is on trial (applied, health not yet confirmed).
    pub trial: bool,
}

/// A signed document's outcome, for receipts.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// What happened.
    pub verdict: Verdict,
    /// Why.
    pub reason: String,
    /// `in_place`, `rebuild` or `none`.
    pub mode: &'static str,
    /// Milliseconds from arrival to verdict.
    pub apply_ms: f64,
}

/// The device's workflow side.
pub struct Workflows {
    dir: PathBuf,
    me: Identity,
    policy: Policy,
    roots: Vec<PublicKey>,
    threshold: u32,
    trust: TrustMetadata,
    sign_key: SecretKey,
    seal_keys: Vec<SealSecret>,
    state: State,
    /// Required models must be among these (name, version, sha256).
    models: Vec<(String, u32, Option<String>)>,
}

use aegis_ota::maml::{format_time as rfc3339, now_s};

fn ctx<T, E: std::fmt::Display>(
    r: Result<T, E>,
    what: impl std::fmt::Display,
) -> anyhow::Result<T> {
    r.map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// Writes `bytes` to `path` atomically: temp file, fsync, rename, directory fsync.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl Workflows {
    /// Opens the workflow side of `cfg`: keys, trust metadata (the provisioned file, or the
    /// newer one kept in the state directory), policy and state. An interrupted trial is
    /// rolled back here.
    pub fn open(cfg: &AgentConfig) -> anyhow::Result<Workflows> {
        let mut me = Self::load(cfg)?;
        if me.state.trial {
            tracing::warn!(workflow = ?me.state.active.as_ref().map(|e| &e.id),
                "the agent stopped while a workflow was on trial: rolling back to the previous one");
            me.rollback()?;
        }
        Ok(me)
    }

    /// What the device holds, without changing anything (`aegis workflow status`): the
    /// state, the trust version, and whether the active workflow passes its checks now.
    pub fn inspect(cfg: &AgentConfig) -> anyhow::Result<serde_json::Value> {
        let me = Self::load(cfg)?;
        let active_check =
            me.state
                .active
                .as_ref()
                .map(|a| match std::fs::read(me.doc_path(&a.digest)) {
                    Err(e) => Err(e.to_string()),
                    Ok(doc) => aegis_ota::device::recheck(
                        &doc,
                        &me.trust,
                        &me.me,
                        &me.policy,
                        &me.state.replay,
                        &me.keys(),
                    )
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        if v.digest == a.digest {
                            Ok(())
                        } else {
                            Err("the stored document does not match its digest".into())
                        }
                    }),
                });
        Ok(serde_json::json!({
            "state": me.state,
            "trust_version": me.trust.version,
            "device_key": me.sign_key.public().id(),
            "active_verifies": active_check.as_ref().map(|r| r.is_ok()),
            "active_error": active_check.and_then(|r| r.err()),
        }))
    }

    fn load(cfg: &AgentConfig) -> anyhow::Result<Workflows> {
        let w = &cfg.workflows;
        let dir = w.state_dir.clone();
        ctx(std::fs::create_dir_all(dir.join("docs")), dir.display())?;
        let roots = w
            .trust
            .roots
            .iter()
            .map(|p| {
                ctx(
                    PublicKey::read(p),
                    format!("workflows.trust.roots: {}", p.display()),
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let provisioned = ctx(
            std::fs::read(&w.trust.metadata),
            format!("workflows.trust.metadata: {}", w.trust.metadata.display()),
        )?;
        // Validity is checked against the roots; expiry is judged per document (an expired
        // trust set stops *new* workflows, never the running one).
        let mut trust = ctx(
            TrustMetadata::verify_update(&provisioned, &roots, w.trust.threshold, 0, i64::MIN),
            format!("workflows.trust.metadata: {}", w.trust.metadata.display()),
        )?;
        let kept = dir.join("trust.json");
        if let Ok(bytes) = std::fs::read(&kept) {
            let keys = ctx(aegis_ota::trust::keys_of(&trust.root.keys), "trust roots")?;
            match TrustMetadata::verify_update(
                &bytes,
                &keys,
                trust.root.threshold,
                trust.version,
                i64::MIN,
            ) {
                Ok(newer) => trust = newer,
                Err(e) => tracing::warn!(file = %kept.display(), error = %e,
                    "kept trust metadata not used; the provisioned version applies"),
            }
        }
        let sign_key = ctx(
            SecretKey::read(&w.keys_dir.join("device.key")),
            "device signing key (run `aegis provision`)",
        )?;
        let mut seal_keys = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&w.keys_dir) {
            let mut names: Vec<PathBuf> = rd.filter_map(|e| Some(e.ok()?.path())).collect();
            names.sort();
            for p in names {
                let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if n.ends_with(".kem.key") {
                    seal_keys.push(ctx(SealSecret::read(&p), p.display())?);
                }
            }
        }
        let state_file = dir.join("state.json");
        let mut state: State = match std::fs::read(&state_file) {
            Ok(b) => ctx(serde_json::from_slice(&b), state_file.display())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => anyhow::bail!("{}: {e}", state_file.display()),
        };
        state.replay.trust_version = state.replay.trust_version.max(trust.version);
        let models = cfg
            .inference
            .models
            .iter()
            .map(|m| (m.name.clone(), m.version, m.sha256.clone()))
            .collect();
        Ok(Workflows {
            dir,
            me: Identity {
                id: cfg.device.id.clone(),
                groups: cfg.device.groups.clone(),
            },
            policy: Policy::from(&w.policy),
            roots,
            threshold: w.trust.threshold,
            trust,
            sign_key,
            seal_keys,
            state,
            models,
        })
    }

    /// The persisted state.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The trust metadata version held.
    pub fn trust_version(&self) -> u64 {
        self.trust.version
    }

    /// The device's public signing key (receipts verify with it).
    pub fn device_key(&self) -> &PublicKey {
        self.sign_key.public()
    }

    fn doc_path(&self, digest: &str) -> PathBuf {
        self.dir.join("docs").join(format!("{digest}.maml.md"))
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join("state.json");
        ctx(
            write_atomic(&path, &serde_json::to_vec_pretty(&self.state)?),
            path.display(),
        )
    }

    fn keys(&self) -> Vec<&SealSecret> {
        self.seal_keys.iter().collect()
    }

    /// The active workflow's pipeline, checked again (signature, current trust — so a
    /// revoked issuer's workflow stops — target, policy). When it no longer passes, the
    /// previous one is tried, then the local default (`None`).
    pub fn active_pipeline(&mut self) -> anyhow::Result<Option<(Verified, PipelineConfig)>> {
        for _ in 0..2 {
            let Some(active) = self.state.active.clone() else {
                return Ok(None);
            };
            let checked = std::fs::read(self.doc_path(&active.digest))
                .map_err(|e| e.to_string())
                .and_then(|doc| {
                    aegis_ota::device::recheck(
                        &doc,
                        &self.trust,
                        &self.me,
                        &self.policy,
                        &self.state.replay,
                        &self.keys(),
                    )
                    .map_err(|e| e.to_string())
                });
            match checked {
                Ok(v) if v.digest == active.digest => {
                    if let Some(p) = v.pipeline.clone() {
                        return Ok(Some((v, p)));
                    }
                    return Ok(None);
                }
                Ok(_) => {
                    tracing::error!(workflow = %active.id, "stored workflow does not match its digest")
                }
                Err(e) => tracing::error!(workflow = %active.id, error = %e,
                    "the active workflow no longer passes its checks; falling back"),
            }
            self.rollback()?;
        }
        Ok(None)
    }

    /// Every check of DESIGN §5 against the current state (nothing changes). Requirements
    /// (models) are checked here too.
    pub fn verify(&self, doc: &[u8]) -> Result<Verified, Rejection> {
        let now = now_s();
        if let Some(exp) = aegis_ota::maml::parse_time(&self.trust.expires_at)
            && exp <= now.max(self.state.replay.time_floor_s)
        {
            // A frozen trust set (withheld updates) stops new workflows.
            return Err(Rejection::Time(format!(
                "the device's trust metadata (version {}) expired at {}; it needs an update",
                self.trust.version, self.trust.expires_at
            )));
        }
        let v = aegis_ota::device::check(
            doc,
            &self.trust,
            &self.me,
            &self.policy,
            &self.state.replay,
            now,
            &self.keys(),
        )?;
        for m in &v.document.front.requires.models {
            let ok = self.models.iter().any(|(name, version, sha)| {
                name == &m.name
                    && *version >= m.version
                    && sha
                        .as_ref()
                        .is_some_and(|have| have.eq_ignore_ascii_case(&m.sha256))
            });
            if !ok {
                return Err(Rejection::Policy(format!(
                    "requires model {:?} version {} (sha256 {}) which this device does not have \
                     pinned in inference.models",
                    m.name, m.version, m.sha256
                )));
            }
        }
        if v.pipeline.is_none() {
            return Err(Rejection::Document(aegis_ota::maml::MamlError {
                line: None,
                message: "the workflow has no Pipeline section".into(),
            }));
        }
        Ok(v)
    }

    /// Makes `v` the active workflow on trial: its document is written, then `state.json`
    /// (the commit point) names it, with its sequence accepted.
    pub fn begin(&mut self, doc: &[u8], v: &Verified) -> anyhow::Result<()> {
        let path = self.doc_path(&v.digest);
        ctx(write_atomic(&path, doc), path.display())?;
        let mut next = self.state.clone();
        next.replay.accept(v);
        next.previous = next.active.take();
        next.active = Some(Entry {
            id: v.document.front.id.clone(),
            digest: v.digest.clone(),
            sequence: v.document.front.sequence,
            applied_at: rfc3339(now_s()),
        });
        next.trial = true;
        let old = std::mem::replace(&mut self.state, next);
        if let Err(e) = self.save() {
            self.state = old;
            return Err(e);
        }
        Ok(())
    }

    /// Records a refused but authenticated document's sequence, so that it cannot be
    /// replayed later (e.g. once a model it needs appears).
    pub fn consume_sequence(&mut self, v: &Verified) -> anyhow::Result<()> {
        self.state.replay.accept(v);
        self.save()
    }

    /// Raises the trusted-time floor to `t` (GPS time). Saved only when it moves by more
    /// than a minute (the floor guards against clocks set back by hours, not seconds).
    pub fn raise_time_floor(&mut self, t: i64) -> anyhow::Result<bool> {
        if t <= self.state.replay.time_floor_s + 60 {
            return Ok(false);
        }
        self.state.replay.time_floor_s = t;
        self.save()?;
        Ok(true)
    }

    /// The trial passed: the active workflow is kept.
    pub fn commit(&mut self) -> anyhow::Result<()> {
        self.state.trial = false;
        self.save()?;
        self.prune();
        Ok(())
    }

    /// The previous workflow (or the local default) becomes active again.
    pub fn rollback(&mut self) -> anyhow::Result<()> {
        self.state.active = self.state.previous.take();
        self.state.trial = false;
        self.save()?;
        self.prune();
        Ok(())
    }

    /// Deletes documents no entry names.
    fn prune(&self) {
        let keep: Vec<String> = [&self.state.active, &self.state.previous]
            .into_iter()
            .flatten()
            .map(|e| format!("{}.maml.md", e.digest))
            .collect();
        if let Ok(rd) = std::fs::read_dir(self.dir.join("docs")) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().to_string();
                if !keep.contains(&name) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }

    /// Takes newer root-signed trust metadata (from the fleet): verified against the roots
    /// the device holds, kept in the state directory.
    pub fn update_trust(&mut self, file: &[u8]) -> anyhow::Result<u64> {
        let meta = TrustMetadata::verify_update(
            file,
            &self.current_roots()?,
            self.current_threshold(),
            self.trust.version,
            now_s().max(self.state.replay.time_floor_s),
        )?;
        let path = self.dir.join("trust.json");
        ctx(write_atomic(&path, file), path.display())?;
        self.trust = meta;
        self.state.replay.trust_version = self.trust.version;
        self.save()?;
        Ok(self.trust.version)
    }

    fn current_roots(&self) -> anyhow::Result<Vec<PublicKey>> {
        if self.trust.version == 0 {
            return Ok(self.roots.clone());
        }
        ctx(
            aegis_ota::trust::keys_of(&self.trust.root.keys),
            "trust roots",
        )
    }

    fn current_threshold(&self) -> u32 {
        if self.trust.version == 0 {
            self.threshold
        } else {
            self.trust.root.threshold
        }
    }

    /// The signed `.mu` receipt for an authenticated document (`doc` as the device parsed
    /// it, `digest` of its signed bytes).
    pub fn receipt(
        &self,
        doc: &aegis_ota::maml::Document,
        digest: &str,
        o: &Outcome,
    ) -> anyhow::Result<String> {
        let r = Receipt {
            kind: "receipt".into(),
            device: self.me.id.clone(),
            workflow_id: doc.front.id.clone(),
            workflow_sha256: digest.to_string(),
            sequence: doc.front.sequence,
            verdict: o.verdict,
            reason: o.reason.clone(),
            trust_version: self.trust.version,
            at: rfc3339(now_s()),
            mode: o.mode.into(),
            apply_ms: Some(o.apply_ms),
            mirror: aegis_ota::receipt::mirror(doc),
        };
        Ok(r.render_signed(&self.sign_key)?)
    }

    /// The desired-state part of the retained status.
    pub fn status(&self) -> serde_json::Value {
        let entry = |e: &Option<Entry>| match e {
            Some(e) => {
                serde_json::json!({ "id": e.id, "digest": e.digest, "sequence": e.sequence, "applied_at": e.applied_at })
            }
            None => serde_json::Value::Null,
        };
        serde_json::json!({
            "active": entry(&self.state.active),
            "previous": entry(&self.state.previous),
            "trust_version": self.trust.version,
            "time_floor_s": self.state.replay.time_floor_s,
        })
    }
}
