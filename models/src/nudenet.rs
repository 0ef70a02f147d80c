//! NudeNet 320n (YOLOv8n, 18 classes): its class names. The detector itself is the generic
//! [`crate::stages::detector::Detector`] with NudeNet's preprocessing (BGR planes,
//! right/bottom padding, bilinear resize) and thresholds (decode ≥ 0.2, class-agnostic NMS at
//! score 0.25 / IoU 0.45: [`crate::stages::detector::Thresholds::NUDENET`]).

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
