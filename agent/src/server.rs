//! The local HTTP endpoints served during a run: `/metrics` (Prometheus text format),
//! `/healthz`, and `POST /workflow` (a signed workflow, as `aegis workflow apply` sends it;
//! the same path as the fleet topics — the document's signature is its authentication).
//! The technician web page (a later change) mounts on the same server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use crate::metrics::Metrics;

/// What the handlers read.
#[derive(Clone)]
pub struct ServerState {
    /// The registry to render.
    pub metrics: Arc<Metrics>,
    /// Device id, for `/healthz`.
    pub device: String,
    /// Process start, for uptime.
    pub started: Instant,
    /// The workflow applier's queue (None: workflows are off).
    pub workflows: Option<tokio::sync::mpsc::Sender<crate::apply::Request>>,
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
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e} (set web.listen or --listen)"))
}

async fn metrics(State(s): State<ServerState>) -> impl IntoResponse {
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

async fn workflow(State(s): State<ServerState>, body: axum::body::Bytes) -> impl IntoResponse {
    let json = |code: StatusCode, v: serde_json::Value| {
        (
            code,
            [(header::CONTENT_TYPE, "application/json")],
            v.to_string(),
        )
    };
    let Some(tx) = s.workflows else {
        return json(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "workflows are disabled on this device (workflows.enabled)" }),
        );
    };
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let req = crate::apply::Request {
        topic: "http".into(),
        payload: body.to_vec(),
        reply: Some(reply_tx),
    };
    if tx.try_send(req).is_err() {
        return json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the agent is busy applying a workflow; retry" }),
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
