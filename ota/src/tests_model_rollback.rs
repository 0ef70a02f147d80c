//! Signed rollback orders: a good order verifies; every refusal is its own variant (trust,
//! signature, issuer, models grant, target, time, format); a manifest never passes as an
//! order nor the reverse; hostile bytes never panic. (Applying an order, replay included,
//! is in `tests_model_store.rs`.)

use aegis_config::BackendKind;
use base64::Engine as _;

use crate::TargetRefusal;
use crate::device::Identity;
use crate::model::*;
use crate::model_rollback::*;
use crate::sign::{Purpose, SecretKey, SignError};
use crate::trust::{Issuer, Roots, TrustMetadata};

const NOW: i64 = 1_795_730_000; // 2026-11-26T…
const ISSUED: &str = "2026-11-26T10:00:00Z";
const EXPIRES: &str = "2026-11-27T10:00:00Z";

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
            key: base64::engine::general_purpose::STANDARD.encode(issuer.public().to_bytes()),
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
                backend: BackendKind::Cpu,
                module: None,
                trt_version: None,
            },
            agent_version: "0.4.2".into(),
            now_s: NOW,
            max_clock_skew_s: 300,
            installed_version: Some(5),
            free_disk_bytes: 0,
            max_bundle_bytes: 0,
        },
    }
}

fn order() -> RollbackOrder {
    RollbackOrder {
        kind_tag: ROLLBACK_TYPE.into(),
        name: "moderation".into(),
        from_version: 5,
        to_version: 4,
        issuer: "gw-1".into(),
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: ISSUED.into(),
        expires_at: EXPIRES.into(),
        reason: "false positives on site A".into(),
    }
}

/// Signed without the gateway's validation (an issuer that signs anything).
fn signed_anyway(json: &[u8], key: &SecretKey) -> Vec<u8> {
    let mut out = json.to_vec();
    out.extend_from_slice(
        key.sign_block(json, Purpose::Model)
            .unwrap()
            .render()
            .as_bytes(),
    );
    out
}

fn verify(w: &World, o: &RollbackOrder) -> Result<VerifiedRollback, ModelRejection> {
    verify_rollback_order(&signed_anyway(&o.to_json(), &w.issuer), &w.trust, &w.ctx)
}

#[test]
fn a_good_order_verifies_once_parsed() {
    let w = world();
    let bytes = sign_rollback_order(&order().to_json(), &w.issuer).unwrap();
    let v = verify_rollback_order(&bytes, &w.trust, &w.ctx).unwrap();
    assert_eq!(v.order, order());
    assert_eq!(v.signer.id(), w.issuer.public().id());
    let (signed, _) = crate::model::split_one(&bytes, "rollback order").unwrap();
    assert_eq!(v.digest, crate::sha256_hex(&signed));
    // CRLF in transit does not change what was signed.
    let crlf = String::from_utf8(bytes)
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    verify_rollback_order(&crlf, &w.trust, &w.ctx).unwrap();
    // The installed version does not matter here (the store decides), nor disk or size.
    let mut w = w;
    w.ctx.installed_version = None;
    verify(&w, &order()).unwrap();
    // An empty reason is allowed.
    let mut o = order();
    o.reason.clear();
    verify(&w, &o).unwrap();
}

#[test]
fn signature_issuer_and_trust_refusals() {
    let w = world();
    let bytes = sign_rollback_order(&order().to_json(), &w.issuer).unwrap();
    // A tampered byte (the versions).
    let text = String::from_utf8(bytes.clone()).unwrap();
    let bad = text.replacen("\"to_version\": 4", "\"to_version\": 3", 1);
    assert_ne!(bad, text);
    assert!(matches!(
        verify_rollback_order(bad.as_bytes(), &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::Invalid(_)))
    ));
    // Signed as a workflow, not as a model statement.
    let json = order().to_json();
    let mut wf = json.clone();
    wf.extend_from_slice(
        w.issuer
            .sign_block(&json, Purpose::Workflow)
            .unwrap()
            .render()
            .as_bytes(),
    );
    assert!(matches!(
        verify_rollback_order(&wf, &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::Invalid(_)))
    ));
    // A key the trust metadata does not list; a revoked one.
    let stranger = SecretKey::generate().unwrap();
    assert!(matches!(
        verify_rollback_order(&signed_anyway(&json, &stranger), &w.trust, &w.ctx),
        Err(ModelRejection::Signature(SignError::UnknownKey(_)))
    ));
    let mut revoked = w.trust.clone();
    revoked.revoked.push(w.issuer.public().id().into());
    let r = verify_rollback_order(&bytes, &revoked, &w.ctx).unwrap_err();
    assert!(
        matches!(r, ModelRejection::Signature(SignError::Revoked { .. })),
        "{r}"
    );
    assert!(!r.authenticated());
    // Wrong issuer: the order names another issuer than the signer.
    let mut o = order();
    o.issuer = "gw-2".into();
    assert_eq!(
        verify(&w, &o).unwrap_err(),
        ModelRejection::IssuerMismatch {
            claimed: "gw-2".into(),
            signer: "gw-1".into()
        }
    );
    // No models grant: the issuer signs workflows only.
    let mut w2 = world();
    w2.trust.issuers[0].models = false;
    let r = verify(&w2, &order()).unwrap_err();
    assert_eq!(
        r,
        ModelRejection::NotModelIssuer {
            issuer: "gw-1".into()
        }
    );
    assert!(r.authenticated());
    // Expired trust metadata vouches for nothing.
    let mut w3 = world();
    w3.trust.expires_at = "2026-01-01T00:00:00Z".into();
    assert!(matches!(
        verify(&w3, &order()),
        Err(ModelRejection::Trust(_))
    ));
    // Two signature blocks; none.
    let mut twice = bytes.clone();
    twice.extend_from_slice(
        w.issuer
            .sign_block(&json, Purpose::Model)
            .unwrap()
            .render()
            .as_bytes(),
    );
    let r = verify_rollback_order(&twice, &w.trust, &w.ctx).unwrap_err();
    assert!(
        matches!(&r, ModelRejection::Format(m) if m.contains("rollback order carries exactly one")),
        "{r}"
    );
    assert!(matches!(
        verify_rollback_order(&json, &w.trust, &w.ctx),
        Err(ModelRejection::Format(_))
    ));
}

#[test]
fn target_and_time_refusals() {
    let w = world();
    let mut o = order();
    o.target = ModelTarget {
        devices: vec!["orin-0099".into()],
        groups: vec!["site-b".into()],
    };
    let r = verify(&w, &o).unwrap_err();
    assert!(
        matches!(
            r,
            ModelRejection::Target(TargetRefusal::NotForThisDevice { .. })
        ),
        "{r}"
    );
    assert!(r.to_string().contains("orin-0099"), "{r}");
    o.target = ModelTarget {
        devices: vec!["orin-0042".into()],
        groups: vec!["site-b".into()],
    };
    assert_eq!(
        verify(&w, &o).unwrap_err(),
        ModelRejection::Target(TargetRefusal::IssuerMayNotTarget {
            issuer: "gw-1".into(),
            what: "group",
            name: "site-b".into()
        })
    );
    let mut w = world();
    w.ctx.now_s = crate::maml::parse_time(EXPIRES).unwrap();
    let r = verify(&w, &order()).unwrap_err();
    assert!(matches!(r, ModelRejection::Expired { .. }), "{r}");
    assert!(r.to_string().contains(EXPIRES), "{r}");
    let issued = crate::maml::parse_time(ISSUED).unwrap();
    w.ctx.now_s = issued - 301;
    assert!(matches!(
        verify(&w, &order()),
        Err(ModelRejection::NotYetValid { .. })
    ));
    w.ctx.now_s = issued - 300;
    verify(&w, &order()).unwrap();
}

#[test]
fn format_refusals_name_the_field() {
    let w = world();
    type Change = Box<dyn Fn(&mut RollbackOrder)>;
    let cases: Vec<(Change, &str)> = vec![
        (Box::new(|o| o.kind_tag = "aegis-model".into()), "type"),
        (Box::new(|o| o.name = "../x".into()), "not allowed"),
        (Box::new(|o| o.to_version = 5), "below from_version"),
        (Box::new(|o| o.to_version = 6), "below from_version"),
        (Box::new(|o| o.to_version = 0), "at least 1"),
        (Box::new(|o| o.issuer.clear()), "issuer"),
        (Box::new(|o| o.target = ModelTarget::default()), "target"),
        (Box::new(|o| o.issued_at = "yesterday".into()), "issued_at"),
        (
            Box::new(|o| o.expires_at = "2026-11-26 10:00:00".into()),
            "expires_at",
        ),
        (Box::new(|o| o.expires_at = ISSUED.into()), "not after"),
        (Box::new(|o| o.reason = "x".repeat(513)), "reason"),
        (Box::new(|o| o.reason = "a\nb".into()), "reason"),
    ];
    for (change, why) in cases {
        let mut o = order();
        change(&mut o);
        let r = verify(&w, &o).unwrap_err();
        assert!(
            matches!(&r, ModelRejection::Order(m) if m.contains(why)),
            "{o:?}: {r}"
        );
        assert!(r.to_string().starts_with("rollback order: "), "{r}");
        assert!(r.authenticated());
        // The gateway does not sign it either.
        assert!(sign_rollback_order(&o.to_json(), &w.issuer).is_err());
    }
    // Unknown and duplicate fields.
    let json = String::from_utf8(order().to_json()).unwrap();
    for bad in [
        json.replacen("{", "{\n  \"sequence\": 1,", 1),
        json.replacen("{", "{\n  \"name\": \"other\",", 1),
    ] {
        let r = verify_rollback_order(&signed_anyway(bad.as_bytes(), &w.issuer), &w.trust, &w.ctx)
            .unwrap_err();
        assert!(matches!(r, ModelRejection::Order(_)), "{r}");
    }
}

/// Manifests and orders share the signature context; neither parses as the other.
#[test]
fn a_manifest_is_never_an_order_nor_the_reverse() {
    let w = world();
    let m = ModelManifest {
        kind_tag: MANIFEST_TYPE.into(),
        name: "moderation".into(),
        version: 4,
        issuer: "gw-1".into(),
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: ISSUED.into(),
        expires_at: EXPIRES.into(),
        kind: aegis_config::ModelKindConfig::Nudenet,
        model: "model.onnx".into(),
        labels: None,
        inputs: vec![TensorSpec {
            name: "input".into(),
            dtype: DType::Float32,
            shape: vec![1, 3, 320, 320],
        }],
        outputs: vec![TensorSpec {
            name: "output0".into(),
            dtype: DType::Float32,
            shape: vec![1, 22, 2100],
        }],
        platform: PlatformSpec {
            backends: vec![BackendKind::Cpu],
            runtime: Runtime::Onnx {},
        },
        min_agent_version: "0.1.0".into(),
        health: HealthCheck {
            reference_input: "model.onnx".into(),
            expected: vec![OutputBound {
                output: "output0".into(),
                statistic: Statistic::Max,
                min: 0.0,
                max: 1.0,
            }],
        },
        files: vec![BundleFile {
            path: "model.onnx".into(),
            sha256: "a".repeat(64),
            size: 10,
        }],
    };
    let manifest = sign_manifest(&m.to_json().unwrap(), &w.issuer).unwrap();
    let order = sign_rollback_order(&order().to_json(), &w.issuer).unwrap();
    assert!(matches!(
        verify_rollback_order(&manifest, &w.trust, &w.ctx),
        Err(ModelRejection::Order(_))
    ));
    let mut ctx = w.ctx.clone();
    ctx.installed_version = None;
    ctx.free_disk_bytes = 1 << 30;
    ctx.max_bundle_bytes = 1 << 30;
    verify_manifest(&manifest, &w.trust, &ctx).unwrap();
    assert!(matches!(
        verify_manifest(&order, &w.trust, &ctx),
        Err(ModelRejection::Manifest(_))
    ));
}

#[test]
fn hostile_bytes_never_panic() {
    let w = world();
    let good = sign_rollback_order(&order().to_json(), &w.issuer).unwrap();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..500 {
        let mut b = good.clone();
        match i % 3 {
            0 => {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            1 => b.truncate((next() as usize) % b.len()),
            _ => {
                let at = (next() as usize) % b.len();
                b.insert(at, next() as u8);
            }
        }
        // A refusal or (a no-op change) the good order: never a panic.
        if let Ok(v) = verify_rollback_order(&b, &w.trust, &w.ctx) {
            assert_eq!(v.order, order());
        }
    }
    let big = vec![b'{'; MAX_MANIFEST_BYTES + 1];
    assert!(matches!(
        verify_rollback_order(&big, &w.trust, &w.ctx),
        Err(ModelRejection::Format(m)) if m.contains("limit")
    ));
}
