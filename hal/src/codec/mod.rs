//! Video codecs of the CPU backend: libavcodec's H.264/H.265 decoders and libx264 (through
//! libavcodec) for encode, with libopenh264 as the fallback encoder when libavcodec was built
//! without x264.
//!
//! Decoders write straight into pooled surfaces (one copy out of libavcodec's picture);
//! encoders read from them (one copy into the encoder's picture). Both copies are counted
//! on the frame. Compressed packets are libav's own refcounted buffers and never surface
//! in the public API.

mod decode;
mod encode;
mod jpeg;

pub(crate) use decode::rescale_us as decode_rescale_us;
pub use decode::{DecodeStats, VideoDecoder};
pub(crate) use encode::ENCODER_TIME_BASE;
pub use encode::{EncoderSettings, VideoEncoder};
pub use jpeg::encode_jpeg;

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
}

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
