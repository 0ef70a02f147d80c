//! The recorder's packet tap: consumers (the live view) get the one encoder's packets, a
//! keyframe request makes an IDR without cutting the segment, and an inactive tap gets no
//! packets at all.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, atomic::AtomicUsize};
use std::time::Duration;

use aegis_hal::record::{DiskBudget, PacketTap, RecorderSettings, SegmentRecorder, TapPacket};
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{FrameLayout, PixelFormat, StreamId, SurfacePool};
use common::*;

const W: usize = 160;
const H: usize = 120;
const FRAME_US: i64 = 33_333;

#[derive(Default)]
struct Tap {
    active: AtomicBool,
    want_key: AtomicBool,
    starts: Mutex<Vec<(Vec<u8>, usize, usize)>>,
    /// (pts, key, bytes)
    packets: Mutex<Vec<(i64, bool, usize)>>,
    asked: AtomicUsize,
}

impl PacketTap for Tap {
    fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }
    fn take_keyframe_request(&self) -> bool {
        self.asked.fetch_add(1, Ordering::Relaxed);
        self.want_key.swap(false, Ordering::Relaxed)
    }
    fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
        self.starts
            .lock()
            .unwrap()
            .push((extradata.to_vec(), width, height));
    }
    fn packet(&self, p: &TapPacket<'_>) {
        assert!(!p.data.is_empty());
        self.packets
            .lock()
            .unwrap()
            .push((p.pts, p.key, p.data.len()));
    }
}

#[test]
fn tap_sees_packets_only_while_active_and_keyframe_requests_do_not_cut_segments() {
    let dir = tmpdir();
    let tap = Arc::new(Tap::default());
    let stream = StreamId::new("cam");
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.path().to_path_buf(),
            stream: stream.clone(),
            segment: Duration::from_secs(60),
            encoder: {
                let mut e = encoder(1000, 300);
                e.threads = 1;
                e
            },
        },
        DiskBudget::open(dir.path(), u64::MAX).expect("budget"),
    )
    .with_tap(tap.clone());
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, W, H), 2);
    let mut scene = SyntheticScene::new(W, H, 2, 3, None);
    for i in 0..60u64 {
        match i {
            // Inactive for the first 20 frames: nothing handed over.
            20 => tap.active.store(true, Ordering::Relaxed),
            // A consumer joins and asks for a keyframe.
            30 => tap.want_key.store(true, Ordering::Relaxed),
            _ => {}
        }
        let mut f = blank_frame(&pool, &stream, i, i as i64 * FRAME_US);
        scene.render(&mut f);
        rec.push(&mut f).expect("push");
    }
    rec.finish().expect("finish");

    let starts = tap.starts.lock().unwrap();
    assert_eq!(starts.len(), 1, "one encoder opened");
    assert_eq!((starts[0].1, starts[0].2), (W, H));
    assert!(
        starts[0]
            .0
            .windows(4)
            .any(|w| w == [0, 0, 0, 1] || w[..3] == [0, 0, 1]),
        "extradata carries Annex-B SPS/PPS"
    );
    let packets = tap.packets.lock().unwrap();
    // Packets drained from the push of frame 20 on (the encoder may lag a frame or two), in
    // order, to the last frame; frame 30 a keyframe and no other after the first.
    let frame_of = |pts: i64| (pts as f64 / 3000.0).round() as i64;
    let first = frame_of(packets.first().expect("packets while active").0);
    assert!((17..=20).contains(&first), "first packet: frame {first}");
    let frames: Vec<i64> = packets.iter().map(|p| frame_of(p.0)).collect();
    assert_eq!(frames, (first..60).collect::<Vec<_>>());
    let keys: Vec<i64> = packets
        .iter()
        .filter(|p| p.1)
        .map(|p| frame_of(p.0))
        .collect();
    assert_eq!(keys, vec![30], "the requested keyframe, and no other");
    assert!(tap.asked.load(Ordering::Relaxed) >= 60);
    // The extra IDR did not cut the recording: still one segment of all 60 frames.
    assert_eq!(rec.stats().segments, 1);
    let segs = list_with_suffix(&dir.path().join("cam"), ".mp4");
    assert_eq!(segs.len(), 1, "{segs:?}");
    if require_tool("ffprobe") {
        let (_, w, h, frames, _) = probe_stream(&segs[0]);
        assert_eq!((w, h, frames), (W, H, 60));
    }
}

/// Frames handed to an encoder before its first packet comes out.
fn frames_before_first_packet(low_latency: bool) -> usize {
    use aegis_hal::codec::{EncoderSettings, VideoEncoder};
    let layout = FrameLayout::new(PixelFormat::I420, 320, 240);
    let settings = EncoderSettings {
        threads: 4,
        low_latency,
        profile: None,
        ..encoder(1000, 30)
    };
    let mut enc = VideoEncoder::open(&settings, layout, true).unwrap();
    let pool = SurfacePool::new(layout, 2);
    let mut scene = SyntheticScene::new(320, 240, 2, 7, None);
    for i in 0..30u64 {
        let mut f = aegis_hal::Frame::from_pool(
            &pool,
            StreamId::new("cam"),
            i,
            i as i64 * FRAME_US,
            FRAME_US,
        )
        .unwrap();
        scene.render(&mut f);
        let mut out = 0;
        enc.encode(&mut f, i as i64 * 3000, i == 0, &mut |_| {
            out += 1;
            Ok(())
        })
        .unwrap();
        if out > 0 {
            return i as usize;
        }
    }
    30
}

#[test]
fn a_low_latency_encoder_holds_no_frame_and_frame_threads_do() {
    // x264's zerolatency tune with sliced threads: the first frame's packet comes out of
    // its own encode call; four frame threads hold frames back.
    assert_eq!(frames_before_first_packet(true), 0);
    assert!(frames_before_first_packet(false) >= 2);
}
