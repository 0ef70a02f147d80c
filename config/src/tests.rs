//! Unit tests for loading, error recovery and validation.

use std::path::{Path, PathBuf};

use super::*;

const DEMO: &str = include_str!("../examples/demo.yaml");
const FULL: &str = include_str!("../examples/full.yaml");

/// A valid minimal config; tests append keys under `pipeline` or at the root.
fn minimal() -> String {
    "device: {id: dev0}\npipeline:\n  sources:\n    - {id: cam0, url: clip.mp4}\n".to_owned()
}

fn problems_of(text: &str) -> Vec<Problem> {
    match from_yaml_str(text, "aegis.yaml") {
        Ok(config) => panic!("expected problems, got {config:?}"),
        Err(error) => error.problems().to_vec(),
    }
}

/// The reason of the problem at `path` (a panic naming them all when there is none).
fn reason_at(problems: &[Problem], path: &str) -> String {
    problems
        .iter()
        .find(|p| p.path == path)
        .map(|p| p.reason.clone())
        .unwrap_or_else(|| panic!("no problem at {path}: {problems:?}"))
}

fn paths_of(text: &str) -> Vec<String> {
    problems_of(text).into_iter().map(|p| p.path).collect()
}

fn ok(text: &str) -> AgentConfig {
    match from_yaml_str(text, "aegis.yaml") {
        Ok(config) => config,
        Err(error) => panic!("unexpected problems:\n{error}"),
    }
}

#[test]
fn demo_example_parses() {
    let config = ok(DEMO);
    assert_eq!(config.device.id, "demo-orin");
    assert_eq!(config.backend.kind, BackendKind::Cpu);
    let ids: Vec<_> = config
        .pipeline
        .sources
        .iter()
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(ids, ["cam0", "cam1"]);
    assert_eq!(
        config.pipeline.sources[0].location(),
        SourceLocation::File(PathBuf::from(".samples/demo.mp4"))
    );
    assert!(!config.pipeline.sources[0].loop_);
    assert_eq!(config.pipeline.stages.len(), 4);
    match &config.pipeline.sinks[..] {
        [SinkConfig::Record(record)] => {
            assert_eq!(record.dir, Path::new(".demo/recordings"));
            assert_eq!(record.segment_seconds, 4.0);
            assert_eq!(record.disk_budget_mb, 256);
        }
        other => panic!("unexpected sinks {other:?}"),
    }
    assert_eq!(config.store.path, Path::new(".demo/aegis.db"));
    assert_eq!(config.web.listen, "127.0.0.1:8080");
}

#[test]
fn full_example_parses_and_sets_every_section() {
    let config = ok(FULL);
    assert_eq!(config.backend.kind, BackendKind::Jetson);
    assert_eq!(config.device.groups, ["lobby", "building-a"]);
    assert!(config.pipeline.sources[0].loop_);
    assert_eq!(config.pipeline.sources[0].max_frames, Some(100_000));
    assert_eq!(config.pipeline.sinks.len(), 7);
    assert_eq!(config.outputs.rtsp.as_ref().map(|r| r.users.len()), Some(1));
    assert!(config.sensors.gps.is_some());
    assert!(config.sensors.imu.is_some());
}

/// The piecewise parser must agree with plain serde on valid input.
#[test]
fn recovery_parser_matches_plain_serde() {
    for text in [DEMO, FULL, minimal().as_str()] {
        let plain: AgentConfig = serde_yaml_ng::from_str(text).expect("plain serde");
        assert_eq!(ok(text), plain);
    }
}

#[test]
fn defaults_are_applied() {
    let config = ok(&minimal());
    assert_eq!(config.backend, BackendConfig::default());
    assert_eq!(config.backend.fallback, Some(BackendKind::Cpu));
    assert_eq!(config.pipeline.pool_frames, 8);
    assert_eq!(config.pipeline.queue_depth, 4);
    assert!(config.pipeline.stages.is_empty());
    assert!(config.pipeline.sinks.is_empty());
    assert_eq!(config.store.path, Path::new("/var/lib/aegis/aegis.db"));
    assert_eq!(config.fleet.broker_url, "mqtt://127.0.0.1:1883");
    assert_eq!(config.fleet.keepalive_s, 30);
    assert!(!config.fleet.enabled);
    assert_eq!(config.web.listen, "127.0.0.1:8080");
    assert!(config.web.metrics_public);
    assert_eq!(config.log.format, LogFormat::Auto);
    assert_eq!(config.log.level, "info");
    assert_eq!(config.sensors, SensorsConfig::default());

    let text = format!(
        "{}  stages: [{{kind: timestamp_overlay}}]\n  sinks: [{{kind: record, dir: rec}}]\n",
        minimal()
    );
    let config = ok(&text);
    assert_eq!(
        config.pipeline.stages,
        [StageConfig::TimestampOverlay(TimestampOverlayStage {
            x: 16,
            y: 16,
            scale: 2,
            show_stream_id: true,
            clock_code: false
        })]
    );
    let SinkConfig::Record(record) = &config.pipeline.sinks[0] else {
        panic!("expected record sink");
    };
    assert_eq!(record.segment_seconds, 10.0);
    assert_eq!(record.disk_budget_mb, 1024);
    assert_eq!(record.encoder.preset, "ultrafast");
    assert_eq!(record.encoder.bitrate_kbps, 4000);
    assert_eq!(record.encoder.gop_frames, 60);
    assert_eq!(record.encoder.threads, 0);
}

#[test]
fn explicit_null_fallback_disables_it() {
    let config = ok(&format!(
        "{}backend: {{kind: cuda, fallback: null}}\n",
        minimal()
    ));
    assert_eq!(config.backend.fallback, None);
}

#[test]
fn unknown_root_key_is_reported_with_its_path() {
    let problems = problems_of(&format!("{}colour: blue\n", minimal()));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "colour");
    assert!(problems[0].reason.contains("unknown field `colour`"));
    assert!(problems[0].reason.contains("`pipeline`"));
}

#[test]
fn unknown_key_inside_stage_is_reported_with_its_path() {
    let text = format!(
        "{}  stages:\n    - kind: passthrough\n    - kind: timestamp_overlay\n      colour: red\n",
        minimal()
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "pipeline.stages[1].colour");
    assert!(problems[0].reason.starts_with("unknown field `colour`"));

    let text = format!("{}  stages: [{{kind: passthrough, x: 1}}]\n", minimal());
    assert_eq!(paths_of(&text), ["pipeline.stages[0].x"]);
}

#[test]
fn unknown_key_inside_sink_is_reported_with_its_path() {
    let text = format!(
        "{}  sinks:\n    - kind: discard\n    - kind: record\n      dir: rec\n      segment_second: 5\n      encoder: {{preset: fast, crf: 20}}\n",
        minimal()
    );
    let mut paths = paths_of(&text);
    paths.sort();
    assert_eq!(
        paths,
        [
            "pipeline.sinks[1].encoder.crf",
            "pipeline.sinks[1].segment_second",
        ]
    );
}

#[test]
fn unknown_kind_lists_valid_kinds() {
    let text = format!(
        "{}  stages: [{{kind: blur}}]\n  sinks: [{{dir: x}}]\n",
        minimal()
    );
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert_eq!(problems[0].path, "pipeline.stages[0].kind");
    assert_eq!(
        problems[0].reason,
        "unknown kind \"blur\", expected one of: passthrough, timestamp_overlay, \
         virtual_background, moderate, detect"
    );
    assert_eq!(problems[1].path, "pipeline.sinks[0].kind");
    assert!(problems[1].reason.contains("record, discard"));
}

#[test]
fn unsupported_scheme_message_is_exact() {
    let text = "device: {id: dev0}\npipeline:\n  sources: [{id: cam0, url: \"htp://x\"}]\n";
    let error = from_yaml_str(text, "aegis.yaml").expect_err("must fail");
    assert_eq!(error.problems().len(), 1);
    let line = error.to_string();
    assert!(
        line.starts_with("aegis.yaml: pipeline.sources[0].url: unsupported scheme \"htp\""),
        "{line}"
    );
    assert!(
        line.contains("file, rtsp, rtsps, srt, rtmp, rtmps, v4l2"),
        "{line}"
    );
    assert!(
        error.problems()[0]
            .to_string()
            .starts_with("pipeline.sources[0].url: unsupported scheme \"htp\"")
    );
}

#[test]
fn pipeline_alone_uses_pipeline_relative_paths() {
    let error = PipelineConfig::from_yaml_str("sources: [{id: a, url: \"htp://x\"}]\n", "wf")
        .expect_err("must fail");
    assert!(
        error
            .to_string()
            .starts_with("wf: sources[0].url: unsupported scheme \"htp\"")
    );
    let pipeline = PipelineConfig::from_yaml_str("sources: [{id: a, url: a.mp4}]\n", "wf")
        .expect("valid pipeline");
    assert_eq!(pipeline.sources[0].id, "a");
}

#[test]
fn live_sources_are_accepted_and_capture_settings_checked() {
    let text = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: \"rtsp://cam/stream\"}\n    - {id: b, url: \"v4l2:///dev/video0\", capture: {width: 1280, height: 720, fps: 30, format: mjpeg}}\n    - {id: c, url: \"srt://enc:9000\"}\n";
    let cfg = ok(text);
    let c = cfg.pipeline.sources[1].capture.unwrap();
    assert_eq!(
        (c.width, c.fps, c.format),
        (Some(1280), Some(30.0), Some(CaptureFormat::Mjpeg))
    );
    let bad = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: \"rtsp://cam/x\", capture: {fps: 30}}\n    - {id: b, url: \"v4l2:///dev/video0\", capture: {width: 640, fps: 0}}\n";
    assert_eq!(
        paths_of(bad),
        [
            "pipeline.sources[0].capture",
            "pipeline.sources[1].capture",
            "pipeline.sources[1].capture.fps"
        ]
    );
}

#[test]
fn rtsp_credentials_are_checked_and_never_printed() {
    let text = minimal().replace(
        "{id: cam0, url: clip.mp4}",
        "{id: cam0, url: \"rtsp://cam/live\", transport: udp, username: admin, password: hunter2}",
    );
    let cfg = ok(&text);
    let s = &cfg.pipeline.sources[0];
    assert_eq!(s.transport, RtspTransport::Udp);
    assert_eq!(s.password.as_ref().map(Secret::expose), Some("hunter2"));
    assert!(
        !format!("{cfg:?}").contains("hunter2"),
        "Debug must redact the password"
    );

    let text = minimal().replace(
        "{id: cam0, url: clip.mp4}",
        "{id: cam0, url: clip.mp4, password: x}",
    );
    let paths = paths_of(&text);
    assert_eq!(
        paths,
        [
            "pipeline.sources[0].password",
            "pipeline.sources[0].password"
        ]
    );
    let problems = problems_of(&text);
    assert!(
        problems.iter().any(|p| p.reason
            == "only rtsp sources take credentials (srt and rtmp carry theirs in the URL)")
    );
    assert!(
        problems
            .iter()
            .any(|p| p.reason == "a password needs a username")
    );
}

#[test]
fn source_url_forms() {
    let location = |url: &str| SourceConfig::new("a", url).location();
    assert_eq!(
        location("file:///data/a.mp4"),
        SourceLocation::File("/data/a.mp4".into())
    );
    assert_eq!(
        location("file:rel/a.mp4"),
        SourceLocation::File("rel/a.mp4".into())
    );
    assert_eq!(
        location("rel/a:b.mp4"),
        SourceLocation::File("rel/a:b.mp4".into())
    );
    assert_eq!(
        location("/abs.mp4"),
        SourceLocation::File("/abs.mp4".into())
    );
    assert_eq!(
        location("rtsps://h/x"),
        SourceLocation::Rtsp(NetUrl::parse("rtsps://h/x").unwrap())
    );
    match location("RTMP://U:pw@Enc.Example:1935/live/key") {
        SourceLocation::Rtmp(u) => {
            assert_eq!(u.host_str(), "enc.example");
            assert_eq!(
                u.to_libav(None, None),
                "rtmp://U:pw@enc.example:1935/live/key"
            );
        }
        other => panic!("not rtmp: {other:?}"),
    }
    assert!(
        matches!(location("srt://10.0.0.5:9000?mode=caller"), SourceLocation::Srt(u) if u.port == Some(9000))
    );
    assert_eq!(
        location("v4l2:///dev/video0"),
        SourceLocation::V4l2("/dev/video0".into())
    );
    let text = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: \"\"}\n    - {id: b, url: \"file://host/x\"}\n";
    assert_eq!(
        paths_of(text),
        ["pipeline.sources[0].url", "pipeline.sources[1].url"]
    );
}

#[test]
fn many_mistakes_are_all_reported() {
    let text = r#"
device:
  id: Lobby Cam
  groups: [ok, "a/b"]
backend: {kind: cuda, fallback: cuda}
pipeline:
  sources:
    - {id: cam0, url: "htp://x", lop: true}
    - {id: cam0, url: clip.mp4}
  stages: [{kind: timestamp_overlay, scale: 9}]
  sinks:
    - {kind: record, dir: rec, segment_seconds: 0.5, disk_budget_mb: many}
  pool_frames: 4
  queue_depth: 4
fleet: {broker_url: "http://broker", keepalive_s: 1}
web: {listen: "localhost:80"}
sensors: {gps: {url: "tcp://x"}}
log: {level: ""}
store: {path: db, colour: red}
"#;
    let paths = paths_of(text);
    for expected in [
        "device.id",
        "device.groups[1]",
        "backend.fallback",
        "pipeline.sources[0].lop",
        "pipeline.sources[0].url",
        "pipeline.sources[1].id",
        "pipeline.stages[0].scale",
        "pipeline.sinks[0].disk_budget_mb",
        "pipeline.sinks[0].segment_seconds",
        "pipeline.queue_depth",
        "fleet.broker_url",
        "fleet.keepalive_s",
        "web.listen",
        "sensors.gps.url",
        "log.level",
        "store.colour",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
    assert_eq!(paths.len(), 16, "{paths:?}");
    let error = from_yaml_str(text, "aegis.yaml").expect_err("invalid");
    let rendered = error.to_string();
    assert_eq!(rendered.lines().count(), 16);
    assert!(
        rendered
            .lines()
            .all(|line| line.starts_with("aegis.yaml: "))
    );
}

#[test]
fn wrong_types_are_pruned_and_reported_once() {
    let text = "device: {id: d, groups: oops}\npipeline:\n  sources: [{id: a, url: [1]}]\n  pool_frames: lots\n";
    let problems = problems_of(text);
    let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "device.groups",
            "pipeline.sources[0].url",
            "pipeline.pool_frames"
        ],
        "{problems:?}"
    );
}

#[test]
fn missing_required_fields_are_reported() {
    assert_eq!(paths_of("device: {name: x}\n"), ["device.id", "pipeline"]);
    assert_eq!(
        paths_of("device: {id: d}\npipeline: {stages: []}\n"),
        ["pipeline.sources"]
    );
    assert_eq!(
        paths_of("device: {id: d}\npipeline: {sources: [{id: a}]}\n"),
        ["pipeline.sources[0].url"]
    );
    let problems = problems_of("");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].reason.contains("empty"));
}

#[test]
fn duplicate_source_ids_are_reported() {
    let text = "device: {id: d}\npipeline:\n  sources:\n    - {id: cam0, url: a.mp4}\n    - {id: cam1, url: b.mp4}\n    - {id: cam0, url: c.mp4}\n";
    let problems = problems_of(text);
    assert_eq!(problems.len(), 1);
    assert_eq!(
        problems[0].to_string(),
        "pipeline.sources[2].id: duplicate source id \"cam0\" (also sources[0])"
    );
}

#[test]
fn empty_sources_are_rejected() {
    let problems = problems_of("device: {id: d}\npipeline: {sources: []}\n");
    assert_eq!(problems[0].path, "pipeline.sources");
    assert_eq!(problems[0].reason, "at least one source is required");
}

#[test]
fn queue_depth_must_be_below_pool_frames() {
    let text = format!("{}  pool_frames: 4\n  queue_depth: 4\n", minimal());
    let problems = problems_of(&text);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "pipeline.queue_depth");
    assert!(problems[0].reason.contains("less than pool_frames (4)"));
    ok(&format!(
        "{}  pool_frames: 4\n  queue_depth: 3\n",
        minimal()
    ));
    let text = format!("{}  pool_frames: 1\n  queue_depth: 0\n", minimal());
    assert_eq!(
        paths_of(&text),
        ["pipeline.pool_frames", "pipeline.queue_depth"]
    );
}

#[test]
fn bad_device_ids_are_rejected() {
    for bad in ["Cam0", "a/b", "a+b", "a#b", "a b", "\"\"", &"x".repeat(65)] {
        let text =
            format!("device: {{id: {bad}}}\npipeline: {{sources: [{{id: a, url: a.mp4}}]}}\n");
        assert_eq!(paths_of(&text), ["device.id"], "id {bad}");
    }
    ok(&format!(
        "device: {{id: {}}}\npipeline: {{sources: [{{id: a, url: a.mp4}}]}}\n",
        "a-b_0".repeat(12)
    ));
}

#[test]
fn backend_fallback_must_differ() {
    let problems = problems_of(&format!(
        "{}backend: {{kind: cuda, fallback: cuda}}\n",
        minimal()
    ));
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, "backend.fallback");
    assert!(
        problems[0]
            .reason
            .starts_with("fallback must differ from kind")
    );
    ok(&format!("{}backend: {{kind: jetson}}\n", minimal()));
    // cpu needs no vendor library, so the default fallback (cpu) is harmless.
    ok(&format!("{}backend: {{kind: cpu}}\n", minimal()));
    // A replaced (invalid) kind must not trigger the comparison.
    assert_eq!(
        paths_of(&format!(
            "{}backend: {{kind: gpu, fallback: cpu}}\n",
            minimal()
        )),
        ["backend.kind"]
    );
}

#[test]
fn unknown_enum_value_is_reported() {
    let problems = problems_of(&format!(
        "{}backend: {{kind: gpu}}\nlog: {{format: xml}}\n",
        minimal()
    ));
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0].path, "backend.kind");
    assert!(problems[0].reason.contains("`jetson`"));
    assert_eq!(problems[1].path, "log.format");
    // Rust type names do not leak into messages.
    let problems = problems_of(&format!("{}fleet: 3\n", minimal()));
    assert_eq!(
        problems[0].to_string(),
        "fleet: invalid type: integer `3`, expected a mapping of settings"
    );
}

#[test]
fn record_sink_and_encoder_limits() {
    let text = format!(
        "{}  sinks:\n    - kind: record\n      dir: \"\"\n      segment_seconds: .inf\n      disk_budget_mb: 0\n      encoder: {{preset: turbo, bitrate_kbps: 50, gop_frames: 0, threads: 65}}\n",
        minimal()
    );
    assert_eq!(
        paths_of(&text),
        [
            "pipeline.sinks[0].dir",
            "pipeline.sinks[0].segment_seconds",
            "pipeline.sinks[0].disk_budget_mb",
            "pipeline.sinks[0].encoder.preset",
            "pipeline.sinks[0].encoder.bitrate_kbps",
            "pipeline.sinks[0].encoder.gop_frames",
            "pipeline.sinks[0].encoder.threads",
        ]
    );
}

#[test]
fn sensor_and_fleet_schemes() {
    ok(&format!(
        "{}sensors:\n  gps: {{url: \"udp://0.0.0.0:10110\"}}\n  imu: {{url: \"mqtt://imu/raw\"}}\nfleet: {{broker_url: \"mqtts://b:8883\"}}\n",
        minimal()
    ));
    let problems = problems_of(&format!(
        "{}sensors:\n  gps: {{url: \"/dev/ttyS0\"}}\n  imu: {{url: \"serial:///dev/x\"}}\n",
        minimal()
    ));
    assert_eq!(problems[0].path, "sensors.gps.url");
    assert!(problems[0].reason.starts_with("missing scheme"));
    assert_eq!(
        problems[1].to_string(),
        "sensors.imu.url: unsupported scheme \"serial\" (supported: file://, iio://, mqtt://)"
    );
}

#[test]
fn web_listen_names_the_value() {
    let problems = problems_of(&format!(
        "{}web: {{listen: \"localhost:8080\"}}\n",
        minimal()
    ));
    assert_eq!(problems[0].path, "web.listen");
    assert!(problems[0].reason.contains("\"localhost:8080\""));
}

#[test]
fn yaml_syntax_error_reports_line() {
    let problems = problems_of("device:\n  id: d\npipeline: [1, 2\nstore: x\n");
    assert_eq!(problems.len(), 1);
    assert!(problems[0].path.is_empty());
    assert!(
        problems[0].reason.contains("line 4"),
        "{}",
        problems[0].reason
    );
}

#[test]
fn anchors_and_aliases_are_rejected() {
    // The first anchor or alias stops the parse, with its position and path.
    let text =
        "device: &dev {id: d}\npipeline:\n  sources:\n    - &src {id: a, url: a.mp4}\n    - *src\n";
    let problems = problems_of(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "device");
    assert!(
        problems[0]
            .reason
            .starts_with("line 1 column 9: YAML anchors"),
        "{problems:?}"
    );
    let text = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: a.mp4}\n    - *src\n";
    let problems = problems_of(text);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].path, "pipeline.sources[1]");
    assert!(
        problems[0]
            .reason
            .starts_with("line 5 column 7: YAML aliases"),
        "{problems:?}"
    );
    // Flow style, which a text scan missed: anchors and aliases after `:` or
    // `,` without a space, on scalars, lists and mappings.
    for (flow, at, what) in [
        ("{\"k\":&a x, \"j\": *a}", '&', "anchors"),
        ("{\"k\": x, \"j\":*a}", '*', "aliases"),
        ("[\"a\",&b 1]", '&', "anchors"),
        ("[\"a\",*b]", '*', "aliases"),
        ("{a: [1, &c {x: 1}]}", '&', "anchors"),
        ("[&d [1]]", '&', "anchors"),
        ("[!!str &e q]", '!', "anchors"),
        ("{? &f k : v}", '&', "anchors"),
    ] {
        let problems = problems_of(&format!("{}sensors: {flow}\n", minimal()));
        assert_eq!(problems.len(), 1, "{flow}: {problems:?}");
        let column = "sensors: ".len() + flow.find(at).expect("marker") + 1;
        assert!(
            problems[0]
                .reason
                .starts_with(&format!("line 5 column {column}: YAML {what}")),
            "{flow}: {problems:?}"
        );
    }
    // A multi-line flow alias, after a comment.
    let problems = problems_of(&format!(
        "{}sensors: [1, # &not-this\n  *this]\n",
        minimal()
    ));
    assert!(
        problems[0]
            .reason
            .starts_with("line 6 column 3: YAML aliases"),
        "{problems:?}"
    );
    // `&` and `*` inside values, quotes, comments and block scalars are fine,
    // and so is a continuation line of a plain scalar that starts with them
    // (the text scanner's false positive).
    let device_free = minimal().replace("device: {id: dev0}\n", "");
    let config = ok(&format!(
        "{device_free}# a comment with &anchor and *alias\ndevice:\n  id: d\n  name: \"Tom & *Jerry\"\n"
    ));
    assert_eq!(config.device.name.as_deref(), Some("Tom & *Jerry"));
    let config = ok(&format!(
        "{device_free}device:\n  id: d\n  name: |\n    *north &door\n"
    ));
    assert_eq!(config.device.name.as_deref(), Some("*north &door\n"));
    let config = ok(&format!(
        "{device_free}device: {{id: d, name: R&D *lab*}}\n"
    ));
    assert_eq!(config.device.name.as_deref(), Some("R&D *lab*"));
    let config = ok(&format!("{device_free}device:\n  id: d\n  name: a&b\n"));
    assert_eq!(config.device.name.as_deref(), Some("a&b"));
    let config = ok(&format!(
        "{device_free}device:\n  id: d\n  name: lobby\n    &north *door\n"
    ));
    assert_eq!(config.device.name.as_deref(), Some("lobby &north *door"));
    let config = ok(&format!(
        "{device_free}device: {{id: d, name: 'it''s &x, *y'}}\n"
    ));
    assert_eq!(config.device.name.as_deref(), Some("it's &x, *y"));
}

#[test]
fn deep_nesting_is_rejected() {
    let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
    let problems = problems_of(&format!("{}sensors: {deep}\n", minimal()));
    assert_eq!(problems.len(), 1);
    // The root mapping and 31 lists are open: the 32nd list is one too many.
    assert_eq!(problems[0].path, format!("sensors{}", "[0]".repeat(31)));
    assert_eq!(
        problems[0].reason,
        "line 5 column 41: nested deeper than 32 levels"
    );
    // Exactly 32 open collections are allowed; block style counts the same.
    let deep = format!("{}1{}", "[".repeat(31), "]".repeat(31));
    let problems = problems_of(&format!("{}sensors: {deep}\n", minimal()));
    assert!(problems[0].path.starts_with("sensors"), "{problems:?}");
    assert!(!problems[0].reason.contains("deeper"), "{problems:?}");
    let mut block = String::from("sensors:\n");
    for level in 1..40 {
        block.push_str(&format!("{}k{level}:\n", "  ".repeat(level)));
    }
    let problems = problems_of(&format!("{}{block}", minimal()));
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].path.starts_with("sensors.k1.k2.") && problems[0].path.ends_with(".k31"),
        "{problems:?}"
    );
    assert!(problems[0].reason.ends_with("nested deeper than 32 levels"));
}

#[test]
fn oversized_text_and_files_are_rejected() {
    let big = format!("{}# {}\n", minimal(), "x".repeat(1024 * 1024));
    assert!(problems_of(&big)[0].reason.contains("limit"));

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("big.yaml");
    std::fs::write(&path, &big).expect("write");
    assert!(matches!(load(&path), Err(ConfigError::TooLarge { .. })));
}

#[test]
fn load_reads_files_and_names_them_in_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("aegis.yaml");
    std::fs::write(&good, DEMO).expect("write");
    assert_eq!(load(&good).expect("valid"), ok(DEMO));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "device: {id: X}\npipeline: {sources: [{id: a, url: a.mp4}]}\n",
    )
    .expect("write");
    let message = load(&bad).expect_err("invalid").to_string();
    assert!(
        message.starts_with(&format!("{}: device.id: ", bad.display())),
        "{message}"
    );

    let missing = dir.path().join("missing.yaml");
    assert!(matches!(load(&missing), Err(ConfigError::Io { .. })));
}

#[test]
fn effective_pipeline_precedence() {
    let local = ok(DEMO);
    let (pipeline, origin) = effective_pipeline(&local, None);
    assert_eq!(origin, PipelineOrigin::LocalDefault);
    assert_eq!(pipeline, &local.pipeline);

    let workflow = PipelineConfig::from_yaml_str(
        "sources: [{id: wf0, url: wf.mp4}]\nsinks: [{kind: discard}]\n",
        "workflow",
    )
    .expect("valid");
    let (pipeline, origin) = effective_pipeline(&local, Some(&workflow));
    assert_eq!(origin, PipelineOrigin::SignedWorkflow);
    assert_eq!(pipeline.sources[0].id, "wf0");
    assert!(std::ptr::eq(pipeline, &workflow));
}

#[test]
fn schema_has_sections_and_docs() {
    let schema = json_schema().to_string();
    for needle in [
        "\"pipeline\"",
        "\"device\"",
        "\"timestamp_overlay\"",
        "\"loop\"",
        "Frames that may wait between two pipeline steps",
        "Unique device id, used in MQTT topics",
    ] {
        assert!(schema.contains(needle), "schema lacks {needle}");
    }
    assert!(!schema.contains("loop_"));
    let pipeline = pipeline_json_schema();
    let required = pipeline["required"].as_array().expect("required list");
    assert!(required.iter().any(|field| field == "sources"));
    assert!(pipeline.to_string().contains("Video inputs (at least one)"));
}

#[test]
fn invalid_display_lists_every_problem() {
    let error = ConfigError::Invalid {
        origin: "aegis.yaml".into(),
        problems: vec![Problem::new("a.b", "bad"), Problem::new("", "worse")],
    };
    assert_eq!(error.to_string(), "aegis.yaml: a.b: bad\naegis.yaml: worse");
    assert_eq!(error.problems().len(), 2);
}

#[test]
fn record_sinks_must_not_share_directories() {
    let text = minimal()
        + "  sinks:\n    - {kind: record, dir: /rec}\n    - {kind: discard}\n    - {kind: record, dir: /rec/cam}\n    - {kind: record, dir: /other}\n";
    assert_eq!(paths_of(&text), ["pipeline.sinks[2].dir"]);
    let text =
        minimal() + "  sinks:\n    - {kind: record, dir: /a}\n    - {kind: record, dir: /b}\n";
    ok(&text);
}

const INFERENCE: &str = "inference:
  runtime: lib/libonnxruntime.so
  models:
    - {name: seg, kind: selfie_segmentation, file: m/seg.onnx}
    - {name: nn, kind: nudenet, file: m/nn.onnx, sha256: c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f}
";

#[test]
fn inference_stages_parse_with_defaults() {
    let text = format!(
        "{}  stages:\n    - {{kind: virtual_background, model: seg, colour: '#00ff00'}}\n    - {{kind: moderate, model: nn}}\n    - {{kind: detect, model: nn, classes: [FACE_FEMALE]}}\n{INFERENCE}",
        minimal()
    );
    let config = crate::from_yaml_str(&text, "t.yaml").unwrap();
    assert_eq!(config.inference.models.len(), 2);
    assert_eq!(config.inference.models[1].input_size(), 320);
    match &config.pipeline.stages[1] {
        StageConfig::Moderate(m) => {
            assert_eq!((m.every_n_frames, m.rules.is_none()), (5, true));
        }
        other => panic!("{other:?}"),
    }
    match &config.pipeline.stages[2] {
        StageConfig::Detect(d) => assert_eq!(d.tracker.min_hits, 3),
        other => panic!("{other:?}"),
    }
}

#[test]
fn inference_problems_are_named() {
    let text = format!(
        "{}  stages:
    - {{kind: virtual_background, model: seg, blur: 1, colour: green}}
    - {{kind: detect, model: seg}}
    - {{kind: moderate, model: nope, rules: [{{classes: [], action: drop, min_score: 2}}]}}
inference:
  max_batch: 0
  sessions: 9
  tensorrt: {{dla_core: 2, int8: true}}
  models:
    - {{name: seg, kind: selfie_segmentation, file: a.onnx, sha256: abc}}
    - {{name: seg, kind: yolov8, file: b.onnx}}
",
        minimal()
    );
    let paths = paths_of(&text);
    for want in [
        "pipeline.stages[0]",
        "pipeline.stages[0].blur",
        "pipeline.stages[0].colour",
        "pipeline.stages[1].model",
        "pipeline.stages[2].model",
        "pipeline.stages[2].rules[0].classes",
        "pipeline.stages[2].rules[0].min_score",
        "inference.max_batch",
        "inference.sessions",
        "inference.tensorrt.dla_core",
        "inference.tensorrt.int8_calibration_table",
        "inference.models[0].sha256",
        "inference.models[1].name",
        "inference.models[1].labels",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
}

#[test]
fn workflow_settings_are_checked() {
    let text = "device: { id: d }\npipeline:\n  sources: [{ id: a, url: \"file:///x.mp4\" }]\n  sinks: [{ kind: discard }]\nworkflows:\n  enabled: true\n  trust: { threshold: 2, roots: [/r.pub] }\n  policy: { algorithms: [rsa], paths: [rel/dir, /a/../b] }\n  health: { max_error_ratio: 2 }\n";
    let err = crate::from_yaml_str(text, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "workflows.trust.threshold",
        "workflows.policy.algorithms[0]",
        "workflows.policy.paths[0]",
        "workflows.policy.paths[1]",
        "workflows.health.max_error_ratio",
    ] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
    let none = "device: { id: d }\npipeline:\n  sources: [{ id: a, url: \"file:///x.mp4\" }]\n  sinks: [{ kind: discard }]\nworkflows: { enabled: true }\n";
    let err = crate::from_yaml_str(none, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(err.contains("workflows.trust.roots"), "{err}");
}

#[test]
fn sensors_rules_and_iot_are_parsed_and_checked() {
    let text = r#"device: { id: d }
pipeline:
  sources: [{ id: a, url: "file:///x.mp4" }]
  sinks: [{ kind: discard }]
  rules:
    - { name: moving_alert, when: { all: [ { moderation: {} }, { speed: { gt: 0 } } ] } }
sensors:
  gps: { url: "udp://0.0.0.0:10110" }
  iot:
    - { name: door, topic: site/door, unit: contact }
    - { name: temp, topic: site/temp, field: celsius, min: -40, max: 85 }
  rules:
    - name: intruder
      when:
        all:
          - track: { label: person, zone: [[0, 0], [0.5, 0], [0.5, 1], [0, 1]] }
          - sensor: { name: door, eq: 1 }
      for_s: 5
    - { name: hot, when: { not: { sensor: { name: temp, le: 40 } } } }
"#;
    let cfg = crate::from_yaml_str(text, "t.yaml").unwrap();
    assert_eq!(cfg.sensors.rules.len(), 2);
    assert_eq!(cfg.pipeline.rules.len(), 1);
    assert_eq!(cfg.sensors.iot[1].field, "celsius");
    let bad = text
        .replace("name: door, eq: 1", "name: window, eq: 1")
        .replace("[0.5, 1], [0, 1]", "[1.5, 1]")
        .replace("{ speed: { gt: 0 } }", "{ speed: {} }")
        .replace("min: -40, max: 85", "min: 85, max: -40");
    let err = crate::from_yaml_str(&bad, "t.yaml")
        .unwrap_err()
        .to_string();
    for want in [
        "sensors.rules[0].when.all[1].sensor.name",
        "sensors.rules[0].when.all[0].track.zone",
        "pipeline.rules[0].when.all[1].speed",
        "sensors.iot[1].max",
    ] {
        assert!(err.contains(want), "{want} missing from {err}");
    }
    // A pipeline rule naming a sensor the device does not have.
    let unknown = text.replace("{ speed: { gt: 0 } }", "{ sensor: { name: gate, eq: 1 } }");
    let err = crate::from_yaml_str(&unknown, "t.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pipeline.rules[0].when.all[1].sensor.name"),
        "{err}"
    );
}

/// Every URL the strict parser refuses fails validation at `sources[i].url` with the parser's
/// reason; the config's `Debug` never shows user information or the query.
#[test]
fn ambiguous_source_urls_fail_validation_with_the_parsers_reason() {
    let cases = [
        ("rtsp://127.0.0.2?@169.254.169.254/x", None),
        ("rtsp://a@b@127.0.0.2/", Some("more than one '@'")),
        ("rtsp://127.0.0.2#@evil/", Some("fragment")),
        ("rtsp://127.1/", Some("ambiguous numeric host")),
        ("rtmp://2130706433/app", Some("ambiguous numeric host")),
        ("rtsp://[::1%25lo]/", Some("zone")),
        ("rtsp://h:554x/", Some("invalid character 'x' in the port")),
        ("srt://h", Some("need a port")),
        ("rtsp://h/s?tcp", Some("transport")),
        ("v4l2:///dev/../dev/video0", Some("`..` component")),
        ("v4l2:///dev//video0", Some("empty component")),
        ("v4l2:///dev/./video0", Some("`.` component")),
        ("v4l2://dev/video0", Some("absolute device path")),
        ("v4l2:///dev/video0/", Some("empty component")),
    ];
    for (url, reason) in cases {
        let text = format!(
            "device: {{id: d}}\npipeline:\n  sources:\n    - {{id: a, url: a.mp4}}\n    - {{id: b, url: \"{url}\"}}\n"
        );
        match reason {
            None => {
                // Not ambiguous: the authority ends at '?', so the host is 127.0.0.2 for the
                // parser and for libavformat alike.
                let cfg = ok(&text);
                match cfg.pipeline.sources[1].location() {
                    SourceLocation::Rtsp(u) => assert_eq!(u.host_str(), "127.0.0.2"),
                    other => panic!("{other:?}"),
                }
            }
            Some(reason) => {
                let problems = problems_of(&text);
                assert_eq!(problems.len(), 1, "{url}: {problems:?}");
                assert_eq!(problems[0].path, "pipeline.sources[1].url", "{url}");
                assert!(
                    problems[0].reason.contains(reason),
                    "{url}: {:?} lacks {reason:?}",
                    problems[0].reason
                );
            }
        }
    }
    let text = minimal().replace(
        "{id: cam0, url: clip.mp4}",
        "{id: cam0, url: \"srt://enc:9000?passphrase=sesame99&mode=caller\"}",
    );
    let shown = format!("{:?}", ok(&text));
    assert!(!shown.contains("sesame99"), "{shown}");
    assert!(shown.contains("srt://enc:9000?***"), "{shown}");
    let text = minimal().replace(
        "{id: cam0, url: clip.mp4}",
        "{id: cam0, url: \"rtsp://admin:hunter2@cam/live\"}",
    );
    let shown = format!("{:?}", ok(&text));
    assert!(
        !shown.contains("hunter2") && !shown.contains("admin"),
        "{shown}"
    );
}

#[test]
fn policy_devices_must_be_plain_absolute_paths() {
    let text = "device: { id: d }\npipeline:\n  sources: [{ id: a, url: \"file:///x.mp4\" }]\nworkflows:\n  policy: { devices: [/dev/video0, dev/video1, /dev/../video2, /dev//video3] }\n";
    let problems = problems_of(text);
    let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "workflows.policy.devices[1]",
            "workflows.policy.devices[2]",
            "workflows.policy.devices[3]"
        ],
        "{problems:?}"
    );
    let good = text.replace(", dev/video1, /dev/../video2, /dev//video3", "");
    assert_eq!(
        ok(&good).workflows.policy.devices,
        [PathBuf::from("/dev/video0")]
    );
}

#[test]
fn overlapping_record_directories_are_named_once_each() {
    let text = format!(
        "{}  sinks:\n    - {{kind: record, dir: /r/a}}\n    - {{kind: record, dir: /r/a/b}}\n    - {{kind: record, dir: /r/c}}\n    - {{kind: record, dir: /r/a}}\n    - {{kind: record, dir: /r/ab}}\n    - {{kind: record, dir: /r}}\n",
        minimal()
    );
    let problems = problems_of(&text);
    let got: Vec<(String, String)> = problems
        .iter()
        .map(|p| (p.path.clone(), p.reason.clone()))
        .collect();
    // A sink is named when an earlier one overlaps it: /r/a/b (1) and the second /r/a (3)
    // nest in /r/a (0); /r (5) holds them all. /r/c (2) and /r/ab (4, a name prefix of
    // /r/a, not a path prefix) overlap only the later /r, which is named instead.
    let paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "pipeline.sinks[1].dir",
            "pipeline.sinks[3].dir",
            "pipeline.sinks[5].dir"
        ],
        "{got:?}"
    );
    assert!(got.iter().all(|(_, m)| m.contains("sinks[0]")), "{got:?}");
}

#[test]
fn the_effective_yaml_parses_back_to_the_same_configuration() {
    let with_null_fallback = format!("{}backend: {{ kind: cuda, fallback: null }}\n", minimal());
    for text in [DEMO, FULL, minimal().as_str(), with_null_fallback.as_str()] {
        let cfg = ok(text);
        let v = effective_yaml(&cfg);
        let emitted = serde_yaml_ng::to_string(&v).unwrap();
        let back = ok(&emitted);
        assert_eq!(back, cfg, "{emitted}");
        // Every option is spelled out, unset optional ones left out.
        assert!(emitted.contains("retention_days:"), "{emitted}");
        assert!(!emitted.contains("max_frames: null"), "{emitted}");
    }
    let cfg = ok(&with_null_fallback);
    let emitted = serde_yaml_ng::to_string(&effective_yaml(&cfg)).unwrap();
    assert!(emitted.contains("fallback: null"), "{emitted}");
    // The sections in the order of the config types.
    let keys: Vec<String> = match effective_yaml(&cfg) {
        serde_yaml_ng::Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        other => panic!("{other:?}"),
    };
    assert_eq!(&keys[..3], ["device", "backend", "pipeline"]);
}

#[test]
fn firmware_updates_need_workflows_the_devices_image_and_board_and_a_simulated_boards_file() {
    let base = |fw: &str, workflows: bool| {
        format!(
            "{}workflows:\n  enabled: {workflows}\n  trust: {{ roots: [/r.pub] }}\n  firmware: {fw}\n",
            minimal()
        )
    };
    let paths = paths_of(&base(
        "{ enabled: true, image: \"bad/name\", updater: simulated, trial_s: 0, swupdate: { max_attempts: 9, reboot_command: [] } }",
        false,
    ));
    for p in [
        "workflows.firmware.enabled",
        "workflows.firmware.image",
        "workflows.firmware.board",
        "workflows.firmware.trial_s",
        "workflows.firmware.swupdate.max_attempts",
        "workflows.firmware.swupdate.reboot_command",
        "workflows.firmware.simulated_board",
    ] {
        assert!(paths.iter().any(|x| x == p), "{p} not in {paths:?}");
    }
    // Off: nothing is checked; on with what it needs: accepted.
    ok(&base("{ enabled: false, image: \"bad/name\" }", false));
    let c = ok(&base(
        "{ enabled: true, image: aegis-image, board: jetson-orin-nano-devkit }",
        true,
    ));
    assert_eq!(
        c.workflows.firmware_dir(),
        PathBuf::from("/var/lib/aegis/workflows/firmware")
    );
}

#[test]
fn evidence_policy_and_zones_are_checked_against_the_pipeline() {
    let good = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: clip.mp4, zones: [{name: door, polygon: [[0, 0], [1, 0], [1, 1]]}]}\n  sinks: [{kind: record, dir: /rec}]\n  evidence:\n    dir: /ev\n    keep:\n      - {on: detection, labels: [person], zone: door}\n      - {on: moderation}\n";
    let cfg = ok(good);
    let e = cfg.pipeline.evidence.unwrap();
    assert_eq!(
        (e.pre_roll_seconds, e.post_roll_seconds, e.encrypt),
        (5.0, 5.0, true)
    );
    // Moderation keeps no imagery unless told to; the others do.
    assert!(e.keep[0].keeps_imagery() && !e.keep[1].keeps_imagery());
    let bad = "device: {id: d}\npipeline:\n  sources:\n    - {id: a, url: clip.mp4, zones: [{name: door, polygon: [[0, 0], [2, 0]]}, {name: door, polygon: [[0, 0], [1, 0], [1, 1]]}]}\n  sinks: [{kind: discard}]\n  evidence:\n    dir: /ev\n    pre_roll_seconds: 61\n    keep:\n      - {on: detection, zone: gate}\n      - {on: moderation, labels: [x], retention_days: 0}\n";
    assert_eq!(
        paths_of(bad),
        [
            "pipeline.sources[0].zones[0].polygon",
            "pipeline.sources[0].zones[0].polygon",
            "pipeline.sources[0].zones[1].name",
            "pipeline.evidence.pre_roll_seconds",
            "pipeline.evidence.keep[1].retention_days",
            "pipeline.evidence.keep[1].labels",
            "pipeline.evidence",
            "pipeline.evidence.keep[0].zone",
        ]
    );
    // Clips inside the recordings' directory would be deleted by their disk budget.
    let nested = "device: {id: d}\npipeline:\n  sources: [{id: a, url: clip.mp4}]\n  sinks: [{kind: record, dir: /rec}]\n  evidence: {dir: /rec/clips}\n";
    assert_eq!(paths_of(nested), ["pipeline.evidence.dir"]);
}

#[test]
fn streaming_outputs_are_checked() {
    let good = format!(
        "{}  sinks:
    - {{kind: restream, streams: [cam0]}}
    - {{kind: hls}}
    - {{kind: webrtc, streams: [cam0]}}
    - {{kind: push, stream: cam0, url: \"rtmp://ingest.example.com/live\", stream_key: abc123}}
    - {{kind: push, stream: cam0, url: \"srt://10.0.0.9:9000\", passphrase: \"0123456789ab\"}}
outputs:
  rtsp: {{listen: \"0.0.0.0:8554\", users: [{{name: vms, password: \"long enough\"}}]}}
",
        minimal()
    );
    let cfg = ok(&good);
    let rtsp = cfg.outputs.rtsp.as_ref().unwrap();
    assert!(rtsp.udp && rtsp.max_clients == 16);
    assert_eq!(
        cfg.pipeline.sinks[1],
        crate::SinkConfig::Hls(crate::HlsSink::default())
    );
    assert!(
        matches!(&cfg.pipeline.sinks[2], crate::SinkConfig::WebRtc(w) if w.max_sessions == 4 && w.serves("cam0") && !w.serves("cam1"))
    );
    // Secrets print as ***, the RTMP key included in no form.
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("abc123")
            && !shown.contains("0123456789ab")
            && !shown.contains("long enough"),
        "{shown}"
    );

    let bad = format!(
        "{}  sinks:
    - {{kind: restream, streams: [cam9]}}
    - {{kind: restream}}
    - {{kind: push, stream: cam0, url: \"rtsp://h/x\"}}
    - {{kind: push, stream: cam0, url: \"rtmp://u:p@h/live\", passphrase: \"0123456789\"}}
    - {{kind: push, stream: cam0, url: \"srt://h:9000?passphrase=0123456789\", stream_key: k}}
    - {{kind: push, stream: cam0, url: \"srt://h:9000\", passphrase: short, backoff_max_s: 0}}
    - {{kind: push, stream: nope, url: \"rtmp://h/live\", stream_key: \"a/b\"}}
    - {{kind: hls, streams: [cam7], segment_s: 11, part_ms: 50, segments: 2}}
    - {{kind: hls, segment_s: 1, part_ms: 1000}}
    - {{kind: webrtc, streams: [nope], max_sessions: 0}}
    - {{kind: webrtc}}
outputs:
  rtsp: {{listen: \"8554\", max_clients: 0, users: [{{name: \"a:b\", password: short}}, {{name: \"a:b\", password: \"long enough\"}}]}}
",
        minimal()
    );
    let paths = paths_of(&bad);
    for want in [
        "pipeline.sinks[0].streams[0]",
        "pipeline.sinks[1]",
        "pipeline.sinks[2].url",
        "pipeline.sinks[3].url",
        "pipeline.sinks[3].passphrase",
        "pipeline.sinks[4].url",
        "pipeline.sinks[4].stream_key",
        "pipeline.sinks[5].passphrase",
        "pipeline.sinks[5].backoff_max_s",
        "pipeline.sinks[6].stream",
        "pipeline.sinks[6].stream_key",
        "pipeline.sinks[7].streams[0]",
        "pipeline.sinks[7].segment_s",
        "pipeline.sinks[7].part_ms",
        "pipeline.sinks[7].segments",
        "pipeline.sinks[8]",
        "pipeline.sinks[8].part_ms",
        "pipeline.sinks[9].streams[0]",
        "pipeline.sinks[9].max_sessions",
        "pipeline.sinks[10]",
        "outputs.rtsp.listen",
        "outputs.rtsp.max_clients",
        "outputs.rtsp.users[0].name",
        "outputs.rtsp.users[0].password",
        "outputs.rtsp.users[1].name",
    ] {
        assert!(
            paths.iter().any(|p| p == want),
            "{want} missing from {paths:?}"
        );
    }
    // No account and not anonymous: refused with the way out named.
    let none = format!("{}outputs:\n  rtsp: {{}}\n", minimal());
    let p = problems_of(&none);
    assert!(
        p.iter()
            .any(|p| p.path == "outputs.rtsp.users" && p.reason.contains("anonymous")),
        "{p:?}"
    );
    ok(&format!(
        "{}outputs:\n  rtsp: {{anonymous: true}}\n",
        minimal()
    ));
}

#[test]
fn whip_sources_need_a_strong_publish_token_and_nothing_else_takes_one() {
    assert_eq!(
        SourceConfig::new("a", "whip:").location(),
        SourceLocation::Whip
    );
    let config = |sources: &str| format!("device: {{id: d}}\npipeline:\n  sources:\n{sources}");
    ok(&config(
        "    - {id: a, url: \"whip:\", publish_token: \"0123456789abcdef0123456789\"}\n",
    ));
    let bad = config(concat!(
        "    - {id: a, url: \"whip:\"}\n",
        "    - {id: b, url: \"whip://h/x\", publish_token: \"0123456789abcdef0123456789\"}\n",
        "    - {id: c, url: \"whip:\", publish_token: \"short\"}\n",
        "    - {id: d, url: \"whip:\", publish_token: \"0123456789abcdef 0123456789\"}\n",
        "    - {id: e, url: \"a.mp4\", publish_token: \"0123456789abcdef0123456789\"}\n",
    ));
    let problems = problems_of(&bad);
    let find = |path: &str| reason_at(&problems, path);
    assert!(find("pipeline.sources[0].publish_token").contains("needs a publish_token"));
    assert!(find("pipeline.sources[1].url").contains("just `whip:`"));
    assert!(find("pipeline.sources[2].publish_token").contains("24 to 256"));
    assert!(find("pipeline.sources[3].publish_token").contains("visible ASCII"));
    assert!(find("pipeline.sources[4].publish_token").contains("only whip sources"));
    // The token is a secret: never in the config's debug form.
    let mut s = SourceConfig::new("a", "whip:");
    s.publish_token = Some(Secret::new("0123456789abcdef0123456789"));
    assert!(!format!("{s:?}").contains("0123456789abcdef"));
}

#[test]
fn the_webrtc_udp_port_is_an_address_with_a_port() {
    let with = |udp: &str| format!("{}outputs: {{ webrtc: {{ udp: \"{udp}\" }} }}\n", minimal());
    let cfg = ok(&with("0.0.0.0:8189"));
    assert_eq!(
        cfg.outputs.webrtc.and_then(|w| w.udp).as_deref(),
        Some("0.0.0.0:8189")
    );
    for bad in ["8189", "0.0.0.0:0", "host:8189"] {
        assert_eq!(paths_of(&with(bad)), ["outputs.webrtc.udp"], "{bad}");
    }
}

#[test]
fn hls_clients_have_names_and_strong_tokens_of_their_own() {
    const T1: &str = "0123456789abcdef0123456789";
    const T2: &str = "abcdef0123456789abcdef0123";
    let with = |clients: &str| format!("{}outputs:\n  hls:\n    clients:\n{clients}", minimal());
    let cfg = ok(&with(&format!(
        "    - {{name: cdn-origin, token: \"{T1}\"}}\n    - {{name: vms.1, token: \"{T2}\"}}\n"
    )));
    let clients = cfg.outputs.hls.unwrap().clients;
    assert_eq!(clients.len(), 2);
    assert_eq!(clients[1].token.expose(), T2);
    // The token is a secret: never in the config's debug form.
    assert!(!format!("{clients:?}").contains(T1));
    let bad = with(&format!(
        concat!(
            "    - {{name: \"a:b\", token: \"{t1}\"}}\n",
            "    - {{name: cdn, token: short}}\n",
            "    - {{name: cdn, token: \"{t2} x\"}}\n",
            "    - {{name: other, token: \"{t1}\"}}\n",
            "    - {{name: \"\", token: \"{t2}\"}}\n",
        ),
        t1 = T1,
        t2 = T2
    ));
    let problems = problems_of(&bad);
    let find = |path: &str| reason_at(&problems, path);
    assert!(find("outputs.hls.clients[0].name").contains("letters, digits"));
    assert!(find("outputs.hls.clients[1].token").contains("24 to 256"));
    assert!(find("outputs.hls.clients[2].name").contains("listed twice"));
    assert!(find("outputs.hls.clients[2].token").contains("visible ASCII"));
    assert!(find("outputs.hls.clients[3].token").contains("another client"));
    assert!(find("outputs.hls.clients[4].name").contains("1 to 64"));
    assert_eq!(problems.len(), 6, "{problems:?}");
}

#[test]
fn rtsps_carries_the_media_inside_tls_only() {
    let with = |extra: &str| {
        format!(
            "{}outputs:\n  rtsp: {{anonymous: true, tls: true{extra}}}\n",
            minimal()
        )
    };
    assert!(ok(&with(", udp: false")).outputs.rtsp.unwrap().tls);
    assert_eq!(paths_of(&with("")), ["outputs.rtsp.udp"]);
    assert!(reason_at(&problems_of(&with("")), "outputs.rtsp.udp").contains("udp: false"));
}
