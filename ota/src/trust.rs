//! Trust metadata (TUF's lessons): offline root keys (k of n) sign a versioned, expiring
//! document naming the issuer keys, what each may target, and the revoked keys. A device
//! accepts new metadata only when a threshold of its *current* root keys signed it (and, when
//! the roots rotate, a threshold of the new ones too), its version is higher than the one it
//! holds, and it has not expired; so rollback, freeze (via expiry), mix-and-match (one
//! document holds the whole set) and a single stolen root key do not work.
//!
//! File format: the JSON document, then one ```` ```signature ```` block per root signature.
//! The signed bytes are the file up to the first signature block (LF-normalised), as for
//! workflows; the context is `aegis-trust-v1`.

use serde::{Deserialize, Serialize};

use crate::maml::{self, MamlError, SignatureBlock};
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};

/// An issuer key and what it may target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Issuer {
    /// Name (`origin: chimera://NAME` in its workflows).
    pub name: String,
    /// Base64 ML-DSA-65 public key.
    pub key: String,
    /// Devices it may target (`*` = any).
    #[serde(default)]
    pub devices: Vec<String>,
    /// Groups it may target (`*` = any).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Whether it may ship model bundles (signed model manifests) to those devices and
    /// groups. Absent means no: a key trusted for workflows gains no new power when devices
    /// learn about models. Written only when true, so metadata that grants no issuer models
    /// stays readable by agents that predate the field (they refuse unknown fields).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub models: bool,
    /// Whether it may order firmware installs (signed firmware orders) for those devices
    /// and groups, and whether downgrades too. Absent means no, as for `models`; written
    /// only when granted, so metadata that grants no firmware stays readable by agents that
    /// predate the field.
    #[serde(default, skip_serializing_if = "FirmwareGrant::is_none")]
    pub firmware: FirmwareGrant,
}

/// What an issuer may order of a device's firmware (`firmware` in its trust metadata
/// entry).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FirmwareGrant {
    /// Nothing (the default; the field is then left out).
    #[default]
    None,
    /// Installs of a version above the running one.
    Upgrades,
    /// Installs of any other version: upgrades, and downgrades when an order says
    /// `downgrade: true`.
    UpgradesAndDowngrades,
}

impl FirmwareGrant {
    /// Whether nothing is granted.
    pub fn is_none(&self) -> bool {
        *self == FirmwareGrant::None
    }
}

/// The root of trust: keys and how many must sign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roots {
    /// Signatures needed.
    pub threshold: u32,
    /// Base64 ML-DSA-65 public keys.
    pub keys: Vec<String>,
}

/// The trust metadata document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustMetadata {
    /// `aegis-trust`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Strictly increasing.
    pub version: u64,
    /// RFC 3339 UTC; expired metadata is refused (withheld updates are noticed).
    pub expires_at: String,
    /// The root keys from this version on.
    pub root: Roots,
    /// Issuer keys.
    pub issuers: Vec<Issuer>,
    /// Revoked key ids.
    #[serde(default)]
    pub revoked: Vec<String>,
}

/// Why trust metadata was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    /// The file's shape.
    #[error("trust metadata: {0}")]
    Format(String),
    /// Not enough valid root signatures.
    #[error(
        "trust metadata version {version}: {valid} valid signatures by {what} root keys, {needed} needed"
    )]
    Threshold {
        /// The version offered.
        version: u64,
        /// Valid signatures found.
        valid: u32,
        /// Needed.
        needed: u32,
        /// `current` or `new`.
        what: &'static str,
    },
    /// Not newer than what the device holds.
    #[error(
        "trust metadata version {offered} is not newer than the version {held} this device holds (rollback)"
    )]
    Rollback {
        /// Offered.
        offered: u64,
        /// Held.
        held: u64,
    },
    /// Expired.
    #[error("trust metadata version {version} expired at {expires_at}")]
    Expired {
        /// Version.
        version: u64,
        /// When.
        expires_at: String,
    },
}

fn fmt_err(e: impl std::fmt::Display) -> TrustError {
    TrustError::Format(e.to_string())
}

/// Splits a signed trust file into signed bytes and its signature blocks.
pub fn split(file: &[u8]) -> Result<(Vec<u8>, Vec<SignatureBlock>), TrustError> {
    maml::split_blocks(&maml::normalise(file)).map_err(|e: MamlError| fmt_err(e))
}

/// Counts distinct valid signatures over `signed` by keys in `roots`. Each root key's
/// first block is verified and nothing else: a file stuffed with copies of blocks (or blocks
/// of keys that are not roots) costs at most one ML-DSA verification per root.
fn valid_signatures(signed: &[u8], blocks: &[SignatureBlock], roots: &[PublicKey]) -> u32 {
    let mut tried = std::collections::HashSet::new();
    let mut valid = 0;
    for b in blocks {
        if !roots.iter().any(|r| r.id() == b.key) || !tried.insert(b.key.as_str()) {
            continue;
        }
        if crate::sign::verify_block(signed, b, Purpose::Trust, roots).is_ok() {
            valid += 1;
        }
    }
    valid
}

/// Decodes the base64 keys of a root set.
pub fn keys_of(list: &[String]) -> Result<Vec<PublicKey>, TrustError> {
    use base64::Engine as _;
    list.iter()
        .map(|k| {
            let b = base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .map_err(fmt_err)?;
            PublicKey::from_bytes(&b).map_err(TrustError::Format)
        })
        .collect()
}

impl TrustMetadata {
    /// Verifies an update against what the device holds (`current` roots and version) at
    /// trusted time `now_s`, returning the new metadata.
    pub fn verify_update(
        file: &[u8],
        current_roots: &[PublicKey],
        current_threshold: u32,
        held_version: u64,
        now_s: i64,
    ) -> Result<TrustMetadata, TrustError> {
        let (signed, blocks) = split(file)?;
        let meta: TrustMetadata = serde_json::from_slice(&signed).map_err(fmt_err)?;
        if meta.kind != "aegis-trust" {
            return Err(TrustError::Format(format!(
                "type {:?} is not aegis-trust",
                meta.kind
            )));
        }
        let valid = valid_signatures(&signed, &blocks, current_roots);
        if valid < current_threshold.max(1) {
            return Err(TrustError::Threshold {
                version: meta.version,
                valid,
                needed: current_threshold.max(1),
                what: "current",
            });
        }
        // A rotation must also be accepted by the new roots (TUF): proves they exist and work.
        let new_roots = keys_of(&meta.root.keys)?;
        let valid_new = valid_signatures(&signed, &blocks, &new_roots);
        if valid_new < meta.root.threshold.max(1) {
            return Err(TrustError::Threshold {
                version: meta.version,
                valid: valid_new,
                needed: meta.root.threshold.max(1),
                what: "new",
            });
        }
        if meta.version <= held_version {
            return Err(TrustError::Rollback {
                offered: meta.version,
                held: held_version,
            });
        }
        let expires = maml::parse_time(&meta.expires_at).ok_or_else(|| {
            TrustError::Format(format!(
                "expires_at {:?} is not RFC 3339 UTC",
                meta.expires_at
            ))
        })?;
        if expires <= now_s {
            return Err(TrustError::Expired {
                version: meta.version,
                expires_at: meta.expires_at.clone(),
            });
        }
        Ok(meta)
    }

    /// The issuer with key id `id`: [`SignError::Revoked`] when the key is revoked (checked
    /// first: a revoked key is refused as revoked, whatever it signed), otherwise
    /// [`SignError::UnknownKey`] when no issuer has it.
    pub fn issuer(&self, id: &str) -> Result<(Issuer, PublicKey), SignError> {
        if self.revoked.iter().any(|r| r == id) {
            return Err(SignError::Revoked {
                key: id.to_string(),
            });
        }
        for i in &self.issuers {
            if let Ok(mut keys) = keys_of(std::slice::from_ref(&i.key))
                && let Some(k) = keys.pop()
                && k.id() == id
            {
                return Ok((i.clone(), k));
            }
        }
        Err(SignError::UnknownKey(id.to_string()))
    }

    /// Issuer public keys that are not revoked.
    pub fn issuer_keys(&self) -> Vec<PublicKey> {
        self.issuers
            .iter()
            .filter_map(|i| keys_of(std::slice::from_ref(&i.key)).ok()?.pop())
            .filter(|k| !self.revoked.iter().any(|r| r == k.id()))
            .collect()
    }

    /// The signed file: JSON plus one signature block per root key in `signers`.
    pub fn sign(&self, signers: &[&SecretKey]) -> Result<Vec<u8>, SignError> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| SignError::Malformed(e.to_string()))?;
        out.push(b'\n');
        let signed = out.clone();
        for k in signers {
            out.extend_from_slice(k.sign_block(&signed, Purpose::Trust)?.render().as_bytes());
        }
        Ok(out)
    }
}
