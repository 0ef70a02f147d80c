//! Inference engines. [`OrtSession`] runs ONNX models with ONNX Runtime, whose shared library
//! is loaded at run time from a configured path (the pip `onnxruntime` wheel in development
//! and CI — `tools/fetch-models.sh` puts it next to the models — or JetPack's build on an
//! Orin). Nothing links against it, so every build runs on every host; a missing or wrong
//! library is one clear error naming the path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use crate::gpu_io::DeviceItem;
use crate::gpu_io::{GpuIo, SessionStream, session_stream};

/// Errors of the inference engine; each names the library or model.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The ONNX Runtime library could not be loaded.
    #[error(
        "cannot load ONNX Runtime from {path}: {reason} (run `just models`, or point the engine at JetPack's libonnxruntime.so)"
    )]
    Runtime {
        /// The library path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The model could not be loaded (missing, corrupt, wrong format).
    #[error("cannot load model {path}: {reason}")]
    Model {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Inference failed (wrong input shape, runtime error).
    #[error("running {path}: {reason}")]
    Run {
        /// The model file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Something that runs one model: a float tensor in, a float tensor out.
pub trait InferenceEngine: Send {
    /// Runs the model on `input` of `shape` (NCHW), writing the first output into `out`
    /// (resized as needed, so a reused `Vec` stops allocating) and returning its shape.
    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, EngineError>;
    /// The model's declared input shape; `-1` marks a dynamic dimension (e.g. the batch).
    fn input_shape(&self) -> &[i64];
    /// The model file (for error messages).
    fn model(&self) -> &Path;
    /// Whether every call replays a CUDA graph captured at load.
    fn cuda_graph(&self) -> bool {
        false
    }
    /// Whether [`run_device`](Self::run_device) works: the session runs on a GPU provider
    /// and binds device buffers.
    fn on_device(&self) -> bool {
        false
    }
    /// Whether the engine runs on a GPU (with or without device buffers): a [`Batcher`]
    /// then runs every call at one batch size, padded (see `batch.rs`).
    ///
    /// [`Batcher`]: crate::batch::Batcher
    fn on_gpu(&self) -> bool {
        self.on_device()
    }
    /// Runs a batch whose inputs and outputs are in device memory (one [`DeviceItem`] per
    /// request, each input `item_shape`), writing every item's output into its buffer;
    /// returns one item's output shape (batch dimension 1). Returns when the outputs are
    /// written. `rows` (at least `items.len()`) is the batch size to run: the rows past the
    /// items are padding, so that a model whose callers come and go in varying numbers
    /// still sees one input shape.
    fn run_device(
        &mut self,
        items: &[DeviceItem],
        item_shape: &[usize],
        rows: usize,
    ) -> Result<Vec<usize>, EngineError> {
        let _ = (items, item_shape, rows);
        Err(EngineError::Run {
            path: self.model().to_path_buf(),
            reason: "this engine runs on the host: it takes no device buffers".into(),
        })
    }
}

/// Where ONNX Runtime runs a model (config `inference.provider`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Provider {
    /// The CPU execution provider (always present).
    #[default]
    Cpu,
    /// NVIDIA CUDA (needs an ONNX Runtime build with the CUDA provider, e.g. JetPack's).
    Cuda {
        /// CUDA device index.
        device: i32,
    },
    /// NVIDIA TensorRT through ONNX Runtime's TensorRT provider (CUDA as the provider for
    /// the nodes TensorRT does not take).
    TensorRt {
        /// CUDA device index.
        device: i32,
        /// Where built engines are cached (a cold build takes minutes on an Orin).
        engine_cache_dir: Option<PathBuf>,
        /// Build fp16 engines.
        fp16: bool,
        /// Build int8 engines (needs a calibration table).
        int8: bool,
        /// The int8 calibration table's file name.
        int8_calibration_table: Option<String>,
        /// A DLA core to run on (the GPU takes what the DLA cannot).
        dla_core: Option<u32>,
    },
}

impl Provider {
    /// Short name (`cpu`, `cuda`, `tensorrt`).
    pub fn name(&self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda { .. } => "cuda",
            Provider::TensorRt { .. } => "tensorrt",
        }
    }
}

/// How sessions are created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// The ONNX Runtime shared library.
    pub runtime: PathBuf,
    /// The wanted execution provider.
    pub provider: Provider,
    /// When the provider cannot be registered, run on the CPU (logged once per model)
    /// instead of refusing to start.
    pub fallback_to_cpu: bool,
    /// Intra-op threads per session (0 = all cores).
    pub threads: usize,
    /// On a GPU provider, capture each session's work as a CUDA graph and replay it (ONNX
    /// Runtime's `enable_cuda_graph` / `trt_cuda_graph_enable`): one launch per call instead
    /// of one per node. The session's input is then fixed to one shape (the batch at the
    /// batcher's `max_batch`, free dimensions at the stage's input) and one pair of device
    /// buffers that requests are copied into and out of (`gpu_io.rs`).
    pub cuda_graph: bool,
}

impl EngineSettings {
    /// CPU sessions from `runtime` with `threads` threads.
    pub fn cpu(runtime: &Path, threads: usize) -> Self {
        EngineSettings {
            runtime: runtime.to_path_buf(),
            provider: Provider::Cpu,
            fallback_to_cpu: false,
            threads,
            cuda_graph: false,
        }
    }
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// The `inference.runtime` value that asks for [`find_runtime`].
pub const AUTO_RUNTIME: &str = "auto";

/// Where ONNX Runtime is looked for with `inference.runtime: auto`, in order (globs in the
/// last component): the image's own (Yocto's aegis-onnxruntime, the Debian package), then
/// the builds a stock JetPack gets ONNX Runtime with TensorRT from — NVIDIA's Jetson wheels
/// (`pip install onnxruntime-gpu` from the Jetson AI Lab index, JetPack 6: Python 3.10) and a
/// source or jetson-containers build in /usr/local — then a distribution's.
pub const RUNTIME_CANDIDATES: [&str; 6] = [
    "/usr/lib/aegis/libonnxruntime.so",
    "/usr/local/lib/python3*/dist-packages/onnxruntime/capi/libonnxruntime.so*",
    "/usr/lib/python3/dist-packages/onnxruntime/capi/libonnxruntime.so*",
    "/usr/local/lib/libonnxruntime.so",
    "/usr/lib/aarch64-linux-gnu/libonnxruntime.so",
    "/usr/lib/x86_64-linux-gnu/libonnxruntime.so",
];

/// The first of [`RUNTIME_CANDIDATES`] under `root` (`/` on a device) that is a file; a
/// glob that matches several takes the last name in sort order (the highest version).
pub fn find_runtime(root: &Path) -> Option<PathBuf> {
    RUNTIME_CANDIDATES.iter().find_map(|c| {
        let rel = c.trim_start_matches('/');
        matches(root, Path::new(rel)).into_iter().last()
    })
}

/// Files under `root` matching `rel`, whose components may hold `*` (any characters).
fn matches(root: &Path, rel: &Path) -> Vec<PathBuf> {
    let mut found = vec![root.to_path_buf()];
    for part in rel.components() {
        let part = part.as_os_str().to_string_lossy();
        let mut next = Vec::new();
        for dir in &found {
            if !part.contains('*') {
                let p = dir.join(part.as_ref());
                if p.exists() {
                    next.push(p);
                }
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .filter(|e| glob_match(&part, &e.file_name().to_string_lossy()))
                .map(|e| e.path())
                .collect();
            names.sort();
            next.extend(names);
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found
}

/// `*`-only glob matching of one name.
fn glob_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let tail: Vec<&str> = parts.collect();
    for (i, p) in tail.iter().enumerate() {
        if i + 1 == tail.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// The library `configured` names: itself, or for [`AUTO_RUNTIME`] the first candidate
/// found (an error listing where it looked when none is).
pub fn resolve_runtime(configured: &Path) -> Result<PathBuf, EngineError> {
    if configured != Path::new(AUTO_RUNTIME) {
        return Ok(configured.to_path_buf());
    }
    find_runtime(Path::new("/")).ok_or_else(|| EngineError::Runtime {
        path: configured.to_path_buf(),
        reason: format!("no ONNX Runtime found in {}", RUNTIME_CANDIDATES.join(", ")),
    })
}

/// Loads ONNX Runtime once per process. A second call with another path reuses the first
/// library (the runtime can only be loaded once).
fn runtime(library: &Path) -> Result<&'static ort::environment::Environment, EngineError> {
    let library = &resolve_runtime(library)?;
    let r = RUNTIME.get_or_init(|| {
        if !library.exists() {
            return Err("file not found".to_string());
        }
        tracing::info!(library = %library.display(), "loading ONNX Runtime");
        ort::init_from(library)
            .map_err(|e| e.to_string())?
            .with_name("aegis")
            .build()
            .map_err(|e| e.to_string())
    });
    r.as_ref().map_err(|reason| EngineError::Runtime {
        path: library.to_path_buf(),
        reason: reason.clone(),
    })
}

/// The execution providers the agent can use (`cpu`, `cuda`, `tensorrt`) that the ONNX
/// Runtime at `library` was built with (`GetAvailableProviders`; built with is not yet
/// usable: the CUDA libraries are loaded when a session registers the provider).
pub fn runtime_providers(library: &Path) -> Result<Vec<&'static str>, EngineError> {
    use ort::ep::ExecutionProvider as _;
    runtime(library)?;
    let mut out = vec!["cpu"];
    if ort::ep::CUDA::is_available().unwrap_or(false) {
        out.push("cuda");
    }
    if ort::ep::TensorRT::is_available().unwrap_or(false) {
        out.push("tensorrt");
    }
    Ok(out)
}

/// An ONNX model in an ONNX Runtime session.
pub struct OrtSession {
    /// Device I/O when the session runs on a GPU provider (dropped before the session).
    gpu: Option<GpuIo>,
    session: ort::session::Session,
    model: PathBuf,
    input: String,
    output: String,
    input_shape: Vec<i64>,
    provider: &'static str,
    /// The context and stream a GPU provider runs on: dropped after the session.
    _stream: Option<SessionStream>,
}

/// TensorRT's optimisation profile for a model whose batch dimension is free: the input's
/// shapes at batch 1 (min) and at the batcher's largest batch (opt and max), as
/// `name:1x3x256x256`. Without it TensorRT builds an engine for the first batch size it sees
/// and builds again — minutes on an Orin — whenever a larger batch comes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TrtProfile {
    min: String,
    max: String,
}

impl TrtProfile {
    /// The profile for `input` declared as `dims`, or `None` when the batch is fixed or
    /// another dimension is free (TensorRT then takes the shapes at run time).
    fn new(input: &str, dims: &[i64], max_batch: usize) -> Option<TrtProfile> {
        let (&batch, rest) = dims.split_first()?;
        if batch >= 0 || rest.iter().any(|&d| d < 0) {
            return None;
        }
        let shape = |n: usize| {
            let mut s = format!("{input}:{n}");
            for d in rest {
                s.push_str(&format!("x{d}"));
            }
            s
        };
        Some(TrtProfile {
            min: shape(1),
            max: shape(max_batch.max(1)),
        })
    }
}

/// The one shape a CUDA-graph session runs: the free dimensions of the model's input fixed
/// (the batch at `rows`, the others at the stage's item shape) and the output that gives.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphShape {
    /// Free dimension name → size (`AddFreeDimensionOverrideByName`).
    overrides: Vec<(String, i64)>,
    /// The input's shape, batch first.
    input: Vec<usize>,
    /// The first output's shape for that input.
    output: Vec<usize>,
    /// The input's shape as the model declares it (`-1` free).
    declared: Vec<i64>,
    /// The input's name.
    input_name: String,
}

impl GraphShape {
    /// Reads `model`'s input from a CPU session and runs it once on zeros of the fixed
    /// shape for the output's; fails naming what cannot be fixed.
    fn probe(
        env: &ort::environment::Environment,
        model: &Path,
        max_batch: usize,
        item_shape: Option<&[usize]>,
    ) -> Result<GraphShape, String> {
        let mut probe = ort::session::Session::builder(env)
            .map_err(|e| e.to_string())?
            .with_intra_threads(1)
            .map_err(|e| e.to_string())?
            .commit_from_file(model)
            .map_err(|e| e.to_string())?;
        let first = probe.inputs().first().ok_or("the model has no inputs")?;
        let name = first.name().to_string();
        let ort::value::ValueType::Tensor {
            shape,
            dimension_symbols,
            ..
        } = first.dtype()
        else {
            return Err(format!("input {name} is not a tensor"));
        };
        let declared: Vec<i64> = shape.iter().copied().collect();
        let (overrides, input) = Self::fix(shape, dimension_symbols, max_batch, item_shape)
            .map_err(|e| format!("input {name}: {e}"))?;
        let n: usize = input.iter().product();
        let zeros = vec![0f32; n];
        let tensor = ort::value::TensorRef::from_array_view((input.clone(), zeros.as_slice()))
            .map_err(|e| e.to_string())?;
        let outputs = probe
            .run(ort::inputs![name.as_str() => tensor])
            .map_err(|e| e.to_string())?;
        let (out_shape, _) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| e.to_string())?;
        let output: Vec<usize> = out_shape.iter().map(|&d| d.max(0) as usize).collect();
        if output.first() != input.first() {
            return Err(format!(
                "output shape {output:?} has no batch dimension of {}",
                input[0]
            ));
        }
        Ok(GraphShape {
            overrides,
            input,
            output,
            declared,
            input_name: name,
        })
    }

    /// The overrides and the fixed shape for an input declared as `dims` (`-1` free) with
    /// `symbols` (names of the free ones): the batch at `max_batch`, the rest at `item`.
    #[allow(clippy::type_complexity)]
    fn fix(
        dims: &[i64],
        symbols: &[String],
        max_batch: usize,
        item: Option<&[usize]>,
    ) -> Result<(Vec<(String, i64)>, Vec<usize>), String> {
        if dims.is_empty() {
            return Err("a scalar input has no batch".into());
        }
        if let Some(item) = item
            && item.len() + 1 != dims.len()
        {
            return Err(format!(
                "declared {dims:?}, the stage gives {item:?} per item"
            ));
        }
        let mut overrides: Vec<(String, i64)> = Vec::new();
        let mut shape = Vec::with_capacity(dims.len());
        for (k, &d) in dims.iter().enumerate() {
            let want = match (k, item) {
                (0, _) => Some(max_batch.max(1)),
                (_, Some(item)) => Some(item[k - 1]),
                (_, None) => None,
            };
            if d >= 0 {
                if k > 0 && want.is_some_and(|w| w as i64 != d) {
                    return Err(format!("dimension {k} is {d}, the stage gives {want:?}"));
                }
                shape.push(d as usize);
                continue;
            }
            let sym = symbols.get(k).map(String::as_str).unwrap_or("");
            let Some(size) = want else {
                return Err(format!(
                    "dimension {k} ({sym:?}) is free and no size was given"
                ));
            };
            if sym.is_empty() {
                return Err(format!(
                    "dimension {k} is free and has no name to fix it by"
                ));
            }
            match overrides.iter().find(|(n, _)| n == sym) {
                Some((_, v)) if *v != size as i64 => {
                    return Err(format!("dimension {sym:?} would be both {v} and {size}"));
                }
                Some(_) => {}
                None => overrides.push((sym.to_string(), size as i64)),
            }
            shape.push(size);
        }
        Ok((overrides, shape))
    }
}

/// The provider's registration; a GPU provider runs on `stream` (a raw `CUstream`) when
/// one is given, TensorRT with `profile` when given.
fn ep_dispatch(
    p: &Provider,
    stream: Option<*mut ()>,
    profile: Option<&TrtProfile>,
    graph: bool,
) -> Option<ort::ep::ExecutionProviderDispatch> {
    match p {
        Provider::Cpu => None,
        Provider::Cuda { device } => {
            // Full FP32 (no TF32 in convolutions and matmuls, which the provider would
            // otherwise allow on Ampere and later): the GPU's masks and scores match the CPU
            // engine's to the equivalence test's bounds.
            //
            // cuDNN's heuristic algorithm choice, not the provider's default exhaustive search:
            // that benchmarks every convolution again for each new input shape, and the
            // batches across streams change the batch dimension call by call (1 to
            // max_batch), so every new size stalled for the search (p99 0.7-1.4 s at 8
            // streams on an H100).
            let mut cuda = ort::ep::CUDA::default()
                .with_device_id(*device)
                .with_tf32(false)
                .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic)
                .with_cuda_graph(graph);
            if let Some(s) = stream {
                // SAFETY: the stream belongs to the session's `GpuIo`, which lives as long as
                // the session (both are fields of one `OrtSession`).
                cuda = unsafe { cuda.with_compute_stream(s) };
            }
            Some(cuda.build().error_on_failure())
        }
        Provider::TensorRt {
            device,
            engine_cache_dir,
            fp16,
            int8,
            int8_calibration_table,
            dla_core,
        } => {
            let mut trt = ort::ep::TensorRT::default()
                .with_device_id(*device)
                .with_fp16(*fp16)
                .with_int8(*int8)
                .with_cuda_graph(graph);
            if let Some(core) = dla_core {
                trt = trt.with_dla(true).with_dla_core(*core);
            }
            if let Some(p) = profile {
                trt = trt
                    .with_profile_min_shapes(&p.min)
                    .with_profile_opt_shapes(&p.max)
                    .with_profile_max_shapes(&p.max);
            }
            if let Some(dir) = engine_cache_dir {
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            if let Some(table) = int8_calibration_table {
                trt = trt.with_int8_calibration_table_name(table);
            }
            if let Some(s) = stream {
                // SAFETY: as for CUDA above.
                trt = unsafe { trt.with_compute_stream(s) };
            }
            Some(trt.build().error_on_failure())
        }
    }
}

impl OrtSession {
    /// Loads `model` on the CPU with the runtime at `library`, using `threads` intra-op
    /// threads.
    pub fn open(library: &Path, model: &Path, threads: usize) -> Result<Self, EngineError> {
        Self::open_with(&EngineSettings::cpu(library, threads), model)
    }

    /// Loads `model` as `settings` say. When the provider cannot be registered (library
    /// built without it, no GPU) this fails naming the provider, or, with
    /// `fallback_to_cpu`, logs that and runs on the CPU ([`provider`](Self::provider) says
    /// which one runs).
    pub fn open_with(settings: &EngineSettings, model: &Path) -> Result<Self, EngineError> {
        Self::open_batched(settings, model, 1, None)
    }

    /// [`open_with`](Self::open_with) for batches of up to `max_batch` inputs of
    /// `item_shape` (one input without the batch; needed to fix free dimensions for
    /// [`EngineSettings::cuda_graph`]): on TensorRT, an engine built once for batches
    /// 1..=`max_batch` when the model's batch is free.
    pub fn open_batched(
        settings: &EngineSettings,
        model: &Path,
        max_batch: usize,
        item_shape: Option<&[usize]>,
    ) -> Result<Self, EngineError> {
        let env = runtime(&settings.runtime)?;
        let model_err = |reason: String| EngineError::Model {
            path: model.to_path_buf(),
            reason,
        };
        if !model.exists() {
            return Err(model_err("file not found (run `just models`)".into()));
        }
        let threads = match settings.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // A GPU provider runs on a stream of the session's own, in the device's primary
        // context, so that device buffers of the CUDA backend can be bound (gpu_io.rs).
        let device = match &settings.provider {
            Provider::Cpu => None,
            Provider::Cuda { device } | Provider::TensorRt { device, .. } => Some(*device),
        };
        let stream = device.and_then(session_stream);
        let raw_stream = stream.as_ref().map(|(_, s)| s.cu_stream() as *mut ());
        // CUDA graphs: the input's one shape, read (with the output's) from a CPU session.
        let mut graph = match (&settings.provider, settings.cuda_graph, &stream) {
            (Provider::Cpu, ..) | (_, false, _) => None,
            (_, true, None) => {
                tracing::warn!(model = %model.display(), "no CUDA graph: no CUDA driver");
                None
            }
            (_, true, Some(_)) => match GraphShape::probe(env, model, max_batch, item_shape) {
                Ok(g) => Some(g),
                Err(e) => {
                    tracing::warn!(model = %model.display(), "no CUDA graph: {e}");
                    None
                }
            },
        };
        // TensorRT's batch range, from the graph's probe where there was one (used if the
        // provider refuses the graph: a graph's input is static).
        let profile = match (&settings.provider, &graph) {
            (Provider::TensorRt { .. }, Some(g)) => {
                TrtProfile::new(&g.input_name, &g.declared, max_batch)
            }
            (Provider::TensorRt { .. }, None) => trt_profile(env, model, threads, max_batch),
            _ => None,
        };
        let build = |provider: &Provider,
                     graph: Option<&GraphShape>|
         -> Result<ort::session::Session, String> {
            // On a GPU provider the graph runs on the GPU: the few nodes left to the CPU
            // (shapes) take one thread, which does not spin between runs. A pool per session
            // there spun on every core between calls (two sessions' 30 spinning threads on
            // a 16-core host took the CPU from the stream threads: 8 fps per stream at 2
            // streams, 138 at 1, on an H100).
            let (intra, spin) = match provider {
                Provider::Cpu => (threads, true),
                _ => (1, false),
            };
            let mut b = ort::session::Session::builder(env)
                .map_err(|e| e.to_string())?
                .with_intra_threads(intra)
                .map_err(|e| e.to_string())?
                .with_intra_op_spinning(spin)
                .map_err(|e| e.to_string())?;
            let on_gpu = if *provider == Provider::Cpu {
                None
            } else {
                raw_stream
            };
            if let Some(g) = graph.filter(|_| on_gpu.is_some()) {
                for (name, size) in &g.overrides {
                    b = b
                        .with_dimension_override(name, *size)
                        .map_err(|e| e.to_string())?;
                }
            }
            let graph = graph.is_some() && on_gpu.is_some();
            // A graph's input is static (its free dimensions fixed above): TensorRT takes it
            // as it is, without a range of batches.
            let profile = profile.as_ref().filter(|_| !graph);
            if let Some(ep) = ep_dispatch(provider, on_gpu, profile, graph) {
                b = b.with_execution_providers([ep]).map_err(|e| {
                    format!(
                        "execution provider {} unavailable in {}: {e}",
                        provider.name(),
                        settings.runtime.display()
                    )
                })?;
            }
            b.commit_from_file(model).map_err(|e| e.to_string())
        };
        let mut built = build(&settings.provider, graph.as_ref());
        if let (Err(e), Some(_)) = (&built, &graph) {
            // A graph the provider refuses (a node it leaves to the CPU, control flow): the
            // same provider without one.
            tracing::warn!(model = %model.display(), "no CUDA graph: {e}");
            graph = None;
            built = build(&settings.provider, None);
        }
        let (mut session, provider) = match built {
            Ok(s) => (s, settings.provider.name()),
            Err(e) if settings.fallback_to_cpu && settings.provider != Provider::Cpu => {
                tracing::warn!(model = %model.display(), "{e}; falling back to the CPU provider");
                graph = None;
                (build(&Provider::Cpu, None).map_err(model_err)?, "cpu")
            }
            Err(e) => return Err(model_err(e)),
        };
        let first = session
            .inputs()
            .first()
            .ok_or_else(|| model_err("the model has no inputs".into()))?;
        let input = first.name().to_string();
        let input_shape = first
            .dtype()
            .tensor_shape()
            .map(|s| s.iter().copied().collect())
            .ok_or_else(|| model_err(format!("input {input} is not a tensor")))?;
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| model_err("the model has no outputs".into()))?;
        let output_dims: Vec<i64> = session
            .outputs()
            .first()
            .and_then(|o| {
                o.dtype()
                    .tensor_shape()
                    .map(|s| s.iter().copied().collect())
            })
            .unwrap_or_default();
        let mut gpu = match (&stream, device) {
            (Some(stream), Some(device)) if provider != "cpu" => {
                match GpuIo::new(
                    &mut session,
                    stream.clone(),
                    device,
                    &input,
                    &output,
                    output_dims,
                ) {
                    Ok(io) => Some(io),
                    Err(e) if graph.is_some() => {
                        // A graph session takes its input only from its bound buffers.
                        return Err(model_err(format!(
                            "CUDA graph without device I/O binding: {e}"
                        )));
                    }
                    Err(e) => {
                        tracing::warn!(model = %model.display(), "no device I/O binding: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        if let (Some(g), Some(io)) = (&graph, gpu.as_mut()) {
            // The capture is not made here: ONNX Runtime's CUDA provider keeps a graph per
            // calling thread, and the first call on a thread runs as many times as it takes
            // to capture (its memory-planning run, then the capture). That is the batcher
            // thread's first call, the registry's warm-up, at load.
            io.use_graph(&g.input, &g.output).map_err(model_err)?;
        }
        // The shape the model declares, not the one the graph fixed: a free batch stays
        // free for the batcher (which packs up to `max_batch` requests into the graph's
        // rows) and for the warm-up's one request.
        let input_shape = match &graph {
            Some(g) => g.declared.clone(),
            None => input_shape,
        };
        Ok(OrtSession {
            gpu,
            session,
            model: model.to_path_buf(),
            input,
            output,
            input_shape,
            provider,
            _stream: stream,
        })
    }

    /// The execution provider that runs the model (`cpu` after a fallback).
    pub fn provider(&self) -> &'static str {
        self.provider
    }
}

/// The TensorRT profile of `model`'s first input, read from a CPU session (the input's
/// name and declared shape are needed before the TensorRT session exists); `None` when the
/// model cannot be read here (the TensorRT session then reports why).
fn trt_profile(
    env: &ort::environment::Environment,
    model: &Path,
    threads: usize,
    max_batch: usize,
) -> Option<TrtProfile> {
    let probe = ort::session::Session::builder(env)
        .ok()?
        .with_intra_threads(threads)
        .ok()?
        .commit_from_file(model)
        .ok()?;
    let first = probe.inputs().first()?;
    let dims: Vec<i64> = first.dtype().tensor_shape()?.iter().copied().collect();
    TrtProfile::new(first.name(), &dims, max_batch)
}

impl InferenceEngine for OrtSession {
    fn run(
        &mut self,
        input: &[f32],
        shape: &[usize],
        out: &mut Vec<f32>,
    ) -> Result<Vec<usize>, EngineError> {
        let err = |reason: String| EngineError::Run {
            path: self.model.clone(),
            reason,
        };
        if let Some(gpu) = self.gpu.as_mut().filter(|g| g.graph()) {
            return gpu
                .run_host(&mut self.session, input, shape, out)
                .map_err(err);
        }
        let tensor = ort::value::TensorRef::from_array_view((shape.to_vec(), input))
            .map_err(|e| err(e.to_string()))?;
        let outputs = self
            .session
            .run(ort::inputs![self.input.as_str() => tensor])
            .map_err(|e| err(e.to_string()))?;
        let (out_shape, data) = outputs[self.output.as_str()]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(e.to_string()))?;
        out.clear();
        out.extend_from_slice(data);
        Ok(out_shape.iter().map(|&d| d.max(0) as usize).collect())
    }

    fn input_shape(&self) -> &[i64] {
        &self.input_shape
    }

    fn model(&self) -> &Path {
        &self.model
    }

    fn on_device(&self) -> bool {
        self.gpu.is_some()
    }

    fn on_gpu(&self) -> bool {
        self.provider != "cpu"
    }

    fn cuda_graph(&self) -> bool {
        self.gpu.as_ref().is_some_and(GpuIo::graph)
    }

    fn run_device(
        &mut self,
        items: &[DeviceItem],
        item_shape: &[usize],
        rows: usize,
    ) -> Result<Vec<usize>, EngineError> {
        let reason = match self.gpu.as_mut() {
            Some(gpu) => match gpu.run(&mut self.session, items, item_shape, rows) {
                Ok(shape) => return Ok(shape),
                Err(e) => e,
            },
            None => format!(
                "the session runs on the {} provider: it takes no device buffers",
                self.provider
            ),
        };
        Err(EngineError::Run {
            path: self.model.clone(),
            reason,
        })
    }
}

#[cfg(test)]
mod profile_tests {
    use super::*;

    #[test]
    fn auto_finds_the_first_candidate_and_the_highest_version_of_a_glob() {
        let root = tempfile::tempdir().unwrap();
        let put = |rel: &str| {
            let p = root.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, b"elf").unwrap();
        };
        assert_eq!(find_runtime(root.path()), None);
        // A stock JetPack 6 with NVIDIA's wheel: found in dist-packages, newest version.
        let capi = "usr/local/lib/python3.10/dist-packages/onnxruntime/capi";
        put(&format!("{capi}/libonnxruntime.so.1.20.0"));
        put(&format!("{capi}/libonnxruntime.so.1.23.0"));
        put(&format!("{capi}/libonnxruntime_providers_tensorrt.so"));
        put("usr/local/lib/libonnxruntime.so");
        assert_eq!(
            find_runtime(root.path()).unwrap(),
            root.path().join(format!("{capi}/libonnxruntime.so.1.23.0"))
        );
        // The image's own comes first.
        put("usr/lib/aegis/libonnxruntime.so");
        assert_eq!(
            find_runtime(root.path()).unwrap(),
            root.path().join("usr/lib/aegis/libonnxruntime.so")
        );
        // A configured path is taken as it is; only `auto` searches.
        let p = Path::new("/opt/ort/libonnxruntime.so");
        assert_eq!(resolve_runtime(p).unwrap(), p);
        assert!(glob_match("libonnxruntime.so*", "libonnxruntime.so"));
        assert!(glob_match("python3*", "python3.10"));
        assert!(!glob_match("python3*", "python2.7"));
        assert!(!glob_match(
            "libonnxruntime.so*",
            "libonnxruntime_providers_cuda.so"
        ));
    }

    #[test]
    fn a_free_batch_gets_a_profile_from_one_to_the_largest_batch() {
        let p = TrtProfile::new("input_1", &[-1, 3, 256, 256], 8).unwrap();
        assert_eq!(p.min, "input_1:1x3x256x256");
        assert_eq!(p.max, "input_1:8x3x256x256");
        // A fixed batch, or another free dimension: TensorRT takes the shapes as they come.
        assert_eq!(TrtProfile::new("x", &[1, 3, 320, 320], 8), None);
        assert_eq!(TrtProfile::new("x", &[-1, 3, -1, -1], 8), None);
        assert_eq!(TrtProfile::new("x", &[], 8), None);
        assert_eq!(TrtProfile::new("x", &[-1, 4], 0).unwrap().max, "x:1x4");
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_graph_fixes_the_batch_at_max_batch_and_the_rest_at_the_stage_s_shape() {
        // NudeNet: batch, height and width free.
        let (o, shape) = GraphShape::fix(
            &[-1, 3, -1, -1],
            &names(&["batch", "", "height", "width"]),
            4,
            Some(&[3, 320, 320]),
        )
        .unwrap();
        assert_eq!(
            o,
            vec![
                ("batch".to_string(), 4),
                ("height".to_string(), 320),
                ("width".to_string(), 320)
            ]
        );
        assert_eq!(shape, vec![4, 3, 320, 320]);
        // The selfie segmenter: only the batch; one request per call without batching.
        let (o, shape) =
            GraphShape::fix(&[-1, 3, 256, 256], &names(&["N", "", "", ""]), 1, None).unwrap();
        assert_eq!(
            (o, shape),
            (vec![("N".to_string(), 1)], vec![1, 3, 256, 256])
        );
        // A fixed batch stays as declared.
        let (o, shape) = GraphShape::fix(
            &[1, 3, 8, 8],
            &names(&["", "", "", ""]),
            8,
            Some(&[3, 8, 8]),
        )
        .unwrap();
        assert_eq!((o.len(), shape), (0, vec![1, 3, 8, 8]));
    }

    #[test]
    fn a_graph_shape_that_cannot_be_fixed_is_named() {
        let err = |dims: &[i64], syms: &[&str], item: Option<&[usize]>| {
            GraphShape::fix(dims, &names(syms), 2, item).unwrap_err()
        };
        let e = err(&[-1, 3, -1, -1], &["b", "", "h", "w"], None);
        assert!(e.contains("dimension 2 (\"h\") is free and no size"), "{e}");
        let e = err(&[-1, 3, -1], &["b", "", ""], Some(&[3, 9]));
        assert!(e.contains("dimension 2 is free and has no name"), "{e}");
        let e = err(&[-1, 3, 256, 256], &["b", "", "", ""], Some(&[3, 320, 320]));
        assert!(e.contains("dimension 2 is 256"), "{e}");
        let e = err(&[-1, 3, -1, -1], &["b", "", "s", "s"], Some(&[3, 320, 240]));
        assert!(e.contains("both 320 and 240"), "{e}");
        let e = err(&[-1, 3], &["b", ""], Some(&[3, 4]));
        assert!(e.contains("per item"), "{e}");
        assert!(err(&[], &[], None).contains("scalar"));
        // The same name twice with one size is one override.
        let (o, _) = GraphShape::fix(
            &[-1, 3, -1, -1],
            &names(&["b", "", "s", "s"]),
            1,
            Some(&[3, 64, 64]),
        )
        .unwrap();
        assert_eq!(o.len(), 2);
    }

    /// The probe reads NudeNet's free dimensions and gets the output for the fixed input
    /// from a CPU run (the models `just models` fetches; in CI their absence fails).
    #[test]
    fn a_graph_probe_finds_nudenet_s_output_for_the_fixed_input() {
        let dir = crate::test_models_dir();
        let (lib, model) = (
            dir.join("libonnxruntime.so.1.32.0"),
            dir.join("nudenet-320n.onnx"),
        );
        if !(lib.exists() && model.exists()) {
            assert!(std::env::var_os("CI").is_none(), "CI must fetch the models");
            return;
        }
        let env = runtime(&lib).unwrap();
        let g = GraphShape::probe(env, &model, 2, Some(&[3, 320, 320])).unwrap();
        assert_eq!(g.input, vec![2, 3, 320, 320]);
        assert_eq!(g.output, vec![2, 22, 2100]);
        assert_eq!(g.overrides.len(), 3, "{:?}", g.overrides);
        assert_eq!(
            g.declared,
            vec![-1, 3, -1, -1],
            "the batcher sees a free batch"
        );
        let e = GraphShape::probe(env, &model, 2, None).unwrap_err();
        assert!(e.contains("input images: dimension 2"), "{e}");
    }
}
