//! Keeps the agent floor's shape (docs/architecture.md, "Where does a change go"): the
//! agent's components import each other without a loop, reach the GPU only through hal, and
//! the product never calls into the binary's tools.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The component a file of `agent/src` belongs to: its folder, or its stem for a top-level
/// file (`pipeline/stream.rs` → `pipeline`, `metrics.rs` → `metrics`).
fn component(rel: &Path) -> String {
    let first = rel
        .components()
        .next()
        .expect("a relative path")
        .as_os_str()
        .to_string_lossy()
        .to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Every `crate::name` a source file refers to, outside comments (a grouped
/// `use crate::{a::x, b::y}` names `a` and `b`).
fn crate_refs(source: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        refs.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        }
    }
    refs
}

/// Component → the components it imports.
fn agent_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut components = BTreeSet::new();
    for f in &files {
        components.insert(component(f.strip_prefix(src).expect("under src")));
    }
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let from = component(f.strip_prefix(src).expect("under src"));
        let text = std::fs::read_to_string(f).expect("readable source");
        let edges = graph.entry(from.clone()).or_default();
        for to in crate_refs(&text) {
            if to != from && components.contains(&to) {
                edges.insert(to);
            }
        }
    }
    graph
}

/// One import loop of `graph`, as `a → b → … → a`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut Vec::new(), &mut done))
}

#[test]
fn the_agent_components_import_each_other_without_a_loop() {
    let graph = agent_graph(&repo_root().join("agent/src"));
    assert!(
        graph.len() >= 10,
        "the graph was not read: {graph:?} (agent/src moved?)"
    );
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import loop in agent/src: {}", cycle.join(" → "));
    }
}

#[test]
fn the_product_never_calls_the_binarys_tools() {
    let graph = agent_graph(&repo_root().join("agent/src"));
    for (from, to) in &graph {
        if from == "cli" || from == "tools" {
            continue;
        }
        for edge in ["tools", "cli"] {
            assert!(
                !to.contains(edge),
                "agent/src/{from} imports crate::{edge}: only the command line reaches the tools"
            );
        }
    }
}

#[test]
fn the_agent_reaches_the_gpu_only_through_hal() {
    let root = repo_root();
    let manifest = std::fs::read_to_string(root.join("agent/Cargo.toml")).expect("manifest");
    assert!(
        !manifest.contains("aegis-cuda"),
        "agent/Cargo.toml depends on aegis-cuda; use aegis_hal::backend"
    );
    let mut files = Vec::new();
    rust_files(&root.join("agent/src"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).expect("readable source");
        assert!(
            !text.contains("aegis_cuda"),
            "{} names aegis_cuda; use aegis_hal::backend",
            f.display()
        );
    }
}

#[test]
fn the_checker_finds_loops_and_grouped_imports() {
    let refs = crate_refs(
        "use crate::{metrics::Metrics, store::{self, Record}};\n\
         // crate::ignored in a comment\n\
         let x = crate::pipeline::Pipeline::start(); /* crate::also */\n",
    );
    assert!(refs.contains("metrics") && refs.contains("store") && refs.contains("pipeline"));
    assert!(!refs.contains("ignored"), "{refs:?}");
    let graph = |edges: &[(&str, &str)]| {
        let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (a, b) in edges {
            g.entry(a.to_string()).or_default().insert(b.to_string());
            g.entry(b.to_string()).or_default();
        }
        g
    };
    let looped = graph(&[
        ("apply", "pipeline"),
        ("pipeline", "runtime"),
        ("runtime", "apply"),
    ]);
    let cycle = find_cycle(&looped).expect("a loop");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4, "{cycle:?}");
    assert_eq!(
        find_cycle(&graph(&[("runtime", "apply"), ("apply", "pipeline")])),
        None
    );
    assert_eq!(component(Path::new("pipeline/stream.rs")), "pipeline");
    assert_eq!(component(Path::new("metrics.rs")), "metrics");
}
