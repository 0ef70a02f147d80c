//! Sinks: where a stream's processed frames go, beside [`crate::stage::Stage`] (what changes
//! them). A sink instance serves one stream, on that stream's sink thread; several sinks of a
//! stream see the same frame in turn.

use crate::Frame;

/// A sink failed on a frame or at finish.
#[derive(Debug, thiserror::Error)]
#[error("{kind} sink: {source}")]
pub struct SinkError {
    /// Sink kind.
    pub kind: &'static str,
    /// Stable short error type for metrics.
    pub error_type: &'static str,
    /// The cause.
    #[source]
    pub source: Box<dyn std::error::Error + Send + Sync>,
}

/// A per-stream frame consumer.
pub trait Sink: Send {
    /// The sink's kind, as in the config.
    fn kind(&self) -> &'static str;
    /// Consumes one frame. A sink that copies the frame's pixels (the record sink's encoder
    /// input) counts each copy it makes in [`Frame::copies`].
    fn consume(&mut self, frame: &mut Frame) -> Result<(), SinkError>;
    /// Flushes and closes whatever is open (called once, at end of stream or shutdown).
    fn finish(&mut self) -> Result<(), SinkError>;
    /// Whether the sink wants frames left on the device for it (the record sink with Orin's
    /// hardware encoder, which reads a frame's NVMM surface in place). When one does, the
    /// pipeline leaves frames on the device for the sinks and downloads a frame once, before
    /// the first sink that does not take it ([`Sink::takes_device_frame`]).
    fn takes_device_frames(&self) -> bool {
        false
    }
    /// Whether the sink can take this frame with its pixels still on the device (by
    /// default, any frame when [`Sink::takes_device_frames`]; a sink that reads no pixels
    /// takes every frame).
    fn takes_device_frame(&self, _frame: &Frame) -> bool {
        self.takes_device_frames()
    }
}
