//! The `web` section: the local HTTP server.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::default_true;

/// Default listen address of the local web server.
const DEFAULT_WEB_LISTEN: &str = "127.0.0.1:8080";

fn default_web_listen() -> String {
    DEFAULT_WEB_LISTEN.to_owned()
}

/// Local web server (health and metrics endpoints).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebConfig {
    /// Address and port to listen on, as `IP:PORT` (for example
    /// `127.0.0.1:8080`, or `0.0.0.0:8080` to accept remote connections).
    #[serde(default = "default_web_listen")]
    pub listen: String,
    /// Serve `/metrics` without a credential. When off, scrapers send the
    /// local API token (`Authorization: Bearer …`, Prometheus'
    /// `authorization.credentials_file`).
    #[serde(default = "default_true")]
    pub metrics_public: bool,
    /// The local API token file: `POST /workflow` (and `/metrics` unless
    /// public) need `Authorization: Bearer <its contents>`. Created (0600,
    /// 256 random bits) at first start; `aegis workflow apply` reads it.
    /// Default: `api.token` next to `store.path`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The technician web page's accounts (argon2id password hashes and
    /// roles, 0600; managed with `aegis user add|passwd|del|list`). No
    /// account exists until one is added: there is no default password.
    /// Default: `accounts.json` next to `store.path`.
    #[serde(default)]
    pub accounts_file: Option<PathBuf>,
    /// HTTPS: `auto` (TLS unless `listen` is a loopback address), `on`, or
    /// `off`. The device certificate (self-signed; the host name and the
    /// listen IP) is created at first start next to `store.path`
    /// (`web.crt`, key `web.key` 0600); the agent logs its SHA-256
    /// fingerprint at start.
    #[serde(default)]
    pub tls: TlsMode,
}

/// When the local web server speaks TLS (`web.tls`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS unless the listen address is a loopback address.
    #[default]
    Auto,
    /// Always TLS.
    On,
    /// Never TLS (plain HTTP).
    Off,
}

impl Default for WebConfig {
    fn default() -> Self {
        Self {
            listen: default_web_listen(),
            metrics_public: default_true(),
            token_file: None,
            accounts_file: None,
            tls: TlsMode::Auto,
        }
    }
}
