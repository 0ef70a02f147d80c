//! The C stand-ins for libnvbufsurface, libnvbufsurftransform and libcuda's EGL interop
//! (`tests/stub/`), compiled with the target's C compiler (build.rs names it), one private
//! copy per test, with their test hooks (call log, failure switch).

#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use aegis_jetson::cuda_egl::{CUDA_LIB, CudaEglLib};
use aegis_jetson::nvbuf::{NVBUFSURFACE_LIB, NvBufSurfaceLib};
use aegis_jetson::transform::{NVBUFSURFTRANSFORM_LIB, TransformLib};
use tempfile::TempDir;

/// The stand-ins' sources: this crate's tests/stub, or where the including crate's build
/// script says they are (aegis-hal's tests of the jetson decoder).
const STUB_DIR: &str = match option_env!("AEGIS_JETSON_STUB_DIR") {
    Some(dir) => dir,
    None => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/stub"),
};

/// The target's C compiler (build.rs names it; aarch64-linux-gnu-gcc under
/// tools/cross-test.sh), with its leading arguments, ready for more.
pub fn target_cc() -> (&'static str, std::process::Command) {
    let mut words = env!("AEGIS_JETSON_TEST_CC")
        .split('\u{1f}')
        .filter(|w| !w.is_empty());
    let cc = words
        .next()
        .expect("build.rs found no C compiler for the target (install gcc, or aarch64-linux-gnu-gcc to cross-test)");
    let mut command = std::process::Command::new(cc);
    command.args(words);
    (cc, command)
}

/// Compiles `sources` (in tests/stub) into `out` as a shared object, with `defines`.
fn compile(source: &str, out: &Path, defines: &[&str]) {
    let (cc, mut command) = target_cc();
    let output = command
        .args([
            "-shared",
            "-fPIC",
            "-fvisibility=hidden",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            STUB_DIR,
        ])
        .args(defines)
        .arg(Path::new(STUB_DIR).join(source))
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running {cc}: {e}"));
    assert!(
        output.status.success(),
        "{cc} {source}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The stand-ins, compiled once per variant for this test binary; or, where
/// `AEGIS_JETSON_STUBS` names a directory (a machine without a C compiler: the GPU machine,
/// tools/device/jetson-stubs.sh builds them), taken from its `full/` and `partial/`.
fn built(without_sync_for_device: bool) -> &'static Path {
    if let Some(dir) = std::env::var_os("AEGIS_JETSON_STUBS") {
        static PREBUILT: OnceLock<[std::path::PathBuf; 2]> = OnceLock::new();
        let dir = std::path::PathBuf::from(dir);
        let [full, partial] = PREBUILT.get_or_init(|| [dir.join("full"), dir.join("partial")]);
        return if without_sync_for_device {
            partial
        } else {
            full
        };
    }
    static FULL: OnceLock<TempDir> = OnceLock::new();
    static PARTIAL: OnceLock<TempDir> = OnceLock::new();
    let cell = if without_sync_for_device {
        &PARTIAL
    } else {
        &FULL
    };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let defines: &[&str] = if without_sync_for_device {
            &["-DAEGIS_STUB_WITHOUT_SYNC_FOR_DEVICE"]
        } else {
            &[]
        };
        compile(
            "nvbufsurface.c",
            &dir.path().join(NVBUFSURFACE_LIB),
            defines,
        );
        compile(
            "nvbufsurftransform.c",
            &dir.path().join(NVBUFSURFTRANSFORM_LIB),
            &[],
        );
        compile("cuda_egl.c", &dir.path().join(CUDA_LIB), &[]);
        dir
    })
    .path()
}

/// A private copy of the stand-ins: a distinct file is a distinct dlopen instance, so each
/// test has its own surfaces, call log and failure switch even when tests run in parallel.
pub struct Stub {
    dir: TempDir,
}

impl Stub {
    pub fn new() -> Stub {
        Stub::variant(false)
    }

    pub fn variant(without_sync_for_device: bool) -> Stub {
        let from = built(without_sync_for_device);
        let dir = tempfile::tempdir().expect("temp dir");
        for lib in [NVBUFSURFACE_LIB, NVBUFSURFTRANSFORM_LIB, CUDA_LIB] {
            std::fs::copy(from.join(lib), dir.path().join(lib)).expect("copy stub");
        }
        Stub { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn surfaces(&self) -> Arc<NvBufSurfaceLib> {
        NvBufSurfaceLib::load(Some(self.path())).expect("load the libnvbufsurface stand-in")
    }

    pub fn cuda(&self) -> Arc<CudaEglLib> {
        CudaEglLib::load(Some(self.path())).expect("load the libcuda stand-in")
    }

    pub fn transforms(&self) -> Arc<TransformLib> {
        TransformLib::load(Some(self.path())).expect("load the libnvbufsurftransform stand-in")
    }

    /// The test hooks of one stand-in (the same dlopen instance the crate loaded).
    pub fn hooks(&self, lib: &str) -> libloading::Library {
        // SAFETY: the stand-in's initialisers do nothing.
        unsafe { libloading::Library::new(self.path().join(lib)) }.expect("open stub for its hooks")
    }

    /// The calls `lib` has seen, one per line.
    pub fn log(&self, lib: &str) -> Vec<String> {
        let hooks = self.hooks(lib);
        let mut buf = vec![0u8; 65536];
        // SAFETY: aegis_stub_log(char *out, size_t cap) -> size_t, defined in stub.h.
        let n = unsafe {
            let f = hooks
                .get::<unsafe extern "C" fn(*mut u8, usize) -> usize>(b"aegis_stub_log")
                .expect("aegis_stub_log");
            f(buf.as_mut_ptr(), buf.len())
        };
        String::from_utf8_lossy(&buf[..n])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// CUDA registrations the libcuda stand-in holds (made, not yet undone).
    pub fn live_cuda_resources(&self) -> i32 {
        let hooks = self.hooks(CUDA_LIB);
        // SAFETY: aegis_stub_live(void) -> int, tests/stub/cuda_egl.c.
        unsafe {
            hooks
                .get::<unsafe extern "C" fn() -> i32>(b"aegis_stub_live")
                .expect("aegis_stub_live")()
        }
    }

    /// Makes the libcuda stand-in page-lock the "NVMM" memory it maps with the real driver
    /// (`cuMemHostRegister`), so that real CUDA kernels work on it in place (GPU tests).
    pub fn register_with_the_real_driver(&self) {
        let hooks = self.hooks(CUDA_LIB);
        // SAFETY: aegis_stub_register_host(int) -> int, tests/stub/cuda_egl.c.
        let registered = unsafe {
            hooks
                .get::<unsafe extern "C" fn(i32) -> i32>(b"aegis_stub_register_host")
                .expect("aegis_stub_register_host")(1)
        };
        assert_eq!(registered, 0, "the real libcuda's page-locking calls");
    }

    /// Nothing is left: every CUDA registration undone, every surface the libnvbufsurface
    /// stand-in allocated destroyed.
    pub fn assert_all_freed(&self) {
        assert_eq!(self.live_cuda_resources(), 0, "every mapping undone");
        let log = self.log(NVBUFSURFACE_LIB);
        let count = |call: &str| names(&log).iter().filter(|n| **n == call).count();
        assert_eq!(
            count("NvBufSurfaceDestroy"),
            count("NvBufSurfaceAllocate"),
            "every surface destroyed: {log:#?}"
        );
    }

    /// Makes the next call of `call` in `lib` fail.
    pub fn fail_next(&self, lib: &str, call: &str) {
        let hooks = self.hooks(lib);
        let name = std::ffi::CString::new(call).expect("call name");
        // SAFETY: aegis_stub_fail(const char *name), defined in stub.h; it copies the name.
        unsafe {
            let f = hooks
                .get::<unsafe extern "C" fn(*const std::ffi::c_char)>(b"aegis_stub_fail")
                .expect("aegis_stub_fail");
            f(name.as_ptr());
        }
    }
}

/// The names of the calls in a log (what precedes the arguments).
pub fn names(log: &[String]) -> Vec<&str> {
    log.iter()
        .map(|l| l.split('(').next().unwrap_or(l))
        .collect()
}

/// The first 8 luma bytes of a lent frame, read through its plane address as a kernel
/// would: the codec stand-in's picture marker, which the VIC stand-in copies. The libcuda
/// stand-in maps a surface's memory at host addresses (unless it registers it with a GPU).
pub fn lent_marker(frame: &aegis_cuda::LentNv12) -> u64 {
    let (y, _) = frame.addresses();
    let mut first = [0u8; 8];
    // SAFETY: the stand-in mapped the work surface's memory at this address, and it stays
    // mapped while the frame is lent (`frame` lives).
    unsafe { std::ptr::copy_nonoverlapping(y as *const u8, first.as_mut_ptr(), 8) };
    u64::from_le_bytes(first)
}

/// A lent frame's pixels read through its plane addresses as a kernel would: the luma
/// (width × height bytes) and the interleaved CbCr (width × height / 2), without the pitch
/// padding. The libcuda stand-in maps a surface's memory at host addresses.
pub fn lent_pixels(frame: &aegis_cuda::LentNv12) -> (Vec<u8>, Vec<u8>) {
    use aegis_cuda::Nv12Frame;
    let (w, h, pitch) = frame.geometry();
    let (y, uv) = frame.addresses();
    let read = |base: u64, rows: usize| {
        let mut out = vec![0u8; w * rows];
        for r in 0..rows {
            // SAFETY: the stand-in mapped the surface's planes (rows of `pitch` bytes) at
            // these addresses, and they stay mapped while the frame is lent.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    (base + (r * pitch) as u64) as *const u8,
                    out[r * w..].as_mut_ptr(),
                    w,
                )
            };
        }
        out
    };
    (read(y, h), read(uv, h / 2))
}
