//! Which backend runs the pipeline: probe the vendor libraries, open the configured backend,
//! fall back when it cannot run here.
//!
//! This is the agent's only way to the GPU: it holds a [`Backend`] and hands each stream the
//! [`Gpu`] that [`Backend::stream_gpu`] gives it; it never names the CUDA crate. A backend
//! that cannot run says why (no NVIDIA driver, no NVRTC, kernels that do not compile), and
//! `backend.fallback` decides between the CPU and a refusal.

use std::path::PathBuf;
use std::sync::Arc;

use aegis_config::{BackendConfig, BackendKind};

/// A GPU with its kernels compiled (the CUDA backend's device).
pub use aegis_cuda::Gpu;

pub use crate::codec::NvmmCodecs;

/// The backend a run uses, after the fallback.
#[derive(Clone)]
pub struct Backend {
    /// What runs the pipeline.
    pub kind: BackendKind,
    /// The GPU, with its kernels compiled, when `kind` is `cuda`, or `jetson` on Orin.
    pub gpu: Option<Arc<Gpu>>,
    /// Orin's decoder into NVMM and the libraries that map its surfaces for CUDA, when
    /// `kind` is `jetson` on Orin.
    pub nvmm: Option<Arc<NvmmCodecs>>,
    /// Why the configured backend was not used, when the fallback ran instead.
    pub fell_back: Option<String>,
}

/// Where one stream decodes on the GPU: its own fork of the backend's GPU (own CUDA
/// stream) and, on Orin, the NVMM decoder (else NVDEC).
#[derive(Debug, Clone)]
pub struct StreamGpu {
    /// The stream's GPU.
    pub gpu: Arc<Gpu>,
    /// Orin's NVMM decoder (`jetson` backend).
    pub nvmm: Option<Arc<NvmmCodecs>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind)
            .field("gpu", &self.gpu.as_ref().map(|g| g.name.clone()))
            .field("nvmm", &self.nvmm.is_some())
            .field("fell_back", &self.fell_back)
            .finish()
    }
}

/// The configured backend cannot run here and no fallback is configured.
#[derive(Debug, thiserror::Error)]
#[error("backend.kind: {kind} cannot run here: {why}; set backend.fallback: cpu to fall back")]
pub struct BackendError {
    /// The configured backend.
    pub kind: BackendKind,
    /// Why it cannot run (the vendor library or the device that is missing).
    pub why: String,
}

/// Which vendor libraries this machine has (`aegis version`, `aegis doctor`); loads nothing
/// beyond the libraries themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// The NVIDIA driver (`libcuda.so.1`).
    pub driver: bool,
    /// The run-time compiler the CUDA kernels need (`libnvrtc`).
    pub nvrtc: bool,
    /// The hardware decoder (`libnvcuvid.so.1`).
    pub nvdec: bool,
}

/// Probes the vendor libraries.
pub fn probe() -> Probe {
    Probe {
        driver: aegis_cuda::driver_present(),
        nvrtc: aegis_cuda::nvrtc_present(),
        nvdec: aegis_cuda::nvdec::nvdec_present(),
    }
}

impl Backend {
    /// The CPU backend (always available).
    pub fn cpu() -> Backend {
        Backend {
            kind: BackendKind::Cpu,
            gpu: None,
            nvmm: None,
            fell_back: None,
        }
    }

    /// Opens the configured backend, applying `backend.fallback` when it cannot run here.
    /// Compiled kernels are cached in `kernel_cache` (≈0.3 s saved per start).
    pub fn select(
        cfg: &BackendConfig,
        kernel_cache: Option<PathBuf>,
    ) -> Result<Backend, BackendError> {
        choose(cfg, Some(kernel_cache))
    }

    /// What [`Backend::select`] would choose, from the vendor libraries alone: no GPU
    /// context, no kernel compilation, nothing written (`aegis check-config`).
    pub fn check(cfg: &BackendConfig) -> Result<BackendKind, BackendError> {
        choose(cfg, None).map(|b| b.kind)
    }

    /// The GPU a stream decodes on: its own fork of the backend's GPU (own CUDA stream),
    /// with Orin's NVMM decoder on the `jetson` backend, else NVDEC when installed; `None`
    /// (CPU backend, or no hardware decoder) decodes on the CPU, saying why.
    pub fn stream_gpu(&self, stream: &str) -> Option<StreamGpu> {
        let gpu = self.gpu.as_ref()?;
        if self.nvmm.is_none() && !aegis_cuda::nvdec::nvdec_present() {
            tracing::warn!(
                stream,
                "libnvcuvid.so.1 (NVDEC) is not installed; decoding on the CPU"
            );
            return None;
        }
        match gpu.fork() {
            Ok(g) => Some(StreamGpu {
                gpu: Arc::new(g),
                nvmm: self.nvmm.clone(),
            }),
            Err(e) => {
                tracing::warn!(stream, error = %e, "no CUDA stream for this source; decoding on the CPU");
                None
            }
        }
    }

    /// The GPU's name and device memory `(name, used, total)` in bytes, when a GPU runs the
    /// pipeline (None otherwise, or when the driver cannot say).
    pub fn gpu_memory(&self) -> Option<(String, u64, u64)> {
        let g = self.gpu.as_ref()?;
        let (free, total) = g.memory().ok()?;
        Some((
            g.name.clone(),
            (total - free.min(total)) as u64,
            total as u64,
        ))
    }

    /// The GPU's name and its hardware encoder, for benchmark reports (`None` on the CPU).
    pub fn gpu_summary(&self) -> Option<String> {
        let g = self.gpu.as_ref()?;
        Some(format!(
            "{}, NVENC: {:?}",
            g.name,
            aegis_cuda::nvenc::probe(g)
        ))
    }
}

/// `kernel_cache` is `None` for a check that opens nothing, `Some(dir)` to open the GPU.
fn choose(
    cfg: &BackendConfig,
    kernel_cache: Option<Option<PathBuf>>,
) -> Result<Backend, BackendError> {
    choose_on(cfg, kernel_cache, std::path::Path::new("/"))
}

/// What the `jetson` backend is on a platform.
enum JetsonPath {
    /// Thor: the Video Codec SDK through the `cuda` backend, with this configuration.
    Cuda(BackendConfig),
    /// Orin: the V4L2 M2M decoder into NVMM, CUDA on the surfaces through EGL images.
    Nvmm {
        /// The module, as `aegis doctor` names it.
        module: String,
        /// Whether the module has a hardware encoder (Orin Nano has none).
        encoder: bool,
    },
}

/// The `jetson` backend's path on the platform whose root file system is `root`, or why it
/// cannot run there. The choice is the platform's, never a product name's.
fn jetson_path(cfg: &BackendConfig, root: &std::path::Path) -> Result<JetsonPath, String> {
    use aegis_jetson::platform::{CodecPath, Platform};
    let Some(p) = Platform::detect(root) else {
        return Err(
            "this machine is not a Jetson (no device-tree model naming one under /proc/device-tree)"
                .into(),
        );
    };
    match p.codecs() {
        CodecPath::VideoCodecSdk => Ok(JetsonPath::Cuda(BackendConfig {
            kind: BackendKind::Cuda,
            ..cfg.clone()
        })),
        CodecPath::None => Err(format!(
            "{}: not a supported module (Orin on Jetson Linux r36 or later, or Thor)",
            p.describe()
        )),
        CodecPath::V4l2M2m { encoder } => Ok(JetsonPath::Nvmm {
            module: p.describe(),
            encoder,
        }),
    }
}

/// Why the CUDA kernels cannot run here (no driver, no NVRTC), from the libraries alone.
fn cuda_missing() -> Option<String> {
    if !aegis_cuda::driver_present() {
        Some(aegis_cuda::CudaError::NoDriver.to_string())
    } else if !aegis_cuda::nvrtc_present() {
        Some(aegis_cuda::CudaError::NoNvrtc.to_string())
    } else {
        None
    }
}

/// Orin's backend: the NVMM decoder's libraries and device, and the GPU the stages run on
/// (opened unless `kernel_cache` is `None`, a check).
fn open_nvmm(
    cfg: &BackendConfig,
    kernel_cache: Option<Option<PathBuf>>,
    module: &str,
    encoder: bool,
) -> Result<Backend, String> {
    let codecs = NvmmCodecs::load(encoder).map_err(|why| format!("{module}: {why}"))?;
    let gpu = match kernel_cache {
        None => match cuda_missing() {
            Some(why) => return Err(format!("{module}: {why}")),
            None => None,
        },
        Some(cache) => {
            let gpu = aegis_cuda::Gpu::open(cfg.cuda_device as usize, cache)
                .map_err(|e| format!("{module}: {e}"))?;
            tracing::info!(%module, gpu = %gpu.name, kernels = gpu.ptx_source,
                encoder = if encoder {
                    "V4L2 M2M: recordings encode the NVMM surfaces in place"
                } else {
                    "none on this module: recordings encode on the CPU after one download"
                },
                "jetson backend ready: decode into NVMM, CUDA on the surfaces");
            Some(Arc::new(gpu))
        }
    };
    Ok(Backend {
        kind: BackendKind::Jetson,
        gpu,
        nvmm: Some(Arc::new(codecs)),
        fell_back: None,
    })
}

fn choose_on(
    cfg: &BackendConfig,
    kernel_cache: Option<Option<PathBuf>>,
    root: &std::path::Path,
) -> Result<Backend, BackendError> {
    let why = match (cfg.kind, kernel_cache) {
        (BackendKind::Cpu, _) => return Ok(Backend::cpu()),
        (BackendKind::Cuda, None) => match cuda_missing() {
            Some(why) => why,
            None => {
                return Ok(Backend {
                    kind: BackendKind::Cuda,
                    ..Backend::cpu()
                });
            }
        },
        (BackendKind::Cuda, Some(cache)) => {
            match aegis_cuda::Gpu::open(cfg.cuda_device as usize, cache) {
                Ok(gpu) => {
                    let nvenc = match aegis_cuda::nvenc::probe(&gpu) {
                        aegis_cuda::nvenc::Nvenc::Present { codecs, .. } => format!(
                            "present ({codecs} codecs); its encoder is not built yet: recordings encode on the CPU"
                        ),
                        aegis_cuda::nvenc::Nvenc::Absent(why) => {
                            format!("{why}; recordings encode on the CPU after one download")
                        }
                    };
                    tracing::info!(gpu = %gpu.name, kernels = gpu.ptx_source,
                        nvdec = aegis_cuda::nvdec::nvdec_present(), %nvenc, "CUDA backend ready");
                    return Ok(Backend {
                        kind: BackendKind::Cuda,
                        gpu: Some(Arc::new(gpu)),
                        nvmm: None,
                        fell_back: None,
                    });
                }
                Err(e) => e.to_string(),
            }
        }
        (BackendKind::Jetson, cache) => match jetson_path(cfg, root) {
            Ok(JetsonPath::Cuda(instead)) => {
                tracing::info!(backend = %instead.kind, "jetson: this platform's path");
                return choose_on(&instead, cache, root);
            }
            Ok(JetsonPath::Nvmm { module, encoder }) => {
                match open_nvmm(cfg, cache, &module, encoder) {
                    Ok(b) => return Ok(b),
                    Err(why) => why,
                }
            }
            Err(why) => why,
        },
    };
    match cfg.fallback {
        Some(BackendKind::Cpu) => {
            tracing::warn!(backend = %cfg.kind, fallback = "cpu", reason = %why,
                "backend unavailable; using the fallback");
            Ok(Backend {
                fell_back: Some(format!("{}: {why}", cfg.kind)),
                ..Backend::cpu()
            })
        }
        _ => Err(BackendError {
            kind: cfg.kind,
            why,
        }),
    }
}

#[cfg(test)]
mod jetson_tests {
    use super::*;

    fn fake_root(model: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("proc/device-tree")).unwrap();
        std::fs::write(
            d.path().join("proc/device-tree/model"),
            format!("{model}\0"),
        )
        .unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/nv_tegra_release"),
            "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic, EABI: aarch64\n",
        )
        .unwrap();
        d
    }

    fn jetson(fallback: Option<BackendKind>) -> BackendConfig {
        BackendConfig {
            kind: BackendKind::Jetson,
            fallback,
            ..Default::default()
        }
    }

    #[test]
    fn the_jetson_backend_is_chosen_per_platform() {
        // Orin Nano: the NVMM path, which needs JetPack's libraries: without them (this
        // machine) refused without a fallback, the CPU with one, the module and the missing
        // library named.
        let nano = fake_root("NVIDIA Jetson Orin Nano Developer Kit");
        let e = choose_on(&jetson(None), None, nano.path()).unwrap_err();
        assert_eq!(e.kind, BackendKind::Jetson);
        assert!(
            e.why.contains("Orin Nano")
                && e.why.contains("R36.4.3")
                && e.why.contains(aegis_jetson::nvbuf::NVBUFSURFACE_LIB),
            "{}",
            e.why
        );
        let b = choose_on(&jetson(Some(BackendKind::Cpu)), None, nano.path()).unwrap();
        assert_eq!(b.kind, BackendKind::Cpu);
        assert!(
            b.fell_back
                .unwrap()
                .contains(aegis_jetson::nvbuf::NVBUFSURFACE_LIB)
        );
        // Thor: the Video Codec SDK, i.e. the cuda backend's path (its own checks follow:
        // without a CUDA driver here, the refusal is the CUDA backend's).
        let thor = fake_root("NVIDIA Jetson AGX Thor Developer Kit");
        match choose_on(&jetson(None), None, thor.path()) {
            Ok(b) => assert_eq!(b.kind, BackendKind::Cuda),
            Err(e) => assert_eq!(e.kind, BackendKind::Cuda, "{}", e.why),
        }
        // Not a Jetson at all.
        let pc = tempfile::tempdir().unwrap();
        let e = choose_on(&jetson(None), None, pc.path()).unwrap_err();
        assert!(e.why.contains("not a Jetson"), "{}", e.why);
    }
}
