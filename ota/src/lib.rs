//! Aegis Edge MAML workflows: the `.maml.md` format ([`maml`]), ML-DSA-65 signatures
//! ([`sign`]) and the device-side check of a signed document ([`verify_document`]), used by
//! the agent and by the `chimera` gateway CLI.
//!
//! Built: the format (strict front matter, sections, the Pipeline block validated with the
//! agent's own pipeline schema), signing and verification with per-purpose contexts, key
//! files, root-signed trust metadata ([`trust`]: k of n, rotation, revocation, rollback and
//! expiry), the device-side checks ([`device`]: targets, trusted time, anti-replay, policy),
//! sealing and group keys ([`seal`]: ML-KEM-768 and AES-256-GCM), `.mu` receipts
//! ([`receipt`]), the device's persisted workflow state ([`state`]: trial, commit, rollback,
//! monotonic trust, answered digests), signed model bundle manifests ([`model`]) and
//! rollback orders ([`model_rollback`]), the device's model store ([`model_store`]: staging
//! that survives a restart, install on trial with the signed manifest kept, confirm,
//! rollback, crash recovery), what travels for model delivery ([`model_wire`]), the MQTT
//! chunk transfer of a bundle ([`model_chunks`]: the gateway's server and the device's
//! resumable fetcher, without the network), signed firmware orders and the A/B updater
//! interface ([`firmware`]: the order's checks, the device's record outside the slots,
//! SWUpdate with `nvbootctrl`, a simulated board), and the `chimera` gateway CLI. See
//! `docs/security.md`. This crate must
//! never know about frames.

pub mod device;
pub mod evidence;
pub mod firmware;
pub mod fsutil;
mod issued;
mod keyfile;
pub use issued::TargetRefusal;
pub use keyfile::{read_private, write_private};
pub mod maml;
pub mod model;
pub mod model_chunks;
pub mod model_rollback;
pub mod model_store;
pub mod model_wire;
pub mod receipt;
pub mod seal;
pub mod sign;
pub mod staging;
pub mod state;
pub mod trust;

use maml::{Document, MamlError};
use sign::{PublicKey, Purpose, SignError};

/// Why a document was refused; each names the first check that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The device's trust metadata cannot vouch for any document now (expired, or older
    /// than the newest version this device has held): nothing is verified or answered.
    #[error("trust: {0}")]
    Trust(String),
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
    Policy(device::PolicyError),
    /// The document is sealed and could not be opened.
    #[error("sealed: {0}")]
    Sealed(seal::SealError),
}

/// A refused document that may be named in a signed receipt: its signature verified
/// against trust metadata that is valid now, and its signed bytes parsed. Only
/// [`device::check`] makes one, from the bytes it verified: nothing else may hand the
/// device's key a document to make statements about.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Authenticated {
    /// The verified document, as transmitted (a sealed body stays sealed), parsed once by
    /// the check.
    pub document: Document,
    /// SHA-256 of its signed bytes.
    pub digest: String,
    /// The receipt mirror: its sections as transmitted.
    pub mirror: Vec<receipt::MirrorEntry>,
}

impl Authenticated {
    /// Whether the document is sealed: its receipt then names only the failed check.
    pub fn sealed(&self) -> bool {
        self.document.front.security.encryption != "none"
    }
}

/// Why a document was refused, and — only when it was authenticated — what a receipt
/// may say about it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Refusal {
    /// The first check that failed.
    pub rejection: Rejection,
    /// Present only for documents whose signature verified against valid trust.
    pub authenticated: Option<Box<Authenticated>>,
}

impl Refusal {
    /// Unauthenticated input: no signed answer, at most an unsigned notice.
    pub fn unauthenticated(rejection: Rejection) -> Refusal {
        Refusal {
            rejection,
            authenticated: None,
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.rejection.fmt(f)
    }
}

/// A document whose signature verified and whose content validated. Only this crate makes
/// one (`non_exhaustive`): what a receipt names comes from the checks, never from a caller.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Verified {
    /// The parsed document.
    pub document: Document,
    /// The key that signed it.
    pub signer: PublicKey,
    /// The pipeline it describes.
    pub pipeline: Option<aegis_config::PipelineConfig>,
    /// SHA-256 of the signed bytes (what receipts name).
    pub digest: String,
    /// The receipt mirror: the sections as transmitted (for a sealed document, the
    /// ciphertext section, never the opened cleartext).
    pub mirror: Vec<receipt::MirrorEntry>,
}

impl Verified {
    /// Whether the document was sealed.
    pub fn sealed(&self) -> bool {
        self.document.front.security.encryption != "none"
    }

    /// What a receipt may name when this verified document is refused later (a model it
    /// needs is missing): the document as transmitted, when it was sealed its front matter
    /// and the sealed section only.
    pub(crate) fn transmitted(&self) -> Authenticated {
        let mut document = self.document.clone();
        if self.sealed() {
            // The opened sections are not named; the mirror below is the transmitted one.
            document.sections.clear();
            document.pipeline_yaml = None;
        }
        Authenticated {
            document,
            digest: self.digest.clone(),
            mirror: self.mirror.clone(),
        }
    }
}

/// Opens a sealed document's body (when it is sealed) and validates its Pipeline block.
fn open_and_validate(
    signed: &[u8],
    document: Document,
    keys: &[&seal::SealSecret],
) -> Result<(Document, Option<aegis_config::PipelineConfig>), Rejection> {
    let document = if document.front.security.encryption == "none" {
        document
    } else {
        let text = std::str::from_utf8(signed).map_err(|e| {
            Rejection::Document(MamlError {
                line: None,
                message: e.to_string(),
            })
        })?;
        let clear = seal::open(text, keys).map_err(Rejection::Sealed)?;
        maml::parse(clear.as_bytes()).map_err(Rejection::Document)?
    };
    let pipeline = check_pipeline(&document)?;
    Ok((document, pipeline))
}

/// Validates a parsed, cleartext document's Pipeline block with the agent's own pipeline
/// schema (None: it has no Pipeline section). Devices run this after verifying and opening
/// a document; a gateway runs it on a draft before it signs or seals it, so it never signs
/// what devices would refuse.
pub fn check_pipeline(
    document: &Document,
) -> Result<Option<aegis_config::PipelineConfig>, Rejection> {
    match &document.pipeline_yaml {
        Some((yaml, line)) => Ok(Some({
            maml::note_yaml_entry();
            aegis_config::PipelineConfig::from_yaml_str(yaml, "Pipeline").map_err(|e| {
                Rejection::Pipeline {
                    line: *line,
                    message: e.to_string(),
                }
            })?
        })),
        None => Ok(None),
    }
}

/// Why [`sign_workflow`] did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignWorkflowError {
    /// The document carries a signature block already.
    #[error("already signed")]
    AlreadySigned,
    /// It does not parse: devices would refuse it.
    #[error("{0}")]
    Document(MamlError),
    /// The signature could not be made.
    #[error("{0}")]
    Sign(SignError),
}

/// Signs an unsigned workflow for devices (`chimera sign`, `chimera serve`'s online signer):
/// CRLF normalised to LF, a final newline added so the signature block starts on a line of
/// its own, the result parsed first (a gateway must not sign a document devices will
/// refuse), then the ```` ```signature ```` block appended. Returns the signed document.
pub fn sign_workflow(doc: &[u8], key: &sign::SecretKey) -> Result<Vec<u8>, SignWorkflowError> {
    if maml::split_signed(doc).is_ok() {
        return Err(SignWorkflowError::AlreadySigned);
    }
    let mut out = maml::normalise(doc);
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    maml::parse(&out).map_err(SignWorkflowError::Document)?;
    let block = key
        .sign_block(&out, Purpose::Workflow)
        .map_err(SignWorkflowError::Sign)?;
    out.extend_from_slice(block.render().as_bytes());
    Ok(out)
}

/// Lowercase hex SHA-256 of `bytes`: how documents, trust files and payloads are named in
/// receipts, audit rows and the gateway's records.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The device-side checks that need no device state, in DESIGN §5's order: size → split off
/// the signature block (text scan) → key lookup → signature → YAML parse → open the seal
/// (with `keys`, when sealed) → schema.
pub fn verify_document(
    doc: &[u8],
    trusted: &[PublicKey],
    keys: &[&seal::SealSecret],
) -> Result<Verified, Rejection> {
    let (signed, block) = maml::split_signed(doc).map_err(Rejection::Format)?;
    let signer = sign::verify_block(&signed, &block, Purpose::Workflow, trusted)
        .map_err(Rejection::Signature)?;
    let document = maml::parse(&signed).map_err(Rejection::Document)?;
    let mirror = receipt::mirror(&document);
    let (document, pipeline) = open_and_validate(&signed, document, keys)?;
    Ok(Verified {
        document,
        signer,
        pipeline,
        digest: sha256_hex(&signed),
        mirror,
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_device;
#[cfg(test)]
mod tests_model;
#[cfg(test)]
mod tests_model_chunks;
#[cfg(test)]
mod tests_model_rollback;
#[cfg(test)]
mod tests_model_store;
#[cfg(test)]
mod tests_state;
