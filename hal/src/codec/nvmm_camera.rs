//! The `jetson` backend's USB cameras on Orin: a raw (YUYV, UYVY) V4L2 camera captured
//! straight into NVMM and lent to the pipeline like a decoded picture
//! ([`aegis_jetson::camera::NvmmCamera`]). It stands where a decoder stands
//! ([`super::Decoding::Camera`]), but takes no packets: the live source polls it for frames.
//! Cameras it cannot take (another format, rows that do not fit an NVMM surface, a driver
//! without DMA-buf import) are captured on the CPU instead, through libavdevice.

use std::path::Path;
use std::sync::Arc;

use aegis_cuda::Gpu;
use aegis_jetson::camera::{CAPTURE_BUFFERS, CameraConfig, NvmmCamera};
use aegis_jetson::lend::CudaContext;
use aegis_jetson::m2m::{Device, sys};
use aegis_jetson::nvmm::NvmmError;
use aegis_jetson::transform::{Compute, Transform};

use super::nvmm::NvmmCodecs;
use super::{CodecError, DecodeStats};
use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;
use crate::v4l2::{CaptureChoice, FourCc};

/// Why a camera was not opened into NVMM.
#[derive(Debug)]
pub(crate) enum CaptureOpenError {
    /// The camera works, but not this way: capture it on the CPU.
    Unsuitable(String),
    /// The camera failed (or is gone).
    Failed(String),
}

/// A camera lending NVMM frames (module docs).
pub(crate) struct NvmmCapture {
    camera: NvmmCamera<Box<dyn Device + Send>>,
    gpu: Arc<Gpu>,
    context: Arc<dyn CudaContext>,
    stream: StreamId,
    layout: FrameLayout,
    /// Frames per second (numerator, denominator): the camera's, else the mode's.
    fps: (u32, u32),
    frame_us: i64,
    /// The camera's timestamp of the first frame (the connection's time zero).
    first_us: Option<u64>,
    next_seq: u64,
    /// The last receive found every host surface with the pipeline.
    host_starved: bool,
}

impl NvmmCapture {
    /// Whether the `jetson` backend captures this mode into NVMM.
    pub(crate) fn takes(choice: &CaptureChoice) -> bool {
        pixelformat(choice.fourcc).is_some()
    }

    /// Opens `device` in `choice`'s mode with `pool_frames` (at least 2) work surfaces
    /// mapped in `gpu`'s context.
    pub(crate) fn open(
        codecs: &NvmmCodecs,
        device: &Path,
        choice: &CaptureChoice,
        stream: StreamId,
        gpu: Arc<Gpu>,
        pool_frames: usize,
    ) -> Result<NvmmCapture, CaptureOpenError> {
        let context: Arc<dyn CudaContext> = gpu.clone();
        let camera = open_camera(codecs, device, choice, context.clone(), pool_frames)?;
        let f = camera.format();
        let layout = FrameLayout::new(
            PixelFormat::Nv12,
            aegis_jetson::lend::even(f.width) as usize,
            aegis_jetson::lend::even(f.height) as usize,
        );
        let fps = if f.fps.0 > 0 { f.fps } else { choice.rate };
        let frame_us = 1_000_000 * fps.1.max(1) as i64 / fps.0.max(1) as i64;
        Ok(NvmmCapture {
            camera,
            gpu,
            context,
            stream,
            layout,
            fps,
            frame_us,
            first_us: None,
            next_seq: 0,
            host_starved: false,
        })
    }

    /// The GPU the frames are mapped in.
    pub(crate) fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// The frames' layout (the camera's size, even).
    pub(crate) fn layout(&self) -> FrameLayout {
        self.layout
    }

    /// Frame rate the camera runs at (numerator, denominator); the mode's when the camera
    /// does not say.
    pub(crate) fn frame_rate(&self) -> (u32, u32) {
        self.fps
    }

    /// Counters so far: frames captured; damaged frames as errors.
    pub(crate) fn stats(&self) -> DecodeStats {
        let s = self.camera.stats();
        DecodeStats {
            frames: self.next_seq,
            errors: s.capture.damaged,
            device_pool_waits: s.pool_waits,
            dropped: s.stale + s.capture.dropped,
            ..DecodeStats::default()
        }
    }

    /// The next lent frame with a host surface of `pool` attached (for its one download),
    /// or `Ok(None)` when the camera has none yet, or every work surface or every host
    /// surface is with the pipeline (the camera is then kept drained to its newest frame).
    /// Never blocks.
    pub(crate) fn receive(
        &mut self,
        pool: &SurfacePool,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, CodecError> {
        if pool.layout() != self.layout {
            return Err(CodecError::Geometry {
                got_w: self.layout.width,
                got_h: self.layout.height,
                want_w: pool.layout().width,
                want_h: pool.layout().height,
            });
        }
        self.context.make_current().map_err(CodecError::Camera)?;
        if pool.is_closed() {
            return Err(crate::pool::PoolClosed.into());
        }
        let Some(surface) = pool.try_acquire() else {
            // The pipeline holds every host surface: the camera is still drained, so that
            // the frame lent next is the newest.
            self.camera.drain().map_err(camera_error)?;
            self.host_starved = true;
            return Ok(None);
        };
        self.host_starved = false;
        let Some(lent) = self.camera.poll().map_err(camera_error)? else {
            return Ok(None);
        };
        let first = *self.first_us.get_or_insert(lent.pts_us);
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(super::nvmm::lent_frame(
            self.stream.clone(),
            seq,
            lent.pts_us.saturating_sub(first) as i64 + pts_offset_us,
            self.frame_us,
            self.layout,
            surface,
            lent.frame,
            self.gpu.clone(),
        )))
    }

    /// A frame waits for a work or host surface the pipeline still holds.
    pub(crate) fn waiting_for_surface(&self) -> bool {
        self.host_starved || self.camera.waiting_for_surface()
    }

    /// Waits at most `timeout_ms` for the camera, or for the surface of `pool` or the work
    /// surface a frame waits for.
    pub(crate) fn wait(&mut self, pool: &SurfacePool, timeout_ms: i32) -> Result<(), CodecError> {
        if self.host_starved {
            // Counted as the host pool's backpressure; the surface goes straight back.
            let timeout = std::time::Duration::from_millis(timeout_ms.max(0) as u64);
            drop(pool.acquire_timeout(timeout)?);
            return Ok(());
        }
        self.camera.wait(timeout_ms).map_err(camera_error)
    }
}

/// The V4L2 code of a format the NVMM capture takes (packed 4:2:2).
fn pixelformat(fourcc: FourCc) -> Option<u32> {
    match fourcc {
        FourCc::Yuyv => Some(sys::PIX_FMT_YUYV),
        FourCc::Uyvy => Some(sys::PIX_FMT_UYVY),
        _ => None,
    }
}

fn camera_error(e: NvmmError) -> CodecError {
    CodecError::Camera(match e {
        NvmmError::Camera(c) => c.to_string(),
        other => other.to_string(),
    })
}

fn open_camera(
    codecs: &NvmmCodecs,
    device: &Path,
    choice: &CaptureChoice,
    context: Arc<dyn CudaContext>,
    pool_frames: usize,
) -> Result<NvmmCamera<Box<dyn Device + Send>>, CaptureOpenError> {
    let Some(pixelformat) = pixelformat(choice.fourcc) else {
        return Err(CaptureOpenError::Unsuitable(format!(
            "{} is not captured into NVMM",
            choice.fourcc
        )));
    };
    let node = codecs
        .cameras()
        .open(device)
        .map_err(CaptureOpenError::Failed)?;
    let config = CameraConfig {
        pixelformat,
        width: choice.width,
        height: choice.height,
        fps: choice.rate,
        buffers: CAPTURE_BUFFERS,
    };
    context.make_current().map_err(CaptureOpenError::Failed)?;
    let (surfaces, transforms, cuda) = codecs.libraries();
    NvmmCamera::open(
        node,
        &config,
        surfaces,
        Transform::new(transforms.clone(), Compute::Vic),
        cuda.clone(),
        context,
        pool_frames.max(2),
    )
    .map_err(|e| match &e {
        NvmmError::Camera(c) if c.is_unsuitable() => CaptureOpenError::Unsuitable(c.to_string()),
        _ => CaptureOpenError::Failed(e.to_string()),
    })
}

#[cfg(test)]
#[path = "../../jetson/tests/camera_support/mod.rs"]
mod camera_support;

/// A live source of the `jetson` backend on a USB camera, against stand-ins: the UVC camera
/// stand-in (aegis-jetson's tests/camera_support) and the C stand-ins of libnvbufsurface,
/// the VIC and libcuda's EGL interop, whose "NVMM" memory is page-locked for a real GPU.
#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Mutex;

    use aegis_jetson::nvbuf::NVBUFSURFACE_LIB;

    use super::super::nvmm::stub_support::{Stub, names};
    use super::camera_support::{Camera, sample};
    use super::*;
    use std::time::Duration;

    use crate::source::{LiveSource, LiveSourceSettings, VideoSource};
    use crate::v4l2::{CaptureMode, CaptureRequest};

    /// Cameras by script: `Some(camera)` is plugged in (its modes answer, the next open
    /// takes it), `None` is one enumeration that finds nothing (unplugged).
    struct Scripted(Mutex<VecDeque<Option<Camera>>>);

    impl super::super::CameraNodes for Scripted {
        fn modes(&self, _: &Path) -> std::io::Result<Vec<CaptureMode>> {
            let mut script = self.0.lock().unwrap();
            let Some(Some(camera)) = script.front() else {
                script.pop_front();
                return Err(std::io::ErrorKind::NotFound.into());
            };
            let mjpeg = (u32::from_le_bytes(*b"MJPG"), 640, 480);
            Ok(std::iter::once(mjpeg)
                .chain(camera.modes())
                .map(|(fourcc, width, height)| CaptureMode {
                    fourcc: FourCc::from_code(fourcc),
                    width,
                    height,
                    rates: vec![(30, 1)],
                })
                .collect())
        }

        fn open(&self, _: &Path) -> Result<Box<dyn Device + Send>, String> {
            match self.0.lock().unwrap().pop_front() {
                Some(Some(camera)) => Ok(Box::new(camera)),
                _ => Err("no camera".into()),
            }
        }
    }

    /// A v4l2 source of the jetson backend asking for `size`, on the cameras of `script`
    /// over the stand-ins (their "NVMM" page-locked for `gpu`).
    fn camera_source(
        gpu: &Arc<Gpu>,
        stub: &Stub,
        script: Vec<Option<Camera>>,
        size: (u32, u32),
        pool_frames: usize,
        backoff: Duration,
    ) -> LiveSource {
        stub.register_with_the_real_driver();
        let codecs = NvmmCodecs::with(
            stub.surfaces(),
            stub.transforms(),
            stub.cuda(),
            Box::new(|| Err("no decoder in this test".into())),
            None,
        )
        .with_cameras(Box::new(Scripted(Mutex::new(script.into()))));
        let mut settings = LiveSourceSettings::v4l2(
            Path::new("/dev/video-standin"),
            CaptureRequest {
                width: Some(size.0),
                height: Some(size.1),
                ..Default::default()
            },
            StreamId::new("usb"),
        );
        settings.pool_frames = pool_frames;
        settings.backoff_min = backoff;
        settings.backoff_max = backoff * 2;
        settings.gpu = Some(crate::backend::StreamGpu {
            gpu: Arc::new(gpu.fork().unwrap()),
            nvmm: Some(Arc::new(codecs)),
        });
        LiveSource::new(settings)
    }

    /// Stops a source after a while, so that a test whose source would wait forever fails
    /// (its `next_frame` ends) instead of hanging.
    struct Deadline(
        Option<std::thread::JoinHandle<()>>,
        std::sync::mpsc::Sender<()>,
    );

    impl Deadline {
        fn after(src: &LiveSource, limit: Duration) -> Deadline {
            let stopper = src.stopper();
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            let t = std::thread::spawn(move || {
                if rx.recv_timeout(limit).is_err() {
                    stopper.stop();
                }
            });
            Deadline(Some(t), tx)
        }
    }

    impl Drop for Deadline {
        fn drop(&mut self) {
            let _ = self.1.send(());
            if let Some(t) = self.0.take() {
                let _ = t.join();
            }
        }
    }

    /// The camera frame a picture is, from its first luma sample (5 × n mod 256; 205 is
    /// 5's inverse mod 256).
    fn camera_sequence(y00: u8) -> u32 {
        (y00 as u32 * 205) & 0xff
    }

    /// On a real GPU (tools/device-jetson-standin.sh runs it on the H100): a v4l2 source of
    /// the jetson backend on a YUYV camera. Every frame is a lent NVMM surface; the GPU's
    /// download of each one holds exactly the camera's pixels (luma, and the VIC's 4:2:0
    /// chroma); a GPU write into one lands in place. The camera is unplugged after 12
    /// frames: the source reports it, finds no camera once, and resumes on the camera
    /// plugged in again. At the end every mapping is undone and every surface destroyed.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_jetson_usb_camera_lends_nvmm_frames_and_comes_back_after_an_unplug() {
        const FRAMES: u64 = 30;
        let gpu = Arc::new(Gpu::open(0, None).expect("a GPU"));
        let stub = Stub::new();
        let first = Camera::yuyv(&[(320, 240)]).unplugging_after(12);
        let second = Camera::yuyv(&[(320, 240)]);
        let script = vec![Some(first.clone()), None, Some(second.clone())];
        let mut src = camera_source(
            &gpu,
            &stub,
            script,
            (320, 240),
            4,
            Duration::from_millis(10),
        );
        let _deadline = Deadline::after(&src, Duration::from_secs(30));
        let (w, h) = (320, 240);
        let mut pattern = vec![0u8; w * h * 3 / 2];
        let mut pooled = gpu.alloc_nv12(w, h).unwrap();
        let mut sequences = Vec::new();
        while (sequences.len() as u64) < FRAMES {
            let mut f = src.next_frame().expect("a frame").expect("live");
            assert_eq!(src.health().snapshot().decoder, Some("nvmm-capture"));
            assert_eq!(src.frame_rate(), (30, 1));
            let device = f.device.as_ref().expect("on the device");
            assert!(device.is_lent(), "an NVMM surface, not a copy");
            assert_eq!(device.size(), (w, h));
            if f.seq == 5 {
                // The GPU writes into the camera's NVMM frame in place.
                for (i, b) in pattern.iter_mut().enumerate() {
                    *b = (i as u64 * 7 + 3) as u8;
                }
                gpu.upload_nv12(&pattern, &mut pooled).unwrap();
                gpu.sync().unwrap();
                let (lent, stream_gpu) = f.device.as_mut().unwrap().parts();
                stream_gpu.copy_nv12(&pooled, lent).unwrap();
                f.to_host().unwrap();
                let y = &f.planes()[0];
                assert_eq!(y.data[..w], pattern[..w], "the device copy landed");
                sequences.push(u32::MAX);
                continue;
            }
            f.to_host().unwrap();
            let planes = f.planes();
            let seq = camera_sequence(planes[0].data[0]);
            for y in 0..h {
                for x in 0..w {
                    let got = planes[0].data[y * planes[0].stride + x];
                    assert_eq!(
                        got,
                        sample(seq, x as u32, y as u32).0,
                        "frame {seq}: Y {x},{y}"
                    );
                }
            }
            for cy in 0..h / 2 {
                for cx in 0..w / 2 {
                    let row = &planes[1].data[cy * planes[1].stride..];
                    let (_, u, v) = sample(seq, 2 * cx as u32, 2 * cy as u32);
                    assert_eq!((row[2 * cx], row[2 * cx + 1]), (u, v), "frame {seq}: CbCr");
                }
            }
            sequences.push(seq);
        }
        // The first camera's 12 frames (one written over by the GPU), then the second's
        // from its first.
        let mut want: Vec<u32> = (0..12).chain(0..18).collect();
        want[5] = u32::MAX;
        assert_eq!(sequences, want);
        let health = src.health().snapshot();
        assert!(health.reconnects >= 2, "{health:?}");
        assert!(src.stats().read_errors >= 1);
        assert_eq!(first.dropped(), 0);
        drop(src);
        drop(pooled);
        assert!(!second.streaming() && !second.has_buffers());
        stub.assert_all_freed();
        let log = stub.log(NVBUFSURFACE_LIB);
        let count = |call: &str| names(&log).iter().filter(|n| **n == call).count();
        assert_eq!(
            count("NvBufSurfaceSyncForCpu"),
            0,
            "no frame read by the CPU"
        );
    }

    /// On a real GPU: a camera that hangs (answers, delivers nothing) is failed as stalled
    /// after the stall timeout and the source reconnects; a pipeline that holds every work
    /// surface for longer than that is not a stall.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_hung_camera_is_stalled_but_a_pipeline_holding_every_surface_is_not() {
        let gpu = Arc::new(Gpu::open(0, None).expect("a GPU"));
        let stub = Stub::new();
        let hung = Camera::yuyv(&[(320, 240)]).silent_after(40);
        let next = Camera::yuyv(&[(320, 240)]);
        let script = vec![Some(hung.clone()), Some(next.clone())];
        let mut src = camera_source(
            &gpu,
            &stub,
            script,
            (320, 240),
            2,
            Duration::from_millis(10),
        );
        let _deadline = Deadline::after(&src, Duration::from_secs(30));
        let first = src.next_frame().unwrap().expect("a frame");
        let second = src.next_frame().unwrap().expect("a frame");
        // Both host surfaces (and both work surfaces) are with the "pipeline" for 2.5 s,
        // longer than the stall timeout, while the camera makes three more frames.
        let camera = hung.clone();
        let holder = std::thread::spawn(move || {
            for _ in 0..3 {
                std::thread::sleep(Duration::from_millis(300));
                camera.tick(1);
            }
            std::thread::sleep(Duration::from_millis(1600));
            drop((first, second));
        });
        let after = src.next_frame().unwrap().expect("a frame");
        holder.join().unwrap();
        assert_eq!(
            src.health().snapshot().reconnects,
            0,
            "a busy pipeline is no stall"
        );
        let y00 = {
            let mut f = after;
            f.to_host().unwrap();
            f.planes()[0].data[0]
        };
        // The newest of the three, the two older given back unseen.
        assert_eq!(camera_sequence(y00), 4);
        assert_eq!(hung.delivered().last().map(|d| d.0), Some(4));
        assert_eq!(src.stats().decode.dropped, 2);
        // The camera hangs after 40 frames: stalled, then the next camera.
        loop {
            let f = src.next_frame().unwrap().expect("a frame");
            if src.health().snapshot().reconnects > 0 {
                drop(f);
                break;
            }
        }
        let health = src.health().snapshot();
        assert_eq!(
            health.last_error.as_deref(),
            Some("capture: no frames within 2.0 s"),
            "{health:?}"
        );
        assert!(next.streaming());
        drop(src);
        assert!(!hung.has_buffers() && !next.has_buffers());
        stub.assert_all_freed();
    }

    /// On a real GPU: a camera the NVMM path cannot take (rows of 656 bytes where the
    /// surfaces have 704) is handed to the CPU capture (libavdevice), which then opens the
    /// node itself; nothing of the NVMM attempt is left behind.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_camera_nvmm_cannot_take_goes_to_the_cpu_capture() {
        let gpu = Arc::new(Gpu::open(0, None).expect("a GPU"));
        let stub = Stub::new();
        let narrow = Camera::yuyv(&[(328, 240)]);
        // A long backoff: the first failure is the one looked at.
        let script = vec![Some(narrow.clone())];
        let mut src = camera_source(&gpu, &stub, script, (328, 240), 2, Duration::from_secs(60));
        let (stopper, health) = (src.stopper(), src.health());
        let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while health.snapshot().last_error.is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        stopper.stop();
        assert!(matches!(t.join().unwrap(), Ok(false)));
        // libavdevice's own open of the (stand-in's, absent) node failed: the NVMM attempt
        // was refused as unsuitable, not failed.
        let error = health.snapshot().last_error.unwrap_or_default();
        assert!(
            error.starts_with("open: ") && !error.contains("NVMM"),
            "{error}"
        );
        assert!(error.contains("video-standin"), "{error}");
        assert_ne!(health.snapshot().decoder, Some("nvmm-capture"));
        let calls = narrow.calls();
        assert!(
            calls.contains(&"VIDIOC_S_FMT") && !calls.contains(&"VIDIOC_REQBUFS"),
            "{calls:?}"
        );
        stub.assert_all_freed();
    }
}
