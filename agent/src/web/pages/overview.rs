//! Overview (`GET /`, `GET /api/overview`): the device, its streams' rates and latencies,
//! the process's CPU and memory, temperatures, store and disk use, trust and workflow.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, Response};
use serde_json::{Value, json};

use super::{PagesState, esc, layout, live, text};
use crate::web::Viewer;

/// Each `thermal_zone*` under `root` with a readable `temp` (millidegrees Celsius), sorted by
/// zone: `{zone, type, celsius}`.
pub(super) fn temperatures(root: &Path) -> Vec<Value> {
    let Ok(dir) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut zones: Vec<Value> = dir
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let milli: i64 = std::fs::read_to_string(e.path().join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let kind = std::fs::read_to_string(e.path().join("type")).unwrap_or_default();
            Some(json!({
                "zone": e.file_name().to_string_lossy(),
                "type": kind.trim(),
                "celsius": milli as f64 / 1000.0,
            }))
        })
        .collect();
    zones.sort_by(|a, b| a["zone"].as_str().cmp(&b["zone"].as_str()));
    zones
}

/// The overview as JSON.
pub(super) fn overview(s: &PagesState) -> Value {
    let p = crate::process::sample();
    let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    let wal = std::path::PathBuf::from(format!("{}-wal", s.store_path.display()));
    let dir = s
        .store_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let (total, free) = crate::process::disk(dir).unzip();
    let workflow = s.workflow.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let trust = workflow
        .get("trust_version")
        .or_else(|| workflow.get("trust").and_then(|t| t.get("version")))
        .cloned()
        .unwrap_or(Value::Null);
    let streams: Vec<Value> = super::stream_rates(&s.metrics)
        .into_iter()
        .map(|(id, mut v)| {
            v["id"] = json!(id);
            v
        })
        .collect();
    json!({
        "device": s.device,
        "version": env!("CARGO_PKG_VERSION"),
        "backend": s.backend,
        "uptime_s": s.started.elapsed().as_secs(),
        "process": {
            "rss_bytes": p.map(|p| p.rss_bytes),
            "cpu_ms": p.map(|p| p.cpu_ms),
        },
        "temperatures": temperatures(&s.thermal_root),
        "gpu": s.gpu.as_ref().and_then(|b| b.gpu_memory()).map(|(name, used, total)| json!({
            "name": name,
            "memory_used_bytes": used,
            "memory_total_bytes": total,
        })),
        "store": {
            "db_bytes": size(&s.store_path),
            "wal_bytes": size(&wal),
            "disk_total_bytes": total,
            "disk_free_bytes": free,
        },
        "broker": match s.metrics.component_value("fleet", "connected") {
            Some(1) => "connected",
            Some(_) => "disconnected (events wait in the outbox)",
            None => "off (fleet.enabled: false)",
        },
        "trust_version": trust,
        "workflow": workflow,
        "streams": streams,
    })
}

/// `GET /api/overview`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    let v = tokio::task::spawn_blocking(move || overview(&s))
        .await
        .unwrap_or_default();
    super::json(v)
}

/// `GET /`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let v = tokio::task::spawn_blocking(move || overview(&s))
        .await
        .unwrap_or_default();
    let row = |label: &str, key: &str| {
        let mut x = &v;
        for part in key.split('.') {
            x = &x[part];
        }
        format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(label),
            live(key, &text(x))
        )
    };
    let mut body = String::from("<table class=\"facts\">");
    for (label, key) in [
        ("Device", "device"),
        ("Version", "version"),
        ("Backend", "backend"),
        ("Uptime (s)", "uptime_s"),
        ("Memory (bytes)", "process.rss_bytes"),
        ("CPU time (ms)", "process.cpu_ms"),
        ("Store (bytes)", "store.db_bytes"),
        ("Store WAL (bytes)", "store.wal_bytes"),
        ("Disk free (bytes)", "store.disk_free_bytes"),
        ("Disk total (bytes)", "store.disk_total_bytes"),
        ("Broker", "broker"),
        ("GPU", "gpu.name"),
        ("GPU memory used (bytes)", "gpu.memory_used_bytes"),
        ("GPU memory (bytes)", "gpu.memory_total_bytes"),
        ("Trust version", "trust_version"),
    ] {
        body.push_str(&row(label, key));
    }
    body.push_str("</table><h2>Temperatures</h2><table class=\"grid\">");
    for (i, t) in v["temperatures"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        body.push_str(&format!(
            "<tr><th>{} {}</th><td>{} °C</td></tr>",
            esc(&text(&t["zone"])),
            esc(&text(&t["type"])),
            live(&format!("temperatures.{i}.celsius"), &text(&t["celsius"])),
        ));
    }
    body.push_str("</table><h2>Streams</h2><table class=\"grid\"><tr><th>Stream</th><th>fps in</th><th>fps out</th><th>Stage latency (ms, mean)</th></tr>");
    for (i, st) in v["streams"].as_array().into_iter().flatten().enumerate() {
        let stages: String = st["stages"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, ms)| {
                format!(
                    "{}: {}",
                    esc(k),
                    live(&format!("streams.{i}.stages.{k}"), &text(ms))
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        body.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{stages}</td></tr>",
            esc(&text(&st["id"])),
            live(&format!("streams.{i}.fps_in"), &text(&st["fps_in"])),
            live(&format!("streams.{i}.fps_out"), &text(&st["fps_out"])),
        ));
    }
    body.push_str("</table><h2>Workflow</h2><pre>");
    body.push_str(&esc(
        &serde_json::to_string_pretty(&v["workflow"]).unwrap_or_default()
    ));
    body.push_str("</pre>");
    layout(&viewer, "Overview", Some("/api/overview"), &body)
}
