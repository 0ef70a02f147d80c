//! Parsing with error recovery.
//!
//! serde stops at the first error, but an operator editing a config file on a
//! device wants to see every mistake at once. This module parses the YAML into
//! an untyped [`Value`] and then deserializes it piece by piece: whenever
//! serde reports an error, the error is recorded with its path and the
//! offending node is removed so that its default applies, and deserialization
//! is retried. Pieces that still cannot be built are skipped, but their
//! siblings are still checked.
//!
//! Anchors, aliases and deep nesting, which have no place in a device config
//! and could hide what a value really is, are rejected before this module
//! sees a value, by the event pre-pass in `events`.

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use crate::error::Problem;

/// How many errors one piece may produce before we stop retrying it.
const MAX_ROUNDS: usize = 64;
/// Deepest nesting of mappings and lists accepted in a config document: at
/// most this many may be open at once.
pub(crate) const MAX_DEPTH: usize = 32;

/// `prefix.key`, or `key` at the top level.
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// `prefix[index]`.
pub(crate) fn join_index(prefix: &str, index: usize) -> String {
    format!("{prefix}[{index}]")
}

/// One step of a path inside a [`Value`].
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

fn render_path(prefix: &str, steps: &[Step]) -> String {
    let mut out = prefix.to_owned();
    for step in steps {
        match step {
            Step::Key(key) => out = join_key(&out, key),
            Step::Index(index) => out = join_index(&out, *index),
        }
    }
    out
}

fn steps_of(path: &serde_path_to_error::Path) -> Vec<Step> {
    path.iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(Step::Key(key.clone())),
            serde_path_to_error::Segment::Seq { index } => Some(Step::Index(*index)),
            serde_path_to_error::Segment::Enum { .. } | serde_path_to_error::Segment::Unknown => {
                None
            }
        })
        .collect()
}

/// Removes the node at `steps` (which must end in a [`Step::Key`]).
fn remove_node(value: &mut Value, steps: &[Step]) -> bool {
    let Some((Step::Key(last), parents)) = steps.split_last() else {
        return false;
    };
    let mut node = value;
    for step in parents {
        let next = match (step, node) {
            (Step::Key(key), Value::Mapping(map)) => map.get_mut(key.as_str()),
            (Step::Index(index), Value::Sequence(seq)) => seq.get_mut(*index),
            _ => None,
        };
        match next {
            Some(child) => node = child,
            None => return false,
        }
    }
    match node {
        Value::Mapping(map) => map.remove(last.as_str()).is_some(),
        _ => false,
    }
}

/// Rewrites serde wording that would expose Rust type names.
fn operator_message(mut message: String) -> String {
    if let Some(at) = message.find("expected struct ") {
        message.truncate(at);
        message.push_str("expected a mapping of settings");
    }
    message
}

/// The field name in serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// Deserializes `value` into `T`, recording every error under `prefix` and
/// pruning offending nodes until it succeeds. Returns `None` when the piece
/// cannot be built (its problems are recorded).
pub(crate) fn recover<T: DeserializeOwned>(
    value: Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    recover_tracking(value, prefix, problems).0
}

/// Like [`recover`], and also tells whether a present value had to be replaced
/// by its default (rather than an unknown key merely being dropped), in which
/// case rules comparing several fields of the result must not run.
pub(crate) fn recover_tracking<T: DeserializeOwned>(
    mut value: Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> (Option<T>, bool) {
    let mut pruned: Vec<Vec<Step>> = Vec::new();
    let mut replaced = false;
    for _ in 0..MAX_ROUNDS {
        let error = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(typed) => return (Some(typed), replaced),
            Err(error) => error,
        };
        let steps = steps_of(error.path());
        let message = operator_message(error.inner().to_string());
        if let Some(field) = missing_field(&message) {
            let mut field_steps = steps.clone();
            field_steps.push(Step::Key(field.to_owned()));
            // A field we removed ourselves was already reported.
            if !pruned.contains(&field_steps) {
                problems.push(Problem::new(
                    render_path(prefix, &field_steps),
                    "missing required field",
                ));
            }
        } else {
            replaced |= !message.starts_with("unknown field `");
            problems.push(Problem::new(render_path(prefix, &steps), message));
        }
        // Prune the closest enclosing mapping entry: a bad list element takes
        // its whole list with it, so indices of later problems stay true.
        let Some(cut) = steps.iter().rposition(|step| matches!(step, Step::Key(_))) else {
            return (None, replaced);
        };
        let target = &steps[..=cut];
        if !remove_node(&mut value, target) {
            return (None, replaced);
        }
        pruned.push(target.to_vec());
    }
    (None, replaced)
}

/// A short description of what kind of YAML node `value` is.
pub(crate) fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// Splits a mapping into its known keys, reporting unknown and non-string
/// keys. Returns `None` (with a problem) when `value` is not a mapping.
pub(crate) fn split_mapping(
    value: Value,
    prefix: &str,
    known: &[&str],
    problems: &mut Vec<Problem>,
) -> Option<Mapping> {
    let Value::Mapping(map) = value else {
        problems.push(Problem::new(
            prefix,
            format!("expected a mapping of settings, found {}", describe(&value)),
        ));
        return None;
    };
    let mut kept = Mapping::new();
    for (key, child) in map {
        match key {
            Value::String(name) if known.contains(&name.as_str()) => {
                kept.insert(Value::String(name), child);
            }
            Value::String(name) => problems.push(Problem::new(
                join_key(prefix, &name),
                format!(
                    "unknown field `{name}`, expected one of {}",
                    list_ticked(known)
                ),
            )),
            other => problems.push(Problem::new(
                prefix,
                format!("keys must be text, found {}", describe(&other)),
            )),
        }
    }
    Some(kept)
}

/// `` `a`, `b`, `c` `` (serde's style for expected fields).
fn list_ticked(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| format!("`{name}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Builds each element of a YAML list with `build`. Returns `None` (with a
/// problem) when `value` is not a list; failed elements are `None`.
pub(crate) fn recover_list<T>(
    value: Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
    mut build: impl FnMut(Value, &str, &mut Vec<Problem>) -> Option<T>,
) -> Option<Vec<Option<T>>> {
    let Value::Sequence(items) = value else {
        problems.push(Problem::new(
            prefix,
            format!("expected a list, found {}", describe(&value)),
        ));
        return None;
    };
    Some(
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| build(item, &join_index(prefix, index), problems))
            .collect(),
    )
}

/// Builds one element of an internally tagged list (`kind: ...`): reads the
/// `kind` and hands the remaining settings to `build_kind`, which returns
/// `None` without recording anything for an unknown kind.
pub(crate) fn recover_tagged<T>(
    value: Value,
    prefix: &str,
    kinds: &[&str],
    problems: &mut Vec<Problem>,
    build_kind: impl FnOnce(&str, Value, &mut Vec<Problem>) -> Option<Option<T>>,
) -> Option<T> {
    let expected = kinds.join(", ");
    let Value::Mapping(mut map) = value else {
        problems.push(Problem::new(
            prefix,
            format!(
                "expected a mapping with a `kind` (one of: {expected}), found {}",
                describe(&value)
            ),
        ));
        return None;
    };
    let kind_path = join_key(prefix, "kind");
    let kind = match map.remove("kind") {
        None => {
            problems.push(Problem::new(
                kind_path,
                format!("missing required field (one of: {expected})"),
            ));
            return None;
        }
        Some(Value::String(kind)) => kind,
        Some(other) => {
            problems.push(Problem::new(
                kind_path,
                format!("expected one of: {expected}, found {}", describe(&other)),
            ));
            return None;
        }
    };
    match build_kind(&kind, Value::Mapping(map), problems) {
        Some(built) => built,
        None => {
            problems.push(Problem::new(
                kind_path,
                format!("unknown kind \"{kind}\", expected one of: {expected}"),
            ));
            None
        }
    }
}
