//! The model store: the install cycle, budget and version refusals, a failed bundle check,
//! interruption at every step of every change (then `open` must leave a complete, verifiable
//! active version), and hostile state files.

use std::collections::BTreeMap;
use std::path::Path;

use aegis_config::{BackendKind, ModelKindConfig};
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

/// A bundle: its verified manifest and its files.
struct Bundle {
    v: VerifiedManifest,
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
        kind_tag: MANIFEST_TYPE.into(),
        name: name.into(),
        version,
        issuer: "gw-1".into(),
        target: ModelTarget {
            devices: vec![],
            groups: vec!["site-a".into()],
        },
        issued_at: "2026-11-26T10:00:00Z".into(),
        expires_at: "2026-11-27T10:00:00Z".into(),
        kind: ModelKindConfig::Yolov8,
        model: "model.onnx".into(),
        labels: Some("labels.txt".into()),
        inputs: vec![TensorSpec {
            name: "images".into(),
            dtype: DType::Float32,
            shape: vec![-1, 3, 640, 640],
        }],
        outputs: vec![TensorSpec {
            name: "output0".into(),
            dtype: DType::Float32,
            shape: vec![-1, 84, 8400],
        }],
        platform: PlatformSpec {
            backends: vec![BackendKind::Cpu],
            runtime: Runtime::Onnx {},
        },
        min_agent_version: "0.4.0".into(),
        health: HealthCheck {
            reference_input: "health/input.bin".into(),
            expected: vec![OutputBound {
                output: "output0".into(),
                statistic: Statistic::Max,
                min: 0.5,
                max: 1.0,
            }],
        },
        files: files.iter().map(|(p, b)| file(p, b)).collect(),
    };
    let signed = sign_manifest(&m.to_json().unwrap(), &w.key).unwrap();
    let v = verify_manifest(&signed, &w.trust, &w.ctx).unwrap();
    Bundle { v, files }
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
    store.install(&b.v).unwrap()
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
            "moderation/2/health",
            "moderation/2/health/input.bin",
            "moderation/2/labels.txt",
            "moderation/2/model.onnx",
            "moderation/3",
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
    // Version 3 is never installed again, nor anything at or below it.
    for v in [1, 2, 3] {
        let b = bundle(&w, NAME, v);
        assert!(
            matches!(store.staging_dir(&b.v), Err(StoreError::NotNewer { offered, highest: 3, .. }) if offered == v)
        );
        assert!(matches!(
            store.install(&b.v),
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
    let err = store.install(&b2.v).unwrap_err();
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
        store.install(&b2.v),
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
    Op::Rollback,
];

fn apply(
    store: &mut ModelStore,
    op: Op,
    bundles: &BTreeMap<u64, Bundle>,
) -> Result<(), StoreError> {
    match op {
        Op::Install(v) => store.install(&bundles[&v].v).map(|_| ()),
        Op::Confirm => store.confirm(NAME),
        Op::Rollback => store.rollback(NAME).map(|_| ()),
    }
}

/// An interruption after each step of each change, then a restart: `active` is always the
/// confirmed version before or after the change, complete and verifiable; every recorded
/// version verifies; nothing is left in staging, the trash, or unrecorded; and the store
/// goes on working.
#[test]
fn an_interruption_at_any_step_leaves_a_complete_active_version() {
    let w = issuing();
    let bundles: BTreeMap<u64, Bundle> = (1..=6).map(|v| (v, bundle(&w, NAME, v))).collect();
    let d = tempfile::tempdir().unwrap();

    // The active version after each change, uninterrupted.
    let mut expected = vec![None];
    {
        let mut store = open(&d.path().join("reference"), BIG);
        for &op in LIFE {
            if let Op::Install(v) = op {
                stage(&mut store, &bundles[&v]);
            }
            apply(&mut store, op, &bundles).unwrap();
            expected.push(store.active(NAME).map(|a| a.0));
        }
    }

    let mut runs = 0;
    for (k, &op) in LIFE.iter().enumerate() {
        for crash in 0.. {
            let root = d.path().join(format!("run-{k}-{crash}"));
            let mut store = open(&root, BIG);
            for &before in &LIFE[..k] {
                if let Op::Install(v) = before {
                    stage(&mut store, &bundles[&v]);
                }
                apply(&mut store, before, &bundles).unwrap();
            }
            if let Op::Install(v) = op {
                stage(&mut store, &bundles[&v]);
            }
            store.crash_after = Some(crash);
            let r = apply(&mut store, op, &bundles);
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
            let mut recorded = Vec::new();
            if let Some(e) = store.list().into_iter().find(|e| e.name == NAME) {
                assert_eq!(e.record.trial, None, "a trial survived a restart");
                for r in [e.record.active, e.record.previous].into_iter().flatten() {
                    verify_bundle_files(
                        &root.join(NAME).join(r.version.to_string()),
                        &bundles[&r.version].v,
                    )
                    .unwrap();
                    recorded.push(r.version.to_string());
                }
            }
            assert!(tree(&root.join(STAGING_DIR)).is_empty());
            assert!(tree(&root.join(TRASH_DIR)).is_empty());
            if root.join(NAME).exists() {
                let mut on_disk: Vec<String> = std::fs::read_dir(root.join(NAME))
                    .unwrap()
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect();
                on_disk.sort();
                recorded.sort();
                assert_eq!(
                    on_disk, recorded,
                    "{op:?} after {crash} steps: orphans left"
                );
            }
            // The store goes on: a new version installs and confirms.
            let mut store = store;
            let next = &bundles[&6];
            stage(&mut store, next);
            store.install(&next.v).unwrap();
            store.confirm(NAME).unwrap();
            verify_bundle_files(&store.active(NAME).unwrap().1, &next.v).unwrap();
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
