//! `chimera model pack|sign|rollback`: describe a model bundle directory in a manifest, sign
//! it (`aegis-model-v1`), write a signed rollback order. Offline; `publish` and `status` are
//! in [`crate::model_gateway`].

use std::path::{Path, PathBuf};

use aegis_config::{BackendKind, ModelKindConfig};
use aegis_ota::model::{
    BundleFile, DType, HealthCheck, MANIFEST_TYPE, ModelManifest, ModelTarget, OutputBound,
    PlatformSpec, Runtime, Statistic, TensorSpec, scan_bundle, sign_manifest,
};
use aegis_ota::model_rollback::{ROLLBACK_TYPE, RollbackOrder, sign_rollback_order};
use aegis_ota::sign::SecretKey;
use clap::Subcommand;

use crate::{now_rfc3339, read_file};

/// Longest validity of a rollback order.
const MAX_ORDER_VALIDITY_S: i64 = 366 * 86_400;

/// `chimera model …`.
#[derive(Subcommand)]
pub(crate) enum ModelCommand {
    /// Write the (unsigned) manifest of a bundle directory: every file's path, size and
    /// SHA-256, and what the options say. Refuses symbolic links, special files and
    /// unsafe names in DIR, and a manifest devices would refuse.
    Pack(Box<PackArgs>),
    /// Sign a manifest with an issuer key: appends the ```signature block
    /// (context `aegis-model-v1`).
    Sign {
        /// The manifest (JSON).
        manifest: PathBuf,
        /// Secret key file.
        #[arg(long)]
        key: PathBuf,
        /// Output (default: MANIFEST with `.signed` appended); never overwritten.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Write a signed rollback order (context `aegis-model-v1`): devices whose active
    /// version of NAME is FROM, with TO kept as the previous version, go back to TO and
    /// delete FROM. It applies once per device (FROM never comes back) and expires.
    Rollback(Box<RollbackArgs>),
    /// Announce a signed manifest to a device or a group (retained, QoS 1, on its models
    /// topic; `--canary N`: N% of the group, each on its own topic), with the URL of its
    /// files (`--url`) or serving them over MQTT in chunks (`--serve DIR`, after checking
    /// that DIR holds exactly the manifest's files).
    Publish(Box<crate::model_gateway::PublishArgs>),
    /// Per enrolled device: the models its retained status reports, the transfer under
    /// way, what was announced to it from here, and its last model receipt (verified with
    /// its enrolled key; one that does not verify is shown as such, never trusted).
    Status {
        /// Seconds to collect retained statuses and receipts.
        #[arg(long, default_value_t = 1.0)]
        wait: f64,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gw: crate::GatewayArgs,
    },
}

#[derive(clap::Args, Debug)]
pub(crate) struct RollbackArgs {
    /// Model name.
    #[arg(long)]
    name: String,
    /// The version to leave (active on the devices).
    #[arg(long)]
    from: u64,
    /// The version to return to (the previous version on the devices).
    #[arg(long)]
    to: u64,
    /// Target device ids.
    #[arg(long, required_unless_present = "group")]
    device: Vec<String>,
    /// Target groups.
    #[arg(long)]
    group: Vec<String>,
    /// Issuer name (its trust metadata entry needs `models: true`).
    #[arg(long, default_value = "fleet-gw-1")]
    issuer: String,
    /// The issuer's secret key file.
    #[arg(long)]
    key: PathBuf,
    /// Validity from now: a number and a unit, `s`, `m`, `h` or `d` (`7d`, `12h`).
    #[arg(long, default_value = "7d", value_parser = parse_validity)]
    expires_in: i64,
    /// Why (audit trail and receipts): at most 512 bytes, one line.
    #[arg(long, default_value = "")]
    reason: String,
    /// The signed order to write; never overwritten.
    #[arg(long)]
    out: PathBuf,
}

/// `7d`, `12h`, `30m`, `90s` → seconds (1 s to 366 days).
fn parse_validity(s: &str) -> Result<i64, String> {
    crate::parse_span_s(s, MAX_ORDER_VALIDITY_S)
}

#[derive(clap::Args, Debug)]
pub(crate) struct PackArgs {
    /// The bundle directory.
    dir: PathBuf,
    /// Model name (1 to 64 of `[a-z0-9_-]`).
    #[arg(long)]
    name: String,
    /// Version (strictly increasing per name).
    #[arg(long)]
    version: u64,
    /// Model kind.
    #[arg(long, value_parser = parse_kind)]
    kind: ModelKindConfig,
    /// Issuer name (its trust metadata entry needs `models: true`).
    #[arg(long, default_value = "fleet-gw-1")]
    issuer: String,
    /// Target device ids.
    #[arg(long, required_unless_present = "group")]
    device: Vec<String>,
    /// Target groups.
    #[arg(long)]
    group: Vec<String>,
    /// Validity of the announcement in days from now.
    #[arg(long, default_value_t = 7)]
    days: u32,
    /// The model file, relative to DIR.
    #[arg(long)]
    model: String,
    /// The labels file, relative to DIR.
    #[arg(long)]
    labels: Option<String>,
    /// An input tensor: NAME:DTYPE:DIMS (`images:float32:1x3x640x640`, `-1` dynamic).
    #[arg(long = "input", required = true, value_parser = parse_tensor)]
    inputs: Vec<TensorSpec>,
    /// An output tensor: NAME:DTYPE:DIMS.
    #[arg(long = "output", required = true, value_parser = parse_tensor)]
    outputs: Vec<TensorSpec>,
    /// Backends it may run on.
    #[arg(long = "backend", value_delimiter = ',', value_parser = parse_backend, default_value = "cpu,cuda,jetson")]
    backends: Vec<BackendKind>,
    /// For a TensorRT engine: the module it was built for (with --trt-version).
    #[arg(long, requires = "trt_version")]
    trt_module: Option<String>,
    /// For a TensorRT engine: the TensorRT version it was built with.
    #[arg(long, requires = "trt_module")]
    trt_version: Option<String>,
    /// The oldest agent that may install it (default: this release).
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    min_agent_version: String,
    /// The health check's reference input, relative to DIR.
    #[arg(long)]
    reference_input: String,
    /// A health bound: OUTPUT:min|max|mean:LOW:HIGH (`output0:max:0.5:1`).
    #[arg(long = "expect", required = true, value_parser = parse_bound)]
    expect: Vec<OutputBound>,
    /// The manifest to write; never overwritten.
    #[arg(long)]
    out: PathBuf,
}

fn parse_kind(s: &str) -> Result<ModelKindConfig, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: one of selfie_segmentation, nudenet, yolov8"))
}

fn parse_backend(s: &str) -> Result<BackendKind, String> {
    serde_json::from_value(serde_json::Value::String(s.into()))
        .map_err(|_| format!("{s:?}: one of cpu, cuda, jetson"))
}

fn parse_tensor(s: &str) -> Result<TensorSpec, String> {
    let mut it = s.rsplitn(3, ':');
    let (Some(dims), Some(dtype), Some(name)) = (it.next(), it.next(), it.next()) else {
        return Err(format!("{s:?} is not NAME:DTYPE:DIMS"));
    };
    let dtype: DType =
        serde_json::from_value(serde_json::Value::String(dtype.into())).map_err(|_| {
            format!(
                "{s:?}: dtype {dtype:?} is one of float32, float16, uint8, int8, int32, int64, bool"
            )
        })?;
    let shape = dims
        .split('x')
        .map(|d| {
            d.parse::<i64>()
                .map_err(|e| format!("{s:?}: dimension {d:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(TensorSpec {
        name: name.into(),
        dtype,
        shape,
    })
}

fn parse_bound(s: &str) -> Result<OutputBound, String> {
    let mut it = s.rsplitn(4, ':');
    let (Some(max), Some(min), Some(stat), Some(output)) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(format!("{s:?} is not OUTPUT:STATISTIC:LOW:HIGH"));
    };
    let statistic: Statistic = serde_json::from_value(serde_json::Value::String(stat.into()))
        .map_err(|_| format!("{s:?}: statistic {stat:?} is one of min, max, mean"))?;
    let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{s:?}: {v:?}: {e}"));
    Ok(OutputBound {
        output: output.into(),
        statistic,
        min: num(min)?,
        max: num(max)?,
    })
}

/// Writes `bytes` to a new file (never replacing one); the error names it.
pub(crate) fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", path.display()))?;
    f.write_all(bytes)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))
}

/// `chimera model …`.
pub(crate) fn model(what: ModelCommand) -> anyhow::Result<()> {
    match what {
        ModelCommand::Pack(args) => pack(*args),
        ModelCommand::Publish(args) => crate::model_gateway::publish(*args),
        ModelCommand::Status { wait, json, gw } => crate::model_gateway::status(
            std::time::Duration::from_secs_f64(wait.max(0.1)),
            json,
            &gw,
        ),
        ModelCommand::Sign { manifest, key, out } => {
            let key = SecretKey::read(&key)?;
            let json = read_file(&manifest)?;
            if aegis_ota::model::split_manifest(&json).is_ok() {
                anyhow::bail!("{} is already signed", manifest.display());
            }
            let signed = sign_manifest(&json, &key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", manifest.display()))?;
            let out = out.unwrap_or_else(|| {
                let mut s = manifest.clone().into_os_string();
                s.push(".signed");
                PathBuf::from(s)
            });
            write_new(&out, &signed)?;
            println!("{} signed by {}", out.display(), key.public().id());
            Ok(())
        }
        ModelCommand::Rollback(args) => rollback(*args),
    }
}

fn rollback(a: RollbackArgs) -> anyhow::Result<()> {
    let key = SecretKey::read(&a.key)?;
    let now = aegis_ota::maml::now_s();
    let order = RollbackOrder {
        kind_tag: ROLLBACK_TYPE.into(),
        name: a.name,
        from_version: a.from,
        to_version: a.to,
        issuer: a.issuer,
        target: ModelTarget {
            devices: a.device,
            groups: a.group,
        },
        issued_at: aegis_ota::maml::format_time(now),
        expires_at: aegis_ota::maml::format_time(now + a.expires_in),
        reason: a.reason,
    };
    // Validated before signing: devices would refuse what the format refuses.
    let signed = sign_rollback_order(&order.to_json(), &key).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_new(&a.out, &signed)?;
    println!(
        "{}: rollback order for {} from version {} to version {}, signed by {}, expires {}",
        a.out.display(),
        order.name,
        order.from_version,
        order.to_version,
        key.public().id(),
        order.expires_at
    );
    Ok(())
}

fn pack(a: PackArgs) -> anyhow::Result<()> {
    let files: Vec<BundleFile> =
        scan_bundle(&a.dir).map_err(|e| anyhow::anyhow!("{}: {e}", a.dir.display()))?;
    let runtime = match (a.trt_module, a.trt_version) {
        (Some(module), Some(trt_version)) => Runtime::Tensorrt {
            module,
            trt_version,
        },
        _ => Runtime::Onnx {},
    };
    let manifest = ModelManifest {
        kind_tag: MANIFEST_TYPE.into(),
        name: a.name,
        version: a.version,
        issuer: a.issuer,
        target: ModelTarget {
            devices: a.device,
            groups: a.group,
        },
        issued_at: now_rfc3339(0),
        expires_at: now_rfc3339(i64::from(a.days.max(1))),
        kind: a.kind,
        model: a.model,
        labels: a.labels,
        inputs: a.inputs,
        outputs: a.outputs,
        platform: PlatformSpec {
            backends: a.backends,
            runtime,
        },
        min_agent_version: a.min_agent_version,
        health: HealthCheck {
            reference_input: a.reference_input,
            expected: a.expect,
        },
        files,
    };
    let json = manifest.to_json()?;
    // Write only what devices would accept as a manifest.
    ModelManifest::from_json(&json).map_err(|e| anyhow::anyhow!("{e}"))?;
    write_new(&a.out, &json)?;
    let total: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!(
        "{}: {} {} version {}, {} files, {total} bytes (sign it with `chimera model sign`)",
        a.out.display(),
        manifest.name,
        serde_json::to_value(manifest.kind)?
            .as_str()
            .unwrap_or("model"),
        manifest.version,
        manifest.files.len()
    );
    Ok(())
}
