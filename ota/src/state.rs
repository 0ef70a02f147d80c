//! The device's workflow state (DESIGN §5, "Agent side"): trust, identity, policy, keys, and
//! the persisted record of which signed workflow runs. The agent's applier drives it; this
//! module never touches a pipeline.
//!
//! On disk, in `workflows.state_dir` (0700, off the A/B firmware slots; every file 0600 and
//! written whole: temp file, fsync, rename, directory fsync):
//!
//! ```text
//! state.json                    anti-replay state (with the highest trust version ever held
//!                               and its roots), active/previous/trial entries, the digests
//!                               answered already (the commit point)
//! docs/<sha256>.maml.md         the signed documents the entries name, as received
//! trust.json                    trust metadata newer than the provisioned one
//! ```
//!
//! Apply is a two-step commit. [`Workflows::begin`] writes the document and then
//! `state.json` naming it as active *on trial*, with its sequence accepted; after the health
//! check [`Workflows::commit`] clears the trial mark or [`Workflows::rollback`] makes the
//! previous workflow active again. `state.json` is the only commit point, replaced
//! atomically, so a crash at any moment leaves either the old state or the new one. A trial
//! found at start-up (the agent died before the verdict) is rolled back: the device only
//! keeps a workflow that passed its health check.
//!
//! Trust is monotonic: `state.json` records the highest trust metadata version ever held and
//! its root keys. If the copy of that version (`trust.json`) is unreadable or damaged, the
//! device never falls back to older metadata (revoked keys would come back): it refuses every
//! new workflow, stops running a workflow it can no longer check, says "trust lost" in its
//! status, and recovers when that version (or a newer one signed by its roots) arrives again.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use aegis_config::{AgentConfig, PipelineConfig};
use serde::{Deserialize, Serialize};

use crate::device::{Identity, Policy, ReplayState};
use crate::maml::{format_time as rfc3339, now_s};
use crate::receipt::{Receipt, Verdict};
use crate::seal::SealSecret;
use crate::sign::{PublicKey, SecretKey};
use crate::trust::{TrustError, TrustMetadata};
use crate::{Authenticated, Refusal, Rejection, Verified};

/// Digests remembered as answered (persisted): a redelivered document — a retained message
/// after a reconnect or a restart — gets no second receipt.
pub const ANSWERED: usize = 256;

/// Least time between two re-sends of one document's receipt ([`AnswerAgain`]).
pub const ANSWER_AGAIN_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// When a document answered already is *asked* again — published to the device live, not
/// a retained copy redelivered on (re)subscribe — the device sends the receipt it signed
/// then once more: the same bytes, no new signature, no flash write. That is how a fleet
/// service recovers a receipt lost on the way (a gateway replica that died with it in
/// flight). At most once per [`ANSWER_AGAIN_INTERVAL`] per document, so replaying captured
/// documents costs the device nothing but a bounded number of publishes. In memory only:
/// the first ask after a restart is answered.
#[derive(Debug, Default)]
pub struct AnswerAgain {
    last: std::collections::HashMap<String, std::time::Instant>,
}

impl AnswerAgain {
    /// Whether `digest`'s receipt may go out again now (and counts it if so).
    pub fn due(&mut self, digest: &str) -> bool {
        let now = std::time::Instant::now();
        if self
            .last
            .get(digest)
            .is_some_and(|t| now.duration_since(*t) < ANSWER_AGAIN_INTERVAL)
        {
            return false;
        }
        if self.last.len() >= ANSWERED {
            self.last
                .retain(|_, t| now.duration_since(*t) < ANSWER_AGAIN_INTERVAL);
        }
        if self.last.len() >= ANSWERED {
            return false;
        }
        self.last.insert(digest.to_string(), now);
        true
    }

    /// Forgets `digest`'s last re-send (it found nothing to send): the next ask is due.
    pub fn forget(&mut self, digest: &str) {
        self.last.remove(digest);
    }
}

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
    /// Its `issued_at` (seconds); absent in state written by older agents.
    #[serde(default)]
    pub issued_at_s: Option<i64>,
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Anti-replay counters, time floor, the highest trust version and its roots.
    pub replay: ReplayState,
    /// The workflow that runs (None: the local default pipeline).
    pub active: Option<Entry>,
    /// The one before (the rollback target).
    pub previous: Option<Entry>,
    /// Set while `active` is on trial (applied, health not yet confirmed).
    pub trial: bool,
    /// Digests of authenticated documents answered with a receipt, newest last.
    #[serde(default)]
    pub answered: VecDeque<String>,
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

/// What a trust metadata file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustUpdate {
    /// A newer version (or, while trust was lost, the held version again) is installed.
    Installed {
        /// Its version.
        version: u64,
        /// SHA-256 of the file's signed bytes.
        digest: String,
    },
    /// The version held already (a retained copy after a reconnect).
    Duplicate(u64),
}

/// What a receipt may name.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A document that passed every check.
    Verified(&'a Verified),
    /// A document refused after its signature verified against valid trust.
    Authenticated(&'a Authenticated),
}

/// A workflow that stopped running because it no longer passes its checks (its issuer was
/// revoked, the policy changed). Its receipt names the entry the device recorded when it
/// accepted the document, and carries no mirror: the stored document no longer verifies,
/// so the device says nothing about its content.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Stopped {
    /// Its entry.
    pub entry: Entry,
    /// Why it no longer passes.
    pub reason: String,
}

/// The workflow that should run: the verified document and its pipeline.
pub type Active = (Verified, PipelineConfig);

/// How the trust metadata stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustHealth {
    /// Valid now.
    Valid,
    /// Expired: no new workflow until an update arrives.
    Expired,
    /// The newest version this device held is not available: no workflow at all.
    Lost,
}

impl TrustHealth {
    /// The word status reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TrustHealth::Valid => "valid",
            TrustHealth::Expired => "expired",
            TrustHealth::Lost => "lost",
        }
    }
}

/// The device's workflow side.
pub struct Workflows {
    dir: PathBuf,
    me: Identity,
    policy: Policy,
    roots: Vec<PublicKey>,
    threshold: u32,
    trust: TrustMetadata,
    /// Set when the trust held is older than the newest version this device ever held.
    trust_lost: Option<String>,
    sign_key: SecretKey,
    seal_keys: Vec<SealSecret>,
    state: State,
    /// Required models must be among these (name, version, sha256).
    models: Vec<(String, u32, Option<String>)>,
    /// Models installed over the air (same shape).
    installed_models: Vec<(String, u32, Option<String>)>,
}

/// Why the workflow state could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A file of the state, or one the configuration names (keys, trust), cannot be used;
    /// `what` names it.
    #[error("{what}: {source}")]
    File {
        /// The file (and, where it helps, what to do about it).
        what: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Offered trust metadata is older than the newest version this device has held.
    #[error(
        "trust metadata version {offered} is older than version {held}, the newest \
         this device has held (rollback refused)"
    )]
    TrustRollback {
        /// The version offered.
        offered: u64,
        /// The newest version held.
        held: u64,
    },
    /// Offered trust metadata does not verify.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// A receipt could not be signed.
    #[error("signing a receipt: {0}")]
    Sign(#[from] crate::sign::SignError),
}

/// Why a stored workflow no longer passes its checks (it stops; the reason goes into its
/// `revoked` receipt).
#[derive(Debug, thiserror::Error)]
pub enum RecheckError {
    /// Trust is lost: nothing can be checked.
    #[error("trust: {0}")]
    TrustLost(String),
    /// The stored document cannot be read.
    #[error("{0}")]
    Read(#[from] std::io::Error),
    /// The document fails a check now (a revoked issuer, a changed policy...).
    #[error("{0}")]
    Refused(Box<Refusal>),
    /// The stored document is not the one the entry names.
    #[error("the stored document does not match its digest")]
    DigestMismatch,
}

fn ctx<T, E: std::error::Error + Send + Sync + 'static>(
    r: Result<T, E>,
    what: impl std::fmt::Display,
) -> Result<T, StateError> {
    r.map_err(|e| StateError::File {
        what: what.to_string(),
        source: Box::new(e),
    })
}

impl Workflows {
    /// Opens the workflow side of `cfg`: keys, trust metadata (the provisioned file, or the
    /// newer one kept in the state directory), policy and state. An interrupted trial is
    /// rolled back here, and state written by an older agent learns its trust anchor.
    pub fn open(cfg: &AgentConfig) -> Result<Workflows, StateError> {
        let mut me = Self::load(cfg)?;
        let mut learnt = false;
        if let Some(lost) = &me.trust_lost {
            tracing::error!(problem = %lost, "trust lost: every workflow is refused until the trust metadata is delivered again");
        } else if me.state.replay.trust_roots.is_empty()
            || me.state.replay.trust_version < me.trust.version
        {
            me.state.replay.hold_trust(&me.trust);
            learnt = true;
        }
        if me.backfill_issued() || learnt {
            me.save()?;
        }
        if me.state.trial {
            tracing::warn!(workflow = ?me.state.active.as_ref().map(|e| &e.id),
                "the agent stopped while a workflow was on trial: rolling back to the previous one");
            me.rollback()?;
        }
        Ok(me)
    }

    /// State written by an older agent has no `issued_at` for its entries and no per-issuer
    /// order: learn them from the stored documents (they verified when they were accepted;
    /// the digest in the entry must still match), so the freshness rules hold from the first
    /// start after an upgrade. True when something was learnt.
    fn backfill_issued(&mut self) -> bool {
        let mut changed = false;
        let docs = self.dir.join("docs");
        let State {
            replay,
            active,
            previous,
            ..
        } = &mut self.state;
        for e in [active.as_mut(), previous.as_mut()].into_iter().flatten() {
            if e.issued_at_s.is_some() {
                continue;
            }
            let Ok(doc) = std::fs::read(docs.join(format!("{}.maml.md", e.digest))) else {
                continue;
            };
            let Ok((signed, block)) = crate::maml::split_signed(&doc) else {
                continue;
            };
            if crate::sha256_hex(&signed) != e.digest {
                continue;
            }
            let Some(t) = crate::maml::parse(&signed)
                .ok()
                .and_then(|d| crate::maml::parse_time(&d.front.issued_at))
            else {
                continue;
            };
            e.issued_at_s = Some(t);
            replay.note_issued(&block.key, t);
            changed = true;
        }
        let active_issued = active.as_ref().and_then(|e| e.issued_at_s);
        if replay.active_issued_s != active_issued {
            replay.active_issued_s = active_issued;
            changed = true;
        }
        changed
    }

    /// What the device holds, without changing anything (`aegis workflow status`): the
    /// state, the trust version, and whether the active workflow passes its checks now.
    pub fn inspect(cfg: &AgentConfig) -> Result<serde_json::Value, StateError> {
        let me = Self::load(cfg)?;
        let active_check = me.state.active.as_ref().map(|a| me.recheck(a).map(|_| ()));
        let mut v = serde_json::json!({
            "state": me.state,
            "trust_version": me.trust.version,
            "device_key": me.sign_key.public().id(),
            "active_verifies": active_check.as_ref().map(|r| r.is_ok()),
            "active_error": active_check.and_then(|r| r.err()).map(|e| e.to_string()),
        });
        v["trust"] = me.trust_status();
        Ok(v)
    }

    fn load(cfg: &AgentConfig) -> Result<Workflows, StateError> {
        let w = &cfg.workflows;
        let dir = w.state_dir.clone();
        ctx(crate::fsutil::private_dir(&dir), dir.display())?;
        ctx(
            crate::fsutil::private_dir(&dir.join("docs")),
            dir.join("docs").display(),
        )?;
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
            .collect::<Result<Vec<_>, StateError>>()?;
        let provisioned = ctx(
            std::fs::read(&w.trust.metadata),
            format!("workflows.trust.metadata: {}", w.trust.metadata.display()),
        )?;
        // Validity is checked against the roots; expiry is judged per document (an expired
        // trust set stops *new* workflows, never the running one).
        let provisioned = ctx(
            TrustMetadata::verify_update(&provisioned, &roots, w.trust.threshold, 0, i64::MIN),
            format!("workflows.trust.metadata: {}", w.trust.metadata.display()),
        )?;
        let state_file = dir.join("state.json");
        // A damaged state file is not a fresh device: the anti-replay state would be lost.
        let state: State = match std::fs::read(&state_file) {
            Ok(b) => ctx(
                serde_json::from_slice(&b),
                format!(
                    "{} (the anti-replay state; restore it or re-provision the device)",
                    state_file.display()
                ),
            )?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => {
                return Err(StateError::File {
                    what: state_file.display().to_string(),
                    source: Box::new(e),
                });
            }
        };
        let (trust, trust_lost) = choose_trust(&dir, provisioned, &state.replay);
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
                if crate::seal::is_secret_key_file(n) {
                    seal_keys.push(ctx(SealSecret::read(&p), p.display())?);
                }
            }
        }
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
            policy: Policy {
                protected: {
                    let store = cfg.store.path.clone();
                    let with = |suffix: &str| {
                        let mut s = store.clone().into_os_string();
                        s.push(suffix);
                        PathBuf::from(s)
                    };
                    vec![
                        w.state_dir.clone(),
                        w.keys_dir.clone(),
                        cfg.token_path(),
                        with(""),
                        with("-wal"),
                        with("-shm"),
                    ]
                },
                ..Policy::from(&w.policy)
            },
            roots,
            threshold: w.trust.threshold,
            trust,
            trust_lost,
            sign_key,
            seal_keys,
            state,
            models,
            installed_models: Vec::new(),
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

    /// Whether the trust metadata can vouch for new workflows now.
    pub fn trust_health(&self) -> TrustHealth {
        if self.trust_lost.is_some() {
            TrustHealth::Lost
        } else if crate::device::trust_expired(&self.trust, self.trusted_now()).is_some() {
            TrustHealth::Expired
        } else {
            TrustHealth::Valid
        }
    }

    fn trusted_now(&self) -> i64 {
        now_s().max(self.state.replay.time_floor_s)
    }

    /// What the model delivery checks a signed manifest or rollback order against: the
    /// trust metadata held (None while trust is lost: nothing may be accepted), who this
    /// device is, trusted time (the clock, raised to the time floor) and the clock skew
    /// the policy tolerates.
    pub fn model_checks(&self) -> Option<(&TrustMetadata, &Identity, i64, i64)> {
        self.trust_lost.is_none().then(|| {
            (
                &self.trust,
                &self.me,
                self.trusted_now(),
                self.policy.max_clock_skew_s,
            )
        })
    }

    /// Signs a model receipt with the device key (its `device`, `trust_version` and `at`
    /// are filled in here).
    pub fn model_receipt(
        &self,
        mut r: crate::model_wire::ModelReceipt,
    ) -> Result<String, StateError> {
        r.device = self.me.id.clone();
        r.trust_version = self.trust.version;
        r.at = rfc3339(now_s());
        Ok(r.render_signed(&self.sign_key)?)
    }

    /// Signs a firmware receipt with the device key (its `device`, `trust_version` and
    /// `at` are filled in here).
    pub fn firmware_receipt(
        &self,
        mut r: crate::firmware::FirmwareReceipt,
    ) -> Result<String, StateError> {
        r.device = self.me.id.clone();
        r.trust_version = self.trust.version;
        r.at = rfc3339(now_s());
        Ok(r.render_signed(&self.sign_key)?)
    }

    /// The policy's largest accepted step of a sequence (firmware orders use the
    /// workflows' rule).
    pub fn max_sequence_jump(&self) -> u64 {
        self.policy.max_sequence_jump
    }

    /// The models installed over the air now (name, version, SHA-256 of the model file):
    /// they count for workflows' `requires.models` like those in the configuration.
    pub fn set_installed_models(&mut self, models: Vec<(String, u32, String)>) {
        self.installed_models = models
            .into_iter()
            .map(|(n, v, sha)| (n, v, Some(sha)))
            .collect();
    }

    /// The device's public signing key (receipts verify with it).
    pub fn device_key(&self) -> &PublicKey {
        self.sign_key.public()
    }

    fn doc_path(&self, digest: &str) -> PathBuf {
        self.dir.join("docs").join(format!("{digest}.maml.md"))
    }

    fn save(&self) -> Result<(), StateError> {
        let path = self.dir.join("state.json");
        ctx(
            serde_json::to_vec_pretty(&self.state)
                .map_err(std::io::Error::other)
                .and_then(|b| crate::fsutil::write_atomic(&path, &b)),
            path.display(),
        )
    }

    fn keys(&self) -> Vec<&SealSecret> {
        self.seal_keys.iter().collect()
    }

    /// The stored document of `entry`, checked again against the current trust and policy.
    fn recheck(&self, entry: &Entry) -> Result<Verified, RecheckError> {
        if let Some(lost) = &self.trust_lost {
            return Err(RecheckError::TrustLost(lost.clone()));
        }
        let doc = std::fs::read(self.doc_path(&entry.digest))?;
        let v = crate::device::recheck(
            &doc,
            &self.trust,
            &self.me,
            &self.policy,
            &self.state.replay,
            &self.keys(),
        )
        .map_err(|e| RecheckError::Refused(Box::new(e)))?;
        if v.digest != entry.digest {
            return Err(RecheckError::DigestMismatch);
        }
        Ok(v)
    }

    /// The active workflow's pipeline, checked again (signature, current trust — so a
    /// revoked issuer's workflow stops — target, policy). When it no longer passes, the
    /// previous one is tried, then the local default (`None`); what stopped is returned so
    /// the caller can report it. While trust is lost nothing is checked or changed: the
    /// local default runs until trust is back.
    pub fn active_pipeline(&mut self) -> Result<(Option<Active>, Vec<Stopped>), StateError> {
        let mut stopped = Vec::new();
        if self.trust_lost.is_some() {
            return Ok((None, stopped));
        }
        for _ in 0..2 {
            let Some(active) = self.state.active.clone() else {
                return Ok((None, stopped));
            };
            match self.recheck(&active) {
                Ok(v) => {
                    let p = v.pipeline.clone();
                    return Ok((p.map(|p| (v, p)), stopped));
                }
                Err(e) => {
                    tracing::error!(workflow = %active.id, error = %e,
                        "the active workflow no longer passes its checks; falling back");
                    stopped.push(Stopped {
                        entry: active,
                        reason: e.to_string(),
                    });
                }
            }
            self.rollback()?;
        }
        Ok((None, stopped))
    }

    /// Every check of DESIGN §5 against the current state (nothing changes). Requirements
    /// (models) are checked here too.
    pub fn verify(&self, doc: &[u8]) -> Result<Verified, Refusal> {
        if let Some(lost) = &self.trust_lost {
            return Err(Refusal::unauthenticated(Rejection::Trust(lost.clone())));
        }
        let v = crate::device::check(
            doc,
            &self.trust,
            &self.me,
            &self.policy,
            &self.state.replay,
            now_s(),
            &self.keys(),
        )?;
        let refuse = |rejection: Rejection| Refusal {
            rejection,
            authenticated: Some(Box::new(v.transmitted())),
        };
        for m in &v.document.front.requires.models {
            let ok =
                self.models
                    .iter()
                    .chain(&self.installed_models)
                    .any(|(name, version, sha)| {
                        name == &m.name
                            && *version >= m.version
                            && sha
                                .as_ref()
                                .is_some_and(|have| have.eq_ignore_ascii_case(&m.sha256))
                    });
            if !ok {
                return Err(refuse(Rejection::Policy(
                    crate::device::PolicyError::ModelNotPinned {
                        name: m.name.clone(),
                        version: m.version,
                        sha256: m.sha256.clone(),
                    },
                )));
            }
        }
        if v.pipeline.is_none() {
            return Err(refuse(Rejection::Document(crate::maml::MamlError {
                line: None,
                message: "the workflow has no Pipeline section".into(),
            })));
        }
        Ok(v)
    }

    /// Makes `v` the active workflow on trial: its document is written, then `state.json`
    /// (the commit point) names it, with its sequence accepted.
    pub fn begin(&mut self, doc: &[u8], v: &Verified) -> Result<(), StateError> {
        let path = self.doc_path(&v.digest);
        ctx(crate::fsutil::write_atomic(&path, doc), path.display())?;
        let issued = crate::maml::parse_time(&v.document.front.issued_at);
        let mut next = self.state.clone();
        next.replay.accept(v);
        next.replay.active_issued_s = issued;
        next.previous = next.active.take();
        next.active = Some(Entry {
            id: v.document.front.id.clone(),
            digest: v.digest.clone(),
            sequence: v.document.front.sequence,
            applied_at: rfc3339(now_s()),
            issued_at_s: issued,
        });
        next.trial = true;
        let old = std::mem::replace(&mut self.state, next);
        if let Err(e) = self.save() {
            self.state = old;
            return Err(e);
        }
        Ok(())
    }

    /// Records a refused but verified document's sequence, so that it cannot be replayed
    /// later (e.g. once a model it needs appears).
    pub fn consume_sequence(&mut self, v: &Verified) -> Result<(), StateError> {
        self.state.replay.accept(v);
        self.save()
    }

    /// Whether a receipt was sent for `digest` already (persisted across restarts).
    pub fn answered(&self, digest: &str) -> bool {
        self.state.answered.iter().any(|d| d == digest)
    }

    /// Remembers that `digest` was answered (persisted before the receipt goes out).
    pub fn record_answer(&mut self, digest: &str) -> Result<(), StateError> {
        if self.answered(digest) {
            return Ok(());
        }
        if self.state.answered.len() >= ANSWERED {
            self.state.answered.pop_front();
        }
        self.state.answered.push_back(digest.to_string());
        self.save()
    }

    /// Raises the trusted-time floor to `t` (GPS time). Saved only when it moves by more
    /// than a minute (the floor guards against clocks set back by hours, not seconds).
    ///
    /// GPS can be spoofed (a UDP NMEA feed, a transmitter nearby): a floor pushed years ahead
    /// would make every document and the trust metadata look expired, for good. So GPS never
    /// raises the floor to or past the held trust metadata's expiry, and when the system
    /// clock is kept synchronised (NTP, chrony, timesyncd: the kernel's `STA_UNSYNC` is
    /// clear) not past that clock plus `max_clock_skew_s` either. GPS matters when the
    /// clock is *not* synchronised (a dead RTC, no network) and was set back.
    pub fn raise_time_floor(&mut self, t: i64) -> Result<bool, StateError> {
        let mut cap = crate::maml::parse_time(&self.trust.expires_at)
            .map_or(i64::MAX, |e| e.saturating_sub(1));
        if clock_synchronized() {
            cap = cap.min(now_s().saturating_add(self.policy.max_clock_skew_s));
        }
        let t = t.min(cap);
        if t <= self.state.replay.time_floor_s.saturating_add(60) {
            return Ok(false);
        }
        self.state.replay.time_floor_s = t;
        self.save()?;
        Ok(true)
    }

    /// The trial passed: the active workflow is kept.
    pub fn commit(&mut self) -> Result<(), StateError> {
        self.state.trial = false;
        self.save()?;
        self.prune();
        Ok(())
    }

    /// The previous workflow (or the local default) becomes active again.
    pub fn rollback(&mut self) -> Result<(), StateError> {
        self.state.active = self.state.previous.take();
        self.state.replay.active_issued_s = self.state.active.as_ref().and_then(|e| e.issued_at_s);
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

    /// Takes root-signed trust metadata (from the fleet). It must be signed by a threshold
    /// of the roots of the highest version this device ever held, be newer than that version
    /// (or, while trust is lost, that version again), and not be expired. Kept in the state
    /// directory; the new version and its roots are recorded in `state.json`.
    pub fn update_trust(&mut self, file: &[u8]) -> Result<TrustUpdate, StateError> {
        let (roots, threshold) = self.anchor()?;
        let held = self.state.replay.trust_version.max(self.trust.version);
        let floor = match self.trust_lost {
            Some(_) => held.saturating_sub(1),
            None => held,
        };
        let meta = match TrustMetadata::verify_update(
            file,
            &roots,
            threshold,
            floor,
            self.trusted_now(),
        ) {
            Ok(m) => m,
            Err(TrustError::Rollback { offered, .. })
                if self.trust_lost.is_none() && offered == self.trust.version =>
            {
                return Ok(TrustUpdate::Duplicate(offered));
            }
            Err(TrustError::Rollback { offered, .. }) => {
                return Err(StateError::TrustRollback { offered, held });
            }
            Err(e) => return Err(e.into()),
        };
        let path = self.dir.join("trust.json");
        ctx(crate::fsutil::write_atomic(&path, file), path.display())?;
        let version = meta.version;
        self.trust = meta;
        self.trust_lost = None;
        self.state.replay.hold_trust(&self.trust);
        self.save()?;
        let (signed, _) = crate::trust::split(file)?;
        Ok(TrustUpdate::Installed {
            version,
            digest: crate::sha256_hex(&signed),
        })
    }

    /// The roots (and threshold) a trust update must be signed by: those of the highest
    /// version held, as recorded in `state.json`; for state written by older agents, those
    /// of the metadata held (or the configured roots before any metadata).
    fn anchor(&self) -> Result<(Vec<PublicKey>, u32), StateError> {
        let r = &self.state.replay;
        if !r.trust_roots.is_empty() {
            return Ok((
                ctx(
                    crate::trust::keys_of(&r.trust_roots),
                    "state.json trust roots",
                )?,
                r.trust_threshold,
            ));
        }
        if self.trust.version == 0 {
            return Ok((self.roots.clone(), self.threshold));
        }
        Ok((
            ctx(crate::trust::keys_of(&self.trust.root.keys), "trust roots")?,
            self.trust.root.threshold,
        ))
    }

    /// The signed `.mu` receipt for a document the device verified: only a [`Verified`] or
    /// an [`Authenticated`] refusal (both made by the checks alone) can be named. Secrets
    /// are redacted from the reason; a sealed document's mirror covers its sections as
    /// transmitted (the ciphertext), never the opened cleartext.
    pub fn receipt(&self, subject: Subject<'_>, o: &Outcome) -> Result<String, StateError> {
        let (doc, digest, mirror, sealed) = match subject {
            Subject::Verified(v) => (&v.document, &v.digest, v.mirror.clone(), v.sealed()),
            Subject::Authenticated(a) => (&a.document, &a.digest, a.mirror.clone(), a.sealed()),
        };
        let reason = if sealed && !o.reason.is_empty() {
            // Refusal details may quote sealed values (a host name): the receipt names the
            // failed check only; the audit log on the device keeps the rest.
            let class = o.reason.split(':').next().unwrap_or("refused");
            format!("{class}: details withheld for a sealed document (see the device's audit log)")
        } else {
            crate::receipt::redact(&o.reason)
        };
        let r = Receipt {
            kind: "receipt".into(),
            device: self.me.id.clone(),
            workflow_id: doc.front.id.clone(),
            workflow_sha256: digest.to_string(),
            sequence: doc.front.sequence,
            verdict: o.verdict,
            reason,
            trust_version: self.trust.version,
            at: rfc3339(now_s()),
            mode: o.mode.into(),
            apply_ms: Some(o.apply_ms),
            mirror,
        };
        Ok(r.render_signed(&self.sign_key)?)
    }

    /// The signed receipt for a workflow that stopped (`verdict: revoked`).
    pub fn stopped_receipt(&self, s: &Stopped) -> Result<String, StateError> {
        let r = Receipt {
            kind: "receipt".into(),
            device: self.me.id.clone(),
            workflow_id: s.entry.id.clone(),
            workflow_sha256: s.entry.digest.clone(),
            sequence: s.entry.sequence,
            verdict: Verdict::Revoked,
            reason: crate::receipt::redact(&s.reason),
            trust_version: self.trust.version,
            at: rfc3339(now_s()),
            mode: "none".into(),
            apply_ms: None,
            mirror: Vec::new(),
        };
        Ok(r.render_signed(&self.sign_key)?)
    }

    /// The signed acknowledgement of installed trust metadata (`mode: trust`,
    /// `workflow_id: trust-metadata:vN`, the digest of the file's signed bytes): only for a
    /// file that verified against the device's roots.
    pub fn trust_receipt(&self, version: u64, digest: &str) -> Result<String, StateError> {
        let r = Receipt {
            kind: "receipt".into(),
            device: self.me.id.clone(),
            workflow_id: format!("trust-metadata:v{version}"),
            workflow_sha256: digest.to_string(),
            sequence: version,
            verdict: Verdict::Applied,
            reason: String::new(),
            trust_version: self.trust.version,
            at: rfc3339(now_s()),
            mode: "trust".into(),
            apply_ms: None,
            mirror: Vec::new(),
        };
        Ok(r.render_signed(&self.sign_key)?)
    }

    fn trust_status(&self) -> serde_json::Value {
        let health = self.trust_health();
        let problem = match health {
            TrustHealth::Lost => self.trust_lost.clone(),
            TrustHealth::Expired => crate::device::trust_expired(&self.trust, self.trusted_now()),
            TrustHealth::Valid => None,
        };
        serde_json::json!({
            "version": self.trust.version,
            "highest_version_held": self.state.replay.trust_version.max(self.trust.version),
            "expires_at": self.trust.expires_at,
            "state": health.as_str(),
            "problem": problem,
        })
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
            "trust": self.trust_status(),
            "time_floor_s": self.state.replay.time_floor_s,
        })
    }
}

/// Whether the kernel says the system clock is synchronised (`adjtimex`: not
/// `TIME_ERROR`, `STA_UNSYNC` clear).
pub fn clock_synchronized() -> bool {
    // SAFETY: adjtimex with `modes == 0` only reads the kernel's clock state into the
    // zeroed struct we own; it has no other effect.
    let (state, status) = unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut t);
        (state, t.status)
    };
    state >= 0 && state != libc::TIME_ERROR && status & libc::STA_UNSYNC == 0
}

/// The trust metadata to use: the newest valid one of the provisioned file and the kept
/// copy, and — when that is older than the newest version this device ever held — why
/// trust is lost (fail closed: never an older version).
fn choose_trust(
    dir: &Path,
    provisioned: TrustMetadata,
    replay: &ReplayState,
) -> (TrustMetadata, Option<String>) {
    let held = replay.trust_version;
    let path = dir.join("trust.json");
    let kept = match std::fs::read(&path) {
        Ok(bytes) => verify_kept(&bytes, &provisioned, replay)
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(format!("{} is missing", path.display()))
        }
        Err(e) => Err(format!("{}: {e}", path.display())),
    };
    let (best, kept_error) = match kept {
        Ok(k) if k.version > provisioned.version => (k, None),
        Ok(_) => (provisioned, None),
        Err(e) => (provisioned, Some(e)),
    };
    if best.version >= held {
        return (best, None);
    }
    let why = format!(
        "this device has held trust metadata version {held}, but only version {} is available \
         ({}); it refuses every workflow until version {held} or newer is delivered again",
        best.version,
        kept_error.unwrap_or_else(|| "the kept copy is older".into())
    );
    (best, Some(why))
}

/// The kept trust file, verified against the roots recorded with the highest version held
/// (a copy of that version, or a newer one signed by its roots and written just before a
/// crash); for state written by older agents, against the provisioned roots.
fn verify_kept(
    bytes: &[u8],
    provisioned: &TrustMetadata,
    replay: &ReplayState,
) -> Result<TrustMetadata, String> {
    if replay.trust_roots.is_empty() {
        let keys = crate::trust::keys_of(&provisioned.root.keys).map_err(|e| e.to_string())?;
        return TrustMetadata::verify_update(
            bytes,
            &keys,
            provisioned.root.threshold,
            provisioned.version,
            i64::MIN,
        )
        .map_err(|e| e.to_string());
    }
    let keys = crate::trust::keys_of(&replay.trust_roots).map_err(|e| e.to_string())?;
    TrustMetadata::verify_update(
        bytes,
        &keys,
        replay.trust_threshold,
        replay.trust_version.saturating_sub(1),
        i64::MIN,
    )
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_goes_out_again_once_per_interval_per_document_and_the_map_is_bounded() {
        let mut again = AnswerAgain::default();
        assert!(again.due("a"), "the first ask is answered");
        assert!(!again.due("a"), "a second ask within the interval is not");
        assert!(again.due("b"), "another document has its own interval");
        // Flooding with distinct digests fills the map up to ANSWERED, then refuses
        // (nothing in it has aged out), and never grows past it.
        let answered = (0..ANSWERED * 2)
            .filter(|i| again.due(&format!("d{i}")))
            .count();
        assert_eq!(answered, ANSWERED - 2);
        assert_eq!(again.last.len(), ANSWERED);
        // An entry that aged out is answered again and frees its place.
        let old = std::time::Instant::now() - ANSWER_AGAIN_INTERVAL;
        again.last.insert("a".into(), old);
        assert!(again.due("a"));
        again.last.values_mut().for_each(|t| *t = old);
        assert!(
            again.due("new"),
            "aged entries are dropped when the map is full"
        );
        assert_eq!(again.last.len(), 1);
    }
}
