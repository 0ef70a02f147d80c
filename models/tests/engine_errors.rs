//! Its own test binary, so no ONNX Runtime is loaded in this process yet.

#[test]
fn a_missing_runtime_library_is_named() {
    let lib = std::path::Path::new("/nonexistent/libonnxruntime.so.1.32.0");
    let e = aegis_models::engine::OrtSession::open(lib, std::path::Path::new("m.onnx"), 1)
        .err()
        .expect("must fail");
    let msg = e.to_string();
    assert!(
        msg.contains("/nonexistent/libonnxruntime.so.1.32.0") && msg.contains("just models"),
        "{msg}"
    );
}
