//! The inference stages. Each implements [`aegis_hal::stage::Stage`] for one stream and
//! reaches its model through a [`crate::batch::BatchClient`], so the streams of a device
//! share one session per model and are batched together.

pub mod background;
pub mod detect;
pub mod detector;
pub mod moderate;
pub mod pixels;

pub use background::{Background, VirtualBackground, VirtualBackgroundSettings};
pub use detect::{DetectSettings, DetectTrack};
pub use moderate::{Moderation, ModerationSettings, Rule};
