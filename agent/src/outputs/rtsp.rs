//! The RTSP restream server (`outputs.rtsp`): `rtsp://device:8554/<stream>` for VMSs and
//! players, serving the streams the pipeline's `restream` sink names from the one encoded
//! stream (the live slot's packets: no second encode).
//!
//! A small server of our own rather than a crate: the Rust RTSP crates are clients
//! (retina) or message codecs, and GStreamer's server would bring a second media stack.
//! What it speaks (RFC 2326, what ffmpeg, GStreamer, VLC and VMSs use):
//! - OPTIONS, DESCRIBE (SDP with the parameter sets), SETUP (RTP over TCP-interleaved, or
//!   UDP unless `udp: false`), PLAY, GET_PARAMETER (keep-alive), TEARDOWN;
//! - HTTP Digest authentication (RFC 2617, MD5, one nonce per connection; Basic is not
//!   offered: it would send the password in the clear), five failures close the
//!   connection;
//! - H.264 in RTP, packetization mode 1 ([`super::rtp`]); an RTCP sender report every
//!   5 s.
//!
//! Every byte from a client is hostile: a request's head is at most 8 KiB, a body 4 KiB,
//! headers are parsed strictly, the stream named must run and be restreamed. A client never
//! slows the pipeline or the others: it has its own bounded queue at the live slot (a full
//! queue drops and resyncs at a keyframe, counted), a TCP write that blocks for 10 s
//! closes it, a UDP session without a request or RTCP for 60 s ends. Passwords are never
//! logged; a failed login logs the peer and the user name.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use aegis_config::RtspServerConfig;
use md5::{Digest as _, Md5};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::rtp::{self, H264Packetizer};
use crate::live::{LiveHub, OutMsg, PacketSubscription, StreamStart};
use crate::metrics::{Metrics, OutputLabels};

/// Largest request head (request line and headers).
const MAX_HEAD: usize = 8 * 1024;
/// Largest request body.
const MAX_BODY: usize = 4 * 1024;
/// Packets a client's queue holds at the live slot (about two seconds at 30 fps).
const CLIENT_QUEUE: usize = 64;
/// A TCP write blocked this long closes the connection (the client stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The session timeout announced, and after which a silent UDP session ends.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long DESCRIBE waits for the stream's parameters (an encoder opened on demand).
const PARAMS_WAIT: Duration = Duration::from_secs(5);
/// Interval of RTCP sender reports.
const SR_INTERVAL: Duration = Duration::from_secs(5);
/// Failed logins after which a connection is closed.
const MAX_AUTH_FAILURES: u32 = 5;
/// The Digest realm.
const REALM: &str = "aegis";

/// Decides whether a stream may be served (it runs and the pipeline restreams it).
pub type Restreamed = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// The running server: stop it with [`RtspServer::stop`].
pub struct RtspServer {
    /// Where it listens.
    pub listen: SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// A client's connection: plain TCP, or TLS over it (RTSPS).
trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> ClientStream for T {}

/// How long a client has to finish the TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// What every connection shares.
struct Ctx {
    /// RTSPS: every connection starts with a TLS handshake.
    tls: Option<tokio_rustls::TlsAcceptor>,
    users: Vec<(String, String)>,
    anonymous: bool,
    udp: bool,
    max_sessions: usize,
    sessions: AtomicUsize,
    connections: AtomicUsize,
    hub: Arc<LiveHub>,
    restreamed: Restreamed,
    metrics: Arc<Metrics>,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl RtspServer {
    /// Binds `cfg.listen` and serves until [`stop`](Self::stop); with `cfg.tls`, RTSPS with
    /// `tls` (the device certificate's server configuration).
    pub async fn start(
        cfg: &RtspServerConfig,
        hub: Arc<LiveHub>,
        restreamed: Restreamed,
        metrics: Arc<Metrics>,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<RtspServer> {
        let tls = match (cfg.tls, tls) {
            (true, Some(c)) => Some(tokio_rustls::TlsAcceptor::from(c)),
            (true, None) => anyhow::bail!("outputs.rtsp.tls: no certificate to serve RTSPS with"),
            (false, _) => None,
        };
        let addr: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("outputs.rtsp.listen {:?}: {e}", cfg.listen))?;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| anyhow::anyhow!("outputs.rtsp.listen: cannot listen on {addr}: {e}"))?;
        let listen = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(Ctx {
            tls,
            users: cfg
                .users
                .iter()
                .map(|u| (u.name.clone(), u.password.expose().to_owned()))
                .collect(),
            anonymous: cfg.anonymous,
            udp: cfg.udp,
            max_sessions: cfg.max_clients as usize,
            sessions: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            hub,
            restreamed,
            metrics,
            stop: stopped,
        });
        tracing::info!(%listen, users = cfg.users.len(), anonymous = cfg.anonymous,
            udp = cfg.udp, tls = cfg.tls, "RTSP restream server listening");
        let task = tokio::spawn(accept_loop(listener, ctx));
        Ok(RtspServer { listen, stop, task })
    }

    /// Closes the listener and every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, ctx: Arc<Ctx>) {
    let mut stop = ctx.stop.clone();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "RTSP: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Connections that never set up a session still hold a socket: bounded too.
                if ctx.connections.load(Ordering::Acquire) >= 2 * ctx.max_sessions + 8 {
                    tracing::warn!(%peer, "RTSP: too many connections; refused");
                    continue;
                }
                ctx.connections.fetch_add(1, Ordering::AcqRel);
                let ctx = ctx.clone();
                conns.spawn(async move {
                    match accept_tls(sock, &ctx).await {
                        Ok((sock, local)) => {
                            let mut c = Connection::new(sock, peer, local, ctx.clone());
                            if let Err(e) = c.run().await {
                                tracing::debug!(%peer, error = %e, "RTSP connection ended");
                            }
                            c.end_session();
                        }
                        Err(e) => tracing::info!(%peer, error = %e, "RTSPS: no TLS session"),
                    }
                    ctx.connections.fetch_sub(1, Ordering::AcqRel);
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.shutdown().await;
}

/// The accepted socket as the connection speaks over it (TLS after the handshake for
/// RTSPS), and its local address (for UDP transport).
async fn accept_tls(
    sock: TcpStream,
    ctx: &Ctx,
) -> anyhow::Result<(Box<dyn ClientStream>, Option<SocketAddr>)> {
    let local = sock.local_addr().ok();
    let _ = sock.set_nodelay(true);
    let Some(acceptor) = &ctx.tls else {
        return Ok((Box::new(sock), local));
    };
    let mut stop = ctx.stop.clone();
    tokio::select! {
        r = tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(sock)) => match r {
            Ok(Ok(s)) => Ok((Box::new(s), local)),
            Ok(Err(e)) => Err(anyhow::anyhow!("TLS handshake: {e}")),
            Err(_) => Err(anyhow::anyhow!("no TLS handshake within {TLS_HANDSHAKE:?}")),
        },
        _ = stop.changed() => Err(anyhow::anyhow!("the server stopped")),
    }
}

/// A parsed request.
#[derive(Debug)]
struct Request {
    method: String,
    uri: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// What the input buffer starts with.
#[derive(Debug)]
enum Input {
    /// Not complete yet.
    Partial,
    /// A request and the bytes it took (head and body).
    Request(Request, usize),
    /// An interleaved binary frame (the client's RTCP) of this many bytes, skipped.
    Frame(usize),
}

/// Why a request is refused before it is understood (the connection then closes).
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error("request head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("request body larger than {MAX_BODY} bytes")]
    BodyTooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
}

/// Parses the start of `buf`.
fn parse(buf: &[u8]) -> Result<Input, ParseError> {
    if buf.first() == Some(&b'$') {
        if buf.len() < 4 {
            return Ok(Input::Partial);
        }
        let len = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        return Ok(if buf.len() >= len {
            Input::Frame(len)
        } else {
            Input::Partial
        });
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_HEAD {
            Err(ParseError::HeadTooLarge)
        } else {
            Ok(Input::Partial)
        };
    };
    if end > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| ParseError::Malformed("not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed("request line"));
    };
    if version != "RTSP/1.0" {
        return Err(ParseError::Malformed("not RTSP/1.0"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
        return Err(ParseError::Malformed("method"));
    }
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or(ParseError::Malformed("header line"))?;
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(ParseError::Malformed("header name"));
        }
        if headers.len() >= 64 {
            return Err(ParseError::Malformed("more than 64 headers"));
        }
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let req = Request {
        method: method.to_owned(),
        uri: uri.to_owned(),
        headers,
    };
    let body = match req.header("Content-Length") {
        Some(n) => n
            .parse::<usize>()
            .map_err(|_| ParseError::Malformed("Content-Length"))?,
        None => 0,
    };
    if body > MAX_BODY {
        return Err(ParseError::BodyTooLarge);
    }
    let total = end + 4 + body;
    Ok(if buf.len() >= total {
        Input::Request(req, total)
    } else {
        Input::Partial
    })
}

/// What follows the scheme of an `rtsp://` or `rtsps://` URI (either case).
fn after_scheme(uri: &str) -> Option<&str> {
    let (scheme, rest) = uri.split_once("://")?;
    (scheme.eq_ignore_ascii_case("rtsp") || scheme.eq_ignore_ascii_case("rtsps")).then_some(rest)
}

/// The stream id and whether a track is named, from a request URI
/// (`rtsp[s]://host[:port]/<stream>[/trackID=0]`); `None` when it names no stream.
fn stream_of(uri: &str) -> Option<(&str, bool)> {
    let rest = after_scheme(uri)?;
    let path = rest.split_once('/').map(|(_, p)| p)?;
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let mut segs = path.split('/').filter(|s| !s.is_empty());
    let stream = segs.next()?;
    let track = segs.next();
    if segs.next().is_some() || track.is_some_and(|t| t != "trackID=0") {
        return None;
    }
    Some((stream, track.is_some()))
}

/// The `key="value"` (or `key=value`) parameters of a Digest header.
fn digest_params(value: &str) -> Option<Vec<(&str, &str)>> {
    let rest = value.strip_prefix("Digest ")?;
    let mut out = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim(), &after[end..])
        };
        out.push((k, v));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some(out)
}

fn md5_hex(parts: &[&str]) -> String {
    let mut h = Md5::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            h.update(b":");
        }
        h.update(p.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The user a Digest `Authorization` answers for, when its response is right for `method`,
/// `nonce` and one of `users`.
fn check_digest<'a>(
    header: &str,
    method: &str,
    nonce: &str,
    users: &'a [(String, String)],
) -> Result<&'a str, String> {
    let params = digest_params(header).ok_or("not a Digest authorization")?;
    let get = |k: &str| {
        params
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| *v)
    };
    let user = get("username").ok_or("no username")?;
    let (Some(realm), Some(n), Some(uri), Some(response)) =
        (get("realm"), get("nonce"), get("uri"), get("response"))
    else {
        return Err(format!("user {user:?}: incomplete Digest authorization"));
    };
    if realm != REALM || !aegis_config::same_secret(n, nonce) {
        return Err(format!("user {user:?}: stale or foreign nonce"));
    }
    let Some((name, password)) = users.iter().find(|(u, _)| u == user) else {
        return Err(format!("unknown user {user:?}"));
    };
    let ha1 = md5_hex(&[name, REALM, password]);
    let ha2 = md5_hex(&[method, uri]);
    let want = match get("qop") {
        None => md5_hex(&[&ha1, nonce, &ha2]),
        Some("auth") => {
            let (Some(nc), Some(cnonce)) = (get("nc"), get("cnonce")) else {
                return Err(format!("user {user:?}: qop without nc or cnonce"));
            };
            md5_hex(&[&ha1, nonce, nc, cnonce, "auth", &ha2])
        }
        Some(_) => return Err(format!("user {user:?}: unsupported qop")),
    };
    if aegis_config::same_secret(&want, &response.to_ascii_lowercase()) {
        Ok(name)
    } else {
        Err(format!("user {user:?}: wrong password"))
    }
}

/// How RTP reaches the client.
enum Transport {
    /// Interleaved in the RTSP connection, on these channels.
    Tcp { rtp: u8, rtcp: u8 },
    /// UDP to the client's ports, from ours.
    Udp { rtp: UdpSocket, rtcp: UdpSocket },
}

/// A set-up session.
struct Session {
    id: String,
    stream: String,
    transport: Transport,
    packetizer: H264Packetizer,
    playing: bool,
    /// Waits for a keyframe before sending video (a join or a resync).
    need_key: bool,
    last_activity: Instant,
    /// Counted in `ctx.sessions` (released once).
    counted: bool,
    clients: Option<Gauge>,
    bytes: Counter,
    dropped: Counter,
    dropped_seen: u64,
}

struct Connection {
    sock: Box<dyn ClientStream>,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    ctx: Arc<Ctx>,
    nonce: String,
    failures: u32,
    /// The stream's feed, from DESCRIBE (or SETUP) on.
    sub: Option<PacketSubscription>,
    start: Option<Arc<StreamStart>>,
    session: Option<Session>,
    /// What goes to the client next: RTSP responses and interleaved frames, or (UDP) one
    /// access unit's datagrams end to end.
    out: Vec<u8>,
    /// Where each datagram in `out` ends (UDP).
    datagrams: Vec<usize>,
}

/// What a handled request asks of the connection.
enum Next {
    Continue,
    Close,
}

impl Connection {
    fn new(
        sock: Box<dyn ClientStream>,
        peer: SocketAddr,
        local: Option<SocketAddr>,
        ctx: Arc<Ctx>,
    ) -> Connection {
        Connection {
            sock,
            peer,
            local,
            ctx,
            nonce: format!("{:016x}", super::random_u64()),
            failures: 0,
            sub: None,
            start: None,
            session: None,
            out: Vec::with_capacity(64 * 1024),
            datagrams: Vec::with_capacity(64),
        }
    }

    fn end_session(&mut self) {
        if let Some(s) = &mut self.session
            && s.counted
        {
            s.counted = false;
            self.ctx.sessions.fetch_sub(1, Ordering::AcqRel);
            if let Some(g) = s.clients.take() {
                g.dec();
            }
        }
        self.session = None;
        self.sub = None;
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        let mut inbuf = Vec::with_capacity(4096);
        let mut stop = self.ctx.stop.clone();
        let mut sr = tokio::time::interval(SR_INTERVAL);
        let mut rtcp_in = [0u8; 1500];
        loop {
            let playing = self.session.as_ref().is_some_and(|s| s.playing);
            let udp_rtcp = match self.session.as_ref().map(|s| &s.transport) {
                Some(Transport::Udp { rtcp, .. }) => Some(rtcp),
                _ => None,
            };
            tokio::select! {
                _ = stop.changed() => return Ok(()),
                n = self.sock.read_buf(&mut inbuf) => {
                    if n? == 0 {
                        return Ok(());
                    }
                    loop {
                        match parse(&inbuf) {
                            Ok(Input::Partial) => break,
                            Ok(Input::Frame(len)) => {
                                inbuf.drain(..len);
                                if let Some(s) = &mut self.session {
                                    s.last_activity = Instant::now();
                                }
                            }
                            Ok(Input::Request(req, len)) => {
                                inbuf.drain(..len);
                                let next = self.handle(&req).await?;
                                self.flush().await?;
                                if let Next::Close = next {
                                    return Ok(());
                                }
                            }
                            Err(e) => {
                                tracing::debug!(peer = %self.peer, error = %e, "RTSP: refused");
                                let status = match e {
                                    ParseError::HeadTooLarge => "431 Request Header Fields Too Large",
                                    ParseError::BodyTooLarge => "413 Request Entity Too Large",
                                    ParseError::Malformed(_) => "400 Bad Request",
                                };
                                self.out.extend_from_slice(format!("RTSP/1.0 {status}\r\n\r\n").as_bytes());
                                self.flush().await?;
                                return Ok(());
                            }
                        }
                    }
                }
                msg = recv(&mut self.sub), if playing => {
                    match msg {
                        Some(m) => self.media(m).await?,
                        None => return Ok(()),
                    }
                }
                _ = sr.tick(), if playing => self.report().await?,
                r = recv_udp(udp_rtcp, &mut rtcp_in), if udp_rtcp.is_some() => {
                    if r.is_ok() && let Some(s) = &mut self.session {
                        s.last_activity = Instant::now();
                    }
                }
            }
            if let Some(s) = &self.session
                && matches!(s.transport, Transport::Udp { .. })
                && s.last_activity.elapsed() > SESSION_TIMEOUT
            {
                tracing::info!(peer = %self.peer, stream = %s.stream, "RTSP: UDP session timed out");
                return Ok(());
            }
        }
    }

    /// Writes what is queued in `out`, closing a client that does not read.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, self.sock.write_all(&self.out)).await {
            Ok(r) => r?,
            Err(_) => anyhow::bail!("the client stopped reading for {WRITE_TIMEOUT:?}"),
        }
        self.out.clear();
        Ok(())
    }

    fn respond(&mut self, req: &Request, status: &str, headers: &[(&str, String)], body: &str) {
        let mut r = format!("RTSP/1.0 {status}\r\n");
        if let Some(cseq) = req.header("CSeq") {
            r.push_str(&format!("CSeq: {cseq}\r\n"));
        }
        r.push_str("Server: aegis\r\n");
        for (k, v) in headers {
            r.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() {
            r.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        r.push_str("\r\n");
        r.push_str(body);
        self.out.extend_from_slice(r.as_bytes());
    }

    /// Whether the request is authenticated; answers 401 (new nonce) when not.
    fn authorized(&mut self, req: &Request) -> bool {
        if self.ctx.anonymous && self.ctx.users.is_empty() {
            return true;
        }
        let result = match req.header("Authorization") {
            None if self.ctx.anonymous => return true,
            None => Err(String::new()),
            Some(h) => check_digest(h, &req.method, &self.nonce, &self.ctx.users).map(|_| ()),
        };
        match result {
            Ok(()) => true,
            Err(why) => {
                if !why.is_empty() {
                    self.failures += 1;
                    tracing::warn!(peer = %self.peer, "RTSP: authentication failed: {why}");
                }
                self.nonce = format!("{:016x}", super::random_u64());
                let challenge = format!("Digest realm=\"{REALM}\", nonce=\"{}\"", self.nonce);
                self.respond(
                    req,
                    "401 Unauthorized",
                    &[("WWW-Authenticate", challenge)],
                    "",
                );
                false
            }
        }
    }

    async fn handle(&mut self, req: &Request) -> anyhow::Result<Next> {
        if req.header("CSeq").is_none() {
            self.respond(req, "400 Bad Request", &[], "");
            return Ok(Next::Close);
        }
        if req.method == "OPTIONS" {
            self.touch();
            self.respond(
                req,
                "200 OK",
                &[(
                    "Public",
                    "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER".into(),
                )],
                "",
            );
            return Ok(Next::Continue);
        }
        if !self.authorized(req) {
            return Ok(if self.failures >= MAX_AUTH_FAILURES {
                Next::Close
            } else {
                Next::Continue
            });
        }
        match req.method.as_str() {
            "DESCRIBE" => self.describe(req).await,
            "SETUP" => self.setup(req).await,
            "PLAY" => self.play(req),
            "GET_PARAMETER" | "SET_PARAMETER" => {
                if self.session_matches(req) {
                    self.touch();
                    self.respond(req, "200 OK", &[], "");
                }
                Ok(Next::Continue)
            }
            "TEARDOWN" => {
                if self.session_matches(req) {
                    self.respond(req, "200 OK", &[], "");
                    return Ok(Next::Close);
                }
                Ok(Next::Continue)
            }
            _ => {
                self.respond(
                    req,
                    "405 Method Not Allowed",
                    &[(
                        "Allow",
                        "OPTIONS, DESCRIBE, SETUP, PLAY, TEARDOWN, GET_PARAMETER".into(),
                    )],
                    "",
                );
                Ok(Next::Continue)
            }
        }
    }

    fn touch(&mut self) {
        if let Some(s) = &mut self.session {
            s.last_activity = Instant::now();
        }
    }

    /// A request naming a session names ours; answers 454 when not.
    fn session_matches(&mut self, req: &Request) -> bool {
        let named = req
            .header("Session")
            .map(|s| s.split(';').next().unwrap_or_default().trim());
        let ok = match (&self.session, named) {
            (Some(s), Some(n)) => s.id == n,
            (None, None) => true,
            _ => false,
        };
        if !ok {
            self.respond(req, "454 Session Not Found", &[], "");
        }
        ok
    }

    /// The stream the URI names, when it runs and is restreamed; answers 404 when not.
    fn requested_stream(&mut self, req: &Request) -> Option<String> {
        let found = stream_of(&req.uri)
            .map(|(s, _)| s.to_owned())
            .filter(|s| (self.ctx.restreamed)(s));
        if found.is_none() {
            self.respond(req, "404 Not Found", &[], "");
        }
        found
    }

    /// Joins `stream`'s feed (once per connection) and waits for its parameters.
    async fn join(&mut self, stream: &str) -> Option<Arc<StreamStart>> {
        if self.sub.as_ref().is_some_and(|s| s.stream() != stream) {
            self.sub = None;
            self.start = None;
        }
        if self.sub.is_none() {
            self.sub = self.ctx.hub.subscribe_packets(stream, CLIENT_QUEUE).ok();
        }
        let sub = self.sub.as_mut()?;
        if self.start.is_none() {
            let deadline = tokio::time::Instant::now() + PARAMS_WAIT;
            while let Ok(Some(m)) = tokio::time::timeout_at(deadline, sub.rx.recv()).await {
                if let OutMsg::Start(s) = m {
                    self.start = Some(s);
                    break;
                }
            }
        }
        self.start.clone()
    }

    fn base_url(&self, req: &Request, stream: &str) -> String {
        let host = after_scheme(&req.uri)
            .and_then(|r| r.split('/').next())
            .map(str::to_owned)
            .or_else(|| self.local.map(|a| a.to_string()))
            .unwrap_or_default();
        let scheme = if self.ctx.tls.is_some() {
            "rtsps"
        } else {
            "rtsp"
        };
        format!("{scheme}://{host}/{stream}/")
    }

    async fn describe(&mut self, req: &Request) -> anyhow::Result<Next> {
        let Some(stream) = self.requested_stream(req) else {
            return Ok(Next::Continue);
        };
        let Some(start) = self.join(&stream).await else {
            self.respond(req, "503 Service Unavailable", &[], "");
            return Ok(Next::Continue);
        };
        let ip = self
            .local
            .map(|a| a.ip().to_string())
            .unwrap_or_else(|| "0.0.0.0".into());
        let body = rtp::sdp(&stream, &start.avc, super::random_u64() >> 1, &ip);
        let base = self.base_url(req, &stream);
        self.respond(
            req,
            "200 OK",
            &[
                ("Content-Type", "application/sdp".into()),
                ("Content-Base", base),
            ],
            &body,
        );
        Ok(Next::Continue)
    }

    async fn setup(&mut self, req: &Request) -> anyhow::Result<Next> {
        if self.session.is_some() {
            // One stream (one track) per connection.
            self.respond(req, "459 Aggregate Operation Not Allowed", &[], "");
            return Ok(Next::Continue);
        }
        let Some(stream) = self.requested_stream(req) else {
            return Ok(Next::Continue);
        };
        if self.join(&stream).await.is_none() {
            self.respond(req, "503 Service Unavailable", &[], "");
            return Ok(Next::Continue);
        }
        let Some(spec) = req.header("Transport") else {
            self.respond(req, "461 Unsupported Transport", &[], "");
            return Ok(Next::Continue);
        };
        let ssrc = super::random_u64() as u32;
        let Some((transport, reply)) = self.transport(spec, ssrc).await else {
            self.respond(req, "461 Unsupported Transport", &[], "");
            return Ok(Next::Continue);
        };
        if self.ctx.sessions.fetch_add(1, Ordering::AcqRel) >= self.ctx.max_sessions {
            self.ctx.sessions.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(peer = %self.peer, %stream, "RTSP: session limit reached");
            self.respond(req, "453 Not Enough Bandwidth", &[], "");
            return Ok(Next::Continue);
        }
        let labels = OutputLabels {
            stream: stream.clone(),
            output: "rtsp".into(),
        };
        let id = format!("{:016X}", super::random_u64());
        let r = super::random_u64();
        self.session = Some(Session {
            id: id.clone(),
            stream: stream.clone(),
            transport,
            packetizer: H264Packetizer::new(ssrc, r as u16, (r >> 16) as u32),
            playing: false,
            need_key: true,
            last_activity: Instant::now(),
            counted: true,
            clients: None,
            bytes: self.ctx.metrics.output_bytes.get_or_create_owned(&labels),
            dropped: self.ctx.metrics.output_dropped.get_or_create_owned(&labels),
            dropped_seen: 0,
        });
        tracing::info!(peer = %self.peer, %stream, "RTSP session set up");
        self.respond(
            req,
            "200 OK",
            &[
                ("Transport", reply),
                (
                    "Session",
                    format!("{id};timeout={}", SESSION_TIMEOUT.as_secs()),
                ),
            ],
            "",
        );
        Ok(Next::Continue)
    }

    /// The first transport of the client's list this server offers: the transport and the
    /// `Transport` header to answer with.
    async fn transport(&self, spec: &str, ssrc: u32) -> Option<(Transport, String)> {
        for alt in spec.split(',') {
            let parts: Vec<&str> = alt.split(';').map(str::trim).collect();
            let param = |k: &str| {
                parts
                    .iter()
                    .find_map(|p| p.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            };
            let pair = |v: &str| -> Option<(u16, u16)> {
                let (a, b) = v.split_once('-').unwrap_or((v, ""));
                let a: u16 = a.parse().ok()?;
                let b: u16 = if b.is_empty() {
                    a.checked_add(1)?
                } else {
                    b.parse().ok()?
                };
                Some((a, b))
            };
            match parts.first().copied() {
                Some("RTP/AVP/TCP") => {
                    let (rtp, rtcp) = match param("interleaved") {
                        Some(v) => pair(v)?,
                        None => (0, 1),
                    };
                    let (Ok(rtp), Ok(rtcp)) = (u8::try_from(rtp), u8::try_from(rtcp)) else {
                        continue;
                    };
                    return Some((
                        Transport::Tcp { rtp, rtcp },
                        format!("RTP/AVP/TCP;unicast;interleaved={rtp}-{rtcp};ssrc={ssrc:08X}"),
                    ));
                }
                Some("RTP/AVP" | "RTP/AVP/UDP") if self.ctx.udp => {
                    if parts.iter().any(|p| p.eq_ignore_ascii_case("multicast")) {
                        continue;
                    }
                    let (crtp, crtcp) = pair(param("client_port")?)?;
                    if crtp == 0 || crtcp == 0 {
                        continue;
                    }
                    // RTP goes only to the peer of this connection (never a third host).
                    let ip: IpAddr = self.peer.ip();
                    let local = self.local?.ip();
                    let rtp = UdpSocket::bind((local, 0)).await.ok()?;
                    let rtcp = UdpSocket::bind((local, 0)).await.ok()?;
                    rtp.connect((ip, crtp)).await.ok()?;
                    rtcp.connect((ip, crtcp)).await.ok()?;
                    let (srtp, srtcp) = (
                        rtp.local_addr().ok()?.port(),
                        rtcp.local_addr().ok()?.port(),
                    );
                    return Some((
                        Transport::Udp { rtp, rtcp },
                        format!(
                            "RTP/AVP;unicast;client_port={crtp}-{crtcp};server_port={srtp}-{srtcp};ssrc={ssrc:08X}"
                        ),
                    ));
                }
                _ => continue,
            }
        }
        None
    }

    fn play(&mut self, req: &Request) -> anyhow::Result<Next> {
        if self.session.is_none() {
            self.respond(req, "455 Method Not Valid in This State", &[], "");
            return Ok(Next::Continue);
        }
        if !self.session_matches(req) {
            return Ok(Next::Continue);
        }
        // Start from a fresh keyframe: what queued since DESCRIBE is stale.
        if let Some(sub) = &mut self.sub {
            while let Ok(m) = sub.rx.try_recv() {
                if let OutMsg::Start(s) = m {
                    self.start = Some(s);
                }
            }
            sub.request_keyframe();
        }
        let base = {
            let s = self.session.as_ref().expect("checked above");
            self.base_url(req, &s.stream)
        };
        let s = self.session.as_mut().expect("checked above");
        let info = format!(
            "url={base}trackID=0;seq={};rtptime={}",
            s.packetizer.next_seq(),
            s.packetizer.rtp_time(0)
        );
        if !s.playing {
            s.playing = true;
            s.need_key = true;
            let g = self
                .ctx
                .metrics
                .output_clients
                .get_or_create_owned(&OutputLabels {
                    stream: s.stream.clone(),
                    output: "rtsp".into(),
                });
            g.inc();
            s.clients = Some(g);
            tracing::info!(peer = %self.peer, stream = %s.stream, "RTSP: playing");
        }
        let id = s.id.clone();
        self.respond(
            req,
            "200 OK",
            &[
                ("Range", "npt=0.000-".into()),
                ("RTP-Info", info),
                (
                    "Session",
                    format!("{id};timeout={}", SESSION_TIMEOUT.as_secs()),
                ),
            ],
            "",
        );
        Ok(Next::Continue)
    }

    /// One message of the feed while playing.
    async fn media(&mut self, m: OutMsg) -> anyhow::Result<()> {
        let (Some(s), Some(sub)) = (&mut self.session, &self.sub) else {
            return Ok(());
        };
        let dropped = sub.dropped.load(Ordering::Relaxed);
        if dropped > s.dropped_seen {
            s.dropped.inc_by(dropped - s.dropped_seen);
            s.dropped_seen = dropped;
        }
        let p = match m {
            OutMsg::Start(start) => {
                // A restart (new size, a reconnected camera): a keyframe with the new
                // parameters in band follows.
                self.start = Some(start);
                s.need_key = true;
                return Ok(());
            }
            OutMsg::Packet(p) => p,
        };
        if s.need_key && !p.key {
            return Ok(());
        }
        s.need_key = false;
        let params = self.start.as_ref().map(|st| &st.avc);
        let mut sent = 0u64;
        match &s.transport {
            Transport::Tcp { rtp: ch, .. } => {
                let out = &mut self.out;
                s.packetizer.packetize(&p.data, p.pts, params, |pkt| {
                    out.push(b'$');
                    out.push(*ch);
                    out.extend_from_slice(&(pkt.len() as u16).to_be_bytes());
                    out.extend_from_slice(pkt);
                    sent += pkt.len() as u64;
                });
            }
            Transport::Udp { rtp, .. } => {
                // The access unit's datagrams, end to end in one reused buffer.
                let (buf, ends) = (&mut self.out, &mut self.datagrams);
                ends.clear();
                s.packetizer.packetize(&p.data, p.pts, params, |pkt| {
                    buf.extend_from_slice(pkt);
                    ends.push(buf.len());
                });
                let mut at = 0;
                for &end in ends.iter() {
                    // A send that fails (ICMP unreachable: the player went away) is not
                    // retried; the session times out.
                    if rtp.send(&buf[at..end]).await.is_ok() {
                        sent += (end - at) as u64;
                    }
                    at = end;
                }
                buf.clear();
            }
        }
        s.bytes.inc_by(sent);
        self.flush().await
    }

    async fn report(&mut self) -> anyhow::Result<()> {
        let Some(s) = &self.session else {
            return Ok(());
        };
        let Some(sr) = s.packetizer.sender_report(SystemTime::now()) else {
            return Ok(());
        };
        match &s.transport {
            Transport::Tcp { rtcp, .. } => {
                self.out.push(b'$');
                self.out.push(*rtcp);
                self.out.extend_from_slice(&(sr.len() as u16).to_be_bytes());
                self.out.extend_from_slice(&sr);
                self.flush().await?;
            }
            Transport::Udp { rtcp, .. } => {
                let _ = rtcp.send(&sr).await;
            }
        }
        Ok(())
    }
}

async fn recv(sub: &mut Option<PacketSubscription>) -> Option<OutMsg> {
    match sub {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_udp(sock: Option<&UdpSocket>, buf: &mut [u8]) -> std::io::Result<usize> {
    match sock {
        Some(s) => s.recv(buf).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly_and_within_limits() {
        let r = b"OPTIONS rtsp://h/cam0 RTSP/1.0\r\nCSeq: 1\r\n\r\nDESCRIBE";
        match parse(r).unwrap() {
            Input::Request(req, n) => {
                assert_eq!(
                    (req.method.as_str(), req.header("cseq")),
                    ("OPTIONS", Some("1"))
                );
                assert_eq!(&r[n..], b"DESCRIBE");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(b"DESCRIBE rtsp://h/x RTSP/1.0\r\nCSeq: 2\r\n").unwrap(),
            Input::Partial
        ));
        // A body is waited for; a large one is refused.
        let with_body =
            b"SET_PARAMETER rtsp://h/x RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 5\r\n\r\nab";
        assert!(matches!(parse(with_body).unwrap(), Input::Partial));
        assert!(matches!(
            parse(b"X rtsp://h/x RTSP/1.0\r\nCSeq: 3\r\nContent-Length: 999999\r\n\r\n"),
            Err(ParseError::BodyTooLarge)
        ));
        // An endless head, bad lines, another protocol.
        assert!(matches!(
            parse(&vec![b'A'; MAX_HEAD + 1]),
            Err(ParseError::HeadTooLarge)
        ));
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"OPTIONS rtsp://h/x RTSP/1.0\r\nno colon\r\n\r\n",
            b"OPTIONS rtsp://h/x  RTSP/1.0\r\n\r\n",
            b"options rtsp://h/x RTSP/1.0\r\n\r\n",
            b"OPTIONS rtsp://h/x RTSP/1.0\r\nCSeq: 1\r\nContent-Length: -1\r\n\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ParseError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Interleaved frames from the client (its RTCP) are skipped whole.
        assert!(matches!(
            parse(&[b'$', 1, 0, 3, 9, 9]).unwrap(),
            Input::Partial
        ));
        assert!(matches!(
            parse(&[b'$', 1, 0, 2, 9, 9]).unwrap(),
            Input::Frame(6)
        ));
    }

    #[test]
    fn uris_name_one_stream_and_only_its_track() {
        assert_eq!(
            stream_of("rtsp://10.0.0.2:8554/cam0"),
            Some(("cam0", false))
        );
        assert_eq!(stream_of("rtsp://h/cam0/"), Some(("cam0", false)));
        assert_eq!(stream_of("rtsp://h/cam0/trackID=0"), Some(("cam0", true)));
        assert_eq!(stream_of("rtsp://h/cam0?x=1"), Some(("cam0", false)));
        assert_eq!(stream_of("rtsp://h/cam0/trackID=1"), None);
        assert_eq!(stream_of("rtsp://h/cam0/a/b"), None);
        assert_eq!(stream_of("rtsp://h/"), None);
        assert_eq!(stream_of("*"), None);
        assert_eq!(stream_of("http://h/cam0"), None);
        assert_eq!(stream_of("RTSPS://h/cam0/trackID=0"), Some(("cam0", true)));
        assert_eq!(stream_of("rtspx://h/cam0"), None);
    }

    #[test]
    fn digest_accepts_the_right_password_only() {
        let users = vec![("vms".to_string(), "correct horse".to_string())];
        let nonce = "0123456789abcdef";
        let uri = "rtsp://127.0.0.1:8554/cam0";
        let ha1 = md5_hex(&["vms", REALM, "correct horse"]);
        let ha2 = md5_hex(&["DESCRIBE", uri]);
        let good = md5_hex(&[&ha1, nonce, &ha2]);
        let header = |resp: &str, n: &str, user: &str| {
            format!(
                "Digest username=\"{user}\", realm=\"{REALM}\", nonce=\"{n}\", uri=\"{uri}\", response=\"{resp}\""
            )
        };
        assert_eq!(
            check_digest(&header(&good, nonce, "vms"), "DESCRIBE", nonce, &users),
            Ok("vms")
        );
        // Upper-case hex is the same response.
        assert!(
            check_digest(
                &header(&good.to_uppercase(), nonce, "vms"),
                "DESCRIBE",
                nonce,
                &users
            )
            .is_ok()
        );
        // Another method, nonce, user or password fails, and the message never holds it.
        let e = check_digest(&header(&good, nonce, "vms"), "PLAY", nonce, &users).unwrap_err();
        assert!(e.contains("wrong password") && !e.contains("horse"), "{e}");
        assert!(check_digest(&header(&good, "ffff", "vms"), "DESCRIBE", nonce, &users).is_err());
        assert!(check_digest(&header(&good, nonce, "admin"), "DESCRIBE", nonce, &users).is_err());
        let wrong = md5_hex(&[&md5_hex(&["vms", REALM, "wrong"]), nonce, &ha2]);
        assert!(check_digest(&header(&wrong, nonce, "vms"), "DESCRIBE", nonce, &users).is_err());
        assert!(check_digest("Basic dm1zOmNvcnJlY3QgaG9yc2U=", "DESCRIBE", nonce, &users).is_err());
        // qop=auth as RFC 2617 computes it.
        let with_qop = md5_hex(&[&ha1, nonce, "00000001", "c0ffee", "auth", &ha2]);
        let h = format!(
            "Digest username=\"vms\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{uri}\", qop=auth, nc=00000001, cnonce=\"c0ffee\", response=\"{with_qop}\""
        );
        assert_eq!(check_digest(&h, "DESCRIBE", nonce, &users), Ok("vms"));
    }
}
