//! One stream's three threads, each a named loop that owns what it touches:
//!
//! - [`SourceLoop`] (`src-<id>`): owns the source; pulls decoded frames into the `decoded`
//!   queue and turns the source's counters into error metrics.
//! - [`StageLoop`] (`stg-<id>`): owns the stage chain and the analytics tally; runs the
//!   stages in order on each frame, takes a replacement chain from the [`StageSlot`] between
//!   two frames (a workflow switch), downloads GPU frames before the first host stage.
//! - [`SinkLoop`] (`snk-<id>`): owns the sinks; hands each frame to every sink in turn,
//!   offers snapshots, and finishes the sinks (recordings closed) when the queue ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use aegis_config::PipelineConfig;
use aegis_hal::source::{SourceStats, VideoSource};
use aegis_hal::stage::{Stage, StageOutcome};
use aegis_hal::{Frame, StreamId};
use prometheus_client::metrics::histogram::Histogram;

use super::analytics::{AnalyticsSummary, AnalyticsTally};
use super::queue::{QueueRx as Receiver, QueueTx as Sender};
use super::sinks::{self, SharedSinkState, Sink};
use super::{
    DEFAULT_FRAME_RATE, ErrorReporter, PipelineError, StageSlot, StreamMetrics, StreamThreads,
    download, queue, snapshot, spawn_named, stage_labels,
};
use crate::live;
use crate::metrics::{Metrics, QueueLabels};

/// What every stream of a pipeline shares.
pub(super) struct StreamContext {
    pub(super) metrics: Arc<Metrics>,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) auto_threads: usize,
    pub(super) store: Option<crate::store::StoreHandle>,
    pub(super) events_topic: Option<String>,
    pub(super) snapshots: Option<Arc<snapshot::SnapshotHub>>,
    pub(super) live: Option<Arc<live::LiveHub>>,
    pub(super) served: Option<Arc<crate::outputs::Served>>,
    pub(super) sensing: Option<Arc<crate::sensing::Sensing>>,
    pub(super) rules: Vec<aegis_config::RuleConfig>,
    pub(super) watch: Option<crate::liveness::Watch>,
    pub(super) evidence: Option<Arc<crate::evidence::Evidence>>,
    /// Orin's codecs (the `jetson` backend): the record sink's hardware encoder.
    pub(super) nvmm: Option<Arc<aegis_hal::backend::NvmmCodecs>>,
}

/// Starts one stream's source, stage and sink threads.
pub(super) fn spawn_stream(
    source: Box<dyn VideoSource>,
    stages: Vec<Box<dyn Stage>>,
    cfg: &PipelineConfig,
    shared: &[SharedSinkState],
    ctx: &StreamContext,
) -> Result<StreamThreads, PipelineError> {
    let metrics = &ctx.metrics;
    let id = source.stream_id().to_string();
    let health = source.health();
    let sm = Arc::new(StreamMetrics::new(metrics, &id));
    let depth = cfg.queue_depth as usize;
    let queue = |name: &str| {
        queue::bounded::<Frame>(
            depth,
            metrics.queue_depth.get_or_create_owned(&QueueLabels {
                stream: id.clone(),
                queue: name.into(),
            }),
        )
    };
    let (dec_tx, dec_rx) = queue("decoded");
    let (proc_tx, proc_rx) = queue("processed");
    let stream_id = StreamId::new(&id);
    // Live sources learn their rate only once connected; encoders need one for rate control.
    let rate = match source.frame_rate() {
        (n, d) if n > 0 && d > 0 => (n, d),
        _ => DEFAULT_FRAME_RATE,
    };
    // The live view takes the first recorder's packets (one encode for both), else encodes
    // on its own while somebody watches.
    // Event clips are cut from the same packets.
    let live_slot = ctx.live.as_ref().map(|h| h.slot(&id));
    let clip_tap = ctx.evidence.as_ref().map(|e| e.tap(&id));
    let taps: Vec<Arc<dyn aegis_hal::record::PacketTap>> = live_slot
        .clone()
        .map(|s| s as Arc<dyn aegis_hal::record::PacketTap>)
        .into_iter()
        .chain(clip_tap.map(|c| c as Arc<dyn aegis_hal::record::PacketTap>))
        .collect();
    let mut tap =
        match taps.len() {
            0 => None,
            1 => taps.into_iter().next(),
            _ => Some(Arc::new(aegis_hal::record::TapFanout(taps))
                as Arc<dyn aegis_hal::record::PacketTap>),
        };
    let mut tapped = false;
    let sinks: Vec<Box<dyn Sink>> = cfg
        .sinks
        .iter()
        .zip(shared)
        .map(|(c, sh)| {
            let t = match c {
                aegis_config::SinkConfig::Record(_) => tap.take(),
                _ => None,
            };
            tapped |= t.is_some();
            sinks::build(
                c,
                sh,
                &stream_id,
                rate,
                ctx.auto_threads,
                metrics,
                t,
                ctx.nvmm.clone(),
            )
        })
        .collect();
    let live = live_slot.map(|slot| {
        if tapped {
            live::LiveFeed::Recorder(slot)
        } else {
            live::LiveFeed::Own(Box::new(live::OwnEncoder::new(slot, rate)))
        }
    });

    let last = source.stats();
    let source_thread = spawn_named(
        format!("src-{id}"),
        SourceLoop {
            source,
            out: dec_tx,
            stop: ctx.stop.clone(),
            metrics: sm.clone(),
            errors: ErrorReporter::new(metrics.clone(), &id),
            last,
            id: id.clone(),
        }
        .into_thread(),
    )?;

    let tally = AnalyticsTally::new(
        metrics.clone(),
        &id,
        ctx.store.clone(),
        ctx.events_topic.clone(),
        StageLoop::names(&stages),
    )
    .with_fusion(
        ctx.sensing.clone(),
        aegis_sensors::rules::RuleEngine::new(ctx.rules.clone()),
    )
    .with_evidence(ctx.evidence.clone());
    let slot = Arc::new(StageSlot::default());
    let mut stage_loop = StageLoop {
        keep_device: sinks.iter().any(|s| s.takes_device_frames()),
        stages,
        hist: Vec::new(),
        tally,
        slot: slot.clone(),
        input: dec_rx,
        out: proc_tx,
        stream_metrics: sm.clone(),
        metrics: metrics.clone(),
        errors: ErrorReporter::new(metrics.clone(), &id),
        id: id.clone(),
        beat: ctx.watch.as_ref().map(|w| w.beat(format!("stg-{id}"))),
        stall: crate::liveness::test_stall(&id),
    };
    stage_loop.hist = stage_loop.histograms(&StageLoop::names(&stage_loop.stages));
    let stage_thread = spawn_named(format!("stg-{id}"), stage_loop.into_thread())?;

    let hist = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            metrics
                .stage_latency
                .get_or_create_owned(&stage_labels(&id, format!("sink:{i}:{}", s.kind())))
        })
        .collect();
    let sink_thread = spawn_named(
        format!("snk-{id}"),
        SinkLoop {
            sinks,
            hist,
            input: proc_rx,
            snapshot: ctx.snapshots.as_ref().map(|h| h.slot(&id)),
            live,
            outputs: StreamOutputs::of(cfg, &id, metrics, ctx.served.clone()),
            metrics: sm,
            errors: ErrorReporter::new(metrics.clone(), &id),
            beat: ctx.watch.as_ref().map(|w| w.beat(format!("snk-{id}"))),
        }
        .into_thread(),
    )?;

    Ok(StreamThreads {
        slot,
        health,
        source: source_thread,
        stages: stage_thread,
        sinks: sink_thread,
        id,
    })
}

/// The source thread: decoded frames in, counters out.
struct SourceLoop {
    source: Box<dyn VideoSource>,
    out: Sender<Frame>,
    stop: Arc<AtomicBool>,
    metrics: Arc<StreamMetrics>,
    errors: ErrorReporter,
    /// The source's counters at the previous frame (errors are reported as increments).
    last: SourceStats,
    id: String,
}

impl SourceLoop {
    fn into_thread(mut self) -> impl FnOnce() -> (u64, SourceStats, Option<String>) + Send {
        move || self.run()
    }

    /// Frames decoded, the source's final counters, and the error it ended on.
    fn run(&mut self) -> (u64, SourceStats, Option<String>) {
        self.metrics.running.inc();
        let mut decoded = 0u64;
        let mut end_error = None;
        let mut waits_seen = 0;
        while !self.stop.load(Ordering::Acquire) {
            let t0 = Instant::now();
            let next = self.source.next_frame();
            self.metrics
                .source_latency
                .observe(t0.elapsed().as_secs_f64());
            self.report_counters();
            let waits = self.source.pool_waits();
            self.metrics
                .pool_waits
                .inc_by(waits.saturating_sub(waits_seen));
            waits_seen = waits;
            self.metrics
                .pool_free
                .set(self.source.pool().available() as i64);
            match next {
                Ok(Some(frame)) => {
                    decoded += 1;
                    self.metrics.decoded.inc();
                    if self.out.send(frame).is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.errors.report("source", "fatal", 1, &e);
                    tracing::error!(stream = %self.id, error = %e, "source ended with an error");
                    end_error = Some(e.to_string());
                    break;
                }
            }
        }
        self.metrics.running.dec();
        tracing::info!(stream = %self.id, frames = decoded, "source ended");
        (decoded, self.source.stats(), end_error)
    }

    /// The source's error counters since the previous frame, as error metrics.
    fn report_counters(&mut self) {
        let stats = self.source.stats();
        let (d, l) = (&stats.decode, &self.last.decode);
        let errors = &mut self.errors;
        errors.report(
            "source",
            "decode",
            d.errors - l.errors,
            &"decoder rejected data",
        );
        errors.report(
            "source",
            "corrupt_frame",
            d.corrupt_frames.saturating_sub(l.corrupt_frames),
            &"decoder concealed damage in a frame",
        );
        errors.report(
            "source",
            "skipped_before_keyframe",
            d.skipped_before_keyframe
                .saturating_sub(l.skipped_before_keyframe),
            &"packets dropped while waiting for a keyframe",
        );
        errors.report(
            "source",
            "dropped",
            d.dropped.saturating_sub(l.dropped),
            &"frames dropped unseen: the camera had no free buffer, or newer frames replaced them while the pipeline was behind",
        );
        errors.report(
            "source",
            "read",
            stats.read_errors.saturating_sub(self.last.read_errors),
            &"container read error",
        );
        errors.report(
            "source",
            "truncated",
            u64::from(stats.truncated && !self.last.truncated),
            &"file ends in the middle of its data",
        );
        self.last = stats;
    }
}

/// The stage thread: the stage chain on each frame, analytics, chain switches.
struct StageLoop {
    /// A sink reads device frames in place: frames leave with their pixels on the device.
    keep_device: bool,
    stages: Vec<Box<dyn Stage>>,
    /// Per stage: its latency histogram.
    hist: Vec<Histogram>,
    tally: AnalyticsTally,
    slot: Arc<StageSlot>,
    input: Receiver<Frame>,
    out: Sender<Frame>,
    stream_metrics: Arc<StreamMetrics>,
    metrics: Arc<Metrics>,
    errors: ErrorReporter,
    id: String,
    /// Busy from a frame's arrival until it is handed on (systemd's watchdog).
    beat: Option<Arc<crate::liveness::Beat>>,
    /// The test hook `AEGIS_TEST_STALL` ([`crate::liveness::test_stall`]).
    stall: Option<u64>,
}

impl StageLoop {
    /// `index:kind` per stage (metric labels, analytics).
    fn names(stages: &[Box<dyn Stage>]) -> Vec<String> {
        stages
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.kind()))
            .collect()
    }

    fn histograms(&self, names: &[String]) -> Vec<Histogram> {
        names
            .iter()
            .map(|name| {
                self.metrics
                    .stage_latency
                    .get_or_create_owned(&stage_labels(&self.id, name.clone()))
            })
            .collect()
    }

    fn into_thread(mut self) -> impl FnOnce() -> (u64, AnalyticsSummary) + Send {
        move || {
            let dropped = self.run();
            self.tally.finish();
            (dropped, self.tally.summary)
        }
    }

    /// Takes a replacement chain (a workflow switch) if one waits; between two frames only.
    fn switch_chain(&mut self) {
        if !self.slot.pending.swap(false, Ordering::AcqRel) {
            return;
        }
        let Some(next) = self
            .slot
            .next
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        self.stages = next.0;
        self.tally
            .set_rules(aegis_sensors::rules::RuleEngine::new(next.1));
        let names = Self::names(&self.stages);
        self.hist = self.histograms(&names);
        self.tally.set_stages(names);
        self.slot.frames.store(0, Ordering::Release);
        self.slot.failed_frames.store(0, Ordering::Release);
        *self
            .slot
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.slot.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Frames dropped (by a stage's verdict or a failed download).
    fn run(&mut self) -> u64 {
        let mut dropped = 0u64;
        let mut seen = 0u64;
        let beat = self.beat.clone();
        'frames: while let Ok(mut frame) = self.input.recv() {
            let _busy = beat.as_ref().map(|b| b.busy());
            seen += 1;
            if self.stall.is_some_and(|after| seen > after) {
                crate::liveness::stall_for_test(&self.id);
            }
            self.switch_chain();
            let mut failed = false;
            for (i, (stage, hist)) in self.stages.iter_mut().zip(&self.hist).enumerate() {
                let t0 = Instant::now();
                // Pixels on the GPU come down once, before the first stage that works on
                // the host (and before the sinks, below).
                if frame.device.is_some()
                    && !stage.on_device()
                    && !download(&mut frame, &mut self.errors)
                {
                    dropped += 1;
                    self.stream_metrics.dropped_stage.inc();
                    continue 'frames;
                }
                let outcome = stage.process(&mut frame);
                let took = t0.elapsed().as_secs_f64();
                hist.observe(took);
                self.tally.stage_time(i, took);
                match outcome {
                    Ok(StageOutcome::Keep) => {}
                    Ok(StageOutcome::Drop) => {
                        dropped += 1;
                        self.stream_metrics.dropped_stage.inc();
                        self.tally.count(&frame);
                        self.slot.frames.fetch_add(1, Ordering::AcqRel);
                        continue 'frames;
                    }
                    Err(e) => {
                        if !failed {
                            failed = true;
                            *self
                                .slot
                                .last_error
                                .lock()
                                .unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                        self.errors.report("stage", e.error_type, 1, &e)
                    }
                }
            }
            // Pixels still on the GPU come down here, unless a sink reads them there (the
            // sink loop then downloads for the sinks that do not).
            if frame.device.is_some()
                && !self.keep_device
                && !download(&mut frame, &mut self.errors)
            {
                dropped += 1;
                self.stream_metrics.dropped_stage.inc();
                continue 'frames;
            }
            if failed {
                self.slot.failed_frames.fetch_add(1, Ordering::AcqRel);
            }
            self.slot.frames.fetch_add(1, Ordering::AcqRel);
            self.tally.count(&frame);
            if self.out.send(frame).is_err() {
                break;
            }
        }
        dropped
    }
}

/// The sink thread: every sink in turn on each frame, then finish them.
struct SinkLoop {
    sinks: Vec<Box<dyn Sink>>,
    /// Per sink: its latency histogram.
    hist: Vec<Histogram>,
    input: Receiver<Frame>,
    snapshot: Option<Arc<snapshot::SnapshotSlot>>,
    live: Option<live::LiveFeed>,
    /// The streaming outputs (restream, push) the pipeline names for this stream.
    outputs: StreamOutputs,
    metrics: Arc<StreamMetrics>,
    errors: ErrorReporter,
    /// Busy from a frame's arrival until every sink had it (systemd's watchdog).
    beat: Option<Arc<crate::liveness::Beat>>,
}

impl SinkLoop {
    fn into_thread(mut self) -> impl FnOnce() -> (u64, Vec<String>, u32) + Send {
        move || self.run()
    }

    /// Frames delivered, the errors the sinks finished with, copies of the last frame.
    fn run(&mut self) -> (u64, Vec<String>, u32) {
        let mut delivered = 0u64;
        let mut copies = 0;
        let mut window = (Instant::now(), 0u64);
        if let Some(l) = &self.live {
            l.slot().set_running(true);
        }
        let outputs = self.outputs.start(self.live.as_ref().map(|l| l.slot()));
        'frames: while let Ok(mut frame) = self.input.recv() {
            let _busy = self.beat.as_ref().map(|b| b.busy());
            for (sink, hist) in self.sinks.iter_mut().zip(&self.hist) {
                // A frame still on the device comes down once, before the first sink that
                // wants host pixels.
                if frame.device.is_some()
                    && !sink.takes_device_frame(&frame)
                    && !download(&mut frame, &mut self.errors)
                {
                    // The sinks before it had the frame; the rest cannot: not delivered.
                    self.metrics.dropped_stage.inc();
                    continue 'frames;
                }
                let t0 = Instant::now();
                let r = sink.consume(&mut frame);
                hist.observe(t0.elapsed().as_secs_f64());
                if let Err(e) = r {
                    self.errors.report("sink", e.error_type, 1, &e);
                }
            }
            let wants_pixels = self.snapshot.as_ref().is_some_and(|s| s.wants_frame())
                || self.live.as_ref().is_some_and(|l| l.wants_pixels());
            // A failed download only costs the snapshot and the live view this frame (its
            // host surface holds nothing valid); the sinks had it. (Frames still on the
            // device are skipped by both.)
            let pixels =
                !(wants_pixels && frame.device.is_some()) || download(&mut frame, &mut self.errors);
            if pixels {
                if let Some(slot) = &self.snapshot {
                    slot.offer(&frame);
                }
                if let Some(l) = &mut self.live {
                    l.offer(&mut frame);
                }
            }
            // Counted by each copy site the frame went through, the sinks' included.
            copies = frame.copies;
            self.metrics.copies.set(copies as i64);
            self.metrics
                .frame_latency
                .observe(frame.meta.decoded_at.elapsed().as_secs_f64());
            self.metrics.delivered.inc();
            delivered += 1;
            window.1 += 1;
            let elapsed = window.0.elapsed();
            if elapsed.as_secs_f64() >= 1.0 {
                self.metrics
                    .fps
                    .set(window.1 as f64 / elapsed.as_secs_f64());
                window = (Instant::now(), 0);
            }
        }
        outputs.stop();
        if let Some(l) = &self.live {
            if self.outputs.restream {
                l.slot().set_restream(false);
            }
            l.slot().set_running(false);
        }
        let mut errors = Vec::new();
        for sink in &mut self.sinks {
            if let Err(e) = sink.finish() {
                self.errors.report("sink", e.error_type, 1, &e);
                errors.push(e.to_string());
            }
        }
        self.metrics.fps.set(0.0);
        (delivered, errors, copies)
    }
}

/// The streaming outputs a pipeline names for one stream.
struct StreamOutputs {
    /// Served on the RTSP server (the `restream` sink lists it, or lists none).
    restream: bool,
    pushes: Vec<aegis_config::PushSink>,
    /// The `hls` sink, when it lists this stream.
    hls: Option<aegis_config::HlsSink>,
    /// The `webrtc` sink, when it lists this stream.
    webrtc: Option<aegis_config::WebRtcSink>,
    /// Where the HLS and WebRTC outputs are served from (none: benchmarks).
    served: Option<Arc<crate::outputs::Served>>,
    metrics: Arc<Metrics>,
    stream: String,
}

/// The outputs running for one stream; stopped when the stream's sink thread ends.
struct RunningOutputs {
    /// The pushes and the HLS packager.
    threads: Vec<crate::outputs::OutputThread>,
    /// The stream's WHEP registration (its sessions end with it).
    webrtc: Option<crate::outputs::webrtc::WhepStream>,
}

impl RunningOutputs {
    fn stop(self) {
        for t in self.threads {
            t.stop();
        }
        drop(self.webrtc);
    }
}

impl StreamOutputs {
    fn of(
        cfg: &PipelineConfig,
        stream: &str,
        metrics: &Arc<Metrics>,
        served: Option<Arc<crate::outputs::Served>>,
    ) -> StreamOutputs {
        use aegis_config::SinkConfig;
        StreamOutputs {
            hls: cfg.sinks.iter().find_map(|s| match s {
                SinkConfig::Hls(h) if h.serves(stream) => Some(h.clone()),
                _ => None,
            }),
            webrtc: cfg.sinks.iter().find_map(|s| match s {
                SinkConfig::WebRtc(w) if w.serves(stream) => Some(w.clone()),
                _ => None,
            }),
            served,
            restream: cfg
                .sinks
                .iter()
                .any(|s| matches!(s, SinkConfig::Restream(r) if r.serves(stream))),
            pushes: cfg
                .sinks
                .iter()
                .filter_map(|s| match s {
                    SinkConfig::Push(p) if p.stream == stream => Some(p.clone()),
                    _ => None,
                })
                .collect(),
            metrics: metrics.clone(),
            stream: stream.to_owned(),
        }
    }

    /// Opens the stream to the RTSP server and starts its pushes and HLS packager, on its
    /// live slot (the encoded packets); without one (no live hub: benchmarks) they cannot
    /// run, which is logged.
    fn start(&self, slot: Option<&Arc<live::LiveSlot>>) -> RunningOutputs {
        let mut running = RunningOutputs {
            threads: Vec::new(),
            webrtc: None,
        };
        let Some(slot) = slot else {
            if self.restream
                || !self.pushes.is_empty()
                || self.hls.is_some()
                || self.webrtc.is_some()
            {
                tracing::warn!(stream = %self.stream, "streaming outputs need the live hub; not started");
            }
            return running;
        };
        if self.restream {
            slot.set_restream(true);
        }
        if let (Some(cfg), Some(served)) = (&self.hls, &self.served) {
            match crate::outputs::hls::start(slot, cfg, &served.hls, &self.metrics) {
                Ok(t) => running.threads.push(t),
                Err(e) => tracing::error!(stream = %self.stream, "hls not started: {e}"),
            }
        }
        if let (Some(cfg), Some(served)) = (&self.webrtc, &self.served) {
            running.webrtc = Some(served.whep.serve(slot, cfg, &self.metrics));
        }
        running.threads.extend(self.pushes.iter().filter_map(|p| {
            crate::outputs::push::start(slot, p, &self.metrics)
                .map_err(|e| tracing::error!(stream = %self.stream, "push not started: {e}"))
                .ok()
        }));
        running
    }
}
