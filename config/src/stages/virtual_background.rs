//! The `virtual_background` stage: segments the person and replaces the background.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StageFile, StageModel, StageSection};
use crate::error::Problem;
use crate::model::ModelKindConfig;
use crate::recover::join_key;
use crate::validate::{check_not_empty, check_range, parse_colour};

fn default_smoothing() -> f32 {
    0.6
}
fn default_feather() -> u32 {
    2
}
fn default_mask_threshold() -> f32 {
    0.25
}

/// Settings of the `virtual_background` stage. Give exactly one of `image`,
/// `blur` or `colour`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualBackgroundStage {
    /// Name of a `selfie_segmentation` model in `inference.models`.
    pub model: String,
    /// Background picture (PNG), stretched to the frame.
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Blur the real background instead; strength 2 to 64 (larger is
    /// blurrier).
    #[serde(default)]
    pub blur: Option<u32>,
    /// A solid colour instead, as `#rrggbb`.
    #[serde(default)]
    pub colour: Option<String>,
    /// Temporal smoothing 0 to 0.95: how much an uncertain mask pixel keeps of
    /// the previous frame (less flicker at the edges; confident pixels follow
    /// at once).
    #[serde(default = "default_smoothing")]
    pub smoothing: f32,
    /// Edge feather radius in mask pixels (0 to 8; the mask is 256x256).
    #[serde(default = "default_feather")]
    pub feather: u32,
    /// Mask values below this are background and above 1 - threshold person;
    /// in between they blend (0 to 0.49).
    #[serde(default = "default_mask_threshold")]
    pub threshold: f32,
}

impl StageSection for VirtualBackgroundStage {
    const KIND: &'static str = "virtual_background";
    const EXAMPLE: &'static str = "{model: selfie, colour: \"#00ff00\"}";

    fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
        check_not_empty(out, join_key(prefix, "model"), &self.model);
        let given = [
            self.image.is_some(),
            self.blur.is_some(),
            self.colour.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            out.push(Problem::new(
                prefix.to_string(),
                "give exactly one of `image`, `blur` or `colour`",
            ));
        }
        if let Some(b) = self.blur {
            check_range(out, join_key(prefix, "blur"), b, &(2..=64));
        }
        if let Some(c) = &self.colour
            && parse_colour(c).is_none()
        {
            out.push(Problem::new(
                join_key(prefix, "colour"),
                format!("{c:?} is not a #rrggbb colour"),
            ));
        }
        check_range(
            out,
            join_key(prefix, "smoothing"),
            self.smoothing,
            &(0.0..=0.95),
        );
        check_range(out, join_key(prefix, "feather"), self.feather, &(0..=8));
        check_range(
            out,
            join_key(prefix, "threshold"),
            self.threshold,
            &(0.0..=0.49),
        );
    }

    fn model(&self) -> Option<StageModel<'_>> {
        Some(StageModel {
            name: &self.model,
            kinds: &[ModelKindConfig::SelfieSegmentation],
        })
    }

    fn files(&self) -> Vec<StageFile<'_>> {
        self.image
            .iter()
            .map(|path| StageFile {
                setting: "image",
                path,
            })
            .collect()
    }
}
