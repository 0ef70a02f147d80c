//! `serve.yaml`: the service's configuration, its public contract. Unknown keys are errors
//! (a misspelt key must not silently fall back to a default). There is deliberately no key
//! for a root key: the service verifies with public keys only, and the one secret it may
//! hold is an *online issuer* key (`signer:`), which it refuses to load when the trust
//! metadata names it as a root key or does not list it as an issuer (docs/chimera-serve.md,
//! "Online signing").
//!
//! Relative paths are taken from the directory of the config file, so a gateway directory
//! can be moved whole.
//!
//! `database:` picks the state backend, the one place it is chosen: a SQLite file path (one
//! replica), or PostgreSQL (several replicas) as a `postgres://` URL or a section naming
//! where the URL and the password come from (files or environment variables, as Kubernetes
//! secrets are mounted). A password is never printed: errors and logs describe the database
//! as `postgres://USER@HOST:PORT/DBNAME`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::store::Role;
use crate::broker::BrokerSettings;

/// The request body limit when `max_body_bytes` is not given: a workflow document at the
/// 128 KiB limit, JSON-escaped, with room to spare.
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 512 * 1024;

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

/// `serve.yaml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServeConfig {
    /// Where the HTTP API listens (`127.0.0.1:8080`; port 0 = any free port, printed at
    /// start).
    pub(crate) listen: SocketAddr,
    /// The state: a SQLite file (created, with its schema, on first start), or PostgreSQL
    /// (`postgres://…` or a [`PostgresSource`] section).
    pub(crate) database: Database,
    /// The device registry `chimera enroll` writes (`devices.json`), imported on every
    /// start (idempotent). A missing file is an empty registry.
    pub(crate) registry: PathBuf,
    /// The gateway's state directory (created), shared with the CLI's `--state`.
    pub(crate) state: PathBuf,
    /// Optional: API token hashes to import on start (YAML list of `{name, role, sha256}`),
    /// for deployments that provision tokens as a secret file; `chimera serve token create`
    /// is the other way. Never the tokens themselves.
    #[serde(default)]
    pub(crate) tokens: Option<PathBuf>,
    /// Optional: the signed trust metadata workflows are checked against on upload
    /// (`chimera root sign-trust` output). Without it, uploads are refused.
    #[serde(default)]
    pub(crate) trust_metadata: Option<PathBuf>,
    /// Root *public* key files that must have signed `trust_metadata`.
    #[serde(default)]
    pub(crate) trust_roots: Vec<PathBuf>,
    /// Optional: the MQTT 5 broker uploaded workflows are published to and receipts are
    /// read from: a URL (`mqtt://HOST:PORT`, `mqtts://HOST:PORT`, as `chimera publish
    /// --broker`) or a section with TLS and credentials ([`BrokerSettings`]). Without it,
    /// publishing is refused.
    #[serde(default, deserialize_with = "crate::broker::string_or_section")]
    pub(crate) broker: Option<BrokerSettings>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: usize,
    /// Optional: this replica's name, unique among the replicas of one database: its MQTT
    /// client id is `chimera-serve-NAME` and its rollout claims are held under it. Default:
    /// the host name, the process id and a random suffix.
    #[serde(default)]
    pub(crate) replica: Option<String>,
    /// How receipts and status are taken from the broker (with `broker`).
    #[serde(default)]
    pub(crate) ingest: IngestConfig,
    /// The rollout engine (with `broker`).
    #[serde(default)]
    pub(crate) rollouts: RolloutConfig,
    /// Optional: accept OIDC/OAuth2 bearer tokens (JWTs) of this provider beside the API
    /// tokens.
    #[serde(default)]
    pub(crate) oidc: Option<OidcConfig>,
    /// Optional: the online issuer key `POST /api/v1/workflows/sign` signs with (needs
    /// `trust_metadata`, which must list it as an issuer). Without it, signing is refused.
    #[serde(default)]
    pub(crate) signer: Option<SignerConfig>,
}

/// `signer:` — where the online issuer key is. Never the offline root key: the service
/// refuses to start when the key is one of the trust metadata's root keys (or one of
/// `trust_roots`), or is not a non-revoked issuer of the trust metadata.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum SignerConfig {
    /// `kind: file` — an issuer secret key file (`chimera keygen`): the key is in the
    /// service's memory while it runs.
    File(FileSignerConfig),
    /// `kind: pkcs11` — the ML-DSA-65 seed encrypted (AES-256-GCM) under an AES key that a
    /// PKCS#11 token holds and never lets out; decrypted in memory for each signature only.
    Pkcs11(Pkcs11SignerConfig),
}

/// `signer: {kind: file, …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSignerConfig {
    /// The issuer's secret key file (`chimera keygen --out gw` writes `gw.key`): owned by
    /// the service's user, mode 0600.
    pub(crate) key_file: PathBuf,
}

/// `signer: {kind: pkcs11, …}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Pkcs11SignerConfig {
    /// The PKCS#11 module (`/usr/lib/softhsm/libsofthsm2.so`, a vendor's HSM library).
    pub(crate) module: PathBuf,
    /// The label of the token that holds the wrapping key.
    pub(crate) token_label: String,
    /// A file holding the token's user PIN (owned by the service's user, mode 0600; one
    /// trailing newline is ignored). There is no key for the PIN itself.
    pub(crate) pin_file: PathBuf,
    /// The label (`CKA_LABEL`) of the token's AES-256 key that encrypts the seed: secret,
    /// sensitive and not extractable (`chimera serve signer import-seed` or `generate`
    /// makes it when the token has none).
    pub(crate) key_label: String,
    /// The issuer key's seed encrypted under that key (`chimera serve signer import-seed`
    /// or `generate` writes it): ciphertext, useless without the token.
    pub(crate) wrapped_seed_file: PathBuf,
}

/// The `leeway_s` when not given: clock skew allowed on `exp` and `nbf`.
pub(crate) const DEFAULT_LEEWAY_S: u64 = 30;
/// Largest `leeway_s` accepted: a token expired for longer than this is expired.
pub(crate) const MAX_LEEWAY_S: u64 = 300;
/// The `jwks_refresh_s` when not given.
pub(crate) const DEFAULT_JWKS_REFRESH_S: u64 = 900;
/// The `jwks_min_refresh_s` when not given (jwt-authorizer's choice too).
pub(crate) const DEFAULT_JWKS_MIN_REFRESH_S: u64 = 10;

fn default_leeway_s() -> u64 {
    DEFAULT_LEEWAY_S
}

fn default_jwks_refresh_s() -> u64 {
    DEFAULT_JWKS_REFRESH_S
}

fn default_jwks_min_refresh_s() -> u64 {
    DEFAULT_JWKS_MIN_REFRESH_S
}

fn default_roles_claim() -> String {
    "roles".into()
}

fn default_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]
}

/// Claim values that name a role by its own word: `viewer`, `operator`, `admin`.
fn default_role_map() -> BTreeMap<String, Role> {
    [Role::Viewer, Role::Operator, Role::Admin]
        .into_iter()
        .map(|r| (r.as_str().to_string(), r))
        .collect()
}

/// A JWT signature algorithm the service may accept: asymmetric ones only. `none` and the
/// HMAC algorithms (`HS256`…) cannot be written here at all, so a public key can never be
/// used as an HMAC secret (algorithm confusion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub(crate) enum JwtAlgorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

/// `oidc:` — the OpenID Connect provider whose JWTs are bearer tokens here (Cognito,
/// Keycloak, Entra ID, Auth0, Dex, …). Only signed JWTs are accepted: opaque access tokens
/// would need RFC 7662 introspection, which is not built.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OidcConfig {
    /// The provider's issuer URL, exactly as its tokens' `iss` claim says it (and as its
    /// discovery document's `issuer` says it). `https://`, or `http://` on a loopback host.
    pub(crate) issuer: String,
    /// This service's audience: a token's `aud` (a string or a list) must contain it; with
    /// `audience_claim: client_id`, its `client_id` must be it.
    pub(crate) audience: String,
    /// Where a token names its audience: `aud` (ID tokens, and access tokens of most
    /// providers), or `client_id` (AWS Cognito's access tokens, which carry no `aud`: the
    /// app client's id must equal `audience`, and `token_use`, when present, must be
    /// `access`). Default `aud`.
    #[serde(default)]
    pub(crate) audience_claim: AudienceClaim,
    /// The JWKS URL. Default: the `jwks_uri` of `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub(crate) jwks_uri: Option<String>,
    /// The claim that carries the caller's roles or groups (a string or a list of
    /// strings): a top-level claim name (`roles`, `groups`, `cognito:groups`,
    /// `https://example.com/roles`), or a JSON pointer when it starts with `/`
    /// (`/realm_access/roles`).
    #[serde(default = "default_roles_claim")]
    pub(crate) roles_claim: String,
    /// Claim value → role. A caller gets the highest role any of its values maps to;
    /// values not listed grant nothing. Default: `viewer`, `operator` and `admin` map to
    /// themselves.
    #[serde(default = "default_role_map")]
    pub(crate) roles: BTreeMap<String, Role>,
    /// Signature algorithms accepted (default `[RS256, ES256]`); asymmetric ones only.
    #[serde(default = "default_algorithms")]
    pub(crate) algorithms: Vec<JwtAlgorithm>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 30, at most 300).
    #[serde(default = "default_leeway_s")]
    pub(crate) leeway_s: u64,
    /// PEM file of the certificate authorities an `https` issuer or JWKS URL may chain to.
    /// Default: Mozilla's root programme (compiled in).
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// How often the JWKS is fetched again, in seconds (default 900, at least 60).
    #[serde(default = "default_jwks_refresh_s")]
    pub(crate) jwks_refresh_s: u64,
    /// The least time between two JWKS fetches, in seconds (default 10, at least 1): a
    /// token naming an unknown `kid` fetches the JWKS again at most this often, so forged
    /// key ids cannot make the service hammer the provider.
    #[serde(default = "default_jwks_min_refresh_s")]
    pub(crate) jwks_min_refresh_s: u64,
}

/// The claim a token's audience is read from (`oidc.audience_claim`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AudienceClaim {
    /// `aud`, a string or a list that must contain the audience (RFC 7519).
    #[default]
    Aud,
    /// `client_id`, a string equal to the audience (RFC 9068, AWS Cognito access tokens);
    /// `token_use`, when present, must be `access`.
    ClientId,
}

/// Checks an issuer or JWKS URL: `https`, or `http` to a loopback host (a provider on the
/// same machine, or a test's), no user information. Returns the reason it is refused.
pub(crate) fn check_provider_url(url: &str) -> Result<(), String> {
    let uri: axum::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?}: not an absolute URL"))?;
    if authority.as_str().contains('@') {
        return Err(format!("{url:?}: carries user information"));
    }
    let host =
        aegis_config::Host::parse(authority.host()).map_err(|e| format!("{url:?}: host: {e}"))?;
    let loopback = match &host {
        aegis_config::Host::Ipv4(a) => a.is_loopback(),
        aegis_config::Host::Ipv6(a) => a.is_loopback(),
        aegis_config::Host::Domain(d) => d == "localhost",
    };
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        Some("http") => Err(format!(
            "{url:?}: plain http is accepted for loopback hosts only; use https"
        )),
        _ => Err(format!("{url:?}: not an http(s) URL")),
    }
}

impl OidcConfig {
    /// Checks what serde cannot; `what` names the file in errors.
    fn check(&self, what: &str) -> anyhow::Result<()> {
        let field = |f: &str, m: String| anyhow::anyhow!("{what}: oidc.{f}: {m}");
        check_provider_url(&self.issuer).map_err(|m| field("issuer", m))?;
        if let Some(u) = &self.jwks_uri {
            check_provider_url(u).map_err(|m| field("jwks_uri", m))?;
        }
        anyhow::ensure!(
            !self.audience.is_empty(),
            "{what}: oidc.audience: must not be empty"
        );
        anyhow::ensure!(
            !self.roles_claim.is_empty() && self.roles_claim != "/",
            "{what}: oidc.roles_claim: must name a claim"
        );
        anyhow::ensure!(
            !self.roles.is_empty(),
            "{what}: oidc.roles: map at least one claim value to a role"
        );
        anyhow::ensure!(
            !self.algorithms.is_empty(),
            "{what}: oidc.algorithms: name at least one (RS256, ES256, …)"
        );
        anyhow::ensure!(
            self.leeway_s <= MAX_LEEWAY_S,
            "{what}: oidc.leeway_s: at most {MAX_LEEWAY_S}"
        );
        anyhow::ensure!(
            self.jwks_refresh_s >= 60,
            "{what}: oidc.jwks_refresh_s: at least 60"
        );
        anyhow::ensure!(
            (1..=self.jwks_refresh_s).contains(&self.jwks_min_refresh_s),
            "{what}: oidc.jwks_min_refresh_s: at least 1 and at most jwks_refresh_s"
        );
        Ok(())
    }
}

/// `ingest:` — receipts and status from the broker through MQTT 5 shared subscriptions.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestConfig {
    /// The shared subscription group: every replica of one gateway uses the same one, and
    /// the broker gives each message to one of them (`$share/GROUP/aegis/v1/+/receipts`).
    #[serde(default = "default_share_group")]
    pub(crate) share_group: String,
    /// Messages waiting to be processed, at most; when full, the ingest stops reading from
    /// the broker until there is room (the broker queues meanwhile).
    #[serde(default = "default_inbox")]
    pub(crate) inbox: usize,
    /// The retained statuses read at start (and after a reconnect) are complete once none
    /// arrived for this long (ms).
    #[serde(default = "default_snapshot_quiet_ms")]
    pub(crate) snapshot_quiet_ms: u64,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            share_group: default_share_group(),
            inbox: default_inbox(),
            snapshot_quiet_ms: default_snapshot_quiet_ms(),
        }
    }
}

fn default_share_group() -> String {
    "chimera".into()
}

fn default_inbox() -> usize {
    1024
}

fn default_snapshot_quiet_ms() -> u64 {
    1000
}

/// `rollouts:` — the engine that publishes steps, judges answers and rolls back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolloutConfig {
    /// How often the engine looks at its rollouts (ms; receipts wake it sooner).
    #[serde(default = "default_tick_ms")]
    pub(crate) tick_ms: u64,
    /// How long a claim on a rollout lasts without renewal (s): another replica takes the
    /// rollout over that long after its engine stopped.
    #[serde(default = "default_lease_s")]
    pub(crate) lease_s: u64,
    /// A device online but running something other than its desired document gets it again
    /// at most this often (s); one that comes back online gets it at once.
    #[serde(default = "default_reconcile_cooldown_s")]
    pub(crate) reconcile_cooldown_s: u64,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            tick_ms: default_tick_ms(),
            lease_s: default_lease_s(),
            reconcile_cooldown_s: default_reconcile_cooldown_s(),
        }
    }
}

fn default_tick_ms() -> u64 {
    1000
}

fn default_lease_s() -> u64 {
    15
}

fn default_reconcile_cooldown_s() -> u64 {
    30
}

/// Where the service keeps its state (`database:`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Database {
    /// A SQLite file: one replica (`chimera serve` locks it).
    Sqlite(PathBuf),
    /// A PostgreSQL database: any number of replicas.
    Postgres(Box<PostgresSource>),
}

/// The connection pool size when `pool_size` is not given: a few requests in flight per
/// worker thread, well under PostgreSQL's default `max_connections` (100) for a handful of
/// replicas.
pub(crate) const DEFAULT_POOL_SIZE: usize = 8;

fn default_pool_size() -> usize {
    DEFAULT_POOL_SIZE
}

/// `database:` as a PostgreSQL section. The URL comes from exactly one of `url`,
/// `url_file`, `url_env`; the password, if not in the URL, from at most one of
/// `password_file`, `password_env`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PostgresSource {
    /// `postgres://USER@HOST:PORT/DBNAME?OPTIONS` (the libpq URL form; options as
    /// tokio-postgres reads them: `sslmode`, `connect_timeout`, `application_name`, …).
    #[serde(default)]
    pub(crate) url: Option<String>,
    /// A file holding the URL (a mounted secret; surrounding whitespace is ignored).
    #[serde(default)]
    pub(crate) url_file: Option<PathBuf>,
    /// An environment variable holding the URL.
    #[serde(default)]
    pub(crate) url_env: Option<String>,
    /// A file holding the password (a mounted secret; a trailing newline is ignored).
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[serde(default)]
    pub(crate) password_env: Option<String>,
    /// PEM file of the CA(s) the server's certificate must chain to. With it the connection
    /// is TLS, always, and the certificate and host name are verified (libpq's
    /// `verify-full`); without it the connection is not encrypted.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// Most connections this replica opens (opened on demand, reused).
    #[serde(default = "default_pool_size")]
    pub(crate) pool_size: usize,
}

/// Never prints the URL: it may carry a password.
impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("url", &self.url.as_ref().map(|_| "(not shown)"))
            .field("url_file", &self.url_file)
            .field("url_env", &self.url_env)
            .field("password_file", &self.password_file)
            .field("password_env", &self.password_env)
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

/// Whether `s` is a PostgreSQL URL (`postgres://` or `postgresql://`).
pub(crate) fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

impl<'de> Deserialize<'de> for Database {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Database, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Database;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a SQLite file path, a postgres:// URL, or a PostgreSQL section \
                     (url/url_file/url_env, password_file/password_env, ca_file, pool_size)",
                )
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Database, E> {
                if is_postgres_url(s) {
                    return Ok(Database::Postgres(Box::new(PostgresSource {
                        url: Some(s.to_string()),
                        pool_size: DEFAULT_POOL_SIZE,
                        ..Default::default()
                    })));
                }
                if let Some((scheme, _)) = s.split_once("://") {
                    // Not echoed whole: a URL may carry a password.
                    return Err(E::custom(format!(
                        "{scheme}:// is not a database this service runs on: a SQLite file \
                         path or a postgres:// URL"
                    )));
                }
                if s.is_empty() {
                    return Err(E::custom("empty: a SQLite file path or a postgres:// URL"));
                }
                Ok(Database::Sqlite(PathBuf::from(s)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Database, A::Error> {
                let section =
                    PostgresSource::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(Database::Postgres(Box::new(section)))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl PostgresSource {
    /// Checks what can be checked without reading secrets: one source of the URL, at most
    /// one of the password, a URL given inline is a PostgreSQL URL, a sane pool size.
    fn check(&self) -> anyhow::Result<()> {
        let urls = [
            self.url.is_some(),
            self.url_file.is_some(),
            self.url_env.is_some(),
        ];
        anyhow::ensure!(
            urls.iter().filter(|x| **x).count() == 1,
            "database: exactly one of url, url_file, url_env"
        );
        anyhow::ensure!(
            !(self.password_file.is_some() && self.password_env.is_some()),
            "database: at most one of password_file, password_env"
        );
        anyhow::ensure!(
            self.url.as_deref().is_none_or(is_postgres_url),
            "database: url: not a postgres:// or postgresql:// URL"
        );
        anyhow::ensure!(
            (1..=1024).contains(&self.pool_size),
            "database: pool_size: 1 to 1024"
        );
        Ok(())
    }

    /// Reads the URL and the password from where the section says (files, environment),
    /// and builds what the store connects with. Errors name the key and the file or
    /// variable, never the URL or the password.
    pub(crate) fn resolve(&self) -> anyhow::Result<super::postgres::PgTarget> {
        self.check()?;
        let read_file = |key: &str, p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("database: {key} {}: {e}", p.display()))
        };
        let read_env = |key: &str, name: &str| {
            std::env::var(name).map_err(|e| anyhow::anyhow!("database: {key} {name}: {e}"))
        };
        let (url, from) = match (&self.url, &self.url_file, &self.url_env) {
            (Some(u), _, _) => (u.clone(), "url".to_string()),
            (_, Some(p), _) => (
                read_file("url_file", p)?.trim().to_string(),
                format!("url_file {}", p.display()),
            ),
            (_, _, Some(v)) => (
                read_env("url_env", v)?.trim().to_string(),
                format!("url_env {v}"),
            ),
            _ => unreachable!("check() found exactly one"),
        };
        anyhow::ensure!(
            is_postgres_url(&url),
            "database: {from}: not a postgres:// or postgresql:// URL"
        );
        let password = match (&self.password_file, &self.password_env) {
            (Some(p), _) => Some((
                read_file("password_file", p)?,
                format!("password_file {}", p.display()),
            )),
            (_, Some(v)) => Some((read_env("password_env", v)?, format!("password_env {v}"))),
            _ => None,
        }
        .map(|(pw, from)| {
            // A file written by `echo` or a secret editor ends in a newline; the password
            // does not.
            let pw = pw.trim_end_matches(['\n', '\r']).to_string();
            anyhow::ensure!(!pw.is_empty(), "database: {from}: empty");
            Ok(pw)
        })
        .transpose()?;
        super::postgres::PgTarget::new(
            &url,
            &from,
            password,
            self.ca_file.as_deref(),
            self.pool_size,
        )
    }
}

/// One entry of the `tokens` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenHash {
    /// Token name (unique).
    pub(crate) name: String,
    /// `viewer`, `operator` or `admin`.
    pub(crate) role: Role,
    /// Hex SHA-256 of the token.
    pub(crate) sha256: String,
    /// Optional: when it stops working (RFC 3339 UTC, `2027-01-31T00:00:00Z`).
    #[serde(default)]
    pub(crate) expires_at: Option<String>,
}

/// Parses YAML through the workspace's hardened reader (no anchors/aliases, depth limits)
/// into `T`; errors name the file and the field.
fn parse_yaml<T: for<'de> Deserialize<'de>>(path: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let origin = path.display().to_string();
    let value = aegis_config::yaml_value(&text, &origin).map_err(|e| anyhow::anyhow!("{e}"))?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = e.path().to_string();
        anyhow::anyhow!("{origin}: {field}: {}", e.inner())
    })
}

impl ServeConfig {
    /// Reads `path`; relative paths in it become relative to its directory.
    pub(crate) fn read(path: &Path) -> anyhow::Result<ServeConfig> {
        let mut c: ServeConfig = parse_yaml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        match &mut c.database {
            Database::Sqlite(p) => abs(p),
            Database::Postgres(pg) => {
                pg.check()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                pg.url_file.iter_mut().for_each(abs);
                pg.password_file.iter_mut().for_each(abs);
                pg.ca_file.iter_mut().for_each(abs);
            }
        }
        abs(&mut c.registry);
        abs(&mut c.state);
        c.tokens.iter_mut().for_each(abs);
        c.trust_metadata.iter_mut().for_each(abs);
        c.trust_roots.iter_mut().for_each(abs);
        if let Some(b) = &mut c.broker {
            b.relative_to(base);
            b.check(&crate::broker::SERVE_NAMES)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        }
        if let Some(o) = &mut c.oidc {
            o.ca_file.iter_mut().for_each(abs);
            o.check(&path.display().to_string())?;
        }
        match &mut c.signer {
            None => {}
            Some(SignerConfig::File(f)) => abs(&mut f.key_file),
            Some(SignerConfig::Pkcs11(p)) => {
                abs(&mut p.module);
                abs(&mut p.pin_file);
                abs(&mut p.wrapped_seed_file);
                for (field, v) in [("token_label", &p.token_label), ("key_label", &p.key_label)] {
                    anyhow::ensure!(
                        !v.is_empty() && v.len() <= 32 && !v.chars().any(char::is_control),
                        "{}: signer.{field}: 1 to 32 characters, no control characters \
                         (a token label is at most 32 bytes)",
                        path.display()
                    );
                }
            }
        }
        anyhow::ensure!(
            c.signer.is_none() || c.trust_metadata.is_some(),
            "{}: signer needs trust_metadata (the online key must be an issuer it lists)",
            path.display()
        );
        anyhow::ensure!(
            c.max_body_bytes >= 1024,
            "{}: max_body_bytes: at least 1024",
            path.display()
        );
        anyhow::ensure!(
            c.trust_metadata.is_none() || !c.trust_roots.is_empty(),
            "{}: trust_metadata needs trust_roots (the root public keys that signed it)",
            path.display()
        );
        c.check_mqtt_settings()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// The ingest's and the engine's settings, within the bounds that keep them working.
    fn check_mqtt_settings(&self) -> anyhow::Result<()> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        };
        anyhow::ensure!(
            name_ok(&self.ingest.share_group),
            "ingest.share_group: 1 to 64 of A-Z a-z 0-9 - _ ."
        );
        if let Some(r) = &self.replica {
            anyhow::ensure!(name_ok(r), "replica: 1 to 64 of A-Z a-z 0-9 - _ .");
        }
        anyhow::ensure!(
            (1..=65_536).contains(&self.ingest.inbox),
            "ingest.inbox: 1 to 65536"
        );
        anyhow::ensure!(
            (100..=60_000).contains(&self.ingest.snapshot_quiet_ms),
            "ingest.snapshot_quiet_ms: 100 to 60000"
        );
        let r = &self.rollouts;
        anyhow::ensure!(
            (50..=60_000).contains(&r.tick_ms),
            "rollouts.tick_ms: 50 to 60000"
        );
        anyhow::ensure!(
            r.lease_s >= 1 && r.lease_s <= 3600 && r.lease_s * 1000 >= 3 * r.tick_ms,
            "rollouts.lease_s: 1 to 3600, and at least 3 ticks (rollouts.tick_ms)"
        );
        anyhow::ensure!(
            (1..=86_400).contains(&r.reconcile_cooldown_s),
            "rollouts.reconcile_cooldown_s: 1 to 86400"
        );
        Ok(())
    }

    /// This replica's name (`replica`, or host-pid-random).
    pub(crate) fn replica_name(&self) -> String {
        if let Some(r) = &self.replica {
            return r.clone();
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| {
                h.trim()
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .take(32)
                    .collect::<String>()
            })
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        let mut b = [0u8; 3];
        let _ = getrandom::fill(&mut b);
        format!(
            "{host}-{}-{:02x}{:02x}{:02x}",
            std::process::id(),
            b[0],
            b[1],
            b[2]
        )
    }

    /// The `tokens` file's entries (none without one).
    pub(crate) fn token_hashes(&self) -> anyhow::Result<Vec<TokenHash>> {
        let Some(p) = &self.tokens else {
            return Ok(vec![]);
        };
        let list: Vec<TokenHash> = parse_yaml(p)?;
        for t in &list {
            anyhow::ensure!(
                t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit()),
                "{}: token {:?}: sha256 must be 64 hex digits",
                p.display(),
                t.name
            );
            if let Some(at) = &t.expires_at {
                anyhow::ensure!(
                    aegis_ota::maml::parse_time(at).is_some(),
                    "{}: token {:?}: expires_at {at:?} is not RFC 3339 UTC",
                    p.display(),
                    t.name
                );
            }
        }
        Ok(list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("serve.yaml");
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "listen: 127.0.0.1:0\ndatabase: chimera.db\nregistry: devices.json\nstate: st\n",
        );
        let c = ServeConfig::read(&p).unwrap();
        assert_eq!(c.database, Database::Sqlite(dir.path().join("chimera.db")));
        assert_eq!(c.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert!(c.token_hashes().unwrap().is_empty());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "listen: 127.0.0.1:0\ndatabase: a.db\nregistry: r.json\nstate: s\nroot_key: root.key\n",
        );
        let e = ServeConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("root_key"), "{e}");
    }

    #[test]
    fn trust_metadata_needs_roots() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            "listen: 127.0.0.1:0\ndatabase: a.db\nregistry: r.json\nstate: s\ntrust_metadata: t.json\n",
        );
        let e = ServeConfig::read(&p).unwrap_err().to_string();
        assert!(e.contains("trust_roots"), "{e}");
    }

    /// A config less its `database:`.
    const NO_DATABASE: &str = "listen: 127.0.0.1:0\nregistry: r.json\nstate: s\n";

    fn database(dir: &Path, yaml: &str) -> anyhow::Result<Database> {
        Ok(ServeConfig::read(&write(dir, &format!("{NO_DATABASE}{yaml}")))?.database)
    }

    fn section(dir: &Path, yaml: &str) -> PostgresSource {
        match database(dir, yaml).unwrap() {
            Database::Postgres(p) => *p,
            other => panic!("{yaml}: {other:?}"),
        }
    }

    #[test]
    fn database_is_a_sqlite_path_or_postgres() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        assert_eq!(
            database(d, "database: /var/lib/chimera.db\n").unwrap(),
            Database::Sqlite("/var/lib/chimera.db".into())
        );
        for url in [
            "postgres://gw@db/chimera",
            "postgresql://gw@db:5433/chimera",
        ] {
            let p = section(d, &format!("database: {url}\n"));
            assert_eq!(p.url.as_deref(), Some(url));
            assert_eq!(p.pool_size, DEFAULT_POOL_SIZE);
        }
        // The section: files relative to the config file, like every path.
        let p = section(
            d,
            "database:\n  url_file: secrets/url\n  password_file: secrets/pw\n  \
             ca_file: /etc/ca.pem\n  pool_size: 3\n",
        );
        assert_eq!(p.url_file, Some(d.join("secrets/url")));
        assert_eq!(p.password_file, Some(d.join("secrets/pw")));
        assert_eq!(p.ca_file, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(p.pool_size, 3);

        let refused = |yaml: &str| database(d, yaml).unwrap_err().to_string();
        let e = refused("database:\n  url: postgres://db/x\n  sslrootcert: ca.pem\n");
        assert!(e.contains("sslrootcert"), "{e}");
        let e = refused("database:\n  url: postgres://db/x\n  url_env: DB\n");
        assert!(e.contains("exactly one of url, url_file, url_env"), "{e}");
        let e = refused("database:\n  password_file: pw\n");
        assert!(e.contains("exactly one of url"), "{e}");
        let e =
            refused("database:\n  url: postgres://db/x\n  password_file: a\n  password_env: B\n");
        assert!(e.contains("at most one of password_file"), "{e}");
        let e = refused("database:\n  url: /var/lib/chimera.db\n");
        assert!(e.contains("not a postgres://"), "{e}");
        let e = refused("database:\n  url: postgres://db/x\n  pool_size: 0\n");
        assert!(e.contains("pool_size"), "{e}");
        // Another engine's URL is refused without repeating it (it may hold a password).
        let e = refused("database: mysql://gw:s3cret@db/chimera\n");
        assert!(e.contains("mysql://") && !e.contains("s3cret"), "{e}");
        assert!(refused("database: ''\n").contains("empty"));
        // Nor is a section's Debug a way to print the URL.
        let p = section(d, "database: postgres://gw:s3cret@db/x\n");
        assert!(!format!("{p:?}").contains("s3cret"));
    }

    #[test]
    fn postgres_secrets_come_from_files_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("url"), "postgres://gw@db.internal:5433/chimera\n").unwrap();
        std::fs::write(d.join("pw"), "s3cret\n").unwrap();
        let t = section(d, "database:\n  url_file: url\n  password_file: pw\n")
            .resolve()
            .unwrap();
        assert_eq!(t.describe(), "postgres://gw@db.internal:5433/chimera");
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(!t.tls() && !t.is_local());

        let resolve_err = |yaml: &str| section(d, yaml).resolve().unwrap_err().to_string();
        let e = resolve_err("database:\n  url: postgres://gw:s3cret@db/x\n  password_file: pw\n");
        assert!(e.contains("twice") && !e.contains("s3cret"), "{e}");
        let e = resolve_err("database: postgres://gw:s3cret@db/x?bogus=1\n");
        assert!(e.contains("bogus") && !e.contains("s3cret"), "{e}");
        let e = resolve_err("database: postgres://gw:s3cret@db/x?sslmode=verify-full\n");
        assert!(e.contains("ca_file") && !e.contains("s3cret"), "{e}");
        let e = resolve_err("database: postgres://gw@db/x?sslmode=require\n");
        assert!(e.contains("needs database.ca_file"), "{e}");
        let e = resolve_err("database:\n  url_file: missing\n");
        assert!(e.contains("url_file") && e.contains("missing"), "{e}");
        std::fs::write(d.join("empty-pw"), "\n").unwrap();
        let e = resolve_err("database:\n  url: postgres://db/x\n  password_file: empty-pw\n");
        assert!(e.contains("empty"), "{e}");
        std::fs::write(d.join("not-a-url"), "host=db password=s3cret").unwrap();
        let e = resolve_err("database:\n  url_file: not-a-url\n");
        assert!(
            e.contains("not a postgres://") && !e.contains("s3cret"),
            "{e}"
        );
        let e = resolve_err("database:\n  url_env: AEGIS_TEST_SURELY_UNSET_VARIABLE\n");
        assert!(e.contains("AEGIS_TEST_SURELY_UNSET_VARIABLE"), "{e}");

        // TLS: a CA file makes it TLS, always; it must hold a certificate.
        std::fs::write(d.join("no-cert.pem"), "not a certificate\n").unwrap();
        let e = resolve_err("database:\n  url: postgres://db/x\n  ca_file: no-cert.pem\n");
        assert!(e.contains("ca_file") && e.contains("no certificate"), "{e}");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        std::fs::write(d.join("ca.pem"), params.self_signed(&key).unwrap().pem()).unwrap();
        let t = section(
            d,
            "database:\n  url: postgres://127.0.0.1/x\n  ca_file: ca.pem\n",
        )
        .resolve()
        .unwrap();
        assert!(t.tls() && t.is_local());
        let e =
            resolve_err("database:\n  url: postgres://db/x?sslmode=disable\n  ca_file: ca.pem\n");
        assert!(e.contains("contradicts ca_file"), "{e}");
    }

    const BASE: &str = "listen: 127.0.0.1:0\ndatabase: a.db\nregistry: r.json\nstate: s\n";

    #[test]
    fn oidc_defaults_are_safe_and_the_ca_file_follows_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(
            dir.path(),
            &format!(
                "{BASE}oidc:\n  issuer: https://id.example/pool\n  audience: chimera\n  ca_file: ca.pem\n"
            ),
        );
        let o = ServeConfig::read(&p).unwrap().oidc.unwrap();
        assert_eq!(o.algorithms, [JwtAlgorithm::RS256, JwtAlgorithm::ES256]);
        assert_eq!(o.leeway_s, DEFAULT_LEEWAY_S);
        assert_eq!(o.roles_claim, "roles");
        assert_eq!(o.roles.get("admin"), Some(&Role::Admin));
        assert_eq!(o.roles.len(), 3);
        assert_eq!(o.ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(o.jwks_min_refresh_s, DEFAULT_JWKS_MIN_REFRESH_S);
        assert_eq!(o.audience_claim, AudienceClaim::Aud);
        let p = write(
            dir.path(),
            &format!(
                "{BASE}oidc:\n  issuer: https://id.example/pool\n  audience: chimera\n  \
                 audience_claim: client_id\n"
            ),
        );
        let o = ServeConfig::read(&p).unwrap().oidc.unwrap();
        assert_eq!(o.audience_claim, AudienceClaim::ClientId);
    }

    #[test]
    fn oidc_refuses_symmetric_algorithms_plain_http_and_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let oidc = |extra: &str, issuer: &str| {
            let p = write(
                dir.path(),
                &format!("{BASE}oidc:\n  issuer: {issuer}\n  audience: chimera\n{extra}"),
            );
            ServeConfig::read(&p).map(|_| ()).map_err(|e| e.to_string())
        };
        let https = "https://id.example";
        for (extra, issuer, named) in [
            ("  algorithms: [RS256, HS256]\n", https, "HS256"),
            ("  algorithms: [none]\n", https, "none"),
            ("  algorithms: []\n", https, "algorithms"),
            ("", "http://id.example", "loopback"),
            ("  jwks_uri: http://10.0.0.1/jwks\n", https, "jwks_uri"),
            ("", "https://user@id.example", "user information"),
            ("  leeway_s: 3600\n", https, "leeway_s"),
            ("  roles: {}\n", https, "roles"),
            ("  roles: {ops: root}\n", https, "root"),
            ("  jwks_min_refresh_s: 0\n", https, "jwks_min_refresh_s"),
            ("  client_secret: s3cret\n", https, "client_secret"),
            ("  audience_claim: azp\n", https, "audience_claim"),
            ("  audience_claim: [aud]\n", https, "audience_claim"),
        ] {
            let e = oidc(extra, issuer).expect_err(extra);
            assert!(e.contains(named), "{extra:?} {issuer}: {e}");
        }
        // Loopback may be plain http (a provider on the same host, or a test's).
        oidc("", "http://127.0.0.1:8081/realms/x").unwrap();
        oidc("", "http://localhost:8081").unwrap();
    }

    #[test]
    fn signer_sections_are_strict_and_need_trust_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let trust = "trust_metadata: t.json\ntrust_roots: [root.pub]\n";
        let read = |extra: &str| {
            ServeConfig::read(&write(dir.path(), &format!("{BASE}{extra}")))
                .map_err(|e| e.to_string())
        };
        let c = read(&format!(
            "{trust}signer: {{ kind: file, key_file: gw.key }}\n"
        ))
        .unwrap();
        match c.signer {
            Some(SignerConfig::File(f)) => assert_eq!(f.key_file, dir.path().join("gw.key")),
            other => panic!("{other:?}"),
        }
        let c = read(&format!(
            "{trust}signer:\n  kind: pkcs11\n  module: /usr/lib/softhsm/libsofthsm2.so\n  \
             token_label: chimera\n  pin_file: pin\n  key_label: seed-key\n  \
             wrapped_seed_file: gw.wrapped\n"
        ))
        .unwrap();
        match c.signer {
            Some(SignerConfig::Pkcs11(p)) => {
                assert_eq!(p.pin_file, dir.path().join("pin"));
                assert_eq!(p.module, PathBuf::from("/usr/lib/softhsm/libsofthsm2.so"));
            }
            other => panic!("{other:?}"),
        }
        for (extra, named) in [
            (
                "signer: { kind: file, key_file: gw.key }\n",
                "trust_metadata",
            ),
            (
                &format!("{trust}signer: {{ kind: file, key_file: a, pin: \"1234\" }}\n"),
                "pin",
            ),
            (
                &format!("{trust}signer: {{ kind: hsm, key_file: a }}\n"),
                "hsm",
            ),
            (&format!("{trust}signer: {{ key_file: a }}\n"), "kind"),
            (
                &format!(
                    "{trust}signer: {{ kind: pkcs11, module: m, token_label: t, pin_file: p, \
                     key_label: k, wrapped_seed_file: w, pin: \"1234\" }}\n"
                ),
                "pin",
            ),
            (
                &format!(
                    "{trust}signer: {{ kind: pkcs11, module: m, token_label: \"\", pin_file: \
                     p, key_label: k, wrapped_seed_file: w }}\n"
                ),
                "token_label",
            ),
        ] {
            let e = read(extra).expect_err(extra);
            assert!(e.contains(named), "{extra}: {e}");
        }
    }

    #[test]
    fn broker_is_a_url_or_a_strict_section_with_files_beside_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let read = |extra: &str| {
            ServeConfig::read(&write(dir.path(), &format!("{BASE}{extra}")))
                .map(|c| c.broker)
                .map_err(|e| e.to_string())
        };
        assert_eq!(read("").unwrap(), None);
        let b = read("broker: mqtt://127.0.0.1:1883\n").unwrap().unwrap();
        assert_eq!(b.url, "mqtt://127.0.0.1:1883");
        assert_eq!(b.ca_file, None);
        let b = read(
            "broker:\n  url: mqtts://iot.example\n  ca_file: ca.pem\n  client_cert: gw.crt\n  \
             client_key: /etc/gw.key\n  username: gw\n  password_file: secrets/pw\n",
        )
        .unwrap()
        .unwrap();
        assert_eq!(b.ca_file, Some(dir.path().join("ca.pem")));
        assert_eq!(b.client_cert, Some(dir.path().join("gw.crt")));
        assert_eq!(b.client_key, Some(PathBuf::from("/etc/gw.key")));
        assert_eq!(b.password_file, Some(dir.path().join("secrets/pw")));
        assert_eq!(b.username.as_deref(), Some("gw"));
        for (extra, named) in [
            // No key takes the password itself.
            (
                "broker: { url: mqtts://b.example, username: gw, password: s3cret }\n",
                "password",
            ),
            (
                "broker: { url: mqtts://b.example, insecure: true }\n",
                "insecure",
            ),
            ("broker: { ca_file: ca.pem }\n", "url"),
            ("broker: tcp://b.example\n", "tcp://"),
            (
                "broker: { url: mqtt://b.example, ca_file: c }\n",
                "broker.ca_file",
            ),
            (
                "broker: { url: mqtts://b.example, client_cert: c }\n",
                "broker.client_cert and broker.client_key",
            ),
        ] {
            let e = read(extra).expect_err(extra);
            assert!(e.contains(named) && !e.contains("s3cret"), "{extra}: {e}");
        }
    }

    #[test]
    fn ingest_and_rollout_settings_are_bounded_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let base = "listen: 127.0.0.1:0\ndatabase: a.db\nregistry: r.json\nstate: s\n";
        let c = ServeConfig::read(&write(dir.path(), base)).unwrap();
        assert_eq!(c.ingest.share_group, "chimera");
        assert_eq!(c.rollouts.lease_s, 15);
        assert_ne!(c.replica_name(), c.replica_name());
        for (extra, named) in [
            ("ingest: { share_group: \"a/b\" }\n", "ingest.share_group"),
            ("ingest: { inbox: 0 }\n", "ingest.inbox"),
            ("ingest: { queue: 3 }\n", "queue"),
            ("rollouts: { tick_ms: 10 }\n", "rollouts.tick_ms"),
            (
                "rollouts: { tick_ms: 1000, lease_s: 2 }\n",
                "rollouts.lease_s",
            ),
            ("replica: \"a b\"\n", "replica"),
        ] {
            let e = ServeConfig::read(&write(dir.path(), &format!("{base}{extra}")))
                .unwrap_err()
                .to_string();
            assert!(e.contains(named), "{extra}: {e}");
        }
        let c = ServeConfig::read(&write(
            dir.path(),
            &format!("{base}replica: gw-a\nrollouts: {{ tick_ms: 100, lease_s: 1 }}\n"),
        ))
        .unwrap();
        assert_eq!(c.replica_name(), "gw-a");
        assert_eq!(c.rollouts.tick_ms, 100);
    }
}
