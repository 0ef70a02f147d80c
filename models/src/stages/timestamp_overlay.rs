//! The `timestamp_overlay` stage ([`aegis_hal::stage::TimestampOverlay`]) from its settings.

use aegis_config::TimestampOverlayStage;
use aegis_hal::stage::{Stage, TimestampOverlay};

use super::{BuildError, BuildStage};
use crate::registry::Registry;

impl BuildStage for TimestampOverlayStage {
    fn build(&self, _models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
        Ok(Box::new(
            TimestampOverlay::new(
                self.x as usize,
                self.y as usize,
                self.scale as usize,
                self.show_stream_id,
            )
            .with_clock_code(self.clock_code),
        ))
    }
}
