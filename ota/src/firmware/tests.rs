//! Firmware orders: a good order verifies once parsed; every refusal is its own variant and
//! names what failed; the signature is checked before any JSON is read and a signature for
//! another purpose never passes; trust metadata without the `firmware` field still parses
//! and grants nothing; the device's record consumes sequences (a replay is refused), keeps
//! one order at a time and refuses a hostile file; receipts verify only with the device's
//! key; hostile bytes never panic.

use base64::Engine as _;

use super::state::{FirmwareState, Phase, Resume};
use super::updater::{BootState, Slot, SlotStatus};
use super::*;
use crate::sign::{Purpose, SecretKey, SignError};
use crate::trust::{Issuer, Roots};

const NOW: i64 = 1_796_378_400; // 2026-12-04T10:00:00Z
const ISSUED: &str = "2026-12-04T09:00:00Z";
const EXPIRES: &str = "2026-12-11T09:00:00Z";

struct World {
    issuer: SecretKey,
    trust: TrustMetadata,
    ctx: FirmwareContext,
    last: u64,
}

fn world() -> World {
    let issuer = SecretKey::generate().unwrap();
    let trust = TrustMetadata {
        kind: "aegis-trust".into(),
        version: 3,
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
            models: false,
            firmware: FirmwareGrant::Upgrades,
        }],
        revoked: vec![],
    };
    World {
        issuer,
        trust,
        ctx: FirmwareContext {
            identity: Identity {
                id: "orin-0042".into(),
                groups: vec!["site-a".into()],
            },
            image: "aegis-image".into(),
            board: "jetson-orin-nano-devkit".into(),
            updater: "swupdate".into(),
            running_version: "1.3.2".into(),
            now_s: NOW,
            max_clock_skew_s: 300,
            max_image_bytes: 4 << 30,
            download_hosts: vec!["updates.example".into()],
            https_only: true,
            max_sequence_jump: 1000,
        },
        last: 6,
    }
}

fn order() -> FirmwareOrder {
    FirmwareOrder {
        kind_tag: ORDER_TYPE.into(),
        image: "aegis-image".into(),
        version: "1.4.0".into(),
        downgrade: false,
        board: "jetson-orin-nano-devkit".into(),
        updater: "swupdate".into(),
        sha256: "ab".repeat(32),
        size: 734_003_200,
        url: "https://updates.example/aegis-image-1.4.0.swu".into(),
        issuer: "gw-1".into(),
        target: Target {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: ISSUED.into(),
        expires_at: EXPIRES.into(),
        sequence: 7,
    }
}

/// Signed without the gateway's validation (an issuer that signs anything), for `purpose`.
fn signed_for(json: &[u8], key: &SecretKey, purpose: Purpose) -> Vec<u8> {
    let mut out = json.to_vec();
    out.extend_from_slice(key.sign_block(json, purpose).unwrap().render().as_bytes());
    out
}

fn check(w: &World, bytes: &[u8]) -> Result<VerifiedOrder, FirmwareRejection> {
    let last = w.last;
    verify_order(bytes, &w.trust, &w.ctx, &|_| last)
}

fn verify(w: &World, o: &FirmwareOrder) -> Result<VerifiedOrder, FirmwareRejection> {
    check(w, &signed_for(&o.to_json(), &w.issuer, Purpose::Firmware))
}

#[test]
fn a_good_order_verifies_once_parsed() {
    let w = world();
    let bytes = sign_order(&order().to_json(), &w.issuer).unwrap();
    let v = check(&w, &bytes).unwrap();
    assert_eq!(v.order, order());
    assert_eq!(v.signer.id(), w.issuer.public().id());
    let (signed, _) = crate::issued::split_one(&bytes, "firmware order", MAX_ORDER_BYTES).unwrap();
    assert_eq!(v.digest, crate::sha256_hex(&signed));
    assert_eq!(
        v.replay_key,
        format!("{}|d:|g:site-a", w.issuer.public().id())
    );
    // CRLF in transit does not change what was signed.
    let crlf = String::from_utf8(bytes.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    assert_eq!(check(&w, &crlf).unwrap().digest, v.digest);
    // What a refusal's receipt names: the same digest, the image and version signed.
    let head = order_head(&bytes).unwrap();
    assert_eq!(
        (
            head.digest.as_str(),
            head.image.as_str(),
            head.version.as_str()
        ),
        (
            v.digest.as_str(),
            v.order.image.as_str(),
            v.order.version.as_str()
        )
    );
    assert_eq!(order_head(b"no signature block"), None);
    // A device target, `http` where the policy allows it, an IPv6 host in the list.
    let mut w = w;
    w.ctx.https_only = false;
    w.ctx.download_hosts.push("fd00::5".into());
    let mut o = order();
    o.target = Target {
        devices: vec!["orin-0042".into()],
        groups: vec![],
    };
    o.url = "http://[fd00::5]:8080/i.swu".into();
    verify(&w, &o).unwrap();
}

#[test]
fn a_downgrade_needs_the_order_and_the_grant() {
    let mut w = world();
    let mut o = order();
    o.version = "1.2.9".into();
    assert!(matches!(
        verify(&w, &o),
        Err(FirmwareRejection::DowngradeNotOrdered { .. })
    ));
    o.downgrade = true;
    let e = verify(&w, &o).unwrap_err();
    assert!(
        matches!(e, FirmwareRejection::DowngradeNotAllowed { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("upgrades_and_downgrades"), "{e}");
    w.trust.issuers[0].firmware = FirmwareGrant::UpgradesAndDowngrades;
    verify(&w, &o).unwrap();
    // `downgrade: true` on an upgrade (a device behind the fleet) is an upgrade.
    o.version = "1.5.0".into();
    verify(&w, &o).unwrap();
    // The same version is never reinstalled, downgrade or not.
    o.version = "1.3.2".into();
    assert!(matches!(
        verify(&w, &o),
        Err(FirmwareRejection::AlreadyRunning { .. })
    ));
    // Versions compare as numbers.
    w.ctx.running_version = "1.10.0".into();
    o.version = "1.9.9".into();
    o.downgrade = false;
    assert!(matches!(
        verify(&w, &o),
        Err(FirmwareRejection::DowngradeNotOrdered { .. })
    ));
}

type WorldEdit = Box<dyn Fn(&mut World, &mut FirmwareOrder)>;
type OrderEdit = Box<dyn Fn(&mut FirmwareOrder)>;

#[test]
fn every_refusal_names_what_failed() {
    let cases: Vec<(&str, WorldEdit, &str)> = vec![
        (
            "trust expired",
            Box::new(|w, _| w.trust.expires_at = "2026-12-01T00:00:00Z".into()),
            "trust:",
        ),
        (
            "issuer revoked",
            Box::new(|w, _| w.trust.revoked.push(w.issuer.public().id().to_string())),
            "revoked",
        ),
        (
            "no firmware grant",
            Box::new(|w, _| w.trust.issuers[0].firmware = FirmwareGrant::None),
            "may not order firmware",
        ),
        (
            "issuer name",
            Box::new(|_, o| o.issuer = "gw-2".into()),
            "not the signing issuer",
        ),
        (
            "foreign device",
            Box::new(|_, o| {
                o.target = Target {
                    devices: vec!["orin-0099".into()],
                    groups: vec![],
                }
            }),
            "not this device \"orin-0042\"",
        ),
        (
            "target beyond the issuer",
            Box::new(|_, o| o.target.groups.push("site-b".into())),
            "may not target group \"site-b\"",
        ),
        (
            "issued in the future",
            Box::new(|_, o| {
                o.issued_at = "2026-12-04T10:10:00Z".into();
                o.expires_at = "2026-12-05T10:00:00Z".into();
            }),
            "issued_at 2026-12-04T10:10:00Z is after now",
        ),
        (
            "expired",
            Box::new(|_, o| {
                o.issued_at = "2026-12-01T00:00:00Z".into();
                o.expires_at = "2026-12-04T09:59:59Z".into();
            }),
            "expired at 2026-12-04T09:59:59Z",
        ),
        (
            "another image",
            Box::new(|_, o| o.image = "other-product".into()),
            "installs \"other-product\", this device runs \"aegis-image\"",
        ),
        (
            "wrong board",
            Box::new(|_, o| o.board = "jetson-agx-orin-devkit".into()),
            "built for \"jetson-agx-orin-devkit\", this device is \"jetson-orin-nano-devkit\"",
        ),
        (
            "unknown updater",
            Box::new(|_, o| o.updater = "rauc".into()),
            "\"rauc\" is not this device's updater \"swupdate\"",
        ),
        (
            "a device with an updater this agent does not drive",
            Box::new(|w, o| {
                w.ctx.updater = "mender".into();
                o.updater = "mender".into();
            }),
            "this agent drives [\"swupdate\"]",
        ),
        (
            "replayed",
            Box::new(|w, _| w.last = 7),
            "sequence 7 is not above 7",
        ),
        (
            "older sequence",
            Box::new(|w, _| w.last = 9),
            "sequence 7 is not above 9",
        ),
        (
            "fast-forward",
            Box::new(|_, o| o.sequence = 2000),
            "jumps more than 1000",
        ),
        (
            "unknown running version",
            Box::new(|w, _| w.ctx.running_version = "r36.4".into()),
            "running version \"r36.4\"",
        ),
        (
            "already running",
            Box::new(|_, o| o.version = "1.3.2".into()),
            "1.3.2 runs already",
        ),
        (
            "downgrade not ordered",
            Box::new(|_, o| o.version = "1.3.1".into()),
            "does not say `downgrade: true`",
        ),
        (
            "too large",
            Box::new(|w, _| w.ctx.max_image_bytes = 1 << 20),
            "734003200 bytes, above the limit of 1048576",
        ),
        (
            "plain http",
            Box::new(|_, o| o.url = "http://updates.example/i.swu".into()),
            "https only",
        ),
        (
            "user information",
            Box::new(|_, o| o.url = "https://u:pw@updates.example/i.swu".into()),
            "\"https://***@updates.example/i.swu\": it carries user information",
        ),
        (
            "host not allowed",
            Box::new(|_, o| o.url = "https://evil.example/i.swu".into()),
            "host evil.example is not in the device's download allow-list",
        ),
        (
            "ambiguous numeric host",
            Box::new(|w, o| {
                w.ctx.download_hosts.push("127.0.0.1".into());
                o.url = "https://127.1/i.swu".into();
            }),
            "host \"127.1\"",
        ),
        (
            "other scheme",
            Box::new(|_, o| o.url = "ftp://updates.example/i.swu".into()),
            "not http or https",
        ),
        (
            "no allow-list",
            Box::new(|w, _| w.ctx.download_hosts.clear()),
            "allow-list",
        ),
    ];
    for (name, edit, expect) in cases {
        let mut w = world();
        let mut o = order();
        edit(&mut w, &mut o);
        let e = verify(&w, &o).expect_err(name);
        assert!(e.to_string().contains(expect), "{name}: {e}");
        let before_signature = name == "trust expired" || name == "issuer revoked";
        assert_eq!(e.authenticated(), !before_signature, "{name}: {e}");
    }
}

#[test]
fn the_format_rules_refuse_what_devices_cannot_act_on() {
    let w = world();
    let cases: Vec<(&str, OrderEdit, &str)> = vec![
        (
            "type",
            Box::new(|o| o.kind_tag = "aegis-model".into()),
            "is not aegis-firmware-order",
        ),
        ("image", Box::new(|o| o.image = "Aegis".into()), "image:"),
        (
            "version",
            Box::new(|o| o.version = "1.4".into()),
            "MAJOR.MINOR.PATCH",
        ),
        (
            "version suffix",
            Box::new(|o| o.version = "1.4.0-rc1".into()),
            "MAJOR.MINOR.PATCH",
        ),
        ("board", Box::new(|o| o.board = "../x".into()), "board"),
        (
            "updater",
            Box::new(|o| o.updater = String::new()),
            "updater",
        ),
        ("sha256", Box::new(|o| o.sha256 = "AB".repeat(32)), "sha256"),
        ("size", Box::new(|o| o.size = 0), "size 0"),
        ("url", Box::new(|o| o.url = "https://a b".into()), "url:"),
        (
            "issuer",
            Box::new(|o| o.issuer = String::new()),
            "issuer is empty",
        ),
        (
            "target",
            Box::new(|o| o.target = Target::default()),
            "names no device",
        ),
        (
            "time",
            Box::new(|o| o.issued_at = "yesterday".into()),
            "not RFC 3339",
        ),
        (
            "time order",
            Box::new(|o| o.expires_at = ISSUED.into()),
            "not after issued_at",
        ),
        ("sequence", Box::new(|o| o.sequence = 0), "sequence 0"),
    ];
    for (name, edit, expect) in cases {
        let mut o = order();
        edit(&mut o);
        // The gateway does not sign it…
        let e = sign_order(&o.to_json(), &w.issuer).expect_err(name);
        assert!(e.to_string().contains(expect), "{name}: {e}");
        // …and a device refuses it once signed anyway, as authenticated.
        let e = verify(&w, &o).expect_err(name);
        assert!(matches!(e, FirmwareRejection::Order(_)), "{name}: {e}");
        assert!(e.authenticated());
    }
    // Unknown and duplicate fields.
    let json = String::from_utf8(order().to_json()).unwrap();
    for bad in [
        json.replacen("{", "{\n  \"extra\": 1,", 1),
        json.replacen("{", "{\n  \"sequence\": 8,", 1),
    ] {
        let e = check(
            &w,
            &signed_for(bad.as_bytes(), &w.issuer, Purpose::Firmware),
        )
        .unwrap_err();
        assert!(matches!(e, FirmwareRejection::Order(_)), "{e}");
    }
}

#[test]
fn the_signature_is_checked_before_any_json_and_only_for_firmware() {
    let w = world();
    let json = order().to_json();
    // Another purpose's signature by the same key: refused as a signature.
    for purpose in [Purpose::Model, Purpose::Workflow, Purpose::Receipt] {
        let e = check(&w, &signed_for(&json, &w.issuer, purpose)).unwrap_err();
        assert!(
            matches!(e, FirmwareRejection::Signature(SignError::Invalid(_))),
            "{purpose:?}: {e}"
        );
        assert!(!e.authenticated());
    }
    // Not JSON at all, badly signed: the signature fails first (the JSON is never read).
    let mut junk = signed_for(b"not json {{{\n", &w.issuer, Purpose::Firmware);
    junk[0] ^= 0x20;
    assert!(matches!(
        check(&w, &junk),
        Err(FirmwareRejection::Signature(SignError::Invalid(_)))
    ));
    // One byte of the signed part changed.
    let mut bytes = sign_order(&json, &w.issuer).unwrap();
    let at = String::from_utf8_lossy(&bytes).find("1.4.0").unwrap();
    bytes[at + 2] = b'5';
    assert!(matches!(
        check(&w, &bytes),
        Err(FirmwareRejection::Signature(SignError::Invalid(_)))
    ));
    // Another key.
    let other = SecretKey::generate().unwrap();
    assert!(matches!(
        check(&w, &signed_for(&json, &other, Purpose::Firmware)),
        Err(FirmwareRejection::Signature(SignError::UnknownKey(_)))
    ));
    // Shapes: no block, two blocks, too large.
    assert!(matches!(
        check(&w, &json),
        Err(FirmwareRejection::Format(_))
    ));
    let once = sign_order(&json, &w.issuer).unwrap();
    let mut twice = once.clone();
    twice.extend_from_slice(&once[json.len()..]);
    let e = check(&w, &twice).unwrap_err();
    assert!(e.to_string().contains("exactly one signature block"), "{e}");
    let big = vec![b' '; MAX_ORDER_BYTES + 1];
    let e = check(&w, &big).unwrap_err();
    assert!(e.to_string().contains("limit"), "{e}");
    // A model manifest's or rollback order's bytes never pass as an order (other context).
}

#[test]
fn old_trust_metadata_parses_and_grants_no_firmware() {
    let w = world();
    let mut json = serde_json::to_value(&w.trust).unwrap();
    assert_eq!(json["issuers"][0]["firmware"], "upgrades");
    json["issuers"][0]
        .as_object_mut()
        .unwrap()
        .remove("firmware");
    let old: TrustMetadata = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.issuers[0].firmware, FirmwareGrant::None);
    // None is not written, so agents that predate the field read the file.
    let written = serde_json::to_value(&old).unwrap();
    assert!(written["issuers"][0].get("firmware").is_none());
    json["issuers"][0]["firmware"] = "everything".into();
    assert!(serde_json::from_value::<TrustMetadata>(json).is_err());
    // With such metadata the order is refused, naming the grant.
    let mut w = w;
    w.trust = old;
    let e = verify(&w, &order()).unwrap_err();
    assert!(
        matches!(e, FirmwareRejection::NotFirmwareIssuer { .. }),
        "{e}"
    );
}

#[test]
fn receipts_verify_with_the_device_key_and_are_no_other_receipt() {
    let key = SecretKey::generate().unwrap();
    let other = SecretKey::generate().unwrap();
    let r = FirmwareReceipt {
        kind: RECEIPT_TYPE.into(),
        device: "orin-0042".into(),
        image: "aegis-image".into(),
        version: "1.4.0".into(),
        order_sha256: "c".repeat(64),
        verdict: Verdict::RolledBack,
        reason: "slot B was not confirmed; the bootloader booted slot A".into(),
        running_version: "1.3.2".into(),
        slot: Some(Slot::A),
        trust_version: 3,
        at: "2026-12-04T10:20:00Z".into(),
    };
    let text = r.render_signed(&key).unwrap();
    assert_eq!(
        FirmwareReceipt::verify(text.as_bytes(), key.public()).unwrap(),
        r
    );
    assert!(FirmwareReceipt::verify(text.as_bytes(), other.public()).is_err());
    assert!(crate::model_wire::ModelReceipt::verify(text.as_bytes(), key.public()).is_err());
    assert!(crate::receipt::Receipt::verify(text.as_bytes(), key.public()).is_err());
    let tampered = text.replacen("rolled_back", "applied", 1);
    assert!(FirmwareReceipt::verify(tampered.as_bytes(), key.public()).is_err());
    // A model receipt is not a firmware receipt.
    let model = crate::model_wire::ModelReceipt {
        kind: crate::model_wire::MODEL_RECEIPT_TYPE.into(),
        device: "orin-0042".into(),
        name: "m".into(),
        version: 1,
        manifest_sha256: "a".repeat(64),
        action: "install".into(),
        verdict: Verdict::Applied,
        reason: String::new(),
        active_version: Some(1),
        trust_version: 3,
        at: "2026-12-04T10:20:00Z".into(),
        total_ms: None,
        phases: vec![],
    };
    let text = model.render_signed(&key).unwrap();
    assert!(FirmwareReceipt::verify(text.as_bytes(), key.public()).is_err());
}

#[test]
fn hostile_bytes_never_panic() {
    let w = world();
    let good = sign_order(&order().to_json(), &w.issuer).unwrap();
    // Deterministic pseudo-random damage (xorshift): flips, truncations, insertions.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..600 {
        let mut b = good.clone();
        match next() % 3 {
            0 => {
                let i = (next() as usize) % b.len();
                b[i] ^= 1 << (next() % 8);
            }
            1 => b.truncate((next() as usize) % b.len()),
            _ => {
                let i = (next() as usize) % b.len();
                b.insert(i, (next() % 256) as u8);
            }
        }
        if let Ok(v) = check(&w, &b) {
            // Only damage outside the signed bytes (the block's whitespace) may pass.
            assert_eq!(v.order, order());
        }
    }
}

fn boot(current: Slot, next: Slot, attempts: [u32; 2]) -> BootState {
    let s = |a| SlotStatus {
        bootable: true,
        attempts_left: a,
    };
    BootState {
        current,
        next,
        slots: [s(attempts[0]), s(attempts[1])],
        max_attempts: 3,
    }
}

#[test]
fn the_record_consumes_sequences_keeps_one_order_and_resumes_from_the_bootloader() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("firmware");
    let w = world();
    let mut st = FirmwareState::open(&dir).unwrap();
    let bytes = sign_order(&order().to_json(), &w.issuer).unwrap();
    let v = verify_order(&bytes, &w.trust, &w.ctx, &|k| st.last_sequence(k)).unwrap();
    st.begin(&v, "1.3.2").unwrap();
    // The same order again: a replay, from the record on disk (another process).
    let reopened = FirmwareState::open(&dir).unwrap();
    let e = verify_order(&bytes, &w.trust, &w.ctx, &|k| reopened.last_sequence(k)).unwrap_err();
    assert!(
        matches!(
            e,
            FirmwareRejection::Replayed {
                sequence: 7,
                last: 7
            }
        ),
        "{e}"
    );
    // One order at a time.
    let mut o2 = order();
    o2.sequence = 8;
    let v2 = verify_order(
        &sign_order(&o2.to_json(), &w.issuer).unwrap(),
        &w.trust,
        &w.ctx,
        &|k| st.last_sequence(k),
    )
    .unwrap();
    assert!(
        st.begin(&v2, "1.3.2")
            .unwrap_err()
            .to_string()
            .contains("under way")
    );
    // Steps only in order.
    assert!(st.switched().is_err());
    // Accepted: whatever happens at boot, it never switched.
    assert_eq!(
        st.resume(&boot(Slot::A, Slot::A, [2, 3]), "1.3.2"),
        Some(Resume::Abandon)
    );
    st.installed(Slot::B).unwrap();
    assert_eq!(
        st.resume(&boot(Slot::A, Slot::A, [2, 3]), "1.3.2"),
        Some(Resume::Switch(Slot::B))
    );
    st.switched().unwrap();
    let st = FirmwareState::open(&dir).unwrap();
    assert_eq!(st.pending().unwrap().phase, Phase::Switched);
    for (b, running, want) in [
        // Not rebooted yet.
        (boot(Slot::A, Slot::B, [2, 3]), "1.3.2", Resume::Reboot),
        // The new slot, one attempt spent.
        (
            boot(Slot::B, Slot::B, [3, 2]),
            "1.4.0",
            Resume::Trial(Slot::B),
        ),
        // Confirmed.
        (
            boot(Slot::B, Slot::B, [3, 3]),
            "1.4.0",
            Resume::Applied(Slot::B),
        ),
        // The bootloader fell back.
        (
            boot(Slot::A, Slot::A, [2, 0]),
            "1.3.2",
            Resume::FellBack {
                tried: Slot::B,
                running: Slot::A,
            },
        ),
        // The new slot runs something else.
        (
            boot(Slot::B, Slot::B, [3, 2]),
            "1.3.9",
            Resume::WrongVersion {
                slot: Slot::B,
                running: "1.3.9".into(),
            },
        ),
    ] {
        assert_eq!(st.resume(&b, running), Some(want.clone()), "{want:?}");
    }
    let mut st = st;
    let p = st.finish().unwrap();
    assert_eq!(
        (p.version.as_str(), p.from_version.as_str()),
        ("1.4.0", "1.3.2")
    );
    assert!(st.answered(&v.digest));
    assert_eq!(st.resume(&boot(Slot::B, Slot::B, [3, 3]), "1.4.0"), None);
    // The next order may begin.
    st.begin(&v2, "1.4.0").unwrap();
}

#[test]
fn a_hostile_record_is_refused_and_left_alone() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("fw");
    FirmwareState::open(&dir).unwrap();
    let path = dir.join(super::state::STATE_FILE);
    let pending = |digest: &str, phase: &str, slot: &str| {
        format!(
            r#"{{"pending":{{"digest":"{digest}","image":"aegis-image","version":"1.4.0","from_version":"1.3.2","slot":{slot},"phase":"{phase}","accepted_at":"x"}}}}"#
        )
    };
    let d64 = "a".repeat(64);
    let cases: Vec<(&str, String, &str)> = vec![
        ("not json", "{".into(), "EOF"),
        ("unknown field", r#"{"extra":1}"#.into(), "unknown field"),
        (
            "bad digest",
            pending("x", "installed", "\"b\""),
            "not a SHA-256",
        ),
        (
            "slot without install",
            pending(&d64, "accepted", "\"b\""),
            "phase Accepted",
        ),
        (
            "install without slot",
            pending(&d64, "switched", "null"),
            "phase Switched",
        ),
        (
            "bad answered",
            r#"{"answered":["../x"]}"#.into(),
            "not a SHA-256",
        ),
        (
            "big",
            format!("{{\"x\":\"{}\"}}", "y".repeat(300 * 1024)),
            "larger than",
        ),
    ];
    for (name, body, expect) in cases {
        std::fs::write(&path, &body).unwrap();
        let e = FirmwareState::open(&dir).unwrap_err();
        assert!(e.to_string().contains(expect), "{name}: {e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), body, "{name}");
    }
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
    let e = FirmwareState::open(&dir).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn a_gateway_checks_what_it_can_before_publishing() {
    let w = world();
    let good = sign_order(&order().to_json(), &w.issuer).unwrap();
    let p = check_for_publish(&good, Some(&w.trust), NOW, 300).unwrap();
    assert!(p.signature_verified);
    assert_eq!(p.order, order());
    assert_eq!(p.key_id, w.issuer.public().id());
    assert_eq!(p.digest, check(&w, &good).unwrap().digest);
    // Without trust metadata: the shape only, and it says so.
    let p = check_for_publish(&good, None, NOW, 300).unwrap();
    assert!(!p.signature_verified);
    assert_eq!(p.order, order());

    let other = SecretKey::generate().unwrap();
    let mut flipped = good.clone();
    let at = String::from_utf8_lossy(&flipped).find("1.4.0").unwrap();
    flipped[at + 2] = b'5';
    let mut wide = order();
    wide.target.groups.push("site-b".into());
    let mut wrong_issuer = order();
    wrong_issuer.issuer = "gw-2".into();
    let mut no_grant = w.trust.clone();
    no_grant.issuers[0].firmware = FirmwareGrant::None;
    let signed = |o: &FirmwareOrder| signed_for(&o.to_json(), &w.issuer, Purpose::Firmware);
    for (bytes, trust, now, expect) in [
        (flipped.clone(), Some(&w.trust), NOW, "signature"),
        (
            signed_for(&order().to_json(), &other, Purpose::Firmware),
            Some(&w.trust),
            NOW,
            "unknown",
        ),
        (
            signed_for(&order().to_json(), &w.issuer, Purpose::Model),
            Some(&w.trust),
            NOW,
            "signature",
        ),
        (
            signed(&wide),
            Some(&w.trust),
            NOW,
            "may not target group \"site-b\"",
        ),
        (
            signed(&wrong_issuer),
            Some(&w.trust),
            NOW,
            "is not the signing issuer",
        ),
        (good.clone(), Some(&no_grant), NOW, "may not order firmware"),
        (good.clone(), None, NOW + 8 * 86_400, "expired"),
        (good.clone(), None, NOW - 86_400, "is after now"),
        (order().to_json(), None, NOW, "signature block"),
        (b"{}\n".to_vec(), None, NOW, "signature block"),
        (
            signed_for(
                b"{\"type\":\"model-manifest\"}\n",
                &w.issuer,
                Purpose::Firmware,
            ),
            None,
            NOW,
            "order:",
        ),
    ] {
        let e = check_for_publish(&bytes, trust, now, 300).unwrap_err();
        assert!(
            e.to_string().to_lowercase().contains(expect),
            "{expect}: {e}"
        );
    }
    // A flipped byte passes the shape check when nothing can verify it (it still parses):
    // that is what `signature_verified: false` says.
    assert!(
        !check_for_publish(&flipped, None, NOW, 300)
            .unwrap()
            .signature_verified
    );
}
