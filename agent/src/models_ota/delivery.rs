//! The device's model delivery: its store, its platform, the transfer under way and what
//! everyone else sees of it (status, telemetry, metrics, the web page). The workflow
//! applier owns one ([`crate::workflows::apply::Applier`]) and decides; this module keeps
//! the state and runs transfers on their own task, so a download of minutes never holds the
//! supervisor (signals, health ticks and workflows go on meanwhile).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::{AgentConfig, BackendKind, ModelDeliveryConfig};
use aegis_ota::model::{Platform, VerifiedManifest};
use aegis_ota::model_store::ModelStore;
use serde_json::{Value, json};

use super::download::{self, DownloadError, DownloadPolicy, DownloadTimeouts, TlsRoots};
use super::mqtt::{ChunkPort, Timing, Transfer};

/// Attempts of one HTTP transfer before it is given up (each resumes the last).
pub const ATTEMPTS: u32 = 5;

/// Why model delivery could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The store could not be opened.
    #[error("model store: {0}")]
    Store(#[from] aegis_ota::model_store::StoreError),
    /// `workflows.models.ca_file` cannot be used.
    #[error("workflows.models.ca_file {path}: {reason}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// A transfer that ended: the bundle is staged (or why not).
pub struct Staged {
    /// The manifest it was for.
    pub verified: VerifiedManifest,
    /// The signed manifest as announced.
    pub signed: Vec<u8>,
    /// Ok, or why the transfer failed, and whether trying again later may succeed.
    pub outcome: Result<(), (String, bool)>,
    /// When the announcement arrived.
    pub t0: Instant,
    /// Milliseconds the transfer took (every attempt and pause).
    pub transfer_ms: f64,
}

/// Counters (exported as `aegis_component_counter{component="models"}`).
#[derive(Debug, Default)]
pub struct DeliveryCounters {
    /// Announcements and orders received.
    pub received: AtomicU64,
    /// Bundles installed and kept.
    pub installed: AtomicU64,
    /// Bundles that failed their health check or first frames.
    pub rolled_back: AtomicU64,
    /// Announcements refused or rejected.
    pub rejected: AtomicU64,
    /// Bytes received for bundles.
    pub bytes: AtomicU64,
    /// Transfers that ended in an error.
    pub transfer_errors: AtomicU64,
}

impl DeliveryCounters {
    /// Name/value pairs for the metrics.
    pub fn values(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("received", self.received.load(Relaxed)),
            ("installed", self.installed.load(Relaxed)),
            ("rolled_back", self.rolled_back.load(Relaxed)),
            ("rejected", self.rejected.load(Relaxed)),
            ("bytes", self.bytes.load(Relaxed)),
            ("transfer_errors", self.transfer_errors.load(Relaxed)),
        ]
    }
}

/// What the status, telemetry and web page show of model delivery.
#[derive(Debug, Default)]
pub struct DeliveryStatus {
    inner: Mutex<Value>,
    /// Counters.
    pub counters: DeliveryCounters,
}

impl DeliveryStatus {
    /// The counters and the transfer under way (bytes done and total, whole percent, ETA
    /// seconds; 0 when none), for the metrics.
    pub fn metric_values(&self) -> Vec<(&'static str, u64)> {
        let t = self.get()["transfer"].clone();
        let n = |k: &str| t[k].as_f64().unwrap_or(0.0).max(0.0) as u64;
        let mut v = self.counters.values();
        v.extend([
            ("transfer_done_bytes", n("done")),
            ("transfer_total_bytes", n("total")),
            ("transfer_percent", n("percent")),
            ("transfer_eta_s", n("eta_s")),
        ]);
        v
    }

    /// `{ "store": …, "transfer": …, "last": … }`.
    pub fn get(&self) -> Value {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn update(&self, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
        let mut v = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if !v.is_object() {
            *v = json!({});
        }
        if let Some(m) = v.as_object_mut() {
            f(m);
        }
    }

    /// The transfer under way (None: none).
    pub fn set_transfer(&self, t: Option<Value>) {
        self.update(|m| {
            m.insert("transfer".into(), t.unwrap_or(Value::Null));
        });
    }

    /// The last verdict.
    pub fn set_last(&self, last: Value) {
        self.update(|m| {
            m.insert("last".into(), last);
        });
    }

    /// The models installed over the air that run now (status: `"source": "ota"`).
    pub fn set_running(&self, running: &[aegis_config::ModelConfig]) {
        let list: Vec<Value> = running
            .iter()
            .map(|m| serde_json::to_value(m).unwrap_or_default())
            .collect();
        self.update(|s| {
            s.insert("running".into(), Value::Array(list));
        });
    }

    /// The store's models.
    pub fn set_store(&self, store: &ModelStore) {
        let models: Vec<Value> = store
            .list()
            .into_iter()
            .map(|e| {
                let v = |r: &Option<aegis_ota::model_store::VersionRecord>| {
                    r.as_ref().map(
                        |r| json!({ "version": r.version, "digest": r.digest, "bytes": r.bytes }),
                    )
                };
                json!({
                    "name": e.name,
                    "active": v(&e.record.active),
                    "previous": v(&e.record.previous),
                    "trial": v(&e.record.trial),
                    "highest": e.record.highest,
                })
            })
            .collect();
        let used = store.installed_bytes();
        self.update(|m| {
            m.insert(
                "store".into(),
                json!({ "models": models, "installed_bytes": used }),
            );
        });
    }
}

/// The device's model delivery.
pub struct Delivery {
    /// The configuration.
    pub cfg: ModelDeliveryConfig,
    /// The installed bundles.
    pub store: ModelStore,
    /// What manifests are matched against.
    pub platform: Platform,
    /// The HTTP download policy.
    pub download: DownloadPolicy,
    /// Shared with status, telemetry, metrics and the web page.
    pub status: Arc<DeliveryStatus>,
    /// What `open` repaired.
    pub recovered: Vec<String>,
    /// The manifest digest of the transfer under way.
    pub transfer: Option<String>,
    /// Milliseconds of each step of the bundle being handled (for its receipt and status).
    pub phases: Vec<(String, f64)>,
    /// The latest fleet announcement of another bundle that came during the transfer
    /// (topic, payload): handled when it ends.
    pub pending: Option<(String, Vec<u8>)>,
    /// Where the fleet link meets a transfer over MQTT (the link attaches at its start).
    pub port: Arc<ChunkPort>,
    /// Manifests of running versions answered again this run (once each).
    pub answered_again: std::collections::HashSet<String>,
    done: tokio::sync::mpsc::Sender<Staged>,
}

impl Delivery {
    /// Opens the store (repairing an interrupted change) and reads the CA file; the
    /// receiver gets each finished transfer.
    pub fn open(
        cfg: &AgentConfig,
        backend: BackendKind,
    ) -> Result<(Delivery, tokio::sync::mpsc::Receiver<Staged>), DeliveryError> {
        let m = cfg.workflows.models.clone();
        let (store, recovered) = ModelStore::open(
            &cfg.workflows.models_dir(),
            m.budget_mb.saturating_mul(1 << 20),
        )?;
        for r in &recovered {
            tracing::warn!(repair = %r, "model store repaired at start-up");
        }
        let roots = match &m.ca_file {
            None => TlsRoots::Mozilla,
            Some(path) => TlsRoots::Certificates(read_pem_certs(path)?),
        };
        let download = DownloadPolicy {
            allowed_hosts: m.download_hosts.clone(),
            max_bytes: m.max_bundle_mb.saturating_mul(1 << 20),
            https_only: m.https_only,
            timeouts: DownloadTimeouts::default(),
            roots,
        };
        let platform = Platform {
            backend,
            module: m.module.clone(),
            trt_version: m.trt_version.clone(),
        };
        let status = Arc::new(DeliveryStatus::default());
        status.set_store(&store);
        status.set_transfer(None);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        Ok((
            Delivery {
                cfg: m,
                store,
                platform,
                download,
                status,
                recovered,
                transfer: None,
                phases: Vec::new(),
                pending: None,
                port: ChunkPort::new(),
                answered_again: Default::default(),
                done: tx,
            },
            rx,
        ))
    }

    /// Free bytes on the store's file system.
    pub fn free_disk(&self) -> u64 {
        crate::process::disk(self.store.root()).map_or(0, |(_, free)| free)
    }

    /// Starts fetching `v`'s files from `url` into `staging` on a task of its own: up to
    /// [`ATTEMPTS`] attempts, each resuming the last, with growing pauses; the end goes to
    /// the receiver [`Delivery::open`] returned.
    pub fn start_http(
        &mut self,
        v: VerifiedManifest,
        signed: Vec<u8>,
        url: String,
        staging: PathBuf,
        t0: Instant,
    ) {
        self.transfer = Some(v.digest.clone());
        let (policy, status, done) = (
            self.download.clone(),
            self.status.clone(),
            self.done.clone(),
        );
        let (name, version) = (v.manifest.name.clone(), v.manifest.version);
        status.set_transfer(Some(json!({
            "name": name, "version": version, "via": "http", "done": 0,
            "total": v.total_bytes, "percent": 0.0, "eta_s": null, "attempt": 1,
        })));
        tokio::spawn(async move {
            let started = Instant::now();
            let files = v.manifest.files.clone();
            let mut outcome = Err(("not started".to_string(), true));
            for attempt in 1..=ATTEMPTS {
                let (files, staging, policy, status2, url2) = (
                    files.clone(),
                    staging.clone(),
                    policy.clone(),
                    status.clone(),
                    url.clone(),
                );
                let report = Reporter::new(status2, &name, version, "http");
                let r = tokio::task::spawn_blocking(move || {
                    download::download_bundle(&url2, &files, &staging, &policy, &|p| {
                        report.report(
                            Some(p.file),
                            (p.done, p.total, p.percent),
                            p.eta,
                            ("attempt", attempt.into()),
                        )
                    })
                })
                .await;
                outcome = match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err((crate::causes_text(&e), transient(&e))),
                    Err(e) => Err((format!("download task: {e}"), false)),
                };
                match &outcome {
                    Err((why, true)) if attempt < ATTEMPTS => {
                        status.counters.transfer_errors.fetch_add(1, Relaxed);
                        let pause = Duration::from_secs(1 << (attempt - 1));
                        tracing::warn!(model = %name, version, attempt, error = %why,
                            retry_in_s = pause.as_secs(), "model download interrupted; resuming");
                        tokio::time::sleep(pause).await;
                    }
                    _ => break,
                }
            }
            transfer_end(&status, &done, v, signed, outcome, t0, started).await;
        });
    }

    /// Whether a bundle announced without a URL can come over the fleet broker (a fleet
    /// link runs).
    pub fn mqtt_available(&self) -> bool {
        self.port.is_attached()
    }

    /// Starts fetching `v`'s files over the fleet broker in chunks into `staging`
    /// ([`super::mqtt`]), on a blocking thread; the end goes to the receiver
    /// [`Delivery::open`] returned.
    pub fn start_mqtt(
        &mut self,
        v: VerifiedManifest,
        signed: Vec<u8>,
        staging: PathBuf,
        t0: Instant,
    ) {
        self.transfer = Some(v.digest.clone());
        let (status, done) = (self.status.clone(), self.done.clone());
        let timing = Timing::with_stall(Duration::from_secs(self.cfg.mqtt_stall_s));
        let (name, version) = (v.manifest.name.clone(), v.manifest.version);
        status.set_transfer(Some(json!({
            "name": name, "version": version, "via": "mqtt", "done": 0,
            "total": v.total_bytes, "percent": 0.0, "eta_s": null,
        })));
        let transfer = Transfer::open(self.port.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let files = v.manifest.files.clone();
            let report = Reporter::new(status.clone(), &name, version, "mqtt");
            let r = tokio::task::spawn_blocking(move || {
                transfer.fetch(&name, version, &files, &staging, timing, &|p| {
                    let eta = report.eta(p.done, p.total);
                    report.report(
                        p.file.as_deref(),
                        (p.done, p.total, p.percent),
                        eta,
                        ("ignored", p.ignored.into()),
                    )
                })
            })
            .await;
            let outcome = match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => {
                    tracing::warn!(model = %v.manifest.name, version, error = %e,
                        "model transfer over MQTT ended");
                    Err((crate::causes_text(&e), e.transient()))
                }
                Err(e) => Err((format!("transfer task: {e}"), false)),
            };
            transfer_end(&status, &done, v, signed, outcome, t0, started).await;
        });
    }

    /// The confirmed versions in the store as model entries, to load at start-up. Each
    /// one's manifest, kept beside it by the store (its digest checked against the state),
    /// is verified again against the trust metadata held now
    /// ([`aegis_ota::model::verify_installed_manifest`]: a revoked issuer, another platform
    /// or a withdrawn `models` grant refuse it; an announcement's expiry does not), and the
    /// bundle's files against it ([`aegis_ota::model::verify_bundle_files`]). A version
    /// that fails is skipped with the reason (the configured model of its name runs).
    /// `checks` is [`aegis_ota::state::Workflows::model_checks`] (None: trust lost, nothing
    /// is loaded from the store).
    pub fn installed(
        &self,
        checks: Option<(
            &aegis_ota::trust::TrustMetadata,
            &aegis_ota::device::Identity,
            i64,
            i64,
        )>,
    ) -> (Vec<aegis_config::ModelConfig>, Vec<String>) {
        let (mut ok, mut problems) = (Vec::new(), Vec::new());
        for e in self.store.list() {
            let Some(active) = &e.record.active else {
                continue;
            };
            let Some((_, dir)) = self.store.active(&e.name) else {
                continue;
            };
            let r = (|| -> Result<aegis_config::ModelConfig, String> {
                let (trust, me, now_s, skew) =
                    checks.ok_or("trust lost: installed models are not loaded")?;
                let bytes = self
                    .store
                    .manifest(&e.name, active.version)
                    .map_err(|e| e.to_string())?;
                let ctx = aegis_ota::model::ModelContext {
                    identity: me.clone(),
                    platform: self.platform.clone(),
                    agent_version: env!("CARGO_PKG_VERSION").into(),
                    now_s,
                    max_clock_skew_s: skew,
                    installed_version: Some(active.version),
                    free_disk_bytes: 0,
                    max_bundle_bytes: self.download.max_bytes,
                };
                let v = aegis_ota::model::verify_installed_manifest(&bytes, trust, &ctx)
                    .map_err(|e| e.to_string())?;
                aegis_ota::model::verify_bundle_files(&dir, &v).map_err(|e| e.to_string())?;
                super::install::model_config(&v.manifest, &dir)
            })();
            match r {
                Ok(mc) => ok.push(mc),
                Err(why) => problems.push(format!(
                    "model {} version {}: not loaded ({why}); the configured model runs",
                    e.name, active.version
                )),
            }
        }
        (ok, problems)
    }

    /// The transfer ended: forget it.
    pub fn transfer_ended(&mut self) {
        self.transfer = None;
        self.status.set_transfer(None);
    }
}

/// A transfer ended (HTTP or MQTT): counted, and handed to the applier.
async fn transfer_end(
    status: &DeliveryStatus,
    done: &tokio::sync::mpsc::Sender<Staged>,
    verified: VerifiedManifest,
    signed: Vec<u8>,
    outcome: Result<(), (String, bool)>,
    t0: Instant,
    started: Instant,
) {
    if outcome.is_err() {
        status.counters.transfer_errors.fetch_add(1, Relaxed);
    }
    let _ = done
        .send(Staged {
            verified,
            signed,
            outcome,
            t0,
            transfer_ms: started.elapsed().as_secs_f64() * 1e3,
        })
        .await;
}

/// One transfer attempt's progress reports (bytes of the bundle on disk, resumed ones
/// included) turned into the bytes-received counter and the status's `transfer` entry.
/// The first report's bytes were on disk already: neither received nor part of the rate.
struct Reporter {
    status: Arc<DeliveryStatus>,
    name: String,
    version: u64,
    via: &'static str,
    started: Instant,
    /// (bytes at the first report, bytes at the last).
    seen: std::sync::Mutex<Option<(u64, u64)>>,
}

impl Reporter {
    fn new(status: Arc<DeliveryStatus>, name: &str, version: u64, via: &'static str) -> Reporter {
        Reporter {
            status,
            name: name.to_owned(),
            version,
            via,
            started: Instant::now(),
            seen: std::sync::Mutex::new(None),
        }
    }

    /// Time left at this attempt's rate so far (None until a rate is known).
    fn eta(&self, done: u64, total: u64) -> Option<Duration> {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|s| s.0)?;
        let (got, secs) = (
            done.saturating_sub(first),
            self.started.elapsed().as_secs_f64(),
        );
        (got > 0 && secs > 0.0)
            .then(|| Duration::from_secs_f64(total.saturating_sub(done) as f64 * secs / got as f64))
    }

    /// A report: `(done, total, percent)`, the ETA, and one more field of the transport.
    fn report(
        &self,
        file: Option<&str>,
        (done, total, percent): (u64, u64, f64),
        eta: Option<Duration>,
        (key, value): (&str, Value),
    ) {
        let before = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            let (first, last) = seen.get_or_insert((done, done));
            std::mem::replace(last, done).max(*first)
        };
        self.status
            .counters
            .bytes
            .fetch_add(done.saturating_sub(before), Relaxed);
        let mut t = json!({
            "name": self.name, "version": self.version, "via": self.via,
            "file": file, "done": done, "total": total,
            "percent": (percent * 10.0).round() / 10.0,
            "eta_s": eta.map(|d| d.as_secs()),
        });
        t[key] = value;
        self.status.set_transfer(Some(t));
    }
}

/// Whether trying again later may succeed (the network, the server, the disk), rather
/// than a bundle that can never verify (wrong bytes, too long) or a refused URL.
fn transient(e: &DownloadError) -> bool {
    matches!(
        e,
        DownloadError::Request { .. }
            | DownloadError::Status { .. }
            | DownloadError::Interrupted { .. }
            | DownloadError::Truncated { .. }
            | DownloadError::BadContentRange { .. }
            | DownloadError::Staging(aegis_ota::staging::StagingError::Io { .. })
    )
}

/// The DER certificates of a PEM file.
pub fn read_pem_certs(path: &Path) -> Result<Vec<Vec<u8>>, DeliveryError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let fail = |reason: String| DeliveryError::Ca {
        path: path.to_path_buf(),
        reason,
    };
    let certs: Vec<Vec<u8>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .map(|c| c.map(|c| c.to_vec()).map_err(|e| fail(e.to_string())))
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(fail("no certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumed_bytes_are_not_counted_as_received_nor_in_the_rate() {
        let s = Arc::new(DeliveryStatus::default());
        let r = Reporter::new(s.clone(), "nn", 2, "mqtt");
        // Resumed at 6000 of 10000: nothing received yet, no rate.
        r.report(
            Some("model.onnx"),
            (6000, 10_000, 60.0),
            None,
            ("ignored", 0.into()),
        );
        assert_eq!(s.counters.bytes.load(Relaxed), 0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(r.eta(6000, 10_000), None);
        r.report(
            Some("model.onnx"),
            (8000, 10_000, 80.0),
            None,
            ("ignored", 1.into()),
        );
        assert_eq!(s.counters.bytes.load(Relaxed), 2000);
        // 2000 bytes in the time so far, 2000 to go: about as long again.
        let eta = r.eta(8000, 10_000).unwrap();
        assert!(
            eta >= Duration::from_millis(20) && eta < Duration::from_secs(60),
            "{eta:?}"
        );
        let t = s.get()["transfer"].clone();
        assert_eq!(
            (&t["via"], &t["done"], &t["ignored"], &t["file"]),
            (
                &json!("mqtt"),
                &json!(8000),
                &json!(1),
                &json!("model.onnx")
            )
        );
    }

    #[test]
    fn metrics_carry_the_transfer_under_way_and_zero_without_one() {
        let s = DeliveryStatus::default();
        let get = |s: &DeliveryStatus, k: &str| {
            s.metric_values()
                .into_iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v)
        };
        assert_eq!(get(&s, "transfer_percent"), Some(0));
        s.set_transfer(Some(json!({
            "name": "nn", "version": 2, "via": "http", "done": 4096, "total": 16384,
            "percent": 25.0, "eta_s": 3, "attempt": 1,
        })));
        s.counters.bytes.fetch_add(4096, Relaxed);
        assert_eq!(get(&s, "transfer_done_bytes"), Some(4096));
        assert_eq!(get(&s, "transfer_total_bytes"), Some(16384));
        assert_eq!(get(&s, "transfer_percent"), Some(25));
        assert_eq!(get(&s, "transfer_eta_s"), Some(3));
        assert_eq!(get(&s, "bytes"), Some(4096));
        s.set_transfer(None);
        assert_eq!(get(&s, "transfer_done_bytes"), Some(0));
    }
}
