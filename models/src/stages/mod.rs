//! The stages, one module per stage kind, each beside the mapping from its config section.
//!
//! Each `<kind>.rs` implements [`BuildStage`] for its settings type of `aegis-config` (a
//! [`aegis_config::StageSection`]): how the stage is built from its settings and the loaded
//! models. [`build`] dispatches over config's one list of stage kinds
//! ([`aegis_config::for_each_stage!`]), so a kind without a [`BuildStage`] impl does not
//! compile and no match arm here names a kind. The inference stages implement
//! [`aegis_hal::stage::Stage`] for one stream and reach their model through a
//! [`crate::batch::BatchClient`], so the streams of a device share one session per model and
//! are batched together.

use std::sync::Arc;

use aegis_config::{StageConfig, StageSection};
use aegis_hal::stage::Stage;

use crate::registry::{LoadedModel, Registry};

pub mod detect;
pub mod detector;
pub mod moderate;
pub mod passthrough;
pub mod pixels;
pub mod timestamp_overlay;
pub mod virtual_background;

pub use detect::{DetectSettings, DetectTrack};
pub use moderate::{Moderation, ModerationSettings, Rule};
pub use virtual_background::{Background, VirtualBackground, VirtualBackgroundSettings};

/// Why a stage could not be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The stage names a model the registry did not load.
    #[error("model {0:?} is not loaded")]
    ModelNotLoaded(String),
    /// A class name the model's labels do not have.
    #[error("model {model} has no class {class:?}{}", known_classes(.known))]
    UnknownClass {
        /// The model's registry name.
        model: String,
        /// The class asked for.
        class: String,
        /// The classes the model has, where the message lists them.
        known: Option<Vec<&'static str>>,
    },
    /// A colour that is not `#rrggbb`.
    #[error("bad colour {0:?}")]
    BadColour(String),
    /// The background picture cannot be read.
    #[error("background image: {0}")]
    BackgroundImage(#[source] aegis_hal::image::ImageError),
}

fn known_classes(known: &Option<Vec<&'static str>>) -> String {
    known
        .as_ref()
        .map(|k| format!(" (it has: {})", k.join(", ")))
        .unwrap_or_default()
}

/// A stage of a pipeline could not be built: which one, and why.
#[derive(Debug, thiserror::Error)]
#[error("stages[{index}]: {source}")]
pub struct StageBuildError {
    /// Index in the pipeline's `stages`.
    pub index: usize,
    /// The stage's kind.
    pub kind: &'static str,
    /// Why.
    pub source: BuildError,
}

/// How a stage kind's settings become a running stage: implemented by each stage module
/// for its `aegis-config` settings type.
pub trait BuildStage: StageSection {
    /// One stream's instance of the stage, over the loaded `models`.
    fn build(&self, models: &Registry) -> Result<Box<dyn Stage>, BuildError>;
}

/// The model `name` from `models`, or [`BuildError::ModelNotLoaded`].
pub fn loaded_model(models: &Registry, name: &str) -> Result<Arc<LoadedModel>, BuildError> {
    models
        .get(name)
        .ok_or_else(|| BuildError::ModelNotLoaded(name.to_owned()))
}

macro_rules! build_one {
    ($($(#[$doc:meta])* $kind:ident => $variant:ident($settings:ty),)*) => {
        /// Builds one stage by its kind's [`BuildStage`] impl.
        fn build_one(stage: &StageConfig, models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
            match stage {
                $(StageConfig::$variant(s) => <$settings as BuildStage>::build(s, models),)*
            }
        }
    };
}

aegis_config::for_each_stage!(build_one);

/// One stream's stages, in order. Fails naming the stage when its model is not loaded, a
/// class name is unknown, a colour is bad or a background image cannot be read.
pub fn build(
    stages: &[StageConfig],
    models: &Registry,
) -> Result<Vec<Box<dyn Stage>>, StageBuildError> {
    stages
        .iter()
        .enumerate()
        .map(|(index, stage)| {
            build_one(stage, models).map_err(|source| StageBuildError {
                index,
                kind: stage.kind(),
                source,
            })
        })
        .collect()
}
