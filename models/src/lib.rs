//! Aegis Edge inference: engines, the model registry and the video-analytics stages.
//!
//! * [`engine`]: ONNX Runtime through `ort` with its shared library loaded at run time
//!   (every build runs on every host), execution provider `cpu`/`cuda`/`tensorrt` with a
//!   CPU fallback.
//! * [`registry`]: the models a pipeline uses, loaded once: SHA-256 checked, shapes checked,
//!   warmed up; each behind a [`batch::Batcher`] that batches the streams' requests.
//! * [`preprocess`], [`yolo`], [`geometry`]: model inputs from pooled frames, YOLOv8
//!   decoding and NMS, the boxes and letterbox they share.
//! * [`stages`]: one module per stage kind of `aegis-config`'s list, each building its
//!   stage from its config section ([`stages::build`]); the inference stages
//!   `virtual_background`, `moderate` and `detect` (+ [`track`]) are each an
//!   [`aegis_hal::stage::Stage`] that writes typed metadata (`aegis_hal::analytics`).
//!
//! A model is identified by name, version and the SHA-256 of its file ([`ModelRef`]), the
//! same triple a signed workflow's `requires.models` names. This crate must not know about
//! MQTT or the web (see `shared/DESIGN.md` §1).

pub mod batch;
pub mod engine;
pub mod engine_build;
pub mod geometry;
pub mod gpu_io;
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

/// Where the unit tests find the models and ONNX Runtime: `AEGIS_MODELS_DIR` (the cross
/// build's tests under qemu point it at the aarch64 runtime; one process loads one runtime,
/// so a wrong one fails every later test in it too), else the repository's `.models`.
#[cfg(test)]
pub(crate) fn test_models_dir() -> std::path::PathBuf {
    std::env::var_os("AEGIS_MODELS_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models"))
}
