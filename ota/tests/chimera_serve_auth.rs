//! `chimera serve` authentication beyond the per-route sweep of `chimera_serve.rs`: OIDC
//! bearer tokens of a local provider (its JWKS fetched, refreshed on an unknown key id at a
//! bounded rate, rotated keys picked up, retired keys dropped; the service up before its
//! provider), the JWT caller as the audit actor, AWS Cognito access tokens (`client_id`,
//! no `aud`), and API tokens that expire and are revoked through the CLI while the service
//! runs.
#![cfg(feature = "gateway")]

mod common;

use std::time::{Duration, Instant};

use common::oidc::{Issuer, TestKey, group, refused_access_tokens};
use common::serve::{Gateway, chimera, ok};
use serde_json::{Value, json};

/// Calls `f` until it returns Some, at most `within` (a hang guard, not a speed check).
fn eventually<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn jwt_callers_act_under_their_subject_with_their_mapped_role() {
    let gw = Gateway::new();
    let key = TestKey::p256("ec-1");
    let idp = Issuer::start(&[&key]);
    gw.write_config(&idp.config(""));
    let s = gw.start();
    let viewer = idp.token(&key, "vera", &[group("viewer")]);
    let operator = idp.token(&key, "otto", &[group("viewer"), group("operator")]);
    let admin = idp.token(&key, "ada", &[group("admin")]);
    let upload = |token: &str| {
        s.bearer(
            "POST",
            "/api/v1/workflows",
            token,
            Some(&json!({ "document": "not signed" }).to_string()),
        )
    };
    // A viewer reads, and can neither upload nor publish.
    assert_eq!(s.bearer("GET", "/api/v1/devices", &viewer, None).0, 200);
    let (st, b) = upload(&viewer);
    assert_eq!(st, 403, "{b}");
    assert!(b["error"].as_str().unwrap().contains("oidc:vera"), "{b}");
    let publish = format!("/api/v1/workflows/{}/publish", "a".repeat(64));
    let (st, b) = s.bearer("POST", &publish, &viewer, Some(r#"{"to":"cam-1"}"#));
    assert_eq!(st, 403, "{b}");
    // The highest of an operator's groups counts; its upload is refused on its merits and
    // audited under its subject.
    let (st, b) = upload(&operator);
    assert_eq!((st, &b["check"]), (422, &json!("format")), "{b}");
    assert_eq!(s.bearer("GET", "/api/v1/audit", &operator, None).0, 403);
    let (st, audit) = s.bearer("GET", "/api/v1/audit?limit=5", &admin, None);
    assert_eq!(st, 200);
    let refused = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["action"] == "workflow.refused")
        .unwrap_or_else(|| panic!("no workflow.refused in {audit}"));
    assert_eq!(refused["actor"], "oidc:otto");
    // The service.start row says which provider it trusts.
    let (_, audit) = s.bearer("GET", "/api/v1/audit", &admin, None);
    assert!(audit.to_string().contains(&idp.url), "{audit}");
}

#[test]
fn cognito_access_tokens_are_taken_by_client_id_only_where_configured() {
    let gw = Gateway::new();
    let key = TestKey::rsa("cognito-1");
    let idp = Issuer::start(&[&key]);
    let access = idp.access_token(&key, "otto", &[group("operator")]);
    let devices =
        |s: &common::serve::Server, token: &str| s.bearer("GET", "/api/v1/devices", token, None);
    // By default the audience is `aud`: an access token without one is refused.
    gw.write_config(&idp.config(""));
    let s = gw.start();
    let (st, b) = devices(&s, &access);
    assert_eq!((st, &b["check"]), (401, &json!("aud")), "{b}");
    drop(s);

    gw.write_config(&idp.config("  audience_claim: client_id\n"));
    let s = gw.start();
    // The app client's access token: its groups give the role, its subject is the actor.
    assert_eq!(devices(&s, &access).0, 200);
    let (st, b) = s.bearer(
        "POST",
        "/api/v1/workflows",
        &access,
        Some(&json!({ "document": "not signed" }).to_string()),
    );
    assert_eq!((st, &b["check"]), (422, &json!("format")), "{b}");
    let (_, audit) = s.bearer("GET", "/api/v1/audit?limit=5", &gw.admin, None);
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["action"] == "workflow.refused" && r["actor"] == "oidc:otto"),
        "{audit}"
    );
    let viewer = idp.access_token(&key, "vera", &[group("viewer")]);
    assert_eq!(devices(&s, &viewer).0, 200);
    assert_eq!(s.bearer("GET", "/api/v1/audit", &viewer, None).0, 403);
    // Another client's, an ID token, one with no client: refused, naming the check.
    for (check, what, token) in refused_access_tokens(&idp, &key) {
        let (st, b) = devices(&s, &token);
        assert_eq!((st, &b["check"]), (401, &json!(check)), "{what}: {b}");
    }
    drop(s);

    // The option is strict: an unknown value stops the start, naming it.
    gw.write_config(&idp.config("  audience_claim: azp\n"));
    let o = chimera(gw.path(), &["serve", "--config", "serve.yaml"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("audience_claim") && err.contains("azp"),
        "{err}"
    );
}

#[test]
fn unknown_key_ids_refetch_the_jwks_at_a_bounded_rate_and_rotation_is_followed() {
    let gw = Gateway::new();
    let (old, new) = (TestKey::rsa("2025"), TestKey::rsa("2026"));
    let idp = Issuer::start(&[&old]);
    gw.write_config(&idp.config(""));
    let s = gw.start();
    let devices = |token: &str| s.bearer("GET", "/api/v1/devices", token, None);
    let with_old = idp.token(&old, "ada", &[group("admin")]);
    let with_new = idp.token(&new, "ada", &[group("admin")]);
    assert_eq!(devices(&with_old).0, 200);

    // A token naming a key the provider does not have makes the service ask the provider
    // again (once the 1 s rate limit, `jwks_min_refresh_s: 1`, allows)...
    let forged = |i: usize| new.sign_as(&format!("forged-{i}"), &json!({}));
    let before = idp.jwks_fetches();
    eventually(
        "a refetch for an unknown kid",
        Duration::from_secs(30),
        || {
            let (st, b) = devices(&forged(0));
            assert_eq!((st, &b["check"]), (401, &json!("kid")), "{b}");
            (idp.jwks_fetches() > before).then_some(())
        },
    );
    // ... but a burst of them does not: at most once per second, not once per token.
    let (t0, before) = (Instant::now(), idp.jwks_fetches());
    for i in 1..=30 {
        let (st, b) = devices(&forged(i));
        assert_eq!((st, &b["check"]), (401, &json!("kid")), "{b}");
    }
    let fetched = idp.jwks_fetches() - before;
    let bound = 1 + t0.elapsed().as_secs() as usize;
    assert!(
        fetched <= bound,
        "{fetched} JWKS fetches for 30 unknown kids in {:?}",
        t0.elapsed()
    );

    // Rotation: the provider publishes its new key beside the old one; a token signed with
    // it is refused until a refetch (rate-limited) brings the key in, then accepted.
    let (st, b) = devices(&with_new);
    assert_eq!((st, &b["check"]), (401, &json!("kid")), "{b}");
    idp.publish(&[&old, &new]);
    let before = idp.jwks_fetches();
    eventually("the rotated key accepted", Duration::from_secs(30), || {
        (devices(&with_new).0 == 200).then_some(())
    });
    assert!(idp.jwks_fetches() > before);
    assert_eq!(devices(&with_old).0, 200);

    // Retirement: the old key leaves the JWKS; once a fetch (here: set off by an unknown
    // kid) has seen that, tokens signed with it are refused.
    idp.publish(&[&new]);
    let probe = new.sign_as("probe", &json!({}));
    eventually("the retired key dropped", Duration::from_secs(30), || {
        devices(&probe);
        let (st, b) = devices(&with_old);
        (st == 401).then(|| assert_eq!(b["check"], "kid", "{b}"))
    });
    assert_eq!(devices(&with_new).0, 200);
}

#[test]
fn the_service_starts_before_its_provider_and_answers_503_to_jwts_until_the_keys_load() {
    let gw = Gateway::new();
    let key = TestKey::p256("ec-1");
    let idp = Issuer::start(&[&key]);
    idp.set_up(false);
    gw.write_config(&idp.config(""));
    let s = gw.start();
    let jwt = idp.token(&key, "ada", &[group("viewer")]);
    let (st, b) = s.bearer("GET", "/api/v1/devices", &jwt, None);
    assert_eq!((st, &b["check"]), (503, &json!("jwks")), "{b}");
    // API tokens do not depend on the provider.
    assert_eq!(s.bearer("GET", "/api/v1/devices", &gw.viewer, None).0, 200);
    // The provider comes up: the keys load (retried in the background and on requests).
    idp.set_up(true);
    eventually("JWTs accepted", Duration::from_secs(30), || {
        (s.bearer("GET", "/api/v1/devices", &jwt, None).0 == 200).then_some(())
    });
    // Down again: the keys held keep working.
    idp.set_up(false);
    assert_eq!(s.bearer("GET", "/api/v1/devices", &jwt, None).0, 200);
}

#[test]
fn api_tokens_expire_and_are_revoked_while_the_service_runs() {
    let gw = Gateway::new();
    let d = gw.path();
    let year = gw.token("operator", "ci-2026", &["--expires-in", "365d"]);
    let dated = gw.token(
        "viewer",
        "dashboard",
        &["--expires-at", "2999-01-01T00:00:00Z"],
    );
    // Expiry in the past, two expiries, a malformed one: refused by the CLI.
    for args in [
        &["--expires-at", "2020-01-01T00:00:00Z"][..],
        &["--expires-in", "1d", "--expires-at", "2999-01-01T00:00:00Z"],
        &["--expires-in", "soon"],
        &["--expires-in", "99999d"],
    ] {
        let mut all = vec![
            "serve", "token", "create", "--role", "admin", "--name", "bad",
        ];
        all.extend_from_slice(args);
        assert!(!chimera(d, &all).status.success(), "{args:?}");
    }
    let s = gw.start();
    assert_eq!(s.bearer("GET", "/api/v1/devices", &year, None).0, 200);
    assert_eq!(s.bearer("GET", "/api/v1/devices", &dated, None).0, 200);

    // Revoked while the service runs: refused at once, saying so.
    ok(d, &["serve", "token", "revoke", "--name", "ci-2026"]);
    let (st, b) = s.bearer("GET", "/api/v1/devices", &year, None);
    assert_eq!((st, &b["check"]), (401, &json!("revoked")), "{b}");
    assert!(b["error"].as_str().unwrap().contains("ci-2026"), "{b}");
    assert!(
        !chimera(d, &["serve", "token", "revoke", "--name", "nobody"])
            .status
            .success()
    );

    // The list: names, roles, times, states; never a token or a hash.
    let list: Value = serde_json::from_str(&ok(d, &["serve", "token", "list", "--json"])).unwrap();
    let by_name = |n: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == n)
            .unwrap_or_else(|| panic!("{n} not in {list}"))
            .clone()
    };
    let ci = by_name("ci-2026");
    assert_eq!(
        (&ci["role"], &ci["state"]),
        (&json!("operator"), &json!("revoked"))
    );
    assert!(
        ci["revoked_at"].is_string() && ci["expires_at"].is_string(),
        "{ci}"
    );
    let dash = by_name("dashboard");
    assert_eq!(dash["expires_at"], "2999-01-01T00:00:00Z");
    assert_eq!(dash["state"], "active");
    assert_eq!(by_name("admin")["expires_at"], Value::Null);
    let table = ok(d, &["serve", "token", "list"]);
    assert!(
        table.contains("dashboard") && table.contains("revoked"),
        "{table}"
    );
    for secret in [&year, &dated, &gw.admin] {
        let hash = aegis_ota::sha256_hex(secret.as_bytes());
        for text in [list.to_string(), table.clone()] {
            assert!(!text.contains(secret.as_str()) && !text.contains(&hash));
        }
    }
    let (_, audit) = s.bearer("GET", "/api/v1/audit", &gw.admin, None);
    assert!(audit.to_string().contains("token.revoke"), "{audit}");

    // Without an oidc section, a JWT is refused for what it is.
    let jwt = TestKey::p256("k").sign(&json!({ "sub": "x" }));
    let (st, b) = s.bearer("GET", "/api/v1/devices", &jwt, None);
    assert_eq!(st, 401);
    assert!(b["error"].as_str().unwrap().contains("oidc"), "{b}");
}
