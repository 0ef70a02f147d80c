//! Aegis Edge MAML workflows, trust, signatures, sealing and OTA.
//!
//! **Status: not implemented yet** (the MAML issues). This crate will own: MAML parse/emit,
//! root-signed trust metadata, ML-DSA-65 signing and verification, ML-KEM-768 + AES-256-GCM
//! sealing, anti-replay state, atomic apply with rollback, model bundles, the RAUC hook,
//! `.mu` receipts, and the `chimera` gateway CLI (see `shared/DESIGN.md` §5).
//!
//! Until then it exports nothing: the agent runs the local config's default pipeline, which
//! is exactly what `aegis_config::effective_pipeline` returns when no signed workflow has been
//! applied. It must never know about frames.
