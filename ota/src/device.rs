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
use crate::{Refusal, Rejection, Verified};

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
    /// Hosts a network source URL may name (`*` = any): names compared without regard to
    /// case, addresses compared as addresses, against the host of the strictly parsed URL
    /// (the one libavformat connects to). `file:` sources are checked against `paths`, and
    /// `v4l2` sources against `devices` (an entry `v4l2` here no longer allows cameras).
    pub source_hosts: Vec<String>,
    /// Hosts a `push` sink may send video to (rules of `source_hosts`; empty: none).
    pub output_hosts: Vec<String>,
    /// Camera device nodes a `v4l2` source may open (exact paths, e.g. `/dev/video0`).
    pub devices: Vec<PathBuf>,
    /// Directories sinks (and file sources) may use.
    pub paths: Vec<PathBuf>,
    /// Model names a workflow may require (`*` = any).
    pub models: Vec<String>,
    /// Largest accepted step of the sequence number (fast-forward guard).
    pub max_sequence_jump: u64,
    /// Clock skew tolerated for `issued_at` in the future, seconds.
    pub max_clock_skew_s: i64,
    /// The agent's own files and directories (workflow state, keys, the store, the API
    /// token): no sink, file source or image may be inside one of them, even when `paths`
    /// allows their parent.
    pub protected: Vec<PathBuf>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            algorithms: vec![crate::sign::ALG.into()],
            require_sealing: false,
            source_hosts: Vec::new(),
            output_hosts: Vec::new(),
            devices: Vec::new(),
            paths: vec![PathBuf::from("/var/lib/aegis")],
            models: vec!["*".into()],
            max_sequence_jump: 1000,
            max_clock_skew_s: 300,
            protected: Vec::new(),
        }
    }
}

impl From<&aegis_config::WorkflowPolicy> for Policy {
    fn from(p: &aegis_config::WorkflowPolicy) -> Policy {
        Policy {
            algorithms: p.algorithms.clone(),
            require_sealing: p.require_sealing,
            source_hosts: p.source_hosts.clone(),
            output_hosts: p.output_hosts.clone(),
            devices: p.devices.clone(),
            paths: p.paths.clone(),
            models: p.models.clone(),
            max_sequence_jump: p.max_sequence_jump,
            max_clock_skew_s: i64::from(p.max_clock_skew_s),
            protected: Vec::new(),
        }
    }
}

/// Persisted anti-replay state (kept off the A/B firmware slots).
///
/// The order it enforces (docs/security.md, "Freshness"): an issuer's documents are
/// ordered by `issued_at` across every target, with `sequence` ordering the documents for
/// one target; and no document replaces the running workflow unless it was issued at or
/// after it, whoever issued either. Rolling back is re-issuing the older pipeline as a new
/// document (new `issued_at`, next sequence): a signed statement that says so.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayState {
    /// The highest trust metadata version this device has ever held (never goes down).
    pub trust_version: u64,
    /// The root keys (base64) of that version: the keys a later version, or a lost copy of
    /// this one, must be signed by. Empty in state written by older agents.
    #[serde(default)]
    pub trust_roots: Vec<String>,
    /// The root threshold of that version.
    #[serde(default)]
    pub trust_threshold: u32,
    /// Trusted time never goes below this (seconds since the epoch).
    pub time_floor_s: i64,
    /// Last accepted sequence per "issuer key id|target".
    pub sequences: BTreeMap<String, u64>,
    /// Newest `issued_at` accepted per issuer key id (any target).
    #[serde(default)]
    pub issued: BTreeMap<String, i64>,
    /// `issued_at` of the workflow that runs (None: the local default pipeline).
    #[serde(default)]
    pub active_issued_s: Option<i64>,
}

impl ReplayState {
    /// Records an accepted (or authenticated and consumed) workflow: its sequence, its
    /// issuer's newest `issued_at`, the time floor. Never moves anything backwards.
    pub fn accept(&mut self, v: &Verified) {
        let f = &v.document.front;
        let key = replay_key(v.signer.id(), &f.target);
        let seq = self.sequences.entry(key).or_insert(0);
        *seq = (*seq).max(f.sequence);
        if let Some(t) = maml::parse_time(&f.issued_at) {
            self.time_floor_s = self.time_floor_s.max(t);
            self.note_issued(v.signer.id(), t);
        }
    }

    /// Records that issuer key `key` issued a document at `t` (keeps the newest).
    pub fn note_issued(&mut self, key: &str, t: i64) {
        let newest = self.issued.entry(key.to_string()).or_insert(t);
        *newest = (*newest).max(t);
    }

    /// Records trust metadata now held: its version and roots (never a lower version).
    pub fn hold_trust(&mut self, t: &TrustMetadata) {
        if t.version >= self.trust_version {
            self.trust_version = t.version;
            self.trust_roots = t.root.keys.clone();
            self.trust_threshold = t.root.threshold;
        }
    }
}

fn replay_key(key: &str, t: &maml::Target) -> String {
    format!("{key}|{}", t.canonical())
}

fn allowed(list: &[String], item: &str) -> bool {
    list.iter().any(|a| a == "*" || a == item)
}

/// Whether the host of `url` (parsed strictly: the host libavformat connects to) is in the
/// allow-list `list` (see [`host_allowed`]).
fn url_host_allowed(list: &[String], url: &aegis_config::NetUrl) -> bool {
    host_allowed(list, &url.host)
}

/// The policy's host rule, for every URL the device connects to (sources, model
/// downloads): `*` allows any; an entry that is an IP address (IPv6 with or without
/// brackets) matches that address; any other entry matches a DNS name without regard to
/// case. A name never matches an address entry, nor an address a name entry. `host` comes
/// from a strict parse ([`aegis_config::Host::parse`] or [`aegis_config::NetUrl::parse`]),
/// so it is the host that is then connected to.
pub fn host_allowed(list: &[String], host: &aegis_config::Host) -> bool {
    use aegis_config::Host;
    list.iter().any(|entry| {
        let entry = entry.trim();
        let bare = entry
            .strip_prefix('[')
            .and_then(|e| e.strip_suffix(']'))
            .unwrap_or(entry);
        match (host, bare.parse::<std::net::IpAddr>()) {
            _ if entry == "*" => true,
            (Host::Ipv4(a), Ok(b)) => std::net::IpAddr::V4(*a) == b,
            (Host::Ipv6(a), Ok(b)) => std::net::IpAddr::V6(*a) == b,
            (Host::Domain(name), Err(_)) => name.eq_ignore_ascii_case(entry),
            _ => false,
        }
    })
}

fn under(path: &Path, policy: &Policy) -> bool {
    // Lexical check; `..` is refused outright so a path cannot climb out of its root, and
    // nothing may land in the agent's own state.
    !path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
        && policy.paths.iter().any(|r| path.starts_with(r))
        && !policy.protected.iter().any(|p| path.starts_with(p))
}

/// Why the device policy refuses a workflow (one variant per refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The policy requires sealed documents and this one is not.
    #[error("device policy requires sealed documents")]
    SealingRequired,
    /// `requires.models` names a model the policy does not allow.
    #[error("model {name:?} is not allowed by device policy")]
    ModelNotAllowed {
        /// The model's name.
        name: String,
    },
    /// `requires.models` names a model this device does not have pinned.
    #[error(
        "requires model {name:?} version {version} (sha256 {sha256}) which this device does \
         not have pinned in inference.models"
    )]
    ModelNotPinned {
        /// The model's name.
        name: String,
        /// The version required.
        version: u32,
        /// The SHA-256 required.
        sha256: String,
    },
    /// A source URL does not parse.
    #[error("sources[{index}]: url: {reason}")]
    SourceUrl {
        /// Index in `sources`.
        index: usize,
        /// Why.
        reason: aegis_config::UrlError,
    },
    /// A file source outside the allowed paths.
    #[error(
        "sources[{index}]: file {} is outside the allowed paths (or inside the agent's own state)",
        .path.display()
    )]
    SourceFile {
        /// Index in `sources`.
        index: usize,
        /// The file.
        path: PathBuf,
    },
    /// A camera the policy does not list.
    #[error(
        "sources[{index}]: camera device {} is not in the device policy's `devices` list",
        .device.display()
    )]
    Camera {
        /// Index in `sources`.
        index: usize,
        /// The device path.
        device: PathBuf,
    },
    /// A network source whose host is not allowed.
    #[error("sources[{index}]: host {host:?} is not in the device's source allow-list")]
    SourceHost {
        /// Index in `sources`.
        index: usize,
        /// The host.
        host: String,
    },
    /// Credentials in the URL of an unsealed document.
    #[error(
        "sources[{index}]: the URL carries a user name or password: credentials may only \
         travel in a sealed document"
    )]
    UrlCredentials {
        /// Index in `sources`.
        index: usize,
    },
    /// A secret query parameter in the URL of an unsealed document.
    #[error(
        "sources[{index}]: the URL's query carries a secret ({}): credentials may only travel \
         in a sealed document",
        .keys.join(", ")
    )]
    UrlSecret {
        /// Index in `sources`.
        index: usize,
        /// The secret query keys.
        keys: Vec<String>,
    },
    /// A camera password in an unsealed document.
    #[error(
        "sources[{index}]: a camera password or publish token may only travel in a sealed document"
    )]
    Password {
        /// Index in `sources`.
        index: usize,
    },
    /// A push to a host the policy does not list.
    #[error(
        "sinks[{index}]: push host {host:?} is not in the device's output allow-list (policy.output_hosts)"
    )]
    OutputHost {
        /// Index in `sinks`.
        index: usize,
        /// The host.
        host: String,
    },
    /// A stream key or passphrase in an unsealed document.
    #[error("sinks[{index}]: a stream key or passphrase may only travel in a sealed document")]
    OutputSecret {
        /// Index in `sinks`.
        index: usize,
    },
    /// A stage runs a model the policy does not allow.
    #[error("stages[{index}]: model {model:?} is not allowed by device policy")]
    StageModel {
        /// Index in `stages`.
        index: usize,
        /// The model's name.
        model: String,
    },
    /// A stage reads a file outside the allowed paths.
    #[error(
        "stages[{index}]: {setting} {} is outside the allowed paths (or inside the agent's own state)",
        .path.display()
    )]
    StageFile {
        /// Index in `stages`.
        index: usize,
        /// The setting naming the file (`image`).
        setting: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A record sink writes outside the allowed paths.
    #[error(
        "sinks[{index}]: {} is outside the allowed paths (or inside the agent's own state)",
        .dir.display()
    )]
    SinkDir {
        /// Index in `sinks`.
        index: usize,
        /// The directory.
        dir: PathBuf,
    },
    /// The event clips' directory is not under an allowed path.
    #[error(
        "evidence.dir: {} is outside the allowed paths (or inside the agent's own state)",
        .0.display()
    )]
    EvidenceDir(PathBuf),
}

fn policy_check(v: &Verified, policy: &Policy) -> Result<(), PolicyError> {
    let f = &v.document.front;
    for m in &f.requires.models {
        if !allowed(&policy.models, &m.name) {
            return Err(PolicyError::ModelNotAllowed {
                name: m.name.clone(),
            });
        }
    }
    let Some(p) = &v.pipeline else {
        return Ok(());
    };
    for (index, s) in p.sources.iter().enumerate() {
        let unsealed = f.security.encryption == "none";
        let location = s
            .try_location()
            .map_err(|reason| PolicyError::SourceUrl { index, reason })?;
        match location {
            aegis_config::SourceLocation::File(path) => {
                if !under(&path, policy) {
                    return Err(PolicyError::SourceFile { index, path });
                }
            }
            aegis_config::SourceLocation::V4l2(device) => {
                if !policy.devices.iter().any(|d| d == &device) {
                    return Err(PolicyError::Camera { index, device });
                }
            }
            // Names no destination: it opens `/whip/<id>` to whoever holds its token, and
            // the token (like a password) travels only sealed.
            aegis_config::SourceLocation::Whip => {}
            aegis_config::SourceLocation::Rtsp(url)
            | aegis_config::SourceLocation::Srt(url)
            | aegis_config::SourceLocation::Rtmp(url) => {
                if !url_host_allowed(&policy.source_hosts, &url) {
                    return Err(PolicyError::SourceHost {
                        index,
                        host: url.host_str(),
                    });
                }
                if unsealed && url.has_userinfo() {
                    return Err(PolicyError::UrlCredentials { index });
                }
                let keys = url.secret_query_keys();
                if unsealed && !keys.is_empty() {
                    return Err(PolicyError::UrlSecret { index, keys });
                }
            }
        }
        if (s.password.is_some() || s.publish_token.is_some()) && unsealed {
            return Err(PolicyError::Password { index });
        }
    }
    for (index, s) in p.stages.iter().enumerate() {
        if let Some(m) = s.model()
            && !allowed(&policy.models, m.name)
        {
            return Err(PolicyError::StageModel {
                index,
                model: m.name.to_owned(),
            });
        }
        if let Some(file) = s.files().into_iter().find(|f| !under(f.path, policy)) {
            return Err(PolicyError::StageFile {
                index,
                setting: file.setting,
                path: file.path.to_path_buf(),
            });
        }
    }
    let unsealed = f.security.encryption == "none";
    for (index, s) in p.sinks.iter().enumerate() {
        match s {
            aegis_config::SinkConfig::Record(r) if !under(&r.dir, policy) => {
                return Err(PolicyError::SinkDir {
                    index,
                    dir: r.dir.clone(),
                });
            }
            aegis_config::SinkConfig::Push(push) => {
                // Parsed and checked like a source's URL: the host it names is the one
                // libavformat connects to.
                let host = aegis_config::NetUrl::parse(&push.url).map_err(|reason| {
                    PolicyError::OutputHost {
                        index,
                        host: format!("<invalid URL: {reason}>"),
                    }
                })?;
                if !url_host_allowed(&policy.output_hosts, &host) {
                    return Err(PolicyError::OutputHost {
                        index,
                        host: host.host_str(),
                    });
                }
                if unsealed && (push.stream_key.is_some() || push.passphrase.is_some()) {
                    return Err(PolicyError::OutputSecret { index });
                }
            }
            _ => {}
        }
    }
    if let Some(e) = &p.evidence
        && !under(&e.dir, policy)
    {
        return Err(PolicyError::EvidenceDir(e.dir.clone()));
    }
    Ok(())
}

/// Every check, in order, without changing `state` (call [`ReplayState::accept`] after the
/// workflow was applied). Trust metadata that expired (against trusted time) vouches for
/// nothing: the document is refused before its signature is even looked at, and the
/// refusal is unauthenticated. Only refusals after the signature verified carry the
/// [`crate::Authenticated`] view a receipt may name.
pub fn check(
    doc: &[u8],
    trust: &TrustMetadata,
    me: &Identity,
    policy: &Policy,
    state: &ReplayState,
    now_s: i64,
    keys: &[&crate::seal::SealSecret],
) -> Result<Verified, Refusal> {
    let now = now_s.max(state.time_floor_s);
    if let Some(why) = trust_expired(trust, now) {
        return Err(Refusal::unauthenticated(Rejection::Trust(why)));
    }
    check_mode(doc, trust, me, policy, state, Some(now_s), keys)
}

/// Why `trust` vouches for nothing at trusted time `now` (None: it is valid).
pub fn trust_expired(trust: &TrustMetadata, now: i64) -> Option<String> {
    match maml::parse_time(&trust.expires_at) {
        Some(exp) if exp > now => None,
        Some(_) => Some(format!(
            "the device's trust metadata (version {}) expired at {}; it needs a trust update \
             before it accepts any workflow",
            trust.version, trust.expires_at
        )),
        None => Some(format!(
            "the device's trust metadata (version {}) has an unreadable expiry {:?}",
            trust.version, trust.expires_at
        )),
    }
}

/// The checks for the workflow a device already runs (at start-up, or to roll back to the
/// previous one): the same as [`check`] except freshness, replay and trust expiry. It was
/// fresh when it was accepted, and its sequence is the accepted one; expiry limits
/// *installation*, not running (a device cut off from its gateway keeps working).
/// Signature, issuer (revocation included: the current trust metadata must still list the
/// key), target and policy are checked again.
pub fn recheck(
    doc: &[u8],
    trust: &TrustMetadata,
    me: &Identity,
    policy: &Policy,
    state: &ReplayState,
    keys: &[&crate::seal::SealSecret],
) -> Result<Verified, Refusal> {
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
) -> Result<Verified, Refusal> {
    let unauth = Refusal::unauthenticated;
    let (signed, block) = maml::split_signed(doc).map_err(|e| unauth(Rejection::Format(e)))?;
    if !policy.algorithms.contains(&block.alg) {
        return Err(unauth(Rejection::Signature(SignError::Algorithm(
            block.alg,
        ))));
    }
    let (issuer, key) = trust
        .issuer(&block.key)
        .map_err(|e| unauth(Rejection::Signature(e)))?;
    key.verify(&signed, Purpose::Workflow, &block.sig)
        .map_err(|e| unauth(Rejection::Signature(e)))?;
    // From here on the bytes are the issuer's: parsed once, and what a receipt names.
    let document = maml::parse(&signed).map_err(|e| unauth(Rejection::Document(e)))?;
    let digest = crate::sha256_hex(&signed);
    let authenticated = |rejection: Rejection, document: &maml::Document| Refusal {
        rejection,
        authenticated: Some(Box::new(crate::Authenticated {
            document: document.clone(),
            digest: digest.clone(),
            mirror: crate::receipt::mirror(document),
        })),
    };
    if let Err(r) = check_authorised(&document, &issuer, me) {
        return Err(authenticated(r, &document));
    }
    if let Some(now_s) = now_s
        && let Err(r) = fresh(&document.front, &key, policy, state, now_s)
    {
        return Err(authenticated(r, &document));
    }
    if policy.require_sealing && document.front.security.encryption == "none" {
        return Err(authenticated(
            Rejection::Policy(PolicyError::SealingRequired),
            &document,
        ));
    }
    let (opened, pipeline) = match crate::open_and_validate(&signed, document.clone(), keys) {
        Ok(x) => x,
        Err(r) => return Err(authenticated(r, &document)),
    };
    let v = Verified {
        document: opened,
        signer: key,
        pipeline,
        digest: digest.clone(),
        mirror: crate::receipt::mirror(&document),
    };
    if let Err(e) = policy_check(&v, policy) {
        // The receipt names the document as transmitted (sealed stays sealed).
        return Err(authenticated(Rejection::Policy(e), &document));
    }
    Ok(v)
}

/// Target and origin: this device, and only what the issuer may target.
fn check_authorised(
    document: &maml::Document,
    issuer: &crate::trust::Issuer,
    me: &Identity,
) -> Result<(), Rejection> {
    let f = &document.front;
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
        return Err(Rejection::Document(MamlError {
            line: None,
            message: format!(
                "origin {:?} is not the signing issuer chimera://{}",
                f.origin, issuer.name
            ),
        }));
    }
    Ok(())
}

/// Freshness: issued/expires against trusted time (never before the persisted floor), the
/// issuer's order and the running workflow's age, then the sequence against replay and
/// fast-forward.
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
    if issued > now.saturating_add(policy.max_clock_skew_s) {
        return Err(Rejection::Time(format!("not valid before {}", f.issued_at)));
    }
    if expires <= now {
        return Err(Rejection::Time(format!("expired at {}", f.expires_at)));
    }
    // One order per issuer, across its targets: nothing issued before what it already
    // sent this device.
    if let Some(&newest) = state.issued.get(key.id())
        && issued < newest
    {
        return Err(Rejection::Replay(format!(
            "issued at {}, before {} — the newest document this device accepted from the same \
             issuer: an older document never replaces a newer one (re-issue it to roll back)",
            f.issued_at,
            maml::format_time(newest)
        )));
    }
    // Across issuers: the running workflow is replaced only by a document issued after it.
    if let Some(active) = state.active_issued_s
        && issued < active
    {
        return Err(Rejection::Replay(format!(
            "issued at {}, before the running workflow (issued {}): an older document never \
             replaces a newer one (re-issue it to roll back)",
            f.issued_at,
            maml::format_time(active)
        )));
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
