//! For the tests of the `jetson` backend's decoder (src/codec/nvmm.rs), which run against
//! aegis-jetson's stand-ins: the target's C compiler for its C stand-ins (as
//! hal/jetson/build.rs names it) and where their sources are. Nothing is compiled here.

include!("jetson/build_cc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=jetson/build_cc.rs");
    emit_test_cc();
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rustc-env=AEGIS_JETSON_STUB_DIR={dir}/jetson/tests/stub");
}
