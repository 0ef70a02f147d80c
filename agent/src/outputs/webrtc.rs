//! The `webrtc` sink: WHEP egress (draft-ietf-wish-whep). A browser POSTs its SDP offer to
//! `/whep/<stream>` on the web server and gets the answer (`201 Created`, the session's
//! `Location`); the stream's one encoded H.264 then reaches it over SRTP within a frame or
//! two. `DELETE` on the `Location` ends the session, as does ICE losing the browser.
//!
//! str0m (sans-IO) does ICE-lite, DTLS and SRTP, RTP packetization (RFC 6184 mode 1,
//! parameter sets as STAP-A) and RTCP. Each session is a tokio task with a UDP socket of its
//! own, bound to the address the browser reached the web server at (its `Host`, which the
//! web server only accepts as an IP address or localhost), and is fed from the live slot
//! through its own bounded queue like every output: a slow browser drops, is counted and
//! resumes at a keyframe; a keyframe is asked for when it connects and whenever it sends a
//! PLI or FIR.
//!
//! Browsers decode Constrained Baseline and Main in WebRTC, not High: the stream's encoder
//! must be held to one of those (`encoder.profile: baseline`; the live view's own encoder
//! is). An offer without the stream's profile is refused with that said.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::WebRtcSink;
use aegis_hal::clip::OwnedPacket;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Frequency, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::udp_mux::{Route, UdpMux};
use crate::live::{LiveSlot, OutMsg, PacketSubscription, StreamStart};
use crate::metrics::{Metrics, OutputLabels};

/// Packets a session's queue holds (about four seconds at 30 fps).
const QUEUE: usize = 128;
/// The largest SDP offer read.
pub const MAX_OFFER: usize = 16 * 1024;
/// A session whose peer (a browser, a publisher) has not connected (ICE and DTLS) by then
/// ends.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// Why an offer was not answered.
#[derive(Debug, thiserror::Error)]
pub enum WhepError {
    /// No `webrtc` sink serves this stream (404).
    #[error(
        "stream {0:?} is not served over WebRTC (no webrtc sink lists it, or it is not running)"
    )]
    NotServed(String),
    /// `max_sessions` are running (503).
    #[error("{0} WebRTC sessions are running, the most the webrtc sink allows")]
    Full(u32),
    /// The offer is not one this server can answer (400).
    #[error("offer: {0}")]
    BadOffer(String),
    /// The browser offers no H.264 profile the stream is encoded in (406).
    #[error(
        "the offer has no H.264 (packetization mode 1) in profile {0}: hold the stream's encoder to a profile browsers decode in WebRTC (encoder.profile: baseline)"
    )]
    NoCodec(String),
    /// The session's socket could not be opened (500).
    #[error("session socket: {0}")]
    Io(String),
}

/// The streams the `webrtc` sink serves and their sessions (the web server's view).
#[derive(Debug, Default)]
pub struct WhepHub {
    inner: Mutex<HubInner>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct HubInner {
    streams: HashMap<String, Entry>,
    sessions: HashMap<String, SessionEntry>,
}

#[derive(Debug)]
struct Entry {
    slot: Arc<LiveSlot>,
    max_sessions: u32,
    counters: Counters,
    /// Which registration this is (a restarted pipeline registers again).
    token: u64,
}

#[derive(Debug)]
struct SessionEntry {
    stream: String,
    stop: watch::Sender<bool>,
}

#[derive(Debug, Clone)]
struct Counters {
    sessions: Gauge,
    bytes: Counter,
    dropped: Counter,
}

/// A stream's registration: while it lives the stream takes offers; dropped, the stream
/// leaves the hub and its sessions end.
#[derive(Debug)]
pub struct WhepStream {
    hub: Arc<WhepHub>,
    stream: String,
    token: u64,
}

impl Drop for WhepStream {
    fn drop(&mut self) {
        let mut inner = lock(&self.hub.inner);
        if inner
            .streams
            .get(&self.stream)
            .is_some_and(|s| s.token == self.token)
        {
            inner.streams.remove(&self.stream);
        }
        for s in inner.sessions.values() {
            if s.stream == self.stream {
                s.stop.send_replace(true);
            }
        }
    }
}

impl WhepHub {
    /// Serves `slot`'s stream as `cfg` says until the returned registration drops.
    pub fn serve(
        self: &Arc<Self>,
        slot: &Arc<LiveSlot>,
        cfg: &WebRtcSink,
        metrics: &Metrics,
    ) -> WhepStream {
        let labels = OutputLabels {
            stream: slot.stream().to_owned(),
            output: "webrtc".into(),
        };
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner).streams.insert(
            slot.stream().to_owned(),
            Entry {
                slot: slot.clone(),
                max_sessions: cfg.max_sessions,
                counters: Counters {
                    sessions: metrics.output_clients.get_or_create_owned(&labels),
                    bytes: metrics.output_bytes.get_or_create_owned(&labels),
                    dropped: metrics.output_dropped.get_or_create_owned(&labels),
                },
                token,
            },
        );
        WhepStream {
            hub: self.clone(),
            stream: slot.stream().to_owned(),
            token,
        }
    }

    /// Answers `offer` for `stream`, starting its session on `ip` (where the browser reached
    /// the web server; on the shared port of `mux` when given): the session id and the SDP
    /// answer.
    pub async fn offer(
        self: &Arc<Self>,
        stream: &str,
        offer: &str,
        ip: IpAddr,
        mux: Option<&Arc<UdpMux>>,
    ) -> Result<(String, String), WhepError> {
        let (slot, counters, max) = {
            let inner = lock(&self.inner);
            let s = inner
                .streams
                .get(stream)
                .ok_or_else(|| WhepError::NotServed(stream.to_owned()))?;
            (s.slot.clone(), s.counters.clone(), s.max_sessions)
        };
        let mid = first_mid(offer);
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WhepError::BadOffer(e.to_string()))?;
        let mut link = Link::open(ip, Rtc::builder().set_ice_lite(true), mux)
            .await
            .map_err(WhepError::Io)?;
        let rtc = &mut link.rtc;
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WhepError::BadOffer(e.to_string()))?;
        // The offer must carry the stream's profile when it is known now (a stream without
        // a recorder starts its encoder for the first consumer: checked at its first
        // packet then).
        let start = slot.current_start();
        if let (Some(start), Some(mid)) = (&start, mid)
            && choose_pt(rtc, mid, start).is_none()
        {
            return Err(WhepError::NoCodec(profile_name(start)));
        }
        let id = format!("{:016x}", super::random_u64());
        let (stop, stopped) = watch::channel(false);
        {
            let mut inner = lock(&self.inner);
            let running = inner.sessions.len() as u32;
            if running >= max {
                return Err(WhepError::Full(max));
            }
            inner.sessions.insert(
                id.clone(),
                SessionEntry {
                    stream: stream.to_owned(),
                    stop,
                },
            );
        }
        let session = Session {
            sub: slot.subscribe_packets(QUEUE),
            mid: None,
            pt: None,
            start: None,
            connected: false,
            synced: false,
            closed: false,
            counters,
            dropped_seen: 0,
            id: id.clone(),
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let id = session.id.clone();
            session.run(link, stopped).await;
            lock(&hub.inner).sessions.remove(&id);
        });
        Ok((id, answer.to_sdp_string()))
    }

    /// Ends session `id` of `stream`; whether there was one.
    pub fn end(&self, stream: &str, id: &str) -> bool {
        let inner = lock(&self.inner);
        match inner.sessions.get(id) {
            Some(s) if s.stream == stream => {
                s.stop.send_replace(true);
                true
            }
            _ => false,
        }
    }

    /// Whether `stream` takes offers now.
    pub fn serves(&self, stream: &str) -> bool {
        lock(&self.inner).streams.contains_key(stream)
    }
}

/// The first `a=mid:` of an SDP.
fn first_mid(sdp: &str) -> Option<Mid> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=mid:"))
        .map(Mid::from)
}

/// `avc1`-style name of the stream's profile, for the refusal.
fn profile_name(start: &StreamStart) -> String {
    let sps = start.avc.sps();
    match (sps.get(1), sps.get(2)) {
        (Some(66), Some(c)) if c & 0x40 != 0 => "Constrained Baseline (42)".into(),
        (Some(66), _) => "Baseline (42)".into(),
        (Some(77), _) => "Main (4D)".into(),
        (Some(100), _) => "High (64)".into(),
        (Some(p), _) => format!("profile_idc {p}"),
        _ => "unknown".into(),
    }
}

/// The offered H.264 payload type (packetization mode 1) for the stream's profile: the same
/// profile_idc and, for Baseline, the same constrained-ness (constraint_set1) if offered
/// (browsers offer Constrained Baseline as 42e0 and Baseline as 4200), else any of them.
fn choose_pt(rtc: &mut Rtc, mid: Mid, start: &StreamStart) -> Option<Pt> {
    let sps = start.avc.sps();
    let (profile, constraints) = (*sps.get(1)?, *sps.get(2)?);
    let constrained = |c: u8| c & 0x40 != 0;
    let writer = rtc.writer(mid)?;
    let offered: Vec<(Pt, u32)> = writer
        .payload_params()
        .filter_map(|p| {
            let spec = p.spec();
            let ok = spec.codec == Codec::H264 && spec.format.packetization_mode == Some(1);
            ok.then_some((p.pt(), spec.format.profile_level_id?))
        })
        .filter(|(_, pli)| (pli >> 16) as u8 == profile)
        .collect();
    let exact = offered
        .iter()
        .find(|(_, pli)| constrained((pli >> 8) as u8) == constrained(constraints));
    exact.or(offered.first()).map(|(pt, _)| *pt)
}

struct Session {
    sub: PacketSubscription,
    mid: Option<Mid>,
    pt: Option<Pt>,
    start: Option<Arc<StreamStart>>,
    /// ICE and DTLS are up.
    connected: bool,
    /// A keyframe went out since connecting (or since a drop).
    synced: bool,
    closed: bool,
    counters: Counters,
    dropped_seen: u64,
    id: String,
}

impl Session {
    async fn run(mut self, mut link: Link, mut stop: watch::Receiver<bool>) {
        tracing::info!(stream = %self.sub.stream(), session = %self.id, local = %link.local,
            "webrtc session started");
        link.run(&mut self, &mut stop).await;
        if self.connected {
            self.counters.sessions.dec();
        }
        tracing::info!(stream = %self.sub.stream(), session = %self.id, "webrtc session ended");
    }
}

impl Peer for Session {
    type Other = Option<OutMsg>;

    fn name(&self) -> (&str, &'static str) {
        (&self.id, "webrtc")
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn event(&mut self, _: &mut Link, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                self.counters.sessions.inc();
                self.sub.request_keyframe();
            }
            Event::MediaAdded(m) => self.mid = Some(m.mid),
            Event::KeyframeRequest(_) => self.sub.request_keyframe(),
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.closed = true;
            }
            _ => {}
        }
    }

    fn other(&mut self) -> impl std::future::Future<Output = Option<OutMsg>> + Send {
        self.sub.rx.recv()
    }

    fn woke(&mut self, link: &mut Link, woke: Woke<Option<OutMsg>>) {
        match woke {
            Woke::Other(Some(OutMsg::Start(s))) => self.start = Some(s),
            Woke::Other(Some(OutMsg::Packet(p))) => self.packet(link, &p),
            Woke::Other(None) | Woke::Closed => self.closed = true,
            Woke::Datagram | Woke::Nothing => {}
        }
        let dropped = self.sub.dropped.load(Ordering::Relaxed);
        if dropped > self.dropped_seen {
            self.counters.dropped.inc_by(dropped - self.dropped_seen);
            self.dropped_seen = dropped;
            self.synced = false;
        }
    }
}

impl Session {
    fn packet(&mut self, link: &mut Link, p: &OwnedPacket) {
        let (Some(mid), Some(start)) = (self.mid, self.start.clone()) else {
            return;
        };
        if !self.connected {
            return;
        }
        if self.pt.is_none() {
            self.pt = choose_pt(&mut link.rtc, mid, &start);
            if self.pt.is_none() {
                tracing::warn!(session = %self.id, "webrtc: {}", WhepError::NoCodec(profile_name(&start)));
                self.closed = true;
                return;
            }
        }
        if !self.synced && !p.key {
            return;
        }
        self.synced = true;
        // Parameter sets ahead of each IDR (the encoder keeps them in its header).
        let data: Arc<[u8]> = if p.key {
            let mut au = Vec::with_capacity(p.data.len() + 64);
            for ps in [start.avc.sps(), start.avc.pps()] {
                au.extend_from_slice(&[0, 0, 0, 1]);
                au.extend_from_slice(ps);
            }
            au.extend_from_slice(&p.data);
            au.into()
        } else {
            p.data.clone()
        };
        let (Some(pt), Some(writer)) = (self.pt, link.rtc.writer(mid)) else {
            return;
        };
        let len = data.len() as u64;
        let at = MediaTime::new(p.pts.max(0) as u64, Frequency::NINETY_KHZ);
        match writer.write(pt, Instant::now(), at, data) {
            Ok(()) => {
                self.counters.bytes.inc_by(len);
            }
            Err(e) => {
                tracing::info!(session = %self.id, error = %e, "webrtc write");
                self.closed = true;
            }
        }
    }
}

/// A peer connection's transport: str0m's [`Rtc`] (ICE-lite) and the UDP socket its one
/// host candidate names, on the address the browser reached the web server at: a socket of
/// its own, or the shared port ([`UdpMux`]) when `outputs.webrtc.udp` sets one. The WHEP
/// sessions and the WHIP ingest ([`super::whip`]) share it.
pub(crate) struct Link {
    pub(crate) rtc: Rtc,
    socket: LinkSocket,
    local: SocketAddr,
}

enum LinkSocket {
    Own(UdpSocket),
    Shared(Route),
}

/// One end of a session over a [`Link`] (a WHEP viewer's, a WHIP publisher's): what
/// [`Link::run`] hands the connection's events and wake-ups to.
pub(crate) trait Peer {
    /// What the session waits for besides the network and the stop signal.
    type Other;
    /// The session's id, and its kind for the log (`webrtc`, `whip`).
    fn name(&self) -> (&str, &'static str);
    /// ICE and DTLS are up.
    fn connected(&self) -> bool;
    /// The session is over.
    fn closed(&self) -> bool;
    /// An event of the connection.
    fn event(&mut self, link: &mut Link, e: Event);
    /// The next of what it waits for besides the network.
    fn other(&mut self) -> impl std::future::Future<Output = Self::Other> + Send;
    /// What woke the session (after a datagram or a timeout was handed to the connection).
    fn woke(&mut self, link: &mut Link, woke: Woke<Self::Other>);
}

/// What [`Link::poll`] found (handled at once, never stored: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(crate) enum Polled {
    /// Nothing more to do before then.
    Timeout(Instant),
    /// Something happened on the connection.
    Event(Event),
}

/// What [`Link::wait`] woke for.
pub(crate) enum Woke<T> {
    /// A datagram arrived (handed to the connection).
    Datagram,
    /// The caller's own future finished.
    Other(T),
    /// Told to stop.
    Closed,
    /// The timeout (handed to the connection) or a socket error.
    Nothing,
}

impl Link {
    /// A connection built by `builder` whose candidate is `ip` on the shared port of `mux`
    /// (when it has one of `ip`'s family), else a socket of its own on any free port.
    pub(crate) async fn open(
        ip: IpAddr,
        builder: str0m::RtcConfig,
        mux: Option<&Arc<UdpMux>>,
    ) -> Result<Link, String> {
        str0m::crypto::from_feature_flags().install_process_default();
        let (builder, socket, local) =
            match mux.filter(|m| m.local_addr().is_ipv4() == ip.is_ipv4()) {
                Some(mux) => {
                    // Our own username fragment: the shared port routes by it.
                    let creds = str0m::IceCreds::new();
                    let route = mux.route(creds.ufrag.clone());
                    let local = SocketAddr::new(ip, mux.local_addr().port());
                    (
                        builder.set_local_ice_credentials(creds),
                        LinkSocket::Shared(route),
                        local,
                    )
                }
                None => {
                    let socket = UdpSocket::bind(SocketAddr::new(ip, 0))
                        .await
                        .map_err(|e| format!("bind {ip}: {e}"))?;
                    let local = socket.local_addr().map_err(|e| e.to_string())?;
                    (builder, LinkSocket::Own(socket), local)
                }
            };
        let mut rtc = builder.build(Instant::now());
        let candidate = Candidate::host(local, "udp").map_err(|e| format!("candidate: {e}"))?;
        rtc.add_local_candidate(candidate);
        Ok(Link { rtc, socket, local })
    }

    /// Runs `peer`'s session until it closes, the connection fails, `stop` fires, or the
    /// peer has not connected within [`CONNECT_TIMEOUT`]; then disconnects.
    pub(crate) async fn run<P: Peer>(&mut self, peer: &mut P, stop: &mut watch::Receiver<bool>) {
        let give_up = Instant::now() + CONNECT_TIMEOUT;
        let mut buf = vec![0u8; 2048];
        while !peer.closed() {
            let timeout = loop {
                match self.poll() {
                    Ok(Polled::Timeout(t)) => break Some(t),
                    Ok(Polled::Event(e)) => peer.event(self, e),
                    Err(e) => {
                        let (id, kind) = peer.name();
                        tracing::info!(session = %id, error = %e, "{kind} session failed");
                        break None;
                    }
                }
            };
            let Some(timeout) = timeout else { break };
            if !peer.connected() && Instant::now() > give_up {
                let (id, kind) = peer.name();
                tracing::info!(session = %id, "{kind}: the peer never connected");
                break;
            }
            let woke = self
                .wait(&mut buf, timeout.min(give_up), peer.other(), stop)
                .await;
            peer.woke(self, woke);
        }
        self.rtc.disconnect();
    }

    /// Sends what the connection has to send; its next event, or when to wake it next.
    fn poll(&mut self) -> Result<Polled, str0m::RtcError> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(Polled::Timeout(t)),
                Output::Transmit(t) => {
                    // A full socket buffer drops the datagram, as a network would.
                    let socket = match &self.socket {
                        LinkSocket::Own(s) => s,
                        LinkSocket::Shared(r) => r.mux().socket(),
                    };
                    let _ = socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(e) => return Ok(Polled::Event(e)),
            }
        }
    }

    /// Waits for a datagram (handed to the connection), `other`, `stop` or `timeout` (handed
    /// to the connection), whichever comes first.
    async fn wait<T>(
        &mut self,
        buf: &mut [u8],
        timeout: Instant,
        other: impl std::future::Future<Output = T>,
        stop: &mut watch::Receiver<bool>,
    ) -> Woke<T> {
        let wake = tokio::time::Instant::from_std(timeout);
        let datagram = async {
            match &mut self.socket {
                LinkSocket::Own(s) => match s.recv_from(buf).await {
                    Ok((n, from)) => Some((None, n, from)),
                    Err(e) => {
                        tracing::debug!(error = %e, "webrtc socket");
                        None
                    }
                },
                LinkSocket::Shared(r) => match r.rx.recv().await {
                    Some((data, from)) => Some((Some(data), 0, from)),
                    // The shared port's reader is gone (the agent is stopping).
                    None => std::future::pending().await,
                },
            }
        };
        let woke = tokio::select! {
            d = datagram => match d {
                Some(d) => Ok(d),
                None => Err(Woke::Nothing),
            },
            t = other => Err(Woke::Other(t)),
            _ = tokio::time::sleep_until(wake) => Err(Woke::Nothing),
            _ = stop.changed() => Err(Woke::Closed),
        };
        if matches!(woke, Err(Woke::Nothing))
            && Instant::now() >= timeout
            && let Err(e) = self.rtc.handle_input(Input::Timeout(Instant::now()))
        {
            tracing::debug!(error = %e, "webrtc timeout");
            return Woke::Closed;
        }
        match woke {
            Ok((Some(data), _, from)) => {
                self.receive(&data, from);
                Woke::Datagram
            }
            Ok((None, n, from)) => {
                self.receive(&buf[..n], from);
                Woke::Datagram
            }
            Err(w) => w,
        }
    }

    fn receive(&mut self, data: &[u8], source: SocketAddr) {
        let Ok(contents) = data.try_into() else {
            return;
        };
        let input = Input::Receive(
            Instant::now(),
            Receive {
                proto: Protocol::Udp,
                source,
                destination: self.local,
                contents,
            },
        );
        if self.rtc.accepts(&input)
            && let Err(e) = self.rtc.handle_input(input)
        {
            tracing::debug!(error = %e, "webrtc input");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A browser's receive-only video offer (Chromium's shape): H.264 Baseline, Constrained
    /// Baseline and Main, packetization mode 1, and Baseline in mode 0.
    const OFFER: &str = "v=0\r\no=- 46117 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
a=group:BUNDLE 0\r\na=msid-semantic: WMS\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 102 103 108 127\r\nc=IN IP4 0.0.0.0\r\n\
a=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:Hx7q\r\na=ice-pwd:s0C9bPzS2u1mQhG4w0y1f3Jd\r\n\
a=ice-options:trickle\r\n\
a=fingerprint:sha-256 3C:4A:AA:E5:0E:2D:97:4D:8B:36:1C:0B:3F:92:51:7A:C6:5E:3F:63:0D:65:9B:7E:30:1C:7D:1D:18:A3:F1:1E\r\n\
a=setup:actpass\r\na=mid:0\r\na=recvonly\r\na=rtcp-mux\r\na=rtcp-rsize\r\n\
a=rtpmap:102 H264/90000\r\na=rtcp-fb:102 nack pli\r\n\
a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f\r\n\
a=rtpmap:103 H264/90000\r\na=rtcp-fb:103 nack pli\r\n\
a=fmtp:103 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f\r\n\
a=rtpmap:108 H264/90000\r\na=rtcp-fb:108 nack pli\r\n\
a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f\r\n\
a=rtpmap:127 H264/90000\r\na=rtcp-fb:127 nack pli\r\n\
a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f\r\n";

    /// A stream whose SPS says `profile` with `constraints`.
    fn start(profile: u8, constraints: u8) -> StreamStart {
        StreamStart {
            avc: crate::outputs::test_avc(profile, constraints),
            generation: 1,
        }
    }

    fn answered() -> (Rtc, Mid) {
        str0m::crypto::from_feature_flags().install_process_default();
        let mut rtc = Rtc::builder().set_ice_lite(true).build(Instant::now());
        rtc.add_local_candidate(
            Candidate::host("127.0.0.1:40000".parse().unwrap(), "udp").unwrap(),
        );
        let offer = SdpOffer::from_sdp_string(OFFER).unwrap();
        let answer = rtc.sdp_api().accept_offer(offer).unwrap().to_sdp_string();
        assert!(
            answer.contains("a=ice-lite") && answer.contains("a=setup:passive"),
            "{answer}"
        );
        (rtc, first_mid(OFFER).unwrap())
    }

    #[test]
    fn the_payload_type_follows_the_streams_profile() {
        let (mut rtc, mid) = answered();
        // Constrained Baseline (x264's baseline: constraint_set0 and set1) → 42e0, mode 1.
        assert_eq!(
            choose_pt(&mut rtc, mid, &start(66, 0xc0)),
            Some(Pt::from(108))
        );
        // Plain Baseline → 4200.
        assert_eq!(
            choose_pt(&mut rtc, mid, &start(66, 0x00)),
            Some(Pt::from(102))
        );
        assert_eq!(
            choose_pt(&mut rtc, mid, &start(77, 0x00)),
            Some(Pt::from(127))
        );
        // High is not offered: refused, with the profile named.
        assert_eq!(choose_pt(&mut rtc, mid, &start(100, 0x00)), None);
        assert_eq!(profile_name(&start(100, 0)), "High (64)");
        assert_eq!(profile_name(&start(66, 0xc0)), "Constrained Baseline (42)");
    }
}
