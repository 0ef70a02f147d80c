//! The `fleet` section: the MQTT broker connection.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Secret;

/// Default MQTT broker.
const DEFAULT_BROKER_URL: &str = "mqtt://127.0.0.1:1883";

/// Default MQTT keepalive in seconds.
const DEFAULT_KEEPALIVE_S: u32 = 30;

/// Allowed range of `fleet.keepalive_s`.
pub(crate) const KEEPALIVE_S_RANGE: RangeInclusive<u32> = 5..=3600;

fn default_broker_url() -> String {
    DEFAULT_BROKER_URL.to_owned()
}

fn default_keepalive_s() -> u32 {
    DEFAULT_KEEPALIVE_S
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
