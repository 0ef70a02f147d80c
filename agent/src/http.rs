//! The agent's one HTTP client, for talking to a running agent's own local endpoints
//! (`aegis workflow apply` posting to `/workflow`, the runtime scraping its `/metrics`).
//!
//! Why hand-written rather than a crate: both callers talk to our own axum server over
//! loopback with one request per connection, so HTTP/1.0 with `Connection: close` semantics
//! (the server closes after the response, the body ends at `Content-Length` or at the close)
//! is all that is needed; a client crate would bring a second HTTP stack and TLS choices to a
//! binary that serves HTTP but never fetches from the network. What it must not do: follow
//! redirects, keep connections alive, or be pointed at anything but a trusted local agent.
//!
//! Every call is bounded: a connect timeout, one deadline for the whole exchange (a server
//! that trickles bytes cannot hold the caller past it) and a body size limit.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use tokio_rustls::rustls;

/// The bounds of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// How long connecting may take.
    pub connect: Duration,
    /// How long the whole exchange may take once connected (sending and receiving).
    pub total: Duration,
    /// The largest body accepted, in bytes.
    pub max_body: usize,
}

impl Limits {
    /// Connect within 5 s, whole exchange within 120 s (applying a workflow includes its
    /// health checks), bodies up to 16 MiB (receipts, the metrics page).
    pub const DEFAULT: Limits = Limits {
        connect: Duration::from_secs(5),
        total: Duration::from_secs(120),
        max_body: 16 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 << 10;

/// A response: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code (`200`, `404`, …).
    pub status: u16,
    /// The body, exactly as sent.
    pub body: Vec<u8>,
    /// The headers, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request got no usable response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Nothing accepted the connection in time.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Sending or receiving failed.
    #[error("{addr}: {source}")]
    Io {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The exchange did not finish within [`Limits::total`].
    #[error("{addr}: no complete response within {limit:?}")]
    TimedOut {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        limit: Duration,
    },
    /// The response is not HTTP/1.x, or its head is cut short.
    #[error("{addr}: malformed HTTP response: {what}")]
    Malformed {
        /// Where.
        addr: SocketAddr,
        /// What is wrong.
        what: String,
    },
    /// The body (or the head) exceeds the limit.
    #[error("{addr}: response larger than {limit} bytes")]
    TooLarge {
        /// Where.
        addr: SocketAddr,
        /// The limit.
        limit: usize,
    },
    /// The status is not 200 where 200 was required ([`get_text`]).
    #[error("{method} {path} at {addr}: status {status}")]
    Status {
        /// Where.
        addr: SocketAddr,
        /// The request's method.
        method: &'static str,
        /// The request's path.
        path: String,
        /// The status received.
        status: u16,
    },
}

/// `GET path` at `addr`.
pub fn get(addr: SocketAddr, path: &str, limits: &Limits) -> Result<Response, HttpError> {
    request(addr, "GET", path, &[], &[], limits)
}

/// `GET path` at `addr` with extra `headers` (a session cookie).
pub fn get_with(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    limits: &Limits,
) -> Result<Response, HttpError> {
    request(addr, "GET", path, headers, &[], limits)
}

/// `POST path` at `addr` with `body` and extra `headers` (`Content-Length` is added).
pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: &Limits,
) -> Result<Response, HttpError> {
    request(addr, "POST", path, headers, body, limits)
}

/// `GET path` at `addr` with [`Limits::DEFAULT`], from async code (the exchange runs on
/// tokio's blocking pool): the body as text when the status is 200, else
/// [`HttpError::Status`].
pub async fn get_text(addr: SocketAddr, path: &str) -> Result<String, HttpError> {
    let owned = path.to_string();
    let response = tokio::task::spawn_blocking(move || get(addr, &owned, &Limits::DEFAULT))
        .await
        .map_err(|e| HttpError::Io {
            addr,
            source: std::io::Error::other(e),
        })??;
    if response.status != 200 {
        return Err(HttpError::Status {
            addr,
            method: "GET",
            path: path.to_string(),
            status: response.status,
        });
    }
    Ok(response.text())
}

fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: &Limits,
) -> Result<Response, HttpError> {
    let s = TcpStream::connect_timeout(&addr, limits.connect)
        .map_err(|source| HttpError::Connect { addr, source })?;
    exchange(s, addr, method, path, headers, body, limits)
}

/// `POST path` at `addr` over TLS, accepting only the server certificate whose SHA-256
/// fingerprint is `pin` (the device certificate the caller read from disk): how `aegis
/// workflow apply` reaches an agent that serves HTTPS.
pub fn post_pinned(
    addr: SocketAddr,
    pin: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: &Limits,
) -> Result<Response, HttpError> {
    let tcp = TcpStream::connect_timeout(&addr, limits.connect)
        .map_err(|source| HttpError::Connect { addr, source })?;
    let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
    let conn =
        rustls::ClientConnection::new(crate::web::tls::pinned_client(pin), name).map_err(|e| {
            HttpError::Io {
                addr,
                source: std::io::Error::other(e),
            }
        })?;
    exchange(
        rustls::StreamOwned::new(conn, tcp),
        addr,
        "POST",
        path,
        headers,
        body,
        limits,
    )
}

/// A connection whose socket the deadline can set timeouts on.
trait Conn: Read + Write {
    fn socket(&self) -> &TcpStream;
}

impl Conn for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl Conn for rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }
}

/// One request and its response on `s`, all within `limits.total`.
fn exchange(
    mut s: impl Conn,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    limits: &Limits,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + limits.total;
    let io = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => HttpError::TimedOut {
            addr,
            limit: limits.total,
        },
        _ => HttpError::Io { addr, source },
    };
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "POST" || !body.is_empty() {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.socket()
        .set_write_timeout(Some(limits.total))
        .map_err(io)?;
    s.socket()
        .set_read_timeout(Some(limits.total))
        .map_err(io)?;
    s.write_all(head.as_bytes()).map_err(io)?;
    s.write_all(body).map_err(io)?;
    s.flush().map_err(io)?;
    let mut reader = Deadline {
        stream: s,
        deadline,
    };
    read_response(&mut reader, limits.max_body).map_err(|e| match e {
        ReadError::Io(source) => io(source),
        ReadError::Malformed(what) => HttpError::Malformed { addr, what },
        ReadError::TooLarge(limit) => HttpError::TooLarge { addr, limit },
    })
}

/// A stream whose every read ends by one deadline.
struct Deadline<S> {
    stream: S,
    deadline: Instant,
}

impl<S: Conn> Read for Deadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.socket().set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

enum ReadError {
    Io(std::io::Error),
    Malformed(String),
    TooLarge(usize),
}

/// Reads a whole response from `r`: the head, then `Content-Length` bytes (or up to the
/// close when the header is absent), at most `max_body` of them.
fn read_response(r: &mut impl Read, max_body: usize) -> Result<Response, ReadError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(ReadError::TooLarge(MAX_HEAD));
        }
        let n = r.read(&mut chunk).map_err(ReadError::Io)?;
        if n == 0 {
            return Err(ReadError::Malformed(format!(
                "the connection closed after {} bytes, before the end of the head",
                buf.len()
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| ReadError::Malformed("the head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.split(' ').nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .filter(|code| (100..=999).contains(code))
        .ok_or_else(|| ReadError::Malformed(format!("status line {status_line:?}")))?;
    let mut length = None;
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed(format!("header line {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        if name.trim().eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .trim()
                .parse()
                .map_err(|_| ReadError::Malformed(format!("Content-Length {:?}", value.trim())))?;
            length = Some(n);
        }
    }
    if length.is_some_and(|n| n > max_body) {
        return Err(ReadError::TooLarge(max_body));
    }
    let mut body = buf.split_off(head_end + 4);
    if body.len() > max_body {
        return Err(ReadError::TooLarge(max_body));
    }
    let want = length.unwrap_or(max_body);
    while body.len() < want {
        let n = r.read(&mut chunk).map_err(ReadError::Io)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
        if body.len() > max_body {
            return Err(ReadError::TooLarge(max_body));
        }
    }
    match length {
        Some(n) if body.len() < n => Err(ReadError::Malformed(format!(
            "the connection closed after {} of {n} body bytes",
            body.len()
        ))),
        Some(n) => {
            body.truncate(n);
            Ok(Response {
                status,
                body,
                headers,
            })
        }
        None => {
            // No length: the body ends at the close; one more byte than allowed is refused.
            if body.len() >= max_body {
                let n = r.read(&mut chunk[..1]).map_err(ReadError::Io)?;
                if n > 0 {
                    return Err(ReadError::TooLarge(max_body));
                }
            }
            Ok(Response {
                status,
                body,
                headers,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server that reads the request head (and a `Content-Length` body),
    /// then writes `reply` in pieces with `pause` between them, and hands back the request.
    fn serve(reply: Vec<u8>, pause: Duration) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let text = String::from_utf8_lossy(&req).into_owned();
            let len: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            while req.len() < head_end + len {
                let n = s.read(&mut b).unwrap();
                req.extend_from_slice(&b[..n]);
            }
            for piece in reply.chunks(16) {
                if s.write_all(piece).is_err() {
                    break;
                }
                std::thread::sleep(pause);
            }
            String::from_utf8_lossy(&req).into_owned()
        });
        (addr, t)
    }

    fn quick(total_ms: u64, max_body: usize) -> Limits {
        Limits {
            connect: Duration::from_secs(2),
            total: Duration::from_millis(total_ms),
            max_body,
        }
    }

    #[test]
    fn post_sends_headers_and_body_and_reads_status_and_body() {
        let (addr, t) = serve(
            b"HTTP/1.1 422 Unprocessable\r\nContent-Length: 11\r\n\r\n{\"a\":true}\nTRAILING"
                .to_vec(),
            Duration::ZERO,
        );
        let r = post(
            addr,
            "/workflow",
            &[("Authorization", "Bearer t")],
            b"doc",
            &Limits::DEFAULT,
        )
        .unwrap();
        assert_eq!(r.status, 422);
        // The body ends at Content-Length.
        assert_eq!(r.text(), "{\"a\":true}\n");
        let req = t.join().unwrap();
        assert!(req.starts_with("POST /workflow HTTP/1.0\r\n"), "{req}");
        assert!(req.contains("\r\nAuthorization: Bearer t\r\n"), "{req}");
        assert!(req.contains("\r\nContent-Length: 3\r\n"), "{req}");
        assert!(req.ends_with("\r\n\r\ndoc"), "{req}");
    }

    #[test]
    fn a_body_without_length_ends_at_the_close() {
        let (addr, t) = serve(
            b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nmetric 1\n".to_vec(),
            Duration::ZERO,
        );
        let r = get(addr, "/metrics", &Limits::DEFAULT).unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "metric 1\n"));
        assert!(t.join().unwrap().starts_with("GET /metrics HTTP/1.0\r\n"));
    }

    #[test]
    fn bodies_over_the_limit_are_refused_with_or_without_length() {
        for reply in [
            &b"HTTP/1.0 200 OK\r\nContent-Length: 11\r\n\r\n0123456789a"[..],
            &b"HTTP/1.0 200 OK\r\n\r\n0123456789a"[..],
        ] {
            let (addr, t) = serve(reply.to_vec(), Duration::ZERO);
            let e = get(addr, "/", &quick(5000, 10)).unwrap_err();
            assert!(matches!(e, HttpError::TooLarge { limit: 10, .. }), "{e:?}");
            t.join().unwrap();
        }
        // Exactly at the limit is fine.
        let (addr, t) = serve(
            b"HTTP/1.0 200 OK\r\n\r\n0123456789".to_vec(),
            Duration::ZERO,
        );
        assert_eq!(get(addr, "/", &quick(5000, 10)).unwrap().body.len(), 10);
        t.join().unwrap();
    }

    #[test]
    fn a_trickling_server_is_cut_off_at_the_deadline() {
        let reply = [b"HTTP/1.0 200 OK\r\n\r\n".as_slice(), &[b'x'; 400]].concat();
        let (addr, t) = serve(reply, Duration::from_millis(50));
        let started = Instant::now();
        let e = get(addr, "/", &quick(300, 1 << 20)).unwrap_err();
        assert!(matches!(e, HttpError::TimedOut { .. }), "{e:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        t.join().unwrap();
    }

    #[test]
    fn malformed_and_cut_short_responses_are_errors() {
        for reply in [
            &b"SSH-2.0-OpenSSH\r\n\r\n"[..],
            &b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nab"[..],
            &b"HTTP/1.0 200 OK\r\nContent-"[..],
            &b"HTTP/1.0 200 OK\r\nContent-Length: lots\r\n\r\n"[..],
        ] {
            let (addr, t) = serve(reply.to_vec(), Duration::ZERO);
            let e = get(addr, "/", &Limits::DEFAULT).unwrap_err();
            assert!(matches!(e, HttpError::Malformed { .. }), "{e:?}");
            t.join().unwrap();
        }
    }

    #[test]
    fn nothing_listening_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let e = get(addr, "/", &Limits::DEFAULT).unwrap_err();
        assert!(matches!(e, HttpError::Connect { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn get_text_requires_200() {
        let (addr, t) = serve(b"HTTP/1.0 200 OK\r\n\r\nok".to_vec(), Duration::ZERO);
        assert_eq!(get_text(addr, "/healthz").await.unwrap(), "ok");
        t.join().unwrap();
        let (addr, t) = serve(b"HTTP/1.0 503 Busy\r\n\r\nno".to_vec(), Duration::ZERO);
        let e = get_text(addr, "/healthz").await.unwrap_err();
        assert!(matches!(e, HttpError::Status { status: 503, .. }), "{e:?}");
        t.join().unwrap();
    }
}
