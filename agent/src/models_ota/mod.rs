//! Over-the-air model updates on the device (issue 20): what the agent does with a model
//! bundle once `aegis_ota::model::verify_manifest` has accepted its signed manifest.
//!
//! Today this is the delivery step only ([`download`]): fetch the bundle's files into a
//! staging directory, resumably, within a disk budget, each checked against the manifest's
//! size and SHA-256 before it is renamed into place. Installing, the health check and the
//! swap are later slices; nothing here loads or runs a model.

pub mod delivery;
pub mod download;
pub mod install;

pub use download::{
    DownloadError, DownloadPolicy, DownloadTimeouts, Progress, TlsRoots, download_bundle,
};
