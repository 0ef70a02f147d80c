//! From the `inference` config section and a pipeline's stages to loaded models. Only the
//! models the pipeline uses are loaded; each is loaded once (one session, one batcher) and
//! shared by every stream's stage. The stages themselves are built by
//! [`aegis_models::stages::build`], each kind beside its stage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_config::{InferenceConfig, InferenceProvider, PipelineConfig, StageConfig};
use aegis_hal::stage::Stage;
use aegis_models::engine::{EngineSettings, Provider};
use aegis_models::registry::{BatchSettings, ModelSpec, Registry};

/// Why a pipeline's models did not load.
#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    /// A stage names a model the `inference` section does not define.
    #[error("no model {0:?} in inference.models")]
    NotConfigured(String),
    /// The registry refused a model (file, checksum, shape, engine).
    #[error(transparent)]
    Registry(#[from] aegis_models::registry::RegistryError),
}

/// The loaded models of a pipeline.
pub struct Inference {
    registry: Registry,
}

impl std::fmt::Debug for Inference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.registry.iter().map(|m| &m.spec.name))
            .finish()
    }
}

/// Engine settings from the config.
pub fn engine_settings(inf: &InferenceConfig, cuda_device: u32) -> EngineSettings {
    let device = cuda_device as i32;
    EngineSettings {
        runtime: inf.runtime.clone(),
        provider: match inf.provider {
            InferenceProvider::Cpu => Provider::Cpu,
            InferenceProvider::Cuda => Provider::Cuda { device },
            InferenceProvider::Tensorrt => Provider::TensorRt {
                device,
                engine_cache_dir: inf.tensorrt.engine_cache_dir.clone(),
                fp16: inf.tensorrt.fp16,
                int8: inf.tensorrt.int8,
                int8_calibration_table: inf.tensorrt.int8_calibration_table.clone(),
                dla_core: inf.tensorrt.dla_core,
            },
        },
        fallback_to_cpu: inf.cpu_fallback,
        threads: inf.threads as usize,
        cuda_graph: inf.cuda_graph,
    }
}

/// The model names `stages` use.
pub fn used_models(stages: &[StageConfig]) -> Vec<&str> {
    let mut names: Vec<&str> = stages
        .iter()
        .filter_map(|s| s.model().map(|m| m.name))
        .collect();
    names.sort_unstable();
    names.dedup();
    names
}

/// The registry's spec of a configured (or installed) model.
pub fn spec_of(m: &aegis_config::ModelConfig) -> ModelSpec {
    ModelSpec {
        name: m.name.clone(),
        version: m.version,
        kind: m.kind.into(),
        file: m.file.clone(),
        sha256: m.sha256.clone(),
        input_size: m.input_size() as usize,
        labels: m.labels.clone(),
    }
}

impl Inference {
    /// No models (pipelines without inference stages).
    pub fn none() -> Arc<Inference> {
        Arc::new(Inference {
            registry: Registry::default(),
        })
    }

    /// Loads the models `pipeline`'s stages name; fails naming the model and the problem.
    pub fn load(
        inf: &InferenceConfig,
        pipeline: &PipelineConfig,
        cuda_device: u32,
    ) -> Result<Arc<Inference>, InferenceError> {
        Self::load_reusing(inf, pipeline, cuda_device, &Inference::none())
    }

    /// [`Inference::load`], sharing the unchanged models `loaded` holds (a pipeline switch).
    pub fn load_reusing(
        inf: &InferenceConfig,
        pipeline: &PipelineConfig,
        cuda_device: u32,
        loaded: &Inference,
    ) -> Result<Arc<Inference>, InferenceError> {
        let mut specs = Vec::new();
        for name in used_models(&pipeline.stages) {
            let m = inf
                .models
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| InferenceError::NotConfigured(name.to_string()))?;
            specs.push(spec_of(m));
        }
        if specs.is_empty() {
            return Ok(Inference::none());
        }
        // A GPU provider serves the streams one request after another unless told to batch
        // (inference.gpu_batching: see its docs for the measurement).
        let gpu = inf.provider != aegis_config::InferenceProvider::Cpu;
        let batch = BatchSettings {
            max_batch: if gpu && !inf.gpu_batching {
                1
            } else {
                inf.max_batch as usize
            },
            window: Duration::from_millis(u64::from(inf.batch_window_ms)),
            // The CPU provider's one session already has every core (its intra-op pool).
            sessions: if gpu { inf.sessions as usize } else { 1 },
        };
        let registry = Registry::load_reusing(
            &engine_settings(inf, cuda_device),
            &specs,
            batch,
            &loaded.registry,
        )?;
        Ok(Arc::new(Inference { registry }))
    }

    /// The registry (for stats).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The ONNX Runtime provider the models run on (`cpu`, `cuda`, `tensorrt`, with
    /// `+graph` when they replay CUDA graphs; empty without models), as the benchmarks
    /// report it.
    pub fn provider(&self) -> String {
        self.registry
            .iter()
            .next()
            .map(|m| {
                let graph = if m.cuda_graph() { "+graph" } else { "" };
                format!("{}{graph}", m.provider)
            })
            .unwrap_or_default()
    }

    /// One stream's stages (see [`aegis_models::stages::build`]).
    pub fn build_stages(
        &self,
        cfg: &[StageConfig],
    ) -> Result<Vec<Box<dyn Stage>>, aegis_models::stages::StageBuildError> {
        aegis_models::stages::build(cfg, &self.registry)
    }
}

/// What the running pipeline's stages use: the pipeline publishes it when it starts and
/// when it switches stages (a workflow), and the web page's model list reads it. Nothing
/// here is on the frame path.
#[derive(Debug, Default)]
pub struct ModelsInUse {
    current: Mutex<Option<InUse>>,
}

/// The running pipeline's stages and the models they share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InUse {
    /// Each stage, in pipeline order.
    pub stages: Vec<StageUse>,
    /// Each loaded model.
    pub loaded: Vec<LoadedInfo>,
}

/// One stage of the running pipeline.
#[derive(Debug, Clone, PartialEq)]
pub struct StageUse {
    /// Its place in the pipeline (0-based).
    pub index: usize,
    /// Its kind (`detect`, `moderate`, ...).
    pub kind: &'static str,
    /// The model it names (`None`: it runs none).
    pub model: Option<String>,
}

/// A loaded model, as the registry verified it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedInfo {
    /// Registry name.
    pub name: String,
    /// Version.
    pub version: u32,
    /// The execution provider that runs it (`cpu` after a fallback).
    pub provider: &'static str,
    /// The file's SHA-256 when it was loaded.
    pub sha256: String,
}

impl ModelsInUse {
    /// `stages` now run with `inference`'s models.
    pub fn publish(&self, stages: &[StageConfig], inference: &Inference) {
        let mut loaded: Vec<LoadedInfo> = inference
            .registry
            .iter()
            .map(|m| LoadedInfo {
                name: m.spec.name.clone(),
                version: m.spec.version,
                provider: m.provider,
                sha256: m.sha256.clone(),
            })
            .collect();
        loaded.sort_by(|a, b| a.name.cmp(&b.name));
        let stages = stages
            .iter()
            .enumerate()
            .map(|(index, s)| StageUse {
                index,
                kind: s.kind(),
                model: s.model().map(|m| m.name.to_string()),
            })
            .collect();
        self.set(InUse { stages, loaded });
    }

    /// `now` runs.
    pub fn set(&self, now: InUse) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(now);
    }

    /// What runs now (`None`: no pipeline has started yet).
    pub fn current(&self) -> Option<InUse> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
