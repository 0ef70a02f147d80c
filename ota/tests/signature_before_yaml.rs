//! DESIGN §5: a workflow's signature is checked before any of its YAML is read. Documents
//! whose body is a YAML bomb or is not YAML at all, unsigned or badly signed, are refused
//! without the YAML parser being entered (counted by `maml::yaml_parser_entries`, per
//! thread); the same bodies correctly signed do reach it, so these tests can fail.

use base64::Engine as _;

use aegis_ota::device::{Identity, Policy, ReplayState, check};
use aegis_ota::maml::{self, SignatureBlock, normalise, template, yaml_parser_entries};
use aegis_ota::sign::{Purpose, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use aegis_ota::{Rejection, verify_document};

const NOW: i64 = 1_795_730_000; // 2026-11-26T…

/// Front matter that expands to 9^8 strings if a parser follows its aliases.
fn yaml_bomb() -> String {
    let mut t = String::from("---\na0: &a0 [x, x, x, x, x, x, x, x, x]\n");
    for i in 1..9 {
        let p = i - 1;
        t.push_str(&format!(
            "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    t.push_str("---\n\n## Pipeline\n\n```yaml\nsources: []\n```\n");
    t
}

/// Front matter that is not YAML.
fn not_yaml() -> String {
    "---\nid: [unclosed\n  : : {\n\t- ]]\n---\n\n## Pipeline\n\n```yaml\n{{{\n```\n".into()
}

fn good() -> String {
    template(
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "gw-1",
        "orin-0042",
        17,
        "2026-11-26T10:00:00Z",
        "2026-11-27T10:00:00Z",
    )
}

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
            devices: vec!["orin-0042".into()],
            groups: vec![],
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
            groups: vec![],
        },
        policy: Policy {
            source_hosts: vec!["192.0.2.10".into()],
            ..Policy::default()
        },
    }
}

/// `text` normalised, followed by `block`.
fn with_block(text: &str, block: &SignatureBlock) -> Vec<u8> {
    let mut b = normalise(text.as_bytes());
    b.extend_from_slice(block.render().as_bytes());
    b
}

fn signed(text: &str, k: &SecretKey) -> Vec<u8> {
    let body = normalise(text.as_bytes());
    with_block(text, &k.sign_block(&body, Purpose::Workflow).unwrap())
}

/// Every badly signed form of `text`, named.
fn badly_signed(w: &World, text: &str) -> Vec<(&'static str, Vec<u8>)> {
    let body = normalise(text.as_bytes());
    let real = w.issuer.sign_block(&body, Purpose::Workflow).unwrap();
    // The trusted issuer's signature over other bytes.
    let other = w
        .issuer
        .sign_block(&normalise(good().as_bytes()), Purpose::Workflow)
        .unwrap();
    let truncated = SignatureBlock {
        sig: real.sig[..real.sig.len() / 2].to_string(),
        ..real.clone()
    };
    let mut flipped = real.clone();
    flipped.sig = flip_one_char(&real.sig);
    vec![
        ("unsigned", normalise(text.as_bytes())),
        ("signed over other bytes", with_block(text, &other)),
        ("signed by an unknown key", signed(text, &w.root)),
        ("truncated signature", with_block(text, &truncated)),
        (
            "one signature character changed",
            with_block(text, &flipped),
        ),
        (
            "empty signature",
            with_block(
                text,
                &SignatureBlock {
                    sig: String::new(),
                    ..real
                },
            ),
        ),
    ]
}

fn flip_one_char(sig: &str) -> String {
    let mut s: Vec<char> = sig.chars().collect();
    let i = s.len() / 3;
    s[i] = if s[i] == 'A' { 'B' } else { 'A' };
    s.into_iter().collect()
}

#[test]
fn the_device_check_refuses_badly_signed_yaml_without_parsing_it() {
    let w = world();
    let state = ReplayState::default();
    for (body_name, body) in [("a YAML bomb", yaml_bomb()), ("not YAML", not_yaml())] {
        for (how, doc) in badly_signed(&w, &body) {
            let before = yaml_parser_entries();
            let refusal = check(&doc, &w.trust, &w.me, &w.policy, &state, NOW, &[])
                .expect_err("a badly signed document must be refused");
            assert_eq!(
                yaml_parser_entries(),
                before,
                "{body_name}, {how}: the YAML parser was entered before the signature \
                 was checked ({refusal})"
            );
            assert!(
                matches!(
                    refusal.rejection,
                    Rejection::Format(_) | Rejection::Signature(_)
                ),
                "{body_name}, {how}: {refusal}"
            );
            assert!(refusal.authenticated.is_none(), "{body_name}, {how}");
        }
        // The same body correctly signed does reach the parser (and is refused by it).
        let before = yaml_parser_entries();
        let refusal = check(
            &signed(&body, &w.issuer),
            &w.trust,
            &w.me,
            &w.policy,
            &state,
            NOW,
            &[],
        )
        .expect_err("not a workflow");
        assert!(
            yaml_parser_entries() > before,
            "{body_name}: correctly signed, yet never parsed ({refusal})"
        );
        assert!(
            matches!(refusal.rejection, Rejection::Document(_)),
            "{body_name}: {refusal}"
        );
    }
    // A good document is parsed: front matter and Pipeline block.
    let before = yaml_parser_entries();
    check(
        &signed(&good(), &w.issuer),
        &w.trust,
        &w.me,
        &w.policy,
        &state,
        NOW,
        &[],
    )
    .expect("the good document");
    assert_eq!(yaml_parser_entries(), before + 2);
}

#[test]
fn verification_refuses_badly_signed_yaml_without_parsing_it() {
    let w = world();
    let trusted = [w.issuer.public().clone()];
    for (body_name, body) in [("a YAML bomb", yaml_bomb()), ("not YAML", not_yaml())] {
        for (how, doc) in badly_signed(&w, &body) {
            let before = yaml_parser_entries();
            let rejection = verify_document(&doc, &trusted, &[])
                .expect_err("a badly signed document must be refused");
            assert_eq!(
                yaml_parser_entries(),
                before,
                "{body_name}, {how}: the YAML parser was entered before the signature \
                 was checked ({rejection})"
            );
            assert!(
                matches!(rejection, Rejection::Format(_) | Rejection::Signature(_)),
                "{body_name}, {how}: {rejection}"
            );
        }
        let before = yaml_parser_entries();
        let rejection =
            verify_document(&signed(&body, &w.issuer), &trusted, &[]).expect_err("not a workflow");
        assert!(
            yaml_parser_entries() > before,
            "{body_name}: correctly signed, yet never parsed ({rejection})"
        );
    }
    let before = yaml_parser_entries();
    verify_document(&signed(&good(), &w.issuer), &trusted, &[]).expect("the good document");
    assert_eq!(yaml_parser_entries(), before + 2);
    // The parser itself counts, whoever calls it.
    let before = yaml_parser_entries();
    let _ = maml::parse(yaml_bomb().as_bytes());
    assert_eq!(yaml_parser_entries(), before + 1);
}
