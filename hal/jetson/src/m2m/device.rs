//! The codec device at ioctl granularity: one [`Request`] is one ioctl, typed.
//!
//! The state machines ([`super::Decoder`], [`super::Encoder`]) speak only [`Device`]; the
//! real implementation, [`NodeDevice`], marshals each request into the uAPI structures and
//! calls either libv4l2 (what r36's samples do: `v4l2_open`/`v4l2_ioctl`, which route the
//! calls to NVIDIA's `libv4l2_nvvideocodec.so` plugin — the device node itself is a
//! `/dev/null` char device) or the kernel directly (plain `open`/`ioctl`, for kernel M2M
//! drivers such as `vicodec`). Marshalling lives here and only here: the pointers inside
//! `v4l2_buffer` and `v4l2_ext_controls` never leave this file.

use std::ffi::{CString, c_char, c_int, c_ulong, c_void};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use super::sys;

/// An `errno` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The calling thread's last `errno`.
    pub fn last() -> Errno {
        Errno(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (errno {})",
            std::io::Error::from_raw_os_error(self.0),
            self.0
        )
    }
}

/// One control value for `VIDIOC_S_EXT_CTRLS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtrlValue {
    /// Control id.
    pub id: u32,
    /// 32-bit value (0 for controls that take none).
    pub value: i32,
}

/// One V4L2 ioctl with its typed argument. Buffer requests carry their plane array
/// separately; [`NodeDevice`] links it into `v4l2_buffer.m.planes` for the call.
#[derive(Debug)]
pub enum Request<'a> {
    /// `VIDIOC_QUERYCAP`.
    QueryCap(&'a mut sys::Capability),
    /// `VIDIOC_G_FMT`.
    GetFormat(&'a mut sys::Format),
    /// `VIDIOC_S_FMT`.
    SetFormat(&'a mut sys::Format),
    /// `VIDIOC_REQBUFS`.
    RequestBuffers(&'a mut sys::RequestBuffers),
    /// `VIDIOC_QUERYBUF`.
    QueryBuffer(&'a mut sys::Buffer, &'a mut [sys::Plane]),
    /// `VIDIOC_EXPBUF`.
    ExportBuffer(&'a mut sys::ExportBuffer),
    /// `VIDIOC_QBUF`.
    QueueBuffer(&'a mut sys::Buffer, &'a mut [sys::Plane]),
    /// `VIDIOC_DQBUF`.
    DequeueBuffer(&'a mut sys::Buffer, &'a mut [sys::Plane]),
    /// `VIDIOC_STREAMON` of a buffer type.
    StreamOn(u32),
    /// `VIDIOC_STREAMOFF` of a buffer type.
    StreamOff(u32),
    /// `VIDIOC_SUBSCRIBE_EVENT`.
    SubscribeEvent(&'a sys::EventSubscription),
    /// `VIDIOC_DQEVENT`.
    DequeueEvent(&'a mut sys::Event),
    /// `VIDIOC_G_CTRL`.
    GetControl(&'a mut sys::Control),
    /// `VIDIOC_S_EXT_CTRLS` of 32-bit controls in a class (`ctrl_class`, 0 for none).
    SetControls(u32, &'a [CtrlValue]),
    /// `VIDIOC_G_CROP`.
    GetCrop(&'a mut sys::Crop),
    /// `VIDIOC_G_PARM`.
    GetParm(&'a mut sys::StreamParm),
    /// `VIDIOC_S_PARM`.
    SetParm(&'a mut sys::StreamParm),
    /// `VIDIOC_DECODER_CMD` (kernel decoders' drain; NVIDIA's decoder drains on an empty
    /// output buffer instead).
    DecoderCommand(&'a mut sys::DecoderCmd),
    /// `VIDIOC_G_EXT_CTRLS` of NVIDIA's `V4L2_CID_MPEG_VIDEOENC_METADATA` for capture
    /// buffer `index`: answers whether the packet in it is a key frame.
    EncoderKeyFrame {
        /// Capture buffer index (valid between DQBUF and the next QBUF).
        index: u32,
        /// Set to the metadata's `KeyFrame`.
        key_frame: &'a mut bool,
    },
}

impl Request<'_> {
    /// The ioctl's name, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Request::QueryCap(_) => "VIDIOC_QUERYCAP",
            Request::GetFormat(_) => "VIDIOC_G_FMT",
            Request::SetFormat(_) => "VIDIOC_S_FMT",
            Request::RequestBuffers(_) => "VIDIOC_REQBUFS",
            Request::QueryBuffer(..) => "VIDIOC_QUERYBUF",
            Request::ExportBuffer(_) => "VIDIOC_EXPBUF",
            Request::QueueBuffer(..) => "VIDIOC_QBUF",
            Request::DequeueBuffer(..) => "VIDIOC_DQBUF",
            Request::StreamOn(_) => "VIDIOC_STREAMON",
            Request::StreamOff(_) => "VIDIOC_STREAMOFF",
            Request::SubscribeEvent(_) => "VIDIOC_SUBSCRIBE_EVENT",
            Request::DequeueEvent(_) => "VIDIOC_DQEVENT",
            Request::GetControl(_) => "VIDIOC_G_CTRL",
            Request::SetControls(..) => "VIDIOC_S_EXT_CTRLS",
            Request::GetCrop(_) => "VIDIOC_G_CROP",
            Request::GetParm(_) => "VIDIOC_G_PARM",
            Request::SetParm(_) => "VIDIOC_S_PARM",
            Request::DecoderCommand(_) => "VIDIOC_DECODER_CMD",
            Request::EncoderKeyFrame { .. } => "VIDIOC_G_EXT_CTRLS(VIDEOENC_METADATA)",
        }
    }
}

/// A V4L2 device, one ioctl at a time: a memory-to-memory codec, or a capture device
/// (a USB camera, [`crate::camera`]).
pub trait Device {
    /// Performs one ioctl.
    fn ioctl(&mut self, request: Request<'_>) -> Result<(), Errno>;
    /// Waits until a buffer or event may be ready (at most `timeout_ms` where the path
    /// supports a timeout).
    fn wait(&mut self, timeout_ms: i32) -> Result<(), Errno>;
}

/// A boxed device is a device (the agent picks the real node or a stand-in at run time).
impl<T: Device + ?Sized> Device for Box<T> {
    fn ioctl(&mut self, request: Request<'_>) -> Result<(), Errno> {
        (**self).ioctl(request)
    }
    fn wait(&mut self, timeout_ms: i32) -> Result<(), Errno> {
        (**self).wait(timeout_ms)
    }
}

type V4l2Open = unsafe extern "C" fn(*const c_char, c_int, ...) -> c_int;
type V4l2Close = unsafe extern "C" fn(c_int) -> c_int;
type V4l2Ioctl = unsafe extern "C" fn(c_int, c_ulong, ...) -> c_int;

/// libv4l2's entry points, resolved at run time.
struct Libv4l2 {
    close: V4l2Close,
    ioctl: V4l2Ioctl,
    _lib: libloading::Library,
}

/// How a [`NodeDevice`] reaches its driver.
enum Path_ {
    /// Through libv4l2 and its plugins (Jetson).
    Libv4l2(Libv4l2),
    /// Plain syscalls (kernel M2M drivers).
    Kernel,
}

/// Why a device could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// libv4l2 could not be loaded or lacks a symbol.
    #[error("cannot load {library}: {detail}")]
    Library {
        /// The library tried.
        library: String,
        /// The loader's message.
        detail: String,
    },
    /// No device node of the candidates exists.
    #[error("no codec device node among {0:?}")]
    NoNode(Vec<PathBuf>),
    /// `open` failed.
    #[error("open {path}: {errno}")]
    Open {
        /// The node.
        path: PathBuf,
        /// Why.
        errno: Errno,
    },
}

/// A codec device node opened for real.
pub struct NodeDevice {
    fd: RawFd,
    path: PathBuf,
    via: Path_,
}

/// The library r36's samples link (`-lv4l2`); on Jetson Linux it loads NVIDIA's plugins
/// from its plugin directory (`libv4l/plugins/nv/libv4l2_nvvideocodec.so`).
pub const LIBV4L2: &str = "libv4l2.so.0";

/// The decoder nodes r36's `NvVideoDecoder::createVideoDecoder` tries, in its order.
pub const DECODER_NODES: [&str; 2] = ["/dev/nvhost-nvdec", "/dev/v4l2-nvdec"];
/// The encoder nodes r36's `NvVideoEncoder::createVideoEncoder` tries, in its order.
pub const ENCODER_NODES: [&str; 2] = ["/dev/nvhost-msenc", "/dev/v4l2-nvenc"];

impl NodeDevice {
    /// Opens the first existing node of `candidates` through libv4l2, as r36's
    /// `NvV4l2Element` does (`v4l2_open(node, O_RDWR | flags)`), non-blocking.
    pub fn open_nvidia(candidates: &[&str]) -> Result<NodeDevice, OpenError> {
        let path = candidates
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| OpenError::NoNode(candidates.iter().map(PathBuf::from).collect()))?;
        let lib_err = |detail: String| OpenError::Library {
            library: LIBV4L2.into(),
            detail,
        };
        // SAFETY: loading libv4l2 runs its constructors, which only set up plugin state.
        let lib =
            unsafe { libloading::Library::new(LIBV4L2) }.map_err(|e| lib_err(e.to_string()))?;
        // SAFETY: the types match libv4l2.h's prototypes (variadic open/ioctl).
        let (open, close, ioctl) = unsafe {
            let open: V4l2Open = *lib
                .get::<V4l2Open>(b"v4l2_open\0")
                .map_err(|e| lib_err(e.to_string()))?;
            let close: V4l2Close = *lib
                .get::<V4l2Close>(b"v4l2_close\0")
                .map_err(|e| lib_err(e.to_string()))?;
            let ioctl: V4l2Ioctl = *lib
                .get::<V4l2Ioctl>(b"v4l2_ioctl\0")
                .map_err(|e| lib_err(e.to_string()))?;
            (open, close, ioctl)
        };
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| OpenError::NoNode(vec![path.clone()]))?;
        // SAFETY: `c` is a valid NUL-terminated path; flags are plain ints.
        let fd = unsafe { open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(OpenError::Open {
                path,
                errno: Errno::last(),
            });
        }
        Ok(NodeDevice {
            fd,
            path,
            via: Path_::Libv4l2(Libv4l2 {
                close,
                ioctl,
                _lib: lib,
            }),
        })
    }

    /// Opens a kernel V4L2 M2M node with plain `open` (non-blocking).
    pub fn open_kernel(path: &Path) -> Result<NodeDevice, OpenError> {
        let c = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| OpenError::NoNode(vec![path.to_path_buf()]))?;
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(OpenError::Open {
                path: path.to_path_buf(),
                errno: Errno::last(),
            });
        }
        Ok(NodeDevice {
            fd,
            path: path.to_path_buf(),
            via: Path_::Kernel,
        })
    }

    /// The node opened.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn raw(&mut self, nr: u64, arg: *mut c_void) -> Result<(), Errno> {
        let ret = match &self.via {
            // SAFETY: `arg` points to the structure `nr` encodes (built by `ioctl` below),
            // alive for the call; libv4l2 forwards it to the plugin or the kernel.
            Path_::Libv4l2(l) => unsafe { (l.ioctl)(self.fd, nr as c_ulong, arg) },
            // SAFETY: as above, straight to the kernel.
            Path_::Kernel => unsafe { libc::ioctl(self.fd, nr as _, arg) },
        };
        if ret < 0 { Err(Errno::last()) } else { Ok(()) }
    }

    fn buffer_call(
        &mut self,
        nr: u64,
        buf: &mut sys::Buffer,
        planes: &mut [sys::Plane],
    ) -> Result<(), Errno> {
        if !sys::is_multiplanar(buf.type_) {
            // Single-planar: `m` is the buffer's own offset or DMA-buf fd, `length` its
            // size, both as the caller set them.
            return self.raw(nr, (buf as *mut sys::Buffer).cast());
        }
        buf.m = planes.as_mut_ptr() as u64;
        buf.length = planes.len() as u32;
        let r = self.raw(nr, (buf as *mut sys::Buffer).cast());
        buf.m = 0; // the pointer is not kept beyond the call
        r
    }

    fn ext_controls(
        &mut self,
        nr: u64,
        class: u32,
        list: &mut [sys::ExtControl],
    ) -> Result<(), Errno> {
        let mut ctrls = sys::ExtControls {
            which: class,
            count: list.len() as u32,
            error_idx: 0,
            request_fd: 0,
            reserved: [0],
            controls: list.as_mut_ptr(),
        };
        self.raw(nr, (&mut ctrls as *mut sys::ExtControls).cast())
    }
}

impl Device for NodeDevice {
    fn ioctl(&mut self, request: Request<'_>) -> Result<(), Errno> {
        fn p<T>(r: &mut T) -> *mut c_void {
            (r as *mut T).cast()
        }
        match request {
            Request::QueryCap(c) => self.raw(sys::VIDIOC_QUERYCAP, p(c)),
            Request::GetFormat(f) => self.raw(sys::VIDIOC_G_FMT, p(f)),
            Request::SetFormat(f) => self.raw(sys::VIDIOC_S_FMT, p(f)),
            Request::RequestBuffers(r) => self.raw(sys::VIDIOC_REQBUFS, p(r)),
            Request::QueryBuffer(b, pl) => self.buffer_call(sys::VIDIOC_QUERYBUF, b, pl),
            Request::ExportBuffer(e) => self.raw(sys::VIDIOC_EXPBUF, p(e)),
            Request::QueueBuffer(b, pl) => self.buffer_call(sys::VIDIOC_QBUF, b, pl),
            Request::DequeueBuffer(b, pl) => self.buffer_call(sys::VIDIOC_DQBUF, b, pl),
            Request::StreamOn(t) => self.raw(sys::VIDIOC_STREAMON, p(&mut (t as i32))),
            Request::StreamOff(t) => self.raw(sys::VIDIOC_STREAMOFF, p(&mut (t as i32))),
            Request::SubscribeEvent(s) => self.raw(sys::VIDIOC_SUBSCRIBE_EVENT, p(&mut s.clone())),
            Request::DequeueEvent(e) => self.raw(sys::VIDIOC_DQEVENT, p(e)),
            Request::GetControl(c) => self.raw(sys::VIDIOC_G_CTRL, p(c)),
            Request::SetControls(class, values) => {
                let mut list: Vec<sys::ExtControl> = values
                    .iter()
                    .map(|v| sys::ExtControl {
                        id: v.id,
                        size: 0,
                        reserved2: 0,
                        value: v.value as u32 as u64,
                    })
                    .collect();
                self.ext_controls(sys::VIDIOC_S_EXT_CTRLS, class, &mut list)
            }
            Request::GetCrop(c) => self.raw(sys::VIDIOC_G_CROP, p(c)),
            Request::GetParm(s) => self.raw(sys::VIDIOC_G_PARM, p(s)),
            Request::SetParm(s) => self.raw(sys::VIDIOC_S_PARM, p(s)),
            Request::DecoderCommand(d) => self.raw(sys::VIDIOC_DECODER_CMD, p(d)),
            Request::EncoderKeyFrame { index, key_frame } => {
                let mut out = Box::new(sys::NvEncOutputMetadata { bytes: [0; 1024] });
                let mut meta = sys::NvVideoMetadata {
                    video_dec_header_error_metadata: std::ptr::null_mut(),
                    video_dec_metadata: std::ptr::null_mut(),
                    video_enc_metadata: out.bytes.as_mut_ptr(),
                    video_enc_metadata_mv: std::ptr::null_mut(),
                    buffer_index: index,
                    reserved: [0; 4],
                };
                // As NvVideoEncoder::getMetadata: `control.string = (char *)&metadata`.
                let mut list = [sys::ExtControl {
                    id: sys::CID_MPEG_VIDEOENC_METADATA,
                    size: 0,
                    reserved2: 0,
                    value: (&mut meta as *mut sys::NvVideoMetadata) as u64,
                }];
                self.ext_controls(sys::VIDIOC_G_EXT_CTRLS, sys::CTRL_CLASS_MPEG, &mut list)?;
                *key_frame = out.key_frame();
                Ok(())
            }
        }
    }

    fn wait(&mut self, timeout_ms: i32) -> Result<(), Errno> {
        match &self.via {
            // The node is /dev/null: poll(2) on it says nothing. NVIDIA's pseudo-poll
            // (V4L2_CID_MPEG_VIDEO_DEVICE_POLL, as the r36 decode sample's poll thread)
            // blocks inside the library until a plane or event is ready; it has no timeout.
            Path_::Libv4l2(_) => {
                let mut poll = sys::NvDevicePoll {
                    req_events: (libc::POLLIN | libc::POLLOUT | libc::POLLERR | libc::POLLPRI)
                        as u16,
                    resp_events: 0,
                };
                let mut list = [sys::ExtControl {
                    id: sys::CID_MPEG_VIDEO_DEVICE_POLL,
                    size: 0,
                    reserved2: 0,
                    value: (&mut poll as *mut sys::NvDevicePoll) as u64,
                }];
                // No control class, as NvVideoDecoder::DevicePoll (memset ctrls).
                self.ext_controls(sys::VIDIOC_S_EXT_CTRLS, 0, &mut list)
            }
            Path_::Kernel => {
                let mut pfd = libc::pollfd {
                    fd: self.fd,
                    events: libc::POLLIN | libc::POLLOUT | libc::POLLPRI,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                let ret = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
                match ret {
                    // A signal cut the wait short: the caller polls again.
                    r if r < 0 && Errno::last().0 == libc::EINTR => Ok(()),
                    r if r < 0 => Err(Errno::last()),
                    _ => Ok(()),
                }
            }
        }
    }
}

impl Drop for NodeDevice {
    fn drop(&mut self) {
        match &self.via {
            // SAFETY: `fd` came from v4l2_open and is closed once.
            Path_::Libv4l2(l) => unsafe {
                (l.close)(self.fd);
            },
            // SAFETY: `fd` came from open and is closed once.
            Path_::Kernel => unsafe {
                libc::close(self.fd);
            },
        }
    }
}
