//! The `Stage` interface every frame processor implements, and the two stages that need no
//! model: `passthrough` and `timestamp_overlay`.
//!
//! A stage gets each frame of one stream, in order, as `&mut Frame`, and may change its
//! pixels and metadata or ask for it to be dropped. One instance serves one stream, so a
//! stage may keep per-stream state (trackers do) without locks. The inference stages of
//! `aegis-models` implement this same trait.

use std::fmt::Write as _;

use crate::frame::{Frame, PixelFormat};
use crate::pixel::{draw_code_i420, draw_code_nv12, draw_text_i420, draw_text_nv12, text_size};

/// What happens to a frame after a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    /// Pass it on to the next stage / the sinks.
    Keep,
    /// Drop it (e.g. content moderation with action `drop`); counted as dropped by the runtime.
    Drop,
}

/// A stage failed on a frame. The runtime counts it, logs it once per kind, and passes the
/// frame on unchanged: a broken stage must not stop the video.
#[derive(Debug, thiserror::Error)]
#[error("stage {stage}: {message}")]
pub struct StageError {
    /// The stage's kind.
    pub stage: &'static str,
    /// A short, stable error type for the `component_errors_total{error_type}` label.
    pub error_type: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A per-stream frame processor.
pub trait Stage: Send {
    /// The stage's kind, as written in the config (`passthrough`, `timestamp_overlay`, ...).
    fn kind(&self) -> &'static str;
    /// Processes one frame in place.
    fn process(&mut self, frame: &mut Frame) -> Result<StageOutcome, StageError>;
    /// Whether `process` works on frames whose pixels are on the GPU (`frame.device`, CUDA
    /// backend). A stage that says no gets its frames downloaded to the host first, so
    /// every stage works on every backend; one that says yes must handle both.
    fn on_device(&self) -> bool {
        false
    }
}

/// Does nothing; a baseline for measuring pipeline overhead.
#[derive(Debug, Default)]
pub struct Passthrough;

impl Stage for Passthrough {
    fn kind(&self) -> &'static str {
        "passthrough"
    }
    fn process(&mut self, _frame: &mut Frame) -> Result<StageOutcome, StageError> {
        Ok(StageOutcome::Keep)
    }
    fn on_device(&self) -> bool {
        true
    }
}

/// Burns the wall-clock time (UTC), the stream id and the frame number into the picture.
#[derive(Debug)]
pub struct TimestampOverlay {
    x: usize,
    y: usize,
    scale: usize,
    show_stream_id: bool,
    clock_code: bool,
    text: String,
}

impl TimestampOverlay {
    /// Text at (`x`, `y`) pixels, glyphs magnified `scale` times.
    pub fn new(x: usize, y: usize, scale: usize, show_stream_id: bool) -> Self {
        TimestampOverlay {
            x,
            y,
            scale: scale.max(1),
            show_stream_id,
            clock_code: false,
            // Room for "stream-id-of-64-chars 2026-11-26 15:22:33.123 #123456789": no growth later.
            text: String::with_capacity(128),
        }
    }

    /// Also draws, under the text, the wall-clock milliseconds (modulo 2³²) as a row of
    /// black/white blocks ([`crate::pixel::CODE_BLOCKS`] of 8×`scale` pixels): what a
    /// glass-to-glass latency probe reads back from the picture a viewer sees.
    pub fn with_clock_code(mut self, on: bool) -> Self {
        self.clock_code = on;
        self
    }
}

impl Stage for TimestampOverlay {
    fn kind(&self) -> &'static str {
        "timestamp_overlay"
    }

    fn process(&mut self, frame: &mut Frame) -> Result<StageOutcome, StageError> {
        self.text.clear();
        if self.show_stream_id {
            let _ = write!(self.text, "{} ", frame.stream);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let (date, time) = crate::record::civil_utc(now.as_secs() as i64);
        let _ = write!(
            self.text,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} #{}",
            date.0,
            date.1,
            date.2,
            time.0,
            time.1,
            time.2,
            now.subsec_millis(),
            frame.seq
        );
        // The pixel kernels work on 4:2:0 pairs; an odd last row/column is left as is.
        let (w, h) = (frame.layout.width & !1, frame.layout.height & !1);
        let format = frame.layout.format;
        let [y, p1, p2] = frame.planes_mut();
        let r = match format {
            PixelFormat::I420 => {
                draw_text_i420(y, p1, p2, w, h, self.x, self.y, self.scale, &self.text)
            }
            PixelFormat::Nv12 => {
                draw_text_nv12(y, p1, w, h, self.x, self.y, self.scale, &self.text)
            }
        };
        let r = r.and_then(|()| {
            if !self.clock_code {
                return Ok(());
            }
            let ms = now.as_millis() as u32;
            let block = 8 * self.scale;
            let cy = self.y + text_size(&self.text, self.scale).1 + 2 * self.scale;
            let [y, p1, p2] = frame.planes_mut();
            match format {
                PixelFormat::I420 => draw_code_i420(y, p1, p2, w, h, self.x, cy, block, ms),
                PixelFormat::Nv12 => draw_code_nv12(y, p1, w, h, self.x, cy, block, ms),
            }
        });
        r.map_err(|e| StageError {
            stage: "timestamp_overlay",
            error_type: "pixel",
            message: e.to_string(),
        })?;
        Ok(StageOutcome::Keep)
    }
}
