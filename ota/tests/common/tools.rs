//! What the gateway's tests share that needs nothing else: whether a tool is installed (a
//! skip recorded, a failure under CI) and a free loopback port. The `chimera` binary's unit
//! tests include this file too (`#[path]`).

/// `ok`, or: under CI a failure ("CI must install TOOL"), else a [`skip`].
pub fn have(suite: &str, tool: &str, ok: bool) -> bool {
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install {tool}"
    );
    if !ok {
        skip(suite, &format!("{tool} not installed"));
    }
    ok
}

/// Says loudly that the running test of `suite` skips for `why`, and records it in
/// `$AEGIS_SKIP_LOG` (`tools/test-skips.sh` lists the file; under CI a skip fails the run).
pub fn skip(suite: &str, why: &str) {
    let line = format!(
        "{suite} {}: {why}",
        std::thread::current().name().unwrap_or("?")
    );
    eprintln!("SKIPPED {line}");
    if let Some(log) = std::env::var_os("AEGIS_SKIP_LOG") {
        use std::io::Write;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .expect("record the skip");
    }
}

/// A free port on 127.0.0.1 (free when asked; taken by whoever binds it first).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}
