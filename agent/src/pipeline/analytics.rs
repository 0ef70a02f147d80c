//! What a stream's stages found, turned into metrics, store events and track summaries, on
//! the stage thread after the stages ran. Nothing here waits: store records are handed to
//! the writer's bounded queue ([`StoreHandle::submit`]) and dropped (counted) when it is full.
//!
//! Events (kind → payload):
//! * `moderation`: each analysed frame with a verdict — action, label, score, flagged
//!   regions;
//! * `track_started` / `track_ended`: a track's first report, and its summary once it has
//!   not been reported for [`TRACK_END_FRAMES`] frames (or the stream ended); the summary
//!   also goes to the `tracks` table. Both include the frames the tracker's birth gate hid
//!   ([`Object::track_backfill`]): `track_started` is written when the track is first
//!   reported but is timed at its first hidden frame, and the summary's first time and frame
//!   count include the hidden frames.
//!
//! Every [`TIMING_EVERY`], the mean latency of each stage and the stream's fps go to the
//! `metrics` table.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_hal::Frame;
use aegis_hal::analytics::{Object, ObjectSource};
use prometheus_client::metrics::counter::Counter;
use serde_json::json;

use crate::metrics::{AnalyticsLabels, Metrics, StreamLabels};
use crate::store::{Event, Record, StoreHandle, new_event_id, now_us};

/// Frames without a report after which a track counts as ended.
pub const TRACK_END_FRAMES: u64 = 90;
/// How often stage timings are stored.
pub const TIMING_EVERY: Duration = Duration::from_secs(10);

/// What the inference stages reported on one stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AnalyticsSummary {
    /// Tracks started (distinct track ids).
    pub tracks: u64,
    /// Frames with a moderation verdict.
    pub moderated: u64,
    /// Frames whose background was replaced.
    pub background_replaced: u64,
    /// Events handed to the store.
    pub events: u64,
}

struct TrackLife {
    label: &'static str,
    first_us: i64,
    last_us: i64,
    last_seq: u64,
    frames: u64,
    best_score: f32,
    last_box: [f32; 4],
}

/// Per-stream analytics bookkeeping (lives on the stage thread).
pub struct AnalyticsTally {
    metrics: Arc<Metrics>,
    stream: String,
    counters: Vec<(&'static str, &'static str, Counter)>,
    tracks_counter: Counter,
    background: Counter,
    max_track: u64,
    /// What was seen so far.
    pub summary: AnalyticsSummary,
    store: Option<StoreHandle>,
    events_topic: Option<String>,
    live: HashMap<u64, TrackLife>,
    last_verdict_seq: Option<u64>,
    stage_names: Vec<String>,
    stage_sums: Vec<(f64, u64)>,
    window: (Instant, u64),
    sensing: Option<Arc<crate::sensing::Sensing>>,
    rules: aegis_sensors::rules::RuleEngine,
    seen: Vec<aegis_sensors::rules::Seen<'static>>,
    frame_at: Option<Instant>,
    started: Instant,
    evidence: Option<Arc<crate::evidence::Evidence>>,
}

impl AnalyticsTally {
    /// Bookkeeping for `stream`; with a `store`, events and timings are recorded.
    pub fn new(
        metrics: Arc<Metrics>,
        stream: &str,
        store: Option<StoreHandle>,
        events_topic: Option<String>,
        stage_names: Vec<String>,
    ) -> Self {
        let sl = StreamLabels {
            stream: stream.to_string(),
        };
        AnalyticsTally {
            tracks_counter: metrics.tracks.get_or_create_owned(&sl),
            background: metrics.background_replaced.get_or_create_owned(&sl),
            metrics,
            stream: stream.to_string(),
            counters: Vec::new(),
            max_track: 0,
            summary: AnalyticsSummary::default(),
            store,
            events_topic,
            live: HashMap::new(),
            last_verdict_seq: None,
            stage_sums: vec![(0.0, 0); stage_names.len()],
            stage_names,
            window: (Instant::now(), 0),
            sensing: None,
            rules: aegis_sensors::rules::RuleEngine::new(Vec::new()),
            seen: Vec::new(),
            frame_at: None,
            started: Instant::now(),
            evidence: None,
        }
    }

    /// Events that the evidence policy names keep clips (or their metadata).
    pub fn with_evidence(mut self, evidence: Option<Arc<crate::evidence::Evidence>>) -> Self {
        self.evidence = evidence;
        self
    }

    /// Events get the fused pose at their frame's time (and a `fused_records` row), and
    /// `rules` are evaluated on every frame.
    pub fn with_fusion(
        mut self,
        sensing: Option<Arc<crate::sensing::Sensing>>,
        rules: aegis_sensors::rules::RuleEngine,
    ) -> Self {
        self.sensing = sensing;
        self.rules = rules;
        self
    }

    /// New rules (a workflow switch).
    pub fn set_rules(&mut self, rules: aegis_sensors::rules::RuleEngine) {
        self.rules = rules;
    }

    fn counter(&mut self, kind: &'static str, label: &'static str, verdict: bool) -> &Counter {
        let i = match self
            .counters
            .iter()
            .position(|(k, l, _)| *k == kind && std::ptr::eq(*l, label))
        {
            Some(i) => i,
            None => {
                let labels = AnalyticsLabels {
                    stream: self.stream.clone(),
                    kind: kind.to_string(),
                    label: label.to_string(),
                };
                let family = if verdict {
                    &self.metrics.moderated
                } else {
                    &self.metrics.objects
                };
                self.counters
                    .push((kind, label, family.get_or_create_owned(&labels)));
                self.counters.len() - 1
            }
        };
        &self.counters[i].2
    }

    /// Records an event: its id, and where the device was (the fused pose), when known.
    fn event(
        &mut self,
        ts_us: i64,
        kind: &str,
        mut payload: serde_json::Value,
    ) -> (String, Option<aegis_ota::evidence::Geotag>) {
        let id = new_event_id();
        let Some(store) = &self.store else {
            return (id, None);
        };
        let mut geotag = None;
        // Geotag: the fused pose at the frame that raised the event.
        if let (Some(sensing), Some(at)) = (&self.sensing, self.frame_at)
            && let Some(p) = sensing.pose_at(at)
        {
            geotag = Some(aegis_ota::evidence::Geotag {
                lat: p.lat,
                lon: p.lon,
                sigma_m: p.sigma_m,
            });
            let iot = serde_json::to_string(&*sensing.iot()).unwrap_or_default();
            payload["pose"] = json!({ "lat": p.lat, "lon": p.lon, "speed_mps": p.speed,
                "heading_deg": p.heading_deg, "sigma_m": p.sigma_m, "since_fix_s": p.since_fix_s });
            store.submit(Record::Fused(Box::new(crate::store::FusedRecord {
                event_id: id.clone(),
                ts_us,
                stream: Some(self.stream.clone()),
                kind: kind.to_string(),
                lat: p.lat,
                lon: p.lon,
                speed_mps: p.speed,
                heading_deg: p.heading_deg,
                sigma_m: p.sigma_m,
                sensors: iot,
            })));
        }
        let event = Event {
            id: id.clone(),
            ts_us,
            stream: Some(self.stream.clone()),
            kind: kind.to_string(),
            payload,
        };
        if store.submit(Record::Event {
            event,
            outbox_topic: self.events_topic.clone(),
        }) {
            self.summary.events += 1;
        }
        (id, geotag)
    }

    /// Keeps evidence of the event `id` (frame time `pts_us`) as `decision` says.
    fn keep(
        &self,
        decision: Option<crate::evidence::Decision>,
        (id, geotag): &(String, Option<aegis_ota::evidence::Geotag>),
        pts_us: i64,
        ts: i64,
    ) {
        if let (Some(e), Some(d)) = (&self.evidence, decision) {
            e.keep(&self.stream, d, id, pts_us, ts, *geotag);
        }
    }

    /// Detection triggers of the evidence policy: a tracked object (of the entry's labels,
    /// its foot point in the entry's zone) raises a `detection` event once per track and
    /// entry, and keeps a clip around it.
    fn evidence_detections(&mut self, frame: &Frame, ts: i64) {
        let Some(e) = self.evidence.clone() else {
            return;
        };
        let (w, h) = (
            frame.layout.width.max(1) as f64,
            frame.layout.height.max(1) as f64,
        );
        for o in frame.meta.objects.iter() {
            let (ObjectSource::Detect, Some(track)) = (o.source, o.track_id) else {
                continue;
            };
            let [x1, _, x2, y2] = o.bbox;
            let foot = (f64::from(x1 + x2) / 2.0 / w, f64::from(y2) / h);
            if let Some((d, zone)) = e.decide_detection(&self.stream, track, o.label, foot) {
                let ev = self.event(
                    ts,
                    "detection",
                    json!({ "track": track, "label": o.label, "zone": zone, "box": o.bbox,
                        "score": o.score, "pts_us": frame.pts_us }),
                );
                self.keep(Some(d), &ev, frame.pts_us, ts);
            }
        }
    }

    /// One stage's processing time for the current frame.
    pub fn stage_time(&mut self, stage: usize, secs: f64) {
        if let Some(s) = self.stage_sums.get_mut(stage) {
            s.0 += secs;
            s.1 += 1;
        }
    }

    /// Counts what the stages left on `frame`.
    pub fn count(&mut self, frame: &Frame) {
        let meta = &frame.meta;
        self.frame_at = Some(meta.decoded_at);
        let ts = meta.wallclock_us.unwrap_or_else(now_us);
        for o in meta.objects.iter() {
            let kind = match o.source {
                ObjectSource::Detect => "detect",
                ObjectSource::Moderate => "moderate",
            };
            self.counter(kind, o.label, false).inc();
            if let Some(id) = o.track_id {
                self.track_seen(id, o, frame, ts);
            }
        }
        if let Some(v) = meta.moderation {
            self.counter(v.action.as_str(), "", true).inc();
            self.summary.moderated += 1;
            if self.last_verdict_seq != Some(v.analysed_seq) {
                self.last_verdict_seq = Some(v.analysed_seq);
                let regions: Vec<_> = meta
                    .objects
                    .iter()
                    .filter(|o| o.source == ObjectSource::Moderate)
                    .map(|o| json!({ "label": o.label, "score": o.score, "box": o.bbox }))
                    .collect();
                let ev = self.event(
                    ts,
                    "moderation",
                    json!({
                        "action": v.action.as_str(), "label": v.label, "score": v.score,
                        "flagged": v.flagged, "seq": v.analysed_seq, "pts_us": frame.pts_us,
                        "regions": regions,
                    }),
                );
                let decision = self
                    .evidence
                    .as_ref()
                    .and_then(|e| e.decide_moderation(v.flagged > 0));
                self.keep(decision, &ev, frame.pts_us, ts);
            }
        }
        if meta.background_replaced {
            self.background.inc();
            self.summary.background_replaced += 1;
        }
        self.evidence_detections(frame, ts);
        self.end_stale_tracks(frame.seq);
        if !self.rules.is_empty() {
            self.evaluate_rules(frame, ts);
        }
        self.window.1 += 1;
        if self.window.0.elapsed() >= TIMING_EVERY {
            self.store_timings();
        }
    }

    /// The rules on this frame's objects and verdict and the sensors at its time.
    fn evaluate_rules(&mut self, frame: &Frame, ts: i64) {
        use aegis_sensors::rules::{Facts, Seen};
        let meta = &frame.meta;
        let (w, h) = (
            frame.layout.width.max(1) as f64,
            frame.layout.height.max(1) as f64,
        );
        self.seen.clear();
        for o in meta
            .objects
            .iter()
            .filter(|o| o.source == ObjectSource::Detect)
        {
            let [x1, _, x2, y2] = o.bbox;
            self.seen.push(Seen {
                label: o.label,
                foot: (f64::from(x1 + x2) / 2.0 / w, f64::from(y2) / h),
            });
        }
        let (t, speed) = match &self.sensing {
            Some(s) => (
                s.clock.at(meta.decoded_at),
                s.pose_at(meta.decoded_at).map(|p| p.speed),
            ),
            None => (
                meta.decoded_at
                    .saturating_duration_since(self.started)
                    .as_secs_f64(),
                None,
            ),
        };
        let empty = HashMap::new();
        let fired = {
            let guard = self.sensing.as_ref().map(|s| s.iot());
            let facts = Facts {
                stream: &self.stream,
                objects: &self.seen,
                moderation: meta.moderation.is_some(),
                sensors: guard.as_deref().unwrap_or(&empty),
                speed,
            };
            self.rules.evaluate(t, &facts)
        };
        for f in fired {
            let ev = self.event(
                ts,
                "rule",
                json!({ "rule": f.rule, "held_s": f.held_s, "pts_us": frame.pts_us }),
            );
            let decision = self.evidence.as_ref().and_then(|e| e.decide_rule(&f.rule));
            self.keep(decision, &ev, frame.pts_us, ts);
        }
    }

    fn track_seen(&mut self, id: u64, o: &Object, frame: &Frame, ts: i64) {
        // Track ids only grow, from 1: a new maximum is a new track.
        if id > self.max_track {
            self.tracks_counter.inc_by(id - self.max_track);
            self.summary.tracks += id - self.max_track;
            self.max_track = id;
        }
        // The frames the birth gate hid, on the frame that confirmed the track.
        let hidden = o.track_backfill.map_or(0, |b| u64::from(b.frames));
        match self.live.get_mut(&id) {
            Some(t) => {
                // Reported before it was confirmed (a sequence's first frames): its first
                // time stands, the hidden frames since then still count.
                if let Some(b) = o.track_backfill {
                    t.first_us = t.first_us.min(b.first_wallclock_us);
                }
                t.last_us = ts;
                t.last_seq = frame.seq;
                t.frames += 1 + hidden;
                t.best_score = t.best_score.max(o.score);
                t.last_box = o.bbox;
            }
            None => {
                let (first_us, first_pts_us) = o.track_backfill.map_or((ts, frame.pts_us), |b| {
                    (b.first_wallclock_us, b.first_pts_us)
                });
                self.live.insert(
                    id,
                    TrackLife {
                        label: o.label,
                        first_us,
                        last_us: ts,
                        last_seq: frame.seq,
                        frames: 1 + hidden,
                        best_score: o.score,
                        last_box: o.bbox,
                    },
                );
                self.event(
                    first_us,
                    "track_started",
                    json!({ "track_id": id, "label": o.label, "score": o.score,
                            "box": o.bbox, "pts_us": first_pts_us,
                            "hidden_frames": hidden }),
                );
            }
        }
    }

    fn end_stale_tracks(&mut self, seq: u64) {
        // Checked every 16th frame: no per-frame scan (or allocation) while tracks live.
        if self.live.is_empty() || !seq.is_multiple_of(16) {
            return;
        }
        let ended: Vec<u64> = self
            .live
            .iter()
            .filter(|(_, t)| seq.saturating_sub(t.last_seq) > TRACK_END_FRAMES)
            .map(|(id, _)| *id)
            .collect();
        for id in ended {
            self.end_track(id);
        }
    }

    fn end_track(&mut self, id: u64) {
        let Some(t) = self.live.remove(&id) else {
            return;
        };
        self.event(
            t.last_us,
            "track_ended",
            json!({ "track_id": id, "label": t.label, "frames": t.frames,
                    "best_score": t.best_score, "first_us": t.first_us, "last_us": t.last_us,
                    "last_box": t.last_box }),
        );
        if let Some(store) = &self.store {
            store.submit(Record::Track {
                stream: self.stream.clone(),
                track_id: id,
                label: t.label.to_string(),
                first_us: t.first_us,
                last_us: t.last_us,
                frames: t.frames,
                best_score: f64::from(t.best_score),
            });
        }
    }

    fn store_timings(&mut self) {
        let elapsed = self.window.0.elapsed().as_secs_f64();
        let frames = self.window.1;
        self.window = (Instant::now(), 0);
        let Some(store) = &self.store else { return };
        let ts = now_us();
        let labels = |stage: Option<&str>| match stage {
            Some(s) => json!({ "stream": self.stream, "stage": s }).to_string(),
            None => json!({ "stream": self.stream }).to_string(),
        };
        store.submit(Record::Metric {
            ts_us: ts,
            name: "stream_fps".into(),
            labels: labels(None),
            value: frames as f64 / elapsed.max(1e-9),
        });
        for (name, (sum, n)) in self.stage_names.iter().zip(&mut self.stage_sums) {
            if *n > 0 {
                store.submit(Record::Metric {
                    ts_us: ts,
                    name: "stage_latency_ms_mean".into(),
                    labels: labels(Some(name)),
                    value: *sum * 1e3 / *n as f64,
                });
            }
            (*sum, *n) = (0.0, 0);
        }
    }

    /// The stage chain was replaced (a workflow switch): timings so far are stored under
    /// the old names, later ones under `names`.
    pub fn set_stages(&mut self, names: Vec<String>) {
        if self.window.1 > 0 {
            self.store_timings();
        }
        self.stage_sums = vec![(0.0, 0); names.len()];
        self.stage_names = names;
    }

    /// The stream ended: every live track ends, timings are stored.
    pub fn finish(&mut self) {
        let ids: Vec<u64> = self.live.keys().copied().collect();
        for id in ids {
            self.end_track(id);
        }
        if self.window.1 > 0 {
            self.store_timings();
        }
    }
}

#[cfg(test)]
mod tests {
    use aegis_hal::analytics::TrackBackfill;
    use aegis_hal::frame::FrameLayout;
    use aegis_hal::{PixelFormat, StreamId, SurfacePool};

    use super::*;
    use crate::store::{Store, StoreSettings, open_reader};

    const WALL0: i64 = 1_700_000_000_000_000;

    fn person(backfill: Option<TrackBackfill>) -> Object {
        Object {
            label: "person",
            class: 0,
            score: 0.8,
            bbox: [10.0, 10.0, 50.0, 90.0],
            track_id: Some(1),
            source: ObjectSource::Detect,
            track_backfill: backfill,
        }
    }

    /// A track hidden by the birth gate in seq 2-5 and reported from seq 6 to 9: the stored
    /// summary and its events start at seq 2 and count all eight frames.
    #[test]
    fn stored_track_summaries_include_the_hidden_frames() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreSettings::for_test(dir.path())).unwrap();
        let mut tally = AnalyticsTally::new(
            Arc::new(Metrics::new("cpu")),
            "cam0",
            Some(store.handle()),
            None,
            Vec::new(),
        );
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 16, 16), 1);
        let at = |seq: u64| seq as i64 * 40_000;
        for seq in 0..10 {
            let mut f =
                Frame::from_pool(&pool, StreamId::new("cam0"), seq, at(seq), 40_000).unwrap();
            f.meta.wallclock_us = Some(WALL0 + at(seq));
            match seq {
                0..6 => {}
                6 => f.meta.objects.push(person(Some(TrackBackfill {
                    frames: 4,
                    first_seq: 2,
                    first_pts_us: at(2),
                    first_wallclock_us: WALL0 + at(2),
                }))),
                _ => f.meta.objects.push(person(None)),
            }
            tally.count(&f);
        }
        tally.finish();
        store.close();

        let db = open_reader(&dir.path().join("aegis.db")).unwrap();
        let row: (i64, i64, i64) = db
            .query_row(
                "SELECT first_us, last_us, frames FROM tracks WHERE track_id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(row, (WALL0 + at(2), WALL0 + at(9), 8));
        let event = |kind: &str| -> (i64, serde_json::Value) {
            db.query_row(
                "SELECT ts_us, payload FROM events WHERE kind = ?1",
                [kind],
                |r| {
                    let p: String = r.get(1)?;
                    Ok((r.get(0)?, serde_json::from_str(&p).unwrap()))
                },
            )
            .unwrap()
        };
        let (ts, started) = event("track_started");
        assert_eq!(ts, WALL0 + at(2));
        assert_eq!(started["pts_us"], at(2));
        assert_eq!(started["hidden_frames"], 4);
        let (ts, ended) = event("track_ended");
        assert_eq!(ts, WALL0 + at(9));
        assert_eq!(ended["first_us"], WALL0 + at(2));
        assert_eq!(ended["frames"], 8);
    }
}
