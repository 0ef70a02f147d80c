//! BELUGA end to end: a simulated drive replayed as GPS (NMEA) and IMU (CSV) files, IoT
//! sensors on a real mosquitto, a rule over sensor state and the fused speed; the agent
//! stores geotagged events, fused records and sensor samples.

use std::process::Command;

use aegis_tests::*;

#[test]
fn replayed_gps_imu_and_iot_sensors_give_geotagged_rule_events() {
    if !have_mosquitto() {
        eprintln!("skipped: mosquitto not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(&d.join("broker"));
    let clip = make_clip(d, "clip.mp4", 320, 240, 6.0);
    aegis_ok(
        d,
        &["sensors", "simulate", "--out", "track", "--seconds", "30"],
    );
    // Retained: the agent reads the door's state when it subscribes.
    let publish = |topic: &str, msg: &str| {
        let s = Command::new("/usr/bin/mosquitto_pub")
            .args(["-p", &broker.port.to_string(), "-t", topic, "-r", "-m", msg])
            .status()
            .unwrap();
        assert!(s.success());
    };
    publish("site/door", r#"{"value": "open"}"#);
    publish("site/temp", r#"{"celsius": 500}"#);
    let db = d.join("aegis.db");
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"device: {{ id: van-1 }}
pipeline:
  sources: [{{ id: cam0, url: "file://{clip}", realtime: true }}]
  stages: [{{ kind: timestamp_overlay }}]
  sinks: [{{ kind: discard }}]
  rules:
    - {{ name: hot_while_moving, when: {{ all: [ {{ sensor: {{ name: temp, gt: 40 }} }}, {{ speed: {{ gt: 1 }} }} ] }} }}
store: {{ path: {db} }}
web: {{ listen: "127.0.0.1:0" }}
sensors:
  gps: {{ url: "file:track/track.nmea" }}
  imu: {{ url: "file:track/track-imu.csv" }}
  iot_broker_url: "mqtt://127.0.0.1:{port}"
  iot:
    - {{ name: door, topic: site/door, unit: contact }}
    - {{ name: temp, topic: site/temp, field: celsius, unit: "°C", min: -40, max: 85 }}
  rules:
    - name: door_open_while_moving
      when: {{ all: [ {{ sensor: {{ name: door, eq: 1 }} }}, {{ speed: {{ gt: 1 }} }} ] }}
      for_s: 0.5
"#,
            clip = clip.display(),
            db = db.display(),
            port = broker.port,
        ),
    )
    .unwrap();
    let out = aegis_ok(d, &["run", "--config", cfg.to_str().unwrap()]);
    let export = |table: &str| db_export(d, &db, table);
    let events = export("events");
    let rules: Vec<_> = events.iter().filter(|e| e["kind"] == "rule").collect();
    // Exactly one episode of the door rule; the temperature (500 °C, outside its range)
    // was ignored, so the other rule never fired.
    assert_eq!(rules.len(), 1, "{out}\n{events:?}");
    let r = &rules[0]["payload"];
    assert_eq!(r["rule"], "door_open_while_moving");
    assert!(r["held_s"].as_f64().unwrap() >= 0.5);
    let pose = &r["pose"];
    assert!(
        (pose["lat"].as_f64().unwrap() - 48.137).abs() < 0.01,
        "{pose}"
    );
    assert!(
        (pose["lon"].as_f64().unwrap() - 11.575).abs() < 0.01,
        "{pose}"
    );
    assert!(pose["speed_mps"].as_f64().unwrap() > 5.0, "{pose}");
    // The fused record of that event, found by place.
    let lat = pose["lat"].as_f64().unwrap();
    let lon = pose["lon"].as_f64().unwrap();
    let near = aegis_ok(
        d,
        &[
            "db",
            "export",
            "--db",
            db.to_str().unwrap(),
            "--since",
            "all",
            "--table",
            "fused",
            "--near",
            &format!("{lat},{lon}"),
            "--radius-m",
            "5",
        ],
    );
    assert!(near.contains(rules[0]["id"].as_str().unwrap()), "{near}");
    assert!(near.contains("\"door\":1.0"), "{near}");
    // Sensor samples: GPS fixes at 1 Hz over the run, the door reading, no temperature.
    let samples = export("sensors");
    let count = |s: &str| samples.iter().filter(|x| x["sensor"] == s).count();
    assert!(count("gps") >= 4, "{samples:?}");
    assert_eq!(count("door"), 1);
    assert_eq!(count("temp"), 0);
}

/// A receiver that sends RMC and no GGA, with `#` comments and a proprietary sentence in
/// its log (issue 16, items 6 and 8): the agent stores one GPS fix an epoch.
#[test]
fn an_rmc_only_log_with_comments_is_stored_one_fix_an_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip = make_clip(d, "clip.mp4", 320, 240, 6.0);
    aegis_ok(
        d,
        &["sensors", "simulate", "--out", "track", "--seconds", "30"],
    );
    let full = std::fs::read_to_string(d.join("track/track.nmea")).unwrap();
    let rmc: Vec<&str> = full.lines().filter(|l| l.contains("RMC")).collect();
    // A comment as gpsd's logs have, and MediaTek's start-up sentence (mtk-3301.log).
    std::fs::write(
        d.join("rmc.nmea"),
        format!(
            "# Chipset: RMC only\r\n$PMTK010,001*2E\r\n{}\r\n",
            rmc.join("\n")
        ),
    )
    .unwrap();
    let db = d.join("aegis.db");
    let cfg = d.join("aegis.yaml");
    std::fs::write(
        &cfg,
        format!(
            r#"device: {{ id: van-2 }}
pipeline:
  sources: [{{ id: cam0, url: "file://{clip}", realtime: true }}]
  stages: [{{ kind: timestamp_overlay }}]
  sinks: [{{ kind: discard }}]
store: {{ path: {db} }}
web: {{ listen: "127.0.0.1:0" }}
sensors:
  gps: {{ url: "file:rmc.nmea" }}
"#,
            clip = clip.display(),
            db = db.display(),
        ),
    )
    .unwrap();
    let out = aegis_ok(d, &["run", "--config", cfg.to_str().unwrap()]);
    let samples = db_export(d, &db, "sensors");
    let gps: Vec<serde_json::Value> = samples
        .iter()
        .filter(|x| x["sensor"] == "gps")
        .map(|x| match &x["value"] {
            serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
            v => v.clone(),
        })
        .collect();
    // About one a second over the 6 s clip, each from an RMC alone.
    assert!(gps.len() >= 4, "{out}\n{samples:?}");
    // Each row keeps the receiver's own UTC (RMC carries the date) beside the agent's time.
    for x in samples.iter().filter(|x| x["sensor"] == "gps") {
        let utc = x["receiver_utc"].as_str().unwrap_or_default();
        assert!(utc.len() > 20 && utc.ends_with('Z'), "{x}");
    }
    for v in &gps {
        assert!((v["lat"].as_f64().unwrap() - 48.137).abs() < 0.01, "{v}");
        assert!(
            v["quality"].is_null() && v["speed_mps"].as_f64().is_some(),
            "{v}"
        );
    }
}
