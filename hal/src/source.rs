//! Video sources. This change has file sources; live sources (RTSP, V4L2) come next and
//! implement the same pull interface: `next_frame()` blocks until a pooled frame is ready,
//! returns `Ok(None)` at a clean end of stream, and reports damage as counters rather than
//! errors wherever playback can go on.

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use crate::codec::{CodecError, DecodeStats, VideoDecoder};
use crate::container::{ContainerError, FileDemuxer, StreamInfo};
use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// After this many read errors in a row the file is treated as ending there (truncated).
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 16;

/// Largest frame side accepted: a corrupt or hostile header must not make the pool allocate
/// gigabytes (8192 covers 8K video).
pub const MAX_FRAME_SIDE: usize = 8192;

/// How a file source behaves.
#[derive(Debug, Clone)]
pub struct FileSourceSettings {
    /// The file (MP4, MKV, TS or raw H.264/H.265).
    pub path: PathBuf,
    /// Stream id stamped on every frame.
    pub stream: StreamId,
    /// Start again from the beginning at end of file (timestamps keep increasing).
    pub looping: bool,
    /// Pace frames at their timestamps instead of as fast as the pipeline takes them.
    pub realtime: bool,
    /// Stop after this many frames.
    pub max_frames: Option<u64>,
    /// Surfaces in this stream's pool.
    pub pool_frames: usize,
    /// Decoder threads (0 = one per core).
    pub decoder_threads: usize,
}

/// Errors that stop a source.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Opening or rewinding the file failed.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// The decoder could not be opened or produced something unusable.
    #[error("{path}: {source}")]
    Codec {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: CodecError,
    },
    /// The stream's frames are larger than [`MAX_FRAME_SIDE`].
    #[error("{path}: frame size {width}x{height} exceeds the {max}x{max} limit")]
    FrameTooLarge {
        /// The file.
        path: PathBuf,
        /// Width.
        width: usize,
        /// Height.
        height: usize,
        /// The limit.
        max: usize,
    },
}

/// Stops a source from another thread: `next_frame` then returns `Ok(None)`, also when it was
/// waiting for a free surface or for its next frame's presentation time.
#[derive(Clone)]
pub struct SourceStopper {
    state: Arc<StopState>,
}

struct StopState {
    stopped: Mutex<bool>,
    wake: Condvar,
    /// The pool the source currently fills (it changes with the stream's resolution).
    pool: Mutex<SurfacePool>,
}

impl StopState {
    fn is_stopped(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SourceStopper {
    /// Stops the source (idempotent).
    pub fn stop(&self) {
        *self.state.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.state.wake.notify_all();
        self.state
            .pool
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close();
    }
}

/// What a source has seen so far.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SourceStats {
    /// Decoder counters.
    pub decode: DecodeStats,
    /// Packets that could not be read from the file.
    pub read_errors: u64,
    /// The file ended in the middle of data: read errors ended it, its last packet was cut
    /// short, or it held fewer packets than its index promised.
    pub truncated: bool,
    /// Times the file was restarted.
    pub loops: u64,
    /// Frames emitted.
    pub frames: u64,
}

/// Frames from a video file.
pub struct FileSource {
    settings: FileSourceSettings,
    demux: FileDemuxer,
    decoder: VideoDecoder,
    pool: SurfacePool,
    stop: Arc<StopState>,
    /// Backpressure waits counted by pools this source replaced.
    earlier_pool_waits: u64,
    packet: ff::Packet,
    eof_sent: bool,
    pts_offset_us: i64,
    first_pts_us: Option<i64>,
    last_pts_us: i64,
    frames_this_loop: u64,
    clock: Option<(Instant, i64)>,
    consecutive_read_errors: u32,
    /// Video packets read in this pass over the file, and whether the last one was cut short
    /// (libavformat flags a packet it could only partly read as corrupt): together they tell
    /// a truncated file from a complete one, since libavformat reports both ends as EOF.
    packets_this_loop: u64,
    last_packet_partial: bool,
    stats: SourceStats,
}

impl FileSource {
    /// Opens the file and its decoder and allocates the stream's surface pool.
    pub fn open(settings: FileSourceSettings) -> Result<Self, SourceError> {
        let demux = FileDemuxer::open(&settings.path)?;
        let info = demux.info().clone();
        let codec_err = |source| SourceError::Codec {
            path: settings.path.clone(),
            source,
        };
        let decoder = VideoDecoder::open(
            demux.parameters(),
            demux.time_base(),
            info.frame_duration_us(),
            settings.stream.clone(),
            settings.decoder_threads,
        )
        .map_err(codec_err)?;
        check_size(&settings.path, info.width, info.height)?;
        let layout = FrameLayout::new(PixelFormat::I420, info.width.max(2), info.height.max(2));
        let pool = SurfacePool::new(layout, settings.pool_frames);
        let stop = Arc::new(StopState {
            stopped: Mutex::new(false),
            wake: Condvar::new(),
            pool: Mutex::new(pool.clone()),
        });
        Ok(FileSource {
            settings,
            demux,
            decoder,
            pool,
            stop,
            earlier_pool_waits: 0,
            packet: ff::Packet::empty(),
            eof_sent: false,
            pts_offset_us: 0,
            first_pts_us: None,
            last_pts_us: 0,
            frames_this_loop: 0,
            clock: None,
            consecutive_read_errors: 0,
            packets_this_loop: 0,
            last_packet_partial: false,
            stats: SourceStats::default(),
        })
    }

    /// The stream being decoded.
    pub fn info(&self) -> &StreamInfo {
        self.demux.info()
    }

    /// The stream id stamped on this source's frames.
    pub fn stream_id(&self) -> &StreamId {
        &self.settings.stream
    }

    /// This stream's current surface pool (for metrics).
    pub fn pool(&self) -> &SurfacePool {
        &self.pool
    }

    /// Times the source waited for a free surface (backpressure), over all its pools.
    pub fn pool_waits(&self) -> u64 {
        self.earlier_pool_waits + self.pool.backpressure().0
    }

    /// A handle that stops this source from another thread.
    pub fn stopper(&self) -> SourceStopper {
        SourceStopper {
            state: self.stop.clone(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> SourceStats {
        SourceStats {
            decode: self.decoder.stats(),
            ..self.stats
        }
    }

    /// The next frame, waiting for a free surface if the pipeline is behind. `Ok(None)` at the
    /// end of the file (or of `max_frames`), or once stopped through a [`SourceStopper`].
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        match self.next_frame_inner() {
            Err(SourceError::Codec {
                source: CodecError::PoolClosed(_),
                ..
            }) if self.stop.is_stopped() => Ok(None),
            other => other,
        }
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.stop.is_stopped()
            || self
                .settings
                .max_frames
                .is_some_and(|m| self.stats.frames >= m)
        {
            return Ok(None);
        }
        loop {
            if let Some(frame) = self.receive()? {
                self.account(&frame);
                self.pace(frame.pts_us);
                return Ok(Some(frame));
            }
            if self.eof_sent {
                if self.settings.looping && self.frames_this_loop > 0 {
                    self.restart()?;
                    continue;
                }
                return Ok(None);
            }
            match self.demux.read(&mut self.packet) {
                Ok(true) => {
                    self.consecutive_read_errors = 0;
                    self.packets_this_loop += 1;
                    self.last_packet_partial = self.packet.is_corrupt();
                    self.decoder.send(&self.packet);
                }
                Ok(false) => {
                    // A file cut short (copy interrupted, disk full, crash) reads as a plain
                    // EOF: detect it by a partial last packet or fewer packets than the
                    // container's index promised.
                    let promised = self.demux.info().frames;
                    if self.last_packet_partial
                        || promised.is_some_and(|n| self.packets_this_loop < n)
                    {
                        self.stats.truncated = true;
                    }
                    self.decoder.send_eof();
                    self.eof_sent = true;
                }
                Err(e) => {
                    self.stats.read_errors += 1;
                    self.consecutive_read_errors += 1;
                    tracing::warn!(stream = %self.settings.stream, error = %e, "read error");
                    if self.consecutive_read_errors >= MAX_CONSECUTIVE_READ_ERRORS {
                        self.stats.truncated = true;
                        self.decoder.send_eof();
                        self.eof_sent = true;
                    }
                }
            }
        }
    }

    fn receive(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            match self.decoder.receive(&self.pool, self.pts_offset_us) {
                Ok(f) => return Ok(f),
                Err(CodecError::Geometry { .. }) => {
                    // Resolution changed mid-stream: new pool for the new geometry; frames
                    // still in flight return to the old pool, which is freed with them.
                    let layout = self
                        .decoder
                        .pending_layout()
                        .map_err(|e| self.codec_error(e))?;
                    check_size(&self.settings.path, layout.width, layout.height)?;
                    tracing::info!(stream = %self.settings.stream, width = layout.width,
                        height = layout.height, "stream changed resolution; new surface pool");
                    self.pool.close();
                    self.earlier_pool_waits += self.pool.backpressure().0;
                    self.pool = SurfacePool::new(layout, self.settings.pool_frames);
                    let mut current = self.stop.pool.lock().unwrap_or_else(|p| p.into_inner());
                    *current = self.pool.clone();
                    // A stop that raced with the swap closed the old pool; close this one too.
                    if self.stop.is_stopped() {
                        current.close();
                    }
                }
                Err(e) => return Err(self.codec_error(e)),
            }
        }
    }

    fn codec_error(&self, source: CodecError) -> SourceError {
        SourceError::Codec {
            path: self.settings.path.clone(),
            source,
        }
    }

    fn account(&mut self, frame: &Frame) {
        let raw = frame.pts_us - self.pts_offset_us;
        self.first_pts_us.get_or_insert(raw);
        self.last_pts_us = frame.pts_us;
        self.frames_this_loop += 1;
        self.stats.frames += 1;
    }

    fn restart(&mut self) -> Result<(), SourceError> {
        self.demux.rewind()?;
        self.decoder.reset();
        let first = self.first_pts_us.unwrap_or(0);
        // The next loop's first frame lands one frame after the last one.
        self.pts_offset_us = self.last_pts_us + self.demux.info().frame_duration_us() - first;
        self.eof_sent = false;
        self.frames_this_loop = 0;
        self.packets_this_loop = 0;
        self.last_packet_partial = false;
        self.stats.loops += 1;
        Ok(())
    }

    fn pace(&mut self, pts_us: i64) {
        if !self.settings.realtime {
            return;
        }
        let (t0, p0) = *self.clock.get_or_insert((Instant::now(), pts_us));
        let due = t0 + Duration::from_micros((pts_us - p0).max(0) as u64);
        // Wait on the stop condition rather than sleeping: a timestamp jump in a damaged file
        // must not delay shutdown by the size of the jump.
        let mut stopped = self.stop.stopped.lock().unwrap_or_else(|p| p.into_inner());
        while !*stopped {
            let now = Instant::now();
            if now >= due {
                break;
            }
            stopped = self
                .stop
                .wake
                .wait_timeout(stopped, due - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn check_size(path: &std::path::Path, width: usize, height: usize) -> Result<(), SourceError> {
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
