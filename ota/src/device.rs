//! The device's side of a workflow: every check of DESIGN §5 in order, against the trust
//! metadata it holds, its identity, its policy and its persisted anti-replay state.
//!
//! size → signature block (text scan) → key lookup (issuer, not revoked) → signature →
//! YAML → target (this device or one of its groups, and the issuer may target them) →
//! issued/expires against trusted time (never earlier than the persisted floor) → sequence
//! (strictly increasing per issuer key and target, no jump beyond the window) → policy
//! (algorithm, sealing, source hosts, sink paths, models) → pipeline schema.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::maml::{self, MamlError};
use crate::sign::{Purpose, SignError};
use crate::trust::TrustMetadata;
use crate::{Rejection, Verified};

/// Who this device is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Device id.
    pub id: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// What this device lets a workflow do (local config, not the document).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Accepted signature algorithms.
    pub algorithms: Vec<String>,
    /// Refuse unsealed documents.
    pub require_sealing: bool,
    /// Hosts a source URL may name (`*` = any); `file:` sources are sink-path-checked.
    pub source_hosts: Vec<String>,
    /// Directories sinks (and file sources) may use.
    pub paths: Vec<PathBuf>,
    /// Model names a workflow may require (`*` = any).
    pub models: Vec<String>,
    /// Largest accepted step of the sequence number (fast-forward guard).
    pub max_sequence_jump: u64,
    /// Clock skew tolerated for `issued_at` in the future, seconds.
    pub max_clock_skew_s: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            algorithms: vec![crate::sign::ALG.into()],
            require_sealing: false,
            source_hosts: Vec::new(),
            paths: vec![PathBuf::from("/var/lib/aegis")],
            models: vec!["*".into()],
            max_sequence_jump: 1000,
            max_clock_skew_s: 300,
        }
    }
}

impl From<&aegis_config::WorkflowPolicy> for Policy {
    fn from(p: &aegis_config::WorkflowPolicy) -> Policy {
        Policy {
            algorithms: p.algorithms.clone(),
            require_sealing: p.require_sealing,
            source_hosts: p.source_hosts.clone(),
            paths: p.paths.clone(),
            models: p.models.clone(),
            max_sequence_jump: p.max_sequence_jump,
            max_clock_skew_s: i64::from(p.max_clock_skew_s),
        }
    }
}

/// Persisted anti-replay state (kept off the A/B firmware slots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayState {
    /// Trust metadata version held.
    pub trust_version: u64,
    /// Trusted time never goes below this (seconds since the epoch).
    pub time_floor_s: i64,
    /// Last accepted sequence per "issuer key id|target".
    pub sequences: BTreeMap<String, u64>,
}

impl ReplayState {
    /// Loads the state; a missing file is a fresh device.
    pub fn load(path: &Path) -> Result<ReplayState, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ReplayState::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Saves atomically: temp file, fsync, rename, fsync of the directory.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        f.write_all(&serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?)
            .map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(err)?;
        }
        Ok(())
    }

    /// Records an accepted workflow (sequence, time floor).
    pub fn accept(&mut self, v: &Verified) {
        let f = &v.document.front;
        self.sequences
            .insert(replay_key(v.signer.id(), &f.target), f.sequence);
        if let Some(t) = maml::parse_time(&f.issued_at) {
            self.time_floor_s = self.time_floor_s.max(t);
        }
    }
}

fn replay_key(key: &str, t: &maml::Target) -> String {
    let mut d = t.devices.clone();
    d.sort();
    let mut g = t.groups.clone();
    g.sort();
    format!("{key}|d:{}|g:{}", d.join(","), g.join(","))
}

fn allowed(list: &[String], item: &str) -> bool {
    list.iter().any(|a| a == "*" || a == item)
}

/// Host of a source URL (`rtsp://user:pw@host:554/x` → `host`).
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    })
}

fn under(path: &Path, roots: &[PathBuf]) -> bool {
    // Lexical check; `..` is refused outright so a path cannot climb out of its root.
    !path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        && roots.iter().any(|r| path.starts_with(r))
}

fn policy_check(v: &Verified, policy: &Policy) -> Result<(), String> {
    let f = &v.document.front;
    for m in &f.requires.models {
        if !allowed(&policy.models, &m.name) {
            return Err(format!(
                "model {:?} is not allowed by device policy",
                m.name
            ));
        }
    }
    if let Some(p) = &v.pipeline {
        for (i, s) in p.sources.iter().enumerate() {
            match s.location() {
                aegis_config::SourceLocation::File(path) => {
                    if !under(&path, &policy.paths) {
                        return Err(format!(
                            "sources[{i}]: file {} is outside the allowed paths",
                            path.display()
                        ));
                    }
                }
                aegis_config::SourceLocation::V4l2(dev) => {
                    if !allowed(&policy.source_hosts, "v4l2") {
                        return Err(format!(
                            "sources[{i}]: camera device {} is not allowed by device policy",
                            dev.display()
                        ));
                    }
                }
                _ => {
                    let host = url_host(&s.url).unwrap_or("");
                    if !allowed(&policy.source_hosts, host) {
                        return Err(format!(
                            "sources[{i}]: host {host:?} is not in the device's source allow-list"
                        ));
                    }
                }
            }
            if s.password.is_some() && f.security.encryption == "none" {
                return Err(format!(
                    "sources[{i}]: a camera password may only travel in a sealed document"
                ));
            }
        }
        for (i, s) in p.stages.iter().enumerate() {
            use aegis_config::StageConfig as S;
            let (model, image) = match s {
                S::VirtualBackground(v) => (Some(&v.model), v.image.as_ref()),
                S::Moderate(m) => (Some(&m.model), None),
                S::Detect(d) => (Some(&d.model), None),
                S::Passthrough(_) | S::TimestampOverlay(_) => (None, None),
            };
            if let Some(m) = model
                && !allowed(&policy.models, m)
            {
                return Err(format!(
                    "stages[{i}]: model {m:?} is not allowed by device policy"
                ));
            }
            if let Some(img) = image
                && !under(img, &policy.paths)
            {
                return Err(format!(
                    "stages[{i}]: image {} is outside the allowed paths",
                    img.display()
                ));
            }
        }
        for (i, s) in p.sinks.iter().enumerate() {
            if let aegis_config::SinkConfig::Record(r) = s
                && !under(&r.dir, &policy.paths)
            {
                return Err(format!(
                    "sinks[{i}]: {} is outside the allowed paths",
                    r.dir.display()
                ));
            }
        }
    }
    Ok(())
}

/// Every check, in order, without changing `state` (call [`ReplayState::accept`] after the
/// workflow was applied).
pub fn check(
    doc: &[u8],
    trust: &TrustMetadata,
    me: &Identity,
    policy: &Policy,
    state: &ReplayState,
    now_s: i64,
    keys: &[&crate::seal::SealSecret],
) -> Result<Verified, Rejection> {
    check_mode(doc, trust, me, policy, state, Some(now_s), keys)
}

/// The checks for the workflow a device already runs (at start-up, or to roll back to the
/// previous one): the same as [`check`] except freshness and replay. It was fresh when it
/// was accepted, and its sequence is the accepted one; expiry limits *installation*, not
/// running (a device cut off from its gateway keeps working). Signature, issuer (revocation
/// included: the current trust metadata must still list the key), target and policy are
/// checked again.
pub fn recheck(
    doc: &[u8],
    trust: &TrustMetadata,
    me: &Identity,
    policy: &Policy,
    state: &ReplayState,
    keys: &[&crate::seal::SealSecret],
) -> Result<Verified, Rejection> {
    check_mode(doc, trust, me, policy, state, None, keys)
}

fn check_mode(
    doc: &[u8],
    trust: &TrustMetadata,
    me: &Identity,
    policy: &Policy,
    state: &ReplayState,
    now_s: Option<i64>,
    keys: &[&crate::seal::SealSecret],
) -> Result<Verified, Rejection> {
    let (signed, block) = maml::split_signed(doc).map_err(Rejection::Format)?;
    if !policy.algorithms.contains(&block.alg) {
        return Err(Rejection::Signature(SignError::Algorithm(block.alg)));
    }
    let (issuer, key) = trust.issuer(&block.key).map_err(Rejection::Signature)?;
    key.verify(&signed, Purpose::Workflow, &block.sig)
        .map_err(Rejection::Signature)?;
    let document = maml::parse(&signed).map_err(Rejection::Document)?;
    let f = &document.front;
    let doc_err = |m: String| {
        Rejection::Document(MamlError {
            line: None,
            message: m,
        })
    };
    // Target: this device, and only what the issuer may target.
    let for_me =
        f.target.devices.contains(&me.id) || f.target.groups.iter().any(|g| me.groups.contains(g));
    if !for_me {
        return Err(Rejection::Target(format!(
            "for devices {:?} / groups {:?}, not this device {:?} (groups {:?})",
            f.target.devices, f.target.groups, me.id, me.groups
        )));
    }
    for d in &f.target.devices {
        if !allowed(&issuer.devices, d) {
            return Err(Rejection::Target(format!(
                "issuer {} may not target device {d:?}",
                issuer.name
            )));
        }
    }
    for g in &f.target.groups {
        if !allowed(&issuer.groups, g) {
            return Err(Rejection::Target(format!(
                "issuer {} may not target group {g:?}",
                issuer.name
            )));
        }
    }
    if f.origin != format!("chimera://{}", issuer.name) {
        return Err(doc_err(format!(
            "origin {:?} is not the signing issuer chimera://{}",
            f.origin, issuer.name
        )));
    }
    if let Some(now_s) = now_s {
        fresh(f, &key, policy, state, now_s)?;
    }
    if policy.require_sealing && f.security.encryption == "none" {
        return Err(Rejection::Policy(
            "device policy requires sealed documents".into(),
        ));
    }
    let (document, pipeline) = crate::open_and_validate(&signed, document, keys)?;
    let v = Verified {
        document,
        signer: key,
        pipeline,
        digest: crate::digest(&signed),
    };
    policy_check(&v, policy).map_err(Rejection::Policy)?;
    Ok(v)
}

/// Freshness: issued/expires against trusted time (never before the persisted floor), then
/// the sequence against replay and fast-forward.
fn fresh(
    f: &maml::FrontMatter,
    key: &crate::sign::PublicKey,
    policy: &Policy,
    state: &ReplayState,
    now_s: i64,
) -> Result<(), Rejection> {
    let now = now_s.max(state.time_floor_s);
    let issued = maml::parse_time(&f.issued_at).unwrap_or(i64::MAX);
    let expires = maml::parse_time(&f.expires_at).unwrap_or(i64::MIN);
    if issued > now + policy.max_clock_skew_s {
        return Err(Rejection::Time(format!("not valid before {}", f.issued_at)));
    }
    if expires <= now {
        return Err(Rejection::Time(format!("expired at {}", f.expires_at)));
    }
    // Replay and fast-forward.
    let last = state
        .sequences
        .get(&replay_key(key.id(), &f.target))
        .copied()
        .unwrap_or(0);
    if f.sequence <= last {
        return Err(Rejection::Replay(format!(
            "sequence {} is not above the last accepted {last}",
            f.sequence
        )));
    }
    if f.sequence - last > policy.max_sequence_jump {
        return Err(Rejection::Replay(format!(
            "sequence {} jumps {} past the last accepted {last} (limit {}): fast-forward refused",
            f.sequence,
            f.sequence - last,
            policy.max_sequence_jump
        )));
    }
    Ok(())
}
