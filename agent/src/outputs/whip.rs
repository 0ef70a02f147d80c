//! WHIP ingest (RFC 9725): video pushed to the device over WebRTC, for a `whip:` source. A
//! publisher (OBS, a browser, GStreamer's `whipclientsink`) POSTs its SDP offer to
//! `/whip/<source id>` on the web server with the source's `publish_token` as a bearer
//! token, gets the answer (`201 Created`, the session's `Location`) and sends H.264 (or VP8
//! where this libavcodec decodes it) over SRTP; `DELETE` on the `Location` ends it.
//!
//! The WebRTC side is WHEP's ([`super::webrtc::Link`]: str0m ICE-lite, a UDP socket per
//! session on the address the publisher reached the web server at). Each depacketized
//! access unit goes to the source's [`PushFeed`] (a bounded queue: the stream's thread
//! decodes it like a camera's); units lost on the network or dropped for a full queue make
//! the session ask the publisher for a keyframe (PLI, else FIR). A new publisher for the
//! same source replaces the current one, as a reconnecting encoder expects.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use aegis_config::{Secret, SourceConfig, SourceLocation};
use aegis_hal::source::{Publisher, PushError, PushFeeds, PushedCodec};
use str0m::Event;
use str0m::change::SdpOffer;
use str0m::format::Codec;
use str0m::media::{Frequency, KeyframeRequestKind, MediaKind, Mid};
use tokio::sync::watch;

use super::udp_mux::UdpMux;
use super::webrtc::{Link, Peer, Woke};

/// Sessions at once over all sources (a replaced publisher's session may linger a moment).
const MAX_SESSIONS: usize = 16;

/// Why an offer was not answered.
#[derive(Debug, thiserror::Error)]
pub enum WhipError {
    /// No running `whip` source has this id (404).
    #[error("no whip source {0:?} is running")]
    NotServed(String),
    /// The offer is not one this server can answer (400).
    #[error("offer: {0}")]
    BadOffer(String),
    /// The offer sends no video in a codec this device decodes (406).
    #[error("the offer sends no video in {0}")]
    NoCodec(String),
    /// Too many sessions (503).
    #[error("{MAX_SESSIONS} WHIP sessions are running, the most this device takes")]
    Full,
    /// The session's socket could not be opened (500).
    #[error("session socket: {0}")]
    Io(String),
}

/// No pipeline has started yet, so no `whip` source is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Starting;

/// The `whip` sources' endpoints: their tokens, feeds and sessions (the web server's view).
#[derive(Debug, Default)]
pub struct WhipHub {
    feeds: Arc<PushFeeds>,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether a pipeline has started (before that, no source's token is known).
    started: bool,
    /// Source id → its publish token, as the running pipeline's config has them.
    tokens: HashMap<String, Secret>,
    sessions: HashMap<String, SessionEntry>,
}

#[derive(Debug)]
struct SessionEntry {
    stream: String,
    stop: watch::Sender<bool>,
}

impl WhipHub {
    /// Where the pipeline's `whip` sources register their feeds.
    pub fn feeds(&self) -> &PushFeeds {
        &self.feeds
    }

    /// Takes the `whip` sources of `sources` (the pipeline being started) and their
    /// tokens, forgetting earlier ones.
    pub fn serve(&self, sources: &[SourceConfig]) {
        let tokens = sources
            .iter()
            .filter(|s| matches!(s.try_location(), Ok(SourceLocation::Whip)))
            .filter_map(|s| Some((s.id.clone(), s.publish_token.clone()?)))
            .collect();
        let mut inner = lock(&self.inner);
        inner.tokens = tokens;
        inner.started = true;
    }

    /// The token a publisher of `stream` must present: `Ok(None)` when there is no such
    /// `whip` source, `Err(Starting)` while no pipeline has started yet (the web server
    /// answers before the first pipeline is up, and a publisher should retry then rather
    /// than be told its token is wrong).
    pub fn token(&self, stream: &str) -> Result<Option<Secret>, Starting> {
        let inner = lock(&self.inner);
        if !inner.started {
            return Err(Starting);
        }
        Ok(inner.tokens.get(stream).cloned())
    }

    /// Answers an (authenticated) publisher's `offer` for `stream`, starting its session
    /// on `ip` (on the shared port of `mux` when given): the session id and the SDP answer.
    /// Ends the stream's earlier sessions.
    pub async fn offer(
        self: &Arc<Self>,
        stream: &str,
        offer: &str,
        ip: IpAddr,
        mux: Option<&Arc<UdpMux>>,
    ) -> Result<(String, String), WhipError> {
        let feed = self
            .feeds
            .get(stream)
            .ok_or_else(|| WhipError::NotServed(stream.to_owned()))?;
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| WhipError::BadOffer(e.to_string()))?;
        let (h264, vp8) = (PushedCodec::H264.decodable(), PushedCodec::Vp8.decodable());
        let codecs = match (h264, vp8) {
            (true, true) => "H.264 or VP8",
            (true, false) => "H.264",
            (false, true) => "VP8",
            (false, false) => "any codec (this libavcodec decodes neither H.264 nor VP8)",
        };
        let builder = str0m::Rtc::builder()
            .set_ice_lite(true)
            .clear_codecs()
            .enable_h264(h264)
            .enable_vp8(vp8);
        let mut link = Link::open(ip, builder, mux).await.map_err(WhipError::Io)?;
        let answer = link
            .rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| WhipError::BadOffer(e.to_string()))?;
        // The video m-line and that a codec was agreed on it.
        let answer = answer.to_sdp_string();
        let Some(mid) = video_mid(&answer) else {
            return Err(WhipError::NoCodec(codecs.into()));
        };
        let id = format!("{:016x}", super::random_u64());
        let (stop, stopped) = watch::channel(false);
        {
            let mut inner = lock(&self.inner);
            if inner.sessions.len() >= MAX_SESSIONS {
                return Err(WhipError::Full);
            }
            for s in inner.sessions.values() {
                if s.stream == stream {
                    s.stop.send_replace(true);
                }
            }
            inner.sessions.insert(
                id.clone(),
                SessionEntry {
                    stream: stream.to_owned(),
                    stop,
                },
            );
        }
        let publisher = match feed.publish() {
            Ok(p) => p,
            Err(_) => {
                lock(&self.inner).sessions.remove(&id);
                return Err(WhipError::NotServed(stream.to_owned()));
            }
        };
        let session = Session {
            publisher,
            mid,
            connected: false,
            closed: false,
            id: id.clone(),
            stream: stream.to_owned(),
            units: 0,
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let id = session.id.clone();
            session.run(link, stopped).await;
            lock(&hub.inner).sessions.remove(&id);
        });
        Ok((id, answer))
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
}

/// The `a=mid` of the answer's video m-line, when it is active (a port other than 0) and
/// receives.
fn video_mid(answer: &str) -> Option<Mid> {
    let mut in_video = false;
    let mut active = false;
    for line in answer.lines().map(str::trim) {
        if let Some(m) = line.strip_prefix("m=") {
            in_video = m.starts_with("video ");
            active = in_video && !m.starts_with("video 0 ");
        } else if in_video
            && active
            && let Some(mid) = line.strip_prefix("a=mid:")
        {
            return Some(Mid::from(mid));
        }
    }
    None
}

struct Session {
    publisher: Publisher,
    mid: Mid,
    connected: bool,
    closed: bool,
    id: String,
    stream: String,
    units: u64,
}

impl Session {
    async fn run(mut self, mut link: Link, mut stop: watch::Receiver<bool>) {
        tracing::info!(stream = %self.stream, session = %self.id, "whip publisher started");
        link.run(&mut self, &mut stop).await;
        tracing::info!(stream = %self.stream, session = %self.id, units = self.units,
            "whip publisher ended");
    }

    fn request_keyframe(&mut self, link: &mut Link) {
        let Some(mut writer) = link.rtc.writer(self.mid) else {
            return;
        };
        for kind in [KeyframeRequestKind::Pli, KeyframeRequestKind::Fir] {
            if writer.is_request_keyframe_possible(kind) {
                let _ = writer.request_keyframe(None, kind);
                return;
            }
        }
    }
}

impl Peer for Session {
    type Other = ();

    fn name(&self) -> (&str, &'static str) {
        (&self.id, "whip")
    }

    fn connected(&self) -> bool {
        self.connected
    }

    fn closed(&self) -> bool {
        self.closed
    }

    fn other(&mut self) -> impl std::future::Future<Output = ()> + Send {
        std::future::pending()
    }

    fn woke(&mut self, link: &mut Link, woke: Woke<()>) {
        if let Woke::Closed = woke {
            self.closed = true;
        }
        if self.connected && self.publisher.take_keyframe_request() {
            self.request_keyframe(link);
        }
    }

    fn event(&mut self, _: &mut Link, e: Event) {
        match e {
            Event::Connected => {
                self.connected = true;
                tracing::info!(session = %self.id, "whip publisher connected");
            }
            Event::IceConnectionStateChange(str0m::IceConnectionState::Disconnected) => {
                self.closed = true;
            }
            Event::MediaData(d) if d.mid == self.mid => {
                let codec = match d.params.spec().codec {
                    Codec::H264 => PushedCodec::H264,
                    Codec::Vp8 => PushedCodec::Vp8,
                    _ => return,
                };
                if !d.contiguous {
                    self.publisher.lost();
                }
                let pts = d.time.rebase(Frequency::NINETY_KHZ).numer() as i64;
                match self.publisher.push(codec, &d.data, pts, d.is_keyframe()) {
                    Ok(()) => self.units += 1,
                    Err(e @ (PushError::Closed | PushError::Replaced)) => {
                        tracing::info!(session = %self.id, "whip: {e}");
                        self.closed = true;
                    }
                }
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Video && m.mid != self.mid => {
                tracing::debug!(session = %self.id, mid = %m.mid, "whip: a second video ignored");
            }
            _ => {}
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_hal::StreamId;
    use aegis_hal::source::{
        PushedSource, SourceState, VideoSource, annexb_clip, file_digests, i420_digest,
        split_annexb_units,
    };
    use std::time::{Duration, Instant};
    use str0m::change::SdpAnswer;
    use str0m::media::{Direction, MediaTime};
    use str0m::net::{Protocol, Receive};
    use str0m::{Candidate, Input, Output, Rtc};

    const TOKEN: &str = "0123456789abcdefghijklmnop";

    /// A publisher the way an encoder is one: str0m as the controlling ICE agent with a
    /// send-only H.264 video, on its own loopback socket.
    struct Client {
        rtc: Rtc,
        socket: std::net::UdpSocket,
        local: std::net::SocketAddr,
    }

    impl Client {
        fn new() -> (Client, String, str0m::change::SdpPendingOffer, Mid) {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket
                .set_read_timeout(Some(Duration::from_millis(2)))
                .unwrap();
            let local = socket.local_addr().unwrap();
            let mut rtc = Rtc::builder()
                .clear_codecs()
                .enable_h264(true)
                .build(Instant::now());
            rtc.add_local_candidate(Candidate::host(local, "udp").unwrap());
            let mut change = rtc.sdp_api();
            let mid = change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            let (offer, pending) = change.apply().unwrap();
            (
                Client { rtc, socket, local },
                offer.to_sdp_string(),
                pending,
                mid,
            )
        }

        /// Sends what str0m has to send, reads what arrived; whether it is connected.
        fn drive(&mut self, connected: &mut bool) {
            loop {
                match self.rtc.poll_output().unwrap() {
                    Output::Timeout(_) => break,
                    Output::Transmit(t) => {
                        let _ = self.socket.send_to(&t.contents, t.destination);
                    }
                    Output::Event(Event::Connected) => *connected = true,
                    Output::Event(_) => {}
                }
            }
            let mut buf = [0u8; 2048];
            match self.socket.recv_from(&mut buf) {
                Ok((n, source)) => {
                    let input = Input::Receive(
                        Instant::now(),
                        Receive {
                            proto: Protocol::Udp,
                            source,
                            destination: self.local,
                            contents: buf[..n].try_into().unwrap(),
                        },
                    );
                    self.rtc.handle_input(input).unwrap();
                }
                Err(_) => self
                    .rtc
                    .handle_input(Input::Timeout(Instant::now()))
                    .unwrap(),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_over_webrtc_reaches_the_source_picture_for_picture() {
        publish_45_pictures(None).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_publisher_on_the_shared_udp_port_reaches_the_source_picture_for_picture() {
        let mux = UdpMux::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        publish_45_pictures(Some(mux)).await;
    }

    /// A str0m publisher sends a file's 45 access units to a `whip` source (on the shared
    /// port of `mux` when given); the source's pictures are the file's.
    async fn publish_45_pictures(mux: Option<Arc<UdpMux>>) {
        let dir = tempfile::tempdir().unwrap();
        let file = annexb_clip(dir.path());
        let want = file_digests(&file);
        let units = split_annexb_units(&std::fs::read(&file).unwrap());
        assert_eq!((want.len(), units.len()), (45, 45));

        let hub = Arc::new(WhipHub::default());
        // Before the first pipeline: starting, not "no such source".
        assert_eq!(hub.token("cam").map(|_| ()), Err(Starting));
        let mut cfg = SourceConfig::new("cam", "whip:");
        cfg.publish_token = Some(Secret::new(TOKEN));
        hub.serve(&[cfg, SourceConfig::new("file", "a.mp4")]);
        assert_eq!(
            hub.token("cam").map(|t| t.map(|t| t.expose().to_owned())),
            Ok(Some(TOKEN.into()))
        );
        assert!(matches!(
            (hub.token("file"), hub.token("nope")),
            (Ok(None), Ok(None))
        ));
        let ip = IpAddr::from([127, 0, 0, 1]);
        // No source running yet: nothing to publish to.
        let (_, offer, _, _) = Client::new();
        assert!(matches!(
            hub.offer("cam", &offer, ip, None).await,
            Err(WhipError::NotServed(_))
        ));
        let mut source = PushedSource::new(StreamId::new("cam"), hub.feeds(), 8, 1, None);
        let health = source.health();
        let reader = std::thread::spawn(move || {
            let got: Vec<u64> = (0..45)
                .map(|_| i420_digest(&source.next_frame().unwrap().expect("a frame")))
                .collect();
            (got, source)
        });
        assert!(matches!(
            hub.offer("cam", "v=0 nonsense", ip, None).await,
            Err(WhipError::BadOffer(_))
        ));

        let (mut client, offer, pending, mid) = Client::new();
        let (id, answer) = hub.offer("cam", &offer, ip, mux.as_ref()).await.unwrap();
        if let Some(mux) = &mux {
            let port = format!(" {} typ host", mux.local_addr().port());
            assert!(
                answer.contains(&port),
                "the candidate is the shared port: {answer}"
            );
        }
        client
            .rtc
            .sdp_api()
            .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
            .unwrap();
        let (sent, stats) = tokio::task::spawn_blocking(move || {
            let give_up = Instant::now() + Duration::from_secs(30);
            let mut connected = false;
            let mut next = 0;
            let mut last = Instant::now();
            while Instant::now() < give_up && !(next == units.len() && reader.is_finished()) {
                client.drive(&mut connected);
                if connected && next < units.len() && last.elapsed() > Duration::from_millis(8) {
                    let writer = client.rtc.writer(mid).unwrap();
                    let pt = writer.payload_params().next().unwrap().pt();
                    let at = MediaTime::from_90khz(90_000 + 3000 * next as u64);
                    writer
                        .write(pt, Instant::now(), at, units[next].0.clone())
                        .unwrap();
                    next += 1;
                    last = Instant::now();
                }
            }
            (next, reader.join().unwrap())
        })
        .await
        .unwrap();
        let (got, source) = stats;
        assert_eq!(sent, 45);
        assert_eq!(got, want, "every picture, in order, as the file decodes");
        assert_eq!(health.state(), SourceState::Streaming);

        // DELETE: the session ends, the source waits for the next publisher.
        assert!(!hub.end("other", &id));
        assert!(hub.end("cam", &id));
        let mut source = source;
        let stopper = source.stopper();
        let waiting = std::thread::spawn(move || source.next_frame().map(|f| f.is_none()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.state() != SourceState::Waiting && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(health.state(), SourceState::Waiting);
        stopper.stop();
        assert!(waiting.join().unwrap().unwrap());
    }

    #[tokio::test]
    async fn an_offer_with_audio_gets_only_its_video_taken_and_one_without_video_is_refused() {
        let hub = Arc::new(WhipHub::default());
        let _source = PushedSource::new(StreamId::new("cam"), hub.feeds(), 4, 1, None);
        let ip = IpAddr::from([127, 0, 0, 1]);
        let offer = |video: bool| {
            let mut rtc = Rtc::builder()
                .clear_codecs()
                .enable_opus(true, false)
                .enable_h264(true)
                .build(Instant::now());
            let mut change = rtc.sdp_api();
            change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            if video {
                change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
            }
            change.apply().unwrap().0.to_sdp_string()
        };
        let (_, answer) = hub.offer("cam", &offer(true), ip, None).await.unwrap();
        let audio = answer.lines().find(|l| l.starts_with("m=audio")).unwrap();
        assert!(audio.starts_with("m=audio 0 "), "audio refused: {audio}");
        assert!(video_mid(&answer).is_some(), "{answer}");
        assert!(answer.contains("H264"), "{answer}");
        assert!(matches!(
            hub.offer("cam", &offer(false), ip, None).await,
            Err(WhipError::NoCodec(_))
        ));
    }

    #[test]
    fn the_answers_video_mid_is_found_only_when_it_is_active() {
        let answer = "v=0\r\nm=audio 0 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\n\
                      m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n";
        assert_eq!(video_mid(answer), Some(Mid::from("1")));
        assert_eq!(
            video_mid("m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\n"),
            None
        );
        assert_eq!(
            video_mid("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"),
            None
        );
    }
}
