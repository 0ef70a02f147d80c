//! The dlopen path, the wrappers' call order and error handling, against C stand-ins for
//! libnvbufsurface / libnvbufsurftransform (`tests/stub/`, host memory behind the r36 ABI),
//! compiled here with the target's C compiler (build.rs names it; aarch64-linux-gnu-gcc under
//! tools/cross-test.sh). What this cannot show: how NVIDIA's libraries behave on a Jetson.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use aegis_jetson::cuda_egl::{CUDA_LIB, EglFrameError};
use aegis_jetson::nvbuf::{
    ColorFormat, Layout, LoadError, MapMode, MemType, NVBUFSURFACE_LIB, NvBufSurfaceLib,
    R36_LIB_DIR, Surface, SurfaceError, SurfaceSpec, Tag,
};
use aegis_jetson::transform::{
    Compute, Filter, NVBUFSURFTRANSFORM_LIB, Rect, Transform, TransformError, TransformLib,
    TransformSpec, TransformStatus,
};
mod stub_support;

use stub_support::{Stub, names};

#[test]
fn surface_lifecycle_map_write_sync_unmap_destroy() {
    let stub = Stub::new();
    let lib = stub.surfaces();
    assert_eq!(lib.path(), stub.path().join(NVBUFSURFACE_LIB));
    let spec = SurfaceSpec {
        tag: Tag::VideoDecoder,
        ..SurfaceSpec::nvmm(70, 30, ColorFormat::Nv12)
    };
    let mut surface = Surface::new(&lib, &spec).expect("allocate");
    assert_eq!((surface.width(), surface.height()), (70, 30));
    assert_eq!(surface.color_format(), Some(ColorFormat::Nv12));
    assert_eq!(surface.layout(), Layout::Pitch);
    assert_eq!(surface.num_planes(), 2);
    let luma = surface.plane(0).expect("plane 0");
    let chroma = surface.plane(1).expect("plane 1");
    // The stand-in pads rows to 64 bytes: the wrapper must report the library's pitch.
    assert_eq!(
        (luma.width, luma.height, luma.pitch, luma.bytes_per_pixel),
        (70, 30, 128, 1)
    );
    assert_eq!(
        (
            chroma.width,
            chroma.height,
            chroma.pitch,
            chroma.bytes_per_pixel
        ),
        (35, 15, 128, 2)
    );
    assert!(chroma.offset >= luma.pitch * luma.height);
    assert!(surface.plane(2).is_err());

    let pattern = |plane: usize, x: u32, y: u32| (plane as u32 * 100 + 7 * x + 3 * y) as u8;
    for plane in 0..2 {
        let info = surface.plane(plane).expect("plane");
        let mode = if plane == 0 {
            MapMode::ReadWrite
        } else {
            MapMode::Write
        };
        let mut map = surface.map_plane(plane, mode).expect("map for writing");
        let bytes = map.as_mut_slice().expect("writable mapping");
        for y in 0..info.height {
            for x in 0..info.width * info.bytes_per_pixel {
                bytes[(y * info.pitch + x) as usize] = pattern(plane, x, y);
            }
        }
        map.release().expect("sync and unmap");
    }

    // The codec side: the same buffer found from its DMA-buf fd, read back, not destroyed.
    let fd = surface.fd();
    {
        // SAFETY: the fd belongs to `surface`, which outlives this block.
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut view = Surface::from_fd(&lib, borrowed).expect("surface from fd");
        assert_eq!((view.width(), view.height()), (70, 30));
        let map = view.map_plane(0, MapMode::Read).expect("map for reading");
        let mut map = map;
        assert!(
            map.as_mut_slice().is_none(),
            "a read mapping must not be writable"
        );
        let bytes = map.as_slice();
        for y in 0..luma.height {
            for x in 0..luma.width {
                assert_eq!(
                    bytes[(y * luma.pitch + x) as usize],
                    pattern(0, x, y),
                    "luma at {x},{y}"
                );
            }
        }
    }
    drop(surface);

    let log = stub.log(NVBUFSURFACE_LIB);
    assert_eq!(
        log,
        [
            "NvBufSurfaceAllocate(70x30 format=6 layout=0 mem=4 tag=0x1400)".to_string(),
            "NvBufSurfaceMap(0,0,2)".into(),
            "NvBufSurfaceSyncForCpu(0,0)".into(),
            "NvBufSurfaceSyncForDevice(0,0)".into(),
            "NvBufSurfaceUnMap(0,0)".into(),
            "NvBufSurfaceMap(0,1,1)".into(),
            "NvBufSurfaceSyncForCpu(0,1)".into(),
            "NvBufSurfaceSyncForDevice(0,1)".into(),
            "NvBufSurfaceUnMap(0,1)".into(),
            format!("NvBufSurfaceFromFd({fd})"),
            "NvBufSurfaceMap(0,0,0)".into(),
            "NvBufSurfaceSyncForCpu(0,0)".into(),
            // A read mapping is not synced for the device, and the fd's view destroys nothing.
            "NvBufSurfaceUnMap(0,0)".into(),
            format!("NvBufSurfaceDestroy(fd={fd} mapped_planes=0 egl=0)"),
        ]
    );
}

#[test]
fn dropped_mappings_and_egl_images_are_released_in_order() {
    let stub = Stub::new();
    let lib = stub.surfaces();
    let mut surface =
        Surface::new(&lib, &SurfaceSpec::nvmm(32, 16, ColorFormat::Rgba)).expect("allocate");
    {
        let mut map = surface.map_plane(0, MapMode::Write).expect("map");
        map.as_mut_slice().expect("writable")[0] = 1;
        // Dropped without release(): still synced for the device, then unmapped.
    }
    {
        let image = surface.map_egl_image().expect("EGL image");
        assert!(!image.as_ptr().is_null());
    }
    let image = surface.map_egl_image().expect("EGL image again");
    image.release().expect("destroy the EGL image");
    drop(surface);
    assert_eq!(
        names(&stub.log(NVBUFSURFACE_LIB)),
        [
            "NvBufSurfaceAllocate",
            "NvBufSurfaceMap",
            "NvBufSurfaceSyncForCpu",
            "NvBufSurfaceSyncForDevice",
            "NvBufSurfaceUnMap",
            "NvBufSurfaceMapEglImage",
            "NvBufSurfaceUnMapEglImage",
            "NvBufSurfaceMapEglImage",
            "NvBufSurfaceUnMapEglImage",
            "NvBufSurfaceDestroy",
        ]
    );
}

/// The CUDA side of Orin's zero-copy route, against the libcuda stand-in: an NVMM surface's
/// EGL image registered and mapped as two pitched planes, unregistered when dropped and on
/// every failure; frames that are not pitch-linear NV12 refused; driver errors named with
/// the call and the driver's own text.
#[test]
fn an_egl_image_maps_for_cuda_as_pitched_nv12_and_is_always_unregistered() {
    let stub = Stub::new();
    let lib = stub.surfaces();
    let cuda = stub.cuda();
    let hooks = stub.hooks(CUDA_LIB);
    // SAFETY: the hooks' signatures in tests/stub/cuda_egl.c.
    let (live, format) = unsafe {
        (
            *hooks
                .get::<unsafe extern "C" fn() -> i32>(b"aegis_stub_live")
                .expect("aegis_stub_live"),
            *hooks
                .get::<unsafe extern "C" fn(i32, i32, i32)>(b"aegis_stub_frame_format")
                .expect("aegis_stub_frame_format"),
        )
    };
    // SAFETY: plain C functions of the stand-in, which stays loaded (`hooks`).
    let live = || unsafe { live() };
    let mut surface =
        Surface::new(&lib, &SurfaceSpec::nvmm(64, 48, ColorFormat::Nv12)).expect("allocate");
    let (luma, chroma) = (surface.plane(0).unwrap(), surface.plane(1).unwrap());
    let image = surface.map_egl_image().expect("EGL image");
    {
        let m = cuda.map_nv12(&image).expect("mapped");
        assert_eq!((m.size(), m.pitch()), ((64, 48), luma.pitch as usize));
        assert_eq!(
            m.uv() - m.y(),
            u64::from(chroma.offset - luma.offset),
            "the surface's planes, where the surface has them"
        );
        assert_eq!(m.color_format(), 0x01);
        assert_eq!(live(), 1);
        // The mapped frame is the surface's memory: a write through it (here the host
        // addresses the stand-in hands out) is what the surface holds.
        // SAFETY: the stand-in's "device" address is a shared mapping of the surface's
        // memfd, at least one pitch long, alive until `m` is dropped.
        unsafe { std::ptr::write_bytes(m.uv() as *mut u8, 0x5a, 4) };
    }
    assert_eq!(live(), 0, "unregistered when dropped");
    drop(image);
    {
        let cpu = surface.map_plane(1, MapMode::Read).expect("map CbCr");
        assert_eq!(cpu.as_slice()[..5], [0x5a, 0x5a, 0x5a, 0x5a, 0]);
    }
    let image = surface.map_egl_image().expect("EGL image");
    // A block-linear surface maps as an array frame, which the kernels cannot address.
    let tiled = Surface::new(
        &lib,
        &SurfaceSpec {
            layout: Layout::BlockLinear,
            ..SurfaceSpec::nvmm(64, 48, ColorFormat::Nv12)
        },
    )
    .expect("allocate");
    let tiled_image = tiled.map_egl_image().expect("EGL image");
    let e = cuda.map_nv12(&tiled_image).err().expect("refused");
    assert!(
        matches!(e, EglFrameError::NotNv12 { frame_type: 0, .. }),
        "{e}"
    );
    drop(tiled_image);
    // Block-linear (array) frames, NV21 and three planes are not what the kernels take.
    for (kind, planes, fmt) in [(0, 2, 0x01), (1, 2, 0x15), (1, 3, 0x01), (1, 1, 0x01)] {
        // SAFETY: as above.
        unsafe { format(kind, planes, fmt) };
        let e = cuda.map_nv12(&image).err().expect("refused");
        assert!(matches!(e, EglFrameError::NotNv12 { .. }), "{e}");
        assert!(e.to_string().contains("pitch-linear NV12"), "{e}");
        assert_eq!(live(), 0, "a refused frame is unregistered too");
    }
    // SAFETY: as above. BT.709 NV12 is taken.
    unsafe { format(1, 2, 0x57) };
    assert_eq!(cuda.map_nv12(&image).expect("BT.709").color_format(), 0x57);
    for (call, text) in [
        (
            "cuGraphicsEGLRegisterImage",
            "cuGraphicsEGLRegisterImage failed: CUDA error 1 (invalid argument)",
        ),
        (
            "cuGraphicsResourceGetMappedEglFrame",
            "cuGraphicsResourceGetMappedEglFrame failed: CUDA error 400 (invalid resource handle)",
        ),
    ] {
        stub.fail_next(CUDA_LIB, call);
        let e = cuda.map_nv12(&image).err().expect("the driver's refusal");
        assert_eq!(e.to_string(), text);
        assert_eq!(live(), 0, "{call}: nothing left registered");
    }
    drop(image);
    let log = stub.log(CUDA_LIB);
    assert_eq!(
        names(&log)[..3],
        [
            "cuGraphicsEGLRegisterImage",
            "cuGraphicsResourceGetMappedEglFrame",
            "cuGraphicsUnregisterResource"
        ]
    );
    assert!(cuda.path().ends_with(CUDA_LIB));
}

/// Fills plane `plane` of `surface` row by row from `value(x, y)` (x in bytes).
fn fill(surface: &mut Surface, plane: usize, value: impl Fn(u32, u32) -> u8) {
    let info = surface.plane(plane).expect("plane");
    let mut map = surface.map_plane(plane, MapMode::Write).expect("map");
    let bytes = map.as_mut_slice().expect("writable");
    for y in 0..info.height {
        for x in 0..info.width * info.bytes_per_pixel {
            bytes[(y * info.pitch + x) as usize] = value(x, y);
        }
    }
    map.release().expect("release");
}

/// Plane `plane` of `surface` without row padding.
fn read(surface: &mut Surface, plane: usize) -> Vec<u8> {
    let info = surface.plane(plane).expect("plane");
    let map = surface.map_plane(plane, MapMode::Read).expect("map");
    let row = (info.width * info.bytes_per_pixel) as usize;
    map.as_slice()
        .chunks(info.pitch as usize)
        .take(info.height as usize)
        .flat_map(|r| r[..row].to_vec())
        .collect()
}

#[test]
fn transform_scales_a_cropped_source_into_a_destination_rectangle() {
    let stub = Stub::new();
    let (lib, xlib) = (stub.surfaces(), stub.transforms());
    let mut src = Surface::new(&lib, &SurfaceSpec::nvmm(8, 4, ColorFormat::Gray8)).expect("src");
    let mut dst = Surface::new(&lib, &SurfaceSpec::nvmm(8, 8, ColorFormat::Gray8)).expect("dst");
    fill(&mut src, 0, |x, y| (10 * y + x) as u8);
    fill(&mut dst, 0, |_, _| 0xee);
    let spec = TransformSpec {
        src_rect: Some(Rect {
            left: 2,
            top: 1,
            width: 4,
            height: 2,
        }),
        dst_rect: Some(Rect {
            left: 0,
            top: 2,
            width: 8,
            height: 4,
        }),
        filter: Some(Filter::Nearest),
        flip: None,
    };
    Transform::new(xlib.clone(), Compute::Vic)
        .apply(&src, &mut dst, &spec)
        .expect("transform");
    let out = read(&mut dst, 0);
    for y in 0..8u32 {
        for x in 0..8u32 {
            let want = if (2..6).contains(&y) {
                (10 * (1 + (y - 2) / 2) + 2 + x / 2) as u8 // 2x up-scale of the crop
            } else {
                0xee // outside the destination rectangle: untouched
            };
            assert_eq!(out[(y * 8 + x) as usize], want, "pixel {x},{y}");
        }
    }
    assert_eq!(
        stub.log(NVBUFSURFTRANSFORM_LIB),
        [
            "NvBufSurfTransformSetSessionParams(compute=2 gpu=0)",
            "NvBufSurfTransform(flag=0x7 flip=0 filter=0 src=2,1+4x2 dst=0,2+8x4 session=2)",
        ]
    );
}

#[test]
fn transform_converts_nv12_to_rgba() {
    let stub = Stub::new();
    let (lib, xlib) = (stub.surfaces(), stub.transforms());
    // Five 2x2 blocks of BT.601 limited-range colours: black, white, red, green, blue.
    let yuv: [(u8, u8, u8); 5] = [
        (16, 128, 128),
        (235, 128, 128),
        (81, 90, 240),
        (145, 54, 34),
        (41, 240, 110),
    ];
    let rgb: [[u8; 3]; 5] = [
        [0, 0, 0],
        [255, 255, 255],
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
    ];
    let mut src = Surface::new(&lib, &SurfaceSpec::nvmm(10, 2, ColorFormat::Nv12)).expect("src");
    let mut dst = Surface::new(&lib, &SurfaceSpec::nvmm(10, 2, ColorFormat::Rgba)).expect("dst");
    fill(&mut src, 0, |x, _| yuv[x as usize / 2].0);
    fill(&mut src, 1, |x, _| {
        let (_, u, v) = yuv[x as usize / 2];
        if x % 2 == 0 { u } else { v }
    });
    Transform::new(xlib.clone(), Compute::Default)
        .apply(&src, &mut dst, &TransformSpec::default())
        .expect("convert");
    let out = read(&mut dst, 0);
    for y in 0..2usize {
        for x in 0..10usize {
            let px = &out[(y * 10 + x) * 4..][..4];
            let want = rgb[x / 2];
            for c in 0..3 {
                assert!(
                    px[c].abs_diff(want[c]) <= 3,
                    "pixel {x},{y}: got {px:?}, want about {want:?}"
                );
            }
            assert_eq!(px[3], 255, "alpha at {x},{y}");
        }
    }
    let log = stub.log(NVBUFSURFTRANSFORM_LIB);
    assert_eq!(
        log[0],
        "NvBufSurfTransformSetSessionParams(compute=0 gpu=0)"
    );
    assert!(
        log[1].starts_with("NvBufSurfTransform(flag=0 flip=0 filter=6 "),
        "{log:?}"
    );
}

#[test]
fn transform_refuses_rectangles_outside_the_surface_before_calling() {
    let stub = Stub::new();
    let (lib, xlib) = (stub.surfaces(), stub.transforms());
    let src = Surface::new(&lib, &SurfaceSpec::nvmm(16, 16, ColorFormat::Nv12)).expect("src");
    let mut dst = Surface::new(&lib, &SurfaceSpec::nvmm(8, 8, ColorFormat::Rgba)).expect("dst");
    let transform = Transform::new(xlib, Compute::Vic);
    for rect in [
        Rect {
            left: 10,
            top: 0,
            width: 8,
            height: 4,
        },
        Rect {
            left: 0,
            top: 0,
            width: 0,
            height: 4,
        },
        Rect {
            left: u32::MAX,
            top: 0,
            width: 2,
            height: 2,
        },
    ] {
        let spec = TransformSpec {
            src_rect: Some(rect),
            ..TransformSpec::default()
        };
        match transform.apply(&src, &mut dst, &spec) {
            Err(TransformError::Rect {
                which: "source",
                width: 16,
                height: 16,
                ..
            }) => {}
            other => panic!("{rect:?}: {other:?}"),
        }
    }
    assert!(stub.log(NVBUFSURFTRANSFORM_LIB).is_empty());
}

#[test]
fn failing_calls_are_typed_errors_naming_the_call() {
    let stub = Stub::new();
    let (lib, xlib) = (stub.surfaces(), stub.transforms());
    let spec = SurfaceSpec::nvmm(64, 32, ColorFormat::Nv12);

    stub.fail_next(NVBUFSURFACE_LIB, "NvBufSurfaceAllocate");
    let err = Surface::new(&lib, &spec).expect_err("allocation fails");
    assert!(
        matches!(
            err,
            SurfaceError::Call {
                call: "NvBufSurfaceAllocate",
                code: -1,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("NvBufSurfaceAllocate(64x32 Nv12 Pitch SurfaceArray)"),
        "{err}"
    );

    let mut surface = Surface::new(&lib, &spec).expect("allocate");
    stub.fail_next(NVBUFSURFACE_LIB, "NvBufSurfaceMap");
    let err = surface.map_plane(1, MapMode::Read).expect_err("map fails");
    assert_eq!(
        err.to_string(),
        "NvBufSurfaceMap(buffer 0, plane 1) failed (returned -1)"
    );

    // A failed sync after a successful map unmaps before reporting.
    stub.fail_next(NVBUFSURFACE_LIB, "NvBufSurfaceSyncForCpu");
    let err = surface.map_plane(0, MapMode::Read).expect_err("sync fails");
    assert!(
        matches!(
            err,
            SurfaceError::Call {
                call: "NvBufSurfaceSyncForCpu",
                ..
            }
        ),
        "{err:?}"
    );

    stub.fail_next(NVBUFSURFACE_LIB, "NvBufSurfaceSyncForDevice");
    let map = surface.map_plane(0, MapMode::Write).expect("map");
    let err = map.release().expect_err("sync for device fails");
    assert!(
        matches!(
            err,
            SurfaceError::Call {
                call: "NvBufSurfaceSyncForDevice",
                ..
            }
        ),
        "{err:?}"
    );

    // EGL images exist for NVMM memory only.
    let system = Surface::new(
        &lib,
        &SurfaceSpec {
            mem: MemType::System,
            ..spec
        },
    )
    .expect("system memory");
    let err = system
        .map_egl_image()
        .expect_err("no EGL image of system memory");
    assert!(
        matches!(
            err,
            SurfaceError::Call {
                call: "NvBufSurfaceMapEglImage",
                ..
            }
        ),
        "{err:?}"
    );

    // SAFETY: stdin stays open for the call; the stand-in knows no surface behind it.
    let err =
        Surface::from_fd(&lib, unsafe { BorrowedFd::borrow_raw(0) }).expect_err("not a surface fd");
    assert!(
        matches!(
            err,
            SurfaceError::Call {
                call: "NvBufSurfaceFromFd",
                ..
            }
        ),
        "{err:?}"
    );

    let mut rgba = Surface::new(&lib, &SurfaceSpec::nvmm(32, 16, ColorFormat::Rgba)).expect("rgba");
    stub.fail_next(NVBUFSURFTRANSFORM_LIB, "NvBufSurfTransform");
    let err = Transform::new(xlib.clone(), Compute::Vic)
        .apply(&surface, &mut rgba, &TransformSpec::default())
        .expect_err("transform fails");
    assert!(
        matches!(
            err,
            TransformError::Call {
                call: "NvBufSurfTransform",
                status: TransformStatus::Execution,
                ..
            }
        ),
        "{err:?}"
    );
    let flipped = TransformSpec {
        flip: Some(aegis_jetson::transform::Flip::Rotate90),
        ..TransformSpec::default()
    };
    let err = Transform::new(xlib, Compute::Vic)
        .apply(&surface, &mut rgba, &flipped)
        .expect_err("the stand-in cannot flip");
    assert!(
        err.to_string()
            .starts_with("NvBufSurfTransform failed: unsupported feature or format"),
        "{err}"
    );

    let log = stub.log(NVBUFSURFACE_LIB);
    let n = names(&log);
    let sync = n
        .iter()
        .position(|c| *c == "NvBufSurfaceSyncForCpu")
        .expect("sync logged");
    assert_eq!(
        n[sync - 1..=sync + 1],
        [
            "NvBufSurfaceMap",
            "NvBufSurfaceSyncForCpu",
            "NvBufSurfaceUnMap"
        ]
    );
    let dev = n
        .iter()
        .position(|c| *c == "NvBufSurfaceSyncForDevice")
        .expect("sync logged");
    assert_eq!(
        n[dev + 1],
        "NvBufSurfaceUnMap",
        "unmapped even though the sync failed"
    );
}

#[test]
fn a_library_without_an_r36_symbol_is_refused_by_name() {
    let stub = Stub::variant(true);
    let err = NvBufSurfaceLib::load(Some(stub.path())).expect_err("symbol missing");
    match &err {
        LoadError::MissingSymbol {
            library,
            path,
            symbol,
            ..
        } => {
            assert_eq!(
                (*library, *symbol),
                (NVBUFSURFACE_LIB, "NvBufSurfaceSyncForDevice")
            );
            assert_eq!(path, &stub.path().join(NVBUFSURFACE_LIB));
        }
        other => panic!("{other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("has no symbol NvBufSurfaceSyncForDevice") && msg.contains("r36"),
        "{msg}"
    );
}

/// Whether NVIDIA's library is installed here (a Jetson): then "nothing installed" cannot be
/// tested, only that the explicit directory was tried first.
fn installed(lib: &str) -> bool {
    Path::new(R36_LIB_DIR).join(lib).exists()
}

#[test]
fn missing_libraries_name_every_place_tried_and_the_package() {
    let empty = tempfile::tempdir().expect("temp dir");
    for dir in [Some(empty.path()), None] {
        let err = NvBufSurfaceLib::load(dir).err();
        check_not_found(
            NVBUFSURFACE_LIB,
            dir,
            err,
            [
                "nvidia-l4t-multimedia-utils",
                "tegra-libraries-multimedia-utils",
            ],
        );
        let err = TransformLib::load(dir).err();
        check_not_found(
            NVBUFSURFTRANSFORM_LIB,
            dir,
            err,
            [
                "nvidia-l4t-multimedia package",
                "tegra-libraries-multimedia)",
            ],
        );
    }
}

/// `err`, from loading `lib` with `dir`, lists the places tried in order and names `packages`.
fn check_not_found(lib: &str, dir: Option<&Path>, err: Option<LoadError>, packages: [&str; 2]) {
    if installed(lib) {
        eprintln!("{lib} is installed in {R36_LIB_DIR}: not testing its absence");
        return;
    }
    let err = err.unwrap_or_else(|| panic!("{lib} loaded from {dir:?} on a machine without it"));
    let LoadError::NotFound { library, tried, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(*library, lib);
    let mut places: Vec<PathBuf> = dir.map(|d| d.join(lib)).into_iter().collect();
    places.push(Path::new(R36_LIB_DIR).join(lib));
    places.push(PathBuf::from(lib));
    assert_eq!(tried.len(), places.len(), "{tried:?}");
    for (t, p) in tried.iter().zip(&places) {
        assert!(
            t.starts_with(&format!("{}: ", p.display())),
            "{t} vs {}",
            p.display()
        );
    }
    let msg = err.to_string();
    for p in packages {
        assert!(msg.contains(p), "{msg} does not name {p}");
    }
}
