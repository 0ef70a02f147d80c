//! The recording sink: H.264 in fragmented MP4, cut into segments by duration, old segments
//! deleted to stay inside a disk budget.
//!
//! Each segment is a self-contained fragmented MP4 (`empty_moov` + one `moof`/`mdat` per
//! GOP) that starts with an IDR frame at timestamp 0, so any segment plays on its own. A
//! segment is written as `NAME.mp4.part` and renamed to `NAME.mp4` when it is closed; after a
//! crash, [`DiskBudget::open`] renames the left-over `.part` files, which play up to their
//! last complete fragment. Segments are cut on forced keyframes, so their length is exact to a
//! frame whatever the encoder's GOP.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ffmpeg_next as ff;

use crate::codec::{CodecError, EncoderSettings, NvmmCodecs, NvmmEncoder, VideoEncoder};
use crate::frame::{Frame, StreamId};

/// `movflags` for self-contained fragmented MP4 segments.
const MOVFLAGS: &str = "frag_keyframe+empty_moov+default_base_moof";
const PART_SUFFIX: &str = ".part";

/// Errors of the recorder; each names the file or stream.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The encoder failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// libavformat could not create or write a segment.
    #[error("writing segment {path}: {source}")]
    Mux {
        /// The segment file.
        path: PathBuf,
        /// libav's error.
        source: ff::Error,
    },
    /// The encoder cannot take frames of this size (refused once; later frames fail fast).
    #[error("cannot record {width}x{height} frames: {reason}")]
    Unrecordable {
        /// Frame width.
        width: usize,
        /// Frame height.
        height: usize,
        /// Why the encoder refused.
        reason: String,
    },
    /// Filesystem error (creating the directory, renaming, deleting).
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Recorder configuration for one stream.
#[derive(Debug, Clone)]
pub struct RecorderSettings {
    /// Root directory of the sink; each stream writes into `dir/<stream>/`.
    pub dir: PathBuf,
    /// Stream being recorded.
    pub stream: StreamId,
    /// Target segment length.
    pub segment: Duration,
    /// Encoder knobs.
    pub encoder: EncoderSettings,
}

/// What a recorder has done.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecorderStats {
    /// Frames encoded.
    pub frames: u64,
    /// Segments completed (renamed from `.part`).
    pub segments: u64,
    /// Bytes of compressed video written.
    pub bytes: u64,
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug)]
struct Ledger {
    budget: u64,
    used: u64,
    /// Completed segments, oldest first.
    segments: VecDeque<Segment>,
    deleted: u64,
}

/// The disk budget of one recording sink, shared by all its streams: completed segments are
/// listed oldest first and the oldest are deleted whenever the total exceeds the budget (the
/// newest segment is always kept).
#[derive(Debug, Clone)]
pub struct DiskBudget {
    dir: PathBuf,
    ledger: Arc<Mutex<Ledger>>,
}

impl DiskBudget {
    /// Takes over `dir` (created if missing): finalises `.part` files left by a crash and
    /// counts the segments already there against `budget_bytes`.
    pub fn open(dir: &Path, budget_bytes: u64) -> Result<Self, RecordError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| RecordError::Io { what, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        let mut found = Vec::new();
        for stream_dir in std::fs::read_dir(dir).map_err(io("listing", dir))? {
            let stream_dir = stream_dir.map_err(io("listing", dir))?;
            // Only real directories named like a stream id; symlinks are not followed, so
            // the budget can never delete files outside `dir`.
            let is_dir = stream_dir.file_type().is_ok_and(|t| t.is_dir());
            let stream = stream_dir.file_name();
            let Some(stream) = stream.to_str().filter(|s| is_dir && is_stream_id(s)) else {
                continue;
            };
            let stream_dir = stream_dir.path();
            let entries = match std::fs::read_dir(&stream_dir) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(dir = %stream_dir.display(), error = %e, "skipping unreadable directory");
                    continue;
                }
            };
            for entry in entries.flatten() {
                if !entry.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                let file = entry.file_name();
                // Only files this recorder writes: `<stream>-….mp4` (or `.mp4.part`).
                let Some(name) = file.to_str().filter(|n| {
                    n.starts_with(stream)
                        && n[stream.len()..].starts_with('-')
                        && (n.ends_with(".mp4") || n.ends_with(".mp4.part"))
                }) else {
                    continue;
                };
                let mut path = entry.path();
                if let Some(stem) = name.strip_suffix(PART_SUFFIX) {
                    let done = stream_dir.join(stem);
                    std::fs::rename(&path, &done).map_err(io("recovering", &path))?;
                    tracing::warn!(segment = %done.display(), "recovered segment left open by a crash");
                    path = done;
                }
                let meta = std::fs::metadata(&path).map_err(io("reading", &path))?;
                let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
                found.push((mtime, path, meta.len()));
            }
        }
        found.sort();
        let used = found.iter().map(|f| f.2).sum();
        let ledger = Ledger {
            budget: budget_bytes,
            used,
            segments: found
                .into_iter()
                .map(|(_, path, bytes)| Segment { path, bytes })
                .collect(),
            deleted: 0,
        };
        let b = DiskBudget {
            dir: dir.to_path_buf(),
            ledger: Arc::new(Mutex::new(ledger)),
        };
        b.enforce();
        Ok(b)
    }

    /// Root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes of completed segments on disk, and how many segments were deleted for space.
    pub fn usage(&self) -> (u64, u64) {
        let l = self.lock();
        (l.used, l.deleted)
    }

    /// Completed segments, oldest first.
    pub fn segments(&self) -> Vec<PathBuf> {
        self.lock()
            .segments
            .iter()
            .map(|s| s.path.clone())
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn add(&self, path: PathBuf, bytes: u64) {
        {
            let mut l = self.lock();
            l.used += bytes;
            l.segments.push_back(Segment { path, bytes });
        }
        self.enforce();
    }

    fn enforce(&self) {
        let mut l = self.lock();
        while l.used > l.budget && l.segments.len() > 1 {
            let Some(old) = l.segments.pop_front() else {
                break;
            };
            l.used -= old.bytes;
            match std::fs::remove_file(&old.path) {
                Ok(()) => {
                    l.deleted += 1;
                    tracing::debug!(segment = %old.path.display(), "deleted for disk budget");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(segment = %old.path.display(), error = %e,
                        "cannot delete segment for disk budget");
                }
            }
        }
    }
}

/// Stream ids are `[a-z0-9_-]{1,64}` (the config enforces it); directories named otherwise
/// are not ours.
fn is_stream_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

struct SegmentWriter {
    octx: ff::format::context::Output,
    part: PathBuf,
    done: PathBuf,
    time_base: ff::Rational,
    first_pts: i64,
    bytes: u64,
}

impl SegmentWriter {
    fn create(
        dir: &Path,
        stream: &StreamId,
        index: u64,
        params: &ff::codec::Parameters,
    ) -> Result<Self, RecordError> {
        let stream_dir = dir.join(stream.as_str());
        std::fs::create_dir_all(&stream_dir).map_err(|source| RecordError::Io {
            what: "creating",
            path: stream_dir.clone(),
            source,
        })?;
        let stamp = utc_stamp(SystemTime::now());
        // A recorder restarted within the same second must not overwrite a kept segment.
        let (done, part) = (0..)
            .map(|retry| {
                let extra = if retry == 0 {
                    String::new()
                } else {
                    format!("-{retry}")
                };
                let done = stream_dir.join(format!("{stream}-{stamp}-{index:06}{extra}.mp4"));
                let part = PathBuf::from(format!("{}{PART_SUFFIX}", done.display()));
                (done, part)
            })
            .find(|(done, part)| !done.exists() && !part.exists())
            .unwrap_or_default();
        Self::create_at(part, done, params, MOVFLAGS)
    }

    /// An MP4 written to `part` and renamed to `done` when closed.
    fn create_at(
        part: PathBuf,
        done: PathBuf,
        params: &ff::codec::Parameters,
        movflags: &str,
    ) -> Result<Self, RecordError> {
        let mux = |source| RecordError::Mux {
            path: part.clone(),
            source,
        };
        let mut octx = ff::format::output_as(&part, "mp4").map_err(mux)?;
        {
            let mut ost = octx
                .add_stream(ff::encoder::find(ff::codec::Id::H264))
                .map_err(mux)?;
            ost.set_parameters(params.clone());
            ost.set_time_base(crate::codec::ENCODER_TIME_BASE);
        }
        let mut opts = ff::Dictionary::new();
        opts.set("movflags", movflags);
        octx.write_header_with(opts).map_err(mux)?;
        let time_base = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(crate::codec::ENCODER_TIME_BASE);
        Ok(SegmentWriter {
            octx,
            part,
            done,
            time_base,
            first_pts: 0,
            bytes: 0,
        })
    }

    fn write(&mut self, pkt: &mut ff::Packet) -> Result<(), RecordError> {
        let shift = |t: Option<i64>| t.map(|t| t - self.first_pts);
        pkt.set_pts(shift(pkt.pts()));
        pkt.set_dts(shift(pkt.dts()));
        pkt.rescale_ts(crate::codec::ENCODER_TIME_BASE, self.time_base);
        pkt.set_stream(0);
        self.bytes += pkt.size() as u64;
        pkt.write_interleaved(&mut self.octx)
            .map_err(|source| RecordError::Mux {
                path: self.part.clone(),
                source,
            })
    }

    fn close(mut self) -> Result<(PathBuf, u64), RecordError> {
        self.octx
            .write_trailer()
            .map_err(|source| RecordError::Mux {
                path: self.part.clone(),
                source,
            })?;
        drop(self.octx);
        std::fs::rename(&self.part, &self.done).map_err(|source| RecordError::Io {
            what: "finalising",
            path: self.part.clone(),
            source,
        })?;
        let bytes = std::fs::metadata(&self.done)
            .map(|m| m.len())
            .unwrap_or(self.bytes);
        Ok((self.done, bytes))
    }
}

/// One encoded packet as a [`PacketTap`] sees it: Annex-B H.264, timestamps in the
/// encoder's 90 kHz time base.
#[derive(Debug, Clone, Copy)]
pub struct TapPacket<'a> {
    /// The access unit (start-code delimited NAL units).
    pub data: &'a [u8],
    /// Presentation time.
    pub pts: i64,
    /// Decode time.
    pub dts: i64,
    /// Duration.
    pub duration: i64,
    /// An IDR picture (a consumer may start here).
    pub key: bool,
}

/// Where a recorder also hands its encoded packets (the web page's live view, later other
/// outputs), so the stream is encoded once whoever consumes it. The recorder asks
/// [`PacketTap::active`] before each packet and does nothing more when it says no: with
/// nobody watching, the tap costs one atomic load per packet.
pub trait PacketTap: Send + Sync {
    /// Whether anyone consumes packets now.
    fn active(&self) -> bool;
    /// A consumer joined (or fell behind) and waits for a keyframe: returns the request and
    /// clears it. The recorder then makes the next frame an IDR (it does not cut a segment).
    fn take_keyframe_request(&self) -> bool;
    /// The encoder (re)opened for `width`×`height`: its SPS/PPS (`extradata`, Annex-B).
    /// Called whether or not the tap is active, so a later consumer can start.
    fn stream_start(&self, extradata: &[u8], width: usize, height: usize);
    /// One encoded packet, in decode order.
    fn packet(&self, packet: &TapPacket<'_>);
    /// The encoder was flushed and closed (the stream ended, or a discontinuity or a new
    /// resolution restarts it): no packet of this run follows.
    fn stream_end(&self) {}
}

/// Several taps on one recorder (the live view, the event-clip ring, later other outputs):
/// each gets every packet while it is active, and any of them may ask for a keyframe.
pub struct TapFanout(pub Vec<std::sync::Arc<dyn PacketTap>>);

impl PacketTap for TapFanout {
    fn active(&self) -> bool {
        self.0.iter().any(|t| t.active())
    }
    fn take_keyframe_request(&self) -> bool {
        // Every tap's request is taken (and cleared), not only the first one's: no
        // short-circuiting `any`.
        let mut any = false;
        for t in &self.0 {
            any |= t.take_keyframe_request();
        }
        any
    }
    fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
        for t in &self.0 {
            t.stream_start(extradata, width, height);
        }
    }
    fn packet(&self, packet: &TapPacket<'_>) {
        for t in self.0.iter().filter(|t| t.active()) {
            t.packet(packet);
        }
    }
    fn stream_end(&self) {
        for t in &self.0 {
            t.stream_end();
        }
    }
}

/// The recorder's encoder: libx264 on host pixels, or Orin's hardware encoder on the
/// frames' NVMM surfaces.
enum Encoding {
    Cpu(VideoEncoder),
    Nvmm(NvmmEncoder),
}

impl Encoding {
    fn codec_name(&self) -> &'static str {
        match self {
            Encoding::Cpu(e) => e.codec_name(),
            Encoding::Nvmm(e) => e.codec_name(),
        }
    }

    /// Whether `frame` goes into this encoder as it is (else the encoder is reopened): host
    /// pixels of its size for libx264, an NVMM surface of its size for the hardware one.
    fn accepts(&self, frame: &Frame) -> bool {
        match self {
            Encoding::Cpu(e) => frame.device.is_none() && e.accepts(&frame.layout),
            Encoding::Nvmm(e) => e.accepts(frame),
        }
    }
}

/// Encodes one stream's frames into segmented fragmented MP4.
pub struct SegmentRecorder {
    settings: RecorderSettings,
    budget: DiskBudget,
    encoder: Option<Encoding>,
    /// Orin's hardware encoder, for frames whose NVMM surface it can read
    /// ([`SegmentRecorder::with_hardware_encoder`]).
    hardware: Option<std::sync::Arc<NvmmCodecs>>,
    /// The hardware encoder's packets of one frame (reused).
    packets: Vec<ff::Packet>,
    /// Stream parameters (SPS/PPS extradata) of the open encoder, for each new segment.
    params: Option<ff::codec::Parameters>,
    /// A frame size the encoder refused, and why: frames of that size fail fast instead of
    /// reopening the encoder for every frame.
    refused: Option<((usize, usize), String)>,
    writer: Option<SegmentWriter>,
    next_index: u64,
    /// Frame timestamp (µs) at which the next segment starts; the frame there is forced to IDR.
    next_cut_us: Option<i64>,
    /// Encoder timestamp of the previous frame (timestamps must increase strictly).
    last_pts: Option<i64>,
    /// Encoder timestamp of the frame last forced to IDR for a cut: the segment changes at the
    /// key packet that carries it — the one cut rule, whatever the frame rate or GOP.
    pending_cut: Option<i64>,
    stats: RecorderStats,
    /// Also hands packets here (see [`PacketTap`]).
    tap: Option<std::sync::Arc<dyn PacketTap>>,
}

/// A jump back in time larger than this is a discontinuity (camera restart, wrapped
/// timestamps): the open segment is closed and a new one starts.
const DISCONTINUITY_TICKS: i64 = 90_000;

/// The encoder timestamp (90 kHz) for a frame at `pts_us`, kept strictly increasing: equal or
/// slightly decreasing timestamps would make the encoder and the muxer drop the frame.
fn next_encoder_pts(last: Option<i64>, pts_us: i64) -> i64 {
    let pts = pts_us.saturating_mul(9) / 100;
    match last {
        Some(last) if pts <= last => last + 1,
        _ => pts,
    }
}

impl SegmentRecorder {
    /// A recorder writing into `settings.dir/<stream>/`, accounted against `budget`.
    pub fn new(settings: RecorderSettings, budget: DiskBudget) -> Self {
        SegmentRecorder {
            settings,
            budget,
            encoder: None,
            hardware: None,
            packets: Vec::new(),
            params: None,
            refused: None,
            writer: None,
            next_index: 0,
            next_cut_us: None,
            last_pts: None,
            pending_cut: None,
            stats: RecorderStats::default(),
            tap: None,
        }
    }

    /// Also hands every encoded packet to `tap` (see [`PacketTap`]).
    pub fn with_tap(mut self, tap: std::sync::Arc<dyn PacketTap>) -> Self {
        self.tap = Some(tap);
        self
    }

    /// Encodes frames whose pixels are an NVMM surface (the `jetson` backend on Orin) with
    /// the hardware encoder of `codecs`, reading the surface in place; other frames, and
    /// every frame when the module has no encoder (Orin Nano), go to the CPU encoder.
    pub fn with_hardware_encoder(mut self, codecs: std::sync::Arc<NvmmCodecs>) -> Self {
        self.hardware = codecs.has_encoder().then_some(codecs);
        self
    }

    /// Whether frames may come with their pixels on the device: the hardware encoder reads
    /// NVMM surfaces in place.
    pub fn takes_device_frames(&self) -> bool {
        self.hardware.is_some()
    }

    /// Whether `frame` may come with its pixels on the device: an NVMM surface the hardware
    /// encoder reads. Any other device frame must be downloaded before [`Self::push`].
    pub fn takes_device_frame(&self, frame: &Frame) -> bool {
        self.hardware.is_some() && frame.device.as_ref().is_some_and(|d| d.dmabuf().is_some())
    }

    /// Counters so far.
    pub fn stats(&self) -> RecorderStats {
        self.stats
    }

    /// Name of the encoder in use, once the first frame opened it.
    pub fn encoder_name(&self) -> Option<&'static str> {
        self.encoder.as_ref().map(Encoding::codec_name)
    }

    /// Encodes and writes one frame. Filling the encoder's picture is one copy, counted in
    /// [`Frame::copies`] when it is made (not for a frame refused before it).
    pub fn push(&mut self, frame: &mut Frame) -> Result<(), RecordError> {
        let geometry = (frame.layout.width, frame.layout.height);
        if let Some((g, reason)) = &self.refused
            && *g == geometry
        {
            return Err(RecordError::Unrecordable {
                width: g.0,
                height: g.1,
                reason: reason.clone(),
            });
        }
        let raw_pts = frame.pts_us.saturating_mul(9) / 100;
        if self
            .last_pts
            .is_some_and(|last| raw_pts < last - DISCONTINUITY_TICKS)
        {
            tracing::info!(stream = %self.settings.stream, "timestamps jumped back; new segment");
            self.finish()?;
        }
        if frame.device.is_some() && !self.takes_device_frame(frame) {
            // Host pixels are not there yet: encoding the host surface would record an
            // earlier picture.
            return Err(CodecError::Nvmm(format!(
                "frame {} reached the recorder with its pixels still on the device",
                frame.seq
            ))
            .into());
        }
        let reopen = self.encoder.as_ref().is_none_or(|e| !e.accepts(frame));
        if reopen {
            // First frame, or the stream changed resolution (or between NVMM surfaces and
            // host pixels): close what is open and start a new encoder and segment.
            self.finish()?;
            let enc = match self.open_encoder(frame) {
                Ok(enc) => enc,
                Err(e) if matches!(e, CodecError::Nvmm(_)) => {
                    // The hardware encoder cannot open: later frames are downloaded for the
                    // CPU encoder (this one is on the device and is not recorded).
                    tracing::warn!(stream = %self.settings.stream, error = %e,
                        "hardware encoder unavailable; recording on the CPU");
                    self.hardware = None;
                    return Err(e.into());
                }
                Err(e) => {
                    self.refused = Some((geometry, e.to_string()));
                    return Err(e.into());
                }
            };
            self.refused = None;
            // The hardware encoder's SPS/PPS come with its first IDR (`route_hardware`).
            if let Encoding::Cpu(enc) = &enc {
                self.params = Some(enc.parameters());
                if let Some(tap) = &self.tap {
                    let (w, h) = enc.geometry();
                    tap.stream_start(&enc.extradata(), w, h);
                }
            }
            self.encoder = Some(enc);
        }
        let pts = next_encoder_pts(self.last_pts, frame.pts_us);
        self.last_pts = Some(pts);
        let seg_us = self.settings.segment.as_micros() as i64;
        let force_key = match self.next_cut_us {
            None => {
                self.next_cut_us = Some(frame.pts_us + seg_us);
                true
            }
            // Half a frame of slack, and the next cut anchored on this cut rather than on the
            // frame: timestamps are rounded to whole microseconds (33 333 µs steps at 30 fps
            // put frame 60 at 1 999 980 µs), and requiring `pts >= cut` pushed every cut one
            // frame late, drifting to 61-frame segments and a short last one.
            Some(cut) if frame.pts_us + frame.duration_us.max(0) / 2 >= cut => {
                let next = cut + seg_us;
                // After a gap in the stream, restart the cadence from this frame.
                let next = if next <= frame.pts_us {
                    frame.pts_us + seg_us
                } else {
                    next
                };
                self.next_cut_us = Some(next);
                true
            }
            Some(_) => false,
        };
        if force_key {
            self.pending_cut = Some(pts);
        }
        // A keyframe a tap's consumer asked for: an IDR that does not cut the segment.
        let tap_key = self.tap.as_ref().is_some_and(|t| t.take_keyframe_request());
        let (enc, mut route) = self.split();
        let failure = match enc {
            Some(Encoding::Cpu(enc)) => {
                enc.encode(frame, pts, force_key || tap_key, &mut |pkt| {
                    route.route(pkt);
                    Ok(())
                })?;
                route.failure.take()
            }
            Some(Encoding::Nvmm(_)) => {
                drop(route);
                self.encode_hardware(frame, pts, force_key || tap_key)?
            }
            None => return Ok(()),
        };
        self.stats.frames += 1;
        failure.map_or(Ok(()), Err)
    }

    /// The encoder for `frame`: the hardware one for an NVMM surface it can read, else
    /// libx264.
    fn open_encoder(&self, frame: &Frame) -> Result<Encoding, CodecError> {
        if let (Some(codecs), Some(device)) = (&self.hardware, &frame.device)
            && device.dmabuf().is_some()
        {
            let (w, h) = device.size();
            return NvmmEncoder::open(codecs, &self.settings.encoder, w, h).map(Encoding::Nvmm);
        }
        VideoEncoder::open(&self.settings.encoder, frame.layout, true).map(Encoding::Cpu)
    }

    /// One frame into the hardware encoder, its packets routed. After a failure the
    /// encoder is closed (which takes every buffer back from the driver, so it reads the
    /// frame's surface no more) and the segment with it; the next frame opens a new one.
    fn encode_hardware(
        &mut self,
        frame: &Frame,
        pts: i64,
        force_key: bool,
    ) -> Result<Option<RecordError>, RecordError> {
        // Out of `self` while it encodes, so that its packets can be routed beside it.
        let mut enc = match self.encoder.take() {
            Some(Encoding::Nvmm(enc)) => enc,
            other => {
                self.encoder = other;
                return Ok(None);
            }
        };
        if let Err(e) = enc.encode(frame, pts, force_key, &mut self.packets) {
            drop(enc);
            self.packets.clear();
            if let Err(closing) = self.finish() {
                tracing::warn!(stream = %self.settings.stream, error = %closing,
                    "closing the segment after a hardware encoder failure");
            }
            return Err(e.into());
        }
        let failure = self.route_hardware(&enc);
        self.encoder = Some(Encoding::Nvmm(enc));
        Ok(failure)
    }

    /// Routes the hardware encoder's packets of one frame (or of the flush); its stream
    /// parameters are known from its first IDR on.
    fn route_hardware(&mut self, enc: &NvmmEncoder) -> Option<RecordError> {
        if self.params.is_none()
            && let Some(params) = enc.parameters()
        {
            self.params = Some(params.clone());
            if let Some(tap) = &self.tap {
                let (w, h) = enc.geometry();
                tap.stream_start(enc.extradata(), w, h);
            }
        }
        let mut packets = std::mem::take(&mut self.packets);
        let (_, mut route) = self.split();
        for p in &mut packets {
            route.route(p);
        }
        let failure = route.failure.take();
        packets.clear();
        self.packets = packets;
        failure
    }

    /// Flushes the encoder and closes the open segment (on shutdown, before a reopen, or at a
    /// discontinuity).
    pub fn finish(&mut self) -> Result<(), RecordError> {
        let mut hardware_failure = None;
        if let Some(mut enc) = self.encoder.take() {
            let hardware = matches!(enc, Encoding::Nvmm(_));
            let failure = match &mut enc {
                Encoding::Cpu(enc) => {
                    let (_, mut route) = self.split();
                    enc.finish(&mut |pkt| {
                        route.route(pkt);
                        Ok(())
                    })?;
                    route.failure.take()
                }
                Encoding::Nvmm(nvmm) => {
                    // A flush that fails still routes what came out and closes the segment.
                    let flushed = nvmm.finish(&mut self.packets);
                    let failure = self.route_hardware(nvmm);
                    flushed.err().map(RecordError::from).or(failure)
                }
            };
            if let Some(tap) = &self.tap {
                tap.stream_end();
            }
            match failure {
                None => {}
                // The hardware encoder is gone either way: its segment is closed below.
                Some(e) if hardware => hardware_failure = Some(e),
                Some(e) => return Err(e),
            }
        }
        self.next_cut_us = None;
        self.last_pts = None;
        self.pending_cut = None;
        // The next encoder brings (and announces) its own stream parameters.
        self.params = None;
        if let Some(w) = self.writer.take() {
            let (path, bytes) = w.close()?;
            self.stats.segments += 1;
            self.budget.add(path, bytes);
        }
        hardware_failure.map_or(Ok(()), Err)
    }

    /// The encoder and a router over the other fields, borrowed apart.
    fn split(&mut self) -> (Option<&mut Encoding>, PacketRouter<'_>) {
        (
            self.encoder.as_mut(),
            PacketRouter {
                settings: &self.settings,
                budget: &self.budget,
                params: self.params.as_ref(),
                writer: &mut self.writer,
                next_index: &mut self.next_index,
                stats: &mut self.stats,
                pending_cut: &mut self.pending_cut,
                tap: self.tap.as_deref(),
                failure: None,
            },
        )
    }
}

/// Where the encoder's packets go: into the open segment, or a new one at a cut.
struct PacketRouter<'a> {
    settings: &'a RecorderSettings,
    budget: &'a DiskBudget,
    params: Option<&'a ff::codec::Parameters>,
    writer: &'a mut Option<SegmentWriter>,
    next_index: &'a mut u64,
    stats: &'a mut RecorderStats,
    pending_cut: &'a mut Option<i64>,
    tap: Option<&'a dyn PacketTap>,
    /// First error; later packets are dropped until the caller sees it.
    failure: Option<RecordError>,
}

impl PacketRouter<'_> {
    fn route(&mut self, pkt: &mut ff::Packet) {
        // Before the muxer, which rescales the packet's timestamps to its own time base.
        if let Some(tap) = self.tap.filter(|t| t.active())
            && let Some(data) = pkt.data()
        {
            tap.packet(&TapPacket {
                data,
                pts: pkt.pts().unwrap_or(0),
                dts: pkt.dts().or(pkt.pts()).unwrap_or(0),
                duration: pkt.duration(),
                key: pkt.is_key(),
            });
        }
        if self.failure.is_none()
            && let Err(e) = self.try_route(pkt)
        {
            self.failure = Some(e);
        }
    }

    /// Starts a new segment at the key packet of the frame forced for the cut (or at the
    /// first keyframe), then writes the packet.
    fn try_route(&mut self, pkt: &mut ff::Packet) -> Result<(), RecordError> {
        let pts = pkt.pts().unwrap_or(0);
        let due = self.pending_cut.is_some_and(|c| pts >= c);
        if pkt.is_key() && (self.writer.is_none() || due) {
            *self.pending_cut = None;
            if let Some(w) = self.writer.take() {
                let (path, bytes) = w.close()?;
                self.stats.segments += 1;
                self.budget.add(path, bytes);
            }
            let Some(params) = self.params else {
                return Ok(());
            };
            let s = self.settings;
            let mut w = SegmentWriter::create(&s.dir, &s.stream, *self.next_index, params)?;
            *self.next_index += 1;
            w.first_pts = pts;
            *self.writer = Some(w);
        }
        match self.writer.as_mut() {
            Some(w) => {
                self.stats.bytes += pkt.size() as u64;
                w.write(pkt)
            }
            // A non-key packet before the first keyframe cannot start a segment; x264 always
            // begins with one, so this is only reachable with a broken encoder.
            None => Ok(()),
        }
    }
}

/// Encodes frames into one ordinary (progressive, `faststart`) MP4 file: sample clips and
/// exports, where one file that any player opens is wanted rather than live segments.
pub struct ClipWriter {
    encoder: VideoEncoder,
    writer: SegmentWriter,
    frames: u64,
    last_pts: Option<i64>,
}

impl ClipWriter {
    /// Creates `path` for frames of `layout`.
    pub fn create(
        path: &Path,
        settings: &EncoderSettings,
        layout: crate::frame::FrameLayout,
    ) -> Result<Self, RecordError> {
        let encoder = VideoEncoder::open(settings, layout, true)?;
        let part = PathBuf::from(format!("{}{PART_SUFFIX}", path.display()));
        let writer = SegmentWriter::create_at(
            part,
            path.to_path_buf(),
            &encoder.parameters(),
            "+faststart",
        )?;
        Ok(ClipWriter {
            encoder,
            writer,
            frames: 0,
            last_pts: None,
        })
    }

    /// Encodes and writes one frame (one copy into the encoder, counted in [`Frame::copies`]).
    pub fn push(&mut self, frame: &mut Frame) -> Result<(), RecordError> {
        let force_key = self.frames == 0;
        self.frames += 1;
        let pts = next_encoder_pts(self.last_pts, frame.pts_us);
        self.last_pts = Some(pts);
        let w = &mut self.writer;
        let mut failure = None;
        self.encoder.encode(frame, pts, force_key, &mut |pkt| {
            if failure.is_none() {
                failure = w.write(pkt).err();
            }
            Ok(())
        })?;
        failure.map_or(Ok(()), Err)
    }

    /// Flushes the encoder and closes the file; returns its size in bytes.
    pub fn finish(mut self) -> Result<u64, RecordError> {
        let w = &mut self.writer;
        let mut failure = None;
        self.encoder.finish(&mut |pkt| {
            if failure.is_none() {
                failure = w.write(pkt).err();
            }
            Ok(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(self.writer.close()?.1)
    }
}

/// Civil UTC date (y, m, d) and time (h, m, s) of a Unix time.
pub use aegis_config::civil::civil_utc;

/// `20261126T152233Z`: UTC, for file names that sort by time.
fn utc_stamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let ((y, m, d), (hh, mm, ss)) = civil_utc(secs);
    format!("{y:04}{m:02}{d:02}T{hh:02}{mm:02}{ss:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_stamp_formats_known_instants() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101T000000Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_706_553); // 2026-11-26T15:22:33Z
        assert_eq!(utc_stamp(t), "20261126T152233Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(utc_stamp(leap), "20000229T000000Z");
    }
}
