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
        path: clip.to_path_buf(),
        stream: StreamId::new(id),
        looping: false,
        realtime: false,
        max_frames: Some(FRAMES),
        pool_frames: 4,
        decoder_threads: 1,
        gpu: gpu.cloned(),
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

struct Models {
    seg: Arc<LoadedModel>,
    nudenet: Arc<LoadedModel>,
    photo: Arc<RgbImage>,
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
    // On the GPU machine the bundle's own folder (tools/device-agent.sh sets it).
    let samples = std::env::var_os("AEGIS_SAMPLES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".samples"));
    let gpu = Arc::new(aegis_cuda::Gpu::open(0, None).expect("a GPU"));
    eprintln!("{}: kernels {}", gpu.name, gpu.ptx_source);
    let engine = EngineSettings::cpu(&ort_library(), 1);
    let spec = |name: &str, kind, file: &str, input_size| ModelSpec {
        name: name.into(),
        version: 1,
        kind,
        file: models_dir().join(file),
        sha256: None,
        input_size,
        labels: None,
    };
    let load = |s: ModelSpec| Arc::new(load(&engine, &s, BatchSettings::default()).unwrap());
    let m = Models {
        seg: load(spec(
            "selfie-seg",
            ModelKind::SelfieSegmentation,
            "selfie_segmentation.onnx",
            256,
        )),
        nudenet: load(spec(
            "nudenet",
            ModelKind::NudeNet,
            "nudenet-320n.onnx",
            320,
        )),
        photo: Arc::new(load_png(&samples.join("astronaut.png")).unwrap()),
    };
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

#[test]
#[ignore = "needs an NVIDIA GPU with NVDEC: tools/device-test.sh"]
fn device_model_inputs_equal_the_host_inputs() {
    use aegis_models::preprocess::{ChannelOrder, Fit, InputSpec, planar, planar_on_device};
    let samples = std::env::var_os("AEGIS_SAMPLES_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo().join(".samples"));
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
