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
//!
//! What is wiped (the workspace enables `ml-kem`'s `zeroize` feature; this crate enables
//! `aes`'s): a [`SealSecret`]'s seed (kept in a `Zeroizing` buffer) and its
//! `DecapsulationKey768` (`ZeroizeOnDrop`: the decryption key, `d` and `z`); seeds while
//! generated, read, written, delivered or received (only ever in `Zeroizing` buffers); the
//! content key, the ML-KEM shared secrets and the key-wrapping keys of [`seal_bytes`] and
//! [`open_bytes`]; the AES round keys of every cipher made from them; the decrypted body,
//! which [`open_bytes`] returns in a `Zeroizing` buffer. What is not: the document that
//! [`open`] returns (the caller parses and runs it; the parsed document holds the same text);
//! the SHA-256 state that derives a wrapping key and the GHASH key inside AES-GCM (neither
//! `sha2` 0.10 nor `polyval` wipes its state); stack temporaries inside `ml-kem` (its seed
//! is passed by value to the key derivation) and copies the compiler makes when it moves
//! values — Rust offers no way to wipe those; they are overwritten by later calls.

use std::path::Path;

use aes_gcm::aead::AeadInPlace;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{DecapsulationKey768, EncapsulationKey768, KeyExport, Seed};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use zeroize::{Zeroize, Zeroizing};

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

/// A decapsulation key. Its seed (`Zeroizing`) and its ML-KEM key (`ZeroizeOnDrop` with
/// `ml-kem`'s `zeroize` feature) are wiped on drop; the public half is not secret.
pub struct SealSecret {
    // Boxed: the seed stays where it was generated or decoded when the key moves.
    seed: Box<Zeroizing<Seed>>,
    key: DecapsulationKey768,
    public: SealPublic,
}

// Every secret field is wiped on drop (asserted in the tests), so the whole key is.
impl zeroize::ZeroizeOnDrop for SealSecret {}

impl std::fmt::Debug for SealSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealSecret({})", self.public.id)
    }
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

/// Fills `buf` from the OS random generator.
fn fill_random(buf: &mut [u8]) -> Result<(), SealError> {
    getrandom::fill(buf).map_err(|e| SealError::KeyFile {
        path: "(random generator)".into(),
        reason: e.to_string(),
    })
}

/// A random nonce (not secret).
fn random_nonce() -> Result<[u8; 12], SealError> {
    let mut b = [0u8; 12];
    fill_random(&mut b)?;
    Ok(b)
}

/// Moves a `Copy` secret that `ml-kem` returns by value (a shared key) into a `Zeroizing`
/// and wipes the place it was returned into (inlined: no frame of its own holds a copy).
#[inline(always)]
fn take_secret<T: Zeroize + Copy>(src: &mut T) -> Zeroizing<T> {
    let out = Zeroizing::new(*src);
    src.zeroize();
    out
}

/// An empty seed on the heap, to be filled in place.
fn new_seed() -> Box<Zeroizing<Seed>> {
    Box::new(Zeroizing::new(Seed::default()))
}

/// A seed from `bytes` (a decrypted delivery or a key file), copied once into a zeroizing
/// heap buffer; `None` when it is not 64 bytes.
fn seed_from(bytes: &[u8]) -> Option<Box<Zeroizing<Seed>>> {
    let mut seed = new_seed();
    if bytes.len() != seed.len() {
        return None;
    }
    seed.copy_from_slice(bytes);
    Some(seed)
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
    /// Its id without the algorithm prefix (the hex digest): what key file names carry.
    pub fn short_id(&self) -> &str {
        self.id.rsplit(':').next().unwrap_or(&self.id)
    }
    /// The FIPS 203 encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.key.to_bytes().to_vec()
    }
    /// The key file text.
    pub fn to_file_text(&self) -> String {
        crate::keyfile::text(PUBLIC_HEADER, &self.key.to_bytes())
    }
    /// Writes the key file, mode 0644 whatever the umask (replacing an existing file, never
    /// through a symbolic link), so that [`SealPublic::read`] accepts it.
    pub fn write(&self, path: &Path) -> Result<(), SealError> {
        crate::keyfile::write_public(path, &self.to_file_text()).map_err(key_file)
    }
    /// Reads a key file: a regular file (not a symbolic link) of at most 64 KB, owned by
    /// root or by this process's user, not writable by group or others.
    pub fn read(path: &Path) -> Result<SealPublic, SealError> {
        let bytes = crate::keyfile::read_public(path, PUBLIC_HEADER).map_err(key_file)?;
        SealPublic::from_bytes(&bytes)
            .map_err(|reason| key_file((path.display().to_string(), reason)))
    }
}

impl SealSecret {
    /// A fresh key pair (the seed is generated in place in a zeroizing buffer).
    pub fn generate() -> Result<SealSecret, SealError> {
        let mut seed = new_seed();
        fill_random(seed.as_mut_slice())?;
        Ok(SealSecret::from_seed(seed))
    }

    fn from_seed(seed: Box<Zeroizing<Seed>>) -> SealSecret {
        // By reference: the copy `ml-kem` makes is its own (see the module documentation).
        let key = <DecapsulationKey768 as ml_kem::KeyInit>::new(&seed);
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
        crate::keyfile::write_secret(path, SECRET_HEADER, self.seed.as_slice()).map_err(key_file)
    }

    /// Reads a secret file: a regular file (not a symbolic link) owned by this process's
    /// user, mode 0600 or stricter (see `keyfile`).
    pub fn read(path: &Path) -> Result<SealSecret, SealError> {
        let bytes = crate::keyfile::read_secret(path, SECRET_HEADER).map_err(key_file)?;
        let seed = seed_from(&bytes).ok_or_else(|| {
            key_file((
                path.display().to_string(),
                format!(
                    "a seed is 64 bytes, not {}: is this an ML-KEM-768 secret key file?",
                    bytes.len()
                ),
            ))
        })?;
        Ok(SealSecret::from_seed(seed))
    }
}

fn key_file((path, reason): (String, String)) -> SealError {
    SealError::KeyFile { path, reason }
}

/// The key-wrapping key of an ML-KEM shared secret, written into `out` (a zeroizing buffer
/// of the caller's).
fn wrap_key(shared: &[u8], out: &mut [u8; 32]) {
    let mut h = sha2::Sha256::new();
    h.update(WRAP_CONTEXT);
    h.update(shared);
    h.finalize_into(sha2::digest::generic_array::GenericArray::from_mut_slice(
        out,
    ));
}

/// An AES-256-GCM cipher (its round keys are wiped on drop: `aes`'s `zeroize` feature).
fn gcm(key: &[u8; 32]) -> Aes256Gcm {
    Aes256Gcm::new(key.into())
}

/// Decrypts `ciphertext` (with its tag) into a zeroizing buffer: the cleartext never lives
/// in a plain `Vec`, whether decryption succeeds or not.
fn decrypt(
    cipher: &Aes256Gcm,
    nonce: &[u8; 12],
    ciphertext: Vec<u8>,
    aad: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealError> {
    let mut buf = Zeroizing::new(ciphertext);
    cipher
        .decrypt_in_place(Nonce::from_slice(nonce), aad, &mut *buf)
        .map_err(|_| SealError::Open)?;
    Ok(buf)
}

/// Encrypts `msg` (a secret) into a new buffer; the only copy of the cleartext made is
/// encrypted in place.
fn encrypt(
    cipher: &Aes256Gcm,
    nonce: &[u8; 12],
    msg: &[u8],
    aad: &[u8],
) -> Result<Vec<u8>, SealError> {
    // Room for the tag: no reallocation leaves a cleartext copy behind.
    let mut buf = Zeroizing::new(Vec::with_capacity(msg.len() + 16));
    buf.extend_from_slice(msg);
    cipher
        .encrypt_in_place(Nonce::from_slice(nonce), aad, &mut *buf)
        .map_err(|_| SealError::Open)?;
    Ok(std::mem::take(&mut *buf))
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
    let mut content_key = Zeroizing::new([0u8; 32]);
    fill_random(content_key.as_mut_slice())?;
    let nonce = random_nonce()?;
    let ciphertext = encrypt(&gcm(&content_key), &nonce, msg, aad)?;
    let mut rs = Vec::with_capacity(recipients.len());
    for r in recipients {
        let (kem_ct, mut shared) = r.key.encapsulate();
        let shared = take_secret(&mut shared);
        let mut wk = Zeroizing::new([0u8; 32]);
        wrap_key(shared.as_slice(), &mut wk);
        let wn = random_nonce()?;
        let wrapped = encrypt(&gcm(&wk), &wn, content_key.as_slice(), r.id.as_bytes())?;
        rs.push(Recipient {
            to: r.id.clone(),
            kem: B64.encode(kem_ct.as_slice()),
            nonce: B64.encode(wn),
            key: B64.encode(wrapped),
        });
    }
    let sealed = Sealed {
        alg: ALG.into(),
        recipients: rs,
        nonce: B64.encode(nonce),
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
    let mut shared = k
        .key
        .decapsulate_slice(&kem_ct)
        .map_err(|_| SealError::Malformed("KEM ciphertext has the wrong length".into()))?;
    let shared = take_secret(&mut shared);
    let mut wk = Zeroizing::new([0u8; 32]);
    wrap_key(shared.as_slice(), &mut wk);
    let nonce = |v: Vec<u8>| -> Result<[u8; 12], SealError> {
        v.try_into()
            .map_err(|_| SealError::Malformed("nonce is not 12 bytes".into()))
    };
    let content_key = decrypt(
        &gcm(&wk),
        &nonce(b(&r.nonce)?)?,
        b(&r.key)?,
        r.to.as_bytes(),
    )?;
    // From the zeroizing buffer itself: no plain `[u8; 32]` copy of the content key.
    let cipher = Aes256Gcm::new_from_slice(&content_key).map_err(|_| SealError::Open)?;
    decrypt(
        &cipher,
        &nonce(b(&sealed.nonce)?)?,
        b(&sealed.ciphertext)?,
        aad,
    )
}

/// Opens the body of a sealed, already verified document (`signed` = LF-normalised signed
/// bytes) with whichever of `keys` it was sealed for; returns the document with its
/// cleartext body. The decrypted body is wiped; the returned document is the caller's
/// (made in one allocation, so no reallocation leaves a copy behind).
pub fn open(signed: &str, keys: &[&SealSecret]) -> Result<String, SealError> {
    let (front, body) = split_front(signed)?;
    let json = body
        .strip_prefix("## Sealed\n```sealed\n")
        .and_then(|b| b.strip_suffix("\n```\n"))
        .ok_or_else(|| SealError::Malformed("the body is not one ```sealed block".into()))?;
    let body = open_bytes(json, front.as_bytes(), keys)?;
    let body = std::str::from_utf8(&body).map_err(|_| SealError::Open)?;
    let mut out = String::with_capacity(front.len() + body.len());
    out.push_str(front);
    out.push_str(body);
    Ok(out)
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
        group_key.seed.as_slice(),
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
    let key = SealSecret::from_seed(seed_from(&seed).ok_or(SealError::Open)?);
    if key.public.id != id {
        return Err(SealError::Open);
    }
    Ok((group, key))
}

/// Suffix of an ML-KEM secret key file; a device opens sealed documents with every file of
/// its key directory that ends so.
pub const SECRET_KEY_SUFFIX: &str = ".kem.key";
/// Suffix of an ML-KEM public key file.
pub const PUBLIC_KEY_SUFFIX: &str = ".kem.pub";
/// The device's own ML-KEM secret key file, in its key directory.
pub const DEVICE_SECRET_KEY_FILE: &str = "device.kem.key";

/// Whether `name` (a file name in a key directory) is an ML-KEM secret key file.
pub fn is_secret_key_file(name: &str) -> bool {
    name.ends_with(SECRET_KEY_SUFFIX)
}

/// A group key's file stem, `GROUP.SHORTID`: named by key id, so that a rotated group key
/// sits beside the one it replaces (documents still in flight under the old key open) and
/// neither is ever overwritten. The gateway keeps `STEM.kem.key` and `STEM.kem.pub`.
pub fn group_key_stem(group: &str, key: &SealPublic) -> String {
    format!("{group}.{}", key.short_id())
}

/// The file a device installs a group key in: `group.GROUP.SHORTID.kem.key`.
pub fn installed_group_key_file(group: &str, key: &SealPublic) -> String {
    format!("group.{}{SECRET_KEY_SUFFIX}", group_key_stem(group, key))
}

/// Why a group key delivery was not installed.
#[derive(Debug, thiserror::Error)]
pub enum GroupKeyError {
    /// The delivery file cannot be read.
    #[error("{}: cannot read the group key delivery: {source}", path.display())]
    Read {
        /// The delivery file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The delivery is not a signed text (encoding or signature block).
    #[error("{}: {source}", path.display())]
    Format {
        /// The delivery file.
        path: std::path::PathBuf,
        /// What is wrong.
        source: crate::maml::MamlError,
    },
    /// The delivery carries no signature block.
    #[error("{}: unsigned", path.display())]
    Unsigned {
        /// The delivery file.
        path: std::path::PathBuf,
    },
    /// The issuer's public key file cannot be used.
    #[error("issuer key: {0}")]
    Issuer(crate::sign::SignError),
    /// The signature does not verify against the issuer's key.
    #[error("{}: {source}", path.display())]
    Signature {
        /// The delivery file.
        path: std::path::PathBuf,
        /// Why.
        source: crate::sign::SignError,
    },
    /// The device's own ML-KEM key cannot be read.
    #[error("device key: {0}")]
    DeviceKey(SealError),
    /// The signed delivery does not open with the device's key, or is malformed.
    #[error("{}: {source}", path.display())]
    Open {
        /// The delivery file.
        path: std::path::PathBuf,
        /// Why.
        source: SealError,
    },
    /// The delivery names a group that cannot be part of a file name.
    #[error("{}: group name {group:?} cannot name a key file", path.display())]
    GroupName {
        /// The delivery file.
        path: std::path::PathBuf,
        /// The group it names.
        group: String,
    },
    /// The key file cannot be written (it exists, or the directory refuses it).
    #[error("cannot install the group key: {0}")]
    Write(SealError),
}

/// A group key installed by [`install_group_key`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Installed {
    /// The group the key is for.
    pub group: String,
    /// The key's id.
    pub key_id: String,
    /// The file it was written to.
    pub path: std::path::PathBuf,
}

/// Installs a group key delivered to this device: checks the delivery's signature
/// (`Purpose::KeyDelivery`) against `issuer` (a public key file), opens it with the
/// device's own key (`dir/device.kem.key`) and writes the group key to
/// `dir/`[`installed_group_key_file`] (0600, never overwriting a file).
pub fn install_group_key(
    dir: &Path,
    delivery: &Path,
    issuer: &Path,
) -> Result<Installed, GroupKeyError> {
    use crate::sign::{PublicKey, Purpose, verify_block};
    let path = || delivery.to_path_buf();
    let bytes = std::fs::read(delivery).map_err(|source| GroupKeyError::Read {
        path: path(),
        source,
    })?;
    let text = crate::maml::normalise(&bytes);
    let (signed, blocks) =
        crate::maml::split_blocks(&text).map_err(|source| GroupKeyError::Format {
            path: path(),
            source,
        })?;
    let issuer = PublicKey::read(issuer).map_err(GroupKeyError::Issuer)?;
    let block = blocks
        .first()
        .ok_or_else(|| GroupKeyError::Unsigned { path: path() })?;
    verify_block(
        &signed,
        block,
        Purpose::KeyDelivery,
        std::slice::from_ref(&issuer),
    )
    .map_err(|source| GroupKeyError::Signature {
        path: path(),
        source,
    })?;
    let device =
        SealSecret::read(&dir.join(DEVICE_SECRET_KEY_FILE)).map_err(GroupKeyError::DeviceKey)?;
    // `split_blocks` accepted the text as UTF-8, so its signed part is too.
    let signed = std::str::from_utf8(&signed).map_err(|e| GroupKeyError::Open {
        path: path(),
        source: SealError::Malformed(format!("not UTF-8: {e}")),
    })?;
    let (group, key) = open_group_key(signed, &device).map_err(|source| GroupKeyError::Open {
        path: path(),
        source,
    })?;
    if group.is_empty() || group.contains(['/', '\0']) || group == "." || group == ".." {
        return Err(GroupKeyError::GroupName {
            path: path(),
            group,
        });
    }
    let out = dir.join(installed_group_key_file(&group, key.public()));
    key.write(&out).map_err(GroupKeyError::Write)?;
    Ok(Installed {
        group,
        key_id: key.public().id().to_string(),
        path: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{Purpose, SecretKey};

    /// A device key directory, a gateway key and a signed delivery of a fresh group key.
    fn delivered(group: &str) -> (tempfile::TempDir, SealSecret, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let device = SealSecret::generate().unwrap();
        device
            .write(&d.path().join(DEVICE_SECRET_KEY_FILE))
            .unwrap();
        let gateway = SecretKey::generate().unwrap();
        gateway.public().write(&d.path().join("gw.pub")).unwrap();
        let gk = SealSecret::generate().unwrap();
        let mut text = group_key_delivery(group, &gk, device.public())
            .unwrap()
            .into_bytes();
        let block = gateway.sign_block(&text, Purpose::KeyDelivery).unwrap();
        text.extend_from_slice(block.render().as_bytes());
        let delivery = d.path().join("delivery");
        std::fs::write(&delivery, text).unwrap();
        (d, gk, delivery)
    }

    #[test]
    fn a_signed_delivery_installs_under_the_key_id_and_never_overwrites() {
        let (d, gk, delivery) = delivered("site-a");
        let got = install_group_key(d.path(), &delivery, &d.path().join("gw.pub")).unwrap();
        assert_eq!(got.group, "site-a");
        assert_eq!(got.key_id, gk.public().id());
        let name = format!("group.site-a.{}.kem.key", gk.public().short_id());
        assert_eq!(got.path, d.path().join(&name));
        assert_eq!(installed_group_key_file("site-a", gk.public()), name);
        assert!(is_secret_key_file(&name));
        let back = SealSecret::read(&got.path).unwrap();
        assert_eq!(back.public().id(), gk.public().id());
        // The same delivery again: the installed key is not replaced.
        let again = install_group_key(d.path(), &delivery, &d.path().join("gw.pub"));
        assert!(matches!(again, Err(GroupKeyError::Write(_))), "{again:?}");
    }

    #[test]
    fn a_delivery_from_another_issuer_or_altered_is_refused() {
        let (d, _, delivery) = delivered("site-a");
        let mallory = SecretKey::generate().unwrap();
        mallory.public().write(&d.path().join("m.pub")).unwrap();
        let e = install_group_key(d.path(), &delivery, &d.path().join("m.pub")).unwrap_err();
        assert!(matches!(e, GroupKeyError::Signature { .. }), "{e:?}");
        assert!(e.to_string().contains("unknown signing key"), "{e}");
        let text = std::fs::read_to_string(&delivery).unwrap();
        std::fs::write(&delivery, text.replace("group: site-a", "group: site-b")).unwrap();
        let e = install_group_key(d.path(), &delivery, &d.path().join("gw.pub")).unwrap_err();
        assert!(matches!(e, GroupKeyError::Signature { .. }), "{e:?}");
        // Nothing was installed.
        let keys: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("group."))
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
    }

    #[test]
    fn a_group_name_that_leaves_the_directory_is_refused() {
        let (d, _, delivery) = delivered("../escape");
        let e = install_group_key(d.path(), &delivery, &d.path().join("gw.pub")).unwrap_err();
        assert!(matches!(e, GroupKeyError::GroupName { .. }), "{e:?}");
    }

    #[test]
    fn an_unsigned_delivery_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let device = SealSecret::generate().unwrap();
        let gk = SealSecret::generate().unwrap();
        let delivery = d.path().join("delivery");
        std::fs::write(
            &delivery,
            group_key_delivery("g", &gk, device.public()).unwrap(),
        )
        .unwrap();
        let gateway = SecretKey::generate().unwrap();
        gateway.public().write(&d.path().join("gw.pub")).unwrap();
        let e = install_group_key(d.path(), &delivery, &d.path().join("gw.pub")).unwrap_err();
        assert!(
            matches!(
                e,
                GroupKeyError::Unsigned { .. } | GroupKeyError::Format { .. }
            ),
            "{e:?}"
        );
    }
}
