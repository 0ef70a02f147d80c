//! Evidence clips off the device: the signed manifest each clip gets, and the sealed
//! (encrypted-at-rest) file format.
//!
//! **Manifest** (`<clip>.manifest.json`): `{"payload": base64(JSON), "signature": {key, alg,
//! sig}}`. The payload ([`ClipManifest`]) names the clip's SHA-256 (of the plain MP4, the
//! bytes `aegis evidence export` writes), stream, time span, geotag, the events it covers and
//! the agent version; it is signed by the device's ML-DSA key with its own purpose string
//! ([`Purpose::Evidence`]), so no other signed statement of the device can pass for one.
//! The signature covers the payload bytes exactly as stored: verification parses nothing
//! before the signature checks. `chimera evidence verify` runs [`verify_clip`] off the
//! device.
//!
//! **Sealed file**: `AEGISEV1`, a 7-byte random nonce prefix, then the MP4 in 64 KiB chunks,
//! each AES-256-GCM encrypted with the STREAM construction (big-endian 32-bit counter and a
//! last-chunk flag in the nonce, RustCrypto `aead::stream`): a chunk cut off, reordered,
//! dropped or altered fails to decrypt, and so does a truncated file (the last chunk is
//! marked). The header is the associated data of every chunk.

use std::io::{Read, Write};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::KeyInit;
use aes_gcm::aead::stream::{DecryptorBE32, EncryptorBE32};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::maml::SignatureBlock;
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};

/// Magic at the start of a sealed clip.
pub const SEALED_MAGIC: &[u8; 8] = b"AEGISEV1";
/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 64 * 1024;
const NONCE_PREFIX: usize = 7;
const TAG: usize = 16;
/// Header length: magic + nonce prefix.
pub const HEADER: usize = SEALED_MAGIC.len() + NONCE_PREFIX;
/// Largest manifest read.
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

/// What went wrong with a clip, its manifest or its seal; each says which.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The manifest file is not the expected JSON.
    #[error("manifest: {0}")]
    Manifest(String),
    /// The signature does not verify.
    #[error("manifest signature: {0}")]
    Signature(#[from] SignError),
    /// The clip's bytes are not the ones the manifest names.
    #[error("clip sha256 {actual} does not match the manifest's {expected}: the clip was altered")]
    Digest {
        /// Named by the manifest.
        expected: String,
        /// Of the clip given.
        actual: String,
    },
    /// The sealed file is not one, or was altered, truncated, or sealed under another key.
    #[error("sealed clip: {0}")]
    Sealed(String),
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// An event a clip covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestEvent {
    /// The event's id (as stored and published).
    pub id: String,
    /// `detection`, `moderation`, `rule`, `manual`.
    pub kind: String,
    /// Wall clock, µs since the Unix epoch.
    pub ts_us: i64,
}

/// Where the device was (the fused pose at the clip's first event).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Geotag {
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// Estimated error, metres.
    pub sigma_m: f64,
}

/// What a device states about one clip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipManifest {
    /// Format version (1).
    pub version: u32,
    /// The clip's id.
    pub clip_id: String,
    /// The device that recorded it.
    pub device: String,
    /// The stream.
    pub stream: String,
    /// SHA-256 (hex) of the plain MP4.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Wall clock of the first frame, µs since the Unix epoch.
    pub start_us: i64,
    /// Wall clock of the end of the last frame.
    pub end_us: i64,
    /// Frames in the clip.
    pub frames: u64,
    /// Where, when the device knew.
    pub geotag: Option<Geotag>,
    /// The events it covers.
    pub events: Vec<ManifestEvent>,
    /// Kept until (µs since the Unix epoch) by the policy its events matched; a legal hold
    /// keeps it longer.
    pub retain_until_us: i64,
    /// `aegis` version that wrote it.
    pub agent_version: String,
}

/// The manifest file: the payload exactly as signed, and the signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// base64 of the manifest's JSON.
    pub payload: String,
    /// ML-DSA over the payload's bytes ([`Purpose::Evidence`]).
    pub signature: SignatureBlock,
}

/// Signs `manifest` with the device key: the manifest file's bytes.
pub fn sign_manifest(manifest: &ClipManifest, key: &SecretKey) -> Result<Vec<u8>, EvidenceError> {
    let payload =
        serde_json::to_vec(manifest).map_err(|e| EvidenceError::Manifest(e.to_string()))?;
    let signature = key.sign_block(&payload, Purpose::Evidence)?;
    serde_json::to_vec_pretty(&SignedManifest {
        payload: B64.encode(&payload),
        signature,
    })
    .map_err(|e| EvidenceError::Manifest(e.to_string()))
}

/// Checks the manifest file's signature with the device's public key, then parses its
/// payload (nothing is parsed before the signature verifies beyond the outer envelope).
pub fn verify_manifest(file: &[u8], device: &PublicKey) -> Result<ClipManifest, EvidenceError> {
    if file.len() > MAX_MANIFEST_BYTES {
        return Err(EvidenceError::Manifest(format!(
            "{} bytes, more than {MAX_MANIFEST_BYTES}",
            file.len()
        )));
    }
    let signed: SignedManifest =
        serde_json::from_slice(file).map_err(|e| EvidenceError::Manifest(e.to_string()))?;
    if signed.signature.alg != crate::sign::ALG {
        return Err(SignError::Algorithm(signed.signature.alg).into());
    }
    if signed.signature.key != device.id() {
        return Err(SignError::UnknownKey(format!(
            "{} (the device key given is {})",
            signed.signature.key,
            device.id()
        ))
        .into());
    }
    let payload = B64
        .decode(signed.payload.as_bytes())
        .map_err(|e| EvidenceError::Manifest(format!("payload is not base64: {e}")))?;
    device.verify(&payload, Purpose::Evidence, &signed.signature.sig)?;
    serde_json::from_slice(&payload).map_err(|e| EvidenceError::Manifest(e.to_string()))
}

/// SHA-256 (hex) of everything `r` yields.
pub fn sha256_hex(mut r: impl Read) -> std::io::Result<(String, u64)> {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut n = 0u64;
    loop {
        let got = r.read(&mut buf)?;
        if got == 0 {
            break;
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A clip checked off the device: the manifest verifies with the device key, and the plain
/// clip's bytes are the ones it names.
pub fn verify_clip(
    manifest_file: &[u8],
    clip: impl Read,
    device: &PublicKey,
) -> Result<ClipManifest, EvidenceError> {
    let manifest = verify_manifest(manifest_file, device)?;
    let (actual, _) = sha256_hex(clip)?;
    if actual != manifest.sha256 {
        return Err(EvidenceError::Digest {
            expected: manifest.sha256,
            actual,
        });
    }
    Ok(manifest)
}

/// A 256-bit key for sealing clips.
pub struct SealKey(Zeroizing<[u8; 32]>);

impl SealKey {
    /// A new random key.
    pub fn generate() -> Result<SealKey, EvidenceError> {
        let mut k = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut k[..]).map_err(|e| EvidenceError::Sealed(format!("random: {e}")))?;
        Ok(SealKey(k))
    }

    /// From its 32 bytes.
    pub fn from_bytes(b: &[u8]) -> Result<SealKey, EvidenceError> {
        let arr: [u8; 32] = b
            .try_into()
            .map_err(|_| EvidenceError::Sealed(format!("a key is 32 bytes, not {}", b.len())))?;
        Ok(SealKey(Zeroizing::new(arr)))
    }

    /// Its bytes (to store it).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.0).into())
    }
}

/// Writes the sealed form of what is written to it into `out`; [`Self::finish`] seals the
/// last chunk (without it the file does not decrypt: a crash mid-write leaves no readable
/// half clip).
pub struct SealWriter<W: Write> {
    out: W,
    enc: Option<EncryptorBE32<Aes256Gcm>>,
    header: [u8; HEADER],
    pending: Vec<u8>,
}

impl<W: Write> SealWriter<W> {
    /// Starts a sealed file in `out` (writes the header).
    pub fn new(mut out: W, key: &SealKey) -> Result<Self, EvidenceError> {
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(SEALED_MAGIC);
        getrandom::fill(&mut header[8..])
            .map_err(|e| EvidenceError::Sealed(format!("random: {e}")))?;
        out.write_all(&header)?;
        let nonce = aes_gcm::aead::stream::Nonce::<
            Aes256Gcm,
            aes_gcm::aead::stream::StreamBE32<Aes256Gcm>,
        >::from_slice(&header[8..]);
        Ok(SealWriter {
            out,
            enc: Some(EncryptorBE32::from_aead(key.cipher(), nonce)),
            header,
            pending: Vec::with_capacity(CHUNK * 2),
        })
    }

    /// Seals the last chunk and flushes; returns the writer.
    pub fn finish(mut self) -> Result<W, EvidenceError> {
        let enc = self
            .enc
            .take()
            .ok_or_else(|| EvidenceError::Sealed("already finished".into()))?;
        let ct = enc
            .encrypt_last(aes_gcm::aead::Payload {
                msg: &self.pending,
                aad: &self.header,
            })
            .map_err(|_| EvidenceError::Sealed("encrypting the last chunk".into()))?;
        self.out.write_all(&ct)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.pending.extend_from_slice(buf);
        // Keep at least one byte (or a whole chunk) back: the last chunk is sealed apart.
        while self.pending.len() > CHUNK {
            let enc = self
                .enc
                .as_mut()
                .ok_or_else(|| std::io::Error::other("sealed clip already finished"))?;
            let ct = enc
                .encrypt_next(aes_gcm::aead::Payload {
                    msg: &self.pending[..CHUNK],
                    aad: &self.header,
                })
                .map_err(|_| std::io::Error::other("encrypting a chunk"))?;
            self.out.write_all(&ct)?;
            self.pending.drain(..CHUNK);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

/// Decrypts a sealed file from `input` into `out`; fails (having written only chunks that
/// authenticated) when the file was altered, truncated or sealed under another key.
pub fn unseal(
    mut input: impl Read,
    mut out: impl Write,
    key: &SealKey,
) -> Result<u64, EvidenceError> {
    let mut header = [0u8; HEADER];
    input
        .read_exact(&mut header)
        .map_err(|_| EvidenceError::Sealed("shorter than its header".into()))?;
    if &header[..8] != SEALED_MAGIC {
        return Err(EvidenceError::Sealed(
            "not a sealed clip (no AEGISEV1 header)".into(),
        ));
    }
    let nonce = aes_gcm::aead::stream::Nonce::<
        Aes256Gcm,
        aes_gcm::aead::stream::StreamBE32<Aes256Gcm>,
    >::from_slice(&header[8..]);
    let mut dec = DecryptorBE32::from_aead(key.cipher(), nonce);
    let mut chunk = vec![0u8; CHUNK + TAG];
    let mut next = vec![0u8; CHUNK + TAG];
    let mut have = read_full(&mut input, &mut chunk)?;
    let mut written = 0u64;
    let bad = || {
        EvidenceError::Sealed(
            "a chunk does not authenticate: altered, truncated or another device's key".into(),
        )
    };
    loop {
        let got = if have == CHUNK + TAG {
            read_full(&mut input, &mut next)?
        } else {
            0
        };
        let payload = aes_gcm::aead::Payload {
            msg: &chunk[..have],
            aad: &header,
        };
        if got == 0 {
            let pt = dec.decrypt_last(payload).map_err(|_| bad())?;
            out.write_all(&pt)?;
            written += pt.len() as u64;
            out.flush()?;
            return Ok(written);
        }
        let pt = dec.decrypt_next(payload).map_err(|_| bad())?;
        out.write_all(&pt)?;
        written += pt.len() as u64;
        std::mem::swap(&mut chunk, &mut next);
        have = got;
    }
}

/// Reads until `buf` is full or the input ends; the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(sha: &str) -> ClipManifest {
        ClipManifest {
            version: 1,
            clip_id: "c1".into(),
            device: "cam-1".into(),
            stream: "cam0".into(),
            sha256: sha.into(),
            bytes: 5,
            start_us: 1,
            end_us: 2,
            frames: 3,
            geotag: None,
            events: vec![ManifestEvent {
                id: "e".into(),
                kind: "manual".into(),
                ts_us: 1,
            }],
            retain_until_us: 9,
            agent_version: "0".into(),
        }
    }

    #[test]
    fn a_signed_manifest_verifies_and_any_edit_fails() {
        let key = SecretKey::generate().unwrap();
        let clip = b"hello";
        let (sha, _) = sha256_hex(&clip[..]).unwrap();
        let file = sign_manifest(&manifest(&sha), &key).unwrap();
        let m = verify_clip(&file, &clip[..], key.public()).unwrap();
        assert_eq!(m.stream, "cam0");
        // The clip edited by one byte.
        let err = verify_clip(&file, &b"hellp"[..], key.public()).unwrap_err();
        assert!(matches!(err, EvidenceError::Digest { .. }), "{err}");
        // The payload edited (a different stream), signature kept.
        let mut signed: SignedManifest = serde_json::from_slice(&file).unwrap();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&B64.decode(&signed.payload).unwrap()).unwrap();
        payload["stream"] = "cam9".into();
        signed.payload = B64.encode(serde_json::to_vec(&payload).unwrap());
        let edited = serde_json::to_vec(&signed).unwrap();
        let err = verify_clip(&edited, &clip[..], key.public()).unwrap_err();
        assert!(matches!(err, EvidenceError::Signature(_)), "{err}");
        // Another device's key.
        let other = SecretKey::generate().unwrap();
        assert!(verify_clip(&file, &clip[..], other.public()).is_err());
        // A signature for another purpose (a receipt) does not pass for a manifest.
        let payload = B64.decode(&signed.payload).unwrap();
        let wrong = SignedManifest {
            payload: B64.encode(&payload),
            signature: key.sign_block(&payload, Purpose::Receipt).unwrap(),
        };
        let err = verify_manifest(&serde_json::to_vec(&wrong).unwrap(), key.public());
        assert!(matches!(err, Err(EvidenceError::Signature(_))));
    }

    fn seal(data: &[u8], key: &SealKey) -> Vec<u8> {
        let mut w = SealWriter::new(Vec::new(), key).unwrap();
        // Odd-sized writes, as the muxer makes them.
        for part in data.chunks(7_777) {
            w.write_all(part).unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn sealed_clips_round_trip_and_refuse_tampering() {
        let key = SealKey::generate().unwrap();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 200_001] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let sealed = seal(&data, &key);
            if len > 0 {
                assert_ne!(&sealed[HEADER..HEADER + len.min(64)], &data[..len.min(64)]);
            }
            let mut out = Vec::new();
            assert_eq!(unseal(&sealed[..], &mut out, &key).unwrap(), len as u64);
            assert_eq!(out, data, "length {len}");
            // One byte flipped anywhere after the magic fails.
            for at in [8, HEADER, sealed.len() / 2, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(
                    unseal(&bad[..], std::io::sink(), &key).is_err(),
                    "flip at {at}"
                );
            }
            // Truncated at a chunk boundary (the last-chunk flag is missing) or anywhere.
            if len > CHUNK {
                let cut = HEADER + CHUNK + TAG;
                assert!(unseal(&sealed[..cut], std::io::sink(), &key).is_err());
            }
            assert!(unseal(&sealed[..sealed.len() - 1], std::io::sink(), &key).is_err());
            // Another key.
            let other = SealKey::generate().unwrap();
            assert!(unseal(&sealed[..], std::io::sink(), &other).is_err());
        }
    }
}
