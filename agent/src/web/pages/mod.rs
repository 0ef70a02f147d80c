//! The technician web page: server-rendered HTML pages (overview, live view, cameras,
//! events, sensors, models, logs, workflows, config) and the JSON they refresh from every
//! 2 s, plus the page's own CSS and scripts (served from the binary: no CDN, no inline script
//! or style, so the CSP can be `script-src 'self'; style-src 'self'`). The config editor, the
//! camera forms and the workflow upload change the device: they save through
//! [`crate::web::edit`] and the workflow applier.
//!
//! Every value interpolated into HTML goes through [`esc`]. Access control (sessions, roles,
//! CSRF) is the web module's middleware; each route below names the role it needs.

mod cameras;
mod clips;
mod config;
#[cfg(test)]
mod edit_tests;
mod events;
mod hls;
mod liveview;
mod logs;
mod models;
mod overview;
mod sensors;
#[cfg(test)]
mod tests;
mod whep;
mod whip;
mod workflows;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[cfg(test)]
use axum::Router;
use axum::http::{Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::on;

use crate::logging::LogRing;
use crate::metrics::Metrics;
use crate::web::{Access, HandlerFn, Role, RouteSpec, Viewer};

pub use events::FilterError;
pub use models::ModelsState;

/// What the pages read.
pub struct PagesState {
    /// The metrics registry (streams' health, fps, stage latency).
    pub metrics: Arc<Metrics>,
    /// Device id.
    pub device: String,
    /// The backend in use, and why the configured one was not, if it fell back.
    pub backend: String,
    /// The backend in use, for the GPU's memory on the overview (None in tests).
    pub gpu: Option<aegis_hal::backend::Backend>,
    /// Process start, for uptime.
    pub started: Instant,
    /// The event store's database file (read with read-only connections).
    pub store_path: PathBuf,
    /// The effective config, passwords already [`redact`]ed.
    pub config: serde_json::Value,
    /// The workflow applier's status (`Null` when unknown or workflows are off).
    pub workflow: Arc<Mutex<serde_json::Value>>,
    /// Recent log lines.
    pub logs: Arc<LogRing>,
    /// Where thermal zones are read (`/sys/class/thermal`; a temp dir in tests).
    pub thermal_root: PathBuf,
    /// The streams' live video (the live view).
    pub live: Arc<crate::live::LiveHub>,
    /// The streams the `hls` and `webrtc` sinks serve (`/hls/…`, `/whep/…`) and the `whip`
    /// sources' endpoints (`/whip/…`).
    pub served: Arc<crate::outputs::Served>,
    /// The streams' next frames as JPEG (the live view's fallback).
    pub snapshots: Arc<crate::pipeline::snapshot::SnapshotHub>,
    /// The sensors' newest readings (all off when no sensor is configured).
    pub readings: Arc<crate::sensing::Readings>,
    /// What the models page reads.
    pub models: ModelsState,
    /// The configuration file's editor (None: this run has no file, e.g. `aegis demo`,
    /// and the config page only shows the configuration).
    pub editor: Option<Arc<crate::web::edit::Editor>>,
    /// The workflow applier's local queue, for uploads (None: workflows are off).
    pub workflows: Option<tokio::sync::mpsc::Sender<crate::workflows::apply::Request>>,
    /// The applier's counters (`busy`).
    pub counters: Option<Arc<crate::workflows::apply::ApplyCounters>>,
    /// Where the pages' own audit rows go (uploads).
    pub store: Option<crate::store::StoreHandle>,
    /// Event clips (None: this run keeps none).
    pub evidence: Option<Arc<crate::evidence::EvidenceHost>>,
}

/// The pages' routes, each with the least role that may use it; the web module's route
/// table carries them, so its one access check covers every page. The static files hold no
/// data and are public (the login page uses them).
pub static ROUTES: &[RouteSpec] = &[
    page(Method::GET, "/", Access::Viewer, |m| on(m, overview::page)),
    page(Method::GET, "/api/overview", Access::Viewer, |m| {
        on(m, overview::api)
    }),
    page(Method::GET, "/live", Access::Viewer, |m| {
        on(m, liveview::page)
    }),
    page(Method::GET, "/api/live/{stream}/ws", Access::Viewer, |m| {
        on(m, liveview::ws)
    }),
    page(
        Method::GET,
        "/api/live/{stream}/frame.jpg",
        Access::Viewer,
        |m| on(m, liveview::jpeg),
    ),
    page(Method::GET, "/hls/{stream}/{file}", Access::Stream, |m| {
        on(m, hls::file)
    }),
    page(Method::POST, "/whep/{stream}", Access::Viewer, |m| {
        on(m, whep::offer)
    }),
    page(
        Method::DELETE,
        "/whep/{stream}/{session}",
        Access::Viewer,
        |m| on(m, whep::end),
    ),
    page(Method::POST, "/whip/{stream}", Access::Publisher, |m| {
        on(m, whip::offer)
    }),
    page(
        Method::DELETE,
        "/whip/{stream}/{session}",
        Access::Publisher,
        |m| on(m, whip::end),
    ),
    // The CORS preflight of browser publishers on another origin (no credential: none is
    // sent in a preflight).
    page(Method::OPTIONS, "/whip/{stream}", Access::Public, |m| {
        on(m, whip::preflight)
    }),
    page(
        Method::OPTIONS,
        "/whip/{stream}/{session}",
        Access::Public,
        |m| on(m, whip::preflight),
    ),
    page(Method::GET, "/cameras", Access::Viewer, |m| {
        on(m, cameras::page)
    }),
    page(Method::GET, "/api/cameras", Access::Viewer, |m| {
        on(m, cameras::api)
    }),
    page(Method::GET, "/events", Access::Viewer, |m| {
        on(m, events::page)
    }),
    page(Method::GET, "/api/events", Access::Viewer, |m| {
        on(m, events::api)
    }),
    page(Method::GET, "/api/events.csv", Access::Technician, |m| {
        on(m, events::csv)
    }),
    page(Method::GET, "/clips", Access::Viewer, |m| {
        on(m, clips::page)
    }),
    page(Method::GET, "/api/clips", Access::Viewer, |m| {
        on(m, clips::api)
    }),
    page(Method::POST, "/api/clips", Access::Technician, |m| {
        on(m, clips::trigger)
    }),
    page(
        Method::GET,
        "/api/clips/{id}/video",
        Access::Technician,
        |m| on(m, clips::video),
    ),
    page(
        Method::POST,
        "/api/clips/{id}/hold",
        Access::Technician,
        |m| on(m, clips::hold),
    ),
    page(Method::GET, "/sensors", Access::Viewer, |m| {
        on(m, sensors::page)
    }),
    page(Method::GET, "/api/sensors", Access::Viewer, |m| {
        on(m, sensors::api)
    }),
    page(Method::GET, "/models", Access::Viewer, |m| {
        on(m, models::page)
    }),
    page(Method::GET, "/api/models", Access::Viewer, |m| {
        on(m, models::api)
    }),
    page(Method::GET, "/logs", Access::Technician, |m| {
        on(m, logs::page)
    }),
    page(Method::GET, "/api/logs", Access::Technician, |m| {
        on(m, logs::api)
    }),
    page(Method::GET, "/api/logs.txt", Access::Technician, |m| {
        on(m, logs::txt)
    }),
    page(Method::POST, "/api/cameras", Access::Technician, |m| {
        on(m, cameras::change)
    }),
    page(Method::GET, "/workflows", Access::Viewer, |m| {
        on(m, workflows::page)
    }),
    page(Method::GET, "/api/workflows", Access::Viewer, |m| {
        on(m, workflows::api)
    }),
    page(
        Method::GET,
        "/workflows/receipt/{id}",
        Access::Viewer,
        |m| on(m, workflows::receipt),
    ),
    page(Method::POST, "/api/workflows", Access::Technician, |m| {
        on(m, workflows::upload)
    }),
    page(Method::GET, "/config", Access::Technician, |m| {
        on(m, config::page)
    }),
    page(
        Method::POST,
        "/api/config/validate",
        Access::Technician,
        |m| on(m, config::validate).layer(axum::extract::DefaultBodyLimit::max(config::BODY_LIMIT)),
    ),
    page(Method::POST, "/api/config", Access::Technician, |m| {
        on(m, config::save).layer(axum::extract::DefaultBodyLimit::max(config::BODY_LIMIT))
    }),
    page(Method::GET, "/static/app.css", Access::Public, |m| {
        on(m, css)
    }),
    page(Method::GET, "/static/app.js", Access::Public, |m| on(m, js)),
    // Browsers ask for it on every page: an empty answer instead of a 404 in their console.
    page(Method::GET, "/favicon.ico", Access::Public, |m| {
        on(m, || async { StatusCode::NO_CONTENT })
    }),
    page(Method::GET, "/static/live.js", Access::Public, |m| {
        on(m, liveview::js)
    }),
    page(Method::GET, "/static/sensors.js", Access::Public, |m| {
        on(m, sensors_js)
    }),
    page(Method::GET, "/static/config.js", Access::Public, |m| {
        on(m, || script(include_str!("../static/config.js")))
    }),
    page(Method::GET, "/static/cameras.js", Access::Public, |m| {
        on(m, || script(include_str!("../static/cameras.js")))
    }),
    page(Method::GET, "/static/workflows.js", Access::Public, |m| {
        on(m, || script(include_str!("../static/workflows.js")))
    }),
];

const fn page(method: Method, path: &'static str, access: Access, handler: HandlerFn) -> RouteSpec {
    RouteSpec {
        method,
        path,
        access,
        handler,
    }
}

/// A refusal as plain text (the HLS and WHEP endpoints: players and scripts, not pages).
fn refuse_plain(code: StatusCode, why: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        why,
    )
        .into_response()
}

/// The pages alone over `state`, without the access check, as an admin sees them (the
/// handler tests; the access check has its own tests over the whole table in `web`).
#[cfg(test)]
pub(crate) fn router(state: Arc<PagesState>) -> Router {
    router_as(
        state,
        Viewer {
            user: "ada".into(),
            role: Role::Admin,
            csrf: "c5rf".into(),
        },
    )
}

/// [`router`] as `viewer` sees the pages (what the access check would hand the handlers).
#[cfg(test)]
pub(crate) fn router_as(state: Arc<PagesState>, viewer: Viewer) -> Router {
    use axum::routing::get;
    Router::new()
        .route("/", get(overview::page))
        .route("/api/overview", get(overview::api))
        .route("/live", get(liveview::page))
        .route("/api/live/{stream}/ws", get(liveview::ws))
        .route("/api/live/{stream}/frame.jpg", get(liveview::jpeg))
        .route("/hls/{stream}/{file}", get(hls::file))
        .route("/whep/{stream}", axum::routing::post(whep::offer))
        .route("/whep/{stream}/{session}", axum::routing::delete(whep::end))
        .route("/whip/{stream}", axum::routing::post(whip::offer))
        .route("/whip/{stream}/{session}", axum::routing::delete(whip::end))
        .route("/cameras", get(cameras::page))
        .route("/api/cameras", get(cameras::api))
        .route("/events", get(events::page))
        .route("/api/events", get(events::api))
        .route("/api/events.csv", get(events::csv))
        .route("/sensors", get(sensors::page))
        .route("/api/sensors", get(sensors::api))
        .route("/models", get(models::page))
        .route("/api/models", get(models::api))
        .route("/logs", get(logs::page))
        .route("/api/logs", get(logs::api))
        .route("/api/logs.txt", get(logs::txt))
        .route("/config", get(config::page))
        .route("/workflows", get(workflows::page))
        .route("/api/workflows", get(workflows::api))
        .route("/workflows/receipt/{id}", get(workflows::receipt))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .route("/static/live.js", get(liveview::js))
        .route("/static/sensors.js", get(sensors_js))
        .route(
            "/static/config.js",
            get(|| script(include_str!("../static/config.js"))),
        )
        .route(
            "/static/cameras.js",
            get(|| script(include_str!("../static/cameras.js"))),
        )
        .route(
            "/static/workflows.js",
            get(|| script(include_str!("../static/workflows.js"))),
        )
        .layer(axum::Extension(viewer))
        .with_state(state)
}

/// The config as JSON with its passwords [`redact`]ed (what the config page and the fleet's
/// `config` command show).
pub fn redacted_config(cfg: &aegis_config::AgentConfig) -> serde_json::Value {
    let mut v = serde_json::to_value(cfg).unwrap_or_default();
    redact(&mut v);
    v
}

/// Secret values (`password`, `stream_key`, `passphrase`), and the password or SRT
/// passphrase inside URLs (`url`, `*_url`), replaced by `***` anywhere in a JSON document.
pub fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if crate::web::edit::is_secret_key(k) && !x.is_null() {
                    *x = serde_json::json!("***");
                } else if let (true, Some(u)) = (k == "url" || k.ends_with("_url"), x.as_str()) {
                    *x = serde_json::json!(crate::web::edit::redact_url(u));
                } else {
                    redact(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `s` with `&`, `<`, `>`, `"` and `'` HTML-escaped (safe in text and quoted attributes).
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The page frame: navigation (the pages `viewer`'s role may open), who is logged in with
/// the log-out button (a form carrying the session's CSRF token), the stylesheet and the
/// script. `api` is the JSON endpoint the script refreshes `data-key` elements from (None: no
/// refresh). `body` is HTML already escaped by the caller.
fn layout(viewer: &Viewer, title: &str, api: Option<&str>, body: &str) -> Html<String> {
    layout_with(viewer, title, api, &[], body)
}

/// [`layout`] with at most one page script (one of the agent's static files).
fn layout_script(
    viewer: &Viewer,
    title: &str,
    api: Option<&str>,
    body: &str,
    script: Option<&str>,
) -> Html<String> {
    layout_with(viewer, title, api, script.as_slice(), body)
}

/// [`layout`] with the page's own `scripts` (paths of static files) after `app.js`.
fn layout_with(
    viewer: &Viewer,
    title: &str,
    api: Option<&str>,
    scripts: &[&str],
    body: &str,
) -> Html<String> {
    let nav = [
        ("/", "Overview"),
        ("/live", "Live"),
        ("/cameras", "Cameras"),
        ("/events", "Events"),
        ("/clips", "Clips"),
        ("/sensors", "Sensors"),
        ("/models", "Models"),
        ("/logs", "Logs"),
        ("/workflows", "Workflows"),
        ("/config", "Config"),
    ]
    .iter()
    .filter(|(href, _)| may_open(viewer.role, href))
    .map(|(href, name)| {
        let current = if *name == title {
            " aria-current=\"page\""
        } else {
            ""
        };
        format!("<a href=\"{href}\"{current}>{name}</a>")
    })
    .collect::<String>();
    let session = format!(
        "<form method=\"post\" action=\"/logout\" class=\"session\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
         <span>{user} ({role})</span> <button type=\"submit\">Log out</button></form>",
        csrf = esc(&viewer.csrf),
        user = esc(&viewer.user),
        role = viewer.role.as_str(),
    );
    let api = api.map_or(String::new(), |a| format!(" data-api=\"{}\"", esc(a)));
    let scripts: String = scripts
        .iter()
        .map(|s| format!("<script src=\"{}\" defer></script>", esc(s)))
        .collect();
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t} · Aegis Edge</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script>{scripts}</head>\
         <body{api}><header><strong>Aegis Edge</strong><nav>{nav}</nav>{session}</header>\
         <main><h1>{t}</h1>{body}</main></body></html>\n",
        t = esc(title),
    ))
}

/// Whether `role` may open the page at `path` (its `GET` entry in [`ROUTES`]).
fn may_open(role: Role, path: &str) -> bool {
    ROUTES
        .iter()
        .find(|r| r.method == Method::GET && r.path == path)
        .and_then(|r| r.access.role())
        .is_some_and(|need| role >= need)
}

/// `v` as a JSON response.
fn json(v: serde_json::Value) -> Response {
    json_with(StatusCode::OK, v)
}

/// `v` as a JSON response with status `code`.
fn json_with(code: StatusCode, v: serde_json::Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

/// A value shown in a `data-key` element the script keeps fresh.
fn live(key: &str, text: &str) -> String {
    format!("<span data-key=\"{}\">{}</span>", esc(key), esc(text))
}

/// A JSON value as page text (`—` for null, strings unquoted).
fn text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "—".into(),
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

async fn css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../static/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    script(include_str!("../static/app.js")).await
}

/// A page script of the agent's static files.
async fn script(text: &'static str) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        text,
    )
}

async fn sensors_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/sensors.js"),
    )
}

/// A request's query parameters, `+` and `%XX` decoded (a later repeat wins).
fn query(uri: &axum::http::Uri) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// One sample of the rendered metrics: its labels and value.
struct Sample {
    labels: Vec<(String, String)>,
    value: f64,
}

impl Sample {
    fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The samples of metric `name` in a Prometheus text exposition (the one `/metrics` serves:
/// the registry's single source of its values).
fn samples(exposition: &str, name: &str) -> Vec<Sample> {
    exposition
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, r) = parse_labels(r)?;
                (labels, r.strip_prefix('}')?)
            } else {
                (Vec::new(), rest)
            };
            let value = value.split_whitespace().next()?.parse().ok()?;
            Some(Sample { labels, value })
        })
        .collect()
}

/// `a="x",b="y\"z"` up to the closing `}`.
fn parse_labels(mut r: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    while !r.starts_with('}') {
        let (k, rest) = r.split_once("=\"")?;
        let mut v = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => v.push('\n'),
                    c => v.push(c),
                },
                (_, c) => v.push(c),
            }
        };
        out.push((k.to_string(), v));
        r = &rest[end + 1..];
        r = r.strip_prefix(',').unwrap_or(r);
    }
    Some((out, r))
}

/// Per stream (every watched source, and any other stream with samples): fps in (from the decoder), fps out (through the pipeline) and mean latency in
/// ms per stage since start.
fn stream_rates(metrics: &Metrics) -> std::collections::BTreeMap<String, serde_json::Value> {
    let text = metrics.render();
    let mut out: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    let empty = || serde_json::json!({ "fps_in": null, "fps_out": null, "stages": {} });
    for (id, _) in metrics.source_health() {
        out.insert(id, empty());
    }
    for (metric, key) in [
        ("aegis_source_fps", "fps_in"),
        ("aegis_stream_fps", "fps_out"),
    ] {
        for s in samples(&text, metric) {
            if let Some(st) = s.label("stream") {
                let e = out.entry(st.to_string()).or_insert_with(empty);
                e[key] = serde_json::json!((s.value * 10.0).round() / 10.0);
            }
        }
    }
    let counts = samples(&text, "aegis_stage_latency_seconds_count");
    for s in samples(&text, "aegis_stage_latency_seconds_sum") {
        let (Some(st), Some(stage)) = (s.label("stream"), s.label("stage")) else {
            continue;
        };
        let n = counts
            .iter()
            .find(|c| c.label("stream") == Some(st) && c.label("stage") == Some(stage))
            .map_or(0.0, |c| c.value);
        if n > 0.0 {
            let e = out.entry(st.to_string()).or_insert_with(empty);
            e["stages"][stage] = serde_json::json!((s.value / n * 1e5).round() / 100.0);
        }
    }
    out
}
