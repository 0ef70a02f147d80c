//! From a verified, installed bundle to a model the registry can load, and the manifest's
//! health check on the loaded model (its reference input through the real session, each
//! output bound checked) before any stream uses it.

use std::path::Path;

use aegis_config::ModelConfig;
use aegis_models::registry::LoadedModel;
use aegis_ota::model::{DType, ModelManifest, Statistic};

/// Smallest and largest square input side the stages accept (as `inference.models`).
const INPUT_SIDES: std::ops::RangeInclusive<i64> = 32..=2048;

/// The model entry for `manifest`'s bundle installed in `dir`: the registry loads it like a
/// configured model, its model file pinned to the manifest's SHA-256.
pub fn model_config(manifest: &ModelManifest, dir: &Path) -> Result<ModelConfig, String> {
    let version = u32::try_from(manifest.version).map_err(|_| {
        format!(
            "version {} does not fit the registry's 32-bit versions",
            manifest.version
        )
    })?;
    let input = manifest
        .inputs
        .first()
        .ok_or("the manifest lists no input")?;
    let side = match input.shape.as_slice() {
        [b, 3, h, w] if (*b == -1 || *b == 1) && h == w && INPUT_SIDES.contains(h) => *h,
        other => {
            return Err(format!(
                "input {:?} has shape {other:?}; the stages take [-1 or 1, 3, S, S] with S from \
                 {} to {}",
                input.name,
                INPUT_SIDES.start(),
                INPUT_SIDES.end()
            ));
        }
    };
    if input.dtype != DType::Float32 {
        return Err(format!(
            "input {:?} is {:?}; the stages feed float32",
            input.name, input.dtype
        ));
    }
    let sha256 = manifest
        .files
        .iter()
        .find(|f| f.path == manifest.model)
        .map(|f| f.sha256.clone())
        .ok_or_else(|| format!("the model file {:?} is not listed", manifest.model))?;
    Ok(ModelConfig {
        name: manifest.name.clone(),
        version,
        kind: manifest.kind,
        file: dir.join(&manifest.model),
        sha256: Some(sha256),
        input_size: Some(side as u32),
        labels: manifest.labels.as_ref().map(|l| dir.join(l)),
    })
}

/// What the health check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthReport {
    /// Each bound: (output, statistic, value seen).
    pub seen: Vec<(String, &'static str, f64)>,
}

/// Runs the manifest's reference input (raw little-endian float32 of the first input,
/// batch 1) through `model` and checks every bound. The runtime hands back the model's
/// first output, so bounds must name it.
pub fn health_check(
    model: &LoadedModel,
    manifest: &ModelManifest,
    dir: &Path,
) -> Result<HealthReport, String> {
    let input = manifest
        .inputs
        .first()
        .ok_or("the manifest lists no input")?;
    let elements: usize = input
        .shape
        .iter()
        .map(|&d| if d < 0 { 1 } else { d as usize })
        .product();
    let path = dir.join(&manifest.health.reference_input);
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("reference input {}: {e}", manifest.health.reference_input))?;
    if bytes.len() != elements * 4 {
        return Err(format!(
            "reference input {} has {} bytes; input {:?} {:?} as float32 needs {}",
            manifest.health.reference_input,
            bytes.len(),
            input.name,
            input.shape,
            elements * 4
        ));
    }
    let first = manifest
        .outputs
        .first()
        .ok_or("the manifest lists no output")?;
    let mut client = model.client();
    let buf = client.input(elements);
    for (v, c) in buf.iter_mut().zip(bytes.chunks_exact(4)) {
        *v = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    let (out, _shape) = client
        .run()
        .map_err(|e| format!("running the reference input: {e}"))?;
    if out.is_empty() {
        return Err("the model returned an empty output".into());
    }
    if let Some(i) = out.iter().position(|v| v.is_nan()) {
        return Err(format!("output {:?} holds NaN (element {i})", first.name));
    }
    let mut seen = Vec::new();
    for b in &manifest.health.expected {
        if b.output != first.name {
            return Err(format!(
                "a bound names output {:?}; the runtime reads the first output, {:?}",
                b.output, first.name
            ));
        }
        let (name, value) = match b.statistic {
            Statistic::Min => (
                "min",
                out.iter().copied().fold(f32::INFINITY, f32::min) as f64,
            ),
            Statistic::Max => (
                "max",
                out.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64,
            ),
            Statistic::Mean => (
                "mean",
                out.iter().map(|&v| v as f64).sum::<f64>() / out.len() as f64,
            ),
        };
        if !value.is_finite() || value < b.min || value > b.max {
            return Err(format!(
                "health check: {name} of {:?} is {value}, expected {} to {}",
                b.output, b.min, b.max
            ));
        }
        seen.push((b.output.clone(), name, value));
    }
    Ok(HealthReport { seen })
}
