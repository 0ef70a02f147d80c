//! Aegis Edge hardware abstraction layer.
//!
//! The HAL owns everything that touches pixels or compressed video: pooled frame memory
//! ([`pool`], [`frame`]), pixel kernels ([`pixel`]), codecs ([`codec`]), containers
//! ([`container`]; [`fmp4`], the live view's fragmented MP4), sources ([`source`]) and
//! recording sinks ([`record`]). It knows nothing about models, MQTT or the web; the agent
//! wires these pieces into a pipeline.
//!
//! Two backends. The CPU backend: host memory surfaces, libavcodec for H.264/H.265 decode,
//! libx264 (through libavcodec) for encode, libavformat for MP4 demux and the fragmented-MP4
//! recorder (the decision and its measurements are in `docs/codecs.md`). The CUDA backend
//! (`aegis-cuda`, loaded at run time): NVDEC decode into device surfaces
//! ([`codec::nvdec_codec`], [`Frame::device`]) and NVRTC kernels for the pixel work, each
//! bit-exact with its CPU counterpart (`docs/cuda.md`); without a driver the CPU backend runs.
//! Still images are loaded by [`image`]; the BT.601 constants both backends use are the
//! `aegis-bt601` crate's.
//! Raw frames never leave the HAL's pooled surfaces: libav* only sees compressed packets and
//! the codec-side picture buffers that we copy into and out of (counted in
//! [`Frame::copies`]).

pub mod analytics;
pub mod backend;
pub mod clip;
pub mod codec;
pub mod container;
pub mod fmp4;
pub mod frame;
pub mod image;
pub mod pixel;
pub mod pool;
pub mod push;
pub mod record;
pub mod rng;
pub mod sink;
pub mod source;
pub mod stage;
pub mod synth;
pub mod v4l2;

pub use frame::{Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
pub use pool::{PoolClosed, PooledSurface, SurfacePool};

/// Initialise libav* once per process (idempotent) and route its log output through a
/// quieter level: libav prints a line per corrupt slice, which a flaky camera would turn
/// into a log flood; the HAL reports those as counted, typed errors instead.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Err(e) = ffmpeg_next::init() {
            tracing::error!(error = %e, "libav initialisation failed");
        }
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Fatal);
    });
}

/// Versions of the libav* libraries this process loaded, for `aegis version` and logs.
pub fn libav_versions() -> String {
    fn v(x: u32) -> String {
        format!("{}.{}.{}", x >> 16, (x >> 8) & 0xff, x & 0xff)
    }
    format!(
        "libavcodec {}, libavformat {}, libavutil {}",
        v(ffmpeg_next::codec::version()),
        v(ffmpeg_next::format::version()),
        v(ffmpeg_next::util::version())
    )
}
