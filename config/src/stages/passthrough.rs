//! The `passthrough` stage: forwards frames unchanged.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::StageSection;
use crate::error::Problem;

/// Settings of the `passthrough` stage (it has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PassthroughStage {}

impl StageSection for PassthroughStage {
    const KIND: &'static str = "passthrough";
    const EXAMPLE: &'static str = "{}";

    fn check(&self, _prefix: &str, _out: &mut Vec<Problem>) {}
}
