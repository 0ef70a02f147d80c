//! The detection + tracking stage: any YOLOv8-style detector, optionally restricted to some
//! classes, feeding the SORT/ByteTrack-style [`Tracker`]; tracks (stable ids) become frame
//! metadata and, optionally, boxes drawn into the picture.

use aegis_hal::Frame;
use aegis_hal::analytics::{Object, ObjectSource};
use aegis_hal::stage::{Stage, StageError, StageOutcome};

use super::detector::{Detector, Thresholds};
use super::pixels::{Rect, outline};
use crate::registry::LoadedModel;
use crate::track::{BoxXywh, Detection, Tracker, TrackerConfig};

/// Settings of the stage.
#[derive(Debug, Clone, PartialEq)]
pub struct DetectSettings {
    /// Only these classes (empty = all).
    pub classes: Vec<String>,
    /// Minimum detection score (low-score detections still help ByteTrack keep tracks when
    /// `tracker.min_score` is below this).
    pub min_score: f32,
    /// NMS IoU.
    pub nms_iou: f64,
    /// Tracker parameters (birth `min_hits`, death `max_age`, association IoU, scores).
    pub tracker: TrackerConfig,
    /// Draw the tracked boxes into the picture.
    pub draw: bool,
    /// Run the detector on every Nth frame; the frames between carry the last tracks.
    pub every_n_frames: u32,
}

/// Detection and tracking for one stream.
pub struct DetectTrack {
    detector: Detector,
    keep: Vec<bool>,
    tracker: Tracker,
    draw: bool,
    dets: Vec<Detection>,
    labels: Vec<&'static str>,
    every: u32,
    since: u32,
    last: Vec<Object>,
}

impl DetectTrack {
    /// The stage over a loaded detector; fails when a class is not in the model's labels.
    pub fn new(model: &LoadedModel, settings: DetectSettings) -> Result<Self, String> {
        let mut keep = vec![settings.classes.is_empty(); model.labels.len()];
        for c in &settings.classes {
            let i = model
                .labels
                .iter()
                .position(|l| l == c)
                .ok_or_else(|| format!("model {} has no class {c:?}", model.spec.name))?;
            keep[i] = true;
        }
        let mut detector = Detector::new(model);
        // The detector keeps what the tracker may use; the tracker decides what is reported.
        let floor = settings.min_score.min(settings.tracker.min_score as f32);
        detector.thresholds = Thresholds {
            decode_min: floor,
            min_score: floor,
            iou: settings.nms_iou,
            ..detector.thresholds
        };
        let mut tracker = settings.tracker;
        tracker.high_score = tracker.high_score.max(f64::from(settings.min_score));
        Ok(DetectTrack {
            detector,
            keep,
            tracker: Tracker::new(tracker),
            draw: settings.draw,
            dets: Vec::new(),
            labels: model.labels.clone(),
            every: settings.every_n_frames.max(1),
            since: u32::MAX,
            last: Vec::new(),
        })
    }
}

impl Stage for DetectTrack {
    fn kind(&self) -> &'static str {
        "detect"
    }

    fn process(&mut self, frame: &mut Frame) -> Result<StageOutcome, StageError> {
        if self.since >= self.every - 1 {
            self.since = 0;
            self.detect_and_track(frame)?;
        } else {
            self.since += 1;
        }
        frame.meta.objects.clear_from(ObjectSource::Detect);
        let (w, h) = (frame.layout.width, frame.layout.height);
        for o in &self.last {
            frame.meta.objects.push(*o);
            if self.draw
                && let Some(r) = Rect::from_box(o.bbox, 0.0, w, h)
            {
                match frame.device.as_mut() {
                    Some(d) => {
                        let (nv12, gpu) = d.parts();
                        gpu.outline(nv12, r.x, r.y, r.w, r.h, 235)
                            .map_err(|e| StageError {
                                stage: "detect",
                                error_type: "gpu",
                                message: e.to_string(),
                            })?;
                    }
                    None => outline(frame, r, 235),
                }
            }
        }
        Ok(StageOutcome::Keep)
    }

    fn on_device(&self) -> bool {
        true
    }
}

impl DetectTrack {
    fn detect_and_track(&mut self, frame: &Frame) -> Result<(), StageError> {
        let found = self.detector.detect(frame).map_err(|e| StageError {
            stage: "detect",
            error_type: "inference",
            message: e.to_string(),
        })?;
        self.dets.clear();
        for f in found {
            if self
                .keep
                .get(f.raw.class as usize)
                .copied()
                .unwrap_or(false)
            {
                self.dets.push(Detection {
                    bbox: f.raw.bbox,
                    score: f64::from(f.raw.score),
                    class: f.raw.class,
                });
            }
        }
        let tracks = self.tracker.update(&self.dets);
        self.last.clear();
        for t in &tracks {
            let BoxXywh { x, y, w: bw, h: bh } = t.bbox;
            self.last.push(Object {
                label: self.labels.get(t.class as usize).copied().unwrap_or("?"),
                class: t.class as u16,
                score: t.score as f32,
                bbox: [x as f32, y as f32, (x + bw) as f32, (y + bh) as f32],
                track_id: Some(t.id),
                source: ObjectSource::Detect,
            });
        }
        Ok(())
    }
}
