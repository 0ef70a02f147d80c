//! The `outputs` section: the device's streaming servers (the RTSP restream server, the
//! WebRTC port, the HLS clients' tokens). Which
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
    /// Machine clients of the `hls` sink's streams (a CDN's origin pull, a VMS, a
    /// player): each with a token of its own, so no web session is needed. Omit for
    /// logged-in viewers only.
    #[serde(default)]
    pub hls: Option<HlsServerConfig>,
}

/// HLS for machines (`outputs.hls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HlsServerConfig {
    /// The clients that may read `/hls/<stream>/...` with their token instead of a
    /// session: `Authorization: Bearer <token>`, or HTTP Basic with the client's name and
    /// token (players that take `http://name:token@device/...`). Read-only: the token
    /// admits the HLS files and nothing else. Taken at start.
    #[serde(default)]
    pub clients: Vec<HlsClient>,
}

/// One machine client of the HLS streams.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HlsClient {
    /// Its name (1 to 64 letters, digits, `.`, `_` or `-`), in the logs and as the HTTP
    /// Basic user name.
    pub name: String,
    /// Its token: 24 to 256 visible ASCII characters, none of the others' (the requests
    /// are not rate-limited, so its length is the defence). Never logged or shown: it
    /// prints as `***`.
    pub token: Secret,
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
    /// Offer RTP over UDP besides TCP-interleaved. Must be off with `tls` (UDP would
    /// carry the media outside the TLS connection).
    #[serde(default = "default_true")]
    pub udp: bool,
    /// RTSPS: the port speaks TLS (`rtsps://device:<port>/<stream>`) with the device
    /// certificate (the web server's, made on first use), requests and media inside it.
    #[serde(default)]
    pub tls: bool,
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
