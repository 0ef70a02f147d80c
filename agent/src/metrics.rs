//! Prometheus metrics of the agent.
//!
//! Every label set is created once, when a stream starts, and the runtime keeps the metric
//! handles (reference-counted atomics), so recording a metric on the frame path neither
//! allocates nor takes a map lock. Process-wide gauges (RSS, CPU, allocations) are refreshed
//! when `/metrics` is scraped.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aegis_hal::source::{HealthSnapshot, SourceHealth, SourceState};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Labels of per-stream metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// Stream id.
    pub stream: String,
}

/// Labels of the per-stream state gauges (one series per state; the current one is 1).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Stream id.
    pub stream: String,
    /// `connecting`, `streaming`, `stalled`, `backing_off`, `ended`.
    pub state: String,
}

/// A source whose health `/metrics` and `/healthz` report.
struct Watched {
    stream: String,
    health: Arc<SourceHealth>,
    /// Frames and time at the start of the current fps window.
    last: (Instant, u64),
    /// Reconnects already added to the counter.
    reconnects: u64,
}

/// Labels of per-stream, per-stage metrics (stage = `source`, a stage kind, or `sink:<kind>`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    /// Stream id.
    pub stream: String,
    /// `source`, `<index>:<stage kind>` or `sink:<index>:<kind>`.
    pub stage: String,
}

/// Labels of queue metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// Stream id.
    pub stream: String,
    /// `decoded` (source → stages) or `processed` (stages → sinks).
    pub queue: String,
}

/// Labels of dropped-frame counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// Stream id.
    pub stream: String,
    /// Why: `stage` (a stage asked to drop the frame).
    pub reason: String,
}

/// Labels of the error counter: every failure is a typed event that logs once and counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `source`, `stage`, `sink`.
    pub component: String,
    /// Stable short error type (`decode`, `read`, `encode`, `mux`, ...).
    pub error_type: String,
    /// Stream id.
    pub stream: String,
}

/// Labels of analytics counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnalyticsLabels {
    /// Stream id.
    pub stream: String,
    /// `detect` or `moderate` (objects), or the moderation action (verdicts).
    pub kind: String,
    /// Class label (objects); empty for verdicts.
    pub label: String,
}

/// Labels of component counters copied in at scrape time (store writer, fleet link).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ComponentLabels {
    /// `store`, `fleet`.
    pub component: String,
    /// The counter (`written`, `dropped`, `acked`, ...).
    pub counter: String,
}

/// Reads a component's counters at scrape time.
pub type CounterSource = Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>;

/// Labels of per-sink metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    /// Sink index and kind, e.g. `0:record`.
    pub sink: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s in ×2 steps.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// All metrics the agent exports.
pub struct Metrics {
    registry: Registry,
    /// Frames that passed a point (`source` = decoded, `sink` = fully processed).
    pub frames: Family<StageLabels, Counter>,
    /// Per-stage processing time.
    pub stage_latency: HistogramFamily<StageLabels>,
    /// Decode-to-sink latency of each frame.
    pub frame_latency: HistogramFamily<StreamLabels>,
    /// Frames waiting in each bounded queue.
    pub queue_depth: Family<QueueLabels, Gauge>,
    /// Frames dropped, by reason.
    pub dropped: Family<DropLabels, Counter>,
    /// Pixel copies of the last frame, from decoder output to encoder input.
    pub copies_per_frame: Family<StreamLabels, Gauge>,
    /// Frames per second over the last second, per stream.
    pub fps: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    /// Typed failures.
    pub errors: Family<ErrorLabels, Counter>,
    /// Free surfaces in each stream's pool.
    pub pool_free: Family<StreamLabels, Gauge>,
    /// Times a source waited for a free surface (backpressure).
    pub pool_waits: Family<StreamLabels, Counter>,
    /// Recording segments completed.
    pub segments: Family<StreamLabels, Counter>,
    /// Compressed bytes recorded.
    pub recorded_bytes: Family<StreamLabels, Counter>,
    /// Bytes of completed segments a record sink keeps on disk.
    pub disk_used: Family<SinkLabels, Gauge>,
    /// Segments a record sink deleted to stay inside its disk budget.
    pub disk_evictions: Family<SinkLabels, Gauge>,
    /// Streams whose source is running.
    pub streams_running: Gauge,
    /// Objects reported per frame by the inference stages.
    pub objects: Family<AnalyticsLabels, Counter>,
    /// Frames with a moderation verdict, by action.
    pub moderated: Family<AnalyticsLabels, Counter>,
    /// Tracks started.
    pub tracks: Family<StreamLabels, Counter>,
    /// Frames whose background was replaced.
    pub background_replaced: Family<StreamLabels, Counter>,
    source_state: Family<StateLabels, Gauge>,
    source_reconnects: Family<StreamLabels, Counter>,
    source_fps: Family<StreamLabels, Gauge<f64, AtomicU64>>,
    watched: Mutex<Vec<Watched>>,
    process_rss: Gauge,
    components: Family<ComponentLabels, Gauge>,
    component_sources: Mutex<Vec<(String, CounterSource)>>,
    process_cpu_ms: Gauge,
    allocations: Gauge,
    process_state: Mutex<()>,
}

impl Metrics {
    /// Creates and registers every metric. `backend` and `version` go into `aegis_build_info`.
    pub fn new(backend: &str) -> Self {
        let mut registry = Registry::with_prefix("aegis");
        let m = Metrics {
            frames: Family::default(),
            stage_latency: Family::new_with_constructor(latency_histogram),
            frame_latency: Family::new_with_constructor(latency_histogram),
            queue_depth: Family::default(),
            dropped: Family::default(),
            copies_per_frame: Family::default(),
            fps: Family::default(),
            errors: Family::default(),
            pool_free: Family::default(),
            pool_waits: Family::default(),
            segments: Family::default(),
            recorded_bytes: Family::default(),
            disk_used: Family::default(),
            disk_evictions: Family::default(),
            streams_running: Gauge::default(),
            objects: Family::default(),
            moderated: Family::default(),
            tracks: Family::default(),
            background_replaced: Family::default(),
            source_state: Family::default(),
            source_reconnects: Family::default(),
            source_fps: Family::default(),
            watched: Mutex::new(Vec::new()),
            process_rss: Gauge::default(),
            components: Family::default(),
            component_sources: Mutex::new(Vec::new()),
            process_cpu_ms: Gauge::default(),
            allocations: Gauge::default(),
            process_state: Mutex::new(()),
            registry: Registry::default(),
        };
        registry.register(
            "build",
            "Agent version and selected backend",
            Info::new(vec![
                ("version".to_string(), env!("CARGO_PKG_VERSION").to_string()),
                ("backend".to_string(), backend.to_string()),
            ]),
        );
        registry.register(
            "frames",
            "Frames that passed a pipeline point",
            m.frames.clone(),
        );
        registry.register(
            "stage_latency_seconds",
            "Processing time per frame of each stage (source = demux+decode+surface copy)",
            m.stage_latency.clone(),
        );
        registry.register(
            "frame_latency_seconds",
            "Time from decoder output to the last sink, per frame",
            m.frame_latency.clone(),
        );
        registry.register(
            "objects",
            "Objects the inference stages reported, summed over frames",
            m.objects.clone(),
        );
        registry.register(
            "moderated_frames",
            "Frames with a content-moderation verdict, by action",
            m.moderated.clone(),
        );
        registry.register("tracks", "Object tracks started", m.tracks.clone());
        registry.register(
            "background_replaced_frames",
            "Frames whose background a virtual-background stage replaced",
            m.background_replaced.clone(),
        );
        registry.register(
            "queue_depth",
            "Frames waiting in a bounded queue",
            m.queue_depth.clone(),
        );
        registry.register(
            "frames_dropped",
            "Frames dropped, by reason",
            m.dropped.clone(),
        );
        registry.register(
            "copies_per_frame",
            "Pixel copies per frame between decoder output and encoder input",
            m.copies_per_frame.clone(),
        );
        registry.register(
            "stream_fps",
            "Frames per second reaching the sinks",
            m.fps.clone(),
        );
        registry.register(
            "component_errors",
            "Failures by component and type",
            m.errors.clone(),
        );
        registry.register(
            "pool_free_surfaces",
            "Free surfaces in the stream's pool",
            m.pool_free.clone(),
        );
        registry.register(
            "pool_waits",
            "Times the source waited for a free surface (backpressure)",
            m.pool_waits.clone(),
        );
        registry.register(
            "recording_segments",
            "Recording segments completed",
            m.segments.clone(),
        );
        registry.register(
            "recorded_bytes",
            "Compressed video bytes recorded",
            m.recorded_bytes.clone(),
        );
        registry.register(
            "recording_disk_used_bytes",
            "Bytes of completed segments kept by a record sink",
            m.disk_used.clone(),
        );
        registry.register(
            "recording_evicted_segments",
            "Segments deleted to keep inside the disk budget",
            m.disk_evictions.clone(),
        );
        registry.register(
            "streams_running",
            "Streams whose source is running",
            m.streams_running.clone(),
        );
        registry.register(
            "source_state",
            "1 for the state each stream's source is in (connecting, streaming, stalled, backing_off, ended)",
            m.source_state.clone(),
        );
        registry.register(
            "source_reconnects",
            "Connection attempts after the first, per live source",
            m.source_reconnects.clone(),
        );
        registry.register(
            "source_fps",
            "Frames per second coming out of each source's decoder (windows of at least 1 s)",
            m.source_fps.clone(),
        );
        registry.register(
            "component_counter",
            "Counters of the store writer and the fleet link (written, dropped, acked, ...)",
            m.components.clone(),
        );
        registry.register(
            "process_resident_memory_bytes",
            "Resident set size of the agent",
            m.process_rss.clone(),
        );
        registry.register(
            "process_cpu_milliseconds",
            "CPU time (user+system) used by the agent since start",
            m.process_cpu_ms.clone(),
        );
        registry.register(
            "heap_allocations",
            "Heap allocations made by the agent's Rust code since start",
            m.allocations.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Reports each `(stream, health)` as that stream's source state in `/metrics` and
    /// `/healthz`, replacing the sources of the pipeline that ran before (one pipeline runs
    /// at a time): a rebuilt pipeline's old streams no longer count.
    pub fn watch_sources(&self, sources: Vec<(String, Arc<SourceHealth>)>) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for old in watched.iter() {
            if sources.iter().any(|(id, _)| *id == old.stream) {
                continue;
            }
            for state in SourceState::ALL {
                self.source_state.remove(&StateLabels {
                    stream: old.stream.clone(),
                    state: state.as_str().to_string(),
                });
            }
            let sl = StreamLabels {
                stream: old.stream.clone(),
            };
            self.source_fps.remove(&sl);
        }
        *watched = sources
            .into_iter()
            .map(|(stream, health)| {
                let frames = health.snapshot().frames;
                // A new source's counts start at zero; the exported counter keeps adding.
                Watched {
                    stream,
                    health,
                    last: (Instant::now(), frames),
                    reconnects: 0,
                }
            })
            .collect();
    }

    /// The health of every watched source, in pipeline order.
    pub fn source_health(&self) -> Vec<(String, HealthSnapshot)> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|w| (w.stream.clone(), w.health.snapshot()))
            .collect()
    }

    fn refresh_sources(&self) {
        let mut watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        for w in watched.iter_mut() {
            let h = w.health.snapshot();
            for state in SourceState::ALL {
                let labels = StateLabels {
                    stream: w.stream.clone(),
                    state: state.as_str().to_string(),
                };
                self.source_state
                    .get_or_create(&labels)
                    .set(i64::from(state == h.state));
            }
            let sl = StreamLabels {
                stream: w.stream.clone(),
            };
            self.source_reconnects
                .get_or_create(&sl)
                .inc_by(h.reconnects.saturating_sub(w.reconnects));
            w.reconnects = h.reconnects;
            // A window of at least a second, so frequent scrapers (web page, fleet link) do
            // not turn the rate into noise.
            let now = Instant::now();
            let dt = now.duration_since(w.last.0).as_secs_f64();
            if dt >= 1.0 {
                let fps = h.frames.saturating_sub(w.last.1) as f64 / dt;
                self.source_fps.get_or_create(&sl).set(fps);
                w.last = (now, h.frames);
            }
        }
    }

    /// Exports `source`'s counters as `aegis_component_counter{component=...}`.
    pub fn watch_component(&self, component: &str, source: CounterSource) {
        self.component_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((component.to_string(), source));
    }

    /// Renders the Prometheus text exposition, refreshing the process gauges first.
    pub fn render(&self) -> String {
        self.refresh_sources();
        for (component, source) in self
            .component_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            for (counter, v) in source() {
                self.components
                    .get_or_create(&ComponentLabels {
                        component: component.clone(),
                        counter: counter.to_string(),
                    })
                    .set(v as i64);
            }
        }
        {
            let _one_at_a_time = self.process_state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(p) = crate::process::sample() {
                self.process_rss.set(p.rss_bytes as i64);
                self.process_cpu_ms.set(p.cpu_ms as i64);
            }
            self.allocations.set(crate::alloc::count() as i64);
        }
        let mut out = String::with_capacity(16 * 1024);
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
            out.push_str("# metrics encoding failed\n");
        }
        out
    }
}
