//! Signed model bundle manifests: what a model bundle is (its files with their sizes and
//! SHA-256, its kind, tensors, platform, minimum agent version and health check), the
//! device-side checks of a signed manifest *before anything is downloaded*
//! ([`verify_manifest`]) and again at start-up for an installed one
//! ([`verify_installed_manifest`]), and the check of a staged bundle's files against it
//! ([`verify_bundle_files`]). Signed rollback orders share the signature, issuer, target
//! and time checks ([`crate::model_rollback`]).
//!
//! The format is JSON, like the trust metadata, not YAML like workflows: a manifest is
//! written by `chimera model pack`, not by hand, and JSON has one reading of each value (no
//! implicit `no` → `false`, no anchors or aliases, no tags), duplicate fields are refused by
//! the derived parser, and `serde_json` is already how trust files are read. The signed
//! file is the JSON bytes (LF-normalised), then exactly one ```` ```signature ```` block made
//! with [`Purpose::Model`] (`aegis-model-v1`): the same block, split and key lookup as
//! workflows and trust files, so one verifier path handles all three and a workflow
//! signature can never pass as a model's (or the reverse).
//!
//! This module must not download, install or load anything: it decides whether bytes may
//! go further. Staging, install and rollback on disk are [`crate::model_store`]'s; delivery
//! and the swap are the agent's.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use aegis_config::{BackendKind, ModelKindConfig};

use crate::device::Identity;
use crate::maml::{self, SignatureBlock};
use crate::sign::{PublicKey, Purpose, SecretKey, SignError};
use crate::trust::{Issuer, TrustMetadata};

/// `type` of every manifest.
pub const MANIFEST_TYPE: &str = "aegis-model";
/// Largest signed manifest accepted (bytes): a manifest lists files, it never carries them.
pub const MAX_MANIFEST_BYTES: usize = 64 * 1024;
/// Most files in one bundle.
pub const MAX_FILES: usize = 256;
/// Longest file path in a bundle (bytes).
pub const MAX_PATH_LEN: usize = 255;
/// Most directory levels in a file path (`a/b/c` has 3).
pub const MAX_PATH_DEPTH: usize = 8;
/// Longest model name (the same rule as ids in the configuration).
pub const MAX_NAME_LEN: usize = 64;
/// Most input or output tensors.
pub const MAX_TENSORS: usize = 64;
/// Most dimensions of one tensor.
pub const MAX_RANK: usize = 8;
/// Largest fixed dimension.
pub const MAX_DIM: i64 = 1 << 20;

/// Who a manifest is for (as a workflow's `target`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelTarget {
    /// Device ids.
    #[serde(default)]
    pub devices: Vec<String>,
    /// Group names.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One file of the bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    /// Relative path inside the bundle: `/`-separated components of `[A-Za-z0-9._-]`, none
    /// empty, none starting with `.` (so no `.`, `..` or hidden files), no absolute path.
    pub path: String,
    /// Lowercase hex SHA-256 of its bytes.
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

/// A tensor's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    /// 32-bit float.
    Float32,
    /// 16-bit float.
    Float16,
    /// Unsigned byte.
    Uint8,
    /// Signed byte.
    Int8,
    /// 32-bit integer.
    Int32,
    /// 64-bit integer.
    Int64,
    /// Boolean.
    Bool,
}

/// An input or output tensor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// Its name in the model graph.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions; `-1` is a dynamic one (the batch), others 1 to [`MAX_DIM`].
    pub shape: Vec<i64>,
}

/// The runtime the model files are for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Runtime {
    /// ONNX: runs on any backend the manifest lists. (A struct variant with no field, so
    /// that `deny_unknown_fields` also refuses `{"kind": "onnx", "extra": …}`: serde ignores
    /// extra fields next to the tag of a unit variant.)
    Onnx {},
    /// A serialised TensorRT engine: only for the module and TensorRT version it was built
    /// for (engines are not portable across GPUs or TensorRT releases).
    Tensorrt {
        /// The module (`jetson-orin-nx-16gb`, `h200`…), compared exactly.
        module: String,
        /// The TensorRT version it was built with (`10.3.0`), compared exactly.
        trt_version: String,
    },
}

/// Where the model may run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformSpec {
    /// Backends it may run on (at least one).
    pub backends: Vec<BackendKind>,
    /// Its runtime.
    pub runtime: Runtime,
}

/// Which statistic of an output a health bound constrains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Statistic {
    /// The smallest element.
    Min,
    /// The largest element.
    Max,
    /// The mean of the elements.
    Mean,
}

/// One expected-output bound of the health check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputBound {
    /// An output tensor's name (one of `outputs`).
    pub output: String,
    /// The statistic bounded.
    pub statistic: Statistic,
    /// Lowest accepted value (finite).
    pub min: f64,
    /// Highest accepted value (finite, at least `min`).
    pub max: f64,
}

/// The health check run on the staged model before it replaces the running one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A file of the bundle: the reference input (raw tensor bytes of the first input).
    pub reference_input: String,
    /// Bounds the outputs must meet (at least one).
    pub expected: Vec<OutputBound>,
}

/// A model bundle's manifest (the signed part of a signed manifest).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Always [`MANIFEST_TYPE`].
    #[serde(rename = "type")]
    pub kind_tag: String,
    /// Registry name (1 to 64 of `[a-z0-9_-]`, as model names in the configuration).
    pub name: String,
    /// Version: strictly increasing per name.
    pub version: u64,
    /// Issuer name: must be the trust metadata issuer whose key signed it.
    pub issuer: String,
    /// Devices and groups it is for.
    pub target: ModelTarget,
    /// RFC 3339 UTC.
    pub issued_at: String,
    /// RFC 3339 UTC: an announcement expires, and is refused after.
    pub expires_at: String,
    /// The model kind (fixes pre- and post-processing).
    pub kind: ModelKindConfig,
    /// The model file (one of `files`).
    pub model: String,
    /// Class names, one per line (one of `files`; `yolov8` needs it).
    #[serde(default)]
    pub labels: Option<String>,
    /// Input tensors (at least one).
    pub inputs: Vec<TensorSpec>,
    /// Output tensors (at least one).
    pub outputs: Vec<TensorSpec>,
    /// Where it may run.
    pub platform: PlatformSpec,
    /// The oldest agent that may install it (`MAJOR.MINOR.PATCH`).
    pub min_agent_version: String,
    /// The health check.
    pub health: HealthCheck,
    /// Every file of the bundle, and nothing else.
    pub files: Vec<BundleFile>,
}

/// The device's platform, as a manifest's [`PlatformSpec`] is matched against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The backend this device runs.
    pub backend: BackendKind,
    /// Its module (None: unknown, so no TensorRT engine matches).
    pub module: Option<String>,
    /// Its TensorRT version (None: no TensorRT).
    pub trt_version: Option<String>,
}

/// What a device knows when it decides about a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelContext {
    /// Who this device is.
    pub identity: Identity,
    /// Its platform.
    pub platform: Platform,
    /// The running agent's version (`MAJOR.MINOR.PATCH`).
    pub agent_version: String,
    /// Trusted time (seconds since the epoch; the caller applies its time floor).
    pub now_s: i64,
    /// Clock skew tolerated for `issued_at` in the future, seconds.
    pub max_clock_skew_s: i64,
    /// The version of this name installed now (None: none). For
    /// [`verify_installed_manifest`]: the version the store recorded for the manifest.
    pub installed_version: Option<u64>,
    /// Free bytes where the bundle would be staged.
    pub free_disk_bytes: u64,
    /// Largest bundle accepted (policy), bytes.
    pub max_bundle_bytes: u64,
}

/// Why a manifest was refused; each names the field and the values that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelRejection {
    /// The device's trust metadata vouches for nothing now.
    #[error("trust: {0}")]
    Trust(String),
    /// Size, encoding or signature-block shape, before any JSON is read.
    #[error("format: {0}")]
    Format(String),
    /// Algorithm, key lookup (unknown or revoked) or the signature itself.
    #[error("signature: {0}")]
    Signature(SignError),
    /// The signed bytes are not a valid manifest (after the signature verified).
    #[error("manifest: {0}")]
    Manifest(String),
    /// A file path in the manifest is not a safe relative path.
    #[error("manifest: file path {path:?}: {reason}")]
    FilePath {
        /// The path.
        path: String,
        /// Why.
        reason: String,
    },
    /// The signing issuer is not allowed to ship models (`models: true` in the trust
    /// metadata).
    #[error("issuer {issuer} may not ship models (its trust metadata entry has no `models: true`)")]
    NotModelIssuer {
        /// The issuer.
        issuer: String,
    },
    /// The manifest's `issuer` is not the issuer whose key signed it.
    #[error("issuer {claimed:?} is not the signing issuer {signer:?}")]
    IssuerMismatch {
        /// The `issuer` field.
        claimed: String,
        /// The signer's issuer name.
        signer: String,
    },
    /// Not for this device, or for a device or group its issuer may not target.
    #[error(transparent)]
    Target(#[from] crate::issued::TargetRefusal),
    /// `issued_at` is in the future beyond the tolerated skew.
    #[error("time: issued_at {issued_at} is after now ({now}) plus {skew_s} s of skew")]
    NotYetValid {
        /// `issued_at`.
        issued_at: String,
        /// Trusted time.
        now: String,
        /// Tolerated skew.
        skew_s: i64,
    },
    /// `expires_at` has passed.
    #[error("time: expires_at {expires_at} is not after now ({now})")]
    Expired {
        /// `expires_at`.
        expires_at: String,
        /// Trusted time.
        now: String,
    },
    /// Not newer than the installed version.
    #[error(
        "version: model {name:?} version {offered} is not above the installed version {installed} (versions only move forward)"
    )]
    NotNewer {
        /// The model.
        name: String,
        /// Offered.
        offered: u64,
        /// Installed.
        installed: u64,
    },
    /// An installed manifest ([`verify_installed_manifest`]) is not the version the store
    /// recorded.
    #[error(
        "version: the kept manifest is model {name:?} version {found}, the store records version {recorded:?}"
    )]
    NotRecordedVersion {
        /// The model.
        name: String,
        /// The manifest's version.
        found: u64,
        /// The version recorded (None: none).
        recorded: Option<u64>,
    },
    /// The signed bytes are not a valid rollback order (after the signature verified).
    #[error("rollback order: {0}")]
    Order(String),
    /// This device's backend is not one of `platform.backends`.
    #[error("platform: backends {allowed:?} do not include this device's {backend}")]
    Backend {
        /// The manifest's backends.
        allowed: Vec<String>,
        /// This device's.
        backend: String,
    },
    /// A TensorRT engine for another module.
    #[error("platform: TensorRT engine built for module {wanted:?}, this device is {device:?}")]
    TensorRtModule {
        /// The manifest's module.
        wanted: String,
        /// This device's (None: unknown).
        device: Option<String>,
    },
    /// A TensorRT engine for another TensorRT version.
    #[error("platform: TensorRT engine built with TensorRT {wanted:?}, this device has {device:?}")]
    TensorRtVersion {
        /// The manifest's version.
        wanted: String,
        /// This device's (None: no TensorRT).
        device: Option<String>,
    },
    /// The agent is older than `min_agent_version`.
    #[error("agent: min_agent_version {required} is above this agent's {agent}")]
    AgentTooOld {
        /// Required.
        required: String,
        /// This agent.
        agent: String,
    },
    /// The files add up to more than policy allows.
    #[error("size: the bundle's files total {total} bytes, above the limit of {limit}")]
    TooLarge {
        /// Sum of `files[].size`.
        total: u64,
        /// Policy limit.
        limit: u64,
    },
    /// Not enough free disk to stage it.
    #[error("disk: the bundle needs {total} bytes, {free} are free")]
    NoDisk {
        /// Sum of `files[].size`.
        total: u64,
        /// Free bytes.
        free: u64,
    },
}

impl ModelRejection {
    /// Whether the signature verified before this refusal (so a signed receipt may name
    /// the manifest): every rejection after the signature check.
    pub fn authenticated(&self) -> bool {
        !matches!(
            self,
            ModelRejection::Trust(_) | ModelRejection::Format(_) | ModelRejection::Signature(_)
        )
    }
}

/// A manifest that passed every check of [`verify_manifest`]. Only this module makes one
/// (`non_exhaustive`): the files are checked against what was verified, never against
/// what a caller built.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct VerifiedManifest {
    /// The parsed manifest (parsed once, from the signed bytes).
    pub manifest: ModelManifest,
    /// The key that signed it.
    pub signer: PublicKey,
    /// SHA-256 of the signed bytes (what receipts and audit rows name).
    pub digest: String,
    /// Sum of the files' sizes.
    pub total_bytes: u64,
}

/// Checks a bundle file path: relative, `/`-separated components of `[A-Za-z0-9._-]`, none
/// empty or starting with `.`, at most [`MAX_PATH_DEPTH`] components and
/// [`MAX_PATH_LEN`] bytes. Returns why not.
pub fn check_file_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("is empty".into());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!("is {} bytes, at most {MAX_PATH_LEN}", path.len()));
    }
    if path.starts_with('/') {
        return Err("is absolute: bundle paths are relative".into());
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.len() > MAX_PATH_DEPTH {
        return Err(format!(
            "has {} components, at most {MAX_PATH_DEPTH}",
            parts.len()
        ));
    }
    for part in parts {
        if part.is_empty() {
            return Err("has an empty component (`//` or a trailing `/`)".into());
        }
        if part == ".." {
            return Err("climbs out with `..`".into());
        }
        if part.starts_with('.') {
            return Err(format!("component {part:?} starts with `.`"));
        }
        // The downloader stages each file as `<path>.part`: a bundle file of that name would
        // be taken for another file's partial download.
        if part.ends_with(".part") {
            return Err(format!(
                "component {part:?} ends with `.part` (the name of a partial download)"
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(format!(
                "character {c:?} is not allowed (use letters, digits, `.`, `_`, `-`)"
            ));
        }
    }
    Ok(())
}

/// The model name rule (configuration ids): 1 to 64 of `[a-z0-9_-]`.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("name {name:?}: 1 to {MAX_NAME_LEN} characters"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_')))
    {
        return Err(format!(
            "name {name:?}: character {c:?} is not allowed (lowercase letters, digits, `-`, `_`)"
        ));
    }
    Ok(())
}

/// `MAJOR.MINOR.PATCH`, each a decimal number without sign or leading `+`. Pre-release and
/// build suffixes are refused: agents are released with plain versions, and a strict
/// triple has one order.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.split('.');
    let mut num = || -> Option<u64> {
        let s = it.next()?;
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let t = (num()?, num()?, num()?);
    it.next().is_none().then_some(t)
}

/// Whether `s` is a SHA-256 in lowercase hex (64 digits).
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_tensors(what: &str, list: &[TensorSpec]) -> Result<(), String> {
    if list.is_empty() || list.len() > MAX_TENSORS {
        return Err(format!(
            "{what}: 1 to {MAX_TENSORS} tensors, not {}",
            list.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for t in list {
        if t.name.is_empty() || t.name.len() > 256 || t.name.chars().any(char::is_control) {
            return Err(format!(
                "{what}: tensor name {:?} is empty, too long or has control characters",
                t.name
            ));
        }
        if !seen.insert(t.name.as_str()) {
            return Err(format!("{what}: tensor {:?} is listed twice", t.name));
        }
        if t.shape.is_empty() || t.shape.len() > MAX_RANK {
            return Err(format!(
                "{what}: tensor {:?} has {} dimensions, 1 to {MAX_RANK}",
                t.name,
                t.shape.len()
            ));
        }
        if let Some(d) = t
            .shape
            .iter()
            .find(|&&d| d != -1 && !(1..=MAX_DIM).contains(&d))
        {
            return Err(format!(
                "{what}: tensor {:?} dimension {d}: -1 (dynamic) or 1 to {MAX_DIM}",
                t.name
            ));
        }
    }
    Ok(())
}

impl ModelManifest {
    /// An example manifest (for tests and documentation, never for a device): `name`
    /// `version` by issuer `gw-1` for device `orin-1`, issued 2026-11-26T10:00:00Z for a
    /// day, a YOLOv8 ONNX model `model.onnx` with `labels.txt`, CPU only, whose health check
    /// runs `health/input.bin` and wants output0's maximum in 0.5..=1.0; its files are
    /// `files` (they should list the paths it names).
    #[doc(hidden)]
    pub fn example(name: &str, version: u64, files: Vec<BundleFile>) -> ModelManifest {
        ModelManifest {
            kind_tag: MANIFEST_TYPE.into(),
            name: name.into(),
            version,
            issuer: "gw-1".into(),
            target: ModelTarget {
                devices: vec!["orin-1".into()],
                groups: vec![],
            },
            issued_at: "2026-11-26T10:00:00Z".into(),
            expires_at: "2026-11-27T10:00:00Z".into(),
            kind: aegis_config::ModelKindConfig::Yolov8,
            model: "model.onnx".into(),
            labels: Some("labels.txt".into()),
            inputs: vec![TensorSpec {
                name: "images".into(),
                dtype: DType::Float32,
                shape: vec![-1, 3, 640, 640],
            }],
            outputs: vec![TensorSpec {
                name: "output0".into(),
                dtype: DType::Float32,
                shape: vec![-1, 84, 8400],
            }],
            platform: PlatformSpec {
                backends: vec![aegis_config::BackendKind::Cpu],
                runtime: Runtime::Onnx {},
            },
            min_agent_version: "0.1.0".into(),
            health: HealthCheck {
                reference_input: "health/input.bin".into(),
                expected: vec![OutputBound {
                    output: "output0".into(),
                    statistic: Statistic::Max,
                    min: 0.5,
                    max: 1.0,
                }],
            },
            files,
        }
    }

    /// Parses and validates manifest JSON (no signature involved): every rule of the
    /// format, nothing about the device.
    pub fn from_json(bytes: &[u8]) -> Result<ModelManifest, ModelRejection> {
        let m: ModelManifest =
            serde_json::from_slice(bytes).map_err(|e| ModelRejection::Manifest(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// The format's rules.
    pub fn validate(&self) -> Result<(), ModelRejection> {
        let bad = |m: String| Err(ModelRejection::Manifest(m));
        if self.kind_tag != MANIFEST_TYPE {
            return bad(format!("type {:?} is not {MANIFEST_TYPE}", self.kind_tag));
        }
        check_name(&self.name).map_err(ModelRejection::Manifest)?;
        if self.version == 0 {
            return bad("version 0: versions start at 1".into());
        }
        if self.issuer.is_empty() {
            return bad("issuer is empty".into());
        }
        if self.target.devices.is_empty() && self.target.groups.is_empty() {
            return bad("target names no device and no group".into());
        }
        let issued = maml::parse_time(&self.issued_at).ok_or_else(|| {
            ModelRejection::Manifest(format!(
                "issued_at {:?} is not RFC 3339 UTC",
                self.issued_at
            ))
        })?;
        let expires = maml::parse_time(&self.expires_at).ok_or_else(|| {
            ModelRejection::Manifest(format!(
                "expires_at {:?} is not RFC 3339 UTC",
                self.expires_at
            ))
        })?;
        if expires <= issued {
            return bad(format!(
                "expires_at {} is not after issued_at {}",
                self.expires_at, self.issued_at
            ));
        }
        if parse_version(&self.min_agent_version).is_none() {
            return bad(format!(
                "min_agent_version {:?} is not MAJOR.MINOR.PATCH",
                self.min_agent_version
            ));
        }
        // Files: safe paths, unique, no file that is also another's directory.
        if self.files.is_empty() || self.files.len() > MAX_FILES {
            return bad(format!("files: 1 to {MAX_FILES}, not {}", self.files.len()));
        }
        let mut paths = BTreeSet::new();
        for f in &self.files {
            check_file_path(&f.path).map_err(|reason| ModelRejection::FilePath {
                path: f.path.clone(),
                reason,
            })?;
            if !is_sha256_hex(&f.sha256) {
                return bad(format!(
                    "file {:?}: sha256 {:?} is not 64 lowercase hex digits",
                    f.path, f.sha256
                ));
            }
            if !paths.insert(f.path.as_str()) {
                return Err(ModelRejection::FilePath {
                    path: f.path.clone(),
                    reason: "is listed twice".into(),
                });
            }
        }
        for p in &paths {
            if let Some(other) = paths.iter().find(|o| o.starts_with(&format!("{p}/"))) {
                return Err(ModelRejection::FilePath {
                    path: (*p).to_string(),
                    reason: format!("is a file and the directory of {other:?}"),
                });
            }
        }
        let listed = |what: &str, p: &str| -> Result<(), ModelRejection> {
            if paths.contains(p) {
                Ok(())
            } else {
                Err(ModelRejection::Manifest(format!(
                    "{what} {p:?} is not one of the bundle's files"
                )))
            }
        };
        listed("model", &self.model)?;
        if let Some(l) = &self.labels {
            listed("labels", l)?;
        }
        if self.kind == ModelKindConfig::Yolov8 && self.labels.is_none() {
            return bad("kind yolov8 needs labels".into());
        }
        listed("health.reference_input", &self.health.reference_input)?;
        check_tensors("inputs", &self.inputs).map_err(ModelRejection::Manifest)?;
        check_tensors("outputs", &self.outputs).map_err(ModelRejection::Manifest)?;
        if self.health.expected.is_empty() {
            return bad("health.expected has no bound: a health check must check something".into());
        }
        for b in &self.health.expected {
            if !self.outputs.iter().any(|o| o.name == b.output) {
                return bad(format!(
                    "health.expected: output {:?} is not one of outputs",
                    b.output
                ));
            }
            if !(b.min.is_finite() && b.max.is_finite() && b.min <= b.max) {
                return bad(format!(
                    "health.expected for {:?}: min {} and max {} must be finite with min <= max",
                    b.output, b.min, b.max
                ));
            }
        }
        let p = &self.platform;
        if p.backends.is_empty() {
            return bad("platform.backends is empty".into());
        }
        if let Runtime::Tensorrt {
            module,
            trt_version,
        } = &p.runtime
        {
            if module.trim().is_empty() || trt_version.trim().is_empty() {
                return bad(
                    "platform.runtime: a TensorRT engine names its module and trt_version".into(),
                );
            }
            if p.backends.contains(&BackendKind::Cpu) {
                return bad("platform: a TensorRT engine cannot run on the cpu backend".into());
            }
        }
        self.total_bytes()?;
        Ok(())
    }

    /// Sum of the files' sizes (an overflow is a malformed manifest).
    pub fn total_bytes(&self) -> Result<u64, ModelRejection> {
        self.files.iter().try_fold(0u64, |acc, f| {
            acc.checked_add(f.size)
                .ok_or_else(|| ModelRejection::Manifest("files' sizes overflow".into()))
        })
    }

    /// The manifest JSON as `chimera model pack` writes it (pretty, ending in a newline).
    pub fn to_json(&self) -> Result<Vec<u8>, ModelRejection> {
        let mut out =
            serde_json::to_vec_pretty(self).map_err(|e| ModelRejection::Manifest(e.to_string()))?;
        out.push(b'\n');
        Ok(out)
    }
}

/// Signs manifest JSON: validates it (a gateway must not sign what devices refuse), then
/// appends one signature block for [`Purpose::Model`]. The signed bytes are the
/// LF-normalised JSON, ending in a newline.
pub fn sign_manifest(json: &[u8], key: &SecretKey) -> Result<Vec<u8>, ModelRejection> {
    crate::issued::sign_json(
        json,
        key,
        Purpose::Model,
        "manifest",
        MAX_MANIFEST_BYTES,
        |out| ModelManifest::from_json(out).map(|_| ()),
        ModelRejection::from,
    )
}

/// Splits a signed manifest into its signed bytes (LF-normalised) and its one signature
/// block. A text scan: no JSON is read here.
pub fn split_manifest(bytes: &[u8]) -> Result<(Vec<u8>, SignatureBlock), ModelRejection> {
    split_one(bytes, "manifest")
}

/// The split shared by manifests and rollback orders (`what` names which in errors): at
/// most [`MAX_MANIFEST_BYTES`], then exactly one signature block.
pub(crate) fn split_one(
    bytes: &[u8],
    what: &str,
) -> Result<(Vec<u8>, SignatureBlock), ModelRejection> {
    crate::issued::split_one(bytes, what, MAX_MANIFEST_BYTES).map_err(ModelRejection::Format)
}

/// The digest a signed manifest is known by ([`VerifiedManifest::digest`]): the SHA-256
/// of its signed bytes (LF-normalised, without the signature block, so a CRLF copy or
/// another signature over the same statement has the same digest). Splits only; checks no
/// signature.
pub fn manifest_digest(bytes: &[u8]) -> Result<String, ModelRejection> {
    let (signed, _) = split_manifest(bytes)?;
    Ok(crate::sha256_hex(&signed))
}

/// The device-side checks of a signed manifest, before anything is downloaded, in this
/// order: trust metadata valid now → size and signature block → issuer (known, not
/// revoked) → signature (`aegis-model-v1`) → JSON and format rules → the issuer may ship
/// models and is the one the manifest names → target (this device, and the issuer may
/// target every device and group named) → time → version above the installed one →
/// platform → agent version → size limit → free disk.
pub fn verify_manifest(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &ModelContext,
) -> Result<VerifiedManifest, ModelRejection> {
    verify(bytes, trust, ctx, Use::Announcement, &|_| {
        ctx.installed_version
    })
}

/// [`verify_manifest`] for a device that holds several models: the version installed under
/// the manifest's name is `installed(name)`, asked with the name of the verified parse
/// (`ctx.installed_version` is not used). The manifest is parsed once, after its signature
/// verified; nothing is read from it before.
pub fn verify_manifest_against(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &ModelContext,
    installed: &dyn Fn(&str) -> Option<u64>,
) -> Result<VerifiedManifest, ModelRejection> {
    verify(bytes, trust, ctx, Use::Announcement, installed)
}

/// The checks of a manifest the store already installed (read back with
/// [`crate::model_store::ModelStore::manifest`]), for an agent that is about to run the
/// version again at start-up: every check of [`verify_manifest`], in the same order,
/// except three.
///
/// - `expires_at` is not checked: it bounds how long an *announcement* may be acted on, not
///   how long an installed model may run (a model installed a week before its manifest
///   expired must still run after).
/// - "version above the installed one" becomes "version equal to the recorded one":
///   `ctx.installed_version` is the version the store recorded for this manifest (None is
///   refused), so a manifest of another version never passes as this one's
///   ([`ModelRejection::NotRecordedVersion`]).
/// - Free disk is not checked: the files are already on disk.
///
/// Everything else still refuses: trust metadata expired, an issuer key unknown or revoked
/// since, a bad signature, an issuer that lost its `models: true` or its right to target
/// this device, `issued_at` beyond trusted time plus skew, another platform or TensorRT
/// version (after an upgrade of the device), an agent older than `min_agent_version` (after
/// a downgrade), a bundle above the policy's size limit.
pub fn verify_installed_manifest(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &ModelContext,
) -> Result<VerifiedManifest, ModelRejection> {
    verify(bytes, trust, ctx, Use::Installed, &|_| {
        ctx.installed_version
    })
}

/// What a manifest is checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// An announcement: everything.
    Announcement,
    /// Already installed: no expiry, no free disk, version equal to the recorded one.
    Installed,
}

pub(crate) use crate::issued::SignedBy;

impl From<crate::issued::Unverified> for ModelRejection {
    fn from(e: crate::issued::Unverified) -> ModelRejection {
        use crate::issued::Unverified;
        match e {
            Unverified::Trust(why) => ModelRejection::Trust(why),
            Unverified::Format(why) => ModelRejection::Format(why),
            Unverified::Signature(e) => ModelRejection::Signature(e),
        }
    }
}

/// The checks before any JSON is read, shared by manifests and rollback orders (`what`
/// names which): trust metadata valid now → size and one signature block → algorithm →
/// issuer key known and not revoked → signature with [`Purpose::Model`].
pub(crate) fn verify_signature(
    bytes: &[u8],
    trust: &TrustMetadata,
    now_s: i64,
    what: &str,
) -> Result<SignedBy, ModelRejection> {
    Ok(crate::issued::verify_signature(
        bytes,
        trust,
        now_s,
        what,
        MAX_MANIFEST_BYTES,
        Purpose::Model,
    )?)
}

/// The issuer and target rules shared by manifests and rollback orders: the signing
/// issuer may ship models and is the one `claimed`; `target` names this device or one of
/// its groups; the issuer may target every device and group named.
pub(crate) fn check_issuer_and_target(
    issuer: &Issuer,
    claimed: &str,
    target: &ModelTarget,
    me: &Identity,
) -> Result<(), ModelRejection> {
    if !issuer.models {
        return Err(ModelRejection::NotModelIssuer {
            issuer: issuer.name.clone(),
        });
    }
    if claimed != issuer.name {
        return Err(ModelRejection::IssuerMismatch {
            claimed: claimed.to_string(),
            signer: issuer.name.clone(),
        });
    }
    crate::issued::check_target(issuer, &target.devices, &target.groups, me).map_err(Into::into)
}

/// The time rules shared by manifests and rollback orders: `issued_at` not beyond trusted
/// time plus the skew; `expires_at` (when given) after trusted time. Both were validated
/// by the format's rules.
pub(crate) fn check_time(
    issued_at: &str,
    expires_at: Option<&str>,
    ctx: &ModelContext,
) -> Result<(), ModelRejection> {
    let issued = maml::parse_time(issued_at).unwrap_or(i64::MAX);
    if issued > ctx.now_s.saturating_add(ctx.max_clock_skew_s) {
        return Err(ModelRejection::NotYetValid {
            issued_at: issued_at.to_string(),
            now: maml::format_time(ctx.now_s),
            skew_s: ctx.max_clock_skew_s,
        });
    }
    if let Some(expires_at) = expires_at
        && maml::parse_time(expires_at).unwrap_or(i64::MIN) <= ctx.now_s
    {
        return Err(ModelRejection::Expired {
            expires_at: expires_at.to_string(),
            now: maml::format_time(ctx.now_s),
        });
    }
    Ok(())
}

fn verify(
    bytes: &[u8],
    trust: &TrustMetadata,
    ctx: &ModelContext,
    what: Use,
    installed_of: &dyn Fn(&str) -> Option<u64>,
) -> Result<VerifiedManifest, ModelRejection> {
    let SignedBy {
        signed,
        issuer,
        key,
    } = verify_signature(bytes, trust, ctx.now_s, "manifest")?;
    // From here on the bytes are the issuer's: parsed once.
    let m = ModelManifest::from_json(&signed)?;
    check_issuer_and_target(&issuer, &m.issuer, &m.target, &ctx.identity)?;
    let installed = what == Use::Installed;
    check_time(
        &m.issued_at,
        (!installed).then_some(m.expires_at.as_str()),
        ctx,
    )?;
    let recorded = installed_of(&m.name);
    if installed {
        if recorded != Some(m.version) {
            return Err(ModelRejection::NotRecordedVersion {
                name: m.name,
                found: m.version,
                recorded,
            });
        }
    } else if let Some(installed) = recorded
        && m.version <= installed
    {
        return Err(ModelRejection::NotNewer {
            name: m.name,
            offered: m.version,
            installed,
        });
    }
    check_platform(&m.platform, &ctx.platform)?;
    let required = parse_version(&m.min_agent_version);
    let agent = parse_version(&ctx.agent_version);
    // An agent whose own version does not parse cannot show it is new enough.
    if agent.is_none() || agent < required {
        return Err(ModelRejection::AgentTooOld {
            required: m.min_agent_version,
            agent: ctx.agent_version.clone(),
        });
    }
    let total = m.total_bytes()?;
    if total > ctx.max_bundle_bytes {
        return Err(ModelRejection::TooLarge {
            total,
            limit: ctx.max_bundle_bytes,
        });
    }
    if !installed && total > ctx.free_disk_bytes {
        return Err(ModelRejection::NoDisk {
            total,
            free: ctx.free_disk_bytes,
        });
    }
    Ok(VerifiedManifest {
        manifest: m,
        signer: key,
        digest: crate::sha256_hex(&signed),
        total_bytes: total,
    })
}

fn check_platform(spec: &PlatformSpec, me: &Platform) -> Result<(), ModelRejection> {
    if !spec.backends.contains(&me.backend) {
        return Err(ModelRejection::Backend {
            allowed: spec.backends.iter().map(|b| b.to_string()).collect(),
            backend: me.backend.to_string(),
        });
    }
    if let Runtime::Tensorrt {
        module,
        trt_version,
    } = &spec.runtime
    {
        if me.module.as_deref() != Some(module.as_str()) {
            return Err(ModelRejection::TensorRtModule {
                wanted: module.clone(),
                device: me.module.clone(),
            });
        }
        if me.trt_version.as_deref() != Some(trt_version.as_str()) {
            return Err(ModelRejection::TensorRtVersion {
                wanted: trt_version.clone(),
                device: me.trt_version.clone(),
            });
        }
    }
    Ok(())
}

/// Why a staged bundle's files do not match its verified manifest; each names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory itself is not a plain directory.
    #[error("bundle directory {dir}: {reason}")]
    Directory {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// A listed file is absent.
    #[error("{path}: listed in the manifest, missing from the bundle")]
    Missing {
        /// The manifest path.
        path: String,
    },
    /// Something in the bundle the manifest does not list.
    #[error("{path}: in the bundle, not in the manifest")]
    Extra {
        /// Its path in the bundle.
        path: String,
    },
    /// A symbolic link (refused wherever it is: it could point out of the bundle).
    #[error("{path}: a symbolic link; bundles hold plain files only")]
    Symlink {
        /// Its path in the bundle.
        path: String,
    },
    /// Not a regular file (a device node, a FIFO, a directory where a file is listed).
    #[error("{path}: not a regular file")]
    NotRegular {
        /// Its path in the bundle.
        path: String,
    },
    /// A path the manifest should never have carried.
    #[error("{path}: unsafe path: {reason}")]
    UnsafePath {
        /// The manifest path.
        path: String,
        /// Why.
        reason: String,
    },
    /// Wrong size.
    #[error("{path}: {actual} bytes, the manifest says {expected}")]
    Size {
        /// The manifest path.
        path: String,
        /// From the manifest.
        expected: u64,
        /// On disk.
        actual: u64,
    },
    /// Wrong content.
    #[error("{path}: sha256 {actual}, the manifest says {expected}")]
    Hash {
        /// The manifest path.
        path: String,
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// Reading failed.
    #[error("{path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        reason: String,
    },
}

fn io_err(path: &str, e: std::io::Error) -> BundleError {
    BundleError::Io {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// Checks a staged bundle directory against its verified manifest: every listed file
/// present as a regular file (no symbolic link anywhere, leaf or directory), its exact
/// size and SHA-256, and nothing else in the directory tree. Reads each file once,
/// streaming, never more than its listed size plus one byte.
///
/// The directory is the agent's own staging directory; a concurrent writer there could
/// still swap a file between this check and its use, so the agent loads from the checked
/// directory only after moving it out of reach of the download.
pub fn verify_bundle_files(dir: &Path, v: &VerifiedManifest) -> Result<(), BundleError> {
    check_bundle_dir(dir, &v.manifest.files)
}

/// The check of [`verify_bundle_files`] against a list of files rather than a verified
/// manifest: for the gateway, which checks its own bundle directory against the manifest
/// it is about to announce (`chimera model publish --serve`) and holds no trust metadata.
/// Devices check what they staged with [`verify_bundle_files`], so that only a manifest
/// that verified can vouch for files.
pub fn check_bundle_dir(dir: &Path, files: &[BundleFile]) -> Result<(), BundleError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|e| BundleError::Directory {
        dir: dir.to_path_buf(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(BundleError::Directory {
            dir: dir.to_path_buf(),
            reason: "not a directory (or a symbolic link)".into(),
        });
    }
    let listed: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in files {
        check_file_path(&f.path).map_err(|reason| BundleError::UnsafePath {
            path: f.path.clone(),
            reason,
        })?;
    }
    // Directories that hold listed files: the only ones the walk enters.
    let mut dirs = BTreeSet::new();
    for p in &listed {
        let mut acc = String::new();
        let parts: Vec<&str> = p.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !acc.is_empty() {
                acc.push('/');
            }
            acc.push_str(part);
            dirs.insert(acc.clone());
        }
    }
    walk(dir, "", &listed, &dirs)?;
    for f in files {
        check_file(dir, f)?;
    }
    Ok(())
}

/// Lists `dir` (the bundle path `rel`), refusing symbolic links, special files and
/// anything not listed; enters only directories that hold listed files (so the depth is
/// bounded by the manifest's paths).
fn walk(
    dir: &Path,
    rel: &str,
    listed: &BTreeSet<&str>,
    dirs: &BTreeSet<String>,
) -> Result<(), BundleError> {
    let shown = if rel.is_empty() { "." } else { rel };
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(shown, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(shown, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
        if ft.is_symlink() {
            return Err(BundleError::Symlink { path });
        }
        if ft.is_dir() && dirs.contains(&path) {
            walk(&entry.path(), &path, listed, dirs)?;
        } else if !listed.contains(path.as_str()) {
            return Err(BundleError::Extra { path });
        } else if !ft.is_file() {
            return Err(BundleError::NotRegular { path });
        }
    }
    Ok(())
}

/// Opens a listed file without following a symbolic link at any level, checks its size
/// and hash.
fn check_file(dir: &Path, f: &BundleFile) -> Result<(), BundleError> {
    use sha2::Digest;
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;

    let mut full = dir.to_path_buf();
    for c in Path::new(&f.path).components() {
        match c {
            Component::Normal(part) => full.push(part),
            _ => {
                return Err(BundleError::UnsafePath {
                    path: f.path.clone(),
                    reason: "not a plain relative path".into(),
                });
            }
        }
        match std::fs::symlink_metadata(&full) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(BundleError::Symlink {
                    path: f.path.clone(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BundleError::Missing {
                    path: f.path.clone(),
                });
            }
            Err(e) => return Err(io_err(&f.path, e)),
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&full)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => BundleError::Symlink {
                path: f.path.clone(),
            },
            _ if e.kind() == std::io::ErrorKind::NotFound => BundleError::Missing {
                path: f.path.clone(),
            },
            _ => io_err(&f.path, e),
        })?;
    let meta = file.metadata().map_err(|e| io_err(&f.path, e))?;
    if !meta.is_file() {
        return Err(BundleError::NotRegular {
            path: f.path.clone(),
        });
    }
    if meta.len() != f.size {
        return Err(BundleError::Size {
            path: f.path.clone(),
            expected: f.size,
            actual: meta.len(),
        });
    }
    let mut hasher = sha2::Sha256::new();
    let mut read = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut limited = file.take(f.size.saturating_add(1));
    loop {
        let n = limited.read(&mut buf).map_err(|e| io_err(&f.path, e))?;
        if n == 0 {
            break;
        }
        read += n as u64;
        hasher.update(&buf[..n]);
    }
    if read != f.size {
        // It changed size while being read.
        return Err(BundleError::Size {
            path: f.path.clone(),
            expected: f.size,
            actual: read,
        });
    }
    let actual: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if actual != f.sha256 {
        return Err(BundleError::Hash {
            path: f.path.clone(),
            expected: f.sha256.clone(),
            actual,
        });
    }
    Ok(())
}

/// The files of a bundle directory as a manifest lists them (sorted by path): each
/// regular file's size and SHA-256. Refuses symbolic links, special files, unsafe names
/// and more than [`MAX_FILES`] files. Used by `chimera model pack`.
pub fn scan_bundle(dir: &Path) -> Result<Vec<BundleFile>, BundleError> {
    let mut out = Vec::new();
    scan(dir, "", 0, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn scan(dir: &Path, rel: &str, depth: usize, out: &mut Vec<BundleFile>) -> Result<(), BundleError> {
    use sha2::Digest;
    let shown = if rel.is_empty() { "." } else { rel };
    let entries = std::fs::read_dir(dir).map_err(|e| io_err(shown, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_err(shown, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        check_file_path(&path).map_err(|reason| BundleError::UnsafePath {
            path: path.clone(),
            reason,
        })?;
        let ft = entry.file_type().map_err(|e| io_err(&path, e))?;
        if ft.is_symlink() {
            return Err(BundleError::Symlink { path });
        }
        if ft.is_dir() {
            if depth + 1 >= MAX_PATH_DEPTH {
                return Err(BundleError::UnsafePath {
                    path,
                    reason: format!("deeper than {MAX_PATH_DEPTH} levels"),
                });
            }
            scan(&entry.path(), &path, depth + 1, out)?;
            continue;
        }
        if !ft.is_file() {
            return Err(BundleError::NotRegular { path });
        }
        if out.len() >= MAX_FILES {
            return Err(BundleError::Extra { path });
        }
        let mut file = std::fs::File::open(entry.path()).map_err(|e| io_err(&path, e))?;
        let mut hasher = sha2::Sha256::new();
        let size = std::io::copy(&mut file, &mut hasher).map_err(|e| io_err(&path, e))?;
        let sha256 = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        out.push(BundleFile { path, sha256, size });
    }
    Ok(())
}
