//! The technician web page changing a running device, end to end with the real binaries:
//! `aegis run` with a configuration file and signed workflows on (no broker needed), a
//! technician logged in over HTTP. The config editor's save goes live in place, a camera
//! added on the cameras page starts its stream, a signed workflow uploaded on the workflows
//! page passes the applier's checks and runs, a tampered copy is refused with the reason,
//! and the audit trail names the user.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aegis_tests::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// One HTTP/1.0 exchange on loopback: (status, head, body).
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, String) {
    try_http(port, method, path, headers, body).unwrap()
}

/// [`http`], or the error connecting (the agent is not listening yet).
fn try_http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, String, String)> {
    let (status, head, body) = http_exchange(port, method, path, headers, body)?;
    Ok((status, head, String::from_utf8_lossy(&body).into_owned()))
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The value of attribute `attr` after `marker` in `html`.
fn attr(html: &str, marker: &str, attr: &str) -> String {
    let at = html
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} in {html}"));
    let key = format!("{attr}=\"");
    let start = at + html[at..].find(&key).unwrap() + key.len();
    let end = start + html[start..].find('"').unwrap();
    html[start..end].to_string()
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

struct Agent {
    child: Child,
    port: u16,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    fn healthz(&self) -> serde_json::Value {
        try_http(self.port, "GET", "/healthz", &[], b"")
            .ok()
            .and_then(|(_, _, body)| serde_json::from_str(&body).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Waits until `check` holds for /healthz (a bound on waiting, not a performance test).
    fn wait(&self, what: &str, check: impl Fn(&serde_json::Value) -> bool, log: &Path) {
        let t0 = Instant::now();
        loop {
            let h = self.healthz();
            if check(&h) {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "{what} never happened: {h}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn frames(h: &serde_json::Value, stream: &str) -> u64 {
    h["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == stream)
        .and_then(|s| s["frames"].as_u64())
        .unwrap_or(0)
}

/// A signed workflow (by the gateway's issuer `gw.key`) over a looping clip through `stages`.
fn signed_workflow(d: &Path, name: &str, seq: u64, stages: &str) -> Vec<u8> {
    let pipeline = format!(
        "  sources: [{{ id: cam0, url: \"file://{}\", loop: true, realtime: true }}]\n  stages: {stages}\n  sinks: [{{ kind: discard }}]",
        d.join("clip.mp4").display()
    );
    let file = draft_workflow(d, name, seq, &pipeline, "[]");
    chimera_ok(d, &["sign", file.to_str().unwrap(), "--key", "gw.key"]);
    std::fs::read(d.join(format!("{name}.signed.maml.md"))).unwrap()
}

#[test]
fn a_technician_edits_the_config_adds_a_camera_and_applies_a_signed_workflow_from_the_page() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    gateway_and_device(d, "orin-1", &["site-a"]);
    make_clip(d, "clip.mp4", 320, 240, 2.0);
    let port = free_port();
    let dd = d.display();
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            "device: {{ id: orin-1, groups: [site-a] }}\n\
             pipeline:\n  sources: [{{ id: cam0, url: \"file://{dd}/clip.mp4\", loop: true, realtime: true }}]\n  stages: [{{ kind: timestamp_overlay }}]\n  sinks: [{{ kind: discard }}]\n\
             store: {{ path: {dd}/aegis.db }}\n\
             web: {{ listen: \"127.0.0.1:{port}\" }}\n\
             workflows:\n  enabled: true\n  state_dir: {dd}/wf\n  keys_dir: {dd}/keys\n  \
             trust: {{ roots: [{dd}/root/root.pub], metadata: {dd}/trust.signed }}\n  \
             policy: {{ paths: [{dd}] }}\n  health: {{ window_s: 2, frames: 5 }}\n"
        ),
    )
    .unwrap();
    let mut add = Command::new(aegis_bin())
        .args([
            "user",
            "add",
            "tess",
            "--role",
            "technician",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .current_dir(d)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin
        .take()
        .unwrap()
        .write_all(b"correct horse\n")
        .unwrap();
    assert!(add.wait().unwrap().success());
    let log = d.join("agent.log");
    let agent = Agent {
        child: Command::new(aegis_bin())
            .args(["run", "--config", cfg.to_str().unwrap()])
            .current_dir(d)
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(d.join("agent.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
        port,
    };
    agent.wait("streaming", |h| frames(h, "cam0") > 0, &log);

    // Log in; the pages carry the session's CSRF token.
    let cookie = aegis_tests::login_cookie(port, "tess", "correct horse");
    let get = |path: &str| http(port, "GET", path, &[("Cookie", &cookie)], b"");

    // 1. The config editor: the stage's scale changes, live and in place.
    let (code, _, html) = get("/config");
    assert_eq!(code, 200, "{html}");
    let csrf = attr(&html, "id=\"config-editor\"", "data-csrf");
    let base = attr(&html, "id=\"config-editor\"", "data-base");
    let start = html.find("<textarea").unwrap();
    let start = start + html[start..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</textarea>").unwrap();
    let text = unescape(&html[start..end]);
    assert!(text.contains("scale: 2"), "{text}");
    let post_json = |path: &str, v: serde_json::Value| {
        http(
            port,
            "POST",
            path,
            &[
                ("Cookie", &cookie),
                ("X-CSRF-Token", &csrf),
                ("Content-Type", "application/json"),
            ],
            v.to_string().as_bytes(),
        )
    };
    let (code, _, body) = post_json(
        "/api/config",
        serde_json::json!({ "text": text.replace("scale: 2", "scale: 3"), "base": base }),
    );
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert!(
        v["message"].as_str().unwrap().contains("switched in place"),
        "{v}"
    );
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("scale: 3"));
    assert!(d.join("aegis.yaml.bak").exists());
    // The status (what the fleet sees) says the local pipeline was changed, and by whom.
    let (_, _, body) = get("/api/overview");
    let edit = &json(&body)["workflow"]["local_edit"];
    assert_eq!(
        (edit["by"].as_str(), edit["runs"].as_bool()),
        (Some("web:tess"), Some(true)),
        "{body}"
    );
    let f0 = frames(&agent.healthz(), "cam0");
    agent.wait(
        "frames after the edit",
        |h| frames(h, "cam0") > f0 + 5,
        &log,
    );

    // 2. A camera added on the cameras page: the pipeline is rebuilt with its stream.
    let (_, _, html) = get("/cameras");
    let base = attr(&html, "name=\"base\"", "value");
    let form = format!(
        "op=add&id=cam1&url=file%3A%2F%2F{}&base={base}&csrf={csrf}",
        d.join("clip.mp4").display().to_string().replace('/', "%2F")
    );
    let (code, _, body) = http(
        port,
        "POST",
        "/api/cameras",
        &[
            ("Cookie", &cookie),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        form.as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("live now")
    );
    agent.wait("the new camera streaming", |h| frames(h, "cam1") > 0, &log);
    let saved = aegis_config::load(&cfg).unwrap();
    let ids: Vec<&str> = saved
        .pipeline
        .sources
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ids, ["cam0", "cam1"]);

    // 3. A signed workflow uploaded on the workflows page: verified and applied.
    let (_, _, html) = get("/workflows");
    let upload_csrf = attr(&html, "id=\"workflow-upload\"", "data-csrf");
    assert_eq!(upload_csrf, csrf);
    let upload = |doc: &[u8]| {
        http(
            port,
            "POST",
            "/api/workflows",
            &[
                ("Cookie", &cookie),
                ("X-CSRF-Token", &csrf),
                ("Content-Type", "text/markdown"),
            ],
            doc,
        )
    };
    let doc = signed_workflow(d, "wf1", 1, "[{ kind: passthrough }]");
    let (code, _, body) = upload(&doc);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["verdict"], "applied", "{v}");
    assert!(
        v["receipt"]
            .as_str()
            .unwrap()
            .contains("verdict: \"applied\""),
        "{v}"
    );
    agent.wait(
        "the workflow's pipeline (one stream)",
        |h| h["streams"].as_array().is_some_and(|s| s.len() == 1) && frames(h, "cam0") > 0,
        &log,
    );

    // 4. A tampered copy: refused before anything else, with the reason.
    let tampered = String::from_utf8(signed_workflow(d, "wf2", 2, "[{ kind: passthrough }]"))
        .unwrap()
        .replace("kind: passthrough", "kind: timestamp_overlay");
    let (code, _, body) = upload(tampered.as_bytes());
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["verdict"], "refused", "{v}");
    assert!(
        v["reason"].as_str().unwrap().contains("signature"),
        "the reason names the failed check: {v}"
    );
    assert!(
        v["receipt"].is_null(),
        "no signed answer to unauthenticated input: {v}"
    );

    // 5. While the workflow runs, a saved pipeline waits as the local default.
    let (_, _, html) = get("/config");
    let base = attr(&html, "id=\"config-editor\"", "data-base");
    let start = html.find("<textarea").unwrap();
    let start = start + html[start..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</textarea>").unwrap();
    let text = unescape(&html[start..end]);
    let (code, _, body) = post_json(
        "/api/config",
        serde_json::json!({ "text": text.replace("scale: 3", "scale: 4"), "base": base }),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        json(&body)["message"]
            .as_str()
            .unwrap()
            .contains("keeps running"),
        "{body}"
    );

    // The history: the applied workflow with its receipt, uploaded by tess (the store
    // writes in batches: wait for the row).
    let t0 = Instant::now();
    let v = loop {
        let (_, _, body) = get("/api/workflows");
        let v = json(&body);
        if !v["history"][0].is_null() && v["refused"].as_array().is_some_and(|r| r.len() >= 3) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no history: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let h = &v["history"][0];
    assert_eq!(
        (
            h["verdict"].as_str(),
            h["via"].as_str(),
            h["receipt"].as_bool()
        ),
        (Some("applied"), Some("web:tess"), Some(true)),
        "{v}"
    );
    let (code, _, receipt) = get(&format!("/workflows/receipt/{}", h["id"]));
    assert_eq!(code, 200);
    assert!(receipt.contains("verdict: \"applied\""), "{receipt}");

    // The audit trail names the user for every change.
    let out = aegis_ok(
        d,
        &[
            "db",
            "export",
            "--db",
            d.join("aegis.db").to_str().unwrap(),
            "--table",
            "audit",
            "--since",
            "all",
        ],
    );
    let rows: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let by_tess = |action: &str| {
        rows.iter()
            .filter(|r| r["actor"] == "web:tess" && r["action"] == action)
            .count()
    };
    assert_eq!(by_tess("config.edited"), 3, "{out}");
    assert_eq!(by_tess("workflow.upload"), 2, "{out}");
    assert!(
        rows.iter().any(|r| r["action"] == "workflow.refused"
            && r["detail"].as_str().unwrap_or("").contains("via web:tess")),
        "{out}"
    );
}
