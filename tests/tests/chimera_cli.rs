//! The gateway's offline flow through the real `chimera` binary: root, issuer, trust
//! metadata, a workflow signed and verified as a device would, then the issuer revoked.

use std::path::Path;
use std::process::Command;

use aegis_tests::{chimera, chimera_ok as ok};

/// `chimera root sign-trust` of `root/trust.json` with `key` into `out`.
fn sign_trust(d: &Path, key: &str, out: &str) {
    ok(
        d,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            key,
            "--out",
            out,
        ],
    );
}

fn refused(dir: &Path, args: &[&str]) -> String {
    let o = chimera(dir, args);
    assert!(!o.status.success(), "chimera {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn root_issuer_sign_verify_and_revoke() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["root", "init", "--dir", "root"]);
    ok(d, &["keygen", "--out", "gw"]);
    let add = ok(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "fleet-gw-1",
            "--key",
            "gw.pub",
            "--devices",
            "orin-0042",
            "--groups",
            "site-a",
        ],
    );
    assert!(add.contains("version 2"), "{add}");
    sign_trust(d, "root/root.key", "trust.signed");
    ok(d, &["new", "--out", "wf.maml.md", "--device", "orin-0042"]);
    ok(d, &["sign", "wf.maml.md", "--key", "gw.key"]);
    let verify = [
        "verify",
        "wf.signed.maml.md",
        "--trust-metadata",
        "trust.signed",
        "--root",
        "root/root.pub",
        "--device",
        "orin-0042",
    ];
    let out = ok(d, &verify);
    assert!(
        out.contains("ok  trust metadata version 2") && out.contains("ok  signature ml-dsa-65"),
        "{out}"
    );
    // Another device: refused, with the reason.
    let mut other = verify;
    other[7] = "orin-0099";
    assert!(refused(d, &other).contains("not this device \"orin-0099\""));
    // Secret key files are private.
    let mode = std::fs::metadata(d.join("gw.key")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    // Revoke the issuer: the same workflow stops verifying under the new trust version.
    let id = ok(d, &["keygen", "--out", "spare"]);
    assert!(id.contains("key id mldsa65:"));
    let gw_id = {
        let out = ok(d, &["verify", "wf.signed.maml.md", "--trust", "gw.pub"]);
        out.lines()
            .find_map(|l| l.split(" by ").nth(1))
            .unwrap()
            .trim()
            .to_string()
    };
    ok(
        d,
        &[
            "trust",
            "revoke",
            "--trust",
            "root/trust.json",
            "--key-id",
            &gw_id,
        ],
    );
    sign_trust(d, "root/root.key", "trust.signed");
    let e = refused(d, &verify);
    assert!(
        e.contains(&format!(
            "signing key {gw_id} is revoked by the device's trust metadata"
        )) && !e.contains("altered"),
        "{e}"
    );
    // Trust metadata signed by a key that is not the root: refused.
    sign_trust(d, "spare.key", "forged.signed");
    let mut forged = verify;
    forged[3] = "forged.signed";
    assert!(refused(d, &forged).contains("0 valid signatures by current root keys"));
}

#[test]
fn a_sealed_workflow_opens_only_with_the_devices_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["keygen", "--out", "gw"]);
    ok(d, &["keygen", "--out", "dev"]);
    ok(d, &["kem-keygen", "--out", "dev"]);
    ok(d, &["kem-keygen", "--out", "stranger"]);
    ok(
        d,
        &[
            "enroll",
            "orin-0042",
            "dev.pub",
            "--kem",
            "dev.kem.pub",
            "--group",
            "site-a",
        ],
    );
    ok(d, &["new", "--out", "wf.maml.md", "--device", "orin-0042"]);
    let text = std::fs::read_to_string(d.join("wf.maml.md"))
        .unwrap()
        .replace(
            "url: \"rtsp://192.0.2.10/stream1\" }",
            "url: \"rtsp://192.0.2.10/stream1\", username: viewer, password: hunter2 }",
        );
    std::fs::write(d.join("wf.maml.md"), text).unwrap();
    ok(d, &["seal", "wf.maml.md", "--to", "orin-0042"]);
    let sealed = std::fs::read_to_string(d.join("wf.sealed.maml.md")).unwrap();
    assert!(!sealed.contains("hunter2") && sealed.contains("## Sealed"));
    ok(d, &["sign", "wf.sealed.maml.md", "--key", "gw.key"]);
    let out = ok(
        d,
        &[
            "verify",
            "wf.sealed.signed.maml.md",
            "--trust",
            "gw.pub",
            "--open",
            "dev.kem.key",
        ],
    );
    assert!(out.contains("ok  pipeline: 1 sources"), "{out}");
    let e = refused(
        d,
        &[
            "verify",
            "wf.sealed.signed.maml.md",
            "--trust",
            "gw.pub",
            "--open",
            "stranger.kem.key",
        ],
    );
    assert!(e.contains("not for this device's keys"), "{e}");
}

#[test]
fn bench_reports_every_operation() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["bench", "--runs", "2"]);
    for what in [
        "ML-DSA-65 sign",
        "ML-DSA-65 verify",
        "seal for 100",
        "open as recipient 100",
        "full device check",
    ] {
        assert!(out.contains(what), "{what} missing: {out}");
    }
}

#[test]
fn aegis_provision_makes_private_keys_once_and_chimera_enrols_them() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let aegis = |args: &[&str]| {
        Command::new(aegis_tests::aegis_bin())
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    let o = aegis(&["provision", "--dir", "keys"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (f, mode) in [
        ("keys/device.key", 0o600),
        ("keys/device.kem.key", 0o600),
        ("keys", 0o700),
    ] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, mode, "{f}");
    }
    let again = aegis(&["provision", "--dir", "keys"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    let out = ok(
        d,
        &[
            "enroll",
            "orin-7",
            "keys/device.pub",
            "--kem",
            "keys/device.kem.pub",
        ],
    );
    assert!(out.contains("enrolled orin-7 (mldsa65:"), "{out}");
}

#[test]
fn a_group_key_reaches_members_sealed_and_opens_group_sealed_workflows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let aegis = |args: &[&str]| {
        Command::new(aegis_tests::aegis_bin())
            .args(args)
            .current_dir(d)
            .output()
            .unwrap()
    };
    ok(d, &["keygen", "--out", "gw"]);
    ok(d, &["keygen", "--out", "mallory"]);
    assert!(aegis(&["provision", "--dir", "dev"]).status.success());
    ok(
        d,
        &[
            "enroll",
            "orin-0042",
            "dev/device.pub",
            "--kem",
            "dev/device.kem.pub",
            "--group",
            "site-a",
        ],
    );
    let out = ok(
        d,
        &[
            "group-key",
            "--group",
            "site-a",
            "--key",
            "gw.key",
            "--out",
            "groups",
        ],
    );
    assert!(out.contains("delivered to 1 members"), "{out}");
    let delivery = "groups/site-a.for-orin-0042.delivery";
    // A delivery checked against the wrong gateway key is refused.
    let bad = aegis(&[
        "provision",
        "--dir",
        "dev",
        "--group-key",
        delivery,
        "--issuer",
        "mallory.pub",
    ]);
    assert!(
        !bad.status.success()
            && String::from_utf8_lossy(&bad.stderr).contains("unknown signing key")
    );
    let o = aegis(&[
        "provision",
        "--dir",
        "dev",
        "--group-key",
        delivery,
        "--issuer",
        "gw.pub",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let group_keys = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d.join("dev"))
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.starts_with("group.site-a.") && n.ends_with(".kem.key"))
            .map(|n| format!("dev/{n}"))
            .collect();
        v.sort();
        v
    };
    let first = group_keys();
    assert_eq!(first.len(), 1, "{first:?}");
    // A workflow sealed to the group opens with the installed group key.
    ok(d, &["new", "--out", "wf.maml.md", "--device", "orin-0042"]);
    ok(d, &["seal", "wf.maml.md", "--to", "site-a"]);
    ok(d, &["sign", "wf.sealed.maml.md", "--key", "gw.key"]);
    let verify_with =
        |doc: &str, key: &str| chimera(d, &["verify", doc, "--trust", "gw.pub", "--open", key]);
    let out = verify_with("wf.sealed.signed.maml.md", &first[0]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("ok  pipeline"),
        "{out:?}"
    );
    // Rotation: a second run makes a new group key for the members enrolled now; the
    // device installs it beside the old one; documents sealed from then on need the new
    // key (a removed member keeping the old key reads nothing new).
    ok(
        d,
        &[
            "group-key",
            "--group",
            "site-a",
            "--key",
            "gw.key",
            "--out",
            "groups2",
        ],
    );
    let o = aegis(&[
        "provision",
        "--dir",
        "dev",
        "--group-key",
        "groups2/site-a.for-orin-0042.delivery",
        "--issuer",
        "gw.pub",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let both = group_keys();
    assert_eq!(both.len(), 2, "{both:?}");
    let new_key = both.iter().find(|k| **k != first[0]).unwrap().clone();
    ok(d, &["new", "--out", "wf2.maml.md", "--device", "orin-0042"]);
    ok(d, &["seal", "wf2.maml.md", "--to", "site-a"]);
    ok(d, &["sign", "wf2.sealed.maml.md", "--key", "gw.key"]);
    assert!(
        verify_with("wf2.sealed.signed.maml.md", &new_key)
            .status
            .success()
    );
    let old = verify_with("wf2.sealed.signed.maml.md", &first[0]);
    assert!(
        !old.status.success(),
        "the retired key still opens new documents"
    );
    let reg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("devices.json")).unwrap()).unwrap();
    assert_eq!(
        reg["site-a"]["retired"].as_array().map(Vec::len),
        Some(1),
        "{reg}"
    );
}

#[test]
fn verify_applies_the_trust_metadatas_root_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["root", "init", "--dir", "root"]);
    ok(d, &["keygen", "--out", "root2"]);
    ok(d, &["keygen", "--out", "stranger"]);
    ok(d, &["keygen", "--out", "gw"]);
    ok(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "fleet-gw-1",
            "--key",
            "gw.pub",
            "--devices",
            "orin-0042",
        ],
    );
    // Two roots, both needed from now on; both sign.
    ok(
        d,
        &[
            "trust",
            "rotate",
            "--trust",
            "root/trust.json",
            "--new-root",
            "root/root.pub",
            "--new-root",
            "root2.pub",
            "--threshold",
            "2",
        ],
    );
    ok(
        d,
        &[
            "root",
            "sign-trust",
            "--trust",
            "root/trust.json",
            "--key",
            "root/root.key",
            "--key",
            "root2.key",
            "--out",
            "trust.signed",
        ],
    );
    ok(d, &["new", "--out", "wf.maml.md", "--device", "orin-0042"]);
    ok(d, &["sign", "wf.maml.md", "--key", "gw.key"]);
    let verify = |roots: &[&str], extra: &[&str]| {
        let mut a = vec![
            "verify",
            "wf.signed.maml.md",
            "--trust-metadata",
            "trust.signed",
            "--device",
            "orin-0042",
        ];
        for r in roots {
            a.extend(["--root", r]);
        }
        a.extend(extra);
        chimera(d, &a)
    };
    // Both roots given: 2 of 2 valid, the metadata's threshold 2 applied and said.
    let o = verify(&["root/root.pub", "root2.pub"], &[]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains(
            "2 of the 2 --root keys signed it, threshold 2 (the metadata's root.threshold)"
        ),
        "{out}"
    );
    // One real root and a stranger: one valid signature is not the threshold of 2
    // (`verify` used to check the --root keys with threshold 1 and accept this).
    let o = verify(&["root/root.pub", "stranger.pub"], &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "accepted below the threshold");
    assert!(
        e.contains("1 valid signatures by current root keys, 2 needed")
            && e.contains("threshold 2, the metadata's root.threshold"),
        "{e}"
    );
    // A device that holds a lower threshold: given explicitly, and said so.
    let o = verify(&["root/root.pub", "stranger.pub"], &["--threshold", "1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        out.contains("1 of the 2 --root keys signed it, threshold 1 (given with --threshold)"),
        "{out}"
    );
    let e = refused(
        d,
        &[
            "verify",
            "wf.signed.maml.md",
            "--trust-metadata",
            "trust.signed",
            "--root",
            "root/root.pub",
            "--device",
            "orin-0042",
            "--threshold",
            "0",
        ],
    );
    assert!(e.contains("--threshold must be at least 1"), "{e}");
}

#[test]
fn every_file_error_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["root", "init", "--dir", "root"]);
    ok(d, &["keygen", "--out", "gw"]);
    ok(d, &["kem-keygen", "--out", "dev"]);
    ok(d, &["new", "--out", "wf.maml.md", "--device", "orin-0042"]);
    ok(d, &["sign", "wf.maml.md", "--key", "gw.key"]);
    let cases: &[(&[&str], &str)] = &[
        (
            &["sign", "absent-wf.maml.md", "--key", "gw.key"],
            "absent-wf.maml.md",
        ),
        (
            &["sign", "wf.maml.md", "--key", "absent-gw.key"],
            "absent-gw.key",
        ),
        (
            &[
                "sign",
                "wf.maml.md",
                "--key",
                "gw.key",
                "--out",
                "no-dir/wf.signed.maml.md",
            ],
            "no-dir/wf.signed.maml.md",
        ),
        (
            &["verify", "absent.signed.maml.md", "--trust", "gw.pub"],
            "absent.signed.maml.md",
        ),
        (
            &["verify", "wf.signed.maml.md", "--trust", "absent-trust.pub"],
            "absent-trust.pub",
        ),
        (
            &[
                "verify",
                "wf.signed.maml.md",
                "--trust-metadata",
                "absent-trust.signed",
                "--root",
                "root/root.pub",
                "--device",
                "orin-0042",
            ],
            "absent-trust.signed",
        ),
        (
            &[
                "verify",
                "wf.signed.maml.md",
                "--trust",
                "gw.pub",
                "--open",
                "absent.kem.key",
            ],
            "absent.kem.key",
        ),
        (
            &["seal", "absent-seal.maml.md", "--to", "dev.kem.pub"],
            "absent-seal.maml.md",
        ),
        (
            &[
                "trust",
                "add-issuer",
                "--trust",
                "absent-draft.json",
                "--name",
                "x",
                "--key",
                "gw.pub",
            ],
            "absent-draft.json",
        ),
        (
            &[
                "trust",
                "add-issuer",
                "--trust",
                "root/trust.json",
                "--name",
                "x",
                "--key",
                "absent-issuer.pub",
            ],
            "absent-issuer.pub",
        ),
        (
            &[
                "root",
                "sign-trust",
                "--trust",
                "root/trust.json",
                "--key",
                "root/root.key",
                "--out",
                "no-dir/trust.signed",
            ],
            "no-dir/trust.signed",
        ),
        (
            &["enroll", "orin-1", "absent-device.pub"],
            "absent-device.pub",
        ),
        (
            &[
                "enroll",
                "orin-1",
                "gw.pub",
                "--kem",
                "absent-device.kem.pub",
            ],
            "absent-device.kem.pub",
        ),
        (
            &[
                "group-key",
                "--group",
                "g",
                "--registry",
                "absent-registry.json",
                "--key",
                "gw.key",
                "--out",
                "groups",
            ],
            "absent-registry.json",
        ),
        (
            &["publish", "absent-pub.signed.maml.md", "--to", "orin-1"],
            "absent-pub.signed.maml.md",
        ),
    ];
    for (args, path) in cases {
        let e = refused(d, args);
        assert!(
            e.contains(path),
            "chimera {args:?}: the error does not name {path}: {e}"
        );
    }
    // A key file that fails its checks: named, with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.join("gw.pub"), std::fs::Permissions::from_mode(0o664)).unwrap();
    let e = refused(d, &["verify", "wf.signed.maml.md", "--trust", "gw.pub"]);
    assert!(e.contains("gw.pub") && e.contains("chmod 644"), "{e}");
    std::fs::set_permissions(d.join("gw.key"), std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = refused(
        d,
        &[
            "sign",
            "wf.maml.md",
            "--key",
            "gw.key",
            "--out",
            "x.maml.md",
        ],
    );
    assert!(e.contains("gw.key") && e.contains("chmod 600"), "{e}");
}

#[test]
fn public_key_files_are_written_so_the_key_checks_accept_them_under_any_umask() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A group-writable umask (Debian's default for users with a private group).
    let o = Command::new("sh")
        .arg("-c")
        .arg("umask 002 && \"$0\" keygen --out gw && \"$0\" kem-keygen --out dev && \"$0\" root init --dir root")
        .arg(aegis_tests::chimera_bin())
        .current_dir(d)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["gw.pub", "dev.kem.pub", "root/root.pub"] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o644, "{f}");
    }
    for f in ["gw.key", "dev.kem.key", "root/root.key"] {
        let m = std::fs::metadata(d.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600, "{f}");
    }
    ok(
        d,
        &[
            "trust",
            "add-issuer",
            "--trust",
            "root/trust.json",
            "--name",
            "gw",
            "--key",
            "gw.pub",
        ],
    );
    ok(d, &["enroll", "orin-1", "gw.pub", "--kem", "dev.kem.pub"]);
}
