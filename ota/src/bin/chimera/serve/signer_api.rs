//! `POST /api/v1/workflows/sign`: the service signs (and seals) a draft with its online
//! issuer key ([`super::signer`]). The draft is checked as devices would check the result
//! (origin, targets the issuer may address, pipeline) before anything is allotted; the
//! store allots the sequence and issue time in one transaction; the body is sealed with the
//! library's `seal::seal` for the registry's ML-KEM keys (as `chimera seal --to`), signed
//! with the library's `sign_workflow` (as `chimera sign`), verified exactly as an upload is
//! (`service::check_upload`), stored in the uploads' table and audited.
//!
//! What it must not do: sign a document the trust metadata does not let its issuer sign,
//! or store one that did not pass the upload checks.

use std::path::Path;
use std::sync::Arc;

use aegis_ota::maml::{self, Document};
use aegis_ota::seal::SealPublic;
use aegis_ota::trust::{Issuer, TrustMetadata};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Extension, State};
use axum::http::{Method, StatusCode};
use axum::routing::post;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::api::{ApiError, AppState, Caller, Route};
use super::service::{self, UploadRefused, refused};
use super::signer::{Signer, SignerError};
use super::store::{Role, Workflow};
use super::store_signing::{Issue, IssueRequest};
use crate::gateway;

/// The routes of this module.
pub(crate) static ROUTES: &[Route] = &[Route {
    method: Method::POST,
    path: "/api/v1/workflows/sign",
    role: Some(Role::Operator),
    summary: "Sign an unsigned draft with the service's online issuer key (never the root): \
              the service sets `sequence` (the next for its key and the draft's target), \
              `issued_at` and `expires_at`, seals the body for `seal`'s recipients (their \
              ML-KEM keys in the registry) when asked, signs, verifies the result as uploads \
              are verified and stores it as an uploaded workflow.",
    params: &[],
    body: Some((
        "`draft` (the unsigned `.maml.md` text), `seal` (optional: `devices`, `groups`), \
         `valid_for_s` (optional); no other field.",
        |g| g.subschema_for::<SignRequest>(),
    )),
    ok: 201,
    response: Some(|g| g.subschema_for::<SignedWorkflow>()),
    make: || post(sign),
}];

/// Validity when `valid_for_s` is not given: a week (`chimera new`'s default).
const DEFAULT_VALID_S: u64 = 7 * 86_400;
/// Shortest validity accepted.
const MIN_VALID_S: u64 = 60;
/// Longest validity accepted: 90 days (a long-lived document is a long replay window for
/// devices that never got a newer one).
const MAX_VALID_S: u64 = 90 * 86_400;

/// `POST /api/v1/workflows/sign`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SignRequest {
    /// The unsigned workflow (`.maml.md` as `chimera new` writes it, at most 128 KiB). Its
    /// `origin` must be `chimera://ISSUER` of the service's key and `security.encryption`
    /// `none`; its `sequence` is a floor (the service assigns the next one for its key and
    /// the target, at least this); `issued_at` and `expires_at` are replaced. Each of the
    /// three must be a top-level `key: value` line of the front matter.
    draft: String,
    /// Seal the body (before signing) for these recipients of the registry, each one the
    /// draft targets: enrolled devices with an ML-KEM key (`chimera enroll --kem`) and
    /// groups with a group key (`chimera group-key`).
    #[serde(default)]
    seal: Option<SealTo>,
    /// How long the document is valid from its issue time, in seconds (60 to 7776000;
    /// default 604800, a week).
    #[serde(default)]
    valid_for_s: Option<u64>,
}

/// Who a signed document is sealed for.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SealTo {
    /// Enrolled devices (their own ML-KEM keys).
    #[serde(default)]
    devices: Vec<String>,
    /// Groups (their group keys, which every member holds).
    #[serde(default)]
    groups: Vec<String>,
}

/// What signing answers.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct SignedWorkflow {
    /// The stored record, as an upload answers it.
    workflow: Workflow,
    /// The signed document, as stored and as devices get it.
    document: String,
    /// Its `issued_at`.
    issued_at: String,
    /// Its `expires_at`.
    expires_at: String,
    /// The ML-KEM key ids it is sealed for (empty: not sealed).
    sealed_for: Vec<String>,
}

/// A draft that passed the checks, with its sealing recipients.
pub(crate) struct CheckedDraft {
    /// LF-normalised, ending in a newline.
    text: String,
    parsed: Document,
    recipients: Vec<SealPublic>,
}

/// The checks a draft passes before anything is allotted for it, in order: `size`,
/// `trust` (not expired), `format` (not signed already), `document` (parses with the
/// devices' parser, `origin` is the signer's issuer, not sealed, its sequence and times can
/// be set), `target` (the issuer may address every device and group: the trust metadata's
/// rule), `pipeline` (the devices' pipeline schema), `seal` (each recipient is targeted and
/// has a sealing key in the registry).
pub(crate) fn check_draft(
    draft: &str,
    issuer: &Issuer,
    trust: &TrustMetadata,
    seal: Option<&SealTo>,
    registry: &Path,
    now_s: i64,
) -> Result<CheckedDraft, UploadRefused> {
    if draft.len() > maml::MAX_DOCUMENT_BYTES {
        return Err(refused(
            "size",
            format!(
                "{} bytes, over the {}-byte document limit",
                draft.len(),
                maml::MAX_DOCUMENT_BYTES
            ),
        ));
    }
    if let Some(why) = aegis_ota::device::trust_expired(trust, now_s) {
        return Err(refused("trust", why));
    }
    if maml::split_signed(draft.as_bytes()).is_ok() {
        return Err(refused(
            "format",
            "the draft is signed already: upload it (POST /api/v1/workflows), or send it \
             without its signature block",
        ));
    }
    let mut text = String::from_utf8(maml::normalise(draft.as_bytes()))
        .map_err(|e| refused("format", format!("not UTF-8: {e}")))?;
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let parsed = maml::parse(text.as_bytes()).map_err(|e| refused("document", e))?;
    let f = &parsed.front;
    let origin = format!("chimera://{}", issuer.name);
    if f.origin != origin {
        return Err(refused(
            "document",
            format!(
                "origin {:?}: this service signs as {origin} (its key is that issuer's)",
                f.origin
            ),
        ));
    }
    if f.security.encryption != "none" {
        return Err(refused(
            "document",
            format!(
                "security.encryption {:?}: a draft is cleartext (`none`); ask for sealing \
                 with `seal`",
                f.security.encryption
            ),
        ));
    }
    service::check_targets(issuer, &f.target)?;
    aegis_ota::check_pipeline(&parsed).map_err(|e| refused("pipeline", e))?;
    // Its own values set back: proves the three lines can be set before a sequence is
    // allotted for it.
    maml::stamp(&text, &parsed, f.sequence, &f.issued_at, &f.expires_at)
        .map_err(|e| refused("document", e))?;
    let recipients = match seal {
        None => vec![],
        Some(to) => seal_recipients(to, &f.target, registry).map_err(|e| refused("seal", e))?,
    };
    Ok(CheckedDraft {
        text,
        parsed,
        recipients,
    })
}

/// The sealing keys of `to`: each device enrolled, targeted (by id or through a targeted
/// group) and holding an ML-KEM key; each group targeted and holding a group key.
fn seal_recipients(
    to: &SealTo,
    target: &maml::Target,
    registry: &Path,
) -> anyhow::Result<Vec<SealPublic>> {
    anyhow::ensure!(
        !to.devices.is_empty() || !to.groups.is_empty(),
        "name at least one device or group to seal for"
    );
    let reg = gateway::registry(registry)?;
    let mut keys: Vec<SealPublic> = Vec::new();
    for d in &to.devices {
        let entry = reg.get(d).filter(|e| e["group"] != true);
        anyhow::ensure!(
            entry.is_some(),
            "{d:?} is not an enrolled device in {}",
            registry.display()
        );
        let targeted = target.devices.contains(d)
            || target
                .groups
                .iter()
                .any(|g| gateway::members(&reg, g).contains(d));
        anyhow::ensure!(
            targeted,
            "the draft does not target device {d:?}: it could not apply it"
        );
        keys.push(gateway::sealing_key(&reg, registry, d)?);
    }
    for g in &to.groups {
        anyhow::ensure!(
            target.groups.contains(g),
            "the draft does not target group {g:?}"
        );
        keys.push(gateway::sealing_key(&reg, registry, g)?);
    }
    let mut seen = std::collections::HashSet::new();
    keys.retain(|k| seen.insert(k.id().to_string()));
    Ok(keys)
}

/// A failure after the draft was accepted: the status and the check.
type Failure = (StatusCode, UploadRefused);

/// Sets the allotted sequence and times, seals, signs, and verifies the result as an
/// upload is verified. Returns the answer (the record, the signed text, what was set).
fn make(
    checked: &CheckedDraft,
    issue: Issue,
    valid_for_s: u64,
    signer: &Signer,
    trust: &TrustMetadata,
    actor: &str,
) -> Result<SignedWorkflow, Failure> {
    let internal =
        |check: &'static str, m: String| (StatusCode::INTERNAL_SERVER_ERROR, refused(check, m));
    let issued_at = maml::format_time(issue.issued_at_s);
    let expires_s = issue
        .issued_at_s
        .saturating_add(i64::try_from(valid_for_s).unwrap_or(i64::MAX));
    let expires_at = maml::format_time(expires_s);
    let (text, _) = maml::stamp(
        &checked.text,
        &checked.parsed,
        issue.sequence,
        &issued_at,
        &expires_at,
    )
    .map_err(|e| internal("document", e.to_string()))?;
    let text = if checked.recipients.is_empty() {
        text
    } else {
        aegis_ota::seal::seal(&text, &checked.recipients)
            .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, refused("seal", e)))?
    };
    let signed = signer.sign(text.as_bytes()).map_err(|e| match e {
        SignerError::Token(_) | SignerError::WrongKey { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            refused(
                "signer",
                format!("{e} (the service needs a restart once the token works)"),
            ),
        ),
        SignerError::Sign(e) => internal("signer", e.to_string()),
    })?;
    let w = service::check_upload(&signed, trust, maml::now_s(), actor)
        .map_err(|r| (StatusCode::INTERNAL_SERVER_ERROR, r))?;
    let document = String::from_utf8(signed).map_err(|e| internal("format", e.to_string()))?;
    Ok(SignedWorkflow {
        workflow: w,
        document,
        issued_at,
        expires_at,
        sealed_for: checked
            .recipients
            .iter()
            .map(|k| k.id().to_string())
            .collect(),
    })
}

/// Runs CPU or file work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
}

async fn sign(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<SignRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SignedWorkflow>), ApiError> {
    let Json(req) = body?;
    let (Some(signer), Some(trust)) = (s.signer.clone(), s.trust.clone()) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this service has no online issuer key to sign with (serve.yaml: signer)",
        ));
    };
    let actor = caller.actor();
    let valid_for_s = req.valid_for_s.unwrap_or(DEFAULT_VALID_S);
    let checked = if (MIN_VALID_S..=MAX_VALID_S).contains(&valid_for_s) {
        let (signer, trust, registry) =
            (Arc::clone(&signer), Arc::clone(&trust), s.registry.clone());
        blocking(move || {
            check_draft(
                &req.draft,
                signer.issuer(),
                &trust,
                req.seal.as_ref(),
                &registry,
                maml::now_s(),
            )
        })
        .await?
    } else {
        Err(refused(
            "time",
            format!("valid_for_s: {valid_for_s} is not in {MIN_VALID_S}..={MAX_VALID_S}"),
        ))
    };
    let checked = match checked {
        Ok(c) => c,
        Err(r) => {
            s.store
                .audit(actor, "workflow.sign_refused".into(), r.to_string())
                .await?;
            return Err(ApiError::refused(StatusCode::UNPROCESSABLE_ENTITY, &r));
        }
    };
    let issue = s
        .store
        .issue_sequence(IssueRequest {
            key_id: signer.key_id().to_string(),
            target: checked.parsed.front.target.canonical(),
            floor: checked.parsed.front.sequence,
            now_s: maml::now_s(),
        })
        .await?;
    let made = {
        let (signer, trust, actor) = (signer.clone(), trust.clone(), actor.clone());
        blocking(move || make(&checked, issue, valid_for_s, &signer, &trust, &actor)).await?
    };
    let signed = match made {
        Ok(m) => m,
        Err((status, r)) => {
            s.store
                .audit(
                    actor,
                    "workflow.sign_failed".into(),
                    format!("sequence {} allotted, not used: {r}", issue.sequence),
                )
                .await?;
            return Err(ApiError::refused(status, &r));
        }
    };
    let w = &signed.workflow;
    s.store
        .add_workflow(w.clone(), signed.document.clone())
        .await?;
    s.store
        .audit(
            actor,
            "workflow.sign".into(),
            format!(
                "{} sequence {} digest {} signed as issuer {} with key {} ({}); targets {}; \
                 issued {}, expires {}; sealed for {}",
                w.id,
                w.sequence,
                w.digest,
                w.issuer,
                w.key_id,
                signer.describe(),
                checked_target(w),
                signed.issued_at,
                signed.expires_at,
                if signed.sealed_for.is_empty() {
                    "nobody (cleartext)".to_string()
                } else {
                    signed.sealed_for.join(", ")
                }
            ),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(signed)))
}

/// The record's target, canonical.
fn checked_target(w: &Workflow) -> String {
    maml::Target {
        devices: w.devices.clone(),
        groups: w.groups.clone(),
    }
    .canonical()
}
