//! Live RTSP sources against a real RTSP server on loopback (GStreamer's rtsp-server, driven
//! by `tools/rtsp-server.py`): normal play, server restart, wrong credentials, a server that
//! never answers, a resolution change and corrupted packets.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_hal::StreamId;
use aegis_hal::source::{LiveSource, LiveSourceSettings, SourceHealth, SourceState, VideoSource};
use common::*;

const PY: &str = "/usr/bin/python3";

/// The loopback RTSP server; killed on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/rtsp-server.py")
}

/// Whether the GStreamer RTSP server can run here; in CI its absence is a failure.
fn have_gst() -> bool {
    let ok = Command::new(PY)
        .args(["-c", "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs python3-gi + gir1.2-gst-rtsp-server-1.0 (tools/setup.sh)"
        );
        record_skip("GStreamer RTSP server not installed");
    }
    ok
}

fn serve(port: u16, mounts: &[(&str, &Path)], user: Option<&str>) -> Server {
    let mut cmd = Command::new(PY);
    cmd.arg(script()).arg(port.to_string());
    for (m, p) in mounts {
        cmd.arg(format!("{m}={}", p.display()));
    }
    if let Some(u) = user {
        cmd.args(["--user", u]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rtsp server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "rtsp server did not start");
    Server { child }
}

fn settings(url: String) -> LiveSourceSettings {
    let mut s = LiveSourceSettings::new(url, StreamId::new("cam"));
    s.backoff_min = Duration::from_millis(100);
    s.backoff_max = Duration::from_millis(400);
    s.connect_timeout = Duration::from_secs(3);
    s
}

/// Waits (bounded, a safety net only) until the health satisfies `pred`.
fn wait_health(
    h: &Arc<SourceHealth>,
    what: &str,
    pred: impl Fn(&aegis_hal::source::HealthSnapshot) -> bool,
) {
    let t0 = Instant::now();
    loop {
        let s = h.snapshot();
        if pred(&s) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "gave up waiting for {what}: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn clip(dir: &Path, name: &str, w: usize, h: usize, n: usize) -> PathBuf {
    let p = dir.join(name);
    write_clip(&p, w, h, n, &encoder(1500, 15));
    p
}

#[test]
fn plays_then_survives_a_server_restart() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "plays_then_survives_a_server_restart",
        std::time::Duration::from_secs(180),
        plays_then_survives_a_server_restart_body,
    );
}

fn plays_then_survives_a_server_restart_body() {
    if !have_gst() {
        return;
    }
    let dir = tmpdir();
    let mp4 = clip(dir.path(), "a.mp4", 320, 240, 150);
    let port = free_port();
    let server = serve(port, &[("cam", &mp4)], None);
    let mut src = LiveSource::new(settings(format!("rtsp://127.0.0.1:{port}/cam")));
    let health = src.health();
    let mut last_pts = i64::MIN;
    for i in 0..30 {
        let f = src.next_frame().expect("frame").expect("not ended");
        assert_eq!((f.layout.width, f.layout.height), (320, 240));
        assert_eq!(f.seq, i);
        assert!(f.pts_us > last_pts, "pts must increase");
        last_pts = f.pts_us;
    }
    assert_eq!(health.state(), SourceState::Streaming);

    // Kill the server mid-stream; the source keeps trying while we restart it.
    drop(server);
    let stopper = src.stopper();
    let reader = std::thread::spawn(move || {
        let mut frames = Vec::new();
        while frames.len() < 60 {
            match src.next_frame() {
                Ok(Some(f)) => frames.push((f.seq, f.pts_us)),
                Ok(None) => break,
                Err(e) => panic!("live source must not fail: {e}"),
            }
        }
        (frames, src.stats())
    });
    wait_health(&health, "the loss to be noticed", |s| {
        s.state != SourceState::Streaming || s.reconnects > 0
    });
    let _server = serve(port, &[("cam", &mp4)], None);
    let restarted = Instant::now();
    wait_health(&health, "frames after the restart", |s| {
        s.state == SourceState::Streaming && s.reconnects > 0
    });
    eprintln!("restart → streaming again in {:?}", restarted.elapsed());
    let (frames, stats) = reader.join().unwrap();
    // Counters span connections: the first connection's 30 frames are still counted.
    assert!(stats.decode.frames >= 90, "{stats:?}");
    assert_eq!(stats.frames, 90, "{stats:?}");
    stopper.stop();
    assert_eq!(frames.len(), 60, "frames resume after the restart");
    assert!(
        frames.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "seq continues without gaps"
    );
    assert!(
        frames.first().unwrap().1 > last_pts,
        "timeline continues across reconnects"
    );
    assert!(
        frames.windows(2).all(|w| w[1].1 > w[0].1),
        "pts increase across reconnects"
    );
    assert!(health.snapshot().last_error.is_some());
}

#[test]
fn wrong_credentials_back_off_with_a_clear_error() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "wrong_credentials_back_off_with_a_clear_error",
        std::time::Duration::from_secs(180),
        wrong_credentials_back_off_with_a_clear_error_body,
    );
}

fn wrong_credentials_back_off_with_a_clear_error_body() {
    if !have_gst() {
        return;
    }
    let dir = tmpdir();
    let mp4 = clip(dir.path(), "a.mp4", 160, 120, 30);
    let port = free_port();
    let _server = serve(port, &[("cam", &mp4)], Some("admin:right"));

    let mut src = LiveSource::new(settings(format!("rtsp://admin:wrong@127.0.0.1:{port}/cam")));
    let (stopper, health) = (src.stopper(), src.health());
    let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
    wait_health(&health, "two failed attempts", |s| s.reconnects >= 2);
    let s = health.snapshot();
    assert_eq!(s.decoder, None, "no connection, no decoder");
    let err = s.last_error.unwrap();
    assert!(err.contains("authentication failed"), "{err}");
    assert!(
        !err.contains("wrong"),
        "the password leaked into the error: {err}"
    );
    stopper.stop();
    assert!(matches!(t.join().unwrap(), Ok(false)));

    // The right password plays.
    let mut ok = LiveSource::new(settings(format!("rtsp://admin:right@127.0.0.1:{port}/cam")));
    let f = ok.next_frame().expect("frame").expect("not ended");
    assert_eq!((f.layout.width, f.layout.height), (160, 120));
}

#[test]
fn a_server_that_never_answers_is_detected() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "a_server_that_never_answers_is_detected",
        std::time::Duration::from_secs(180),
        a_server_that_never_answers_is_detected_body,
    );
}

fn a_server_that_never_answers_is_detected_body() {
    // Accepts TCP connections and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut s = settings(format!("rtsp://127.0.0.1:{port}/cam"));
    s.connect_timeout = Duration::from_millis(800);
    let mut src = LiveSource::new(s);
    let (stopper, health) = (src.stopper(), src.health());
    let t = std::thread::spawn(move || src.next_frame().map(|f| f.is_some()));
    wait_health(&health, "the silence to be reported", |s| s.reconnects >= 1);
    let err = health.snapshot().last_error.unwrap();
    assert!(err.contains("no answer within 0.8 s"), "{err}");
    stopper.stop();
    assert!(matches!(t.join().unwrap(), Ok(false)));
    drop(silent);
}

#[test]
fn resolution_change_and_corrupted_packets_keep_streaming() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "resolution_change_and_corrupted_packets_keep_streaming",
        std::time::Duration::from_secs(180),
        resolution_change_and_corrupted_packets_keep_streaming_body,
    );
}

fn resolution_change_and_corrupted_packets_keep_streaming_body() {
    if !have_gst() {
        return;
    }
    let dir = tmpdir();
    let small = clip(dir.path(), "small.mp4", 320, 240, 30);
    let large = clip(dir.path(), "large.mp4", 640, 360, 30);
    let mut raw = Vec::new();
    for p in [&small, &large] {
        let out = p.with_extension("h264");
        to_annexb(p, &out);
        raw.extend(std::fs::read(&out).unwrap());
    }
    let both = dir.path().join("both.h264");
    std::fs::write(&both, raw).unwrap();
    // A copy with damaged packets.
    let noisy = dir.path().join("noisy.mp4");
    ffmpeg(&[
        "-i",
        large.to_str().unwrap(),
        "-c",
        "copy",
        "-bsf:v",
        "noise=amount=2000",
        noisy.to_str().unwrap(),
    ]);

    let port = free_port();
    let _server = serve(port, &[("both", &both), ("noisy", &noisy)], None);

    let mut src = LiveSource::new(settings(format!("rtsp://127.0.0.1:{port}/both")));
    let mut sizes = Vec::new();
    while sizes.len() < 55 {
        let f = src.next_frame().expect("frame").expect("not ended");
        sizes.push((f.layout.width, f.layout.height));
    }
    assert!(
        sizes.contains(&(320, 240)) && sizes.contains(&(640, 360)),
        "{sizes:?}"
    );
    assert_eq!(
        src.health().snapshot().reconnects,
        0,
        "the change needed no reconnect"
    );

    let mut src = LiveSource::new(settings(format!("rtsp://127.0.0.1:{port}/noisy")));
    for _ in 0..10 {
        let f = src
            .next_frame()
            .expect("damage is not fatal")
            .expect("not ended");
        assert_eq!((f.layout.width, f.layout.height), (640, 360));
    }
}

#[test]
fn udp_transport_plays() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "udp_transport_plays",
        std::time::Duration::from_secs(180),
        udp_transport_plays_body,
    );
}

fn udp_transport_plays_body() {
    if !have_gst() {
        return;
    }
    let dir = tmpdir();
    let mp4 = clip(dir.path(), "a.mp4", 320, 240, 60);
    let port = free_port();
    let _server = serve(port, &[("cam", &mp4)], None);
    let mut s = settings(format!("rtsp://127.0.0.1:{port}/cam"));
    s.transport = aegis_hal::source::RtspTransport::Udp;
    let mut src = LiveSource::new(s);
    for _ in 0..20 {
        let f = src.next_frame().expect("frame").expect("not ended");
        assert_eq!((f.layout.width, f.layout.height), (320, 240));
    }
}

#[test]
fn rtcp_sender_reports_give_frames_wall_clock_time() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "rtcp_sender_reports_give_frames_wall_clock_time",
        std::time::Duration::from_secs(180),
        rtcp_sender_reports_give_frames_wall_clock_time_body,
    );
}

fn rtcp_sender_reports_give_frames_wall_clock_time_body() {
    if !have_gst() {
        return;
    }
    let dir = tmpdir();
    let mp4 = clip(dir.path(), "a.mp4", 160, 120, 240);
    let now_us = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64
    };
    // Logical bounds, whatever the load: the server (on this machine) captured every frame
    // after the test started it and before the frame reached us. A second of slack each side
    // covers the NTP mapping's rounding, not speed: a slow machine only widens the bracket.
    const SLACK_US: i64 = 1_000_000;
    let started_us = now_us();
    let port = free_port();
    let _server = serve(port, &[("cam", &mp4)], None);
    let mut src = LiveSource::new(settings(format!("rtsp://127.0.0.1:{port}/cam")));
    // The server sends its first sender report within a few seconds; from then on every frame
    // carries the capture time: the report's mapping applied to the frame's own timestamp.
    let mut with_clock = 0;
    let mut offset: Option<i64> = None;
    for _ in 0..200 {
        let f = src.next_frame().expect("frame").expect("not ended");
        let received_us = now_us();
        if let Some(w) = f.meta.wallclock_us {
            assert!(
                (started_us - SLACK_US..=received_us + SLACK_US).contains(&w),
                "frame {} captured at {w} µs, outside the test's run [{started_us}, {received_us}]",
                f.seq
            );
            // One mapping per connection: capture times advance exactly as the frames' own
            // timestamps do (no clock read per frame, no drift, no jumps).
            let o = *offset.get_or_insert(w - f.pts_us);
            assert_eq!(
                w - f.pts_us,
                o,
                "frame {}: capture time {w} µs does not follow its timestamp {} µs",
                f.seq,
                f.pts_us
            );
            with_clock += 1;
        }
    }
    assert!(
        with_clock > 50,
        "only {with_clock} frames had a wall-clock time"
    );
}
