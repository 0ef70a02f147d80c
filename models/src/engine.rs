//! Inference engines. [`OrtSession`] runs ONNX models with ONNX Runtime, whose shared library
//! is loaded at run time from a configured path (the pip `onnxruntime` wheel in development
//! and CI — `tools/fetch-models.sh` puts it next to the models — or JetPack's build on an
//! Orin). Nothing links against it, so every build runs on every host; a missing or wrong
//! library is one clear error naming the path.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
}

static RUNTIME: OnceLock<Result<ort::environment::Environment, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process. A second call with another path reuses the first
/// library (the runtime can only be loaded once).
fn runtime(library: &Path) -> Result<&'static ort::environment::Environment, EngineError> {
    let r = RUNTIME.get_or_init(|| {
        if !library.exists() {
            return Err("file not found".to_string());
        }
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

/// An ONNX model in an ONNX Runtime session (CPU execution provider).
pub struct OrtSession {
    session: ort::session::Session,
    model: PathBuf,
    input: String,
    output: String,
}

impl OrtSession {
    /// Loads `model` with the runtime at `library`, using `threads` intra-op threads.
    pub fn open(library: &Path, model: &Path, threads: usize) -> Result<Self, EngineError> {
        let env = runtime(library)?;
        let model_err = |reason: String| EngineError::Model {
            path: model.to_path_buf(),
            reason,
        };
        if !model.exists() {
            return Err(model_err("file not found (run `just models`)".into()));
        }
        let session = ort::session::Session::builder(env)
            .map_err(|e| model_err(e.to_string()))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| model_err(e.to_string()))?
            .commit_from_file(model)
            .map_err(|e| model_err(e.to_string()))?;
        let input = session
            .inputs()
            .first()
            .map(|i| i.name().to_string())
            .ok_or_else(|| model_err("the model has no inputs".into()))?;
        let output = session
            .outputs()
            .first()
            .map(|o| o.name().to_string())
            .ok_or_else(|| model_err("the model has no outputs".into()))?;
        Ok(OrtSession {
            session,
            model: model.to_path_buf(),
            input,
            output,
        })
    }
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
}
