//! The `pipeline` section: sources, stages (see `crate::stages`), sinks and the rules.

mod evidence;
mod sinks;
mod sources;

pub use evidence::*;

pub use sinks::*;
pub use sources::*;

use std::ops::RangeInclusive;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::RuleConfig;
use crate::stages::StageConfig;

/// Frame surfaces per stream pool when `pipeline.pool_frames` is omitted.
const DEFAULT_POOL_FRAMES: u32 = 8;

/// Allowed range of `pipeline.pool_frames`.
pub(crate) const POOL_FRAMES_RANGE: RangeInclusive<u32> = 2..=64;

/// Channel depth between pipeline tasks when `pipeline.queue_depth` is omitted.
const DEFAULT_QUEUE_DEPTH: u32 = 4;

/// Allowed range of `pipeline.queue_depth`.
pub(crate) const QUEUE_DEPTH_RANGE: RangeInclusive<u32> = 1..=64;

pub(crate) fn default_pool_frames() -> u32 {
    DEFAULT_POOL_FRAMES
}

pub(crate) fn default_queue_depth() -> u32 {
    DEFAULT_QUEUE_DEPTH
}

/// A video pipeline: every source stream passes through every stage, in
/// order, and is then delivered to every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Video inputs (at least one). Each source becomes one stream.
    pub sources: Vec<SourceConfig>,
    /// Processing stages, applied in order to every stream.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Outputs; every stream is delivered to every sink.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Frame buffers allocated per stream (2 to 64). More buffers absorb
    /// bursts at the cost of memory.
    #[serde(default = "default_pool_frames")]
    pub pool_frames: u32,
    /// Frames that may wait between two pipeline steps (1 to 64). Must be
    /// smaller than `pool_frames`, otherwise the queues can hold every buffer
    /// and the decoder stalls.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Rules over this pipeline's video metadata and the sensors (in
    /// addition to `sensors.rules`; a workflow can carry them).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Event clips and what is kept (needs a `record` sink).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<EvidenceConfig>,
}
