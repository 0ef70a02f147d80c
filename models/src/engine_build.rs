//! Progress of TensorRT engine builds. ONNX Runtime's TensorRT provider builds an engine the
//! first time a model runs (for our models, whose batch is free, at the registry's warm-up
//! run) unless its engine cache holds one: minutes on an Orin, during which the agent would
//! otherwise look hung. TensorRT reports no percentage through ONNX Runtime, so what is shown
//! is what is known: which model is being built, for how long, whether the cache had an
//! engine, and what the build left in it — in the log every 10 s and through
//! [`in_progress`] for status pages.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::engine::Provider;

/// Builds under way: model name and start.
static BUILDS: Mutex<Vec<(String, Instant)>> = Mutex::new(Vec::new());

/// How often a running build is logged.
const TICK: Duration = Duration::from_secs(10);

/// The engine builds under way in this process: model name and time spent so far.
pub fn in_progress() -> Vec<(String, Duration)> {
    BUILDS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(name, t0)| (name.clone(), t0.elapsed()))
        .collect()
}

/// TensorRT engine files (`*.engine`) in `dir` (0 when it cannot be read).
pub fn engine_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "engine"))
                .count()
        })
        .unwrap_or(0)
}

/// One model's build (or cache load), from [`EngineBuild::begin`] until dropped.
pub struct EngineBuild {
    model: String,
    started: Instant,
    cache: Option<PathBuf>,
    cached_before: usize,
    stop: Arc<(Mutex<bool>, Condvar)>,
    ticker: Option<JoinHandle<()>>,
}

impl EngineBuild {
    /// Starts reporting for `model` when `provider` is TensorRT (`None` otherwise: other
    /// providers build nothing).
    pub fn begin(provider: &Provider, model: &str) -> Option<EngineBuild> {
        let Provider::TensorRt {
            engine_cache_dir, ..
        } = provider
        else {
            return None;
        };
        let cached_before = engine_cache_dir.as_deref().map_or(0, engine_files);
        match engine_cache_dir {
            Some(dir) if cached_before > 0 => tracing::info!(
                model,
                cache = %dir.display(),
                "TensorRT: {cached_before} cached engine(s); a build starts only if none fits this model"
            ),
            Some(dir) => tracing::info!(
                model,
                cache = %dir.display(),
                "TensorRT: no cached engine: building one (minutes on a Jetson; cached for the next start)"
            ),
            None => tracing::warn!(
                model,
                "TensorRT: no engine cache configured (inference.tensorrt.engine_cache_dir): the engine is built at every start"
            ),
        }
        let started = Instant::now();
        BUILDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((model.to_string(), started));
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (flag, name) = (stop.clone(), model.to_string());
        let ticker = std::thread::Builder::new()
            .name("trt-progress".into())
            .spawn(move || {
                let (lock, cv) = &*flag;
                let mut done = lock.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    done = cv
                        .wait_timeout(done, TICK)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                    if *done {
                        return;
                    }
                    tracing::info!(
                        model = %name,
                        "TensorRT: building the engine: {} s so far",
                        started.elapsed().as_secs()
                    );
                }
            })
            .ok();
        Some(EngineBuild {
            model: model.to_string(),
            started,
            cache: engine_cache_dir.clone(),
            cached_before,
            stop,
            ticker,
        })
    }
}

impl Drop for EngineBuild {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.stop.1.notify_all();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        BUILDS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(name, t0)| !(name == &self.model && *t0 == self.started));
        let new = self
            .cache
            .as_deref()
            .map_or(0, engine_files)
            .saturating_sub(self.cached_before);
        tracing::info!(
            model = %self.model,
            "TensorRT: engine ready after {:.1} s ({new} new engine file(s) cached)",
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trt(cache: Option<PathBuf>) -> Provider {
        Provider::TensorRt {
            device: 0,
            engine_cache_dir: cache,
            fp16: true,
            int8: false,
            int8_calibration_table: None,
            dla_core: None,
        }
    }

    #[test]
    fn a_build_is_listed_while_it_runs_and_its_cached_engines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        assert!(EngineBuild::begin(&Provider::Cpu, "m").is_none());
        assert!(EngineBuild::begin(&Provider::Cuda { device: 0 }, "m").is_none());
        let build = EngineBuild::begin(&trt(Some(dir.path().into())), "seg-under-test").unwrap();
        assert_eq!(build.cached_before, 0);
        let listed = in_progress();
        assert!(
            listed.iter().any(|(name, _)| name == "seg-under-test"),
            "{listed:?}"
        );
        // What the provider writes into the cache: engines count, other files do not.
        std::fs::write(
            dir.path().join("TRTKernel_graph_main_1234_sm87.engine"),
            b"x",
        )
        .unwrap();
        std::fs::write(dir.path().join("TensorrtExecutionProvider.timing"), b"x").unwrap();
        assert_eq!(engine_files(dir.path()), 1);
        drop(build);
        assert!(!in_progress().iter().any(|(n, _)| n == "seg-under-test"));
        let again = EngineBuild::begin(&trt(Some(dir.path().into())), "seg-under-test").unwrap();
        assert_eq!(again.cached_before, 1);
        assert_eq!(engine_files(Path::new("/nonexistent/aegis")), 0);
    }
}
