//! Changing the configuration file from the technician web page. The config editor (the
//! whole file as YAML) and the camera forms (one source of `pipeline.sources`) both end in
//! [`Editor::save`], the one way the page writes the file:
//!
//! 1. the text is parsed with the configuration's YAML rules, and `***` placeholders are
//!    replaced by the secrets stored in the file on disk at the same place (a password, or
//!    the password or SRT passphrase inside a URL) — only while the URL's host stays the
//!    one the secret was entered for, so a kept password is never sent to a new host;
//! 2. the resulting text is validated by the validator `aegis check-config` uses
//!    ([`aegis_config::from_yaml_str`], then the backend check): every problem comes back
//!    with its field path (`pipeline.sources[1].url`) and, for the editor, its line;
//! 3. sections other than `pipeline` need an admin; on a fleet-managed device pipeline
//!    edits are refused unless `workflows.allow_local_edits`;
//! 4. exactly that text is written (temp file, fsync, rename; the previous file kept as
//!    `<file>.bak`), and exactly the validated pipeline becomes the local default: live at
//!    once unless a signed workflow is active. A pipeline that does not start is not kept:
//!    the previous file is written back and the previous pipeline runs;
//! 5. an audit row `config.edited` names the user and the sections that changed.
//!
//! Other sections take effect after a restart. Saves are serialised (one at a time), and a
//! save based on a file that changed since the page loaded it is refused.

use std::path::{Path, PathBuf};

use aegis_config::AgentConfig;
use serde::Serialize;
use serde_yaml_ng::{Mapping, Value};

use crate::store::{Record, StoreHandle, now_us};
use crate::web::{Role, Viewer};
use crate::workflows::apply::{DefaultOutcome, DefaultPipeline};

/// What stands for a stored secret in the editor.
pub const PLACEHOLDER: &str = "***";

/// One problem with a submitted configuration, at its field path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProblem {
    /// The YAML path (`pipeline.sources[1].url`); empty for the document as a whole.
    pub path: String,
    /// What is wrong.
    pub reason: String,
    /// The line of the submitted text it points at (1-based), when it can be found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl FieldProblem {
    fn new(path: impl Into<String>, reason: impl Into<String>) -> FieldProblem {
        FieldProblem {
            path: path.into(),
            reason: reason.into(),
            line: None,
        }
    }
}

/// Why a save did not happen.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The configuration has problems (nothing was written).
    #[error("the configuration has {} problem(s); nothing was saved", .0.len())]
    Invalid(Vec<FieldProblem>),
    /// The user's role may not change these sections.
    #[error(
        "{user} is a {role}: changing {sections} needs an admin (a technician may change the pipeline)"
    )]
    Role {
        /// The user.
        user: String,
        /// Their role.
        role: &'static str,
        /// The sections they tried to change.
        sections: String,
    },
    /// The device is fleet-managed: its pipeline comes from signed workflows.
    #[error("{0}")]
    FleetManaged(String),
    /// The file changed since the page showed it.
    #[error(
        "the configuration file changed since this page loaded it (someone else saved): \
         reload the page and make the change again"
    )]
    Stale,
    /// The camera named does not exist.
    #[error("no camera {0:?} in pipeline.sources of the configuration file")]
    NoSuchCamera(String),
    /// The file cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The new pipeline does not start; the previous file and pipeline are back.
    #[error(
        "the new pipeline does not start here ({0}); the previous configuration was written \
         back and its pipeline runs"
    )]
    DoesNotStart(String),
    /// The agent stopped before it answered.
    #[error("the agent is stopping; the configuration was saved but not applied")]
    Stopping,
}

impl SaveError {
    /// The HTTP status that says it.
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            SaveError::Invalid(_) | SaveError::DoesNotStart(_) => StatusCode::UNPROCESSABLE_ENTITY,
            SaveError::Role { .. } | SaveError::FleetManaged(_) => StatusCode::FORBIDDEN,
            SaveError::Stale => StatusCode::CONFLICT,
            SaveError::NoSuchCamera(_) => StatusCode::NOT_FOUND,
            SaveError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            SaveError::Stopping => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// A save that happened.
#[derive(Debug, Clone, Serialize)]
pub struct Saved {
    /// The top-level sections that changed.
    pub changed: Vec<String>,
    /// What the save did, in words.
    pub message: String,
    /// The new file's SHA-256 (the base of the next save).
    pub digest: String,
}

/// The configuration file as it is on disk now.
pub struct Snapshot {
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// SHA-256 of the bytes.
    pub digest: String,
    /// The validated configuration, or the problems `aegis check-config` would report.
    pub config: Result<AgentConfig, Vec<FieldProblem>>,
    /// The file as a YAML value (None: not even YAML).
    pub value: Option<Value>,
}

impl Snapshot {
    /// The editor's text: the effective configuration (every option, defaults included)
    /// with its secrets shown as `***`. None when the file does not validate.
    pub fn redacted_text(&self) -> Option<String> {
        let cfg = self.config.as_ref().ok()?;
        let mut v = aegis_config::effective_yaml(cfg);
        redact_yaml(&mut v);
        serde_yaml_ng::to_string(&v).ok()
    }
}

/// One camera change from the cameras page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CameraChange {
    /// A new source at the end of `pipeline.sources`.
    Add {
        /// Its id.
        id: String,
        /// Its URL.
        url: String,
        /// RTSP user name (empty: none).
        username: String,
        /// RTSP password (empty: none).
        password: String,
    },
    /// Source `source` gets a new id and URL (empty: unchanged) and password (empty: kept).
    Edit {
        /// The id of the source to change.
        source: String,
        /// New id.
        id: String,
        /// New URL.
        url: String,
        /// New password.
        password: String,
    },
    /// Source `source` is removed.
    Remove {
        /// Its id.
        source: String,
    },
}

/// What a save starts from.
pub enum Change {
    /// The whole file as the editor shows it (`***` for stored secrets).
    Text(String),
    /// One camera.
    Camera(CameraChange),
}

/// The configuration file's editor.
pub struct Editor {
    path: PathBuf,
    /// Why local pipeline edits are refused (None: they are allowed).
    refuse_pipeline: Option<String>,
    store: Option<StoreHandle>,
    defaults: Option<tokio::sync::mpsc::Sender<DefaultPipeline>>,
    lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Editor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Editor({})", self.path.display())
    }
}

/// Whether `running` (the configuration the agent started with) makes the device
/// fleet-managed: the fleet link on and signed workflows on (trust installed). Returns why
/// local pipeline edits are refused, or None when they are allowed.
pub fn pipeline_refusal(running: &AgentConfig, workflows_open: bool) -> Option<String> {
    let managed = running.fleet.enabled && running.workflows.enabled && workflows_open;
    (managed && !running.workflows.allow_local_edits).then(|| {
        format!(
            "this device is fleet-managed (fleet {} with signed workflows): its pipeline comes \
             from signed workflows, and local pipeline edits are off \
             (workflows.allow_local_edits: false). Apply a signed workflow on the Workflows \
             page, or have an admin set workflows.allow_local_edits: true and restart",
            running.fleet.broker_url
        )
    })
}

impl Editor {
    /// The editor of the file at `path` (resolved through links: the file itself is
    /// replaced). `refuse_pipeline` is [`pipeline_refusal`]'s answer; `store` takes the
    /// audit rows; `defaults` is the supervisor's queue of new default pipelines (None:
    /// nothing runs, the file is only written).
    pub fn new(
        path: &Path,
        refuse_pipeline: Option<String>,
        store: Option<StoreHandle>,
        defaults: Option<tokio::sync::mpsc::Sender<DefaultPipeline>>,
    ) -> Editor {
        Editor {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            refuse_pipeline,
            store,
            defaults,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why local pipeline edits are refused (None: allowed).
    pub fn pipeline_refused(&self) -> Option<&str> {
        self.refuse_pipeline.as_deref()
    }

    /// Reads the file as it is now.
    pub fn snapshot(&self) -> Result<Snapshot, SaveError> {
        let io = |source| SaveError::Io {
            path: self.path.clone(),
            source,
        };
        let bytes = read_bounded(&self.path).map_err(io)?;
        let digest = aegis_ota::sha256_hex(&bytes);
        let origin = self.path.display().to_string();
        let (config, value) = match std::str::from_utf8(&bytes) {
            Ok(text) => (
                aegis_config::from_yaml_str(text, &origin)
                    .map_err(|e| problems_of(&e))
                    .and_then(|c| backend_check(&c).map(|()| c)),
                aegis_config::yaml_value(text, &origin).ok(),
            ),
            Err(_) => (
                Err(vec![FieldProblem::new("", "the file is not UTF-8 text")]),
                None,
            ),
        };
        Ok(Snapshot {
            bytes,
            digest,
            config,
            value,
        })
    }

    /// Validates `text` as the editor submits it (`***` for stored secrets) without
    /// saving: the configuration it would save, or every problem with its path and line.
    pub fn validate(&self, text: &str) -> Result<(AgentConfig, Vec<String>), SaveError> {
        let snap = self.snapshot()?;
        let (_, cfg) = candidate_from_text(text, snap.value.as_ref())?;
        let changed = changed_sections(snap.config.as_ref().ok(), &cfg);
        Ok((cfg, changed))
    }

    /// Saves `change` for `who` (see the module documentation); `base` is the SHA-256 of
    /// the file the page showed (None: not checked).
    pub async fn save(
        &self,
        who: &Viewer,
        change: Change,
        base: Option<&str>,
    ) -> Result<Saved, SaveError> {
        let _one_at_a_time = self.lock.lock().await;
        let snap = self.snapshot()?;
        if base.is_some_and(|b| b != snap.digest) {
            return Err(SaveError::Stale);
        }
        let (text, cfg) = match change {
            Change::Text(t) => candidate_from_text(&t, snap.value.as_ref())?,
            Change::Camera(c) => candidate_from_camera(&c, snap.value.as_ref())?,
        };
        let old = snap.config.as_ref().ok();
        let changed = changed_sections(old, &cfg);
        if changed.is_empty() {
            return Ok(Saved {
                changed,
                message: "nothing changed".into(),
                digest: snap.digest,
            });
        }
        let others: Vec<&str> = changed
            .iter()
            .map(String::as_str)
            .filter(|s| *s != "pipeline")
            .collect();
        let pipeline_changed = changed.iter().any(|s| s == "pipeline");
        let refused = if !others.is_empty() && who.role < Role::Admin {
            Some(SaveError::Role {
                user: who.user.clone(),
                role: who.role.as_str(),
                sections: others.join(", "),
            })
        } else if pipeline_changed && let Some(why) = &self.refuse_pipeline {
            Some(SaveError::FleetManaged(why.clone()))
        } else {
            None
        };
        if let Some(e) = refused {
            self.audit(
                who,
                "config.edit_refused",
                format!("sections {}: {e}", changed.join(", ")),
            );
            return Err(e);
        }
        self.write(&snap.bytes, text.as_bytes())?;
        let digest = aegis_ota::sha256_hex(text.as_bytes());
        let mut said = Vec::new();
        if pipeline_changed {
            match self.apply(who, cfg.pipeline.clone()).await {
                Ok(outcome) => said.push(match outcome {
                    DefaultOutcome::Running("in_place") => {
                        "pipeline: live now (stages switched in place, no frame dropped)".into()
                    }
                    DefaultOutcome::Running(_) => "pipeline: live now (restarted)".into(),
                    DefaultOutcome::Unchanged => "pipeline: it was running already".into(),
                    DefaultOutcome::WorkflowRuns { workflow } => format!(
                        "pipeline: saved as the local default; the signed workflow {workflow} \
                         is active and keeps running (the local default runs when no \
                         workflow is)"
                    ),
                    DefaultOutcome::Failed(why) => {
                        // Not kept: the file as it was, and the pipeline as it ran.
                        self.write_back(&snap.bytes)?;
                        self.audit(
                            who,
                            "config.edit_failed",
                            format!(
                                "sections {}: the new pipeline does not start: {why}; the \
                                 previous file was written back",
                                changed.join(", ")
                            ),
                        );
                        return Err(SaveError::DoesNotStart(why));
                    }
                }),
                Err(e) => {
                    self.audit(
                        who,
                        "config.edited",
                        format!("sections {}; not applied: {e}", changed.join(", ")),
                    );
                    return Err(e);
                }
            }
        }
        if !others.is_empty() {
            said.push(format!(
                "{}: saved; takes effect after a restart",
                others.join(", ")
            ));
        }
        self.audit(
            who,
            "config.edited",
            format!(
                "sections {}; {}; sha256 {} -> {digest}",
                changed.join(", "),
                said.join("; "),
                snap.digest
            ),
        );
        Ok(Saved {
            changed,
            message: format!("Saved. {}.", said.join(". ")),
            digest,
        })
    }

    /// Hands the pipeline to the supervisor and waits for what became of it.
    async fn apply(
        &self,
        who: &Viewer,
        pipeline: aegis_config::PipelineConfig,
    ) -> Result<DefaultOutcome, SaveError> {
        let Some(tx) = &self.defaults else {
            return Ok(DefaultOutcome::Unchanged);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let by = format!("web:{}", who.user);
        tx.send(DefaultPipeline {
            pipeline,
            by,
            reply,
        })
        .await
        .map_err(|_| SaveError::Stopping)?;
        answer.await.map_err(|_| SaveError::Stopping)
    }

    /// Writes `new` over the file, keeping `old` as `<file>.bak`; both with the file's
    /// mode, each written whole.
    fn write(&self, old: &[u8], new: &[u8]) -> Result<(), SaveError> {
        let mode = self.mode();
        let bak = PathBuf::from(format!("{}.bak", self.path.display()));
        aegis_ota::fsutil::write_atomic_mode(&bak, old, mode)
            .map_err(|source| SaveError::Io { path: bak, source })?;
        aegis_ota::fsutil::write_atomic_mode(&self.path, new, mode).map_err(|source| {
            SaveError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    fn write_back(&self, old: &[u8]) -> Result<(), SaveError> {
        aegis_ota::fsutil::write_atomic_mode(&self.path, old, self.mode()).map_err(|source| {
            SaveError::Io {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// The file's permission bits (0600 when unknown: it may hold passwords).
    fn mode(&self) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(&self.path).map_or(0o600, |m| m.permissions().mode() & 0o777)
    }

    fn audit(&self, who: &Viewer, action: &str, detail: String) {
        tracing::info!(user = %who.user, action, detail = %detail, "web: configuration");
        if let Some(s) = &self.store {
            s.submit(Record::Audit {
                ts_us: now_us(),
                actor: format!("web:{}", who.user),
                action: action.into(),
                detail,
            });
        }
    }
}

/// Reads at most [`aegis_config::MAX_CONFIG_BYTES`] (+1, so that a larger file fails
/// validation rather than being cut).
fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?
        .take(aegis_config::MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn problems_of(e: &aegis_config::ConfigError) -> Vec<FieldProblem> {
    match e.problems() {
        [] => vec![FieldProblem::new("", e.to_string())],
        ps => ps
            .iter()
            .map(|p| FieldProblem::new(p.path.clone(), p.reason.clone()))
            .collect(),
    }
}

/// The check `aegis check-config` makes after the file validates: the backend's vendor
/// libraries (or its fallback) are there.
fn backend_check(cfg: &AgentConfig) -> Result<(), Vec<FieldProblem>> {
    aegis_hal::backend::Backend::check(&cfg.backend)
        .map(|_| ())
        .map_err(|e| vec![FieldProblem::new("backend.kind", e.to_string())])
}

/// Validates `text` (the exact text that would be written): the configuration, or every
/// problem.
fn validate_text(text: &str) -> Result<AgentConfig, Vec<FieldProblem>> {
    let cfg = aegis_config::from_yaml_str(text, "the submitted configuration")
        .map_err(|e| problems_of(&e))?;
    backend_check(&cfg)?;
    Ok(cfg)
}

/// The text to save and its configuration, from the editor's text: parsed with the
/// configuration's YAML rules, `***` replaced from `stored`, emitted, validated. Problems
/// carry the line of `submitted` they point at.
fn candidate_from_text(
    submitted: &str,
    stored: Option<&Value>,
) -> Result<(String, AgentConfig), SaveError> {
    let located = |mut ps: Vec<FieldProblem>| {
        for p in &mut ps {
            p.line = locate(submitted, &p.path);
        }
        SaveError::Invalid(ps)
    };
    let mut value = aegis_config::yaml_value(submitted, "the submitted configuration")
        .map_err(|e| located(problems_of(&e)))?;
    let mut problems = Vec::new();
    restore_secrets(&mut value, stored, "", &mut problems);
    let text = emit(&value)?;
    // Validated even when a secret could not be restored (a `***` left in place is a
    // valid password), so that every problem comes back at once.
    match validate_text(&text) {
        Ok(cfg) if problems.is_empty() => Ok((text, cfg)),
        Ok(_) => Err(located(problems)),
        Err(more) => {
            problems.extend(more);
            Err(located(problems))
        }
    }
}

fn emit(v: &Value) -> Result<String, SaveError> {
    serde_yaml_ng::to_string(v)
        .map_err(|e| SaveError::Invalid(vec![FieldProblem::new("", e.to_string())]))
}

/// The text to save and its configuration after one camera change to the file on disk.
fn candidate_from_camera(
    change: &CameraChange,
    stored: Option<&Value>,
) -> Result<(String, AgentConfig), SaveError> {
    let unreadable = || {
        SaveError::Invalid(vec![FieldProblem::new(
            "pipeline.sources",
            "the configuration file on disk has no readable pipeline.sources list: fix it in \
             the config editor",
        )])
    };
    let mut value = stored.cloned().ok_or_else(unreadable)?;
    let sources = value
        .get_mut("pipeline")
        .and_then(|p| p.get_mut("sources"))
        .and_then(Value::as_sequence_mut)
        .ok_or_else(unreadable)?;
    let find = |sources: &[Value], id: &str| {
        sources
            .iter()
            .position(|s| s.get("id").and_then(Value::as_str) == Some(id))
            .ok_or_else(|| SaveError::NoSuchCamera(id.to_string()))
    };
    let text_value = |s: &str| Value::String(s.to_string());
    match change {
        CameraChange::Add {
            id,
            url,
            username,
            password,
        } => {
            let mut m = Mapping::new();
            m.insert(text_value("id"), text_value(id.trim()));
            m.insert(text_value("url"), text_value(url.trim()));
            if !username.is_empty() {
                m.insert(text_value("username"), text_value(username));
            }
            if !password.is_empty() {
                m.insert(text_value("password"), text_value(password));
            }
            sources.push(Value::Mapping(m));
        }
        CameraChange::Edit {
            source,
            id,
            url,
            password,
        } => {
            let i = find(sources, source)?;
            let path = format!("pipeline.sources[{i}]");
            let Some(m) = sources[i].as_mapping_mut() else {
                return Err(unreadable());
            };
            let old_url = m
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !id.trim().is_empty() {
                m.insert(text_value("id"), text_value(id.trim()));
            }
            if !url.trim().is_empty() {
                let new_url = match restore_url(url.trim(), Some(&old_url)) {
                    Ok(u) => u,
                    Err(why) => {
                        return Err(SaveError::Invalid(vec![FieldProblem::new(
                            format!("{path}.url"),
                            why,
                        )]));
                    }
                };
                let has_password = m.get("password").is_some_and(|p| !p.is_null());
                if has_password && password.is_empty() && origin(&new_url) != origin(&old_url) {
                    return Err(SaveError::Invalid(vec![FieldProblem::new(
                        format!("{path}.password"),
                        host_changed("password", &old_url, &new_url),
                    )]));
                }
                m.insert(text_value("url"), text_value(&new_url));
            }
            if !password.is_empty() {
                m.insert(text_value("password"), text_value(password));
            }
        }
        CameraChange::Remove { source } => {
            let i = find(sources, source)?;
            sources.remove(i);
        }
    }
    let text = emit(&value)?;
    let cfg = validate_text(&text).map_err(SaveError::Invalid)?;
    Ok((text, cfg))
}

/// The top-level sections of `new` that differ from `old` (all of them when there is no
/// valid old configuration).
fn changed_sections(old: Option<&AgentConfig>, new: &AgentConfig) -> Vec<String> {
    let as_map = |c: &AgentConfig| match serde_json::to_value(c) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let new_map = as_map(new);
    let old_map = old.map(as_map).unwrap_or_default();
    let mut changed: Vec<String> = new_map
        .iter()
        .filter(|(k, v)| old_map.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    // In the file's order of sections rather than alphabetical.
    let order = aegis_config::effective_yaml(new);
    let position = |k: &String| {
        order
            .as_mapping()
            .and_then(|m| m.keys().position(|x| x.as_str() == Some(k)))
            .unwrap_or(usize::MAX)
    };
    changed.sort_by_key(position);
    changed
}

/// Secret values ([`is_secret_key`]) and the secrets inside URLs replaced by `***`,
/// anywhere in `v`.
pub fn redact_yaml(v: &mut Value) {
    match v {
        Value::Mapping(m) => {
            for (k, x) in m.iter_mut() {
                let key = k.as_str().unwrap_or("");
                match x {
                    Value::String(s) if is_secret_key(key) => *s = PLACEHOLDER.into(),
                    Value::String(s) if is_url_key(key) => *s = redact_url(s),
                    _ => redact_yaml(x),
                }
            }
        }
        Value::Sequence(s) => s.iter_mut().for_each(redact_yaml),
        _ => {}
    }
}

/// Keys whose values are secrets: camera and RTSP passwords, RTMP stream keys, SRT
/// passphrases, WHIP publishers' and HLS clients' tokens.
pub fn is_secret_key(key: &str) -> bool {
    matches!(
        key,
        "password" | "stream_key" | "passphrase" | "publish_token" | "token"
    )
}

fn is_url_key(key: &str) -> bool {
    key == "url" || key.ends_with("_url")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// The stored counterpart of list item `i` of `new`: the stored item with the same `id`
/// (or `name`) when the item has one, else the stored item at the same place.
fn counterpart<'a>(item: &Value, i: usize, stored: Option<&'a Value>) -> Option<&'a Value> {
    let list = stored?.as_sequence()?;
    for key in ["id", "name"] {
        if let Some(want) = item.get(key).and_then(Value::as_str) {
            return list
                .iter()
                .find(|s| s.get(key).and_then(Value::as_str) == Some(want));
        }
    }
    list.get(i)
}

/// The URL beside a password (`url` of a source, `broker_url` of the fleet link).
fn sibling_url(m: &Mapping) -> Option<&str> {
    ["url", "broker_url"]
        .iter()
        .find_map(|k| m.get(*k).and_then(Value::as_str))
}

/// Replaces `***` in `v` by the secret stored at the same place in `stored`; what cannot
/// be replaced is a problem at its path.
fn restore_secrets(v: &mut Value, stored: Option<&Value>, path: &str, out: &mut Vec<FieldProblem>) {
    match v {
        Value::Mapping(m) => {
            let new_url = sibling_url(m).map(str::to_string);
            let stored_map = stored.and_then(Value::as_mapping);
            let old_url = stored_map.and_then(sibling_url).map(str::to_string);
            for (k, x) in m.iter_mut() {
                let key = k.as_str().unwrap_or("").to_string();
                let here = join(path, &key);
                let old = stored_map.and_then(|s| s.get(key.as_str()));
                match x {
                    Value::String(s) if is_secret_key(&key) && s == PLACEHOLDER => {
                        match old.and_then(Value::as_str) {
                            None => out.push(FieldProblem::new(
                                here,
                                format!(
                                    "*** stands for the stored {key}, but none is stored here: \
                                     type the {key}"
                                ),
                            )),
                            Some(_)
                                if origin(new_url.as_deref().unwrap_or(""))
                                    != origin(old_url.as_deref().unwrap_or("")) =>
                            {
                                out.push(FieldProblem::new(
                                    here,
                                    host_changed(
                                        &key,
                                        old_url.as_deref().unwrap_or(""),
                                        new_url.as_deref().unwrap_or(""),
                                    ),
                                ))
                            }
                            Some(secret) => *s = secret.to_string(),
                        }
                    }
                    Value::String(s) if is_url_key(&key) && s.contains(PLACEHOLDER) => {
                        match restore_url(s, old.and_then(Value::as_str)) {
                            Ok(u) => *s = u,
                            Err(why) => out.push(FieldProblem::new(here, why)),
                        }
                    }
                    _ => restore_secrets(x, old, &here, out),
                }
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let old = counterpart(item, i, stored);
                restore_secrets(item, old, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// A secret inside a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UrlSecret {
    /// `scheme://user:PASSWORD@host`.
    Password,
    /// SRT's `?passphrase=…`.
    Passphrase,
}

impl UrlSecret {
    fn name(self) -> &'static str {
        match self {
            UrlSecret::Password => "password",
            UrlSecret::Passphrase => "passphrase",
        }
    }
}

/// Where the secrets of `url` are (byte ranges), in order.
fn url_secrets(url: &str) -> Vec<(UrlSecret, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let Some(scheme_end) = url.find("://") else {
        return out;
    };
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    if let Some(at) = url[start..authority_end].rfind('@') {
        let userinfo = &url[start..start + at];
        if let Some(colon) = userinfo.find(':')
            && colon + 1 < userinfo.len()
        {
            out.push((UrlSecret::Password, start + colon + 1..start + at));
        }
    }
    if let Some(q) = url[authority_end..].find('?') {
        let q_start = authority_end + q + 1;
        let q_end = url[q_start..].find('#').map_or(url.len(), |i| q_start + i);
        let mut pos = q_start;
        for pair in url[q_start..q_end].split('&') {
            if let Some((k, v)) = pair.split_once('=')
                && k.eq_ignore_ascii_case("passphrase")
                && !v.is_empty()
            {
                let v_start = pos + k.len() + 1;
                out.push((UrlSecret::Passphrase, v_start..v_start + v.len()));
            }
            pos += pair.len() + 1;
        }
    }
    out
}

/// `url` with its password and SRT passphrase shown as `***`.
pub fn redact_url(url: &str) -> String {
    let mut out = url.to_string();
    for (_, r) in url_secrets(url).into_iter().rev() {
        out.replace_range(r, PLACEHOLDER);
    }
    out
}

/// `scheme://host:port` of a URL, lower-case, without user information: where a secret
/// in it is sent.
fn origin(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_ascii_lowercase();
    };
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    let authority = &url[start..authority_end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!("{}://{host}", &url[..scheme_end]).to_ascii_lowercase()
}

fn host_changed(what: &str, old: &str, new: &str) -> String {
    format!(
        "the address changed from {} to {}: type the {what} again (a stored {what} is only \
         sent to the host it was entered for)",
        origin(old),
        origin(new)
    )
}

/// `url` with each `***` secret replaced by the secret at the same place of `stored`, which
/// must name the same host.
fn restore_url(url: &str, stored: Option<&str>) -> Result<String, String> {
    let secrets = url_secrets(url);
    let placeholders: Vec<_> = secrets
        .iter()
        .filter(|(_, r)| &url[r.clone()] == PLACEHOLDER)
        .cloned()
        .collect();
    if placeholders.is_empty() {
        return Ok(url.to_string());
    }
    let old = stored.unwrap_or("");
    let old_secrets = url_secrets(old);
    let mut out = url.to_string();
    for (kind, r) in placeholders.into_iter().rev() {
        let Some((_, or)) = old_secrets.iter().find(|(k, _)| *k == kind) else {
            return Err(format!(
                "*** stands for the stored {}, but the stored URL has none: type it",
                kind.name()
            ));
        };
        if origin(url) != origin(old) {
            return Err(host_changed(kind.name(), old, url));
        }
        out.replace_range(r, &old[or.clone()]);
    }
    Ok(out)
}

/// One step of a field path.
#[derive(Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn steps(path: &str) -> Vec<Step<'_>> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_once('[').map_or((part, ""), |(k, r)| (k, r));
        if !key.is_empty() {
            out.push(Step::Key(key));
        }
        while let Some((n, after)) = rest.split_once(']') {
            if let Ok(i) = n.parse() {
                out.push(Step::Index(i));
            }
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// A line's leading spaces, the indentation of its content after any `- ` markers, and
/// that content; None for blank lines and comments.
fn shape(line: &str) -> Option<(usize, usize, &str)> {
    let lead = line.len() - line.trim_start_matches(' ').len();
    let mut content = &line[lead..];
    if content.is_empty() || content.starts_with('#') {
        return None;
    }
    let mut indent = lead;
    while let Some(rest) = content.strip_prefix("- ") {
        indent += 2 + (rest.len() - rest.trim_start_matches(' ').len());
        content = rest.trim_start_matches(' ');
    }
    Some((lead, indent, content))
}

fn is_key(content: &str, key: &str) -> bool {
    [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .any(|k| {
            content
                .strip_prefix(k.as_str())
                .is_some_and(|r| r == ":" || r.starts_with(": ") || r.starts_with(":\t"))
        })
}

/// The line (1-based) of block-style YAML `text` that field `path` is on, or the closest
/// enclosing line found (best effort: flow-style collections end the search).
pub fn locate(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut best = None;
    let mut from = 0usize;
    // Indentation of the enclosing node; its children are deeper.
    let mut parent: isize = -1;
    for step in steps(path) {
        let mut found = None;
        match step {
            Step::Key(k) => {
                let mut key_indent = None;
                for (i, line) in lines.iter().enumerate().skip(from) {
                    let Some((lead, indent, content)) = shape(line) else {
                        continue;
                    };
                    if i > from && lead as isize <= parent {
                        break;
                    }
                    if (indent as isize) <= parent {
                        continue;
                    }
                    let want = *key_indent.get_or_insert(indent);
                    if indent == want && is_key(content, k) {
                        found = Some((i, indent as isize));
                        break;
                    }
                }
                if let Some((i, indent)) = found {
                    from = i + 1;
                    parent = indent;
                }
            }
            Step::Index(n) => {
                let mut count = 0;
                let mut dash = None;
                for (i, line) in lines.iter().enumerate().skip(from) {
                    let Some((lead, _, _)) = shape(line) else {
                        continue;
                    };
                    let is_item = line[lead..].starts_with("- ") || line[lead..] == *"-";
                    if (lead as isize) < parent || (lead as isize == parent && !is_item) {
                        break;
                    }
                    if !is_item || dash.is_some_and(|d| d != lead) {
                        continue;
                    }
                    dash = Some(lead);
                    if count == n {
                        found = Some((i, lead as isize));
                        break;
                    }
                    count += 1;
                }
                if let Some((i, lead)) = found {
                    from = i;
                    parent = lead;
                }
            }
        }
        match found {
            Some((i, _)) => best = Some(i + 1),
            None => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_secrets_are_redacted_and_restored_only_for_the_same_host() {
        let u = "rtsp://admin:s3cret@192.0.2.10:554/stream1";
        assert_eq!(redact_url(u), "rtsp://admin:***@192.0.2.10:554/stream1");
        assert_eq!(
            restore_url("rtsp://admin:***@192.0.2.10:554/stream2", Some(u)).unwrap(),
            "rtsp://admin:s3cret@192.0.2.10:554/stream2"
        );
        let e = restore_url("rtsp://admin:***@evil.example/x", Some(u)).unwrap_err();
        assert!(e.contains("type the password again"), "{e}");
        let srt = "srt://192.0.2.5:9000?mode=caller&passphrase=longsecret123";
        assert_eq!(
            redact_url(srt),
            "srt://192.0.2.5:9000?mode=caller&passphrase=***"
        );
        assert_eq!(
            restore_url(&redact_url(srt), Some(srt)).unwrap(),
            srt.to_string()
        );
        let e = restore_url("rtsp://a:***@h/x", Some("rtsp://h/x")).unwrap_err();
        assert!(e.contains("none"), "{e}");
        // No secret, nothing to do; user without password is kept.
        assert_eq!(redact_url("rtsp://user@h/x"), "rtsp://user@h/x");
        assert_eq!(redact_url("file:///a@b:c"), "file:///a@b:c");
    }

    #[test]
    fn passwords_are_restored_by_id_and_refused_for_a_new_host() {
        let stored = aegis_config::yaml_value(
            "pipeline:\n  sources:\n  - {id: a, url: rtsp://h1/x, username: u, password: pa}\n  - {id: b, url: rtsp://h2/x, username: u, password: pb}\nfleet: {password: fp, broker_url: mqtt://b:1883}\n",
            "t",
        )
        .unwrap();
        // b first now, a's host changed, fleet kept.
        let mut new = aegis_config::yaml_value(
            "pipeline:\n  sources:\n  - {id: b, url: rtsp://h2/y, username: u, password: '***'}\n  - {id: a, url: rtsp://h9/x, username: u, password: '***'}\n  - {id: c, url: rtsp://h3/x, username: u, password: '***'}\nfleet: {password: '***', broker_url: mqtt://b:1883}\n",
            "t",
        )
        .unwrap();
        let mut out = Vec::new();
        restore_secrets(&mut new, Some(&stored), "", &mut out);
        let paths: Vec<&str> = out.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "pipeline.sources[1].password",
                "pipeline.sources[2].password"
            ],
            "{out:?}"
        );
        assert!(out[0].reason.contains("rtsp://h9"), "{out:?}");
        assert!(out[1].reason.contains("none is stored"), "{out:?}");
        assert_eq!(new["pipeline"]["sources"][0]["password"], "pb");
        assert_eq!(new["fleet"]["password"], "fp");
    }

    #[test]
    fn push_secrets_are_redacted_and_kept_only_for_the_same_host() {
        let text = "pipeline:\n  sources:\n  - {id: w, url: \"whip:\", publish_token: whip-token-1}\n  sinks:\n  - {kind: push, stream: a, url: rtmp://ingest.example/live, stream_key: sk-1}\n  - {kind: push, stream: a, url: srt://h:9000, passphrase: pass-phrase-1}\noutputs:\n  rtsp: {users: [{name: vms, password: rtsp-pass-1}]}\n  hls: {clients: [{name: cdn, token: hls-token-1}, {name: vms, token: hls-token-2}]}\n";
        let stored = aegis_config::yaml_value(text, "t").unwrap();
        let mut shown = stored.clone();
        redact_yaml(&mut shown);
        let rendered = serde_yaml_ng::to_string(&shown).unwrap();
        for secret in [
            "sk-1",
            "pass-phrase-1",
            "rtsp-pass-1",
            "whip-token-1",
            "hls-token-1",
        ] {
            assert!(!rendered.contains(secret), "{secret} in {rendered}");
        }
        let mut json = serde_json::to_value(&stored).unwrap();
        crate::web::pages::redact(&mut json);
        assert!(!json.to_string().contains("sk-1"), "{json}");
        assert!(!json.to_string().contains("whip-token-1"), "{json}");
        // Sent back as ***: the stored key is kept, unless the push now goes elsewhere.
        let mut back = shown.clone();
        back["pipeline"]["sinks"][1]["url"] = "srt://evil:9000".into();
        let mut out = Vec::new();
        restore_secrets(&mut back, Some(&stored), "", &mut out);
        assert_eq!(back["pipeline"]["sinks"][0]["stream_key"], "sk-1");
        assert_eq!(
            back["pipeline"]["sources"][0]["publish_token"],
            "whip-token-1"
        );
        assert_eq!(
            back["outputs"]["rtsp"]["users"][0]["password"],
            "rtsp-pass-1"
        );
        // Each HLS client keeps its own token (matched by name, not place).
        let mut reordered = shown.clone();
        let clients = reordered["outputs"]["hls"]["clients"]
            .as_sequence_mut()
            .unwrap();
        clients.reverse();
        let mut ignored = Vec::new();
        restore_secrets(&mut reordered, Some(&stored), "", &mut ignored);
        let clients = &reordered["outputs"]["hls"]["clients"];
        assert_eq!(
            (&clients[0]["name"], &clients[0]["token"]),
            (&"vms".into(), &"hls-token-2".into())
        );
        assert_eq!(clients[1]["token"], "hls-token-1");
        let paths: Vec<&str> = out.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["pipeline.sinks[1].passphrase"], "{out:?}");
    }

    #[test]
    fn paths_are_located_in_block_yaml() {
        let text = "device:\n  id: dev0\npipeline:\n  sources:\n  - id: cam0\n    url: a.mp4\n  - id: cam1\n    # a comment\n    url: b.mp4\n  stages: []\nweb:\n  listen: x\n";
        assert_eq!(locate(text, "pipeline.sources[1].url"), Some(9));
        assert_eq!(locate(text, "pipeline.sources[0].id"), Some(5));
        assert_eq!(locate(text, "pipeline.sources[1]"), Some(7));
        assert_eq!(locate(text, "web.listen"), Some(12));
        assert_eq!(locate(text, "device.id"), Some(2));
        // Not there: the closest enclosing line.
        assert_eq!(locate(text, "pipeline.sources[1].loop"), Some(7));
        assert_eq!(locate(text, "pipeline.sinks"), Some(3));
        assert_eq!(locate(text, "nothing.here"), None);
        assert_eq!(locate(text, ""), None);
        // Indented sequences, and a flow list ends the search at its key.
        let t2 = "pipeline:\n  sources:\n    - id: a\n      url: x\n    - id: b\n      url: y\n  sinks: [{kind: discard}]\n";
        assert_eq!(locate(t2, "pipeline.sources[1].url"), Some(6));
        assert_eq!(locate(t2, "pipeline.sinks[0].kind"), Some(7));
    }
}
