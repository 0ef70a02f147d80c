//! What the service decides, independent of HTTP: which registry entries become devices,
//! which receipts count as verified, which uploaded workflows are stored, how API tokens
//! are made and recognised. The store only records these decisions.
//!
//! The one rule that matters most here: a receipt is `verified` only when the signing key
//! enrolled for the device it was *received for* verifies it, and it names that device. A
//! device id claimed inside the receipt is never used to pick the key.

use std::path::Path;

use aegis_ota::maml;
use aegis_ota::receipt::{MirrorEntry, Receipt, Verdict};
use aegis_ota::sign::{self, PublicKey, Purpose};
use aegis_ota::trust::TrustMetadata;
use sha2::Digest;

use super::store::{
    Enrolment, GroupEntry, NewReceipt, Store, StoreError, Unenrolment, Workflow, now_ms,
};
use super::store_rollouts::{Answer, TargetChange};

/// Largest receipt accepted (a receipt is a few hundred bytes plus its mirror).
pub(crate) const MAX_RECEIPT_BYTES: usize = 64 * 1024;

/// Clock skew allowed on a workflow's `issued_at` at upload (the devices' default).
const MAX_CLOCK_SKEW_S: i64 = 300;

/// The registry file (`chimera enroll`, `chimera group-key`) as devices and groups; a missing
/// file is an empty registry. Every device's signing key must parse: the key id stored is
/// the one computed from the key, never the one the file claims.
pub(crate) fn read_registry(path: &Path) -> anyhow::Result<(Vec<Enrolment>, Vec<GroupEntry>)> {
    use base64::Engine as _;
    let reg: serde_json::Map<String, serde_json::Value> = match std::fs::read(path) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Default::default(),
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    };
    let mut devices = vec![];
    let mut groups = vec![];
    for (name, entry) in reg {
        let text = |k: &str| entry[k].as_str().map(str::to_string);
        if entry["group"] == true {
            groups.push(GroupEntry {
                name,
                kem_key: text("kem_key"),
            });
            continue;
        }
        let what = |m: &str| anyhow::anyhow!("{}: device {name:?}: {m}", path.display());
        let signing_key = text("signing_key").ok_or_else(|| what("no signing_key"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&signing_key)
            .map_err(|e| what(&format!("signing_key: {e}")))?;
        let key = PublicKey::from_bytes(&bytes).map_err(|e| what(&format!("signing_key: {e}")))?;
        let member_of = match &entry["groups"] {
            serde_json::Value::Null => vec![],
            serde_json::Value::Array(a) => a
                .iter()
                .map(|g| g.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| what("groups: a list of names"))?,
            _ => return Err(what("groups: a list of names")),
        };
        devices.push(Enrolment {
            key_id: key.id().to_string(),
            id: name,
            signing_key,
            kem_key: text("kem_key"),
            groups: member_of,
        });
    }
    Ok((devices, groups))
}

/// A new API token: `chimera_` and 256 random bits in hex. Returns it and its hash.
pub(crate) fn new_token() -> anyhow::Result<(String, String)> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random generator: {e}"))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    let token = format!("chimera_{hex}");
    let hash = token_hash(&token);
    Ok((token, hash))
}

/// The hash a token is stored and looked up by (hex SHA-256: tokens carry 256 random
/// bits, so a slow password hash adds nothing).
pub(crate) fn token_hash(token: &str) -> String {
    aegis_ota::sha256_hex(token.as_bytes())
}

/// What happened to a received receipt.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Ingested {
    /// The stored row's id.
    pub(crate) id: String,
    /// Whether it counts.
    pub(crate) verified: bool,
    /// Why not.
    pub(crate) error: Option<String>,
    /// The document it names (verified receipts only).
    pub(crate) digest: Option<String>,
    /// Its verdict (verified receipts only).
    pub(crate) verdict: Option<String>,
    /// The rollout targets it settled.
    pub(crate) changes: Vec<TargetChange>,
}

/// Records a receipt received for `device` through `chimera serve receipt add --device`:
/// as [`store_receipt`] does for the MQTT ingest, except that a receipt for a device that is
/// not enrolled is audited (a person typed it; the ingest counts such messages instead, so a
/// stranger on the broker cannot fill the audit log), and a model or firmware receipt is an
/// error.
pub(crate) async fn ingest_receipt(
    store: &dyn Store,
    device: &str,
    text: &[u8],
) -> anyhow::Result<Ingested> {
    anyhow::ensure!(
        text.len() <= MAX_RECEIPT_BYTES,
        "receipt for {device:?}: {} bytes, over the {MAX_RECEIPT_BYTES}-byte limit",
        text.len()
    );
    // Model and firmware receipts have their own format and checks (`json_receipts`);
    // ingesting them is for a later slice, so they are refused rather than recorded as
    // failed workflow receipts.
    if let Some(kind) = crate::json_receipts::Kind::of(text) {
        anyhow::bail!(
            "receipt for {device:?}: a {}; chimera serve does not ingest those yet",
            kind.name()
        );
    }
    let Some(key) = device_key(store, device).await? else {
        store
            .audit(
                "system".into(),
                "receipt.refused".into(),
                format!("receipt for {device:?}, which is not an enrolled device"),
            )
            .await?;
        anyhow::bail!("receipt for {device:?}: not an enrolled device");
    };
    Ok(store_receipt(store, &Mirrors::default(), device, &key, text).await?)
}

/// A device's key as the service holds it.
#[derive(Debug, Clone)]
pub(crate) enum DeviceKey {
    /// Enrolled: its key verifies what it sends.
    Enrolled(PublicKey),
    /// Un-enrolled at this time (unix ms): nothing it sends verifies any more.
    Unenrolled(i64),
}

/// The key of `device` (None: never enrolled).
pub(crate) async fn device_key(
    store: &dyn Store,
    device: &str,
) -> anyhow::Result<Option<DeviceKey>> {
    use base64::Engine as _;
    let Some(held) = store.signing_key(device.to_string()).await? else {
        return Ok(None);
    };
    if let Some(at) = held.unenrolled_at {
        return Ok(Some(DeviceKey::Unenrolled(at)));
    }
    let key = base64::engine::general_purpose::STANDARD
        .decode(&held.signing_key)
        .map_err(|e| e.to_string())
        .and_then(|b| PublicKey::from_bytes(&b))
        .map_err(|e| anyhow::anyhow!("device {device:?}: enrolled signing key: {e}"))?;
    Ok(Some(DeviceKey::Enrolled(key)))
}

/// Un-enrols `device` for `actor` (the API's `DELETE /api/v1/devices/{id}` and `chimera
/// serve device unenroll`), audited as `device.unenroll`: see [`Store::unenroll_device`].
pub(crate) async fn unenroll(
    store: &dyn Store,
    device: &str,
    actor: String,
) -> Result<Unenrolment, StoreError> {
    let done = store.unenroll_device(device.to_string()).await?;
    if let Unenrolment::Done(u) = &done {
        store
            .audit(
                actor,
                "device.unenroll".into(),
                format!(
                    "{device}: left groups [{}]; its targets in unfinished rollouts [{}] are \
                     unenrolled; its key verifies nothing it sends from now on; its receipts \
                     stay",
                    u.groups.join(", "),
                    u.rollouts.join(", ")
                ),
            )
            .await?;
    }
    Ok(done)
}

/// The registry file as the service resolves audiences with it (publishing, rollouts):
/// the devices un-enrolled here taken out — the file, which the service never writes, may
/// still list them (a group's members are then the others). Blocking: it reads the file.
pub(crate) fn registry_without(
    path: &Path,
    unenrolled: &[String],
) -> anyhow::Result<crate::gateway::Registry> {
    let mut reg = crate::gateway::registry(path)?;
    for d in unenrolled {
        if reg.get(d).is_some_and(|e| e["group"] != true) {
            reg.remove(d);
        }
    }
    Ok(reg)
}

/// The mirrors of the documents the service holds, by digest, as a receipt that parsed the
/// same document carries them (a few hundred entries at most are kept; documents never
/// change under their digest).
#[derive(Default)]
pub(crate) struct Mirrors(std::sync::Mutex<std::collections::HashMap<String, Vec<MirrorEntry>>>);

impl Mirrors {
    const KEEP: usize = 256;

    /// The mirror of the held document `digest` (None: the service does not hold it).
    pub(crate) async fn of(
        &self,
        store: &dyn Store,
        digest: &str,
    ) -> Result<Option<Vec<MirrorEntry>>, StoreError> {
        if let Some(m) = self.lock().get(digest) {
            return Ok(Some(m.clone()));
        }
        let Some(text) = store.workflow_text(digest.to_string()).await? else {
            return Ok(None);
        };
        let Some(mirror) = maml::split_signed(text.as_bytes())
            .ok()
            .and_then(|(signed, _)| maml::parse(&signed).ok())
            .map(|d| aegis_ota::receipt::mirror(&d))
        else {
            return Ok(None);
        };
        let mut cache = self.lock();
        if cache.len() >= Self::KEEP {
            cache.clear();
        }
        cache.insert(digest.to_string(), mirror.clone());
        Ok(Some(mirror))
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Vec<MirrorEntry>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Judges a receipt received for `device` with `key`, the key enrolled for `device` (from
/// its topic `aegis/v1/{device}/receipts`, or the CLI's `--device`): verified only when
/// `key` verifies it and it names `device`. An unverified row carries nothing taken from the
/// unverified text but the text itself.
pub(crate) fn judge_receipt(
    device: &str,
    key: &PublicKey,
    text: &[u8],
) -> (NewReceipt, Option<Receipt>) {
    let mut row = unverified(device, text);
    match Receipt::verify(text, key) {
        Err(e) => {
            row.error = Some(e.to_string());
            (row, None)
        }
        Ok(r) if r.device != device => {
            row.error = Some(format!(
                "signed by {device:?}'s key but names device {:?}",
                r.device
            ));
            (row, None)
        }
        Ok(r) => {
            row.kind = if r.mode == "trust" {
                "trust"
            } else {
                "workflow"
            }
            .into();
            row.workflow_id = Some(r.workflow_id.clone());
            row.digest = Some(r.workflow_sha256.clone());
            row.verdict = Some(r.verdict.as_str().to_string());
            row.verified = true;
            (row, Some(r))
        }
    }
}

/// A row for `text` received for `device`, not verified (yet): nothing taken from it but
/// the text.
fn unverified(device: &str, text: &[u8]) -> NewReceipt {
    NewReceipt {
        device: device.to_string(),
        kind: "unverified".into(),
        workflow_id: None,
        digest: None,
        verdict: None,
        signed_text: String::from_utf8_lossy(text).into_owned(),
        verified: false,
        error: None,
    }
}

/// Stores a receipt judged by [`judge_receipt`] (from an un-enrolled device: unverified
/// without looking at it, saying so) and, when it is a verified workflow
/// receipt, settles the rollout targets waiting for it: `applied` counts only when the
/// mirror matches the document the service holds under that digest; any other verdict is
/// negative. The verification is CPU work: it runs off the async workers.
pub(crate) async fn store_receipt(
    store: &dyn Store,
    mirrors: &Mirrors,
    device: &str,
    key: &DeviceKey,
    text: &[u8],
) -> Result<Ingested, StoreError> {
    let (row, receipt) = match key {
        DeviceKey::Unenrolled(at) => {
            let mut row = unverified(device, text);
            row.error = Some(format!(
                "device {device:?} was un-enrolled at {}: nothing it sends is verified any more",
                super::auth::rfc3339_ms(*at)
            ));
            (row, None)
        }
        DeviceKey::Enrolled(key) => {
            let (device, key, text) = (device.to_string(), key.clone(), text.to_vec());
            tokio::task::spawn_blocking(move || judge_receipt(&device, &key, &text))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        }
    };
    let (verified, error) = (row.verified, row.error.clone());
    let id = store.add_receipt(row).await?;
    let mut changes = Vec::new();
    if let Some(r) = receipt.as_ref().filter(|r| r.mode != "trust") {
        let expected = mirrors.of(store, &r.workflow_sha256).await?;
        let (negative, reason) = match r.verdict {
            Verdict::Applied if expected.as_ref().is_some_and(|m| *m != r.mirror) => (
                true,
                "applied, but its mirror does not match the document sent".to_string(),
            ),
            Verdict::Applied => (false, r.reason.clone()),
            _ => (true, r.reason.clone()),
        };
        changes = store
            .record_answer(Answer {
                device: device.to_string(),
                digest: r.workflow_sha256.clone(),
                verdict: r.verdict.as_str().to_string(),
                negative,
                reason,
                receipt_id: id.clone(),
            })
            .await?;
    }
    Ok(Ingested {
        id,
        verified,
        error,
        digest: receipt.as_ref().map(|r| r.workflow_sha256.clone()),
        verdict: receipt.as_ref().map(|r| r.verdict.as_str().to_string()),
        changes,
    })
}

/// The signed trust metadata the service checks uploads against: signed by enough of
/// `roots` (the threshold it declares), not expired. Only public keys are involved.
pub(crate) fn load_trust(
    file: &Path,
    roots: &[std::path::PathBuf],
) -> anyhow::Result<TrustMetadata> {
    let bytes =
        std::fs::read(file).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let roots = read_roots(roots)?;
    let (signed, _) = aegis_ota::trust::split(&bytes)
        .map_err(|e| anyhow::anyhow!("trust metadata {}: {e}", file.display()))?;
    let declared: TrustMetadata = serde_json::from_slice(&signed)
        .map_err(|e| anyhow::anyhow!("trust metadata {}: {e}", file.display()))?;
    TrustMetadata::verify_update(
        &bytes,
        &roots,
        declared.root.threshold.max(1),
        0,
        maml::now_s(),
    )
    .map_err(|e| anyhow::anyhow!("trust metadata {}: {e}", file.display()))
}

/// Why an uploaded workflow was refused: the check that failed and what it said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{check}: {message}")]
pub(crate) struct UploadRefused {
    /// `size`, `trust`, `format`, `signature`, `document`, `target`, `time`, `pipeline`.
    pub(crate) check: &'static str,
    /// What failed, with the input.
    pub(crate) message: String,
}

pub(crate) fn refused(check: &'static str, message: impl ToString) -> UploadRefused {
    UploadRefused {
        check,
        message: message.to_string(),
    }
}

/// Checks an uploaded, already signed workflow the way every device it targets would,
/// except what only a device knows (its replay state, its local policy, its sealing keys):
/// size, trust expiry, signature by a non-revoked issuer key (before any YAML is read),
/// origin, targets the issuer may address, validity time, and, when not sealed, the
/// pipeline. `created_by` names the uploader.
pub(crate) fn check_upload(
    doc: &[u8],
    trust: &TrustMetadata,
    now_s: i64,
    created_by: &str,
) -> Result<Workflow, UploadRefused> {
    if doc.len() > maml::MAX_DOCUMENT_BYTES {
        return Err(refused(
            "size",
            format!(
                "{} bytes, over the {}-byte document limit",
                doc.len(),
                maml::MAX_DOCUMENT_BYTES
            ),
        ));
    }
    if let Some(why) = aegis_ota::device::trust_expired(trust, now_s) {
        return Err(refused("trust", why));
    }
    if let Some(at) = doc.iter().position(|b| *b == 0) {
        // Text never holds NUL; PostgreSQL could not store it either.
        return Err(refused("format", format!("a NUL byte at offset {at}")));
    }
    let (signed, block) = maml::split_signed(doc).map_err(|e| refused("format", e))?;
    if block.alg != sign::ALG {
        return Err(refused(
            "signature",
            format!("algorithm {:?}, not {}", block.alg, sign::ALG),
        ));
    }
    let (issuer, key) = trust.issuer(&block.key).map_err(|e| {
        refused(
            "signature",
            format!("{e} (trust metadata version {})", trust.version),
        )
    })?;
    key.verify(&signed, Purpose::Workflow, &block.sig)
        .map_err(|e| refused("signature", e))?;
    let document = maml::parse(&signed).map_err(|e| refused("document", e))?;
    let f = &document.front;
    if f.origin != format!("chimera://{}", issuer.name) {
        return Err(refused(
            "document",
            format!(
                "origin {:?} is not the signing issuer chimera://{}",
                f.origin, issuer.name
            ),
        ));
    }
    check_targets(&issuer, &f.target)?;
    let issued = maml::parse_time(&f.issued_at).unwrap_or(i64::MAX);
    let expires = maml::parse_time(&f.expires_at).unwrap_or(i64::MIN);
    if issued > now_s.saturating_add(MAX_CLOCK_SKEW_S) {
        return Err(refused("time", format!("not valid before {}", f.issued_at)));
    }
    if expires <= now_s {
        return Err(refused("time", format!("expired at {}", f.expires_at)));
    }
    let sealed = f.security.encryption != "none";
    if !sealed {
        // The library's own document check (pipeline schema included), with the key that
        // just verified: a device would refuse what fails here.
        aegis_ota::verify_document(doc, std::slice::from_ref(&key), &[])
            .map_err(|e| refused("pipeline", e))?;
    }
    Ok(Workflow {
        digest: hex(&sha2::Sha256::digest(&signed)),
        id: f.id.clone(),
        sequence: f.sequence,
        issuer: issuer.name.clone(),
        key_id: key.id().to_string(),
        sealed,
        devices: f.target.devices.clone(),
        groups: f.target.groups.clone(),
        created_by: created_by.to_string(),
        created_at: now_ms(),
    })
}

/// The `target` check: every device and group `target` names is one `issuer` may address
/// in the trust metadata (`*` = any), as devices check it.
pub(crate) fn check_targets(
    issuer: &aegis_ota::trust::Issuer,
    target: &maml::Target,
) -> Result<(), UploadRefused> {
    let may = |list: &[String], x: &str| list.iter().any(|a| a == "*" || a == x);
    for d in &target.devices {
        if !may(&issuer.devices, d) {
            return Err(refused(
                "target",
                format!("issuer {} may not target device {d:?}", issuer.name),
            ));
        }
    }
    for g in &target.groups {
        if !may(&issuer.groups, g) {
            return Err(refused(
                "target",
                format!("issuer {} may not target group {g:?}", issuer.name),
            ));
        }
    }
    Ok(())
}

/// Root public key files, read with the key file checks.
pub(crate) fn read_roots(roots: &[std::path::PathBuf]) -> anyhow::Result<Vec<PublicKey>> {
    roots
        .iter()
        .map(|p| PublicKey::read(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display())))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::store::SqliteStore;
    use aegis_ota::receipt::Verdict;
    use aegis_ota::sign::SecretKey;
    use aegis_ota::trust::{Issuer, Roots};

    fn b64(k: &PublicKey) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(k.to_bytes())
    }

    fn receipt(device: &str) -> Receipt {
        Receipt {
            kind: "receipt".into(),
            device: device.into(),
            workflow_id: "urn:uuid:1".into(),
            workflow_sha256: "ab".repeat(32),
            sequence: 1,
            verdict: Verdict::Applied,
            reason: String::new(),
            trust_version: 1,
            at: "2026-12-04T10:00:00Z".into(),
            mode: "in_place".into(),
            apply_ms: None,
            mirror: vec![],
        }
    }

    async fn store_with(devices: &[(&str, &SecretKey)]) -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("chimera.db")).unwrap();
        let enrol = devices
            .iter()
            .map(|(id, k)| Enrolment {
                id: id.to_string(),
                signing_key: b64(k.public()),
                key_id: k.public().id().to_string(),
                kem_key: None,
                groups: vec![],
            })
            .collect();
        s.import_registry(enrol, vec![]).await.unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn a_receipt_counts_only_when_the_enrolled_key_verifies_it_for_that_device() {
        let a = SecretKey::generate().unwrap();
        let b = SecretKey::generate().unwrap();
        let (_dir, s) = store_with(&[("cam-a", &a), ("cam-b", &b)]).await;

        let good = receipt("cam-a").render_signed(&a).unwrap();
        let r = ingest_receipt(&s, "cam-a", good.as_bytes()).await.unwrap();
        assert!(r.verified, "{r:?}");

        // cam-b's key signs a receipt that claims to be cam-a's, received on cam-a's topic:
        // cam-a's key does not verify it.
        let forged = receipt("cam-a").render_signed(&b).unwrap();
        let r = ingest_receipt(&s, "cam-a", forged.as_bytes())
            .await
            .unwrap();
        assert!(!r.verified);
        assert!(r.error.unwrap().contains("signature"));

        // cam-b's own receipt, claiming cam-a, received for cam-b: signature fine, claim not.
        let r = ingest_receipt(&s, "cam-b", forged.as_bytes())
            .await
            .unwrap();
        assert!(!r.verified);
        assert!(r.error.unwrap().contains("names device \"cam-a\""));

        // One flipped byte in the signed part.
        let tampered = good.replace("in_place", "rebuild!");
        let r = ingest_receipt(&s, "cam-a", tampered.as_bytes())
            .await
            .unwrap();
        assert!(!r.verified);

        // A model receipt (its own format): refused, not recorded as a failed one.
        let model = format!(
            "{{\"type\":\"{}\"}}\n",
            aegis_ota::model_wire::MODEL_RECEIPT_TYPE
        );
        let e = ingest_receipt(&s, "cam-a", model.as_bytes())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("model receipt"), "{e}");
        // Nor a firmware receipt, which a workflow receipt's parse would store as failed.
        let firmware = format!(
            "{{\"type\":\"{}\",\"device\":\"cam-a\"}}\n",
            aegis_ota::firmware::RECEIPT_TYPE
        );
        let e = ingest_receipt(&s, "cam-a", firmware.as_bytes())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("a firmware receipt; chimera serve"), "{e}");

        // Not enrolled: refused, not stored, audited.
        let e = ingest_receipt(&s, "ghost", good.as_bytes())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an enrolled device"), "{e}");
        assert!(
            s.audit_log(10)
                .await
                .unwrap()
                .iter()
                .any(|a| a.action == "receipt.refused")
        );

        let stored = s.receipts(Some("cam-a".into()), 10).await.unwrap();
        assert_eq!(stored.len(), 3);
        assert_eq!(stored.iter().filter(|r| r.summary.verified).count(), 1);
        let verified = stored.iter().find(|r| r.summary.verified).unwrap();
        assert_eq!(verified.summary.verdict.as_deref(), Some("applied"));
        // Unverified rows carry no field taken from the unverified text.
        for r in stored.iter().filter(|r| !r.summary.verified) {
            assert_eq!(r.summary.digest, None);
            assert_eq!(r.summary.verdict, None);
        }

        // Un-enrolled: what its key signs from then on is stored, unverified, saying why;
        // what it sent before stays as it was.
        assert!(matches!(
            unenroll(&s, "cam-a", "cli".into()).await.unwrap(),
            Unenrolment::Done(_)
        ));
        let mut later = receipt("cam-a");
        later.at = "2026-12-05T10:00:00Z".into();
        let later = later.render_signed(&a).unwrap();
        let r = ingest_receipt(&s, "cam-a", later.as_bytes()).await.unwrap();
        assert!(!r.verified);
        assert!(
            r.error.as_deref().unwrap().contains("was un-enrolled at"),
            "{r:?}"
        );
        let now = s.receipts(Some("cam-a".into()), 10).await.unwrap();
        assert_eq!(now.len(), 4);
        assert_eq!(now.iter().filter(|r| r.summary.verified).count(), 1);
        assert!(
            s.audit_log(10)
                .await
                .unwrap()
                .iter()
                .any(|a| a.action == "device.unenroll" && a.detail.starts_with("cam-a:"))
        );
    }

    fn trust_for(issuer: &SecretKey, devices: &[&str], expires_in_s: i64) -> TrustMetadata {
        TrustMetadata {
            kind: "aegis-trust".into(),
            version: 3,
            expires_at: maml::format_time(maml::now_s() + expires_in_s),
            root: Roots {
                threshold: 1,
                keys: vec![],
            },
            issuers: vec![Issuer {
                name: "gw-1".into(),
                key: b64(issuer.public()),
                devices: devices.iter().map(|d| d.to_string()).collect(),
                groups: vec![],
                models: false,
                firmware: Default::default(),
            }],
            revoked: vec![],
        }
    }

    fn signed_workflow(key: &SecretKey, device: &str, issuer: &str) -> Vec<u8> {
        let doc = maml::template(
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            issuer,
            device,
            1,
            &maml::format_time(maml::now_s() - 60),
            &maml::format_time(maml::now_s() + 86_400),
        );
        let mut signed = maml::normalise(doc.as_bytes());
        let block = key.sign_block(&signed, Purpose::Workflow).unwrap();
        signed.extend_from_slice(block.render().as_bytes());
        signed
    }

    #[test]
    fn uploads_are_checked_like_a_device_would() {
        let issuer = SecretKey::generate().unwrap();
        let stranger = SecretKey::generate().unwrap();
        let now = maml::now_s();
        let trust = trust_for(&issuer, &["cam-1"], 86_400);
        let doc = signed_workflow(&issuer, "cam-1", "gw-1");
        let w = check_upload(&doc, &trust, now, "token:ci").unwrap();
        assert_eq!(w.devices, vec!["cam-1".to_string()]);
        assert_eq!(w.digest.len(), 64);
        assert!(!w.sealed);

        let check = |doc: &[u8], trust: &TrustMetadata| {
            check_upload(doc, trust, now, "t").unwrap_err().check
        };
        // Signed by a key the trust metadata does not name.
        assert_eq!(
            check(&signed_workflow(&stranger, "cam-1", "gw-1"), &trust),
            "signature"
        );
        // One byte changed after signing.
        let mut tampered = doc.clone();
        let i = tampered.windows(5).position(|w| w == b"cam-1").unwrap();
        tampered[i + 4] = b'2';
        assert_eq!(check(&tampered, &trust), "signature");
        // A device the issuer may not target.
        assert_eq!(
            check(&signed_workflow(&issuer, "cam-9", "gw-1"), &trust),
            "target"
        );
        // An origin that is not the signer.
        assert_eq!(
            check(&signed_workflow(&issuer, "cam-1", "gw-2"), &trust),
            "document"
        );
        // Expired trust metadata vouches for nothing.
        assert_eq!(check(&doc, &trust_for(&issuer, &["cam-1"], -10)), "trust");
        // Revoked issuer key.
        let mut revoked = trust.clone();
        revoked.revoked.push(issuer.public().id().to_string());
        assert_eq!(check(&doc, &revoked), "signature");
        // Not a signed document at all.
        assert_eq!(check(b"hello", &trust), "format");
        // Too big.
        assert_eq!(
            check(&vec![b'a'; maml::MAX_DOCUMENT_BYTES + 1], &trust),
            "size"
        );
    }
}
