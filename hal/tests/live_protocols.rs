//! SRT and RTMP ingest through the same live source as RTSP, against real peers on loopback:
//! the `ffmpeg` CLI publishing a clip as an SRT listener and as an RTMP server.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aegis_hal::StreamId;
use aegis_hal::source::{LiveSource, LiveSourceSettings, SourceState, VideoSource};
use common::*;

struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `ffmpeg -re -stream_loop -1 -i CLIP -c copy -f FORMAT URL`, serving until dropped.
fn publish(clip: &std::path::Path, format: &str, url: &str) -> Peer {
    Peer(
        Command::new("ffmpeg")
            .args([
                "-hide_banner",
                "-loglevel",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
            ])
            .arg(clip)
            .args(["-c", "copy", "-f", format])
            .args(if format == "flv" {
                &["-listen", "1"][..]
            } else {
                &[][..]
            })
            .arg(url)
            .stdin(Stdio::null())
            .spawn()
            .expect("start ffmpeg"),
    )
}

fn pull(url: String) {
    let mut s = LiveSourceSettings::new(url, StreamId::new("contrib"));
    s.backoff_min = Duration::from_millis(100);
    s.backoff_max = Duration::from_millis(300);
    let mut src = LiveSource::new(s);
    let mut last = i64::MIN;
    for _ in 0..20 {
        let f = src.next_frame().expect("frame").expect("not ended");
        assert_eq!((f.layout.width, f.layout.height), (320, 240));
        assert!(f.pts_us > last);
        last = f.pts_us;
    }
    assert_eq!(src.health().state(), SourceState::Streaming);
    // The status names where the stream decodes (no GPU given: libavcodec).
    assert_eq!(src.health().snapshot().decoder, Some("libavcodec"));
}

#[test]
fn srt_and_rtmp_streams_play() {
    // A live source never gives up on its own: a broken peer must fail the test, not hang CI.
    with_hang_guard(
        "srt_and_rtmp_streams_play",
        std::time::Duration::from_secs(180),
        srt_and_rtmp_streams_play_body,
    );
}

fn srt_and_rtmp_streams_play_body() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = tmpdir();
    let clip = dir.path().join("c.mp4");
    write_clip(&clip, 320, 240, 60, &encoder(1500, 15));

    let port = free_port();
    let _srt = publish(
        &clip,
        "mpegts",
        &format!("srt://127.0.0.1:{port}?mode=listener"),
    );
    pull(format!("srt://127.0.0.1:{port}?mode=caller"));

    let port = free_port();
    let _rtmp = publish(&clip, "flv", &format!("rtmp://127.0.0.1:{port}/live/cam"));
    pull(format!("rtmp://127.0.0.1:{port}/live/cam"));
}
