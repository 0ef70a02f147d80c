//! The service's state behind [`Store`]: one method per operation the service performs (not
//! generic SQL), so the API does not know which database it runs on. Two implementations:
//! [`SqliteStore`] here (one file, one replica) and
//! [`PgStore`](super::postgres::PgStore) (PostgreSQL, several replicas).
//!
//! SQLite: `rusqlite` on one connection behind a mutex, every call on
//! `tokio::task::spawn_blocking` so the HTTP tasks never block on the disk. WAL, so readers
//! (a second `chimera serve token create` while the service runs) do not wait on the writer.
//!
//! This module never verifies anything: callers (`service.rs`) decide what is `verified`.
//!
//! # Adding a migration
//!
//! Append a [`Migration`] to [`MIGRATIONS`] with the next version (never edit one that has
//! shipped). Write the SQL once in `migrations/NNNN_name.sql` when it is portable (TEXT ids
//! made by the service, BIGINT unix milliseconds, INTEGER 0/1 flags, `ON CONFLICT …`, no
//! AUTOINCREMENT/SERIAL, no engine-specific types) and give that same file to both fields;
//! when a dialect needs its own text, write `NNNN_name.sqlite.sql` and
//! `NNNN_name.postgres.sql` side by side, with the same tables, columns and meaning. SQLite
//! applies each migration in its own `BEGIN IMMEDIATE` transaction; PostgreSQL applies all
//! missing ones in one transaction under an advisory lock (two replicas starting together
//! migrate once), so a PostgreSQL migration must be transactional DDL (no `CREATE INDEX
//! CONCURRENTLY`). `store::tests` runs every migration on both engines.
//!
//! # Adding an operation
//!
//! Add the method to [`Store`] (owned arguments, a [`StoreFuture`]), implement it in
//! `impl Store for SqliteStore` below and `impl Store for PgStore` in `postgres.rs`
//! (PostgreSQL placeholders are `$1`; a parameter tested with `IS NULL` needs a type,
//! `$1::text`; INTEGER columns bind `i32`, BIGINT `i64`; sort text with `COLLATE "C"` so
//! both engines order alike; free text from outside goes through [`without_nul`]), and add
//! its assertions to `store::tests`, whose bodies run against both stores
//! (`for db in TestDb::each()`; a PostgreSQL-only test takes `TestDb::postgres()`). Shared
//! decisions (what counts as a change, how JSON columns are written and read) are functions
//! here, not copies in each store. A test database of each engine costs milliseconds: one
//! PostgreSQL server per test binary, a database per test (`ota/tests/common`).

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

/// One schema migration, in both SQL dialects.
pub(crate) struct Migration {
    /// Its version: 1, 2, … without gaps.
    pub(crate) version: i64,
    /// A short name, recorded in `schema_migrations`.
    pub(crate) name: &'static str,
    /// The SQL for SQLite.
    pub(crate) sqlite: &'static str,
    /// The SQL for PostgreSQL (the same text when it is portable).
    pub(crate) postgres: &'static str,
}

const M0001_INIT: &str = include_str!("migrations/0001_init.sql");
const M0002_WORKFLOWS: &str = include_str!("migrations/0002_workflows.sql");
const M0003_TOKEN_LIFECYCLE: &str = include_str!("migrations/0003_token_lifecycle.sql");
const M0004_ROLLOUTS: &str = include_str!("migrations/0004_rollouts.sql");
const M0005_SIGNING: &str = include_str!("migrations/0005_signing.sql");
const M0006_STATUS_VERSIONS: &str = include_str!("migrations/0006_status_versions.sql");
const M0007_FLEET_EVENTS: &str = include_str!("migrations/0007_fleet_events.sql");
const M0008_UNENROLMENT: &str = include_str!("migrations/0008_unenrolment.sql");

/// The migrations, in order. Applied and recorded in `schema_migrations`; never edit one
/// that has shipped, add the next (see the module docs).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sqlite: M0001_INIT,
        postgres: M0001_INIT,
    },
    Migration {
        version: 2,
        name: "workflows",
        sqlite: M0002_WORKFLOWS,
        postgres: M0002_WORKFLOWS,
    },
    Migration {
        version: 3,
        name: "token_lifecycle",
        sqlite: M0003_TOKEN_LIFECYCLE,
        postgres: M0003_TOKEN_LIFECYCLE,
    },
    Migration {
        version: 4,
        name: "rollouts",
        sqlite: M0004_ROLLOUTS,
        postgres: M0004_ROLLOUTS,
    },
    Migration {
        version: 5,
        name: "signing",
        sqlite: M0005_SIGNING,
        postgres: M0005_SIGNING,
    },
    Migration {
        version: 6,
        name: "status_versions",
        sqlite: M0006_STATUS_VERSIONS,
        postgres: M0006_STATUS_VERSIONS,
    },
    Migration {
        version: 7,
        name: "fleet_events",
        sqlite: M0007_FLEET_EVENTS,
        postgres: M0007_FLEET_EVENTS,
    },
    Migration {
        version: 8,
        name: "unenrolment",
        sqlite: M0008_UNENROLMENT,
        postgres: M0008_UNENROLMENT,
    },
];

/// The newest schema version this build knows.
pub(crate) fn known_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// The table that records applied migrations (portable SQL).
pub(crate) const SCHEMA_MIGRATIONS_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

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
    /// PostgreSQL said no, or no connection could be had.
    #[error("database {at}: {message}")]
    Postgres {
        /// The database, as `postgres://USER@HOST:PORT/DBNAME` (never a password).
        at: String,
        /// What failed, with its causes.
        message: String,
    },
    /// The blocking task died (a panic in a store call).
    #[error("database task: {0}")]
    Task(String),
    /// The database holds a schema newer than this build knows.
    #[error(
        "database {at}: schema version {found} is newer than this chimera ({known}): \
         run the chimera that migrated it, or a newer one"
    )]
    TooNew {
        /// The database (file, or PostgreSQL as `postgres://USER@HOST:PORT/DBNAME`).
        at: String,
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
    /// When it was un-enrolled (unix ms; null while enrolled). The list shows enrolled
    /// devices only; `GET /api/v1/devices/{id}` shows an un-enrolled one too.
    pub(crate) unenrolled_at: Option<i64>,
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
    /// Devices the registry lists with the key they had when they were un-enrolled: left
    /// un-enrolled (a new key enrols a device again).
    pub(crate) kept_out: usize,
}

/// What the store holds for a device, as far as the registry import compares it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeldDevice {
    /// Its signing key.
    pub(crate) signing_key: String,
    /// Its sealing key.
    pub(crate) kem_key: Option<String>,
    /// Its groups, sorted.
    pub(crate) groups: Vec<String>,
    /// It was un-enrolled.
    pub(crate) unenrolled: bool,
}

/// What the registry import does with one enrolment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// A device the store does not hold.
    Add,
    /// Keys or groups differ: rewrite it.
    Update,
    /// Already as the registry says: leave it alone.
    Keep,
    /// Un-enrolled, and the registry still names the key it had: leave it un-enrolled.
    KeepOut,
}

impl Enrolment {
    /// Its groups, sorted and without duplicates (as stored).
    pub(crate) fn sorted_groups(&self) -> Vec<String> {
        let mut g = self.groups.clone();
        g.sort();
        g.dedup();
        g
    }

    /// What the import does with it, given what the store holds. An un-enrolled device
    /// comes back only with another signing key (its old one verifies nothing any more);
    /// an update clears its un-enrolment.
    pub(crate) fn change(&self, held: Option<&HeldDevice>) -> Change {
        match held {
            None => Change::Add,
            Some(h) if h.unenrolled && h.signing_key == self.signing_key => Change::KeepOut,
            Some(h) if h.unenrolled => Change::Update,
            Some(h)
                if h.signing_key == self.signing_key
                    && h.kem_key == self.kem_key
                    && h.groups == self.sorted_groups() =>
            {
                Change::Keep
            }
            Some(_) => Change::Update,
        }
    }
}

impl ImportCounts {
    /// Counts one decision.
    pub(crate) fn count(&mut self, c: Change) {
        match c {
            Change::Add => self.added += 1,
            Change::Update => self.updated += 1,
            Change::Keep => self.unchanged += 1,
            Change::KeepOut => self.kept_out += 1,
        }
    }
}

/// The `targets` column of `workflows`: JSON `{"devices": [...], "groups": [...]}`.
pub(crate) fn targets_json(devices: &[String], groups: &[String]) -> String {
    serde_json::json!({ "devices": devices, "groups": groups }).to_string()
}

/// The devices and groups of a `targets` column (empty lists for anything malformed).
pub(crate) fn parse_targets(json: &str) -> (Vec<String>, Vec<String>) {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct Targets {
        devices: Vec<String>,
        groups: Vec<String>,
    }
    let t: Targets = serde_json::from_str(json).unwrap_or_default();
    (t.devices, t.groups)
}

/// `s` with U+0000 replaced by U+FFFD. PostgreSQL text cannot hold U+0000, so both stores
/// store free text that comes from outside (a receipt as received, why it failed, audit
/// details) this way, and answer alike.
pub(crate) fn without_nul(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// A device's signing key as enrolled, and whether it was un-enrolled since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnrolledKey {
    /// Base64 ML-DSA-65 public key.
    pub(crate) signing_key: String,
    /// When it was un-enrolled (unix ms): its key verifies nothing from then on.
    pub(crate) unenrolled_at: Option<i64>,
}

/// What [`Store::unenroll_device`] did.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Unenrolment {
    /// Done now.
    Done(Unenrolled),
    /// It was un-enrolled already, at this time (unix ms).
    Already(i64),
    /// No such device.
    Unknown,
}

/// A device un-enrolled, and what it left.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub(crate) struct Unenrolled {
    /// The device.
    pub(crate) device: String,
    /// When (unix ms).
    pub(crate) unenrolled_at: i64,
    /// The groups it left.
    pub(crate) groups: Vec<String>,
    /// The unfinished rollouts (running, paused, rolling back) whose targets for it are now
    /// `unenrolled`.
    pub(crate) rollouts: Vec<String>,
}

/// The service's operations on its state. Free text from outside (a receipt's text and
/// error, audit details) is stored through [`without_nul`]; a lookup by a key that holds
/// U+0000 finds nothing.
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
    /// Every enrolled device, with groups and last receipt (un-enrolled ones left out).
    fn devices(&self) -> StoreFuture<'_, Vec<Device>>;
    /// One device, un-enrolled or not.
    fn device(&self, id: String) -> StoreFuture<'_, Option<Device>>;
    /// A device's signing key as enrolled, and whether it was un-enrolled.
    fn signing_key(&self, id: String) -> StoreFuture<'_, Option<EnrolledKey>>;
    /// Un-enrols a device (SQL semantics on `store_rollouts::unenroll_device`): it leaves
    /// its groups and desired state, its targets in unfinished rollouts become
    /// `unenrolled` (their claims void), its receipts and status stay.
    fn unenroll_device(&self, id: String) -> StoreFuture<'_, Unenrolment>;
    /// The ids of the un-enrolled devices.
    fn unenrolled_devices(&self) -> StoreFuture<'_, Vec<String>>;
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
    conn.execute_batch(SCHEMA_MIGRATIONS_TABLE).map_err(db)?;
    let found: i64 = conn
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    let known = known_version();
    if found > known {
        return Err(StoreError::TooNew {
            at: path.display().to_string(),
            found,
            known,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > found) {
        // IMMEDIATE: two processes starting on one new file do not both migrate.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(db)?;
        let done: Option<i64> = tx
            .query_row(
                "SELECT version FROM schema_migrations WHERE version = ?1",
                [m.version],
                |r| r.get(0),
            )
            .optional()
            .map_err(db)?;
        if done.is_some() {
            continue;
        }
        tx.execute_batch(m.sqlite).map_err(db)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            params![m.version, m.name, now_ms()],
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

/// The columns [`ReceiptSummary`] is read from, in its order (both engines).
pub(crate) const SUMMARY_COLUMNS: &str =
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
            "SELECT id, key_id, kem_key, unenrolled_at FROM devices WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            },
        )
        .optional()?;
    let Some((id, key_id, kem, unenrolled_at)) = row else {
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
        unenrolled_at,
    }))
}

fn held_device(c: &Connection, id: &str) -> rusqlite::Result<Option<HeldDevice>> {
    let Some((signing_key, kem_key, unenrolled)) = c
        .query_row(
            "SELECT signing_key, kem_key, unenrolled_at IS NOT NULL FROM devices WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?
    else {
        return Ok(None);
    };
    let groups = c
        .prepare("SELECT group_name FROM group_members WHERE device_id = ?1 ORDER BY group_name")?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok(Some(HeldDevice {
        signing_key,
        kem_key,
        groups,
        unenrolled,
    }))
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
                let change = d.change(held_device(&tx, &d.id)?.as_ref());
                counts.count(change);
                if matches!(change, Change::Keep | Change::KeepOut) {
                    continue;
                }
                tx.execute(
                    "INSERT INTO devices (id, signing_key, key_id, kem_key, enrolled_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (id) DO UPDATE SET \
                     signing_key = excluded.signing_key, key_id = excluded.key_id, \
                     kem_key = excluded.kem_key, unenrolled_at = NULL",
                    params![d.id, d.signing_key, d.key_id, d.kem_key, now_ms()],
                )?;
                tx.execute("DELETE FROM group_members WHERE device_id = ?1", [&d.id])?;
                for g in &d.sorted_groups() {
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
                .prepare("SELECT id FROM devices WHERE unenrolled_at IS NULL ORDER BY id")?
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

    fn signing_key(&self, id: String) -> StoreFuture<'_, Option<EnrolledKey>> {
        self.call(move |c| {
            c.query_row(
                "SELECT signing_key, unenrolled_at FROM devices WHERE id = ?1",
                [id],
                |r| {
                    Ok(EnrolledKey {
                        signing_key: r.get(0)?,
                        unenrolled_at: r.get(1)?,
                    })
                },
            )
            .optional()
        })
    }

    fn unenroll_device(&self, id: String) -> StoreFuture<'_, Unenrolment> {
        self.call(move |c| sql3::unenroll_device(c, &id, now_ms()))
    }

    fn unenrolled_devices(&self) -> StoreFuture<'_, Vec<String>> {
        self.call(|c| {
            c.prepare("SELECT id FROM devices WHERE unenrolled_at IS NOT NULL ORDER BY id")?
                .query_map([], |r| r.get(0))?
                .collect()
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
                    without_nul(r.signed_text),
                    now_ms(),
                    i64::from(r.verified),
                    r.error.map(without_nul),
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
                params![
                    new_id(),
                    now_ms(),
                    without_nul(actor),
                    without_nul(action),
                    without_nul(detail)
                ],
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
            let targets = targets_json(&w.devices, &w.groups);
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
                    targets,
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
                let (devices, groups) = parse_targets(&r.get::<_, String>(6)?);
                Ok(Workflow {
                    digest: r.get(0)?,
                    id: r.get(1)?,
                    sequence: r.get::<_, i64>(2)? as u64,
                    issuer: r.get(3)?,
                    key_id: r.get(4)?,
                    sealed: r.get::<_, i64>(5)? != 0,
                    devices,
                    groups,
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
pub(crate) mod tests {
    //! Every test body here runs against a fresh SQLite file and, where Debian's PostgreSQL
    //! is installed (always under CI), a fresh PostgreSQL database ([`TestDb::each`]): one
    //! set of assertions, both engines.

    use super::*;
    use crate::serve::postgres::{PgStore, PgTarget};
    use crate::serve::test_postgres::{have_postgres, postgres};

    /// A fresh, empty database of one engine.
    pub(crate) enum TestDb {
        /// A SQLite file in its own directory.
        Sqlite(tempfile::TempDir),
        /// A database of the test binary's PostgreSQL server.
        Postgres(String),
    }

    impl TestDb {
        /// A fresh SQLite database, and a fresh PostgreSQL one when the server is installed
        /// (a skip is recorded when it is not).
        pub(crate) fn each() -> Vec<TestDb> {
            let mut dbs = vec![TestDb::Sqlite(tempfile::tempdir().unwrap())];
            if have_postgres("chimera") {
                dbs.push(TestDb::Postgres(postgres().create_database()));
            }
            dbs
        }

        /// A fresh PostgreSQL database, or None (skip recorded) without the server.
        pub(crate) fn postgres() -> Option<String> {
            have_postgres("chimera").then(|| postgres().create_database())
        }

        /// How the service would connect to PostgreSQL database `db`: TLS verified against
        /// the test server's CA, password authentication.
        pub(crate) fn target(db: &str) -> PgTarget {
            let pg = postgres();
            PgTarget::new(
                &pg.url(db),
                "url",
                Some(pg.password().to_string()),
                Some(&pg.ca_file()),
                4,
            )
            .unwrap()
        }

        fn path(dir: &tempfile::TempDir) -> PathBuf {
            dir.path().join("chimera.db")
        }

        pub(crate) fn engine(&self) -> &'static str {
            match self {
                TestDb::Sqlite(_) => "sqlite",
                TestDb::Postgres(_) => "postgres",
            }
        }

        /// Opens the store (migrating).
        pub(crate) async fn open(&self) -> Result<Box<dyn Store>, StoreError> {
            Ok(match self {
                TestDb::Sqlite(dir) => Box::new(SqliteStore::open(&Self::path(dir))?),
                TestDb::Postgres(db) => Box::new(PgStore::open(&Self::target(db)).await?),
            })
        }

        /// Runs `sql` on the database directly, past the store.
        pub(crate) fn execute(&self, sql: &str) {
            match self {
                TestDb::Sqlite(dir) => Connection::open(Self::path(dir))
                    .unwrap()
                    .execute_batch(sql)
                    .unwrap(),
                TestDb::Postgres(db) => {
                    postgres().psql(db, sql);
                }
            }
        }

        /// The versions `schema_migrations` records, in order.
        pub(crate) fn versions(&self) -> Vec<i64> {
            const SQL: &str = "SELECT version FROM schema_migrations ORDER BY version";
            match self {
                TestDb::Sqlite(dir) => Connection::open(Self::path(dir))
                    .unwrap()
                    .prepare(SQL)
                    .unwrap()
                    .query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap(),
                TestDb::Postgres(db) => postgres()
                    .psql(db, SQL)
                    .lines()
                    .map(|l| l.parse().unwrap())
                    .collect(),
            }
        }
    }

    fn enrolment(id: &str, groups: &[&str]) -> Enrolment {
        Enrolment {
            id: id.into(),
            signing_key: format!("key-of-{id}"),
            key_id: format!("mldsa65:{id}"),
            kem_key: None,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    fn all_versions() -> Vec<i64> {
        MIGRATIONS.iter().map(|m| m.version).collect()
    }

    #[test]
    fn every_migration_has_both_dialects_and_versions_run_without_gaps() {
        let expected: Vec<i64> = (1..=known_version()).collect();
        assert_eq!(all_versions(), expected, "versions 1, 2, …");
        for m in MIGRATIONS {
            assert!(
                !m.name.is_empty() && !m.sqlite.trim().is_empty(),
                "{}",
                m.name
            );
            assert!(!m.postgres.trim().is_empty(), "{}", m.name);
        }
        let mut names: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), MIGRATIONS.len(), "migration names are unique");
    }

    #[tokio::test]
    async fn migrations_apply_once_in_order_and_reopen() {
        for db in TestDb::each() {
            drop(db.open().await.unwrap());
            drop(db.open().await.unwrap());
            assert_eq!(db.versions(), all_versions(), "{}", db.engine());
        }
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        for db in TestDb::each() {
            drop(db.open().await.unwrap());
            db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (99, 'x', 0)",
            );
            let e = db.open().await.err().expect("refused");
            assert!(
                matches!(e, StoreError::TooNew { found: 99, .. }),
                "{}: {e}",
                db.engine()
            );
            assert!(e.to_string().contains("newer than this chimera"), "{e}");
        }
    }

    #[tokio::test]
    async fn registry_import_is_idempotent_and_follows_changes() {
        for db in TestDb::each() {
            let s = db.open().await.unwrap();
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
            moved[1].groups = vec!["yard".into(), "lobby".into(), "yard".into()];
            let third = s.import_registry(moved.clone(), groups).await.unwrap();
            assert_eq!((third.added, third.updated, third.unchanged), (0, 1, 1));
            let d = s.device("cam-2".into()).await.unwrap().unwrap();
            assert_eq!(d.groups, ["lobby", "yard"], "{}", db.engine());
            assert_eq!(s.devices().await.unwrap().len(), 2);
            // A new key is an update; the same groups in another order are not.
            moved[1].groups = vec!["yard".into(), "lobby".into()];
            moved[0].signing_key = "rotated".into();
            let fourth = s.import_registry(moved, vec![]).await.unwrap();
            assert_eq!((fourth.added, fourth.updated, fourth.unchanged), (0, 1, 1));
            assert_eq!(
                s.signing_key("cam-1".into())
                    .await
                    .unwrap()
                    .map(|k| k.signing_key)
                    .as_deref(),
                Some("rotated")
            );
        }
    }

    #[tokio::test]
    async fn tokens_are_unique_by_name_and_hash() {
        for db in TestDb::each() {
            let s = db.open().await.unwrap();
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
            assert!(
                !s.create_token("other".into(), Role::Admin, "aa".into(), None)
                    .await
                    .unwrap()
            );
            let ci = s.token("aa".into()).await.unwrap().unwrap();
            assert_eq!((ci.name.as_str(), ci.role), ("ci", Role::Operator));
            assert_eq!(
                (ci.expires_at, ci.revoked_at),
                (None, None),
                "{}",
                db.engine()
            );
            assert_eq!(s.token("bb".into()).await.unwrap(), None);
            // A role this build does not know grants nothing.
            db.execute(
                "INSERT INTO api_tokens (sha256, name, role, created_at) \
                 VALUES ('cc', 'future', 'root', 0)",
            );
            assert_eq!(s.token("cc".into()).await.unwrap(), None, "{}", db.engine());
        }
    }

    fn receipt(device: &str, verified: bool, text: &str) -> NewReceipt {
        NewReceipt {
            device: device.into(),
            kind: if verified { "workflow" } else { "unverified" }.into(),
            workflow_id: verified.then(|| "wf-1".to_string()),
            digest: verified.then(|| "ab".repeat(32)),
            verdict: verified.then(|| "applied".to_string()),
            signed_text: text.into(),
            verified,
            error: (!verified).then(|| "signature: does not verify\0!".to_string()),
        }
    }

    fn workflow(digest: &str, created_at: i64) -> Workflow {
        Workflow {
            digest: digest.into(),
            id: format!("id-{digest}"),
            // Above i32 and near the top of i64: stored and read back whole.
            sequence: (1 << 62) + 7,
            issuer: "gw-1".into(),
            key_id: "mldsa65:gw".into(),
            sealed: true,
            devices: vec!["cam-1".into()],
            groups: vec!["lobby".into(), "yard".into()],
            created_by: "token:ci".into(),
            created_at,
        }
    }

    /// Every read answers what the writes put in, the same way on both engines: order,
    /// limits, filters, NULLs, flags, large numbers, text that is not ASCII or holds NUL.
    #[tokio::test]
    async fn every_operation_answers_alike_on_both_engines() {
        for db in TestDb::each() {
            let engine = db.engine();
            let s = db.open().await.unwrap();
            assert!(s.devices().await.unwrap().is_empty());
            assert!(s.receipts(None, 10).await.unwrap().is_empty());
            assert!(s.audit_log(10).await.unwrap().is_empty());
            assert!(s.workflows(10).await.unwrap().is_empty());
            assert!(s.device("cam-1".into()).await.unwrap().is_none());
            assert!(s.signing_key("cam-1".into()).await.unwrap().is_none());
            assert!(s.workflow_text("ab".into()).await.unwrap().is_none());

            // Ids sort byte-wise on both engines ("Z" < "a" < "é").
            let mut cam2 = enrolment("cam-2", &[]);
            cam2.kem_key = Some("kem".into());
            let ids = ["cam-1", "Cam-Z", "cam-é"];
            let mut devices: Vec<Enrolment> = ids
                .iter()
                .map(|id| enrolment(id, &["yard", "Lobby", "lobby"]))
                .collect();
            devices.push(cam2);
            s.import_registry(devices, vec![]).await.unwrap();
            let listed = s.devices().await.unwrap();
            let listed_ids: Vec<&str> = listed.iter().map(|d| d.id.as_str()).collect();
            assert_eq!(listed_ids, ["Cam-Z", "cam-1", "cam-2", "cam-é"], "{engine}");
            assert_eq!(listed[1].groups, ["Lobby", "lobby", "yard"], "{engine}");
            assert!(listed[2].groups.is_empty());
            assert_eq!(listed[1].key_id, "mldsa65:cam-1");
            assert!(!listed[1].sealing_key && listed[2].sealing_key, "{engine}");
            assert!(listed.iter().all(|d| d.last_receipt.is_none()));
            assert_eq!(
                s.signing_key("cam-é".into())
                    .await
                    .unwrap()
                    .map(|k| k.signing_key)
                    .as_deref(),
                Some("key-of-cam-é")
            );

            let good = s
                .add_receipt(receipt("cam-1", true, "receipt ✓"))
                .await
                .unwrap();
            let bad = s
                .add_receipt(receipt("cam-1", false, "forged\0text"))
                .await
                .unwrap();
            s.add_receipt(receipt("cam-2", true, "other"))
                .await
                .unwrap();
            let all = s.receipts(None, 10).await.unwrap();
            assert_eq!(all.len(), 3, "{engine}");
            assert!(
                all.windows(2)
                    .all(|w| w[0].summary.received_at >= w[1].summary.received_at)
            );
            assert_eq!(s.receipts(None, 2).await.unwrap().len(), 2);
            let cam1 = s.receipts(Some("cam-1".into()), 10).await.unwrap();
            assert_eq!(cam1.len(), 2);
            assert!(cam1.iter().all(|r| r.device == "cam-1"));
            let g = all.iter().find(|r| r.summary.id == good).unwrap();
            assert!(g.summary.verified && g.summary.error.is_none(), "{engine}");
            assert_eq!(g.summary.kind, "workflow");
            assert_eq!(g.summary.workflow_id.as_deref(), Some("wf-1"));
            assert_eq!(g.summary.digest, Some("ab".repeat(32)));
            assert_eq!(g.summary.verdict.as_deref(), Some("applied"));
            assert_eq!(g.signed_text, "receipt ✓");
            let b = all.iter().find(|r| r.summary.id == bad).unwrap();
            assert!(!b.summary.verified, "{engine}");
            assert_eq!(b.summary.kind, "unverified");
            assert!(b.summary.workflow_id.is_none() && b.summary.digest.is_none());
            assert!(b.summary.verdict.is_none());
            // U+0000 is stored as U+FFFD, by both engines.
            assert_eq!(b.signed_text, "forged\u{FFFD}text", "{engine}");
            assert_eq!(
                b.summary.error.as_deref(),
                Some("signature: does not verify\u{FFFD}!")
            );
            // The last receipt is the newest, by the order `receipts` lists them in.
            let d = s.device("cam-1".into()).await.unwrap().unwrap();
            assert_eq!(d.last_receipt.unwrap().id, cam1[0].summary.id, "{engine}");
            assert_eq!(d.groups, ["Lobby", "lobby", "yard"]);
            // Keys holding U+0000 find nothing (and are no error).
            assert!(s.device("cam-1\0".into()).await.unwrap().is_none());
            assert!(s.signing_key("cam-1\0".into()).await.unwrap().is_none());
            assert!(
                s.receipts(Some("cam-1\0".into()), 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
            assert!(s.token("a\0".into()).await.unwrap().is_none());
            assert!(s.workflow_text("a\0".into()).await.unwrap().is_none());

            for (i, detail) in ["one", "two\0", "three ✓"].into_iter().enumerate() {
                s.audit("token:ci".into(), format!("act.{i}"), detail.into())
                    .await
                    .unwrap();
            }
            let audit = s.audit_log(10).await.unwrap();
            assert_eq!(audit.len(), 3, "{engine}");
            assert!(audit.windows(2).all(|w| w[0].at >= w[1].at));
            assert_eq!(s.audit_log(2).await.unwrap().len(), 2);
            let two = audit.iter().find(|a| a.action == "act.1").unwrap();
            assert_eq!(two.detail, "two\u{FFFD}", "{engine}");
            assert_eq!(two.actor, "token:ci");

            let w = workflow("aa", 1_000);
            assert!(s.add_workflow(w.clone(), "text ✓".into()).await.unwrap());
            assert!(!s.add_workflow(w.clone(), "other".into()).await.unwrap());
            assert!(
                s.add_workflow(workflow("bb", 2_000), "b".into())
                    .await
                    .unwrap()
            );
            let listed = s.workflows(10).await.unwrap();
            let digests: Vec<&str> = listed.iter().map(|w| w.digest.as_str()).collect();
            assert_eq!(digests, ["bb", "aa"], "{engine}: newest first");
            let back = &listed[1];
            assert_eq!(
                (back.sequence, back.sealed, back.created_at),
                (w.sequence, true, 1_000),
                "{engine}"
            );
            assert_eq!((&back.devices, &back.groups), (&w.devices, &w.groups));
            assert_eq!(
                (&back.id, &back.issuer, &back.key_id, &back.created_by),
                (&w.id, &w.issuer, &w.key_id, &w.created_by)
            );
            assert_eq!(s.workflows(1).await.unwrap().len(), 1);
            assert_eq!(
                s.workflow_text("aa".into()).await.unwrap().as_deref(),
                Some("text ✓")
            );
        }
    }

    /// Replicas starting together on an empty PostgreSQL database: every one opens, the
    /// migrations are applied once (one row per version), and their registry imports add
    /// each device once between them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn replicas_starting_together_migrate_and_import_once() {
        let Some(db) = TestDb::postgres() else {
            return;
        };
        let target = TestDb::target(&db);
        let devices: Vec<Enrolment> = (0..20)
            .map(|i| enrolment(&format!("cam-{i}"), &["lobby"]))
            .collect();
        // All spawned before any is awaited: they run at once.
        let starts: Vec<_> = (0..6)
            .map(|_| {
                let (target, devices) = (target.clone(), devices.clone());
                tokio::spawn(async move {
                    let s = PgStore::open(&target).await?;
                    s.import_registry(devices, vec![]).await
                })
            })
            .collect();
        let mut added = 0;
        for start in starts {
            let counts = start.await.unwrap().unwrap();
            assert_eq!(counts.added + counts.unchanged, 20, "{counts:?}");
            added += counts.added;
        }
        assert_eq!(added, 20);
        let pg = postgres();
        assert_eq!(
            pg.psql(
                &db,
                "SELECT count(*), min(version), max(version) FROM schema_migrations"
            ),
            format!("{}|1|{}", MIGRATIONS.len(), known_version())
        );
        assert_eq!(pg.psql(&db, "SELECT count(*) FROM group_members"), "20");
    }

    /// The schema migrated by its owner, a role that may only read and write rows (no
    /// CREATE) starts the service; on an empty database the same role is refused, saying
    /// what the server said.
    #[tokio::test]
    async fn a_role_without_create_starts_on_a_migrated_database() {
        let (Some(migrated), Some(empty)) = (TestDb::postgres(), TestDb::postgres()) else {
            return;
        };
        let pg = postgres();
        drop(PgStore::open(&TestDb::target(&migrated)).await.unwrap());
        let app = "chimera_rows_only";
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {app} LOGIN PASSWORD '{}'", pg.password()),
        );
        pg.psql(
            &migrated,
            &format!(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {app}"
            ),
        );
        let as_app = |db: &str| {
            PgTarget::new(
                &pg.url(db).replace("chimera@", &format!("{app}@")),
                "url",
                Some(pg.password().into()),
                Some(&pg.ca_file()),
                2,
            )
            .unwrap()
        };
        let s = PgStore::open(&as_app(&migrated)).await.unwrap();
        s.audit("cli".into(), "test".into(), "rows only".into())
            .await
            .unwrap();
        let e = PgStore::open(&as_app(&empty)).await.err().expect("refused");
        assert!(e.to_string().contains("permission denied"), "{e}");
    }

    /// With `ca_file` the connection is TLS and the server's certificate must chain to it;
    /// a server certificate from another CA is refused; the password is never in an error.
    #[tokio::test]
    async fn postgres_tls_is_verified_against_the_configured_ca() {
        let Some(db) = TestDb::postgres() else {
            return;
        };
        let pg = postgres();
        let s = PgStore::open(&TestDb::target(&db)).await.unwrap();
        s.devices().await.unwrap();
        // The pool keeps its connection: the server says it is TLS.
        assert_eq!(
            pg.psql(
                "postgres",
                &format!(
                    "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a \
                     USING (pid) WHERE a.datname = '{db}'"
                )
            ),
            "t"
        );
        drop(s);

        let dir = tempfile::tempdir().unwrap();
        let other_ca = dir.path().join("other-ca.crt");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(&other_ca, params.self_signed(&key).unwrap().pem()).unwrap();
        let wrong = PgTarget::new(
            &pg.url(&db),
            "url",
            Some(pg.password().into()),
            Some(&other_ca),
            1,
        )
        .unwrap();
        let e = PgStore::open(&wrong)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("certificate"), "{e}");
        assert!(!e.contains(pg.password()), "{e}");

        let bad_password = PgTarget::new(
            &pg.url(&db),
            "url",
            Some("not-the-password".into()),
            Some(&pg.ca_file()),
            1,
        )
        .unwrap();
        let e = PgStore::open(&bad_password)
            .await
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("password authentication failed"), "{e}");
        assert!(!e.contains("not-the-password"), "{e}");
        // Named as the service names it: user, host, port, database, no password.
        assert!(e.contains(&pg.url(&db)), "{e}");
    }

    fn issue_req(key: &str, target: &str, floor: u64, now_s: i64) -> IssueRequest {
        IssueRequest {
            key_id: key.into(),
            target: target.into(),
            floor,
            now_s,
        }
    }

    /// Sequences count per issuer key and target, from the floor and above the documents
    /// held; issue times never go back for a key.
    #[tokio::test]
    async fn issue_sequences_count_per_key_and_target_above_what_is_held() {
        for db in TestDb::each() {
            let engine = db.engine();
            let s = db.open().await.unwrap();
            let next = async |key: &str, target: &str, floor: u64, now: i64| {
                s.issue_sequence(issue_req(key, target, floor, now))
                    .await
                    .unwrap()
            };
            assert_eq!(
                next("k1", "d:cam-1|g:", 1, 100).await.sequence,
                1,
                "{engine}"
            );
            assert_eq!(
                next("k1", "d:cam-1|g:", 1, 100).await.sequence,
                2,
                "{engine}"
            );
            // Another target, another key: their own counts.
            assert_eq!(next("k1", "d:|g:lobby", 1, 100).await.sequence, 1);
            assert_eq!(next("k2", "d:cam-1|g:", 1, 100).await.sequence, 1);
            // The floor moves a count up, never down.
            assert_eq!(next("k1", "d:cam-1|g:", 10, 100).await.sequence, 10);
            assert_eq!(
                next("k1", "d:cam-1|g:", 3, 100).await.sequence,
                11,
                "{engine}"
            );
            // A held (uploaded) workflow of the same key and target, in any order: above it.
            let w = Workflow {
                sequence: 40,
                key_id: "k2".into(),
                sealed: false,
                devices: vec!["cam-2".into(), "cam-1".into()],
                groups: vec![],
                ..workflow(&"ab".repeat(32), 0)
            };
            assert!(s.add_workflow(w, "text".into()).await.unwrap());
            assert_eq!(
                next("k2", "d:cam-1,cam-2|g:", 1, 100).await.sequence,
                41,
                "{engine}"
            );
            assert_eq!(next("k2", "d:cam-1|g:", 1, 100).await.sequence, 2);
            // Near the top of i64: stored and compared whole.
            assert_eq!(
                next("k5", "d:a|g:", 1 << 62, 100).await.sequence,
                1 << 62,
                "{engine}"
            );
            assert_eq!(next("k5", "d:a|g:", 1, 100).await.sequence, (1 << 62) + 1);
            // Issue times never go back for a key, whatever the caller's clock says.
            assert_eq!(next("k3", "d:a|g:", 1, 500).await.issued_at_s, 500);
            assert_eq!(
                next("k3", "d:b|g:", 1, 450).await.issued_at_s,
                500,
                "{engine}"
            );
            assert_eq!(next("k3", "d:a|g:", 1, 600).await.issued_at_s, 600);
            assert_eq!(next("k4", "d:a|g:", 1, 450).await.issued_at_s, 450);
        }
    }

    /// Two stores on one database are two replicas' connections: allotments from both, all
    /// at once (a new key and target first: the first allotments race on the insert), never
    /// repeat a sequence.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_connections_never_hand_out_the_same_sequence() {
        for db in TestDb::each() {
            let stores: [Arc<dyn Store>; 2] = [
                db.open().await.unwrap().into(),
                db.open().await.unwrap().into(),
            ];
            let tasks: Vec<_> = (0..40)
                .map(|i| {
                    let s = stores[i % 2].clone();
                    tokio::spawn(async move {
                        s.issue_sequence(issue_req("k", "d:cam-1|g:", 1, 100))
                            .await
                            .unwrap()
                            .sequence
                    })
                })
                .collect();
            let mut got = Vec::new();
            for t in tasks {
                got.push(t.await.unwrap());
            }
            let mut sorted = got.clone();
            sorted.sort();
            assert_eq!(
                sorted,
                (1..=40).collect::<Vec<u64>>(),
                "{}: {got:?}",
                db.engine()
            );
        }
    }

    #[tokio::test]
    async fn tokens_keep_their_expiry_and_revocation() {
        for db in TestDb::each() {
            let s = db.open().await.unwrap();
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
}
