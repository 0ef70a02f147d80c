//! A YOLOv8-style detector over a shared model: NudeNet's or Ultralytics' preprocessing,
//! decode, NMS, labels; results as frame-metadata [`Object`]s. Every buffer is reused.

use aegis_hal::Frame;
use aegis_hal::analytics::{Object, ObjectSource};

use crate::batch::BatchClient;
use crate::engine::EngineError;
use crate::gpu_io::{DeviceItem, device_ptr, device_ptr_mut};
use crate::preprocess::{ChannelOrder, Fit, InputSpec, planar, planar_in_device, planar_on_device};
use crate::registry::{LoadedModel, ModelKind};
use crate::yolo::{CANDIDATE, CandidateError, Detected, decode, decode_candidates, nms};

/// Anchors a detector's GPU candidate list holds (7 KiB). NudeNet's 2,100 anchors on the
/// demo's clips give a few dozen over its decode threshold; a frame with more (a cut list)
/// downloads the whole output instead.
const CANDIDATES: usize = 256;

/// One detection with its label.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// As frame metadata (source `Detect`, no track yet).
    pub object: Object,
    /// The raw detection.
    pub raw: Detected,
}

/// Decode and NMS thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Anchors below this best-class score are skipped while decoding.
    pub decode_min: f32,
    /// Detections below this are dropped before NMS.
    pub min_score: f32,
    /// NMS IoU.
    pub iou: f64,
    /// NMS across classes.
    pub agnostic: bool,
}

impl Thresholds {
    /// NudeNet 3.4's own values (decode 0.2, keep 0.25, class-agnostic IoU 0.45).
    pub const NUDENET: Thresholds = Thresholds {
        decode_min: 0.2,
        min_score: 0.25,
        iou: 0.45,
        agnostic: true,
    };
    /// Ultralytics' prediction defaults (0.25, per-class IoU 0.7).
    pub const ULTRALYTICS: Thresholds = Thresholds {
        decode_min: 0.25,
        min_score: 0.25,
        iou: 0.7,
        agnostic: false,
    };
}

/// A detector for one stream.
pub struct Detector {
    client: BatchClient,
    spec: InputSpec,
    labels: Vec<&'static str>,
    /// Thresholds in use.
    pub thresholds: Thresholds,
    raw: Vec<Detected>,
    found: Vec<Found>,
    /// The model file (named in errors).
    model: std::path::PathBuf,
    /// The model input on the GPU, for frames that are there (CUDA backend).
    device_input: Option<aegis_cuda::CudaSlice<f32>>,
    /// The model output on the GPU (an engine that reads and writes device memory), the
    /// list of its anchors worth decoding that a kernel makes from it, and their host
    /// copies (the whole output comes down only when the list is cut).
    device_output: Option<aegis_cuda::CudaSlice<f32>>,
    device_candidates: Option<aegis_cuda::CudaSlice<f32>>,
    host_candidates: Vec<f32>,
    host_output: Vec<f32>,
    /// Floats of one item's output.
    output_len: usize,
}

impl Detector {
    /// A detector over `model` (a NudeNet or YOLOv8 kind) with the model kind's thresholds.
    pub fn new(model: &LoadedModel) -> Self {
        let s = model.spec.input_size;
        let (order, fit, thresholds) = match model.spec.kind {
            ModelKind::NudeNet => (ChannelOrder::Bgr, Fit::PadBottomRight, Thresholds::NUDENET),
            _ => (
                ChannelOrder::Rgb,
                Fit::Centred { pad: 114.0 / 255.0 },
                Thresholds::ULTRALYTICS,
            ),
        };
        Detector {
            model: model.spec.file.clone(),
            client: model.client(),
            spec: InputSpec {
                width: s,
                height: s,
                order,
                fit,
            },
            labels: model.labels.clone(),
            thresholds,
            raw: Vec::new(),
            found: Vec::new(),
            device_input: None,
            device_output: None,
            device_candidates: None,
            host_candidates: Vec::new(),
            host_output: Vec::new(),
            output_len: model.output_shape.iter().skip(1).product(),
        }
    }

    /// Detects on one frame; the result is valid until the next call.
    pub fn detect(&mut self, frame: &Frame) -> Result<&[Found], EngineError> {
        let s = self.spec.width;
        let pre = |reason: String| EngineError::Run {
            path: self.model.clone(),
            reason: format!("preprocess: {reason}"),
        };
        let classes = self.labels.len();
        let t = self.thresholds;
        let decode_err = |reason: String| EngineError::Run {
            path: self.model.clone(),
            reason: format!("decode: {reason}"),
        };
        // Run on the device engine: `raw` holds the detections and `lb` is set.
        let mut decoded = false;
        let lb = match &frame.device {
            Some(d) => {
                let gpu = d.gpu();
                if self.device_input.is_none() {
                    self.device_input =
                        Some(gpu.alloc_zeros(3 * s * s).map_err(|e| pre(e.to_string()))?);
                }
                let dev = self.device_input.as_mut().expect("allocated above");
                if self.client.on_device() {
                    // The engine reads the input where the kernel wrote it and writes its
                    // output on the device; a kernel lists the anchors worth decoding and
                    // only that list comes down.
                    let lb =
                        planar_in_device(frame, self.spec, dev).map_err(|e| pre(e.to_string()))?;
                    if self.device_output.is_none() {
                        self.device_output = Some(
                            gpu.alloc_zeros(self.output_len)
                                .map_err(|e| pre(e.to_string()))?,
                        );
                    }
                    if self.device_candidates.is_none() {
                        self.device_candidates = Some(
                            gpu.alloc_zeros(1 + CANDIDATES * CANDIDATE)
                                .map_err(|e| pre(e.to_string()))?,
                        );
                    }
                    let out = self.device_output.as_mut().expect("allocated above");
                    gpu.sync().map_err(|e| pre(e.to_string()))?;
                    let item = DeviceItem {
                        input: device_ptr(dev, &gpu.stream),
                        output: device_ptr_mut(out, &gpu.stream),
                        output_len: self.output_len,
                    };
                    self.client.run_device(item)?;
                    let cand = self.device_candidates.as_mut().expect("allocated above");
                    self.host_candidates.resize(cand.len(), 0.0);
                    gpu.yolo_candidates(out, classes, t.decode_min, cand)
                        .and_then(|()| gpu.download_results(cand, &mut self.host_candidates))
                        .map_err(|e| decode_err(e.to_string()))?;
                    match decode_candidates(&mut self.host_candidates, classes, lb, &mut self.raw) {
                        Ok(()) => {}
                        Err(CandidateError::Cut { .. }) => {
                            // More candidates than the list holds: the whole output.
                            self.host_output.resize(self.output_len, 0.0);
                            gpu.download_into(out, &mut self.host_output)
                                .map_err(|e| pre(e.to_string()))?;
                            decode(&self.host_output, classes, t.decode_min, lb, &mut self.raw)
                                .map_err(|e| decode_err(e.to_string()))?;
                        }
                        Err(e) => return Err(decode_err(e.to_string())),
                    }
                    decoded = true;
                    Some(lb)
                } else {
                    planar_on_device(frame, self.spec, dev, self.client.input(3 * s * s))
                        .map(Some)
                        .map_err(|e| pre(e.to_string()))?
                }
            }
            None => None,
        };
        let lb = match lb {
            Some(lb) => lb,
            None => planar(frame, self.spec, self.client.input(3 * s * s))
                .map_err(|e| pre(e.to_string()))?,
        };
        if !decoded {
            decode(
                self.client.run()?.0,
                classes,
                t.decode_min,
                lb,
                &mut self.raw,
            )
            .map_err(|e| decode_err(e.to_string()))?;
        }
        self.raw.retain(|d| d.score >= t.min_score);
        nms(&mut self.raw, t.iou, t.agnostic);
        self.found.clear();
        let (fw, fh) = (frame.layout.width as f32, frame.layout.height as f32);
        for d in &self.raw {
            let b = d.bbox;
            let bbox = [
                (b.x as f32).clamp(0.0, fw),
                (b.y as f32).clamp(0.0, fh),
                ((b.x + b.w) as f32).clamp(0.0, fw),
                ((b.y + b.h) as f32).clamp(0.0, fh),
            ];
            self.found.push(Found {
                object: Object {
                    label: self.labels.get(d.class as usize).copied().unwrap_or("?"),
                    class: d.class as u16,
                    score: d.score,
                    bbox,
                    track_id: None,
                    source: ObjectSource::Detect,
                    track_backfill: None,
                },
                raw: *d,
            });
        }
        Ok(&self.found)
    }
}
