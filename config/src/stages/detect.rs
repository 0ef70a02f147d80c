//! The `detect` stage: a YOLOv8-style detector and a tracker giving stable ids.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{StageModel, StageSection};
use crate::error::Problem;
use crate::model::{ModelKindConfig, default_true};
use crate::recover::join_key;
use crate::validate::{check_not_empty, check_range};

fn default_track_iou() -> f64 {
    0.3
}
fn default_track_max_age() -> u32 {
    30
}
fn default_track_min_hits() -> u32 {
    3
}
fn default_track_low_score() -> f64 {
    0.1
}
fn default_detect_score() -> f32 {
    0.4
}
fn default_detect_every() -> u32 {
    1
}
fn default_nms_iou() -> f64 {
    0.45
}

/// Tracker parameters of the `detect` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackerParams {
    /// Least IoU between a track's prediction and a detection to match (0 to 1).
    #[serde(default = "default_track_iou")]
    pub iou_threshold: f64,
    /// Frames a track survives without a match (death), 1 to 300.
    #[serde(default = "default_track_max_age")]
    pub max_age: u32,
    /// Consecutive matches before a track is reported (birth), 1 to 30.
    #[serde(default = "default_track_min_hits")]
    pub min_hits: u32,
    /// Detections below this score only extend existing tracks (ByteTrack's
    /// second pass), 0 to 1.
    #[serde(default = "default_track_low_score")]
    pub low_score: f64,
}

impl Default for TrackerParams {
    fn default() -> Self {
        TrackerParams {
            iou_threshold: default_track_iou(),
            max_age: default_track_max_age(),
            min_hits: default_track_min_hits(),
            low_score: default_track_low_score(),
        }
    }
}

/// Settings of the `detect` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DetectStage {
    /// Name of a `yolov8` or `nudenet` model in `inference.models`.
    pub model: String,
    /// Only these class names (omitted or empty: all classes).
    #[serde(default)]
    pub classes: Vec<String>,
    /// Minimum score of a detection that may start a track (0 to 1).
    #[serde(default = "default_detect_score")]
    pub min_score: f32,
    /// Non-maximum suppression IoU (0 to 1).
    #[serde(default = "default_nms_iou")]
    pub nms_iou: f64,
    /// Draw the tracked boxes into the picture.
    #[serde(default = "default_true")]
    pub draw: bool,
    /// Run the detector on every Nth frame (1 to 30); the frames in between
    /// carry the last tracks. The tracker's ages count detector runs.
    #[serde(default = "default_detect_every")]
    pub every_n_frames: u32,
    /// Tracker parameters.
    #[serde(default)]
    pub tracker: TrackerParams,
}

impl StageSection for DetectStage {
    const KIND: &'static str = "detect";
    const EXAMPLE: &'static str = "{model: detector, every_n_frames: 2}";

    fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
        check_not_empty(out, join_key(prefix, "model"), &self.model);
        check_range(
            out,
            join_key(prefix, "min_score"),
            self.min_score,
            &(0.0..=1.0),
        );
        check_range(out, join_key(prefix, "nms_iou"), self.nms_iou, &(0.0..=1.0));
        check_range(
            out,
            join_key(prefix, "every_n_frames"),
            self.every_n_frames,
            &(1..=30),
        );
        let t = join_key(prefix, "tracker");
        check_range(
            out,
            join_key(&t, "iou_threshold"),
            self.tracker.iou_threshold,
            &(0.0..=1.0),
        );
        check_range(
            out,
            join_key(&t, "max_age"),
            self.tracker.max_age,
            &(1..=300),
        );
        check_range(
            out,
            join_key(&t, "min_hits"),
            self.tracker.min_hits,
            &(1..=30),
        );
        check_range(
            out,
            join_key(&t, "low_score"),
            self.tracker.low_score,
            &(0.0..=1.0),
        );
    }

    fn model(&self) -> Option<StageModel<'_>> {
        Some(StageModel {
            name: &self.model,
            kinds: &[ModelKindConfig::Nudenet, ModelKindConfig::Yolov8],
        })
    }
}
