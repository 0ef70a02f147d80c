//! The `moderate` stage: a nudity detector every N frames, and the policy that acts on it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StageModel, StageSection};
use crate::error::Problem;
use crate::model::ModelKindConfig;
use crate::recover::join_key;
use crate::validate::{check_not_empty, check_range};

fn default_rule_score() -> f32 {
    0.5
}
fn default_every_n_frames() -> u32 {
    5
}
fn default_blur_strength() -> u32 {
    24
}

/// A moderation action, weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModerationActionConfig {
    /// Only record the verdict (an event).
    Alert,
    /// Blur the detected region.
    BlurRegion,
    /// Blur the whole frame.
    BlurFrame,
    /// Drop the frame from every output.
    Drop,
}

/// One moderation rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationRule {
    /// Class names of the model (e.g. `FEMALE_BREAST_EXPOSED`).
    pub classes: Vec<String>,
    /// Minimum detection score, 0 to 1.
    #[serde(default = "default_rule_score")]
    pub min_score: f32,
    /// What to do.
    pub action: ModerationActionConfig,
}

/// Settings of the `moderate` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerateStage {
    /// Name of a `nudenet` (or other detector) model in `inference.models`.
    pub model: String,
    /// Run the detector on every Nth frame (1 to 300); the verdict holds in
    /// between.
    #[serde(default = "default_every_n_frames")]
    pub every_n_frames: u32,
    /// Blur strength 2 to 64.
    #[serde(default = "default_blur_strength")]
    pub blur_strength: u32,
    /// The policy. Omitted: exposed intimate parts are blurred at score 0.5.
    #[serde(default)]
    pub rules: Option<Vec<ModerationRule>>,
}

impl StageSection for ModerateStage {
    const KIND: &'static str = "moderate";
    const EXAMPLE: &'static str =
        "{model: nudenet, rules: [{classes: [FACE_FEMALE], action: blur_region}]}";

    fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
        check_not_empty(out, join_key(prefix, "model"), &self.model);
        check_range(
            out,
            join_key(prefix, "every_n_frames"),
            self.every_n_frames,
            &(1..=300),
        );
        check_range(
            out,
            join_key(prefix, "blur_strength"),
            self.blur_strength,
            &(2..=64),
        );
        for (i, rule) in self.rules.iter().flatten().enumerate() {
            let p = format!("{}[{i}]", join_key(prefix, "rules"));
            if rule.classes.is_empty() {
                out.push(Problem::new(
                    join_key(&p, "classes"),
                    "must name at least one class",
                ));
            }
            check_range(out, join_key(&p, "min_score"), rule.min_score, &(0.0..=1.0));
        }
    }

    fn model(&self) -> Option<StageModel<'_>> {
        Some(StageModel {
            name: &self.model,
            kinds: &[ModelKindConfig::Nudenet, ModelKindConfig::Yolov8],
        })
    }
}
