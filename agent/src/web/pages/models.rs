//! Models (`GET /models`, `GET /api/models`): the models of the `inference` section with
//! their files (path, size, SHA-256), version, kind, the stages of the running pipeline that
//! use them and the execution provider that runs them, the package a pinned file comes from
//! (`tools/fetch-models.sh`), and the ONNX Runtime library.
//!
//! A file's digest is computed once and kept while its size, modification time and inode
//! stay the same ([`DigestCache`]): a 100 MB model is read once, not on every refresh. The
//! page's work runs on a blocking thread, never on the async workers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::response::{Html, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout, text};
use crate::inference::{InUse, ModelsInUse};
use crate::web::Viewer;

/// A file that `tools/fetch-models.sh` pins: where it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pin {
    /// The file's SHA-256.
    pub sha256: &'static str,
    /// The package (`name==version`).
    pub package: &'static str,
    /// Where in the package it is, or how it was made from it.
    pub origin: &'static str,
}

/// The files `tools/fetch-models.sh` fetches, by digest (a test keeps this list and the
/// script the same).
pub(super) const PINS: &[Pin] = &[
    Pin {
        sha256: "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f",
        package: "nudenet==3.4.2",
        origin: "nudenet/320n.onnx",
    },
    Pin {
        sha256: "4e358553387640443f03452dc4c7f10fbedc62ecd505e21d9c151b58894bda3b",
        package: "mediapipe==0.10.14",
        origin: "selfie_segmentation.tflite converted by tools/models/selfie_tflite2onnx.py",
    },
    Pin {
        sha256: "9ee168ec7c8f2a16c56fe8e1cfbc514974cbbb7e434051b455635f1bd1462f5c",
        package: "mediapipe==0.10.14",
        origin: "mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite",
    },
    Pin {
        sha256: "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f",
        package: "onnxruntime==1.32.0",
        origin: "onnxruntime/capi/libonnxruntime.so.1.32.0 (x86_64)",
    },
    Pin {
        sha256: "49852228a93995158b2a813d4df487d47a1b76b0eaa894507ef49e91b6d7954a",
        package: "onnxruntime==1.32.0",
        origin: "onnxruntime/capi/libonnxruntime.so.1.32.0 (aarch64)",
    },
];

/// What identifies a file's content without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    if !m.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(Stamp {
        size: m.len(),
        modified: m.modified().ok(),
        inode: m.ino(),
    })
}

/// A file as the page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FileDigest {
    /// Bytes.
    pub size: u64,
    /// Modification time.
    pub modified: Option<SystemTime>,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// SHA-256 digests of files, each computed once per (path, size, modification time, inode).
#[derive(Debug, Default)]
pub(super) struct DigestCache {
    known: Mutex<HashMap<PathBuf, (Stamp, String)>>,
    /// Held while a file is read, so that two requests do not hash the same file at once.
    reading: Mutex<()>,
    hashed: AtomicU64,
}

impl DigestCache {
    /// How many times a file was read and hashed.
    #[cfg(test)]
    pub(super) fn hashed(&self) -> u64 {
        self.hashed.load(Relaxed)
    }

    fn cached(&self, path: &Path, st: Stamp) -> Option<String> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known
            .get(path)
            .filter(|(s, _)| *s == st)
            .map(|(_, d)| d.clone())
    }

    /// `path`'s size and digest: from the cache while the file is unchanged, else read
    /// (blocking: call it off the async workers).
    pub(super) fn digest(&self, path: &Path) -> std::io::Result<FileDigest> {
        let st = stamp(path)?;
        let done = |sha256| FileDigest {
            size: st.size,
            modified: st.modified,
            sha256,
        };
        if let Some(d) = self.cached(path, st) {
            return Ok(done(d));
        }
        let _reading = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // Another request may have read it while this one waited.
        if let Some(d) = self.cached(path, st) {
            return Ok(done(d));
        }
        let d = aegis_models::registry::file_sha256(path)?;
        self.hashed.fetch_add(1, Relaxed);
        if stamp(path)? != st {
            return Err(std::io::Error::other("the file changed while it was read"));
        }
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf(), (st, d.clone()));
        Ok(done(d))
    }
}

/// What the models page reads.
#[derive(Debug, Default)]
pub struct ModelsState {
    /// The config's `inference` section (runtime, provider, models).
    pub inference: aegis_config::InferenceConfig,
    /// What the running pipeline uses (the pipeline publishes it).
    pub in_use: Arc<ModelsInUse>,
    /// Model delivery's progress, results and store (None: off).
    pub delivery: Option<Arc<crate::models_ota::delivery::DeliveryStatus>>,
    pub(super) digests: DigestCache,
}

impl ModelsState {
    /// The page over `inference` and what `in_use` says runs.
    pub fn new(inference: aegis_config::InferenceConfig, in_use: Arc<ModelsInUse>) -> Self {
        ModelsState {
            inference,
            in_use,
            delivery: None,
            digests: DigestCache::default(),
        }
    }
}

impl ModelsState {
    /// The page also shows model delivery (`status`: its progress, results and store).
    pub fn with_delivery(
        mut self,
        status: Option<Arc<crate::models_ota::delivery::DeliveryStatus>>,
    ) -> Self {
        self.delivery = status;
        self
    }
}

fn modified(t: Option<SystemTime>) -> Value {
    t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(Value::Null, |d| {
            json!(crate::store::export::format_utc(d.as_micros() as i64))
        })
}

/// A file's digest, size and pinned package as JSON fields (an `error` when unreadable).
fn file_json(cache: &DigestCache, path: &Path) -> (Value, Option<String>) {
    match cache.digest(path) {
        Ok(d) => {
            let pin = PINS.iter().find(|p| p.sha256 == d.sha256);
            let v = json!({
                "bytes": d.size,
                "modified": modified(d.modified),
                "sha256": d.sha256,
                "package": pin.map(|p| p.package),
                "package_origin": pin.map(|p| p.origin),
                "error": null,
            });
            (v, Some(d.sha256))
        }
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "file not found (run `just models`)".to_string(),
                _ => format!("cannot read: {e}"),
            };
            let v = json!({
                "bytes": null, "modified": null, "sha256": null, "package": null,
                "package_origin": null, "error": why,
            });
            (v, None)
        }
    }
}

/// The models page as JSON.
pub(super) fn models(s: &PagesState) -> Value {
    let m = &s.models;
    let inf = &m.inference;
    let in_use: Option<InUse> = m.in_use.current();
    let delivery = m.delivery.as_ref().map(|d| d.get());
    // What runs: the configured models, each replaced by the version installed over the air
    // that runs now.
    let mut configured = inf.models.clone();
    let ota: Vec<aegis_config::ModelConfig> = delivery
        .as_ref()
        .and_then(|d| serde_json::from_value(d["running"].clone()).ok())
        .unwrap_or_default();
    for o in &ota {
        configured.retain(|c| c.name != o.name);
        configured.push(o.clone());
    }
    let models: Vec<Value> = configured
        .iter()
        .map(|c| {
            let (mut v, sha) = file_json(&m.digests, &c.file);
            let loaded = in_use
                .as_ref()
                .and_then(|u| u.loaded.iter().find(|l| l.name == c.name));
            let stages: Vec<Value> = in_use
                .iter()
                .flat_map(|u| &u.stages)
                .filter(|st| st.model.as_deref() == Some(c.name.as_str()))
                .map(|st| json!({ "index": st.index, "kind": st.kind }))
                .collect();
            v["name"] = json!(c.name);
            v["kind"] = json!(aegis_models::registry::ModelKind::from(c.kind).as_str());
            v["version"] = json!(c.version);
            v["file"] = json!(c.file.display().to_string());
            v["input_size"] = json!(c.input_size());
            v["labels"] = json!(c.labels.as_ref().map(|p| p.display().to_string()));
            v["pinned_sha256"] = json!(c.sha256);
            v["matches_pin"] = json!(match (&c.sha256, &sha) {
                (Some(want), Some(got)) => Some(want.eq_ignore_ascii_case(got)),
                _ => None,
            });
            v["loaded"] = json!(loaded.is_some());
            v["provider"] = json!(loaded.map(|l| l.provider));
            v["loaded_sha256"] = json!(loaded.map(|l| l.sha256.clone()));
            v["changed_since_load"] = json!(match (loaded, &sha) {
                (Some(l), Some(got)) => Some(!l.sha256.eq_ignore_ascii_case(got)),
                _ => None,
            });
            v["stages"] = json!(stages);
            v["source"] = json!(if ota.iter().any(|o| o.name == c.name) {
                "ota"
            } else {
                "config"
            });
            v
        })
        .collect();
    // `auto` names the library it finds (aegis_models::engine::RUNTIME_CANDIDATES).
    let library =
        aegis_models::engine::resolve_runtime(&inf.runtime).unwrap_or_else(|_| inf.runtime.clone());
    let (mut runtime, _) = file_json(&m.digests, &library);
    runtime["engine"] = json!("ONNX Runtime");
    runtime["library"] = json!(library.display().to_string());
    // TensorRT engines being built (minutes on an Orin), with the seconds spent so far.
    runtime["engine_builds"] = json!(
        aegis_models::engine_build::in_progress()
            .into_iter()
            .map(|(model, t)| json!({ "model": model, "seconds": t.as_secs() }))
            .collect::<Vec<_>>()
    );
    runtime["provider"] = serde_json::to_value(inf.provider).unwrap_or_default();
    runtime["cpu_fallback"] = json!(inf.cpu_fallback);
    runtime["threads"] = json!(inf.threads);
    json!({
        "runtime": runtime,
        "pipeline_running": in_use.is_some(),
        "models": models,
        // Model updates over the fleet link (None: model delivery is off).
        "updates": delivery,
    })
}

/// `GET /api/models`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    let v = tokio::task::spawn_blocking(move || models(&s))
        .await
        .unwrap_or_default();
    super::json(v)
}

/// `true`/`false`/`null` as yes/no/—.
fn yes_no(v: &Value) -> &'static str {
    match v.as_bool() {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

/// `GET /models`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let v = tokio::task::spawn_blocking(move || models(&s))
        .await
        .unwrap_or_default();
    let rt = &v["runtime"];
    let mut body = String::from("<h2>Runtime</h2><table class=\"facts\">");
    let row = |label: &str, value: &str| {
        format!("<tr><th>{}</th><td>{}</td></tr>", esc(label), esc(value))
    };
    for (label, value) in [
        ("Engine", text(&rt["engine"])),
        ("Execution provider (configured)", text(&rt["provider"])),
        ("CPU fallback", yes_no(&rt["cpu_fallback"]).into()),
        ("Threads per session (0: all cores)", text(&rt["threads"])),
        ("Library", text(&rt["library"])),
        ("Size (bytes)", text(&rt["bytes"])),
        ("SHA-256", text(&rt["sha256"])),
        ("Package", text(&rt["package"])),
    ] {
        body.push_str(&row(label, &value));
    }
    body.push_str("</table>");
    if let Some(e) = rt["error"].as_str() {
        body.push_str(&format!("<p class=\"error\">{}</p>", esc(e)));
    }
    for b in rt["engine_builds"].as_array().into_iter().flatten() {
        body.push_str(&format!(
            "<p>Building the TensorRT engine for {}: {} s so far (minutes on a Jetson; cached for the next start).</p>",
            esc(&text(&b["model"])),
            esc(&text(&b["seconds"]))
        ));
    }
    body.push_str("<h2>Installed models</h2>");
    if v["pipeline_running"] != true {
        body.push_str("<p>No pipeline has started yet: no model is loaded.</p>");
    }
    let models = v["models"].as_array().cloned().unwrap_or_default();
    if models.is_empty() {
        body.push_str("<p>No model is configured (inference.models).</p>");
    }
    for m in &models {
        let stages: Vec<String> = m["stages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} (stage {})", text(&s["kind"]), text(&s["index"])))
            .collect();
        let stages = if stages.is_empty() {
            "none".to_string()
        } else {
            stages.join(", ")
        };
        let package = match (m["package"].as_str(), m["package_origin"].as_str()) {
            (Some(p), Some(o)) => format!("{p} ({o})"),
            _ => "—".into(),
        };
        body.push_str(&format!(
            "<h3>{}</h3><table class=\"facts\">",
            esc(&text(&m["name"]))
        ));
        for (label, value) in [
            ("Kind", text(&m["kind"])),
            ("Version", text(&m["version"])),
            ("Installed by", text(&m["source"])),
            ("Package", package),
            ("File", text(&m["file"])),
            ("Size (bytes)", text(&m["bytes"])),
            ("Modified (UTC)", text(&m["modified"])),
            ("SHA-256", text(&m["sha256"])),
            (
                "Matches the pinned SHA-256",
                yes_no(&m["matches_pin"]).into(),
            ),
            ("Used by", stages),
            ("Loaded", yes_no(&m["loaded"]).into()),
            ("Execution provider", text(&m["provider"])),
            (
                "Changed on disk since loaded",
                yes_no(&m["changed_since_load"]).into(),
            ),
        ] {
            body.push_str(&row(label, &value));
        }
        body.push_str("</table>");
        if let Some(e) = m["error"].as_str() {
            body.push_str(&format!("<p class=\"error\">{}</p>", esc(e)));
        }
    }
    body.push_str(&updates_html(&v["updates"]));
    layout(&viewer, "Models", None, &body)
}

/// The "Updates" section: the transfer under way, the last verdict, the store's versions.
fn updates_html(u: &Value) -> String {
    let mut h = String::from("<h2 id=\"updates\">Updates</h2>");
    if u.is_null() {
        h.push_str("<p>Model delivery is off (workflows.models, with workflows on).</p>");
        return h;
    }
    let t = &u["transfer"];
    if t.is_null() {
        h.push_str("<p>No model update is in progress.</p>");
    } else {
        let pct = t["percent"].as_f64().unwrap_or(0.0).clamp(0.0, 100.0);
        // HTTP counts attempts; MQTT counts the messages it ignored (damaged, foreign,
        // duplicated).
        let extra = match (t["attempt"].as_u64(), t["ignored"].as_u64()) {
            (Some(a), _) => format!(", attempt {a}"),
            (None, Some(i)) if i > 0 => format!(", {i} messages ignored"),
            _ => String::new(),
        };
        h.push_str(&format!(
            "<p>Downloading {} version {} over {}: {} of {} bytes ({pct:.1} %), ETA {} s{}.</p>\
             <progress max=\"100\" value=\"{pct:.1}\"></progress>",
            esc(&text(&t["name"])),
            esc(&text(&t["version"])),
            esc(&text(&t["via"])),
            esc(&text(&t["done"])),
            esc(&text(&t["total"])),
            esc(&text(&t["eta_s"])),
            esc(&extra),
        ));
    }
    let last = &u["last"];
    if !last.is_null() {
        let reason = last["reason"].as_str().filter(|r| !r.is_empty());
        h.push_str(&format!(
            "<p>Last: {} version {} — <strong>{}</strong>{}</p>",
            esc(&text(&last["name"])),
            esc(&text(&last["version"])),
            esc(&text(&last["verdict"])),
            reason.map(|r| format!(": {}", esc(r))).unwrap_or_default()
        ));
    }
    let models = u["store"]["models"].as_array().cloned().unwrap_or_default();
    if !models.is_empty() {
        h.push_str(
            "<table><thead><tr><th>Model</th><th>Active</th><th>Previous</th><th>On trial</th>\
             <th>Highest ever</th></tr></thead><tbody>",
        );
        let ver = |v: &Value| {
            if v.is_null() {
                "—".to_string()
            } else {
                format!("{} ({} bytes)", text(&v["version"]), text(&v["bytes"]))
            }
        };
        for m in &models {
            h.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&m["name"])),
                esc(&ver(&m["active"])),
                esc(&ver(&m["previous"])),
                esc(&ver(&m["trial"])),
                esc(&text(&m["highest"])),
            ));
        }
        h.push_str("</tbody></table>");
    }
    h
}
