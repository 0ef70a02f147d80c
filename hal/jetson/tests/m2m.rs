//! The decoder and encoder state machines end to end against the r36 stand-in
//! (tests/m2m_support): call order, stream on/off, queue/dequeue, resolution change
//! mid-stream, end of stream and drain, ioctl failures, a device that disappears. Every
//! flow also asserts the stand-in refused nothing: the state machines follow the samples'
//! sequence exactly, and the stand-in refuses anything out of order.

mod m2m_support;

use std::os::fd::{AsFd, OwnedFd};

use aegis_jetson::m2m::{
    CaptureBuffer, CaptureMemory, Codec, DecodedFrame, Decoder, DecoderConfig, DecoderEvent,
    Device, Encoder, EncoderConfig, EncoderEvent, Errno, FrameFormat, InputFrame, M2mError,
    NodeDevice, Request, SurfaceAllocator, sys,
};
use m2m_support::{Role, StandIn, is_open, marker, surface};

const OUT: u32 = sys::BUF_TYPE_VIDEO_OUTPUT_MPLANE;
const CAP: u32 = sys::BUF_TYPE_VIDEO_CAPTURE_MPLANE;

fn au(n: u8) -> Vec<u8> {
    vec![0, 0, 0, 1, 0x65, n, n, n]
}

/// Polls until `want` events (or EOS) came; releases frames unless `hold` says to keep.
fn collect<D: Device>(dec: &mut Decoder<D>, until_eos: bool, max_idle: usize) -> Vec<DecoderEvent> {
    let mut events = Vec::new();
    let mut idle = 0;
    while idle < max_idle {
        match dec.poll().expect("poll") {
            Some(DecoderEvent::EndOfStream) => {
                events.push(DecoderEvent::EndOfStream);
                break;
            }
            Some(ev) => {
                idle = 0;
                events.push(ev)
            }
            None if until_eos => {
                dec.wait(10).unwrap();
                idle += 1;
            }
            None => break,
        }
    }
    events
}

fn frames(events: Vec<DecoderEvent>) -> (Vec<FrameFormat>, Vec<DecodedFrame>, bool) {
    let (mut formats, mut pics, mut eos) = (Vec::new(), Vec::new(), false);
    for e in events {
        match e {
            DecoderEvent::FormatChanged(f) => formats.push(f),
            DecoderEvent::Frame(f) => pics.push(f),
            DecoderEvent::EndOfStream => eos = true,
        }
    }
    (formats, pics, eos)
}

#[test]
fn decoder_follows_the_sample_sequence_and_drains() {
    let dev = StandIn::new(Role::Decoder).with_stream_size(1280, 720);
    let shared = dev.shared.clone();
    let mut dec = Decoder::open(dev, DecoderConfig::new(Codec::H264)).expect("open");
    assert_eq!(
        shared.lock().unwrap().calls[..6],
        [
            "VIDIOC_QUERYCAP",
            "VIDIOC_SUBSCRIBE_EVENT",
            "VIDIOC_SUBSCRIBE_EVENT",
            "VIDIOC_S_FMT",
            "VIDIOC_S_EXT_CTRLS",
            "VIDIOC_REQBUFS"
        ]
    );
    assert_eq!(
        shared.lock().unwrap().calls.last(),
        Some(&"VIDIOC_STREAMON")
    );

    let mut decoded = Vec::new();
    let mut formats = Vec::new();
    for i in 0..6u8 {
        // Two input buffers: feeding waits for the driver to hand them back.
        while !dec.try_feed(&au(i), 1000 * u64::from(i)).expect("feed") {
            let (f, p, _) = frames(collect(&mut dec, false, 1));
            formats.extend(f);
            for frame in p {
                decoded.push((frame.pts_us, marker(frame.fd())));
                dec.release(frame).unwrap();
            }
        }
        let (f, p, _) = frames(collect(&mut dec, false, 1));
        formats.extend(f);
        for frame in p {
            decoded.push((frame.pts_us, marker(frame.fd())));
            dec.release(frame).unwrap();
        }
    }
    while !dec.try_finish().unwrap() {
        dec.wait(10).unwrap();
        let _ = dec.poll().unwrap();
    }
    let (f, p, eos) = frames(collect(&mut dec, true, 50));
    formats.extend(f);
    for frame in p {
        decoded.push((frame.pts_us, marker(frame.fd())));
        dec.release(frame).unwrap();
    }
    assert!(eos, "end of stream after the empty output buffer");
    assert_eq!(formats.len(), 1, "one resolution event");
    assert_eq!(
        (formats[0].visible.width, formats[0].visible.height),
        (1280, 720)
    );
    assert_eq!(formats[0].pixelformat, sys::PIX_FMT_NV12M);
    assert_eq!(formats[0].planes.len(), 2);
    // Every access unit came out once, in order, with its timestamp in the picture.
    let want: Vec<(u64, u64)> = (0..6).map(|i| (1000 * i, 1000 * i)).collect();
    assert_eq!(decoded, want);
    assert!(
        shared.lock().unwrap().refusals.is_empty(),
        "{:?}",
        shared.lock().unwrap().refusals
    );
    // After EOS, input is refused by the state machine itself.
    assert!(matches!(
        dec.try_feed(&au(9), 0),
        Err(M2mError::AfterEos(_))
    ));
    drop(dec);
    let calls = shared.lock().unwrap().calls.clone();
    assert_eq!(
        calls[calls.len() - 4..],
        [
            "VIDIOC_STREAMOFF",
            "VIDIOC_REQBUFS",
            "VIDIOC_STREAMOFF",
            "VIDIOC_REQBUFS"
        ]
    );
}

/// Surfaces from memfds, counting allocations (NvBufSurfaceAllocate on a Jetson).
struct MemfdSurfaces(std::sync::Arc<std::sync::Mutex<Vec<(u32, u32, u32)>>>);

impl SurfaceAllocator for MemfdSurfaces {
    fn allocate(&mut self, format: &FrameFormat, count: u32) -> Result<Vec<CaptureBuffer>, String> {
        self.0
            .lock()
            .unwrap()
            .push((format.visible.width, format.visible.height, count));
        let size: u32 = format.planes.iter().map(|p| p.1).sum();
        Ok((0..count)
            .map(|_| Box::new(surface(u64::from(size))) as CaptureBuffer)
            .collect())
    }
}

#[test]
fn decoder_dmabuf_capture_survives_a_resolution_change_mid_stream() {
    let dev = StandIn::new(Role::Decoder)
        .with_stream_size(1920, 1080)
        .with_resolution_change(3, 640, 360);
    let shared = dev.shared.clone();
    let allocs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut config = DecoderConfig::new(Codec::H265);
    config.input_buffers = 8;
    config.capture = CaptureMemory::DmaBuf(Box::new(MemfdSurfaces(allocs.clone())));
    let mut dec = Decoder::open(dev, config).expect("open");
    for i in 0..6u8 {
        assert!(dec.try_feed(&au(i), u64::from(i)).unwrap());
    }
    assert!(dec.try_finish().unwrap());
    let mut held = Vec::new();
    let mut formats = Vec::new();
    let mut pts = Vec::new();
    let mut eos = false;
    for _ in 0..100 {
        match dec.poll().unwrap() {
            Some(DecoderEvent::FormatChanged(f)) => formats.push(f),
            Some(DecoderEvent::Frame(f)) => {
                pts.push((f.generation(), f.pts_us, marker(f.fd())));
                if f.generation() == 1 && held.is_empty() {
                    held.push(f); // a frame still in the pipeline when the change comes
                } else {
                    dec.release(f).unwrap();
                }
            }
            Some(DecoderEvent::EndOfStream) => {
                eos = true;
                break;
            }
            None => dec.wait(10).unwrap(),
        }
    }
    assert!(eos);
    assert_eq!(formats.len(), 2);
    // Coded 1920x1088, displayed 1920x1080 (G_FMT vs G_CROP).
    assert_eq!((formats[0].width, formats[0].height), (1920, 1088));
    assert_eq!(
        (formats[0].visible.width, formats[0].visible.height),
        (1920, 1080)
    );
    assert_eq!(
        (formats[1].visible.width, formats[1].visible.height),
        (640, 360)
    );
    assert_eq!(
        pts,
        vec![
            (1, 0, 0),
            (1, 1, 1),
            (1, 2, 2),
            (2, 3, 3),
            (2, 4, 4),
            (2, 5, 5)
        ],
        "three pictures before the change, three after, none lost"
    );
    // MIN_BUFFERS_FOR_CAPTURE (3) + 1 extra, once per resolution, at the visible size.
    assert_eq!(
        *allocs.lock().unwrap(),
        vec![(1920, 1080, 4), (640, 360, 4)]
    );
    // The held frame's surface outlived its buffer set; releasing it now is harmless.
    let old = held.pop().unwrap();
    assert!(is_open(old.fd()));
    assert_eq!(old.format().visible.width, 1920);
    dec.release(old).unwrap();
    let s = shared.lock().unwrap();
    assert!(s.refusals.is_empty(), "{:?}", s.refusals);
    // The reconfiguration freed the old buffers before asking for new ones.
    let i = s.calls.iter().rposition(|c| *c == "VIDIOC_G_CROP").unwrap();
    assert_eq!(
        s.calls[i + 1..i + 5],
        [
            "VIDIOC_STREAMOFF",
            "VIDIOC_REQBUFS",
            "VIDIOC_G_CTRL",
            "VIDIOC_REQBUFS"
        ]
    );
}

#[test]
fn decoder_errors_name_the_ioctl_and_plane() {
    for (ioctl, errno, plane) in [
        ("VIDIOC_S_FMT", libc::EINVAL, "output plane"),
        ("VIDIOC_STREAMON", libc::EBUSY, "output plane"),
        ("VIDIOC_EXPBUF", libc::EINVAL, "output plane"),
    ] {
        let dev = StandIn::new(Role::Decoder);
        dev.shared.lock().unwrap().fail_next = Some((ioctl, errno));
        let err = Decoder::open(dev, DecoderConfig::new(Codec::H264))
            .err()
            .expect("must fail");
        match &err {
            M2mError::Ioctl {
                ioctl: i,
                plane: p,
                errno: e,
            } => {
                assert_eq!((*i, *p, e.0), (ioctl, plane, errno), "{err}");
            }
            other => panic!("{ioctl}: {other}"),
        }
        assert!(err.to_string().contains(ioctl), "{err}");
    }
    // A failure mid-stream: the capture plane's STREAMON after the resolution event.
    let dev = StandIn::new(Role::Decoder);
    let shared = dev.shared.clone();
    let mut dec = Decoder::open(dev, DecoderConfig::new(Codec::H264)).unwrap();
    assert!(dec.try_feed(&au(0), 0).unwrap());
    shared.lock().unwrap().fail_next = Some(("VIDIOC_STREAMON", libc::EBUSY));
    let err = dec.poll().unwrap_err();
    assert!(
        matches!(
            err,
            M2mError::Ioctl {
                ioctl: "VIDIOC_STREAMON",
                plane: "capture plane",
                errno: Errno(libc::EBUSY)
            }
        ),
        "{err}"
    );
}

#[test]
fn decoder_reports_a_device_that_disappears() {
    let dev = StandIn::new(Role::Decoder);
    let shared = dev.shared.clone();
    let mut dec = Decoder::open(dev, DecoderConfig::new(Codec::H264)).unwrap();
    assert!(dec.try_feed(&au(0), 0).unwrap());
    assert!(matches!(
        dec.poll().unwrap(),
        Some(DecoderEvent::FormatChanged(_))
    ));
    shared.lock().unwrap().gone = true;
    assert!(matches!(
        dec.poll(),
        Err(M2mError::Gone {
            ioctl: "VIDIOC_DQEVENT"
        })
    ));
    assert!(matches!(
        dec.try_feed(&au(1), 1),
        Err(M2mError::Gone { .. })
    ));
    assert!(matches!(dec.wait(10), Err(M2mError::Gone { .. })));
    drop(dec); // teardown against a dead device must not panic
}

#[test]
fn decoder_rejects_oversized_access_units_and_keeps_its_buffer() {
    let mut config = DecoderConfig::new(Codec::H264);
    config.input_buffers = 1;
    config.input_buffer_size = 16;
    let mut dec = Decoder::open(StandIn::new(Role::Decoder), config).unwrap();
    let err = dec.try_feed(&[0u8; 17], 0).unwrap_err();
    assert!(
        matches!(
            err,
            M2mError::TooLarge {
                size: 17,
                capacity: 16,
                ..
            }
        ),
        "{err}"
    );
    // The one buffer is still usable.
    assert!(dec.try_feed(&[0u8; 16], 0).unwrap());
}

#[test]
fn the_stand_in_refuses_what_the_driver_refuses() {
    // Without these refusals the state-machine tests above would prove little.
    let mut dev = StandIn::new(Role::Decoder);
    let mut req = sys::RequestBuffers {
        count: 4,
        type_: CAP,
        memory: sys::MEMORY_MMAP,
        ..Default::default()
    };
    assert_eq!(
        dev.ioctl(Request::RequestBuffers(&mut req)),
        Err(Errno(libc::EINVAL)),
        "capture before resolution"
    );
    let mut fmt = sys::Format::new(CAP);
    assert_eq!(
        dev.ioctl(Request::GetFormat(&mut fmt)),
        Err(Errno(libc::EINVAL))
    );
    let mut req = sys::RequestBuffers {
        count: 2,
        type_: OUT,
        memory: sys::MEMORY_MMAP,
        ..Default::default()
    };
    assert_eq!(
        dev.ioctl(Request::RequestBuffers(&mut req)),
        Err(Errno(libc::EINVAL)),
        "buffers before S_FMT"
    );
    assert_eq!(
        dev.ioctl(Request::StreamOn(OUT)),
        Err(Errno(libc::EINVAL)),
        "STREAMON without buffers"
    );
    let mut cmd = sys::DecoderCmd {
        cmd: sys::DEC_CMD_STOP,
        ..Default::default()
    };
    assert_eq!(
        dev.ioctl(Request::DecoderCommand(&mut cmd)),
        Err(Errno(libc::ENOTTY))
    );

    let mut enc = StandIn::new(Role::Encoder);
    let mut out = sys::Format::new(OUT);
    let mut pix = out.pix_mp();
    pix.pixelformat = sys::PIX_FMT_NV12M;
    pix.num_planes = 2;
    out.set_pix_mp(pix);
    assert_eq!(
        enc.ioctl(Request::SetFormat(&mut out)),
        Err(Errno(libc::EINVAL)),
        "output format before capture"
    );
    let mut req = sys::RequestBuffers {
        count: 2,
        type_: CAP,
        memory: sys::MEMORY_DMABUF,
        ..Default::default()
    };
    assert_eq!(
        enc.ioctl(Request::RequestBuffers(&mut req)),
        Err(Errno(libc::EINVAL))
    );
}

fn nv12_frame(w: u32, h: u32) -> OwnedFd {
    surface(u64::from(w * h * 3 / 2))
}

fn drain<D: Device>(enc: &mut Encoder<D>, out: &mut Vec<(bool, u64, Vec<u8>)>) -> bool {
    while let Some(ev) = enc.poll().expect("poll") {
        match ev {
            EncoderEvent::Packet(p) => out.push((p.key_frame, p.pts_us, p.data)),
            EncoderEvent::EndOfStream => return true,
        }
    }
    false
}

#[test]
fn encoder_configures_encodes_forces_idr_and_drains() {
    let dev = StandIn::new(Role::Encoder);
    let shared = dev.shared.clone();
    let mut config = EncoderConfig::new(Codec::H264, 1280, 720, 30, 4_000_000);
    config.idr_interval = 3;
    config.input_buffers = 2;
    let mut enc = Encoder::open(dev, &config).expect("open");
    {
        let s = shared.lock().unwrap();
        assert_eq!(
            s.calls[..3],
            ["VIDIOC_QUERYCAP", "VIDIOC_S_FMT", "VIDIOC_S_FMT"]
        );
        assert!(
            s.controls
                .contains(&(sys::CID_MPEG_VIDEO_BITRATE, 4_000_000))
        );
        assert!(s.controls.contains(&(sys::CID_MPEG_VIDEO_IDR_INTERVAL, 3)));
        assert!(s.controls.contains(&(
            sys::CID_MPEG_VIDEO_H264_PROFILE,
            sys::MPEG_VIDEO_H264_PROFILE_HIGH
        )));
    }
    let frame = nv12_frame(1280, 720);
    let mut packets = Vec::new();
    for i in 0..7u64 {
        let planes = [(frame.as_fd(), 1280 * 720), (frame.as_fd(), 1280 * 720 / 2)];
        let input = InputFrame {
            planes: &planes,
            pts_us: 40_000 * i,
        };
        while !enc.try_encode(&input, i == 5).expect("encode") {
            drain(&mut enc, &mut packets);
        }
        drain(&mut enc, &mut packets);
    }
    enc.set_bitrate(2_000_000).expect("runtime bitrate");
    let mut eos = false;
    while !enc.try_finish().unwrap() {
        eos |= drain(&mut enc, &mut packets);
    }
    for _ in 0..10 {
        if eos || drain(&mut enc, &mut packets) {
            eos = true;
            break;
        }
        enc.wait(10).unwrap();
    }
    assert!(eos, "end of stream after the empty frame");
    let keys: Vec<bool> = packets.iter().map(|p| p.0).collect();
    assert_eq!(
        keys,
        [true, false, false, true, false, true, true],
        "IDR every 3 and the forced one"
    );
    let pts: Vec<u64> = packets.iter().map(|p| p.1).collect();
    assert_eq!(pts, (0..7).map(|i| 40_000 * i).collect::<Vec<_>>());
    for (n, p) in packets.iter().enumerate() {
        assert_eq!(&p.2[..4], &[0, 0, 0, 1], "Annex B start code");
        assert_eq!(
            p.2[5..9],
            (n as u32).to_le_bytes(),
            "packet {n} read from its own buffer"
        );
    }
    let s = shared.lock().unwrap();
    assert!(s.refusals.is_empty(), "{:?}", s.refusals);
    assert!(
        s.controls
            .contains(&(sys::CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE, 0))
    );
    assert!(
        s.controls
            .contains(&(sys::CID_MPEG_VIDEO_BITRATE, 2_000_000))
    );
}

#[test]
fn encoder_refuses_bad_input_and_reports_failures() {
    let mut enc = Encoder::open(
        StandIn::new(Role::Encoder),
        &EncoderConfig::new(Codec::H265, 640, 360, 25, 1_000_000),
    )
    .expect("open");
    let frame = nv12_frame(640, 360);
    let one = [(frame.as_fd(), 100)];
    let err = enc
        .try_encode(
            &InputFrame {
                planes: &one,
                pts_us: 0,
            },
            false,
        )
        .unwrap_err();
    assert!(
        matches!(err, M2mError::PlaneCount { got: 1, want: 2 }),
        "{err}"
    );

    let dev = StandIn::new(Role::Encoder);
    dev.shared.lock().unwrap().fail_next = Some(("VIDIOC_S_EXT_CTRLS", libc::EINVAL));
    let err = Encoder::open(dev, &EncoderConfig::new(Codec::H264, 640, 360, 25, 1))
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            M2mError::Ioctl {
                ioctl: "VIDIOC_S_EXT_CTRLS",
                ..
            }
        ),
        "{err}"
    );

    let dev = StandIn::new(Role::Encoder);
    let shared = dev.shared.clone();
    let mut enc = Encoder::open(dev, &EncoderConfig::new(Codec::H264, 640, 360, 25, 1)).unwrap();
    shared.lock().unwrap().gone = true;
    let two = [(frame.as_fd(), 100), (frame.as_fd(), 50)];
    let err = enc
        .try_encode(
            &InputFrame {
                planes: &two,
                pts_us: 0,
            },
            false,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            M2mError::Gone {
                ioctl: "VIDIOC_DQBUF"
            }
        ),
        "{err}"
    );
}

#[test]
fn encoder_finish_without_frames_ends_at_once() {
    let mut enc = Encoder::open(
        StandIn::new(Role::Encoder),
        &EncoderConfig::new(Codec::H264, 320, 240, 30, 1),
    )
    .unwrap();
    assert!(enc.try_finish().unwrap());
    assert_eq!(enc.poll().unwrap(), Some(EncoderEvent::EndOfStream));
}

/// The generic V4L2 parts against the kernel's `vicodec` M2M driver, when this machine
/// has it (`modprobe vicodec multiplanar=1`). Containers and CI have no kernel modules, so
/// this is not recorded as a skip (CI would fail on a skip it can never fix): it says so.
#[test]
fn generic_v4l2_calls_against_vicodec_when_present() {
    let Some(node) = vicodec_node() else {
        eprintln!(
            "not run: no vicodec device (/sys/class/video4linux/*/name); see docs/jetson-codecs.md"
        );
        return;
    };
    let mut dev = NodeDevice::open_kernel(&node).expect("open vicodec");
    let mut cap = sys::Capability::default();
    dev.ioctl(Request::QueryCap(&mut cap)).expect("QUERYCAP");
    let mut fmt = sys::Format::new(CAP);
    let mut pix = fmt.pix_mp();
    pix.pixelformat = sys::PIX_FMT_FWHT;
    pix.width = 640;
    pix.height = 480;
    pix.num_planes = 1;
    fmt.set_pix_mp(pix);
    dev.ioctl(Request::SetFormat(&mut fmt)).expect("S_FMT");
    let mut req = sys::RequestBuffers {
        count: 2,
        type_: CAP,
        memory: sys::MEMORY_MMAP,
        ..Default::default()
    };
    dev.ioctl(Request::RequestBuffers(&mut req))
        .expect("REQBUFS");
    assert!(req.count >= 1);
    let mut buf = sys::Buffer::new(CAP, sys::MEMORY_MMAP, 0);
    let mut planes = [sys::Plane::default(); 1];
    dev.ioctl(Request::QueryBuffer(&mut buf, &mut planes))
        .expect("QUERYBUF");
    assert!(planes[0].length > 0);
    let mut exp = sys::ExportBuffer {
        type_: CAP,
        index: 0,
        ..Default::default()
    };
    dev.ioctl(Request::ExportBuffer(&mut exp)).expect("EXPBUF");
    assert!(exp.fd >= 0);
}

fn vicodec_node() -> Option<std::path::PathBuf> {
    let dir = std::fs::read_dir("/sys/class/video4linux").ok()?;
    dir.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        name.trim()
            .starts_with("vicodec")
            .then(|| std::path::Path::new("/dev").join(e.file_name()))
    })
}
