//! OIDC/OAuth2 bearer tokens: JWTs signed by the configured provider, checked against its
//! JWKS ([`super::jwks`]), mapped to a role through a configured claim.
//!
//! The checks, in order, each with the name a refusal carries (`check`):
//! `token` (three base64url parts, a JSON header, no `crit` extensions), `alg` (in the
//! configured allow-list: asymmetric algorithms only, so never `none` nor `HS*`), `kid`
//! (present, and a key of the provider's JWKS), `key` (the key's type, and its own `alg`,
//! fit the header's `alg`), `signature`, then the claims: `exp` (required), `nbf`, `iss`
//! (the configured issuer, required), `aud` (contains the configured audience, required),
//! `sub` (required: the caller is `oidc:<sub>`). The role claim is read only from a token
//! that passed all of these.
//!
//! With `audience_claim: client_id` (AWS Cognito's access tokens carry `client_id` and no
//! `aud`), `aud` is not looked at; instead `client_id` (required, a string equal to the
//! configured audience) and `token_use` (when present, `access`: a Cognito ID token, whose
//! `aud` is the same client id, is refused where access tokens are configured) are
//! checked after `iss`. A token with neither `aud` nor `client_id` passes in no mode.
//!
//! `jsonwebtoken`'s defaults are permissive (`iss`/`aud` checked only when present, a 60 s
//! leeway); everything is set explicitly here.

use std::collections::BTreeMap;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{Jwks, KeyLookup, MAX_KID_BYTES};
use crate::serve::config::{AudienceClaim, JwtAlgorithm, OidcConfig};
use crate::serve::store::Role;

/// Longest `sub` accepted (it becomes the audit actor).
const MAX_SUBJECT_BYTES: usize = 255;
/// Longest encoded JWT header looked at.
const MAX_HEADER_CHARS: usize = 4096;

/// Why a JWT was refused: the check that failed and what was wrong. Never carries the
/// token, its signature or its claims' values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JwtRefusal {
    /// The check (see the module documentation); `jwks` when the provider's keys are not
    /// loaded yet (the service, not the token, is at fault: 503).
    pub(crate) check: &'static str,
    /// What was wrong.
    pub(crate) reason: String,
}

impl JwtRefusal {
    fn new(check: &'static str, reason: impl Into<String>) -> JwtRefusal {
        JwtRefusal {
            check,
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for JwtRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.check, self.reason)
    }
}

/// Who a valid JWT speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OidcIdentity {
    /// Its `sub`.
    pub(crate) subject: String,
    /// The highest role its role claim maps to, or why it maps to none.
    pub(crate) role: Result<Role, String>,
}

/// The JWT checker of one provider.
pub(crate) struct OidcVerifier {
    jwks: Arc<Jwks>,
    issuer: String,
    audience: String,
    audience_claim: AudienceClaim,
    algorithms: Vec<Algorithm>,
    leeway_s: u64,
    roles_claim: String,
    roles: BTreeMap<String, Role>,
}

/// The header fields looked at before any key is chosen.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::RS384 => Algorithm::RS384,
        JwtAlgorithm::RS512 => Algorithm::RS512,
        JwtAlgorithm::PS256 => Algorithm::PS256,
        JwtAlgorithm::PS384 => Algorithm::PS384,
        JwtAlgorithm::PS512 => Algorithm::PS512,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::ES384 => Algorithm::ES384,
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
    }
}

/// Whether `token` is shaped like a JWS compact serialisation (three non-empty-header
/// base64url parts): how a bearer value is told from an API token.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl OidcVerifier {
    /// The verifier of `cfg`'s provider, over `jwks` (which the caller keeps fresh).
    pub(crate) fn new(cfg: &OidcConfig, jwks: Arc<Jwks>) -> OidcVerifier {
        OidcVerifier {
            jwks,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            audience_claim: cfg.audience_claim,
            algorithms: cfg.algorithms.iter().copied().map(algorithm).collect(),
            leeway_s: cfg.leeway_s,
            roles_claim: cfg.roles_claim.clone(),
            roles: cfg.roles.clone(),
        }
    }

    /// The issuer it accepts tokens of.
    pub(crate) fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Checks `token` (see the module documentation for the order of the checks).
    pub(crate) async fn verify(&self, token: &str) -> Result<OidcIdentity, JwtRefusal> {
        let header = raw_header(token)?;
        let Some(alg) = self
            .algorithms
            .iter()
            .copied()
            .find(|a| format!("{a:?}") == header.alg)
        else {
            let allowed: Vec<String> = self.algorithms.iter().map(|a| format!("{a:?}")).collect();
            return Err(JwtRefusal::new(
                "alg",
                format!(
                    "{:?} is not accepted (accepted: {})",
                    header.alg.chars().take(16).collect::<String>(),
                    allowed.join(", ")
                ),
            ));
        };
        let kid = header
            .kid
            .filter(|k| !k.is_empty() && k.len() <= MAX_KID_BYTES)
            .ok_or_else(|| {
                JwtRefusal::new("kid", "the header names no key id (kid), or a too long one")
            })?;
        let key = self.jwks.key(&kid).await.map_err(|e| match e {
            KeyLookup::NotLoaded => JwtRefusal::new(
                "jwks",
                "the provider's signing keys are not loaded yet (the service log says why)",
            ),
            KeyLookup::Unknown => {
                JwtRefusal::new("kid", format!("{kid:?} is not a key of {}", self.issuer))
            }
        })?;
        key.admits(alg).map_err(|e| JwtRefusal::new("key", e))?;
        let mut v = Validation::new(alg);
        v.leeway = self.leeway_s;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_issuer(&[&self.issuer]);
        match self.audience_claim {
            AudienceClaim::Aud => {
                v.validate_aud = true;
                v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                v.set_audience(&[&self.audience]);
            }
            AudienceClaim::ClientId => {
                // Checked below, on `client_id`; jsonwebtoken knows only `aud`.
                v.validate_aud = false;
                v.set_required_spec_claims(&["exp", "iss", "sub"]);
            }
        }
        let data = jsonwebtoken::decode::<Value>(token, &key.key, &v)
            .map_err(|e| self.refusal(e.kind(), &kid))?;
        // RFC 7519 makes `iss` one string; jsonwebtoken would also take a list holding it.
        if data.claims["iss"].as_str() != Some(self.issuer.as_str()) {
            return Err(JwtRefusal::new(
                "iss",
                format!("the issuer is not {}", self.issuer),
            ));
        }
        if self.audience_claim == AudienceClaim::ClientId {
            self.check_access_token(&data.claims)?;
        }
        let subject = data.claims["sub"]
            .as_str()
            .filter(|s| {
                !s.is_empty() && s.len() <= MAX_SUBJECT_BYTES && !s.chars().any(char::is_control)
            })
            .ok_or_else(|| {
                JwtRefusal::new(
                    "sub",
                    format!("sub must be 1 to {MAX_SUBJECT_BYTES} bytes of text"),
                )
            })?
            .to_string();
        Ok(OidcIdentity {
            subject,
            role: self.role_of(&data.claims),
        })
    }

    /// `audience_claim: client_id`: the token is an access token of the configured client.
    fn check_access_token(&self, claims: &Value) -> Result<(), JwtRefusal> {
        match &claims["client_id"] {
            Value::String(c) if *c == self.audience => {}
            Value::Null => {
                return Err(JwtRefusal::new(
                    "client_id",
                    "no client_id claim (required: oidc.audience_claim is client_id)",
                ));
            }
            _ => {
                return Err(JwtRefusal::new(
                    "client_id",
                    format!("the client_id is not {:?}", self.audience),
                ));
            }
        }
        match &claims["token_use"] {
            Value::Null => Ok(()),
            Value::String(u) if u == "access" => Ok(()),
            Value::String(u) if u == "id" => Err(JwtRefusal::new(
                "token_use",
                "an ID token; this service takes access tokens (oidc.audience_claim is \
                 client_id)",
            )),
            _ => Err(JwtRefusal::new("token_use", "token_use is not \"access\"")),
        }
    }

    /// The refusal for a `jsonwebtoken` error.
    fn refusal(&self, kind: &ErrorKind, kid: &str) -> JwtRefusal {
        let claim = |c: &str| match c {
            "exp" => "exp",
            "nbf" => "nbf",
            "iss" => "iss",
            "aud" => "aud",
            "sub" => "sub",
            _ => "claims",
        };
        match kind {
            ErrorKind::InvalidSignature => JwtRefusal::new(
                "signature",
                format!("it does not verify with {kid:?} of {}", self.issuer),
            ),
            ErrorKind::ExpiredSignature => JwtRefusal::new(
                "exp",
                format!("the token has expired (leeway {} s)", self.leeway_s),
            ),
            ErrorKind::ImmatureSignature => JwtRefusal::new(
                "nbf",
                format!("the token is not valid yet (leeway {} s)", self.leeway_s),
            ),
            ErrorKind::InvalidIssuer => {
                JwtRefusal::new("iss", format!("the issuer is not {}", self.issuer))
            }
            ErrorKind::InvalidAudience => JwtRefusal::new(
                "aud",
                format!("the audience does not include {:?}", self.audience),
            ),
            ErrorKind::MissingRequiredClaim(c) => {
                JwtRefusal::new(claim(c), format!("no {c} claim (required)"))
            }
            ErrorKind::InvalidClaimFormat(c) => {
                JwtRefusal::new(claim(c), format!("the {c} claim is malformed"))
            }
            ErrorKind::InvalidAlgorithm
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey => {
                JwtRefusal::new("key", format!("{kid:?} cannot check this token"))
            }
            _ => JwtRefusal::new("token", "not a well-formed JWT"),
        }
    }

    /// The highest role the role claim's values map to.
    fn role_of(&self, claims: &Value) -> Result<Role, String> {
        let name = &self.roles_claim;
        let value = if name.starts_with('/') {
            claims.pointer(name)
        } else {
            claims.get(name)
        };
        let values: Vec<&str> = match value {
            None => return Err(format!("the token has no {name:?} claim")),
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(_) => {
                return Err(format!(
                    "the {name:?} claim is not a string or a list of strings"
                ));
            }
        };
        values
            .iter()
            .filter_map(|v| self.roles.get(*v))
            .max()
            .copied()
            .ok_or_else(|| {
                format!(
                    "no value of its {name:?} claim maps to a role here (serve.yaml: oidc.roles)"
                )
            })
    }
}

/// The header of a JWS compact token, checked for shape; no key is involved yet.
fn raw_header(token: &str) -> Result<RawHeader, JwtRefusal> {
    use base64::Engine as _;
    let malformed = |why: &str| JwtRefusal::new("token", format!("not a well-formed JWT: {why}"));
    if !looks_like_jwt(token) {
        return Err(malformed("three base64url parts separated by dots"));
    }
    let encoded = token.split('.').next().unwrap_or_default();
    if encoded.is_empty() || encoded.len() > MAX_HEADER_CHARS {
        return Err(malformed("header size"));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| malformed("the header is not base64url"))?;
    let header: RawHeader =
        serde_json::from_slice(&bytes).map_err(|_| malformed("the header is not JSON with alg"))?;
    if header.crit.is_some() {
        return Err(JwtRefusal::new(
            "token",
            "the header lists critical extensions (crit), which this service does not implement",
        ));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(roles_claim: &str, roles: &[(&str, Role)]) -> OidcVerifier {
        let cfg: OidcConfig = serde_json::from_value(serde_json::json!({
            "issuer": "http://127.0.0.1:1/", "audience": "chimera", "roles_claim": roles_claim,
            "roles": roles.iter().map(|(k, r)| (k.to_string(), r.as_str())).collect::<BTreeMap<_, _>>(),
        }))
        .unwrap();
        OidcVerifier::new(&cfg, Arc::new(Jwks::new(&cfg).unwrap()))
    }

    #[test]
    fn the_highest_mapped_role_wins_and_unmapped_values_grant_nothing() {
        let v = verifier(
            "cognito:groups",
            &[("ops", Role::Operator), ("auditors", Role::Viewer)],
        );
        let c = |v: Value| serde_json::json!({ "cognito:groups": v });
        assert_eq!(
            v.role_of(&c(serde_json::json!(["auditors", "ops", "x"]))),
            Ok(Role::Operator)
        );
        assert_eq!(
            v.role_of(&c(serde_json::json!("auditors"))),
            Ok(Role::Viewer)
        );
        assert!(v.role_of(&c(serde_json::json!(["admin"]))).is_err());
        assert!(v.role_of(&c(serde_json::json!(5))).is_err());
        assert!(v.role_of(&serde_json::json!({})).is_err());
        let nested = verifier("/realm_access/roles", &[("boss", Role::Admin)]);
        assert_eq!(
            nested.role_of(&serde_json::json!({ "realm_access": { "roles": ["boss"] } })),
            Ok(Role::Admin)
        );
    }

    #[test]
    fn client_id_mode_takes_access_tokens_of_the_configured_client_only() {
        let mut v = verifier("roles", &[("admin", Role::Admin)]);
        v.audience_claim = AudienceClaim::ClientId;
        let check = |claims: Value| v.check_access_token(&claims).map_err(|e| e.check);
        assert_eq!(
            check(serde_json::json!({ "client_id": "chimera", "token_use": "access" })),
            Ok(())
        );
        assert_eq!(check(serde_json::json!({ "client_id": "chimera" })), Ok(()));
        for (claims, refused) in [
            (serde_json::json!({ "client_id": "other" }), "client_id"),
            (serde_json::json!({ "client_id": ["chimera"] }), "client_id"),
            (serde_json::json!({ "aud": "chimera" }), "client_id"),
            (serde_json::json!({}), "client_id"),
            (
                serde_json::json!({ "client_id": "chimera", "token_use": "id" }),
                "token_use",
            ),
            (
                serde_json::json!({ "client_id": "chimera", "token_use": 1 }),
                "token_use",
            ),
        ] {
            assert_eq!(check(claims.clone()), Err(refused), "{claims}");
        }
    }

    #[tokio::test]
    async fn malformed_headers_are_refused_before_any_key_is_looked_up() {
        use base64::Engine as _;
        let v = verifier("roles", &[("admin", Role::Admin)]);
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let with_header = |h: &str| format!("{}.{}.sig", b64(h), b64("{}"));
        for (token, check) in [
            ("chimera_abc".to_string(), "token"),
            ("a.b".to_string(), "token"),
            (with_header("not json"), "token"),
            (with_header(r#"{"alg":"none"}"#), "alg"),
            (with_header(r#"{"alg":"HS256","kid":"k"}"#), "alg"),
            (with_header(r#"{"alg":"RS256"}"#), "kid"),
            (
                with_header(r#"{"alg":"RS256","kid":"k","crit":["b64"]}"#),
                "token",
            ),
        ] {
            let e = v.verify(&token).await.unwrap_err();
            assert_eq!(e.check, check, "{token}: {e}");
        }
    }
}
