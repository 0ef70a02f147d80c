//! The `store` section: the local event database.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Default location of the local event database.
const DEFAULT_STORE_PATH: &str = "/var/lib/aegis/aegis.db";

fn default_store_path() -> PathBuf {
    PathBuf::from(DEFAULT_STORE_PATH)
}

fn default_retention_days() -> u32 {
    30
}

fn default_store_budget_mb() -> u64 {
    512
}

fn default_outbox_max_rows() -> u64 {
    100_000
}

fn default_store_queue() -> u32 {
    4096
}

/// Local event and metadata database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Path of the database file (its directory must be writable).
    #[serde(default = "default_store_path")]
    pub path: PathBuf,
    /// Delete events, metrics and audit rows older than this many days
    /// (1 to 3650).
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// Keep the database under this size in MiB by deleting the oldest
    /// events and metrics first (16 to 1048576).
    #[serde(default = "default_store_budget_mb")]
    pub size_budget_mb: u64,
    /// Most messages waiting for the fleet broker; beyond it the oldest are
    /// dropped (counted and logged). 100 to 10000000.
    #[serde(default = "default_outbox_max_rows")]
    pub outbox_max_rows: u64,
    /// Records waiting for the database writer; when full (the disk cannot
    /// keep up) new records are dropped and counted, frames never wait.
    /// 64 to 1000000.
    #[serde(default = "default_store_queue")]
    pub queue: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: default_store_path(),
            retention_days: default_retention_days(),
            size_budget_mb: default_store_budget_mb(),
            outbox_max_rows: default_outbox_max_rows(),
            queue: default_store_queue(),
        }
    }
}
