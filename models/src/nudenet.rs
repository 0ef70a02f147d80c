//! The NudeNet 320n detector (YOLOv8n, 18 classes) as the content-moderation stage will use
//! it: NudeNet's own preprocessing (BGR planes, right/bottom padding, bilinear resize),
//! YOLOv8 decoding (score ≥ 0.2) and class-agnostic NMS (score 0.25, IoU 0.45), with every
//! buffer reused across frames.

use aegis_hal::Frame;

use crate::engine::{EngineError, InferenceEngine};
use crate::preprocess::square_bgr_planar;
use crate::yolo::{Detected, decode, nms};

/// The model's input side.
pub const INPUT: usize = 320;

/// NudeNet 3.4's class names, in output order.
pub const CLASSES: [&str; 18] = [
    "FEMALE_GENITALIA_COVERED",
    "FACE_FEMALE",
    "BUTTOCKS_EXPOSED",
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_BREAST_EXPOSED",
    "ANUS_EXPOSED",
    "FEET_EXPOSED",
    "BELLY_COVERED",
    "FEET_COVERED",
    "ARMPITS_COVERED",
    "ARMPITS_EXPOSED",
    "FACE_MALE",
    "BELLY_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "ANUS_COVERED",
    "FEMALE_BREAST_COVERED",
    "BUTTOCKS_COVERED",
];

const DECODE_MIN_SCORE: f32 = 0.2;
const NMS_MIN_SCORE: f32 = 0.25;
const NMS_IOU: f64 = 0.45;

/// A NudeNet detector over an inference engine.
pub struct NudeNet {
    engine: Box<dyn InferenceEngine>,
    input: Vec<f32>,
    output: Vec<f32>,
    detections: Vec<Detected>,
}

impl NudeNet {
    /// Wraps an engine that has the 320n model loaded.
    pub fn new(engine: Box<dyn InferenceEngine>) -> Self {
        NudeNet {
            engine,
            input: vec![0.0; 3 * INPUT * INPUT],
            output: Vec::new(),
            detections: Vec::new(),
        }
    }

    /// Detects on one frame; the result is valid until the next call.
    pub fn detect(&mut self, frame: &Frame) -> Result<&[Detected], EngineError> {
        let lb =
            square_bgr_planar(frame, INPUT, &mut self.input).map_err(|e| EngineError::Run {
                path: "nudenet".into(),
                reason: e.to_string(),
            })?;
        self.engine
            .run(&self.input, &[1, 3, INPUT, INPUT], &mut self.output)?;
        decode(
            &self.output,
            CLASSES.len(),
            DECODE_MIN_SCORE,
            lb,
            &mut self.detections,
        )
        .map_err(|e| EngineError::Run {
            path: "nudenet".into(),
            reason: e.to_string(),
        })?;
        self.detections.retain(|d| d.score >= NMS_MIN_SCORE);
        nms(&mut self.detections, NMS_IOU, true);
        Ok(&self.detections)
    }
}
