//! The bindings' layouts against NVIDIA's r36.3.0 headers (JetPack 6.0,
//! `jetson_multimedia_api/include/nvbufsurface.h` and `nvbufsurftransform.h`).
//!
//! `abi/r36.3.0-lp64.txt` is the output of `abi/probe.c` (sizes, field offsets, enum values)
//! compiled against those headers with `cc` for x86_64 and with `aarch64-linux-gnu-gcc` for
//! aarch64 (run under qemu-aarch64): the two outputs were identical, so one file serves both
//! targets, and `tools/cross-test.sh` runs this test on aarch64. The headers came from the
//! public mirror github.com/v-faeez-kadiri/jetson-jetpack-libs (commit "r36.3.0"); they are
//! NVIDIA-proprietary and not in this repository. `probe_matches_headers` re-runs the probe
//! when `AEGIS_JETSON_MMAPI_INCLUDE` names their directory.

mod stub_support;

use std::collections::BTreeMap;
use std::mem::{offset_of, size_of};

use aegis_jetson::nvbuf::sys::*;
use aegis_jetson::transform::sys::*;

const RECORDED: &str = include_str!("abi/r36.3.0-lp64.txt");

fn parse(text: &str) -> BTreeMap<String, i64> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad probe line {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|e| panic!("bad value in {l:?}: {e}"));
            (key.to_string(), value)
        })
        .collect()
}

/// The same facts, from the Rust bindings.
fn rust_side() -> BTreeMap<String, i64> {
    let mut m = BTreeMap::new();
    macro_rules! layout {
        ($t:ident { $($f:ident),* $(,)? }) => {
            m.insert(format!("size {}", stringify!($t)), size_of::<$t>() as i64);
            $(m.insert(format!("offset {}.{}", stringify!($t), stringify!($f)), offset_of!($t, $f) as i64);)*
        };
    }
    macro_rules! sizes {
        ($($t:ident),*) => { $(m.insert(format!("size {}", stringify!($t)), size_of::<$t>() as i64);)* };
    }
    macro_rules! values {
        ($t:ident: $($v:ident),* $(,)?) => { $(m.insert(format!("value {}", stringify!($v)), $t::$v.0 as i64);)* };
    }
    macro_rules! consts {
        ($($v:ident),*) => { $(m.insert(format!("value {}", stringify!($v)), $v as i64);)* };
    }
    layout!(NvBufSurfacePlaneParamsEx {
        scanformat,
        secondfieldoffset,
        blockheightlog2,
        physicaladdress,
        flags,
        _reserved
    });
    layout!(NvBufSurfacePlaneParams {
        num_planes,
        width,
        height,
        pitch,
        offset,
        psize,
        bytesPerPix,
        _reserved
    });
    layout!(NvBufSurfaceChromaSubsamplingParams {
        chromaLocHoriz,
        chromaLocVert
    });
    layout!(NvBufSurfaceCreateParams {
        gpuId,
        width,
        height,
        size,
        isContiguous,
        colorFormat,
        layout,
        memType
    });
    layout!(NvBufSurfaceAllocateParams {
        params,
        displayscanformat,
        chromaSubsampling,
        memtag,
        disablePitchPadding,
        _reservedParam,
        _reserved
    });
    layout!(NvBufSurfaceMappedAddr {
        addr,
        eglImage,
        _reserved
    });
    layout!(NvBufSurfaceParamsEx {
        startofvaliddata,
        sizeofvaliddatainbytes,
        chromaSubsampling,
        is_protected,
        planeParamsex,
        _reserved
    });
    layout!(NvBufSurfaceParams {
        width,
        height,
        pitch,
        colorFormat,
        layout,
        bufferDesc,
        dataSize,
        dataPtr,
        planeParams,
        mappedAddr,
        paramex,
        _reserved
    });
    layout!(NvBufSurface {
        gpuId,
        batchSize,
        numFilled,
        isContiguous,
        memType,
        surfaceList,
        _reserved
    });
    layout!(NvBufSurfTransformRect {
        top,
        left,
        width,
        height
    });
    layout!(NvBufSurfTransformConfigParams {
        compute_mode,
        gpu_id,
        cuda_stream
    });
    layout!(NvBufSurfTransformParams {
        transform_flag,
        transform_flip,
        transform_filter,
        src_rect,
        dst_rect
    });
    sizes!(
        NvBufSurfaceColorFormat,
        NvBufSurfaceLayout,
        NvBufSurfaceMemType,
        NvBufSurfaceMemMapFlags,
        NvBufSurfaceTag,
        NvBufSurfaceDisplayScanFormat,
        NvBufSurfTransform_Compute,
        NvBufSurfTransform_Flip,
        NvBufSurfTransform_Inter,
        NvBufSurfTransform_Error,
        bool
    );
    consts!(STRUCTURE_PADDING, NVBUF_MAX_PLANES);
    values!(NvBufSurfaceMemMapFlags: NVBUF_MAP_READ, NVBUF_MAP_WRITE, NVBUF_MAP_READ_WRITE);
    values!(NvBufSurfaceTag: NvBufSurfaceTag_NONE, NvBufSurfaceTag_CAMERA, NvBufSurfaceTag_VIDEO_ENC,
        NvBufSurfaceTag_VIDEO_DEC, NvBufSurfaceTag_VIDEO_CONVERT);
    values!(NvBufSurfaceColorFormat:
        NVBUF_COLOR_FORMAT_INVALID, NVBUF_COLOR_FORMAT_GRAY8, NVBUF_COLOR_FORMAT_YUV420,
        NVBUF_COLOR_FORMAT_YVU420, NVBUF_COLOR_FORMAT_YUV420_ER, NVBUF_COLOR_FORMAT_YVU420_ER,
        NVBUF_COLOR_FORMAT_NV12, NVBUF_COLOR_FORMAT_NV12_ER, NVBUF_COLOR_FORMAT_NV21,
        NVBUF_COLOR_FORMAT_NV21_ER, NVBUF_COLOR_FORMAT_UYVY, NVBUF_COLOR_FORMAT_YUYV,
        NVBUF_COLOR_FORMAT_YUV444, NVBUF_COLOR_FORMAT_RGBA, NVBUF_COLOR_FORMAT_BGRA,
        NVBUF_COLOR_FORMAT_ARGB, NVBUF_COLOR_FORMAT_ABGR, NVBUF_COLOR_FORMAT_RGBx,
        NVBUF_COLOR_FORMAT_BGRx, NVBUF_COLOR_FORMAT_xRGB, NVBUF_COLOR_FORMAT_xBGR,
        NVBUF_COLOR_FORMAT_RGB, NVBUF_COLOR_FORMAT_BGR, NVBUF_COLOR_FORMAT_NV12_10LE,
        NVBUF_COLOR_FORMAT_YUV420_709, NVBUF_COLOR_FORMAT_YUV420_709_ER, NVBUF_COLOR_FORMAT_NV12_709,
        NVBUF_COLOR_FORMAT_NV12_709_ER, NVBUF_COLOR_FORMAT_NV12_2020);
    values!(NvBufSurfaceLayout: NVBUF_LAYOUT_PITCH, NVBUF_LAYOUT_BLOCK_LINEAR);
    values!(NvBufSurfaceMemType: NVBUF_MEM_DEFAULT, NVBUF_MEM_CUDA_PINNED, NVBUF_MEM_CUDA_DEVICE,
        NVBUF_MEM_CUDA_UNIFIED, NVBUF_MEM_SURFACE_ARRAY, NVBUF_MEM_HANDLE, NVBUF_MEM_SYSTEM);
    values!(NvBufSurfaceDisplayScanFormat: NVBUF_DISPLAYSCANFORMAT_PROGRESSIVE,
        NVBUF_DISPLAYSCANFORMAT_INTERLACED);
    values!(NvBufSurfTransform_Compute: NvBufSurfTransformCompute_Default,
        NvBufSurfTransformCompute_GPU, NvBufSurfTransformCompute_VIC);
    values!(NvBufSurfTransform_Flip: NvBufSurfTransform_None, NvBufSurfTransform_Rotate90,
        NvBufSurfTransform_Rotate180, NvBufSurfTransform_Rotate270, NvBufSurfTransform_FlipX,
        NvBufSurfTransform_FlipY, NvBufSurfTransform_Transpose, NvBufSurfTransform_InvTranspose);
    values!(NvBufSurfTransform_Inter: NvBufSurfTransformInter_Nearest,
        NvBufSurfTransformInter_Bilinear, NvBufSurfTransformInter_Algo1,
        NvBufSurfTransformInter_Algo2, NvBufSurfTransformInter_Algo3,
        NvBufSurfTransformInter_Algo4, NvBufSurfTransformInter_Default);
    values!(NvBufSurfTransform_Error: NvBufSurfTransformError_ROI_Error,
        NvBufSurfTransformError_Invalid_Params, NvBufSurfTransformError_Execution_Error,
        NvBufSurfTransformError_Unsupported, NvBufSurfTransformError_Success);
    consts!(
        NVBUFSURF_TRANSFORM_CROP_SRC,
        NVBUFSURF_TRANSFORM_CROP_DST,
        NVBUFSURF_TRANSFORM_FILTER,
        NVBUFSURF_TRANSFORM_FLIP,
        NVBUFSURF_TRANSFORM_NORMALIZE,
        NVBUFSURF_TRANSFORM_ALLOW_ODD_CROP
    );
    m
}

/// Every line of one map that the other lacks or disagrees with.
fn differences(header: &BTreeMap<String, i64>, rust: &BTreeMap<String, i64>) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in header {
        match rust.get(k) {
            Some(r) if r == v => {}
            Some(r) => out.push(format!("{k}: header {v}, Rust {r}")),
            None => out.push(format!("{k}: header {v}, not checked on the Rust side")),
        }
    }
    for (k, r) in rust {
        if !header.contains_key(k) {
            out.push(format!("{k}: Rust {r}, not in the header's output"));
        }
    }
    out
}

#[cfg(target_pointer_width = "64")]
#[test]
fn bindings_match_the_r36_headers() {
    let header = parse(RECORDED);
    assert!(header.len() > 150, "recorded probe output looks truncated");
    let diff = differences(&header, &rust_side());
    assert!(
        diff.is_empty(),
        "bindings differ from r36.3.0's headers:\n{}",
        diff.join("\n")
    );
}

/// The CUDA driver's EGL interop (`aegis_jetson::cuda_egl::sys`) against CUDA 12.6's
/// `cudaEGL.h` / `cuda.h` (JetPack 6's CUDA): `abi/probe_cuda_egl.c`'s output for x86_64 and
/// aarch64 (identical), recorded in `abi/cuda-egl-12.6-lp64.txt`.
#[cfg(target_pointer_width = "64")]
#[test]
fn cuda_egl_bindings_match_the_cuda_12_6_headers() {
    use aegis_jetson::cuda_egl::sys as egl;
    let header = parse(include_str!("abi/cuda-egl-12.6-lp64.txt"));
    let mut rust = BTreeMap::new();
    rust.insert(
        "size CUeglFrame".to_string(),
        size_of::<egl::CUeglFrame>() as i64,
    );
    macro_rules! offsets {
        ($($f:ident),*) => {
            $(rust.insert(
                format!("offset CUeglFrame.{}", stringify!($f)),
                offset_of!(egl::CUeglFrame, $f) as i64,
            );)*
        };
    }
    offsets!(
        frame,
        width,
        height,
        depth,
        pitch,
        planeCount,
        numChannels,
        frameType,
        eglColorFormat,
        cuFormat
    );
    rust.insert("size CUresult".into(), size_of::<egl::CUresult>() as i64);
    rust.insert(
        "size CUgraphicsResource".into(),
        size_of::<egl::CUgraphicsResource>() as i64,
    );
    macro_rules! values {
        ($($v:ident),*) => { $(rust.insert(format!("value {}", stringify!($v)), egl::$v as i64);)* };
    }
    values!(
        MAX_PLANES,
        CU_EGL_FRAME_TYPE_ARRAY,
        CU_EGL_FRAME_TYPE_PITCH,
        CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR,
        CU_EGL_COLOR_FORMAT_YVU420_SEMIPLANAR,
        CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_ER,
        CU_EGL_COLOR_FORMAT_YUV420_SEMIPLANAR_709,
        CU_GRAPHICS_REGISTER_FLAGS_NONE
    );
    let diff = differences(&header, &rust);
    assert!(
        diff.is_empty(),
        "bindings differ from CUDA 12.6's headers:\n{}",
        diff.join("\n")
    );
}

#[test]
#[ignore = "needs NVIDIA's r36 headers: set AEGIS_JETSON_MMAPI_INCLUDE=<jetson_multimedia_api/include> and run with --ignored"]
fn probe_matches_headers() {
    let include = std::env::var("AEGIS_JETSON_MMAPI_INCLUDE").expect("AEGIS_JETSON_MMAPI_INCLUDE");
    let dir = tempfile::tempdir().expect("temp dir");
    let exe = dir.path().join("probe");
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/abi/probe.c");
    let (_, mut cc) = stub_support::target_cc();
    let status = cc
        .args(["-I", &include, src, "-o"])
        .arg(&exe)
        .status()
        .expect("run the C compiler");
    assert!(
        status.success(),
        "probe.c did not compile against {include}"
    );
    let out = std::process::Command::new(&exe)
        .output()
        .expect("run the probe");
    let now = parse(&String::from_utf8_lossy(&out.stdout));
    let diff = differences(&now, &parse(RECORDED));
    assert!(
        diff.is_empty(),
        "{include} differs from the recorded r36.3.0 output:\n{}",
        diff.join("\n")
    );
}
