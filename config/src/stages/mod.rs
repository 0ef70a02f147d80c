//! Pipeline stages as components: one file per stage kind and one registration list.
//!
//! Each `<kind>.rs` holds the stage's settings (with their serde defaults and doc comments,
//! which are also the JSON Schema's descriptions) and its [`StageSection`] impl: the kind
//! name, the checks, the model it uses and the files it reads. [`for_each_stage!`] is the
//! one list naming every kind; it generates [`StageConfig`], [`STAGE_KINDS`], the parse and
//! check dispatch, and the generic accessors ([`StageConfig::kind`], [`StageConfig::model`],
//! [`StageConfig::files`]). Other crates generate their own dispatch from the same list by
//! passing a callback macro to [`for_each_stage!`] (`aegis-models` builds the stages that
//! way), so adding a kind needs no match arm anywhere.
//!
//! Adding a stage kind: write `<kind>.rs` here (settings + [`StageSection`]), declare it
//! below and add one line to [`for_each_stage!`]; then write the stage and its
//! `BuildStage` impl in `aegis-models` (`models/src/stages/<kind>.rs`, declared in
//! `models/src/stages/mod.rs`).

use std::fmt::Debug;
use std::path::Path;

use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use crate::error::Problem;
use crate::model::ModelKindConfig;

mod detect;
mod moderate;
mod passthrough;
mod timestamp_overlay;
mod virtual_background;

pub use detect::{DetectStage, TrackerParams};
pub use moderate::{ModerateStage, ModerationActionConfig, ModerationRule};
pub use passthrough::PassthroughStage;
pub use timestamp_overlay::TimestampOverlayStage;
pub use virtual_background::VirtualBackgroundStage;

/// The model a stage uses: its name in `inference.models` and the model kinds the stage can
/// work with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageModel<'a> {
    /// Name of the model in `inference.models`.
    pub name: &'a str,
    /// Kinds of model the stage accepts.
    pub kinds: &'static [ModelKindConfig],
}

/// A file a stage reads, with the setting that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageFile<'a> {
    /// The setting's key (`image`).
    pub setting: &'static str,
    /// The path as configured.
    pub path: &'a Path,
}

/// The settings of one stage kind: what the registration list needs to know about it.
pub trait StageSection:
    Debug + Clone + PartialEq + Serialize + DeserializeOwned + JsonSchema
{
    /// The kind, as written after `kind:` in the config (the serde tag of its
    /// [`StageConfig`] variant).
    const KIND: &'static str;
    /// A small valid instance as a YAML flow mapping without `kind` (for documentation and
    /// the registration tests; model names are free).
    const EXAMPLE: &'static str;

    /// Appends a [`Problem`] for every value that makes no sense; paths start at `prefix`
    /// (`pipeline.stages[0]`).
    fn check(&self, prefix: &str, out: &mut Vec<Problem>);

    /// The model the stage runs, if any.
    fn model(&self) -> Option<StageModel<'_>> {
        None
    }

    /// The files the stage reads (a workflow's policy allows only some paths).
    fn files(&self) -> Vec<StageFile<'_>> {
        Vec::new()
    }
}

/// Calls `$callback!` with the list of stage kinds, one entry each:
/// `doc comments, kind => Variant(SettingsType),` where `kind` is the kind name (and module
/// name), `Variant` the [`StageConfig`] variant and `SettingsType` a path to its
/// [`StageSection`] type. This is the only list of stage kinds; downstream crates generate
/// their dispatch from it:
///
/// ```
/// macro_rules! kinds {
///     ($($(#[$doc:meta])* $kind:ident => $variant:ident($settings:ty),)*) => {
///         &[$(stringify!($kind)),*]
///     };
/// }
/// let kinds: &[&str] = aegis_config::for_each_stage!(kinds);
/// assert_eq!(kinds, aegis_config::STAGE_KINDS);
/// ```
#[macro_export]
macro_rules! for_each_stage {
    ($callback:ident) => {
        $callback! {
            /// Forwards frames unchanged (useful to measure pipeline overhead).
            passthrough => Passthrough($crate::PassthroughStage),
            /// Draws the frame timestamp (and optionally the stream id) onto the
            /// picture.
            timestamp_overlay => TimestampOverlay($crate::TimestampOverlayStage),
            /// Segments the person and replaces the background (image, blur or
            /// colour).
            virtual_background => VirtualBackground($crate::VirtualBackgroundStage),
            /// Runs a nudity detector every N frames and blurs, drops or flags
            /// frames by policy.
            moderate => Moderate($crate::ModerateStage),
            /// Detects objects with a YOLOv8-style model and tracks them with stable
            /// ids.
            detect => Detect($crate::DetectStage),
        }
    };
}

macro_rules! define_stages {
    ($($(#[$doc:meta])* $kind:ident => $variant:ident($settings:ty),)*) => {
        /// A processing stage, selected by `kind`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum StageConfig {
            $($(#[$doc])* $variant($settings),)*
        }

        /// Every stage kind, in the order of the registration list.
        pub const STAGE_KINDS: &[&str] = &[$(<$settings as StageSection>::KIND),*];

        impl StageConfig {
            /// The stage's kind, as written in the config.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(StageConfig::$variant(_) => <$settings as StageSection>::KIND,)*
                }
            }

            /// The model the stage runs, with the model kinds it accepts.
            pub fn model(&self) -> Option<StageModel<'_>> {
                match self {
                    $(StageConfig::$variant(s) => s.model(),)*
                }
            }

            /// The files the stage reads.
            pub fn files(&self) -> Vec<StageFile<'_>> {
                match self {
                    $(StageConfig::$variant(s) => s.files(),)*
                }
            }

            /// Checks the stage's settings; paths start at `prefix`.
            pub(crate) fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
                match self {
                    $(StageConfig::$variant(s) => s.check(prefix, out),)*
                }
            }

            /// Deserializes the settings of a stage of `kind` (the mapping without its
            /// `kind` key): `None` for an unknown kind, `Some(None)` when the settings do
            /// not deserialize (the problems say why).
            pub(crate) fn parse(
                kind: &str,
                settings: Value,
                path: &str,
                problems: &mut Vec<Problem>,
            ) -> Option<Option<StageConfig>> {
                $(
                    if kind == <$settings as StageSection>::KIND {
                        return Some(
                            crate::recover::recover::<$settings>(settings, path, problems)
                                .map(StageConfig::$variant),
                        );
                    }
                )*
                None
            }
        }
    };
}

for_each_stage!(define_stages);

#[cfg(test)]
mod tests {
    use super::*;

    /// The kind name each section declares is the serde tag of its variant: the schema's
    /// `kind` constants, in list order, are [`STAGE_KINDS`].
    #[test]
    fn each_kind_name_is_its_serde_tag() {
        let schema = serde_json::to_value(schemars::schema_for!(StageConfig)).unwrap();
        let tags: Vec<String> = schema["oneOf"]
            .as_array()
            .expect("StageConfig is a oneOf")
            .iter()
            .map(|variant| {
                let kind = &variant["properties"]["kind"];
                kind["const"]
                    .as_str()
                    .or_else(|| kind["enum"][0].as_str())
                    .expect("each variant has a kind constant")
                    .to_owned()
            })
            .collect();
        assert_eq!(tags, STAGE_KINDS);
    }

    macro_rules! round_trip_each {
        ($($(#[$doc:meta])* $kind:ident => $variant:ident($settings:ty),)*) => {
            $({
                let yaml = format!("{{kind: {}, {}", stringify!($kind),
                    <$settings as StageSection>::EXAMPLE.trim_start_matches('{'));
                let stage: StageConfig = serde_yaml_ng::from_str(&yaml).unwrap();
                assert_eq!(stage.kind(), stringify!($kind));
                assert!(matches!(stage, StageConfig::$variant(_)));
                let mut problems = Vec::new();
                stage.check("s", &mut problems);
                assert!(problems.is_empty(), "{yaml}: {problems:?}");
                let back: StageConfig =
                    serde_yaml_ng::from_str(&serde_yaml_ng::to_string(&stage).unwrap()).unwrap();
                assert_eq!(back, stage);
                let mut problems = Vec::new();
                let parsed = StageConfig::parse(
                    stringify!($kind),
                    serde_yaml_ng::from_str(<$settings as StageSection>::EXAMPLE).unwrap(),
                    "s",
                    &mut problems,
                );
                assert_eq!(parsed, Some(Some(stage)), "{problems:?}");
            })*
        };
    }

    /// Every kind in the list has a section whose example parses, checks clean and
    /// round-trips through YAML, by name and through the parse dispatch.
    #[test]
    fn every_kind_example_round_trips_through_yaml() {
        for_each_stage!(round_trip_each);
    }

    #[test]
    fn an_unknown_kind_is_not_parsed() {
        let mut problems = Vec::new();
        assert_eq!(
            StageConfig::parse("nope", Value::Null, "s", &mut problems),
            None
        );
    }
}
