//! USB cameras into NVMM (`aegis_jetson::camera`) against stand-ins: a UVC camera at ioctl
//! granularity (tests/camera_support: it imports the DMA-bufs it is given and writes each
//! frame into one with the CPU, as uvcvideo does) and the C stand-ins of libnvbufsurface,
//! the VIC and libcuda's EGL interop (tests/stub). Every pixel the camera wrote is checked
//! where a CUDA kernel would read it: through the lent frame's plane addresses. What this
//! cannot show: a real camera, NVIDIA's libraries and the VIC doing the same on a Jetson.

mod camera_support;
mod stub_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aegis_jetson::camera::{CameraConfig, CameraError, NvmmCamera};
use aegis_jetson::lend::{CudaContext, NvmmFrame};
use aegis_jetson::m2m::sys;
use aegis_jetson::nvbuf::NVBUFSURFACE_LIB;
use aegis_jetson::nvmm::NvmmError;
use aegis_jetson::transform::{Compute, NVBUFSURFTRANSFORM_LIB, Transform};
use camera_support::{Camera, sample};
use stub_support::{Stub, lent_pixels, names};

#[derive(Default)]
struct Context(AtomicUsize);

impl CudaContext for Context {
    fn make_current(&self) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn config(fourcc: u32, width: u32, height: u32) -> CameraConfig {
    CameraConfig {
        pixelformat: fourcc,
        width,
        height,
        fps: (30, 1),
        buffers: 4,
    }
}

fn open(
    stub: &Stub,
    camera: &Camera,
    config: &CameraConfig,
    surfaces: usize,
) -> Result<NvmmCamera<Camera>, NvmmError> {
    NvmmCamera::open(
        camera.clone(),
        config,
        &stub.surfaces(),
        Transform::new(stub.transforms(), Compute::Vic),
        stub.cuda(),
        Arc::new(Context::default()),
        surfaces,
    )
}

fn count(log: &[String], call: &str) -> usize {
    names(log).iter().filter(|n| **n == call).count()
}

/// The frame number of a lent frame, from the stand-in's timestamps (1 s + n/30 s).
fn sequence(f: &NvmmFrame) -> u32 {
    ((f.pts_us - 1_000_000) as f64 * 30.0 / 1e6).round() as u32
}

/// Checks every luma sample and every 4:2:0 chroma pair of a lent frame against what the
/// camera wrote for frame `seq` (the VIC takes the chroma of each pixel pair's top row).
fn assert_picture(f: &NvmmFrame, seq: u32) {
    use aegis_cuda::Nv12Frame;
    let (w, h, _) = f.frame.geometry();
    let (luma, chroma) = lent_pixels(&f.frame);
    for y in 0..h {
        for x in 0..w {
            let want = sample(seq, x as u32, y as u32).0;
            assert_eq!(luma[y * w + x], want, "frame {seq}: Y at {x},{y}");
        }
    }
    for cy in 0..h / 2 {
        for cx in 0..w / 2 {
            let (_, u, v) = sample(seq, 2 * cx as u32, 2 * cy as u32);
            let got = (chroma[cy * w + 2 * cx], chroma[cy * w + 2 * cx + 1]);
            assert_eq!(got, (u, v), "frame {seq}: CbCr at {cx},{cy}");
        }
    }
}

/// Polls until `n` frames were lent, handing each to `give`.
fn collect(cam: &mut NvmmCamera<Camera>, n: usize, give: &mut dyn FnMut(NvmmFrame)) {
    let mut got = 0;
    let mut idle = 0;
    while got < n {
        match cam.poll().expect("capture") {
            Some(f) => {
                got += 1;
                idle = 0;
                give(f);
            }
            None => {
                idle += 1;
                assert!(idle < 1000, "the camera stopped: {:?}", cam.stats());
                cam.wait(1).expect("wait");
            }
        }
    }
}

#[test]
fn yuyv_frames_are_captured_into_nvmm_converted_by_the_vic_and_lent_with_no_host_copy() {
    for fourcc in [sys::PIX_FMT_YUYV, sys::PIX_FMT_UYVY] {
        let stub = Stub::new();
        let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
        let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
        let camera = Camera::offering(&[(fourcc, 320, 240), (fourcc, 640, 480)]);
        let mut cam = open(&stub, &camera, &config(fourcc, 320, 240), 3).expect("open");
        let f = cam.format();
        assert_eq!(
            (f.width, f.height, f.bytesperline, f.fps),
            (320, 240, 640, (30, 1))
        );
        let mut seen = Vec::new();
        collect(&mut cam, 10, &mut |frame| {
            let seq = sequence(&frame);
            assert_picture(&frame, seq);
            seen.push(seq);
        });
        // Each frame handed back at once: nothing waited, nothing dropped, in order.
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        let stats = cam.stats();
        assert_eq!((stats.lent, stats.pool_waits, stats.stale), (10, 0, 0));
        assert_eq!(stats.capture.frames, 10);
        assert_eq!(camera.dropped(), 0);
        // r36's camera_v4l2_cuda order: format, rate, DMABUF buffers, queue all, stream.
        let calls = camera.calls();
        let mut want = vec![
            "VIDIOC_QUERYCAP",
            "VIDIOC_S_FMT",
            "VIDIOC_G_FMT",
            "VIDIOC_S_PARM",
            "VIDIOC_G_PARM",
            "VIDIOC_REQBUFS",
        ];
        for _ in 0..4 {
            want.extend(["VIDIOC_QUERYBUF", "VIDIOC_QBUF"]);
        }
        want.push("VIDIOC_STREAMON");
        assert_eq!(calls[..want.len()], want[..]);
        let fds = camera.queued_fds();
        drop(cam);
        assert!(
            !camera.streaming() && !camera.has_buffers(),
            "{:?}",
            camera.calls()
        );
        assert_eq!(stub.live_cuda_resources(), 0);
        let log = stub.log(NVBUFSURFACE_LIB);
        // Four pitch-linear camera surfaces of the camera's format, tagged as camera
        // memory, queued by their own DMA-buf fds; three work surfaces; all destroyed.
        let raw = if fourcc == sys::PIX_FMT_YUYV { 14 } else { 10 };
        let camera_allocs = log
            .iter()
            .filter(|l| l.contains(&format!("format={raw} layout=0 mem=4 tag=0x200")))
            .count();
        assert_eq!(camera_allocs, 4, "{log:#?}");
        assert_eq!(count(&log, "NvBufSurfaceAllocate"), 7);
        assert_eq!(count(&log, "NvBufSurfaceDestroy"), 7);
        assert_eq!(
            fds.iter().collect::<std::collections::BTreeSet<_>>().len(),
            4
        );
        // One CPU mapping per camera buffer for its life, a device sync per frame, and
        // never a read by the CPU.
        assert_eq!(count(&log, "NvBufSurfaceMap"), 4);
        assert_eq!(count(&log, "NvBufSurfaceUnMap"), 4);
        assert_eq!(count(&log, "NvBufSurfaceSyncForDevice"), 10);
        assert_eq!(count(&log, "NvBufSurfaceSyncForCpu"), 0);
        assert_eq!(
            count(&stub.log(NVBUFSURFTRANSFORM_LIB), "NvBufSurfTransform"),
            10
        );
    }
}

#[test]
fn a_pipeline_holding_every_surface_gets_the_newest_frame_not_a_backlog() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let camera = Camera::yuyv(&[(320, 240)]);
    let mut cam = open(&stub, &camera, &config(sys::PIX_FMT_YUYV, 320, 240), 2).expect("open");
    // Three frames finished before the first poll: the newest is lent, the others go back.
    camera.tick(3);
    let first = cam.poll().expect("poll").expect("a frame");
    assert_eq!(sequence(&first), 2);
    assert_eq!(cam.stats().stale, 2);
    let mut held = vec![first];
    collect(&mut cam, 1, &mut |f| held.push(f));
    // The pipeline holds both work surfaces while the camera goes on, three frames a poll.
    for _ in 0..4 {
        camera.tick(3);
        assert!(cam.poll().expect("poll").is_none());
    }
    let stats = cam.stats();
    assert!(cam.waiting_for_surface());
    assert_eq!(stats.pool_waits, 1, "one wait, however long: {stats:?}");
    assert!(stats.stale >= 13, "older frames went back: {stats:?}");
    // The camera kept buffers: it dropped nothing.
    assert_eq!(camera.dropped(), 0);
    assert!(camera.queued() >= 3);
    // A surface comes back after three more frames: the frame lent next is the newest.
    camera.tick(3);
    let newest = camera.delivered().last().expect("frames").0;
    drop(held.remove(0));
    let next = cam.poll().expect("poll").expect("a frame");
    assert_eq!(sequence(&next), newest);
    assert_picture(&next, newest);
    // Only converted frames were synced for the device.
    let syncs = count(&stub.log(NVBUFSURFACE_LIB), "NvBufSurfaceSyncForDevice");
    assert_eq!(syncs as u64, cam.stats().lent);
    assert_eq!(
        stub.log(NVBUFSURFACE_LIB)
            .iter()
            .filter(|l| l.starts_with("NvBufSurfaceAllocate"))
            .count(),
        6,
        "backpressure, not growth"
    );
    drop((next, held));
    assert_eq!(cam.pool().available(), 2);
}

#[test]
fn damaged_and_short_frames_go_back_to_the_camera_unseen() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let camera = Camera::yuyv(&[(320, 240)]).damaging(&[2]).cutting(&[4]);
    let mut cam = open(&stub, &camera, &config(sys::PIX_FMT_YUYV, 320, 240), 3).expect("open");
    let mut seen = Vec::new();
    collect(&mut cam, 6, &mut |f| {
        assert_picture(&f, sequence(&f));
        seen.push(sequence(&f));
    });
    assert_eq!(seen, vec![0, 1, 3, 5, 6, 7]);
    assert_eq!(cam.stats().capture.damaged, 2);
    assert_eq!(
        count(&stub.log(NVBUFSURFACE_LIB), "NvBufSurfaceSyncForDevice"),
        6
    );
}

#[test]
fn cameras_nvmm_cannot_take_are_refused_as_unsuitable_and_leave_nothing_behind() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let unsuitable = |r: Result<NvmmCamera<Camera>, NvmmError>| match r {
        Err(NvmmError::Camera(e)) => {
            assert!(e.is_unsuitable() && !e.is_gone(), "{e}");
            e
        }
        Err(e) => panic!("not a camera error: {e}"),
        Ok(_) => panic!("opened"),
    };
    // 328 wide: the camera writes 656-byte rows, the surfaces have 704 (64-aligned).
    let camera = Camera::yuyv(&[(328, 240)]);
    let e = unsuitable(open(
        &stub,
        &camera,
        &config(sys::PIX_FMT_YUYV, 328, 240),
        2,
    ));
    assert!(
        matches!(
            e,
            CameraError::Pitch {
                camera: 656,
                surface: 704,
                ..
            }
        ),
        "{e}"
    );
    assert!(!camera.has_buffers());
    // A driver that takes the application's row length captures it.
    let camera = Camera::yuyv(&[(328, 240)]).honouring_bytesperline();
    let mut cam = open(&stub, &camera, &config(sys::PIX_FMT_YUYV, 328, 240), 2).expect("open");
    assert_eq!(cam.format().bytesperline, 704);
    collect(&mut cam, 3, &mut |f| assert_picture(&f, sequence(&f)));
    drop(cam);
    // No DMA-buf import, or none of these buffers (refused when queued).
    let camera = Camera::yuyv(&[(320, 240)]).without_dmabuf();
    let e = unsuitable(open(
        &stub,
        &camera,
        &config(sys::PIX_FMT_YUYV, 320, 240),
        2,
    ));
    assert!(matches!(e, CameraError::NoDmaBuf(_)), "{e}");
    let camera = Camera::yuyv(&[(320, 240)]).refusing_import();
    let e = unsuitable(open(
        &stub,
        &camera,
        &config(sys::PIX_FMT_YUYV, 320, 240),
        2,
    ));
    assert!(
        matches!(e, CameraError::NoDmaBuf(errno) if errno.0 == libc::EFAULT),
        "{e}"
    );
    assert!(!camera.has_buffers(), "the driver's buffers freed");
    // A camera that only has MJPEG answers S_FMT with it.
    let mjpg = sys::fourcc(b"MJPG");
    let camera = Camera::offering(&[(mjpg, 640, 480)]);
    let e = unsuitable(open(
        &stub,
        &camera,
        &config(sys::PIX_FMT_YUYV, 640, 480),
        2,
    ));
    assert!(e.to_string().contains("MJPG"), "{e}");
    let e = unsuitable(open(&stub, &camera, &config(mjpg, 640, 480), 2));
    assert!(matches!(e, CameraError::Format(_)), "{e}");
    stub.assert_all_freed();
    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        count(&log, "NvBufSurfaceMap"),
        count(&log, "NvBufSurfaceUnMap")
    );
}

#[test]
fn an_unplugged_camera_is_gone_and_frames_it_lent_still_come_back() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let camera = Camera::yuyv(&[(320, 240)]).unplugging_after(5);
    let mut cam = open(&stub, &camera, &config(sys::PIX_FMT_YUYV, 320, 240), 3).expect("open");
    let mut held = Vec::new();
    let e = loop {
        match cam.poll() {
            Ok(Some(f)) => {
                held.push(f);
                if held.len() > 2 {
                    held.remove(0);
                }
            }
            Ok(None) => cam.wait(1).expect("wait"),
            Err(e) => break e,
        }
    };
    assert!(matches!(&e, NvmmError::Camera(c) if c.is_gone()), "{e}");
    assert_eq!(cam.stats().lent, 5);
    drop(cam);
    // The camera is gone; the frames the pipeline holds are still good, and go back.
    for f in &held {
        assert_picture(f, sequence(f));
    }
    drop(held);
    stub.assert_all_freed();
}

#[test]
fn a_failed_conversion_or_dequeue_is_reported_and_loses_no_buffer() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let camera = Camera::yuyv(&[(320, 240)]);
    let mut cam = open(&stub, &camera, &config(sys::PIX_FMT_YUYV, 320, 240), 2).expect("open");
    // The VIC fails: the error names it, the capture buffer is back with the camera and the
    // work surface back in the pool.
    camera.tick(1);
    stub.fail_next(NVBUFSURFTRANSFORM_LIB, "NvBufSurfTransform");
    let e = cam.poll().expect_err("the VIC failed");
    assert!(matches!(e, NvmmError::Transform(_)), "{e}");
    assert_eq!((camera.queued(), cam.pool().available()), (4, 2));
    // A DQBUF the driver fails (not an unplug) while a frame waits for a surface the
    // pipeline holds: an error, not `gone`, and the waiting frame is kept.
    let mut held = Vec::new();
    collect(&mut cam, 2, &mut |f| held.push(f));
    camera.tick(1);
    assert!(cam.poll().expect("poll").is_none());
    assert!(cam.waiting_for_surface());
    camera.tick(1);
    camera.fail_next("VIDIOC_DQBUF", libc::EFAULT);
    let e = cam.poll().expect_err("DQBUF failed");
    assert!(
        matches!(&e, NvmmError::Camera(c) if !c.is_gone() && !c.is_unsuitable()),
        "{e}"
    );
    assert!(cam.waiting_for_surface());
    assert_eq!(
        camera.queued(),
        2,
        "two buffers out: the waiting one and the finished one"
    );
    // Both recover: the newest frame once a surface is back, whole.
    drop(held);
    let next = cam.poll().expect("poll").expect("a frame");
    assert_eq!(sequence(&next), 4);
    assert_picture(&next, 4);
    drop(next);
    assert_eq!(camera.queued(), 4);
    drop(cam);
    stub.assert_all_freed();
}
