//! HTTPS for the local web server: a self-signed device certificate made at first start
//! (SANs: the host name, `localhost`, and the listen IP), its key 0600 next to the store,
//! and a [`TlsListener`] that `axum::serve` accepts. Browsers cannot check a self-signed
//! certificate against a CA: the technician compares its SHA-256 [`fingerprint`], which the
//! agent logs at start.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use aegis_config::TlsMode;
use sha2::Digest;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// How long a client may take over its TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Why the device certificate cannot be read, made or used; names the file where there is one.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read, written, or fails the private-file checks.
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{}: no PEM certificate in it (delete it and its key to make new ones)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// Generating the certificate failed.
    #[error("cannot make the device certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("the device certificate or key is not usable: {0}")]
    Config(#[from] rustls::Error),
}

/// Whether `mode` means TLS on `addr` (`auto`: unless loopback).
pub fn wants_tls(mode: TlsMode, addr: SocketAddr) -> bool {
    match mode {
        TlsMode::On => true,
        TlsMode::Off => false,
        TlsMode::Auto => !addr.ip().is_loopback(),
    }
}

/// The device certificate and its key.
pub struct DeviceCert {
    /// The certificate (DER).
    pub cert: CertificateDer<'static>,
    key: zeroize::Zeroizing<Vec<u8>>,
    /// The certificate file (PEM).
    pub cert_path: PathBuf,
}

impl std::fmt::Debug for DeviceCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceCert({})", self.cert_path.display())
    }
}

/// The SHA-256 fingerprint of a DER certificate, as browsers show it (`AB:CD:…`).
pub fn fingerprint(cert_der: &[u8]) -> String {
    sha2::Sha256::digest(cert_der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn file_err(path: &Path) -> impl Fn(String) -> TlsError + '_ {
    move |reason| TlsError::File {
        path: path.to_path_buf(),
        reason,
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The folder of the device certificate: beside the store's database.
pub fn cert_dir(cfg: &aegis_config::AgentConfig) -> std::path::PathBuf {
    cfg.store
        .path
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf()
}

impl DeviceCert {
    /// Reads `web.crt` and `web.key` in `dir`, or (neither there) makes them: a self-signed
    /// certificate for this host's name, `localhost` and `ip` (unless unspecified), the key
    /// 0600 with the secret-file checks.
    pub fn load_or_create(dir: &Path, ip: IpAddr) -> Result<DeviceCert, TlsError> {
        let cert_path = dir.join("web.crt");
        let key_path = dir.join("web.key");
        if !cert_path.exists() && !key_path.exists() {
            let mut names = vec![host_name(), "localhost".to_string()];
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
            names.dedup();
            let made = rcgen::generate_simple_self_signed(names)?;
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir)(e.to_string()))?;
            let key_pem = zeroize::Zeroizing::new(made.signing_key.serialize_pem());
            aegis_ota::write_private(&key_path, key_pem.as_bytes())
                .map_err(|(_, r)| file_err(&key_path)(r))?;
            aegis_ota::fsutil::write_atomic_mode(&cert_path, made.cert.pem().as_bytes(), 0o644)
                .map_err(|e| file_err(&cert_path)(e.to_string()))?;
        }
        Self::read(dir)
    }

    /// Reads `web.crt` and `web.key` in `dir` (made by [`DeviceCert::load_or_create`]).
    pub fn read(dir: &Path) -> Result<DeviceCert, TlsError> {
        let key_path = dir.join("web.key");
        let (cert_path, cert) = Self::read_cert(dir)?;
        let key_pem =
            aegis_ota::read_private(&key_path).map_err(|(_, r)| file_err(&key_path)(r))?;
        let key = pem_block(&key_pem, "PRIVATE KEY")
            .ok_or_else(|| file_err(&key_path)("no PEM private key in it".into()))?;
        Ok(DeviceCert {
            cert: CertificateDer::from(cert),
            key: zeroize::Zeroizing::new(key),
            cert_path,
        })
    }

    /// The certificate alone (`web.crt` in `dir`, public): its path and DER bytes.
    fn read_cert(dir: &Path) -> Result<(PathBuf, Vec<u8>), TlsError> {
        let cert_path = dir.join("web.crt");
        let pem = std::fs::read(&cert_path).map_err(|e| file_err(&cert_path)(e.to_string()))?;
        let cert = pem_block(&pem, "CERTIFICATE").ok_or_else(|| TlsError::NoCertificate {
            path: cert_path.clone(),
        })?;
        Ok((cert_path, cert))
    }

    /// The SHA-256 fingerprint of the certificate in `dir` and its path, without its key:
    /// what `aegis version` prints and `aegis workflow apply` pins.
    pub fn fingerprint_in(dir: &Path) -> Result<(PathBuf, String), TlsError> {
        let (path, der) = Self::read_cert(dir)?;
        Ok((path, fingerprint(&der)))
    }

    /// Its SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }

    /// A rustls server configuration serving it (TLS 1.2 and 1.3, ring).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.to_vec()));
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![self.cert.clone()], key)?;
        Ok(Arc::new(cfg))
    }
}

/// The first `-----BEGIN {label}-----` block of `pem`, decoded.
fn pem_block(pem: &[u8], label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let text = std::str::from_utf8(pem).ok()?;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// TLS connections for `axum::serve`: a task accepts TCP connections and runs each
/// handshake on its own task (a slow client holds up no one), with a time limit.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    local: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl TlsListener {
    /// Serves TLS with `config` on `tcp`.
    pub fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let accept_task = tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::debug!(error = %e, "web: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "web: TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "web: TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            rx,
            local,
            accept_task,
        })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when aborted (on drop): wait for shutdown.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// A TLS client's check of the server: exactly the certificate with this SHA-256
/// [`fingerprint`] — what a technician does in the browser, and what `aegis workflow apply`
/// does with the device certificate it reads from disk.
#[derive(Debug)]
pub struct Pinned(pub String);

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.0 {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("fingerprint differs".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &rustls::crypto::ring::default_provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A rustls client configuration that accepts only the certificate with `fingerprint`.
pub fn pinned_client(fingerprint: &str) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned(fingerprint.to_string())))
        .with_no_client_auth(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn auto_means_tls_unless_loopback() {
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(!wants_tls(TlsMode::Auto, lo));
        assert!(wants_tls(TlsMode::Auto, any));
        assert!(wants_tls(TlsMode::On, lo));
        assert!(!wants_tls(TlsMode::Off, any));
    }

    #[tokio::test]
    async fn the_device_certificate_is_kept_private_and_serves_https() {
        let d = tempfile::tempdir().unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let cert = DeviceCert::load_or_create(d.path(), ip).unwrap();
        let again = DeviceCert::load_or_create(d.path(), ip).unwrap();
        assert_eq!(
            cert.fingerprint(),
            again.fingerprint(),
            "made once, then read"
        );
        assert_eq!(cert.fingerprint().len(), 32 * 3 - 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &str| {
            std::fs::metadata(d.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("web.key"), 0o600);

        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let listener = TlsListener::new(tcp, cert.server_config().unwrap()).unwrap();
        let addr = axum::serve::Listener::local_addr(&listener).unwrap();
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let connect = |pin: String| async move {
            let client = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned(pin)))
            .with_no_client_auth();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(Arc::new(client))
                .connect(rustls::pki_types::ServerName::IpAddress(ip.into()), tcp)
                .await
        };
        let mut tls = connect(cert.fingerprint()).await.unwrap();
        tls.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tls.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
        assert!(
            connect("00".into()).await.is_err(),
            "another fingerprint is refused"
        );
        server.abort();
    }
}
