//! Sensors (`GET /sensors`, `GET /api/sensors`): the newest GPS fix, IMU sample and IoT
//! readings (kept by the sensing runtime in [`crate::sensing::Readings`]), and the recent
//! fused positions from the store (`fused_records`, with the track and class of the event
//! each belongs to) and the device's own GPS trail (`sensor_samples`), which
//! `/static/sensors.js` plots on a local canvas: no map tiles, nothing off the device.

use std::path::Path;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{Html, Response};
use rusqlite::types::Value as Sql;
use serde_json::{Value, json};

use super::{PagesState, esc, layout_with, live, text};
use crate::store::export::format_utc;
use crate::web::Viewer;

/// The most fused positions the page plots (newest first).
pub const FUSED_LIMIT: usize = 500;
/// The most GPS fixes of the device's own trail (ten minutes at 1 Hz).
pub const TRAIL_LIMIT: usize = 600;
/// Fused positions listed in the page's table (the plot has them all).
const TABLE_ROWS: usize = 20;

/// Why the store's positions could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum ReadError {
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    /// A query failed.
    #[error("reading positions: {0}")]
    Query(#[from] rusqlite::Error),
}

/// `x` rounded to `digits` decimals (degrees to 7: about a centimetre).
fn round(x: f64, digits: i32) -> f64 {
    let k = 10f64.powi(digits);
    (x * k).round() / k
}

/// Seconds from `at_us` to `now_us`, one decimal.
fn age_s(now_us: i64, at_us: i64) -> f64 {
    (now_us.saturating_sub(at_us) as f64 / 1e5).round() / 10.0
}

/// The newest `FUSED_LIMIT` fused positions, newest first, each with the track id and class
/// of its event where the event has them.
fn fused(conn: &rusqlite::Connection) -> Result<Vec<Value>, rusqlite::Error> {
    // `json_valid` first: a payload that is not JSON gives NULLs, not a failed query.
    let mut stmt = conn.prepare(
        "SELECT f.event_id, f.ts_us, f.stream, f.kind, f.lat, f.lon, f.speed_mps, \
         f.heading_deg, f.sigma_m, \
         CASE WHEN json_valid(e.payload) THEN json_extract(e.payload, '$.track_id') END, \
         CASE WHEN json_valid(e.payload) THEN json_extract(e.payload, '$.label') END \
         FROM fused_records f LEFT JOIN events e ON e.id = f.event_id \
         ORDER BY f.ts_us DESC, f.event_id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([FUSED_LIMIT as i64], |r| {
        let ts_us: i64 = r.get(1)?;
        let track = match r.get::<_, Sql>(9)? {
            Sql::Integer(i) => Some(i),
            _ => None,
        };
        let label = match r.get::<_, Sql>(10)? {
            Sql::Text(t) => Some(t),
            _ => None,
        };
        Ok(json!({
            "event_id": r.get::<_, String>(0)?,
            "ts_us": ts_us,
            "time": format_utc(ts_us),
            "stream": r.get::<_, Option<String>>(2)?,
            "kind": r.get::<_, String>(3)?,
            "lat": r.get::<_, f64>(4)?,
            "lon": r.get::<_, f64>(5)?,
            "speed_mps": r.get::<_, f64>(6)?,
            "heading_deg": r.get::<_, f64>(7)?,
            "sigma_m": r.get::<_, f64>(8)?,
            "track_id": track,
            "label": label,
        }))
    })?;
    rows.collect()
}

/// The device's newest `TRAIL_LIMIT` GPS fixes, oldest first: `{ts_us, lat, lon}`.
fn trail(conn: &rusqlite::Connection) -> Result<Vec<Value>, rusqlite::Error> {
    let mut stmt = conn.prepare(
        "SELECT ts_us, value FROM sensor_samples WHERE sensor = 'gps' \
         ORDER BY ts_us DESC, rowid DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([TRAIL_LIMIT as i64], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (ts_us, value) = row?;
        let v: Value = serde_json::from_str(&value).unwrap_or(Value::Null);
        if let (Some(lat), Some(lon)) = (v["lat"].as_f64(), v["lon"].as_f64()) {
            out.push(json!({ "ts_us": ts_us, "lat": lat, "lon": lon }));
        }
    }
    out.reverse();
    Ok(out)
}

/// The store's positions: (fused, trail).
pub(super) fn positions(path: &Path) -> Result<(Vec<Value>, Vec<Value>), ReadError> {
    let conn = crate::store::open_reader(path)?;
    Ok((fused(&conn)?, trail(&conn)?))
}

/// The sensors page as JSON.
pub(super) fn sensors(s: &PagesState) -> Value {
    let now = crate::store::now_us();
    let l = s.readings.latest();
    let gps = l.gps.map(|(at, f)| {
        json!({
            "lat": round(f.lat, 7), "lon": round(f.lon, 7), "alt_m": f.altitude_m,
            "speed_mps": f.speed_mps.map(|v| round(v, 2)),
            "course_deg": f.course_deg, "quality": f.quality, "satellites": f.satellites,
            "hdop": f.hdop, "utc": f.utc_us.map(format_utc), "time": format_utc(at),
            "age_s": age_s(now, at),
        })
    });
    let imu = l.imu.map(|i| {
        json!({
            "accel": i.accel, "gyro": i.gyro, "rate_hz": i.rate_hz.map(|r| (r * 10.0).round() / 10.0),
            "time": format_utc(i.at_us), "age_s": age_s(now, i.at_us),
        })
    });
    let iot: Vec<Value> = l
        .iot
        .iter()
        .map(|r| {
            json!({
                "name": r.name, "topic": r.topic, "unit": r.unit, "value": r.value,
                "time": r.at_us.map(format_utc), "age_s": r.at_us.map(|at| age_s(now, at)),
            })
        })
        .collect();
    let (fused, trail, store_error) = match positions(&s.store_path) {
        Ok((f, t)) => (f, t, None),
        Err(e) => (Vec::new(), Vec::new(), Some(e.to_string())),
    };
    json!({
        "on": l.on,
        "gps_configured": l.gps_configured,
        "imu_configured": l.imu_configured,
        "gps": gps,
        "imu": imu,
        "iot": iot,
        "fused": fused,
        "trail": trail,
        "store_error": store_error,
    })
}

/// `GET /api/sensors`.
pub(super) async fn api(State(s): State<Arc<PagesState>>) -> Response {
    let v = tokio::task::spawn_blocking(move || sensors(&s))
        .await
        .unwrap_or_default();
    super::json(v)
}

/// A facts table of `rows` (label, data-key), values read from `v` by the key.
fn facts(v: &Value, rows: &[(&str, &str)]) -> String {
    let mut out = String::from("<table class=\"facts\">");
    for (label, key) in rows {
        let mut x = v;
        for part in key.split('.') {
            x = match part.parse::<usize>() {
                Ok(i) => &x[i],
                Err(_) => &x[part],
            };
        }
        out.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>",
            esc(label),
            live(key, &text(x))
        ));
    }
    out.push_str("</table>");
    out
}

/// `GET /sensors`.
pub(super) async fn page(State(s): State<Arc<PagesState>>, viewer: Viewer) -> Html<String> {
    let v = tokio::task::spawn_blocking(move || sensors(&s))
        .await
        .unwrap_or_default();
    let mut body = String::new();
    if v["on"] != true {
        body.push_str(
            "<p class=\"notice\">Sensors are off: no sensor is configured on this device \
             (sensors.gps, sensors.imu and sensors.iot are empty).</p>",
        );
    }
    body.push_str("<h2>GPS</h2>");
    if v["gps_configured"] == true {
        body.push_str(&facts(
            &v,
            &[
                ("Latitude (°)", "gps.lat"),
                ("Longitude (°)", "gps.lon"),
                ("Altitude (m)", "gps.alt_m"),
                ("Speed (m/s)", "gps.speed_mps"),
                ("Course (°)", "gps.course_deg"),
                ("Fix quality", "gps.quality"),
                ("Satellites", "gps.satellites"),
                ("HDOP", "gps.hdop"),
                ("Receiver time (UTC)", "gps.utc"),
                ("Received (UTC)", "gps.time"),
                ("Age (s)", "gps.age_s"),
            ],
        ));
    } else {
        body.push_str("<p>No GPS is configured (sensors.gps).</p>");
    }
    body.push_str("<h2>IMU</h2>");
    if v["imu_configured"] == true {
        body.push_str(&facts(
            &v,
            &[
                ("Acceleration x (m/s²)", "imu.accel.0"),
                ("Acceleration y (m/s²)", "imu.accel.1"),
                ("Acceleration z (m/s²)", "imu.accel.2"),
                ("Angular rate x (rad/s)", "imu.gyro.0"),
                ("Angular rate y (rad/s)", "imu.gyro.1"),
                ("Angular rate z (rad/s)", "imu.gyro.2"),
                ("Rate (Hz)", "imu.rate_hz"),
                ("Age (s)", "imu.age_s"),
            ],
        ));
    } else {
        body.push_str("<p>No IMU is configured (sensors.imu).</p>");
    }
    body.push_str("<h2>IoT sensors</h2>");
    let iot = v["iot"].as_array().cloned().unwrap_or_default();
    if iot.is_empty() {
        body.push_str("<p>No IoT sensor is configured (sensors.iot).</p>");
    } else {
        body.push_str(
            "<table class=\"grid\"><tr><th>Sensor</th><th>Topic</th><th>Value</th>\
             <th>Unit</th><th>Age (s)</th></tr>",
        );
        for (i, r) in iot.iter().enumerate() {
            body.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&r["name"])),
                esc(&text(&r["topic"])),
                live(&format!("iot.{i}.value"), &text(&r["value"])),
                esc(&text(&r["unit"])),
                live(&format!("iot.{i}.age_s"), &text(&r["age_s"])),
            ));
        }
        body.push_str("</table>");
    }
    body.push_str(&format!(
        "<h2>Positions</h2><p>The last {FUSED_LIMIT} fused positions of events (a line per \
         track) and the device's own GPS trail, drawn on a local plane around their centre.</p>"
    ));
    if let Some(e) = v["store_error"].as_str() {
        body.push_str(&format!("<p class=\"error\">{}</p>", esc(e)));
    }
    body.push_str(
        "<figure class=\"map\"><canvas id=\"sensor-map\" width=\"800\" height=\"480\">\
         The plot needs JavaScript; the table below lists the newest positions.</canvas>\
         <figcaption id=\"sensor-map-note\"></figcaption></figure>\
         <ul id=\"sensor-map-legend\" class=\"legend\"></ul>",
    );
    let fused = v["fused"].as_array().cloned().unwrap_or_default();
    if fused.is_empty() {
        body.push_str("<p>No fused position is stored yet.</p>");
    } else {
        body.push_str(
            "<table class=\"grid\"><tr><th>Time (UTC)</th><th>Stream</th><th>Kind</th>\
             <th>Track</th><th>Class</th><th>Position</th><th>σ (m)</th></tr>",
        );
        for r in fused.iter().take(TABLE_ROWS) {
            let pos = match (r["lat"].as_f64(), r["lon"].as_f64()) {
                (Some(a), Some(o)) => format!("{a:.6}, {o:.6}"),
                _ => "—".into(),
            };
            body.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&text(&r["time"])),
                esc(&text(&r["stream"])),
                esc(&text(&r["kind"])),
                esc(&text(&r["track_id"])),
                esc(&text(&r["label"])),
                esc(&pos),
                esc(&r["sigma_m"].as_f64().map_or("—".into(), |s| format!("{s:.1}"))),
            ));
        }
        body.push_str("</table>");
    }
    layout_with(
        &viewer,
        "Sensors",
        Some("/api/sensors"),
        &["/static/sensors.js"],
        &body,
    )
}
