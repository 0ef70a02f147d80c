//! From YAML text to a validated configuration.
//!
//! The document is split into independent pieces (each root section, each
//! source, stage and sink) that are deserialized and validated separately, so
//! a mistake in one piece never hides mistakes in another. Tagged list items
//! (`kind: ...`) are split by hand because serde loses the location of errors
//! inside internally tagged enums; doing it here keeps paths such as
//! `pipeline.sinks[0].encoder.preset` exact.

use serde::de::DeserializeOwned;
use serde_yaml_ng::{Mapping, Value};

use crate::error::Problem;
use crate::events::{self, Finding, Stop};
use crate::model::{
    AgentConfig, PipelineConfig, SinkConfig, SourceConfig, default_pool_frames, default_queue_depth,
};
use crate::recover::{
    MAX_DEPTH, join_key, recover, recover_list, recover_tagged, recover_tracking, split_mapping,
};
use crate::stages::{STAGE_KINDS, StageConfig};
use crate::validate;

/// Largest configuration text accepted, in bytes.
pub(crate) const MAX_TEXT_BYTES: usize = 1024 * 1024;

const ROOT_KEYS: &[&str] = &[
    "device",
    "backend",
    "pipeline",
    "store",
    "fleet",
    "web",
    "outputs",
    "sensors",
    "inference",
    "workflows",
    "log",
    "watchdog",
];
const PIPELINE_KEYS: &[&str] = &[
    "sources",
    "stages",
    "sinks",
    "pool_frames",
    "queue_depth",
    "rules",
    "evidence",
];
const SINK_KINDS: &[&str] = &["record", "discard", "restream", "push", "hls", "webrtc"];

/// Parses text to a YAML value, enforcing size, anchor and depth rules.
///
/// The rules are checked on libyaml's event stream (see [`events`]) before
/// serde_yaml_ng builds anything, so a hostile document costs at most a
/// bounded amount of parser work; only text that passed is given to
/// serde_yaml_ng.
pub(crate) fn parse_document(text: &str) -> Result<Value, Vec<Problem>> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(vec![Problem::new(
            "",
            format!(
                "configuration is {} bytes; the limit is {MAX_TEXT_BYTES}",
                text.len()
            ),
        )]);
    }
    events::check(text, MAX_DEPTH).map_err(|finding| vec![problem_of(finding)])?;
    serde_yaml_ng::from_str(text)
        .map_err(|error| vec![Problem::new("", format!("invalid YAML: {error}"))])
}

/// The operator's wording of what the event pre-pass stopped at.
fn problem_of(finding: Finding) -> Problem {
    let Finding {
        stop,
        path,
        line,
        column,
    } = finding;
    let what = match stop {
        Stop::Syntax(message) => return Problem::new(path, format!("invalid YAML: {message}")),
        Stop::TooDeep => {
            return Problem::new(
                path,
                format!("line {line} column {column}: nested deeper than {MAX_DEPTH} levels"),
            );
        }
        Stop::Anchor => "anchors (&name)",
        Stop::Alias => "aliases (*name)",
    };
    Problem::new(
        path,
        format!(
            "line {line} column {column}: YAML {what} are not supported in configuration \
             files; write the value out in full"
        ),
    )
}

/// Parses and validates a full agent configuration.
pub(crate) fn agent_from_str(text: &str) -> Result<AgentConfig, Vec<Problem>> {
    let value = parse_document(text)?;
    let mut problems = Vec::new();
    let config = build_agent(value, &mut problems);
    match config {
        Some(config) if problems.is_empty() => Ok(config),
        _ => Err(problems),
    }
}

/// Parses and validates a pipeline on its own (paths start at `sources`).
pub(crate) fn pipeline_from_str(text: &str) -> Result<PipelineConfig, Vec<Problem>> {
    let value = parse_document(text)?;
    let mut problems = Vec::new();
    let pipeline = build_pipeline(value, "", &mut problems);
    match pipeline {
        Some(pipeline) if problems.is_empty() => Ok(pipeline),
        _ => Err(problems),
    }
}

fn build_agent(value: Value, problems: &mut Vec<Problem>) -> Option<AgentConfig> {
    if value.is_null() {
        problems.push(Problem::new(
            "",
            "the configuration is empty: at least `device` and `pipeline` are required",
        ));
        return None;
    }
    let mut root = split_mapping(value, "", ROOT_KEYS, problems)?;
    let device = required_section(
        &mut root,
        "device",
        problems,
        Checks::fields(validate::check_device),
    );
    let backend = section(
        &mut root,
        "backend",
        problems,
        Checks {
            fields: |_, _, _| {},
            cross: validate::check_backend,
        },
    );
    let pipeline = match root.remove("pipeline") {
        Some(value) => build_pipeline(value, "pipeline", problems),
        None => {
            problems.push(Problem::new("pipeline", "missing required field"));
            None
        }
    };
    let store = section(
        &mut root,
        "store",
        problems,
        Checks::fields(validate::check_store),
    );
    let fleet = section(
        &mut root,
        "fleet",
        problems,
        Checks::fields(validate::check_fleet),
    );
    let web = section(
        &mut root,
        "web",
        problems,
        Checks::fields(validate::check_web),
    );
    let outputs = section(
        &mut root,
        "outputs",
        problems,
        Checks::fields(validate::check_outputs),
    );
    let sensors = section(
        &mut root,
        "sensors",
        problems,
        Checks::fields(validate::check_sensors),
    );
    let inference = section(
        &mut root,
        "inference",
        problems,
        Checks::fields(validate::check_inference),
    );
    let workflows = section(
        &mut root,
        "workflows",
        problems,
        Checks::fields(validate::check_workflows),
    );
    let log = section(
        &mut root,
        "log",
        problems,
        Checks::fields(validate::check_log),
    );
    let watchdog = section(
        &mut root,
        "watchdog",
        problems,
        Checks::fields(validate::check_watchdog),
    );
    if let (Some(pipeline), Some(sensors)) = (&pipeline, &sensors) {
        let names: Vec<&str> = sensors.iot.iter().map(|s| s.name.as_str()).collect();
        validate::check_rule_sensors(&pipeline.rules, &names, "pipeline.rules", problems);
    }
    if let (Some(pipeline), Some(inference)) = (&pipeline, &inference) {
        validate::check_stage_models(pipeline, inference, "pipeline", problems);
    }
    Some(AgentConfig {
        device: device?,
        backend: backend?,
        pipeline: pipeline?,
        store: store?,
        fleet: fleet?,
        web: web?,
        outputs: outputs?,
        sensors: sensors?,
        inference: inference?,
        workflows: workflows?,
        log: log?,
        watchdog: watchdog?,
    })
}

/// Semantic checks of one piece: `fields` checks values one by one; `cross`
/// compares fields and is skipped when a bad value was replaced by its
/// default (the comparison would be against a value the operator never
/// wrote).
#[derive(Clone, Copy)]
struct Checks<T: 'static> {
    fields: fn(&T, &str, &mut Vec<Problem>),
    cross: fn(&T, &str, &mut Vec<Problem>),
}

impl<T> Checks<T> {
    const fn fields(fields: fn(&T, &str, &mut Vec<Problem>)) -> Self {
        Self {
            fields,
            cross: |_, _, _| {},
        }
    }
}

/// Builds and checks one piece at `path` from `value`.
fn piece<T: DeserializeOwned>(
    value: Value,
    path: &str,
    problems: &mut Vec<Problem>,
    checks: Checks<T>,
) -> Option<T> {
    let (typed, replaced) = recover_tracking::<T>(value, path, problems);
    let typed = typed?;
    (checks.fields)(&typed, path, problems);
    if !replaced {
        (checks.cross)(&typed, path, problems);
    }
    Some(typed)
}

/// An optional root section: absent means its defaults.
fn section<T: DeserializeOwned + Default>(
    root: &mut Mapping,
    key: &str,
    problems: &mut Vec<Problem>,
    checks: Checks<T>,
) -> Option<T> {
    match root.remove(key) {
        Some(value) => piece(value, key, problems, checks),
        None => Some(T::default()),
    }
}

fn required_section<T: DeserializeOwned>(
    root: &mut Mapping,
    key: &str,
    problems: &mut Vec<Problem>,
    checks: Checks<T>,
) -> Option<T> {
    match root.remove(key) {
        Some(value) => piece(value, key, problems, checks),
        None => {
            problems.push(Problem::new(key, "missing required field"));
            None
        }
    }
}

fn build_pipeline(
    value: Value,
    prefix: &str,
    problems: &mut Vec<Problem>,
) -> Option<PipelineConfig> {
    let mut map = split_mapping(value, prefix, PIPELINE_KEYS, problems)?;
    let sources_path = join_key(prefix, "sources");
    let sources = match map.remove("sources") {
        Some(value) => recover_list(value, &sources_path, problems, |item, path, problems| {
            piece::<SourceConfig>(item, path, problems, Checks::fields(validate::check_source))
        }),
        None => {
            problems.push(Problem::new(sources_path, "missing required field"));
            None
        }
    };
    let stages = match map.remove("stages") {
        Some(value) => recover_list(value, &join_key(prefix, "stages"), problems, build_stage),
        None => Some(Vec::new()),
    };
    let sinks = match map.remove("sinks") {
        Some(value) => recover_list(value, &join_key(prefix, "sinks"), problems, build_sink),
        None => Some(Vec::new()),
    };
    let pool_frames = scalar(
        &mut map,
        prefix,
        "pool_frames",
        default_pool_frames,
        problems,
    );
    let queue_depth = scalar(
        &mut map,
        prefix,
        "queue_depth",
        default_queue_depth,
        problems,
    );
    validate::check_pipeline_rules(
        sources.as_deref(),
        pool_frames,
        queue_depth,
        prefix,
        problems,
    );
    if let Some(sinks) = sinks.as_deref() {
        validate::check_record_dirs(sinks, prefix, problems);
    }
    if let (Some(sources), Some(sinks)) = (&sources, &sinks) {
        validate::check_output_streams(sources, sinks, prefix, problems);
    }
    let rules = match map.remove("rules") {
        Some(value) => piece::<Vec<crate::model::RuleConfig>>(
            value,
            &join_key(prefix, "rules"),
            problems,
            Checks::fields(|r: &Vec<crate::model::RuleConfig>, p, out| {
                validate::check_rules(r, p, out)
            }),
        ),
        None => Some(Vec::new()),
    };
    let evidence = match map.remove("evidence") {
        Some(value) if !value.is_null() => {
            let path = join_key(prefix, "evidence");
            let e = piece::<crate::model::EvidenceConfig>(
                value,
                &path,
                problems,
                Checks::fields(validate::check_evidence),
            );
            if let (Some(e), Some(sources), Some(sinks)) = (&e, &sources, &sinks) {
                validate::check_evidence_in_pipeline(e, sources, sinks, &path, problems);
            }
            Some(e)
        }
        _ => Some(None),
    };
    Some(PipelineConfig {
        sources: all(sources?)?,
        stages: all(stages?)?,
        sinks: all(sinks?)?,
        pool_frames: pool_frames?,
        queue_depth: queue_depth?,
        rules: rules?,
        evidence: evidence?,
    })
}

/// `Some` only if every element was built.
fn all<T>(items: Vec<Option<T>>) -> Option<Vec<T>> {
    items.into_iter().collect()
}

fn scalar(
    map: &mut Mapping,
    prefix: &str,
    key: &str,
    default: fn() -> u32,
    problems: &mut Vec<Problem>,
) -> Option<u32> {
    match map.remove(key) {
        Some(value) => recover::<u32>(value, &join_key(prefix, key), problems),
        None => Some(default()),
    }
}

fn build_stage(value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<StageConfig> {
    recover_tagged(
        value,
        path,
        STAGE_KINDS,
        problems,
        |kind, rest, problems| {
            let built = StageConfig::parse(kind, rest, path, problems)?;
            if let Some(stage) = &built {
                stage.check(path, problems);
            }
            Some(built)
        },
    )
}

fn build_sink(value: Value, path: &str, problems: &mut Vec<Problem>) -> Option<SinkConfig> {
    recover_tagged(value, path, SINK_KINDS, problems, |kind, rest, problems| {
        let built = match kind {
            "record" => recover(rest, path, problems).map(SinkConfig::Record),
            "discard" => recover(rest, path, problems).map(SinkConfig::Discard),
            "restream" => recover(rest, path, problems).map(SinkConfig::Restream),
            "push" => recover(rest, path, problems).map(SinkConfig::Push),
            "hls" => recover(rest, path, problems).map(SinkConfig::Hls),
            "webrtc" => recover(rest, path, problems).map(SinkConfig::WebRtc),
            _ => return None,
        };
        if let Some(sink) = &built {
            validate::check_sink(sink, path, problems);
        }
        Some(built)
    })
}
