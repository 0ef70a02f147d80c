//! One agent run: bind the HTTP endpoints, start the pipeline, wait for the end of input or
//! SIGTERM/SIGINT, stop cleanly (recordings finalised), report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_config::{AgentConfig, BackendKind, PipelineConfig, PipelineOrigin};

use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, RunOptions, StreamReport};
use crate::web::{ServerState, bind, router};

/// How a run ended.
#[derive(Debug)]
pub struct RunSummary {
    /// Per-stream reports.
    pub streams: Vec<StreamReport>,
    /// Wall time from pipeline start to the last stream's end.
    pub elapsed: Duration,
    /// Address the HTTP endpoints were served on.
    pub listen: SocketAddr,
    /// A signal ended the run (rather than the end of input).
    pub interrupted: bool,
    /// `/metrics` as scraped over HTTP just before the server stopped (if requested).
    pub final_metrics: Option<String>,
    /// The store's writer counters at the end.
    pub store: Option<Arc<crate::store::StoreCounters>>,
}

/// Options of a run beyond the config.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Listen address overriding `web.listen`.
    pub listen: Option<SocketAddr>,
    /// Pipeline knobs.
    pub options: RunOptions,
    /// Keep serving `/metrics` after the input ended, until a signal.
    pub linger: bool,
    /// Scrape our own `/metrics` over HTTP before stopping the server (the demo shows it).
    pub scrape_metrics: bool,
}

/// The backend a run uses, after the fallback.
#[derive(Clone)]
pub struct Backend {
    /// What runs the pipeline.
    pub kind: BackendKind,
    /// The GPU, with its kernels compiled, when `kind` is `cuda`.
    pub gpu: Option<Arc<aegis_cuda::Gpu>>,
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("kind", &self.kind)
            .field("gpu", &self.gpu.as_ref().map(|g| g.name.clone()))
            .finish()
    }
}

/// Opens the configured backend, applying `backend.fallback` when it cannot run here
/// (no NVIDIA driver, no NVRTC, kernels that do not compile): the error says why.
pub fn select_backend(cfg: &AgentConfig) -> anyhow::Result<Backend> {
    choose_backend(cfg, true)
}

/// What [`select_backend`] would choose, from the vendor libraries alone: no GPU context,
/// no kernel compilation, nothing written (`aegis check-config`).
pub fn check_backend(cfg: &AgentConfig) -> anyhow::Result<BackendKind> {
    choose_backend(cfg, false).map(|b| b.kind)
}

fn choose_backend(cfg: &AgentConfig, open: bool) -> anyhow::Result<Backend> {
    let why = match cfg.backend.kind {
        BackendKind::Cpu => {
            return Ok(Backend {
                kind: BackendKind::Cpu,
                gpu: None,
            });
        }
        BackendKind::Cuda if !open => {
            if !aegis_cuda::driver_present() {
                aegis_cuda::CudaError::NoDriver.to_string()
            } else if !aegis_cuda::nvrtc_present() {
                aegis_cuda::CudaError::NoNvrtc.to_string()
            } else {
                return Ok(Backend {
                    kind: BackendKind::Cuda,
                    gpu: None,
                });
            }
        }
        BackendKind::Cuda => {
            // Compiled kernels are cached next to the database (≈0.3 s saved per start).
            let cache = cfg.store.path.parent().map(|d| d.join("cuda-cache"));
            match aegis_cuda::Gpu::open(cfg.backend.cuda_device as usize, cache) {
                Ok(gpu) => {
                    let nvenc = match aegis_cuda::nvenc::probe(&gpu) {
                        aegis_cuda::nvenc::Nvenc::Present { codecs, .. } => format!(
                            "present ({codecs} codecs); its encoder is not built yet: recordings encode on the CPU"
                        ),
                        aegis_cuda::nvenc::Nvenc::Absent(why) => {
                            format!("{why}; recordings encode on the CPU after one download")
                        }
                    };
                    tracing::info!(gpu = %gpu.name, kernels = gpu.ptx_source,
                        nvdec = aegis_cuda::nvdec::nvdec_present(), %nvenc, "CUDA backend ready");
                    return Ok(Backend {
                        kind: BackendKind::Cuda,
                        gpu: Some(Arc::new(gpu)),
                    });
                }
                Err(e) => e.to_string(),
            }
        }
        BackendKind::Jetson => "the jetson backend is not built yet".to_string(),
    };
    let other = cfg.backend.kind;
    match cfg.backend.fallback {
        Some(BackendKind::Cpu) => {
            tracing::warn!(backend = %other, fallback = "cpu", reason = %why,
                "backend unavailable; using the fallback");
            Ok(Backend {
                kind: BackendKind::Cpu,
                gpu: None,
            })
        }
        _ => anyhow::bail!(
            "backend.kind: {other} cannot run here: {why}; set backend.fallback: cpu to fall back"
        ),
    }
}

/// Runs the effective pipeline of `cfg` until its input ends or a signal arrives.
/// `on_listening` is called once the HTTP endpoints are bound (the demo prints the URL).
pub async fn run(
    cfg: &AgentConfig,
    req: RunRequest,
    metrics: Arc<Metrics>,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<RunSummary> {
    let selected = match &req.options.backend {
        Some(b) => b.clone(),
        None => select_backend(cfg)?,
    };
    let backend = selected.kind;
    let store = {
        let settings = crate::store::StoreSettings::from_config(&cfg.store);
        tokio::task::spawn_blocking(move || crate::store::Store::open(settings)).await??
    };
    let store_handle = store.handle();
    {
        let c = store_handle.counters().clone();
        metrics.watch_component(
            "store",
            Box::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                vec![
                    ("written", c.written.load(Relaxed)),
                    ("dropped", c.dropped.load(Relaxed)),
                    ("transactions", c.transactions.load(Relaxed)),
                    ("outbox_dropped", c.outbox_dropped.load(Relaxed)),
                    ("retention_deleted", c.retention_deleted.load(Relaxed)),
                    ("errors", c.errors.load(Relaxed)),
                ]
            }),
        );
    }
    let events_topic = cfg
        .fleet
        .enabled
        .then(|| format!("aegis/v1/{}/events", cfg.device.id));
    // The pipeline that runs: the active signed workflow's, else the local default.
    let mut workflows = match cfg.workflows.enabled {
        true => Some(aegis_ota::state::Workflows::open(cfg)?),
        false => None,
    };
    let (active, mut stopped_at_start) = match workflows.as_mut() {
        Some(w) => w.active_pipeline()?,
        None => (None, Vec::new()),
    };
    let (pipeline_cfg, origin) = {
        let (p, o) = aegis_config::effective_pipeline(cfg, active.as_ref().map(|(_, p)| p));
        (p.clone(), o)
    };
    store_handle.submit(crate::store::Record::Audit {
        ts_us: crate::store::now_us(),
        actor: "agent".into(),
        action: "agent.start".into(),
        detail: format!(
            "version {}, backend {backend}, {} streams",
            env!("CARGO_PKG_VERSION"),
            pipeline_cfg.sources.len()
        ),
    });
    let addr: SocketAddr = match req.listen {
        Some(a) => a,
        None => cfg
            .web
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("web.listen: {e}"))?,
    };
    let listener = bind(addr).await?;
    let listen = listener.local_addr()?;
    // Local requests and fleet deliveries wait apart: neither can starve the other.
    let (wf_tx, mut wf_rx) = tokio::sync::mpsc::channel::<crate::workflows::apply::Request>(
        crate::workflows::apply::LOCAL_QUEUE,
    );
    let apply_counters = Arc::new(crate::workflows::apply::ApplyCounters::default());
    let inbox = crate::workflows::apply::FleetInbox::new(apply_counters.clone());
    let refusals = crate::workflows::apply::RefusalAudit::new(store_handle.clone());
    let token = Arc::new(crate::web::LocalToken::load_or_create(&cfg.token_path())?);
    let state = ServerState {
        metrics: metrics.clone(),
        device: cfg.device.id.clone(),
        started: Instant::now(),
        workflows: workflows.is_some().then(|| wf_tx.clone()),
        token,
        metrics_public: cfg.web.metrics_public,
        audit: workflows.is_some().then(|| refusals.clone()),
        counters: workflows.is_some().then(|| apply_counters.clone()),
    };
    let (server_stop_tx, server_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = server_stop_rx.await;
            })
            .await
    });
    on_listening(listen);
    tracing::info!(device = %cfg.device.id, %backend, streams = pipeline_cfg.sources.len(),
        pipeline = match origin { PipelineOrigin::LocalDefault => "local default", PipelineOrigin::SignedWorkflow => "signed workflow" },
        %listen, "starting pipeline");

    // Signal handlers first: a SIGTERM while sources are still opening must stop cleanly too.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let started = Instant::now();
    let mut opts = req.options.clone();
    opts.backend = Some(selected);
    let snapshots = opts.snapshots.get_or_insert_with(Default::default).clone();
    let sensing = crate::sensing::Sensing::start(&cfg.sensors, Some(store_handle.clone()))?;
    if let Some(sn) = &sensing {
        let me = sn.clone();
        metrics.watch_component("sensors", Box::new(move || me.counters.values()));
        opts.sensing = Some(sn.clone());
    }
    if opts.store.is_none() {
        opts.store = Some(store_handle.clone());
        opts.events_topic = events_topic;
    }
    let preloaded = opts.inference.take();
    let starter = Arc::new(crate::workflows::apply::Starter {
        metrics: metrics.clone(),
        opts,
        inference: cfg.inference.clone(),
        cuda_device: cfg.backend.cuda_device,
    });
    let start = |cfg: PipelineConfig, preloaded: Option<Arc<crate::inference::Inference>>| {
        let starter = starter.clone();
        tokio::task::spawn_blocking(
            move || -> anyhow::Result<(Pipeline, Arc<crate::inference::Inference>)> {
                let inference = match preloaded {
                    Some(i) => i,
                    None => starter.load(&cfg, &crate::inference::Inference::none())?,
                };
                Ok((starter.start(&cfg, inference.clone())?, inference))
            },
        )
    };
    let (mut pipeline, mut inference) = match start(pipeline_cfg.clone(), preloaded.clone()).await?
    {
        Ok(p) => p,
        Err(e) if origin == PipelineOrigin::SignedWorkflow => {
            // The stored workflow does not start here any more (a model file went
            // missing...): the local default runs, and the state says so.
            tracing::error!(error = %crate::error_text(&e),
                "the active workflow's pipeline does not start; rolling back to the previous one");
            let w = workflows
                .as_mut()
                .expect("a signed workflow implies workflows");
            w.rollback()?;
            let (fallback, stopped) = w.active_pipeline()?;
            stopped_at_start.extend(stopped);
            let fallback = match fallback {
                Some((_, p)) => p,
                None => cfg.pipeline.clone(),
            };
            start(fallback, preloaded).await??
        }
        Err(e) => return Err(e),
    };
    let workflow_status = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    let mut applier = workflows.map(|w| {
        crate::workflows::apply::Applier::new(
            w,
            starter.clone(),
            inference.clone(),
            cfg.workflows.health.clone(),
            store_handle.clone(),
            cfg.pipeline.clone(),
            cfg.fleet
                .enabled
                .then(|| format!("aegis/v1/{}/receipts", cfg.device.id)),
            workflow_status.clone(),
            inbox.clone(),
            apply_counters.clone(),
            refusals.clone(),
        )
    });
    if let Some(a) = &applier {
        let c = a.counters.clone();
        metrics.watch_component(
            "workflows",
            Box::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                vec![
                    ("received", c.received.load(Relaxed)),
                    ("applied", c.applied.load(Relaxed)),
                    ("rolled_back", c.rolled_back.load(Relaxed)),
                    ("rejected", c.rejected.load(Relaxed)),
                    ("refused", c.refused.load(Relaxed)),
                    ("duplicates", c.duplicates.load(Relaxed)),
                    ("busy", c.busy.load(Relaxed)),
                    ("superseded", c.superseded.load(Relaxed)),
                    ("refetched", c.refetched.load(Relaxed)),
                    ("trust_updates", c.trust_updates.load(Relaxed)),
                    ("revoked", c.revoked.load(Relaxed)),
                ]
            }),
        );
    }
    // The fleet link (when enabled) starts once the pipeline runs.
    let (restart_tx, mut restart_rx) = tokio::sync::mpsc::channel::<()>(1);
    let fleet = if cfg.fleet.enabled {
        let settings = crate::fleet::FleetSettings::from_config(cfg)?;
        let host = Arc::new(AgentHost::new(
            cfg,
            backend,
            metrics.clone(),
            store_handle.clone(),
            restart_tx,
            snapshots,
            WorkflowHooks {
                status: workflow_status.clone(),
                inbox: applier.as_ref().map(|_| inbox.clone()),
                sensing: sensing.clone(),
            },
        ));
        let outbox = crate::fleet::SqliteOutbox::new(cfg.store.path.clone(), store_handle.clone());
        let link = crate::fleet::FleetLink::start(settings, Box::new(outbox), host);
        if let Some(a) = applier.as_mut() {
            a.nudge = Some(link.nudge.clone());
            a.resubscribe = Some(link.resubscribe.clone());
        }
        let c = link.counters.clone();
        metrics.watch_component(
            "fleet",
            Box::new(move || {
                use std::sync::atomic::Ordering::Relaxed;
                vec![
                    ("connected", c.connected.load(Relaxed)),
                    ("connects", c.connects.load(Relaxed)),
                    ("published", c.published.load(Relaxed)),
                    ("acked", c.acked.load(Relaxed)),
                    ("commands", c.commands.load(Relaxed)),
                ]
            }),
        );
        Some(link)
    } else {
        drop(restart_tx);
        None
    };
    if let Some(a) = applier.as_mut() {
        a.report_stopped_at_start(&stopped_at_start);
    }
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut interrupted = false;
    loop {
        tokio::select! {
            _ = sigterm.recv() => { interrupted = true; break; }
            _ = sigint.recv() => { interrupted = true; break; }
            _ = tick.tick() => {
                pipeline.check_sources();
                if pipeline.is_finished() { break; }
                if let Some(a) = applier.as_mut() {
                    a.tick();
                }
                // Consistent GPS time raises the trusted-time floor (never lowers it).
                if cfg.sensors.fusion.gps_time_floor
                    && let (Some(sn), Some(a)) = (&sensing, applier.as_mut())
                    && let Some(t) = sn.gps_time()
                {
                    a.raise_time_floor(t);
                }
            },
            Some(()) = restart_rx.recv() => {
                tracing::info!("restarting the pipeline (fleet command)");
                let running = pipeline.config().clone();
                pipeline.stop();
                let old = tokio::task::spawn_blocking(move || pipeline.wait()).await?;
                for s in &old {
                    tracing::info!(stream = %s.stream, delivered = s.delivered, "stream stopped for restart");
                }
                pipeline = start(running, Some(inference.clone())).await??.0;
            }
            (topic, payload) = inbox.next(), if applier.is_some() => {
                if let Some(a) = applier.as_mut() {
                    let (p, _) = a.handle(pipeline, crate::workflows::apply::Via::Fleet(&topic), &payload).await;
                    pipeline = p;
                    inference = a.inference();
                }
            }
            Some(req) = wf_rx.recv() => {
                let reply = match applier.as_mut() {
                    Some(a) => {
                        let (p, reply) = a.handle(pipeline, crate::workflows::apply::Via::Local, &req.payload).await;
                        pipeline = p;
                        inference = a.inference();
                        reply
                    }
                    None => crate::workflows::apply::Reply {
                        verdict: "refused".into(),
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
    }
    if interrupted {
        tracing::info!("signal received: stopping pipeline and finalising recordings");
    }
    pipeline.check_sources();
    pipeline.stop();
    let waiting = tokio::task::spawn_blocking(move || pipeline.wait());
    // A second signal while draining means "now": exit without waiting for the recordings
    // (their `.part` files are recovered at the next start).
    let streams = tokio::select! {
        r = waiting => r?,
        _ = sigterm.recv() => second_signal(),
        _ = sigint.recv() => second_signal(),
    };
    let elapsed = started.elapsed();
    for s in &streams {
        tracing::info!(stream = %s.stream, decoded = s.decoded, delivered = s.delivered,
            dropped = s.dropped, decode_errors = s.source.decode.errors,
            read_errors = s.source.read_errors, truncated = s.source.truncated,
            error = s.source_error.as_deref().unwrap_or(""),
            "stream ended");
    }
    if req.linger && !interrupted {
        tracing::info!(%listen, "input ended; still serving /metrics until Ctrl-C or SIGTERM");
        tokio::select! {
            _ = sigterm.recv() => {}
            _ = sigint.recv() => {}
        }
    }
    let final_metrics = if req.scrape_metrics {
        http_get(listen, "/metrics").await.ok()
    } else {
        None
    };
    let _ = server_stop_tx.send(());
    let _ = server.await;
    if let Some(f) = fleet {
        f.stop().await;
    }
    if let Some(sn) = &sensing {
        let sn = sn.clone();
        tokio::task::spawn_blocking(move || sn.stop()).await?;
    }
    store_handle.submit(crate::store::Record::Audit {
        ts_us: crate::store::now_us(),
        actor: "agent".into(),
        action: "agent.stop".into(),
        detail: if interrupted { "signal" } else { "input ended" }.into(),
    });
    let counters = store_handle.counters().clone();
    drop(store_handle);
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(RunSummary {
        streams,
        elapsed,
        listen,
        interrupted,
        final_metrics,
        store: Some(counters),
    })
}

fn second_signal() -> ! {
    tracing::warn!("second signal: exiting without finalising recordings");
    std::process::exit(130)
}

/// A minimal HTTP/1.0 GET over loopback, returning the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response from {addr}"))?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "GET {path}: {head}"
    );
    Ok(body.to_string())
}

/// What the fleet link asks of the running agent.
struct AgentHost {
    device: String,
    backend: String,
    started_us: i64,
    metrics: Arc<Metrics>,
    store: crate::store::StoreHandle,
    config: serde_json::Value,
    restart: tokio::sync::mpsc::Sender<()>,
    snapshots: Arc<crate::pipeline::snapshot::SnapshotHub>,
    workflows: WorkflowHooks,
    models: serde_json::Value,
}

/// The fleet link's way to the workflow applier (the status it reports and its queue) and
/// to the sensors (status and telemetry).
struct WorkflowHooks {
    sensing: Option<Arc<crate::sensing::Sensing>>,
    status: Arc<std::sync::Mutex<serde_json::Value>>,
    /// Where workflow and trust deliveries go (None: workflows are off).
    inbox: Option<Arc<crate::workflows::apply::FleetInbox>>,
}

/// `password` values replaced by `***` anywhere in a JSON document.
fn redact(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                if k == "password" && !x.is_null() {
                    *x = serde_json::json!("***");
                } else {
                    redact(x);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(redact),
        _ => {}
    }
}

impl AgentHost {
    fn new(
        cfg: &AgentConfig,
        backend: BackendKind,
        metrics: Arc<Metrics>,
        store: crate::store::StoreHandle,
        restart: tokio::sync::mpsc::Sender<()>,
        snapshots: Arc<crate::pipeline::snapshot::SnapshotHub>,
        workflows: WorkflowHooks,
    ) -> Self {
        let mut config = serde_json::to_value(cfg).unwrap_or_default();
        redact(&mut config);
        AgentHost {
            device: cfg.device.id.clone(),
            backend: backend.to_string(),
            started_us: crate::store::now_us(),
            metrics,
            store,
            config,
            restart,
            snapshots,
            workflows,
            models: cfg
                .inference
                .models
                .iter()
                .map(|m| serde_json::json!({ "name": m.name, "version": m.version, "sha256": m.sha256 }))
                .collect(),
        }
    }

    fn streams(&self) -> serde_json::Value {
        crate::web::streams_json(&self.metrics).into()
    }
}

impl crate::fleet::FleetHost for AgentHost {
    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "state": "online",
            "device": self.device,
            "version": env!("CARGO_PKG_VERSION"),
            "backend": self.backend,
            "started_us": self.started_us,
            "streams": self.streams(),
            "workflow": self.workflows.status.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            "models": self.models,
        })
    }

    fn workflow(&self, topic: &str, payload: &[u8]) {
        if let Some(inbox) = &self.workflows.inbox {
            inbox.put(topic, payload);
        }
    }

    fn telemetry(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        let c = self.store.counters();
        let p = crate::process::sample();
        serde_json::json!({
            "ts_us": crate::store::now_us(),
            "streams": self.streams(),
            "sensors": self.workflows.sensing.as_ref().map(|s| s.status()),
            "rss_bytes": p.as_ref().map(|p| p.rss_bytes),
            "cpu_ms": p.as_ref().map(|p| p.cpu_ms),
            "store": {
                "written": c.written.load(Relaxed),
                "dropped": c.dropped.load(Relaxed),
                "outbox_dropped": c.outbox_dropped.load(Relaxed),
            },
        })
    }

    fn config(&self) -> serde_json::Value {
        self.config.clone()
    }

    fn restart_pipeline(&self) -> Result<(), String> {
        self.restart
            .try_send(())
            .map_err(|_| "a restart is already under way".to_string())
    }

    fn set_log_level(&self, level: &str) -> Result<(), String> {
        crate::logging::set_level(level)
    }

    fn snapshot(
        &self,
        stream: Option<&str>,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Vec<u8>, String>>, String> {
        self.snapshots.request(stream)
    }
}
