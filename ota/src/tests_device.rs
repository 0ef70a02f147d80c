//! The rejection matrix: each refused case with its exact reason, against real keys, trust
//! metadata and replay state.

use base64::Engine as _;

use crate::device::{Identity, Policy, ReplayState, check};
use crate::maml::{normalise, template};
use crate::sign::{Purpose, SecretKey};
use crate::trust::{Issuer, Roots, TrustError, TrustMetadata};

const NOW: i64 = 1_795_730_000; // 2026-11-26T…
const ISSUED: &str = "2026-11-26T10:00:00Z";
const EXPIRES: &str = "2026-11-27T10:00:00Z";

fn b64(k: &SecretKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.public().to_bytes())
}

struct World {
    root: SecretKey,
    issuer: SecretKey,
    trust: TrustMetadata,
    me: Identity,
    policy: Policy,
}

fn world() -> World {
    let root = SecretKey::generate().unwrap();
    let issuer = SecretKey::generate().unwrap();
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 2,
        expires_at: "2027-06-01T00:00:00Z".into(),
        root: Roots {
            threshold: 1,
            keys: vec![b64(&root)],
        },
        issuers: vec![Issuer {
            name: "gw-1".into(),
            key: b64(&issuer),
            devices: vec!["orin-0042".into(), "orin-0043".into()],
            groups: vec!["site-a".into()],
            models: false,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    World {
        root,
        issuer,
        trust,
        me: Identity {
            id: "orin-0042".into(),
            groups: vec!["site-a".into()],
        },
        policy: Policy {
            source_hosts: vec!["192.0.2.10".into()],
            ..Policy::default()
        },
    }
}

fn doc_with(edit: impl Fn(String) -> String) -> String {
    edit(template(
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "gw-1",
        "orin-0042",
        17,
        ISSUED,
        EXPIRES,
    ))
}

fn sign(text: &str, k: &SecretKey) -> Vec<u8> {
    let mut b = normalise(text.as_bytes());
    b.extend_from_slice(
        k.sign_block(&b, Purpose::Workflow)
            .unwrap()
            .render()
            .as_bytes(),
    );
    b
}

#[test]
fn the_rejection_matrix() {
    let w = world();
    let state = ReplayState::default();
    let run =
        |doc: &[u8], trust: &TrustMetadata, policy: &Policy, state: &ReplayState, now: i64| {
            check(doc, trust, &w.me, policy, state, now, &[])
        };
    let ok_doc = sign(&doc_with(|d| d), &w.issuer);
    let v = run(&ok_doc, &w.trust, &w.policy, &state, NOW).expect("the good document");
    assert_eq!(v.document.front.sequence, 17);

    let reason =
        |doc: &[u8], trust: &TrustMetadata, policy: &Policy, state: &ReplayState, now: i64| {
            run(doc, trust, policy, state, now)
                .expect_err("must be refused")
                .to_string()
        };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            reason(
                &sign(&doc_with(|d| d), &w.root),
                &w.trust,
                &w.policy,
                &state,
                NOW,
            ),
            "unknown signing key",
        ),
        (
            "revoked key",
            {
                let mut t = w.trust.clone();
                t.revoked.push(w.issuer.public().id().to_string());
                reason(&ok_doc, &t, &w.policy, &state, NOW)
            },
            "is revoked",
        ),
        (
            "key not allowed for that target",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace("devices: [orin-0042]", "devices: [orin-0042, orin-9999]")
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "may not target device \"orin-9999\"",
        ),
        (
            "wrong device",
            {
                let d = sign(
                    &doc_with(|d| d.replace("devices: [orin-0042]", "devices: [orin-0043]")),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "not this device \"orin-0042\"",
        ),
        (
            "replayed sequence",
            {
                let mut s = ReplayState::default();
                s.accept(&v);
                reason(&ok_doc, &w.trust, &w.policy, &s, NOW)
            },
            "sequence 17 is not above the last accepted 17",
        ),
        (
            "fast-forward sequence",
            {
                let d = sign(
                    &doc_with(|d| d.replace("sequence: 17", "sequence: 5000")),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "fast-forward refused",
        ),
        (
            "expired",
            reason(&ok_doc, &w.trust, &w.policy, &state, NOW + 3 * 86_400),
            "expired at",
        ),
        (
            "not yet valid",
            reason(&ok_doc, &w.trust, &w.policy, &state, NOW - 2 * 86_400),
            "not valid before",
        ),
        (
            "clock set back below the floor",
            {
                let s = ReplayState {
                    time_floor_s: NOW + 3 * 86_400,
                    ..ReplayState::default()
                };
                reason(&ok_doc, &w.trust, &w.policy, &s, NOW - 30 * 86_400)
            },
            "expired at",
        ),
        (
            "algorithm not allowed by policy",
            {
                let p = Policy {
                    algorithms: vec!["ml-dsa-87".into()],
                    ..w.policy.clone()
                };
                reason(&ok_doc, &w.trust, &p, &state, NOW)
            },
            "\"ml-dsa-65\" is not accepted",
        ),
        (
            "unsealed when policy requires sealing",
            {
                let p = Policy {
                    require_sealing: true,
                    ..w.policy.clone()
                };
                reason(&ok_doc, &w.trust, &p, &state, NOW)
            },
            "requires sealed documents",
        ),
        (
            "source URL outside the allow-list",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace("rtsp://192.0.2.10/stream1", "rtsp://169.254.169.254/latest")
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "host \"169.254.169.254\" is not in the device's source allow-list",
        ),
        (
            "sink path outside the allowed paths",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace(
                            "dir: /var/lib/aegis/recordings",
                            "dir: /var/lib/aegis/../../etc",
                        )
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "outside the allowed paths",
        ),
        (
            "evidence directory outside the allowed paths",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace(
                            "dir: /var/lib/aegis/recordings }",
                            "dir: /var/lib/aegis/recordings }\nevidence: { dir: /etc/cron.d }",
                        )
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "evidence.dir: /etc/cron.d is outside the allowed paths",
        ),
        (
            "password in an unsealed document",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace(
                            "url: \"rtsp://192.0.2.10/stream1\" }",
                            "url: \"rtsp://192.0.2.10/stream1\", username: u, password: p }",
                        )
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "may only travel in a sealed document",
        ),
        (
            "publish token in an unsealed document",
            {
                let d = sign(
                    &doc_with(|d| {
                        d.replace(
                            "url: \"rtsp://192.0.2.10/stream1\" }",
                            "url: \"whip:\", publish_token: \"0123456789abcdef0123456789\" }",
                        )
                    }),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "password or publish token may only travel in a sealed document",
        ),
        (
            "origin that is not the signer",
            {
                let d = sign(
                    &doc_with(|d| d.replace("chimera://gw-1", "chimera://gw-2")),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "is not the signing issuer",
        ),
        (
            "unknown front-matter key",
            {
                let d = sign(
                    &doc_with(|d| d.replace("sequence: 17\n", "sequence: 17\npriority: high\n")),
                    &w.issuer,
                );
                reason(&d, &w.trust, &w.policy, &state, NOW)
            },
            "priority",
        ),
    ];
    for (case, got, want) in &cases {
        assert!(got.contains(want), "{case}: expected {want:?} in {got:?}");
    }
    // A group target works when the issuer may target the group.
    let d = sign(
        &doc_with(|d| {
            d.replace(
                "devices: [orin-0042], groups: []",
                "devices: [], groups: [site-a]",
            )
        }),
        &w.issuer,
    );
    assert!(run(&d, &w.trust, &w.policy, &state, NOW).is_ok());
}

#[test]
fn trust_updates_need_the_roots_a_higher_version_and_no_expiry() {
    let w = world();
    let roots = vec![w.root.public().clone()];
    let mut next = w.trust.clone();
    next.version = 3;
    let signed = next.sign(&[&w.root]).unwrap();
    let got = TrustMetadata::verify_update(&signed, &roots, 1, 2, NOW).unwrap();
    assert_eq!(got.version, 3);
    // Older (rollback) or equal versions.
    let e = TrustMetadata::verify_update(&signed, &roots, 1, 3, NOW).unwrap_err();
    assert!(
        matches!(
            e,
            TrustError::Rollback {
                offered: 3,
                held: 3
            }
        ),
        "{e}"
    );
    // Expired.
    let e = TrustMetadata::verify_update(&signed, &roots, 1, 2, NOW + 400 * 86_400).unwrap_err();
    assert!(e.to_string().contains("expired"), "{e}");
    // Signed by someone else.
    let mallory = SecretKey::generate().unwrap();
    let forged = next.sign(&[&mallory]).unwrap();
    let e = TrustMetadata::verify_update(&forged, &roots, 1, 2, NOW).unwrap_err();
    assert!(
        e.to_string()
            .contains("0 valid signatures by current root keys"),
        "{e}"
    );
    // One flipped byte in the JSON.
    let mut tampered = signed.clone();
    let i = tampered.iter().position(|&b| b == b'3').unwrap();
    tampered[i] = b'9';
    assert!(TrustMetadata::verify_update(&tampered, &roots, 1, 2, NOW).is_err());
    // 2-of-3 roots: one signature is not enough, two are.
    let r2 = SecretKey::generate().unwrap();
    let r3 = SecretKey::generate().unwrap();
    let three = vec![
        w.root.public().clone(),
        r2.public().clone(),
        r3.public().clone(),
    ];
    let mut k_of_n = next.clone();
    k_of_n.root = Roots {
        threshold: 2,
        keys: vec![b64(&w.root), b64(&r2), b64(&r3)],
    };
    let one = k_of_n.sign(&[&w.root]).unwrap();
    let e = TrustMetadata::verify_update(&one, &three, 2, 2, NOW).unwrap_err();
    assert!(
        e.to_string()
            .contains("1 valid signatures by current root keys, 2 needed"),
        "{e}"
    );
    // The same root signing twice still counts once.
    let twice = k_of_n.sign(&[&w.root, &w.root]).unwrap();
    assert!(TrustMetadata::verify_update(&twice, &three, 2, 2, NOW).is_err());
    let two = k_of_n.sign(&[&w.root, &r3]).unwrap();
    assert!(TrustMetadata::verify_update(&two, &three, 2, 2, NOW).is_ok());
    // Rotation to a new root must be signed by the new root too.
    let new_root = SecretKey::generate().unwrap();
    let mut rotated = next.clone();
    rotated.root = Roots {
        threshold: 1,
        keys: vec![b64(&new_root)],
    };
    let old_only = rotated.sign(&[&w.root]).unwrap();
    let e = TrustMetadata::verify_update(&old_only, &roots, 1, 2, NOW).unwrap_err();
    assert!(e.to_string().contains("new root keys"), "{e}");
    let both = rotated.sign(&[&w.root, &new_root]).unwrap();
    assert!(TrustMetadata::verify_update(&both, &roots, 1, 2, NOW).is_ok());
}

#[test]
fn sealed_workflows_open_only_for_their_recipients_and_may_carry_secrets() {
    use crate::seal::{SealSecret, seal};
    let w = world();
    let me_key = SealSecret::generate().unwrap();
    let group_key = SealSecret::generate().unwrap();
    let other = SealSecret::generate().unwrap();
    let secret_doc = doc_with(|d| {
        d.replace(
            "url: \"rtsp://192.0.2.10/stream1\" }",
            "url: \"rtsp://192.0.2.10/stream1\", username: viewer, password: hunter2 }",
        )
    });
    let sealed = seal(
        &secret_doc,
        &[me_key.public().clone(), group_key.public().clone()],
    )
    .unwrap();
    assert!(
        !sealed.contains("hunter2"),
        "the password must not be in the clear"
    );
    assert!(sealed.contains("encryption: aes-256-gcm+ml-kem-768"));
    let signed = sign(&sealed, &w.issuer);
    let state = ReplayState::default();
    // The device opens it with its own key, or with the group key.
    for key in [&me_key, &group_key] {
        let v = check(&signed, &w.trust, &w.me, &w.policy, &state, NOW, &[key]).unwrap();
        let p = v.pipeline.expect("pipeline from the opened body");
        assert_eq!(
            p.sources[0].password.as_ref().map(|s| s.expose()),
            Some("hunter2")
        );
    }
    // Another device's key cannot.
    let e = check(&signed, &w.trust, &w.me, &w.policy, &state, NOW, &[&other]).unwrap_err();
    assert!(e.to_string().contains("not for this device's keys"), "{e}");
    // Policy requiring sealing is satisfied.
    let p = Policy {
        require_sealing: true,
        ..w.policy.clone()
    };
    assert!(check(&signed, &w.trust, &w.me, &p, &state, NOW, &[&me_key]).is_ok());
    // The front matter is bound to the ciphertext (associated data): a swapped header fails
    // to open even before the signature is considered.
    let body_start = sealed.find("## Sealed").unwrap();
    let other_front = doc_with(|d| d.replace("sequence: 17", "sequence: 18")).replacen(
        "encryption: none",
        "encryption: aes-256-gcm+ml-kem-768",
        1,
    );
    let front_end = other_front.find("---\n## ").unwrap() + 4;
    let swapped = format!("{}{}", &other_front[..front_end], &sealed[body_start..]);
    let e = crate::seal::open(&swapped, &[&me_key]).unwrap_err();
    assert_eq!(e, crate::seal::SealError::Open);
}

#[test]
fn sealing_for_many_devices_is_bounded_and_says_to_use_a_group_key() {
    use crate::seal::{SealSecret, seal};
    let keys: Vec<SealSecret> = (0..100).map(|_| SealSecret::generate().unwrap()).collect();
    let pubs: Vec<_> = keys.iter().map(|k| k.public().clone()).collect();
    let d = doc_with(|d| d);
    // ~1.6 KB per recipient (1088-byte KEM ciphertext + wrapped key, base64): 100 device
    // recipients do not fit 128 KB. That is what group keys are for.
    let e = seal(&d, &pubs).unwrap_err().to_string();
    assert!(
        e.contains("100 recipients") && e.contains("group key"),
        "{e}"
    );
    let sealed = seal(&d, &pubs[..60]).unwrap();
    assert!(sealed.len() < crate::maml::MAX_DOCUMENT_BYTES);
    let opened = crate::seal::open(&sealed, &[&keys[57]]).unwrap();
    assert_eq!(
        opened,
        d.replacen("encryption: none", "encryption: aes-256-gcm+ml-kem-768", 1)
    );
}

/// Source URLs are judged as libavformat reads them (the strictly parsed host), credentials
/// in URLs need a sealed document, and cameras need their device node in `devices`.
#[test]
fn source_urls_and_devices_are_checked_as_libav_reads_them() {
    let w = world();
    let state = ReplayState::default();
    let with_url = |url: &str| {
        sign(
            &doc_with(|d| d.replace("rtsp://192.0.2.10/stream1", url)),
            &w.issuer,
        )
    };
    let verdict = |url: &str, policy: &Policy| {
        check(&with_url(url), &w.trust, &w.me, policy, &state, NOW, &[]).map_err(|e| e.to_string())
    };
    let cameras = Policy {
        source_hosts: vec!["192.0.2.10".into(), "v4l2".into(), "[2001:db8::1]".into()],
        devices: vec![std::path::PathBuf::from("/dev/video0")],
        ..w.policy.clone()
    };
    let refused = [
        // libavformat ends the authority at '?': this connects to the metadata address.
        (
            "rtsp://169.254.169.254?@192.0.2.10/latest",
            "host \"169.254.169.254\" is not in",
        ),
        ("rtsp://169.254.169.254#@192.0.2.10/", "fragment"),
        ("rtsp://x@y@192.0.2.10/stream1", "more than one '@'"),
        ("rtsp://3221225994/stream1", "ambiguous numeric host"),
        ("rtsp://192.0.2.10:554junk/stream1", "in the port"),
        (
            "rtsp://[::ffff:192.0.2.10]/stream1",
            "host \"::ffff:192.0.2.10\" is not in",
        ),
        (
            "rtsp://viewer:hunter2@192.0.2.10/stream1",
            "credentials may only travel in a sealed document",
        ),
        (
            "srt://192.0.2.10:9000?mode=caller&passphrase=sesame99",
            "query carries a secret (passphrase)",
        ),
        ("v4l2:///dev/video1", "`devices` list"),
    ];
    for (url, want) in refused {
        let got = verdict(url, &cameras).expect_err(url);
        assert!(got.contains(want), "{url}: expected {want:?} in {got:?}");
        assert!(
            !got.contains("hunter2") && !got.contains("sesame99"),
            "{got}"
        );
    }
    // The old "v4l2" host entry no longer allows cameras.
    let old_style = Policy {
        source_hosts: vec!["v4l2".into()],
        ..w.policy.clone()
    };
    let got = verdict("v4l2:///dev/video0", &old_style).unwrap_err();
    assert!(got.contains("`devices` list"), "{got}");
    for url in [
        "v4l2:///dev/video0",
        "RTSP://192.0.2.10:554/stream1",
        "rtsp://[2001:DB8:0::1]/stream1",
        "srt://192.0.2.10:9000?mode=caller&latency=120",
    ] {
        verdict(url, &cameras).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

#[test]
fn pushes_go_only_to_allowed_hosts_and_carry_secrets_only_sealed() {
    use crate::seal::{SealSecret, seal};
    let w = world();
    let state = ReplayState::default();
    let with_push = |push: &str| {
        doc_with(|d| {
            d.replace(
                "  - { kind: record, dir: /var/lib/aegis/recordings }",
                &format!("  - {{ kind: record, dir: /var/lib/aegis/recordings }}\n  - {push}"),
            )
        })
    };
    let plain = with_push("{ kind: push, stream: cam0, url: \"rtmp://203.0.113.5/live\" }");
    let keyed = with_push(
        "{ kind: push, stream: cam0, url: \"rtmp://203.0.113.5/live\", stream_key: sk-secret-1 }",
    );
    // No output host allowed: refused, naming the host and the list.
    let e = check(
        &sign(&plain, &w.issuer),
        &w.trust,
        &w.me,
        &w.policy,
        &state,
        NOW,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("203.0.113.5") && e.contains("output_hosts"),
        "{e}"
    );
    let allowed = Policy {
        output_hosts: vec!["203.0.113.5".into()],
        ..w.policy.clone()
    };
    assert!(
        check(
            &sign(&plain, &w.issuer),
            &w.trust,
            &w.me,
            &allowed,
            &state,
            NOW,
            &[]
        )
        .is_ok()
    );
    // A stream key in the clear is refused; sealed it passes and arrives intact.
    let e = check(
        &sign(&keyed, &w.issuer),
        &w.trust,
        &w.me,
        &allowed,
        &state,
        NOW,
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("sealed document"), "{e}");
    let me_key = SealSecret::generate().unwrap();
    let sealed = seal(&keyed, &[me_key.public().clone()]).unwrap();
    assert!(!sealed.contains("sk-secret-1"));
    let v = check(
        &sign(&sealed, &w.issuer),
        &w.trust,
        &w.me,
        &allowed,
        &state,
        NOW,
        &[&me_key],
    )
    .unwrap();
    let p = v.pipeline.unwrap();
    let Some(aegis_config::SinkConfig::Push(push)) = p.sinks.get(1) else {
        panic!("no push sink in {:?}", p.sinks);
    };
    assert_eq!(
        push.stream_key.as_ref().map(|k| k.expose()),
        Some("sk-secret-1")
    );
}
