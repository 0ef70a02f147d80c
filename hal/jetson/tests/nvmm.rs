//! The zero-copy loop (`aegis_jetson::nvmm`) end to end against the stand-ins: the r36
//! codec stand-in (tests/m2m_support) as decoder and encoder, the C stand-ins of
//! libnvbufsurface, libnvbufsurftransform and libcuda's EGL interop (tests/stub). The
//! stand-ins share memory the way a Jetson does: the decoder writes into the NvBufSurface
//! memfds the loop allocated for it, the EGL mapping CUDA gets is the work surface's own
//! memory, and the encoder reads the surface's DMA-buf when it encodes the frame (holding
//! a few frames first, as a hardware encoder does). So the test sees what reaches the
//! encoder, for which frame, and every library call made on the way. What it cannot show:
//! NVIDIA's libraries and driver doing the same on a Jetson.

mod m2m_support;
mod stub_support;

use aegis_cuda::Nv12Frame;
use aegis_jetson::cuda_egl::{CUDA_LIB, MappedNv12};
use aegis_jetson::m2m::{
    CaptureMemory, Codec, Decoder, DecoderConfig, EncodedPacket, Encoder, EncoderConfig,
};
use aegis_jetson::nvbuf::NVBUFSURFACE_LIB;
use aegis_jetson::nvmm::{
    DecoderSurfaces, FrameWork, NvmmConfig, NvmmError, NvmmLoop, NvmmStats, Progress,
};
use aegis_jetson::transform::{Compute, Transform};
use m2m_support::{Role, StandIn};
use stub_support::{Stub, names};

/// The work the CUDA kernels would do, done here through the addresses the libcuda
/// stand-in maps (host memory there): checks the picture is the one the decoder made for
/// this timestamp (its marker: the timestamp in the first 8 luma bytes, copied by the VIC)
/// and stamps the frame with `!pts` in its place.
#[derive(Default)]
struct Stamp {
    seen: Vec<u64>,
    /// Frames before a size change, whose marker the VIC copied unscaled.
    exact_until: usize,
    /// Fail on the frame with this timestamp.
    fail_at: Option<u64>,
}

impl FrameWork for Stamp {
    fn process(&mut self, frame: &MappedNv12<'_>, pts_us: u64) -> Result<(), String> {
        if self.fail_at == Some(pts_us) {
            return Err("the kernel failed".into());
        }
        // The kernels' view of the frame: the mapped planes, checked.
        let planes = frame.planes().map_err(|e| e.to_string())?;
        let (w, h, pitch) = planes.geometry();
        assert!(
            pitch >= w && (w, h) == frame.size(),
            "{w}x{h} pitch {pitch}"
        );
        // The stand-in's "device" addresses are shared mappings of the work surface, so
        // the test writes through them as a kernel would.
        let luma = frame.y() as *mut u8;
        let mut first = [0u8; 8];
        // SAFETY: the stand-in mapped the work surface's whole memory at these addresses
        // (at least `pitch` bytes of luma), alive while `frame` is.
        unsafe { std::ptr::copy_nonoverlapping(luma, first.as_mut_ptr(), 8) };
        if self.seen.len() < self.exact_until {
            assert_eq!(
                u64::from_le_bytes(first),
                pts_us,
                "the work surface holds the decoder's picture for this timestamp"
            );
        }
        let stamp = (!pts_us).to_le_bytes();
        // SAFETY: as above.
        unsafe { std::ptr::copy_nonoverlapping(stamp.as_ptr(), luma, 8) };
        self.seen.push(pts_us);
        Ok(())
    }
}

/// The loop of one stream over the stand-ins: decoder of `w`×`h` (changing to `change`
/// after some frames), `encoder` opened at the stream's size.
fn stream(
    stub: &Stub,
    size: (u32, u32),
    change: Option<(u32, u32, u32)>,
    encoder: StandIn,
    config: NvmmConfig,
) -> NvmmLoop<StandIn, StandIn> {
    let lib = stub.surfaces();
    let mut dec_dev = StandIn::new(Role::Decoder).with_stream_size(size.0, size.1);
    if let Some((after, w, h)) = change {
        dec_dev = dec_dev.with_resolution_change(after, w, h);
    }
    let mut dec_config = DecoderConfig::new(Codec::H264);
    dec_config.capture = CaptureMemory::DmaBuf(Box::new(DecoderSurfaces::new(lib.clone())));
    let decoder = Decoder::open(dec_dev, dec_config).expect("decoder");
    let mut enc_dev = Some(encoder);
    let inputs = config.work_surfaces as u32;
    let open_encoder = Box::new(move |w, h| {
        let mut c = EncoderConfig::new(Codec::H264, w, h, 30, 4_000_000);
        c.input_buffers = inputs;
        Encoder::open(enc_dev.take().expect("opened once"), &c)
    });
    NvmmLoop::new(
        decoder,
        open_encoder,
        lib,
        Transform::new(stub.transforms(), Compute::Vic),
        stub.cuda(),
        config,
    )
}

/// Feeds `n` access units (timestamps 1000, 2000, ...), finishes and steps until done.
fn run(
    lp: &mut NvmmLoop<StandIn, StandIn>,
    work: &mut dyn FrameWork,
    n: u64,
) -> Result<Vec<EncodedPacket>, NvmmError> {
    let mut packets = Vec::new();
    let mut idle = 0;
    let mut step = |lp: &mut NvmmLoop<StandIn, StandIn>, packets: &mut Vec<EncodedPacket>| {
        let progress = lp.step(work, packets)?;
        match progress {
            Progress::Idle => {
                idle += 1;
                assert!(idle < 1000, "the loop stopped moving: {:?}", lp.stats());
                lp.wait(1)?;
            }
            _ => idle = 0,
        }
        Ok::<_, NvmmError>(progress)
    };
    for i in 1..=n {
        let au = [0, 0, 0, 1, 0x65, i as u8];
        while !lp.feed(&au, 1000 * i)? {
            step(lp, &mut packets)?;
        }
        step(lp, &mut packets)?;
    }
    while !lp.finish()? {
        step(lp, &mut packets)?;
    }
    while step(lp, &mut packets)? != Progress::Done {}
    Ok(packets)
}

/// What the encoder read from each frame's buffer when it encoded it (the stand-in puts the
/// first 8 luma bytes after its own header) is that frame's stamp: a surface reused before
/// the encoder gave it back would show a later frame's stamp here.
fn assert_stamped(packets: &[EncodedPacket]) {
    for p in packets {
        assert_eq!(
            p.data[9..17],
            (!p.pts_us).to_le_bytes(),
            "frame {} reached the encoder as the work left it",
            p.pts_us
        );
    }
}

fn count(log: &[String], call: &str) -> usize {
    names(log).iter().filter(|n| **n == call).count()
}

#[test]
fn pictures_go_from_decoder_to_encoder_in_nvmm_with_no_host_copy() {
    const N: u64 = 24;
    let stub = Stub::new();
    // Keeps the stand-ins loaded (with their call logs) after the loop is dropped.
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let config = NvmmConfig { work_surfaces: 4 };
    // 320x240, then 160x120 after 16 pictures (the VIC scales those into the encoder's
    // size); the encoder holds 3 frames (of the 4 work surfaces) before it encodes the oldest.
    let encoder = StandIn::new(Role::Encoder).with_encoder_latency(3);
    let mut lp = stream(&stub, (320, 240), Some((16, 160, 120)), encoder, config);
    let mut work = Stamp {
        exact_until: 16,
        ..Stamp::default()
    };
    let packets = run(&mut lp, &mut work, N).expect("the stream runs");

    // Every picture, in order, through the work and into the encoder.
    let pts: Vec<u64> = packets.iter().map(|p| p.pts_us).collect();
    assert_eq!(pts, (1..=N).map(|i| 1000 * i).collect::<Vec<_>>());
    assert_eq!(work.seen, pts);
    assert_stamped(&packets);
    assert_eq!(
        lp.stats(),
        NvmmStats {
            decoded: N,
            vic_copies: N,
            cuda_maps: N,
            encoded: N,
            packets: N,
            pool_waits: lp.stats().pool_waits, // timing-dependent on hardware; 0 here
        }
    );

    drop(lp);
    let log = stub.log(NVBUFSURFACE_LIB);
    // No picture was mapped for the CPU: the only copies were the VIC's, device to device.
    for call in [
        "NvBufSurfaceMap",
        "NvBufSurfaceSyncForCpu",
        "NvBufSurfaceUnMap",
    ] {
        assert_eq!(count(&log, call), 0, "{call} in {log:#?}");
    }
    // Allocations: the decoder's block-linear surfaces (3 + 1 per size, twice), the four
    // pitch-linear work surfaces once: nothing per frame; and everything destroyed.
    let allocs: Vec<&String> = log
        .iter()
        .filter(|l| l.starts_with("NvBufSurfaceAllocate"))
        .collect();
    let decoder_surfaces = |size: &str| {
        allocs
            .iter()
            .filter(|l| l.contains(size) && l.contains("layout=1"))
            .count()
    };
    assert_eq!(decoder_surfaces("(320x240"), 4, "{allocs:#?}");
    assert_eq!(decoder_surfaces("(160x120"), 4, "{allocs:#?}");
    let work_surfaces = allocs.iter().filter(|l| l.contains("layout=0")).count();
    assert_eq!(work_surfaces, 4, "{allocs:#?}");
    assert_eq!(count(&log, "NvBufSurfaceDestroy"), allocs.len());
    // One EGL image per frame, each destroyed; every CUDA registration undone.
    assert_eq!(count(&log, "NvBufSurfaceMapEglImage"), N as usize);
    assert_eq!(count(&log, "NvBufSurfaceUnMapEglImage"), N as usize);
    assert_eq!(stub.live_cuda_resources(), 0);
    let transforms = stub.log(aegis_jetson::transform::NVBUFSURFTRANSFORM_LIB);
    assert_eq!(count(&transforms, "NvBufSurfTransform"), N as usize);
}

#[test]
fn a_failing_frame_stops_the_loop_with_its_reason_and_leaves_nothing_mapped() {
    // The work fails on the fifth picture.
    let stub = Stub::new();
    let encoder = || StandIn::new(Role::Encoder).with_encoder_latency(1);
    let mut lp = stream(&stub, (320, 240), None, encoder(), NvmmConfig::default());
    let mut work = Stamp {
        fail_at: Some(5000),
        ..Stamp::default()
    };
    let e = run(&mut lp, &mut work, 8).expect_err("the work's failure");
    assert!(
        matches!(&e, NvmmError::Work { pts_us: 5000, why } if why == "the kernel failed"),
        "{e}"
    );
    assert_eq!(
        stub.live_cuda_resources(),
        0,
        "the failed frame's mapping undone"
    );
    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        count(&log, "NvBufSurfaceMapEglImage"),
        count(&log, "NvBufSurfaceUnMapEglImage")
    );

    // CUDA refuses to register the second picture's image.
    let stub = Stub::new();
    let mut lp = stream(&stub, (320, 240), None, encoder(), NvmmConfig::default());
    let mut work = Stamp::default();
    let mut packets = Vec::new();
    let mut fed = 0;
    let e = loop {
        if fed < 3 && lp.feed(&[0, 0, 0, 1, 0x65], 1000 * (fed + 1)).unwrap() {
            fed += 1;
        }
        if work.seen.len() == 1 {
            stub.fail_next(CUDA_LIB, "cuGraphicsEGLRegisterImage");
        }
        match lp.step(&mut work, &mut packets) {
            Err(e) => break e,
            Ok(Progress::Done) => panic!("finished without the failure"),
            Ok(_) => {}
        }
    };
    assert!(
        e.to_string()
            .contains("cuGraphicsEGLRegisterImage failed: CUDA error 1"),
        "{e}"
    );
    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        count(&log, "NvBufSurfaceMapEglImage"),
        count(&log, "NvBufSurfaceUnMapEglImage"),
        "the refused frame's EGL image destroyed"
    );
    assert_eq!(stub.live_cuda_resources(), 0);
}

#[test]
fn a_full_pool_holds_the_decoder_back_until_the_encoder_gives_a_surface_back() {
    // Two work surfaces and an encoder that works only when waited on (as hardware
    // finishes later): the third picture finds both surfaces with the encoder and waits,
    // holding its capture buffer; nothing more is allocated, and once the encoder has read
    // a surface the picture goes on. Every picture arrives as the work left it.
    const N: u64 = 10;
    let stub = Stub::new();
    let _loaded = (stub.surfaces(), stub.transforms(), stub.cuda());
    let encoder = StandIn::new(Role::Encoder).with_encoding_in_wait();
    let config = NvmmConfig { work_surfaces: 2 };
    let mut lp = stream(&stub, (320, 240), None, encoder, config);
    let mut work = Stamp {
        exact_until: N as usize,
        ..Stamp::default()
    };
    let packets = run(&mut lp, &mut work, N).expect("the stream runs");
    assert_eq!(packets.len(), N as usize);
    assert_stamped(&packets);
    let stats = lp.stats();
    assert!(stats.pool_waits > 0, "the pool never ran out: {stats:?}");
    assert_eq!((stats.decoded, stats.encoded), (N, N));
    drop(lp);
    let log = stub.log(NVBUFSURFACE_LIB);
    let work_surfaces = log
        .iter()
        .filter(|l| l.starts_with("NvBufSurfaceAllocate") && l.contains("layout=0"))
        .count();
    assert_eq!(work_surfaces, 2, "backpressure, not growth");
}

#[test]
fn an_encoder_with_fewer_frame_buffers_than_work_surfaces_is_refused_at_the_first_picture() {
    let stub = Stub::new();
    let lib = stub.surfaces();
    let decoder = {
        let mut c = DecoderConfig::new(Codec::H264);
        c.capture = CaptureMemory::DmaBuf(Box::new(DecoderSurfaces::new(lib.clone())));
        Decoder::open(StandIn::new(Role::Decoder).with_stream_size(320, 240), c).unwrap()
    };
    let mut dev = Some(StandIn::new(Role::Encoder));
    let open_encoder = Box::new(move |w, h| {
        let mut c = EncoderConfig::new(Codec::H264, w, h, 30, 4_000_000);
        c.input_buffers = 2;
        Encoder::open(dev.take().expect("opened once"), &c)
    });
    let transform = Transform::new(stub.transforms(), Compute::Vic);
    let config = NvmmConfig { work_surfaces: 4 };
    let mut lp = NvmmLoop::new(decoder, open_encoder, lib, transform, stub.cuda(), config);
    let e = run(&mut lp, &mut Stamp::default(), 3).expect_err("refused");
    assert!(matches!(e, NvmmError::EncoderFull(2, 4)), "{e}");
    assert_eq!(
        e.to_string(),
        "the encoder takes 2 frames at once, fewer than the loop's 4 work surfaces"
    );
}
