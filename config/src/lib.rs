//! Configuration of the Aegis Edge agent.
//!
//! This crate exists so that every other part of the agent receives a typed,
//! already validated configuration and never has to re-check user input. It
//! owns the whole contract with the operator's YAML file:
//!
//! * the typed model ([`AgentConfig`] and friends), whose doc comments double
//!   as user documentation and JSON Schema descriptions ([`json_schema`]);
//! * loading with error recovery, so that *all* mistakes in a file are
//!   reported at once, each with its YAML path
//!   (`aegis.yaml: pipeline.sources[0].url: unsupported scheme "htp" ...`);
//! * the precedence rule between the local default pipeline and a pipeline
//!   delivered by a signed fleet workflow ([`effective_pipeline`]).
//!
//! The crate performs no I/O other than reading the configuration file in
//! [`load`].

pub mod civil;
mod error;
mod events;
mod model;
mod parse;
mod recover;
mod stages;
pub mod url;
mod validate;

#[cfg(test)]
mod tests;

use std::fs::File;
use std::io::Read;
use std::path::Path;

pub use error::{ConfigError, Problem};
pub use model::{
    AgentConfig, BackendConfig, BackendKind, CaptureConfig, CaptureFormat, Comparison, Condition,
    DeviceConfig, DiscardSink, EncoderConfig, EvidenceConfig, EvidenceTrigger, FirmwareConfig,
    FirmwarePrivilege, FirmwareUpdaterKind, FleetConfig, FleetTls, FusionConfig, GpsConfig,
    H264Profile, HealthCheckConfig, HlsClient, HlsServerConfig, HlsSink, ImuConfig,
    InferenceConfig, InferenceProvider, IotSensorConfig, KeepRule, LogConfig, LogFormat,
    ModelConfig, ModelDeliveryConfig, ModelKindConfig, ModerationCondition, OutputsConfig,
    PipelineConfig, PushSink, RecordSink, RestreamSink, RtspServerConfig, RtspTransport, RtspUser,
    RuleConfig, Secret, SensorCondition, SensorsConfig, SinkConfig, SourceConfig, SourceLocation,
    StoreConfig, SwUpdateSettings, TensorRtOptions, TlsMode, TrackCondition, TrustAnchors,
    VideoCodec, WatchdogConfig, WebConfig, WebRtcServerConfig, WebRtcSink, WorkflowPolicy,
    WorkflowsConfig, ZoneConfig, same_secret,
};
// Everything public of the stages (the settings of each kind, `StageConfig`, the list's
// accessors), so that a new kind needs no line here.
pub use stages::*;
pub use url::{Host, NetScheme, NetUrl, UrlError};
pub use validate::{check_log_filter, check_rule_sensors, parse_colour};

/// Largest configuration file [`load`] accepts, in bytes (1 MiB).
pub const MAX_CONFIG_BYTES: u64 = parse::MAX_TEXT_BYTES as u64;

/// Reads, parses and validates the agent configuration file at `path`.
///
/// Files larger than [`MAX_CONFIG_BYTES`] are rejected without being read in
/// full. Every problem found is reported in one [`ConfigError::Invalid`].
pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
    let io_error = |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if u64::try_from(bytes.len()).map_or(true, |len| len > MAX_CONFIG_BYTES) {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit_bytes: MAX_CONFIG_BYTES,
        });
    }
    let origin = path.display().to_string();
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
        origin: origin.clone(),
        problems: vec![Problem::new("", "the file is not valid UTF-8 text")],
    })?;
    from_yaml_str(&text, &origin)
}

/// Parses and validates agent configuration text. `origin` names the text in
/// messages (usually the file name).
pub fn from_yaml_str(text: &str, origin: &str) -> Result<AgentConfig, ConfigError> {
    parse::agent_from_str(text).map_err(|problems| invalid(origin, problems))
}

impl PipelineConfig {
    /// Parses and validates a pipeline on its own, as found in the Pipeline
    /// block of a workflow. Problem paths start at the pipeline
    /// (`sources[0].url`). `origin` names the text in messages.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<PipelineConfig, ConfigError> {
        parse::pipeline_from_str(text).map_err(|problems| invalid(origin, problems))
    }
}

fn invalid(origin: &str, problems: Vec<Problem>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        problems,
    }
}

/// Parses YAML text with the configuration's safety rules (size limit, anchors and aliases
/// rejected, bounded depth), for other YAML documents the agent accepts (workflow front
/// matter). `origin` names the text in messages.
pub fn yaml_value(text: &str, origin: &str) -> Result<serde_yaml_ng::Value, ConfigError> {
    parse::parse_document(text).map_err(|problems| invalid(origin, problems))
}

/// The configuration as a YAML value: every option spelled out (the effective
/// configuration, defaults included) in the order of the config types, with unset
/// optional options left out where leaving them out means the same (an explicit
/// `fallback: null` stays). The text of this value parses back to `cfg` with
/// [`from_yaml_str`]: the web page's config editor shows it, and saves what the
/// operator changed in it.
pub fn effective_yaml(cfg: &AgentConfig) -> serde_yaml_ng::Value {
    // Serialising plain data (strings, numbers, lists, maps) cannot fail.
    let full = serde_yaml_ng::to_value(cfg).unwrap_or(serde_yaml_ng::Value::Null);
    let mut lean = full.clone();
    strip_nulls(&mut lean);
    let reparsed = serde_yaml_ng::to_string(&lean)
        .ok()
        .and_then(|t| from_yaml_str(&t, "effective configuration").ok());
    match reparsed {
        Some(c) if c == *cfg => lean,
        Some(c) => {
            // Where an absent option means something else than null (its default is
            // not null), the null is put back.
            let back = serde_yaml_ng::to_value(&c).unwrap_or(serde_yaml_ng::Value::Null);
            keep_needed_nulls(&mut lean, &full, &back);
            lean
        }
        None => full,
    }
}

fn strip_nulls(v: &mut serde_yaml_ng::Value) {
    match v {
        serde_yaml_ng::Value::Mapping(m) => {
            m.retain(|_, x| !x.is_null());
            m.iter_mut().for_each(|(_, x)| strip_nulls(x));
        }
        serde_yaml_ng::Value::Sequence(s) => s.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Puts back into `lean` the nulls of `full` that `reparsed` (what `lean` parses to)
/// does not have, in `full`'s key order.
fn keep_needed_nulls(
    lean: &mut serde_yaml_ng::Value,
    full: &serde_yaml_ng::Value,
    reparsed: &serde_yaml_ng::Value,
) {
    use serde_yaml_ng::Value;
    match (lean, full, reparsed) {
        (Value::Mapping(l), Value::Mapping(f), Value::Mapping(r)) => {
            let mut out = serde_yaml_ng::Mapping::new();
            for (k, fv) in f {
                if fv.is_null() {
                    if r.get(k).is_some_and(|x| !x.is_null()) {
                        out.insert(k.clone(), Value::Null);
                    }
                    continue;
                }
                if let Some(mut lv) = l.remove(k) {
                    if let Some(rv) = r.get(k) {
                        keep_needed_nulls(&mut lv, fv, rv);
                    }
                    out.insert(k.clone(), lv);
                }
            }
            *l = out;
        }
        (Value::Sequence(l), Value::Sequence(f), Value::Sequence(r)) => {
            for ((lv, fv), rv) in l.iter_mut().zip(f).zip(r) {
                keep_needed_nulls(lv, fv, rv);
            }
        }
        _ => {}
    }
}

/// JSON Schema of the agent configuration file, for editor completion and
/// validation.
pub fn json_schema() -> serde_json::Value {
    schemars::schema_for!(AgentConfig).to_value()
}

/// JSON Schema of a pipeline alone (the Pipeline block of a workflow).
pub fn pipeline_json_schema() -> serde_json::Value {
    schemars::schema_for!(PipelineConfig).to_value()
}

/// Where the pipeline that should run came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineOrigin {
    /// The `pipeline` section of the local configuration file.
    LocalDefault,
    /// The pipeline of a signed workflow applied from the fleet.
    SignedWorkflow,
}

/// Chooses the pipeline to run.
///
/// An applied signed workflow supersedes the local default pipeline. Device
/// settings (every section except `pipeline`) always come from the local
/// file and are not affected.
pub fn effective_pipeline<'a>(
    local: &'a AgentConfig,
    active_workflow: Option<&'a PipelineConfig>,
) -> (&'a PipelineConfig, PipelineOrigin) {
    match active_workflow {
        Some(workflow) => (workflow, PipelineOrigin::SignedWorkflow),
        None => (&local.pipeline, PipelineOrigin::LocalDefault),
    }
}
