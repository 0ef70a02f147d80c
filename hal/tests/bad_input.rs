//! Damaged and bogus input files: never a panic; open errors name the file; sources that
//! open return what they can, end cleanly and count the damage.

mod common;

use std::path::{Path, PathBuf};

use aegis_hal::source::{FileSource, SourceStats};
use common::*;

const W: usize = 320;
const H: usize = 240;
const N: usize = 90;
const GOP: u32 = 10;

/// A 90-frame progressive clip with GOP 10, written once per test into `dir`.
fn clip(dir: &Path) -> PathBuf {
    let p = dir.join("clip.mp4");
    write_clip(&p, W, H, N, &encoder(2000, GOP));
    p
}

/// Outcome of opening and draining a (possibly damaged) file.
enum Outcome {
    OpenError(String),
    /// Opened, then `next_frame` returned `Err` (after `frames` frames).
    FrameError {
        frames: usize,
        msg: String,
    },
    Decoded {
        frames: usize,
        stats: SourceStats,
        lumas: Vec<Vec<u8>>,
    },
}

/// Opens and drains `path`, turning panics into test failures with context.
fn run(path: &Path) -> Outcome {
    let p = path.to_path_buf();
    let r = std::panic::catch_unwind(move || match FileSource::open(source_settings(&p)) {
        Err(e) => Outcome::OpenError(e.to_string()),
        Ok(mut src) => {
            // Count frames separately so an Err can report how far it got.
            let mut frames = 0;
            loop {
                match src.next_frame() {
                    Ok(Some(_)) => frames += 1,
                    Ok(None) => break,
                    Err(e) => {
                        return Outcome::FrameError {
                            frames,
                            msg: e.to_string(),
                        };
                    }
                }
                assert!(frames < 100_000, "source never ends");
            }
            // Decode again, keeping the pixels (deterministic: same file, same decoder).
            let src = FileSource::open(source_settings(&p)).expect("reopen");
            let d = drain(src).unwrap_or_else(|e| panic!("second pass returned Err: {e}"));
            assert_eq!(
                d.pts_us.len(),
                frames,
                "two passes over the same file differ"
            );
            for s in &d.sizes {
                assert_eq!(*s, (W, H), "frame geometry changed on damaged input");
            }
            Outcome::Decoded {
                frames: d.pts_us.len(),
                stats: d.stats,
                lumas: d.lumas,
            }
        }
    });
    match r {
        Ok(o) => o,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{} caused a panic: {msg}", path.display())
        }
    }
}

fn expect_open_error(path: &Path) -> String {
    match run(path) {
        Outcome::OpenError(msg) => {
            assert!(
                msg.contains(&path.display().to_string()),
                "open error does not name the file {}: {msg}",
                path.display()
            );
            msg
        }
        Outcome::FrameError { frames, msg } => {
            panic!(
                "{} opened, gave {frames} frames, then Err: {msg}",
                path.display()
            )
        }
        Outcome::Decoded { frames, stats, .. } => {
            panic!(
                "{} opened and gave {frames} frames ({stats:?})",
                path.display()
            )
        }
    }
}

/// A damaged but real video file: it must open and decode to a clean end.
fn expect_decoded(path: &Path) -> (usize, SourceStats, Vec<Vec<u8>>) {
    match run(path) {
        Outcome::Decoded {
            frames,
            stats,
            lumas,
        } => (frames, stats, lumas),
        Outcome::OpenError(msg) => panic!("{} must open: {msg}", path.display()),
        Outcome::FrameError { frames, msg } => panic!(
            "{}: damage must be counted, not returned: Err after {frames} frames: {msg}",
            path.display()
        ),
    }
}

/// For inputs that are not video at all: an open error naming the file, or (when libavformat
/// probes them as some exotic format) an error naming the file on the first frame, or no
/// frames. Never a panic, never pictures.
fn expect_rejected(path: &Path) {
    let name = path.display().to_string();
    match run(path) {
        Outcome::OpenError(msg) => assert!(msg.contains(&name), "{msg}"),
        Outcome::FrameError { frames, msg } => {
            eprintln!("{name}: opened, then {msg}");
            assert!(msg.contains(&name), "{msg}");
            assert_eq!(frames, 0, "{name}: {frames} frames before the error");
        }
        Outcome::Decoded { frames, stats, .. } => {
            eprintln!("{name}: opened, {frames} frames, {stats:?}");
            assert_eq!(frames, 0, "{name}: garbage decoded into pictures");
        }
    }
}

fn damage_seen(s: &SourceStats) -> bool {
    s.read_errors > 0
        || s.truncated
        || s.decode.errors > 0
        || s.decode.corrupt_frames > 0
        || s.decode.skipped_before_keyframe > 0
}

#[test]
fn truncated_mp4() {
    let dir = tmpdir();
    let full = std::fs::read(clip(dir.path())).unwrap();
    for (pct, min_frames) in [(50, 20), (10, 0)] {
        let p = dir.path().join(format!("cut{pct}.mp4"));
        std::fs::write(&p, &full[..full.len() * pct / 100]).unwrap();
        // The moov atom is at the front (faststart), so the cut clip must open.
        let (frames, stats, _) = expect_decoded(&p);
        eprintln!("cut at {pct}%: {frames} frames, {stats:?}");
        assert!(
            frames < N,
            "{pct}%: a truncated clip cannot give all {N} frames"
        );
        assert!(frames >= min_frames, "{pct}%: only {frames} frames");
        assert!(
            stats.truncated,
            "{pct}%: truncation not reported: {stats:?}"
        );
    }
}

#[test]
fn corrupted_middle_resyncs_at_next_keyframe() {
    let dir = tmpdir();
    let path = clip(dir.path());
    let clean = decode_all(&path);
    assert_eq!(clean.pts_us.len(), N);
    let full = std::fs::read(&path).unwrap();
    for (name, fill) in [("ff", None), ("rand", Some(99u64))] {
        let mut bad = full.clone();
        let mid = bad.len() / 2;
        let len = 4096.min(bad.len() / 8);
        match fill {
            None => bad[mid..mid + len].fill(0xFF),
            Some(seed) => bad[mid..mid + len].copy_from_slice(&pseudo_random(len, seed)),
        }
        let p = dir.path().join(format!("corrupt-{name}.mp4"));
        std::fs::write(&p, &bad).unwrap();
        let (frames, stats, lumas) = expect_decoded(&p);
        // Frames before the damage decode identically; find the first damaged one.
        let first_bad = (0..frames.min(N))
            .find(|&i| psnr(&clean.lumas[i], &lumas[i]) < 50.0)
            .unwrap_or(frames);
        eprintln!("{name}: {frames} frames, first damaged {first_bad}, {stats:?}");
        assert!(first_bad < N, "{name}: damage not visible at all?");
        assert!(
            frames > first_bad + GOP as usize,
            "{name}: decoding must go on past the damage (resync at the next keyframe): \
             {frames} frames, damage at {first_bad}"
        );
        assert!(damage_seen(&stats), "{name}: damage not counted: {stats:?}");
        // After resync (next GOP boundary + one GOP of margin), pictures are clean again.
        let resynced = (first_bad / GOP as usize + 2) * GOP as usize;
        if resynced < frames.min(N) {
            let p = psnr(&clean.lumas[resynced], &lumas[resynced]);
            // The output may have dropped frames; compare with the same pts via the tail.
            let tail = psnr(&clean.lumas[N - 1], &lumas[frames - 1]);
            assert!(
                p > 50.0 || tail > 50.0,
                "{name}: not resynced (psnr {p:.1}, tail {tail:.1})"
            );
        }
    }
}

#[test]
fn random_bytes_empty_and_missing_files() {
    let dir = tmpdir();
    let random = dir.path().join("random.mp4");
    std::fs::write(&random, pseudo_random(256 * 1024, 7)).unwrap();
    expect_rejected(&random);

    let empty = dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let msg = expect_open_error(&empty);
    eprintln!("empty: {msg}");

    let missing = dir.path().join("does-not-exist.mp4");
    let msg = expect_open_error(&missing);
    eprintln!("missing: {msg}");

    let directory = dir.path().join("a-directory.mp4");
    std::fs::create_dir(&directory).unwrap();
    expect_open_error(&directory);

    let text = dir.path().join("notes.txt");
    // libavformat probes plain text as the `tty` (ANSI art) format; it is refused as not video.
    std::fs::write(&text, "this is not a video\n".repeat(100)).unwrap();
    expect_rejected(&text);
}

#[test]
fn annexb_with_garbage_spliced_in() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = tmpdir();
    let mp4 = clip(dir.path());
    let h264 = dir.path().join("clip.h264");
    to_annexb(&mp4, &h264);
    let clean = decode_all(&h264);
    assert_eq!(clean.pts_us.len(), N, "clean Annex-B stream");
    // Raw H.264 carries no timestamps; the source derives them from the frame rate.
    for (i, p) in clean.pts_us.iter().enumerate() {
        assert!(
            (p - i as i64 * 33_333).abs() <= 50,
            "raw H.264 frame {i} at pts {p}"
        );
    }

    let raw = std::fs::read(&h264).unwrap();
    let mid = raw.len() / 2;
    for (name, junk) in [
        ("rand", pseudo_random(8192, 3)),
        ("ff", vec![0xFF; 8192]),
        // Fake start codes followed by junk NAL headers.
        (
            "startcodes",
            [0u8, 0, 0, 1, 0x65, 0x88, 0x84, 0x00].repeat(512),
        ),
    ] {
        let mut bad = raw[..mid].to_vec();
        bad.extend_from_slice(&junk);
        bad.extend_from_slice(&raw[mid..]);
        let p = dir.path().join(format!("spliced-{name}.h264"));
        std::fs::write(&p, &bad).unwrap();
        let (frames, stats, lumas) = expect_decoded(&p);
        eprintln!("annexb {name}: {frames} frames, {stats:?}");
        assert!(
            frames >= N - GOP as usize,
            "{name}: decoding stopped at the garbage ({frames} frames)"
        );
        assert!(
            frames <= N + 2,
            "{name}: garbage turned into many pictures ({frames})"
        );
        // Frames before the splice are untouched and the decoder recovers by the next GOP:
        // the last frame is clean again.
        assert!(
            psnr(&clean.lumas[0], &lumas[0]) > 50.0,
            "{name}: first frame damaged"
        );
        let tail = psnr(&clean.lumas[N - 1], &lumas[frames - 1]);
        assert!(
            tail > 50.0,
            "{name}: last frame still damaged ({tail:.1} dB)"
        );
        if name == "startcodes" {
            assert!(
                stats.decode.errors > 0,
                "{name}: junk NAL units not counted: {stats:?}"
            );
        }
    }

    // Truncated Annex-B: cut in the middle of a NAL.
    let p = dir.path().join("cut.h264");
    std::fs::write(&p, &raw[..raw.len() * 6 / 10 + 7]).unwrap();
    let (frames, stats, _) = expect_decoded(&p);
    eprintln!("annexb cut: {frames} frames, {stats:?}");
    assert!(frames > N / 3 && frames < N);
}

/// A "video file" that is a playlist or concat list pointing at the network must not make
/// the agent connect anywhere (the source policy only saw a file path). libavformat's
/// nested protocols inherit the parent's whitelist (`file,crypto,data` for a file), and the
/// file source sets `protocol_whitelist=file` itself so this holds whatever the library's
/// defaults are.
#[test]
fn files_that_point_at_the_network_are_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let playlist = dir.path().join("cam.m3u8");
    std::fs::write(
        &playlist,
        format!(
            "#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\nhttp://127.0.0.1:{port}/seg0.ts\n#EXT-X-ENDLIST\n"
        ),
    )
    .unwrap();
    let concat = dir.path().join("list.txt");
    std::fs::write(
        &concat,
        format!("ffconcat version 1.0\nfile 'http://127.0.0.1:{port}/x.mp4'\n"),
    )
    .unwrap();
    for p in [&playlist, &concat] {
        match run(p) {
            Outcome::OpenError(_) => {}
            Outcome::FrameError { .. } => {}
            Outcome::Decoded { frames, .. } => assert_eq!(frames, 0, "{}", p.display()),
        }
    }
    // run() has returned: a connection it made finished its handshake before its connect()
    // returned, so it would be in the listener's queue now.
    assert!(
        listener.accept().is_err(),
        "a file source connected to the network"
    );
}

#[test]
fn a_frame_wider_than_the_limit_is_refused_before_any_pool_is_allocated() {
    // A real H.264 stream 8208 pixels wide (16 high, so it stays small): one side over
    // MAX_FRAME_SIDE is refused at open, naming the file and the size, before a surface pool
    // of that size exists. One pixel row under the limit opens.
    let dir = tmpdir();
    let wide = dir.path().join("wide.mp4");
    write_clip(&wide, 8208, 16, 2, &encoder(200, 2));
    let msg = expect_open_error(&wide);
    assert!(
        msg.contains("frame size 8208x16 exceeds the 8192x8192 limit"),
        "{msg}"
    );
    let ok = dir.path().join("at-limit.mp4");
    write_clip(&ok, 8192, 16, 2, &encoder(200, 2));
    let mut src = FileSource::open(source_settings(&ok)).expect("8192 wide opens");
    let mut widths = Vec::new();
    while let Some(f) = src.next_frame().expect("decodes") {
        widths.push(f.layout.width);
    }
    assert_eq!(widths, [8192, 8192]);
}
