//! The pages that change the device (config editor, camera forms, workflow upload), through
//! the whole router: sessions, roles and CSRF from the one access check, a real
//! configuration file, a real store for the audit rows, and stand-ins for the supervisor
//! (new default pipelines) and the applier (uploads).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::PipelineConfig;
use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use tower::ServiceExt;

use crate::metrics::Metrics;
use crate::store::{Record, Store, StoreSettings, WorkflowAnswer, open_reader};
use crate::web::auth::{Accounts, SystemClock};
use crate::web::edit::{Editor, pipeline_refusal};
use crate::web::{Auth, LocalToken, Role, ServerState};
use crate::workflows::apply::{Answer, DefaultOutcome, Reply};

const PW: &str = "correct horse";

fn config_text(dir: &std::path::Path) -> String {
    format!(
        "# The test device.\n\
         device: {{ id: dev-1 }}\n\
         pipeline:\n  sources:\n\
         \x20   - {{ id: cam0, url: \"file://{d}/clip.mp4\" }}\n\
         \x20   - {{ id: door, url: \"rtsp://192.0.2.10/stream1\", username: viewer, password: hunter2 }}\n\
         \x20 stages: [{{ kind: timestamp_overlay }}]\n\
         \x20 sinks: [{{ kind: discard }}]\n\
         store: {{ path: {d}/aegis.db }}\n\
         web: {{ listen: \"127.0.0.1:0\" }}\n",
        d = dir.display()
    )
}

/// What the stand-in applier was given: each upload's user and size.
type Uploads = Arc<Mutex<Vec<(Option<String>, usize)>>>;

struct Rig {
    dir: tempfile::TempDir,
    state: ServerState,
    store: Option<Store>,
    cfg: PathBuf,
    /// Pipelines the stand-in supervisor was given.
    applied: Arc<Mutex<Vec<PipelineConfig>>>,
    /// Users and sizes of the uploads the stand-in applier was given.
    uploads: Uploads,
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.store.take() {
            s.close();
        }
    }
}

/// A rig whose supervisor answers `outcome`, with pipeline edits refused for `refuse`.
fn rig(outcome: DefaultOutcome, refuse: Option<String>) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("aegis.yaml");
    std::fs::write(&cfg, config_text(dir.path())).unwrap();
    let accounts = dir.path().join("accounts.json");
    let mut a = Accounts::default();
    a.add("vic", Role::Viewer, PW).unwrap();
    a.add("tess", Role::Technician, PW).unwrap();
    a.add("ada", Role::Admin, PW).unwrap();
    a.save(&accounts).unwrap();
    let store = Store::open(StoreSettings::for_test(dir.path())).unwrap();
    let (dtx, mut drx) = tokio::sync::mpsc::channel::<crate::workflows::apply::DefaultPipeline>(1);
    let applied = Arc::new(Mutex::new(Vec::new()));
    {
        let applied = applied.clone();
        tokio::spawn(async move {
            while let Some(req) = drx.recv().await {
                applied.lock().unwrap().push(req.pipeline);
                let _ = req.reply.send(outcome.clone());
            }
        });
    }
    let (wtx, mut wrx) = tokio::sync::mpsc::channel::<crate::workflows::apply::Request>(8);
    let uploads = Arc::new(Mutex::new(Vec::new()));
    {
        let uploads = uploads.clone();
        tokio::spawn(async move {
            while let Some(req) = wrx.recv().await {
                uploads
                    .lock()
                    .unwrap()
                    .push((req.user.clone(), req.payload.len()));
                if let Some(tx) = req.reply {
                    let _ = tx.send(Reply {
                        verdict: Answer::Refused,
                        reason: "signature: the signature does not verify".into(),
                        receipt: None,
                        apply_ms: 1.0,
                    });
                }
            }
        });
    }
    let editor = Arc::new(Editor::new(&cfg, refuse, Some(store.handle()), Some(dtx)));
    let metrics = Arc::new(Metrics::new("cpu"));
    let state = ServerState {
        metrics: metrics.clone(),
        device: "dev-1".into(),
        started: Instant::now(),
        workflows: Some(wtx.clone()),
        token: Arc::new(LocalToken::load_or_create(&dir.path().join("api.token")).unwrap()),
        metrics_public: false,
        audit: None,
        counters: None,
        auth: Arc::new(Auth::new(accounts, Arc::new(SystemClock))),
        cookie_secure: false,
        pages: Arc::new(super::PagesState {
            metrics,
            device: "dev-1".into(),
            backend: "cpu".into(),
            gpu: None,
            started: Instant::now(),
            store_path: store.path().to_path_buf(),
            config: serde_json::Value::Null,
            workflow: Arc::new(Mutex::new(serde_json::json!({
                "active": null, "previous": null, "trust_version": 1, "trust": { "state": "valid" }
            }))),
            logs: Arc::new(crate::logging::LogRing::new(10)),
            thermal_root: dir.path().join("no-thermal"),
            live: Default::default(),
            served: Default::default(),
            snapshots: Default::default(),
            readings: Default::default(),
            models: Default::default(),
            editor: Some(editor),
            workflows: Some(wtx),
            counters: None,
            store: Some(store.handle()),
            evidence: None,
        }),
    };
    Rig {
        dir,
        state,
        store: Some(store),
        cfg,
        applied,
        uploads,
    }
}

fn live() -> Rig {
    rig(DefaultOutcome::Running("in_place"), None)
}

impl Rig {
    async fn send(&self, req: axum::http::Request<Body>) -> (StatusCode, HeaderMap, String) {
        let r = crate::web::router(self.state.clone())
            .oneshot(req)
            .await
            .unwrap();
        let (parts, body) = r.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&body).into_owned(),
        )
    }

    /// Logs `user` in: the cookie header and the session's CSRF token.
    async fn session(&self, user: &str) -> (String, String) {
        let (code, h, body) = self
            .send(
                axum::http::Request::post("/login")
                    .header(header::HOST, "127.0.0.1")
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(format!("user={user}&password=correct+horse")))
                    .unwrap(),
            )
            .await;
        assert_eq!(code, StatusCode::SEE_OTHER, "{body}");
        let cookie = h[header::SET_COOKIE]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let csrf = self
            .state
            .auth
            .session(cookie.split_once('=').unwrap().1)
            .unwrap()
            .csrf;
        (cookie, csrf)
    }

    async fn get(&self, cookie: &str, path: &str) -> (StatusCode, String) {
        let (code, _, body) = self
            .send(
                axum::http::Request::get(path)
                    .header(header::HOST, "127.0.0.1")
                    .header(header::COOKIE, cookie)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        (code, body)
    }

    /// POSTs JSON `{text, base}` to `path` with the session and, if given, its CSRF token.
    async fn post_text(
        &self,
        (cookie, csrf): (&str, Option<&str>),
        path: &str,
        text: &str,
        base: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut b = axum::http::Request::post(path)
            .header(header::HOST, "127.0.0.1")
            .header(header::COOKIE, cookie)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = csrf {
            b = b.header("x-csrf-token", t);
        }
        let body = serde_json::json!({ "text": text, "base": base }).to_string();
        let (code, _, body) = self.send(b.body(Body::from(body)).unwrap()).await;
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// A camera form, as the page posts it (the CSRF token as a form field).
    async fn camera(
        &self,
        (cookie, csrf): (&str, &str),
        fields: &[(&str, &str)],
    ) -> (StatusCode, serde_json::Value) {
        let mut form: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("{k}={}", super::events::url_encode(v)))
            .collect();
        form.push(format!("csrf={csrf}"));
        let (code, _, body) = self
            .send(
                axum::http::Request::post("/api/cameras")
                    .header(header::HOST, "127.0.0.1")
                    .header(header::COOKIE, cookie)
                    .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(Body::from(form.join("&")))
                    .unwrap(),
            )
            .await;
        (
            code,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// The editor's text as the config page shows it (HTML-unescaped).
    async fn editor_text(&self, cookie: &str) -> (String, String) {
        let (code, html) = self.get(cookie, "/config").await;
        assert_eq!(code, StatusCode::OK, "{html}");
        let start = html.find("<textarea").unwrap();
        let start = start + html[start..].find('>').unwrap() + 1;
        let end = start + html[start..].find("</textarea>").unwrap();
        let base_at = html.find("data-base=\"").unwrap() + "data-base=\"".len();
        let base = html[base_at..base_at + 64].to_string();
        (unescape(&html[start..end]), base)
    }

    fn on_disk(&self) -> String {
        std::fs::read_to_string(&self.cfg).unwrap()
    }

    /// Audit rows (actor, action, detail) once the writer has caught up.
    fn audit(&self) -> Vec<(String, String, String)> {
        let h = self.store.as_ref().unwrap().handle();
        assert!(h.flush(Duration::from_secs(10)));
        let conn = open_reader(&self.dir.path().join("aegis.db")).unwrap();
        let mut stmt = conn
            .prepare("SELECT actor, action, detail FROM audit ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

#[tokio::test]
async fn the_editor_shows_every_option_with_secrets_hidden_and_validate_names_field_paths() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let (text, base) = rig.editor_text(&tess).await;
    assert!(!text.contains("hunter2"), "{text}");
    assert!(
        text.contains("password: '***'") || text.contains("password: \"***\""),
        "{text}"
    );
    // Every option, defaults included (the file has no retention_days).
    assert!(text.contains("retention_days: 30"), "{text}");
    assert_eq!(base, aegis_ota::sha256_hex(rig.on_disk().as_bytes()));
    // The page's own script, no inline script.
    let (_, html) = rig.get(&tess, "/config").await;
    assert!(html.contains("<script src=\"/static/config.js\" defer></script>"));
    assert!(!html.contains("<script>") && !html.contains("style="));

    // Two mistakes: both come back, at their paths and lines.
    let bad = text
        .replace(
            "url: rtsp://192.0.2.10/stream1",
            "url: htp://192.0.2.10/stream1",
        )
        .replace("retention_days: 30", "retention_days: many");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config/validate", &bad, None)
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let problems = v["problems"].as_array().unwrap();
    let at = |path: &str| {
        problems
            .iter()
            .find(|p| p["path"] == path)
            .unwrap_or_else(|| panic!("no problem at {path}: {v}"))
    };
    let url = at("pipeline.sources[1].url");
    let line = url["line"].as_u64().unwrap() as usize;
    assert!(
        bad.lines().nth(line - 1).unwrap().contains("htp://"),
        "line {line} of\n{bad}"
    );
    assert!(at("store.retention_days")["line"].as_u64().is_some());
    // The stored password is not kept for the new address.
    assert!(
        at("pipeline.sources[1].password")["reason"]
            .as_str()
            .unwrap()
            .contains("type the password again")
    );
    // The same validator as `aegis check-config`: the same paths and reasons.
    let want = aegis_config::from_yaml_str(
        &bad.replace("'***'", "hunter2")
            .replace("\"***\"", "hunter2"),
        "x",
    )
    .unwrap_err();
    let want: Vec<(&str, &str)> = want
        .problems()
        .iter()
        .map(|p| (p.path.as_str(), p.reason.as_str()))
        .collect();
    let got: Vec<(&str, &str)> = problems
        .iter()
        .filter(|p| p["path"] != "pipeline.sources[1].password")
        .map(|p| (p["path"].as_str().unwrap(), p["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(want.len(), 2, "{want:?}");
    // YAML syntax errors are problems too, with a line.
    let (code, v) = rig
        .post_text(
            (&tess, Some(&csrf)),
            "/api/config/validate",
            "device: [\n",
            None,
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Valid: which sections would change.
    let changed = text.replace("scale: 2", "scale: 3");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config/validate", &changed, None)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], serde_json::json!(["pipeline"]));
    // A file larger than a workflow may be (comments and all) is still a configuration;
    // beyond twice the configuration limit the body is refused unread.
    let padded = format!("# {}\n{text}", "x".repeat(300 * 1024));
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config/validate", &padded, None)
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let huge = format!("# {}\n{text}", "x".repeat(3 << 20));
    let (code, _) = rig
        .post_text((&tess, Some(&csrf)), "/api/config/validate", &huge, None)
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    // Validation writes nothing.
    assert!(rig.applied.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_save_with_a_mistake_changes_nothing_on_disk() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let before = rig.on_disk();
    let (text, base) = rig.editor_text(&tess).await;
    let bad = text
        .replace("kind: timestamp_overlay", "kind: passthrough")
        .replace("url: rtsp://192.0.2.10/stream1", "url: 'rtsp://'");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &bad, Some(&base))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["problems"][0]["path"]
            .as_str()
            .unwrap()
            .starts_with("pipeline.sources[1]"),
        "{v}"
    );
    assert_eq!(rig.on_disk(), before);
    assert!(!rig.cfg.with_file_name("aegis.yaml.bak").exists());
    assert!(rig.applied.lock().unwrap().is_empty());
    // A *** where nothing is stored: refused at its path.
    let new_cam = text.replace(
        "  stages:",
        "  - id: gate\n    url: rtsp://192.0.2.11/s\n    username: u\n    password: '***'\n  stages:",
    );
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &new_cam, Some(&base))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        v["problems"][0]["path"], "pipeline.sources[2].password",
        "{v}"
    );
    assert_eq!(rig.on_disk(), before);
}

#[tokio::test]
async fn a_save_keeps_the_stored_secrets_applies_the_pipeline_and_is_audited() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let before = rig.on_disk();
    let (text, base) = rig.editor_text(&tess).await;
    let edited = text.replace("scale: 2", "scale: 3");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &edited, Some(&base))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(v["changed"], serde_json::json!(["pipeline"]));
    assert!(v["message"].as_str().unwrap().contains("live now"), "{v}");
    // The file: the secret kept, the edit in, the previous file as .bak.
    let after = rig.on_disk();
    let saved = aegis_config::load(&rig.cfg).unwrap();
    assert_eq!(
        saved.pipeline.sources[1]
            .password
            .as_ref()
            .map(|p| p.expose()),
        Some("hunter2")
    );
    assert!(
        after.contains("scale: 3") && !after.contains("***"),
        "{after}"
    );
    assert_eq!(
        std::fs::read_to_string(rig.dir.path().join("aegis.yaml.bak")).unwrap(),
        before
    );
    assert_eq!(v["digest"], aegis_ota::sha256_hex(after.as_bytes()));
    // Exactly the validated pipeline was handed to the supervisor.
    assert_eq!(*rig.applied.lock().unwrap(), vec![saved.pipeline.clone()]);
    // The audit row names the user and the sections.
    let audit = rig.audit();
    let row = audit
        .iter()
        .find(|(_, action, _)| action == "config.edited")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(row.0, "web:tess");
    assert!(row.2.contains("sections pipeline"), "{row:?}");
    assert!(!row.2.contains("hunter2"));
    // The page's base is stale now: a second save from it is refused.
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &text, Some(&base))
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{v}");
    // Saving what is there: nothing changes.
    let (again, base2) = rig.editor_text(&tess).await;
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &again, Some(&base2))
        .await;
    assert_eq!(
        (code, v["message"].as_str()),
        (StatusCode::OK, Some("nothing changed"))
    );
    assert_eq!(rig.applied.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn a_kept_password_is_not_sent_to_a_new_host() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let before = rig.on_disk();
    let (text, base) = rig.editor_text(&tess).await;
    let moved = text.replace("192.0.2.10/stream1", "203.0.113.9/stream1");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &moved, Some(&base))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["problems"][0]["path"], "pipeline.sources[1].password");
    assert!(
        v["problems"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("type the password again")
    );
    assert_eq!(rig.on_disk(), before);
    // The same host, another stream: kept.
    let same = text.replace("192.0.2.10/stream1", "192.0.2.10/stream2");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &same, Some(&base))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let saved = aegis_config::load(&rig.cfg).unwrap();
    assert_eq!(
        saved.pipeline.sources[1]
            .password
            .as_ref()
            .map(|p| p.expose()),
        Some("hunter2")
    );
}

#[tokio::test]
async fn roles_and_csrf_guard_the_editor() {
    let rig = live();
    let before = rig.on_disk();
    let (vic, vic_csrf) = rig.session("vic").await;
    let (tess, csrf) = rig.session("tess").await;
    let (text, base) = rig.editor_text(&tess).await;
    let edited = text.replace("scale: 2", "scale: 3");
    // A viewer: 403 (the page too).
    let (code, _) = rig
        .post_text((&vic, Some(&vic_csrf)), "/api/config", &edited, Some(&base))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    assert_eq!(rig.get(&vic, "/config").await.0, StatusCode::FORBIDDEN);
    // No CSRF token, or another session's: 403.
    for token in [None, Some(vic_csrf.as_str())] {
        let (code, _) = rig
            .post_text((&tess, token), "/api/config", &edited, Some(&base))
            .await;
        assert_eq!(code, StatusCode::FORBIDDEN);
    }
    let (code, _) = rig
        .camera((&tess, "0"), &[("op", "remove"), ("source", "door")])
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    // A technician may not change another section.
    let web = text.replace("metrics_public: true", "metrics_public: false");
    assert_ne!(web, text);
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &web, Some(&base))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("changing web needs an admin"),
        "{v}"
    );
    assert_eq!(rig.on_disk(), before);
    // An admin may; it takes effect after a restart, nothing is applied live.
    let (ada, ada_csrf) = rig.session("ada").await;
    let (code, v) = rig
        .post_text((&ada, Some(&ada_csrf)), "/api/config", &web, Some(&base))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap()
            .contains("web: saved; takes effect after a restart"),
        "{v}"
    );
    assert!(rig.applied.lock().unwrap().is_empty());
    assert!(!aegis_config::load(&rig.cfg).unwrap().web.metrics_public);
    let audit = rig.audit();
    assert!(
        audit
            .iter()
            .any(|(who, action, _)| who == "web:ada" && action == "config.edited"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_fleet_managed_device_refuses_local_pipeline_edits() {
    let managed = {
        let mut c =
            aegis_config::from_yaml_str(&config_text(std::path::Path::new("/tmp")), "t").unwrap();
        c.fleet.enabled = true;
        c.workflows.enabled = true;
        c
    };
    let why = pipeline_refusal(&managed, true).expect("fleet + workflows: managed");
    assert!(why.contains("workflows.allow_local_edits"), "{why}");
    // Not managed without the fleet link, without trust, or with the switch on.
    let mut c = managed.clone();
    c.fleet.enabled = false;
    assert_eq!(pipeline_refusal(&c, true), None);
    assert_eq!(pipeline_refusal(&managed, false), None);
    let mut c = managed.clone();
    c.workflows.allow_local_edits = true;
    assert_eq!(pipeline_refusal(&c, true), None);

    let rig = rig(DefaultOutcome::Running("in_place"), Some(why.clone()));
    let (tess, csrf) = rig.session("tess").await;
    let before = rig.on_disk();
    let (text, base) = rig.editor_text(&tess).await;
    let edited = text.replace("scale: 2", "scale: 3");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &edited, Some(&base))
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"], why);
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[("op", "remove"), ("source", "door"), ("base", &base)],
        )
        .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(rig.on_disk(), before);
    assert!(rig.applied.lock().unwrap().is_empty());
    let audit = rig.audit();
    assert_eq!(
        audit
            .iter()
            .filter(|(who, a, d)| who == "web:tess"
                && a == "config.edit_refused"
                && d.contains("fleet-managed"))
            .count(),
        2,
        "{audit:?}"
    );
    // The pages say why instead of offering the forms.
    let (_, html) = rig.get(&tess, "/cameras").await;
    assert!(
        html.contains("fleet-managed") && !html.contains("camera-form"),
        "{html}"
    );
}

#[tokio::test]
async fn cameras_are_added_edited_and_removed_through_the_save_path() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let (_, html) = rig.get(&tess, "/cameras").await;
    // Configured cameras get forms (none is running here), with the URL's secrets hidden.
    assert!(
        html.contains("Add a camera") && html.contains("value=\"door\""),
        "{html}"
    );
    assert!(html.contains("<script src=\"/static/cameras.js\" defer></script>"));
    assert!(!html.contains("hunter2"));
    let base = |html: &str| {
        let at = html.find("name=\"base\" value=\"").unwrap() + "name=\"base\" value=\"".len();
        html[at..at + 64].to_string()
    };
    let b = base(&html);
    // Add: a mistake is refused at its field, nothing written.
    let before = rig.on_disk();
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[
                ("op", "add"),
                ("id", "gate"),
                ("url", "htp://x/y"),
                ("base", &b),
            ],
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["problems"][0]["path"], "pipeline.sources[2].url", "{v}");
    assert_eq!(rig.on_disk(), before);
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[
                ("op", "add"),
                ("id", "gate"),
                ("url", "rtsp://192.0.2.20/live"),
                ("username", "op"),
                ("password", "s3cret-pw"),
                ("base", &b),
            ],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let ids = |rig: &Rig| -> Vec<String> {
        aegis_config::load(&rig.cfg)
            .unwrap()
            .pipeline
            .sources
            .iter()
            .map(|s| s.id.clone())
            .collect()
    };
    assert_eq!(ids(&rig), ["cam0", "door", "gate"]);
    let saved = aegis_config::load(&rig.cfg).unwrap();
    assert_eq!(
        saved.pipeline.sources[2]
            .password
            .as_ref()
            .map(|p| p.expose()),
        Some("s3cret-pw")
    );
    // Edit: a new host without the password is refused; with it (or the same host) saved.
    let b = base(&rig.get(&tess, "/cameras").await.1);
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[
                ("op", "edit"),
                ("source", "door"),
                ("id", "door"),
                ("url", "rtsp://203.0.113.5/s"),
                ("base", &b),
            ],
        )
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["problems"][0]["path"], "pipeline.sources[1].password");
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[
                ("op", "edit"),
                ("source", "door"),
                ("id", "front-door"),
                ("url", "rtsp://192.0.2.10/stream2"),
                ("base", &b),
            ],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let saved = aegis_config::load(&rig.cfg).unwrap();
    assert_eq!(saved.pipeline.sources[1].id, "front-door");
    assert_eq!(saved.pipeline.sources[1].url, "rtsp://192.0.2.10/stream2");
    assert_eq!(
        saved.pipeline.sources[1]
            .password
            .as_ref()
            .map(|p| p.expose()),
        Some("hunter2")
    );
    // Remove.
    let b = base(&rig.get(&tess, "/cameras").await.1);
    let (code, v) = rig
        .camera(
            (&tess, &csrf),
            &[("op", "remove"), ("source", "gate"), ("base", &b)],
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    assert_eq!(ids(&rig), ["cam0", "front-door"]);
    let (code, _) = rig
        .camera((&tess, &csrf), &[("op", "remove"), ("source", "nope")])
        .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // Each went live and was audited with the user's name.
    assert_eq!(rig.applied.lock().unwrap().len(), 3);
    let audit = rig.audit();
    let edits: Vec<_> = audit
        .iter()
        .filter(|(_, a, _)| a == "config.edited")
        .collect();
    assert_eq!(edits.len(), 3, "{audit:?}");
    assert!(edits.iter().all(|(who, _, _)| who == "web:tess"));
    // A viewer sees the cameras but no forms.
    let (vic, _) = rig.session("vic").await;
    let (code, html) = rig.get(&vic, "/cameras").await;
    assert_eq!(code, StatusCode::OK);
    assert!(!html.contains("camera-form"), "{html}");
}

#[tokio::test]
async fn a_pipeline_that_does_not_start_is_not_kept() {
    let rig = rig(
        DefaultOutcome::Failed("start: the recording folder cannot be created".into()),
        None,
    );
    let (tess, csrf) = rig.session("tess").await;
    let before = rig.on_disk();
    let (text, base) = rig.editor_text(&tess).await;
    let edited = text.replace("scale: 2", "scale: 3");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &edited, Some(&base))
        .await;
    assert_eq!(code, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("recording folder"),
        "{v}"
    );
    assert_eq!(rig.on_disk(), before);
    let audit = rig.audit();
    assert!(
        audit
            .iter()
            .any(|(who, a, _)| who == "web:tess" && a == "config.edit_failed"),
        "{audit:?}"
    );
}

#[tokio::test]
async fn a_workflow_runs_and_the_saved_pipeline_waits() {
    let rig = rig(
        DefaultOutcome::WorkflowRuns {
            workflow: "urn:uuid:wf-7".into(),
        },
        None,
    );
    let (tess, csrf) = rig.session("tess").await;
    let (text, base) = rig.editor_text(&tess).await;
    let edited = text.replace("scale: 2", "scale: 3");
    let (code, v) = rig
        .post_text((&tess, Some(&csrf)), "/api/config", &edited, Some(&base))
        .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let m = v["message"].as_str().unwrap();
    assert!(
        m.contains("urn:uuid:wf-7") && m.contains("keeps running"),
        "{m}"
    );
    assert!(rig.on_disk().contains("scale: 3"));
}

#[tokio::test]
async fn uploads_go_to_the_applier_with_the_user_and_history_shows_receipts() {
    let rig = live();
    let (tess, csrf) = rig.session("tess").await;
    let (vic, vic_csrf) = rig.session("vic").await;
    let doc = b"---\nmaml_version: \"2.0\"\n---\ntampered".to_vec();
    let post = |cookie: &str, token: &str| {
        axum::http::Request::post("/api/workflows")
            .header(header::HOST, "127.0.0.1")
            .header(header::COOKIE, cookie)
            .header("x-csrf-token", token)
            .header(header::CONTENT_TYPE, "text/markdown")
            .body(Body::from(doc.clone()))
            .unwrap()
    };
    // A viewer may look, not upload.
    let (code, _, _) = rig.send(post(&vic, &vic_csrf)).await;
    assert_eq!(code, StatusCode::FORBIDDEN);
    let (code, _, body) = rig.send(post(&tess, &csrf)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["verdict"], "refused");
    assert_eq!(v["reason"], "signature: the signature does not verify");
    assert_eq!(
        *rig.uploads.lock().unwrap(),
        vec![(Some("tess".to_string()), doc.len())]
    );
    // Too large for any workflow: refused before the applier.
    let big = vec![b'x'; aegis_ota::maml::MAX_DOCUMENT_BYTES + 2];
    let (code, _, _) = rig
        .send(
            axum::http::Request::post("/api/workflows")
                .header(header::HOST, "127.0.0.1")
                .header(header::COOKIE, &tess)
                .header("x-csrf-token", &csrf)
                .body(Body::from(big))
                .unwrap(),
        )
        .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(rig.uploads.lock().unwrap().len(), 1);
    // A history row with its receipt, as the applier writes them.
    let h = rig.store.as_ref().unwrap().handle();
    h.submit(Record::WorkflowAnswer(Box::new(WorkflowAnswer {
        ts_us: crate::store::now_us(),
        via: "web:tess".into(),
        workflow_id: "urn:uuid:<b>wf</b>".into(),
        sequence: 3,
        digest: "ab".repeat(32),
        verdict: "rejected".into(),
        reason: "target: not for this device".into(),
        receipt: Some("---\nverdict: rejected\n---\nsigned".into()),
    })));
    let audit = rig.audit();
    let upload = audit
        .iter()
        .find(|(_, a, _)| a == "workflow.upload")
        .unwrap_or_else(|| panic!("{audit:?}"));
    assert_eq!(upload.0, "web:tess");
    assert!(upload.2.contains("refused: signature"), "{upload:?}");
    let (code, html) = rig.get(&vic, "/workflows").await;
    assert_eq!(code, StatusCode::OK);
    assert!(html.contains("target: not for this device"), "{html}");
    assert!(html.contains("urn:uuid:&lt;b&gt;wf&lt;/b&gt;") && !html.contains("<b>wf"));
    assert!(html.contains("refused: signature"), "{html}");
    // No upload form for a viewer; a technician gets it.
    assert!(!html.contains("workflow-upload"));
    let (_, html) = rig.get(&tess, "/workflows").await;
    assert!(html.contains("id=\"workflow-upload\"") && html.contains("/static/workflows.js"));
    let link = html.find("/workflows/receipt/").unwrap();
    let id: String = html[link + "/workflows/receipt/".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let (code, text) = rig.get(&vic, &format!("/workflows/receipt/{id}")).await;
    assert_eq!(
        (code, text.as_str()),
        (StatusCode::OK, "---\nverdict: rejected\n---\nsigned")
    );
    assert_eq!(
        rig.get(&vic, "/workflows/receipt/999").await.0,
        StatusCode::NOT_FOUND
    );
    // A fleet workflow waiting for a model bundle, as the applier reports it.
    rig.state.pages.workflow.lock().unwrap()["waiting"] = serde_json::json!([{
        "topic": "aegis/v1/dev-1/workflows", "sha256": "cd".repeat(32),
        "needs": "model \"<nn>\" version 2", "since": "2026-12-04T10:00:00Z",
    }]);
    let (_, html) = rig.get(&vic, "/workflows").await;
    assert!(
        html.contains(
            "Waiting since 2026-12-04T10:00:00Z for model &quot;&lt;nn&gt;&quot; version 2"
        ),
        "{html}"
    );
    assert_eq!(
        rig.get(&vic, "/workflows/receipt/x'").await.0,
        StatusCode::BAD_REQUEST
    );
    let (code, body) = rig.get(&vic, "/api/workflows").await;
    assert_eq!(code, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["history"][0]["verdict"], "rejected");
    assert_eq!(v["history"][0]["receipt"], true);
}
