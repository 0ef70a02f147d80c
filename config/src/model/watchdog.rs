//! The `watchdog` section: when the agent counts as wedged (systemd's watchdog).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_stall_s() -> u32 {
    60
}

fn default_applier_stall_s() -> u32 {
    900
}

/// When the agent counts as wedged. Under systemd with `WatchdogSec=`, the agent sends its
/// keep-alives only while nothing has been busy on one item for longer than these limits;
/// once something has, the keep-alives stop and systemd restarts the agent. A camera that
/// sends nothing is not busy: a dead camera never restarts the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Longest a stream's stage or sink thread may work on one frame, in seconds
    /// (1 to 3600).
    #[serde(default = "default_stall_s")]
    pub stall_s: u32,
    /// Longest the workflow applier may work on one message (verify, load models,
    /// switch, health check), in seconds (10 to 86400).
    #[serde(default = "default_applier_stall_s")]
    pub applier_stall_s: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        Self {
            stall_s: default_stall_s(),
            applier_stall_s: default_applier_stall_s(),
        }
    }
}
