//! Signed model rollback orders: the only way a device's model goes *back* a version.
//! Versions otherwise only move forward (an old manifest re-announced is refused as
//! `NotNewer`), so going back needs its own statement, signed by an issuer that may ship
//! models, naming the model, the version to leave and the version to return to.
//!
//! The signed file is shaped as a manifest is: JSON (LF-normalised), then exactly one
//! ```` ```signature ```` block made with [`Purpose::Model`], at most
//! [`MAX_MANIFEST_BYTES`] — one verifier path ([`crate::model`]'s signature, issuer, target
//! and time checks). Sharing the manifests' signature context is safe because the
//! two never parse as each other: both refuse unknown fields and check their `type`, so a
//! signed manifest is never an order (nor the reverse).
//!
//! ```json
//! {
//!   "type": "aegis-model-rollback",
//!   "name": "moderation",
//!   "from_version": 5,                    // the version active now
//!   "to_version": 4,                      // the previous version, kept on the device
//!   "issuer": "fleet-gw-1",
//!   "target": { "devices": [], "groups": ["site-a"] },
//!   "issued_at": "2026-11-26T10:00:00Z",
//!   "expires_at": "2026-12-03T10:00:00Z",
//!   "reason": "false positives on site A"
//! }
//! ```
//!
//! **Replay.** An order carries no sequence number; it cannot apply twice because of what
//! the store requires ([`crate::model_store::ModelStore::rollback_to`]): `active` is
//! `from_version` and `previous` is `to_version`. Applying it deletes `from_version`, and
//! versions only move forward (the store records the highest version ever installed and
//! installs only above it), so `from_version` can never be active again on that device:
//! the same order, replayed at any later time, is refused naming both versions. An order
//! withheld and delivered later still applies only while `from_version` runs with
//! `to_version` kept, and only before `expires_at`.
//!
//! This module decides whether bytes are a valid order for this device; moving versions
//! on disk is the store's, loading and swapping the agent's.

use serde::{Deserialize, Serialize};

use crate::maml;
use crate::model::{
    MAX_MANIFEST_BYTES, ModelContext, ModelRejection, ModelTarget, check_issuer_and_target,
    check_name, check_time, verify_signature,
};
use crate::sign::{PublicKey, Purpose, SecretKey};
use crate::trust::TrustMetadata;

/// `type` of every rollback order.
pub const ROLLBACK_TYPE: &str = "aegis-model-rollback";
/// Longest `reason` (bytes).
pub const MAX_REASON_LEN: usize = 512;

/// A rollback order (the signed part of a signed order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackOrder {
    /// Always [`ROLLBACK_TYPE`].
    #[serde(rename = "type")]
    pub kind_tag: String,
    /// The model (1 to 64 of `[a-z0-9_-]`).
    pub name: String,
    /// The version to leave: must be the device's active version.
    pub from_version: u64,
    /// The version to return to: must be the device's previous version (below
    /// `from_version`, at least 1).
    pub to_version: u64,
    /// Issuer name: must be the trust metadata issuer whose key signed it.
    pub issuer: String,
    /// Devices and groups it is for.
    pub target: ModelTarget,
    /// RFC 3339 UTC.
    pub issued_at: String,
    /// RFC 3339 UTC: refused after.
    pub expires_at: String,
    /// Why (for the audit trail and the receipt): at most [`MAX_REASON_LEN`] bytes, no
    /// control characters; may be empty.
    #[serde(default)]
    pub reason: String,
}

impl RollbackOrder {
    /// Parses and validates order JSON (no signature involved).
    pub fn from_json(bytes: &[u8]) -> Result<RollbackOrder, ModelRejection> {
        let o: RollbackOrder =
            serde_json::from_slice(bytes).map_err(|e| ModelRejection::Order(e.to_string()))?;
        o.validate()?;
        Ok(o)
    }

    /// The format's rules.
    pub fn validate(&self) -> Result<(), ModelRejection> {
        let bad = |m: String| Err(ModelRejection::Order(m));
        if self.kind_tag != ROLLBACK_TYPE {
            return bad(format!("type {:?} is not {ROLLBACK_TYPE}", self.kind_tag));
        }
        check_name(&self.name).map_err(ModelRejection::Order)?;
        if self.to_version == 0 || self.to_version >= self.from_version {
            return bad(format!(
                "to_version {} must be at least 1 and below from_version {}",
                self.to_version, self.from_version
            ));
        }
        if self.issuer.is_empty() {
            return bad("issuer is empty".into());
        }
        if self.target.devices.is_empty() && self.target.groups.is_empty() {
            return bad("target names no device and no group".into());
        }
        let time = |field: &str, v: &str| {
            maml::parse_time(v)
                .ok_or_else(|| ModelRejection::Order(format!("{field} {v:?} is not RFC 3339 UTC")))
        };
        let issued = time("issued_at", &self.issued_at)?;
        let expires = time("expires_at", &self.expires_at)?;
        if expires <= issued {
            return bad(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            ));
        }
        if self.reason.len() > MAX_REASON_LEN || self.reason.chars().any(char::is_control) {
            return bad(format!(
                "reason: at most {MAX_REASON_LEN} bytes without control characters"
            ));
        }
        Ok(())
    }

    /// The order JSON as `chimera model rollback` signs it (pretty, ending in a newline).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).expect("an order serialises");
        out.push(b'\n');
        out
    }
}

/// An order that passed every check of [`verify_rollback_order`]. Only this module makes
/// one (`non_exhaustive`): the store applies what was verified, never what a caller built.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedRollback {
    /// The parsed order (parsed once, from the signed bytes).
    pub order: RollbackOrder,
    /// The key that signed it.
    pub signer: PublicKey,
    /// SHA-256 of the signed bytes (what receipts and audit rows name).
    pub digest: String,
}

/// Signs order JSON: validates it (a gateway must not sign what devices refuse), then
/// appends one signature block for [`Purpose::Model`]. The signed bytes are the
/// LF-normalised JSON, ending in a newline.
pub fn sign_rollback_order(json: &[u8], key: &SecretKey) -> Result<Vec<u8>, ModelRejection> {
    crate::issued::sign_json(
        json,
        key,
        Purpose::Model,
        "rollback order",
        MAX_MANIFEST_BYTES,
        |out| RollbackOrder::from_json(out).map(|_| ()),
        ModelRejection::from,
    )
}

/// The device-side checks of a signed rollback order, in the manifests' order: trust
/// metadata valid now → size and one signature block → issuer key known and not revoked
/// → signature (`aegis-model-v1`) → JSON and format rules → the issuer may ship models
/// (`models: true`) and is the one named → target (this device, and the issuer may target
/// every device and group named) → `issued_at` not beyond trusted time plus skew,
/// `expires_at` after it.
///
/// From `ctx` only the identity, trusted time and skew are used: whether the order fits
/// the device's versions (`active` is `from_version`, `previous` is `to_version`) is the
/// store's check, made where the versions are
/// ([`crate::model_store::ModelStore::rollback_to`]).
pub fn verify_rollback_order(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &ModelContext,
) -> Result<VerifiedRollback, ModelRejection> {
    let s = verify_signature(bytes, trust, ctx.now_s, "rollback order")?;
    let order = RollbackOrder::from_json(&s.signed)?;
    check_issuer_and_target(&s.issuer, &order.issuer, &order.target, &ctx.identity)?;
    check_time(&order.issued_at, Some(&order.expires_at), ctx)?;
    Ok(VerifiedRollback {
        order,
        signer: s.key,
        digest: crate::sha256_hex(&s.signed),
    })
}
