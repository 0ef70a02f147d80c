//! Names the C compiler for the target being built, for the tests: they compile C stand-ins
//! for NVIDIA's libraries (tests/stub/*.c) into shared objects that this crate then dlopens,
//! so a cross build (aarch64 under qemu, tools/cross-test.sh) needs aarch64 objects. Nothing
//! is compiled here; a missing compiler only surfaces when the tests run.

include!("build_cc.rs");

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=build_cc.rs");
    emit_test_cc();
}
