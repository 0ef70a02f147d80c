//! NvBufSurface: the NVMM (hardware) buffers that the Jetson's codecs, VIC and GPU share.
//!
//! A [`Surface`] owns one buffer (batch size 1) allocated by `libnvbufsurface` and destroys it
//! on drop; a [`SurfaceRef`] is the buffer behind a DMA-buf fd that someone else owns (a
//! codec's capture plane). Both give the plane layout, CPU mappings ([`MappedPlane`]: map, sync
//! for the CPU, and on release sync for the device and unmap) and EGL images for CUDA
//! ([`EglImage`]). This module does not copy pixels and does not pick formats: callers say
//! what they need, the library decides pitch and alignment, and the wrappers report them.

use std::ffi::{c_int, c_void};
use std::ops::{Deref, DerefMut};
use std::os::fd::{BorrowedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where JetPack 6 (Jetson Linux r36) installs NVIDIA's multimedia libraries (r35 used
/// `/usr/lib/aarch64-linux-gnu/tegra/`).
pub const R36_LIB_DIR: &str = "/usr/lib/aarch64-linux-gnu/nvidia";

/// The file (and soname) of the NvBufSurface library on r36.
pub const NVBUFSURFACE_LIB: &str = "libnvbufsurface.so.1.0.0";

/// What to install when [`NVBUFSURFACE_LIB`] is missing.
const NVBUFSURFACE_PACKAGE: &str = "JetPack's nvidia-l4t-multimedia-utils package (meta-tegra/Yocto: tegra-libraries-multimedia-utils)";

/// `nvbufsurface.h` from Jetson Linux r36.3.0 (JetPack 6.0), `jetson_multimedia_api/include/`,
/// as `#[repr(C)]` Rust. Only the pieces the pipeline uses; names follow the header so that
/// each field can be checked against it. Sizes and offsets are asserted against the values a
/// C compiler computed from the header (here for sizes, every offset in `tests/abi.rs`).
#[allow(non_camel_case_types, non_snake_case, non_upper_case_globals)]
pub mod sys {
    use std::ffi::{c_int, c_void};

    /// `STRUCTURE_PADDING`: the length unit of the header's `_reserved` arrays.
    pub const STRUCTURE_PADDING: usize = 4;
    /// `NVBUF_MAX_PLANES`.
    pub const NVBUF_MAX_PLANES: usize = 4;

    macro_rules! c_enum {
        ($(#[$doc:meta])* $name:ident: $repr:ty { $($(#[$vdoc:meta])* $variant:ident = $value:expr,)* }) => {
            $(#[$doc])*
            ///
            /// A C enum (4 bytes), kept as its integer: values from a newer library stay
            /// representable.
            #[repr(transparent)]
            #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
            pub struct $name(pub $repr);
            impl $name {
                $($(#[$vdoc])* pub const $variant: $name = $name($value);)*
            }
        };
    }

    c_enum! {
        /// `NvBufSurfaceMemMapFlags`: how [`NvBufSurfaceMap`](NvBufSurfaceMapFn) maps a plane.
        NvBufSurfaceMemMapFlags: u32 {
            /// `NVBUF_MAP_READ`.
            NVBUF_MAP_READ = 0,
            /// `NVBUF_MAP_WRITE`.
            NVBUF_MAP_WRITE = 1,
            /// `NVBUF_MAP_READ_WRITE`.
            NVBUF_MAP_READ_WRITE = 2,
        }
    }

    c_enum! {
        /// `NvBufSurfaceTag`: which component an allocation is accounted to.
        NvBufSurfaceTag: u32 {
            /// `NvBufSurfaceTag_NONE`.
            NvBufSurfaceTag_NONE = 0x0,
            /// `NvBufSurfaceTag_CAMERA`.
            NvBufSurfaceTag_CAMERA = 0x200,
            /// `NvBufSurfaceTag_VIDEO_ENC`.
            NvBufSurfaceTag_VIDEO_ENC = 0x1200,
            /// `NvBufSurfaceTag_VIDEO_DEC`.
            NvBufSurfaceTag_VIDEO_DEC = 0x1400,
            /// `NvBufSurfaceTag_VIDEO_CONVERT`.
            NvBufSurfaceTag_VIDEO_CONVERT = 0xf01,
        }
    }

    c_enum! {
        /// `NvBufSurfaceColorFormat` (the subset the pipeline can meet; the header has ~90).
        NvBufSurfaceColorFormat: u32 {
            /// `NVBUF_COLOR_FORMAT_INVALID`.
            NVBUF_COLOR_FORMAT_INVALID = 0,
            /// `NVBUF_COLOR_FORMAT_GRAY8`: 8-bit grey, one plane.
            NVBUF_COLOR_FORMAT_GRAY8 = 1,
            /// `NVBUF_COLOR_FORMAT_YUV420`: BT.601 limited range, three planes.
            NVBUF_COLOR_FORMAT_YUV420 = 2,
            /// `NVBUF_COLOR_FORMAT_YVU420`.
            NVBUF_COLOR_FORMAT_YVU420 = 3,
            /// `NVBUF_COLOR_FORMAT_YUV420_ER`: BT.601 full ("extended") range.
            NVBUF_COLOR_FORMAT_YUV420_ER = 4,
            /// `NVBUF_COLOR_FORMAT_YVU420_ER`.
            NVBUF_COLOR_FORMAT_YVU420_ER = 5,
            /// `NVBUF_COLOR_FORMAT_NV12`: BT.601 limited range, Y plane + interleaved CbCr.
            NVBUF_COLOR_FORMAT_NV12 = 6,
            /// `NVBUF_COLOR_FORMAT_NV12_ER`: NV12, BT.601 full range.
            NVBUF_COLOR_FORMAT_NV12_ER = 7,
            /// `NVBUF_COLOR_FORMAT_NV21`.
            NVBUF_COLOR_FORMAT_NV21 = 8,
            /// `NVBUF_COLOR_FORMAT_NV21_ER`.
            NVBUF_COLOR_FORMAT_NV21_ER = 9,
            /// `NVBUF_COLOR_FORMAT_UYVY`.
            NVBUF_COLOR_FORMAT_UYVY = 10,
            /// `NVBUF_COLOR_FORMAT_YUYV`.
            NVBUF_COLOR_FORMAT_YUYV = 14,
            /// `NVBUF_COLOR_FORMAT_YUV444`.
            NVBUF_COLOR_FORMAT_YUV444 = 18,
            /// `NVBUF_COLOR_FORMAT_RGBA`: R, G, B, A bytes, one plane.
            NVBUF_COLOR_FORMAT_RGBA = 19,
            /// `NVBUF_COLOR_FORMAT_BGRA`.
            NVBUF_COLOR_FORMAT_BGRA = 20,
            /// `NVBUF_COLOR_FORMAT_ARGB`.
            NVBUF_COLOR_FORMAT_ARGB = 21,
            /// `NVBUF_COLOR_FORMAT_ABGR`.
            NVBUF_COLOR_FORMAT_ABGR = 22,
            /// `NVBUF_COLOR_FORMAT_RGBx`.
            NVBUF_COLOR_FORMAT_RGBx = 23,
            /// `NVBUF_COLOR_FORMAT_BGRx`: B, G, R, unused bytes, one plane.
            NVBUF_COLOR_FORMAT_BGRx = 24,
            /// `NVBUF_COLOR_FORMAT_xRGB`.
            NVBUF_COLOR_FORMAT_xRGB = 25,
            /// `NVBUF_COLOR_FORMAT_xBGR`.
            NVBUF_COLOR_FORMAT_xBGR = 26,
            /// `NVBUF_COLOR_FORMAT_RGB`.
            NVBUF_COLOR_FORMAT_RGB = 27,
            /// `NVBUF_COLOR_FORMAT_BGR`.
            NVBUF_COLOR_FORMAT_BGR = 28,
            /// `NVBUF_COLOR_FORMAT_NV12_10LE`: 10-bit NV12 (HEVC Main10 decode).
            NVBUF_COLOR_FORMAT_NV12_10LE = 29,
            /// `NVBUF_COLOR_FORMAT_YUV420_709`.
            NVBUF_COLOR_FORMAT_YUV420_709 = 31,
            /// `NVBUF_COLOR_FORMAT_YUV420_709_ER`.
            NVBUF_COLOR_FORMAT_YUV420_709_ER = 32,
            /// `NVBUF_COLOR_FORMAT_NV12_709`.
            NVBUF_COLOR_FORMAT_NV12_709 = 33,
            /// `NVBUF_COLOR_FORMAT_NV12_709_ER`.
            NVBUF_COLOR_FORMAT_NV12_709_ER = 34,
            /// `NVBUF_COLOR_FORMAT_NV12_2020`.
            NVBUF_COLOR_FORMAT_NV12_2020 = 36,
        }
    }

    c_enum! {
        /// `NvBufSurfaceLayout`.
        NvBufSurfaceLayout: u32 {
            /// `NVBUF_LAYOUT_PITCH`: rows of `pitch` bytes.
            NVBUF_LAYOUT_PITCH = 0,
            /// `NVBUF_LAYOUT_BLOCK_LINEAR`: the hardware's tiled layout.
            NVBUF_LAYOUT_BLOCK_LINEAR = 1,
        }
    }

    c_enum! {
        /// `NvBufSurfaceMemType`.
        NvBufSurfaceMemType: u32 {
            /// `NVBUF_MEM_DEFAULT`: `NVBUF_MEM_SURFACE_ARRAY` on Jetson.
            NVBUF_MEM_DEFAULT = 0,
            /// `NVBUF_MEM_CUDA_PINNED`.
            NVBUF_MEM_CUDA_PINNED = 1,
            /// `NVBUF_MEM_CUDA_DEVICE`.
            NVBUF_MEM_CUDA_DEVICE = 2,
            /// `NVBUF_MEM_CUDA_UNIFIED`.
            NVBUF_MEM_CUDA_UNIFIED = 3,
            /// `NVBUF_MEM_SURFACE_ARRAY`: NVMM, Jetson only.
            NVBUF_MEM_SURFACE_ARRAY = 4,
            /// `NVBUF_MEM_HANDLE`: NVRM handle, Jetson only.
            NVBUF_MEM_HANDLE = 5,
            /// `NVBUF_MEM_SYSTEM`: malloc'ed.
            NVBUF_MEM_SYSTEM = 6,
        }
    }

    c_enum! {
        /// `NvBufSurfaceDisplayScanFormat`.
        NvBufSurfaceDisplayScanFormat: u32 {
            /// `NVBUF_DISPLAYSCANFORMAT_PROGRESSIVE`.
            NVBUF_DISPLAYSCANFORMAT_PROGRESSIVE = 0,
            /// `NVBUF_DISPLAYSCANFORMAT_INTERLACED`.
            NVBUF_DISPLAYSCANFORMAT_INTERLACED = 1,
        }
    }

    /// `NvBufSurfacePlaneParamsEx` (r36.3.0). Later r36 headers split `drmModifier[4]` off the
    /// front of `_reserved` (same size and offsets on 64-bit targets).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfacePlaneParamsEx {
        /// Progressive / interlaced, per plane.
        pub scanformat: [NvBufSurfaceDisplayScanFormat; NVBUF_MAX_PLANES],
        /// Offset of the second field of an interlaced plane.
        pub secondfieldoffset: [u32; NVBUF_MAX_PLANES],
        /// Block height (log2) of block-linear planes.
        pub blockheightlog2: [u32; NVBUF_MAX_PLANES],
        /// Physical address of each plane.
        pub physicaladdress: [u32; NVBUF_MAX_PLANES],
        /// Per-plane flags.
        pub flags: [u64; NVBUF_MAX_PLANES],
        /// `void * _reserved[STRUCTURE_PADDING * NVBUF_MAX_PLANES]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING * NVBUF_MAX_PLANES],
    }

    /// `NvBufSurfacePlaneParams`: the layout of each plane.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfacePlaneParams {
        /// Number of planes.
        pub num_planes: u32,
        /// Width of each plane, in pixels.
        pub width: [u32; NVBUF_MAX_PLANES],
        /// Height of each plane, in rows.
        pub height: [u32; NVBUF_MAX_PLANES],
        /// Pitch of each plane, in bytes.
        pub pitch: [u32; NVBUF_MAX_PLANES],
        /// Offset of each plane in the buffer, in bytes.
        pub offset: [u32; NVBUF_MAX_PLANES],
        /// Size of each plane, in bytes.
        pub psize: [u32; NVBUF_MAX_PLANES],
        /// Bytes per pixel of each plane.
        pub bytesPerPix: [u32; NVBUF_MAX_PLANES],
        /// `void * _reserved[STRUCTURE_PADDING * NVBUF_MAX_PLANES]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING * NVBUF_MAX_PLANES],
    }

    /// `NvBufSurfaceChromaSubsamplingParams`.
    #[repr(C)]
    #[derive(Debug, Clone, Copy, Default)]
    pub struct NvBufSurfaceChromaSubsamplingParams {
        /// Horizontal chroma siting (0 left, 1 centre, 2 right).
        pub chromaLocHoriz: u8,
        /// Vertical chroma siting (0 top, 1 centre, 2 bottom).
        pub chromaLocVert: u8,
    }

    /// `NvBufSurfaceCreateParams`: what to allocate (legacy form, also the first member of
    /// [`NvBufSurfaceAllocateParams`]).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfaceCreateParams {
        /// GPU id (multi-GPU systems only).
        pub gpuId: u32,
        /// Width in pixels.
        pub width: u32,
        /// Height in pixels.
        pub height: u32,
        /// Bytes to allocate; when non-zero, width/height/format are ignored.
        pub size: u32,
        /// Contiguous batch (CUDA memory types only).
        pub isContiguous: bool,
        /// Colour format.
        pub colorFormat: NvBufSurfaceColorFormat,
        /// Pitch or block-linear.
        pub layout: NvBufSurfaceLayout,
        /// Memory type.
        pub memType: NvBufSurfaceMemType,
    }

    /// `NvBufSurfaceAllocateParams`: the extended allocation parameters of
    /// `NvBufSurfaceAllocate` (r35+).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfaceAllocateParams {
        /// The legacy parameters.
        pub params: NvBufSurfaceCreateParams,
        /// Progressive or interlaced.
        pub displayscanformat: NvBufSurfaceDisplayScanFormat,
        /// Chroma siting.
        pub chromaSubsampling: NvBufSurfaceChromaSubsamplingParams,
        /// The component the memory is accounted to.
        pub memtag: NvBufSurfaceTag,
        /// No pitch padding (CUDA and system memory only).
        pub disablePitchPadding: bool,
        /// `uint32_t _reservedParam`.
        pub _reservedParam: u32,
        /// `void * _reserved[STRUCTURE_PADDING-1]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING - 1],
    }

    /// `NvBufSurfaceMappedAddr`: CPU mappings and the EGL image of one buffer.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfaceMappedAddr {
        /// CPU address of each mapped plane (null when not mapped).
        pub addr: [*mut c_void; NVBUF_MAX_PLANES],
        /// The `EGLImageKHR` made by `NvBufSurfaceMapEglImage` (null when none).
        pub eglImage: *mut c_void,
        /// `void * _reserved[STRUCTURE_PADDING]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING],
    }

    /// `NvBufSurfaceParamsEx`: extended per-buffer parameters (r35+).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfaceParamsEx {
        /// First valid byte (`NVBUF_MEM_HANDLE`).
        pub startofvaliddata: i32,
        /// Valid bytes (`NVBUF_MEM_HANDLE`).
        pub sizeofvaliddatainbytes: i32,
        /// Chroma siting (`NVBUF_MEM_SURFACE_ARRAY`).
        pub chromaSubsampling: NvBufSurfaceChromaSubsamplingParams,
        /// Protected (VPR) memory.
        pub is_protected: bool,
        /// Extended per-plane parameters.
        pub planeParamsex: NvBufSurfacePlaneParamsEx,
        /// `void * _reserved[STRUCTURE_PADDING]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING],
    }

    /// `NvBufSurfaceParams`: one buffer of a batch. r35 turned the first of the older
    /// headers' four `_reserved` pointers into `paramex` (same size).
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurfaceParams {
        /// Width in pixels.
        pub width: u32,
        /// Height in pixels.
        pub height: u32,
        /// Pitch of the first plane, in bytes.
        pub pitch: u32,
        /// Colour format.
        pub colorFormat: NvBufSurfaceColorFormat,
        /// Pitch or block-linear.
        pub layout: NvBufSurfaceLayout,
        /// The DMA-buf fd (`NVBUF_MEM_SURFACE_ARRAY`, `NVBUF_MEM_HANDLE`).
        pub bufferDesc: u64,
        /// Bytes allocated.
        pub dataSize: u32,
        /// The memory (not valid for `NVBUF_MEM_SURFACE_ARRAY` / `NVBUF_MEM_HANDLE`).
        pub dataPtr: *mut c_void,
        /// Per-plane layout.
        pub planeParams: NvBufSurfacePlaneParams,
        /// CPU mappings and EGL image.
        pub mappedAddr: NvBufSurfaceMappedAddr,
        /// Extended parameters.
        pub paramex: *mut NvBufSurfaceParamsEx,
        /// `void * _reserved[STRUCTURE_PADDING - 1]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING - 1],
    }

    /// `NvBufSurface`: a batch of buffers.
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct NvBufSurface {
        /// GPU id.
        pub gpuId: u32,
        /// Buffers in the batch.
        pub batchSize: u32,
        /// Buffers filled.
        pub numFilled: u32,
        /// Contiguous batch.
        pub isContiguous: bool,
        /// Memory type of every buffer.
        pub memType: NvBufSurfaceMemType,
        /// `batchSize` buffers.
        pub surfaceList: *mut NvBufSurfaceParams,
        /// `void * _reserved[STRUCTURE_PADDING]`.
        pub _reserved: [*mut c_void; STRUCTURE_PADDING],
    }

    // Sizes printed by a C compiler from the r36.3.0 header, identical for x86_64 and aarch64
    // (tests/abi/probe.c; every offset is checked in tests/abi.rs).
    #[cfg(target_pointer_width = "64")]
    const _: () = {
        use std::mem::size_of;
        assert!(size_of::<NvBufSurfacePlaneParamsEx>() == 224);
        assert!(size_of::<NvBufSurfacePlaneParams>() == 232);
        assert!(size_of::<NvBufSurfaceChromaSubsamplingParams>() == 2);
        assert!(size_of::<NvBufSurfaceCreateParams>() == 32);
        assert!(size_of::<NvBufSurfaceAllocateParams>() == 80);
        assert!(size_of::<NvBufSurfaceMappedAddr>() == 72);
        assert!(size_of::<NvBufSurfaceParamsEx>() == 272);
        assert!(size_of::<NvBufSurfaceParams>() == 384);
        assert!(size_of::<NvBufSurface>() == 64);
    };

    /// `int NvBufSurfaceCreate(NvBufSurface **surf, uint32_t batchSize, NvBufSurfaceCreateParams *params)`.
    pub type NvBufSurfaceCreateFn =
        unsafe extern "C" fn(*mut *mut NvBufSurface, u32, *mut NvBufSurfaceCreateParams) -> c_int;
    /// `int NvBufSurfaceAllocate(NvBufSurface **surf, uint32_t batchSize, NvBufSurfaceAllocateParams *paramsext)`.
    pub type NvBufSurfaceAllocateFn =
        unsafe extern "C" fn(*mut *mut NvBufSurface, u32, *mut NvBufSurfaceAllocateParams) -> c_int;
    /// `int NvBufSurfaceDestroy(NvBufSurface *surf)`.
    pub type NvBufSurfaceDestroyFn = unsafe extern "C" fn(*mut NvBufSurface) -> c_int;
    /// `int NvBufSurfaceMap(NvBufSurface *surf, int index, int plane, NvBufSurfaceMemMapFlags type)`.
    pub type NvBufSurfaceMapFn =
        unsafe extern "C" fn(*mut NvBufSurface, c_int, c_int, NvBufSurfaceMemMapFlags) -> c_int;
    /// `int NvBufSurfaceUnMap(NvBufSurface *surf, int index, int plane)`, and the same
    /// signature for `NvBufSurfaceSyncForCpu` / `NvBufSurfaceSyncForDevice`.
    pub type NvBufSurfacePlaneFn = unsafe extern "C" fn(*mut NvBufSurface, c_int, c_int) -> c_int;
    /// `int NvBufSurfaceMapEglImage(NvBufSurface *surf, int index)`, and
    /// `NvBufSurfaceUnMapEglImage`.
    pub type NvBufSurfaceIndexFn = unsafe extern "C" fn(*mut NvBufSurface, c_int) -> c_int;
    /// `int NvBufSurfaceFromFd(int dmabuf_fd, void **buffer)`.
    pub type NvBufSurfaceFromFdFn = unsafe extern "C" fn(c_int, *mut *mut c_void) -> c_int;
}

/// Why a vendor library could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The library is not installed (or not where it was looked for).
    #[error("{library} could not be loaded (tried {}): install {install}", tried.join("; "))]
    NotFound {
        /// The library's file name.
        library: &'static str,
        /// Each place tried, with the loader's reason.
        tried: Vec<String>,
        /// The package that provides it.
        install: &'static str,
    },
    /// The library lacks an entry point these bindings need.
    #[error(
        "{} has no symbol {symbol} ({detail}): not the Jetson Linux r36 (JetPack 6) {library} these bindings are written for",
        path.display()
    )]
    MissingSymbol {
        /// The library's file name.
        library: &'static str,
        /// Where it was loaded from.
        path: PathBuf,
        /// The missing entry point.
        symbol: &'static str,
        /// The loader's message.
        detail: String,
    },
}

/// Opens `file` from `dir` (when given), then [`R36_LIB_DIR`], then by name through the
/// dynamic loader's search path; the error lists every attempt and names `install`.
pub(crate) fn open_library(
    file: &'static str,
    dir: Option<&Path>,
    install: &'static str,
) -> Result<(libloading::Library, PathBuf), LoadError> {
    let mut candidates: Vec<PathBuf> = Vec::with_capacity(3);
    if let Some(dir) = dir {
        candidates.push(dir.join(file));
    }
    candidates.push(Path::new(R36_LIB_DIR).join(file));
    // A bare name: dlopen searches LD_LIBRARY_PATH, ld.so.cache (meta-tegra installs into
    // /usr/lib) and the default directories.
    candidates.push(PathBuf::from(file));
    let mut tried = Vec::with_capacity(candidates.len());
    for path in candidates {
        // SAFETY: loading runs the library's initialisers only; the libraries named here are
        // NVIDIA's multimedia libraries (or stand-ins with the same ABI), whose initialisers
        // have no preconditions.
        match unsafe { libloading::Library::new(&path) } {
            Ok(lib) => return Ok((lib, path)),
            Err(e) => tried.push(format!("{}: {e}", path.display())),
        }
    }
    Err(LoadError::NotFound {
        library: file,
        tried,
        install,
    })
}

/// Resolves `name` in `lib` as a value of type `T` (a function pointer type).
///
/// # Safety
/// `T` must be the symbol's real type.
pub(crate) unsafe fn symbol<T: Copy>(
    lib: &libloading::Library,
    library: &'static str,
    path: &Path,
    name: &'static str,
) -> Result<T, LoadError> {
    // SAFETY: the caller guarantees `T` is the symbol's type; the value is a function pointer
    // that stays valid while `lib` is loaded (the API structs keep `lib` with the pointers).
    unsafe { lib.get::<T>(name.as_bytes()) }
        .map(|s| *s)
        .map_err(|e| LoadError::MissingSymbol {
            library,
            path: path.to_path_buf(),
            symbol: name,
            detail: e.to_string(),
        })
}

/// Declares a vendor library's loaded API: a struct with the path it was loaded from, every
/// entry point resolved once (each field's type is the header's signature of the symbol it
/// names), the library kept loaded while the pointers are reachable, a `Debug` that shows the
/// path, `load(dir)` (from `dir` when given, else [`R36_LIB_DIR`], else the loader's search
/// path; a missing library or symbol is a [`LoadError`] naming it) and `path()`.
macro_rules! vendor_library {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident = $file:expr, $package:expr;
        $($field:ident: $ty:ty = $symbol:literal,)*
    ) => {
        $(#[$meta])*
        $vis struct $name {
            path: std::path::PathBuf,
            $($field: $ty,)*
            _lib: libloading::Library,
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("path", &self.path)
                    .finish_non_exhaustive()
            }
        }

        impl $name {
            /// Loads the library from `dir` (when given), else Jetson Linux's library
            /// directory, else the loader's search path, and resolves every entry point.
            pub fn load(
                dir: Option<&std::path::Path>,
            ) -> Result<std::sync::Arc<$name>, $crate::nvbuf::LoadError> {
                let (lib, path) = $crate::nvbuf::open_library($file, dir, $package)?;
                Ok(std::sync::Arc::new($name {
                    $(
                        // SAFETY: the field's type is the header's signature of `$symbol`.
                        $field: unsafe { $crate::nvbuf::symbol(&lib, $file, &path, $symbol)? },
                    )*
                    path,
                    _lib: lib,
                }))
            }

            /// Where the library was loaded from (for `aegis doctor`).
            pub fn path(&self) -> &std::path::Path {
                &self.path
            }
        }
    };
}
pub(crate) use vendor_library;

vendor_library! {
    /// `libnvbufsurface`, loaded, with every entry point this module calls resolved.
    pub struct NvBufSurfaceLib = NVBUFSURFACE_LIB, NVBUFSURFACE_PACKAGE;
    allocate: sys::NvBufSurfaceAllocateFn = "NvBufSurfaceAllocate",
    destroy: sys::NvBufSurfaceDestroyFn = "NvBufSurfaceDestroy",
    map: sys::NvBufSurfaceMapFn = "NvBufSurfaceMap",
    unmap: sys::NvBufSurfacePlaneFn = "NvBufSurfaceUnMap",
    sync_for_cpu: sys::NvBufSurfacePlaneFn = "NvBufSurfaceSyncForCpu",
    sync_for_device: sys::NvBufSurfacePlaneFn = "NvBufSurfaceSyncForDevice",
    map_egl_image: sys::NvBufSurfaceIndexFn = "NvBufSurfaceMapEglImage",
    unmap_egl_image: sys::NvBufSurfaceIndexFn = "NvBufSurfaceUnMapEglImage",
    from_fd: sys::NvBufSurfaceFromFdFn = "NvBufSurfaceFromFd",
}

/// Why a surface operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SurfaceError {
    /// A library call returned an error.
    #[error("{call}({what}) failed (returned {code})")]
    Call {
        /// The entry point.
        call: &'static str,
        /// Its arguments, in words.
        what: String,
        /// What it returned.
        code: i32,
    },
    /// The arguments or the library's answer do not describe a usable buffer.
    #[error("{0}")]
    Invalid(String),
}

fn check(
    call: &'static str,
    code: c_int,
    what: impl FnOnce() -> String,
) -> Result<(), SurfaceError> {
    if code == 0 {
        return Ok(());
    }
    Err(SurfaceError::Call {
        call,
        what: what(),
        code,
    })
}

/// Colour formats the wrappers allocate and name (the raw value of anything else is still
/// available from [`SurfaceHandle::raw_color_format`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColorFormat {
    /// 8-bit grey, one plane.
    Gray8,
    /// Y, U, V planes (BT.601 limited range).
    Yuv420,
    /// Y plane + interleaved CbCr plane (BT.601 limited range): the codecs' format.
    Nv12,
    /// NV12, BT.601 full range.
    Nv12Er,
    /// NV12, BT.709 limited range.
    Nv12Bt709,
    /// R, G, B, A bytes.
    Rgba,
    /// B, G, R, A bytes.
    Bgra,
    /// B, G, R, unused bytes.
    Bgrx,
    /// Packed 4:2:2 Y0 Cb Y1 Cr, one plane (BT.601 limited range): USB cameras.
    Yuyv,
    /// Packed 4:2:2 Cb Y0 Cr Y1, one plane (BT.601 limited range).
    Uyvy,
}

impl ColorFormat {
    const ALL: [(ColorFormat, sys::NvBufSurfaceColorFormat); 10] = [
        (
            ColorFormat::Gray8,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_GRAY8,
        ),
        (
            ColorFormat::Yuv420,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_YUV420,
        ),
        (
            ColorFormat::Nv12,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_NV12,
        ),
        (
            ColorFormat::Nv12Er,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_NV12_ER,
        ),
        (
            ColorFormat::Nv12Bt709,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_NV12_709,
        ),
        (
            ColorFormat::Rgba,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_RGBA,
        ),
        (
            ColorFormat::Bgra,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_BGRA,
        ),
        (
            ColorFormat::Bgrx,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_BGRx,
        ),
        (
            ColorFormat::Yuyv,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_YUYV,
        ),
        (
            ColorFormat::Uyvy,
            sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_UYVY,
        ),
    ];

    /// The header's value.
    pub fn raw(self) -> sys::NvBufSurfaceColorFormat {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map(|(_, raw)| *raw)
            .unwrap_or(sys::NvBufSurfaceColorFormat::NVBUF_COLOR_FORMAT_INVALID)
    }

    /// The format for a header value, when it is one of these.
    pub fn from_raw(raw: sys::NvBufSurfaceColorFormat) -> Option<ColorFormat> {
        Self::ALL.iter().find(|(_, r)| *r == raw).map(|(f, _)| *f)
    }
}

/// How the planes are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Rows of `pitch` bytes: what the CPU, CUDA kernels and most formats use.
    Pitch,
    /// The hardware's tiled layout (the decoder's and VIC's native one; not row-addressable).
    BlockLinear,
}

impl Layout {
    fn raw(self) -> sys::NvBufSurfaceLayout {
        match self {
            Layout::Pitch => sys::NvBufSurfaceLayout::NVBUF_LAYOUT_PITCH,
            Layout::BlockLinear => sys::NvBufSurfaceLayout::NVBUF_LAYOUT_BLOCK_LINEAR,
        }
    }
}

/// Which memory the library allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemType {
    /// The platform's default (NVMM surface array on Jetson).
    Default,
    /// NVMM (`NVBUF_MEM_SURFACE_ARRAY`): DMA-buf backed, shared with codecs, VIC and EGL.
    SurfaceArray,
    /// An NVRM handle (`NVBUF_MEM_HANDLE`).
    Handle,
    /// Plain host memory (`NVBUF_MEM_SYSTEM`).
    System,
}

impl MemType {
    fn raw(self) -> sys::NvBufSurfaceMemType {
        match self {
            MemType::Default => sys::NvBufSurfaceMemType::NVBUF_MEM_DEFAULT,
            MemType::SurfaceArray => sys::NvBufSurfaceMemType::NVBUF_MEM_SURFACE_ARRAY,
            MemType::Handle => sys::NvBufSurfaceMemType::NVBUF_MEM_HANDLE,
            MemType::System => sys::NvBufSurfaceMemType::NVBUF_MEM_SYSTEM,
        }
    }
}

/// The component an allocation is accounted to (`NvBufSurfaceTag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tag {
    /// No tag.
    #[default]
    None,
    /// Camera capture.
    Camera,
    /// Video decoder buffers.
    VideoDecoder,
    /// Video encoder buffers.
    VideoEncoder,
    /// Transform / composite output.
    VideoConvert,
}

impl Tag {
    fn raw(self) -> sys::NvBufSurfaceTag {
        match self {
            Tag::None => sys::NvBufSurfaceTag::NvBufSurfaceTag_NONE,
            Tag::Camera => sys::NvBufSurfaceTag::NvBufSurfaceTag_CAMERA,
            Tag::VideoDecoder => sys::NvBufSurfaceTag::NvBufSurfaceTag_VIDEO_DEC,
            Tag::VideoEncoder => sys::NvBufSurfaceTag::NvBufSurfaceTag_VIDEO_ENC,
            Tag::VideoConvert => sys::NvBufSurfaceTag::NvBufSurfaceTag_VIDEO_CONVERT,
        }
    }
}

/// What to allocate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SurfaceSpec {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour format.
    pub format: ColorFormat,
    /// Memory layout.
    pub layout: Layout,
    /// Memory type.
    pub mem: MemType,
    /// Accounting tag.
    pub tag: Tag,
}

impl SurfaceSpec {
    /// A pitch-linear NVMM surface, untagged.
    pub fn nvmm(width: u32, height: u32, format: ColorFormat) -> SurfaceSpec {
        SurfaceSpec {
            width,
            height,
            format,
            layout: Layout::Pitch,
            mem: MemType::SurfaceArray,
            tag: Tag::None,
        }
    }
}

/// How a plane is mapped for the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapMode {
    /// Read only.
    Read,
    /// Write only.
    Write,
    /// Read and write.
    ReadWrite,
}

impl MapMode {
    fn raw(self) -> sys::NvBufSurfaceMemMapFlags {
        match self {
            MapMode::Read => sys::NvBufSurfaceMemMapFlags::NVBUF_MAP_READ,
            MapMode::Write => sys::NvBufSurfaceMemMapFlags::NVBUF_MAP_WRITE,
            MapMode::ReadWrite => sys::NvBufSurfaceMemMapFlags::NVBUF_MAP_READ_WRITE,
        }
    }

    fn writes(self) -> bool {
        self != MapMode::Read
    }
}

/// One plane's layout, as the library reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlaneInfo {
    /// Width in pixels of this plane (half the frame's for NV12 chroma).
    pub width: u32,
    /// Height in rows.
    pub height: u32,
    /// Bytes from one row to the next.
    pub pitch: u32,
    /// Offset of the plane in the buffer.
    pub offset: u32,
    /// Bytes of the plane (what a CPU mapping covers).
    pub size: u32,
    /// Bytes per pixel (2 for the NV12 CbCr plane).
    pub bytes_per_pixel: u32,
}

/// A buffer the library allocated: the operations [`Surface`] and [`SurfaceRef`] share.
///
/// Invariant: `ptr` is a live `NvBufSurface` with `batchSize >= 1`, a non-null `surfaceList`
/// and at most [`sys::NVBUF_MAX_PLANES`] planes (checked when it is adopted).
pub struct SurfaceHandle {
    lib: Arc<NvBufSurfaceLib>,
    ptr: *mut sys::NvBufSurface,
}

impl std::fmt::Debug for SurfaceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self.params();
        f.debug_struct("SurfaceHandle")
            .field("width", &p.width)
            .field("height", &p.height)
            .field("format", &p.colorFormat)
            .field("fd", &p.bufferDesc)
            .finish()
    }
}

impl SurfaceHandle {
    /// Checks what the library returned from `call` before anything dereferences it.
    fn adopt(
        lib: Arc<NvBufSurfaceLib>,
        ptr: *mut sys::NvBufSurface,
        call: &'static str,
    ) -> Result<SurfaceHandle, SurfaceError> {
        if ptr.is_null() {
            return Err(SurfaceError::Invalid(format!(
                "{call} returned success but no surface"
            )));
        }
        // SAFETY: the library returned `ptr` as a live NvBufSurface (non-null, checked above).
        let surf = unsafe { ptr.read() };
        if surf.batchSize == 0 || surf.surfaceList.is_null() {
            return Err(SurfaceError::Invalid(format!(
                "{call} returned a surface with batch size {} and {} buffer list",
                surf.batchSize,
                if surf.surfaceList.is_null() {
                    "no"
                } else {
                    "a"
                }
            )));
        }
        // SAFETY: surfaceList is non-null and holds batchSize >= 1 entries.
        let planes = unsafe { (*surf.surfaceList).planeParams.num_planes };
        if planes as usize > sys::NVBUF_MAX_PLANES {
            return Err(SurfaceError::Invalid(format!(
                "{call} returned a surface with {planes} planes (at most {})",
                sys::NVBUF_MAX_PLANES
            )));
        }
        Ok(SurfaceHandle { lib, ptr })
    }

    /// A copy of the first buffer's parameters, as the library holds them now.
    fn params(&self) -> sys::NvBufSurfaceParams {
        // SAFETY: invariant of SurfaceHandle: ptr and surfaceList[0] are live.
        unsafe { (*self.ptr).surfaceList.read() }
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.params().width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.params().height
    }

    /// The colour format, when it is one [`ColorFormat`] names.
    pub fn color_format(&self) -> Option<ColorFormat> {
        ColorFormat::from_raw(self.raw_color_format())
    }

    /// The colour format as the library reports it.
    pub fn raw_color_format(&self) -> sys::NvBufSurfaceColorFormat {
        self.params().colorFormat
    }

    /// Pitch-linear or block-linear.
    pub fn layout(&self) -> Layout {
        if self.params().layout == sys::NvBufSurfaceLayout::NVBUF_LAYOUT_BLOCK_LINEAR {
            Layout::BlockLinear
        } else {
            Layout::Pitch
        }
    }

    /// The DMA-buf fd of the buffer (what V4L2 queues and [`Surface::from_fd`] takes). It
    /// belongs to the surface: do not close it.
    pub fn fd(&self) -> RawFd {
        self.params().bufferDesc as RawFd
    }

    /// Number of planes.
    pub fn num_planes(&self) -> usize {
        self.params().planeParams.num_planes as usize
    }

    /// The layout of `plane`.
    pub fn plane(&self, plane: usize) -> Result<PlaneInfo, SurfaceError> {
        let p = self.params().planeParams;
        if plane >= p.num_planes as usize {
            return Err(SurfaceError::Invalid(format!(
                "plane {plane} of a surface with {} planes",
                p.num_planes
            )));
        }
        Ok(PlaneInfo {
            width: p.width[plane],
            height: p.height[plane],
            pitch: p.pitch[plane],
            offset: p.offset[plane],
            size: p.psize[plane],
            bytes_per_pixel: p.bytesPerPix[plane],
        })
    }

    /// The `NvBufSurface*` for other NVIDIA calls (transform, codecs); it stays owned here.
    pub fn as_raw(&self) -> *mut sys::NvBufSurface {
        self.ptr
    }

    /// Maps `plane` for the CPU (`NvBufSurfaceMap`) and syncs it for the CPU
    /// (`NvBufSurfaceSyncForCpu`), so the hardware's last writes are visible. Releasing the
    /// mapping syncs it for the device after writes and unmaps it.
    pub fn map_plane(
        &mut self,
        plane: usize,
        mode: MapMode,
    ) -> Result<MappedPlane<'_>, SurfaceError> {
        let info = self.plane(plane)?;
        let len = info.size as usize;
        if self.layout() == Layout::Pitch && (info.pitch as u64) * (info.height as u64) > len as u64
        {
            return Err(SurfaceError::Invalid(format!(
                "plane {plane}: pitch {} x {} rows exceeds the plane's {len} bytes",
                info.pitch, info.height
            )));
        }
        let idx = plane as c_int;
        let what = || format!("buffer 0, plane {plane}");
        // SAFETY: ptr is a live surface (invariant), index 0 exists and plane < num_planes.
        let code = unsafe { (self.lib.map)(self.ptr, 0, idx, mode.raw()) };
        check("NvBufSurfaceMap", code, what)?;
        let addr = self.params().mappedAddr.addr[plane] as *mut u8;
        let ready = if addr.is_null() {
            Err(SurfaceError::Invalid(format!(
                "NvBufSurfaceMap(buffer 0, plane {plane}) succeeded but left no address"
            )))
        } else {
            // SAFETY: as above; the plane is mapped.
            let code = unsafe { (self.lib.sync_for_cpu)(self.ptr, 0, idx) };
            check("NvBufSurfaceSyncForCpu", code, what)
        };
        if let Err(e) = ready {
            // SAFETY: the plane was mapped above; unmapping it is the error path's cleanup.
            unsafe { (self.lib.unmap)(self.ptr, 0, idx) };
            return Err(e);
        }
        Ok(MappedPlane {
            surface: self,
            plane,
            addr,
            len,
            mode,
            released: false,
        })
    }

    /// Makes an EGL image of the buffer (`NvBufSurfaceMapEglImage`, NVMM memory only) for
    /// CUDA (`cuGraphicsEGLRegisterImage`); dropping the [`EglImage`] destroys it.
    pub fn map_egl_image(&self) -> Result<EglImage<'_>, SurfaceError> {
        Ok(EglImage {
            surface: self,
            image: self.make_egl_image()?,
            released: false,
        })
    }

    /// `NvBufSurfaceMapEglImage` on buffer 0: the image, which [`Self::destroy_egl_image`]
    /// must destroy.
    fn make_egl_image(&self) -> Result<*mut c_void, SurfaceError> {
        // SAFETY: ptr is a live surface (invariant); index 0 exists.
        let code = unsafe { (self.lib.map_egl_image)(self.ptr, 0) };
        check("NvBufSurfaceMapEglImage", code, || "buffer 0".into())?;
        let image = self.params().mappedAddr.eglImage;
        if image.is_null() {
            // SAFETY: the map call above succeeded; undo it.
            unsafe { (self.lib.unmap_egl_image)(self.ptr, 0) };
            return Err(SurfaceError::Invalid(
                "NvBufSurfaceMapEglImage(buffer 0) succeeded but left no EGLImage".into(),
            ));
        }
        Ok(image)
    }

    /// `NvBufSurfaceUnMapEglImage` on buffer 0 (once per [`Self::make_egl_image`]).
    fn destroy_egl_image(&self) -> Result<(), SurfaceError> {
        // SAFETY: ptr is a live surface (invariant); index 0 exists.
        let code = unsafe { (self.lib.unmap_egl_image)(self.ptr, 0) };
        check("NvBufSurfaceUnMapEglImage", code, || "buffer 0".into())
    }
}

/// A buffer this process allocated; destroyed (`NvBufSurfaceDestroy`) on drop.
#[derive(Debug)]
pub struct Surface {
    handle: SurfaceHandle,
}

// SAFETY: a surface is a heap object of the library plus a DMA-buf; NvBufSurface calls carry
// no thread affinity (r36's multimedia samples allocate on one thread and map, transform and
// destroy on others). `Surface` is not `Sync`: calls that change it take `&mut` or are made
// through one owner.
unsafe impl Send for Surface {}

impl Surface {
    /// Allocates one buffer (`NvBufSurfaceAllocate`, batch size 1).
    pub fn new(lib: &Arc<NvBufSurfaceLib>, spec: &SurfaceSpec) -> Result<Surface, SurfaceError> {
        if spec.width == 0 || spec.height == 0 {
            return Err(SurfaceError::Invalid(format!(
                "cannot allocate a {}x{} surface",
                spec.width, spec.height
            )));
        }
        let mut params = sys::NvBufSurfaceAllocateParams {
            params: sys::NvBufSurfaceCreateParams {
                gpuId: 0,
                width: spec.width,
                height: spec.height,
                size: 0,
                isContiguous: false,
                colorFormat: spec.format.raw(),
                layout: spec.layout.raw(),
                memType: spec.mem.raw(),
            },
            displayscanformat:
                sys::NvBufSurfaceDisplayScanFormat::NVBUF_DISPLAYSCANFORMAT_PROGRESSIVE,
            chromaSubsampling: sys::NvBufSurfaceChromaSubsamplingParams::default(),
            memtag: spec.tag.raw(),
            disablePitchPadding: false,
            _reservedParam: 0,
            _reserved: [std::ptr::null_mut(); sys::STRUCTURE_PADDING - 1],
        };
        let mut ptr = std::ptr::null_mut();
        // SAFETY: both pointers are valid for the call; the library writes `ptr` only.
        let code = unsafe { (lib.allocate)(&mut ptr, 1, &mut params) };
        check("NvBufSurfaceAllocate", code, || {
            format!(
                "{}x{} {:?} {:?} {:?}",
                spec.width, spec.height, spec.format, spec.layout, spec.mem
            )
        })?;
        let handle = match SurfaceHandle::adopt(lib.clone(), ptr, "NvBufSurfaceAllocate") {
            Ok(h) => h,
            Err(e) => {
                if !ptr.is_null() {
                    // SAFETY: the library allocated ptr; it is not used after this.
                    unsafe { (lib.destroy)(ptr) };
                }
                return Err(e);
            }
        };
        Ok(Surface { handle })
    }

    /// The surface behind a DMA-buf fd that an NvBufSurface allocation of this process made
    /// (`NvBufSurfaceFromFd`), e.g. a codec buffer. The allocation's owner destroys it: the
    /// returned view does not, and must not outlive the fd.
    pub fn from_fd<'fd>(
        lib: &Arc<NvBufSurfaceLib>,
        fd: BorrowedFd<'fd>,
    ) -> Result<SurfaceRef<'fd>, SurfaceError> {
        use std::os::fd::AsRawFd;
        let raw = fd.as_raw_fd();
        let mut ptr: *mut c_void = std::ptr::null_mut();
        // SAFETY: ptr is a valid out-pointer; fd is open for the call ('fd).
        let code = unsafe { (lib.from_fd)(raw, &mut ptr) };
        check("NvBufSurfaceFromFd", code, || format!("fd {raw}"))?;
        let handle = SurfaceHandle::adopt(lib.clone(), ptr.cast(), "NvBufSurfaceFromFd")?;
        Ok(SurfaceRef {
            handle,
            _fd: std::marker::PhantomData,
        })
    }
}

impl Deref for Surface {
    type Target = SurfaceHandle;
    fn deref(&self) -> &SurfaceHandle {
        &self.handle
    }
}

impl DerefMut for Surface {
    fn deref_mut(&mut self) -> &mut SurfaceHandle {
        &mut self.handle
    }
}

impl Drop for Surface {
    fn drop(&mut self) {
        // SAFETY: this process allocated the surface and owns it; mappings and EGL images
        // borrow it, so none outlives this call. The return value has nowhere to go.
        unsafe { (self.handle.lib.destroy)(self.handle.ptr) };
    }
}

/// A surface owned elsewhere (found from its DMA-buf fd); never destroyed from here.
#[derive(Debug)]
pub struct SurfaceRef<'fd> {
    handle: SurfaceHandle,
    _fd: std::marker::PhantomData<BorrowedFd<'fd>>,
}

impl Deref for SurfaceRef<'_> {
    type Target = SurfaceHandle;
    fn deref(&self) -> &SurfaceHandle {
        &self.handle
    }
}

impl DerefMut for SurfaceRef<'_> {
    fn deref_mut(&mut self) -> &mut SurfaceHandle {
        &mut self.handle
    }
}

/// A plane mapped for the CPU. [`MappedPlane::release`] (or drop, which ignores errors) syncs
/// for the device after writes (`NvBufSurfaceSyncForDevice`) and unmaps (`NvBufSurfaceUnMap`).
#[derive(Debug)]
pub struct MappedPlane<'s> {
    surface: &'s mut SurfaceHandle,
    plane: usize,
    addr: *mut u8,
    len: usize,
    mode: MapMode,
    released: bool,
}

impl MappedPlane<'_> {
    /// The plane's layout.
    pub fn info(&self) -> PlaneInfo {
        // The plane index was checked when mapping.
        let p = self.surface.params().planeParams;
        PlaneInfo {
            width: p.width[self.plane],
            height: p.height[self.plane],
            pitch: p.pitch[self.plane],
            offset: p.offset[self.plane],
            size: p.psize[self.plane],
            bytes_per_pixel: p.bytesPerPix[self.plane],
        }
    }

    /// The plane's bytes (rows of `info().pitch` bytes in pitch layout).
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the library mapped `len` bytes (the plane size) at addr, and they stay
        // mapped until release; `&self` keeps them from being written through this mapping.
        unsafe { std::slice::from_raw_parts(self.addr, self.len) }
    }

    /// The plane's bytes for writing, or `None` for a read-only mapping.
    pub fn as_mut_slice(&mut self) -> Option<&mut [u8]> {
        if !self.mode.writes() {
            return None;
        }
        // SAFETY: as in as_slice, mapped writable; `&mut self` makes this the only view, and
        // the surface is borrowed mutably so no second mapping of it exists.
        Some(unsafe { std::slice::from_raw_parts_mut(self.addr, self.len) })
    }

    /// Syncs for the device (after a writable mapping) and unmaps, reporting failures.
    pub fn release(mut self) -> Result<(), SurfaceError> {
        self.released = true;
        self.finish()
    }

    fn finish(&mut self) -> Result<(), SurfaceError> {
        let lib = &self.surface.lib;
        let (ptr, idx, plane) = (self.surface.ptr, self.plane as c_int, self.plane);
        let what = || format!("buffer 0, plane {plane}");
        let synced = if self.mode.writes() {
            // SAFETY: the plane is mapped on a live surface.
            let code = unsafe { (lib.sync_for_device)(ptr, 0, idx) };
            check("NvBufSurfaceSyncForDevice", code, what)
        } else {
            Ok(())
        };
        // Unmap even when the sync failed: the mapping must not leak.
        // SAFETY: the plane is mapped on a live surface; nothing reads addr after this.
        let code = unsafe { (lib.unmap)(ptr, 0, idx) };
        let unmapped = check("NvBufSurfaceUnMap", code, what);
        synced.and(unmapped)
    }
}

impl Drop for MappedPlane<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.finish();
        }
    }
}

/// An EGL image of a surface (`EGLImageKHR`), destroyed (`NvBufSurfaceUnMapEglImage`) on
/// [`EglImage::release`] or drop.
#[derive(Debug)]
pub struct EglImage<'s> {
    surface: &'s SurfaceHandle,
    image: *mut c_void,
    released: bool,
}

impl EglImage<'_> {
    /// The `EGLImageKHR`, valid while this value lives.
    pub fn as_ptr(&self) -> *mut c_void {
        self.image
    }

    /// Destroys the image, reporting a failure.
    pub fn release(mut self) -> Result<(), SurfaceError> {
        self.released = true;
        self.destroy()
    }

    fn destroy(&self) -> Result<(), SurfaceError> {
        // The image was made on this live surface and is destroyed once (`released`).
        self.surface.destroy_egl_image()
    }
}

impl Drop for EglImage<'_> {
    fn drop(&mut self) {
        if !self.released {
            let _ = self.destroy();
        }
    }
}

/// A surface that owns an EGL image of itself, for as long as CUDA works on it away from
/// the code that made it (a frame lent to the pipeline): [`EglImage`] without the borrow.
/// [`EglMappedSurface::unmap`] destroys the image and hands the surface back; a drop
/// destroys both.
#[derive(Debug)]
pub struct EglMappedSurface {
    /// `Some` until [`EglMappedSurface::unmap`].
    surface: Option<Surface>,
    image: *mut c_void,
}

// SAFETY: as `Surface` (no thread affinity in NvBufSurface calls); the EGLImage handle is a
// pointer the library made for this surface and is only passed back to it.
unsafe impl Send for EglMappedSurface {}

impl Surface {
    /// Makes the surface's EGL image (as [`SurfaceHandle::map_egl_image`]) and keeps both
    /// together. On failure the surface comes back with the error.
    #[allow(clippy::result_large_err)]
    pub fn into_egl_mapped(self) -> Result<EglMappedSurface, (Surface, SurfaceError)> {
        match self.make_egl_image() {
            Ok(image) => Ok(EglMappedSurface {
                surface: Some(self),
                image,
            }),
            Err(e) => Err((self, e)),
        }
    }
}

impl EglMappedSurface {
    /// The `EGLImageKHR`, valid while this value lives.
    pub fn image(&self) -> *mut c_void {
        self.image
    }

    /// The surface (its fd for the encoder, its size).
    pub fn surface(&self) -> &Surface {
        self.surface.as_ref().expect("present until unmapped")
    }

    /// Destroys the image; the surface comes back with the call's result.
    pub fn unmap(mut self) -> (Surface, Result<(), SurfaceError>) {
        let surface = self.surface.take().expect("present until unmapped");
        let result = surface.destroy_egl_image();
        (surface, result)
    }
}

/// A surface whose first plane stays mapped for the CPU for as long as it lives: a USB
/// camera's capture buffer, which the driver fills with the CPU through the DMA-buf. After
/// each frame [`CpuMappedSurface::sync_for_device`] makes those writes visible to the VIC, as
/// r36's `12_camera_v4l2_cuda` sample does (`NvBufSurfaceMap` once per buffer,
/// `NvBufSurfaceSyncForDevice` per frame). A drop unmaps, then destroys.
#[derive(Debug)]
pub struct CpuMappedSurface {
    surface: Surface,
}

impl Surface {
    /// Maps plane 0 for reading and writing (`NvBufSurfaceMap`) and keeps it mapped. On
    /// failure the surface comes back with the error.
    #[allow(clippy::result_large_err)]
    pub fn into_cpu_mapped(self) -> Result<CpuMappedSurface, (Surface, SurfaceError)> {
        // SAFETY: ptr is a live surface (invariant); buffer 0 exists, plane 0 is checked by
        // the library (a surface has at least one plane).
        let code = unsafe { (self.lib.map)(self.ptr, 0, 0, MapMode::ReadWrite.raw()) };
        if let Err(e) = check("NvBufSurfaceMap", code, || "buffer 0, plane 0".into()) {
            return Err((self, e));
        }
        Ok(CpuMappedSurface { surface: self })
    }
}

impl CpuMappedSurface {
    /// The surface (its fd for the camera, its layout for the check against the camera's).
    pub fn surface(&self) -> &Surface {
        &self.surface
    }

    /// Writes the CPU made to plane 0 become visible to the hardware
    /// (`NvBufSurfaceSyncForDevice`).
    pub fn sync_for_device(&self) -> Result<(), SurfaceError> {
        // SAFETY: plane 0 of a live surface, mapped while self lives.
        let code = unsafe { (self.surface.lib.sync_for_device)(self.surface.ptr, 0, 0) };
        check("NvBufSurfaceSyncForDevice", code, || {
            "buffer 0, plane 0".into()
        })
    }
}

impl Drop for CpuMappedSurface {
    fn drop(&mut self) {
        // SAFETY: plane 0 was mapped by into_cpu_mapped; nothing uses the mapping after this.
        let code = unsafe { (self.surface.lib.unmap)(self.surface.ptr, 0, 0) };
        if let Err(e) = check("NvBufSurfaceUnMap", code, || "buffer 0, plane 0".into()) {
            tracing::warn!("{e}");
        }
    }
}

impl Drop for EglMappedSurface {
    fn drop(&mut self) {
        if let Some(s) = &self.surface
            && let Err(e) = s.destroy_egl_image()
        {
            tracing::warn!("{e}");
        }
    }
}
