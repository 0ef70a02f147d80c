//! NvBufSurfTransform: scale, convert and crop between NVMM surfaces on the VIC (or the GPU),
//! without the CPU touching pixels: decoder NV12 (often block-linear) to the pitch-linear
//! RGBA / NV12 that CUDA and the encoder take.
//!
//! A [`Transform`] holds the session parameters (compute device) and sets them before every
//! call, as the header asks of callers that use their own session, so it can be used from any
//! thread. It checks rectangles against the surfaces before the library sees them.

use std::ffi::c_void;
use std::sync::Arc;

use crate::nvbuf::{SurfaceHandle, vendor_library};

/// The file (and soname) of the transform library on r36.
pub const NVBUFSURFTRANSFORM_LIB: &str = "libnvbufsurftransform.so.1.0.0";

/// What to install when [`NVBUFSURFTRANSFORM_LIB`] is missing.
const NVBUFSURFTRANSFORM_PACKAGE: &str =
    "JetPack's nvidia-l4t-multimedia package (meta-tegra/Yocto: tegra-libraries-multimedia)";

/// `nvbufsurftransform.h` from Jetson Linux r36.3.0 (JetPack 6.0),
/// `jetson_multimedia_api/include/`, as `#[repr(C)]` Rust: the transform call and its session.
/// Sizes are asserted here against the header's values, every offset in `tests/abi.rs`.
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
pub mod sys {
    use std::ffi::c_void;

    use crate::nvbuf::sys::NvBufSurface;

    macro_rules! c_enum {
        ($(#[$doc:meta])* $name:ident: $repr:ty { $($(#[$vdoc:meta])* $variant:ident = $value:expr,)* }) => {
            $(#[$doc])*
            ///
            /// A C enum (4 bytes), kept as its integer.
            #[repr(transparent)]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
            pub struct $name(pub $repr);
            impl $name {
                $($(#[$vdoc])* pub const $variant: $name = $name($value);)*
            }
        };
    }

    c_enum! {
        /// `NvBufSurfTransform_Compute`: the engine doing the work.
        NvBufSurfTransform_Compute: u32 {
            /// `NvBufSurfTransformCompute_Default`: VIC on Jetson.
            NvBufSurfTransformCompute_Default = 0,
            /// `NvBufSurfTransformCompute_GPU`.
            NvBufSurfTransformCompute_GPU = 1,
            /// `NvBufSurfTransformCompute_VIC` (Jetson only).
            NvBufSurfTransformCompute_VIC = 2,
        }
    }

    c_enum! {
        /// `NvBufSurfTransform_Flip`.
        NvBufSurfTransform_Flip: u32 {
            /// `NvBufSurfTransform_None`.
            NvBufSurfTransform_None = 0,
            /// `NvBufSurfTransform_Rotate90` (clockwise).
            NvBufSurfTransform_Rotate90 = 1,
            /// `NvBufSurfTransform_Rotate180`.
            NvBufSurfTransform_Rotate180 = 2,
            /// `NvBufSurfTransform_Rotate270`.
            NvBufSurfTransform_Rotate270 = 3,
            /// `NvBufSurfTransform_FlipX`.
            NvBufSurfTransform_FlipX = 4,
            /// `NvBufSurfTransform_FlipY`.
            NvBufSurfTransform_FlipY = 5,
            /// `NvBufSurfTransform_Transpose`.
            NvBufSurfTransform_Transpose = 6,
            /// `NvBufSurfTransform_InvTranspose`.
            NvBufSurfTransform_InvTranspose = 7,
        }
    }

    c_enum! {
        /// `NvBufSurfTransform_Inter`: the scaling filter.
        NvBufSurfTransform_Inter: u32 {
            /// `NvBufSurfTransformInter_Nearest`.
            NvBufSurfTransformInter_Nearest = 0,
            /// `NvBufSurfTransformInter_Bilinear`.
            NvBufSurfTransformInter_Bilinear = 1,
            /// `NvBufSurfTransformInter_Algo1`: GPU cubic, VIC 5-tap.
            NvBufSurfTransformInter_Algo1 = 2,
            /// `NvBufSurfTransformInter_Algo2`: GPU super, VIC 10-tap.
            NvBufSurfTransformInter_Algo2 = 3,
            /// `NvBufSurfTransformInter_Algo3`: GPU Lanczos, VIC smart.
            NvBufSurfTransformInter_Algo3 = 4,
            /// `NvBufSurfTransformInter_Algo4`: GPU ignored, VIC nicest.
            NvBufSurfTransformInter_Algo4 = 5,
            /// `NvBufSurfTransformInter_Default`: nearest on both.
            NvBufSurfTransformInter_Default = 6,
        }
    }

    c_enum! {
        /// `NvBufSurfTransform_Error`: what the transform calls return.
        NvBufSurfTransform_Error: i32 {
            /// `NvBufSurfTransformError_ROI_Error`.
            NvBufSurfTransformError_ROI_Error = -4,
            /// `NvBufSurfTransformError_Invalid_Params`.
            NvBufSurfTransformError_Invalid_Params = -3,
            /// `NvBufSurfTransformError_Execution_Error`.
            NvBufSurfTransformError_Execution_Error = -2,
            /// `NvBufSurfTransformError_Unsupported`.
            NvBufSurfTransformError_Unsupported = -1,
            /// `NvBufSurfTransformError_Success`.
            NvBufSurfTransformError_Success = 0,
        }
    }

    /// `NvBufSurfTransform_Transform_Flag` bits for `transform_flag`.
    pub const NVBUFSURF_TRANSFORM_CROP_SRC: u32 = 1;
    /// Crop (place into) the destination rectangle.
    pub const NVBUFSURF_TRANSFORM_CROP_DST: u32 = 1 << 1;
    /// `transform_filter` is set.
    pub const NVBUFSURF_TRANSFORM_FILTER: u32 = 1 << 2;
    /// `transform_flip` is set.
    pub const NVBUFSURF_TRANSFORM_FLIP: u32 = 1 << 3;
    /// Normalise the output.
    pub const NVBUFSURF_TRANSFORM_NORMALIZE: u32 = 1 << 4;
    /// Allow odd crop rectangles.
    pub const NVBUFSURF_TRANSFORM_ALLOW_ODD_CROP: u32 = 1 << 5;

    /// `NvBufSurfTransformRect`. Note the order: top, left, width, height.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct NvBufSurfTransformRect {
        /// Top row.
        pub top: u32,
        /// Left column.
        pub left: u32,
        /// Width in pixels.
        pub width: u32,
        /// Height in rows.
        pub height: u32,
    }

    /// `NvBufSurfTransformConfigParams`: the session.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfTransformConfigParams {
        /// VIC or GPU.
        pub compute_mode: NvBufSurfTransform_Compute,
        /// GPU id (ignored on VIC).
        pub gpu_id: i32,
        /// `cudaStream_t` (null: the default stream; ignored on VIC).
        pub cuda_stream: *mut c_void,
    }

    /// `NvBufSurfTransformParams` (the header's `struct _NvBufSurfaceTransformParams`).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfTransformParams {
        /// `NVBUFSURF_TRANSFORM_*` bits saying which fields below are valid.
        pub transform_flag: u32,
        /// Flip / rotation.
        pub transform_flip: NvBufSurfTransform_Flip,
        /// Scaling filter.
        pub transform_filter: NvBufSurfTransform_Inter,
        /// Source rectangles, one per batch buffer.
        pub src_rect: *mut NvBufSurfTransformRect,
        /// Destination rectangles, one per batch buffer.
        pub dst_rect: *mut NvBufSurfTransformRect,
    }

    #[cfg(target_pointer_width = "64")]
    const _: () = {
        use std::mem::size_of;
        assert!(size_of::<NvBufSurfTransformRect>() == 16);
        assert!(size_of::<NvBufSurfTransformConfigParams>() == 16);
        assert!(size_of::<NvBufSurfTransformParams>() == 32);
    };

    /// `NvBufSurfTransform_Error NvBufSurfTransformSetSessionParams(NvBufSurfTransformConfigParams *config_params)`.
    pub type NvBufSurfTransformSetSessionParamsFn =
        unsafe extern "C" fn(*mut NvBufSurfTransformConfigParams) -> NvBufSurfTransform_Error;
    /// `NvBufSurfTransform_Error NvBufSurfTransform(NvBufSurface *src, NvBufSurface *dst, NvBufSurfTransformParams *transform_params)`.
    pub type NvBufSurfTransformFn = unsafe extern "C" fn(
        *mut NvBufSurface,
        *mut NvBufSurface,
        *mut NvBufSurfTransformParams,
    ) -> NvBufSurfTransform_Error;
}

vendor_library! {
    /// `libnvbufsurftransform`, loaded, with its entry points resolved.
    pub struct TransformLib = NVBUFSURFTRANSFORM_LIB, NVBUFSURFTRANSFORM_PACKAGE;
    set_session: sys::NvBufSurfTransformSetSessionParamsFn = "NvBufSurfTransformSetSessionParams",
    transform: sys::NvBufSurfTransformFn = "NvBufSurfTransform",
}

/// The engine that runs transforms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compute {
    /// The library's default (VIC on Jetson).
    Default,
    /// The VIC (Jetson's video image compositor): frees the GPU for inference.
    Vic,
    /// The GPU, on the default CUDA stream of GPU 0.
    Gpu,
}

/// The scaling filter. VIC names in brackets where the header gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Nearest neighbour.
    Nearest,
    /// Bilinear.
    Bilinear,
    /// GPU cubic (VIC 5-tap).
    Cubic,
    /// GPU super-sampling (VIC 10-tap).
    Super,
    /// GPU Lanczos (VIC "smart").
    Lanczos,
}

/// Flip / rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flip {
    /// 90° clockwise.
    Rotate90,
    /// 180°.
    Rotate180,
    /// 270° clockwise.
    Rotate270,
    /// Mirror about the X axis.
    FlipX,
    /// Mirror about the Y axis.
    FlipY,
}

/// A rectangle in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    /// Left column.
    pub left: u32,
    /// Top row.
    pub top: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

/// What a transform does besides converting the whole source into the whole destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransformSpec {
    /// Read only this part of the source.
    pub src_rect: Option<Rect>,
    /// Write only this part of the destination (the rest is left as it was).
    pub dst_rect: Option<Rect>,
    /// Scaling filter (the library's default when `None`).
    pub filter: Option<Filter>,
    /// Flip or rotation.
    pub flip: Option<Flip>,
}

/// What the library said when a transform call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransformStatus {
    /// `NvBufSurfTransformError_ROI_Error`.
    #[error("source or destination rectangle rejected (ROI error)")]
    Roi,
    /// `NvBufSurfTransformError_Invalid_Params`.
    #[error("invalid parameters")]
    InvalidParams,
    /// `NvBufSurfTransformError_Execution_Error`.
    #[error("execution error")]
    Execution,
    /// `NvBufSurfTransformError_Unsupported`.
    #[error("unsupported feature or format")]
    Unsupported,
    /// A value the r36 header does not define.
    #[error("unknown error {0}")]
    Other(i32),
}

impl TransformStatus {
    fn check(raw: sys::NvBufSurfTransform_Error) -> Result<(), TransformStatus> {
        use sys::NvBufSurfTransform_Error as E;
        Err(match raw {
            E::NvBufSurfTransformError_Success => return Ok(()),
            E::NvBufSurfTransformError_ROI_Error => TransformStatus::Roi,
            E::NvBufSurfTransformError_Invalid_Params => TransformStatus::InvalidParams,
            E::NvBufSurfTransformError_Execution_Error => TransformStatus::Execution,
            E::NvBufSurfTransformError_Unsupported => TransformStatus::Unsupported,
            E(other) => TransformStatus::Other(other),
        })
    }
}

/// Why a transform failed.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    /// A library call failed.
    #[error("{call} failed: {status} ({what})")]
    Call {
        /// The entry point.
        call: &'static str,
        /// What it returned.
        status: TransformStatus,
        /// The operation, in words.
        what: String,
    },
    /// A rectangle is empty or outside its surface.
    #[error("{which} rectangle {rect:?} is empty or outside the {width}x{height} surface")]
    Rect {
        /// `source` or `destination`.
        which: &'static str,
        /// The rectangle.
        rect: Rect,
        /// The surface's width.
        width: u32,
        /// The surface's height.
        height: u32,
    },
}

/// Scales / converts / crops surfaces with one session configuration.
#[derive(Debug, Clone)]
pub struct Transform {
    lib: Arc<TransformLib>,
    compute: Compute,
}

impl Transform {
    /// Transforms on `compute`.
    pub fn new(lib: Arc<TransformLib>, compute: Compute) -> Transform {
        Transform { lib, compute }
    }

    /// Converts `src` (or `spec.src_rect` of it) into `dst` (or `spec.dst_rect` of it),
    /// scaling and converting formats as the two surfaces' sizes and formats differ.
    pub fn apply(
        &self,
        src: &SurfaceHandle,
        dst: &mut SurfaceHandle,
        spec: &TransformSpec,
    ) -> Result<(), TransformError> {
        let mut flags = 0;
        let mut src_rect = sys::NvBufSurfTransformRect::default();
        let mut dst_rect = sys::NvBufSurfTransformRect::default();
        if let Some(r) = spec.src_rect {
            src_rect = checked_rect("source", r, src)?;
            flags |= sys::NVBUFSURF_TRANSFORM_CROP_SRC;
        }
        if let Some(r) = spec.dst_rect {
            dst_rect = checked_rect("destination", r, dst)?;
            flags |= sys::NVBUFSURF_TRANSFORM_CROP_DST;
        }
        let filter = spec.filter.map(filter_raw);
        if filter.is_some() {
            flags |= sys::NVBUFSURF_TRANSFORM_FILTER;
        }
        let flip = spec.flip.map(flip_raw);
        if flip.is_some() {
            flags |= sys::NVBUFSURF_TRANSFORM_FLIP;
        }
        let mut params = sys::NvBufSurfTransformParams {
            transform_flag: flags,
            transform_flip: flip.unwrap_or(sys::NvBufSurfTransform_Flip::NvBufSurfTransform_None),
            transform_filter: filter
                .unwrap_or(sys::NvBufSurfTransform_Inter::NvBufSurfTransformInter_Default),
            src_rect: &mut src_rect,
            dst_rect: &mut dst_rect,
        };
        let what = || {
            format!(
                "{}x{} {:?} -> {}x{} {:?}, {spec:?}, {:?}",
                src.width(),
                src.height(),
                src.raw_color_format(),
                dst.width(),
                dst.height(),
                dst.raw_color_format(),
                self.compute
            )
        };
        let mut session = sys::NvBufSurfTransformConfigParams {
            compute_mode: match self.compute {
                Compute::Default => {
                    sys::NvBufSurfTransform_Compute::NvBufSurfTransformCompute_Default
                }
                Compute::Vic => sys::NvBufSurfTransform_Compute::NvBufSurfTransformCompute_VIC,
                Compute::Gpu => sys::NvBufSurfTransform_Compute::NvBufSurfTransformCompute_GPU,
            },
            gpu_id: 0,
            cuda_stream: std::ptr::null_mut::<c_void>(),
        };
        // SAFETY: session is a valid, initialised struct for the duration of the call.
        let raw = unsafe { (self.lib.set_session)(&mut session) };
        TransformStatus::check(raw).map_err(|status| TransformError::Call {
            call: "NvBufSurfTransformSetSessionParams",
            status,
            what: what(),
        })?;
        // SAFETY: both surfaces are live (SurfaceHandle invariant) with batch size >= 1; the
        // rectangles live on this stack frame through the call; the library only reads src.
        let raw = unsafe { (self.lib.transform)(src.as_raw(), dst.as_raw(), &mut params) };
        TransformStatus::check(raw).map_err(|status| TransformError::Call {
            call: "NvBufSurfTransform",
            status,
            what: what(),
        })
    }
}

/// `rect` as the library's struct, when it is non-empty and inside `surface`.
fn checked_rect(
    which: &'static str,
    rect: Rect,
    surface: &SurfaceHandle,
) -> Result<sys::NvBufSurfTransformRect, TransformError> {
    let (width, height) = (surface.width(), surface.height());
    let fits = |start: u32, len: u32, max: u32| {
        len > 0 && start.checked_add(len).is_some_and(|end| end <= max)
    };
    if !fits(rect.left, rect.width, width) || !fits(rect.top, rect.height, height) {
        return Err(TransformError::Rect {
            which,
            rect,
            width,
            height,
        });
    }
    Ok(sys::NvBufSurfTransformRect {
        top: rect.top,
        left: rect.left,
        width: rect.width,
        height: rect.height,
    })
}

fn filter_raw(filter: Filter) -> sys::NvBufSurfTransform_Inter {
    use sys::NvBufSurfTransform_Inter as I;
    match filter {
        Filter::Nearest => I::NvBufSurfTransformInter_Nearest,
        Filter::Bilinear => I::NvBufSurfTransformInter_Bilinear,
        Filter::Cubic => I::NvBufSurfTransformInter_Algo1,
        Filter::Super => I::NvBufSurfTransformInter_Algo2,
        Filter::Lanczos => I::NvBufSurfTransformInter_Algo3,
    }
}

fn flip_raw(flip: Flip) -> sys::NvBufSurfTransform_Flip {
    use sys::NvBufSurfTransform_Flip as F;
    match flip {
        Flip::Rotate90 => F::NvBufSurfTransform_Rotate90,
        Flip::Rotate180 => F::NvBufSurfTransform_Rotate180,
        Flip::Rotate270 => F::NvBufSurfTransform_Rotate270,
        Flip::FlipX => F::NvBufSurfTransform_FlipX,
        Flip::FlipY => F::NvBufSurfTransform_FlipY,
    }
}
