//! The registration of stage kinds. `aegis_config::for_each_stage!` is the one list of kinds;
//! this file walks it: a kind without a config section (`StageSection`) or without a
//! `BuildStage` impl does not compile. Each kind's example parses through the validating
//! pipeline parser, round-trips through YAML, and builds through `stages::build`: without
//! its model, the error names the stage and the model; with the test models, the stage it
//! builds reports the same kind and processes a frame.

mod common;

use aegis_config::{ModelKindConfig, PipelineConfig, StageConfig, StageSection};
use aegis_hal::frame::FrameLayout;
use aegis_hal::{Frame, PixelFormat, StreamId, SurfacePool};
use aegis_models::engine::EngineSettings;
use aegis_models::registry::{BatchSettings, ModelSpec, Registry};
use aegis_models::stages::{self, BuildError, BuildStage};
use common::{have, models_dir, ort_library};

/// `(kind, example)` of every registered kind, each checked to have a [`BuildStage`] impl.
macro_rules! examples {
    ($($(#[$doc:meta])* $kind:ident => $variant:ident($settings:ty),)*) => {{
        fn has_build_stage<T: BuildStage>() {}
        vec![$({
            has_build_stage::<$settings>();
            (stringify!($kind), <$settings as StageSection>::EXAMPLE)
        }),*]
    }};
}

/// A pipeline with one stage per registered kind, each from its example.
fn every_kind() -> PipelineConfig {
    let examples: Vec<(&str, &str)> = aegis_config::for_each_stage!(examples);
    assert_eq!(
        examples.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        aegis_config::STAGE_KINDS
    );
    let stages: Vec<String> = examples
        .iter()
        .map(|(kind, example)| {
            format!(
                "  - {{kind: {kind}, {}",
                example.trim().trim_start_matches('{')
            )
        })
        .collect();
    let text = format!(
        "sources: [{{id: cam0, url: \"file:clip.mp4\"}}]\nsinks: [{{kind: discard}}]\nstages:\n{}\n",
        stages.join("\n")
    );
    PipelineConfig::from_yaml_str(&text, "every kind").unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn every_kind_parses_and_round_trips_through_yaml() {
    let p = every_kind();
    assert_eq!(
        p.stages.iter().map(StageConfig::kind).collect::<Vec<_>>(),
        aegis_config::STAGE_KINDS
    );
    let text = serde_yaml_ng::to_string(&p).unwrap();
    let back = PipelineConfig::from_yaml_str(&text, "round trip").unwrap();
    assert_eq!(back, p);
}

#[test]
fn a_stage_without_its_model_names_itself_and_the_model() {
    let p = every_kind();
    let none = Registry::default();
    for (index, stage) in p.stages.iter().enumerate() {
        let one = std::slice::from_ref(stage);
        match (stage.model(), stages::build(one, &none)) {
            (None, Ok(built)) => assert_eq!(built[0].kind(), stage.kind()),
            (Some(m), Err(e)) => {
                assert_eq!((e.index, e.kind), (0, stage.kind()));
                assert!(
                    matches!(&e.source, BuildError::ModelNotLoaded(name) if name == m.name),
                    "{e}"
                );
                assert_eq!(
                    e.to_string(),
                    format!("stages[0]: model {:?} is not loaded", m.name)
                );
            }
            (model, built) => panic!(
                "stages[{index}] {}: model {model:?}, built: {:?}",
                stage.kind(),
                built.map(|b| b.len())
            ),
        }
    }
    // The index is the stage's place in the pipeline.
    let e = stages::build(&p.stages, &none).err().unwrap();
    let first = p.stages.iter().position(|s| s.model().is_some()).unwrap();
    assert_eq!(e.index, first);
}

/// The test model file and input size for a stage that accepts `kinds`.
fn test_model(kinds: &[ModelKindConfig]) -> (ModelKindConfig, &'static str, usize) {
    match kinds[0] {
        ModelKindConfig::SelfieSegmentation => (kinds[0], "selfie_segmentation.onnx", 256),
        ModelKindConfig::Nudenet => (kinds[0], "nudenet-320n.onnx", 320),
        kind => panic!("no test model of kind {kind:?}: add one to test_model"),
    }
}

#[test]
fn every_kind_builds_with_its_model_and_processes_a_frame() {
    let p = every_kind();
    let mut specs: Vec<ModelSpec> = Vec::new();
    for m in p.stages.iter().filter_map(StageConfig::model) {
        let (kind, file, size) = test_model(m.kinds);
        if !specs.iter().any(|s| s.name == m.name) {
            specs.push(ModelSpec {
                name: m.name.to_owned(),
                version: 1,
                kind: kind.into(),
                file: models_dir().join(file),
                sha256: None,
                input_size: size,
                labels: None,
            });
        }
    }
    let mut files: Vec<_> = specs.iter().map(|s| s.file.clone()).collect();
    files.push(ort_library());
    if !have(&files) {
        return;
    }
    let settings = EngineSettings::cpu(&ort_library(), 1);
    let models = Registry::load(&settings, &specs, BatchSettings::default()).unwrap();
    let mut built = stages::build(&p.stages, &models).unwrap_or_else(|e| panic!("{e}"));
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 64, 48), 2);
    for (stage, cfg) in built.iter_mut().zip(&p.stages) {
        assert_eq!(stage.kind(), cfg.kind());
        let mut frame = Frame::from_pool(&pool, StreamId::new("cam0"), 0, 0, 0).unwrap();
        stage
            .process(&mut frame)
            .unwrap_or_else(|e| panic!("{}: {e}", cfg.kind()));
    }
}
