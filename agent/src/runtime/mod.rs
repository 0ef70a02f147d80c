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
    /// The configuration file the config was loaded from: the web page's editor changes it
    /// (None: the page only shows the configuration).
    pub config_path: Option<std::path::PathBuf>,
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
    // Model delivery (with workflows): its store opened (an interrupted change repaired)
    // before the fleet link can deliver an announcement.
    let (delivery, staged) = match (&workflows, cfg.workflows.models.enabled) {
        (Some(_), true) => {
            let (d, rx) = crate::models_ota::delivery::Delivery::open(cfg, backend)?;
            let (status, port) = (d.status.clone(), d.port.clone());
            metrics.watch_component(
                "models",
                Box::new(move || {
                    let mut v = status.metric_values();
                    v.push((
                        "chunk_messages_dropped",
                        port.dropped.load(std::sync::atomic::Ordering::Relaxed),
                    ));
                    v
                }),
            );
            (Some(d), Some(rx))
        }
        _ => (None, None),
    };
    let model_status = delivery.as_ref().map(|d| d.status.clone());
    let (pipeline_cfg, origin) = {
        let (p, o) = aegis_config::effective_pipeline(cfg, active.as_ref().map(|(_, p)| p));
        (p.clone(), o)
    };
    audit(
        &store_handle,
        "agent.start",
        format!(
            "version {}, backend {backend}, {} streams",
            env!("CARGO_PKG_VERSION"),
            pipeline_cfg.sources.len()
        ),
    );
    // Local requests and fleet deliveries wait apart: neither can starve the other.
    let (wf_tx, wf_rx) = tokio::sync::mpsc::channel::<crate::workflows::apply::Request>(
        crate::workflows::apply::LOCAL_QUEUE,
    );
    let apply_counters = Arc::new(crate::workflows::apply::ApplyCounters::default());
    let inbox = crate::workflows::apply::FleetInbox::new(apply_counters.clone());
    let refusals = crate::workflows::apply::RefusalAudit::new(store_handle.clone());
    let token = Arc::new(crate::web::LocalToken::load_or_create(&cfg.token_path())?);
    let workflow_status = Arc::new(std::sync::Mutex::new(serde_json::Value::Null));
    // Snapshots and live video outlive pipeline swaps: the pages and the fleet hold the hubs.
    let snapshots = req.options.snapshots.clone().unwrap_or_default();
    let live = req
        .options
        .live
        .clone()
        .unwrap_or_else(|| Arc::new(crate::live::LiveHub::new(metrics.clone())));
    // The WebRTC sessions' one UDP port, when the config sets one.
    let udp = match cfg.outputs.webrtc.as_ref().and_then(|w| w.udp.as_deref()) {
        Some(addr) => {
            let at: std::net::SocketAddr = addr
                .parse()
                .map_err(|e| anyhow::anyhow!("outputs.webrtc.udp {addr:?}: {e}"))?;
            let mux = crate::outputs::udp_mux::UdpMux::bind(at)
                .await
                .map_err(|e| anyhow::anyhow!("outputs.webrtc.udp: cannot listen on {at}: {e}"))?;
            tracing::info!(udp = %mux.local_addr(), "webrtc sessions share one UDP port");
            Some(mux)
        }
        None => None,
    };
    let hls_clients = cfg.outputs.hls.as_ref().map(|h| h.clients.clone());
    let served = Arc::new(crate::outputs::Served {
        udp,
        hls: Arc::new(crate::outputs::hls::HlsHub::new(
            hls_clients.unwrap_or_default(),
        )),
        ..Default::default()
    });
    // The pages hold these before the sensors and the pipeline start; those fill them.
    let readings = Arc::new(crate::sensing::Readings::default());
    let models_in_use = Arc::new(crate::inference::ModelsInUse::default());
    // New local default pipelines from the web page's config editor, for the supervisor.
    let (defaults_tx, defaults_rx) =
        tokio::sync::mpsc::channel::<crate::workflows::apply::DefaultPipeline>(1);
    let editor = req.config_path.as_ref().map(|path| {
        Arc::new(crate::web::edit::Editor::new(
            path,
            crate::web::edit::pipeline_refusal(cfg, workflows.is_some()),
            Some(store_handle.clone()),
            Some(defaults_tx.clone()),
        ))
    });
    // Event clips: the pipelines' starter opens them, the pages and the fleet trigger and
    // list them.
    let evidence = Arc::new(crate::evidence::EvidenceHost::new(
        &cfg.workflows.keys_dir,
        &cfg.device.id,
        Some(store_handle.clone()),
        Some(store.path().to_path_buf()),
    ));
    let pages = Arc::new(crate::web::pages::PagesState {
        metrics: metrics.clone(),
        device: cfg.device.id.clone(),
        backend: match &selected.fell_back {
            Some(why) => format!("{backend} (fell back: {why})"),
            None => backend.to_string(),
        },
        gpu: selected.gpu.is_some().then(|| selected.clone()),
        started: Instant::now(),
        store_path: store.path().to_path_buf(),
        config: crate::web::pages::redacted_config(cfg),
        workflow: workflow_status.clone(),
        logs: crate::logging::ring(),
        thermal_root: "/sys/class/thermal".into(),
        live: live.clone(),
        served: served.clone(),
        snapshots: snapshots.clone(),
        readings: readings.clone(),
        models: crate::web::pages::ModelsState::new(cfg.inference.clone(), models_in_use.clone())
            .with_delivery(model_status.clone()),
        editor,
        workflows: workflows.is_some().then(|| wf_tx.clone()),
        counters: workflows.is_some().then(|| apply_counters.clone()),
        store: Some(store_handle.clone()),
        evidence: Some(evidence.clone()),
    });
    let endpoints = Endpoints::serve(
        cfg,
        req.listen,
        ServerState {
            pages,
            metrics: metrics.clone(),
            device: cfg.device.id.clone(),
            started: Instant::now(),
            workflows: workflows.is_some().then(|| wf_tx.clone()),
            token,
            metrics_public: cfg.web.metrics_public,
            audit: workflows.is_some().then(|| refusals.clone()),
            counters: workflows.is_some().then(|| apply_counters.clone()),
            auth: Arc::new(crate::web::Auth::new(
                cfg.accounts_path(),
                Arc::new(crate::web::auth::SystemClock),
            )),
            // Set by Endpoints::serve from the address it listens on.
            cookie_secure: true,
        },
    )
    .await?;
    let listen = endpoints.listen;
    // The RTSP restream server: the streams whichever pipeline runs restreams.
    let rtsp = match &cfg.outputs.rtsp {
        Some(r) => {
            let hub = live.clone();
            let restreamed: crate::outputs::rtsp::Restreamed =
                Arc::new(move |s: &str| hub.is_restreamed(s));
            // RTSPS serves the web server's device certificate (made on first use).
            let tls = if r.tls {
                let ip = r
                    .listen
                    .parse::<std::net::SocketAddr>()
                    .map(|a| a.ip())
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
                let cert = crate::web::tls::DeviceCert::load_or_create(
                    &crate::web::tls::cert_dir(cfg),
                    ip,
                )?;
                tracing::info!(fingerprint = %cert.fingerprint(),
                    "RTSPS with the device certificate");
                Some(cert.server_config()?)
            } else {
                None
            };
            Some(
                crate::outputs::rtsp::RtspServer::start(
                    r,
                    live.clone(),
                    restreamed,
                    metrics.clone(),
                    tls,
                )
                .await?,
            )
        }
        None => None,
    };
    on_listening(listen);
    // systemd: ready once the agent serves — not gated on cameras or the broker.
    let notifier = Arc::new(crate::systemd::Notifier::from_env());
    let liveness = Arc::new(crate::liveness::Liveness::default());
    let status = {
        let (metrics, workflow) = (metrics.clone(), workflow_status.clone());
        move || status_line(listen, &metrics, &workflow)
    };
    notifier.ready(&status());
    let watchdog = notifier.supervise(liveness.clone(), status);
    tracing::info!(device = %cfg.device.id, %backend, streams = pipeline_cfg.sources.len(),
        pipeline = match origin { PipelineOrigin::LocalDefault => "local default", PipelineOrigin::SignedWorkflow => "signed workflow" },
        %listen, "starting pipeline");

    // Signal handlers first: a SIGTERM while sources are still opening must stop cleanly too.
    let signals = Signals::install()?;
    let started = Instant::now();
    let mut opts = req.options.clone();
    opts.backend = Some(selected);
    opts.snapshots = Some(snapshots.clone());
    opts.live = Some(live);
    opts.served = Some(served);
    opts.models_in_use = Some(models_in_use);
    opts.watch = Some(crate::liveness::Watch {
        liveness: liveness.clone(),
        stall: Duration::from_secs(cfg.watchdog.stall_s.into()),
    });
    let sensing =
        crate::sensing::Sensing::start_with(&cfg.sensors, Some(store_handle.clone()), readings)?;
    if let Some(sn) = &sensing {
        let me = sn.clone();
        metrics.watch_component("sensors", Box::new(move || me.counters.values()));
        opts.sensing = Some(sn.clone());
    }
    if opts.store.is_none() {
        opts.store = Some(store_handle.clone());
        opts.events_topic = events_topic;
    }
    // Confirmed bundles replace the configured models of their names from the start.
    let installed = match &delivery {
        Some(d) => {
            let (ok, problems) = d.installed(workflows.as_ref().and_then(|w| w.model_checks()));
            for p in &problems {
                tracing::error!(problem = %p, "installed model");
            }
            d.status.set_running(&ok);
            ok
        }
        None => Vec::new(),
    };
    let preloaded = opts.inference.take();
    let starter = Arc::new(crate::workflows::apply::Starter {
        metrics: metrics.clone(),
        opts,
        inference: cfg.inference.clone(),
        cuda_device: cfg.backend.cuda_device,
        installed: std::sync::Mutex::new(installed),
        evidence: Some(evidence.clone()),
    });
    let (pipeline, inference) = start_first(
        &starter,
        (pipeline_cfg.clone(), origin),
        preloaded,
        workflows.as_mut(),
        &cfg.pipeline,
        &mut stopped_at_start,
    )
    .await?;
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
    if let (Some(a), Some(d)) = (applier.as_mut(), delivery) {
        a.set_models(d);
    }
    if let Some(a) = applier.as_mut() {
        a.set_history_db(store.path().to_path_buf());
        if cfg.workflows.firmware.enabled {
            match crate::firmware::Firmware::open(cfg) {
                Ok(f) => a.set_firmware(f),
                Err(e) => {
                    // Video runs without firmware updates; an image on trial is then
                    // never confirmed, and the bootloader falls back.
                    tracing::error!(error = %crate::causes_text(&e), "firmware updates are off");
                    audit(&store_handle, "firmware.off", e.to_string());
                }
            }
        }
    }
    if let Some(a) = &applier {
        let c = a.counters.clone();
        metrics.watch_component("workflows", Box::new(move || c.values()));
    }
    // The fleet link (when enabled) starts once the pipeline runs.
    let (restart_tx, restart_rx) = tokio::sync::mpsc::channel::<()>(1);
    let fleet = match cfg.fleet.enabled {
        true => Some(start_fleet(
            cfg,
            backend,
            &metrics,
            &store_handle,
            restart_tx,
            snapshots,
            WorkflowHooks {
                status: workflow_status.clone(),
                inbox: applier.as_ref().map(|_| inbox.clone()),
                sensing: sensing.clone(),
                models: model_status,
                evidence: Some(evidence.clone()),
            },
            applier.as_mut(),
        )?),
        false => {
            drop(restart_tx);
            None
        }
    };
    if let Some(a) = applier.as_mut() {
        a.report_stopped_at_start(&stopped_at_start);
        if let Some(f) = a.firmware() {
            f.start(liveness.clone(), fleet.as_ref().map(|l| l.counters.clone()));
        }
    }
    let ended = Supervisor {
        pipeline,
        inference,
        starter,
        applier,
        inbox,
        local: wf_rx,
        staged,
        defaults: defaults_rx,
        restarts: restart_rx,
        sensing: sensing.clone(),
        gps_time_floor: cfg.sensors.fusion.gps_time_floor,
        signals,
        beat: liveness.register(
            "applier",
            Duration::from_secs(cfg.watchdog.applier_stall_s.into()),
        ),
    }
    .run()
    .await?;
    notifier.stopping(if ended.interrupted {
        "stopping: finalising recordings"
    } else {
        "input ended: finalising recordings"
    });
    if let Some(w) = watchdog {
        w.abort();
    }
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
    endpoints.stop().await;
    if let Some(r) = rtsp {
        r.stop().await;
    }
    if let Some(f) = fleet {
        f.stop().await;
    }
    if let Some(sn) = &sensing {
        let sn = sn.clone();
        tokio::task::spawn_blocking(move || sn.stop()).await?;
    }
    audit(
        &store_handle,
        "agent.stop",
        if interrupted { "signal" } else { "input ended" }.into(),
    );
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

/// The `STATUS=` line systemd shows: where the agent serves, each stream's state (the
/// ones not streaming named), the workflow that runs.
fn status_line(
    listen: SocketAddr,
    metrics: &Metrics,
    workflow: &std::sync::Mutex<serde_json::Value>,
) -> String {
    let streams = metrics.source_health();
    let streaming = streams
        .iter()
        .filter(|(_, h)| h.state == aegis_hal::source::SourceState::Streaming)
        .count();
    let others: Vec<String> = streams
        .iter()
        .filter(|(_, h)| h.state != aegis_hal::source::SourceState::Streaming)
        .map(|(id, h)| format!("{id} {}", h.state.as_str()))
        .collect();
    let workflow = workflow.lock().unwrap_or_else(|p| p.into_inner())["active"].clone();
    let workflow = match workflow["id"].as_str() {
        Some(id) => format!("workflow {id} #{}", workflow["sequence"]),
        None => "local pipeline".into(),
    };
    let mut line = format!(
        "serving {listen}; {streaming}/{} streams streaming",
        streams.len()
    );
    if !others.is_empty() {
        line.push_str(&format!(" ({})", others.join(", ")));
    }
    line.push_str(&format!("; {workflow}"));
    line
}

/// An audit row from the agent itself.
fn audit(store: &crate::store::StoreHandle, action: &str, detail: String) {
    store.submit(crate::store::Record::Audit {
        ts_us: crate::store::now_us(),
        actor: "agent".into(),
        action: action.into(),
        detail,
    });
}

/// The local HTTP endpoints, served on their own task until [`Endpoints::stop`].
struct Endpoints {
    listen: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Endpoints {
    /// Binds `listen` (else `web.listen`) and serves `state`'s router (the technician pages
    /// included, each behind the same access check): HTTPS with the device certificate
    /// unless `web.tls` says otherwise.
    async fn serve(
        cfg: &AgentConfig,
        listen: Option<SocketAddr>,
        state: ServerState,
    ) -> anyhow::Result<Endpoints> {
        let addr: SocketAddr = match listen {
            Some(a) => a,
            None => cfg
                .web
                .listen
                .parse()
                .map_err(|e| anyhow::anyhow!("web.listen: {e}"))?,
        };
        let listener = bind(addr).await?;
        let listen = listener.local_addr()?;
        let tls = crate::web::tls::wants_tls(cfg.web.tls, listen);
        // Plain HTTP: a `Secure` cookie would not come back, so only loopback drops it.
        let state = ServerState {
            cookie_secure: tls || !listen.ip().is_loopback(),
            ..state
        };
        let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let task = if tls {
            let dir = crate::web::tls::cert_dir(cfg);
            let cert = crate::web::tls::DeviceCert::load_or_create(&dir, listen.ip())?;
            tracing::info!(fingerprint = %cert.fingerprint(), cert = %cert.cert_path.display(),
                "web: HTTPS with the device certificate (compare this SHA-256 fingerprint in the browser)");
            // `tap_io` only to have the peer address as connect info.
            let listener = axum::serve::ListenerExt::tap_io(
                crate::web::tls::TlsListener::new(listener, cert.server_config()?)?,
                |_| {},
            );
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        } else {
            tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await
            })
        };
        Ok(Endpoints { listen, stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Starts the pipeline the device should run. When that is a stored signed workflow that no
/// longer starts here (a model file went missing...), the workflow is rolled back and the
/// previous one (or the local default) starts instead; what stopped is added to `stopped`.
async fn start_first(
    starter: &Arc<crate::workflows::apply::Starter>,
    (pipeline, origin): (aegis_config::PipelineConfig, PipelineOrigin),
    preloaded: Option<Arc<crate::inference::Inference>>,
    workflows: Option<&mut aegis_ota::state::Workflows>,
    local_default: &aegis_config::PipelineConfig,
    stopped: &mut Vec<aegis_ota::state::Stopped>,
) -> anyhow::Result<(crate::pipeline::Pipeline, Arc<crate::inference::Inference>)> {
    let e = match start_pipeline(starter, pipeline, preloaded.clone()).await {
        Ok(p) => return Ok(p),
        Err(e) => e,
    };
    let (PipelineOrigin::SignedWorkflow, Some(w)) = (origin, workflows) else {
        return Err(e);
    };
    tracing::error!(error = %crate::error_text(&e),
        "the active workflow's pipeline does not start; rolling back to the previous one");
    w.rollback()?;
    let (fallback, more) = w.active_pipeline()?;
    stopped.extend(more);
    let fallback = match fallback {
        Some((_, p)) => p,
        None => local_default.clone(),
    };
    start_pipeline(starter, fallback, preloaded).await
}

/// Starts the fleet link (once the pipeline runs) and watches its counters; the applier
/// gets the link's wake-up and resubscribe handles.
#[allow(clippy::too_many_arguments)]
fn start_fleet(
    cfg: &AgentConfig,
    backend: BackendKind,
    metrics: &Arc<Metrics>,
    store: &crate::store::StoreHandle,
    restart: tokio::sync::mpsc::Sender<()>,
    snapshots: Arc<crate::pipeline::snapshot::SnapshotHub>,
    hooks: WorkflowHooks,
    applier: Option<&mut crate::workflows::apply::Applier>,
) -> anyhow::Result<crate::fleet::FleetLink> {
    let mut settings = crate::fleet::FleetSettings::from_config(cfg)?;
    settings.model_chunks = applier.as_ref().and_then(|a| a.model_chunk_port());
    let host = Arc::new(AgentHost::new(
        cfg,
        backend,
        metrics.clone(),
        store.clone(),
        restart,
        snapshots,
        hooks,
    ));
    let outbox = crate::fleet::SqliteOutbox::new(cfg.store.path.clone(), store.clone());
    let link = crate::fleet::FleetLink::start(settings, Box::new(outbox), host);
    if let Some(a) = applier {
        a.nudge = Some(link.nudge.clone());
        a.resubscribe = Some(link.resubscribe.clone());
    }
    let c = link.counters.clone();
    metrics.watch_component("fleet", Box::new(move || c.values()));
    Ok(link)
}
