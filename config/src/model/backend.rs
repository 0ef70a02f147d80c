//! The `backend` section: which compute backend runs the video pipeline.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// CUDA device index used when `backend.cuda_device` is omitted.
const DEFAULT_CUDA_DEVICE: u32 = 0;

fn default_backend_kind() -> BackendKind {
    BackendKind::Cpu
}

fn default_fallback() -> Option<BackendKind> {
    Some(BackendKind::Cpu)
}

fn default_cuda_device() -> u32 {
    DEFAULT_CUDA_DEVICE
}

/// Compute backend selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Backend that runs decoding and processing: `cpu` (portable, always
    /// available), `cuda` (discrete NVIDIA GPU) or `jetson` (Jetson
    /// hardware engines).
    #[serde(default = "default_backend_kind")]
    pub kind: BackendKind,
    /// Backend to use when the vendor libraries for `kind` are missing.
    /// Defaults to `cpu`. Set to `null` to refuse to start instead of falling
    /// back. Must differ from `kind` (ignored when `kind` is `cpu`, which
    /// needs no vendor library).
    #[serde(default = "default_fallback")]
    pub fallback: Option<BackendKind>,
    /// Index of the GPU to use with the `cuda` backend (0 = first GPU).
    #[serde(default = "default_cuda_device")]
    pub cuda_device: u32,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: default_backend_kind(),
            fallback: default_fallback(),
            cuda_device: default_cuda_device(),
        }
    }
}

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Portable software implementation; always available.
    Cpu,
    /// NVIDIA CUDA on a discrete GPU.
    Cuda,
    /// NVIDIA Jetson hardware engines (NVDEC/NVENC/VIC).
    Jetson,
}

impl BackendKind {
    /// The name used in configuration files (`cpu`, `cuda`, `jetson`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Jetson => "jetson",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
