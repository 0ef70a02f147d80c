//! An in-process stand-in for a USB (UVC) camera as V4L2 shows it, at ioctl granularity,
//! importing DMA-bufs as `uvcvideo` over videobuf2 does (`vb2_vmalloc` maps an imported
//! buffer and the driver copies each frame into it with the CPU).
//!
//! It refuses what uvcvideo and vb2 refuse: EINVAL for a wrong buffer type or memory, a bad
//! index, a buffer queued twice, a DMA-buf smaller than a frame (`sizeimage`) or a bad fd,
//! dequeueing while not streaming; EBUSY for format or buffer changes while buffers exist.
//! Like uvcvideo it computes `bytesperline` itself (width × 2) unless told to honour the
//! application's, and adjusts a format it does not offer to one it does.
//!
//! Time is virtual: the camera captures one frame per [`Device::wait`] (a poll that waited a
//! frame interval) or per [`Camera::tick`]. A frame finds the oldest queued buffer and is
//! written into it (a pattern [`sample`] gives, so a test can check every pixel that comes
//! out), or is dropped when none is queued, as a real camera drops it; its sequence number
//! advances either way. Faults: frames delivered damaged (`V4L2_BUF_FLAG_ERROR`) or short,
//! the camera unplugged after a number of frames (ENODEV from then on), one ioctl failing
//! once, and a driver without DMA-buf import.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use aegis_jetson::m2m::{Device, Errno, Request, sys};

const CAPTURE: u32 = sys::BUF_TYPE_VIDEO_CAPTURE;
const CAP_TIMEPERFRAME: u32 = 0x1000;
const MAX_BUFFERS: u32 = 32;

/// The (Y, Cb, Cr) the stand-in writes for pixel (x, y) of frame `sequence` (Cb and Cr are
/// shared by the pixel pair x, x^1).
pub fn sample(sequence: u32, x: u32, y: u32) -> (u8, u8, u8) {
    let s = sequence;
    (
        (x.wrapping_add(2 * y).wrapping_add(5 * s) & 0xff) as u8,
        ((x / 2).wrapping_mul(3).wrapping_add(y).wrapping_add(s) & 0xff) as u8,
        (y.wrapping_mul(7).wrapping_add(x / 2).wrapping_add(2 * s) & 0xff) as u8,
    )
}

#[derive(Default)]
struct Slot {
    /// The imported DMA-buf (a dup of the fd queued), kept until the buffers are freed.
    buf: Option<File>,
    queued: bool,
}

struct State {
    calls: Vec<&'static str>,
    refusals: Vec<(&'static str, i32, String)>,
    fail_next: Option<(&'static str, i32)>,
    gone: bool,
    /// Unplugged once this many frames were captured.
    unplug_after: Option<u32>,
    /// Hung (no more frames, no error) once this many frames were captured.
    silent_after: Option<u32>,
    modes: Vec<(u32, u32, u32)>,
    honours_bytesperline: bool,
    imports_dmabuf: bool,
    /// DMABUF offered, but these buffers cannot be mapped (QBUF: EFAULT, as vb2-vmalloc's
    /// failed `vmap`).
    maps_import: bool,
    fmt: Option<sys::PixFormat>,
    interval: (u32, u32),
    slots: Vec<Slot>,
    queue: VecDeque<u32>,
    /// (index, bytesused, timestamp µs, sequence, flags).
    done: VecDeque<(u32, u32, u64, u32, u32)>,
    streaming: bool,
    sequence: u32,
    dropped: u32,
    damaged: Vec<u32>,
    short: Vec<u32>,
    /// Frames written: (sequence, buffer index).
    delivered: Vec<(u32, u32)>,
    /// Every fd queued, as the application passed it.
    queued_fds: Vec<i32>,
}

/// The camera (a [`Device`]); clones share it, so a test keeps one to watch and drive.
#[derive(Clone)]
pub struct Camera {
    state: Arc<Mutex<State>>,
}

impl Camera {
    /// A camera offering YUYV at `modes` (width, height).
    pub fn yuyv(modes: &[(u32, u32)]) -> Camera {
        Camera::offering(
            &modes
                .iter()
                .map(|&(w, h)| (sys::PIX_FMT_YUYV, w, h))
                .collect::<Vec<_>>(),
        )
    }

    /// A camera offering these (fourcc, width, height) modes.
    pub fn offering(modes: &[(u32, u32, u32)]) -> Camera {
        Camera {
            state: Arc::new(Mutex::new(State {
                calls: Vec::new(),
                refusals: Vec::new(),
                fail_next: None,
                gone: false,
                unplug_after: None,
                silent_after: None,
                modes: modes.to_vec(),
                honours_bytesperline: false,
                imports_dmabuf: true,
                maps_import: true,
                fmt: None,
                interval: (1, 30),
                slots: Vec::new(),
                queue: VecDeque::new(),
                done: VecDeque::new(),
                streaming: false,
                sequence: 0,
                dropped: 0,
                damaged: Vec::new(),
                short: Vec::new(),
                delivered: Vec::new(),
                queued_fds: Vec::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Takes the application's `bytesperline` when it is at least width × 2.
    pub fn honouring_bytesperline(self) -> Camera {
        self.lock().honours_bytesperline = true;
        self
    }

    /// A driver that cannot import DMA-bufs (REQBUFS with DMABUF: EINVAL).
    pub fn without_dmabuf(self) -> Camera {
        self.lock().imports_dmabuf = false;
        self
    }

    /// A driver that takes DMABUF buffers but cannot map these (QBUF: EFAULT).
    pub fn refusing_import(self) -> Camera {
        self.lock().maps_import = false;
        self
    }

    /// Frames with these sequence numbers come damaged.
    pub fn damaging(self, sequences: &[u32]) -> Camera {
        self.lock().damaged = sequences.to_vec();
        self
    }

    /// Frames with these sequence numbers come short (half their bytes).
    pub fn cutting(self, sequences: &[u32]) -> Camera {
        self.lock().short = sequences.to_vec();
        self
    }

    /// Unplugged after `frames` frames.
    pub fn unplugging_after(self, frames: u32) -> Camera {
        self.lock().unplug_after = Some(frames);
        self
    }

    /// Hung after `frames` frames: it answers, but delivers nothing more.
    pub fn silent_after(self, frames: u32) -> Camera {
        self.lock().silent_after = Some(frames);
        self
    }

    /// The modes it offers: (fourcc, width, height).
    pub fn modes(&self) -> Vec<(u32, u32, u32)> {
        self.lock().modes.clone()
    }

    /// The next call of `ioctl` fails with `errno`.
    pub fn fail_next(&self, ioctl: &'static str, errno: i32) {
        self.lock().fail_next = Some((ioctl, errno));
    }

    /// The camera captures `n` frames.
    pub fn tick(&self, n: u32) {
        let mut s = self.lock();
        for _ in 0..n {
            s.capture();
        }
    }

    /// Every ioctl name, in order.
    pub fn calls(&self) -> Vec<&'static str> {
        self.lock().calls.clone()
    }

    /// What was refused, and why.
    pub fn refusals(&self) -> Vec<(&'static str, i32, String)> {
        self.lock().refusals.clone()
    }

    /// Frames the camera dropped for want of a queued buffer.
    pub fn dropped(&self) -> u32 {
        self.lock().dropped
    }

    /// Frames written into buffers: (sequence, index).
    pub fn delivered(&self) -> Vec<(u32, u32)> {
        self.lock().delivered.clone()
    }

    /// Buffers queued with the camera now.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Whether buffers are allocated (between REQBUFS n and REQBUFS 0).
    pub fn has_buffers(&self) -> bool {
        !self.lock().slots.is_empty()
    }

    /// Whether it streams.
    pub fn streaming(&self) -> bool {
        self.lock().streaming
    }

    /// The fds the application queued.
    pub fn queued_fds(&self) -> Vec<i32> {
        self.lock().queued_fds.clone()
    }
}

impl State {
    fn refuse(&mut self, name: &'static str, errno: i32, why: &str) -> Result<(), Errno> {
        self.refusals.push((name, errno, why.to_string()));
        Err(Errno(errno))
    }

    /// One frame time: the frame goes into the oldest queued buffer, or is dropped.
    fn capture(&mut self) {
        if !self.streaming || self.gone || self.silent_after.is_some_and(|n| self.sequence >= n) {
            return;
        }
        let seq = self.sequence;
        self.sequence = self.sequence.wrapping_add(1);
        if self.unplug_after.is_some_and(|n| seq >= n) {
            self.gone = true;
            return;
        }
        let Some(index) = self.queue.pop_front() else {
            self.dropped += 1;
            return;
        };
        let fmt = self.fmt.expect("streaming needs a format");
        let frame = self.frame(&fmt, seq);
        let slot = &mut self.slots[index as usize];
        slot.queued = false;
        let file = slot.buf.as_ref().expect("a queued buffer was imported");
        let bytes = if self.short.contains(&seq) {
            frame.len() / 2
        } else {
            frame.len()
        };
        file.write_all_at(&frame[..bytes], 0)
            .expect("write into the DMA-buf");
        let mut flags = sys::BUF_FLAG_TIMESTAMP_MONOTONIC;
        if self.damaged.contains(&seq) {
            flags |= sys::BUF_FLAG_ERROR;
        }
        let ts = 1_000_000
            + seq as u64 * 1_000_000 * self.interval.0 as u64 / self.interval.1.max(1) as u64;
        self.done.push_back((index, bytes as u32, ts, seq, flags));
        self.delivered.push((seq, index));
    }

    /// Frame `seq` in `fmt`: rows of `bytesperline` bytes (padding zero).
    fn frame(&self, fmt: &sys::PixFormat, seq: u32) -> Vec<u8> {
        let mut out = vec![0u8; fmt.sizeimage as usize];
        for y in 0..fmt.height {
            let row = &mut out[(y * fmt.bytesperline) as usize..];
            for x in (0..fmt.width).step_by(2) {
                let (y0, u, v) = sample(seq, x, y);
                let (y1, ..) = sample(seq, x + 1, y);
                let q = &mut row[(x * 2) as usize..(x * 2 + 4) as usize];
                if fmt.pixelformat == sys::PIX_FMT_UYVY {
                    q.copy_from_slice(&[u, y0, v, y1]);
                } else {
                    q.copy_from_slice(&[y0, u, y1, v]);
                }
            }
        }
        out
    }

    fn pick(&self, want: &sys::PixFormat) -> sys::PixFormat {
        let fourcc = if self.modes.iter().any(|m| m.0 == want.pixelformat) {
            want.pixelformat
        } else {
            self.modes[0].0
        };
        let area =
            |w: u32, h: u32| (w as i64 * h as i64 - want.width as i64 * want.height as i64).abs();
        let &(_, width, height) = self
            .modes
            .iter()
            .filter(|m| m.0 == fourcc)
            .min_by_key(|m| area(m.1, m.2))
            .expect("a mode of the format");
        let bytesperline = if self.honours_bytesperline && want.bytesperline >= width * 2 {
            want.bytesperline
        } else {
            width * 2
        };
        sys::PixFormat {
            width,
            height,
            pixelformat: fourcc,
            field: sys::FIELD_NONE,
            bytesperline,
            sizeimage: bytesperline * height,
            colorspace: 8, // V4L2_COLORSPACE_SRGB, as uvcvideo reports YUYV
            ..Default::default()
        }
    }

    fn handle(&mut self, request: Request<'_>) -> Result<(), Errno> {
        let name = request.name();
        match request {
            Request::QueryCap(c) => {
                c.driver[..9].copy_from_slice(b"uvcvideo\0");
                c.device_caps = sys::CAP_VIDEO_CAPTURE | sys::CAP_STREAMING;
                c.capabilities = c.device_caps | sys::CAP_DEVICE_CAPS;
                Ok(())
            }
            Request::SetFormat(f) | Request::GetFormat(f) if f.type_ != CAPTURE => {
                self.refuse(name, libc::EINVAL, "not the capture type")
            }
            Request::SetFormat(f) => {
                if !self.slots.is_empty() {
                    return self.refuse(name, libc::EBUSY, "S_FMT while buffers exist");
                }
                let picked = self.pick(&f.pix());
                self.fmt = Some(picked);
                f.set_pix(picked);
                Ok(())
            }
            Request::GetFormat(f) => {
                let current = match self.fmt {
                    Some(p) => p,
                    None => self.pick(&sys::PixFormat::default()),
                };
                f.set_pix(current);
                Ok(())
            }
            Request::SetParm(p) | Request::GetParm(p) if p.type_ != CAPTURE => {
                self.refuse(name, libc::EINVAL, "not the capture type")
            }
            Request::SetParm(p) => {
                if p.timeperframe.numerator > 0 && p.timeperframe.denominator > 0 {
                    self.interval = (p.timeperframe.numerator, p.timeperframe.denominator);
                }
                p.capability = CAP_TIMEPERFRAME;
                p.timeperframe.numerator = self.interval.0;
                p.timeperframe.denominator = self.interval.1;
                Ok(())
            }
            Request::GetParm(p) => {
                p.capability = CAP_TIMEPERFRAME;
                p.timeperframe.numerator = self.interval.0;
                p.timeperframe.denominator = self.interval.1;
                Ok(())
            }
            Request::RequestBuffers(r) => {
                if r.type_ != CAPTURE {
                    return self.refuse(name, libc::EINVAL, "not the capture type");
                }
                if r.memory != sys::MEMORY_DMABUF || !self.imports_dmabuf {
                    return self.refuse(name, libc::EINVAL, "memory type not supported");
                }
                if self.streaming {
                    return self.refuse(name, libc::EBUSY, "REQBUFS while streaming");
                }
                if r.count > 0 && self.fmt.is_none() {
                    // vb2 sizes buffers from the current format; uvcvideo always has one.
                    self.fmt = Some(self.pick(&sys::PixFormat::default()));
                }
                self.slots.clear();
                self.queue.clear();
                self.done.clear();
                r.count = r.count.min(MAX_BUFFERS);
                self.slots = (0..r.count).map(|_| Slot::default()).collect();
                Ok(())
            }
            Request::QueryBuffer(b, _) => {
                let Some(slot) = self.slots.get(b.index as usize) else {
                    return self.refuse(name, libc::EINVAL, "no such buffer");
                };
                if b.type_ != CAPTURE || b.memory != sys::MEMORY_DMABUF {
                    return self.refuse(name, libc::EINVAL, "wrong type or memory");
                }
                b.flags = if slot.queued { 2 } else { 0 };
                b.length = self.fmt.map_or(0, |f| f.sizeimage);
                b.bytesused = 0;
                Ok(())
            }
            Request::QueueBuffer(b, _) => self.qbuf(name, b),
            Request::DequeueBuffer(b, _) => {
                if b.type_ != CAPTURE || b.memory != sys::MEMORY_DMABUF {
                    return self.refuse(name, libc::EINVAL, "wrong type or memory");
                }
                if !self.streaming {
                    return self.refuse(name, libc::EINVAL, "DQBUF while not streaming");
                }
                let Some((index, bytes, ts, seq, flags)) = self.done.pop_front() else {
                    return Err(Errno(libc::EAGAIN));
                };
                b.index = index;
                b.bytesused = bytes;
                b.flags = flags;
                b.field = sys::FIELD_NONE;
                b.sequence = seq;
                b.set_timestamp_us(ts);
                b.length = self.fmt.map_or(0, |f| f.sizeimage);
                b.m = self.slots[index as usize]
                    .buf
                    .as_ref()
                    .map_or(0, |f| f.as_raw_fd() as u32 as u64);
                Ok(())
            }
            Request::StreamOn(t) => {
                if t != CAPTURE || self.slots.is_empty() {
                    return self.refuse(name, libc::EINVAL, "STREAMON without buffers");
                }
                self.streaming = true;
                Ok(())
            }
            Request::StreamOff(t) => {
                if t != CAPTURE {
                    return self.refuse(name, libc::EINVAL, "not the capture type");
                }
                self.streaming = false;
                self.queue.clear();
                self.done.clear();
                for s in &mut self.slots {
                    s.queued = false;
                }
                Ok(())
            }
            other => {
                let n = other.name();
                self.refuse(n, libc::ENOTTY, "not a camera ioctl")
            }
        }
    }

    fn qbuf(&mut self, name: &'static str, b: &mut sys::Buffer) -> Result<(), Errno> {
        if b.type_ != CAPTURE || b.memory != sys::MEMORY_DMABUF {
            return self.refuse(name, libc::EINVAL, "wrong type or memory");
        }
        let sizeimage = self.fmt.map_or(0, |f| f.sizeimage);
        let Some(slot) = self.slots.get(b.index as usize) else {
            return self.refuse(name, libc::EINVAL, "no such buffer");
        };
        if slot.queued || self.done.iter().any(|d| d.0 == b.index) {
            return self.refuse(name, libc::EINVAL, "buffer already queued");
        }
        if b.length != 0 && b.length < sizeimage {
            return self.refuse(name, libc::EINVAL, "length below sizeimage");
        }
        let fd = b.m as u32 as i32;
        // SAFETY: dup of whatever the application passed; a bad fd fails the dup.
        let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            return self.refuse(name, libc::EINVAL, "not a DMA-buf fd");
        }
        // SAFETY: a fresh descriptor we own.
        let file = unsafe { File::from_raw_fd(dup) };
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size < sizeimage as u64 {
            return self.refuse(name, libc::EINVAL, "DMA-buf smaller than a frame");
        }
        if !self.maps_import {
            return self.refuse(name, libc::EFAULT, "cannot map the DMA-buf");
        }
        self.queued_fds.push(fd);
        let slot = &mut self.slots[b.index as usize];
        slot.buf = Some(file);
        slot.queued = true;
        self.queue.push_back(b.index);
        Ok(())
    }
}

impl Device for Camera {
    fn ioctl(&mut self, request: Request<'_>) -> Result<(), Errno> {
        let mut s = self.lock();
        let name = request.name();
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
        s.handle(request)
    }

    fn wait(&mut self, timeout_ms: i32) -> Result<(), Errno> {
        // A poll that waited one frame interval (POLLERR once unplugged: the next ioctl
        // finds out); a hung camera lets the poll time out (up to 1 ms here).
        let captured = {
            let mut s = self.lock();
            let before = s.delivered.len() as u64 + s.dropped as u64;
            s.capture();
            s.delivered.len() as u64 + s.dropped as u64 > before
        };
        if !captured {
            std::thread::sleep(std::time::Duration::from_millis(
                timeout_ms.clamp(0, 1) as u64
            ));
        }
        Ok(())
    }
}
