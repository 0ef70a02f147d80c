//! The models a device runs, loaded once at start-up: each file's SHA-256 checked, its
//! session created on the configured execution provider, its input and output shapes checked
//! against what the stage expects (with one warm-up run), and its [`Batcher`] started, so the
//! pipeline never starts half-configured and every stream's stage shares one session.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;

use crate::batch::{BatchClient, Batcher};
use crate::engine::{EngineSettings, OrtSession};

/// What a model is, which fixes its pre- and post-processing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// MediaPipe selfie segmentation (converted to ONNX): RGB in, person probability out.
    SelfieSegmentation,
    /// NudeNet (YOLOv8n, 18 built-in classes, BGR, padded bottom-right).
    NudeNet,
    /// Any Ultralytics YOLOv8-style detector: RGB, centred letterbox, labels from a file.
    Yolov8,
}

impl ModelKind {
    /// The config name.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::SelfieSegmentation => "selfie_segmentation",
            ModelKind::NudeNet => "nudenet",
            ModelKind::Yolov8 => "yolov8",
        }
    }
}

impl From<aegis_config::ModelKindConfig> for ModelKind {
    fn from(kind: aegis_config::ModelKindConfig) -> Self {
        use aegis_config::ModelKindConfig as K;
        match kind {
            K::SelfieSegmentation => ModelKind::SelfieSegmentation,
            K::Nudenet => ModelKind::NudeNet,
            K::Yolov8 => ModelKind::Yolov8,
        }
    }
}

/// A model to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Registry name (what stages and workflows refer to).
    pub name: String,
    /// Version within the name.
    pub version: u32,
    /// Kind.
    pub kind: ModelKind,
    /// The ONNX file.
    pub file: PathBuf,
    /// Expected lower-case hex SHA-256 of the file, if pinned.
    pub sha256: Option<String>,
    /// Square input side in pixels.
    pub input_size: usize,
    /// Class names, one per line (YOLOv8 detectors).
    pub labels: Option<PathBuf>,
}

/// A model failed to load; names the model and the problem.
#[derive(Debug, thiserror::Error)]
#[error("model {name} ({file}): {reason}")]
pub struct RegistryError {
    /// Registry name.
    pub name: String,
    /// The file.
    pub file: String,
    /// What is wrong.
    pub reason: String,
}

/// How requests of several streams are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most requests per inference call.
    pub max_batch: usize,
    /// How long the first request of a batch waits for the other streams.
    pub window: Duration,
    /// Sessions of the model, each with its own batch thread; clients are spread over
    /// them in turn.
    pub sessions: usize,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_batch: 8,
            window: Duration::from_millis(4),
            sessions: 1,
        }
    }
}

/// A loaded model.
pub struct LoadedModel {
    /// What was asked for.
    pub spec: ModelSpec,
    /// Class names (detectors), interned.
    pub labels: Vec<&'static str>,
    /// The execution provider that runs it.
    pub provider: &'static str,
    /// The file's SHA-256 as read.
    pub sha256: String,
    /// The first output's shape for one input (batch dimension 1), from the warm-up run.
    pub output_shape: Vec<usize>,
    /// What it was loaded with (a switch reuses it only with the same).
    batch: BatchSettings,
    /// One per session (at least one).
    batchers: Vec<Batcher>,
    /// The session the next client goes to.
    next: std::sync::atomic::AtomicUsize,
}

impl LoadedModel {
    /// A handle for one stream's stage, on the sessions in turn.
    pub fn client(&self) -> BatchClient {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.batchers[i % self.batchers.len()].client()
    }
    /// Inference calls and requests so far, all sessions together (the slowest call is
    /// the slowest of any).
    pub fn stats(&self) -> crate::batch::BatchStats {
        self.session_stats()
            .into_iter()
            .fold(crate::batch::BatchStats::default(), |a, b| {
                crate::batch::BatchStats {
                    batches: a.batches + b.batches,
                    items: a.items + b.items,
                    engine: a.engine + b.engine,
                    queued: a.queued + b.queued,
                    slowest: a.slowest.max(b.slowest),
                }
            })
    }
    /// Each session's counters.
    pub fn session_stats(&self) -> Vec<crate::batch::BatchStats> {
        self.batchers.iter().map(Batcher::stats).collect()
    }
    /// Sessions of the model.
    pub fn sessions(&self) -> usize {
        self.batchers.len()
    }

    /// Whether its sessions replay CUDA graphs (asked for, and taken by the provider).
    pub fn cuda_graph(&self) -> bool {
        self.batchers.iter().all(Batcher::cuda_graph)
    }
}

/// The loaded models by name.
#[derive(Default)]
pub struct Registry {
    models: HashMap<String, Arc<LoadedModel>>,
}

/// Lower-case hex SHA-256 of a file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn read_labels(path: &Path) -> Result<Vec<&'static str>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read labels file {}: {e}", path.display()))?;
    let labels: Vec<&'static str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(aegis_hal::analytics::intern)
        .collect();
    if labels.is_empty() {
        return Err(format!("labels file {} has no labels", path.display()));
    }
    Ok(labels)
}

/// Loads one model: checksum, session, shapes, warm-up.
pub fn load(
    settings: &EngineSettings,
    spec: &ModelSpec,
    batch: BatchSettings,
) -> Result<LoadedModel, RegistryError> {
    let fail = |reason: String| RegistryError {
        name: spec.name.clone(),
        file: spec.file.display().to_string(),
        reason,
    };
    let sha256 = file_sha256(&spec.file).map_err(|e| {
        fail(match e.kind() {
            std::io::ErrorKind::NotFound => "file not found (run `just models`)".into(),
            _ => format!("cannot read: {e}"),
        })
    })?;
    if let Some(want) = &spec.sha256
        && !want.eq_ignore_ascii_case(&sha256)
    {
        return Err(fail(format!(
            "SHA-256 mismatch: the file has {sha256}, the config pins {want}; refusing it"
        )));
    }
    let labels: Vec<&'static str> = match spec.kind {
        ModelKind::SelfieSegmentation => Vec::new(),
        ModelKind::NudeNet => crate::nudenet::CLASSES
            .iter()
            .map(|c| aegis_hal::analytics::intern(c))
            .collect(),
        ModelKind::Yolov8 => match &spec.labels {
            Some(p) => read_labels(p).map_err(fail)?,
            None => return Err(fail("a yolov8 model needs a labels file".into())),
        },
    };
    let mut batchers = Vec::with_capacity(batch.sessions.max(1));
    let mut first: Option<(&'static str, Vec<usize>)> = None;
    for _ in 0..batch.sessions.max(1) {
        let (batcher, provider, shape) = start_session(settings, spec, batch).map_err(fail)?;
        match &first {
            None => first = Some((provider, shape)),
            Some(f) if *f != (provider, shape.clone()) => {
                return Err(fail(format!(
                    "its sessions differ: {} with output {:?}, then {provider} with {shape:?}",
                    f.0, f.1
                )));
            }
            Some(_) => {}
        }
        batchers.push(batcher);
        // A GPU model that fell back to the CPU provider keeps one session: its thread
        // pool already has every core.
        let fell_back = settings.provider != crate::engine::Provider::Cpu
            && first.as_ref().is_some_and(|f| f.0 == "cpu");
        if fell_back {
            break;
        }
    }
    let (provider, output_shape) = first.expect("at least one session");
    let shape = &output_shape;
    let s = spec.input_size;
    let shape_ok = match spec.kind {
        ModelKind::SelfieSegmentation => {
            shape.len() == 4 && shape[1..].iter().product::<usize>() == s * s
        }
        ModelKind::NudeNet | ModelKind::Yolov8 => shape.len() == 3 && shape[1] == 4 + labels.len(),
    };
    if !shape_ok {
        let want = match spec.kind {
            ModelKind::SelfieSegmentation => format!("[1, 1, {s}, {s}]"),
            _ => format!("[1, 4 + {} classes, N]", labels.len()),
        };
        return Err(fail(format!(
            "output shape {shape:?} does not fit a {} model (expected {want})",
            spec.kind.as_str()
        )));
    }
    Ok(LoadedModel {
        spec: spec.clone(),
        labels,
        provider,
        sha256,
        output_shape,
        batch,
        batchers,
        next: std::sync::atomic::AtomicUsize::new(0),
    })
}

/// Opens one session of `spec`, starts its batch thread and warms it up: the first run
/// allocates the runtime's arenas (and on TensorRT builds the engine, reported while it
/// runs); it also gives the output shape for one input.
fn start_session(
    settings: &EngineSettings,
    spec: &ModelSpec,
    batch: BatchSettings,
) -> Result<(Batcher, &'static str, Vec<usize>), String> {
    let s = spec.input_size;
    let item = [3, s, s];
    let session = OrtSession::open_batched(settings, &spec.file, batch.max_batch, Some(&item))
        .map_err(|e| e.to_string())?;
    let provider = session.provider();
    let batcher = Batcher::start(Box::new(session), &item, batch.max_batch, batch.window)
        .map_err(|e| e.to_string())?;
    let mut client = batcher.client();
    client.input(3 * s * s).fill(0.0);
    let build = match provider {
        "tensorrt" => crate::engine_build::EngineBuild::begin(&settings.provider, &spec.name),
        _ => None,
    };
    let warm = client.run().map_err(|e| e.to_string());
    drop(build);
    let shape = warm?.1.to_vec();
    drop(client);
    Ok((batcher, provider, shape))
}

impl Registry {
    /// Loads every model in `specs`; the first failure is returned and nothing is kept.
    pub fn load(
        settings: &EngineSettings,
        specs: &[ModelSpec],
        batch: BatchSettings,
    ) -> Result<Registry, RegistryError> {
        Self::load_reusing(settings, specs, batch, &Registry::default())
    }

    /// [`Registry::load`], sharing the models of `loaded` whose spec and batch settings are
    /// unchanged (a pipeline switch does not reload what both pipelines use). A shared model
    /// is the session that was verified when it was first loaded.
    pub fn load_reusing(
        settings: &EngineSettings,
        specs: &[ModelSpec],
        batch: BatchSettings,
        loaded: &Registry,
    ) -> Result<Registry, RegistryError> {
        let mut models = HashMap::new();
        for spec in specs {
            if let Some(m) = loaded
                .models
                .get(&spec.name)
                .filter(|m| &m.spec == spec && m.batch == batch)
            {
                models.insert(spec.name.clone(), m.clone());
                continue;
            }
            let m = load(settings, spec, batch)?;
            tracing::info!(
                model = %spec.name,
                version = spec.version,
                provider = m.provider,
                sha256 = %m.sha256,
                "model loaded"
            );
            models.insert(spec.name.clone(), Arc::new(m));
        }
        Ok(Registry { models })
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedModel>> {
        self.models.get(name).cloned()
    }

    /// Every loaded model.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<LoadedModel>> {
        self.models.values()
    }
}
