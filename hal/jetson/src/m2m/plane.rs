//! What both state machines do to a plane: call an ioctl and name the plane in the error,
//! set up MMAP buffers (REQBUFS, QUERYBUF, EXPBUF, mmap of the exported fd — the
//! `NvV4l2ElementPlane::setupPlane` + `NvBuffer::map` sequence), read formats.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

use super::device::{Device, Errno, Request};
use super::{M2mError, sys};

/// Plane names for errors.
pub(crate) fn plane_name(type_: u32) -> &'static str {
    match type_ {
        sys::BUF_TYPE_VIDEO_OUTPUT_MPLANE => "output plane",
        sys::BUF_TYPE_VIDEO_CAPTURE_MPLANE => "capture plane",
        _ => "device",
    }
}

/// Performs `request`, turning a failure into an [`M2mError`] naming the ioctl and plane.
pub(crate) fn call<D: Device>(
    dev: &mut D,
    plane: &'static str,
    request: Request<'_>,
) -> Result<(), M2mError> {
    let ioctl = request.name();
    dev.ioctl(request)
        .map_err(|errno| classify(ioctl, plane, errno))
}

/// `ENODEV` is the device going away; everything else is an ioctl failure.
pub(crate) fn classify(ioctl: &'static str, plane: &'static str, errno: Errno) -> M2mError {
    if errno.0 == libc::ENODEV {
        M2mError::Gone { ioctl }
    } else {
        M2mError::Ioctl {
            ioctl,
            plane,
            errno,
        }
    }
}

/// A decoded picture's layout: the capture format after a resolution change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameFormat {
    /// V4L2 pixel format (`NM12` for NV12M ...).
    pub pixelformat: u32,
    /// Coded width (buffer width).
    pub width: u32,
    /// Coded height.
    pub height: u32,
    /// Per plane: (bytes per line, plane size).
    pub planes: Vec<(u32, u32)>,
    /// The visible rectangle (`VIDIOC_G_CROP`): the display resolution.
    pub visible: sys::Rect,
    /// V4L2 colorspace (`V4L2_COLORSPACE_*`), for picking BT.601/709 conversion.
    pub colorspace: u32,
    /// V4L2 quantization (0: default/limited, 1: full range).
    pub quantization: u8,
}

impl FrameFormat {
    pub(crate) fn from_format(
        f: &sys::Format,
        visible: sys::Rect,
    ) -> Result<FrameFormat, M2mError> {
        let p = f.pix_mp();
        let n = p.num_planes as usize;
        let plane_fmt = p.plane_fmt;
        if n == 0 || n > plane_fmt.len() {
            return Err(M2mError::Protocol {
                ioctl: "VIDIOC_G_FMT",
                detail: format!("{n} planes"),
            });
        }
        Ok(FrameFormat {
            pixelformat: p.pixelformat,
            width: p.width,
            height: p.height,
            planes: plane_fmt[..n]
                .iter()
                .map(|pf| (pf.bytesperline, pf.sizeimage))
                .collect(),
            visible,
            colorspace: p.colorspace,
            quantization: p.quantization,
        })
    }
}

/// One plane of an MMAP buffer, exported as a DMA-buf and mapped into this process.
pub(crate) struct MappedPlane {
    fd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; access goes through
// &self/&mut self.
unsafe impl Send for MappedPlane {}
// SAFETY: shared access only reads (copies out); writing needs &mut self.
unsafe impl Sync for MappedPlane {}

impl MappedPlane {
    fn map(
        fd: OwnedFd,
        len: usize,
        offset: u32,
        plane: &'static str,
        index: u32,
    ) -> Result<MappedPlane, M2mError> {
        let map_err = |errno| M2mError::Map {
            plane,
            index,
            len,
            errno,
        };
        if len == 0 {
            return Err(map_err(Errno(libc::EINVAL)));
        }
        // SAFETY: a fresh shared mapping of an fd we own; the kernel validates len/offset.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(map_err(Errno::last()));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or(map_err(Errno(libc::EFAULT)))?;
        Ok(MappedPlane { fd, ptr, len })
    }

    pub(crate) fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Copies `data` to the start of the buffer.
    pub(crate) fn write(&mut self, data: &[u8]) {
        let n = data.len().min(self.len);
        // SAFETY: `ptr..ptr+len` is our live mapping; `n <= len`; `data` cannot overlap a
        // mapping we created.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr(), n) };
    }

    /// Copies the first `n` bytes (at most the buffer's length) out.
    pub(crate) fn read(&self, n: usize) -> Vec<u8> {
        let n = n.min(self.len);
        // SAFETY: `ptr..ptr+len` is our live mapping and `n <= len`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), n) }.to_vec()
    }
}

impl Drop for MappedPlane {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `map`, once.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// `VIDIOC_REQBUFS` for `count` buffers; returns how many the driver gave.
pub(crate) fn request_buffers<D: Device>(
    dev: &mut D,
    type_: u32,
    memory: u32,
    count: u32,
) -> Result<u32, M2mError> {
    let mut req = sys::RequestBuffers {
        count,
        type_,
        memory,
        ..Default::default()
    };
    call(dev, plane_name(type_), Request::RequestBuffers(&mut req))?;
    if count > 0 && req.count == 0 {
        return Err(M2mError::Protocol {
            ioctl: "VIDIOC_REQBUFS",
            detail: format!("0 buffers for {count} asked"),
        });
    }
    Ok(req.count)
}

/// Sets up `count` MMAP buffers of one plane each on `type_`, exported and mapped.
pub(crate) fn setup_mmap<D: Device>(
    dev: &mut D,
    type_: u32,
    count: u32,
) -> Result<Vec<MappedPlane>, M2mError> {
    let plane = plane_name(type_);
    let got = request_buffers(dev, type_, sys::MEMORY_MMAP, count)?;
    let mut out = Vec::with_capacity(got as usize);
    for index in 0..got {
        let mut buf = sys::Buffer::new(type_, sys::MEMORY_MMAP, index);
        let mut planes = [sys::Plane::default(); 1];
        call(dev, plane, Request::QueryBuffer(&mut buf, &mut planes))?;
        let mut exp = sys::ExportBuffer {
            type_,
            index,
            plane: 0,
            flags: libc::O_CLOEXEC as u32,
            fd: -1,
            ..Default::default()
        };
        call(dev, plane, Request::ExportBuffer(&mut exp))?;
        if exp.fd < 0 {
            return Err(M2mError::Protocol {
                ioctl: "VIDIOC_EXPBUF",
                detail: format!("fd {}", exp.fd),
            });
        }
        // SAFETY: EXPBUF returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(exp.fd) };
        out.push(MappedPlane::map(
            fd,
            planes[0].length as usize,
            planes[0].m_u32(),
            plane,
            index,
        )?);
    }
    Ok(out)
}

/// Frees a plane's buffers: STREAMOFF then REQBUFS(0), as `NvV4l2ElementPlane::deinitPlane`.
pub(crate) fn teardown<D: Device>(dev: &mut D, type_: u32, memory: u32) -> Result<(), M2mError> {
    call(dev, plane_name(type_), Request::StreamOff(type_))?;
    request_buffers(dev, type_, memory, 0).map(|_| ())
}

/// A non-blocking DQBUF: `Ok(None)` on EAGAIN. The returned flags include
/// `V4L2_BUF_FLAG_LAST` even on EAGAIN (what r36's sample checks for EOS).
pub(crate) fn dequeue<D: Device>(
    dev: &mut D,
    type_: u32,
    memory: u32,
    planes: &mut [sys::Plane],
) -> Result<Result<sys::Buffer, u32>, M2mError> {
    let mut buf = sys::Buffer::new(type_, memory, 0);
    match dev.ioctl(Request::DequeueBuffer(&mut buf, planes)) {
        Ok(()) => Ok(Ok(buf)),
        Err(e) if e.0 == libc::EAGAIN => Ok(Err(buf.flags)),
        Err(e) => Err(classify("VIDIOC_DQBUF", plane_name(type_), e)),
    }
}
