//! The real-browser harness: Debian's Chromium, headless, driven over WebDriver by
//! `chromedriver` (both installed by `tools/setup.sh`), from Rust through `fantoccini`.
//!
//! A [`Browser`] owns its `chromedriver` (a child in its own process group, so dropping the
//! browser — a failed test included — also ends every Chromium process it started) and one
//! session in a [`Viewport`]: a desktop window or an emulated phone. Its helpers return a
//! [`BrowserError`] that names the selector or script and the page it was on; a wait that
//! times out also leaves a screenshot. Every screenshot goes to the artifacts folder the test
//! passes in (the browser tests use `<CARGO_TARGET_TMPDIR>/browser-artifacts/`), numbered in
//! the order they were taken, so a failed run can be looked at step by step.
//!
//! Steps are plain `async` calls on a [`Browser`]; a new step in a test needs no new
//! machinery. Chromium talks to nothing but loopback: its background services are off and
//! every other address goes to a proxy that does not exist.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::error::{CmdError, NewSessionError};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Debian's chromedriver (package `chromium-driver`).
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a wait polls by default: a hang guard for a loaded 2-core machine, not a
/// speed check.
pub const WAIT: Duration = Duration::from_secs(20);

/// Between two polls of a wait.
const POLL: Duration = Duration::from_millis(100);

/// The window a session renders into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewport {
    /// A 1280×800 desktop window.
    Desktop,
    /// A phone: 390×844 CSS pixels at pixel ratio 3, touch, a phone's user agent
    /// (Chromium's mobile emulation).
    Phone,
}

impl Viewport {
    /// Its name in artifact file names (`desktop`, `phone`).
    pub fn name(self) -> &'static str {
        match self {
            Viewport::Desktop => "desktop",
            Viewport::Phone => "phone",
        }
    }
}

/// The user agent of the phone viewport (a current Android Chrome's).
pub const PHONE_USER_AGENT: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 \
(KHTML, like Gecko) Chrome/124.0.0.0 Mobile Safari/537.36";

/// What went wrong driving the browser; each names what it was doing and where.
#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// Chromium or chromedriver is not installed.
    #[error("{0} not found: tools/setup.sh installs Debian's chromium and chromium-driver")]
    Missing(&'static str),
    /// chromedriver could not be started or did not come up.
    #[error("chromedriver on port {port}: {problem} (its log: {})", log.display())]
    Driver {
        /// The port it was asked to listen on.
        port: u16,
        /// What happened.
        problem: String,
        /// Its log file.
        log: PathBuf,
    },
    /// No browser session could be opened.
    #[error("opening a {viewport} Chromium session: {source} (chromedriver's log: {})", log.display())]
    Session {
        /// The viewport asked for.
        viewport: &'static str,
        /// chromedriver's log file.
        log: PathBuf,
        /// WebDriver's answer.
        source: Box<NewSessionError>,
    },
    /// A WebDriver command failed.
    #[error("{what} on {url}: {source}")]
    Command {
        /// The step (`click "button"`, `goto /events`, …).
        what: String,
        /// The page the browser was on.
        url: String,
        /// WebDriver's answer.
        source: Box<CmdError>,
    },
    /// A wait ran out of time.
    #[error(
        "gave up after {waited:?} waiting for {what} on {url}{}",
        screenshot.as_ref().map(|p| format!(" (screenshot: {})", p.display())).unwrap_or_default()
    )]
    Timeout {
        /// What was waited for (`element "h1"`, a script's condition).
        what: String,
        /// The page the browser was on.
        url: String,
        /// How long it waited.
        waited: Duration,
        /// The screenshot taken when it gave up, if one could be taken.
        screenshot: Option<PathBuf>,
    },
    /// A check on the page failed ([`Browser::ensure`]).
    #[error(
        "{what} on {url}{}",
        screenshot.as_ref().map(|p| format!(" (screenshot: {})", p.display())).unwrap_or_default()
    )]
    Check {
        /// What was expected, and what was found.
        what: String,
        /// The page the browser was on.
        url: String,
        /// The screenshot taken then, if one could be taken.
        screenshot: Option<PathBuf>,
    },
    /// Anything else a test step reports (a probe script's failure, a file it wrote).
    #[error("{0}")]
    Other(String),
    /// A screenshot could not be written.
    #[error("writing screenshot {}: {source}", path.display())]
    Artifact {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Whether Chromium and chromedriver are installed. When not, records a skip (see
/// [`crate::record_skip`]; under `CI` a skip fails the run, as it should: CI installs them).
pub fn have_browser() -> bool {
    match missing_tool() {
        None => true,
        Some(tool) => {
            crate::record_skip(&format!(
                "{tool} not installed (tools/setup.sh installs it)"
            ));
            false
        }
    }
}

fn missing_tool() -> Option<&'static str> {
    [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .find(|p| !Path::new(p).exists())
}

/// A `chromedriver` child on a loopback port, in its own process group; the group (the
/// driver and every Chromium it started) is killed on drop.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    /// Starts one on a free loopback port, logging to `log`, and waits until it answers.
    fn start(log: &Path) -> Result<Driver, BrowserError> {
        use std::os::unix::process::CommandExt;
        let port = free_port();
        let err = |problem: String| BrowserError::Driver {
            port,
            problem,
            log: log.to_path_buf(),
        };
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .arg("--log-level=WARNING")
            .arg("--append-log")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| err(format!("cannot start {CHROMEDRIVER}: {e}")))?;
        let mut d = Driver {
            child,
            port,
            log: log.to_path_buf(),
        };
        // Ready means chromedriver itself says so on `GET /status`: a bare TCP connect can
        // succeed against another process that took the port, or against itself (a loopback
        // connect whose source port equals the destination), and then the session fails.
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = d.child.try_wait() {
                return Err(err(format!("exited before it was ready: {status}")));
            }
            if d.ready() {
                return Ok(d);
            }
            if t0.elapsed() > WAIT {
                return Err(err(format!("not ready after {WAIT:?}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether `GET /status` answers with WebDriver's `"ready": true`.
    fn ready(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!(
            "GET /status HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        );
        if s.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reply = Vec::new();
        let _ = s.take(64 * 1024).read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply);
        let Some((_, body)) = reply.split_once("\r\n\r\n") else {
            return false;
        };
        serde_json::from_str::<Value>(body.trim())
            .ok()
            .and_then(|v| v["value"]["ready"].as_bool())
            .unwrap_or(false)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and the Chromium processes it started (they stay in
        // its group), so a failed test leaves no browser behind.
        let pgid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals the process group we created for our
        // own child (`process_group(0)` made its pid the group id).
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound, read, released: chromedriver takes it a moment later).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The session's capabilities: headless Chromium in `viewport`, its background services
/// off, and nothing but loopback reachable.
fn capabilities(viewport: Viewport) -> serde_json::Map<String, Value> {
    let mut args = vec![
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-domain-reliability",
        "--disable-client-side-phishing-detection",
        "--no-pings",
        "--mute-audio",
        // Loopback goes direct (Chromium never proxies it); anything else would go to a
        // proxy that does not exist, so no test can reach beyond the machine.
        "--proxy-server=http://127.0.0.1:9",
    ];
    let mut chrome = json!({ "binary": CHROMIUM });
    match viewport {
        Viewport::Desktop => args.push("--window-size=1280,800"),
        Viewport::Phone => {
            args.push("--window-size=390,844");
            chrome["mobileEmulation"] = json!({
                "deviceMetrics": { "width": 390, "height": 844, "pixelRatio": 3.0, "touch": true, "mobile": true },
                "userAgent": PHONE_USER_AGENT,
            });
        }
    }
    chrome["args"] = json!(args);
    let mut caps = serde_json::Map::new();
    caps.insert("browserName".into(), json!("chrome"));
    caps.insert("goog:chromeOptions".into(), chrome);
    caps
}

/// One headless Chromium session on a page served at a base URL (the agent's), with its
/// chromedriver. See the module docs.
pub struct Browser {
    // Dropped before the driver: the session's shutdown, when a runtime still runs it.
    client: Client,
    driver: Driver,
    base: String,
    viewport: Viewport,
    artifacts: PathBuf,
    prefix: String,
    shots: AtomicU32,
}

impl Browser {
    /// Starts chromedriver and a session in `viewport` for pages under `base` (for example
    /// `http://127.0.0.1:8080`). Screenshots go to `artifacts` as `<prefix>-NN-<name>.png`
    /// (prefix: `label` and the viewport), the driver's log beside them.
    pub async fn start(
        viewport: Viewport,
        base: &str,
        artifacts: &Path,
        label: &str,
    ) -> Result<Browser, BrowserError> {
        if let Some(tool) = missing_tool() {
            return Err(BrowserError::Missing(tool));
        }
        let prefix = format!("{label}-{}", viewport.name());
        std::fs::create_dir_all(artifacts).map_err(|source| BrowserError::Artifact {
            path: artifacts.to_path_buf(),
            source,
        })?;
        // Artifacts of an earlier run of the same test would mix with this run's.
        if let Ok(dir) = std::fs::read_dir(artifacts) {
            for e in dir.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{prefix}-"))
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let log = artifacts.join(format!("{prefix}-chromedriver.log"));
        // The free port is free when picked; another process may take it before chromedriver
        // binds it (chromedriver then exits at once): pick again.
        // A session whose request never reached a ready driver (a transport error, not a
        // refusal from WebDriver) is retried with a fresh driver too.
        let mut tries = 0;
        let (driver, client) = loop {
            tries += 1;
            let driver = match Driver::start(&log) {
                Err(BrowserError::Driver { .. }) if tries < 3 => continue,
                other => other?,
            };
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector)
                .capabilities(capabilities(viewport))
                .connect(&driver.url())
                .await
            {
                Ok(client) => break (driver, client),
                Err(
                    NewSessionError::Lost(_)
                    | NewSessionError::Failed(_)
                    | NewSessionError::FailedC(_),
                ) if tries < 3 => continue,
                Err(source) => {
                    return Err(BrowserError::Session {
                        viewport: viewport.name(),
                        log: log.clone(),
                        source: Box::new(source),
                    });
                }
            }
        };
        Ok(Browser {
            client,
            driver,
            base: base.trim_end_matches('/').to_string(),
            viewport,
            artifacts: artifacts.to_path_buf(),
            prefix,
            shots: AtomicU32::new(0),
        })
    }

    /// The viewport it renders in.
    pub fn viewport(&self) -> Viewport {
        self.viewport
    }

    /// The fantoccini client, for what the helpers do not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The page's URL (empty when the browser cannot say).
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }

    /// The page's path and query (`/events?kind=x`; empty when the browser cannot say).
    pub async fn path(&self) -> String {
        match self.client.current_url().await {
            Ok(u) => match u.query() {
                Some(q) => format!("{}?{q}", u.path()),
                None => u.path().to_string(),
            },
            Err(_) => String::new(),
        }
    }

    /// `source` as a [`BrowserError::Command`] for `what`, on the current page.
    async fn fail(&self, what: String, source: CmdError) -> BrowserError {
        BrowserError::Command {
            what,
            url: self.url().await,
            source: Box::new(source),
        }
    }

    /// Loads `path` (relative to the base URL) and waits for the page load.
    pub async fn goto(&self, path: &str) -> Result<(), BrowserError> {
        let url = format!("{}{path}", self.base);
        match self.client.goto(&url).await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail(format!("goto {path}"), e).await),
        }
    }

    /// Logs in through the login page's form: loads `/login`, fills in `user` and
    /// `password`, submits, and waits until the browser has left the `/login` it posted to
    /// (on a success it lands on `/`; on a failure the answer is the login page again,
    /// with its alert — [`Browser::wait_for`] `[role=alert]` to see it).
    pub async fn login(&self, user: &str, password: &str) -> Result<(), BrowserError> {
        self.goto("/login").await?;
        self.fill("input[name=user]", user).await?;
        self.fill("input[name=password]", password).await?;
        self.click("form[action='/login'] button[type=submit]")
            .await?;
        // A failed login answers the form's POST with the login page: the same URL, so wait
        // for the answer's document instead (the form's inputs are fresh and empty).
        self.wait_js(
            "the login form's answer",
            "return document.readyState === 'complete' && \
             (location.pathname !== '/login' || !!document.querySelector('[role=alert]'))",
            WAIT,
        )
        .await?;
        Ok(())
    }

    /// Waits until `css` matches an element (polling), and returns the first. On time out
    /// the error names the selector and the page and a screenshot is taken.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element, BrowserError> {
        let t0 = Instant::now();
        loop {
            match self.client.find(Locator::Css(css)).await {
                Ok(e) => return Ok(e),
                Err(e) if e.is_no_such_element() => {}
                Err(e) => return Err(self.fail(format!("find {css:?}"), e).await),
            }
            if t0.elapsed() >= timeout {
                return Err(self.timeout(format!("element {css:?}"), t0).await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `script` (a function body run in the page; `arguments` are `args`)
    /// returns something truthy, and returns it. On time out the error names `what` and the
    /// page, and a screenshot is taken.
    pub async fn wait_js(
        &self,
        what: &str,
        script: &str,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        self.wait_js_with(what, script, Vec::new(), timeout).await
    }

    /// [`Browser::wait_js`] with arguments for the script.
    pub async fn wait_js_with(
        &self,
        what: &str,
        script: &str,
        args: Vec<Value>,
        timeout: Duration,
    ) -> Result<Value, BrowserError> {
        let t0 = Instant::now();
        loop {
            // A script that runs while a navigation replaces the page fails; poll again.
            if let Ok(v) = self.client.execute(script, args.clone()).await
                && truthy(&v)
            {
                return Ok(v);
            }
            if t0.elapsed() >= timeout {
                return Err(self.timeout(what.to_string(), t0).await);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn timeout(&self, mut what: String, t0: Instant) -> BrowserError {
        // A wait's script may leave what it saw last in `window.__waitState`.
        if let Ok(state) = self
            .client
            .execute("return window.__waitState || null", Vec::new())
            .await
            && !state.is_null()
        {
            what.push_str(&format!(" (last seen: {state})"));
        }
        let screenshot = self
            .screenshot(&format!("timeout-{}", file_safe(&what)))
            .await
            .ok();
        BrowserError::Timeout {
            what,
            url: self.url().await,
            waited: t0.elapsed(),
            screenshot,
        }
    }

    /// `Ok` when `ok`; else a [`BrowserError::Check`] saying `what` (what was expected and
    /// what was found), with the page and a screenshot of it.
    pub async fn ensure(&self, ok: bool, what: impl Into<String>) -> Result<(), BrowserError> {
        if ok {
            return Ok(());
        }
        let what = what.into();
        let screenshot = self
            .screenshot(&format!("failed-{}", file_safe(&what)))
            .await
            .ok();
        Err(BrowserError::Check {
            what,
            url: self.url().await,
            screenshot,
        })
    }

    /// The rendered text of the first element `css` matches (waiting for it up to
    /// [`WAIT`]).
    pub async fn text(&self, css: &str) -> Result<String, BrowserError> {
        let e = self.wait_for(css, WAIT).await?;
        match e.text().await {
            Ok(t) => Ok(t),
            Err(err) => Err(self.fail(format!("text of {css:?}"), err).await),
        }
    }

    /// The rendered texts of every element `css` matches now (no wait; empty when none).
    pub async fn texts(&self, css: &str) -> Result<Vec<String>, BrowserError> {
        let all = match self.client.find_all(Locator::Css(css)).await {
            Ok(all) => all,
            Err(e) => return Err(self.fail(format!("find all {css:?}"), e).await),
        };
        let mut out = Vec::with_capacity(all.len());
        for e in all {
            match e.text().await {
                Ok(t) => out.push(t),
                Err(err) => return Err(self.fail(format!("text of {css:?}"), err).await),
            }
        }
        Ok(out)
    }

    /// Clicks the first element `css` matches (waiting for it up to [`WAIT`]). A click
    /// that navigates returns once the new page has loaded.
    pub async fn click(&self, css: &str) -> Result<(), BrowserError> {
        let e = self.wait_for(css, WAIT).await?;
        match e.click().await {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(format!("click {css:?}"), err).await),
        }
    }

    /// Replaces the value of the input `css` matches with `value`, as typed keys.
    pub async fn fill(&self, css: &str, value: &str) -> Result<(), BrowserError> {
        let e = self.wait_for(css, WAIT).await?;
        if let Err(err) = e.clear().await {
            return Err(self.fail(format!("clear {css:?}"), err).await);
        }
        match e.send_keys(value).await {
            Ok(()) => Ok(()),
            Err(err) => Err(self.fail(format!("type into {css:?}"), err).await),
        }
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn execute(&self, script: &str) -> Result<Value, BrowserError> {
        self.execute_with(script, Vec::new()).await
    }

    /// Runs `script` in the page with `arguments` = `args`.
    pub async fn execute_with(
        &self,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value, BrowserError> {
        match self.client.execute(script, args).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let first = script.lines().next().unwrap_or_default();
                Err(self.fail(format!("script {first:?}"), e).await)
            }
        }
    }

    /// Whether the page is wider than the window it is laid out in (a sideways scroll on a
    /// phone; a phone's browser widens `window.innerWidth` to the page, so the layout
    /// viewport's width is the measure): `Some(what)` saying by how much and which elements
    /// stick out, when it is.
    pub async fn horizontal_overflow(&self) -> Result<Option<String>, BrowserError> {
        let v = self
            .execute(
                "const d = document.documentElement, w = d.clientWidth;\
                 if (d.scrollWidth <= w + 1) return null;\
                 const out = [...document.body.querySelectorAll('*')]\
                   .filter(e => e.getBoundingClientRect().right > w + 1)\
                   .filter(e => !e.parentElement || e.parentElement.getBoundingClientRect().right <= w + 1)\
                   .slice(0, 5)\
                   .map(e => e.tagName.toLowerCase() + (e.className ? '.' + e.className : '') \
                        + ' to ' + Math.round(e.getBoundingClientRect().right) + 'px');\
                 return 'the page is ' + d.scrollWidth + 'px wide in a ' + w + 'px window: ' + out.join(', ');",
            )
            .await?;
        Ok(v.as_str().map(str::to_string))
    }

    /// Saves a screenshot of the window as `<prefix>-NN-<name>.png` in the artifacts folder
    /// and returns its path.
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf, BrowserError> {
        let n = self.shots.fetch_add(1, Ordering::Relaxed);
        let path = self
            .artifacts
            .join(format!("{}-{n:02}-{}.png", self.prefix, file_safe(name)));
        let png = match self.client.screenshot().await {
            Ok(png) => png,
            Err(e) => return Err(self.fail(format!("screenshot {name:?}"), e).await),
        };
        std::fs::write(&path, png).map_err(|source| BrowserError::Artifact {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Ends the session (Chromium exits) and then chromedriver.
    pub async fn close(self) -> Result<(), BrowserError> {
        let Browser { client, driver, .. } = self;
        let r = client.close().await;
        drop(driver);
        r.map_err(|source| BrowserError::Command {
            what: "close the session".into(),
            url: String::new(),
            source: Box::new(source),
        })
    }

    /// The chromedriver log (for a failure message).
    pub fn driver_log(&self) -> PathBuf {
        self.driver.log.clone()
    }
}

/// JavaScript's truthiness of a script's result.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0 && !x.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `s` with anything but ASCII letters, digits, `-` and `_` as `_`, at most 60 characters.
fn file_safe(s: &str) -> String {
    s.chars()
        .take(60)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness_follows_javascript() {
        for v in [json!(null), json!(false), json!(0), json!(""), json!(0.0)] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [
            json!(true),
            json!(1),
            json!("x"),
            json!([]),
            json!({}),
            json!(-0.5),
        ] {
            assert!(truthy(&v), "{v}");
        }
    }

    #[test]
    fn artifact_names_are_plain() {
        assert_eq!(file_safe("element \"h1\" / x"), "element__h1____x");
        assert_eq!(file_safe(&"a".repeat(100)).len(), 60);
    }

    #[test]
    fn the_phone_is_emulated_and_nothing_but_loopback_is_reachable() {
        let caps = capabilities(Viewport::Phone);
        let chrome = &caps["goog:chromeOptions"];
        assert_eq!(chrome["mobileEmulation"]["deviceMetrics"]["width"], 390);
        assert_eq!(
            chrome["mobileEmulation"]["deviceMetrics"]["pixelRatio"],
            3.0
        );
        let args: Vec<&str> = chrome["args"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        for a in [
            "--headless=new",
            "--no-sandbox",
            "--disable-background-networking",
        ] {
            assert!(args.contains(&a), "{a} missing: {args:?}");
        }
        assert!(
            args.iter()
                .any(|a| a.starts_with("--proxy-server=http://127.0.0.1:"))
        );
        let desktop = capabilities(Viewport::Desktop);
        assert!(
            desktop["goog:chromeOptions"]
                .get("mobileEmulation")
                .is_none()
        );
    }
}
