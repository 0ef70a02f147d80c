//! Config (`GET /config`): the effective configuration in an editor (YAML, secrets shown as
//! `***`), `POST /api/config/validate` (every problem at its field path and line, from the
//! validator `aegis check-config` uses) and `POST /api/config` (save and apply: see
//! [`crate::web::edit`]). Without a configuration file (`aegis demo`) the page only shows
//! the configuration in force.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, Response};
use serde_json::json;

use super::{PagesState, esc, layout_script};
use crate::web::edit::{Change, SaveError, Saved};
use crate::web::{Role, Viewer};

/// Largest request body of the editor's endpoints: the largest configuration file, as a
/// JSON string (escaping can double it).
pub(super) const BODY_LIMIT: usize = 2 * aegis_config::MAX_CONFIG_BYTES as usize + 4096;

/// `GET /config`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let Some(editor) = s.editor.clone() else {
        let pretty = serde_json::to_string_pretty(&s.config).unwrap_or_default();
        return layout_script(
            &viewer,
            "Config",
            None,
            &format!(
                "<p>The configuration in force (passwords shown as ***). This run has no \
                 configuration file (aegis demo), so it cannot be edited here.</p><pre>{}</pre>",
                esc(&pretty)
            ),
            None,
        );
    };
    let snap = tokio::task::spawn_blocking(move || editor.snapshot()).await;
    let snap = match snap {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return layout_script(
                &viewer,
                "Config",
                None,
                &format!("<p class=\"error\">{}</p>", esc(&e.to_string())),
                None,
            );
        }
        Err(e) => {
            return layout_script(
                &viewer,
                "Config",
                None,
                &format!("<p class=\"error\">reading the configuration: {e}</p>"),
                None,
            );
        }
    };
    let mut body = String::new();
    let text = match (&snap.config, snap.redacted_text()) {
        (Ok(_), Some(t)) => t,
        (config, _) => {
            // The file on disk does not validate (edited by hand since the start): its
            // problems, and its YAML (secrets hidden) to fix.
            let problems = config.as_ref().err().cloned().unwrap_or_default();
            body.push_str(
                "<p class=\"error\">The configuration file does not validate now; fix it \
                 below:</p><ul>",
            );
            for p in problems {
                body.push_str(&format!(
                    "<li><code>{}</code> {}</li>",
                    esc(&p.path),
                    esc(&p.reason)
                ));
            }
            body.push_str("</ul>");
            snap.value
                .clone()
                .map(|mut v| {
                    crate::web::edit::redact_yaml(&mut v);
                    serde_yaml_ng::to_string(&v).unwrap_or_default()
                })
                .unwrap_or_default()
        }
    };
    let (csrf, role) = (viewer.csrf.clone(), viewer.role);
    let path = s
        .editor
        .as_ref()
        .map(|e| e.path().display().to_string())
        .unwrap_or_default();
    body.push_str(&format!(
        "<p>The configuration file <code>{}</code>, every option spelled out (defaults \
         included). Secrets show as <code>***</code>: leave them so to keep the stored one \
         (only while the address it is sent to stays the same).</p>",
        esc(&path)
    ));
    if role < Role::Admin {
        body.push_str(
            "<p class=\"note\">As a technician you may change the <code>pipeline</code> \
             section; other sections need an admin.</p>",
        );
    }
    if let Some(why) = s.editor.as_ref().and_then(|e| e.pipeline_refused()) {
        body.push_str(&format!("<p class=\"note\">{}</p>", esc(why)));
    }
    body.push_str(&format!(
        "<div id=\"config-editor\" data-csrf=\"{}\" data-base=\"{}\">\
         <textarea id=\"config-text\" spellcheck=\"false\" autocomplete=\"off\" rows=\"36\" \
         aria-label=\"Configuration (YAML)\">{}</textarea>\
         <p class=\"actions\"><button type=\"button\" id=\"config-validate\">Validate</button> \
         <button type=\"button\" id=\"config-save\">Save</button></p>\
         <p id=\"config-result\" role=\"status\"></p><ol id=\"config-problems\"></ol></div>",
        esc(&csrf),
        esc(&snap.digest),
        esc(&text)
    ));
    layout_script(&viewer, "Config", None, &body, Some("/static/config.js"))
}

/// The editor's request body.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Submitted {
    /// The configuration as YAML.
    text: String,
    /// SHA-256 of the file the page showed.
    #[serde(default)]
    base: Option<String>,
}

fn submitted(body: &[u8]) -> Result<Submitted, Box<Response>> {
    serde_json::from_slice(body).map_err(|e| {
        Box::new(super::json_with(
            StatusCode::BAD_REQUEST,
            json!({ "ok": false, "error": format!("the body is not {{\"text\": \"…\", \"base\": \"…\"}}: {e}") }),
        ))
    })
}

fn no_editor() -> Response {
    super::json_with(
        StatusCode::NOT_FOUND,
        json!({ "ok": false, "error": "this run has no configuration file (aegis demo): nothing to edit" }),
    )
}

/// A save's answer: 200 with what happened, or the error's status with every problem.
pub(super) fn save_reply(r: Result<Saved, SaveError>) -> Response {
    match r {
        Ok(saved) => super::json_with(
            StatusCode::OK,
            json!({ "ok": true, "message": saved.message, "changed": saved.changed, "digest": saved.digest }),
        ),
        Err(e) => {
            let problems = match &e {
                SaveError::Invalid(ps) => json!(ps),
                _ => json!([]),
            };
            super::json_with(
                e.status(),
                json!({ "ok": false, "error": e.to_string(), "problems": problems }),
            )
        }
    }
}

/// `POST /api/config/validate`: `{"text": …}` → `{"ok", "problems": [{path, reason, line}],
/// "changed": [sections]}`.
pub(super) async fn validate(State(s): State<Arc<PagesState>>, body: Bytes) -> Response {
    let Some(editor) = s.editor.clone() else {
        return no_editor();
    };
    let sub = match submitted(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let r = tokio::task::spawn_blocking(move || editor.validate(&sub.text)).await;
    match r {
        Ok(Ok((_, changed))) => super::json_with(
            StatusCode::OK,
            json!({ "ok": true, "message": "valid", "problems": [], "changed": changed }),
        ),
        Ok(Err(e)) => save_reply(Err(e)),
        Err(e) => super::json_with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "ok": false, "error": format!("validation stopped: {e}") }),
        ),
    }
}

/// `POST /api/config`: `{"text": …, "base": …}` → saved and applied, or refused with why.
pub(super) async fn save(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    body: Bytes,
) -> Response {
    let Some(editor) = s.editor.clone() else {
        return no_editor();
    };
    let sub = match submitted(&body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    // On its own task: a browser that goes away mid-save does not cut it short.
    let r = tokio::spawn(async move {
        editor
            .save(&viewer, Change::Text(sub.text), sub.base.as_deref())
            .await
    })
    .await;
    match r {
        Ok(r) => save_reply(r),
        Err(e) => super::json_with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "ok": false, "error": format!("the save stopped: {e}") }),
        ),
    }
}
