//! Certificates for the tests' TLS servers (PostgreSQL, mosquitto) and clients: a CA of the
//! test's own and certificates it signs, written as PEM files (keys 0600). The `chimera`
//! binary's unit tests include this file too (`#[path]`, through `postgres.rs`).

use std::path::{Path, PathBuf};

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    /// Its certificate (PEM): what a client or server trusts.
    pub pem: String,
}

/// A certificate and its key, written as `NAME.crt` and `NAME.key` (0600).
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA called `name` (its common name).
    pub fn new(name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// Writes its certificate to `path`; returns `path`.
    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }

    /// A certificate signed by this CA for `names` (DNS names or IP addresses, as subject
    /// alternative names; the first is also the common name), written to `dir/NAME.crt` and
    /// `dir/NAME.key`.
    pub fn issue(&self, dir: &Path, name: &str, names: &[&str]) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        if let Some(cn) = names.first() {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *cn);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).unwrap();
        std::fs::write(&issued.key, key.serialize_pem()).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        issued
    }
}
