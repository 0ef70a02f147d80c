//! Keeps `docs/verification.md` true: every test it names as `path/to/file.rs::test_fn`
//! (inside backticks) must exist in that file as a test function, an `#[ignore]`d test
//! must sit in a row whose *runs* column says `GPU machine`, a whole file named as
//! `dir/file.rs` must exist, every `README.md` / `docs/*.md` a row names under *where
//! stated* must exist, every row must name something in backticks that enforces it, and
//! the page must name at least [`MIN_TESTS`] tests, so an emptied page cannot pass.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Fewest distinct tests the page must name (it named 218 when this check was written).
const MIN_TESTS: usize = 150;

/// How many lines above a `fn` its attributes and doc comments may span.
const ATTRIBUTE_LOOKBACK: usize = 12;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// One `file.rs::name` (or whole `file.rs`) reference found in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    /// The file, relative to the repository root.
    file: String,
    /// The function's name (the last `::` segment); `None` for a whole file (`dir/file.rs`).
    name: Option<String>,
    /// 1-based line of the document.
    line: usize,
    /// The row's *runs* cell, when the reference is in a table row.
    runs: Option<String>,
}

/// The cells of a Markdown table row (`\|` inside a cell is not a separator), or `None`
/// when `line` is not a row.
fn cells(line: &str) -> Option<Vec<String>> {
    let t = line.trim();
    if !t.starts_with('|') {
        return None;
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = t[1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                cur.push('|');
                chars.next();
            }
            '|' => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    Some(out)
}

/// Every `file.rs::name` inside backticks in `doc`, in order.
fn named_tests(doc: &str) -> Vec<Named> {
    let mut out = Vec::new();
    for (i, line) in doc.lines().enumerate() {
        let runs = cells(line).and_then(|c| c.last().cloned());
        for span in line.split('`').skip(1).step_by(2) {
            for token in span.split(|c: char| c == ',' || c.is_whitespace()) {
                // `dir/file.rs::name`, or a whole file: `dir/file.rs`.
                let (file, name) = match token.find(".rs::") {
                    Some(at) => (&token[..at + 3], token.rsplit("::").next()),
                    None if token.ends_with(".rs") && token.contains('/') => (token, None),
                    None => continue,
                };
                out.push(Named {
                    file: file.to_string(),
                    name: name.map(str::to_string),
                    line: i + 1,
                    runs: runs.clone(),
                });
            }
        }
    }
    out
}

/// What the source says about `fn name`.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    Missing,
    NotATest,
    Test { ignored: bool },
}

/// Looks for `fn name(` (or `fn name<`) in `source` and reads the attributes above it.
fn find_test(source: &str, name: &str) -> Found {
    let lines: Vec<&str> = source.lines().collect();
    let mut found = Found::Missing;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(pos) = [format!("fn {name}("), format!("fn {name}<")]
            .iter()
            .find_map(|p| t.find(p.as_str()))
        else {
            continue;
        };
        // `fn` must start a word: `fn x(`, `pub fn x(`, `async fn x(`.
        if pos > 0 && !t[..pos].ends_with(' ') {
            continue;
        }
        let (mut test, mut ignored) = (false, false);
        for above in lines[i.saturating_sub(ATTRIBUTE_LOOKBACK)..i].iter().rev() {
            let a = above.trim();
            if a.starts_with("#[") {
                test |= a.starts_with("#[test]") || a.starts_with("#[tokio::test");
                ignored |= a.starts_with("#[ignore");
            } else if !a.starts_with("//") {
                break; // the attributes and doc comments of this fn end here
            }
        }
        if test {
            return Found::Test { ignored };
        }
        found = Found::NotATest;
    }
    found
}

/// Every problem of `doc` against the files under `root`, one line each; and the number
/// of distinct tests it names.
fn check(doc: &str, root: &Path) -> (Vec<String>, usize) {
    let mut problems = Vec::new();
    let named = named_tests(doc);
    let mut distinct = BTreeSet::new();
    for n in &named {
        let Some(name) = &n.name else {
            if !root.join(&n.file).is_file() {
                problems.push(format!(
                    "docs/verification.md:{}: `{}`: no such file",
                    n.line, n.file
                ));
            }
            continue;
        };
        distinct.insert((n.file.clone(), name.clone()));
        let at = format!("docs/verification.md:{}: `{}::{name}`", n.line, n.file);
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            problems.push(format!("{at}: not a function name"));
            continue;
        }
        let path = root.join(&n.file);
        let Ok(source) = std::fs::read_to_string(&path) else {
            problems.push(format!("{at}: no file {}", path.display()));
            continue;
        };
        match find_test(&source, name) {
            Found::Missing => problems.push(format!("{at}: no `fn {name}` in {}", n.file)),
            Found::NotATest => problems.push(format!(
                "{at}: `fn {name}` in {} is not a #[test]",
                n.file
            )),
            Found::Test { ignored: true }
                if !n.runs.as_deref().is_some_and(|r| r.contains("GPU machine")) =>
            {
                problems.push(format!(
                    "{at}: the test is #[ignore]d but its row does not say it runs on the GPU machine"
                ))
            }
            Found::Test { .. } => {}
        }
    }
    // The *where stated* column names files that exist.
    for (i, line) in doc.lines().enumerate() {
        let Some(c) = cells(line) else { continue };
        if c.len() != 4 || c[0] == "claim" || c[0].starts_with("---") {
            continue;
        }
        if !c[2].contains('`') {
            problems.push(format!(
                "docs/verification.md:{}: the row names no test, benchmark or tool in backticks \
                 (a claim nothing enforces belongs under \"Not yet enforced\")",
                i + 1
            ));
        }
        for place in c[1].split(',').map(str::trim) {
            let is_doc = place == "README.md"
                || (place.starts_with("docs/") && place.ends_with(".md") && !place.contains(' '));
            if !is_doc {
                problems.push(format!(
                    "docs/verification.md:{}: where stated `{place}` is not README.md or docs/*.md",
                    i + 1
                ));
            } else if !root.join(place).is_file() {
                problems.push(format!(
                    "docs/verification.md:{}: {place} does not exist",
                    i + 1
                ));
            }
        }
    }
    (problems, distinct.len())
}

#[test]
fn every_test_named_in_verification_md_exists() {
    let root = repo_root();
    let path = root.join("docs/verification.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let (problems, count) = check(&doc, &root);
    assert!(
        problems.is_empty(),
        "{} problem(s) in docs/verification.md (rename the test back or fix the page):\n{}",
        problems.len(),
        problems.join("\n")
    );
    assert!(
        count >= MIN_TESTS,
        "docs/verification.md names {count} tests, fewer than {MIN_TESTS}: was it emptied?"
    );
}

#[test]
fn the_checker_finds_renamed_and_non_test_functions() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/tests")).unwrap();
    std::fs::create_dir_all(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/x.md"), "x").unwrap();
    std::fs::write(
        root.join("a/tests/t.rs"),
        "#[test]\nfn kept() {}\n\n/// Helper.\nfn helper() {}\n\n#[test]\n\
         #[ignore = \"needs a GPU\"]\n/// Doc.\nfn on_gpu() {}\n\nmod m {\n    #[test]\n    \
         fn nested_renamed_not() {}\n}\n",
    )
    .unwrap();
    let doc = "| claim | where stated | enforced by | runs |\n|---|---|---|---|\n\
               | a | docs/x.md | `a/tests/t.rs::kept`, `a/tests/t.rs::nested_renamed_not` | CI |\n\
               | b | docs/x.md | `a/tests/t.rs::renamed` | CI |\n\
               | c | docs/gone.md, README | `a/tests/t.rs::helper` | CI |\n\
               | d \\| e | docs/x.md | `a/tests/t.rs::on_gpu` | CI |\n\
               | f | docs/x.md | `a/tests/t.rs::on_gpu` | GPU machine |\n\
               | g | docs/x.md | nothing yet | CI |\n\
               `b/none.rs::x`, `a/tests/t.rs`, `a/tests/gone.rs`, `a/tests/t.rs::`\n";
    let (problems, count) = check(doc, root);
    let text = problems.join("\n");
    assert_eq!(count, 7, "{text}");
    assert_eq!(problems.len(), 9, "{text}");
    for expected in [
        ":4: `a/tests/t.rs::renamed`: no `fn renamed` in a/tests/t.rs",
        ":5: `a/tests/t.rs::helper`: `fn helper` in a/tests/t.rs is not a #[test]",
        ":6: `a/tests/t.rs::on_gpu`: the test is #[ignore]d but its row",
        ":9: `b/none.rs::x`: no file",
        ":9: `a/tests/gone.rs`: no such file",
        ":9: `a/tests/t.rs::`: not a function name",
        ":8: the row names no test, benchmark or tool in backticks",
        ":5: docs/gone.md does not exist",
        ":5: where stated `README` is not README.md",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
