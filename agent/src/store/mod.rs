//! The local store: one SQLite file in WAL mode, written by exactly one thread in batched
//! transactions, read on separate connections.
//!
//! * **Never blocks frames.** Producers hand records to [`StoreHandle::submit`], which never
//!   waits: when the bounded queue is full (the disk cannot keep up) the record is dropped and
//!   counted (`aegis_store_dropped_total`).
//! * **Never "database is locked".** One writer; readers use WAL snapshots; every connection
//!   has a `busy_timeout`.
//! * **Never corrupt, never silently lost.** `PRAGMA integrity_check` at open; a damaged file
//!   (with its `-wal`/`-shm`) is moved aside as `<name>.corrupt-<unix time>`, never deleted,
//!   an audit row records it, and the agent starts on a fresh file (salvage: `sqlite3
//!   <name>.corrupt-… .recover | sqlite3 salvaged.db`, see `docs/store.md`).
//! * **Bounded.** Retention by age and by a size budget (oldest events and metrics first);
//!   the fleet outbox has its own row limit with an oldest-first drop policy, counted.

pub mod export;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde::Serialize;

/// How long a connection waits for a lock before failing (the writer is alone, so this only
/// covers checkpoints and external tools).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Most records per transaction.
const MAX_BATCH: usize = 1024;
/// Longest a record waits for its transaction.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// How often retention runs.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Errors opening or reading the store; each names the file.
#[derive(Debug, thiserror::Error)]
#[error("store {path}: {problem}")]
pub struct StoreError {
    /// The database file.
    pub path: PathBuf,
    /// What went wrong.
    pub problem: StoreProblem,
}

/// What went wrong with the database file (see [`StoreError`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreProblem {
    /// The file to read does not exist.
    #[error("no such database")]
    Missing,
    /// The database's folder cannot be created.
    #[error("cannot create {}: {source}", dir.display())]
    Folder {
        /// The folder.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A damaged file (and its WAL) cannot be renamed out of the way.
    #[error("cannot move the damaged file aside: {source}")]
    MoveAside {
        /// Why.
        source: std::io::Error,
    },
    /// The OS refused the writer thread.
    #[error("cannot start the writer thread: {source}")]
    WriterThread {
        /// Why.
        source: std::io::Error,
    },
    /// A fresh database is damaged as well.
    #[error(transparent)]
    Damaged(#[from] Damage),
    /// The schema cannot be brought to this build's version.
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
    /// SQLite refused an operation.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// Store limits (from the `store` config section).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// The database file.
    pub path: PathBuf,
    /// Age limit of events, metrics and audit rows.
    pub retention: Duration,
    /// Size budget of the file in bytes.
    pub size_budget: u64,
    /// Most outbox rows.
    pub outbox_max_rows: u64,
    /// Queue capacity between producers and the writer.
    pub queue: usize,
}

impl StoreSettings {
    /// A store `aegis.db` in `dir` with generous limits, for tests.
    #[cfg(test)]
    pub(crate) fn for_test(dir: &Path) -> Self {
        StoreSettings {
            path: dir.join("aegis.db"),
            retention: Duration::from_secs(30 * 86_400),
            size_budget: 512 << 20,
            outbox_max_rows: 100_000,
            queue: 4096,
        }
    }

    /// Settings from the config section.
    pub fn from_config(c: &aegis_config::StoreConfig) -> Self {
        StoreSettings {
            path: c.path.clone(),
            retention: Duration::from_secs(u64::from(c.retention_days) * 86_400),
            size_budget: c.size_budget_mb * 1024 * 1024,
            outbox_max_rows: c.outbox_max_rows,
            queue: c.queue as usize,
        }
    }
}

/// An event as stored (and published).
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    /// UUIDv7, unique; consumers de-duplicate on it.
    pub id: String,
    /// Wall clock, µs since the Unix epoch.
    pub ts_us: i64,
    /// The stream it concerns.
    pub stream: Option<String>,
    /// `moderation`, `track_started`, `track_ended`, ...
    pub kind: String,
    /// Details (JSON object).
    pub payload: serde_json::Value,
}

/// One record for the writer.
#[derive(Debug, Clone)]
pub enum Record {
    /// An event; with `outbox_topic`, also queued for the fleet broker in the same
    /// transaction.
    Event {
        /// The event.
        event: Event,
        /// Topic to publish it on, when the fleet link is on.
        outbox_topic: Option<String>,
    },
    /// A metric sample.
    Metric {
        /// When.
        ts_us: i64,
        /// Name (`aegis_stream_fps`, ...).
        name: String,
        /// Labels as a JSON object.
        labels: String,
        /// Value.
        value: f64,
    },
    /// An audit entry.
    Audit {
        /// When.
        ts_us: i64,
        /// Who.
        actor: String,
        /// What.
        action: String,
        /// Details.
        detail: String,
    },
    /// Outbox rows the broker acknowledged (PUBACK): deleted.
    OutboxAck(Vec<i64>),
    /// A sensor reading.
    SensorSample {
        /// When, on the agent's clock.
        ts_us: i64,
        /// `gps`, `imu`, or an IoT sensor's name.
        sensor: String,
        /// JSON.
        value: String,
        /// The GPS receiver's own UTC (µs since the Unix epoch) for a fix whose date the
        /// receiver gave; `None` otherwise.
        utc_us: Option<i64>,
    },
    /// An event's fused pose.
    Fused(Box<FusedRecord>),
    /// A message for the fleet broker that is not an event (a `.mu` receipt, a rejection
    /// notice): outbox only.
    Message {
        /// Unique id (the outbox row's `event_id`).
        id: String,
        /// Topic.
        topic: String,
        /// Body.
        payload: Vec<u8>,
        /// When.
        ts_us: i64,
    },
    /// A signed answer of the workflow applier, for the history the web page shows.
    WorkflowAnswer(Box<WorkflowAnswer>),
    /// An event clip (or an evidence record kept without imagery): inserted once.
    Clip(Box<ClipRow>),
    /// A clip's file was deleted (retention, disk budget): its row says when and why.
    ClipDeleted {
        /// The clip's id.
        id: String,
        /// When.
        ts_us: i64,
        /// `retention`, `disk_budget`.
        why: String,
    },
    /// A clip put under legal hold (true) or released.
    ClipHold {
        /// The clip's id.
        id: String,
        /// Held.
        hold: bool,
    },
    /// A finished track's summary.
    Track {
        /// Stream id.
        stream: String,
        /// Track id (per stream run).
        track_id: u64,
        /// Class label.
        label: String,
        /// First and last seen, µs wall clock.
        first_us: i64,
        /// Last seen.
        last_us: i64,
        /// Frames it was reported in.
        frames: u64,
        /// Best detection score.
        best_score: f64,
    },
}

/// One row of `clips`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClipRow {
    /// The clip's id.
    pub id: String,
    /// The stream.
    pub stream: String,
    /// Wall clock of its first frame, µs.
    pub start_us: i64,
    /// Of its end.
    pub end_us: i64,
    /// The clip file (None: no imagery kept).
    pub path: Option<String>,
    /// Its signed manifest file.
    pub manifest: Option<String>,
    /// SHA-256 of the plain MP4.
    pub sha256: Option<String>,
    /// Plain MP4 bytes.
    pub bytes: Option<u64>,
    /// Frames.
    pub frames: Option<u64>,
    /// Sealed at rest.
    pub sealed: bool,
    /// Video kept (false: metadata only).
    pub imagery: bool,
    /// Event kinds, comma-separated.
    pub kinds: String,
    /// The events (JSON array of `{id, kind, ts_us}`).
    pub events: serde_json::Value,
    /// Kept until, µs.
    pub retain_until_us: i64,
    /// Under legal hold.
    pub legal_hold: bool,
    /// Deleted when (µs), if it was.
    pub deleted_us: Option<i64>,
    /// Why it was deleted.
    pub deleted_why: Option<String>,
}

/// Columns of `clips` in [`ClipRow`]'s order, for readers.
pub const CLIP_COLUMNS: &str = "id, stream, start_us, end_us, path, manifest, sha256, bytes, \
    frames, sealed, imagery, kinds, events, retain_until_us, legal_hold, deleted_us, deleted_why";

impl ClipRow {
    /// A row read with [`CLIP_COLUMNS`].
    pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ClipRow> {
        let events: String = r.get(12)?;
        Ok(ClipRow {
            id: r.get(0)?,
            stream: r.get(1)?,
            start_us: r.get(2)?,
            end_us: r.get(3)?,
            path: r.get(4)?,
            manifest: r.get(5)?,
            sha256: r.get(6)?,
            bytes: r.get::<_, Option<i64>>(7)?.map(|v| v as u64),
            frames: r.get::<_, Option<i64>>(8)?.map(|v| v as u64),
            sealed: r.get(9)?,
            imagery: r.get(10)?,
            kinds: r.get(11)?,
            events: serde_json::from_str(&events).unwrap_or_default(),
            retain_until_us: r.get(13)?,
            legal_hold: r.get(14)?,
            deleted_us: r.get(15)?,
            deleted_why: r.get(16)?,
        })
    }
}

/// One row of the workflow history (`workflow_history`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkflowAnswer {
    /// When, µs since the Unix epoch.
    pub ts_us: i64,
    /// Where the document came from: a fleet topic, `http` (the local API) or `web:<user>`.
    pub via: String,
    /// The workflow's `id`.
    pub workflow_id: String,
    /// Its sequence.
    pub sequence: u64,
    /// SHA-256 of its signed bytes.
    pub digest: String,
    /// `applied`, `rolled_back`, `rejected` or `revoked`.
    pub verdict: String,
    /// Why (redacted).
    pub reason: String,
    /// The signed `.mu` receipt (None: signing failed).
    pub receipt: Option<String>,
}

/// An event with the fused pose at its frame's time.
#[derive(Debug, Clone, PartialEq)]
pub struct FusedRecord {
    /// The event's id.
    pub event_id: String,
    /// When.
    pub ts_us: i64,
    /// Stream.
    pub stream: Option<String>,
    /// Event kind.
    pub kind: String,
    /// Degrees.
    pub lat: f64,
    /// Degrees.
    pub lon: f64,
    /// m/s.
    pub speed_mps: f64,
    /// Degrees from north.
    pub heading_deg: f64,
    /// Position σ, metres.
    pub sigma_m: f64,
    /// IoT values, JSON.
    pub sensors: String,
}

/// Writer counters.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Records written.
    pub written: AtomicU64,
    /// Records dropped because the queue was full.
    pub dropped: AtomicU64,
    /// Transactions committed.
    pub transactions: AtomicU64,
    /// Outbox rows dropped by the outbox limit (oldest first).
    pub outbox_dropped: AtomicU64,
    /// Rows deleted by retention.
    pub retention_deleted: AtomicU64,
    /// Write errors (logged).
    pub errors: AtomicU64,
}

impl StoreCounters {
    /// Every counter by name, for metrics.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        use std::sync::atomic::Ordering::Relaxed;
        vec![
            ("written", self.written.load(Relaxed)),
            ("dropped", self.dropped.load(Relaxed)),
            ("transactions", self.transactions.load(Relaxed)),
            ("outbox_dropped", self.outbox_dropped.load(Relaxed)),
            ("retention_deleted", self.retention_deleted.load(Relaxed)),
            ("errors", self.errors.load(Relaxed)),
        ]
    }
}

/// How far the writer has got, in queue order (the order records left the queue, which for a
/// single producer is the order its successful [`StoreHandle::submit`] calls were made).
/// Published once per transaction, after it ended.
///
/// When `failed` is 0, queue positions `1..=settled` are all committed. A committed record
/// survives the process being killed at any point (`kill -9`, a panic, the OOM killer): the
/// database runs in WAL mode with `synchronous=NORMAL`, so a commit has reached the
/// operating system when it returns. It is not yet on the disk: the WAL is synced at each
/// checkpoint, so a power cut or kernel crash may roll back the transactions committed since
/// the last one (the file stays consistent; nothing half-written appears).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Records taken off the queue whose transaction has ended, committed or failed.
    pub settled: u64,
    /// Of those, records in transactions that failed (dropped, and counted in
    /// [`StoreCounters::dropped`]).
    pub failed: u64,
}

/// [`Progress`] and a way to wait for it to move.
#[derive(Debug, Default)]
struct CommitWatch {
    progress: Mutex<Progress>,
    moved: Condvar,
}

impl CommitWatch {
    fn get(&self) -> Progress {
        // Two integers: valid whatever a panicking holder left behind.
        *self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called by the writer after each transaction ended: once per batch, never per record.
    fn advance(&self, records: u64, failed: bool) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.settled += records;
        if failed {
            p.failed += records;
        }
        drop(p);
        self.moved.notify_all();
    }
}

enum Msg {
    Rec(Record),
    /// Write what is queued, then signal.
    Flush(std::sync::mpsc::SyncSender<()>),
    /// Write what is queued and stop.
    Close,
}

/// The producers' side: cloneable, never blocks.
#[derive(Clone)]
pub struct StoreHandle {
    tx: SyncSender<Msg>,
    counters: Arc<StoreCounters>,
    commits: Arc<CommitWatch>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Queues a record; returns false (and counts it) when the queue is full or the writer
    /// has stopped.
    pub fn submit(&self, r: Record) -> bool {
        match self.tx.try_send(Msg::Rec(r)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Waits (at most `limit`) until every record queued before this call is committed.
    /// For shutdown paths (the fleet link's final drain), never for the frame path.
    pub fn flush(&self, limit: Duration) -> bool {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + limit;
        let mut msg = Msg::Flush(tx);
        loop {
            match self.tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    msg = m;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return false,
            }
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }

    /// The writer's counters.
    pub fn counters(&self) -> &Arc<StoreCounters> {
        &self.counters
    }

    /// The writer's progress now: which records are committed (see [`Progress`]).
    pub fn progress(&self) -> Progress {
        self.commits.get()
    }

    /// Waits (at most `limit`) until the writer has settled more than `past` records, and
    /// returns its progress then (unchanged when the limit passed first). Costs producers
    /// nothing: the writer publishes once per transaction.
    pub fn wait_progress(&self, past: u64, limit: Duration) -> Progress {
        let guard = self
            .commits
            .progress
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let (guard, _) = self
            .commits
            .moved
            .wait_timeout_while(guard, limit, |p| p.settled <= past)
            .unwrap_or_else(|p| p.into_inner());
        *guard
    }
}

/// The store: its writer thread and the path readers open.
pub struct Store {
    settings: StoreSettings,
    handle: StoreHandle,
    writer: Option<JoinHandle<()>>,
    /// What `open` found (schema version before migration, whether a damaged file was moved
    /// aside).
    pub opened: OpenReport,
}

/// What opening found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpenReport {
    /// Schema version before migrations (0 = new file).
    pub found_version: i64,
    /// Where a damaged file was moved, if it was.
    pub moved_aside: Option<PathBuf>,
}

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A fresh UUIDv7 whose ids sort (as strings too) in the order this process made them, on
/// every thread: RFC 9562 §6.2 method 1. The 74 bits after the 48-bit millisecond timestamp
/// (`rand_a` and `rand_b`, around the version and variant) are one counter, seeded from the OS
/// random source at each new millisecond with its top bit clear (2^73 increments of room) and
/// incremented for every further id in that millisecond. When the clock steps back the last
/// timestamp is kept and the counter goes on; should it ever run out, the timestamp moves one
/// millisecond ahead. Ids from different processes within one millisecond are not ordered.
pub fn new_event_id() -> String {
    static LAST: std::sync::Mutex<(u64, u128)> = std::sync::Mutex::new((0, 0));
    const COUNTER_BITS: u32 = 74;
    const COUNTER_MAX: u128 = (1 << COUNTER_BITS) - 1;
    let seed = || {
        let mut b = [0u8; 16];
        if getrandom::fill(&mut b).is_err() {
            // No OS randomness: the hasher's per-process keys still differ between runs.
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(now_us());
            b[..8].copy_from_slice(&h.finish().to_le_bytes());
        }
        u128::from_le_bytes(b) & (COUNTER_MAX >> 1)
    };
    let now_ms = (now_us() / 1000).max(0) as u64 & 0xFFFF_FFFF_FFFF;
    let (ms, counter) = {
        // The state is two integers, valid whatever a panicking holder left behind.
        let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
        *last = if now_ms > last.0 {
            (now_ms, seed())
        } else if last.1 < COUNTER_MAX {
            (last.0, last.1 + 1)
        } else {
            ((last.0 + 1) & 0xFFFF_FFFF_FFFF, seed())
        };
        *last
    };
    let rand_a = (counter >> 62) as u64 & 0x0FFF;
    let rand_b = counter as u64 & 0x3FFF_FFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xFFFF,
        rand_a,
        0x8000 | (rand_b >> 48) as u16,
        rand_b & 0xFFFF_FFFF_FFFF
    )
}

fn err(path: &Path, problem: impl Into<StoreProblem>) -> StoreError {
    StoreError {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // NORMAL in WAL mode: a power cut may lose the last transactions, never corrupts.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// The result of `PRAGMA integrity_check` ("ok" when healthy); an error when the file is
/// not a database at all.
fn integrity(conn: &Connection) -> rusqlite::Result<String> {
    let mut stmt = conn.prepare("PRAGMA integrity_check")?;
    let rows: Vec<String> = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(rows.join("; "))
}

/// Why a database file cannot be used as it is (it is moved aside and a fresh one started).
#[derive(Debug, thiserror::Error)]
pub enum Damage {
    /// `PRAGMA integrity_check` found problems.
    #[error("integrity check failed: {report}")]
    Integrity {
        /// What the check reported.
        report: String,
    },
    /// The file is not a database SQLite can configure or check.
    #[error("{source}")]
    Unreadable {
        /// Why.
        #[from]
        source: rusqlite::Error,
    },
}

/// Moves a damaged database (and its WAL and shared-memory files) aside.
fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let stamp = now_us() / 1_000_000;
    let aside = PathBuf::from(format!("{}.corrupt-{stamp}", path.display()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to)
                .map_err(|source| err(path, StoreProblem::MoveAside { source }))?;
        }
    }
    Ok(aside)
}

/// Opens (creating, checking and migrating) the database for writing.
fn open_writer(path: &Path) -> Result<(Connection, OpenReport), StoreError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| {
            err(
                path,
                StoreProblem::Folder {
                    dir: dir.to_path_buf(),
                    source,
                },
            )
        })?;
    }
    let mut report = OpenReport::default();
    let check = |conn: &Connection| -> Result<(), Damage> {
        configure(conn)?;
        match integrity(conn)? {
            s if s == "ok" => Ok(()),
            report => Err(Damage::Integrity { report }),
        }
    };
    let mut conn = Connection::open(path).map_err(|e| err(path, e))?;
    if let Err(problem) = check(&conn) {
        drop(conn);
        let aside = move_aside(path)?;
        tracing::error!(path = %path.display(), moved_to = %aside.display(), %problem,
            "the database is damaged: moved aside (not deleted), starting a fresh one; see docs/store.md to salvage it");
        conn = Connection::open(path).map_err(|e| err(path, e))?;
        check(&conn).map_err(|e| err(path, e))?;
        report.moved_aside = Some(aside);
    }
    report.found_version = schema::migrate(&mut conn).map_err(|e| err(path, e))?;
    if let Some(aside) = &report.moved_aside {
        conn.execute(
            "INSERT INTO audit (ts_us, actor, action, detail) VALUES (?1, 'agent', 'store.recovered', ?2)",
            params![now_us(), format!("damaged database moved to {}", aside.display())],
        )
        .map_err(|e| err(path, e))?;
    }
    Ok((conn, report))
}

/// A read-only connection (WAL snapshot reads; never blocks the writer).
pub fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(err(path, StoreProblem::Missing));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| err(path, e))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| err(path, e))?;
    Ok(conn)
}

impl Store {
    /// Opens the database (integrity check, migrations) and starts the writer thread.
    pub fn open(settings: StoreSettings) -> Result<Store, StoreError> {
        let (conn, opened) = open_writer(&settings.path)?;
        let (tx, rx) = std::sync::mpsc::sync_channel(settings.queue.max(1));
        let counters = Arc::new(StoreCounters::default());
        let commits = Arc::new(CommitWatch::default());
        let writer = {
            let counters = counters.clone();
            let commits = commits.clone();
            let ws = settings.clone();
            std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || Writer::new(conn, ws, counters, commits).run(rx))
                .map_err(|source| err(&settings.path, StoreProblem::WriterThread { source }))?
        };
        Ok(Store {
            settings,
            handle: StoreHandle {
                tx,
                counters,
                commits,
            },
            writer: Some(writer),
            opened,
        })
    }

    /// A producer handle.
    pub fn handle(&self) -> StoreHandle {
        self.handle.clone()
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.settings.path
    }

    /// Writes what is queued, checkpoints the WAL and stops the writer. Handles still held
    /// elsewhere see later records dropped (counted).
    pub fn close(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(w) = self.writer.take() {
            // Waits for room: everything queued before it is written first.
            let _ = self.handle.tx.send(Msg::Close);
            let _ = w.join();
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.finish();
    }
}

struct Writer {
    conn: Connection,
    settings: StoreSettings,
    counters: Arc<StoreCounters>,
    commits: Arc<CommitWatch>,
    last_retention: Instant,
    batch: Vec<Record>,
}

impl Writer {
    fn new(
        conn: Connection,
        settings: StoreSettings,
        counters: Arc<StoreCounters>,
        commits: Arc<CommitWatch>,
    ) -> Self {
        Writer {
            conn,
            settings,
            counters,
            commits,
            last_retention: Instant::now() - RETENTION_EVERY,
            batch: Vec::with_capacity(MAX_BATCH),
        }
    }

    fn run(mut self, rx: Receiver<Msg>) {
        self.retention();
        loop {
            // Wait for a first record (waking for retention now and then).
            match rx.recv_timeout(RETENTION_EVERY) {
                Ok(Msg::Rec(r)) => self.batch.push(r),
                Ok(Msg::Flush(done)) => {
                    self.flush();
                    let _ = done.send(());
                    continue;
                }
                Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.retention();
                    continue;
                }
            }
            let deadline = Instant::now() + BATCH_WINDOW;
            let mut closed = false;
            while self.batch.len() < MAX_BATCH {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(Msg::Rec(r)) => self.batch.push(r),
                    Ok(Msg::Flush(done)) => {
                        self.flush();
                        let _ = done.send(());
                    }
                    Err(RecvTimeoutError::Timeout) => break,
                    Ok(Msg::Close) | Err(RecvTimeoutError::Disconnected) => {
                        closed = true;
                        break;
                    }
                }
            }
            self.flush();
            if self.last_retention.elapsed() >= RETENTION_EVERY {
                self.retention();
            }
            if closed {
                break;
            }
        }
        self.flush();
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
    }

    fn flush(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let n = self.batch.len() as u64;
        let result = write_batch(&mut self.conn, &self.batch, self.settings.outbox_max_rows);
        // Published only after the transaction ended: a record counted as settled and not
        // failed is committed.
        self.commits.advance(n, result.is_err());
        match result {
            Ok(outbox_dropped) => {
                self.counters.written.fetch_add(n, Ordering::Relaxed);
                self.counters.transactions.fetch_add(1, Ordering::Relaxed);
                if outbox_dropped > 0 {
                    self.counters
                        .outbox_dropped
                        .fetch_add(outbox_dropped, Ordering::Relaxed);
                    tracing::warn!(
                        dropped = outbox_dropped,
                        limit = self.settings.outbox_max_rows,
                        "fleet outbox full: dropped its oldest messages"
                    );
                }
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(n, Ordering::Relaxed);
                tracing::error!(error = %e, records = n, "store write failed; records dropped");
            }
        }
        self.batch.clear();
    }

    fn retention(&mut self) {
        self.last_retention = Instant::now();
        match retention(&self.conn, &self.settings) {
            Ok(n) if n > 0 => {
                self.counters
                    .retention_deleted
                    .fetch_add(n, Ordering::Relaxed);
                tracing::info!(deleted = n, "store retention");
            }
            Ok(_) => {}
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "store retention failed");
            }
        }
    }
}

/// The writer's statement for one event (also what `aegis bench store`'s single-row baseline
/// runs, so both measure the same statement).
pub(crate) const INSERT_EVENT_SQL: &str =
    "INSERT OR IGNORE INTO events (id, ts_us, stream, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)";

/// Writes `batch` in one transaction; returns outbox rows dropped by the limit.
fn write_batch(conn: &mut Connection, batch: &[Record], outbox_max: u64) -> rusqlite::Result<u64> {
    let tx = conn.transaction()?;
    let mut outboxed = false;
    {
        let mut ev = tx.prepare_cached(INSERT_EVENT_SQL)?;
        let mut ob = tx.prepare_cached(
            "INSERT INTO outbox (event_id, topic, payload, created_us) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut me = tx.prepare_cached(
            "INSERT INTO metrics (ts_us, name, labels, value) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut au = tx.prepare_cached(
            "INSERT INTO audit (ts_us, actor, action, detail) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut tr = tx.prepare_cached(
            "INSERT OR REPLACE INTO tracks (stream, track_id, label, first_us, last_us, frames, best_score) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for r in batch {
            match r {
                Record::Event {
                    event,
                    outbox_topic,
                } => {
                    let payload = event.payload.to_string();
                    ev.execute(params![
                        event.id,
                        event.ts_us,
                        event.stream,
                        event.kind,
                        payload
                    ])?;
                    if let Some(topic) = outbox_topic {
                        let body = serde_json::to_vec(event).unwrap_or_default();
                        ob.execute(params![event.id, topic, body, event.ts_us])?;
                        outboxed = true;
                    }
                }
                Record::Metric {
                    ts_us,
                    name,
                    labels,
                    value,
                } => {
                    me.execute(params![ts_us, name, labels, value])?;
                }
                Record::Audit {
                    ts_us,
                    actor,
                    action,
                    detail,
                } => {
                    au.execute(params![ts_us, actor, action, detail])?;
                }
                Record::SensorSample {
                    ts_us,
                    sensor,
                    value,
                    utc_us,
                } => {
                    tx.prepare_cached(
                        "INSERT INTO sensor_samples (ts_us, sensor, value, utc_us) \
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![ts_us, sensor, value, utc_us])?;
                }
                Record::Fused(f) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO fused_records (event_id, ts_us, stream, kind, lat, lon, \
                         speed_mps, heading_deg, sigma_m, sensors) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                    )?
                    .execute(params![
                        f.event_id, f.ts_us, f.stream, f.kind, f.lat, f.lon, f.speed_mps,
                        f.heading_deg, f.sigma_m, f.sensors
                    ])?;
                }
                Record::Message {
                    id,
                    topic,
                    payload,
                    ts_us,
                } => {
                    ob.execute(params![id, topic, payload, ts_us])?;
                    outboxed = true;
                }
                Record::OutboxAck(seqs) => {
                    let mut del = tx.prepare_cached("DELETE FROM outbox WHERE seq = ?1")?;
                    for seq in seqs {
                        del.execute(params![seq])?;
                    }
                }
                Record::Clip(c) => {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO clips (id, stream, start_us, end_us, path, manifest, \
                         sha256, bytes, frames, sealed, imagery, kinds, events, retain_until_us, \
                         legal_hold, created_us) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                    )?
                    .execute(params![
                        c.id,
                        c.stream,
                        c.start_us,
                        c.end_us,
                        c.path,
                        c.manifest,
                        c.sha256,
                        c.bytes.map(|v| v as i64),
                        c.frames.map(|v| v as i64),
                        c.sealed,
                        c.imagery,
                        c.kinds,
                        c.events.to_string(),
                        c.retain_until_us,
                        c.legal_hold,
                        now_us()
                    ])?;
                }
                Record::ClipDeleted { id, ts_us, why } => {
                    tx.prepare_cached(
                        "UPDATE clips SET path = NULL, deleted_us = ?2, deleted_why = ?3 WHERE id = ?1",
                    )?
                    .execute(params![id, ts_us, why])?;
                }
                Record::ClipHold { id, hold } => {
                    tx.prepare_cached("UPDATE clips SET legal_hold = ?2 WHERE id = ?1")?
                        .execute(params![id, hold])?;
                }
                Record::WorkflowAnswer(w) => {
                    tx.prepare_cached(
                        "INSERT INTO workflow_history (ts_us, via, workflow_id, sequence, digest, \
                         verdict, reason, receipt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                    )?
                    .execute(params![
                        w.ts_us,
                        w.via,
                        w.workflow_id,
                        w.sequence as i64,
                        w.digest,
                        w.verdict,
                        w.reason,
                        w.receipt
                    ])?;
                }
                Record::Track {
                    stream,
                    track_id,
                    label,
                    first_us,
                    last_us,
                    frames,
                    best_score,
                } => {
                    tr.execute(params![
                        stream,
                        *track_id as i64,
                        label,
                        first_us,
                        last_us,
                        *frames as i64,
                        best_score
                    ])?;
                }
            }
        }
    }
    let mut dropped = 0;
    if outboxed {
        let rows: i64 = tx.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))?;
        let excess = rows - outbox_max as i64;
        if excess > 0 {
            dropped = tx.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?1)",
                params![excess],
            )? as u64;
        }
    }
    tx.commit()?;
    Ok(dropped)
}

/// Deletes rows past the age limit, then the oldest events and metrics while the file is
/// over its budget. Returns rows deleted.
fn retention(conn: &Connection, s: &StoreSettings) -> rusqlite::Result<u64> {
    let cutoff = now_us() - s.retention.as_micros() as i64;
    let mut deleted = 0u64;
    for table in [
        "events",
        "metrics",
        "audit",
        "sensor_samples",
        "fused_records",
        "workflow_history",
    ] {
        deleted += conn.execute(
            &format!("DELETE FROM {table} WHERE ts_us < ?1"),
            params![cutoff],
        )? as u64;
    }
    deleted += conn.execute("DELETE FROM tracks WHERE last_us < ?1", params![cutoff])? as u64;
    // Clips whose files are gone keep their row (what was deleted, when, why) this long.
    deleted += conn.execute(
        "DELETE FROM clips WHERE deleted_us IS NOT NULL AND deleted_us < ?1",
        params![cutoff],
    )? as u64;
    // Size: the file's live pages (free pages are reused before the file grows).
    let live = |conn: &Connection| -> rusqlite::Result<u64> {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        Ok(((pages - free).max(0) * page_size) as u64)
    };
    let mut rounds = 0;
    while live(conn)? > s.size_budget && rounds < 100 {
        rounds += 1;
        let mut n = 0;
        for table in ["metrics", "sensor_samples", "events", "fused_records"] {
            n += conn.execute(
                &format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} ORDER BY ts_us LIMIT \
                     (SELECT MAX(100, COUNT(*) / 10) FROM {table}))"
                ),
                [],
            )? as u64;
        }
        if n == 0 {
            break;
        }
        deleted += n;
    }
    Ok(deleted)
}

/// Table sizes and file facts for `aegis db stats`.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Schema version.
    pub schema_version: i64,
    /// Rows per table.
    pub rows: Vec<(String, i64)>,
    /// File size in bytes (main file).
    pub file_bytes: u64,
    /// WAL size in bytes.
    pub wal_bytes: u64,
    /// Oldest and newest event time (µs).
    pub events_span_us: Option<(i64, i64)>,
}

/// Reads [`Stats`].
pub fn stats(path: &Path) -> Result<Stats, StoreError> {
    let conn = open_reader(path)?;
    let e = |x: rusqlite::Error| err(path, x);
    let schema_version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(e)?;
    let mut rows = Vec::new();
    for t in [
        "events",
        "metrics",
        "audit",
        "tracks",
        "outbox",
        "sensor_samples",
        "fused_records",
        "workflow_history",
    ] {
        let n: i64 = conn
            .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .map_err(e)?;
        rows.push((t.to_string(), n));
    }
    let events_span_us = conn
        .query_row("SELECT MIN(ts_us), MAX(ts_us) FROM events", [], |r| {
            Ok(
                match (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?) {
                    (Some(a), Some(b)) => Some((a, b)),
                    _ => None,
                },
            )
        })
        .map_err(e)?;
    let size = |p: PathBuf| std::fs::metadata(p).map_or(0, |m| m.len());
    Ok(Stats {
        schema_version,
        rows,
        file_bytes: size(path.to_path_buf()),
        wal_bytes: size(PathBuf::from(format!("{}-wal", path.display()))),
        events_span_us,
    })
}

/// A stored sensor reading.
#[derive(Debug, Clone, PartialEq)]
pub struct SensorSampleRow {
    /// When, on the agent's clock (µs since the Unix epoch).
    pub ts_us: i64,
    /// `gps`, `imu`, or an IoT sensor's name.
    pub sensor: String,
    /// JSON.
    pub value: String,
    /// The GPS receiver's UTC (µs); `None` for other readings, fixes without a date, and
    /// rows written before schema version 3.
    pub utc_us: Option<i64>,
}

/// Sensor readings at or after `since_us` (agent clock), oldest first, at most `limit`.
pub fn sensor_samples_since(
    conn: &Connection,
    since_us: i64,
    limit: usize,
) -> rusqlite::Result<Vec<SensorSampleRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT ts_us, sensor, value, utc_us FROM sensor_samples WHERE ts_us >= ?1 \
         ORDER BY ts_us, rowid LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since_us, limit as i64], |r| {
        Ok(SensorSampleRow {
            ts_us: r.get(0)?,
            sensor: r.get(1)?,
            value: r.get(2)?,
            utc_us: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Events at or after `since_us`, oldest first, at most `limit`.
pub fn events_since(
    conn: &Connection,
    since_us: i64,
    limit: usize,
) -> rusqlite::Result<Vec<Event>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, ts_us, stream, kind, payload FROM events WHERE ts_us >= ?1 ORDER BY ts_us, id LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![since_us, limit as i64], |r| {
        let payload: String = r.get(4)?;
        Ok(Event {
            id: r.get(0)?,
            ts_us: r.get(1)?,
            stream: r.get(2)?,
            kind: r.get(3)?,
            payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        })
    })?;
    rows.collect()
}

/// `VACUUM` (rebuilds the file; needs as much free disk as the database) after a checkpoint.
pub fn vacuum(path: &Path) -> Result<(u64, u64), StoreError> {
    let before = std::fs::metadata(path).map_or(0, |m| m.len());
    let conn = Connection::open(path).map_err(|e| err(path, e))?;
    configure(&conn).map_err(|e| err(path, e))?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")
        .map_err(|e| err(path, e))?;
    let after = std::fs::metadata(path).map_or(0, |m| m.len());
    Ok((before, after))
}

/// Runs `PRAGMA integrity_check` on a closed database: `Ok("ok")` when healthy.
pub fn check(path: &Path) -> Result<String, StoreError> {
    let conn = open_reader(path)?;
    integrity(&conn).map_err(|e| err(path, e))
}

/// One queued fleet message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Order of publication.
    pub seq: i64,
    /// MQTT topic.
    pub topic: String,
    /// Message body.
    pub payload: Vec<u8>,
}

/// Outbox rows after `seq`, in order, at most `limit`.
pub fn outbox_after(conn: &Connection, seq: i64, limit: usize) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, topic, payload FROM outbox WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![seq, limit as i64], |r| {
        Ok(OutboxRow {
            seq: r.get(0)?,
            topic: r.get(1)?,
            payload: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// The newest outbox rows' count and the oldest's sequence number (for status).
pub fn outbox_depth(conn: &Connection) -> rusqlite::Result<(i64, Option<i64>)> {
    conn.query_row("SELECT COUNT(*), MIN(seq) FROM outbox", [], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .optional()
    .map(|o| o.unwrap_or((0, None)))
}

#[cfg(test)]
mod tests;
