//! The `passthrough` stage ([`aegis_hal::stage::Passthrough`]) from its settings.

use aegis_config::PassthroughStage;
use aegis_hal::stage::{Passthrough, Stage};

use super::{BuildError, BuildStage};
use crate::registry::Registry;

impl BuildStage for PassthroughStage {
    fn build(&self, _models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
        Ok(Box::new(Passthrough))
    }
}
