//! The `inference` section: ONNX Runtime and the models.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::default_true;

/// Default ONNX Runtime library (where the Yocto layer and the Debian
/// package install it).
const DEFAULT_ORT_RUNTIME: &str = "/usr/lib/aegis/libonnxruntime.so";

fn default_model_version() -> u32 {
    1
}

fn default_ort_runtime() -> PathBuf {
    PathBuf::from(DEFAULT_ORT_RUNTIME)
}

fn default_sessions() -> u32 {
    1
}

fn default_max_batch() -> u32 {
    8
}

fn default_batch_window_ms() -> u32 {
    0
}

/// Where ONNX Runtime runs the models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InferenceProvider {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// NVIDIA CUDA (`backend.cuda_device` picks the GPU).
    Cuda,
    /// NVIDIA TensorRT through ONNX Runtime (CUDA for the rest of the graph).
    Tensorrt,
}

/// TensorRT options, passed through to ONNX Runtime's TensorRT provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TensorRtOptions {
    /// Cache built engines (and timing data) here; building takes minutes.
    #[serde(default)]
    pub engine_cache_dir: Option<PathBuf>,
    /// Build fp16 engines.
    #[serde(default)]
    pub fp16: bool,
    /// Build int8 engines (needs `int8_calibration_table`).
    #[serde(default)]
    pub int8: bool,
    /// The int8 calibration table's file name.
    #[serde(default)]
    pub int8_calibration_table: Option<String>,
    /// Run on this DLA core (Orin AGX and NX have two, 0-1; Orin Nano none); layers the
    /// DLA cannot take fall back to the GPU. Default: none (GPU only).
    #[serde(default)]
    pub dla_core: Option<u32>,
}

/// What a model is (fixes its pre- and post-processing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKindConfig {
    /// MediaPipe selfie segmentation converted to ONNX (input 256).
    SelfieSegmentation,
    /// NudeNet 320n (YOLOv8n, 18 built-in classes; input 320).
    Nudenet,
    /// Any Ultralytics YOLOv8-style detector (needs `labels`; input 640
    /// unless `input_size` says otherwise).
    Yolov8,
}

/// One model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name the stages use (same rules as ids).
    pub name: String,
    /// Version (what signed workflows require).
    #[serde(default = "default_model_version")]
    pub version: u32,
    /// Kind.
    pub kind: ModelKindConfig,
    /// The ONNX file.
    pub file: PathBuf,
    /// Expected SHA-256 (64 hex digits); a different file is refused at
    /// start-up.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Square input side in pixels (32 to 2048; default by kind).
    #[serde(default)]
    pub input_size: Option<u32>,
    /// Class names, one per line (required for `yolov8`).
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

impl ModelConfig {
    /// The input side: configured, else the kind's.
    pub fn input_size(&self) -> u32 {
        self.input_size.unwrap_or(match self.kind {
            ModelKindConfig::SelfieSegmentation => 256,
            ModelKindConfig::Nudenet => 320,
            ModelKindConfig::Yolov8 => 640,
        })
    }
}

/// The inference runtime and models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// ONNX Runtime shared library, loaded at start-up (JetPack's on a
    /// Jetson; `just models` fetches the PyPI build for development), or
    /// `auto`: the first found of the image's own (/usr/lib/aegis), NVIDIA's
    /// Jetson wheel in dist-packages, /usr/local/lib, the distribution's.
    #[serde(default = "default_ort_runtime")]
    pub runtime: PathBuf,
    /// Execution provider.
    #[serde(default)]
    pub provider: InferenceProvider,
    /// Run on the CPU when the provider cannot be used (logged), instead of
    /// refusing to start.
    #[serde(default = "default_true")]
    pub cpu_fallback: bool,
    /// Threads per model session (0 = all cores).
    #[serde(default)]
    pub threads: u32,
    /// Most frames of different streams per inference call (1 to 64).
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// How long a frame waits for the other streams' frames to batch with
    /// (0 to 100 ms). Default 0: a call takes the requests that queued while the previous
    /// one ran, which batches busy streams without making any wait; a window is paid on
    /// every call whose other clients do not come (a detector that runs every 3rd frame),
    /// and with the demo's stages 4 ms made batching slower than none
    /// (`cargo run -p aegis-models --example batch_window`, docs/inference.md).
    #[serde(default = "default_batch_window_ms")]
    pub batch_window_ms: u32,
    /// Batch the streams' frames on a GPU provider too (`max_batch` applies to
    /// the CPU provider only unless this is on). A batched GPU call always runs
    /// as many rows as the session has clients (at most `max_batch`), padded: a
    /// batch size that changed call by call made ONNX Runtime's CUDA provider
    /// 30-60x slower per call and stalled the pipeline. Off by default: padded,
    /// it broke even with one request per call on an H100 (docs/cuda.md);
    /// `sessions` gained. With `cuda_graph` it gains (every call then runs
    /// `max_batch` rows: 4 gave 1.31x the fps of graphs without batching).
    #[serde(default)]
    pub gpu_batching: bool,
    /// Sessions (instances) of each model on a GPU provider, each on its own thread
    /// and CUDA stream, the streams' stages spread over them in turn (1 to 8). More
    /// than one lets the GPU run several streams' requests at once without batching
    /// them, at the cost of one more copy of the weights and the runtime's arenas per
    /// session: on an H100, 2 sessions gave 1.22-1.34x the fps of 1 at 8 streams
    /// (docs/cuda.md). The CPU provider keeps one session (its thread pool already
    /// has every core). Default 1.
    #[serde(default = "default_sessions")]
    pub sessions: u32,
    /// On a GPU provider, capture each model session's work as a CUDA graph at load and
    /// replay it on every call: one launch instead of one per node (ONNX Runtime's
    /// `enable_cuda_graph`, `trt_cuda_graph_enable` on TensorRT). Each session then runs
    /// one input shape (`max_batch` rows when `gpu_batching` is on, else 1) from buffers
    /// of its own that requests are copied into and out of on the device. A model the
    /// provider cannot capture (a node left to the CPU) runs without one, logged. On an
    /// H100 at 8 streams: 56 fps per stream without, 78 with, 102 with batches of up to 4
    /// or 4 sessions (docs/cuda.md). Ignored by the CPU provider; off by default until
    /// the TensorRT provider's graphs have run on a Jetson.
    #[serde(default)]
    pub cuda_graph: bool,
    /// TensorRT options.
    #[serde(default)]
    pub tensorrt: TensorRtOptions,
    /// The models the stages may name.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            runtime: default_ort_runtime(),
            provider: InferenceProvider::Cpu,
            cpu_fallback: true,
            threads: 0,
            max_batch: default_max_batch(),
            batch_window_ms: default_batch_window_ms(),
            gpu_batching: false,
            sessions: default_sessions(),
            cuda_graph: false,
            tensorrt: TensorRtOptions::default(),
            models: Vec::new(),
        }
    }
}
