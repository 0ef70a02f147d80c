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

use std::ops::RangeInclusive;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::stages::StageConfig;

// ---------------------------------------------------------------------------
// Defaults and limits. Kept together so they are easy to audit.
// ---------------------------------------------------------------------------

/// Longest allowed device, group or source id, in characters.
pub(crate) const MAX_ID_LEN: usize = 64;
/// CUDA device index used when `backend.cuda_device` is omitted.
const DEFAULT_CUDA_DEVICE: u32 = 0;
/// Frame surfaces per stream pool when `pipeline.pool_frames` is omitted.
const DEFAULT_POOL_FRAMES: u32 = 8;
/// Allowed range of `pipeline.pool_frames`.
pub(crate) const POOL_FRAMES_RANGE: RangeInclusive<u32> = 2..=64;
/// Channel depth between pipeline tasks when `pipeline.queue_depth` is omitted.
const DEFAULT_QUEUE_DEPTH: u32 = 4;
/// Allowed range of `pipeline.queue_depth`.
pub(crate) const QUEUE_DEPTH_RANGE: RangeInclusive<u32> = 1..=64;
/// Default recording segment length in seconds.
const DEFAULT_SEGMENT_SECONDS: f64 = 10.0;
/// Allowed range of `record.segment_seconds`.
pub(crate) const SEGMENT_SECONDS_RANGE: RangeInclusive<f64> = 1.0..=3600.0;
/// Default disk budget of a recorder, in MiB.
const DEFAULT_DISK_BUDGET_MB: u64 = 1024;
/// Smallest allowed `record.disk_budget_mb`.
pub(crate) const MIN_DISK_BUDGET_MB: u64 = 1;
/// Default encoder preset.
const DEFAULT_PRESET: &str = "ultrafast";
/// Encoder presets accepted by `encoder.preset`, fastest first.
pub(crate) const PRESETS: &[&str] = &[
    "ultrafast",
    "superfast",
    "veryfast",
    "faster",
    "fast",
    "medium",
    "slow",
    "slower",
    "veryslow",
];
/// Default encoder bitrate in kbit/s.
const DEFAULT_BITRATE_KBPS: u32 = 4000;
/// Allowed range of `encoder.bitrate_kbps`.
pub(crate) const BITRATE_KBPS_RANGE: RangeInclusive<u32> = 100..=200_000;
/// Default keyframe interval in frames.
const DEFAULT_GOP_FRAMES: u32 = 60;
/// Allowed range of `encoder.gop_frames`.
pub(crate) const GOP_FRAMES_RANGE: RangeInclusive<u32> = 1..=1000;
/// Default encoder thread count (0 = automatic).
const DEFAULT_ENCODER_THREADS: u32 = 0;
/// Largest allowed `encoder.threads`.
pub(crate) const MAX_ENCODER_THREADS: u32 = 64;
/// Default location of the local event database.
const DEFAULT_STORE_PATH: &str = "/var/lib/aegis/aegis.db";
/// Default MQTT broker.
const DEFAULT_BROKER_URL: &str = "mqtt://127.0.0.1:1883";
/// Default MQTT keepalive in seconds.
const DEFAULT_KEEPALIVE_S: u32 = 30;
/// Allowed range of `fleet.keepalive_s`.
pub(crate) const KEEPALIVE_S_RANGE: RangeInclusive<u32> = 5..=3600;
/// Default listen address of the local web server.
const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8080";
/// Default ONNX Runtime library (where the Yocto layer and the Debian
/// package install it).
const DEFAULT_ORT_RUNTIME: &str = "/usr/lib/aegis/libonnxruntime.so";
/// Default log filter.
const DEFAULT_LOG_LEVEL: &str = "info";

fn default_iot_broker() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_imu_rate() -> f64 {
    100.0
}
fn default_iot_field() -> String {
    "value".into()
}
fn default_uere() -> f64 {
    2.5
}
fn default_accel_noise() -> f64 {
    0.5
}
fn default_gyro_noise() -> f64 {
    0.02
}
fn default_gate() -> f64 {
    13.8
}
fn default_reorder_ms() -> u32 {
    200
}
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
fn default_backend_kind() -> BackendKind {
    BackendKind::Cpu
}
fn default_fallback() -> Option<BackendKind> {
    Some(BackendKind::Cpu)
}
fn default_cuda_device() -> u32 {
    DEFAULT_CUDA_DEVICE
}
pub(crate) fn default_pool_frames() -> u32 {
    DEFAULT_POOL_FRAMES
}
pub(crate) fn default_queue_depth() -> u32 {
    DEFAULT_QUEUE_DEPTH
}
pub(crate) fn default_true() -> bool {
    true
}
fn default_segment_seconds() -> f64 {
    DEFAULT_SEGMENT_SECONDS
}
fn default_disk_budget_mb() -> u64 {
    DEFAULT_DISK_BUDGET_MB
}
fn default_preset() -> String {
    DEFAULT_PRESET.to_owned()
}
fn default_bitrate_kbps() -> u32 {
    DEFAULT_BITRATE_KBPS
}
fn default_gop_frames() -> u32 {
    DEFAULT_GOP_FRAMES
}
fn default_encoder_threads() -> u32 {
    DEFAULT_ENCODER_THREADS
}
fn default_store_path() -> PathBuf {
    PathBuf::from(DEFAULT_STORE_PATH)
}
fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.to_owned()
}
fn default_keepalive_s() -> u32 {
    DEFAULT_KEEPALIVE_S
}
fn default_web_listen() -> String {
    DEFAULT_WEB_LISTEN.to_owned()
}
fn default_log_level() -> String {
    DEFAULT_LOG_LEVEL.to_owned()
}
fn default_ca_file() -> PathBuf {
    PathBuf::from("/etc/ssl/certs/ca-certificates.crt")
}
fn default_telemetry_s() -> u32 {
    30
}
fn default_inflight() -> u32 {
    100
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
fn default_model_version() -> u32 {
    1
}
fn default_ort_runtime() -> PathBuf {
    PathBuf::from(DEFAULT_ORT_RUNTIME)
}
fn default_max_batch() -> u32 {
    8
}
fn default_batch_window_ms() -> u32 {
    4
}

// ---------------------------------------------------------------------------
// Root
// ---------------------------------------------------------------------------

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
}

// ---------------------------------------------------------------------------
// Device
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// Compute backend selection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// Backend that runs decoding and processing: `cpu` (portable, always
    /// available), `cuda` (discrete NVIDIA GPU) or `jetson` (Jetson
    /// hardware engines).
    #[serde(default = "default_backend_kind")]
    pub kind: BackendKind,
    /// Backend to use when the vendor libraries for `kind` are missing.
    /// Defaults to `cpu`. Set to `null` to refuse to start instead of falling
    /// back. Must differ from `kind` (ignored when `kind` is `cpu`, which
    /// needs no vendor library).
    #[serde(default = "default_fallback")]
    pub fallback: Option<BackendKind>,
    /// Index of the GPU to use with the `cuda` backend (0 = first GPU).
    #[serde(default = "default_cuda_device")]
    pub cuda_device: u32,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            kind: default_backend_kind(),
            fallback: default_fallback(),
            cuda_device: default_cuda_device(),
        }
    }
}

/// A compute backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// Portable software implementation; always available.
    Cpu,
    /// NVIDIA CUDA on a discrete GPU.
    Cuda,
    /// NVIDIA Jetson hardware engines (NVDEC/NVENC/VIC).
    Jetson,
}

impl BackendKind {
    /// The name used in configuration files (`cpu`, `cuda`, `jetson`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Jetson => "jetson",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Pipeline
// ---------------------------------------------------------------------------

/// A video pipeline: every source stream passes through every stage, in
/// order, and is then delivered to every sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Video inputs (at least one). Each source becomes one stream.
    pub sources: Vec<SourceConfig>,
    /// Processing stages, applied in order to every stream.
    #[serde(default)]
    pub stages: Vec<StageConfig>,
    /// Outputs; every stream is delivered to every sink.
    #[serde(default)]
    pub sinks: Vec<SinkConfig>,
    /// Frame buffers allocated per stream (2 to 64). More buffers absorb
    /// bursts at the cost of memory.
    #[serde(default = "default_pool_frames")]
    pub pool_frames: u32,
    /// Frames that may wait between two pipeline steps (1 to 64). Must be
    /// smaller than `pool_frames`, otherwise the queues can hold every buffer
    /// and the decoder stalls.
    #[serde(default = "default_queue_depth")]
    pub queue_depth: u32,
    /// Rules over this pipeline's video metadata and the sensors (in
    /// addition to `sensors.rules`; a workflow can carry them).
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One video input.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Stream id, unique within the pipeline: 1 to 64 characters of
    /// lowercase letters, digits, `-` and `_` (for example `cam0`).
    pub id: String,
    /// Where to read video from: `file:///absolute/path.mp4`,
    /// `file:relative/path.mp4` or a plain path for files;
    /// `rtsp://host/path` or `rtsps://…` for IP cameras; `srt://host:port`
    /// and `rtmp://host/app/key` for contribution encoders;
    /// `v4l2:///dev/video0` for local cameras. Prefer `username`/`password`
    /// over credentials in the URL.
    pub url: String,
    /// RTP transport for `rtsp` sources: `tcp` (interleaved in the RTSP
    /// connection; works through NAT and firewalls) or `udp`.
    #[serde(default)]
    pub transport: RtspTransport,
    /// User name for `rtsp` sources (digest or basic authentication).
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `rtsp` sources. Never logged or shown: it prints as
    /// `***`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// What to ask of a `v4l2` camera (size, rate, pixel format); omit for
    /// the best mode up to 1080p30.
    #[serde(default)]
    pub capture: Option<CaptureConfig>,
    /// Restart a file source from the beginning when it ends.
    #[serde(default, rename = "loop")]
    pub loop_: bool,
    /// Pace frames at the clip's native frame rate instead of as fast as
    /// possible (use for demos; leave off for benchmarks).
    #[serde(default)]
    pub realtime: bool,
    /// Stop the source after this many frames (omit for no limit).
    #[serde(default)]
    pub max_frames: Option<u64>,
}

/// The capture mode wanted from a V4L2 camera. Unset fields mean "the best
/// the camera offers" (up to 1920x1080 at 30 fps); the closest mode is taken
/// when the exact one does not exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureConfig {
    /// Frame width in pixels (give with `height`).
    #[serde(default)]
    pub width: Option<u32>,
    /// Frame height in pixels (give with `width`).
    #[serde(default)]
    pub height: Option<u32>,
    /// Frames per second.
    #[serde(default)]
    pub fps: Option<f64>,
    /// Only this pixel format: `mjpeg`, `yuyv`, `nv12` or `h264`.
    #[serde(default)]
    pub format: Option<CaptureFormat>,
}

/// Pixel formats a V4L2 camera can be asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CaptureFormat {
    /// Motion JPEG.
    Mjpeg,
    /// Packed YUYV 4:2:2.
    Yuyv,
    /// NV12 (CSI cameras through the Jetson ISP).
    Nv12,
    /// H.264 encoded by the camera.
    H264,
}

/// RTP transport of an RTSP source.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RtspTransport {
    /// RTP interleaved in the RTSP TCP connection.
    #[default]
    Tcp,
    /// RTP over UDP.
    Udp,
}

/// A secret string (camera password): `Debug` prints `***`, so configs can be logged.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself; only for handing it to the protocol that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Prints network URLs [redacted](crate::url::NetUrl::redacted) (no user information, no
/// query: they may hold credentials or SRT passphrases), URLs that do not parse as
/// `<invalid URL>`, and the password as `***`, so configs can be logged.
impl std::fmt::Debug for SourceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.try_location() {
            Ok(SourceLocation::Rtsp(u) | SourceLocation::Srt(u) | SourceLocation::Rtmp(u)) => {
                u.redacted()
            }
            Ok(SourceLocation::File(_) | SourceLocation::V4l2(_)) => self.url.clone(),
            Err(_) => "<invalid URL>".to_owned(),
        };
        f.debug_struct("SourceConfig")
            .field("id", &self.id)
            .field("url", &url)
            .field("loop", &self.loop_)
            .field("realtime", &self.realtime)
            .field("max_frames", &self.max_frames)
            .field("transport", &self.transport)
            .field("username", &self.username)
            .field("password", &self.password)
            .field("capture", &self.capture)
            .finish()
    }
}

/// Where a source reads its video from, parsed from [`SourceConfig::url`].
///
/// Network URLs are held parsed ([`NetUrl`](crate::url::NetUrl)): the policy checks the
/// parsed host, and libavformat receives [`NetUrl::to_libav`](crate::url::NetUrl::to_libav),
/// the canonical re-serialisation of exactly what was checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// A video file (absolute, or relative to the agent's working directory).
    File(PathBuf),
    /// An RTSP or RTSPS stream.
    Rtsp(crate::url::NetUrl),
    /// An SRT stream (`srt://host:port?mode=caller…`), MPEG-TS inside.
    Srt(crate::url::NetUrl),
    /// An RTMP or RTMPS stream.
    Rtmp(crate::url::NetUrl),
    /// A Video4Linux2 capture device: an absolute path such as `/dev/video0`, without `.`,
    /// `..` or empty components.
    V4l2(PathBuf),
}

impl SourceConfig {
    /// Source `id` reading `url`, every other option at the default a config file gets
    /// when it leaves the option out.
    pub fn new(id: impl Into<String>, url: impl Into<String>) -> Self {
        SourceConfig {
            id: id.into(),
            url: url.into(),
            transport: RtspTransport::default(),
            username: None,
            password: None,
            capture: None,
            loop_: false,
            realtime: false,
            max_frames: None,
        }
    }

    /// The parsed location of this source.
    ///
    /// Meaningful on a validated configuration (validation rejects every URL
    /// that does not parse); an unparseable URL is treated as a file path. Security checks
    /// use [`SourceConfig::try_location`], which fails instead.
    pub fn location(&self) -> SourceLocation {
        self.try_location()
            .unwrap_or_else(|_| SourceLocation::File(PathBuf::from(&self.url)))
    }

    /// The parsed location of this source, or the reason the URL does not parse.
    pub fn try_location(&self) -> Result<SourceLocation, String> {
        crate::validate::parse_source_url(&self.url)
    }
}

/// An output, selected by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Encodes every stream and writes it to disk as fixed-length segments,
    /// deleting the oldest segments to stay within a disk budget.
    Record(RecordSink),
    /// Counts frames and drops them (for benchmarks and tests).
    Discard(DiscardSink),
}

/// Settings of the `record` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordSink {
    /// Directory for recordings (created if missing); one sub-directory per
    /// stream.
    pub dir: PathBuf,
    /// Length of each recorded file, in seconds (1 to 3600).
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: f64,
    /// Disk space the recordings may use, in MiB (at least 1). The oldest
    /// segments are deleted when it is exceeded.
    #[serde(default = "default_disk_budget_mb")]
    pub disk_budget_mb: u64,
    /// Video encoder settings.
    #[serde(default)]
    pub encoder: EncoderConfig,
}

/// Settings of the `discard` sink (it has none).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscardSink {}

/// Video encoder settings for recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Video codec. Only `h264` is available.
    #[serde(default)]
    pub codec: VideoCodec,
    /// Speed/quality trade-off: `ultrafast`, `superfast`, `veryfast`,
    /// `faster`, `fast`, `medium`, `slow`, `slower` or `veryslow`. Faster
    /// presets use less CPU but produce larger files.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// Target bitrate in kbit/s (100 to 200000).
    #[serde(default = "default_bitrate_kbps")]
    pub bitrate_kbps: u32,
    /// Keyframe interval in frames (1 to 1000). Smaller values make seeking
    /// faster and files larger.
    #[serde(default = "default_gop_frames")]
    pub gop_frames: u32,
    /// Encoder threads per stream (0 = the CPU cores divided among the streams, at least 1;
    /// at most 64).
    #[serde(default = "default_encoder_threads")]
    pub threads: u32,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::default(),
            preset: default_preset(),
            bitrate_kbps: default_bitrate_kbps(),
            gop_frames: default_gop_frames(),
            threads: default_encoder_threads(),
        }
    }
}

/// A video codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VideoCodec {
    /// H.264 / AVC.
    #[default]
    H264,
}

// ---------------------------------------------------------------------------
// Store, fleet, web, sensors, log
// ---------------------------------------------------------------------------

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

/// Connection to the fleet management broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Connect to the fleet broker. When off, the device runs standalone with
    /// its local pipeline.
    #[serde(default)]
    pub enabled: bool,
    /// Broker address: `mqtt://host:port` or `mqtts://host:port` (TLS).
    #[serde(default = "default_broker_url")]
    pub broker_url: String,
    /// MQTT keepalive interval in seconds (5 to 3600).
    #[serde(default = "default_keepalive_s")]
    pub keepalive_s: u32,
    /// MQTT client id (default: the device id).
    #[serde(default)]
    pub client_id: Option<String>,
    /// Broker user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Broker password (never logged).
    #[serde(default)]
    pub password: Option<Secret>,
    /// Seconds between telemetry messages (1 to 3600).
    #[serde(default = "default_telemetry_s")]
    pub telemetry_s: u32,
    /// Most messages in flight (sent, not yet acknowledged), 1 to 1000.
    #[serde(default = "default_inflight")]
    pub inflight: u32,
    /// TLS for `mqtts://` brokers (server verification, optional client
    /// certificate).
    #[serde(default)]
    pub tls: FleetTls,
}

/// TLS settings of the fleet link (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetTls {
    /// CA certificates that may sign the broker's certificate.
    #[serde(default = "default_ca_file")]
    pub ca_file: PathBuf,
    /// This device's certificate (with `key_file`: mutual TLS, as AWS IoT
    /// Core requires).
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    /// This device's private key.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

impl Default for FleetTls {
    fn default() -> Self {
        FleetTls {
            ca_file: default_ca_file(),
            cert_file: None,
            key_file: None,
        }
    }
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            broker_url: default_broker_url(),
            keepalive_s: default_keepalive_s(),
            client_id: None,
            username: None,
            password: None,
            telemetry_s: default_telemetry_s(),
            inflight: default_inflight(),
            tls: FleetTls::default(),
        }
    }
}

/// Local web server (health and metrics endpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address and port to listen on, as `IP:PORT` (for example
    /// `127.0.0.1:8080`, or `0.0.0.0:8080` to accept remote connections).
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// Serve `/metrics` without a credential. When off, scrapers send the
    /// local API token (`Authorization: Bearer …`, Prometheus'
    /// `authorization.credentials_file`).
    #[serde(default = "default_true")]
    pub metrics_public: bool,
    /// The local API token file: `POST /workflow` (and `/metrics` unless
    /// public) need `Authorization: Bearer <its contents>`. Created (0600,
    /// 256 random bits) at first start; `aegis workflow apply` reads it.
    /// Default: `api.token` next to `store.path`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            metrics_public: default_true(),
            token_file: None,
        }
    }
}

impl AgentConfig {
    /// Where the local API token lives (`web.token_file`, else `api.token` next to the
    /// store).
    pub fn token_path(&self) -> PathBuf {
        match &self.web.token_file {
            Some(p) => p.clone(),
            None => self
                .store
                .path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("api.token"), |d| d.join("api.token")),
        }
    }
}

/// Where ONNX Runtime runs the models.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum InferenceProvider {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// NVIDIA CUDA (`backend.cuda_device` picks the GPU).
    Cuda,
    /// NVIDIA TensorRT through ONNX Runtime (CUDA for the rest of the graph).
    Tensorrt,
}

/// TensorRT options, passed through to ONNX Runtime's TensorRT provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TensorRtOptions {
    /// Cache built engines (and timing data) here; building takes minutes.
    #[serde(default)]
    pub engine_cache_dir: Option<PathBuf>,
    /// Build fp16 engines.
    #[serde(default)]
    pub fp16: bool,
    /// Build int8 engines (needs `int8_calibration_table`).
    #[serde(default)]
    pub int8: bool,
    /// The int8 calibration table's file name.
    #[serde(default)]
    pub int8_calibration_table: Option<String>,
}

/// What a model is (fixes its pre- and post-processing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ModelKindConfig {
    /// MediaPipe selfie segmentation converted to ONNX (input 256).
    SelfieSegmentation,
    /// NudeNet 320n (YOLOv8n, 18 built-in classes; input 320).
    Nudenet,
    /// Any Ultralytics YOLOv8-style detector (needs `labels`; input 640
    /// unless `input_size` says otherwise).
    Yolov8,
}

/// One model file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Name the stages use (same rules as ids).
    pub name: String,
    /// Version (what signed workflows require).
    #[serde(default = "default_model_version")]
    pub version: u32,
    /// Kind.
    pub kind: ModelKindConfig,
    /// The ONNX file.
    pub file: PathBuf,
    /// Expected SHA-256 (64 hex digits); a different file is refused at
    /// start-up.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Square input side in pixels (32 to 2048; default by kind).
    #[serde(default)]
    pub input_size: Option<u32>,
    /// Class names, one per line (required for `yolov8`).
    #[serde(default)]
    pub labels: Option<PathBuf>,
}

impl ModelConfig {
    /// The input side: configured, else the kind's.
    pub fn input_size(&self) -> u32 {
        self.input_size.unwrap_or(match self.kind {
            ModelKindConfig::SelfieSegmentation => 256,
            ModelKindConfig::Nudenet => 320,
            ModelKindConfig::Yolov8 => 640,
        })
    }
}

/// The inference runtime and models.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InferenceConfig {
    /// ONNX Runtime shared library, loaded at start-up (JetPack's on a
    /// Jetson; `just models` fetches the PyPI build for development).
    #[serde(default = "default_ort_runtime")]
    pub runtime: PathBuf,
    /// Execution provider.
    #[serde(default)]
    pub provider: InferenceProvider,
    /// Run on the CPU when the provider cannot be used (logged), instead of
    /// refusing to start.
    #[serde(default = "default_true")]
    pub cpu_fallback: bool,
    /// Threads per model session (0 = all cores).
    #[serde(default)]
    pub threads: u32,
    /// Most frames of different streams per inference call (1 to 64).
    #[serde(default = "default_max_batch")]
    pub max_batch: u32,
    /// How long a frame waits for the other streams' frames to batch with
    /// (0 to 100 ms).
    #[serde(default = "default_batch_window_ms")]
    pub batch_window_ms: u32,
    /// TensorRT options.
    #[serde(default)]
    pub tensorrt: TensorRtOptions,
    /// The models the stages may name.
    #[serde(default)]
    pub models: Vec<ModelConfig>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            runtime: default_ort_runtime(),
            provider: InferenceProvider::Cpu,
            cpu_fallback: true,
            threads: 0,
            max_batch: default_max_batch(),
            batch_window_ms: default_batch_window_ms(),
            tensorrt: TensorRtOptions::default(),
            models: Vec::new(),
        }
    }
}

/// Auxiliary sensors (BELUGA, see docs/sensors.md). Omit a sensor to disable it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorsConfig {
    /// GPS receiver (NMEA).
    #[serde(default)]
    pub gps: Option<GpsConfig>,
    /// Inertial measurement unit.
    #[serde(default)]
    pub imu: Option<ImuConfig>,
    /// IoT sensors publishing JSON on an MQTT broker (door contacts, PIR,
    /// temperature, ...).
    #[serde(default)]
    pub iot: Vec<IotSensorConfig>,
    /// The broker the IoT sensors publish to (usually the local one).
    #[serde(default = "default_iot_broker")]
    pub iot_broker_url: String,
    /// The GPS + IMU filter.
    #[serde(default)]
    pub fusion: FusionConfig,
    /// Rules over video metadata and sensor state that raise events.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

impl Default for SensorsConfig {
    fn default() -> Self {
        SensorsConfig {
            gps: None,
            imu: None,
            iot: Vec::new(),
            iot_broker_url: default_iot_broker(),
            fusion: FusionConfig::default(),
            rules: Vec::new(),
        }
    }
}

/// GPS receiver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GpsConfig {
    /// Where NMEA sentences come from: `serial:///dev/ttyTHS0?baud=9600`,
    /// `udp://0.0.0.0:10110` or `file:///path/to/log.nmea` (a replay, paced
    /// by the sentences' own times).
    pub url: String,
}

/// Inertial measurement unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImuConfig {
    /// Where samples come from: `file:///path/to/samples.csv` (a replay:
    /// `t,ax,ay,az,gx,gy,gz[,mx,my,mz]`, seconds, m/s², rad/s),
    /// `iio:///sys/bus/iio/devices/iio:device0` or `mqtt://topic/...` (JSON
    /// `{"accel":[x,y,z],"gyro":[x,y,z]}` on the IoT broker).
    pub url: String,
    /// How the IMU is mounted relative to the vehicle (x forward, y left, z
    /// up): yaw, pitch, roll in degrees.
    #[serde(default)]
    pub mounting_ypr_deg: [f64; 3],
    /// Polling rate of an `iio://` device, Hz (1 to 1000).
    #[serde(default = "default_imu_rate")]
    pub rate_hz: f64,
}

/// An IoT sensor on the MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IotSensorConfig {
    /// Name used by rules (same character rules as ids).
    pub name: String,
    /// MQTT topic it publishes on.
    pub topic: String,
    /// JSON field holding the value (`value` by default; the whole payload
    /// when it is a bare value). Booleans and the words open/on/true/detected
    /// read as 1, closed/off/false/clear as 0.
    #[serde(default = "default_iot_field")]
    pub field: String,
    /// Unit, for display (`°C`, `contact`, ...).
    #[serde(default)]
    pub unit: String,
    /// Smallest plausible value; readings outside the range are counted and
    /// ignored.
    #[serde(default)]
    pub min: Option<f64>,
    /// Largest plausible value.
    #[serde(default)]
    pub max: Option<f64>,
}

/// The GPS + IMU filter's noise parameters (docs/sensors.md explains each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FusionConfig {
    /// GPS position σ per axis at HDOP 1, metres.
    #[serde(default = "default_uere")]
    pub uere_m: f64,
    /// Acceleration process noise with an IMU, m/s².
    #[serde(default = "default_accel_noise")]
    pub accel_noise: f64,
    /// Yaw-rate process noise, rad/s.
    #[serde(default = "default_gyro_noise")]
    pub gyro_noise: f64,
    /// Outlier gate for fixes (Mahalanobis distance², 2 degrees of freedom).
    #[serde(default = "default_gate")]
    pub gate: f64,
    /// How long samples wait for late ones, milliseconds.
    #[serde(default = "default_reorder_ms")]
    pub reorder_ms: u32,
    /// Let consistent GPS time raise the trusted-time floor used by
    /// workflow expiry checks (never lowers it).
    #[serde(default = "default_true")]
    pub gps_time_floor: bool,
}

impl Default for FusionConfig {
    fn default() -> Self {
        FusionConfig {
            uere_m: default_uere(),
            accel_noise: default_accel_noise(),
            gyro_noise: default_gyro_noise(),
            gate: default_gate(),
            reorder_ms: default_reorder_ms(),
            gps_time_floor: true,
        }
    }
}

/// A rule: when `when` has held for `for_s` seconds, an event `rule` is
/// raised (once per episode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Name (in the event).
    pub name: String,
    /// The condition (`{all: [...]}`, `{track: {...}}`, ... : one key each).
    #[serde(with = "serde_yaml_ng::with::singleton_map_recursive")]
    #[schemars(with = "Condition")]
    pub when: Condition,
    /// Seconds the condition must hold continuously (0: at once).
    #[serde(default)]
    pub for_s: f64,
}

/// A rule condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Condition {
    /// Every condition holds.
    All(Vec<Condition>),
    /// At least one holds.
    Any(Vec<Condition>),
    /// The condition does not hold.
    Not(Box<Condition>),
    /// A tracked object with this label is visible (in the zone, if given).
    Track(TrackCondition),
    /// The frame has a moderation verdict.
    Moderation(ModerationCondition),
    /// An IoT sensor's value compares as given.
    Sensor(SensorCondition),
    /// The fused speed (m/s) compares as given.
    Speed(Comparison),
}

/// `track:` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrackCondition {
    /// Object label (`person`, `FACE_FEMALE`, ...).
    pub label: String,
    /// Polygon in image coordinates 0 to 1 (`[[x, y], ...]`, at least 3
    /// points); the box's bottom centre must be inside.
    #[serde(default)]
    pub zone: Option<Vec<[f64; 2]>>,
    /// Only this stream.
    #[serde(default)]
    pub stream: Option<String>,
}

/// `moderation:` condition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModerationCondition {
    /// Only this stream.
    #[serde(default)]
    pub stream: Option<String>,
}

/// `sensor:` condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorCondition {
    /// An `iot` sensor's name.
    pub name: String,
    /// The comparison.
    #[serde(flatten)]
    pub compare: Comparison,
}

/// Comparisons; every one given must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Comparison {
    /// Equal.
    #[serde(default)]
    pub eq: Option<f64>,
    /// Greater than.
    #[serde(default)]
    pub gt: Option<f64>,
    /// Less than.
    #[serde(default)]
    pub lt: Option<f64>,
    /// At least.
    #[serde(default)]
    pub ge: Option<f64>,
    /// At most.
    #[serde(default)]
    pub le: Option<f64>,
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

/// Logging output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Output format: `auto` (journald when started by systemd, otherwise
    /// human-readable), `human`, `json` or `journald`.
    #[serde(default)]
    pub format: LogFormat,
    /// Log filter, e.g. `info` or `info,aegis_hal=debug`: comma-separated
    /// levels (`off`, `error`, `warn`, `info`, `debug`, `trace`) and
    /// `target=level` directives; a bare word that is not a level is refused
    /// (tracing would read it as a target and log nothing else).
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// journald when running under systemd (`JOURNAL_STREAM` is set),
    /// otherwise `human`.
    #[default]
    Auto,
    /// Human-readable text lines.
    Human,
    /// One JSON object per line.
    Json,
    /// Native systemd journal fields.
    Journald,
}
