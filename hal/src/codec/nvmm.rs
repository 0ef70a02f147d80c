//! The `jetson` backend's decoder on Orin: the V4L2 M2M hardware decoder into NVMM, each
//! picture converted by the VIC into a pitch-linear work surface that is mapped for CUDA and
//! lent to the pipeline ([`aegis_jetson::lend`]), behind the same interface the sources use
//! for libavcodec and NVDEC ([`super::Decoding`]). The frame's device surface *is* the NVMM
//! buffer ([`DeviceSurface::lent`]): the CUDA stages work on it in place, the one download
//! per frame reads it there, and it goes back to its pool when the frame is dropped.
//!
//! The hardware works asynchronously, so pictures come out later than their packets go in.
//! The sources call [`NvmmDecoding::send`] only once [`NvmmDecoding::receive`] has nothing
//! more; a packet the decoder cannot take yet is kept (in a reused buffer) and fed first
//! next time, so that `send` never waits on surfaces that only a `receive` would hand on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_cuda::Gpu;
use aegis_jetson::cuda_egl::CudaEglLib;
use aegis_jetson::lend::{CudaContext, Next, NvmmDecoder, NvmmFrame};
use aegis_jetson::m2m::M2mError;
use aegis_jetson::m2m::device::{DECODER_NODES, ENCODER_NODES};
use aegis_jetson::m2m::{CaptureMemory, Codec, Decoder, DecoderConfig, Device, NodeDevice};
use aegis_jetson::nvbuf::NvBufSurfaceLib;
use aegis_jetson::nvmm::{DecoderSurfaces, NvmmError};
use aegis_jetson::transform::{Compute, Transform, TransformLib};
use ffmpeg_next as ff;

use super::annexb::{HwCodec, HwStream};
use super::{CodecError, DecodeStats};
use crate::frame::{DeviceSurface, Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pool::SurfacePool;

/// Largest coded side Orin's decoder takes per codec (Orin's NVDEC: 4096 for H.264, 8192
/// for H.265, as the Jetson Linux r36 multimedia guide lists them).
fn max_side(codec: HwCodec) -> usize {
    match codec {
        HwCodec::H264 => 4096,
        HwCodec::Hevc => 8192,
    }
}

/// How long the decoder may stay silent, with packets or the end of the stream queued and
/// nothing waiting on the pipeline, before the stream is failed as a hung decoder.
const STALL: Duration = Duration::from_secs(5);

/// Opens a decoder device.
pub type OpenDevice = dyn Fn() -> Result<Box<dyn Device + Send>, String> + Send + Sync;

/// How V4L2 cameras are reached: the kernel's nodes ([`KernelCameras`]), or stand-ins.
pub trait CameraNodes: Send + Sync {
    /// Every capture mode the camera at `device` offers.
    fn modes(&self, device: &std::path::Path) -> std::io::Result<Vec<crate::v4l2::CaptureMode>>;
    /// Opens it for capture.
    fn open(&self, device: &std::path::Path) -> Result<Box<dyn Device + Send>, String>;
}

/// Cameras as the kernel has them: enumerated with the V4L2 ioctls
/// ([`crate::v4l2::query`]), opened with plain `open` (a UVC camera is a kernel driver;
/// r36's `12_camera_v4l2_cuda` opens it so too).
#[derive(Debug, Default)]
pub struct KernelCameras;

impl CameraNodes for KernelCameras {
    fn modes(&self, device: &std::path::Path) -> std::io::Result<Vec<crate::v4l2::CaptureMode>> {
        crate::v4l2::query(device)
    }

    fn open(&self, device: &std::path::Path) -> Result<Box<dyn Device + Send>, String> {
        NodeDevice::open_kernel(device)
            .map(|d| Box::new(d) as Box<dyn Device + Send>)
            .map_err(|e| e.to_string())
    }
}

/// What the `jetson` backend decodes and encodes with on Orin: JetPack's NvBufSurface, VIC
/// and CUDA EGL libraries, and the way to the codecs' device nodes (no encoder on a module
/// without NVENC: Orin Nano).
pub struct NvmmCodecs {
    surfaces: Arc<NvBufSurfaceLib>,
    transforms: Arc<TransformLib>,
    cuda: Arc<CudaEglLib>,
    open_device: Box<OpenDevice>,
    open_encoder: Option<Box<OpenDevice>>,
    cameras: Box<dyn CameraNodes>,
}

impl std::fmt::Debug for NvmmCodecs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NvmmCodecs")
            .field("surfaces", &self.surfaces.path())
            .field("transforms", &self.transforms.path())
            .field("cuda", &self.cuda.path())
            .field("encoder", &self.open_encoder.is_some())
            .finish_non_exhaustive()
    }
}

impl NvmmCodecs {
    /// JetPack 6's libraries (from [`aegis_jetson::nvbuf::R36_LIB_DIR`] or the loader's
    /// path) and the codec nodes r36's samples open through libv4l2 (the encoder's only when
    /// the module has one); says which library is missing.
    pub fn load(encoder: bool) -> Result<NvmmCodecs, String> {
        let node = |nodes: &'static [&'static str]| -> Box<OpenDevice> {
            Box::new(move || {
                NodeDevice::open_nvidia(nodes)
                    .map(|d| Box::new(d) as Box<dyn Device + Send>)
                    .map_err(|e| e.to_string())
            })
        };
        Ok(NvmmCodecs::with(
            NvBufSurfaceLib::load(None).map_err(|e| e.to_string())?,
            TransformLib::load(None).map_err(|e| e.to_string())?,
            CudaEglLib::load(None).map_err(|e| e.to_string())?,
            node(&DECODER_NODES),
            encoder.then(|| node(&ENCODER_NODES)),
        ))
    }

    /// These libraries and these codec devices (the tests' stand-ins).
    pub fn with(
        surfaces: Arc<NvBufSurfaceLib>,
        transforms: Arc<TransformLib>,
        cuda: Arc<CudaEglLib>,
        open_device: Box<OpenDevice>,
        open_encoder: Option<Box<OpenDevice>>,
    ) -> NvmmCodecs {
        NvmmCodecs {
            surfaces,
            transforms,
            cuda,
            open_device,
            open_encoder,
            cameras: Box::new(KernelCameras),
        }
    }

    /// The same, with cameras reached through `cameras` (the tests' stand-ins).
    pub fn with_cameras(self, cameras: Box<dyn CameraNodes>) -> NvmmCodecs {
        NvmmCodecs { cameras, ..self }
    }

    /// How cameras are reached.
    pub fn cameras(&self) -> &dyn CameraNodes {
        &*self.cameras
    }

    /// The NvBufSurface, VIC and CUDA-EGL libraries.
    pub(crate) fn libraries(
        &self,
    ) -> (&Arc<NvBufSurfaceLib>, &Arc<TransformLib>, &Arc<CudaEglLib>) {
        (&self.surfaces, &self.transforms, &self.cuda)
    }

    /// Whether a hardware encoder is there to take NVMM frames.
    pub fn has_encoder(&self) -> bool {
        self.open_encoder.is_some()
    }

    /// Opens the hardware encoder (`None`: the module has none).
    pub(crate) fn encoder_device(&self) -> Option<Result<Box<dyn Device + Send>, String>> {
        self.open_encoder.as_ref().map(|open| open())
    }

    fn decoder(
        &self,
        codec: HwCodec,
        context: &Arc<dyn CudaContext>,
        work_surfaces: usize,
    ) -> Result<NvmmDecoder<Box<dyn Device + Send>>, CodecError> {
        let device = (self.open_device)().map_err(CodecError::Nvmm)?;
        let mut config = DecoderConfig::new(match codec {
            HwCodec::H264 => Codec::H264,
            HwCodec::Hevc => Codec::H265,
        });
        config.capture =
            CaptureMemory::DmaBuf(Box::new(DecoderSurfaces::new(self.surfaces.clone())));
        let decoder = Decoder::open(device, config).map_err(|e| CodecError::Nvmm(e.to_string()))?;
        Ok(NvmmDecoder::new(
            decoder,
            self.surfaces.clone(),
            Transform::new(self.transforms.clone(), Compute::Vic),
            self.cuda.clone(),
            context.clone(),
            work_surfaces,
        ))
    }
}

/// Packets the decoder has not taken yet, in buffers that are reused.
#[derive(Default)]
struct Stash {
    /// Access units, the numbers they are fed as, and whether they carry the parameter sets.
    queued: VecDeque<(Vec<u8>, u64, bool)>,
    spare: Vec<Vec<u8>>,
}

impl Stash {
    fn push(&mut self, au: &[u8], number: u64, headers: bool) {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(au);
        self.queued.push_back((buf, number, headers));
    }

    fn pop(&mut self) {
        if let Some((buf, ..)) = self.queued.pop_front() {
            self.spare.push(buf);
        }
    }
}

/// Orin's hardware decoder lending NVMM frames (module docs).
pub(crate) struct NvmmDecoding {
    codecs: Arc<NvmmCodecs>,
    decoder: NvmmDecoder<Box<dyn Device + Send>>,
    /// The GPU the frames are worked on (`None` only in tests of the decoding alone).
    gpu: Option<Arc<Gpu>>,
    /// Its CUDA context, which the mappings are made in.
    context: Arc<dyn CudaContext>,
    input: HwStream,
    stream: StreamId,
    work_surfaces: usize,
    stash: Stash,
    /// Lent pictures not yet received.
    ready: VecDeque<NvmmFrame>,
    /// Timestamps (µs) of access units in flight, by the number fed to the decoder.
    in_flight: VecDeque<(u64, i64)>,
    fed: u64,
    /// `send_eof` was called: `receive` waits for the last picture.
    eof_requested: bool,
    /// The decoder took the end of the stream.
    eof_queued: bool,
    /// The decoder delivered its last picture.
    ended: bool,
    /// The decoder must be reopened before the next packet (after a reset).
    reopen: bool,
    next_seq: u64,
    stats: DecodeStats,
}

impl NvmmDecoding {
    /// A decoder for a demuxed stream, lending frames in `pool_frames` (at least 2) work
    /// surfaces mapped in `gpu`'s context. Fails for streams the hardware decoder does not
    /// take, or when its device cannot be opened; the caller then decodes on the CPU.
    pub(crate) fn open(
        params: &ff::codec::Parameters,
        time_base: ff::Rational,
        frame_us: i64,
        stream: StreamId,
        codecs: Arc<NvmmCodecs>,
        gpu: Arc<Gpu>,
        pool_frames: usize,
    ) -> Result<Self, CodecError> {
        let context: Arc<dyn CudaContext> = gpu.clone();
        let mut d = Self::open_in(
            params,
            (time_base, frame_us),
            stream,
            codecs,
            context,
            pool_frames,
        )?;
        d.gpu = Some(gpu);
        Ok(d)
    }

    /// As `open`, mapping in `context`, without a GPU to hand frames on with.
    fn open_in(
        params: &ff::codec::Parameters,
        (time_base, frame_us): (ff::Rational, i64),
        stream: StreamId,
        codecs: Arc<NvmmCodecs>,
        context: Arc<dyn CudaContext>,
        pool_frames: usize,
    ) -> Result<Self, CodecError> {
        let input = HwStream::probe(params, time_base, frame_us, max_side)
            .map_err(|why| CodecError::Nvmm(format!("the V4L2 M2M decoder {why}")))?;
        let work_surfaces = pool_frames.max(2);
        let decoder = codecs.decoder(input.codec, &context, work_surfaces)?;
        Ok(NvmmDecoding {
            codecs,
            decoder,
            gpu: None,
            context,
            input,
            stream,
            work_surfaces,
            stash: Stash::default(),
            ready: VecDeque::new(),
            in_flight: VecDeque::new(),
            fed: 0,
            eof_requested: false,
            eof_queued: false,
            ended: false,
            reopen: false,
            next_seq: 0,
            stats: DecodeStats::default(),
        })
    }

    /// The GPU the frames are mapped in.
    pub(crate) fn gpu(&self) -> Option<&Arc<Gpu>> {
        self.gpu.as_ref()
    }

    /// Counters so far.
    pub(crate) fn stats(&self) -> DecodeStats {
        DecodeStats {
            frames: self.next_seq,
            device_pool_waits: self.decoder.stats().pool_waits,
            ..self.stats
        }
    }

    /// Queues one packet; waits (backpressure) while the decoder cannot take it and has
    /// nothing to hand on, unless `stopped`.
    pub(crate) fn send(
        &mut self,
        pkt: &ff::Packet,
        stopped: &dyn Fn() -> bool,
    ) -> Result<(), CodecError> {
        if self.reopen {
            self.decoder =
                self.codecs
                    .decoder(self.input.codec, &self.context, self.work_surfaces)?;
            self.reopen = false;
        }
        let headers = self.input.headers_due();
        match self.input.packet(pkt) {
            Ok((au, pts)) => {
                self.stash.push(au, self.fed, headers);
                self.in_flight.push_back((self.fed, pts));
                self.fed += 1;
                self.input.headers_sent();
                self.stats.packets += 1;
            }
            Err(e) => {
                self.stats.errors += 1;
                tracing::debug!(stream = %self.stream, error = %e, "damaged packet skipped");
            }
        }
        self.feed_stash(stopped)
    }

    /// End of stream: the decoder drains; [`NvmmDecoding::receive`] waits for its last
    /// picture (the pipeline must take the pictures before it, so nothing waits here).
    pub(crate) fn send_eof(&mut self, _stopped: &dyn Fn() -> bool) -> Result<(), CodecError> {
        self.eof_requested = true;
        if self.reopen {
            // Nothing was fed since the reset: nothing to drain.
            self.ended = true;
            return Ok(());
        }
        self.advance_eof()
    }

    /// Feeds what the decoder takes now, then the end once every packet is in.
    fn advance_eof(&mut self) -> Result<(), CodecError> {
        while !self.stash.queued.is_empty() {
            if !self.feed_front()? {
                return Ok(());
            }
        }
        if !self.eof_queued {
            self.eof_queued = self.decoder.finish().map_err(nvmm)?;
        }
        Ok(())
    }

    /// Feeds the oldest stashed packet: `Ok(true)` when it is gone (taken, or dropped as
    /// larger than the decoder's input buffers: counted as damaged), `Ok(false)` when the
    /// decoder cannot take it yet.
    fn feed_front(&mut self) -> Result<bool, CodecError> {
        let Some((au, number, headers)) = self.stash.queued.front() else {
            return Ok(true);
        };
        let (number, headers) = (*number, *headers);
        match self.decoder.feed(au, number) {
            Ok(taken) => {
                if taken {
                    self.stash.pop();
                }
                Ok(taken)
            }
            Err(NvmmError::Codec(e @ M2mError::TooLarge { .. })) => {
                self.stats.errors += 1;
                tracing::debug!(stream = %self.stream, error = %e, "access unit dropped");
                self.stash.pop();
                self.in_flight.retain(|(n, _)| *n != number);
                if headers {
                    // The parameter sets went with it: the next packet carries them.
                    self.input.headers_lost();
                }
                Ok(true)
            }
            Err(e) => Err(nvmm(e)),
        }
    }

    /// After a seek or a loop: the next packet opens a fresh decoder (the parameter sets
    /// go first again); frames still lent go back to the old decoder's pool.
    pub(crate) fn reset(&mut self) {
        self.input.reset();
        self.stash = Stash::default();
        self.in_flight.clear();
        self.ready.clear();
        self.reopen = true;
        self.eof_requested = false;
        self.eof_queued = false;
        self.ended = false;
    }

    /// Layout of the picture waiting for a host pool of its size.
    pub(crate) fn pending_layout(&self) -> Option<FrameLayout> {
        self.ready.front().map(|f| {
            let (w, h, _) = aegis_cuda::Nv12Frame::geometry(&f.frame);
            FrameLayout::new(PixelFormat::Nv12, w, h)
        })
    }

    /// The next lent frame with a host surface of `pool` attached (for its one download),
    /// or `Ok(None)` when none is ready (or, after the end was queued, none is left). A
    /// picture of another size than the pool's stays and is reported as
    /// [`CodecError::Geometry`].
    pub(crate) fn receive(
        &mut self,
        pool: &SurfacePool,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, CodecError> {
        let gpu = self
            .gpu
            .clone()
            .ok_or_else(|| CodecError::Nvmm("no GPU to hand the frames on with".into()))?;
        let layout = pool.layout();
        // A stopping source closes its pool: the drain below ends with it.
        let Some(lent) = self.receive_lent(layout, &|| pool.is_closed())? else {
            return Ok(None);
        };
        let surface = match pool.acquire() {
            Ok(s) => s,
            Err(e) => {
                // Stopping: the picture goes back to the front (a later receive is none).
                self.ready.push_front(lent);
                return Err(e.into());
            }
        };
        let raw = self.picture_pts(&lent);
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(lent_frame(
            self.stream.clone(),
            seq,
            raw + pts_offset_us,
            self.input.frame_us(),
            layout,
            surface,
            lent.frame,
            gpu,
        )))
    }

    /// The next lent picture if it has `layout`'s size (else [`CodecError::Geometry`], the
    /// picture kept); after `send_eof`, waits for it or the end.
    fn receive_lent(
        &mut self,
        layout: FrameLayout,
        stopped: &dyn Fn() -> bool,
    ) -> Result<Option<NvmmFrame>, CodecError> {
        if !self.reopen {
            self.pump()?;
        }
        let mut idle = Idle::new();
        while self.ready.is_empty() && self.eof_requested && !self.ended && !stopped() {
            self.advance_eof()?;
            self.pump()?;
            if !self.ready.is_empty() || self.ended {
                break;
            }
            self.wait(&mut idle)?;
            self.pump()?;
        }
        let Some(front) = self.ready.front() else {
            return Ok(None);
        };
        let (w, h, _) = aegis_cuda::Nv12Frame::geometry(&front.frame);
        if (layout.format, layout.width, layout.height) != (PixelFormat::Nv12, w, h) {
            return Err(CodecError::Geometry {
                got_w: w,
                got_h: h,
                want_w: layout.width,
                want_h: layout.height,
            });
        }
        Ok(self.ready.pop_front())
    }

    /// The picture's timestamp (µs, before the source's offset): its access unit's.
    fn picture_pts(&mut self, lent: &NvmmFrame) -> i64 {
        let pts = match self.in_flight.iter().position(|(n, _)| *n == lent.pts_us) {
            Some(i) => self.in_flight.remove(i).expect("index from position").1,
            None => super::annexb::NO_PTS,
        };
        // Access units whose pictures never came (the decoder dropped them) are forgotten
        // once the list is longer than any decoder's delay.
        while self.in_flight.len() > 64 {
            self.in_flight.pop_front();
        }
        self.input.picture_pts(pts)
    }

    /// Feeds stashed packets until the decoder refuses one and has a picture to hand on
    /// (then `receive` runs first), or all are in.
    fn feed_stash(&mut self, stopped: &dyn Fn() -> bool) -> Result<(), CodecError> {
        let mut idle = Idle::new();
        while !self.stash.queued.is_empty() {
            if self.feed_front()? {
                idle = Idle::new();
                continue;
            }
            self.pump()?;
            if !self.ready.is_empty() || stopped() {
                return Ok(());
            }
            self.wait(&mut idle)?;
        }
        Ok(())
    }

    /// Moves every lent picture the decoder has into `ready`, without blocking.
    fn pump(&mut self) -> Result<(), CodecError> {
        self.context.make_current().map_err(CodecError::Nvmm)?;
        loop {
            match self.decoder.poll().map_err(nvmm)? {
                Next::Frame(f) => self.ready.push_back(f),
                Next::Moved => {}
                Next::Idle => return Ok(()),
                Next::Ended => {
                    self.ended = true;
                    return Ok(());
                }
            }
        }
    }

    /// Waits for the decoder or the pool; fails the stream when the decoder alone has
    /// been silent for [`STALL`].
    fn wait(&mut self, idle: &mut Idle) -> Result<(), CodecError> {
        let on_pool = self.decoder.waiting_for_surface();
        self.decoder.wait(20).map_err(nvmm)?;
        idle.tick(on_pool)
    }
}

/// A lent NVMM picture as the pipeline's frame, with `surface` (of the source's pool)
/// attached for its one download.
#[allow(clippy::too_many_arguments)]
pub(super) fn lent_frame(
    stream: StreamId,
    seq: u64,
    pts_us: i64,
    duration_us: i64,
    layout: FrameLayout,
    surface: crate::pool::PooledSurface,
    lent: aegis_cuda::LentNv12,
    gpu: Arc<Gpu>,
) -> Frame {
    Frame {
        stream,
        seq,
        pts_us,
        duration_us,
        layout,
        surface,
        // The VIC's conversion is device to device; `Frame::to_host` counts the download.
        copies: 0,
        meta: FrameMeta::new(Instant::now()),
        device: Some(DeviceSurface::lent(lent, gpu)),
    }
}

/// How long the decoder has been silent.
struct Idle(Option<Instant>);

impl Idle {
    fn new() -> Idle {
        Idle(None)
    }

    /// One more wait without progress; waits on the pipeline (`on_pool`) do not count.
    fn tick(&mut self, on_pool: bool) -> Result<(), CodecError> {
        if on_pool {
            self.0 = None;
            return Ok(());
        }
        let since = *self.0.get_or_insert_with(Instant::now);
        if since.elapsed() > STALL {
            return Err(CodecError::Nvmm(format!(
                "the hardware decoder produced nothing for {} s",
                STALL.as_secs()
            )));
        }
        Ok(())
    }
}

fn nvmm(e: NvmmError) -> CodecError {
    CodecError::Nvmm(e.to_string())
}

#[cfg(test)]
#[path = "../../jetson/tests/m2m_support/mod.rs"]
mod m2m_support;
#[cfg(test)]
#[path = "../../jetson/tests/stub_support/mod.rs"]
pub(super) mod stub_support;

/// The decoding against aegis-jetson's stand-ins: the r36 codec stand-in as the decoder
/// (it does not decode: each access unit becomes a picture whose first 8 luma bytes are the
/// timestamp it was fed with), the C stand-ins of libnvbufsurface, the VIC and libcuda's
/// EGL interop (host memory behind the same calls). What the test sees: the packets as the
/// decoder got them, the pictures as a kernel would read them through the lent planes, the
/// timestamps, backpressure and every surface and mapping given back. What it cannot show:
/// NVIDIA's decoder, libraries and driver doing the same on a Jetson.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use aegis_jetson::nvbuf::NVBUFSURFACE_LIB;

    use super::m2m_support::{Role, Shared, StandIn};
    use super::stub_support::{Stub, lent_marker, names};
    use super::*;
    use crate::container::FileDemuxer;
    use crate::source::VideoSource;

    struct NoContext;

    impl CudaContext for NoContext {
        fn make_current(&self) -> Result<(), String> {
            Ok(())
        }
    }

    /// A 320x240 clip of `frames` pictures made by the ffmpeg CLI: H.264 in MP4 with
    /// B-frames (length-prefixed NAL units, avcC parameter sets, decode order ≠ display
    /// order), or `codec` in MP4.
    fn clip(dir: &std::path::Path, codec: &str, frames: u32) -> std::path::PathBuf {
        let out = dir.join(format!("{codec}.mp4"));
        let ok = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg("testsrc2=size=320x240:rate=30")
            .args(["-frames:v", &frames.to_string(), "-c:v", codec])
            .args(["-bf", "2", "-g", "12"])
            .arg(&out)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ffmpeg could not make {}", out.display());
        out
    }

    /// The codecs over the stand-ins; every decoder device opened is recorded.
    fn codecs(stub: &Stub, opened: Arc<Mutex<Vec<Arc<Mutex<Shared>>>>>) -> Arc<NvmmCodecs> {
        codecs_with_encoder(stub, opened, None)
    }

    /// As [`codecs`], with the codec stand-in as the hardware encoder when `sps_pps` is
    /// given (its key packets then begin with those parameter sets).
    fn codecs_with_encoder(
        stub: &Stub,
        opened: Arc<Mutex<Vec<Arc<Mutex<Shared>>>>>,
        sps_pps: Option<Vec<u8>>,
    ) -> Arc<NvmmCodecs> {
        Arc::new(NvmmCodecs::with(
            stub.surfaces(),
            stub.transforms(),
            stub.cuda(),
            Box::new(move || {
                let dev = StandIn::new(Role::Decoder)
                    .with_stream_size(320, 240)
                    .with_held_input()
                    .with_reordering();
                opened.lock().unwrap().push(dev.shared.clone());
                Ok(Box::new(dev) as Box<dyn Device + Send>)
            }),
            sps_pps.map(|sets| {
                Box::new(move || {
                    // It reads a frame only when waited on, later than the queueing, as
                    // hardware does: the recorder must wait for the buffer to come back.
                    let dev = StandIn::new(Role::Encoder)
                        .with_parameter_sets(sets.clone())
                        .with_encoding_in_wait();
                    Ok(Box::new(dev) as Box<dyn Device + Send>)
                }) as Box<OpenDevice>
            }),
        ))
    }

    /// The GPU test's jetson file source over the stand-ins (their "NVMM" page-locked for
    /// the GPU), `frames` frames of the 720p sample (decoded as 320x240 by the stand-in).
    fn gpu_source(
        gpu: &Arc<Gpu>,
        stub: &Stub,
        codecs: Arc<NvmmCodecs>,
        frames: u64,
    ) -> crate::source::FileSource {
        stub.register_with_the_real_driver();
        let clip = std::env::var_os("AEGIS_SAMPLES_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.samples"))
            .join("bench-720p.mp4");
        crate::source::FileSource::open(crate::source::FileSourceSettings {
            max_frames: Some(frames),
            pool_frames: 4,
            gpu: Some(crate::backend::StreamGpu {
                gpu: Arc::new(gpu.fork().unwrap()),
                nvmm: Some(codecs),
            }),
            ..crate::source::FileSourceSettings::new(&clip, StreamId::new("orin"))
        })
        .expect("the source opens")
    }

    /// Plays `path` through `d` once as the file source does (receive until none, then the
    /// next packet; the end, then receive until none). A "pipeline" thread holds the last
    /// three pictures (every work surface) for a millisecond each, so the decoder waits for
    /// surfaces. Returns each picture's timestamp and the packets' own, in decode order.
    fn play(d: &mut NvmmDecoding, path: &std::path::Path) -> (Vec<i64>, Vec<i64>) {
        let mut demux = FileDemuxer::open(path).unwrap();
        let layout = FrameLayout::new(PixelFormat::Nv12, 320, 240);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(NvmmFrame, i64)>(1);
        let pipeline = std::thread::spawn(move || {
            let mut held = VecDeque::new();
            let mut pictures = Vec::new();
            for (f, pts) in rx {
                assert_eq!(
                    lent_marker(&f.frame),
                    f.pts_us,
                    "the lent frame holds its own picture"
                );
                pictures.push(pts);
                held.push_back(f);
                std::thread::sleep(Duration::from_millis(1));
                if held.len() == 3 {
                    for h in &held {
                        assert_eq!(
                            lent_marker(&h.frame),
                            h.pts_us,
                            "a held frame is never overwritten"
                        );
                    }
                    held.pop_front();
                }
            }
            pictures
        });
        let mut packets = Vec::new();
        let mut pkt = ff::Packet::empty();
        let mut eof = false;
        loop {
            while let Some(f) = d.receive_lent(layout, &|| false).unwrap() {
                let pts = d.picture_pts(&f);
                tx.send((f, pts)).unwrap();
            }
            if eof {
                drop(tx);
                return (pipeline.join().unwrap(), packets);
            }
            if demux.read(&mut pkt).unwrap() {
                packets.push(super::super::decode_rescale_us(
                    pkt.pts().unwrap(),
                    demux.time_base(),
                ));
                d.send(&pkt, &|| false).unwrap();
            } else {
                d.send_eof(&|| false).unwrap();
                eof = true;
            }
        }
    }

    #[test]
    fn an_mp4_stream_decodes_into_lent_nvmm_frames_with_its_timestamps_and_loops() {
        let dir = tempfile::tempdir().unwrap();
        let path = clip(dir.path(), "libx264", 24);
        let stub = Stub::new();
        let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
        let opened = Arc::new(Mutex::new(Vec::new()));
        let demux = FileDemuxer::open(&path).unwrap();
        let mut d = NvmmDecoding::open_in(
            &demux.parameters(),
            (demux.time_base(), demux.info().frame_duration_us()),
            StreamId::new("cam"),
            codecs(&stub, opened.clone()),
            Arc::new(NoContext),
            3,
        )
        .expect("the stand-in decoder opens");

        let (pictures, packets) = play(&mut d, &path);
        assert_eq!(packets.len(), 24);
        // The stand-in hands pictures on in pairs swapped (as a decoder's display order
        // differs from the decode order): each picture still carries its own access unit's
        // timestamp, mapped back from the number it was fed as, not the next in line.
        let reordered: Vec<i64> = packets
            .chunks(2)
            .flat_map(|c| c.iter().rev().copied())
            .collect();
        assert_eq!(pictures, reordered);
        assert_ne!(pictures, packets);
        // Three work surfaces, all held by the "pipeline" at times: pictures waited.
        assert!(d.decoder.stats().pool_waits > 0, "{:?}", d.decoder.stats());

        // The bitstream as Annex-B: start codes, SPS and PPS (from avcC) before the first
        // picture only.
        let units = opened.lock().unwrap()[0].lock().unwrap().units.clone();
        assert_eq!(units.len(), 24);
        let nal_types = |u: &[u8]| -> Vec<u8> {
            u.windows(5)
                .filter(|w| w[..4] == [0, 0, 0, 1])
                .map(|w| w[4] & 0x1f)
                .collect()
        };
        for (i, u) in units.iter().enumerate() {
            assert_eq!(u[..4], [0, 0, 0, 1], "unit {i} starts with a start code");
            let types = nal_types(u);
            assert_eq!(
                types.contains(&7) && types.contains(&8),
                i == 0,
                "unit {i}: {types:?}"
            );
        }
        assert_eq!(
            nal_types(&units[0]).last(),
            Some(&5),
            "an IDR picture first"
        );

        // A loop: a fresh decoder, parameter sets first again.
        d.reset();
        let (again, _) = play(&mut d, &path);
        assert_eq!(again, reordered);
        let devices = opened.lock().unwrap().clone();
        assert_eq!(devices.len(), 2);
        let second = devices[1].lock().unwrap().units.clone();
        assert!(nal_types(&second[0]).contains(&7));
        assert_eq!(d.stats().packets, 48);

        drop(d);
        assert_eq!(stub.live_cuda_resources(), 0, "every mapping undone");
        let log = stub.log(NVBUFSURFACE_LIB);
        let count = |call: &str| names(&log).iter().filter(|n| **n == call).count();
        assert_eq!(count("NvBufSurfaceDestroy"), count("NvBufSurfaceAllocate"));
        assert_eq!(count("NvBufSurfaceMap"), 0, "no picture mapped for the CPU");
        assert_eq!(count("NvBufSurfaceMapEglImage"), 48);
        assert_eq!(
            count("NvBufSurfaceUnMapEglImage"),
            48,
            "every EGL image destroyed"
        );
    }

    /// On a real GPU (tools/device-jetson-standin.sh runs it on the H100): a file source of
    /// the `jetson` backend over the stand-ins, its "NVMM" memory page-locked and mapped for
    /// the GPU by the libcuda stand-in, as Orin's iGPU reaches real NVMM. Every frame is a
    /// lent NVMM surface: the GPU reads the picture the decoder and the VIC wrote there (its
    /// marker comes back in the download), writes into it in place (a device copy, then the
    /// download shows it), and frames dropped on another thread go back to the pool, where
    /// the page-locked memory is released (the stand-in keeps a registration the driver
    /// refuses to release, so the count of live mappings would show it). At the end every
    /// mapping is undone and every surface destroyed.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_jetson_file_source_lends_nvmm_frames_that_cuda_reads_and_writes_in_place() {
        let gpu = Arc::new(Gpu::open(0, None).expect("a GPU"));
        let stub = Stub::new();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let mut src = gpu_source(&gpu, &stub, codecs(&stub, opened.clone()), 40);
        assert_eq!(src.health().snapshot().decoder, Some("nvmm"));
        // The stand-in decodes every stream as 320x240 pictures.
        let (w, h) = (320, 240);
        let mut pattern = vec![0u8; w * h * 3 / 2];
        let mut pooled = gpu.alloc_nv12(w, h).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<Frame>();
        let dropper = std::thread::spawn(move || rx.into_iter().count());
        let mut frames = 0u64;
        while let Some(mut f) = src.next_frame().expect("a frame") {
            let device = f.device.as_ref().expect("on the device");
            assert!(device.is_lent(), "an NVMM surface, not a copy");
            assert_eq!(device.size(), (w, h));
            match f.seq % 3 {
                0 => {
                    // The GPU reads what the decoder wrote into NVMM: the picture's marker,
                    // the number its access unit was fed as (the stand-in's display order
                    // swaps pairs: frame n is access unit n ^ 1).
                    f.to_host().unwrap();
                    let y = &f.planes()[0];
                    assert_eq!(y.data[..8], (f.seq ^ 1).to_le_bytes(), "frame {}", f.seq);
                }
                1 => {
                    // The GPU writes into NVMM in place; the download reads it back.
                    for (i, b) in pattern.iter_mut().enumerate() {
                        *b = (i as u64 * 7 + f.seq) as u8;
                    }
                    gpu.upload_nv12(&pattern, &mut pooled).unwrap();
                    gpu.sync().unwrap();
                    let dev = f.device.as_mut().unwrap();
                    let (lent, stream_gpu) = dev.parts();
                    stream_gpu.copy_nv12(&pooled, lent).unwrap();
                    f.to_host().unwrap();
                    let mut packed = Vec::new();
                    for (i, p) in f.planes().iter().take(2).enumerate() {
                        let rows = if i == 0 { h } else { h / 2 };
                        for r in 0..rows {
                            packed.extend_from_slice(&p.data[r * p.stride..r * p.stride + w]);
                        }
                    }
                    assert!(packed == pattern, "frame {}: the device copy landed", f.seq);
                }
                _ => tx.send(f).unwrap(), // dropped, still lent, on another thread
            }
            frames += 1;
        }
        drop(tx);
        let dropped = dropper.join().unwrap();
        assert_eq!(frames, 40);
        assert!(dropped > 10);
        drop(src);
        drop(pooled);
        stub.assert_all_freed();
        let log = stub.log(NVBUFSURFACE_LIB);
        assert!(
            !names(&log).contains(&"NvBufSurfaceMap"),
            "no picture mapped for the CPU"
        );
        assert_eq!(opened.lock().unwrap().len(), 1);
    }

    /// The end of the stream is drained in `receive`, which waits for the pipeline to give
    /// surfaces back; a stopping source (its pool closed) must end that wait instead.
    #[test]
    fn a_stopping_source_ends_the_drain_while_the_pipeline_holds_every_surface() {
        let dir = tempfile::tempdir().unwrap();
        let path = clip(dir.path(), "libx264", 8);
        let stub = Stub::new();
        let mut demux = FileDemuxer::open(&path).unwrap();
        let mut d = NvmmDecoding::open_in(
            &demux.parameters(),
            (demux.time_base(), demux.info().frame_duration_us()),
            StreamId::new("cam"),
            codecs(&stub, Arc::new(Mutex::new(Vec::new()))),
            Arc::new(NoContext),
            2,
        )
        .unwrap();
        let layout = FrameLayout::new(PixelFormat::Nv12, 320, 240);
        let mut held = Vec::new();
        let mut pkt = ff::Packet::empty();
        while demux.read(&mut pkt).unwrap() {
            while let Some(f) = d.receive_lent(layout, &|| false).unwrap() {
                held.push(f);
            }
            d.send(&pkt, &|| held.len() == 2).unwrap();
        }
        assert_eq!(held.len(), 2, "both work surfaces are with the pipeline");
        d.send_eof(&|| false).unwrap();
        // Pictures wait for surfaces nobody gives back: only the stop ends the drain.
        assert!(d.receive_lent(layout, &|| true).unwrap().is_none());
        assert!(!d.ended, "the decoder had more to give");
        drop(held);
        let mut rest = 0;
        while d.receive_lent(layout, &|| false).unwrap().is_some() {
            rest += 1;
        }
        assert_eq!(
            rest, 6,
            "once the surfaces are back, the drain delivers the rest"
        );
    }

    /// On a real GPU: the record sink of the jetson backend encodes each frame's NVMM
    /// surface itself with the (stand-in) hardware encoder: what the CUDA "stage" wrote into
    /// the surface is what the encoder read, no frame is downloaded or copied on the way,
    /// and the MP4 segments hold every frame's packet with the SPS/PPS of the first IDR.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_jetson_recording_encodes_the_nvmm_surfaces_in_place_with_no_download() {
        use crate::record::{DiskBudget, RecorderSettings, SegmentRecorder};
        const FRAMES: u64 = 30;
        let gpu = Arc::new(Gpu::open(0, None).expect("a GPU"));
        let stub = Stub::new();
        // Real SPS/PPS for 320x240 (libx264's), which the stand-in encoder puts before its
        // key packets as Orin's does.
        let layout = FrameLayout::new(PixelFormat::I420, 320, 240);
        let sps_pps = super::super::VideoEncoder::open(&Default::default(), layout, true)
            .unwrap()
            .extradata();
        let codecs = codecs_with_encoder(
            &stub,
            Arc::new(Mutex::new(Vec::new())),
            Some(sps_pps.clone()),
        );
        let mut src = gpu_source(&gpu, &stub, codecs.clone(), FRAMES);
        let dir = tempfile::tempdir().unwrap();
        let budget = DiskBudget::open(dir.path(), 1 << 30).unwrap();
        let starts = Arc::new(Starts::default());
        let mut rec = SegmentRecorder::new(
            RecorderSettings {
                dir: dir.path().to_path_buf(),
                stream: StreamId::new("orin"),
                segment: Duration::from_secs(1),
                encoder: Default::default(),
            },
            budget,
        )
        .with_hardware_encoder(codecs)
        .with_tap(starts.clone());
        assert!(rec.takes_device_frames());
        let (w, h) = (320, 240);
        let mut stamp = gpu.alloc_nv12(w, h).unwrap();
        let mut transfers = 0;
        let mut frames = 0u64;
        while let Some(mut f) = src.next_frame().expect("a frame") {
            // The "stage": the GPU writes the frame's stamp (!seq) into its NVMM surface.
            let mut packed = vec![16u8; w * h * 3 / 2];
            packed[..8].copy_from_slice(&(!f.seq).to_le_bytes());
            gpu.upload_nv12(&packed, &mut stamp).unwrap();
            gpu.sync().unwrap();
            let (lent, stream_gpu) = f.device.as_mut().expect("on the device").parts();
            stream_gpu.copy_nv12(&stamp, lent).unwrap();
            let before = gpu.frame_transfers();
            rec.push(&mut f).expect("recorded");
            transfers += gpu.frame_transfers() - before;
            assert_eq!(f.copies, 0, "frame {}: no pixel copied", f.seq);
            assert!(f.device.is_some(), "frame {} never came down", f.seq);
            frames += 1;
        }
        rec.finish().unwrap();
        assert_eq!(frames, FRAMES);
        assert_eq!(transfers, 0, "the recorder downloaded nothing");
        assert_eq!(rec.stats().frames, FRAMES);
        assert!(rec.stats().segments >= 1, "{:?}", rec.stats());
        // Every frame's packet, in the segments, carries the stamp the encoder read from
        // the NVMM surface (the stand-in copies the first 8 luma bytes into its packet).
        let mut stamps = Vec::new();
        let mut segments: Vec<_> = std::fs::read_dir(dir.path().join("orin"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
            .collect();
        segments.sort();
        for seg in &segments {
            let mut demux = FileDemuxer::open(seg).unwrap();
            assert_eq!((demux.info().width, demux.info().height), (w, h));
            let mut pkt = ff::Packet::empty();
            while demux.read(&mut pkt).unwrap() {
                let data = pkt.data().unwrap();
                let found =
                    (0..FRAMES).find(|seq| data.windows(8).any(|win| win == (!seq).to_le_bytes()));
                stamps.push(found.expect("a packet carries its frame's stamp"));
            }
        }
        assert_eq!(stamps, (0..FRAMES).collect::<Vec<_>>());
        // The live view and the clip ring were told the stream's parameters once, from the
        // first IDR: the encoder's SPS/PPS at its size.
        let sets = super::super::nvmm_encode::parameter_sets(&sps_pps).unwrap();
        assert_eq!(*starts.0.lock().unwrap(), [(sets, 320, 240)]);
    }

    /// A packet tap that only records the stream starts it is told of.
    #[derive(Default)]
    struct Starts(Mutex<Vec<(Vec<u8>, usize, usize)>>);

    impl crate::record::PacketTap for Starts {
        fn active(&self) -> bool {
            false
        }
        fn take_keyframe_request(&self) -> bool {
            false
        }
        fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
            self.0
                .lock()
                .unwrap()
                .push((extradata.to_vec(), width, height));
        }
        fn packet(&self, _: &crate::record::TapPacket<'_>) {}
    }

    #[test]
    fn streams_the_hardware_decoder_does_not_take_are_refused_before_it_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = clip(dir.path(), "mpeg4", 4);
        let stub = Stub::new();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let demux = FileDemuxer::open(&path).unwrap();
        let e = NvmmDecoding::open_in(
            &demux.parameters(),
            (demux.time_base(), demux.info().frame_duration_us()),
            StreamId::new("cam"),
            codecs(&stub, opened.clone()),
            Arc::new(NoContext),
            3,
        )
        .err()
        .expect("MPEG-4 part 2 is refused");
        assert!(e.to_string().contains("H.264 and H.265"), "{e}");
        assert!(opened.lock().unwrap().is_empty(), "no device opened");
    }
}
