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

    // Config: the configuration in force, the broker password shown as ***.
    w.nav("/config").await?;
    let config = b.text("main pre").await?;
    b.ensure(
        config.contains("\"password\": \"***\"") && !config.contains(FLEET_PASSWORD),
        format!("the config page shows the password as: {config}"),
    )
    .await?;
    w.step("config").await?;

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

/// The agent every walk runs against: a failing source next to the looping one, more than
/// a page of seeded events, a password in the config.
fn agent() -> WebAgent {
    WebAgent::start(&AgentSetup {
        failing_source: true,
        seed_events: PAGE + 20,
        extra: format!(
            "fleet: {{ enabled: false, username: edge, password: \"{FLEET_PASSWORD}\" }}\n"
        ),
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
