//! The MQTT broker the gateway's clients connect to — the CLI's sessions, the service's ingest
//! and publishes — with its transport security and credentials. Read once ([`BrokerSettings::
//! resolve`]: the files checked and read, the TLS configuration built), then used for every
//! connection ([`Broker::options`]), so a bad file is an error at start, not at the first
//! publish.
//!
//! - `mqtt://HOST[:PORT]` (or `HOST[:PORT]`): plain TCP, port 1883 by default.
//! - `mqtts://HOST[:PORT]`: TLS, port 8883 by default, through rumqttc's rustls transport with
//!   the workspace's ring provider (no OpenSSL). The broker's certificate must chain to
//!   `ca_file` — or, without one, to Mozilla's root programme compiled into the binary
//!   (webpki-roots, as `oidc.ca_file` defaults to): the same trust on every host and in a
//!   distroless image, whatever its CA bundle; Amazon's roots for AWS IoT Core are in it — and
//!   must name HOST. Neither check can be turned off.
//! - Optional client certificate and key (PEM) for mutual TLS (AWS IoT Core, EMQX with
//!   `verify_peer`), and an optional username with a password *file* (EMQX, mosquitto). There
//!   is no setting that takes the password itself.
//!
//! What it must not do: show the password. It is read into a zeroizing buffer and copied only
//! into rumqttc's connection options, which are never printed (their `Debug` shows it).
//! Errors, logs, the audit and the API see [`Broker`]'s `Display` (the URL, which cannot carry
//! user information) or [`Broker::describe`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
use rumqttc::v5::{ConnectionError, MqttOptions, StateError};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use zeroize::Zeroizing;

/// Plain MQTT's default port.
pub(crate) const MQTT_PORT: u16 = 1883;
/// MQTT over TLS's default port.
pub(crate) const MQTTS_PORT: u16 = 8883;

/// Where a broker and its security are configured: `serve.yaml`'s `broker:` (a URL, or a
/// section with these keys) or the CLI's `--broker*` flags ([`BrokerArgs`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BrokerSettings {
    /// `mqtt://HOST[:PORT]`, `HOST[:PORT]` or `mqtts://HOST[:PORT]`.
    pub(crate) url: String,
    /// With `mqtts://`: PEM file of the CA(s) the broker's certificate must chain to.
    /// Default: Mozilla's root programme, compiled in.
    #[serde(default)]
    pub(crate) ca_file: Option<PathBuf>,
    /// With `mqtts://`: this client's certificate (PEM, leaf first, then any intermediates)
    /// for mutual TLS; with `client_key`.
    #[serde(default)]
    pub(crate) client_cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1), owned by the service's user, mode 0600.
    #[serde(default)]
    pub(crate) client_key: Option<PathBuf>,
    /// MQTT username; with `password_file`.
    #[serde(default)]
    pub(crate) username: Option<String>,
    /// A file holding the MQTT password on one line (owned by the service's user, mode 0600;
    /// a trailing newline is ignored). Only over TLS, or to a broker on this host.
    #[serde(default)]
    pub(crate) password_file: Option<PathBuf>,
}

/// What each setting is called where it was written, so errors name what to change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Names {
    url: &'static str,
    ca_file: &'static str,
    client_cert: &'static str,
    client_key: &'static str,
    username: &'static str,
    password_file: &'static str,
}

/// `serve.yaml`'s `broker:`.
pub(crate) const SERVE_NAMES: Names = Names {
    url: "broker",
    ca_file: "broker.ca_file",
    client_cert: "broker.client_cert",
    client_key: "broker.client_key",
    username: "broker.username",
    password_file: "broker.password_file",
};

/// The CLI's flags.
pub(crate) const CLI_NAMES: Names = Names {
    url: "--broker",
    ca_file: "--broker-ca",
    client_cert: "--broker-cert",
    client_key: "--broker-key",
    username: "--broker-user",
    password_file: "--broker-password-file",
};

/// The broker flags of the online commands (publish, watch-receipts, fleet, model).
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct BrokerArgs {
    /// The MQTT 5 broker: `mqtt://HOST[:PORT]` (or `HOST[:PORT]`; plain TCP, port 1883 by
    /// default) or `mqtts://HOST[:PORT]` (TLS, port 8883 by default).
    #[arg(long, default_value = "mqtt://127.0.0.1:1883")]
    pub(crate) broker: String,
    /// mqtts: PEM file of the CA(s) the broker's certificate must chain to (default:
    /// Mozilla's root programme, compiled in).
    #[arg(long, value_name = "FILE")]
    pub(crate) broker_ca: Option<PathBuf>,
    /// mqtts: this client's certificate (PEM) for mutual TLS; with --broker-key.
    #[arg(long, value_name = "FILE")]
    pub(crate) broker_cert: Option<PathBuf>,
    /// mqtts: the client certificate's private key (PEM; owned by this user, mode 0600).
    #[arg(long, value_name = "FILE")]
    pub(crate) broker_key: Option<PathBuf>,
    /// MQTT username; with --broker-password-file.
    #[arg(long, value_name = "NAME")]
    pub(crate) broker_user: Option<String>,
    /// A file holding the MQTT password on one line (owned by this user, mode 0600). No
    /// flag takes the password itself.
    #[arg(long, value_name = "FILE")]
    pub(crate) broker_password_file: Option<PathBuf>,
}

impl BrokerArgs {
    /// The broker the flags describe, files read; errors name the flag.
    pub(crate) fn resolve(&self) -> anyhow::Result<Broker> {
        BrokerSettings {
            url: self.broker.clone(),
            ca_file: self.broker_ca.clone(),
            client_cert: self.broker_cert.clone(),
            client_key: self.broker_key.clone(),
            username: self.broker_user.clone(),
            password_file: self.broker_password_file.clone(),
        }
        .resolve(&CLI_NAMES)
    }
}

/// `serve.yaml`'s `broker:`: a URL (the short form) or a [`BrokerSettings`] section.
pub(crate) fn string_or_section<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<BrokerSettings>, D::Error> {
    struct Visit;
    impl<'de> serde::de::Visitor<'de> for Visit {
        type Value = Option<BrokerSettings>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "a broker URL (mqtt://HOST:PORT, mqtts://HOST:PORT) or a section (url, \
                 ca_file, client_cert, client_key, username, password_file)",
            )
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Self::Value, E> {
            Ok(Some(BrokerSettings {
                url: s.to_string(),
                ..Default::default()
            }))
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            BrokerSettings::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
        }
    }
    d.deserialize_any(Visit)
}

/// A broker's address as parsed from its URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: aegis_config::Host,
    port: u16,
}

impl Endpoint {
    /// Parses `url`. Errors never repeat the URL whole: one written with user information
    /// (`mqtts://user:password@host`) would print the password.
    fn parse(url: &str, names: &Names) -> anyhow::Result<Endpoint> {
        let bad = |m: &str| anyhow::anyhow!("{}: {m}", names.url);
        let (tls, rest) = match url.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            Some((scheme, _)) => {
                return Err(bad(&format!(
                    "{scheme}:// is not a broker URL here: mqtt://HOST[:PORT] (plain) or \
                     mqtts://HOST[:PORT] (TLS)"
                )));
            }
            None => (false, url),
        };
        if rest.contains('@') {
            return Err(bad(&format!(
                "user information in the URL is refused (it would be logged): give {} and {}",
                names.username, names.password_file
            )));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#']) {
            return Err(bad(
                "a broker URL has no path or query: mqtt://HOST[:PORT] or mqtts://HOST[:PORT]",
            ));
        }
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, "")) => (format!("[{h}]"), None),
                Some((h, p)) => match p.strip_prefix(':') {
                    Some(p) => (format!("[{h}]"), Some(p)),
                    None => return Err(bad("text after the IPv6 address's ']'")),
                },
                None => return Err(bad("'[' without a closing ']'")),
            },
            None => match authority.split_once(':') {
                Some((_, p)) if p.contains(':') => {
                    return Err(bad("an IPv6 address goes in brackets: mqtts://[::1]:8883"));
                }
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (authority.to_string(), None),
            },
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let host = aegis_config::Host::parse(&host).map_err(|e| bad(&format!("host: {e}")))?;
        let port = match port {
            None if tls => MQTTS_PORT,
            None => MQTT_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(bad(&format!("port {p:?}: 1 to 65535"))),
            },
        };
        Ok(Endpoint { tls, host, port })
    }

    /// Whether the broker is on this host (a password sent in clear crosses no network).
    fn is_local(&self) -> bool {
        match &self.host {
            aegis_config::Host::Ipv4(a) => a.is_loopback(),
            aegis_config::Host::Ipv6(a) => a.is_loopback(),
            aegis_config::Host::Domain(d) => d == "localhost",
        }
    }

    /// `mqtt(s)://HOST:PORT`.
    fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        match &self.host {
            aegis_config::Host::Ipv6(a) => format!("{scheme}://[{a}]:{}", self.port),
            h => format!("{scheme}://{h}:{}", self.port),
        }
    }
}

impl BrokerSettings {
    /// Relative paths become relative to `base` (the config file's directory).
    pub(crate) fn relative_to(&mut self, base: &Path) {
        for p in [
            &mut self.ca_file,
            &mut self.client_cert,
            &mut self.client_key,
            &mut self.password_file,
        ]
        .into_iter()
        .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// Checks what can be checked without reading a file: the URL, TLS settings only with
    /// `mqtts://`, the pairs given together, no password in clear across a network.
    pub(crate) fn check(&self, names: &Names) -> anyhow::Result<()> {
        self.endpoint(names).map(|_| ())
    }

    fn endpoint(&self, names: &Names) -> anyhow::Result<Endpoint> {
        let end = Endpoint::parse(&self.url, names)?;
        if !end.tls {
            for (given, name) in [
                (self.ca_file.is_some(), names.ca_file),
                (self.client_cert.is_some(), names.client_cert),
                (self.client_key.is_some(), names.client_key),
            ] {
                anyhow::ensure!(
                    !given,
                    "{name} needs an mqtts:// broker ({} is plain TCP, without TLS)",
                    end.url()
                );
            }
        }
        for (a, b) in [
            (
                (self.client_cert.is_some(), names.client_cert),
                (self.client_key.is_some(), names.client_key),
            ),
            (
                (self.username.is_some(), names.username),
                (self.password_file.is_some(), names.password_file),
            ),
        ] {
            anyhow::ensure!(a.0 == b.0, "{} and {} go together", a.1, b.1);
        }
        if let Some(u) = &self.username {
            anyhow::ensure!(
                !u.is_empty() && u.len() <= 1024 && !u.chars().any(char::is_control),
                "{}: 1 to 1024 bytes, no control characters",
                names.username
            );
        }
        anyhow::ensure!(
            self.password_file.is_none() || end.tls || end.is_local(),
            "{} over {} would send the password across the network in clear: use mqtts://",
            names.password_file,
            end.url()
        );
        Ok(end)
    }

    /// Reads the files the settings name and builds the broker every connection uses.
    /// Errors name the setting (as `names` calls it) and the file, never the password.
    pub(crate) fn resolve(&self, names: &Names) -> anyhow::Result<Broker> {
        let end = self.endpoint(names)?;
        let (tls, trust) = if end.tls {
            let (roots, trust) = match &self.ca_file {
                Some(p) => (
                    ca_roots(p)
                        .map_err(|m| anyhow::anyhow!("{} {}: {m}", names.ca_file, p.display()))?,
                    format!("the CA file {}", p.display()),
                ),
                None => (
                    rustls::RootCertStore::from_iter(
                        webpki_roots::TLS_SERVER_ROOTS.iter().cloned(),
                    ),
                    "Mozilla's root programme (compiled in)".to_string(),
                ),
            };
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| anyhow::anyhow!("TLS towards the broker: {e}"))?
            .with_root_certificates(roots);
            let config = match (&self.client_cert, &self.client_key) {
                (Some(cert), Some(key)) => {
                    let chain = certificates(cert).map_err(|m| {
                        anyhow::anyhow!("{} {}: {m}", names.client_cert, cert.display())
                    })?;
                    let key_der = private_key(key).map_err(|m| {
                        anyhow::anyhow!("{} {}: {m}", names.client_key, key.display())
                    })?;
                    builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                        anyhow::anyhow!(
                            "{} {} with {} {}: {e}",
                            names.client_cert,
                            cert.display(),
                            names.client_key,
                            key.display()
                        )
                    })?
                }
                _ => builder.with_no_client_auth(),
            };
            (Some(Arc::new(config)), trust)
        } else {
            (None, String::new())
        };
        let login = match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => {
                let password =
                    crate::keys::read_secret_line(file, "the password").map_err(|m| {
                        anyhow::anyhow!("{} {}: {m}", names.password_file, file.display())
                    })?;
                Some(Arc::new(Login {
                    username: user.clone(),
                    password,
                }))
            }
            _ => None,
        };
        Ok(Broker {
            url: end.url(),
            host: end.host.to_string(),
            port: end.port,
            tls,
            trust,
            client_cert: self.client_cert.is_some(),
            login,
            names: *names,
        })
    }
}

/// The certificates of a CA file, as trust anchors.
fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| e.to_string())?;
    }
    Ok(roots)
}

/// The PEM certificates in `path` (at least one).
fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// The PEM private key in `path`, read with the private-file checks (owner, mode 0600, no
/// link: [`aegis_ota::read_private`]).
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = aegis_ota::read_private(path).map_err(|(_, reason)| reason)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            "no PEM private key in it (PKCS#8, PKCS#1 or SEC1)".to_string()
        }
        e => e.to_string(),
    })
}

/// MQTT username and password.
struct Login {
    username: String,
    password: Zeroizing<String>,
}

/// A broker ready to connect to: its address, the TLS configuration (built once), the
/// credentials. Cheap to clone. `Display` is the URL (`mqtts://HOST:PORT`): no credentials.
#[derive(Clone)]
pub(crate) struct Broker {
    url: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// What the broker's certificate must chain to, in words (for errors).
    trust: String,
    client_cert: bool,
    login: Option<Arc<Login>>,
    names: Names,
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

/// Never the password.
impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Broker({})", self.describe())
    }
}

impl Broker {
    /// The URL with what secures the connection, for the start-up line and the audit:
    /// `mqtts://HOST:PORT (TLS; client certificate; user NAME)`.
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        if self.tls.is_some() {
            parts.push("TLS".to_string());
        }
        if self.client_cert {
            parts.push("client certificate".into());
        }
        if let Some(l) = &self.login {
            parts.push(format!("user {}", l.username));
        }
        if parts.is_empty() {
            self.url.clone()
        } else {
            format!("{} ({})", self.url, parts.join("; "))
        }
    }

    /// The MQTT 5 options of a client `client_id`: this broker's transport and credentials,
    /// 30 s keep-alive, packets up to 256 KiB, no Nagle delay. Never print them: their
    /// `Debug` shows the password.
    pub(crate) fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(256 * 1024));
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        if let Some(tls) = &self.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls.clone()),
            ));
        }
        if let Some(l) = &self.login {
            o.set_credentials(l.username.clone(), l.password.as_str());
        }
        o
    }

    /// `URL: ` and [`Broker::explain`]: the line errors and logs carry.
    pub(crate) fn failed(&self, e: &ConnectionError) -> String {
        format!("{}: {}", self.url, self.explain(e))
    }

    /// What a connection error means, in words that name the setting to look at: a TLS
    /// verification failure of the broker host, a TLS alert from the broker (a client
    /// certificate it wanted or refused), the reason of a refusing CONNACK. Without the URL:
    /// callers put it in front ([`Broker::failed`]).
    pub(crate) fn explain(&self, e: &ConnectionError) -> String {
        let n = &self.names;
        if let ConnectionError::ConnectionRefused(code) = e {
            // mosquitto 2.0 answers a wrong password with NotAuthorized, other brokers with
            // BadUserNamePassword: for both, say what this client gave.
            let hint = match (code, &self.login, self.client_cert) {
                (
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    Some(l),
                    _,
                ) => format!(
                    ": the username {:?} or the password ({}) is wrong, or that user may not \
                     connect",
                    l.username, n.password_file
                ),
                (ConnectReturnCode::NotAuthorized, None, true) => {
                    ": its client certificate may not connect".to_string()
                }
                (
                    ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
                    None,
                    _,
                ) => format!(
                    ": this client gave no username and password ({}, {})",
                    n.username, n.password_file
                ),
                _ => String::new(),
            };
            return format!("the broker refused the connection (CONNACK {code:?}){hint}");
        }
        if let Some(tls) = rustls_error(e) {
            return match tls {
                rustls::Error::InvalidCertificate(c) => {
                    let hint = match c {
                        rustls::CertificateError::UnknownIssuer
                        | rustls::CertificateError::BadSignature => format!(
                            " (its certificate does not chain to {}; {} names the CA to trust)",
                            self.trust, n.ca_file
                        ),
                        rustls::CertificateError::NotValidForName
                        | rustls::CertificateError::NotValidForNameContext { .. } => format!(
                            " (its certificate does not name {:?}: connect with a name it was \
                             issued for)",
                            self.host
                        ),
                        _ => String::new(),
                    };
                    format!(
                        "TLS verification of the broker host {} failed: {tls}{hint}",
                        self.host
                    )
                }
                rustls::Error::AlertReceived(alert) => {
                    use rustls::AlertDescription as A;
                    let hint = match alert {
                        A::CertificateRequired | A::HandshakeFailure if !self.client_cert => {
                            format!(
                                " (it may require a client certificate: {}, {})",
                                n.client_cert, n.client_key
                            )
                        }
                        A::BadCertificate
                        | A::UnknownCA
                        | A::CertificateUnknown
                        | A::CertificateRevoked
                        | A::CertificateExpired
                        | A::AccessDenied
                            if self.client_cert =>
                        {
                            format!(" (it refused the client certificate {})", n.client_cert)
                        }
                        _ => String::new(),
                    };
                    format!(
                        "TLS with the broker host {}: it ended the handshake with the alert \
                         {alert:?}{hint}",
                        self.host
                    )
                }
                other => format!("TLS with the broker host {} failed: {other}", self.host),
            };
        }
        e.to_string()
    }
}

/// The rustls error behind a connection error, wherever rumqttc wrapped it: an I/O error's
/// inner error is not its `source()`, nor is the packet error inside rumqttc's
/// `StateError::Deserialization` (where a TLS alert read while waiting for the CONNACK ends
/// up), so those are looked into.
fn rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        if let Some(StateError::Deserialization(inner)) = err.downcast_ref::<StateError>() {
            next = Some(inner);
            continue;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(t) = inner.downcast_ref::<rustls::Error>() {
                return Some(t);
            }
            next = Some(inner);
            continue;
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> BrokerSettings {
        BrokerSettings {
            url: url.into(),
            ..Default::default()
        }
    }

    fn endpoint(url: &str) -> Result<Endpoint, String> {
        settings(url)
            .endpoint(&SERVE_NAMES)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn urls_plain_and_tls_with_default_ports() {
        for (url, tls, host, port) in [
            ("mqtt://127.0.0.1:1883", false, "127.0.0.1", 1883),
            ("127.0.0.1:1884", false, "127.0.0.1", 1884),
            ("broker.example", false, "broker.example", MQTT_PORT),
            ("mqtt://broker.example/", false, "broker.example", MQTT_PORT),
            ("mqtts://broker.example", true, "broker.example", MQTTS_PORT),
            ("mqtts://b.example:443", true, "b.example", 443),
            ("mqtts://[::1]:8884", true, "::1", 8884),
            ("mqtts://[::1]", true, "::1", MQTTS_PORT),
        ] {
            let e = endpoint(url).unwrap();
            assert_eq!(
                (e.tls, e.host.to_string().as_str(), e.port),
                (tls, host, port),
                "{url}"
            );
        }
        assert_eq!(
            endpoint("mqtts://[::1]").unwrap().url(),
            "mqtts://[::1]:8883"
        );
        assert_eq!(
            endpoint("b.example").unwrap().url(),
            "mqtt://b.example:1883"
        );
    }

    #[test]
    fn bad_urls_are_named_and_never_echo_user_information() {
        for (url, named) in [
            ("ssl://b.example", "ssl:// is not a broker URL"),
            ("ws://b.example:8083", "ws://"),
            ("mqtt://b.example:0", "port \"0\""),
            ("mqtt://b.example:x", "port \"x\""),
            ("mqtt://b.example:70000", "port"),
            ("mqtts://b.example/topic", "no path"),
            ("mqtts://", "no host"),
            ("::1:8883", "brackets"),
            ("mqtts://[::1", "closing"),
            ("mqtts://Bad_Host", "host"),
        ] {
            let e = endpoint(url).expect_err(url);
            assert!(e.contains(named) && e.starts_with("broker: "), "{url}: {e}");
        }
        let e = endpoint("mqtts://gw:s3cret@b.example").unwrap_err();
        assert!(
            e.contains("user information") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(e.contains("broker.password_file"), "{e}");
        let e = BrokerArgs {
            broker: "mqtts://gw:s3cret@b.example".into(),
            broker_ca: None,
            broker_cert: None,
            broker_key: None,
            broker_user: None,
            broker_password_file: None,
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--broker-password-file") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn tls_settings_need_mqtts_pairs_go_together_and_no_password_in_clear() {
        let check = |s: BrokerSettings, names: &Names| s.check(names).map_err(|e| e.to_string());
        let p = |s: &str| Some(PathBuf::from(s));
        let e = check(
            BrokerSettings {
                ca_file: p("ca.pem"),
                ..settings("mqtt://b.example")
            },
            &SERVE_NAMES,
        )
        .unwrap_err();
        assert!(e.contains("broker.ca_file needs an mqtts://"), "{e}");
        let e = check(
            BrokerSettings {
                client_key: p("k.pem"),
                ..settings("mqtts://b.example")
            },
            &CLI_NAMES,
        )
        .unwrap_err();
        assert!(
            e.contains("--broker-cert and --broker-key go together"),
            "{e}"
        );
        let e = check(
            BrokerSettings {
                username: Some("gw".into()),
                ..settings("mqtts://b.example")
            },
            &SERVE_NAMES,
        )
        .unwrap_err();
        assert!(
            e.contains("broker.username and broker.password_file go together"),
            "{e}"
        );
        let login = |url: &str| BrokerSettings {
            username: Some("gw".into()),
            password_file: p("pw"),
            ..settings(url)
        };
        let e = check(login("mqtt://b.example"), &SERVE_NAMES).unwrap_err();
        assert!(e.contains("in clear") && e.contains("mqtts://"), "{e}");
        // Over TLS, or to this host, it is fine.
        check(login("mqtts://b.example"), &SERVE_NAMES).unwrap();
        check(login("mqtt://localhost:1883"), &SERVE_NAMES).unwrap();
        check(login("mqtt://127.0.0.1"), &SERVE_NAMES).unwrap();
        let e = check(
            BrokerSettings {
                username: Some(String::new()),
                ..login("mqtts://b.example")
            },
            &SERVE_NAMES,
        )
        .unwrap_err();
        assert!(e.contains("broker.username: 1 to 1024"), "{e}");
    }

    /// Writes `text` to `dir/name` with `mode`.
    fn file(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn files_are_checked_and_named_and_the_password_never_shows() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = file(d, "ca.pem", &ca.self_signed(&ca_key).unwrap().pem(), 0o644);
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["gw".to_string()])
            .unwrap()
            .self_signed(&client_key)
            .unwrap();
        let cert = file(d, "client.pem", &client.pem(), 0o644);
        let key = file(d, "client.key", &client_key.serialize_pem(), 0o600);
        let pw = file(d, "pw", "s3cret-pw\n", 0o600);
        let full = BrokerSettings {
            url: "mqtts://b.example".into(),
            ca_file: Some(ca_pem.clone()),
            client_cert: Some(cert.clone()),
            client_key: Some(key.clone()),
            username: Some("gw".into()),
            password_file: Some(pw.clone()),
        };
        let b = full.resolve(&SERVE_NAMES).unwrap();
        assert_eq!(b.to_string(), "mqtts://b.example:8883");
        assert_eq!(
            b.describe(),
            "mqtts://b.example:8883 (TLS; client certificate; user gw)"
        );
        assert_eq!(b.login.as_ref().unwrap().password.as_str(), "s3cret-pw");
        assert!(!format!("{b:?}").contains("s3cret"));
        let o = b.options("chimera-test");
        assert!(matches!(o.transport(), rumqttc::Transport::Tls(_)));
        assert_eq!(o.broker_address(), ("b.example".to_string(), 8883));

        let refused = |s: BrokerSettings| s.resolve(&SERVE_NAMES).unwrap_err().to_string();
        let e = refused(BrokerSettings {
            ca_file: Some(d.join("absent.pem")),
            ..full.clone()
        });
        assert!(
            e.contains("broker.ca_file") && e.contains("absent.pem"),
            "{e}"
        );
        let e = refused(BrokerSettings {
            ca_file: Some(key.clone()),
            ..full.clone()
        });
        assert!(
            e.contains("broker.ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        let e = refused(BrokerSettings {
            client_key: Some(cert.clone()),
            ..full.clone()
        });
        assert!(
            e.contains("broker.client_key") && e.contains("mode 0644"),
            "{e}"
        );
        let e = refused(BrokerSettings {
            client_key: Some(file(d, "cert-as-key", &client.pem(), 0o600)),
            ..full.clone()
        });
        assert!(e.contains("no PEM private key"), "{e}");
        // A password file others can read is refused, naming the file and the fix.
        let open = file(d, "pw-open", "s3cret-pw\n", 0o644);
        let e = refused(BrokerSettings {
            password_file: Some(open.clone()),
            ..full.clone()
        });
        assert!(
            e.contains("broker.password_file")
                && e.contains(&open.display().to_string())
                && e.contains("chmod 600")
                && !e.contains("s3cret"),
            "{e}"
        );
        let e = refused(BrokerSettings {
            password_file: Some(file(d, "pw-empty", "\n", 0o600)),
            ..full.clone()
        });
        assert!(e.contains("empty"), "{e}");
        let e = refused(BrokerSettings {
            password_file: Some(file(d, "pw-two", "s3cret\nline\n", 0o600)),
            ..full.clone()
        });
        assert!(e.contains("one line") && !e.contains("s3cret"), "{e}");
        // The CLI's names.
        let e = BrokerArgs {
            broker: "mqtts://b.example".into(),
            broker_ca: None,
            broker_cert: None,
            broker_key: None,
            broker_user: Some("gw".into()),
            broker_password_file: Some(open),
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("--broker-password-file"), "{e}");
    }

    #[test]
    fn connection_errors_name_the_reason_and_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let pw = file(dir.path(), "pw", "s3cret-pw\n", 0o600);
        let b = BrokerSettings {
            url: "mqtts://b.example:8883".into(),
            username: Some("gw".into()),
            password_file: Some(pw),
            ..Default::default()
        }
        .resolve(&SERVE_NAMES)
        .unwrap();
        let e = b.explain(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword,
        ));
        assert!(
            e.contains("BadUserNamePassword")
                && e.contains("broker.password_file")
                && !e.contains("s3cret"),
            "{e}"
        );
        // mosquitto says NotAuthorized for a wrong password.
        let e = b.explain(&ConnectionError::ConnectionRefused(
            ConnectReturnCode::NotAuthorized,
        ));
        assert!(
            e.contains("(CONNACK NotAuthorized): the username \"gw\" or the password")
                && e.contains("broker.password_file"),
            "{e}"
        );
        // rustls errors arrive inside I/O errors.
        let io = |t: rustls::Error| ConnectionError::Io(std::io::Error::other(t));
        let e = b.explain(&io(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        assert!(
            e.contains("TLS verification of the broker host b.example failed")
                && e.contains("Mozilla's root programme")
                && e.contains("broker.ca_file"),
            "{e}"
        );
        // A TLS alert read while waiting for the CONNACK, as rumqttc reports it.
        let e = b.explain(&ConnectionError::MqttState(StateError::Deserialization(
            rumqttc::v5::mqttbytes::Error::Io(std::io::Error::other(rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired,
            ))),
        )));
        assert!(
            e.contains("CertificateRequired") && e.contains("broker.client_cert"),
            "{e}"
        );
        let e = b.failed(&ConnectionError::RequestsDone);
        assert_eq!(e, "mqtts://b.example:8883: Requests done");
    }
}
