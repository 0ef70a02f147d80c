//! The sinks a pipeline config names, built per stream (the [`Sink`] trait is hal's).

use std::path::PathBuf;
use std::time::Duration;

use aegis_config::{RecordSink, SinkConfig};
use aegis_hal::Frame;
use aegis_hal::codec::EncoderSettings;
use aegis_hal::record::{DiskBudget, RecordError, RecorderSettings, SegmentRecorder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::{Metrics, SinkLabels, StreamLabels};

pub use aegis_hal::sink::{Sink, SinkError};

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
        SinkConfig::Discard(_)
        | SinkConfig::Restream(_)
        | SinkConfig::Push(_)
        | SinkConfig::Hls(_)
        | SinkConfig::WebRtc(_) => Ok(SharedSinkState::None),
    }
}

/// Builds the sink for one stream; a record sink also hands its packets to `tap` (the live
/// view), when given, and encodes NVMM frames with the hardware encoder of `hardware` (the
/// `jetson` backend on Orin AGX/NX).
#[allow(clippy::too_many_arguments)]
pub fn build(
    cfg: &SinkConfig,
    shared: &SharedSinkState,
    stream: &aegis_hal::StreamId,
    frame_rate: (i32, i32),
    auto_threads: usize,
    metrics: &Metrics,
    tap: Option<std::sync::Arc<dyn aegis_hal::record::PacketTap>>,
    hardware: Option<std::sync::Arc<aegis_hal::backend::NvmmCodecs>>,
) -> Box<dyn Sink> {
    match (cfg, shared) {
        (SinkConfig::Record(r), SharedSinkState::Record(budget, used, evicted)) => {
            let labels = StreamLabels {
                stream: stream.to_string(),
            };
            let mut recorder = SegmentRecorder::new(
                recorder_settings(r, stream, frame_rate, auto_threads),
                budget.clone(),
            );
            if let Some(codecs) = hardware {
                recorder = recorder.with_hardware_encoder(codecs);
            }
            Box::new(RecordSinkRuntime {
                recorder: match tap {
                    Some(t) => recorder.with_tap(t),
                    None => recorder,
                },
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
            low_latency: r.encoder.low_latency,
            profile: r.encoder.profile.map(aegis_config::H264Profile::as_str),
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
    fn consume(&mut self, frame: &mut Frame) -> Result<(), SinkError> {
        let r = self.recorder.push(frame).map_err(record_error);
        self.publish();
        r
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        let r = self.recorder.finish().map_err(record_error);
        self.publish();
        r
    }
    fn takes_device_frames(&self) -> bool {
        self.recorder.takes_device_frames()
    }
    fn takes_device_frame(&self, frame: &Frame) -> bool {
        self.recorder.takes_device_frame(frame)
    }
}

struct DiscardSinkRuntime;

impl Sink for DiscardSinkRuntime {
    fn kind(&self) -> &'static str {
        "discard"
    }
    fn consume(&mut self, _frame: &mut Frame) -> Result<(), SinkError> {
        Ok(())
    }
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    // It reads no pixels: a frame left on the device for another sink stays there.
    fn takes_device_frame(&self, _frame: &Frame) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use aegis_config::{DiscardSink, EncoderConfig, PipelineConfig, SourceConfig};
    use aegis_hal::record::ClipWriter;
    use aegis_hal::synth::SyntheticScene;
    use aegis_hal::{FrameLayout, PixelFormat, StreamId, SurfacePool};

    use super::*;
    use crate::pipeline::{Pipeline, RunOptions};

    const FRAMES: u64 = 8;

    /// An H.264 (4:2:0, so decoded without conversion) clip of `FRAMES` synthetic frames.
    fn clip(dir: &Path) -> PathBuf {
        let path = dir.join("clip.mp4");
        let layout = FrameLayout::new(PixelFormat::I420, 160, 120);
        let pool = SurfacePool::new(layout, 2);
        let mut scene = SyntheticScene::new(160, 120, 2, 3, None);
        let mut w = ClipWriter::create(&path, &EncoderSettings::default(), layout).unwrap();
        for i in 0..FRAMES {
            let mut f =
                Frame::from_pool(&pool, StreamId::new("s"), i, i as i64 * 33_333, 33_333).unwrap();
            scene.render(&mut f);
            w.push(&mut f).unwrap();
        }
        w.finish().unwrap();
        path
    }

    fn record(dir: &Path) -> SinkConfig {
        SinkConfig::Record(RecordSink {
            dir: dir.to_path_buf(),
            segment_seconds: 60.0,
            disk_budget_mb: 64,
            encoder: EncoderConfig {
                threads: 1,
                ..EncoderConfig::default()
            },
        })
    }

    /// Runs `clip` through a pipeline with `sinks`; the copies the report and the
    /// `aegis_copies_per_frame` gauge give for the last frame.
    fn copies_with(clip: &Path, sinks: Vec<SinkConfig>) -> (u32, i64) {
        let cfg = PipelineConfig {
            sources: vec![SourceConfig::new("cam", clip.display().to_string())],
            stages: Vec::new(),
            sinks,
            pool_frames: 4,
            queue_depth: 2,
            rules: Vec::new(),
            evidence: None,
        };
        let metrics = Arc::new(Metrics::new("cpu"));
        let opts = RunOptions {
            force_realtime: Some(false),
            decoder_threads: 1,
            ..Default::default()
        };
        let reports = Pipeline::start(&cfg, metrics.clone(), &opts)
            .unwrap()
            .wait();
        let r = &reports[0];
        assert_eq!(r.delivered, FRAMES, "{:?}", r.sink_errors);
        assert!(r.sink_errors.is_empty(), "{:?}", r.sink_errors);
        let gauge = metrics
            .copies_per_frame
            .get_or_create(&StreamLabels {
                stream: "cam".into(),
            })
            .get();
        (r.copies_per_frame, gauge)
    }

    #[test]
    fn copies_per_frame_is_what_the_copy_sites_counted() {
        let dir = tempfile::tempdir().unwrap();
        let clip = clip(dir.path());
        let discard = || SinkConfig::Discard(DiscardSink {});
        // Decoder picture → surface only: a discard sink copies nothing.
        assert_eq!(copies_with(&clip, vec![discard()]), (1, 1));
        // …and the record sink's encoder input.
        assert_eq!(
            copies_with(&clip, vec![record(&dir.path().join("a"))]),
            (2, 2)
        );
        assert_eq!(
            copies_with(&clip, vec![discard(), record(&dir.path().join("b"))]),
            (2, 2)
        );
        // Two encoders, two copies into encoders (the declared per-sink constant, taken as
        // the largest over the sinks, said 2).
        assert_eq!(
            copies_with(
                &clip,
                vec![record(&dir.path().join("c")), record(&dir.path().join("d"))]
            ),
            (3, 3)
        );
    }
}
