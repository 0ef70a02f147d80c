//! An in-process stand-in for r36's NVDEC/NVENC V4L2 devices, at ioctl granularity.
//!
//! It follows the call sequence of r36's `00_video_decode` / `01_video_encode` samples and
//! the rules `v4l2_nv_extensions.h` states, and refuses what the driver (or vb2 under it)
//! refuses: EINVAL for calls out of order or with bad indices/fds, EBUSY for format or
//! buffer changes while buffers exist or a plane streams. The decoder side emits
//! `V4L2_EVENT_RESOLUTION_CHANGE` after the first bitstream buffer and can change resolution
//! mid-stream; "decoded" capture buffers carry a marker (the access unit's timestamp) in
//! their memory (memfds, so the fds are real); end of stream is an empty capture buffer.
//! Faults: any named ioctl can fail once with an errno, and the device can disappear
//! (ENODEV from then on).

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use aegis_jetson::m2m::{Device, Errno, Request, sys};

const OUT: u32 = sys::BUF_TYPE_VIDEO_OUTPUT_MPLANE;
const CAP: u32 = sys::BUF_TYPE_VIDEO_CAPTURE_MPLANE;
const MIN_CAPTURE: i32 = 3;

/// Which device the stand-in plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Decoder,
    Encoder,
}

/// Faults and observations shared with the test while the codec owns the device.
#[derive(Default)]
pub struct Shared {
    /// Every ioctl name, in order.
    pub calls: Vec<&'static str>,
    /// The next call of this ioctl fails with this errno.
    pub fail_next: Option<(&'static str, i32)>,
    /// The device is gone: every call fails with ENODEV.
    pub gone: bool,
    /// Refusals the stand-in made (ioctl, errno, why), for diagnosing tests.
    pub refusals: Vec<(&'static str, i32, String)>,
    /// Controls set, in order.
    pub controls: Vec<(u32, i32)>,
    /// Decoder: the bitstream of every access unit queued, in order.
    pub units: Vec<Vec<u8>>,
}

#[derive(Default)]
struct PlaneState {
    fmt_set: bool,
    memory: u32,
    bufs: Vec<Buf>,
    streaming: bool,
    /// Indices queued by the application, waiting to be used.
    queued: VecDeque<u32>,
    /// Indices done by the device: (index, bytesused, timestamp us, flags).
    done: VecDeque<(u32, u32, u64, u32)>,
    sizeimage: u32,
}

struct Buf {
    /// MMAP memory, or the DMA-buf last queued (a dup of the application's fd).
    mem: Option<File>,
    queued: bool,
    dequeued_by_app: bool,
}

enum Pending {
    /// An access unit (decoder) or a frame (encoder: with its output buffer's index and
    /// bytes, which the stand-in holds until it has encoded the frame).
    Unit(u64, Option<(u32, u32)>),
    Eos,
}

pub struct StandIn {
    role: Role,
    pub shared: Arc<Mutex<Shared>>,
    out: PlaneState,
    cap: PlaneState,
    subscribed: Vec<u32>,
    events: VecDeque<u32>,
    /// Stream resolution (decoder), or configured size (encoder).
    size: (u32, u32),
    res_known: bool,
    first_event_sent: bool,
    awaiting_reconfig: bool,
    /// (after this many decoded frames, new width, new height)
    res_changes: VecDeque<(u32, u32, u32)>,
    pending: VecDeque<Pending>,
    produced: u32,
    last_on_eagain: bool,
    dpb_disabled: bool,
    // Encoder
    idr_interval: u32,
    force_idr: bool,
    key_frames: BTreeMap<u32, bool>,
    /// Frames the encoder holds before it encodes the oldest (a hardware encoder's
    /// lookahead): their buffers are not given back until then.
    encoder_latency: usize,
    /// The encoder works only while the application waits on it (asynchronous hardware),
    /// not as soon as a buffer is queued.
    encode_in_wait: bool,
    in_wait: bool,
    /// Decoder: a bitstream buffer is given back only once its picture is decoded (a
    /// decoder whose capture buffers are all taken stops reading its input, as hardware
    /// does), not as soon as it is queued.
    hold_input: bool,
    /// Decoder: pictures come out in a display order unlike the decode order.
    reorder: bool,
    /// Encoder: SPS/PPS (Annex-B) put before every key packet, as Orin's encoder does with
    /// `INSERT_SPS_PPS_AT_IDR`.
    parameter_sets: Vec<u8>,
    swap_pair: bool,
}

impl StandIn {
    pub fn new(role: Role) -> StandIn {
        StandIn {
            role,
            shared: Arc::new(Mutex::new(Shared::default())),
            out: PlaneState::default(),
            cap: PlaneState::default(),
            subscribed: Vec::new(),
            events: VecDeque::new(),
            size: (1920, 1080),
            res_known: false,
            first_event_sent: false,
            awaiting_reconfig: false,
            res_changes: VecDeque::new(),
            pending: VecDeque::new(),
            produced: 0,
            last_on_eagain: false,
            dpb_disabled: false,
            idr_interval: 30,
            force_idr: false,
            key_frames: BTreeMap::new(),
            encoder_latency: 0,
            encode_in_wait: false,
            in_wait: false,
            hold_input: false,
            reorder: false,
            parameter_sets: Vec::new(),
            swap_pair: true,
        }
    }

    /// Encoder: key packets begin with these parameter sets (Annex-B).
    pub fn with_parameter_sets(mut self, sps_pps: Vec<u8>) -> StandIn {
        self.parameter_sets = sps_pps;
        self
    }

    /// Decoder: pictures leave in pairs swapped (1, 0, 3, 2, ...), as B-frames make a
    /// display order unlike the decode order. With `with_held_input` the decoder needs at
    /// least 2 bitstream buffers (a unit waits for the next before its picture comes out).
    pub fn with_reordering(mut self) -> StandIn {
        self.reorder = true;
        self
    }

    /// Decoder: bitstream buffers come back only once decoded (see `hold_input`).
    pub fn with_held_input(mut self) -> StandIn {
        self.hold_input = true;
        self
    }

    /// Encoder: encodes only inside `wait` (as asynchronous hardware finishes later).
    pub fn with_encoding_in_wait(mut self) -> StandIn {
        self.encode_in_wait = true;
        self
    }

    /// Encoder: holds `frames` queued frames (and their buffers) before encoding the oldest,
    /// until the end of the stream is queued.
    pub fn with_encoder_latency(mut self, frames: usize) -> StandIn {
        self.encoder_latency = frames;
        self
    }

    /// Decoder: the stream's first resolution.
    pub fn with_stream_size(mut self, w: u32, h: u32) -> StandIn {
        self.size = (w, h);
        self
    }

    /// Decoder: after `frames` decoded pictures the stream switches to `w`×`h`.
    pub fn with_resolution_change(mut self, frames: u32, w: u32, h: u32) -> StandIn {
        self.res_changes.push_back((frames, w, h));
        self
    }

    fn refuse(&self, ioctl: &'static str, errno: i32, why: impl Into<String>) -> Result<(), Errno> {
        self.shared
            .lock()
            .unwrap()
            .refusals
            .push((ioctl, errno, why.into()));
        Err(Errno(errno))
    }

    fn plane(&mut self, type_: u32) -> Option<&mut PlaneState> {
        match type_ {
            OUT => Some(&mut self.out),
            CAP => Some(&mut self.cap),
            _ => None,
        }
    }

    fn coded(&self) -> (u32, u32) {
        (self.size.0.div_ceil(16) * 16, self.size.1.div_ceil(16) * 16)
    }

    fn nv12_sizes(&self) -> [(u32, u32); 2] {
        let (w, h) = self.coded();
        [(w, w * h), (w, w * h / 2)]
    }

    /// Decoder: turn pending access units into pictures while capture buffers allow.
    fn pump(&mut self) {
        if !self.cap.streaming || self.awaiting_reconfig {
            return;
        }
        if self.role == Role::Encoder && self.encode_in_wait && !self.in_wait {
            return;
        }
        while !self.pending.is_empty() {
            // A resolution change due now is made by the unit's own step below, first.
            let change_now = self
                .res_changes
                .front()
                .is_some_and(|&(after, ..)| self.produced == after);
            if self.role == Role::Decoder
                && self.reorder
                && !change_now
                && matches!(self.pending.front(), Some(Pending::Unit(..)))
            {
                // Display order: every other pair of access units comes out swapped, and a
                // unit waits for the next one (or the end) before it can come out at all.
                let next_is_unit = matches!(self.pending.get(1), Some(Pending::Unit(..)));
                let draining = self.pending.iter().any(|p| matches!(p, Pending::Eos));
                if !next_is_unit && !draining || self.cap.queued.is_empty() {
                    return;
                }
                if next_is_unit {
                    if self.swap_pair {
                        self.pending.swap(0, 1);
                    }
                    self.swap_pair = !self.swap_pair;
                }
            }
            let p = self.pending.front().expect("not empty");
            match p {
                Pending::Eos => {
                    let Some(i) = self.cap.queued.pop_front() else {
                        self.last_on_eagain = true;
                        self.pending.pop_front();
                        return;
                    };
                    self.cap.bufs[i as usize].queued = false;
                    self.cap.done.push_back((i, 0, 0, sys::BUF_FLAG_LAST));
                    self.pending.pop_front();
                }
                Pending::Unit(ts, input) => {
                    let (ts, input) = (*ts, *input);
                    let draining = self.pending.iter().any(|p| matches!(p, Pending::Eos));
                    if self.role == Role::Encoder
                        && !draining
                        && self.pending.len() <= self.encoder_latency
                    {
                        return;
                    }
                    if self.role == Role::Decoder
                        && let Some(&(after, w, h)) = self.res_changes.front()
                        && self.produced == after
                    {
                        self.res_changes.pop_front();
                        self.size = (w, h);
                        self.awaiting_reconfig = true;
                        self.events.push_back(sys::EVENT_RESOLUTION_CHANGE);
                        return;
                    }
                    let Some(i) = self.cap.queued.pop_front() else {
                        return;
                    };
                    self.pending.pop_front();
                    self.cap.bufs[i as usize].queued = false;
                    let (bytes, flags) = match self.role {
                        Role::Decoder => {
                            // The "picture": its timestamp as the first 8 bytes.
                            if let Some(mem) = &self.cap.bufs[i as usize].mem {
                                mem.write_at(&ts.to_le_bytes(), 0).unwrap();
                            }
                            if let Some((index, bytes)) = input {
                                self.out.done.push_back((index, bytes, ts, 0));
                            }
                            (self.nv12_sizes()[0].1, 0)
                        }
                        Role::Encoder => {
                            let key = self.force_idr
                                || self.produced.is_multiple_of(self.idr_interval.max(1));
                            self.force_idr = false;
                            let mut pkt = if key {
                                self.parameter_sets.clone()
                            } else {
                                Vec::new()
                            };
                            pkt.extend_from_slice(&[0, 0, 0, 1, if key { 0x65 } else { 0x41 }]);
                            pkt.extend_from_slice(&self.produced.to_le_bytes());
                            // The frame's first 8 luma bytes, read now (when a hardware
                            // encoder reads the buffer), then the buffer is given back.
                            if let Some((index, bytes)) = input {
                                let mut first = [0u8; 8];
                                if let Some(mem) = &self.out.bufs[index as usize].mem {
                                    mem.read_at(&mut first, 0).unwrap();
                                }
                                pkt.extend_from_slice(&first);
                                self.out.done.push_back((index, bytes, ts, 0));
                            }
                            if let Some(mem) = &self.cap.bufs[i as usize].mem {
                                mem.write_at(&pkt, 0).unwrap();
                            }
                            self.key_frames.insert(i, key);
                            (pkt.len() as u32, 0)
                        }
                    };
                    self.produced += 1;
                    self.cap.done.push_back((i, bytes, ts, flags));
                }
            }
        }
    }

    fn handle(&mut self, request: Request<'_>) -> Result<(), Errno> {
        let name = request.name();
        match request {
            Request::QueryCap(c) => {
                c.capabilities = sys::CAP_VIDEO_M2M_MPLANE | sys::CAP_DEVICE_CAPS;
                c.device_caps = sys::CAP_VIDEO_M2M_MPLANE;
                c.driver[..6].copy_from_slice(b"tegra\0");
                Ok(())
            }
            Request::SubscribeEvent(s) => {
                self.subscribed.push(s.type_);
                Ok(())
            }
            Request::SetFormat(f) => self.set_format(name, f),
            Request::GetFormat(f) => {
                if f.type_ != CAP || self.role != Role::Decoder {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "G_FMT only modelled for the decoder capture plane",
                    );
                }
                if !self.res_known {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "capture format before the resolution is known",
                    );
                }
                let mut pix = f.pix_mp();
                let (w, h) = self.coded();
                pix.width = w;
                pix.height = h;
                pix.pixelformat = sys::PIX_FMT_NV12M;
                pix.num_planes = 2;
                let sizes = self.nv12_sizes();
                let mut plane_fmt = pix.plane_fmt;
                for (pf, (bpl, size)) in plane_fmt.iter_mut().zip(sizes) {
                    pf.bytesperline = bpl;
                    pf.sizeimage = size;
                }
                pix.plane_fmt = plane_fmt;
                f.set_pix_mp(pix);
                Ok(())
            }
            Request::GetCrop(c) => {
                if !self.res_known {
                    return self.refuse(name, libc::EINVAL, "crop before the resolution is known");
                }
                c.c = sys::Rect {
                    left: 0,
                    top: 0,
                    width: self.size.0,
                    height: self.size.1,
                };
                Ok(())
            }
            Request::GetControl(c) => {
                if c.id != sys::CID_MIN_BUFFERS_FOR_CAPTURE || !self.res_known {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "MIN_BUFFERS_FOR_CAPTURE before resolution change",
                    );
                }
                c.value = MIN_CAPTURE;
                Ok(())
            }
            Request::SetControls(_class, values) => self.set_controls(name, values),
            Request::SetParm(p) => {
                if p.type_ != OUT || !self.out.fmt_set || p.timeperframe.numerator == 0 {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "S_PARM needs the output format and a frame interval",
                    );
                }
                Ok(())
            }
            Request::GetParm(_) => {
                self.refuse(name, libc::ENOTTY, "the codecs do not read S_PARM back")
            }
            Request::RequestBuffers(r) => self.reqbufs(name, r),
            Request::QueryBuffer(b, planes) => {
                let Some(pl) = self.plane(b.type_) else {
                    return Err(Errno(libc::EINVAL));
                };
                let size = pl.sizeimage;
                if b.index as usize >= pl.bufs.len()
                    || pl.memory != sys::MEMORY_MMAP
                    || planes.is_empty()
                {
                    return self.refuse(name, libc::EINVAL, "QUERYBUF index/memory");
                }
                planes[0].length = size;
                planes[0].m = 0;
                Ok(())
            }
            Request::ExportBuffer(e) => {
                let Some(pl) = self.plane(e.type_) else {
                    return Err(Errno(libc::EINVAL));
                };
                let Some(mem) = pl.bufs.get(e.index as usize).and_then(|b| b.mem.as_ref()) else {
                    return self.refuse(name, libc::EINVAL, "EXPBUF of no MMAP buffer");
                };
                e.fd = mem.try_clone().unwrap().into_raw_fd();
                Ok(())
            }
            Request::StreamOn(t) => {
                let Some(pl) = self.plane(t) else {
                    return Err(Errno(libc::EINVAL));
                };
                if pl.bufs.is_empty() {
                    return self.refuse(name, libc::EINVAL, "STREAMON without buffers");
                }
                pl.streaming = true;
                if t == CAP {
                    self.awaiting_reconfig = false;
                }
                self.pump();
                Ok(())
            }
            Request::StreamOff(t) => {
                let Some(pl) = self.plane(t) else {
                    return Err(Errno(libc::EINVAL));
                };
                pl.streaming = false;
                pl.queued.clear();
                pl.done.clear();
                for b in &mut pl.bufs {
                    b.queued = false;
                }
                Ok(())
            }
            Request::QueueBuffer(b, planes) => self.qbuf(name, b, planes),
            Request::DequeueBuffer(b, planes) => {
                let last = self.last_on_eagain;
                let Some(pl) = self.plane(b.type_) else {
                    return Err(Errno(libc::EINVAL));
                };
                if !pl.streaming {
                    return self.refuse(name, libc::EINVAL, "DQBUF on a plane not streaming");
                }
                let Some((i, bytes, ts, flags)) = pl.done.pop_front() else {
                    if b.type_ == CAP && last {
                        b.flags |= sys::BUF_FLAG_LAST;
                    }
                    return Err(Errno(libc::EAGAIN));
                };
                pl.bufs[i as usize].dequeued_by_app = true;
                pl.bufs[i as usize].queued = false;
                b.index = i;
                b.flags = flags;
                b.set_timestamp_us(ts);
                if let Some(p) = planes.first_mut() {
                    p.bytesused = bytes;
                }
                Ok(())
            }
            Request::DequeueEvent(e) => match self.events.pop_front() {
                Some(t) => {
                    if t == sys::EVENT_RESOLUTION_CHANGE {
                        self.res_known = true;
                    }
                    e.type_ = t;
                    Ok(())
                }
                None => Err(Errno(libc::ENOENT)),
            },
            Request::DecoderCommand(_) => self.refuse(
                name,
                libc::ENOTTY,
                "NVIDIA's decoder drains on an empty buffer, not DECODER_CMD",
            ),
            Request::EncoderKeyFrame { index, key_frame } => {
                let held = self
                    .cap
                    .bufs
                    .get(index as usize)
                    .is_some_and(|b| b.dequeued_by_app && !b.queued);
                if self.role != Role::Encoder || !held {
                    return self.refuse(name, libc::EINVAL, "metadata of a buffer not dequeued");
                }
                *key_frame = self.key_frames.get(&index).copied().unwrap_or(false);
                Ok(())
            }
        }
    }

    fn set_format(&mut self, name: &'static str, f: &mut sys::Format) -> Result<(), Errno> {
        let pix = f.pix_mp();
        let codec_ok = pix.pixelformat == sys::PIX_FMT_H264 || pix.pixelformat == sys::PIX_FMT_H265;
        match (self.role, f.type_) {
            (Role::Decoder, OUT) | (Role::Encoder, CAP) => {
                let pl = if f.type_ == OUT { &self.out } else { &self.cap };
                if !pl.bufs.is_empty() {
                    return self.refuse(name, libc::EBUSY, "S_FMT with buffers allocated");
                }
                if !codec_ok || pix.num_planes != 1 || pix.plane_fmt[0].sizeimage == 0 {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "bitstream format must be H264/H265, 1 plane, sizeimage",
                    );
                }
                if self.role == Role::Encoder && (pix.width == 0 || pix.height == 0) {
                    return self.refuse(name, libc::EINVAL, "encoder capture format needs a size");
                }
                let size = pix.plane_fmt[0].sizeimage;
                let pl = if f.type_ == OUT {
                    &mut self.out
                } else {
                    &mut self.cap
                };
                pl.fmt_set = true;
                pl.sizeimage = size;
                if self.role == Role::Encoder {
                    self.size = (pix.width, pix.height);
                }
                Ok(())
            }
            (Role::Encoder, OUT) => {
                if !self.cap.fmt_set {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "encoder output format before capture format",
                    );
                }
                if !self.out.bufs.is_empty() {
                    return self.refuse(name, libc::EBUSY, "S_FMT with buffers allocated");
                }
                if pix.pixelformat != sys::PIX_FMT_NV12M
                    || pix.num_planes != 2
                    || (pix.width, pix.height) != self.size
                {
                    return self.refuse(
                        name,
                        libc::EINVAL,
                        "encoder input must be NV12M at the capture size",
                    );
                }
                self.out.fmt_set = true;
                Ok(())
            }
            _ => self.refuse(name, libc::EINVAL, "S_FMT on a plane the app does not set"),
        }
    }

    fn set_controls(
        &mut self,
        name: &'static str,
        values: &[aegis_jetson::m2m::CtrlValue],
    ) -> Result<(), Errno> {
        let both = match self.role {
            Role::Decoder => self.out.fmt_set,
            Role::Encoder => self.out.fmt_set && self.cap.fmt_set,
        };
        if !both {
            return self.refuse(name, libc::EINVAL, "controls before formats");
        }
        let buffers = !self.out.bufs.is_empty() || !self.cap.bufs.is_empty();
        for v in values {
            let runtime = matches!(
                v.id,
                sys::CID_MPEG_VIDEO_BITRATE
                    | sys::CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE
                    | sys::CID_MPEG_VIDEOENC_FORCE_IDR_FRAME
            ) || v.id == sys::CID_MPEG_VIDEO_DISABLE_COMPLETE_FRAME_INPUT;
            if buffers && !runtime {
                return self.refuse(
                    name,
                    libc::EBUSY,
                    format!("control {:#x} after REQBUFS", v.id),
                );
            }
            match (self.role, v.id) {
                (Role::Decoder, sys::CID_MPEG_VIDEO_DISABLE_DPB) => self.dpb_disabled = true,
                (Role::Decoder, sys::CID_MPEG_VIDEO_DISABLE_COMPLETE_FRAME_INPUT) => {}
                (Role::Encoder, sys::CID_MPEG_VIDEO_IDR_INTERVAL) => {
                    self.idr_interval = v.value.max(1) as u32
                }
                (Role::Encoder, sys::CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE) => {
                    self.force_idr = true
                }
                (
                    Role::Encoder,
                    sys::CID_MPEG_VIDEO_BITRATE
                    | sys::CID_MPEG_VIDEO_BITRATE_MODE
                    | sys::CID_MPEG_VIDEO_H264_PROFILE
                    | sys::CID_MPEG_VIDEO_H265_PROFILE
                    | sys::CID_MPEG_VIDEO_GOP_SIZE
                    | sys::CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR,
                ) => {}
                _ => {
                    return self.refuse(name, libc::EINVAL, format!("unknown control {:#x}", v.id));
                }
            }
            self.shared.lock().unwrap().controls.push((v.id, v.value));
        }
        Ok(())
    }

    fn reqbufs(&mut self, name: &'static str, r: &mut sys::RequestBuffers) -> Result<(), Errno> {
        let role = self.role;
        let res_known = self.res_known;
        let dec_cap_sizes = self.nv12_sizes();
        let Some(pl) = self.plane(r.type_) else {
            return Err(Errno(libc::EINVAL));
        };
        if pl.streaming {
            return self.refuse(name, libc::EBUSY, "REQBUFS while streaming");
        }
        if !(pl.fmt_set || role == Role::Decoder && r.type_ == CAP) {
            return self.refuse(name, libc::EINVAL, "REQBUFS before S_FMT");
        }
        if role == Role::Decoder && r.type_ == CAP && !res_known && r.count > 0 {
            return self.refuse(
                name,
                libc::EINVAL,
                "capture buffers before V4L2_EVENT_RESOLUTION_CHANGE",
            );
        }
        // Memory types per v4l2_nv_extensions.h's tables.
        let ok_memory = match (role, r.type_) {
            (Role::Decoder, OUT) => r.memory == sys::MEMORY_MMAP,
            (Role::Decoder, _) => r.memory == sys::MEMORY_MMAP || r.memory == sys::MEMORY_DMABUF,
            (Role::Encoder, OUT) => r.memory == sys::MEMORY_MMAP || r.memory == sys::MEMORY_DMABUF,
            (Role::Encoder, _) => r.memory == sys::MEMORY_MMAP,
        };
        if !ok_memory {
            return self.refuse(
                name,
                libc::EINVAL,
                format!("memory type {} on this plane", r.memory),
            );
        }
        let pl = self.plane(r.type_).unwrap();
        pl.bufs.clear();
        pl.queued.clear();
        pl.done.clear();
        pl.memory = r.memory;
        if role == Role::Decoder && r.type_ == CAP {
            pl.sizeimage = dec_cap_sizes[0].1 + dec_cap_sizes[1].1;
        }
        for _ in 0..r.count.min(32) {
            let mem = (r.memory == sys::MEMORY_MMAP).then(|| memfd(pl.sizeimage as u64));
            pl.bufs.push(Buf {
                mem,
                queued: false,
                dequeued_by_app: false,
            });
        }
        r.count = pl.bufs.len() as u32;
        Ok(())
    }

    fn qbuf(
        &mut self,
        name: &'static str,
        b: &mut sys::Buffer,
        planes: &mut [sys::Plane],
    ) -> Result<(), Errno> {
        let role = self.role;
        let want_planes = match (role, b.type_) {
            (Role::Decoder, OUT) | (Role::Encoder, CAP) => 1,
            _ => 2,
        };
        let Some(pl) = self.plane(b.type_) else {
            return Err(Errno(libc::EINVAL));
        };
        let memory = pl.memory;
        let size = pl.sizeimage;
        let Some(buf) = pl.bufs.get(b.index as usize) else {
            return self.refuse(
                name,
                libc::EINVAL,
                format!("index {} not allocated", b.index),
            );
        };
        if buf.queued {
            return self.refuse(
                name,
                libc::EINVAL,
                format!("index {} already queued", b.index),
            );
        }
        if b.memory != memory || planes.len() != want_planes {
            return self.refuse(name, libc::EINVAL, "QBUF memory type or plane count");
        }
        let mut dmabuf = None;
        if memory == sys::MEMORY_DMABUF {
            for p in planes.iter() {
                let fd = p.m_u32() as i32;
                // SAFETY: F_GETFD only inspects the descriptor table.
                if fd < 0 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
                    return self.refuse(name, libc::EINVAL, format!("DMABUF fd {fd} invalid"));
                }
            }
            // SAFETY: dup of a descriptor just checked to be open; the File owns the copy.
            dmabuf = Some(unsafe { File::from_raw_fd(libc::dup(planes[0].m_u32() as i32)) });
        }
        let bytes: u32 = planes.iter().map(|p| p.bytesused).sum();
        if memory == sys::MEMORY_MMAP && b.type_ == OUT && bytes > size {
            return self.refuse(name, libc::EINVAL, "bytesused beyond the buffer");
        }
        let pl = self.plane(b.type_).unwrap();
        if dmabuf.is_some() {
            pl.bufs[b.index as usize].mem = dmabuf;
        }
        if b.type_ == CAP {
            pl.bufs[b.index as usize].queued = true;
            pl.bufs[b.index as usize].dequeued_by_app = false;
            pl.queued.push_back(b.index);
            self.pump();
            return Ok(());
        }
        // Output plane: a decoder consumes the bitstream at once and gives the buffer back;
        // an encoder gives a frame's buffer back once it has encoded it (pump).
        pl.bufs[b.index as usize].queued = true;
        if role == Role::Decoder
            && bytes > 0
            && let Some(mem) = &pl.bufs[b.index as usize].mem
        {
            let mut unit = vec![0u8; bytes as usize];
            mem.read_at(&mut unit, 0).unwrap();
            self.shared.lock().unwrap().units.push(unit);
        }
        let held = bytes > 0 && (role == Role::Encoder || self.hold_input);
        let pl = self.plane(b.type_).unwrap();
        if !held {
            pl.done.push_back((b.index, bytes, b.timestamp_us(), 0));
        }
        if bytes == 0 {
            self.pending.push_back(Pending::Eos);
        } else {
            let input = held.then_some((b.index, bytes));
            self.pending
                .push_back(Pending::Unit(b.timestamp_us(), input));
            if role == Role::Decoder
                && !self.first_event_sent
                && self.subscribed.contains(&sys::EVENT_RESOLUTION_CHANGE)
            {
                self.first_event_sent = true;
                self.events.push_back(sys::EVENT_RESOLUTION_CHANGE);
            }
        }
        if role == Role::Encoder || self.res_known {
            self.pump();
        }
        Ok(())
    }
}

impl Device for StandIn {
    fn ioctl(&mut self, request: Request<'_>) -> Result<(), Errno> {
        let name = request.name();
        {
            let mut s = self.shared.lock().unwrap();
            s.calls.push(name);
            if s.gone {
                return Err(Errno(libc::ENODEV));
            }
            if let Some((n, e)) = s.fail_next
                && n == name
            {
                s.fail_next = None;
                return Err(Errno(e));
            }
        }
        self.handle(request)
    }

    fn wait(&mut self, _timeout_ms: i32) -> Result<(), Errno> {
        if self.shared.lock().unwrap().gone {
            return Err(Errno(libc::ENODEV));
        }
        if self.encode_in_wait {
            self.in_wait = true;
            self.pump();
            self.in_wait = false;
        }
        Ok(()) // otherwise the stand-in works synchronously: whatever can be ready is
    }
}

/// A memfd of `len` bytes.
pub fn memfd(len: u64) -> File {
    // SAFETY: a NUL-terminated name; flags are plain ints.
    let fd = unsafe { libc::memfd_create(c"standin".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh fd we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(len).unwrap();
    f
}

/// A memfd as an OwnedFd (a stand-in "NvBufSurface").
pub fn surface(len: u64) -> OwnedFd {
    OwnedFd::from(memfd(len))
}

/// Reads the first 8 bytes of a DMA-buf fd (the stand-in's picture marker).
pub fn marker(fd: i32) -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: pread into a local buffer on a descriptor the frame keeps open.
    let n = unsafe { libc::pread(fd, b.as_mut_ptr().cast(), 8, 0) };
    assert_eq!(n, 8, "pread of frame fd {fd}");
    u64::from_le_bytes(b)
}

/// Borrows the raw fd as an i32 (for asserting an fd is open).
pub fn is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only inspects the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}
