//! Video pushed to the device rather than pulled from it: a WHIP publisher (OBS, a browser,
//! GStreamer's `whipclientsink`) sends WebRTC to the agent, whose ingest hands each
//! depacketized access unit to the stream's [`PushFeed`]; the [`PushedSource`] on the
//! stream's thread decodes them like any other source.
//!
//! The feed is a bounded queue between the two: a publisher faster than the pipeline loses
//! units (counted), and decoding resumes at the next keyframe, which the ingest is asked to
//! request ([`Publisher::take_keyframe_request`]). A new publisher replaces the current one
//! (as a reconnecting encoder expects); the stream's timeline continues across publishers.
//! Like a camera, a pushed source never ends on its own: without a publisher it waits, and
//! says so in its health.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use super::VideoSource;
use super::{SourceCore, SourceError, SourceHealth, SourceState, SourceStats, SourceStopper};
use crate::codec::Decoding;
use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// Access units a feed holds (about two seconds at 30 fps).
const MAX_UNITS: usize = 64;
/// Bytes a feed holds.
const MAX_BYTES: usize = 16 << 20;
/// The largest access unit taken (a 4K keyframe at a high bit rate is well under this).
pub const MAX_UNIT: usize = 4 << 20;
/// A publisher that sends nothing for this long is reported stalled.
const STALL: Duration = Duration::from_secs(10);
/// How often a waiting source looks at its stop flag.
const POLL: Duration = Duration::from_millis(100);

/// The codecs a publisher may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushedCodec {
    /// H.264, Annex B access units (start codes; parameter sets in band).
    H264,
    /// VP8 frames.
    Vp8,
}

impl PushedCodec {
    fn av_id(self) -> ff::ffi::AVCodecID {
        match self {
            PushedCodec::H264 => ff::ffi::AVCodecID::AV_CODEC_ID_H264,
            PushedCodec::Vp8 => ff::ffi::AVCodecID::AV_CODEC_ID_VP8,
        }
    }

    /// Whether this process's libavcodec decodes it (a minimal FFmpeg build may have H.264
    /// only): the ingest offers only codecs that pass.
    pub fn decodable(self) -> bool {
        crate::init();
        ff::decoder::find(self.av_id().into()).is_some()
    }
}

/// Why a push was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The stream's source is gone (the pipeline stopped or was replaced).
    #[error("the stream is not running")]
    Closed,
    /// Another publisher took the stream over.
    #[error("another publisher took the stream over")]
    Replaced,
}

struct Unit {
    session: u64,
    codec: PushedCodec,
    data: Vec<u8>,
    pts_90k: i64,
    key: bool,
}

#[derive(Default)]
struct FeedState {
    /// The current publisher's number (0: none).
    session: u64,
    last_session: u64,
    queue: VecDeque<Unit>,
    bytes: usize,
    /// The source is gone.
    closed: bool,
    /// Units were lost: drop until a keyframe, and ask the publisher for one.
    resync: bool,
    want_key: bool,
    dropped: u64,
}

struct FeedInner {
    state: Mutex<FeedState>,
    changed: Condvar,
}

impl FeedInner {
    fn lock(&self) -> MutexGuard<'_, FeedState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The ingest's handle on a pushed stream (cheap to clone).
#[derive(Clone)]
pub struct PushFeed {
    inner: Arc<FeedInner>,
}

impl std::fmt::Debug for PushFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.lock();
        f.debug_struct("PushFeed")
            .field("session", &s.session)
            .field("queued", &s.queue.len())
            .field("closed", &s.closed)
            .finish()
    }
}

impl PushFeed {
    /// Starts a publisher's session, ending the current one's (its pushes fail with
    /// [`PushError::Replaced`]).
    pub fn publish(&self) -> Result<Publisher, PushError> {
        let mut s = self.inner.lock();
        if s.closed {
            return Err(PushError::Closed);
        }
        s.last_session += 1;
        s.session = s.last_session;
        s.queue.clear();
        s.bytes = 0;
        s.resync = true;
        s.want_key = true;
        let session = s.session;
        drop(s);
        self.inner.changed.notify_all();
        Ok(Publisher {
            inner: self.inner.clone(),
            session,
        })
    }

    /// Whether the stream's source still runs.
    pub fn is_open(&self) -> bool {
        !self.inner.lock().closed
    }

    /// Units dropped because the pipeline was behind.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().dropped
    }
}

/// One publisher's session on a feed; dropping it tells the source the publisher left.
pub struct Publisher {
    inner: Arc<FeedInner>,
    session: u64,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("session", &self.session)
            .finish()
    }
}

impl Publisher {
    fn current(&self, s: &FeedState) -> Result<(), PushError> {
        if s.closed {
            Err(PushError::Closed)
        } else if s.session != self.session {
            Err(PushError::Replaced)
        } else {
            Ok(())
        }
    }

    /// Hands over one access unit (`pts_90k` on the publisher's 90 kHz clock, `key` for a
    /// keyframe). A unit the queue has no room for, one over [`MAX_UNIT`], and every unit
    /// after it until a keyframe, is dropped and counted (`Ok`: the publisher goes on);
    /// errors end the publisher's session.
    pub fn push(
        &self,
        codec: PushedCodec,
        data: &[u8],
        pts_90k: i64,
        key: bool,
    ) -> Result<(), PushError> {
        let mut s = self.inner.lock();
        self.current(&s)?;
        if s.resync && !key {
            s.dropped += 1;
            s.want_key = true;
            return Ok(());
        }
        if data.len() > MAX_UNIT || s.queue.len() >= MAX_UNITS || s.bytes + data.len() > MAX_BYTES {
            s.dropped += 1;
            s.resync = true;
            s.want_key = true;
            return Ok(());
        }
        s.resync = false;
        s.bytes += data.len();
        s.queue.push_back(Unit {
            session: self.session,
            codec,
            data: data.to_vec(),
            pts_90k,
            key,
        });
        drop(s);
        self.inner.changed.notify_all();
        Ok(())
    }

    /// Units were lost on the way (an RTP gap): drop until the next keyframe and ask for it.
    pub fn lost(&self) {
        let mut s = self.inner.lock();
        if self.current(&s).is_ok() {
            s.resync = true;
            s.want_key = true;
        }
    }

    /// Whether the publisher should be asked for a keyframe now (asked once per need).
    pub fn take_keyframe_request(&self) -> bool {
        let mut s = self.inner.lock();
        self.current(&s).is_ok() && std::mem::take(&mut s.want_key)
    }

    /// Whether this is still the stream's publisher.
    pub fn is_current(&self) -> bool {
        self.current(&self.inner.lock()).is_ok()
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let mut s = self.inner.lock();
        if s.session == self.session {
            s.session = 0;
            drop(s);
            self.inner.changed.notify_all();
        }
    }
}

/// The feeds of a process's pushed streams, by stream id: the pipeline registers a feed per
/// `whip` source as it opens it, the ingest looks them up (a restarted pipeline registers
/// again, replacing the entry).
#[derive(Debug, Default)]
pub struct PushFeeds {
    feeds: Mutex<HashMap<String, PushFeed>>,
}

impl PushFeeds {
    /// The running feed of `stream`.
    pub fn get(&self, stream: &str) -> Option<PushFeed> {
        let feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.get(stream).filter(|f| f.is_open()).cloned()
    }

    fn insert(&self, stream: &StreamId, feed: PushFeed) {
        let mut feeds = self.feeds.lock().unwrap_or_else(|e| e.into_inner());
        feeds.retain(|_, f| f.is_open());
        feeds.insert(stream.to_string(), feed);
    }
}

/// What the source takes out of its feed next.
enum Next {
    Unit(Unit),
    /// The publisher left (or was replaced before sending anything).
    Left,
    /// The publisher sent nothing for the stall timeout ([`STALL`]).
    Stalled,
    Stopped,
}

/// A stream whose video a publisher pushes (see the module docs).
pub struct PushedSource {
    core: SourceCore,
    feed: PushFeed,
    stream: StreamId,
    decoder_threads: usize,
    gpu: Option<crate::backend::StreamGpu>,
    /// The session and codec the decoder was opened for.
    decoding: Option<(u64, PushedCodec, Decoding)>,
    /// The session whose departure was reported.
    seen_session: u64,
    /// Added to a session's timestamps so they continue the stream's timeline.
    offset_us: Option<i64>,
    timeline: super::Timeline,
    /// When the last unit came, or the current publisher connected.
    last_unit_at: Instant,
    /// The publisher `last_unit_at` is for.
    timed_session: u64,
    stall: Duration,
    stalled: bool,
    sessions: u64,
    stats: SourceStats,
    closed_decode: crate::codec::DecodeStats,
}

impl PushedSource {
    /// A source for `stream`, its feed registered in `feeds`.
    pub fn new(
        stream: StreamId,
        feeds: &PushFeeds,
        pool_frames: usize,
        decoder_threads: usize,
        gpu: Option<crate::backend::StreamGpu>,
    ) -> Self {
        let origin = PathBuf::from(format!("whip:{stream}"));
        let layout = FrameLayout::new(PixelFormat::I420, 2, 2);
        let core = SourceCore::new(origin, stream.clone(), 1, layout);
        let core = SourceCore {
            pool_frames,
            ..core
        };
        let feed = PushFeed {
            inner: Arc::new(FeedInner {
                state: Mutex::new(FeedState::default()),
                changed: Condvar::new(),
            }),
        };
        feeds.insert(&stream, feed.clone());
        core.health.set_state(SourceState::Waiting);
        PushedSource {
            core,
            feed,
            stream,
            decoder_threads,
            gpu,
            decoding: None,
            seen_session: 0,
            offset_us: None,
            timeline: super::Timeline::default(),
            last_unit_at: Instant::now(),
            timed_session: 0,
            stall: STALL,
            stalled: false,
            sessions: 0,
            stats: SourceStats::default(),
            closed_decode: Default::default(),
        }
    }

    /// Reports a connected publisher that sends nothing for `stall` (not [`STALL`]) as
    /// stalled: for tests.
    #[doc(hidden)]
    pub fn with_stall_timeout(mut self, stall: Duration) -> Self {
        self.stall = stall;
        self
    }

    /// The feed the ingest pushes into.
    pub fn feed(&self) -> PushFeed {
        self.feed.clone()
    }

    fn wait(&mut self) -> Next {
        let mut s = self.feed.inner.lock();
        loop {
            if self.core.is_stopped() {
                return Next::Stopped;
            }
            if let Some(u) = s.queue.pop_front() {
                s.bytes -= u.data.len();
                return Next::Unit(u);
            }
            let current = s.session;
            if current == 0 && self.seen_session != 0 {
                self.seen_session = 0;
                return Next::Left;
            }
            if current != self.timed_session {
                // A new publisher: its stall timeout starts now, not at the last one's unit.
                self.timed_session = current;
                self.last_unit_at = Instant::now();
            }
            if current != 0 && !self.stalled && self.last_unit_at.elapsed() > self.stall {
                self.stalled = true;
                return Next::Stalled;
            }
            s = self
                .feed
                .inner
                .changed
                .wait_timeout(s, POLL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    fn close_decoder(&mut self) {
        if let Some((_, _, d)) = self.decoding.take() {
            self.closed_decode.add(&d.stats());
        }
    }

    /// Opens the decoder for a unit of a new session or codec.
    fn decoder_for(&mut self, u: &Unit) -> Result<(), String> {
        if self
            .decoding
            .as_ref()
            .is_some_and(|(s, c, _)| *s == u.session && *c == u.codec)
        {
            return Ok(());
        }
        self.close_decoder();
        if u.session != self.seen_session {
            self.seen_session = u.session;
            self.offset_us = None;
            self.sessions += 1;
            if self.sessions > 1 {
                self.core.health.reconnected();
            }
        }
        let mut params = ff::codec::Parameters::new();
        // SAFETY: `params` owns a fresh AVCodecParameters; only plain fields are set.
        unsafe {
            let p = &mut *params.as_mut_ptr();
            p.codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
            p.codec_id = u.codec.av_id();
        }
        let d = Decoding::open(
            params,
            ff::Rational::new(1, 90_000),
            33_333,
            self.stream.clone(),
            self.decoder_threads,
            self.gpu.as_ref(),
            self.core.pool_frames,
        )
        .map_err(|e| format!("decoder: {e}"))?;
        self.core.health.set_decoder(&d);
        tracing::info!(stream = %self.stream, codec = ?u.codec, "publisher's video");
        self.decoding = Some((u.session, u.codec, d));
        Ok(())
    }

    /// The decoder's picture failed: counted, the decoder reopened at the next keyframe.
    fn decode_failed(&mut self, why: String) {
        self.stats.read_errors += 1;
        self.close_decoder();
        let mut s = self.feed.inner.lock();
        s.resync = true;
        s.want_key = true;
        drop(s);
        tracing::warn!(stream = %self.stream, error = %why, "pushed video: decoding failed");
        self.core.health.fail(SourceState::Stalled, why);
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if let Some((_, _, d)) = self.decoding.as_mut() {
                match self.core.receive(d, 0) {
                    Ok(Some(mut frame)) => {
                        self.timeline.stamp(&mut frame, &mut self.offset_us);
                        self.stats.frames += 1;
                        self.core.health.frame();
                        return Ok(Some(frame));
                    }
                    Ok(None) => {}
                    Err(e) if self.core.is_stopped() => return Err(e),
                    Err(e) => {
                        self.decode_failed(format!("decode: {e}"));
                        continue;
                    }
                }
            }
            let unit = match self.wait() {
                Next::Stopped => return Ok(None),
                Next::Left => {
                    self.close_decoder();
                    self.core.health.fail(
                        SourceState::Waiting,
                        "the publisher left; waiting for the next".into(),
                    );
                    continue;
                }
                Next::Stalled => {
                    self.core.health.fail(
                        SourceState::Stalled,
                        format!(
                            "no video from the publisher within {:.1} s",
                            self.stall.as_secs_f64()
                        ),
                    );
                    continue;
                }
                Next::Unit(u) => u,
            };
            self.last_unit_at = Instant::now();
            self.stalled = false;
            if let Err(why) = self.decoder_for(&unit) {
                self.decode_failed(why);
                continue;
            }
            let mut packet = ff::Packet::copy(&unit.data);
            packet.set_pts(Some(unit.pts_90k));
            packet.set_dts(Some(unit.pts_90k));
            if unit.key {
                packet.set_flags(ff::packet::Flags::KEY);
            }
            let core = &self.core;
            let sent = match self.decoding.as_mut() {
                Some((_, _, d)) => d.send(&packet, &|| core.is_stopped()),
                None => Ok(()),
            };
            if let Err(e) = sent {
                self.decode_failed(format!("decode: {e}"));
            }
        }
    }
}

impl Drop for PushedSource {
    fn drop(&mut self) {
        let mut s = self.feed.inner.lock();
        s.closed = true;
        s.queue.clear();
        drop(s);
        self.feed.inner.changed.notify_all();
    }
}

impl VideoSource for PushedSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let r = self.next_frame_inner();
        let r = self.core.end_if_stopped(r);
        if !matches!(r, Ok(Some(_))) {
            self.close_decoder();
            self.feed.inner.lock().closed = true;
            self.core.health.set_state(SourceState::Ended);
        }
        r
    }
    fn stream_id(&self) -> &StreamId {
        &self.stream
    }
    fn stats(&self) -> SourceStats {
        let mut decode = self.closed_decode;
        if let Some((_, _, d)) = &self.decoding {
            decode.add(&d.stats());
        }
        SourceStats {
            decode,
            ..self.stats
        }
    }
    super::core_accessors!();
    fn frame_rate(&self) -> (i32, i32) {
        (0, 1)
    }
}

/// The access units of an Annex B H.264 stream whose units each start with an access unit
/// delimiter (x264's `aud=1`): (bytes, keyframe). For tests of what pushes H.264.
#[doc(hidden)]
pub fn split_annexb_units(stream: &[u8]) -> Vec<(Vec<u8>, bool)> {
    // Start-code positions (3- or 4-byte) and the NAL type after each.
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 < stream.len() {
        if stream[i] == 0 && stream[i + 1] == 0 && stream[i + 2] == 1 {
            let at = if i > 0 && stream[i - 1] == 0 {
                i - 1
            } else {
                i
            };
            starts.push((at, stream[i + 3] & 0x1f));
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut units: Vec<(Vec<u8>, bool)> = Vec::new();
    for (k, &(at, kind)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(stream.len(), |s| s.0);
        if kind == 9 || units.is_empty() {
            units.push((Vec::new(), false));
        }
        let unit = units.last_mut().expect("pushed above");
        unit.0.extend_from_slice(&stream[at..end]);
        unit.1 |= kind == 5;
    }
    units
}

/// The pixels of an I420 frame (not its rows' padding), hashed: pictures compared across
/// decode paths in tests.
#[doc(hidden)]
pub fn i420_digest(f: &Frame) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let (w, ht) = (f.layout.width, f.layout.height);
    for (i, p) in f.planes().iter().enumerate() {
        let (pw, ph) = if i == 0 { (w, ht) } else { (w / 2, ht / 2) };
        for r in 0..ph {
            p.data[r * p.stride..r * p.stride + pw].hash(&mut h);
        }
    }
    h.finish()
}

/// 45 frames of 320x240 H.264 made by the ffmpeg CLI in `dir` (keyframes every 15, no
/// B-frames, an access unit delimiter per unit): what tests push.
#[doc(hidden)]
pub fn annexb_clip(dir: &std::path::Path) -> PathBuf {
    let out = dir.join("push.h264");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
        .arg("testsrc2=size=320x240:rate=30")
        .args(["-frames:v", "45", "-c:v", "libx264", "-bf", "0", "-g", "15"])
        .args(["-x264-params", "aud=1", "-f", "h264"])
        .arg(&out)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "ffmpeg could not make {}", out.display());
    out
}

/// The [`i420_digest`] of every picture of `path` as libavformat and libavcodec decode it.
#[doc(hidden)]
pub fn file_digests(path: &std::path::Path) -> Vec<u64> {
    let mut src =
        super::FileSource::open(super::FileSourceSettings::new(path, StreamId::new("ref")))
            .expect("the clip opens");
    std::iter::from_fn(|| {
        src.next_frame()
            .expect("it decodes")
            .map(|f| i420_digest(&f))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(f: &Frame) -> u64 {
        i420_digest(f)
    }

    /// Runs `source` on a thread until it has `n` frames: their digests and timestamps.
    fn collect(
        mut source: PushedSource,
        n: usize,
    ) -> std::thread::JoinHandle<(Vec<u64>, Vec<i64>, PushedSource)> {
        std::thread::spawn(move || {
            let (mut d, mut t) = (Vec::new(), Vec::new());
            while d.len() < n {
                match source.next_frame() {
                    Ok(Some(f)) => {
                        d.push(digest(&f));
                        t.push(f.pts_us);
                    }
                    other => panic!("source ended: {:?}", other.map(|f| f.is_some())),
                }
            }
            (d, t, source)
        })
    }

    #[test]
    fn pushed_units_decode_to_the_files_pictures_and_a_new_publisher_continues_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let file = annexb_clip(dir.path());
        let want = file_digests(&file);
        assert_eq!(want.len(), 45);
        let units = split_annexb_units(&std::fs::read(&file).unwrap());
        assert_eq!(units.len(), 45);
        assert_eq!(units.iter().filter(|u| u.1).count(), 3);

        let feeds = PushFeeds::default();
        let source = PushedSource::new(StreamId::new("cam"), &feeds, 8, 1, None);
        let health = source.health();
        assert_eq!(health.state(), SourceState::Waiting);
        let feed = feeds.get("cam").expect("registered");
        assert!(feeds.get("other").is_none());
        let reader = collect(source, 45 + 30);

        // First publisher: every unit, paced by the queue (the reader keeps up).
        let first = feed.publish().unwrap();
        let room = || {
            while feed.inner.lock().queue.len() > 32 {
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        for (k, (data, key)) in units.iter().enumerate() {
            room();
            first
                .push(PushedCodec::H264, data, 1_000_000 + 3000 * k as i64, *key)
                .unwrap();
        }
        // (A new publisher discards what the old one queued: let the reader have it all.)
        while health.snapshot().frames < 45 {
            std::thread::sleep(Duration::from_millis(2));
        }
        // A second publisher replaces it: the first one's pushes fail; its timestamps start
        // elsewhere, the stream's go on. It starts mid-GOP: dropped up to its keyframe.
        let second = feed.publish().unwrap();
        assert_eq!(
            first.push(PushedCodec::H264, &units[0].0, 0, true),
            Err(PushError::Replaced)
        );
        assert!(!first.is_current() && second.is_current());
        for (k, (data, key)) in units.iter().enumerate().skip(5) {
            room();
            second
                .push(PushedCodec::H264, data, 3000 * k as i64, *key)
                .unwrap();
        }
        let (got, pts, source) = reader.join().unwrap();
        assert_eq!(&got[..45], &want[..], "the first publisher's pictures");
        assert_eq!(
            &got[45..],
            &want[15..],
            "from the second one's first keyframe"
        );
        assert!(pts.windows(2).all(|w| w[1] > w[0]), "{pts:?}");
        assert_eq!(pts[1] - pts[0], 33_333);
        assert!(
            feed.dropped() >= 10,
            "the second publisher's units before its keyframe"
        );
        assert_eq!(health.snapshot().reconnects, 1);
        assert_eq!(health.state(), SourceState::Streaming);

        // The publisher leaves: the source says so and waits for the next.
        drop(second);
        let stopper = source.stopper();
        let waiting = std::thread::spawn(move || {
            let mut source = source;
            source.next_frame().map(|f| f.is_none())
        });
        while health.state() != SourceState::Waiting {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            health
                .snapshot()
                .last_error
                .unwrap_or_default()
                .contains("publisher left")
        );
        stopper.stop();
        assert!(waiting.join().unwrap().unwrap(), "a stop ends it cleanly");
        // The source is gone: its feed takes no publisher, and the registry forgets it.
        assert_eq!(feed.publish().err(), Some(PushError::Closed));
        assert!(feeds.get("cam").is_none());
    }

    /// Waits (at most 30 s) until `health` is in `state`.
    fn wait_for(health: &SourceHealth, state: SourceState) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while health.state() != state {
            assert!(
                Instant::now() < deadline,
                "still {:?}, not {state:?}",
                health.state()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Without a publisher the source waits (healthy, however long); a connected publisher
    /// that sends nothing for the stall timeout, counted from its own connection, makes it
    /// stalled, and its video makes it streaming again.
    #[test]
    fn a_silent_publisher_is_stalled_and_no_publisher_is_waiting() {
        const STALL_AFTER: Duration = Duration::from_millis(700);
        let dir = tempfile::tempdir().unwrap();
        let units = split_annexb_units(&std::fs::read(annexb_clip(dir.path())).unwrap());
        let feeds = PushFeeds::default();
        let source = PushedSource::new(StreamId::new("cam"), &feeds, 8, 1, None)
            .with_stall_timeout(STALL_AFTER);
        let health = source.health();
        let feed = feeds.get("cam").unwrap();
        let reader = collect(source, 45);
        // No publisher for longer than the stall timeout: still waiting.
        std::thread::sleep(STALL_AFTER * 2);
        assert_eq!(health.state(), SourceState::Waiting);
        // A publisher connects: its timeout starts now, not at the source's start.
        let publisher = feed.publish().unwrap();
        std::thread::sleep(STALL_AFTER / 2);
        assert_ne!(health.state(), SourceState::Stalled);
        wait_for(&health, SourceState::Stalled);
        assert!(
            health
                .snapshot()
                .last_error
                .unwrap_or_default()
                .contains("no video from the publisher within 0.7 s")
        );
        // Two GOPs: pictures; then silence: stalled again; then the rest: streaming.
        let push = |range: std::ops::Range<usize>| {
            for k in range {
                let (data, key) = &units[k];
                publisher
                    .push(PushedCodec::H264, data, 3000 * k as i64, *key)
                    .unwrap();
            }
        };
        push(0..30);
        let deadline = Instant::now() + Duration::from_secs(30);
        while health.snapshot().frames < 20 {
            assert!(Instant::now() < deadline, "no pictures");
            std::thread::sleep(Duration::from_millis(5));
        }
        wait_for(&health, SourceState::Stalled);
        push(30..45);
        let (got, _, source) = reader.join().unwrap();
        assert_eq!(got.len(), 45);
        assert_eq!(health.state(), SourceState::Streaming);
        // The publisher leaves: waiting again.
        drop(publisher);
        let stopper = source.stopper();
        let waiting = std::thread::spawn(move || {
            let mut source = source;
            source.next_frame().map(|f| f.is_none())
        });
        wait_for(&health, SourceState::Waiting);
        stopper.stop();
        assert!(waiting.join().unwrap().unwrap(), "a stop ends it cleanly");
    }

    #[test]
    fn a_full_queue_drops_until_a_keyframe_and_asks_for_one_once() {
        let feeds = PushFeeds::default();
        let source = PushedSource::new(StreamId::new("cam"), &feeds, 4, 1, None);
        let feed = feeds.get("cam").unwrap();
        let p = feed.publish().unwrap();
        assert!(
            p.take_keyframe_request(),
            "a new publisher is asked for a keyframe"
        );
        assert!(!p.take_keyframe_request(), "once");
        // Before its first keyframe nothing is queued.
        p.push(PushedCodec::H264, b"\0\0\x01\x41", 0, false)
            .unwrap();
        assert_eq!(feed.inner.lock().queue.len(), 0);
        p.push(PushedCodec::H264, b"\0\0\x01\x65", 0, true).unwrap();
        assert!(
            p.take_keyframe_request(),
            "the unit dropped before it asked again"
        );
        for k in 1..MAX_UNITS {
            p.push(PushedCodec::H264, b"\0\0\x01\x41", k as i64, false)
                .unwrap();
        }
        assert_eq!(feed.inner.lock().queue.len(), MAX_UNITS);
        assert!(!p.take_keyframe_request());
        // Full: this one and the ones after it until a keyframe are dropped.
        for _ in 0..3 {
            p.push(PushedCodec::H264, b"\0\0\x01\x41", 99, false)
                .unwrap();
        }
        assert_eq!(feed.dropped(), 4);
        assert!(p.take_keyframe_request());
        assert!(!p.take_keyframe_request());
        // An oversized unit is dropped too.
        feed.inner.lock().queue.clear();
        feed.inner.lock().bytes = 0;
        p.push(PushedCodec::H264, &vec![0; MAX_UNIT + 1], 100, true)
            .unwrap();
        assert_eq!(feed.inner.lock().queue.len(), 0);
        assert_eq!(feed.dropped(), 5);
        // An RTP gap asks for a keyframe as well.
        p.push(PushedCodec::H264, b"\0\0\x01\x65", 101, true)
            .unwrap();
        let _ = p.take_keyframe_request();
        p.lost();
        assert!(p.take_keyframe_request());
        drop(source);
        assert_eq!(
            p.push(PushedCodec::H264, b"\0\0\x01\x65", 102, true),
            Err(PushError::Closed)
        );
        assert!(PushedCodec::H264.decodable());
    }
}
