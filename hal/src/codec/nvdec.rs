//! The CUDA backend's decoder: NVDEC behind the same interface the sources use for
//! libavcodec ([`super::Decoding`]). Packets from libavformat, as Annex-B
//! ([`super::annexb::HwStream`]), go to NVDEC; each decoded picture leaves in a device surface
//! ([`Frame::device`]) attached to a pooled host surface that the pipeline downloads into
//! once, after the stages that work on the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_cuda::nvdec::{Codec, Decoded, Decoder};
use aegis_cuda::{CudaError, Gpu};
use ffmpeg_next as ff;

use super::annexb::{HwCodec, HwStream};
use super::{CodecError, DecodeStats};
use crate::frame::{DeviceSurface, Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// Largest coded side NVDEC takes per codec (the H100/H200 and Orin limits).
fn max_side(codec: Codec) -> usize {
    match codec {
        Codec::H264 => 4096,
        Codec::Hevc => 8192,
    }
}

/// NVDEC pictures waiting on the decoder before the first is shown: lets decoding and the
/// copy out overlap (NVIDIA's advice for throughput; +2 frames of latency).
const DISPLAY_DELAY: u32 = 2;

/// The NVDEC codec for a stream libavcodec calls `codec`, if NVDEC decodes it here
/// (8-bit 4:2:0 H.264 and H.265).
pub fn nvdec_codec(codec: ff::codec::Id) -> Option<Codec> {
    match codec {
        ff::codec::Id::H264 => Some(Codec::H264),
        ff::codec::Id::HEVC => Some(Codec::Hevc),
        _ => None,
    }
}

fn hw(codec: HwCodec) -> Codec {
    match codec {
        HwCodec::H264 => Codec::H264,
        HwCodec::Hevc => Codec::Hevc,
    }
}

/// NVDEC decoding into device surfaces.
pub(crate) struct GpuDecoder {
    decoder: Decoder,
    gpu: Arc<Gpu>,
    input: HwStream,
    stream: StreamId,
    next_seq: u64,
    /// A decoded picture waiting for a host pool of its size.
    pending: Option<Decoded>,
    stats: DecodeStats,
}

impl GpuDecoder {
    /// An NVDEC decoder for a demuxed stream on `gpu` (one [`Gpu::fork`] per stream: the
    /// stages queue their kernels on its CUDA stream). Fails for codecs NVDEC does not take
    /// here or when libnvcuvid is missing; the caller then decodes on the CPU.
    pub(crate) fn open(
        params: &ff::codec::Parameters,
        time_base: ff::Rational,
        frame_us: i64,
        stream: StreamId,
        gpu: Arc<Gpu>,
        pool_frames: usize,
    ) -> Result<Self, CudaError> {
        let input = HwStream::probe(params, time_base, frame_us, |c| max_side(hw(c)))
            .map_err(|why| CudaError::Size(format!("NVDEC {why}")))?;
        let codec = hw(input.codec);
        let decoder = Decoder::new(&gpu, codec, pool_frames.max(2) + 4, DISPLAY_DELAY)?;
        Ok(GpuDecoder {
            decoder,
            gpu,
            input,
            stream,
            next_seq: 0,
            pending: None,
            stats: DecodeStats::default(),
        })
    }

    /// The GPU the frames are on.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Counters (`frames`: pictures delivered; `errors`: damaged packets and pictures lost
    /// for want of a surface).
    pub(crate) fn stats(&self) -> DecodeStats {
        let d = self.decoder.stats();
        DecodeStats {
            frames: d.delivered,
            errors: self.stats.errors + d.overrun + d.errors,
            ..self.stats
        }
    }

    /// Feeds one packet, waiting while the device pool is full (backpressure) unless
    /// `stopped` says the source is stopping.
    pub(crate) fn send(
        &mut self,
        pkt: &ff::Packet,
        stopped: &dyn Fn() -> bool,
    ) -> Result<(), CudaError> {
        let (annexb, pts) = match self.input.packet(pkt) {
            Ok(p) => p,
            Err(e) => {
                self.stats.errors += 1;
                tracing::debug!(stream = %self.stream, error = %e, "damaged packet skipped");
                return Ok(());
            }
        };
        self.stats.packets += 1;
        while !self.decoder.feed(annexb, Some(pts))? {
            if stopped() {
                return Ok(());
            }
            if let Some(p) = self.decoder.pool() {
                p.wait_available(p.capacity / 2, Duration::from_millis(20));
            }
        }
        // Only now: the parameter sets went in with this packet.
        self.input.headers_sent();
        Ok(())
    }

    /// End of stream: the pictures NVDEC still holds come out, all at once, so first every
    /// surface must be back from the pipeline (or the source stopping).
    pub(crate) fn send_eof(&mut self, stopped: &dyn Fn() -> bool) -> Result<(), CudaError> {
        if let Some(p) = self.decoder.pool() {
            while !p.wait_available(p.capacity, Duration::from_millis(20)) {
                if stopped() {
                    return Ok(());
                }
            }
        }
        self.decoder.flush()
    }

    /// After a seek (loop): parameter sets go first again; timestamps restart.
    pub(crate) fn reset(&mut self) {
        self.input.reset();
    }

    /// Layout of the picture waiting for a pool of its size.
    pub(crate) fn pending_layout(&self) -> Option<FrameLayout> {
        self.pending
            .as_ref()
            .map(|d| FrameLayout::new(PixelFormat::Nv12, d.frame.width, d.frame.height))
    }

    /// The next decoded frame on a surface of `pool` (waiting for one: backpressure), or
    /// `Ok(None)` when NVDEC has none ready. A picture of another size than the pool's is
    /// kept and reported as [`CodecError::Geometry`]: the source makes a pool of
    /// [`GpuDecoder::pending_layout`] and asks again.
    pub(crate) fn receive(
        &mut self,
        pool: &SurfacePool,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, CodecError> {
        let Some(decoded) = self.pending.take().or_else(|| self.decoder.next_frame()) else {
            return Ok(None);
        };
        let layout = pool.layout();
        let (w, h) = (decoded.frame.width, decoded.frame.height);
        if (layout.format, layout.width, layout.height) != (PixelFormat::Nv12, w, h) {
            self.pending = Some(decoded);
            return Err(CodecError::Geometry {
                got_w: w,
                got_h: h,
                want_w: layout.width,
                want_h: layout.height,
            });
        }
        let (pts, copies) = (decoded.pts, decoded.copies);
        let device = DeviceSurface::new(decoded.frame, decoded.pool, self.gpu.clone());
        let surface = pool.acquire()?;
        let raw = self.input.picture_pts(pts);
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(Frame {
            stream: self.stream.clone(),
            seq,
            pts_us: raw + pts_offset_us,
            duration_us: self.input.frame_us(),
            layout,
            surface,
            // As counted by the NVDEC decoder (its picture → the pooled device surface);
            // `Frame::to_host` counts the download.
            copies,
            meta: FrameMeta::new(Instant::now()),
            device: Some(device),
        }))
    }
}
