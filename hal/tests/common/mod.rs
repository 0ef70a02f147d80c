//! Helpers shared by the HAL integration tests: synthetic clips, decoding, PSNR and ffprobe.
#![allow(dead_code, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aegis_hal::codec::EncoderSettings;
use aegis_hal::record::ClipWriter;
use aegis_hal::source::{FileSource, FileSourceSettings, SourceStats};
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};

/// Nominal frame duration at 30 fps, as the tests stamp it.
pub const FRAME_US: i64 = 33_333;

/// A frame of `pool` with the given sequence number and timestamp (pixels untouched).
pub fn blank_frame(pool: &SurfacePool, stream: &StreamId, seq: u64, pts_us: i64) -> Frame {
    Frame::from_pool(pool, stream.clone(), seq, pts_us, FRAME_US).expect("pool open")
}

/// Tightly packed copy of a frame's visible Y plane.
pub fn luma(frame: &Frame) -> Vec<u8> {
    let [y, _, _] = frame.planes();
    let (w, h) = (frame.layout.width, frame.layout.height);
    let mut out = Vec::with_capacity(w * h);
    for r in 0..h {
        out.extend_from_slice(&y.data[r * y.stride..r * y.stride + w]);
    }
    out
}

/// PSNR in dB of two equally sized 8-bit planes (infinite when identical).
pub fn psnr(a: &[u8], b: &[u8]) -> f64 {
    assert_eq!(a.len(), b.len(), "planes differ in size");
    assert!(!a.is_empty());
    let sse: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| {
            let d = x as f64 - y as f64;
            d * d
        })
        .sum();
    let mse = sse / a.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// Encoder settings for small, quick test clips.
pub fn encoder(bitrate_kbps: u32, gop_frames: u32) -> EncoderSettings {
    EncoderSettings {
        preset: "ultrafast".into(),
        bitrate_kbps,
        gop_frames,
        threads: 1,
        frame_rate: (30, 1),
        low_latency: false,
        profile: None,
    }
}

/// Renders `n` frames of a 3-object synthetic scene into a progressive MP4 at `path`
/// (pts = i * 33 333 µs) and returns the Y plane of every rendered frame.
pub fn write_clip(
    path: &Path,
    w: usize,
    h: usize,
    n: usize,
    settings: &EncoderSettings,
) -> Vec<Vec<u8>> {
    let layout = FrameLayout::new(PixelFormat::I420, w, h);
    let pool = SurfacePool::new(layout, 2);
    let stream = StreamId::new("synth");
    let mut scene = SyntheticScene::new(w, h, 3, 7, None);
    let mut writer = ClipWriter::create(path, settings, layout).expect("create clip");
    let mut lumas = Vec::with_capacity(n);
    for i in 0..n {
        let mut f = blank_frame(&pool, &stream, i as u64, i as i64 * FRAME_US);
        scene.render(&mut f);
        lumas.push(luma(&f));
        writer.push(&mut f).expect("encode frame");
    }
    let bytes = writer.finish().expect("finish clip");
    assert!(bytes > 0);
    assert_eq!(std::fs::metadata(path).unwrap().len(), bytes);
    lumas
}

pub fn source_settings(path: &Path) -> FileSourceSettings {
    FileSourceSettings::new(path, StreamId::new("file"))
}

/// What decoding a file produced.
#[derive(Debug)]
pub struct Decoded {
    pub pts_us: Vec<i64>,
    pub sizes: Vec<(usize, usize)>,
    pub lumas: Vec<Vec<u8>>,
    pub keyframes: Vec<bool>,
    pub stats: SourceStats,
}

/// Decodes the whole file with [`FileSource`]; panics on any error (the file must be sound).
pub fn decode_all(path: &Path) -> Decoded {
    let src = FileSource::open(source_settings(path))
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    drain(src).unwrap_or_else(|e| panic!("decode {}: {e}", path.display()))
}

/// Pulls every frame out of an opened source until `Ok(None)` (with a generous cap so a
/// looping bug cannot hang the test).
pub fn drain(mut src: FileSource) -> Result<Decoded, aegis_hal::source::SourceError> {
    let mut d = Decoded {
        pts_us: Vec::new(),
        sizes: Vec::new(),
        lumas: Vec::new(),
        keyframes: Vec::new(),
        stats: SourceStats::default(),
    };
    let mut seq = 0;
    while let Some(f) = src.next_frame()? {
        assert_eq!(f.seq, seq, "frame sequence numbers must have no gaps");
        seq += 1;
        assert!(seq < 100_000, "source never ended");
        d.pts_us.push(f.pts_us);
        d.sizes.push((f.layout.width, f.layout.height));
        d.lumas.push(luma(&f));
        d.keyframes.push(f.meta.keyframe);
    }
    // A clean end stays an end.
    assert!(
        src.next_frame()?.is_none(),
        "source produced frames after Ok(None)"
    );
    d.stats = src.stats();
    Ok(d)
}

// ---- external tools -------------------------------------------------------------------

fn tool_present(name: &str) -> bool {
    Command::new(name)
        .arg("-version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `true` when `name` (ffprobe / ffmpeg) can run. When it cannot: fails the test if env `CI`
/// is set (CI installs ffmpeg), else prints "skipping: NAME not found" and returns `false`.
pub fn require_tool(name: &str) -> bool {
    if tool_present(name) {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{name} not found on PATH, but CI is set: CI must install ffmpeg (ffmpeg + ffprobe)"
        );
    }
    record_skip(&format!("{name} not found"));
    false
}

/// Output of one ffprobe run.
pub struct Probe {
    pub stdout: String,
    pub stderr: String,
    pub ok: bool,
}

pub fn ffprobe(args: &[&str], path: &Path) -> Probe {
    let out = Command::new("ffprobe")
        .args(args)
        .arg(path)
        .output()
        .expect("run ffprobe");
    Probe {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        ok: out.status.success(),
    }
}

/// `codec_name, width, height, nb_read_frames` of the first video stream, decoding every frame.
pub fn probe_stream(path: &Path) -> (String, usize, usize, u64, Probe) {
    let p = ffprobe(
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-count_frames",
            "-show_entries",
            "stream=codec_name,width,height,nb_read_frames",
            "-of",
            "json",
        ],
        path,
    );
    assert!(p.ok, "ffprobe failed on {}: {}", path.display(), p.stderr);
    let codec = json_field(&p.stdout, "codec_name").unwrap_or_default();
    let num = |k| {
        json_field(&p.stdout, k)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("ffprobe output has no numeric {k}: {}", p.stdout))
    };
    let (w, h, n) = (num("width"), num("height"), num("nb_read_frames"));
    (codec, w as usize, h as usize, n, p)
}

/// Duration in seconds of the file's video stream as ffprobe reports it (format duration).
pub fn probe_duration(path: &Path) -> f64 {
    let p = ffprobe(
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "json",
        ],
        path,
    );
    assert!(p.ok, "ffprobe failed on {}: {}", path.display(), p.stderr);
    json_field(&p.stdout, "duration")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration in {}", p.stdout))
}

/// Picture types (`I`, `P`, `B`) of every frame, in order, and which were keyframes.
pub fn probe_frame_types(path: &Path) -> Vec<(String, bool)> {
    let p = ffprobe(
        &[
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=pict_type,key_frame",
            "-of",
            "csv=p=0",
        ],
        path,
    );
    assert!(p.ok, "ffprobe failed on {}: {}", path.display(), p.stderr);
    p.stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split(',');
            let key = it.next().unwrap_or("") == "1";
            let t = it.next().unwrap_or("").trim().to_string();
            (t, key)
        })
        .collect()
}

/// The first value of `"key": value` in a flat JSON document (enough for ffprobe's output;
/// avoids a JSON dependency for the HAL's tests). Strings are returned without quotes.
pub fn json_field(json: &str, key: &str) -> Option<String> {
    let pat = format!("\"{key}\"");
    let at = json.find(&pat)? + pat.len();
    let rest = json[at..].trim_start().strip_prefix(':')?.trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        Some(s[..s.find('"')?].to_string())
    } else {
        let end = rest.find([',', '}', '\n']).unwrap_or(rest.len());
        Some(rest[..end].trim().to_string())
    }
}

/// Runs ffmpeg with `args` (quiet), panicking with its stderr on failure.
pub fn ffmpeg(args: &[&str]) {
    let out = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .output()
        .expect("run ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rewraps an MP4's H.264 as a raw Annex-B `.h264` file (no re-encode).
pub fn to_annexb(mp4: &Path, out: &Path) {
    ffmpeg(&[
        "-i",
        mp4.to_str().expect("utf-8 path"),
        "-c",
        "copy",
        "-bsf:v",
        "h264_mp4toannexb",
        "-f",
        "h264",
        out.to_str().expect("utf-8 path"),
    ]);
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.max(1);
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// Runs `f` on a helper thread and fails (instead of hanging the suite) if it has not finished
/// within `limit`. This is a hang guard, not a performance assertion: `limit` is minutes.
pub fn with_hang_guard<T: Send + 'static>(
    what: &str,
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(v) => {
            let _ = h.join();
            v
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => match h.join() {
            Err(p) => std::panic::resume_unwind(p),
            Ok(()) => unreachable!(),
        },
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{what} did not finish (hang)"),
    }
}

pub fn tmpdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

pub fn list_with_suffix(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.to_string_lossy().ends_with(suffix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Says loudly that the running test skips for `why`, and records it for `just test`'s
/// summary: one line `<test binary> <test>: <why>` appended, in one write to a file opened
/// for appending (parallel test processes do not interleave), to the file `$AEGIS_SKIP_LOG`
/// names when set. The same as `aegis_tests::record_skip` (this crate cannot depend on it).
pub fn record_skip(why: &str) {
    use std::io::Write;
    let bin = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let bin = bin.rsplit_once('-').map_or(bin.as_str(), |(b, _)| b);
    let line = format!(
        "{bin} {}: {why}",
        std::thread::current().name().unwrap_or("?")
    );
    eprintln!("SKIPPED {line}");
    if let Some(log) = std::env::var_os("AEGIS_SKIP_LOG") {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!("cannot record the skip in {}: {e}", log.to_string_lossy());
        }
    }
}
