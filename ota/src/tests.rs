use super::*;
use crate::maml::{split_signed, template};
use crate::sign::SecretKey;

fn doc(body_extra: &str) -> String {
    let t = template(
        "0f8fad5b-d9cb-469f-a165-70867728950e",
        "gw-1",
        "orin-0042",
        17,
        "2026-11-26T10:00:00Z",
        "2026-11-27T10:00:00Z",
    );
    format!("{t}{body_extra}")
}

fn signed(text: &str, key: &SecretKey) -> Vec<u8> {
    let mut b = maml::normalise(text.as_bytes());
    let block = key.sign_block(&b, Purpose::Workflow).unwrap();
    b.extend_from_slice(block.render().as_bytes());
    b
}

#[test]
fn a_signed_template_verifies_and_its_pipeline_validates() {
    let key = SecretKey::generate().unwrap();
    let d = signed(&doc(""), &key);
    let v = verify_document(&d, std::slice::from_ref(key.public()), &[]).unwrap();
    assert_eq!(v.document.front.sequence, 17);
    assert_eq!(v.signer.id(), key.public().id());
    let p = v.pipeline.unwrap();
    assert_eq!((p.sources.len(), p.stages.len(), p.sinks.len()), (1, 1, 1));
    assert_eq!(v.digest.len(), 64);
    // CRLF in transit does not change the signed bytes.
    let crlf: Vec<u8> = String::from_utf8(d.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    assert!(verify_document(&crlf, std::slice::from_ref(key.public()), &[]).is_ok());
}

#[test]
fn one_flipped_bit_anywhere_is_refused() {
    let key = SecretKey::generate().unwrap();
    let d = signed(&doc(""), &key);
    let trusted = [key.public().clone()];
    let (body, _) = split_signed(&d).unwrap();
    let sig_at = d.len() - 30; // inside the base64 signature
    // Header, body, signature: every flip is refused.
    let mut positions: Vec<usize> = (0..body.len()).step_by(37).collect();
    positions.extend([5, body.len() - 2, sig_at, sig_at + 10]);
    for i in positions {
        for bit in [0x01u8, 0x20] {
            let mut bad = d.clone();
            bad[i] ^= bit;
            assert!(
                verify_document(&bad, &trusted, &[]).is_err(),
                "flip of {bit:#x} at byte {i} ({:?}) was accepted",
                d[i] as char
            );
        }
    }
}

#[test]
fn rejections_name_their_reason() {
    let key = SecretKey::generate().unwrap();
    let other = SecretKey::generate().unwrap();
    let trusted = [key.public().clone()];
    let reason = |bytes: &[u8]| {
        verify_document(bytes, &trusted, &[])
            .unwrap_err()
            .to_string()
    };

    // Unknown key.
    let e = reason(&signed(&doc(""), &other));
    assert!(
        e.contains("unknown signing key") && e.contains(other.public().id()),
        "{e}"
    );
    // Signed for another purpose (a receipt signature replayed as a workflow).
    let mut b = maml::normalise(doc("").as_bytes());
    let mut block = key.sign_block(&b, Purpose::Workflow).unwrap();
    block.sig = key.sign(&b, Purpose::Receipt).unwrap();
    b.extend_from_slice(block.render().as_bytes());
    assert!(reason(&b).contains("bad signature"), "{}", reason(&b));
    // Unsigned.
    assert!(reason(doc("").as_bytes()).contains("not signed"));
    // Oversized.
    let big = doc(&format!("## Context\n{}\n", "x".repeat(130 * 1024)));
    assert!(reason(big.as_bytes()).contains("limit is 131072"));
    // Text after the signature block.
    let mut trailing = signed(&doc(""), &key);
    trailing.extend_from_slice(b"## Intent\nsneaky\n");
    assert!(reason(&trailing).contains("text after the signature block"));
    // Algorithm not accepted.
    let mut b = maml::normalise(doc("").as_bytes());
    let mut block = key.sign_block(&b, Purpose::Workflow).unwrap();
    block.alg = "ed25519".into();
    b.extend_from_slice(block.render().as_bytes());
    assert!(reason(&b).contains("\"ed25519\" is not accepted"));
}

#[test]
fn signed_but_bad_documents_are_refused_with_line_numbers() {
    let key = SecretKey::generate().unwrap();
    let trusted = [key.public().clone()];
    let reason = |text: &str| {
        verify_document(&signed(text, &key), &trusted, &[])
            .unwrap_err()
            .to_string()
    };
    // Unknown front-matter key, on its line.
    let e = reason(&doc("").replacen("sequence: 17\n", "sequence: 17\nsequense: 18\n", 1));
    assert!(e.contains("sequense") && e.contains("line"), "{e}");
    // Alias bomb / anchors.
    let e = reason(&doc("").replacen("requires: {", "x: &a [1]\ny: *a\nrequires: {", 1));
    assert!(e.contains("anchor") || e.contains("alias"), "{e}");
    // Deep YAML.
    let deep = format!("requires: {}{}\n", "[".repeat(200), "]".repeat(200));
    let e = reason(&doc("").replacen(
        "requires: { models: [], backend: [cpu, cuda, jetson] }\n",
        &deep,
        1,
    ));
    assert!(e.contains("deeper") || e.contains("recursion"), "{e}");
    // Bad pipeline: a stage kind that does not exist, with the block's line.
    let e = reason(&doc("").replacen("kind: timestamp_overlay", "kind: teleport", 1));
    assert!(
        e.contains("pipeline (block starting at line 19)") && e.contains("teleport"),
        "{e}"
    );
    // Expiry before issue.
    let e = reason(&doc("").replacen(
        "expires_at: 2026-11-27T10:00:00Z",
        "expires_at: 2026-11-25T10:00:00Z",
        1,
    ));
    assert!(
        e.contains("line 9") && e.contains("expires_at is not after issued_at"),
        "{e}"
    );
    // Marked sealed but not sealed: said so.
    let e = reason(&doc("").replacen("encryption: none", "encryption: aes-256-gcm+ml-kem-768", 1));
    assert!(
        e.contains("sealed: sealed section: the body is not one ```sealed block"),
        "{e}"
    );
}

#[test]
fn key_files_round_trip_and_secret_files_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let path = dir.path().join("gw.key");
    key.write(&path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(key.write(&path).is_err(), "never overwrites a key");
    let back = SecretKey::read(&path).unwrap();
    assert_eq!(back.public().id(), key.public().id());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let e = SecretKey::read(&path).err().unwrap().to_string();
    assert!(e.contains("chmod 600"), "{e}");
    let pubf = dir.path().join("gw.pub");
    std::fs::write(&pubf, key.public().to_file_text()).unwrap();
    assert_eq!(
        crate::sign::PublicKey::read(&pubf).unwrap().id(),
        key.public().id()
    );
}

#[test]
fn time_format_round_trips_through_parse() {
    assert_eq!(maml::format_time(0), "1970-01-01T00:00:00Z");
    assert_eq!(maml::format_time(951_782_400), "2000-02-29T00:00:00Z");
    for t in [-86_401_i64, 0, 951_782_399, 1_795_694_400, 4_102_444_800] {
        assert_eq!(maml::parse_time(&maml::format_time(t)), Some(t), "{t}");
    }
}
