//! The `aegis` binary itself: it starts, names its version and refuses what it does not
//! know. (Being an integration test of this package also makes `cargo test --workspace`
//! build the real binary, which the end-to-end tests of `tests/` run.)

use std::process::Command;

/// `aegis`, through the emulator when tools/cross-test.sh built it for the Jetson (it sets
/// AEGIS_CROSS_RUNNER).
fn aegis() -> Command {
    let exe = env!("CARGO_BIN_EXE_aegis");
    let runner = std::env::var("AEGIS_CROSS_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    match words.next() {
        Some(emulator) => {
            let mut c = Command::new(emulator);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    }
}

#[test]
fn the_binary_names_its_version_and_refuses_an_unknown_command() {
    let out = aegis().arg("version").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(env!("CARGO_PKG_VERSION")), "{text}");
    let out = aegis().arg("no-such-command").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no-such-command"), "{err}");
}
