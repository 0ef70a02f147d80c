//! The decode half of Orin's NVMM loop as a source of frames for the pipeline: the hardware
//! decoder's NVMM buffers → the VIC → a pitch-linear work surface mapped for CUDA, *lent* to
//! the pipeline as an [`aegis_cuda::LentNv12`] until the pipeline drops the frame. The
//! CUDA backend's stages then run on the NVMM buffer in place, and the one download per
//! frame (preview, CPU encoder) reads it there; no host copy is made on the way.
//!
//! Per picture ([`NvmmDecoder::poll`]), on the source's thread:
//! 1. the decoder (`m2m::Decoder`, DMABUF capture into [`crate::nvmm::DecoderSurfaces`])
//!    delivers a block-linear picture;
//! 2. the VIC converts it into a free work surface of the [`WorkPool`] (device to device);
//!    the decoder gets its buffer back at once;
//! 3. the work surface's EGL image is made and registered with CUDA
//!    ([`CudaEglLib::map_surface`]), and its planes are lent under a token.
//!
//! A lent frame comes back through [`aegis_cuda::Lender::give_back`] on whatever thread
//! drops it (after its GPU work finished: `aegis_hal`'s `DeviceSurface` waits for its
//! stream first). The pool then unregisters and destroys the image, in the lender's CUDA
//! context ([`CudaContext`]), and the surface is free again. A full pool is backpressure:
//! the decoded picture waits (its capture buffer stays with the decoder, which stalls),
//! nothing is allocated per frame. A resolution change makes a new pool of the new size;
//! frames of the old one still go back to it, and it is freed with the last.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use aegis_cuda::{Lender, LentNv12};

use crate::cuda_egl::{CudaEglLib, CudaMappedSurface};
use crate::m2m::{DecodedFrame, Decoder, Device, FrameFormat};
use crate::nvbuf::{ColorFormat, NvBufSurfaceLib, Surface, SurfaceSpec};
use crate::nvmm::{
    DecodeFront, NvmmError, Polled, convert_and_release, nv12_for, work_surface_spec, work_surfaces,
};
use crate::transform::Transform;

/// Makes the CUDA context the frames are mapped in current on the calling thread (the
/// pool unmaps a frame given back on the thread that drops it).
pub trait CudaContext: Send + Sync {
    /// Makes the context current here.
    fn make_current(&self) -> Result<(), String>;
}

impl CudaContext for aegis_cuda::Gpu {
    fn make_current(&self) -> Result<(), String> {
        aegis_cuda::Gpu::make_current(self).map_err(|e| e.to_string())
    }
}

/// What the pool holds, under one lock.
struct PoolState {
    /// Work surfaces nobody uses.
    free: Vec<Surface>,
    /// Surfaces lent out, mapped for CUDA, by token.
    lent: Vec<(u64, CudaMappedSurface)>,
    /// Surfaces still part of the pool (one that failed to unmap is leaked or destroyed).
    surfaces: usize,
}

/// The work surfaces of one stream at one size, and the lender of their frames.
pub struct WorkPool {
    state: Mutex<PoolState>,
    /// Signalled when a surface comes back.
    returned: Condvar,
    cuda: Arc<CudaEglLib>,
    context: Arc<dyn CudaContext>,
    size: (u32, u32),
    format: ColorFormat,
    given_back: AtomicU64,
    lost: AtomicU64,
}

impl std::fmt::Debug for WorkPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkPool")
            .field("size", &self.size)
            .field("format", &self.format)
            .field("available", &self.available())
            .finish_non_exhaustive()
    }
}

impl WorkPool {
    /// The pool of `free` surfaces of `spec`.
    pub(crate) fn new(
        free: Vec<Surface>,
        spec: &SurfaceSpec,
        cuda: Arc<CudaEglLib>,
        context: Arc<dyn CudaContext>,
    ) -> Arc<WorkPool> {
        Arc::new(WorkPool {
            state: Mutex::new(PoolState {
                surfaces: free.len(),
                free,
                lent: Vec::new(),
            }),
            returned: Condvar::new(),
            cuda,
            context,
            size: (spec.width, spec.height),
            format: spec.format,
            given_back: AtomicU64::new(0),
            lost: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Surfaces free now.
    pub fn available(&self) -> usize {
        self.lock().free.len()
    }

    /// Surfaces lent out now.
    pub fn lent(&self) -> usize {
        self.lock().lent.len()
    }

    /// Frames given back so far.
    pub fn given_back(&self) -> u64 {
        self.given_back.load(Ordering::Relaxed)
    }

    /// Surfaces lost to the pool because they could not be unmapped (leaked while CUDA may
    /// still have them registered, else destroyed).
    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The surfaces' size.
    pub fn size(&self) -> (u32, u32) {
        self.size
    }

    /// Waits at most `timeout` for a free surface; `true` if one is free.
    pub fn wait_free(&self, timeout: Duration) -> bool {
        let state = self.lock();
        let (state, _) = self
            .returned
            .wait_timeout_while(state, timeout, |s| s.free.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        !state.free.is_empty()
    }

    pub(crate) fn take_free(&self) -> Result<Option<Surface>, NvmmError> {
        let mut state = self.lock();
        if state.surfaces == 0 {
            return Err(NvmmError::PoolLost);
        }
        Ok(state.free.pop())
    }

    pub(crate) fn put_free(&self, surface: Surface) {
        self.lock().free.push(surface);
        self.returned.notify_all();
    }

    /// Maps `surface` for CUDA and lends its planes under `token` (the picture at
    /// `pts_us`); on failure the surface is free again, or lost if it cannot be cleaned up.
    pub(crate) fn lend(
        self: &Arc<Self>,
        surface: Surface,
        token: u64,
        pts_us: u64,
    ) -> Result<LentNv12, NvmmError> {
        let egl = match surface.into_egl_mapped() {
            Ok(egl) => egl,
            Err((surface, e)) => {
                self.put_free(surface);
                return Err(e.into());
            }
        };
        let mapped = match self.cuda.map_surface(egl) {
            Ok(m) => m,
            Err((egl, e)) => {
                match egl.unmap() {
                    (surface, Ok(())) => self.put_free(surface),
                    (surface, Err(why)) => {
                        drop(surface);
                        self.lose(&why.to_string());
                    }
                }
                return Err(e.into());
            }
        };
        let m = mapped.mapping();
        let planes = (m.y(), m.uv(), (m.size().0, m.size().1, m.pitch()));
        let lender: Arc<dyn Lender> = self.clone();
        // SAFETY: the mapping stays registered, and the surface the pool's alone, until
        // `give_back(token)` removes it from `lent` (the only place it is unmapped).
        let lent = unsafe { LentNv12::new(planes.0, planes.1, planes.2, token, lender) };
        match lent {
            Ok(frame) => {
                self.lock().lent.push((token, mapped));
                Ok(frame)
            }
            Err(e) => {
                self.unmap(mapped);
                Err(NvmmError::Work {
                    pts_us,
                    why: format!("the mapped frame is not one the kernels take: {e}"),
                })
            }
        }
    }

    /// Unmaps a surface and frees it; one that cannot be unmapped is lost to the pool.
    fn unmap(&self, mapped: CudaMappedSurface) {
        if let Err(e) = self.context.make_current() {
            tracing::warn!(error = %e, "nvmm: no CUDA context to unmap a frame in");
        }
        match mapped.unmap() {
            Ok(surface) => self.put_free(surface),
            Err(why) => self.lose(&why),
        }
    }

    /// A surface is gone from the pool (it could not be unmapped).
    fn lose(&self, why: &str) {
        tracing::warn!(error = %why, "nvmm: a work surface could not be unmapped");
        self.lost.fetch_add(1, Ordering::Relaxed);
        self.lock().surfaces -= 1;
        self.returned.notify_all();
    }
}

impl Lender for WorkPool {
    fn dmabuf(&self, token: u64) -> Option<aegis_cuda::DmaBuf> {
        let state = self.lock();
        let (_, mapped) = state.lent.iter().find(|(t, _)| *t == token)?;
        let surface = mapped.surface();
        let bytes = |plane: usize| {
            surface
                .plane(plane)
                .ok()
                .map(|p| p.pitch.saturating_mul(p.height))
        };
        Some(aegis_cuda::DmaBuf {
            fd: surface.fd(),
            plane_bytes: [bytes(0)?, bytes(1)?],
        })
    }

    fn give_back(&self, token: u64) {
        let mapped = {
            let mut state = self.lock();
            let Some(i) = state.lent.iter().position(|(t, _)| *t == token) else {
                tracing::warn!(token, "nvmm: a frame given back that the pool did not lend");
                return;
            };
            state.lent.swap_remove(i).1
        };
        self.given_back.fetch_add(1, Ordering::Relaxed);
        self.unmap(mapped);
    }
}

/// A picture lent to the pipeline.
#[derive(Debug)]
pub struct NvmmFrame {
    /// The work surface's planes, mapped for CUDA; given back when dropped.
    pub frame: LentNv12,
    /// The timestamp the access unit was fed with.
    pub pts_us: u64,
    /// The surface's NV12 variant (the stream's matrix and range).
    pub format: ColorFormat,
}

/// What [`NvmmDecoder::poll`] found.
#[derive(Debug)]
pub enum Next {
    /// A picture.
    Frame(NvmmFrame),
    /// Something moved (a format change): call again.
    Moved,
    /// Nothing until the hardware or the pipeline moves: [`NvmmDecoder::wait`], then call
    /// again.
    Idle,
    /// The last picture has been lent (after [`NvmmDecoder::finish`]).
    Ended,
}

/// What [`NvmmDecoder`] has done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LendStats {
    /// Pictures the decoder delivered.
    pub decoded: u64,
    /// VIC conversions (device to device) into work surfaces.
    pub vic_copies: u64,
    /// Frames lent (each one an EGL image registered with CUDA).
    pub lent: u64,
    /// Pictures that had to wait for a work surface (backpressure).
    pub pool_waits: u64,
    /// Pools made (one per size the stream had).
    pub pools: u64,
}

/// The decode → VIC → CUDA mapping half of the NVMM loop, lending its frames (module docs).
pub struct NvmmDecoder<D: Device> {
    front: DecodeFront<D>,
    lib: Arc<NvBufSurfaceLib>,
    transform: Transform,
    cuda: Arc<CudaEglLib>,
    context: Arc<dyn CudaContext>,
    work_surfaces: usize,
    pool: Option<Arc<WorkPool>>,
    next_token: u64,
    stats: LendStats,
}

impl<D: Device> NvmmDecoder<D> {
    /// Lends the pictures of `decoder` (opened with `CaptureMemory::DmaBuf(DecoderSurfaces)`)
    /// in `work_surfaces` (at least 2) work surfaces from `lib`, converted by `transform`,
    /// mapped by `cuda` in `context`.
    pub fn new(
        decoder: Decoder<D>,
        lib: Arc<NvBufSurfaceLib>,
        transform: Transform,
        cuda: Arc<CudaEglLib>,
        context: Arc<dyn CudaContext>,
        work_surfaces: usize,
    ) -> NvmmDecoder<D> {
        NvmmDecoder {
            front: DecodeFront::new(decoder),
            lib,
            transform,
            cuda,
            context,
            work_surfaces: work_surfaces.max(2),
            pool: None,
            next_token: 0,
            stats: LendStats::default(),
        }
    }

    /// Queues an access unit (Annex B). `Ok(false)`: the decoder's input is full — call
    /// [`NvmmDecoder::poll`] (which frees it as pictures leave) and retry.
    pub fn feed(&mut self, access_unit: &[u8], pts_us: u64) -> Result<bool, NvmmError> {
        Ok(self.front.decoder.try_feed(access_unit, pts_us)?)
    }

    /// Ends the stream; `poll` says `Ended` after the last picture. `Ok(false)`: no input
    /// buffer free yet — call `poll` and retry.
    pub fn finish(&mut self) -> Result<bool, NvmmError> {
        Ok(self.front.decoder.try_finish()?)
    }

    /// What the decoder has done so far.
    pub fn stats(&self) -> LendStats {
        LendStats {
            decoded: self.front.decoded,
            pool_waits: self.front.pool_waits,
            ..self.stats
        }
    }

    /// A decoded picture waits for a work surface the pipeline still holds.
    pub fn waiting_for_surface(&self) -> bool {
        self.front.is_waiting() && self.pool.as_ref().is_some_and(|p| p.available() == 0)
    }

    /// The current work pool, once the stream's size is known.
    pub fn pool(&self) -> Option<&Arc<WorkPool>> {
        self.pool.as_ref()
    }

    /// Moves what can move without blocking and lends the next picture if there is one and
    /// a work surface for it. The calling thread must have `context` current (the mapping
    /// is made in it).
    pub fn poll(&mut self) -> Result<Next, NvmmError> {
        let mut moved = false;
        if let Polled::Format(format) = self.front.poll()? {
            self.on_format(&format)?;
            moved = true;
        }
        if self.front.is_waiting() {
            let pool = self.pool.clone().ok_or(NvmmError::Protocol(
                "the decoder delivered a picture before its format",
            ))?;
            let surface = pool.take_free()?;
            if let (Some(frame), Some(surface)) =
                (self.front.take_waiting(surface.is_some()), surface)
            {
                return self.lend(&pool, frame, surface).map(Next::Frame);
            }
        }
        Ok(if self.front.ended() && !self.front.is_waiting() {
            Next::Ended
        } else if moved {
            Next::Moved
        } else {
            Next::Idle
        })
    }

    /// Blocks (at most `timeout_ms`) on what the decoder waits for: a work surface the
    /// pipeline still holds when a picture waits for one, else the decoder.
    pub fn wait(&mut self, timeout_ms: i32) -> Result<(), NvmmError> {
        if self.front.is_waiting()
            && let Some(pool) = &self.pool
        {
            pool.wait_free(Duration::from_millis(timeout_ms.max(0) as u64));
            return Ok(());
        }
        Ok(self.front.decoder.wait(timeout_ms)?)
    }

    /// One picture: VIC into `surface`, the decoder's buffer back, the surface lent.
    fn lend(
        &mut self,
        pool: &Arc<WorkPool>,
        frame: DecodedFrame,
        mut surface: Surface,
    ) -> Result<NvmmFrame, NvmmError> {
        let pts_us = frame.pts_us;
        if let Err(e) = convert_and_release(
            &self.lib,
            &self.transform,
            &mut self.front.decoder,
            frame,
            &mut surface,
        ) {
            pool.put_free(surface);
            return Err(e);
        }
        self.stats.vic_copies += 1;
        let token = self.next_token;
        self.next_token += 1;
        let frame = pool.lend(surface, token, pts_us)?;
        self.stats.lent += 1;
        Ok(NvmmFrame {
            frame,
            pts_us,
            format: pool.format,
        })
    }

    /// A pool at the stream's visible size, unless the current one has it.
    fn on_format(&mut self, format: &FrameFormat) -> Result<(), NvmmError> {
        // The kernels take even sizes; the VIC scales an odd crop into the even one.
        let (w, h) = (even(format.visible.width), even(format.visible.height));
        let nv12 = nv12_for(format);
        if let Some(p) = &self.pool
            && p.size == (w, h)
            && p.format == nv12
        {
            return Ok(());
        }
        tracing::info!(
            width = w,
            height = h,
            "nvmm: work surfaces for the stream's size"
        );
        let spec = work_surface_spec(w, h, nv12);
        self.pool = Some(WorkPool::new(
            work_surfaces(&self.lib, &spec, self.work_surfaces)?,
            &spec,
            self.cuda.clone(),
            self.context.clone(),
        ));
        self.stats.pools += 1;
        Ok(())
    }
}

/// A frame side as the work surfaces (and so the CUDA kernels) take it: even, at least 2.
pub fn even(v: u32) -> u32 {
    (v & !1).max(2)
}
