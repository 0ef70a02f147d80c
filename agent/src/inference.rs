//! From the `inference` config section and a pipeline's stages to loaded models and stage
//! instances. Only the models the pipeline uses are loaded; each is loaded once (one session,
//! one batcher) and shared by every stream's stage.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use aegis_config::{
    InferenceConfig, InferenceProvider, ModelKindConfig, ModerationActionConfig, PipelineConfig,
    StageConfig,
};
use aegis_hal::analytics::ModerationAction;
use aegis_hal::stage::{Passthrough, Stage, TimestampOverlay};
use aegis_models::engine::{EngineSettings, Provider};
use aegis_models::registry::{BatchSettings, ModelKind, ModelSpec, Registry};
use aegis_models::stages::{
    Background, DetectSettings, DetectTrack, Moderation, ModerationSettings, Rule,
    VirtualBackground, VirtualBackgroundSettings,
};
use aegis_models::track::TrackerConfig;

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
            },
        },
        fallback_to_cpu: inf.cpu_fallback,
        threads: inf.threads as usize,
    }
}

/// The model names `stages` use.
pub fn used_models(stages: &[StageConfig]) -> Vec<&str> {
    let mut names: Vec<&str> = stages
        .iter()
        .filter_map(|s| match s {
            StageConfig::VirtualBackground(v) => Some(v.model.as_str()),
            StageConfig::Moderate(m) => Some(m.model.as_str()),
            StageConfig::Detect(d) => Some(d.model.as_str()),
            _ => None,
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    names
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
    ) -> anyhow::Result<Arc<Inference>> {
        Self::load_reusing(inf, pipeline, cuda_device, &Inference::none())
    }

    /// [`Inference::load`], sharing the unchanged models `loaded` holds (a pipeline switch).
    pub fn load_reusing(
        inf: &InferenceConfig,
        pipeline: &PipelineConfig,
        cuda_device: u32,
        loaded: &Inference,
    ) -> anyhow::Result<Arc<Inference>> {
        let mut specs = Vec::new();
        for name in used_models(&pipeline.stages) {
            let m = inf
                .models
                .iter()
                .find(|m| m.name == name)
                .ok_or_else(|| anyhow::anyhow!("no model {name:?} in inference.models"))?;
            specs.push(ModelSpec {
                name: m.name.clone(),
                version: m.version,
                kind: match m.kind {
                    ModelKindConfig::SelfieSegmentation => ModelKind::SelfieSegmentation,
                    ModelKindConfig::Nudenet => ModelKind::NudeNet,
                    ModelKindConfig::Yolov8 => ModelKind::Yolov8,
                },
                file: m.file.clone(),
                sha256: m.sha256.clone(),
                input_size: m.input_size() as usize,
                labels: m.labels.clone(),
            });
        }
        if specs.is_empty() {
            return Ok(Inference::none());
        }
        let batch = BatchSettings {
            max_batch: inf.max_batch as usize,
            window: Duration::from_millis(u64::from(inf.batch_window_ms)),
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

    /// One stream's stages. Fails (naming the stage) when a stage's model is not loaded, a
    /// class name is unknown or a background image cannot be read.
    pub fn build_stages(&self, cfg: &[StageConfig]) -> Result<Vec<Box<dyn Stage>>, String> {
        let mut stages: Vec<Box<dyn Stage>> = Vec::with_capacity(cfg.len());
        for (i, s) in cfg.iter().enumerate() {
            let fail = |e: String| format!("stages[{i}]: {e}");
            let model = |name: &str| {
                self.registry
                    .get(name)
                    .ok_or_else(|| fail(format!("model {name:?} is not loaded")))
            };
            let stage: Box<dyn Stage> = match s {
                StageConfig::Passthrough(_) => Box::new(Passthrough),
                StageConfig::TimestampOverlay(t) => Box::new(TimestampOverlay::new(
                    t.x as usize,
                    t.y as usize,
                    t.scale as usize,
                    t.show_stream_id,
                )),
                StageConfig::VirtualBackground(v) => {
                    let background = if let Some(path) = &v.image {
                        Background::Image(Arc::new(load_image(path).map_err(fail)?))
                    } else if let Some(c) = &v.colour {
                        Background::Colour(
                            aegis_config::parse_colour(c)
                                .ok_or_else(|| fail(format!("bad colour {c:?}")))?,
                        )
                    } else {
                        Background::Blur {
                            strength: v.blur.unwrap_or(16) as usize,
                        }
                    };
                    Box::new(VirtualBackground::new(
                        &*model(&v.model)?,
                        VirtualBackgroundSettings {
                            background,
                            smoothing: v.smoothing,
                            feather: v.feather as usize,
                            threshold: v.threshold,
                        },
                    ))
                }
                StageConfig::Moderate(m) => {
                    let rules = match &m.rules {
                        None => ModerationSettings::default_policy(),
                        Some(rules) => rules
                            .iter()
                            .map(|r| Rule {
                                classes: r.classes.clone(),
                                min_score: r.min_score,
                                action: match r.action {
                                    ModerationActionConfig::Alert => ModerationAction::Alert,
                                    ModerationActionConfig::BlurRegion => {
                                        ModerationAction::BlurRegion
                                    }
                                    ModerationActionConfig::BlurFrame => {
                                        ModerationAction::BlurFrame
                                    }
                                    ModerationActionConfig::Drop => ModerationAction::Drop,
                                },
                            })
                            .collect(),
                    };
                    let settings = ModerationSettings {
                        every_n_frames: m.every_n_frames,
                        rules,
                        blur_strength: m.blur_strength as usize,
                    };
                    Box::new(Moderation::new(&*model(&m.model)?, settings).map_err(fail)?)
                }
                StageConfig::Detect(d) => {
                    let settings = DetectSettings {
                        classes: d.classes.clone(),
                        min_score: d.min_score,
                        nms_iou: d.nms_iou,
                        tracker: TrackerConfig {
                            iou_threshold: d.tracker.iou_threshold,
                            max_age: d.tracker.max_age,
                            min_hits: d.tracker.min_hits,
                            high_score: f64::from(d.min_score),
                            min_score: d.tracker.low_score,
                        },
                        draw: d.draw,
                        every_n_frames: d.every_n_frames,
                    };
                    Box::new(DetectTrack::new(&*model(&d.model)?, settings).map_err(fail)?)
                }
            };
            stages.push(stage);
        }
        Ok(stages)
    }
}

fn load_image(path: &Path) -> Result<aegis_hal::synth::RgbImage, String> {
    aegis_hal::synth::load_png(path).map_err(|e| format!("background image: {e}"))
}
