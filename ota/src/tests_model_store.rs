//! The model store: the install cycle, budget and version refusals, a failed bundle check,
//! interruption at every step of every change (then `open` must leave a complete, verifiable
//! active version), and hostile state files.

use std::collections::BTreeMap;
use std::path::Path;

use aegis_config::BackendKind;
use base64::Engine as _;

use crate::device::Identity;
use crate::model::*;
use crate::model_store::*;
use crate::sign::SecretKey;
use crate::trust::{Issuer, Roots, TrustMetadata};

const NOW: i64 = 1_795_730_000; // 2026-11-26T…
const NAME: &str = "moderation";

struct Issuing {
    key: SecretKey,
    trust: TrustMetadata,
    ctx: ModelContext,
}

fn issuing() -> Issuing {
    let key = SecretKey::generate().unwrap();
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
            key: base64::engine::general_purpose::STANDARD.encode(key.public().to_bytes()),
            devices: vec![],
            groups: vec!["site-a".into()],
            models: true,
            firmware: Default::default(),
        }],
        revoked: vec![],
    };
    let ctx = ModelContext {
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
        installed_version: None,
        free_disk_bytes: 1 << 30,
        max_bundle_bytes: 100 << 20,
    };
    Issuing { key, trust, ctx }
}

/// A bundle: its verified manifest, the signed manifest and its files.
struct Bundle {
    v: VerifiedManifest,
    signed: Vec<u8>,
    files: Vec<(&'static str, Vec<u8>)>,
}

fn file(path: &str, bytes: &[u8]) -> BundleFile {
    BundleFile {
        path: path.into(),
        sha256: crate::sha256_hex(bytes),
        size: bytes.len() as u64,
    }
}

/// Version `version` of `name`: each version's model bytes differ (and its size, 100 +
/// version bytes of model).
fn bundle(w: &Issuing, name: &str, version: u64) -> Bundle {
    let files: Vec<(&'static str, Vec<u8>)> = vec![
        ("health/input.bin", vec![7u8; 48]),
        ("labels.txt", b"person\ncar\n".to_vec()),
        ("model.onnx", vec![version as u8; 100 + version as usize]),
    ];
    let m = ModelManifest {
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        min_agent_version: "0.4.0".into(),
        ..ModelManifest::example(
            name,
            version,
            files.iter().map(|(p, b)| file(p, b)).collect(),
        )
    };
    let signed = sign_manifest(&m.to_json().unwrap(), &w.key).unwrap();
    let v = verify_manifest(&signed, &w.trust, &w.ctx).unwrap();
    Bundle { v, signed, files }
}

fn stage(store: &mut ModelStore, b: &Bundle) {
    let dir = store.staging_dir(&b.v).unwrap();
    for (p, bytes) in &b.files {
        let full = dir.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, bytes).unwrap();
    }
}

fn install(store: &mut ModelStore, b: &Bundle) -> Installed {
    stage(store, b);
    store.install(&b.v, &b.signed).unwrap()
}

fn versions(store: &ModelStore, name: &str) -> (Option<u64>, Option<u64>, Option<u64>) {
    let e = store.list().into_iter().find(|e| e.name == name).unwrap();
    let v = |r: &Option<VersionRecord>| r.as_ref().map(|r| r.version);
    (
        v(&e.record.active),
        v(&e.record.previous),
        v(&e.record.trial),
    )
}

fn open(root: &Path, budget: u64) -> ModelStore {
    ModelStore::open(root, budget).unwrap().0
}

/// Everything under `dir` (relative paths), for "nothing else changed" checks.
fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

const BIG: u64 = 1 << 20;

#[test]
fn a_trial_the_agent_stopped_on_is_rolled_back_at_open_and_named_for_its_answer() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    let b2 = bundle(&w, NAME, 2);
    install(&mut store, &b2);
    assert!(store.rolled_back_at_open().is_empty());
    // The agent stops with 2 on trial.
    drop(store);
    let (mut store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert_eq!(versions(&store, NAME), (Some(1), None, None));
    assert!(
        recovered
            .iter()
            .any(|r| r.contains("version 2 was on trial")),
        "{recovered:?}"
    );
    let rolled: Vec<(&str, u64, &str)> = store
        .rolled_back_at_open()
        .iter()
        .map(|(n, r)| (n.as_str(), r.version, r.digest.as_str()))
        .collect();
    assert_eq!(rolled, [(NAME, 2, b2.v.digest.as_str())]);
    // Tried once: version 2 is not staged again; 3 is.
    assert!(store.staging_dir(&b2.v).is_err());
    install(&mut store, &bundle(&w, NAME, 3));
    // Each open names what it rolled back itself: now version 3.
    drop(store);
    let (store, _) = ModelStore::open(&root, BIG).unwrap();
    assert_eq!(store.rolled_back_at_open().len(), 1, "3 was on trial");
    assert_eq!(store.rolled_back_at_open()[0].1.version, 3);
}

#[test]
fn full_cycle_keeps_active_and_previous_and_evicts_older() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    let i1 = install(&mut store, &b1);
    assert_eq!(i1.dir, root.join(NAME).join("1"));
    verify_bundle_files(&i1.dir, &b1.v).unwrap();
    assert_eq!(versions(&store, NAME), (None, None, Some(1)));
    assert_eq!(store.active(NAME), None);
    assert_eq!(store.trial(NAME), Some((1, i1.dir.clone())));
    // The staging directory was moved, not copied.
    assert!(tree(&root.join(STAGING_DIR)).is_empty());
    store.confirm(NAME).unwrap();
    assert_eq!(store.active(NAME), Some((1, i1.dir.clone())));

    let b2 = bundle(&w, NAME, 2);
    install(&mut store, &b2);
    // On trial: the confirmed version still answers `active`.
    assert_eq!(versions(&store, NAME), (Some(1), None, Some(2)));
    store.confirm(NAME).unwrap();
    assert_eq!(versions(&store, NAME), (Some(2), Some(1), None));

    let b3 = bundle(&w, NAME, 3);
    install(&mut store, &b3);
    store.confirm(NAME).unwrap();
    assert_eq!(versions(&store, NAME), (Some(3), Some(2), None));
    assert!(!root.join(NAME).join("1").exists(), "version 1 evicted");
    verify_bundle_files(&root.join(NAME).join("2"), &b2.v).unwrap();
    verify_bundle_files(&root.join(NAME).join("3"), &b3.v).unwrap();
    assert_eq!(store.installed_bytes(), b2.v.total_bytes + b3.v.total_bytes);
    let e = &store.list()[0];
    assert_eq!(e.record.active.as_ref().unwrap().digest, b3.v.digest);
    assert_eq!(e.record.highest, 3);
    // Each version's signed manifest is kept beside it, and leaves with it.
    assert_eq!(store.manifest(NAME, 3).unwrap(), b3.signed);
    assert_eq!(store.manifest(NAME, 2).unwrap(), b2.signed);
    assert!(!root.join(NAME).join("1.manifest").exists());
    assert!(matches!(
        store.manifest(NAME, 1),
        Err(StoreError::NotInstalled { version: 1, .. })
    ));

    // The state survives a restart unchanged, with nothing to recover.
    drop(store);
    let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(versions(&store, NAME), (Some(3), Some(2), None));
    assert_eq!(
        tree(&root),
        [
            ".staging",
            ".trash",
            "moderation",
            "moderation/2",
            "moderation/2.manifest",
            "moderation/2/health",
            "moderation/2/health/input.bin",
            "moderation/2/labels.txt",
            "moderation/2/model.onnx",
            "moderation/3",
            "moderation/3.manifest",
            "moderation/3/health",
            "moderation/3/health/input.bin",
            "moderation/3/labels.txt",
            "moderation/3/model.onnx",
            "state.json",
        ]
    );
}

#[test]
fn rollback_drops_a_trial_or_returns_to_previous_and_versions_only_move_forward() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    for v in 1..=2 {
        install(&mut store, &bundle(&w, NAME, v));
        store.confirm(NAME).unwrap();
    }
    // A failed health check: the trial goes, active stays.
    install(&mut store, &bundle(&w, NAME, 3));
    assert_eq!(store.rollback(NAME).unwrap(), 3);
    assert_eq!(versions(&store, NAME), (Some(2), Some(1), None));
    assert!(!root.join(NAME).join("3").exists());
    assert!(!root.join(NAME).join("3.manifest").exists());
    // Version 3 is never installed again, nor anything at or below it.
    for v in [1, 2, 3] {
        let b = bundle(&w, NAME, v);
        assert!(
            matches!(store.staging_dir(&b.v), Err(StoreError::NotNewer { offered, highest: 3, .. }) if offered == v)
        );
        assert!(matches!(
            store.install(&b.v, &b.signed),
            Err(StoreError::NotNewer { .. })
        ));
    }
    // A rollback order: back to the previous version.
    assert_eq!(store.rollback(NAME).unwrap(), 2);
    let b1 = bundle(&w, NAME, 1);
    assert_eq!(store.active(NAME), Some((1, root.join(NAME).join("1"))));
    verify_bundle_files(&root.join(NAME).join("1"), &b1.v).unwrap();
    assert!(!root.join(NAME).join("2").exists());
    assert!(matches!(
        store.rollback(NAME),
        Err(StoreError::NoPrevious { .. })
    ));
    assert!(matches!(
        store.confirm(NAME),
        Err(StoreError::NoTrial { .. })
    ));
    // A trial blocks another install of the same name.
    install(&mut store, &bundle(&w, NAME, 4));
    let b5 = bundle(&w, NAME, 5);
    assert!(matches!(
        store.staging_dir(&b5.v),
        Err(StoreError::TrialPending { version: 4, .. })
    ));
    let msg = store.staging_dir(&b5.v).unwrap_err().to_string();
    assert!(msg.contains("moderation") && msg.contains('4'), "{msg}");
}

#[test]
fn a_bundle_that_fails_its_check_leaves_active_untouched_and_staging_empty() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    let before = tree(&root);
    let state_before = std::fs::read(root.join(STATE_FILE)).unwrap();

    let b2 = bundle(&w, NAME, 2);
    let dir = store.staging_dir(&b2.v).unwrap();
    stage(&mut store, &b2);
    std::fs::write(dir.join("model.onnx"), vec![0xee; 102]).unwrap();
    let err = store.install(&b2.v, &b2.signed).unwrap_err();
    assert!(
        matches!(&err, StoreError::Bundle { version: 2, source: BundleError::Hash { path, .. }, .. } if path == "model.onnx"),
        "{err}"
    );
    assert!(err.to_string().contains("model.onnx"), "{err}");
    assert_eq!(tree(&root), before);
    assert_eq!(std::fs::read(root.join(STATE_FILE)).unwrap(), state_before);
    verify_bundle_files(&store.active(NAME).unwrap().1, &b1.v).unwrap();
    // Not staged at all: refused the same way, nothing recorded.
    assert!(matches!(
        store.install(&b2.v, &b2.signed),
        Err(StoreError::Bundle {
            source: BundleError::Directory { .. },
            ..
        })
    ));
    // The version was not burnt: a good copy installs.
    install(&mut store, &b2);
    assert_eq!(versions(&store, NAME), (Some(1), None, Some(2)));
}

#[test]
fn budget_refusal_comes_before_anything_is_written() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let b1 = bundle(&w, NAME, 1);
    // Room for two bundles and a half: active + previous fit, a third does not.
    let budget = b1.v.total_bytes * 5 / 2 + 4;
    let mut store = open(&root, budget);
    let mut tiny = open(&d.path().join("tiny"), b1.v.total_bytes - 1);
    let before = tree(&d.path().join("tiny"));
    let err = tiny.staging_dir(&b1.v).unwrap_err();
    assert!(matches!(err, StoreError::Budget { used: 0, .. }), "{err}");
    assert_eq!(tree(&d.path().join("tiny")), before);

    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    install(&mut store, &bundle(&w, NAME, 2));
    store.confirm(NAME).unwrap();
    let before = tree(&root);
    let b3 = bundle(&w, NAME, 3);
    let err = store.staging_dir(&b3.v).unwrap_err();
    assert!(
        matches!(err, StoreError::Budget { needed, budget: b, .. } if needed == b3.v.total_bytes && b == budget),
        "{err}"
    );
    assert_eq!(tree(&root), before);
    // Staged bytes of another model count too.
    let mut store = open(&d.path().join("two"), b1.v.total_bytes * 3 / 2);
    let other = bundle(&w, "other", 1);
    stage(&mut store, &other);
    assert!(matches!(
        store.staging_dir(&b1.v),
        Err(StoreError::Budget { .. })
    ));
    // Staging the same version again (a resumed download) keeps its partial files.
    let again = store.staging_dir(&other.v).unwrap();
    assert!(again.join("labels.txt").exists());
}

/// One change of the store's life.
#[derive(Debug, Clone, Copy)]
enum Op {
    Install(u64),
    Confirm,
    Rollback,
    /// A signed rollback order from the first version to the second.
    RollbackTo(u64, u64),
}

const LIFE: &[Op] = &[
    Op::Install(1),
    Op::Confirm,
    Op::Install(2),
    Op::Confirm,
    Op::Install(3),
    Op::Rollback,
    Op::Install(4),
    Op::Confirm,
    Op::Install(5),
    Op::Confirm,
    Op::RollbackTo(5, 4),
    Op::Install(6),
    Op::Confirm,
    Op::Rollback,
];

/// The version installed after every interrupted run, to show the store goes on.
const NEXT: u64 = 7;

/// A signed rollback order for `name` from `from` to `to`, verified as a device would.
fn order(w: &Issuing, name: &str, from: u64, to: u64) -> crate::model_rollback::VerifiedRollback {
    use crate::model_rollback::*;
    let o = RollbackOrder {
        kind_tag: ROLLBACK_TYPE.into(),
        name: name.into(),
        from_version: from,
        to_version: to,
        issuer: "gw-1".into(),
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: "2026-11-26T10:00:00Z".into(),
        expires_at: "2026-11-27T10:00:00Z".into(),
        reason: "false positives".into(),
    };
    let signed = sign_rollback_order(&o.to_json(), &w.key).unwrap();
    verify_rollback_order(&signed, &w.trust, &w.ctx).unwrap()
}

fn apply(
    store: &mut ModelStore,
    op: Op,
    bundles: &BTreeMap<u64, Bundle>,
    w: &Issuing,
) -> Result<(), StoreError> {
    match op {
        Op::Install(v) => store
            .install(&bundles[&v].v, &bundles[&v].signed)
            .map(|_| ()),
        Op::Confirm => store.confirm(NAME),
        Op::Rollback => store.rollback(NAME).map(|_| ()),
        Op::RollbackTo(from, to) => store.rollback_to(&order(w, NAME, from, to)).map(|_| ()),
    }
}

/// Every version the store records for `NAME` passes `verify_bundle_files` against its
/// manifest, and its kept signed manifest reads back, is the one installed, and verifies
/// as an installed manifest; returns the names that belong under `<root>/<NAME>`.
fn check_recorded(store: &ModelStore, w: &Issuing, bundles: &BTreeMap<u64, Bundle>) -> Vec<String> {
    let mut names = Vec::new();
    let Some(e) = store.list().into_iter().find(|e| e.name == NAME) else {
        return names;
    };
    for r in [e.record.active, e.record.previous, e.record.trial]
        .into_iter()
        .flatten()
    {
        let b = &bundles[&r.version];
        verify_bundle_files(&store.root().join(NAME).join(r.version.to_string()), &b.v).unwrap();
        let kept = store.manifest(NAME, r.version).unwrap();
        assert_eq!(kept, b.signed, "version {}: kept manifest", r.version);
        let mut ctx = w.ctx.clone();
        ctx.installed_version = Some(r.version);
        let again = verify_installed_manifest(&kept, &w.trust, &ctx).unwrap();
        assert_eq!(again.digest, r.digest);
        names.push(r.version.to_string());
        names.push(format!("{}.manifest", r.version));
    }
    names.sort();
    names
}

/// What is under `<root>/<NAME>`, sorted.
fn on_disk(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = match std::fs::read_dir(root.join(NAME)) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    };
    out.sort();
    out
}

/// An interruption after each step of each change, then a restart: `active` is always the
/// confirmed version before or after the change, complete and verifiable with its kept
/// manifest; every recorded version verifies; nothing is left in the trash or unrecorded,
/// and staging holds at most the interrupted install's own download (kept for resume);
/// and the store goes on working.
#[test]
fn an_interruption_at_any_step_leaves_a_complete_active_version() {
    let w = issuing();
    let bundles: BTreeMap<u64, Bundle> = (1..=NEXT).map(|v| (v, bundle(&w, NAME, v))).collect();
    let d = tempfile::tempdir().unwrap();

    // The active version after each change, uninterrupted.
    let mut expected = vec![None];
    {
        let mut store = open(&d.path().join("reference"), BIG);
        for &op in LIFE {
            if let Op::Install(v) = op {
                stage(&mut store, &bundles[&v]);
            }
            apply(&mut store, op, &bundles, &w).unwrap();
            expected.push(store.active(NAME).map(|a| a.0));
        }
    }
    assert_eq!(expected.last(), Some(&Some(4)));

    let mut runs = 0;
    for (k, &op) in LIFE.iter().enumerate() {
        for crash in 0.. {
            let root = d.path().join(format!("run-{k}-{crash}"));
            let mut store = open(&root, BIG);
            for &before in &LIFE[..k] {
                if let Op::Install(v) = before {
                    stage(&mut store, &bundles[&v]);
                }
                apply(&mut store, before, &bundles, &w).unwrap();
            }
            if let Op::Install(v) = op {
                stage(&mut store, &bundles[&v]);
            }
            store.crash_after = Some(crash);
            let r = apply(&mut store, op, &bundles, &w);
            drop(store);
            runs += 1;
            let (store, _) = ModelStore::open(&root, BIG).unwrap();
            let active = store.active(NAME).map(|a| a.0);
            assert!(
                active == expected[k] || active == expected[k + 1],
                "{op:?} interrupted after {crash} steps: active {active:?}, expected {:?} or {:?}",
                expected[k],
                expected[k + 1]
            );
            if let Some((v, dir)) = store.active(NAME) {
                verify_bundle_files(&dir, &bundles[&v].v).unwrap();
            }
            assert_eq!(store.trial(NAME), None, "a trial survived a restart");
            let recorded = check_recorded(&store, &w, &bundles);
            assert_eq!(
                on_disk(&root),
                recorded,
                "{op:?} after {crash} steps: orphans left"
            );
            let staged = tree(&root.join(STAGING_DIR));
            match op {
                // The interrupted install's download is kept only while it was not
                // recorded: a version recorded (then rolled back) is never staged again.
                Op::Install(v) if r.is_err() && !staged.is_empty() => {
                    assert!(
                        store.list().iter().all(|e| e.record.highest < v),
                        "{op:?} after {crash}: staged {staged:?} below the highest"
                    );
                    assert_eq!(staged[0], format!("{NAME}-{v}"), "{staged:?}");
                }
                _ => assert!(staged.is_empty(), "{op:?} after {crash}: {staged:?}"),
            }
            assert!(tree(&root.join(TRASH_DIR)).is_empty());
            // The store goes on: a new version installs and confirms.
            let mut store = store;
            let next = &bundles[&NEXT];
            stage(&mut store, next);
            store.install(&next.v, &next.signed).unwrap();
            store.confirm(NAME).unwrap();
            verify_bundle_files(&store.active(NAME).unwrap().1, &next.v).unwrap();
            assert!(tree(&root.join(STAGING_DIR)).is_empty());
            if r.is_ok() {
                // The change ran to its end: later step counts change nothing.
                break;
            }
            assert!(crash < 16, "{op:?} never finished");
        }
    }
    assert!(runs > 2 * LIFE.len(), "only {runs} runs");
}

fn write_state(root: &Path, json: &str) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::write(root.join(STATE_FILE), json).unwrap();
}

const DIGEST: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn hostile_state_files_are_refused_and_never_followed_outside_the_root() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    // Something outside the root the state might try to reach.
    let outside = d.path().join("outside").join("1");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    let rec = |name: &str| {
        format!(
            r#"{{"format":1,"models":{{"{name}":{{"active":{{"version":1,"digest":"{DIGEST}","bytes":1}},"highest":1}}}}}}"#
        )
    };
    let cases: Vec<(String, &str)> = vec![
        ("not json at all".into(), "expected"),
        ("".into(), "EOF"),
        (rec("../outside"), "not allowed"),
        (rec(".."), "not allowed"),
        (rec("/etc"), "not allowed"),
        (rec("a/../../outside"), "not allowed"),
        (rec(""), "1 to 64"),
        (r#"{"format":2,"models":{}}"#.into(), "format 2"),
        (r#"{"format":1,"models":{},"extra":1}"#.into(), "unknown field"),
        (
            format!(
                r#"{{"format":1,"models":{{"m":{{"active":{{"version":1,"digest":"{DIGEST}","bytes":1,"path":"../x"}},"highest":1}}}}}}"#
            ),
            "unknown field",
        ),
        (
            r#"{"format":1,"models":{"m":{"active":{"version":1,"digest":"../../x","bytes":1},"highest":1}}}"#
                .into(),
            "not a sha256",
        ),
        (
            format!(
                r#"{{"format":1,"models":{{"m":{{"active":{{"version":2,"digest":"{DIGEST}","bytes":1}},"highest":1}}}}}}"#
            ),
            "highest",
        ),
        (
            format!(
                r#"{{"format":1,"models":{{"m":{{"active":{{"version":1,"digest":"{DIGEST}","bytes":1}},"previous":{{"version":2,"digest":"{DIGEST}","bytes":1}},"highest":2}}}}}}"#
            ),
            "out of order",
        ),
    ];
    for (json, why) in cases {
        write_state(&root, &json);
        let before = tree(&root);
        let err = ModelStore::open(&root, BIG).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::State { .. }), "{json}: {msg}");
        assert!(
            msg.contains(why) && msg.contains("state.json"),
            "{json}: {msg}"
        );
        assert_eq!(tree(&root), before, "{json}: something changed");
        assert!(outside.join("keep").exists());
    }
    // Too large, a link, a directory.
    write_state(&root, &" ".repeat(MAX_STATE_BYTES as usize + 1));
    assert!(matches!(
        ModelStore::open(&root, BIG),
        Err(StoreError::State { .. })
    ));
    std::fs::remove_file(root.join(STATE_FILE)).unwrap();
    std::os::unix::fs::symlink(d.path().join("elsewhere.json"), root.join(STATE_FILE)).unwrap();
    let err = ModelStore::open(&root, BIG).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    std::fs::remove_file(root.join(STATE_FILE)).unwrap();
    std::fs::create_dir(root.join(STATE_FILE)).unwrap();
    assert!(matches!(
        ModelStore::open(&root, BIG),
        Err(StoreError::State { .. })
    ));
    // A root that is a link is refused.
    let link = d.path().join("link");
    std::os::unix::fs::symlink(d.path().join("outside"), &link).unwrap();
    assert!(matches!(
        ModelStore::open(&link, BIG),
        Err(StoreError::Root { .. })
    ));
    assert!(outside.join("keep").exists());
}

#[test]
fn damaged_directories_fall_back_and_links_are_never_followed() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    for v in 1..=2 {
        install(&mut store, &bundle(&w, NAME, v));
        store.confirm(NAME).unwrap();
    }
    drop(store);
    // Active damaged (a file truncated): back to previous.
    std::fs::write(root.join(NAME).join("2").join("model.onnx"), b"short").unwrap();
    let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert_eq!(versions(&store, NAME), (Some(1), None, None));
    assert!(
        recovered.iter().any(|r| r.contains("active version 2")),
        "{recovered:?}"
    );
    assert!(!root.join(NAME).join("2").exists());
    verify_bundle_files(&store.active(NAME).unwrap().1, &bundle(&w, NAME, 1).v).unwrap();
    drop(store);
    // The model directory replaced by a link to elsewhere: dropped, the target untouched.
    let elsewhere = d.path().join("elsewhere");
    std::fs::rename(root.join(NAME), &elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, root.join(NAME)).unwrap();
    let (store, _) = ModelStore::open(&root, BIG).unwrap();
    assert_eq!(store.active(NAME), None);
    assert!(std::fs::symlink_metadata(root.join(NAME)).is_err());
    assert!(elsewhere.join("1").join("model.onnx").exists());
    // Junk at the root that is not shaped like a model name is left alone.
    std::fs::write(root.join("README.txt"), b"x").unwrap();
    drop(store);
    let (mut store, _) = ModelStore::open(&root, BIG).unwrap();
    assert!(root.join("README.txt").exists());
    // Versions still only move forward after the damage.
    let b2 = bundle(&w, NAME, 2);
    assert!(matches!(
        store.staging_dir(&b2.v),
        Err(StoreError::NotNewer { .. })
    ));
}

#[test]
fn install_keeps_only_the_manifest_that_was_verified() {
    use std::os::unix::fs::PermissionsExt;
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    let b2 = bundle(&w, NAME, 2);
    stage(&mut store, &b1);
    let before = tree(&root);
    let mut oversized = b1.signed.clone();
    oversized.resize(MAX_MANIFEST_BYTES + 1, b'\n');
    let mut unsigned = b1.v.manifest.to_json().unwrap();
    unsigned.extend_from_slice(b"\n");
    for (bytes, why) in [
        (&b2.signed, "not to"),
        (&unsigned, "signature"),
        (&oversized, "limit"),
        (&b"not a manifest".to_vec(), "signature"),
    ] {
        let err = store.install(&b1.v, bytes).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Manifest { version: 1, .. }) && msg.contains(why),
            "{msg}"
        );
        // Nothing changed: the staged download is still there for a correct call.
        assert_eq!(tree(&root), before);
    }
    // A CRLF copy of the same manifest has the same digest: kept as given.
    let crlf = String::from_utf8(b1.signed.clone())
        .unwrap()
        .replace('\n', "\r\n")
        .into_bytes();
    store.install(&b1.v, &crlf).unwrap();
    assert_eq!(store.manifest(NAME, 1).unwrap(), crlf);
    let mode = std::fs::metadata(root.join(NAME).join("1.manifest"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Readable on trial, and after a restart once confirmed.
    store.confirm(NAME).unwrap();
    drop(store);
    let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert!(recovered.is_empty(), "{recovered:?}");
    assert_eq!(store.manifest(NAME, 1).unwrap(), crlf);
    assert!(matches!(
        store.manifest("other", 1),
        Err(StoreError::NotInstalled { .. })
    ));
}

/// The kept manifest of the active version damaged in each way: `manifest` refuses it,
/// naming the problem; after a restart the version is incomplete and the store falls back
/// to the previous one, removing the damaged entry and never following a link.
#[test]
fn a_missing_or_hostile_kept_manifest_makes_its_version_incomplete() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let b1 = bundle(&w, NAME, 1);
    let b2 = bundle(&w, NAME, 2);
    let outside = d.path().join("outside.manifest");
    std::fs::write(&outside, &b2.signed).unwrap();
    let tampered = {
        let text = String::from_utf8(b2.signed.clone()).unwrap();
        text.replacen("site-a", "site-b", 1).into_bytes()
    };
    let mut oversized = b2.signed.clone();
    oversized.resize(MAX_MANIFEST_BYTES + 1, b'\n');
    type Damage = Box<dyn Fn(&Path)>;
    let write = |bytes: Vec<u8>| -> Damage {
        Box::new(move |p: &Path| {
            std::fs::remove_file(p).unwrap();
            std::fs::write(p, &bytes).unwrap();
        })
    };
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "missing",
            Box::new(|p: &Path| std::fs::remove_file(p).unwrap()),
            "missing",
        ),
        (
            "a link to a good copy",
            Box::new({
                let outside = outside.clone();
                move |p: &Path| {
                    std::fs::remove_file(p).unwrap();
                    std::os::unix::fs::symlink(&outside, p).unwrap();
                }
            }),
            "symbolic link",
        ),
        (
            "a directory",
            Box::new(|p: &Path| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            }),
            "not a regular file",
        ),
        (
            "a socket",
            Box::new(|p: &Path| {
                std::fs::remove_file(p).unwrap();
                // The socket's node stays after the listener is dropped.
                drop(std::os::unix::net::UnixListener::bind(p).unwrap());
            }),
            "not a regular file",
        ),
        ("too large", write(oversized), "larger than"),
        ("another version's", write(b1.signed.clone()), "digest"),
        ("tampered", write(tampered), "digest"),
        ("empty", write(vec![]), "signature"),
    ];
    for (i, (what, damage, why)) in cases.into_iter().enumerate() {
        let root = d.path().join(format!("models-{i}"));
        let mut store = open(&root, BIG);
        for b in [&b1, &b2] {
            install(&mut store, b);
            store.confirm(NAME).unwrap();
        }
        let path = root.join(NAME).join("2.manifest");
        damage(&path);
        let err = store.manifest(NAME, 2).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, StoreError::Manifest { version: 2, .. }) && msg.contains(why),
            "{what}: {msg}"
        );
        // The previous version's is still good.
        assert_eq!(store.manifest(NAME, 1).unwrap(), b1.signed);
        drop(store);
        let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
        assert_eq!(versions(&store, NAME), (Some(1), None, None), "{what}");
        assert!(
            recovered
                .iter()
                .any(|r| r.contains("active version 2") && r.contains("signed manifest")),
            "{what}: {recovered:?}"
        );
        assert_eq!(on_disk(&root), ["1", "1.manifest"], "{what}");
        assert_eq!(std::fs::read(&outside).unwrap(), b2.signed, "{what}");
    }
}

#[test]
fn a_damaged_signature_block_keeps_the_digest_but_fails_the_installed_check() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    drop(store);
    // Only the signature changes: the statement (and so the digest) is the same.
    let text = String::from_utf8(b1.signed.clone()).unwrap();
    let at = text.find("sig: ").unwrap() + 10;
    let mut bytes = text.into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    std::fs::write(root.join(NAME).join("1.manifest"), &bytes).unwrap();
    let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert!(recovered.is_empty(), "{recovered:?}");
    let kept = store.manifest(NAME, 1).unwrap();
    let mut ctx = w.ctx.clone();
    ctx.installed_version = Some(1);
    assert!(matches!(
        verify_installed_manifest(&kept, &w.trust, &ctx),
        Err(ModelRejection::Signature(_))
    ));
    verify_installed_manifest(&b1.signed, &w.trust, &ctx).unwrap();
}

#[test]
fn orphan_manifests_and_temporary_files_are_removed_with_their_version() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    let b1 = bundle(&w, NAME, 1);
    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    drop(store);
    let dir = root.join(NAME);
    std::fs::write(dir.join("2.manifest"), &b1.signed).unwrap();
    std::fs::write(dir.join("1.tmp"), b"half a manifest").unwrap();
    std::fs::create_dir(dir.join("9.manifest")).unwrap();
    let (store, recovered) = ModelStore::open(&root, BIG).unwrap();
    assert_eq!(on_disk(&root), ["1", "1.manifest"]);
    for n in ["2.manifest", "1.tmp", "9.manifest"] {
        assert!(
            recovered.iter().any(|r| r.contains(n)),
            "{n}: {recovered:?}"
        );
    }
    assert_eq!(store.manifest(NAME, 1).unwrap(), b1.signed);
}

/// Sets the modification time of `path` (a file or a directory).
fn set_mtime(path: &Path, t: std::time::SystemTime) {
    std::fs::File::open(path).unwrap().set_modified(t).unwrap();
}

#[test]
fn staged_downloads_survive_a_restart_by_the_rules() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    install(&mut store, &bundle(&w, NAME, 1));
    store.confirm(NAME).unwrap();
    // A download of version 3 under way: one file done, one partial.
    let b3 = bundle(&w, NAME, 3);
    let dir3 = store.staging_dir(&b3.v).unwrap();
    std::fs::write(dir3.join("labels.txt"), b"person\ncar\n").unwrap();
    std::fs::write(dir3.join("model.onnx.part"), vec![3u8; 40]).unwrap();
    drop(store);

    let staging = root.join(STAGING_DIR);
    let old = std::time::SystemTime::now() - STAGING_MAX_AGE - std::time::Duration::from_secs(3600);
    let mk = |name: &str, files: &[(&str, usize)]| {
        let dir = staging.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (f, n) in files {
            std::fs::write(dir.join(f), vec![1u8; *n]).unwrap();
        }
        dir
    };
    // Kept: another model's fresh download; one whose directory is old but whose part
    // file was written just now.
    mk("other-2", &[("model.onnx.part", 10)]);
    let fresh_inside = mk("fresh-7", &[("model.onnx.part", 5)]);
    set_mtime(&fresh_inside, old);
    // Removed, each for its reason.
    mk("moderation-2", &[("model.onnx.part", 7)]); // version 3 is staged too
    mk("moderation-1", &[]); // not above the highest installed (1)
    let stale = mk("stale-4", &[("model.onnx.part", 9)]);
    set_mtime(&stale.join("model.onnx.part"), old);
    set_mtime(&stale, old);
    mk("nodash", &[]);
    mk("Bad-3", &[]);
    mk("moderation-04", &[]);
    mk("zero-0", &[]);
    std::fs::write(staging.join("file-9"), b"x").unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("keep"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, staging.join("linked-9")).unwrap();
    let sneaky = mk("sneaky-2", &[]);
    std::os::unix::fs::symlink("/etc/passwd", sneaky.join("model.onnx")).unwrap();

    let (mut store, recovered) = ModelStore::open(&root, BIG).unwrap();
    let mut left: Vec<String> = std::fs::read_dir(&staging)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["fresh-7", "moderation-3", "other-2"]);
    let line = |n: &str| {
        recovered
            .iter()
            .find(|r| r.starts_with(&format!(".staging/{n}:")))
            .unwrap_or_else(|| panic!("{n}: {recovered:?}"))
            .clone()
    };
    assert!(line("moderation-3").contains("kept"), "{recovered:?}");
    assert!(line("moderation-3").contains(&format!("{}", 11 + 40)));
    assert!(line("other-2").contains("kept"));
    assert!(line("fresh-7").contains("kept"));
    for (n, why) in [
        ("moderation-2", "version 3 is staged too"),
        ("moderation-1", "not above version 1"),
        ("stale-4", "days ago"),
        ("nodash", "not named"),
        ("Bad-3", "not allowed"),
        ("moderation-04", "not a number"),
        ("zero-0", "not a number"),
        ("file-9", "not a directory"),
        ("linked-9", "not a directory"),
        ("sneaky-2", "symbolic link"),
    ] {
        let l = line(n);
        assert!(l.contains(why) && l.ends_with("removed"), "{n}: {l}");
    }
    assert!(outside.join("keep").exists());
    // The download resumes where it was: same directory, its files as they were.
    assert_eq!(store.staging_dir(&b3.v).unwrap(), dir3);
    assert_eq!(
        std::fs::read(dir3.join("model.onnx.part")).unwrap(),
        vec![3u8; 40]
    );
    stage(&mut store, &b3);
    std::fs::remove_file(dir3.join("model.onnx.part")).unwrap();
    store.install(&b3.v, &b3.signed).unwrap();
    store.confirm(NAME).unwrap();
    drop(store);
    // Kept downloads count against the budget: the other two's 15 bytes are in use.
    let installed = store_bytes(&root);
    let b = bundle(&w, "next", 1);
    let (mut store, recovered) = ModelStore::open(&root, installed + b.v.total_bytes + 14).unwrap();
    assert_eq!(
        recovered.iter().filter(|r| r.contains("kept")).count(),
        2,
        "{recovered:?}"
    );
    let err = store.staging_dir(&b.v).unwrap_err();
    assert!(
        matches!(err, StoreError::Budget { used, .. } if used == installed + 15),
        "{err}"
    );
}

/// Bytes of the installed versions recorded under `root`.
fn store_bytes(root: &Path) -> u64 {
    ModelStore::inspect(root)
        .unwrap()
        .iter()
        .flat_map(|e| [&e.record.active, &e.record.previous, &e.record.trial])
        .flatten()
        .map(|v| v.bytes)
        .sum()
}

#[test]
fn staged_downloads_beyond_the_budget_are_removed_at_start_up() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let b1 = bundle(&w, NAME, 1);
    let mut store = open(&root, BIG);
    install(&mut store, &b1);
    store.confirm(NAME).unwrap();
    // Two downloads under way, of 30 and 20 bytes.
    for (name, n) in [("alpha", 30usize), ("beta", 20)] {
        let b = bundle(&w, name, 1);
        let dir = store.staging_dir(&b.v).unwrap();
        std::fs::write(dir.join("model.onnx.part"), vec![0u8; n]).unwrap();
    }
    drop(store);
    // The budget shrank: room for the installed bundle and 40 bytes more.
    let (_, recovered) = ModelStore::open(&root, b1.v.total_bytes + 40).unwrap();
    let staging = tree(&root.join(STAGING_DIR));
    // Kept in name order while they fit: alpha (30) fits, beta (20) does not.
    assert_eq!(staging, ["alpha-1", "alpha-1/model.onnx.part"]);
    assert!(
        recovered
            .iter()
            .any(|r| r.starts_with(".staging/beta-1:") && r.contains("budget")),
        "{recovered:?}"
    );
}

#[test]
fn a_rollback_order_applies_once_and_a_refusal_names_both_versions() {
    let w = issuing();
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("models");
    let mut store = open(&root, BIG);
    // Nothing installed yet.
    let err = store.rollback_to(&order(&w, NAME, 2, 1)).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::RollbackMismatch {
                from: 2,
                to: 1,
                active: None,
                previous: None,
                ..
            }
        ),
        "{err}"
    );
    for v in 1..=3 {
        install(&mut store, &bundle(&w, NAME, v));
        store.confirm(NAME).unwrap();
    }
    // Active 3, previous 2: orders that do not fit change nothing.
    let before = tree(&root);
    let state_before = std::fs::read(root.join(STATE_FILE)).unwrap();
    for (from, to) in [(3, 1), (4, 3), (2, 1)] {
        let err = store.rollback_to(&order(&w, NAME, from, to)).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(
                err,
                StoreError::RollbackMismatch {
                    active: Some(3),
                    previous: Some(2),
                    ..
                }
            ),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("from version {from} to version {to}"))
                && msg.contains("active is version 3")
                && msg.contains("previous is version 2"),
            "{msg}"
        );
        assert_eq!(tree(&root), before);
        assert_eq!(std::fs::read(root.join(STATE_FILE)).unwrap(), state_before);
    }
    // Another model's order does not touch this one.
    assert!(matches!(
        store.rollback_to(&order(&w, "other", 3, 2)),
        Err(StoreError::RollbackMismatch { active: None, .. })
    ));
    // Not while a version is on trial.
    install(&mut store, &bundle(&w, NAME, 4));
    assert!(matches!(
        store.rollback_to(&order(&w, NAME, 3, 2)),
        Err(StoreError::TrialPending { version: 4, .. })
    ));
    store.rollback(NAME).unwrap();
    // The order that fits: back to 2, and 3 is gone with its manifest.
    let o = order(&w, NAME, 3, 2);
    assert_eq!(store.rollback_to(&o).unwrap(), 3);
    assert_eq!(versions(&store, NAME), (Some(2), None, None));
    assert_eq!(on_disk(&root), ["2", "2.manifest"]);
    verify_bundle_files(&store.active(NAME).unwrap().1, &bundle(&w, NAME, 2).v).unwrap();
    // Replayed: refused, now and after a restart and a newer install.
    assert!(matches!(
        store.rollback_to(&o),
        Err(StoreError::RollbackMismatch {
            active: Some(2),
            previous: None,
            ..
        })
    ));
    drop(store);
    let mut store = open(&root, BIG);
    install(&mut store, &bundle(&w, NAME, 5));
    store.confirm(NAME).unwrap();
    assert!(matches!(
        store.rollback_to(&o),
        Err(StoreError::RollbackMismatch {
            active: Some(5),
            previous: Some(2),
            ..
        })
    ));
    // Version 3 can never be active again, so the order can never fit again.
    assert!(matches!(
        store.staging_dir(&bundle(&w, NAME, 3).v),
        Err(StoreError::NotNewer { .. })
    ));
}
