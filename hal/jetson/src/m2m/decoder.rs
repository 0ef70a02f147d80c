//! The decoder: r36 `00_video_decode`'s sequence as a non-blocking state machine.
//!
//! open: QUERYCAP → SUBSCRIBE(RESOLUTION_CHANGE, EOS) → S_FMT(output, codec, sizeimage) →
//! S_EXT_CTRLS(DISABLE_COMPLETE_FRAME_INPUT=1 [, DISABLE_DPB]) → REQBUFS/QUERYBUF/EXPBUF/mmap
//! (output, MMAP) → STREAMON(output). The capture plane waits for the first
//! `V4L2_EVENT_RESOLUTION_CHANGE`; then, and on every later one (`query_and_set_capture`):
//! G_FMT, G_CROP, STREAMOFF + REQBUFS(0) of the old buffers, G_CTRL(MIN_BUFFERS_FOR_CAPTURE),
//! REQBUFS(min + extra, MMAP or DMABUF), STREAMON(capture), QBUF of every capture buffer.
//! End of stream: QBUF of an output buffer with `bytesused = 0`; the capture plane then
//! gives a buffer with `bytesused = 0` (or EAGAIN with `V4L2_BUF_FLAG_LAST`).

use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::Arc;

use super::device::{CtrlValue, Device, Request};
use super::plane::{self, FrameFormat, MappedPlane, call};
use super::{Codec, M2mError, sys};

const OUT: u32 = sys::BUF_TYPE_VIDEO_OUTPUT_MPLANE;
const CAP: u32 = sys::BUF_TYPE_VIDEO_CAPTURE_MPLANE;

/// A capture buffer: the decoder queues its DMA-buf fd (the surface's own fd, which
/// `NvBufSurfaceFromFd` finds the surface by). It is dropped, and the buffer freed, when the
/// capture set it belongs to is gone: after a resolution change or the session's end, once
/// no decoded frame of that set is held.
pub type CaptureBuffer = Box<dyn AsFd + Send + Sync>;

/// Allocates capture surfaces for the DMABUF capture mode: on a Jetson, NvBufSurface
/// block-linear NV12 surfaces of the visible size (the sample's `NvBufSurf::NvAllocate`
/// with `NVBUF_LAYOUT_BLOCK_LINEAR`, `NvBufSurfaceTag_VIDEO_DEC`;
/// [`crate::nvmm::DecoderSurfaces`]).
pub trait SurfaceAllocator: Send {
    /// `count` surfaces for `format`, one DMA-buf each.
    fn allocate(&mut self, format: &FrameFormat, count: u32) -> Result<Vec<CaptureBuffer>, String>;
}

/// Where decoded pictures live.
pub enum CaptureMemory {
    /// Driver-allocated buffers, exported as DMA-buf fds (`VIDIOC_EXPBUF`).
    Mmap,
    /// Surfaces from an allocator, queued by fd (r36 sample's default).
    DmaBuf(Box<dyn SurfaceAllocator>),
}

/// Decoder settings.
pub struct DecoderConfig {
    /// Bitstream codec.
    pub codec: Codec,
    /// Output-plane (bitstream) buffers.
    pub input_buffers: u32,
    /// Bytes per bitstream buffer (r36 sample: `CHUNK_SIZE` 4 000 000).
    pub input_buffer_size: u32,
    /// Capture buffers beyond the driver's minimum (frames the pipeline may hold).
    pub extra_capture_buffers: u32,
    /// `V4L2_CID_MPEG_VIDEO_DISABLE_DPB` (only for streams with a single reference frame).
    pub disable_dpb: bool,
    /// Capture memory.
    pub capture: CaptureMemory,
}

impl DecoderConfig {
    /// The sample's defaults for `codec`: 2 × 4 MB input buffers, MMAP capture, one
    /// extra capture buffer.
    pub fn new(codec: Codec) -> DecoderConfig {
        DecoderConfig {
            codec,
            input_buffers: 2,
            input_buffer_size: 4_000_000,
            extra_capture_buffers: 1,
            disable_dpb: false,
            capture: CaptureMemory::Mmap,
        }
    }
}

/// The capture buffers of one resolution: kept alive by frames still held.
struct CaptureSet {
    generation: u32,
    format: FrameFormat,
    memory: u32,
    buffers: Vec<CaptureBuffer>,
    _mapped: Vec<MappedPlane>,
}

/// A decoded picture: a capture buffer the driver filled. Give it back with
/// [`Decoder::release`]; its fd stays valid while the value lives, even across a
/// resolution change.
pub struct DecodedFrame {
    index: u32,
    set: Arc<CaptureSet>,
    /// Timestamp copied from the access unit that produced it.
    pub pts_us: u64,
}

impl std::fmt::Debug for DecodedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecodedFrame")
            .field("index", &self.index)
            .field("generation", &self.set.generation)
            .field("pts_us", &self.pts_us)
            .finish()
    }
}

impl DecodedFrame {
    /// Capture buffer index.
    pub fn index(&self) -> u32 {
        self.index
    }
    /// The DMA-buf fd of the picture (NvBufSurface fd on a Jetson in DMABUF mode).
    pub fn fd(&self) -> RawFd {
        self.set.buffers[self.index as usize].as_fd().as_raw_fd()
    }
    /// Layout and visible rectangle.
    pub fn format(&self) -> &FrameFormat {
        &self.set.format
    }
    /// How many resolution (re)configurations preceded this frame's (1 for the first).
    pub fn generation(&self) -> u32 {
        self.set.generation
    }
}

/// What [`Decoder::poll`] found.
#[derive(Debug)]
pub enum DecoderEvent {
    /// The stream's resolution is known or changed; capture buffers were (re)made.
    FormatChanged(FrameFormat),
    /// A picture.
    Frame(DecodedFrame),
    /// The last picture has been delivered.
    EndOfStream,
}

/// A hardware decoder session.
pub struct Decoder<D: Device> {
    dev: D,
    inputs: Vec<MappedPlane>,
    free_inputs: Vec<u32>,
    capture: Option<Arc<CaptureSet>>,
    allocator: Option<Box<dyn SurfaceAllocator>>,
    extra_capture: u32,
    generations: u32,
    /// A resolution change arrived while decoded pictures may still wait on the capture
    /// plane: they are delivered first, then the plane is remade.
    change_pending: bool,
    eos_sent: bool,
    eos_seen: bool,
}

impl<D: Device> Decoder<D> {
    /// Opens a decoding session on `dev` (output plane set up and streaming).
    pub fn open(mut dev: D, config: DecoderConfig) -> Result<Decoder<D>, M2mError> {
        check_m2m(&mut dev)?;
        for type_ in [sys::EVENT_RESOLUTION_CHANGE, sys::EVENT_EOS] {
            let sub = sys::EventSubscription {
                type_,
                ..Default::default()
            };
            call(&mut dev, "device", Request::SubscribeEvent(&sub))?;
        }
        let mut fmt = sys::Format::new(OUT);
        let mut pix = fmt.pix_mp();
        pix.pixelformat = config.codec.fourcc();
        pix.num_planes = 1;
        pix.plane_fmt[0].sizeimage = config.input_buffer_size;
        fmt.set_pix_mp(pix);
        call(&mut dev, "output plane", Request::SetFormat(&mut fmt))?;
        // Whole access units in, any slicing (the sample sets 1 in both of its input modes).
        let mut ctrls = vec![CtrlValue {
            id: sys::CID_MPEG_VIDEO_DISABLE_COMPLETE_FRAME_INPUT,
            value: 1,
        }];
        if config.disable_dpb {
            ctrls.push(CtrlValue {
                id: sys::CID_MPEG_VIDEO_DISABLE_DPB,
                value: 0,
            });
        }
        for c in &ctrls {
            call(
                &mut dev,
                "device",
                Request::SetControls(0, std::slice::from_ref(c)),
            )?;
        }
        let inputs = plane::setup_mmap(&mut dev, OUT, config.input_buffers)?;
        call(&mut dev, "output plane", Request::StreamOn(OUT))?;
        let allocator = match config.capture {
            CaptureMemory::Mmap => None,
            CaptureMemory::DmaBuf(a) => Some(a),
        };
        Ok(Decoder {
            dev,
            free_inputs: (0..inputs.len() as u32).rev().collect(),
            inputs,
            capture: None,
            allocator,
            extra_capture: config.extra_capture_buffers,
            generations: 0,
            change_pending: false,
            eos_sent: false,
            eos_seen: false,
        })
    }

    /// Queues one access unit (Annex B) with its timestamp. `Ok(false)`: every input
    /// buffer is still with the driver — call [`Decoder::poll`] (or wait) and retry.
    pub fn try_feed(&mut self, access_unit: &[u8], pts_us: u64) -> Result<bool, M2mError> {
        if self.eos_sent {
            return Err(M2mError::AfterEos("access unit"));
        }
        if access_unit.is_empty() {
            return Ok(true); // an empty buffer would mean end of stream to the driver
        }
        let Some(index) = self.free_input()? else {
            return Ok(false);
        };
        let input = &mut self.inputs[index as usize];
        if access_unit.len() > input.len() {
            self.free_inputs.push(index);
            return Err(M2mError::TooLarge {
                what: "access unit",
                size: access_unit.len(),
                capacity: input.len(),
            });
        }
        input.write(access_unit);
        self.queue_input(index, access_unit.len() as u32, pts_us)?;
        Ok(true)
    }

    /// Signals end of stream: an empty output buffer, as the sample does. `Ok(false)`: no
    /// input buffer free yet; poll and retry.
    pub fn try_finish(&mut self) -> Result<bool, M2mError> {
        if self.eos_sent {
            return Ok(true);
        }
        let Some(index) = self.free_input()? else {
            return Ok(false);
        };
        self.queue_input(index, 0, 0)?;
        self.eos_sent = true;
        Ok(true)
    }

    /// The next thing the decoder has, without blocking: a format change (handled here —
    /// capture buffers are already remade), a picture, or the end of the stream.
    pub fn poll(&mut self) -> Result<Option<DecoderEvent>, M2mError> {
        if self.eos_seen {
            return Ok(Some(DecoderEvent::EndOfStream));
        }
        if !self.change_pending {
            let mut ev = sys::Event::default();
            match self.dev.ioctl(Request::DequeueEvent(&mut ev)) {
                Ok(()) if ev.type_ == sys::EVENT_RESOLUTION_CHANGE => self.change_pending = true,
                Ok(()) => {} // EOS events: the capture plane's empty buffer is what counts
                Err(e) if e.0 == libc::EAGAIN || e.0 == libc::ENOENT => {}
                Err(e) => return Err(plane::classify("VIDIOC_DQEVENT", "device", e)),
            }
        }
        let Some(set) = self.capture.clone() else {
            return self.apply_change();
        };
        let mut planes = vec![sys::Plane::default(); set.format.planes.len()];
        match plane::dequeue(&mut self.dev, CAP, set.memory, &mut planes)? {
            Ok(buf) => {
                if buf.index as usize >= set.buffers.len() {
                    return Err(M2mError::Protocol {
                        ioctl: "VIDIOC_DQBUF",
                        detail: format!("capture index {} of {}", buf.index, set.buffers.len()),
                    });
                }
                if planes[0].bytesused == 0 {
                    self.eos_seen = true;
                    return Ok(Some(DecoderEvent::EndOfStream));
                }
                Ok(Some(DecoderEvent::Frame(DecodedFrame {
                    index: buf.index,
                    set,
                    pts_us: buf.timestamp_us(),
                })))
            }
            Err(flags) if flags & sys::BUF_FLAG_LAST != 0 && !self.change_pending => {
                self.eos_seen = true;
                Ok(Some(DecoderEvent::EndOfStream))
            }
            Err(_) => self.apply_change(),
        }
    }

    /// Remakes the capture plane if a resolution change is pending. Unlike the r36 sample
    /// (which remakes it as soon as it dequeues the event), pictures already decoded at
    /// the old resolution are dequeued first, as the kernel's stateful-decoder interface
    /// prescribes: a STREAMOFF would drop them.
    fn apply_change(&mut self) -> Result<Option<DecoderEvent>, M2mError> {
        if !self.change_pending {
            return Ok(None);
        }
        self.change_pending = false;
        let format = self.query_and_set_capture()?;
        Ok(Some(DecoderEvent::FormatChanged(format)))
    }

    /// Gives a picture's buffer back to the decoder. Frames of a previous resolution are
    /// simply dropped (their buffers are gone from the driver).
    pub fn release(&mut self, frame: DecodedFrame) -> Result<(), M2mError> {
        let current = self
            .capture
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &frame.set));
        if !current || self.eos_seen {
            return Ok(());
        }
        queue_capture(&mut self.dev, &frame.set, frame.index)
    }

    /// Blocks until the device may have something (see [`Device::wait`]).
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), M2mError> {
        self.dev
            .wait(timeout_ms)
            .map_err(|e| plane::classify("poll", "device", e))
    }

    /// The device (for inspection in tests).
    pub fn device(&self) -> &D {
        &self.dev
    }

    fn free_input(&mut self) -> Result<Option<u32>, M2mError> {
        // Reclaim what the driver has consumed.
        loop {
            let mut planes = [sys::Plane::default(); 1];
            match plane::dequeue(&mut self.dev, OUT, sys::MEMORY_MMAP, &mut planes)? {
                Ok(buf) if (buf.index as usize) < self.inputs.len() => {
                    self.free_inputs.push(buf.index)
                }
                Ok(buf) => {
                    return Err(M2mError::Protocol {
                        ioctl: "VIDIOC_DQBUF",
                        detail: format!("output index {} of {}", buf.index, self.inputs.len()),
                    });
                }
                Err(_) => break,
            }
        }
        Ok(self.free_inputs.pop())
    }

    fn queue_input(&mut self, index: u32, bytes: u32, pts_us: u64) -> Result<(), M2mError> {
        let mut buf = sys::Buffer::new(OUT, sys::MEMORY_MMAP, index);
        buf.flags = sys::BUF_FLAG_TIMESTAMP_COPY;
        buf.set_timestamp_us(pts_us);
        let mut planes = [sys::Plane {
            bytesused: bytes,
            ..Default::default()
        }];
        let r = call(
            &mut self.dev,
            "output plane",
            Request::QueueBuffer(&mut buf, &mut planes),
        );
        if r.is_err() {
            self.free_inputs.push(index);
        }
        r
    }

    /// The sample's `query_and_set_capture`.
    fn query_and_set_capture(&mut self) -> Result<FrameFormat, M2mError> {
        let dev = &mut self.dev;
        let mut fmt = sys::Format::new(CAP);
        call(dev, "capture plane", Request::GetFormat(&mut fmt))?;
        let mut crop = sys::Crop {
            type_: CAP,
            ..Default::default()
        };
        call(dev, "capture plane", Request::GetCrop(&mut crop))?;
        let format = FrameFormat::from_format(&fmt, crop.c)?;
        if let Some(old) = self.capture.take() {
            plane::teardown(dev, CAP, old.memory)?;
        }
        let mut min = sys::Control {
            id: sys::CID_MIN_BUFFERS_FOR_CAPTURE,
            value: 0,
        };
        call(dev, "capture plane", Request::GetControl(&mut min))?;
        let count = (min.value.max(1) as u32).saturating_add(self.extra_capture);
        let (memory, buffers, mapped) = match &mut self.allocator {
            None => {
                let mapped = plane::setup_mmap(dev, CAP, count)?;
                let fds = mapped
                    .iter()
                    .map(|m| m.fd().try_clone().map(|fd| Box::new(fd) as CaptureBuffer))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| M2mError::Protocol {
                        ioctl: "VIDIOC_EXPBUF",
                        detail: format!("dup of exported fd: {e}"),
                    })?;
                (sys::MEMORY_MMAP, fds, mapped)
            }
            Some(alloc) => {
                let fds = alloc
                    .allocate(&format, count)
                    .map_err(|detail| M2mError::Allocate {
                        count,
                        width: format.visible.width,
                        height: format.visible.height,
                        detail,
                    })?;
                let got = plane::request_buffers(dev, CAP, sys::MEMORY_DMABUF, fds.len() as u32)?;
                if got as usize != fds.len() {
                    return Err(M2mError::Protocol {
                        ioctl: "VIDIOC_REQBUFS",
                        detail: format!("{got} DMABUF capture buffers for {} surfaces", fds.len()),
                    });
                }
                (sys::MEMORY_DMABUF, fds, Vec::new())
            }
        };
        self.generations += 1;
        let set = Arc::new(CaptureSet {
            generation: self.generations,
            format: format.clone(),
            memory,
            buffers,
            _mapped: mapped,
        });
        call(dev, "capture plane", Request::StreamOn(CAP))?;
        for index in 0..set.buffers.len() as u32 {
            queue_capture(dev, &set, index)?;
        }
        self.capture = Some(set);
        Ok(format)
    }
}

fn queue_capture<D: Device>(dev: &mut D, set: &CaptureSet, index: u32) -> Result<(), M2mError> {
    let mut buf = sys::Buffer::new(CAP, set.memory, index);
    let mut planes = vec![sys::Plane::default(); set.format.planes.len()];
    if set.memory == sys::MEMORY_DMABUF {
        // One NvBufSurface fd carries every plane (sample: planes[0].m.fd only).
        for p in &mut planes {
            p.set_fd(set.buffers[index as usize].as_fd().as_raw_fd());
        }
    }
    call(
        dev,
        "capture plane",
        Request::QueueBuffer(&mut buf, &mut planes),
    )
}

/// QUERYCAP: must be a multi-planar M2M device (`NvV4l2Element`'s constructor check).
pub(crate) fn check_m2m<D: Device>(dev: &mut D) -> Result<(), M2mError> {
    let mut cap = sys::Capability::default();
    call(dev, "device", Request::QueryCap(&mut cap))?;
    let caps = if cap.capabilities & sys::CAP_DEVICE_CAPS != 0 {
        cap.device_caps
    } else {
        cap.capabilities
    };
    if caps & sys::CAP_VIDEO_M2M_MPLANE == 0 {
        return Err(M2mError::NotM2m(caps));
    }
    Ok(())
}

impl<D: Device> Drop for Decoder<D> {
    fn drop(&mut self) {
        // The sample's destructor: STREAMOFF and REQBUFS(0) on both planes; errors are moot.
        if let Some(set) = self.capture.take() {
            let _ = plane::teardown(&mut self.dev, CAP, set.memory);
        }
        self.inputs.clear();
        let _ = plane::teardown(&mut self.dev, OUT, sys::MEMORY_MMAP);
    }
}
