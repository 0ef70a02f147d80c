//! `aegis check-config` and `aegis schema` as a user runs them.

use aegis_tests::aegis;

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.yaml");
    std::fs::write(
        &cfg,
        r#"
device:
  id: Bad Id
pipeline:
  sources:
    - id: cam0
      url: htp://camera/stream
  stages:
    - kind: timestamp_overlay
      colour: red
  sinks:
    - kind: record
      dir: /tmp/x
      segment_seconds: 0
surprise: true
"#,
    )
    .unwrap();
    let o = aegis(dir.path(), &["check-config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    for needle in [
        "device.id",
        "pipeline.sources[0].url: unsupported scheme \"htp\"",
        "pipeline.stages[0]",
        "colour",
        "pipeline.sinks[0].segment_seconds",
        "surprise",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn shipped_examples_are_valid() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for f in ["config/examples/demo.yaml", "config/examples/full.yaml"] {
        let o = aegis(&root, &["check-config", f]);
        assert!(
            o.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(String::from_utf8_lossy(&o.stdout).contains("ok"));
    }
}

#[test]
fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let o = aegis(dir.path(), &["check-config", "nope.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nope.yaml"));
}

#[test]
fn schema_is_json_with_the_pipeline() {
    let dir = tempfile::tempdir().unwrap();
    let o = aegis(dir.path(), &["schema"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("schema is JSON");
    assert!(v["properties"]["pipeline"].is_object(), "{v}");
    let o = aegis(dir.path(), &["schema", "--pipeline"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("schema is JSON");
    assert!(v["properties"]["sources"].is_object(), "{v}");
}
