// Shared by hal/jetson/build.rs and hal/build.rs (`include!`d): names the C compiler for the
// target being built, for the tests' C stand-ins of NVIDIA's libraries.

/// Emits `AEGIS_JETSON_TEST_CC`: the target's C compiler and its leading arguments, joined
/// by the unit separator (compiler paths and flags may contain spaces); empty if none.
fn emit_test_cc() {
    let cc = match cc::Build::new().cargo_metadata(false).try_get_compiler() {
        Ok(tool) => {
            let mut words = vec![tool.path().to_string_lossy().into_owned()];
            words.extend(tool.args().iter().map(|a| a.to_string_lossy().into_owned()));
            words.join("\u{1f}")
        }
        Err(e) => {
            println!("cargo:warning=the Jetson stand-in tests will not find a C compiler: {e}");
            String::new()
        }
    };
    println!("cargo:rustc-env=AEGIS_JETSON_TEST_CC={cc}");
}
