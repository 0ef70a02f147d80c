//! Event clips (`GET /clips`, `GET /api/clips`): what the evidence policy kept, newest first
//! — clips and metadata-only records, deleted ones with why — and the evidence state.
//! Technicians also play a clip (`GET /api/clips/{id}/video`: decrypted on the device,
//! checked against its signed manifest, audited), ask for one now (`POST /api/clips`,
//! `stream=`) and put one under legal hold or release it (`POST /api/clips/{id}/hold`,
//! `hold=1|0`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{PagesState, esc, layout};
use crate::store::{ClipRow, Record, now_us};
use crate::web::{Role, Viewer};

/// Clips per page.
const LIMIT: u32 = 100;
/// The largest clip the page streams (a clip is at most `max_clip_seconds` long).
const MAX_PLAY_BYTES: u64 = 512 << 20;

fn rows(s: &PagesState) -> Result<Vec<ClipRow>, String> {
    crate::evidence::clip_rows(&s.store_path, None, LIMIT)
}

fn status(s: &PagesState) -> serde_json::Value {
    s.evidence
        .as_ref()
        .map_or(json!({ "state": "not configured" }), |e| e.status())
}

/// `GET /api/clips`: `{status, clips}`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    match rows(&s) {
        Ok(r) => super::json(json!({ "status": status(&s), "clips": r })),
        Err(e) => super::json_with(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": e })),
    }
}

fn fmt_time(us: i64) -> String {
    crate::store::export::format_utc(us)
}

/// `GET /clips`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Response {
    let technician = viewer.role >= Role::Technician;
    let st = status(&s);
    let mut body = format!(
        "<p>Evidence: <strong>{}</strong>{}</p>",
        esc(st["state"].as_str().unwrap_or("?")),
        st["error"]
            .as_str()
            .map(|e| format!(" — {}", esc(e)))
            .unwrap_or_default()
    );
    if technician && st["state"] == "on" {
        let streams: String = s
            .live
            .running()
            .iter()
            .map(|id| format!("<option>{}</option>", esc(id)))
            .collect();
        body.push_str(&format!(
            "<form method=\"post\" action=\"/api/clips\" class=\"filters\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <label>Stream <select name=\"stream\">{streams}</select></label> \
             <button>Keep a clip now</button></form>",
            esc(&viewer.csrf)
        ));
    }
    let rows = match rows(&s) {
        Ok(r) => r,
        Err(e) => {
            body.push_str(&format!("<p class=\"error\">The store: {}</p>", esc(&e)));
            return layout(&viewer, "Clips", None, &body).into_response();
        }
    };
    body.push_str(
        "<table class=\"grid\"><thead><tr><th>Start (UTC)</th><th>Stream</th><th>Events</th><th>Length</th>\
         <th>Kept until</th><th>State</th><th></th></tr></thead><tbody>",
    );
    for r in &rows {
        let state = match (&r.deleted_why, r.imagery) {
            (Some(why), _) => format!("deleted ({why})"),
            (None, false) => "metadata only".into(),
            (None, true) if r.legal_hold => "legal hold".into(),
            (None, true) => (if r.sealed { "kept, encrypted" } else { "kept" }).into(),
        };
        let actions = if technician && r.path.is_some() {
            let id = esc(&r.id);
            let (hold, label) = if r.legal_hold {
                ("0", "Release")
            } else {
                ("1", "Hold")
            };
            format!(
                "<a href=\"/api/clips/{id}/video\">Play</a> \
                 <form method=\"post\" action=\"/api/clips/{id}/hold\" class=\"inline\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
                 <input type=\"hidden\" name=\"hold\" value=\"{hold}\"><button>{label}</button></form>",
                csrf = esc(&viewer.csrf)
            )
        } else {
            String::new()
        };
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{}</td><td>{}</td><td>{actions}</td></tr>",
            esc(&fmt_time(r.start_us)),
            esc(&r.stream),
            esc(&r.kinds),
            (r.end_us - r.start_us) as f64 / 1e6,
            esc(&fmt_time(r.retain_until_us)),
            esc(&state),
        ));
    }
    body.push_str("</tbody></table>");
    layout(&viewer, "Clips", None, &body).into_response()
}

fn audit(s: &PagesState, viewer: &Viewer, action: &str, detail: String) {
    if let Some(store) = &s.store {
        store.submit(Record::Audit {
            ts_us: now_us(),
            actor: format!("web:{}", viewer.user),
            action: action.into(),
            detail,
        });
    }
}

fn evidence(s: &PagesState) -> Result<Arc<crate::evidence::Evidence>, Box<Response>> {
    s.evidence
        .as_ref()
        .and_then(|h| h.current())
        .ok_or_else(|| {
            Box::new(super::json_with(
                StatusCode::NOT_FOUND,
                json!({ "error": "event clips are not on (pipeline.evidence)" }),
            ))
        })
}

/// A form post is answered by going back to the page; a script gets JSON.
fn answer(form: bool, code: StatusCode, v: serde_json::Value) -> Response {
    if form && code.is_success() {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, "/clips")]).into_response();
    }
    super::json_with(code, v)
}

/// `POST /api/clips` (`stream=`): keeps a clip around the stream's newest frame now.
pub(super) async fn trigger(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let ev = match evidence(&s) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let form = is_form(&headers);
    let stream = crate::web::form_fields(&body)
        .remove("stream")
        .unwrap_or_default();
    match ev.manual(&stream, &format!("web:{}", viewer.user)) {
        Ok(id) => {
            audit(
                &s,
                &viewer,
                "evidence.trigger",
                format!("{stream}: event {id}"),
            );
            answer(
                form,
                StatusCode::ACCEPTED,
                json!({ "event_id": id, "stream": stream }),
            )
        }
        Err(e) => answer(form, StatusCode::BAD_REQUEST, json!({ "error": e })),
    }
}

fn is_form(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
}

/// `POST /api/clips/{id}/hold` (`hold=1|0`).
pub(super) async fn hold(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let ev = match evidence(&s) {
        Ok(e) => e,
        Err(r) => return *r,
    };
    let on = crate::web::form_fields(&body).remove("hold").as_deref() != Some("0");
    match crate::evidence::set_hold(ev.dir(), &id, on) {
        Ok(_) => {
            if let Some(store) = &s.store {
                store.submit(Record::ClipHold {
                    id: id.clone(),
                    hold: on,
                });
            }
            audit(
                &s,
                &viewer,
                if on {
                    "evidence.hold"
                } else {
                    "evidence.release"
                },
                id.clone(),
            );
            answer(
                is_form(&headers),
                StatusCode::OK,
                json!({ "id": id, "legal_hold": on }),
            )
        }
        Err(e) => answer(false, StatusCode::NOT_FOUND, json!({ "error": e })),
    }
}

/// `GET /api/clips/{id}/video`: the plain MP4, decrypted and checked against its signed
/// manifest on the device.
pub(super) async fn video(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let host = s.evidence.clone();
    let clip_id = id.clone();
    let result = tokio::task::spawn_blocking(move || match host {
        Some(h) => h.video(&clip_id, MAX_PLAY_BYTES),
        None => Err("event clips are not on".into()),
    })
    .await
    .map_err(|e| e.to_string())
    .and_then(|r| r);
    match result {
        Ok(mp4) => {
            audit(
                &s,
                &viewer,
                "evidence.play",
                format!("{id} ({} bytes)", mp4.len()),
            );
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "video/mp4"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                mp4,
            )
                .into_response()
        }
        Err(e) => {
            audit(&s, &viewer, "evidence.play_failed", format!("{id}: {e}"));
            super::json_with(StatusCode::UNPROCESSABLE_ENTITY, json!({ "error": e }))
        }
    }
}
