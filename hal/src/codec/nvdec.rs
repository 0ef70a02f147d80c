//! The CUDA backend's decoder: NVDEC behind the same interface the sources use for
//! libavcodec ([`super::Decoding`]). Packets from libavformat (MP4's length-prefixed NAL
//! units become Annex-B, with the avcC/hvcC parameter sets sent first and after every
//! reset) go to NVDEC; each decoded picture leaves in a device surface
//! ([`Frame::device`]) attached to a pooled host surface that the pipeline downloads into
//! once, after the stages that work on the device.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_cuda::nvdec::{self, Codec, Decoder};
use aegis_cuda::{CudaError, DeviceNv12, Gpu};
use ffmpeg_next as ff;

use super::{CodecError, DecodeStats, decode_rescale_us};
use crate::frame::{DeviceSurface, Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pool::SurfacePool;

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
    // Declared before `gpu`: the decoder must be destroyed while its GPU is alive.
    decoder: Decoder,
    gpu: Arc<Gpu>,
    framing: Framing,
    /// Parameter sets (Annex-B) sent before the first packet and after every reset.
    headers: Vec<u8>,
    headers_due: bool,
    annexb: Vec<u8>,
    time_base: ff::Rational,
    frame_us: i64,
    /// Some packet had no timestamp (raw Annex-B files): frames are numbered instead.
    untimed: bool,
    last_raw_pts_us: Option<i64>,
    stream: StreamId,
    next_seq: u64,
    /// A decoded picture waiting for a host pool of its size.
    pending: Option<(DeviceNv12, i64)>,
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
            untimed: false,
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
            errors: self.stats.errors + d.overrun,
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
        if std::mem::take(&mut self.headers_due) {
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
        let pts = pkt.pts().or(pkt.dts());
        self.untimed |= pts.is_none();
        let pts = pts.map(|p| decode_rescale_us(p, self.time_base));
        while !self.decoder.feed(&self.annexb, pts)? {
            if stopped() {
                return Ok(());
            }
            if let Some(p) = self.decoder.pool() {
                p.wait_available(p.capacity / 2, Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// End of stream: the pictures NVDEC still holds come out.
    pub(crate) fn send_eof(&mut self) -> Result<(), CudaError> {
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
            .map(|(f, _)| FrameLayout::new(PixelFormat::Nv12, f.width, f.height))
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
        let Some((nv12, pts)) = self.pending.take().or_else(|| self.decoder.next_frame()) else {
            return Ok(None);
        };
        let layout = pool.layout();
        if (layout.format, layout.width, layout.height)
            != (PixelFormat::Nv12, nv12.width, nv12.height)
        {
            let (got_w, got_h) = (nv12.width, nv12.height);
            self.pending = Some((nv12, pts));
            return Err(CodecError::Geometry {
                got_w,
                got_h,
                want_w: layout.width,
                want_h: layout.height,
            });
        }
        let device_pool = self.decoder.pool().expect("a decoded frame implies a pool");
        let device = DeviceSurface::new(nv12, device_pool, self.gpu.clone());
        let surface = pool.acquire()?;
        let raw = if self.untimed {
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
            // NVDEC's picture → the pooled device surface (a device copy); the download
            // adds the second.
            copies: 1,
            meta: FrameMeta::new(Instant::now()),
            device: Some(device),
        }))
    }
}
