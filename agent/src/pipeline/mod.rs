//! The pipeline runtime: several streams per device, each a chain of threads.
//!
//! ```text
//!  per stream:  [source thread]  --decoded-->  [stage thread]  --processed-->  [sink thread]
//!               demux + decode    bounded q     stages in order   bounded q     every sink
//!               into the pool                   (&mut Frame)                    (&Frame)
//! ```
//!
//! Codecs block, so every step runs on a dedicated OS thread rather than a tokio task; the
//! queues are bounded and frames come from a bounded pool, so a slow sink stalls its own
//! stream's decoder (backpressure) and never grows memory. Streams are independent: one
//! failing source ends only its stream. Several sinks of one stream share its sink thread
//! and see the same frame in turn (no per-frame fan-out allocation); a sink that needs its
//! own thread can add a queue inside itself.
//!
//! Shutdown: [`Pipeline::stop`] sets a flag the sources check between frames and closes the
//! pools (waking a source that waits for a surface). Each source then ends its stream; the
//! queues drain; the sinks get `finish()`, which closes the recordings cleanly.

pub mod analytics;
pub mod queue;
pub mod sinks;
pub mod snapshot;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use aegis_config::{CaptureFormat, PipelineConfig, SourceLocation};
use aegis_hal::source::{
    FailedSource, FileSource, FileSourceSettings, LiveSource, LiveSourceSettings, RtspTransport,
    SourceStopper, VideoSource,
};
use aegis_hal::stage::{Stage, StageOutcome};
use aegis_hal::v4l2::{CaptureRequest, FourCc};
use aegis_hal::{Frame, StreamId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{DropLabels, ErrorLabels, Metrics, QueueLabels, StageLabels, StreamLabels};
use analytics::{AnalyticsSummary, AnalyticsTally};
use sinks::{SharedSinkState, Sink};

/// Errors that prevent a pipeline from starting; each names the config path at fault. A source
/// that cannot be opened is not one of them: its stream reports it and ends (see
/// [`FailedSource`]).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A sink could not be set up (e.g. its directory cannot be created).
    #[error("sinks[{index}]: {source}")]
    Sink {
        /// Index in `sinks`.
        index: usize,
        /// Why.
        source: aegis_hal::record::RecordError,
    },
    /// A stage could not be built (model not loaded, unknown class, unreadable image).
    #[error("stages[{index}]: {source}")]
    Stage {
        /// Index in `stages`.
        index: usize,
        /// The stage's kind.
        kind: &'static str,
        /// Why.
        source: aegis_models::stages::BuildError,
    },
    /// A rule names a sensor this device does not have.
    #[error("{path}: {reason}")]
    Rule {
        /// The rule's path (`rules[0].when.sensor`).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A new pipeline's sources or sinks differ from the running one's, so its stages
    /// cannot be swapped in place.
    #[error("sources or sinks differ: the pipeline must be rebuilt")]
    NotSwappable,
    /// The OS refused a thread.
    #[error("cannot start thread {name}: {source}")]
    Thread {
        /// Thread name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
}

impl From<aegis_models::stages::StageBuildError> for PipelineError {
    fn from(e: aegis_models::stages::StageBuildError) -> Self {
        PipelineError::Stage {
            index: e.index,
            kind: e.kind,
            source: e.source,
        }
    }
}

/// Knobs that are not part of the config (set by the CLI, benches and tests).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Pace every source at its native frame rate (overrides each source's `realtime`).
    pub force_realtime: Option<bool>,
    /// Decoder threads per stream; 0 = the machine's cores divided among the streams (at
    /// least 1), which also sets the encoders' threads where their config says 0. Sixteen
    /// cameras each starting one codec thread per core would only thrash.
    pub decoder_threads: usize,
    /// The loaded models the stages use (see [`crate::inference::Inference::load`]); `None`
    /// for pipelines without inference stages.
    pub inference: Option<Arc<crate::inference::Inference>>,
    /// Where stage events, track summaries and stage timings go (`None`: nowhere).
    pub store: Option<crate::store::StoreHandle>,
    /// With a store: also queue events for the fleet broker on this topic.
    pub events_topic: Option<String>,
    /// Where snapshot requests reach the streams' sink threads.
    pub snapshots: Option<Arc<snapshot::SnapshotHub>>,
    /// The sensors: events get the fused pose, rules see the sensor state.
    pub sensing: Option<Arc<crate::sensing::Sensing>>,
    /// The backend (`None`: cpu). With a GPU, file sources decode on NVDEC and the stages
    /// that can work on device frames do.
    pub backend: Option<crate::runtime::Backend>,
}

/// The rules a pipeline runs: the local `sensors.rules` and its own `rules`, whose sensor
/// names must be sensors this device has.
fn rules_of(
    cfg: &PipelineConfig,
    sensing: Option<&Arc<crate::sensing::Sensing>>,
) -> Result<Vec<aegis_config::RuleConfig>, PipelineError> {
    let names: Vec<&str> = sensing
        .map(|s| s.iot_names().iter().map(String::as_str).collect())
        .unwrap_or_default();
    let mut problems = Vec::new();
    aegis_config::check_rule_sensors(&cfg.rules, &names, "rules", &mut problems);
    if let Some(p) = problems.first() {
        return Err(PipelineError::Rule {
            path: p.path.clone(),
            reason: p.reason.clone(),
        });
    }
    let mut rules: Vec<_> = sensing.map(|s| s.rules().to_vec()).unwrap_or_default();
    rules.extend(cfg.rules.iter().cloned());
    Ok(rules)
}

/// Downloads a frame's pixels from the GPU; a failure is reported and the frame dropped
/// (its host surface holds nothing valid).
fn download(frame: &mut Frame, errors: &mut ErrorReporter) -> bool {
    match frame.to_host() {
        Ok(()) => true,
        Err(e) => {
            errors.report("stage", "gpu_download", 1, &e);
            false
        }
    }
}

/// The GPU a source decodes on (CUDA backend): its own fork of the backend's GPU (own CUDA
/// stream), when NVDEC is installed; `None` decodes on the CPU, saying why.
fn gpu_for(opts: &RunOptions, stream: &str) -> Option<Arc<aegis_cuda::Gpu>> {
    let gpu = opts.backend.as_ref()?.gpu.as_ref()?;
    if !aegis_cuda::nvdec::nvdec_present() {
        tracing::warn!(
            stream,
            "libnvcuvid.so.1 (NVDEC) is not installed; decoding on the CPU"
        );
        return None;
    }
    match gpu.fork() {
        Ok(g) => Some(Arc::new(g)),
        Err(e) => {
            tracing::warn!(stream, error = %e, "no CUDA stream for this source; decoding on the CPU");
            None
        }
    }
}

/// What one stream did, reported when it ends.
#[derive(Debug, Clone, Default)]
pub struct StreamReport {
    /// Stream id.
    pub stream: String,
    /// Frames decoded.
    pub decoded: u64,
    /// Frames that reached the sinks.
    pub delivered: u64,
    /// Frames dropped by stages.
    pub dropped: u64,
    /// Source counters at the end.
    pub source: aegis_hal::source::SourceStats,
    /// The error that ended the source early, if any.
    pub source_error: Option<String>,
    /// Errors raised by sinks at finish.
    pub sink_errors: Vec<String>,
    /// Whole-frame pixel copies of the last delivered frame, as counted by the copy sites
    /// it went through (decoder → surface, conversion, download, encoder input).
    pub copies_per_frame: u32,
    /// What the inference stages reported.
    pub analytics: AnalyticsSummary,
}

/// A running pipeline.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    stoppers: Vec<SourceStopper>,
    streams: Vec<StreamThreads>,
    cfg: PipelineConfig,
    sensing: Option<Arc<crate::sensing::Sensing>>,
    source_events: SourceEvents,
}

/// Turns changes of the sources' health into stored (and, with the fleet link, published)
/// events: `source_failed` once when a source cannot be opened or ends on an error,
/// `source_down` when a live source loses its camera (or cannot reach it at first), and
/// `source_up` when frames flow again. One `source_down`/`source_up` pair per outage, however
/// many reconnect attempts it takes.
struct SourceEvents {
    store: Option<crate::store::StoreHandle>,
    topic: Option<String>,
    /// Per stream: since when it has been down (`None`: up or not yet connected), and whether
    /// its failure was reported.
    seen: Vec<(Option<Instant>, bool)>,
}

impl SourceEvents {
    fn check(&mut self, streams: &[StreamThreads]) {
        use aegis_hal::source::SourceState as S;
        self.seen.resize(streams.len(), (None, false));
        for (s, (down_since, failed)) in streams.iter().zip(self.seen.iter_mut()) {
            let h = s.health.snapshot();
            let error = h.last_error.clone().unwrap_or_default();
            let event = match h.state {
                S::Failed if !*failed => {
                    *failed = true;
                    Some(("source_failed", serde_json::json!({ "error": error })))
                }
                S::BackingOff | S::Stalled if down_since.is_none() => {
                    *down_since = Some(Instant::now());
                    Some((
                        "source_down",
                        serde_json::json!({ "state": h.state.as_str(), "error": error,
                            "reconnects": h.reconnects }),
                    ))
                }
                S::Streaming => down_since.take().map(|t| {
                    let down_ms = t.elapsed().as_millis() as u64;
                    (
                        "source_up",
                        serde_json::json!({ "down_ms": down_ms, "reconnects": h.reconnects }),
                    )
                }),
                _ => None,
            };
            if let (Some((kind, payload)), Some(store)) = (event, &self.store) {
                store.submit(crate::store::Record::Event {
                    event: crate::store::Event {
                        id: crate::store::new_event_id(),
                        ts_us: crate::store::now_us(),
                        stream: Some(s.id.clone()),
                        kind: kind.into(),
                        payload,
                    },
                    outbox_topic: self.topic.clone(),
                });
            }
        }
    }
}

/// A stream's stages and rules, as a workflow switch hands them over.
type Chain = (Vec<Box<dyn Stage>>, Vec<aegis_config::RuleConfig>);

/// One stream's stage chain as its stage thread sees it: a replacement waiting to be picked
/// up between two frames, and how the chain in use has fared since it was installed.
#[derive(Default)]
struct StageSlot {
    pending: AtomicBool,
    next: std::sync::Mutex<Option<Chain>>,
    generation: AtomicU64,
    frames: AtomicU64,
    failed_frames: AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// How one stream's current stage chain has fared since it was installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageHealth {
    /// Stream id.
    pub stream: String,
    /// Stage chains installed so far (0 = the one the stream started with).
    pub generation: u64,
    /// Frames through the current chain.
    pub frames: u64,
    /// Of those, frames on which a stage failed.
    pub failed_frames: u64,
    /// The last stage error, if any.
    pub last_error: Option<String>,
    /// The stream's threads have ended.
    pub ended: bool,
}

struct StreamThreads {
    slot: Arc<StageSlot>,
    health: Arc<aegis_hal::source::SourceHealth>,
    source: JoinHandle<(u64, aegis_hal::source::SourceStats, Option<String>)>,
    stages: JoinHandle<(u64, AnalyticsSummary)>,
    sinks: JoinHandle<(u64, Vec<String>, u32)>,
    id: String,
}

/// Per-stream metric handles, created once so the frame path never allocates.
struct StreamMetrics {
    decoded: Counter,
    delivered: Counter,
    dropped_stage: Counter,
    source_latency: Histogram,
    frame_latency: Histogram,
    copies: Gauge,
    fps: prometheus_client::metrics::gauge::Gauge<f64, std::sync::atomic::AtomicU64>,
    pool_free: Gauge,
    pool_waits: Counter,
    running: Gauge,
}

fn stage_labels(stream: &str, stage: String) -> StageLabels {
    StageLabels {
        stream: stream.to_string(),
        stage,
    }
}

impl StreamMetrics {
    fn new(m: &Metrics, stream: &str) -> Self {
        let sl = StreamLabels {
            stream: stream.to_string(),
        };
        StreamMetrics {
            decoded: m
                .frames
                .get_or_create_owned(&stage_labels(stream, "source".into())),
            delivered: m
                .frames
                .get_or_create_owned(&stage_labels(stream, "sink".into())),
            dropped_stage: m.dropped.get_or_create_owned(&DropLabels {
                stream: stream.to_string(),
                reason: "stage".into(),
            }),
            source_latency: m
                .stage_latency
                .get_or_create_owned(&stage_labels(stream, "source".into())),
            frame_latency: m.frame_latency.get_or_create_owned(&sl),
            copies: m.copies_per_frame.get_or_create_owned(&sl),
            fps: m.fps.get_or_create_owned(&sl),
            pool_free: m.pool_free.get_or_create_owned(&sl),
            pool_waits: m.pool_waits.get_or_create_owned(&sl),
            running: m.streams_running.clone(),
        }
    }
}

/// Counts errors and logs each (component, type) the first time it happens on a stream.
/// Counter handles are cached, so a stream that errors on every frame still does not
/// allocate per frame.
struct ErrorReporter {
    metrics: Arc<Metrics>,
    stream: String,
    seen: Vec<(&'static str, &'static str, Counter)>,
}

impl ErrorReporter {
    fn new(metrics: Arc<Metrics>, stream: &str) -> Self {
        ErrorReporter {
            metrics,
            stream: stream.to_string(),
            seen: Vec::new(),
        }
    }

    fn report(
        &mut self,
        component: &'static str,
        error_type: &'static str,
        count: u64,
        error: &dyn std::fmt::Display,
    ) {
        if count == 0 {
            return;
        }
        let known = self
            .seen
            .iter()
            .position(|(c, t, _)| (*c, *t) == (component, error_type));
        let i = match known {
            Some(i) => i,
            None => {
                tracing::warn!(stream = %self.stream, component, error_type, %error,
                    "pipeline error (further errors of this kind are only counted)");
                let counter = self.metrics.errors.get_or_create_owned(&ErrorLabels {
                    component: component.into(),
                    error_type: error_type.into(),
                    stream: self.stream.clone(),
                });
                self.seen.push((component, error_type, counter));
                self.seen.len() - 1
            }
        };
        self.seen[i].2.inc_by(count);
    }
}

/// Frame rate assumed for rate control while a live source has not said.
const DEFAULT_FRAME_RATE: (i32, i32) = (30, 1);

impl Pipeline {
    /// Opens every source and sink, then starts the stream threads. Nothing is started when
    /// anything fails to open.
    pub fn start(
        cfg: &PipelineConfig,
        metrics: Arc<Metrics>,
        opts: &RunOptions,
    ) -> Result<Pipeline, PipelineError> {
        aegis_hal::init();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto_threads = (cores / cfg.sources.len().max(1)).max(1);
        let mut sources: Vec<Box<dyn VideoSource>> = Vec::with_capacity(cfg.sources.len());
        let decoder_threads = match opts.decoder_threads {
            0 => auto_threads,
            n => n,
        };
        for s in &cfg.sources {
            let src: Box<dyn VideoSource> = match s.location() {
                SourceLocation::File(path) => {
                    let settings = FileSourceSettings {
                        path: path.clone(),
                        stream: StreamId::new(&s.id),
                        looping: s.loop_,
                        realtime: opts.force_realtime.unwrap_or(s.realtime),
                        max_frames: s.max_frames,
                        pool_frames: cfg.pool_frames as usize,
                        decoder_threads,
                        gpu: gpu_for(opts, &s.id),
                    };
                    // A file that cannot be opened is its stream's problem: the stream
                    // starts, reports the error (health, event) and ends; the others run.
                    match FileSource::open(settings) {
                        Ok(f) => Box::new(f),
                        Err(e) => Box::new(FailedSource::new(StreamId::new(&s.id), path, e)),
                    }
                }
                // Live sources connect on their own thread: the agent must start while a
                // camera is down, and says so in the stream's health.
                // libavformat receives the canonical re-serialisation of the parsed URL, with
                // the configured credentials in place of the URL's: exactly what validation
                // and the workflow policy checked.
                SourceLocation::Rtsp(url)
                | SourceLocation::Srt(url)
                | SourceLocation::Rtmp(url) => {
                    let mut settings = LiveSourceSettings::new(
                        url.to_libav(s.username.as_deref(), s.password.as_ref()),
                        StreamId::new(&s.id),
                    );
                    settings.transport = match s.transport {
                        aegis_config::RtspTransport::Tcp => RtspTransport::Tcp,
                        aegis_config::RtspTransport::Udp => RtspTransport::Udp,
                    };
                    settings.pool_frames = cfg.pool_frames as usize;
                    settings.decoder_threads = decoder_threads;
                    settings.gpu = gpu_for(opts, &s.id);
                    Box::new(LiveSource::new(settings))
                }
                SourceLocation::V4l2(device) => {
                    let c = s.capture.unwrap_or_default();
                    let request = CaptureRequest {
                        width: c.width,
                        height: c.height,
                        fps: c.fps,
                        format: c.format.map(|f| match f {
                            CaptureFormat::Mjpeg => FourCc::Mjpeg,
                            CaptureFormat::Yuyv => FourCc::Yuyv,
                            CaptureFormat::Nv12 => FourCc::Nv12,
                            CaptureFormat::H264 => FourCc::H264,
                        }),
                    };
                    let mut settings =
                        LiveSourceSettings::v4l2(&device, request, StreamId::new(&s.id));
                    settings.pool_frames = cfg.pool_frames as usize;
                    settings.decoder_threads = decoder_threads;
                    settings.gpu = gpu_for(opts, &s.id);
                    Box::new(LiveSource::new(settings))
                }
            };
            sources.push(src);
        }
        // Every stream's stages before anything starts: a bad stage must not leave a
        // half-started pipeline.
        let inference = opts
            .inference
            .clone()
            .unwrap_or_else(crate::inference::Inference::none);
        let mut stage_sets = Vec::with_capacity(sources.len());
        for _ in &sources {
            stage_sets.push(inference.build_stages(&cfg.stages)?);
        }
        let rules = rules_of(cfg, opts.sensing.as_ref())?;
        let mut shared = Vec::with_capacity(cfg.sinks.len());
        for (index, s) in cfg.sinks.iter().enumerate() {
            shared.push(
                sinks::open_shared(index, s, &metrics)
                    .map_err(|source| PipelineError::Sink { index, source })?,
            );
        }
        // Only now that everything opened: a failed start must not leave phantom streams,
        // and the streams of the pipeline this one replaces are forgotten.
        metrics.watch_sources(
            cfg.sources
                .iter()
                .zip(&sources)
                .map(|(s, src)| (s.id.clone(), src.health()))
                .collect(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let mut pipeline = Pipeline {
            stop: stop.clone(),
            stoppers: sources.iter().map(|s| s.stopper()).collect(),
            streams: Vec::new(),
            cfg: cfg.clone(),
            sensing: opts.sensing.clone(),
            source_events: SourceEvents {
                store: opts.store.clone(),
                topic: opts.events_topic.clone(),
                seen: Vec::new(),
            },
        };
        let ctx = StreamContext {
            metrics: metrics.clone(),
            stop,
            auto_threads,
            store: opts.store.clone(),
            events_topic: opts.events_topic.clone(),
            snapshots: opts.snapshots.clone(),
            sensing: opts.sensing.clone(),
            rules,
        };
        for (source, stages) in sources.into_iter().zip(stage_sets) {
            let threads = spawn_stream(source, stages, cfg, &shared, &ctx);
            match threads {
                Ok(t) => pipeline.streams.push(t),
                Err(e) => {
                    pipeline.stop();
                    pipeline.wait();
                    return Err(e);
                }
            }
        }
        pipeline.check_sources();
        Ok(pipeline)
    }

    /// Stores an event for every source that failed, went down or came back since the last
    /// call (see [`SourceEvents`]); the runtime calls it on its tick and once at the end.
    pub fn check_sources(&mut self) {
        self.source_events.check(&self.streams);
    }

    /// The pipeline this runs.
    pub fn config(&self) -> &PipelineConfig {
        &self.cfg
    }

    /// True when `new` differs from the running pipeline only in its stages, so that
    /// [`Pipeline::swap_stages`] can switch to it without stopping anything.
    pub fn can_swap_in_place(&self, new: &PipelineConfig) -> bool {
        let (a, b) = (&self.cfg, new);
        a.sources == b.sources
            && a.sinks == b.sinks
            && a.pool_frames == b.pool_frames
            && a.queue_depth == b.queue_depth
    }

    /// Switches every stream to `new`'s stages between two frames: no frame is dropped,
    /// nothing is reopened. Every stream's chain is built first, so a failure changes
    /// nothing. Follow the switch with [`Pipeline::stage_health`].
    pub fn swap_stages(
        &mut self,
        new: &PipelineConfig,
        inference: &crate::inference::Inference,
    ) -> Result<(), PipelineError> {
        if !self.can_swap_in_place(new) {
            return Err(PipelineError::NotSwappable);
        }
        let rules = rules_of(new, self.sensing.as_ref())?;
        let mut sets = Vec::with_capacity(self.streams.len());
        for _ in &self.streams {
            sets.push(inference.build_stages(&new.stages)?);
        }
        for (s, set) in self.streams.iter().zip(sets) {
            *s.slot.next.lock().unwrap_or_else(|p| p.into_inner()) = Some((set, rules.clone()));
            s.slot.pending.store(true, Ordering::Release);
        }
        self.cfg = new.clone();
        Ok(())
    }

    /// Each stream's current stage chain and how it has fared.
    pub fn stage_health(&self) -> Vec<StageHealth> {
        self.streams
            .iter()
            .map(|s| StageHealth {
                stream: s.id.clone(),
                generation: s.slot.generation.load(Ordering::Acquire),
                frames: s.slot.frames.load(Ordering::Acquire),
                failed_frames: s.slot.failed_frames.load(Ordering::Acquire),
                last_error: s
                    .slot
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone(),
                ended: s.stages.is_finished(),
            })
            .collect()
    }

    /// Asks every stream to end; recordings are finalised as the queues drain.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        for s in &self.stoppers {
            s.stop();
        }
    }

    /// True once every stream's threads have ended.
    pub fn is_finished(&self) -> bool {
        self.streams
            .iter()
            .all(|s| s.source.is_finished() && s.stages.is_finished() && s.sinks.is_finished())
    }

    /// Waits for every stream to end and reports what each did.
    pub fn wait(self) -> Vec<StreamReport> {
        self.streams
            .into_iter()
            .map(|s| {
                let (decoded, source, source_error) = s.source.join().unwrap_or_else(|_| {
                    (0, Default::default(), Some("source thread panicked".into()))
                });
                let (dropped, analytics) = s.stages.join().unwrap_or_default();
                let (delivered, sink_errors, copies_per_frame) = s
                    .sinks
                    .join()
                    .unwrap_or_else(|_| (0, vec!["sink thread panicked".into()], 0));
                StreamReport {
                    stream: s.id,
                    decoded,
                    delivered,
                    dropped,
                    source,
                    source_error,
                    sink_errors,
                    copies_per_frame,
                    analytics,
                }
            })
            .collect()
    }
}

fn spawn_named<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, PipelineError> {
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(f)
        .map_err(|source| PipelineError::Thread { name, source })
}

/// What every stream of a pipeline shares.
struct StreamContext {
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    auto_threads: usize,
    store: Option<crate::store::StoreHandle>,
    events_topic: Option<String>,
    snapshots: Option<Arc<snapshot::SnapshotHub>>,
    sensing: Option<Arc<crate::sensing::Sensing>>,
    rules: Vec<aegis_config::RuleConfig>,
}

fn spawn_stream(
    mut source: Box<dyn VideoSource>,
    mut stages: Vec<Box<dyn Stage>>,
    cfg: &PipelineConfig,
    shared: &[SharedSinkState],
    ctx: &StreamContext,
) -> Result<StreamThreads, PipelineError> {
    let (metrics, stop, auto_threads) = (&ctx.metrics, &ctx.stop, ctx.auto_threads);
    let (opts_store, events_topic) = (&ctx.store, &ctx.events_topic);
    let id = source.stream_id().to_string();
    let health = source.health();
    let sm = Arc::new(StreamMetrics::new(metrics, &id));
    let depth = cfg.queue_depth as usize;
    let q_labels = |q: &str| QueueLabels {
        stream: id.clone(),
        queue: q.into(),
    };
    let (dec_tx, dec_rx) = queue::bounded::<Frame>(
        depth,
        metrics
            .queue_depth
            .get_or_create_owned(&q_labels("decoded")),
    );
    let (proc_tx, proc_rx) = queue::bounded::<Frame>(
        depth,
        metrics
            .queue_depth
            .get_or_create_owned(&q_labels("processed")),
    );

    let stage_hist: Vec<Histogram> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            metrics
                .stage_latency
                .get_or_create_owned(&stage_labels(&id, format!("{i}:{}", s.kind())))
        })
        .collect();
    let stream_id = StreamId::new(&id);
    // Live sources learn their rate only once connected; encoders need one for rate control.
    let rate = match source.frame_rate() {
        (n, d) if n > 0 && d > 0 => (n, d),
        _ => DEFAULT_FRAME_RATE,
    };
    let mut sinks: Vec<Box<dyn Sink>> = cfg
        .sinks
        .iter()
        .zip(shared)
        .map(|(c, sh)| sinks::build(c, sh, &stream_id, rate, auto_threads, metrics))
        .collect();
    let sink_hist: Vec<Histogram> = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            metrics
                .stage_latency
                .get_or_create_owned(&stage_labels(&id, format!("sink:{i}:{}", s.kind())))
        })
        .collect();

    // Source thread.
    let src_metrics = sm.clone();
    let src_stop = stop.clone();
    let mut src_errors = ErrorReporter::new(metrics.clone(), &id);
    let src_id = id.clone();
    let source_thread = spawn_named(format!("src-{id}"), move || {
        src_metrics.running.inc();
        let mut decoded = 0u64;
        let mut last = source.stats();
        let mut end_error = None;
        let mut waits_seen = 0;
        while !src_stop.load(Ordering::Acquire) {
            let t0 = Instant::now();
            let next = source.next_frame();
            src_metrics
                .source_latency
                .observe(t0.elapsed().as_secs_f64());
            let stats = source.stats();
            let (d, l) = (&stats.decode, &last.decode);
            src_errors.report(
                "source",
                "decode",
                d.errors - l.errors,
                &"decoder rejected data",
            );
            src_errors.report(
                "source",
                "corrupt_frame",
                d.corrupt_frames.saturating_sub(l.corrupt_frames),
                &"decoder concealed damage in a frame",
            );
            src_errors.report(
                "source",
                "skipped_before_keyframe",
                d.skipped_before_keyframe
                    .saturating_sub(l.skipped_before_keyframe),
                &"packets dropped while waiting for a keyframe",
            );
            src_errors.report(
                "source",
                "read",
                stats.read_errors.saturating_sub(last.read_errors),
                &"container read error",
            );
            src_errors.report(
                "source",
                "truncated",
                u64::from(stats.truncated && !last.truncated),
                &"file ends in the middle of its data",
            );
            last = stats;
            let waits = source.pool_waits();
            src_metrics
                .pool_waits
                .inc_by(waits.saturating_sub(waits_seen));
            waits_seen = waits;
            src_metrics.pool_free.set(source.pool().available() as i64);
            match next {
                Ok(Some(frame)) => {
                    decoded += 1;
                    src_metrics.decoded.inc();
                    if dec_tx.send(frame).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    src_errors.report("source", "fatal", 1, &e);
                    tracing::error!(stream = %src_id, error = %e, "source ended with an error");
                    end_error = Some(e.to_string());
                    break;
                }
            }
        }
        src_metrics.running.dec();
        tracing::info!(stream = %src_id, frames = decoded, "source ended");
        (decoded, source.stats(), end_error)
    })?;

    // Stage thread.
    let stg_metrics = sm.clone();
    let mut stg_errors = ErrorReporter::new(metrics.clone(), &id);
    let names = |stages: &[Box<dyn Stage>]| -> Vec<String> {
        stages
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.kind()))
            .collect()
    };
    let mut tally = AnalyticsTally::new(
        metrics.clone(),
        &id,
        opts_store.clone(),
        events_topic.clone(),
        names(&stages),
    )
    .with_fusion(
        ctx.sensing.clone(),
        aegis_sensors::rules::RuleEngine::new(ctx.rules.clone()),
    );
    let slot = Arc::new(StageSlot::default());
    let stg_slot = slot.clone();
    let (stg_all_metrics, stg_id) = (metrics.clone(), id.clone());
    let mut stage_hist = stage_hist;
    let stage_thread = spawn_named(format!("stg-{id}"), move || {
        let mut dropped = 0u64;
        'frames: while let Ok(mut frame) = dec_rx.recv() {
            // A new chain (workflow switch) takes over between two frames.
            if stg_slot.pending.swap(false, Ordering::AcqRel)
                && let Some(next) = stg_slot
                    .next
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .take()
            {
                stages = next.0;
                tally.set_rules(aegis_sensors::rules::RuleEngine::new(next.1));
                let n = names(&stages);
                stage_hist = n
                    .iter()
                    .map(|name| {
                        stg_all_metrics
                            .stage_latency
                            .get_or_create_owned(&stage_labels(&stg_id, name.clone()))
                    })
                    .collect();
                tally.set_stages(n);
                stg_slot.frames.store(0, Ordering::Release);
                stg_slot.failed_frames.store(0, Ordering::Release);
                *stg_slot
                    .last_error
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                stg_slot.generation.fetch_add(1, Ordering::AcqRel);
            }
            let mut failed = false;
            for (i, (stage, hist)) in stages.iter_mut().zip(&stage_hist).enumerate() {
                let t0 = Instant::now();
                // Pixels on the GPU come down once, before the first stage that works on
                // the host (and before the sinks, below).
                if frame.device.is_some()
                    && !stage.on_device()
                    && !download(&mut frame, &mut stg_errors)
                {
                    dropped += 1;
                    stg_metrics.dropped_stage.inc();
                    continue 'frames;
                }
                let outcome = stage.process(&mut frame);
                let took = t0.elapsed().as_secs_f64();
                hist.observe(took);
                tally.stage_time(i, took);
                match outcome {
                    Ok(StageOutcome::Keep) => {}
                    Ok(StageOutcome::Drop) => {
                        dropped += 1;
                        stg_metrics.dropped_stage.inc();
                        tally.count(&frame);
                        stg_slot.frames.fetch_add(1, Ordering::AcqRel);
                        continue 'frames;
                    }
                    Err(e) => {
                        if !failed {
                            failed = true;
                            *stg_slot
                                .last_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                        stg_errors.report("stage", e.error_type, 1, &e)
                    }
                }
            }
            if frame.device.is_some() && !download(&mut frame, &mut stg_errors) {
                dropped += 1;
                stg_metrics.dropped_stage.inc();
                continue 'frames;
            }
            if failed {
                stg_slot.failed_frames.fetch_add(1, Ordering::AcqRel);
            }
            stg_slot.frames.fetch_add(1, Ordering::AcqRel);
            tally.count(&frame);
            if proc_tx.send(frame).is_err() {
                break;
            }
        }
        tally.finish();
        (dropped, tally.summary)
    })?;

    // Sink thread.
    let snk_metrics = sm;
    let snapshot_slot = ctx.snapshots.as_ref().map(|h| h.slot(&id));
    let mut snk_errors = ErrorReporter::new(metrics.clone(), &id);
    let sink_thread = spawn_named(format!("snk-{id}"), move || {
        let mut delivered = 0u64;
        let mut copies = 0;
        let mut window = (Instant::now(), 0u64);
        while let Ok(mut frame) = proc_rx.recv() {
            for (sink, hist) in sinks.iter_mut().zip(&sink_hist) {
                let t0 = Instant::now();
                let r = sink.consume(&mut frame);
                hist.observe(t0.elapsed().as_secs_f64());
                if let Err(e) = r {
                    snk_errors.report("sink", e.error_type, 1, &e);
                }
            }
            if let Some(slot) = &snapshot_slot {
                slot.offer(&frame);
            }
            // Counted by each copy site the frame went through, the sinks' included.
            copies = frame.copies;
            snk_metrics.copies.set(copies as i64);
            snk_metrics
                .frame_latency
                .observe(frame.meta.decoded_at.elapsed().as_secs_f64());
            snk_metrics.delivered.inc();
            delivered += 1;
            window.1 += 1;
            let elapsed = window.0.elapsed();
            if elapsed.as_secs_f64() >= 1.0 {
                snk_metrics.fps.set(window.1 as f64 / elapsed.as_secs_f64());
                window = (Instant::now(), 0);
            }
        }
        let mut errors = Vec::new();
        for sink in &mut sinks {
            if let Err(e) = sink.finish() {
                snk_errors.report("sink", e.error_type, 1, &e);
                errors.push(e.to_string());
            }
        }
        snk_metrics.fps.set(0.0);
        (delivered, errors, copies)
    })?;

    Ok(StreamThreads {
        slot,
        health,
        source: source_thread,
        stages: stage_thread,
        sinks: sink_thread,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_go_into_the_canonical_url_percent_encoded() {
        let source = |url: &str| aegis_config::SourceConfig::new("cam", url);
        let libav = |url: &str, user: Option<&str>, pw: Option<&aegis_config::Secret>| {
            let SourceLocation::Rtsp(u) = source(url).location() else {
                panic!("{url} is not an rtsp source");
            };
            u.to_libav(user, pw)
        };
        let pw = aegis_config::Secret::new("p@ss:w/rd");
        assert_eq!(
            libav("RTSP://Cam:554/live", Some("ad min"), Some(&pw)),
            "rtsp://ad%20min:p%40ss%3Aw%2Frd@cam:554/live"
        );
        // Configured credentials replace any in the URL; without them the URL's are kept,
        // re-encoded.
        assert_eq!(
            libav("rtsp://old:x@cam/live", Some("u"), None),
            "rtsp://u@cam/live"
        );
        assert_eq!(
            libav("rtsp://old:x%21@cam/live", None, Some(&pw)),
            "rtsp://old:x%21@cam/live"
        );
    }
}
