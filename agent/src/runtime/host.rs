//! What the fleet link (and, later, the web page) asks of the running agent: status,
//! telemetry, the redacted config, restarts, log levels, snapshots, and the way to the
//! workflow applier.

use std::sync::Arc;

use aegis_config::{AgentConfig, BackendKind};

use crate::metrics::Metrics;

/// What the fleet link asks of the running agent.
pub(crate) struct AgentHost {
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
pub(crate) struct WorkflowHooks {
    pub(crate) sensing: Option<Arc<crate::sensing::Sensing>>,
    pub(crate) status: Arc<std::sync::Mutex<serde_json::Value>>,
    /// Where workflow and trust deliveries go (None: workflows are off).
    pub(crate) inbox: Option<Arc<crate::workflows::apply::FleetInbox>>,
    /// Model delivery's progress and results (None: off).
    pub(crate) models: Option<Arc<crate::models_ota::delivery::DeliveryStatus>>,
    /// Event clips (None: off).
    pub(crate) evidence: Option<Arc<crate::evidence::EvidenceHost>>,
}

impl AgentHost {
    pub(crate) fn new(
        cfg: &AgentConfig,
        backend: BackendKind,
        metrics: Arc<Metrics>,
        store: crate::store::StoreHandle,
        restart: tokio::sync::mpsc::Sender<()>,
        snapshots: Arc<crate::pipeline::snapshot::SnapshotHub>,
        workflows: WorkflowHooks,
    ) -> Self {
        let config = crate::web::pages::redacted_config(cfg);
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

    /// The configured models, each replaced by the version installed over the air that
    /// runs now (`"source": "ota"`).
    fn models_now(&self) -> serde_json::Value {
        let mut models = self.models.as_array().cloned().unwrap_or_default();
        let running = self
            .workflows
            .models
            .as_ref()
            .and_then(|m| m.get()["running"].as_array().cloned())
            .unwrap_or_default();
        for m in running {
            let Some(name) = m["name"].as_str() else {
                continue;
            };
            models.retain(|c| c["name"].as_str() != Some(name));
            models.push(serde_json::json!({
                "name": name,
                "version": m["version"],
                "sha256": m["sha256"],
                "source": "ota",
            }));
        }
        models.into()
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
            "models": self.models_now(),
            "model_delivery": self.workflows.models.as_ref().map(|m| m.get()),
        })
    }

    fn workflow(&self, topic: &str, payload: &[u8], live: bool) {
        if let Some(inbox) = &self.workflows.inbox {
            inbox.put(topic, payload, live);
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
            "model_transfer": self.workflows.models.as_ref().map(|m| m.get()["transfer"].clone()),
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

    fn restart_pipeline(&self) -> Result<(), crate::fleet::CommandError> {
        self.restart
            .try_send(())
            .map_err(|_| crate::fleet::CommandError::RestartUnderWay)
    }

    fn set_log_level(&self, level: &str) -> Result<(), crate::fleet::CommandError> {
        Ok(crate::logging::set_level(level)?)
    }

    fn snapshot(
        &self,
        stream: Option<&str>,
    ) -> Result<
        tokio::sync::oneshot::Receiver<Result<Vec<u8>, crate::pipeline::snapshot::SnapshotError>>,
        crate::pipeline::snapshot::SnapshotError,
    > {
        self.snapshots.request(stream)
    }

    fn clips(&self, command: &str, args: &serde_json::Value) -> Result<serde_json::Value, String> {
        match &self.workflows.evidence {
            Some(e) => e.command(command, args),
            None => Err("event clips are not available on this device".into()),
        }
    }

    fn clip_video(&self, id: &str) -> Result<Vec<u8>, String> {
        match &self.workflows.evidence {
            Some(e) => e.video(id, CLIP_VIDEO_MAX),
            None => Err("event clips are not available on this device".into()),
        }
    }
}

/// The largest clip the fleet's `get_clip` sends (in chunks).
const CLIP_VIDEO_MAX: u64 = 256 << 20;
