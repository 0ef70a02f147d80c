//! Live network sources: RTSP cameras, and SRT / RTMP contribution streams (libavformat does
//! the protocol work, so they share every line of the connection and recovery logic).
//!
//! A live source never ends on its own. It connects lazily (an appliance must boot while its
//! cameras are down), waits for a keyframe, decodes into the pool, and whenever the connection
//! fails — refused, unauthorised, closed, or silent for longer than the stall timeout — it
//! records why in its [`SourceHealth`] and reconnects after a jittered exponential backoff
//! (see [`LiveSourceSettings::backoff_recent_max`] for how a camera that streamed a moment
//! ago is retried quickly). A new connection gets a new decoder (the camera may come back with other parameters);
//! timestamps continue from where the last connection stopped, so the pipeline sees one
//! monotonic stream.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ffmpeg_next as ff;

use super::{
    SourceCore, SourceError, SourceHealth, SourceState, SourceStats, SourceStopper, VideoSource,
};
use crate::codec::{CaptureOpenError, Decoding, NvmmCapture};
use crate::container::FileDemuxer;
use crate::frame::{Frame, FrameLayout, PixelFormat, StreamId};
use crate::pool::SurfacePool;
use crate::v4l2::{CaptureChoice, CaptureRequest, negotiate, query};
use aegis_config::{NetScheme, NetUrl};

/// libavformat protocols a network source of `scheme` may use, for its `protocol_whitelist`
/// (everything else, `file`, `http`, `data`, `subfile` included, is refused):
/// RTSP needs `tcp` for the control connection and `rtp`/`udp` for RTP over UDP; RTSPS runs
/// the control connection over `tls` (itself over `tcp`) and interleaves RTP in it; RTMP is
/// the `rtmp` protocol over `tcp` (RTMPS: `rtmps` over `tls`); libsrt makes its own sockets.
pub(crate) fn protocol_whitelist(scheme: NetScheme) -> &'static str {
    match scheme {
        NetScheme::Rtsp => "rtsp,rtp,udp,tcp",
        NetScheme::Rtsps => "rtsps,tls,tcp",
        NetScheme::Rtmp => "rtmp,tcp",
        NetScheme::Rtmps => "rtmps,tls,tcp",
        NetScheme::Srt => "srt",
    }
}

/// RTP transport for RTSP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RtspTransport {
    /// RTP interleaved in the RTSP TCP connection: works through NAT and firewalls.
    #[default]
    Tcp,
    /// RTP over UDP: lower latency on a clean LAN, loses packets on a busy one.
    Udp,
}

/// How a live source connects and recovers.
#[derive(Clone)]
pub struct LiveSourceSettings {
    /// The stream URL (`rtsp://user:pass@host/path`, `srt://host:port`, `rtmp://host/app/key`),
    /// credentials included; never logged. It must be in canonical form, the output of
    /// [`aegis_config::NetUrl::to_libav`] (the agent passes exactly that): the connection
    /// refuses any other spelling, so what the policy checked is what libavformat opens. For
    /// a V4L2 camera it is the device path.
    pub url: String,
    /// Stream id stamped on every frame.
    pub stream: StreamId,
    /// RTP transport.
    pub transport: RtspTransport,
    /// Surfaces in this stream's pool.
    pub pool_frames: usize,
    /// Decoder threads (0 = one per core).
    pub decoder_threads: usize,
    /// Time allowed for connecting (TCP, RTSP handshake, first packets).
    pub connect_timeout: Duration,
    /// No packet for this long while connected = stalled: drop the connection and reconnect.
    pub stall_timeout: Duration,
    /// First reconnect delay; doubles on every failure and starts over with the first
    /// frame of a connection.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Longest reconnect delay while the camera delivered a frame within the last
    /// [`RECENTLY_HEALTHY`]: a camera that reboots or flaps is back within about this long
    /// of coming up, instead of waiting out a delay that grew while it was down. Errors the
    /// camera itself answers (401, 403, 404, a redirect) and URL errors keep the full backoff,
    /// so a wrong password is not retried twice a second.
    pub backoff_recent_max: Duration,
    /// For a V4L2 camera (`url` is then the device path): what to ask of it.
    pub v4l2: Option<CaptureRequest>,
    /// Decode on this GPU ([`crate::backend::Backend::stream_gpu`]: NVDEC, or Orin's
    /// decoder into NVMM). H.264 and H.265 only; other codecs decode on the CPU (logged).
    pub gpu: Option<crate::backend::StreamGpu>,
}

impl std::fmt::Debug for LiveSourceSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSourceSettings")
            .field("url", &redact_url(&self.url))
            .field("stream", &self.stream)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

impl LiveSourceSettings {
    /// Defaults for a camera at `url`: TCP, 5 s connect, 2 s stall, backoff 0.5 s … 30 s
    /// (at most 0.5 s while the camera streamed within the last minute).
    pub fn new(url: impl Into<String>, stream: StreamId) -> Self {
        LiveSourceSettings {
            url: url.into(),
            stream,
            transport: RtspTransport::Tcp,
            pool_frames: 8,
            decoder_threads: 1,
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            backoff_recent_max: Duration::from_millis(500),
            v4l2: None,
            gpu: None,
        }
    }

    /// Defaults for the V4L2 camera at `device` (e.g. `/dev/video0`). An unplugged camera is
    /// retried like a dropped stream, so re-plugging it resumes the video.
    pub fn v4l2(device: &std::path::Path, request: CaptureRequest, stream: StreamId) -> Self {
        LiveSourceSettings {
            v4l2: Some(request),
            ..Self::new(device.display().to_string(), stream)
        }
    }
}

/// A URL as logs, errors and status pages may show it: user information, the query string
/// (SRT passphrases, tokens) and RTMP stream keys are left out or become `***`.
/// A URL the strict parser accepts is shown as [`NetUrl::redacted`] (`rtsp://user:secret@host/x`
/// → `rtsp://host/x`); anything else is cut the way libavformat would read it (authority up to
/// the first `/`, `?` or `#`, user information up to its last `@`):
/// `rtsp://a:s@t@h/x` → `rtsp://***@h/x`; `rtmp://h/app/KEY` → `rtmp://h/app/***`.
pub fn redact_url(url: &str) -> String {
    if let Ok(parsed) = NetUrl::parse(url) {
        return parsed.redacted();
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (path, had_query) = match tail.split_once('?') {
        Some((p, _)) => (p, true),
        None => (tail, false),
    };
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let path = if scheme.eq_ignore_ascii_case("rtmp") || scheme.eq_ignore_ascii_case("rtmps") {
        match path.rfind('/') {
            Some(i) if i > 0 => format!("{}/***", &path[..i]),
            _ => path.to_string(),
        }
    } else {
        path.to_string()
    };
    format!(
        "{scheme}://{authority}{path}{}",
        if had_query { "?***" } else { "" }
    )
}

fn av_error(e: &crate::container::ContainerError) -> Option<&ff::Error> {
    use crate::container::ContainerError as C;
    match e {
        C::Open { source, .. } | C::Read { source, .. } | C::Seek { source, .. } => Some(source),
        _ => None,
    }
}

/// What a plain-RTSP server at `url`'s host and port answers to an `OPTIONS` request (no
/// credentials sent): its first line, quoted, non-printable bytes escaped, cut at 120
/// characters; or what went wrong asking. For error messages only, when libavformat could
/// not make sense of the answer.
fn first_answer_line(url: &NetUrl, timeout: Duration) -> String {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let port = url.port.unwrap_or(554);
    let host = url.host_str();
    let Some(addr) = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
    else {
        return "nothing (the address no longer resolves)".into();
    };
    let answer = (|| -> std::io::Result<Vec<u8>> {
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        let target = match url.host {
            aegis_config::Host::Ipv6(_) => format!("[{host}]:{port}"),
            _ => format!("{host}:{port}"),
        };
        let path = if url.path.is_empty() { "/" } else { &url.path };
        let request = format!(
            "OPTIONS rtsp://{target}{path} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: aegis\r\n\r\n"
        );
        // A server may answer (and hang up) before reading it all: read what it sent anyway.
        let _ = s.write_all(request.as_bytes());
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while got.len() < 256 && !got.contains(&b'\n') {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if got.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        Ok(got)
    })();
    match answer {
        Ok(bytes) if bytes.is_empty() => "nothing (it closed the connection)".into(),
        Ok(bytes) => {
            let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let mut shown = String::new();
            for &b in line.iter().take(120) {
                match b {
                    0x20..=0x7e => shown.push(b as char),
                    _ => shown.push_str(&format!("\\x{b:02x}")),
                }
            }
            if line.len() > 120 {
                shown.push('…');
            }
            format!("\"{shown}\"")
        }
        Err(e) => format!("nothing ({e})"),
    }
}

/// Deadline for libavformat's blocking calls, checked by its interrupt callback.
struct Watchdog {
    epoch: Instant,
    /// Milliseconds since `epoch` after which blocking I/O is aborted.
    deadline_ms: AtomicU64,
    /// The deadline (not a stop) aborted the last operation.
    fired: AtomicBool,
}

impl Watchdog {
    fn arm(&self, timeout: Duration) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.deadline_ms
            .store(now + timeout.as_millis() as u64, Ordering::Release);
        self.fired.store(false, Ordering::Release);
    }

    fn expired(&self) -> bool {
        let late =
            self.epoch.elapsed().as_millis() as u64 > self.deadline_ms.load(Ordering::Acquire);
        if late {
            self.fired.store(true, Ordering::Release);
        }
        late
    }
}

struct Connection {
    /// `None` for a camera captured into NVMM: the "decoder" captures the frames itself.
    demux: Option<FileDemuxer>,
    decoder: Decoding,
    /// Added to this connection's timestamps so they continue the stream's timeline.
    offset_us: Option<i64>,
    frames: u64,
    /// When the last packet arrived (a non-blocking device's stall clock).
    last_packet_at: Instant,
}

/// A camera that delivered a frame this recently is retried within
/// [`LiveSourceSettings::backoff_recent_max`].
pub const RECENTLY_HEALTHY: Duration = Duration::from_secs(60);

/// When to try again after a failed or lost connection: `backoff_min` doubling with every
/// failure in a row up to `backoff_max`, ×0.8–1.2 jitter (so cameras that failed together do
/// not all reconnect in the same instant). Any decoded frame starts the count over, and while
/// the camera delivered a frame within [`RECENTLY_HEALTHY`] the delay is at most
/// `backoff_recent_max` — unless the camera itself refused us (`persistent`). Time is passed
/// in, so the schedule can be tested without waiting.
#[derive(Debug, Clone)]
struct Backoff {
    min: f64,
    max: f64,
    recent_max: f64,
    failures: u32,
    last_frame_at: Option<Instant>,
    rng: crate::rng::XorShift,
}

impl Backoff {
    fn new(s: &LiveSourceSettings, seed: u64) -> Self {
        Backoff {
            min: s.backoff_min.as_secs_f64(),
            max: s.backoff_max.as_secs_f64(),
            recent_max: s.backoff_recent_max.min(s.backoff_max).as_secs_f64(),
            failures: 0,
            last_frame_at: None,
            rng: crate::rng::XorShift(seed | 1),
        }
    }

    /// A frame arrived at `now`: the camera works.
    fn frame(&mut self, now: Instant) {
        self.failures = 0;
        self.last_frame_at = Some(now);
    }

    /// A connection failed (or was lost) at `now`: how long to wait before the next attempt.
    fn failed(&mut self, now: Instant, persistent: bool) -> Duration {
        let exponential = self.min * 2f64.powi(self.failures.min(16) as i32);
        let recently_healthy = self
            .last_frame_at
            .is_some_and(|t| now.saturating_duration_since(t) < RECENTLY_HEALTHY);
        let cap = if recently_healthy && !persistent {
            self.recent_max
        } else {
            self.max
        };
        self.failures = self.failures.saturating_add(1);
        Duration::from_secs_f64(exponential.min(cap) * self.jitter())
    }

    /// 0.8 … 1.2.
    fn jitter(&mut self) -> f64 {
        0.8 + 0.4 * self.rng.next_f64()
    }
}

/// Frames from a camera or encoder on the network.
pub struct LiveSource {
    settings: LiveSourceSettings,
    shown_as: PathBuf,
    core: SourceCore,
    watchdog: Arc<Watchdog>,
    conn: Option<Connection>,
    packet: ff::Packet,
    /// When the next connection attempt may start, and how many failed in a row.
    retry_at: Option<Instant>,
    backoff: Backoff,
    attempts: u64,
    /// The last connection attempt failed on something retrying soon will not change: the
    /// camera refused the credentials or the path, redirected, or the URL is bad.
    persistent_error: bool,
    timeline: super::Timeline,
    frame_rate: (i32, i32),
    stats: SourceStats,
    /// Decoder counters of connections already closed (stats only ever grow).
    closed_decode: crate::codec::DecodeStats,
}

impl LiveSource {
    /// A source for `settings.url`; no I/O happens until the first `next_frame`.
    pub fn new(settings: LiveSourceSettings) -> Self {
        let shown_as = PathBuf::from(redact_url(&settings.url));
        // A placeholder pool: the first decoded picture replaces it with one of its size.
        let layout = FrameLayout::new(PixelFormat::I420, 2, 2);
        let core = SourceCore::new(shown_as.clone(), settings.stream.clone(), 1, layout);
        let core = SourceCore {
            pool_frames: settings.pool_frames,
            ..core
        };
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        let backoff = Backoff::new(&settings, seed);
        LiveSource {
            settings,
            shown_as,
            core,
            watchdog: Arc::new(Watchdog {
                epoch: Instant::now(),
                deadline_ms: AtomicU64::new(u64::MAX),
                fired: AtomicBool::new(false),
            }),
            conn: None,
            packet: ff::Packet::empty(),
            retry_at: None,
            backoff,
            attempts: 0,
            persistent_error: false,
            timeline: super::Timeline::default(),
            frame_rate: (0, 1),
            stats: SourceStats::default(),
            closed_decode: Default::default(),
        }
    }

    /// The URL without credentials.
    pub fn shown_url(&self) -> &std::path::Path {
        &self.shown_as
    }

    fn connect(&mut self) -> Result<Connection, String> {
        // Until shown otherwise, a failure is the network's or the camera's being down.
        self.persistent_error = false;
        let mut opts = ff::Dictionary::new();
        let url = if self.settings.v4l2.is_none() {
            self.persistent_error = true;
            let url = NetUrl::parse(&self.settings.url).map_err(|e| format!("url: {e}"))?;
            if url.to_libav(None, None) != self.settings.url {
                return Err(format!(
                    "url: not in canonical form (expected the spelling of NetUrl::to_libav, {})",
                    url.redacted()
                ));
            }
            opts.set("protocol_whitelist", protocol_whitelist(url.scheme));
            self.persistent_error = false;
            Some(url)
        } else {
            None
        };
        if url.as_ref().is_some_and(|u| u.scheme.is_rtsp()) {
            opts.set(
                "rtsp_transport",
                match self.settings.transport {
                    RtspTransport::Tcp => "tcp",
                    RtspTransport::Udp => "udp",
                },
            );
            opts.set("allowed_media_types", "video");
            // Stream probing must fit inside the connect timeout even for slow or
            // long-GOP cameras.
            opts.set("analyzeduration", "1000000");
            // Socket I/O timeout (µs) as a second line of defence behind the watchdog. (Only
            // for RTSP: for RTMP, libavformat's `timeout` means "listen for a publisher".)
            opts.set(
                "timeout",
                &self.settings.connect_timeout.as_micros().to_string(),
            );
        }
        let watchdog = self.watchdog.clone();
        let stopper = self.core.stopper();
        let interrupt = move || stopper.state.is_stopped() || watchdog.expired();
        self.watchdog.arm(self.settings.connect_timeout);
        let demux = match self.settings.v4l2 {
            None => {
                // libavformat follows an RTSP 3xx redirect inside the open, to a host nobody
                // checked: stop at the first interrupt poll on the new URL (before anything
                // is written to it) and say so.
                let expected = self.settings.url.clone();
                let redirect = Arc::new(std::sync::Mutex::new(None::<String>));
                let seen = redirect.clone();
                let guarded = move |current: Option<&str>| {
                    if let Some(now) = current.filter(|now| *now != expected) {
                        if let Ok(mut r) = seen.lock() {
                            r.get_or_insert_with(|| now.to_owned());
                        }
                        return true;
                    }
                    interrupt()
                };
                let opened =
                    FileDemuxer::open_live(&self.settings.url, &self.shown_as, opts, guarded);
                let target = redirect.lock().ok().and_then(|mut r| r.take());
                match (opened, target) {
                    (_, Some(target)) => {
                        self.persistent_error = true;
                        return Err(format!(
                            "connect: the server redirected to {}: redirects are not followed \
                             (name the stream's real address in the source URL)",
                            redact_url(&target)
                        ));
                    }
                    (Ok(d), None) => d,
                    (Err(e), None) => {
                        let av = av_error(&e);
                        self.persistent_error = matches!(
                            av,
                            Some(
                                ff::Error::HttpUnauthorized
                                    | ff::Error::HttpForbidden
                                    | ff::Error::HttpNotFound
                            )
                        );
                        let mut why = self.explain("connect", &e, av);
                        // libavformat says only "Invalid data found" or "5XX reply": ask the
                        // server ourselves and quote what it answers.
                        let unexpected = matches!(
                            av,
                            Some(
                                ff::Error::InvalidData
                                    | ff::Error::HttpBadRequest
                                    | ff::Error::HttpOther4xx
                                    | ff::Error::HttpServerError
                            )
                        );
                        if unexpected
                            && !self.watchdog.fired.load(Ordering::Acquire)
                            && let Some(url) = url.as_ref().filter(|u| u.scheme == NetScheme::Rtsp)
                        {
                            why.push_str(&format!(
                                " (the server answered an RTSP OPTIONS request with {})",
                                first_answer_line(url, Duration::from_secs(1))
                            ));
                        }
                        return Err(why);
                    }
                }
            }
            Some(want) => {
                let device = std::path::Path::new(&self.settings.url);
                let nvmm = self
                    .settings
                    .gpu
                    .as_ref()
                    .and_then(|g| Some((g.gpu.clone(), g.nvmm.clone()?)));
                let modes = match &nvmm {
                    Some((_, codecs)) => codecs.cameras().modes(device),
                    None => query(device),
                };
                let modes = modes.map_err(|e| match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "open: camera not present (unplugged?)".to_string()
                    }
                    _ => format!("open: {e}"),
                })?;
                let choice = negotiate(&modes, &want).map_err(|e| format!("negotiate: {e}"))?;
                if let Some((gpu, codecs)) = nvmm.filter(|_| NvmmCapture::takes(&choice)) {
                    match NvmmCapture::open(
                        &codecs,
                        device,
                        &choice,
                        self.settings.stream.clone(),
                        gpu,
                        self.settings.pool_frames,
                    ) {
                        Ok(capture) => return Ok(self.captured_into_nvmm(capture, &choice)),
                        Err(CaptureOpenError::Unsuitable(why)) => {
                            tracing::warn!(stream = %self.settings.stream, device = %device.display(),
                                reason = %why, "camera not captured into NVMM; capturing on the CPU");
                        }
                        Err(CaptureOpenError::Failed(why)) => return Err(format!("open: {why}")),
                    }
                }
                let mut opts = ff::Dictionary::new();
                if let Some(f) = choice.fourcc.av_input_format() {
                    opts.set("input_format", f);
                }
                opts.set("video_size", &format!("{}x{}", choice.width, choice.height));
                opts.set("framerate", &format!("{}/{}", choice.rate.0, choice.rate.1));
                tracing::info!(stream = %self.settings.stream, device = %device.display(),
                    format = %choice.fourcc, width = choice.width, height = choice.height,
                    fps = choice.rate.0 as f64 / choice.rate.1.max(1) as f64, "camera mode");
                FileDemuxer::open_device(device, "video4linux2", opts, interrupt)
                    .map_err(|e| self.explain("open", &e, av_error(&e)))?
            }
        };
        let info = demux.info().clone();
        if info.frame_rate.0 > 0 {
            self.frame_rate = info.frame_rate;
        }
        let decoder = Decoding::open(
            demux.parameters(),
            demux.time_base(),
            info.frame_duration_us(),
            self.settings.stream.clone(),
            self.settings.decoder_threads,
            self.settings.gpu.as_ref(),
            self.settings.pool_frames,
        )
        .map_err(|e| self.explain("decoder", &e, None))?;
        self.core.health.set_decoder(&decoder);
        tracing::info!(stream = %self.settings.stream, url = %self.shown_as.display(),
            codec = %info.codec, width = info.width, height = info.height, "connected");
        Ok(Connection {
            demux: Some(demux),
            decoder,
            offset_us: None,
            frames: 0,
            last_packet_at: Instant::now(),
        })
    }

    /// The connection of a camera captured into NVMM (`jetson` backend).
    fn captured_into_nvmm(&mut self, capture: NvmmCapture, choice: &CaptureChoice) -> Connection {
        let (num, den) = capture.frame_rate();
        self.frame_rate = (num as i32, den.max(1) as i32);
        let layout = capture.layout();
        let decoder = Decoding::Camera(Box::new(capture));
        self.core.health.set_decoder(&decoder);
        tracing::info!(stream = %self.settings.stream, device = %self.shown_as.display(),
            format = %choice.fourcc, width = layout.width, height = layout.height,
            fps = num as f64 / den.max(1) as f64, "camera captured into NVMM");
        Connection {
            demux: None,
            decoder,
            offset_us: None,
            frames: 0,
            last_packet_at: Instant::now(),
        }
    }

    /// An error in plain words, naming what was happening; never contains credentials.
    /// Classified by libav's error value, never by matching the text (a URL path may well
    /// contain "401").
    fn explain(
        &self,
        phase: &str,
        error: &dyn std::fmt::Display,
        av: Option<&ff::Error>,
    ) -> String {
        if self.watchdog.fired.load(Ordering::Acquire) {
            let t = match phase {
                "read" => self.settings.stall_timeout,
                _ => self.settings.connect_timeout,
            };
            return format!("{phase}: no answer within {:.1} s", t.as_secs_f64());
        }
        let plain = match av {
            Some(ff::Error::HttpUnauthorized) => {
                "authentication failed (401): check the source's username and password".to_string()
            }
            Some(ff::Error::HttpForbidden) => "access denied (403)".to_string(),
            Some(ff::Error::HttpNotFound) => {
                "stream not found (404): check the URL path".to_string()
            }
            Some(ff::Error::Other { errno }) if *errno == libc::ECONNREFUSED => {
                "connection refused: is the camera up and the port right?".to_string()
            }
            _ => error.to_string(),
        };
        // libav errors can quote the URL; keep credentials out of logs and status pages.
        format!(
            "{phase}: {}",
            plain.replace(&self.settings.url, &self.shown_as.display().to_string())
        )
    }

    /// Drops the connection, records why, and schedules the next attempt.
    fn fail(&mut self, state: SourceState, why: String) {
        if let Some(c) = self.conn.take() {
            self.closed_decode.add(&c.decoder.stats());
        }
        let delay = self
            .backoff
            .failed(Instant::now(), self.persistent_error)
            .as_secs_f64();
        tracing::warn!(stream = %self.settings.stream, url = %self.shown_as.display(),
            error = %why, retry_in_s = delay, "live source disconnected");
        self.core.health.fail(state, why);
        self.retry_at = Some(Instant::now() + Duration::from_secs_f64(delay));
    }

    fn next_frame_inner(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.core.is_stopped() {
                return Ok(None);
            }
            let Some(conn) = self.conn.as_mut() else {
                if let Some(at) = self.retry_at.take() {
                    if self.core.health.state() != SourceState::Stalled {
                        self.core.health.set_state(SourceState::BackingOff);
                    }
                    if !self.core.wait_until(at) {
                        return Ok(None);
                    }
                }
                if self.attempts > 0 {
                    self.core.health.reconnected();
                }
                self.attempts += 1;
                self.core.health.set_state(SourceState::Connecting);
                match self.connect() {
                    Ok(c) => self.conn = Some(c),
                    Err(why) => {
                        if self.core.is_stopped() {
                            return Ok(None);
                        }
                        self.fail(SourceState::BackingOff, why);
                    }
                }
                continue;
            };
            let phase = if conn.demux.is_some() {
                "decode"
            } else {
                "capture"
            };
            let received = match self.core.receive(&mut conn.decoder, 0) {
                Ok(f) => f,
                Err(e) if self.core.is_stopped() => return Err(e),
                // A picture the pipeline cannot take (absurd size after a damaged SPS, an
                // unconvertible format): drop the connection and try again, like any other
                // camera fault; a live source never ends on its own.
                Err(e) => {
                    self.stats.read_errors += 1;
                    let why = self.explain(phase, &e, None);
                    self.fail(SourceState::BackingOff, why);
                    continue;
                }
            };
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            if let Some(mut frame) = received {
                // RTCP sender reports map the stream's timestamps to the camera's NTP clock:
                // timestamp zero is at `start_time_realtime`.
                frame.meta.wallclock_us = conn
                    .demux
                    .as_ref()
                    .and_then(|d| d.start_time_realtime_us())
                    .map(|t0| t0 + frame.pts_us);
                self.timeline.stamp(&mut frame, &mut conn.offset_us);
                conn.frames += 1;
                conn.last_packet_at = Instant::now();
                self.backoff.frame(Instant::now());
                self.stats.frames += 1;
                self.core.health.frame();
                return Ok(Some(frame));
            }
            let Some(demux) = conn.demux.as_mut() else {
                // A camera captured into NVMM: wait for its next frame. Time the pipeline
                // holds every work or host surface does not count against the camera.
                let Decoding::Camera(camera) = &mut conn.decoder else {
                    let why = "capture: a connection without a demuxer that is no camera".into();
                    self.fail(SourceState::BackingOff, why);
                    continue;
                };
                if camera.waiting_for_surface() {
                    conn.last_packet_at = Instant::now();
                }
                if conn.last_packet_at.elapsed() >= self.settings.stall_timeout {
                    let why = format!(
                        "capture: no frames within {:.1} s",
                        self.settings.stall_timeout.as_secs_f64()
                    );
                    self.fail(SourceState::Stalled, why);
                } else if let Err(e) = camera.wait(&self.core.pool, 20) {
                    if self.core.is_stopped() {
                        return Ok(None);
                    }
                    self.stats.read_errors += 1;
                    let why = self.explain("capture", &e, None);
                    self.fail(SourceState::BackingOff, why);
                }
                continue;
            };
            // Armed right before each read, so time spent downstream (a full pool, a slow
            // sink) never counts against the camera.
            self.watchdog.arm(self.settings.stall_timeout);
            match demux.read(&mut self.packet) {
                Ok(true) => {
                    conn.last_packet_at = Instant::now();
                    let core = &self.core;
                    if let Err(e) = conn.decoder.send(&self.packet, &|| core.is_stopped()) {
                        let why = self.explain("decode", &e, None);
                        self.fail(SourceState::BackingOff, why);
                    }
                }
                Ok(false) => self.fail(
                    SourceState::BackingOff,
                    "read: the server ended the stream".into(),
                ),
                // Non-blocking capture devices have nothing yet: wait a little, unless the
                // camera has been silent for the stall timeout.
                Err(crate::container::ContainerError::Read { source, .. })
                    if crate::codec::is_again(&source)
                        && conn.last_packet_at.elapsed() < self.settings.stall_timeout =>
                {
                    if !self
                        .core
                        .wait_until(Instant::now() + Duration::from_millis(2))
                    {
                        return Ok(None);
                    }
                }
                Err(crate::container::ContainerError::Read { source, .. })
                    if crate::codec::is_again(&source) =>
                {
                    let why = format!(
                        "read: no frames within {:.1} s",
                        self.settings.stall_timeout.as_secs_f64()
                    );
                    self.fail(SourceState::Stalled, why);
                }
                Err(e) => {
                    if self.core.is_stopped() {
                        return Ok(None);
                    }
                    self.stats.read_errors += 1;
                    let stalled = self.watchdog.fired.load(Ordering::Acquire);
                    let why = self.explain("read", &e, av_error(&e));
                    self.fail(
                        if stalled {
                            SourceState::Stalled
                        } else {
                            SourceState::BackingOff
                        },
                        why,
                    );
                }
            }
        }
    }
}

impl VideoSource for LiveSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        let r = self.next_frame_inner();
        let r = self.core.end_if_stopped(r);
        if !matches!(r, Ok(Some(_))) {
            self.conn = None;
            self.core.health.set_state(SourceState::Ended);
        }
        r
    }
    fn stream_id(&self) -> &StreamId {
        &self.settings.stream
    }
    fn stats(&self) -> SourceStats {
        // Closed connections' counts plus the open one's: the totals only ever grow.
        let mut decode = self.closed_decode;
        if let Some(c) = &self.conn {
            decode.add(&c.decoder.stats());
        }
        SourceStats {
            decode,
            ..self.stats
        }
    }
    super::core_accessors!();
    fn frame_rate(&self) -> (i32, i32) {
        self.frame_rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_never_leave_the_url_redacted() {
        assert_eq!(
            redact_url("rtsp://admin:s3cr@t@10.0.0.5:554/live"),
            "rtsp://***@10.0.0.5:554/live"
        );
        assert_eq!(redact_url("rtsp://cam/live"), "rtsp://cam/live");
        assert_eq!(redact_url("rtsp://cam/a@b"), "rtsp://cam/a@b");
        assert_eq!(
            redact_url("srt://h:9000?mode=caller&passphrase=xyz"),
            "srt://h:9000?***"
        );
        assert_eq!(redact_url("rtmp://h/live/STREAMKEY"), "rtmp://h/live/***");
        assert_eq!(redact_url("not a url"), "not a url");
        assert_eq!(redact_url("rtsp://u:pw@h:554/x?t=1"), "rtsp://h:554/x?***");
        assert_eq!(redact_url("rtsp://u:p@w@h/x"), "rtsp://***@h/x");
        assert_eq!(redact_url("rtsp://u:p@h?x/@y"), "rtsp://h?***");
        assert_eq!(redact_url("rtsp://u:p@h#x/@y"), "rtsp://***@h");
        let s = LiveSourceSettings::new("rtsp://u:pw@h/x", StreamId::new("c"));
        assert!(!format!("{s:?}").contains("pw"));
    }

    #[test]
    fn only_canonical_urls_reach_libav() {
        for (url, want) in [
            ("RTSP://127.0.0.1:9/x", "not in canonical form"),
            ("rtsp://127.1:9/x", "ambiguous numeric host"),
        ] {
            let mut s = LiveSourceSettings::new(url, StreamId::new("c"));
            s.backoff_min = Duration::from_millis(10);
            s.backoff_max = Duration::from_millis(20);
            let mut src = LiveSource::new(s);
            let (stopper, health) = (src.stopper(), src.health());
            let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
            while health.snapshot().last_error.is_none() {
                std::thread::yield_now();
            }
            let err = health.snapshot().last_error.unwrap_or_default();
            stopper.stop();
            assert!(matches!(t.join().unwrap(), Ok(false)));
            assert!(err.contains(want), "{url}: {err}");
        }
        assert_eq!(protocol_whitelist(NetScheme::Srt), "srt");
    }

    /// A camera up `up` s, down `down` s, for `cycles` cycles, driven through [`Backoff`] on a
    /// virtual clock: connecting takes `connect` s when the camera is up, and fails at once
    /// when it is down. Returns, per up-window after the first, the seconds from the camera
    /// coming up to the first frame (`None`: the window was missed).
    fn flap(b: &mut Backoff, up: f64, down: f64, cycles: usize, connect: f64) -> Vec<Option<f64>> {
        let t0 = Instant::now();
        let at = |t: f64| t0 + Duration::from_secs_f64(t);
        let period = up + down;
        let is_up = |t: f64| t.rem_euclid(period) < up;
        let mut t = 0.0;
        let mut first_frames = vec![None; cycles];
        // Connected at 0 and streaming until the first outage.
        b.frame(at(0.0));
        let mut connected = true;
        while t < period * cycles as f64 {
            let window = (t / period) as usize;
            if connected {
                // Frames until the camera goes down; the loss is noticed at once.
                let down_at = window as f64 * period + up;
                b.frame(at(down_at - 0.04));
                t = down_at;
                connected = false;
                t += b.failed(at(t), false).as_secs_f64();
            } else if is_up(t) && is_up(t + connect) {
                t += connect;
                b.frame(at(t));
                let w = (t / period) as usize;
                if let Some(slot) = first_frames.get_mut(w) {
                    slot.get_or_insert(t - w as f64 * period);
                }
                connected = true;
            } else {
                t += 0.001;
                t += b.failed(at(t), false).as_secs_f64();
            }
        }
        first_frames.into_iter().skip(1).collect()
    }

    #[test]
    fn a_flapping_camera_is_back_within_the_recent_cap_in_every_up_window() {
        // The field case: up 8 s, down 5 s. Before, the backoff started over only after 5 s
        // of streaming, which a flapping camera never gets to, so the delay climbed to 16–35 s
        // and whole up-windows were missed.
        let mut s = LiveSourceSettings::new("rtsp://cam/x", StreamId::new("c"));
        s.backoff_recent_max = Duration::from_millis(500);
        let mut b = Backoff::new(&s, 7);
        let windows = flap(&mut b, 8.0, 5.0, 20, 0.3);
        assert_eq!(windows.len(), 19);
        for (i, w) in windows.iter().enumerate() {
            let first = w.unwrap_or_else(|| panic!("up-window {i} missed: {windows:?}"));
            // At most one capped delay (0.5 s × 1.2 jitter) plus the connect time.
            assert!(
                first <= 0.6 + 0.3 + 0.01,
                "window {i}: {first} s: {windows:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_while_the_camera_refuses_us_or_has_been_gone_long() {
        let s = LiveSourceSettings::new("rtsp://cam/x", StreamId::new("c"));
        let t0 = Instant::now();
        let secs = |d: Duration| d.as_secs_f64();
        // Never streamed: 0.5 s doubling to 30 s.
        let mut b = Backoff::new(&s, 3);
        let delays: Vec<f64> = (0..10).map(|_| secs(b.failed(t0, false))).collect();
        for (i, d) in delays.iter().enumerate() {
            let nominal = (0.5 * 2f64.powi(i as i32)).min(30.0);
            assert!(
                (nominal * 0.8..=nominal * 1.2).contains(d),
                "{i}: {delays:?}"
            );
        }
        // Streamed a moment ago, but the camera answers 401: the full backoff, not the cap.
        let mut b = Backoff::new(&s, 3);
        b.frame(t0);
        let refused: Vec<f64> = (0..8).map(|_| secs(b.failed(t0, true))).collect();
        assert!(refused[7] >= 0.5 * 128.0_f64.min(60.0) * 0.8, "{refused:?}");
        // Streamed, then gone: capped for RECENTLY_HEALTHY, exponential after that.
        let mut b = Backoff::new(&s, 3);
        b.frame(t0);
        for _ in 0..20 {
            assert!(secs(b.failed(t0 + Duration::from_secs(30), false)) <= 0.6);
        }
        let later = t0 + RECENTLY_HEALTHY + Duration::from_secs(1);
        assert!(secs(b.failed(later, false)) >= 30.0 * 0.8);
        // A frame starts the count over.
        b.frame(later);
        assert!(secs(b.failed(later + Duration::from_secs(61), false)) <= 0.6);
    }

    #[test]
    fn connection_refused_backs_off_and_reports_in_plain_words() {
        // A port nothing listens on (bound then dropped).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = LiveSourceSettings::new(
            format!("rtsp://u:pw@127.0.0.1:{port}/x"),
            StreamId::new("c"),
        );
        settings.backoff_min = Duration::from_millis(20);
        settings.backoff_max = Duration::from_millis(40);
        let mut src = LiveSource::new(settings);
        let stopper = src.stopper();
        let health = src.health();
        let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
        while health.snapshot().reconnects < 3 {
            std::thread::yield_now();
        }
        let h = health.snapshot();
        let err = h.last_error.unwrap_or_default();
        assert!(err.contains("connection refused"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        stopper.stop();
        assert!(matches!(t.join().unwrap(), Ok(false)));
        assert_eq!(health.state(), SourceState::Ended);
    }

    #[test]
    fn a_server_that_is_not_rtsp_is_quoted_in_the_error() {
        use std::io::{Read, Write};
        // An HTTP server on the camera's port, and one that sends bytes no protocol knows:
        // the error says what each sent, not only libav's "Invalid data found".
        for (answer, want) in [
            (
                &b"HTTP/1.0 400 Bad Request\r\nServer: toy\r\n\r\n<html></html>\n"[..],
                "\"HTTP/1.0 400 Bad Request\"",
            ),
            (
                &b"\x00\x01garbage\xff\r\n\r\n"[..],
                "\"\\x00\\x01garbage\\xff\"",
            ),
        ] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            let server = std::thread::spawn(move || {
                for c in listener.incoming().take(2) {
                    let mut c = c.unwrap();
                    let mut buf = [0u8; 1024];
                    let _ = c.read(&mut buf);
                    let _ = c.write_all(answer);
                }
            });
            let mut s =
                LiveSourceSettings::new(format!("rtsp://127.0.0.1:{port}/x"), StreamId::new("c"));
            s.backoff_min = Duration::from_secs(60);
            let mut src = LiveSource::new(s);
            let (stopper, health) = (src.stopper(), src.health());
            let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
            while health.snapshot().last_error.is_none() {
                std::thread::sleep(Duration::from_millis(5));
            }
            let err = health.snapshot().last_error.unwrap_or_default();
            stopper.stop();
            assert!(matches!(t.join().unwrap(), Ok(false)));
            server.join().unwrap();
            assert!(err.contains(want), "{err}");
            assert!(err.starts_with("connect: "), "{err}");
        }
    }

    #[test]
    fn an_unplugged_camera_is_reported_and_retried() {
        let mut s = LiveSourceSettings::v4l2(
            std::path::Path::new("/dev/video-unplugged"),
            CaptureRequest::default(),
            StreamId::new("usb"),
        );
        s.backoff_min = Duration::from_millis(10);
        s.backoff_max = Duration::from_millis(20);
        let mut src = LiveSource::new(s);
        let (stopper, health) = (src.stopper(), src.health());
        let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
        while health.snapshot().reconnects < 2 {
            std::thread::yield_now();
        }
        let err = health.snapshot().last_error.unwrap_or_default();
        assert_eq!(err, "open: camera not present (unplugged?)");
        stopper.stop();
        assert!(matches!(t.join().unwrap(), Ok(false)));
    }
}
