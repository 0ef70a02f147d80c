//! Reference equivalence: our engine, pre- and post-processing against the models' own Python
//! runtimes, run here by `tools/models/reference.sh` in a venv it creates (MediaPipe 0.10.14
//! for the selfie segmenter, the nudenet 3.4.2 package for NudeNet) on six real photos.
//!
//! * The converted selfie ONNX on the exact 256×256 input MediaPipe got: max |Δmask| ≤ 1e-3.
//! * Full-size photos through our own path (I420 frame → corner-aligned stretch → model):
//!   thresholded masks agree with MediaPipe's full-size masks (IoU ≥ 0.95 where over a tenth
//!   of the picture is person, mean |Δ| ≤ 0.05 everywhere).
//! * NudeNet through our frame path: the same classes, IoU ≥ 0.9, scores within ±0.02.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use aegis_hal::frame::FrameLayout;
use aegis_hal::image::load_png;
use aegis_hal::{PixelFormat, SurfacePool};
use aegis_models::engine::{InferenceEngine, OrtSession};
use aegis_models::preprocess::{ChannelOrder, Fit, InputSpec, planar};
use aegis_models::registry::{BatchSettings, ModelKind, ModelSpec};
use aegis_models::stages::detector::Detector;
use common::{frame_of, models_dir, ort_library, record_skip, repo};

/// Runs the Python references once per test binary; `None` (skip) only outside CI.
fn reference() -> Option<&'static Path> {
    // The run's outcome, kept; each test that cannot use it records its own skip.
    static OUT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("model-reference");
        let status = Command::new("bash")
            .arg(repo().join("tools/models/reference.sh"))
            .arg(&out)
            .current_dir(repo())
            .status();
        match status {
            Ok(s) if s.success() => Ok(out),
            other => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must run the Python references: {other:?}"
                );
                Err(format!("tools/models/reference.sh failed ({other:?})"))
            }
        }
    });
    match out {
        Ok(out) => Some(out.as_path()),
        Err(why) => {
            record_skip(why);
            None
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn session(model: &str) -> OrtSession {
    OrtSession::open(&ort_library(), &models_dir().join(model), 1).unwrap()
}

fn stems(out: &Path) -> Vec<(String, PathBuf, usize, usize)> {
    json(&out.join("seg.json"))["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["stem"].as_str().unwrap().to_string(),
                repo().join(i["photo"].as_str().unwrap()),
                i["width"].as_u64().unwrap() as usize,
                i["height"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

#[test]
fn selfie_onnx_matches_mediapipe_on_the_same_input() {
    let Some(out) = reference() else { return };
    let mut seg = session("selfie_segmentation.onnx");
    let images = stems(out);
    assert!(images.len() >= 5, "need at least 5 photos: {images:?}");
    let mut mask = Vec::new();
    for (stem, ..) in &images {
        let img = load_png(&out.join(format!("{stem}.256.png"))).unwrap();
        assert_eq!((img.width, img.height), (256, 256));
        // NCHW RGB in [0, 1]: exactly what MediaPipe fed its interpreter.
        let mut input = vec![0.0f32; 3 * 256 * 256];
        for (i, px) in img.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                input[c * 256 * 256 + i] = f32::from(px[c]) / 255.0;
            }
        }
        let shape = seg.run(&input, &[1, 3, 256, 256], &mut mask).unwrap();
        assert_eq!(shape, [1, 1, 256, 256]);
        let want = read_f32(&out.join(format!("{stem}.mask.f32")));
        let max = mask
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        eprintln!("{stem}: max |mask - mediapipe| = {max:.2e}");
        assert!(max <= 1e-3, "{stem}: {max}");
    }
}

#[test]
fn selfie_full_size_through_our_frame_path_agrees_with_mediapipe() {
    let Some(out) = reference() else { return };
    let mut seg = session("selfie_segmentation.onnx");
    let spec = InputSpec {
        width: 256,
        height: 256,
        order: ChannelOrder::Rgb,
        fit: Fit::Stretch,
    };
    let mut input = vec![0.0f32; 3 * 256 * 256];
    let mut mask = Vec::new();
    for (stem, photo, w, h) in stems(out) {
        let img = load_png(&photo).unwrap();
        let (fw, fh) = (w & !1, h & !1);
        let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, fw, fh), 1);
        let frame = frame_of(&pool, &img, 0);
        planar(&frame, spec, &mut input).unwrap();
        seg.run(&input, &[1, 3, 256, 256], &mut mask).unwrap();
        let want = read_f32(&out.join(format!("{stem}.full.f32")));
        assert_eq!(want.len(), w * h);
        // Our mask back to the photo, bilinear at half-pixel centres (as MediaPipe does).
        let at = |x: usize, y: usize| -> f32 {
            let sx = ((x as f32 + 0.5) * 256.0 / fw as f32 - 0.5).clamp(0.0, 255.0);
            let sy = ((y as f32 + 0.5) * 256.0 / fh as f32 - 0.5).clamp(0.0, 255.0);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(255), (y0 + 1).min(255));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let m = |x: usize, y: usize| mask[y * 256 + x];
            let top = m(x0, y0) + (m(x1, y0) - m(x0, y0)) * fx;
            let bottom = m(x0, y1) + (m(x1, y1) - m(x0, y1)) * fx;
            top + (bottom - top) * fy
        };
        let (mut inter, mut union, mut diff) = (0usize, 0usize, 0.0f64);
        for y in 0..fh {
            for x in 0..fw {
                let (ours, theirs) = (at(x, y), want[y * w + x]);
                diff += f64::from((ours - theirs).abs());
                let (a, b) = (ours > 0.5, theirs > 0.5);
                inter += usize::from(a && b);
                union += usize::from(a || b);
            }
        }
        let mean = diff / (fw * fh) as f64;
        let iou = if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        };
        eprintln!("{stem}: person IoU {iou:.3}, mean |Δ| {mean:.4} ({union} px in either mask)");
        assert!(mean <= 0.05, "{stem}: mean difference {mean}");
        // Where a real share of the picture is person (not a few uncertain blobs), the
        // masks must agree closely.
        if union > fw * fh / 10 {
            assert!(iou >= 0.95, "{stem}: IoU {iou}");
        }
    }
}

#[test]
fn nudenet_matches_the_python_package() {
    let Some(out) = reference() else { return };
    let settings = aegis_models::engine::EngineSettings::cpu(&ort_library(), 1);
    let spec = ModelSpec {
        name: "nudenet".into(),
        version: 1,
        kind: ModelKind::NudeNet,
        file: models_dir().join("nudenet-320n.onnx"),
        sha256: None,
        input_size: 320,
        labels: None,
    };
    let model = aegis_models::registry::load(&settings, &spec, BatchSettings::default()).unwrap();
    let mut det = Detector::new(&model);
    let reference = json(&out.join("nudenet.json"));
    let mut compared = 0;
    for image in reference["images"].as_array().unwrap() {
        let photo = repo().join(image["photo"].as_str().unwrap());
        let img = load_png(&photo).unwrap();
        let pool = SurfacePool::new(
            FrameLayout::new(PixelFormat::I420, img.width & !1, img.height & !1),
            1,
        );
        let frame = frame_of(&pool, &img, 0);
        let ours: Vec<_> = det.detect(&frame).unwrap().iter().map(|f| f.raw).collect();
        let theirs = image["detections"].as_array().unwrap();
        assert_eq!(
            ours.len(),
            theirs.len(),
            "{}: ours {ours:?} vs nudenet {theirs:?}",
            photo.display()
        );
        for t in theirs {
            let class = t["class"].as_str().unwrap();
            let score = t["score"].as_f64().unwrap();
            let b: Vec<f64> = t["box"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let tb = aegis_models::geometry::BoxXywh {
                x: b[0],
                y: b[1],
                w: b[2],
                h: b[3],
            };
            let m = ours
                .iter()
                .filter(|d| model.labels[d.class as usize] == class)
                .max_by(|a, b| a.bbox.iou(&tb).total_cmp(&b.bbox.iou(&tb)))
                .unwrap_or_else(|| panic!("{}: no {class} in ours", photo.display()));
            let iou = m.bbox.iou(&tb);
            eprintln!(
                "{}: {class} score {:.3} vs {score:.3}, IoU {iou:.3}",
                photo.display(),
                m.score
            );
            assert!(iou >= 0.9, "IoU {iou}");
            assert!(
                (f64::from(m.score) - score).abs() <= 0.02,
                "score {} vs {score}",
                m.score
            );
            compared += 1;
        }
    }
    assert!(compared >= 1, "the references found nothing to compare");
}
