//! The one frame type that flows through every pipeline.
//!
//! A [`Frame`] is a pooled surface plus the facts needed to interpret it (layout, stream,
//! timestamps) and a small typed metadata bag that stages fill in. Nothing here allocates
//! per frame: the surface comes from a [`crate::SurfacePool`] and the stream id is a shared
//! `Arc<str>`.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::pixel::{Plane, PlaneMut};
use crate::pool::PooledSurface;

/// Row alignment of every plane we allocate: keeps rows on cache-line and SIMD boundaries.
pub const STRIDE_ALIGN: usize = 64;

/// Pixel layouts a surface can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Planar 4:2:0: Y plane, then U, then V (what libavcodec's H.264 decoder and x264 use).
    I420,
    /// Semi-planar 4:2:0: Y plane, then interleaved UV (what NVDEC and Jetson's NVMM use).
    Nv12,
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PixelFormat::I420 => "i420",
            PixelFormat::Nv12 => "nv12",
        })
    }
}

/// Geometry of a surface: where each plane starts and how long its rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    /// Pixel format.
    pub format: PixelFormat,
    /// Visible width in pixels.
    pub width: usize,
    /// Visible height in pixels.
    pub height: usize,
    /// Bytes per row of each plane (unused planes are 0).
    pub strides: [usize; 3],
    /// Byte offset of each plane in the surface.
    pub offsets: [usize; 3],
    /// Total bytes of the surface.
    pub size: usize,
}

const fn align(v: usize, a: usize) -> usize {
    v.div_ceil(a) * a
}

impl FrameLayout {
    /// The layout this HAL uses for a `width`×`height` frame of `format` (rows 64-byte aligned).
    pub fn new(format: PixelFormat, width: usize, height: usize) -> Self {
        let cw = width.div_ceil(2);
        let ch = height.div_ceil(2);
        let ys = align(width, STRIDE_ALIGN);
        let y_size = ys * height;
        match format {
            PixelFormat::I420 => {
                let cs = align(cw, STRIDE_ALIGN);
                FrameLayout {
                    format,
                    width,
                    height,
                    strides: [ys, cs, cs],
                    offsets: [0, y_size, y_size + cs * ch],
                    size: y_size + 2 * cs * ch,
                }
            }
            PixelFormat::Nv12 => {
                let cs = align(cw * 2, STRIDE_ALIGN);
                FrameLayout {
                    format,
                    width,
                    height,
                    strides: [ys, cs, 0],
                    offsets: [0, y_size, 0],
                    size: y_size + cs * ch,
                }
            }
        }
    }

    /// Width and height of the chroma planes, in chroma samples.
    pub fn chroma_size(&self) -> (usize, usize) {
        (self.width.div_ceil(2), self.height.div_ceil(2))
    }

    /// Number of planes.
    pub fn planes(&self) -> usize {
        match self.format {
            PixelFormat::I420 => 3,
            PixelFormat::Nv12 => 2,
        }
    }

    /// Byte length of plane `i`.
    pub fn plane_len(&self, i: usize) -> usize {
        let rows = if i == 0 {
            self.height
        } else {
            self.chroma_size().1
        };
        self.strides[i] * rows
    }
}

/// Identifies one camera / input stream on the device. Cloning is a reference-count bump.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StreamId(Arc<str>);

impl StreamId {
    /// A stream id from its configured name.
    pub fn new(id: &str) -> Self {
        StreamId(Arc::from(id))
    }
    /// The configured name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StreamId({})", &*self.0)
    }
}

/// Per-frame metadata that stages read and write. Small and `Copy`-friendly on purpose; the
/// inference stages of later issues add typed fields (detections, masks, verdicts).
#[derive(Debug, Clone, Copy)]
pub struct FrameMeta {
    /// The compressed picture this frame came from was a keyframe.
    pub keyframe: bool,
    /// The decoder flagged this picture as damaged (concealed errors).
    pub corrupt: bool,
    /// When the frame left the decoder (for end-to-end latency).
    pub decoded_at: Instant,
    /// When the camera captured it, in microseconds since the Unix epoch, where the source
    /// knows (RTSP: from the RTCP sender reports' NTP time). What sensor fusion aligns on.
    pub wallclock_us: Option<i64>,
    /// Objects the inference stages found (detections, tracks, moderated regions).
    pub objects: crate::analytics::ObjectList,
    /// The content-moderation verdict, when a moderation stage flagged the frame.
    pub moderation: Option<crate::analytics::ModerationVerdict>,
    /// A virtual-background stage replaced the background of this frame.
    pub background_replaced: bool,
}

impl FrameMeta {
    /// Metadata of a frame that left its producer at `decoded_at`: nothing known yet.
    pub fn new(decoded_at: Instant) -> Self {
        FrameMeta {
            keyframe: false,
            corrupt: false,
            decoded_at,
            wallclock_us: None,
            objects: Default::default(),
            moderation: None,
            background_replaced: false,
        }
    }
}

/// A frame's pixels in GPU memory: an NVDEC output surface on loan from its decoder's pool
/// (the CUDA backend), returned there when dropped, or a surface another API lends
/// ([`aegis_cuda::LentNv12`]: a Jetson's NVMM buffer mapped for CUDA), given back when
/// dropped; and the GPU (with the stream's own CUDA stream) that works on it. Moving one is
/// moving a handle: nothing is allocated per frame.
pub struct DeviceSurface {
    pixels: Option<DevicePixels>,
    gpu: Arc<aegis_cuda::Gpu>,
}

enum DevicePixels {
    Pooled(aegis_cuda::DeviceNv12, Arc<aegis_cuda::DevicePool>),
    Lent(aegis_cuda::LentNv12),
}

impl DevicePixels {
    fn frame(&self) -> &dyn aegis_cuda::Nv12Frame {
        match self {
            DevicePixels::Pooled(f, _) => f,
            DevicePixels::Lent(f) => f,
        }
    }

    fn frame_mut(&mut self) -> &mut dyn aegis_cuda::Nv12Frame {
        match self {
            DevicePixels::Pooled(f, _) => f,
            DevicePixels::Lent(f) => f,
        }
    }
}

impl DeviceSurface {
    /// `nv12`, taken from `pool`, worked on by `gpu`.
    pub fn new(
        nv12: aegis_cuda::DeviceNv12,
        pool: Arc<aegis_cuda::DevicePool>,
        gpu: Arc<aegis_cuda::Gpu>,
    ) -> Self {
        DeviceSurface {
            pixels: Some(DevicePixels::Pooled(nv12, pool)),
            gpu,
        }
    }

    /// A lent frame, worked on by `gpu` (in the lender's CUDA context). When dropped, the
    /// surface waits for `gpu`'s stream before the frame goes back to its lender.
    pub fn lent(nv12: aegis_cuda::LentNv12, gpu: Arc<aegis_cuda::Gpu>) -> Self {
        DeviceSurface {
            pixels: Some(DevicePixels::Lent(nv12)),
            gpu,
        }
    }

    /// The pixels.
    pub fn nv12(&self) -> &dyn aegis_cuda::Nv12Frame {
        self.pixels
            .as_ref()
            .expect("device surface present until dropped")
            .frame()
    }

    /// The pixels, to change in place.
    pub fn nv12_mut(&mut self) -> &mut dyn aegis_cuda::Nv12Frame {
        self.pixels
            .as_mut()
            .expect("device surface present until dropped")
            .frame_mut()
    }

    /// Width and height in pixels.
    pub fn size(&self) -> (usize, usize) {
        let (w, h, _) = self.nv12().geometry();
        (w, h)
    }

    /// The DMA-buf behind lent pixels, when their lender has one (a Jetson's NVMM surface,
    /// which a hardware encoder reads in place); `None` for the CUDA backend's own frames.
    pub fn dmabuf(&self) -> Option<aegis_cuda::DmaBuf> {
        match self.pixels.as_ref()? {
            DevicePixels::Lent(l) => l.dmabuf(),
            DevicePixels::Pooled(..) => None,
        }
    }

    /// Whether another API lends the pixels ([`DeviceSurface::lent`]).
    pub fn is_lent(&self) -> bool {
        matches!(self.pixels, Some(DevicePixels::Lent(_)))
    }

    /// The GPU and stream that process this stream's frames.
    pub fn gpu(&self) -> &Arc<aegis_cuda::Gpu> {
        &self.gpu
    }

    /// The pixels and the GPU at once (a stage needs both, one of them mutably).
    pub fn parts(&mut self) -> (&mut dyn aegis_cuda::Nv12Frame, &aegis_cuda::Gpu) {
        let nv12 = self
            .pixels
            .as_mut()
            .expect("device surface present until dropped")
            .frame_mut();
        (nv12, &self.gpu)
    }
}

impl Drop for DeviceSurface {
    fn drop(&mut self) {
        match self.pixels.take() {
            Some(DevicePixels::Pooled(f, pool)) => pool.release(f),
            Some(DevicePixels::Lent(f)) => {
                // The lender reuses the memory at once: what was queued on it must be done
                // (the kernels do not track a lent frame's uses; a frame that reached the
                // host or an encoder was waited for already, and this is then immediate).
                // A frame whose stream cannot be waited for is kept, never given back.
                match self.gpu.wait_stream() {
                    Ok(()) => drop(f),
                    Err(e) => {
                        tracing::error!(
                            token = f.token(),
                            "a lent frame is kept: its GPU stream cannot be waited for: {e}"
                        );
                        std::mem::forget(f);
                    }
                }
            }
            None => {}
        }
    }
}

/// One video frame in a pooled surface.
pub struct Frame {
    /// Which stream it belongs to.
    pub stream: StreamId,
    /// Sequence number within the stream, from 0, without gaps in what the source emitted.
    pub seq: u64,
    /// Presentation timestamp in microseconds on the stream's timeline (monotonic per stream,
    /// also across file loops).
    pub pts_us: i64,
    /// Nominal duration in microseconds.
    pub duration_us: i64,
    /// Geometry of `surface`.
    pub layout: FrameLayout,
    /// The pixels.
    pub surface: PooledSurface,
    /// Whole-frame copies of the pixels made so far, counted by the code that makes each one
    /// when (and only when) it has copied: libavcodec's picture → I420 conversion and → the
    /// pooled surface ([`crate::codec::VideoDecoder`]), NVDEC's picture → the device surface,
    /// device → host ([`Frame::to_host`]), surface → encoder picture
    /// ([`crate::codec::VideoEncoder::encode`]). Scaled or cropped reads (model inputs,
    /// snapshot JPEGs) make other images and are not counted; a stage's own working copy of
    /// the frame (the virtual background's blur) is not counted yet. Reported as the
    /// `aegis_copies_per_frame` metric once the sinks are done with the frame.
    pub copies: u32,
    /// Stage metadata.
    pub meta: FrameMeta,
    /// Where the pixels are while they are on the GPU (CUDA backend): then `surface` holds
    /// nothing meaningful until [`Frame::to_host`] downloads them. Stages that work on the
    /// device ([`crate::stage::Stage::on_device`]) use this; the pipeline downloads before
    /// the first stage that does not, and before the sinks.
    pub device: Option<DeviceSurface>,
}

impl Frame {
    /// A frame on a fresh surface of `pool` (waiting for one: backpressure), for producers
    /// that write the pixels themselves (scene generators, tests, image inputs). Its
    /// metadata is empty: not a keyframe, not corrupt, no wall-clock time.
    pub fn from_pool(
        pool: &crate::SurfacePool,
        stream: StreamId,
        seq: u64,
        pts_us: i64,
        duration_us: i64,
    ) -> Result<Frame, crate::PoolClosed> {
        Ok(Frame {
            stream,
            seq,
            pts_us,
            duration_us,
            layout: pool.layout(),
            surface: pool.acquire()?,
            copies: 0,
            meta: FrameMeta::new(Instant::now()),
            device: None,
        })
    }

    /// Brings pixels that are on the GPU into `surface` (one download, counted in
    /// `copies` once it has succeeded, and by the GPU) and gives the device surface back;
    /// nothing to do, and nothing counted, for a frame already on the host.
    pub fn to_host(&mut self) -> Result<(), aegis_cuda::CudaError> {
        let Some(dev) = self.device.take() else {
            return Ok(());
        };
        let (w, h) = (self.layout.width, self.layout.height);
        let src = dev.nv12();
        let (sw, sh) = dev.size();
        if self.layout.format != PixelFormat::Nv12 || (sw, sh) != (w, h) {
            return Err(aegis_cuda::CudaError::Size(format!(
                "device frame {sw}x{sh} does not fit the host surface ({} {w}x{h})",
                self.layout.format
            )));
        }
        let [y, uv, _] = self.planes_mut();
        dev.gpu()
            .download_nv12_into(src, y.data, y.stride, uv.data, uv.stride)?;
        self.copies += 1;
        Ok(())
    }

    /// Read-only views of the planes (unused planes are empty).
    pub fn planes(&self) -> [Plane<'_>; 3] {
        let l = &self.layout;
        let data: &[u8] = &self.surface;
        std::array::from_fn(|i| {
            if i < l.planes() {
                Plane {
                    data: &data[l.offsets[i]..l.offsets[i] + l.plane_len(i)],
                    stride: l.strides[i],
                }
            } else {
                Plane {
                    data: &[],
                    stride: 0,
                }
            }
        })
    }

    /// Mutable views of the planes (unused planes are empty).
    pub fn planes_mut(&mut self) -> [PlaneMut<'_>; 3] {
        let l = self.layout;
        let data: &mut [u8] = &mut self.surface;
        let (y, rest) = data.split_at_mut(l.offsets[1]);
        let y = PlaneMut {
            data: &mut y[..l.plane_len(0)],
            stride: l.strides[0],
        };
        match l.format {
            PixelFormat::I420 => {
                let (u, v) = rest.split_at_mut(l.offsets[2] - l.offsets[1]);
                [
                    y,
                    PlaneMut {
                        data: &mut u[..l.plane_len(1)],
                        stride: l.strides[1],
                    },
                    PlaneMut {
                        data: &mut v[..l.plane_len(2)],
                        stride: l.strides[2],
                    },
                ]
            }
            PixelFormat::Nv12 => [
                y,
                PlaneMut {
                    data: &mut rest[..l.plane_len(1)],
                    stride: l.strides[1],
                },
                PlaneMut {
                    data: &mut [],
                    stride: 0,
                },
            ],
        }
    }
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Frame")
            .field("stream", &self.stream)
            .field("seq", &self.seq)
            .field("pts_us", &self.pts_us)
            .field("layout", &self.layout)
            .field("on_device", &self.device.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i420_layout_is_aligned_and_disjoint() {
        let l = FrameLayout::new(PixelFormat::I420, 1280, 720);
        assert_eq!(l.strides, [1280, 640, 640]);
        assert_eq!(l.offsets, [0, 1280 * 720, 1280 * 720 + 640 * 360]);
        assert_eq!(l.size, 1280 * 720 * 3 / 2);
        let odd = FrameLayout::new(PixelFormat::I420, 101, 51);
        assert_eq!(odd.strides[0], 128);
        assert_eq!(odd.chroma_size(), (51, 26));
        assert_eq!(odd.offsets[2] + odd.plane_len(2), odd.size);
    }

    #[test]
    fn nv12_layout_interleaves_chroma() {
        let l = FrameLayout::new(PixelFormat::Nv12, 1920, 1080);
        assert_eq!(l.strides[1], 1920);
        assert_eq!(l.size, 1920 * 1080 * 3 / 2);
        assert_eq!(l.planes(), 2);
    }
}
