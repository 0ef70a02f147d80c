//! Statements an issuer signs as JSON under the device's trust metadata — model manifests
//! and rollback orders ([`crate::model`], [`crate::model_rollback`]) and firmware orders
//! ([`crate::firmware`]): the steps they share, so that each kind runs them the same way
//! and in the same order.
//!
//! The signed file is the JSON (LF-normalised, ending in a newline) followed by exactly one
//! ```` ```signature ```` block; each kind signs with its own [`Purpose`], so a signature
//! made for one kind never verifies as another's. The signature is checked before a byte
//! of JSON is parsed ([`verify_signature`]); each kind then parses the signed bytes once
//! and runs its own rules, the issuer's grant for that kind and the target rule
//! ([`check_target`]).
//!
//! This module decides nothing about a statement's content.

use crate::device::Identity;
use crate::maml::{self, SignatureBlock};
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};
use crate::trust::{Issuer, TrustMetadata};

/// A signature that verified: the signed bytes and who signed them.
pub(crate) struct SignedBy {
    /// The signed bytes (LF-normalised, no signature block).
    pub(crate) signed: Vec<u8>,
    /// The issuer whose key signed.
    pub(crate) issuer: Issuer,
    /// That key.
    pub(crate) key: PublicKey,
}

/// Why a statement was refused before its signature verified: nothing in it may be named
/// in a signed answer.
#[derive(Debug)]
pub(crate) enum Unverified {
    /// The trust metadata vouches for nothing now.
    Trust(String),
    /// Size, encoding or the signature block's shape.
    Format(String),
    /// Algorithm, key lookup (unknown or revoked) or the signature itself.
    Signature(SignError),
}

/// Splits a signed statement into its signed bytes (LF-normalised) and its one signature
/// block: at most `limit` bytes, exactly one block. A text scan: no JSON is read. The error
/// names `what`.
pub(crate) fn split_one(
    bytes: &[u8],
    what: &str,
    limit: usize,
) -> Result<(Vec<u8>, SignatureBlock), String> {
    if bytes.len() > limit {
        return Err(format!(
            "the signed {what} is {} bytes; the limit is {limit}",
            bytes.len()
        ));
    }
    let text = maml::normalise(bytes);
    let (signed, mut blocks) = maml::split_blocks(&text).map_err(|e| e.to_string())?;
    match blocks.len() {
        1 => Ok((signed, blocks.remove(0))),
        n => Err(format!(
            "a {what} carries exactly one signature block, not {n}"
        )),
    }
}

/// The checks before any JSON is read: trust metadata valid at trusted time `now_s` →
/// size and one signature block → algorithm → issuer key known and not revoked →
/// signature for `purpose`.
pub(crate) fn verify_signature(
    bytes: &[u8],
    trust: &TrustMetadata,
    now_s: i64,
    what: &str,
    limit: usize,
    purpose: Purpose,
) -> Result<SignedBy, Unverified> {
    if let Some(why) = crate::device::trust_expired(trust, now_s) {
        return Err(Unverified::Trust(why));
    }
    let (signed, block) = split_one(bytes, what, limit).map_err(Unverified::Format)?;
    if block.alg != crate::sign::ALG {
        return Err(Unverified::Signature(SignError::Algorithm(block.alg)));
    }
    let (issuer, key) = trust.issuer(&block.key).map_err(Unverified::Signature)?;
    key.verify(&signed, purpose, &block.sig)
        .map_err(Unverified::Signature)?;
    Ok(SignedBy {
        signed,
        issuer,
        key,
    })
}

/// Signs statement JSON for `purpose`: CRLF normalised to LF, a final newline added,
/// `validate` run on the result (a gateway must not sign what devices refuse), then one
/// signature block appended; the signed file may be at most `limit` bytes. Errors come
/// from `validate` or, through `err`, from signing and the size limit.
pub(crate) fn sign_json<E>(
    json: &[u8],
    key: &SecretKey,
    purpose: Purpose,
    what: &str,
    limit: usize,
    validate: impl FnOnce(&[u8]) -> Result<(), E>,
    err: impl Fn(Unverified) -> E,
) -> Result<Vec<u8>, E> {
    let mut out = maml::normalise(json);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    validate(&out)?;
    let block = key
        .sign_block(&out, purpose)
        .map_err(|e| err(Unverified::Signature(e)))?;
    out.extend_from_slice(block.render().as_bytes());
    if out.len() > limit {
        return Err(err(Unverified::Format(format!(
            "the signed {what} is {} bytes; the limit is {limit}",
            out.len()
        ))));
    }
    Ok(out)
}

/// Why a signed statement's target (a model manifest's, a rollback or firmware order's)
/// does not fit this device or its issuer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetRefusal {
    /// It names neither this device nor one of its groups.
    #[error(
        "target: for devices {devices:?} / groups {groups:?}, not this device {device:?} (groups {device_groups:?})"
    )]
    NotForThisDevice {
        /// The statement's devices.
        devices: Vec<String>,
        /// The statement's groups.
        groups: Vec<String>,
        /// This device.
        device: String,
        /// Its groups.
        device_groups: Vec<String>,
    },
    /// It names a device or group its issuer may not target.
    #[error("target: issuer {issuer} may not target {what} {name:?}")]
    IssuerMayNotTarget {
        /// The issuer.
        issuer: String,
        /// `device` or `group`.
        what: &'static str,
        /// The device or group.
        name: String,
    },
}

fn allowed(list: &[String], item: &str) -> bool {
    list.iter().any(|a| a == "*" || a == item)
}

/// The target rule: `devices`/`groups` name this device or one of its groups, and the
/// issuer may target every device and group named (not only the ones that match).
pub(crate) fn check_target(
    issuer: &Issuer,
    devices: &[String],
    groups: &[String],
    me: &Identity,
) -> Result<(), TargetRefusal> {
    let for_me = devices.contains(&me.id) || groups.iter().any(|g| me.groups.contains(g));
    if !for_me {
        return Err(TargetRefusal::NotForThisDevice {
            devices: devices.to_vec(),
            groups: groups.to_vec(),
            device: me.id.clone(),
            device_groups: me.groups.clone(),
        });
    }
    check_issuer_scope(issuer, devices, groups)
}

/// The half of the target rule that needs no device: the issuer may target every device
/// and group named (what a gateway checks before it publishes).
pub(crate) fn check_issuer_scope(
    issuer: &Issuer,
    devices: &[String],
    groups: &[String],
) -> Result<(), TargetRefusal> {
    for (what, names, may) in [
        ("device", devices, &issuer.devices),
        ("group", groups, &issuer.groups),
    ] {
        if let Some(n) = names.iter().find(|n| !allowed(may, n)) {
            return Err(TargetRefusal::IssuerMayNotTarget {
                issuer: issuer.name.clone(),
                what,
                name: n.clone(),
            });
        }
    }
    Ok(())
}
