//! Aegis Edge inference: engines, the model registry and the video-analytics stages.
//!
//! **Status: partly built.** The multi-object tracker ([`track`]) exists; the inference
//! engines (ONNX Runtime), the model fetch script and the segmentation, moderation and
//! detection stages come next in the inference issue. Fixed contracts:
//!
//! * a stage is an [`aegis_hal::stage::Stage`] (re-exported here): it receives each frame of
//!   one stream as `&mut Frame` and writes typed metadata, exactly like the built-in
//!   `passthrough` and `timestamp_overlay` stages of the HAL;
//! * a model is identified by name, version and the SHA-256 of its file ([`ModelRef`]), the
//!   same triple a signed workflow's `requires.models` names.
//!
//! This crate must not know about MQTT or the web (see `shared/DESIGN.md` §1).

pub mod batch;
pub mod engine;
pub mod nudenet;
pub mod preprocess;
pub mod registry;
pub mod stages;
pub mod track;
pub mod yolo;

pub use aegis_hal::stage::{Stage, StageError, StageOutcome};

/// A model as workflows and the registry name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Registry name, e.g. `selfie-seg`.
    pub name: String,
    /// Monotonic version within the name.
    pub version: u32,
    /// Lower-case hex SHA-256 of the model file.
    pub sha256: String,
}
