//! Bad model input is refused at start-up with the model's name and the problem: missing
//! file, SHA-256 mismatch, corrupt ONNX, a model of the wrong kind or input size, labels that
//! do not fit, an execution provider the runtime lacks.

mod common;

use std::path::Path;

use common::{have, models_dir, ort_library};

use aegis_models::engine::{EngineSettings, Provider};
use aegis_models::registry::{BatchSettings, ModelKind, ModelSpec, load};

const NUDENET_SHA: &str = "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f";

fn setup() -> Option<EngineSettings> {
    let ok = have(&[
        ort_library(),
        models_dir().join("nudenet-320n.onnx"),
        models_dir().join("selfie_segmentation.onnx"),
    ]);
    ok.then(|| EngineSettings::cpu(&ort_library(), 1))
}

fn spec(name: &str, kind: ModelKind, file: &Path, size: usize) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        version: 1,
        kind,
        file: file.to_path_buf(),
        sha256: None,
        input_size: size,
        labels: None,
    }
}

fn load_err(settings: &EngineSettings, spec: &ModelSpec) -> String {
    match load(settings, spec, BatchSettings::default()) {
        Ok(_) => panic!("{spec:?} loaded"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_models_are_refused_with_their_name_and_the_problem() {
    let Some(settings) = setup() else { return };
    let nudenet = models_dir().join("nudenet-320n.onnx");
    let dir = tempfile::tempdir().unwrap();

    // The good one loads (checksum pinned), warmed up, on the CPU.
    let mut good = spec("nn", ModelKind::NudeNet, &nudenet, 320);
    good.sha256 = Some(NUDENET_SHA.into());
    let m = load(&settings, &good, BatchSettings::default()).unwrap();
    assert_eq!((m.provider, m.labels.len()), ("cpu", 18));
    assert_eq!(m.stats().items, 1, "one warm-up run");

    let missing = spec("gone", ModelKind::NudeNet, &dir.path().join("x.onnx"), 320);
    let e = load_err(&settings, &missing);
    assert!(
        e.contains("model gone") && e.contains("file not found"),
        "{e}"
    );

    let mut pinned = good.clone();
    pinned.sha256 = Some("0".repeat(64));
    let e = load_err(&settings, &pinned);
    assert!(
        e.contains("model nn") && e.contains("SHA-256 mismatch") && e.contains(NUDENET_SHA),
        "{e}"
    );

    let corrupt = dir.path().join("corrupt.onnx");
    std::fs::write(&corrupt, b"\x08\x07 this is not a protobuf model").unwrap();
    let e = load_err(
        &settings,
        &spec("broken", ModelKind::NudeNet, &corrupt, 320),
    );
    assert!(
        e.contains("model broken") && e.contains("corrupt.onnx"),
        "{e}"
    );

    // A detector configured as the segmenter (NudeNet takes any input size, so the
    // warm-up's output gives it away).
    let e = load_err(
        &settings,
        &spec("seg", ModelKind::SelfieSegmentation, &nudenet, 256),
    );
    assert!(
        e.contains("model seg") && e.contains("output shape [1, 22, 1344]"),
        "{e}"
    );

    // Right model, wrong input size in the config (the segmenter's input is fixed).
    let seg = models_dir().join("selfie_segmentation.onnx");
    let e = load_err(
        &settings,
        &spec("seg", ModelKind::SelfieSegmentation, &seg, 320),
    );
    assert!(
        e.contains("input shape [-1, 3, 256, 256]") && e.contains("[N, 3, 320, 320]"),
        "{e}"
    );

    // The segmenter configured as a detector: its output is no detector output.
    let labels = dir.path().join("labels.txt");
    std::fs::write(&labels, "person\ncar\n").unwrap();
    let mut as_det = spec("yolo", ModelKind::Yolov8, &seg, 256);
    as_det.labels = Some(labels.clone());
    let e = load_err(&settings, &as_det);
    assert!(
        e.contains("output shape") && e.contains("4 + 2 classes"),
        "{e}"
    );

    // A YOLOv8 detector whose labels file has the wrong number of classes.
    let mut wrong_labels = spec("yolo", ModelKind::Yolov8, &nudenet, 320);
    wrong_labels.labels = Some(labels);
    let e = load_err(&settings, &wrong_labels);
    assert!(e.contains("[1, 22, 2100]"), "{e}");
    // ... and with the right 18 names it is a generic detector like any other.
    let labels18 = dir.path().join("labels18.txt");
    std::fs::write(&labels18, aegis_models::nudenet::CLASSES.join("\n")).unwrap();
    let mut generic = spec("yolo", ModelKind::Yolov8, &nudenet, 320);
    generic.labels = Some(labels18);
    assert!(load(&settings, &generic, BatchSettings::default()).is_ok());
}

#[test]
fn a_missing_execution_provider_is_named_or_falls_back_to_the_cpu() {
    let Some(cpu) = setup() else { return };
    let nudenet = spec(
        "nn",
        ModelKind::NudeNet,
        &models_dir().join("nudenet-320n.onnx"),
        320,
    );
    // The PyPI build of ONNX Runtime has no CUDA/TensorRT providers.
    for provider in [
        Provider::Cuda { device: 0 },
        Provider::TensorRt {
            device: 0,
            engine_cache_dir: None,
            fp16: true,
            int8: false,
            int8_calibration_table: None,
            dla_core: Some(0),
        },
    ] {
        let name = provider.name();
        let strict = EngineSettings {
            provider: provider.clone(),
            fallback_to_cpu: false,
            ..cpu.clone()
        };
        let e = load_err(&strict, &nudenet);
        assert!(
            e.contains("model nn") && e.contains(&format!("execution provider {name}")),
            "{e}"
        );
        // CUDA graphs asked for too: without a GPU they are not taken, and nothing fails.
        let lenient = EngineSettings {
            provider,
            fallback_to_cpu: true,
            cuda_graph: true,
            ..cpu.clone()
        };
        // Two sessions asked for: the CPU fallback keeps one (its pool has every core).
        let two = BatchSettings {
            sessions: 2,
            ..BatchSettings::default()
        };
        let m = load(&lenient, &nudenet, two).unwrap();
        assert_eq!(
            (m.provider, m.sessions(), m.cuda_graph()),
            ("cpu", 1, false)
        );
    }
}

/// `sessions: 2`: each session is warmed up, the stages' clients go to the sessions in
/// turn, and the counters add up over both.
#[test]
fn a_model_with_two_sessions_serves_clients_on_both() {
    let Some(settings) = setup() else { return };
    let seg = spec(
        "seg",
        ModelKind::SelfieSegmentation,
        &models_dir().join("selfie_segmentation.onnx"),
        256,
    );
    let two = BatchSettings {
        max_batch: 1,
        sessions: 2,
        ..BatchSettings::default()
    };
    let m = load(&settings, &seg, two).unwrap();
    assert_eq!(m.sessions(), 2);
    assert_eq!(m.stats().items, 2, "one warm-up run per session");
    let clients: Vec<_> = (0..4).map(|_| m.client()).collect();
    let run = |mut c: aegis_models::batch::BatchClient| {
        std::thread::spawn(move || {
            for _ in 0..3 {
                c.input(3 * 256 * 256).fill(0.5);
                let (out, shape) = c.run().unwrap();
                assert_eq!(shape, [1, 1, 256, 256]);
                assert_eq!(out.len(), 256 * 256);
            }
        })
    };
    for t in clients.into_iter().map(run).collect::<Vec<_>>() {
        t.join().unwrap();
    }
    // Two clients on each session.
    let per: Vec<u64> = m.session_stats().iter().map(|s| s.items).collect();
    assert_eq!(per, [1 + 2 * 3, 1 + 2 * 3]);
    let s = m.stats();
    assert_eq!(s.items, 2 + 4 * 3);
    // max_batch 1: one request per call, on whichever session the client has.
    assert_eq!(s.batches, s.items);
    // With one session the same model and clients give the same answers: the two sessions
    // are the same model.
    let one = load(&settings, &seg, BatchSettings { sessions: 1, ..two }).unwrap();
    let (mut a, mut b) = (one.client(), m.client());
    a.input(3 * 256 * 256).fill(0.25);
    b.input(3 * 256 * 256).fill(0.25);
    assert_eq!(a.run().unwrap().0, b.run().unwrap().0);
}
