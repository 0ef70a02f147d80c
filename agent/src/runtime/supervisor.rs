//! The supervisor: the run's one async loop, on the runtime's main task. It owns the running
//! [`Pipeline`] and the workflow applier, and is the only place either changes hands: every
//! 100 ms it checks the sources and ends the run when the input has; it applies local and
//! fleet workflow deliveries one at a time, restarts the pipeline on a fleet command, raises
//! the trusted-time floor from GPS, and stops on SIGTERM/SIGINT. Stream threads, the fleet
//! link, the sensors and the HTTP server run elsewhere and reach it only through channels.

use std::sync::Arc;
use std::time::Duration;

use aegis_config::PipelineConfig;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::Receiver;

use crate::inference::Inference;
use crate::pipeline::{Pipeline, StreamReport};
use crate::workflows::apply::{
    Answer, Applier, DefaultPipeline, FleetInbox, Reply, Request, Starter, Via, switch_local,
};

/// SIGTERM and SIGINT, installed before anything slow starts (a SIGTERM while sources are
/// still opening must stop cleanly too).
pub(crate) struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub(crate) fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub(crate) async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Starts `cfg` on a blocking thread: loads its models (unless `preloaded`), then the
/// pipeline; returns both.
pub(crate) async fn start_pipeline(
    starter: &Arc<Starter>,
    cfg: PipelineConfig,
    preloaded: Option<Arc<Inference>>,
) -> anyhow::Result<(Pipeline, Arc<Inference>)> {
    let starter = starter.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<(Pipeline, Arc<Inference>)> {
        let inference = match preloaded {
            Some(i) => i,
            None => starter.load(&cfg, &Inference::none())?,
        };
        Ok((starter.start(&cfg, inference.clone())?, inference))
    })
    .await?
}

/// Everything the loop owns.
pub(crate) struct Supervisor {
    pub(crate) pipeline: Pipeline,
    pub(crate) inference: Arc<Inference>,
    pub(crate) starter: Arc<Starter>,
    pub(crate) applier: Option<Applier>,
    pub(crate) inbox: Arc<FleetInbox>,
    /// Local `POST /workflow` requests (and the web page's uploads).
    pub(crate) local: Receiver<Request>,
    /// Model bundle transfers that ended (model delivery on).
    pub(crate) staged: Option<Receiver<crate::models_ota::delivery::Staged>>,
    /// New local default pipelines (the web page's config editor).
    pub(crate) defaults: Receiver<DefaultPipeline>,
    /// Fleet `restart_pipeline` commands.
    pub(crate) restarts: Receiver<()>,
    pub(crate) sensing: Option<Arc<crate::sensing::Sensing>>,
    /// `sensors.fusion.gps_time_floor`.
    pub(crate) gps_time_floor: bool,
    pub(crate) signals: Signals,
    /// Busy while the loop works on one thing (a delivery, a restart, a tick): a stuck
    /// applier stops systemd's watchdog keep-alives (`watchdog.applier_stall_s`).
    pub(crate) beat: Arc<crate::liveness::Beat>,
}

/// How the loop ended.
pub(crate) struct Ended {
    /// The pipeline, still running its last frames.
    pub(crate) pipeline: Pipeline,
    /// A signal ended it (rather than the end of input).
    pub(crate) interrupted: bool,
    pub(crate) signals: Signals,
}

impl Supervisor {
    /// Runs until the input ends or a signal arrives.
    pub(crate) async fn run(self) -> anyhow::Result<Ended> {
        let Supervisor {
            mut pipeline,
            mut inference,
            starter,
            mut applier,
            inbox,
            mut local,
            mut staged,
            mut defaults,
            mut restarts,
            sensing,
            gps_time_floor,
            mut signals,
            beat,
        } = self;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let interrupted = loop {
            tokio::select! {
                _ = signals.next() => break true,
                _ = tick.tick() => {
                    let _busy = beat.busy();
                    pipeline.check_sources();
                    if pipeline.is_finished() { break false; }
                    if let Some(a) = applier.as_mut() {
                        a.tick();
                    }
                    // Consistent GPS time raises the trusted-time floor (never lowers it).
                    if gps_time_floor
                        && let (Some(sn), Some(a)) = (&sensing, applier.as_mut())
                        && let Some(t) = sn.gps_time()
                    {
                        a.raise_time_floor(t);
                    }
                },
                Some(()) = restarts.recv() => {
                    let _busy = beat.busy();
                    tracing::info!("restarting the pipeline (fleet command)");
                    let running = pipeline.config().clone();
                    pipeline.stop();
                    let old = tokio::task::spawn_blocking(move || pipeline.wait()).await?;
                    for s in &old {
                        tracing::info!(stream = %s.stream, delivered = s.delivered, "stream stopped for restart");
                    }
                    pipeline = start_pipeline(&starter, running, Some(inference.clone())).await?.0;
                }
                delivered = inbox.next(), if applier.is_some() => {
                    let _busy = beat.busy();
                    if let Some(a) = applier.as_mut() {
                        let (p, _) = a.handle_delivered(pipeline, &delivered).await;
                        pipeline = p;
                        inference = a.inference();
                    }
                }
                Some(s) = async { staged.as_mut()?.recv().await }, if staged.is_some() => {
                    let _busy = beat.busy();
                    if let Some(a) = applier.as_mut() {
                        let (p, _) = a.model_staged(pipeline, s).await;
                        pipeline = p;
                        inference = a.inference();
                    }
                }
                Some(req) = defaults.recv() => {
                    let _busy = beat.busy();
                    let DefaultPipeline { pipeline: cfg, by, reply } = req;
                    let (p, outcome) = match applier.as_mut() {
                        Some(a) => {
                            let (p, o) = a.set_default(pipeline, cfg, &by).await;
                            inference = a.inference();
                            (p, o)
                        }
                        None => {
                            let (p, i, o) =
                                switch_local(&starter, inference.clone(), pipeline, &cfg).await;
                            inference = i;
                            (p, o)
                        }
                    };
                    pipeline = p;
                    tracing::info!(outcome = ?outcome, by = %by, "new local default pipeline");
                    let _ = reply.send(outcome);
                }
                Some(req) = local.recv() => {
                    let _busy = beat.busy();
                    let via = match &req.user {
                        Some(u) => Via::Web(u),
                        None => Via::Local,
                    };
                    let reply = match applier.as_mut() {
                        Some(a) => {
                            let (p, reply) = a.handle(pipeline, via, &req.payload).await;
                            pipeline = p;
                            inference = a.inference();
                            reply
                        }
                        None => Reply {
                            verdict: Answer::Refused,
                            reason: "workflows are disabled on this device".into(),
                            receipt: None,
                            apply_ms: 0.0,
                        },
                    };
                    if let Some(tx) = req.reply {
                        let _ = tx.send(reply);
                    }
                }
            }
        };
        Ok(Ended {
            pipeline,
            interrupted,
            signals,
        })
    }
}

/// The streams' reports after the drain.
pub(crate) struct Drained {
    pub(crate) streams: Vec<StreamReport>,
    pub(crate) interrupted: bool,
    pub(crate) signals: Signals,
}

impl Ended {
    /// Stops the pipeline and waits for its streams (recordings finalised). A second signal
    /// while draining means "now": exit without waiting for the recordings (their `.part`
    /// files are recovered at the next start).
    pub(crate) async fn drain(self) -> anyhow::Result<Drained> {
        let Ended {
            mut pipeline,
            interrupted,
            mut signals,
        } = self;
        if interrupted {
            tracing::info!("signal received: stopping pipeline and finalising recordings");
        }
        pipeline.check_sources();
        pipeline.stop();
        let waiting = tokio::task::spawn_blocking(move || pipeline.wait());
        let streams = tokio::select! {
            r = waiting => r?,
            _ = signals.next() => second_signal(),
        };
        Ok(Drained {
            streams,
            interrupted,
            signals,
        })
    }
}

fn second_signal() -> ! {
    tracing::warn!("second signal: exiting without finalising recordings");
    std::process::exit(130)
}
