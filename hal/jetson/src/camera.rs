//! USB (UVC) cameras into NVMM on Orin: the camera's raw frames are captured straight into
//! NVMM surfaces, converted by the VIC into the pipeline's NV12 work surfaces and lent to
//! the CUDA stages like decoded pictures ([`crate::lend`]). No host copy is made.
//!
//! This follows r36's `12_camera_v4l2_cuda` sample (Jetson Linux r36, jetson_multimedia_api):
//! - the node is opened with plain `open` and driven with plain `ioctl`s (no libv4l2: a UVC
//!   camera is a kernel driver), single-planar `V4L2_BUF_TYPE_VIDEO_CAPTURE`;
//! - `VIDIOC_S_FMT` with the wanted size and format, then `VIDIOC_G_FMT` for what the
//!   driver agreed to (the sample takes the driver's size when it differs);
//! - `V4L2_BUFFERS_NUM` (4) pitch-linear NvBufSurfaces of the camera's packed 4:2:2 format
//!   (`NVBUF_COLOR_FORMAT_YUYV` for `V4L2_PIX_FMT_YUYV` ...), tagged
//!   `NvBufSurfaceTag_CAMERA`, each mapped for the CPU (`NvBufSurfaceMap`, read-write);
//! - `VIDIOC_REQBUFS` with `V4L2_MEMORY_DMABUF`, then per buffer `VIDIOC_QUERYBUF` and
//!   `VIDIOC_QBUF` with `m.fd` the surface's DMA-buf fd; `VIDIOC_STREAMON`;
//! - per frame: `VIDIOC_DQBUF`, `NvBufSurfaceSyncForDevice` ("cache sync for VIC operation
//!   since the data is from CPU": uvcvideo writes the frame with the CPU), the VIC
//!   converts it (`NvBufTransform`), and `VIDIOC_QBUF` gives the buffer back.
//!
//! Two checks the sample leaves out, because a driver writes `bytesperline`-byte rows into
//! the buffer whatever the surface's pitch is: the surface's pitch must equal the camera's
//! `bytesperline` (asked for in a second `VIDIOC_S_FMT` when it differs; uvcvideo computes
//! its own) and the surface must hold `sizeimage` bytes. A camera that fails them, or whose
//! driver cannot import DMA-bufs, or that delivers another format (MJPEG, H.264, NV12), is
//! [`CameraError::is_unsuitable`]: the agent captures it on the CPU instead.
//!
//! A live camera cannot be paused: each poll takes the newest frame the camera has finished
//! and gives older ones straight back (counted as `stale`); when every work surface is still
//! with the pipeline, that newest frame waits in its capture buffer. A slow pipeline thus
//! sees the latest picture, not a backlog, and nothing is allocated. Only the frame the VIC
//! converts is synced for the device.

use std::sync::Arc;

use crate::lend::{CudaContext, NvmmFrame, WorkPool, even};
use crate::m2m::{Device, Errno, Request, sys};
use crate::nvbuf::{
    ColorFormat, CpuMappedSurface, Layout, MemType, NvBufSurfaceLib, Surface, SurfaceError,
    SurfaceSpec, Tag,
};
use crate::nvmm::{NvmmError, work_surface_spec, work_surfaces};
use crate::transform::{Transform, TransformSpec};

const CAPTURE: u32 = sys::BUF_TYPE_VIDEO_CAPTURE;
const DMABUF: u32 = sys::MEMORY_DMABUF;

/// Capture buffers r36's sample uses (`V4L2_BUFFERS_NUM`).
pub const CAPTURE_BUFFERS: u32 = 4;

/// What to ask the camera for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraConfig {
    /// V4L2 pixel format (`sys::PIX_FMT_YUYV` or `sys::PIX_FMT_UYVY`).
    pub pixelformat: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Frames per second as (numerator, denominator); (0, 1): the camera's default.
    pub fps: (u32, u32),
    /// Capture buffers (at least 2; [`CAPTURE_BUFFERS`] as the sample).
    pub buffers: u32,
}

/// The format the camera agreed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraFormat {
    /// V4L2 pixel format.
    pub pixelformat: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per row the driver writes.
    pub bytesperline: u32,
    /// Bytes of a whole frame.
    pub sizeimage: u32,
    /// Frames per second as (numerator, denominator); (0, 1) when the driver did not say.
    pub fps: (u32, u32),
}

/// Why a camera could not be captured into NVMM, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum CameraError {
    /// An ioctl failed.
    #[error("{ioctl} failed: {errno}")]
    Ioctl {
        /// The ioctl.
        ioctl: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// The camera went away (unplugged: `ENODEV`, or `EIO` from a queue the driver
    /// cancelled).
    #[error("camera gone during {ioctl}: {errno}")]
    Gone {
        /// The ioctl that found out.
        ioctl: &'static str,
        /// Its errno.
        errno: Errno,
    },
    /// Not a streaming video capture device.
    #[error("not a streaming video capture device (capabilities {0:#x})")]
    NotCapture(u32),
    /// The camera delivers a format the VIC path does not take.
    #[error("the camera delivers {0}, not packed 4:2:2 (YUYV, UYVY) that NVMM capture takes")]
    Format(String),
    /// The driver cannot import DMA-bufs, or not these (NVMM).
    #[error("the camera's driver does not capture into these DMA-bufs (V4L2_MEMORY_DMABUF: {0})")]
    NoDmaBuf(Errno),
    /// The camera's rows do not match the surface's.
    #[error(
        "the camera writes rows of {camera} bytes; NVMM surfaces of {width}x{height} have rows of {surface} bytes"
    )]
    Pitch {
        /// The camera's `bytesperline`.
        camera: u32,
        /// The surface's pitch.
        surface: u32,
        /// Width.
        width: u32,
        /// Height.
        height: u32,
    },
    /// The surface's pixels do not start at its DMA-buf's first byte, where the camera
    /// writes.
    #[error("NVMM surfaces start their pixels at byte {0} of the buffer; the camera writes from 0")]
    Offset(u32),
    /// A surface smaller than a frame.
    #[error("NVMM surfaces of {surface} bytes are smaller than the camera's {camera}-byte frames")]
    Size {
        /// The camera's `sizeimage`.
        camera: u32,
        /// The surface's plane size.
        surface: u32,
    },
    /// An NvBufSurface call failed.
    #[error("NVMM capture surfaces: {0}")]
    Surface(#[from] SurfaceError),
    /// The driver answered something impossible.
    #[error("the camera's driver answered {ioctl} with {detail}")]
    Protocol {
        /// The ioctl.
        ioctl: &'static str,
        /// What was wrong.
        detail: String,
    },
}

impl CameraError {
    /// The camera is gone (unplugged): reconnect later.
    pub fn is_gone(&self) -> bool {
        matches!(self, CameraError::Gone { .. })
    }

    /// The camera works but not into NVMM this way: capture it on the CPU instead.
    pub fn is_unsuitable(&self) -> bool {
        matches!(
            self,
            CameraError::Format(_)
                | CameraError::NoDmaBuf(_)
                | CameraError::Pitch { .. }
                | CameraError::Offset(_)
                | CameraError::Size { .. }
        )
    }
}

fn call<D: Device>(dev: &mut D, request: Request<'_>) -> Result<(), CameraError> {
    let ioctl = request.name();
    dev.ioctl(request).map_err(|errno| classify(ioctl, errno))
}

fn classify(ioctl: &'static str, errno: Errno) -> CameraError {
    match errno.0 {
        libc::ENODEV | libc::EIO => CameraError::Gone { ioctl, errno },
        _ => CameraError::Ioctl { ioctl, errno },
    }
}

fn fourcc_name(code: u32) -> String {
    code.to_le_bytes()
        .iter()
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect()
}

/// The NvBufSurface format for a camera format the VIC path takes.
fn surface_format(pixelformat: u32) -> Option<ColorFormat> {
    match pixelformat {
        sys::PIX_FMT_YUYV => Some(ColorFormat::Yuyv),
        sys::PIX_FMT_UYVY => Some(ColorFormat::Uyvy),
        _ => None,
    }
}

/// What [`Camera`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Whole frames dequeued.
    pub frames: u64,
    /// Frames the driver marked damaged (`V4L2_BUF_FLAG_ERROR`) or delivered short: given
    /// back unseen.
    pub damaged: u64,
    /// Frames the camera dropped (gaps in its sequence numbers: no buffer was free).
    pub dropped: u64,
}

/// A filled capture buffer, the application's until [`Camera::requeue`].
#[derive(Debug)]
pub struct Captured {
    index: u32,
    /// The driver's timestamp (µs, `CLOCK_MONOTONIC` for UVC).
    pub pts_us: u64,
    /// The driver's frame number.
    pub sequence: u32,
}

/// A V4L2 camera capturing into NVMM surfaces (module docs).
pub struct Camera<D: Device> {
    dev: D,
    buffers: Vec<CpuMappedSurface>,
    /// Buffer lengths as `VIDIOC_QUERYBUF` gave them (queued back with each buffer).
    lengths: Vec<u32>,
    queued: Vec<bool>,
    format: CameraFormat,
    next_sequence: Option<u32>,
    stats: CaptureStats,
}

impl<D: Device> std::fmt::Debug for Camera<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Camera")
            .field("format", &self.format)
            .field("buffers", &self.buffers.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl<D: Device> Camera<D> {
    /// Sets the camera up as the sample does and starts streaming.
    pub fn open(
        mut dev: D,
        config: &CameraConfig,
        lib: &Arc<NvBufSurfaceLib>,
    ) -> Result<Camera<D>, CameraError> {
        let mut cap = sys::Capability::default();
        call(&mut dev, Request::QueryCap(&mut cap))?;
        let caps = if cap.capabilities & sys::CAP_DEVICE_CAPS != 0 {
            cap.device_caps
        } else {
            cap.capabilities
        };
        if caps & sys::CAP_VIDEO_CAPTURE == 0 || caps & sys::CAP_STREAMING == 0 {
            return Err(CameraError::NotCapture(caps));
        }
        if surface_format(config.pixelformat).is_none() {
            return Err(CameraError::Format(fourcc_name(config.pixelformat)));
        }
        let mut pix = set_format(&mut dev, config.width, config.height, config.pixelformat, 0)?;
        let Some(color) = surface_format(pix.pixelformat) else {
            return Err(CameraError::Format(fourcc_name(pix.pixelformat)));
        };
        if (pix.width, pix.height) != (config.width, config.height) {
            tracing::warn!(
                asked = %format!("{}x{}", config.width, config.height),
                got = %format!("{}x{}", pix.width, pix.height),
                "camera: the driver chose another size"
            );
        }
        if pix.width < 2 || pix.height < 2 || pix.width > 8192 || pix.height > 8192 {
            return Err(CameraError::Protocol {
                ioctl: "VIDIOC_G_FMT",
                detail: format!("a {}x{} frame", pix.width, pix.height),
            });
        }
        let spec = SurfaceSpec {
            width: pix.width,
            height: pix.height,
            format: color,
            layout: Layout::Pitch,
            mem: MemType::SurfaceArray,
            tag: Tag::Camera,
        };
        let count = config.buffers.max(2);
        let mut surfaces = (0..count)
            .map(|_| Surface::new(lib, &spec))
            .collect::<Result<Vec<_>, _>>()?;
        let plane = surfaces[0].plane(0)?;
        if plane.pitch != pix.bytesperline {
            // The driver writes `bytesperline`-byte rows: ask for the surface's pitch.
            pix = set_format(
                &mut dev,
                pix.width,
                pix.height,
                pix.pixelformat,
                plane.pitch,
            )?;
            if plane.pitch != pix.bytesperline
                || (pix.width, pix.height) != (spec.width, spec.height)
            {
                return Err(CameraError::Pitch {
                    camera: pix.bytesperline,
                    surface: plane.pitch,
                    width: spec.width,
                    height: spec.height,
                });
            }
        }
        if plane.offset != 0 {
            return Err(CameraError::Offset(plane.offset));
        }
        if plane.size < pix.sizeimage || pix.sizeimage < pix.bytesperline * pix.height {
            return Err(CameraError::Size {
                camera: pix.sizeimage,
                surface: plane.size,
            });
        }
        // After the last S_FMT: a format change may reset the rate.
        let fps = frame_rate(&mut dev, config.fps);
        let mut rb = sys::RequestBuffers {
            count,
            type_: CAPTURE,
            memory: DMABUF,
            ..Default::default()
        };
        match dev.ioctl(Request::RequestBuffers(&mut rb)) {
            Ok(()) => {}
            Err(e) if e.0 == libc::EINVAL => return Err(CameraError::NoDmaBuf(e)),
            Err(e) => return Err(classify("VIDIOC_REQBUFS", e)),
        }
        if rb.count < 2 || rb.count > count {
            return Err(CameraError::Protocol {
                ioctl: "VIDIOC_REQBUFS",
                detail: format!("{} buffers for the {count} asked", rb.count),
            });
        }
        surfaces.truncate(rb.count as usize);
        let mut buffers = Vec::with_capacity(surfaces.len());
        for s in surfaces {
            buffers.push(s.into_cpu_mapped().map_err(|(_, e)| e)?);
        }
        let format = CameraFormat {
            pixelformat: pix.pixelformat,
            width: pix.width,
            height: pix.height,
            bytesperline: pix.bytesperline,
            sizeimage: pix.sizeimage,
            fps,
        };
        let n = buffers.len();
        let mut camera = Camera {
            dev,
            buffers,
            lengths: vec![0; n],
            queued: vec![false; n],
            format,
            next_sequence: None,
            stats: CaptureStats::default(),
        };
        for index in 0..n as u32 {
            let mut buf = sys::Buffer::new(CAPTURE, DMABUF, index);
            call(&mut camera.dev, Request::QueryBuffer(&mut buf, &mut []))?;
            camera.lengths[index as usize] = buf.length;
            // vb2 imports the DMA-buf here (attach, map): a driver that cannot map NVMM
            // refuses the buffer.
            match camera.queue(index) {
                Err(CameraError::Ioctl { errno, .. })
                    if errno.0 == libc::EINVAL || errno.0 == libc::EFAULT =>
                {
                    return Err(CameraError::NoDmaBuf(errno));
                }
                other => other?,
            }
        }
        call(&mut camera.dev, Request::StreamOn(CAPTURE))?;
        Ok(camera)
    }

    /// The format the camera agreed to.
    pub fn format(&self) -> CameraFormat {
        self.format
    }

    /// Counters so far.
    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    /// The next whole frame, or `None` when the camera has none yet. Damaged frames go
    /// back to the camera unseen (counted).
    pub fn dequeue(&mut self) -> Result<Option<Captured>, CameraError> {
        loop {
            let mut buf = sys::Buffer::new(CAPTURE, DMABUF, 0);
            match self.dev.ioctl(Request::DequeueBuffer(&mut buf, &mut [])) {
                Ok(()) => {}
                Err(e) if e.0 == libc::EAGAIN => return Ok(None),
                Err(e) => return Err(classify("VIDIOC_DQBUF", e)),
            }
            let index = buf.index;
            if !self.queued.get(index as usize).copied().unwrap_or(false) {
                return Err(CameraError::Protocol {
                    ioctl: "VIDIOC_DQBUF",
                    detail: format!("buffer {index}, which was not queued"),
                });
            }
            self.queued[index as usize] = false;
            if let Some(next) = self.next_sequence {
                self.stats.dropped += u64::from(buf.sequence.wrapping_sub(next).min(1 << 20));
            }
            self.next_sequence = Some(buf.sequence.wrapping_add(1));
            if buf.flags & sys::BUF_FLAG_ERROR != 0 || buf.bytesused < self.format.sizeimage {
                self.stats.damaged += 1;
                self.queue(index)?;
                continue;
            }
            self.stats.frames += 1;
            return Ok(Some(Captured {
                index,
                pts_us: buf.timestamp_us(),
                sequence: buf.sequence,
            }));
        }
    }

    /// The surface holding `frame`, synced for the device: what the driver wrote with the
    /// CPU is visible to the VIC (`NvBufSurfaceSyncForDevice`).
    pub fn surface_for_device(&self, frame: &Captured) -> Result<&Surface, CameraError> {
        let buffer = &self.buffers[frame.index as usize];
        buffer.sync_for_device()?;
        Ok(buffer.surface())
    }

    /// Gives the buffer back to the camera.
    pub fn requeue(&mut self, frame: Captured) -> Result<(), CameraError> {
        self.queue(frame.index)
    }

    /// Waits at most `timeout_ms` for a frame (or an error: a camera gone).
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), CameraError> {
        self.dev.wait(timeout_ms).map_err(|e| classify("poll", e))
    }

    fn queue(&mut self, index: u32) -> Result<(), CameraError> {
        let i = index as usize;
        let mut buf = sys::Buffer::new(CAPTURE, DMABUF, index);
        buf.m = self.buffers[i].surface().fd() as u32 as u64;
        buf.length = self.lengths[i];
        call(&mut self.dev, Request::QueueBuffer(&mut buf, &mut []))?;
        self.queued[i] = true;
        Ok(())
    }
}

impl<D: Device> Drop for Camera<D> {
    fn drop(&mut self) {
        // The driver lets go of the DMA-bufs before the surfaces are destroyed.
        let _ = self.dev.ioctl(Request::StreamOff(CAPTURE));
        let mut rb = sys::RequestBuffers {
            count: 0,
            type_: CAPTURE,
            memory: DMABUF,
            ..Default::default()
        };
        let _ = self.dev.ioctl(Request::RequestBuffers(&mut rb));
    }
}

/// `VIDIOC_S_FMT` then `VIDIOC_G_FMT`: what the driver agreed to.
fn set_format<D: Device>(
    dev: &mut D,
    width: u32,
    height: u32,
    pixelformat: u32,
    bytesperline: u32,
) -> Result<sys::PixFormat, CameraError> {
    let mut fmt = sys::Format::new(CAPTURE);
    fmt.set_pix(sys::PixFormat {
        width,
        height,
        pixelformat,
        field: sys::FIELD_NONE,
        bytesperline,
        ..Default::default()
    });
    call(dev, Request::SetFormat(&mut fmt))?;
    let mut got = sys::Format::new(CAPTURE);
    call(dev, Request::GetFormat(&mut got))?;
    Ok(got.pix())
}

/// Asks for `fps` (unless (0, _)) and reads back what the camera runs at; neither is
/// fatal (some cameras have one rate and no `S_PARM`).
fn frame_rate<D: Device>(dev: &mut D, fps: (u32, u32)) -> (u32, u32) {
    if fps.0 > 0 {
        let mut parm = sys::StreamParm::frame_rate(CAPTURE, fps.0, fps.1.max(1));
        if let Err(e) = dev.ioctl(Request::SetParm(&mut parm)) {
            tracing::debug!(error = %e, "camera: VIDIOC_S_PARM refused; its own rate");
        }
    }
    let mut parm = sys::StreamParm::frame_rate(CAPTURE, 0, 1);
    match dev.ioctl(Request::GetParm(&mut parm)) {
        // A frame interval of n/d seconds is d/n frames per second.
        Ok(()) if parm.timeperframe.numerator > 0 && parm.timeperframe.denominator > 0 => {
            (parm.timeperframe.denominator, parm.timeperframe.numerator)
        }
        _ => (0, 1),
    }
}

/// What [`NvmmCamera`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CameraStats {
    /// The camera's counters.
    pub capture: CaptureStats,
    /// Frames converted by the VIC into work surfaces and lent.
    pub lent: u64,
    /// Times a frame found every work surface with the pipeline (backpressure).
    pub pool_waits: u64,
    /// Finished frames given back unseen for a newer one (the pipeline was behind).
    pub stale: u64,
}

/// A camera whose frames are lent to the pipeline as NVMM work surfaces (module docs).
pub struct NvmmCamera<D: Device> {
    camera: Camera<D>,
    transform: Transform,
    pool: Arc<WorkPool>,
    /// A frame waiting for a work surface.
    waiting: Option<Captured>,
    next_token: u64,
    /// Every work surface is with the pipeline (counted once in `pool_waits`).
    pool_dry: bool,
    stats: CameraStats,
}

impl<D: Device> NvmmCamera<D> {
    /// Opens `device` as `config` asks, with `surfaces` (at least 2) NV12 work
    /// surfaces of its size from `lib`, converted into by `transform`, mapped by `cuda` in
    /// `context`.
    pub fn open(
        device: D,
        config: &CameraConfig,
        lib: &Arc<NvBufSurfaceLib>,
        transform: Transform,
        cuda: Arc<crate::cuda_egl::CudaEglLib>,
        context: Arc<dyn CudaContext>,
        surfaces: usize,
    ) -> Result<NvmmCamera<D>, NvmmError> {
        let camera = Camera::open(device, config, lib)?;
        let f = camera.format();
        // UVC's packed 4:2:2 is BT.601 limited range (the V4L2 default for its sRGB
        // colorspace): the work surfaces keep that matrix and range.
        let spec = work_surface_spec(even(f.width), even(f.height), ColorFormat::Nv12);
        let pool = WorkPool::new(
            work_surfaces(lib, &spec, surfaces.max(2))?,
            &spec,
            cuda,
            context,
        );
        Ok(NvmmCamera {
            camera,
            transform,
            pool,
            waiting: None,
            next_token: 0,
            pool_dry: false,
            stats: CameraStats::default(),
        })
    }

    /// The format the camera agreed to.
    pub fn format(&self) -> CameraFormat {
        self.camera.format()
    }

    /// What it has done so far.
    pub fn stats(&self) -> CameraStats {
        CameraStats {
            capture: self.camera.stats(),
            ..self.stats
        }
    }

    /// The work pool.
    pub fn pool(&self) -> &Arc<WorkPool> {
        &self.pool
    }

    /// A frame waits for a work surface the pipeline still holds.
    pub fn waiting_for_surface(&self) -> bool {
        self.waiting.is_some()
    }

    /// Takes the newest frame the camera has finished, giving older ones (waiting, or
    /// finished since) straight back; it waits for [`NvmmCamera::poll`]. Never blocks.
    pub fn drain(&mut self) -> Result<(), NvmmError> {
        while let Some(newer) = self.camera.dequeue()? {
            if let Some(older) = self.waiting.replace(newer) {
                self.stats.stale += 1;
                self.camera.requeue(older)?;
            }
        }
        Ok(())
    }

    /// The newest frame lent ([`NvmmCamera::drain`]), or `None` when the camera has none
    /// yet or every work surface is with the pipeline. Never blocks. The calling thread
    /// must have the CUDA context current (the mapping is made in it). An error from the
    /// camera ends the capture: a buffer it could not take back stays out.
    pub fn poll(&mut self) -> Result<Option<NvmmFrame>, NvmmError> {
        self.drain()?;
        let Some(frame) = self.waiting.take() else {
            return Ok(None);
        };
        let free = match self.pool.take_free() {
            Ok(free) => free,
            Err(e) => {
                self.waiting = Some(frame);
                return Err(e);
            }
        };
        let Some(mut surface) = free else {
            if !self.pool_dry {
                self.pool_dry = true;
                self.stats.pool_waits += 1;
            }
            self.waiting = Some(frame);
            return Ok(None);
        };
        let converted = match self.camera.surface_for_device(&frame) {
            Ok(src) => self
                .transform
                .apply(src, &mut surface, &TransformSpec::default())
                .map_err(NvmmError::from),
            Err(e) => Err(e.into()),
        };
        let pts_us = frame.pts_us;
        let requeued = self.camera.requeue(frame);
        if converted.is_err() || requeued.is_err() {
            self.pool.put_free(surface);
            // A camera gone says so before what failed with it.
            return Err(match (converted, requeued) {
                (_, Err(e)) if e.is_gone() => e.into(),
                (Err(e), _) => e,
                (Ok(()), Err(e)) => e.into(),
                (Ok(()), Ok(())) => unreachable!("one failed"),
            });
        }
        let token = self.next_token;
        self.next_token += 1;
        let lent = self.pool.lend(surface, token, pts_us)?;
        self.stats.lent += 1;
        self.pool_dry = false;
        Ok(Some(NvmmFrame {
            frame: lent,
            pts_us,
            format: ColorFormat::Nv12,
        }))
    }

    /// Blocks at most `timeout_ms` for a work surface (when a frame waits for one) or the
    /// camera.
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), NvmmError> {
        if self.waiting.is_some() {
            self.pool
                .wait_free(std::time::Duration::from_millis(timeout_ms.max(0) as u64));
            return Ok(());
        }
        Ok(self.camera.wait(timeout_ms)?)
    }
}
