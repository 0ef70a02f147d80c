//! Workflows (`GET /workflows`, `GET /api/workflows`): the active and previous signed
//! workflow, the history of the applier's signed answers (applied, rolled back, rejected,
//! revoked: times, digests, reasons) with each signed `.mu` receipt
//! (`GET /workflows/receipt/{id}`), and the latest refusals of unauthenticated input. A
//! technician uploads a signed `.maml.md` (`POST /api/workflows`, the raw document): it goes
//! to the applier through the same queue as `POST /workflow`, so it gets exactly the same
//! verification, and the page shows the verdict and its reason.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout_script, text};
use crate::store::{Record, now_us};
use crate::web::{Role, Viewer};

/// History rows shown.
const HISTORY_ROWS: usize = 100;
/// Refusal rows shown.
const REFUSAL_ROWS: usize = 20;

fn time(ts_us: i64) -> String {
    crate::store::export::format_utc(ts_us)
}

/// The status, the history (newest first) and the latest refusals.
pub(super) fn workflows(s: &PagesState) -> Result<Value, crate::store::StoreError> {
    let status = s.workflow.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let conn = match crate::store::open_reader(&s.store_path) {
        Ok(c) => c,
        Err(crate::store::StoreError {
            problem: crate::store::StoreProblem::Missing,
            ..
        }) => {
            return Ok(json!({ "status": status, "history": [], "refused": [] }));
        }
        Err(e) => return Err(e),
    };
    let e = |x: rusqlite::Error| crate::store::StoreError {
        path: s.store_path.clone(),
        problem: crate::store::StoreProblem::Sqlite(x),
    };
    let mut stmt = conn
        .prepare(
            "SELECT id, ts_us, via, workflow_id, sequence, digest, verdict, reason, \
             receipt IS NOT NULL FROM workflow_history ORDER BY id DESC LIMIT ?1",
        )
        .map_err(e)?;
    let history: Vec<Value> = stmt
        .query_map([HISTORY_ROWS as i64], |r| {
            Ok(json!({
                "id": r.get::<_, i64>(0)?,
                "time": time(r.get(1)?),
                "via": r.get::<_, String>(2)?,
                "workflow_id": r.get::<_, String>(3)?,
                "sequence": r.get::<_, i64>(4)?,
                "digest": r.get::<_, String>(5)?,
                "verdict": r.get::<_, String>(6)?,
                "reason": r.get::<_, String>(7)?,
                "receipt": r.get::<_, bool>(8)?,
            }))
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    let mut stmt = conn
        .prepare(
            "SELECT ts_us, actor, action, detail FROM audit WHERE action LIKE 'workflow.refused%' \
             OR action = 'workflow.upload' ORDER BY id DESC LIMIT ?1",
        )
        .map_err(e)?;
    let refused: Vec<Value> = stmt
        .query_map([REFUSAL_ROWS as i64], |r| {
            Ok(json!({
                "time": time(r.get(0)?),
                "actor": r.get::<_, String>(1)?,
                "action": r.get::<_, String>(2)?,
                "detail": r.get::<_, String>(3)?,
            }))
        })
        .map_err(e)?
        .collect::<Result<_, _>>()
        .map_err(e)?;
    Ok(json!({ "status": status, "history": history, "refused": refused }))
}

/// `GET /api/workflows`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    match tokio::task::spawn_blocking(move || workflows(&s)).await {
        Ok(Ok(v)) => super::json(v),
        Ok(Err(e)) => super::json_with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": e.to_string() }),
        ),
        Err(e) => super::json_with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "error": e.to_string() }),
        ),
    }
}

fn entry_row(name: &str, e: &Value) -> String {
    if e.is_null() {
        return format!("<tr><th>{}</th><td colspan=\"4\">none</td></tr>", esc(name));
    }
    format!(
        "<tr><th>{}</th><td>{}</td><td>sequence {}</td><td>{}</td><td><code>{}</code></td></tr>",
        esc(name),
        esc(&text(&e["id"])),
        esc(&text(&e["sequence"])),
        esc(&text(&e["applied_at"])),
        esc(&text(&e["digest"])),
    )
}

/// `GET /workflows`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let uploads = s.workflows.is_some();
    let v = tokio::task::spawn_blocking(move || workflows(&s)).await;
    let v = match v {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            return layout_script(
                &viewer,
                "Workflows",
                None,
                &format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
                None,
            );
        }
        Err(e) => {
            return layout_script(
                &viewer,
                "Workflows",
                None,
                &format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
                None,
            );
        }
    };
    let mut body = String::new();
    let status = &v["status"];
    if status.is_null() {
        body.push_str("<p>Signed workflows are off on this device (workflows.enabled).</p>");
    } else {
        body.push_str(&format!(
            "<table class=\"facts\">{}{}<tr><th>Trust</th><td colspan=\"4\">version {} ({})</td></tr></table>",
            entry_row("Active", &status["active"]),
            entry_row("Previous", &status["previous"]),
            esc(&text(&status["trust_version"])),
            esc(&text(&status["trust"]["state"])),
        ));
        if status["active"].is_null() {
            body.push_str("<p>No signed workflow is active: the local default pipeline runs.</p>");
        }
        body.push_str(&firmware_section(&status["firmware"]));
        for w in status["waiting"].as_array().into_iter().flatten() {
            body.push_str(&format!(
                "<p class=\"note\">Waiting since {} for {} (from {}, sha256 <code>{}</code>): \
                 applied once model delivery installs it.</p>",
                esc(&text(&w["since"])),
                esc(&text(&w["needs"])),
                esc(&text(&w["topic"])),
                esc(&text(&w["sha256"])),
            ));
        }
    }
    let me = Some(viewer.clone());
    let mut script = None;
    match (&me, uploads) {
        (Some(me), true) if me.role >= Role::Technician => {
            script = Some("/static/workflows.js");
            body.push_str(&format!(
                "<h2>Apply a signed workflow</h2><form id=\"workflow-upload\" data-csrf=\"{}\">\
                 <label>Signed workflow (.maml.md) <input type=\"file\" id=\"workflow-file\" \
                 accept=\".md,text/markdown\" required></label> <button type=\"submit\">Apply</button>\
                 </form><p id=\"workflow-result\" role=\"status\"></p><pre id=\"workflow-receipt\" hidden></pre>\
                 <p class=\"note\">The document goes through the same checks as one from the fleet \
                 (signature, trust, target, freshness, replay, policy).</p>",
                esc(&me.csrf)
            ));
        }
        _ => {}
    }
    body.push_str("<h2>History</h2>");
    let history = v["history"].as_array().cloned().unwrap_or_default();
    if history.is_empty() {
        body.push_str("<p>No signed workflow was answered yet.</p>");
    } else {
        body.push_str(
            "<table><thead><tr><th>Time</th><th>Verdict</th><th>Workflow</th><th>Sequence</th>\
             <th>From</th><th>Reason</th><th>Digest</th><th>Receipt</th></tr></thead><tbody>",
        );
        for h in &history {
            let receipt = if h["receipt"].as_bool() == Some(true) {
                format!(
                    "<a href=\"/workflows/receipt/{}\">.mu</a>",
                    esc(&text(&h["id"]))
                )
            } else {
                "unsigned".into()
            };
            body.push_str(&format!(
                "<tr><td>{}</td><td class=\"verdict-{}\">{}</td><td>{}</td><td>{}</td><td>{}</td>\
                 <td>{}</td><td><code>{}</code></td><td>{receipt}</td></tr>",
                esc(&text(&h["time"])),
                esc(&text(&h["verdict"])),
                esc(&text(&h["verdict"])),
                esc(&text(&h["workflow_id"])),
                esc(&text(&h["sequence"])),
                esc(&text(&h["via"])),
                esc(&text(&h["reason"])),
                esc(&text(&h["digest"])),
            ));
        }
        body.push_str("</tbody></table>");
    }
    let refused = v["refused"].as_array().cloned().unwrap_or_default();
    if !refused.is_empty() {
        body.push_str(
            "<h2>Uploads and refused documents</h2><p>Documents that did not authenticate get no \
             signed receipt; they are listed from the audit trail.</p><table><thead><tr>\
             <th>Time</th><th>Who</th><th>What</th><th>Detail</th></tr></thead><tbody>",
        );
        for r in &refused {
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&r["time"])),
                esc(&text(&r["actor"])),
                esc(&text(&r["action"])),
                esc(&text(&r["detail"])),
            ));
        }
        body.push_str("</tbody></table>");
    }
    layout_script(&viewer, "Workflows", None, &body, script)
}

/// The firmware status (`workflows.firmware`): what runs, the order under way and its
/// progress, the last answer. Empty when firmware updates are off.
fn firmware_section(f: &Value) -> String {
    if f.is_null() {
        return String::new();
    }
    let mut h = String::from("<h2>Firmware</h2><table class=\"facts\">");
    let row = |h: &mut String, k: &str, v: String| {
        h.push_str(&format!("<tr><th>{k}</th><td>{}</td></tr>", esc(&v)));
    };
    row(
        &mut h,
        "Running",
        format!(
            "{} {} on {}, slot {} ({} updater)",
            text(&f["image"]),
            text(&f["running_version"]),
            text(&f["board"]),
            text(&f["slot"]),
            text(&f["updater"]),
        ),
    );
    let phase = text(&f["phase"]);
    let progress = &f["progress"];
    let phase = if progress.is_null() {
        phase
    } else {
        format!(
            "{phase}: {:.0} % of {} bytes{}",
            progress["percent"].as_f64().unwrap_or(0.0),
            text(&progress["total"]),
            progress["eta_s"]
                .as_u64()
                .map(|s| format!(", about {s} s left"))
                .unwrap_or_default()
        )
    };
    row(&mut h, "Now", phase);
    if let Some(p) = f["pending"].as_object() {
        row(
            &mut h,
            "Order under way",
            format!(
                "{} → {} since {} ({}; sha256 {})",
                p.get("from_version").map(text).unwrap_or_default(),
                p.get("version").map(text).unwrap_or_default(),
                p.get("accepted_at").map(text).unwrap_or_default(),
                p.get("phase").map(text).unwrap_or_default(),
                p.get("digest").map(text).unwrap_or_default(),
            ),
        );
    }
    if let Some(l) = f["last"].as_object() {
        row(
            &mut h,
            "Last answer",
            format!(
                "{}: {}",
                l.get("verdict").map(text).unwrap_or_default(),
                l.get("reason").map(text).unwrap_or_default(),
            ),
        );
    }
    h.push_str("</table>");
    h
}

/// `GET /workflows/receipt/{id}`: a signed `.mu` receipt of the history, as text.
pub(super) async fn receipt(State(s): State<Arc<PagesState>>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return (StatusCode::BAD_REQUEST, "the receipt id is a number").into_response();
    };
    let path = s.store_path.clone();
    let found = tokio::task::spawn_blocking(move || -> Result<Option<String>, String> {
        let conn = crate::store::open_reader(&path).map_err(|e| e.to_string())?;
        conn.query_row(
            "SELECT receipt FROM workflow_history WHERE id = ?1",
            [id],
            |r| r.get::<_, Option<String>>(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e.to_string()),
        })
        .map(Option::flatten)
    })
    .await;
    match found {
        Ok(Ok(Some(text))) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; charset=utf-8".to_string(),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    format!("inline; filename=\"receipt-{id}.mu\""),
                ),
            ],
            text,
        )
            .into_response(),
        Ok(Ok(None)) => (StatusCode::NOT_FOUND, "no signed receipt with this id").into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, e).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// `POST /api/workflows`: the raw signed document → the applier (the same queue and checks
/// as `POST /workflow`) → `{verdict, reason, receipt, apply_ms}`. An audit row names the
/// user.
pub(super) async fn upload(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    body: Bytes,
) -> Response {
    let Some(tx) = s.workflows.clone() else {
        return super::json_with(
            StatusCode::NOT_FOUND,
            json!({ "error": "workflows are disabled on this device (workflows.enabled)" }),
        );
    };
    let digest = aegis_ota::sha256_hex(&body);
    let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
    let req = crate::workflows::apply::Request {
        payload: body.to_vec(),
        reply: Some(reply_tx),
        user: Some(viewer.user.clone()),
    };
    if tx.try_send(req).is_err() {
        if let Some(c) = &s.counters {
            c.busy.fetch_add(1, Relaxed);
        }
        return super::json_with(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({ "error": "the agent is busy with other local requests; retry" }),
        );
    }
    let reply = match reply_rx.await {
        Ok(r) => r,
        Err(_) => {
            return super::json_with(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the agent stopped before answering" }),
            );
        }
    };
    if let Some(store) = &s.store {
        store.submit(Record::Audit {
            ts_us: now_us(),
            actor: format!("web:{}", viewer.user),
            action: "workflow.upload".into(),
            detail: aegis_ota::receipt::redact(&format!(
                "{} bytes, sha256 {digest}: {}{}",
                body.len(),
                reply.verdict.as_str(),
                if reply.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", reply.reason)
                }
            )),
        });
    }
    super::json(serde_json::to_value(&reply).unwrap_or_default())
}

#[cfg(test)]
mod firmware_tests {
    use super::*;

    #[test]
    fn the_firmware_section_shows_progress_the_order_and_the_last_answer_escaped() {
        assert_eq!(firmware_section(&Value::Null), "", "off: nothing");
        let f = json!({
            "image": "aegis-image", "board": "jetson-orin-nano-devkit", "updater": "swupdate",
            "running_version": "1.1.0", "slot": "b", "phase": "downloading",
            "progress": { "done": 512, "total": 2048, "percent": 25.0, "eta_s": 9 },
            "pending": { "digest": "ab", "image": "aegis-image", "version": "1.2.0",
                         "from_version": "1.1.0", "slot": null, "phase": "accepted",
                         "accepted_at": "2026-12-05T01:00:00Z" },
            "last": { "verdict": "rejected", "reason": "board: <script>x</script>" },
        });
        let h = firmware_section(&f);
        for want in [
            "aegis-image 1.1.0 on jetson-orin-nano-devkit, slot b (swupdate updater)",
            "downloading: 25 % of 2048 bytes, about 9 s left",
            "1.1.0 → 1.2.0 since 2026-12-05T01:00:00Z (accepted; sha256 ab)",
            "rejected: board: &lt;script&gt;x&lt;/script&gt;",
        ] {
            assert!(h.contains(want), "{want:?} not in {h}");
        }
        assert!(!h.contains("<script>"));
    }
}
