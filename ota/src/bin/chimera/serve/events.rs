//! `GET /api/v1/events`: a server-sent event stream of what this replica sees happen —
//! receipts as they are stored, device status changes, reconciles, rollout and rollout
//! target changes — for dashboards and tools that would otherwise poll.
//!
//! Inside a replica the events go through a `tokio::sync::broadcast` channel: sending never
//! waits, so a slow client can never slow the ingest down; a client that falls more than
//! [`CAPACITY`] events behind loses the oldest and is told so by an explicit `lagged` event
//! (with the number it missed) before the stream goes on. Each replica streams its own
//! events: with several replicas behind a load balancer, a client sees the receipts and
//! status messages the broker gave that replica (shared subscriptions), and the rollout
//! changes of the rollouts that replica's engine holds. A fleet-wide stream needs a
//! database notification channel (PostgreSQL `LISTEN/NOTIFY`), not built here.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::State;
use axum::http::Method;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

use super::api::{AppState, Route};
use super::store::Role;

/// Events a client may fall behind by before it loses the oldest.
pub(crate) const CAPACITY: usize = 1024;

/// One event: its kind (the SSE `event:` field) and its JSON data.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServeEvent {
    /// `receipt`, `status`, `reconcile`, `rollout`, `rollout_target`.
    pub(crate) kind: &'static str,
    /// What happened.
    pub(crate) data: Value,
}

/// The replica's event channel.
#[derive(Clone)]
pub(crate) struct Bus(broadcast::Sender<Arc<ServeEvent>>);

impl Bus {
    /// A channel that keeps `capacity` events for the slowest client.
    pub(crate) fn new(capacity: usize) -> Bus {
        Bus(broadcast::channel(capacity).0)
    }

    /// Sends an event to every client; never waits (nobody listening is fine).
    pub(crate) fn send(&self, kind: &'static str, data: impl Serialize) {
        let data = serde_json::to_value(data).unwrap_or(Value::Null);
        let _ = self.0.send(Arc::new(ServeEvent { kind, data }));
    }

    fn subscribe(&self) -> broadcast::Receiver<Arc<ServeEvent>> {
        self.0.subscribe()
    }
}

/// The routes of this module.
pub(crate) static ROUTES: &[Route] = &[Route {
    method: Method::GET,
    path: "/api/v1/events",
    role: Some(Role::Viewer),
    summary: "Server-sent events (`text/event-stream`) of this replica: `receipt` (stored, \
              verified or not), `status` (a device's online state or running workflow \
              changed), `reconcile` (a desired document sent again), `rollout` (state or \
              step changed), `rollout_target` (a device's answer settled its target); \
              `lagged` with `missed` when the client fell behind and events were dropped.",
    params: &[],
    body: None,
    ok: 200,
    response: None,
    make: || get(events),
}];

async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(stream(s.events.subscribe())).keep_alive(KeepAlive::default())
}

/// The SSE form of a subscription: each event as `event: KIND` / `data: JSON`; when events
/// were dropped for this client, `event: lagged` / `data: {"missed": N}` first.
fn stream(
    rx: broadcast::Receiver<Arc<ServeEvent>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(e) => Event::default().event(e.kind).data(e.data.to_string()),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(serde_json::json!({ "missed": missed }).to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;

    /// An `Event` as it goes on the wire.
    async fn wire(e: Event) -> String {
        use axum::response::IntoResponse as _;
        let body = Sse::new(futures_util::stream::iter([Ok::<_, Infallible>(e)])).into_response();
        let bytes = axum::body::to_bytes(body.into_body(), 1 << 16)
            .await
            .unwrap();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_is_told_and_the_sender_never_waits() {
        let bus = Bus::new(4);
        let mut s = Box::pin(stream(bus.subscribe()));
        // Ten events while the client reads nothing: sending returns at once each time.
        for i in 0..10 {
            bus.send("receipt", serde_json::json!({ "n": i }));
        }
        let text = wire(s.next().await.unwrap().unwrap()).await;
        assert!(text.contains("event: lagged"), "{text}");
        assert!(text.contains("\"missed\":6"), "{text}");
        // Then the four it kept, oldest first.
        for i in 6..10 {
            let text = wire(s.next().await.unwrap().unwrap()).await;
            assert!(text.contains("event: receipt"), "{text}");
            assert!(text.contains(&format!("\"n\":{i}")), "{text}");
        }
    }
}
