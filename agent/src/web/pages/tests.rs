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
        started: Instant::now(),
        store_path,
        config,
        workflow: Arc::new(Mutex::new(
            serde_json::json!({ "active": "wf-7", "trust_version": 3 }),
        )),
        logs: Arc::new(LogRing::new(10)),
        thermal_root: thermal,
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
    for k in ["fps_in", "fps_out", "reconnects", "last_error", "frames"] {
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
    let (_, _, html) = get(&f.state, "/").await;
    assert!(html.contains("data-api=\"/api/overview\"") && html.contains("dev-1"));
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

#[tokio::test]
async fn every_page_names_the_user_and_logs_out_with_the_sessions_csrf_token() {
    let f = fixture(&[], &["cam0"]);
    let as_role = |role: crate::web::Role| crate::web::Viewer {
        user: "<b>o".into(),
        role,
        csrf: "tok\"en".into(),
    };
    for (role, links) in [
        (crate::web::Role::Viewer, &["/", "/cameras", "/events"][..]),
        (
            crate::web::Role::Technician,
            &["/", "/cameras", "/events", "/logs", "/config"][..],
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
