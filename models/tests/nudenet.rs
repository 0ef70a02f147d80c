//! The real NudeNet model through ONNX Runtime on a real photo (scikit-image's `astronaut`,
//! fetched by `tools/fetch-media.sh`; model and runtime by `tools/fetch-models.sh`).

use std::path::PathBuf;

use aegis_hal::frame::FrameLayout;
use aegis_hal::pixel::{Matrix, Plane, rgb24_to_i420};
use aegis_hal::{Frame, PixelFormat, StreamId, SurfacePool};
use aegis_models::engine::OrtSession;
use aegis_models::nudenet::{CLASSES, NudeNet};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn models_dir() -> PathBuf {
    std::env::var_os("AEGIS_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".models"))
}

/// The photo as an I420 frame (BT.601 limited range, as a camera would send it).
fn photo_frame(pool: &SurfacePool, img: &aegis_hal::synth::RgbImage) -> Frame {
    let mut f = Frame::from_pool(pool, StreamId::new("photo"), 0, 0, 0).unwrap();
    let (w, h) = (img.width, img.height);
    let [y, u, v] = f.planes_mut();
    rgb24_to_i420(
        Plane {
            data: &img.data,
            stride: w * 3,
        },
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

#[test]
fn finds_the_astronauts_face() {
    let (lib, model) = (
        models_dir().join("libonnxruntime.so.1.32.0"),
        models_dir().join("nudenet-320n.onnx"),
    );
    let photo = repo().join(".samples/astronaut.png");
    if !(lib.exists() && model.exists() && photo.exists()) {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must fetch models and media (just models)"
        );
        eprintln!("skipping: run `just models` and tools/fetch-media.sh");
        return;
    }
    let img = aegis_hal::synth::load_png(&photo).unwrap();
    let pool = SurfacePool::new(
        FrameLayout::new(PixelFormat::I420, img.width, img.height),
        1,
    );
    let frame = photo_frame(&pool, &img);
    // A missing model is named (the runtime itself loads fine).
    let missing = models_dir().join("no-such-model.onnx");
    let e = OrtSession::open(&lib, &missing, 1)
        .err()
        .expect("missing model must fail");
    assert!(e.to_string().contains("no-such-model.onnx"), "{e}");
    let mut det = NudeNet::new(Box::new(OrtSession::open(&lib, &model, 1).unwrap()));
    let found = det.detect(&frame).unwrap().to_vec();
    for d in &found {
        eprintln!("{} {:.3} {:?}", CLASSES[d.class as usize], d.score, d.bbox);
    }
    // Eileen Collins' face is in the upper middle of the 512x512 photo.
    let face = found
        .iter()
        .find(|d| CLASSES[d.class as usize] == "FACE_FEMALE")
        .expect("a FACE_FEMALE detection");
    assert!(face.score > 0.5, "{face:?}");
    let (cx, cy) = (
        face.bbox.x + face.bbox.w / 2.0,
        face.bbox.y + face.bbox.h / 2.0,
    );
    assert!(
        (150.0..350.0).contains(&cx) && (30.0..220.0).contains(&cy),
        "{face:?}"
    );
    // Nothing exposed in a spacesuit portrait.
    assert!(
        found
            .iter()
            .all(|d| !CLASSES[d.class as usize].ends_with("_EXPOSED") || d.score < 0.5)
    );
}
