//! The `push` sink: one stream pushed to an RTMP or SRT server (a cloud ingest, a media
//! server) from the live slot's packets, on a thread of its own.
//!
//! While the server is unreachable the output waits (1 s, doubling up to `backoff_max_s`)
//! and connects again at a keyframe; packets that arrive meanwhile are dropped and counted,
//! never queued without bound. The stream key (appended to the RTMP URL) and the SRT
//! passphrase go to libavformat only: logs, errors and metrics show the redacted URL.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use aegis_config::{NetScheme, NetUrl, PushSink};
use aegis_hal::push::{PushMuxer, PushProtocol};
use prometheus_client::metrics::gauge::Gauge;

use crate::live::{LiveSlot, OutMsg, PacketSubscription, StreamStart};
use crate::metrics::{Metrics, OutputLabels};
use crate::outputs::OutputThread;

/// Packets the output's queue holds (about four seconds at 30 fps: a reconnect's
/// handshake fits).
const QUEUE: usize = 128;
/// Every network wait of libavformat ends after this.
const NET_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the output connects, secrets included, and how it is shown.
struct Target {
    url: String,
    shown: String,
    protocol: PushProtocol,
    options: Vec<(&'static str, String)>,
    backoff_max: Duration,
}

impl Target {
    /// The destination of a validated sink config.
    fn new(cfg: &PushSink) -> anyhow::Result<Target> {
        let parsed = NetUrl::parse(&cfg.url).map_err(|e| anyhow::anyhow!("push url: {e}"))?;
        let shown = parsed.redacted();
        // libavformat opens the canonical spelling of what the checks parsed (as the live
        // sources do), not the text as written.
        let canonical = parsed.to_libav(None, None);
        let (url, protocol, options) = match parsed.scheme {
            NetScheme::Srt => {
                let options = cfg
                    .passphrase
                    .iter()
                    .map(|p| ("passphrase", p.expose().to_owned()))
                    .collect();
                (canonical, PushProtocol::Srt, options)
            }
            s if s.is_rtmp() => {
                let url = match &cfg.stream_key {
                    Some(k) => format!("{}/{}", canonical.trim_end_matches('/'), k.expose()),
                    None => canonical,
                };
                (url, PushProtocol::Rtmp, Vec::new())
            }
            s => anyhow::bail!("push url: {} is not a push protocol", s.as_str()),
        };
        Ok(Target {
            url,
            shown,
            protocol,
            options,
            backoff_max: Duration::from_secs(u64::from(cfg.backoff_max_s.max(1))),
        })
    }
}

/// Starts pushing `slot`'s stream as `cfg` says; stopping the thread closes the connection
/// cleanly (its trailer is written).
pub fn start(
    slot: &Arc<LiveSlot>,
    cfg: &PushSink,
    metrics: &Metrics,
) -> anyhow::Result<OutputThread> {
    let target = Target::new(cfg)?;
    let labels = OutputLabels {
        stream: slot.stream().to_owned(),
        output: "push".into(),
    };
    let counters = Counters {
        up: metrics.output_clients.get_or_create_owned(&labels),
        bytes: metrics.output_bytes.get_or_create_owned(&labels),
        dropped: metrics.output_dropped.get_or_create_owned(&labels),
    };
    let sub = slot.subscribe_packets(QUEUE);
    let stream = slot.stream().to_owned();
    Ok(OutputThread::spawn(
        format!("push-{stream}"),
        move |stop| Worker::new(&stream, target, counters).run(sub, stop),
    )?)
}

struct Counters {
    up: Gauge,
    bytes: prometheus_client::metrics::counter::Counter,
    dropped: prometheus_client::metrics::counter::Counter,
}

struct Worker {
    stream: String,
    target: Target,
    counters: Counters,
    start: Option<Arc<StreamStart>>,
    muxer: Option<PushMuxer>,
    /// The stream generation the muxer's header was written for.
    generation: u64,
    backoff: Duration,
    retry_at: Instant,
    key_asked: bool,
    sent_seen: u64,
}

impl Worker {
    fn new(stream: &str, target: Target, counters: Counters) -> Worker {
        Worker {
            stream: stream.to_owned(),
            target,
            counters,
            start: None,
            muxer: None,
            generation: 0,
            backoff: Duration::from_secs(1),
            retry_at: Instant::now(),
            key_asked: false,
            sent_seen: 0,
        }
    }

    fn run(mut self, sub: PacketSubscription, stop: &AtomicBool) {
        let dropped = self.counters.dropped.clone();
        super::run_feed(sub, stop, &dropped, |sub, msg| match msg {
            OutMsg::Start(s) => self.start = Some(s),
            OutMsg::Packet(p) => self.packet(&p, sub),
        });
        self.disconnect(None);
    }

    fn packet(&mut self, p: &aegis_hal::clip::OwnedPacket, sub: &PacketSubscription) {
        // A restart of the encoder (new size): a new header at its keyframe.
        if let (Some(start), Some(_)) = (&self.start, &self.muxer)
            && start.generation != self.generation
            && p.key
        {
            self.disconnect(None);
        }
        if self.muxer.is_none() {
            if Instant::now() < self.retry_at {
                return;
            }
            if !p.key {
                // Connect at a fresh keyframe now the wait is over, not at the next GOP.
                if !self.key_asked {
                    sub.request_keyframe();
                    self.key_asked = true;
                }
                return;
            }
            self.key_asked = false;
            let Some(start) = self.start.clone() else {
                return;
            };
            let options: Vec<(&str, &str)> = self
                .target
                .options
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .collect();
            match PushMuxer::open(
                &self.target.url,
                &self.target.shown,
                self.target.protocol,
                &options,
                &start.avc,
                NET_TIMEOUT,
            ) {
                Ok(m) => {
                    tracing::info!(stream = %self.stream, to = %self.target.shown, "push connected");
                    self.muxer = Some(m);
                    self.generation = start.generation;
                    self.sent_seen = 0;
                    self.counters.up.set(1);
                }
                Err(e) => {
                    self.retry_later(&e.to_string());
                    return;
                }
            }
        }
        let Some(m) = self.muxer.as_mut() else {
            return;
        };
        match m.write(&p.data, p.pts, p.dts, p.duration, p.key) {
            Ok(()) => {
                self.counters.bytes.inc_by(m.bytes() - self.sent_seen);
                self.sent_seen = m.bytes();
                self.backoff = Duration::from_secs(1);
            }
            Err(e) => self.disconnect(Some(&e.to_string())),
        }
    }

    /// Closes the connection (cleanly when `why` is `None`); after an error, retries later.
    fn disconnect(&mut self, why: Option<&str>) {
        if let Some(m) = self.muxer.take() {
            self.counters.up.set(0);
            if why.is_none()
                && let Err(e) = m.finish()
            {
                tracing::debug!(stream = %self.stream, error = %e, "push: closing");
            }
        }
        if let Some(why) = why {
            self.retry_later(why);
        }
    }

    fn retry_later(&mut self, why: &str) {
        tracing::warn!(stream = %self.stream, retry_in_s = self.backoff.as_secs(),
            "push failed: {why}");
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(self.target.backoff_max);
    }
}
