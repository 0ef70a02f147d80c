//! Over-the-air model updates on the device (issue 20, docs/models.md): what the agent does
//! with a model bundle once `aegis_ota::model::verify_manifest` has accepted its signed
//! manifest. The decisions are the workflow applier's
//! (`crate::workflows::apply`); this module holds the pieces it uses:
//!
//! - [`delivery`]: the store, the platform, the transfer under way and what status,
//!   telemetry, metrics and the web page show of it;
//! - [`download`]: the resumable, verified HTTP(S) download into a staging directory;
//! - [`mqtt`]: the same over the fleet broker in chunks, for devices that reach only it;
//! - [`install`]: the model entry of an installed bundle and its health check.

pub mod delivery;
pub mod download;
pub mod install;
pub mod mqtt;

pub use download::{
    DownloadError, DownloadPolicy, DownloadTimeouts, Progress, TlsRoots, download_bundle,
};
