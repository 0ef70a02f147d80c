//! What travels for model delivery: the messages on a device's or group's models topic (an
//! announcement that carries a signed manifest, or a signed rollback order), the MQTT chunk
//! transfer (fetch requests and chunk answers) and the device's signed model receipt.
//!
//! ```text
//! aegis/v1/{device}/models        announcements and rollback orders (retained, QoS 1)
//! aegis/v1/groups/{group}/models  the same for a group
//! aegis/v1/{device}/ota/fetch     device → gateway: one FetchRequest (JSON)
//! aegis/v1/{device}/ota/chunk     gateway → device: one chunk (binary, see Chunk)
//! aegis/v1/{device}/receipts      the device's signed receipts (workflows and models)
//! ```
//!
//! Nothing here is trusted by itself: an announcement is an *unsigned* envelope whose
//! manifest is signed (the device checks the manifest before it downloads anything; the
//! URL it names is then held to the policy's host allow-list and every byte to the
//! manifest's hashes); a chunk's own SHA-256 only catches transport damage early, the
//! file's hash in the signed manifest decides.

use serde::{Deserialize, Serialize};

use crate::receipt::{ReceiptError, Verdict};
use crate::sign::{PublicKey, SecretKey, SignError};

/// `type` of an announcement.
pub const ANNOUNCEMENT_TYPE: &str = "aegis-model-announcement";
/// `type` of a rollback envelope.
pub const ROLLBACK_ENVELOPE_TYPE: &str = "aegis-model-rollback-order";
/// `type` of a model receipt.
pub const MODEL_RECEIPT_TYPE: &str = "model-receipt";
/// Largest message on a models topic: a signed manifest (64 KB) plus the envelope.
pub const MAX_MODEL_MESSAGE_BYTES: usize = crate::model::MAX_MANIFEST_BYTES + 8 * 1024;
/// Largest data part of one chunk: with its header the message stays under AWS IoT Core's
/// 128 KB payload limit.
pub const MAX_CHUNK_DATA: u64 = 120 * 1024;
/// Largest chunk header (JSON).
pub const MAX_CHUNK_HEADER: usize = 2 * 1024;
/// Magic bytes that start a chunk message.
pub const CHUNK_MAGIC: &[u8; 4] = b"AEGC";

/// The device's models topic.
pub fn device_models_topic(device: &str) -> String {
    format!("aegis/v1/{device}/models")
}

/// A group's models topic.
pub fn group_models_topic(group: &str) -> String {
    format!("aegis/v1/groups/{group}/models")
}

/// Where a device asks for chunks.
pub fn fetch_topic(device: &str) -> String {
    format!("aegis/v1/{device}/ota/fetch")
}

/// Where a device gets its chunks.
pub fn chunk_topic(device: &str) -> String {
    format!("aegis/v1/{device}/ota/chunk")
}

/// A message on a models topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelMessage {
    /// A new version to fetch and install.
    Announcement(Announcement),
    /// A signed order to go back to the previous version.
    Rollback {
        /// The signed order's bytes, as transmitted.
        order: String,
    },
}

/// An announcement: the signed manifest and where the files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// Always [`ANNOUNCEMENT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The signed manifest, as `chimera model sign` wrote it.
    pub manifest: String,
    /// The base URL of the bundle's files (`<url>/<path>`), `http` or `https`; absent: the
    /// files come over MQTT in chunks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackEnvelope {
    #[serde(rename = "type")]
    kind: String,
    order: String,
}

impl Announcement {
    /// An announcement of `manifest` (signed text), fetched from `url` or over MQTT.
    pub fn new(manifest: String, url: Option<String>) -> Announcement {
        Announcement {
            kind: ANNOUNCEMENT_TYPE.into(),
            manifest,
            url,
        }
    }

    /// The JSON sent.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an announcement serialises")
    }
}

/// The JSON of a rollback envelope carrying `order` (signed text).
pub fn rollback_envelope(order: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "type": ROLLBACK_ENVELOPE_TYPE, "order": order }))
        .expect("an envelope serialises")
}

/// Parses a message from a models topic; the error says what is wrong. Size first, then
/// JSON with unknown and duplicate fields refused.
pub fn parse_model_message(bytes: &[u8]) -> Result<ModelMessage, String> {
    if bytes.len() > MAX_MODEL_MESSAGE_BYTES {
        return Err(format!(
            "a models message is at most {MAX_MODEL_MESSAGE_BYTES} bytes; this one is {}",
            bytes.len()
        ));
    }
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    let kind: Kind =
        serde_json::from_slice(bytes).map_err(|e| format!("not a models message: {e}"))?;
    match kind.kind.as_str() {
        ANNOUNCEMENT_TYPE => serde_json::from_slice::<Announcement>(bytes)
            .map(ModelMessage::Announcement)
            .map_err(|e| format!("announcement: {e}")),
        ROLLBACK_ENVELOPE_TYPE => {
            let e: RollbackEnvelope =
                serde_json::from_slice(bytes).map_err(|e| format!("rollback order: {e}"))?;
            debug_assert_eq!(e.kind, ROLLBACK_ENVELOPE_TYPE);
            Ok(ModelMessage::Rollback { order: e.order })
        }
        other => Err(format!(
            "unknown type {other:?} (expected {ANNOUNCEMENT_TYPE:?} or {ROLLBACK_ENVELOPE_TYPE:?})"
        )),
    }
}

/// Device → gateway: send me `length` bytes of `file` of bundle `name` `version` from
/// `offset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchRequest {
    /// Model name.
    pub name: String,
    /// Bundle version.
    pub version: u64,
    /// A file path of the manifest.
    pub file: String,
    /// First byte wanted.
    pub offset: u64,
    /// Bytes wanted (1 to [`MAX_CHUNK_DATA`]).
    pub length: u64,
}

/// The header of a chunk message; the message is [`CHUNK_MAGIC`], the header's length (u32
/// big-endian), the header JSON, then the data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkHeader {
    /// Model name.
    pub name: String,
    /// Bundle version.
    pub version: u64,
    /// The file.
    pub file: String,
    /// Where the data starts in the file.
    pub offset: u64,
    /// Lowercase hex SHA-256 of the data (transport check; the manifest decides).
    pub sha256: String,
    /// Set when the gateway cannot serve the request (then there is no data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Encodes a chunk message.
pub fn encode_chunk(header: &ChunkHeader, data: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("a header serialises");
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(CHUNK_MAGIC);
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

/// Decodes a chunk message: magic, header length within [`MAX_CHUNK_HEADER`], header JSON,
/// data within [`MAX_CHUNK_DATA`] whose SHA-256 is the header's (an error answer carries no
/// data). The caller still checks that it is the chunk it asked for.
pub fn decode_chunk(msg: &[u8]) -> Result<(ChunkHeader, &[u8]), String> {
    let rest = msg
        .strip_prefix(CHUNK_MAGIC.as_slice())
        .ok_or("not a chunk message (bad magic)")?;
    if rest.len() < 4 {
        return Err("chunk message cut short in its header length".into());
    }
    let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if n > MAX_CHUNK_HEADER {
        return Err(format!(
            "chunk header of {n} bytes (at most {MAX_CHUNK_HEADER})"
        ));
    }
    let rest = &rest[4..];
    if rest.len() < n {
        return Err("chunk message cut short in its header".into());
    }
    let header: ChunkHeader =
        serde_json::from_slice(&rest[..n]).map_err(|e| format!("chunk header: {e}"))?;
    let data = &rest[n..];
    if header.error.is_some() {
        if !data.is_empty() {
            return Err("an error answer carries data".into());
        }
        return Ok((header, data));
    }
    if data.is_empty() || data.len() as u64 > MAX_CHUNK_DATA {
        return Err(format!(
            "chunk of {} bytes (1 to {MAX_CHUNK_DATA})",
            data.len()
        ));
    }
    let got = crate::sha256_hex(data);
    if got != header.sha256 {
        return Err(format!(
            "chunk of {} at {} damaged: SHA-256 {got}, header says {}",
            header.file, header.offset, header.sha256
        ));
    }
    Ok((header, data))
}

/// The device's answer to a model announcement or rollback order, signed with its key
/// ([`Purpose::Receipt`]). JSON, then one signature block; `type` is
/// [`MODEL_RECEIPT_TYPE`], so it never parses as a workflow receipt (YAML front matter) nor
/// the reverse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelReceipt {
    /// Always [`MODEL_RECEIPT_TYPE`].
    #[serde(rename = "type")]
    pub kind: String,
    /// The answering device.
    pub device: String,
    /// The model name.
    pub name: String,
    /// The version announced (or ordered back to).
    pub version: u64,
    /// SHA-256 of the signed manifest or order answered.
    pub manifest_sha256: String,
    /// `install` (an announcement) or `rollback` (an order).
    pub action: String,
    /// What happened.
    pub verdict: Verdict,
    /// Why (empty when applied).
    pub reason: String,
    /// The version active after this (None: none).
    pub active_version: Option<u64>,
    /// Trust metadata version the device held.
    pub trust_version: u64,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// Milliseconds from the announcement to the verdict.
    #[serde(default)]
    pub total_ms: Option<f64>,
    /// Milliseconds of each step that ran (`verify`, `transfer`, `install`, `load`,
    /// `health`, `swap`, `judge`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<(String, f64)>,
}

impl ModelReceipt {
    /// The signed text: the JSON on one line, then the signature block.
    pub fn render_signed(&self, key: &SecretKey) -> Result<String, SignError> {
        crate::receipt::render_json_signed(self, key)
    }

    /// Verifies `text`'s signature by `device_key`, then parses it.
    pub fn verify(text: &[u8], device_key: &PublicKey) -> Result<ModelReceipt, ReceiptError> {
        let r: ModelReceipt = crate::receipt::verify_json_signed(text, device_key)?;
        if r.kind != MODEL_RECEIPT_TYPE {
            return Err(ReceiptError::Format(format!(
                "type {:?}, expected {MODEL_RECEIPT_TYPE:?}",
                r.kind
            )));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_by_type_and_refuse_the_rest() {
        let a = Announcement::new("manifest text".into(), Some("https://m.example/b".into()));
        assert_eq!(
            parse_model_message(&a.to_json()).unwrap(),
            ModelMessage::Announcement(a)
        );
        assert_eq!(
            parse_model_message(&rollback_envelope("order")).unwrap(),
            ModelMessage::Rollback {
                order: "order".into()
            }
        );
        for bad in [
            &br#"{"type":"aegis-model-announcement","manifest":"m","extra":1}"#[..],
            br#"{"type":"aegis-model-announcement","manifest":"m","manifest":"n"}"#,
            br#"{"type":"other"}"#,
            b"not json",
        ] {
            assert!(
                parse_model_message(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let big = vec![b' '; MAX_MODEL_MESSAGE_BYTES + 1];
        assert!(parse_model_message(&big).unwrap_err().contains("at most"));
    }

    #[test]
    fn chunks_round_trip_and_damage_is_caught() {
        let data = vec![7u8; 1000];
        let h = ChunkHeader {
            name: "m".into(),
            version: 2,
            file: "model.onnx".into(),
            offset: 4096,
            sha256: crate::sha256_hex(&data),
            error: None,
        };
        let msg = encode_chunk(&h, &data);
        let (got, d) = decode_chunk(&msg).unwrap();
        assert_eq!((got, d), (h.clone(), &data[..]));
        let mut bad = msg.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(decode_chunk(&bad).unwrap_err().contains("damaged"));
        assert!(decode_chunk(&msg[..6]).is_err());
        assert!(decode_chunk(b"XXXX\0\0\0\0").is_err());
        let mut huge = encode_chunk(&h, &[]);
        huge[4..8].copy_from_slice(&(MAX_CHUNK_HEADER as u32 + 1).to_be_bytes());
        assert!(decode_chunk(&huge).unwrap_err().contains("header of"));
    }

    #[test]
    fn a_model_receipt_verifies_only_with_its_key_and_is_not_a_workflow_receipt() {
        let key = SecretKey::generate().unwrap();
        let other = SecretKey::generate().unwrap();
        let r = ModelReceipt {
            kind: MODEL_RECEIPT_TYPE.into(),
            device: "dev1".into(),
            name: "moderation".into(),
            version: 4,
            manifest_sha256: "a".repeat(64),
            action: "install".into(),
            verdict: Verdict::Applied,
            reason: String::new(),
            active_version: Some(4),
            trust_version: 3,
            at: "2026-12-04T10:00:00Z".into(),
            total_ms: Some(12.5),
            phases: vec![("verify".into(), 1.5), ("install".into(), 3.25)],
        };
        let text = r.render_signed(&key).unwrap();
        assert_eq!(
            ModelReceipt::verify(text.as_bytes(), key.public()).unwrap(),
            r
        );
        assert!(ModelReceipt::verify(text.as_bytes(), other.public()).is_err());
        assert!(crate::receipt::Receipt::verify(text.as_bytes(), key.public()).is_err());
        let tampered = text.replacen("\"applied\"", "\"rejected\"", 1);
        assert!(ModelReceipt::verify(tampered.as_bytes(), key.public()).is_err());
    }
}
