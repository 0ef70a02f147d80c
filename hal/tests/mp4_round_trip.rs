//! ClipWriter → MP4 → FileSource round trip, checked against the rendered pixels and ffprobe.

mod common;

use common::*;

const N: usize = 90;
const W: usize = 320;
const H: usize = 240;

#[test]
fn mp4_round_trip() {
    let dir = tmpdir();
    let path = dir.path().join("clip.mp4");
    let originals = write_clip(&path, W, H, N, &encoder(4000, 30));
    assert!(
        !dir.path().join("clip.mp4.part").exists(),
        "the .part file must be renamed when the clip is finished"
    );

    let src = aegis_hal::source::FileSource::open(source_settings(&path)).expect("open clip");
    let info = src.info().clone();
    assert_eq!(info.codec, "h264");
    assert_eq!((info.width, info.height), (W, H));
    assert!((info.frame_duration_us() - 33_333).abs() <= 2, "{info:?}");
    assert_eq!(info.frames, Some(N as u64), "{info:?}");
    let d = drain(src).expect("decode clip");

    // Frame count, geometry, timestamps.
    assert_eq!(d.pts_us.len(), N, "decoded frame count");
    assert!(d.sizes.iter().all(|&s| s == (W, H)), "{:?}", d.sizes);
    assert_eq!(d.pts_us[0], 0, "first pts");
    for (i, pair) in d.pts_us.windows(2).enumerate() {
        let step = pair[1] - pair[0];
        assert!(
            (33_300..=33_367).contains(&step),
            "pts step {i}->{}: {} -> {} ({step} µs), expected ~33 333",
            i + 1,
            pair[0],
            pair[1]
        );
    }
    let last = *d.pts_us.last().unwrap();
    assert!(
        (last - (N as i64 - 1) * 33_333).abs() <= 100,
        "last pts {last}"
    );
    assert!(d.keyframes[0], "first frame must be a keyframe");
    assert_eq!(d.stats.frames, N as u64);
    assert_eq!(d.stats.decode.frames, N as u64);
    assert_eq!(d.stats.read_errors, 0);
    assert_eq!(d.stats.decode.errors, 0);
    assert_eq!(d.stats.decode.corrupt_frames, 0);
    assert!(!d.stats.truncated);

    // Pixel fidelity, frame by frame (a reordering or off-by-one would wreck the PSNR).
    let mut worst = f64::INFINITY;
    for (i, (orig, dec)) in originals.iter().zip(&d.lumas).enumerate() {
        let p = psnr(orig, dec);
        assert!(p > 30.0, "frame {i}: Y PSNR {p:.2} dB <= 30 dB");
        worst = worst.min(p);
    }
    // Not bit-exact: the decoder really decoded a lossy stream (guards against comparing a
    // buffer with itself).
    assert!(
        worst.is_finite(),
        "decoded frames are bit-identical to the originals?"
    );
    // And the frames are matched to the right originals: frame 10 is much closer to original
    // 10 than to original 40 (the camera pans and the objects move).
    assert!(psnr(&originals[10], &d.lumas[10]) > psnr(&originals[40], &d.lumas[10]) + 3.0);
    eprintln!("worst Y PSNR over {N} frames: {worst:.2} dB");

    // ffprobe agrees.
    if require_tool("ffprobe") {
        let (codec, w, h, n, p) = probe_stream(&path);
        assert_eq!(codec, "h264", "{}", p.stdout);
        assert_eq!((w, h), (W, H), "{}", p.stdout);
        assert_eq!(n, N as u64, "{}", p.stdout);
        assert!(
            p.stderr.trim().is_empty(),
            "ffprobe complained: {}",
            p.stderr
        );
        let types = probe_frame_types(&path);
        assert_eq!(types.len(), N);
        assert!(
            types.iter().all(|(t, _)| t != "B"),
            "encoder is configured without B-frames"
        );
        assert!(types[0].1, "first frame must be a keyframe");
    }
}
