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
mod stream;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use aegis_config::PipelineConfig;
use aegis_hal::Frame;
use aegis_hal::source::{SourceStopper, VideoSource};
use aegis_hal::stage::Stage;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{DropLabels, ErrorLabels, Metrics, StageLabels, StreamLabels};
use analytics::AnalyticsSummary;
use stream::{StreamContext, spawn_stream};

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
    /// Where the web page's live viewers reach the streams' encoded video.
    pub live: Option<Arc<crate::live::LiveHub>>,
    /// Where the web server finds the streams the `hls` and `webrtc` sinks serve.
    pub served: Option<Arc<crate::outputs::Served>>,
    /// The sensors: events get the fused pose, rules see the sensor state.
    pub sensing: Option<Arc<crate::sensing::Sensing>>,
    /// The backend (`None`: cpu). With a GPU, file sources decode on NVDEC and the stages
    /// that can work on device frames do.
    pub backend: Option<aegis_hal::backend::Backend>,
    /// Told which stages and models run, at each start and stage switch (the web page).
    pub models_in_use: Option<Arc<crate::inference::ModelsInUse>>,
    /// Where the stage and sink threads report progress (systemd's watchdog).
    pub watch: Option<crate::liveness::Watch>,
    /// Event clips and the evidence policy (`pipeline.evidence`; `None`: no clips).
    pub evidence: Option<Arc<crate::evidence::Evidence>>,
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
    models_in_use: Option<Arc<crate::inference::ModelsInUse>>,
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
        if let Some(served) = &opts.served {
            served.whip.serve(&cfg.sources);
        }
        let open = aegis_hal::source::OpenSettings {
            pool_frames: cfg.pool_frames as usize,
            decoder_threads,
            force_realtime: opts.force_realtime,
            backend: opts.backend.as_ref(),
            pushed: opts.served.as_ref().map(|s| s.whip.feeds()),
        };
        for s in &cfg.sources {
            sources.push(aegis_hal::source::open(s, &open));
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
            models_in_use: opts.models_in_use.clone(),
        };
        let ctx = StreamContext {
            metrics: metrics.clone(),
            stop,
            auto_threads,
            store: opts.store.clone(),
            events_topic: opts.events_topic.clone(),
            snapshots: opts.snapshots.clone(),
            live: opts.live.clone(),
            served: opts.served.clone(),
            sensing: opts.sensing.clone(),
            rules,
            watch: opts.watch.clone(),
            evidence: opts.evidence.clone(),
            nvmm: opts.backend.as_ref().and_then(|b| b.nvmm.clone()),
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
        if let Some(m) = &pipeline.models_in_use {
            m.publish(&cfg.stages, &inference);
        }
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
        if let Some(m) = &self.models_in_use {
            m.publish(&new.stages, inference);
        }
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

#[cfg(test)]
mod tests {
    use aegis_config::SourceLocation;

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
