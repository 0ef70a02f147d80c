//! CUDA's view of an NVMM buffer on Orin. Orin's GPU driver (nvgpu) cannot import an NVMM
//! buffer into CUDA directly (`NvBufSurfaceCudaBuffer` is for Thor's OpenRM driver); the route
//! r36's samples take is an EGL image of the surface (`NvBufSurfaceMapEglImage`, [`EglImage`])
//! registered with the CUDA driver (`cuGraphicsEGLRegisterImage`) and mapped as a `CUeglFrame`
//! whose planes are pitched device pointers (`cuGraphicsResourceGetMappedEglFrame`). The CUDA
//! backend's kernels then read and write the decoder's buffer in place: no copy.
//!
//! The three driver entry points are not in `cudarc`'s bindings; they are resolved here from
//! `libcuda.so.1` at run time. [`sys`] is written from CUDA 12.6's `cudaEGL.h` and `cuda.h`
//! (JetPack 6's CUDA; the PyPI wheel `nvidia-cuda-runtime-cu12==12.6.77` carries the same
//! headers), and `tests/abi.rs` checks its layout against numbers a C compiler printed from
//! them. The tests run the wrapper against a C stand-in for libcuda (`tests/stub/cuda_egl.c`);
//! only a Jetson shows that NVIDIA's driver maps NVMM buffers as its header documents.

use std::ffi::{CStr, c_char, c_int};
use std::sync::Arc;

use crate::nvbuf::{EglImage, EglMappedSurface, Surface, vendor_library};

/// The CUDA driver library, as JetPack 6 installs it (under
/// [`crate::nvbuf::R36_LIB_DIR`]) and meta-tegra's `tegra-libraries-cuda`.
pub const CUDA_LIB: &str = "libcuda.so.1";
/// Where libcuda comes from.
pub const CUDA_PACKAGE: &str = "nvidia-l4t-cuda (JetPack 6) or tegra-libraries-cuda (meta-tegra)";

/// The C declarations, from CUDA 12.6's `cudaEGL.h` / `cuda.h`.
#[allow(non_camel_case_types, non_snake_case, missing_docs)]
pub mod sys {
    use std::ffi::{c_char, c_int, c_uint, c_void};

    /// `CUresult`.
    pub type CUresult = c_int;
    /// `CUgraphicsResource` (opaque).
    pub type CUgraphicsResource = *mut c_void;
    /// `MAX_PLANES`.
    pub const MAX_PLANES: usize = 3;
    /// `CUeglFrameType`.
    pub const CU_EGL_FRAME_TYPE_ARRAY: c_int = 0;
    pub const CU_EGL_FRAME_TYPE_PITCH: c_int = 1;
    /// `CUeglColorFormat` values of the 8-bit NV12 layouts NvBufSurface makes (Y plane, then
    /// interleaved CbCr at half resolution): BT.601 limited and full range, BT.709 limited
    /// (the header has no 8-bit BT.709 full-range semi-planar value); and NV21 (refused).
    pub const CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR: c_int = 0x01;
    pub const CU_EGL_COLOR_FORMAT_YVU420_SEMIPLANAR: c_int = 0x15;
    pub const CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_ER: c_int = 0x26;
    pub const CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_709: c_int = 0x57;
    /// `CU_GRAPHICS_REGISTER_FLAGS_NONE` (read and write).
    pub const CU_GRAPHICS_REGISTER_FLAGS_NONE: c_uint = 0;

    /// `CUeglFrame` (`CUeglFrame_v1`): `frame` is a union of `CUarray pArray[3]` and
    /// `void *pPitch[3]`, both three pointers.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CUeglFrame {
        pub frame: [*mut c_void; MAX_PLANES],
        pub width: c_uint,
        pub height: c_uint,
        pub depth: c_uint,
        pub pitch: c_uint,
        pub planeCount: c_uint,
        pub numChannels: c_uint,
        pub frameType: c_int,
        pub eglColorFormat: c_int,
        pub cuFormat: c_int,
    }

    /// `cuGraphicsEGLRegisterImage(CUgraphicsResource *, EGLImageKHR, unsigned int)`.
    pub type RegisterFn =
        unsafe extern "C" fn(*mut CUgraphicsResource, *mut c_void, c_uint) -> CUresult;
    /// `cuGraphicsResourceGetMappedEglFrame(CUeglFrame *, CUgraphicsResource, unsigned int
    /// index, unsigned int mipLevel)`.
    pub type MappedFrameFn =
        unsafe extern "C" fn(*mut CUeglFrame, CUgraphicsResource, c_uint, c_uint) -> CUresult;
    /// `cuGraphicsUnregisterResource(CUgraphicsResource)`.
    pub type UnregisterFn = unsafe extern "C" fn(CUgraphicsResource) -> CUresult;
    /// `cuGetErrorString(CUresult, const char **)`.
    pub type ErrorStringFn = unsafe extern "C" fn(CUresult, *mut *const c_char) -> CUresult;
}

/// A CUDA call failed, or the mapped frame is not an NV12 the kernels take.
#[derive(Debug, thiserror::Error)]
pub enum EglFrameError {
    /// The driver refused a call.
    #[error("{call} failed: CUDA error {code} ({message})")]
    Call {
        /// The entry point.
        call: &'static str,
        /// The `CUresult`.
        code: i32,
        /// The driver's text for it.
        message: String,
    },
    /// The frame is not pitch-linear two-plane NV12.
    #[error(
        "the mapped EGL frame is not pitch-linear NV12 (type {frame_type}, {planes} planes, colour format {format:#x}): the CUDA kernels take NV12 only"
    )]
    NotNv12 {
        /// `CUeglFrameType`.
        frame_type: i32,
        /// Planes.
        planes: u32,
        /// `CUeglColorFormat`.
        format: i32,
    },
}

vendor_library! {
    /// `libcuda`'s EGL interop entry points, resolved once.
    pub struct CudaEglLib = CUDA_LIB, CUDA_PACKAGE;
    register: sys::RegisterFn = "cuGraphicsEGLRegisterImage",
    mapped_frame: sys::MappedFrameFn = "cuGraphicsResourceGetMappedEglFrame",
    unregister: sys::UnregisterFn = "cuGraphicsUnregisterResource",
    error_string: sys::ErrorStringFn = "cuGetErrorString",
}

impl CudaEglLib {
    fn check(&self, call: &'static str, code: sys::CUresult) -> Result<(), EglFrameError> {
        if code == 0 {
            return Ok(());
        }
        let mut text: *const c_char = std::ptr::null();
        // SAFETY: a valid out-pointer; on success the driver points it at a static string.
        let named = unsafe { (self.error_string)(code, &mut text) } == 0 && !text.is_null();
        let message = if named {
            // SAFETY: non-null, NUL-terminated, static (checked above).
            unsafe { CStr::from_ptr(text) }
                .to_string_lossy()
                .into_owned()
        } else {
            "no description".into()
        };
        Err(EglFrameError::Call {
            call,
            code,
            message,
        })
    }

    /// Registers `image` with CUDA and maps it: the caller's thread must have the CUDA
    /// context current (the one the kernels run in). The frame stays mapped, and `image`
    /// alive, until the [`MappedNv12`] is dropped.
    pub fn map_nv12<'i>(
        self: &Arc<Self>,
        image: &'i EglImage<'_>,
    ) -> Result<MappedNv12<'i>, EglFrameError> {
        // SAFETY: the image lives as long as 'i, which the mapping's lifetime is tied to.
        unsafe { self.map_image(image.as_ptr()) }
    }

    /// Registers and maps the image a surface owns ([`EglMappedSurface`]), keeping the
    /// three together until [`CudaMappedSurface::unmap`]: a frame lent to the pipeline. The
    /// thread must have the kernels' CUDA context current. On failure the surface comes
    /// back with the error.
    #[allow(clippy::result_large_err)]
    pub fn map_surface(
        self: &Arc<Self>,
        egl: EglMappedSurface,
    ) -> Result<CudaMappedSurface, (EglMappedSurface, EglFrameError)> {
        // SAFETY: the image lives as long as `egl`, which the returned value owns and
        // drops after the mapping (field order).
        match unsafe { self.map_image(egl.image()) } {
            Ok(mapping) => Ok(CudaMappedSurface { mapping, egl }),
            Err(e) => Err((egl, e)),
        }
    }

    /// # Safety
    /// `image` must be a live EGLImageKHR for as long as the returned mapping lives.
    unsafe fn map_image(
        self: &Arc<Self>,
        image: *mut std::ffi::c_void,
    ) -> Result<MappedNv12<'static>, EglFrameError> {
        let mut resource: sys::CUgraphicsResource = std::ptr::null_mut();
        // SAFETY: a valid out-pointer and an EGLImageKHR live while the mapping is (caller).
        let code =
            unsafe { (self.register)(&mut resource, image, sys::CU_GRAPHICS_REGISTER_FLAGS_NONE) };
        self.check("cuGraphicsEGLRegisterImage", code)?;
        // From here the resource is unregistered on every path (MappedNv12's drop).
        let mut mapped = MappedNv12 {
            lib: self.clone(),
            resource,
            frame: sys::CUeglFrame {
                frame: [std::ptr::null_mut(); sys::MAX_PLANES],
                width: 0,
                height: 0,
                depth: 0,
                pitch: 0,
                planeCount: 0,
                numChannels: 0,
                frameType: -1,
                eglColorFormat: -1,
                cuFormat: 0,
            },
            _image: std::marker::PhantomData,
        };
        // SAFETY: a valid out-pointer and the resource registered above; index 0, mip 0.
        let code = unsafe { (self.mapped_frame)(&mut mapped.frame, resource, 0, 0) };
        self.check("cuGraphicsResourceGetMappedEglFrame", code)?;
        let f = &mapped.frame;
        let nv12 = f.frameType == sys::CU_EGL_FRAME_TYPE_PITCH
            && f.planeCount == 2
            && [
                sys::CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR,
                sys::CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_ER,
                sys::CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_709,
            ]
            .contains(&f.eglColorFormat)
            && !f.frame[0].is_null()
            && !f.frame[1].is_null();
        if !nv12 {
            return Err(EglFrameError::NotNv12 {
                frame_type: f.frameType,
                planes: f.planeCount,
                format: f.eglColorFormat,
            });
        }
        Ok(mapped)
    }
}

/// An NVMM surface mapped for CUDA: two pitched planes in device memory (the decoder's
/// buffer itself), valid until dropped (`cuGraphicsUnregisterResource`).
pub struct MappedNv12<'i> {
    lib: Arc<CudaEglLib>,
    resource: sys::CUgraphicsResource,
    frame: sys::CUeglFrame,
    _image: std::marker::PhantomData<&'i ()>,
}

impl MappedNv12<'_> {
    /// The luma plane's device address.
    pub fn y(&self) -> u64 {
        self.frame.frame[0] as u64
    }
    /// The interleaved CbCr plane's device address.
    pub fn uv(&self) -> u64 {
        self.frame.frame[1] as u64
    }
    /// Bytes per row (both planes).
    pub fn pitch(&self) -> usize {
        self.frame.pitch as usize
    }
    /// Width and height of the luma plane.
    pub fn size(&self) -> (usize, usize) {
        (self.frame.width as usize, self.frame.height as usize)
    }
    /// The `CUeglColorFormat` (which matrix and range the pixels use).
    pub fn color_format(&self) -> c_int {
        self.frame.eglColorFormat
    }

    /// The frame as the CUDA backend's kernels take it, valid while this mapping lives: the
    /// kernels (`aegis_cuda::Gpu::composite`, `blur_rect`, `preprocess`, ...) then work on
    /// the NVMM buffer in place.
    pub fn planes(&self) -> Result<aegis_cuda::Nv12Planes<'_>, aegis_cuda::CudaError> {
        let (w, h) = self.size();
        // SAFETY: the driver mapped both planes (map_nv12 checked a pitch-linear two-plane
        // NV12 frame with non-null planes) for the context current at mapping, `pitch`
        // bytes per row; they stay mapped until `self` is dropped, which the returned
        // lifetime ties to. The surface is the loop's alone while it is mapped.
        unsafe { aegis_cuda::Nv12Planes::new(self.y(), self.uv(), w, h, self.pitch()) }
    }
}

impl MappedNv12<'_> {
    /// Unregisters now, reporting a failure (a drop only logs it).
    pub fn unregister(self) -> Result<(), EglFrameError> {
        let this = std::mem::ManuallyDrop::new(self);
        let result = this.unregister_once();
        // SAFETY: `this` is not used again and its drop does not run: the Arc is moved out
        // once, here.
        drop(unsafe { std::ptr::read(&this.lib) });
        result
    }

    fn unregister_once(&self) -> Result<(), EglFrameError> {
        // SAFETY: registered in map_image and unregistered once (drop or `unregister`).
        let code = unsafe { (self.lib.unregister)(self.resource) };
        self.lib.check("cuGraphicsUnregisterResource", code)
    }
}

impl Drop for MappedNv12<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.unregister_once() {
            tracing::warn!("{e}");
        }
    }
}

/// A surface, its EGL image and CUDA's mapping of it, owned together: a work surface lent
/// to the pipeline while the CUDA backend's kernels run on it. Dropped, or
/// [`CudaMappedSurface::unmap`]ped, in that order: the CUDA registration, the image, then
/// (on drop) the surface. Unregistering needs the mapping thread's CUDA context current.
pub struct CudaMappedSurface {
    // Field order is drop order: the registration before the image it registered.
    mapping: MappedNv12<'static>,
    egl: EglMappedSurface,
}

// SAFETY: the CUDA handle is a driver object usable from any thread that has its context
// current (the unmapping contract above); the surface and image are `Send`.
unsafe impl Send for CudaMappedSurface {}

impl CudaMappedSurface {
    /// CUDA's view of the pixels.
    pub fn mapping(&self) -> &MappedNv12<'static> {
        &self.mapping
    }

    /// The surface (its DMA-buf fd, its size).
    pub fn surface(&self) -> &Surface {
        self.egl.surface()
    }

    /// Unregisters the image from CUDA, destroys it and hands the surface back. A surface
    /// CUDA may still have registered (the unregister failed) is never handed back: it is
    /// leaked with its image rather than destroyed under the driver. One whose image could
    /// not be destroyed is destroyed here. Either way the error says what failed.
    pub fn unmap(self) -> Result<Surface, String> {
        let CudaMappedSurface { mapping, egl } = self;
        if let Err(e) = mapping.unregister() {
            std::mem::forget(egl);
            return Err(format!("{e}; the surface is leaked, not reused"));
        }
        match egl.unmap() {
            (surface, Ok(())) => Ok(surface),
            (surface, Err(e)) => {
                drop(surface);
                Err(format!("{e}; the surface is destroyed, not reused"))
            }
        }
    }
}
