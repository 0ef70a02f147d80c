//! The three inference stages on a real photo (scikit-image's `astronaut`) with the real
//! models: the background is replaced where the mask says background and only there; a
//! moderation policy's verdicts become metadata and actions (blur, drop, alert) and hold
//! between analysed frames; the detector + tracker keeps one stable id on the face.

mod common;

use std::sync::Arc;

use aegis_hal::analytics::{ModerationAction, ObjectSource};
use aegis_hal::frame::FrameLayout;
use aegis_hal::image::{RgbImage, load_png};
use aegis_hal::stage::{Stage, StageOutcome};
use aegis_hal::{Frame, PixelFormat, SurfacePool};
use aegis_models::engine::EngineSettings;
use aegis_models::registry::{BatchSettings, LoadedModel, ModelKind, ModelSpec, load};
use aegis_models::stages::pixels::rgb_to_yuv;
use aegis_models::stages::{
    Background, BuildError, DetectSettings, DetectTrack, Moderation, ModerationSettings, Rule,
    VirtualBackground, VirtualBackgroundSettings,
};
use aegis_models::track::TrackerConfig;
use common::{frame_of, have, models_dir, ort_library, repo};

struct Fixture {
    photo: RgbImage,
    pool: SurfacePool,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let photo = repo().join(".samples/astronaut.png");
        if !have(&[photo.clone(), ort_library()]) {
            return None;
        }
        let photo = load_png(&photo).unwrap();
        let pool = SurfacePool::new(
            FrameLayout::new(PixelFormat::I420, photo.width, photo.height),
            4,
        );
        Some(Fixture { photo, pool })
    }

    fn frame(&self, seq: u64) -> Frame {
        frame_of(&self.pool, &self.photo, seq)
    }

    fn model(&self, kind: ModelKind, file: &str, size: usize) -> Arc<LoadedModel> {
        let settings = EngineSettings::cpu(&ort_library(), 1);
        let spec = ModelSpec {
            name: file.into(),
            version: 1,
            kind,
            file: models_dir().join(file),
            sha256: None,
            input_size: size,
            labels: None,
        };
        Arc::new(load(&settings, &spec, BatchSettings::default()).unwrap())
    }
}

fn luma(f: &Frame, x: usize, y: usize) -> u8 {
    let p = f.planes()[0];
    p.data[y * p.stride + x]
}

/// Luma variance over a box (blur lowers it).
fn variance(f: &Frame, b: [f32; 4]) -> f64 {
    let (mut n, mut s, mut s2) = (0.0, 0.0, 0.0);
    for y in b[1] as usize..b[3] as usize {
        for x in b[0] as usize..b[2] as usize {
            let v = f64::from(luma(f, x, y));
            n += 1.0;
            s += v;
            s2 += v * v;
        }
    }
    s2 / n - (s / n) * (s / n)
}

#[test]
fn virtual_background_replaces_the_background_only() {
    let Some(fx) = Fixture::new() else { return };
    let seg = fx.model(
        ModelKind::SelfieSegmentation,
        "selfie_segmentation.onnx",
        256,
    );
    let green = [0u8, 255, 0];
    let mut vb = VirtualBackground::new(
        &seg,
        VirtualBackgroundSettings {
            background: Background::Colour(green),
            smoothing: 0.6,
            feather: 0,
            threshold: 0.25,
        },
    );
    let original = fx.frame(0);
    let mut out = fx.frame(0);
    assert_eq!(vb.process(&mut out).unwrap(), StageOutcome::Keep);
    assert!(out.meta.background_replaced);
    let share = vb.person_fraction();
    assert!((0.3..0.8).contains(&share), "person share {share}");
    let (mask, s) = vb.mask();
    let (w, h) = (out.layout.width, out.layout.height);
    let gy = rgb_to_yuv(green)[0];
    let (mut bg_px, mut fg_px) = (0, 0);
    // Pixels whose whole 3x3 mask neighbourhood agrees are pure background or pure person.
    for my in 1..s - 1 {
        for mx in 1..s - 1 {
            let around: Vec<u8> = (0..9)
                .map(|k| mask[(my + k / 3 - 1) * s + mx + k % 3 - 1])
                .collect();
            let (x, y) = ((mx * w + w / 2) / s, (my * h + h / 2) / s);
            if around.iter().all(|&a| a == 0) {
                assert_eq!(luma(&out, x, y), gy, "background at {x},{y}");
                bg_px += 1;
            } else if around.iter().all(|&a| a == 255) {
                assert_eq!(luma(&out, x, y), luma(&original, x, y), "person at {x},{y}");
                fg_px += 1;
            }
        }
    }
    assert!(bg_px > 5000 && fg_px > 5000, "{bg_px} / {fg_px}");
    // The same frame again: the smoothed mask stays where it was (no flicker).
    let before = mask.to_vec();
    let mut again = fx.frame(1);
    vb.process(&mut again).unwrap();
    let changed = vb
        .mask()
        .0
        .iter()
        .zip(&before)
        .filter(|(a, b)| a.abs_diff(**b) > 2)
        .count();
    assert!(
        changed < s * s / 200,
        "{changed} mask pixels moved on an identical frame"
    );
}

fn moderation(model: &LoadedModel, action: ModerationAction, every: u32) -> Moderation {
    Moderation::new(
        model,
        ModerationSettings {
            every_n_frames: every,
            rules: vec![Rule {
                classes: vec!["FACE_FEMALE".into()],
                min_score: 0.5,
                action,
            }],
            blur_strength: 16,
        },
    )
    .unwrap()
}

#[test]
fn moderation_policy_blurs_drops_or_alerts_and_verdicts_hold_between_runs() {
    let Some(fx) = Fixture::new() else { return };
    let nn = fx.model(ModelKind::NudeNet, "nudenet-320n.onnx", 320);

    // blur_region on FACE_FEMALE, detector every 3rd frame.
    let mut m = moderation(&nn, ModerationAction::BlurRegion, 3);
    let original = fx.frame(0);
    for seq in 0..3 {
        let mut f = fx.frame(seq);
        assert_eq!(m.process(&mut f).unwrap(), StageOutcome::Keep);
        let v = f.meta.moderation.expect("a verdict");
        assert_eq!(
            (v.action, v.label, v.analysed_seq),
            (ModerationAction::BlurRegion, "FACE_FEMALE", 0)
        );
        assert!(v.score > 0.5 && v.flagged == 1, "{v:?}");
        let face = f
            .meta
            .objects
            .iter()
            .find(|o| o.source == ObjectSource::Moderate)
            .expect("the flagged region in the metadata");
        let (vb, va) = (variance(&original, face.bbox), variance(&f, face.bbox));
        assert!(
            va < vb * 0.5,
            "face not blurred: variance {vb:.0} -> {va:.0}"
        );
        // Far from the face nothing changed.
        assert_eq!(luma(&f, 5, 500), luma(&original, 5, 500));
    }

    // drop: the frame is dropped from the outputs.
    let mut m = moderation(&nn, ModerationAction::Drop, 1);
    assert_eq!(m.process(&mut fx.frame(0)).unwrap(), StageOutcome::Drop);

    // alert: verdict only, pixels untouched.
    let mut m = moderation(&nn, ModerationAction::Alert, 1);
    let mut f = fx.frame(0);
    m.process(&mut f).unwrap();
    assert_eq!(f.meta.moderation.unwrap().action, ModerationAction::Alert);
    assert_eq!(f.planes()[0].data, original.planes()[0].data);

    // The default policy (exposed intimate parts) has nothing to say about this photo.
    let mut m = Moderation::new(
        &nn,
        ModerationSettings {
            every_n_frames: 1,
            rules: ModerationSettings::default_policy(),
            blur_strength: 16,
        },
    )
    .unwrap();
    let mut f = fx.frame(0);
    m.process(&mut f).unwrap();
    assert!(f.meta.moderation.is_none());

    // A rule naming a class the model does not have is a start-up error.
    let e = Moderation::new(
        &nn,
        ModerationSettings {
            every_n_frames: 1,
            rules: vec![Rule {
                classes: vec!["PERSON".into()],
                min_score: 0.5,
                action: ModerationAction::Alert,
            }],
            blur_strength: 16,
        },
    )
    .err()
    .unwrap();
    assert!(
        matches!(&e, BuildError::UnknownClass { class, .. } if class == "PERSON"),
        "{e}"
    );
    let e = e.to_string();
    assert!(e.contains("no class \"PERSON\""), "{e}");
}

#[test]
fn detect_and_track_keeps_one_id_on_the_face() {
    let Some(fx) = Fixture::new() else { return };
    let nn = fx.model(ModelKind::NudeNet, "nudenet-320n.onnx", 320);
    let mut d = DetectTrack::new(
        &nn,
        DetectSettings {
            classes: vec!["FACE_FEMALE".into(), "FACE_MALE".into()],
            min_score: 0.4,
            nms_iou: 0.45,
            tracker: TrackerConfig::default(),
            draw: true,
            every_n_frames: 2,
        },
    )
    .unwrap();
    let mut ids = Vec::new();
    for seq in 0..6 {
        let mut f = fx.frame(seq);
        d.process(&mut f).unwrap();
        let tracks: Vec<_> = f
            .meta
            .objects
            .iter()
            .filter(|o| o.source == ObjectSource::Detect)
            .collect();
        assert_eq!(tracks.len(), 1, "frame {seq}: {tracks:?}");
        assert_eq!(tracks[0].label, "FACE_FEMALE");
        let b = tracks[0].bbox;
        // The face is in the upper middle of the photo.
        assert!(
            b[0] > 150.0 && b[2] < 300.0 && b[1] > 60.0 && b[3] < 200.0,
            "{b:?}"
        );
        // The box is drawn (bright outline on the left edge).
        assert_eq!(
            luma(&f, b[0] as usize & !1, ((b[1] + b[3]) / 2.0) as usize),
            235
        );
        ids.push(tracks[0].track_id.expect("a track id"));
    }
    assert!(ids.iter().all(|&i| i == ids[0]), "{ids:?}");
    assert!(
        DetectTrack::new(
            &nn,
            DetectSettings {
                classes: vec!["car".into()],
                min_score: 0.4,
                nms_iou: 0.45,
                tracker: TrackerConfig::default(),
                draw: false,
                every_n_frames: 1,
            },
        )
        .is_err()
    );
}
