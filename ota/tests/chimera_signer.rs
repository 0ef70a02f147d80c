//! `chimera serve`'s online signer (docs/chimera-serve.md, "Online signing"): the real
//! binary, set up with the real CLI in a temporary directory, signing through
//! `POST /api/v1/workflows/sign` with an issuer key file or with a seed that a SoftHSM token
//! decrypts; what it signs is checked with the devices' own code (`aegis_ota::device::check`
//! against the root-signed trust metadata, opening sealed bodies with the devices' keys).
#![cfg(feature = "gateway")]

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use aegis_ota::device::{Identity, Policy, ReplayState};
use aegis_ota::seal::SealSecret;
use aegis_ota::sign::PublicKey;
use aegis_ota::trust::TrustMetadata;
use common::serve::{Backend, Server, command, ok, on_each_backend, root_and_issuer};
use common::{SOFTHSM_MODULE, have_softhsm};
use serde_json::{Value, json};

/// A gateway directory: the offline root (`root/`, whose key stays there for the refusal
/// tests: no configuration here names it but the one that must be refused), issuer `gw-1`
/// (`gw.key`) allowed to target cam-1, cam-2 and group lobby, devices cam-1 and cam-2
/// (lobby members, each with an ML-KEM key) and cam-9 (outside the issuer's reach), tokens.
struct Setup {
    dir: tempfile::TempDir,
    viewer: String,
    operator: String,
    /// `serve.yaml` without `signer`.
    base: String,
}

impl Setup {
    /// On SQLite.
    fn new() -> Setup {
        Setup::on(Backend::Sqlite)
    }

    fn on(backend: Backend) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = format!(
            "listen: 127.0.0.1:0\n{}registry: devices.json\nstate: state\n\
             trust_metadata: trust.signed.json\ntrust_roots: [root/root.pub]\n",
            backend.database(d, "state/chimera.db")
        );
        root_and_issuer(d, "cam-1,cam-2", "lobby");
        for cam in ["cam-1", "cam-2", "cam-9"] {
            ok(d, &["keygen", "--out", cam]);
            ok(d, &["kem-keygen", "--out", cam]);
            let (public, kem) = (format!("{cam}.pub"), format!("{cam}.kem.pub"));
            let mut args = vec!["enroll", cam, public.as_str(), "--kem", kem.as_str()];
            if cam != "cam-9" {
                args.extend(["--group", "lobby"]);
            }
            ok(d, &args);
        }
        std::fs::write(d.join("serve.yaml"), &base).unwrap();
        let token = |role: &str| {
            ok(
                d,
                &["serve", "token", "create", "--role", role, "--name", role],
            )
            .trim()
            .to_string()
        };
        let (viewer, operator) = (token("viewer"), token("operator"));
        Setup {
            dir,
            viewer,
            operator,
            base,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `serve.yaml`: the base and `signer`.
    fn config(&self, signer: &str) {
        std::fs::write(
            self.path().join("serve.yaml"),
            format!("{}signer:\n{signer}", self.base),
        )
        .unwrap();
    }

    /// An unsigned draft from `chimera new` (sequence 1, the template pipeline).
    fn draft(&self, issuer: &str, target: &[&str]) -> String {
        let out = self.path().join(format!("draft-{}.maml.md", rand_suffix()));
        let out_s = out.to_str().unwrap();
        let mut args = vec!["new", "--out", out_s, "--issuer", issuer];
        args.extend_from_slice(target);
        ok(self.path(), &args);
        std::fs::read_to_string(out).unwrap()
    }

    /// The trust metadata as a device holds it, checked against the root public key.
    fn trust(&self) -> TrustMetadata {
        let root = PublicKey::read(&self.path().join("root/root.pub")).unwrap();
        TrustMetadata::verify_update(
            &std::fs::read(self.path().join("trust.signed.json")).unwrap(),
            &[root],
            1,
            0,
            aegis_ota::maml::now_s(),
        )
        .unwrap()
    }

    fn kem(&self, cam: &str) -> SealSecret {
        SealSecret::read(&self.path().join(format!("{cam}.kem.key"))).unwrap()
    }
}

fn rand_suffix() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The device-side check `device` (in `groups`) runs on `doc`, with its replay `state` and
/// its sealing keys.
fn device_check(
    trust: &TrustMetadata,
    device: &str,
    groups: &[&str],
    state: &ReplayState,
    keys: &[&SealSecret],
    doc: &str,
) -> Result<aegis_ota::Verified, aegis_ota::Refusal> {
    let me = Identity {
        id: device.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    let policy = Policy {
        source_hosts: vec!["*".into()],
        ..Default::default()
    };
    aegis_ota::device::check(
        doc.as_bytes(),
        trust,
        &me,
        &policy,
        state,
        aegis_ota::maml::now_s(),
        keys,
    )
}

/// `chimera serve` with `env` must refuse to start: its stderr. A start is a failure of
/// the test (the service is killed).
fn start_fails(dir: &Path, env: &[(&str, &Path)]) -> String {
    let mut child = command(dir, &["serve", "--config", "serve.yaml"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn chimera serve");
    let t0 = Instant::now();
    // A hang guard, not a speed check.
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("chimera serve started (or hung) where it must refuse to");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// POST a draft to be signed as `token`.
fn sign(s: &Server, token: &str, body: Value) -> (u16, Value) {
    s.post("/api/v1/workflows/sign", token, &body)
}

#[test]
fn a_file_signer_signs_and_seals_what_devices_accept() {
    let g = Setup::new();
    g.config("  kind: file\n  key_file: gw.key\n");
    let s = Server::start(g.path(), "serve.yaml");
    let trust = g.trust();
    let draft = g.draft("gw-1", &["--device", "cam-1"]);

    // A viewer cannot sign.
    let (st, body) = sign(&s, &g.viewer, json!({ "draft": draft }));
    assert_eq!(st, 403, "{body}");

    let (st, first) = sign(&s, &g.operator, json!({ "draft": draft }));
    assert_eq!(st, 201, "{first}");
    let doc1 = first["document"].as_str().unwrap();
    let v1 = device_check(
        &trust,
        "cam-1",
        &["lobby"],
        &ReplayState::default(),
        &[],
        doc1,
    )
    .unwrap_or_else(|e| panic!("device refused: {e}"));
    assert_eq!(v1.document.front.sequence, 1);
    assert_eq!(first["workflow"]["sequence"], 1);
    assert_eq!(first["workflow"]["digest"], json!(v1.digest));
    assert_eq!(first["workflow"]["issuer"], "gw-1");
    assert_eq!(first["sealed_for"], json!([]));
    assert_eq!(
        v1.document.front.issued_at,
        first["issued_at"].as_str().unwrap()
    );

    // The same draft again: the next sequence, which a device that applied the first
    // accepts (its anti-replay state moved on).
    let (st, second) = sign(
        &s,
        &g.operator,
        json!({ "draft": draft, "valid_for_s": 3600 }),
    );
    assert_eq!(st, 201, "{second}");
    let mut state = ReplayState::default();
    state.accept(&v1);
    let doc2 = second["document"].as_str().unwrap();
    let v2 = device_check(&trust, "cam-1", &["lobby"], &state, &[], doc2).unwrap();
    assert_eq!(v2.document.front.sequence, 2);
    let span = aegis_ota::maml::parse_time(&v2.document.front.expires_at).unwrap()
        - aegis_ota::maml::parse_time(&v2.document.front.issued_at).unwrap();
    assert_eq!(span, 3600);
    // ... and replaying the first to it is refused.
    state.accept(&v2);
    let replay = device_check(&trust, "cam-1", &["lobby"], &state, &[], doc1).unwrap_err();
    assert!(replay.to_string().contains("replay"), "{replay}");

    // Sealed for cam-1: cam-1's key opens it; cam-2's does not.
    let (st, sealed) = sign(
        &s,
        &g.operator,
        json!({ "draft": draft, "seal": { "devices": ["cam-1"] } }),
    );
    assert_eq!(st, 201, "{sealed}");
    assert_eq!(sealed["workflow"]["sealed"], true);
    assert_eq!(sealed["workflow"]["sequence"], 3);
    assert_eq!(sealed["sealed_for"], json!([g.kem("cam-1").public().id()]));
    let doc3 = sealed["document"].as_str().unwrap();
    assert!(
        !doc3.contains("rtsp://192.0.2.10"),
        "the pipeline is in clear"
    );
    let v3 = device_check(
        &trust,
        "cam-1",
        &["lobby"],
        &state,
        &[&g.kem("cam-1")],
        doc3,
    )
    .unwrap_or_else(|e| panic!("cam-1 refused its sealed document: {e}"));
    assert!(v3.pipeline.is_some());
    let other = device_check(
        &trust,
        "cam-1",
        &["lobby"],
        &state,
        &[&g.kem("cam-2")],
        doc3,
    )
    .unwrap_err();
    assert!(other.to_string().contains("sealed"), "{other}");
    // Sealed for the group lobby (its members' keys): each member with the group key opens
    // it; lobby has no group key here, so it is refused, naming the group.
    let group_draft = g.draft("gw-1", &["--group", "lobby"]);
    let (st, body) = sign(
        &s,
        &g.operator,
        json!({ "draft": group_draft, "seal": { "groups": ["lobby"] } }),
    );
    assert_eq!((st, body["check"].as_str()), (422, Some("seal")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("lobby"), "{body}");

    // Refusals, each naming its check, before any sequence is allotted.
    let refusals = [
        (
            json!({ "draft": g.draft("gw-1", &["--device", "cam-9"]) }),
            "target",
            "cam-9",
        ),
        (
            json!({ "draft": g.draft("gw-1", &["--group", "yard"]) }),
            "target",
            "yard",
        ),
        (
            json!({ "draft": g.draft("gw-2", &["--device", "cam-1"]) }),
            "document",
            "chimera://gw-1",
        ),
        (json!({ "draft": doc1 }), "format", "signed already"),
        (
            json!({ "draft": draft.replace("type: workflow", "type: flow") }),
            "document",
            "type",
        ),
        (
            json!({ "draft": draft.replace("kind: record", "kind: teleport") }),
            "pipeline",
            "teleport",
        ),
        (
            json!({ "draft": draft, "seal": { "devices": ["cam-2"] } }),
            "seal",
            "does not target device \"cam-2\"",
        ),
        (
            json!({ "draft": draft, "seal": {} }),
            "seal",
            "at least one",
        ),
        (
            json!({ "draft": draft, "valid_for_s": 10 }),
            "time",
            "valid_for_s",
        ),
        (json!({ "draft": "x".repeat(129 * 1024) }), "size", "limit"),
    ];
    for (body, check, named) in refusals {
        let (st, answer) = sign(&s, &g.operator, body.clone());
        assert_eq!(st, 422, "{check}: {answer}");
        assert_eq!(answer["check"], check, "{answer}");
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(named), "{check}: {error}");
    }
    // Unknown fields are refused by name.
    let (st, answer) = sign(&s, &g.operator, json!({ "draft": draft, "sequence": 9 }));
    assert_eq!(st, 422, "{answer}");
    assert!(answer.to_string().contains("sequence"), "{answer}");

    // Nothing refused used a sequence: the next one is 4.
    let (st, fourth) = sign(&s, &g.operator, json!({ "draft": draft }));
    assert_eq!(
        (st, fourth["workflow"]["sequence"].as_u64()),
        (201, Some(4))
    );

    // Stored as uploads are (publishable by digest), and audited with who signed.
    let held = s.get("/api/v1/workflows", &g.viewer);
    let digests: Vec<&str> = held
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["digest"].as_str().unwrap())
        .collect();
    for answer in [&first, &second, &sealed, &fourth] {
        assert!(digests.contains(&answer["workflow"]["digest"].as_str().unwrap()));
        assert_eq!(answer["workflow"]["created_by"], "token:operator");
    }
    let admin = ok(
        g.path(),
        &[
            "serve", "token", "create", "--role", "admin", "--name", "admin",
        ],
    );
    let audit = s.get("/api/v1/audit?limit=1000", admin.trim());
    let rows = audit.as_array().unwrap();
    let signed: Vec<&Value> = rows
        .iter()
        .filter(|r| r["action"] == "workflow.sign")
        .collect();
    assert_eq!(signed.len(), 4);
    assert!(signed.iter().all(|r| r["actor"] == "token:operator"));
    let detail = signed
        .iter()
        .map(|r| r["detail"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        detail.contains(&format!("digest {}", v1.digest)),
        "{detail}"
    );
    assert!(rows.iter().any(|r| r["action"] == "workflow.sign_refused"
        && r["detail"].as_str().unwrap().contains("target")));
}

#[test]
fn concurrent_sign_requests_get_strictly_increasing_sequences() {
    on_each_backend("chimera_signer", |backend| {
        let g = Setup::on(backend);
        g.config("  kind: file\n  key_file: gw.key\n");
        let s = Server::start(g.path(), "serve.yaml");
        let draft = g.draft("gw-1", &["--group", "lobby"]);
        // Another target meanwhile: its own count.
        let other = g.draft("gw-1", &["--device", "cam-2"]);
        let answers: Vec<Value> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    let (s, op) = (&s, &g.operator);
                    let d = if i % 5 == 4 { &other } else { &draft };
                    scope.spawn(move || {
                        let (st, body) = sign(s, op, json!({ "draft": d }));
                        assert_eq!(st, 201, "{body}");
                        body
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let trust = g.trust();
        let mut lobby: Vec<(u64, String)> = Vec::new();
        let mut cam2 = Vec::new();
        for a in &answers {
            let w = &a["workflow"];
            let seq = w["sequence"].as_u64().unwrap();
            if w["groups"] == json!(["lobby"]) {
                lobby.push((seq, a["document"].as_str().unwrap().to_string()));
            } else {
                cam2.push(seq);
            }
        }
        lobby.sort();
        cam2.sort();
        assert_eq!(
            lobby.iter().map(|l| l.0).collect::<Vec<_>>(),
            (1..=8).collect::<Vec<u64>>()
        );
        assert_eq!(cam2, [1, 2]);
        // A member applying them in sequence order accepts each one (issue times never go back
        // as sequences go up).
        let mut state = ReplayState::default();
        for (seq, doc) in &lobby {
            let v = device_check(&trust, "cam-1", &["lobby"], &state, &[], doc)
                .unwrap_or_else(|e| panic!("sequence {seq} refused: {e}"));
            state.accept(&v);
        }
    });
}

#[test]
fn a_root_key_a_stranger_or_no_trust_metadata_keep_the_service_from_starting() {
    let g = Setup::new();
    // The offline root key given as the online key: refused as a root key, by name.
    g.config("  kind: file\n  key_file: root/root.key\n");
    let e = start_fails(g.path(), &[]);
    assert!(
        e.contains("root key") && e.contains("signer.key_file"),
        "{e}"
    );
    // A key the trust metadata does not list.
    ok(g.path(), &["keygen", "--out", "stranger"]);
    g.config("  kind: file\n  key_file: stranger.key\n");
    let e = start_fails(g.path(), &[]);
    assert!(e.contains("not an issuer"), "{e}");
    // A device's key is no issuer either.
    g.config("  kind: file\n  key_file: cam-1.key\n");
    let e = start_fails(g.path(), &[]);
    assert!(e.contains("not an issuer"), "{e}");
    // A secret key file others can read.
    std::fs::set_permissions(
        g.path().join("gw.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    g.config("  kind: file\n  key_file: gw.key\n");
    let e = start_fails(g.path(), &[]);
    assert!(e.contains("chmod 600"), "{e}");
    // A signer without trust metadata.
    std::fs::write(
        g.path().join("serve.yaml"),
        "listen: 127.0.0.1:0\ndatabase: state/chimera.db\nregistry: devices.json\nstate: \
         state\nsigner: { kind: file, key_file: gw.key }\n",
    )
    .unwrap();
    let e = start_fails(g.path(), &[]);
    assert!(e.contains("trust_metadata"), "{e}");
    // Without a signer, signing answers 503 and says what is missing.
    std::fs::write(g.path().join("serve.yaml"), &g.base).unwrap();
    let s = Server::start(g.path(), "serve.yaml");
    let (st, body) = sign(&s, &g.operator, json!({ "draft": "x" }));
    assert_eq!(st, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("signer"), "{body}");
}

/// A SoftHSM token in a temporary directory (`SOFTHSM2_CONF`), initialised with a user PIN.
struct SoftHsm {
    conf: PathBuf,
}

impl SoftHsm {
    fn init(dir: &Path, label: &str, pin: &str) -> SoftHsm {
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new("softhsm2-util")
            .env("SOFTHSM2_CONF", &conf)
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "87654321", "--pin", pin])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SoftHsm { conf }
    }

    fn env(&self) -> [(&'static str, &Path); 1] {
        [("SOFTHSM2_CONF", self.conf.as_path())]
    }

    /// `chimera serve ARGS` with this token: the output.
    fn chimera(&self, dir: &Path, args: &[&str]) -> std::process::Output {
        command(dir, args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }
}

fn pkcs11_signer(pin_file: &str, key_label: &str, wrapped: &str) -> String {
    format!(
        "  kind: pkcs11\n  module: {SOFTHSM_MODULE}\n  token_label: chimera\n  pin_file: \
         {pin_file}\n  key_label: {key_label}\n  wrapped_seed_file: {wrapped}\n"
    )
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_softhsm_token_decrypts_the_seed_for_each_signature() {
    if !have_softhsm("chimera_signer") {
        return;
    }
    let g = Setup::new();
    let d = g.path();
    let hsm = SoftHsm::init(d, "chimera", "12345678");
    write_private(&d.join("token.pin"), "12345678\n");
    write_private(&d.join("wrong.pin"), "00000000\n");
    g.config(&pkcs11_signer("token.pin", "chimera-seed", "gw.seed"));

    // Import the issuer key's seed: the token makes its AES key (non-extractable) on the
    // way; then the key file goes.
    let gw_key = std::fs::read_to_string(d.join("gw.key")).unwrap();
    let o = hsm.chimera(
        d,
        &[
            "serve",
            "signer",
            "import-seed",
            "--config",
            "serve.yaml",
            "--key",
            "gw.key",
        ],
    );
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("made the token's AES-256 wrapping key"),
        "{err}"
    );
    let gw_id = PublicKey::read(&d.join("gw.pub")).unwrap().id().to_string();
    assert!(out.contains(&gw_id), "{out}");
    std::fs::remove_file(d.join("gw.key")).unwrap();
    // Importing twice never overwrites the wrapped seed.
    let o = hsm.chimera(
        d,
        &[
            "serve",
            "signer",
            "import-seed",
            "--config",
            "serve.yaml",
            "--key",
            "cam-1.key",
        ],
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("never overwritten"));

    // The wrapped seed is ciphertext: the seed is not in it, and it is no key file.
    let wrapped = std::fs::read_to_string(d.join("gw.seed")).unwrap();
    let seed_b64 = gw_key.lines().nth(1).unwrap().trim();
    assert!(!wrapped.contains(seed_b64));
    let w: Value = serde_json::from_str(&wrapped).unwrap();
    assert_eq!(w["key_id"], json!(gw_id));
    let o = command(d, &["sign", "--key", "gw.seed", "x.maml.md"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("gw.seed"));

    // What the service checks at start, printed: the key cannot leave the token.
    let o = hsm.chimera(d, &["serve", "signer", "check", "--config", "serve.yaml"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        out.contains("signer ok: issuer gw-1") && out.contains(&gw_id),
        "{out}"
    );
    assert!(
        out.contains("not extractable, its value unreadable; never extractable: yes"),
        "{out}"
    );
    assert!(out.contains("CKM_ML_DSA: no"), "{out}");

    // The service signs with it: devices accept the result.
    let s = Server::start_env(d, "serve.yaml", &hsm.env());
    let draft = g.draft("gw-1", &["--device", "cam-2"]);
    let (st, a) = sign(&s, &g.operator, json!({ "draft": draft }));
    assert_eq!(st, 201, "{a}");
    let (st, b) = sign(
        &s,
        &g.operator,
        json!({ "draft": draft, "seal": { "devices": ["cam-2"] } }),
    );
    assert_eq!(st, 201, "{b}");
    let trust = g.trust();
    let mut state = ReplayState::default();
    for answer in [&a, &b] {
        let v = device_check(
            &trust,
            "cam-2",
            &["lobby"],
            &state,
            &[&g.kem("cam-2")],
            answer["document"].as_str().unwrap(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v.signer.id(), gw_id);
        state.accept(&v);
    }
    drop(s);

    // A wrong PIN, a key label the token lacks: the service does not start, and says why.
    g.config(&pkcs11_signer("wrong.pin", "chimera-seed", "gw.seed"));
    let e = start_fails(d, &hsm.env());
    assert!(
        e.contains("signer.pin_file") && e.contains("wrong PIN"),
        "{e}"
    );
    g.config(&pkcs11_signer("token.pin", "no-such-key", "gw.seed"));
    let e = start_fails(d, &hsm.env());
    assert!(
        e.contains("\"no-such-key\"") && e.contains("no secret key with this label"),
        "{e}"
    );
    // The wrapped seed as a key file: not one.
    g.config("  kind: file\n  key_file: gw.seed\n");
    let e = start_fails(d, &[]);
    assert!(
        e.contains("gw.seed") && e.contains("not this kind of key file"),
        "{e}"
    );

    // Another key of the token cannot decrypt it. `signer generate` makes that key (and a
    // new issuer key, which the trust metadata does not list: refused at start too).
    std::fs::write(
        d.join("other.yaml"),
        format!(
            "{}signer:\n{}",
            g.base,
            pkcs11_signer("token.pin", "other-key", "other.seed")
        ),
    )
    .unwrap();
    let o = hsm.chimera(
        d,
        &[
            "serve",
            "--config",
            "other.yaml",
            "signer",
            "generate",
            "--out",
            "other",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d.join("other.pub").exists() && !d.join("other.key").exists());
    std::fs::copy(d.join("other.yaml"), d.join("serve.yaml")).unwrap();
    let e = start_fails(d, &hsm.env());
    assert!(e.contains("not an issuer"), "{e}");
    g.config(&pkcs11_signer("token.pin", "other-key", "gw.seed"));
    let e = start_fails(d, &hsm.env());
    assert!(
        e.contains("cannot decrypt the wrapped seed") && e.contains(&gw_id),
        "{e}"
    );
}
