//! ML-DSA-65 (FIPS 204) keys, signatures and key files (RustCrypto `ml-dsa`: pure Rust,
//! maintained; the PQClean-based `pqcrypto-*` crates are unmaintained). Every signature is
//! made with a per-purpose context string, so a signature made for one purpose (a receipt)
//! can never be replayed as another (a workflow).
//!
//! Key files are text: a type line, then base64. The secret file holds the 32-byte seed
//! (the whole key; the expanded key is derived), is written 0600 and zeroized in memory.
//!
//! What is wiped (the workspace enables `ml-dsa`'s `zeroize` feature): a [`SecretKey`]'s
//! seed and expanded key (`SigningKey` and `ExpandedSigningKey` are `ZeroizeOnDrop`: `rho`,
//! `K`, `tr`, `s1`, `s2`, `t0` and their NTT forms), the seed while it is generated, read or
//! written (only ever in `Zeroizing` buffers, never copied into a plain array), and the key
//! file's text. What is not: the public key and signatures (not secret); stack temporaries
//! inside `ml-dsa` (SHAKE state and masking vectors while deriving a key or signing; the
//! crate wipes some of them itself) and copies the compiler makes when it moves values —
//! Rust offers no way to wipe those; they are overwritten by later calls.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ml_dsa::{
    EncodedSignature, EncodedVerifyingKey, MlDsa65, Seed, Signature, SigningKey, VerifyingKey,
};
use sha2::Digest;
use zeroize::Zeroizing;

use crate::maml::SignatureBlock;

/// The signature algorithm's name in documents.
pub const ALG: &str = "ml-dsa-65";

/// What a signature is for (its FIPS 204 context string).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A `.maml.md` workflow.
    Workflow,
    /// Root-signed trust metadata.
    Trust,
    /// A model manifest.
    Model,
    /// A firmware order (`crate::firmware`).
    Firmware,
    /// A device's `.mu` receipt.
    Receipt,
    /// A key delivered to a device (group sealing keys).
    KeyDelivery,
    /// A device's statement about an evidence clip (`crate::evidence`).
    Evidence,
}

impl Purpose {
    /// The context string.
    pub fn context(self) -> &'static [u8] {
        match self {
            Purpose::Workflow => b"aegis-workflow-v1",
            Purpose::Trust => b"aegis-trust-v1",
            Purpose::Model => b"aegis-model-v1",
            Purpose::Firmware => b"aegis-firmware-v1",
            Purpose::Receipt => b"aegis-receipt-v1",
            Purpose::KeyDelivery => b"aegis-key-v1",
            Purpose::Evidence => b"aegis-evidence-v1",
        }
    }
}

/// Key and signature errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// A key file could not be read or written.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The signature block names an algorithm this device does not accept.
    #[error("signature algorithm {0:?} is not accepted (only {ALG})")]
    Algorithm(String),
    /// No trusted key has this id.
    #[error("unknown signing key {0}")]
    UnknownKey(String),
    /// The signature is not valid base64 or has the wrong length.
    #[error("malformed signature: {0}")]
    Malformed(String),
    /// The signature does not verify over these bytes with this key and purpose.
    #[error("bad signature by key {0}: the document was altered or signed for another purpose")]
    Invalid(String),
    /// The key is listed as revoked in the device's trust metadata (whatever it signed).
    #[error("signing key {key} is revoked by the device's trust metadata")]
    Revoked {
        /// The key id.
        key: String,
    },
}

/// A public key with its id.
#[derive(Clone)]
pub struct PublicKey {
    key: VerifyingKey<MlDsa65>,
    id: String,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.id)
    }
}

/// A secret key. Its seed and expanded key are wiped on drop by `ml-dsa` (the `zeroize`
/// feature: `SigningKey<MlDsa65>` is `ZeroizeOnDrop`); the public half is not secret.
pub struct SecretKey {
    key: SigningKey<MlDsa65>,
    public: PublicKey,
}

// Every secret field is `ZeroizeOnDrop` (asserted in the tests), so the whole key is.
impl zeroize::ZeroizeOnDrop for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public.id)
    }
}

/// `mldsa65:` + the first 16 hex digits of the SHA-256 of the encoded public key.
fn key_id(encoded: &[u8]) -> String {
    let h = sha2::Sha256::digest(encoded);
    let hex: String = h.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("mldsa65:{hex}")
}

const PUBLIC_HEADER: &str = "aegis ml-dsa-65 public key";
const SECRET_HEADER: &str = "aegis ml-dsa-65 secret key (seed)";

impl PublicKey {
    /// From the FIPS 204 encoding.
    pub fn from_bytes(b: &[u8]) -> Result<PublicKey, String> {
        let enc = EncodedVerifyingKey::<MlDsa65>::try_from(b)
            .map_err(|_| format!("a public key is 1952 bytes, not {}", b.len()))?;
        Ok(PublicKey {
            key: VerifyingKey::decode(&enc),
            id: key_id(b),
        })
    }
    /// The FIPS 204 encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.key.encode().to_vec()
    }
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The key file text.
    pub fn to_file_text(&self) -> String {
        crate::keyfile::text(PUBLIC_HEADER, &self.to_bytes())
    }
    /// Writes the key file, mode 0644 whatever the umask (replacing an existing file, never
    /// through a symbolic link), so that [`PublicKey::read`] accepts it.
    pub fn write(&self, path: &Path) -> Result<(), SignError> {
        crate::keyfile::write_public(path, &self.to_file_text()).map_err(key_file)
    }
    /// Reads a key file: a regular file (not a symbolic link) of at most 64 KB, owned by
    /// root or by this process's user, not writable by group or others.
    pub fn read(path: &Path) -> Result<PublicKey, SignError> {
        let bytes = crate::keyfile::read_public(path, PUBLIC_HEADER).map_err(key_file)?;
        PublicKey::from_bytes(&bytes)
            .map_err(|reason| key_file((path.display().to_string(), reason)))
    }

    /// Verifies `block` over `signed` for `purpose`.
    pub fn verify(&self, signed: &[u8], purpose: Purpose, sig_b64: &str) -> Result<(), SignError> {
        let bytes = B64
            .decode(sig_b64.trim())
            .map_err(|e| SignError::Malformed(format!("base64: {e}")))?;
        let enc = EncodedSignature::<MlDsa65>::try_from(bytes.as_slice()).map_err(|_| {
            SignError::Malformed(format!(
                "{} bytes, an ML-DSA-65 signature is 3309",
                bytes.len()
            ))
        })?;
        let sig = Signature::<MlDsa65>::decode(&enc)
            .ok_or_else(|| SignError::Malformed("not a valid signature encoding".into()))?;
        if self
            .key
            .verify_with_context(signed, purpose.context(), &sig)
        {
            Ok(())
        } else {
            Err(SignError::Invalid(self.id.clone()))
        }
    }
}

impl SecretKey {
    /// A fresh key from the OS random generator (the seed is generated in place in a
    /// zeroizing buffer).
    pub fn generate() -> Result<SecretKey, SignError> {
        let mut seed = Zeroizing::new(Seed::default());
        getrandom::fill(seed.as_mut_slice()).map_err(|e| SignError::KeyFile {
            path: "(random generator)".into(),
            reason: e.to_string(),
        })?;
        Ok(SecretKey::from_seed(&seed))
    }

    /// The key of `seed` (borrowed: `ml-dsa` keeps its own copy, wiped on drop).
    fn from_seed(seed: &Seed) -> SecretKey {
        let key = SigningKey::<MlDsa65>::from_seed(seed);
        let vk: &VerifyingKey<MlDsa65> = key.as_ref();
        let vk = vk.clone();
        let encoded = vk.encode();
        SecretKey {
            public: PublicKey {
                id: key_id(&encoded),
                key: vk,
            },
            key,
        }
    }

    /// Its public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// Signs `message` for `purpose` (deterministic FIPS 204 variant: no dependence on a
    /// random generator at signing time).
    pub fn sign(&self, message: &[u8], purpose: Purpose) -> Result<String, SignError> {
        let sig = self
            .key
            .expanded_key()
            .sign_deterministic(message, purpose.context())
            .map_err(|_| SignError::Malformed("signing failed".into()))?;
        Ok(B64.encode(sig.encode()))
    }

    /// A signature block over `signed` (LF-normalised document bytes) for `purpose`.
    pub fn sign_block(&self, signed: &[u8], purpose: Purpose) -> Result<SignatureBlock, SignError> {
        Ok(SignatureBlock {
            alg: ALG.into(),
            key: self.public.id.clone(),
            sig: self.sign(signed, purpose)?,
        })
    }

    /// Writes the secret key file (mode 0600, created new: never overwrites a key; the
    /// seed is encoded from the key's own storage, in a zeroizing buffer).
    pub fn write(&self, path: &Path) -> Result<(), SignError> {
        crate::keyfile::write_secret(path, SECRET_HEADER, self.key.as_seed().as_slice())
            .map_err(key_file)
    }

    /// Reads a secret key file: a regular file (not a symbolic link) owned by this process's
    /// user, mode 0600 or stricter (see `keyfile`).
    pub fn read(path: &Path) -> Result<SecretKey, SignError> {
        let bytes = crate::keyfile::read_secret(path, SECRET_HEADER).map_err(key_file)?;
        SecretKey::from_seed_bytes(&bytes).map_err(|reason| {
            key_file((
                path.display().to_string(),
                format!("{reason}: is this an ML-DSA-65 secret key file?"),
            ))
        })
    }

    /// The key of a 32-byte seed held by the caller (decrypted from a hardware token, say),
    /// copied once into a zeroizing buffer; the caller wipes its own copy. Errors say the
    /// length found.
    pub fn from_seed_bytes(bytes: &[u8]) -> Result<SecretKey, String> {
        let mut seed = Zeroizing::new(Seed::default());
        if bytes.len() != seed.len() {
            return Err(format!(
                "a seed is {} bytes, not {}",
                seed.len(),
                bytes.len()
            ));
        }
        seed.copy_from_slice(bytes);
        Ok(SecretKey::from_seed(&seed))
    }

    /// The 32-byte seed, the whole secret key: only for encrypting it under a key the
    /// caller cannot read (a PKCS#11 token's), never to be logged or written in clear.
    pub fn seed_bytes(&self) -> &[u8] {
        self.key.as_seed().as_slice()
    }
}

fn key_file((path, reason): (String, String)) -> SignError {
    SignError::KeyFile { path, reason }
}

/// Verifies a signature block against a set of trusted keys.
pub fn verify_block(
    signed: &[u8],
    block: &SignatureBlock,
    purpose: Purpose,
    trusted: &[PublicKey],
) -> Result<PublicKey, SignError> {
    if block.alg != ALG {
        return Err(SignError::Algorithm(block.alg.clone()));
    }
    let key = trusted
        .iter()
        .find(|k| k.id == block.key)
        .ok_or_else(|| SignError::UnknownKey(block.key.clone()))?;
    key.verify(signed, purpose, &block.sig)?;
    Ok(key.clone())
}
