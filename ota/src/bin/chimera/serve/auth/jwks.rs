//! The OIDC provider's signing keys (its JWKS), fetched and cached.
//!
//! Why it exists: a JWT names its key by `kid`; the service must hold the provider's current
//! public keys to check it, follow the provider's key rotation without a restart, and keep
//! working on the keys it has while the provider is unreachable.
//!
//! What it must not do: let a caller decide where keys come from (header parameters such as
//! `jku`, `x5u` or an embedded `jwk` are never followed: keys come only from the configured
//! or discovered JWKS URL); let forged key ids make the service hammer the provider (a fetch
//! for an unknown `kid` happens at most once per `jwks_min_refresh_s`, one at a time);
//! accept a symmetric (`oct`) key, an encryption key, or anything it cannot verify with.
//!
//! Everything fetched is hostile until checked: bounded sizes (discovery document, JWKS, key
//! count, key id length, RSA modulus), timeouts, no redirects, no proxy from the
//! environment, `https` (or `http` on loopback) for every URL, the discovered one too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use super::super::config::{OidcConfig, check_provider_url};

/// Largest discovery document read (`/.well-known/openid-configuration`).
pub(crate) const MAX_DISCOVERY_BYTES: u64 = 64 * 1024;
/// Largest JWKS read (providers publish a few keys: a few KiB).
pub(crate) const MAX_JWKS_BYTES: u64 = 256 * 1024;
/// Most keys a JWKS may hold; a larger one is refused whole (and the cached keys kept).
pub(crate) const MAX_KEYS: usize = 64;
/// Longest key id accepted, in a JWKS or a token.
pub(crate) const MAX_KID_BYTES: usize = 256;
/// RSA modulus sizes accepted, in bits (below 2048 is too weak; the `rsa` crate's limit
/// is 8192).
const RSA_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// Time to connect to the provider.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for a whole fetch (request, response, body).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The kind of a provider key, which decides the algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// RSA (`RS*`, `PS*`).
    Rsa,
    /// EC on P-256 (`ES256`).
    P256,
    /// EC on P-384 (`ES384`).
    P384,
    /// Ed25519 (`EdDSA`).
    Ed25519,
}

impl KeyKind {
    /// What the JWK says it is (`kty`, and `crv`).
    fn describe(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RSA",
            KeyKind::P256 => "EC P-256",
            KeyKind::P384 => "EC P-384",
            KeyKind::Ed25519 => "OKP Ed25519",
        }
    }

    /// Whether a signature made with `alg` can come from a key of this kind.
    fn signs_with(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }

    /// An algorithm of this kind, to check at load time that the key can verify at all.
    fn probe(self) -> Algorithm {
        match self {
            KeyKind::Rsa => Algorithm::RS256,
            KeyKind::P256 => Algorithm::ES256,
            KeyKind::P384 => Algorithm::ES384,
            KeyKind::Ed25519 => Algorithm::EdDSA,
        }
    }
}

/// One verification key of the provider.
pub(crate) struct ProviderKey {
    /// Its key id.
    pub(crate) kid: String,
    /// Its kind.
    pub(crate) kind: KeyKind,
    /// The algorithm its JWK names (`alg`), if it names one.
    pub(crate) alg: Option<Algorithm>,
    /// The key.
    pub(crate) key: DecodingKey,
}

impl ProviderKey {
    /// Whether a token whose header says `alg` may be checked with this key: the key's
    /// kind must make such signatures, and the JWK's own `alg`, when given, must be it.
    pub(crate) fn admits(&self, alg: Algorithm) -> Result<(), String> {
        if !self.kind.signs_with(alg) {
            return Err(format!(
                "the token says {alg:?} but key {:?} is {}",
                self.kid,
                self.kind.describe()
            ));
        }
        match self.alg {
            Some(a) if a != alg => Err(format!(
                "the token says {alg:?} but key {:?} is for {a:?}",
                self.kid
            )),
            _ => Ok(()),
        }
    }
}

/// Why a key could not be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyLookup {
    /// No key set has been loaded yet (the provider has not answered since the start).
    NotLoaded,
    /// The loaded key set has no such key id (after one fetch, if the rate limit allowed).
    Unknown,
}

/// What has been loaded.
#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Arc<ProviderKey>>,
    /// Whether any fetch has succeeded.
    loaded: bool,
}

/// The provider's keys: fetched at start (in the background), on a timer, and on an
/// unknown key id (rate-limited, one fetch at a time). A failed fetch keeps the keys held.
pub(crate) struct Jwks {
    issuer: String,
    jwks_uri: Option<String>,
    agent: ureq::Agent,
    min_refresh: Duration,
    every: Duration,
    keys: RwLock<KeySet>,
    /// Held during a fetch (single flight); the time the last fetch started.
    fetching: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// A cache for `cfg`'s provider; nothing is fetched yet ([`Jwks::spawn_refresher`]).
    /// Fails when `ca_file` cannot be read or holds no certificate.
    pub(crate) fn new(cfg: &OidcConfig) -> anyhow::Result<Jwks> {
        use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig, TlsProvider};
        let roots = match &cfg.ca_file {
            None => RootCerts::WebPki,
            Some(p) => {
                let pem = std::fs::read(p)
                    .map_err(|e| anyhow::anyhow!("oidc.ca_file {}: {e}", p.display()))?;
                let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                    .filter_map(|item| match item {
                        Ok(PemItem::Certificate(c)) => Some(Ok(c)),
                        Ok(_) => None,
                        Err(e) => Some(Err(e)),
                    })
                    .collect::<Result<_, _>>()
                    .map_err(|e| anyhow::anyhow!("oidc.ca_file {}: {e}", p.display()))?;
                anyhow::ensure!(
                    !certs.is_empty(),
                    "oidc.ca_file {}: no PEM certificate in it",
                    p.display()
                );
                RootCerts::Specific(Arc::new(certs))
            }
        };
        let tls = TlsConfig::builder()
            .provider(TlsProvider::Rustls)
            .root_certs(roots)
            .build();
        let agent = ureq::Agent::config_builder()
            .proxy(None)
            .max_redirects(0)
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .timeout_global(Some(FETCH_TIMEOUT))
            .tls_config(tls)
            .user_agent(concat!("chimera-serve/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        Ok(Jwks {
            issuer: cfg.issuer.clone(),
            jwks_uri: cfg.jwks_uri.clone(),
            agent,
            min_refresh: Duration::from_secs(cfg.jwks_min_refresh_s),
            every: Duration::from_secs(cfg.jwks_refresh_s),
            keys: RwLock::new(KeySet::default()),
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    /// The key `kid`: from the cache, else after one fetch if the last one is at least
    /// `jwks_min_refresh_s` old (callers arriving during a fetch wait for it).
    pub(crate) async fn key(&self, kid: &str) -> Result<Arc<ProviderKey>, KeyLookup> {
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        self.refresh().await;
        if let Some(k) = self.cached(kid) {
            return Ok(k);
        }
        let set = self.keys.read().unwrap_or_else(|p| p.into_inner());
        Err(if set.loaded {
            KeyLookup::Unknown
        } else {
            KeyLookup::NotLoaded
        })
    }

    fn cached(&self, kid: &str) -> Option<Arc<ProviderKey>> {
        let set = self.keys.read().unwrap_or_else(|p| p.into_inner());
        set.keys.get(kid).cloned()
    }

    fn loaded(&self) -> bool {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).loaded
    }

    /// Fetches the key set unless a fetch started less than `jwks_min_refresh_s` ago;
    /// returns whether it fetched. A fetch that fails is logged and keeps the keys held;
    /// one that succeeds replaces them (keys the provider dropped stop working).
    pub(crate) async fn refresh(&self) -> bool {
        let mut last = self.fetching.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.min_refresh) {
            return false;
        }
        *last = Some(Instant::now());
        let (agent, issuer, uri) = (
            self.agent.clone(),
            self.issuer.clone(),
            self.jwks_uri.clone(),
        );
        let fetched = tokio::task::spawn_blocking(move || fetch(&agent, &issuer, uri.as_deref()))
            .await
            .unwrap_or_else(|e| Err(format!("JWKS fetch task: {e}")));
        match fetched {
            Ok((from, keys, skipped)) => {
                for s in &skipped {
                    eprintln!("chimera serve: oidc: {from}: key skipped: {s}");
                }
                eprintln!(
                    "chimera serve: oidc: {} signing keys from {from}",
                    keys.len()
                );
                let mut set = self.keys.write().unwrap_or_else(|p| p.into_inner());
                set.keys = keys
                    .into_iter()
                    .map(|k| (k.kid.clone(), Arc::new(k)))
                    .collect();
                set.loaded = true;
            }
            Err(e) => eprintln!("chimera serve: oidc: keys not refreshed: {e}"),
        }
        true
    }

    /// Fetches now and then every `jwks_refresh_s` (every `jwks_min_refresh_s` until a
    /// first fetch succeeds), for as long as the runtime runs.
    pub(crate) fn spawn_refresher(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                me.refresh().await;
                let wait = if me.loaded() {
                    me.every
                } else {
                    me.min_refresh
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

/// `GET url` as JSON, at most `limit` bytes, status 200 only.
fn get_json(agent: &ureq::Agent, url: &str, limit: u64) -> Result<Value, String> {
    let mut resp = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status().as_u16();
    if status != 200 {
        return Err(format!("GET {url}: HTTP {status}"));
    }
    let body = resp
        .body_mut()
        .with_config()
        .limit(limit)
        .read_to_vec()
        .map_err(|e| format!("GET {url}: {e} (at most {limit} bytes are read)"))?;
    serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

/// The JWKS URL: the configured one, or the discovery document's (whose `issuer` must be
/// the configured issuer, OpenID Connect Discovery §4.3).
fn jwks_url(agent: &ureq::Agent, issuer: &str, configured: Option<&str>) -> Result<String, String> {
    if let Some(u) = configured {
        return Ok(u.to_string());
    }
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let doc = get_json(agent, &url, MAX_DISCOVERY_BYTES)?;
    if doc["issuer"].as_str() != Some(issuer) {
        return Err(format!(
            "{url}: its issuer is {}, not the configured {issuer:?}",
            doc["issuer"]
        ));
    }
    let jwks = doc["jwks_uri"]
        .as_str()
        .ok_or_else(|| format!("{url}: no jwks_uri"))?;
    check_provider_url(jwks).map_err(|e| format!("{url}: jwks_uri: {e}"))?;
    Ok(jwks.to_string())
}

/// Fetches the key set: the URL it came from, the usable keys, and why others were skipped.
fn fetch(
    agent: &ureq::Agent,
    issuer: &str,
    configured: Option<&str>,
) -> Result<(String, Vec<ProviderKey>, Vec<String>), String> {
    let url = jwks_url(agent, issuer, configured)?;
    let set = get_json(agent, &url, MAX_JWKS_BYTES)?;
    let (keys, skipped) = parse_key_set(&set).map_err(|e| format!("{url}: {e}"))?;
    Ok((url, keys, skipped))
}

/// The usable signature keys of a JWKS document, and a reason for each key skipped.
pub(crate) fn parse_key_set(set: &Value) -> Result<(Vec<ProviderKey>, Vec<String>), String> {
    let list = set["keys"]
        .as_array()
        .ok_or("not a JWKS (no \"keys\" list)")?;
    if list.len() > MAX_KEYS {
        return Err(format!(
            "{} keys, more than the {MAX_KEYS} accepted",
            list.len()
        ));
    }
    let (mut keys, mut skipped) = (Vec::<ProviderKey>::new(), vec![]);
    for (i, v) in list.iter().enumerate() {
        match parse_key(v) {
            Ok(k) if keys.iter().any(|o| o.kid == k.kid) => {
                skipped.push(format!("key {i}: kid {:?} appears twice", k.kid))
            }
            Ok(k) => keys.push(k),
            Err(e) => skipped.push(format!("key {i}: {e}")),
        }
    }
    Ok((keys, skipped))
}

/// One JWK, if it is a signature verification key this service can use.
fn parse_key(v: &Value) -> Result<ProviderKey, String> {
    let jwk: Jwk = serde_json::from_value(v.clone()).map_err(|e| format!("not a JWK: {e}"))?;
    let kid = jwk
        .common
        .key_id
        .clone()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES)
        .ok_or_else(|| format!("no kid, or one over {MAX_KID_BYTES} bytes"))?;
    if let Some(u) = &jwk.common.public_key_use
        && *u != PublicKeyUse::Signature
    {
        return Err(format!("kid {kid:?}: \"use\" is not \"sig\""));
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = base64_url(&p.n).map_err(|e| format!("kid {kid:?}: n: {e}"))?;
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8 - n[i].leading_zeros() as usize);
            if !RSA_BITS.contains(&bits) {
                return Err(format!(
                    "kid {kid:?}: a {bits}-bit RSA key (accepted: {} to {} bits)",
                    RSA_BITS.start(),
                    RSA_BITS.end()
                ));
            }
            KeyKind::Rsa
        }
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            ref c => return Err(format!("kid {kid:?}: EC curve {c:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKey(_) => {
            return Err(format!(
                "kid {kid:?}: a symmetric (oct) key is never used to verify"
            ));
        }
        _ => return Err(format!("kid {kid:?}: not an RSA, EC or Ed25519 key")),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(a @ (KeyAlgorithm::HS256 | KeyAlgorithm::HS384 | KeyAlgorithm::HS512)) => {
            return Err(format!("kid {kid:?}: alg {a} is symmetric"));
        }
        Some(a) => Some(
            Algorithm::try_from(a)
                .map_err(|_| format!("kid {kid:?}: alg {a} is not a signature algorithm"))?,
        ),
    };
    if let Some(a) = alg
        && !kind.signs_with(a)
    {
        return Err(format!(
            "kid {kid:?}: alg {a:?} does not fit a {} key",
            kind.describe()
        ));
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("kid {kid:?}: {e}"))?;
    // Build a verifier once now, so that a key that cannot verify (an EC point off its
    // curve, a malformed modulus) is skipped here rather than failing every request.
    let provider = jsonwebtoken::crypto::CryptoProvider::try_get_default()
        .ok_or("no JWT crypto provider built in")?;
    (provider.verifier_factory)(&alg.unwrap_or(kind.probe()), &key)
        .map_err(|e| format!("kid {kid:?}: unusable key: {e}"))?;
    Ok(ProviderKey {
        kid,
        kind,
        alg,
        key,
    })
}

fn base64_url(s: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A P-256 public key (the generator point): valid on the curve.
    fn p256_jwk(kid: &str) -> Value {
        json!({
            "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
            "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU",
        })
    }

    #[test]
    fn only_signature_keys_this_service_can_verify_with_are_kept() {
        let set = json!({ "keys": [
            p256_jwk("ec-1"),
            { "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" },
            { "kty": "RSA", "kid": "small", "n": "AQAB", "e": "AQAB" },
            p256_jwk("ec-1"),
            { "kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc",
              "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
              "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU" },
            { "kty": "EC", "crv": "P-256", "kid": "off-curve",
              "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
              "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfA" },
            { "kty": "EC", "crv": "P-256", "kid": "wrong-alg", "alg": "RS256",
              "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
              "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU" },
            { "kty": "EC", "crv": "P-256",
              "x": "axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
              "y": "T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU" },
            { "kty": "XYZ", "kid": "odd" },
        ]});
        let (keys, skipped) = parse_key_set(&set).unwrap();
        let kids: Vec<&str> = keys.iter().map(|k| k.kid.as_str()).collect();
        assert_eq!(kids, ["ec-1"]);
        let text = skipped.join("\n");
        for why in [
            "symmetric",
            "bit RSA key",
            "appears twice",
            "\"use\"",
            "unusable",
            "does not fit",
            "no kid",
            "\"odd\"",
        ] {
            assert!(text.contains(why), "{why} not in {text}");
        }
        let k = &keys[0];
        assert!(k.admits(Algorithm::ES256).is_ok());
        assert!(k.admits(Algorithm::RS256).unwrap_err().contains("EC P-256"));
        assert!(k.admits(Algorithm::HS256).is_err());
    }

    #[test]
    fn oversized_key_sets_are_refused_whole() {
        let many: Vec<Value> = (0..=MAX_KEYS).map(|i| p256_jwk(&format!("k{i}"))).collect();
        let e = parse_key_set(&json!({ "keys": many })).err().unwrap();
        assert!(e.contains("more than"), "{e}");
        assert!(parse_key_set(&json!({ "nokeys": [] })).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let cfg: OidcConfig = serde_json::from_value(json!({
            "issuer": "https://id.example", "audience": "chimera", "ca_file": ca,
        }))
        .unwrap();
        let e = Jwks::new(&cfg).err().unwrap().to_string();
        assert!(
            e.contains("ca.pem") && e.contains("no PEM certificate"),
            "{e}"
        );
        let missing: OidcConfig = serde_json::from_value(json!({
            "issuer": "https://id.example", "audience": "chimera",
            "ca_file": dir.path().join("absent.pem"),
        }))
        .unwrap();
        assert!(Jwks::new(&missing).is_err());
    }
}
