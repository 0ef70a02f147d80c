//! The live view's feed: each stream's encoded H.264, packaged once as fragmented MP4 (one
//! fragment per frame) and fanned out to the web page's viewers, with each frame's analytics
//! metadata (boxes, track ids, moderated regions) sent beside the video so the browser draws
//! the overlays it is asked for.
//!
//! Where the H.264 comes from: the stream's recorder, when it has one — its encoder's packets
//! reach [`LiveSlot`] through hal's [`PacketTap`], so watching costs no second encode; a
//! stream without a record sink gets its own encoder here, opened only while somebody
//! watches ([`LiveFeed`]). With nobody watching, the frame path reads one atomic counter.
//!
//! A viewer never slows the pipeline: each has a bounded queue filled with `try_send`; when it
//! is full the viewer misses that fragment, is counted (`aegis_live_dropped_total`), and
//! waits for the next keyframe (requested at once, at most one request per
//! [`KEY_REQUEST_GAP`]) before it gets video again.
//!
//! The streaming outputs (RTSP restream, RTMP/SRT push: `crate::outputs`) take the same
//! encoded stream as raw packets ([`LiveSlot::subscribe_packets`]) under the same rules: a
//! bounded queue each, a full one drops and resyncs at a keyframe, a new one asks for a
//! keyframe at once. The packet is copied once for all of them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_hal::Frame;
use aegis_hal::analytics::ObjectSource;
use aegis_hal::clip::OwnedPacket;
use aegis_hal::codec::{EncoderSettings, VideoEncoder};
use aegis_hal::fmp4::{AvcConfig, FragmentWriter, Sample, init_segment};
use aegis_hal::record::{PacketTap, TapPacket};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::mpsc;

use crate::metrics::{Metrics, StreamLabels};

/// Messages a viewer's queue holds (enough for about two seconds of 30 fps video with its
/// metadata).
pub const VIEWER_QUEUE: usize = 128;
/// At most one keyframe request per this long (a viewer that keeps falling behind must not
/// turn the recording into all-IDR).
pub const KEY_REQUEST_GAP: Duration = Duration::from_millis(1000);
/// The fMP4 timescale: the encoder's 90 kHz clock.
const TIMESCALE: u32 = 90_000;
/// The own encoder (streams without a recorder) closes after nobody watched for this long.
const OWN_ENCODER_IDLE: Duration = Duration::from_secs(5);
/// The own encoder's rate.
const OWN_ENCODER_KBPS: u32 = 2000;

/// What a viewer receives.
#[derive(Debug, Clone)]
pub enum LiveMsg {
    /// The stream (re)starts: codec, size and the fMP4 init segment. A keyframe fragment
    /// follows.
    Init(Arc<LiveInit>),
    /// One fMP4 fragment (`moof` + `mdat`): one frame, shared by every viewer.
    Video(bytes::Bytes),
    /// One frame's metadata, JSON (see [`frame_meta`]).
    Meta(Arc<str>),
}

/// The start of a stream, as a viewer needs it.
#[derive(Debug)]
pub struct LiveInit {
    /// The RFC 6381 codec string (`avc1.42C01F`), for `MediaSource.isTypeSupported`.
    pub codec: String,
    /// Picture width.
    pub width: usize,
    /// Picture height.
    pub height: usize,
    /// Counts the encoder's (re)starts: a viewer that sees a new one starts its player over
    /// (new size, or timestamps that jumped back), a repeat of the same one is a resync.
    pub generation: u64,
    /// The `ftyp` + `moov` init segment.
    pub segment: bytes::Bytes,
}

/// What an output's queue holds.
#[derive(Debug, Clone)]
pub enum OutMsg {
    /// The stream (re)starts with these parameters; a keyframe packet follows.
    Start(Arc<StreamStart>),
    /// One encoded packet, in decode order.
    Packet(OwnedPacket),
}

/// The parameters of a stream (re)start, as an output needs them.
#[derive(Debug)]
pub struct StreamStart {
    /// SPS, PPS, size and codec string.
    pub avc: AvcConfig,
    /// Counts the encoder's (re)starts (as [`LiveInit::generation`]).
    pub generation: u64,
}

/// An output's end of the feed: its queue. Dropping it leaves the stream.
pub struct PacketSubscription {
    /// The output's messages.
    pub rx: mpsc::Receiver<OutMsg>,
    /// Packets this output missed because its queue was full.
    pub dropped: Arc<AtomicU64>,
    slot: Arc<LiveSlot>,
    id: u64,
}

impl std::fmt::Debug for PacketSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PacketSubscription({} #{})", self.slot.stream, self.id)
    }
}

impl PacketSubscription {
    /// The stream's id.
    pub fn stream(&self) -> &str {
        &self.slot.stream
    }

    /// Asks the encoder for a keyframe now (a consumer that starts over).
    pub fn request_keyframe(&self) {
        let mut inner = lock(&self.slot.inner);
        self.slot.request_key(&mut inner, true);
    }
}

impl Drop for PacketSubscription {
    fn drop(&mut self) {
        self.slot.leave(self.id);
    }
}

/// One consumer's place in the fan-out: a viewer (`M` = [`LiveMsg`]) or an output
/// ([`OutMsg`]).
struct Member<M> {
    id: u64,
    tx: mpsc::Sender<M>,
    /// Has the stream's start and gets every message; false: waits for a keyframe.
    synced: bool,
    /// Was synced once: what it misses while waiting again is counted as dropped.
    started: bool,
    dropped: Arc<AtomicU64>,
}

type Viewer = Member<LiveMsg>;
type Output = Member<OutMsg>;

/// What one delivery to the members did.
#[derive(Default)]
struct Delivered {
    /// Members that got the message.
    sent: u64,
    /// Messages members missed.
    dropped: u64,
    /// A member fell behind: a keyframe is wanted.
    resync: bool,
    /// A member left (its queue closed).
    closed: bool,
}

/// Hands one packet's message to every member: a member waiting for a keyframe gets
/// `start()` first when `key`, or misses it; a full queue drops it (counted) and makes the
/// member wait for a keyframe again; a closed queue removes the member. Never blocks.
fn deliver<M>(
    members: &mut Vec<Member<M>>,
    key: bool,
    start: impl Fn() -> M,
    msg: impl Fn() -> M,
) -> Delivered {
    let mut d = Delivered::default();
    let drop_one = |m: &Member<M>, d: &mut Delivered| {
        m.dropped.fetch_add(1, Ordering::Relaxed);
        d.dropped += 1;
    };
    members.retain_mut(|m| {
        if !m.synced {
            if !key {
                if m.started {
                    drop_one(m, &mut d);
                }
                return true;
            }
            match m.tx.try_send(start()) {
                Ok(()) => {
                    m.synced = true;
                    m.started = true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    d.closed = true;
                    return false;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if m.started {
                        drop_one(m, &mut d);
                    }
                    return true;
                }
            }
        }
        match m.tx.try_send(msg()) {
            Ok(()) => {
                d.sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                d.closed = true;
                false
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Behind: skip to the next keyframe rather than send a broken picture.
                drop_one(m, &mut d);
                m.synced = false;
                d.resync = true;
                true
            }
        }
    });
    d
}

/// A new member with a queue of `capacity`: the member, its queue's end and its drop count.
fn member<M>(id: u64, capacity: usize) -> (Member<M>, mpsc::Receiver<M>, Arc<AtomicU64>) {
    let (tx, rx) = mpsc::channel(capacity.max(2));
    let dropped = Arc::new(AtomicU64::new(0));
    let m = Member {
        id,
        tx,
        synced: false,
        started: false,
        dropped: dropped.clone(),
    };
    (m, rx, dropped)
}

/// Adds one to `n` (`on`) or takes one off, never below zero.
fn count(n: &AtomicUsize, on: bool) {
    if on {
        n.fetch_add(1, Ordering::AcqRel);
    } else {
        let _ = n.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| v.checked_sub(1));
    }
}

#[derive(Default)]
struct Inner {
    init: Option<Arc<LiveInit>>,
    /// The same start, for the outputs.
    start: Option<Arc<StreamStart>>,
    writer: FragmentWriter,
    viewers: Vec<Viewer>,
    outputs: Vec<Output>,
    last_key_request: Option<Instant>,
    /// The last packaging error, logged once.
    failed: Option<String>,
    generation: u64,
    /// Where the previous fragment ended (decode time + duration).
    end: Option<u64>,
}

/// The counters of one stream's live view.
#[derive(Clone, Default)]
struct LiveCounters {
    viewers: Gauge,
    bytes: Counter,
    dropped: Counter,
}

/// One stream's live feed: the current init segment and its viewers.
pub struct LiveSlot {
    stream: String,
    /// Viewers and outputs: the tap is active while this is not 0.
    watching: AtomicUsize,
    /// Viewers alone (only they take the per-frame metadata).
    viewing: AtomicUsize,
    /// Pipelines whose `restream` sink serves this stream (a count: an outgoing and an
    /// incoming pipeline may overlap).
    restream: AtomicUsize,
    want_key: AtomicBool,
    /// Sink threads feeding this stream now (a pipeline being replaced and its successor
    /// may overlap for a moment: a count, not a flag).
    running: AtomicUsize,
    next_id: AtomicU64,
    inner: Mutex<Inner>,
    counters: LiveCounters,
}

impl std::fmt::Debug for LiveSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSlot")
            .field("stream", &self.stream)
            .field("viewers", &self.watching.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// A viewer's end: its queue. Dropping it leaves the stream.
pub struct Subscription {
    /// The viewer's messages.
    pub rx: mpsc::Receiver<LiveMsg>,
    /// Fragments this viewer missed because its queue was full.
    pub dropped: Arc<AtomicU64>,
    slot: Arc<LiveSlot>,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Subscription({} #{})", self.slot.stream, self.id)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.slot.leave(self.id);
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl LiveSlot {
    fn new(stream: &str, counters: LiveCounters) -> LiveSlot {
        LiveSlot {
            stream: stream.to_string(),
            watching: AtomicUsize::new(0),
            viewing: AtomicUsize::new(0),
            restream: AtomicUsize::new(0),
            want_key: AtomicBool::new(false),
            running: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            inner: Mutex::new(Inner::default()),
            counters,
        }
    }

    /// The stream's id.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Viewers now.
    pub fn viewers(&self) -> usize {
        self.viewing.load(Ordering::Relaxed)
    }

    /// A pipeline starts (`true`) or stops (`false`) serving the stream on the RTSP server.
    pub fn set_restream(&self, on: bool) {
        count(&self.restream, on);
    }

    /// Outputs now.
    pub fn outputs(&self) -> usize {
        self.watching.load(Ordering::Relaxed) - self.viewers()
    }

    /// Counts after a viewer or output joined or left.
    fn recount(&self, inner: &Inner) {
        self.viewing.store(inner.viewers.len(), Ordering::Release);
        self.watching
            .store(inner.viewers.len() + inner.outputs.len(), Ordering::Release);
        self.counters.viewers.set(inner.viewers.len() as i64);
    }

    /// The stream's current parameters (`None` until its encoder made a packet).
    pub fn current_start(&self) -> Option<Arc<StreamStart>> {
        lock(&self.inner).start.clone()
    }

    /// Joins as an output taking raw packets through a queue of `capacity` messages; a
    /// keyframe is asked for at once.
    pub fn subscribe_packets(self: &Arc<Self>, capacity: usize) -> PacketSubscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (output, rx, dropped) = member(id, capacity);
        let mut inner = lock(&self.inner);
        inner.outputs.push(output);
        self.recount(&inner);
        self.request_key(&mut inner, true);
        PacketSubscription {
            rx,
            dropped,
            slot: self.clone(),
            id,
        }
    }

    /// A sink thread starts (`true`) or stops (`false`) feeding the stream (a workflow may
    /// remove it).
    pub fn set_running(&self, running: bool) {
        count(&self.running, running);
    }

    fn join(self: &Arc<Self>) -> Subscription {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (viewer, rx, dropped) = member(id, VIEWER_QUEUE);
        let mut inner = lock(&self.inner);
        inner.viewers.push(viewer);
        self.recount(&inner);
        // A new viewer starts at a keyframe: ask for one now rather than wait a GOP.
        self.request_key(&mut inner, true);
        Subscription {
            rx,
            dropped,
            slot: self.clone(),
            id,
        }
    }

    fn leave(&self, id: u64) {
        let mut inner = lock(&self.inner);
        inner.viewers.retain(|v| v.id != id);
        inner.outputs.retain(|o| o.id != id);
        self.recount(&inner);
    }

    fn request_key(&self, inner: &mut Inner, force: bool) {
        let now = Instant::now();
        if force
            || inner
                .last_key_request
                .is_none_or(|t| now.duration_since(t) >= KEY_REQUEST_GAP)
        {
            inner.last_key_request = Some(now);
            self.want_key.store(true, Ordering::Release);
        }
    }

    /// Sends `frame`'s metadata to the viewers (nothing without viewers). A viewer waiting
    /// for its keyframe gets it too: that keyframe may be this very frame, whose packet
    /// comes out of the encoder after this call.
    pub fn offer_frame(&self, frame: &Frame) {
        if self.viewers() == 0 {
            return;
        }
        let meta: Arc<str> = frame_meta(frame).into();
        let inner = lock(&self.inner);
        for v in &inner.viewers {
            // Metadata is small and only useful now: a full queue just misses it (the video
            // fragment that follows will count the drop).
            let _ = v.tx.try_send(LiveMsg::Meta(meta.clone()));
        }
    }
}

impl PacketTap for LiveSlot {
    fn active(&self) -> bool {
        self.watching.load(Ordering::Acquire) > 0
    }

    fn take_keyframe_request(&self) -> bool {
        self.want_key.load(Ordering::Relaxed) && self.want_key.swap(false, Ordering::AcqRel)
    }

    fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
        let mut inner = lock(&self.inner);
        inner.generation += 1;
        inner.end = None;
        let init = AvcConfig::from_extradata(extradata, width, height)
            .and_then(|cfg| Ok((init_segment(&cfg, TIMESCALE)?, cfg)));
        match init {
            Ok((segment, cfg)) => {
                inner.init = Some(Arc::new(LiveInit {
                    codec: cfg.codec_string(),
                    width,
                    height,
                    generation: inner.generation,
                    segment: segment.into(),
                }));
                inner.start = Some(Arc::new(StreamStart {
                    avc: cfg,
                    generation: inner.generation,
                }));
                inner.failed = None;
            }
            Err(e) => {
                tracing::warn!(stream = %self.stream, error = %e, "live view: no stream parameters");
                inner.init = None;
                inner.start = None;
            }
        }
        // Everyone starts again from the new parameters at the next keyframe.
        for v in &mut inner.viewers {
            v.synced = false;
        }
        for o in &mut inner.outputs {
            o.synced = false;
        }
    }

    fn packet(&self, p: &TapPacket<'_>) {
        let mut inner = lock(&self.inner);
        let Some(init) = inner.init.clone() else {
            return;
        };
        if !inner.outputs.is_empty() {
            self.to_outputs(&mut inner, p);
        }
        if inner.viewers.is_empty() || (!p.key && inner.viewers.iter().all(|v| !v.synced)) {
            return;
        }
        // Microsecond timestamps in 90 kHz round to steps of 2999 or 3000 ticks while the
        // encoder stamps the nominal 3000: a fragment may start a tick before the previous
        // one ended. Start it at that end instead (a tick is 11 µs).
        let dts = (p.dts.max(0) as u64).max(inner.end.unwrap_or(0));
        let duration = p.duration.clamp(0, u32::MAX as i64) as u32;
        inner.end = Some(dts + duration as u64);
        let sample = Sample {
            decode_time: dts,
            duration,
            composition_offset: (p.pts - dts as i64).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            is_key: p.key,
            data: p.data,
        };
        let fragment: bytes::Bytes = match inner.writer.fragment(&sample) {
            Ok(f) => f.into(),
            Err(e) => {
                let e = e.to_string();
                if inner.failed.as_deref() != Some(e.as_str()) {
                    tracing::warn!(stream = %self.stream, error = %e, "live view: packet not packaged");
                    inner.failed = Some(e);
                }
                return;
            }
        };
        let d = deliver(
            &mut inner.viewers,
            p.key,
            || LiveMsg::Init(init.clone()),
            || LiveMsg::Video(fragment.clone()),
        );
        self.counters.dropped.inc_by(d.dropped);
        let sent = d.sent * fragment.len() as u64;
        let resync = d.resync;
        self.counters.bytes.inc_by(sent);
        self.recount(&inner);
        if resync {
            self.request_key(&mut inner, false);
        }
    }
}

impl LiveSlot {
    /// Hands `p` to every output (one copy of the data for all of them).
    fn to_outputs(&self, inner: &mut Inner, p: &TapPacket<'_>) {
        let Some(start) = inner.start.clone() else {
            return;
        };
        if !p.key && inner.outputs.iter().all(|o| !o.synced) {
            return;
        }
        let packet = OwnedPacket::from(p);
        let d = deliver(
            &mut inner.outputs,
            p.key,
            || OutMsg::Start(start.clone()),
            || OutMsg::Packet(packet.clone()),
        );
        let (resync, closed) = (d.resync, d.closed);
        if closed {
            self.recount(inner);
        }
        if resync {
            self.request_key(inner, false);
        }
    }
}

/// Every stream's [`LiveSlot`]; lives as long as the run (pipelines come and go under it).
#[derive(Default)]
pub struct LiveHub {
    slots: Mutex<Vec<Arc<LiveSlot>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for LiveHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveHub").finish_non_exhaustive()
    }
}

/// Why a viewer cannot join.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LiveError {
    /// No running stream has that id.
    #[error("no running stream {stream:?} (running: {running})")]
    NoStream {
        /// The id asked for.
        stream: String,
        /// The running streams, comma-separated.
        running: String,
    },
}

impl LiveHub {
    /// A hub whose slots count viewers, bytes and drops in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> LiveHub {
        LiveHub {
            slots: Mutex::new(Vec::new()),
            metrics: Some(metrics),
        }
    }

    /// The slot of `stream` (created on first use).
    pub fn slot(&self, stream: &str) -> Arc<LiveSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = slots.iter().find(|s| s.stream == stream) {
            return s.clone();
        }
        let counters = self
            .metrics
            .as_ref()
            .map_or_else(LiveCounters::default, |m| {
                let l = StreamLabels {
                    stream: stream.to_string(),
                };
                LiveCounters {
                    viewers: m.live_viewers.get_or_create_owned(&l),
                    bytes: m.live_bytes.get_or_create_owned(&l),
                    dropped: m.live_dropped.get_or_create_owned(&l),
                }
            });
        let s = Arc::new(LiveSlot::new(stream, counters));
        slots.push(s.clone());
        s
    }

    /// The ids of the streams that run now, in start order.
    pub fn running(&self) -> Vec<String> {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|s| s.running.load(Ordering::Acquire) > 0)
            .map(|s| s.stream.clone())
            .collect()
    }

    /// Joins `stream`'s live view.
    pub fn subscribe(&self, stream: &str) -> Result<Subscription, LiveError> {
        Ok(self.running_slot(stream)?.join())
    }

    /// Joins `stream`'s feed as an output taking raw packets (see
    /// [`LiveSlot::subscribe_packets`]).
    pub fn subscribe_packets(
        &self,
        stream: &str,
        capacity: usize,
    ) -> Result<PacketSubscription, LiveError> {
        Ok(self.running_slot(stream)?.subscribe_packets(capacity))
    }

    /// Whether `stream` runs and its pipeline restreams it.
    pub fn is_restreamed(&self, stream: &str) -> bool {
        self.running_slot(stream)
            .is_ok_and(|s| s.restream.load(Ordering::Acquire) > 0)
    }

    /// The slot of `stream` while it runs.
    fn running_slot(&self, stream: &str) -> Result<Arc<LiveSlot>, LiveError> {
        let slot = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots
                .iter()
                .find(|s| s.stream == stream && s.running.load(Ordering::Acquire) > 0)
                .cloned()
        };
        slot.ok_or_else(|| LiveError::NoStream {
            stream: stream.to_string(),
            running: self.running().join(", "),
        })
    }
}

/// Where a stream's live H.264 comes from.
pub enum LiveFeed {
    /// The recorder's encoder (its tap is the slot).
    Recorder(Arc<LiveSlot>),
    /// This stream has no recorder: an encoder of its own, open only while somebody watches.
    Own(Box<OwnEncoder>),
}

impl LiveFeed {
    /// The sink thread's call for each delivered frame.
    pub fn offer(&mut self, frame: &mut Frame) {
        match self {
            LiveFeed::Recorder(slot) => slot.offer_frame(frame),
            LiveFeed::Own(own) => own.offer(frame),
        }
    }

    /// Whether the next frame offered is encoded from its pixels (the live view's own
    /// encoder while somebody watches); the recorder's packets need none.
    pub fn wants_pixels(&self) -> bool {
        matches!(self, LiveFeed::Own(o) if o.slot.active())
    }

    /// The slot.
    pub fn slot(&self) -> &Arc<LiveSlot> {
        match self {
            LiveFeed::Recorder(s) => s,
            LiveFeed::Own(o) => &o.slot,
        }
    }
}

/// The live view's own encoder for a stream without a recorder.
pub struct OwnEncoder {
    slot: Arc<LiveSlot>,
    settings: EncoderSettings,
    encoder: Option<VideoEncoder>,
    last_pts: Option<i64>,
    idle_since: Option<Instant>,
    /// A frame size the encoder refused (not retried for every frame).
    refused: Option<(usize, usize)>,
}

impl OwnEncoder {
    /// An encoder (opened on demand) feeding `slot`, rate-controlled for `frame_rate`.
    pub fn new(slot: Arc<LiveSlot>, frame_rate: (i32, i32)) -> OwnEncoder {
        let gop = (frame_rate.0 as f64 / frame_rate.1.max(1) as f64 * 2.0).round() as u32;
        OwnEncoder {
            slot,
            settings: EncoderSettings {
                preset: "ultrafast".into(),
                bitrate_kbps: OWN_ENCODER_KBPS,
                gop_frames: gop.clamp(10, 300),
                threads: 1,
                frame_rate,
                // It exists only for live consumers.
                low_latency: true,
                // Constrained Baseline: what browsers decode in WebRTC.
                profile: Some("baseline"),
            },
            encoder: None,
            last_pts: None,
            idle_since: None,
            refused: None,
        }
    }

    /// Whether the encoder is open now.
    pub fn is_open(&self) -> bool {
        self.encoder.is_some()
    }

    fn offer(&mut self, frame: &mut Frame) {
        if !self.slot.active() {
            let since = *self.idle_since.get_or_insert_with(Instant::now);
            if self.encoder.is_some() && since.elapsed() >= OWN_ENCODER_IDLE {
                self.encoder = None;
                self.last_pts = None;
            }
            return;
        }
        self.idle_since = None;
        self.slot.offer_frame(frame);
        if frame.device.is_some() {
            // Pixels still on the device (a viewer came after the sink loop looked): the
            // next frame is encoded.
            return;
        }
        let geometry = (frame.layout.width, frame.layout.height);
        if self.refused == Some(geometry) {
            return;
        }
        if self
            .encoder
            .as_ref()
            .is_none_or(|e| !e.accepts(&frame.layout))
        {
            match VideoEncoder::open(&self.settings, frame.layout, true) {
                Ok(enc) => {
                    let (w, h) = enc.geometry();
                    self.slot.stream_start(&enc.extradata(), w, h);
                    self.encoder = Some(enc);
                    self.last_pts = None;
                    self.refused = None;
                }
                Err(e) => {
                    tracing::warn!(stream = %self.slot.stream, error = %e, "live view: cannot encode");
                    self.refused = Some(geometry);
                    return;
                }
            }
        }
        let Some(enc) = self.encoder.as_mut() else {
            return;
        };
        let pts = match self.last_pts {
            Some(last) if frame.pts_us * 9 / 100 <= last => last + 1,
            _ => frame.pts_us * 9 / 100,
        };
        self.last_pts = Some(pts);
        let key = self.slot.take_keyframe_request();
        let slot = &self.slot;
        let r = enc.encode(frame, pts, key, &mut |pkt| {
            if let Some(data) = pkt.data() {
                slot.packet(&TapPacket {
                    data,
                    pts: pkt.pts().unwrap_or(0),
                    dts: pkt.dts().or(pkt.pts()).unwrap_or(0),
                    duration: pkt.duration(),
                    key: pkt.is_key(),
                });
            }
            Ok(())
        });
        if let Err(e) = r {
            tracing::warn!(stream = %self.slot.stream, error = %e, "live view: encode failed");
            self.encoder = None;
        }
    }
}

/// One frame's metadata for the overlays, JSON: `{"t": pts (90 kHz, the video's clock),
/// "w", "h": frame size, "c": wall-clock ms when captured (or decoded), "o": [[x1, y1, x2,
/// y2, track id or null, label, "d" detection | "m" moderated region], …], "m": the
/// moderation action or null}`. Labels are the models' own label tables (still escaped by
/// JSON; the page draws them as canvas text, never as HTML).
pub fn frame_meta(frame: &Frame) -> String {
    let wall_ms = frame
        .meta
        .wallclock_us
        .map(|us| us / 1000)
        .unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as i64;
            now - frame.meta.decoded_at.elapsed().as_millis() as i64
        });
    let mut s = String::with_capacity(96 + 48 * frame.meta.objects.len());
    let _ = write!(
        s,
        "{{\"t\":{},\"w\":{},\"h\":{},\"c\":{},\"o\":[",
        frame.pts_us * 9 / 100,
        frame.layout.width,
        frame.layout.height,
        wall_ms
    );
    for (i, o) in frame.meta.objects.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let [x1, y1, x2, y2] = o.bbox.map(|v| if v.is_finite() { v.round() } else { 0.0 });
        let _ = write!(s, "[{x1},{y1},{x2},{y2},");
        match o.track_id {
            Some(id) => {
                let _ = write!(s, "{id},");
            }
            None => s.push_str("null,"),
        }
        s.push_str(&serde_json::Value::from(o.label).to_string());
        s.push_str(match o.source {
            ObjectSource::Detect => ",\"d\"]",
            ObjectSource::Moderate => ",\"m\"]",
        });
    }
    s.push_str("],\"m\":");
    match &frame.meta.moderation {
        Some(v) => s.push_str(&serde_json::Value::from(v.action.as_str()).to_string()),
        None => s.push_str("null"),
    }
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use aegis_hal::synth::SyntheticScene;
    use aegis_hal::{FrameLayout, PixelFormat, StreamId, SurfacePool};

    use super::*;

    const W: usize = 160;
    const H: usize = 120;

    struct Rig {
        hub: LiveHub,
        feed: LiveFeed,
        pool: SurfacePool,
        scene: SyntheticScene,
        seq: u64,
    }

    impl Rig {
        fn new() -> Rig {
            let hub = LiveHub::default();
            let slot = hub.slot("cam");
            slot.set_running(true);
            Rig {
                feed: LiveFeed::Own(Box::new(OwnEncoder::new(slot, (30, 1)))),
                hub,
                pool: SurfacePool::new(FrameLayout::new(PixelFormat::I420, W, H), 2),
                scene: SyntheticScene::new(W, H, 2, 3, None),
                seq: 0,
            }
        }
        fn frames(&mut self, n: u64) {
            for _ in 0..n {
                let mut f = Frame::from_pool(
                    &self.pool,
                    StreamId::new("cam"),
                    self.seq,
                    self.seq as i64 * 33_333,
                    33_333,
                )
                .unwrap();
                self.scene.render(&mut f);
                self.seq += 1;
                self.feed.offer(&mut f);
            }
        }
        fn own_open(&self) -> bool {
            match &self.feed {
                LiveFeed::Own(o) => o.is_open(),
                LiveFeed::Recorder(_) => unreachable!(),
            }
        }
    }

    /// Everything queued for `sub` now: (init segments, video fragments, metadata).
    fn drain(sub: &mut Subscription) -> (Vec<Arc<LiveInit>>, Vec<bytes::Bytes>, Vec<String>) {
        let mut out = (Vec::new(), Vec::new(), Vec::new());
        while let Ok(m) = sub.rx.try_recv() {
            match m {
                LiveMsg::Init(i) => out.0.push(i),
                LiveMsg::Video(v) => out.1.push(v),
                LiveMsg::Meta(m) => out.2.push(m.to_string()),
            }
        }
        out
    }

    /// Everything queued for an output now: (starts, packets).
    fn drain_packets(sub: &mut PacketSubscription) -> (Vec<Arc<StreamStart>>, Vec<OwnedPacket>) {
        let mut out = (Vec::new(), Vec::new());
        while let Ok(m) = sub.rx.try_recv() {
            match m {
                OutMsg::Start(s) => out.0.push(s),
                OutMsg::Packet(p) => out.1.push(p),
            }
        }
        out
    }

    #[test]
    fn outputs_get_packets_from_a_keyframe_and_a_stalled_one_harms_nobody() {
        let mut rig = Rig::new();
        let slot = rig.hub.slot("cam");
        let mut reader = rig.hub.subscribe_packets("cam", 256).unwrap();
        // This one never reads: its queue of 4 fills at once.
        let mut stalled = rig.hub.subscribe_packets("cam", 4).unwrap();
        assert_eq!((slot.outputs(), slot.viewers()), (2, 0));
        rig.frames(60);
        assert!(rig.own_open(), "an output keeps the encoder open");
        let (starts, packets) = drain_packets(&mut reader);
        assert_eq!(starts.len(), 1);
        assert_eq!(starts[0].avc.size(), (W as u16, H as u16));
        assert!(packets[0].key, "the first packet is a keyframe");
        assert!(
            (58..=60).contains(&packets.len()),
            "{} packets",
            packets.len()
        );
        assert!(
            packets.windows(2).all(|w| w[0].dts < w[1].dts),
            "in decode order, no gap"
        );
        assert_eq!(reader.dropped.load(Ordering::Relaxed), 0);
        // The stalled output missed packets (counted) and waits for a keyframe again.
        assert!(stalled.dropped.load(Ordering::Relaxed) > 40);
        let (_, got) = drain_packets(&mut stalled);
        assert!(got.len() <= 3 && got[0].key);
        rig.frames(40);
        let (_, after) = drain_packets(&mut stalled);
        assert!(
            after.first().is_some_and(|p| p.key),
            "resumes at a keyframe"
        );
        // Leaving releases the slot.
        drop((reader, stalled));
        assert_eq!(slot.outputs(), 0);
        assert!(!slot.active());
        // Restream needs a running stream and a pipeline that restreams it.
        assert!(!rig.hub.is_restreamed("cam"));
        slot.set_restream(true);
        assert!(rig.hub.is_restreamed("cam"));
        slot.set_running(false);
        assert!(!rig.hub.is_restreamed("cam"));
    }

    #[test]
    fn a_stream_runs_while_any_sink_thread_feeds_it() {
        let hub = LiveHub::default();
        let slot = hub.slot("cam");
        assert!(hub.running().is_empty());
        slot.set_running(true);
        // The replacing pipeline starts before the old one's sink thread ends.
        slot.set_running(true);
        slot.set_running(false);
        assert_eq!(hub.running(), ["cam"]);
        slot.set_running(false);
        slot.set_running(false);
        assert!(hub.running().is_empty());
        assert!(hub.subscribe("cam").is_err());
    }

    #[test]
    fn nobody_watching_means_no_encoder_and_unknown_streams_are_named() {
        let mut rig = Rig::new();
        rig.frames(10);
        assert!(!rig.own_open(), "no viewer: nothing encoded");
        let e = rig.hub.subscribe("nope").unwrap_err().to_string();
        assert!(e.contains("\"nope\"") && e.contains("cam"), "{e}");
    }

    #[test]
    fn a_viewer_gets_init_then_a_playable_stream_with_metadata() {
        let mut rig = Rig::new();
        rig.frames(5);
        let mut sub = rig.hub.subscribe("cam").unwrap();
        rig.frames(45);
        assert!(rig.own_open());
        let (inits, video, meta) = drain(&mut sub);
        assert_eq!(inits.len(), 1);
        assert!(inits[0].codec.starts_with("avc1."), "{}", inits[0].codec);
        assert_eq!((inits[0].width, inits[0].height), (W, H));
        // One fragment per frame (the encoder may hold the last one or two back).
        assert!(
            (43..=45).contains(&video.len()),
            "{} fragments",
            video.len()
        );
        // Metadata of every frame since the join, the keyframe's included.
        assert_eq!(meta.len(), 45);
        let m: serde_json::Value = serde_json::from_str(&meta[0]).unwrap();
        assert_eq!(m["w"], W);
        assert_eq!(m["t"], 5 * 33_333 * 9 / 100);
        assert_eq!(
            m["o"].as_array().map(Vec::len),
            Some(0),
            "no stage found anything"
        );
        // What the browser would append plays as H.264 of every frame it was sent.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("live.mp4");
        let mut bytes = inits[0].segment.to_vec();
        video.iter().for_each(|v| bytes.extend_from_slice(v));
        std::fs::write(&path, &bytes).unwrap();
        let out = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-count_frames", "-select_streams", "v:0"])
            .args([
                "-show_entries",
                "stream=codec_name,width,nb_read_frames",
                "-of",
                "csv=p=0",
            ])
            .arg(&path)
            .output()
            .expect("ffprobe (installed by tools/setup.sh)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text.trim(), format!("h264,{W},{}", video.len()), "{out:?}");
        drop(sub);
        assert_eq!(rig.hub.slot("cam").viewers(), 0);
    }

    #[test]
    fn a_stalled_viewer_is_dropped_and_counted_without_holding_up_the_others() {
        let mut rig = Rig::new();
        let stalled = rig.hub.subscribe("cam").unwrap();
        let mut fast = rig.hub.subscribe("cam").unwrap();
        let mut fast_video = 0;
        for _ in 0..10 {
            rig.frames(30);
            fast_video += drain(&mut fast).1.len();
        }
        // The fast viewer got every frame the encoder put out; the stalled one filled its
        // queue and then missed fragments, counted, while the frames kept coming.
        assert!(fast_video >= 297, "{fast_video}");
        assert_eq!(lock(&rig.hub.slot("cam").inner).failed, None);
        assert_eq!(fast.dropped.load(Ordering::Relaxed), 0);
        let missed = stalled.dropped.load(Ordering::Relaxed);
        assert!(missed > 100, "stalled viewer missed {missed}");
        assert_eq!(stalled.rx.len(), VIEWER_QUEUE);
    }

    #[test]
    fn a_viewer_that_fell_behind_resumes_at_a_keyframe_with_the_init_again() {
        let mut rig = Rig::new();
        let mut sub = rig.hub.subscribe("cam").unwrap();
        rig.frames(200); // the queue fills: drops, resync requested
        assert!(sub.dropped.load(Ordering::Relaxed) > 0);
        let _ = drain(&mut sub);
        rig.frames(60); // KEY_REQUEST_GAP passes in frames, not time: the join request
        // was immediate, the resync request waits for the gap — give it real time.
        std::thread::sleep(KEY_REQUEST_GAP);
        rig.frames(40);
        let (inits, video, _) = drain(&mut sub);
        assert!(!inits.is_empty(), "resynchronised with a new init");
        assert!(!video.is_empty());
        assert_eq!(
            inits[0].generation, 1,
            "same encoder: a resync, not a restart"
        );
    }
}
