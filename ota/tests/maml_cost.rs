//! Parsing cost of workflow documents at the 128 KB limit: hostile front matter is refused
//! quickly, benign wide front matter and Pipeline blocks parse. Wall times are printed
//! (`cargo test -p aegis-ota --no-default-features --test maml_cost -- --nocapture`), never
//! asserted; the verdicts are.

use std::time::{Duration, Instant};

use aegis_config::PipelineConfig;
use aegis_ota::maml::{self, Draft, MAX_DOCUMENT_BYTES};

const PIPELINE: &str = "sources:\n  - { id: cam0, url: clip.mp4 }";

/// A valid workflow whose front-matter line `requires: ...` is replaced by `requires`, and
/// whose pipeline block is `pipeline`.
fn document(requires: &str, pipeline: &str) -> String {
    let draft = Draft {
        id: "00000000-0000-4000-8000-000000000001",
        issuer: "fleet-gw-1",
        devices: &["dev0"],
        groups: &[],
        sequence: 1,
        issued_at: "2026-01-01T00:00:00Z",
        expires_at: "2027-01-01T00:00:00Z",
    };
    maml::workflow_text(&draft, pipeline).replacen(
        "requires: { models: [], backend: [cpu, cuda, jetson] }\n",
        requires,
        1,
    )
}

/// `requires:` lines that bring the document to just under the size limit: `head`, then
/// `item(n)` for n = 0, 1, ... while it fits, then `tail`.
fn fill(head: &str, item: impl Fn(usize) -> String, tail: &str) -> String {
    let room = MAX_DOCUMENT_BYTES - document("", PIPELINE).len() - 1;
    let mut text = String::from(head);
    let mut n = 0;
    loop {
        let next = item(n);
        if text.len() + next.len() + tail.len() > room {
            break;
        }
        text.push_str(&next);
        n += 1;
    }
    text.push_str(tail);
    text
}

fn timed<T>(label: &str, bytes: usize, run: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = run();
    let took = start.elapsed();
    eprintln!("maml_cost: {label:<40} {bytes:>7} bytes {took:>12.3?}");
    (out, took)
}

fn parse_front(label: &str, requires: &str) -> Result<maml::Document, maml::MamlError> {
    let doc = document(requires, PIPELINE);
    assert!(doc.len() <= MAX_DOCUMENT_BYTES, "{label}: {}", doc.len());
    timed(label, doc.len(), || maml::parse(doc.as_bytes())).0
}

#[test]
fn hostile_front_matter_is_refused() {
    let deep = |open: &str, close: &str| {
        let n =
            (MAX_DOCUMENT_BYTES - document("", PIPELINE).len() - 16) / (open.len() + close.len());
        format!("requires: {}1{}\n", open.repeat(n), close.repeat(n))
    };
    for (label, requires) in [
        ("deep flow sequences [[[", deep("[", "]")),
        ("deep flow mappings {a: {a:", deep("{a: ", "}")),
        ("deep flow mappings {a:{a:", deep("{a:", "}")),
        (
            "deep flow, unclosed",
            format!("requires: {}\n", "[".repeat(120_000)),
        ),
        (
            "deep block sequences - - -",
            format!("requires:\n{}x\n", "- ".repeat(60_000)),
        ),
    ] {
        let error = parse_front(label, &requires).expect_err(label).to_string();
        eprintln!("maml_cost:   -> {error}");
        assert!(
            error.contains("deeper") || error.contains("recursion") || error.contains("invalid"),
            "{label}: {error}"
        );
    }
    let aliases = fill("x: &a [1]\nrequires: [", |_| "*a, ".to_owned(), "*a]\n");
    let error = parse_front("many aliases", &aliases)
        .expect_err("aliases")
        .to_string();
    assert!(
        error.contains("alias") || error.contains("anchor"),
        "{error}"
    );
}

#[test]
fn wide_front_matter_parses() {
    let backends = fill("requires: { backend: [", |_| "cpu, ".to_owned(), "cpu] }\n");
    let doc = parse_front("long flow sequence", &backends).expect("parses");
    assert!(doc.front.requires.backend.len() > 10_000);
    let block = fill("requires:\n  backend:\n", |_| "    - cuda\n".to_owned(), "");
    let doc = parse_front("long block sequence", &block).expect("parses");
    assert!(doc.front.requires.backend.len() > 10_000);
    let models = fill(
        "requires:\n  models:\n",
        |n| format!("    - {{ name: m{n}, version: {n}, sha256: \"{n:064}\" }}\n"),
        "",
    );
    let doc = parse_front("many models (flow mappings)", &models).expect("parses");
    assert!(doc.front.requires.models.len() > 1_000);
    let line = fill("requires: { backend: [\"", |_| "x".to_owned(), "\"] }\n");
    parse_front("one 128 KB line", &line).expect("parses");
    let plain = fill("requires: { backend: [", |_| "y".to_owned(), "] }\n");
    parse_front("one 128 KB plain scalar", &plain).expect("parses");
    // Many keys: the first unknown one is refused (front matter denies unknown fields).
    let keys = fill("", |n| format!("k{n}: {n}\n"), "");
    let error = parse_front("many unknown keys", &keys)
        .expect_err("unknown")
        .to_string();
    assert!(error.contains("k0"), "{error}");
    // Many keys in a flow mapping inside the front matter: a duplicate at the end.
    let dup = fill(
        "requires: { models: [], ",
        |n| format!("x{n}: 1, "),
        "x0: 2 }\n",
    );
    parse_front("many keys, duplicate at the end", &dup).expect_err("duplicate or unknown");
}

#[test]
fn pipeline_blocks_at_the_limit() {
    const REQUIRES: &str = "requires: { models: [], backend: [cpu, cuda, jetson] }\n";
    let room = MAX_DOCUMENT_BYTES - document(REQUIRES, "").len() - 1;
    let pipelines = [
        (
            "pipeline, many sources",
            "sources:\n",
            "  - { id: c{n}, url: c{n}.mp4 }\n",
        ),
        (
            "pipeline, many record sinks",
            "sources: [{ id: c, url: c.mp4 }]\nsinks:\n",
            "  - { kind: record, dir: /r/{n} }\n",
        ),
    ];
    for (label, head, item) in pipelines {
        let mut text = String::from(head);
        let mut n = 0;
        loop {
            let next = item.replace("{n}", &n.to_string());
            if text.len() + next.len() > room {
                break;
            }
            text.push_str(&next);
            n += 1;
        }
        let text = text.trim_end().to_owned();
        let doc = document(REQUIRES, &text);
        assert!(doc.len() <= MAX_DOCUMENT_BYTES);
        let parsed = timed(label, doc.len(), || maml::parse(doc.as_bytes())).0;
        let (yaml, _) = parsed.expect("parses").pipeline_yaml.expect("pipeline");
        let (pipeline, _) = timed(&format!("{label}: from_yaml_str"), yaml.len(), || {
            PipelineConfig::from_yaml_str(&yaml, "pipeline")
        });
        pipeline.expect("valid pipeline");
    }
}
