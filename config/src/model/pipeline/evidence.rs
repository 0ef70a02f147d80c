//! Event clips and the evidence policy (`pipeline.evidence`), and the named zones of a source
//! (`pipeline.sources[].zones`) that a detection trigger may require.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Allowed range of `evidence.pre_roll_seconds`.
pub(crate) const PRE_ROLL_RANGE: RangeInclusive<f64> = 0.0..=60.0;
/// Allowed range of `evidence.post_roll_seconds`.
pub(crate) const POST_ROLL_RANGE: RangeInclusive<f64> = 0.0..=300.0;
/// Allowed range of `evidence.max_clip_seconds`.
pub(crate) const MAX_CLIP_RANGE: RangeInclusive<f64> = 1.0..=3600.0;
/// Allowed range of `evidence.keep[].retention_days`.
pub(crate) const RETENTION_DAYS_RANGE: RangeInclusive<u32> = 1..=3650;

fn default_pre_roll() -> f64 {
    5.0
}
fn default_post_roll() -> f64 {
    5.0
}
fn default_max_clip() -> f64 {
    120.0
}
fn default_clip_budget_mb() -> u64 {
    2048
}
fn default_true() -> bool {
    true
}
fn default_retention_days() -> u32 {
    30
}

/// Clips of the seconds around events, cut from the record sink's encoded stream (no second
/// encode), and what is kept for how long. Needs a `record` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EvidenceConfig {
    /// Directory for clips and their signed manifests (one sub-directory per stream); must
    /// not be inside a record sink's directory.
    pub dir: PathBuf,
    /// Seconds before the event a clip starts (0 to 60); it starts at the keyframe at or
    /// before that point, so it holds at least this much.
    #[serde(default = "default_pre_roll")]
    pub pre_roll_seconds: f64,
    /// Seconds after the last event a clip ends (0 to 300). An event inside an open clip
    /// extends it.
    #[serde(default = "default_post_roll")]
    pub post_roll_seconds: f64,
    /// Longest clip in seconds (1 to 3600): a clip that would grow longer is closed and the
    /// next event starts another.
    #[serde(default = "default_max_clip")]
    pub max_clip_seconds: f64,
    /// Disk space all clips may use, in MiB (at least 1). The oldest clips are deleted first
    /// when it is exceeded; clips under legal hold are never deleted.
    #[serde(default = "default_clip_budget_mb")]
    pub disk_budget_mb: u64,
    /// Encrypt clips at rest (AES-256-GCM under the device's evidence key in
    /// `workflows.keys_dir`); `aegis evidence export` decrypts for a technician.
    #[serde(default = "default_true")]
    pub encrypt: bool,
    /// Which events keep a clip (the first matching entry decides). Manual triggers (fleet
    /// command, web page) always keep one, for 30 days unless an entry with `on: manual`
    /// says otherwise.
    #[serde(default)]
    pub keep: Vec<KeepRule>,
}

/// The event kinds that can keep a clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceTrigger {
    /// A tracked object (of `labels`, inside `zone` when given) appears.
    Detection,
    /// A moderation verdict that flags a frame.
    Moderation,
    /// A rule of `pipeline.rules` or `sensors.rules` fires (`rule` names which).
    Rule,
    /// A technician or the fleet asks for one.
    Manual,
}

impl EvidenceTrigger {
    /// The name used in config, the store and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceTrigger::Detection => "detection",
            EvidenceTrigger::Moderation => "moderation",
            EvidenceTrigger::Rule => "rule",
            EvidenceTrigger::Manual => "manual",
        }
    }
}

/// One entry of the evidence policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KeepRule {
    /// The event kind.
    pub on: EvidenceTrigger,
    /// `detection`: object labels that count (empty: any).
    #[serde(default)]
    pub labels: Vec<String>,
    /// `detection`: the name of a zone of the stream's source; the object's foot point
    /// (bottom centre of its box) must be inside it.
    #[serde(default)]
    pub zone: Option<String>,
    /// `rule`: the rule's name (omit for any rule).
    #[serde(default)]
    pub rule: Option<String>,
    /// Keep video. Omitted: no for `moderation` (only the event's metadata is kept), yes
    /// for the others.
    #[serde(default)]
    pub imagery: Option<bool>,
    /// Days the clip is kept (1 to 3650); the longest of a clip's events counts.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
}

impl KeepRule {
    /// Whether this entry keeps video: moderation hits keep none unless told to.
    pub fn keeps_imagery(&self) -> bool {
        self.imagery
            .unwrap_or(self.on != EvidenceTrigger::Moderation)
    }
}

/// A named polygon on a source's picture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ZoneConfig {
    /// Name, unique within the source (as stream ids: lowercase letters, digits, `-`, `_`).
    pub name: String,
    /// Corners in image fractions 0 to 1 (`[[x, y], ...]`, at least 3).
    pub polygon: Vec<[f64; 2]>,
}
