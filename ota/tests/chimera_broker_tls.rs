//! TLS and credentials towards the broker, against a real mosquitto with TLS listeners of
//! its own (`common::Broker::start_tls`: certificates made here with rcgen, a
//! `mosquitto_passwd` file, `allow_anonymous false`; a second listener with
//! `require_certificate true`). `chimera serve` ingests and publishes over `mqtts://` with a
//! username and password; a wrong password, a CA that did not sign the broker's certificate
//! and a host name its certificate does not carry fail with errors that say so; the CLI does
//! the same and connects with a client certificate (mutual TLS), failing without one. The
//! password is looked for in everything the service wrote and answered. SQLite only: the
//! state backend plays no part in this.
#![cfg(feature = "gateway")]

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::fleet_gateway::{FleetGateway, GROUP};
use common::have_mosquitto_tls;
use common::pki::TestCa;
use common::serve::{Backend, Server, command, wait_for};
use serde_json::{Value, json};

const SUITE: &str = "chimera_broker_tls";

/// The CONNACK reason mosquitto 2.0 gives a wrong password (MQTT 5 also has
/// `BadUserNamePassword`, which other brokers send).
const REFUSED_PASSWORD: &str = "NotAuthorized";

/// Writes a private file (0600).
fn private(path: &Path, text: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path.to_path_buf()
}

/// Every response of every GET route without a path parameter (and of `extra` paths), as
/// the admin: the text a leaked secret would be in.
fn every_answer(s: &Server, admin: &str, extra: &[String]) -> String {
    let (_, doc) = s.call("GET", "/api/v1/openapi.json", None, None);
    let paths: Vec<String> = serde_json::from_str::<Value>(&doc).unwrap()["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(p, item)| !p.contains('{') && item.get("get").is_some())
        .map(|(p, _)| p.clone())
        .chain(extra.iter().cloned())
        .collect();
    assert!(paths.len() > 5, "{paths:?}");
    let mut all = doc;
    for p in paths {
        let (_, body) = s.call("GET", &p, Some(&format!("Bearer {admin}")), None);
        all.push_str(&body);
    }
    all
}

/// Waits until the file `log` contains `what`; returns the file.
fn wait_logged(log: &Path, what: &str) -> String {
    wait_for(&format!("{} logs {what:?}", log.display()), || {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        text.contains(what).then_some(text)
    })
}

#[test]
fn the_service_ingests_and_publishes_over_mqtts_with_a_password_it_never_shows() {
    if !have_mosquitto_tls(SUITE) {
        return;
    }
    let g = FleetGateway::with_tls_broker(3, Backend::Sqlite);
    let tls = g.broker().tls.as_ref().unwrap();
    let log = g.path().join("serve.err");
    let s = g.start_logged("serve.yaml", &log);
    // Statuses reach the service only through its ingest: over mqtts, as the user.
    g.all_online(&s);
    let w = g.fleet.workflow(1, 60);
    let digest = g.upload(&s, &w);
    let created = g.create(&s, json!({ "workflow": digest, "group": GROUP }));
    let id = created["id"].as_str().unwrap();
    // Every step was published over mqtts, and every receipt came back through it.
    let r = g.wait_state(&s, id, "completed");
    for t in r["targets"].as_array().unwrap() {
        assert_eq!(t["state"], "applied", "{t}");
    }
    let receipts = s.get("/api/v1/receipts", &g.operator);
    let verified = receipts
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["verified"] == true && x["digest"] == digest.as_str())
        .count();
    assert_eq!(verified, 3, "{receipts}");
    let ingest = s.get("/api/v1/ingest", &g.operator);
    assert_eq!(ingest["connected"], true, "{ingest}");
    // The audit says how the service connects: TLS, which user; not the password.
    let audit = s.get("/api/v1/audit", &g.admin).to_string();
    let how = format!(
        "broker mqtts://localhost:{} (TLS; user {})",
        tls.port, tls.user
    );
    assert!(audit.contains(&how), "{how} not in {audit}");

    let answers = every_answer(&s, &g.admin, &[format!("/api/v1/rollouts/{id}")]);
    assert!(answers.contains(&how));
    assert!(
        !answers.contains(&tls.password),
        "the password is in an answer"
    );
    assert!(s.terminate().success());
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        !logged.contains(&tls.password),
        "the password is in the log"
    );
}

#[test]
fn the_service_names_a_refused_password_a_foreign_ca_and_a_wrong_host_name() {
    if !have_mosquitto_tls(SUITE) {
        return;
    }
    let g = FleetGateway::with_tls_broker(1, Backend::Sqlite);
    let d = g.path();
    let tls = g.broker().tls.as_ref().unwrap();
    let good = g.broker_yaml();
    let wrong_password = "not-the-password-0451";
    let wrong = private(&d.join("wrong-password"), &format!("{wrong_password}\n"));
    let foreign_ca = TestCa::new("someone else's CA").write(&d.join("foreign-ca.pem"));
    let url = format!("mqtts://localhost:{}", tls.port);
    for (name, broker, logged) in [
        (
            "password",
            good.replace(
                &tls.password_file.display().to_string(),
                &wrong.display().to_string(),
            ),
            vec![
                format!("{url}: the broker refused the connection (CONNACK {REFUSED_PASSWORD})"),
                format!(
                    "the username \"{}\" or the password (broker.password_file) is wrong",
                    tls.user
                ),
            ],
        ),
        (
            "ca",
            good.replace(
                &tls.ca.display().to_string(),
                &foreign_ca.display().to_string(),
            ),
            vec![
                "TLS verification of the broker host localhost failed".into(),
                "UnknownIssuer".into(),
                format!("does not chain to the CA file {}", foreign_ca.display()),
            ],
        ),
        (
            "host",
            good.replace("mqtts://localhost:", "mqtts://127.0.0.1:"),
            vec![
                "TLS verification of the broker host 127.0.0.1 failed".into(),
                "does not name \"127.0.0.1\"".into(),
            ],
        ),
    ] {
        let config = format!("{name}.yaml");
        g.config_with(&config, &format!("state-{name}"), &broker);
        let log = d.join(format!("{name}.err"));
        let s = g.start_logged(&config, &log);
        // The ingest logs why it cannot connect (and keeps trying).
        let text = wait_logged(&log, &logged[0]);
        for l in &logged {
            assert!(text.contains(l.as_str()), "{name}: {l:?} not in {text}");
        }
        let ingest = s.get("/api/v1/ingest", &g.operator);
        assert_eq!(ingest["connected"], false, "{name}: {ingest}");
        // A publish through the API fails with the same reason (502).
        let digest = g.upload(&s, &g.fleet.workflow(1, 60));
        let (st, b) = s.post(
            &format!("/api/v1/workflows/{digest}/publish"),
            &g.operator,
            &json!({ "to": GROUP }),
        );
        assert_eq!(st, 502, "{name}: {b}");
        assert!(b.to_string().contains(&logged[0]), "{name}: {b}");
        let answers = every_answer(&s, &g.admin, &[]);
        drop(s);
        let text = std::fs::read_to_string(&log).unwrap();
        for secret in [tls.password.as_str(), wrong_password] {
            assert!(
                !text.contains(secret) && !answers.contains(secret),
                "{name}: a password shows"
            );
        }
    }
    // A password file others may read stops the start, naming it.
    let open = d.join("open-password");
    std::fs::copy(&tls.password_file, &open).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    g.config_with(
        "open.yaml",
        "state-open",
        &good.replace(
            &tls.password_file.display().to_string(),
            &open.display().to_string(),
        ),
    );
    let o = command(d, &["serve", "--config", "open.yaml"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&format!("broker.password_file {}", open.display()))
            && err.contains("chmod 600")
            && !err.contains(&tls.password),
        "{err}"
    );
}

/// `chimera fleet status` in the gateway's directory with `args`.
fn fleet_status(g: &FleetGateway, args: &[&str]) -> Output {
    let mut all = vec!["fleet", "status", "--wait", "0.2"];
    all.extend_from_slice(args);
    command(g.path(), &all).output().unwrap()
}

#[test]
fn the_cli_connects_with_a_password_or_a_client_certificate_and_names_what_failed() {
    if !have_mosquitto_tls(SUITE) {
        return;
    }
    let g = FleetGateway::with_tls_broker(1, Backend::Sqlite);
    let d = g.path();
    let tls = g.broker().tls.as_ref().unwrap();
    let s = |p: &Path| p.display().to_string();
    let (ca, pw, cert, key) = (
        s(&tls.ca),
        s(&tls.password_file),
        s(&tls.client.cert),
        s(&tls.client.key),
    );
    let url = format!("mqtts://localhost:{}", tls.port);
    let mtls = format!("mqtts://localhost:{}", tls.mtls_port);
    let wrong = s(&private(
        &d.join("wrong-password"),
        "not-the-password-0451\n",
    ));
    let foreign = s(&TestCa::new("someone else's CA").write(&d.join("foreign-ca.pem")));
    let ip = format!("mqtts://127.0.0.1:{}", tls.port);
    let login = ["--broker-user", tls.user.as_str(), "--broker-password-file"];

    let works = |args: &[&str]| {
        let o = fleet_status(&g, args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains("dev-0000"),
            "{args:?}: {out} {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    // A password over TLS.
    works(&[&["--broker", &url, "--broker-ca", &ca], &login[..], &[&pw]].concat());
    // A client certificate (mutual TLS), no password.
    works(&[
        "--broker",
        &mtls,
        "--broker-ca",
        &ca,
        "--broker-cert",
        &cert,
        "--broker-key",
        &key,
    ]);

    let fails = |args: &[&str], said: &[&str]| {
        let o = fleet_status(&g, args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} worked");
        for s in said {
            assert!(err.contains(s), "{args:?}: {s:?} not in {err}");
        }
        assert!(
            !err.contains(&tls.password),
            "{args:?}: the password shows: {err}"
        );
    };
    fails(
        &[
            &["--broker", &url, "--broker-ca", &ca],
            &login[..],
            &[&wrong],
        ]
        .concat(),
        &[
            &format!("refused the connection (CONNACK {REFUSED_PASSWORD})"),
            "the password (--broker-password-file) is wrong",
        ],
    );
    fails(
        &["--broker", &url, "--broker-ca", &ca],
        &[
            "refused the connection (CONNACK",
            "no username and password (--broker-user, --broker-password-file)",
        ],
    );
    fails(
        &[
            &["--broker", &url, "--broker-ca", &foreign],
            &login[..],
            &[&pw],
        ]
        .concat(),
        &[
            "TLS verification of the broker host localhost failed",
            "UnknownIssuer",
            "--broker-ca",
        ],
    );
    // Without --broker-ca the broker's certificate must chain to Mozilla's roots: it does not.
    fails(
        &[&["--broker", &url], &login[..], &[&pw]].concat(),
        &["UnknownIssuer", "Mozilla's root programme"],
    );
    fails(
        &[&["--broker", &ip, "--broker-ca", &ca], &login[..], &[&pw]].concat(),
        &["TLS verification of the broker host 127.0.0.1 failed"],
    );
    // The mTLS listener without a client certificate.
    fails(
        &["--broker", &mtls, "--broker-ca", &ca],
        &["TLS with the broker host localhost", "--broker-cert"],
    );
    // Settings refused before connecting.
    fails(
        &[
            "--broker",
            &format!("mqtt://localhost:{}", g.broker().port),
            "--broker-ca",
            &ca,
        ],
        &["--broker-ca needs an mqtts:// broker"],
    );
    fails(
        &["--broker", &url, "--broker-cert", &cert],
        &["--broker-cert and --broker-key go together"],
    );
    let open = d.join("open-password");
    std::fs::copy(&tls.password_file, &open).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    fails(
        &[
            &["--broker", &url, "--broker-ca", &ca],
            &login[..],
            &[&s(&open)],
        ]
        .concat(),
        &["--broker-password-file", "chmod 600"],
    );
}
