//! `chimera model pack`, `sign` and `rollback` through the real binary, then the
//! device-side checks of the library on what they wrote: the manifest verifies against
//! trust metadata that lets the issuer ship models, the bundle's files match it, and the
//! rollback order verifies for the devices it targets.
//!
//! Needs the `chimera` binary (the `gateway` feature): run on the host; the device-side
//! checks alone are the library's unit tests, which also run on aarch64.
#![cfg(feature = "gateway")]

use std::path::Path;
use std::process::Output;

use aegis_config::BackendKind;
use aegis_ota::device::Identity;
use aegis_ota::model::{
    BundleError, ModelContext, ModelRejection, Platform, verify_bundle_files, verify_manifest,
};
use aegis_ota::model_rollback::verify_rollback_order;
use aegis_ota::sign::PublicKey;
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};

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

const PACK: &[&str] = &[
    "model",
    "pack",
    "bundle",
    "--name",
    "moderation",
    "--version",
    "4",
    "--kind",
    "yolov8",
    "--group",
    "site-a",
    "--model",
    "model.onnx",
    "--labels",
    "labels.txt",
    "--input",
    "images:float32:1x3x640x640",
    "--output",
    "output0:float32:1x84x8400",
    "--reference-input",
    "health/input.bin",
    "--expect",
    "output0:max:0.5:1",
    "--out",
    "manifest.json",
];

#[test]
fn pack_sign_and_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("health")).unwrap();
    std::fs::write(bundle.join("model.onnx"), vec![3u8; 5000]).unwrap();
    std::fs::write(bundle.join("labels.txt"), "person\ncar\n").unwrap();
    std::fs::write(bundle.join("health/input.bin"), vec![1u8; 64]).unwrap();
    ok(d, &["keygen", "--out", "gw"]);

    let packed = ok(d, PACK);
    assert!(packed.contains("3 files"), "{packed}");
    // Never overwritten.
    assert!(refused(d, PACK).contains("manifest.json"));
    ok(d, &["model", "sign", "manifest.json", "--key", "gw.key"]);
    let signed = std::fs::read(d.join("manifest.json.signed")).unwrap();
    // Signing twice is refused.
    let again = refused(
        d,
        &["model", "sign", "manifest.json.signed", "--key", "gw.key"],
    );
    assert!(again.contains("already signed"), "{again}");

    let key = PublicKey::read(&d.join("gw.pub")).unwrap();
    let mut trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 2,
        expires_at: "9999-01-01T00:00:00Z".into(),
        root: Roots {
            threshold: 1,
            keys: vec![],
        },
        issuers: vec![Issuer {
            name: "fleet-gw-1".into(),
            key: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
            },
            devices: vec![],
            groups: vec!["site-a".into()],
            models: true,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    let ctx = ModelContext {
        identity: Identity {
            id: "orin-0042".into(),
            groups: vec!["site-a".into()],
        },
        platform: Platform {
            backend: BackendKind::Cuda,
            module: None,
            trt_version: None,
        },
        agent_version: env!("CARGO_PKG_VERSION").into(),
        now_s: aegis_ota::maml::now_s(),
        max_clock_skew_s: 300,
        installed_version: Some(3),
        free_disk_bytes: 1 << 30,
        max_bundle_bytes: 1 << 30,
    };
    let v = verify_manifest(&signed, &trust, &ctx).unwrap();
    assert_eq!(v.manifest.name, "moderation");
    assert_eq!(v.manifest.version, 4);
    assert_eq!(v.total_bytes, 5000 + 11 + 64);
    verify_bundle_files(&bundle, &v).unwrap();

    // A file changed after packing is caught, by name.
    std::fs::write(bundle.join("labels.txt"), "person\ncat\n").unwrap();
    assert!(matches!(
        verify_bundle_files(&bundle, &v).unwrap_err(),
        BundleError::Hash { path, .. } if path == "labels.txt"
    ));
    // The same issuer without the models grant is refused.
    trust.issuers[0].models = false;
    assert!(matches!(
        verify_manifest(&signed, &trust, &ctx).unwrap_err(),
        ModelRejection::NotModelIssuer { .. }
    ));
}

#[test]
fn add_issuer_models_flag_reaches_the_trust_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["root", "init", "--dir", "root"]);
    ok(d, &["keygen", "--out", "gw"]);
    let add = |models: bool| {
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
        ];
        if models {
            args.push("--models");
        }
        ok(d, &args);
        let t: TrustMetadata =
            serde_json::from_slice(&std::fs::read(d.join("root/trust.json")).unwrap()).unwrap();
        t.issuers[0].models
    };
    assert!(!add(false));
    assert!(add(true));
}

#[test]
fn pack_refuses_a_bundle_with_a_symbolic_link_or_a_bad_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bundle = d.join("bundle");
    std::fs::create_dir_all(bundle.join("health")).unwrap();
    std::fs::write(bundle.join("model.onnx"), b"m").unwrap();
    std::fs::write(bundle.join("labels.txt"), b"l").unwrap();
    std::fs::write(bundle.join("health/input.bin"), b"i").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", bundle.join("passwd")).unwrap();
    let e = refused(d, PACK);
    assert!(e.contains("passwd") && e.contains("symbolic link"), "{e}");
    std::fs::remove_file(bundle.join("passwd")).unwrap();
    // The model file named is not in the bundle.
    let mut args = PACK.to_vec();
    let i = args.iter().position(|a| *a == "model.onnx").unwrap();
    args[i] = "missing.onnx";
    let e = refused(d, &args);
    assert!(e.contains("missing.onnx"), "{e}");
    assert!(!d.join("manifest.json").exists());
}

#[test]
fn rollback_writes_a_signed_order_devices_verify_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen", "--out", "gw"]);
    let args = [
        "model",
        "rollback",
        "--name",
        "moderation",
        "--from",
        "5",
        "--to",
        "4",
        "--group",
        "site-a",
        "--key",
        "gw.key",
        "--expires-in",
        "2d",
        "--reason",
        "false positives on site A",
        "--out",
        "rollback.signed",
    ];
    let said = ok(d, &args);
    assert!(said.contains("from version 5 to version 4"), "{said}");
    let bytes = std::fs::read(d.join("rollback.signed")).unwrap();
    // Never overwritten.
    let e = refused(d, &args);
    assert!(e.contains("rollback.signed"), "{e}");
    assert_eq!(std::fs::read(d.join("rollback.signed")).unwrap(), bytes);

    let key = PublicKey::read(&d.join("gw.pub")).unwrap();
    let mut trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 2,
        expires_at: "9999-01-01T00:00:00Z".into(),
        root: Roots {
            threshold: 1,
            keys: vec![],
        },
        issuers: vec![Issuer {
            name: "fleet-gw-1".into(),
            key: {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD.encode(key.to_bytes())
            },
            devices: vec![],
            groups: vec!["site-a".into()],
            models: true,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    let mut ctx = ModelContext {
        identity: Identity {
            id: "orin-0042".into(),
            groups: vec!["site-a".into()],
        },
        platform: Platform {
            backend: BackendKind::Cuda,
            module: None,
            trt_version: None,
        },
        agent_version: env!("CARGO_PKG_VERSION").into(),
        now_s: aegis_ota::maml::now_s(),
        max_clock_skew_s: 300,
        installed_version: Some(5),
        free_disk_bytes: 0,
        max_bundle_bytes: 0,
    };
    let v = verify_rollback_order(&bytes, &trust, &ctx).unwrap();
    assert_eq!(
        (
            v.order.name.as_str(),
            v.order.from_version,
            v.order.to_version
        ),
        ("moderation", 5, 4)
    );
    assert_eq!(v.order.reason, "false positives on site A");
    // It expires after the two days asked for.
    ctx.now_s += 2 * 86_400 + 1;
    assert!(matches!(
        verify_rollback_order(&bytes, &trust, &ctx),
        Err(ModelRejection::Expired { .. })
    ));
    ctx.now_s -= 2 * 86_400 + 1;
    trust.issuers[0].models = false;
    assert!(matches!(
        verify_rollback_order(&bytes, &trust, &ctx),
        Err(ModelRejection::NotModelIssuer { .. })
    ));

    // Refused before anything is written: forward "rollback", a bad validity.
    let mut forward = args.to_vec();
    forward[5] = "3";
    forward[17] = "forward.signed";
    let e = refused(d, &forward);
    assert!(e.contains("below from_version"), "{e}");
    let mut bad = args.to_vec();
    bad[13] = "7w";
    bad[17] = "bad.signed";
    assert!(refused(d, &bad).contains("7w"));
    assert!(!d.join("forward.signed").exists() && !d.join("bad.signed").exists());
}
