//! File sources: MP4, MKV, TS or raw H.264/H.265 files, played once or looped, as fast as the
//! pipeline takes them or at their native rate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use ffmpeg_next as ff;

use super::{
    SourceCore, SourceError, SourceHealth, SourceState, SourceStats, SourceStopper, VideoSource,
    check_size,
};
use crate::codec::Decoding;
use crate::container::{FileDemuxer, StreamInfo};
use crate::frame::{Frame, StreamId};
use crate::pool::SurfacePool;

/// After this many read errors in a row the file is treated as ending there (truncated).
const MAX_CONSECUTIVE_READ_ERRORS: u32 = 16;

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
    /// Decode on this GPU ([`crate::backend::Backend::stream_gpu`]: NVDEC on the CUDA
    /// backend, Orin's decoder into NVMM on the `jetson` backend): frames then start on the
    /// device. H.264 and H.265 only; other codecs, or a missing decoder, decode on the CPU
    /// (logged).
    pub gpu: Option<crate::backend::StreamGpu>,
}

impl FileSourceSettings {
    /// `path` decoded once, as fast as it is read, on the CPU with one decoder thread and
    /// four pool surfaces (what tests and tools start from: change the fields they need).
    pub fn new(path: impl Into<PathBuf>, stream: StreamId) -> Self {
        FileSourceSettings {
            path: path.into(),
            stream,
            looping: false,
            realtime: false,
            max_frames: None,
            pool_frames: 4,
            decoder_threads: 1,
            gpu: None,
        }
    }
}

/// Frames from a video file.
pub struct FileSource {
    settings: FileSourceSettings,
    demux: FileDemuxer,
    decoder: Decoding,
    core: SourceCore,
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
        check_size(&settings.path, info.width, info.height)?;
        let decoder = Decoding::open(
            demux.parameters(),
            demux.time_base(),
            info.frame_duration_us(),
            settings.stream.clone(),
            settings.decoder_threads,
            settings.gpu.as_ref(),
            settings.pool_frames,
        )
        .map_err(codec_err)?;
        let layout = decoder.layout(info.width, info.height);
        let core = SourceCore::new(
            settings.path.clone(),
            settings.stream.clone(),
            settings.pool_frames,
            layout,
        );
        core.pin_for(&decoder);
        core.health.set_decoder(&decoder);
        core.health.set_state(SourceState::Streaming);
        Ok(FileSource {
            settings,
            demux,
            decoder,
            core,
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
        &self.core.pool
    }

    /// Times the source waited for a free surface (backpressure), over all its pools.
    pub fn pool_waits(&self) -> u64 {
        self.core.pool_waits() + self.decoder.stats().device_pool_waits
    }

    /// A handle that stops this source from another thread.
    pub fn stopper(&self) -> SourceStopper {
        self.core.stopper()
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
        let r = self.next_frame_inner();
        let r = self.core.end_if_stopped(r);
        if !matches!(r, Ok(Some(_))) {
            self.core.health.set_state(SourceState::Ended);
        }
        if let Err(e) = &r {
            self.core.health.fail(SourceState::Failed, e.to_string());
        }
        r
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, SourceError> {
        if self
            .core
            .exhausted(self.settings.max_frames, self.stats.frames)
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
                    let core = &self.core;
                    self.decoder
                        .send(&self.packet, &|| core.is_stopped())
                        .map_err(|e| core.codec_error(e))?;
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
                    let core = &self.core;
                    self.decoder
                        .send_eof(&|| core.is_stopped())
                        .map_err(|e| core.codec_error(e))?;
                    self.eof_sent = true;
                }
                Err(e) => {
                    self.stats.read_errors += 1;
                    self.consecutive_read_errors += 1;
                    tracing::warn!(stream = %self.settings.stream, error = %e, "read error");
                    if self.consecutive_read_errors >= MAX_CONSECUTIVE_READ_ERRORS {
                        self.stats.truncated = true;
                        let core = &self.core;
                        self.decoder
                            .send_eof(&|| core.is_stopped())
                            .map_err(|e| core.codec_error(e))?;
                        self.eof_sent = true;
                    }
                }
            }
        }
    }

    fn receive(&mut self) -> Result<Option<Frame>, SourceError> {
        self.core.receive(&mut self.decoder, self.pts_offset_us)
    }

    fn account(&mut self, frame: &Frame) {
        let raw = frame.pts_us - self.pts_offset_us;
        self.first_pts_us.get_or_insert(raw);
        self.last_pts_us = frame.pts_us;
        self.frames_this_loop += 1;
        self.stats.frames += 1;
        self.core.health.frame();
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
        if self.settings.realtime {
            self.core.pace(&mut self.clock, pts_us);
        }
    }
}

impl VideoSource for FileSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        FileSource::next_frame(self)
    }
    fn stream_id(&self) -> &StreamId {
        &self.settings.stream
    }
    fn stats(&self) -> SourceStats {
        FileSource::stats(self)
    }
    super::core_accessors!();
    fn frame_rate(&self) -> (i32, i32) {
        self.demux.info().frame_rate
    }
}
