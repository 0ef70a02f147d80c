//! Video sources: files ([`FileSource`]), live network streams ([`LiveSource`], RTSP) and
//! video pushed to the device ([`PushedSource`], WHIP).
//!
//! Every source implements [`VideoSource`], a pull interface: `next_frame()` blocks until a
//! pooled frame is ready, returns `Ok(None)` at a clean end of stream (or once stopped), and
//! reports damage as counters rather than errors wherever playback can go on. Live sources
//! never end on their own: they reconnect, and tell why through [`SourceHealth`].

mod file;
mod live;
mod open;
mod pushed;

pub use file::{FileSource, FileSourceSettings};
pub use live::{LiveSource, LiveSourceSettings, RECENTLY_HEALTHY, RtspTransport, redact_url};
pub use open::{OpenSettings, open};
pub use pushed::{MAX_UNIT, Publisher, PushError, PushFeed, PushFeeds, PushedCodec, PushedSource};
#[doc(hidden)]
pub use pushed::{annexb_clip, file_digests, i420_digest, split_annexb_units};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use crate::codec::{CodecError, DecodeStats, Decoding};
use crate::container::ContainerError;
use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// Largest frame side accepted: a corrupt or hostile header must not make the pool allocate
/// gigabytes (8192 covers 8K video).
pub const MAX_FRAME_SIDE: usize = 8192;

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening or rewinding the file failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The decoder could not be opened or produced something unusable.
    #[error("{path}: {source}")]
    Codec {
        /// The file (or the URL without credentials).
        path: PathBuf,
        /// What went wrong.
        source: CodecError,
    },
    /// The stream's frames are larger than [`MAX_FRAME_SIDE`].
    #[error("{path}: frame size {width}x{height} exceeds the {max}x{max} limit")]
    FrameTooLarge {
        /// The file (or the URL without credentials).
        path: PathBuf,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// The limit.
        max: usize,
    },
    /// The source cannot run in this process (e.g. pushed video where nothing takes it).
    #[error("{0}")]
    NotHere(String),
}

/// What a source has seen so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    /// Decoder counters (of the current connection, for live sources).
    pub decode: DecodeStats,
    /// Packets that could not be read.
    pub read_errors: u64,
    /// The file ended in the middle of data: read errors ended it, its last packet was cut
    /// short, or it held fewer packets than its index promised.
    pub truncated: bool,
    /// Times the file was restarted.
    pub loops: u64,
    /// Frames emitted.
    pub frames: u64,
}

/// The frame interface every source offers the pipeline.
pub trait VideoSource: Send {
    /// The next frame; `Ok(None)` at the end of the stream or once stopped.
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError>;
    /// The stream id stamped on the frames.
    fn stream_id(&self) -> &StreamId;
    /// Counters so far.
    fn stats(&self) -> SourceStats;
    /// The current surface pool (it changes with the stream's resolution).
    fn pool(&self) -> &SurfacePool;
    /// Times the source waited for a free surface (backpressure), over all its pools.
    fn pool_waits(&self) -> u64;
    /// A handle that stops this source from another thread.
    fn stopper(&self) -> SourceStopper;
    /// Connection state, reconnects and last error, shared with whoever reports them.
    fn health(&self) -> Arc<SourceHealth>;
    /// Nominal frame rate (numerator, denominator); (0, 1) while unknown.
    fn frame_rate(&self) -> (i32, i32);
}

/// The [`VideoSource`] methods every source answers from its [`SourceCore`] (field `core`).
macro_rules! core_accessors {
    () => {
        fn pool(&self) -> &SurfacePool {
            &self.core.pool
        }
        fn pool_waits(&self) -> u64 {
            // Host pools, and the device pools a decoder or camera lends from.
            self.core.pool_waits() + VideoSource::stats(self).decode.device_pool_waits
        }
        fn stopper(&self) -> SourceStopper {
            self.core.stopper()
        }
        fn health(&self) -> Arc<SourceHealth> {
            self.core.health.clone()
        }
    };
}
pub(crate) use core_accessors;

/// A source that could not be opened (a missing or unreadable file). Its stream still
/// starts: the source reports the error once (state [`SourceState::Failed`], `last_error`,
/// and the error from the first [`VideoSource::next_frame`]) and ends, so one bad source never
/// keeps the other streams from running.
pub struct FailedSource {
    core: SourceCore,
    error: Option<SourceError>,
}

impl FailedSource {
    /// The stream `stream`, whose source at `origin` (a path, or a URL without credentials)
    /// failed with `error`.
    pub fn new(stream: StreamId, origin: PathBuf, error: SourceError) -> Self {
        let core = SourceCore::new(origin, stream, 1, FrameLayout::new(PixelFormat::I420, 2, 2));
        core.health.fail(SourceState::Failed, error.to_string());
        FailedSource {
            core,
            error: Some(error),
        }
    }
}

impl VideoSource for FailedSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }
    fn stream_id(&self) -> &StreamId {
        &self.core.stream
    }
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
    core_accessors!();
    fn frame_rate(&self) -> (i32, i32) {
        (0, 1)
    }
}

/// Where a source is in its life, as the technician sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum SourceState {
    /// Opening the file or connecting to the camera.
    Connecting = 0,
    /// Frames are coming.
    Streaming = 1,
    /// Connected, but no data arrived within the stall timeout.
    Stalled = 2,
    /// Waiting before the next connection attempt.
    BackingOff = 3,
    /// The stream ended (end of file, or stopped).
    Ended = 4,
    /// The source could not be opened, or ended on an error it cannot recover from (a file
    /// source; live sources retry instead). `last_error` says why.
    Failed = 5,
    /// Nothing is expected yet: a pushed source (`whip:`) with no publisher connected.
    /// Not a fault (`/healthz` counts it as healthy); a publisher that connects and then
    /// sends nothing makes the source `stalled`.
    Waiting = 6,
}

impl SourceState {
    /// Every state, for metrics that export one series per state.
    pub const ALL: [SourceState; 7] = [
        SourceState::Connecting,
        SourceState::Streaming,
        SourceState::Stalled,
        SourceState::BackingOff,
        SourceState::Ended,
        SourceState::Failed,
        SourceState::Waiting,
    ];

    /// Lower-case name (`backing_off`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Streaming => "streaming",
            SourceState::Stalled => "stalled",
            SourceState::BackingOff => "backing_off",
            SourceState::Ended => "ended",
            SourceState::Failed => "failed",
            SourceState::Waiting => "waiting",
        }
    }

    fn from_u8(v: u8) -> Self {
        Self::ALL
            .get(v as usize)
            .copied()
            .unwrap_or(SourceState::Ended)
    }
}

/// Health of one source, updated by its thread and read by metrics and status pages.
/// Updating it on the frame path is a few atomic stores (no allocation).
#[derive(Debug)]
pub struct SourceHealth {
    state: AtomicU8,
    reconnects: AtomicU64,
    frames: AtomicU64,
    last_error: Mutex<String>,
    /// Which decoder the current connection uses ([`Decoding::kind`]); empty before one.
    decoder: Mutex<&'static str>,
}

/// A copy of a [`SourceHealth`] at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Current state.
    pub state: SourceState,
    /// Connection attempts after the first (live sources).
    pub reconnects: u64,
    /// Frames produced.
    pub frames: u64,
    /// The last error, in plain words (credentials never appear in it).
    pub last_error: Option<String>,
    /// Where the stream decodes: `libavcodec` (CPU), `nvdec` (CUDA backend) or `nvmm`
    /// (Orin's hardware decoder into NVMM, `jetson` backend); `None` before it opens.
    pub decoder: Option<&'static str>,
}

impl Default for SourceHealth {
    fn default() -> Self {
        SourceHealth {
            state: AtomicU8::new(SourceState::Connecting as u8),
            reconnects: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            decoder: Mutex::new(""),
        }
    }
}

impl SourceHealth {
    /// Current state.
    pub fn state(&self) -> SourceState {
        SourceState::from_u8(self.state.load(Ordering::Acquire))
    }

    /// Everything at once.
    pub fn snapshot(&self) -> HealthSnapshot {
        let e = self.last_error.lock().unwrap_or_else(|p| p.into_inner());
        HealthSnapshot {
            state: self.state(),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            last_error: (!e.is_empty()).then(|| e.clone()),
            decoder: Some(*self.decoder.lock().unwrap_or_else(|p| p.into_inner()))
                .filter(|d| !d.is_empty()),
        }
    }

    /// The decoder a (re)connection opened.
    pub(crate) fn set_decoder(&self, decoder: &Decoding) {
        *self.decoder.lock().unwrap_or_else(|p| p.into_inner()) = decoder.kind();
    }

    pub(crate) fn set_state(&self, s: SourceState) {
        self.state.store(s as u8, Ordering::Release);
    }

    pub(crate) fn frame(&self) {
        self.frames.fetch_add(1, Ordering::Relaxed);
        if self.state() != SourceState::Streaming {
            self.set_state(SourceState::Streaming);
        }
    }

    pub(crate) fn fail(&self, state: SourceState, error: String) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
        self.set_state(state);
    }

    pub(crate) fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }
}

/// Stops a source from another thread: `next_frame` then returns `Ok(None)`, also when it was
/// waiting for a free surface, a frame's presentation time, a reconnect delay or the network.
#[derive(Clone)]
pub struct SourceStopper {
    state: Arc<StopState>,
}

struct StopState {
    stopped: Mutex<bool>,
    /// Mirror of `stopped` for lock-free checks (libavformat's interrupt callback).
    stopped_flag: AtomicBool,
    wake: Condvar,
    /// The pool the source currently fills (it changes with the stream's resolution).
    pool: Mutex<SurfacePool>,
}

impl StopState {
    fn is_stopped(&self) -> bool {
        self.stopped_flag.load(Ordering::Acquire)
    }
}

impl SourceStopper {
    /// Stops the source (idempotent).
    pub fn stop(&self) {
        *self.state.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.state.stopped_flag.store(true, Ordering::Release);
        self.state.wake.notify_all();
        self.state
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close();
    }
}

/// A live stream's timeline across its connections (or publishers): each connection's
/// timestamps are shifted to continue where the previous one ended, and frames are numbered
/// without gaps.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    next_seq: u64,
    next_pts_us: i64,
}

impl Timeline {
    /// Stamps `frame` of the connection whose shift is `offset` (None until its first frame).
    pub(crate) fn stamp(&mut self, frame: &mut Frame, offset: &mut Option<i64>) {
        let shift = *offset.get_or_insert(self.next_pts_us - frame.pts_us);
        frame.pts_us += shift;
        frame.seq = self.next_seq;
        self.next_seq += 1;
        self.next_pts_us = frame.pts_us + frame.duration_us.max(1);
    }
}

/// What every source shares: the pool (replaced on resolution changes), the stop state, the
/// health record and the error context.
pub(crate) struct SourceCore {
    /// The file, or the URL without credentials: what errors name.
    origin: PathBuf,
    stream: StreamId,
    pool_frames: usize,
    pool: SurfacePool,
    stop: Arc<StopState>,
    /// Backpressure waits counted by pools this source replaced.
    earlier_pool_waits: u64,
    health: Arc<SourceHealth>,
}

impl SourceCore {
    pub(crate) fn new(
        origin: PathBuf,
        stream: StreamId,
        pool_frames: usize,
        layout: FrameLayout,
    ) -> Self {
        let pool = SurfacePool::new(layout, pool_frames);
        SourceCore {
            origin,
            stream,
            pool_frames,
            stop: Arc::new(StopState {
                stopped: Mutex::new(false),
                stopped_flag: AtomicBool::new(false),
                wake: Condvar::new(),
                pool: Mutex::new(pool.clone()),
            }),
            pool,
            earlier_pool_waits: 0,
            health: Arc::new(SourceHealth::default()),
        }
    }

    pub(crate) fn stopper(&self) -> SourceStopper {
        SourceStopper {
            state: self.stop.clone(),
        }
    }

    pub(crate) fn pool_waits(&self) -> u64 {
        self.earlier_pool_waits + self.pool.backpressure().0
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stop.is_stopped()
    }

    /// True once the source should emit nothing more: stopped, or `max_frames` reached.
    pub(crate) fn exhausted(&self, max_frames: Option<u64>, frames: u64) -> bool {
        self.is_stopped() || max_frames.is_some_and(|m| frames >= m)
    }

    /// Real-time pacing: waits until the frame at `pts_us` is due on the clock started by
    /// the first frame (`clock`). Waits on the stop condition rather than sleeping: a
    /// timestamp jump in a damaged file must not delay shutdown by the size of the jump.
    pub(crate) fn pace(&self, clock: &mut Option<(Instant, i64)>, pts_us: i64) {
        let (t0, p0) = *clock.get_or_insert((Instant::now(), pts_us));
        self.wait_until(t0 + std::time::Duration::from_micros((pts_us - p0).max(0) as u64));
    }

    /// Waits until `deadline` unless stopped first; returns false when stopped.
    pub(crate) fn wait_until(&self, deadline: Instant) -> bool {
        let mut stopped = self.stop.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= deadline {
                return true;
            }
            stopped = self
                .stop
                .wake
                .wait_timeout(stopped, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        false
    }

    pub(crate) fn codec_error(&self, source: CodecError) -> SourceError {
        SourceError::Codec {
            path: self.origin.clone(),
            source,
        }
    }

    /// A pool closed by a stop is a clean end, not an error.
    pub(crate) fn end_if_stopped(
        &self,
        r: Result<Option<Frame>, SourceError>,
    ) -> Result<Option<Frame>, SourceError> {
        match r {
            Err(SourceError::Codec {
                source: CodecError::PoolClosed(_),
                ..
            }) if self.is_stopped() => Ok(None),
            other => other,
        }
    }

    /// The decoder's next picture in a pooled surface; on a resolution change, a new pool.
    pub(crate) fn receive(
        &mut self,
        decoder: &mut Decoding,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, SourceError> {
        loop {
            match decoder.receive(&self.pool, pts_offset_us) {
                Ok(f) => return Ok(f),
                Err(CodecError::Geometry { .. }) => {
                    let layout = decoder.pending_layout().map_err(|e| self.codec_error(e))?;
                    self.replace_pool(layout)?;
                    self.pin_for(decoder);
                }
                Err(e) => return Err(self.codec_error(e)),
            }
        }
    }

    /// Page-locks the host pool when `decoder` decodes on the GPU: the one download per
    /// frame then runs as DMA. Without it the downloads still work, through the driver's
    /// staging copies (slower), so a failure is only logged.
    pub(crate) fn pin_for(&self, decoder: &Decoding) {
        if let Some(gpu) = decoder.gpu()
            && let Err(e) = self.pool.pin_for(gpu)
        {
            tracing::warn!(stream = %self.stream, error = %e,
                "cannot page-lock the host surfaces; downloads will be slower");
        }
    }

    /// Resolution changed mid-stream: a new pool for the new geometry; frames still in
    /// flight return to the old pool, which is freed with them.
    pub(crate) fn replace_pool(&mut self, layout: FrameLayout) -> Result<(), SourceError> {
        check_size(&self.origin, layout.width, layout.height)?;
        tracing::info!(stream = %self.stream, width = layout.width,
            height = layout.height, "stream changed resolution; new surface pool");
        self.pool.close();
        self.earlier_pool_waits += self.pool.backpressure().0;
        self.pool = SurfacePool::new(layout, self.pool_frames);
        let mut current = self.stop.pool.lock().unwrap_or_else(|p| p.into_inner());
        *current = self.pool.clone();
        // A stop that raced with the swap closed the old pool; close this one too.
        if self.stop.is_stopped() {
            current.close();
        }
        Ok(())
    }
}

pub(crate) fn check_size(path: &Path, width: usize, height: usize) -> Result<(), SourceError> {
    if width > MAX_FRAME_SIDE || height > MAX_FRAME_SIDE {
        return Err(SourceError::FrameTooLarge {
            path: path.to_path_buf(),
            width,
            height,
            max: MAX_FRAME_SIDE,
        });
    }
    Ok(())
}
