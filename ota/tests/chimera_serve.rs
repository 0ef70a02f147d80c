//! `chimera serve` as a real process on a free loopback port, set up with the real CLI
//! (root, issuer and device keys, trust metadata, enrolment, tokens) in a temporary
//! directory, called over HTTP: authorisation of every route the OpenAPI document lists
//! (API tokens and JWTs of a local OIDC provider),
//! the read API, receipts recorded through the CLI, signed workflow uploads, publishing
//! (against a mosquitto of its own), the audit log.
//!
//! Every test runs on both state backends (`on_each_backend`): a SQLite file, then a
//! database of the PostgreSQL server this test binary starts (tests/common/postgres.rs),
//! reached the way production reaches it (TCP, TLS verified against a CA file, a password
//! from a file or the environment). Two services on one PostgreSQL database are tested too.
//!
//! The offline root key is deleted before the service starts (its configuration has no key
//! for it anyway): everything here works without it.
#![cfg(feature = "gateway")]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use common::oidc::{Issuer, TestKey, group, refused_jwts};
use common::serve::{
    Backend, Gateway, Server, assert_shape, chimera, command, ok, on_each_backend, role_rank,
};
use common::{Broker, have_mosquitto, have_postgres, postgres};

use aegis_ota::receipt::{Receipt, Verdict};
use aegis_ota::sign::SecretKey;
use serde_json::{Value, json};

#[test]
fn every_documented_route_refuses_missing_invalid_and_lower_tokens() {
    on_each_backend("chimera_serve", |backend| {
        let gw = Gateway::on(backend);
        let (rsa, ec, forger) = (
            TestKey::rsa("rsa-1"),
            TestKey::p256("ec-1"),
            TestKey::rsa("rsa-1"),
        );
        let idp = Issuer::start(&[&rsa, &ec]);
        // A revoked API token, and one provisioned already expired.
        let revoked = gw.token("viewer", "revoked", &[]);
        ok(
            gw.path(),
            &["serve", "token", "revoke", "--name", "revoked"],
        );
        let expired = format!("chimera_{}", "e".repeat(64));
        std::fs::write(
        gw.path().join("tokens.yaml"),
        format!(
            "- {{ name: expired, role: admin, sha256: {}, expires_at: \"2020-01-01T00:00:00Z\" }}\n",
            aegis_ota::sha256_hex(expired.as_bytes())
        ),
    )
    .unwrap();
        gw.write_config(&format!("tokens: tokens.yaml\n{}", idp.config("")));
        let s = gw.start();
        let (status, body) = s.call("GET", "/api/v1/openapi.json", None, None);
        assert_eq!(status, 200);
        let doc: Value = serde_json::from_str(&body).unwrap();
        let paths = doc["paths"].as_object().unwrap();

        let mut refused: Vec<(&str, &str, String)> = vec![
            (
                "token",
                "an unknown API token",
                format!("chimera_{}", "0".repeat(64)),
            ),
            (
                "token",
                "an API token with a byte more",
                format!("{}x", gw.admin),
            ),
            ("revoked", "a revoked API token", revoked),
            ("exp", "an expired API token", expired),
        ];
        refused.extend(refused_jwts(&idp, &rsa, &ec, &forger));
        // Each role as an API token and as a JWT (the two key types in turn); and a JWT whose
        // groups map to no role.
        let jwt = |role: &str| {
            let key = if role == "operator" { &rsa } else { &ec };
            idp.token(key, &format!("{role}-user"), &[group(role), "unrelated"])
        };
        let callers = [
            ("viewer", gw.viewer.clone()),
            ("operator", gw.operator.clone()),
            ("admin", gw.admin.clone()),
            ("viewer", jwt("viewer")),
            ("operator", jwt("operator")),
            ("admin", jwt("admin")),
        ];
        let no_role = idp.token(&rsa, "stranger", &["strangers"]);

        let mut protected = 0;
        for (path, ops) in paths {
            for (method, op) in ops.as_object().unwrap() {
                let method = method.to_uppercase();
                let url = path
                    .replace("{id}", "cam-1")
                    .replace("{digest}", &"0".repeat(64));
                let body = (method == "POST").then_some("{}");
                if op["security"] == json!([]) {
                    let (st, b) = s.call(&method, &url, None, body);
                    assert_eq!(st, 200, "{method} {path} is public: {b}");
                    continue;
                }
                protected += 1;
                let needed = op["x-aegis-role"].as_str().unwrap();
                for auth in [
                    None,
                    Some(format!("Basic {}", gw.admin)),
                    Some("Bearer ".to_string()),
                    Some(format!("Bearer {}", "x".repeat(20_000))),
                ] {
                    let (st, b) = s.call(&method, &url, auth.as_deref(), body);
                    assert_eq!(st, 401, "{method} {path} with {auth:?}: {b}");
                }
                for (check, what, token) in &refused {
                    let (st, b) = s.bearer(&method, &url, token, body);
                    assert_eq!(st, 401, "{method} {path} with {what}: {b}");
                    assert_eq!(b["check"], *check, "{method} {path} with {what}: {b}");
                    // The answer never echoes the token, nor its signature.
                    let signature = token.rsplit('.').next().unwrap();
                    assert!(
                        signature.len() < 8 || !b.to_string().contains(signature),
                        "{what}: {b}"
                    );
                }
                let (st, b) = s.bearer(&method, &url, &no_role, body);
                assert_eq!(
                    (st, &b["check"]),
                    (403, &json!("role")),
                    "{method} {path}: {b}"
                );
                for (role, token) in &callers {
                    let (st, b) = s.bearer(&method, &url, token, body);
                    if role_rank(role) < role_rank(needed) {
                        assert_eq!(st, 403, "{method} {path} as {role}: {b}");
                    } else {
                        // Let through: whatever the handler says, it is not about the token,
                        // and the route exists (a 404 may only say the object does not).
                        let object_missing = st == 404 && !b.to_string().contains("no such route");
                        let refused = [401, 403, 404, 405].contains(&st) && !object_missing;
                        assert!(!refused, "{method} {path} as {role}: {st} {b}");
                    }
                }
            }
        }
        assert!(
            protected >= 6,
            "only {protected} protected operations documented"
        );
        // What is not documented is not open: an unknown path or method needs an admin before
        // it says 404/405.
        for (method, path) in [
            ("GET", "/api/v1/nope"),
            ("DELETE", "/api/v1/devices"),
            ("POST", "/"),
            ("GET", "/index.html"),
            ("GET", "/dashboard/nope.js"),
        ] {
            assert_eq!(s.call(method, path, None, None).0, 401, "{method} {path}");
            for (role, token) in &callers {
                let st = s.bearer(method, path, token, None).0;
                if *role == "admin" {
                    assert!([404, 405].contains(&st), "{method} {path} as {role}: {st}");
                } else {
                    assert_eq!(st, 403, "{method} {path} as {role}");
                }
            }
        }
    });
}

fn signed_receipt(dir: &Path, key_file: &str, claims: &str, verdict: Verdict) -> PathBuf {
    let key = SecretKey::read(&dir.join(key_file)).unwrap();
    let r = Receipt {
        kind: "receipt".into(),
        device: claims.into(),
        workflow_id: "0f8fad5b-d9cb-469f-a165-70867728950e".into(),
        workflow_sha256: "ab".repeat(32),
        sequence: 1,
        verdict,
        reason: String::new(),
        trust_version: 2,
        at: "2026-12-04T10:00:00Z".into(),
        mode: "in_place".into(),
        apply_ms: Some(12.0),
        mirror: vec![],
    };
    let p = dir.join(format!("{key_file}-{claims}.mu"));
    std::fs::write(&p, r.render_signed(&key).unwrap()).unwrap();
    p
}

#[test]
fn read_api_shows_the_imported_fleet_and_only_verified_receipts_count() {
    on_each_backend("chimera_serve", |backend| {
        let gw = Gateway::on(backend);
        let d = gw.path();
        let s = gw.start();
        let devices = s.get("/api/v1/devices", &gw.viewer);
        let ids: Vec<&str> = devices
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["cam-1", "cam-2"]);
        assert_eq!(devices[0]["groups"], json!(["lobby"]));
        assert_eq!(devices[0]["last_receipt"], Value::Null);

        // Recorded while the service runs (the same SQLite file, another process).
        let good = signed_receipt(d, "cam-1.key", "cam-1", Verdict::Applied);
        let out = ok(
            d,
            &[
                "serve",
                "receipt",
                "add",
                "--device",
                "cam-1",
                good.to_str().unwrap(),
            ],
        );
        assert!(out.contains("verified"), "{out}");
        // cam-2's key, claiming to be cam-1: recorded for cam-1, not verified.
        let forged = signed_receipt(d, "cam-2.key", "cam-1", Verdict::Applied);
        let o = chimera(
            d,
            &[
                "serve",
                "receipt",
                "add",
                "--device",
                "cam-1",
                forged.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("NOT verified"));
        // A device that is not enrolled: refused.
        let o = chimera(
            d,
            &[
                "serve",
                "receipt",
                "add",
                "--device",
                "cam-9",
                good.to_str().unwrap(),
            ],
        );
        assert!(!o.status.success());

        let receipts = s.get("/api/v1/receipts?device=cam-1", &gw.viewer);
        let receipts = receipts.as_array().unwrap();
        assert_eq!(receipts.len(), 2);
        let verified: Vec<&Value> = receipts.iter().filter(|r| r["verified"] == true).collect();
        assert_eq!(verified.len(), 1);
        assert_eq!(verified[0]["verdict"], "applied");
        assert_eq!(verified[0]["digest"], "ab".repeat(32));
        let unverified = receipts.iter().find(|r| r["verified"] == false).unwrap();
        assert_eq!(unverified["verdict"], Value::Null);
        assert!(unverified["error"].as_str().unwrap().contains("signature"));
        assert_eq!(
            s.get("/api/v1/receipts?device=cam-2", &gw.viewer),
            json!([])
        );

        let cam1 = s.get("/api/v1/devices/cam-1", &gw.viewer);
        assert!(cam1["last_receipt"].is_object(), "{cam1}");
        assert_shape(&s, "Device", &cam1);
        assert_shape(&s, "ReceiptSummary", &cam1["last_receipt"]);
        assert_shape(&s, "StoredReceipt", &json!(receipts));
        let (st, b) = s.call(
            "GET",
            "/api/v1/devices/cam-9",
            Some(&format!("Bearer {}", gw.viewer)),
            None,
        );
        assert_eq!(st, 404);
        assert!(b.contains("cam-9"), "{b}");

        // Strict queries: unknown parameters and out-of-range limits are named.
        let viewer = format!("Bearer {}", gw.viewer);
        let (st, b) = s.call("GET", "/api/v1/receipts?bogus=1", Some(&viewer), None);
        assert_eq!(st, 400);
        assert!(b.contains("bogus"), "{b}");
        let (st, b) = s.call("GET", "/api/v1/receipts?limit=0", Some(&viewer), None);
        assert_eq!(st, 400);
        assert!(b.contains("limit"), "{b}");

        let audit = s.get("/api/v1/audit", &gw.admin);
        let actions: Vec<&str> = audit
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["action"].as_str().unwrap())
            .collect();
        for a in [
            "registry.import",
            "token.create",
            "service.start",
            "receipt.refused",
        ] {
            assert!(actions.contains(&a), "{a} not in {actions:?}");
        }
        assert_shape(&s, "AuditRow", &audit);
        // Token values never reach the audit log.
        for t in [&gw.viewer, &gw.operator, &gw.admin] {
            assert!(!audit.to_string().contains(t.as_str()));
        }

        // A restart imports the same registry again: nothing changes, nothing is audited twice.
        drop(s);
        let s = gw.start();
        let audit = s.get("/api/v1/audit", &gw.admin);
        let imports = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["action"] == "registry.import")
            .count();
        assert_eq!(imports, 1);
        assert_eq!(
            s.get("/api/v1/devices", &gw.viewer)
                .as_array()
                .unwrap()
                .len(),
            2
        );
    });
}

/// `serve receipt add` for `device` from `file`: its output, and whether it succeeded.
fn add_receipt(d: &Path, device: &str, file: &Path) -> (bool, String) {
    let o = chimera(
        d,
        &[
            "serve",
            "receipt",
            "add",
            "--device",
            device,
            file.to_str().unwrap(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

fn listed(s: &Server, token: &str) -> Vec<String> {
    s.get("/api/v1/devices", token)
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn devices_are_unenrolled_by_an_admin_or_the_cli_and_their_history_stays() {
    on_each_backend("chimera_serve", |backend| {
        let gw = Gateway::on(backend);
        let d = gw.path();
        let before = signed_receipt(d, "cam-1.key", "cam-1", Verdict::Applied);
        assert!(add_receipt(d, "cam-1", &before).0);
        let mut s = gw.start();

        let (st, u) = s.bearer("DELETE", "/api/v1/devices/cam-1", &gw.admin, None);
        assert_eq!(st, 200, "{u}");
        assert_shape(&s, "Unenrolled", &u);
        assert_eq!(
            (&u["device"], &u["groups"]),
            (&json!("cam-1"), &json!(["lobby"]))
        );
        assert_eq!(u["rollouts"], json!([]));
        // Out of the fleet list; still there by id, with when it left.
        assert_eq!(listed(&s, &gw.viewer), ["cam-2"]);
        let one = s.get("/api/v1/devices/cam-1", &gw.viewer);
        assert_shape(&s, "Device", &one);
        assert_eq!(one["unenrolled_at"], u["unenrolled_at"]);
        assert_eq!(one["groups"], json!([]));
        assert!(s.get("/api/v1/devices/cam-2", &gw.viewer)["unenrolled_at"].is_null());
        // Once: then it is not an enrolled device; nor is a stranger.
        let (st, b) = s.bearer("DELETE", "/api/v1/devices/cam-1", &gw.admin, None);
        assert_eq!(st, 404);
        assert!(
            b["error"].as_str().unwrap().contains("un-enrolled at"),
            "{b}"
        );
        assert_eq!(
            s.bearer("DELETE", "/api/v1/devices/cam-9", &gw.admin, None)
                .0,
            404
        );

        // Its key verifies nothing new; what it sent before stays verified.
        let mut later = signed_receipt(d, "cam-1.key", "cam-1", Verdict::Applied);
        let text = std::fs::read_to_string(&later).unwrap();
        later.set_extension("later.mu");
        std::fs::write(
            &later,
            SecretKey::read(&d.join("cam-1.key"))
                .map(|k| {
                    let mut r = Receipt::verify(text.as_bytes(), k.public()).unwrap();
                    r.at = "2026-12-05T10:00:00Z".into();
                    r.render_signed(&k).unwrap()
                })
                .unwrap(),
        )
        .unwrap();
        let (ok_, out) = add_receipt(d, "cam-1", &later);
        assert!(
            !ok_ && out.contains("NOT verified") && out.contains("was un-enrolled"),
            "{out}"
        );
        let receipts = s.get("/api/v1/receipts?device=cam-1", &gw.viewer);
        let verified: Vec<bool> = receipts
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["verified"].as_bool().unwrap())
            .collect();
        assert_eq!(verified, [false, true], "{receipts}");
        let audit = s.get("/api/v1/audit", &gw.admin);
        let row = audit
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["action"] == "device.unenroll")
            .unwrap_or_else(|| panic!("{audit}"));
        assert_eq!(row["actor"], "token:admin");
        assert!(
            row["detail"]
                .as_str()
                .unwrap()
                .starts_with("cam-1: left groups [lobby]")
        );

        // The CLI does the same, audited as cli, once.
        let out = ok(d, &["serve", "device", "unenroll", "--id", "cam-2"]);
        assert!(out.contains("cam-2 un-enrolled"), "{out}");
        let o = chimera(d, &["serve", "device", "unenroll", "--id", "cam-2"]);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("already"));
        assert!(listed(&s, &gw.viewer).is_empty());

        // The registry file still lists both with their keys: a restart keeps them out.
        // Enrolled again with a new key, cam-1 is back; `chimera unenroll` takes cam-2 out
        // of the file.
        drop(s);
        s = gw.start();
        assert!(listed(&s, &gw.viewer).is_empty());
        drop(s);
        ok(d, &["keygen", "--out", "cam-1b"]);
        ok(d, &["enroll", "cam-1", "cam-1b.pub", "--group", "lobby"]);
        let out = ok(d, &["unenroll", "cam-2"]);
        assert!(out.contains("un-enrolled cam-2"), "{out}");
        let reg: Value =
            serde_json::from_slice(&std::fs::read(d.join("devices.json")).unwrap()).unwrap();
        assert!(reg.get("cam-2").is_none() && reg.get("cam-1").is_some());
        assert!(!chimera(d, &["unenroll", "cam-2"]).status.success());
        s = gw.start();
        assert_eq!(listed(&s, &gw.viewer), ["cam-1"]);
        let back = s.get("/api/v1/devices/cam-1", &gw.viewer);
        assert!(back["unenrolled_at"].is_null());
        assert_eq!(back["groups"], json!(["lobby"]));
        let fresh = signed_receipt(d, "cam-1b.key", "cam-1", Verdict::Applied);
        assert!(add_receipt(d, "cam-1", &fresh).0);
    });
}

#[test]
fn workflow_uploads_are_verified_against_the_trust_metadata_and_refusals_say_why() {
    on_each_backend("chimera_serve", |backend| {
        let gw = Gateway::on(backend);
        let d = gw.path();
        ok(
            d,
            &[
                "new",
                "--out",
                "wf.maml.md",
                "--issuer",
                "gw-1",
                "--device",
                "cam-1",
            ],
        );
        ok(d, &["sign", "wf.maml.md", "--key", "gw.key"]);
        let signed = std::fs::read_to_string(d.join("wf.signed.maml.md")).unwrap();
        // Targets a device the issuer may not address (trust lists cam-1 only).
        ok(
            d,
            &[
                "new",
                "--out",
                "wf2.maml.md",
                "--issuer",
                "gw-1",
                "--device",
                "cam-2",
            ],
        );
        ok(d, &["sign", "wf2.maml.md", "--key", "gw.key"]);
        let off_target = std::fs::read_to_string(d.join("wf2.signed.maml.md")).unwrap();

        let s = gw.start();
        let op = format!("Bearer {}", gw.operator);
        let upload = |auth: &str, doc: &str| {
            s.call(
                "POST",
                "/api/v1/workflows",
                Some(auth),
                Some(&json!({ "document": doc }).to_string()),
            )
        };

        let (st, b) = upload(&op, &signed);
        assert_eq!(st, 201, "{b}");
        let w: Value = serde_json::from_str(&b).unwrap();
        let signed_part = &signed[..signed.find("```signature").unwrap()];
        assert_eq!(w["digest"], aegis_ota::sha256_hex(signed_part.as_bytes()));
        assert_eq!(w["issuer"], "gw-1");
        assert_eq!(w["devices"], json!(["cam-1"]));
        // The same document again: already held.
        assert_eq!(upload(&op, &signed).0, 200);

        // A viewer may not upload.
        assert_eq!(upload(&format!("Bearer {}", gw.viewer), &signed).0, 403);

        let refusal = |doc: &str| {
            let (st, b) = upload(&op, doc);
            assert_eq!(st, 422, "{b}");
            let v: Value = serde_json::from_str(&b).unwrap();
            (
                v["check"].as_str().unwrap().to_string(),
                v["error"].as_str().unwrap().to_string(),
            )
        };
        let tampered = signed.replacen("cam0", "cam9", 1);
        assert_ne!(tampered, signed);
        assert_eq!(refusal(&tampered).0, "signature");
        let (check, error) = refusal(&off_target);
        assert_eq!(check, "target");
        assert!(error.contains("cam-2"), "{error}");
        assert_eq!(refusal("no signature here").0, "format");

        // Hostile bodies: unknown fields, wrong types, no JSON, too big.
        let (st, b) = s.call(
            "POST",
            "/api/v1/workflows",
            Some(&op),
            Some(&json!({ "document": signed, "publish": true }).to_string()),
        );
        assert_eq!(st, 422, "{b}");
        assert!(b.contains("publish"), "{b}");
        let (st, b) = s.call(
            "POST",
            "/api/v1/workflows",
            Some(&op),
            Some("{\"document\": 5}"),
        );
        assert!([400, 422].contains(&st), "{st} {b}");
        assert!(b.contains("document"), "{b}");
        let (st, _) = s.call("POST", "/api/v1/workflows", Some(&op), Some("not json"));
        assert_eq!(st, 400);
        let big = json!({ "document": "a".repeat(600 * 1024) }).to_string();
        let (st, _) = s.call("POST", "/api/v1/workflows", Some(&op), Some(&big));
        assert_eq!(st, 413);

        assert_shape(&s, "Workflow", &w);
        let listed = s.get("/api/v1/workflows", &gw.viewer);
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(listed[0]["digest"], w["digest"]);

        let audit = s.get("/api/v1/audit", &gw.admin).to_string();
        assert!(audit.contains("workflow.upload"), "{audit}");
        assert!(audit.contains("workflow.refused"), "{audit}");
        assert!(audit.contains("token:operator"), "{audit}");
    });
}

#[test]
fn the_config_has_no_place_for_a_root_key_and_uploads_need_trust() {
    on_each_backend("chimera_serve", |backend| {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let database = backend.database(d, "a.db");
        let config = |extra: &str| {
            let yaml =
                format!("listen: 127.0.0.1:0\n{database}registry: devices.json\nstate: st\n");
            std::fs::write(d.join("serve.yaml"), format!("{yaml}{extra}")).unwrap();
        };
        config("root_key: root.key\n");
        let o = chimera(d, &["serve", "--config", "serve.yaml"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("root_key"), "{err}");

        // Token hashes provisioned as a file: a malformed hash stops the start, naming the token.
        config("tokens: tokens.yaml\n");
        std::fs::write(
            d.join("tokens.yaml"),
            "- { name: deploy, role: viewer, sha256: abc }\n",
        )
        .unwrap();
        let o = chimera(d, &["serve", "--config", "serve.yaml"]);
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("deploy") && err.contains("sha256"), "{err}");
        let provisioned = format!("chimera_{}", "5a".repeat(32));
        std::fs::write(
            d.join("tokens.yaml"),
            format!(
                "- {{ name: deploy, role: viewer, sha256: {} }}\n",
                aegis_ota::sha256_hex(provisioned.as_bytes())
            ),
        )
        .unwrap();

        // Without trust metadata the service starts (no registry file yet: an empty fleet)
        // and refuses uploads, saying what is missing.
        let token = ok(
            d,
            &[
                "serve", "token", "create", "--role", "operator", "--name", "ci",
            ],
        );
        let gw = Gateway {
            dir,
            viewer: String::new(),
            operator: token.trim().to_string(),
            admin: String::new(),
            database: database.clone(),
        };
        let s = gw.start();
        assert_eq!(s.get("/api/v1/devices", &gw.operator), json!([]));
        // The provisioned token works, with its role.
        assert_eq!(s.get("/api/v1/devices", &provisioned), json!([]));
        let (st, _) = s.call(
            "GET",
            "/api/v1/audit",
            Some(&format!("Bearer {provisioned}")),
            None,
        );
        assert_eq!(st, 403);
        let (st, b) = s.call(
            "POST",
            "/api/v1/workflows",
            Some(&format!("Bearer {}", gw.operator)),
            Some("{\"document\": \"x\"}"),
        );
        assert_eq!(st, 503, "{b}");
        assert!(b.contains("trust_metadata"), "{b}");
        match backend {
            // One replica per SQLite database: a second service on it refuses to start.
            Backend::Sqlite => {
                let mut second = command(gw.path(), &["serve", "--config", "serve.yaml"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut line = String::new();
                BufReader::new(second.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                if !line.is_empty() {
                    let _ = second.kill();
                    panic!("a second chimera serve started on the same database: {line}");
                }
                let out = second.wait_with_output().unwrap();
                assert!(!out.status.success());
                let err = String::from_utf8_lossy(&out.stderr);
                assert!(err.contains("another chimera serve"), "{err}");
            }
            // PostgreSQL: replicas, no lock; the second serves the same state.
            Backend::Postgres => {
                let second = gw.start();
                assert_eq!(second.get("/api/v1/devices", &provisioned), json!([]));
                assert!(second.terminate().success());
            }
        }
        // SIGTERM stops the service cleanly, and its lock goes with it.
        assert!(s.terminate().success());
        let s = gw.start();
        assert_eq!(s.get("/api/v1/devices", &gw.operator), json!([]));
        // A second token with the same name is refused.
        let o = chimera(
            gw.path(),
            &[
                "serve", "token", "create", "--role", "admin", "--name", "ci",
            ],
        );
        assert!(!o.status.success());
    });
}

/// Two services started together on one empty PostgreSQL database (as two replicas of a
/// Deployment would be): both start and serve the same state; the schema is migrated once,
/// the registry and the token file imported once. The password comes from the environment
/// (`password_env`) and shows nowhere.
#[test]
fn two_services_on_one_postgres_database_start_together_and_serve() {
    if !have_postgres("chimera_serve") {
        return;
    }
    let pg = postgres();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for cam in ["cam-1", "cam-2"] {
        ok(d, &["keygen", "--out", cam]);
        ok(d, &["enroll", cam, &format!("{cam}.pub")]);
    }
    let token = format!("chimera_{}", "7e".repeat(32));
    std::fs::write(
        d.join("tokens.yaml"),
        format!(
            "- {{ name: ci, role: admin, sha256: {} }}\n",
            aegis_ota::sha256_hex(token.as_bytes())
        ),
    )
    .unwrap();
    let db = pg.create_database();
    std::fs::write(
        d.join("serve.yaml"),
        format!(
            "listen: 127.0.0.1:0\nregistry: devices.json\nstate: state\ntokens: tokens.yaml\n\
             database:\n  url: {}\n  password_env: CHIMERA_DB_PASSWORD\n  ca_file: {}\n",
            pg.url(&db),
            pg.ca_file().display()
        ),
    )
    .unwrap();
    let with_password = |args: &[&str]| {
        let mut c = command(d, args);
        c.env("CHIMERA_DB_PASSWORD", pg.password());
        c
    };
    // Both spawned before either is waited for: they migrate at the same time.
    let logs: Vec<PathBuf> = (0..2).map(|i| d.join(format!("replica-{i}.err"))).collect();
    let mut replicas: Vec<Server> = logs
        .iter()
        .map(|log| {
            Server::spawned(
                with_password(&["serve", "--config", "serve.yaml"])
                    .stderr(std::fs::File::create(log).unwrap()),
            )
        })
        .collect();
    for (s, log) in replicas.iter_mut().zip(&logs) {
        s.await_listening(Some(log));
    }
    for s in &replicas {
        let devices = s.get("/api/v1/devices", &token);
        assert_eq!(devices.as_array().unwrap().len(), 2, "{devices}");
    }
    // Written through the CLI, read through both replicas.
    let receipt = signed_receipt(d, "cam-1.key", "cam-1", Verdict::Applied);
    let o = with_password(&[
        "serve",
        "receipt",
        "add",
        "--device",
        "cam-1",
        receipt.to_str().unwrap(),
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for s in &replicas {
        let r = s.get("/api/v1/receipts?device=cam-1", &token);
        assert_eq!(r[0]["verified"], true, "{r}");
    }
    // One schema: versions 1..=N, each once; one import of the registry and the tokens.
    assert_eq!(
        pg.psql(
            &db,
            "SELECT count(*) = count(DISTINCT version) AND min(version) = 1 \
             AND max(version) = count(*) FROM schema_migrations"
        ),
        "t"
    );
    let audited = |action: &str| {
        pg.psql(
            &db,
            &format!("SELECT count(*) FROM audit WHERE action = '{action}'"),
        )
    };
    assert_eq!(audited("registry.import"), "1");
    assert_eq!(audited("token.import"), "1");
    assert_eq!(audited("service.start"), "2");
    let audit = replicas[0].get("/api/v1/audit", &token).to_string();
    assert!(
        audit.contains(&format!("PostgreSQL {} (TLS)", pg.url(&db))),
        "{audit}"
    );
    for s in replicas {
        assert!(s.terminate().success());
    }
    for log in logs {
        let err = std::fs::read_to_string(log).unwrap();
        assert!(err.contains(&pg.url(&db)), "{err}");
        assert!(!err.contains(pg.password()), "{err}");
    }
    assert!(!audit.contains(pg.password()));
}

// ---------------------------------------------------------------------------------------
// Publishing, against a mosquitto of our own.

#[test]
fn uploaded_workflows_are_published_as_chimera_publish_does() {
    if !have_mosquitto("chimera_serve") {
        return;
    }
    on_each_backend("chimera_serve", |backend| {
        let gw = Gateway::on(backend);
        let d = gw.path();
        let mut broker = Broker::start(&d.join("broker"));
        gw.write_config(&format!("broker: mqtt://127.0.0.1:{}\n", broker.port));
        ok(
            d,
            &[
                "new",
                "--out",
                "wf.maml.md",
                "--issuer",
                "gw-1",
                "--device",
                "cam-1",
            ],
        );
        ok(d, &["sign", "wf.maml.md", "--key", "gw.key"]);
        let signed = std::fs::read_to_string(d.join("wf.signed.maml.md")).unwrap();
        let s = gw.start();
        let op = format!("Bearer {}", gw.operator);
        let (st, b) = s.call(
            "POST",
            "/api/v1/workflows",
            Some(&op),
            Some(&json!({ "document": signed }).to_string()),
        );
        assert_eq!(st, 201, "{b}");
        let digest = serde_json::from_str::<Value>(&b).unwrap()["digest"]
            .as_str()
            .unwrap()
            .to_string();
        let publish = |body: Value, digest: &str| {
            s.call(
                "POST",
                &format!("/api/v1/workflows/{digest}/publish"),
                Some(&op),
                Some(&body.to_string()),
            )
        };

        let (st, b) = publish(json!({ "to": "cam-1" }), &digest);
        assert_eq!(st, 200, "{b}");
        let p: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(p["devices"], json!(["cam-1"]));
        assert_eq!(p["topics"], json!(["aegis/v1/cam-1/workflows"]));
        assert_shape(&s, "Published", &p);
        // The broker holds the document, byte for byte, retained for the device.
        assert_eq!(
            broker.retained("aegis/v1/cam-1/workflows"),
            signed.as_bytes()
        );
        // Recorded where `chimera fleet reconcile` and `watch-receipts` look.
        let sent: Value =
            serde_json::from_slice(&std::fs::read(d.join("state/sent.json")).unwrap()).unwrap();
        assert_eq!(sent["cam-1"]["digest"], digest.as_str());

        // Refusals before the broker: a group the document does not target, bad canaries,
        // unknown digests, unknown fields.
        let (st, b) = publish(json!({ "to": "lobby" }), &digest);
        assert_eq!(st, 422, "{b}");
        assert!(b.contains("lobby"), "{b}");
        let (st, b) = publish(json!({ "to": "cam-1", "canary": 0 }), &digest);
        assert_eq!(st, 400, "{b}");
        assert!(b.contains("canary"), "{b}");
        assert_eq!(publish(json!({ "to": "cam-1" }), &"0".repeat(64)).0, 404);
        // An escaped path in the digest never reaches the file system.
        assert_eq!(
            publish(json!({ "to": "cam-1" }), "..%2F..%2Fetc%2Fpasswd").0,
            400
        );
        assert_eq!(publish(json!({ "to": "cam-1" }), &"Z".repeat(64)).0, 400);
        let (st, b) = publish(json!({ "to": "cam-1", "retain": false }), &digest);
        assert_eq!(st, 422, "{b}");
        assert!(b.contains("retain"), "{b}");

        // The broker gone: 502, naming it.
        broker.kill();
        let (st, b) = publish(json!({ "to": "cam-1" }), &digest);
        assert_eq!(st, 502, "{b}");
        assert!(b.contains("127.0.0.1"), "{b}");

        let audit = s.get("/api/v1/audit", &gw.admin).to_string();
        assert!(audit.contains("workflow.publish"), "{audit}");
        assert!(audit.contains("workflow.publish_failed"), "{audit}");
    });
}
