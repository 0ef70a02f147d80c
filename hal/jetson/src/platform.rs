//! Which Jetson this is, read from the files Jetson Linux ships, and what that means for
//! the backend: the codec path, whether the module has an encoder, and how CUDA reaches
//! NVMM buffers. The choice is made per platform, never per product name in the config.
//!
//! Facts used (NVIDIA's Jetson Linux and JetPack release notes, the Jetson Orin and Thor
//! module data sheets):
//!
//! - `/etc/nv_tegra_release` starts with `# R36 (release), REVISION: 4.3, …`: Jetson Linux
//!   36.4.3. r36 is JetPack 6.x (Orin; CUDA 12.6, TensorRT 10.3); r38 is JetPack 7.0/7.1
//!   (Thor only); r39 is JetPack 7.2 (Orin and Thor; CUDA 13).
//! - The device tree's `model` names the module (`NVIDIA Jetson Orin Nano Developer Kit`,
//!   `NVIDIA Jetson AGX Orin Developer Kit`, `NVIDIA Jetson AGX Thor Developer Kit`, …).
//! - Orin decodes and encodes only through the V4L2 memory-to-memory codecs (NVIDIA's
//!   libv4l2 plugin; the Video Codec SDK is not available on Orin), and **Orin Nano has no
//!   NVENC**: it encodes on the CPU. Thor has the Video Codec SDK: the `cuda` backend's
//!   NVDEC/NVENC code is its path.
//! - Orin's GPU driver is nvgpu: CUDA reaches an NVMM surface through an EGL image
//!   (`NvBufSurfaceMapEglImage` → `cuGraphicsEGLRegisterImage`). `NvBufSurfaceCudaBuffer`
//!   exists only with the OpenRM driver (Thor).

use std::path::Path;

/// A Jetson module family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Module {
    /// Orin Nano (4 GB / 8 GB): NVDEC, no NVENC.
    OrinNano,
    /// Orin NX (8 GB / 16 GB).
    OrinNx,
    /// AGX Orin (32 GB / 64 GB, Industrial).
    AgxOrin,
    /// Thor (AGX Thor, T5000/T4000).
    Thor,
    /// A Jetson this table does not know (older Xavier, TX2…): not supported.
    Other,
}

impl Module {
    fn from_model(model: &str) -> Module {
        if model.contains("Thor") {
            Module::Thor
        } else if model.contains("Orin Nano") {
            Module::OrinNano
        } else if model.contains("Orin NX") {
            Module::OrinNx
        } else if model.contains("AGX Orin") || model.contains("Orin") {
            Module::AgxOrin
        } else {
            Module::Other
        }
    }

    /// Whether it is an Orin (nvgpu driver, V4L2 codecs).
    pub fn is_orin(self) -> bool {
        matches!(self, Module::OrinNano | Module::OrinNx | Module::AgxOrin)
    }
}

/// How this platform decodes and encodes video in hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodecPath {
    /// V4L2 memory-to-memory devices through NVIDIA's libv4l2 plugin (Orin). `encoder`:
    /// whether the module has NVENC (not on Orin Nano: encode on the CPU).
    V4l2M2m {
        /// The module has a hardware encoder.
        encoder: bool,
    },
    /// NVIDIA's Video Codec SDK (NVDEC/NVENC through libnvcuvid/libnvidia-encode): Thor,
    /// through the `cuda` backend.
    VideoCodecSdk,
    /// Not a supported Jetson: the CPU.
    None,
}

/// How CUDA reaches an NVMM (`NvBufSurface`) buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NvmmToCuda {
    /// nvgpu (Orin): `NvBufSurfaceMapEglImage` → `cuGraphicsEGLRegisterImage`.
    EglImage,
    /// OpenRM (Thor): `NvBufSurfaceCudaBuffer`.
    CudaBuffer,
}

/// A Jetson Linux release (`R36`, revision `4.3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L4tRelease {
    /// The major release (36).
    pub major: u32,
    /// The revision as written (`4.3`).
    pub revision: String,
}

impl L4tRelease {
    /// The first line of `/etc/nv_tegra_release`, e.g. `# R36 (release), REVISION: 4.3, …`.
    pub fn parse(text: &str) -> Option<L4tRelease> {
        let line = text.lines().next()?;
        let major = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix('R')?.parse().ok())?;
        let revision = line.split("REVISION: ").nth(1)?.split(',').next()?.trim();
        (!revision.is_empty()).then(|| L4tRelease {
            major,
            revision: revision.to_string(),
        })
    }

    /// The JetPack line it belongs to.
    pub fn jetpack(&self) -> &'static str {
        match self.major {
            35 => "JetPack 5.x (Orin; this agent targets r36 and later)",
            36 => "JetPack 6.x (Orin; CUDA 12.6, TensorRT 10.3)",
            38 => "JetPack 7.0/7.1 (Thor only)",
            39 => "JetPack 7.2 (Orin and Thor; CUDA 13)",
            _ => "unknown JetPack",
        }
    }

    /// Whether this agent supports it (r36 and later).
    pub fn supported(&self) -> bool {
        self.major >= 36
    }
}

/// What this machine is, as far as the Jetson backend cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// The device tree's model string.
    pub model: String,
    /// The module family.
    pub module: Module,
    /// The Jetson Linux release (None: `/etc/nv_tegra_release` unreadable).
    pub release: Option<L4tRelease>,
}

/// Reads `path` under `root`, trimmed of the device tree's NUL and trailing newlines.
fn read(root: &Path, path: &str) -> Option<String> {
    let bytes = std::fs::read(root.join(path.trim_start_matches('/'))).ok()?;
    Some(
        String::from_utf8_lossy(&bytes)
            .trim_end_matches(['\0', '\n'])
            .to_string(),
    )
}

impl Platform {
    /// The platform of the root file system at `root` (`/` on a device; an image's root or
    /// a test's fake one otherwise). None: not a Jetson (no device-tree model naming one).
    pub fn detect(root: &Path) -> Option<Platform> {
        let model = read(root, "/proc/device-tree/model")
            .or_else(|| read(root, "/sys/firmware/devicetree/base/model"))?;
        if !model.contains("Jetson") {
            return None;
        }
        Some(Platform {
            module: Module::from_model(&model),
            release: read(root, "/etc/nv_tegra_release")
                .as_deref()
                .and_then(L4tRelease::parse),
            model,
        })
    }

    /// The hardware codec path.
    pub fn codecs(&self) -> CodecPath {
        match self.module {
            Module::OrinNano => CodecPath::V4l2M2m { encoder: false },
            Module::OrinNx | Module::AgxOrin => CodecPath::V4l2M2m { encoder: true },
            Module::Thor => CodecPath::VideoCodecSdk,
            Module::Other => CodecPath::None,
        }
    }

    /// How CUDA reaches NVMM buffers.
    pub fn nvmm_to_cuda(&self) -> NvmmToCuda {
        match self.module {
            Module::Thor => NvmmToCuda::CudaBuffer,
            _ => NvmmToCuda::EglImage,
        }
    }

    /// One line for the status and `aegis doctor`.
    pub fn describe(&self) -> String {
        match &self.release {
            Some(r) => format!(
                "{}; Jetson Linux R{}.{} ({})",
                self.model,
                r.major,
                r.revision,
                r.jetpack()
            ),
            None => format!(
                "{}; no readable /etc/nv_tegra_release (Jetson Linux release unknown)",
                self.model
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root(model: &str, release: Option<&str>) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let put = |p: &str, t: &str| {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, t).unwrap();
        };
        put("proc/device-tree/model", &format!("{model}\0"));
        if let Some(r) = release {
            put("etc/nv_tegra_release", r);
        }
        d
    }

    const R36: &str = "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 UTC 2025\n";

    #[test]
    fn modules_pick_their_codec_path_and_nvmm_route() {
        for (model, module, codecs, nvmm) in [
            (
                "NVIDIA Jetson Orin Nano Developer Kit",
                Module::OrinNano,
                CodecPath::V4l2M2m { encoder: false },
                NvmmToCuda::EglImage,
            ),
            (
                "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
                Module::OrinNx,
                CodecPath::V4l2M2m { encoder: true },
                NvmmToCuda::EglImage,
            ),
            (
                "NVIDIA Jetson AGX Orin Developer Kit",
                Module::AgxOrin,
                CodecPath::V4l2M2m { encoder: true },
                NvmmToCuda::EglImage,
            ),
            (
                "NVIDIA Jetson AGX Thor Developer Kit",
                Module::Thor,
                CodecPath::VideoCodecSdk,
                NvmmToCuda::CudaBuffer,
            ),
            (
                "NVIDIA Jetson Xavier NX Developer Kit",
                Module::Other,
                CodecPath::None,
                NvmmToCuda::EglImage,
            ),
        ] {
            let d = root(model, Some(R36));
            let p = Platform::detect(d.path()).unwrap();
            assert_eq!(
                (p.module, p.codecs(), p.nvmm_to_cuda()),
                (module, codecs, nvmm),
                "{model}"
            );
            assert_eq!(p.model, model);
        }
    }

    #[test]
    fn the_release_file_gives_the_jetpack_line() {
        let d = root("NVIDIA Jetson AGX Orin Developer Kit", Some(R36));
        let p = Platform::detect(d.path()).unwrap();
        let r = p.release.clone().unwrap();
        assert_eq!((r.major, r.revision.as_str()), (36, "4.3"));
        assert!(r.supported());
        assert!(
            p.describe().contains("R36.4.3 (JetPack 6.x"),
            "{}",
            p.describe()
        );
        let old = L4tRelease::parse("# R35 (release), REVISION: 5.0, GCID: 1\n").unwrap();
        assert!(!old.supported());
        assert_eq!(
            L4tRelease::parse("# R39 (release), REVISION: 2.0, X")
                .unwrap()
                .jetpack(),
            "JetPack 7.2 (Orin and Thor; CUDA 13)"
        );
        for bad in [
            "",
            "garbage",
            "# R36 (release)",
            "# Rxx (release), REVISION: 1.0,",
        ] {
            assert_eq!(L4tRelease::parse(bad), None, "{bad:?}");
        }
        // No release file: still a Jetson, release unknown.
        let d = root("NVIDIA Jetson Orin Nano Developer Kit", None);
        let p = Platform::detect(d.path()).unwrap();
        assert!(p.release.is_none());
        assert!(p.describe().contains("release unknown"));
    }

    #[test]
    fn a_machine_without_a_jetson_model_is_not_a_jetson() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Platform::detect(d.path()), None);
        let d = root("Raspberry Pi 5 Model B Rev 1.0", Some(R36));
        assert_eq!(Platform::detect(d.path()), None);
    }
}
