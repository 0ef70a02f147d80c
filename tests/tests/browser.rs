//! The technician web page in a real browser (headless Chromium through chromedriver), on a
//! desktop and on a phone viewport: what a technician does on site, step by step, each step
//! screenshotted into `<CARGO_TARGET_TMPDIR>/browser-artifacts/`. On the phone the page
//! must also never be wider than the screen.
//!
//! A new step is one more block in [`walk`] (or a test of its own over [`Walk`]).

use std::path::PathBuf;
use std::time::Duration;

use aegis_tests::browser::{Browser, BrowserError, Viewport, WAIT, have_browser};
use aegis_tests::web_agent::{
    ADMIN, AgentSetup, FAILING_STREAM, SEEDED_KIND, STREAM, TECHNICIAN, VIEWER, WebAgent,
};
use serde_json::json;

/// Events per page on the events page (`web::pages::events::PAGE_LIMIT`).
const PAGE: usize = 100;

/// The fleet broker password the config carries (the config page must not show it).
const FLEET_PASSWORD: &str = "fleet-Secret-42";

fn artifacts() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("browser-artifacts")
}

/// A browser on the agent's page: each step ends with [`Walk::step`].
struct Walk {
    b: Browser,
}

impl Walk {
    /// Screenshots the step as `name`; on the phone, checks that nothing is wider than the
    /// screen.
    async fn step(&self, name: &str) -> Result<(), BrowserError> {
        self.b.screenshot(name).await?;
        if self.b.viewport() == Viewport::Phone
            && let Some(over) = self.b.horizontal_overflow().await?
        {
            self.b.ensure(false, format!("{name}: {over}")).await?;
        }
        Ok(())
    }

    /// Follows the navigation link to `path` and waits for its page.
    async fn nav(&self, path: &str) -> Result<(), BrowserError> {
        self.b
            .click(&format!("header nav a[href='{path}']"))
            .await?;
        self.at(path).await
    }

    /// Waits until the browser shows `path`.
    async fn at(&self, path: &str) -> Result<(), BrowserError> {
        self.b
            .wait_js_with(
                &format!("the page {path}"),
                "return location.pathname === arguments[0] && document.readyState === 'complete'",
                vec![json!(path)],
                WAIT,
            )
            .await
            .map(|_| ())
    }

    /// The events table's rows as (stream, kind).
    async fn event_rows(&self) -> Result<Vec<(String, String)>, BrowserError> {
        let v = self
            .b
            .execute(
                "return [...document.querySelectorAll('main table.grid tr')].slice(1)\
                 .map(r => [r.cells[1].textContent, r.cells[2].textContent]);",
            )
            .await?;
        Ok(v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let s = |i: usize| r[i].as_str().unwrap_or_default().to_string();
                (s(0), s(1))
            })
            .collect())
    }

    /// Sets the events page's kind filter to `kind` and submits the form.
    async fn filter_kind(&self, kind: &str) -> Result<(), BrowserError> {
        self.b.fill("form.filters input[name=kind]", kind).await?;
        self.b.click("form.filters button").await?;
        self.b
            .wait_js_with(
                &format!("the events filtered by kind {kind}"),
                "return new URLSearchParams(location.search).get('kind') === arguments[0] \
                 && document.readyState === 'complete'",
                vec![json!(kind)],
                WAIT,
            )
            .await
            .map(|_| ())
    }

    async fn logout(&self) -> Result<(), BrowserError> {
        self.b.click("form[action='/logout'] button").await?;
        self.at("/login").await
    }
}

/// Everything a technician does, in `viewport`.
async fn walk(agent: &WebAgent, viewport: Viewport) -> Result<(), BrowserError> {
    let b = Browser::start(viewport, &agent.base_url(), &artifacts(), "walk").await?;
    let w = Walk { b };
    let b = &w.b;

    // Not logged in: the overview sends the browser to the login page.
    b.goto("/").await?;
    w.at("/login").await?;
    b.wait_for("form[action='/login']", WAIT).await?;
    w.step("login-page").await?;

    // A wrong password: the page says so, and no session starts.
    b.login(ADMIN.name, "not-the-password").await?;
    let alert = b.text("[role=alert]").await?;
    b.ensure(
        alert.contains("wrong user name or password"),
        format!("the login alert says {alert:?}"),
    )
    .await?;
    w.step("login-wrong-password").await?;
    b.goto("/").await?;
    w.at("/login").await?;

    // The admin logs in and lands on the overview: the device id, and the stream's fps,
    // which the page's script keeps fresh (the value shown is first replaced by a marker:
    // only a refresh from /api/overview can turn it back into a number).
    b.login(ADMIN.name, ADMIN.password).await?;
    w.at("/").await?;
    let device = b.text("[data-key=device]").await?;
    b.ensure(
        device == "browser-test",
        format!("the overview's device is {device:?}"),
    )
    .await?;
    let fps_of = "const row = [...document.querySelectorAll('main table.grid tr')]\
                  .find(r => r.cells[0] && r.cells[0].textContent === arguments[0]);\
                  const el = row && row.querySelector('[data-key$=\".fps_in\"]');";
    let marked = b
        .execute_with(
            &format!("{fps_of} if (!el) return false; el.textContent = 'refreshing'; return true;"),
            vec![json!(STREAM)],
        )
        .await?;
    b.ensure(
        marked == json!(true),
        format!("no fps cell for {STREAM} on the overview"),
    )
    .await?;
    let fps = b
        .wait_js_with(
            &format!("a refreshed fps > 0 for {STREAM}"),
            &format!("{fps_of} const v = parseFloat(el.textContent); return v > 0 ? v : false;"),
            vec![json!(STREAM)],
            Duration::from_secs(30),
        )
        .await?;
    b.ensure(fps.as_f64().is_some_and(|f| f > 0.0), format!("fps {fps}"))
        .await?;
    w.step("overview").await?;

    // Cameras: a tile per stream, the looping one streaming, the missing file failed with
    // its error.
    w.nav("/cameras").await?;
    let tile = "const t = [...document.querySelectorAll('.tile')]\
                .find(t => t.querySelector('h2').textContent === arguments[0]);";
    b.wait_js_with(
        &format!("the {STREAM} tile to say Streaming"),
        &format!("{tile} return !!t && t.querySelector('.state').textContent === 'Streaming';"),
        vec![json!(STREAM)],
        WAIT,
    )
    .await?;
    let gone = b
        .wait_js_with(
            &format!("the {FAILING_STREAM} tile with its error"),
            &format!(
                "{tile} const e = t && t.querySelector('[data-key$=\".last_error\"]');\
                 return !!e && e.textContent.includes('no-such-clip.mp4') && e.textContent;"
            ),
            vec![json!(FAILING_STREAM)],
            WAIT,
        )
        .await?;
    b.ensure(gone.is_string(), format!("the failed tile shows {gone}"))
        .await?;
    w.step("cameras").await?;

    // Events: a full first page, newest first (the failure after the seeded burst); the
    // kind filter narrows it to the one failure; the seeded kind pages forward.
    w.nav("/events").await?;
    let rows = w.event_rows().await?;
    b.ensure(
        rows.len() == PAGE && rows[0] == (FAILING_STREAM.into(), "source_failed".into()),
        format!(
            "the events page shows {} rows, first {:?}",
            rows.len(),
            rows.first()
        ),
    )
    .await?;
    w.step("events").await?;
    w.filter_kind("source_failed").await?;
    let rows = w.event_rows().await?;
    b.ensure(
        rows == [(FAILING_STREAM.to_string(), "source_failed".to_string())],
        format!("filtered by source_failed, the rows are {rows:?}"),
    )
    .await?;
    w.step("events-filtered").await?;
    w.filter_kind(SEEDED_KIND).await?;
    let rows = w.event_rows().await?;
    b.ensure(
        rows.len() == PAGE && rows.iter().all(|r| r.1 == SEEDED_KIND),
        format!("filtered by {SEEDED_KIND}: {} rows", rows.len()),
    )
    .await?;
    let older = b.texts("nav.pager a").await?;
    b.ensure(
        older == ["Older"],
        format!("page 1 of {} events links {older:?}", agent.seeded_events()),
    )
    .await?;
    b.click("nav.pager a").await?;
    b.wait_js(
        "page 2 of the events",
        "return new URLSearchParams(location.search).get('page') === '2' \
         && document.readyState === 'complete'",
        WAIT,
    )
    .await?;
    let rows = w.event_rows().await?;
    let expected = (agent.seeded_events() - PAGE).min(PAGE);
    b.ensure(
        rows.len() == expected && rows.iter().all(|r| r.1 == SEEDED_KIND),
        format!("page 2 shows {} rows, {expected} expected", rows.len()),
    )
    .await?;
    let links = b.texts("nav.pager a").await?;
    b.ensure(
        links.first().map(String::as_str) == Some("Newer"),
        format!("page 2 links {links:?}"),
    )
    .await?;
    w.step("events-page-2").await?;

    // Logs: the agent's recent lines.
    w.nav("/logs").await?;
    b.wait_js(
        "log lines",
        "const p = document.getElementById('log'); return !!p && p.textContent.trim().length > 0;",
        WAIT,
    )
    .await?;
    w.step("logs").await?;

    // Config: the configuration file in the editor, the broker password shown as ***.
    w.nav("/config").await?;
    b.wait_for("#config-text", WAIT).await?;
    let config = b
        .execute("return document.getElementById('config-text').value;")
        .await?;
    let config = config.as_str().unwrap_or_default();
    b.ensure(
        config.contains("***") && !config.contains(FLEET_PASSWORD),
        format!("the config editor shows the password as: {config}"),
    )
    .await?;
    w.step("config").await?;

    // Live: the stream plays as video (this agent has no recorder: the live view's own
    // encoder, opened for this viewer), frames keep coming; the JPEG fallback shows frames.
    w.nav("/live").await?;
    live_plays(b, "mse").await?;
    w.step("live").await?;
    b.execute(
        "const m = document.getElementById('live-mode'); m.value = 'jpeg'; \
               m.dispatchEvent(new Event('change')); return true;",
    )
    .await?;
    live_plays(b, "jpeg").await?;
    w.step("live-jpeg").await?;

    // Logging out ends the session: the overview sends the browser to the login page again.
    w.logout().await?;
    w.step("logged-out").await?;
    b.goto("/").await?;
    w.at("/login").await?;

    // A technician reads the logs too.
    b.login(TECHNICIAN.name, TECHNICIAN.password).await?;
    w.at("/").await?;
    w.nav("/logs").await?;
    b.wait_for("pre#log", WAIT).await?;
    // …keeps a clip of the stream now, and plays it: decrypted on the device, in the
    // browser's own player.
    w.nav("/clips").await?;
    b.click("form[action='/api/clips'] button").await?;
    w.at("/clips").await?;
    b.wait_js(
        "a clip to play (1 s pre-roll, 1 s post-roll)",
        "if (document.querySelector(\"a[href$='/video']\")) return true; \
         if (!window.__reloading) { window.__reloading = true; setTimeout(() => location.reload(), 500); } \
         return false;",
        Duration::from_secs(30),
    )
    .await?;
    w.step("clips").await?;
    b.click("a[href$='/video']").await?;
    // 1 s of pre-roll from a keyframe and 1 s of post-roll: 2 s when the keyframe falls
    // exactly on the pre-roll's start, which the player may show a frame (or a 90 kHz
    // tick) short.
    b.wait_js(
        "the clip playing in the browser",
        "const v = document.querySelector('video'); \
         if (v && v.error) { window.__waitState = 'media error ' + v.error.code; v.load(); } \
         if (v && v.paused) { v.muted = true; v.play().catch(() => {}); } \
         if (v) window.__waitState = JSON.stringify({ready: v.readyState, width: v.videoWidth, \
           duration: v.duration, paused: v.paused, network: v.networkState}); \
         return !!v && v.readyState >= 2 && v.videoWidth === 320 && v.duration >= 2 - 1 / 30 - 0.005;",
        Duration::from_secs(30),
    )
    .await?;
    w.step("clip-playing").await?;
    b.goto("/").await?;
    w.logout().await?;

    // A viewer sees the overview but is refused the config page.
    b.login(VIEWER.name, VIEWER.password).await?;
    w.at("/").await?;
    b.goto("/config").await?;
    let refusal = b.text("body").await?;
    b.ensure(
        refusal.contains("vic is a viewer; this needs a technician"),
        format!("the viewer on /config sees {refusal:?}"),
    )
    .await?;
    w.step("viewer-refused-config").await?;
    b.goto("/").await?;
    w.logout().await?;

    w.b.close().await
}

/// Waits until the live view plays in `mode` (`mse` or `jpeg`): at least 10 frames shown,
/// then 10 more (the picture keeps changing, it is not one frame).
async fn live_plays(b: &Browser, mode: &str) -> Result<(), BrowserError> {
    let shown = b
        .wait_js_with(
            &format!("the live view playing ({mode})"),
            "const l = window.aegisLive; return !!l && l.mode === arguments[0] \
             && l.frames >= 10 && l.frames;",
            vec![json!(mode)],
            Duration::from_secs(30),
        )
        .await?;
    let first = shown.as_u64().unwrap_or(0);
    b.wait_js_with(
        &format!("more live frames ({mode})"),
        "const l = window.aegisLive; return l.mode === arguments[0] && l.frames >= arguments[1];",
        vec![json!(mode), json!(first + 10)],
        Duration::from_secs(30),
    )
    .await?;
    Ok(())
}

/// The agent every walk runs against: a failing source next to the looping one, more than
/// a page of seeded events, a password in the config.
fn agent() -> WebAgent {
    WebAgent::start(&AgentSetup {
        failing_source: true,
        seed_events: PAGE + 20,
        extra: format!(
            "fleet: {{ enabled: false, username: edge, password: \"{FLEET_PASSWORD}\" }}\n"
        ),
        evidence: true,
        ..AgentSetup::default()
    })
}

async fn run(viewport: Viewport) {
    if !have_browser() {
        return;
    }
    let agent = agent();
    if let Err(e) = walk(&agent, viewport).await {
        panic!(
            "{e}\n(artifacts in {})\nthe agent's log:\n{}",
            artifacts().display(),
            agent.log()
        );
    }
}

#[tokio::test]
async fn a_technician_walks_the_web_page_on_a_desktop() {
    run(Viewport::Desktop).await;
}

#[tokio::test]
async fn a_technician_walks_the_web_page_on_a_phone() {
    run(Viewport::Phone).await;
}

/// The glass-to-glass probe: for `ms` milliseconds, each frame the browser presents is drawn
/// into a canvas and the `timestamp_overlay` stage's clock code read back from its pixels
/// (`clock_code: true` at x = y = 16, scale 2: 34 blocks of 16 px, 38 px from the top); the
/// latency is the frame's expected display time minus the wall clock the stage stamped.
const GLASS_TO_GLASS: &str = r#"
const done = arguments[arguments.length - 1];
const ms = arguments[0];
const v = document.getElementById('live-video');
const c = document.createElement('canvas');
const ctx = c.getContext('2d', { willReadFrequently: true });
const out = { latencies: [], unreadable: 0 };
const t0 = performance.now();
const B = 16, X = 16, Y = 38;
function read(now, md) {
  if (v.videoWidth >= X + 34 * B) {
    c.width = v.videoWidth; c.height = v.videoHeight;
    ctx.drawImage(v, 0, 0);
    const row = ctx.getImageData(X, Y + B / 2, 34 * B, 1).data;
    const lum = i => row[(i * B + B / 2) * 4];
    if (lum(0) - lum(1) > 100) {
      const thr = (lum(0) + lum(1)) / 2;
      let val = 0;
      for (let i = 2; i < 34; i++) val = val * 2 + (lum(i) > thr ? 1 : 0);
      const shown = Math.floor(performance.timeOrigin + md.expectedDisplayTime);
      out.latencies.push(((shown % 4294967296) - val + 4294967296) % 4294967296);
    } else {
      out.unreadable++;
    }
  }
  if (performance.now() - t0 < ms) v.requestVideoFrameCallback(read); else done(out);
}
v.requestVideoFrameCallback(read);
"#;

/// Milliseconds from navigation start to the load event of the page now shown.
const LOAD_MS: &str = "const n = performance.getEntriesByType('navigation')[0]; \
                       return n && n.loadEventEnd > 0 ? n.loadEventEnd : false;";

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().saturating_sub(1)) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Live view with the recorder's H.264 and a detector's overlays, measured; the config
/// editor's inline error; a signed workflow and a tampered copy uploaded from the page.
async fn console(agent: &WebAgent, gateway: &std::path::Path) -> Result<(), BrowserError> {
    let b = Browser::start(
        Viewport::Desktop,
        &agent.base_url(),
        &artifacts(),
        "console",
    )
    .await?;
    let w = Walk { b };
    let b = &w.b;
    b.goto("/").await?;
    b.login(ADMIN.name, ADMIN.password).await?;
    w.at("/").await?;

    // Load times of the overview and the live page (to the first frame shown), pipeline
    // running: recorded, not asserted.
    let mut overview = Vec::new();
    let mut live = Vec::new();
    let mut first_frame = Vec::new();
    for _ in 0..10 {
        b.goto("/").await?;
        w.at("/").await?;
        overview.push(
            b.wait_js("the overview's load time", LOAD_MS, WAIT)
                .await?
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        b.goto("/live").await?;
        w.at("/live").await?;
        live.push(
            b.wait_js("the live page's load time", LOAD_MS, WAIT)
                .await?
                .as_f64()
                .unwrap_or(f64::NAN),
        );
        let t = b
            .wait_js(
                "the first live frame",
                "return window.aegisLive && window.aegisLive.frames > 0 ? performance.now() : false;",
                Duration::from_secs(30),
            )
            .await?;
        first_frame.push(t.as_f64().unwrap_or(f64::NAN));
    }

    // The detector finds the faces; its boxes are drawn beside the video, and the checkboxes
    // take them off again (the picture itself carries no box).
    live_plays(b, "mse").await?;
    b.wait_js(
        "objects in the live metadata",
        "return parseInt(document.getElementById('live-objects').textContent) > 0;",
        Duration::from_secs(60),
    )
    .await?;
    let painted = "const c = document.getElementById('live-overlay'); \
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
                   let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n;";
    let on = b
        .wait_js(
            "boxes drawn on the overlay",
            &format!("const f = () => {{ {painted} }}; const n = f(); return n > 0 && n;"),
            WAIT,
        )
        .await?;
    w.step("live-overlays-on").await?;
    b.click("#ov-boxes").await?;
    b.click("#ov-ids").await?;
    b.wait_js(
        "an empty overlay with boxes and ids off",
        &format!("const f = () => {{ {painted} }}; return f() === 0;"),
        WAIT,
    )
    .await?;
    w.step("live-overlays-off").await?;
    b.ensure(on.as_u64().unwrap_or(0) > 0, format!("overlay pixels {on}"))
        .await?;

    // Glass to glass: the stamped clock read back from the displayed frames.
    let probe = b
        .client()
        .execute_async(GLASS_TO_GLASS, vec![json!(5000)])
        .await
        .map_err(|e| BrowserError::Other(format!("glass-to-glass probe: {e}")))?;
    let mut lat: Vec<f64> = probe["latencies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_f64())
        .collect();
    b.ensure(
        lat.len() >= 30 && lat.iter().all(|&l| l > 0.0 && l < 30_000.0),
        format!("clock codes read back: {probe}"),
    )
    .await?;
    let report = json!({
        "glass_to_glass_ms": { "samples": lat.len(), "p50": percentile(&mut lat, 0.5),
            "p95": percentile(&mut lat, 0.95), "unreadable_frames": probe["unreadable"] },
        "overview_load_ms": { "p50": percentile(&mut overview, 0.5), "p95": percentile(&mut overview, 0.95) },
        "live_load_ms": { "p50": percentile(&mut live, 0.5), "p95": percentile(&mut live, 0.95) },
        "live_first_frame_ms": { "p50": percentile(&mut first_frame, 0.5), "p95": percentile(&mut first_frame, 0.95) },
        "live": b.execute("return window.aegisLive;").await?,
    });
    eprintln!("browser measurements: {report}");
    std::fs::write(artifacts().join("measurements.json"), report.to_string())
        .map_err(|e| BrowserError::Other(format!("measurements.json: {e}")))?;

    // The config editor: a deliberate error is shown at its field path, nothing is saved.
    w.nav("/config").await?;
    b.wait_for("#config-text", WAIT).await?;
    let before = std::fs::read_to_string(agent.config()).unwrap_or_default();
    b.execute(
        "const t = document.getElementById('config-text'); \
         t.value = t.value.replace(/(\\n\\s*queue_depth:)\\s*\\d+/, '$1 0'); return true;",
    )
    .await?;
    b.click("#config-save").await?;
    let problem = b
        .wait_js(
            "the editor's inline error",
            "const l = [...document.querySelectorAll('#config-problems li')]; \
             return l.length > 0 && l.map(e => e.textContent).join(' | ');",
            WAIT,
        )
        .await?;
    let problem = problem.as_str().unwrap_or_default().to_string();
    b.ensure(
        problem.contains("pipeline.queue_depth") && problem.contains("between 1 and 64"),
        format!("the editor says {problem:?}"),
    )
    .await?;
    w.step("config-error-inline").await?;
    let after = std::fs::read_to_string(agent.config()).unwrap_or_default();
    b.ensure(
        before == after,
        "the config file changed after a refused save".to_string(),
    )
    .await?;

    // Workflows: a signed workflow is applied; a tampered copy is refused with the reason.
    w.nav("/workflows").await?;
    let upload = |file: std::path::PathBuf| async move {
        let input = b
            .client()
            .find(fantoccini::Locator::Css("#workflow-file"))
            .await
            .map_err(|e| BrowserError::Other(format!("the upload input: {e}")))?;
        input
            .send_keys(&file.display().to_string())
            .await
            .map_err(|e| BrowserError::Other(format!("choosing {}: {e}", file.display())))?;
        b.execute("document.getElementById('workflow-result').textContent = ''; return true;")
            .await?;
        b.click("#workflow-upload button[type=submit]").await?;
        let r = b
            .wait_js(
                "the upload's verdict",
                "const r = document.getElementById('workflow-result').textContent; \
                 return r && !r.startsWith('Verifying') && r;",
                Duration::from_secs(60),
            )
            .await?;
        Ok::<String, BrowserError>(r.as_str().unwrap_or_default().to_string())
    };
    let good = gateway.join("web.signed.maml.md");
    let verdict = upload(good.clone()).await?;
    b.ensure(
        verdict.starts_with("applied"),
        format!("the signed workflow: {verdict}"),
    )
    .await?;
    w.step("workflow-applied").await?;
    let text = std::fs::read_to_string(&good).unwrap_or_default();
    let tampered = gateway.join("tampered.signed.maml.md");
    std::fs::write(
        &tampered,
        text.replacen("passthrough", "timestamp_overlay", 1),
    )
    .map_err(|e| BrowserError::Other(format!("tampered copy: {e}")))?;
    let verdict = upload(tampered).await?;
    b.ensure(
        !verdict.starts_with("applied") && verdict.to_lowercase().contains("signature"),
        format!("the tampered workflow: {verdict}"),
    )
    .await?;
    w.step("workflow-tampered-refused").await?;
    w.logout().await?;
    w.b.close().await
}

#[tokio::test]
async fn live_overlays_latency_config_errors_and_workflow_uploads_in_a_browser() {
    if !have_browser() {
        return;
    }
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let models = repo.join(".models");
    // The gateway's keys, trust and a signed workflow for this device; the clip: a sample
    // panning over the astronaut photo (a face for the detector) at 640x360, as the demo's.
    let g = tempfile::tempdir().unwrap();
    let gd = g.path();
    aegis_tests::gateway_and_device(gd, "orin-1", &["site-a"]);
    let clip = gd.join("faces.mp4");
    aegis_tests::aegis_ok(
        gd,
        &[
            "sample",
            "--out",
            clip.to_str().unwrap(),
            "--width",
            "640",
            "--height",
            "360",
            "--seconds",
            "4",
            "--background",
            repo.join(".samples/astronaut.png").to_str().unwrap(),
        ],
    );
    aegis_tests::draft_workflow(
        gd,
        "web",
        1,
        &format!(
            "  sources: [{{ id: cam0, url: \"file://{}\", loop: true, realtime: true }}]\n  stages: [{{ kind: passthrough }}]\n  sinks: [{{ kind: discard }}]",
            clip.display()
        ),
        "[]",
    );
    aegis_tests::chimera_ok(gd, &["sign", "web.maml.md", "--key", "gw.key"]);
    let gp = gd.display();
    let agent = WebAgent::start(&AgentSetup {
        device: "orin-1".into(),
        clip_file: Some(clip.clone()),
        stages: vec![
            "{ kind: detect, model: nn, classes: [FACE_FEMALE, FACE_MALE], min_score: 0.4, every_n_frames: 3 }".into(),
            "{ kind: timestamp_overlay, clock_code: true }".into(),
        ],
        sinks: vec![format!(
            "{{ kind: record, dir: {gp}/rec, segment_seconds: 10, disk_budget_mb: 50 }}"
        )],
        extra: format!(
            "inference:\n  runtime: {}\n  models:\n    - {{ name: nn, kind: nudenet, file: {} }}\n\
             workflows:\n  enabled: true\n  state_dir: {gp}/wf\n  keys_dir: {gp}/keys\n  \
             trust: {{ roots: [{gp}/root/root.pub], metadata: {gp}/trust.signed }}\n  \
             policy: {{ paths: [{gp}] }}\n  health: {{ window_s: 2, frames: 5 }}\n",
            models.join("libonnxruntime.so.1.32.0").display(),
            models.join("nudenet-320n.onnx").display(),
        ),
        ..AgentSetup::default()
    });
    if let Err(e) = console(&agent, gd).await {
        panic!(
            "{e}\n(artifacts in {})\nthe agent's log:\n{}",
            artifacts().display(),
            agent.log()
        );
    }
}

/// Reads the clock code `timestamp_overlay` draws (34 squares of 16 px at x = 16, 38 px
/// down, as `hal::pixel::read_code`) from each video frame the page presents, and keeps
/// (code, latency) pairs in `window.__codes`.
const CLOCK_READER: &str = r#"
const video = document.getElementById("live-video");
const c = document.createElement("canvas");
c.width = 560; c.height = 1;
const g = c.getContext("2d", { willReadFrequently: true });
window.__codes = []; window.__unreadable = 0;
const onFrame = function () {
  g.drawImage(video, 0, 46, 560, 1, 0, 0, 560, 1);
  const px = g.getImageData(0, 0, 560, 1).data;
  const lum = function (i) { const o = (16 + i * 16 + 8) * 4; return 0.299 * px[o] + 0.587 * px[o + 1] + 0.114 * px[o + 2]; };
  const white = lum(0), black = lum(1);
  if (white - black < 100) { window.__unreadable++; } else {
    const t = (white + black) / 2;
    let v = 0;
    for (let i = 2; i < 34; i++) v = v * 2 + (lum(i) > t ? 1 : 0);
    const now = Date.now() % 4294967296;
    window.__codes.push([v, (now - v + 4294967296) % 4294967296]);
  }
  video.requestVideoFrameCallback(onFrame);
};
video.requestVideoFrameCallback(onFrame);
"#;

#[tokio::test]
async fn webrtc_plays_the_stream_in_chromium_over_whep() {
    use aegis_tests::{http_exchange, login_cookie};
    if !have_browser() {
        return;
    }
    // Every WebRTC session on one UDP port (outputs.webrtc.udp).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let agent = WebAgent::start(&AgentSetup {
        device: "whep-test".into(),
        extra: format!("outputs: {{ webrtc: {{ udp: \"{udp}\" }} }}\n"),
        clip: (640, 360, 4.0),
        stages: vec!["{ kind: timestamp_overlay, clock_code: true }".into()],
        sinks: vec![
            "{ kind: record, dir: rec, segment_seconds: 10, encoder: { profile: baseline, low_latency: true, gop_frames: 30 } }".into(),
            "{ kind: webrtc, max_sessions: 2 }".into(),
        ],
        ..AgentSetup::default()
    });
    let port: u16 = agent.addr().rsplit(':').next().unwrap().parse().unwrap();

    // Over plain HTTP: only a viewer's session with its CSRF token, SDP only, known streams.
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        http_exchange(port, "POST", path, headers, body).unwrap().0
    };
    assert_eq!(
        post("/whep/cam0", &[("Content-Type", "application/sdp")], b"v=0"),
        401
    );
    let cookie = login_cookie(port, VIEWER.name, VIEWER.password);
    let (_, _, page) = http_exchange(port, "GET", "/live", &[("Cookie", &cookie)], b"").unwrap();
    let page = String::from_utf8_lossy(&page);
    let at = page
        .find("data-csrf=\"")
        .expect("the live page carries the CSRF token")
        + 11;
    let csrf = &page[at..at + page[at..].find('"').unwrap()];
    assert!(page.contains("value=\"webrtc\""), "no WebRTC mode offered");
    let sdp = [
        ("Cookie", cookie.as_str()),
        ("Content-Type", "application/sdp"),
    ];
    assert_eq!(post("/whep/cam0", &sdp, b"v=0"), 403, "no CSRF token");
    let with = |ct: &'static str| {
        [
            ("Cookie", cookie.clone()),
            ("X-CSRF-Token", csrf.to_owned()),
            ("Content-Type", ct.to_owned()),
        ]
    };
    let call = |h: &[(&str, String); 3], path: &str, body: &[u8]| {
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        post(path, &h, body)
    };
    assert_eq!(call(&with("text/plain"), "/whep/cam0", b"v=0"), 415);
    assert_eq!(call(&with("application/sdp"), "/whep/cam9", b"v=0"), 404);
    assert_eq!(
        call(&with("application/sdp"), "/whep/cam0", b"not an offer"),
        400
    );

    let run = async {
        let b = Browser::start(Viewport::Desktop, &agent.base_url(), &artifacts(), "whep").await?;
        b.login(VIEWER.name, VIEWER.password).await?;
        b.goto("/live?stream=cam0").await?;
        b.execute(
            "const s = document.getElementById('live-mode'); s.value = 'webrtc'; \
             s.dispatchEvent(new Event('change'));",
        )
        .await?;
        b.wait_js(
            "WebRTC playing",
            "const l = window.aegisLive; window.__waitState = l; \
             return l.mode === 'webrtc' && l.webrtc === 'connected' && l.frames >= 15;",
            Duration::from_secs(30),
        )
        .await?;
        b.execute(CLOCK_READER).await?;
        let codes = b
            .wait_js(
                "90 clock codes read from the WebRTC video",
                "window.__waitState = { n: window.__codes.length, bad: window.__unreadable }; \
                 return window.__codes.length >= 90 && window.__codes;",
                Duration::from_secs(30),
            )
            .await?;
        let stats = b
            .execute(
                "const pc = null; const r = {}; \
                 const v = document.getElementById('live-video'); \
                 r.w = v.videoWidth; r.h = v.videoHeight; return r;",
            )
            .await?;
        b.ensure(
            stats["w"] == 640 && stats["h"] == 360,
            format!("the video is 640x360: {stats}"),
        )
        .await?;
        let pairs: Vec<(u64, f64)> = codes
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        // No picture shown is earlier than the one before it. A loaded machine may show a
        // frame twice (the page then reads its code twice); it still moves on.
        let backwards = pairs.windows(2).filter(|w| w[1].0 < w[0].0).count();
        let repeated = pairs.windows(2).filter(|w| w[1].0 == w[0].0).count();
        b.ensure(
            backwards == 0 && repeated <= pairs.len() / 10,
            format!("{backwards} codes before the previous one, {repeated} repeated"),
        )
        .await?;
        let mut lat: Vec<f64> = pairs.iter().map(|p| p.1).collect();
        let p50 = percentile(&mut lat, 0.5);
        let p95 = percentile(&mut lat, 0.95);
        println!(
            "WebRTC glass to glass in Chromium: p50 {p50:.0} ms, p95 {p95:.0} ms over {} frames",
            lat.len()
        );
        // Leaving WebRTC mode ends the session on the device (DELETE of its Location).
        b.execute(
            "const s = document.getElementById('live-mode'); s.value = 'jpeg'; \
             s.dispatchEvent(new Event('change'));",
        )
        .await?;
        b.close().await
    };
    if let Err(e) = run.await {
        panic!(
            "{e}\n(artifacts in {})\nthe agent's log:\n{}",
            artifacts().display(),
            agent.log()
        );
    }
    // The session's media went through the shared port.
    let log = agent.log();
    assert!(
        log.lines()
            .any(|l| l.contains("webrtc session started") && l.contains(&udp.to_string())),
        "no session on {udp}:\n{log}"
    );
    let t0 = std::time::Instant::now();
    while !agent.log().contains("webrtc session ended") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the session did not end:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A WHIP publisher in the page: a 640x360 canvas drawing the wall clock as the
/// `timestamp_overlay` code (34 squares of 16 px at x = 16, 38 px down: `hal::pixel::read_code`)
/// every 33 ms, sent as a send-only video track (H.264 preferred) to the WHIP endpoint (an
/// absolute URL: the page is of another origin) with the bearer token; resolves once
/// connected, with the negotiated codec and the Location.
const WHIP_PUBLISHER: &str = r##"
const done = arguments[arguments.length - 1];
const [path, token] = [arguments[0], arguments[1]];
(async () => {
  const c = document.createElement("canvas");
  c.width = 640; c.height = 360;
  document.body.appendChild(c);
  const g = c.getContext("2d");
  const draw = () => {
    const v = Date.now() % 4294967296;
    g.fillStyle = "#404040"; g.fillRect(0, 0, 640, 360);
    for (let i = 0; i < 34; i++) {
      const white = i === 0 ? true : i === 1 ? false : Math.floor(v / 2 ** (31 - (i - 2))) % 2 === 1;
      g.fillStyle = white ? "#ebebeb" : "#101010";
      g.fillRect(16 + i * 16, 38, 16, 16);
    }
  };
  draw();
  window.__whipTimer = setInterval(draw, 33);
  const track = c.captureStream(30).getVideoTracks()[0];
  const pc = new RTCPeerConnection();
  window.__whipPc = pc;
  const tr = pc.addTransceiver(track, { direction: "sendonly" });
  const codecs = RTCRtpSender.getCapabilities("video").codecs;
  const h264 = codecs.filter(k => k.mimeType === "video/H264" && /packetization-mode=1/.test(k.sdpFmtpLine || ""));
  if (h264.length) tr.setCodecPreferences(h264.concat(codecs.filter(k => !h264.includes(k))));
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise(r => {
    if (pc.iceGatheringState === "complete") return r();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && r();
    setTimeout(r, 3000);
  });
  const res = await fetch(path, { method: "POST", body: pc.localDescription.sdp,
    headers: { "Content-Type": "application/sdp", "Authorization": "Bearer " + token } });
  const body = await res.text();
  if (res.status !== 201) return done({ error: res.status + " " + body });
  await pc.setRemoteDescription({ type: "answer", sdp: body });
  const t0 = performance.now();
  while (pc.connectionState !== "connected") {
    if (performance.now() - t0 > 15000) return done({ error: "not connected: " + pc.connectionState });
    await new Promise(r => setTimeout(r, 50));
  }
  const params = tr.sender.getParameters();
  done({ codec: params.codecs.length ? params.codecs[0].mimeType : "?", location: res.headers.get("Location"),
         h264_offered: h264.length > 0 });
})().catch(e => done({ error: String(e) }));
"##;

#[tokio::test]
async fn a_browser_publishes_into_the_pipeline_over_whip() {
    use aegis_tests::http_exchange;
    if !have_browser() {
        return;
    }
    const TOKEN: &str = "whip-test-token-0123456789abcdef";
    let rtsp = aegis_tests::files::free_port();
    let mut agent = WebAgent::start(&AgentSetup {
        device: "whip-test".into(),
        extra_sources: vec![format!(
            "{{ id: pub0, url: \"whip:\", publish_token: \"{TOKEN}\" }}"
        )],
        // The recorder's encoder without frame threads, restreamed over RTSP: the
        // published video read back live, for the glass-to-glass figure below.
        sinks: vec![
            "{ kind: record, dir: rec, segment_seconds: 2, encoder: { low_latency: true } }".into(),
            "{ kind: restream, streams: [pub0] }".into(),
        ],
        extra: format!("outputs:\n  rtsp: {{ listen: \"127.0.0.1:{rtsp}\", anonymous: true }}\n"),
        ..AgentSetup::default()
    });
    let port: u16 = agent.addr().rsplit(':').next().unwrap().parse().unwrap();
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        http_exchange(port, "POST", path, headers, body).unwrap().0
    };
    let bearer = format!("Bearer {TOKEN}");
    let sdp = ("Content-Type", "application/sdp");
    // The web server answers before the pipeline has started: until then every publisher
    // is told 503 (retry), not that its token is wrong.
    let not_sdp = [("Content-Type", "text/plain"), ("Authorization", &bearer)];
    let t0 = std::time::Instant::now();
    let first = loop {
        let code = post("/whip/pub0", &not_sdp, b"v=0");
        if code != 503 || t0.elapsed() > Duration::from_secs(30) {
            break code;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Refused over HTTP: not SDP, no token, a wrong one, a token for a source that is not
    // a whip one (the same answer: nothing tells which ids exist), not an offer.
    assert_eq!(first, 415);
    assert_eq!(post("/whip/pub0", &[sdp], b"v=0"), 401);
    let wrong = format!("Bearer {TOKEN}x");
    assert_eq!(
        post("/whip/pub0", &[sdp, ("Authorization", &wrong)], b"v=0"),
        401
    );
    assert_eq!(
        post("/whip/cam0", &[sdp, ("Authorization", &bearer)], b"v=0"),
        401
    );
    // Not an offer (once the pipeline runs: before, the source is not there, 404).
    let t0 = std::time::Instant::now();
    let bad_offer = loop {
        let code = post(
            "/whip/pub0",
            &[sdp, ("Authorization", &bearer)],
            b"not an offer",
        );
        if code != 404 || t0.elapsed() > Duration::from_secs(30) {
            break code;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(bad_offer, 400, "{}", agent.log());

    // The CORS preflight a browser page of another origin sends first.
    let (code, head, _) = http_exchange(
        port,
        "OPTIONS",
        "/whip/pub0",
        &[
            ("Origin", "http://studio.example"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
        b"",
    )
    .unwrap();
    let head = head.to_lowercase();
    assert_eq!(code, 204, "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("authorization"), "{head}");

    // The publishing page is of another origin (a studio app): a page server of its own.
    let studio = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let studio_url = format!("http://{}/", studio.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut s in studio.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let body = "<!doctype html><title>studio</title><body>studio</body>";
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let endpoint = format!("{}/whip/pub0", agent.base_url());
    // Glass to glass over WHIP: the page's clock code (drawn into the canvas, encoded by
    // Chromium, published), read back from the agent's RTSP restream by a client in this
    // process, on the same clock. Printed, not asserted.
    let mut probe = {
        use aegis_hal::source::{LiveSource, LiveSourceSettings, RtspTransport};
        let mut settings = LiveSourceSettings::new(
            format!("rtsp://127.0.0.1:{rtsp}/pub0"),
            aegis_hal::StreamId::new("probe"),
        );
        settings.transport = RtspTransport::Tcp;
        settings.decoder_threads = 1;
        // Until the publisher's video starts the stream is not served (404): retry often.
        settings.backoff_max = Duration::from_millis(500);
        LiveSource::new(settings)
    };
    let stop_probe = aegis_hal::source::VideoSource::stopper(&probe);
    let probe = std::thread::spawn(move || {
        use aegis_hal::source::VideoSource as _;
        let mut read = Vec::new();
        while let Ok(Some(frame)) = probe.next_frame() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis() as u32;
            let [y, _, _] = frame.planes();
            let plane = aegis_hal::pixel::Plane::new(y.data, y.stride);
            if let Some(code) = aegis_hal::pixel::read_code(plane, frame.layout.width, 16, 38, 16) {
                read.push((std::time::Instant::now(), now.wrapping_sub(code)));
            }
        }
        read
    });
    let run = async {
        let b = Browser::start(Viewport::Desktop, &agent.base_url(), &artifacts(), "whip").await?;
        b.client()
            .goto(&studio_url)
            .await
            .map_err(|e| BrowserError::Other(format!("the studio page: {e}")))?;
        let published = b
            .client()
            .execute_async(WHIP_PUBLISHER, vec![json!(endpoint), json!(TOKEN)])
            .await
            .map_err(|e| BrowserError::Other(format!("the WHIP publisher: {e}")))?;
        b.ensure(
            published["error"].is_null(),
            format!("publishing: {published}"),
        )
        .await?;
        println!("WHIP from Chromium: {published}");
        // About five seconds of video, then DELETE on the Location (with the token).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let location = published["location"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let deleted = b
            .client()
            .execute_async(
                "const done = arguments[arguments.length - 1]; \
                 fetch(new URL(arguments[0], arguments[2]), { method: 'DELETE', headers: { 'Authorization': 'Bearer ' + arguments[1] } }) \
                   .then(r => done(r.status), e => done(String(e))); clearInterval(window.__whipTimer);",
                vec![json!(location), json!(TOKEN), json!(endpoint)],
            )
            .await
            .map_err(|e| BrowserError::Other(format!("DELETE: {e}")))?;
        b.ensure(deleted == 200, format!("DELETE answered {deleted}"))
            .await?;
        b.close().await?;
        Ok::<_, BrowserError>(published)
    };
    let published = match run.await {
        Ok(p) => p,
        Err(e) => panic!(
            "{e}\n(artifacts in {})\nthe agent's log:\n{}",
            artifacts().display(),
            agent.log()
        ),
    };
    stop_probe.stop();
    let read = probe.join().unwrap();
    // The first second is the RTSP client's start (libavformat's probe, then catching up).
    let settled = read.first().map(|(t, _)| *t + Duration::from_secs(1));
    let mut glass: Vec<u32> = read
        .iter()
        .filter(|(t, _)| Some(*t) >= settled)
        .map(|(_, ms)| *ms)
        .collect();
    glass.sort_unstable();
    let at = |q: f64| glass[((glass.len() - 1) as f64 * q).round() as usize];
    assert!(
        glass.len() >= 20,
        "{} pictures of the published stream read back over RTSP\n{}",
        read.len(),
        agent.log()
    );
    println!(
        "WHIP → agent → RTSP, glass to glass (the page's canvas to this process's decoded picture): p50 {} ms, p95 {} ms, max {} ms over {} pictures",
        at(0.5),
        at(0.95),
        at(1.0),
        glass.len()
    );
    let t0 = std::time::Instant::now();
    while !agent.log().contains("whip publisher ended") {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the session did not end:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    agent.stop();
    // The recording of pub0: the clock codes the page drew, in order, none twice.
    let dir = agent.dir().join("rec").join("pub0");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", dir.display(), agent.log()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "mp4"))
        .collect();
    files.sort();
    let mut codes = Vec::new();
    for f in &files {
        let out = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-i"])
            .arg(f)
            // Every picture once (rawvideo would otherwise be filled to a constant rate).
            .args([
                "-fps_mode",
                "passthrough",
                "-f",
                "rawvideo",
                "-pix_fmt",
                "gray",
                "-",
            ])
            .output()
            .unwrap();
        for picture in out.stdout.chunks_exact(640 * 360) {
            let plane = aegis_hal::pixel::Plane::new(picture, 640);
            if let Some(v) = aegis_hal::pixel::read_code(plane, 640, 16, 38, 16) {
                codes.push(v);
            }
        }
    }
    let backwards = codes.windows(2).filter(|w| w[1] < w[0]).count();
    let repeated = codes.windows(2).filter(|w| w[1] == w[0]).count();
    let span_ms = codes
        .last()
        .unwrap_or(&0)
        .wrapping_sub(*codes.first().unwrap_or(&0));
    println!(
        "WHIP recording: {} pictures with a code over {span_ms} ms in {} files ({} repeated)",
        codes.len(),
        files.len(),
        repeated
    );
    assert!(
        codes.len() >= 60,
        "{} pictures of the publisher recorded ({published})\n{}",
        codes.len(),
        agent.log()
    );
    assert_eq!(backwards, 0, "codes out of order: {codes:?}");
    assert!(
        repeated <= codes.len() / 10,
        "{repeated} repeated: {codes:?}"
    );
    assert!(span_ms >= 3000, "{span_ms} ms of the publisher's clock");
}
