//! The detection + tracking stage: any YOLOv8-style detector, optionally restricted to some
//! classes, feeding the SORT/ByteTrack-style [`Tracker`]; tracks (stable ids) become frame
//! metadata and, optionally, boxes drawn into the picture.
//!
//! Live output keeps the tracker's birth gate: a track appears in the frame that confirms it,
//! never earlier. That frame's object also carries the hidden frames
//! ([`Object::track_backfill`]: how many, and the first one's seq and times), so that stored
//! track summaries can start where the track really started.

use aegis_config::DetectStage;
use aegis_hal::Frame;
use aegis_hal::analytics::{Object, ObjectSource, TrackBackfill};
use aegis_hal::stage::{Stage, StageError, StageOutcome};

use super::detector::{Detector, Thresholds};
use super::pixels::{Rect, outline};
use super::{BuildError, BuildStage, loaded_model};
use crate::geometry::BoxXywh;
use crate::registry::{LoadedModel, Registry};
use crate::track::{Detection, PastTrack, Tracker, TrackerConfig};

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

impl BuildStage for DetectStage {
    fn build(&self, models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
        let settings = DetectSettings {
            classes: self.classes.clone(),
            min_score: self.min_score,
            nms_iou: self.nms_iou,
            tracker: TrackerConfig {
                iou_threshold: self.tracker.iou_threshold,
                max_age: self.tracker.max_age,
                min_hits: self.tracker.min_hits,
                high_score: f64::from(self.min_score),
                min_score: self.tracker.low_score,
            },
            draw: self.draw,
            every_n_frames: self.every_n_frames,
        };
        Ok(Box::new(DetectTrack::new(
            &*loaded_model(models, &self.model)?,
            settings,
        )?))
    }
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
    runs: RunLog,
}

/// Most detector runs remembered for back-fill (the validated `min_hits` + `max_age` + 1 is
/// at most 331); a bound so that settings that skipped validation cannot ask for a huge ring.
const MAX_RUNS: usize = 1024;

/// The last detector runs, by tracker frame number: turns the tracker's back-fill (tracker
/// frames) into stream frames. A fixed ring, filled in place: no allocation per frame.
#[derive(Debug)]
struct RunLog {
    /// `(tracker frame, the run as a one-run back-fill)`: the frame the detector ran on, and
    /// in `frames`, that frame and the ones after it that carried its tracks.
    ring: Vec<Option<(u64, TrackBackfill)>>,
}

impl RunLog {
    /// Room for every frame a track can be hidden in: the tracker keeps at most `min_hits`
    /// hidden frames per track, `min_hits - 1` of them right before the confirming frame and
    /// one at most `max_age + 1` frames before those.
    fn new(min_hits: u32, max_age: u32) -> Self {
        let len = (min_hits as usize)
            .saturating_add(max_age as usize)
            .saturating_add(1)
            .min(MAX_RUNS);
        RunLog {
            ring: vec![None; len],
        }
    }

    fn slot(&mut self, tracker_frame: u64) -> &mut Option<(u64, TrackBackfill)> {
        let len = self.ring.len() as u64;
        &mut self.ring[(tracker_frame % len) as usize]
    }

    /// The detector ran on `frame`, as the tracker's frame `tracker_frame` (from 1).
    fn ran(&mut self, tracker_frame: u64, frame: &Frame) {
        *self.slot(tracker_frame) = Some((
            tracker_frame,
            TrackBackfill {
                frames: 1,
                first_seq: frame.seq,
                first_pts_us: frame.pts_us,
                first_wallclock_us: frame.meta.wallclock_us.unwrap_or_else(now_us),
            },
        ));
    }

    /// A frame without a detector run carried the tracks of run `tracker_frame`.
    fn carried(&mut self, tracker_frame: u64) {
        if let Some((f, run)) = self.slot(tracker_frame)
            && *f == tracker_frame
        {
            run.frames = run.frames.saturating_add(1);
        }
    }

    /// Run `tracker_frame`, while it is remembered.
    fn get(&self, tracker_frame: u64) -> Option<&TrackBackfill> {
        let len = self.ring.len() as u64;
        match &self.ring[(tracker_frame % len) as usize] {
            Some((f, run)) if *f == tracker_frame => Some(run),
            _ => None,
        }
    }
}

/// Microseconds since the Unix epoch, now (a frame without a capture wall clock is timed
/// when it is analysed, as the agent times its events).
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl DetectTrack {
    /// The stage over a loaded detector; fails when a class is not in the model's labels.
    pub fn new(model: &LoadedModel, settings: DetectSettings) -> Result<Self, BuildError> {
        let mut keep = vec![settings.classes.is_empty(); model.labels.len()];
        for c in &settings.classes {
            let i = model.labels.iter().position(|l| l == c).ok_or_else(|| {
                BuildError::UnknownClass {
                    model: model.spec.name.clone(),
                    class: c.clone(),
                    known: None,
                }
            })?;
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
        let runs = RunLog::new(tracker.min_hits, tracker.max_age);
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
            runs,
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
            self.runs.carried(self.tracker.frame());
        }
        frame.meta.objects.clear_from(ObjectSource::Detect);
        let (w, h) = (frame.layout.width, frame.layout.height);
        for o in &mut self.last {
            frame.meta.objects.push(*o);
            // The back-fill belongs to the confirming frame only, not to the ones carrying it.
            o.track_backfill = None;
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
                track_backfill: None,
            });
        }
        self.runs.ran(self.tracker.frame(), frame);
        attach_backfill(&self.runs, self.tracker.backfill(), &mut self.last);
        Ok(())
    }
}

/// Puts the tracker's back-fill (`past`, in frame order) on the objects of the tracks it
/// confirmed: how many frames they were hidden in and the first one's seq and times.
fn attach_backfill(runs: &RunLog, past: &[PastTrack], objects: &mut [Object]) {
    for p in past {
        let (Some(run), Some(o)) = (
            runs.get(p.frame),
            objects.iter_mut().find(|o| o.track_id == Some(p.track.id)),
        ) else {
            continue;
        };
        match &mut o.track_backfill {
            Some(b) => b.frames = b.frames.saturating_add(run.frames),
            None => o.track_backfill = Some(*run),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use aegis_hal::frame::FrameLayout;
    use aegis_hal::image::{RgbImage, load_png};
    use aegis_hal::pixel::{Matrix, Plane, rgb24_to_i420};
    use aegis_hal::{PixelFormat, StreamId, SurfacePool};

    use super::*;
    use crate::engine::EngineSettings;
    use crate::registry::{BatchSettings, ModelKind, ModelSpec, load};

    const WALL0: i64 = 1_700_000_000_000_000;

    fn frame(pool: &SurfacePool, img: &RgbImage, seq: u64) -> Frame {
        let pts = seq as i64 * 40_000;
        let mut f = Frame::from_pool(pool, StreamId::new("cam"), seq, pts, 40_000).unwrap();
        f.meta.wallclock_us = Some(WALL0 + pts);
        let [y, u, v] = f.planes_mut();
        rgb24_to_i420(
            Plane::new(&img.data, img.width * 3),
            img.width & !1,
            img.height & !1,
            Matrix::Bt601,
            y,
            u,
            v,
        )
        .unwrap();
        f
    }

    /// The real stage on a grey picture, then a photo with a face: the face's track is
    /// reported from the frame that confirms it, and that frame carries the hidden ones.
    #[test]
    fn a_confirmed_track_carries_its_hidden_frames_once() {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let models = crate::test_models_dir();
        let (photo, runtime, onnx) = (
            repo.join(".samples/astronaut.png"),
            models.join("libonnxruntime.so.1.32.0"),
            models.join("nudenet-320n.onnx"),
        );
        if ![&photo, &runtime, &onnx].iter().all(|p| p.exists()) {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must fetch models and media (just models, tools/fetch-media.sh)"
            );
            eprintln!("skipping: run `just models` and tools/fetch-media.sh");
            return;
        }
        let photo = load_png(&photo).unwrap();
        let grey = RgbImage {
            data: vec![128; photo.data.len()],
            ..photo.clone()
        };
        let spec = ModelSpec {
            name: "nudenet".into(),
            version: 1,
            kind: ModelKind::NudeNet,
            file: onnx,
            sha256: None,
            input_size: 320,
            labels: None,
        };
        let model = Arc::new(
            load(
                &EngineSettings::cpu(&runtime, 1),
                &spec,
                BatchSettings::default(),
            )
            .unwrap(),
        );
        let mut d = DetectTrack::new(
            &model,
            DetectSettings {
                classes: vec!["FACE_FEMALE".into()],
                min_score: 0.4,
                nms_iou: 0.45,
                tracker: TrackerConfig::default(), // min_hits 3
                draw: false,
                every_n_frames: 2,
            },
        )
        .unwrap();
        let pool = SurfacePool::new(
            FrameLayout::new(PixelFormat::I420, photo.width & !1, photo.height & !1),
            2,
        );
        // Detector runs on seq 0, 2, 4 (grey: the sequence's first min_hits runs, where
        // everything is reported), then on 6 and 8 (the face, hidden), 10 (confirmed).
        let mut seen = Vec::new();
        for seq in 0..14 {
            let mut f = frame(&pool, if seq < 6 { &grey } else { &photo }, seq);
            d.process(&mut f).unwrap();
            let objects: Vec<Object> = f.meta.objects.iter().copied().collect();
            match seq {
                0..10 => assert!(objects.is_empty(), "seq {seq}: {objects:?}"),
                _ => {
                    assert_eq!(objects.len(), 1, "seq {seq}: {objects:?}");
                    seen.push((seq, objects[0]));
                }
            }
        }
        let id = seen[0].1.track_id.unwrap();
        assert!(seen.iter().all(|(_, o)| o.track_id == Some(id)), "{seen:?}");
        assert_eq!(
            seen[0].1.track_backfill,
            Some(TrackBackfill {
                frames: 4, // seq 6 to 9: two runs, each carried on one more frame
                first_seq: 6,
                first_pts_us: 240_000,
                first_wallclock_us: WALL0 + 240_000,
            })
        );
        // Only the confirming frame: not the frame carrying its tracks, nor later runs.
        assert!(
            seen[1..].iter().all(|(_, o)| o.track_backfill.is_none()),
            "{seen:?}"
        );
    }

    /// A track hidden, lost for `max_age` frames, then matched `min_hits` times in a row: the
    /// frame before the gap is still in the ring, and carried frames count.
    #[test]
    fn backfill_reaches_back_over_a_gap_of_max_age() {
        let cfg = TrackerConfig {
            max_age: 5,
            min_hits: 3,
            ..TrackerConfig::default()
        };
        let mut tracker = Tracker::new(cfg);
        let mut runs = RunLog::new(cfg.min_hits, cfg.max_age);
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 16, 16), 1);
        let det = Detection {
            bbox: BoxXywh {
                x: 100.0,
                y: 100.0,
                w: 40.0,
                h: 80.0,
            },
            score: 0.9,
            class: 0,
        };
        let mut confirmed = None;
        // Tracker frames 1-3 empty, 4 the box, 5-9 nothing (5 = max_age), 10-12 the box.
        for n in 1..=12u64 {
            let dets: &[Detection] = if n == 4 || n >= 10 { &[det] } else { &[] };
            let tracks = tracker.update(dets);
            // The detector runs every other frame: seq 0, 2, 4, ...; frame 2n-1 carries it.
            let seq = 2 * (n - 1);
            let f =
                Frame::from_pool(&pool, StreamId::new("cam"), seq, seq as i64 * 100, 100).unwrap();
            runs.ran(tracker.frame(), &f);
            let mut objects: Vec<Object> = tracks
                .iter()
                .map(|t| Object {
                    label: "person",
                    class: 0,
                    score: t.score as f32,
                    bbox: [0.0; 4],
                    track_id: Some(t.id),
                    source: ObjectSource::Detect,
                    track_backfill: None,
                })
                .collect();
            attach_backfill(&runs, tracker.backfill(), &mut objects);
            runs.carried(tracker.frame());
            if let Some(o) = objects.first() {
                assert_eq!(n, 12, "reported before it was confirmed: {o:?}");
                confirmed = Some(*o);
            }
        }
        let b = confirmed.expect("confirmed in frame 12").track_backfill;
        // Hidden in tracker frames 4, 10 and 11: seq 6, 18, 20, two frames each.
        assert_eq!(
            b,
            Some(TrackBackfill {
                frames: 6,
                first_seq: 6,
                first_pts_us: 600,
                first_wallclock_us: b.map_or(0, |b| b.first_wallclock_us),
            })
        );
        // No capture wall clock: the agent's clock when it ran, not the epoch.
        assert!(b.unwrap().first_wallclock_us > WALL0, "{b:?}");
    }
}
