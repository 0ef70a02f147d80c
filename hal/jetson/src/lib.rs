//! The Jetson backend's NVMM buffers: [`nvbuf`] wraps `libnvbufsurface` (allocate, map for the
//! CPU with cache syncs, EGL images for CUDA, surfaces behind DMA-buf fds) and [`transform`]
//! wraps `libnvbufsurftransform` (scale / convert / crop on the VIC). The V4L2 M2M codecs that
//! fill and drain these buffers are [`m2m`] (Orin exposes them only as V4L2
//! memory-to-memory devices driven through NVIDIA's libv4l2 plugin, docs/jetson-codecs.md);
//! [`platform`] says which Jetson this is and what that means for the backend,
//! [`cuda_egl`] maps a surface's EGL image for CUDA (Orin's zero-copy route to the kernels),
//! and [`nvmm`] is the frame loop that ties them together: decoder → VIC → CUDA → encoder,
//! with no host copy. [`lend`] is that loop's decode half for the agent's pipeline: it lends
//! the mapped work surfaces to the pipeline's CUDA stages as frames, and [`camera`] does the
//! same for USB cameras captured straight into NVMM.
//!
//! **Loading.** Nothing links a vendor library: both libraries are opened at run time from an
//! explicit directory, then JetPack 6's `/usr/lib/aarch64-linux-gnu/nvidia/`, then the plain
//! file name (the loader's path, as on meta-tegra images). Every entry point is resolved once
//! at load; a missing library or symbol is a [`nvbuf::LoadError`] that names the file, the
//! symbol and the package to install, so the agent can fall back to another backend.
//!
//! **Bindings.** `nvbuf::sys` and `transform::sys` are written by hand from Jetson Linux
//! r36.3.0's `nvbufsurface.h` and `nvbufsurftransform.h` (JetPack 6; the headers themselves
//! are NVIDIA-proprietary and are not in this repository).
//!
//! **What is verified where.** On any machine, `cargo test -p aegis-jetson` checks:
//! - every struct size, field offset and enum value of the bindings against numbers a C
//!   compiler printed from the real r36.3.0 headers for x86_64 and for aarch64
//!   (`tests/abi/probe.c`, recorded in `tests/abi/r36.3.0-lp64.txt`; identical on both), and
//!   on aarch64 again under qemu by `tools/cross-test.sh`;
//! - the dlopen path, symbol resolution, error reporting and the wrappers' call order
//!   (allocate → map → sync for CPU → sync for device → unmap → destroy), against C stand-ins
//!   of both libraries (`tests/stub/`, host memory in memfds behind the same ABI);
//! - [`cuda_egl`]'s `CUeglFrame` against CUDA 12.6's headers (`tests/abi/probe_cuda_egl.c`)
//!   and its register → map → unregister sequence against a stand-in for libcuda's interop.
//!
//! Only a Jetson proves the rest: that NVIDIA's libraries behave as their headers document
//! (pitch alignment, block-linear layouts, real DMA-buf fds from the codecs, EGL images that
//! CUDA can register, the VIC's scaling filters and colour matrices). Nothing here has run on
//! a Jetson yet.

pub mod camera;
pub mod cuda_egl;
pub mod lend;
pub mod m2m;
pub mod nvbuf;
pub mod nvmm;
pub mod platform;
pub mod transform;
