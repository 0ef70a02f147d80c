//! Sealing (DESIGN §5): the body of a workflow (everything after the front matter) is
//! encrypted with AES-256-GCM under a random content key, with the front-matter bytes as
//! associated data (so the cleartext header cannot be swapped); the content key is
//! encapsulated with ML-KEM-768 (FIPS 203, RustCrypto `ml-kem`) for each recipient — a device
//! key, or a group key provisioned to a group's members, so a fleet-wide document stays
//! small. Seal first, then sign: a device checks the signature before it decrypts anything.
//!
//! A sealed body is one section:
//! ````text
//! ## Sealed
//! ```sealed
//! {"alg":"aes-256-gcm+ml-kem-768","recipients":[{"to":"mlkem768:…","kem":"<b64>","nonce":"<b64>","key":"<b64>"}],"nonce":"<b64>","ciphertext":"<b64>"}
//! ```
//! ````

use std::path::Path;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{DecapsulationKey768, EncapsulationKey768, KeyExport};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroize::Zeroizing;

/// The sealing algorithm's name in documents (`security.encryption`).
pub const ALG: &str = "aes-256-gcm+ml-kem-768";
/// Domain separation of the key-wrapping key derived from the ML-KEM shared secret.
const WRAP_CONTEXT: &[u8] = b"aegis-seal-v1";

/// Sealing errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A key file.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The sealed section is malformed.
    #[error("sealed section: {0}")]
    Malformed(String),
    /// None of the recipients is us.
    #[error("sealed for {0}, not for this device's keys")]
    NotForUs(String),
    /// Decryption failed (wrong key or tampered ciphertext / front matter).
    #[error("cannot open the sealed body: it was altered, or sealed with other associated data")]
    Open,
}

/// One recipient's wrapped content key.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recipient {
    to: String,
    kem: String,
    nonce: String,
    key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    alg: String,
    recipients: Vec<Recipient>,
    nonce: String,
    ciphertext: String,
}

/// A recipient's public (encapsulation) key with its id.
#[derive(Clone)]
pub struct SealPublic {
    key: EncapsulationKey768,
    id: String,
}

/// A decapsulation key (seed zeroized on drop).
pub struct SealSecret {
    seed: Zeroizing<[u8; 64]>,
    key: DecapsulationKey768,
    public: SealPublic,
}

fn kem_id(encoded: &[u8]) -> String {
    let h = sha2::Sha256::digest(encoded);
    format!(
        "mlkem768:{}",
        h.iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

const PUBLIC_HEADER: &str = "aegis ml-kem-768 public key";
const SECRET_HEADER: &str = "aegis ml-kem-768 secret key (seed)";

fn random<const N: usize>() -> Result<Zeroizing<[u8; N]>, SealError> {
    let mut b = Zeroizing::new([0u8; N]);
    getrandom::fill(b.as_mut()).map_err(|e| SealError::KeyFile {
        path: "(random generator)".into(),
        reason: e.to_string(),
    })?;
    Ok(b)
}

impl SealPublic {
    /// From the FIPS 203 encoding.
    pub fn from_bytes(b: &[u8]) -> Result<SealPublic, String> {
        let arr = b
            .try_into()
            .map_err(|_| format!("an ML-KEM-768 public key is 1184 bytes, not {}", b.len()))?;
        let key = EncapsulationKey768::new(&arr)
            .map_err(|_| "invalid ML-KEM-768 public key".to_string())?;
        Ok(SealPublic { key, id: kem_id(b) })
    }
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The key file text.
    pub fn to_file_text(&self) -> String {
        crate::keyfile::text(PUBLIC_HEADER, &self.key.to_bytes())
    }
    /// Reads a key file.
    pub fn read(path: &Path) -> Result<SealPublic, SealError> {
        let bytes = crate::keyfile::read_public(path, PUBLIC_HEADER).map_err(key_file)?;
        SealPublic::from_bytes(&bytes)
            .map_err(|reason| key_file((path.display().to_string(), reason)))
    }
}

impl SealSecret {
    /// A fresh key pair.
    pub fn generate() -> Result<SealSecret, SealError> {
        Ok(SealSecret::from_seed(random::<64>()?))
    }

    fn from_seed(seed: Zeroizing<[u8; 64]>) -> SealSecret {
        let key = DecapsulationKey768::from_seed((*seed).into());
        let ek = key.encapsulation_key().clone();
        let id = kem_id(&ek.to_bytes());
        SealSecret {
            seed,
            key,
            public: SealPublic { key: ek, id },
        }
    }

    /// Its public half.
    pub fn public(&self) -> &SealPublic {
        &self.public
    }

    /// Writes the secret file (0600, never overwrites).
    pub fn write(&self, path: &Path) -> Result<(), SealError> {
        crate::keyfile::write_secret(path, SECRET_HEADER, &*self.seed).map_err(key_file)
    }

    /// Reads a secret file; refuses one others can read.
    pub fn read(path: &Path) -> Result<SealSecret, SealError> {
        let bytes = crate::keyfile::read_secret(path, SECRET_HEADER).map_err(key_file)?;
        let seed: [u8; 64] = bytes.as_slice().try_into().map_err(|_| {
            key_file((
                path.display().to_string(),
                format!("a seed is 64 bytes, not {}", bytes.len()),
            ))
        })?;
        Ok(SealSecret::from_seed(Zeroizing::new(seed)))
    }
}

fn key_file((path, reason): (String, String)) -> SealError {
    SealError::KeyFile { path, reason }
}

fn wrap_key(shared: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = sha2::Sha256::new();
    h.update(WRAP_CONTEXT);
    h.update(shared);
    Zeroizing::new(h.finalize().into())
}

fn gcm(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// Splits a document into its front matter (with both `---` lines) and its body.
fn split_front(doc: &str) -> Result<(&str, &str), SealError> {
    let rest = doc
        .strip_prefix("---\n")
        .ok_or_else(|| SealError::Malformed("no front matter".into()))?;
    let end = rest
        .find("\n---\n")
        .ok_or_else(|| SealError::Malformed("front matter not closed".into()))?;
    let cut = 4 + end + 5;
    Ok((&doc[..cut], &doc[cut..]))
}

/// Seals an unsigned, LF-normalised document for `recipients`: sets
/// `security.encryption` and replaces the body with the sealed section. Refuses a result
/// that would not fit the document limit.
pub fn seal(doc: &str, recipients: &[SealPublic]) -> Result<String, SealError> {
    let out = seal_unbounded(doc, recipients)?;
    // Leave room for the signature block (~4.5 KB).
    if out.len() + 5 * 1024 > crate::maml::MAX_DOCUMENT_BYTES {
        return Err(SealError::Malformed(format!(
            "sealed for {} recipients the document is {} bytes, over the {} byte limit with its \
             signature: seal it for a group key instead of each device",
            recipients.len(),
            out.len(),
            crate::maml::MAX_DOCUMENT_BYTES
        )));
    }
    Ok(out)
}

/// [`seal`] without the size limit (benchmarks; devices refuse oversized documents).
pub fn seal_unbounded(doc: &str, recipients: &[SealPublic]) -> Result<String, SealError> {
    let marked = doc.replacen("encryption: none", &format!("encryption: {ALG}"), 1);
    if marked == doc && !doc.contains(&format!("encryption: {ALG}")) {
        return Err(SealError::Malformed(
            "front matter has no `encryption: none` to switch".into(),
        ));
    }
    let (front, body) = split_front(&marked)?;
    let json = seal_bytes(body.as_bytes(), front.as_bytes(), recipients)?;
    Ok(format!("{front}## Sealed\n```sealed\n{json}\n```\n"))
}

/// Encrypts `msg` (AES-256-GCM, `aad` bound to it) under a fresh content key encapsulated
/// for each recipient; returns the sealed JSON.
pub fn seal_bytes(msg: &[u8], aad: &[u8], recipients: &[SealPublic]) -> Result<String, SealError> {
    if recipients.is_empty() {
        return Err(SealError::Malformed("no recipients".into()));
    }
    let content_key = random::<32>()?;
    let nonce = random::<12>()?;
    let ciphertext = gcm(&content_key)
        .encrypt(Nonce::from_slice(&*nonce), Payload { msg, aad })
        .map_err(|_| SealError::Open)?;
    let mut rs = Vec::with_capacity(recipients.len());
    for r in recipients {
        let (kem_ct, shared) = r.key.encapsulate();
        let wk = wrap_key(shared.as_slice());
        let wn = random::<12>()?;
        let wrapped = gcm(&wk)
            .encrypt(
                Nonce::from_slice(&*wn),
                Payload {
                    msg: content_key.as_slice(),
                    aad: r.id.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        rs.push(Recipient {
            to: r.id.clone(),
            kem: B64.encode(kem_ct.as_slice()),
            nonce: B64.encode(*wn),
            key: B64.encode(wrapped),
        });
    }
    let sealed = Sealed {
        alg: ALG.into(),
        recipients: rs,
        nonce: B64.encode(*nonce),
        ciphertext: B64.encode(ciphertext),
    };
    serde_json::to_string(&sealed).map_err(|e| SealError::Malformed(e.to_string()))
}

/// Opens sealed JSON from [`seal_bytes`] with whichever of `keys` it was sealed for.
pub fn open_bytes(
    json: &str,
    aad: &[u8],
    keys: &[&SealSecret],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let sealed: Sealed =
        serde_json::from_str(json).map_err(|e| SealError::Malformed(e.to_string()))?;
    if sealed.alg != ALG {
        return Err(SealError::Malformed(format!("algorithm {:?}", sealed.alg)));
    }
    let b = |s: &str| {
        B64.decode(s)
            .map_err(|e| SealError::Malformed(e.to_string()))
    };
    let (r, k) = sealed
        .recipients
        .iter()
        .find_map(|r| keys.iter().find(|k| k.public.id == r.to).map(|k| (r, k)))
        .ok_or_else(|| {
            SealError::NotForUs(
                sealed
                    .recipients
                    .iter()
                    .map(|r| r.to.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            )
        })?;
    let kem_ct = b(&r.kem)?;
    let shared = k
        .key
        .decapsulate_slice(&kem_ct)
        .map_err(|_| SealError::Malformed("KEM ciphertext has the wrong length".into()))?;
    let wk = wrap_key(shared.as_slice());
    let nonce = |v: Vec<u8>| -> Result<[u8; 12], SealError> {
        v.try_into()
            .map_err(|_| SealError::Malformed("nonce is not 12 bytes".into()))
    };
    let content_key = Zeroizing::new(
        gcm(&wk)
            .decrypt(
                Nonce::from_slice(&nonce(b(&r.nonce)?)?),
                Payload {
                    msg: &b(&r.key)?,
                    aad: r.to.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?,
    );
    let content_key: [u8; 32] = content_key
        .as_slice()
        .try_into()
        .map_err(|_| SealError::Open)?;
    let msg = gcm(&content_key)
        .decrypt(
            Nonce::from_slice(&nonce(b(&sealed.nonce)?)?),
            Payload {
                msg: &b(&sealed.ciphertext)?,
                aad,
            },
        )
        .map_err(|_| SealError::Open)?;
    Ok(Zeroizing::new(msg))
}

/// Opens the body of a sealed, already verified document (`signed` = LF-normalised signed
/// bytes) with whichever of `keys` it was sealed for; returns the document with its
/// cleartext body.
pub fn open(signed: &str, keys: &[&SealSecret]) -> Result<String, SealError> {
    let (front, body) = split_front(signed)?;
    let json = body
        .strip_prefix("## Sealed\n```sealed\n")
        .and_then(|b| b.strip_suffix("\n```\n"))
        .ok_or_else(|| SealError::Malformed("the body is not one ```sealed block".into()))?;
    let body = open_bytes(json, front.as_bytes(), keys)?;
    let body = String::from_utf8(body.to_vec()).map_err(|_| SealError::Open)?;
    Ok(format!("{front}{body}"))
}

/// A group's sealing key delivered to one member: the group key pair's seed sealed to the
/// member's own key, with the group name and public key id bound as associated data. The
/// gateway signs the delivery (context `aegis-key-v1`).
pub fn group_key_delivery(
    group: &str,
    group_key: &SealSecret,
    member: &SealPublic,
) -> Result<String, SealError> {
    let aad = format!("aegis-group-key-v1|{group}|{}", group_key.public.id);
    let sealed = seal_bytes(
        &*group_key.seed,
        aad.as_bytes(),
        std::slice::from_ref(member),
    )?;
    Ok(format!(
        "aegis group key delivery v1\ngroup: {group}\nkey: {}\nsealed: {sealed}\n",
        group_key.public.id
    ))
}

/// Opens a (verified) group-key delivery with this device's key: the group name and its key.
pub fn open_group_key(
    delivery: &str,
    device: &SealSecret,
) -> Result<(String, SealSecret), SealError> {
    let mut lines = delivery.lines();
    if lines.next() != Some("aegis group key delivery v1") {
        return Err(SealError::Malformed("not a group key delivery".into()));
    }
    let field = |l: Option<&str>, name: &str| -> Result<String, SealError> {
        l.and_then(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
            .ok_or_else(|| SealError::Malformed(format!("no {name} line")))
    };
    let group = field(lines.next(), "group")?;
    let id = field(lines.next(), "key")?;
    let sealed = field(lines.next(), "sealed")?;
    let aad = format!("aegis-group-key-v1|{group}|{id}");
    let seed = open_bytes(&sealed, aad.as_bytes(), &[device])?;
    let seed: [u8; 64] = seed.as_slice().try_into().map_err(|_| SealError::Open)?;
    let key = SealSecret::from_seed(Zeroizing::new(seed));
    if key.public.id != id {
        return Err(SealError::Open);
    }
    Ok((group, key))
}
