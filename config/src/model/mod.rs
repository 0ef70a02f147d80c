//! The typed configuration model.
//!
//! These types are the single source of truth for what an Aegis Edge
//! configuration file may contain: serde reads them, schemars turns them
//! (including their doc comments) into the JSON Schema that editors use, and
//! the `examples/*.yaml` files are checked against them by the unit tests.
//! Field doc comments are therefore written for the operator who edits the
//! YAML file, not for Rust programmers.
//!
//! Every struct rejects unknown keys (`deny_unknown_fields`) so that a typo
//! such as `segment_second:` is reported instead of silently ignored, and
//! every default comes from a named constant so the documentation, the schema
//! and the code cannot drift apart.
//!
//! One module per config section; this module holds the root ([`AgentConfig`]) and
//! re-exports every section, so paths stay `crate::model::X`. Pipeline stages live in
//! `crate::stages`, one file per kind.

mod backend;
mod device;
mod fleet;
mod inference;
mod log;
mod outputs;
mod pipeline;
mod sensors;
mod store;
mod watchdog;
mod web;
mod workflows;

pub use backend::*;
pub use device::*;
pub use fleet::*;
pub use inference::*;
pub use log::*;
pub use outputs::*;
pub use pipeline::*;
pub use sensors::*;
pub use store::*;
pub use watchdog::*;
pub use web::*;
pub use workflows::*;

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest allowed device, group or source id, in characters.
pub(crate) const MAX_ID_LEN: usize = 64;

pub(crate) fn default_true() -> bool {
    true
}

/// Aegis Edge agent configuration (usually `/etc/aegis/aegis.yaml`).
///
/// Only `device` and `pipeline` are required; every other section has
/// working defaults. The `pipeline` given here is the local default: when a
/// signed workflow is applied from the fleet, its pipeline replaces this one,
/// but all other sections always come from this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Identity of this device (required).
    pub device: DeviceConfig,
    /// Which compute backend runs the video pipeline.
    #[serde(default)]
    pub backend: BackendConfig,
    /// The default video pipeline: what to read, how to process it and where
    /// to write it (required). A signed workflow from the fleet supersedes it.
    pub pipeline: PipelineConfig,
    /// Local event and metadata database.
    #[serde(default)]
    pub store: StoreConfig,
    /// Connection to the fleet management broker (MQTT).
    #[serde(default)]
    pub fleet: FleetConfig,
    /// Local web server for health checks and Prometheus metrics.
    #[serde(default)]
    pub web: WebConfig,
    /// Streaming servers (the RTSP restream server).
    #[serde(default)]
    pub outputs: OutputsConfig,
    /// Optional auxiliary sensors (GPS, IMU).
    #[serde(default)]
    pub sensors: SensorsConfig,
    /// The inference runtime and the models the stages use.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// Signed MAML workflows: trust anchors, device policy and where the active
    /// workflow is kept.
    #[serde(default)]
    pub workflows: WorkflowsConfig,
    /// Logging output.
    #[serde(default)]
    pub log: LogConfig,
    /// When the agent counts as wedged (systemd's watchdog).
    #[serde(default)]
    pub watchdog: WatchdogConfig,
}

impl AgentConfig {
    /// Where the local API token lives (`web.token_file`, else `api.token` next to the
    /// store).
    pub fn token_path(&self) -> PathBuf {
        self.beside_store(&self.web.token_file, "api.token")
    }

    /// Where the web page's accounts live (`web.accounts_file`, else `accounts.json` next to
    /// the store).
    pub fn accounts_path(&self) -> PathBuf {
        self.beside_store(&self.web.accounts_file, "accounts.json")
    }

    /// `set`, else `name` in the store's folder.
    fn beside_store(&self, set: &Option<PathBuf>, name: &str) -> PathBuf {
        match set {
            Some(p) => p.clone(),
            None => self
                .store
                .path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from(name), |d| d.join(name)),
        }
    }
}
