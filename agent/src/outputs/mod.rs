//! Streaming outputs: the processed video in VMSs and clouds, encoded once. Each output
//! takes the stream's encoded packets from its live slot ([`crate::live`]) through
//! a bounded queue of its own, so a slow or dead consumer is dropped and counted and never
//! slows the pipeline, the recording or the other outputs.
//!
//! - [`rtsp`]: the RTSP restream server (`outputs.rtsp`, the `restream` sink).
//! - [`push`]: RTMP and SRT push (the `push` sink).
//! - [`hls`]: HLS and Low-Latency HLS on the web server (the `hls` sink).
//! - [`webrtc`]: WebRTC to browsers, WHEP on the web server (the `webrtc` sink).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::live::{OutMsg, PacketSubscription};

pub mod hls;
pub mod push;
pub mod rtp;
pub mod rtsp;
pub mod webrtc;

/// What the web server serves of the streams (HLS, WebRTC), filled by the pipeline's
/// sinks: it outlives pipeline swaps, like the live hub.
#[derive(Debug, Default)]
pub struct Served {
    /// The `hls` sink's streams.
    pub hls: std::sync::Arc<hls::HlsHub>,
    /// The `webrtc` sink's streams and sessions.
    pub whep: std::sync::Arc<webrtc::WhepHub>,
}

/// How often an output's thread looks at its stop flag while no packet comes.
const POLL: Duration = Duration::from_millis(200);

/// An output thread's loop: hands each message of `sub` to `on` until `stop` is set or the
/// feed ends, and counts the packets its queue dropped into `dropped`.
pub(crate) fn run_feed(
    mut sub: PacketSubscription,
    stop: &AtomicBool,
    dropped: &Counter,
    mut on: impl FnMut(&PacketSubscription, OutMsg),
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(stream = %sub.stream(), error = %e, "output: no runtime for its queue");
            return;
        }
    };
    let mut seen = 0;
    while !stop.load(Ordering::Acquire) {
        // The timer is made inside the runtime (it needs its clock).
        let rx = &mut sub.rx;
        match rt.block_on(async { tokio::time::timeout(POLL, rx.recv()).await }) {
            Ok(Some(msg)) => on(&sub, msg),
            Ok(None) => break,
            Err(_) => {}
        }
        let d = sub.dropped.load(Ordering::Relaxed);
        dropped.inc_by(d.saturating_sub(seen));
        seen = d;
    }
}
