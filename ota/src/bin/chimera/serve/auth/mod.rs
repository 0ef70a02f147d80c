//! Who is calling: the bearer value of a request becomes a [`Caller`] (an audit actor and a
//! role) or a [`Refusal`] that names the failed check. Two kinds of bearer tokens:
//!
//! - API tokens (`chimera_` + 256 random bits, for tools and CI): looked up by SHA-256 in
//!   the store; refused when unknown, revoked or expired. The actor is `token:NAME`.
//! - With `oidc:` configured, JWTs of that provider ([`oidc`], keys from [`jwks`]). The
//!   actor is `oidc:SUB`.
//!
//! What it must not do: echo a token (or any part of it) in an answer or a log; let a
//! caller's token pick where verification keys come from; decide what a role may do (the
//! route table does, in `api.rs`).

pub(crate) mod jwks;
pub(crate) mod oidc;

use axum::http::{HeaderValue, StatusCode};

use super::store::{Role, Store, TokenInfo, now_ms};
use oidc::OidcVerifier;

/// What every API token starts with.
pub(crate) const API_TOKEN_PREFIX: &str = "chimera_";

/// Longest `Authorization` value looked at (an API token is 79 characters; JWTs with many
/// groups run to a few KiB).
pub(crate) const MAX_AUTHORIZATION_BYTES: usize = 16 * 1024;

/// Who called (put in the request by the auth middleware).
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// The audit actor: `token:NAME` or `oidc:SUB`.
    pub(crate) actor: String,
    /// Its role.
    pub(crate) role: Role,
}

impl Caller {
    /// The audit actor.
    pub(crate) fn actor(&self) -> String {
        self.actor.clone()
    }
}

/// Why a request was not let through: its status (401; 403 for a valid JWT that maps to
/// no role; 503 while the provider's keys are not loaded; 500 when the store failed), the
/// check that failed, and a message that names it without echoing the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The answer's status.
    pub(crate) status: StatusCode,
    /// The check: `authorization`, `token`, `revoked`, `exp`, a JWT check
    /// ([`oidc::JwtRefusal`]), `role`.
    pub(crate) check: &'static str,
    /// What was wrong.
    pub(crate) message: String,
}

impl Refusal {
    fn unauthorized(check: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status: StatusCode::UNAUTHORIZED,
            check,
            message: message.into(),
        }
    }
}

/// Where an API token stands at `now_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenState {
    /// It works.
    Active,
    /// Its expiry has passed.
    Expired,
    /// It was revoked.
    Revoked,
}

impl TokenState {
    /// The word `token list` shows.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenState::Active => "active",
            TokenState::Expired => "expired",
            TokenState::Revoked => "revoked",
        }
    }
}

/// Where `t` stands at `now_ms` (revocation first: a revoked token stays revoked).
pub(crate) fn token_state(t: &TokenInfo, now_ms: i64) -> TokenState {
    if t.revoked_at.is_some() {
        TokenState::Revoked
    } else if t.expires_at.is_some_and(|e| e <= now_ms) {
        TokenState::Expired
    } else {
        TokenState::Active
    }
}

/// Unix milliseconds as RFC 3339 UTC (seconds).
pub(crate) fn rfc3339_ms(ms: i64) -> String {
    aegis_ota::maml::format_time(ms.div_euclid(1000))
}

/// The bearer value of an `Authorization` header, if it has a usable one.
fn bearer(authorization: Option<&HeaderValue>) -> Option<&str> {
    authorization
        .filter(|v| v.len() <= MAX_AUTHORIZATION_BYTES)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .filter(|t| !t.is_empty())
}

/// The caller an `Authorization` header speaks for.
pub(crate) async fn identify(
    store: &dyn Store,
    oidc: Option<&OidcVerifier>,
    authorization: Option<&HeaderValue>,
) -> Result<Caller, Refusal> {
    let Some(token) = bearer(authorization) else {
        return Err(Refusal::unauthorized(
            "authorization",
            "this route needs `Authorization: Bearer <API token or JWT>`",
        ));
    };
    if token.starts_with(API_TOKEN_PREFIX) {
        return api_token(store, token).await;
    }
    if !oidc::looks_like_jwt(token) {
        return Err(Refusal::unauthorized(
            "token",
            "the bearer value is neither an API token (chimera_…) nor a JWT",
        ));
    }
    let Some(oidc) = oidc else {
        return Err(Refusal::unauthorized(
            "token",
            "this service accepts no JWTs (serve.yaml has no oidc section)",
        ));
    };
    let identity = oidc.verify(token).await.map_err(|r| Refusal {
        status: if r.check == "jwks" {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::UNAUTHORIZED
        },
        check: r.check,
        message: format!("JWT refused: {r}"),
    })?;
    let actor = format!("oidc:{}", identity.subject);
    match identity.role {
        Ok(role) => Ok(Caller { actor, role }),
        Err(why) => Err(Refusal {
            status: StatusCode::FORBIDDEN,
            check: "role",
            message: format!("{actor} ({}): {why}", oidc.issuer()),
        }),
    }
}

async fn api_token(store: &dyn Store, token: &str) -> Result<Caller, Refusal> {
    let info = match store.token(super::service::token_hash(token)).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Refusal::unauthorized("token", "unknown API token")),
        Err(e) => {
            eprintln!("chimera serve: {e}");
            return Err(Refusal {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                check: "store",
                message: "internal error (logged)".into(),
            });
        }
    };
    match token_state(&info, now_ms()) {
        TokenState::Active => Ok(Caller {
            actor: format!("token:{}", info.name),
            role: info.role,
        }),
        TokenState::Revoked => Err(Refusal::unauthorized(
            "revoked",
            format!(
                "API token {:?} was revoked at {}",
                info.name,
                rfc3339_ms(info.revoked_at.unwrap_or_default())
            ),
        )),
        TokenState::Expired => Err(Refusal::unauthorized(
            "exp",
            format!(
                "API token {:?} expired at {}",
                info.name,
                rfc3339_ms(info.expires_at.unwrap_or_default())
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocation_outranks_expiry() {
        let t = |expires_at, revoked_at| TokenInfo {
            name: "ci".into(),
            role: Role::Viewer,
            created_at: 0,
            expires_at,
            revoked_at,
        };
        assert_eq!(token_state(&t(None, None), 5), TokenState::Active);
        assert_eq!(token_state(&t(Some(6), None), 5), TokenState::Active);
        assert_eq!(token_state(&t(Some(5), None), 5), TokenState::Expired);
        assert_eq!(token_state(&t(Some(1), Some(2)), 5), TokenState::Revoked);
    }

    #[test]
    fn only_bearer_values_are_read() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(Some(&h("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&h("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(Some(&h("Basic abc"))), None);
        assert_eq!(bearer(Some(&h("Bearer "))), None);
        assert_eq!(bearer(None), None);
        let long = format!("Bearer {}", "a".repeat(MAX_AUTHORIZATION_BYTES));
        assert_eq!(bearer(Some(&h(&long))), None);
    }
}
