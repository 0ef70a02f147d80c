//! Sealing (ML-KEM-768 + AES-256-GCM, seal then sign): the algorithm name documents carry.
//! Sealing itself is not built yet; a sealed document is refused with a clear error by
//! [`crate::verify_document`].

/// The sealing algorithm's name in documents (`security.encryption`).
pub const ALG: &str = "aes-256-gcm+ml-kem-768";
