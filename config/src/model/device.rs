//! The `device` section: who this device is.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Identity of this device within the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Unique device id, used in MQTT topics and recordings: 1 to 64
    /// characters of lowercase letters, digits, `-` and `_`
    /// (for example `lobby-orin-01`).
    pub id: String,
    /// Optional human-friendly name shown in dashboards (any text).
    #[serde(default)]
    pub name: Option<String>,
    /// Fleet groups this device belongs to, for targeting workflows and
    /// updates. Same character rules as `id`.
    #[serde(default)]
    pub groups: Vec<String>,
}
