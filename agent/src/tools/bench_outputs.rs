//! `aegis bench outputs`: the streaming outputs of a real agent process (this binary,
//! `aegis run`) playing a 30 fps clip through a recorder, with the `timestamp_overlay`
//! stage drawing the wall clock as a code into every frame.
//!
//! - **Glass to glass**, per protocol: a client in this process (libavformat's RTSP or SRT
//!   input, one decoder thread, the agent's own live-source code) decodes the stream and
//!   reads the code back from each picture: latency = the clock when the picture is decoded
//!   − the clock the stage drew (one machine, one clock). RTSP over TCP and over UDP from
//!   the restream server; SRT from the push sink (this process listens). RTMP from the
//!   push sink: libavformat has no RTMP server this process could open as a source, so
//!   `ffmpeg -listen 1` takes the push and copies its FLV tags (no decode, flushed per
//!   packet) into a FIFO that the same in-process decoder reads.
//! - **LL-HLS at the live edge**: a client in this process that asks as hls.js does (a
//!   blocking request for the playlist's preload-hinted part, then the next) writes the
//!   parts into a FIFO that libavformat's fragmented-MP4 demuxer reads: the time from the
//!   stage to a decoded picture when the client is at the live edge. A player adds its
//!   hold-back on top (the playlist's `PART-HOLD-BACK`, three parts).
//! - **CPU per output and per consumer**: the agent's CPU recording alone, then with one
//!   output more (the RTSP server with 0, 1 and 4 clients copying the stream into nothing,
//!   an SRT push and an RTMP push to a listener, LL-HLS with one client at the live edge), an agent process
//!   per setup, interleaved rounds, ratios against recording alone in the same round.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aegis_hal::StreamId;
use aegis_hal::pixel::{Plane, read_code};
use aegis_hal::source::{
    FileSource, FileSourceSettings, LiveSource, LiveSourceSettings, RtspTransport, VideoSource,
};
use serde::Serialize;

use super::proc::{Child, cpu_seconds, free_port, pct};

/// Where the clock code is drawn: `timestamp_overlay` at x = y = 16, scale 2 (the stage's
/// defaults): squares of 16 px, 38 px from the top.
const CODE_X: usize = 16;
const CODE_Y: usize = 38;
const CODE_BLOCK: usize = 16;
/// The start of each probe that is not measured.
const WARM_UP: Duration = Duration::from_secs(3);

/// One protocol's latency.
#[derive(Debug, Clone, Serialize)]
pub struct ProtocolLatency {
    /// `rtsp-tcp`, `rtsp-udp`, `srt-push`, `rtmp-push`, `ll-hls`.
    pub protocol: &'static str,
    /// The recorder's encoder had `low_latency` on (x264 zerolatency, sliced threads).
    pub low_latency: bool,
    /// Pictures whose code was read.
    pub frames: usize,
    /// Pictures without a readable code.
    pub unreadable: usize,
    /// Median, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// Largest, ms.
    pub max_ms: f64,
}

/// What the agent serves in a CPU setup, beside its recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setup {
    /// The recording alone (the baseline).
    RecordOnly,
    /// The RTSP server with this many clients (TCP, `ffmpeg -c copy` into nothing).
    Rtsp(usize),
    /// An SRT push to a listener (`ffmpeg -c copy` into nothing).
    SrtPush,
    /// An RTMP push to a listener (`ffmpeg -listen 1 -c copy` into nothing).
    RtmpPush,
    /// The `hls` sink (1 s segments, 200 ms parts) with one client following the live edge
    /// (blocking requests for each part, bytes discarded).
    LlHls,
    /// The `webrtc` sink with this many WHEP viewers (str0m in this process).
    WebRtc(usize),
}

impl Setup {
    const ALL: [Setup; 9] = [
        Setup::RecordOnly,
        Setup::Rtsp(0),
        Setup::Rtsp(1),
        Setup::Rtsp(4),
        Setup::SrtPush,
        Setup::RtmpPush,
        Setup::LlHls,
        Setup::WebRtc(1),
        Setup::WebRtc(4),
    ];

    fn name(self) -> String {
        match self {
            Setup::RecordOnly => "record only".into(),
            Setup::Rtsp(n) => format!("+ RTSP server, {n} client(s)"),
            Setup::SrtPush => "+ SRT push".into(),
            Setup::RtmpPush => "+ RTMP push".into(),
            Setup::LlHls => "+ LL-HLS, 1 client".into(),
            Setup::WebRtc(n) => format!("+ WebRTC (WHEP), {n} viewer(s)"),
        }
    }

    /// The sinks beside the record sink.
    fn sinks(self, push: PushPorts) -> String {
        match self {
            Setup::RecordOnly => String::new(),
            Setup::Rtsp(_) => "    - { kind: restream }\n".into(),
            Setup::SrtPush => format!(
                "    - {{ kind: push, stream: cam0, url: \"srt://127.0.0.1:{}\", backoff_max_s: 1 }}\n",
                push.srt
            ),
            Setup::RtmpPush => format!(
                "    - {{ kind: push, stream: cam0, url: \"rtmp://127.0.0.1:{}/live\", stream_key: {RTMP_KEY}, backoff_max_s: 1 }}\n",
                push.rtmp
            ),
            Setup::LlHls => "    - { kind: hls, segment_s: 1, part_ms: 200 }\n".into(),
            Setup::WebRtc(_) => "    - { kind: webrtc, max_sessions: 8 }\n".into(),
        }
    }
}

/// The agent's CPU in one setup.
#[derive(Debug, Clone, Serialize)]
pub struct SetupCpu {
    /// What it served.
    pub setup: Setup,
    /// Agent CPU, percent of one core, mean over the rounds.
    pub cpu_pct: f64,
    /// Per round: this CPU / the CPU recording alone in the same round; min, median, max.
    pub ratio: [f64; 3],
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct OutputsBench {
    /// Per protocol.
    pub latency: Vec<ProtocolLatency>,
    /// Per setup.
    pub cpu: Vec<SetupCpu>,
    /// Seconds per window.
    pub window_s: f64,
}

/// The ports the agent's pushes connect to (this process, or an ffmpeg it started, listens).
#[derive(Debug, Clone, Copy)]
struct PushPorts {
    srt: u16,
    rtmp: u16,
}

/// The agent's ports: its web server, its RTSP server, and where it pushes.
#[derive(Debug, Clone, Copy)]
struct Ports {
    web: u16,
    rtsp: u16,
    push: PushPorts,
}

/// The stream key of the RTMP pushes (the listener's URL ends with it).
const RTMP_KEY: &str = "bench";

/// Every output at once: what the latency probes use.
fn all_outputs(push: PushPorts) -> String {
    [
        Setup::Rtsp(0),
        Setup::SrtPush,
        Setup::RtmpPush,
        Setup::LlHls,
    ]
    .iter()
    .map(|s| s.sinks(push))
    .collect()
}

fn config(
    dir: &Path,
    clip: &Path,
    low_latency: bool,
    ports: Ports,
    outputs: &str,
    baseline: bool,
) -> String {
    let Ports {
        web: port, rtsp, ..
    } = ports;
    format!(
        "device: {{ id: bench-outputs }}\n\
         pipeline:\n  sources:\n    - {{ id: cam0, url: \"file:{clip}\", loop: true, realtime: true }}\n\
         \x20 stages:\n    - {{ kind: timestamp_overlay, clock_code: true }}\n\
         \x20 sinks:\n    - {{ kind: record, dir: \"{rec}\", segment_seconds: 10, disk_budget_mb: 100, encoder: {{ low_latency: {low_latency}{profile} }} }}\n\
         {outputs}\
         outputs: {{ rtsp: {{ listen: \"127.0.0.1:{rtsp}\", anonymous: true }} }}\n\
         store: {{ path: \"{db}\" }}\n\
         web: {{ listen: \"127.0.0.1:{port}\" }}\n",
        clip = clip.display(),
        rec = dir.join("rec").display(),
        db = dir.join("aegis.db").display(),
        // The CPU setups hold every recording to what browsers decode in WebRTC.
        profile = if baseline { ", profile: baseline" } else { "" },
    )
}

fn now_ms() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u32
}

/// Decodes `url` for `window` and reads the clock code of every picture.
fn probe(
    protocol: &'static str,
    low_latency: bool,
    url: String,
    transport: RtspTransport,
    window: Duration,
) -> anyhow::Result<ProtocolLatency> {
    let mut settings = LiveSourceSettings::new(url, StreamId::new("probe"));
    settings.transport = transport;
    settings.decoder_threads = 1;
    settings.connect_timeout = Duration::from_secs(10);
    read_codes(
        protocol,
        low_latency,
        &mut LiveSource::new(settings),
        window,
    )
}

/// Reads the clock code of every picture `src` decodes for `window` (after [`WARM_UP`]).
fn read_codes(
    protocol: &'static str,
    low_latency: bool,
    src: &mut dyn VideoSource,
    window: Duration,
) -> anyhow::Result<ProtocolLatency> {
    let (mut lat, mut unreadable) = (Vec::new(), 0);
    let t0 = Instant::now();
    // The first seconds are the connection's start (libavformat's probe reads a second of
    // stream before the first picture; the client then catches up): not measured.
    while t0.elapsed() < window + WARM_UP {
        let Some(frame) = src.next_frame()? else {
            break;
        };
        let decoded = now_ms();
        if t0.elapsed() < WARM_UP {
            continue;
        }
        let [y, _, _] = frame.planes();
        match read_code(
            Plane::new(y.data, y.stride),
            frame.layout.width,
            CODE_X,
            CODE_Y,
            CODE_BLOCK,
        ) {
            Some(stamped) => lat.push(f64::from(decoded.wrapping_sub(stamped))),
            None => unreadable += 1,
        }
    }
    anyhow::ensure!(
        !lat.is_empty(),
        "{protocol}: no picture with a readable clock code"
    );
    Ok(ProtocolLatency {
        protocol,
        low_latency,
        frames: lat.len(),
        unreadable,
        p50_ms: pct(&mut lat, 0.5),
        p95_ms: pct(&mut lat, 0.95),
        max_ms: pct(&mut lat, 1.0),
    })
}

/// The bench's web account (a viewer) and its password.
const VIEWER: (&str, &str) = ("bench", "bench-viewer-password");

/// An LL-HLS client at the live edge (see the module docs): fetches the init segment and
/// then each part as soon as the server has it, into a FIFO that a file source decodes.
/// Logs the bench's viewer in to the agent's web server on `web`: a client, the base URL
/// and the session cookie.
fn login(web: u16) -> anyhow::Result<(ureq::Agent, String, String)> {
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let base = format!("http://127.0.0.1:{web}");
    let login = http
        .post(format!("{base}/login"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .send(format!("user={}&password={}", VIEWER.0, VIEWER.1))?;
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .ok_or_else(|| anyhow::anyhow!("the login set no cookie ({})", login.status()))?
        .to_owned();
    Ok((http, base, cookie))
}

/// A WebRTC viewer of the agent on `web` (WHEP, as the live page's WebRTC mode asks): str0m
/// as the controlling ICE agent receiving H.264 on a loopback socket, the media discarded,
/// until `stop`; the thread returns the bytes received.
fn whep_viewer(
    web: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<u64>>> {
    use str0m::media::{Direction, MediaKind};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Event, Input, Output, Rtc};
    let (http, base, cookie) = login(web)?;
    let page = http
        .get(format!("{base}/live"))
        .header("Cookie", &cookie)
        .call()?
        .body_mut()
        .read_to_string()?;
    let csrf = page
        .split("data-csrf=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .ok_or_else(|| anyhow::anyhow!("whep: no CSRF token on the live page"))?
        .to_owned();
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let local = socket.local_addr()?;
    let mut rtc = Rtc::builder()
        .clear_codecs()
        .enable_h264(true)
        .build(Instant::now());
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Video, Direction::RecvOnly, None, None, None);
    let (offer, pending) = change
        .apply()
        .ok_or_else(|| anyhow::anyhow!("whep: no offer"))?;
    let mut r = http
        .post(format!("{base}/whep/cam0"))
        .header("Cookie", &cookie)
        .header("X-CSRF-Token", &csrf)
        .header("Content-Type", "application/sdp")
        .send(offer.to_sdp_string())?;
    let answer = r.body_mut().read_to_string()?;
    anyhow::ensure!(r.status() == 201, "whep: HTTP {}: {answer}", r.status());
    rtc.sdp_api()
        .accept_answer(pending, str0m::change::SdpAnswer::from_sdp_string(&answer)?)?;
    Ok(std::thread::spawn(move || -> anyhow::Result<u64> {
        let mut bytes = 0u64;
        let mut buf = vec![0u8; 2048];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            loop {
                match rtc.poll_output()? {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let _ = socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(Event::MediaData(d)) => bytes += d.data.len() as u64,
                    Output::Event(_) => {}
                }
            }
            let input = match socket.recv_from(&mut buf) {
                Ok((n, source)) => Input::Receive(
                    Instant::now(),
                    Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: local,
                        contents: buf[..n].try_into()?,
                    },
                ),
                Err(_) => Input::Timeout(Instant::now()),
            };
            rtc.handle_input(input)?;
        }
        Ok(bytes)
    }))
}

/// A viewer's LL-HLS client at the live edge of the agent on `web`, as hls.js asks: logs
/// in and reads the playlist here, then on its own thread opens `open()` and writes the init
/// segment and each part into it as the server releases it (a blocking request for the
/// preload-hinted part, then the next), until `stop`.
fn hls_follow<W: std::io::Write>(
    web: u16,
    open: impl FnOnce() -> std::io::Result<W> + Send + 'static,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<()>>> {
    let (http, base, cookie) = login(web)?;
    let get = move |path: &str| -> anyhow::Result<Option<Vec<u8>>> {
        let mut r = http
            .get(format!("{base}/hls/cam0/{path}"))
            .header("Cookie", &cookie)
            .call()?;
        match r.status().as_u16() {
            200 => Ok(Some(
                r.body_mut().with_config().limit(64 << 20).read_to_vec()?,
            )),
            404 => Ok(None),
            s => anyhow::bail!("hls: {path}: HTTP {s}"),
        }
    };
    let playlist = get("index.m3u8")?.ok_or_else(|| anyhow::anyhow!("hls: no playlist"))?;
    let playlist = String::from_utf8_lossy(&playlist);
    let attr = |tag: &str| {
        playlist
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(tag))
            .and_then(|l| l.split('"').nth(1))
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("hls: no {tag} in the playlist"))
    };
    let init = attr("#EXT-X-MAP:")?;
    let hint = attr("#EXT-X-PRELOAD-HINT:")?;
    let (msn, part) = hint
        .strip_prefix("part-")
        .and_then(|h| h.strip_suffix(".m4s"))
        .and_then(|h| h.split_once('.'))
        .and_then(|(m, p)| Some((m.parse::<u64>().ok()?, p.parse::<u64>().ok()?)))
        .ok_or_else(|| anyhow::anyhow!("hls: preload hint {hint:?}"))?;
    Ok(std::thread::spawn(move || -> anyhow::Result<()> {
        let mut out = open()?;
        out.write_all(&get(&init)?.ok_or_else(|| anyhow::anyhow!("hls: no {init}"))?)?;
        let (mut msn, mut part) = (msn, part);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            // The server holds the request until the part exists; a 404 for the part after
            // a segment's last is the next segment's first.
            match get(&format!("part-{msn}.{part}.m4s"))? {
                Some(p) => {
                    out.write_all(&p)?;
                    part += 1;
                }
                None if part > 0 => (msn, part) = (msn + 1, 0),
                None => anyhow::bail!("hls: part {msn}.0 never came"),
            }
        }
        Ok(())
    }))
}

/// The LL-HLS latency at the live edge: [`hls_follow`] writes into a FIFO that libavformat's
/// fragmented-MP4 demuxer reads, and the clock codes are read from what it decodes.
fn hls_probe(
    low_latency: bool,
    web: u16,
    dir: &Path,
    window: Duration,
) -> anyhow::Result<ProtocolLatency> {
    let fifo = make_fifo(dir, "hls.fifo")?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = fifo.clone();
    let fetcher = hls_follow(
        web,
        move || std::fs::OpenOptions::new().write(true).open(writer),
        stop.clone(),
    )?;
    let mut src = fifo_source(fifo, "ll-hls")?;
    let r = read_codes("ll-hls", low_latency, &mut src, window);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    drop(src);
    let _ = fetcher.join();
    r
}

/// A FIFO named `name` in `dir`.
fn make_fifo(dir: &Path, name: &str) -> anyhow::Result<std::path::PathBuf> {
    let fifo = dir.join(name);
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())?;
    // SAFETY: a NUL-terminated path; mkfifo(3) only creates the file.
    let made = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    anyhow::ensure!(
        made == 0,
        "mkfifo {name}: {}",
        std::io::Error::last_os_error()
    );
    Ok(fifo)
}

/// How long a FIFO probe waits for its writer (the HLS client, the RTMP listener).
const FIFO_TIMEOUT: Duration = Duration::from_secs(30);

/// The in-process decoder of the FIFO probes. Opening waits for the FIFO's writer; one that
/// never comes (no push arrived, the listener died) ends the wait after [`FIFO_TIMEOUT`]
/// with an error naming `what`, instead of a bench that hangs.
fn fifo_source(fifo: std::path::PathBuf, what: &str) -> anyhow::Result<FileSource> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let opened = std::sync::Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (opened, fifo) = (opened.clone(), fifo.clone());
        std::thread::spawn(move || {
            let t0 = Instant::now();
            while t0.elapsed() < FIFO_TIMEOUT {
                if opened.load(Ordering::Relaxed) {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Nobody wrote: an empty stream unblocks the reader.
            use std::os::unix::fs::OpenOptionsExt as _;
            !opened.load(Ordering::Relaxed)
                && std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(&fifo)
                    .is_ok()
        })
    };
    let src = FileSource::open(FileSourceSettings {
        pool_frames: 8,
        ..FileSourceSettings::new(fifo, StreamId::new("probe"))
    });
    opened.store(true, Ordering::Relaxed);
    let fired = watchdog.join().unwrap_or(false);
    anyhow::ensure!(
        !fired,
        "{what}: nothing arrived in {} s (is ffmpeg installed, did the push connect?)",
        FIFO_TIMEOUT.as_secs()
    );
    Ok(src?)
}

/// An RTMP server on `port` for the agent's push: `ffmpeg -listen 1`, copying what it
/// receives (no decode) into `output` in the format `format`.
fn rtmp_listener(port: u16, format: &str, output: &std::ffi::OsStr) -> anyhow::Result<Child> {
    Ok(Child(
        Command::new("ffmpeg")
            .args(["-v", "quiet", "-fflags", "nobuffer", "-listen", "1", "-i"])
            .arg(format!("rtmp://127.0.0.1:{port}/live/{RTMP_KEY}"))
            .args(["-c", "copy", "-flush_packets", "1", "-y", "-f", format])
            .arg(output)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("ffmpeg (the RTMP listener): {e}"))?,
    ))
}

/// The RTMP push's latency: [`rtmp_listener`] copies the FLV tags into a FIFO (flushed per
/// packet: FLV tags carry their size, so the demuxer waits for nothing after a picture)
/// that the in-process decoder reads. The listener's demux and remux are in the figure.
fn rtmp_probe(
    low_latency: bool,
    port: u16,
    dir: &Path,
    window: Duration,
) -> anyhow::Result<ProtocolLatency> {
    let fifo = make_fifo(dir, "rtmp.fifo")?;
    let _listener = rtmp_listener(port, "flv", fifo.as_os_str())?;
    let mut src = fifo_source(fifo, "rtmp-push")?;
    read_codes("rtmp-push", low_latency, &mut src, window)
}

/// `n` RTSP clients that copy the stream into nothing.
fn clients(rtsp: u16, n: usize) -> anyhow::Result<Vec<Child>> {
    (0..n)
        .map(|_| {
            Ok(Child(
                Command::new("ffmpeg")
                    .args(["-v", "quiet", "-rtsp_transport", "tcp", "-i"])
                    .arg(format!("rtsp://127.0.0.1:{rtsp}/cam0"))
                    .args(["-c", "copy", "-f", "null", "-"])
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| anyhow::anyhow!("ffmpeg (the RTSP clients): {e}"))?,
            ))
        })
        .collect()
}

/// An agent playing `clip` with the clock code, its recorder's encoder `low_latency` or
/// not, with `outputs` beside the recording: the process, its ports and its directory
/// (kept while it runs).
fn start_agent(
    clip: &Path,
    low_latency: bool,
    baseline: bool,
    outputs: impl FnOnce(PushPorts) -> String,
) -> anyhow::Result<(Child, Ports, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let ports = Ports {
        web: free_port()?,
        rtsp: free_port()?,
        push: PushPorts {
            srt: free_port()?,
            rtmp: free_port()?,
        },
    };
    let cfg_path = dir.path().join("agent.yaml");
    let outputs = outputs(ports.push);
    std::fs::write(
        &cfg_path,
        config(dir.path(), clip, low_latency, ports, &outputs, baseline),
    )?;
    // The web account the LL-HLS client logs in with.
    let mut add = Command::new(std::env::current_exe()?)
        .args(["user", "add", VIEWER.0, "--role", "viewer", "--config"])
        .arg(&cfg_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    if let Some(mut stdin) = add.stdin.take() {
        use std::io::Write as _;
        writeln!(stdin, "{}", VIEWER.1)?;
    }
    anyhow::ensure!(add.wait()?.success(), "aegis user add failed");
    let agent = Child(
        Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "error")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let t0 = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", ports.web)).is_err() {
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(60),
            "the agent did not come up"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    Ok((agent, ports, dir))
}

/// Runs the benchmark on `clip`: latency per protocol over `window`, then `rounds` rounds
/// of every CPU [`Setup`], `window` each.
pub fn bench_outputs(clip: &Path, rounds: usize, window: Duration) -> anyhow::Result<OutputsBench> {
    let mut latency = Vec::new();
    for low_latency in [true, false] {
        let (_agent, ports, dir) = start_agent(clip, low_latency, false, all_outputs)?;
        let url = format!("rtsp://127.0.0.1:{}/cam0", ports.rtsp);
        latency.push(probe(
            "rtsp-tcp",
            low_latency,
            url.clone(),
            RtspTransport::Tcp,
            window,
        )?);
        latency.push(probe(
            "rtsp-udp",
            low_latency,
            url,
            RtspTransport::Udp,
            window,
        )?);
        // This process is the SRT server the push connects to.
        let listener = format!("srt://127.0.0.1:{}?mode=listener", ports.push.srt);
        latency.push(probe(
            "srt-push",
            low_latency,
            listener,
            RtspTransport::Tcp,
            window,
        )?);
        latency.push(rtmp_probe(
            low_latency,
            ports.push.rtmp,
            dir.path(),
            window,
        )?);
        latency.push(hls_probe(low_latency, ports.web, dir.path(), window)?);
    }
    // The CPU figures: the default encoder (frame threads) held to Constrained Baseline (for
    // the WebRTC viewers) in every setup; an agent process per setup, the setups
    // interleaved in each round.
    let mut pcts: Vec<Vec<f64>> = vec![Vec::new(); Setup::ALL.len()];
    for _ in 0..rounds {
        for (i, &setup) in Setup::ALL.iter().enumerate() {
            let (agent, ports, _dir) = start_agent(clip, false, true, |push| setup.sinks(push))?;
            let Ports { web, rtsp, push } = ports;
            let pid = agent.0.id();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let mut follower = None;
            let mut viewers = Vec::new();
            let consumers = match setup {
                Setup::RecordOnly => Vec::new(),
                Setup::Rtsp(n) => clients(rtsp, n)?,
                Setup::SrtPush => vec![Child(
                    Command::new("ffmpeg")
                        .args(["-v", "quiet", "-i"])
                        .arg(format!("srt://127.0.0.1:{}?mode=listener", push.srt))
                        .args(["-c", "copy", "-f", "null", "-"])
                        .stdin(Stdio::null())
                        .spawn()
                        .map_err(|e| anyhow::anyhow!("ffmpeg (the SRT listener): {e}"))?,
                )],
                Setup::RtmpPush => vec![rtmp_listener(push.rtmp, "null", "-".as_ref())?],
                Setup::LlHls => {
                    follower = Some(hls_follow(web, || Ok(std::io::sink()), stop.clone())?);
                    Vec::new()
                }
                Setup::WebRtc(n) => {
                    for _ in 0..n {
                        viewers.push(whep_viewer(web, stop.clone())?);
                    }
                    Vec::new()
                }
            };
            // Consumers connect and settle before the window.
            std::thread::sleep(Duration::from_secs(2));
            let (c0, w0) = (cpu_seconds(pid)?, Instant::now());
            std::thread::sleep(window);
            pcts[i].push((cpu_seconds(pid)? - c0) / w0.elapsed().as_secs_f64() * 100.0);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            drop(consumers);
            drop(agent);
            if let Some(f) = follower {
                // Ends with the agent (its request fails) if not at its stop check.
                let _ = f.join();
            }
            for v in viewers {
                let bytes = v
                    .join()
                    .map_err(|_| anyhow::anyhow!("whep viewer panicked"))??;
                anyhow::ensure!(bytes > 0, "a WebRTC viewer received nothing");
            }
        }
    }
    let cpu = Setup::ALL
        .iter()
        .enumerate()
        .map(|(i, &setup)| {
            let mut ratios: Vec<f64> = pcts[i].iter().zip(&pcts[0]).map(|(c, b)| c / b).collect();
            SetupCpu {
                setup,
                cpu_pct: pcts[i].iter().sum::<f64>() / pcts[i].len().max(1) as f64,
                ratio: [
                    pct(&mut ratios, 0.0),
                    pct(&mut ratios, 0.5),
                    pct(&mut ratios, 1.0),
                ],
            }
        })
        .collect();
    Ok(OutputsBench {
        latency,
        cpu,
        window_s: window.as_secs_f64(),
    })
}

/// Prints the tables.
pub fn print(r: &OutputsBench) {
    println!("glass to glass (clock drawn into the frame → picture decoded by the client), ms:");
    println!(
        "  {:<10} {:<12} {:>7} {:>11} {:>7} {:>7} {:>7}",
        "protocol", "encoder", "frames", "unreadable", "p50", "p95", "max"
    );
    for l in &r.latency {
        println!(
            "  {:<10} {:<12} {:>7} {:>11} {:>7.0} {:>7.0} {:>7.0}",
            l.protocol,
            if l.low_latency {
                "low_latency"
            } else {
                "default"
            },
            l.frames,
            l.unreadable,
            l.p50_ms,
            l.p95_ms,
            l.max_ms
        );
    }
    println!(
        "agent CPU per output and consumer ({} s windows, ratio vs recording alone in the same round):",
        r.window_s
    );
    for c in &r.cpu {
        println!(
            "  {:<30} {:>5.1} % of a core, ratio {:.2} (min {:.2}, max {:.2})",
            c.setup.name(),
            c.cpu_pct,
            c.ratio[1],
            c.ratio[0],
            c.ratio[2]
        );
    }
}
