//! `aegis fleet-sim` and `aegis bench fleet|store`: the fleet link at scale and its costs.
//!
//! * **fleet-sim**: N simulated devices, each running the agent's own [`FleetLink`] (same
//!   connect/status/telemetry/outbox/command code) over an in-memory outbox fed at a fixed
//!   event rate, against one broker; a consumer counts delivered events, a controller sends
//!   `ping` commands and times the replies.
//! * **bench fleet**: command round trip through the broker on loopback, and how fast a
//!   backlog drains from the SQLite outbox to a subscribed consumer (every event checked
//!   off) once the broker comes back.
//! * **bench store**: store ingest, batched transactions (the writer) vs one row per
//!   transaction, in the same process.
//!
//! Numbers are printed (and optionally written as JSON); nothing here asserts on time.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde::Serialize;
use serde_json::{Value, json};

use crate::fleet::{
    CommandError, FleetHost, FleetLink, FleetSettings, Outbox, OutboxError, SqliteOutbox,
};
use crate::store::{self, OutboxRow};

/// A mosquitto on a free loopback port, for as long as this lives.
pub struct LocalBroker {
    /// Its port.
    pub port: u16,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl LocalBroker {
    /// Starts Debian's `mosquitto` (open-file limit raised for many clients).
    pub fn start() -> anyhow::Result<LocalBroker> {
        raise_nofile();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        // SAFETY: getuid(2) has no preconditions.
        let user = if unsafe { libc::getuid() } == 0 {
            "user root\n"
        } else {
            ""
        };
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n\
                 max_queued_messages 100000\nmax_inflight_messages 100\n{user}"
            ),
        )?;
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start mosquitto (apt install mosquitto): {e}"))?;
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "mosquitto did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(LocalBroker {
            port,
            child,
            _dir: dir,
        })
    }
}

impl Drop for LocalBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raises this process's soft open-file limit to the hard limit (children inherit it).
pub(super) fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a live struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// A simulated device's outbox: memory, fed by its event generator.
#[derive(Default)]
pub(super) struct MemOutbox {
    rows: Mutex<BTreeMap<i64, OutboxRow>>,
    next: AtomicU64,
}

impl MemOutbox {
    pub(super) fn push(&self, topic: String, payload: Vec<u8>) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed) as i64 + 1;
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).insert(
            seq,
            OutboxRow {
                seq,
                topic,
                payload,
            },
        );
    }
}

pub(super) struct MemOutboxRef(pub(super) Arc<MemOutbox>);

impl Outbox for MemOutboxRef {
    fn after(&mut self, seq: i64, limit: usize) -> Result<Vec<OutboxRow>, OutboxError> {
        let rows = self.0.rows.lock().unwrap_or_else(|e| e.into_inner());
        Ok(rows
            .range(seq + 1..)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }
    fn oldest(&mut self) -> Result<Option<i64>, OutboxError> {
        let rows = self.0.rows.lock().unwrap_or_else(|e| e.into_inner());
        Ok(rows.keys().next().copied())
    }
    fn acked(&mut self, seqs: Vec<i64>) {
        let mut rows = self.0.rows.lock().unwrap_or_else(|e| e.into_inner());
        for s in seqs {
            rows.remove(&s);
        }
    }
    fn flush(&mut self, _limit: Duration) {}
    fn events_since(
        &mut self,
        _since: i64,
        _limit: usize,
    ) -> Result<Vec<store::Event>, OutboxError> {
        Ok(Vec::new())
    }
}

struct SimHost(String);

impl FleetHost for SimHost {
    fn status(&self) -> Value {
        json!({ "state": "online", "device": self.0, "simulated": true })
    }
    fn telemetry(&self) -> Value {
        json!({ "device": self.0, "simulated": true })
    }
    fn config(&self) -> Value {
        json!({})
    }
    fn restart_pipeline(&self) -> Result<(), CommandError> {
        Err(CommandError::Simulated)
    }
    fn set_log_level(&self, _: &str) -> Result<(), CommandError> {
        Err(CommandError::Simulated)
    }
}

pub(super) fn settings(device: &str, port: u16, telemetry: Duration) -> FleetSettings {
    FleetSettings {
        device: device.to_string(),
        host: "127.0.0.1".into(),
        port,
        client_id: device.to_string(),
        credentials: None,
        keepalive: Duration::from_secs(30),
        telemetry_every: telemetry,
        inflight: 100,
        tls: None,
        log_level: "info".into(),
        workflow_groups: None,
        models: false,
        model_chunks: None,
        firmware: false,
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize]
}

fn nodelay() -> rumqttc::NetworkOptions {
    let mut n = rumqttc::NetworkOptions::new();
    n.set_tcp_nodelay(true);
    n
}

/// Counts messages on `filter` (QoS 1) until dropped.
async fn consumer(
    port: u16,
    id: &str,
    filter: &str,
) -> anyhow::Result<(Arc<AtomicU64>, tokio::task::JoinHandle<()>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_network_options(nodelay());
    let (client, mut el) = AsyncClient::new(o, 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(_))) => {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((count, task))
}

/// Records which of `expected` events (payload `n` in `0..expected`, the event's JSON as the
/// outbox sends it) arrive on `filter`; returns once the subscription is acknowledged, so
/// nothing published after the return is missed.
async fn delivery_checker(
    port: u16,
    id: &str,
    filter: &str,
    expected: u64,
) -> anyhow::Result<(Arc<Mutex<Delivery>>, tokio::task::JoinHandle<()>)> {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_network_options(nodelay());
    o.set_max_packet_size(Some(1 << 20));
    let (client, mut el) = AsyncClient::new(o, 1024);
    client.subscribe(filter, QoS::AtLeastOnce).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ev = tokio::time::timeout_at(deadline.into(), el.poll())
            .await
            .map_err(|_| anyhow::anyhow!("the broker did not acknowledge the subscription"))??;
        if let Event::Incoming(Packet::SubAck(_)) = ev {
            break;
        }
    }
    let seen = Arc::new(Mutex::new(Delivery {
        seen: vec![false; expected as usize],
        ..Delivery::default()
    }));
    let s = seen.clone();
    let task = tokio::spawn(async move {
        let _client = client;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let n = serde_json::from_slice::<Value>(&p.payload)
                        .ok()
                        .and_then(|v| v["payload"]["n"].as_u64());
                    let mut d = s.lock().unwrap_or_else(|e| e.into_inner());
                    match n {
                        Some(n) if (n as usize) < d.seen.len() => {
                            if std::mem::replace(&mut d.seen[n as usize], true) {
                                d.duplicates += 1;
                            } else {
                                d.distinct += 1;
                            }
                        }
                        _ => d.foreign += 1,
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    Ok((seen, task))
}

/// What [`delivery_checker`] received.
#[derive(Debug, Default)]
struct Delivery {
    /// Which events arrived.
    seen: Vec<bool>,
    /// Distinct expected events received.
    distinct: u64,
    /// Repeats of events already received (QoS 1 may deliver twice).
    duplicates: u64,
    /// Messages that are not one of the expected events.
    foreign: u64,
}

/// Sends `n` pings to `devices` (round robin) one at a time and returns the round trips in ms.
async fn ping_rtts(port: u16, devices: &[String], n: usize) -> anyhow::Result<Vec<f64>> {
    let mut o = MqttOptions::new("aegis-sim-controller", "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_network_options(nodelay());
    let (client, mut el) = AsyncClient::new(o, 64);
    client.subscribe("sim/replies", QoS::AtLeastOnce).await?;
    let mut rtts = Vec::with_capacity(n);
    let mut sent: HashMap<u64, Instant> = HashMap::new();
    // Wait for the subscription.
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = el.poll().await? {
            break;
        }
    }
    for i in 0..n {
        let dev = &devices[i % devices.len()];
        let props = PublishProperties {
            response_topic: Some("sim/replies".into()),
            correlation_data: Some(bytes::Bytes::from(i.to_le_bytes().to_vec())),
            ..Default::default()
        };
        sent.insert(i as u64, Instant::now());
        client
            .publish_with_properties(
                format!("aegis/v1/{dev}/cmd/ping"),
                QoS::AtLeastOnce,
                false,
                "{}",
                props,
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            anyhow::ensure!(!left.is_zero(), "no reply to ping {i} from {dev}");
            if let Ok(ev) = tokio::time::timeout(left, el.poll()).await
                && let Event::Incoming(Packet::Publish(p)) = ev?
                && let Some(c) = p.properties.and_then(|p| p.correlation_data)
                && c.len() == 8
            {
                let id = u64::from_le_bytes(c[..8].try_into().unwrap_or_default());
                if let Some(t) = sent.remove(&id) {
                    rtts.push(t.elapsed().as_secs_f64() * 1e3);
                    if id == i as u64 {
                        break;
                    }
                }
            }
        }
    }
    rtts.sort_by(f64::total_cmp);
    Ok(rtts)
}

/// One fleet-sim run.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    /// Simulated devices.
    pub devices: usize,
    /// Devices connected at the end of the warm-up.
    pub connected: u64,
    /// Events each device produced per second.
    pub rate_per_device: f64,
    /// Events produced per second (all devices).
    pub produced_per_s: f64,
    /// Events the consumer received per second over the measurement.
    pub delivered_per_s: f64,
    /// Events still in device outboxes at the end.
    pub backlog: u64,
    /// Ping round trips measured.
    pub pings: usize,
    /// Command round trip, ms.
    pub rtt_p50_ms: f64,
    /// Command round trip, ms.
    pub rtt_p99_ms: f64,
    /// The resident memory the devices added (at the end, over the process before they
    /// started), per device, bytes.
    pub rss_per_device: u64,
}

/// This process's resident set size, bytes (0 where /proc says nothing).
pub(super) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let kb = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            kb.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Runs `devices` simulated devices for `seconds`, each producing `rate` events/s.
pub fn simulate(
    devices: usize,
    seconds: f64,
    rate: f64,
    pings: usize,
) -> anyhow::Result<SimResult> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let broker = LocalBroker::start()?;
        let port = broker.port;
        let (delivered, consumer_task) =
            consumer(port, "aegis-sim-consumer", "aegis/v1/+/events").await?;
        // What the devices add: the process before them (runtime, broker, consumer) is
        // not theirs.
        let rss_before = rss_bytes();
        let mut links = Vec::with_capacity(devices);
        let mut outboxes = Vec::with_capacity(devices);
        let names: Vec<String> = (0..devices).map(|i| format!("sim-{i:05}")).collect();
        for name in &names {
            let ob = Arc::new(MemOutbox::default());
            outboxes.push(ob.clone());
            links.push(FleetLink::start(
                settings(name, port, Duration::from_secs(30)),
                Box::new(MemOutboxRef(ob)),
                Arc::new(SimHost(name.clone())),
            ));
        }
        // Warm-up: wait for the connections (bounded).
        let t0 = Instant::now();
        let connected = || {
            links
                .iter()
                .map(|l| l.counters.connected.load(Ordering::Relaxed))
                .sum::<u64>()
        };
        while connected() < devices as u64 && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let connected_now = connected();
        // Producers: one task spreads every device's events evenly.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let producer = {
            let outboxes = outboxes.clone();
            let names = names.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let total_rate = rate * outboxes.len() as f64;
                let period = Duration::from_secs_f64(1.0 / total_rate.max(1e-3));
                let mut tick = tokio::time::interval(period.max(Duration::from_micros(50)));
                let per_tick = (total_rate * tick.period().as_secs_f64()).max(1.0) as usize;
                let mut i = 0usize;
                let mut produced = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    for _ in 0..per_tick {
                        let k = i % outboxes.len();
                        let ev = json!({ "id": store::new_event_id(), "ts_us": store::now_us(),
                            "stream": "cam0", "kind": "sim", "payload": { "n": i } });
                        outboxes[k].push(
                            format!("aegis/v1/{}/events", names[k]),
                            ev.to_string().into_bytes(),
                        );
                        i += 1;
                        produced += 1;
                    }
                }
                produced
            })
        };
        let d0 = delivered.load(Ordering::Relaxed);
        let m0 = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        let d1 = delivered.load(Ordering::Relaxed);
        let measured = m0.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let produced = producer.await.unwrap_or(0);
        let rtts = ping_rtts(port, &names, pings).await?;
        let backlog: u64 = outboxes
            .iter()
            .map(|o| o.rows.lock().map(|r| r.len() as u64).unwrap_or(0))
            .sum();
        for l in links {
            l.stop().await;
        }
        consumer_task.abort();
        drop(broker);
        Ok(SimResult {
            devices,
            connected: connected_now,
            rate_per_device: rate,
            produced_per_s: produced as f64 / measured,
            delivered_per_s: (d1 - d0) as f64 / measured,
            backlog,
            pings: rtts.len(),
            rtt_p50_ms: percentile(&rtts, 0.5),
            rtt_p99_ms: percentile(&rtts, 0.99),
            rss_per_device: rss_bytes().saturating_sub(rss_before) / devices.max(1) as u64,
        })
    })
}

/// `bench fleet` results.
#[derive(Debug, Clone, Serialize)]
pub struct FleetBench {
    /// Command round trips measured.
    pub pings: usize,
    /// ms.
    pub rtt_p50_ms: f64,
    /// ms.
    pub rtt_p99_ms: f64,
    /// Rows in the outbox when the broker came back.
    pub backlog: u64,
    /// Seconds from the link's start (broker back, consumer subscribed) until a consumer
    /// has received every one of the backlog's events and the outbox is empty.
    pub drain_s: f64,
    /// Backlog rows delivered per second (backlog / `drain_s`).
    pub drain_rows_per_s: f64,
    /// Events the consumer received more than once (QoS 1 allows it), not counted above.
    pub duplicates: u64,
}

/// Command round trip on one device, then the drain of a `backlog`-row SQLite outbox.
pub fn bench_fleet(pings: usize, backlog: u64) -> anyhow::Result<FleetBench> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        let db = dir.path().join("aegis.db");
        let st = store::Store::open(store::StoreSettings {
            path: db.clone(),
            retention: Duration::from_secs(86_400),
            size_budget: 1 << 30,
            outbox_max_rows: backlog.max(1) * 2,
            queue: 65_536,
        })?;
        let h = st.handle();
        // Round trip first, with an empty outbox.
        let broker = LocalBroker::start()?;
        let link = FleetLink::start(
            settings("bench-dev", broker.port, Duration::from_secs(3600)),
            Box::new(SqliteOutbox::new(db.clone(), h.clone())),
            Arc::new(SimHost("bench-dev".into())),
        );
        let t0 = Instant::now();
        while link.counters.connected.load(Ordering::Relaxed) == 0 {
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(10),
                "link did not connect"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rtts = ping_rtts(broker.port, &["bench-dev".to_string()], pings).await?;
        link.stop().await;
        let port = broker.port;
        drop(broker);
        // Outage: the backlog builds up in SQLite.
        for n in 0..backlog {
            let event = store::Event {
                id: store::new_event_id(),
                ts_us: store::now_us(),
                stream: Some("cam0".into()),
                kind: "bench".into(),
                payload: json!({ "n": n }),
            };
            while !h.submit(store::Record::Event {
                event: event.clone(),
                outbox_topic: Some("aegis/v1/bench-dev/events".into()),
            }) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        h.flush(Duration::from_secs(60));
        // Broker back (new port is fine: the link is new too), time the drain: until every
        // event has reached a consumer, not only left the outbox.
        let broker = LocalBroker::start()?;
        let _ = port;
        let (delivery, consumer_task) = delivery_checker(
            broker.port,
            "bench-consumer",
            "aegis/v1/bench-dev/events",
            backlog,
        )
        .await?;
        let t0 = Instant::now();
        let link = FleetLink::start(
            settings("bench-dev", broker.port, Duration::from_secs(3600)),
            Box::new(SqliteOutbox::new(db.clone(), h.clone())),
            Arc::new(SimHost("bench-dev".into())),
        );
        let mut reader = SqliteOutbox::new(db.clone(), h.clone());
        let delivered = || delivery.lock().map_or(0, |d| d.distinct);
        loop {
            if delivered() == backlog && reader.oldest()?.is_none() {
                break;
            }
            anyhow::ensure!(
                t0.elapsed() < Duration::from_secs(300),
                "the backlog did not drain in 300 s: {} of {backlog} events delivered",
                delivered()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let drain = t0.elapsed().as_secs_f64();
        link.stop().await;
        consumer_task.abort();
        let (duplicates, foreign) = delivery
            .lock()
            .map_or((0, 0), |d| (d.duplicates, d.foreign));
        anyhow::ensure!(
            foreign == 0,
            "the consumer received {foreign} messages that are not backlog events"
        );
        drop(h);
        st.close();
        Ok(FleetBench {
            pings: rtts.len(),
            rtt_p50_ms: percentile(&rtts, 0.5),
            rtt_p99_ms: percentile(&rtts, 0.99),
            backlog,
            drain_s: drain,
            drain_rows_per_s: backlog as f64 / drain,
            duplicates,
        })
    })
}

/// `bench store` results.
#[derive(Debug, Clone, Serialize)]
pub struct StoreBench {
    /// Rows written per run.
    pub rows: u64,
    /// Through the writer (batched transactions, cached prepared statements).
    pub batched_rows_per_s: f64,
    /// One row per transaction, same pragmas, same cached prepared statement: the strongest
    /// fair baseline.
    pub single_rows_per_s: f64,
    /// batched / single: the effect of batching alone.
    pub ratio: f64,
    /// One row per transaction preparing its statement each time (the naive logger), for
    /// reference: single / this is what caching the statement alone is worth.
    pub single_unprepared_rows_per_s: f64,
}

/// Rounds `bench store` alternates its three writers over, so that a change in machine
/// load during the run weighs on each alike.
const STORE_BENCH_ROUNDS: u64 = 4;

fn event_record(n: u64) -> store::Record {
    store::Record::Event {
        event: store::Event {
            id: store::new_event_id(),
            ts_us: store::now_us(),
            stream: Some("cam0".into()),
            kind: "bench".into(),
            payload: json!({ "n": n, "label": "person", "score": 0.9 }),
        },
        outbox_topic: None,
    }
}

/// Store ingest of the same event rows three ways, each into its own fresh database with
/// the store's schema and pragmas, alternating over [`STORE_BENCH_ROUNDS`] rounds: the
/// batching writer (until its last transaction committed); one row per transaction with
/// the writer's statement prepared once (cached), so the ratio is batching alone; and one
/// row per transaction preparing the statement each time, for reference. Records are made
/// before each clock starts: only writing them is timed.
pub fn bench_store(rows: u64, dir: &Path) -> anyhow::Result<StoreBench> {
    anyhow::ensure!(rows >= 1, "bench store: --rows must be at least 1");
    let path = |name: &str| {
        let p = dir.join(name);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
        }
        p
    };
    let settings = |path: PathBuf, queue: usize| store::StoreSettings {
        path,
        retention: Duration::from_secs(86_400),
        size_budget: 1 << 30,
        outbox_max_rows: 1000,
        queue,
    };
    let per_round = rows.div_ceil(STORE_BENCH_ROUNDS);
    // The queue holds a whole round and the flush after it: no row is refused, the flush
    // never waits for room.
    let st = store::Store::open(settings(path("batched.db"), per_round as usize + 1))?;
    let h = st.handle();
    let mut single = Vec::new();
    for (name, cached) in [("single.db", true), ("unprepared.db", false)] {
        let p = path(name);
        store::Store::open(settings(p.clone(), 1))?.close();
        let conn = rusqlite::Connection::open(&p)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        single.push((conn, cached, Duration::ZERO));
    }
    let mut batched = Duration::ZERO;
    let mut n = 0;
    while n < rows {
        let round = n..(n + per_round).min(rows);
        n = round.end;
        // Built before the clocks start; the batching writer consumes its copy.
        let records: Vec<store::Record> = round.clone().map(event_record).collect();
        let submitted = records.clone();
        let t0 = Instant::now();
        for r in submitted {
            anyhow::ensure!(h.submit(r), "the store refused a row");
        }
        anyhow::ensure!(
            h.flush(Duration::from_secs(600)),
            "the writer did not commit within 600 s"
        );
        batched += t0.elapsed();
        for (conn, cached, spent) in &mut single {
            *spent += one_row_per_transaction(conn, &records, *cached)?;
        }
    }
    let progress = h.progress();
    anyhow::ensure!(
        progress.failed == 0 && progress.settled == rows,
        "the batching writer committed {} of {rows} rows",
        progress.settled - progress.failed
    );
    drop(h);
    st.close();
    let per_s = |d: Duration| rows as f64 / d.as_secs_f64();
    let (single, unprepared) = (per_s(single[0].2), per_s(single[1].2));
    Ok(StoreBench {
        rows,
        batched_rows_per_s: per_s(batched),
        single_rows_per_s: single,
        ratio: per_s(batched) / single,
        single_unprepared_rows_per_s: unprepared,
    })
}

/// Time to write `records` (events) one transaction each, with the writer's statement
/// prepared once (`cached`) or for every row.
fn one_row_per_transaction(
    conn: &mut rusqlite::Connection,
    records: &[store::Record],
    cached: bool,
) -> anyhow::Result<Duration> {
    // The writer's own statement.
    const SQL: &str = store::INSERT_EVENT_SQL;
    let t0 = Instant::now();
    for r in records {
        let store::Record::Event { event, .. } = r else {
            anyhow::bail!("bench store writes events only")
        };
        let payload = event.payload.to_string();
        let tx = conn.transaction()?;
        let values = rusqlite::params![event.id, event.ts_us, event.stream, event.kind, payload];
        if cached {
            tx.prepare_cached(SQL)?.execute(values)?;
        } else {
            tx.prepare(SQL)?.execute(values)?;
        }
        tx.commit()?;
    }
    Ok(t0.elapsed())
}
