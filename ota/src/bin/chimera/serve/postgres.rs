//! [`PgStore`]: the service's state in PostgreSQL, for production: any number of replicas
//! on one database (no replica lock, unlike SQLite), the same schema and migrations as
//! [`SqliteStore`](super::store::SqliteStore) (`store::MIGRATIONS` carries both dialects).
//!
//! `tokio-postgres` (pure Rust, no libpq) through a `deadpool-postgres` pool: connections are
//! opened on demand up to `pool_size`, reused, and dropped when the server closed them. TLS,
//! when `ca_file` is configured, is rustls with the workspace's ring provider (no OpenSSL)
//! through `tokio-postgres-rustls`, which also gives SCRAM channel binding.
//!
//! Migrations run in one transaction holding `pg_advisory_xact_lock(MIGRATION_LOCK)`: two
//! replicas starting on an empty database together apply them once; the second waits, then
//! finds them applied. The registry import holds another advisory lock for the same reason
//! (two replicas importing the same `devices.json` at once would otherwise both insert the
//! same memberships).
//!
//! Nothing here is logged with a password: the database is described as
//! `postgres://USER@HOST:PORT/DBNAME` ([`PgTarget::describe`]).

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::config::{Host, SslMode};

use super::postgres_rollouts as pg4;
use super::postgres_signing as pg5;
use super::store::{
    AuditRow, Device, HeldDevice, ImportCounts, MIGRATIONS, NewReceipt, ReceiptSummary, Role,
    SCHEMA_MIGRATIONS_TABLE, SUMMARY_COLUMNS, Store, StoreError, StoreFuture, StoredReceipt,
    TokenInfo, Workflow, known_version, new_id, now_ms, parse_targets, targets_json, without_nul,
};
use super::store::{Change, EnrolledKey, Enrolment, GroupEntry, Unenrolment};
use super::store_rollouts::{
    Answer, Claim, Created, DesiredState, NewRollout, Rollout, RolloutDetail, RolloutState,
    RolloutWrite, StateChange, StatusChange, StatusReport, TargetChange,
};
use super::store_signing::{Issue, IssueRequest};

/// Advisory lock key held while migrating ("chimeraM" in ASCII). Advisory locks are per
/// database, so two services on two databases of one server do not wait on each other.
const MIGRATION_LOCK: i64 = 0x6368_696d_6572_614d;
/// Advisory lock key held while importing the registry ("chimeraR").
const IMPORT_LOCK: i64 = 0x6368_696d_6572_6152;

/// How long a request waits for a pooled connection, and a new connection for the server,
/// before it fails (and the API answers 500, logged) instead of hanging.
const POOL_TIMEOUT: Duration = Duration::from_secs(15);
/// The connect timeout when the URL gives none (`connect_timeout=`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A resolved PostgreSQL connection setting: what [`PgStore::open`] connects with.
#[derive(Clone)]
pub(crate) struct PgTarget {
    config: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    pool_size: usize,
    describe: String,
}

/// Never prints the password: only [`PgTarget::describe`].
impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("database", &self.describe)
            .field("tls", &self.tls.is_some())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// `e` and its causes (tokio-postgres' own message is only the kind, "db error"; the
/// server's words are in its source).
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cause = c.source();
    }
    out
}

impl PgTarget {
    /// Parses `url` (read from `from`, named in errors), sets `password` if given, and
    /// builds the TLS connector from `ca_file`. With a CA file the connection is TLS and
    /// verified, always (a `sslmode=disable` next to it is a contradiction); without one,
    /// `sslmode=require` is refused (nothing to verify the server with).
    pub(crate) fn new(
        url: &str,
        from: &str,
        password: Option<String>,
        ca_file: Option<&Path>,
        pool_size: usize,
    ) -> anyhow::Result<PgTarget> {
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            // The parser's messages name options, never values; the URL is not repeated.
            let hint = if url.contains("sslmode=verify") {
                " (for a verified TLS connection give database.ca_file; with it the server \
                 certificate and host name are always checked, as libpq's verify-full does)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "database: {from}: {}{hint}",
                chain(&e as &dyn std::error::Error)
            )
        })?;
        anyhow::ensure!(
            !config.get_hosts().is_empty(),
            "database: {from}: the URL names no host"
        );
        if let Some(pw) = password {
            anyhow::ensure!(
                config.get_password().is_none(),
                "database: the password is given twice (in the URL and in \
                 password_file/password_env): keep one"
            );
            config.password(pw);
        }
        if config.get_application_name().is_none() {
            config.application_name("chimera-serve");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let tls = match ca_file {
            Some(ca) => {
                anyhow::ensure!(
                    config.get_ssl_mode() != SslMode::Disable,
                    "database: sslmode=disable contradicts ca_file (with ca_file the \
                     connection is always TLS)"
                );
                config.ssl_mode(SslMode::Require);
                Some(tls_connector(ca)?)
            }
            None => {
                anyhow::ensure!(
                    config.get_ssl_mode() != SslMode::Require,
                    "database: sslmode=require needs database.ca_file (the CA the server's \
                     certificate must chain to)"
                );
                // `prefer` (the default) with no TLS connector is plain TCP: never a TLS
                // session that verifies nothing.
                config.ssl_mode(SslMode::Disable);
                None
            }
        };
        let describe = describe(&config);
        Ok(PgTarget {
            config,
            tls,
            pool_size,
            describe,
        })
    }

    /// `postgres://USER@HOST:PORT/DBNAME` (no password), for errors, logs and the audit.
    pub(crate) fn describe(&self) -> &str {
        &self.describe
    }

    /// Whether the connection is TLS (verified against `ca_file`).
    pub(crate) fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A connection of its own, outside the pool (the fleet event relay's `LISTEN`), as
    /// the pool's are made (TLS, password, timeouts) but named `application_name` in
    /// `pg_stat_activity`. What the server sends it unasked (notifications) comes out of
    /// the receiver; the receiver ends, after the error if there was one, when the
    /// connection does. Dropping the client closes it.
    pub(crate) async fn connect_alone(
        &self,
        application_name: &str,
    ) -> Result<(tokio_postgres::Client, AsyncMessages), StoreError> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        let failed = |e: tokio_postgres::Error| StoreError::Postgres {
            at: self.describe.clone(),
            message: chain(&e),
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let client = match &self.tls {
            Some(tls) => {
                let (client, connection) = config.connect(tls.clone()).await.map_err(failed)?;
                tokio::spawn(forward_messages(connection, tx));
                client
            }
            None => {
                let (client, connection) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                tokio::spawn(forward_messages(connection, tx));
                client
            }
        };
        Ok((client, rx))
    }

    /// Whether every host is this machine (loopback or a Unix socket): an unencrypted
    /// connection then crosses no network.
    pub(crate) fn is_local(&self) -> bool {
        self.config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            Host::Unix(_) => true,
        })
    }
}

/// What a connection of [`PgTarget::connect_alone`] receives unasked, in order; its error,
/// last, when it broke.
pub(crate) type AsyncMessages =
    tokio::sync::mpsc::Receiver<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>;

/// Drives `connection` (which also carries its client's queries) and hands on what it
/// receives unasked, until it ends or nobody receives. A full receiver makes it wait: the
/// server holds further notifications meanwhile.
async fn forward_messages<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::Sender<Result<tokio_postgres::AsyncMessage, tokio_postgres::Error>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = std::pin::pin!(futures_util::stream::poll_fn(move |cx| {
        connection.poll_message(cx)
    }));
    use futures_util::StreamExt as _;
    while let Some(m) = messages.next().await {
        let end = m.is_err();
        if tx.send(m).await.is_err() || end {
            return;
        }
    }
}

fn describe(c: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            match c.get_ports().get(i).or(c.get_ports().first()) {
                Some(port) => format!("{host}:{port}"),
                None => host,
            }
        })
        .collect();
    let user = c.get_user().map(|u| format!("{u}@")).unwrap_or_default();
    format!(
        "postgres://{user}{}/{}",
        hosts.join(","),
        c.get_dbname().unwrap_or("")
    )
}

/// rustls (ring) trusting exactly the certificates in `ca_file`.
fn tls_connector(ca_file: &Path) -> anyhow::Result<tokio_postgres_rustls::MakeRustlsConnect> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let what = |m: String| anyhow::anyhow!("database: ca_file {}: {m}", ca_file.display());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| what(e.to_string()))? {
        roots
            .add(cert.map_err(|e| what(e.to_string()))?)
            .map_err(|e| what(e.to_string()))?;
    }
    anyhow::ensure!(!roots.is_empty(), what("no certificate in it".into()));
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| what(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

/// What a PostgreSQL call fails with before it becomes a [`StoreError`]: a pool or a
/// database error (both become text with their causes).
pub(super) type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The PostgreSQL store: a pool of connections to one database.
#[derive(Clone)]
pub(crate) struct PgStore {
    pool: Pool,
    at: Arc<str>,
}

impl PgStore {
    /// Connects, and applies the migrations the database lacks (under the migration lock).
    pub(crate) async fn open(target: &PgTarget) -> Result<PgStore, StoreError> {
        let at: Arc<str> = target.describe().into();
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &target.tls {
            Some(tls) => Manager::from_config(target.config.clone(), tls.clone(), manager_config),
            None => {
                Manager::from_config(target.config.clone(), tokio_postgres::NoTls, manager_config)
            }
        };
        let pool = Pool::builder(manager)
            .max_size(target.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Postgres {
                at: at.to_string(),
                message: format!("connection pool: {e}"),
            })?;
        let store = PgStore { pool, at };
        store.migrate().await?;
        Ok(store)
    }

    /// Runs `f`; its failure becomes [`StoreError::Postgres`] naming this database.
    pub(super) fn run<'a, T: Send + 'a>(
        &'a self,
        f: impl Future<Output = Result<T, Failure>> + Send + 'a,
    ) -> StoreFuture<'a, T> {
        Box::pin(async move {
            f.await.map_err(|e| StoreError::Postgres {
                at: self.at.to_string(),
                message: chain(&*e),
            })
        })
    }

    /// A pooled connection.
    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, Failure> {
        Ok(self.pool.get().await?)
    }

    /// Applies the migrations this database lacks, all in one transaction holding the
    /// migration lock; refuses a database whose schema is newer than this build.
    async fn migrate(&self) -> Result<(), StoreError> {
        let known = known_version();
        let found = self
            .run(async {
                let mut c = self.client().await?;
                let tx = c.transaction().await?;
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
                    .await?;
                // Created only when missing: a role without CREATE (the schema migrated by
                // an administrator's run) can still start on a current database.
                let exists: bool = tx
                    .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
                    .await?
                    .try_get(0)?;
                if !exists {
                    tx.batch_execute(SCHEMA_MIGRATIONS_TABLE).await?;
                }
                let found: i64 = tx
                    .query_one(
                        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                        &[],
                    )
                    .await?
                    .try_get(0)?;
                if found > known {
                    // Dropped, so rolled back: nothing of this build touches it.
                    return Ok(found);
                }
                for m in MIGRATIONS.iter().filter(|m| m.version > found) {
                    tx.batch_execute(m.postgres).await.map_err(|e| {
                        format!("migration {} ({}): {}", m.version, m.name, chain(&e))
                    })?;
                    tx.execute(
                        "INSERT INTO schema_migrations (version, name, applied_at) \
                         VALUES ($1, $2, $3)",
                        &[&m.version, &m.name, &now_ms()],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(found)
            })
            .await?;
        if found > known {
            return Err(StoreError::TooNew {
                at: self.at.to_string(),
                found,
                known,
            });
        }
        Ok(())
    }
}

/// Every device's keys and groups (groups sorted as [`Enrolment::sorted_groups`] sorts).
async fn held_devices(
    c: &impl deadpool_postgres::GenericClient,
) -> Result<HashMap<String, HeldDevice>, Failure> {
    let mut held = HashMap::new();
    for r in c
        .query(
            "SELECT id, signing_key, kem_key, unenrolled_at IS NOT NULL FROM devices",
            &[],
        )
        .await?
    {
        held.insert(
            r.try_get(0)?,
            HeldDevice {
                signing_key: r.try_get(1)?,
                kem_key: r.try_get(2)?,
                groups: vec![],
                unenrolled: r.try_get(3)?,
            },
        );
    }
    for r in c
        .query("SELECT device_id, group_name FROM group_members", &[])
        .await?
    {
        let id: String = r.try_get(0)?;
        if let Some(h) = held.get_mut(&id) {
            h.groups.push(r.try_get(1)?);
        }
    }
    for h in held.values_mut() {
        h.groups.sort();
    }
    Ok(held)
}

/// The [`ReceiptSummary`] in the [`SUMMARY_COLUMNS`] starting at column `at`; `None` when
/// they are NULL (a device without receipts, from an outer join).
fn summary(r: &tokio_postgres::Row, at: usize) -> Result<Option<ReceiptSummary>, Failure> {
    let Some(id) = r.try_get::<_, Option<String>>(at)? else {
        return Ok(None);
    };
    Ok(Some(ReceiptSummary {
        id,
        kind: r.try_get(at + 1)?,
        workflow_id: r.try_get(at + 2)?,
        digest: r.try_get(at + 3)?,
        verdict: r.try_get(at + 4)?,
        verified: r.try_get::<_, i32>(at + 5)? != 0,
        error: r.try_get(at + 6)?,
        received_at: r.try_get(at + 7)?,
    }))
}

/// One query for one device or all: groups as an array, the newest receipt through a
/// lateral join (an index lookup per device, not a scan of all receipts), its status and
/// desired state.
const TOKEN_COLUMNS: &str = "name, role, created_at, expires_at, revoked_at";

/// A row of [`TOKEN_COLUMNS`]; None for a role this build does not know (it grants nothing).
fn token_info(r: &tokio_postgres::Row) -> Result<Option<TokenInfo>, Failure> {
    let Some(role) = Role::parse(r.try_get(1)?) else {
        return Ok(None);
    };
    Ok(Some(TokenInfo {
        name: r.try_get(0)?,
        role,
        created_at: r.try_get(2)?,
        expires_at: r.try_get(3)?,
        revoked_at: r.try_get(4)?,
    }))
}

fn devices_query() -> String {
    format!(
        "SELECT d.id, d.key_id, d.kem_key IS NOT NULL, \
           ARRAY(SELECT m.group_name FROM group_members m WHERE m.device_id = d.id \
                 ORDER BY m.group_name COLLATE \"C\"), \
           r.*, \
           s.online, s.running_id, s.running_digest, s.last_seen, s.status_at, \
           s.agent_version, s.trust_version, \
           w.digest, w.rollout_id, w.set_at, w.sent_at, d.unenrolled_at \
         FROM devices d LEFT JOIN LATERAL ( \
           SELECT {SUMMARY_COLUMNS} FROM receipts WHERE device_id = d.id \
           ORDER BY received_at DESC, id COLLATE \"C\" DESC LIMIT 1) r ON true \
         LEFT JOIN device_status s ON s.device_id = d.id \
         LEFT JOIN desired_state w ON w.device_id = d.id \
         WHERE (($1::text IS NULL AND d.unenrolled_at IS NULL) OR d.id = $1) \
         ORDER BY d.id COLLATE \"C\""
    )
}

async fn load_devices(
    c: &deadpool_postgres::Object,
    id: Option<String>,
) -> Result<Vec<Device>, Failure> {
    let st = c.prepare_cached(&devices_query()).await?;
    let mut out = vec![];
    for r in c.query(&st, &[&id]).await? {
        out.push(Device {
            id: r.try_get(0)?,
            key_id: r.try_get(1)?,
            sealing_key: r.try_get(2)?,
            groups: r.try_get(3)?,
            last_receipt: summary(&r, 4)?,
            status: pg4::device_status(&r, 12)?,
            desired: pg4::desired_state(&r, 19)?,
            unenrolled_at: r.try_get(23)?,
        });
    }
    Ok(out)
}

impl Store for PgStore {
    fn import_registry(
        &self,
        devices: Vec<Enrolment>,
        groups: Vec<GroupEntry>,
    ) -> StoreFuture<'_, ImportCounts> {
        self.run(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            // Replicas starting together import one after the other; the second finds
            // the first's rows (each statement sees what committed before it).
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&IMPORT_LOCK])
                .await?;
            for g in &groups {
                tx.execute(
                    "INSERT INTO groups (name, kem_key) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET kem_key = excluded.kem_key",
                    &[&g.name, &g.kem_key],
                )
                .await?;
            }
            let held = held_devices(&tx).await?;
            let upsert = tx
                .prepare(
                    "INSERT INTO devices (id, signing_key, key_id, kem_key, enrolled_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO UPDATE SET \
                     signing_key = excluded.signing_key, key_id = excluded.key_id, \
                     kem_key = excluded.kem_key, unenrolled_at = NULL",
                )
                .await?;
            let forget = tx
                .prepare("DELETE FROM group_members WHERE device_id = $1")
                .await?;
            let group = tx
                .prepare(
                    "INSERT INTO groups (name, kem_key) VALUES ($1, NULL) \
                     ON CONFLICT (name) DO NOTHING",
                )
                .await?;
            let member = tx
                .prepare("INSERT INTO group_members (group_name, device_id) VALUES ($1, $2)")
                .await?;
            let mut counts = ImportCounts::default();
            for d in &devices {
                let change = d.change(held.get(&d.id));
                counts.count(change);
                if matches!(change, Change::Keep | Change::KeepOut) {
                    continue;
                }
                tx.execute(
                    &upsert,
                    &[&d.id, &d.signing_key, &d.key_id, &d.kem_key, &now_ms()],
                )
                .await?;
                tx.execute(&forget, &[&d.id]).await?;
                for g in d.sorted_groups() {
                    tx.execute(&group, &[&g]).await?;
                    tx.execute(&member, &[&g, &d.id]).await?;
                }
            }
            tx.commit().await?;
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
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "INSERT INTO api_tokens (sha256, name, role, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                )
                .await?;
            let n = c
                .execute(
                    &st,
                    &[&sha256, &name, &role.as_str(), &now_ms(), &expires_at],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn token(&self, sha256: String) -> StoreFuture<'_, Option<TokenInfo>> {
        self.run(async move {
            if sha256.contains('\0') {
                return Ok(None);
            }
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE sha256 = $1"
                ))
                .await?;
            match c.query_opt(&st, &[&sha256]).await? {
                Some(r) => token_info(&r),
                None => Ok(None),
            }
        })
    }

    fn tokens(&self) -> StoreFuture<'_, Vec<TokenInfo>> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM api_tokens ORDER BY name COLLATE \"C\""
                ))
                .await?;
            let mut out = vec![];
            for r in c.query(&st, &[]).await? {
                out.extend(token_info(&r)?);
            }
            Ok(out)
        })
    }

    fn revoke_token(&self, name: String) -> StoreFuture<'_, bool> {
        self.run(async move {
            if name.contains('\0') {
                return Ok(false);
            }
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE name = $1",
                )
                .await?;
            Ok(c.execute(&st, &[&name, &now_ms()]).await? == 1)
        })
    }

    fn devices(&self) -> StoreFuture<'_, Vec<Device>> {
        self.run(async move { load_devices(&self.client().await?, None).await })
    }

    fn device(&self, id: String) -> StoreFuture<'_, Option<Device>> {
        self.run(async move {
            if id.contains('\0') {
                return Ok(None);
            }
            Ok(load_devices(&self.client().await?, Some(id))
                .await?
                .into_iter()
                .next())
        })
    }

    fn signing_key(&self, id: String) -> StoreFuture<'_, Option<EnrolledKey>> {
        self.run(async move {
            if id.contains('\0') {
                return Ok(None);
            }
            let c = self.client().await?;
            let st = c
                .prepare_cached("SELECT signing_key, unenrolled_at FROM devices WHERE id = $1")
                .await?;
            Ok(match c.query_opt(&st, &[&id]).await? {
                Some(r) => Some(EnrolledKey {
                    signing_key: r.try_get(0)?,
                    unenrolled_at: r.try_get(1)?,
                }),
                None => None,
            })
        })
    }

    fn unenroll_device(&self, id: String) -> StoreFuture<'_, Unenrolment> {
        self.run(async move {
            if id.contains('\0') {
                return Ok(Unenrolment::Unknown);
            }
            pg4::unenroll_device(&mut self.client().await?, &id, now_ms()).await
        })
    }

    fn unenrolled_devices(&self) -> StoreFuture<'_, Vec<String>> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "SELECT id FROM devices WHERE unenrolled_at IS NOT NULL \
                     ORDER BY id COLLATE \"C\"",
                )
                .await?;
            Ok(c.query(&st, &[])
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    fn add_receipt(&self, r: NewReceipt) -> StoreFuture<'_, String> {
        self.run(async move {
            let c = self.client().await?;
            // The same bytes from the same device again (a QoS 1 redelivery, another
            // replica's copy) are the same receipt: the stored row's id is returned.
            let text_sha256 = aegis_ota::sha256_hex(r.signed_text.as_bytes());
            let st = c
                .prepare_cached(
                    "INSERT INTO receipts (id, device_id, kind, workflow_id, digest, verdict, \
                     signed_text, received_at, verified, error, text_sha256) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                     ON CONFLICT (device_id, text_sha256) DO NOTHING",
                )
                .await?;
            let id = new_id();
            c.execute(
                &st,
                &[
                    &id,
                    &r.device,
                    &r.kind,
                    &r.workflow_id,
                    &r.digest,
                    &r.verdict,
                    &without_nul(r.signed_text),
                    &now_ms(),
                    &i32::from(r.verified),
                    &r.error.map(without_nul),
                    &text_sha256,
                ],
            )
            .await?;
            let st = c
                .prepare_cached("SELECT id FROM receipts WHERE device_id = $1 AND text_sha256 = $2")
                .await?;
            Ok(c.query_one(&st, &[&r.device, &text_sha256])
                .await?
                .try_get(0)?)
        })
    }

    fn receipts(&self, device: Option<String>, limit: u32) -> StoreFuture<'_, Vec<StoredReceipt>> {
        self.run(async move {
            if device.as_ref().is_some_and(|d| d.contains('\0')) {
                return Ok(vec![]);
            }
            let c = self.client().await?;
            let st = c
                .prepare_cached(&format!(
                    "SELECT device_id, signed_text, {SUMMARY_COLUMNS} FROM receipts \
                     WHERE ($1::text IS NULL OR device_id = $1) \
                     ORDER BY received_at DESC, id COLLATE \"C\" DESC LIMIT $2"
                ))
                .await?;
            let mut out = vec![];
            for r in c.query(&st, &[&device, &i64::from(limit)]).await? {
                out.push(StoredReceipt {
                    device: r.try_get(0)?,
                    signed_text: r.try_get(1)?,
                    summary: summary(&r, 2)?.ok_or("a receipt without an id")?,
                });
            }
            Ok(out)
        })
    }

    fn audit(&self, actor: String, action: String, detail: String) -> StoreFuture<'_, ()> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "INSERT INTO audit (id, at, actor, action, detail) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .await?;
            c.execute(
                &st,
                &[
                    &new_id(),
                    &now_ms(),
                    &without_nul(actor),
                    &without_nul(action),
                    &without_nul(detail),
                ],
            )
            .await?;
            Ok(())
        })
    }

    fn audit_log(&self, limit: u32) -> StoreFuture<'_, Vec<AuditRow>> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "SELECT id, at, actor, action, detail FROM audit \
                     ORDER BY at DESC, id COLLATE \"C\" DESC LIMIT $1",
                )
                .await?;
            let mut out = vec![];
            for r in c.query(&st, &[&i64::from(limit)]).await? {
                out.push(AuditRow {
                    id: r.try_get(0)?,
                    at: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    detail: r.try_get(4)?,
                });
            }
            Ok(out)
        })
    }

    fn add_workflow(&self, w: Workflow, text: String) -> StoreFuture<'_, bool> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "INSERT INTO workflows (digest, id, sequence, issuer, key_id, sealed, \
                     targets, text, created_by, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                     ON CONFLICT (digest) DO NOTHING",
                )
                .await?;
            let n = c
                .execute(
                    &st,
                    &[
                        &w.digest,
                        &w.id,
                        &(w.sequence as i64),
                        &w.issuer,
                        &w.key_id,
                        &i32::from(w.sealed),
                        &targets_json(&w.devices, &w.groups),
                        &text,
                        &w.created_by,
                        &w.created_at,
                    ],
                )
                .await?;
            Ok(n == 1)
        })
    }

    fn workflows(&self, limit: u32) -> StoreFuture<'_, Vec<Workflow>> {
        self.run(async move {
            let c = self.client().await?;
            let st = c
                .prepare_cached(
                    "SELECT digest, id, sequence, issuer, key_id, sealed, targets, created_by, \
                     created_at FROM workflows \
                     ORDER BY created_at DESC, digest COLLATE \"C\" LIMIT $1",
                )
                .await?;
            let mut out = vec![];
            for r in c.query(&st, &[&i64::from(limit)]).await? {
                let (devices, groups) = parse_targets(r.try_get(6)?);
                out.push(Workflow {
                    digest: r.try_get(0)?,
                    id: r.try_get(1)?,
                    sequence: r.try_get::<_, i64>(2)? as u64,
                    issuer: r.try_get(3)?,
                    key_id: r.try_get(4)?,
                    sealed: r.try_get::<_, i32>(5)? != 0,
                    devices,
                    groups,
                    created_by: r.try_get(7)?,
                    created_at: r.try_get(8)?,
                });
            }
            Ok(out)
        })
    }

    fn workflow_text(&self, digest: String) -> StoreFuture<'_, Option<String>> {
        self.run(async move {
            if digest.contains('\0') {
                return Ok(None);
            }
            let c = self.client().await?;
            let st = c
                .prepare_cached("SELECT text FROM workflows WHERE digest = $1")
                .await?;
            Ok(match c.query_opt(&st, &[&digest]).await? {
                Some(r) => Some(r.try_get(0)?),
                None => None,
            })
        })
    }

    fn record_status(&self, s: StatusReport) -> StoreFuture<'_, Option<StatusChange>> {
        self.run(async move { pg4::record_status(&mut self.client().await?, &s).await })
    }

    fn set_desired(
        &self,
        devices: Vec<String>,
        digest: String,
        rollout: Option<String>,
    ) -> StoreFuture<'_, ()> {
        self.run(async move {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            pg4::set_desired(&tx, &devices, &digest, rollout.as_deref(), now_ms()).await?;
            Ok(tx.commit().await?)
        })
    }

    fn reconcile_claim(
        &self,
        device: String,
        sent_before: i64,
    ) -> StoreFuture<'_, Option<DesiredState>> {
        self.run(async move {
            let mut c = self.client().await?;
            pg4::reconcile_claim(&mut c, &device, sent_before, now_ms()).await
        })
    }

    fn record_answer(&self, a: Answer) -> StoreFuture<'_, Vec<TargetChange>> {
        self.run(async move { pg4::record_answer(&mut self.client().await?, &a, now_ms()).await })
    }

    fn create_rollout(&self, r: NewRollout) -> StoreFuture<'_, Created> {
        self.run(async move { pg4::create_rollout(&mut self.client().await?, &r, now_ms()).await })
    }

    fn rollouts(&self, limit: u32) -> StoreFuture<'_, Vec<Rollout>> {
        self.run(async move { pg4::rollouts(&self.client().await?, limit).await })
    }

    fn rollout(&self, id: String) -> StoreFuture<'_, Option<RolloutDetail>> {
        self.run(async move {
            if id.contains('\0') {
                return Ok(None);
            }
            pg4::rollout(&self.client().await?, &id).await
        })
    }

    fn set_rollout_state(
        &self,
        id: String,
        from: Vec<RolloutState>,
        to: RolloutState,
        reason: Option<String>,
    ) -> StoreFuture<'_, StateChange> {
        self.run(async move {
            if id.contains('\0') {
                return Ok(StateChange::Missing);
            }
            let mut c = self.client().await?;
            pg4::set_rollout_state(&mut c, &id, &from, to, reason.as_deref(), now_ms()).await
        })
    }

    fn claim_rollouts(
        &self,
        replica: String,
        lease_ms: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<Claim>> {
        self.run(async move {
            let mut c = self.client().await?;
            pg4::claim_rollouts(&mut c, &replica, now_ms(), lease_ms, limit).await
        })
    }

    fn apply_rollout_writes(
        &self,
        claim: Claim,
        writes: Vec<RolloutWrite>,
    ) -> StoreFuture<'_, bool> {
        self.run(async move {
            let mut c = self.client().await?;
            pg4::apply_rollout_writes(&mut c, &claim, &writes, now_ms()).await
        })
    }

    fn issue_sequence(&self, r: IssueRequest) -> StoreFuture<'_, Issue> {
        self.run(async move { pg5::issue(&mut self.client().await?, &r, now_ms()).await })
    }
}
