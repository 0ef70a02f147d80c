//! The `workflows` section: trust anchors, policy and health checks of signed workflows.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

fn default_workflow_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/aegis/workflows")
}

fn default_keys_dir() -> PathBuf {
    PathBuf::from("/var/lib/aegis/keys")
}

fn default_threshold() -> u32 {
    1
}

fn default_trust_file() -> PathBuf {
    PathBuf::from("/etc/aegis/trust.json")
}

fn default_algorithms() -> Vec<String> {
    vec!["ml-dsa-65".into()]
}

fn default_policy_paths() -> Vec<PathBuf> {
    vec![PathBuf::from("/var/lib/aegis")]
}

fn default_policy_models() -> Vec<String> {
    vec!["*".into()]
}

fn default_max_sequence_jump() -> u64 {
    1000
}

fn default_max_clock_skew_s() -> u32 {
    300
}

fn default_health_window_s() -> f64 {
    3.0
}

fn default_health_frames() -> u32 {
    5
}

fn default_health_error_ratio() -> f64 {
    0.2
}

/// Signed workflows (see docs/security.md). Off by default: the local
/// pipeline always runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowsConfig {
    /// Accept signed workflows from the fleet topics, `aegis workflow apply`
    /// and the web page.
    #[serde(default)]
    pub enabled: bool,
    /// Where the active and previous workflows and the anti-replay state are
    /// kept (persistent storage, not on the A/B firmware slots).
    #[serde(default = "default_workflow_state_dir")]
    pub state_dir: PathBuf,
    /// This device's keys, as written by `aegis provision` (`device.key`,
    /// `device.kem.key`, `group.*.kem.key`).
    #[serde(default = "default_keys_dir")]
    pub keys_dir: PathBuf,
    /// The trust anchors.
    #[serde(default)]
    pub trust: TrustAnchors,
    /// What a workflow may do on this device.
    #[serde(default)]
    pub policy: WorkflowPolicy,
    /// How a newly applied workflow is judged before it is kept.
    #[serde(default)]
    pub health: HealthCheckConfig,
    /// Let the technician web page change the local default pipeline (its
    /// config editor and camera forms) while this device is fleet-managed
    /// (`fleet.enabled` with workflows on). Off: on a fleet-managed device
    /// the pipeline comes from signed workflows only, and local pipeline
    /// edits are refused. Devices that are not fleet-managed accept local
    /// edits whatever this says. Read at start: a change takes effect after
    /// a restart.
    #[serde(default)]
    pub allow_local_edits: bool,
    /// Signed model bundles from the fleet (docs/models.md).
    #[serde(default)]
    pub models: ModelDeliveryConfig,
    /// Signed firmware orders: A/B image updates (docs/appliance.md).
    #[serde(default)]
    pub firmware: FirmwareConfig,
}

fn default_models_budget_mb() -> u64 {
    2048
}

fn default_max_bundle_mb() -> u64 {
    512
}

fn default_mqtt_stall_s() -> u64 {
    600
}

fn default_true() -> bool {
    true
}

/// Model delivery: bundles announced on the device's or a group's models topic, their
/// signed manifest checked before anything is downloaded (docs/models.md). Needs
/// `workflows.enabled` (it uses the same trust, keys and receipts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelDeliveryConfig {
    /// Accept model announcements (with workflows enabled).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where installed bundles, the staging area and the model state are kept
    /// (persistent storage, not on the A/B firmware slots). Absent: `models` under
    /// `workflows.state_dir`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Disk budget of installed plus staged bundles, MiB.
    #[serde(default = "default_models_budget_mb")]
    pub budget_mb: u64,
    /// Largest bundle accepted, MiB.
    #[serde(default = "default_max_bundle_mb")]
    pub max_bundle_mb: u64,
    /// Hosts a bundle may be downloaded from (rules of `policy.source_hosts`). Empty:
    /// bundles come over MQTT only.
    #[serde(default)]
    pub download_hosts: Vec<String>,
    /// Refuse plain-HTTP downloads (files are verified against the signed manifest
    /// either way).
    #[serde(default = "default_true")]
    pub https_only: bool,
    /// PEM file of the CA that download servers' certificates must chain to; absent:
    /// Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// This device's module for TensorRT engines (`jetson-orin-nx-16gb`); absent: no
    /// engine is accepted.
    #[serde(default)]
    pub module: Option<String>,
    /// The TensorRT version engines must be built with (`10.3.0`); absent: none.
    #[serde(default)]
    pub trt_version: Option<String>,
    /// A bundle announced without a URL comes over the fleet broker in chunks; the
    /// transfer ends when no chunk was accepted for this many seconds (its parts are kept:
    /// the next delivery of the announcement resumes them).
    #[serde(default = "default_mqtt_stall_s")]
    pub mqtt_stall_s: u64,
}

impl Default for ModelDeliveryConfig {
    fn default() -> Self {
        ModelDeliveryConfig {
            enabled: true,
            dir: None,
            budget_mb: default_models_budget_mb(),
            max_bundle_mb: default_max_bundle_mb(),
            download_hosts: Vec::new(),
            https_only: true,
            ca_file: None,
            module: None,
            trt_version: None,
            mqtt_stall_s: default_mqtt_stall_s(),
        }
    }
}

fn default_max_image_mb() -> u64 {
    4096
}

fn default_trial_s() -> u32 {
    120
}

fn default_version_file() -> PathBuf {
    PathBuf::from("/usr/lib/aegis/firmware-version")
}

fn default_helper_timeout_s() -> u32 {
    3600
}

/// Which A/B updater installs firmware images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareUpdaterKind {
    /// The real `swupdate` writes the inactive slot, `nvbootctrl` switches and
    /// confirms slots (OE4T tegra-demo-distro's SWUpdate layout).
    #[default]
    Swupdate,
    /// A simulated A/B board kept in a JSON file (`simulated_board`): tests and
    /// demonstrations only; it writes nothing but that file.
    Simulated,
}

/// Who runs the updater.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum FirmwarePrivilege {
    /// A privileged helper (`aegis firmware helper`, started as root by
    /// `aegis-firmware.path`) runs each updater step the agent asks for in
    /// `<dir>/helper`: the agent's service has no capabilities.
    #[default]
    Helper,
    /// The agent runs the updater itself (it must then run as root).
    Direct,
}

/// `swupdate` and `nvbootctrl` as the device runs them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwUpdateSettings {
    /// The swupdate binary.
    #[serde(default = "default_swupdate_binary")]
    pub binary: PathBuf,
    /// The certificate (PEM) images must be signed by (swupdate `-k`).
    #[serde(default = "default_swupdate_certificate")]
    pub certificate: PathBuf,
    /// The software set of `sw-description` (the mode is `slot_a`/`slot_b`).
    #[serde(default = "default_software_set")]
    pub software_set: String,
    /// swupdate `-H BOARD:REVISION` (absent: it reads `/etc/hwrevision`).
    #[serde(default)]
    pub hwrevision: Option<String>,
    /// swupdate `-f`, its own configuration (absent: its default).
    #[serde(default)]
    pub config: Option<PathBuf>,
    /// The nvbootctrl binary.
    #[serde(default = "default_nvbootctrl")]
    pub nvbootctrl: PathBuf,
    /// `RootfsRetryCountMax` of the device (3 on r35/r36).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Longest swupdate run, seconds.
    #[serde(default = "default_swupdate_timeout_s")]
    pub timeout_s: u32,
    /// The command that reboots the device, program and arguments.
    #[serde(default = "default_reboot_command")]
    pub reboot_command: Vec<String>,
}

fn default_swupdate_binary() -> PathBuf {
    PathBuf::from("/usr/bin/swupdate")
}

fn default_swupdate_certificate() -> PathBuf {
    PathBuf::from("/etc/swupdate/signing-cert.pem")
}

fn default_software_set() -> String {
    "system".into()
}

fn default_nvbootctrl() -> PathBuf {
    PathBuf::from("/usr/sbin/nvbootctrl")
}

fn default_max_attempts() -> u32 {
    3
}

fn default_swupdate_timeout_s() -> u32 {
    1800
}

fn default_reboot_command() -> Vec<String> {
    vec!["/bin/systemctl".into(), "reboot".into()]
}

impl Default for SwUpdateSettings {
    fn default() -> Self {
        SwUpdateSettings {
            binary: default_swupdate_binary(),
            certificate: default_swupdate_certificate(),
            software_set: default_software_set(),
            hwrevision: None,
            config: None,
            nvbootctrl: default_nvbootctrl(),
            max_attempts: default_max_attempts(),
            timeout_s: default_swupdate_timeout_s(),
            reboot_command: default_reboot_command(),
        }
    }
}

/// Firmware A/B updates from signed orders on the device's and its groups' firmware
/// topics (docs/appliance.md). Needs `workflows.enabled` (same trust, keys, receipts).
/// Off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareConfig {
    /// Accept firmware orders (with workflows enabled).
    #[serde(default)]
    pub enabled: bool,
    /// The image family this device runs (orders for another are refused).
    #[serde(default)]
    pub image: String,
    /// This device's board (`jetson-orin-nano-devkit`), compared exactly with orders'.
    #[serde(default)]
    pub board: String,
    /// The updater.
    #[serde(default)]
    pub updater: FirmwareUpdaterKind,
    /// Who runs the updater.
    #[serde(default)]
    pub privilege: FirmwarePrivilege,
    /// File holding the running firmware's version (`MAJOR.MINOR.PATCH`), written into
    /// each image by its build (not used by the simulated updater: its board knows).
    #[serde(default = "default_version_file")]
    pub version_file: PathBuf,
    /// The firmware record, the downloaded image and the helper's spool (persistent
    /// storage, not on the A/B slots). Absent: `firmware` under `workflows.state_dir`.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// Largest image accepted, MiB.
    #[serde(default = "default_max_image_mb")]
    pub max_image_mb: u64,
    /// Hosts an image may be downloaded from (rules of `policy.source_hosts`). Empty:
    /// none (every order is refused).
    #[serde(default)]
    pub download_hosts: Vec<String>,
    /// Refuse plain-HTTP downloads (the image is checked against the signed order's
    /// SHA-256 either way).
    #[serde(default = "default_true")]
    pub https_only: bool,
    /// PEM file of the CA that download servers' certificates must chain to; absent:
    /// Mozilla's roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// After a reboot into a new image, how long the agent must run healthy (no stalled
    /// stage or applier, and the fleet broker reached when the fleet link is on) before
    /// it marks the new slot good, seconds.
    #[serde(default = "default_trial_s")]
    pub trial_s: u32,
    /// The longest wait for the privileged helper's answer to one step, seconds.
    #[serde(default = "default_helper_timeout_s")]
    pub helper_timeout_s: u32,
    /// With the `swupdate` updater: how it runs.
    #[serde(default)]
    pub swupdate: SwUpdateSettings,
    /// With the `simulated` updater: the board's JSON file (ignored by `swupdate`).
    #[serde(default)]
    pub simulated_board: Option<PathBuf>,
}

impl Default for FirmwareConfig {
    fn default() -> Self {
        FirmwareConfig {
            enabled: false,
            image: String::new(),
            board: String::new(),
            updater: FirmwareUpdaterKind::default(),
            privilege: FirmwarePrivilege::default(),
            version_file: default_version_file(),
            dir: None,
            max_image_mb: default_max_image_mb(),
            download_hosts: Vec::new(),
            https_only: true,
            ca_file: None,
            trial_s: default_trial_s(),
            helper_timeout_s: default_helper_timeout_s(),
            swupdate: SwUpdateSettings::default(),
            simulated_board: None,
        }
    }
}

impl WorkflowsConfig {
    /// The firmware directory: `firmware.dir`, else `firmware` under `state_dir`.
    pub fn firmware_dir(&self) -> PathBuf {
        self.firmware
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("firmware"))
    }

    /// The model store's directory: `models.dir`, else `models` under `state_dir`.
    pub fn models_dir(&self) -> PathBuf {
        self.models
            .dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("models"))
    }
}

impl Default for WorkflowsConfig {
    fn default() -> Self {
        WorkflowsConfig {
            enabled: false,
            state_dir: default_workflow_state_dir(),
            keys_dir: default_keys_dir(),
            trust: TrustAnchors::default(),
            policy: WorkflowPolicy::default(),
            health: HealthCheckConfig::default(),
            allow_local_edits: false,
            models: ModelDeliveryConfig::default(),
            firmware: FirmwareConfig::default(),
        }
    }
}

/// The root of trust installed at provisioning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrustAnchors {
    /// Root public key files (`chimera root init` writes `root.pub`). Only
    /// trust metadata signed by `threshold` of them is accepted.
    #[serde(default)]
    pub roots: Vec<PathBuf>,
    /// Root signatures needed (k of n).
    #[serde(default = "default_threshold")]
    pub threshold: u32,
    /// The signed trust metadata installed with the device. Newer versions
    /// received from the fleet are kept in `state_dir`.
    #[serde(default = "default_trust_file")]
    pub metadata: PathBuf,
}

impl Default for TrustAnchors {
    fn default() -> Self {
        TrustAnchors {
            roots: Vec::new(),
            threshold: default_threshold(),
            metadata: default_trust_file(),
        }
    }
}

/// Device policy: what a workflow may name. Decided here, never by the
/// workflow itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkflowPolicy {
    /// Signature algorithms accepted.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// Refuse workflows that are not sealed.
    #[serde(default)]
    pub require_sealing: bool,
    /// Hosts a network source may name: DNS names (compared without regard to case), IPv4
    /// or IPv6 addresses (compared as addresses), or `*` for any. The host is the one the
    /// strictly parsed URL names, which is the one libavformat connects to. Empty: workflows
    /// may not add network sources. (An entry `v4l2` no longer allows cameras: list their
    /// device nodes under `devices`.)
    #[serde(default)]
    pub source_hosts: Vec<String>,
    /// Hosts a workflow's `push` sink may send video to, with the rules of
    /// `source_hosts`. Empty: workflows may not push video off the device.
    #[serde(default)]
    pub output_hosts: Vec<String>,
    /// Camera device nodes a `v4l2` source of a workflow may open, as absolute paths
    /// compared exactly (e.g. `/dev/video0`). Empty: workflows may not open cameras.
    #[serde(default)]
    pub devices: Vec<PathBuf>,
    /// Directories that file sources, recordings and background images of a
    /// workflow must be under.
    #[serde(default = "default_policy_paths")]
    pub paths: Vec<PathBuf>,
    /// Model names a workflow may require (`*` = any).
    #[serde(default = "default_policy_models")]
    pub models: Vec<String>,
    /// Largest accepted step of a workflow's sequence number (a bigger jump is
    /// a fast-forward attack).
    #[serde(default = "default_max_sequence_jump")]
    pub max_sequence_jump: u64,
    /// Seconds a workflow's `issued_at` may be ahead of this device's clock.
    #[serde(default = "default_max_clock_skew_s")]
    pub max_clock_skew_s: u32,
}

impl Default for WorkflowPolicy {
    fn default() -> Self {
        WorkflowPolicy {
            algorithms: default_algorithms(),
            require_sealing: false,
            source_hosts: Vec::new(),
            output_hosts: Vec::new(),
            devices: Vec::new(),
            paths: default_policy_paths(),
            models: default_policy_models(),
            max_sequence_jump: default_max_sequence_jump(),
            max_clock_skew_s: default_max_clock_skew_s(),
        }
    }
}

/// The health check of a newly applied workflow. It needs neither the broker
/// nor a camera: a stream whose source delivers nothing is judged on its
/// build alone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Longest time the check watches the new pipeline, in seconds.
    #[serde(default = "default_health_window_s")]
    pub window_s: f64,
    /// Frames per stream after which the verdict is known (earlier than
    /// `window_s` when frames flow).
    #[serde(default = "default_health_frames")]
    pub frames: u32,
    /// Largest share of frames a stage may fail on before the workflow is
    /// rolled back (0 to 1).
    #[serde(default = "default_health_error_ratio")]
    pub max_error_ratio: f64,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            window_s: default_health_window_s(),
            frames: default_health_frames(),
            max_error_ratio: default_health_error_ratio(),
        }
    }
}
