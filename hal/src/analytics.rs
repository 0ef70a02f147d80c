//! Typed analytics metadata that inference stages attach to a frame: detected (and tracked)
//! objects, the content-moderation verdict and whether the background was replaced.
//!
//! Everything here is fixed-size and `Copy`, so writing metadata never allocates on the frame
//! path: an [`ObjectList`] holds up to [`MAX_OBJECTS`] objects and counts the ones it had to
//! leave out. Labels are interned `&'static str`s ([`intern`]): a model's label table is
//! interned once when the model loads, and loading it again reuses the same strings.

use std::collections::HashSet;
use std::sync::Mutex;

/// Most objects one frame carries; further ones are counted in [`ObjectList::overflow`].
pub const MAX_OBJECTS: usize = 64;

/// Which stage produced an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectSource {
    /// The `detect` stage (generic detector + tracker).
    Detect,
    /// The `moderate` stage (NudeNet classes).
    Moderate,
}

/// One detected object, in frame pixel coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Object {
    /// Class label, as the model's label table names it.
    pub label: &'static str,
    /// Class index in the model's output.
    pub class: u16,
    /// Confidence in [0, 1].
    pub score: f32,
    /// Box `[x1, y1, x2, y2]` in pixels of this frame.
    pub bbox: [f32; 4],
    /// Stable track id (detect stage with tracking), else `None`.
    pub track_id: Option<u64>,
    /// The stage that found it.
    pub source: ObjectSource,
    /// Set on the one frame whose detector run confirmed this track (the tracker's birth
    /// gate hid it until then): the earlier frames it was in but not reported. Live output
    /// stays gated; stored track summaries start at [`TrackBackfill::first_seq`] instead.
    pub track_backfill: Option<TrackBackfill>,
}

/// The frames a just-confirmed track was in before it was first reported: what the birth
/// gate hid. Fixed-size, so it rides on [`Object`] without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrackBackfill {
    /// Hidden frames: the detector runs the track matched in (at most the tracker's
    /// `min_hits`), each with the frames that would have carried its result (`every_n_frames`).
    pub frames: u32,
    /// Sequence number of the first hidden frame.
    pub first_seq: u64,
    /// Its presentation timestamp, µs on the stream's timeline.
    pub first_pts_us: i64,
    /// Its time, µs since the Unix epoch: the capture wall clock where the source reports one,
    /// else the agent's clock when the detector ran on it (as events are timed).
    pub first_wallclock_us: i64,
}

/// A bounded list of objects (no heap).
#[derive(Clone, Copy)]
pub struct ObjectList {
    items: [Option<Object>; MAX_OBJECTS],
    len: usize,
    overflow: u32,
}

impl Default for ObjectList {
    fn default() -> Self {
        ObjectList {
            items: [None; MAX_OBJECTS],
            len: 0,
            overflow: 0,
        }
    }
}

impl std::fmt::Debug for ObjectList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()?;
        if self.overflow > 0 {
            write!(f, " (+{} left out)", self.overflow)?;
        }
        Ok(())
    }
}

impl ObjectList {
    /// Adds an object; when full, counts it in [`overflow`](Self::overflow) instead.
    pub fn push(&mut self, o: Object) {
        if self.len < MAX_OBJECTS {
            self.items[self.len] = Some(o);
            self.len += 1;
        } else {
            self.overflow += 1;
        }
    }
    /// The objects, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = &Object> {
        self.items[..self.len].iter().flatten()
    }
    /// Number of objects held.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when no object is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Objects that did not fit.
    pub fn overflow(&self) -> u32 {
        self.overflow
    }
    /// Removes the objects `source` added (a stage re-running on the same frame replaces its
    /// own results only).
    pub fn clear_from(&mut self, source: ObjectSource) {
        let mut kept = 0;
        for i in 0..self.len {
            if let Some(o) = self.items[i]
                && o.source != source
            {
                self.items[kept] = Some(o);
                kept += 1;
            }
        }
        for slot in &mut self.items[kept..self.len] {
            *slot = None;
        }
        self.len = kept;
    }
}

/// What content moderation did to a frame, strongest action first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ModerationAction {
    /// Flagged for an alert; the picture is unchanged.
    Alert,
    /// The flagged regions were blurred.
    BlurRegion,
    /// The whole frame was blurred.
    BlurFrame,
    /// The frame was dropped from the outputs.
    Drop,
}

impl ModerationAction {
    /// The name used in the config and in events.
    pub fn as_str(self) -> &'static str {
        match self {
            ModerationAction::Alert => "alert",
            ModerationAction::BlurRegion => "blur_region",
            ModerationAction::BlurFrame => "blur_frame",
            ModerationAction::Drop => "drop",
        }
    }
}

/// The moderation verdict of one frame: the strongest action any flagged class asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModerationVerdict {
    /// The strongest action taken.
    pub action: ModerationAction,
    /// The class that asked for it.
    pub label: &'static str,
    /// That detection's score.
    pub score: f32,
    /// How many detections were over their class threshold.
    pub flagged: u32,
    /// Sequence number of the frame the detector ran on (verdicts hold for the frames in
    /// between when the detector runs every N frames).
    pub analysed_seq: u64,
}

/// Interns a label: the same text always gives the same `&'static str`, so the table of a
/// model loaded again (OTA, restart of a stage) does not leak again.
pub fn intern(label: &str) -> &'static str {
    static TABLE: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut table = TABLE.lock().unwrap_or_else(|e| e.into_inner());
    let set = table.get_or_insert_with(HashSet::new);
    if let Some(s) = set.get(label) {
        return s;
    }
    let s: &'static str = Box::leak(label.to_owned().into_boxed_str());
    set.insert(s);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(label: &str, source: ObjectSource) -> Object {
        Object {
            label: intern(label),
            class: 0,
            score: 0.5,
            bbox: [0.0; 4],
            track_id: None,
            source,
            track_backfill: None,
        }
    }

    #[test]
    fn list_counts_what_does_not_fit_and_clears_by_source() {
        let mut l = ObjectList::default();
        for i in 0..MAX_OBJECTS + 3 {
            let src = if i % 2 == 0 {
                ObjectSource::Detect
            } else {
                ObjectSource::Moderate
            };
            l.push(obj("person", src));
        }
        assert_eq!(l.len(), MAX_OBJECTS);
        assert_eq!(l.overflow(), 3);
        l.clear_from(ObjectSource::Moderate);
        assert_eq!(l.len(), MAX_OBJECTS / 2);
        assert!(l.iter().all(|o| o.source == ObjectSource::Detect));
    }

    #[test]
    fn interning_reuses_strings() {
        let a = intern("FACE_FEMALE");
        let b = intern(&String::from("FACE_FEMALE"));
        assert!(std::ptr::eq(a, b));
        assert_ne!(intern("x"), a);
    }

    #[test]
    fn actions_order_by_strength() {
        assert!(ModerationAction::Drop > ModerationAction::BlurFrame);
        assert!(ModerationAction::BlurRegion > ModerationAction::Alert);
    }
}
