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
//!
//! Every route is one [`RouteSpec`] in one table ([`routes`]): the router is built from it,
//! and one middleware ([`enforce`]) gives each route its [`Access`] — public, the bearer token
//! (machine clients), or a login session with at least a [`Role`]. A session's state-changing
//! request (POST/PUT/PATCH/DELETE) must also carry its CSRF token. One layer adds the security
//! headers (CSP, `nosniff`, `no-referrer`) to every response.

pub mod auth;
pub mod edit;
pub mod pages;
pub mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};

pub use auth::{Auth, Role, Viewer};

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
        aegis_config::same_secret(&self.secret, presented)
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
    /// Accounts, sessions, login lockouts.
    pub auth: Arc<Auth>,
    /// Mark the session cookie `Secure`. Off only for plain HTTP on a loopback address (a
    /// browser does not send a `Secure` cookie over plain HTTP; loopback traffic never
    /// leaves the device).
    pub cookie_secure: bool,
    /// What the technician pages read.
    pub pages: Arc<pages::PagesState>,
}

impl axum::extract::FromRef<ServerState> for Arc<pages::PagesState> {
    fn from_ref(s: &ServerState) -> Self {
        s.pages.clone()
    }
}

/// Who may use a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// A logged-in viewer (or more).
    Viewer,
    /// A logged-in technician (or admin).
    Technician,
    /// A logged-in admin.
    Admin,
    /// Machine clients: the local API token, with the Host/Origin checks.
    Token,
    /// WHIP publishers: no session; the handler checks the source's own bearer token
    /// (`publish_token`) and answers 401 without it.
    Publisher,
    /// The HLS files: a logged-in viewer, or a machine client of `outputs.hls.clients`
    /// with its token (the handler finds its [`HlsClientName`] instead of a [`Viewer`]).
    Stream,
}

/// The machine client a [`Access::Stream`] request was admitted as (no session).
#[derive(Debug, Clone)]
pub struct HlsClientName(pub String);

impl Access {
    /// The least role a session needs (None: no session is used).
    pub fn role(self) -> Option<Role> {
        match self {
            Access::Viewer | Access::Stream => Some(Role::Viewer),
            Access::Technician => Some(Role::Technician),
            Access::Admin => Some(Role::Admin),
            Access::Public | Access::Token | Access::Publisher => None,
        }
    }
}

/// Builds a route's handler for its method: `|m| on(m, handler)`.
pub type HandlerFn = fn(MethodFilter) -> MethodRouter<ServerState>;

/// One route: the router is built from a table of these, and [`enforce`] gives each its
/// access. A page adds one entry, e.g. `RouteSpec { method: Method::GET, path: "/status",
/// access: Access::Viewer, handler: |m| on(m, status) }`, its handler taking a [`Viewer`].
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// The method.
    pub method: Method,
    /// The path (axum syntax).
    pub path: &'static str,
    /// Who may use it.
    pub access: Access,
    /// Its handler.
    pub handler: HandlerFn,
}

/// The technician web page's routes.
const PAGE_ROUTES: &[RouteSpec] = pages::ROUTES;

/// Every route: the endpoints of this module, then [`PAGE_ROUTES`]. `/metrics` is public or
/// needs the token, as `metrics_public` says.
pub fn routes(metrics_public: bool) -> Vec<RouteSpec> {
    let core = [
        RouteSpec {
            method: Method::GET,
            path: "/metrics",
            access: if metrics_public {
                Access::Public
            } else {
                Access::Token
            },
            handler: |m| on(m, metrics),
        },
        RouteSpec {
            method: Method::GET,
            path: "/healthz",
            access: Access::Public,
            handler: |m| on(m, healthz),
        },
        RouteSpec {
            method: Method::POST,
            path: "/workflow",
            access: Access::Token,
            handler: |m| on(m, workflow),
        },
        RouteSpec {
            method: Method::GET,
            path: "/login",
            access: Access::Public,
            handler: |m| on(m, login_page),
        },
        RouteSpec {
            method: Method::POST,
            path: "/login",
            access: Access::Public,
            handler: |m| on(m, login),
        },
        RouteSpec {
            method: Method::POST,
            path: "/logout",
            access: Access::Viewer,
            handler: |m| on(m, logout),
        },
    ];
    core.into_iter()
        .chain(PAGE_ROUTES.iter().cloned())
        .collect()
}

/// The router with every route of [`routes`], each behind [`enforce`], and the security
/// headers on every response.
pub fn router(state: ServerState) -> Router {
    let table = routes(state.metrics_public);
    build(state, table)
}

/// The router of `table`.
fn build(state: ServerState, table: Vec<RouteSpec>) -> Router {
    let mut r = Router::new();
    for spec in table {
        let filter = MethodFilter::try_from(spec.method.clone())
            .unwrap_or_else(|_| panic!("{} {}: no such method filter", spec.method, spec.path));
        let layer = axum::middleware::from_fn_with_state((state.clone(), spec.access), enforce);
        r = r.route(spec.path, (spec.handler)(filter).layer(layer));
    }
    r.layer(axum::extract::DefaultBodyLimit::max(
        aegis_ota::maml::MAX_DOCUMENT_BYTES + 1,
    ))
    .layer(axum::middleware::map_response(security_headers))
    .with_state(state)
}

/// The Content-Security-Policy of every response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'self'";

async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The session cookie's value in `headers`.
fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == auth::COOKIE)
        .map(|(_, v)| v)
}

/// `application/x-www-form-urlencoded` fields.
pub(crate) fn form_fields(body: &[u8]) -> HashMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| {
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}

fn wants_html(req: &Request) -> bool {
    matches!(*req.method(), Method::GET | Method::HEAD)
        && req
            .headers()
            .get(header::ACCEPT)
            .and_then(|a| a.to_str().ok())
            .is_some_and(|a| a.contains("text/html"))
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// The one enforcement point: `access` for this route. Token routes check the bearer token
/// (and Host/Origin); session routes need a live session of at least the route's role
/// (none: a browser's page load goes to `/login`, anything else gets 401), and the session's
/// CSRF token (`X-CSRF-Token` header or `csrf` form field) on a state-changing request. The
/// handler finds the [`Viewer`] in the request's extensions.
pub async fn enforce(
    State((s, access)): State<(ServerState, Access)>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_string();
    if access == Access::Token {
        if let Some((code, why)) = refused(&s, req.headers()) {
            return deny(&s, &path, code, why);
        }
        return next.run(req).await;
    }
    let Some(need) = access.role() else {
        return next.run(req).await;
    };
    let viewer = session_cookie(req.headers()).and_then(|id| s.auth.session(id));
    let Some(viewer) = viewer else {
        if access == Access::Stream && s.pages.served.hls.has_clients() {
            return hls_client(&s, &path, req, next).await;
        }
        if wants_html(&req) {
            return see_other("/login");
        }
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({ "error": "log in first (POST /login)" }),
        );
    };
    if viewer.role < need {
        let why = format!(
            "{} is a {}; this needs a {}",
            viewer.user,
            viewer.role.as_str(),
            need.as_str()
        );
        if wants_html(&req) {
            // A page load (a typed URL, a bookmark): a page that says why, not JSON.
            audit_refusal(&s, &path, &why);
            let body = format!(
                "<p role=\"alert\">{}</p><p><a href=\"/\">Back to the overview</a></p>",
                escape(&why)
            );
            return html(
                StatusCode::FORBIDDEN,
                plain_page("not allowed", "Not allowed", &body),
            );
        }
        return deny(&s, &path, StatusCode::FORBIDDEN, why);
    }
    let mut req = req;
    if !matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) {
        let header_token = req
            .headers()
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let presented = match header_token {
            Some(t) => Some(t),
            None if req
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|c| c.starts_with("application/x-www-form-urlencoded")) =>
            {
                let (parts, body) = req.into_parts();
                let Ok(bytes) =
                    axum::body::to_bytes(body, aegis_ota::maml::MAX_DOCUMENT_BYTES + 1).await
                else {
                    return json(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        serde_json::json!({ "error": "the form is too large" }),
                    );
                };
                let t = form_fields(&bytes).remove("csrf");
                req = Request::from_parts(parts, axum::body::Body::from(bytes));
                t
            }
            None => None,
        };
        if !presented.is_some_and(|t| aegis_config::same_secret(&t, &viewer.csrf)) {
            return deny(
                &s,
                &path,
                StatusCode::FORBIDDEN,
                "missing or wrong CSRF token (X-CSRF-Token header or csrf form field)".into(),
            );
        }
    }
    req.extensions_mut().insert(viewer);
    let mut r = next.run(req).await;
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// A request for the HLS files without a session: a machine client with its token
/// (`outputs.hls.clients`), or a 401 that offers both ways to present one (HTTP Basic
/// first: players such as VLC and ffmpeg answer its challenge with the URL's `name:token`).
async fn hls_client(s: &ServerState, path: &str, mut req: Request, next: Next) -> Response {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let client = authorization.and_then(|a| s.pages.served.hls.client(a));
    let Some(client) = client.map(str::to_owned) else {
        let why = if authorization.is_some() {
            "wrong HLS client credentials"
        } else {
            "log in first, or present an HLS client's token (Authorization: Bearer <token>, or Basic with its name)"
        };
        let mut r = deny(s, path, StatusCode::UNAUTHORIZED, why.into());
        let h = r.headers_mut();
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"aegis hls\", charset=\"UTF-8\""),
        );
        h.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"aegis hls\""),
        );
        return r;
    };
    req.extensions_mut().insert(HlsClientName(client));
    next.run(req).await
}

fn html(code: StatusCode, body: String) -> Response {
    (
        code,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The login page; without any account, how to create one (and nothing else).
fn login_html(s: &ServerState, message: Option<&str>) -> String {
    let body = if s.auth.has_accounts() {
        format!(
            "{}<form method=\"post\" action=\"/login\">\
             <label>User <input name=\"user\" autocomplete=\"username\" required></label>\
             <label>Password <input name=\"password\" type=\"password\" \
             autocomplete=\"current-password\" required></label>\
             <button type=\"submit\">Log in</button></form>",
            message.map_or_else(String::new, |m| format!(
                "<p role=\"alert\">{}</p>",
                escape(m)
            ))
        )
    } else {
        format!(
            "<p>No account exists on this device yet. On the device, create one:</p>\
             <pre>aegis user add NAME --role admin --config CONFIG.yaml</pre>\
             <p>(accounts file: {})</p>",
            escape(&s.auth.accounts_path().display().to_string())
        )
    };
    plain_page("log in", &escape(&s.device), &body)
}

/// A page outside the technician pages' frame (no navigation, no script): the login page and
/// the refusal page. `heading` and `body` are HTML already escaped by the caller.
fn plain_page(title: &str, heading: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Aegis Edge — {title}</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         </head><body><main class=\"plain\"><h1>{heading}</h1>{body}</main></body></html>",
        title = escape(title),
    )
}

async fn login_page(State(s): State<ServerState>) -> Response {
    html(StatusCode::OK, login_html(&s, None))
}

async fn login(State(s): State<ServerState>, req: Request) -> Response {
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), 64 * 1024).await else {
        return html(
            StatusCode::PAYLOAD_TOO_LARGE,
            login_html(&s, Some("the form is too large")),
        );
    };
    let f = form_fields(&bytes);
    let (user, password) = (
        f.get("user").map_or("", String::as_str),
        f.get("password").map_or("", String::as_str),
    );
    let auth = s.auth.clone();
    let (user_c, password_c) = (
        user.to_string(),
        zeroize::Zeroizing::new(password.to_string()),
    );
    // argon2 takes tens of milliseconds: off the async workers.
    let res = tokio::task::spawn_blocking(move || auth.login(&user_c, &password_c, ip)).await;
    match res {
        Ok(Ok(new)) => {
            let mut r = see_other("/");
            let cookie = format!(
                "{}={}; HttpOnly;{} SameSite=Strict; Path=/; Max-Age={}",
                auth::COOKIE,
                new.id,
                if s.cookie_secure { " Secure;" } else { "" },
                auth::SESSION_TTL.as_secs()
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Ok(Err(e)) => {
            if let Some(a) = &s.audit {
                a.record("http.login_failed", &format!("{user}: {e}"));
            }
            let code = match e {
                auth::LoginError::BadCredentials => StatusCode::UNAUTHORIZED,
                auth::LoginError::Locked => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            html(code, login_html(&s, Some(&e.to_string())))
        }
        Err(_) => html(
            StatusCode::INTERNAL_SERVER_ERROR,
            login_html(&s, Some("the login check stopped")),
        ),
    }
}

async fn logout(State(s): State<ServerState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        s.auth.logout(id);
    }
    let mut r = see_other("/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("aegis_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0"),
    );
    r
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
pub(crate) fn host_part(host: &str) -> &str {
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

/// Audits a refused request (with workflows on).
fn audit_refusal(s: &ServerState, path: &str, why: &str) {
    if let Some(a) = &s.audit {
        a.record("http.refused", &format!("{path}: {why}"));
    }
}

fn deny(s: &ServerState, path: &str, code: StatusCode, why: String) -> Response {
    audit_refusal(s, path, &why);
    let mut r = json(code, serde_json::json!({ "error": why }));
    if code == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    r
}

async fn metrics(State(s): State<ServerState>) -> Response {
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
                "decoder": h.decoder,
            })
        })
        .collect()
}

async fn healthz(State(s): State<ServerState>) -> impl IntoResponse {
    let running = s.metrics.streams_running.get();
    let streams = streams_json(&s.metrics);
    // A pushed source without a publisher is waiting, not failing.
    let all_streaming = streams
        .iter()
        .all(|v| v["state"] == "streaming" || v["state"] == "waiting");
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

async fn workflow(State(s): State<ServerState>, body: axum::body::Bytes) -> Response {
    let Some(tx) = s.workflows.clone() else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "workflows are disabled on this device (workflows.enabled)" }),
        );
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let req = crate::workflows::apply::Request {
        payload: body.to_vec(),
        reply: Some(reply_tx),
        user: None,
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

/// The route table and its one enforcement point, through the router (no network).
#[cfg(test)]
mod route_tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use axum::body::Body;
    use tower::ServiceExt;

    use super::auth::{Accounts, Clock};
    use super::*;

    struct TestClock(Mutex<Instant>);

    impl Clock for TestClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    impl TestClock {
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap() += d;
        }
    }

    struct Rig {
        _dir: tempfile::TempDir,
        state: ServerState,
        clock: Arc<TestClock>,
        extra: Vec<RouteSpec>,
    }

    async fn whoami(v: Viewer) -> String {
        format!("{} {}", v.user, v.role.as_str())
    }

    /// A viewer, a technician and an admin route, as a page module declares its table.
    static PAGES: &[RouteSpec] = &[
        RouteSpec {
            method: Method::GET,
            path: "/t/view",
            access: Access::Viewer,
            handler: |m| on(m, whoami),
        },
        RouteSpec {
            method: Method::POST,
            path: "/t/change",
            access: Access::Technician,
            handler: |m| on(m, whoami),
        },
        RouteSpec {
            method: Method::GET,
            path: "/t/tech",
            access: Access::Technician,
            handler: |m| on(m, whoami),
        },
        RouteSpec {
            method: Method::DELETE,
            path: "/t/admin",
            access: Access::Admin,
            handler: |m| on(m, whoami),
        },
    ];

    const PW: &str = "correct horse";

    fn rig(metrics_public: bool, with_accounts: bool, cookie_secure: bool) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let accounts = dir.path().join("accounts.json");
        if with_accounts {
            let mut a = Accounts::default();
            a.add("vic", Role::Viewer, PW).unwrap();
            a.add("tess", Role::Technician, PW).unwrap();
            a.save(&accounts).unwrap();
        }
        let clock = Arc::new(TestClock(Mutex::new(Instant::now())));
        let state = ServerState {
            metrics: Arc::new(Metrics::new("cpu")),
            device: "dev-1".into(),
            started: Instant::now(),
            workflows: None,
            token: Arc::new(LocalToken::load_or_create(&dir.path().join("api.token")).unwrap()),
            metrics_public,
            audit: None,
            counters: None,
            auth: Arc::new(Auth::new(accounts, clock.clone())),
            cookie_secure,
            pages: Arc::new(pages::PagesState {
                metrics: Arc::new(Metrics::new("cpu")),
                device: "dev-1".into(),
                backend: "cpu".into(),
                gpu: None,
                started: Instant::now(),
                store_path: dir.path().join("none.db"),
                config: serde_json::Value::Null,
                workflow: Arc::new(Mutex::new(serde_json::Value::Null)),
                logs: Arc::new(crate::logging::LogRing::new(10)),
                thermal_root: dir.path().join("no-thermal"),
                live: Default::default(),
                served: Default::default(),
                snapshots: Default::default(),
                readings: Default::default(),
                models: Default::default(),
                editor: None,
                workflows: None,
                counters: None,
                store: None,
                evidence: None,
            }),
        };
        Rig {
            _dir: dir,
            state,
            clock,
            extra: PAGES.to_vec(),
        }
    }

    impl Rig {
        fn table(&self) -> Vec<RouteSpec> {
            let mut t = routes(self.state.metrics_public);
            t.extend(self.extra.iter().cloned());
            t
        }

        async fn send(&self, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
            let r = build(self.state.clone(), self.table())
                .oneshot(req)
                .await
                .unwrap();
            let (parts, body) = r.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
            (
                parts.status,
                parts.headers,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }

        async fn login_from(
            &self,
            user: &str,
            pw: &str,
            ip: [u8; 4],
        ) -> (StatusCode, HeaderMap, String) {
            let mut req = axum::http::Request::post("/login")
                .header(header::HOST, "127.0.0.1")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from(format!(
                    "user={user}&password={}",
                    pw.replace(' ', "+")
                )))
                .unwrap();
            req.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from((ip, 4000))));
            self.send(req).await
        }

        /// Logs in; the cookie header and the session's CSRF token.
        async fn session(&self, user: &str) -> (String, String) {
            let (code, h, body) = self.login_from(user, PW, [10, 0, 0, 1]).await;
            assert_eq!(code, StatusCode::SEE_OTHER, "{body}");
            let set = h[header::SET_COOKIE].to_str().unwrap();
            let id = set.split(';').next().unwrap().to_string();
            let v = self
                .state
                .auth
                .session(id.split_once('=').unwrap().1)
                .unwrap();
            (id, v.csrf)
        }
    }

    fn req(method: &Method, path: &str) -> axum::http::request::Builder {
        axum::http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::HOST, "127.0.0.1")
    }

    /// `outputs.hls.clients`: a client's token (Bearer, or Basic with its name) admits the
    /// HLS files and nothing else; anything else is challenged both ways.
    #[tokio::test]
    async fn an_hls_client_token_admits_the_hls_files_only() {
        use base64::Engine as _;
        const TOKEN: &str = "hls-client-token-0123456789";
        let mut rig = rig(true, true, true);
        Arc::get_mut(&mut rig.state.pages).unwrap().served = Arc::new(crate::outputs::Served {
            hls: Arc::new(crate::outputs::hls::HlsHub::new(vec![
                aegis_config::HlsClient {
                    name: "cdn".into(),
                    token: aegis_config::Secret::new(TOKEN),
                },
            ])),
            ..Default::default()
        });
        let basic = |cred: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(cred)
            )
        };
        // Admitted: the handler answers (no such stream is served: 404).
        let cases = [
            (Some(format!("Bearer {TOKEN}")), "/hls/cam0/index.m3u8", 404),
            (
                Some(format!("bearer  {TOKEN} ")),
                "/hls/cam0/index.m3u8",
                404,
            ),
            (
                Some(basic(&format!("cdn:{TOKEN}"))),
                "/hls/cam0/seg-1.m4s",
                404,
            ),
            (None, "/hls/cam0/index.m3u8", 401),
            (
                Some(format!("Bearer {TOKEN}x")),
                "/hls/cam0/index.m3u8",
                401,
            ),
            (
                Some(basic(&format!("vms:{TOKEN}"))),
                "/hls/cam0/index.m3u8",
                401,
            ),
            (Some(basic(TOKEN)), "/hls/cam0/index.m3u8", 401),
            (Some("Basic !!!".into()), "/hls/cam0/index.m3u8", 401),
            (Some(format!("Token {TOKEN}")), "/hls/cam0/index.m3u8", 401),
            // The token is not a session: every other page refuses it.
            (Some(format!("Bearer {TOKEN}")), "/api/overview", 401),
            (Some(format!("Bearer {TOKEN}")), "/api/live/cam0/ws", 401),
        ];
        for (auth, path, want) in cases {
            let mut r = req(&Method::GET, path);
            if let Some(a) = &auth {
                r = r.header(header::AUTHORIZATION, a);
            }
            let (code, h, body) = rig.send(r.body(Body::empty()).unwrap()).await;
            assert_eq!(code.as_u16(), want, "{auth:?} {path}: {body}");
            if want == 401 && path.starts_with("/hls/") {
                let challenges: Vec<_> = h.get_all(header::WWW_AUTHENTICATE).iter().collect();
                assert_eq!(challenges.len(), 2, "{challenges:?}");
                assert!(challenges[0].to_str().unwrap().starts_with("Basic realm="));
                assert!(challenges[1].to_str().unwrap().starts_with("Bearer realm="));
            }
        }
        // A logged-in viewer still reads them, without a token.
        let (cookie, _) = rig.session("vic").await;
        let (code, h, _) = rig
            .send(
                req(&Method::GET, "/hls/cam0/index.m3u8")
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::NOT_FOUND);
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn every_protected_route_refuses_a_request_without_credentials() {
        for public_metrics in [true, false] {
            let rig = rig(public_metrics, true, true);
            for spec in rig.table() {
                let (code, _, body) = rig
                    .send(req(&spec.method, spec.path).body(Body::empty()).unwrap())
                    .await;
                match spec.access {
                    // (POST /login answers 401 itself: no user name, no password.)
                    Access::Public => assert!(
                        code != StatusCode::FORBIDDEN
                            && (code != StatusCode::UNAUTHORIZED || spec.path == "/login"),
                        "{} {}: {code}",
                        spec.method,
                        spec.path
                    ),
                    _ => assert_eq!(
                        code,
                        StatusCode::UNAUTHORIZED,
                        "{} {}: {body}",
                        spec.method,
                        spec.path
                    ),
                }
                if spec.access.role().is_some() && spec.method == Method::GET {
                    let (code, h, _) = rig
                        .send(
                            req(&spec.method, spec.path)
                                .header(header::ACCEPT, "text/html,*/*")
                                .body(Body::empty())
                                .unwrap(),
                        )
                        .await;
                    assert_eq!(code, StatusCode::SEE_OTHER, "{}", spec.path);
                    assert_eq!(h[header::LOCATION], "/login");
                }
            }
            let metrics_access = rig
                .table()
                .iter()
                .find(|s| s.path == "/metrics")
                .unwrap()
                .access;
            assert_eq!(
                metrics_access,
                if public_metrics {
                    Access::Public
                } else {
                    Access::Token
                }
            );
        }
    }

    #[tokio::test]
    async fn token_routes_take_the_bearer_token_as_before() {
        let rig = rig(false, true, true);
        let bearer = rig.state.token.header();
        let (code, _, _) = rig
            .send(
                req(&Method::GET, "/metrics")
                    .header(header::AUTHORIZATION, &bearer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        // Past the token check: this rig has workflows off.
        let (code, _, body) = rig
            .send(
                req(&Method::POST, "/workflow")
                    .header(header::AUTHORIZATION, &bearer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
        let (code, _, _) = rig
            .send(
                axum::http::Request::post("/workflow")
                    .header(header::HOST, "evil.example")
                    .header(header::AUTHORIZATION, &bearer)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        // A session is no bearer token.
        let (cookie, csrf) = rig.session("tess").await;
        let (code, _, _) = rig
            .send(
                req(&Method::POST, "/workflow")
                    .header(header::COOKIE, &cookie)
                    .header("x-csrf-token", &csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn security_headers_are_on_every_response() {
        let rig = rig(false, true, true);
        let (cookie, _) = rig.session("tess").await;
        let mut paths: Vec<(Method, &str)> = rig
            .table()
            .iter()
            .map(|s| (s.method.clone(), s.path))
            .collect();
        paths.push((Method::GET, "/no/such/route"));
        for (m, p) in paths {
            for with_cookie in [false, true] {
                let mut b = req(&m, p);
                if with_cookie {
                    b = b.header(header::COOKIE, &cookie);
                }
                let (code, h, _) = rig.send(b.body(Body::empty()).unwrap()).await;
                assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{m} {p} {code}");
                assert!(CSP.contains("frame-ancestors 'none'") && CSP.contains("base-uri 'none'"));
                assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{m} {p}");
                assert_eq!(h[header::REFERRER_POLICY], "no-referrer", "{m} {p}");
            }
        }
        let (code, h, body) = rig
            .send(
                req(&Method::GET, "/t/view")
                    .header(header::COOKIE, &cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "tess technician"));
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
    }

    #[tokio::test]
    async fn the_session_cookie_is_strict_and_secure_except_on_loopback_http() {
        for secure in [true, false] {
            let rig = rig(true, true, secure);
            let (code, h, _) = rig.login_from("vic", PW, [10, 0, 0, 1]).await;
            assert_eq!(code, StatusCode::SEE_OTHER);
            let c = h[header::SET_COOKIE].to_str().unwrap();
            let attrs: Vec<&str> = c.split(';').map(str::trim).collect();
            let id = attrs[0].strip_prefix("aegis_session=").unwrap();
            assert_eq!(id.len(), 64, "256 random bits, hex: {c}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
            for a in ["HttpOnly", "SameSite=Strict", "Path=/"] {
                assert!(attrs.contains(&a), "{a} missing: {c}");
            }
            assert_eq!(attrs.contains(&"Secure"), secure, "{c}");
        }
    }

    #[tokio::test]
    async fn csrf_is_required_and_roles_are_enforced() {
        let rig = rig(true, true, true);
        let (vic, vic_csrf) = rig.session("vic").await;
        let (tess, csrf) = rig.session("tess").await;
        let post = |cookie: &str| {
            req(&Method::POST, "/t/change").header(header::COOKIE, format!("theme=dark; {cookie}"))
        };
        // Missing, wrong, another session's: 403.
        for b in [
            post(&tess),
            post(&tess).header("x-csrf-token", "0".repeat(64)),
            post(&tess).header("x-csrf-token", &vic_csrf),
        ] {
            let (code, _, _) = rig.send(b.body(Body::empty()).unwrap()).await;
            assert_eq!(code, StatusCode::FORBIDDEN);
        }
        let (code, _, _) = rig
            .send(
                post(&tess)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from("csrf=nope&x=1"))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        // Right, as a header or a form field: through, with the viewer.
        let (code, _, body) = rig
            .send(
                post(&tess)
                    .header("x-csrf-token", &csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "tess technician"));
        let (code, _, _) = rig
            .send(
                post(&tess)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(format!("x=1&csrf={csrf}")))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::OK);
        // A viewer with its right token on a technician route, a technician on an admin one.
        let (code, _, _) = rig
            .send(
                post(&vic)
                    .header("x-csrf-token", &vic_csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        let (code, _, _) = rig
            .send(
                req(&Method::DELETE, "/t/admin")
                    .header(header::COOKIE, &tess)
                    .header("x-csrf-token", &csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        // Logout needs the token too, and ends the session.
        let (code, _, _) = rig
            .send(
                req(&Method::POST, "/logout")
                    .header(header::COOKIE, &tess)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        let (code, h, _) = rig
            .send(
                req(&Method::POST, "/logout")
                    .header(header::COOKIE, &tess)
                    .header("x-csrf-token", &csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::SEE_OTHER);
        assert!(
            h[header::SET_COOKIE]
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
        let (code, _, _) = rig
            .send(
                post(&tess)
                    .header("x-csrf-token", &csrf)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        // Sessions expire.
        rig.clock.advance(auth::SESSION_TTL);
        let (code, _, _) = rig
            .send(
                req(&Method::GET, "/t/view")
                    .header(header::COOKIE, &vic)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn wrong_and_unknown_users_get_one_answer_and_failures_lock_out() {
        let rig = rig(true, true, true);
        let wrong = rig.login_from("vic", "wrong horse", [10, 0, 0, 2]).await;
        let unknown = rig.login_from("nobody", PW, [10, 0, 0, 3]).await;
        assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
        assert_eq!((wrong.0, &wrong.2), (unknown.0, &unknown.2));
        assert!(wrong.1.get(header::SET_COOKIE).is_none());
        // Per user: failures from several addresses lock the name, even for the right
        // password, until the lockout ends.
        for i in 1..auth::MAX_FAILURES {
            let (code, _, _) = rig
                .login_from("vic", "wrong horse", [10, 0, 1, i as u8])
                .await;
            assert_eq!(code, StatusCode::UNAUTHORIZED);
        }
        let (code, _, _) = rig.login_from("vic", PW, [10, 0, 2, 1]).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
        rig.clock.advance(auth::LOCKOUT - Duration::from_secs(1));
        let (code, _, _) = rig.login_from("vic", PW, [10, 0, 2, 1]).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
        // Others are not locked.
        let (code, _, _) = rig.login_from("tess", PW, [10, 0, 2, 1]).await;
        assert_eq!(code, StatusCode::SEE_OTHER);
        rig.clock.advance(Duration::from_secs(2));
        let (code, _, _) = rig.login_from("vic", PW, [10, 0, 2, 1]).await;
        assert_eq!(code, StatusCode::SEE_OTHER);
        // Per address: guesses at many names from one address lock that address.
        for i in 0..auth::MAX_FAILURES {
            rig.login_from(&format!("guess{i}"), PW, [10, 9, 9, 9])
                .await;
        }
        let (code, _, _) = rig.login_from("tess", PW, [10, 9, 9, 9]).await;
        assert_eq!(code, StatusCode::TOO_MANY_REQUESTS);
    }

    #[tokio::test]
    async fn without_accounts_the_login_page_says_how_to_create_one() {
        let rig = rig(true, false, true);
        let (code, h, body) = rig
            .send(req(&Method::GET, "/login").body(Body::empty()).unwrap())
            .await;
        assert_eq!(code, StatusCode::OK);
        assert!(body.contains("aegis user add"), "{body}");
        assert!(!body.contains("<form"), "{body}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        let (code, _, _) = rig.login_from("admin", "admin", [10, 0, 0, 1]).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let rig = super::route_tests::rig(true, true, true);
        let (_, _, body) = rig
            .send(req(&Method::GET, "/login").body(Body::empty()).unwrap())
            .await;
        assert!(
            body.contains("<form") && !body.contains("aegis user add"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn traversal_and_oversized_bodies_are_refused() {
        let rig = rig(true, true, true);
        let (cookie, _) = rig.session("vic").await;
        // No file route takes a path: traversal finds no route, or a stream id that is not
        // a running stream (named in the answer, nothing read).
        for path in [
            "/static/../../Cargo.toml",
            "/static/app.js/../../../etc/passwd",
            "/static/%2e%2e/%2e%2e/etc/passwd",
            "/api/live/..%2F..%2Fetc%2Fpasswd/frame.jpg",
            "/api/live/../../etc/passwd/frame.jpg",
        ] {
            let (code, _, body) = rig
                .send(
                    req(&Method::GET, path)
                        .header(header::COOKIE, &cookie)
                        .body(Body::empty())
                        .unwrap(),
                )
                .await;
            assert_eq!(code, StatusCode::NOT_FOUND, "{path}: {body}");
            assert!(
                !body.contains("root:") && !body.contains("[workspace]"),
                "{path}"
            );
        }
        // Bodies over the limit: 413 before anything reads them.
        let big = vec![b'a'; aegis_ota::maml::MAX_DOCUMENT_BYTES + 2];
        let (code, _, _) = rig
            .send(
                req(&Method::POST, "/workflow")
                    .header(header::AUTHORIZATION, rig.state.token.header())
                    .body(Body::from(big.clone()))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
        let mut login = req(&Method::POST, "/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(big))
            .unwrap();
        login
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([10, 0, 0, 9], 4000))));
        let (code, _, _) = rig.send(login).await;
        assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// The live view's socket, on a real server: a session and this host's Origin get the
    /// upgrade (and a 404 naming the running streams when the stream does not run); a
    /// foreign Origin is refused even with the session cookie; no session, no socket.
    #[tokio::test]
    async fn the_live_socket_needs_a_session_and_this_origin() {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let rig = rig(true, true, true);
        let (cookie, _) = rig.session("vic").await;
        let slot = rig.state.pages.live.slot("cam0");
        slot.set_running(true);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = build(rig.state.clone(), rig.table())
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let connect = |stream: &str, cookie: Option<&str>, origin: Option<String>| {
            let mut r = format!("ws://{addr}/api/live/{stream}/ws")
                .into_client_request()
                .unwrap();
            if let Some(c) = cookie {
                r.headers_mut().insert(header::COOKIE, c.parse().unwrap());
            }
            if let Some(o) = origin {
                r.headers_mut().insert(header::ORIGIN, o.parse().unwrap());
            }
            tokio_tungstenite::connect_async(r)
        };
        let status = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("{e}"),
        };
        let own = Some(format!("http://{addr}"));
        let (ws, _) = connect("cam0", Some(&cookie), own.clone()).await.unwrap();
        assert_eq!(slot.viewers(), 1);
        drop(ws);
        assert_eq!(status(connect("cam0", None, own.clone()).await), 401);
        let foreign = Some("https://evil.example".to_string());
        assert_eq!(status(connect("cam0", Some(&cookie), foreign).await), 403);
        let other_port = Some(format!("http://127.0.0.1:{}", addr.port() + 1));
        assert_eq!(
            status(connect("cam0", Some(&cookie), other_port).await),
            403
        );
        assert_eq!(status(connect("nope", Some(&cookie), own).await), 404);
    }

    #[tokio::test]
    async fn a_page_load_past_the_role_gets_a_page_that_says_why() {
        let rig = rig(true, true, true);
        let (vic, _) = rig.session("vic").await;
        let page = |accept: &str| {
            req(&Method::GET, "/t/tech")
                .header(header::COOKIE, &vic)
                .header(header::ACCEPT, accept)
                .body(Body::empty())
                .unwrap()
        };
        let (code, h, body) = rig.send(page("text/html,*/*")).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert!(
            h[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(
            body.contains("<p role=\"alert\">vic is a viewer; this needs a technician</p>"),
            "{body}"
        );
        assert!(body.contains("name=\"viewport\""), "{body}");
        // A script's request still gets JSON.
        let (code, h, body) = rig.send(page("application/json")).await;
        assert_eq!(code, StatusCode::FORBIDDEN);
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
        assert!(body.contains("this needs a technician"), "{body}");
        // The technician gets through.
        let (tess, _) = rig.session("tess").await;
        let (code, _, body) = rig
            .send(
                req(&Method::GET, "/t/tech")
                    .header(header::COOKIE, &tess)
                    .header(header::ACCEPT, "text/html")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!((code, body.as_str()), (StatusCode::OK, "tess technician"));
    }
}
