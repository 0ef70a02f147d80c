use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use super::*;
use crate::logging::LogRing;

struct Fixture {
    _dir: tempfile::TempDir,
    state: Arc<PagesState>,
}

/// A store with `events` (id, ts_us, stream, kind, payload) and a state reading it.
fn fixture(events: &[(&str, i64, Option<&str>, &str, &str)], streams: &[&str]) -> Fixture {
    fixture_with(events, streams, ModelsState::default())
}

/// [`fixture`] whose models page reads `models`.
fn fixture_with(
    events: &[(&str, i64, Option<&str>, &str, &str)],
    streams: &[&str],
    models: ModelsState,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store_path = dir.path().join("aegis.db");
    let store =
        crate::store::Store::open(crate::store::StoreSettings::for_test(dir.path())).unwrap();
    store.close();
    {
        let conn = rusqlite::Connection::open(&store_path).unwrap();
        for (id, ts, stream, kind, payload) in events {
            conn.execute(
                "INSERT INTO events (id, ts_us, stream, kind, payload) VALUES (?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![id, ts, stream, kind, payload],
            )
            .unwrap();
        }
    }
    let metrics = Arc::new(crate::metrics::Metrics::new("cpu"));
    metrics.watch_sources(
        streams
            .iter()
            .map(|s| {
                (
                    s.to_string(),
                    Arc::new(aegis_hal::source::SourceHealth::default()),
                )
            })
            .collect(),
    );
    let thermal = dir.path().join("thermal");
    std::fs::create_dir_all(thermal.join("thermal_zone0")).unwrap();
    std::fs::write(thermal.join("thermal_zone0/temp"), "48500\n").unwrap();
    std::fs::write(thermal.join("thermal_zone0/type"), "cpu-thermal\n").unwrap();
    std::fs::create_dir_all(thermal.join("thermal_zone1")).unwrap();
    std::fs::create_dir_all(thermal.join("cooling_device0")).unwrap();
    let mut config =
        serde_json::json!({ "sources": [{ "url": "rtsp://cam", "password": "hunter2" }] });
    redact(&mut config);
    let state = Arc::new(PagesState {
        metrics,
        device: "dev-1".into(),
        backend: "cpu".into(),
        gpu: None,
        started: Instant::now(),
        store_path,
        config,
        workflow: Arc::new(Mutex::new(
            serde_json::json!({ "active": "wf-7", "trust_version": 3 }),
        )),
        logs: Arc::new(LogRing::new(10)),
        thermal_root: thermal,
        live: Default::default(),
        served: Default::default(),
        snapshots: Default::default(),
        readings: Default::default(),
        models,
        editor: None,
        workflows: None,
        counters: None,
        store: None,
        evidence: None,
    });
    Fixture { _dir: dir, state }
}

async fn get(state: &Arc<PagesState>, uri: &str) -> (StatusCode, String, String) {
    let r = router(state.clone())
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

#[test]
fn escaping_covers_markup_and_quotes() {
    assert_eq!(
        esc(r#"<script>alert("x")</script>&'"#),
        "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&#39;"
    );
}

#[tokio::test]
async fn a_stream_id_with_markup_is_escaped_on_every_page() {
    let f = fixture(
        &[(
            "e1",
            1_000_000,
            Some("<script>x</script>"),
            "moderation",
            "{}",
        )],
        &["<script>x</script>"],
    );
    for uri in ["/", "/cameras", "/events"] {
        let (status, ctype, body) = get(&f.state, uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}");
        assert!(ctype.starts_with("text/html"), "{uri}: {ctype}");
        assert!(!body.contains("<script>x"), "{uri}: {body}");
        assert!(
            body.contains("&lt;script&gt;x&lt;/script&gt;"),
            "{uri}: {body}"
        );
        // No inline script or style: only the agent's own files.
        assert!(
            !body.contains("<style") && !body.contains("style="),
            "{uri}"
        );
        assert_eq!(body.matches("<script").count(), 1, "{uri}");
        assert!(body.contains("<script src=\"/static/app.js\" defer></script>"));
    }
}

#[tokio::test]
async fn cameras_show_each_stream_with_its_health() {
    let f = fixture(&[], &["cam-front", "cam-rear"]);
    let (_, _, html) = get(&f.state, "/cameras").await;
    assert!(
        html.contains("cam-front") && html.contains("cam-rear"),
        "{html}"
    );
    let (status, ctype, body) = get(&f.state, "/api/cameras").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s = &v["streams"][0];
    assert_eq!(s["id"], "cam-front");
    assert_eq!(s["state"], "connecting");
    assert_eq!(s["state_text"], "Connecting…");
    for k in [
        "fps_in",
        "fps_out",
        "reconnects",
        "last_error",
        "frames",
        "decoder",
    ] {
        assert!(s.get(k).is_some(), "{k} missing: {s}");
    }
}

#[tokio::test]
async fn overview_json_has_device_process_temperature_store_and_workflow() {
    let f = fixture(&[], &["cam0"]);
    let (status, _, body) = get(&f.state, "/api/overview").await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["device"], "dev-1");
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["process"]["rss_bytes"].as_u64().unwrap() > 0);
    // zone1 has no temp file; cooling_device0 is not a zone.
    assert_eq!(
        v["temperatures"],
        serde_json::json!([{ "zone": "thermal_zone0", "type": "cpu-thermal", "celsius": 48.5 }])
    );
    assert!(v["store"]["db_bytes"].as_u64().unwrap() > 0);
    assert!(v["store"]["disk_total_bytes"].as_u64().unwrap() > 0);
    assert_eq!(v["trust_version"], 3);
    assert_eq!(v["workflow"]["active"], "wf-7");
    // No fleet link: the broker is off; no GPU: none shown.
    assert_eq!(v["broker"], "off (fleet.enabled: false)");
    assert_eq!(v["gpu"], serde_json::Value::Null);
    let (_, _, html) = get(&f.state, "/").await;
    assert!(html.contains("data-api=\"/api/overview\"") && html.contains("dev-1"));
    // The fleet link's own counter says whether it is connected.
    let up = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let u = up.clone();
    f.state.metrics.watch_component(
        "fleet",
        Box::new(move || vec![("connected", u.load(std::sync::atomic::Ordering::Relaxed))]),
    );
    let broker =
        |body: &str| serde_json::from_str::<serde_json::Value>(body).unwrap()["broker"].clone();
    let (_, _, body) = get(&f.state, "/api/overview").await;
    assert_eq!(broker(&body), "disconnected (events wait in the outbox)");
    up.store(1, std::sync::atomic::Ordering::Relaxed);
    let (_, _, body) = get(&f.state, "/api/overview").await;
    assert_eq!(broker(&body), "connected");
}

#[test]
fn stage_latency_and_fps_are_read_from_the_registry() {
    let m = crate::metrics::Metrics::new("cpu");
    let labels = crate::metrics::StageLabels {
        stream: "cam0".into(),
        stage: "infer".into(),
    };
    m.stage_latency.get_or_create(&labels).observe(0.010);
    m.stage_latency.get_or_create(&labels).observe(0.030);
    m.fps
        .get_or_create(&crate::metrics::StreamLabels {
            stream: "cam0".into(),
        })
        .set(12.5);
    let r = stream_rates(&m);
    assert_eq!(r["cam0"]["stages"]["infer"], 20.0);
    assert_eq!(r["cam0"]["fps_out"], 12.5);
}

#[test]
fn label_values_with_escapes_are_parsed() {
    let s = samples(
        "aegis_x{stream=\"a\\\"b\",stage=\"c\"} 2.5\naegis_xy 1\n",
        "aegis_x",
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].label("stream"), Some("a\"b"));
    assert_eq!(s[0].label("stage"), Some("c"));
    assert_eq!(s[0].value, 2.5);
}

fn sample_events() -> Vec<(
    &'static str,
    i64,
    Option<&'static str>,
    &'static str,
    &'static str,
)> {
    vec![
        (
            "e1",
            1_000_000,
            Some("cam0"),
            "track_started",
            r#"{"track_id":1}"#,
        ),
        (
            "e2",
            2_000_000,
            Some("cam0"),
            "moderation",
            r#"{"track_id":2,"note":"a, \"quoted\" one","pose":{"lat":48.1,"lon":11.5}}"#,
        ),
        (
            "e3",
            3_000_000,
            Some("cam1"),
            "track_started",
            r#"{"track_id":1}"#,
        ),
    ]
}

#[tokio::test]
async fn events_are_filtered_newest_first_with_geotags() {
    let f = fixture(&sample_events(), &[]);
    let v: serde_json::Value = serde_json::from_str(&get(&f.state, "/api/events").await.2).unwrap();
    let ids: Vec<_> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].clone())
        .collect();
    assert_eq!(ids, ["e3", "e2", "e1"]);
    assert_eq!(v["limit"], 100);
    assert_eq!(v["more"], false);
    assert_eq!(
        v["events"][1]["geotag"],
        serde_json::json!({ "lat": 48.1, "lon": 11.5 })
    );
    assert_eq!(v["events"][0]["geotag"], serde_json::Value::Null);
    for (q, want) in [
        ("kind=track_started", vec!["e3", "e1"]),
        ("stream=cam0", vec!["e2", "e1"]),
        ("track=1&stream=cam0", vec!["e1"]),
        ("since=1970-01-01T00:00:02Z", vec!["e3", "e2"]),
        ("until=1970-01-01T00:00:02Z", vec!["e1"]),
        ("page=2", vec![]),
    ] {
        let v: serde_json::Value =
            serde_json::from_str(&get(&f.state, &format!("/api/events?{q}")).await.2).unwrap();
        let ids: Vec<_> = v["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].clone())
            .collect();
        assert_eq!(ids, want, "{q}");
    }
    let (_, _, html) = get(&f.state, "/events").await;
    assert!(html.contains("48.100000, 11.500000"), "{html}");
}

#[tokio::test]
async fn events_page_past_the_limit() {
    let many: Vec<(String, i64)> = (0..101).map(|i| (format!("e{i:03}"), i)).collect();
    let rows: Vec<_> = many
        .iter()
        .map(|(id, ts)| (id.as_str(), *ts, Some("cam0"), "k", "{}"))
        .collect();
    let f = fixture(&rows, &[]);
    let v: serde_json::Value = serde_json::from_str(&get(&f.state, "/api/events").await.2).unwrap();
    assert_eq!(v["events"].as_array().unwrap().len(), 100);
    assert_eq!(v["more"], true);
    let v: serde_json::Value =
        serde_json::from_str(&get(&f.state, "/api/events?page=2").await.2).unwrap();
    assert_eq!(v["events"][0]["id"], "e000");
    assert_eq!(v["more"], false);
}

#[tokio::test]
async fn bad_filters_are_refused_naming_the_parameter() {
    let f = fixture(&[], &[]);
    for (q, param) in [
        ("track=abc", "track"),
        ("since=yesterday", "since"),
        ("until=2026-13-01T00:00:00Z", "until"),
        ("page=0", "page"),
        ("kind=a%20b", "kind"),
    ] {
        for base in ["/api/events", "/api/events.csv", "/events"] {
            let (status, _, body) = get(&f.state, &format!("{base}?{q}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{base}?{q}");
            assert!(
                body.contains(&format!("parameter {param}=")),
                "{base}?{q}: {body}"
            );
        }
    }
    let (status, _, body) = get(&f.state, "/api/logs?level=loud").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("parameter level="), "{body}");
    let (status, _, body) = get(&f.state, "/api/logs?after=-1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("parameter after="), "{body}");
}

#[tokio::test]
async fn csv_quotes_fields_and_keeps_the_filters() {
    let f = fixture(&sample_events(), &[]);
    let (status, ctype, body) = get(&f.state, "/api/events.csv?kind=moderation").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ctype, "text/csv; charset=utf-8");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "time,id,stream,kind,lat,lon,payload");
    assert_eq!(lines.len(), 2, "{body}");
    assert_eq!(
        lines[1],
        r#"1970-01-01T00:00:02.000000Z,e2,cam0,moderation,48.1,11.5,"{""track_id"":2,""note"":""a, \""quoted\"" one"",""pose"":{""lat"":48.1,""lon"":11.5}}""#
    );
}

#[tokio::test]
async fn logs_tail_by_sequence_and_level() {
    let f = fixture(&[], &[]);
    for i in 0..15 {
        let level = if i % 2 == 0 { "WARN" } else { "INFO" };
        f.state
            .logs
            .push(i, level, "aegis_agent::x", format!("line <{i}>"));
    }
    let v: serde_json::Value = serde_json::from_str(&get(&f.state, "/api/logs").await.2).unwrap();
    let seqs: Vec<u64> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (6..=15).collect::<Vec<_>>(), "the ring keeps 10");
    assert_eq!(v["last"], 15);
    let v: serde_json::Value =
        serde_json::from_str(&get(&f.state, "/api/logs?level=warn&after=10").await.2).unwrap();
    let seqs: Vec<u64> = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [11, 13, 15]);
    let (status, ctype, txt) = get(&f.state, "/api/logs.txt?level=warn").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/plain; charset=utf-8")
    );
    assert_eq!(txt.lines().count(), 5);
    assert!(txt.lines().all(|l| l.contains("WARN")), "{txt}");
    let (_, _, html) = get(&f.state, "/logs").await;
    assert!(
        html.contains("line &lt;14&gt;") && !html.contains("line <14>"),
        "{html}"
    );
    assert!(html.contains("data-after=\"15\""));
}

#[tokio::test]
async fn config_page_shows_no_password() {
    let f = fixture(&[], &[]);
    let (status, _, html) = get(&f.state, "/config").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("rtsp://cam") && html.contains("***"),
        "{html}"
    );
    assert!(!html.contains("hunter2"));
}

#[tokio::test]
async fn static_assets_have_their_content_types() {
    let f = fixture(&[], &[]);
    let (status, ctype, css) = get(&f.state, "/static/app.css").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/css; charset=utf-8")
    );
    assert!(css.contains(".tile"));
    let (status, ctype, js) = get(&f.state, "/static/app.js").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/javascript; charset=utf-8")
    );
    assert!(js.contains("textContent") && !js.contains("innerHTML"));
}

#[test]
fn query_values_are_decoded_and_pager_links_reencoded() {
    let uri: axum::http::Uri = "/events?stream=cam%200&kind=a+b&x".parse().unwrap();
    let q = query(&uri);
    assert_eq!(q["stream"], "cam 0");
    assert_eq!(q["kind"], "a b");
    assert_eq!(q["x"], "");
    assert_eq!(events::url_encode("cam 0&<x>"), "cam%200%26%3Cx%3E");
}

/// The IoT sensors of the sensor tests: one with markup in its name, topic and unit.
fn sensors_config() -> aegis_config::SensorsConfig {
    let iot = |name: &str, topic: &str, unit: &str| aegis_config::IotSensorConfig {
        name: name.into(),
        topic: topic.into(),
        field: "value".into(),
        unit: unit.into(),
        min: None,
        max: None,
    };
    aegis_config::SensorsConfig {
        gps: Some(aegis_config::GpsConfig {
            url: "udp://127.0.0.1:10110".into(),
        }),
        imu: Some(aegis_config::ImuConfig {
            url: "iio:///sys/bus/iio/devices/iio:device0".into(),
            mounting_ypr_deg: [0.0; 3],
            rate_hz: 100.0,
        }),
        iot: vec![
            iot("cabin_temp", "site/cabin/temp", "°C"),
            iot("<script>alert(1)</script>", "x/<b>", "<i>u"),
        ],
        ..Default::default()
    }
}

fn fix() -> aegis_sensors::nmea::Fix {
    aegis_sensors::nmea::Fix {
        utc_s: Some(3600.0),
        utc_us: Some(1_700_000_000_000_000),
        lat: 48.137,
        lon: 11.575,
        quality: Some(1),
        satellites: Some(9),
        hdop: Some(0.9),
        altitude_m: Some(519.5),
        speed_mps: Some(3.25),
        course_deg: Some(87.0),
    }
}

/// Fused rows (and the events they geotag) and GPS samples in the fixture's store.
fn store_positions(f: &Fixture) {
    let conn = rusqlite::Connection::open(&f.state.store_path).unwrap();
    let events = [
        (
            "f1",
            10,
            "track_started",
            r#"{"track_id":3,"label":"person"}"#,
        ),
        (
            "f2",
            20,
            "track_ended",
            r#"{"track_id":3,"label":"person"}"#,
        ),
        ("f3", 30, "moderation", r#"{"action":"blur"}"#),
        ("f4", 40, "track_started", "not json"),
        (
            "f5",
            50,
            "track_started",
            r#"{"track_id":"7","label":"<img src=x onerror=alert(1)>"}"#,
        ),
        (
            "f6",
            60,
            "track_started",
            r#"{"track_id":8,"label":"<img src=x onerror=alert(1)>"}"#,
        ),
    ];
    for (i, (id, ts, kind, payload)) in events.iter().enumerate() {
        conn.execute(
            "INSERT INTO events (id, ts_us, stream, kind, payload) VALUES (?1, ?2, 'cam0', ?3, ?4)",
            rusqlite::params![id, ts, kind, payload],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO fused_records (event_id, ts_us, stream, kind, lat, lon, speed_mps, \
             heading_deg, sigma_m, sensors) VALUES (?1, ?2, 'cam0', ?3, ?4, 11.5, 1.0, 90.0, 2.5, '{}')",
            rusqlite::params![id, ts, kind, 48.0 + i as f64 * 1e-4],
        )
        .unwrap();
    }
    for (ts, sensor, value) in [
        (1, "gps", r#"{"lat":48.1,"lon":11.5}"#),
        (2, "cabin_temp", r#"{"value":21.5,"unit":"°C"}"#),
        (3, "gps", "damaged"),
        (4, "gps", r#"{"lat":48.2,"lon":11.6}"#),
    ] {
        conn.execute(
            "INSERT INTO sensor_samples (ts_us, sensor, value) VALUES (?1, ?2, ?3)",
            rusqlite::params![ts, sensor, value],
        )
        .unwrap();
    }
}

#[tokio::test]
async fn sensors_json_carries_the_readings_and_the_positions() {
    let f = fixture(&[], &[]);
    let r = &f.state.readings;
    r.declare(&sensors_config());
    let now = crate::store::now_us();
    r.gps(now, &fix());
    for t in [0.0, 0.5, 1.0] {
        let s = aegis_sensors::imu::ImuSample {
            t,
            accel: [0.1, -0.2, 9.81],
            gyro: [0.01, 0.02, -0.03],
            mag: None,
        };
        r.imu(now, &s);
    }
    r.iot("cabin_temp", now, 21.5);
    r.iot("not declared", now, 1.0);
    store_positions(&f);
    let (status, ctype, body) = get(&f.state, "/api/sensors").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["on"], true);
    let g = &v["gps"];
    assert_eq!(
        (g["lat"].as_f64(), g["lon"].as_f64()),
        (Some(48.137), Some(11.575))
    );
    assert_eq!(
        (&g["alt_m"], &g["speed_mps"], &g["course_deg"]),
        (
            &serde_json::json!(519.5),
            &serde_json::json!(3.25),
            &serde_json::json!(87.0)
        )
    );
    assert_eq!(
        (&g["quality"], &g["satellites"]),
        (&serde_json::json!(1), &serde_json::json!(9))
    );
    assert_eq!(g["utc"], "2023-11-14T22:13:20.000000Z");
    assert!(g["age_s"].as_f64().unwrap() >= 0.0);
    let i = &v["imu"];
    assert_eq!(i["accel"], serde_json::json!([0.1, -0.2, 9.81]));
    assert_eq!(i["gyro"], serde_json::json!([0.01, 0.02, -0.03]));
    assert_eq!(
        i["rate_hz"], 2.0,
        "two samples after the first, in one second"
    );
    let iot = v["iot"].as_array().unwrap();
    assert_eq!(iot.len(), 2, "the declared sensors only");
    assert_eq!(
        (
            &iot[0]["name"],
            &iot[0]["topic"],
            &iot[0]["unit"],
            &iot[0]["value"]
        ),
        (
            &serde_json::json!("cabin_temp"),
            &serde_json::json!("site/cabin/temp"),
            &serde_json::json!("°C"),
            &serde_json::json!(21.5)
        )
    );
    assert_eq!(iot[1]["value"], serde_json::Value::Null, "no reading yet");
    assert_eq!(iot[1]["age_s"], serde_json::Value::Null);
    // Newest first; the track and class come from the event; a payload that is not JSON,
    // or a track id that is not a number, gives none (and does not fail the query).
    let fused = v["fused"].as_array().unwrap();
    let ids: Vec<_> = fused.iter().map(|r| r["event_id"].clone()).collect();
    assert_eq!(ids, ["f6", "f5", "f4", "f3", "f2", "f1"]);
    assert_eq!(
        (&fused[5]["track_id"], &fused[5]["label"]),
        (&serde_json::json!(3), &serde_json::json!("person"))
    );
    assert_eq!(fused[5]["sigma_m"], 2.5);
    assert_eq!(fused[5]["lat"], 48.0);
    assert_eq!(fused[2]["track_id"], serde_json::Value::Null);
    assert_eq!(fused[1]["track_id"], serde_json::Value::Null);
    assert_eq!(fused[3]["track_id"], serde_json::Value::Null);
    // The device's trail: GPS rows only, oldest first, damaged rows skipped.
    assert_eq!(
        v["trail"],
        serde_json::json!([{ "ts_us": 1, "lat": 48.1, "lon": 11.5 }, { "ts_us": 4, "lat": 48.2, "lon": 11.6 }])
    );
    assert_eq!(v["store_error"], serde_json::Value::Null);
    let (_, _, html) = get(&f.state, "/sensors").await;
    assert!(html.contains("data-api=\"/api/sensors\""), "{html}");
    assert!(
        html.contains("<span data-key=\"gps.lat\">48.137</span>"),
        "{html}"
    );
    assert!(
        html.contains("<span data-key=\"iot.0.value\">21.5</span>"),
        "{html}"
    );
    assert!(html.contains("<canvas id=\"sensor-map\""), "{html}");
    assert!(html.contains("<script src=\"/static/sensors.js\" defer></script>"));
    assert!(
        html.contains("48.000000, 11.500000") && html.contains("person"),
        "{html}"
    );
    assert!(!html.contains("Sensors are off"));
}

#[tokio::test]
async fn sensor_and_class_names_with_markup_are_escaped() {
    let f = fixture(&[], &[]);
    f.state.readings.declare(&sensors_config());
    f.state
        .readings
        .iot("<script>alert(1)</script>", crate::store::now_us(), 7.0);
    store_positions(&f);
    let (status, _, html) = get(&f.state, "/sensors").await;
    assert_eq!(status, StatusCode::OK);
    for raw in ["<script>alert", "<b>", "<i>u", "<img src=x"] {
        assert!(!html.contains(raw), "{raw} in {html}");
    }
    for escaped in [
        "&lt;script&gt;alert(1)&lt;/script&gt;",
        "x/&lt;b&gt;",
        "&lt;i&gt;u",
        "&lt;img src=x onerror=alert(1)&gt;",
    ] {
        assert!(html.contains(escaped), "{escaped} missing: {html}");
    }
    assert!(!html.contains("<style") && !html.contains("style="));
    assert_eq!(
        html.matches("<script").count(),
        2,
        "app.js and sensors.js only"
    );
    let v: serde_json::Value =
        serde_json::from_str(&get(&f.state, "/api/sensors").await.2).unwrap();
    assert_eq!(v["iot"][1]["name"], "<script>alert(1)</script>");
    assert_eq!(v["iot"][1]["value"], 7.0);
}

#[tokio::test]
async fn without_sensors_the_page_says_they_are_off() {
    let f = fixture(&[], &[]);
    let v: serde_json::Value =
        serde_json::from_str(&get(&f.state, "/api/sensors").await.2).unwrap();
    assert_eq!(v["on"], false);
    assert_eq!(
        (&v["gps"], &v["imu"]),
        (&serde_json::Value::Null, &serde_json::Value::Null)
    );
    assert_eq!(v["iot"], serde_json::json!([]));
    assert_eq!(
        (&v["fused"], &v["trail"]),
        (&serde_json::json!([]), &serde_json::json!([]))
    );
    let (status, _, html) = get(&f.state, "/sensors").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Sensors are off"), "{html}");
    assert!(html.contains("No GPS is configured") && html.contains("No IMU is configured"));
    assert!(html.contains("No fused position is stored yet"), "{html}");
    // A store that cannot be read: the readings still come, with the reason.
    assert!(sensors::positions(&f.state.store_path.with_file_name("missing.db")).is_err());
}

#[tokio::test]
async fn the_sensor_script_is_served_and_writes_no_html() {
    let f = fixture(&[], &[]);
    let (status, ctype, js) = get(&f.state, "/static/sensors.js").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "text/javascript; charset=utf-8")
    );
    assert!(js.contains("getContext") && js.contains("textContent"));
    assert!(
        !js.contains("innerHTML") && !js.contains("http"),
        "local only, no markup"
    );
    let (_, _, app) = get(&f.state, "/static/app.js").await;
    assert!(app.contains("aegis:data"));
}

/// A models page over one model file in a temp dir (plus one missing), `detect` in stage 1.
fn models_fixture(dir: &std::path::Path) -> (ModelsState, std::path::PathBuf) {
    let file = dir.join("det.onnx");
    std::fs::write(&file, b"not really onnx, but bytes to hash").unwrap();
    let sha = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(std::fs::read(&file).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let model =
        |name: &str, file: std::path::PathBuf, sha256: Option<String>| aegis_config::ModelConfig {
            name: name.into(),
            version: 4,
            kind: aegis_config::ModelKindConfig::Yolov8,
            file,
            sha256,
            input_size: Some(320),
            labels: Some(dir.join("labels.txt")),
        };
    let inference = aegis_config::InferenceConfig {
        runtime: dir.join("libonnxruntime.so"),
        models: vec![
            model("det", file.clone(), Some(sha.to_uppercase())),
            model("<script>m</script>", dir.join("missing.onnx"), None),
        ],
        ..Default::default()
    };
    let in_use = Arc::new(crate::inference::ModelsInUse::default());
    in_use.set(crate::inference::InUse {
        stages: vec![
            crate::inference::StageUse {
                index: 0,
                kind: "timestamp_overlay",
                model: None,
            },
            crate::inference::StageUse {
                index: 1,
                kind: "detect",
                model: Some("det".into()),
            },
        ],
        loaded: vec![crate::inference::LoadedInfo {
            name: "det".into(),
            version: 4,
            provider: "cpu",
            sha256: sha,
        }],
    });
    (ModelsState::new(inference, in_use), file)
}

#[tokio::test]
async fn models_json_has_each_file_its_digest_and_the_stages_using_it() {
    let dir = tempfile::tempdir().unwrap();
    let (models, file) = models_fixture(dir.path());
    let f = fixture_with(&[], &[], models);
    let want = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(std::fs::read(&file).unwrap());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (status, ctype, body) = get(&f.state, "/api/models").await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::OK, "application/json")
    );
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let m = &v["models"][0];
    assert_eq!(m["name"], "det");
    assert_eq!(m["kind"], "yolov8");
    assert_eq!(m["version"], 4);
    assert_eq!(m["file"], file.display().to_string());
    assert_eq!(m["bytes"], 34);
    assert_eq!(m["sha256"], want);
    assert_eq!(m["matches_pin"], true, "the pin is compared without case");
    assert_eq!(
        m["stages"],
        serde_json::json!([{ "index": 1, "kind": "detect" }])
    );
    assert_eq!(
        (&m["loaded"], &m["provider"]),
        (&serde_json::json!(true), &serde_json::json!("cpu"))
    );
    assert_eq!(m["changed_since_load"], false);
    assert_eq!(m["package"], serde_json::Value::Null, "not a pinned file");
    assert_eq!(m["error"], serde_json::Value::Null);
    let missing = &v["models"][1];
    assert_eq!(missing["loaded"], false);
    assert_eq!(missing["stages"], serde_json::json!([]));
    assert!(
        missing["error"]
            .as_str()
            .unwrap()
            .contains("file not found"),
        "{missing}"
    );
    assert_eq!(v["runtime"]["engine"], "ONNX Runtime");
    assert_eq!(v["runtime"]["provider"], "cpu");
    assert!(v["runtime"]["error"].as_str().is_some());
    assert_eq!(v["pipeline_running"], true);
    assert!(v.get("updates").is_some());
}

#[tokio::test]
async fn the_models_page_shows_what_runs_from_ota_and_the_update_under_way() {
    let dir = tempfile::tempdir().unwrap();
    let (models, _file) = models_fixture(dir.path());
    let status = Arc::new(crate::models_ota::delivery::DeliveryStatus::default());
    let ota = dir.path().join("models/det/7/model.onnx");
    std::fs::create_dir_all(ota.parent().unwrap()).unwrap();
    std::fs::write(&ota, b"ota model").unwrap();
    let mut running: aegis_config::ModelConfig = serde_json::from_value(serde_json::json!({
        "name": "det", "version": 7, "kind": "yolov8", "file": ota, "labels": null,
    }))
    .unwrap();
    running.sha256 = Some("ab".repeat(32));
    status.set_running(&[running]);
    status.set_transfer(Some(serde_json::json!({
        "name": "seg", "version": 3, "via": "http", "done": 512, "total": 2048,
        "percent": 25.0, "eta_s": 9, "attempt": 2,
    })));
    status.set_last(serde_json::json!({
        "name": "det", "version": 8, "verdict": "rolled_back", "reason": "health: max <b>",
    }));
    let f = fixture_with(&[], &[], models.with_delivery(Some(status.clone())));
    let v: serde_json::Value = serde_json::from_str(&get(&f.state, "/api/models").await.2).unwrap();
    let det = v["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "det")
        .unwrap();
    assert_eq!(
        (&det["version"], &det["source"], &det["file"]),
        (
            &serde_json::json!(7),
            &serde_json::json!("ota"),
            &serde_json::json!(ota.display().to_string())
        )
    );
    assert_eq!(v["updates"]["transfer"]["percent"], 25.0);
    let (_, _, page) = get(&f.state, "/models").await;
    assert!(
        page.contains("Downloading seg version 3 over http: 512 of 2048 bytes (25.0 %)"),
        "{page}"
    );
    assert!(
        page.contains("<progress max=\"100\" value=\"25.0\">")
            && page.contains("ETA 9 s, attempt 2."),
        "{page}"
    );
    // Over MQTT: messages ignored instead of attempts.
    status.set_transfer(Some(serde_json::json!({
        "name": "seg", "version": 3, "via": "mqtt", "done": 1024, "total": 2048,
        "percent": 50.0, "eta_s": 2, "ignored": 4,
    })));
    let (_, _, page) = get(&f.state, "/models").await;
    assert!(
        page.contains("over mqtt: 1024 of 2048 bytes (50.0 %), ETA 2 s, 4 messages ignored."),
        "{page}"
    );
    assert!(
        page.contains("rolled_back</strong>: health: max &lt;b&gt;"),
        "{page}"
    );
    assert!(!page.contains("max <b>"), "escaped");
}

#[tokio::test]
async fn a_model_file_is_hashed_once_until_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (models, file) = models_fixture(dir.path());
    let f = fixture_with(&[], &[], models);
    for uri in ["/api/models", "/models", "/api/models"] {
        assert_eq!(get(&f.state, uri).await.0, StatusCode::OK);
    }
    assert_eq!(
        f.state.models.digests.hashed(),
        1,
        "one readable file, read once"
    );
    // New content (another size, so the stamp differs whatever the clock's resolution).
    std::fs::write(&file, b"a newer model").unwrap();
    let v: serde_json::Value = serde_json::from_str(&get(&f.state, "/api/models").await.2).unwrap();
    assert_eq!(f.state.models.digests.hashed(), 2);
    let want = {
        use sha2::Digest;
        let d = sha2::Sha256::digest(b"a newer model");
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    assert_eq!(v["models"][0]["sha256"], want);
    assert_eq!(v["models"][0]["matches_pin"], false);
    assert_eq!(v["models"][0]["changed_since_load"], true);
    get(&f.state, "/api/models").await;
    assert_eq!(f.state.models.digests.hashed(), 2);
}

#[tokio::test]
async fn the_models_page_escapes_names_and_leaves_room_for_updates() {
    let dir = tempfile::tempdir().unwrap();
    let (models, _) = models_fixture(dir.path());
    let f = fixture_with(&[], &[], models);
    let (status, _, html) = get(&f.state, "/models").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!html.contains("<script>m"), "{html}");
    assert!(html.contains("&lt;script&gt;m&lt;/script&gt;"), "{html}");
    assert!(html.contains("detect (stage 1)"), "{html}");
    assert!(html.contains("<h2 id=\"updates\">Updates</h2>"), "{html}");
    assert!(html.contains("aria-current=\"page\">Models</a>"), "{html}");
    // Without models or a pipeline.
    let f = fixture(&[], &[]);
    let (_, _, html) = get(&f.state, "/models").await;
    assert!(html.contains("No model is configured") && html.contains("No pipeline has started"));
}

#[test]
fn pinned_packages_are_those_of_the_fetch_script() {
    let script = include_str!("../../../../tools/fetch-models.sh");
    for p in models::PINS {
        assert!(
            script.contains(p.sha256),
            "{} not in tools/fetch-models.sh",
            p.sha256
        );
        assert!(
            script.contains(p.package),
            "{} not in tools/fetch-models.sh",
            p.package
        );
    }
    // Every 64-hex digest of the script is known here.
    let digests = script
        .split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64);
    for d in digests {
        assert!(
            models::PINS.iter().any(|p| p.sha256 == d),
            "{d} of tools/fetch-models.sh is not in models::PINS"
        );
    }
}

#[tokio::test]
async fn every_page_names_the_user_and_logs_out_with_the_sessions_csrf_token() {
    let f = fixture(&[], &["cam0"]);
    let as_role = |role: crate::web::Role| crate::web::Viewer {
        user: "<b>o".into(),
        role,
        csrf: "tok\"en".into(),
    };
    for (role, links) in [
        (
            crate::web::Role::Viewer,
            &[
                "/",
                "/live",
                "/cameras",
                "/events",
                "/clips",
                "/sensors",
                "/models",
                "/workflows",
            ][..],
        ),
        (
            crate::web::Role::Technician,
            &[
                "/",
                "/live",
                "/cameras",
                "/events",
                "/clips",
                "/sensors",
                "/models",
                "/logs",
                "/workflows",
                "/config",
            ][..],
        ),
    ] {
        let r = router_as(f.state.clone(), as_role(role))
            .oneshot(Request::get("/cameras").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        let html = String::from_utf8(body.to_vec()).unwrap();
        assert!(
            html.contains(
                "<form method=\"post\" action=\"/logout\" class=\"session\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"tok&quot;en\">"
            ),
            "{html}"
        );
        assert!(
            html.contains(&format!("<span>&lt;b&gt;o ({})</span>", role.as_str())),
            "{html}"
        );
        // The navigation offers only what the role may open.
        let nav = html
            .split("<nav>")
            .nth(1)
            .unwrap()
            .split("</nav>")
            .next()
            .unwrap();
        let hrefs: Vec<&str> = nav
            .split("href=\"")
            .skip(1)
            .map(|h| h.split('"').next().unwrap())
            .collect();
        assert_eq!(hrefs, links, "{role:?}");
    }
}
