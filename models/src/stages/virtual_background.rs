//! The virtual-background stage: MediaPipe selfie segmentation → temporally smoothed,
//! feathered person mask → composite over an image, a blur of the frame or a colour.

use std::sync::Arc;

use aegis_cuda::{CudaSlice, DeviceNv12};
use aegis_hal::image::RgbImage;
use aegis_hal::pixel::{Matrix, Plane, PlaneMut, rgb24_to_i420, scale_i420, scale_plane};
use aegis_hal::stage::{Stage, StageError, StageOutcome};
use aegis_hal::{Frame, PixelFormat};

use super::pixels::{BgPlanes, composite, rgb_to_yuv};
use super::{BuildError, BuildStage, loaded_model};
use crate::batch::BatchClient;
use crate::gpu_io::{DeviceItem, device_ptr, device_ptr_mut};
use crate::preprocess::{ChannelOrder, Fit, InputSpec, planar, planar_in_device, planar_on_device};
use crate::registry::{LoadedModel, Registry};

/// What replaces the background.
#[derive(Debug, Clone)]
pub enum Background {
    /// A picture, stretched to the frame.
    Image(Arc<RgbImage>),
    /// The frame itself, blurred (`strength` = downscale factor, 2..=64).
    Blur {
        /// Strength.
        strength: usize,
    },
    /// A solid sRGB colour.
    Colour([u8; 3]),
}

/// Settings of the stage.
#[derive(Debug, Clone)]
pub struct VirtualBackgroundSettings {
    /// The replacement.
    pub background: Background,
    /// Temporal smoothing 0..1: how much of the previous mask an uncertain pixel keeps
    /// (pixels the model is sure about follow at once, so motion does not lag).
    pub smoothing: f32,
    /// Feather radius in mask pixels (box blur of the 256×256 mask; 0 = hard edge).
    pub feather: usize,
    /// Mask values below this are background, above `1 - threshold` person; in between
    /// they blend linearly.
    pub threshold: f32,
}

impl Default for VirtualBackgroundSettings {
    fn default() -> Self {
        VirtualBackgroundSettings {
            background: Background::Blur { strength: 16 },
            smoothing: 0.6,
            feather: 2,
            threshold: 0.25,
        }
    }
}

/// Person segmentation and background replacement for one stream.
pub struct VirtualBackground {
    client: BatchClient,
    size: usize,
    settings: VirtualBackgroundSettings,
    prev: Vec<f32>,
    have_prev: bool,
    device: Option<DeviceBuffers>,
    feathered: Vec<f32>,
    tmp: Vec<f32>,
    mask: Vec<u8>,
    alpha_y: Vec<u8>,
    alpha_c: Vec<u8>,
    bg: BgPlanes,
    small: Vec<u8>,
    person_fraction: f32,
}

fn err(error_type: &'static str, message: String) -> StageError {
    StageError {
        stage: "virtual_background",
        error_type,
        message,
    }
}

impl BuildStage for aegis_config::VirtualBackgroundStage {
    fn build(&self, models: &Registry) -> Result<Box<dyn Stage>, BuildError> {
        let background = if let Some(path) = &self.image {
            Background::Image(Arc::new(
                aegis_hal::image::load_png(path).map_err(BuildError::BackgroundImage)?,
            ))
        } else if let Some(c) = &self.colour {
            Background::Colour(
                aegis_config::parse_colour(c).ok_or_else(|| BuildError::BadColour(c.clone()))?,
            )
        } else {
            Background::Blur {
                strength: self.blur.unwrap_or(16) as usize,
            }
        };
        Ok(Box::new(VirtualBackground::new(
            &*loaded_model(models, &self.model)?,
            VirtualBackgroundSettings {
                background,
                smoothing: self.smoothing,
                feather: self.feather as usize,
                threshold: self.threshold,
            },
        )))
    }
}

/// Separable box blur of a `s`×`s` float image, radius `r`, through `tmp`.
fn box_blur(img: &mut [f32], tmp: &mut Vec<f32>, s: usize, r: usize) {
    if r == 0 {
        return;
    }
    tmp.resize(s * s, 0.0);
    let norm = 1.0 / (2 * r + 1) as f32;
    // Horizontal into tmp, vertical back; edges clamp.
    for y in 0..s {
        let row = &img[y * s..(y + 1) * s];
        for x in 0..s {
            let mut acc = 0.0;
            for k in 0..=2 * r {
                acc += row[(x + k).saturating_sub(r).min(s - 1)];
            }
            tmp[y * s + x] = acc * norm;
        }
    }
    for y in 0..s {
        for x in 0..s {
            let mut acc = 0.0;
            for k in 0..=2 * r {
                acc += tmp[(y + k).saturating_sub(r).min(s - 1) * s + x];
            }
            img[y * s + x] = acc * norm;
        }
    }
}

impl VirtualBackground {
    /// The stage over a loaded selfie-segmentation model.
    pub fn new(model: &LoadedModel, settings: VirtualBackgroundSettings) -> Self {
        let size = model.spec.input_size;
        VirtualBackground {
            client: model.client(),
            size,
            settings,
            prev: vec![0.0; size * size],
            have_prev: false,
            device: None,
            feathered: Vec::new(),
            tmp: Vec::new(),
            mask: vec![0; size * size],
            alpha_y: Vec::new(),
            alpha_c: Vec::new(),
            bg: BgPlanes::default(),
            small: Vec::new(),
            person_fraction: 0.0,
        }
    }

    /// Share of the last host frame's mask that is person (for tests and health).
    pub fn person_fraction(&self) -> f32 {
        self.person_fraction
    }

    /// The last mask of a host frame (`size`×`size`, 0 = background, 255 = person), after
    /// smoothing and feathering (a device frame's mask stays on the GPU).
    pub fn mask(&self) -> (&[u8], usize) {
        (&self.mask, self.size)
    }

    /// The segmenter's input: RGB, stretched, corner-aligned (MediaPipe's mapping).
    fn spec(&self) -> InputSpec {
        InputSpec {
            width: self.size,
            height: self.size,
            order: ChannelOrder::Rgb,
            fit: Fit::Stretch,
        }
    }

    /// Runs the model and leaves the smoothed, feathered mask in `self.mask`.
    fn segment(&mut self, frame: &Frame) -> Result<(), StageError> {
        let s = self.size;
        let spec = self.spec();
        planar(frame, spec, self.client.input(3 * s * s))
            .map_err(|e| err("preprocess", e.to_string()))?;
        self.infer_mask()
    }

    /// Runs the model on the input already in the batch client; leaves the smoothed,
    /// feathered mask in `self.mask`.
    fn infer_mask(&mut self) -> Result<(), StageError> {
        let s = self.size;
        let (out, _) = self
            .client
            .run()
            .map_err(|e| err("inference", e.to_string()))?;
        mask_len_ok(out.len(), s)?;
        let ratio = self.settings.smoothing.clamp(0.0, 1.0);
        for (m, &p) in self.prev.iter_mut().zip(out) {
            *m = if self.have_prev {
                // Uncertainty 1 at p = 0.5, 0 at p = 0 or 1.
                let u = 1.0 - (2.0 * p - 1.0).abs();
                p + (*m - p) * ratio * u
            } else {
                p
            };
        }
        self.have_prev = true;
        self.feathered.clear();
        self.feathered.extend_from_slice(&self.prev);
        box_blur(&mut self.feathered, &mut self.tmp, s, self.settings.feather);
        let lo = self.settings.threshold.clamp(0.0, 0.49);
        let hi = 1.0 - lo;
        let mut person = 0usize;
        for (a, &m) in self.mask.iter_mut().zip(&self.feathered) {
            let t = ((m - lo) / (hi - lo)).clamp(0.0, 1.0);
            *a = (t * 255.0 + 0.5) as u8;
            person += usize::from(*a >= 128);
        }
        self.person_fraction = person as f32 / (s * s) as f32;
        Ok(())
    }

    /// Makes `self.bg` the background for `frame` (size and format).
    fn prepare_background(&mut self, frame: &Frame) -> Result<(), StageError> {
        let (w, h, format) = (frame.layout.width, frame.layout.height, frame.layout.format);
        let fresh = self.bg.size == (w, h) && self.bg.format == Some(format);
        match &self.settings.background {
            Background::Blur { strength } => {
                self.bg.copy_from(frame);
                self.bg.blur((*strength).max(2), &mut self.small);
            }
            Background::Colour(rgb) if !fresh => self.bg.fill(w, h, format, rgb_to_yuv(*rgb)),
            Background::Image(img) if !fresh => {
                self.bg = image_planes(img, w, h, format)
                    .map_err(|e| err("background", e.to_string()))?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// The segmenter's output must be one value per mask pixel.
fn mask_len_ok(len: usize, s: usize) -> Result<(), StageError> {
    if len == s * s {
        return Ok(());
    }
    Err(err(
        "inference",
        format!("mask has {len} values, expected {}", s * s),
    ))
}

/// The background picture cannot be converted to the frame's layout.
#[derive(Debug, thiserror::Error)]
pub enum BackgroundImageError {
    /// Less than 2×2 pixels.
    #[error("the background image is empty")]
    Empty,
    /// The colour conversion refused the picture.
    #[error(transparent)]
    Convert(#[from] aegis_hal::pixel::PixelError),
}

/// The picture converted to the frame's size and layout (once per size).
fn image_planes(
    img: &RgbImage,
    w: usize,
    h: usize,
    format: PixelFormat,
) -> Result<BgPlanes, BackgroundImageError> {
    let (iw, ih) = (img.width & !1, img.height & !1);
    if iw == 0 || ih == 0 {
        return Err(BackgroundImageError::Empty);
    }
    let (icw, ich) = (iw / 2, ih / 2);
    let (mut y, mut u, mut v) = (vec![0; iw * ih], vec![0; icw * ich], vec![0; icw * ich]);
    rgb24_to_i420(
        Plane::new(&img.data, img.width * 3),
        iw,
        ih,
        Matrix::Bt601,
        PlaneMut::new(&mut y, iw),
        PlaneMut::new(&mut u, icw),
        PlaneMut::new(&mut v, icw),
    )?;
    let (cw, ch) = (w / 2, h / 2);
    let mut out = BgPlanes {
        size: (w, h),
        format: Some(format),
        y: vec![0; w * h],
        c: vec![0; 2 * cw * ch],
    };
    let (ou, ov) = out.c.split_at_mut(cw * ch);
    scale_i420(
        (Plane::new(&y, iw), Plane::new(&u, icw), Plane::new(&v, icw)),
        iw,
        ih,
        (
            PlaneMut::new(&mut out.y, w),
            PlaneMut::new(ou, cw),
            PlaneMut::new(ov, cw),
        ),
        w & !1,
        h & !1,
    )?;
    if format == PixelFormat::Nv12 {
        let planar = out.c.clone();
        for i in 0..cw * ch {
            out.c[2 * i] = planar[i];
            out.c[2 * i + 1] = planar[cw * ch + i];
        }
    }
    Ok(out)
}

/// GPU buffers of the stage (CUDA backend), allocated on the first device frame and again
/// only when the frame size changes.
struct DeviceBuffers {
    /// Model input, `3*s*s` floats.
    input: CudaSlice<f32>,
    /// The segmenter's output, `s*s` person probabilities.
    prob: CudaSlice<f32>,
    /// The temporally smoothed mask (state across frames) and the blur's scratch, `s*s`.
    prev: CudaSlice<f32>,
    tmp: CudaSlice<f32>,
    /// `prev` holds a previous frame's mask.
    have_prev: bool,
    /// The mask, `s*s`.
    mask: CudaSlice<u8>,
    /// The background at frame size (the blurred frame, a colour or the picture).
    bg: DeviceNv12,
    /// The blur's shrunken copy.
    scratch: CudaSlice<u8>,
    /// A colour or picture background is in `bg` (it is made once per size).
    bg_ready: bool,
}

fn gpu_err(e: aegis_cuda::CudaError) -> StageError {
    err("gpu", e.to_string())
}

impl VirtualBackground {
    /// The same operations as [`Stage::process`] on the host, on a frame whose pixels are
    /// on the GPU: preprocess, mask refinement and composite run as kernels, and the frame
    /// stays. An engine on the GPU reads the model input and writes the probabilities in
    /// device memory (nothing crosses to the host); a host engine gets the input downloaded
    /// and its output uploaded.
    fn process_on_device(&mut self, frame: &mut Frame) -> Result<(), StageError> {
        let s = self.size;
        let Some(dev) = frame.device.as_ref() else {
            return Err(err("gpu", "frame is not on the device".into()));
        };
        let (w, h) = dev.size();
        let fits = self
            .device
            .as_ref()
            .is_some_and(|d| (d.bg.width, d.bg.height) == (w, h));
        if !fits {
            let gpu = dev.gpu();
            self.device = Some(DeviceBuffers {
                input: gpu.alloc_zeros(3 * s * s).map_err(gpu_err)?,
                prob: gpu.alloc_zeros(s * s).map_err(gpu_err)?,
                prev: gpu.alloc_zeros(s * s).map_err(gpu_err)?,
                tmp: gpu.alloc_zeros(s * s).map_err(gpu_err)?,
                have_prev: false,
                mask: gpu.alloc_zeros(s * s).map_err(gpu_err)?,
                bg: gpu.alloc_nv12(w, h).map_err(gpu_err)?,
                scratch: gpu.alloc_zeros(w * h).map_err(gpu_err)?,
                bg_ready: false,
            });
        }
        let spec = self.spec();
        let d = self.device.as_mut().expect("allocated above");
        let pre = |e: crate::preprocess::PreprocessError| err("preprocess", e.to_string());
        let infer = |e: crate::engine::EngineError| err("inference", e.to_string());
        if self.client.on_device() {
            planar_in_device(frame, spec, &mut d.input).map_err(pre)?;
            let gpu = dev.gpu();
            // The engine reads the input on its own stream: the kernel must be done.
            gpu.sync().map_err(gpu_err)?;
            let item = DeviceItem {
                input: device_ptr(&d.input, &gpu.stream),
                output: device_ptr_mut(&mut d.prob, &gpu.stream),
                output_len: s * s,
            };
            let shape = self.client.run_device(item).map_err(infer)?;
            mask_len_ok(shape.iter().product(), s)?;
        } else {
            planar_on_device(frame, spec, &mut d.input, self.client.input(3 * s * s))
                .map_err(pre)?;
            let (out, _) = self.client.run().map_err(infer)?;
            mask_len_ok(out.len(), s)?;
            dev.gpu().upload_into(out, &mut d.prob).map_err(gpu_err)?;
        }
        let (nv12, gpu) = frame.device.as_mut().expect("checked above").parts();
        gpu.mask_refine(
            &d.prob,
            &mut d.prev,
            &mut d.tmp,
            &mut d.mask,
            s,
            self.settings.smoothing.clamp(0.0, 1.0),
            d.have_prev,
            self.settings.feather,
            self.settings.threshold.clamp(0.0, 0.49),
        )
        .map_err(gpu_err)?;
        d.have_prev = true;
        match &self.settings.background {
            Background::Blur { strength } => {
                gpu.copy_nv12(nv12, &mut d.bg).map_err(gpu_err)?;
                gpu.blur_rect(&mut d.bg, 0, 0, w, h, (*strength).max(2), &mut d.scratch)
                    .map_err(gpu_err)?;
            }
            Background::Colour(_) | Background::Image(_) if !d.bg_ready => {
                // Made on the host exactly as the CPU path makes it, uploaded once.
                let planes = match &self.settings.background {
                    Background::Image(img) => image_planes(img, w, h, PixelFormat::Nv12)
                        .map_err(|e| err("background", e.to_string()))?,
                    Background::Colour(rgb) => {
                        let mut p = BgPlanes::default();
                        p.fill(w, h, PixelFormat::Nv12, rgb_to_yuv(*rgb));
                        p
                    }
                    Background::Blur { .. } => unreachable!("matched above"),
                };
                let packed = [planes.y, planes.c].concat();
                gpu.upload_nv12(&packed, &mut d.bg).map_err(gpu_err)?;
                d.bg_ready = true;
            }
            _ => {}
        }
        gpu.composite(nv12, &d.bg, &d.mask, s).map_err(gpu_err)?;
        frame.meta.background_replaced = true;
        Ok(())
    }
}

impl Stage for VirtualBackground {
    fn kind(&self) -> &'static str {
        "virtual_background"
    }

    fn on_device(&self) -> bool {
        true
    }

    fn process(&mut self, frame: &mut Frame) -> Result<StageOutcome, StageError> {
        if frame.device.is_some() {
            self.process_on_device(frame)?;
            return Ok(StageOutcome::Keep);
        }
        self.segment(frame)?;
        self.prepare_background(frame)?;
        let (w, h) = (frame.layout.width, frame.layout.height);
        let (cw, ch) = (w / 2, h / 2);
        let s = self.size;
        self.alpha_y.resize(w * h, 0);
        self.alpha_c.resize(cw * ch, 0);
        let up = |dst: &mut [u8], dw: usize, dh: usize| {
            scale_plane(
                Plane::new(&self.mask, s),
                s,
                s,
                PlaneMut::new(dst, dw),
                dw,
                dh,
            )
            .map_err(|e| err("pixel", e.to_string()))
        };
        up(&mut self.alpha_y, w, h)?;
        up(&mut self.alpha_c, cw, ch)?;
        composite(frame, &self.bg, &self.alpha_y, &self.alpha_c);
        frame.meta.background_replaced = true;
        Ok(StageOutcome::Keep)
    }
}
