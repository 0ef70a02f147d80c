//! `config/examples/full.yaml` says it shows every configuration option. These tests hold it
//! to that: they walk the JSON Schema that `aegis schema` prints ([`aegis_config::json_schema`],
//! generated from the config types) through nested objects, array items, `$ref`s and every
//! `oneOf`/`anyOf`/`allOf` variant, and fail for each property that no key of full.yaml sets.
//! A variant (a stage or sink `kind`, a rule condition) counts as shown only where full.yaml
//! has an instance of it, since its keys are only keys of that instance. An option added to
//! the config types therefore fails here until full.yaml documents it.
//!
//! Coverage is per object schema: a definition reached along several paths (`RuleConfig`
//! under `pipeline.rules` and `sensors.rules`) or recursively (`Condition` inside `all`) is
//! one set of options, shown once anywhere.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

const FULL: &str = include_str!("../examples/full.yaml");

/// Schema keywords that could hold properties this walk does not follow: a schema that
/// starts using one must extend the walk, not slip past it.
const UNSUPPORTED: &[&str] = &[
    "patternProperties",
    "dependentSchemas",
    "if",
    "then",
    "else",
    "not",
    "contains",
    "$dynamicRef",
];

/// An object schema reachable from the root.
struct ObjectSchema {
    /// A readable path to it, e.g. `pipeline.stages[kind=detect].tracker`.
    path: String,
    /// Other paths that reach it (a shared definition): a key set along any of them counts.
    also: BTreeSet<String>,
    /// Its property names.
    properties: Vec<String>,
}

/// What [`coverage`] found.
#[derive(Debug)]
struct Coverage {
    /// Readable paths of the properties no key of the document sets.
    missing: Vec<String>,
    /// Places where the document does not fit the schema (then coverage is not meaningful).
    problems: Vec<String>,
}

/// full.yaml as JSON, read with the config crate's own YAML rules.
fn full_document() -> Value {
    let yaml = aegis_config::yaml_value(FULL, "config/examples/full.yaml")
        .unwrap_or_else(|e| panic!("full.yaml does not parse as YAML: {e}"));
    serde_json::to_value(yaml).expect("full.yaml has only string keys")
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// JSON pointer escaping of one reference token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The schema a local `$ref` (`#/$defs/X`) names, and its pointer.
fn resolve<'s>(root: &'s Value, reference: &str) -> (&'s Value, String) {
    let pointer = reference
        .strip_prefix('#')
        .unwrap_or_else(|| panic!("only local $refs are supported, got {reference:?}"));
    let target = root
        .pointer(pointer)
        .unwrap_or_else(|| panic!("$ref {reference:?} names nothing in the schema"));
    (target, pointer.to_owned())
}

/// The readable path of a variant: `[kind=detect]` in place of `[]` when the variant is
/// told apart by a constant property, else the path itself.
fn variant_path(path: &str, variant: &Value) -> String {
    let discriminator = variant
        .get("properties")
        .and_then(Value::as_object)
        .and_then(|props| {
            props.iter().find_map(|(key, p)| {
                p.get("const")
                    .and_then(Value::as_str)
                    .map(|c| format!("{key}={c}"))
            })
        });
    match discriminator {
        Some(d) => match path.strip_suffix("[]") {
            Some(list) => format!("{list}[{d}]"),
            None => format!("{path}({d})"),
        },
        None => path.to_owned(),
    }
}

/// Finds the object schemas reachable from a schema's root.
struct Collector<'s> {
    root: &'s Value,
    /// The `$ref`s being expanded, to stop at recursion (`Condition` inside `all`).
    stack: Vec<String>,
    /// Object schemas by JSON pointer.
    out: BTreeMap<String, ObjectSchema>,
}

impl Collector<'_> {
    /// Records every object schema under `node` (at `pointer`, reached by `path`).
    fn collect(&mut self, node: &Value, pointer: &str, path: &str) {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str)
            && !self.stack.iter().any(|r| r == reference)
        {
            let (target, target_pointer) = resolve(self.root, reference);
            self.stack.push(reference.to_owned());
            self.collect(target, &target_pointer, path);
            self.stack.pop();
        }
        for keyword in UNSUPPORTED {
            assert!(
                node.get(keyword).is_none(),
                "the schema uses `{keyword}` at {pointer} ({path}): extend this walk to follow it"
            );
        }
        if let Some(props) = node.get("properties").and_then(Value::as_object) {
            let object = self
                .out
                .entry(pointer.to_owned())
                .or_insert_with(|| ObjectSchema {
                    path: path.to_owned(),
                    also: BTreeSet::new(),
                    properties: props.keys().cloned().collect(),
                });
            if object.path != path {
                object.also.insert(path.to_owned());
            }
            for (key, child) in props {
                let child_pointer = format!("{pointer}/properties/{}", escape(key));
                self.collect(child, &child_pointer, &join(path, key));
            }
        }
        if let Some(extra) = node.get("additionalProperties").filter(|v| v.is_object()) {
            let child_pointer = format!("{pointer}/additionalProperties");
            self.collect(extra, &child_pointer, &join(path, "<key>"));
        }
        if let Some(items) = node.get("items") {
            self.collect(items, &format!("{pointer}/items"), &format!("{path}[]"));
        }
        if let Some(prefix) = node.get("prefixItems").and_then(Value::as_array) {
            for (i, item) in prefix.iter().enumerate() {
                let child_pointer = format!("{pointer}/prefixItems/{i}");
                self.collect(item, &child_pointer, &format!("{path}[{i}]"));
            }
        }
        for keyword in ["oneOf", "anyOf", "allOf"] {
            for (i, variant) in node
                .get(keyword)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let child_pointer = format!("{pointer}/{keyword}/{i}");
                self.collect(variant, &child_pointer, &variant_path(path, variant));
            }
        }
    }
}

/// Whether `value` has one of the JSON Schema types `types` (a name or a list of names).
fn type_ok(types: &Value, value: &Value) -> bool {
    let one = |t: &str| match t {
        "null" => value.is_null(),
        "boolean" => value.is_boolean(),
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        other => panic!("unknown JSON Schema type {other:?}"),
    };
    match types {
        Value::String(t) => one(t),
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).any(one),
        other => panic!("`type` is neither a name nor a list: {other}"),
    }
}

/// Whether `value` fits the variant `node` on its surface (type, constants, required and
/// allowed keys): enough to tell the variants of a tagged enum or an `Option` apart.
fn accepts(root: &Value, node: &Value, value: &Value) -> bool {
    let mut node = node;
    while let Some(reference) = node.get("$ref").and_then(Value::as_str) {
        node = resolve(root, reference).0;
    }
    if node.get("type").is_some_and(|t| !type_ok(t, value)) {
        return false;
    }
    if node.get("const").is_some_and(|c| c != value) {
        return false;
    }
    if node
        .get("enum")
        .and_then(Value::as_array)
        .is_some_and(|e| !e.contains(value))
    {
        return false;
    }
    for keyword in ["oneOf", "anyOf"] {
        if let Some(variants) = node.get(keyword).and_then(Value::as_array)
            && !variants.iter().any(|v| accepts(root, v, value))
        {
            return false;
        }
    }
    if let Some(all) = node.get("allOf").and_then(Value::as_array)
        && !all.iter().all(|v| accepts(root, v, value))
    {
        return false;
    }
    if let Value::Object(map) = value {
        let props = node.get("properties").and_then(Value::as_object);
        let required = node.get("required").and_then(Value::as_array);
        if required
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|key| !map.contains_key(key))
        {
            return false;
        }
        for (key, p) in props.into_iter().flatten() {
            if let (Some(c), Some(v)) = (p.get("const"), map.get(key))
                && c != v
            {
                return false;
            }
        }
        if node.get("additionalProperties") == Some(&Value::Bool(false))
            && map
                .keys()
                .any(|k| !props.is_some_and(|props| props.contains_key(k)))
        {
            return false;
        }
    }
    true
}

/// Walks a document along a schema.
struct Visitor<'s> {
    root: &'s Value,
    /// Each `(object schema pointer, key)` the document sets.
    seen: BTreeSet<(String, String)>,
    /// Where the document does not fit the schema.
    problems: Vec<String>,
}

impl Visitor<'_> {
    /// Walks `value` (at `ypath` in the document) along the schema `node` (at `pointer`).
    fn visit(&mut self, node: &Value, pointer: &str, value: &Value, ypath: &str) {
        if let Some(reference) = node.get("$ref").and_then(Value::as_str) {
            let (target, target_pointer) = resolve(self.root, reference);
            self.visit(target, &target_pointer, value, ypath);
        }
        if let Some(types) = node.get("type")
            && !type_ok(types, value)
        {
            self.problems
                .push(format!("{ypath}: {value} is not of type {types}"));
            return;
        }
        for keyword in ["oneOf", "anyOf", "allOf"] {
            let Some(variants) = node.get(keyword).and_then(Value::as_array) else {
                continue;
            };
            let mut matched = false;
            for (i, variant) in variants.iter().enumerate() {
                if keyword == "allOf" || accepts(self.root, variant, value) {
                    matched = true;
                    self.visit(variant, &format!("{pointer}/{keyword}/{i}"), value, ypath);
                }
            }
            if !matched {
                self.problems.push(format!(
                    "{ypath}: {value} fits none of the variants at {pointer}/{keyword}"
                ));
            }
        }
        match value {
            Value::Object(map) => {
                let props = node.get("properties").and_then(Value::as_object);
                let extra = node.get("additionalProperties");
                for (key, child) in map {
                    let child_ypath = join(ypath, key);
                    if let Some(p) = props.and_then(|props| props.get(key)) {
                        self.seen.insert((pointer.to_owned(), key.clone()));
                        let child_pointer = format!("{pointer}/properties/{}", escape(key));
                        self.visit(p, &child_pointer, child, &child_ypath);
                    } else if let Some(extra) = extra.filter(|e| e.is_object()) {
                        let child_pointer = format!("{pointer}/additionalProperties");
                        self.visit(extra, &child_pointer, child, &child_ypath);
                    } else if extra == Some(&Value::Bool(false)) {
                        self.problems
                            .push(format!("{child_ypath}: not an option of {pointer}"));
                    }
                }
            }
            Value::Array(items) => {
                let prefix = node.get("prefixItems").and_then(Value::as_array);
                for (i, item) in items.iter().enumerate() {
                    let item_ypath = format!("{ypath}[{i}]");
                    if let Some(p) = prefix.and_then(|p| p.get(i)) {
                        self.visit(p, &format!("{pointer}/prefixItems/{i}"), item, &item_ypath);
                    } else if let Some(items_schema) = node.get("items") {
                        self.visit(items_schema, &format!("{pointer}/items"), item, &item_ypath);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The properties of `schema` that `document` does not set, and where it does not fit.
fn coverage(schema: &Value, document: &Value) -> Coverage {
    let mut collector = Collector {
        root: schema,
        stack: Vec::new(),
        out: BTreeMap::new(),
    };
    collector.collect(schema, "", "");
    let mut visitor = Visitor {
        root: schema,
        seen: BTreeSet::new(),
        problems: Vec::new(),
    };
    visitor.visit(schema, "", document, "");
    let seen = &visitor.seen;
    let mut missing: Vec<String> = collector
        .out
        .iter()
        .flat_map(|(pointer, object)| {
            object
                .properties
                .iter()
                .filter(move |key| !seen.contains(&(pointer.clone(), (*key).clone())))
                .map(|key| {
                    let also: Vec<String> = object.also.iter().map(|p| join(p, key)).collect();
                    if also.is_empty() {
                        join(&object.path, key)
                    } else {
                        format!("{} (or {})", join(&object.path, key), also.join(", "))
                    }
                })
        })
        .collect();
    missing.sort();
    Coverage {
        missing,
        problems: visitor.problems,
    }
}

fn assert_covers(schema: &Value, document: &Value, what: &str) {
    let found = coverage(schema, document);
    assert!(
        found.problems.is_empty(),
        "config/examples/full.yaml does not fit the schema of {what}:\n  {}",
        found.problems.join("\n  ")
    );
    assert!(
        found.missing.is_empty(),
        "config/examples/full.yaml claims every option but lacks these {} of {what} \
         (add each, with a comment saying what it does):\n  {}",
        found.missing.len(),
        found.missing.join("\n  ")
    );
}

#[test]
fn full_example_sets_every_option_of_the_schema() {
    assert_covers(
        &aegis_config::json_schema(),
        &full_document(),
        "`aegis schema`",
    );
}

#[test]
fn full_example_pipeline_sets_every_option_of_the_pipeline_schema() {
    let document = full_document();
    assert_covers(
        &aegis_config::pipeline_json_schema(),
        &document["pipeline"],
        "`aegis schema --pipeline`",
    );
}

#[test]
fn full_example_is_a_valid_configuration() {
    if let Err(e) = aegis_config::from_yaml_str(FULL, "config/examples/full.yaml") {
        panic!("{e}");
    }
}

/// The walk reports a dropped option by its path, and a variant with no instance left by
/// its tag: what the tests above rely on to fail.
#[test]
fn coverage_names_a_removed_option_and_a_variant_without_instance() {
    let schema = aegis_config::json_schema();
    let mut document = full_document();
    document["fleet"]
        .as_object_mut()
        .expect("full.yaml has a fleet section")
        .remove("telemetry_s");
    document["pipeline"]["sinks"]
        .as_array_mut()
        .expect("full.yaml has sinks")
        .retain(|sink| sink["kind"] != "discard");
    let found = coverage(&schema, &document);
    assert!(found.problems.is_empty(), "{:?}", found.problems);
    assert_eq!(
        found.missing,
        ["fleet.telemetry_s", "pipeline.sinks[kind=discard].kind"]
    );
}

/// A document that does not fit the schema is reported, not silently skipped.
#[test]
fn coverage_reports_a_document_that_does_not_fit() {
    let schema = aegis_config::json_schema();
    let mut document = full_document();
    document["pipeline"]["stages"]
        .as_array_mut()
        .expect("full.yaml has stages")
        .push(serde_json::json!({"kind": "sharpen"}));
    let found = coverage(&schema, &document);
    assert!(
        found
            .problems
            .iter()
            .any(|p| p.starts_with("pipeline.stages[") && p.contains("fits none of the variants")),
        "{:?}",
        found.problems
    );
}
