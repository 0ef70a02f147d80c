//! The CUDA backend's frames against the CPU backend's, on the GPU machine
//! (`tools/device-agent.sh` runs the ignored test): the same MP4 (H.264, and H.265 when the
//! bundle has it) decoded by NVDEC and processed by the stages on the device, downloaded
//! once, must equal the clip decoded by libavcodec and processed on the host — every pixel
//! of every frame and the same objects, for each kind of background, for moderation's blur
//! and detection's boxes — with exactly one whole-frame transfer per frame.

mod common;

use std::sync::Arc;

use aegis_hal::Frame;
use aegis_hal::analytics::ModerationAction;
use aegis_hal::image::{RgbImage, load_png};
use aegis_hal::source::{FileSource, FileSourceSettings, VideoSource};
use aegis_hal::stage::{Stage, StageOutcome};
use aegis_hal::{PixelFormat, StreamId};
use aegis_models::engine::EngineSettings;
use aegis_models::registry::{BatchSettings, LoadedModel, ModelKind, ModelSpec, load};
use aegis_models::stages::{
    Background, DetectSettings, DetectTrack, Moderation, ModerationSettings, Rule,
    VirtualBackground, VirtualBackgroundSettings,
};
use aegis_models::track::TrackerConfig;
use common::{models_dir, ort_library, repo};

const FRAMES: u64 = 24;

/// Packed Y, then Cb, then Cr, whatever the frame's layout (to compare I420 with NV12).
fn planar(f: &Frame) -> Vec<u8> {
    let (w, h) = (f.layout.width, f.layout.height);
    let (cw, ch) = (w / 2, h / 2);
    let [y, p1, p2] = f.planes();
    let mut out = Vec::with_capacity(w * h * 3 / 2);
    for r in 0..h {
        out.extend_from_slice(&y.data[r * y.stride..r * y.stride + w]);
    }
    for k in 0..2 {
        for r in 0..ch {
            for c in 0..cw {
                out.push(match f.layout.format {
                    PixelFormat::I420 => [p1, p2][k].data[r * [p1, p2][k].stride + c],
                    PixelFormat::Nv12 => p1.data[r * p1.stride + 2 * c + k],
                });
            }
        }
    }
    out
}

/// The clip's first frames; decoded by NVDEC on `gpu` when given.
fn settings(
    clip: &std::path::Path,
    id: &str,
    gpu: Option<&Arc<aegis_cuda::Gpu>>,
) -> FileSourceSettings {
    FileSourceSettings {
        max_frames: Some(FRAMES),
        gpu: gpu.map(|g| aegis_hal::backend::StreamGpu {
            gpu: g.clone(),
            nvmm: None,
        }),
        ..FileSourceSettings::new(clip, StreamId::new(id))
    }
}

/// Every frame of `src` through `chain`, downloaded at the end (as the pipeline does), packed.
fn run(src: &mut dyn VideoSource, chain: &mut [Box<dyn Stage>]) -> (Vec<Vec<u8>>, usize) {
    let (mut out, mut objects) = (Vec::new(), 0);
    while let Some(mut f) = src.next_frame().unwrap() {
        let on_device = f.device.is_some();
        let mut dropped = false;
        for stage in chain.iter_mut() {
            assert!(stage.on_device(), "{} runs on the device", stage.kind());
            dropped |= stage.process(&mut f).unwrap() == StageOutcome::Drop;
            assert_eq!(
                f.device.is_some(),
                on_device,
                "{} kept the frame",
                stage.kind()
            );
        }
        if dropped {
            continue;
        }
        objects += f.meta.objects.iter().count();
        // Counted where made: NVDEC's picture → the pooled device surface (the decoder), or
        // libavcodec's picture → the host surface; the device stages work in place.
        assert_eq!(f.copies, 1, "as decoded, after the stages");
        f.to_host().unwrap();
        // The download counts one more, only for a frame that was on the device; a second
        // `to_host` has nothing to copy and counts nothing.
        let downloaded = 1 + u32::from(on_device);
        assert_eq!(
            f.copies, downloaded,
            "after the download (on device: {on_device})"
        );
        f.to_host().unwrap();
        assert_eq!(f.copies, downloaded, "a to_host with nothing to download");
        out.push(planar(&f));
    }
    (out, objects)
}

/// The sample clips and photos: on the GPU machine the bundle's own folder
/// (tools/device-agent.sh sets `AEGIS_SAMPLES_DIR`), else `.samples`.
fn samples_dir() -> std::path::PathBuf {
    std::env::var_os("AEGIS_SAMPLES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".samples"))
}

/// A model of `just models` to load.
fn model_spec(name: &str, kind: ModelKind, file: &str, input_size: usize) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        version: 1,
        kind,
        file: models_dir().join(file),
        sha256: None,
        input_size,
        labels: None,
    }
}

struct Models {
    seg: Arc<LoadedModel>,
    nudenet: Arc<LoadedModel>,
    photo: Arc<RgbImage>,
}

/// The demo's models: the selfie segmenter and NudeNet.
fn demo_specs() -> (ModelSpec, ModelSpec) {
    (
        model_spec(
            "selfie-seg",
            ModelKind::SelfieSegmentation,
            "selfie_segmentation.onnx",
            256,
        ),
        model_spec("nudenet", ModelKind::NudeNet, "nudenet-320n.onnx", 320),
    )
}

/// The demo's two models on the CPU provider, and the astronaut as the picture background.
fn cpu_models(samples: &std::path::Path) -> Models {
    let engine = EngineSettings::cpu(&ort_library(), 1);
    let (seg, nude) = demo_specs();
    let load = |s: ModelSpec| Arc::new(load(&engine, &s, BatchSettings::default()).unwrap());
    Models {
        seg: load(seg),
        nudenet: load(nude),
        photo: Arc::new(load_png(&samples.join("astronaut.png")).unwrap()),
    }
}

fn vb(m: &Models, background: Background) -> Box<dyn Stage> {
    Box::new(VirtualBackground::new(
        &m.seg,
        VirtualBackgroundSettings {
            background,
            ..Default::default()
        },
    ))
}

/// A stage chain to compare: its name, the stages, and the whole-frame uploads it makes once
/// (a colour or picture background).
type Chain = (&'static str, Vec<Box<dyn Stage>>, usize);

/// The stage chains compared; each exercises different kernels.
fn chains(m: &Models) -> Vec<Chain> {
    let faces = || vec!["FACE_FEMALE".to_string(), "FACE_MALE".to_string()];
    let detect = DetectTrack::new(
        &m.nudenet,
        DetectSettings {
            classes: faces(),
            min_score: 0.4,
            nms_iou: 0.45,
            // Tracks from the first hit, so the boxes are drawn from the start.
            tracker: TrackerConfig {
                min_hits: 1,
                ..Default::default()
            },
            draw: true,
            every_n_frames: 1,
        },
    )
    .unwrap();
    // Faces blurred: the clip is harmless, so a face rule is what makes the blur run.
    let moderate = Moderation::new(
        &m.nudenet,
        ModerationSettings {
            every_n_frames: 1,
            rules: vec![Rule {
                classes: faces(),
                min_score: 0.3,
                action: ModerationAction::BlurRegion,
            }],
            blur_strength: 16,
        },
    )
    .unwrap();
    vec![
        (
            "blur background",
            vec![vb(m, Background::Blur { strength: 16 })],
            0,
        ),
        (
            "colour background",
            vec![vb(m, Background::Colour([0, 177, 64]))],
            1,
        ),
        (
            "picture background",
            vec![vb(m, Background::Image(m.photo.clone()))],
            1,
        ),
        (
            "moderate (face blur) + detect (boxes)",
            vec![Box::new(moderate), Box::new(detect)],
            0,
        ),
    ]
}

#[test]
#[ignore = "needs an NVIDIA GPU with NVDEC: tools/device-test.sh"]
fn device_stages_equal_the_host_stages() {
    let samples = samples_dir();
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    eprintln!("{}: kernels {}", gpu.name, gpu.ptx_source);
    let m = cpu_models(&samples);
    // The demo clip has a face from its first frame: moderation blurs it, detection boxes it.
    let mut clips = vec![samples.join("bench-720p.mp4"), samples.join("demo.mp4")];
    // H.265 in MP4 (hvcC), made on the build machine: tools/device-bundle.sh.
    if samples.join("bench-720p-hevc.mp4").exists() {
        clips.push(samples.join("bench-720p-hevc.mp4"));
    }
    for clip in &clips {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        let host_chains = chains(&m);
        let device_chains = chains(&m);
        for ((what, mut host_chain, uploads), (_, mut dev_chain, _)) in
            host_chains.into_iter().zip(device_chains)
        {
            let mut host_src = FileSource::open(settings(clip, "host", None)).unwrap();
            let (host, host_objects) = run(&mut host_src, &mut host_chain);
            let (t0, c0) = (gpu.frame_transfers(), gpu.host_copies());
            let mut dev_src = FileSource::open(settings(clip, "dev", Some(&gpu))).unwrap();
            let (device, dev_objects) = run(&mut dev_src, &mut dev_chain);
            let n = device.len() as u64;
            assert_eq!(n, FRAMES, "{name} {what}");
            assert_eq!(host.len(), device.len(), "{name} {what}");
            assert_eq!(host_objects, dev_objects, "{name} {what}: objects found");
            if name == "demo.mp4" && what.starts_with("moderate") {
                assert!(
                    host_objects > 0,
                    "the face must be found, or no box is drawn"
                );
            }
            // One download per frame; a colour or picture background goes up once.
            assert_eq!(
                gpu.frame_transfers() - t0,
                n + uploads as u64,
                "{name} {what}: whole-frame transfers"
            );
            let copies = gpu.host_copies() - c0;
            let mut differing = 0;
            for (i, (h, d)) in host.iter().zip(&device).enumerate() {
                let diff = h.iter().zip(d).filter(|(a, b)| a != b).count();
                let worst = h.iter().zip(d).map(|(a, b)| a.abs_diff(*b)).max();
                if diff > 0 {
                    differing += 1;
                    eprintln!("{name} {what}: frame {i}: {diff} bytes differ (worst by {worst:?})");
                }
            }
            eprintln!(
                "{name} {what}: {n} frames, {differing} differ, {host_objects} objects, {:.2} host transfers per frame",
                copies as f64 / n as f64
            );
            assert_eq!(differing, 0, "{name} {what}");
        }
    }
}

/// Frames lent by another API (`DeviceSurface::lent`, as a Jetson's NVMM surfaces mapped
/// for CUDA will be), at a pitch that is not the pool's: every stage chain gives the same
/// pictures and objects as on the decoder's pooled surfaces, and every frame goes back to
/// its lender once, after its last use.
#[test]
#[ignore = "needs an NVIDIA GPU with NVDEC: tools/device-test.sh"]
fn lent_device_frames_give_what_pooled_ones_give() {
    use aegis_cuda::{Lender, LentNv12, pitch_for};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    struct Slots {
        free: Mutex<Vec<u64>>,
        returned: AtomicU64,
    }
    impl Lender for Slots {
        fn give_back(&self, token: u64) {
            self.free.lock().unwrap().push(token);
            self.returned.fetch_add(1, Ordering::Relaxed);
        }
    }
    let samples = samples_dir();
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    let m = cpu_models(&samples);
    let clip = samples.join("demo.mp4");
    for ((what, mut pooled_chain, _), (_, mut lent_chain, _)) in
        chains(&m).into_iter().zip(chains(&m))
    {
        let mut src = FileSource::open(settings(&clip, "pooled", Some(&gpu))).unwrap();
        let (want, want_objects) = run(&mut src, &mut pooled_chain);
        let mut src = FileSource::open(settings(&clip, "lent", Some(&gpu))).unwrap();
        let (w, h) = (src.pool().layout().width, src.pool().layout().height);
        let pitch = pitch_for(w) + 256;
        // Luma and chroma in buffers of their own, as a Jetson's surfaces may have them
        // (nothing may find the chroma plane from the luma address).
        let buffers: Vec<_> = (0..6)
            .map(|k| {
                let rows = if k % 2 == 0 { h } else { h / 2 };
                gpu.alloc_zeros::<u8>(pitch * rows).unwrap()
            })
            .collect();
        let at: Vec<u64> = buffers
            .iter()
            .map(|b| aegis_cuda::cudarc::driver::DevicePtr::device_ptr(b, &gpu.stream).0)
            .collect();
        let slots = Arc::new(Slots {
            free: Mutex::new(vec![0, 1, 2]),
            returned: AtomicU64::new(0),
        });
        let (mut got, mut objects, mut frames) = (Vec::new(), 0, 0u64);
        while let Some(mut f) = src.next_frame().unwrap() {
            let pooled = f.device.take().expect("a device frame");
            let token = slots
                .free
                .lock()
                .unwrap()
                .pop()
                .expect("a frame was given back");
            let (y, uv) = (at[2 * token as usize], at[2 * token as usize + 1]);
            // SAFETY: the buffers hold pitch * h and pitch * h / 2 bytes and outlive the
            // frame (dropped after the loop); only this frame writes them until it is given
            // back.
            let mut lent =
                unsafe { LentNv12::new(y, uv, (w, h, pitch), token, slots.clone()) }.unwrap();
            gpu.copy_nv12(pooled.nv12(), &mut lent).unwrap();
            gpu.sync().unwrap();
            let stream_gpu = pooled.gpu().clone();
            drop(pooled);
            f.device = Some(aegis_hal::frame::DeviceSurface::lent(lent, stream_gpu));
            assert!(f.device.as_ref().unwrap().is_lent());
            for stage in lent_chain.iter_mut() {
                assert_ne!(stage.process(&mut f).unwrap(), StageOutcome::Drop);
            }
            objects += f.meta.objects.iter().count();
            f.to_host().unwrap();
            assert!(f.device.is_none(), "the download gave the frame back");
            got.push(planar(&f));
            frames += 1;
        }
        assert_eq!(frames, FRAMES, "{what}");
        assert_eq!(
            slots.returned.load(Ordering::Relaxed),
            frames,
            "{what}: each frame given back once"
        );
        assert_eq!(
            slots.free.lock().unwrap().len(),
            3,
            "{what}: every slot back"
        );
        let differ = want.iter().zip(&got).filter(|(a, b)| a != b).count();
        eprintln!(
            "{what}: {frames} lent frames, {differ} differ from the pooled ones, objects {objects} vs {want_objects}"
        );
        assert_eq!((differ, objects), (0, want_objects), "{what}");
        drop(buffers);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with NVDEC: tools/device-test.sh"]
fn device_model_inputs_equal_the_host_inputs() {
    use aegis_models::preprocess::{ChannelOrder, Fit, InputSpec, planar, planar_on_device};
    let samples = samples_dir();
    let clip = samples.join("bench-720p.mp4");
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    let mut host_src = FileSource::open(settings(&clip, "host", None)).unwrap();
    let mut dev_src = FileSource::open(settings(&clip, "dev", Some(&gpu))).unwrap();
    for seq in 0..3 {
        let host = host_src.next_frame().unwrap().unwrap();
        let dev = dev_src.next_frame().unwrap().unwrap();
        for spec in [
            // Selfie segmentation, NudeNet, YOLOv8.
            (256, ChannelOrder::Rgb, Fit::Stretch),
            (320, ChannelOrder::Bgr, Fit::PadBottomRight),
            (640, ChannelOrder::Rgb, Fit::Centred { pad: 114.0 / 255.0 }),
        ]
        .map(|(s, order, fit)| InputSpec {
            width: s,
            height: s,
            order,
            fit,
        }) {
            let n = 3 * spec.width * spec.height;
            let mut want = vec![0f32; n];
            let lb_host = planar(&host, spec, &mut want).unwrap();
            let mut got = vec![0f32; n];
            let mut scratch = gpu.alloc_zeros::<f32>(n).unwrap();
            let lb_dev = planar_on_device(&dev, spec, &mut scratch, &mut got).unwrap();
            assert_eq!(lb_host, lb_dev);
            let differ = want
                .iter()
                .zip(&got)
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
            eprintln!("frame {seq} {spec:?}: {differ} of {n} values differ");
            assert_eq!(differ, 0, "frame {seq} {spec:?}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU: tools/device-gpu-inference.sh"]
fn gpu_candidate_lists_decode_as_the_host_tensor_does() {
    use aegis_models::geometry::Letterbox;
    use aegis_models::yolo::{CANDIDATE, CandidateError, decode, decode_candidates, nms};
    let gpu = aegis_cuda::Gpu::open(0, None).expect("a GPU");
    // NudeNet's shape: 18 classes, 2,100 anchors. Scores from a fixed generator, a few
    // anchors high; ties across classes (the first class wins) and across anchors (NMS keeps
    // the first) on purpose.
    let (classes, n) = (18, 2100);
    let mut t = vec![0f32; (4 + classes) * n];
    let mut x: u32 = 0x2545_f491;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x as f32 / u32::MAX as f32
    };
    for a in 0..n {
        t[a] = next() * 320.0;
        t[n + a] = next() * 320.0;
        t[2 * n + a] = 4.0 + next() * 80.0;
        t[3 * n + a] = 4.0 + next() * 80.0;
        for c in 0..classes {
            let hot = next() < 0.003;
            t[(4 + c) * n + a] = if hot {
                0.2 + next() * 0.8
            } else {
                next() * 0.19
            };
        }
    }
    for a in [7, 900, 1500] {
        t[(4 + 3) * n + a] = 0.75;
        t[(4 + 11) * n + a] = 0.75;
    }
    let lb = Letterbox::top_left(1920, 1080, 320);
    let mut want = Vec::new();
    decode(&t, classes, 0.2, lb, &mut want).unwrap();
    assert!((40..200).contains(&want.len()), "{} candidates", want.len());
    let dev = gpu.upload(&t).unwrap();
    for cap in [256, 8] {
        let mut cand = gpu.alloc_zeros::<f32>(1 + cap * CANDIDATE).unwrap();
        let mut list = vec![0f32; cand.len()];
        // Twice into the same list: the count is reset, not added to.
        for _ in 0..2 {
            gpu.yolo_candidates(&dev, classes, 0.2, &mut cand).unwrap();
        }
        gpu.download_results(&cand, &mut list).unwrap();
        assert_eq!(aegis_cuda::yolo_candidate_count(&list), Some(want.len()));
        let mut got = Vec::new();
        match decode_candidates(&mut list, classes, lb, &mut got) {
            Ok(()) => {
                assert_eq!(got, want, "cap {cap}");
                let (mut a, mut b) = (got.clone(), want.clone());
                nms(&mut a, 0.45, true);
                nms(&mut b, 0.45, true);
                assert_eq!(a, b);
            }
            Err(CandidateError::Cut { count, cap: c }) => {
                assert_eq!((count, c), (want.len(), cap), "cap {cap}");
                assert!(cap < want.len());
            }
            Err(e) => panic!("cap {cap}: {e}"),
        }
    }
    assert!(gpu.result_transfers() >= 2);
    eprintln!(
        "GPU candidate lists: {} anchors, identical to the host decode",
        want.len()
    );
}

/// Sessions that capture CUDA graphs while other threads use the GPU, as a pipeline switch
/// does (`inference.cuda_graph`): ONNX Runtime captures in CUDA's global mode, where a
/// "potentially unsafe" call of another thread fails. One thread does what a stream or a
/// starting stream does (allocate, pin host memory, upload, a kernel, download, wait),
/// another calls an already captured graph session, while this thread loads NudeNet with
/// a graph six times (each load captures on the new session's thread). Without
/// `AEGIS_CUDA_STRICT_CAPTURE` the backend's threads are in the relaxed mode and none of
/// their calls may fail; with it (the default mode) the failures are counted, to show what
/// the relaxed mode is for.
#[test]
#[ignore = "needs a GPU and ONNX Runtime's CUDA provider (AEGIS_ORT_GPU_LIBRARY): tools/device-gpu-inference.sh"]
fn graph_captures_do_not_fail_other_threads() {
    use aegis_models::engine::Provider;
    use aegis_models::gpu_io::{DeviceItem, device_ptr, device_ptr_mut};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let lib = gpu_ort_library();
    let strict = std::env::var_os(aegis_cuda::STRICT_CAPTURE_ENV).is_some();
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    let graphs = EngineSettings {
        provider: Provider::Cuda { device: 0 },
        cuda_graph: true,
        ..EngineSettings::cpu(&lib, 1)
    };
    let one = BatchSettings {
        max_batch: 1,
        ..BatchSettings::default()
    };
    let (seg, nude) = demo_specs();
    let seg_model = Arc::new(load(&graphs, &seg, one).unwrap());
    assert!(seg_model.cuda_graph());
    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new([
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    ]);
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let note = |e: String, first: &std::sync::Mutex<Option<String>>| {
        first.lock().unwrap().get_or_insert(e);
    };
    let frames = {
        let (gpu, stop, counts, first) = (
            gpu.fork().unwrap(),
            stop.clone(),
            counts.clone(),
            first_error.clone(),
        );
        std::thread::spawn(move || {
            let mut host = vec![7u8; 1920 * 1080 * 3 / 2];
            while !stop.load(Ordering::Relaxed) {
                let r = (|| -> Result<(), aegis_cuda::CudaError> {
                    let pinned = gpu.pin_host(&mut host)?;
                    let mut frame = gpu.alloc_nv12(1920, 1080)?;
                    gpu.upload_nv12(&host[..1920 * 1080 * 3 / 2], &mut frame)?;
                    let mut input = gpu.alloc_zeros::<f32>(3 * 256 * 256)?;
                    gpu.preprocess(&frame, &mut input, 256, 256)?;
                    let back = gpu.download(&input)?;
                    gpu.sync()?;
                    drop(pinned);
                    assert_eq!(back.len(), 3 * 256 * 256);
                    Ok(())
                })();
                counts[0].fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    counts[1].fetch_add(1, Ordering::Relaxed);
                    note(format!("stream work: {e}"), &first);
                }
            }
        })
    };
    let calls = {
        let (gpu, stop, counts, first, model) = (
            gpu.fork().unwrap(),
            stop.clone(),
            counts.clone(),
            first_error.clone(),
            seg_model.clone(),
        );
        // Made here, before any capture (in the strict mode an allocation could fail).
        let input = gpu.alloc_zeros::<f32>(3 * 256 * 256).unwrap();
        let mut output = gpu.alloc_zeros::<f32>(256 * 256).unwrap();
        std::thread::spawn(move || {
            let mut client = model.client();
            while !stop.load(Ordering::Relaxed) {
                let item = DeviceItem {
                    input: device_ptr(&input, &gpu.stream),
                    output: device_ptr_mut(&mut output, &gpu.stream),
                    output_len: 256 * 256,
                };
                let r = client.run_device(item).map(|_| ());
                counts[2].fetch_add(1, Ordering::Relaxed);
                if let Err(e) = r {
                    counts[3].fetch_add(1, Ordering::Relaxed);
                    note(format!("graph session call: {e}"), &first);
                }
            }
        })
    };
    let mut loads = 0;
    for _ in 0..6 {
        match load(&graphs, &nude, one) {
            Ok(m) => {
                assert!(m.cuda_graph());
                loads += 1;
            }
            Err(e) => note(format!("load while streams run: {e}"), &first_error),
        }
    }
    stop.store(true, Ordering::Relaxed);
    frames.join().unwrap();
    calls.join().unwrap();
    let n = |k: usize| counts[k].load(Ordering::Relaxed);
    eprintln!(
        "strict capture mode: {strict}; {loads} of 6 loads with a graph; stream work {} rounds, {} failed; graph session {} calls, {} failed; first error: {:?}",
        n(0),
        n(1),
        n(2),
        n(3),
        first_error.lock().unwrap()
    );
    if !strict {
        assert_eq!(
            (loads, n(1), n(3)),
            (6, 0, 0),
            "{:?}",
            first_error.lock().unwrap()
        );
        assert!(n(0) > 0 && n(2) > 0, "the other threads ran");
    }
}

/// ONNX Runtime with the CUDA provider on the GPU machine (`tools/device-agent.sh` sets it
/// to the pruned pip build it carries: docs/cuda.md).
fn gpu_ort_library() -> std::path::PathBuf {
    std::env::var_os("AEGIS_ORT_GPU_LIBRARY")
        .map(std::path::PathBuf::from)
        .expect("AEGIS_ORT_GPU_LIBRARY names ONNX Runtime with the CUDA provider")
}

/// `img` (cropped to even size) as an NV12 frame, on the host and the same pixels on the GPU:
/// the CPU converter for the host, the bit-exact kernel for the device.
fn photo_frames(gpu: &Arc<aegis_cuda::Gpu>, img: &RgbImage) -> (Frame, Frame) {
    use aegis_hal::pixel::{Matrix, Plane, rgb24_to_nv12};
    use aegis_hal::{FrameLayout, SurfacePool};
    let (w, h) = (img.width & !1, img.height & !1);
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::Nv12, w, h), 2);
    let mut host = Frame::from_pool(&pool, StreamId::new("photo"), 0, 0, 0).unwrap();
    {
        let [y, uv, _] = host.planes_mut();
        rgb24_to_nv12(
            Plane::new(&img.data, img.width * 3),
            w,
            h,
            Matrix::Bt601,
            y,
            uv,
        )
        .unwrap();
    }
    let mut dev = Frame::from_pool(&pool, StreamId::new("photo"), 0, 0, 0).unwrap();
    let dpool = Arc::new(aegis_cuda::DevicePool::new(gpu, w, h, 1).unwrap());
    let mut nv12 = dpool.acquire().unwrap();
    let rgb = gpu.upload(&img.data).unwrap();
    gpu.rgb_to_nv12(&rgb, img.width * 3, &mut nv12).unwrap();
    gpu.sync().unwrap();
    dev.device = Some(aegis_hal::frame::DeviceSurface::new(
        nv12,
        dpool,
        gpu.clone(),
    ));
    (host, dev)
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// Models on the GPU (ONNX Runtime's CUDA provider, device I/O binding) against the same
/// models on its CPU provider (same library): the segmenter's raw mask on six photos (max
/// |Δ| ≤ 1e-2, IoU of the person masks ≥ 0.99), NudeNet's detections on them (same classes,
/// box IoU ≥ 0.9, scores ± 0.02), and the stage chains on the clips with the host transfers
/// counted: virtual background reads and writes only device memory (1.00 whole-frame
/// transfer per frame, nothing else); detection downloads the list of anchors worth decoding
/// that a kernel makes from the model's output, not the output or the input. With
/// `AEGIS_CUDA_GRAPH` set, the GPU sessions replay CUDA graphs (`inference.cuda_graph`).
#[test]
#[ignore = "needs a GPU and ONNX Runtime's CUDA provider (AEGIS_ORT_GPU_LIBRARY): tools/device-agent.sh runs it in a process of its own"]
fn gpu_engine_matches_the_cpu_engine() {
    use aegis_models::engine::Provider;
    use aegis_models::gpu_io::{DeviceItem, device_ptr, device_ptr_mut};
    use aegis_models::preprocess::{ChannelOrder, Fit, InputSpec, planar};
    use aegis_models::stages::detector::Detector;
    let samples = samples_dir();
    let lib = gpu_ort_library();
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    eprintln!("{}: ONNX Runtime {}", gpu.name, lib.display());
    let cpu = EngineSettings::cpu(&lib, 0);
    let cuda = EngineSettings {
        provider: Provider::Cuda { device: 0 },
        cuda_graph: std::env::var_os("AEGIS_CUDA_GRAPH").is_some(),
        ..EngineSettings::cpu(&lib, 1)
    };
    eprintln!("CUDA graphs: {}", cuda.cuda_graph);
    let (seg, nude) = demo_specs();
    let load =
        |e: &EngineSettings, s: &ModelSpec| Arc::new(load(e, s, BatchSettings::default()).unwrap());
    let (seg_cpu, seg_gpu) = (load(&cpu, &seg), load(&cuda, &seg));
    let (nude_cpu, nude_gpu) = (load(&cpu, &nude), load(&cuda, &nude));
    assert_eq!((seg_gpu.provider, nude_gpu.provider), ("cuda", "cuda"));
    assert_eq!(
        (seg_gpu.cuda_graph(), nude_gpu.cuda_graph()),
        (cuda.cuda_graph, cuda.cuda_graph),
        "CUDA graphs as asked for"
    );
    let (mut c_cpu, mut c_gpu) = (seg_cpu.client(), seg_gpu.client());
    assert!(c_gpu.on_device() && !c_cpu.on_device());

    let s = 256;
    let seg_spec = InputSpec {
        width: s,
        height: s,
        order: ChannelOrder::Rgb,
        fit: Fit::Stretch,
    };
    let mut d_in = gpu.alloc_zeros::<f32>(3 * s * s).unwrap();
    let mut d_out = gpu.alloc_zeros::<f32>(s * s).unwrap();
    let photos = [
        "astronaut.png",
        "chelsea.png",
        "coffee.png",
        "motorcycle_left.png",
        "rocket.png",
        "hubble_deep_field.png",
    ];
    let mut compared = 0;
    for name in photos {
        let path = samples.join(name);
        if !path.exists() {
            eprintln!("{name}: not in the bundle");
            continue;
        }
        let img = load_png(&path).unwrap();
        let (host, dev) = photo_frames(&gpu, &img);
        // The segmenter: one input, both engines.
        planar(&host, seg_spec, c_cpu.input(3 * s * s)).unwrap();
        let input = c_cpu.input(3 * s * s).to_vec();
        let want = c_cpu.run().unwrap().0.to_vec();
        gpu.upload_into(&input, &mut d_in).unwrap();
        gpu.sync().unwrap();
        let item = DeviceItem {
            input: device_ptr(&d_in, &gpu.stream),
            output: device_ptr_mut(&mut d_out, &gpu.stream),
            output_len: s * s,
        };
        let shape = c_gpu.run_device(item).unwrap().to_vec();
        assert_eq!(shape.iter().product::<usize>(), s * s);
        let got = gpu.download(&d_out).unwrap();
        let max = want
            .iter()
            .zip(&got)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let (mut inter, mut union) = (0usize, 0usize);
        for (a, b) in want.iter().zip(&got) {
            let (a, b) = (*a >= 0.5, *b >= 0.5);
            inter += usize::from(a && b);
            union += usize::from(a || b);
        }
        let mask_iou = if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        };
        eprintln!("{name}: mask max |Δ| {max:.2e}, person-mask IoU {mask_iou:.5} ({union} px)");
        assert!(max <= 1e-2 && mask_iou >= 0.99, "{name}");
        // NudeNet: the host frame through the CPU engine, the device frame through the GPU.
        let mut det_cpu = Detector::new(&nude_cpu);
        let mut det_gpu = Detector::new(&nude_gpu);
        let want: Vec<_> = det_cpu.detect(&host).unwrap().to_vec();
        let got: Vec<_> = det_gpu.detect(&dev).unwrap().to_vec();
        eprintln!(
            "{name}: {} detections on the CPU, {} on the GPU",
            want.len(),
            got.len()
        );
        assert_eq!(want.len(), got.len(), "{name}: detections");
        for (w, g) in want.iter().zip(&got) {
            let (w, g) = (w.object, g.object);
            let box_iou = iou(w.bbox, g.bbox);
            eprintln!(
                "  {} {:.3} vs {} {:.3}, IoU {box_iou:.4}",
                w.label, w.score, g.label, g.score
            );
            assert_eq!(w.class, g.class, "{name}");
            assert!(
                box_iou >= 0.9 && (w.score - g.score).abs() <= 0.02,
                "{name}"
            );
        }
        compared += 1;
    }
    assert!(compared >= 5, "only {compared} photos compared");

    // The stage chains on the clips: every frame, objects and transfers.
    let photo = Arc::new(load_png(&samples.join("astronaut.png")).unwrap());
    let host_models = Models {
        seg: seg_cpu.clone(),
        nudenet: nude_cpu.clone(),
        photo: photo.clone(),
    };
    let gpu_models = Models {
        seg: seg_gpu.clone(),
        nudenet: nude_gpu.clone(),
        photo,
    };
    for clip in [samples.join("bench-720p.mp4"), samples.join("demo.mp4")] {
        let name = clip.file_name().unwrap().to_string_lossy().to_string();
        for ((what, mut host_chain, uploads), (_, mut dev_chain, _)) in
            chains(&host_models).into_iter().zip(chains(&gpu_models))
        {
            let mut host_src = FileSource::open(settings(&clip, "host", None)).unwrap();
            let (host, host_objects) = run(&mut host_src, &mut host_chain);
            let (t0, c0, r0) = (
                gpu.frame_transfers(),
                gpu.host_copies(),
                gpu.result_transfers(),
            );
            let mut dev_src = FileSource::open(settings(&clip, "dev", Some(&gpu))).unwrap();
            let (device, dev_objects) = run(&mut dev_src, &mut dev_chain);
            let n = device.len() as u64;
            assert_eq!((n, host.len() as u64), (FRAMES, FRAMES), "{name} {what}");
            let frames = gpu.frame_transfers() - t0;
            let copies = gpu.host_copies() - c0;
            let results = gpu.result_transfers() - r0;
            let (mut differing, mut worst) = (0, 0u8);
            for (h, d) in host.iter().zip(&device) {
                let w = h
                    .iter()
                    .zip(d)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max()
                    .unwrap_or(0);
                differing += usize::from(w > 0);
                worst = worst.max(w);
            }
            eprintln!(
                "{name} {what}: {n} frames, {differing} differ (worst by {worst}), objects {host_objects} vs {dev_objects}, {:.2} whole-frame, {:.2} result-list and {:.2} host transfers per frame",
                frames as f64 / n as f64,
                results as f64 / n as f64,
                copies as f64 / n as f64
            );
            assert_eq!(frames, n + uploads as u64, "{name} {what}");
            if what.contains("background") {
                // The model's input and output never leave the GPU.
                assert_eq!(copies, frames, "{name} {what}: only whole frames cross");
            } else {
                // Moderation and detection: the frame, and each detector's candidate list
                // (its output tensor only where the list was cut: none on these clips).
                assert_eq!(results, 2 * n, "{name} {what}: one list per detector call");
                assert_eq!(copies, frames + results, "{name} {what}: no tensor crosses");
            }
            assert_eq!(host_objects, dev_objects, "{name} {what}: objects found");
            if what.contains("background") {
                // Probabilities a few 1e-6 apart move the 8-bit mask by a step at most.
                assert!(worst <= 8, "{name} {what}: a pixel differs by {worst}");
            }
        }
    }
}
