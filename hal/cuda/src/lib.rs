//! The CUDA backend's device side: NV12 frames in pitched device memory, pooled; NVRTC
//! kernels compiled at start-up (and cached) for the pipeline's pixel work — model
//! preprocessing (NV12 → planar RGB float, resized), the virtual background composite (mask
//! upsample + alpha blend), the moderation blur, RGB → NV12 for an encoder.
//!
//! **Loading.** libcuda and libnvrtc are opened at run time through `cudarc`
//! (`dynamic-loading`, API level CUDA 12.6, which JetPack 6 and CUDA 13 drivers both serve).
//! cudarc panics when a library is missing, so [`Gpu::open`] probes both first and returns
//! [`CudaError::NoDriver`] / [`CudaError::NoNvrtc`] — the agent then falls back to its
//! configured backend. Nothing here links a vendor library at build time. [`HIDE_ENV`]
//! (`AEGIS_CUDA_HIDE=libcuda,libnvrtc,libnvcuvid`) makes libraries count as missing, so the
//! fallback and refusal paths can be run (and tested) on a machine that has a GPU.
//!
//! **Exactness.** Every kernel mirrors a CPU function of `aegis-hal` / `aegis-models`
//! operation for operation (integer kernels bit for bit; the float preprocess is compiled
//! with `--fmad=false` so its rounding follows the CPU's), and the device tests compare
//! them against outputs of those CPU functions (`tests/kernels.rs`).
//!
//! **Copies.** [`Gpu::host_copies`] counts every transfer between host and device, so the
//! pipeline can show that frames stay on the device from decode to the final download.

pub mod nvdec;
pub mod nvenc;

/// The CUDA bindings this crate uses (device buffers are `cudarc::driver::CudaSlice`).
pub use cudarc;
pub use cudarc::driver::CudaSlice;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaStream, LaunchConfig, PushKernelArg, SyncOnDrop,
};

/// The kernels' source as written (CUDA C): it uses the `BT601_*` constants without
/// defining them; [`kernel_source`] is what NVRTC compiles.
pub const KERNELS: &str = include_str!("kernels.cu");

/// What NVRTC compiles: the BT.601 constants as `#define`s generated from `aegis-bt601` (the
/// copy the CPU kernels use), then [`KERNELS`].
pub fn kernel_source() -> String {
    format!("{}\n{KERNELS}", aegis_bt601::cuda_defines())
}

/// Why the GPU cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libcuda is not installed (no NVIDIA driver), or [`HIDE_ENV`] hides it.
    #[error(
        "no CUDA driver: libcuda.so.1 could not be loaded{} (install the NVIDIA driver, or select another backend)",
        hidden_note("libcuda")
    )]
    NoDriver,
    /// libnvrtc is not installed, or [`HIDE_ENV`] hides it.
    #[error(
        "NVRTC not found (libnvrtc.so / libnvrtc.so.12){}: install the CUDA toolkit's nvrtc, or put a libnvrtc.so link on LD_LIBRARY_PATH",
        hidden_note("libnvrtc")
    )]
    NoNvrtc,
    /// A driver call failed.
    #[error("CUDA: {0}")]
    Driver(#[from] cudarc::driver::DriverError),
    /// The kernels did not compile.
    #[error("NVRTC: {0}")]
    Compile(String),
    /// libnvcuvid (NVDEC) is not installed.
    #[error("NVDEC not available: libnvcuvid.so.1: {0}")]
    NoNvdec(String),
    /// A buffer does not fit the operation.
    #[error("{0}")]
    Size(String),
}

/// An NV12 frame in device memory: luma rows of `pitch` bytes, then `h/2` rows of
/// interleaved CbCr at offset `pitch * h`.
#[derive(Debug)]
pub struct DeviceNv12 {
    /// Width in pixels (even).
    pub width: usize,
    /// Height in pixels (even).
    pub height: usize,
    /// Row pitch in bytes (a multiple of 256).
    pub pitch: usize,
    /// The pixels.
    pub data: CudaSlice<u8>,
}

impl DeviceNv12 {
    /// Bytes of the whole surface.
    pub fn len(&self) -> usize {
        self.pitch * self.height * 3 / 2
    }

    /// True for a 0×0 surface.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An NV12 frame in device memory that the kernels read or write: this crate's
/// [`DeviceNv12`] (one allocation, CbCr at `pitch * height`), or [`Nv12Planes`] that another
/// API mapped (a Jetson NVMM buffer through EGL: two planes at addresses of their own).
/// Every kernel entry of [`Gpu`] takes frames through this trait, so the same launch code
/// serves both.
///
/// # Safety
/// [`Nv12Frame::geometry`] and the addresses [`Nv12Frame::planes`] returns must describe
/// device memory that holds the whole frame (`height` luma rows and `height / 2` chroma rows
/// of `pitch` bytes, `pitch >= width`) for as long as the value lives: the kernels and the
/// copies write where they say.
pub unsafe trait Nv12Frame {
    /// Width and height in pixels (even) and the row pitch in bytes of both planes.
    fn geometry(&self) -> (usize, usize, usize);
    /// Device addresses of the luma and CbCr planes, to read on `stream`: `stream` first
    /// waits for earlier writes to them. Keep the guard until the launch is queued.
    fn planes<'a>(&'a self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>);
    /// As [`Nv12Frame::planes`], to write: `stream` waits for earlier reads and writes.
    fn planes_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>);
}

// SAFETY: the planes are the buffer's, sized by `alloc_nv12` (width, height and pitch are
// its own; code that changes the public fields takes on this contract).
unsafe impl Nv12Frame for DeviceNv12 {
    fn geometry(&self) -> (usize, usize, usize) {
        (self.width, self.height, self.pitch)
    }

    fn planes<'a>(&'a self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        use cudarc::driver::DevicePtr;
        let (y, guard) = self.data.device_ptr(stream);
        (y, y + (self.pitch * self.height) as u64, guard)
    }

    fn planes_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        use cudarc::driver::DevicePtrMut;
        let off = (self.pitch * self.height) as u64;
        let (y, guard) = self.data.device_ptr_mut(stream);
        (y, y + off, guard)
    }
}

/// An NV12 frame at device addresses this crate did not allocate: a luma plane of `height`
/// rows and a CbCr plane of `height / 2` rows, both `pitch` bytes apart, valid for `'a` (the
/// mapping that produced them). The kernels read and write it in place; nothing is copied.
/// Ordering with other work on the memory is the mapper's business (a Jetson's EGL frame is
/// mapped and unmapped around the launches, which [`Gpu::sync`] waits for).
#[derive(Debug, Clone, Copy)]
pub struct Nv12Planes<'a> {
    y: u64,
    uv: u64,
    width: usize,
    height: usize,
    pitch: usize,
    _mapping: std::marker::PhantomData<&'a ()>,
}

impl<'a> Nv12Planes<'a> {
    /// The planes at `y` and `uv`, checked for an even non-empty size, a pitch that holds a
    /// row, and non-null addresses.
    ///
    /// # Safety
    /// For `'a`, `y` must address `pitch * height` and `uv` `pitch * height / 2` bytes of
    /// device memory that the GPU context of the [`Gpu`] used with these planes can read and
    /// write, and no other code may write them while that GPU's kernels run on them.
    pub unsafe fn new(
        y: u64,
        uv: u64,
        width: usize,
        height: usize,
        pitch: usize,
    ) -> Result<Nv12Planes<'a>, CudaError> {
        if width == 0 || height == 0 || !width.is_multiple_of(2) || !height.is_multiple_of(2) {
            return Err(CudaError::Size(format!(
                "NV12 planes of {width}x{height}: the size must be even and not empty"
            )));
        }
        if pitch < width {
            return Err(CudaError::Size(format!(
                "NV12 planes of width {width} with a {pitch}-byte pitch"
            )));
        }
        if y == 0 || uv == 0 {
            return Err(CudaError::Size("NV12 planes at a null address".into()));
        }
        Ok(Nv12Planes {
            y,
            uv,
            width,
            height,
            pitch,
            _mapping: std::marker::PhantomData,
        })
    }
}

// SAFETY: `Nv12Planes::new`'s caller promised the planes for the value's life.
unsafe impl Nv12Frame for Nv12Planes<'_> {
    fn geometry(&self) -> (usize, usize, usize) {
        (self.width, self.height, self.pitch)
    }

    fn planes<'a>(&'a self, _: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        (self.y, self.uv, SyncOnDrop::Record(None))
    }

    fn planes_mut<'a>(&'a mut self, _: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        (self.y, self.uv, SyncOnDrop::Record(None))
    }
}

/// Who lends [`LentNv12`] frames and takes them back: a Jetson's frame loop lending its
/// NVMM work surfaces, mapped for CUDA, to the pipeline.
pub trait Lender: Send + Sync {
    /// The frame lent under `token` is no longer used, called when it is dropped. Held by a
    /// frame (`aegis_hal::frame::DeviceSurface`), the GPU work queued on it has finished
    /// (the frame waits for its stream first, and keeps the frame rather than give it back
    /// if it cannot); a `LentNv12` dropped on its own had no work queued through a frame.
    fn give_back(&self, token: u64);

    /// The DMA-buf behind the frame lent under `token`, if the lender has one (a Jetson's
    /// NVMM surface): what a hardware encoder reads in place.
    fn dmabuf(&self, _token: u64) -> Option<DmaBuf> {
        None
    }
}

/// A lent frame's DMA-buf: one fd for both NV12 planes and the bytes of each, open while
/// the frame is lent (a reader that needs it longer dups it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaBuf {
    /// The buffer's fd.
    pub fd: i32,
    /// Bytes of the luma and the CbCr plane.
    pub plane_bytes: [u32; 2],
}

/// An NV12 frame in device memory another API owns, lent to the pipeline for as long as
/// the frame lives: [`Nv12Planes`] without a borrow, given back to its [`Lender`] when
/// dropped. Nothing is allocated per frame (the lender is shared, the token is its own
/// number for the surface).
pub struct LentNv12 {
    planes: Nv12Planes<'static>,
    token: u64,
    lender: Arc<dyn Lender>,
}

impl LentNv12 {
    /// The planes at `y` and `uv` (as [`Nv12Planes::new`] checks them), lent by `lender`
    /// under `token`.
    ///
    /// # Safety
    /// Until `lender.give_back(token)` is called, `y` and `uv` must address the planes as
    /// [`Nv12Planes::new`] requires, and nothing but the holder may write them.
    pub unsafe fn new(
        y: u64,
        uv: u64,
        (width, height, pitch): (usize, usize, usize),
        token: u64,
        lender: Arc<dyn Lender>,
    ) -> Result<LentNv12, CudaError> {
        // SAFETY: the caller's promise covers the planes for the value's life.
        let planes = unsafe { Nv12Planes::new(y, uv, width, height, pitch) }?;
        Ok(LentNv12 {
            planes,
            token,
            lender,
        })
    }

    /// The lender's number for this frame.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The DMA-buf behind the frame, if its lender has one ([`Lender::dmabuf`]).
    pub fn dmabuf(&self) -> Option<DmaBuf> {
        self.lender.dmabuf(self.token)
    }

    /// The luma and CbCr planes' device addresses (what the lender mapped).
    pub fn addresses(&self) -> (u64, u64) {
        (self.planes.y, self.planes.uv)
    }
}

impl std::fmt::Debug for LentNv12 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LentNv12")
            .field("planes", &self.planes)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

// SAFETY: `LentNv12::new`'s caller promised the planes until the frame is given back.
unsafe impl Nv12Frame for LentNv12 {
    fn geometry(&self) -> (usize, usize, usize) {
        self.planes.geometry()
    }

    fn planes<'a>(&'a self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        self.planes.planes(stream)
    }

    fn planes_mut<'a>(&'a mut self, stream: &'a CudaStream) -> (u64, u64, SyncOnDrop<'a>) {
        self.planes.planes_mut(stream)
    }
}

impl Drop for LentNv12 {
    fn drop(&mut self) {
        self.lender.give_back(self.token);
    }
}

/// How a letterboxed model input samples the frame (half-pixel centres): input pixel `d`
/// reads source position `(d + 0.5 - offset) * ratio - 0.5`, clamped inside `len`; source
/// pixels outside the frame read `pad`; `bgr` writes the planes in B, G, R order.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterboxed {
    /// Source pixels per input pixel, x.
    pub ratio_x: f64,
    /// Source pixels per input pixel, y.
    pub ratio_y: f64,
    /// Input pixels of padding before the frame, x.
    pub offset_x: f64,
    /// Input pixels of padding before the frame, y.
    pub offset_y: f64,
    /// Extent where samples clamp, x (the frame's width, or the padded square's side).
    pub len_x: usize,
    /// Extent where samples clamp, y.
    pub len_y: usize,
    /// Value of pixels outside the frame (0..1).
    pub pad: f32,
    /// Planes in B, G, R order.
    pub bgr: bool,
}

/// Host memory page-locked for DMA (`cuMemHostRegister`): downloads into it run at full bus
/// speed instead of through the driver's staging copies. Unpinned when dropped, which must
/// happen before the memory is freed (the owner keeps both and drops this first).
pub struct PinnedHost {
    ptr: *mut std::ffi::c_void,
    ctx: Arc<CudaContext>,
}

// SAFETY: the handle is an address the driver knows; unregistering it is thread-safe.
unsafe impl Send for PinnedHost {}
// SAFETY: as above; the handle is never used through a shared reference.
unsafe impl Sync for PinnedHost {}

impl Drop for PinnedHost {
    fn drop(&mut self) {
        // Often the last use of the GPU on a sink's thread.
        relax_capture_mode();
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: `ptr` was registered by `Gpu::pin_host` and is still allocated.
            unsafe { cudarc::driver::sys::cuMemHostUnregister(self.ptr) };
        }
    }
}

/// `out` holds three `ow`×`oh` float planes.
fn fits_planes(out: &CudaSlice<f32>, ow: usize, oh: usize) -> Result<(), CudaError> {
    if out.len() >= 3 * ow * oh {
        return Ok(());
    }
    Err(CudaError::Size(format!(
        "output holds {} floats, {} needed",
        out.len(),
        3 * ow * oh
    )))
}

fn same_len(what: &str, from: usize, to: usize) -> Result<(), CudaError> {
    if from == to {
        return Ok(());
    }
    Err(CudaError::Size(format!(
        "{what} of {from} values into {to}"
    )))
}

/// Row pitch for `width` bytes: 256-byte aligned, as NVDEC and NVENC like it.
pub fn pitch_for(width: usize) -> usize {
    width.div_ceil(256) * 256
}

/// A fixed set of same-size device frames: `acquire` hands one out or says the pool is
/// empty (backpressure, never growth); `release` takes it back and wakes a waiter.
pub struct DevicePool {
    free: std::sync::Mutex<Vec<DeviceNv12>>,
    size: (usize, usize),
    returned: std::sync::Condvar,
    /// Frames in the pool.
    pub capacity: usize,
}

impl DevicePool {
    /// `n` frames of `width`×`height`.
    pub fn new(gpu: &Gpu, width: usize, height: usize, n: usize) -> Result<DevicePool, CudaError> {
        relax_capture_mode();
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(gpu.alloc_nv12(width, height)?);
        }
        Ok(DevicePool {
            free: std::sync::Mutex::new(v),
            size: (width, height),
            returned: std::sync::Condvar::new(),
            capacity: n,
        })
    }

    /// A free frame, or `None` when all are in use.
    pub fn acquire(&self) -> Option<DeviceNv12> {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).pop()
    }

    /// Gives a frame back (a frame of another size is freed instead: it is not this pool's).
    pub fn release(&self, f: DeviceNv12) {
        if (f.width, f.height) != self.size {
            return;
        }
        self.free.lock().unwrap_or_else(|p| p.into_inner()).push(f);
        self.returned.notify_all();
    }

    /// Frames free now.
    pub fn available(&self) -> usize {
        self.free.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits up to `timeout` until at least `n` frames are free; true if they are.
    pub fn wait_available(&self, n: usize, timeout: std::time::Duration) -> bool {
        let free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let (free, _) = self
            .returned
            .wait_timeout_while(free, timeout, |f| f.len() < n)
            .unwrap_or_else(|p| p.into_inner());
        free.len() >= n
    }
}

/// Floats per entry of a [`Gpu::yolo_candidates`] list: anchor index, cx, cy, w, h, class,
/// score.
pub const YOLO_CANDIDATE: usize = 7;

/// How many anchors qualified, from a downloaded [`Gpu::yolo_candidates`] list (its first
/// value is the count's bits); `None` for an empty slice.
pub fn yolo_candidate_count(list: &[f32]) -> Option<usize> {
    list.first().map(|c| c.to_bits() as usize)
}

/// Environment variable that keeps the calling threads in CUDA's default (global) stream
/// capture interaction mode instead of [`relax_capture_mode`]'s: to show what the relaxed
/// mode protects against (`models/tests/cuda_stages.rs`).
pub const STRICT_CAPTURE_ENV: &str = "AEGIS_CUDA_STRICT_CAPTURE";

/// Puts the calling thread in CUDA's relaxed stream-capture interaction mode (once per
/// thread; every [`Gpu`] operation and every GPU model session's call makes it). ONNX
/// Runtime captures a CUDA graph (`inference.cuda_graph`) in the global mode, in which a
/// "potentially unsafe" call of any other thread in the default mode (an allocation, a
/// stream synchronisation) fails while the capture lasts, and spoils the capture. A
/// pipeline switch loads models, and so captures, while the old streams run: on an H100,
/// with the default mode, 99.9 % of a busy stream thread's rounds failed and no load got
/// its graph; relaxed, none failed (`models/tests/cuda_stages.rs`,
/// `graph_captures_do_not_fail_other_threads`; a failed capture also seemed to stay open:
/// the default-mode thread kept failing for the rest of the test). A model session's
/// thread, which captures, is relaxed too: the driver then no longer refuses ONNX
/// Runtime's own unsafe calls during its capture (it makes none after its first run; the
/// capture of the capturing stream itself is still checked). Does nothing without a
/// driver; a thread whose switch failed tries again at its next call.
pub fn relax_capture_mode() {
    use std::cell::Cell;
    thread_local!(static DONE: Cell<bool> = const { Cell::new(false) });
    DONE.with(|done| {
        if done.get() {
            return;
        }
        if std::env::var_os(STRICT_CAPTURE_ENV).is_some() {
            done.set(true);
            return;
        }
        if !driver_present() {
            return;
        }
        let mut mode = cudarc::driver::sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED;
        // SAFETY: a valid out-pointer; the call swaps this thread's mode and nothing else.
        let r = unsafe { cudarc::driver::sys::cuThreadExchangeStreamCaptureMode(&mut mode) };
        done.set(r == cudarc::driver::sys::CUresult::CUDA_SUCCESS);
    });
}

/// The compiled kernels.
#[derive(Clone)]
struct Kernels {
    preprocess: CudaFunction,
    fit: CudaFunction,
    outline: CudaFunction,
    composite: CudaFunction,
    scale: CudaFunction,
    rgb_to_nv12: CudaFunction,
    mask_smooth: CudaFunction,
    mask_blur_h: CudaFunction,
    mask_blur_v: CudaFunction,
    yolo: CudaFunction,
}

/// An open GPU with its stream and kernels.
pub struct Gpu {
    /// The context.
    pub ctx: Arc<CudaContext>,
    /// The stream every operation is queued on.
    pub stream: Arc<CudaStream>,
    kernels: Kernels,
    /// Host↔device copies, whole-frame transfers and result lists, shared with every fork.
    copies: Arc<[AtomicU64; 3]>,
    /// Device name and compute capability, for reports.
    pub name: String,
    /// Where the kernels came from: `cache`, or `compiled by NVRTC <major>.<minor>`.
    pub ptx_source: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpu")
            .field("name", &self.name)
            .field("kernels", &self.ptx_source)
            .finish_non_exhaustive()
    }
}

/// Environment variable listing vendor libraries this crate treats as not installed:
/// comma-separated `libcuda`, `libnvrtc`, `libnvcuvid`. It runs the no-driver, no-NVRTC and
/// no-NVDEC paths (the agent's fallback or refusal, CPU decoding) on a machine that has
/// them, for tests and for operators who want the CPU path there. An entry that names none
/// of these hides every library (and the error says which entry was wrong), so a typo never
/// silently uses the GPU.
pub const HIDE_ENV: &str = "AEGIS_CUDA_HIDE";

/// The libraries [`HIDE_ENV`] can hide.
const HIDEABLE: [&str; 3] = ["libcuda", "libnvrtc", "libnvcuvid"];

/// Why `lib` (one of [`HIDEABLE`]) counts as missing under the [`HIDE_ENV`] value `list`,
/// or `None` when it does not.
fn hidden_by(list: &str, lib: &str) -> Option<String> {
    let entries = list.split(',').map(str::trim).filter(|e| !e.is_empty());
    let mut hit = None;
    for e in entries {
        if !HIDEABLE.contains(&e) {
            return Some(format!(
                "{HIDE_ENV} names {e:?}, not one of {}: every CUDA library counts as missing",
                HIDEABLE.join(", ")
            ));
        }
        if e == lib {
            hit = Some(format!("hidden by {HIDE_ENV}"));
        }
    }
    hit
}

/// Why [`HIDE_ENV`] hides `lib` in this process, or `None`.
pub(crate) fn hidden(lib: &str) -> Option<String> {
    hidden_by(&std::env::var(HIDE_ENV).ok()?, lib)
}

/// `" (why)"` when [`HIDE_ENV`] hides `lib`, else nothing: for error messages.
fn hidden_note(lib: &str) -> String {
    hidden(lib)
        .map(|why| format!(" ({why})"))
        .unwrap_or_default()
}

/// Whether libcuda can be loaded (no panic, no context), and is not hidden by [`HIDE_ENV`].
pub fn driver_present() -> bool {
    // SAFETY: dlopen probing only; no CUDA call is made.
    hidden("libcuda").is_none() && unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether libnvrtc can be loaded, and is not hidden by [`HIDE_ENV`].
pub fn nvrtc_present() -> bool {
    // SAFETY: dlopen probing only.
    hidden("libnvrtc").is_none() && unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// The NVRTC that would compile the kernels, as (major, minor); `None` when none loads.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both out-pointers are valid.
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .ok()?;
    Some((major, minor))
}

/// Whether `start..start + len` lies within `0..extent` (no overflow: the kernels address
/// raw device memory from these values).
fn inside(start: usize, len: usize, extent: usize) -> bool {
    start.checked_add(len).is_some_and(|end| end <= extent)
}

/// One end of a pitched copy ([`Gpu::copy_2d`]).
#[derive(Clone, Copy)]
enum Mem {
    Device(u64),
    Host(*mut u8),
}

/// One thread per value of `n`, in blocks of 256.
fn launch_1d(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n as u32).div_ceil(256), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn launch_2d(w: usize, h: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (w.div_ceil(32) as u32, h.div_ceil(8) as u32, 1),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Device memory `(free, total)` in bytes, as the driver reports it (`cuMemGetInfo`):
    /// what the technician page's overview shows.
    pub fn memory(&self) -> Result<(usize, usize), CudaError> {
        relax_capture_mode();
        self.ctx.bind_to_thread()?;
        Ok(cudarc::driver::result::mem_get_info()?)
    }

    /// Makes this GPU's CUDA context current on the calling thread, for driver calls made
    /// outside this crate in it (a Jetson's EGL mappings of NVMM buffers).
    pub fn make_current(&self) -> Result<(), CudaError> {
        relax_capture_mode();
        Ok(self.ctx.bind_to_thread()?)
    }

    /// Opens device `ordinal`: probes the libraries, creates the context and a stream,
    /// compiles the kernels for its architecture (or loads them from `cache_dir`).
    pub fn open(ordinal: usize, cache_dir: Option<PathBuf>) -> Result<Gpu, CudaError> {
        if !driver_present() {
            return Err(CudaError::NoDriver);
        }
        let ctx = CudaContext::new(ordinal)?;
        let (maj, min) = ctx.compute_capability()?;
        let name = format!("{} (sm_{maj}{min})", ctx.name()?);
        let stream = ctx.new_stream()?;
        let (module, ptx_source) = Self::module(&ctx, maj, min, cache_dir)?;
        let kernels = Kernels {
            preprocess: module.load_function("nv12_to_rgb_planar_stretch")?,
            fit: module.load_function("nv12_to_planar_fit")?,
            outline: module.load_function("outline_luma")?,
            composite: module.load_function("composite_nv12")?,
            scale: module.load_function("scale_plane")?,
            rgb_to_nv12: module.load_function("rgb_to_nv12")?,
            mask_smooth: module.load_function("mask_smooth")?,
            mask_blur_h: module.load_function("mask_blur_h")?,
            mask_blur_v: module.load_function("mask_blur_v_threshold")?,
            yolo: module.load_function("yolo_candidates")?,
        };
        Ok(Gpu {
            ctx,
            stream,
            kernels,
            copies: Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]),
            name,
            ptx_source,
        })
    }

    /// The same GPU and kernels with a stream of its own: one per pipeline stream, so
    /// streams do not wait for each other's work. Copies count in the shared counters.
    pub fn fork(&self) -> Result<Gpu, CudaError> {
        relax_capture_mode();
        Ok(Gpu {
            ctx: self.ctx.clone(),
            stream: self.ctx.new_stream()?,
            kernels: self.kernels.clone(),
            copies: self.copies.clone(),
            name: self.name.clone(),
            ptx_source: self.ptx_source.clone(),
        })
    }

    /// The kernels for `sm_<maj><min>`: PTX from the cache (keyed by the source's hash and
    /// the architecture) when the driver accepts it, else compiled with NVRTC and cached. A
    /// cached PTX the driver refuses (written by a newer NVRTC before a driver downgrade) is
    /// compiled again, not an error.
    fn module(
        ctx: &Arc<CudaContext>,
        maj: i32,
        min: i32,
        cache_dir: Option<PathBuf>,
    ) -> Result<(Arc<cudarc::driver::CudaModule>, String), CudaError> {
        use sha2::Digest;
        let source = kernel_source();
        let key: String = sha2::Sha256::digest(format!("{source}|sm_{maj}{min}|fmad=false"))
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let cached = cache_dir
            .as_ref()
            .map(|d| d.join(format!("kernels-{key}.ptx")));
        if let Some(p) = &cached
            && let Ok(text) = std::fs::read_to_string(p)
            && let Ok(m) = ctx.load_module(cudarc::nvrtc::Ptx::from_src(text))
        {
            return Ok((m, "cache".into()));
        }
        let version = nvrtc_version().ok_or(CudaError::NoNvrtc)?;
        let opts = cudarc::nvrtc::CompileOptions {
            fmad: Some(false),
            options: vec![format!("--gpu-architecture=compute_{maj}{min}")],
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(source, opts)
            .map_err(|e| CudaError::Compile(e.to_string()))?;
        if let (Some(p), Some(d)) = (&cached, &cache_dir) {
            let _ = std::fs::create_dir_all(d);
            let _ = std::fs::write(p, ptx.to_src());
        }
        Ok((
            ctx.load_module(ptx)?,
            format!("compiled by NVRTC {}.{}", version.0, version.1),
        ))
    }

    /// Host↔device transfers so far, this GPU's and its forks' (each upload or download of
    /// a buffer counts one).
    pub fn host_copies(&self) -> u64 {
        self.copies[0].load(Ordering::Relaxed)
    }

    /// Of [`Gpu::host_copies`], the transfers of whole frames (the rest are model tensors,
    /// masks, one-off backgrounds and result lists).
    pub fn frame_transfers(&self) -> u64 {
        self.copies[1].load(Ordering::Relaxed)
    }

    /// Of [`Gpu::host_copies`], the downloads of result lists ([`Gpu::download_results`]:
    /// a detector's candidates, a few KiB, instead of its whole output tensor).
    pub fn result_transfers(&self) -> u64 {
        self.copies[2].load(Ordering::Relaxed)
    }

    /// Downloads `src` into host planes (`y`: `height` rows of `y_stride` bytes; `uv`:
    /// `height/2` rows of `uv_stride`), two pitched copies, then waits for them. One host
    /// copy, one frame transfer; nothing is allocated.
    pub fn download_nv12_into<F: Nv12Frame + ?Sized>(
        &self,
        src: &F,
        y: &mut [u8],
        y_stride: usize,
        uv: &mut [u8],
        uv_stride: usize,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let (w, h, p) = src.geometry();
        if y_stride < w || uv_stride < w || y.len() < y_stride * h || uv.len() < uv_stride * h / 2 {
            return Err(CudaError::Size(format!(
                "host planes too small for a {w}x{h} NV12 frame"
            )));
        }
        {
            let (luma, chroma, _guard) = src.planes(&self.stream);
            self.ctx.bind_to_thread()?;
            // SAFETY: source rows lie inside `src`'s planes (pitch × rows), destination rows
            // inside the host slices (checked above); we wait for the copies before returning.
            let queued = unsafe {
                self.copy_2d(
                    (Mem::Device(luma), p),
                    (Mem::Host(y.as_mut_ptr()), y_stride),
                    w,
                    h,
                )
                .and_then(|()| {
                    self.copy_2d(
                        (Mem::Device(chroma), p),
                        (Mem::Host(uv.as_mut_ptr()), uv_stride),
                        w,
                        h / 2,
                    )
                })
            };
            // Wait even after a failure: a queued copy must not write into a surface that
            // goes back to its pool.
            let done = self.stream.synchronize();
            queued?;
            done?;
        }
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        self.copies[1].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Page-locks `buf` for fast downloads into it; keep the returned handle no longer
    /// than the memory lives.
    pub fn pin_host(&self, buf: &mut [u8]) -> Result<PinnedHost, CudaError> {
        relax_capture_mode();
        self.ctx.bind_to_thread()?;
        let ptr = buf.as_mut_ptr().cast();
        // SAFETY: `buf` is valid for its length; flags 0 = plain page-locking.
        unsafe { cudarc::driver::sys::cuMemHostRegister_v2(ptr, buf.len(), 0) }.result()?;
        Ok(PinnedHost {
            ptr,
            ctx: self.ctx.clone(),
        })
    }

    /// Downloads `dev` into `host` (same length; one host copy, waits for it).
    pub fn download_into<T: cudarc::driver::DeviceRepr>(
        &self,
        dev: &CudaSlice<T>,
        host: &mut [T],
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        same_len("download", dev.len(), host.len())?;
        self.stream.memcpy_dtoh(dev, host)?;
        self.stream.synchronize()?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// [`Gpu::download_into`] of a result list (counted as one host copy and one
    /// [`Gpu::result_transfers`]).
    pub fn download_results(
        &self,
        dev: &CudaSlice<f32>,
        host: &mut [f32],
    ) -> Result<(), CudaError> {
        self.download_into(dev, host)?;
        self.copies[2].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Uploads `host` into `dev` (same length; one host copy).
    pub fn upload_into<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
        dev: &mut CudaSlice<T>,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        same_len("upload", host.len(), dev.len())?;
        self.stream.memcpy_htod(host, dev)?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Copies `src` to `dst` on the device (same width and height, any pitches; no host
    /// copy): two pitched copies queued on this GPU's stream.
    pub fn copy_nv12<S: Nv12Frame + ?Sized, D: Nv12Frame + ?Sized>(
        &self,
        src: &S,
        dst: &mut D,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let (w, h, sp) = src.geometry();
        let (dw, dh, dp) = dst.geometry();
        if (w, h) != (dw, dh) {
            return Err(CudaError::Size(format!(
                "device copy of a {w}x{h} frame into a {dw}x{dh} one"
            )));
        }
        self.ctx.bind_to_thread()?;
        let (sy, suv, _read) = src.planes(&self.stream);
        let (dy, duv, _write) = dst.planes_mut(&self.stream);
        // SAFETY: both ranges are `rows` rows of `w` bytes inside the frames' planes (their
        // pitches hold a row: Nv12Frame's contract); ordered on this stream.
        unsafe {
            self.copy_2d((Mem::Device(sy), sp), (Mem::Device(dy), dp), w, h)?;
            self.copy_2d((Mem::Device(suv), sp), (Mem::Device(duv), dp), w, h / 2)?;
        }
        Ok(())
    }

    /// A zeroed device buffer of `n` values.
    pub fn alloc_zeros<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
        &self,
        n: usize,
    ) -> Result<CudaSlice<T>, CudaError> {
        relax_capture_mode();
        Ok(self.stream.alloc_zeros::<T>(n)?)
    }

    /// A zeroed NV12 frame.
    pub fn alloc_nv12(&self, width: usize, height: usize) -> Result<DeviceNv12, CudaError> {
        relax_capture_mode();
        if !width.is_multiple_of(2) || !height.is_multiple_of(2) || width == 0 || height == 0 {
            return Err(CudaError::Size(format!(
                "NV12 needs even, non-zero sizes, not {width}x{height}"
            )));
        }
        let pitch = pitch_for(width);
        Ok(DeviceNv12 {
            width,
            height,
            pitch,
            data: self.stream.alloc_zeros::<u8>(pitch * height * 3 / 2)?,
        })
    }

    /// Uploads tightly packed NV12 (`width*height*3/2` bytes) into `dst` (one host copy).
    pub fn upload_nv12(&self, packed: &[u8], dst: &mut DeviceNv12) -> Result<(), CudaError> {
        relax_capture_mode();
        let (w, h, p) = (dst.width, dst.height, dst.pitch);
        if packed.len() != w * h * 3 / 2 {
            return Err(CudaError::Size(format!(
                "{} bytes is not a {w}x{h} NV12 frame",
                packed.len()
            )));
        }
        let mut staged = vec![0u8; dst.len()];
        for row in 0..h * 3 / 2 {
            staged[row * p..row * p + w].copy_from_slice(&packed[row * w..row * w + w]);
        }
        self.stream.memcpy_htod(&staged, &mut dst.data)?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        self.copies[1].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Downloads `src` as tightly packed NV12 (one host copy).
    pub fn download_nv12(&self, src: &DeviceNv12) -> Result<Vec<u8>, CudaError> {
        relax_capture_mode();
        let (w, h, p) = (src.width, src.height, src.pitch);
        let staged = self.stream.clone_dtoh(&src.data)?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        self.copies[1].fetch_add(1, Ordering::Relaxed);
        let mut out = vec![0u8; w * h * 3 / 2];
        for row in 0..h * 3 / 2 {
            out[row * w..row * w + w].copy_from_slice(&staged[row * p..row * p + w]);
        }
        Ok(out)
    }

    /// Uploads any buffer (one host copy).
    pub fn upload<T: cudarc::driver::DeviceRepr>(
        &self,
        host: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        relax_capture_mode();
        let s = self.stream.clone_htod(host)?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        Ok(s)
    }

    /// Downloads any buffer (one host copy).
    pub fn download<T: cudarc::driver::DeviceRepr>(
        &self,
        dev: &CudaSlice<T>,
    ) -> Result<Vec<T>, CudaError> {
        relax_capture_mode();
        let v = self.stream.clone_dtoh(dev)?;
        self.copies[0].fetch_add(1, Ordering::Relaxed);
        Ok(v)
    }

    /// Model input: `src` as planar RGB float 0..1, stretched to `ow`×`oh` (corner-aligned
    /// bilinear) into `out` (`3*ow*oh`) — `aegis_models::preprocess::planar` with
    /// `Fit::Stretch`, RGB order.
    pub fn preprocess<F: Nv12Frame + ?Sized>(
        &self,
        src: &F,
        out: &mut CudaSlice<f32>,
        ow: usize,
        oh: usize,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        fits_planes(out, ow, oh)?;
        let (w, h, pitch) = src.geometry();
        let (y, uv, _frame) = src.planes(&self.stream);
        let ints = [pitch, w, h, ow, oh].map(|v| v as i32);
        let mut b = self.stream.launch_builder(&self.kernels.preprocess);
        b.arg(&y).arg(&uv).arg(&ints[0]).arg(&ints[1]).arg(&ints[2]);
        b.arg(out).arg(&ints[3]).arg(&ints[4]);
        // SAFETY: the arguments match the kernel's signature; sizes were checked above and
        // the kernel bounds-checks its coordinates.
        unsafe { b.launch(launch_2d(ow, oh)) }?;
        Ok(())
    }

    /// Model input with the aspect ratio kept (half-pixel centres): `src` as planar float
    /// 0..1 into `out` (`3*ow*oh`), sampled as `fit` says — `aegis_models::preprocess::planar`
    /// with `Fit::PadBottomRight` or `Fit::Centred`.
    pub fn preprocess_fit<F: Nv12Frame + ?Sized>(
        &self,
        src: &F,
        out: &mut CudaSlice<f32>,
        ow: usize,
        oh: usize,
        fit: &Letterboxed,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        fits_planes(out, ow, oh)?;
        let (w, h, pitch) = src.geometry();
        let (y, uv, _frame) = src.planes(&self.stream);
        let ints = [pitch, w, h, ow, oh].map(|v| v as i32);
        let lens = [fit.len_x as i32, fit.len_y as i32, i32::from(fit.bgr)];
        let mut b = self.stream.launch_builder(&self.kernels.fit);
        b.arg(&y).arg(&uv);
        b.arg(&ints[0]).arg(&ints[1]).arg(&ints[2]);
        b.arg(out).arg(&ints[3]).arg(&ints[4]);
        b.arg(&fit.ratio_x)
            .arg(&fit.ratio_y)
            .arg(&fit.offset_x)
            .arg(&fit.offset_y);
        b.arg(&lens[0]).arg(&lens[1]).arg(&fit.pad).arg(&lens[2]);
        // SAFETY: the arguments match the kernel's signature; the output size was checked
        // and the kernel reads the frame only inside its bounds.
        unsafe { b.launch(launch_2d(ow, oh)) }?;
        Ok(())
    }

    /// Draws a rectangle's outline (2 px, `value`) into the luma plane —
    /// `aegis_models::stages::pixels::outline`.
    pub fn outline<F: Nv12Frame + ?Sized>(
        &self,
        frame: &mut F,
        x: usize,
        y: usize,
        w: usize,
        h: usize,
        value: u8,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let (fw, fh, pitch) = frame.geometry();
        if w == 0 || h == 0 || !inside(x, w, fw) || !inside(y, h, fh) {
            return Err(CudaError::Size("outline outside the frame".into()));
        }
        let (luma, _, _frame) = frame.planes_mut(&self.stream);
        let a = [pitch, x, y, w, h].map(|v| v as i32);
        let mut b = self.stream.launch_builder(&self.kernels.outline);
        b.arg(&luma);
        for v in &a {
            b.arg(v);
        }
        b.arg(&value);
        let cfg = LaunchConfig {
            grid_dim: ((w.max(h) as u32).div_ceil(256), 2, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the arguments match the kernel; the rectangle lies inside the frame.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// Composites `frame` over `bg` (same size) with the `s`×`s` mask (0 = background,
    /// 255 = frame), upsampled exactly as the CPU stage does.
    pub fn composite<F: Nv12Frame + ?Sized, B: Nv12Frame + ?Sized>(
        &self,
        frame: &mut F,
        bg: &B,
        mask: &CudaSlice<u8>,
        s: usize,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let (w, h, pitch) = frame.geometry();
        let (bw, bh, bg_pitch) = bg.geometry();
        if bw != w || bh != h || mask.len() < s * s {
            return Err(CudaError::Size(
                "background or mask does not fit the frame".into(),
            ));
        }
        let (y, uv, _frame) = frame.planes_mut(&self.stream);
        let (bg_y, bg_uv, _bg) = bg.planes(&self.stream);
        let ints = [pitch, w, h, bg_pitch, s].map(|v| v as i32);
        // The scaler's fixed-point steps per axis, computed once here (not per pixel).
        let step = |d: usize| ((s as i64) << 32) / d as i64;
        let steps = [step(w), step(h), step(w / 2), step(h / 2)];
        let mut b = self.stream.launch_builder(&self.kernels.composite);
        b.arg(&y).arg(&uv);
        b.arg(&ints[0]).arg(&ints[1]).arg(&ints[2]);
        b.arg(&bg_y).arg(&bg_uv).arg(&ints[3]);
        b.arg(mask).arg(&ints[4]);
        for st in &steps {
            b.arg(st);
        }
        // SAFETY: arguments match the kernel; sizes checked above.
        unsafe { b.launch(launch_2d(w / 2, h / 2)) }?;
        Ok(())
    }

    /// Scales a plane region (`bpp` 1 = luma, 2 = CbCr) at device address `src` (`sw`×`sh`,
    /// pitch `sp`) to `dst` — `aegis_hal::pixel::scale_plane[_uv]`.
    #[allow(clippy::too_many_arguments)]
    fn scale(
        &self,
        src: u64,
        sp: usize,
        sw: usize,
        sh: usize,
        dst: u64,
        dp: usize,
        dw: usize,
        dh: usize,
        bpp: usize,
    ) -> Result<(), CudaError> {
        let a = [sp, sw, sh].map(|v| v as i32);
        let d = [dp, dw, dh, bpp].map(|v| v as i32);
        let mut b = self.stream.launch_builder(&self.kernels.scale);
        b.arg(&src).arg(&a[0]).arg(&a[1]).arg(&a[2]);
        b.arg(&dst).arg(&d[0]).arg(&d[1]).arg(&d[2]).arg(&d[3]);
        // SAFETY: arguments match the kernel; callers pass regions inside their buffers.
        unsafe { b.launch(launch_2d(dw, dh)) }?;
        Ok(())
    }

    /// Blurs rectangle (`x`, `y`, `w`, `h`, even values) of `frame` with strength `factor`:
    /// shrink by `factor` (box filter) into `scratch`, scale back — as the CPU moderation
    /// stage's `blur_rect`.
    #[allow(clippy::too_many_arguments)]
    pub fn blur_rect<F: Nv12Frame + ?Sized>(
        &self,
        frame: &mut F,
        x: usize,
        y: usize,
        w: usize,
        h: usize,
        factor: usize,
        scratch: &mut CudaSlice<u8>,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        use cudarc::driver::DevicePtrMut;
        let factor = factor.max(2);
        let (fw, fh, p) = frame.geometry();
        if !inside(x, w, fw) || !inside(y, h, fh) {
            return Err(CudaError::Size("blur rectangle outside the frame".into()));
        }
        let scratch_len = scratch.len();
        let (luma, chroma, _frame) = frame.planes_mut(&self.stream);
        let (small, _scratch) = scratch.device_ptr_mut(&self.stream);
        for (bpp, base, rx, ry, rw, rh) in [
            (1usize, luma, x, y, w, h),
            (2, chroma, x / 2, y / 2, w / 2, h / 2),
        ] {
            let (sw, sh) = ((rw / factor).max(1), (rh / factor).max(1));
            if rw == 0 || rh == 0 || (sw == rw && sh == rh) {
                continue;
            }
            if scratch_len < sw * sh * bpp {
                return Err(CudaError::Size(format!(
                    "scratch needs {} bytes",
                    sw * sh * bpp
                )));
            }
            let region = base + (ry * p + rx * bpp) as u64;
            self.scale(region, p, rw, rh, small, sw * bpp, sw, sh, bpp)?;
            self.scale(small, sw * bpp, sw, sh, region, p, rw, rh, bpp)?;
        }
        Ok(())
    }

    /// Packed RGB24 (`rgb_pitch` bytes per row) → NV12 `dst` — `rgb24_to_nv12`, BT.601.
    pub fn rgb_to_nv12<F: Nv12Frame + ?Sized>(
        &self,
        rgb: &CudaSlice<u8>,
        rgb_pitch: usize,
        dst: &mut F,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let (w, h, pitch) = dst.geometry();
        if rgb.len() < rgb_pitch * h || rgb_pitch < 3 * w {
            return Err(CudaError::Size("RGB buffer smaller than the frame".into()));
        }
        let (y, uv, _frame) = dst.planes_mut(&self.stream);
        let ints = [rgb_pitch, w, h, pitch].map(|v| v as i32);
        let mut b = self.stream.launch_builder(&self.kernels.rgb_to_nv12);
        b.arg(rgb).arg(&ints[0]).arg(&ints[1]).arg(&ints[2]);
        b.arg(&y).arg(&uv).arg(&ints[3]);
        // SAFETY: arguments match the kernel; sizes checked above.
        unsafe { b.launch(launch_2d(w / 2, h / 2)) }?;
        Ok(())
    }

    /// The virtual-background mask from the segmenter's `s`×`s` person probabilities
    /// `prob`, as the CPU stage makes it: temporal smoothing into `prev` (keeping `ratio` of
    /// an uncertain pixel's previous value; `prev` takes `prob` when `!have_prev`), a box
    /// blur of radius `feather` through `tmp`, and the soft threshold `lo`..`1 - lo` to
    /// 0..255 in `mask`. Bit-exact with the CPU's floats (same operations, same order).
    #[allow(clippy::too_many_arguments)]
    pub fn mask_refine(
        &self,
        prob: &CudaSlice<f32>,
        prev: &mut CudaSlice<f32>,
        tmp: &mut CudaSlice<f32>,
        mask: &mut CudaSlice<u8>,
        s: usize,
        ratio: f32,
        have_prev: bool,
        feather: usize,
        lo: f32,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let n = s * s;
        if prob.len() < n || prev.len() < n || tmp.len() < n || mask.len() < n {
            return Err(CudaError::Size(format!(
                "mask buffers smaller than {s}x{s}"
            )));
        }
        let (ni, si, ri, hp) = (n as i32, s as i32, feather as i32, i32::from(have_prev));
        // The CPU's `1.0 / (2 * r + 1) as f32` and `1.0 - lo`, computed here as there.
        let norm = 1.0f32 / (2 * feather + 1) as f32;
        let hi = 1.0f32 - lo;
        let mut b = self.stream.launch_builder(&self.kernels.mask_smooth);
        b.arg(&mut *prev).arg(prob).arg(&ni).arg(&ratio).arg(&hp);
        // SAFETY: the arguments match the kernel; every buffer holds at least n values.
        unsafe { b.launch(launch_1d(n)) }?;
        let mut b = self.stream.launch_builder(&self.kernels.mask_blur_h);
        b.arg(&*prev).arg(&mut *tmp).arg(&si).arg(&ri).arg(&norm);
        // SAFETY: as above; the kernel bounds-checks x and y against s.
        unsafe { b.launch(launch_2d(s, s)) }?;
        let mut b = self.stream.launch_builder(&self.kernels.mask_blur_v);
        b.arg(&*tmp)
            .arg(mask)
            .arg(&si)
            .arg(&ri)
            .arg(&norm)
            .arg(&lo)
            .arg(&hi);
        // SAFETY: as above.
        unsafe { b.launch(launch_2d(s, s)) }?;
        Ok(())
    }

    /// The anchors of a YOLOv8 output worth decoding (`out`: `[4 + classes, n]` of one item),
    /// listed into `cand` as [`YOLO_CANDIDATE`] floats each after the count, so that a few
    /// KiB come down instead of the whole tensor: see `yolo_candidates` in kernels.cu for
    /// the layout, [`yolo_candidate_count`] for reading it. At most
    /// `(cand.len() - 1) / YOLO_CANDIDATE` are listed; the count may be higher.
    pub fn yolo_candidates(
        &self,
        out: &CudaSlice<f32>,
        classes: usize,
        min_score: f32,
        cand: &mut CudaSlice<f32>,
    ) -> Result<(), CudaError> {
        relax_capture_mode();
        let rows = 4 + classes;
        let n = out.len() / rows;
        if classes == 0 || n == 0 || !out.len().is_multiple_of(rows) || n >= 1 << 24 {
            return Err(CudaError::Size(format!(
                "a detector output of {} values is not [4 + {classes}, N] (N < 2^24)",
                out.len()
            )));
        }
        if cand.len() < 1 + YOLO_CANDIDATE {
            return Err(CudaError::Size(format!(
                "a candidate list of {} values holds no candidate",
                cand.len()
            )));
        }
        let cap = ((cand.len() - 1) / YOLO_CANDIDATE) as i32;
        self.stream.memset_zeros(&mut cand.slice_mut(0..1))?;
        let (ci, ni) = (classes as i32, n as i32);
        let mut b = self.stream.launch_builder(&self.kernels.yolo);
        b.arg(out)
            .arg(&ci)
            .arg(&ni)
            .arg(&min_score)
            .arg(cand)
            .arg(&cap);
        // SAFETY: the arguments match the kernel; `out` holds rows * n values, `cand`
        // 1 + 7 * cap (checked above); the kernel bounds-checks the anchor and the slot.
        unsafe { b.launch(launch_1d(n)) }?;
        Ok(())
    }

    /// Queues one pitched copy of `rows` rows of `width` bytes, `from` (memory, pitch) to
    /// `to`, on this GPU's stream.
    ///
    /// # Safety
    /// Both ends hold `rows` rows at their pitches, and stay valid until the copy has run
    /// (the caller waits for the stream, or orders later work on it).
    unsafe fn copy_2d(
        &self,
        (from, from_pitch): (Mem, usize),
        (to, to_pitch): (Mem, usize),
        width: usize,
        rows: usize,
    ) -> Result<(), cudarc::driver::DriverError> {
        use cudarc::driver::sys;
        let side = |m: Mem| match m {
            Mem::Device(p) => (
                sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
                std::ptr::null_mut(),
                p,
            ),
            Mem::Host(p) => (sys::CUmemorytype::CU_MEMORYTYPE_HOST, p.cast(), 0),
        };
        let (src_type, src_host, src_device) = side(from);
        let (dst_type, dst_host, dst_device) = side(to);
        let cp = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: src_type,
            srcHost: src_host,
            srcDevice: src_device,
            srcArray: std::ptr::null_mut(),
            srcPitch: from_pitch,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: dst_type,
            dstHost: dst_host,
            dstDevice: dst_device,
            dstArray: std::ptr::null_mut(),
            dstPitch: to_pitch,
            WidthInBytes: width,
            Height: rows,
        };
        // SAFETY: the caller's promise covers both ends; the descriptor is read during the
        // call only.
        unsafe { sys::cuMemcpy2DAsync_v2(&cp, self.stream.cu_stream()) }.result()
    }

    /// Waits for everything queued on this GPU's stream, calling the driver directly: unlike
    /// [`Gpu::sync`] it does not first report (and clear) an error cudarc stored for the
    /// context from another call, so it waits whatever happened before.
    pub fn wait_stream(&self) -> Result<(), CudaError> {
        relax_capture_mode();
        // SAFETY: the context and the stream are alive (held by `self`).
        unsafe {
            cudarc::driver::sys::cuCtxSetCurrent(self.ctx.cu_ctx()).result()?;
            cudarc::driver::sys::cuStreamSynchronize(self.stream.cu_stream()).result()?;
        }
        Ok(())
    }

    /// Waits for everything queued.
    pub fn sync(&self) -> Result<(), CudaError> {
        relax_capture_mode();
        self.stream.synchronize()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    // The BT.601 constants injected into the kernel source: tests/kernel_source.rs; their
    // values against aegis-hal's own converter: hal/tests/cuda_coefficients.rs (this crate
    // cannot depend on aegis-hal, which depends on it and on libav).

    /// A lent frame checks its planes like `Nv12Planes`, and goes back to its lender once,
    /// when dropped (no GPU needed: nothing here touches the addresses).
    #[test]
    fn a_lent_frame_goes_back_once_when_dropped() {
        use super::{Lender, LentNv12, Nv12Frame};
        use std::sync::{Arc, Mutex};
        #[derive(Default)]
        struct Back(Mutex<Vec<u64>>);
        impl Lender for Back {
            fn give_back(&self, token: u64) {
                self.0.lock().unwrap().push(token);
            }
        }
        let back = Arc::new(Back::default());
        // SAFETY: the addresses are never read or written (no kernel runs).
        let lent = |y: u64, size: (usize, usize, usize), token: u64| unsafe {
            LentNv12::new(y, y + 0x10_0000, size, token, back.clone())
        };
        let f = lent(0x1000, (64, 32, 128), 7).unwrap();
        assert_eq!((f.geometry(), f.token()), ((64, 32, 128), 7));
        assert!(
            back.0.lock().unwrap().is_empty(),
            "not before it is dropped"
        );
        drop(f);
        assert_eq!(*back.0.lock().unwrap(), vec![7]);
        for (y, size, what) in [
            (0x1000, (63, 32, 128), "even"),
            (0x1000, (64, 32, 32), "pitch"),
            (0, (64, 32, 128), "null"),
        ] {
            let e = lent(y, size, 9).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        assert_eq!(
            *back.0.lock().unwrap(),
            vec![7],
            "a refused frame was never lent"
        );
    }

    #[test]
    fn hide_list_names_libraries_and_rejects_typos() {
        use super::hidden_by;
        assert_eq!(hidden_by("", "libcuda"), None);
        assert_eq!(hidden_by("libnvrtc", "libcuda"), None);
        assert_eq!(
            hidden_by(" libnvrtc , libcuda", "libcuda").as_deref(),
            Some("hidden by AEGIS_CUDA_HIDE")
        );
        assert!(hidden_by("libnvrtc,libcuda", "libnvrtc").is_some());
        assert!(hidden_by("libnvcuvid", "libnvcuvid").is_some());
        // A typo hides everything and names the entry, rather than quietly hiding nothing.
        for lib in ["libcuda", "libnvrtc", "libnvcuvid"] {
            let why = hidden_by("cuda", lib).expect("unknown entry hides");
            assert!(
                why.contains("\"cuda\"") && why.contains("libcuda, libnvrtc"),
                "{why}"
            );
        }
    }

    #[test]
    fn foreign_planes_are_checked_before_any_kernel_sees_them() {
        use super::{Nv12Frame, Nv12Planes};
        let planes = |w, h, p, y, uv| {
            // SAFETY: nothing dereferences these addresses (no GPU in this test).
            unsafe { Nv12Planes::new(y, uv, w, h, p) }.map_err(|e| e.to_string())
        };
        assert_eq!(
            planes(64, 48, 128, 0x1000, 0x9000).unwrap().geometry(),
            (64, 48, 128)
        );
        for (w, h, p, y, uv, why) in [
            (63, 48, 128, 1, 1, "even"),
            (64, 47, 128, 1, 1, "even"),
            (0, 48, 128, 1, 1, "empty"),
            (64, 48, 32, 1, 1, "pitch"),
            (64, 48, 128, 0, 1, "null"),
            (64, 48, 128, 1, 0, "null"),
        ] {
            let e = planes(w, h, p, y, uv).unwrap_err();
            assert!(e.contains(why), "{w}x{h} pitch {p}: {e}");
        }
    }

    #[test]
    fn without_a_driver_open_says_so_instead_of_panicking() {
        if super::driver_present() {
            eprintln!("skipped: this machine has a CUDA driver");
            return;
        }
        let e = super::Gpu::open(0, None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("no CUDA driver"), "{e}");
    }
}
