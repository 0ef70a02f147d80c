//! `chimera serve`: the gateway as a service (issue 21; docs/chimera-serve.md). This first
//! slice: an HTTP API over its state — a SQLite file (one replica) or PostgreSQL (several
//! replicas) — (devices imported from the CLI's registry,
//! receipts verified with each device's enrolled key, signed workflow uploads checked
//! against the trust metadata, an audit log), with roles for API tokens (expiring,
//! revocable) and OIDC bearer tokens (JWTs checked against the provider's JWKS).
//!
//! What it must not do: hold or ask for the offline root key — its configuration has no
//! place for one, and the one secret key it may hold, an online issuer key (`signer:`,
//! `signer.rs`), is refused at start when the trust metadata names it as a root key or
//! does not list it as an issuer. Everything else it verifies with public keys.
//!
//! Layout (vector's habit): `config.rs` is the contract, `store.rs` the state behind a
//! trait (`postgres.rs` its PostgreSQL implementation; `store_rollouts.rs` the rollout,
//! status and desired-state part, `postgres_rollouts.rs` that part for PostgreSQL;
//! `store_signing.rs` the signer's sequence allotments, `postgres_signing.rs` for
//! PostgreSQL), `service.rs` the decisions, `api.rs` the HTTP surface. With a broker:
//! `ingest.rs` takes receipts and status from it (MQTT 5 shared subscriptions),
//! `rollout.rs` is the rollout engine (`rollout_api.rs` its routes), `publisher.rs` the one
//! way documents go out, `events.rs` the server-sent event stream (`postgres_events.rs`
//! makes it fleet-wide on PostgreSQL); `auth/` who is calling.
//! With `signer`: `signer.rs` the online issuer key (`signer_pkcs11.rs` on a token),
//! `signer_api.rs` its route. `dashboard.rs` is the operator's web page (static files;
//! its data comes from the API).

mod api;
mod auth;
mod config;
mod dashboard;
mod events;
mod ingest;
/// Its certificates (`super::pki`).
#[cfg(test)]
#[path = "../../../../tests/common/pki.rs"]
mod pki;
mod postgres;
mod postgres_events;
mod postgres_rollouts;
mod postgres_signing;
mod publisher;
mod rollout;
mod rollout_api;
mod service;
mod signer;
mod signer_api;
mod signer_pkcs11;
mod store;
mod store_rollouts;
mod store_signing;
/// The tests' PostgreSQL server, shared with the integration tests (`ota/tests/common`).
#[cfg(test)]
#[path = "../../../../tests/common/postgres.rs"]
mod test_postgres;
/// Its tool check and free port (it calls them as `super::tools`).
#[cfg(test)]
#[path = "../../../../tests/common/tools.rs"]
mod tools;

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;

use config::{Database, ServeConfig};
use store::{Role, SqliteStore, Store, now_ms};

/// `chimera serve`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// The service's configuration (YAML; docs/chimera-serve.md lists its keys).
    #[arg(long, global = true, default_value = "serve.yaml")]
    config: PathBuf,
    #[command(subcommand)]
    what: Option<ServeCommand>,
}

#[derive(Subcommand)]
enum ServeCommand {
    /// API tokens (bearer tokens for tools and CI).
    Token {
        #[command(subcommand)]
        what: TokenCommand,
    },
    /// Receipts: record one as the service's MQTT ingest will (verified with the enrolled
    /// key of the device it is recorded for).
    Receipt {
        #[command(subcommand)]
        what: ReceiptCommand,
    },
    /// The online issuer key on a PKCS#11 token (`signer: {kind: pkcs11}`): put one there.
    Signer {
        #[command(subcommand)]
        what: SignerCommand,
    },
    /// Devices the service holds.
    Device {
        #[command(subcommand)]
        what: DeviceCommand,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Un-enrol a device, as `DELETE /api/v1/devices/{id}` does: it leaves its groups and
    /// every unfinished rollout, its key verifies nothing it sends from now on; its
    /// receipts stay. Take it out of the registry file too (`chimera unenroll`), or the
    /// CLI's own commands still count it.
    Unenroll {
        /// The device.
        #[arg(long)]
        id: String,
    },
}

#[derive(Subcommand)]
enum SignerCommand {
    /// Encrypt an existing issuer key's seed under the token's AES key (made on the token,
    /// non-extractable, when it has none with `key_label`) into `wrapped_seed_file`; then
    /// delete the key file. A root key of the trust metadata is refused.
    ImportSeed {
        /// The issuer's secret key file (`chimera keygen`).
        #[arg(long)]
        key: PathBuf,
    },
    /// Make a new issuer key whose seed is only ever stored encrypted under the token's
    /// AES key (`wrapped_seed_file`); writes PREFIX.pub for `chimera trust add-issuer`.
    Generate {
        /// Path prefix of the public key file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Run the service's start-up checks of `signer:` (key file or token, wrapping key,
    /// trust metadata) and print what was found.
    Check,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token and print it, once; only its SHA-256 is stored.
    Create {
        /// viewer (reads), operator (also uploads workflows), admin (also reads the audit log).
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// A unique name (audit rows say `token:NAME`).
        #[arg(long)]
        name: String,
        /// It stops working after this long: `90d`, `12h`, `30m`, `600s` (at most 3660 days).
        #[arg(long, value_parser = parse_token_lifetime, conflicts_with = "expires_at")]
        expires_in: Option<i64>,
        /// It stops working at this time (RFC 3339 UTC, `2027-01-31T00:00:00Z`; in the
        /// future).
        #[arg(long, value_parser = parse_expiry)]
        expires_at: Option<i64>,
    },
    /// Revoke a token: it stops working at once (the service needs no restart).
    Revoke {
        /// The token's name.
        #[arg(long)]
        name: String,
    },
    /// List the tokens: name, role, created, expiry, state (never a token or its hash).
    List {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Longest API token lifetime `--expires-in` accepts.
const MAX_TOKEN_LIFETIME_S: i64 = 3660 * 86_400;

fn parse_token_lifetime(s: &str) -> Result<i64, String> {
    crate::parse_span_s(s, MAX_TOKEN_LIFETIME_S)
}

/// An RFC 3339 UTC time in the future, as unix seconds.
fn parse_expiry(s: &str) -> Result<i64, String> {
    let t = aegis_ota::maml::parse_time(s)
        .ok_or_else(|| format!("{s:?}: RFC 3339 UTC, e.g. 2027-01-31T00:00:00Z"))?;
    if t <= aegis_ota::maml::now_s() {
        return Err(format!("{s:?} is not in the future"));
    }
    Ok(t)
}

#[derive(Subcommand)]
enum ReceiptCommand {
    /// Record a device's `.mu` receipt file.
    Add {
        /// The device it was received from (its enrolled key must verify it).
        #[arg(long)]
        device: String,
        /// The receipt file.
        file: PathBuf,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?}: one of viewer, operator, admin"))
}

/// Runs `chimera serve …`.
pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = ServeConfig::read(&args.config)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        match args.what {
            None => serve(cfg).await,
            Some(ServeCommand::Token {
                what:
                    TokenCommand::Create {
                        role,
                        name,
                        expires_in,
                        expires_at,
                    },
            }) => {
                let expires_s = expires_at.or(expires_in.map(|d| aegis_ota::maml::now_s() + d));
                create_token(&cfg, role, name, expires_s).await
            }
            Some(ServeCommand::Token {
                what: TokenCommand::Revoke { name },
            }) => revoke_token(&cfg, name).await,
            Some(ServeCommand::Token {
                what: TokenCommand::List { json },
            }) => list_tokens(&cfg, json).await,
            Some(ServeCommand::Receipt {
                what: ReceiptCommand::Add { device, file },
            }) => add_receipt(&cfg, &device, &file).await,
            Some(ServeCommand::Signer { what }) => provision_signer(&cfg, what).await,
            Some(ServeCommand::Device {
                what: DeviceCommand::Unenroll { id },
            }) => unenroll_device(&cfg, &id).await,
        }
    })
}

/// The configured online issuer key, checked as the service checks it at start (None:
/// no `signer`).
async fn load_signer(
    cfg: &ServeConfig,
    trust: Option<&Arc<aegis_ota::trust::TrustMetadata>>,
) -> anyhow::Result<Option<Arc<signer::Signer>>> {
    let (Some(sc), Some(t)) = (&cfg.signer, trust) else {
        return Ok(None);
    };
    let roots = service::read_roots(&cfg.trust_roots)?;
    let (sc, t) = (sc.clone(), t.clone());
    let s = tokio::task::spawn_blocking(move || signer::Signer::load(&sc, &t, &roots)).await??;
    Ok(Some(Arc::new(s)))
}

/// The trust metadata of the configuration, verified (None: no `trust_metadata`).
fn configured_trust(
    cfg: &ServeConfig,
) -> anyhow::Result<Option<Arc<aegis_ota::trust::TrustMetadata>>> {
    Ok(match &cfg.trust_metadata {
        Some(f) => Some(Arc::new(service::load_trust(f, &cfg.trust_roots)?)),
        None => None,
    })
}

/// `chimera serve signer check`.
async fn check_signer(
    cfg: &ServeConfig,
    trust: Option<&Arc<aegis_ota::trust::TrustMetadata>>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.signer.is_some(),
        "the configuration has no `signer:` section"
    );
    if let Some(s) = load_signer(cfg, trust).await? {
        println!(
            "signer ok: issuer {} (may target devices {:?}, groups {:?}), key {}; {}",
            s.issuer().name,
            s.issuer().devices,
            s.issuer().groups,
            s.key_id(),
            s.describe()
        );
    }
    Ok(())
}

/// `chimera serve signer import-seed | generate | check`.
async fn provision_signer(cfg: &ServeConfig, what: SignerCommand) -> anyhow::Result<()> {
    let trust = configured_trust(cfg)?;
    let roots = service::read_roots(&cfg.trust_roots)?;
    let signer_cfg = cfg.signer.clone();
    type Work = Box<
        dyn FnOnce() -> anyhow::Result<(signer::Provisioned, &'static str, Option<PathBuf>)> + Send,
    >;
    let work: Work = match what {
        SignerCommand::Check => return check_signer(cfg, trust.as_ref()).await,
        SignerCommand::ImportSeed { key } => Box::new(move || {
            signer::import_seed(signer_cfg.as_ref(), &key, trust.as_deref(), &roots)
                .map(|d| (d, "signer.import_seed", None))
        }),
        SignerCommand::Generate { out } => Box::new(move || {
            signer::generate(signer_cfg.as_ref(), &out)
                .map(|(d, public)| (d, "signer.generate", Some(public)))
        }),
    };
    // The database first: what is done to the token is audited.
    let store = open(cfg).await?.store;
    let (done, action, public) = tokio::task::spawn_blocking(work).await??;
    store
        .audit(
            "cli".into(),
            action.into(),
            format!(
                "key {} wrapped into {}{}",
                done.key_id,
                done.wrapped_seed_file.display(),
                if done.created_key {
                    " (token key made)"
                } else {
                    ""
                }
            ),
        )
        .await?;
    if done.created_key {
        eprintln!("made the token's AES-256 wrapping key (sensitive, not extractable)");
    }
    println!(
        "{} holds key {}'s seed, encrypted under the token's key",
        done.wrapped_seed_file.display(),
        done.key_id
    );
    match public {
        Some(p) => println!(
            "{} (public): authorise it with `chimera trust add-issuer`",
            p.display()
        ),
        None => eprintln!("delete the key file now: the token holds what signs"),
    }
    Ok(())
}

/// The state, opened.
struct Opened {
    store: Arc<dyn Store>,
    /// Where it is, for the log and the audit (never a password).
    describe: String,
    /// With PostgreSQL: how to connect, and the store itself (the fleet event relay
    /// needs a connection of its own and the pool).
    postgres: Option<(postgres::PgTarget, postgres::PgStore)>,
}

/// Opens the database (migrating it) and brings in the registry and token files: what
/// every command starts with, so the CLI and the service see the same devices.
async fn open(cfg: &ServeConfig) -> anyhow::Result<Opened> {
    crate::create_dir(&cfg.state)?;
    let mut pg = None;
    let (store, describe): (Arc<dyn Store>, String) = match &cfg.database {
        Database::Sqlite(path) => (
            Arc::new(SqliteStore::open(path)?),
            format!("SQLite {}", path.display()),
        ),
        Database::Postgres(source) => {
            let target = source.resolve()?;
            if !target.tls() && !target.is_local() {
                eprintln!(
                    "chimera serve: warning: the connection to {} is not encrypted (give \
                     database.ca_file for TLS)",
                    target.describe()
                );
            }
            let tls = if target.tls() { "TLS" } else { "no TLS" };
            let store = postgres::PgStore::open(&target).await?;
            let describe = format!("PostgreSQL {} ({tls})", target.describe());
            pg = Some((target, store.clone()));
            (Arc::new(store), describe)
        }
    };
    let (devices, groups) = service::read_registry(&cfg.registry)?;
    let (nd, ng) = (devices.len(), groups.len());
    let counts = store.import_registry(devices, groups).await?;
    if counts.kept_out > 0 {
        eprintln!(
            "chimera serve: {}: {} device(s) un-enrolled here are still listed with the key \
             they had: they stay un-enrolled (take them out with `chimera unenroll`, or \
             enrol them again with a new key)",
            cfg.registry.display(),
            counts.kept_out
        );
    }
    if counts.added + counts.updated > 0 {
        store
            .audit(
                "system".into(),
                "registry.import".into(),
                format!(
                    "{}: {nd} devices ({} added, {} updated), {ng} group entries",
                    cfg.registry.display(),
                    counts.added,
                    counts.updated
                ),
            )
            .await?;
    }
    for t in cfg.token_hashes()? {
        // token_hashes() checked the time's format.
        let expires_ms = t
            .expires_at
            .as_deref()
            .and_then(aegis_ota::maml::parse_time)
            .map(|s| s * 1000);
        if store
            .create_token(
                t.name.clone(),
                t.role,
                t.sha256.to_ascii_lowercase(),
                expires_ms,
            )
            .await?
        {
            store
                .audit(
                    "system".into(),
                    "token.import".into(),
                    format!("{} ({})", t.name, t.role.as_str()),
                )
                .await?;
        }
    }
    Ok(Opened {
        store,
        describe,
        postgres: pg,
    })
}

async fn create_token(
    cfg: &ServeConfig,
    role: Role,
    name: String,
    expires_s: Option<i64>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        !name.is_empty() && name.len() <= 64 && !name.chars().any(char::is_control),
        "--name: 1 to 64 characters, no control characters"
    );
    let store = open(cfg).await?.store;
    let (token, hash) = service::new_token()?;
    let expires_ms = expires_s.map(|s| s.saturating_mul(1000));
    anyhow::ensure!(
        store
            .create_token(name.clone(), role, hash, expires_ms)
            .await?,
        "a token named {name:?} exists already"
    );
    let until = expires_ms.map_or("no expiry".to_string(), |ms| {
        format!("expires {}", auth::rfc3339_ms(ms))
    });
    store
        .audit(
            "cli".into(),
            "token.create".into(),
            format!("{name} ({}, {until})", role.as_str()),
        )
        .await?;
    eprintln!(
        "token {name:?} ({}, {until}): shown once, store it now",
        role.as_str()
    );
    println!("{token}");
    Ok(())
}

async fn revoke_token(cfg: &ServeConfig, name: String) -> anyhow::Result<()> {
    let store = open(cfg).await?.store;
    anyhow::ensure!(
        store.revoke_token(name.clone()).await?,
        "no token named {name:?} (`chimera serve token list` shows them)"
    );
    store
        .audit("cli".into(), "token.revoke".into(), name.clone())
        .await?;
    eprintln!("token {name:?} revoked");
    Ok(())
}

async fn list_tokens(cfg: &ServeConfig, json: bool) -> anyhow::Result<()> {
    let store = open(cfg).await?.store;
    let now = now_ms();
    let rows: Vec<serde_json::Value> = store
        .tokens()
        .await?
        .into_iter()
        .map(|t| {
            serde_json::json!({
                "name": t.name,
                "role": t.role.as_str(),
                "created_at": auth::rfc3339_ms(t.created_at),
                "expires_at": t.expires_at.map(auth::rfc3339_ms),
                "revoked_at": t.revoked_at.map(auth::rfc3339_ms),
                "state": auth::token_state(&t, now).as_str(),
            })
        })
        .collect();
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<24} {:<8} {:<20} {:<20} STATE",
        "NAME", "ROLE", "CREATED", "EXPIRES"
    );
    for r in rows {
        let text = |k: &str| r[k].as_str().unwrap_or("-").to_string();
        let state = match r["revoked_at"].as_str() {
            Some(at) => format!("revoked {at}"),
            None => text("state"),
        };
        println!(
            "{:<24} {:<8} {:<20} {:<20} {state}",
            text("name"),
            text("role"),
            text("created_at"),
            text("expires_at"),
        );
    }
    Ok(())
}

/// `chimera serve device unenroll`.
async fn unenroll_device(cfg: &ServeConfig, id: &str) -> anyhow::Result<()> {
    let store = open(cfg).await?.store;
    match service::unenroll(&*store, id, "cli".into()).await? {
        store::Unenrolment::Done(u) => {
            println!(
                "{id} un-enrolled: left groups [{}]; unenrolled in rollouts [{}]",
                u.groups.join(", "),
                u.rollouts.join(", ")
            );
            Ok(())
        }
        store::Unenrolment::Already(at) => anyhow::bail!(
            "{id:?} was un-enrolled already, at {}",
            auth::rfc3339_ms(at)
        ),
        store::Unenrolment::Unknown => anyhow::bail!("no device {id:?} in the service"),
    }
}

async fn add_receipt(
    cfg: &ServeConfig,
    device: &str,
    file: &std::path::Path,
) -> anyhow::Result<()> {
    let store = open(cfg).await?.store;
    let text = crate::read_file(file)?;
    let r = service::ingest_receipt(&*store, device, &text).await?;
    match r.error {
        None => println!("receipt {} from {device}: verified", r.id),
        Some(e) => anyhow::bail!(
            "receipt {} from {device} recorded as NOT verified: {e}",
            r.id
        ),
    }
    Ok(())
}

/// SQLite mode runs one replica: an exclusive `flock(2)` on `DATABASE.serve-lock`, held while
/// the service runs, makes a second `chimera serve` on the same database refuse to start. The
/// kernel drops it when the process ends, however it ends. (The CLI's `token create` and
/// `receipt add` do not take it: SQLite serialises their writes.)
struct ReplicaLock {
    _file: std::fs::File,
}

fn lock_replica(database: &std::path::Path) -> anyhow::Result<ReplicaLock> {
    use std::os::fd::AsRawFd as _;
    let path = PathBuf::from(format!("{}.serve-lock", database.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?;
    // SAFETY: flock(2) on a descriptor `file` owns and keeps open; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        anyhow::ensure!(
            e.raw_os_error() != Some(libc::EWOULDBLOCK),
            "another chimera serve runs on {} ({} is locked): with SQLite the service runs \
             as one replica",
            database.display(),
            path.display()
        );
        anyhow::bail!("cannot lock {}: {e}", path.display());
    }
    Ok(ReplicaLock { _file: file })
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    let Opened {
        store,
        describe: state,
        postgres: pg,
    } = open(&cfg).await?;
    // SQLite: one replica, enforced. PostgreSQL: as many as wanted, no lock.
    let _replica = match &cfg.database {
        Database::Sqlite(path) => Some(lock_replica(path)?),
        Database::Postgres(_) => None,
    };
    let replica = cfg.replica_name();
    // The broker's CA, client certificate and password are read now: a bad file stops the
    // start, naming the setting.
    let broker = cfg
        .broker
        .as_ref()
        .map(|b| b.resolve(&crate::broker::SERVE_NAMES))
        .transpose()?;
    let trust = configured_trust(&cfg)?;
    // The online issuer key: checked against the trust metadata (never a root key).
    let signer = load_signer(&cfg, trust.as_ref()).await?;
    // JWT callers get 503 until the first JWKS fetch succeeds; API tokens work at once, so
    // a provider outage at start does not stop the service.
    let oidc = match &cfg.oidc {
        Some(o) => {
            let jwks = Arc::new(auth::jwks::Jwks::new(o)?);
            jwks.spawn_refresher();
            Some(Arc::new(auth::oidc::OidcVerifier::new(o, jwks)))
        }
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr()?;
    store
        .audit(
            "system".into(),
            "service.start".into(),
            format!(
                "listening on {addr}; state {state}; trust metadata {}; replica {}; broker {}; \
                 oidc issuer {}; signer {}",
                trust
                    .as_ref()
                    .map_or("none".into(), |t| format!("version {}", t.version)),
                replica,
                broker.as_ref().map_or("none".into(), |b| b.describe()),
                oidc.as_ref().map_or("none", |o| o.issuer()),
                signer.as_ref().map_or("none".into(), |s| format!(
                    "issuer {} key {} ({})",
                    s.issuer().name,
                    s.key_id(),
                    s.describe()
                ))
            ),
        )
        .await?;
    // Every replica's events in every replica's stream (PostgreSQL); SQLite is one replica.
    let events = match &pg {
        Some((target, pg_store)) => postgres_events::fleet_bus(target, pg_store, &replica).await,
        None => events::Bus::new(events::CAPACITY),
    };
    let engine_wake = Arc::new(tokio::sync::Notify::new());
    let publisher = broker.map(|broker| {
        Arc::new(publisher::Publisher::new(
            broker,
            cfg.registry.clone(),
            cfg.state.clone(),
        ))
    });
    let mut ingest_counters = None;
    if let Some(publisher) = &publisher {
        let counters = Arc::new(ingest::IngestCounters::default());
        let ingest = Arc::new(ingest::Ingest {
            store: store.clone(),
            events: events.clone(),
            counters: counters.clone(),
            publisher: publisher.clone(),
            engine: engine_wake.clone(),
            reconcile_cooldown_ms: cfg.rollouts.reconcile_cooldown_s as i64 * 1000,
            mirrors: Default::default(),
            log: Default::default(),
        });
        ingest.spawn(
            &publisher.broker,
            &format!("chimera-serve-{replica}"),
            &cfg.ingest,
        )?;
        ingest_counters = Some(counters);
        Arc::new(rollout::Engine {
            store: store.clone(),
            publisher: publisher.clone(),
            events: events.clone(),
            replica: replica.clone(),
            lease_ms: cfg.rollouts.lease_s as i64 * 1000,
            tick: std::time::Duration::from_millis(cfg.rollouts.tick_ms),
            wake: engine_wake.clone(),
            log: Default::default(),
        })
        .spawn();
    }
    let app = api::router(
        api::AppState {
            store,
            trust,
            publisher,
            registry: cfg.registry.clone(),
            events: events.clone(),
            engine: engine_wake,
            ingest: ingest_counters,
            oidc,
            signer,
        },
        cfg.max_body_bytes,
    );
    // Tests and scripts read the address from this line (listen: …:0 picks a free port).
    eprintln!("chimera serve: state in {state}");
    println!("chimera serve: listening on http://{addr}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    let stopping = events.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown().await;
            // Event streams never end by themselves; the graceful shutdown waits for them.
            stopping.close();
        })
        .await?;
    Ok(())
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
