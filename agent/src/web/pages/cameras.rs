//! Cameras (`GET /cameras`, `GET /api/cameras`): one tile per stream with its health, last
//! error, fps in and out, and reconnects (the `/healthz` data).

use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout, live, text};
use crate::web::Viewer;

/// A source state in plain words.
fn state_words(state: &str) -> &str {
    match state {
        "connecting" => "Connecting…",
        "streaming" => "Streaming",
        "stalled" => "Connected, but no video is arriving",
        "backing_off" => "Connection lost; waiting to reconnect",
        "ended" => "Stream ended",
        "failed" => "Failed (see last error)",
        other => other,
    }
}

/// Each stream's health and rates.
pub(super) fn cameras(s: &PagesState) -> Value {
    let rates = super::stream_rates(&s.metrics);
    let streams: Vec<Value> = crate::web::streams_json(&s.metrics)
        .into_iter()
        .map(|mut v| {
            let r = v["id"].as_str().and_then(|id| rates.get(id));
            v["fps_in"] = r.map_or(Value::Null, |r| r["fps_in"].clone());
            v["fps_out"] = r.map_or(Value::Null, |r| r["fps_out"].clone());
            v["state_text"] = json!(state_words(v["state"].as_str().unwrap_or("")));
            v
        })
        .collect();
    json!({ "streams": streams })
}

/// `GET /api/cameras`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    let v = tokio::task::spawn_blocking(move || cameras(&s))
        .await
        .unwrap_or_default();
    super::json(v)
}

/// `GET /cameras`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let v = tokio::task::spawn_blocking(move || cameras(&s))
        .await
        .unwrap_or_default();
    let mut body = String::from("<div class=\"tiles\">");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    if streams.is_empty() {
        body.push_str("<p>No stream is running.</p>");
    }
    for (i, st) in streams.iter().enumerate() {
        let k = |f: &str| format!("streams.{i}.{f}");
        body.push_str(&format!(
            "<section class=\"tile\"><h2>{}</h2><p class=\"state\">{}</p><dl>\
             <dt>Last error</dt><dd>{}</dd><dt>fps in / out</dt><dd>{} / {}</dd>\
             <dt>Reconnects</dt><dd>{}</dd><dt>Frames</dt><dd>{}</dd></dl></section>",
            esc(&text(&st["id"])),
            live(&k("state_text"), &text(&st["state_text"])),
            live(&k("last_error"), &text(&st["last_error"])),
            live(&k("fps_in"), &text(&st["fps_in"])),
            live(&k("fps_out"), &text(&st["fps_out"])),
            live(&k("reconnects"), &text(&st["reconnects"])),
            live(&k("frames"), &text(&st["frames"])),
        ));
    }
    body.push_str("</div>");
    layout(&viewer, "Cameras", Some("/api/cameras"), &body)
}
