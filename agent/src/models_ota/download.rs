//! The resumable, verified download of a model bundle into a staging directory.
//!
//! Why it exists: a model bundle is announced by a signed manifest that lists every file
//! with its size and SHA-256 (`aegis_ota::model::VerifiedManifest`); its bytes come over
//! HTTP or HTTPS from the announced URL, on links that drop. This module fetches each file
//! from `<base_url>/<path>` into `<staging>/<path>.part`, resumes a part left by an earlier
//! attempt with a `Range` request, hashes as it streams (a resumed part is hashed first),
//! and renames the part into place only when it is complete and its digest matches.
//!
//! What it must not do:
//! - connect anywhere the policy's host allow-list does not name: every URL, the announced
//!   one and each redirect target, is checked *before* its request is sent;
//! - write more than the manifest says: a file never grows past its listed size (a server
//!   sending more is refused and the part removed), and the bundle's total must fit the
//!   staging budget before anything is fetched;
//! - go through a proxy from the environment, or drop from HTTPS to HTTP on a redirect;
//! - install, load or run anything: the caller moves a fully staged bundle on.
//!
//! The client is `ureq` 3 on rustls with ring (no OpenSSL, the TLS stack and crypto
//! provider the agent already uses for MQTT and its web page): a small, maintained blocking
//! HTTP/1.1 client whose streaming body reader fits "read a chunk, hash it, write it", and
//! whose redirects can be switched off so that this module follows them itself, checking
//! each hop. It is blocking: the agent calls [`download_bundle`] from
//! `tokio::task::spawn_blocking`. The agent's own `crate::http` client is loopback-only by
//! design and is not stretched for the internet.

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use ureq::http::{Uri, header};
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

use aegis_ota::model::BundleFile;
use aegis_ota::staging::{self, StagingError};

/// Most redirects followed for one file (each target checked against the policy).
pub const MAX_REDIRECTS: usize = 5;
/// Suffix of a file being staged (the MQTT transfer uses the same one).
pub use aegis_ota::model_chunks::PART_SUFFIX;
/// Bytes read, hashed and written at a time (and so between progress reports).
const CHUNK: usize = 64 * 1024;

/// How long each phase of a request may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadTimeouts {
    /// Resolving the host and opening the connection (TLS handshake included).
    pub connect: Duration,
    /// From the request sent to the response headers received.
    pub response: Duration,
    /// The longest wait for the next bytes of a body: a stalled transfer fails after this
    /// (there is no limit on a whole file, which may be gigabytes on a slow link).
    pub stall: Duration,
}

impl Default for DownloadTimeouts {
    fn default() -> DownloadTimeouts {
        DownloadTimeouts {
            connect: Duration::from_secs(15),
            response: Duration::from_secs(30),
            stall: Duration::from_secs(60),
        }
    }
}

/// Which certificate authorities an HTTPS server's certificate may chain to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsRoots {
    /// Mozilla's root programme (compiled in, so independent of the device's OS store).
    Mozilla,
    /// Only these DER certificates (a fleet's own CA). Empty: no HTTPS server is trusted.
    Certificates(Vec<Vec<u8>>),
}

/// What a download may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    /// Hosts that may be connected to, with the rules of the workflow policy's
    /// `source_hosts`: `*` allows any; an IP address entry (IPv6 with or without brackets)
    /// matches that address; any other entry matches a DNS name without regard to case. A
    /// name never matches an address entry, nor an address a name entry. Ports are not
    /// compared.
    pub allowed_hosts: Vec<String>,
    /// Staging budget: the bundle's files together may not exceed this many bytes.
    pub max_bytes: u64,
    /// Refuse plain HTTP (the files are verified against the signed manifest either way;
    /// HTTPS adds confidentiality and keeps a path attacker from wasting the budget).
    pub https_only: bool,
    /// Timeouts.
    pub timeouts: DownloadTimeouts,
    /// Trusted certificate authorities for HTTPS.
    pub roots: TlsRoots,
}

/// A progress report: after each chunk written, and once per file when it is done.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress<'a> {
    /// The bundle path of the file being fetched.
    pub file: &'a str,
    /// Bytes of the bundle on disk and verified so far (resumed parts included).
    pub done: u64,
    /// Bytes of the whole bundle.
    pub total: u64,
    /// `done` as a percentage of `total` (100 for an empty bundle).
    pub percent: f64,
    /// Time left at the rate seen so far in this call; `None` before any byte arrived.
    pub eta: Option<Duration>,
}

/// Why a bundle download failed. A part left on disk by an interrupted transfer is kept
/// for the next attempt to resume; a part that can never become the file is removed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// A URL is not an `http`/`https` URL this downloader accepts.
    #[error("URL {url:?} is refused: {reason}")]
    BadUrl {
        /// The URL (query removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A URL's host is not in the policy's allow-list; nothing was sent to it.
    #[error("host {host:?} of {url:?} is not in the device's download allow-list")]
    HostNotAllowed {
        /// The URL (query removed).
        url: String,
        /// The host.
        host: String,
    },
    /// Plain HTTP where the policy requires HTTPS (announced URL or redirect target).
    #[error("{url:?} is plain HTTP and the policy requires HTTPS")]
    HttpsRequired {
        /// The URL (query removed).
        url: String,
    },
    /// A redirect that cannot be followed (no or unreadable `Location`, or HTTPS to HTTP).
    #[error("redirect from {url:?} refused: {reason}")]
    BadRedirect {
        /// The URL that answered with the redirect (query removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// More than [`MAX_REDIRECTS`] redirects.
    #[error("more than {MAX_REDIRECTS} redirects starting from {url:?}")]
    TooManyRedirects {
        /// The file's URL (query removed).
        url: String,
    },
    /// The bundle does not fit the staging budget; nothing was fetched.
    #[error("bundle is {total} bytes, over the staging budget of {max} bytes")]
    OverBudget {
        /// The bundle's size (saturated at `u64::MAX`).
        total: u64,
        /// The budget.
        max: u64,
    },
    /// The request failed before a response (connection, TLS, timeout…).
    #[error("request for {url:?} failed: {source}")]
    Request {
        /// The URL (query removed).
        url: String,
        /// The client's error.
        #[source]
        source: ureq::Error,
    },
    /// An HTTP status other than 200, 206 (to a range request) or a followed redirect.
    #[error("{url:?} answered HTTP {status}")]
    Status {
        /// The URL (query removed).
        url: String,
        /// The status code.
        status: u16,
    },
    /// A 206 whose `Content-Range` does not start where the part ends.
    #[error("{url:?} answered a range from byte {offset} with Content-Range {got:?}")]
    BadContentRange {
        /// The URL (query removed).
        url: String,
        /// The byte asked for.
        offset: u64,
        /// The header as sent (`None`: missing or not text).
        got: Option<String>,
    },
    /// The server sent (or announced) more bytes than the manifest lists; the part was
    /// removed.
    #[error("{url:?} sent more than the manifest's {size} bytes for {file:?}")]
    TooLong {
        /// The URL (query removed).
        url: String,
        /// The bundle path.
        file: String,
        /// The manifest's size of the file.
        size: u64,
    },
    /// The transfer broke off; the part is kept and the next attempt resumes it.
    #[error("transfer of {file:?} from {url:?} broke off at {got} of {size} bytes: {source}")]
    Interrupted {
        /// The URL (query removed).
        url: String,
        /// The bundle path.
        file: String,
        /// Bytes of the file on disk.
        got: u64,
        /// The manifest's size of the file.
        size: u64,
        /// The read error.
        #[source]
        source: io::Error,
    },
    /// The body ended early without an error; the part is kept and the next attempt
    /// resumes it.
    #[error("{url:?} ended {file:?} at {got} of {size} bytes")]
    Truncated {
        /// The URL (query removed).
        url: String,
        /// The bundle path.
        file: String,
        /// Bytes of the file on disk.
        got: u64,
        /// The manifest's size of the file.
        size: u64,
    },
    /// A staging rule or file-system operation (bad path or digest, a complete file with
    /// the wrong hash, I/O).
    #[error(transparent)]
    Staging(#[from] StagingError),
}

/// Downloads the bundle files `files` (a verified manifest's `files`) from
/// `<base_url>/<path>` into `staging` (created if missing), each checked against its
/// listed size and SHA-256. A finished file already in `staging` that matches is kept; a
/// `<path>.part` is resumed. `progress` is called after each chunk and after each file.
///
/// Blocking: call it from `tokio::task::spawn_blocking`. Checks the URL, the hosts, the
/// paths and the budget before any connection.
pub fn download_bundle(
    base_url: &str,
    files: &[BundleFile],
    staging: &Path,
    policy: &DownloadPolicy,
    progress: &dyn Fn(Progress<'_>),
) -> Result<(), DownloadError> {
    let base = checked_url(base_url, policy)?;
    if base.query().is_some() {
        return Err(DownloadError::BadUrl {
            url: shown(base_url),
            reason: "a base URL has no query: file paths are appended to it".into(),
        });
    }
    let (agent, mut meter) = prepare(files, staging, policy)?;
    let base = base_url.trim_end_matches('/');
    for f in files {
        let url = format!("{base}/{}", f.path);
        fetch_file(&agent, &url, f, staging, policy, &mut meter, progress)?;
    }
    if files.is_empty() {
        progress(meter.report(""));
    }
    Ok(())
}

/// Downloads one file from `url` (the whole URL: a firmware image) into `staging`, with
/// the rules of [`download_bundle`]: checked against `file`'s size and SHA-256, a part
/// resumed, a finished matching file kept. Blocking.
pub fn download_file(
    url: &str,
    file: &BundleFile,
    staging: &Path,
    policy: &DownloadPolicy,
    progress: &dyn Fn(Progress<'_>),
) -> Result<(), DownloadError> {
    checked_url(url, policy)?;
    let files = std::slice::from_ref(file);
    let (agent, mut meter) = prepare(files, staging, policy)?;
    fetch_file(&agent, url, file, staging, policy, &mut meter, progress)
}

/// The checks before any connection (paths, digests, the budget), the staging directory
/// and the client.
fn prepare(
    files: &[BundleFile],
    staging: &Path,
    policy: &DownloadPolicy,
) -> Result<(ureq::Agent, Meter), DownloadError> {
    let total = staging::check_files(files)?;
    if total > policy.max_bytes {
        return Err(DownloadError::OverBudget {
            total,
            max: policy.max_bytes,
        });
    }
    fs::create_dir_all(staging).map_err(io_err("create", staging))?;
    let meter = Meter {
        total,
        done: 0,
        fetched: 0,
        first_byte: None,
    };
    Ok((client(policy), meter))
}

/// Progress accounting and the ETA.
struct Meter {
    total: u64,
    done: u64,
    /// Bytes received from the network in this call (the rate's numerator).
    fetched: u64,
    first_byte: Option<Instant>,
}

impl Meter {
    fn received(&mut self, n: u64) {
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
        }
        self.fetched += n;
        self.done += n;
    }

    fn report<'a>(&self, file: &'a str) -> Progress<'a> {
        let percent = if self.total == 0 {
            100.0
        } else {
            self.done as f64 * 100.0 / self.total as f64
        };
        let eta = self.first_byte.and_then(|t| {
            let secs = t.elapsed().as_secs_f64();
            if secs <= 0.0 || self.fetched == 0 {
                return None;
            }
            let rate = self.fetched as f64 / secs;
            // `try_`: a crawl over a huge remainder must not overflow `Duration` (a panic).
            Duration::try_from_secs_f64(self.total.saturating_sub(self.done) as f64 / rate).ok()
        });
        Progress {
            file,
            done: self.done,
            total: self.total,
            percent,
            eta,
        }
    }
}

fn fetch_file(
    agent: &ureq::Agent,
    url: &str,
    f: &BundleFile,
    staging: &Path,
    policy: &DownloadPolicy,
    meter: &mut Meter,
    progress: &dyn Fn(Progress<'_>),
) -> Result<(), DownloadError> {
    // What an earlier attempt (or an MQTT transfer) left: a finished file, or a part
    // hashed so far.
    let mut st = staging::resume(staging, f)?;
    if st.finished {
        meter.done += f.size;
        progress(meter.report(&f.path));
        return Ok(());
    }
    let (mut hasher, mut have) = (st.hasher.clone(), st.have);
    meter.done += have;
    progress(meter.report(&f.path));

    let mut restarted = false;
    let (final_url, response) = loop {
        let (final_url, response) = get(agent, url, have, policy)?;
        let status = response.status().as_u16();
        match status {
            206 if have > 0 => {
                let got = response
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                if content_range_start(got) != Some(have) {
                    return Err(DownloadError::BadContentRange {
                        url: shown(&final_url),
                        offset: have,
                        got: got.map(str::to_owned),
                    });
                }
            }
            200 => {
                // A server that ignores `Range` sends the whole file: start over.
                if have > 0 {
                    staging::remove(&st.part)?;
                    meter.done -= have;
                    (hasher, have) = (Sha256::new(), 0);
                }
            }
            // The server's file is shorter than our part: the part is not a prefix of it.
            416 if have > 0 && !restarted => {
                staging::remove(&st.part)?;
                meter.done -= have;
                (hasher, have) = (Sha256::new(), 0);
                restarted = true;
                continue;
            }
            _ => {
                return Err(DownloadError::Status {
                    url: shown(&final_url),
                    status,
                });
            }
        }
        break (final_url, response);
    };
    let too_long = |part: &Path| -> Result<DownloadError, DownloadError> {
        staging::remove(part)?;
        Ok(DownloadError::TooLong {
            url: shown(&final_url),
            file: f.path.clone(),
            size: f.size,
        })
    };
    let announced = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > f.size - have) {
        return Err(too_long(&st.part)?);
    }
    st.have = have;
    let mut out = staging::open_part(&st)?;
    out.seek(io::SeekFrom::Start(have))
        .map_err(io_err("seek", &st.part))?;
    let mut body = response.into_body().into_reader();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(source) => {
                out.sync_all().map_err(io_err("sync", &st.part))?;
                return Err(DownloadError::Interrupted {
                    url: shown(&final_url),
                    file: f.path.clone(),
                    got: have,
                    size: f.size,
                    source,
                });
            }
        };
        if n as u64 > f.size - have {
            drop(out);
            return Err(too_long(&st.part)?);
        }
        let chunk = &buf[..n];
        out.write_all(chunk).map_err(io_err("write", &st.part))?;
        hasher.update(chunk);
        have += n as u64;
        meter.received(n as u64);
        progress(meter.report(&f.path));
    }
    if have < f.size {
        out.sync_all().map_err(io_err("sync", &st.part))?;
        return Err(DownloadError::Truncated {
            url: shown(&final_url),
            file: f.path.clone(),
            got: have,
            size: f.size,
        });
    }
    // Synced, checked against the manifest, renamed into place (or removed).
    staging::finish(&st, f, hasher, &out)?;
    progress(meter.report(&f.path));
    Ok(())
}

/// Sends `GET url` (with `Range: bytes=offset-` when `offset > 0`), following redirects
/// itself so that each target is checked against the policy before it is contacted.
/// Returns the URL that answered and its response.
fn get(
    agent: &ureq::Agent,
    url: &str,
    offset: u64,
    policy: &DownloadPolicy,
) -> Result<(String, ureq::http::Response<ureq::Body>), DownloadError> {
    let mut current = url.to_owned();
    for _ in 0..=MAX_REDIRECTS {
        // Parsed once: the request goes to exactly the URI whose host was checked.
        let uri = checked_url(&current, policy)?;
        let mut request = agent.get(uri.clone());
        if offset > 0 {
            request = request.header(header::RANGE, format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|source| DownloadError::Request {
            url: shown(&current),
            source,
        })?;
        if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
            return Ok((current, response));
        }
        let bad = |reason: &str| DownloadError::BadRedirect {
            url: shown(&current),
            reason: reason.to_owned(),
        };
        let location = response
            .headers()
            .get(header::LOCATION)
            .ok_or_else(|| bad("no Location header"))?
            .to_str()
            .map_err(|_| bad("Location is not ASCII text"))?;
        let next = resolve(&uri, location).ok_or_else(|| {
            bad("Location is neither an absolute http(s) URL nor an absolute path")
        })?;
        if uri.scheme_str() == Some("https") && next.to_ascii_lowercase().starts_with("http:") {
            return Err(bad("it goes from HTTPS to plain HTTP"));
        }
        current = next;
    }
    Err(DownloadError::TooManyRedirects { url: shown(url) })
}

/// The absolute URL a `Location` value points to, from `base`: an absolute `http(s)` URL,
/// or an absolute path on the same origin. Other forms (relative paths, `//host/…`) are
/// refused: servers in front of model stores do not send them.
fn resolve(base: &Uri, location: &str) -> Option<String> {
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        Some(location.to_owned())
    } else if location.starts_with('/') && !location.starts_with("//") {
        Some(format!(
            "{}://{}{location}",
            base.scheme_str()?,
            base.authority()?.as_str()
        ))
    } else {
        None
    }
}

/// Parses `url` and checks it against the policy: `http` or `https` (only `https` when
/// required), a host, no user information, the host in the allow-list. The host is parsed
/// again by the strict URL rules ([`aegis_config::Host::parse`]: no ambiguous numeric
/// forms such as `127.1`) and checked by the policy's own rule
/// ([`aegis_ota::device::host_allowed`], as for sources); the caller connects to the
/// returned `Uri`, never to the text.
fn checked_url(url: &str, policy: &DownloadPolicy) -> Result<Uri, DownloadError> {
    let bad = |reason: &str| DownloadError::BadUrl {
        url: shown(url),
        reason: reason.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if policy.https_only => {
            return Err(DownloadError::HttpsRequired { url: shown(url) });
        }
        Some("http") => {}
        _ => return Err(bad("the scheme is not http or https")),
    }
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("it carries user information"));
    }
    let text = authority.host();
    if text.is_empty() {
        return Err(bad("it has no host"));
    }
    let host = aegis_config::Host::parse(text).map_err(|e| bad(&format!("host {text:?}: {e}")))?;
    if !aegis_ota::device::host_allowed(&policy.allowed_hosts, &host) {
        return Err(DownloadError::HostNotAllowed {
            url: shown(url),
            host: text.to_owned(),
        });
    }
    Ok(uri)
}

/// The start of a `Content-Range: bytes START-END/SIZE` value.
fn content_range_start(value: Option<&str>) -> Option<u64> {
    let range = value?.trim().strip_prefix("bytes ")?;
    let (span, _size) = range.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let start = start.trim().parse::<u64>().ok()?;
    let end = end.trim().parse::<u64>().ok()?;
    (start <= end).then_some(start)
}

/// A URL as errors show it: without its query, which may carry a signed token.
fn shown(url: &str) -> String {
    url.split(['?', '#']).next().unwrap_or(url).to_owned()
}

/// The SHA-256 state and length of the first `max` bytes of `path`.
fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> DownloadError {
    let path = path.to_path_buf();
    move |source| {
        DownloadError::Staging(StagingError::Io {
            action,
            path,
            source,
        })
    }
}

/// The HTTP client: no proxy from the environment, no automatic redirects, statuses
/// returned rather than turned into errors, the policy's timeouts and roots.
fn client(policy: &DownloadPolicy) -> ureq::Agent {
    let roots = match &policy.roots {
        TlsRoots::Mozilla => RootCerts::WebPki,
        TlsRoots::Certificates(ders) => RootCerts::Specific(Arc::new(
            ders.iter()
                .map(|d| Certificate::from_der(d).to_owned())
                .collect(),
        )),
    };
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(roots)
        .build();
    let t = policy.timeouts;
    ureq::Agent::config_builder()
        .proxy(None)
        .max_redirects(0)
        .http_status_as_error(false)
        .https_only(policy.https_only)
        .timeout_resolve(Some(t.connect))
        .timeout_connect(Some(t.connect))
        .timeout_send_request(Some(t.response))
        .timeout_recv_response(Some(t.response))
        .timeout_per_read(Some(t.stall))
        .tls_config(tls)
        .user_agent(concat!("aegis-agent/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::sync::Mutex;

    use axum::body::{Body, Bytes};
    use axum::extract::State;
    use axum::http::{HeaderMap, HeaderValue, StatusCode};
    use axum::response::Response;

    /// How the test server misbehaves.
    #[derive(Default)]
    struct Behaviour {
        /// Cut the next response after this many body bytes (then behave).
        cut_next: Option<usize>,
        /// Answer 200 with the whole file to range requests.
        ignore_range: bool,
        /// Answer 416 to range requests.
        refuse_range: bool,
        /// Append these bytes to every body; `true`: also in `Content-Length`.
        extra: Option<(Vec<u8>, bool)>,
        /// Redirect every request to this prefix + the path.
        redirect_to: Option<String>,
    }

    /// One request the server saw.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        path: String,
        range: Option<String>,
        /// Body bytes it meant to send.
        sent: usize,
    }

    #[derive(Default)]
    struct Server {
        files: HashMap<String, Vec<u8>>,
        behaviour: Mutex<Behaviour>,
        seen: Mutex<Vec<Seen>>,
    }

    impl Server {
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().map(|s| s.clone()).unwrap_or_default()
        }
    }

    async fn handle(
        State(s): State<Arc<Server>>,
        uri: axum::http::Uri,
        headers: HeaderMap,
    ) -> Response {
        let path = uri.path().trim_start_matches('/').to_owned();
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut b = s.behaviour.lock().expect("behaviour lock");
        let log = |sent: usize| {
            s.seen.lock().expect("seen lock").push(Seen {
                path: path.clone(),
                range: range.clone(),
                sent,
            })
        };
        let mut r = Response::builder();
        if let Some(prefix) = &b.redirect_to {
            log(0);
            return r
                .status(StatusCode::FOUND)
                .header(header::LOCATION, format!("{prefix}{path}"))
                .body(Body::empty())
                .expect("response");
        }
        let Some(data) = s.files.get(&path) else {
            log(0);
            return r.status(404).body(Body::empty()).expect("response");
        };
        let start = range
            .as_deref()
            .filter(|_| !b.ignore_range)
            .and_then(|v| v.strip_prefix("bytes="))
            .and_then(|v| v.strip_suffix('-'))
            .and_then(|v| v.parse::<usize>().ok());
        if let Some(start) = start {
            if b.refuse_range || start >= data.len() {
                log(0);
                return r.status(416).body(Body::empty()).expect("response");
            }
            r = r.status(206).header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
            );
        }
        let mut body = data[start.unwrap_or(0)..].to_vec();
        let declared = body.len();
        if let Some(cut) = b.cut_next.take() {
            // Announce the whole rest, send `cut` bytes, pause so they are flushed, then
            // fail the body: the connection is closed mid-transfer.
            log(cut);
            body.truncate(cut);
            let stream = futures_util::stream::unfold(Some(body), |state| async move {
                match state {
                    Some(bytes) => Some((Ok::<_, io::Error>(Bytes::from(bytes)), None)),
                    None => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(io::Error::other("cut")), None))
                    }
                }
            });
            return r
                .header(header::CONTENT_LENGTH, declared)
                .body(Body::from_stream(stream))
                .expect("response");
        }
        match &b.extra {
            Some((extra, true)) => {
                body.extend_from_slice(extra);
                log(body.len());
                r.body(Body::from(body)).expect("response")
            }
            Some((extra, false)) => {
                // No Content-Length: chunked, so only the reader's limit can catch it.
                let extra = extra.clone();
                log(body.len() + extra.len());
                let chunks = vec![
                    Ok::<_, io::Error>(Bytes::from(body)),
                    Ok(Bytes::from(extra)),
                ];
                r.body(Body::from_stream(futures_util::stream::iter(chunks)))
                    .expect("response")
            }
            None => {
                log(body.len());
                r.header(header::CONTENT_LENGTH, HeaderValue::from(declared))
                    .body(Body::from(body))
                    .expect("response")
            }
        }
    }

    /// Starts a server on 127.0.0.1 serving `files`; returns it and its base URL.
    fn serve(files: &[(&str, &[u8])]) -> (Arc<Server>, String) {
        let server = Arc::new(Server {
            files: files
                .iter()
                .map(|(p, d)| ((*p).to_owned(), d.to_vec()))
                .collect(),
            ..Server::default()
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&server));
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        (server, format!("http://127.0.0.1:{port}/bundle"))
    }

    fn bundle_file(path: &str, data: &[u8]) -> BundleFile {
        BundleFile {
            path: path.to_owned(),
            sha256: aegis_ota::sha256_hex(data),
            size: data.len() as u64,
        }
    }

    fn policy() -> DownloadPolicy {
        DownloadPolicy {
            allowed_hosts: vec!["127.0.0.1".into()],
            max_bytes: 1 << 20,
            https_only: false,
            timeouts: DownloadTimeouts {
                connect: Duration::from_secs(5),
                response: Duration::from_secs(5),
                stall: Duration::from_secs(5),
            },
            roots: TlsRoots::Certificates(Vec::new()),
        }
    }

    /// Deterministic, non-repeating-ish test bytes.
    fn bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
            .collect()
    }

    fn ignore(_: Progress<'_>) {}

    fn read(path: std::path::PathBuf) -> Option<Vec<u8>> {
        fs::read(path).ok()
    }

    #[test]
    fn downloads_a_bundle_with_monotonic_progress_to_100_percent() {
        let model = bytes(300_000, 1);
        let labels = b"person\ncar\n".to_vec();
        let (server, base) = serve(&[
            ("bundle/model.onnx", &model),
            ("bundle/meta/labels.txt", &labels),
        ]);
        // An empty file needs no request (it is put in place from its digest alone).
        let files = [
            bundle_file("model.onnx", &model),
            bundle_file("meta/labels.txt", &labels),
            bundle_file("meta/empty.txt", b""),
        ];
        let dir = tempfile::tempdir().expect("tempdir");
        let reports = RefCell::new(Vec::new());
        let record = |p: Progress<'_>| reports.borrow_mut().push((p.done, p.total, p.percent));
        download_bundle(&base, &files, dir.path(), &policy(), &record).expect("download");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model.clone()));
        assert_eq!(
            read(dir.path().join("meta/labels.txt")),
            Some(labels.clone())
        );
        assert!(!dir.path().join("model.onnx.part").exists());
        assert_eq!(read(dir.path().join("meta/empty.txt")), Some(Vec::new()));
        assert_eq!(server.seen().len(), 2);
        let reports = reports.into_inner();
        assert!(reports.len() > 2, "{reports:?}");
        assert!(
            reports
                .windows(2)
                .all(|w| w[0].0 <= w[1].0 && w[0].2 <= w[1].2)
        );
        let total = (model.len() + labels.len()) as u64;
        assert_eq!(reports.last().copied(), Some((total, total, 100.0)));
        assert!(server.seen().iter().all(|s| s.range.is_none()));

        // Again: the finished files are verified and kept, nothing is fetched.
        let before = server.seen().len();
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect("again");
        assert_eq!(server.seen().len(), before);
    }

    #[test]
    fn an_interrupted_download_resumes_with_a_range_request() {
        let model = bytes(200_000, 2);
        let (server, base) = serve(&[("bundle/model.onnx", &model)]);
        server.behaviour.lock().expect("lock").cut_next = Some(70_000);
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        let err = download_bundle(&base, &files, dir.path(), &policy(), &ignore)
            .expect_err("the transfer is cut");
        assert!(
            matches!(&err, DownloadError::Interrupted { file, .. } | DownloadError::Truncated { file, .. } if file == "model.onnx"),
            "{err}"
        );
        let part = dir.path().join("model.onnx.part");
        assert_eq!(read(part.clone()), Some(model[..70_000].to_vec()));
        assert!(!dir.path().join("model.onnx").exists());

        let first = RefCell::new(None);
        let record = |p: Progress<'_>| {
            first.borrow_mut().get_or_insert(p.done);
        };
        download_bundle(&base, &files, dir.path(), &policy(), &record).expect("resumed");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model.clone()));
        assert!(!part.exists());
        // The resumed bytes count as done from the first report.
        assert_eq!(first.into_inner(), Some(70_000));
        let seen = server.seen();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[1].range.as_deref(), Some("bytes=70000-"));
        assert_eq!(seen[1].sent, model.len() - 70_000);
    }

    #[test]
    fn a_server_ignoring_range_restarts_the_file_cleanly() {
        let model = bytes(100_000, 3);
        let (server, base) = serve(&[("bundle/model.onnx", &model)]);
        {
            let mut b = server.behaviour.lock().expect("lock");
            b.cut_next = Some(40_000);
            b.ignore_range = true;
        }
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect_err("cut");
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect("restarted");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model.clone()));
        let seen = server.seen();
        assert_eq!(seen[1].range.as_deref(), Some("bytes=40000-"));
        assert_eq!(seen[1].sent, model.len());
    }

    #[test]
    fn a_416_discards_the_part_and_restarts() {
        let model = bytes(50_000, 4);
        let (server, base) = serve(&[("bundle/model.onnx", &model)]);
        server.behaviour.lock().expect("lock").refuse_range = true;
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("model.onnx.part"), &model[..1000]).expect("part");
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect("restarted");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model));
        let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
        assert_eq!(ranges, vec![Some("bytes=1000-".to_owned()), None]);
    }

    #[test]
    fn tampered_content_fails_the_hash_and_removes_the_part() {
        let model = bytes(80_000, 5);
        let mut tampered = model.clone();
        tampered[40_000] ^= 1;
        let (_server, base) = serve(&[("bundle/model.onnx", &tampered)]);
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect_err("tampered");
        assert!(
            matches!(&err, DownloadError::Staging(StagingError::HashMismatch { file, .. }) if file == "model.onnx")
        );
        assert!(err.to_string().contains("model.onnx"), "{err}");
        assert!(!dir.path().join("model.onnx.part").exists());
        assert!(!dir.path().join("model.onnx").exists());
    }

    #[test]
    fn a_tampered_resumed_part_fails_the_hash_and_is_removed() {
        let model = bytes(80_000, 6);
        let (_server, base) = serve(&[("bundle/model.onnx", &model)]);
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut part = model[..30_000].to_vec();
        part[10] ^= 0xff;
        fs::write(dir.path().join("model.onnx.part"), &part).expect("part");
        let err = download_bundle(&base, &files, dir.path(), &policy(), &ignore)
            .expect_err("tampered part");
        assert!(
            matches!(
                err,
                DownloadError::Staging(StagingError::HashMismatch { .. })
            ),
            "{err}"
        );
        assert!(!dir.path().join("model.onnx.part").exists());
        // The next attempt starts over and succeeds.
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect("fresh");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model));
    }

    #[test]
    fn more_bytes_than_the_manifest_lists_are_refused() {
        let model = bytes(60_000, 7);
        for declared in [true, false] {
            let (server, base) = serve(&[("bundle/model.onnx", &model)]);
            server.behaviour.lock().expect("lock").extra = Some((vec![0; 5000], declared));
            let files = [bundle_file("model.onnx", &model)];
            let dir = tempfile::tempdir().expect("tempdir");
            let err = download_bundle(&base, &files, dir.path(), &policy(), &ignore)
                .expect_err("too long");
            assert!(
                matches!(&err, DownloadError::TooLong { file, size: 60_000, .. } if file == "model.onnx"),
                "declared {declared}: {err}"
            );
            assert!(!dir.path().join("model.onnx.part").exists());
            assert!(!dir.path().join("model.onnx").exists());
        }
    }

    #[test]
    fn a_host_outside_the_allow_list_is_refused_before_any_connection() {
        let model = bytes(1000, 8);
        let (server, base) = serve(&[("bundle/model.onnx", &model)]);
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");
        let mut p = policy();
        p.allowed_hosts = vec!["models.example.com".into(), "::1".into()];
        let err = download_bundle(&base, &files, dir.path(), &p, &ignore).expect_err("refused");
        assert!(
            matches!(&err, DownloadError::HostNotAllowed { host, .. } if host == "127.0.0.1"),
            "{err}"
        );
        assert!(server.seen().is_empty());
        p.https_only = true;
        p.allowed_hosts = vec!["*".into()];
        let err = download_bundle(&base, &files, dir.path(), &p, &ignore).expect_err("http");
        assert!(matches!(err, DownloadError::HttpsRequired { .. }), "{err}");
        assert!(server.seen().is_empty());
    }

    #[test]
    fn redirects_are_followed_only_to_allowed_hosts() {
        let model = bytes(10_000, 9);
        let (target, target_base) = serve(&[("bundle/model.onnx", &model)]);
        let target_port = target_base
            .trim_start_matches("http://127.0.0.1:")
            .trim_end_matches("/bundle");
        let (front, base) = serve(&[]);
        let files = [bundle_file("model.onnx", &model)];
        let dir = tempfile::tempdir().expect("tempdir");

        // To a host the policy does not name: refused, and the target never contacted.
        front.behaviour.lock().expect("lock").redirect_to =
            Some(format!("http://localhost:{target_port}/"));
        let err = download_bundle(&base, &files, dir.path(), &policy(), &ignore)
            .expect_err("redirect refused");
        assert!(
            matches!(&err, DownloadError::HostNotAllowed { host, .. } if host == "localhost"),
            "{err}"
        );
        assert!(target.seen().is_empty());
        assert_eq!(front.seen().len(), 1);

        // To an allowed one: followed.
        front.behaviour.lock().expect("lock").redirect_to =
            Some(format!("http://127.0.0.1:{target_port}/"));
        download_bundle(&base, &files, dir.path(), &policy(), &ignore).expect("followed");
        assert_eq!(read(dir.path().join("model.onnx")), Some(model));
        assert_eq!(target.seen().len(), 1);
    }

    /// Whether an error is the expected one.
    type Expect = fn(&DownloadError) -> bool;

    #[test]
    fn paths_digests_and_budget_are_checked_before_any_connection() {
        let model = bytes(1000, 10);
        let (server, base) = serve(&[("bundle/model.onnx", &model)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let cases: Vec<(BundleFile, Expect)> = vec![
            (bundle_file("../model.onnx", &model), |e| {
                matches!(e, DownloadError::Staging(StagingError::BadPath { .. }))
            }),
            (bundle_file("model.onnx.part", &model), |e| {
                matches!(e, DownloadError::Staging(StagingError::BadPath { .. }))
            }),
            (
                BundleFile {
                    sha256: "AB".repeat(32),
                    ..bundle_file("model.onnx", &model)
                },
                |e| matches!(e, DownloadError::Staging(StagingError::BadDigest { .. })),
            ),
            (
                BundleFile {
                    size: (1 << 20) + 1,
                    ..bundle_file("model.onnx", &model)
                },
                |e| matches!(e, DownloadError::OverBudget { max: 1048576, .. }),
            ),
        ];
        for (file, expected) in cases {
            let err = download_bundle(&base, &[file], dir.path(), &policy(), &ignore)
                .expect_err("refused");
            assert!(expected(&err), "{err}");
        }
        for bad in [
            "ftp://127.0.0.1/x",
            "http://user:pw@127.0.0.1/x",
            "http://127.0.0.1/x?t=1",
        ] {
            let err = download_bundle(bad, &[], dir.path(), &policy(), &ignore).expect_err(bad);
            assert!(matches!(err, DownloadError::BadUrl { .. }), "{bad}: {err}");
        }
        assert!(server.seen().is_empty());
    }

    #[test]
    fn host_rules_match_the_workflow_policy() {
        let check = |allowed: &[&str], url: &str| {
            let mut p = policy();
            p.allowed_hosts = allowed.iter().map(|s| (*s).to_owned()).collect();
            checked_url(url, &p)
        };
        assert!(check(&["Models.Example.com"], "https://models.example.COM/b").is_ok());
        assert!(check(&["[::1]"], "http://[::1]:8080/b").is_ok());
        assert!(check(&["::1"], "http://[0:0::1]/b").is_ok());
        assert!(check(&["*"], "http://anything/b").is_ok());
        for (allowed, url) in [
            (&["127.0.0.1"][..], "http://localhost/b"),
            (&["localhost"][..], "http://127.0.0.1/b"),
            (&[][..], "http://anything/b"),
        ] {
            assert!(
                matches!(
                    check(allowed, url),
                    Err(DownloadError::HostNotAllowed { .. })
                ),
                "{url} with {allowed:?}"
            );
        }
        // Numeric forms that a resolver reads as an address the list does not name are
        // refused by the parse, whatever the list says (no "127.1" entry can admit them).
        for url in [
            "http://127.1/b",
            "http://0x7f.0.0.1/b",
            "http://017.0.0.1/b",
        ] {
            assert!(
                matches!(check(&["*"], url), Err(DownloadError::BadUrl { .. })),
                "{url}"
            );
        }
        assert_eq!(content_range_start(Some("bytes 10-99/100")), Some(10));
        assert_eq!(content_range_start(Some("bytes 10-99/*")), Some(10));
        assert_eq!(content_range_start(Some("bytes 99-10/100")), None);
        assert_eq!(content_range_start(Some("items 10-99/100")), None);
    }
}
