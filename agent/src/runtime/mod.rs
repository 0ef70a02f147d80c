//! One agent run: bind the HTTP endpoints, start the pipeline, wait for the end of input or
//! SIGTERM/SIGINT, stop cleanly (recordings finalised), report.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aegis_config::{AgentConfig, BackendKind, PipelineOrigin};

use crate::metrics::Metrics;
use crate::pipeline::{RunOptions, StreamReport};
use crate::web::{ServerState, bind, router};

mod host;
mod supervisor;

use host::{AgentHost, WorkflowHooks};
use supervisor::{Drained, Signals, Supervisor, start_pipeline};

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

pub use aegis_hal::backend::Backend;

/// Opens the configured backend, applying `backend.fallback` when it cannot run here
/// (no NVIDIA driver, no NVRTC, kernels that do not compile): the error says why.
/// Compiled kernels are cached next to the database.
pub fn select_backend(cfg: &AgentConfig) -> Result<Backend, aegis_hal::backend::BackendError> {
    Backend::select(
        &cfg.backend,
        cfg.store.path.parent().map(|d| d.join("cuda-cache")),
    )
}

/// What [`select_backend`] would choose, from the vendor libraries alone (`aegis
/// check-config`).
pub fn check_backend(cfg: &AgentConfig) -> Result<BackendKind, aegis_hal::backend::BackendError> {
    Backend::check(&cfg.backend)
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
        metrics.watch_component("store", Box::new(move || c.values()));
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
    let (wf_tx, wf_rx) = tokio::sync::mpsc::channel::<crate::workflows::apply::Request>(
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
    let signals = Signals::install()?;
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
    let (pipeline, inference) =
        match start_pipeline(&starter, pipeline_cfg.clone(), preloaded.clone()).await {
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
                start_pipeline(&starter, fallback, preloaded).await?
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
        metrics.watch_component("workflows", Box::new(move || c.values()));
    }
    // The fleet link (when enabled) starts once the pipeline runs.
    let (restart_tx, restart_rx) = tokio::sync::mpsc::channel::<()>(1);
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
        metrics.watch_component("fleet", Box::new(move || c.values()));
        Some(link)
    } else {
        drop(restart_tx);
        None
    };
    if let Some(a) = applier.as_mut() {
        a.report_stopped_at_start(&stopped_at_start);
    }
    let ended = Supervisor {
        pipeline,
        inference,
        starter,
        applier,
        inbox,
        local: wf_rx,
        restarts: restart_rx,
        sensing: sensing.clone(),
        gps_time_floor: cfg.sensors.fusion.gps_time_floor,
        signals,
    }
    .run()
    .await?;
    let Drained {
        streams,
        interrupted,
        mut signals,
    } = ended.drain().await?;
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
        signals.next().await;
    }
    let final_metrics = if req.scrape_metrics {
        crate::http::get_text(listen, "/metrics").await.ok()
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
