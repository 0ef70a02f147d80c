//! Plain geometry shared by pre-processing, decoding and tracking: boxes in frame pixels and
//! the mapping of a frame into a model's input.

/// An axis-aligned box: left, top, width, height (pixels).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxXywh {
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl BoxXywh {
    /// Intersection over union (0 for empty boxes).
    pub fn iou(&self, o: &BoxXywh) -> f64 {
        let ix = (self.x + self.w).min(o.x + o.w) - self.x.max(o.x);
        let iy = (self.y + self.h).min(o.y + o.h) - self.y.max(o.y);
        if ix <= 0.0 || iy <= 0.0 {
            return 0.0;
        }
        let inter = ix * iy;
        let union = self.w * self.h + o.w * o.h - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// How a frame was fitted into the model's input: input pixel = frame pixel × `scale` +
/// `pad` (NudeNet pads right/bottom, so its pads are 0; centred letterboxing pads both sides).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Frame → input scale.
    pub scale: f64,
    /// Horizontal offset of the frame inside the input, in input pixels.
    pub pad_x: f64,
    /// Vertical offset, in input pixels.
    pub pad_y: f64,
}

impl Letterbox {
    /// Fits a `w`×`h` frame into a square `input`, padding right and bottom (NudeNet's way).
    pub fn top_left(w: usize, h: usize, input: usize) -> Self {
        Letterbox {
            scale: input as f64 / w.max(h).max(1) as f64,
            pad_x: 0.0,
            pad_y: 0.0,
        }
    }

    /// Fits a `w`×`h` frame into a square `input`, centred (Ultralytics' way).
    pub fn centred(w: usize, h: usize, input: usize) -> Self {
        let scale = input as f64 / w.max(h).max(1) as f64;
        Letterbox {
            scale,
            pad_x: (input as f64 - w as f64 * scale) / 2.0,
            pad_y: (input as f64 - h as f64 * scale) / 2.0,
        }
    }
}
