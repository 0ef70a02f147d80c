//! Events (`GET /events`, `GET /api/events`, `GET /api/events.csv`): the store's events,
//! read-only, newest first, filtered by kind, stream, track and time, 100 to a page.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout, text};
use crate::web::Viewer;

/// Events per page.
pub const PAGE_LIMIT: usize = 100;
/// The most rows one CSV download holds.
pub const CSV_LIMIT: usize = 100_000;

/// The filters as sent (every one optional; empty means absent).
#[derive(Debug, Default)]
pub(super) struct RawFilter {
    kind: Option<String>,
    stream: Option<String>,
    track: Option<String>,
    since: Option<String>,
    until: Option<String>,
    page: Option<String>,
}

/// A filter parameter that is not valid; answered with 400.
#[derive(Debug, thiserror::Error)]
#[error("query parameter {param}={value:?}: {expected}")]
pub struct FilterError {
    /// The parameter's name.
    pub param: &'static str,
    /// Its value as sent.
    pub value: String,
    /// What it should be.
    pub expected: &'static str,
}

/// The validated filters.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Filter {
    kind: Option<String>,
    stream: Option<String>,
    track: Option<i64>,
    since_us: Option<i64>,
    until_us: Option<i64>,
    page: usize,
}

fn present(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl RawFilter {
    /// The filters in `uri`'s query.
    pub(super) fn from_uri(uri: &Uri) -> Self {
        let mut q = super::query(uri);
        RawFilter {
            kind: q.remove("kind"),
            stream: q.remove("stream"),
            track: q.remove("track"),
            since: q.remove("since"),
            until: q.remove("until"),
            page: q.remove("page"),
        }
    }

    /// Validates each parameter, naming the first bad one.
    pub(super) fn validate(&self) -> Result<Filter, FilterError> {
        let bad = |param, value: &str, expected| FilterError {
            param,
            value: value.to_string(),
            expected,
        };
        let now = crate::store::now_us();
        let time = |param, v: Option<&str>| {
            v.map(|t| {
                crate::store::export::parse_since(t, now).map_err(|_| {
                    bad(
                        param,
                        t,
                        "expected RFC 3339 UTC (2026-11-26T10:00:00Z) or an age (30m, 2h, 7d)",
                    )
                })
            })
            .transpose()
        };
        let kind = present(&self.kind);
        if let Some(k) = kind
            && (k.len() > 64
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)))
        {
            return Err(bad("kind", k, "expected up to 64 letters, digits, _ . -"));
        }
        let stream = present(&self.stream);
        if let Some(s) = stream
            && (s.len() > 128 || s.chars().any(char::is_control))
        {
            return Err(bad(
                "stream",
                s,
                "expected a stream id (up to 128 characters)",
            ));
        }
        let track = present(&self.track)
            .map(|t| {
                t.parse::<u32>()
                    .map(i64::from)
                    .map_err(|_| bad("track", t, "expected a track number"))
            })
            .transpose()?;
        let since_us = time("since", present(&self.since))?;
        let until_us = time("until", present(&self.until))?;
        let page = present(&self.page)
            .map(|p| {
                p.parse::<usize>()
                    .ok()
                    .filter(|p| (1..=1_000_000).contains(p))
                    .ok_or_else(|| bad("page", p, "expected a page number from 1"))
            })
            .transpose()?
            .unwrap_or(1);
        Ok(Filter {
            kind: kind.map(str::to_string),
            stream: stream.map(str::to_string),
            track,
            since_us,
            until_us,
            page,
        })
    }
}

/// Why events could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// The query failed.
    #[error("reading events: {0}")]
    Query(#[from] rusqlite::Error),
}

/// One event row.
#[derive(Debug)]
pub(super) struct Row {
    id: String,
    ts_us: i64,
    stream: Option<String>,
    kind: String,
    payload: String,
}

impl Row {
    fn payload(&self) -> Value {
        serde_json::from_str(&self.payload).unwrap_or(Value::Null)
    }

    /// `(lat, lon)` when the payload has a pose.
    fn geotag(&self) -> Option<(f64, f64)> {
        let p = self.payload();
        Some((p["pose"]["lat"].as_f64()?, p["pose"]["lon"].as_f64()?))
    }

    fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "ts_us": self.ts_us,
            "time": crate::store::export::format_utc(self.ts_us),
            "stream": self.stream,
            "kind": self.kind,
            "payload": self.payload(),
            "geotag": self.geotag().map(|(lat, lon)| json!({ "lat": lat, "lon": lon })),
        })
    }
}

/// Matching events, newest first: `limit` of them after skipping `offset`.
pub(super) fn read(
    path: &std::path::Path,
    f: &Filter,
    offset: usize,
    limit: usize,
) -> Result<Vec<Row>, ReadError> {
    use rusqlite::types::Value as V;
    let conn = crate::store::open_reader(path)?;
    let mut sql = String::from("SELECT id, ts_us, stream, kind, payload FROM events WHERE 1=1");
    let mut args: Vec<V> = Vec::new();
    let mut cond = |c: &str, v: V| {
        sql.push_str(&format!(" AND {c} ?{}", args.len() + 1));
        args.push(v);
    };
    if let Some(k) = &f.kind {
        cond("kind =", V::Text(k.clone()));
    }
    if let Some(s) = &f.stream {
        cond("stream =", V::Text(s.clone()));
    }
    if let Some(t) = f.track {
        cond("json_extract(payload, '$.track_id') =", V::Integer(t));
    }
    if let Some(t) = f.since_us {
        cond("ts_us >=", V::Integer(t));
    }
    if let Some(t) = f.until_us {
        cond("ts_us <", V::Integer(t));
    }
    sql.push_str(&format!(
        " ORDER BY ts_us DESC, id DESC LIMIT ?{} OFFSET ?{}",
        args.len() + 1,
        args.len() + 2
    ));
    args.push(V::Integer(limit as i64));
    args.push(V::Integer(offset as i64));
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(args), |r| {
        Ok(Row {
            id: r.get(0)?,
            ts_us: r.get(1)?,
            stream: r.get(2)?,
            kind: r.get(3)?,
            payload: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// One page of events (and whether more follow).
fn page_of(s: &PagesState, f: &Filter) -> Result<(Vec<Row>, bool), ReadError> {
    let mut rows = read(&s.store_path, f, (f.page - 1) * PAGE_LIMIT, PAGE_LIMIT + 1)?;
    let more = rows.len() > PAGE_LIMIT;
    rows.truncate(PAGE_LIMIT);
    Ok((rows, more))
}

fn error(code: StatusCode, e: impl std::fmt::Display) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        json!({ "error": e.to_string() }).to_string(),
    )
        .into_response()
}

/// `GET /api/events`.
pub(super) async fn api(State(s): State<Arc<PagesState>>, uri: Uri) -> Response {
    let raw = RawFilter::from_uri(&uri);
    let f = match raw.validate() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let r = tokio::task::spawn_blocking(move || {
        page_of(&s, &f).map(|(rows, more)| {
            json!({
                "page": f.page,
                "limit": PAGE_LIMIT,
                "more": more,
                "events": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            })
        })
    })
    .await;
    match r {
        Ok(Ok(v)) => super::json(v),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// The rows as CSV (RFC 4180 quoting, header row).
pub(super) fn to_csv(rows: &[Row]) -> String {
    use crate::store::export::csv_field;
    let mut out = String::from("time,id,stream,kind,lat,lon,payload\n");
    for r in rows {
        let (lat, lon) = r.geotag().map_or((String::new(), String::new()), |(a, o)| {
            (a.to_string(), o.to_string())
        });
        let fields = [
            crate::store::export::format_utc(r.ts_us),
            r.id.clone(),
            r.stream.clone().unwrap_or_default(),
            r.kind.clone(),
            lat,
            lon,
            r.payload.clone(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

/// `GET /api/events.csv`: every matching event (up to [`CSV_LIMIT`]), newest first.
pub(super) async fn csv(State(s): State<Arc<PagesState>>, uri: Uri) -> Response {
    let raw = RawFilter::from_uri(&uri);
    let f = match raw.validate() {
        Ok(f) => f,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let r = tokio::task::spawn_blocking(move || {
        read(&s.store_path, &f, 0, CSV_LIMIT).map(|rows| to_csv(&rows))
    })
    .await;
    match r {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"events.csv\"",
                ),
            ],
            body,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
    }
}

/// `GET /events`: the filter form and one page of events.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer, uri: Uri) -> Response {
    let raw = RawFilter::from_uri(&uri);
    let input = |name: &str, v: &Option<String>| {
        format!(
            "<label>{name} <input name=\"{name}\" value=\"{}\"></label>",
            esc(v.as_deref().unwrap_or(""))
        )
    };
    let form = format!(
        "<form method=\"get\" action=\"/events\" class=\"filters\">{}{}{}{}{}<button>Filter</button></form>",
        input("kind", &raw.kind),
        input("stream", &raw.stream),
        input("track", &raw.track),
        input("since", &raw.since),
        input("until", &raw.until),
    );
    let query = |page: usize| {
        let mut q: Vec<String> = [
            ("kind", &raw.kind),
            ("stream", &raw.stream),
            ("track", &raw.track),
            ("since", &raw.since),
            ("until", &raw.until),
        ]
        .iter()
        .filter_map(|(k, v)| present(v).map(|v| format!("{k}={}", url_encode(v))))
        .collect();
        q.push(format!("page={page}"));
        q.join("&")
    };
    let f = match raw.validate() {
        Ok(f) => f,
        Err(e) => {
            let body = format!("{form}<p class=\"error\">{}</p>", esc(&e.to_string()));
            return (
                StatusCode::BAD_REQUEST,
                layout(&viewer, "Events", None, &body),
            )
                .into_response();
        }
    };
    let page = f.page;
    let r = tokio::task::spawn_blocking(move || page_of(&s, &f)).await;
    let (rows, more) = match r {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            let body = format!("{form}<p class=\"error\">{}</p>", esc(&e.to_string()));
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                layout(&viewer, "Events", None, &body),
            )
                .into_response();
        }
        Err(e) => {
            let body = format!("<p class=\"error\">{}</p>", esc(&e.to_string()));
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                layout(&viewer, "Events", None, &body),
            )
                .into_response();
        }
    };
    let mut body = form;
    body.push_str(&format!(
        "<p><a href=\"/api/events.csv?{}\">Download CSV</a></p>",
        esc(&query(page))
    ));
    body.push_str("<table class=\"grid\"><tr><th>Time (UTC)</th><th>Stream</th><th>Kind</th><th>Geotag</th><th>Details</th></tr>");
    for r in &rows {
        let geo = r
            .geotag()
            .map_or(String::new(), |(lat, lon)| format!("{lat:.6}, {lon:.6}"));
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            esc(&crate::store::export::format_utc(r.ts_us)),
            esc(r.stream.as_deref().unwrap_or("")),
            esc(&r.kind),
            esc(&geo),
            esc(&text(&r.payload())),
        ));
    }
    body.push_str("</table><nav class=\"pager\">");
    if page > 1 {
        body.push_str(&format!(
            "<a href=\"/events?{}\">Newer</a> ",
            esc(&query(page - 1))
        ));
    }
    if more {
        body.push_str(&format!(
            "<a href=\"/events?{}\">Older</a>",
            esc(&query(page + 1))
        ));
    }
    body.push_str("</nav>");
    layout(&viewer, "Events", None, &body).into_response()
}

/// Percent-encodes a query value (everything but unreserved characters).
pub(super) fn url_encode(v: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(v, RESERVED).to_string()
}
