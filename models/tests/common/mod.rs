//! What the model tests share: where the models and photos are, the CI rule (CI must have
//! fetched them; elsewhere a test without them is skipped, saying why), photos as frames.

#![allow(dead_code)]

use std::path::PathBuf;

use aegis_hal::image::RgbImage;
use aegis_hal::pixel::{Matrix, Plane, rgb24_to_i420};
use aegis_hal::{Frame, StreamId, SurfacePool};

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `$AEGIS_MODELS_DIR`, else `.models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("AEGIS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"))
}

/// The ONNX Runtime library `just models` fetched.
pub fn ort_library() -> PathBuf {
    models_dir().join("libonnxruntime.so.1.32.0")
}

/// True when `files` (relative to the repository) exist; in CI their absence fails the test.
pub fn have(files: &[PathBuf]) -> bool {
    if files.iter().all(|f| f.exists()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must fetch models and media (just models, tools/fetch-media.sh): {files:?}"
    );
    record_skip("models or photos missing: run `just models` and tools/fetch-media.sh");
    false
}

/// `img` (cropped to even size) as an I420 frame of `pool`, BT.601 limited range.
pub fn frame_of(pool: &SurfacePool, img: &RgbImage, seq: u64) -> Frame {
    let mut f = Frame::from_pool(pool, StreamId::new("photo"), seq, 0, 0).unwrap();
    let (w, h) = (img.width & !1, img.height & !1);
    let [y, u, v] = f.planes_mut();
    rgb24_to_i420(
        Plane::new(&img.data, img.width * 3),
        w,
        h,
        Matrix::Bt601,
        y,
        u,
        v,
    )
    .unwrap();
    f
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
