//! The lending decode half (`aegis_jetson::lend`) against the stand-ins: the r36 codec
//! stand-in (tests/m2m_support) as decoder, the C stand-ins of libnvbufsurface,
//! libnvbufsurftransform and libcuda's EGL interop (tests/stub). The decoder writes each
//! picture's timestamp into its first 8 luma bytes; the VIC stand-in copies it into the work
//! surface; the libcuda stand-in maps the work surface's own memory, so the test reads
//! through a lent frame's plane addresses what a CUDA kernel would. What this cannot show:
//! NVIDIA's libraries and driver doing the same on a Jetson.

mod m2m_support;
mod stub_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use aegis_cuda::Nv12Frame;
use aegis_jetson::cuda_egl::CUDA_LIB;
use aegis_jetson::lend::{CudaContext, LendStats, Next, NvmmDecoder, NvmmFrame};
use aegis_jetson::m2m::{CaptureMemory, Codec, Decoder, DecoderConfig};
use aegis_jetson::nvbuf::NVBUFSURFACE_LIB;
use aegis_jetson::nvmm::{DecoderSurfaces, NvmmError};
use aegis_jetson::transform::{Compute, Transform};
use m2m_support::{Role, StandIn};
use stub_support::{Stub, lent_marker, names};

/// Counts the times the pool made "the CUDA context" current (to unmap a frame).
#[derive(Default)]
struct Context(AtomicUsize);

impl CudaContext for Context {
    fn make_current(&self) -> Result<(), String> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn decoder(
    stub: &Stub,
    size: (u32, u32),
    change: Option<(u32, u32, u32)>,
    work_surfaces: usize,
    context: Arc<Context>,
) -> NvmmDecoder<StandIn> {
    let lib = stub.surfaces();
    let mut dev = StandIn::new(Role::Decoder).with_stream_size(size.0, size.1);
    if let Some((after, w, h)) = change {
        dev = dev.with_resolution_change(after, w, h);
    }
    let mut config = DecoderConfig::new(Codec::H264);
    config.capture = CaptureMemory::DmaBuf(Box::new(DecoderSurfaces::new(lib.clone())));
    let decoder = Decoder::open(dev, config).expect("decoder");
    NvmmDecoder::new(
        decoder,
        lib,
        Transform::new(stub.transforms(), Compute::Vic),
        stub.cuda(),
        context,
        work_surfaces,
    )
}

/// The lent planes' addresses and geometry (host memory behind the stand-in's mapping).
fn plane_addresses(frame: &NvmmFrame) -> (u64, u64, (usize, usize, usize)) {
    let geometry = frame.frame.geometry();
    let (y, uv) = frame.frame.addresses();
    (y, uv, geometry)
}

fn count(log: &[String], call: &str) -> usize {
    names(log).iter().filter(|n| **n == call).count()
}

/// Feeds access units 1..=n (timestamps 1000, 2000, ...) and finishes, collecting the
/// lent frames; `hold` frames are kept (the pipeline holding them), the rest handed to
/// `give` as they come.
fn run(
    dec: &mut NvmmDecoder<StandIn>,
    n: u64,
    give: &mut dyn FnMut(NvmmFrame),
) -> Result<(), NvmmError> {
    let mut idle = 0;
    let mut step = |dec: &mut NvmmDecoder<StandIn>| -> Result<bool, NvmmError> {
        match dec.poll()? {
            Next::Frame(f) => {
                idle = 0;
                give(f);
            }
            Next::Moved => idle = 0,
            Next::Idle => {
                idle += 1;
                assert!(idle < 1000, "the decoder stopped moving: {:?}", dec.stats());
                dec.wait(1)?;
            }
            Next::Ended => return Ok(true),
        }
        Ok(false)
    };
    for i in 1..=n {
        let au = [0, 0, 0, 1, 0x65, i as u8];
        while !dec.feed(&au, 1000 * i)? {
            step(dec)?;
        }
        step(dec)?;
    }
    while !dec.finish()? {
        step(dec)?;
    }
    while !step(dec)? {}
    Ok(())
}

#[test]
fn decoded_pictures_are_lent_in_nvmm_and_come_back_to_the_pool() {
    const N: u64 = 20;
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let context = Arc::new(Context::default());
    // 320x240, then 160x120 after 12 pictures: a second pool at the new size.
    let mut dec = decoder(&stub, (320, 240), Some((12, 160, 120)), 3, context.clone());
    let mut seen = Vec::new();
    let mut sizes = Vec::new();
    // The last picture before the change is held across it (the pipeline still has it).
    let mut held = None;
    run(&mut dec, N, &mut |f| {
        // Before the size change the VIC copied the decoder's picture unscaled: the marker
        // is the picture's own timestamp.
        if seen.len() < 12 {
            assert_eq!(
                lent_marker(&f.frame),
                f.pts_us,
                "the lent frame holds its own picture"
            );
        }
        let (_, _, (w, h, pitch)) = plane_addresses(&f);
        assert!(pitch >= w);
        sizes.push((w, h));
        seen.push(f.pts_us);
        if f.pts_us == 12_000 {
            held = Some(f); // the others are dropped here: given back at once
        }
    })
    .expect("the stream runs");
    // The held frame outlived its pool's replacement untouched; dropping it frees the old
    // pool's three surfaces, which nothing else held.
    let held = held.expect("picture 12");
    assert_eq!(lent_marker(&held.frame), 12_000);
    let destroyed = |stub: &Stub| count(&stub.log(NVBUFSURFACE_LIB), "NvBufSurfaceDestroy");
    let before = destroyed(&stub);
    drop(held);
    assert_eq!(
        destroyed(&stub) - before,
        3,
        "the old pool freed with its last frame"
    );
    assert_eq!(seen, (1..=N).map(|i| 1000 * i).collect::<Vec<_>>());
    assert_eq!(sizes[0], (320, 240));
    assert_eq!(sizes[N as usize - 1], (160, 120));
    assert_eq!(
        dec.stats(),
        LendStats {
            decoded: N,
            vic_copies: N,
            lent: N,
            pool_waits: 0,
            pools: 2,
        }
    );
    let pool = dec.pool().expect("a pool").clone();
    assert_eq!((pool.available(), pool.lent()), (3, 0));
    // Every frame given back unmapped, in "the CUDA context".
    assert_eq!(context.0.load(Ordering::Relaxed), N as usize);
    assert_eq!(stub.live_cuda_resources(), 0);
    drop(pool);
    drop(dec);
    let log = stub.log(NVBUFSURFACE_LIB);
    for call in [
        "NvBufSurfaceMap",
        "NvBufSurfaceSyncForCpu",
        "NvBufSurfaceUnMap",
    ] {
        assert_eq!(count(&log, call), 0, "no CPU mapping: {call} in {log:#?}");
    }
    // Three work surfaces per size, nothing per frame; everything destroyed.
    let work = log
        .iter()
        .filter(|l| l.starts_with("NvBufSurfaceAllocate") && l.contains("layout=0"))
        .count();
    assert_eq!(work, 6, "{log:#?}");
    let allocs = count(&log, "NvBufSurfaceAllocate");
    assert_eq!(count(&log, "NvBufSurfaceDestroy"), allocs);
    assert_eq!(count(&log, "NvBufSurfaceMapEglImage"), N as usize);
    assert_eq!(count(&log, "NvBufSurfaceUnMapEglImage"), N as usize);
}

#[test]
fn frames_the_pipeline_holds_stall_the_decoder_until_one_comes_back_from_another_thread() {
    const N: u64 = 8;
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let context = Arc::new(Context::default());
    let mut dec = decoder(&stub, (320, 240), None, 2, context.clone());
    // The "pipeline": a thread that holds two frames at a time and drops the oldest when a
    // third arrives, so the decoder always finds the pool empty for a while.
    let (tx, rx) = std::sync::mpsc::sync_channel::<NvmmFrame>(4);
    let pipeline = std::thread::spawn(move || {
        let mut held: std::collections::VecDeque<NvmmFrame> = Default::default();
        let mut order = Vec::new();
        for f in rx {
            assert_eq!(
                lent_marker(&f.frame),
                f.pts_us,
                "a held frame is never overwritten"
            );
            order.push(f.pts_us);
            held.push_back(f);
            std::thread::sleep(std::time::Duration::from_millis(2));
            if held.len() == 2 {
                // Both work surfaces are lent: check them again before one goes back.
                for h in &held {
                    assert_eq!(lent_marker(&h.frame), h.pts_us);
                }
                held.pop_front();
            }
        }
        order
    });
    run(&mut dec, N, &mut |f| tx.send(f).expect("pipeline alive")).expect("the stream runs");
    drop(tx);
    let order = pipeline.join().expect("pipeline thread");
    assert_eq!(order, (1..=N).map(|i| 1000 * i).collect::<Vec<_>>());
    let stats = dec.stats();
    assert!(stats.pool_waits > 0, "the pool never ran out: {stats:?}");
    assert_eq!((stats.lent, stats.pools), (N, 1));
    let pool = dec.pool().expect("a pool");
    assert_eq!(
        (pool.available(), pool.lent(), pool.given_back()),
        (2, 0, N)
    );
    drop(dec);
    let log = stub.log(NVBUFSURFACE_LIB);
    let work = log
        .iter()
        .filter(|l| l.starts_with("NvBufSurfaceAllocate") && l.contains("layout=0"))
        .count();
    assert_eq!(work, 2, "backpressure, not growth");
    assert_eq!(stub.live_cuda_resources(), 0);
}

#[test]
fn a_refused_mapping_is_an_error_that_leaves_the_surface_free_and_nothing_mapped() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let context = Arc::new(Context::default());
    let mut dec = decoder(&stub, (320, 240), None, 2, context);
    let mut fed = 0;
    let mut lent = Vec::new();
    let e = loop {
        if fed < 3 && dec.feed(&[0, 0, 0, 1, 0x65], 1000 * (fed + 1)).unwrap() {
            fed += 1;
        }
        if lent.len() == 1 {
            stub.fail_next(CUDA_LIB, "cuGraphicsEGLRegisterImage");
        }
        match dec.poll() {
            Err(e) => break e,
            Ok(Next::Frame(f)) => lent.push(f),
            Ok(Next::Ended) => panic!("ended without the failure"),
            Ok(_) => dec.wait(1).unwrap(),
        }
    };
    assert!(
        e.to_string()
            .contains("cuGraphicsEGLRegisterImage failed: CUDA error 1"),
        "{e}"
    );
    let pool = dec.pool().expect("a pool").clone();
    // The first frame is still lent; the refused one's surface is free again.
    assert_eq!((pool.lent(), pool.available()), (1, 1));
    assert_eq!(stub.live_cuda_resources(), 1);
    drop(lent);
    assert_eq!((pool.lent(), pool.available()), (0, 2));
    assert_eq!(stub.live_cuda_resources(), 0);
    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        count(&log, "NvBufSurfaceMapEglImage"),
        count(&log, "NvBufSurfaceUnMapEglImage"),
        "every EGL image destroyed"
    );
}

#[test]
fn a_frame_outliving_its_decoder_still_goes_back_and_is_freed_with_the_pool() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let mut dec = decoder(&stub, (320, 240), None, 2, Arc::new(Context::default()));
    let mut frames = Vec::new();
    run(&mut dec, 2, &mut |f| frames.push(f)).expect("the stream runs");
    drop(dec);
    // The decoder is gone; the pipeline still holds both frames, still mapped.
    assert_eq!(stub.live_cuda_resources(), 2);
    assert_eq!(lent_marker(&frames[1].frame), 2000);
    drop(frames);
    stub.assert_all_freed();
}

#[test]
fn surfaces_that_cannot_be_unmapped_leave_the_pool_until_none_is_left() {
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let mut dec = decoder(&stub, (320, 240), None, 2, Arc::new(Context::default()));
    let mut fed = 0;
    let mut failures = 0;
    let e = loop {
        if fed < 8 && dec.feed(&[0, 0, 0, 1, 0x65], 1000 * (fed + 1)).unwrap() {
            fed += 1;
        }
        match dec.poll() {
            Err(e) => break e,
            Ok(Next::Frame(f)) => {
                // The first frame: CUDA will not unregister it (its surface is leaked, never
                // destroyed under the driver); the second: its EGL image will not go (its
                // surface is destroyed). Either way the surface is lost to the pool.
                if failures == 0 {
                    stub.fail_next(CUDA_LIB, "cuGraphicsUnregisterResource");
                } else {
                    stub.fail_next(NVBUFSURFACE_LIB, "NvBufSurfaceUnMapEglImage");
                }
                drop(f);
                failures += 1;
            }
            Ok(Next::Ended) => panic!("ended without running out of surfaces"),
            Ok(_) => dec.wait(1).unwrap(),
        }
    };
    assert!(matches!(e, NvmmError::PoolLost), "{e}");
    assert_eq!(failures, 2);
    let pool = dec.pool().expect("a pool").clone();
    assert_eq!((pool.lost(), pool.available(), pool.lent()), (2, 0, 0));
    drop((pool, dec));
    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        count(&log, "NvBufSurfaceDestroy"),
        count(&log, "NvBufSurfaceAllocate") - 1,
        "only the surface CUDA may still have registered is never destroyed"
    );
}
