//! The whole device-side check on arbitrary bytes, and on a valid signed document with
//! arbitrary edits: no panic, and nothing edited after signing is ever accepted.
#![no_main]

use std::sync::OnceLock;

use aegis_ota::device::{Identity, Policy, ReplayState, check};
use aegis_ota::sign::{Purpose, SecretKey};
use aegis_ota::trust::{Issuer, Roots, TrustMetadata};
use libfuzzer_sys::fuzz_target;

struct World {
    trust: TrustMetadata,
    good: Vec<u8>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        use base64::Engine as _;
        let key = SecretKey::generate().unwrap();
        let doc = aegis_ota::maml::template(
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "gw-1",
            "orin-0042",
            1,
            "2026-01-01T00:00:00Z",
            "2036-01-01T00:00:00Z",
        );
        let mut good = doc.into_bytes();
        good.extend_from_slice(key.sign_block(&good, Purpose::Workflow).unwrap().render().as_bytes());
        World {
            trust: TrustMetadata {
                kind: "aegis-trust".into(),
                version: 1,
                expires_at: "2036-01-01T00:00:00Z".into(),
                root: Roots { threshold: 1, keys: vec![] },
                issuers: vec![Issuer {
                    name: "gw-1".into(),
                    key: base64::engine::general_purpose::STANDARD.encode(key.public().to_bytes()),
                    devices: vec!["*".into()],
                    groups: vec![],
                    models: false,
                    firmware: Default::default(),
                }],
                revoked: vec![],
            },
            good,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let w = world();
    let me = Identity { id: "orin-0042".into(), groups: vec![] };
    let policy = Policy { source_hosts: vec!["*".into()], ..Policy::default() };
    let state = ReplayState::default();
    let now = 1_800_000_000;
    let _ = check(data, &w.trust, &me, &policy, &state, now, &[]);
    // Edit the valid document: overwrite bytes at positions chosen by the input.
    if data.len() >= 3 {
        let mut doc = w.good.clone();
        let at = u16::from_le_bytes([data[0], data[1]]) as usize % doc.len();
        for (k, b) in data[2..].iter().take(8).enumerate() {
            if let Some(x) = doc.get_mut(at + k) {
                *x = *b;
            }
        }
        if doc != w.good && check(&doc, &w.trust, &me, &policy, &state, now, &[]).is_ok() {
            // Only edits inside the signature's base64 that decode to the same bytes, or CR
            // insertions normalised away, could verify; anything else is a forgery.
            let norm = aegis_ota::maml::normalise(&doc);
            let (signed, _) = aegis_ota::maml::split_signed(&norm).unwrap();
            let (orig, _) = aegis_ota::maml::split_signed(&w.good).unwrap();
            assert_eq!(signed, orig, "an edited document verified");
        }
    }
});
