//! Video codecs: libavcodec's decoders and libx264 (through libavcodec) for encode, with
//! libopenh264 as the fallback encoder when libavcodec was built without x264; NVDEC for the
//! CUDA backend ([`Decoding`] picks one per stream).
//!
//! Decoders write straight into pooled surfaces (one copy out of libavcodec's picture);
//! encoders read from them (one copy into the encoder's picture). Each copy is added to
//! [`Frame::copies`] where it is made, once it is made. Compressed packets are libav's own
//! refcounted buffers and never surface in the public API.

mod annexb;
mod decode;
mod encode;
mod jpeg;
mod nvdec;
mod nvmm;
mod nvmm_camera;
mod nvmm_encode;

pub(crate) use decode::rescale_us as decode_rescale_us;
pub use decode::{DecodeStats, VideoDecoder};
pub(crate) use encode::ENCODER_TIME_BASE;
pub use encode::{EncoderSettings, VideoEncoder};
pub use jpeg::encode_jpeg;
pub use nvdec::nvdec_codec;
pub use nvmm::{CameraNodes, KernelCameras, NvmmCodecs, OpenDevice};
pub(crate) use nvmm_camera::{CaptureOpenError, NvmmCapture};
pub use nvmm_encode::NvmmEncoder;

use std::sync::Arc;

use ffmpeg_next as ff;

use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// Errors of the codec layer; each names the codec and what it was asked to do.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// No decoder for this stream's codec in the loaded libavcodec.
    #[error("no decoder for codec {codec} in libavcodec")]
    NoDecoder {
        /// Codec name as libavcodec reports it.
        codec: String,
    },
    /// Neither libx264 nor libopenh264 is available.
    #[error(
        "no H.264 encoder in libavcodec (tried libx264, libopenh264): install a libavcodec built with one of them"
    )]
    NoEncoder,
    /// libavcodec refused to open the codec with these settings.
    #[error("opening {codec} failed: {source}")]
    Open {
        /// Codec name.
        codec: String,
        /// libav's error.
        source: ffmpeg_next::Error,
    },
    /// The decoder produced a pixel format the CPU path does not handle.
    #[error(
        "decoder produced pixel format {format:?}; the CPU path handles 8-bit 4:2:0 (yuv420p/yuvj420p/nv12)"
    )]
    UnsupportedPixelFormat {
        /// What the decoder produced.
        format: ffmpeg_next::format::Pixel,
    },
    /// Encoding a frame failed.
    #[error("{codec} failed to encode frame {seq} of stream {stream}: {source}")]
    Encode {
        /// Codec name.
        codec: &'static str,
        /// Stream id.
        stream: String,
        /// Frame sequence number.
        seq: u64,
        /// libav's error.
        source: ffmpeg_next::Error,
    },
    /// A frame's geometry does not match what the encoder was opened with.
    #[error("frame is {got_w}x{got_h} but the encoder was opened for {want_w}x{want_h}")]
    Geometry {
        /// Frame width.
        got_w: usize,
        /// Frame height.
        got_h: usize,
        /// Encoder width.
        want_w: usize,
        /// Encoder height.
        want_h: usize,
    },
    /// The surface pool was closed (shutdown) while the decoder waited for a surface.
    #[error(transparent)]
    PoolClosed(#[from] crate::pool::PoolClosed),
    /// A pixel copy failed (layout mismatch; a bug, reported rather than panicking).
    #[error("pixel copy failed: {0}")]
    Pixel(#[from] crate::pixel::PixelError),
    /// NVDEC (CUDA backend) failed.
    #[error("NVDEC: {0}")]
    Gpu(#[from] aegis_cuda::CudaError),
    /// Orin's hardware decoder, its NVMM surfaces or their CUDA mapping failed (`jetson`
    /// backend).
    #[error("NVMM decoder: {0}")]
    Nvmm(String),
    /// A USB camera captured into NVMM failed, or is gone (`jetson` backend).
    #[error("camera into NVMM: {0}")]
    Camera(String),
}

/// A source's decoder: libavcodec into host surfaces, or NVDEC into device surfaces (CUDA
/// backend). Sources drive both the same way: send packets, receive pooled frames.
pub(crate) enum Decoding {
    /// libavcodec (every codec the container accepts).
    Cpu(VideoDecoder),
    /// NVDEC (H.264, H.265).
    Gpu(Box<nvdec::GpuDecoder>),
    /// Orin's V4L2 M2M decoder into NVMM, frames lent to the CUDA stages (H.264, H.265).
    Nvmm(Box<nvmm::NvmmDecoding>),
    /// A raw USB camera captured into NVMM on Orin: no packets, the live source polls it.
    Camera(Box<nvmm_camera::NvmmCapture>),
}

impl Decoding {
    /// On `gpu` when given and its decoder takes this stream (Orin's NVMM decoder when
    /// `gpu` carries one, else NVDEC), else libavcodec (`threads` = 0: one per core). Why
    /// the GPU was not used is logged.
    pub(crate) fn open(
        params: ff::codec::Parameters,
        time_base: ff::Rational,
        frame_us: i64,
        stream: StreamId,
        threads: usize,
        gpu: Option<&crate::backend::StreamGpu>,
        pool_frames: usize,
    ) -> Result<Decoding, CodecError> {
        if let Some(g) = gpu {
            let (name, opened) = match &g.nvmm {
                Some(codecs) => (
                    "the hardware decoder into NVMM",
                    nvmm::NvmmDecoding::open(
                        &params,
                        time_base,
                        frame_us,
                        stream.clone(),
                        codecs.clone(),
                        g.gpu.clone(),
                        pool_frames,
                    )
                    .map(|d| Decoding::Nvmm(Box::new(d))),
                ),
                None => (
                    "NVDEC",
                    nvdec::GpuDecoder::open(
                        &params,
                        time_base,
                        frame_us,
                        stream.clone(),
                        g.gpu.clone(),
                        pool_frames,
                    )
                    .map(|d| Decoding::Gpu(Box::new(d)))
                    .map_err(CodecError::from),
                ),
            };
            match opened {
                Ok(d) => {
                    tracing::info!(%stream, "decoding on {name}");
                    return Ok(d);
                }
                Err(e) => tracing::warn!(%stream, error = %e,
                    "{name} cannot decode this stream; decoding on the CPU"),
            }
        }
        VideoDecoder::open(params, time_base, frame_us, stream, threads).map(Decoding::Cpu)
    }

    /// Where it decodes, as the stream's status names it: `libavcodec`, `nvdec`, `nvmm`,
    /// or `nvmm-capture` (a raw camera captured into NVMM: nothing to decode).
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Decoding::Cpu(_) => "libavcodec",
            Decoding::Gpu(_) => "nvdec",
            Decoding::Nvmm(_) => "nvmm",
            Decoding::Camera(_) => "nvmm-capture",
        }
    }

    /// The layout the first frames will have (NVDEC writes NV12; libavcodec I420).
    pub(crate) fn layout(&self, width: usize, height: usize) -> FrameLayout {
        match self {
            Decoding::Cpu(_) => FrameLayout::new(PixelFormat::I420, width.max(2), height.max(2)),
            Decoding::Gpu(_) => FrameLayout::new(
                PixelFormat::Nv12,
                (width.max(2) + 1) & !1,
                (height.max(2) + 1) & !1,
            ),
            // The work surfaces' size: the visible size rounded down to even.
            Decoding::Nvmm(_) => {
                let even = |v: usize| aegis_jetson::lend::even(v.min(u32::MAX as usize) as u32);
                FrameLayout::new(
                    PixelFormat::Nv12,
                    even(width) as usize,
                    even(height) as usize,
                )
            }
            Decoding::Camera(c) => c.layout(),
        }
    }

    /// The GPU when decoding there (its host pools are page-locked for the download).
    pub(crate) fn gpu(&self) -> Option<&Arc<aegis_cuda::Gpu>> {
        match self {
            Decoding::Cpu(_) => None,
            Decoding::Gpu(d) => Some(d.gpu()),
            Decoding::Nvmm(d) => d.gpu(),
            Decoding::Camera(c) => Some(c.gpu()),
        }
    }

    /// Hands one packet over; a stopping source (`stopped`) does not wait for surfaces.
    pub(crate) fn send(
        &mut self,
        pkt: &ff::Packet,
        stopped: &dyn Fn() -> bool,
    ) -> Result<(), CodecError> {
        match self {
            Decoding::Cpu(d) => {
                d.send(pkt);
                Ok(())
            }
            Decoding::Gpu(d) => Ok(d.send(pkt, stopped)?),
            Decoding::Nvmm(d) => d.send(pkt, stopped),
            Decoding::Camera(_) => Err(no_packets()),
        }
    }

    /// End of stream: the decoder gives up the pictures it holds.
    pub(crate) fn send_eof(&mut self, stopped: &dyn Fn() -> bool) -> Result<(), CodecError> {
        match self {
            Decoding::Cpu(d) => {
                d.send_eof();
                Ok(())
            }
            Decoding::Gpu(d) => Ok(d.send_eof(stopped)?),
            Decoding::Nvmm(d) => d.send_eof(stopped),
            Decoding::Camera(_) => Err(no_packets()),
        }
    }

    /// After a seek.
    pub(crate) fn reset(&mut self) {
        match self {
            Decoding::Cpu(d) => d.reset(),
            Decoding::Gpu(d) => d.reset(),
            Decoding::Nvmm(d) => d.reset(),
            Decoding::Camera(_) => {}
        }
    }

    /// The next frame in a surface of `pool`; [`CodecError::Geometry`] when the stream
    /// changed size (make a pool of [`Decoding::pending_layout`] and ask again).
    pub(crate) fn receive(
        &mut self,
        pool: &SurfacePool,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, CodecError> {
        match self {
            Decoding::Cpu(d) => d.receive(pool, pts_offset_us),
            Decoding::Gpu(d) => d.receive(pool, pts_offset_us),
            Decoding::Nvmm(d) => d.receive(pool, pts_offset_us),
            Decoding::Camera(c) => c.receive(pool, pts_offset_us),
        }
    }

    /// Layout of the frame waiting for a pool of its size.
    pub(crate) fn pending_layout(&self) -> Result<FrameLayout, CodecError> {
        match self {
            Decoding::Cpu(d) => d.pending_layout(),
            Decoding::Gpu(d) => d.pending_layout().ok_or(NO_PENDING),
            Decoding::Nvmm(d) => d.pending_layout().ok_or(NO_PENDING),
            Decoding::Camera(c) => Ok(c.layout()),
        }
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> DecodeStats {
        match self {
            Decoding::Cpu(d) => d.stats(),
            Decoding::Gpu(d) => d.stats(),
            Decoding::Nvmm(d) => d.stats(),
            Decoding::Camera(c) => c.stats(),
        }
    }
}

/// A camera captured into NVMM was handed a packet (a bug: reported, not a panic).
fn no_packets() -> CodecError {
    CodecError::Camera("it takes no packets".into())
}

/// `pending_layout` without a pending picture (a bug: reported rather than panicking).
const NO_PENDING: CodecError = CodecError::Geometry {
    got_w: 0,
    got_h: 0,
    want_w: 0,
    want_h: 0,
};

/// The H.264 encoder libavcodec offers (`libx264`, else `libopenh264`), if any.
pub fn h264_encoder_name() -> Option<&'static str> {
    crate::init();
    ["libx264", "libopenh264"]
        .into_iter()
        .find(|n| ffmpeg_next::encoder::find_by_name(n).is_some())
}

/// libav's "try again" (`EAGAIN`): needs more input, or no data yet on a non-blocking input.
pub(crate) fn is_again(e: &ffmpeg_next::Error) -> bool {
    matches!(e, ffmpeg_next::Error::Other { errno } if *errno == ffmpeg_next::util::error::EAGAIN)
}
