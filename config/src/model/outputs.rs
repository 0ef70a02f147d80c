//! The `outputs` section: the device's streaming servers (the RTSP restream server). Which
//! streams they serve, and where streams are pushed, is the pipeline's choice (the
//! `restream` and `push` sinks, which a signed workflow may set); the listening ports and the
//! accounts are the device's (this file only).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Secret;
use crate::model::default_true;

/// Default listen address of the RTSP server.
const DEFAULT_RTSP_LISTEN: &str = "0.0.0.0:8554";
/// Default most RTSP sessions at once.
const DEFAULT_RTSP_MAX_CLIENTS: u32 = 16;

fn default_rtsp_listen() -> String {
    DEFAULT_RTSP_LISTEN.to_owned()
}

fn default_rtsp_max_clients() -> u32 {
    DEFAULT_RTSP_MAX_CLIENTS
}

/// The streaming servers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputsConfig {
    /// The RTSP server for VMSs and players (`rtsp://device:8554/<stream>`): the
    /// streams of the pipeline's `restream` sink, encoded once (the recorder's
    /// H.264). Omit for no server.
    #[serde(default)]
    pub rtsp: Option<RtspServerConfig>,
    /// WebRTC transport (the `webrtc` sink's WHEP sessions and the `whip`
    /// sources' publishers). Omit for a UDP port per session.
    #[serde(default)]
    pub webrtc: Option<WebRtcServerConfig>,
}

/// WebRTC transport (`outputs.webrtc`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebRtcServerConfig {
    /// One UDP address for the media of every WebRTC session, as IP:PORT
    /// (e.g. 0.0.0.0:8189): one port to open in a firewall. Omit for an
    /// ephemeral port per session. Taken at start.
    #[serde(default)]
    pub udp: Option<String>,
}

/// The RTSP restream server (`outputs.rtsp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtspServerConfig {
    /// Address and port to listen on, as `IP:PORT`.
    #[serde(default = "default_rtsp_listen")]
    pub listen: String,
    /// Accounts a client must authenticate as (HTTP Digest, as cameras use;
    /// the password never crosses the network). At least one, unless
    /// `anonymous` is on.
    #[serde(default)]
    pub users: Vec<RtspUser>,
    /// Serve without authentication (only on a closed network).
    #[serde(default)]
    pub anonymous: bool,
    /// Offer RTP over UDP besides TCP-interleaved.
    #[serde(default = "default_true")]
    pub udp: bool,
    /// Most sessions at once (1 to 256); more are refused with 453.
    #[serde(default = "default_rtsp_max_clients")]
    pub max_clients: u32,
}

/// One account of the RTSP server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RtspUser {
    /// User name (1 to 64 characters, no `:` or `"`).
    pub name: String,
    /// Password (at least 8 characters). Never logged or shown: it prints as
    /// `***`.
    pub password: Secret,
}
