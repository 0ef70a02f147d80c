//! Orin's zero-copy frame loop: the hardware decoder's NVMM buffers → the VIC → CUDA on the
//! buffer's EGL mapping → the hardware encoder, with no host copy of a picture anywhere.
//!
//! Per picture, one thread, nothing blocking:
//! 1. the decoder (`m2m::Decoder`, DMABUF capture) fills one of its block-linear NvBufSurfaces
//!    ([`DecoderSurfaces`], as r36's `00_video_decode` allocates them);
//! 2. the VIC converts it (`NvBufSurfTransform`, device to device) into a pitch-linear
//!    NV12 surface of the loop's own pool, scaling if the stream's size changed since the
//!    encoder was opened; the decoder gets its buffer back at once. This is the sample's
//!    own step (it transforms every decoded buffer into a pitch-linear one), and the one
//!    the CUDA kernels need: they address pitch-linear planes, not block-linear tiles;
//! 3. the work surface's EGL image is registered with CUDA and mapped
//!    ([`crate::cuda_egl`]); the caller's [`FrameWork`] (the CUDA backend's kernels, through
//!    [`crate::cuda_egl::MappedNv12::planes`]) changes the pixels in place; the mapping is
//!    undone;
//! 4. the same surface's DMA-buf goes to the encoder's output plane. It returns to the pool
//!    only when the encoder says it has finished reading it (`Encoder::reclaim`).
//!
//! A full pool is backpressure: the next decoded picture waits (its capture buffer stays
//! with the loop, so the decoder stalls and [`NvmmLoop::feed`] answers `false`), nothing is
//! allocated per frame. The pool and the encoder are made at the stream's first format
//! event, at its visible size.
//!
//! Nothing here maps a buffer for the CPU: no `NvBufSurfaceMap` is made, and the tests
//! check exactly that in the stand-in library's call log, along with the bytes the encoder
//! reads being the ones the work wrote.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::cuda_egl::{CudaEglLib, EglFrameError, MappedNv12};
use crate::m2m::{
    CaptureBuffer, DecodedFrame, Decoder, DecoderEvent, Device, EncodedPacket, Encoder,
    EncoderEvent, FrameFormat, InputFrame, M2mError, SurfaceAllocator,
};
use crate::nvbuf::{ColorFormat, Layout, NvBufSurfaceLib, Surface, SurfaceError, SurfaceSpec, Tag};
use crate::transform::{Transform, TransformError, TransformSpec};

/// `V4L2_COLORSPACE_REC709`.
const COLORSPACE_REC709: u32 = 3;
/// `V4L2_QUANTIZATION_FULL_RANGE`.
const QUANTIZATION_FULL_RANGE: u8 = 1;

/// The NV12 variant NvBufSurface uses for a decoded stream's colorimetry (as the r36
/// sample picks it): BT.709 → NV12_709, full-range BT.601 → NV12_ER, else NV12. (BT.709
/// full range has no 8-bit semi-planar CUDA EGL format; it is taken as NV12_709.)
pub fn nv12_for(format: &FrameFormat) -> ColorFormat {
    if format.colorspace == COLORSPACE_REC709 {
        ColorFormat::Nv12Bt709
    } else if format.quantization == QUANTIZATION_FULL_RANGE {
        ColorFormat::Nv12Er
    } else {
        ColorFormat::Nv12
    }
}

/// The decoder's capture surfaces on a Jetson: block-linear NV12 NvBufSurfaces of the
/// visible size, tagged for the decoder (r36 `00_video_decode`'s `NvBufSurf::NvAllocate`).
#[derive(Debug, Clone)]
pub struct DecoderSurfaces {
    lib: Arc<NvBufSurfaceLib>,
}

impl DecoderSurfaces {
    /// Allocates from `lib`.
    pub fn new(lib: Arc<NvBufSurfaceLib>) -> DecoderSurfaces {
        DecoderSurfaces { lib }
    }
}

/// A capture surface: the decoder queues the surface's own fd.
struct DecoderSurface(Surface);

// SAFETY: shared access only reads the surface's fd from the library's parameter block,
// which nothing changes after allocation; the surface is destroyed once, by its owner's
// drop (the capture set, after every frame of it is gone).
unsafe impl Sync for DecoderSurface {}

impl AsFd for DecoderSurface {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the surface owns this fd and keeps it open while it lives (`&self`).
        unsafe { BorrowedFd::borrow_raw(self.0.fd()) }
    }
}

impl SurfaceAllocator for DecoderSurfaces {
    fn allocate(&mut self, format: &FrameFormat, count: u32) -> Result<Vec<CaptureBuffer>, String> {
        let spec = SurfaceSpec {
            layout: Layout::BlockLinear,
            tag: Tag::VideoDecoder,
            ..SurfaceSpec::nvmm(
                format.visible.width,
                format.visible.height,
                nv12_for(format),
            )
        };
        (0..count)
            .map(|_| {
                Surface::new(&self.lib, &spec)
                    .map(|s| Box::new(DecoderSurface(s)) as CaptureBuffer)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }
}

/// The pixel work on one picture, in place, in device memory.
pub trait FrameWork {
    /// Works on `frame` (the CUDA backend's kernels on [`MappedNv12::planes`]) and returns
    /// when the work has *finished* (`Gpu::sync`): the encoder reads the buffer next. On an
    /// error too it returns only once nothing it queued still runs: the mapping is undone
    /// and the surface reused right after.
    fn process(&mut self, frame: &MappedNv12<'_>, pts_us: u64) -> Result<(), String>;
}

/// Why the loop stopped.
#[derive(Debug, thiserror::Error)]
pub enum NvmmError {
    /// The decoder or encoder failed.
    #[error("codec: {0}")]
    Codec(#[from] M2mError),
    /// An NvBufSurface call failed.
    #[error("NVMM surface: {0}")]
    Surface(#[from] SurfaceError),
    /// The VIC conversion failed.
    #[error("VIC: {0}")]
    Transform(#[from] TransformError),
    /// CUDA could not map the work surface.
    #[error("CUDA view of the frame: {0}")]
    Cuda(#[from] EglFrameError),
    /// The caller's work failed.
    #[error("frame work at {pts_us} us: {why}")]
    Work {
        /// The picture's timestamp.
        pts_us: u64,
        /// What the work said.
        why: String,
    },
    /// The encoder's output plane has fewer frame buffers (the first number) than the
    /// loop has work surfaces (the second).
    #[error("the encoder takes {0} frames at once, fewer than the loop's {1} work surfaces")]
    EncoderFull(usize, usize),
    /// The encoder ended its stream before the loop asked it to.
    #[error("the encoder ended its stream before the end was queued")]
    EarlyEnd,
    /// Every work surface was lost to the pool after failing to unmap.
    #[error("no work surface is left: each one failed to unmap from CUDA")]
    PoolLost,
    /// The codec broke its protocol.
    #[error("codec protocol: {0}")]
    Protocol(&'static str),
    /// The camera failed (or is gone).
    #[error("camera: {0}")]
    Camera(#[from] crate::camera::CameraError),
}

/// The VIC step of both halves: the decoded picture converted, and scaled if sizes differ,
/// into `dst`, device to device; then the decoder gets its buffer back (the picture is in
/// `dst`). The first failure is returned; `dst` stays the caller's either way.
pub(crate) fn convert_and_release<D: Device>(
    lib: &Arc<NvBufSurfaceLib>,
    transform: &Transform,
    decoder: &mut Decoder<D>,
    frame: DecodedFrame,
    dst: &mut Surface,
) -> Result<(), NvmmError> {
    let converted = {
        // SAFETY: the frame keeps its capture buffer's fd open while it lives.
        let fd = unsafe { BorrowedFd::borrow_raw(frame.fd()) };
        Surface::from_fd(lib, fd)
            .map_err(NvmmError::from)
            .and_then(|src| Ok(transform.apply(&src, dst, &TransformSpec::default())?))
    };
    let released = decoder.release(frame);
    converted.and(released.map_err(NvmmError::from))
}

/// The spec of a pitch-linear NV12 work surface (what the CUDA kernels address).
pub(crate) fn work_surface_spec(width: u32, height: u32, format: ColorFormat) -> SurfaceSpec {
    SurfaceSpec {
        tag: Tag::VideoConvert,
        ..SurfaceSpec::nvmm(width, height, format)
    }
}

/// `n` surfaces of `spec`.
pub(crate) fn work_surfaces(
    lib: &Arc<NvBufSurfaceLib>,
    spec: &SurfaceSpec,
    n: usize,
) -> Result<Vec<Surface>, NvmmError> {
    Ok((0..n)
        .map(|_| Surface::new(lib, spec))
        .collect::<Result<_, _>>()?)
}

/// Settings of [`NvmmLoop`].
#[derive(Debug, Clone, Copy)]
pub struct NvmmConfig {
    /// Pitch-linear work surfaces (at least 2): how many pictures may be between the VIC
    /// and the encoder's return of the buffer. The encoder must take as many output buffers
    /// (`EncoderConfig::input_buffers`), and must give a buffer back before it holds all of
    /// them: an encoder that holds every work surface until it gets one more (a lookahead
    /// as deep as the pool) stalls the loop. Orin's encoder without B-frames gives each
    /// buffer back once it has encoded it.
    pub work_surfaces: usize,
}

impl Default for NvmmConfig {
    fn default() -> NvmmConfig {
        NvmmConfig { work_surfaces: 4 }
    }
}

/// What the loop has done, for the stream's status and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NvmmStats {
    /// Pictures the decoder delivered.
    pub decoded: u64,
    /// VIC conversions (device to device) into work surfaces.
    pub vic_copies: u64,
    /// EGL mappings of work surfaces for CUDA.
    pub cuda_maps: u64,
    /// Frames queued on the encoder.
    pub encoded: u64,
    /// Packets the encoder delivered.
    pub packets: u64,
    /// Pictures that had to wait for a work surface (backpressure).
    pub pool_waits: u64,
}

/// What [`NvmmLoop::step`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Something moved: call again.
    Moved,
    /// Nothing can move until the hardware does: wait on the devices, then call again.
    Idle,
    /// The encoder delivered its last packet after [`NvmmLoop::finish`].
    Done,
}

/// The decoder end both halves share (this loop and [`crate::lend::NvmmDecoder`]): the
/// decoder, and the one decoded picture that may wait for a work surface, its wait counted
/// once.
pub(crate) struct DecodeFront<D: Device> {
    pub(crate) decoder: Decoder<D>,
    waiting: Option<DecodedFrame>,
    /// `waiting` has been counted in `pool_waits`.
    waited: bool,
    ended: bool,
    /// Pictures the decoder delivered.
    pub(crate) decoded: u64,
    /// Pictures that had to wait for a work surface.
    pub(crate) pool_waits: u64,
}

/// What [`DecodeFront::poll`] found.
pub(crate) enum Polled {
    /// The stream's size is known or changed: the caller (re)makes its surfaces.
    Format(FrameFormat),
    /// A picture now waits for a work surface.
    Picture,
    /// The decoder delivered its last picture.
    Ended,
    /// Nothing (or a picture already waits, or the stream ended).
    Nothing,
}

impl<D: Device> DecodeFront<D> {
    pub(crate) fn new(decoder: Decoder<D>) -> DecodeFront<D> {
        DecodeFront {
            decoder,
            waiting: None,
            waited: false,
            ended: false,
            decoded: 0,
            pool_waits: 0,
        }
    }

    /// The decoder's next event, unless a picture already waits or the stream ended.
    pub(crate) fn poll(&mut self) -> Result<Polled, NvmmError> {
        if self.waiting.is_some() || self.ended {
            return Ok(Polled::Nothing);
        }
        Ok(match self.decoder.poll()? {
            Some(DecoderEvent::FormatChanged(format)) => Polled::Format(format),
            Some(DecoderEvent::Frame(frame)) => {
                self.decoded += 1;
                self.waiting = Some(frame);
                Polled::Picture
            }
            Some(DecoderEvent::EndOfStream) => {
                self.ended = true;
                Polled::Ended
            }
            None => Polled::Nothing,
        })
    }

    /// The waiting picture when a surface is free for it; otherwise its wait is counted
    /// (once per picture).
    pub(crate) fn take_waiting(&mut self, surface_free: bool) -> Option<DecodedFrame> {
        self.waiting.as_ref()?;
        if surface_free {
            self.waited = false;
            return self.waiting.take();
        }
        if !self.waited {
            self.waited = true;
            self.pool_waits += 1;
        }
        None
    }

    /// A decoded picture waits for a work surface.
    pub(crate) fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The decoder delivered its last picture.
    pub(crate) fn ended(&self) -> bool {
        self.ended
    }
}

/// Opens the encoder once the picture size is known: (width, height) → encoder.
pub type OpenEncoder<E> = Box<dyn FnMut(u32, u32) -> Result<Encoder<E>, M2mError> + Send>;

/// The decode → VIC → CUDA → encode loop of one stream (module docs).
pub struct NvmmLoop<D: Device, E: Device> {
    front: DecodeFront<D>,
    open_encoder: OpenEncoder<E>,
    encoder: Option<Encoder<E>>,
    lib: Arc<NvBufSurfaceLib>,
    transform: Transform,
    cuda: Arc<CudaEglLib>,
    config: NvmmConfig,
    /// Work surfaces free of the encoder.
    free: Vec<Surface>,
    /// Work surfaces the encoder may still read, by frame number.
    reading: VecDeque<(u64, Surface)>,
    eos_queued: bool,
    done: bool,
    keyframe_requested: bool,
    /// Bytes of a work surface's luma and CbCr planes (what the encoder is told).
    plane_bytes: (u32, u32),
    stats: NvmmStats,
}

impl<D: Device, E: Device> NvmmLoop<D, E> {
    /// The loop over `decoder` (opened with `CaptureMemory::DmaBuf(DecoderSurfaces)`), with
    /// work surfaces from `lib`, conversions by `transform` and CUDA mappings by `cuda`.
    pub fn new(
        decoder: Decoder<D>,
        open_encoder: OpenEncoder<E>,
        lib: Arc<NvBufSurfaceLib>,
        transform: Transform,
        cuda: Arc<CudaEglLib>,
        config: NvmmConfig,
    ) -> NvmmLoop<D, E> {
        NvmmLoop {
            front: DecodeFront::new(decoder),
            open_encoder,
            encoder: None,
            lib,
            transform,
            cuda,
            config,
            free: Vec::new(),
            reading: VecDeque::new(),
            eos_queued: false,
            done: false,
            keyframe_requested: false,
            plane_bytes: (0, 0),
            stats: NvmmStats::default(),
        }
    }

    /// Queues an access unit. `Ok(false)`: the decoder's input is full (backpressure from
    /// the pool or the encoder) — [`NvmmLoop::step`] and retry.
    pub fn feed(&mut self, access_unit: &[u8], pts_us: u64) -> Result<bool, NvmmError> {
        Ok(self.front.decoder.try_feed(access_unit, pts_us)?)
    }

    /// Ends the stream: the decoder drains, then the encoder; `step` says `Done` after the
    /// last packet. `Ok(false)`: no decoder input buffer free yet — step and retry.
    pub fn finish(&mut self) -> Result<bool, NvmmError> {
        Ok(self.front.decoder.try_finish()?)
    }

    /// Makes the next frame the encoder takes an IDR frame (a new viewer or recording).
    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    /// What the loop has done so far.
    pub fn stats(&self) -> NvmmStats {
        NvmmStats {
            // The encoder numbers the frames it has taken: the count, not a second tally.
            encoded: self.encoder.as_ref().map_or(0, Encoder::frames_queued),
            decoded: self.front.decoded,
            pool_waits: self.front.pool_waits,
            ..self.stats
        }
    }

    /// The decoder (for inspection).
    pub fn decoder(&self) -> &Decoder<D> {
        &self.front.decoder
    }

    /// The encoder, once the picture size is known.
    pub fn encoder(&self) -> Option<&Encoder<E>> {
        self.encoder.as_ref()
    }

    /// Moves whatever can move without blocking: reclaims surfaces the encoder has read,
    /// takes one decoded picture through the VIC, `work` and into the encoder, and appends
    /// the encoder's packets to `packets`. The calling thread must have the CUDA context of
    /// `work`'s kernels current (the EGL mapping is made in it).
    pub fn step(
        &mut self,
        work: &mut dyn FrameWork,
        packets: &mut Vec<EncodedPacket>,
    ) -> Result<Progress, NvmmError> {
        if self.done {
            return Ok(Progress::Done);
        }
        let mut moved = self.reclaim()?;
        match self.front.poll()? {
            Polled::Format(format) => {
                self.on_format(&format)?;
                moved = true;
            }
            Polled::Picture | Polled::Ended => moved = true,
            Polled::Nothing => {}
        }
        if let Some(frame) = self.front.take_waiting(!self.free.is_empty()) {
            self.through(frame, work)?;
            moved = true;
        }
        if self.front.ended() && !self.front.is_waiting() && !self.eos_queued {
            match &mut self.encoder {
                Some(enc) => self.eos_queued = enc.try_finish()?,
                None => {
                    // A stream without a picture: nothing to encode.
                    self.eos_queued = true;
                    self.done = true;
                }
            }
            moved |= self.eos_queued;
        }
        if let Some(enc) = &mut self.encoder {
            while let Some(ev) = enc.poll()? {
                moved = true;
                match ev {
                    EncoderEvent::Packet(p) => {
                        self.stats.packets += 1;
                        packets.push(p);
                    }
                    EncoderEvent::EndOfStream if self.eos_queued => {
                        self.done = true;
                        break;
                    }
                    EncoderEvent::EndOfStream => return Err(NvmmError::EarlyEnd),
                }
            }
        }
        Ok(if self.done {
            Progress::Done
        } else if moved {
            Progress::Moved
        } else {
            Progress::Idle
        })
    }

    /// Blocks (at most `timeout_ms`) on the device the loop waits for: the encoder when
    /// the decoder has ended or a picture waits for a work surface only the encoder can give
    /// back, else the decoder. (Waiting on both in turn could block on one that has nothing
    /// to say while the other has.)
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), NvmmError> {
        let blocked_on_encoder =
            self.front.ended() || (self.front.is_waiting() && self.free.is_empty());
        match &mut self.encoder {
            Some(enc) if blocked_on_encoder => enc.wait(timeout_ms)?,
            _ => self.front.decoder.wait(timeout_ms)?,
        }
        Ok(())
    }

    /// Work surfaces the encoder has finished reading go back to the pool.
    fn reclaim(&mut self) -> Result<bool, NvmmError> {
        let Some(enc) = &mut self.encoder else {
            return Ok(false);
        };
        let returned = enc.reclaim()?;
        for number in &returned {
            if let Some(i) = self.reading.iter().position(|(n, _)| n == number) {
                let (_, surface) = self.reading.remove(i).expect("index from position");
                self.free.push(surface);
            }
        }
        Ok(!returned.is_empty())
    }

    /// The first format event makes the pool and opens the encoder at the visible size;
    /// later ones (a resolution change) keep both: the VIC scales into the pool's size.
    fn on_format(&mut self, format: &FrameFormat) -> Result<(), NvmmError> {
        if self.encoder.is_some() {
            tracing::info!(
                width = format.visible.width,
                height = format.visible.height,
                "nvmm: the stream changed size; scaling to the encoder's"
            );
            return Ok(());
        }
        let (w, h) = (format.visible.width, format.visible.height);
        let spec = work_surface_spec(w, h, nv12_for(format));
        let n = self.config.work_surfaces.max(2);
        let encoder = (self.open_encoder)(w, h)?;
        if encoder.input_buffers() < n {
            return Err(NvmmError::EncoderFull(encoder.input_buffers(), n));
        }
        let free = work_surfaces(&self.lib, &spec, n)?;
        let bytes = |plane: usize| -> Result<u32, NvmmError> {
            let p = free[0].plane(plane)?;
            Ok(p.pitch * p.height)
        };
        self.plane_bytes = (bytes(0)?, bytes(1)?);
        self.free = free;
        self.encoder = Some(encoder);
        Ok(())
    }

    /// One picture: VIC into a work surface, the decoder's buffer back, CUDA work on the
    /// mapped surface, the surface to the encoder.
    fn through(&mut self, frame: DecodedFrame, work: &mut dyn FrameWork) -> Result<(), NvmmError> {
        let pts_us = frame.pts_us;
        let mut surface = self.free.pop().expect("caller checked a free surface");
        if let Err(e) = convert_and_release(
            &self.lib,
            &self.transform,
            &mut self.front.decoder,
            frame,
            &mut surface,
        ) {
            self.free.push(surface);
            return Err(e);
        }
        self.stats.vic_copies += 1;
        if let Err(e) = self.work_on(&surface, pts_us, work) {
            self.free.push(surface);
            return Err(e);
        }
        let (y_bytes, uv_bytes) = self.plane_bytes;
        let enc = self.encoder.as_mut().expect("opened with the pool");
        let number = enc.frames_queued();
        // SAFETY: the surface owns its fd; the encoder dups it for as long as it reads.
        let fd = unsafe { BorrowedFd::borrow_raw(surface.fd()) };
        let planes = [(fd, y_bytes), (fd, uv_bytes)];
        let frame = InputFrame {
            planes: &planes,
            pts_us,
        };
        match enc.try_encode(&frame, self.keyframe_requested) {
            Ok(true) => {
                self.keyframe_requested = false;
                self.reading.push_back((number, surface));
                Ok(())
            }
            Ok(false) => {
                let buffers = enc.input_buffers();
                self.free.push(surface);
                Err(NvmmError::EncoderFull(buffers, self.free.len()))
            }
            Err(e) => {
                self.free.push(surface);
                Err(e.into())
            }
        }
    }

    /// Maps `surface` for CUDA, runs `work` on it and undoes the mapping.
    fn work_on(
        &mut self,
        surface: &Surface,
        pts_us: u64,
        work: &mut dyn FrameWork,
    ) -> Result<(), NvmmError> {
        let image = surface.map_egl_image()?;
        let result = match self.cuda.map_nv12(&image) {
            Ok(mapped) => {
                self.stats.cuda_maps += 1;
                work.process(&mapped, pts_us)
                    .map_err(|why| NvmmError::Work { pts_us, why })
            }
            Err(e) => Err(e.into()),
        };
        let unmapped = image.release();
        result?;
        Ok(unmapped?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m2m::sys;

    fn format(colorspace: u32, quantization: u8) -> FrameFormat {
        FrameFormat {
            pixelformat: sys::PIX_FMT_NV12M,
            width: 1920,
            height: 1088,
            planes: vec![(1920, 1920 * 1088), (1920, 1920 * 544)],
            visible: sys::Rect {
                left: 0,
                top: 0,
                width: 1920,
                height: 1080,
            },
            colorspace,
            quantization,
        }
    }

    /// The surfaces carry the stream's colorimetry, as the r36 sample picks it, so that the
    /// CUDA mapping reports the matrix and range the kernels must use.
    #[test]
    fn surfaces_take_the_streams_matrix_and_range() {
        // V4L2_COLORSPACE_SMPTE170M (BT.601) limited, BT.601 full, REC709, and an unset
        // colorspace (0, default: BT.601 limited).
        assert_eq!(nv12_for(&format(1, 0)), ColorFormat::Nv12);
        assert_eq!(nv12_for(&format(1, 1)), ColorFormat::Nv12Er);
        assert_eq!(nv12_for(&format(3, 0)), ColorFormat::Nv12Bt709);
        assert_eq!(nv12_for(&format(3, 1)), ColorFormat::Nv12Bt709);
        assert_eq!(nv12_for(&format(0, 0)), ColorFormat::Nv12);
    }
}
