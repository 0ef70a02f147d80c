//! The encoder: r36 `01_video_encode`'s sequence as a non-blocking state machine.
//!
//! open: QUERYCAP → S_FMT(capture, codec, w×h, sizeimage) *before* S_FMT(output, NV12M,
//! w×h) (v4l2_nv_extensions.h: "the capture plane format be set before the output plane
//! format") → S_PARM(output, frame rate) → S_EXT_CTRLS (class MPEG; bitrate, rate control,
//! profile, GOP, IDR interval, SPS/PPS at IDR: all before REQBUFS) → REQBUFS(output, DMABUF)
//! → REQBUFS/QUERYBUF/EXPBUF/mmap(capture, MMAP) → STREAMON both → QBUF every capture
//! buffer. Key frames: the NVIDIA metadata control `V4L2_CID_MPEG_VIDEOENC_METADATA`
//! (`KeyFrame`), as the sample reads it, or `V4L2_BUF_FLAG_KEYFRAME`. End of stream: an
//! output buffer with `bytesused = 0`; the capture plane answers with an empty buffer.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::decoder::check_m2m;
use super::device::{CtrlValue, Device, Request};
use super::plane::{self, MappedPlane, call};
use super::{Codec, M2mError, sys};

const OUT: u32 = sys::BUF_TYPE_VIDEO_OUTPUT_MPLANE;
const CAP: u32 = sys::BUF_TYPE_VIDEO_CAPTURE_MPLANE;

/// Rate control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateControl {
    /// Constant bitrate.
    Cbr,
    /// Variable bitrate.
    Vbr,
}

/// H.264 profile (H.265 always uses Main).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum H264Profile {
    /// Baseline.
    Baseline,
    /// Main.
    Main,
    /// High.
    High,
}

/// Encoder settings.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    /// Output codec.
    pub codec: Codec,
    /// Frame width (even).
    pub width: u32,
    /// Frame height (even).
    pub height: u32,
    /// Frame rate numerator / denominator.
    pub fps: (u32, u32),
    /// Target bits per second.
    pub bitrate: u32,
    /// Rate control mode.
    pub rate_control: RateControl,
    /// H.264 profile.
    pub h264_profile: H264Profile,
    /// Frames between IDR frames (`V4L2_CID_MPEG_VIDEO_IDR_INTERVAL`).
    pub idr_interval: u32,
    /// Frames between I frames (`V4L2_CID_MPEG_VIDEO_GOP_SIZE`).
    pub iframe_interval: u32,
    /// Frame buffers in flight (output plane).
    pub input_buffers: u32,
    /// Packet buffers (capture plane).
    pub packet_buffers: u32,
    /// Bytes per packet buffer.
    pub packet_buffer_size: u32,
}

impl EncoderConfig {
    /// Defaults close to the sample's: CBR, High profile, 6 buffers each way, 2 MiB packets,
    /// an IDR (with SPS/PPS) every `fps` frames.
    pub fn new(codec: Codec, width: u32, height: u32, fps: u32, bitrate: u32) -> EncoderConfig {
        EncoderConfig {
            codec,
            width,
            height,
            fps: (fps, 1),
            bitrate,
            rate_control: RateControl::Cbr,
            h264_profile: H264Profile::High,
            idr_interval: fps,
            iframe_interval: fps,
            input_buffers: 6,
            packet_buffers: 6,
            packet_buffer_size: 2 << 20,
        }
    }
}

/// A frame to encode: NV12M planes as DMA-buf fds (an NvBufSurface's fd for both planes
/// on a Jetson) with the bytes used in each.
#[derive(Debug, Clone, Copy)]
pub struct InputFrame<'a> {
    /// (fd, bytes used) per plane: 2 for NV12M.
    pub planes: &'a [(BorrowedFd<'a>, u32)],
    /// Presentation timestamp.
    pub pts_us: u64,
}

/// An encoded access unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedPacket {
    /// Annex B bytes.
    pub data: Vec<u8>,
    /// Whether it is a key frame (IDR).
    pub key_frame: bool,
    /// Timestamp of the frame it encodes.
    pub pts_us: u64,
}

/// What [`Encoder::poll`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncoderEvent {
    /// A packet.
    Packet(EncodedPacket),
    /// Every packet has been delivered.
    EndOfStream,
}

/// A hardware encoder session.
pub struct Encoder<D: Device> {
    dev: D,
    packets: Vec<MappedPlane>,
    /// Per output index: dup'ed fds of the frame the driver is reading (kept open until the
    /// buffer comes back) and the frame's number (None for the end-of-stream buffer),
    /// `None` when free.
    in_flight: Vec<Option<(Vec<OwnedFd>, Option<u64>)>>,
    /// Frames queued so far (the next frame's number).
    queued: u64,
    /// Numbers of frames whose buffers came back since [`Encoder::reclaim`] last said.
    returned: Vec<u64>,
    last_fds: Option<Vec<OwnedFd>>,
    eos_sent: bool,
    eos_seen: bool,
}

const NV12M_PLANES: usize = 2;

impl<D: Device> Encoder<D> {
    /// Opens an encoding session on `dev`, streaming on both planes.
    pub fn open(mut dev: D, config: &EncoderConfig) -> Result<Encoder<D>, M2mError> {
        check_m2m(&mut dev)?;
        let mut cap_fmt = sys::Format::new(CAP);
        let mut pix = cap_fmt.pix_mp();
        pix.pixelformat = config.codec.fourcc();
        pix.width = config.width;
        pix.height = config.height;
        pix.num_planes = 1;
        pix.plane_fmt[0].sizeimage = config.packet_buffer_size;
        cap_fmt.set_pix_mp(pix);
        call(&mut dev, "capture plane", Request::SetFormat(&mut cap_fmt))?;
        let mut out_fmt = sys::Format::new(OUT);
        let mut pix = out_fmt.pix_mp();
        pix.pixelformat = sys::PIX_FMT_NV12M;
        pix.width = config.width;
        pix.height = config.height;
        pix.num_planes = NV12M_PLANES as u8;
        out_fmt.set_pix_mp(pix);
        call(&mut dev, "output plane", Request::SetFormat(&mut out_fmt))?;
        let mut parm = sys::StreamParm::frame_rate(OUT, config.fps.0, config.fps.1.max(1));
        call(&mut dev, "output plane", Request::SetParm(&mut parm))?;
        let profile = match config.codec {
            Codec::H264 => CtrlValue {
                id: sys::CID_MPEG_VIDEO_H264_PROFILE,
                value: match config.h264_profile {
                    H264Profile::Baseline => sys::MPEG_VIDEO_H264_PROFILE_BASELINE,
                    H264Profile::Main => sys::MPEG_VIDEO_H264_PROFILE_MAIN,
                    H264Profile::High => sys::MPEG_VIDEO_H264_PROFILE_HIGH,
                },
            },
            Codec::H265 => CtrlValue {
                id: sys::CID_MPEG_VIDEO_H265_PROFILE,
                value: sys::MPEG_VIDEO_H265_PROFILE_MAIN,
            },
        };
        let rc = match config.rate_control {
            RateControl::Cbr => sys::MPEG_VIDEO_BITRATE_MODE_CBR,
            RateControl::Vbr => sys::MPEG_VIDEO_BITRATE_MODE_VBR,
        };
        let ctrls = [
            CtrlValue {
                id: sys::CID_MPEG_VIDEO_BITRATE,
                value: clamp_i32(config.bitrate),
            },
            CtrlValue {
                id: sys::CID_MPEG_VIDEO_BITRATE_MODE,
                value: rc,
            },
            profile,
            CtrlValue {
                id: sys::CID_MPEG_VIDEO_GOP_SIZE,
                value: clamp_i32(config.iframe_interval),
            },
            CtrlValue {
                id: sys::CID_MPEG_VIDEO_IDR_INTERVAL,
                value: clamp_i32(config.idr_interval),
            },
            CtrlValue {
                id: sys::CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR,
                value: 1,
            },
        ];
        // One control per call, as NvVideoEncoder's setters do.
        for c in &ctrls {
            call(
                &mut dev,
                "device",
                Request::SetControls(sys::CTRL_CLASS_MPEG, std::slice::from_ref(c)),
            )?;
        }
        let inputs =
            plane::request_buffers(&mut dev, OUT, sys::MEMORY_DMABUF, config.input_buffers)?;
        let packets = plane::setup_mmap(&mut dev, CAP, config.packet_buffers)?;
        call(&mut dev, "output plane", Request::StreamOn(OUT))?;
        call(&mut dev, "capture plane", Request::StreamOn(CAP))?;
        let mut enc = Encoder {
            dev,
            packets,
            in_flight: (0..inputs).map(|_| None).collect(),
            queued: 0,
            returned: Vec::new(),
            last_fds: None,
            eos_sent: false,
            eos_seen: false,
        };
        for index in 0..enc.packets.len() as u32 {
            enc.queue_packet_buffer(index)?;
        }
        Ok(enc)
    }

    /// Queues a frame; with `force_idr` it is encoded as an IDR frame (the sample's
    /// `forceIDR()` control just before the buffer). `Ok(false)`: every frame buffer is
    /// still with the driver — poll and retry.
    pub fn try_encode(
        &mut self,
        frame: &InputFrame<'_>,
        force_idr: bool,
    ) -> Result<bool, M2mError> {
        if self.eos_sent {
            return Err(M2mError::AfterEos("frame"));
        }
        if frame.planes.len() != NV12M_PLANES {
            return Err(M2mError::PlaneCount {
                got: frame.planes.len(),
                want: NV12M_PLANES,
            });
        }
        let Some(index) = self.free_input()? else {
            return Ok(false);
        };
        if force_idr {
            self.force_idr()?;
        }
        let fds = frame
            .planes
            .iter()
            .map(|(fd, _)| fd.try_clone_to_owned())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| M2mError::Protocol {
                ioctl: "VIDIOC_QBUF",
                detail: format!("dup of frame fd: {e}"),
            })?;
        let bytes: Vec<u32> = frame.planes.iter().map(|(_, b)| *b).collect();
        self.queue_frame(index, fds, &bytes, frame.pts_us, Some(self.queued))?;
        self.queued += 1;
        Ok(true)
    }

    /// Asks for the next frame to be an IDR (runtime control; the sample's `forceIDR()`
    /// sets `V4L2_CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE` with no value).
    pub fn force_idr(&mut self) -> Result<(), M2mError> {
        let c = CtrlValue {
            id: sys::CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE,
            value: 0,
        };
        call(
            &mut self.dev,
            "device",
            Request::SetControls(sys::CTRL_CLASS_MPEG, &[c]),
        )
    }

    /// Changes the bitrate while encoding (runtime configurable per the header).
    pub fn set_bitrate(&mut self, bitrate: u32) -> Result<(), M2mError> {
        let c = CtrlValue {
            id: sys::CID_MPEG_VIDEO_BITRATE,
            value: clamp_i32(bitrate),
        };
        call(
            &mut self.dev,
            "device",
            Request::SetControls(sys::CTRL_CLASS_MPEG, &[c]),
        )
    }

    /// Signals end of stream with an empty frame buffer. `Ok(false)`: none free yet.
    pub fn try_finish(&mut self) -> Result<bool, M2mError> {
        if self.eos_sent {
            return Ok(true);
        }
        let Some(fds) = self.last_fds.as_ref() else {
            // Nothing was ever queued: there is nothing to drain.
            self.eos_sent = true;
            self.eos_seen = true;
            return Ok(true);
        };
        let fds = fds
            .iter()
            .map(|f| f.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| M2mError::Protocol {
                ioctl: "VIDIOC_QBUF",
                detail: format!("dup of frame fd: {e}"),
            })?;
        let Some(index) = self.free_input()? else {
            return Ok(false);
        };
        self.queue_frame(index, fds, &[0; NV12M_PLANES], 0, None)?;
        self.eos_sent = true;
        Ok(true)
    }

    /// The next packet, or the end of the stream, without blocking.
    pub fn poll(&mut self) -> Result<Option<EncoderEvent>, M2mError> {
        if self.eos_seen {
            return Ok(Some(EncoderEvent::EndOfStream));
        }
        let mut planes = [sys::Plane::default(); 1];
        let buf = match plane::dequeue(&mut self.dev, CAP, sys::MEMORY_MMAP, &mut planes)? {
            Ok(buf) => buf,
            Err(flags) if flags & sys::BUF_FLAG_LAST != 0 => {
                self.eos_seen = true;
                return Ok(Some(EncoderEvent::EndOfStream));
            }
            Err(_) => return Ok(None),
        };
        let Some(mapped) = self.packets.get(buf.index as usize) else {
            return Err(M2mError::Protocol {
                ioctl: "VIDIOC_DQBUF",
                detail: format!("capture index {} of {}", buf.index, self.packets.len()),
            });
        };
        let used = planes[0].bytesused as usize;
        if used == 0 {
            self.eos_seen = true;
            return Ok(Some(EncoderEvent::EndOfStream));
        }
        if used > mapped.len() {
            return Err(M2mError::Protocol {
                ioctl: "VIDIOC_DQBUF",
                detail: format!("{used} bytes used in a {}-byte packet buffer", mapped.len()),
            });
        }
        let data = mapped.read(used);
        let mut key_frame = false;
        call(
            &mut self.dev,
            "capture plane",
            Request::EncoderKeyFrame {
                index: buf.index,
                key_frame: &mut key_frame,
            },
        )?;
        key_frame |= buf.flags & sys::BUF_FLAG_KEYFRAME != 0;
        self.queue_packet_buffer(buf.index)?;
        Ok(Some(EncoderEvent::Packet(EncodedPacket {
            data,
            key_frame,
            pts_us: buf.timestamp_us(),
        })))
    }

    /// Blocks until the device may have something (see [`Device::wait`]).
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), M2mError> {
        self.dev
            .wait(timeout_ms)
            .map_err(|e| plane::classify("poll", "device", e))
    }

    /// Frame buffers of the output plane: how many frames the driver may hold at once.
    pub fn input_buffers(&self) -> usize {
        self.in_flight.len()
    }

    /// How many frames [`Encoder::try_encode`] has queued: the number the next frame gets
    /// (the first is 0).
    pub fn frames_queued(&self) -> u64 {
        self.queued
    }

    /// The numbers (see [`Encoder::frames_queued`]) of the frames the driver has finished
    /// reading since the last call, in the order their buffers came back: their memory may
    /// be reused. Until a frame is named here, the driver may still read it.
    pub fn reclaim(&mut self) -> Result<Vec<u64>, M2mError> {
        self.free_input()?;
        Ok(std::mem::take(&mut self.returned))
    }

    /// The device (for inspection in tests).
    pub fn device(&self) -> &D {
        &self.dev
    }

    fn free_input(&mut self) -> Result<Option<u32>, M2mError> {
        loop {
            let mut planes = [sys::Plane::default(); NV12M_PLANES];
            match plane::dequeue(&mut self.dev, OUT, sys::MEMORY_DMABUF, &mut planes)? {
                Ok(buf) => match self.in_flight.get_mut(buf.index as usize) {
                    Some(slot) => {
                        if let Some((_, Some(number))) = slot.take() {
                            self.returned.push(number);
                        }
                    }
                    None => {
                        return Err(M2mError::Protocol {
                            ioctl: "VIDIOC_DQBUF",
                            detail: format!(
                                "output index {} of {}",
                                buf.index,
                                self.in_flight.len()
                            ),
                        });
                    }
                },
                Err(_) => break,
            }
        }
        Ok(self
            .in_flight
            .iter()
            .position(Option::is_none)
            .map(|i| i as u32))
    }

    fn queue_frame(
        &mut self,
        index: u32,
        fds: Vec<OwnedFd>,
        bytes: &[u32],
        pts_us: u64,
        number: Option<u64>,
    ) -> Result<(), M2mError> {
        let mut buf = sys::Buffer::new(OUT, sys::MEMORY_DMABUF, index);
        buf.flags = sys::BUF_FLAG_TIMESTAMP_COPY;
        buf.set_timestamp_us(pts_us);
        let mut planes = [sys::Plane::default(); NV12M_PLANES];
        for ((p, fd), b) in planes.iter_mut().zip(&fds).zip(bytes) {
            p.set_fd(fd.as_fd().as_raw_fd());
            p.bytesused = *b;
        }
        // The copy for the end-of-stream buffer is made before the frame is queued: once
        // the driver has the frame, nothing may fail before it is recorded as in flight
        // (its memory must not be reused until the driver gives it back).
        let last = fds
            .iter()
            .map(|f| f.try_clone())
            .collect::<Result<_, _>>()
            .map_err(|e| M2mError::Protocol {
                ioctl: "VIDIOC_QBUF",
                detail: format!("dup of frame fd: {e}"),
            })?;
        call(
            &mut self.dev,
            "output plane",
            Request::QueueBuffer(&mut buf, &mut planes),
        )?;
        self.last_fds = Some(last);
        self.in_flight[index as usize] = Some((fds, number));
        Ok(())
    }

    fn queue_packet_buffer(&mut self, index: u32) -> Result<(), M2mError> {
        let mut buf = sys::Buffer::new(CAP, sys::MEMORY_MMAP, index);
        let mut planes = [sys::Plane::default(); 1];
        call(
            &mut self.dev,
            "capture plane",
            Request::QueueBuffer(&mut buf, &mut planes),
        )
    }
}

fn clamp_i32(v: u32) -> i32 {
    v.min(i32::MAX as u32) as i32
}

impl<D: Device> Drop for Encoder<D> {
    fn drop(&mut self) {
        let _ = plane::teardown(&mut self.dev, OUT, sys::MEMORY_DMABUF);
        self.packets.clear();
        let _ = plane::teardown(&mut self.dev, CAP, sys::MEMORY_MMAP);
    }
}
