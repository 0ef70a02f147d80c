//! The fleet-wide event stream on PostgreSQL: every replica `NOTIFY`s its events on one
//! channel of the shared database ([`FLEET_CHANNEL`]) and `LISTEN`s there on a connection
//! of its own, handing the other replicas' events to its clients ([`Bus::deliver`]). So a
//! dashboard behind a load balancer sees the receipts every replica ingests and the
//! decisions of every replica's rollout engine, whichever replica its stream is on. The
//! database's own notification queue carries them: no broker or bus of our own.
//!
//! Wire format (JSON, ASCII only: non-ASCII characters are `\u` escapes, so any server
//! encoding takes it and a payload's length is its size in bytes):
//! `{"v":1,"replica":NAME,"nonce":HEX,"events":[{"seq":N,"kind":K,"data":{…}},…]}`. Events
//! queued together go in one notification while it stays under [`MAX_PAYLOAD`]
//! (PostgreSQL refuses 8000 bytes or more); a batch that is larger alone (a rollout step's
//! list of a thousand devices) is written to the `fleet_events` table in the same
//! transaction as a notification `{"v":1,"replica":…,"nonce":…,"overflow":ROW_ID}`, and
//! receivers load the row (rows older than [`OVERFLOW_KEEP_MS`] are deleted by later
//! writes).
//!
//! Never twice, and never unnoticed when lost: the `nonce` is random per process, so a
//! replica skips its own notifications (its clients had the event from it directly, and
//! two replicas configured with one name still hear each other); `seq` numbers a process's
//! events from 1, so a receiver skips what it delivered already and, when the numbers jump
//! (the sender's outbox overflowed, a `NOTIFY` failed), tells its clients `lagged` with
//! the count. When the listening connection is lost (the server restarted, an
//! administrator's `pg_terminate_backend`, a ping unanswered), it is made again with a
//! growing pause (0.1 s to 5 s) and the clients are told `lagged` (`missed: null`): what
//! was notified meanwhile is gone, and they should reload.
//!
//! What this must not do: wait in [`Bus::send`] (the ingest and the engine call it), or let
//! another replica's notification put anything but a known kind of event ([`events::KINDS`])
//! into this replica's stream.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use super::events::{self, Bus, FLEET_CHANNEL, Outgoing, RelayCounters, lagged};
use super::ingest::OncePerMinute;
use super::postgres::{PgStore, PgTarget};
use super::store::{StoreError, new_id, now_ms};

/// Largest payload sent: PostgreSQL refuses 8000 bytes or more.
pub(crate) const MAX_PAYLOAD: usize = 7900;
/// How long an overflow row is kept: receivers load it when its notification arrives.
pub(crate) const OVERFLOW_KEEP_MS: i64 = 5 * 60 * 1000;
/// The wire format's version.
const VERSION: u32 = 1;
/// Events taken from the outbox for one round of notifications, at most.
const ROUND: usize = 256;
/// How often the listening connection is asked whether it is alive (a connection that died
/// without a word, a network gone, would otherwise be believed for hours).
const PING: Duration = Duration::from_secs(30);
/// How long a ping may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause before the first attempt to listen again, doubled up to [`RECONNECT_MAX`].
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// Senders whose last sequence number is remembered, at most (processes come and go).
const SENDERS: usize = 1024;

/// A notification as sent and read.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    v: u32,
    replica: String,
    nonce: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    events: Vec<WireEvent>,
    /// The `fleet_events` row holding the batch (which is an envelope with `events`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    overflow: Option<String>,
}

/// One event in a notification.
#[derive(Debug, Serialize, Deserialize)]
struct WireEvent {
    seq: u64,
    kind: String,
    data: Value,
}

/// `v` as JSON with every non-ASCII character written as `\u` escapes (it can only occur
/// inside strings, where the escape means the same character).
fn ascii_json(v: &impl Serialize) -> String {
    let text = serde_json::to_string(v).unwrap_or_else(|_| "null".into());
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// This process as a sender: its envelopes' fixed part.
struct Sender {
    replica: String,
    nonce: String,
    /// `{"v":1,"replica":…,"nonce":…,"events":[`
    prefix: String,
}

impl Sender {
    fn new(replica: &str, nonce: &str) -> Sender {
        Sender {
            replica: replica.to_string(),
            nonce: nonce.to_string(),
            prefix: format!(
                r#"{{"v":{VERSION},"replica":{},"nonce":{},"events":["#,
                ascii_json(&replica),
                ascii_json(&nonce)
            ),
        }
    }

    /// The envelope of encoded events.
    fn batch(&self, events: &[String]) -> String {
        format!("{}{}]}}", self.prefix, events.join(","))
    }

    /// The notification pointing at an overflow row.
    fn pointer(&self, row: &str) -> String {
        ascii_json(&Envelope {
            v: VERSION,
            replica: self.replica.clone(),
            nonce: self.nonce.clone(),
            events: vec![],
            overflow: Some(row.to_string()),
        })
    }
}

/// One event as it goes in a batch.
fn encode(o: &Outgoing) -> String {
    ascii_json(&WireEvent {
        seq: o.seq,
        kind: o.event.kind.to_string(),
        data: o.event.data.clone(),
    })
}

/// Splits encoded events, in order, into batches whose envelope (`prefix_len` plus the
/// events, commas and the closing `]}`) stays under `max`; an event too large alone is a
/// batch of its own (it goes through the table).
fn batches(prefix_len: usize, events: Vec<String>, max: usize) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = vec![];
    let mut size = 0;
    for e in events {
        match out.last_mut() {
            Some(b) if size + 1 + e.len() < max => {
                size += 1 + e.len();
                b.push(e);
            }
            _ => {
                size = prefix_len + 2 + e.len();
                out.push(vec![e]);
            }
        }
    }
    out
}

/// What a receiver delivered of each sender (by nonce): its last sequence number.
/// Forgotten with the connection (the clients are told `lagged` for that gap already).
#[derive(Default)]
struct Delivered(HashMap<String, u64>);

/// What to do with an event of a sender.
#[derive(Debug, PartialEq, Eq)]
enum Admit {
    /// Delivered already: skip it.
    Again,
    /// Deliver it, after telling the clients that this many events before it were lost.
    Deliver { missed: u64 },
}

impl Delivered {
    /// Event `seq` of `sender`: whether to deliver it, noting that it was.
    fn admit(&mut self, sender: &str, seq: u64) -> Admit {
        if !self.0.contains_key(sender) && self.0.len() >= SENDERS {
            self.0.clear();
        }
        let last = self.0.get(sender).copied();
        if last.is_some_and(|l| seq <= l) {
            return Admit::Again;
        }
        self.0.insert(sender.to_string(), seq);
        Admit::Deliver {
            missed: last.map_or(0, |l| seq - l - 1),
        }
    }
}

/// The relay of one replica.
struct Relay {
    target: PgTarget,
    store: PgStore,
    me: Sender,
    bus: Bus,
    counters: Arc<RelayCounters>,
    log: OncePerMinute,
}

/// A connection listening on [`FLEET_CHANNEL`].
struct Listening {
    client: tokio_postgres::Client,
    messages: super::postgres::AsyncMessages,
}

/// The replica's event bus, fleet-wide: its events go to the other replicas and theirs
/// come to its clients (see the module documentation). Returns once the listening
/// connection listens, so every event another replica sends after this reaches this
/// replica's clients; if it cannot be made now, the service starts all the same and it is
/// tried again in the background (the clients are told `lagged` when it comes up).
pub(crate) async fn fleet_bus(target: &PgTarget, store: &PgStore, replica: &str) -> Bus {
    let (bus, outbox, counters) = events::Bus::with_outbox(events::CAPACITY, events::OUTBOX);
    let mut nonce = [0u8; 8];
    // Without an OS random source nothing here works anyway; the time keeps it distinct.
    if getrandom::fill(&mut nonce).is_err() {
        nonce = now_ms().to_le_bytes();
    }
    let nonce: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let relay = Arc::new(Relay {
        target: target.clone(),
        store: store.clone(),
        me: Sender::new(replica, &nonce),
        bus: bus.clone(),
        counters,
        log: OncePerMinute::default(),
    });
    tokio::spawn(relay.clone().send_loop(outbox));
    let first = relay.listen().await;
    if let Err(e) = &first {
        eprintln!(
            "chimera serve: events: cannot listen for the other replicas' events yet ({e}); \
             retrying in the background"
        );
    }
    tokio::spawn(relay.run(first));
    bus
}

impl Relay {
    fn log_once(&self, key: &str, message: &str) {
        if self.log.due(key) {
            eprintln!("chimera serve: events: {message} (logged once a minute)");
        }
    }

    /// Sends what the outbox holds, in order, batched.
    async fn send_loop(self: Arc<Self>, mut outbox: mpsc::Receiver<Outgoing>) {
        let mut round = Vec::with_capacity(ROUND);
        while outbox.recv_many(&mut round, ROUND).await > 0 {
            let events: Vec<String> = round.drain(..).map(|o| encode(&o)).collect();
            for batch in batches(self.me.prefix.len(), events, MAX_PAYLOAD) {
                let n = batch.len() as u64;
                let payload = self.me.batch(&batch);
                let sent = if payload.len() < MAX_PAYLOAD {
                    notify(&self.store, payload).await
                } else {
                    self.counters.overflow.fetch_add(1, Relaxed);
                    notify_overflow(&self.store, &self.me, payload).await
                };
                match sent {
                    Ok(()) => {
                        self.counters.notifies.fetch_add(1, Relaxed);
                        self.counters.sent.fetch_add(n, Relaxed);
                    }
                    Err(e) => {
                        self.counters.send_errors.fetch_add(1, Relaxed);
                        self.log_once(
                            "notify",
                            &format!("{n} event(s) not sent to the other replicas: {e}"),
                        );
                    }
                }
            }
        }
    }

    /// A connection of its own, listening.
    async fn listen(&self) -> Result<Listening, StoreError> {
        let name = format!("chimera-events:{}", self.me.replica);
        let (client, messages) = self.target.connect_alone(&name).await?;
        client
            .batch_execute(&format!("LISTEN {FLEET_CHANNEL}"))
            .await
            .map_err(|e| StoreError::Postgres {
                at: self.target.describe().to_string(),
                message: format!("LISTEN {FLEET_CHANNEL}: {e}"),
            })?;
        Ok(Listening { client, messages })
    }

    /// Listens for good: each time the connection is lost it is made again (with a
    /// growing pause), and the clients are told `lagged`.
    async fn run(self: Arc<Self>, first: Result<Listening, StoreError>) {
        let mut attempt = Some(first);
        // Why events may have been missed (the connection was lost, or could not be made).
        let mut lost: Option<String> = None;
        let mut pause = RECONNECT_MIN;
        loop {
            let result = match attempt.take() {
                Some(r) => r,
                None => self.listen().await,
            };
            match result {
                Ok(l) => {
                    if let Some(why) = lost.take() {
                        self.counters.reconnects.fetch_add(1, Relaxed);
                        eprintln!("chimera serve: events: listening again after: {why}");
                        self.bus.deliver(
                            "lagged",
                            lagged(
                                None,
                                &format!(
                                    "the fleet event stream was interrupted ({why}): events \
                                     of other replicas meanwhile are not in this stream"
                                ),
                            ),
                        );
                    }
                    pause = RECONNECT_MIN;
                    let why = self.follow(l).await;
                    eprintln!("chimera serve: events: the listening connection was lost: {why}");
                    lost = Some(why);
                }
                Err(e) => {
                    self.log_once("listen", &format!("cannot listen: {e}"));
                    lost.get_or_insert_with(|| e.to_string());
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }

    /// Delivers what `l` receives until the connection is lost; returns why it was.
    async fn follow(&self, mut l: Listening) -> String {
        self.counters.listening.store(true, Relaxed);
        let mut seen = Delivered::default();
        let mut ping = tokio::time::interval(PING);
        ping.reset();
        let why = loop {
            tokio::select! {
                m = l.messages.recv() => match m {
                    Some(Ok(AsyncMessage::Notification(n))) if n.channel() == FLEET_CHANNEL => {
                        self.receive(n.payload(), &mut seen).await;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break super::postgres::chain(&e),
                    None => break "the connection closed".to_string(),
                },
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, l.client.simple_query("SELECT 1")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => break format!("ping: {}", super::postgres::chain(&e)),
                        Err(_) => break format!("no answer to a ping within {PING_TIMEOUT:?}"),
                    }
                }
            }
        };
        self.counters.listening.store(false, Relaxed);
        why
    }

    /// One notification: another replica's events to this replica's clients.
    async fn receive(&self, payload: &str, seen: &mut Delivered) {
        let mut envelope = match read(payload) {
            Ok(e) => e,
            Err(why) => return self.reject(&why),
        };
        if envelope.nonce == self.me.nonce {
            return;
        }
        if let Some(row) = envelope.overflow.take() {
            let body = match load_overflow(&self.store, &row).await {
                Ok(Some(body)) => body,
                Ok(None) => return self.reject(&format!("overflow row {row:?} is gone")),
                Err(e) => return self.reject(&format!("overflow row {row:?}: {e}")),
            };
            match read(&body) {
                Ok(b) if b.nonce == envelope.nonce && b.overflow.is_none() => envelope = b,
                Ok(_) => return self.reject(&format!("overflow row {row:?} is another sender's")),
                Err(why) => return self.reject(&format!("overflow row {row:?}: {why}")),
            }
        }
        let sender: String = envelope.replica.chars().take(64).collect();
        for e in envelope.events {
            let Admit::Deliver { missed } = seen.admit(&envelope.nonce, e.seq) else {
                continue;
            };
            if missed > 0 {
                self.counters.gaps.fetch_add(1, Relaxed);
                self.bus.deliver(
                    "lagged",
                    lagged(
                        Some(missed),
                        &format!("events of replica {sender} were lost on the way"),
                    ),
                );
            }
            let Some(kind) = events::kind(&e.kind) else {
                self.reject(&format!("an event of unknown kind from {sender:?}"));
                continue;
            };
            self.counters.received.fetch_add(1, Relaxed);
            self.bus.deliver(kind, e.data);
        }
    }

    fn reject(&self, why: &str) {
        self.counters.rejected.fetch_add(1, Relaxed);
        self.log_once(
            "rejected",
            &format!("a notification was not delivered: {why}"),
        );
    }
}

/// A notification's envelope, if it is one of this version.
fn read(payload: &str) -> Result<Envelope, String> {
    let e: Envelope =
        serde_json::from_str(payload).map_err(|e| format!("not an event envelope: {e}"))?;
    if e.v != VERSION {
        return Err(format!("version {} (this replica reads {VERSION})", e.v));
    }
    Ok(e)
}

/// `NOTIFY` of `payload` on [`FLEET_CHANNEL`] (on a pooled connection, committed at once).
async fn notify(store: &PgStore, payload: String) -> Result<(), StoreError> {
    store
        .run(async move {
            let c = store.client().await?;
            let st = c.prepare_cached("SELECT pg_notify($1, $2)").await?;
            c.execute(&st, &[&FLEET_CHANNEL, &payload]).await?;
            Ok(())
        })
        .await
}

/// `body` into `fleet_events` and a notification naming its row, in one transaction (a
/// receiver that gets the notification finds the row); rows past [`OVERFLOW_KEEP_MS`] go.
async fn notify_overflow(store: &PgStore, me: &Sender, body: String) -> Result<(), StoreError> {
    let row = new_id();
    let pointer = me.pointer(&row);
    let replica = me.replica.clone();
    store
        .run(async move {
            let mut c = store.client().await?;
            let tx = c.transaction().await?;
            let now = now_ms();
            tx.execute(
                "DELETE FROM fleet_events WHERE created_at < $1",
                &[&(now - OVERFLOW_KEEP_MS)],
            )
            .await?;
            tx.execute(
                "INSERT INTO fleet_events (id, replica, body, created_at) \
                 VALUES ($1, $2, $3, $4)",
                &[&row, &replica, &body, &now],
            )
            .await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&FLEET_CHANNEL, &pointer])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
}

/// The batch an overflow notification names (None: the row is gone).
async fn load_overflow(store: &PgStore, row: &str) -> Result<Option<String>, StoreError> {
    if row.contains('\0') {
        return Ok(None);
    }
    store
        .run(async move {
            let c = store.client().await?;
            let st = c
                .prepare_cached("SELECT body FROM fleet_events WHERE id = $1")
                .await?;
            Ok(match c.query_opt(&st, &[&row]).await? {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            })
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::events::ServeEvent;
    use crate::serve::store::tests::TestDb;
    use crate::serve::test_postgres::postgres;

    #[test]
    fn payloads_are_ascii_and_batches_stay_under_the_limit() {
        let json = ascii_json(&serde_json::json!({ "device": "cam-é-😀", "n": "\0" }));
        assert!(json.is_ascii(), "{json}");
        let back: Value = serde_json::from_str(&json).unwrap();
        assert_eq!(back["device"], "cam-é-😀");
        assert_eq!(back["n"], "\0");

        let me = Sender::new("gw-a", "00ff");
        let event = |n: usize| "x".repeat(n);
        // Three that fit together, then one that does not fit beside them, then one too
        // large alone (it goes through the table), then a small one after it.
        let list = vec![
            event(100),
            event(100),
            event(100),
            event(7600),
            event(9000),
            event(5),
        ];
        let b = batches(me.prefix.len(), list, MAX_PAYLOAD);
        let sizes: Vec<Vec<usize>> = b
            .iter()
            .map(|b| b.iter().map(String::len).collect())
            .collect();
        assert_eq!(
            sizes,
            [vec![100, 100, 100], vec![7600], vec![9000], vec![5]]
        );
        for batch in &b {
            let payload = me.batch(batch);
            let alone = batch.len() == 1 && batch[0].len() >= MAX_PAYLOAD - me.prefix.len() - 2;
            assert_eq!(payload.len() < MAX_PAYLOAD, !alone, "{}", payload.len());
        }
        // What a batch holds reads back in order.
        let o = |seq: u64, kind: &'static str| Outgoing {
            seq,
            event: Arc::new(ServeEvent {
                kind,
                data: serde_json::json!({ "seq": seq }),
            }),
        };
        let read_back =
            read(&me.batch(&[encode(&o(7, "receipt")), encode(&o(8, "status"))])).unwrap();
        assert_eq!(
            (read_back.replica.as_str(), read_back.nonce.as_str()),
            ("gw-a", "00ff")
        );
        let got: Vec<(u64, String)> = read_back
            .events
            .into_iter()
            .map(|e| (e.seq, e.kind))
            .collect();
        assert_eq!(got, [(7, "receipt".into()), (8, "status".into())]);
        assert!(read(r#"{"v":2,"replica":"a","nonce":"b"}"#).is_err());
        assert!(read("NOTIFY").is_err());
    }

    #[test]
    fn events_are_delivered_once_in_order_and_gaps_are_counted() {
        let mut d = Delivered::default();
        assert_eq!(d.admit("a", 5), Admit::Deliver { missed: 0 }, "first seen");
        assert_eq!(d.admit("a", 6), Admit::Deliver { missed: 0 });
        assert_eq!(d.admit("a", 6), Admit::Again);
        assert_eq!(d.admit("a", 3), Admit::Again);
        assert_eq!(d.admit("a", 10), Admit::Deliver { missed: 3 });
        assert_eq!(
            d.admit("b", 1),
            Admit::Deliver { missed: 0 },
            "senders apart"
        );
        // A flood of senders is forgotten rather than kept.
        for n in 0..SENDERS * 2 {
            d.admit(&n.to_string(), 1);
        }
        assert!(d.0.len() <= SENDERS);
    }

    /// A subscriber's next event within a hang guard (not a speed check).
    async fn next(rx: &mut tokio::sync::broadcast::Receiver<Arc<ServeEvent>>) -> Arc<ServeEvent> {
        tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("an event within the hang guard")
            .expect("an event")
    }

    /// Waits until `bus`'s relay listens and counts `(sent, overflow, received)`: the
    /// sender counts a batch once its NOTIFY returned, which may be just after the other
    /// replica had it (a hang guard, not a speed check).
    async fn counted(bus: &Bus, want: (u64, u64, u64)) {
        for _ in 0..600 {
            let r = bus.relay().unwrap();
            if r.listening && (r.sent, r.overflow, r.received) == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{:?}, not {want:?}", bus.relay());
    }

    /// Two replicas' buses on one database: each one's events reach the other's clients
    /// once (a device list too large for a notification through the table), never its own
    /// twice; a killed listening connection comes back and says `lagged`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_replicas_hear_each_other_once_and_a_lost_listener_says_lagged() {
        let Some(db) = TestDb::postgres() else {
            return;
        };
        let target = TestDb::target(&db);
        let store = PgStore::open(&target).await.unwrap();
        let a = fleet_bus(&target, &store, "gw-a").await;
        let b = fleet_bus(&target, &store, "gw-b").await;
        let (mut at_a, mut at_b) = (a.subscribe_for_test(), b.subscribe_for_test());
        let big: Vec<String> = (0..1500).map(|i| format!("device-{i:05}")).collect();
        a.send(
            "receipt",
            serde_json::json!({ "device": "cam-é", "id": "r1" }),
        );
        a.send(
            "rollout",
            serde_json::json!({ "id": "ro", "published": big }),
        );
        b.send("status", serde_json::json!({ "device": "cam-2" }));
        // Each replica's clients: its own events once, from itself, and the other's.
        let mut seen_a = vec![];
        let mut seen_b = vec![];
        for _ in 0..3 {
            seen_a.push(next(&mut at_a).await);
            seen_b.push(next(&mut at_b).await);
        }
        let kinds = |v: &[Arc<ServeEvent>]| {
            let mut k: Vec<&str> = v.iter().map(|e| e.kind).collect();
            k.sort();
            k
        };
        assert_eq!(kinds(&seen_a), ["receipt", "rollout", "status"]);
        assert_eq!(kinds(&seen_b), ["receipt", "rollout", "status"]);
        let at = |v: &[Arc<ServeEvent>], kind: &str| {
            v.iter().find(|e| e.kind == kind).unwrap().data.clone()
        };
        assert_eq!(at(&seen_b, "receipt")["device"], "cam-é");
        assert_eq!(
            at(&seen_b, "rollout")["published"]
                .as_array()
                .unwrap()
                .len(),
            1500
        );
        counted(&a, (2, 1, 1)).await;
        counted(&b, (1, 0, 2)).await;

        // B's listening connection is killed: B reconnects and tells its clients.
        let killed = postgres().psql(
            &db,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = 'chimera-events:gw-b'",
        );
        assert_eq!(killed, "1");
        let e = next(&mut at_b).await;
        assert_eq!(e.kind, "lagged", "{e:?}");
        assert!(e.data["missed"].is_null(), "{e:?}");
        assert!(
            e.data["reason"].as_str().unwrap().contains("interrupted"),
            "{e:?}"
        );
        assert_eq!(b.relay().unwrap().reconnects, 1);
        a.send("reconcile", serde_json::json!({ "device": "cam-1" }));
        assert_eq!(next(&mut at_b).await.kind, "reconcile");
        assert_eq!(next(&mut at_a).await.kind, "reconcile");
        // Nothing else arrived at either: no echo, no duplicate.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(at_a.try_recv().is_err());
        assert!(at_b.try_recv().is_err());
        assert_eq!(
            postgres().psql(&db, "SELECT count(*) FROM fleet_events"),
            "1"
        );
    }
}
