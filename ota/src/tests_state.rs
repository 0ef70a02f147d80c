//! The device's workflow state against the attacks the hardening review found: a signing
//! oracle once trust expired, trust that silently went back to an older version, older
//! documents replacing newer ones across targets and issuers, receipts signed again after a
//! restart.

use std::path::Path;

use base64::Engine as _;

use crate::maml::{Draft, format_time, normalise, now_s, workflow_text};
use crate::sign::{Purpose, SecretKey};
use crate::state::{TrustHealth, TrustUpdate, Workflows};
use crate::trust::{Issuer, Roots, TrustMetadata};
use crate::{Rejection, Verified};

fn b64(k: &SecretKey) -> String {
    base64::engine::general_purpose::STANDARD.encode(k.public().to_bytes())
}

/// A provisioned device in a temp dir: root, two issuers, trust v1, config.
struct Device {
    dir: tempfile::TempDir,
    root: SecretKey,
    gw: SecretKey,
    gw2: SecretKey,
    trust: TrustMetadata,
}

impl Device {
    fn new(trust_expires_in_s: i64) -> Device {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let root = SecretKey::generate().unwrap();
        let gw = SecretKey::generate().unwrap();
        let gw2 = SecretKey::generate().unwrap();
        std::fs::write(d.join("root.pub"), root.public().to_file_text()).unwrap();
        let issuer = |name: &str, k: &SecretKey| Issuer {
            name: name.into(),
            key: b64(k),
            devices: vec!["*".into()],
            groups: vec!["*".into()],
            models: false,
            firmware: Default::default(),
        };
        let trust = TrustMetadata {
            kind: "aegis-trust".into(),
            version: 1,
            expires_at: format_time(now_s() + trust_expires_in_s),
            root: Roots {
                threshold: 1,
                keys: vec![b64(&root)],
            },
            issuers: vec![issuer("gw-1", &gw), issuer("gw-2", &gw2)],
            revoked: vec![],
        };
        std::fs::write(d.join("trust.signed"), trust.sign(&[&root]).unwrap()).unwrap();
        std::fs::create_dir(d.join("keys")).unwrap();
        SecretKey::generate()
            .unwrap()
            .write(&d.join("keys/device.key"))
            .unwrap();
        let me = Device {
            dir,
            root,
            gw,
            gw2,
            trust,
        };
        std::fs::write(me.cfg_path(), me.cfg_text()).unwrap();
        me
    }

    fn d(&self) -> &Path {
        self.dir.path()
    }

    fn cfg_path(&self) -> std::path::PathBuf {
        self.d().join("aegis.yaml")
    }

    fn cfg_text(&self) -> String {
        let d = self.d().display();
        format!(
            "device: {{ id: orin-1, groups: [site-a] }}\n\
             pipeline:\n  sources: [{{ id: cam0, url: \"file://{d}/clip.mp4\" }}]\n  stages: []\n  sinks: [{{ kind: discard }}]\n\
             store: {{ path: {d}/aegis.db }}\n\
             workflows:\n  enabled: true\n  state_dir: {d}/wf\n  keys_dir: {d}/keys\n  \
             trust: {{ roots: [{d}/root.pub], metadata: {d}/trust.signed }}\n  policy: {{ paths: [{d}] }}\n"
        )
    }

    fn open(&self) -> Workflows {
        let cfg = aegis_config::load(&self.cfg_path()).unwrap();
        Workflows::open(&cfg).unwrap()
    }

    /// A signed workflow by `key` (issuer `name`) for `devices`/`groups`, issued `age_s` ago.
    fn doc(
        &self,
        key: &SecretKey,
        name: &str,
        devices: &[&str],
        groups: &[&str],
        seq: u64,
        age_s: i64,
    ) -> Vec<u8> {
        let now = now_s();
        let text = workflow_text(
            &Draft {
                id: &format!("00000000-0000-4000-8000-{seq:012x}"),
                issuer: name,
                devices,
                groups,
                sequence: seq,
                issued_at: &format_time(now - age_s),
                expires_at: &format_time(now + 86_400),
            },
            &format!(
                "sources: [{{ id: cam0, url: \"file://{}/clip.mp4\" }}]\nstages: [{{ kind: passthrough }}]\nsinks: [{{ kind: discard }}]",
                self.d().display()
            ),
        );
        let mut b = normalise(text.as_bytes());
        b.extend_from_slice(
            key.sign_block(&b, Purpose::Workflow)
                .unwrap()
                .render()
                .as_bytes(),
        );
        b
    }

    fn trust_file(&self, edit: impl Fn(&mut TrustMetadata)) -> Vec<u8> {
        let mut t = self.trust.clone();
        edit(&mut t);
        t.sign(&[&self.root]).unwrap()
    }
}

fn apply(w: &mut Workflows, doc: &[u8]) -> Verified {
    let v = w.verify(doc).unwrap_or_else(|e| panic!("refused: {e}"));
    w.begin(doc, &v).unwrap();
    w.commit().unwrap();
    v
}

#[test]
fn expired_trust_refuses_everything_unauthenticated_and_signs_nothing() {
    // Trust v1 expired a minute ago.
    let dev = Device::new(-60);
    let w = dev.open();
    assert_eq!(w.trust_health(), TrustHealth::Expired);
    // A perfectly signed document, one for another device, garbage, and a deeply nested
    // unsigned document: all refused before their signature or YAML is looked at, none
    // carries anything a receipt could name.
    let good = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 60);
    let foreign = dev.doc(&dev.gw, "gw-1", &["orin-9"], &[], 1, 60);
    let deep = format!(
        "---\nid: {}\n---\n```signature\nalg: ml-dsa-65\nkey: x\nsig: y\n```\n",
        "[".repeat(60_000)
    );
    for doc in [&good[..], &foreign[..], b"\x00garbage", deep.as_bytes()] {
        let r = w.verify(doc).unwrap_err();
        assert!(
            matches!(r.rejection, Rejection::Trust(ref m) if m.contains("expired")),
            "{r}"
        );
        assert!(r.authenticated.is_none(), "a receipt could be signed: {r}");
    }
    assert_eq!(w.status()["trust"]["state"], "expired");
}

#[test]
fn only_verified_documents_carry_what_a_receipt_may_name() {
    let dev = Device::new(86_400);
    let w = dev.open();
    // Signed by an issuer, for another device: authenticated refusal (receipt allowed).
    let foreign = dev.doc(&dev.gw, "gw-1", &["orin-9"], &[], 1, 60);
    let r = w.verify(&foreign).unwrap_err();
    assert!(matches!(r.rejection, Rejection::Target(_)), "{r}");
    let a = r.authenticated.expect("verified, so a receipt may name it");
    assert_eq!(a.document.front.sequence, 1);
    // The same document with one flipped byte in its body: unauthenticated.
    let mut bad = foreign.clone();
    let i = bad.windows(6).position(|x| x == b"Intent").unwrap();
    bad[i] ^= 0x20;
    let r = w.verify(&bad).unwrap_err();
    assert!(matches!(r.rejection, Rejection::Signature(_)), "{r}");
    assert!(r.authenticated.is_none());
    // Signed by a key the trust metadata does not list.
    let stranger = SecretKey::generate().unwrap();
    let r = w
        .verify(&dev.doc(&stranger, "gw-1", &["orin-1"], &[], 1, 60))
        .unwrap_err();
    assert!(r.authenticated.is_none(), "{r}");
}

#[test]
fn an_older_group_document_never_replaces_a_newer_device_document() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    // The gateway sent a group workflow (sequence 5, an hour ago) and later a device one
    // (sequence 9, a minute ago). The device got the newer one first.
    let group_old = dev.doc(&dev.gw, "gw-1", &[], &["site-a"], 5, 3600);
    let device_new = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 9, 60);
    apply(&mut w, &device_new);
    let r = w.verify(&group_old).unwrap_err();
    assert!(
        matches!(r.rejection, Rejection::Replay(ref m) if m.contains("same issuer")),
        "{r}"
    );
    // Another issuer's document issued before the running one is refused too...
    let other_old = dev.doc(&dev.gw2, "gw-2", &["orin-1"], &[], 1, 600);
    let r = w.verify(&other_old).unwrap_err();
    assert!(
        matches!(r.rejection, Rejection::Replay(ref m) if m.contains("running workflow")),
        "{r}"
    );
    // ...and one issued after it is accepted: the order is by issue time.
    let other_new = dev.doc(&dev.gw2, "gw-2", &["orin-1"], &[], 1, 10);
    apply(&mut w, &other_new);
    // The rule survives a restart.
    drop(w);
    let w = dev.open();
    assert!(w.verify(&group_old).is_err());
    assert!(w.verify(&device_new).is_err());
}

#[test]
fn a_lost_trust_file_never_brings_back_an_older_version() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    // Version 2 revokes gw-2.
    let v2 = dev.trust_file(|t| {
        t.version = 2;
        t.revoked.push(dev.gw2.public().id().to_string());
    });
    assert!(matches!(
        w.update_trust(&v2).unwrap(),
        TrustUpdate::Installed { version: 2, .. }
    ));
    let by_gw2 = dev.doc(&dev.gw2, "gw-2", &["orin-1"], &[], 1, 60);
    assert!(w.verify(&by_gw2).is_err());
    drop(w);
    // The kept copy is damaged. The device must not fall back to version 1 (gw-2 valid).
    let kept = dev.d().join("wf/trust.json");
    let mut bytes = std::fs::read(&kept).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x55;
    std::fs::write(&kept, &bytes).unwrap();
    let w = dev.open();
    assert_eq!(w.trust_health(), TrustHealth::Lost);
    let r = w.verify(&by_gw2).unwrap_err();
    assert!(
        matches!(r.rejection, Rejection::Trust(ref m) if m.contains("version 2")),
        "{r}"
    );
    assert!(r.authenticated.is_none());
    // Even a document by the valid issuer waits until trust is back.
    let by_gw = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 60);
    assert!(w.verify(&by_gw).is_err());
    // Deleted instead of damaged: the same.
    std::fs::remove_file(&kept).unwrap();
    let mut w = dev.open();
    assert_eq!(w.trust_health(), TrustHealth::Lost);
    // The old version 1 delivered again is refused; version 2 again restores trust.
    let v1 = dev.trust_file(|_| {});
    assert!(w.update_trust(&v1).is_err());
    assert!(matches!(
        w.update_trust(&v2).unwrap(),
        TrustUpdate::Installed { version: 2, .. }
    ));
    assert_eq!(w.trust_health(), TrustHealth::Valid);
    assert!(w.verify(&by_gw2).is_err(), "gw-2 is still revoked");
    assert!(w.verify(&by_gw).is_ok());
    // Once held, the same version again is a duplicate, never a reinstall.
    assert_eq!(w.update_trust(&v2).unwrap(), TrustUpdate::Duplicate(2));
}

#[test]
fn trust_rotated_twice_still_loads_after_a_restart() {
    // Provisioned roots R1; v2 rotates to R2 (signed by R1 and R2); v3 is signed by R2
    // alone. The kept v3 must load (verified against the recorded roots of the version
    // held), not fail against R1 and silently fall back to v1.
    let dev = Device::new(86_400);
    let mut w = dev.open();
    let r2 = SecretKey::generate().unwrap();
    let mut t2 = dev.trust.clone();
    t2.version = 2;
    t2.root = Roots {
        threshold: 1,
        keys: vec![b64(&r2)],
    };
    w.update_trust(&t2.sign(&[&dev.root, &r2]).unwrap())
        .unwrap();
    let mut t3 = t2.clone();
    t3.version = 3;
    t3.revoked.push(dev.gw2.public().id().to_string());
    w.update_trust(&t3.sign(&[&r2]).unwrap()).unwrap();
    drop(w);
    let w = dev.open();
    assert_eq!(w.trust_health(), TrustHealth::Valid);
    assert_eq!(w.trust_version(), 3);
    assert!(
        w.verify(&dev.doc(&dev.gw2, "gw-2", &["orin-1"], &[], 1, 60))
            .is_err()
    );
}

#[test]
fn revoking_the_running_workflows_issuer_stops_it_now() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    let first = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 120);
    let second = dev.doc(&dev.gw2, "gw-2", &["orin-1"], &[], 1, 60);
    apply(&mut w, &first);
    let v2 = apply(&mut w, &second);
    let v = dev.trust_file(|t| {
        t.version = 2;
        t.revoked.push(dev.gw2.public().id().to_string());
    });
    w.update_trust(&v).unwrap();
    let (desired, stopped) = w.active_pipeline().unwrap();
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].entry.digest, v2.digest);
    assert!(
        stopped[0].reason.contains("revoked"),
        "{}",
        stopped[0].reason
    );
    // The previous workflow (by gw-1) runs again.
    let (running, _) = desired.expect("the previous workflow passes");
    assert_eq!(running.signer.id(), dev.gw.public().id());
    // The receipt for the stopped workflow verifies with the device key.
    let r = w.stopped_receipt(&stopped[0]).unwrap();
    let got = crate::receipt::Receipt::verify(r.as_bytes(), w.device_key()).unwrap();
    assert_eq!(got.verdict, crate::receipt::Verdict::Revoked);
}

#[test]
fn answered_digests_survive_a_restart_and_state_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dev = Device::new(86_400);
    let mut w = dev.open();
    let doc = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 60);
    let v = apply(&mut w, &doc);
    w.record_answer(&v.digest).unwrap();
    drop(w);
    let w = dev.open();
    assert!(w.answered(&v.digest));
    for f in ["wf/state.json", &format!("wf/docs/{}.maml.md", v.digest)] {
        let mode = std::fs::metadata(dev.d().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
    }
    let mode = std::fs::metadata(dev.d().join("wf"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

/// The replay state goes through the one save path (`state.json`, written atomically) and
/// comes back unchanged after a restart.
#[test]
fn replay_state_survives_a_restart_and_is_written_atomically() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    let doc = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 60);
    let v = w.verify(&doc).unwrap_or_else(|e| panic!("refused: {e}"));
    let before = w.state().replay.clone();
    w.consume_sequence(&v).unwrap();
    let saved = w.state().replay.clone();
    assert_ne!(saved, before, "the accepted sequence is recorded");
    assert!(!dev.d().join("wf/state.tmp").exists());
    drop(w);
    let back = dev.open().state().replay.clone();
    assert_eq!(back, saved);
    assert!(back.time_floor_s >= now_s() - 86_400);
}

#[test]
fn spoofed_gps_time_cannot_expire_the_trust_metadata() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    // GPS claims 2079 (the latest year two-digit NMEA can say).
    let spoofed = crate::maml::parse_time("2079-06-01T00:00:00Z").unwrap();
    let _ = w.raise_time_floor(spoofed).unwrap();
    assert!(
        w.state().replay.time_floor_s < crate::maml::parse_time(&dev.trust.expires_at).unwrap()
    );
    assert_eq!(w.trust_health(), TrustHealth::Valid);
    // A fresh document is still accepted.
    assert!(
        w.verify(&dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 1, 60))
            .is_ok()
    );
}

#[test]
fn state_from_an_older_agent_learns_the_issue_order_of_its_workflows() {
    let dev = Device::new(86_400);
    let mut w = dev.open();
    let group_old = dev.doc(&dev.gw, "gw-1", &[], &["site-a"], 5, 3600);
    let device_new = dev.doc(&dev.gw, "gw-1", &["orin-1"], &[], 9, 60);
    apply(&mut w, &device_new);
    drop(w);
    // Rewrite state.json as an older agent wrote it: no issue times, no per-issuer order.
    let path = dev.d().join("wf/state.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["active"].as_object_mut().unwrap().remove("issued_at_s");
    v["replay"].as_object_mut().unwrap().remove("issued");
    v["replay"]
        .as_object_mut()
        .unwrap()
        .remove("active_issued_s");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let w = dev.open();
    let r = w.verify(&group_old).unwrap_err();
    assert!(matches!(r.rejection, Rejection::Replay(_)), "{r}");
}
