//! `GET /api/v1/events`: a server-sent event stream of what happens in the gateway —
//! receipts as they are stored, device status changes, reconciles, rollout and rollout
//! target changes, un-enrolments — for dashboards and tools that would otherwise poll.
//!
//! Inside a replica the events go through a `tokio::sync::broadcast` channel: sending never
//! waits, so a slow client can never slow the ingest down; a client that falls more than
//! [`CAPACITY`] events behind loses the oldest and is told so by an explicit `lagged` event
//! (with the number it missed) before the stream goes on.
//!
//! With PostgreSQL the stream is fleet-wide: [`Bus::with_outbox`] also queues each event
//! for the other replicas, and `postgres_events.rs` carries them through the database's
//! `LISTEN/NOTIFY` and hands the other replicas' events to [`Bus::deliver`] (local clients
//! only: never sent on again). A replica's own events reach its clients once, from here.
//! With SQLite there is one replica, and its stream is the whole gateway's.
//!
//! A stream never ends by itself, and a graceful shutdown waits for every answer to end:
//! so when the service is told to stop, [`Bus::close`] ends every stream (a dashboard left
//! open must not hold a replica up until it is killed).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use axum::Json;
use axum::extract::State;
use axum::http::Method;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use futures_util::Stream;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, watch};

use super::api::{AppState, Route};
use super::store::Role;

/// Events a client may fall behind by before it loses the oldest.
pub(crate) const CAPACITY: usize = 1024;

/// Events waiting to go to the other replicas, at most; when full, new ones are dropped
/// (counted; the other replicas see the gap in the sequence numbers and say `lagged`).
pub(crate) const OUTBOX: usize = 4096;

/// The kinds of event a replica sends, and the only ones taken from another replica
/// (`lagged` is always a replica's own word to its own clients).
pub(crate) const KINDS: [&str; 6] = [
    "receipt",
    "status",
    "reconcile",
    "rollout",
    "rollout_target",
    "device",
];

/// The kind `word` names, if it is one of [`KINDS`].
pub(crate) fn kind(word: &str) -> Option<&'static str> {
    KINDS.iter().copied().find(|k| *k == word)
}

/// One event: its kind (the SSE `event:` field) and its JSON data.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ServeEvent {
    /// One of [`KINDS`], or `lagged`.
    pub(crate) kind: &'static str,
    /// What happened.
    pub(crate) data: Value,
}

/// An event of this replica on its way to the others: numbered per process, from 1, so a
/// receiver sees what it missed.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    /// Its number.
    pub(crate) seq: u64,
    /// The event.
    pub(crate) event: Arc<ServeEvent>,
}

/// The fleet-wide relay's counters (PostgreSQL): what `GET /api/v1/events/relay` shows.
#[derive(Debug, Default)]
pub(crate) struct RelayCounters {
    pub(crate) listening: AtomicBool,
    pub(crate) sent: AtomicU64,
    pub(crate) notifies: AtomicU64,
    pub(crate) overflow: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) gaps: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) rejected: AtomicU64,
}

/// The fleet-wide relay of a replica (PostgreSQL `LISTEN/NOTIFY`, `postgres_events.rs`).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub(crate) struct RelayStats {
    /// The database channel the replicas notify and listen on.
    pub(crate) channel: String,
    /// The listening connection is up.
    pub(crate) listening: bool,
    /// Events of this replica notified to the others.
    pub(crate) sent: u64,
    /// `NOTIFY`s sent (several events go in one when they are queued together).
    pub(crate) notifies: u64,
    /// Of those, batches too large for a notification, passed through the `fleet_events`
    /// table (the notification carries the row's id).
    pub(crate) overflow: u64,
    /// Batches that could not be sent (the database failed): their events are lost to the
    /// other replicas, whose clients are told `lagged`.
    pub(crate) send_errors: u64,
    /// Events never queued for the others (the outbox was full), likewise.
    pub(crate) dropped: u64,
    /// Events of other replicas given to this replica's clients.
    pub(crate) received: u64,
    /// Times events of another replica were found missing (its sequence jumped): each told
    /// the clients `lagged` with the number.
    pub(crate) gaps: u64,
    /// Times the listening connection was made again after it was lost (each told the
    /// clients `lagged`: what the others sent meanwhile is not delivered).
    pub(crate) reconnects: u64,
    /// Notifications that could not be read (malformed, an unknown kind, an overflow row
    /// gone): not delivered.
    pub(crate) rejected: u64,
}

impl RelayCounters {
    fn stats(&self) -> RelayStats {
        let n = |c: &AtomicU64| c.load(Relaxed);
        RelayStats {
            channel: FLEET_CHANNEL.into(),
            listening: self.listening.load(Relaxed),
            sent: n(&self.sent),
            notifies: n(&self.notifies),
            overflow: n(&self.overflow),
            send_errors: n(&self.send_errors),
            dropped: n(&self.dropped),
            received: n(&self.received),
            gaps: n(&self.gaps),
            reconnects: n(&self.reconnects),
            rejected: n(&self.rejected),
        }
    }
}

/// The PostgreSQL notification channel of the fleet's events (one per database: the
/// replicas of one gateway share it).
pub(crate) const FLEET_CHANNEL: &str = "chimera_events";

/// Where this replica's events go besides its own clients.
struct Outbox {
    queue: mpsc::Sender<Outgoing>,
    seq: AtomicU64,
    counters: Arc<RelayCounters>,
}

/// The replica's event channel, and whether the replica is stopping.
#[derive(Clone)]
pub(crate) struct Bus {
    events: broadcast::Sender<Arc<ServeEvent>>,
    closing: Arc<watch::Sender<bool>>,
    outbox: Option<Arc<Outbox>>,
}

impl Bus {
    /// A channel that keeps `capacity` events for the slowest client: this replica's
    /// events only (SQLite: the one replica).
    pub(crate) fn new(capacity: usize) -> Bus {
        Bus {
            events: broadcast::channel(capacity).0,
            closing: Arc::new(watch::channel(false).0),
            outbox: None,
        }
    }

    /// [`Bus::new`], and every event sent is also queued (at most `outbox` waiting) for
    /// the other replicas: the receiver end, and the counters the relay keeps.
    pub(crate) fn with_outbox(
        capacity: usize,
        outbox: usize,
    ) -> (Bus, mpsc::Receiver<Outgoing>, Arc<RelayCounters>) {
        let (queue, rx) = mpsc::channel(outbox);
        let counters = Arc::new(RelayCounters::default());
        let mut bus = Bus::new(capacity);
        bus.outbox = Some(Arc::new(Outbox {
            queue,
            seq: AtomicU64::new(1),
            counters: counters.clone(),
        }));
        (bus, rx, counters)
    }

    /// Sends an event of this replica to every client (and to the other replicas); never
    /// waits (nobody listening is fine).
    pub(crate) fn send(&self, kind: &'static str, data: impl Serialize) {
        let data = serde_json::to_value(data).unwrap_or(Value::Null);
        let event = Arc::new(ServeEvent { kind, data });
        if let Some(o) = &self.outbox {
            let seq = o.seq.fetch_add(1, Relaxed);
            let out = Outgoing {
                seq,
                event: event.clone(),
            };
            if o.queue.try_send(out).is_err() {
                o.counters.dropped.fetch_add(1, Relaxed);
            }
        }
        let _ = self.events.send(event);
    }

    /// Gives an event to this replica's clients only: another replica's (it sent it to
    /// its own clients and to the others already), or this replica's word about the
    /// stream itself (`lagged`).
    pub(crate) fn deliver(&self, kind: &'static str, data: Value) {
        let _ = self.events.send(Arc::new(ServeEvent { kind, data }));
    }

    /// The relay's counters (None: this replica's events only).
    pub(crate) fn relay(&self) -> Option<RelayStats> {
        self.outbox.as_ref().map(|o| o.counters.stats())
    }

    /// Ends every stream, now and from now on (the service is stopping).
    pub(crate) fn close(&self) {
        self.closing.send_replace(true);
    }

    /// The raw channel, for tests that read events without the SSE framing.
    #[cfg(test)]
    pub(crate) fn subscribe_for_test(&self) -> broadcast::Receiver<Arc<ServeEvent>> {
        self.events.subscribe()
    }

    fn subscribe(&self) -> Subscription {
        Subscription {
            events: self.events.subscribe(),
            closing: self.closing.subscribe(),
        }
    }
}

/// One client's events, until the bus closes.
struct Subscription {
    events: broadcast::Receiver<Arc<ServeEvent>>,
    closing: watch::Receiver<bool>,
}

/// The routes of this module.
pub(crate) static ROUTES: &[Route] = &[
    Route {
        method: Method::GET,
        path: "/api/v1/events",
        role: Some(Role::Viewer),
        summary: "Server-sent events (`text/event-stream`) of the gateway (with PostgreSQL, \
                  of every replica; with SQLite, of the one): `receipt` (stored, verified \
                  or not), `status` (a device's online state or running workflow changed), \
                  `reconcile` (a desired document sent again), `rollout` (state or step \
                  changed), `rollout_target` (a device's answer or un-enrolment settled its \
                  target), `device` (un-enrolled); `lagged` with `missed` (a number, or \
                  null when unknown) and `reason` when events were dropped for this client.",
        params: &[],
        body: None,
        ok: 200,
        response: None,
        make: || get(events),
    },
    Route {
        method: Method::GET,
        path: "/api/v1/events/relay",
        role: Some(Role::Viewer),
        summary: "Whether the event stream is fleet-wide (`scope`: `fleet` with PostgreSQL, \
                  `replica` with SQLite) and the fleet relay's counters.",
        params: &[],
        body: None,
        ok: 200,
        response: Some(|g| g.subschema_for::<EventScope>()),
        make: || get(relay),
    },
];

/// What `GET /api/v1/events/relay` answers.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct EventScope {
    /// `fleet`: every replica's events (PostgreSQL); `replica`: this one's (SQLite).
    pub(crate) scope: &'static str,
    /// The relay (null with SQLite).
    pub(crate) relay: Option<RelayStats>,
}

async fn events(State(s): State<AppState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    Sse::new(stream(s.events.subscribe())).keep_alive(KeepAlive::default())
}

async fn relay(State(s): State<AppState>) -> Json<EventScope> {
    let relay = s.events.relay();
    Json(EventScope {
        scope: if relay.is_some() { "fleet" } else { "replica" },
        relay,
    })
}

/// The data of a `lagged` event: how many events were missed (None: not known) and why.
pub(crate) fn lagged(missed: Option<u64>, reason: &str) -> Value {
    serde_json::json!({ "missed": missed, "reason": reason })
}

/// The SSE form of a subscription: each event as `event: KIND` / `data: JSON`; when events
/// were dropped for this client, `event: lagged` / `data: {"missed": N, "reason": …}` first. It ends
/// when the bus closes.
fn stream(sub: Subscription) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(sub, |mut sub| async move {
        let received = tokio::select! {
            // Closing first: a busy channel must not keep a stopping stream going.
            biased;
            _ = sub.closing.wait_for(|closing| *closing) => return None,
            r = sub.events.recv() => r,
        };
        let event = match received {
            Ok(e) => Event::default().event(e.kind).data(e.data.to_string()),
            Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                .event("lagged")
                .data(lagged(Some(missed), "this client fell behind").to_string()),
            Err(broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), sub))
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

    #[tokio::test]
    async fn closing_the_bus_ends_every_stream_even_with_events_waiting() {
        let bus = Bus::new(4);
        let mut waiting = Box::pin(stream(bus.subscribe()));
        let mut behind = Box::pin(stream(bus.subscribe()));
        bus.send("receipt", serde_json::json!({ "n": 1 }));
        // The first stream reads its event, then waits for the next; closing ends it.
        assert!(waiting.next().await.is_some());
        let reader = tokio::spawn(async move { waiting.next().await.is_none() });
        tokio::task::yield_now().await;
        bus.close();
        assert!(reader.await.unwrap());
        // The other one still had an event to read: it ends all the same.
        assert!(behind.next().await.is_none());
        // And one that subscribes after the close ends at once.
        assert!(Box::pin(stream(bus.subscribe())).next().await.is_none());
    }
}
