//! File sources decoded by NVDEC (CUDA backend): libavformat demuxes on the CPU (only
//! compressed packets), NVDEC decodes on the GPU, and each frame leaves here with its pixels
//! in a device surface ([`Frame::device`]); the pipeline downloads them once, after the
//! stages that work on the device. Same behaviour as [`super::FileSource`] otherwise:
//! looping with increasing timestamps, real-time pacing, `max_frames`, stop, backpressure
//! (a full device or host pool blocks the demuxer).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_cuda::Gpu;
use aegis_cuda::nvdec::{self, Codec, Decoder};
use ffmpeg_next as ff;

use super::{
    SourceCore, SourceError, SourceHealth, SourceState, SourceStats, SourceStopper, VideoSource,
    check_size,
};
use crate::codec::decode_rescale_us;
use crate::container::FileDemuxer;
use crate::frame::{DeviceSurface, Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pool::SurfacePool;
use crate::source::FileSourceSettings;

/// NVDEC pictures waiting on the decoder before the first is shown: lets decoding and the
/// copy out overlap (NVIDIA's advice for throughput; +2 frames of latency).
const DISPLAY_DELAY: u32 = 2;

/// How the file's packets reach NVDEC's Annex-B parser.
enum Framing {
    /// MP4/MKV: NAL units with `n`-byte length prefixes; parameter sets from the header.
    LengthPrefixed(usize),
    /// Raw or MPEG-TS streams: already Annex-B.
    AnnexB,
}

/// The NVDEC codec for a stream libavformat calls `codec`, if NVDEC decodes it here
/// (8-bit 4:2:0 H.264 and H.265).
pub fn nvdec_codec(codec: &str) -> Option<Codec> {
    match codec {
        "h264" => Some(Codec::H264),
        "hevc" => Some(Codec::Hevc),
        _ => None,
    }
}

/// Frames from a video file, decoded on the GPU.
pub struct CudaFileSource {
    settings: FileSourceSettings,
    demux: FileDemuxer,
    // Declared before `gpu`: the decoder must be destroyed while its GPU is alive.
    decoder: Decoder,
    gpu: Arc<Gpu>,
    core: SourceCore,
    packet: ff::Packet,
    framing: Framing,
    /// Parameter sets (Annex-B) sent before the first packet and after every rewind.
    headers: Vec<u8>,
    headers_due: bool,
    annexb: Vec<u8>,
    time_base: ff::Rational,
    frame_us: i64,
    /// Some packet had no timestamp (raw Annex-B files): frames are numbered instead.
    untimed: bool,
    eof_sent: bool,
    pts_offset_us: i64,
    first_pts_us: Option<i64>,
    last_pts_us: i64,
    last_raw_pts_us: Option<i64>,
    frames_this_loop: u64,
    clock: Option<(Instant, i64)>,
    seq: u64,
    stats: SourceStats,
}

/// Page-locks the host pool the frames are downloaded into; without it the downloads still
/// work, through the driver's staging copies (slower), so a failure is only logged.
fn pin(pool: &SurfacePool, gpu: &Gpu) {
    if let Err(e) = pool.pin_for(gpu) {
        tracing::warn!(error = %e, "cannot page-lock the host surfaces; downloads will be slower");
    }
}

fn gpu_err(path: &Path, source: aegis_cuda::CudaError) -> SourceError {
    SourceError::Gpu {
        path: path.to_path_buf(),
        source,
    }
}

impl CudaFileSource {
    /// Opens the file and an NVDEC decoder on `gpu` (give each stream its own
    /// [`Gpu::fork`]: the stages queue their kernels on its stream). Fails with a clear
    /// error for codecs NVDEC does not take here (the caller may fall back to the CPU).
    pub fn open(settings: FileSourceSettings, gpu: Arc<Gpu>) -> Result<Self, SourceError> {
        let demux = FileDemuxer::open(&settings.path)?;
        let info = demux.info().clone();
        let path = settings.path.clone();
        let codec = nvdec_codec(&info.codec).ok_or_else(|| {
            gpu_err(
                &path,
                aegis_cuda::CudaError::Size(format!(
                    "NVDEC decodes H.264 and H.265 here, not {}",
                    info.codec
                )),
            )
        })?;
        check_size(&path, info.width, info.height)?;
        let params = demux.parameters();
        // SAFETY: `params` wraps the stream's AVCodecParameters; extradata is
        // `extradata_size` bytes (or null) and lives as long as the demuxer.
        let extra: Vec<u8> = unsafe {
            let p = &*params.as_ptr();
            if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            }
        };
        let (headers, framing) = match (extra.first(), codec) {
            (Some(1), Codec::H264) => {
                nvdec::avcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))
            }
            (Some(1), Codec::Hevc) => {
                nvdec::hvcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))
            }
            _ => Ok((extra, Framing::AnnexB)),
        }
        .map_err(|e| gpu_err(&path, aegis_cuda::CudaError::Size(e)))?;
        let pool_size = settings.pool_frames.max(2) + 4;
        let decoder =
            Decoder::new(&gpu, codec, pool_size, DISPLAY_DELAY).map_err(|e| gpu_err(&path, e))?;
        let layout = FrameLayout::new(
            PixelFormat::Nv12,
            (info.width.max(2) + 1) & !1,
            (info.height.max(2) + 1) & !1,
        );
        let core = SourceCore::new(path, settings.stream.clone(), settings.pool_frames, layout);
        pin(&core.pool, &gpu);
        core.health.set_state(SourceState::Streaming);
        Ok(CudaFileSource {
            time_base: demux.time_base(),
            frame_us: info.frame_duration_us(),
            settings,
            demux,
            decoder,
            gpu,
            core,
            packet: ff::Packet::empty(),
            framing,
            headers,
            headers_due: true,
            annexb: Vec::new(),
            untimed: false,
            eof_sent: false,
            pts_offset_us: 0,
            first_pts_us: None,
            last_pts_us: 0,
            last_raw_pts_us: None,
            frames_this_loop: 0,
            clock: None,
            seq: 0,
            stats: SourceStats::default(),
        })
    }

    /// The GPU this source decodes on.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Counters so far (`decode.frames`: pictures NVDEC delivered).
    pub fn stats(&self) -> SourceStats {
        let d = self.decoder.stats();
        let mut s = self.stats;
        s.decode.frames = d.delivered;
        s.decode.errors = d.overrun;
        s
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, SourceError> {
        if self
            .core
            .exhausted(self.settings.max_frames, self.stats.frames)
        {
            return Ok(None);
        }
        loop {
            if let Some((nv12, pts)) = self.decoder.next_frame() {
                let Some(frame) = self.wrap(nv12, pts)? else {
                    return Ok(None);
                };
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
            self.feed_one()?;
        }
    }

    /// Reads one packet and feeds it (waiting while the device pool is full), or flushes
    /// the decoder at the end of the file.
    fn feed_one(&mut self) -> Result<(), SourceError> {
        let path = self.settings.path.clone();
        match self.demux.read(&mut self.packet) {
            Ok(true) => {
                self.annexb.clear();
                if std::mem::take(&mut self.headers_due) {
                    self.annexb.extend_from_slice(&self.headers);
                }
                let data = self.packet.data().unwrap_or_default();
                match self.framing {
                    Framing::LengthPrefixed(n) => {
                        if let Err(e) = nvdec::avcc_to_annexb(data, n, &mut self.annexb) {
                            self.stats.read_errors += 1;
                            tracing::warn!(stream = %self.settings.stream, error = %e,
                                "damaged packet skipped");
                            return Ok(());
                        }
                    }
                    Framing::AnnexB => self.annexb.extend_from_slice(data),
                }
                self.stats.decode.packets += 1;
                let pts = self.packet.pts().or(self.packet.dts());
                self.untimed |= pts.is_none();
                let pts = pts.map(|p| decode_rescale_us(p, self.time_base));
                while !self
                    .decoder
                    .feed(&self.annexb, pts)
                    .map_err(|e| gpu_err(&path, e))?
                {
                    // Backpressure: wait for the pipeline to give surfaces back.
                    if self.core.is_stopped() {
                        return Ok(());
                    }
                    if let Some(p) = self.decoder.pool() {
                        p.wait_available(p.capacity / 2, Duration::from_millis(20));
                    }
                }
            }
            Ok(false) => {
                self.decoder.flush().map_err(|e| gpu_err(&path, e))?;
                self.eof_sent = true;
            }
            Err(e) => {
                self.stats.read_errors += 1;
                tracing::warn!(stream = %self.settings.stream, error = %e, "read error");
                if self.stats.read_errors >= 16 {
                    self.stats.truncated = true;
                    self.decoder.flush().map_err(|e| gpu_err(&path, e))?;
                    self.eof_sent = true;
                }
            }
        }
        Ok(())
    }

    /// A pooled host frame (for the final download) around a decoded device surface.
    fn wrap(
        &mut self,
        nv12: aegis_cuda::DeviceNv12,
        pts: i64,
    ) -> Result<Option<Frame>, SourceError> {
        let pool = self.decoder.pool().expect("a decoded frame implies a pool");
        let (w, h) = (nv12.width, nv12.height);
        let dev = DeviceSurface::new(nv12, pool, self.gpu.clone());
        let layout = self.core.pool.layout();
        if (layout.width, layout.height) != (w, h) {
            self.core
                .replace_pool(FrameLayout::new(PixelFormat::Nv12, w, h))?;
            pin(&self.core.pool, &self.gpu);
        }
        let Ok(surface) = self.core.pool.acquire() else {
            return Ok(None); // closed: stopping
        };
        let raw = if self.untimed {
            self.last_raw_pts_us.map_or(0, |p| p + self.frame_us)
        } else {
            pts
        };
        self.last_raw_pts_us = Some(raw);
        self.first_pts_us.get_or_insert(raw);
        let pts_us = raw + self.pts_offset_us;
        self.last_pts_us = pts_us;
        self.frames_this_loop += 1;
        self.stats.frames += 1;
        self.core.health.frame();
        let seq = self.seq;
        self.seq += 1;
        Ok(Some(Frame {
            stream: self.settings.stream.clone(),
            seq,
            pts_us,
            duration_us: self.frame_us,
            layout: self.core.pool.layout(),
            surface,
            // NVDEC's picture → the pooled device surface (a device copy); the download
            // adds the second.
            copies: 1,
            meta: FrameMeta::new(Instant::now()),
            device: Some(dev),
        }))
    }

    fn restart(&mut self) -> Result<(), SourceError> {
        self.demux.rewind()?;
        let first = self.first_pts_us.unwrap_or(0);
        self.pts_offset_us = self.last_pts_us + self.frame_us - first;
        self.last_raw_pts_us = None;
        self.headers_due = true;
        self.eof_sent = false;
        self.frames_this_loop = 0;
        self.stats.loops += 1;
        Ok(())
    }

    fn pace(&mut self, pts_us: i64) {
        if self.settings.realtime {
            self.core.pace(&mut self.clock, pts_us);
        }
    }
}

impl VideoSource for CudaFileSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let r = self.next_frame_inner();
        if !matches!(r, Ok(Some(_))) {
            self.core.health.set_state(SourceState::Ended);
        }
        if let Err(e) = &r {
            self.core.health.fail(SourceState::Ended, e.to_string());
        }
        r
    }
    fn stream_id(&self) -> &StreamId {
        &self.settings.stream
    }
    fn stats(&self) -> SourceStats {
        CudaFileSource::stats(self)
    }
    super::core_accessors!();
    fn frame_rate(&self) -> (i32, i32) {
        self.demux.info().frame_rate
    }
}
