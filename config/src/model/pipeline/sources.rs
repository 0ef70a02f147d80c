//! The sources of a pipeline (`pipeline.sources`).

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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
    /// `v4l2:///dev/video0` for local cameras; `whip:` for video pushed
    /// to this device over WebRTC (a WHIP publisher such as OBS or a browser
    /// POSTs to `/whip/<id>` on the web server, with `publish_token`). Prefer
    /// `username`/`password` over credentials in the URL.
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
    /// For `whip` sources (required there): the bearer token a publisher
    /// presents (`Authorization: Bearer …`), 24 to 256 visible ASCII
    /// characters. Never logged or shown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_token: Option<Secret>,
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
    /// Named areas of the picture (for the evidence policy's detection triggers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<super::ZoneConfig>,
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
    /// Only this pixel format: `mjpeg`, `yuyv`, `uyvy`, `nv12` or `h264`.
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
    /// Packed UYVY 4:2:2.
    Uyvy,
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
    /// Whether `presented` (a token, a password) is this secret, compared by
    /// [`same_secret`].
    pub fn matches(&self, presented: &str) -> bool {
        same_secret(&self.0, presented)
    }
}

/// Equal, compared without an early exit: the time taken tells nothing about how much of
/// a presented credential matched (only whether the lengths differ).
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
            Ok(SourceLocation::File(_) | SourceLocation::V4l2(_) | SourceLocation::Whip) => {
                self.url.clone()
            }
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
            .field("publish_token", &self.publish_token)
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
    /// Video a WHIP publisher pushes to this device (`whip:`): WebRTC ingest at
    /// `/whip/<id>` on the web server.
    Whip,
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
            publish_token: None,
            capture: None,
            zones: Vec::new(),
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
    pub fn try_location(&self) -> Result<SourceLocation, crate::url::UrlError> {
        crate::validate::parse_source_url(&self.url)
    }
}
