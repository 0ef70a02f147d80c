//! SegmentRecorder: 10 s of 30 fps video cut into 2 s fragmented-MP4 segments.

mod common;

use std::time::Duration;

use aegis_hal::record::{DiskBudget, RecorderSettings, SegmentRecorder};
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{FrameLayout, PixelFormat, StreamId, SurfacePool};
use common::*;

const W: usize = 320;
const H: usize = 240;
const FRAMES: usize = 300;

#[test]
fn segmented_recording() {
    let dir = tmpdir();
    let budget = DiskBudget::open(dir.path(), u64::MAX).expect("budget");
    let stream = StreamId::new("cam1");
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.path().to_path_buf(),
            stream: stream.clone(),
            segment: Duration::from_secs(2),
            encoder: encoder(2000, 60),
        },
        budget.clone(),
    );
    let layout = FrameLayout::new(PixelFormat::I420, W, H);
    let pool = SurfacePool::new(layout, 2);
    let mut scene = SyntheticScene::new(W, H, 3, 11, None);
    for i in 0..FRAMES {
        let mut f = blank_frame(&pool, &stream, i as u64, i as i64 * 33_333);
        scene.render(&mut f);
        rec.push(&mut f).expect("push");
    }
    rec.finish().expect("finish");
    // finish() twice is harmless.
    rec.finish().expect("second finish");

    let stats = rec.stats();
    assert_eq!(stats.frames, FRAMES as u64);
    assert_eq!(stats.segments, 5, "{stats:?}");
    assert_eq!(rec.encoder_name(), None, "finish closes the encoder");

    let sdir = dir.path().join("cam1");
    let parts = list_with_suffix(&sdir, ".part");
    assert!(parts.is_empty(), "left-over .part files: {parts:?}");
    let segs = list_with_suffix(&sdir, ".mp4");
    assert_eq!(segs.len(), 5, "{segs:?}");
    assert_eq!(
        budget.segments(),
        segs,
        "budget lists the segments oldest first"
    );
    let on_disk: u64 = segs
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert_eq!(budget.usage(), (on_disk, 0));

    let have_ffprobe = require_tool("ffprobe");
    let mut total = 0;
    let mut counts = Vec::new();
    let mut prev_last_luma: Option<Vec<u8>> = None;
    for seg in &segs {
        let name = seg.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("cam1-"), "{name}");

        // Our own decoder: every frame, first is a keyframe, timeline starts at 0.
        let d = decode_all(seg);
        let n = d.pts_us.len();
        assert!(d.keyframes[0], "{name} does not start with a keyframe");
        assert!(
            d.pts_us[0].abs() <= 1,
            "{name} starts at pts {}",
            d.pts_us[0]
        );
        assert!(
            d.pts_us.windows(2).all(|p| p[1] > p[0]),
            "{name}: pts not increasing"
        );
        assert_eq!(d.stats.decode.errors, 0, "{name}");
        assert_eq!(d.stats.decode.skipped_before_keyframe, 0, "{name}");
        assert_eq!(d.stats.read_errors, 0, "{name}");
        assert!(d.sizes.iter().all(|&s| s == (W, H)));
        // Consecutive segments continue the video: the first frame of this segment is
        // not a repeat of the previous segment's last frame (nothing duplicated at cuts).
        if let Some(prev) = &prev_last_luma {
            assert!(
                psnr(prev, &d.lumas[0]) < 60.0,
                "{name}: first frame repeats the previous segment's last"
            );
        }
        prev_last_luma = d.lumas.last().cloned();
        eprintln!("{name}: {n} frames");
        counts.push(n);
        total += n;

        if have_ffprobe {
            let (codec, w, h, frames, p) = probe_stream(seg);
            assert_eq!(codec, "h264");
            assert_eq!((w, h), (W, H));
            assert!(
                p.stderr.trim().is_empty(),
                "{name}: ffprobe errors: {}",
                p.stderr
            );
            assert_eq!(
                frames as usize, n,
                "{name}: ffprobe and FileSource disagree"
            );
            let types = probe_frame_types(seg);
            assert!(
                types[0].1 && types[0].0 == "I",
                "{name}: first frame {:?}",
                types[0]
            );
            let dur = probe_duration(seg);
            assert!((dur - 2.0).abs() <= 0.05, "{name}: duration {dur} s");
        }
    }
    eprintln!("segment frame counts: {counts:?}");
    assert_eq!(
        total, FRAMES,
        "segments must hold every frame exactly once: {counts:?}"
    );
    for (i, &n) in counts.iter().enumerate() {
        assert!(
            (59..=61).contains(&n),
            "segment {i} has {n} frames: {counts:?}"
        );
    }
}

/// NTSC rates: frame times are not whole multiples of the segment length, and the
/// encoder's natural keyframes must not confuse the cut (GOP longer than a segment).
#[test]
fn segments_stay_exact_at_ntsc_rates() {
    for (num, den) in [(30_000i64, 1_001i64), (24_000, 1_001)] {
        let dir = tmpdir();
        let budget = DiskBudget::open(dir.path(), u64::MAX).expect("budget");
        let stream = StreamId::new("ntsc");
        let mut rec = SegmentRecorder::new(
            RecorderSettings {
                dir: dir.path().to_path_buf(),
                stream: stream.clone(),
                segment: Duration::from_secs(4),
                encoder: encoder(1000, 1000),
            },
            budget,
        );
        let layout = FrameLayout::new(PixelFormat::I420, 160, 120);
        let pool = SurfacePool::new(layout, 2);
        let mut scene = SyntheticScene::new(160, 120, 2, 5, None);
        // 20 s of video.
        let frames = (20 * num / den) as u64;
        for i in 0..frames {
            let pts = (i as i64 * 1_000_000 * den + num / 2) / num;
            let mut f = blank_frame(&pool, &stream, i, pts);
            f.duration_us = 1_000_000 * den / num;
            scene.render(&mut f);
            rec.push(&mut f).expect("push");
        }
        rec.finish().expect("finish");
        let segs = list_with_suffix(&dir.path().join("ntsc"), ".mp4");
        let counts: Vec<usize> = segs.iter().map(|s| decode_all(s).pts_us.len()).collect();
        let per_segment = 4.0 * num as f64 / den as f64;
        assert_eq!(counts.len(), 5, "{num}/{den}: {counts:?}");
        assert_eq!(
            counts.iter().sum::<usize>() as u64,
            frames,
            "{num}/{den}: {counts:?}"
        );
        for c in &counts {
            assert!(
                (*c as f64 - per_segment).abs() <= 1.0,
                "{num}/{den}: segment of {c} frames, expected about {per_segment:.1}: {counts:?}"
            );
        }
    }
}

/// Records `pts_us` (one frame each) into a recorder with 60 s segments; returns each
/// segment's decoded timestamps, oldest first.
fn record_with_pts(pts_us: &[i64]) -> Vec<Vec<i64>> {
    let dir = tmpdir();
    let stream = StreamId::new("cam");
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.path().to_path_buf(),
            stream: stream.clone(),
            segment: Duration::from_secs(60),
            encoder: encoder(500, 30),
        },
        DiskBudget::open(dir.path(), u64::MAX).expect("budget"),
    );
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 64, 48), 2);
    let mut scene = SyntheticScene::new(64, 48, 1, 5, None);
    for (i, &pts) in pts_us.iter().enumerate() {
        let mut f = blank_frame(&pool, &stream, i as u64, pts);
        scene.render(&mut f);
        rec.push(&mut f).expect("push");
    }
    rec.finish().expect("finish");
    assert_eq!(rec.stats().frames, pts_us.len() as u64);
    list_with_suffix(&dir.path().join("cam"), ".mp4")
        .iter()
        .map(|s| decode_all(s).pts_us)
        .collect()
}

#[test]
fn a_jump_back_over_a_second_starts_a_new_segment_and_a_small_one_is_smoothed() {
    let frame = 33_333;
    // 2 s of video, then the camera restarts its clock at 0: a discontinuity, new segment.
    let restart: Vec<i64> = (0..60).chain(0..30).map(|i| i * frame).collect();
    let segs = record_with_pts(&restart);
    assert_eq!(segs.iter().map(Vec::len).collect::<Vec<_>>(), [60, 30]);
    // 2 s of video, then a step back of half a second: same segment, timestamps kept
    // strictly increasing so that no frame is dropped by the encoder or the muxer.
    let step: Vec<i64> = (0..60)
        .map(|i| i * frame)
        .chain((0..30).map(|i| 1_500_000 + i * frame))
        .collect();
    let segs = record_with_pts(&step);
    assert_eq!(segs.len(), 1, "{segs:?}");
    assert_eq!(segs[0].len(), 90);
    assert!(segs[0].windows(2).all(|p| p[1] > p[0]), "{:?}", segs[0]);
}
