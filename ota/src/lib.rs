//! Aegis Edge MAML workflows: the `.maml.md` format ([`maml`]), ML-DSA-65 signatures
//! ([`sign`]) and the device-side check of a signed document ([`verify_document`]), used by
//! the agent and by the `chimera` gateway CLI.
//!
//! **Status: in progress** (MAML part 1). Built: the format (strict front matter, sections,
//! the Pipeline block validated with the agent's own pipeline schema), signing and
//! verification with per-purpose contexts, key files, root-signed trust metadata
//! ([`trust`]: k of n, rotation, revocation, rollback and expiry), the device-side checks
//! ([`device`]: targets, trusted time, anti-replay, policy), and `chimera`. Not built yet:
//! sealing (ML-KEM + AES-GCM), provisioning, fuzzing; see `docs/security.md`. This crate
//! must never know about frames.

pub mod device;
pub mod maml;
pub mod seal;
pub mod sign;
pub mod trust;

use maml::{Document, MamlError};
use sign::{PublicKey, Purpose, SignError};

/// Why a document was refused; each names the first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Size, encoding or signature-block problems, before any YAML is read.
    #[error("format: {0}")]
    Format(MamlError),
    /// The signature did not verify.
    #[error("signature: {0}")]
    Signature(SignError),
    /// The signed document does not parse or validate.
    #[error("document: {0}")]
    Document(MamlError),
    /// The Pipeline block is not a valid pipeline.
    #[error("pipeline (block starting at line {line}): {message}")]
    Pipeline {
        /// First line of the YAML block.
        line: usize,
        /// The validation problems.
        message: String,
    },
    /// Not for this device, or the issuer may not target it.
    #[error("target: {0}")]
    Target(String),
    /// Not yet valid or expired against trusted time.
    #[error("time: {0}")]
    Time(String),
    /// Replayed or fast-forwarded sequence.
    #[error("replay: {0}")]
    Replay(String),
    /// Device policy refuses it.
    #[error("policy: {0}")]
    Policy(String),
    /// The document is sealed; this build cannot open sealed documents yet.
    #[error("sealed documents ({}) are not supported by this build yet", seal::ALG)]
    Sealed,
}

/// A document whose signature verified and whose content validated.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The parsed document.
    pub document: Document,
    /// The key that signed it.
    pub signer: PublicKey,
    /// The pipeline it describes.
    pub pipeline: Option<aegis_config::PipelineConfig>,
    /// SHA-256 of the signed bytes (what receipts name).
    pub digest: String,
}

/// The device-side checks that need no device state, in DESIGN §5's order: size → split off
/// the signature block (text scan) → key lookup → signature → YAML parse → schema.
pub fn verify_document(doc: &[u8], trusted: &[PublicKey]) -> Result<Verified, Rejection> {
    use sha2::Digest;
    let (signed, block) = maml::split_signed(doc).map_err(Rejection::Format)?;
    let signer = sign::verify_block(&signed, &block, Purpose::Workflow, trusted)
        .map_err(Rejection::Signature)?;
    let document = maml::parse(&signed).map_err(Rejection::Document)?;
    if document.front.security.encryption != "none" {
        return Err(Rejection::Sealed);
    }
    let pipeline = match &document.pipeline_yaml {
        Some((yaml, line)) => Some(
            aegis_config::PipelineConfig::from_yaml_str(yaml, "Pipeline").map_err(|e| {
                Rejection::Pipeline {
                    line: *line,
                    message: e.to_string(),
                }
            })?,
        ),
        None => None,
    };
    let digest = sha2::Sha256::digest(&signed)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(Verified {
        document,
        signer,
        pipeline,
        digest,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_device;
