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
    /// `connecting`, `streaming`, `stalled`, `backing_off`, `ended`, `failed`, `waiting`.
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

/// Labels of the streaming outputs' metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutputLabels {
    /// Stream id.
    pub stream: String,
    /// `rtsp`, `push`.
    pub output: String,
}

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
    /// Live-view viewers now.
    pub live_viewers: Family<StreamLabels, Gauge>,
    /// Live-view bytes queued to viewers (fMP4, all viewers summed).
    pub live_bytes: Family<StreamLabels, Counter>,
    /// Live-view fragments a viewer missed because its queue was full.
    pub live_dropped: Family<StreamLabels, Counter>,
    /// Streaming outputs' consumers now (RTSP sessions playing, push connections up).
    pub output_clients: Family<OutputLabels, Gauge>,
    /// Bytes the streaming outputs sent (RTP payload, muxed push output).
    pub output_bytes: Family<OutputLabels, Counter>,
    /// Packets a slow output consumer missed (it resumes at the next keyframe).
    pub output_dropped: Family<OutputLabels, Counter>,
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
            live_viewers: Family::default(),
            live_bytes: Family::default(),
            live_dropped: Family::default(),
            output_clients: Family::default(),
            output_bytes: Family::default(),
            output_dropped: Family::default(),
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
            "live_viewers",
            "Viewers of the web page's live view",
            m.live_viewers.clone(),
        );
        registry.register(
            "live_bytes",
            "Live-view video bytes queued to viewers",
            m.live_bytes.clone(),
        );
        registry.register(
            "live_dropped",
            "Live-view fragments a slow viewer missed (it resumes at the next keyframe)",
            m.live_dropped.clone(),
        );
        registry.register(
            "output_clients",
            "Streaming-output consumers now (RTSP sessions playing, push connections up)",
            m.output_clients.clone(),
        );
        registry.register(
            "output_bytes",
            "Bytes the streaming outputs sent",
            m.output_bytes.clone(),
        );
        registry.register(
            "output_dropped",
            "Packets a slow streaming-output consumer missed (it resumes at the next keyframe)",
            m.output_dropped.clone(),
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
            "1 for the state each stream's source is in (connecting, streaming, stalled, backing_off, ended, failed, waiting)",
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

    /// One counter of a watched component, read now (None: no such component or counter).
    pub fn component_value(&self, component: &str, counter: &str) -> Option<u64> {
        self.component_sources
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(c, _)| c == component)
            .find_map(|(_, source)| source().into_iter().find(|(k, _)| *k == counter))
            .map(|(_, v)| v)
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

/// The metric names the documentation mentions are names `/metrics` exports.
#[cfg(test)]
mod doc_metric_names {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::time::Duration;

    use super::*;

    /// A registry with a series in every family, as a running stream (`cam0`, live source,
    /// record sink, analytics stages) and the store component create them: families whose
    /// series appear only once a stream exists render no sample line before.
    fn populated() -> Metrics {
        let m = Metrics::new("cpu");
        let stream = || "cam0".to_string();
        let sl = StreamLabels { stream: stream() };
        let stage = StageLabels {
            stream: stream(),
            stage: "source".into(),
        };
        m.frames.get_or_create(&stage).inc();
        m.stage_latency.get_or_create(&stage).observe(0.001);
        m.frame_latency.get_or_create(&sl).observe(0.002);
        m.queue_depth
            .get_or_create(&QueueLabels {
                stream: stream(),
                queue: "decoded".into(),
            })
            .set(1);
        m.dropped
            .get_or_create(&DropLabels {
                stream: stream(),
                reason: "stage".into(),
            })
            .inc();
        m.copies_per_frame.get_or_create(&sl).set(0);
        m.fps.get_or_create(&sl).set(25.0);
        m.errors
            .get_or_create(&ErrorLabels {
                component: "source".into(),
                error_type: "decode".into(),
                stream: stream(),
            })
            .inc();
        m.pool_free.get_or_create(&sl).set(4);
        m.pool_waits.get_or_create(&sl).inc();
        m.segments.get_or_create(&sl).inc();
        m.recorded_bytes.get_or_create(&sl).inc_by(1000);
        let sink = SinkLabels {
            sink: "0:record".into(),
        };
        m.disk_used.get_or_create(&sink).set(1000);
        m.disk_evictions.get_or_create(&sink).set(0);
        m.streams_running.set(1);
        m.objects
            .get_or_create(&AnalyticsLabels {
                stream: stream(),
                kind: "detect".into(),
                label: "person".into(),
            })
            .inc();
        m.moderated
            .get_or_create(&AnalyticsLabels {
                stream: stream(),
                kind: "blur_region".into(),
                label: String::new(),
            })
            .inc();
        m.tracks.get_or_create(&sl).inc();
        m.background_replaced.get_or_create(&sl).inc();
        m.live_viewers.get_or_create(&sl).set(1);
        m.live_bytes.get_or_create(&sl).inc();
        m.live_dropped.get_or_create(&sl).inc();
        let ol = OutputLabels {
            stream: stream(),
            output: "rtsp".into(),
        };
        m.output_clients.get_or_create(&ol).set(1);
        m.output_bytes.get_or_create(&ol).inc();
        m.output_dropped.get_or_create(&ol).inc();
        m.watch_sources(vec![(stream(), Arc::new(SourceHealth::default()))]);
        // The source fps is computed over windows of at least a second: start the window in
        // the past instead of waiting for one.
        for w in m
            .watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter_mut()
        {
            if let Some(earlier) = w.last.0.checked_sub(Duration::from_secs(2)) {
                w.last.0 = earlier;
            }
        }
        m.watch_component("store", Box::new(|| vec![("written", 1)]));
        m
    }

    /// The families of `m` without a series: they render nothing, not even their name, so
    /// [`populated`] must create one in each. The destructuring names every field, so a
    /// metric added to [`Metrics`] does not compile here until it is sorted in.
    fn unpopulated(m: &Metrics) -> Vec<&'static str> {
        use prometheus_client::encoding::EncodeMetric;
        let Metrics {
            registry: _,
            frames,
            stage_latency,
            frame_latency,
            queue_depth,
            dropped,
            copies_per_frame,
            fps,
            errors,
            pool_free,
            pool_waits,
            segments,
            recorded_bytes,
            disk_used,
            disk_evictions,
            objects,
            moderated,
            tracks,
            background_replaced,
            live_viewers,
            live_bytes,
            live_dropped,
            output_clients,
            output_bytes,
            output_dropped,
            source_state,
            source_reconnects,
            source_fps,
            components,
            // Without labels: always rendered.
            streams_running: _,
            process_rss: _,
            process_cpu_ms: _,
            allocations: _,
            // Not metrics.
            watched: _,
            component_sources: _,
            process_state: _,
        } = m;
        let families: [(&'static str, &dyn EncodeMetric); 28] = [
            ("frames", frames),
            ("stage_latency", stage_latency),
            ("frame_latency", frame_latency),
            ("queue_depth", queue_depth),
            ("dropped", dropped),
            ("copies_per_frame", copies_per_frame),
            ("fps", fps),
            ("errors", errors),
            ("pool_free", pool_free),
            ("pool_waits", pool_waits),
            ("segments", segments),
            ("recorded_bytes", recorded_bytes),
            ("disk_used", disk_used),
            ("disk_evictions", disk_evictions),
            ("objects", objects),
            ("moderated", moderated),
            ("tracks", tracks),
            ("background_replaced", background_replaced),
            ("live_viewers", live_viewers),
            ("live_bytes", live_bytes),
            ("live_dropped", live_dropped),
            ("output_clients", output_clients),
            ("output_bytes", output_bytes),
            ("output_dropped", output_dropped),
            ("source_state", source_state),
            ("source_reconnects", source_reconnects),
            ("source_fps", source_fps),
            ("components", components),
        ];
        families
            .into_iter()
            .filter(|(_, f)| f.is_empty())
            .map(|(name, _)| name)
            .collect()
    }

    /// The names a scraper can use from a rendering: every sample's name, and the family
    /// name of histograms (`<name>` for `<name>_bucket`, `_sum` and `_count`).
    fn exported(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split_whitespace();
                if let (Some(name), Some("histogram")) = (parts.next(), parts.next()) {
                    names.insert(name.to_string());
                }
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).unwrap_or(line.len());
                names.insert(line[..end].to_string());
            }
        }
        names
    }

    /// The repository root (the workspace's directory).
    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the agent crate is inside the workspace")
            .to_path_buf()
    }

    /// `aegis_hal`, `aegis_config`, ...: the library names of the crates in the repository
    /// (every `Cargo.toml` one or two levels down), which docs name but are not metrics.
    fn crate_names(root: &Path) -> BTreeSet<String> {
        let mut manifests = Vec::new();
        let subdirs = |dir: &Path| -> Vec<PathBuf> {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| {
                            p.is_dir()
                                && p.file_name().is_some_and(|n| {
                                    let n = n.to_string_lossy();
                                    !n.starts_with('.') && n != "target"
                                })
                        })
                        .collect()
                })
                .unwrap_or_default()
        };
        for dir in subdirs(root) {
            manifests.push(dir.join("Cargo.toml"));
            manifests.extend(subdirs(&dir).into_iter().map(|d| d.join("Cargo.toml")));
        }
        manifests
            .iter()
            .filter_map(|m| std::fs::read_to_string(m).ok())
            .filter_map(|text| {
                text.lines()
                    .find_map(|l| l.trim().strip_prefix("name = \"")?.strip_suffix('"'))
                    .map(|name| name.replace('-', "_"))
            })
            .collect()
    }

    /// A metric name a document mentions: a name, or a prefix (`aegis_source_*`).
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Mention {
        name: String,
        prefix: bool,
    }

    /// The metric names in `text`: `aegis_[a-z0-9_]+` tokens that are not part of a longer
    /// identifier, a Rust path (`aegis_hal::x`), a crate name (`aegis_hal=debug`) or a file
    /// name (`/x/aegis_y`, `aegis_y.so`).
    fn mentions(text: &str, crates: &BTreeSet<String>) -> Vec<Mention> {
        let bytes = text.as_bytes();
        let is_word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
        let mut out = Vec::new();
        for (start, _) in text.match_indices("aegis_") {
            if start > 0 && (is_word(bytes[start - 1]) || bytes[start - 1] == b'/') {
                continue;
            }
            let len = text[start..]
                .bytes()
                .take_while(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_')
                .count();
            let name = &text[start..start + len];
            let after = &text[start + len..];
            let file_extension = after
                .strip_prefix('.')
                .is_some_and(|a| a.starts_with(|c: char| c.is_ascii_alphanumeric()));
            if after.starts_with("::")
                || after.starts_with(|c: char| c.is_ascii_uppercase())
                || file_extension
                || crates.contains(name)
            {
                continue;
            }
            out.push(Mention {
                name: name.to_string(),
                prefix: after.starts_with('*'),
            });
        }
        out
    }

    #[test]
    fn every_family_renders_a_sample_once_a_stream_exists() {
        let m = populated();
        let names = exported(&m.render());
        let empty = unpopulated(&m);
        assert!(
            empty.is_empty(),
            "families without a series: create one in `populated` so the doc check sees \
             their names: {empty:?}"
        );
        for name in [
            "aegis_frames_total",
            "aegis_source_reconnects_total",
            "aegis_source_fps",
            "aegis_stage_latency_seconds",
            "aegis_build_info",
        ] {
            assert!(names.contains(name), "{name} not in {names:?}");
        }
        assert!(!names.contains("aegis_source_reconnects"));
    }

    #[test]
    fn mentions_skip_crates_paths_and_files() {
        let crates = BTreeSet::from(["aegis_hal".to_string(), "aegis_config".to_string()]);
        let text = "`aegis_hal::stage` and aegis_config; RUST_LOG=aegis_hal=debug, \
                    /usr/lib/aegis_x, aegis_y.so, myaegis_z, `aegis_frames_total{stream}` \
                    and aegis_source_*.";
        assert_eq!(
            mentions(text, &crates),
            [
                Mention {
                    name: "aegis_frames_total".into(),
                    prefix: false
                },
                Mention {
                    name: "aegis_source_".into(),
                    prefix: true
                },
            ]
        );
    }

    /// Every metric name in docs/*.md and README.md is one the endpoint exports, so a
    /// dashboard or alert written from the docs finds its series.
    #[test]
    fn docs_name_only_exported_metrics() {
        let names = exported(&populated().render());
        let root = root();
        let crates = crate_names(&root);
        assert!(
            crates.contains("aegis_hal") && crates.contains("aegis_ota"),
            "crate names not found under {}: {crates:?}",
            root.display()
        );
        let mut files = vec![root.join("README.md")];
        let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
            .expect("docs/ is readable")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "md"))
            .collect();
        docs.sort();
        files.extend(docs);
        let mut checked = 0;
        let mut wrong = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file)
                .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            for (line_no, line) in text.lines().enumerate() {
                for m in mentions(line, &crates) {
                    checked += 1;
                    let found = if m.prefix {
                        names.iter().any(|n| n.starts_with(&m.name))
                    } else {
                        names.contains(&m.name)
                    };
                    if !found {
                        let near: Vec<&String> =
                            names.iter().filter(|n| n.starts_with(&m.name)).collect();
                        wrong.push(format!(
                            "{}:{}: {}{} (exported: {near:?})",
                            file.strip_prefix(&root).unwrap_or(file).display(),
                            line_no + 1,
                            m.name,
                            if m.prefix { "*" } else { "" },
                        ));
                    }
                }
            }
        }
        assert!(checked > 0, "no metric names found in {files:?}");
        assert!(
            wrong.is_empty(),
            "the docs name metrics /metrics does not export:\n  {}",
            wrong.join("\n  ")
        );
    }
}
