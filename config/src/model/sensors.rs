//! The `sensors` section: GPS, IMU, IoT sensors, fusion and rules.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::default_true;

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
