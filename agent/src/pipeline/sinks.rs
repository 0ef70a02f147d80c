//! Sinks: where processed frames go. A sink instance serves one stream.

use std::path::PathBuf;
use std::time::Duration;

use aegis_config::{RecordSink, SinkConfig};
use aegis_hal::Frame;
use aegis_hal::codec::EncoderSettings;
use aegis_hal::record::{DiskBudget, RecordError, RecorderSettings, SegmentRecorder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, SinkLabels, StreamLabels};

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
    pub source: anyhow::Error,
}

/// A per-stream frame consumer.
pub trait Sink: Send {
    /// The sink's kind, as in the config.
    fn kind(&self) -> &'static str;
    /// Consumes one frame.
    fn consume(&mut self, frame: &Frame) -> Result<(), SinkError>;
    /// Flushes and closes whatever is open (called once, at end of stream or shutdown).
    fn finish(&mut self) -> Result<(), SinkError>;
    /// Pixel copies this sink makes of each frame (the encoder's input copy).
    fn copies_per_frame(&self) -> u32;
}

/// State a sink config shares across all streams (the record sink's disk budget).
pub enum SharedSinkState {
    /// Record sink: one budget for all streams.
    Record(DiskBudget, Gauge, Gauge),
    /// Nothing shared.
    None,
}

/// Opens what a sink config shares between streams (creates the recording directory).
pub fn open_shared(
    index: usize,
    cfg: &SinkConfig,
    metrics: &Metrics,
) -> Result<SharedSinkState, RecordError> {
    match cfg {
        SinkConfig::Record(r) => {
            let budget = DiskBudget::open(&r.dir, r.disk_budget_mb.saturating_mul(1 << 20))?;
            let labels = SinkLabels {
                sink: format!("{index}:record"),
            };
            let used = metrics.disk_used.get_or_create_owned(&labels);
            let evicted = metrics.disk_evictions.get_or_create_owned(&labels);
            Ok(SharedSinkState::Record(budget, used, evicted))
        }
        SinkConfig::Discard(_) => Ok(SharedSinkState::None),
    }
}

/// Builds the sink for one stream.
pub fn build(
    cfg: &SinkConfig,
    shared: &SharedSinkState,
    stream: &aegis_hal::StreamId,
    frame_rate: (i32, i32),
    auto_threads: usize,
    metrics: &Metrics,
) -> Box<dyn Sink> {
    match (cfg, shared) {
        (SinkConfig::Record(r), SharedSinkState::Record(budget, used, evicted)) => {
            let labels = StreamLabels {
                stream: stream.to_string(),
            };
            Box::new(RecordSinkRuntime {
                recorder: SegmentRecorder::new(
                    recorder_settings(r, stream, frame_rate, auto_threads),
                    budget.clone(),
                ),
                budget: budget.clone(),
                segments: metrics.segments.get_or_create_owned(&labels),
                bytes: metrics.recorded_bytes.get_or_create_owned(&labels),
                used: used.clone(),
                evicted: evicted.clone(),
                last: Default::default(),
            })
        }
        _ => Box::new(DiscardSinkRuntime),
    }
}

/// Recorder settings for one stream from the record sink config; `auto_threads` replaces an
/// encoder `threads: 0`.
pub fn recorder_settings(
    r: &RecordSink,
    stream: &aegis_hal::StreamId,
    frame_rate: (i32, i32),
    auto_threads: usize,
) -> RecorderSettings {
    RecorderSettings {
        dir: PathBuf::from(&r.dir),
        stream: stream.clone(),
        segment: Duration::from_secs_f64(r.segment_seconds),
        encoder: EncoderSettings {
            preset: r.encoder.preset.clone(),
            bitrate_kbps: r.encoder.bitrate_kbps,
            gop_frames: r.encoder.gop_frames,
            threads: match r.encoder.threads {
                0 => auto_threads as u32,
                n => n,
            },
            frame_rate,
        },
    }
}

struct RecordSinkRuntime {
    recorder: SegmentRecorder,
    budget: DiskBudget,
    segments: Counter,
    bytes: Counter,
    used: Gauge,
    evicted: Gauge,
    last: aegis_hal::record::RecorderStats,
}

impl RecordSinkRuntime {
    fn publish(&mut self) {
        let s = self.recorder.stats();
        self.segments.inc_by(s.segments - self.last.segments);
        self.bytes.inc_by(s.bytes - self.last.bytes);
        if s.segments != self.last.segments {
            let (used, evicted) = self.budget.usage();
            self.used.set(used as i64);
            self.evicted.set(evicted as i64);
        }
        self.last = s;
    }
}

fn record_error(e: RecordError) -> SinkError {
    let error_type = match &e {
        RecordError::Codec(_) => "encode",
        RecordError::Unrecordable { .. } => "unrecordable",
        RecordError::Mux { .. } => "mux",
        RecordError::Io { .. } => "io",
    };
    SinkError {
        kind: "record",
        error_type,
        source: e.into(),
    }
}

impl Sink for RecordSinkRuntime {
    fn kind(&self) -> &'static str {
        "record"
    }
    fn consume(&mut self, frame: &Frame) -> Result<(), SinkError> {
        let r = self.recorder.push(frame).map_err(record_error);
        self.publish();
        r
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        let r = self.recorder.finish().map_err(record_error);
        self.publish();
        r
    }
    fn copies_per_frame(&self) -> u32 {
        1
    }
}

struct DiscardSinkRuntime;

impl Sink for DiscardSinkRuntime {
    fn kind(&self) -> &'static str {
        "discard"
    }
    fn consume(&mut self, _frame: &Frame) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    fn copies_per_frame(&self) -> u32 {
        0
    }
}
