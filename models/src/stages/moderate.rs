//! The content-moderation stage: NudeNet every N frames, classes mapped to a policy (blur
//! the region, blur the frame, drop the frame, alert only) with per-class thresholds. The
//! verdict of the last analysed frame holds for the frames in between, and becomes typed
//! frame metadata ([`ModerationVerdict`]) either way.

use aegis_config::{ModerateStage, ModerationActionConfig};
use aegis_hal::Frame;
use aegis_hal::analytics::{ModerationAction, ModerationVerdict, Object, ObjectSource};
use aegis_hal::stage::{Stage, StageError, StageOutcome};

use super::detector::Detector;
use super::pixels::{Rect, blur_rect};
use super::{BuildError, BuildStage, loaded_model};
use crate::registry::{LoadedModel, Registry};

/// One policy rule: these classes, at or above this score, get this action.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Class names (as the model's labels name them).
    pub classes: Vec<String>,
    /// Minimum score.
    pub min_score: f32,
    /// What to do.
    pub action: ModerationAction,
}

/// Settings of the stage.
#[derive(Debug, Clone, PartialEq)]
pub struct ModerationSettings {
    /// Run the detector on every Nth frame (1 = every frame).
    pub every_n_frames: u32,
    /// The policy; a class in several rules takes the strongest action that fires.
    pub rules: Vec<Rule>,
    /// Blur strength (downscale factor) for region and frame blurs.
    pub blur_strength: usize,
}

impl ModerationSettings {
    /// A sensible default: exposed intimate parts blurred at 0.5, nothing else.
    pub fn default_policy() -> Vec<Rule> {
        vec![Rule {
            classes: [
                "FEMALE_GENITALIA_EXPOSED",
                "MALE_GENITALIA_EXPOSED",
                "FEMALE_BREAST_EXPOSED",
                "BUTTOCKS_EXPOSED",
                "ANUS_EXPOSED",
            ]
            .map(String::from)
            .to_vec(),
            min_score: 0.5,
            action: ModerationAction::BlurRegion,
        }]
    }
}

/// The action of a config rule.
fn action(a: ModerationActionConfig) -> ModerationAction {
    match a {
        ModerationActionConfig::Alert => ModerationAction::Alert,
        ModerationActionConfig::BlurRegion => ModerationAction::BlurRegion,
        ModerationActionConfig::BlurFrame => ModerationAction::BlurFrame,
        ModerationActionConfig::Drop => ModerationAction::Drop,
    }
}

impl BuildStage for ModerateStage {
    fn build(&self, models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
        let rules = match &self.rules {
            None => ModerationSettings::default_policy(),
            Some(rules) => rules
                .iter()
                .map(|r| Rule {
                    classes: r.classes.clone(),
                    min_score: r.min_score,
                    action: action(r.action),
                })
                .collect(),
        };
        let settings = ModerationSettings {
            every_n_frames: self.every_n_frames,
            rules,
            blur_strength: self.blur_strength as usize,
        };
        Ok(Box::new(Moderation::new(
            &*loaded_model(models, &self.model)?,
            settings,
        )?))
    }
}

/// A flagged region of the last analysed frame.
#[derive(Debug, Clone, Copy)]
struct Flag {
    object: Object,
    action: ModerationAction,
}

/// Content moderation for one stream.
pub struct Moderation {
    detector: Detector,
    settings: ModerationSettings,
    /// Per class index: (threshold, action) of the strongest rule naming it.
    policy: Vec<Option<(f32, ModerationAction)>>,
    flags: Vec<Flag>,
    verdict: Option<ModerationVerdict>,
    since: u32,
    small: Vec<u8>,
    /// Rectangles to blur on this frame (kept: no allocation per frame).
    rects: Vec<Rect>,
    /// The blur's scratch on the GPU (CUDA backend).
    device_scratch: Option<aegis_cuda::CudaSlice<u8>>,
}

impl Moderation {
    /// The stage over a loaded detector. Fails when a rule names a class the model lacks.
    pub fn new(model: &LoadedModel, settings: ModerationSettings) -> Result<Self, BuildError> {
        let mut policy = vec![None; model.labels.len()];
        for rule in &settings.rules {
            for class in &rule.classes {
                let i = model
                    .labels
                    .iter()
                    .position(|l| l == class)
                    .ok_or_else(|| BuildError::UnknownClass {
                        model: model.spec.name.clone(),
                        class: class.clone(),
                        known: Some(model.labels.clone()),
                    })?;
                let slot: &mut Option<(f32, ModerationAction)> = &mut policy[i];
                if slot.is_none_or(|(_, a)| rule.action > a) {
                    *slot = Some((rule.min_score, rule.action));
                }
            }
        }
        Ok(Moderation {
            detector: Detector::new(model),
            settings,
            policy,
            flags: Vec::new(),
            verdict: None,
            since: u32::MAX,
            small: Vec::new(),
            rects: Vec::new(),
            device_scratch: None,
        })
    }

    fn analyse(&mut self, frame: &Frame) -> Result<(), StageError> {
        let dets = self.detector.detect(frame).map_err(|e| StageError {
            stage: "moderate",
            error_type: "inference",
            message: e.to_string(),
        })?;
        self.flags.clear();
        let mut verdict: Option<ModerationVerdict> = None;
        for d in dets {
            let Some((min, action)) = self.policy.get(d.object.class as usize).copied().flatten()
            else {
                continue;
            };
            if d.object.score < min {
                continue;
            }
            let mut object = d.object;
            object.source = ObjectSource::Moderate;
            self.flags.push(Flag { object, action });
            let v = verdict.get_or_insert(ModerationVerdict {
                action,
                label: object.label,
                score: object.score,
                flagged: 0,
                analysed_seq: frame.seq,
            });
            v.flagged += 1;
            if action > v.action || action == v.action && object.score > v.score {
                (v.action, v.label, v.score) = (action, object.label, object.score);
            }
        }
        self.verdict = verdict;
        Ok(())
    }
}

impl Moderation {
    /// Blurs `r`, on the GPU when the frame is there (same result as on the host).
    fn blur(&mut self, frame: &mut Frame, r: Rect, strength: usize) -> Result<(), StageError> {
        let Some(d) = frame.device.as_mut() else {
            blur_rect(frame, r, strength, &mut self.small);
            return Ok(());
        };
        let (nv12, gpu) = d.parts();
        let gpu_err = |e: aegis_cuda::CudaError| StageError {
            stage: "moderate",
            error_type: "gpu",
            message: e.to_string(),
        };
        let (w, h, _) = nv12.geometry();
        let need = w * h;
        if self.device_scratch.as_ref().is_none_or(|s| s.len() < need) {
            self.device_scratch = Some(gpu.alloc_zeros(need).map_err(gpu_err)?);
        }
        let scratch = self.device_scratch.as_mut().expect("allocated above");
        gpu.blur_rect(nv12, r.x, r.y, r.w, r.h, strength, scratch)
            .map_err(gpu_err)
    }
}

impl Stage for Moderation {
    fn kind(&self) -> &'static str {
        "moderate"
    }

    fn process(&mut self, frame: &mut Frame) -> Result<StageOutcome, StageError> {
        if self.since >= self.settings.every_n_frames.max(1) - 1 {
            self.since = 0;
            self.analyse(frame)?;
        } else {
            self.since += 1;
        }
        frame.meta.objects.clear_from(ObjectSource::Moderate);
        for f in &self.flags {
            frame.meta.objects.push(f.object);
        }
        frame.meta.moderation = self.verdict;
        let Some(verdict) = self.verdict else {
            return Ok(StageOutcome::Keep);
        };
        let (w, h) = (frame.layout.width, frame.layout.height);
        let strength = self.settings.blur_strength.max(2);
        let mut rects = std::mem::take(&mut self.rects);
        rects.clear();
        match verdict.action {
            ModerationAction::Drop => return Ok(StageOutcome::Drop),
            ModerationAction::BlurFrame => {
                rects.extend(Rect::from_box([0.0, 0.0, w as f32, h as f32], 0.0, w, h));
            }
            ModerationAction::BlurRegion | ModerationAction::Alert => {
                for f in &self.flags {
                    if f.action == ModerationAction::BlurRegion {
                        rects.extend(Rect::from_box(f.object.bbox, 0.1, w, h));
                    }
                }
            }
        }
        let mut result = Ok(());
        for &r in &rects {
            result = result.and_then(|()| self.blur(frame, r, strength));
        }
        self.rects = rects;
        result.map(|()| StageOutcome::Keep)
    }

    fn on_device(&self) -> bool {
        true
    }
}
