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

/// `aegis track` on detections made from a generated clip's ground truth: about one stable
/// track per object, and bad input named by line.
#[test]
fn track_command_follows_the_sample_objects() {
    let dir = tempfile::tempdir().unwrap();
    let clip = aegis_tests::make_clip(dir.path(), "c.mp4", 320, 240, 4.0);
    let truth: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.truth.json", clip.display())).unwrap())
            .unwrap();
    let mut det = String::new();
    let mut objects = std::collections::HashSet::new();
    for f in truth["frames"].as_array().unwrap() {
        let frame = f["index"].as_u64().unwrap() + 1;
        for o in f["objects"].as_array().unwrap() {
            objects.insert(o["id"].as_u64().unwrap());
            det.push_str(&format!(
                "{frame},-1,{},{},{},{},0.9,-1,-1,-1\n",
                o["x"], o["y"], o["w"], o["h"]
            ));
        }
    }
    let (det_path, res_path) = (dir.path().join("det.txt"), dir.path().join("res.txt"));
    std::fs::write(&det_path, det).unwrap();
    let track_args = [
        "track",
        "--det",
        det_path.to_str().unwrap(),
        "--out",
        res_path.to_str().unwrap(),
    ];
    aegis_tests::aegis_ok(dir.path(), &track_args);
    let res = std::fs::read_to_string(&res_path).unwrap();
    let ids: std::collections::HashSet<&str> =
        res.lines().filter_map(|l| l.split(',').nth(1)).collect();
    // Small fast objects bouncing off the frame edge can outrun an IoU match for a frame or
    // two (a known limit of SORT-style trackers): allow a couple of new ids, not more.
    assert!(
        ids.len() >= objects.len() && ids.len() <= objects.len() + 2,
        "{} objects gave tracks {ids:?}",
        objects.len()
    );
    assert!(
        res.lines().count() >= 120 * objects.len() - 10,
        "tracks cover the frames"
    );

    std::fs::write(&det_path, "1,-1,1,2,3,4,0.9\n2,-1,1,2,oops,4,0.9\n").unwrap();
    let o = aegis(dir.path(), &track_args);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("det.txt") && err.contains("line 2") && err.contains("width"),
        "{err}"
    );
}

/// `aegis ARGS` in `dir` with libcuda hidden (`AEGIS_CUDA_HIDE`): the no-driver path, also on
/// a machine with a GPU.
fn aegis_without_libcuda(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(aegis_tests::aegis_bin())
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("AEGIS_CUDA_HIDE", "libcuda")
        .output()
        .expect("spawn aegis")
}

#[test]
fn cuda_backend_without_a_driver_falls_back_or_names_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let clip = aegis_tests::make_clip(dir.path(), "clip.mp4", 160, 120, 1.0);
    let write = |name: &str, fallback: &str| {
        let p = dir.path().join(name);
        std::fs::write(
            &p,
            format!(
                "device: {{id: gpu-box}}\nbackend: {{kind: cuda, fallback: {fallback}}}\n\
                 pipeline:\n  sources: [{{id: a, url: \"file://{clip}\"}}]\n  stages: []\n  \
                 sinks: [{{kind: discard}}]\nstore: {{path: {db}}}\n\
                 web: {{listen: \"127.0.0.1:0\"}}\n",
                clip = clip.display(),
                db = dir.path().join(format!("{name}.db")).display()
            ),
        )
        .unwrap();
        p
    };
    let reason = "backend.kind: cuda cannot run here: no CUDA driver: libcuda.so.1 could not be \
                  loaded (hidden by AEGIS_CUDA_HIDE)";

    // fallback: null — check-config and run both refuse, saying why; run processes nothing.
    let strict = write("strict.yaml", "null");
    let strict = strict.to_str().unwrap();
    let o = aegis_without_libcuda(dir.path(), &["check-config", strict]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(reason), "{err}");
    let o = aegis_without_libcuda(dir.path(), &["run", "--config", strict]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(err.contains(reason), "{err}");
    assert!(
        !out.contains("stream a:"),
        "a refused run ran a stream: {out}"
    );

    // fallback: cpu — check-config accepts; run warns with the reason and runs on the CPU.
    let lenient = write("lenient.yaml", "cpu");
    let lenient = lenient.to_str().unwrap();
    let o = aegis_without_libcuda(dir.path(), &["check-config", lenient]);
    assert!(o.status.success(), "{o:?}");
    let o = aegis_without_libcuda(dir.path(), &["run", "--config", lenient]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}\n{err}");
    assert!(
        err.contains("backend unavailable; using the fallback") && err.contains("no CUDA driver"),
        "{err}"
    );
    assert_eq!(aegis_tests::delivered_frames(&out, "a"), 30, "{out}");
}
