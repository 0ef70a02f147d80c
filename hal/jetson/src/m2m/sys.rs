//! The V4L2 uAPI structures, ioctl numbers and constants the codecs need, written by hand.
//!
//! Standard V4L2: from the kernel's `include/uapi/linux/videodev2.h` and `v4l2-controls.h`
//! as of Linux 6.1 (Debian's `linux-libc-dev` 6.1.187 for x86_64 and
//! `linux-libc-dev-arm64-cross` 6.1.4 for aarch64). Every size, offset and ioctl number
//! asserted below was printed by a C program compiled against those headers with `cc`
//! (x86_64) and `aarch64-linux-gnu-gcc -static` run under `qemu-aarch64-static` (aarch64);
//! both printed the same table (docs/jetson-codecs.md, "How the layouts were checked").
//!
//! NVIDIA additions: from `v4l2_nv_extensions.h` of the Jetson Multimedia API r36
//! (SPDX "2016-2024 NVIDIA CORPORATION & AFFILIATES"). Those control ids are
//! `V4L2_CID_MPEG_BASE + n`; the header is not on this machine, so they are written as
//! the header writes them and only their arithmetic is checked here.
//!
//! Only the layouts of 64-bit little-endian Linux (x86_64, aarch64) are supported: the
//! asserts fail the build anywhere else.

#![allow(missing_docs)] // field names are the kernel's; the kernel header documents them

use std::mem::{offset_of, size_of};

// ---------------------------------------------------------------------------------------
// ioctl numbers (asm-generic _IOC encoding, shared by x86_64 and aarch64)

const fn ioc(dir: u32, nr: u32, size: usize) -> u64 {
    ((dir as u64) << 30) | ((size as u64) << 16) | ((b'V' as u64) << 8) | nr as u64
}
const W: u32 = 1;
const R: u32 = 2;
const RW: u32 = 3;

pub const VIDIOC_QUERYCAP: u64 = ioc(R, 0, size_of::<Capability>());
pub const VIDIOC_G_FMT: u64 = ioc(RW, 4, size_of::<Format>());
pub const VIDIOC_S_FMT: u64 = ioc(RW, 5, size_of::<Format>());
pub const VIDIOC_REQBUFS: u64 = ioc(RW, 8, size_of::<RequestBuffers>());
pub const VIDIOC_QUERYBUF: u64 = ioc(RW, 9, size_of::<Buffer>());
pub const VIDIOC_QBUF: u64 = ioc(RW, 15, size_of::<Buffer>());
pub const VIDIOC_EXPBUF: u64 = ioc(RW, 16, size_of::<ExportBuffer>());
pub const VIDIOC_DQBUF: u64 = ioc(RW, 17, size_of::<Buffer>());
pub const VIDIOC_STREAMON: u64 = ioc(W, 18, size_of::<i32>());
pub const VIDIOC_STREAMOFF: u64 = ioc(W, 19, size_of::<i32>());
pub const VIDIOC_G_PARM: u64 = ioc(RW, 21, size_of::<StreamParm>());
pub const VIDIOC_S_PARM: u64 = ioc(RW, 22, size_of::<StreamParm>());
pub const VIDIOC_G_CTRL: u64 = ioc(RW, 27, size_of::<Control>());
pub const VIDIOC_G_CROP: u64 = ioc(RW, 59, size_of::<Crop>());
pub const VIDIOC_G_EXT_CTRLS: u64 = ioc(RW, 71, size_of::<ExtControls>());
pub const VIDIOC_S_EXT_CTRLS: u64 = ioc(RW, 72, size_of::<ExtControls>());
pub const VIDIOC_DQEVENT: u64 = ioc(R, 89, size_of::<Event>());
pub const VIDIOC_SUBSCRIBE_EVENT: u64 = ioc(W, 90, size_of::<EventSubscription>());
pub const VIDIOC_DECODER_CMD: u64 = ioc(RW, 96, size_of::<DecoderCmd>());

// The values `cc` printed for the 6.1 headers (x86_64 and aarch64 alike).
const _: () = {
    assert!(VIDIOC_QUERYCAP == 0x8068_5600);
    assert!(VIDIOC_G_FMT == 0xc0d0_5604);
    assert!(VIDIOC_S_FMT == 0xc0d0_5605);
    assert!(VIDIOC_REQBUFS == 0xc014_5608);
    assert!(VIDIOC_QUERYBUF == 0xc058_5609);
    assert!(VIDIOC_QBUF == 0xc058_560f);
    assert!(VIDIOC_EXPBUF == 0xc040_5610);
    assert!(VIDIOC_DQBUF == 0xc058_5611);
    assert!(VIDIOC_STREAMON == 0x4004_5612);
    assert!(VIDIOC_STREAMOFF == 0x4004_5613);
    assert!(VIDIOC_G_PARM == 0xc0cc_5615);
    assert!(VIDIOC_S_PARM == 0xc0cc_5616);
    assert!(VIDIOC_G_CTRL == 0xc008_561b);
    assert!(VIDIOC_G_CROP == 0xc014_563b);
    assert!(VIDIOC_G_EXT_CTRLS == 0xc020_5647);
    assert!(VIDIOC_S_EXT_CTRLS == 0xc020_5648);
    assert!(VIDIOC_DQEVENT == 0x8088_5659);
    assert!(VIDIOC_SUBSCRIBE_EVENT == 0x4020_565a);
    assert!(VIDIOC_DECODER_CMD == 0xc048_5660);
};

// ---------------------------------------------------------------------------------------
// Constants

/// Single-planar capture: what USB (UVC) cameras offer.
pub const BUF_TYPE_VIDEO_CAPTURE: u32 = 1;
pub const BUF_TYPE_VIDEO_CAPTURE_MPLANE: u32 = 9;
pub const BUF_TYPE_VIDEO_OUTPUT_MPLANE: u32 = 10;
pub const MEMORY_MMAP: u32 = 1;
pub const MEMORY_DMABUF: u32 = 4;

/// Whether buffers of `type_` carry a plane array (`m.planes`) rather than one buffer.
pub const fn is_multiplanar(type_: u32) -> bool {
    type_ == BUF_TYPE_VIDEO_CAPTURE_MPLANE || type_ == BUF_TYPE_VIDEO_OUTPUT_MPLANE
}
pub const CAP_VIDEO_M2M_MPLANE: u32 = 0x0000_4000;
pub const CAP_VIDEO_CAPTURE: u32 = 0x0000_0001;
pub const CAP_STREAMING: u32 = 0x0400_0000;
pub const CAP_DEVICE_CAPS: u32 = 0x8000_0000;
pub const BUF_FLAG_KEYFRAME: u32 = 0x0000_0008;
pub const BUF_FLAG_ERROR: u32 = 0x0000_0040;
pub const BUF_FLAG_TIMESTAMP_COPY: u32 = 0x0000_4000;
pub const BUF_FLAG_LAST: u32 = 0x0010_0000;
pub const BUF_FLAG_TIMESTAMP_MASK: u32 = 0x0000_e000;
pub const BUF_FLAG_TIMESTAMP_MONOTONIC: u32 = 0x0000_2000;
pub const FIELD_NONE: u32 = 1;
pub const QUANTIZATION_FULL_RANGE: u32 = 1;
pub const COLORSPACE_JPEG: u32 = 7;
pub const EVENT_EOS: u32 = 2;
/// NVIDIA's `V4L2_EVENT_RESOLUTION_CHANGE` (v4l2_nv_extensions.h: 5); the kernel has since
/// named the same number `V4L2_EVENT_SOURCE_CHANGE`.
pub const EVENT_RESOLUTION_CHANGE: u32 = 5;
pub const DEC_CMD_STOP: u32 = 1;

pub const fn fourcc(code: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*code)
}
pub const PIX_FMT_H264: u32 = fourcc(b"H264");
/// NVIDIA's H.265 code (v4l2_nv_extensions.h: `v4l2_fourcc('H', '2', '6', '5')`), not
/// the kernel's `V4L2_PIX_FMT_HEVC` ("HEVC").
pub const PIX_FMT_H265: u32 = fourcc(b"H265");
pub const PIX_FMT_NV12M: u32 = fourcc(b"NM12");
/// Packed 4:2:2, Y0 Cb Y1 Cr (most raw USB cameras).
pub const PIX_FMT_YUYV: u32 = fourcc(b"YUYV");
/// Packed 4:2:2, Cb Y0 Cr Y1.
pub const PIX_FMT_UYVY: u32 = fourcc(b"UYVY");
/// The kernel's `vicodec` software codec format (for the generic-V4L2 tests).
pub const PIX_FMT_FWHT: u32 = fourcc(b"FWHT");
const _: () = {
    assert!(PIX_FMT_H264 == 0x3436_3248);
    assert!(PIX_FMT_NV12M == 0x3231_4d4e);
    assert!(PIX_FMT_YUYV == 0x5659_5559);
    assert!(PIX_FMT_UYVY == 0x5956_5955);
    assert!(PIX_FMT_FWHT == 0x5448_5746);
};

pub const CTRL_CLASS_MPEG: u32 = 0x0099_0000;
pub const CID_MIN_BUFFERS_FOR_CAPTURE: u32 = 0x0098_0927;
pub const CID_MPEG_BASE: u32 = 0x0099_0900;
pub const CID_MPEG_VIDEO_GOP_SIZE: u32 = CID_MPEG_BASE + 203;
pub const CID_MPEG_VIDEO_BITRATE_MODE: u32 = CID_MPEG_BASE + 206;
pub const CID_MPEG_VIDEO_BITRATE: u32 = CID_MPEG_BASE + 207;
pub const CID_MPEG_VIDEO_H264_PROFILE: u32 = CID_MPEG_BASE + 363;
/// `V4L2_CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE` (`V4L2_CID_CODEC_MFC51_BASE + 3`): what
/// r36's `NvVideoEncoder::forceIDR()` sets.
pub const CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE: u32 = 0x0099_1103;
const _: () = {
    assert!(CID_MPEG_VIDEO_GOP_SIZE == 0x0099_09cb);
    assert!(CID_MPEG_VIDEO_BITRATE_MODE == 0x0099_09ce);
    assert!(CID_MPEG_VIDEO_BITRATE == 0x0099_09cf);
    assert!(CID_MPEG_VIDEO_H264_PROFILE == 0x0099_0a6b);
};

// NVIDIA controls (v4l2_nv_extensions.h, r36).
pub const CID_MPEG_VIDEO_H265_PROFILE: u32 = CID_MPEG_BASE + 513;
pub const CID_MPEG_VIDEO_IDR_INTERVAL: u32 = CID_MPEG_BASE + 514;
pub const CID_MPEG_VIDEO_DISABLE_COMPLETE_FRAME_INPUT: u32 = CID_MPEG_BASE + 515;
pub const CID_MPEG_VIDEO_DISABLE_DPB: u32 = CID_MPEG_BASE + 516;
pub const CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR: u32 = CID_MPEG_BASE + 535;
pub const CID_MPEG_VIDEOENC_METADATA: u32 = CID_MPEG_BASE + 536;
pub const CID_MPEG_VIDEO_DEVICE_POLL: u32 = CID_MPEG_BASE + 550;
pub const CID_MPEG_VIDEO_MAX_PERFORMANCE: u32 = CID_MPEG_BASE + 554;
pub const CID_MPEG_VIDEOENC_FORCE_IDR_FRAME: u32 = CID_MPEG_BASE + 567;

pub const MPEG_VIDEO_BITRATE_MODE_VBR: i32 = 0;
pub const MPEG_VIDEO_BITRATE_MODE_CBR: i32 = 1;
pub const MPEG_VIDEO_H264_PROFILE_BASELINE: i32 = 0;
pub const MPEG_VIDEO_H264_PROFILE_MAIN: i32 = 2;
pub const MPEG_VIDEO_H264_PROFILE_HIGH: i32 = 4;
pub const MPEG_VIDEO_H265_PROFILE_MAIN: i32 = 0;

// ---------------------------------------------------------------------------------------
// Structures

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Capability {
    pub driver: [u8; 16],
    pub card: [u8; 32],
    pub bus_info: [u8; 32],
    pub version: u32,
    pub capabilities: u32,
    pub device_caps: u32,
    pub reserved: [u32; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanePixFormat {
    pub sizeimage: u32,
    pub bytesperline: u32,
    pub reserved: [u16; 6],
}

#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PixFormatMplane {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub colorspace: u32,
    pub plane_fmt: [PlanePixFormat; 8],
    pub num_planes: u8,
    pub flags: u8,
    pub ycbcr_enc: u8,
    pub quantization: u8,
    pub xfer_func: u8,
    pub reserved: [u8; 7],
}

/// `struct v4l2_pix_format`: the single-planar member of `v4l2_format` (cameras);
/// `ycbcr_enc` is the union `{ycbcr_enc, hsv_enc}`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PixFormat {
    pub width: u32,
    pub height: u32,
    pub pixelformat: u32,
    pub field: u32,
    pub bytesperline: u32,
    pub sizeimage: u32,
    pub colorspace: u32,
    pub priv_: u32,
    pub flags: u32,
    pub ycbcr_enc: u32,
    pub quantization: u32,
    pub xfer_func: u32,
}

/// `struct v4l2_format`, its union viewed as the multi-planar member (what M2M codecs use)
/// or the single-planar one (cameras); `raw_data[200]` and the pointer-carrying
/// `v4l2_window` fix the union at 200 bytes, 8-aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Format {
    pub type_: u32,
    pub fmt: FormatUnion,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub union FormatUnion {
    pub pix_mp: PixFormatMplane,
    pub pix: PixFormat,
    pub raw_data: [u8; 200],
    _align: [u64; 25],
}

impl std::fmt::Debug for FormatUnion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FormatUnion")
    }
}

impl Format {
    /// A zeroed format of `type_`.
    pub fn new(type_: u32) -> Self {
        Format {
            type_,
            fmt: FormatUnion { raw_data: [0; 200] },
        }
    }
    /// The multi-planar view.
    pub fn pix_mp(&self) -> PixFormatMplane {
        // SAFETY: every bit pattern is a valid PixFormatMplane (integers only), and the
        // union is always fully initialised (constructed from raw_data).
        unsafe { self.fmt.pix_mp }
    }
    /// Replaces the multi-planar view.
    pub fn set_pix_mp(&mut self, pix: PixFormatMplane) {
        self.fmt.pix_mp = pix;
    }
    /// The single-planar view.
    pub fn pix(&self) -> PixFormat {
        // SAFETY: every bit pattern is a valid PixFormat (integers only), and the union is
        // always fully initialised (constructed from raw_data).
        unsafe { self.fmt.pix }
    }
    /// Replaces the single-planar view.
    pub fn set_pix(&mut self, pix: PixFormat) {
        self.fmt.pix = pix;
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RequestBuffers {
    pub count: u32,
    pub type_: u32,
    pub memory: u32,
    pub capabilities: u32,
    pub flags: u8,
    pub reserved: [u8; 3],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeval {
    pub tv_sec: i64,
    pub tv_usec: i64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Timecode {
    pub type_: u32,
    pub flags: u32,
    pub frames: u8,
    pub seconds: u8,
    pub minutes: u8,
    pub hours: u8,
    pub userbits: [u8; 4],
}

/// `struct v4l2_plane`; `m` is the union `{mem_offset, userptr, fd}` held as 64 bits
/// (`mem_offset` and `fd` are its low 32 bits on these little-endian targets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Plane {
    pub bytesused: u32,
    pub length: u32,
    pub m: u64,
    pub data_offset: u32,
    pub reserved: [u32; 11],
}

impl Plane {
    /// `m.mem_offset` / `m.fd`.
    pub fn m_u32(&self) -> u32 {
        self.m as u32
    }
    /// Sets `m.fd`.
    pub fn set_fd(&mut self, fd: i32) {
        self.m = fd as u32 as u64;
    }
}

/// `struct v4l2_buffer`; `m` holds `m.planes` (a pointer) for the multi-planar types.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Buffer {
    pub index: u32,
    pub type_: u32,
    pub bytesused: u32,
    pub flags: u32,
    pub field: u32,
    pub timestamp: Timeval,
    pub timecode: Timecode,
    pub sequence: u32,
    pub memory: u32,
    pub m: u64,
    pub length: u32,
    pub reserved2: u32,
    pub request_fd: i32,
}

impl Buffer {
    /// A zeroed buffer of `type_`/`memory`.
    pub fn new(type_: u32, memory: u32, index: u32) -> Self {
        Buffer {
            index,
            type_,
            bytesused: 0,
            flags: 0,
            field: 0,
            timestamp: Timeval::default(),
            timecode: Timecode::default(),
            sequence: 0,
            memory,
            m: 0,
            length: 0,
            reserved2: 0,
            request_fd: 0,
        }
    }
    /// The timestamp in microseconds.
    pub fn timestamp_us(&self) -> u64 {
        (self.timestamp.tv_sec as u64)
            .wrapping_mul(1_000_000)
            .wrapping_add(self.timestamp.tv_usec as u64)
    }
    /// Sets the timestamp from microseconds.
    pub fn set_timestamp_us(&mut self, us: u64) {
        self.timestamp = Timeval {
            tv_sec: (us / 1_000_000) as i64,
            tv_usec: (us % 1_000_000) as i64,
        };
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExportBuffer {
    pub type_: u32,
    pub index: u32,
    pub plane: u32,
    pub flags: u32,
    pub fd: i32,
    pub reserved: [u32; 11],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventSubscription {
    pub type_: u32,
    pub id: u32,
    pub flags: u32,
    pub reserved: [u32; 5],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub type_: u32,
    pub u: [u64; 8],
    pub pending: u32,
    pub sequence: u32,
    pub timestamp: [i64; 2],
    pub id: u32,
    pub reserved: [u32; 8],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Control {
    pub id: u32,
    pub value: i32,
}

/// `struct v4l2_ext_control` (packed in the kernel header); `value` is the 64-bit union
/// (`value`, `value64`, `string`, `ptr` ...): a 32-bit value sits in its low half.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ExtControl {
    pub id: u32,
    pub size: u32,
    pub reserved2: u32,
    pub value: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ExtControls {
    pub which: u32,
    pub count: u32,
    pub error_idx: u32,
    pub request_fd: i32,
    pub reserved: [u32; 1],
    pub controls: *mut ExtControl,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rect {
    pub left: i32,
    pub top: i32,
    pub width: u32,
    pub height: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Crop {
    pub type_: u32,
    pub c: Rect,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Fract {
    pub numerator: u32,
    pub denominator: u32,
}

/// `struct v4l2_streamparm` viewed as its `output` member (`v4l2_outputparm`, 40 bytes)
/// padded to the union's `raw_data[200]`. The `capture` member (`v4l2_captureparm`) has
/// the same layout (`capturemode` for `outputmode`, `readbuffers` for `writebuffers`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct StreamParm {
    pub type_: u32,
    pub capability: u32,
    pub outputmode: u32,
    pub timeperframe: Fract,
    pub extendedmode: u32,
    pub writebuffers: u32,
    pub reserved: [u32; 4],
    pub raw_rest: [u8; 160],
}

impl StreamParm {
    /// Frame interval `den/num` seconds on a plane of `type_`.
    pub fn frame_rate(type_: u32, num: u32, den: u32) -> Self {
        StreamParm {
            type_,
            capability: 0,
            outputmode: 0,
            timeperframe: Fract {
                numerator: den,
                denominator: num,
            },
            extendedmode: 0,
            writebuffers: 0,
            reserved: [0; 4],
            raw_rest: [0; 160],
        }
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DecoderCmd {
    pub cmd: u32,
    pub flags: u32,
    pub raw: [u32; 16],
}

/// NVIDIA `v4l2_ctrl_video_metadata` (r36: four pointers, `buffer_index`, `reserved[4]`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NvVideoMetadata {
    pub video_dec_header_error_metadata: *mut u8,
    pub video_dec_metadata: *mut u8,
    pub video_enc_metadata: *mut u8,
    pub video_enc_metadata_mv: *mut u8,
    pub buffer_index: u32,
    pub reserved: [u32; 4],
}

/// Room for NVIDIA's `v4l2_ctrl_videoenc_outputbuf_metadata` (r36: `KeyFrame` is its
/// first byte; the rest — RPS list, codec union, reserved words — is a few hundred bytes):
/// the library writes the whole structure, so the buffer is larger than it can be.
#[repr(C, align(8))]
pub struct NvEncOutputMetadata {
    pub bytes: [u8; 1024],
}

impl NvEncOutputMetadata {
    /// `KeyFrame`.
    pub fn key_frame(&self) -> bool {
        self.bytes[0] != 0
    }
}

/// NVIDIA `v4l2_ctrl_video_device_poll` (`__u16 req_events, resp_events`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NvDevicePoll {
    pub req_events: u16,
    pub resp_events: u16,
}

// Sizes and offsets `cc` printed for Linux 6.1 headers, x86_64 and aarch64 alike.
const _: () = {
    assert!(size_of::<Capability>() == 104);
    assert!(size_of::<Format>() == 208);
    assert!(offset_of!(Format, fmt) == 8);
    assert!(size_of::<PixFormatMplane>() == 192);
    assert!(size_of::<PixFormat>() == 48);
    assert!(offset_of!(PixFormat, bytesperline) == 16);
    assert!(offset_of!(PixFormat, quantization) == 40);
    assert!(offset_of!(PixFormatMplane, plane_fmt) == 20);
    assert!(offset_of!(PixFormatMplane, num_planes) == 180);
    assert!(offset_of!(PixFormatMplane, flags) == 181);
    assert!(size_of::<PlanePixFormat>() == 20);
    assert!(size_of::<RequestBuffers>() == 20);
    assert!(size_of::<Buffer>() == 88);
    assert!(offset_of!(Buffer, timestamp) == 24);
    assert!(offset_of!(Buffer, timecode) == 40);
    assert!(offset_of!(Buffer, sequence) == 56);
    assert!(offset_of!(Buffer, memory) == 60);
    assert!(offset_of!(Buffer, m) == 64);
    assert!(offset_of!(Buffer, length) == 72);
    assert!(offset_of!(Buffer, request_fd) == 80);
    assert!(size_of::<Plane>() == 64);
    assert!(offset_of!(Plane, m) == 8);
    assert!(offset_of!(Plane, data_offset) == 16);
    assert!(size_of::<EventSubscription>() == 32);
    assert!(size_of::<Event>() == 136);
    assert!(offset_of!(Event, u) == 8);
    assert!(offset_of!(Event, pending) == 72);
    assert!(offset_of!(Event, sequence) == 76);
    assert!(offset_of!(Event, timestamp) == 80);
    assert!(offset_of!(Event, id) == 96);
    assert!(size_of::<Control>() == 8);
    assert!(size_of::<ExtControl>() == 20);
    assert!(offset_of!(ExtControl, value) == 12);
    assert!(size_of::<ExtControls>() == 32);
    assert!(offset_of!(ExtControls, count) == 4);
    assert!(offset_of!(ExtControls, controls) == 24);
    assert!(size_of::<Crop>() == 20);
    assert!(size_of::<Rect>() == 16);
    assert!(size_of::<DecoderCmd>() == 72);
    assert!(size_of::<ExportBuffer>() == 64);
    assert!(size_of::<StreamParm>() == 204);
    // NVIDIA's metadata query struct: 4 pointers + 5 u32, padded to 8 (LP64).
    assert!(size_of::<NvVideoMetadata>() == 56);
    assert!(size_of::<NvDevicePoll>() == 4);
    // The layouts above are LP64 little-endian ones.
    assert!(size_of::<usize>() == 8);
    assert!(cfg!(target_endian = "little"));
};
