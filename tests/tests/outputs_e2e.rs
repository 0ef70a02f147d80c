//! End to end: the streaming outputs of the real `aegis` binary, played by real clients on
//! loopback. The RTSP restream server serves the recorder's stream to ffmpeg over
//! TCP-interleaved and UDP and to GStreamer's `rtspsrc`, behind Digest authentication; what
//! each client gets is checked frame by frame against the recording (every picture the
//! client decodes is the recording's, in order, without a gap). A client that stops reading
//! changes nothing for the others. The RTMP push reconnects after its server restarts, the
//! SRT push encrypts with its passphrase, and no password, stream key or passphrase appears
//! in the log.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::agent::{ConfigExtra, RunningAgent, recorder_config};
use aegis_tests::files::free_port;
use aegis_tests::*;
use md5::{Digest as _, Md5};

const PASSWORD: &str = "restream-horse-41";
const STREAM_KEY: &str = "sk-7f3a9c20e1";
const PASSPHRASE: &str = "srt-passphrase-5d8e";

fn config(dir: &Path, port: u16, clip: &Path, sinks: &str, outputs: &str) -> PathBuf {
    let extra = ConfigExtra {
        sinks,
        pipeline: "",
        root: outputs,
    };
    recorder_config(dir, "outputs-e2e", clip, port, 120, extra)
}

/// The MD5 of every picture ffmpeg decodes from `input` (a file or URL), in order.
fn picture_hashes(input: &str, extra: &[&str]) -> Vec<String> {
    let out = Command::new("ffmpeg")
        .args(["-v", "error"])
        .args(extra)
        .args(["-i", input, "-map", "0:v", "-f", "framemd5", "-"])
        .output()
        .expect("ffmpeg");
    assert!(
        out.status.success(),
        "ffmpeg could not decode {input}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit(',').next().map(|h| h.trim().to_owned()))
        .collect()
}

/// Every picture of `got` is the recording's, in order, without a gap: `got` is a
/// contiguous run of `recording`.
fn assert_contiguous_run(what: &str, got: &[String], recording: &[String]) {
    assert!(!got.is_empty(), "{what}: no pictures");
    let start = recording
        .iter()
        .position(|h| *h == got[0])
        .unwrap_or_else(|| panic!("{what}: its first picture is not in the recording"));
    let run = &recording[start..(start + got.len()).min(recording.len())];
    let first_bad = got.iter().zip(run).position(|(a, b)| a != b);
    assert!(
        first_bad.is_none() && run.len() == got.len(),
        "{what}: picture {first_bad:?} of {} differs from the recording (or runs past it)",
        got.len()
    );
}

/// The first picture of a capture is a keyframe.
fn first_is_key(path: &Path) -> bool {
    let out = Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "frame=key_frame",
        ])
        .args(["-read_intervals", "%+#1", "-of", "csv=p=0"])
        .arg(path)
        .output()
        .expect("ffprobe");
    String::from_utf8_lossy(&out.stdout).trim().starts_with('1')
}

/// `ffmpeg -i url -c copy -frames:v N out`: a capture of the stream as it arrived.
fn capture(url: &str, transport: &str, frames: u32, out: &Path) -> std::process::Output {
    Command::new("timeout")
        .args([
            "60",
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-rtsp_transport",
            transport,
            "-i",
            url,
        ])
        .args(["-c", "copy", "-frames:v", &frames.to_string()])
        .arg(out)
        .output()
        .expect("ffmpeg")
}

/// GStreamer's `rtspsrc` plays 30 buffers of `location` over TCP as `vms` (with
/// `extra` properties).
fn rtspsrc_plays(location: &str, extra: &[&str]) {
    let gst = Command::new("timeout")
        .args(["60", "gst-launch-1.0", "-q", "rtspsrc"])
        .arg(format!("location={location}"))
        .args([
            "user-id=vms",
            &format!("user-pw={PASSWORD}"),
            "protocols=tcp",
        ])
        .args(extra)
        .args(["!", "rtph264depay", "!", "fakesink", "num-buffers=30"])
        .output()
        .unwrap();
    assert!(
        gst.status.success(),
        "GStreamer rtspsrc on {location}: {}{}",
        String::from_utf8_lossy(&gst.stdout),
        String::from_utf8_lossy(&gst.stderr)
    );
}

/// One RTSP request on `s` (Digest-authenticated as `vms` when `nonce` is given); the
/// response head.
fn rtsp_request(
    s: &mut TcpStream,
    method: &str,
    uri: &str,
    cseq: u32,
    extra: &str,
    nonce: Option<&str>,
) -> String {
    let hex = |parts: &[&str]| -> String {
        let mut h = Md5::new();
        h.update(parts.join(":").as_bytes());
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    let mut req = format!("{method} {uri} RTSP/1.0\r\nCSeq: {cseq}\r\n{extra}");
    if let Some(n) = nonce {
        let response = hex(&[&hex(&["vms", "aegis", PASSWORD]), n, &hex(&[method, uri])]);
        req.push_str(&format!(
            "Authorization: Digest username=\"vms\", realm=\"aegis\", nonce=\"{n}\", uri=\"{uri}\", response=\"{response}\"\r\n"
        ));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
    {
        let mut body = vec![0; len];
        s.read_exact(&mut body).unwrap();
    }
    head
}

/// A client that sets up and plays the stream over TCP, then never reads again.
fn stalled_client(rtsp: u16) -> TcpStream {
    let uri = format!("rtsp://127.0.0.1:{rtsp}/cam0");
    let mut s = TcpStream::connect(("127.0.0.1", rtsp)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let challenge = rtsp_request(&mut s, "DESCRIBE", &uri, 1, "", None);
    assert!(challenge.starts_with("RTSP/1.0 401"), "{challenge}");
    let nonce = challenge
        .split("nonce=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_owned();
    let d = rtsp_request(&mut s, "DESCRIBE", &uri, 2, "", Some(&nonce));
    assert!(d.starts_with("RTSP/1.0 200"), "{d}");
    let track = format!("{uri}/trackID=0");
    let setup = rtsp_request(
        &mut s,
        "SETUP",
        &track,
        3,
        "Transport: RTP/AVP/TCP;unicast;interleaved=0-1\r\n",
        Some(&nonce),
    );
    assert!(setup.starts_with("RTSP/1.0 200"), "{setup}");
    let session = setup
        .lines()
        .find_map(|l| l.strip_prefix("Session: "))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_owned();
    let play = rtsp_request(
        &mut s,
        "PLAY",
        &uri,
        4,
        &format!("Session: {session}\r\n"),
        Some(&nonce),
    );
    assert!(play.starts_with("RTSP/1.0 200"), "{play}");
    s
}

/// An agent recording a 4 s 320x240 clip and restreaming it on a server of its own
/// (`vms` with [`PASSWORD`], then `rtsp_extra` YAML lines under `outputs.rtsp`): the
/// agent, its web port and its RTSP port.
fn restream_agent(dir: &Path, rtsp_extra: &str) -> (RunningAgent, u16, u16) {
    let clip = make_clip(dir, "clip.mp4", 320, 240, 4.0);
    let (port, rtsp) = (free_port(), free_port());
    let cfg = config(
        dir,
        port,
        &clip,
        "    - kind: restream",
        &format!(
            "outputs:\n  rtsp:\n    listen: \"127.0.0.1:{rtsp}\"\n    users: [{{ name: vms, password: \"{PASSWORD}\" }}]{rtsp_extra}"
        ),
    );
    (RunningAgent::start(dir, &cfg, port), port, rtsp)
}

/// Every picture of cam0's recording in `dir`, in order (frame MD5s).
fn recorded_pictures(dir: &Path) -> Vec<String> {
    files_with_suffix(&dir.join("rec/cam0"), ".mp4")
        .iter()
        .flat_map(|seg| picture_hashes(&seg.to_string_lossy(), &[]))
        .collect()
}

#[test]
fn rtsp_restream_serves_the_recording_to_every_client() {
    if !have_ffprobe() || !have_command("gst-launch-1.0", "--version", "gstreamer1.0-tools") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (agent, port, rtsp) = restream_agent(dir, "");
    let log_path = agent.log.clone();
    let url = |user: &str| format!("rtsp://{user}@127.0.0.1:{rtsp}/cam0");
    let good = url(&format!("vms:{PASSWORD}"));

    // Refused: a wrong password, no password, a stream that is not restreamed.
    for (what, u) in [
        ("a wrong password", url("vms:wrong-password")),
        ("no password", format!("rtsp://127.0.0.1:{rtsp}/cam0")),
        (
            "an unknown stream",
            format!("rtsp://vms:{PASSWORD}@127.0.0.1:{rtsp}/cam9"),
        ),
    ] {
        let o = Command::new("ffprobe")
            .args(["-v", "error", "-rtsp_transport", "tcp", &u])
            .output()
            .unwrap();
        assert!(!o.status.success(), "{what} was served");
    }

    // A client that stops reading stays connected while the others play.
    let stalled = stalled_client(rtsp);
    let tcp = dir.join("tcp.mkv");
    let o = capture(&good, "tcp", 60, &tcp);
    assert!(
        o.status.success(),
        "TCP: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let udp = dir.join("udp.mkv");
    let o = capture(&good, "udp", 60, &udp);
    assert!(
        o.status.success(),
        "UDP: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    rtspsrc_plays(&format!("rtsp://127.0.0.1:{rtsp}/cam0"), &[]);
    drop(stalled);
    let metrics = http_get(&format!("127.0.0.1:{port}"), "/metrics")
        .unwrap()
        .1;
    agent.stop();

    let recording = recorded_pictures(dir);
    for (what, path) in [("TCP", &tcp), ("UDP", &udp)] {
        let got = picture_hashes(&path.to_string_lossy(), &[]);
        assert_eq!(got.len(), 60, "{what}: pictures");
        assert!(
            first_is_key(path),
            "{what}: the first picture is not a keyframe"
        );
        assert_contiguous_run(what, &got, &recording);
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("authentication failed"), "{log}");
    assert!(!log.contains(PASSWORD), "the password is in the log");
    assert!(
        metric(
            &metrics,
            "aegis_output_bytes_total{stream=\"cam0\",output=\"rtsp\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{metrics}"
    );
}

#[test]
fn rtsps_serves_the_recording_inside_tls_with_the_device_certificate() {
    if !have_ffprobe()
        || !have_command("openssl", "version", "openssl")
        || !have_command("gst-launch-1.0", "--version", "gstreamer1.0-tools")
    {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (agent, _, rtsp) = restream_agent(dir, "\n    tls: true\n    udp: false");
    let log_path = agent.log.clone();
    // Plain RTSP on the RTSPS port is not served.
    let plain = Command::new("timeout")
        .args(["30", "ffprobe", "-v", "error", "-rtsp_transport", "tcp"])
        .arg(format!("rtsp://vms:{PASSWORD}@127.0.0.1:{rtsp}/cam0"))
        .output()
        .unwrap();
    assert!(!plain.status.success(), "plain RTSP was served");
    // RTSPS (ffmpeg's TLS client; it does not check a self-signed certificate).
    let tls = dir.join("tls.mkv");
    let started = Instant::now();
    let o = loop {
        let o = capture(
            &format!("rtsps://vms:{PASSWORD}@127.0.0.1:{rtsp}/cam0"),
            "tcp",
            60,
            &tls,
        );
        // 404 until the pipeline's stream runs.
        let early = String::from_utf8_lossy(&o.stderr).contains("404 Not Found");
        if !early || started.elapsed() > Duration::from_secs(30) {
            break o;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        o.status.success(),
        "RTSPS: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // GStreamer's rtspsrc too (told not to validate the self-signed certificate).
    rtspsrc_plays(
        &format!("rtsps://127.0.0.1:{rtsp}/cam0"),
        &["tls-validation-flags=0"],
    );
    // The certificate served is the device's, whose fingerprint the agent logged.
    let served = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{rtsp} </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256"
        ))
        .output()
        .unwrap();
    let served = String::from_utf8_lossy(&served.stdout);
    let served = served
        .trim()
        .rsplit('=')
        .next()
        .unwrap_or_default()
        .to_owned();
    agent.stop();
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        served.len() == 95 && log.contains(&format!("fingerprint={served}")),
        "served {served:?}, not the fingerprint in the log:\n{log}"
    );
    let recording = recorded_pictures(dir);
    let got = picture_hashes(&tls.to_string_lossy(), &[]);
    assert_eq!(got.len(), 60, "RTSPS: pictures");
    assert!(
        first_is_key(&tls),
        "RTSPS: the first picture is not a keyframe"
    );
    assert_contiguous_run("RTSPS", &got, &recording);
    assert!(log.contains("RTSPS: no TLS session"), "{log}");
    assert!(!log.contains(PASSWORD), "the password is in the log");
}

/// `ffmpeg` as a media server: takes one incoming stream at `input` and writes it to `out`.
fn media_server(input: &str, out: &Path) -> Child {
    Command::new("ffmpeg")
        .args(["-v", "error", "-y"])
        .args(if input.starts_with("rtmp") {
            &["-listen", "1"][..]
        } else {
            &[][..]
        })
        .args(["-i", input, "-c", "copy"])
        .arg(out)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ffmpeg")
}

/// Waits until `path` holds at least `bytes`.
fn wait_for_bytes(path: &Path, bytes: u64, what: &str) {
    let t0 = Instant::now();
    while std::fs::metadata(path).map_or(0, |m| m.len()) < bytes {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no {what} within 60 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops an ffmpeg server cleanly (SIGINT: it writes its trailer).
fn interrupt(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn pictures(path: &Path) -> usize {
    picture_hashes(&path.to_string_lossy(), &[]).len()
}

#[test]
fn rtmp_push_reconnects_after_the_server_restarts() {
    if !have_ffprobe() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clip = make_clip(dir, "clip.mp4", 320, 240, 4.0);
    let (port, rtmp) = (free_port(), free_port());
    let ingest = format!("rtmp://127.0.0.1:{rtmp}/live/{STREAM_KEY}");
    let first = dir.join("first.flv");
    let server = media_server(&ingest, &first);
    let cfg = config(
        dir,
        port,
        &clip,
        &format!(
            "    - {{ kind: push, stream: cam0, url: \"rtmp://127.0.0.1:{rtmp}/live\", stream_key: \"{STREAM_KEY}\", backoff_max_s: 2 }}"
        ),
        "",
    );
    let agent = RunningAgent::start(dir, &cfg, port);
    let log_path = agent.log.clone();
    wait_for_bytes(&first, 40_000, "video at the first server");
    interrupt(server);
    // The server restarts on the same port; the push comes back on its own.
    let second = dir.join("second.flv");
    let server = media_server(&ingest, &second);
    wait_for_bytes(&second, 40_000, "video after the server restarted");
    agent.stop();
    interrupt(server);
    for (what, f) in [("first", &first), ("second", &second)] {
        let n = pictures(f);
        assert!(n >= 30, "{what} server: {n} pictures");
        assert!(
            first_is_key(f),
            "{what} server: does not start at a keyframe"
        );
    }
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.matches("push connected").count() >= 2, "{log}");
    assert!(log.contains("push failed"), "{log}");
    assert!(
        !log.contains(STREAM_KEY),
        "the stream key is in the log:\n{log}"
    );
}

#[test]
fn srt_push_is_encrypted_with_its_passphrase() {
    if !have_ffprobe() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let clip = make_clip(dir, "clip.mp4", 320, 240, 4.0);
    let (port, srt) = (free_port(), free_port());
    let out = dir.join("srt.ts");
    let server = media_server(
        &format!("srt://127.0.0.1:{srt}?mode=listener&passphrase={PASSPHRASE}"),
        &out,
    );
    let cfg = config(
        dir,
        port,
        &clip,
        &format!(
            "    - {{ kind: push, stream: cam0, url: \"srt://127.0.0.1:{srt}\", passphrase: \"{PASSPHRASE}\" }}"
        ),
        "",
    );
    let agent = RunningAgent::start(dir, &cfg, port);
    let log_path = agent.log.clone();
    wait_for_bytes(&out, 60_000, "video at the SRT server");
    agent.stop();
    interrupt(server);
    let n = pictures(&out);
    assert!(n >= 30, "{n} pictures");
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("push connected"), "{log}");
    assert!(
        !log.contains(PASSPHRASE),
        "the passphrase is in the log:\n{log}"
    );
}

/// The last `#EXT-X-PRELOAD-HINT` part of a playlist: (msn, part).
fn preload_hint(playlist: &str) -> (u64, u64) {
    let uri = playlist
        .lines()
        .find_map(|l| l.strip_prefix("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-"))
        .unwrap_or_else(|| panic!("no preload hint in {playlist}"));
    let (msn, rest) = uri.split_once('.').unwrap();
    let part = rest.split_once('.').unwrap().0;
    (msn.parse().unwrap(), part.parse().unwrap())
}

/// The HLS machine client's token in `hls_serves_…`: `outputs.hls.clients`.
const HLS_TOKEN: &str = "cdnPullToken0123456789abcdef";

/// A header's value in a response head (lower-cased name), if it is there.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[test]
fn hls_serves_the_recording_with_low_latency_parts_to_viewers_and_token_clients() {
    use aegis_tests::web_agent::{AgentSetup, VIEWER, WebAgent};
    if !have_ffprobe() {
        return;
    }
    let mut agent = WebAgent::start(&AgentSetup {
        device: "hls-e2e".into(),
        clip: (320, 240, 4.0),
        sinks: vec![
            "{ kind: record, dir: rec, segment_seconds: 2, encoder: { gop_frames: 30 } }".into(),
            "{ kind: hls, segment_s: 1, part_ms: 200 }".into(),
        ],
        extra: format!(
            "outputs:\n  hls:\n    clients:\n    - {{ name: cdn, token: \"{HLS_TOKEN}\" }}\n"
        ),
        ..AgentSetup::default()
    });
    let port: u16 = agent.addr().rsplit(':').next().unwrap().parse().unwrap();
    let fetch = |path: &str, headers: &[(&str, &str)]| {
        http_exchange(port, "GET", path, headers, b"").unwrap()
    };
    let get = |path: &str, cookie: Option<&str>| {
        let headers: Vec<(&str, &str)> = cookie.map(|c| ("Cookie", c)).into_iter().collect();
        fetch(path, &headers)
    };
    // Without a session or a client's token: 401, with a challenge for each way.
    let (code, head, _) = get("/hls/cam0/index.m3u8", None);
    assert_eq!(code, 401, "{head}");
    let challenges = head.to_lowercase();
    assert!(
        challenges.contains("www-authenticate: basic realm=\"aegis hls\"")
            && challenges.contains("www-authenticate: bearer"),
        "{head}"
    );
    // The machine client's token admits the HLS files, and nothing else (once the stream
    // is served: until its pipeline runs, 404).
    let bearer = format!("Bearer {HLS_TOKEN}");
    let t0 = Instant::now();
    while fetch("/hls/cam0/index.m3u8", &[("Authorization", &bearer)]).0 == 404 {
        assert!(t0.elapsed() < Duration::from_secs(30), "cam0 is not served");
        std::thread::sleep(Duration::from_millis(100));
    }
    let wrong = format!("Bearer {}x", &HLS_TOKEN[1..]);
    let basic_wrong_name = {
        use base64::Engine as _;
        let b = base64::engine::general_purpose::STANDARD.encode(format!("cdn2:{HLS_TOKEN}"));
        format!("Basic {b}")
    };
    for (auth, path, want) in [
        (bearer.as_str(), "/hls/cam0/index.m3u8", 200),
        (wrong.as_str(), "/hls/cam0/index.m3u8", 401),
        (basic_wrong_name.as_str(), "/hls/cam0/index.m3u8", 401),
        (bearer.as_str(), "/api/overview", 401),
        (bearer.as_str(), "/live", 401),
    ] {
        let (code, head, _) = fetch(path, &[("Authorization", auth)]);
        assert_eq!(code, want, "{auth} {path}: {head}");
    }
    let (_, head, _) = fetch("/hls/cam0/index.m3u8", &[("Authorization", &bearer)]);
    assert_eq!(
        header_value(&head, "cache-control").as_deref(),
        Some("no-cache"),
        "the live playlist, to a client: {head}"
    );
    // Only a logged-in viewer.
    let cookie = login_cookie(port, VIEWER.name, VIEWER.password);
    let c = Some(cookie.as_str());
    let (code, head, body) = get("/hls/cam0/index.m3u8", c);
    let playlist = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{head}{playlist}");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/vnd.apple.mpegurl"),
        "{head}"
    );
    assert_eq!(
        header_value(&head, "cache-control").as_deref(),
        Some("no-store"),
        "to a viewer: {head}"
    );
    for tag in [
        "#EXT-X-TARGETDURATION:1",
        "#EXT-X-PART-INF:PART-TARGET=0.200",
        "CAN-BLOCK-RELOAD=YES",
        "#EXT-X-MAP:URI=\"init-",
        "#EXTINF:",
    ] {
        assert!(playlist.contains(tag), "{tag} missing: {playlist}");
    }
    // A blocking reload for the hinted part answers once it exists, and lists it; the part
    // itself is a fragment (moof + mdat).
    let (msn, part) = preload_hint(&playlist);
    let (code, _, body) = get(
        &format!("/hls/cam0/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
        c,
    );
    let blocked = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{blocked}");
    assert!(
        blocked.contains(&format!("URI=\"part-{msn}.{part}.m4s\"")),
        "{blocked}"
    );
    let (code, _, fragment) = get(&format!("/hls/cam0/part-{msn}.{part}.m4s"), c);
    assert_eq!(code, 200);
    assert_eq!(&fragment[4..8], b"moof");
    // To a machine client (a CDN in front), media and blocking reloads may be cached for a
    // target duration; the same bytes as the viewer's.
    for path in [
        format!("/hls/cam0/part-{msn}.{part}.m4s"),
        format!("/hls/cam0/index.m3u8?_HLS_msn={msn}&_HLS_part={part}"),
    ] {
        let (code, head, body) = fetch(&path, &[("Authorization", &bearer)]);
        assert_eq!(code, 200, "{path}: {head}");
        assert_eq!(
            header_value(&head, "cache-control").as_deref(),
            Some("public, max-age=1"),
            "{path}: {head}"
        );
        if path.contains("part-") {
            assert_eq!(body, fragment, "{path}");
        }
    }
    // Refused: too far ahead, a malformed reload, a stream not served, a file that is not.
    for (path, want) in [
        (format!("/hls/cam0/index.m3u8?_HLS_msn={}", msn + 9), 400),
        ("/hls/cam0/index.m3u8?_HLS_part=1".to_string(), 400),
        ("/hls/cam0/index.m3u8?_HLS_msn=x".to_string(), 400),
        ("/hls/cam9/index.m3u8".to_string(), 404),
        ("/hls/cam0/seg-007.m4s".to_string(), 404),
        (format!("/hls/cam0/part-{}.0.m4s", msn + 5), 404),
    ] {
        assert_eq!(get(&path, c).0, want, "{path}");
    }

    // ffmpeg plays it (the cookie on every request): every picture is the recording's.
    let capture = agent.dir().join("hls.mkv");
    let o = Command::new("timeout")
        .args(["60", "ffmpeg", "-v", "error", "-y", "-headers"])
        .arg(format!("Cookie: {cookie}\r\n"))
        .arg("-i")
        .arg(format!("http://127.0.0.1:{port}/hls/cam0/index.m3u8"))
        .args(["-c", "copy", "-frames:v", "60"])
        .arg(&capture)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The multivariant playlist names the one rendition; a player given the client's name
    // and token in the URL (HTTP Basic, after the challenge) starts from it.
    let (code, _, body) = fetch("/hls/cam0/main.m3u8", &[("Authorization", &bearer)]);
    let main = String::from_utf8_lossy(&body);
    assert_eq!(code, 200, "{main}");
    assert!(
        main.contains("CODECS=\"avc1.")
            && main.contains("RESOLUTION=320x240,")
            && main.ends_with("\nindex.m3u8\n"),
        "{main}"
    );
    let by_token = agent.dir().join("hls-token.mkv");
    let o = Command::new("timeout")
        .args(["60", "ffmpeg", "-v", "error", "-y", "-i"])
        .arg(format!(
            "http://cdn:{HLS_TOKEN}@127.0.0.1:{port}/hls/cam0/main.m3u8"
        ))
        .args(["-c", "copy", "-frames:v", "30"])
        .arg(&by_token)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ffmpeg with the client's token: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let (_, _, metrics) = get("/metrics", None);
    agent.stop();
    let recording: Vec<String> = files_with_suffix(&agent.dir().join("rec/cam0"), ".mp4")
        .iter()
        .flat_map(|seg| picture_hashes(&seg.to_string_lossy(), &[]))
        .collect();
    let got = picture_hashes(&capture.to_string_lossy(), &[]);
    assert_eq!(got.len(), 60, "HLS: pictures");
    assert!(
        first_is_key(&capture),
        "HLS: the first picture is not a keyframe"
    );
    assert_contiguous_run("HLS", &got, &recording);
    let got = picture_hashes(&by_token.to_string_lossy(), &[]);
    assert_eq!(got.len(), 30, "HLS with the client's token: pictures");
    assert_contiguous_run("HLS with the client's token", &got, &recording);
    assert!(
        !agent.log().contains(HLS_TOKEN),
        "the client's token is in the log"
    );
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metric(
            &metrics,
            "aegis_output_bytes_total{stream=\"cam0\",output=\"hls\"}"
        )
        .unwrap_or(0.0)
            > 0.0,
        "{metrics}"
    );
}
