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
}

impl EngineSettings {
    /// CPU sessions from `runtime` with `threads` threads.
    pub fn cpu(runtime: &Path, threads: usize) -> Self {
        EngineSettings {
            runtime: runtime.to_path_buf(),
            provider: Provider::Cpu,
            fallback_to_cpu: false,
            threads,
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

/// The provider's registration; a GPU provider runs on `stream` (a raw `CUstream`) when
/// one is given, TensorRT with `profile` when given.
fn ep_dispatch(
    p: &Provider,
    stream: Option<*mut ()>,
    profile: Option<&TrtProfile>,
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
                .with_conv_algorithm_search(ort::ep::cuda::ConvAlgorithmSearch::Heuristic);
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
                .with_int8(*int8);
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
        Self::open_batched(settings, model, 1)
    }

    /// [`open_with`](Self::open_with) for batches of up to `max_batch` inputs: on TensorRT,
    /// an engine built once for batches 1..=`max_batch` when the model's batch is free.
    pub fn open_batched(
        settings: &EngineSettings,
        model: &Path,
        max_batch: usize,
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
        let profile = match &settings.provider {
            Provider::TensorRt { .. } => trt_profile(env, model, threads, max_batch),
            _ => None,
        };
        let build = |provider: &Provider| -> Result<ort::session::Session, String> {
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
            if let Some(ep) = ep_dispatch(provider, on_gpu, profile.as_ref()) {
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
        let (mut session, provider) = match build(&settings.provider) {
            Ok(s) => (s, settings.provider.name()),
            Err(e) if settings.fallback_to_cpu && settings.provider != Provider::Cpu => {
                tracing::warn!(model = %model.display(), "{e}; falling back to the CPU provider");
                (build(&Provider::Cpu).map_err(model_err)?, "cpu")
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
        let gpu = match (&stream, device) {
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
                    Err(e) => {
                        tracing::warn!(model = %model.display(), "no device I/O binding: {e}");
                        None
                    }
                }
            }
            _ => None,
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
}
