//! `.mu` receipts (DESIGN §5): what a device answers to a workflow whose signature verified,
//! signed with the device's own ML-DSA key (context `aegis-receipt-v1`).
//!
//! ````text
//! ---
//! type: receipt
//! device: "orin-0042"
//! workflow_id: "urn:uuid:…"
//! workflow_sha256: "…"          # of the signed bytes
//! sequence: 17
//! verdict: "applied"             # applied | rolled_back | rejected
//! reason: ""
//! trust_version: 3
//! at: "2026-11-26T10:00:01Z"
//! mode: "in_place"               # in_place | rebuild | none
//! apply_ms: 41.2
//! ---
//! ## Mirror
//! - "History" sha256:…           # the sections in reverse order, each with the sha256 of
//! - "Pipeline" sha256:…          # its body as the device parsed it (after opening a seal)
//! ```signature
//! …
//! ```
//! ````
//!
//! The mirror proves the device parsed the same document without echoing its content: the
//! gateway recomputes it from what it sent ([`mirror`]) and compares. Values are written as
//! JSON scalars, which YAML reads unchanged, so no YAML emitter is involved.

use serde::{Deserialize, Serialize};

use crate::maml::{self, Document};
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};

/// What the device did with a workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It runs now.
    Applied,
    /// It was applied, failed its health check, and the previous pipeline runs again.
    RolledBack,
    /// It was refused after its signature verified (target, time, replay, policy, build).
    Rejected,
    /// It ran, and stopped because it no longer passes its checks (its issuer's key was
    /// revoked by new trust metadata): the previous workflow or the local default runs.
    Revoked,
}

impl Verdict {
    /// The word used in documents and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Applied => "applied",
            Verdict::RolledBack => "rolled_back",
            Verdict::Rejected => "rejected",
            Verdict::Revoked => "revoked",
        }
    }
}

/// One mirror line: a section heading and the sha256 of its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MirrorEntry {
    /// Heading after `## `.
    pub section: String,
    /// Hex sha256 of the section body.
    pub sha256: String,
}

/// A receipt's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// Always `receipt`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The answering device.
    pub device: String,
    /// The workflow's `id`.
    pub workflow_id: String,
    /// Hex sha256 of the workflow's signed bytes.
    pub workflow_sha256: String,
    /// The workflow's sequence.
    pub sequence: u64,
    /// What happened.
    pub verdict: Verdict,
    /// Why (empty when applied).
    pub reason: String,
    /// Trust metadata version the device held.
    pub trust_version: u64,
    /// When (RFC 3339 UTC).
    pub at: String,
    /// How the pipeline changed: `in_place`, `rebuild` or `none`.
    pub mode: String,
    /// Milliseconds from receipt of the document to the health verdict.
    #[serde(default)]
    pub apply_ms: Option<f64>,
    /// The mirror (not part of the front matter; filled from the body).
    #[serde(skip)]
    pub mirror: Vec<MirrorEntry>,
}

/// `text` with what may be a secret replaced by `***`: the user information of URLs
/// (`rtsp://user:pw@host` → `rtsp://***@host`) and the values of secret-looking query or
/// option keys (`passphrase=…`). Receipts, audit rows and notices go through it, so no
/// error message can carry a credential off the device.
pub fn redact(text: &str) -> String {
    let stop = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')');
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        out.push_str(&rest[..i + 3]);
        let after = &rest[i + 3..];
        let end = after.find(stop).unwrap_or(after.len());
        let authority_end = after[..end].find(['/', '?', '#']).unwrap_or(end);
        match after[..authority_end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                rest = &after[at..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    // key=value pairs.
    let mut result = String::with_capacity(out.len());
    let mut s = out.as_str();
    while let Some(eq) = s.find('=') {
        let before = &s[..eq];
        let key_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |k| k + 1);
        let key = &before[key_start..];
        result.push_str(&s[..=eq]);
        let after = &s[eq + 1..];
        if aegis_config::url::SECRET_QUERY_KEYS
            .iter()
            .any(|k| key.eq_ignore_ascii_case(k))
        {
            let end = after
                .find(|c: char| stop(c) || c == '&' || c == ',' || c == ';')
                .unwrap_or(after.len());
            if end > 0 {
                result.push_str("***");
            }
            s = &after[end..];
        } else {
            s = after;
        }
    }
    result.push_str(s);
    result
}

/// The mirror of a parsed document: its sections in reverse order with the sha256 of each
/// body.
pub fn mirror(doc: &Document) -> Vec<MirrorEntry> {
    doc.sections
        .iter()
        .rev()
        .map(|s| MirrorEntry {
            section: s.name.clone(),
            sha256: crate::sha256_hex(s.body.as_bytes()),
        })
        .collect()
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

/// Why a receipt was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    /// Shape.
    #[error("receipt: {0}")]
    Format(String),
    /// The signature.
    #[error("receipt signature: {0}")]
    Signature(SignError),
}

/// The signed part of a device-signed text (a workflow or model receipt) whose one
/// signature block verifies by `device_key` for [`Purpose::Receipt`].
pub fn verified_part(text: &[u8], device_key: &PublicKey) -> Result<Vec<u8>, ReceiptError> {
    let (signed, block) =
        maml::split_signed(text).map_err(|e| ReceiptError::Format(e.to_string()))?;
    crate::sign::verify_block(
        &signed,
        &block,
        Purpose::Receipt,
        std::slice::from_ref(device_key),
    )
    .map_err(ReceiptError::Signature)?;
    Ok(signed)
}

/// The signed text of a receipt written as JSON (model and firmware receipts): the JSON on
/// one line, then the device's signature block ([`Purpose::Receipt`]).
pub(crate) fn render_json_signed<T: Serialize>(
    v: &T,
    key: &SecretKey,
) -> Result<String, SignError> {
    let mut s = serde_json::to_string(v).map_err(|e| SignError::Malformed(e.to_string()))?;
    s.push('\n');
    let block = key.sign_block(s.as_bytes(), Purpose::Receipt)?;
    s.push_str(&block.render());
    Ok(s)
}

/// A JSON receipt whose signature by `device_key` verified, parsed (the caller checks its
/// `type`).
pub(crate) fn verify_json_signed<T: serde::de::DeserializeOwned>(
    text: &[u8],
    device_key: &PublicKey,
) -> Result<T, ReceiptError> {
    let signed = verified_part(text, device_key)?;
    serde_json::from_slice(&signed).map_err(|e| ReceiptError::Format(e.to_string()))
}

impl Receipt {
    /// The signed `.mu` text.
    pub fn render_signed(&self, key: &SecretKey) -> Result<String, SignError> {
        let mut s = String::from("---\ntype: receipt\n");
        let line = |s: &mut String, k: &str, v: String| {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(&v);
            s.push('\n');
        };
        line(&mut s, "device", json(&self.device));
        line(&mut s, "workflow_id", json(&self.workflow_id));
        line(&mut s, "workflow_sha256", json(&self.workflow_sha256));
        line(&mut s, "sequence", self.sequence.to_string());
        line(&mut s, "verdict", json(&self.verdict));
        line(&mut s, "reason", json(&self.reason));
        line(&mut s, "trust_version", self.trust_version.to_string());
        line(&mut s, "at", json(&self.at));
        line(&mut s, "mode", json(&self.mode));
        if let Some(ms) = self.apply_ms {
            line(&mut s, "apply_ms", format!("{ms:.3}"));
        }
        s.push_str("---\n## Mirror\n");
        for m in &self.mirror {
            s.push_str(&format!("- {} sha256:{}\n", json(&m.section), m.sha256));
        }
        let block = key.sign_block(s.as_bytes(), Purpose::Receipt)?;
        s.push_str(&block.render());
        Ok(s)
    }

    /// Parses a receipt and verifies its signature by `device_key`.
    pub fn verify(text: &[u8], device_key: &PublicKey) -> Result<Receipt, ReceiptError> {
        Self::parse_body(&verified_part(text, device_key)?)
    }

    /// Parses the signed part of a receipt (no signature check: callers verify first).
    fn parse_body(signed: &[u8]) -> Result<Receipt, ReceiptError> {
        let f = |m: String| ReceiptError::Format(m);
        let text = std::str::from_utf8(signed).map_err(|e| f(e.to_string()))?;
        let rest = text
            .strip_prefix("---\n")
            .ok_or_else(|| f("no front matter".into()))?;
        let (front, body) = rest
            .split_once("\n---\n")
            .ok_or_else(|| f("front matter not closed".into()))?;
        let value = aegis_config::yaml_value(front, "receipt").map_err(|e| f(e.to_string()))?;
        let mut r: Receipt = serde_yaml_ng::from_value(value).map_err(|e| f(e.to_string()))?;
        if r.kind != "receipt" {
            return Err(f(format!("type {:?} is not receipt", r.kind)));
        }
        let lines = body
            .strip_prefix("## Mirror\n")
            .ok_or_else(|| f("no Mirror section".into()))?;
        for l in lines.lines() {
            let entry = l
                .strip_prefix("- ")
                .and_then(|l| l.rsplit_once(" sha256:"))
                .and_then(|(name, sha)| {
                    Some(MirrorEntry {
                        section: serde_json::from_str(name).ok()?,
                        sha256: sha.to_string(),
                    })
                })
                .ok_or_else(|| f(format!("mirror line {l:?}")))?;
            r.mirror.push(entry);
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Receipt {
        Receipt {
            kind: "receipt".into(),
            device: "orin-1".into(),
            workflow_id: "urn:uuid:x".into(),
            workflow_sha256: "ab".repeat(32),
            sequence: 7,
            verdict: Verdict::RolledBack,
            reason: "health: stage \"0:virtual_background\" failed 12 of 12 frames\nsecond line"
                .into(),
            trust_version: 3,
            at: "2026-11-26T10:00:00Z".into(),
            mode: "in_place".into(),
            apply_ms: Some(41.25),
            mirror: vec![
                MirrorEntry {
                    section: "History".into(),
                    sha256: "cd".repeat(32),
                },
                MirrorEntry {
                    section: "A \"quoted\" heading".into(),
                    sha256: "ef".repeat(32),
                },
            ],
        }
    }

    #[test]
    fn receipts_round_trip_and_any_edit_breaks_the_signature() {
        let key = SecretKey::generate().unwrap();
        let r = sample();
        let text = r.render_signed(&key).unwrap();
        assert_eq!(Receipt::verify(text.as_bytes(), key.public()).unwrap(), r);
        let other = SecretKey::generate().unwrap();
        assert!(matches!(
            Receipt::verify(text.as_bytes(), other.public()),
            Err(ReceiptError::Signature(_))
        ));
        let forged = text.replace("rolled_back", "applied");
        assert!(matches!(
            Receipt::verify(forged.as_bytes(), key.public()),
            Err(ReceiptError::Signature(_))
        ));
    }

    #[test]
    fn redaction_removes_credentials_and_secret_query_values() {
        let cases = [
            (
                "connect rtsp://admin:hunter2@10.0.0.5:554/s failed",
                "connect rtsp://***@10.0.0.5:554/s failed",
            ),
            (
                "srt://h:9000?mode=caller&passphrase=abcdefghij&latency=20",
                "srt://h:9000?mode=caller&passphrase=***&latency=20",
            ),
            (
                "url \"rtmp://u@h/app/k?token=xyz\"",
                "url \"rtmp://***@h/app/k?token=***\"",
            ),
            ("a@b://c@d@e/x", "a@b://***@e/x"),
            (
                "no secrets here: rtsp://cam/x",
                "no secrets here: rtsp://cam/x",
            ),
            ("PassPhrase=S3cret,other", "PassPhrase=***,other"),
        ];
        for (input, want) in cases {
            assert_eq!(redact(input), want, "{input}");
        }
    }

    #[test]
    fn the_mirror_is_reversed_section_digests() {
        let doc = maml::template(
            "00000000-0000-4000-8000-000000000000",
            "gw",
            "orin-1",
            1,
            "2026-11-26T10:00:00Z",
            "2026-11-27T10:00:00Z",
        );
        let parsed = maml::parse(doc.as_bytes()).unwrap();
        let m = mirror(&parsed);
        let names: Vec<_> = parsed
            .sections
            .iter()
            .rev()
            .map(|s| s.name.clone())
            .collect();
        assert_eq!(
            m.iter().map(|e| e.section.clone()).collect::<Vec<_>>(),
            names
        );
        assert_eq!(
            m.last().unwrap().sha256,
            crate::sha256_hex(parsed.sections[0].body.as_bytes())
        );
    }
}
