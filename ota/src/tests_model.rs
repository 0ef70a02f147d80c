//! Model manifests: the rejection matrix (each refusal its own variant, naming the field),
//! the bundle file checks on real directories, and hostile bytes into the parser.

use std::path::Path;

use aegis_config::BackendKind;
use base64::Engine as _;

use crate::TargetRefusal;
use crate::device::Identity;
use crate::model::*;
use crate::sign::{Purpose, SecretKey, SignError};
use crate::trust::{Issuer, Roots, TrustMetadata};

const NOW: i64 = 1_795_730_000; // 2026-11-26T…
const ISSUED: &str = "2026-11-26T10:00:00Z";
const EXPIRES: &str = "2026-11-27T10:00:00Z";

fn b64(k: &SecretKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.public().to_bytes())
}

struct World {
    issuer: SecretKey,
    trust: TrustMetadata,
    ctx: ModelContext,
}

fn world() -> World {
    let issuer = SecretKey::generate().unwrap();
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 2,
        expires_at: "2027-06-01T00:00:00Z".into(),
        root: Roots {
            threshold: 1,
            keys: vec![],
        },
        issuers: vec![Issuer {
            name: "gw-1".into(),
            key: b64(&issuer),
            devices: vec!["orin-0042".into()],
            groups: vec!["site-a".into()],
            models: true,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    World {
        issuer,
        trust,
        ctx: ModelContext {
            identity: Identity {
                id: "orin-0042".into(),
                groups: vec!["site-a".into()],
            },
            platform: Platform {
                backend: BackendKind::Jetson,
                module: Some("jetson-orin-nx-16gb".into()),
                trt_version: Some("10.3.0".into()),
            },
            agent_version: "0.4.2".into(),
            now_s: NOW,
            max_clock_skew_s: 300,
            installed_version: Some(2),
            free_disk_bytes: 1 << 30,
            max_bundle_bytes: 100 << 20,
        },
    }
}

const MODEL: &[u8] = b"onnx model bytes";
const LABELS: &[u8] = b"person\ncar\n";
const INPUT: &[u8] = &[7u8; 48];

fn file(path: &str, bytes: &[u8]) -> BundleFile {
    BundleFile {
        path: path.into(),
        sha256: crate::sha256_hex(bytes),
        size: bytes.len() as u64,
    }
}

fn manifest() -> ModelManifest {
    ModelManifest {
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: ISSUED.into(),
        expires_at: EXPIRES.into(),
        platform: PlatformSpec {
            backends: vec![BackendKind::Cpu, BackendKind::Cuda, BackendKind::Jetson],
            runtime: Runtime::Onnx {},
        },
        min_agent_version: "0.4.0".into(),
        ..ModelManifest::example(
            "moderation",
            3,
            vec![
                file("health/input.bin", INPUT),
                file("labels.txt", LABELS),
                file("model.onnx", MODEL),
            ],
        )
    }
}

fn signed(m: &ModelManifest, key: &SecretKey) -> Vec<u8> {
    sign_manifest(&m.to_json().unwrap(), key).unwrap()
}

/// Signed without the gateway's validation (an issuer that signs anything).
fn signed_anyway(m: &ModelManifest, key: &SecretKey) -> Vec<u8> {
    let json = m.to_json().unwrap();
    let mut out = json.clone();
    out.extend_from_slice(
        key.sign_block(&json, Purpose::Model)
            .unwrap()
            .render()
            .as_bytes(),
    );
    out
}

fn verify(w: &World, m: &ModelManifest) -> Result<VerifiedManifest, ModelRejection> {
    verify_manifest(&signed_anyway(m, &w.issuer), &w.trust, &w.ctx)
}

#[test]
fn a_good_manifest_verifies_and_is_parsed_once() {
    let w = world();
    let bytes = signed(&manifest(), &w.issuer);
    let v = verify_manifest(&bytes, &w.trust, &w.ctx).unwrap();
    assert_eq!(v.manifest, manifest());
    assert_eq!(v.signer.id(), w.issuer.public().id());
    assert_eq!(
        v.total_bytes,
        (MODEL.len() + LABELS.len() + INPUT.len()) as u64
    );
    let (signed_part, _) = split_manifest(&bytes).unwrap();
    assert_eq!(v.digest, crate::sha256_hex(&signed_part));
    // CRLF in transit does not change what was signed.
    let crlf: Vec<u8> = String::from_utf8(bytes)
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    verify_manifest(&crlf, &w.trust, &w.ctx).unwrap();
    // First install: nothing installed yet.
    let mut w = w;
    w.ctx.installed_version = None;
    verify(&w, &manifest()).unwrap();
}

#[test]
fn a_tampered_byte_or_another_purpose_is_refused_by_the_signature() {
    let w = world();
    let bytes = signed(&manifest(), &w.issuer);
    let at = bytes.windows(10).position(|x| x == b"moderation").unwrap();
    let mut bad = bytes.clone();
    bad[at] = b'n';
    assert!(matches!(
        verify_manifest(&bad, &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::Invalid(_)))
    ));
    // The same bytes signed as a workflow do not pass as a model manifest.
    let json = manifest().to_json().unwrap();
    let mut wf = json.clone();
    wf.extend_from_slice(
        w.issuer
            .sign_block(&json, Purpose::Workflow)
            .unwrap()
            .render()
            .as_bytes(),
    );
    assert!(matches!(
        verify_manifest(&wf, &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::Invalid(_)))
    ));
    // A key the trust metadata does not list, and a revoked one.
    let stranger = SecretKey::generate().unwrap();
    assert!(matches!(
        verify_manifest(&signed(&manifest(), &stranger), &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::UnknownKey(_)))
    ));
    let mut revoked = w.trust.clone();
    revoked.revoked.push(w.issuer.public().id().into());
    assert!(matches!(
        verify_manifest(&bytes, &revoked, &w.ctx),
        Err(ModelRejection::Signature(SignError::Revoked { .. }))
    ));
    // Two signature blocks, or none.
    let mut twice = bytes.clone();
    twice.extend_from_slice(
        w.issuer
            .sign_block(&json, Purpose::Model)
            .unwrap()
            .render()
            .as_bytes(),
    );
    assert!(matches!(
        verify_manifest(&twice, &w.trust, &w.ctx),
        Err(ModelRejection::Format(m)) if m.contains("exactly one")
    ));
    assert!(matches!(
        verify_manifest(&json, &w.trust, &w.ctx),
        Err(ModelRejection::Format(_))
    ));
}

#[test]
fn trust_and_issuer_rules() {
    // An issuer without `models: true` signs workflows, not models.
    let mut w = world();
    w.trust.issuers[0].models = false;
    let r = verify(&w, &manifest()).unwrap_err();
    assert_eq!(
        r,
        ModelRejection::NotModelIssuer {
            issuer: "gw-1".into()
        }
    );
    assert!(r.to_string().contains("models: true"), "{r}");
    assert!(r.authenticated());
    // Old metadata (no `models` field) parses and grants nothing; `false` is not written.
    let mut json = serde_json::to_value(&w.trust).unwrap();
    assert!(json["issuers"][0].get("models").is_none());
    json["issuers"][0].as_object_mut().unwrap().remove("models");
    let old: TrustMetadata = serde_json::from_value(json).unwrap();
    assert!(!old.issuers[0].models);
    // The manifest names another issuer than the signer.
    let w = world();
    let mut m = manifest();
    m.issuer = "gw-2".into();
    assert_eq!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::IssuerMismatch {
            claimed: "gw-2".into(),
            signer: "gw-1".into()
        }
    );
    // Expired trust metadata vouches for nothing.
    let mut w = world();
    w.trust.expires_at = "2026-01-01T00:00:00Z".into();
    let r = verify(&w, &manifest()).unwrap_err();
    assert!(matches!(r, ModelRejection::Trust(_)), "{r}");
    assert!(!r.authenticated());
}

#[test]
fn target_rules() {
    let w = world();
    let mut m = manifest();
    m.target = ModelTarget {
        devices: vec!["orin-0099".into()],
        groups: vec!["site-b".into()],
    };
    let r = verify(&w, &m).unwrap_err();
    assert!(
        matches!(
            r,
            ModelRejection::Target(TargetRefusal::NotForThisDevice { .. })
        ),
        "{r}"
    );
    assert!(r.to_string().contains("orin-0099"), "{r}");
    // For this device, but also for a group the issuer may not target.
    m.target = ModelTarget {
        devices: vec!["orin-0042".into()],
        groups: vec!["site-b".into()],
    };
    assert_eq!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::Target(TargetRefusal::IssuerMayNotTarget {
            issuer: "gw-1".into(),
            what: "group",
            name: "site-b".into()
        })
    );
    m.target = ModelTarget {
        devices: vec!["orin-0042".into(), "orin-0043".into()],
        groups: vec![],
    };
    assert_eq!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::Target(TargetRefusal::IssuerMayNotTarget {
            issuer: "gw-1".into(),
            what: "device",
            name: "orin-0043".into()
        })
    );
}

#[test]
fn time_rules() {
    let mut w = world();
    w.ctx.now_s = crate::maml::parse_time(EXPIRES).unwrap();
    let r = verify(&w, &manifest()).unwrap_err();
    assert!(matches!(r, ModelRejection::Expired { .. }), "{r}");
    assert!(r.to_string().contains(EXPIRES), "{r}");
    // Issued beyond the skew in the future; within the skew passes.
    let issued = crate::maml::parse_time(ISSUED).unwrap();
    w.ctx.now_s = issued - 301;
    let r = verify(&w, &manifest()).unwrap_err();
    assert!(matches!(r, ModelRejection::NotYetValid { .. }), "{r}");
    w.ctx.now_s = issued - 300;
    verify(&w, &manifest()).unwrap();
}

#[test]
fn versions_only_move_forward() {
    let mut w = world();
    for installed in [3, 4] {
        w.ctx.installed_version = Some(installed);
        assert_eq!(
            verify(&w, &manifest()).unwrap_err(),
            ModelRejection::NotNewer {
                name: "moderation".into(),
                offered: 3,
                installed
            }
        );
    }
}

#[test]
fn a_device_with_several_models_is_asked_for_the_verified_name_only() {
    let w = world();
    let bytes = signed(&manifest(), &w.issuer);
    let asked = std::cell::RefCell::new(Vec::new());
    let lookup = |installed: Option<u64>| {
        let asked = &asked;
        move |name: &str| {
            asked.borrow_mut().push(name.to_string());
            installed
        }
    };
    // ctx.installed_version (2 in the world) is not used: the lookup decides.
    let v = verify_manifest_against(&bytes, &w.trust, &w.ctx, &lookup(None)).unwrap();
    assert_eq!(v.manifest.version, 3);
    assert_eq!(
        verify_manifest_against(&bytes, &w.trust, &w.ctx, &lookup(Some(3))).unwrap_err(),
        ModelRejection::NotNewer {
            name: "moderation".into(),
            offered: 3,
            installed: 3
        }
    );
    assert_eq!(*asked.borrow(), ["moderation", "moderation"]);
    // Nothing is asked before the signature verified.
    let mut forged = bytes.clone();
    let at = forged.iter().position(|b| *b == b'3').unwrap();
    forged[at] = b'4';
    verify_manifest_against(&forged, &w.trust, &w.ctx, &lookup(None)).unwrap_err();
    assert_eq!(asked.borrow().len(), 2);
}

#[test]
fn platform_rules() {
    let mut w = world();
    let mut m = manifest();
    m.platform.backends = vec![BackendKind::Cuda];
    let r = verify(&w, &m).unwrap_err();
    assert_eq!(
        r,
        ModelRejection::Backend {
            allowed: vec!["cuda".into()],
            backend: "jetson".into()
        }
    );
    // A TensorRT engine: only its module and TensorRT version.
    m.platform = PlatformSpec {
        backends: vec![BackendKind::Jetson],
        runtime: Runtime::Tensorrt {
            module: "jetson-orin-nx-16gb".into(),
            trt_version: "10.3.0".into(),
        },
    };
    verify(&w, &m).unwrap();
    w.ctx.platform.module = Some("jetson-agx-orin-64gb".into());
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::TensorRtModule { wanted, .. } if wanted == "jetson-orin-nx-16gb"
    ));
    w.ctx.platform.module = Some("jetson-orin-nx-16gb".into());
    w.ctx.platform.trt_version = Some("8.6.2".into());
    assert_eq!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::TensorRtVersion {
            wanted: "10.3.0".into(),
            device: Some("8.6.2".into())
        }
    );
    w.ctx.platform.trt_version = None;
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::TensorRtVersion { device: None, .. }
    ));
    // A TensorRT engine may not claim the cpu backend (a format rule).
    m.platform.backends = vec![BackendKind::Cpu];
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::Manifest(s) if s.contains("cpu")
    ));
}

#[test]
fn agent_version_rules() {
    let mut w = world();
    let mut m = manifest();
    m.min_agent_version = "0.10.0".into();
    // 0.4.2 < 0.10.0: compared as numbers, not as text.
    assert_eq!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::AgentTooOld {
            required: "0.10.0".into(),
            agent: "0.4.2".into()
        }
    );
    w.ctx.agent_version = "0.10.0".into();
    verify(&w, &m).unwrap();
    w.ctx.agent_version = "garbage".into();
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::AgentTooOld { .. }
    ));
    assert_eq!(parse_version("1.2.3"), Some((1, 2, 3)));
    for bad in ["1.2", "1.2.3.4", "1.2.x", "+1.2.3", "1.2.3-rc1", "", "1..3"] {
        assert_eq!(parse_version(bad), None, "{bad}");
    }
}

#[test]
fn size_and_disk_rules() {
    let mut w = world();
    let total = (MODEL.len() + LABELS.len() + INPUT.len()) as u64;
    w.ctx.max_bundle_bytes = total - 1;
    assert_eq!(
        verify(&w, &manifest()).unwrap_err(),
        ModelRejection::TooLarge {
            total,
            limit: total - 1
        }
    );
    w.ctx.max_bundle_bytes = total;
    w.ctx.free_disk_bytes = total - 1;
    assert_eq!(
        verify(&w, &manifest()).unwrap_err(),
        ModelRejection::NoDisk {
            total,
            free: total - 1
        }
    );
    // Sizes that overflow when added are a malformed manifest, not a wrap-around.
    let mut m = manifest();
    m.files[0].size = u64::MAX;
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::Manifest(s) if s.contains("overflow")
    ));
}

#[test]
fn format_rules_name_the_field() {
    type Edit = fn(&mut ModelManifest);
    let cases: Vec<(Edit, &str)> = vec![
        (|m| m.name = "Moderation".into(), "name"),
        (|m| m.name = "a/b".into(), "name"),
        (|m| m.version = 0, "version"),
        (|m| m.kind_tag = "aegis-workflow".into(), "type"),
        (|m| m.target = ModelTarget::default(), "target"),
        (|m| m.issued_at = "yesterday".into(), "issued_at"),
        (|m| m.expires_at = ISSUED.into(), "expires_at"),
        (|m| m.min_agent_version = "1.0".into(), "min_agent_version"),
        (|m| m.model = "other.onnx".into(), "model"),
        (|m| m.labels = None, "labels"),
        (
            |m| m.health.reference_input = "nope.bin".into(),
            "health.reference_input",
        ),
        (|m| m.health.expected.clear(), "health.expected"),
        (|m| m.health.expected[0].output = "x".into(), "output"),
        (|m| m.health.expected[0].min = 2.0, "min"),
        (|m| m.health.expected[0].max = -1.0, "max"),
        (|m| m.inputs.clear(), "inputs"),
        (|m| m.outputs[0].shape = vec![0], "dimension"),
        (|m| m.outputs[0].shape = vec![-2], "dimension"),
        (|m| m.platform.backends.clear(), "backends"),
        (|m| m.files[0].sha256 = "ABC".into(), "sha256"),
        (|m| m.files.clear(), "files"),
    ];
    let w = world();
    for (edit, field) in cases {
        let mut m = manifest();
        edit(&mut m);
        // The gateway refuses to sign it…
        let json = m.to_json().unwrap();
        let r = sign_manifest(&json, &w.issuer).unwrap_err();
        assert!(r.to_string().contains(field), "{field}: {r}");
        // …and a device refuses it signed anyway.
        let mut bytes = json.clone();
        bytes.extend_from_slice(
            w.issuer
                .sign_block(&json, Purpose::Model)
                .unwrap()
                .render()
                .as_bytes(),
        );
        let r = verify_manifest(&bytes, &w.trust, &w.ctx).unwrap_err();
        assert!(
            r.authenticated() && r.to_string().contains(field),
            "{field}: {r}"
        );
    }
    // Unknown fields anywhere are refused, also inside the runtime.
    let mut v = serde_json::to_value(manifest()).unwrap();
    v["platform"]["runtime"]["extra"] = 1.into();
    let r = ModelManifest::from_json(&serde_json::to_vec(&v).unwrap()).unwrap_err();
    assert!(r.to_string().contains("extra"), "{r}");
    let mut v = serde_json::to_value(manifest()).unwrap();
    v["files"][0]["mode"] = 0o755.into();
    assert!(ModelManifest::from_json(&serde_json::to_vec(&v).unwrap()).is_err());
    // Duplicate keys are refused, not last-one-wins.
    let json = String::from_utf8(manifest().to_json().unwrap()).unwrap();
    let dup = json.replacen("\"version\": 3,", "\"version\": 3,\n  \"version\": 9,", 1);
    assert_ne!(dup, json);
    let r = ModelManifest::from_json(dup.as_bytes()).unwrap_err();
    assert!(r.to_string().contains("duplicate"), "{r}");
}

#[test]
fn unsafe_file_paths_are_refused_naming_the_path() {
    let w = world();
    for bad in [
        "../model.onnx",
        "health/../../etc/passwd",
        "/etc/passwd",
        "a//b",
        "a/",
        ".hidden",
        "a/./b",
        "sp ace",
        "new\nline",
        "back\\slash",
        "ünï",
        "",
        "model.onnx.part",
        "labels/x.part/y",
    ] {
        let mut m = manifest();
        m.files.push(file(bad, b"x"));
        let r = verify(&w, &m).unwrap_err();
        match &r {
            ModelRejection::FilePath { path, .. } => assert_eq!(path, bad),
            other => panic!("{bad:?}: {other}"),
        }
    }
    let too_deep = ["d"; MAX_PATH_DEPTH + 1].join("/");
    assert!(check_file_path(&too_deep).is_err());
    assert!(check_file_path(&"a".repeat(MAX_PATH_LEN + 1)).is_err());
    // Twice, and a file that is also a directory.
    let mut m = manifest();
    m.files.push(file("model.onnx", MODEL));
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::FilePath { path, reason } if path == "model.onnx" && reason.contains("twice")
    ));
    let mut m = manifest();
    m.files.push(file("model.onnx/x", MODEL));
    assert!(matches!(
        verify(&w, &m).unwrap_err(),
        ModelRejection::FilePath { path, .. } if path == "model.onnx"
    ));
}

/// A bundle directory holding exactly `manifest()`'s files.
fn bundle() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("health")).unwrap();
    std::fs::write(d.path().join("health/input.bin"), INPUT).unwrap();
    std::fs::write(d.path().join("labels.txt"), LABELS).unwrap();
    std::fs::write(d.path().join("model.onnx"), MODEL).unwrap();
    d
}

fn verified() -> VerifiedManifest {
    let w = world();
    verify(&w, &manifest()).unwrap()
}

#[test]
fn bundle_files_good_and_scanned_like_the_manifest() {
    let d = bundle();
    verify_bundle_files(d.path(), &verified()).unwrap();
    assert_eq!(scan_bundle(d.path()).unwrap(), manifest().files);
}

#[test]
fn bundle_file_refusals_name_the_file() {
    let v = verified();
    let check = |prepare: &dyn Fn(&Path)| {
        let d = bundle();
        prepare(d.path());
        verify_bundle_files(d.path(), &v).unwrap_err()
    };
    assert_eq!(
        check(&|p| std::fs::remove_file(p.join("labels.txt")).unwrap()),
        BundleError::Missing {
            path: "labels.txt".into()
        }
    );
    assert_eq!(
        check(&|p| std::fs::write(p.join("health/extra.bin"), b"x").unwrap()),
        BundleError::Extra {
            path: "health/extra.bin".into()
        }
    );
    assert_eq!(
        check(&|p| std::fs::create_dir(p.join("more")).unwrap()),
        BundleError::Extra {
            path: "more".into()
        }
    );
    assert_eq!(
        check(&|p| std::fs::write(p.join("model.onnx"), b"onnx model bytes!").unwrap()),
        BundleError::Size {
            path: "model.onnx".into(),
            expected: MODEL.len() as u64,
            actual: MODEL.len() as u64 + 1
        }
    );
    let e = check(&|p| std::fs::write(p.join("model.onnx"), b"onnx model bytez").unwrap());
    assert!(
        matches!(&e, BundleError::Hash { path, expected, .. } if path == "model.onnx" && *expected == crate::sha256_hex(MODEL)),
        "{e}"
    );
    assert!(e.to_string().starts_with("model.onnx: sha256"), "{e}");
    // A symbolic link as a listed file (even to identical bytes), as a directory, or extra.
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("input.bin"), INPUT).unwrap();
    std::fs::write(outside.path().join("model.onnx"), MODEL).unwrap();
    let e = check(&|p| {
        std::fs::remove_file(p.join("model.onnx")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("model.onnx"), p.join("model.onnx"))
            .unwrap();
    });
    assert_eq!(
        e,
        BundleError::Symlink {
            path: "model.onnx".into()
        }
    );
    let e = check(&|p| {
        std::fs::remove_dir_all(p.join("health")).unwrap();
        std::os::unix::fs::symlink(outside.path(), p.join("health")).unwrap();
    });
    assert_eq!(
        e,
        BundleError::Symlink {
            path: "health".into()
        }
    );
    let e = check(&|p| std::os::unix::fs::symlink("/etc/passwd", p.join("passwd")).unwrap());
    assert_eq!(
        e,
        BundleError::Symlink {
            path: "passwd".into()
        }
    );
    // A directory where a file is listed.
    let e = check(&|p| {
        std::fs::remove_file(p.join("labels.txt")).unwrap();
        std::fs::create_dir(p.join("labels.txt")).unwrap();
    });
    assert!(
        matches!(&e, BundleError::Extra { path } | BundleError::NotRegular { path } if path == "labels.txt"),
        "{e}"
    );
    // The bundle directory itself a symbolic link.
    let d = bundle();
    let link = outside.path().join("link");
    std::os::unix::fs::symlink(d.path(), &link).unwrap();
    assert!(matches!(
        verify_bundle_files(&link, &v).unwrap_err(),
        BundleError::Directory { .. }
    ));
}

#[test]
fn scan_refuses_what_devices_would() {
    let d = bundle();
    std::os::unix::fs::symlink("/etc/passwd", d.path().join("passwd")).unwrap();
    assert_eq!(
        scan_bundle(d.path()).unwrap_err(),
        BundleError::Symlink {
            path: "passwd".into()
        }
    );
    let d = bundle();
    std::fs::write(d.path().join("bad name"), b"x").unwrap();
    assert!(matches!(
        scan_bundle(d.path()).unwrap_err(),
        BundleError::UnsafePath { path, .. } if path == "bad name"
    ));
}

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn hostile_bytes_never_panic() {
    let w = world();
    let good = signed(&manifest(), &w.issuer);
    let json = manifest().to_json().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for round in 0..3000 {
        let bytes: Vec<u8> = match round % 3 {
            // Random bytes.
            0 => (0..rng.next() % 512).map(|_| rng.next() as u8).collect(),
            // The valid JSON with a few bytes changed, truncated or not.
            1 => {
                let mut b = json.clone();
                for _ in 0..1 + rng.next() % 4 {
                    let i = (rng.next() as usize) % b.len();
                    b[i] = rng.next() as u8;
                }
                b.truncate((rng.next() as usize) % (b.len() + 1));
                b
            }
            // The signed manifest with a few bytes changed.
            _ => {
                let mut b = good.clone();
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
                b
            }
        };
        let _ = ModelManifest::from_json(&bytes);
        let _ = split_manifest(&bytes);
        if round % 3 != 2 || round % 30 == 2 {
            // (ML-DSA verification is the slow part: sampled.)
            let _ = verify_manifest(&bytes, &w.trust, &w.ctx);
        }
    }
    // Oversized input is refused before anything is read.
    let huge = vec![b' '; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        verify_manifest(&huge, &w.trust, &w.ctx),
        Err(ModelRejection::Format(m)) if m.contains("limit")
    ));
}

/// An installed manifest is checked again at start-up without its expiry or free disk,
/// and with "version equal to the recorded one" instead of "above the installed one";
/// every other refusal still refuses.
#[test]
fn an_installed_manifest_is_checked_without_expiry_against_its_recorded_version() {
    let mut w = world();
    let mut m = manifest();
    m.platform.backends = vec![BackendKind::Jetson];
    let bytes = signed(&m, &w.issuer);
    w.ctx.installed_version = Some(3);
    // Long after the announcement expired, with no free disk: still the installed model.
    w.ctx.now_s = crate::maml::parse_time(EXPIRES).unwrap() + 90 * 86_400;
    w.ctx.free_disk_bytes = 0;
    let v = verify_installed_manifest(&bytes, &w.trust, &w.ctx).unwrap();
    assert_eq!(v.manifest, m);
    assert_eq!(v.digest, manifest_digest(&bytes).unwrap());
    // The same bytes as an announcement are refused for both reasons skipped above, and
    // for not being newer.
    assert!(matches!(
        verify_manifest(&bytes, &w.trust, &w.ctx),
        Err(ModelRejection::Expired { .. })
    ));
    // Another version than the one recorded, or none recorded.
    for recorded in [Some(2), Some(4), None] {
        w.ctx.installed_version = recorded;
        let r = verify_installed_manifest(&bytes, &w.trust, &w.ctx).unwrap_err();
        assert_eq!(
            r,
            ModelRejection::NotRecordedVersion {
                name: "moderation".into(),
                found: 3,
                recorded
            }
        );
        assert!(r.to_string().contains("version 3"), "{r}");
    }
    w.ctx.installed_version = Some(3);
    // Still refused: trust expired, the key revoked, the models grant or the target
    // withdrawn, another platform, an older agent, a bundle above the policy limit, a
    // tampered byte, issued in the future.
    type Change = Box<dyn Fn(&mut TrustMetadata, &mut ModelContext)>;
    let id = w.issuer.public().id().to_string();
    let refusals: Vec<(&str, Change)> = vec![
        (
            "trust expired",
            Box::new(|t, _| t.expires_at = "2026-12-01T00:00:00Z".into()),
        ),
        ("revoked", Box::new(move |t, _| t.revoked.push(id.clone()))),
        ("no models", Box::new(|t, _| t.issuers[0].models = false)),
        (
            "target withdrawn",
            Box::new(|t, _| t.issuers[0].groups = vec!["site-b".into()]),
        ),
        (
            "other backend",
            Box::new(|_, c| c.platform.backend = BackendKind::Cpu),
        ),
        (
            "agent downgraded",
            Box::new(|_, c| c.agent_version = "0.3.9".into()),
        ),
        ("policy limit", Box::new(|_, c| c.max_bundle_bytes = 10)),
        (
            "issued in the future",
            Box::new(|_, c| c.now_s = crate::maml::parse_time(ISSUED).unwrap() - 301),
        ),
    ];
    for (what, change) in refusals {
        let (mut trust, mut ctx) = (w.trust.clone(), w.ctx.clone());
        change(&mut trust, &mut ctx);
        let r = verify_installed_manifest(&bytes, &trust, &ctx);
        assert!(r.is_err(), "{what}: accepted");
    }
    let mut tampered = bytes.clone();
    let at = tampered
        .windows(10)
        .position(|x| x == b"moderation")
        .unwrap();
    tampered[at] = b'n';
    assert!(matches!(
        verify_installed_manifest(&tampered, &w.trust, &w.ctx),
        Err(ModelRejection::Signature(_))
    ));
}
