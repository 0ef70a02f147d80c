//! `chimera firmware order` and `verify` through the real binary, with the trust metadata
//! `chimera root`/`trust` make: an order it signs passes the library's device-side checks
//! (and its own `verify`), with the image file's SHA-256 and size; a tampered order, a
//! replayed sequence, a downgrade and an issuer without the `firmware` grant are refused.
//! Against a mosquitto of the test's own: `chimera firmware publish` leaves the exact
//! signed bytes retained on each targeted device's and group's firmware topic and refuses,
//! before connecting, what devices would refuse; `chimera watch-receipts` records a
//! firmware receipt signed by the device's enrolled key and refuses a changed one, one
//! signed by another key and one naming another device.
#![cfg(feature = "gateway")]

use std::path::Path;
use std::process::Output;

use aegis_ota::device::Identity;
use aegis_ota::firmware::{FirmwareContext, FirmwareRejection, verify_order};
use aegis_ota::sign::{PublicKey, SignError};
use aegis_ota::trust::{FirmwareGrant, TrustMetadata};
use serde_json::Value;

mod common;

fn chimera(dir: &Path, args: &[&str]) -> Output {
    common::serve::command(dir, args)
        .output()
        .expect("run chimera")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(
        o.status.success(),
        "chimera {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(!o.status.success(), "chimera {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Root, issuer key `gw`, trust metadata granting `grant` (None: no `--firmware`), signed
/// into `trust.signed`; returns it as a device would hold it.
fn trust(d: &Path, grant: Option<&str>) -> TrustMetadata {
    if !d.join("root").exists() {
        ok(d, &["root", "init", "--dir", "root"]);
        ok(d, &["keygen", "--out", "gw"]);
    }
    let mut args = vec![
        "trust",
        "add-issuer",
        "--trust",
        "root/trust.json",
        "--name",
        "fleet-gw-1",
        "--key",
        "gw.pub",
        "--groups",
        "site-a",
        "--devices",
        "orin-0042",
    ];
    if let Some(g) = grant {
        args.extend(["--firmware", g]);
    }
    ok(d, &args);
    let _ = std::fs::remove_file(d.join("trust.signed"));
    ok(
        d,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            "root/root.key",
            "--out",
            "trust.signed",
        ],
    );
    let root = PublicKey::read(&d.join("root/root.pub")).unwrap();
    TrustMetadata::verify_update(
        &std::fs::read(d.join("trust.signed")).unwrap(),
        &[root],
        1,
        0,
        aegis_ota::maml::now_s(),
    )
    .unwrap()
}

fn ctx() -> FirmwareContext {
    FirmwareContext {
        identity: Identity {
            id: "orin-0042".into(),
            groups: vec!["site-a".into()],
        },
        image: "aegis-image".into(),
        board: "jetson-orin-nano-devkit".into(),
        updater: "swupdate".into(),
        running_version: "1.3.2".into(),
        now_s: aegis_ota::maml::now_s(),
        max_clock_skew_s: 300,
        max_image_bytes: 1 << 30,
        download_hosts: vec!["updates.example".into()],
        https_only: true,
        max_sequence_jump: 1000,
    }
}

const ORDER: &[&str] = &[
    "firmware",
    "order",
    "--file",
    "image.swu",
    "--version",
    "1.4.0",
    "--board",
    "jetson-orin-nano-devkit",
    "--url",
    "https://updates.example/aegis-image-1.4.0.swu",
    "--group",
    "site-a",
    "--sequence",
    "7",
    "--key",
    "gw.key",
    "--out",
    "order.signed",
];

/// `chimera firmware verify` for orin-0042 running 1.3.2, each `(flag, value)` of `set`
/// replacing the default value of that flag or added.
fn device_verify<'a>(set: &[(&'a str, &'a str)]) -> Vec<&'a str> {
    let mut flags: Vec<(&str, &str)> = vec![
        ("--trust-metadata", "trust.signed"),
        ("--root", "root/root.pub"),
        ("--device", "orin-0042"),
        ("--group", "site-a"),
        ("--board", "jetson-orin-nano-devkit"),
        ("--running-version", "1.3.2"),
        ("--download-host", "updates.example"),
    ];
    for (flag, value) in set {
        match flags.iter_mut().find(|(f, _)| f == flag) {
            Some(f) => f.1 = value,
            None => flags.push((flag, value)),
        }
    }
    let mut args = vec!["firmware", "verify", "order.signed"];
    for (f, v) in flags {
        args.extend([f, v]);
    }
    args
}

#[test]
fn an_order_chimera_signs_passes_the_device_checks_and_a_tampered_one_fails() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(d.join("image.swu"), &image).unwrap();
    let t = trust(d, Some("upgrades"));
    assert_eq!(t.issuers[0].firmware, FirmwareGrant::Upgrades);

    let out = ok(d, ORDER);
    assert!(out.contains("aegis-image 1.4.0"), "{out}");
    // Never overwritten.
    assert!(refused(d, ORDER).contains("order.signed"));
    let signed = std::fs::read(d.join("order.signed")).unwrap();
    let v = verify_order(&signed, &t, &ctx(), &|_| 6).unwrap();
    assert_eq!(v.order.sha256, aegis_ota::sha256_hex(&image));
    assert_eq!(v.order.size, image.len() as u64);
    assert_eq!(v.order.sequence, 7);
    // chimera's own check says the same.
    let shown = ok(d, &device_verify(&[]));
    assert!(shown.contains(&v.digest), "{shown}");

    // One character of the signed order changed.
    let text = String::from_utf8(signed.clone()).unwrap();
    std::fs::write(d.join("order.signed"), text.replacen("1.4.0", "1.4.1", 1)).unwrap();
    assert!(matches!(
        verify_order(
            &std::fs::read(d.join("order.signed")).unwrap(),
            &t,
            &ctx(),
            &|_| 6
        ),
        Err(FirmwareRejection::Signature(SignError::Invalid(_)))
    ));
    let e = refused(d, &device_verify(&[]));
    assert!(e.contains("REFUSED: signature"), "{e}");
    std::fs::write(d.join("order.signed"), &signed).unwrap();

    // What a device refuses, chimera's check refuses, naming it.
    for (set, expect) in [
        (("--last-sequence", "7"), "sequence 7 is not above 7"),
        (
            ("--running-version", "1.5.0"),
            "does not say `downgrade: true`",
        ),
        (("--board", "jetson-agx-orin-devkit"), "board:"),
        (("--max-image-mb", "0"), "above the limit"),
        (("--download-host", "mirror.example"), "allow-list"),
    ] {
        let e = refused(d, &device_verify(&[set]));
        assert!(e.contains(expect), "{set:?}: {e}");
    }

    // A gateway does not sign what devices refuse.
    let mut bad = ORDER.to_vec();
    bad[5] = "1.4";
    let last = bad.len() - 1;
    bad[last] = "bad.signed";
    let e = refused(d, &bad);
    assert!(e.contains("MAJOR.MINOR.PATCH"), "{e}");
    assert!(!d.join("bad.signed").exists());

    // The same key without the grant: refused, naming the grant.
    let t = trust(d, None);
    assert_eq!(t.issuers[0].firmware, FirmwareGrant::None);
    assert!(matches!(
        verify_order(&signed, &t, &ctx(), &|_| 6),
        Err(FirmwareRejection::NotFirmwareIssuer { .. })
    ));
    let e = refused(d, &device_verify(&[]));
    assert!(e.contains("may not order firmware"), "{e}");
}

#[test]
fn add_issuer_firmware_grants_reach_the_trust_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let t = trust(d, Some("upgrades-and-downgrades"));
    assert_eq!(t.issuers[0].firmware, FirmwareGrant::UpgradesAndDowngrades);
    let json = std::fs::read_to_string(d.join("root/trust.json")).unwrap();
    assert!(
        json.contains("\"firmware\": \"upgrades_and_downgrades\""),
        "{json}"
    );
    let e = refused(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "x",
            "--key",
            "gw.pub",
            "--firmware",
            "everything",
        ],
    );
    assert!(e.contains("upgrades-and-downgrades"), "{e}");
    // Without --firmware nothing is written, so older agents still read the file.
    trust(d, None);
    let json = std::fs::read_to_string(d.join("root/trust.json")).unwrap();
    assert!(!json.contains("firmware"), "{json}");
}

/// `chimera firmware publish FILE` to `broker`, checked against the trust metadata or not.
fn publish(d: &Path, file: &str, broker: &str, with_trust: bool) -> Output {
    let mut args = vec!["firmware", "publish", file, "--broker", broker];
    if with_trust {
        args.extend([
            "--trust-metadata",
            "trust.signed",
            "--root",
            "root/root.pub",
        ]);
    }
    chimera(d, &args)
}

#[test]
fn publish_leaves_the_order_retained_on_each_target_topic_and_refuses_bad_orders_first() {
    if !common::have_mosquitto("chimera_firmware") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("image.swu"), b"an image").unwrap();
    let t = trust(d, Some("upgrades"));
    let mut order = ORDER.to_vec();
    order.extend(["--device", "orin-0042"]);
    ok(d, &order);
    let signed = std::fs::read(d.join("order.signed")).unwrap();
    let broker = common::Broker::start(&d.join("broker"));
    let url = format!("mqtt://127.0.0.1:{}", broker.port);

    let o = publish(d, "order.signed", &url, true);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "aegis-image 1.4.0",
        "signature ok",
        "aegis/v1/orin-0042/firmware, aegis/v1/groups/site-a/firmware",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    // The exact signed bytes, retained, on the device's and the group's topic; a device
    // takes them.
    for topic in [
        "aegis/v1/orin-0042/firmware",
        "aegis/v1/groups/site-a/firmware",
    ] {
        let got = broker.retained(topic);
        assert_eq!(got, signed, "{topic}");
        verify_order(&got, &t, &ctx(), &|_| 6).unwrap();
    }

    // Refused before any connection: on a port nobody listens on, a publish that got as far
    // as the broker would fail with the connection's error instead.
    let closed = format!("mqtt://127.0.0.1:{}", common::tools::free_port());
    let refused_publish = |file: &str, with_trust: bool, why: &str| {
        let o = publish(d, file, &closed, with_trust);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{file}: {e}");
        assert!(
            e.contains(&format!(
                "{file} is not a firmware order devices would take"
            )) && e.contains(why),
            "{file}, {why}: {e}"
        );
    };
    // Not an order: signed trust metadata (one signature block, other JSON), an image.
    refused_publish("trust.signed", false, "order: ");
    refused_publish("image.swu", false, "signature block");
    // One byte of the signed order changed.
    let text = String::from_utf8(signed.clone()).unwrap();
    std::fs::write(d.join("flipped.signed"), text.replacen("1.4.0", "1.4.1", 1)).unwrap();
    refused_publish("flipped.signed", true, "signature");
    // Signed by a key the trust metadata does not know.
    ok(d, &["keygen", "--out", "other"]);
    let mut other = ORDER.to_vec();
    let n = other.len();
    other[n - 3] = "other.key";
    other[n - 1] = "other.signed";
    ok(d, &other);
    refused_publish("other.signed", true, "unknown signing key");
    // A group the issuer may not target.
    let mut wide = ORDER.to_vec();
    wide.extend(["--group", "site-b"]);
    wide[n - 1] = "wide.signed";
    ok(d, &wide);
    refused_publish("wide.signed", true, "may not target group \"site-b\"");
    // The issuer's grant withdrawn.
    trust(d, None);
    refused_publish("order.signed", true, "may not order firmware");
}

#[test]
fn watch_receipts_records_firmware_receipts_that_verify_and_refuses_others() {
    if !common::have_mosquitto("chimera_firmware") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = common::Broker::start(&d.join("broker"));
    let fleet = common::fleet::Fleet::provision(d, 3, "site-a", broker.port);
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    // Firmware receipts are not workflow answers: `--count` is never reached and the watch
    // ends at its timeout (an error of its own, after the verification's).
    let watch = || {
        let o = chimera(
            d,
            &[
                "watch-receipts",
                "--count",
                "1",
                "--timeout",
                "2",
                "--broker",
                &url,
            ],
        );
        (
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let recorded = || -> Value {
        serde_json::from_slice(
            &std::fs::read(d.join("chimera-state/firmware-receipts.json")).unwrap(),
        )
        .unwrap()
    };
    // Retained, so that the watch gets them as it subscribes.
    let topic = |device: &str| format!("aegis/v1/{device}/receipts");

    let good = fleet.firmware_receipt("dev-0000", "dev-0000");
    fleet.publish(&topic("dev-0000"), good.as_bytes(), true);
    let (out, err) = watch();
    assert!(
        out.contains(
            "dev-0000: firmware aegis-image 1.4.0: applied (runs 1.4.0 in slot B, order sha256 abababababababab) — signature ok"
        ),
        "{out}"
    );
    assert!(!err.contains("failed verification"), "{err}");
    assert!(err.contains("0 of 1 receipt(s) arrived"), "{err}");
    assert_eq!(recorded()["dev-0000"]["text"], good.as_str());
    // Recorded as what it is, not as a model or workflow receipt.
    assert!(!d.join("chimera-state/model-receipts.json").exists());
    let receipts = std::fs::read_to_string(d.join("chimera-state/receipts.json")).unwrap();
    assert_eq!(receipts.trim(), "{}");

    // One byte of the signed part changed; another enrolled device's key; a device's own
    // key on a receipt that names another device.
    fleet.publish(
        &topic("dev-0000"),
        good.replacen("1.4.0", "1.5.0", 1).as_bytes(),
        true,
    );
    fleet.publish(
        &topic("dev-0001"),
        fleet.firmware_receipt("dev-0000", "dev-0001").as_bytes(),
        true,
    );
    fleet.publish(
        &topic("dev-0002"),
        fleet.firmware_receipt("dev-0002", "dev-0000").as_bytes(),
        true,
    );
    let (out, err) = watch();
    for (device, why) in [
        ("dev-0000", "signature"),
        ("dev-0001", "signature"),
        ("dev-0002", "names device \"dev-0000\""),
    ] {
        assert!(
            out.lines().any(
                |l| l.starts_with(&format!("{device}: BAD firmware receipt:")) && l.contains(why)
            ),
            "{device}: {out}"
        );
    }
    assert!(err.contains("3 receipt(s) failed verification"), "{err}");
    // Nothing refused replaces or joins what verified.
    let r = recorded();
    assert_eq!(r["dev-0000"]["text"], good.as_str());
    assert_eq!(r.as_object().unwrap().len(), 1, "{r}");
}
