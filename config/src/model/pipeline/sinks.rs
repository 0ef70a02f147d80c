//! The sinks of a pipeline (`pipeline.sinks`) and their encoder.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use schemars::JsonSchema;

use super::Secret;
use serde::{Deserialize, Serialize};

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

/// An output, selected by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SinkConfig {
    /// Encodes every stream and writes it to disk as fixed-length segments,
    /// deleting the oldest segments to stay within a disk budget.
    Record(RecordSink),
    /// Counts frames and drops them (for benchmarks and tests).
    Discard(DiscardSink),
    /// Serves streams on the device's RTSP server (`outputs.rtsp`), from the
    /// one encoded stream the recorder (or, without one, the live view's
    /// encoder) makes: no second encode.
    Restream(RestreamSink),
    /// Pushes a stream to an RTMP or SRT server (a cloud ingest, a media
    /// server), reconnecting with backoff when the connection drops.
    Push(PushSink),
    /// Serves streams as HLS with Low-Latency HLS parts from the web server
    /// (`/hls/<stream>/index.m3u8`, fMP4), from the same one encoded stream:
    /// for browsers and players.
    Hls(HlsSink),
    /// Serves streams to browsers over WebRTC (WHEP, `POST /whep/<stream>` on
    /// the web server), from the same one encoded stream: sub-second latency.
    #[serde(rename = "webrtc")]
    WebRtc(WebRtcSink),
}

/// Settings of the `restream` sink.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RestreamSink {
    /// The streams to serve (source ids); empty: all of them.
    #[serde(default)]
    pub streams: Vec<String>,
}

/// Settings of the `hls` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HlsSink {
    /// The streams to serve (source ids); empty: all of them.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Target length of a segment, in seconds (1 to 10). A segment starts at
    /// a keyframe, which the sink asks the encoder for when a segment is due.
    #[serde(default = "default_hls_segment_s")]
    pub segment_s: u32,
    /// Target length of a Low-Latency HLS part, in milliseconds (100 to 1000,
    /// shorter than a segment); 0: plain HLS, whole segments only.
    #[serde(default = "default_hls_part_ms")]
    pub part_ms: u32,
    /// Segments the playlist keeps (3 to 30); older ones are forgotten.
    #[serde(default = "default_hls_segments")]
    pub segments: u32,
}

fn default_hls_segment_s() -> u32 {
    2
}

fn default_hls_part_ms() -> u32 {
    200
}

fn default_hls_segments() -> u32 {
    6
}

impl Default for HlsSink {
    fn default() -> Self {
        HlsSink {
            streams: Vec::new(),
            segment_s: default_hls_segment_s(),
            part_ms: default_hls_part_ms(),
            segments: default_hls_segments(),
        }
    }
}

impl HlsSink {
    /// Whether this sink serves `stream`.
    pub fn serves(&self, stream: &str) -> bool {
        lists(&self.streams, stream)
    }
}

impl RestreamSink {
    /// Whether this sink serves `stream`.
    pub fn serves(&self, stream: &str) -> bool {
        lists(&self.streams, stream)
    }
}

/// An output sink's `streams`: empty means every stream.
fn lists(streams: &[String], stream: &str) -> bool {
    streams.is_empty() || streams.iter().any(|s| s == stream)
}

/// Settings of the `webrtc` sink.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebRtcSink {
    /// The streams to serve (source ids); empty: all of them.
    #[serde(default)]
    pub streams: Vec<String>,
    /// Most WebRTC sessions at once, all streams together (1 to 64).
    #[serde(default = "default_webrtc_sessions")]
    pub max_sessions: u32,
}

fn default_webrtc_sessions() -> u32 {
    4
}

impl Default for WebRtcSink {
    fn default() -> Self {
        WebRtcSink {
            streams: Vec::new(),
            max_sessions: default_webrtc_sessions(),
        }
    }
}

impl WebRtcSink {
    /// Whether this sink serves `stream`.
    pub fn serves(&self, stream: &str) -> bool {
        lists(&self.streams, stream)
    }
}

/// Settings of the `push` sink.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushSink {
    /// The stream to push (a source id).
    pub stream: String,
    /// Where to: `rtmp://host[:port]/app` (FLV; the stream key is appended
    /// as the last path segment), `rtmps://…`, or `srt://host:port` (MPEG-TS,
    /// caller mode). No user name, password or passphrase in the URL: give
    /// them below.
    pub url: String,
    /// The RTMP stream key. Never logged or shown: it prints as `***`.
    #[serde(default)]
    pub stream_key: Option<Secret>,
    /// The SRT passphrase (10 to 79 characters; AES encryption). Never
    /// logged or shown.
    #[serde(default)]
    pub passphrase: Option<Secret>,
    /// Longest wait between reconnection attempts, in seconds (1 to 300;
    /// the wait doubles from 1 s up to this).
    #[serde(default = "default_push_backoff_max_s")]
    pub backoff_max_s: u32,
}

fn default_push_backoff_max_s() -> u32 {
    30
}

/// Prints the URL redacted and the secrets as `***`, so configs can be logged.
impl std::fmt::Debug for PushSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = crate::url::NetUrl::parse(&self.url)
            .map(|u| u.redacted())
            .unwrap_or_else(|_| "<invalid URL>".to_owned());
        f.debug_struct("PushSink")
            .field("stream", &self.stream)
            .field("url", &url)
            .field("stream_key", &self.stream_key)
            .field("passphrase", &self.passphrase)
            .field("backoff_max_s", &self.backoff_max_s)
            .finish()
    }
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
    /// Encode for live outputs: x264's `zerolatency` tune with sliced threads, so no
    /// frame waits inside the encoder (about 100 ms sooner at 30 fps with frame
    /// threads); a little larger at the same quality.
    #[serde(default)]
    pub low_latency: bool,
    /// H.264 profile: `baseline` (constrained: no B-frames, what every WebRTC
    /// browser decodes), `main` or `high`. Omitted: the encoder's choice
    /// (x264: High).
    #[serde(default)]
    pub profile: Option<H264Profile>,
}

/// An H.264 profile the encoder is held to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum H264Profile {
    /// Constrained Baseline: no B-frames, no CABAC.
    Baseline,
    /// Main.
    Main,
    /// High.
    High,
}

impl H264Profile {
    /// The name x264 takes.
    pub fn as_str(self) -> &'static str {
        match self {
            H264Profile::Baseline => "baseline",
            H264Profile::Main => "main",
            H264Profile::High => "high",
        }
    }
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            codec: VideoCodec::default(),
            preset: default_preset(),
            bitrate_kbps: default_bitrate_kbps(),
            gop_frames: default_gop_frames(),
            threads: default_encoder_threads(),
            low_latency: false,
            profile: None,
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
