//! Cameras (`GET /cameras`, `GET /api/cameras`): one tile per stream with its health, last
//! error, fps in and out, and reconnects (the `/healthz` data). A technician also gets a
//! form per camera of the local pipeline (name, URL, password; remove) and an "add camera"
//! form: `POST /api/cameras` builds the configuration's new `pipeline.sources` and saves it
//! through the config editor's one save path ([`crate::web::edit::Editor::save`]).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout_script, live, text};
use crate::web::edit::{CameraChange, Change};
use crate::web::{Role, Viewer};

/// A source state in plain words.
fn state_words(state: &str) -> &str {
    match state {
        "connecting" => "Connecting…",
        "streaming" => "Streaming",
        "stalled" => "Connected, but no video is arriving",
        "backing_off" => "Connection lost; waiting to reconnect",
        "ended" => "Stream ended",
        "failed" => "Failed (see last error)",
        "waiting" => "Waiting for a publisher",
        other => other,
    }
}

/// Each stream's health and rates.
pub(super) fn cameras(s: &PagesState) -> Value {
    let rates = super::stream_rates(&s.metrics);
    let streams: Vec<Value> = crate::web::streams_json(&s.metrics)
        .into_iter()
        .map(|mut v| {
            let r = v["id"].as_str().and_then(|id| rates.get(id));
            v["fps_in"] = r.map_or(Value::Null, |r| r["fps_in"].clone());
            v["fps_out"] = r.map_or(Value::Null, |r| r["fps_out"].clone());
            v["state_text"] = json!(state_words(v["state"].as_str().unwrap_or("")));
            v
        })
        .collect();
    json!({ "streams": streams })
}

/// `GET /api/cameras`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    let v = tokio::task::spawn_blocking(move || cameras(&s))
        .await
        .unwrap_or_default();
    super::json(v)
}

/// A camera of the local pipeline, as the forms show it.
struct Configured {
    id: String,
    /// The URL with its secrets as `***`.
    url: String,
    has_password: bool,
}

/// The forms' context: the configured cameras and the file's digest, or why there are no
/// forms.
struct Forms {
    cameras: Vec<Configured>,
    base: String,
    csrf: String,
    /// A note above the forms (a workflow runs instead, pipeline edits refused...).
    notes: Vec<String>,
}

fn forms(s: &PagesState, viewer: Option<&Viewer>) -> Result<Forms, String> {
    let viewer = viewer
        .filter(|v| v.role >= Role::Technician)
        .ok_or_else(String::new)?;
    let editor = s.editor.as_ref().ok_or_else(|| {
        "This run has no configuration file (aegis demo): cameras cannot be changed here."
            .to_string()
    })?;
    if let Some(why) = editor.pipeline_refused() {
        return Err(why.to_string());
    }
    let snap = editor.snapshot().map_err(|e| e.to_string())?;
    let sources = snap
        .value
        .as_ref()
        .and_then(|v| v.get("pipeline"))
        .and_then(|p| p.get("sources"))
        .and_then(serde_yaml_ng::Value::as_sequence)
        .ok_or("The configuration file has no readable pipeline.sources: use the Config page.")?;
    let str_of = |v: &serde_yaml_ng::Value, k: &str| {
        v.get(k)
            .and_then(serde_yaml_ng::Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let cameras = sources
        .iter()
        .map(|src| Configured {
            id: str_of(src, "id"),
            url: crate::web::edit::redact_url(&str_of(src, "url")),
            has_password: src.get("password").is_some_and(|p| !p.is_null()),
        })
        .collect();
    let mut notes = Vec::new();
    let workflow = s.workflow.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(id) = workflow["active"]["id"].as_str() {
        notes.push(format!(
            "The signed workflow {id} is active: the cameras below are the local default              pipeline's. Changes are saved, and run when no workflow is active."
        ));
    }
    Ok(Forms {
        cameras,
        base: snap.digest,
        csrf: viewer.csrf.clone(),
        notes,
    })
}

fn hidden(name: &str, value: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"{}\" value=\"{}\">",
        esc(name),
        esc(value)
    )
}

/// The edit and remove forms of camera `i`.
fn camera_forms(f: &Forms, i: usize, c: &Configured) -> String {
    let common = format!("{}{}", hidden("csrf", &f.csrf), hidden("base", &f.base));
    format!(
        "<form class=\"camera-form\" method=\"post\" action=\"/api/cameras\" data-index=\"{i}\">\
         {common}{}{}\
         <label>Name <input name=\"id\" value=\"{}\" required maxlength=\"64\"></label>\
         <label>URL <input name=\"url\" value=\"{}\" required></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"new-password\" \
         placeholder=\"{}\"></label>\
         <button type=\"submit\">Save camera</button><span class=\"form-result\" role=\"status\"></span></form>\
         <form class=\"camera-form\" method=\"post\" action=\"/api/cameras\" data-index=\"{i}\" \
         data-confirm=\"Remove camera {}?\">{common}{}{}\
         <button type=\"submit\">Remove camera</button><span class=\"form-result\" role=\"status\"></span></form>",
        hidden("op", "edit"),
        hidden("source", &c.id),
        esc(&c.id),
        esc(&c.url),
        if c.has_password {
            "unchanged (stored)"
        } else {
            "none"
        },
        esc(&c.id),
        hidden("op", "remove"),
        hidden("source", &c.id),
    )
}

fn add_form(f: &Forms) -> String {
    format!(
        "<section class=\"tile\"><h2>Add a camera</h2>\
         <form class=\"camera-form\" method=\"post\" action=\"/api/cameras\" data-index=\"{}\">{}{}{}\
         <label>Name <input name=\"id\" required maxlength=\"64\" placeholder=\"cam2\"></label>\
         <label>URL <input name=\"url\" required placeholder=\"rtsp://192.0.2.10/stream1\"></label>\
         <label>User <input name=\"username\" autocomplete=\"off\"></label>\
         <label>Password <input name=\"password\" type=\"password\" autocomplete=\"new-password\"></label>\
         <button type=\"submit\">Add camera</button><span class=\"form-result\" role=\"status\"></span></form></section>",
        f.cameras.len(),
        hidden("csrf", &f.csrf),
        hidden("base", &f.base),
        hidden("op", "add"),
    )
}

/// `GET /cameras`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let me = viewer.clone();
    let (v, forms) = tokio::task::spawn_blocking(move || (cameras(&s), forms(&s, Some(&me))))
        .await
        .unwrap_or_else(|e| (Value::Null, Err(e.to_string())));
    let mut body = String::new();
    match &forms {
        Ok(f) => {
            for n in &f.notes {
                body.push_str(&format!("<p class=\"note\">{}</p>", esc(n)));
            }
        }
        Err(why) if !why.is_empty() => {
            body.push_str(&format!("<p class=\"note\">{}</p>", esc(why)));
        }
        Err(_) => {}
    }
    body.push_str("<div class=\"tiles\">");
    let streams = v["streams"].as_array().cloned().unwrap_or_default();
    if streams.is_empty() {
        body.push_str("<p>No stream is running.</p>");
    }
    let configured = |id: &str| {
        forms
            .as_ref()
            .ok()
            .and_then(|f| f.cameras.iter().position(|c| c.id == id).map(|i| (f, i)))
    };
    for (i, st) in streams.iter().enumerate() {
        let k = |f: &str| format!("streams.{i}.{f}");
        let id = text(&st["id"]);
        let form = configured(&id)
            .map(|(f, j)| camera_forms(f, j, &f.cameras[j]))
            .unwrap_or_default();
        body.push_str(&format!(
            "<section class=\"tile\"><h2>{}</h2><p class=\"state\">{}</p><dl>\
             <dt>Last error</dt><dd>{}</dd><dt>fps in / out</dt><dd>{} / {}</dd>\
             <dt>Reconnects</dt><dd>{}</dd><dt>Frames</dt><dd>{}</dd>\
             <dt>Decoder</dt><dd>{}</dd></dl>{form}</section>",
            esc(&id),
            live(&k("state_text"), &text(&st["state_text"])),
            live(&k("last_error"), &text(&st["last_error"])),
            live(&k("fps_in"), &text(&st["fps_in"])),
            live(&k("fps_out"), &text(&st["fps_out"])),
            live(&k("reconnects"), &text(&st["reconnects"])),
            live(&k("frames"), &text(&st["frames"])),
            live(&k("decoder"), &text(&st["decoder"])),
        ));
    }
    if let Ok(f) = &forms {
        let running: Vec<String> = streams.iter().map(|st| text(&st["id"])).collect();
        for (j, c) in f.cameras.iter().enumerate() {
            if running.contains(&c.id) {
                continue;
            }
            body.push_str(&format!(
                "<section class=\"tile\"><h2>{}</h2><p class=\"state\">Not running \
                 (in the configuration file)</p>{}</section>",
                esc(&c.id),
                camera_forms(f, j, c)
            ));
        }
        body.push_str(&add_form(f));
    }
    body.push_str("</div>");
    let script = forms.is_ok().then_some("/static/cameras.js");
    layout_script(&viewer, "Cameras", Some("/api/cameras"), &body, script)
}

/// `POST /api/cameras` (form fields `op` = add|edit|remove, `source`, `id`, `url`,
/// `username`, `password`, `base`): the change saved through the config editor.
pub(super) async fn change(
    State(s): State<Arc<PagesState>>,
    viewer: Viewer,
    body: Bytes,
) -> Response {
    let Some(editor) = s.editor.clone() else {
        return super::json_with(
            StatusCode::NOT_FOUND,
            json!({ "ok": false, "error": "this run has no configuration file (aegis demo): nothing to edit" }),
        );
    };
    let mut f = crate::web::form_fields(&body);
    let mut take = |k: &str| f.remove(k).unwrap_or_default();
    let (op, source, base) = (take("op"), take("source"), take("base"));
    let change = match op.as_str() {
        "add" => CameraChange::Add {
            id: take("id"),
            url: take("url"),
            username: take("username"),
            password: take("password"),
        },
        "edit" => CameraChange::Edit {
            source,
            id: take("id"),
            url: take("url"),
            password: take("password"),
        },
        "remove" => CameraChange::Remove { source },
        other => {
            return super::json_with(
                StatusCode::BAD_REQUEST,
                json!({ "ok": false, "error": format!("op {other:?}: add, edit or remove expected") }),
            );
        }
    };
    let base = (!base.is_empty()).then_some(base);
    let r = tokio::spawn(async move {
        editor
            .save(&viewer, Change::Camera(change), base.as_deref())
            .await
    })
    .await;
    match r {
        Ok(r) => super::config::save_reply(r),
        Err(e) => super::json_with(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({ "ok": false, "error": format!("the save stopped: {e}") }),
        ),
    }
}
