//! A local OpenID Connect provider for the `chimera serve` tests: its discovery document
//! and JWKS served over HTTP on a free loopback port (axum on a thread of its own), signing
//! keys generated here (RSA-2048, EC P-256), JWTs minted here with `jsonwebtoken`.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The audience the tests' gateways are configured with.
pub const AUDIENCE: &str = "chimera-gateway";

/// The role claim and its mapping the tests configure (Cognito-style groups).
pub const ROLES: &str = "  roles_claim: \"cognito:groups\"\n  roles:\n    \
    fleet-viewers: viewer\n    fleet-operators: operator\n    fleet-admins: admin\n";

/// The group that maps to `role` in [`ROLES`].
pub fn group(role: &str) -> &'static str {
    match role {
        "viewer" => "fleet-viewers",
        "operator" => "fleet-operators",
        "admin" => "fleet-admins",
        other => panic!("unknown role {other:?}"),
    }
}

/// The operating system's random generator, as `rsa` wants one (rand_core 0.10).
struct OsRng;

impl rsa::rand_core::TryRng for OsRng {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        getrandom::fill(dst).expect("OS random generator");
        Ok(())
    }
}

impl rsa::rand_core::TryCryptoRng for OsRng {}

/// A signing key of the test provider.
pub struct TestKey {
    /// Its key id.
    pub kid: String,
    /// The algorithm it signs with.
    pub alg: Algorithm,
    key: EncodingKey,
    /// Its public JWK (with `kid`, `alg`).
    pub jwk: Value,
}

impl TestKey {
    /// A fresh RSA-2048 key (RS256).
    pub fn rsa(kid: &str) -> TestKey {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        let private = rsa::PrivateKey::new(&mut OsRng, 2048).expect("RSA key generation");
        let der = private.to_pkcs1_der().expect("PKCS#1");
        TestKey::new(
            kid,
            Algorithm::RS256,
            EncodingKey::from_rsa_der(der.as_bytes()),
        )
    }

    /// A fresh EC P-256 key (ES256).
    pub fn p256(kid: &str) -> TestKey {
        use p256::pkcs8::EncodePrivateKey as _;
        let secret = loop {
            let mut b = [0u8; 32];
            getrandom::fill(&mut b).unwrap();
            if let Ok(k) = p256::SecretKey::from_slice(&b) {
                break k;
            }
        };
        let der = secret.to_pkcs8_der().expect("PKCS#8");
        TestKey::new(
            kid,
            Algorithm::ES256,
            EncodingKey::from_ec_der(der.as_bytes()),
        )
    }

    fn new(kid: &str, alg: Algorithm, key: EncodingKey) -> TestKey {
        let mut jwk = Jwk::from_encoding_key(&key, alg).expect("public JWK");
        jwk.common.key_id = Some(kid.to_string());
        TestKey {
            kid: kid.to_string(),
            alg,
            key,
            jwk: serde_json::to_value(jwk).unwrap(),
        }
    }

    /// `claims` signed with this key, the header naming `kid`.
    pub fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(kid.to_string());
        jsonwebtoken::encode(&h, claims, &self.key).expect("sign a JWT")
    }

    /// `claims` signed with this key, under its own kid.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    aegis_ota::maml::now_s()
}

/// The claims of a valid token of `issuer` for [`AUDIENCE`]: `sub`, the groups, valid from
/// a minute ago for five minutes.
pub fn claims(issuer: &str, sub: &str, groups: &[&str]) -> Value {
    let t = now();
    json!({
        "iss": issuer, "aud": AUDIENCE, "sub": sub, "cognito:groups": groups,
        "iat": t - 60, "nbf": t - 60, "exp": t + 300,
    })
}

/// The claims of a valid AWS Cognito *access* token of `issuer` for app client
/// [`AUDIENCE`]: `client_id` and `token_use: access`, no `aud` (Cognito's shape: `scope`,
/// `username`, `jti`, `auth_time` too).
pub fn access_claims(issuer: &str, sub: &str, groups: &[&str]) -> Value {
    let t = now();
    json!({
        "iss": issuer, "client_id": AUDIENCE, "token_use": "access", "sub": sub,
        "cognito:groups": groups, "scope": "aws.cognito.signin.user.admin",
        "username": sub, "jti": format!("jti-{sub}-{t}"), "auth_time": t - 60,
        "iat": t - 60, "exp": t + 300,
    })
}

/// Tokens refused where access tokens are configured (`audience_claim: client_id`), each
/// with the `check` named and what is wrong with it; signed with a published `key`, for
/// the admin group, so neither the signature nor the role is the reason.
pub fn refused_access_tokens(
    issuer: &Issuer,
    key: &TestKey,
) -> Vec<(&'static str, &'static str, String)> {
    let admin = [group("admin")];
    let with = |changes: Value| {
        let mut c = access_claims(&issuer.url, "mallory", &admin);
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        key.sign(&c)
    };
    vec![
        (
            "client_id",
            "of another app client",
            with(json!({ "client_id": "another-client" })),
        ),
        (
            "client_id",
            "without client_id",
            with(json!({ "client_id": null })),
        ),
        (
            "client_id",
            "a Cognito ID token (aud, token_use id, no client_id)",
            with(json!({ "client_id": null, "aud": AUDIENCE, "token_use": "id" })),
        ),
        (
            "token_use",
            "an ID token that names the client too",
            with(json!({ "aud": AUDIENCE, "token_use": "id" })),
        ),
        (
            "client_id",
            "with neither aud nor client_id",
            with(json!({ "client_id": null, "token_use": null })),
        ),
        (
            "iss",
            "of another issuer",
            with(json!({ "iss": "https://evil.example" })),
        ),
    ]
}

/// A JWS compact token made by hand: `header`, `claims`, and `signature` (base64url of it).
pub fn hand_made(header: &Value, claims: &Value, signature: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(signature)
    )
}

struct Shared {
    issuer: String,
    jwks: Mutex<Value>,
    jwks_fetches: AtomicUsize,
    up: AtomicBool,
}

/// The provider: `GET /.well-known/openid-configuration` and `GET /jwks.json` on
/// `127.0.0.1:PORT`, stopped on drop.
pub struct Issuer {
    /// Its issuer URL (`http://127.0.0.1:PORT`), the `iss` of its tokens.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

async fn discovery(State(s): State<Arc<Shared>>) -> Result<Json<Value>, StatusCode> {
    if !s.up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks.json", s.issuer),
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
    })))
}

async fn jwks(State(s): State<Arc<Shared>>) -> Result<Json<Value>, StatusCode> {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !s.up.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(Json(s.jwks.lock().unwrap().clone()))
}

impl Issuer {
    /// Starts one publishing `keys`.
    pub fn start(keys: &[&TestKey]) -> Issuer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            issuer: url.clone(),
            jwks: Mutex::new(json!({ "keys": [] })),
            jwks_fetches: AtomicUsize::new(0),
            up: AtomicBool::new(true),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .with_state(shared.clone());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        let issuer = Issuer {
            url,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        };
        issuer.publish(keys);
        issuer
    }

    /// Replaces the published key set with `keys`.
    pub fn publish(&self, keys: &[&TestKey]) {
        let list: Vec<Value> = keys.iter().map(|k| k.jwk.clone()).collect();
        *self.shared.jwks.lock().unwrap() = json!({ "keys": list });
    }

    /// How many times the JWKS was asked for.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Answer (true) or 503 to everything (false).
    pub fn set_up(&self, up: bool) {
        self.shared.up.store(up, Ordering::SeqCst);
    }

    /// The `oidc:` section of `serve.yaml` for this provider: [`AUDIENCE`], [`ROLES`], a
    /// 1 s fetch rate limit (so a test sees a refresh quickly), then `extra`.
    pub fn config(&self, extra: &str) -> String {
        format!(
            "oidc:\n  issuer: {}\n  audience: {AUDIENCE}\n  jwks_min_refresh_s: 1\n{ROLES}{extra}",
            self.url
        )
    }

    /// A valid Cognito-style access token of this provider ([`access_claims`]).
    pub fn access_token(&self, key: &TestKey, sub: &str, groups: &[&str]) -> String {
        key.sign(&access_claims(&self.url, sub, groups))
    }

    /// A valid token of this provider for `sub` with `groups`, signed with `key`.
    pub fn token(&self, key: &TestKey, sub: &str, groups: &[&str]) -> String {
        key.sign(&claims(&self.url, sub, groups))
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Tokens `issuer` never issued, or that fail a check, each with the `check` the service
/// names when it refuses them and what is wrong with it. All claim the admin group, so the
/// role is never the reason. `rsa` and `ec` are published keys; `forger` is not.
pub fn refused_jwts(
    issuer: &Issuer,
    rsa: &TestKey,
    ec: &TestKey,
    forger: &TestKey,
) -> Vec<(&'static str, &'static str, String)> {
    let admin = [group("admin")];
    let valid = || claims(&issuer.url, "mallory", &admin);
    let with = |changes: Value| {
        let mut c = valid();
        for (k, v) in changes.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c
    };
    let t = now();
    // A valid token whose claims were changed after signing.
    let tampered = {
        let good = rsa.sign(&claims(&issuer.url, "mallory", &[group("viewer")]));
        let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
        let forged = hand_made(&json!({}), &valid(), b"");
        parts[1] = forged.split('.').nth(1).unwrap().to_string();
        parts.join(".")
    };
    // The algorithm confusion attack: HS256 keyed with the provider's public key.
    let hs256 = {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(rsa.kid.clone());
        let secret = EncodingKey::from_secret(rsa.jwk.to_string().as_bytes()).unwrap();
        jsonwebtoken::encode(&h, &valid(), &secret).unwrap()
    };
    vec![
        (
            "exp",
            "expired",
            rsa.sign(&with(json!({ "exp": t - 3600, "nbf": t - 7200 }))),
        ),
        (
            "exp",
            "without exp",
            rsa.sign(&with(json!({ "exp": null }))),
        ),
        (
            "nbf",
            "not valid yet",
            rsa.sign(&with(json!({ "nbf": t + 3600, "exp": t + 7200 }))),
        ),
        (
            "signature",
            "signed by another key under a published kid",
            forger.sign_as(&rsa.kid, &valid()),
        ),
        ("signature", "claims changed after signing", tampered),
        (
            "aud",
            "for another audience",
            ec.sign(&with(json!({ "aud": "another-api" }))),
        ),
        (
            "aud",
            "for a list of other audiences",
            ec.sign(&with(json!({ "aud": ["a", "b"] }))),
        ),
        ("aud", "without aud", ec.sign(&with(json!({ "aud": null })))),
        (
            "iss",
            "of another issuer",
            rsa.sign(&with(json!({ "iss": "https://evil.example" }))),
        ),
        (
            "iss",
            "of a list of issuers",
            rsa.sign(&with(
                json!({ "iss": [issuer.url, "https://evil.example"] }),
            )),
        ),
        (
            "sub",
            "without sub",
            rsa.sign(&with(json!({ "sub": null }))),
        ),
        (
            "alg",
            "alg none",
            hand_made(&json!({ "alg": "none", "kid": rsa.kid }), &valid(), b""),
        ),
        ("alg", "HS256 keyed with the public key", hs256),
        (
            "kid",
            "naming a key the provider does not have",
            forger.sign_as("unpublished", &valid()),
        ),
        (
            "kid",
            "naming no key",
            hand_made(&json!({ "alg": "RS256" }), &valid(), b"x"),
        ),
        (
            "key",
            "RS256 naming the EC key",
            forger.sign_as(&ec.kid, &valid()),
        ),
        ("token", "not base64url JSON", "eyJ.eyJ.x".to_string()),
    ]
}
