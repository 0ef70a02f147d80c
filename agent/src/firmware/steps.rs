//! The privileged steps of a firmware update, and who runs them.
//!
//! The agent decides (orders, downloads, its record, health); writing a slot, switching
//! the boot slot, confirming it and rebooting need root, which `aegis.service` does not
//! have. Each such step is a [`Step`]; [`Steps`] runs one:
//!
//! - [`Local`] runs it in this process: the real updater ([`SwUpdate`], `nvbootctrl`, the
//!   reboot command) or the simulated board file. The privileged helper uses it, and so
//!   does an agent configured `privilege: direct` (running as root).
//! - [`HelperClient`] hands it to the helper: it writes `request.json` (atomically) into
//!   the spool directory `<firmware dir>/helper`; systemd's `aegis-firmware.path` starts
//!   `aegis-firmware.service` (root), which runs `aegis firmware helper`: it reads the
//!   request, runs it with [`Local`] and writes `response.json` with the request's id.
//!
//! The helper treats a request as hostile (the agent may be compromised): it is bounded,
//! strictly parsed, names an image only by its SHA-256 (a file in the spool's `image`
//! directory, never a path) and can ask for nothing but these five steps. What it installs
//! must still pass the updater's own signature check (swupdate's `-k` certificate, which
//! is part of the root filesystem): a compromised agent can reboot the device, not install
//! an image the fleet's image key did not sign.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use aegis_config::{FirmwareConfig, FirmwareUpdaterKind};
use aegis_ota::firmware::simulated::SimulatedBoard;
use aegis_ota::firmware::swupdate::{Nvbootctrl, SwUpdate, SwUpdateConfig};
use aegis_ota::firmware::updater::{BootState, Slot, Updater, UpdaterError};

/// The helper's spool directory under the firmware directory.
pub const SPOOL: &str = "helper";
/// Downloaded images, named `<sha256>.img`, under the firmware directory.
pub const IMAGES: &str = "image";
/// The request file in the spool.
pub const REQUEST: &str = "request.json";
/// The response file in the spool.
pub const RESPONSE: &str = "response.json";
/// Largest request or response read.
const MAX_MESSAGE: u64 = 16 * 1024;
/// Largest simulated board file read.
const MAX_BOARD: u64 = 1024 * 1024;

/// One privileged step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case", deny_unknown_fields)]
pub enum Step {
    /// The bootloader's state.
    State,
    /// The running firmware's version.
    Version,
    /// Install the downloaded image with this SHA-256 into the inactive slot.
    Install {
        /// Lowercase hex SHA-256 of `<firmware dir>/image/<sha256>.img`.
        sha256: String,
    },
    /// Make the next boot start this slot.
    Switch {
        /// The slot.
        slot: Slot,
    },
    /// Confirm the running slot.
    MarkGood,
    /// Reboot the device.
    Reboot,
}

/// What a step returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Done {
    /// [`Step::State`].
    State(BootState),
    /// [`Step::Version`].
    Version(String),
    /// [`Step::Install`]: the slot written.
    Installed(Slot),
    /// Every other step.
    Ok,
}

/// Runs privileged steps.
pub trait Steps: Send + Sync {
    /// Runs `step`.
    fn run(&self, step: &Step) -> Result<Done, UpdaterError>;
}

/// Where an image with `sha256` is kept.
pub fn image_path(dir: &Path, sha256: &str) -> PathBuf {
    dir.join(IMAGES).join(format!("{sha256}.img"))
}

fn protocol(reason: String) -> UpdaterError {
    UpdaterError::Tool {
        command: "firmware helper".into(),
        reason,
    }
}

/// The updater of this process: the real one or the simulated board's file.
enum Backend {
    SwUpdate {
        updater: Box<SwUpdate>,
        version_file: PathBuf,
        reboot: Vec<String>,
    },
    Simulated(PathBuf),
}

/// Runs steps in this process ([`Steps`]).
pub struct Local {
    dir: PathBuf,
    backend: Backend,
    /// One step at a time (the board file is read, changed and written whole).
    lock: Mutex<()>,
}

impl Local {
    /// The updater `cfg` configures; images are read from `<dir>/image`.
    pub fn new(cfg: &FirmwareConfig, dir: &Path) -> Local {
        let backend = match (cfg.updater, &cfg.simulated_board) {
            (FirmwareUpdaterKind::Simulated, Some(board)) => Backend::Simulated(board.clone()),
            _ => {
                let s = &cfg.swupdate;
                Backend::SwUpdate {
                    updater: Box::new(SwUpdate {
                        config: SwUpdateConfig {
                            binary: s.binary.clone(),
                            certificate: s.certificate.clone(),
                            software_set: s.software_set.clone(),
                            hwrevision: s.hwrevision.clone(),
                            config: s.config.clone(),
                            bootloader: None,
                            work_dir: dir.join("swupdate"),
                            timeout: Duration::from_secs(s.timeout_s.into()),
                        },
                        boot: Nvbootctrl {
                            binary: s.nvbootctrl.clone(),
                            max_attempts: s.max_attempts,
                        },
                    }),
                    version_file: cfg.version_file.clone(),
                    reboot: s.reboot_command.clone(),
                }
            }
        };
        Local {
            dir: dir.to_path_buf(),
            backend,
            lock: Mutex::new(()),
        }
    }

    fn image(&self, sha256: &str) -> Result<PathBuf, UpdaterError> {
        if !aegis_ota::model::is_sha256_hex(sha256) {
            return Err(protocol(format!("image {sha256:?} is not a SHA-256")));
        }
        let path = image_path(&self.dir, sha256);
        // A regular file, not a link to somewhere else.
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => Ok(path),
            Ok(_) => Err(protocol(format!(
                "{} is not a regular file",
                path.display()
            ))),
            Err(e) => Err(protocol(format!("{}: {e}", path.display()))),
        }
    }
}

fn read_version(path: &Path) -> Result<String, UpdaterError> {
    let bad = |reason: String| UpdaterError::Tool {
        command: format!("read {}", path.display()),
        reason,
    };
    let bytes = aegis_ota::fsutil::read_bounded(path, 256)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("missing: the image names its version there".into()))?;
    let v = String::from_utf8_lossy(&bytes).trim().to_string();
    if aegis_ota::firmware::parse_version(&v).is_none() {
        return Err(bad(format!("{v:?} is not MAJOR.MINOR.PATCH")));
    }
    Ok(v)
}

/// Reads the simulated board file.
pub fn read_board(path: &Path) -> Result<SimulatedBoard, UpdaterError> {
    let bad = |reason: String| UpdaterError::Tool {
        command: format!("simulated board {}", path.display()),
        reason,
    };
    let bytes = aegis_ota::fsutil::read_bounded(path, MAX_BOARD)
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("missing".into()))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
}

/// Writes the simulated board file (atomically).
pub fn write_board(path: &Path, board: &SimulatedBoard) -> Result<(), UpdaterError> {
    let bytes = serde_json::to_vec_pretty(board).expect("the board serialises");
    aegis_ota::fsutil::write_atomic(path, &bytes).map_err(|e| UpdaterError::Tool {
        command: format!("simulated board {}", path.display()),
        reason: e.to_string(),
    })
}

fn run_reboot(command: &[String]) -> Result<Done, UpdaterError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| protocol("no reboot command".into()))?;
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| UpdaterError::Tool {
            command: command.join(" "),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(UpdaterError::Tool {
            command: command.join(" "),
            reason: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(Done::Ok)
}

fn apply(
    updater: &mut dyn Updater,
    step: &Step,
    image: Option<PathBuf>,
) -> Result<Done, UpdaterError> {
    match step {
        Step::State => updater.state().map(Done::State),
        Step::Install { .. } => {
            let image = image.expect("install names its image");
            updater.install(&image).map(Done::Installed)
        }
        Step::Switch { slot } => updater.switch(*slot).map(|()| Done::Ok),
        Step::MarkGood => updater.mark_good().map(|()| Done::Ok),
        Step::Version | Step::Reboot => unreachable!("handled by the backend"),
    }
}

impl Steps for Local {
    fn run(&self, step: &Step) -> Result<Done, UpdaterError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let image = match step {
            Step::Install { sha256 } => Some(self.image(sha256)?),
            _ => None,
        };
        match &self.backend {
            Backend::SwUpdate {
                updater,
                version_file,
                reboot,
            } => match step {
                Step::Version => read_version(version_file).map(Done::Version),
                Step::Reboot => run_reboot(reboot),
                _ => apply(&mut (**updater).clone(), step, image),
            },
            Backend::Simulated(path) => {
                let mut board = read_board(path)?;
                let done = match step {
                    Step::Version => {
                        return board.running_version().map(Done::Version).ok_or_else(|| {
                            UpdaterError::State("the simulated board runs no image".into())
                        });
                    }
                    Step::Reboot => board.reboot().map(|_| Done::Ok),
                    _ => apply(&mut board, step, image),
                };
                // A failed step may have written part of its changes (as on a device).
                write_board(path, &board)?;
                done
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    id: String,
    step: Step,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Response {
    id: String,
    #[serde(default)]
    done: Option<Done>,
    #[serde(default)]
    error: Option<WireError>,
}

/// [`UpdaterError`] as the helper writes it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", content = "reason", rename_all = "snake_case")]
enum WireError {
    Refused(String),
    State(String),
    Tool(String),
}

impl From<&UpdaterError> for WireError {
    fn from(e: &UpdaterError) -> WireError {
        match e {
            UpdaterError::Refused(r) => WireError::Refused(r.clone()),
            UpdaterError::State(r) => WireError::State(r.clone()),
            other => WireError::Tool(other.to_string()),
        }
    }
}

impl From<WireError> for UpdaterError {
    fn from(e: WireError) -> UpdaterError {
        match e {
            WireError::Refused(r) => UpdaterError::Refused(r),
            WireError::State(r) => UpdaterError::State(r),
            WireError::Tool(r) => protocol(r),
        }
    }
}

/// Hands steps to the privileged helper through the spool directory ([`Steps`]).
pub struct HelperClient {
    spool: PathBuf,
    install: Duration,
    quick: Duration,
    lock: Mutex<()>,
}

impl HelperClient {
    /// A client of the helper serving `<dir>/helper`; an install not answered within
    /// `install`, or another step within `quick`, fails.
    pub fn new(dir: &Path, install: Duration, quick: Duration) -> HelperClient {
        HelperClient {
            spool: dir.join(SPOOL),
            install,
            quick,
            lock: Mutex::new(()),
        }
    }
}

impl Steps for HelperClient {
    fn run(&self, step: &Step) -> Result<Done, UpdaterError> {
        let _one = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let io = |what: &str, e: std::io::Error| protocol(format!("{what}: {e}"));
        aegis_ota::fsutil::private_dir(&self.spool).map_err(|e| io("spool", e))?;
        let mut raw = [0u8; 8];
        let _ = getrandom::fill(&mut raw);
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let response = self.spool.join(RESPONSE);
        let _ = std::fs::remove_file(&response);
        let req = serde_json::to_vec(&Request {
            id: id.clone(),
            step: step.clone(),
        })
        .expect("a request serialises");
        aegis_ota::fsutil::write_atomic(&self.spool.join(REQUEST), &req)
            .map_err(|e| io("request", e))?;
        let timeout = match step {
            Step::Install { .. } => self.install,
            _ => self.quick,
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(bytes)) = aegis_ota::fsutil::read_bounded(&response, MAX_MESSAGE)
                && let Ok(r) = serde_json::from_slice::<Response>(&bytes)
                && r.id == id
            {
                let _ = std::fs::remove_file(&response);
                return match (r.done, r.error) {
                    (Some(d), None) => Ok(d),
                    (None, Some(e)) => Err(e.into()),
                    _ => Err(protocol(
                        "the helper's response has neither result nor error".into(),
                    )),
                };
            }
            if Instant::now() >= deadline {
                let _ = std::fs::remove_file(self.spool.join(REQUEST));
                return Err(protocol(format!(
                    "no answer in {} s from the privileged helper (is aegis-firmware.path \
                     enabled?) to {step:?}",
                    timeout.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The helper's side: answers the request waiting in `<dir>/helper`, if any, with
/// `local`. Returns whether there was one. The response is given to the spool's owner
/// (the agent's account) when the helper runs as root.
pub fn serve_request(dir: &Path, local: &dyn Steps) -> Result<bool, String> {
    use std::os::unix::fs::MetadataExt;
    let spool = dir.join(SPOOL);
    let request = spool.join(REQUEST);
    let bytes = match aegis_ota::fsutil::read_bounded(&request, MAX_MESSAGE) {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(false),
        Err(e) => {
            let _ = std::fs::remove_file(&request);
            return Err(format!("{}: {e}", request.display()));
        }
    };
    // Taken: a request is run once, whatever happens next.
    std::fs::remove_file(&request).map_err(|e| format!("{}: {e}", request.display()))?;
    let req: Request = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: not a firmware step: {e}", request.display()))?;
    if req.id.is_empty() || req.id.len() > 64 || !req.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{}: bad request id", request.display()));
    }
    tracing::info!(step = ?req.step, "firmware helper: running a step");
    let result = local.run(&req.step);
    if let Err(e) = &result {
        tracing::warn!(step = ?req.step, error = %e, "firmware helper: the step failed");
    }
    let (done, error) = match &result {
        Ok(d) => (Some(d.clone()), None),
        Err(e) => (None, Some(WireError::from(e))),
    };
    let out = serde_json::to_vec(&Response {
        id: req.id,
        done,
        error,
    })
    .expect("a response serialises");
    let response = spool.join(RESPONSE);
    aegis_ota::fsutil::write_atomic(&response, &out)
        .map_err(|e| format!("{}: {e}", response.display()))?;
    let owner = std::fs::metadata(&spool).map_err(|e| format!("{}: {e}", spool.display()))?;
    if owner.uid() != nix_uid() {
        std::os::unix::fs::chown(&response, Some(owner.uid()), Some(owner.gid()))
            .map_err(|e| format!("{}: {e}", response.display()))?;
    }
    Ok(true)
}

fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aegis_config::FirmwareConfig;

    /// A firmware directory with a simulated board (both slots 1.0.0, running A) and the
    /// `Local` steps over it.
    fn setup(d: &Path) -> (FirmwareConfig, Local) {
        let mut b = SimulatedBoard::flashed("1.0.0", 2);
        b.power_on().unwrap();
        write_board(&d.join("board.json"), &b).unwrap();
        let cfg = FirmwareConfig {
            enabled: true,
            updater: FirmwareUpdaterKind::Simulated,
            simulated_board: Some(d.join("board.json")),
            ..Default::default()
        };
        let local = Local::new(&cfg, d);
        (cfg, local)
    }

    fn put_image(d: &Path, bytes: &[u8]) -> String {
        let sha = aegis_ota::sha256_hex(bytes);
        std::fs::create_dir_all(d.join(IMAGES)).unwrap();
        std::fs::write(image_path(d, &sha), bytes).unwrap();
        sha
    }

    fn request(d: &Path, text: &str) {
        aegis_ota::fsutil::private_dir(&d.join(SPOOL)).unwrap();
        std::fs::write(d.join(SPOOL).join(REQUEST), text).unwrap();
    }

    fn response(d: &Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(d.join(SPOOL).join(RESPONSE)).unwrap()).unwrap()
    }

    #[test]
    fn the_client_and_the_helper_run_steps_through_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (_, local) = setup(&d);
        let signed = put_image(&d, b"image 1.1.0");
        let mut b = read_board(&d.join("board.json")).unwrap();
        b.sign(&signed, "1.1.0");
        write_board(&d.join("board.json"), &b).unwrap();
        let unsigned = put_image(&d, b"someone else's image");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helper = {
            let (d, stop) = (d.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    serve_request(&d, &local).unwrap();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let client = HelperClient::new(&d, Duration::from_secs(20), Duration::from_secs(20));
        let Done::State(s) = client.run(&Step::State).unwrap() else {
            panic!("not a state")
        };
        assert_eq!((s.current, s.next), (Slot::A, Slot::A));
        // The updater's own check refuses an image its key did not sign: nothing written.
        let e = client.run(&Step::Install { sha256: unsigned }).unwrap_err();
        assert!(matches!(e, UpdaterError::Refused(_)), "{e:?}");
        assert_eq!(read_board(&d.join("board.json")).unwrap().writes(), 1);
        assert_eq!(
            client.run(&Step::Install { sha256: signed }).unwrap(),
            Done::Installed(Slot::B)
        );
        assert_eq!(
            client.run(&Step::Switch { slot: Slot::B }).unwrap(),
            Done::Ok
        );
        client.run(&Step::Reboot).unwrap();
        assert_eq!(
            client.run(&Step::Version).unwrap(),
            Done::Version("1.1.0".into())
        );
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        helper.join().unwrap();
    }

    #[test]
    fn the_helper_names_images_only_by_digest_and_refuses_malformed_requests() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (_, local) = setup(d);
        // A path where a digest belongs: answered with an error, nothing run.
        request(
            d,
            r#"{"id":"01","step":{"step":"install","sha256":"../../board.json"}}"#,
        );
        assert!(serve_request(d, &local).unwrap());
        let r = response(d);
        assert!(
            r["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("is not a SHA-256"),
            "{r}"
        );
        // A link in the image directory, even with a digest's name, is not read.
        let sha = put_image(d, b"x");
        std::fs::remove_file(image_path(d, &sha)).unwrap();
        std::os::unix::fs::symlink(d.join("board.json"), image_path(d, &sha)).unwrap();
        request(
            d,
            &format!(r#"{{"id":"02","step":{{"step":"install","sha256":"{sha}"}}}}"#),
        );
        assert!(serve_request(d, &local).unwrap());
        let r = response(d);
        assert!(
            r["error"]["reason"]
                .as_str()
                .unwrap()
                .contains("not a regular file"),
            "{r}"
        );
        // Unknown steps and fields, bad ids, oversized requests: refused, and the request
        // is consumed (never run later).
        for bad in [
            r#"{"id":"03","step":{"step":"format_disk"}}"#.to_string(),
            r#"{"id":"04","step":{"step":"state"},"then":"reboot"}"#.to_string(),
            r#"{"id":"../x","step":{"step":"state"}}"#.to_string(),
            format!(
                r#"{{"id":"05","step":{{"step":"state"}},"pad":"{}"}}"#,
                "x".repeat(20_000)
            ),
        ] {
            request(d, &bad);
            assert!(serve_request(d, &local).is_err(), "{bad:.80}");
            assert!(!d.join(SPOOL).join(REQUEST).exists());
        }
        assert!(!serve_request(d, &local).unwrap(), "nothing waiting");
        // The board was never touched.
        assert_eq!(read_board(&d.join("board.json")).unwrap().writes(), 1);
    }
}
