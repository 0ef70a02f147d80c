//! Parsing cost at the size limits: hostile nesting is rejected by the event
//! pre-pass before any tree is built, and benign documents near the limit
//! parse. Wall times are printed (`cargo test -p aegis-config --test
//! parse_cost -- --nocapture`), never asserted: the machine running the tests
//! decides those; what is asserted is the verdict.

use std::time::{Duration, Instant};

use aegis_config::{MAX_CONFIG_BYTES, from_yaml_str, yaml_value};

/// Nesting depth of the hostile inputs (the outside review used 62k).
const DEPTH: usize = 62_000;
/// The size limit of configuration text.
const LIMIT: usize = MAX_CONFIG_BYTES as usize;

fn timed<T>(label: &str, bytes: usize, run: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = run();
    let took = start.elapsed();
    eprintln!("parse_cost: {label:<44} {bytes:>8} bytes {took:>12.3?}");
    (out, took)
}

fn depth_problem(text: &str, label: &str) {
    let (result, _) = timed(label, text.len(), || yaml_value(text, "t"));
    let error = result.expect_err("deep nesting must be rejected");
    let problems = error.problems();
    assert_eq!(problems.len(), 1, "{error}");
    assert!(
        problems[0].reason.contains("nested deeper than 32 levels")
            && problems[0].reason.starts_with("line 1 column "),
        "{error}"
    );
}

#[test]
fn deep_flow_nesting_is_rejected_before_a_tree_is_built() {
    let text = format!("{}{}", "[".repeat(DEPTH), "]".repeat(DEPTH));
    depth_problem(&text, "62k-deep flow [[[...]]]");
    let text = format!("{}1{}", "{a: ".repeat(DEPTH), "}".repeat(DEPTH));
    depth_problem(&text, "62k-deep flow {a: {a: ...}}");
    // Unclosed: libyaml would report a syntax error only at the very end.
    let text = "[".repeat(DEPTH);
    depth_problem(&text, "62k-deep flow, unclosed");
    // As the value of a block mapping key (the shape of workflow front
    // matter), where libyaml's simple-key bookkeeping is at its slowest.
    let text = format!("k: {}{}\n", "[".repeat(DEPTH), "]".repeat(DEPTH));
    depth_problem(&text, "k: 62k-deep flow [[[...]]]");
    let text = format!("k: {}\n", "[".repeat(DEPTH));
    depth_problem(&text, "k: 62k-deep flow, unclosed");
}

#[test]
fn deep_block_nesting_is_rejected_before_a_tree_is_built() {
    let text = format!("{}x\n", "- ".repeat(DEPTH));
    depth_problem(&text, "62k-deep block - - - x");
    // Block mappings need growing indentation: as deep as fits in the limit.
    let mut text = String::new();
    let mut level = 0;
    while text.len() + level + 3 < LIMIT {
        text.push_str(&" ".repeat(level));
        text.push_str("a:\n");
        level += 1;
    }
    let (result, _) = timed(&format!("{level}-deep block mapping"), text.len(), || {
        yaml_value(&text, "t")
    });
    let error = result.expect_err("deep nesting must be rejected");
    assert!(
        error.problems()[0]
            .reason
            .starts_with("line 33 column 33: nested deeper"),
        "{error}"
    );
}

/// Text of at most `bytes` bytes: `head`, then `item(n)` for n = 0, 1, ...
/// while it fits, then `tail`.
fn fill(bytes: usize, head: &str, item: impl Fn(usize) -> String, tail: &str) -> String {
    let mut text = String::from(head);
    let mut n = 0;
    loop {
        let next = item(n);
        if text.len() + next.len() + tail.len() > bytes {
            break;
        }
        text.push_str(&next);
        n += 1;
    }
    text.push_str(tail);
    text
}

/// Runs `run` on `make(size)` for a quarter, half and all of the limit and
/// prints the times and the growth from a quarter to all (about 4 when the
/// cost is linear, 16 when quadratic). Returns the result at the limit.
fn scaling<T>(label: &str, make: impl Fn(usize) -> String, run: impl Fn(&str) -> T) -> T {
    let mut times = Vec::new();
    let mut last = None;
    for size in [LIMIT / 4, LIMIT / 2, LIMIT] {
        let text = make(size);
        let (out, took) = timed(label, text.len(), || run(&text));
        times.push(took);
        last = Some(out);
    }
    let growth = times[2].as_secs_f64() / times[0].as_secs_f64().max(1e-9);
    eprintln!("parse_cost: {label:<44} growth x4 size: x{growth:.1}");
    last.expect("three sizes ran")
}

/// A valid configuration of about `bytes` bytes: many sources.
fn many_sources(bytes: usize) -> String {
    fill(
        bytes,
        "device: {id: dev0, name: \"a & *b\"}\npipeline:\n  sources:\n",
        |n| format!("    - {{id: cam{n}, url: \"file:///var/lib/aegis/clips/clip-{n}.mp4\"}}\n"),
        "",
    )
}

#[test]
fn a_benign_config_at_the_size_limit_parses() {
    let value = scaling("benign config (sources), yaml_value", many_sources, |t| {
        yaml_value(t, "t")
    });
    value.expect("benign text parses");
    let config = scaling(
        "benign config (sources), from_yaml_str",
        many_sources,
        |t| from_yaml_str(t, "t"),
    );
    assert!(config.expect("valid").pipeline.sources.len() > 10_000);
}

/// Validation, not parsing: the record-sink directory overlap check compared
/// every pair of sinks (about 90 s for 1 MB of sinks in a debug build); it now
/// sorts them, and this prints the growth (linear is about x4 per doubling
/// pair; the test asserts only the verdict).
#[test]
fn many_record_sinks_at_the_size_limit() {
    let sinks = |bytes| {
        fill(
            bytes,
            "device: {id: d}\npipeline:\n  sources: [{id: c, url: a.mp4}]\n  sinks:\n",
            |n| format!("    - {{kind: record, dir: /var/lib/aegis/rec/{n}}}\n"),
            "",
        )
    };
    let config = scaling("record sinks, from_yaml_str", sinks, |t| {
        from_yaml_str(t, "t")
    });
    assert!(config.expect("valid").pipeline.sinks.len() > 10_000);
}

#[test]
fn wide_documents_at_the_size_limit() {
    let flow = |bytes| fill(bytes, "k: [", |_| "abcdef, ".to_owned(), "x]\n");
    scaling("one-line flow sequence", flow, |t| yaml_value(t, "t")).expect("parses");
    let keys = |bytes| fill(bytes, "", |n| format!("key{n}: {n}\n"), "");
    scaling("mapping of many keys", keys, |t| yaml_value(t, "t")).expect("parses");
    let plain = |bytes: usize| format!("k: {}\n", "a".repeat(bytes - 4));
    scaling("one plain scalar", plain, |t| yaml_value(t, "t")).expect("parses");
    let quoted = |bytes| fill(bytes, "k: \"", |_| "\\u0041".to_owned(), "\"\n");
    scaling("double-quoted escapes", quoted, |t| yaml_value(t, "t")).expect("parses");
    let lines = |bytes| fill(bytes, "k: \"", |_| "a\n  ".to_owned(), "\"\n");
    scaling("multi-line quoted scalar", lines, |t| yaml_value(t, "t")).expect("parses");
    // A long flow sequence of short flow mappings at the deepest allowed
    // level (32 open collections).
    let deep_wide = |bytes| {
        fill(
            bytes,
            &"[".repeat(30),
            |_| "{a: 1, b: [x, y]}, ".to_owned(),
            &"]".repeat(30),
        )
    };
    scaling("wide flow at depth 32", deep_wide, |t| yaml_value(t, "t")).expect("parses");
    // Many unknown root keys: every one is a problem, reported with the list
    // of expected keys.
    let unknown = |bytes| {
        fill(
            bytes,
            "device: {id: d}\npipeline: {sources: [a.mp4]}\n",
            |n| format!("unknown{n}: 1\n"),
            "",
        )
    };
    let error = scaling("unknown root keys", unknown, |t| from_yaml_str(t, "t"));
    assert!(error.expect_err("unknown keys").problems().len() > 10_000);
}
