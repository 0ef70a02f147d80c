//! Streaming outputs: the processed video in VMSs and clouds, encoded once. Each output
//! takes the stream's encoded packets from its live slot ([`crate::live`]) through
//! a bounded queue of its own, so a slow or dead consumer is dropped and counted and never
//! slows the pipeline, the recording or the other outputs.
//!
//! - [`rtsp`]: the RTSP restream server (`outputs.rtsp`, the `restream` sink).
//! - [`push`]: RTMP and SRT push (the `push` sink).
//! - [`hls`]: HLS and Low-Latency HLS on the web server (the `hls` sink).
//! - [`webrtc`]: WebRTC to browsers, WHEP on the web server (the `webrtc` sink).
//! - [`whip`]: WebRTC the other way, WHIP on the web server: video pushed to the device for
//!   a `whip:` source (it shares the WebRTC plumbing).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;

use crate::live::{OutMsg, PacketSubscription};

pub mod hls;
pub mod push;
pub mod rtp;
pub mod rtsp;
pub mod udp_mux;
pub mod webrtc;
pub mod whip;

/// What the web server serves of the streams (HLS, WebRTC), filled by the pipeline's
/// sinks: it outlives pipeline swaps, like the live hub.
#[derive(Debug, Default)]
pub struct Served {
    /// The `hls` sink's streams.
    pub hls: std::sync::Arc<hls::HlsHub>,
    /// The `webrtc` sink's streams and sessions.
    pub whep: std::sync::Arc<webrtc::WhepHub>,
    /// The `whip` sources' endpoints and publishers.
    pub whip: std::sync::Arc<whip::WhipHub>,
    /// The one UDP port of every WebRTC session (`outputs.webrtc.udp`); none: a port each.
    pub udp: Option<std::sync::Arc<udp_mux::UdpMux>>,
}

/// An output's thread: stopped (its flag set, then joined) by [`OutputThread::stop`] or on
/// drop.
pub struct OutputThread {
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutputThread {
    /// Runs `body` on a thread called `name`; `body` returns once the flag it gets is set.
    pub(crate) fn spawn(
        name: String,
        body: impl FnOnce(&AtomicBool) + Send + 'static,
    ) -> std::io::Result<OutputThread> {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || body(&flag))?;
        Ok(OutputThread {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the output and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for OutputThread {
    fn drop(&mut self) {
        self.halt();
    }
}

/// 64 random bits from the OS (RTSP session ids and nonces, WHEP session ids: unguessable,
/// so one client cannot end or take over another's session).
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the OS random source");
    u64::from_le_bytes(b)
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

/// An x264-like SPS (1280x720, level 3.1) of `profile_idc` with `constraints`, and a PPS.
#[cfg(test)]
pub(crate) fn test_avc(profile: u8, constraints: u8) -> aegis_hal::fmp4::AvcConfig {
    let sps = [
        0x67,
        profile,
        constraints,
        0x1f,
        0xda,
        0x01,
        0x40,
        0x16,
        0xe8,
        0x40,
    ];
    let mut annexb = vec![0, 0, 0, 1];
    annexb.extend_from_slice(&sps);
    annexb.extend_from_slice(&[0, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80]);
    aegis_hal::fmp4::AvcConfig::from_annexb(&annexb, 1280, 720).expect("a valid SPS")
}
