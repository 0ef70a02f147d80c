//! The CUDA backend's decoder: NVDEC behind the same interface the sources use for
//! libavcodec ([`super::Decoding`]). Packets from libavformat (MP4's length-prefixed NAL
//! units become Annex-B, with the avcC/hvcC parameter sets sent first and after every
//! reset) go to NVDEC; each decoded picture leaves in a device surface
//! ([`Frame::device`]) attached to a pooled host surface that the pipeline downloads into
//! once, after the stages that work on the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_cuda::nvdec::{self, Codec, Decoded, Decoder};
use aegis_cuda::{CudaError, Gpu};
use ffmpeg_next as ff;

use super::{CodecError, DecodeStats, decode_rescale_us};
use crate::frame::{DeviceSurface, Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// The timestamp fed for packets that carry none; frames that come out with it get one
/// from the previous frame and the nominal duration (as the CPU decoder does).
const NO_PTS: i64 = i64::MIN;

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

/// How the packets reach NVDEC's Annex-B parser.
enum Framing {
    /// MP4/MKV: NAL units with `n`-byte length prefixes; parameter sets from the header.
    LengthPrefixed(usize),
    /// Raw, MPEG-TS and RTP streams: already Annex-B.
    AnnexB,
}

/// NVDEC decoding into device surfaces.
pub(crate) struct GpuDecoder {
    decoder: Decoder,
    gpu: Arc<Gpu>,
    framing: Framing,
    /// Parameter sets (Annex-B) sent before the first packet and after every reset.
    headers: Vec<u8>,
    headers_due: bool,
    annexb: Vec<u8>,
    time_base: ff::Rational,
    frame_us: i64,
    last_raw_pts_us: Option<i64>,
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
        let codec = nvdec_codec(params.id()).ok_or_else(|| {
            CudaError::Size(format!(
                "NVDEC decodes H.264 and H.265 here, not {:?}",
                params.id()
            ))
        })?;
        // SAFETY: `params` wraps a live AVCodecParameters; extradata is `extradata_size`
        // bytes (or null).
        let (extra, width, height, format) = unsafe {
            let p = &*params.as_ptr();
            let extra = if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            };
            (
                extra,
                p.width.max(0) as usize,
                p.height.max(0) as usize,
                p.format,
            )
        };
        // What NVDEC decodes here: 8-bit 4:2:0 within its size limit. Anything else goes to
        // the CPU decoder now rather than failing at the first sequence header.
        use ff::ffi::AVPixelFormat as P;
        let known_420 = [
            P::AV_PIX_FMT_NONE as i32,
            P::AV_PIX_FMT_YUV420P as i32,
            P::AV_PIX_FMT_YUVJ420P as i32,
            P::AV_PIX_FMT_NV12 as i32,
        ];
        if !known_420.contains(&format) {
            return Err(CudaError::Size(
                "NVDEC decodes 8-bit 4:2:0 here; this stream is another format".into(),
            ));
        }
        if width > max_side(codec) || height > max_side(codec) {
            return Err(CudaError::Size(format!(
                "{width}x{height} exceeds NVDEC's {0}x{0} for this codec",
                max_side(codec)
            )));
        }
        // MP4/MKV headers are length-prefixed records (avcC/hvcC); raw and TS streams carry
        // Annex-B parameter sets (start codes), or none.
        let annexb = extra.starts_with(&[0, 0, 1]) || extra.starts_with(&[0, 0, 0, 1]);
        let (headers, framing) = match (extra.is_empty() || annexb, codec) {
            (true, _) => Ok((extra, Framing::AnnexB)),
            (false, Codec::H264) => {
                nvdec::avcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))
            }
            (false, Codec::Hevc) => {
                nvdec::hvcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))
            }
        }
        .map_err(CudaError::Size)?;
        let decoder = Decoder::new(&gpu, codec, pool_frames.max(2) + 4, DISPLAY_DELAY)?;
        Ok(GpuDecoder {
            decoder,
            gpu,
            framing,
            headers,
            headers_due: true,
            annexb: Vec::new(),
            time_base,
            frame_us,
            last_raw_pts_us: None,
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
        self.annexb.clear();
        if self.headers_due {
            self.annexb.extend_from_slice(&self.headers);
        }
        let data = pkt.data().unwrap_or_default();
        match self.framing {
            Framing::LengthPrefixed(n) => {
                if let Err(e) = nvdec::avcc_to_annexb(data, n, &mut self.annexb) {
                    self.stats.errors += 1;
                    tracing::debug!(stream = %self.stream, error = %e, "damaged packet skipped");
                    return Ok(());
                }
            }
            Framing::AnnexB => self.annexb.extend_from_slice(data),
        }
        self.stats.packets += 1;
        let pts = pkt
            .pts()
            .or(pkt.dts())
            .map_or(NO_PTS, |p| decode_rescale_us(p, self.time_base));
        while !self.decoder.feed(&self.annexb, Some(pts))? {
            if stopped() {
                return Ok(());
            }
            if let Some(p) = self.decoder.pool() {
                p.wait_available(p.capacity / 2, Duration::from_millis(20));
            }
        }
        // Only now: the parameter sets went in with this packet.
        self.headers_due = false;
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
        self.headers_due = true;
        self.last_raw_pts_us = None;
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
        let raw = if pts == NO_PTS {
            self.last_raw_pts_us.map_or(0, |p| p + self.frame_us)
        } else {
            pts
        };
        self.last_raw_pts_us = Some(raw);
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(Frame {
            stream: self.stream.clone(),
            seq,
            pts_us: raw + pts_offset_us,
            duration_us: self.frame_us,
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
