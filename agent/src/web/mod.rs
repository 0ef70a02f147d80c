//! The local HTTP endpoints served during a run: `/metrics` (Prometheus text format),
//! `/healthz`, and `POST /workflow` (a signed workflow, as `aegis workflow apply` sends it;
//! the same checks as the fleet topics). The technician web page (a later change) mounts on
//! the same server.
//!
//! A signed document authenticates itself, but the endpoint must not be a way in for
//! whatever else runs on or near the device: a web page in a browser on the device (or a
//! DNS-rebinding page) could otherwise post to loopback, flood the applier, or read the
//! metrics. So `POST /workflow` — and `/metrics` when `web.metrics_public` is off — need
//! the **local API token** (`Authorization: Bearer …`, a 0600 file only the agent's user
//! can read), the `Host` header must be an IP literal or `localhost` (a rebound DNS name is
//! refused), and a browser's `Origin` must be that same host. `/healthz` stays open.

pub mod pages;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::metrics::Metrics;
use crate::workflows::apply::{ApplyCounters, RefusalAudit};

/// The local API credential: 256 random bits, hex, in a 0600 file.
pub struct LocalToken {
    secret: zeroize::Zeroizing<String>,
    /// Where it is kept.
    pub path: PathBuf,
}

impl std::fmt::Debug for LocalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalToken({})", self.path.display())
    }
}

/// Why the local API token cannot be read or created; names the file and the config key.
#[derive(Debug, thiserror::Error)]
#[error("local API token {}: {problem} (web.token_file)", path.display())]
pub struct TokenError {
    /// The token file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub problem: TokenProblem,
}

/// What is wrong with a token file (see [`TokenError`]).
#[derive(Debug, thiserror::Error)]
pub enum TokenProblem {
    /// Its folder cannot be created.
    #[error("{0}")]
    Folder(std::io::Error),
    /// The OS gave no random bytes.
    #[error("{0}")]
    Random(getrandom::Error),
    /// The file fails the private-file checks (owner, mode, link) or cannot be read or
    /// written; the reason comes from `aegis_ota`'s key-file code.
    #[error("{0}")]
    File(String),
    /// The file is not text.
    #[error("not UTF-8 text")]
    NotText,
    /// The text is not a token.
    #[error("not a token (64 hex digits expected)")]
    NotAToken,
}

fn token_err(path: &Path, problem: TokenProblem) -> TokenError {
    TokenError {
        path: path.to_path_buf(),
        problem,
    }
}

/// `addr` cannot be listened on (a busy port is the usual cause).
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source} (set web.listen or --listen)")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: std::io::Error,
}

impl LocalToken {
    /// Reads the token at `path`, creating it (0600, new) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<LocalToken, TokenError> {
        match Self::read(path) {
            Ok(t) => return Ok(t),
            Err(e) if path.exists() => return Err(e),
            Err(_) => {}
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| token_err(path, TokenProblem::Folder(e)))?;
        }
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        getrandom::fill(raw.as_mut()).map_err(|e| token_err(path, TokenProblem::Random(e)))?;
        let hex: zeroize::Zeroizing<String> =
            zeroize::Zeroizing::new(raw.iter().map(|b| format!("{b:02x}")).collect());
        let line = zeroize::Zeroizing::new(format!("{}\n", hex.as_str()));
        aegis_ota::write_private(path, line.as_bytes())
            .map_err(|(_, reason)| token_err(path, TokenProblem::File(reason)))?;
        Ok(LocalToken {
            secret: hex,
            path: path.to_path_buf(),
        })
    }

    /// Reads an existing token with the secret-key file checks (one descriptor, no link,
    /// owned by this user, no group or other access).
    pub fn read(path: &Path) -> Result<LocalToken, TokenError> {
        let bytes = aegis_ota::read_private(path)
            .map_err(|(_, reason)| token_err(path, TokenProblem::File(reason)))?;
        let t = std::str::from_utf8(&bytes)
            .map_err(|_| token_err(path, TokenProblem::NotText))?
            .trim();
        if t.len() < 32 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(token_err(path, TokenProblem::NotAToken));
        }
        Ok(LocalToken {
            secret: zeroize::Zeroizing::new(t.to_string()),
            path: path.to_path_buf(),
        })
    }

    /// The `Authorization` header value.
    pub fn header(&self) -> String {
        format!("Bearer {}", self.secret.as_str())
    }

    /// Constant-time comparison with a presented bearer token.
    fn matches(&self, presented: &str) -> bool {
        let (a, b) = (self.secret.as_bytes(), presented.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// What the handlers read.
#[derive(Clone)]
pub struct ServerState {
    /// The registry to render.
    pub metrics: Arc<Metrics>,
    /// Device id, for `/healthz`.
    pub device: String,
    /// Process start, for uptime.
    pub started: Instant,
    /// The applier's local queue (None: workflows are off).
    pub workflows: Option<tokio::sync::mpsc::Sender<crate::workflows::apply::Request>>,
    /// The local API token.
    pub token: Arc<LocalToken>,
    /// Serve `/metrics` without the token.
    pub metrics_public: bool,
    /// Refused requests are audited here (with workflows on).
    pub audit: Option<Arc<RefusalAudit>>,
    /// Counters (`busy`).
    pub counters: Option<Arc<ApplyCounters>>,
}

/// The router with every endpoint.
pub fn router(state: ServerState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/workflow", post(workflow))
        .layer(axum::extract::DefaultBodyLimit::max(
            aegis_ota::maml::MAX_DOCUMENT_BYTES + 1,
        ))
        .with_state(state)
}

/// Binds `addr`, naming it in the error (a busy port is the usual cause).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })
}

fn json(code: StatusCode, v: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// The host part of a `Host` header value (`[::1]:8080` → `::1`, `a:1` → `a`).
fn host_part(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Why a request may not use a protected endpoint (None: it may).
fn refused(s: &ServerState, headers: &HeaderMap) -> Option<(StatusCode, String)> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = host_part(host);
    // An IP literal or localhost: a DNS name pointing at the device (rebinding) is refused.
    if !(name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()) {
        return Some((
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not accepted: use the device's IP address or localhost"),
        ));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let o = origin.to_str().unwrap_or("");
        if o != format!("http://{host}") && o != format!("https://{host}") {
            return Some((
                StatusCode::FORBIDDEN,
                format!(
                    "Origin {o:?} does not match Host {host:?}: cross-site requests are refused"
                ),
            ));
        }
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        Some(t) if s.token.matches(t) => None,
        Some(_) => Some((StatusCode::UNAUTHORIZED, "wrong local API token".into())),
        None => Some((
            StatusCode::UNAUTHORIZED,
            format!(
                "this endpoint needs the local API token (Authorization: Bearer <{}>)",
                s.token.path.display()
            ),
        )),
    }
}

fn deny(s: &ServerState, path: &str, code: StatusCode, why: String) -> Response {
    if let Some(a) = &s.audit {
        a.record("http.refused", &format!("{path}: {why}"));
    }
    let mut r = json(code, serde_json::json!({ "error": why }));
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn metrics(State(s): State<ServerState>, headers: HeaderMap) -> Response {
    if !s.metrics_public
        && let Some((code, why)) = refused(&s, &headers)
    {
        return deny(&s, "/metrics", code, why);
    }
    let body = tokio::task::spawn_blocking(move || s.metrics.render())
        .await
        .unwrap_or_default();
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Each stream's health as JSON (`/healthz`, fleet status and telemetry).
pub fn streams_json(metrics: &Metrics) -> Vec<serde_json::Value> {
    metrics
        .source_health()
        .into_iter()
        .map(|(id, h)| {
            serde_json::json!({
                "id": id,
                "state": h.state.as_str(),
                "frames": h.frames,
                "reconnects": h.reconnects,
                "last_error": h.last_error,
            })
        })
        .collect()
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    let running = s.metrics.streams_running.get();
    let streams = streams_json(&s.metrics);
    let all_streaming = streams.iter().all(|v| v["state"] == "streaming");
    let body = serde_json::json!({
        "status": if all_streaming { "ok" } else { "degraded" },
        "device": s.device,
        "uptime_s": s.started.elapsed().as_secs(),
        "streams_running": running,
        "streams": streams,
        "version": env!("CARGO_PKG_VERSION"),
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}

async fn workflow(
    State(s): State<ServerState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(tx) = s.workflows.clone() else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "workflows are disabled on this device (workflows.enabled)" }),
        );
    };
    if let Some((code, why)) = refused(&s, &headers) {
        return deny(&s, "/workflow", code, why);
    }
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let req = crate::workflows::apply::Request {
        payload: body.to_vec(),
        reply: Some(reply_tx),
    };
    if tx.try_send(req).is_err() {
        if let Some(c) = &s.counters {
            c.busy.fetch_add(1, Relaxed);
        }
        return deny(
            &s,
            "/workflow",
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is busy with other local requests; retry".into(),
        );
    }
    match reply_rx.await {
        Ok(r) => json(StatusCode::OK, serde_json::to_value(r).unwrap_or_default()),
        Err(_) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the agent stopped before answering" }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_file_is_private_and_compared_exactly() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/api.token");
        let t = LocalToken::load_or_create(&p).unwrap();
        let again = LocalToken::load_or_create(&p).unwrap();
        assert_eq!(t.header(), again.header());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secret = t.header()["Bearer ".len()..].to_string();
        assert!(t.matches(&secret));
        assert!(!t.matches(&secret[1..]));
        let mut flipped = secret.clone().into_bytes();
        flipped[10] ^= 1;
        assert!(!t.matches(std::str::from_utf8(&flipped).unwrap()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = LocalToken::load_or_create(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn host_names_that_could_be_rebound_are_refused() {
        assert_eq!(host_part("127.0.0.1:8080"), "127.0.0.1");
        assert_eq!(host_part("[::1]:8080"), "::1");
        assert_eq!(host_part("localhost"), "localhost");
        assert_eq!(host_part("evil.example:8080"), "evil.example");
    }
}
