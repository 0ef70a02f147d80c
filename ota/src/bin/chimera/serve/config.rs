//! `serve.yaml`: the service's configuration, its public contract. Unknown keys are errors
//! (a misspelt key must not silently fall back to a default). There is deliberately no key
//! for a root key, nor for an issuer's secret key: the service verifies with public keys
//! only (docs/chimera-serve.md).
//!
//! Relative paths are taken from the directory of the config file, so a gateway directory
//! can be moved whole.

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
    /// The SQLite database file (created, with its schema, on first start).
    pub(crate) database: PathBuf,
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
        abs(&mut c.database);
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
        assert_eq!(c.database, dir.path().join("chimera.db"));
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
}
