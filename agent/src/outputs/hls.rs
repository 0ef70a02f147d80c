//! The `hls` sink: HLS with Low-Latency HLS parts (RFC 8216bis, Apple's LL-HLS), served by
//! the agent's web server at `/hls/<stream>/index.m3u8` from the one encoded stream.
//!
//! One packager per stream (a thread, fed like every output from the live slot's bounded
//! queue) cuts the H.264 packets into fMP4 parts (`moof` + `mdat`, about `part_ms` each) and
//! segments (from a keyframe, about `segment_s`), and keeps the last `segments` of them in
//! memory; HTTP clients only read that window, so a slow or stalled client costs its own
//! connection and never the pipeline. A segment is served as its parts one after the other
//! (a CMAF segment of several fragments), so every byte is stored once.
//!
//! Low latency: the playlist lists the recent segments' parts and a preload hint for the
//! next one; a playlist request with `_HLS_msn`/`_HLS_part` and a request for the hinted part
//! wait until it exists (at most three target durations), as the LL-HLS server control
//! `CAN-BLOCK-RELOAD=YES` promises. `part_ms: 0` serves plain HLS.
//!
//! An encoder restart (new size) starts a new init segment (`init-<generation>.mp4`) after
//! an `EXT-X-DISCONTINUITY`; so does a resync after this output's queue overflowed.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aegis_config::{HlsClient, HlsSink};
use aegis_hal::clip::OwnedPacket;
use aegis_hal::fmp4::{FragmentWriter, Sample, init_segment};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::live::{LiveSlot, OutMsg, PacketSubscription, StreamStart};
use crate::metrics::{Metrics, OutputLabels};

/// The fMP4 timescale: the encoder's 90 kHz clock.
const TIMESCALE: u32 = 90_000;
/// Packets the packager's queue holds (about four seconds at 30 fps).
const QUEUE: usize = 128;
/// Plain HLS (no parts listed) still cuts a segment into fragments of about this long.
const PLAIN_FRAGMENT: Duration = Duration::from_millis(1000);
/// The (media) playlist file.
pub const PLAYLIST: &str = "index.m3u8";
/// The multivariant playlist: the one rendition, with its codec, size, frame rate and
/// bandwidth, for players and CDNs that start from one.
pub const MULTIVARIANT: &str = "main.m3u8";
/// Delta updates (`_HLS_skip=YES`) may skip segments older than this many target
/// durations (the least RFC 8216bis allows).
const SKIP_TARGETS: u64 = 6;

/// The streams served as HLS now (the web server looks them up here), and the machine
/// clients that may read them with a token (`outputs.hls.clients`).
#[derive(Debug, Default)]
pub struct HlsHub {
    streams: Mutex<HashMap<String, Arc<HlsStream>>>,
    clients: Vec<HlsClient>,
}

impl HlsHub {
    /// A hub whose streams `clients` may read with their tokens.
    pub fn new(clients: Vec<HlsClient>) -> HlsHub {
        HlsHub {
            streams: Mutex::default(),
            clients,
        }
    }

    /// Whether any machine client is configured (then a request without a session is
    /// challenged for a token).
    pub fn has_clients(&self) -> bool {
        !self.clients.is_empty()
    }

    /// The client that an `Authorization` header value authenticates: `Bearer <token>`,
    /// or `Basic` with the client's name and token. Every client's token is compared, each
    /// without an early exit, so the time taken tells nothing about which one nearly matched.
    pub fn client(&self, authorization: &str) -> Option<&str> {
        let (scheme, credential) = authorization.trim().split_once(' ')?;
        let credential = credential.trim();
        let (name, token) = if scheme.eq_ignore_ascii_case("bearer") {
            (None, credential.to_owned())
        } else if scheme.eq_ignore_ascii_case("basic") {
            use base64::Engine as _;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(credential)
                .ok()?;
            let (name, token) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
            (Some(name.to_owned()), token.to_owned())
        } else {
            return None;
        };
        let mut found = None;
        for c in &self.clients {
            let token_ok = c.token.matches(&token);
            if token_ok && name.as_deref().is_none_or(|n| n == c.name) {
                found = Some(c.name.as_str());
            }
        }
        found
    }

    /// The stream `id`, while it is served.
    pub fn stream(&self, id: &str) -> Option<Arc<HlsStream>> {
        lock(&self.streams).get(id).cloned()
    }
}

/// What a request for one file of a stream gets wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HlsError {
    /// The request cannot be served as asked (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such file (any more, or not yet and not about to be) (404).
    #[error("{0}")]
    NotFound(String),
    /// What a blocking request waited for did not come in time (503).
    #[error("{0}")]
    Timeout(String),
}

/// A file of a stream's HLS presentation, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HlsFile {
    /// `index.m3u8`.
    Playlist,
    /// `main.m3u8`.
    Multivariant,
    /// `init-<generation>.mp4`.
    Init(u64),
    /// `seg-<msn>.m4s`.
    Segment(u64),
    /// `part-<msn>.<part>.m4s`.
    Part(u64, usize),
}

impl HlsFile {
    /// Parses a file name; `None` for anything else.
    pub fn parse(name: &str) -> Option<HlsFile> {
        fn num<T: std::str::FromStr>(s: &str) -> Option<T> {
            // Digits only: no sign, no spaces, no leading zeros beyond "0".
            let canonical = !s.is_empty()
                && s.len() <= 19
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'));
            canonical.then(|| s.parse().ok()).flatten()
        }
        if name == PLAYLIST {
            return Some(HlsFile::Playlist);
        }
        if name == MULTIVARIANT {
            return Some(HlsFile::Multivariant);
        }
        if let Some(g) = name
            .strip_prefix("init-")
            .and_then(|r| r.strip_suffix(".mp4"))
        {
            return num(g).map(HlsFile::Init);
        }
        if let Some(m) = name
            .strip_prefix("seg-")
            .and_then(|r| r.strip_suffix(".m4s"))
        {
            return num(m).map(HlsFile::Segment);
        }
        let (m, p) = name
            .strip_prefix("part-")?
            .strip_suffix(".m4s")?
            .split_once('.')?;
        Some(HlsFile::Part(num(m)?, num(p)?))
    }
}

/// One stream's HLS window: what the packager wrote, what the web server reads.
#[derive(Debug)]
pub struct HlsStream {
    window: Mutex<Window>,
    /// Bumped on every new part or segment; blocking requests wait on it.
    tick: watch::Sender<u64>,
    /// The part target (`None`: plain HLS).
    part_target: Option<Duration>,
    segment_target: Duration,
    /// Bytes served.
    bytes: Counter,
}

/// The media of one request: the fragments to send, one after the other.
#[derive(Debug, Clone)]
pub struct Media {
    /// `video/mp4` data.
    pub chunks: Vec<Bytes>,
}

impl Media {
    /// Bytes in all.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// Whether there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Default)]
struct Window {
    /// Oldest first; the last one may be open (still getting parts).
    segments: VecDeque<Segment>,
    /// Discontinuities that left the window at the front.
    discontinuity_sequence: u64,
    /// The packager stopped (the stream stopped): the playlist ends.
    ended: bool,
}

#[derive(Debug)]
struct Segment {
    msn: u64,
    init: Arc<Init>,
    discontinuity: bool,
    /// The wall clock when its first frame was packaged (`EXT-X-PROGRAM-DATE-TIME`).
    started: SystemTime,
    parts: Vec<Part>,
    complete: bool,
}

impl Segment {
    fn ticks(&self) -> u64 {
        self.parts.iter().map(|p| p.ticks).sum()
    }

    fn bytes(&self) -> usize {
        self.parts.iter().map(|p| p.data.len()).sum()
    }
}

#[derive(Debug)]
struct Part {
    data: Bytes,
    ticks: u64,
    frames: usize,
    independent: bool,
}

#[derive(Debug)]
struct Init {
    generation: u64,
    data: Bytes,
    /// RFC 6381 (`avc1.42C01F`), for the multivariant playlist's `CODECS`.
    codec: String,
    size: (u16, u16),
}

fn secs(ticks: u64) -> f64 {
    ticks as f64 / f64::from(TIMESCALE)
}

fn ticks(d: Duration) -> u64 {
    (d.as_secs_f64() * f64::from(TIMESCALE)).round() as u64
}

impl Window {
    fn open(&self) -> Option<&Segment> {
        self.segments.back().filter(|s| !s.complete)
    }

    fn complete(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().filter(|s| s.complete)
    }

    fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    /// The next part to come: (msn, index).
    fn next_part(&self) -> Option<(u64, usize)> {
        let last = self.segments.back()?;
        Some(if last.complete {
            (last.msn + 1, 0)
        } else {
            (last.msn, last.parts.len())
        })
    }
}

impl HlsStream {
    fn new(cfg: &HlsSink, bytes: Counter) -> HlsStream {
        HlsStream {
            window: Mutex::new(Window::default()),
            tick: watch::channel(0).0,
            part_target: (cfg.part_ms > 0).then(|| Duration::from_millis(cfg.part_ms.into())),
            segment_target: Duration::from_secs(cfg.segment_s.into()),
            bytes,
        }
    }

    /// The segment target duration, in seconds.
    pub fn target_seconds(&self) -> u64 {
        self.segment_target.as_secs()
    }

    /// How long a blocking request waits: three target durations (RFC 8216bis 6.2.5.2).
    fn block_limit(&self) -> Duration {
        self.segment_target * 3
    }

    fn changed(&self) {
        self.tick.send_modify(|t| *t += 1);
    }

    /// Waits (at most [`Self::block_limit`]) until `ready` says yes or no, under the lock.
    async fn wait<T>(
        &self,
        what: &str,
        mut ready: impl FnMut(&Window) -> Option<Result<T, HlsError>>,
    ) -> Result<T, HlsError> {
        let deadline = tokio::time::Instant::now() + self.block_limit();
        let mut rx = self.tick.subscribe();
        loop {
            rx.borrow_and_update();
            if let Some(r) = ready(&lock(&self.window)) {
                return r;
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(HlsError::Timeout(format!(
                    "{what} did not come within {} s",
                    self.block_limit().as_secs()
                )));
            }
        }
    }

    /// The playlist; with `block` (`_HLS_msn`, `_HLS_part`), once it lists that segment or
    /// part. A first playlist waits for the first complete segment. With `skip`
    /// (`_HLS_skip=YES`), a delta update: the segments older than the skip boundary are
    /// replaced by `EXT-X-SKIP` (the client has them from an earlier reload).
    pub async fn playlist(
        &self,
        block: Option<(u64, Option<usize>)>,
        skip: bool,
    ) -> Result<String, HlsError> {
        if skip && self.part_target.is_none() {
            return Err(HlsError::BadRequest(
                "_HLS_skip: this stream offers no delta updates (plain HLS)".into(),
            ));
        }
        if let Some((_, Some(_))) = block
            && self.part_target.is_none()
        {
            return Err(HlsError::BadRequest(
                "_HLS_part: this stream has no parts (plain HLS)".into(),
            ));
        }
        let text = self
            .wait("the playlist", |w| {
                if w.ended {
                    return Some(Ok(self.render(w, skip)));
                }
                let first = w.complete().next()?;
                let Some((msn, part)) = block else {
                    return Some(Ok(self.render(w, skip)));
                };
                // A request beyond the next segment but one cannot be waited for.
                let (next_msn, _) = w.next_part()?;
                if msn > next_msn + 1 {
                    return Some(Err(HlsError::BadRequest(format!(
                        "_HLS_msn={msn} is too far ahead (the next segment is {next_msn})"
                    ))));
                }
                let has = match w.segment(msn) {
                    _ if msn < first.msn => true,
                    Some(s) => match part {
                        None => s.complete,
                        Some(p) => s.complete || p < s.parts.len(),
                    },
                    None => false,
                };
                has.then(|| Ok(self.render(w, skip)))
            })
            .await?;
        self.bytes.inc_by(text.len() as u64);
        Ok(text)
    }

    /// The multivariant playlist: this stream as its one rendition. `BANDWIDTH` is the
    /// window's peak segment bit rate, `AVERAGE-BANDWIDTH` its mean; waits for the first
    /// complete segment, as the playlist does.
    pub async fn multivariant(&self) -> Result<String, HlsError> {
        let text = self
            .wait("the multivariant playlist", |w| {
                let last = w.complete().last()?;
                let (mut bits, mut ticks, mut frames, mut peak) = (0f64, 0u64, 0usize, 0f64);
                for s in w.complete() {
                    let (b, t) = (s.bytes() as f64 * 8.0, s.ticks());
                    bits += b;
                    ticks += t;
                    frames += s.parts.iter().map(|p| p.frames).sum::<usize>();
                    if t > 0 {
                        peak = f64::max(peak, b / secs(t));
                    }
                }
                let seconds = secs(ticks.max(1));
                let mut out = String::from("#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n");
                let _ = writeln!(
                    out,
                    "#EXT-X-STREAM-INF:BANDWIDTH={},AVERAGE-BANDWIDTH={},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE={:.3}\n{PLAYLIST}",
                    peak.ceil() as u64,
                    (bits / seconds).ceil() as u64,
                    last.init.codec,
                    last.init.size.0,
                    last.init.size.1,
                    frames as f64 / seconds,
                );
                Some(Ok(out))
            })
            .await?;
        self.bytes.inc_by(text.len() as u64);
        Ok(text)
    }

    /// A media file: an init segment, a whole segment or a part. The next part (the
    /// playlist's preload hint) is waited for.
    pub async fn media(&self, file: HlsFile) -> Result<Media, HlsError> {
        let gone = |what: String| HlsError::NotFound(format!("{what} is not in the window"));
        let media = match file {
            HlsFile::Playlist | HlsFile::Multivariant => {
                return Err(HlsError::BadRequest("not a media file".into()));
            }
            HlsFile::Init(g) => {
                let w = lock(&self.window);
                let init = w.segments.iter().find(|s| s.init.generation == g);
                let init = init.ok_or_else(|| gone(format!("init-{g}.mp4")))?;
                Media {
                    chunks: vec![init.init.data.clone()],
                }
            }
            HlsFile::Segment(msn) => {
                let w = lock(&self.window);
                let s = w.segment(msn).filter(|s| s.complete);
                let s = s.ok_or_else(|| gone(format!("segment {msn}")))?;
                Media {
                    chunks: s.parts.iter().map(|p| p.data.clone()).collect(),
                }
            }
            HlsFile::Part(msn, i) => {
                let name = format!("part {msn}.{i}");
                self.wait(&name, |w| {
                    if let Some(p) = w.segment(msn).and_then(|s| s.parts.get(i)) {
                        return Some(Ok(Media {
                            chunks: vec![p.data.clone()],
                        }));
                    }
                    // Only the hinted part (or the first of the next segment) is waited for.
                    let next = w.next_part();
                    let soon = !w.ended && (next == Some((msn, i)) || next == Some((msn, 0)));
                    (!soon).then(|| Err(gone(name.clone())))
                })
                .await?
            }
        };
        self.bytes.inc_by(media.len() as u64);
        Ok(media)
    }

    /// The media playlist of `w`; with `skip`, a delta update (RFC 8216bis 6.2.5.1): the
    /// complete segments that end more than [`SKIP_TARGETS`] target durations before the
    /// playlist's end are one `EXT-X-SKIP` (none skipped: the whole playlist).
    fn render(&self, w: &Window, skip: bool) -> String {
        let longest = w.complete().map(|s| secs(s.ticks()).round() as u64).max();
        let target = self.segment_target.as_secs().max(longest.unwrap_or(0));
        let skipped = if skip {
            let boundary = SKIP_TARGETS * target * u64::from(TIMESCALE);
            let mut after = 0; // ticks from a segment's end to the playlist's end
            let mut skipped = w.segments.len();
            for s in w.segments.iter().rev() {
                if after <= boundary || !s.complete {
                    skipped -= 1;
                }
                after += s.ticks();
            }
            // Only a prefix is skipped (the loop kept every segment after a kept one).
            skipped
        } else {
            0
        };
        let mut out = String::with_capacity(4096);
        let _ = writeln!(
            out,
            "#EXTM3U\n#EXT-X-VERSION:{}\n#EXT-X-TARGETDURATION:{target}",
            if skipped > 0 { 9 } else { 6 }
        );
        out.push_str("#EXT-X-INDEPENDENT-SEGMENTS\n");
        if let Some(p) = self.part_target {
            let p = p.as_secs_f64();
            let _ = writeln!(
                out,
                "#EXT-X-SERVER-CONTROL:CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL={:.1},PART-HOLD-BACK={:.3}\n#EXT-X-PART-INF:PART-TARGET={p:.3}",
                (SKIP_TARGETS * target) as f64,
                3.0 * p
            );
        }
        let first = w.segments.front().map_or(0, |s| s.msn);
        let _ = writeln!(out, "#EXT-X-MEDIA-SEQUENCE:{first}");
        if w.discontinuity_sequence > 0 {
            let _ = writeln!(
                out,
                "#EXT-X-DISCONTINUITY-SEQUENCE:{}",
                w.discontinuity_sequence
            );
        }
        // Parts are listed for the segments that start within three target durations of
        // the playlist's end.
        let recent = {
            let limit = 3 * target * u64::from(TIMESCALE);
            let (mut age, mut from) = (0, w.segments.len());
            for s in w.segments.iter().rev() {
                age += s.ticks();
                if age > limit {
                    break;
                }
                from -= 1;
            }
            from
        };
        if skipped > 0 {
            let _ = writeln!(out, "#EXT-X-SKIP:SKIPPED-SEGMENTS={skipped}");
        }
        let mut map = None;
        for (k, s) in w.segments.iter().enumerate().skip(skipped) {
            if s.discontinuity && k > 0 {
                out.push_str("#EXT-X-DISCONTINUITY\n");
            }
            if map != Some(s.init.generation) {
                map = Some(s.init.generation);
                let _ = writeln!(out, "#EXT-X-MAP:URI=\"init-{}.mp4\"", s.init.generation);
            }
            let us = s
                .started
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            let _ = writeln!(
                out,
                "#EXT-X-PROGRAM-DATE-TIME:{}",
                crate::store::export::format_utc(us)
            );
            if self.part_target.is_some() && k >= recent {
                for (i, p) in s.parts.iter().enumerate() {
                    let _ = write!(
                        out,
                        "#EXT-X-PART:DURATION={:.5},URI=\"part-{}.{i}.m4s\"",
                        secs(p.ticks),
                        s.msn
                    );
                    out.push_str(if p.independent {
                        ",INDEPENDENT=YES\n"
                    } else {
                        "\n"
                    });
                }
            }
            if s.complete {
                let _ = writeln!(out, "#EXTINF:{:.5},\nseg-{}.m4s", secs(s.ticks()), s.msn);
            }
        }
        if w.ended {
            out.push_str("#EXT-X-ENDLIST\n");
        } else if let (Some(_), Some((msn, i))) = (self.part_target, w.next_part()) {
            let _ = writeln!(
                out,
                "#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-{msn}.{i}.m4s\""
            );
        }
        out
    }
}

/// Starts packaging `slot`'s stream into `hub` as `cfg` says; stopping the thread takes the
/// stream off the web server.
pub fn start(
    slot: &Arc<LiveSlot>,
    cfg: &HlsSink,
    hub: &Arc<HlsHub>,
    metrics: &Metrics,
) -> anyhow::Result<crate::outputs::OutputThread> {
    let labels = OutputLabels {
        stream: slot.stream().to_owned(),
        output: "hls".into(),
    };
    let stream = Arc::new(HlsStream::new(
        cfg,
        metrics.output_bytes.get_or_create_owned(&labels),
    ));
    let dropped = metrics.output_dropped.get_or_create_owned(&labels);
    let packager = Packager::new(slot.stream(), stream.clone(), cfg);
    let sub = slot.subscribe_packets(QUEUE);
    let id = slot.stream().to_owned();
    lock(&hub.streams).insert(id.clone(), stream.clone());
    let hub = hub.clone();
    let name = format!("hls-{id}");
    Ok(crate::outputs::OutputThread::spawn(name, move |stop| {
        let mut packager = packager;
        super::run_feed(sub, stop, &dropped, |sub, msg| match msg {
            OutMsg::Start(s) => packager.start(s),
            OutMsg::Packet(p) => packager.packet(&p, sub),
        });
        packager.end();
        let mut streams = lock(&hub.streams);
        if streams.get(&id).is_some_and(|s| Arc::ptr_eq(s, &stream)) {
            streams.remove(&id);
        }
    })?)
}

/// Cuts the packets into parts and segments.
struct Packager {
    id: String,
    stream: Arc<HlsStream>,
    writer: FragmentWriter,
    start: Option<Arc<StreamStart>>,
    init: Option<Arc<Init>>,
    /// The packets of the part being filled, and their nominal length.
    pending: Vec<OwnedPacket>,
    pending_ticks: u64,
    /// Where the last part ended (decode time, 90 kHz).
    end: Option<u64>,
    part_ticks: u64,
    segment_ticks: u64,
    keep: usize,
    next_msn: u64,
    /// The next segment follows a discontinuity.
    discontinuity: bool,
    /// A keyframe was asked for the segment being filled.
    key_asked: bool,
    /// The last packaging error, logged once.
    failed: Option<String>,
}

impl Packager {
    fn new(id: &str, stream: Arc<HlsStream>, cfg: &HlsSink) -> Packager {
        let part = stream.part_target.unwrap_or(PLAIN_FRAGMENT);
        Packager {
            id: id.to_owned(),
            part_ticks: ticks(part),
            segment_ticks: ticks(stream.segment_target),
            stream,
            writer: FragmentWriter::new(),
            start: None,
            init: None,
            pending: Vec::new(),
            pending_ticks: 0,
            end: None,
            keep: cfg.segments as usize,
            next_msn: 0,
            discontinuity: false,
            key_asked: false,
            failed: None,
        }
    }

    /// The stream (re)starts: a new encoder generation, or a resync after this output's
    /// queue overflowed. Either way the next segment starts at the coming keyframe after a
    /// discontinuity (a resync skipped frames).
    fn start(&mut self, s: Arc<StreamStart>) {
        self.close_segment();
        let new_generation = self.init.as_ref().map(|i| i.generation) != Some(s.generation);
        if new_generation {
            self.init = None;
        }
        self.discontinuity = self.next_msn > 0;
        self.start = Some(s);
    }

    fn packet(&mut self, p: &OwnedPacket, sub: &PacketSubscription) {
        if self.init.is_none() {
            let Some(start) = self.start.clone().filter(|_| p.key) else {
                return;
            };
            match init_segment(&start.avc, TIMESCALE) {
                Ok(data) => {
                    self.init = Some(Arc::new(Init {
                        generation: start.generation,
                        data: data.into(),
                        codec: start.avc.codec_string(),
                        size: start.avc.size(),
                    }));
                    self.writer = FragmentWriter::new();
                    self.end = None;
                }
                Err(e) => return self.failed(&e.to_string()),
            }
        }
        let open = lock(&self.stream.window).open().map(Segment::ticks);
        if p.key {
            self.flush_part();
            // A keyframe that comes early (another consumer asked) starts an independent
            // part, not a segment shorter than half the target.
            if open.is_none_or(|t| t + self.pending_ticks >= self.segment_ticks / 2) {
                self.close_segment();
                self.open_segment();
            }
        } else if open.is_none() {
            return;
        }
        let duration = p.duration.max(0) as u64;
        self.pending.push(p.clone());
        self.pending_ticks += duration;
        if self.pending_ticks + duration > self.part_ticks {
            self.flush_part();
        }
        // Overdue by a part: the encoder's keyframe interval is longer than a segment.
        let filled = open.unwrap_or(0) + self.pending_ticks + duration;
        if !self.key_asked && filled >= self.segment_ticks + self.part_ticks {
            sub.request_keyframe();
            self.key_asked = true;
        }
    }

    fn failed(&mut self, e: &str) {
        if self.failed.as_deref() != Some(e) {
            tracing::warn!(stream = %self.id, error = %e, "hls: not packaged");
            self.failed = Some(e.to_owned());
        }
    }

    fn open_segment(&mut self) {
        let Some(init) = self.init.clone() else {
            return;
        };
        let mut w = lock(&self.stream.window);
        w.segments.push_back(Segment {
            msn: self.next_msn,
            init,
            discontinuity: std::mem::take(&mut self.discontinuity),
            started: SystemTime::now(),
            parts: Vec::new(),
            complete: false,
        });
        self.next_msn += 1;
        self.key_asked = false;
    }

    /// Packages the pending packets as one part of the open segment.
    fn flush_part(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        self.pending_ticks = 0;
        // Each sample lasts until the next one's decode time (so the part has no gap); the
        // first starts where the last part ended, or at its own time after a jump.
        let mut t = (pending[0].dts.max(0) as u64).max(self.end.unwrap_or(0));
        let mut samples = Vec::with_capacity(pending.len());
        for (i, p) in pending.iter().enumerate() {
            let next = pending.get(i + 1).map(|n| n.dts.max(0) as u64);
            let duration = match next {
                Some(n) if n > t => n - t,
                _ => p.duration.max(1) as u64,
            };
            samples.push(Sample {
                decode_time: t,
                duration: duration.min(u64::from(u32::MAX)) as u32,
                composition_offset: (p.pts - t as i64).clamp(i32::MIN.into(), i32::MAX.into())
                    as i32,
                is_key: p.key,
                data: &p.data,
            });
            t += duration;
        }
        let data = match self.writer.fragment_samples(&samples) {
            Ok(d) => d,
            Err(e) => return self.failed(&e.to_string()),
        };
        let ticks = t - samples[0].decode_time;
        self.end = Some(t);
        let mut w = lock(&self.stream.window);
        if let Some(s) = w.segments.back_mut().filter(|s| !s.complete) {
            s.parts.push(Part {
                data: data.into(),
                ticks,
                frames: pending.len(),
                independent: pending[0].key,
            });
        }
        drop(w);
        self.stream.changed();
    }

    /// Completes the open segment and forgets what left the window.
    fn close_segment(&mut self) {
        self.flush_part();
        let mut w = lock(&self.stream.window);
        let Some(s) = w.segments.back_mut().filter(|s| !s.complete) else {
            return;
        };
        if s.parts.is_empty() {
            w.segments.pop_back();
        } else {
            s.complete = true;
        }
        while w.complete().count() > self.keep {
            if let Some(old) = w.segments.pop_front()
                && old.discontinuity
            {
                w.discontinuity_sequence += 1;
            }
        }
        drop(w);
        self.stream.changed();
    }

    /// The stream stopped: the last segment completes and the playlist ends.
    fn end(&mut self) {
        self.close_segment();
        lock(&self.stream.window).ended = true;
        self.stream.changed();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_hal::fmp4::AvcConfig;

    /// 30 fps in 90 kHz ticks.
    const FRAME: i64 = 3000;

    /// Constrained Baseline, as x264 writes it.
    fn avc() -> AvcConfig {
        crate::outputs::test_avc(0x42, 0xc0)
    }

    struct Rig {
        packager: Packager,
        stream: Arc<HlsStream>,
        sub: PacketSubscription,
        n: i64,
        _slot: Arc<LiveSlot>,
    }

    impl Rig {
        fn new(cfg: &HlsSink) -> Rig {
            let metrics = Arc::new(Metrics::new("cpu"));
            let hub = crate::live::LiveHub::new(metrics);
            let slot = hub.slot("cam0");
            let stream = Arc::new(HlsStream::new(cfg, Counter::default()));
            let mut packager = Packager::new("cam0", stream.clone(), cfg);
            packager.start(Arc::new(StreamStart {
                avc: avc(),
                generation: 1,
            }));
            Rig {
                packager,
                stream,
                sub: slot.subscribe_packets(4),
                n: 0,
                _slot: slot,
            }
        }

        /// `count` frames, a keyframe every `gop`.
        fn frames(&mut self, count: i64, gop: i64) {
            for _ in 0..count {
                let key = self.n % gop == 0;
                let p = OwnedPacket {
                    data: vec![
                        0,
                        0,
                        0,
                        1,
                        if key { 0x65 } else { 0x41 },
                        0x88,
                        self.n as u8,
                    ]
                    .into(),
                    pts: self.n * FRAME,
                    dts: self.n * FRAME,
                    duration: FRAME,
                    key,
                };
                self.packager.packet(&p, &self.sub);
                self.n += 1;
            }
        }

        fn playlist(&self) -> String {
            self.stream.render(&lock(&self.stream.window), false)
        }
    }

    #[test]
    fn file_names_are_parsed_strictly() {
        assert_eq!(HlsFile::parse("index.m3u8"), Some(HlsFile::Playlist));
        assert_eq!(HlsFile::parse("init-3.mp4"), Some(HlsFile::Init(3)));
        assert_eq!(HlsFile::parse("seg-0.m4s"), Some(HlsFile::Segment(0)));
        assert_eq!(HlsFile::parse("part-12.4.m4s"), Some(HlsFile::Part(12, 4)));
        for bad in [
            "",
            "index.m3u",
            "seg-.m4s",
            "seg-01.m4s",
            "seg--1.m4s",
            "seg-+1.m4s",
            "seg-1.mp4",
            "part-1.m4s",
            "part-1.2.3.m4s",
            "part-1..m4s",
            "../index.m3u8",
            "seg-1 .m4s",
            "seg-99999999999999999999.m4s",
            "init-x.mp4",
        ] {
            assert_eq!(HlsFile::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn parts_and_segments_follow_the_targets_and_the_window_rolls() {
        let cfg = HlsSink {
            segments: 3,
            ..HlsSink::default()
        };
        let mut rig = Rig::new(&cfg);
        // Two-second GOPs at 30 fps: a segment per GOP, parts of six frames (200 ms).
        rig.frames(60 * 5 + 7, 60);
        let text = rig.playlist();
        assert!(text.starts_with("#EXTM3U\n"), "{text}");
        assert!(text.contains("#EXT-X-TARGETDURATION:2\n"), "{text}");
        assert!(
            text.contains("#EXT-X-PART-INF:PART-TARGET=0.200\n"),
            "{text}"
        );
        assert!(
            text.contains("CAN-BLOCK-RELOAD=YES,CAN-SKIP-UNTIL=12.0,PART-HOLD-BACK=0.600"),
            "{text}"
        );
        // Five complete segments, three kept (2, 3, 4), and the open one (5) with a part of
        // six frames and a pending one.
        assert!(text.contains("#EXT-X-MEDIA-SEQUENCE:2\n"), "{text}");
        for msn in 2..=4 {
            assert!(
                text.contains(&format!("#EXTINF:2.00000,\nseg-{msn}.m4s\n")),
                "{text}"
            );
        }
        assert!(!text.contains("seg-5.m4s"), "{text}");
        assert!(
            text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part-5.0.m4s\",INDEPENDENT=YES\n")
        );
        assert!(text.contains("#EXT-X-PART:DURATION=0.20000,URI=\"part-4.9.m4s\"\n"));
        assert!(
            text.ends_with("#EXT-X-PRELOAD-HINT:TYPE=PART,URI=\"part-5.1.m4s\"\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("#EXT-X-MAP:URI=\"init-1.mp4\"").count(),
            1,
            "{text}"
        );
        // Parts only for the last three target durations (6 s): segments 3, 4 and 5.
        assert!(!text.contains("part-2."), "{text}");
        let w = lock(&rig.stream.window);
        let seg = w.segment(3).unwrap();
        assert_eq!(seg.parts.len(), 10);
        assert!(seg.parts.iter().all(|p| p.ticks == 6 * FRAME as u64));
        assert!(seg.parts[0].independent && !seg.parts[1].independent);
    }

    /// The byte offset of the `n`th (0-based) `EXT-X-PROGRAM-DATE-TIME` line: where
    /// that segment's lines start.
    fn segment_lines(text: &str, n: usize) -> usize {
        text.match_indices("#EXT-X-PROGRAM-DATE-TIME:")
            .nth(n)
            .unwrap_or_else(|| panic!("no segment {n} in {text}"))
            .0
    }

    #[tokio::test]
    async fn a_delta_update_skips_what_is_older_than_six_target_durations() {
        let cfg = HlsSink {
            segments: 10,
            ..HlsSink::default()
        };
        let mut rig = Rig::new(&cfg);
        // Nine complete two-second segments (0-8) and the open one (9) with one part.
        rig.frames(60 * 9 + 7, 60);
        let full = rig.stream.playlist(None, false).await.unwrap();
        let delta = rig.stream.playlist(None, true).await.unwrap();
        // The boundary is 12 s before the end (0.2 s into segment 9): segments 0, 1 and 2
        // end before it.
        assert!(delta.contains("#EXT-X-VERSION:9\n"), "{delta}");
        assert!(
            delta.contains("#EXT-X-MEDIA-SEQUENCE:0\n#EXT-X-SKIP:SKIPPED-SEGMENTS=3\n"),
            "{delta}"
        );
        assert!(!delta.contains("seg-2.m4s") && delta.contains("seg-3.m4s"));
        assert!(full.contains("#EXT-X-VERSION:6\n") && full.contains("seg-0.m4s"));
        assert!(!full.contains("EXT-X-SKIP"), "{full}");
        // What follows is the full playlist's, line for line, after its init.
        assert!(delta.contains("#EXT-X-MAP:URI=\"init-1.mp4\"\n"), "{delta}");
        assert_eq!(
            delta[segment_lines(&delta, 0)..],
            full[segment_lines(&full, 3)..]
        );
        // Over a blocking reload too.
        let blocked = rig.stream.playlist(Some((9, Some(0))), true).await.unwrap();
        assert_eq!(blocked, delta);
        // Nothing is old enough in the default window of six segments: the whole playlist.
        let mut small = Rig::new(&HlsSink::default());
        small.frames(60 * 9 + 7, 60);
        let text = small.stream.playlist(None, true).await.unwrap();
        assert_eq!(text, small.stream.playlist(None, false).await.unwrap());
        assert!(text.contains("CAN-SKIP-UNTIL=12.0"), "{text}");
        // Plain HLS offers no delta updates.
        let mut plain = Rig::new(&HlsSink {
            part_ms: 0,
            ..HlsSink::default()
        });
        plain.frames(60 * 3, 60);
        assert!(matches!(
            plain.stream.playlist(None, true).await,
            Err(HlsError::BadRequest(_))
        ));
        assert!(!plain.playlist().contains("CAN-SKIP-UNTIL"));
    }

    #[tokio::test]
    async fn the_multivariant_playlist_describes_the_one_rendition() {
        let mut rig = Rig::new(&HlsSink::default());
        rig.frames(60 * 3 + 7, 60);
        let text = rig.stream.multivariant().await.unwrap();
        let (peak, mean) = {
            let w = lock(&rig.stream.window);
            let rates: Vec<f64> = w
                .complete()
                .map(|s| s.bytes() as f64 * 8.0 / secs(s.ticks()))
                .collect();
            assert_eq!(rates.len(), 3);
            let bits: usize = w.complete().map(Segment::bytes).sum();
            (
                rates.iter().cloned().fold(0.0, f64::max).ceil() as u64,
                (bits as f64 * 8.0 / 6.0).ceil() as u64,
            )
        };
        assert_eq!(
            text,
            format!(
                "#EXTM3U\n#EXT-X-VERSION:6\n#EXT-X-INDEPENDENT-SEGMENTS\n#EXT-X-STREAM-INF:BANDWIDTH={peak},AVERAGE-BANDWIDTH={mean},CODECS=\"{}\",RESOLUTION={}x{},FRAME-RATE=30.000\nindex.m3u8\n",
                avc().codec_string(),
                avc().size().0,
                avc().size().1,
            )
        );
        assert!(peak >= mean && mean > 0);
        assert_eq!(HlsFile::parse("main.m3u8"), Some(HlsFile::Multivariant));
    }

    #[test]
    fn a_long_gop_gets_one_keyframe_request_per_segment() {
        use aegis_hal::record::PacketTap as _;
        let mut rig = Rig::new(&HlsSink::default());
        // The encoder's own keyframes are 10 s apart; it honours every request at the next
        // frame, as x264 does.
        let (mut requests, mut key_next) = (0, false);
        for _ in 0..600 {
            let gop = if key_next || rig.n == 0 { 1 } else { i64::MAX };
            rig.frames(1, gop);
            key_next = rig._slot.take_keyframe_request();
            requests += usize::from(key_next);
        }
        let w = lock(&rig.stream.window);
        let done: Vec<u64> = w.complete().map(Segment::ticks).collect();
        // Each segment closes on the one keyframe asked for when the next frame would make it
        // a part overdue (65 frames: 2.17 s).
        assert!(done.len() >= 4, "{done:?}");
        assert!(done.iter().all(|&t| t == 65 * FRAME as u64), "{done:?}");
        // One request per segment, and the one the subscription itself makes.
        let made = rig.packager.next_msn as usize;
        assert!(
            requests <= made + 1,
            "{requests} requests for {made} segments: {done:?}"
        );
    }

    #[test]
    fn a_restart_is_a_discontinuity_with_a_new_init_and_the_end_ends_the_playlist() {
        let mut rig = Rig::new(&HlsSink::default());
        rig.frames(90, 30);
        rig.packager.start(Arc::new(StreamStart {
            avc: avc(),
            generation: 2,
        }));
        // A new encoder's timestamps start again from zero.
        rig.n = 0;
        rig.frames(45, 30);
        rig.packager.end();
        let text = rig.playlist();
        let disc = text
            .find("#EXT-X-DISCONTINUITY\n")
            .expect("a discontinuity");
        let map2 = text
            .find("#EXT-X-MAP:URI=\"init-2.mp4\"")
            .expect("the new init");
        assert!(
            disc < map2 && text.find("init-1.mp4").unwrap() < disc,
            "{text}"
        );
        assert!(text.ends_with("#EXT-X-ENDLIST\n"), "{text}");
        assert!(!text.contains("PRELOAD-HINT"), "{text}");
    }

    #[test]
    fn plain_hls_lists_no_parts() {
        let cfg = HlsSink {
            part_ms: 0,
            ..HlsSink::default()
        };
        let mut rig = Rig::new(&cfg);
        rig.frames(130, 60);
        let text = rig.playlist();
        assert!(
            text.contains("seg-0.m4s") && text.contains("seg-1.m4s"),
            "{text}"
        );
        for tag in ["#EXT-X-PART", "PRELOAD-HINT", "SERVER-CONTROL"] {
            assert!(!text.contains(tag), "{tag} in {text}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn blocking_requests_wait_for_their_part_and_no_longer() {
        let mut rig = Rig::new(&HlsSink::default());
        rig.frames(61, 60);
        let stream = rig.stream.clone();
        // Segment 0 is complete, segment 1 has no part yet: part 1.0 is the hint.
        let waiting = tokio::spawn({
            let s = stream.clone();
            async move { s.playlist(Some((1, Some(0))), false).await }
        });
        let hinted = tokio::spawn({
            let s = stream.clone();
            async move { s.media(HlsFile::Part(1, 0)).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished() && !hinted.is_finished());
        rig.frames(6, 60);
        let text = waiting.await.unwrap().unwrap();
        assert!(text.contains("part-1.0.m4s"), "{text}");
        let part = hinted.await.unwrap().unwrap();
        assert!(part.len() > 8 && &part.chunks[0][4..8] == b"moof");
        // Too far ahead, a part that is neither there nor next, one that never comes.
        assert!(matches!(
            stream.playlist(Some((5, None)), false).await,
            Err(HlsError::BadRequest(_))
        ));
        assert!(matches!(
            stream.media(HlsFile::Part(1, 7)).await,
            Err(HlsError::NotFound(_))
        ));
        assert!(matches!(
            stream.playlist(Some((2, None)), false).await,
            Err(HlsError::Timeout(_))
        ));
        // A whole segment is its parts, one after the other.
        let seg = stream.media(HlsFile::Segment(0)).await.unwrap();
        assert_eq!(seg.chunks.len(), 10);
        assert!(matches!(
            stream.media(HlsFile::Segment(1)).await,
            Err(HlsError::NotFound(_))
        ));
        let init = stream.media(HlsFile::Init(1)).await.unwrap();
        assert_eq!(&init.chunks[0][4..8], b"ftyp");
    }
}
