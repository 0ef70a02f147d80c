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

/// Key-file checks (`keyfile`: one descriptor, owner, mode, type, size) and what is wiped.
mod key_files {
    use std::os::unix::fs::PermissionsExt;
    use std::path::{Path, PathBuf};

    use crate::seal::{SealPublic, SealSecret};
    use crate::sign::{PublicKey, SecretKey, SignError};

    fn euid() -> u32 {
        // SAFETY: geteuid takes no arguments and cannot fail.
        unsafe { libc::geteuid() }
    }

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A directory with a signing key pair and a sealing key pair written by the crate.
    struct Keys {
        dir: tempfile::TempDir,
        key: SecretKey,
    }

    impl Keys {
        fn new() -> Keys {
            let dir = tempfile::tempdir().unwrap();
            let key = SecretKey::generate().unwrap();
            key.write(&dir.path().join("k.key")).unwrap();
            key.public().write(&dir.path().join("k.pub")).unwrap();
            let kem = SealSecret::generate().unwrap();
            kem.write(&dir.path().join("k.kem.key")).unwrap();
            kem.public().write(&dir.path().join("k.kem.pub")).unwrap();
            Keys { dir, key }
        }
        fn path(&self, name: &str) -> PathBuf {
            self.dir.path().join(name)
        }
    }

    fn secret_err(p: &Path) -> String {
        let a = SecretKey::read(p).err().map(|e| e.to_string());
        let b = SealSecret::read(p).err().map(|e| e.to_string());
        let a = a.unwrap_or_else(|| panic!("{} was accepted as a signing key", p.display()));
        assert!(b.is_some(), "{} was accepted as a sealing key", p.display());
        assert!(a.contains(&p.display().to_string()), "names the file: {a}");
        a
    }

    fn public_err(p: &Path) -> String {
        let e = PublicKey::read(p)
            .err()
            .unwrap_or_else(|| panic!("{} was accepted as a public key", p.display()))
            .to_string();
        assert!(e.contains(&p.display().to_string()), "names the file: {e}");
        e
    }

    #[test]
    fn written_key_files_read_back_with_their_modes() {
        let k = Keys::new();
        let mode = |n: &str| std::fs::metadata(k.path(n)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("k.key"), mode("k.kem.key")), (0o600, 0o600));
        assert_eq!((mode("k.pub"), mode("k.kem.pub")), (0o644, 0o644));
        assert_eq!(
            SecretKey::read(&k.path("k.key")).unwrap().public().id(),
            k.key.public().id()
        );
        assert_eq!(
            PublicKey::read(&k.path("k.pub")).unwrap().id(),
            k.key.public().id()
        );
        let kem = SealSecret::read(&k.path("k.kem.key")).unwrap();
        let kem_pub = SealPublic::read(&k.path("k.kem.pub")).unwrap();
        assert_eq!(kem.public().id(), kem_pub.id());
        // A public file written over a group-writable one ends 0644 (umask or not).
        let p = k.path("loose.pub");
        std::fs::write(&p, "x").unwrap();
        chmod(&p, 0o666);
        k.key.public().write(&p).unwrap();
        assert_eq!(mode("loose.pub"), 0o644);
        assert!(PublicKey::read(&p).is_ok());
    }

    #[test]
    fn a_secret_key_is_never_overwritten_nor_written_through_a_link() {
        let k = Keys::new();
        let e = k.key.write(&k.path("k.key")).unwrap_err().to_string();
        assert!(e.contains("never overwritten"), "{e}");
        let target = k.path("elsewhere.key");
        std::os::unix::fs::symlink(&target, k.path("link.key")).unwrap();
        assert!(k.key.write(&k.path("link.key")).is_err());
        assert!(!target.exists(), "wrote through a dangling link");
        // Public files are not written through a link either (the target stays as it is).
        std::fs::write(&target, "unchanged").unwrap();
        std::os::unix::fs::symlink(&target, k.path("link.pub")).unwrap();
        let e = k.key.public().write(&k.path("link.pub")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "unchanged");
    }

    #[test]
    fn symbolic_links_are_refused_for_secret_and_public_keys() {
        let k = Keys::new();
        for (link, to) in [("s.key", "k.key"), ("s.kem.key", "k.kem.key")] {
            std::os::unix::fs::symlink(k.path(to), k.path(link)).unwrap();
        }
        std::os::unix::fs::symlink(k.path("k.pub"), k.path("s.pub")).unwrap();
        let e = SecretKey::read(&k.path("s.key")).unwrap_err().to_string();
        assert!(e.contains("symbolic link") && e.contains("s.key"), "{e}");
        let e = SealSecret::read(&k.path("s.kem.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = public_err(&k.path("s.pub"));
        assert!(
            e.contains("symbolic link") && e.contains("readlink -f"),
            "{e}"
        );
    }

    #[test]
    fn secret_keys_accessible_to_group_or_others_are_refused() {
        let k = Keys::new();
        for mode in [0o640, 0o604, 0o620, 0o610, 0o700 | 0o004] {
            for name in ["k.key", "k.kem.key"] {
                chmod(&k.path(name), mode);
            }
            let e = secret_err(&k.path("k.key"));
            assert!(e.contains("chmod 600"), "{mode:o}: {e}");
        }
        chmod(&k.path("k.key"), 0o400);
        assert!(SecretKey::read(&k.path("k.key")).is_ok(), "0400 is fine");
    }

    #[test]
    fn secret_keys_of_another_user_are_refused() {
        let k = Keys::new();
        let p = if euid() == 0 {
            // As root: a key owned by another uid, even mode 0600.
            let p = k.path("k.key");
            std::os::unix::fs::chown(&p, Some(54_321), None).unwrap();
            p
        } else {
            // As a user: a root-owned readable file (owner is checked before the mode).
            PathBuf::from("/etc/passwd")
        };
        let e = secret_err(&p);
        assert!(e.contains("is owned by uid") && e.contains("chown"), "{e}");
    }

    #[test]
    fn public_keys_others_can_rewrite_are_refused() {
        let k = Keys::new();
        for mode in [0o664, 0o646, 0o666] {
            chmod(&k.path("k.pub"), mode);
            let e = public_err(&k.path("k.pub"));
            assert!(e.contains("chmod 644"), "{mode:o}: {e}");
            chmod(&k.path("k.kem.pub"), mode);
            assert!(SealPublic::read(&k.path("k.kem.pub")).is_err(), "{mode:o}");
        }
        chmod(&k.path("k.pub"), 0o444);
        assert!(
            PublicKey::read(&k.path("k.pub")).is_ok(),
            "read-only is fine"
        );
        if euid() == 0 {
            // Owned by a user other than root and this process: that user could replace it.
            std::os::unix::fs::chown(k.path("k.pub"), Some(54_321), None).unwrap();
            let e = public_err(&k.path("k.pub"));
            assert!(
                e.contains("owned by uid 54321") && e.contains("chown root"),
                "{e}"
            );
        }
    }

    #[test]
    fn directories_fifos_and_oversized_files_are_refused_without_blocking() {
        let k = Keys::new();
        // A directory.
        let d = k.path("dir.key");
        std::fs::create_dir(&d).unwrap();
        chmod(&d, 0o700);
        let e = secret_err(&d);
        assert!(e.contains("is a directory, not a regular file"), "{e}");
        let e = public_err(&d);
        assert!(e.contains("not a regular file"), "{e}");
        // A FIFO with no writer: opening it must not block (O_NONBLOCK), and it is refused.
        let fifo = k.path("fifo.key");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let f2 = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send((
                SecretKey::read(&f2).err().map(|e| e.to_string()),
                PublicKey::read(&f2).err().map(|e| e.to_string()),
            ));
        });
        let (s, p) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        for e in [s, p] {
            let e = e.expect("a FIFO was accepted");
            assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        }
        // Over 64 KB: refused before anything is read, with the size.
        let big = k.path("big.key");
        let mut text = std::fs::read_to_string(k.path("k.key")).unwrap();
        text.push_str(&"A".repeat(64 * 1024));
        std::fs::write(&big, text).unwrap();
        chmod(&big, 0o600);
        let e = secret_err(&big);
        assert!(e.contains("at most 65536 bytes"), "{e}");
        let bigp = k.path("big.pub");
        std::fs::write(&bigp, vec![b'A'; 64 * 1024 + 1]).unwrap();
        chmod(&bigp, 0o644);
        assert!(public_err(&bigp).contains("at most 65536 bytes"));
    }

    #[test]
    fn wrong_kind_and_bad_base64_are_named() {
        let k = Keys::new();
        // A public key file given as a secret one (after making it private).
        let p = k.path("k.pub");
        chmod(&p, 0o600);
        let e = secret_err(&p);
        assert!(e.contains("first line must be"), "{e}");
        // The signing key given as a sealing key: right checks, wrong header.
        let e = SealSecret::read(&k.path("k.key")).unwrap_err().to_string();
        assert!(e.contains("first line must be"), "{e}");
        let bad = k.path("bad.key");
        std::fs::write(
            &bad,
            "aegis ml-dsa-65 secret key (seed)\n%%%not base64%%%\n",
        )
        .unwrap();
        chmod(&bad, 0o600);
        assert!(secret_err(&bad).contains("bad base64"));
        let short = k.path("short.key");
        std::fs::write(&short, "aegis ml-dsa-65 secret key (seed)\nAAAA\n").unwrap();
        chmod(&short, 0o600);
        assert!(secret_err(&short).contains("a seed is 32 bytes, not 3"));
    }

    fn assert_zod<T: zeroize::ZeroizeOnDrop>() {}

    /// Compile-time: the secret key types wipe themselves on drop (the crates' `zeroize`
    /// features are on), and so do the cipher states made from content keys.
    #[test]
    fn secret_key_types_are_zeroize_on_drop() {
        assert_zod::<ml_dsa::SigningKey<ml_dsa::MlDsa65>>();
        assert_zod::<ml_dsa::ExpandedSigningKey<ml_dsa::MlDsa65>>();
        assert_zod::<ml_kem::DecapsulationKey768>();
        assert_zod::<aes::Aes256>();
        assert_zod::<zeroize::Zeroizing<ml_dsa::Seed>>();
        assert_zod::<zeroize::Zeroizing<ml_kem::Seed>>();
        assert_zod::<SecretKey>();
        assert_zod::<SealSecret>();
    }

    #[test]
    fn a_group_key_delivery_round_trips_only_for_its_member() {
        let member = SealSecret::generate().unwrap();
        let stranger = SealSecret::generate().unwrap();
        let group = SealSecret::generate().unwrap();
        let d = crate::seal::group_key_delivery("site-a", &group, member.public()).unwrap();
        let (name, key) = crate::seal::open_group_key(&d, &member).unwrap();
        assert_eq!(
            (name.as_str(), key.public().id()),
            ("site-a", group.public().id())
        );
        assert!(crate::seal::open_group_key(&d, &stranger).is_err());
        // The group name is bound: a delivery relabelled for another group does not open.
        let relabelled = d.replacen("group: site-a", "group: site-b", 1);
        assert_eq!(
            crate::seal::open_group_key(&relabelled, &member).unwrap_err(),
            crate::seal::SealError::Open
        );
    }

    #[test]
    fn a_revoked_key_is_reported_as_revoked_not_as_a_bad_signature() {
        use base64::Engine as _;
        let issuer = SecretKey::generate().unwrap();
        let mut t = crate::trust::TrustMetadata {
            kind: "aegis-trust".into(),
            version: 1,
            expires_at: "2099-01-01T00:00:00Z".into(),
            root: crate::trust::Roots {
                threshold: 1,
                keys: vec![],
            },
            issuers: vec![crate::trust::Issuer {
                name: "gw-1".into(),
                key: base64::engine::general_purpose::STANDARD.encode(issuer.public().to_bytes()),
                devices: vec!["*".into()],
                groups: vec![],
                models: false,
                firmware: Default::default(),
            }],
            revoked: vec![],
        };
        let id = issuer.public().id().to_string();
        assert!(t.issuer(&id).is_ok());
        t.revoked.push(id.clone());
        let e = t.issuer(&id).unwrap_err();
        assert_eq!(e, SignError::Revoked { key: id.clone() });
        let msg = e.to_string();
        assert_eq!(
            msg,
            format!("signing key {id} is revoked by the device's trust metadata")
        );
        assert!(!msg.contains("altered") && !msg.contains("bad signature"));
        // Revoked even when no issuer lists the key any more.
        t.issuers.clear();
        assert!(matches!(t.issuer(&id), Err(SignError::Revoked { .. })));
    }
}

#[test]
fn time_format_round_trips_through_parse() {
    assert_eq!(maml::format_time(0), "1970-01-01T00:00:00Z");
    assert_eq!(maml::format_time(951_782_400), "2000-02-29T00:00:00Z");
    for t in [
        0_i64,
        951_782_399,
        1_795_694_400,
        4_102_444_800,
        253_402_300_799,
    ] {
        assert_eq!(maml::parse_time(&maml::format_time(t)), Some(t), "{t}");
    }
}

#[test]
fn sign_workflow_signs_only_unsigned_documents_that_parse() {
    let key = SecretKey::generate().unwrap();
    // CRLF and a missing final newline are normalised before signing.
    let text = doc("").replace('\n', "\r\n");
    let text = text.trim_end();
    let out = sign_workflow(text.as_bytes(), &key).unwrap();
    let v = verify_document(&out, std::slice::from_ref(key.public()), &[]).unwrap();
    assert_eq!(v.document.front.sequence, 17);
    assert_eq!(
        sign_workflow(&out, &key).unwrap_err(),
        SignWorkflowError::AlreadySigned
    );
    let bad = doc("").replace("type: workflow", "type: manifest");
    assert!(matches!(
        sign_workflow(bad.as_bytes(), &key).unwrap_err(),
        SignWorkflowError::Document(_)
    ));
}

#[test]
fn stamp_sets_sequence_and_times_and_nothing_else() {
    let draft = doc("");
    let parsed = maml::parse(draft.as_bytes()).unwrap();
    let (text, d) = maml::stamp(
        &draft,
        &parsed,
        42,
        "2027-01-01T00:00:00Z",
        "2027-01-08T00:00:00Z",
    )
    .unwrap();
    assert_eq!(d.front.sequence, 42);
    assert_eq!(d.front.issued_at, "2027-01-01T00:00:00Z");
    assert_eq!(d.front.expires_at, "2027-01-08T00:00:00Z");
    // Only the three lines differ; the History line that repeats issued_at is the
    // author's and stays.
    let changed: Vec<(&str, &str)> = draft
        .lines()
        .zip(text.lines())
        .filter(|(a, b)| a != b)
        .collect();
    assert_eq!(changed.len(), 3, "{changed:?}");
    assert_eq!(draft.lines().count(), text.lines().count());
    assert!(text.contains("[2026-11-26T10:00:00Z] [CREATE]"));

    // A value continued on the next line, a flow-style front matter, a key twice: refused.
    let continued = draft.replace("sequence: 17", "sequence:\n  17");
    let p = maml::parse(continued.as_bytes()).unwrap();
    assert!(
        maml::stamp(
            &continued,
            &p,
            1,
            "2027-01-01T00:00:00Z",
            "2027-01-02T00:00:00Z"
        )
        .is_err()
    );
    let twice = draft.replace("sequence: 17\n", "sequence: 17\n# sequence: 18\n");
    let p = maml::parse(twice.as_bytes()).unwrap();
    // A comment is not a key (it starts with `#`): accepted, and the comment stays.
    let (t, _) = maml::stamp(
        &twice,
        &p,
        1,
        "2027-01-01T00:00:00Z",
        "2027-01-02T00:00:00Z",
    )
    .unwrap();
    assert!(t.contains("# sequence: 18"));
    let front_end = draft.find("\n---\n").unwrap();
    let flow = format!(
        "---\n{{{}}}{}",
        draft[4..front_end].lines().collect::<Vec<_>>().join(", "),
        &draft[front_end..]
    );
    let p = maml::parse(flow.as_bytes()).unwrap();
    let e = maml::stamp(&flow, &p, 1, "2027-01-01T00:00:00Z", "2027-01-02T00:00:00Z").unwrap_err();
    assert!(e.to_string().contains("sequence"), "{e}");
}

#[test]
fn targets_have_one_canonical_form() {
    let t = |d: &[&str], g: &[&str]| maml::Target {
        devices: d.iter().map(|x| x.to_string()).collect(),
        groups: g.iter().map(|x| x.to_string()).collect(),
    };
    assert_eq!(t(&["b", "a"], &["y", "x"]).canonical(), "d:a,b|g:x,y");
    assert_eq!(
        t(&["a", "b"], &[]).canonical(),
        t(&["b", "a"], &[]).canonical()
    );
    assert_ne!(t(&["a"], &[]).canonical(), t(&[], &["a"]).canonical());
}
