//! The operator dashboard (docs/chimera-serve.md, "Dashboard").
//!
//! Over HTTP: its files are public, hold no data, load nothing inline or from elsewhere and
//! carry the security headers; the API behind them still wants a token.
//!
//! In a real browser (Debian's Chromium through chromedriver, driven by the workspace's
//! harness `tests/src/browser.rs`, compiled in here as a module): a viewer, an operator and
//! an admin use the page against the real service, a mosquitto of its own and simulated
//! devices in a rollout. The fleet table shows the devices, and a device whose id, group,
//! version and workflow id are markup shows them as text; the rollout's progress; a
//! viewer's pause is refused by the service and the page says so, an operator's is done;
//! the audit log needs an admin; the rest of the rollout arrives over the event stream; the
//! page says when the stream is gone and reconnects by itself when the service is back.
//! The browser test runs on SQLite, then on PostgreSQL (`on_each_backend`). Screenshots of
//! each step go to `<CARGO_TARGET_TMPDIR>/browser-artifacts/dashboard-{sqlite,postgres}-*`.
#![cfg(feature = "gateway")]

mod common;

#[path = "../../tests/src/browser.rs"]
#[allow(dead_code)]
mod browser;

use std::path::PathBuf;
use std::time::Duration;

use browser::{Browser, BrowserError, Viewport, WAIT, have_browser};
use common::fleet::Behaviour;
use common::fleet_gateway::{FleetGateway, GROUP};
use common::have_mosquitto;
use common::serve::{Backend, Gateway, Server, on_each_backend, wait_for};
use serde_json::{Value, json};

const SUITE: &str = "chimera_dashboard";

/// Where the browser harness records a skip (it calls `crate::record_skip`).
fn record_skip(why: &str) {
    common::tools::skip(SUITE, why);
}

/// The policy the service must send with every answer, stated here independently of the
/// service's constant.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn assert_locked_down(what: &str, h: &ureq::http::HeaderMap) {
    assert_eq!(h["content-security-policy"], CSP, "{what}");
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
}

/// The values of every `name="…"` attribute in `html` (lower case).
fn attribute_values(html: &str, name: &str) -> Vec<String> {
    let lower = html.to_ascii_lowercase();
    let marker = format!(" {name}=\"");
    lower
        .split(&marker)
        .skip(1)
        .map(|rest| rest.split('"').next().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn the_dashboard_is_public_holds_no_data_and_loads_nothing_inline_or_remote() {
    let gw = Gateway::new();
    let mut s = gw.start();
    let (status, h, page) = s.exchange("GET", "/", None, None);
    assert_eq!(status, 200, "{page}");
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    assert_locked_down("GET /", &h);
    let lower = page.to_ascii_lowercase();

    // No inline script: each script element names its file and holds nothing.
    let scripts: Vec<&str> = lower.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 1, "{page}");
    for s in scripts {
        let (tag, rest) = s.split_once('>').unwrap();
        assert!(tag.contains(" src=\""), "<script{tag}> has no src");
        assert!(
            rest.starts_with("</script>"),
            "an inline script: {rest:.80}"
        );
    }
    // No inline style, no event handler attribute, no script URL.
    for bad in ["<style", " style=", "javascript:"] {
        assert!(!lower.contains(bad), "the page holds {bad:?}");
    }
    let handlers: Vec<&str> = lower
        .match_indices(" on")
        .map(|(i, _)| &lower[i + 1..])
        .filter(|rest| {
            let name: String = rest.chars().take_while(char::is_ascii_alphabetic).collect();
            rest[name.len()..].starts_with('=')
        })
        .collect();
    assert!(
        handlers.is_empty(),
        "event handler attributes: {handlers:?}"
    );

    // Everything it loads is this service's own, served with the same headers.
    let mut loaded = attribute_values(&page, "src");
    loaded.extend(
        attribute_values(&page, "href")
            .into_iter()
            .filter(|h| !h.starts_with('#')),
    );
    assert_eq!(loaded.len(), 2, "{loaded:?}");
    for path in &loaded {
        assert!(
            !path.contains(':') && !path.starts_with('/'),
            "{path}: not a relative path on this service"
        );
        let (status, h, body) = s.exchange("GET", &format!("/{path}"), None, None);
        assert_eq!(status, 200, "GET /{path}");
        assert_locked_down(path, &h);
        let expected = if path.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(h["content-type"], expected, "{path}");
        assert!(!body.is_empty());
        assert!(!body.contains("cam-1"), "{path} holds fleet data");
    }

    // It holds no data: the fleet and the tokens are the API's.
    assert!(!page.contains("cam-1"), "the page names a device");
    assert!(!page.contains(&gw.viewer));
    // The API behind it still wants a token, and its refusals carry the same headers.
    let (status, h, body) = s.exchange("GET", "/api/v1/devices", None, None);
    assert_eq!(status, 401, "{body}");
    assert_locked_down("a refusal", &h);
    let (status, h, _) = s.exchange(
        "GET",
        "/api/v1/devices",
        Some(&format!("Bearer {}", gw.viewer)),
        None,
    );
    assert_eq!(status, 200);
    assert_locked_down("an API answer", &h);
    // Beside its files nothing is public: a file it does not have needs an admin.
    assert_eq!(s.call("GET", "/dashboard/nope.js", None, None).0, 401);
    assert_eq!(
        s.bearer("GET", "/dashboard/nope.js", &gw.viewer, None).0,
        403
    );
    // And the document says what is public.
    let (_, doc) = s.call("GET", "/api/v1/openapi.json", None, None);
    let doc: Value = serde_json::from_str(&doc).unwrap();
    for path in ["/", "/dashboard/app.js", "/dashboard/app.css"] {
        assert_eq!(doc["paths"][path]["get"]["security"], json!([]), "{path}");
    }

    // A page left open keeps its event stream open; told to stop, the service ends the
    // stream rather than wait for the page to go away.
    let _stream = s.events(&gw.viewer);
    let stopped = s.terminate_within(Duration::from_secs(60));
    assert!(
        stopped.is_some_and(|st| st.success()),
        "with an event stream open, SIGTERM gave {stopped:?}"
    );
}

/// A device id that is markup: shown as text it is harmless, parsed as HTML it would run.
const HOSTILE: &str = "<img src=x onerror=\"window.__pwned=1\">";
const HOSTILE_GROUP: &str = "<b>lobby</b>";
const HOSTILE_VERSION: &str = "<svg onload=\"window.__pwned=2\">";
const HOSTILE_RUNNING: &str = "<script>window.__pwned=3</script>";

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts")
}

/// Enrols [`HOSTILE`] in [`HOSTILE_GROUP`] (not the rollout's group) in the registry the
/// service imports when it starts.
fn enrol_hostile(g: &FleetGateway) {
    use base64::Engine as _;
    let key = aegis_ota::sign::SecretKey::generate().unwrap();
    let path = g.path().join("devices.json");
    let mut reg: serde_json::Map<String, Value> =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    reg.insert(
        HOSTILE.into(),
        json!({
            "signing_key": base64::engine::general_purpose::STANDARD.encode(key.public().to_bytes()),
            "key_id": key.public().id(),
            "groups": [HOSTILE_GROUP],
        }),
    );
    std::fs::write(&path, serde_json::to_vec_pretty(&reg).unwrap()).unwrap();
}

/// What the test set up: the service, the rollout and its devices.
struct Scene<'a> {
    g: &'a FleetGateway,
    rollout: String,
    /// The first step's devices: both hold the document; the first was released.
    held: Vec<String>,
    /// The second step's: they hold it too when it comes.
    later: Vec<String>,
}

#[test]
fn operators_watch_the_fleet_and_rollouts_live_and_the_service_decides_what_they_may_do() {
    if !have_browser() || !have_mosquitto(SUITE) {
        return;
    }
    on_each_backend(SUITE, watch_the_fleet_and_a_rollout);
}

fn watch_the_fleet_and_a_rollout(backend: Backend) {
    let g = FleetGateway::new(4, backend);
    enrol_hostile(&g);
    let s = g.start();
    g.all_online(&s);
    // The hostile device says it is online, with markup for a version and a workflow id,
    // and sends a receipt that does not verify.
    g.fleet.publish(
        &format!("aegis/v1/{HOSTILE}/status"),
        json!({ "state": "online", "version": HOSTILE_VERSION,
                "workflow": { "active": { "id": HOSTILE_RUNNING } } })
        .to_string()
        .as_bytes(),
        true,
    );
    g.fleet.publish(
        &format!("aegis/v1/{HOSTILE}/receipts"),
        b"<svg onload=\"window.__pwned=4\">",
        false,
    );
    let hostile_path = format!("/api/v1/devices/{}", percent_encode(HOSTILE.as_bytes()));
    wait_for("the hostile device's status and receipt", || {
        let d = s.get(&hostile_path, &g.viewer);
        (d["status"]["online"] == true && d["last_receipt"]["verified"] == false).then_some(())
    });

    // A rollout in two steps whose devices hold the document until released: the first
    // step's first device answers, its second does not yet.
    let w = g.fleet.workflow(1, 60);
    let digest = g.upload(&s, &w);
    for d in &g.fleet.devices {
        g.fleet.set(d, &digest, Behaviour::Hold);
    }
    let created = g.create(
        &s,
        json!({ "workflow": digest, "group": GROUP, "steps": [50, 100], "answer_timeout_s": 600 }),
    );
    let rollout = created["id"].as_str().unwrap().to_string();
    let step = |k: u64| -> Vec<String> {
        created["targets"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["step"] == k)
            .map(|t| t["device"].as_str().unwrap().to_string())
            .collect()
    };
    let (held, later) = (step(0), step(1));
    assert_eq!((held.len(), later.len()), (2, 2), "{created}");
    wait_for("the first step's devices hold the document", || {
        held.iter()
            .all(|d| g.fleet.received(d).contains(&digest))
            .then_some(())
    });
    g.fleet.release(&held[0]);
    wait_for("the first device's answer", || {
        (g.rollout(&s, &rollout)["progress"][0]["applied"] == 1).then_some(())
    });

    let scene = Scene {
        g: &g,
        rollout,
        held,
        later,
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Err(e) = rt.block_on(walk(&scene, s)) {
        panic!("{e}");
    }
}

fn percent_encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                (*b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Everything the operators do, in one browser.
async fn walk(sc: &Scene<'_>, s: Server) -> Result<(), BrowserError> {
    let g = sc.g;
    let label = format!("dashboard-{:?}", g.backend).to_ascii_lowercase();
    let b = Browser::start(Viewport::Desktop, &s.base, &artifacts(), &label).await?;

    // Without a token the page asks for one and shows nothing else.
    b.goto("/").await?;
    b.wait_js(
        "the sign-in form",
        "return !document.getElementById('signin').hidden",
        WAIT,
    )
    .await?;
    let views_hidden = b
        .execute("return [...document.querySelectorAll('section[id^=view-]')].every(s => s.hidden)")
        .await?;
    b.ensure(views_hidden == json!(true), "a view shows before any token")
        .await?;
    b.screenshot("signin").await?;

    // A viewer: every device, the hostile one's strings as text, nothing injected.
    sign_in(&b, &g.viewer).await?;
    b.wait_js(
        "five device rows",
        "return document.querySelectorAll('#fleet-table tbody tr').length === 5",
        WAIT,
    )
    .await?;
    let fleet = rows(&b, "#fleet-table").await?;
    let hostile = fleet.iter().find(|r| r[0] == HOSTILE);
    b.ensure(
        hostile.is_some_and(|r| {
            r[1] == HOSTILE_GROUP
                && r[2].starts_with("online")
                && r[3] == HOSTILE_VERSION
                && r[5] == HOSTILE_RUNNING
                && r[7].starts_with("unverified")
        }),
        format!("the hostile device's row as text: {hostile:?} (of {fleet:?})"),
    )
    .await?;
    let injected = b
        .execute(
            "return { elements: document.querySelectorAll('main img, main svg, main b, main tbody script').length, \
             pwned: window.__pwned === undefined ? null : window.__pwned };",
        )
        .await?;
    b.ensure(
        injected == json!({ "elements": 0, "pwned": null }),
        format!("markup from the API became elements or ran: {injected}"),
    )
    .await?;
    for d in &g.fleet.devices {
        let row = fleet.iter().find(|r| &r[0] == d);
        b.ensure(
            row.is_some_and(|r| r[1] == GROUP && r[2].starts_with("online") && r[4] == "1"),
            format!("{d}: online in {GROUP} with trust version 1: {row:?}"),
        )
        .await?;
    }
    // The token is in the tab's session storage: not in the address, not in a cookie.
    let kept = b
        .execute_with(
            "return { url: location.href.includes(arguments[0]), cookie: document.cookie, \
             stored: sessionStorage.getItem('chimera-serve.token') === arguments[0] };",
            vec![json!(g.viewer)],
        )
        .await?;
    b.ensure(
        kept == json!({ "url": false, "cookie": "", "stored": true }),
        format!("where the token is: {kept}"),
    )
    .await?;
    wait_live(&b).await?;
    b.screenshot("fleet-viewer").await?;

    // Rollouts: the first step's progress.
    tab(&b, "rollouts").await?;
    wait_text(
        &b,
        "#rollouts-table .step-label",
        "step 1 (50 %): 1/2 applied, 1 published",
    )
    .await?;
    wait_text(
        &b,
        "#rollouts-table [data-step='1'] .step-label",
        "step 2 (100 %): 0/2 applied, 2 pending",
    )
    .await?;
    b.screenshot("rollouts-viewer").await?;
    // The viewer presses pause: the service refuses, the page says so, nothing changed.
    b.click("#rollouts-table button[data-action=pause]").await?;
    let refused = wait_text(&b, "#notice", "403").await?;
    b.ensure(
        refused.contains("token:viewer has role viewer; this route needs operator"),
        format!("the refusal shown: {refused:?}"),
    )
    .await?;
    b.ensure(
        g.rollout(&s, &sc.rollout)["state"] == "running",
        "a viewer paused the rollout",
    )
    .await?;
    b.screenshot("pause-refused").await?;
    // The audit log is an admin's.
    tab(&b, "audit").await?;
    wait_text(&b, "#audit-denied", "The audit log needs an admin token").await?;
    b.screenshot("audit-viewer").await?;

    // An operator pauses it.
    sign_out(&b).await?;
    sign_in(&b, &g.operator).await?;
    tab(&b, "rollouts").await?;
    b.click("#rollouts-table button[data-action=pause]").await?;
    wait_text(&b, "#notice", "paused.").await?;
    wait_text(&b, "#rollouts-table tbody tr", "paused by token:op").await?;
    b.ensure(
        g.rollout(&s, &sc.rollout)["state"] == "paused",
        "the operator's pause did not reach the service",
    )
    .await?;
    // Its devices, one by one.
    b.click("#rollouts-table tbody tr a").await?;
    let states = wait_targets(&b, |t| t.len() == 4).await?;
    let state_of = |d: &String| states.iter().find(|t| &t.0 == d).map(|t| t.1.as_str());
    b.ensure(
        state_of(&sc.held[0]) == Some("applied")
            && state_of(&sc.held[1]) == Some("published")
            && sc.later.iter().all(|d| state_of(d) == Some("pending")),
        format!("the paused rollout's devices: {states:?}"),
    )
    .await?;
    b.screenshot("rollout-paused").await?;

    // The held device answers (recorded while paused), the operator resumes: the second
    // step goes out.
    g.fleet.release(&sc.held[1]);
    b.click("#rollout-actions button[data-action=resume]")
        .await?;
    wait_targets(&b, |t| {
        t.iter().all(|(d, state)| {
            state
                == if sc.later.contains(d) {
                    "published"
                } else {
                    "applied"
                }
        })
    })
    .await?;
    // Its devices answer with nobody at the page: what they did arrives over the stream
    // (the page's fallback poll is 30 s away).
    let seen = events_seen(&b).await?;
    for d in &sc.later {
        g.fleet.release(d);
    }
    wait_text(&b, "#rollout-facts", "completed").await?;
    wait_targets(&b, |t| t.iter().all(|t| t.1 == "applied")).await?;
    let now_seen = events_seen(&b).await?;
    b.ensure(
        now_seen > seen,
        format!("no event came over the stream ({seen} before, {now_seen} after)"),
    )
    .await?;
    b.screenshot("rollout-completed").await?;

    // An admin reads the audit log: who paused and resumed.
    sign_out(&b).await?;
    sign_in(&b, &g.admin).await?;
    tab(&b, "audit").await?;
    b.wait_js(
        "audit rows",
        "return document.querySelectorAll('#audit-table tbody tr').length > 0",
        WAIT,
    )
    .await?;
    let audit = rows(&b, "#audit-table").await?;
    for action in ["rollout.paused", "rollout.running"] {
        b.ensure(
            audit
                .iter()
                .any(|r| r[1] == "token:op" && r[2] == action && r[3] == sc.rollout),
            format!("no {action} by token:op in {audit:?}"),
        )
        .await?;
    }
    b.screenshot("audit-admin").await?;

    // The service goes away: the page says the stream is gone. It comes back on the same
    // address: the page reconnects by itself.
    let port = s.base.rsplit(':').next().unwrap().to_string();
    drop(s);
    b.wait_js(
        "the disconnected indicator",
        "return document.getElementById('live').textContent.startsWith('disconnected')",
        WAIT,
    )
    .await?;
    b.screenshot("disconnected").await?;
    let config = std::fs::read_to_string(g.path().join("serve.yaml"))
        .unwrap()
        .replace("listen: 127.0.0.1:0", &format!("listen: 127.0.0.1:{port}"));
    std::fs::write(g.path().join("serve-again.yaml"), config).unwrap();
    let again = Server::start(g.path(), "serve-again.yaml");
    wait_live(&b).await?;
    tab(&b, "fleet").await?;
    b.wait_js(
        "the fleet again",
        "return document.querySelectorAll('#fleet-table tbody tr').length === 5",
        WAIT,
    )
    .await?;
    b.screenshot("reconnected").await?;
    b.close().await?;
    drop(again);
    Ok(())
}

async fn sign_in(b: &Browser, token: &str) -> Result<(), BrowserError> {
    b.fill("#token", token).await?;
    b.click("#token-form button[type=submit]").await?;
    b.wait_js(
        "the token taken",
        "return document.getElementById('signin').hidden",
        WAIT,
    )
    .await
    .map(|_| ())
}

async fn sign_out(b: &Browser) -> Result<(), BrowserError> {
    b.click("#forget").await?;
    b.wait_js(
        "the sign-in form again",
        "return !document.getElementById('signin').hidden \
         && sessionStorage.getItem('chimera-serve.token') === null",
        WAIT,
    )
    .await
    .map(|_| ())
}

async fn tab(b: &Browser, view: &str) -> Result<(), BrowserError> {
    b.click(&format!("#tabs a[data-view={view}]")).await?;
    b.wait_js_with(
        &format!("the {view} view"),
        "return !document.getElementById('view-' + arguments[0]).hidden",
        vec![json!(view)],
        WAIT,
    )
    .await
    .map(|_| ())
}

async fn wait_live(b: &Browser) -> Result<(), BrowserError> {
    b.wait_js(
        "the live indicator",
        "return document.getElementById('live').textContent === 'live'",
        WAIT,
    )
    .await
    .map(|_| ())
}

/// Waits until a shown element `css` matches says `part`; returns its text.
async fn wait_text(b: &Browser, css: &str, part: &str) -> Result<String, BrowserError> {
    let v = b
        .wait_js_with(
            &format!("{css} to say {part:?}"),
            "const e = [...document.querySelectorAll(arguments[0])]\
               .find(e => !e.closest('[hidden]') && e.textContent.includes(arguments[1]));\
             return e ? e.textContent : false;",
            vec![json!(css), json!(part)],
            WAIT,
        )
        .await?;
    Ok(v.as_str().unwrap_or_default().to_string())
}

/// The texts of the cells of each body row of `table`.
async fn rows(b: &Browser, table: &str) -> Result<Vec<Vec<String>>, BrowserError> {
    let v = b
        .execute_with(
            "return [...document.querySelectorAll(arguments[0] + ' tbody tr')]\
               .map(r => [...r.cells].map(c => c.textContent));",
            vec![json!(table)],
        )
        .await?;
    serde_json::from_value(v).map_err(|e| BrowserError::Other(format!("rows of {table}: {e}")))
}

/// Waits until the rollout page's devices, as (device, state), satisfy `ok`.
async fn wait_targets(
    b: &Browser,
    ok: impl Fn(&[(String, String)]) -> bool,
) -> Result<Vec<(String, String)>, BrowserError> {
    let t0 = std::time::Instant::now();
    loop {
        let targets: Vec<(String, String)> = rows(b, "#targets-table")
            .await?
            .into_iter()
            .map(|r| (r[0].clone(), r[2].clone()))
            .collect();
        if !targets.is_empty() && ok(&targets) {
            return Ok(targets);
        }
        if t0.elapsed() > WAIT {
            b.ensure(false, format!("the rollout's devices stayed {targets:?}"))
                .await?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many events the page has taken from the stream.
async fn events_seen(b: &Browser) -> Result<u64, BrowserError> {
    let v = b
        .execute("return Number(document.getElementById('live').dataset.events || 0);")
        .await?;
    Ok(v.as_u64().unwrap_or(0))
}
