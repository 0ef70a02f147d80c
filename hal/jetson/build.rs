//! Names the C compiler for the target being built, for the tests: they compile C stand-ins
//! for NVIDIA's libraries (tests/stub/*.c) into shared objects that this crate then dlopens,
//! so a cross build (aarch64 under qemu, tools/cross-test.sh) needs aarch64 objects. Nothing
//! is compiled here; a missing compiler only surfaces when the tests run.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cc = match cc::Build::new().cargo_metadata(false).try_get_compiler() {
        Ok(tool) => {
            let mut words = vec![tool.path().to_string_lossy().into_owned()];
            words.extend(tool.args().iter().map(|a| a.to_string_lossy().into_owned()));
            // Unit separator: compiler paths and flags may contain spaces.
            words.join("\u{1f}")
        }
        Err(e) => {
            println!("cargo:warning=aegis-jetson tests will not find a C compiler: {e}");
            String::new()
        }
    };
    println!("cargo:rustc-env=AEGIS_JETSON_TEST_CC={cc}");
}
