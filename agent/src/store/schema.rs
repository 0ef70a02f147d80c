//! The database schema as numbered migrations, applied in order inside one transaction each
//! and recorded in `PRAGMA user_version`. A database newer than this build is refused
//! (downgrading the agent must not silently reinterpret newer tables).

use rusqlite::Connection;

/// Migration `i` brings the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: what the pipeline and the fleet link write. The other tables of DESIGN §7
    // (models, users, sessions) come with the issues that fill them; workflows live in
    // their own atomic state directory (docs/workflows.md).
    r#"
    CREATE TABLE events (
        id       TEXT PRIMARY KEY,          -- UUIDv7: consumers de-duplicate on it
        ts_us    INTEGER NOT NULL,          -- wall clock, µs since the Unix epoch
        stream   TEXT,                      -- stream id (NULL for device-level events)
        kind     TEXT NOT NULL,             -- moderation, track_started, track_ended, ...
        payload  TEXT NOT NULL              -- JSON
    );
    CREATE INDEX events_ts ON events(ts_us);
    CREATE INDEX events_kind_ts ON events(kind, ts_us);

    CREATE TABLE metrics (
        ts_us    INTEGER NOT NULL,
        name     TEXT NOT NULL,
        labels   TEXT NOT NULL,             -- JSON object
        value    REAL NOT NULL
    );
    CREATE INDEX metrics_ts ON metrics(ts_us);

    CREATE TABLE audit (
        id       INTEGER PRIMARY KEY,
        ts_us    INTEGER NOT NULL,
        actor    TEXT NOT NULL,             -- agent, cli, fleet:<client>, web:<user>
        action   TEXT NOT NULL,
        detail   TEXT NOT NULL
    );
    CREATE INDEX audit_ts ON audit(ts_us);

    CREATE TABLE tracks (
        stream     TEXT NOT NULL,
        track_id   INTEGER NOT NULL,
        label      TEXT NOT NULL,
        first_us   INTEGER NOT NULL,
        last_us    INTEGER NOT NULL,
        frames     INTEGER NOT NULL,
        best_score REAL NOT NULL,
        PRIMARY KEY (stream, track_id, first_us)
    );

    -- Messages for the fleet broker, in order; a row goes only after the broker's PUBACK.
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id   TEXT NOT NULL,
        topic      TEXT NOT NULL,
        payload    BLOB NOT NULL,
        created_us INTEGER NOT NULL
    );
    "#,
    // 2: BELUGA sensor fusion.
    r#"
    -- Sensor readings: GPS fixes, IMU summaries, IoT values (value is JSON).
    CREATE TABLE sensor_samples (
        ts_us    INTEGER NOT NULL,
        sensor   TEXT NOT NULL,             -- gps, imu, or an iot sensor's name
        value    TEXT NOT NULL
    );
    CREATE INDEX sensor_samples_ts ON sensor_samples(ts_us);
    CREATE INDEX sensor_samples_sensor_ts ON sensor_samples(sensor, ts_us);

    -- Events with the fused pose at their frame's time: geotagged, queryable by place.
    CREATE TABLE fused_records (
        event_id   TEXT PRIMARY KEY,        -- events.id
        ts_us      INTEGER NOT NULL,
        stream     TEXT,
        kind       TEXT NOT NULL,
        lat        REAL NOT NULL,
        lon        REAL NOT NULL,
        speed_mps  REAL NOT NULL,
        heading_deg REAL NOT NULL,
        sigma_m    REAL NOT NULL,
        sensors    TEXT NOT NULL            -- JSON: the IoT values at that time
    );
    CREATE INDEX fused_records_ts ON fused_records(ts_us);
    CREATE INDEX fused_records_place ON fused_records(lat, lon);
    "#,
    // 3: the GPS receiver's own UTC beside the agent's clock (issue 16). Rows from before,
    // and readings that are not GPS fixes, keep it NULL.
    r#"
    ALTER TABLE sensor_samples ADD COLUMN utc_us INTEGER;  -- receiver UTC, µs since the Unix epoch
    "#,
    // 4: the workflow history the web page shows (issue 19): one row per signed answer the
    // applier gave (applied, rolled back, rejected, revoked), with the signed `.mu` receipt.
    // Unauthenticated input gets no row here (it is audited, rate-limited).
    r#"
    CREATE TABLE workflow_history (
        id          INTEGER PRIMARY KEY,
        ts_us       INTEGER NOT NULL,
        via         TEXT NOT NULL,          -- fleet topic, http (local API) or web:<user>
        workflow_id TEXT NOT NULL,
        sequence    INTEGER NOT NULL,
        digest      TEXT NOT NULL,          -- sha256 of the signed bytes
        verdict     TEXT NOT NULL,          -- applied, rolled_back, rejected, revoked
        reason      TEXT NOT NULL,
        receipt     TEXT                    -- the signed .mu receipt (NULL: signing failed)
    );
    CREATE INDEX workflow_history_ts ON workflow_history(ts_us);
    "#,
    // 5: event clips (issue 25): one row per clip, or per evidence record kept without
    // imagery (a moderation hit by default: `path` NULL). Deleted clips keep their row (with
    // `deleted_us` and why) until the store's retention removes it.
    r#"
    CREATE TABLE clips (
        id              TEXT PRIMARY KEY,     -- the manifest's clip_id
        stream          TEXT NOT NULL,
        start_us        INTEGER NOT NULL,     -- wall clock of the first frame
        end_us          INTEGER NOT NULL,
        path            TEXT,                 -- the clip file; NULL: no imagery, or deleted
        manifest        TEXT,                 -- its signed manifest file
        sha256          TEXT,                 -- of the plain MP4
        bytes           INTEGER,              -- plain MP4 size
        frames          INTEGER,
        sealed          INTEGER NOT NULL DEFAULT 0,
        imagery         INTEGER NOT NULL,
        kinds           TEXT NOT NULL,        -- comma-separated event kinds
        events          TEXT NOT NULL,        -- JSON [{id, kind, ts_us}]
        retain_until_us INTEGER NOT NULL,
        legal_hold      INTEGER NOT NULL DEFAULT 0,
        deleted_us      INTEGER,
        deleted_why     TEXT,
        created_us      INTEGER NOT NULL
    );
    CREATE INDEX clips_start ON clips(start_us);
    "#,
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

/// Why the schema could not be brought to [`VERSION`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database is newer than this build.
    #[error(
        "the database has schema version {found}, newer than this agent's {VERSION}: \
         refusing to touch it (run the newer agent, or move the file aside)"
    )]
    Newer {
        /// The version found.
        found: i64,
    },
    /// Migration `number` (1-based) failed; its transaction was rolled back.
    #[error("migration {number}: {source}")]
    Migration {
        /// The migration's number (the version it leads to).
        number: usize,
        /// Why.
        source: rusqlite::Error,
    },
    /// Reading or recording `user_version`, or a transaction, failed.
    #[error("{source}")]
    Sqlite {
        /// Why.
        #[from]
        source: rusqlite::Error,
    },
}

/// Brings `conn` to [`VERSION`]; returns the version it found.
pub fn migrate(conn: &mut Connection) -> Result<i64, SchemaError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > VERSION {
        return Err(SchemaError::Newer { found });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)
            .map_err(|source| SchemaError::Migration {
                number: i + 1,
                source,
            })?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(found)
}
