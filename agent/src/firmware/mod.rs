//! Firmware A/B updates on the device (issue 22, docs/appliance.md): what the agent does
//! with a signed firmware order once [`aegis_ota::firmware::verify_order`] accepted it, and
//! at every start while one is under way.
//!
//! The decisions about a message (verify, duplicate, answer) are the workflow applier's
//! (`crate::workflows::apply`, which holds the trust and the device key); this module
//! holds the rest:
//!
//! - the record outside the A/B slots ([`FirmwareState`], `<dir>/state.json`);
//! - the worker of an accepted order: download (resumable, checked against the order's
//!   size and SHA-256, through the model downloader) → [`Step::Install`] →
//!   [`Step::Switch`] → [`Step::Reboot`], each step recorded before the next;
//! - at every start, [`Firmware::start`]: the record against the bootloader
//!   ([`FirmwareState::resume`]) → switch again, reboot again, a health trial (healthy for
//!   `trial_s`: no stalled stage or applier, and the broker reached when the fleet link is
//!   on → [`Step::MarkGood`]; else reboot unconfirmed, and the bootloader falls back once
//!   the slot's attempts are spent), or the end: an [`Event::Ended`] that the applier
//!   answers with a signed receipt before it finishes the record.
//!
//! The privileged steps go through [`steps::Steps`]: the helper, or this process.

pub mod steps;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_config::{AgentConfig, FirmwareConfig, FirmwarePrivilege, FirmwareUpdaterKind};
use aegis_ota::firmware::state::{FirmwareState, Resume};
use aegis_ota::firmware::updater::{Slot, UpdaterError};
use aegis_ota::firmware::{FirmwareContext, VerifiedOrder};
use aegis_ota::model::BundleFile;
use aegis_ota::receipt::Verdict;

use crate::models_ota::download::{DownloadPolicy, DownloadTimeouts, TlsRoots};
use steps::{Done, Step, Steps};

/// Download attempts of one order before it is answered `rejected`.
const DOWNLOAD_ATTEMPTS: u32 = 3;
/// Longest wait for the helper on a step other than an install.
const QUICK_STEP: Duration = Duration::from_secs(120);

/// What the applier must do about the order under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// It ended here: answer it (a signed receipt into the outbox), then
    /// [`Firmware::finish`].
    Ended {
        /// The verdict.
        verdict: Verdict,
        /// Why (empty when applied).
        reason: String,
        /// After the answer: make the next boot start this slot and reboot.
        then_boot: Option<Slot>,
    },
    /// The device reboots now (the step was run): the agent stops.
    Rebooting(String),
}

/// Firmware updates on this device.
pub struct Firmware {
    cfg: FirmwareConfig,
    dir: PathBuf,
    state: Arc<Mutex<FirmwareState>>,
    steps: Arc<dyn Steps>,
    download: DownloadPolicy,
    running_version: String,
    status: Arc<Mutex<serde_json::Value>>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Event>,
    /// A worker or a trial runs.
    busy: Arc<std::sync::atomic::AtomicBool>,
}

/// Why firmware updates cannot start.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The record.
    #[error("firmware record: {0}")]
    State(#[from] aegis_ota::firmware::state::FirmwareStateError),
    /// The running version cannot be read.
    #[error("firmware: the running version: {0}")]
    Version(UpdaterError),
    /// The download CA file.
    #[error("firmware: workflows.firmware.ca_file: {0}")]
    Ca(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Firmware {
    /// Opens the record (`workflows.firmware.dir`) and reads the running version.
    pub fn open(cfg: &AgentConfig) -> Result<Firmware, FirmwareError> {
        let f = &cfg.workflows.firmware;
        let dir = cfg.workflows.firmware_dir();
        let state = FirmwareState::open(&dir)?;
        // The version is readable without privileges (the image's version file, or the
        // simulated board's file).
        let running_version = match steps::Local::new(f, &dir).run(&Step::Version) {
            Ok(Done::Version(v)) => v,
            Ok(other) => {
                return Err(FirmwareError::Version(UpdaterError::State(format!(
                    "unexpected answer {other:?}"
                ))));
            }
            Err(e) => return Err(FirmwareError::Version(e)),
        };
        let steps: Arc<dyn Steps> = match f.privilege {
            FirmwarePrivilege::Direct => Arc::new(steps::Local::new(f, &dir)),
            FirmwarePrivilege::Helper => Arc::new(steps::HelperClient::new(
                &dir,
                Duration::from_secs(f.helper_timeout_s.into()),
                QUICK_STEP,
            )),
        };
        let roots = match &f.ca_file {
            None => TlsRoots::Mozilla,
            Some(p) => TlsRoots::Certificates(
                crate::models_ota::delivery::read_pem_certs(p)
                    .map_err(|e| FirmwareError::Ca(e.to_string()))?,
            ),
        };
        let download = DownloadPolicy {
            allowed_hosts: f.download_hosts.clone(),
            max_bytes: f.max_image_mb.saturating_mul(1 << 20),
            https_only: f.https_only,
            timeouts: DownloadTimeouts::default(),
            roots,
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let fw = Firmware {
            cfg: f.clone(),
            dir,
            state: Arc::new(Mutex::new(state)),
            steps,
            download,
            running_version,
            status: Arc::new(Mutex::new(serde_json::Value::Null)),
            tx,
            rx,
            busy: Default::default(),
        };
        fw.set_phase(serde_json::json!({ "phase": "idle" }));
        Ok(fw)
    }

    /// The version running now.
    pub fn running_version(&self) -> &str {
        &self.running_version
    }

    /// What this device checks an order against (with the trust's time and skew, and the
    /// policy's sequence jump, which the caller holds).
    pub fn context(
        &self,
        identity: aegis_ota::device::Identity,
        now_s: i64,
        max_clock_skew_s: i64,
        max_sequence_jump: u64,
    ) -> FirmwareContext {
        FirmwareContext {
            identity,
            image: self.cfg.image.clone(),
            board: self.cfg.board.clone(),
            // The simulated board stands in for swupdate.
            updater: aegis_ota::firmware::swupdate::NAME.into(),
            running_version: self.running_version.clone(),
            now_s,
            max_clock_skew_s,
            max_image_bytes: self.download.max_bytes,
            download_hosts: self.cfg.download_hosts.clone(),
            https_only: self.cfg.https_only,
            max_sequence_jump,
        }
    }

    /// The slot running, as the boot state read at start said (None: not read yet).
    pub fn running_slot(&self) -> Option<Slot> {
        lock(&self.status)
            .get("slot")
            .and_then(|s| serde_json::from_value(s.clone()).ok())
    }

    /// The record (sequences, answered digests, the order under way).
    pub fn state(&self) -> std::sync::MutexGuard<'_, FirmwareState> {
        lock(&self.state)
    }

    /// The next event, if one is waiting.
    pub fn poll(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The status shown in the fleet status, the web page and `aegis doctor`.
    pub fn status(&self) -> serde_json::Value {
        let st = lock(&self.state);
        let mut v = serde_json::json!({
            "image": self.cfg.image,
            "board": self.cfg.board,
            "updater": self.cfg.updater,
            "running_version": self.running_version,
            "pending": st.pending(),
        });
        if let serde_json::Value::Object(m) = lock(&self.status).clone() {
            for (k, x) in m {
                v[k] = x;
            }
        }
        v
    }

    fn set_phase(&self, v: serde_json::Value) {
        set_phase(&self.status, v);
    }

    /// Records the last answer in the status.
    pub fn set_last(&self, verdict: Verdict, reason: &str) {
        let mut s = lock(&self.status);
        s["last"] = serde_json::json!({
            "verdict": verdict.as_str(), "reason": reason, "at_us": crate::store::now_us(),
        });
        s["phase"] = "idle".into();
    }

    /// Ends the order under way (its receipt is in the outbox); its image file is removed.
    pub fn finish(&self) -> Result<(), aegis_ota::firmware::state::FirmwareStateError> {
        let p = lock(&self.state).finish()?;
        remove_images(&self.dir, None);
        tracing::info!(digest = %p.digest, version = %p.version, "firmware order finished");
        Ok(())
    }

    /// Accepts a verified order (its sequence consumed, the record says it is under way)
    /// and starts its worker.
    pub fn accept(&mut self, v: VerifiedOrder) -> Result<(), String> {
        lock(&self.state)
            .begin(&v, &self.running_version)
            .map_err(|e| e.to_string())?;
        self.busy.store(true, Relaxed);
        let w = self.worker();
        tokio::spawn(w.run(v));
        Ok(())
    }

    fn worker(&self) -> Worker {
        Worker {
            dir: self.dir.clone(),
            state: self.state.clone(),
            steps: self.steps.clone(),
            download: self.download.clone(),
            status: self.status.clone(),
            tx: self.tx.clone(),
            busy: self.busy.clone(),
            simulated: self.cfg.updater == FirmwareUpdaterKind::Simulated,
        }
    }

    /// A worker or a trial runs.
    pub fn busy(&self) -> bool {
        self.busy.load(Relaxed)
    }

    /// At start: what the record and the bootloader say about the order under way, acted
    /// on in the background (a switch or reboot again, a trial, or an [`Event::Ended`]).
    /// `liveness` is what the trial watches; `fleet` says whether the broker was reached
    /// (None: no fleet link).
    pub fn start(
        &self,
        liveness: Arc<crate::liveness::Liveness>,
        fleet: Option<Arc<crate::fleet::FleetCounters>>,
    ) {
        let w = self.worker();
        if lock(&self.state).pending().is_none() {
            // Leftovers of an order that ended (or of one from another record).
            remove_images(&self.dir, None);
            // The boot state, for the status.
            tokio::spawn(async move {
                if let Ok(Done::State(b)) = w.step(Step::State).await {
                    w.show_boot(&b);
                }
            });
            return;
        }
        self.busy.store(true, Relaxed);
        let (version, trial) = (
            self.running_version.clone(),
            Duration::from_secs(self.cfg.trial_s.into()),
        );
        tokio::spawn(async move { w.resume(version, trial, liveness, fleet).await });
    }

    /// Makes the next boot start `slot` and reboots (after a `WrongVersion` answer).
    pub fn boot(&self, slot: Slot) {
        let w = self.worker();
        tokio::spawn(async move {
            match w.step(Step::Switch { slot }).await {
                Ok(_) => w.reboot(format!("booting slot {slot}")).await,
                Err(e) => tracing::error!(error = %e, %slot, "cannot switch back"),
            }
        });
    }
}

fn set_phase(status: &Mutex<serde_json::Value>, v: serde_json::Value) {
    let mut s = lock(status);
    if !s.is_object() {
        *s = serde_json::json!({});
    }
    for (k, x) in v.as_object().cloned().unwrap_or_default() {
        s[k] = x;
    }
    if let Some(o) = s.as_object_mut()
        && v.get("progress").is_none()
    {
        o.remove("progress");
    }
}

/// Removes downloaded images (all, or all but `keep`'s) and their parts.
fn remove_images(dir: &Path, keep: Option<&str>) {
    let Ok(rd) = std::fs::read_dir(dir.join(steps::IMAGES)) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if keep.is_some_and(|k| name.starts_with(k)) {
            continue;
        }
        let _ = std::fs::remove_file(e.path());
    }
}

/// The background half: an order's download and install, or what a start finds.
struct Worker {
    dir: PathBuf,
    state: Arc<Mutex<FirmwareState>>,
    steps: Arc<dyn Steps>,
    download: DownloadPolicy,
    status: Arc<Mutex<serde_json::Value>>,
    tx: tokio::sync::mpsc::UnboundedSender<Event>,
    busy: Arc<std::sync::atomic::AtomicBool>,
    simulated: bool,
}

impl Worker {
    fn ended(&self, verdict: Verdict, reason: String, then_boot: Option<Slot>) {
        self.busy.store(false, Relaxed);
        let _ = self.tx.send(Event::Ended {
            verdict,
            reason,
            then_boot,
        });
    }

    fn show_boot(&self, b: &aegis_ota::firmware::updater::BootState) {
        set_phase(
            &self.status,
            serde_json::json!({ "slot": b.current, "boot": b }),
        );
    }

    async fn step(&self, step: Step) -> Result<Done, UpdaterError> {
        let steps = self.steps.clone();
        tokio::task::spawn_blocking(move || steps.run(&step))
            .await
            .unwrap_or_else(|e| {
                Err(UpdaterError::Tool {
                    command: "firmware step".into(),
                    reason: e.to_string(),
                })
            })
    }

    /// Reboots; the agent stops (systemd stops the service on a device; the simulated
    /// board's agent stops itself, as if the power went).
    async fn reboot(&self, why: String) {
        set_phase(&self.status, serde_json::json!({ "phase": "rebooting" }));
        tracing::warn!(reason = %why, "firmware: rebooting");
        match self.step(Step::Reboot).await {
            Ok(_) => {
                let _ = self.tx.send(Event::Rebooting(why));
                if self.simulated {
                    // SAFETY: raising a signal at this process has no preconditions; the
                    // agent's handler stops it cleanly.
                    unsafe {
                        libc::kill(libc::getpid(), libc::SIGTERM);
                    }
                }
            }
            Err(e) => {
                // The record stays as it is: the next start (or a manual reboot) goes on.
                tracing::error!(error = %e, "firmware: the reboot failed; reboot the device");
                set_phase(
                    &self.status,
                    serde_json::json!({ "phase": "reboot_failed", "error": e.to_string() }),
                );
            }
        }
    }

    async fn run(self, v: VerifiedOrder) {
        let o = &v.order;
        let file = BundleFile {
            path: format!("{}.img", o.sha256),
            sha256: o.sha256.clone(),
            size: o.size,
        };
        remove_images(&self.dir, Some(&o.sha256));
        tracing::info!(version = %o.version, bytes = o.size, url = %aegis_ota::receipt::redact(&o.url),
            "firmware order accepted: downloading the image");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (url, f, dir, policy, status) = (
                o.url.clone(),
                file.clone(),
                self.dir.join(steps::IMAGES),
                self.download.clone(),
                self.status.clone(),
            );
            let r = tokio::task::spawn_blocking(move || {
                crate::models_ota::download::download_file(&url, &f, &dir, &policy, &|p| {
                    set_phase(
                        &status,
                        serde_json::json!({ "phase": "downloading", "progress": {
                            "done": p.done, "total": p.total, "percent": p.percent,
                            "eta_s": p.eta.map(|d| d.as_secs()),
                        }}),
                    )
                })
            })
            .await;
            let e = match r {
                Ok(Ok(())) => break,
                Ok(Err(e)) => crate::causes_text(&e),
                Err(e) => e.to_string(),
            };
            tracing::warn!(attempt, error = %e, "firmware image download failed");
            if attempt >= DOWNLOAD_ATTEMPTS {
                remove_images(&self.dir, None);
                return self.ended(
                    Verdict::Rejected,
                    format!("download: {e} (after {attempt} attempts; nothing was installed)"),
                    None,
                );
            }
            tokio::time::sleep(Duration::from_secs(2u64.pow(attempt))).await;
        }
        set_phase(&self.status, serde_json::json!({ "phase": "installing" }));
        let t = Instant::now();
        let slot = match self
            .step(Step::Install {
                sha256: o.sha256.clone(),
            })
            .await
        {
            Ok(Done::Installed(slot)) => slot,
            Ok(other) => {
                return self.ended(Verdict::Rejected, format!("install: {other:?}"), None);
            }
            Err(e) => {
                remove_images(&self.dir, None);
                return self.ended(
                    Verdict::Rejected,
                    format!("install: {e} (the running slot is unchanged)"),
                    None,
                );
            }
        };
        tracing::info!(%slot, ms = t.elapsed().as_millis() as u64, "firmware image installed");
        if let Err(e) = lock(&self.state).installed(slot) {
            tracing::error!(error = %e, "firmware record");
        }
        remove_images(&self.dir, None);
        self.switch_and_reboot(slot).await;
    }

    async fn switch_and_reboot(&self, slot: Slot) {
        if let Err(e) = self.step(Step::Switch { slot }).await {
            return self.ended(
                Verdict::Rejected,
                format!("switching to slot {slot}: {e} (the running slot stays the next boot)"),
                None,
            );
        }
        if let Err(e) = lock(&self.state).switched() {
            tracing::error!(error = %e, "firmware record");
        }
        self.reboot(format!("firmware installed into slot {slot}: booting it"))
            .await;
    }

    async fn resume(
        self,
        version: String,
        trial: Duration,
        liveness: Arc<crate::liveness::Liveness>,
        fleet: Option<Arc<crate::fleet::FleetCounters>>,
    ) {
        let boot = match self.step(Step::State).await {
            Ok(Done::State(b)) => b,
            other => {
                tracing::error!(answer = ?other, "firmware: cannot read the boot state; the order under way waits for the next start");
                self.busy.store(false, Relaxed);
                return;
            }
        };
        self.show_boot(&boot);
        let decision = lock(&self.state).resume(&boot, &version);
        tracing::info!(?decision, ?boot, "firmware: the order under way at start");
        let from = lock(&self.state)
            .pending()
            .map(|p| p.from_version.clone())
            .unwrap_or_default();
        match decision {
            None => self.busy.store(false, Relaxed),
            Some(Resume::Abandon) => {
                if boot.unconfirmed() {
                    let _ = self.step(Step::MarkGood).await;
                }
                self.ended(
                    Verdict::RolledBack,
                    format!(
                        "the agent stopped before the new image was switched to (download or \
                         install interrupted): version {from} runs; order it again"
                    ),
                    None,
                )
            }
            Some(Resume::Switch(slot)) => self.switch_and_reboot(slot).await,
            Some(Resume::Reboot) => {
                self.reboot("the switched slot was not booted yet".into())
                    .await
            }
            Some(Resume::Trial(slot)) => self.trial(slot, trial, liveness, fleet).await,
            Some(Resume::Applied(slot)) => self.ended(
                Verdict::Applied,
                format!("version {version} runs from slot {slot}, confirmed"),
                None,
            ),
            Some(Resume::FellBack { tried, running }) => {
                if boot.unconfirmed() {
                    let _ = self.step(Step::MarkGood).await;
                }
                self.ended(
                    Verdict::RolledBack,
                    format!(
                        "slot {tried} was not confirmed healthy and the bootloader fell back \
                         to slot {running}: version {version} runs"
                    ),
                    None,
                )
            }
            Some(Resume::WrongVersion { slot, running }) => self.ended(
                Verdict::RolledBack,
                format!(
                    "slot {slot} runs version {running}, not the version ordered: never \
                     confirmed; booting slot {} again",
                    slot.other()
                ),
                Some(slot.other()),
            ),
        }
    }

    /// The health trial of a new slot: healthy for `trial` (no stalled stage or applier
    /// at any check, and the broker reached when there is a fleet link) → confirm it.
    async fn trial(
        &self,
        slot: Slot,
        trial: Duration,
        liveness: Arc<crate::liveness::Liveness>,
        fleet: Option<Arc<crate::fleet::FleetCounters>>,
    ) {
        tracing::info!(%slot, secs = trial.as_secs(), "firmware: new slot on trial");
        let started = Instant::now();
        let failure = loop {
            set_phase(
                &self.status,
                serde_json::json!({ "phase": "trial", "trial_left_s":
                    trial.saturating_sub(started.elapsed()).as_secs() }),
            );
            let stalled = liveness.stalled();
            if !stalled.is_empty() {
                break Some(format!(
                    "stalled: {}",
                    stalled
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join("; ")
                ));
            }
            if started.elapsed() >= trial {
                let reached = fleet.as_ref().is_none_or(|c| c.connects.load(Relaxed) > 0);
                break (!reached).then(|| {
                    format!(
                        "the fleet broker was not reached in the {} s trial",
                        trial.as_secs()
                    )
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        match failure {
            None => match self.step(Step::MarkGood).await {
                Ok(_) => {
                    tracing::info!(%slot, "firmware: new slot healthy and confirmed");
                    let version = lock(&self.state)
                        .pending()
                        .map(|p| p.version.clone())
                        .unwrap_or_default();
                    self.ended(
                        Verdict::Applied,
                        format!("version {version} runs from slot {slot}, confirmed healthy"),
                        None,
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "firmware: cannot confirm the new slot");
                    self.reboot(format!("confirming slot {slot} failed: {e}"))
                        .await
                }
            },
            Some(why) => {
                tracing::error!(%slot, reason = %why, "firmware: the new slot is unhealthy; rebooting unconfirmed");
                self.reboot(format!("slot {slot} unhealthy on trial: {why}"))
                    .await
            }
        }
    }
}
