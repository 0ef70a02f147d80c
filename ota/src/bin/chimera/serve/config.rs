//! `serve.yaml`: the service's configuration, its public contract. Unknown keys are errors
//! (a misspelt key must not silently fall back to a default). There is deliberately no key
//! for a root key, nor for an issuer's secret key: the service verifies with public keys
//! only (docs/chimera-serve.md).
//!
//! Relative paths are taken from the directory of the config file, so a gateway directory
//! can be moved whole.
//!
//! `database:` picks the state backend, the one place it is chosen: a SQLite file path (one
//! replica), or PostgreSQL (several replicas) as a `postgres://` URL or a section naming
//! where the URL and the password come from (files or environment variables, as Kubernetes
//! secrets are mounted). A password is never printed: errors and logs describe the database
//! as `postgres://USER@HOST:PORT/DBNAME`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    /// Optional: the MQTT 5 broker uploaded workflows are published to (`mqtt://HOST:PORT`,
    /// as `chimera publish --broker`). Without it, publishing is refused.
    #[serde(default)]
    pub(crate) broker: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub(crate) max_body_bytes: usize,
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
    pub(crate) role: super::store::Role,
    /// Hex SHA-256 of the token.
    pub(crate) sha256: String,
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
        Ok(c)
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

    const BASE: &str = "listen: 127.0.0.1:0\nregistry: r.json\nstate: s\n";

    fn database(dir: &Path, yaml: &str) -> anyhow::Result<Database> {
        Ok(ServeConfig::read(&write(dir, &format!("{BASE}{yaml}")))?.database)
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
}
