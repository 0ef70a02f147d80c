//! Multi-object tracking: SORT's Kalman box filter and Hungarian IoU association, with
//! ByteTrack's second pass that lets low-confidence detections keep existing tracks alive (an
//! occluded person's score drops before it disappears), and stable track ids.
//!
//! The tracker sees only boxes, so it runs after any detector, and on public benchmark
//! detections through `aegis track` (MOTChallenge text format, see [`mot`]).
//!
//! Birth gate and back-fill: a new track is reported only once it has matched `min_hits`
//! frames in a row, so a one-frame false alarm never reaches live output. Its hidden
//! (tentative) frames are not lost: the tracker keeps at most `min_hits` of them per track
//! and, in the frame that confirms the track, hands them out through
//! [`Tracker::backfill`], for offline output that can still write earlier frames. Live
//! output ([`Tracker::update`]'s return value) never includes them.

use std::collections::VecDeque;

mod hungarian;
mod kalman;
pub mod mot;

pub use hungarian::assign;
pub use kalman::BoxFilter;

use crate::geometry::BoxXywh;

/// Tracker parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackerConfig {
    /// A detection and a track's prediction must overlap at least this much to match.
    pub iou_threshold: f64,
    /// Frames a track survives without a matching detection (coasting on its prediction).
    pub max_age: u32,
    /// Consecutive matches before a new track is reported (filters short-lived false alarms);
    /// once confirmed, a track is reported in every frame it is matched.
    pub min_hits: u32,
    /// Detections at or above this score start tracks and match first; those below (but at
    /// least `min_score`) only extend existing tracks.
    pub high_score: f64,
    /// Detections below this are ignored.
    pub min_score: f64,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            iou_threshold: 0.3,
            max_age: 30,
            min_hits: 3,
            high_score: 0.5,
            min_score: 0.1,
        }
    }
}

/// One detection in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    /// Box in pixels.
    pub bbox: BoxXywh,
    /// Detector confidence, 0 to 1.
    pub score: f64,
    /// Detector class; tracks never change class.
    pub class: u32,
}

/// A track as reported for one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Track {
    /// Stable id, from 1, never reused.
    pub id: u64,
    /// The filtered box.
    pub bbox: BoxXywh,
    /// Class of the detections that formed it.
    pub class: u32,
    /// Score of the last matched detection.
    pub score: f64,
}

/// A confirmed track as it was in an earlier frame, when the birth gate still hid it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PastTrack {
    /// The frame, counted like [`Tracker::frame`] (the first `update` is frame 1).
    pub frame: u64,
    /// The track as it would have been reported in that frame (the filtered box then).
    pub track: Track,
}

#[derive(Debug, Clone)]
struct TrackState {
    id: u64,
    filter: BoxFilter,
    predicted: BoxXywh,
    class: u32,
    score: f64,
    hit_streak: u32,
    since_update: u32,
    /// Reached `min_hits` consecutive matches once; a confirmed track is reported whenever
    /// it is matched (a single missed detection does not hide it for `min_hits` frames).
    confirmed: bool,
    /// While not confirmed: the last (at most `min_hits`) frames it was matched in but not
    /// reported, as `(frame, filtered box, score)`; handed to `backfill` on confirmation.
    tentative: VecDeque<(u64, BoxXywh, f64)>,
}

/// The tracker of one stream.
#[derive(Debug, Clone)]
pub struct Tracker {
    cfg: TrackerConfig,
    tracks: Vec<TrackState>,
    next_id: u64,
    frame: u64,
    /// Tentative frames of the tracks the last `update` confirmed (reused buffer).
    backfill: Vec<PastTrack>,
}

impl Tracker {
    /// A tracker with `cfg`.
    pub fn new(cfg: TrackerConfig) -> Self {
        Tracker {
            cfg,
            tracks: Vec::new(),
            next_id: 1,
            frame: 0,
            backfill: Vec::new(),
        }
    }

    /// Frames seen so far: the number of [`update`](Self::update) calls.
    pub fn frame(&self) -> u64 {
        self.frame
    }

    /// The frames, before this one, in which the tracks that the last
    /// [`update`](Self::update) confirmed were matched but hidden by the birth gate, in frame
    /// order (at most `min_hits` per track; never a track that has not been confirmed, never
    /// a frame that `update` already reported). Replaced by the next `update`: read it after
    /// each call, or not at all (live use), it never grows.
    pub fn backfill(&self) -> &[PastTrack] {
        &self.backfill
    }

    /// Takes one frame's detections; returns the tracks to report for this frame (live
    /// output): matched in this frame and confirmed (or still in the first `min_hits` frames
    /// of the sequence). The earlier frames of a track confirmed now are in
    /// [`backfill`](Self::backfill), never here.
    pub fn update(&mut self, detections: &[Detection]) -> Vec<Track> {
        self.frame += 1;
        self.backfill.clear();
        for t in &mut self.tracks {
            t.predicted = t.filter.predict();
            t.since_update += 1;
            if t.since_update > 1 {
                t.hit_streak = 0;
            }
        }
        let (high, low): (Vec<&Detection>, Vec<&Detection>) = detections
            .iter()
            .filter(|d| d.score >= self.cfg.min_score && d.bbox.w > 0.0 && d.bbox.h > 0.0)
            .partition(|d| d.score >= self.cfg.high_score);
        let all_tracks: Vec<usize> = (0..self.tracks.len()).collect();
        let (unmatched_tracks, unmatched_high) = self.associate(&all_tracks, &high);
        let (_, _) = self.associate(&unmatched_tracks, &low);
        for d in unmatched_high {
            self.tracks.push(TrackState {
                id: self.next_id,
                filter: BoxFilter::new(d.bbox),
                predicted: d.bbox,
                class: d.class,
                score: d.score,
                hit_streak: 1,
                since_update: 0,
                confirmed: false,
                tentative: VecDeque::new(),
            });
            self.next_id += 1;
        }
        let max_age = self.cfg.max_age;
        self.tracks.retain(|t| t.since_update <= max_age);
        let min_hits = self.cfg.min_hits;
        let early = self.frame <= u64::from(min_hits);
        let cap = min_hits as usize;
        for t in &mut self.tracks {
            if t.confirmed || t.since_update != 0 {
                continue;
            }
            if t.hit_streak >= min_hits {
                t.confirmed = true;
                let (id, class) = (t.id, t.class);
                self.backfill
                    .extend(t.tentative.drain(..).map(|(frame, bbox, score)| PastTrack {
                        frame,
                        track: Track {
                            id,
                            bbox,
                            class,
                            score,
                        },
                    }));
                t.tentative = VecDeque::new();
            } else if !early && cap > 0 {
                // Hidden by the birth gate in this frame: remembered, the oldest dropped.
                if t.tentative.len() == cap {
                    t.tentative.pop_front();
                }
                t.tentative
                    .push_back((self.frame, t.filter.state_box(), t.score));
            }
        }
        self.backfill.sort_by_key(|p| (p.frame, p.track.id));
        self.tracks
            .iter()
            .filter(|t| t.since_update == 0 && (t.confirmed || early))
            .map(|t| Track {
                id: t.id,
                bbox: t.filter.state_box(),
                class: t.class,
                score: t.score,
            })
            .collect()
    }

    /// Matches `tracks` (indices) with `dets` by IoU of the prediction; updates the matched
    /// tracks; returns the unmatched track indices and detections.
    fn associate<'d>(
        &mut self,
        tracks: &[usize],
        dets: &[&'d Detection],
    ) -> (Vec<usize>, Vec<&'d Detection>) {
        let (n, m) = (tracks.len(), dets.len());
        if n == 0 || m == 0 {
            return (tracks.to_vec(), dets.to_vec());
        }
        let mut cost = vec![0.0; n * m];
        for (i, &t) in tracks.iter().enumerate() {
            let tr = &self.tracks[t];
            for (j, d) in dets.iter().enumerate() {
                let iou = if tr.class == d.class {
                    tr.predicted.iou(&d.bbox)
                } else {
                    0.0
                };
                cost[i * m + j] = 1.0 - iou;
            }
        }
        let a = assign(&cost, n, m);
        let mut det_used = vec![false; m];
        let mut unmatched = Vec::new();
        for (i, &t) in tracks.iter().enumerate() {
            match a[i] {
                Some(j) if 1.0 - cost[i * m + j] >= self.cfg.iou_threshold => {
                    det_used[j] = true;
                    let tr = &mut self.tracks[t];
                    tr.filter.update(dets[j].bbox);
                    tr.score = dets[j].score;
                    tr.since_update = 0;
                    tr.hit_streak += 1;
                }
                _ => unmatched.push(t),
            }
        }
        let rest = dets
            .iter()
            .zip(det_used)
            .filter(|(_, used)| !used)
            .map(|(d, _)| *d)
            .collect();
        (unmatched, rest)
    }
}

#[cfg(test)]
mod tests;
