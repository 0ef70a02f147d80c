//! `aegis sample`: makes test clips with known ground truth, encoded by our own encoder.
//!
//! The clip is a [`aegis_hal::synth::SyntheticScene`]: a panning background (a photo from a
//! package, e.g. scikit-image's `astronaut.png` fetched by `just setup`, or a procedural
//! texture) with moving objects. Next to `clip.mp4` goes `clip.mp4.truth.json` with every
//! object's box in every frame.

use std::io::Write;
use std::path::{Path, PathBuf};

use aegis_hal::codec::EncoderSettings;
use aegis_hal::frame::{FrameLayout, PixelFormat};
use aegis_hal::image::load_png;
use aegis_hal::record::ClipWriter;
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{Frame, StreamId, SurfacePool};
use anyhow::Context;

/// What to generate (also the `aegis sample` arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct SampleSpec {
    /// Output MP4.
    #[arg(long)]
    pub out: PathBuf,
    /// Frame width in pixels (even).
    #[arg(long, default_value_t = DEFAULT_WIDTH)]
    pub width: usize,
    /// Frame height in pixels (even).
    #[arg(long, default_value_t = DEFAULT_HEIGHT)]
    pub height: usize,
    /// Length in seconds.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    pub seconds: f64,
    /// Frames per second.
    #[arg(long, default_value_t = DEFAULT_FPS)]
    pub fps: u32,
    /// Moving objects.
    #[arg(long, default_value_t = DEFAULT_OBJECTS)]
    pub objects: usize,
    /// Random seed.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Background photo (PNG) to pan across; a procedural texture when absent.
    #[arg(long)]
    pub background: Option<PathBuf>,
    /// Encoder bitrate in kbit/s.
    #[arg(long, default_value_t = DEFAULT_BITRATE_KBPS)]
    pub bitrate_kbps: u32,
}

impl SampleSpec {
    /// The command-line defaults (720p, 10 s, 30 fps, 4 objects) writing to `out`.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        SampleSpec {
            out: out.into(),
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            seconds: DEFAULT_SECONDS,
            fps: DEFAULT_FPS,
            objects: DEFAULT_OBJECTS,
            seed: DEFAULT_SEED,
            background: None,
            bitrate_kbps: DEFAULT_BITRATE_KBPS,
        }
    }
}

const DEFAULT_WIDTH: usize = 1280;
const DEFAULT_HEIGHT: usize = 720;
const DEFAULT_SECONDS: f64 = 10.0;
const DEFAULT_FPS: u32 = 30;
const DEFAULT_OBJECTS: usize = 4;
const DEFAULT_SEED: u64 = 1;
const DEFAULT_BITRATE_KBPS: u32 = 4000;

/// The ground-truth file next to a clip.
pub fn truth_path(clip: &Path) -> PathBuf {
    PathBuf::from(format!("{}.truth.json", clip.display()))
}

/// Generates the clip and its ground truth; returns the number of frames.
pub fn generate(spec: &SampleSpec) -> anyhow::Result<u64> {
    aegis_hal::init();
    if !spec.width.is_multiple_of(2)
        || !spec.height.is_multiple_of(2)
        || spec.width < 16
        || spec.height < 16
    {
        anyhow::bail!(
            "--width/--height must be even and at least 16 (got {}x{})",
            spec.width,
            spec.height
        );
    }
    if !spec.seconds.is_finite() || spec.seconds <= 0.0 || spec.fps == 0 {
        anyhow::bail!("--seconds and --fps must be positive");
    }
    let background = match &spec.background {
        Some(p) => Some(load_png(p).with_context(|| "loading --background")?),
        None => None,
    };
    if let Some(dir) = spec.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let layout = FrameLayout::new(PixelFormat::I420, spec.width, spec.height);
    let pool = SurfacePool::new(layout, 2);
    let mut scene = SyntheticScene::new(
        spec.width,
        spec.height,
        spec.objects,
        spec.seed,
        background.as_ref(),
    );
    let settings = EncoderSettings {
        preset: "medium".into(),
        bitrate_kbps: spec.bitrate_kbps,
        gop_frames: spec.fps * 2,
        threads: 0,
        frame_rate: (spec.fps as i32, 1),
        low_latency: false,
        profile: None,
    };
    let mut writer = ClipWriter::create(&spec.out, &settings, layout)
        .with_context(|| format!("creating {}", spec.out.display()))?;
    let frames = (spec.seconds * spec.fps as f64).round() as u64;
    let frame_us = 1_000_000 / spec.fps as i64;
    let stream = StreamId::new("sample");
    let truth_file = truth_path(&spec.out);
    let mut truth = std::io::BufWriter::new(
        std::fs::File::create(&truth_file)
            .with_context(|| format!("creating {}", truth_file.display()))?,
    );
    write!(
        truth,
        "{{\"width\":{},\"height\":{},\"fps\":{},\"frames\":[",
        spec.width, spec.height, spec.fps
    )?;
    for i in 0..frames {
        let mut frame = Frame::from_pool(&pool, stream.clone(), i, i as i64 * frame_us, frame_us)?;
        let boxes = scene.render(&mut frame);
        writer.push(&mut frame)?;
        let objects: Vec<_> = boxes
            .iter()
            .map(|b| {
                serde_json::json!({"id": b.id, "class": b.class, "x": b.x, "y": b.y, "w": b.w, "h": b.h})
            })
            .collect();
        if i > 0 {
            truth.write_all(b",")?;
        }
        let entry = serde_json::json!({"index": i, "pts_us": frame.pts_us, "objects": objects});
        truth.write_all(entry.to_string().as_bytes())?;
    }
    truth.write_all(b"]}\n")?;
    truth.flush()?;
    writer.finish()?;
    Ok(frames)
}
