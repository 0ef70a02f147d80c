//! The `timestamp_overlay` stage: burns the time (and the stream id) into the picture.

use std::ops::RangeInclusive;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::StageSection;
use crate::error::Problem;
use crate::model::default_true;
use crate::recover::join_key;
use crate::validate::check_range;

/// Default overlay position, in pixels from the left/top edge.
const DEFAULT_OVERLAY_OFFSET: u32 = 16;
/// Default overlay glyph scale factor.
const DEFAULT_OVERLAY_SCALE: u32 = 2;
/// Allowed range of `timestamp_overlay.scale`.
const OVERLAY_SCALE_RANGE: RangeInclusive<u32> = 1..=8;

fn default_overlay_offset() -> u32 {
    DEFAULT_OVERLAY_OFFSET
}
fn default_overlay_scale() -> u32 {
    DEFAULT_OVERLAY_SCALE
}

/// Settings of the `timestamp_overlay` stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimestampOverlayStage {
    /// Horizontal position of the text, in pixels from the left edge.
    #[serde(default = "default_overlay_offset")]
    pub x: u32,
    /// Vertical position of the text, in pixels from the top edge.
    #[serde(default = "default_overlay_offset")]
    pub y: u32,
    /// Text size multiplier (1 to 8).
    #[serde(default = "default_overlay_scale")]
    pub scale: u32,
    /// Also print the stream id next to the timestamp.
    #[serde(default = "default_true")]
    pub show_stream_id: bool,
    /// Also draw the wall-clock milliseconds as a row of black/white blocks under the text,
    /// for glass-to-glass latency probes (the browser test of the live view reads it back).
    #[serde(default)]
    pub clock_code: bool,
}

impl Default for TimestampOverlayStage {
    fn default() -> Self {
        Self {
            x: default_overlay_offset(),
            y: default_overlay_offset(),
            scale: default_overlay_scale(),
            show_stream_id: default_true(),
            clock_code: false,
        }
    }
}

impl StageSection for TimestampOverlayStage {
    const KIND: &'static str = "timestamp_overlay";
    const EXAMPLE: &'static str = "{x: 8, y: 8, scale: 1}";

    fn check(&self, prefix: &str, out: &mut Vec<Problem>) {
        check_range(
            out,
            join_key(prefix, "scale"),
            self.scale,
            &OVERLAY_SCALE_RANGE,
        );
    }
}
