//! Orin's hardware video decoder and encoder: V4L2 memory-to-memory state machines.
//!
//! Orin has no Video Codec SDK: NVDEC and NVENC are reached only as V4L2 M2M devices,
//! through libv4l2 and NVIDIA's `libv4l2_nvvideocodec.so` plugin (docs/jetson-codecs.md
//! has the r36 sources this follows, call by call). This module is the call sequence of
//! r36's `00_video_decode` and `01_video_encode` samples as two state machines over a
//! [`Device`] — an ioctl-granular trait — so that the sequencing can be exercised without a
//! Jetson against a stand-in that refuses what the driver refuses.
//!
//! It does not parse bitstreams (the caller feeds whole access units, which is what
//! `V4L2_CID_MPEG_VIDEO_DISABLE_COMPLETE_FRAME_INPUT = 1` tells the decoder to accept in
//! any chunking), allocate NVMM surfaces (a [`SurfaceAllocator`] does: NvBufSurface on a
//! Jetson) or touch pixels: decoded frames leave as DMA-buf fds, encoded frames enter as
//! DMA-buf fds.

mod decoder;
pub mod device;
mod encoder;
mod plane;
pub mod sys;

pub use decoder::{
    CaptureBuffer, CaptureMemory, DecodedFrame, Decoder, DecoderConfig, DecoderEvent,
    SurfaceAllocator,
};
pub use device::{CtrlValue, Device, Errno, NodeDevice, OpenError, Request};
pub use encoder::{
    EncodedPacket, Encoder, EncoderConfig, EncoderEvent, H264Profile, InputFrame, RateControl,
};
pub use plane::FrameFormat;

/// The two codecs the pipeline uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// H.264 (`V4L2_PIX_FMT_H264`).
    H264,
    /// H.265 (NVIDIA's `V4L2_PIX_FMT_H265`).
    H265,
}

impl Codec {
    /// The V4L2 pixel format code the NVIDIA codecs use for it.
    pub fn fourcc(self) -> u32 {
        match self {
            Codec::H264 => sys::PIX_FMT_H264,
            Codec::H265 => sys::PIX_FMT_H265,
        }
    }
}

/// What went wrong in a codec call: the ioctl, the plane and the errno, or the state
/// machine's own refusal.
#[derive(Debug, thiserror::Error)]
pub enum M2mError {
    /// An ioctl failed.
    #[error("{ioctl} on the {plane} failed: {errno}")]
    Ioctl {
        /// The ioctl (`VIDIOC_QBUF` ...).
        ioctl: &'static str,
        /// `output plane`, `capture plane` or `device`.
        plane: &'static str,
        /// The errno it returned.
        errno: Errno,
    },
    /// The device went away (`ENODEV`): unplugged, driver unbound, or the node is gone.
    #[error("codec device gone during {ioctl} (ENODEV)")]
    Gone {
        /// The ioctl that found out.
        ioctl: &'static str,
    },
    /// `VIDIOC_QUERYCAP` says this is not a multi-planar M2M device.
    #[error("device is not a multi-planar memory-to-memory device (capabilities {0:#x})")]
    NotM2m(u32),
    /// An exported buffer could not be mapped.
    #[error("mmap of {plane} buffer {index} ({len} bytes) failed: {errno}")]
    Map {
        /// The plane.
        plane: &'static str,
        /// Buffer index.
        index: u32,
        /// Length asked.
        len: usize,
        /// Why.
        errno: Errno,
    },
    /// Input larger than a buffer of the plane.
    #[error("{what} of {size} bytes does not fit a {capacity}-byte buffer")]
    TooLarge {
        /// What was fed.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The buffer's size.
        capacity: usize,
    },
    /// The driver answered with something impossible (an index it never gave out, a plane
    /// count it never agreed to).
    #[error("driver answered {ioctl} with {detail}")]
    Protocol {
        /// The ioctl.
        ioctl: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The surface allocator failed.
    #[error("capture surface allocation ({count} × {width}x{height}) failed: {detail}")]
    Allocate {
        /// Buffers asked.
        count: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
        /// The allocator's message.
        detail: String,
    },
    /// Input after end of stream was signalled.
    #[error("{0} after end of stream")]
    AfterEos(&'static str),
    /// An input frame does not match the configured format.
    #[error("input frame has {got} planes, the output plane format has {want}")]
    PlaneCount {
        /// Planes given.
        got: usize,
        /// Planes the format has.
        want: usize,
    },
}
