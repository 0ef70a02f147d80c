//! Publishing a held document: the API's publish route, rollout steps, rollbacks and
//! reconciles all go through [`Publisher`], which runs `chimera publish`'s own code
//! (`gateway::send_publish`): the document as a file in the state directory (the CLI's
//! `fleet reconcile` re-sends from `sent.json`, which names it), retained QoS 1 on each
//! topic, every PUBACK awaited, `sent.json` recorded. One publish at a time: each rewrites
//! `sent.json`.

use std::path::{Path, PathBuf};

use crate::broker::Broker;
use crate::gateway::PublishPlan;

use super::store::Store;

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PublishError {
    /// The audience was refused before the broker was contacted (what devices would refuse).
    #[error("publish refused: {0}")]
    Refused(String),
    /// The broker did not take it.
    #[error("broker {broker}: {message}")]
    Broker {
        /// The broker.
        broker: String,
        /// What went wrong.
        message: String,
    },
    /// The service does not hold that document.
    #[error("no uploaded workflow with digest {0}")]
    Unknown(String),
    /// The state directory or the database failed.
    #[error("{0}")]
    Internal(String),
}

/// The service's publisher (present when `broker` is configured).
pub(crate) struct Publisher {
    /// The broker.
    pub(crate) broker: Broker,
    /// The device registry audiences are resolved with.
    pub(crate) registry: PathBuf,
    /// The gateway's state directory.
    pub(crate) state: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl Publisher {
    /// A publisher to `broker`.
    pub(crate) fn new(broker: Broker, registry: PathBuf, state: PathBuf) -> Publisher {
        Publisher {
            broker,
            registry,
            state,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Publishes document `digest` (its `text` as uploaded) to the audience `plan` decides
    /// from the document's file and the registry.
    pub(crate) async fn publish(
        &self,
        digest: &str,
        text: String,
        plan: impl FnOnce(&Path, &Path) -> anyhow::Result<PublishPlan> + Send + 'static,
    ) -> Result<PublishPlan, PublishError> {
        let _guard = self.lock.lock().await;
        let (broker, registry, state) = (
            self.broker.clone(),
            self.registry.clone(),
            self.state.clone(),
        );
        let digest = digest.to_string();
        tokio::task::spawn_blocking(move || {
            let file = document_file(&state, &digest, &text)?;
            let plan = plan(&file, &registry).map_err(|e| PublishError::Refused(e.to_string()))?;
            crate::gateway::send_publish(&plan, &broker, &state).map_err(|e| {
                // A session's errors start with the broker's URL already.
                let message = e.to_string();
                let url = broker.to_string();
                PublishError::Broker {
                    message: message
                        .strip_prefix(&format!("{url}: "))
                        .map_or(message.clone(), str::to_string),
                    broker: url,
                }
            })?;
            Ok(plan)
        })
        .await
        .map_err(|e| PublishError::Internal(e.to_string()))?
    }

    /// Publishes held document `digest` to `devices`, each on its own retained topic (an
    /// audience decided already: a rollout checked it when it was made).
    pub(crate) async fn to_devices(
        &self,
        store: &dyn Store,
        digest: &str,
        devices: Vec<String>,
    ) -> Result<PublishPlan, PublishError> {
        let Some(text) = store
            .workflow_text(digest.to_string())
            .await
            .map_err(|e| PublishError::Internal(e.to_string()))?
        else {
            return Err(PublishError::Unknown(digest.to_string()));
        };
        self.publish(digest, text, move |file, _| {
            crate::gateway::plan_devices(file, devices)
        })
        .await
    }
}

/// `STATE/workflows/DIGEST.maml.md`, written once (0644: `sent.json` names it for the
/// CLI). `digest` was checked to be 64 hex digits (it names a stored document).
fn document_file(state: &Path, digest: &str, text: &str) -> Result<PathBuf, PublishError> {
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(PublishError::Internal(format!(
            "digest {digest:?} is not 64 hex digits"
        )));
    }
    let dir = state.join("workflows");
    let file = dir.join(format!("{digest}.maml.md"));
    if !file.exists() {
        crate::create_dir(&dir).map_err(|e| PublishError::Internal(e.to_string()))?;
        aegis_ota::fsutil::write_atomic_mode(&file, text.as_bytes(), 0o644)
            .map_err(|e| PublishError::Internal(format!("cannot write {}: {e}", file.display())))?;
    }
    Ok(file)
}
