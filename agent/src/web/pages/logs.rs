//! Logs (`GET /logs`, `GET /api/logs?level=&after=`, `GET /api/logs.txt`): the recent lines
//! of the log ring ([`crate::logging::ring`]); the page tails them live by sequence number.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::events::FilterError;
use super::{PagesState, esc, layout};
use crate::logging::LogLine;
use crate::web::Viewer;

/// `level` and `after` as sent.
#[derive(Debug, Default)]
pub(super) struct RawQuery {
    level: Option<String>,
    after: Option<String>,
}

impl RawQuery {
    /// `level` and `after` from `uri`'s query.
    fn from_uri(uri: &Uri) -> Self {
        let mut q = super::query(uri);
        RawQuery {
            level: q.remove("level"),
            after: q.remove("after"),
        }
    }

    /// The level floor and the sequence number to start after.
    fn validate(&self) -> Result<(Option<tracing::Level>, u64), FilterError> {
        let level = self
            .level
            .as_deref()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.parse::<tracing::Level>().map_err(|_| FilterError {
                    param: "level",
                    value: l.to_string(),
                    expected: "expected error, warn, info, debug or trace",
                })
            })
            .transpose()?;
        let after = self
            .after
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(|a| {
                a.parse::<u64>().map_err(|_| FilterError {
                    param: "after",
                    value: a.to_string(),
                    expected: "expected a sequence number",
                })
            })
            .transpose()?
            .unwrap_or(0);
        Ok((level, after))
    }
}

fn lines(s: &PagesState, q: &RawQuery) -> Result<Vec<LogLine>, Box<Response>> {
    let (level, after) = q.validate().map_err(|e| {
        Box::new(
            (
                StatusCode::BAD_REQUEST,
                [(header::CONTENT_TYPE, "application/json")],
                json!({ "error": e.to_string() }).to_string(),
            )
                .into_response(),
        )
    })?;
    Ok(s.logs.after(after, level))
}

/// One line as text.
fn plain(l: &LogLine) -> String {
    format!(
        "{} {:5} {}: {}",
        crate::store::export::format_utc(l.ts_us),
        l.level,
        l.target,
        l.text
    )
}

/// `GET /api/logs`: `{lines: [{seq, ts_us, level, target, text}], last}`.
pub(super) async fn api(State(s): State<Arc<PagesState>>, uri: Uri) -> Response {
    let q = RawQuery::from_uri(&uri);
    match lines(&s, &q) {
        Ok(l) => {
            let last = l.last().map(|l| l.seq);
            super::json(json!({ "lines": l, "last": last }))
        }
        Err(r) => *r,
    }
}

/// `GET /api/logs.txt`: the same lines as a text download.
pub(super) async fn txt(State(s): State<Arc<PagesState>>, uri: Uri) -> Response {
    let q = RawQuery::from_uri(&uri);
    match lines(&s, &q) {
        Ok(l) => {
            let body: String = l.iter().map(|l| plain(l) + "\n").collect();
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (
                        header::CONTENT_DISPOSITION,
                        "attachment; filename=\"aegis.log\"",
                    ),
                ],
                body,
            )
                .into_response()
        }
        Err(r) => *r,
    }
}

/// `GET /logs`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer, uri: Uri) -> Response {
    let q = RawQuery::from_uri(&uri);
    let l = match lines(&s, &q) {
        Ok(l) => l,
        Err(r) => return *r,
    };
    let level = q.level.as_deref().unwrap_or("");
    let options: String = ["", "error", "warn", "info", "debug", "trace"]
        .iter()
        .map(|o| {
            let sel = if o.eq_ignore_ascii_case(level.trim()) {
                " selected"
            } else {
                ""
            };
            let name = if o.is_empty() { "all" } else { o };
            format!("<option value=\"{o}\"{sel}>{name}</option>")
        })
        .collect();
    let last = l.last().map_or(0, |l| l.seq);
    let mut body = format!(
        "<form method=\"get\" action=\"/logs\" class=\"filters\"><label>Level <select name=\"level\">{options}</select></label>\
         <button>Show</button> <a href=\"/api/logs.txt?level={}\">Download</a></form>\
         <pre id=\"log\" data-tail=\"/api/logs?level={}\" data-after=\"{last}\">",
        esc(level.trim()),
        esc(level.trim()),
    );
    for line in &l {
        body.push_str(&esc(&plain(line)));
        body.push('\n');
    }
    body.push_str("</pre>");
    layout(&viewer, "Logs", None, &body).into_response()
}
