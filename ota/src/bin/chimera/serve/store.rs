//! The service's state behind [`Store`]: one method per operation the service performs (not
//! generic SQL), so a PostgreSQL implementation can be added beside [`SqliteStore`] without
//! touching the API. The SQL is portable (see `migrations/`); what differs per engine is how a
//! connection is driven.
//!
//! SQLite: `rusqlite` on one connection behind a mutex, every call on
//! `tokio::task::spawn_blocking` so the HTTP tasks never block on the disk. WAL, so readers
//! (a second `chimera serve token create` while the service runs) do not wait on the writer.
//!
//! This module never verifies anything: callers (`service.rs`) decide what is `verified`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::store_rollouts::{
    self as sql3, Answer, Claim, Created, DesiredState, DeviceStatus, NewRollout, Rollout,
    RolloutDetail, RolloutState, RolloutWrite, StateChange, StatusChange, StatusReport,
    TargetChange,
};
use super::store_signing::{self, Issue, IssueRequest};

/// The migrations, in order: version, name, SQL. Applied each in its own transaction and
/// recorded in `schema_migrations`; never edit one that has shipped, add the next.
pub(crate) const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "workflows",
        include_str!("migrations/0002_workflows.sql"),
    ),
    (
        3,
        "token_lifecycle",
        include_str!("migrations/0003_token_lifecycle.sql"),
    ),
    (4, "rollouts", include_str!("migrations/0004_rollouts.sql")),
    (5, "signing", include_str!("migrations/0005_signing.sql")),
];

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    /// The database said no.
    #[error("database {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The blocking task died (a panic in a store call).
    #[error("database task: {0}")]
    Task(String),
    /// The database holds a schema newer than this build knows.
    #[error("database {path}: schema version {found} is newer than this chimera ({known})")]
    TooNew {
        /// The database file.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
}

/// A store call's future (boxed, so the trait stays usable as `dyn Store`).
pub(crate) type StoreFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A role, lowest first: each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Role {
    /// Reads the fleet, receipts and workflows.
    Viewer,
    /// Also uploads and publishes workflows and runs rollouts.
    Operator,
    /// Also reads the audit log (and, later, manages tokens and keys).
    Admin,
}

impl Role {
    /// The word used in the database, the CLI and the API.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role a stored word names.
    pub(crate) fn parse(s: &str) -> Option<Role> {
        match s {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An API token as stored (never the token, nor its hash, leaves the store through this).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TokenInfo {
    /// Its unique name (audit rows say `token:NAME`).
    pub(crate) name: String,
    /// Its role.
    pub(crate) role: Role,
    /// When it was made (unix milliseconds).
    pub(crate) created_at: i64,
    /// When it stops working (unix milliseconds); None: never.
    pub(crate) expires_at: Option<i64>,
    /// When it was revoked (unix milliseconds); None: not revoked.
    pub(crate) revoked_at: Option<i64>,
}

/// A device as the registry enrols it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Enrolment {
    /// Device id.
    pub(crate) id: String,
    /// Base64 ML-DSA-65 public key.
    pub(crate) signing_key: String,
    /// Its key id.
    pub(crate) key_id: String,
    /// Base64 ML-KEM-768 public key.
    pub(crate) kem_key: Option<String>,
    /// Its groups.
    pub(crate) groups: Vec<String>,
}

/// A group as the registry names it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct GroupEntry {
    /// Name.
    pub(crate) name: String,
    /// Its sealing key line, if `chimera group-key` made one.
    pub(crate) kem_key: Option<String>,
}

/// The last receipt of a device, as the fleet list shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub(crate) struct ReceiptSummary {
    /// Receipt id (service-made).
    pub(crate) id: String,
    /// `workflow`, `trust` or `unverified`.
    pub(crate) kind: String,
    /// The workflow's id (verified receipts only).
    pub(crate) workflow_id: Option<String>,
    /// SHA-256 of the workflow's signed bytes (verified receipts only).
    pub(crate) digest: Option<String>,
    /// What the device did (verified receipts only).
    pub(crate) verdict: Option<String>,
    /// Whether the device's enrolled key verified the receipt.
    pub(crate) verified: bool,
    /// Why it did not verify.
    pub(crate) error: Option<String>,
    /// When the service received it (unix milliseconds).
    pub(crate) received_at: i64,
}

/// A device with its groups and last receipt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub(crate) struct Device {
    /// Device id.
    pub(crate) id: String,
    /// Its signing key's id.
    pub(crate) key_id: String,
    /// Whether it has a sealing key enrolled.
    pub(crate) sealing_key: bool,
    /// Its groups.
    pub(crate) groups: Vec<String>,
    /// Its newest receipt (verified or not), if any.
    pub(crate) last_receipt: Option<ReceiptSummary>,
    /// What its last status message said (null: none received yet).
    pub(crate) status: Option<DeviceStatus>,
    /// What it should run (null: nothing was published to it by the service).
    pub(crate) desired: Option<DesiredState>,
}

/// A stored receipt, with the text the device sent.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub(crate) struct StoredReceipt {
    /// The device the receipt was received for.
    pub(crate) device: String,
    /// The summary.
    #[serde(flatten)]
    pub(crate) summary: ReceiptSummary,
    /// The receipt as received.
    pub(crate) signed_text: String,
}

/// An audit row.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub(crate) struct AuditRow {
    /// Row id.
    pub(crate) id: String,
    /// When (unix milliseconds).
    pub(crate) at: i64,
    /// Who: `token:NAME`, `oidc:SUB`, `cli`, `system`.
    pub(crate) actor: String,
    /// What (`token.create`, `registry.import`, `workflow.upload`, …).
    pub(crate) action: String,
    /// Details (free text, never a secret).
    pub(crate) detail: String,
}

/// A workflow document the service holds.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub(crate) struct Workflow {
    /// SHA-256 of its signed bytes.
    pub(crate) digest: String,
    /// Its id.
    pub(crate) id: String,
    /// Its sequence.
    pub(crate) sequence: u64,
    /// The issuer (trust metadata name).
    pub(crate) issuer: String,
    /// The issuer key that signed it.
    pub(crate) key_id: String,
    /// Whether its body is sealed.
    pub(crate) sealed: bool,
    /// Devices it targets.
    pub(crate) devices: Vec<String>,
    /// Groups it targets.
    pub(crate) groups: Vec<String>,
    /// Who uploaded it.
    pub(crate) created_by: String,
    /// When (unix milliseconds).
    pub(crate) created_at: i64,
}

/// A receipt to record (its verification already decided by the caller).
#[derive(Debug, Clone)]
pub(crate) struct NewReceipt {
    /// The device it was received for (topic or caller; its key was the one tried).
    pub(crate) device: String,
    /// `workflow`, `trust` or `unverified`.
    pub(crate) kind: String,
    /// Verified fields (all None when not verified).
    pub(crate) workflow_id: Option<String>,
    /// The workflow digest it names.
    pub(crate) digest: Option<String>,
    /// Its verdict.
    pub(crate) verdict: Option<String>,
    /// The text as received.
    pub(crate) signed_text: String,
    /// Whether the device's enrolled key verified it.
    pub(crate) verified: bool,
    /// Why not.
    pub(crate) error: Option<String>,
}

/// What the registry import changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct ImportCounts {
    /// Devices inserted.
    pub(crate) added: usize,
    /// Devices whose keys or groups changed.
    pub(crate) updated: usize,
    /// Devices already as the registry says.
    pub(crate) unchanged: usize,
}

/// The service's operations on its state.
pub(crate) trait Store: Send + Sync {
    /// Inserts or updates the registry's devices and groups (idempotent: the same registry
    /// twice changes nothing the second time).
    fn import_registry(
        &self,
        devices: Vec<Enrolment>,
        groups: Vec<GroupEntry>,
    ) -> StoreFuture<'_, ImportCounts>;
    /// Records a token's hash, with an optional expiry (unix milliseconds); false when that
    /// name or hash exists.
    fn create_token(
        &self,
        name: String,
        role: Role,
        sha256: String,
        expires_at: Option<i64>,
    ) -> StoreFuture<'_, bool>;
    /// The token with this hash, revoked and expired ones included (the caller decides,
    /// and says why it refuses). A row with a role this build does not know is None.
    fn token(&self, sha256: String) -> StoreFuture<'_, Option<TokenInfo>>;
    /// Every token, by name.
    fn tokens(&self) -> StoreFuture<'_, Vec<TokenInfo>>;
    /// Revokes the token named `name` (a second revocation keeps the first time); false
    /// when no token has that name.
    fn revoke_token(&self, name: String) -> StoreFuture<'_, bool>;
    /// Every device, with groups and last receipt.
    fn devices(&self) -> StoreFuture<'_, Vec<Device>>;
    /// One device.
    fn device(&self, id: String) -> StoreFuture<'_, Option<Device>>;
    /// A device's enrolled signing key (base64).
    fn signing_key(&self, id: String) -> StoreFuture<'_, Option<String>>;
    /// Records a receipt; returns its id.
    fn add_receipt(&self, r: NewReceipt) -> StoreFuture<'_, String>;
    /// Newest receipts first, of one device or all.
    fn receipts(&self, device: Option<String>, limit: u32) -> StoreFuture<'_, Vec<StoredReceipt>>;
    /// Appends an audit row.
    fn audit(&self, actor: String, action: String, detail: String) -> StoreFuture<'_, ()>;
    /// Newest audit rows first.
    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<AuditRow>>;
    /// Stores a verified workflow; false when one with that digest exists.
    fn add_workflow(&self, w: Workflow, text: String) -> StoreFuture<'_, bool>;
    /// Newest workflows first.
    fn workflows(&self, limit: u32) -> StoreFuture<'_, Vec<Workflow>>;
    /// The text of the workflow with this digest, as uploaded.
    fn workflow_text(&self, digest: String) -> StoreFuture<'_, Option<String>>;

    // Schema version 4: device status, desired state, rollouts. The SQL semantics of each
    // (for other engines) are on the SQLite functions in `store_rollouts.rs`.

    /// Stores a device's status message (None: not an enrolled device). A snapshot copy
    /// never overwrites a status that arrived after the snapshot began.
    fn record_status(&self, s: StatusReport) -> StoreFuture<'_, Option<StatusChange>>;
    /// Sets what `devices` should run (a plain publish: no rollout).
    fn set_desired(
        &self,
        devices: Vec<String>,
        digest: String,
        rollout: Option<String>,
    ) -> StoreFuture<'_, ()>;
    /// Claims one re-send of a device's desired document (see `reconcile_claim`): only when
    /// it is online, runs something else, never answered it, and it was last sent before
    /// `sent_before`; of racing replicas one gets it.
    fn reconcile_claim(
        &self,
        device: String,
        sent_before: i64,
    ) -> StoreFuture<'_, Option<DesiredState>>;
    /// Moves the targets a verified answer settles; returns what moved.
    fn record_answer(&self, a: Answer) -> StoreFuture<'_, Vec<TargetChange>>;
    /// Stores a new rollout and its targets, unless a device is held by another one.
    fn create_rollout(&self, r: NewRollout) -> StoreFuture<'_, Created>;
    /// Newest rollouts first, with per-step progress.
    fn rollouts(&self, limit: u32) -> StoreFuture<'_, Vec<Rollout>>;
    /// One rollout with its targets.
    fn rollout(&self, id: String) -> StoreFuture<'_, Option<RolloutDetail>>;
    /// An operator's state change (pause, resume, abort): only from `from`; voids claims.
    fn set_rollout_state(
        &self,
        id: String,
        from: Vec<RolloutState>,
        to: RolloutState,
        reason: Option<String>,
    ) -> StoreFuture<'_, StateChange>;
    /// Claims up to `limit` active rollouts for `replica`'s engine for `lease_ms`.
    fn claim_rollouts(
        &self,
        replica: String,
        lease_ms: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Claim>>;
    /// Applies an engine's writes under `claim`, all or none; false when the claim is lost.
    fn apply_rollout_writes(
        &self,
        claim: Claim,
        writes: Vec<RolloutWrite>,
    ) -> StoreFuture<'_, bool>;

    // Schema version 5: the online signer's allotments (SQL semantics on
    // `store_signing::issue`).

    /// Allots the sequence and issue time of one document the service is about to sign:
    /// the sequence above every one handed out or held for the issuer key and target (and
    /// at least the request's floor), the time never before the last one handed out for
    /// the key. One transaction: no two callers, in any replica, get the same sequence.
    fn issue_sequence(&self, r: IssueRequest) -> StoreFuture<'_, Issue>;
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A random 128-bit id, hex.
pub(crate) fn new_id() -> String {
    let mut b = [0u8; 16];
    // getrandom fails only without an OS random source, where nothing here works anyway;
    // the time keeps ids distinct in that case.
    if getrandom::fill(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The SQLite store (one file).
#[derive(Clone)]
pub(crate) struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// Opens (creating) the database and applies the migrations it lacks.
    pub(crate) fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let db = |source| StoreError::Db {
            path: path.to_path_buf(),
            source,
        };
        if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(d);
        }
        let mut conn = Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        migrate(&mut conn, path)?;
        Ok(SqliteStore {
            path: path.to_path_buf(),
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    /// Runs `f` on the connection on a blocking thread.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreFuture<'_, T> {
        let conn = self.conn.clone();
        let path = self.path.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                // A panic while holding the lock poisons it; the connection itself is
                // still consistent (SQLite rolls back an unfinished transaction).
                let mut c = conn.lock().unwrap_or_else(|p| p.into_inner());
                f(&mut c).map_err(|source| StoreError::Db { path, source })
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        })
    }
}

/// Applies the migrations the database lacks, each in a transaction with its
/// `schema_migrations` row, in order.
fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let db = |source| StoreError::Db {
        path: path.to_path_buf(),
        source,
    };
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    BIGINT PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at BIGINT NOT NULL
         )",
    )
    .map_err(db)?;
    let found: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = MIGRATIONS.last().map_or(0, |m| m.0);
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (version, name, sql) in MIGRATIONS.iter().filter(|m| m.0 > found) {
        // IMMEDIATE: two processes starting on one new file do not both migrate.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(sql).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![version, name, now_ms()],
        )
        .map_err(db)?;
        tx.commit().map_err(db)?;
    }
    Ok(())
}

fn summary(r: &rusqlite::Row<'_>, at: usize) -> rusqlite::Result<ReceiptSummary> {
    Ok(ReceiptSummary {
        id: r.get(at)?,
        kind: r.get(at + 1)?,
        workflow_id: r.get(at + 2)?,
        digest: r.get(at + 3)?,
        verdict: r.get(at + 4)?,
        verified: r.get::<_, i64>(at + 5)? != 0,
        error: r.get(at + 6)?,
        received_at: r.get(at + 7)?,
    })
}

const SUMMARY_COLUMNS: &str =
    "id, kind, workflow_id, digest, verdict, verified, error, received_at";

const TOKEN_COLUMNS: &str = "name, role, created_at, expires_at, revoked_at";

/// A row of [`TOKEN_COLUMNS`]; None for a role this build does not know.
fn token_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<Option<TokenInfo>> {
    let Some(role) = Role::parse(&r.get::<_, String>(1)?) else {
        return Ok(None);
    };
    Ok(Some(TokenInfo {
        name: r.get(0)?,
        role,
        created_at: r.get(2)?,
        expires_at: r.get(3)?,
        revoked_at: r.get(4)?,
    }))
}

fn load_device(c: &Connection, id: &str) -> rusqlite::Result<Option<Device>> {
    let row = c
        .query_row(
            "SELECT id, key_id, kem_key FROM devices WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                ))
            },
        )
        .optional()?;
    let Some((id, key_id, kem)) = row else {
        return Ok(None);
    };
    let mut st =
        c.prepare("SELECT group_name FROM group_members WHERE device_id = ?1 ORDER BY group_name")?;
    let groups = st
        .query_map([&id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let last_receipt = c
        .query_row(
            &format!(
                "SELECT {SUMMARY_COLUMNS} FROM receipts WHERE device_id = ?1 \
                 ORDER BY received_at DESC, id DESC LIMIT 1"
            ),
            [&id],
            |r| summary(r, 0),
        )
        .optional()?;
    let (status, desired) = super::store_rollouts::device_state(c, &id)?;
    Ok(Some(Device {
        id,
        key_id,
        sealing_key: kem.is_some(),
        groups,
        last_receipt,
        status,
        desired,
    }))
}

fn strings(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

impl Store for SqliteStore {
    fn import_registry(
        &self,
        devices: Vec<Enrolment>,
        groups: Vec<GroupEntry>,
    ) -> StoreFuture<'_, ImportCounts> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let mut counts = ImportCounts::default();
            for g in &groups {
                tx.execute(
                    "INSERT INTO groups (name, kem_key) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET kem_key = excluded.kem_key",
                    params![g.name, g.kem_key],
                )?;
            }
            for d in &devices {
                let old = load_device(&tx, &d.id)?;
                let old_key: Option<(String, Option<String>)> = tx
                    .query_row(
                        "SELECT signing_key, kem_key FROM devices WHERE id = ?1",
                        [&d.id],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                let mut groups = d.groups.clone();
                groups.sort();
                groups.dedup();
                match (&old, &old_key) {
                    (Some(o), Some((sk, kem)))
                        if *sk == d.signing_key && *kem == d.kem_key && o.groups == groups =>
                    {
                        counts.unchanged += 1;
                        continue;
                    }
                    (Some(_), _) => counts.updated += 1,
                    (None, _) => counts.added += 1,
                }
                tx.execute(
                    "INSERT INTO devices (id, signing_key, key_id, kem_key, enrolled_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET \
                     signing_key = excluded.signing_key, key_id = excluded.key_id, \
                     kem_key = excluded.kem_key",
                    params![d.id, d.signing_key, d.key_id, d.kem_key, now_ms()],
                )?;
                tx.execute("DELETE FROM group_members WHERE device_id = ?1", [&d.id])?;
                for g in &groups {
                    tx.execute(
                        "INSERT INTO groups (name, kem_key) VALUES (?1, NULL) \
                         ON CONFLICT (name) DO NOTHING",
                        [g],
                    )?;
                    tx.execute(
                        "INSERT INTO group_members (group_name, device_id) VALUES (?1, ?2)",
                        params![g, d.id],
                    )?;
                }
            }
            tx.commit()?;
            Ok(counts)
        })
    }

    fn create_token(
        &self,
        name: String,
        role: Role,
        sha256: String,
        expires_at: Option<i64>,
    ) -> StoreFuture<'_, bool> {
        self.call(move |c| {
            let n = c.execute(
                "INSERT INTO api_tokens (sha256, name, role, created_at, expires_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![sha256, name, role.as_str(), now_ms(), expires_at],
            )?;
            Ok(n == 1)
        })
    }

    fn token(&self, sha256: String) -> StoreFuture<'_, Option<TokenInfo>> {
        self.call(move |c| {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = ?1");
            let row = c.query_row(&sql, [sha256], token_info).optional()?;
            // A row with a role this build does not know grants nothing.
            Ok(row.flatten())
        })
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenInfo>> {
        self.call(|c| {
            let sql = format!("SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY name");
            let rows = c
                .prepare(&sql)?
                .query_map([], token_info)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows.into_iter().flatten().collect())
        })
    }

    fn revoke_token(&self, name: String) -> StoreFuture<'_, bool> {
        self.call(move |c| {
            let n = c.execute(
                "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE name = ?1",
                params![name, now_ms()],
            )?;
            Ok(n == 1)
        })
    }

    fn devices(&self) -> StoreFuture<'_, Vec<Device>> {
        self.call(|c| {
            let ids = c
                .prepare("SELECT id FROM devices ORDER BY id")?
                .query_map([], |r| r.get::<_, String>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                out.extend(load_device(c, &id)?);
            }
            Ok(out)
        })
    }

    fn device(&self, id: String) -> StoreFuture<'_, Option<Device>> {
        self.call(move |c| load_device(c, &id))
    }

    fn signing_key(&self, id: String) -> StoreFuture<'_, Option<String>> {
        self.call(move |c| {
            c.query_row("SELECT signing_key FROM devices WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
        })
    }

    fn add_receipt(&self, r: NewReceipt) -> StoreFuture<'_, String> {
        self.call(move |c| {
            // The same bytes from the same device again (a QoS 1 redelivery) are the same
            // receipt: the stored row's id is returned.
            let text_sha256 = aegis_ota::sha256_hex(r.signed_text.as_bytes());
            let id = new_id();
            c.execute(
                "INSERT INTO receipts (id, device_id, kind, workflow_id, digest, verdict, \
                 signed_text, received_at, verified, error, text_sha256) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
                 ON CONFLICT (device_id, text_sha256) DO NOTHING",
                params![
                    id,
                    r.device,
                    r.kind,
                    r.workflow_id,
                    r.digest,
                    r.verdict,
                    r.signed_text,
                    now_ms(),
                    i64::from(r.verified),
                    r.error,
                    text_sha256
                ],
            )?;
            c.query_row(
                "SELECT id FROM receipts WHERE device_id = ?1 AND text_sha256 = ?2",
                params![r.device, text_sha256],
                |row| row.get(0),
            )
        })
    }

    fn receipts(&self, device: Option<String>, limit: u32) -> StoreFuture<'_, Vec<StoredReceipt>> {
        self.call(move |c| {
            // PostgreSQL will need `$1::text IS NULL` here (an untyped NULL test).
            let sql = format!(
                "SELECT device_id, signed_text, {SUMMARY_COLUMNS} FROM receipts \
                 WHERE (?1 IS NULL OR device_id = ?1) \
                 ORDER BY received_at DESC, id DESC LIMIT ?2"
            );
            c.prepare(&sql)?
                .query_map(params![device, limit], |r| {
                    Ok(StoredReceipt {
                        device: r.get(0)?,
                        signed_text: r.get(1)?,
                        summary: summary(r, 2)?,
                    })
                })?
                .collect()
        })
    }

    fn audit(&self, actor: String, action: String, detail: String) -> StoreFuture<'_, ()> {
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (id, at, actor, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![new_id(), now_ms(), actor, action, detail],
            )?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<AuditRow>> {
        self.call(move |c| {
            c.prepare(
                "SELECT id, at, actor, action, detail FROM audit \
                     ORDER BY at DESC, id DESC LIMIT ?1",
            )?
            .query_map([limit], |r| {
                Ok(AuditRow {
                    id: r.get(0)?,
                    at: r.get(1)?,
                    actor: r.get(2)?,
                    action: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?
            .collect()
        })
    }

    fn add_workflow(&self, w: Workflow, text: String) -> StoreFuture<'_, bool> {
        self.call(move |c| {
            let targets = serde_json::json!({ "devices": w.devices, "groups": w.groups });
            let n = c.execute(
                "INSERT INTO workflows (digest, id, sequence, issuer, key_id, sealed, targets, \
                 text, created_by, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) \
                 ON CONFLICT (digest) DO NOTHING",
                params![
                    w.digest,
                    w.id,
                    w.sequence as i64,
                    w.issuer,
                    w.key_id,
                    i64::from(w.sealed),
                    targets.to_string(),
                    text,
                    w.created_by,
                    w.created_at
                ],
            )?;
            Ok(n == 1)
        })
    }

    fn workflow_text(&self, digest: String) -> StoreFuture<'_, Option<String>> {
        self.call(move |c| {
            c.query_row(
                "SELECT text FROM workflows WHERE digest = ?1",
                [digest],
                |r| r.get(0),
            )
            .optional()
        })
    }

    fn workflows(&self, limit: u32) -> StoreFuture<'_, Vec<Workflow>> {
        self.call(move |c| {
            c.prepare(
                "SELECT digest, id, sequence, issuer, key_id, sealed, targets, created_by, \
                     created_at FROM workflows ORDER BY created_at DESC, digest LIMIT ?1",
            )?
            .query_map([limit], |r| {
                let targets: serde_json::Value =
                    serde_json::from_str(&r.get::<_, String>(6)?).unwrap_or_default();
                Ok(Workflow {
                    digest: r.get(0)?,
                    id: r.get(1)?,
                    sequence: r.get::<_, i64>(2)? as u64,
                    issuer: r.get(3)?,
                    key_id: r.get(4)?,
                    sealed: r.get::<_, i64>(5)? != 0,
                    devices: strings(&targets["devices"].to_string()),
                    groups: strings(&targets["groups"].to_string()),
                    created_by: r.get(7)?,
                    created_at: r.get(8)?,
                })
            })?
            .collect()
        })
    }

    fn record_status(&self, s: StatusReport) -> StoreFuture<'_, Option<StatusChange>> {
        self.call(move |c| sql3::record_status(c, &s))
    }

    fn set_desired(
        &self,
        devices: Vec<String>,
        digest: String,
        rollout: Option<String>,
    ) -> StoreFuture<'_, ()> {
        self.call(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            sql3::set_desired(&tx, &devices, &digest, rollout.as_deref(), now_ms())?;
            tx.commit()
        })
    }

    fn reconcile_claim(
        &self,
        device: String,
        sent_before: i64,
    ) -> StoreFuture<'_, Option<DesiredState>> {
        self.call(move |c| sql3::reconcile_claim(c, &device, sent_before, now_ms()))
    }

    fn record_answer(&self, a: Answer) -> StoreFuture<'_, Vec<TargetChange>> {
        self.call(move |c| sql3::record_answer(c, &a, now_ms()))
    }

    fn create_rollout(&self, r: NewRollout) -> StoreFuture<'_, Created> {
        self.call(move |c| sql3::create_rollout(c, &r, now_ms()))
    }

    fn rollouts(&self, limit: u32) -> StoreFuture<'_, Vec<Rollout>> {
        self.call(move |c| sql3::rollouts(c, limit))
    }

    fn rollout(&self, id: String) -> StoreFuture<'_, Option<RolloutDetail>> {
        self.call(move |c| sql3::rollout(c, &id))
    }

    fn set_rollout_state(
        &self,
        id: String,
        from: Vec<RolloutState>,
        to: RolloutState,
        reason: Option<String>,
    ) -> StoreFuture<'_, StateChange> {
        self.call(move |c| sql3::set_rollout_state(c, &id, &from, to, reason.as_deref(), now_ms()))
    }

    fn claim_rollouts(
        &self,
        replica: String,
        lease_ms: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Claim>> {
        self.call(move |c| sql3::claim_rollouts(c, &replica, now_ms(), lease_ms, limit))
    }

    fn apply_rollout_writes(
        &self,
        claim: Claim,
        writes: Vec<RolloutWrite>,
    ) -> StoreFuture<'_, bool> {
        self.call(move |c| sql3::apply_rollout_writes(c, &claim, &writes, now_ms()))
    }

    fn issue_sequence(&self, r: IssueRequest) -> StoreFuture<'_, Issue> {
        self.call(move |c| store_signing::issue(c, &r, now_ms()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enrolment(id: &str, groups: &[&str]) -> Enrolment {
        Enrolment {
            id: id.into(),
            signing_key: format!("key-of-{id}"),
            key_id: format!("mldsa65:{id}"),
            kem_key: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn migrations_apply_once_in_order_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chimera.db");
        drop(SqliteStore::open(&path).unwrap());
        drop(SqliteStore::open(&path).unwrap());
        let c = Connection::open(&path).unwrap();
        let versions: Vec<i64> = c
            .prepare("SELECT version FROM schema_migrations ORDER BY version")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(versions, MIGRATIONS.iter().map(|m| m.0).collect::<Vec<_>>());
        // Numbered 1, 2, … without gaps.
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.0, i as i64 + 1);
        }
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chimera.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)",
                [],
            )
            .unwrap();
        let e = SqliteStore::open(&path).err().expect("refused");
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    }

    #[tokio::test]
    async fn registry_import_is_idempotent_and_follows_changes() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("chimera.db")).unwrap();
        let devices = vec![enrolment("cam-1", &["lobby"]), enrolment("cam-2", &[])];
        let groups = vec![GroupEntry {
            name: "lobby".into(),
            kem_key: Some("k".into()),
        }];
        let first = s
            .import_registry(devices.clone(), groups.clone())
            .await
            .unwrap();
        assert_eq!((first.added, first.updated, first.unchanged), (2, 0, 0));
        let again = s
            .import_registry(devices.clone(), groups.clone())
            .await
            .unwrap();
        assert_eq!((again.added, again.updated, again.unchanged), (0, 0, 2));
        let mut moved = devices.clone();
        moved[1].groups = vec!["yard".into()];
        let third = s.import_registry(moved, groups).await.unwrap();
        assert_eq!((third.added, third.updated, third.unchanged), (0, 1, 1));
        let d = s.device("cam-2".into()).await.unwrap().unwrap();
        assert_eq!(d.groups, vec!["yard".to_string()]);
        assert_eq!(s.devices().await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn tokens_are_unique_by_name_and_hash() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("chimera.db")).unwrap();
        assert!(
            s.create_token("ci".into(), Role::Operator, "aa".into(), None)
                .await
                .unwrap()
        );
        assert!(
            !s.create_token("ci".into(), Role::Admin, "bb".into(), None)
                .await
                .unwrap()
        );
        let ci = s.token("aa".into()).await.unwrap().unwrap();
        assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Operator));
        assert_eq!((ci.expires_at, ci.revoked_at), (None, None));
        assert_eq!(s.token("bb".into()).await.unwrap(), None);
    }

    fn issue_req(key: &str, target: &str, floor: u64, now_s: i64) -> IssueRequest {
        IssueRequest {
            key_id: key.into(),
            target: target.into(),
            floor,
            now_s,
        }
    }

    #[tokio::test]
    async fn issue_sequences_count_per_key_and_target_above_what_is_held() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("chimera.db")).unwrap();
        let next = |key: &str, target: &str, floor: u64, now: i64| {
            s.issue_sequence(issue_req(key, target, floor, now))
        };
        assert_eq!(next("k1", "d:cam-1|g:", 1, 100).await.unwrap().sequence, 1);
        assert_eq!(next("k1", "d:cam-1|g:", 1, 100).await.unwrap().sequence, 2);
        // Another target, another key: their own counts.
        assert_eq!(next("k1", "d:|g:lobby", 1, 100).await.unwrap().sequence, 1);
        assert_eq!(next("k2", "d:cam-1|g:", 1, 100).await.unwrap().sequence, 1);
        // The floor moves a count up, never down.
        assert_eq!(
            next("k1", "d:cam-1|g:", 10, 100).await.unwrap().sequence,
            10
        );
        assert_eq!(next("k1", "d:cam-1|g:", 3, 100).await.unwrap().sequence, 11);
        // A held (uploaded) workflow of the same key and target, in any order: above it.
        let w = Workflow {
            digest: "ab".repeat(32),
            id: "urn:uuid:x".into(),
            sequence: 40,
            issuer: "gw-1".into(),
            key_id: "k2".into(),
            sealed: false,
            devices: vec!["cam-2".into(), "cam-1".into()],
            groups: vec![],
            created_by: "t".into(),
            created_at: 0,
        };
        assert!(s.add_workflow(w, "text".into()).await.unwrap());
        assert_eq!(
            next("k2", "d:cam-1,cam-2|g:", 1, 100)
                .await
                .unwrap()
                .sequence,
            41
        );
        assert_eq!(next("k2", "d:cam-1|g:", 1, 100).await.unwrap().sequence, 2);
        // Issue times never go back for a key, whatever the caller's clock says.
        assert_eq!(next("k3", "d:a|g:", 1, 500).await.unwrap().issued_at_s, 500);
        assert_eq!(next("k3", "d:b|g:", 1, 450).await.unwrap().issued_at_s, 500);
        assert_eq!(next("k3", "d:a|g:", 1, 600).await.unwrap().issued_at_s, 600);
        assert_eq!(next("k4", "d:a|g:", 1, 450).await.unwrap().issued_at_s, 450);
    }

    /// Two stores on one file are two replicas' connections: allotments from both, all at
    /// once, never repeat a sequence.
    #[test]
    fn two_connections_never_hand_out_the_same_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chimera.db");
        let stores = [
            SqliteStore::open(&path).unwrap(),
            SqliteStore::open(&path).unwrap(),
        ];
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let got: Vec<u64> = rt.block_on(async {
            let mut tasks = Vec::new();
            for i in 0..40 {
                let s = stores[i % 2].clone();
                tasks.push(tokio::spawn(async move {
                    s.issue_sequence(issue_req("k", "d:cam-1|g:", 1, 100))
                        .await
                        .unwrap()
                        .sequence
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await.unwrap());
            }
            out
        });
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(sorted, (1..=40).collect::<Vec<u64>>(), "{got:?}");
    }

    #[tokio::test]
    async fn tokens_keep_their_expiry_and_revocation() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("chimera.db")).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        assert!(
            s.create_token("deploy".into(), Role::Admin, a.clone(), Some(1_000))
                .await
                .unwrap()
        );
        assert!(
            s.create_token("ci".into(), Role::Viewer, b.clone(), None)
                .await
                .unwrap()
        );
        assert_eq!(s.token(a).await.unwrap().unwrap().expires_at, Some(1_000));
        assert!(s.revoke_token("ci".into()).await.unwrap());
        let first = s.token(b.clone()).await.unwrap().unwrap().revoked_at;
        assert!(first.is_some());
        // Revoking again keeps the first time; an unknown name is said so.
        assert!(s.revoke_token("ci".into()).await.unwrap());
        assert_eq!(s.token(b).await.unwrap().unwrap().revoked_at, first);
        assert!(!s.revoke_token("nobody".into()).await.unwrap());
        let names: Vec<String> = s
            .tokens()
            .await
            .unwrap()
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["ci", "deploy"]);
    }
}
