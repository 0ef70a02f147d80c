//! Live view (`GET /live`): a stream's output with the stages applied, as the H.264 the
//! pipeline already encodes — fMP4 fragments over a WebSocket (`GET /api/live/{stream}/ws`)
//! into the browser's Media Source Extensions (ManagedMediaSource on iOS) — with each frame's
//! metadata beside it for overlays the viewer toggles. Browsers without MSE (or without the
//! codec) fall back to JPEG frames (`GET /api/live/{stream}/frame.jpg`, encoded on request
//! from the next frame).
//!
//! The socket speaks: text `{"type":"init","codec","width","height","gen"}` then one binary init
//! segment; binary fragments (one frame each); text frame metadata (see
//! [`crate::live::frame_meta`]); text `{"type":"stats","dropped"}` every second.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use super::{PagesState, esc, layout, layout_with};
use crate::live::{LiveMsg, Subscription};
use crate::web::Viewer;

/// `GET /live[?stream=ID]`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer, uri: Uri) -> Response {
    let running = s.live.running();
    let want = super::query(&uri).remove("stream");
    let current = want
        .filter(|w| running.contains(w))
        .or_else(|| running.first().cloned());
    let mut body = String::new();
    let Some(current) = current else {
        body.push_str("<p>No stream is running.</p>");
        return layout(&viewer, "Live", None, &body).into_response();
    };
    body.push_str("<form class=\"live-controls\" method=\"get\" action=\"/live\"><label>Stream <select name=\"stream\" id=\"live-stream\">");
    for id in &running {
        body.push_str(&format!(
            "<option value=\"{v}\"{sel}>{v}</option>",
            v = esc(id),
            sel = if *id == current { " selected" } else { "" }
        ));
    }
    body.push_str(
        "</select></label><button type=\"submit\">Show</button>\
         <label><input type=\"checkbox\" id=\"ov-boxes\" checked> Boxes</label>\
         <label><input type=\"checkbox\" id=\"ov-ids\" checked> Track ids</label>\
         <label><input type=\"checkbox\" id=\"ov-moderation\" checked> Moderated regions</label>\
         <label>Mode <select id=\"live-mode\"><option value=\"auto\">auto</option>\
         <option value=\"mse\">video (MSE)</option><option value=\"jpeg\">JPEG</option>",
    );
    let whep = s.served.whep.serves(&current);
    if whep {
        body.push_str("<option value=\"webrtc\">WebRTC (WHEP)</option>");
    }
    body.push_str("</select></label></form>");
    body.push_str(&format!(
        "<div class=\"live\" id=\"live\" data-stream=\"{}\" data-csrf=\"{}\" data-whep=\"{}\">\
         <video id=\"live-video\" muted autoplay playsinline></video>\
         <img id=\"live-jpeg\" alt=\"live frame\" hidden>\
         <canvas id=\"live-overlay\"></canvas></div>\
         <p class=\"live-stats\">Mode <span id=\"live-modeshown\">—</span> · \
         <span id=\"live-rate\">—</span> · dropped <span id=\"live-dropped\">0</span> · \
         latency <span id=\"live-latency\">—</span> · objects <span id=\"live-objects\">—</span></p>",
        esc(&current),
        esc(&viewer.csrf),
        u8::from(whep)
    ));
    layout_with(&viewer, "Live", None, &["/static/live.js"], &body).into_response()
}

/// `GET /static/live.js`.
pub(super) async fn js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../static/live.js"),
    )
}

/// Whether a browser's `Origin` (when it sends one) is this server's own host: a page on
/// another site must not open the socket with the technician's cookie (cross-site WebSocket
/// hijacking; SameSite=Strict already keeps the cookie off such requests, this is the second
/// lock).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let origin_host = origin
        .to_str()
        .ok()
        .and_then(|o| o.split_once("://"))
        .map(|(_, rest)| rest.trim_end_matches('/'));
    matches!((host, origin_host), (Some(h), Some(o)) if h.eq_ignore_ascii_case(o))
}

fn refuse(code: StatusCode, why: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "error": why }).to_string(),
    )
        .into_response()
}

/// `GET /api/live/{stream}/ws`: the stream's fMP4 and metadata.
pub(super) async fn ws(
    State(s): State<Arc<PagesState>>,
    Path(stream): Path<String>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if !same_origin(&headers) {
        return refuse(
            StatusCode::FORBIDDEN,
            "the Origin is not this device".into(),
        );
    }
    match s.live.subscribe(&stream) {
        Ok(sub) => upgrade
            .max_message_size(4096)
            .on_upgrade(move |socket| pump(socket, sub)),
        Err(e) => refuse(StatusCode::NOT_FOUND, e.to_string()),
    }
}

/// Moves a viewer's queue onto its socket until either side ends. A slow socket only holds
/// up this task; the queue in front of it drops (see [`crate::live`]).
async fn pump(mut socket: WebSocket, mut sub: Subscription) {
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            msg = sub.rx.recv() => {
                let Some(msg) = msg else { break };
                let sent = match msg {
                    LiveMsg::Init(init) => {
                        let head = serde_json::json!({
                            "type": "init",
                            "codec": init.codec,
                            "width": init.width,
                            "height": init.height,
                            "gen": init.generation,
                        });
                        match socket.send(Message::Text(head.to_string().into())).await {
                            Ok(()) => socket.send(Message::Binary(init.segment.clone())).await,
                            Err(e) => Err(e),
                        }
                    }
                    LiveMsg::Video(f) => socket.send(Message::Binary(f)).await,
                    LiveMsg::Meta(m) => socket.send(Message::Text(m.to_string().into())).await,
                };
                if sent.is_err() {
                    break;
                }
            }
            _ = stats.tick() => {
                let v = serde_json::json!({
                    "type": "stats",
                    "dropped": sub.dropped.load(Ordering::Relaxed),
                });
                if socket.send(Message::Text(v.to_string().into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => match incoming {
                // The page sends nothing; anything else it sends is ignored.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
}

/// `GET /api/live/{stream}/frame.jpg`: the stream's next frame (the fallback).
pub(super) async fn jpeg(State(s): State<Arc<PagesState>>, Path(stream): Path<String>) -> Response {
    let rx = match s.snapshots.request(Some(&stream)) {
        Ok(rx) => rx,
        Err(e) => return refuse(StatusCode::NOT_FOUND, e.to_string()),
    };
    match tokio::time::timeout(Duration::from_secs(5), rx).await {
        Ok(Ok(Ok(jpeg))) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            jpeg,
        )
            .into_response(),
        Ok(Ok(Err(e))) => refuse(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        _ => refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::pipeline::snapshot::SnapshotError::Timeout.to_string(),
        ),
    }
}
