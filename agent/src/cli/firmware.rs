//! `aegis firmware`: the privileged helper that runs the updater's steps for the agent,
//! the boot check that lets the stock boot verifier confirm only ordinary boots, and the
//! firmware record as the agent holds it.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use aegis_ota::firmware::state::FirmwareState;

use crate::firmware::steps::{self, Done, Local, Step, Steps};

/// `aegis firmware …`.
#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// Runs the step the agent asked for in `<firmware dir>/helper/request.json` (as root:
    /// `aegis-firmware.service`, started by `aegis-firmware.path`), writes the response
    /// and exits; with `--watch`, keeps serving requests.
    Helper {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: std::path::PathBuf,
        /// Keep serving (poll the spool every 100 ms) instead of one request.
        #[arg(long)]
        watch: bool,
    },
    /// Exits 0 when the boot verifier may confirm this boot (no firmware trial pending),
    /// 1 while the agent is judging a new slot (it confirms it itself, once healthy).
    /// For `ExecCondition=` of `nv_update_verifier.service`.
    BootCheck {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: std::path::PathBuf,
    },
    /// Prints the firmware record (the order under way, the running version and the
    /// boot state) as JSON.
    Status {
        /// The agent's config.
        #[arg(long, short, default_value = "/etc/aegis/aegis.yaml")]
        config: std::path::PathBuf,
    },
}

/// Runs `aegis firmware …`.
pub fn firmware(what: FirmwareCommand) -> ExitCode {
    let config = match &what {
        FirmwareCommand::Helper { config, .. }
        | FirmwareCommand::BootCheck { config }
        | FirmwareCommand::Status { config } => config.clone(),
    };
    let cfg = match super::run::load_config(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let f = &cfg.workflows.firmware;
    if !f.enabled {
        eprintln!(
            "error: {}: workflows.firmware.enabled is false",
            config.display()
        );
        return match what {
            // Nothing to judge: ordinary boots are confirmed as always.
            FirmwareCommand::BootCheck { .. } => ExitCode::SUCCESS,
            _ => ExitCode::FAILURE,
        };
    }
    let dir = cfg.workflows.firmware_dir();
    let local = Local::new(f, &dir);
    match what {
        FirmwareCommand::Helper { watch, .. } => helper(&dir, &local, watch),
        FirmwareCommand::BootCheck { .. } => boot_check(&dir),
        FirmwareCommand::Status { .. } => status(&dir, &local),
    }
}

fn helper(dir: &Path, local: &Local, watch: bool) -> ExitCode {
    loop {
        match steps::serve_request(dir, local) {
            Ok(true) => {}
            Ok(false) if !watch => {
                eprintln!("no request waiting in {}", dir.join(steps::SPOOL).display());
            }
            Ok(false) => {}
            Err(e) => {
                eprintln!("error: {e}");
                if !watch {
                    return ExitCode::FAILURE;
                }
            }
        }
        if !watch {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The boot verifier may confirm unless the record holds an order that was switched to:
/// the agent then judges the boot. A record that cannot be read also keeps the verifier
/// from confirming (better one fallback than a bad slot kept).
fn boot_check(dir: &Path) -> ExitCode {
    match existing_record(dir) {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(st)) => match st.pending() {
            Some(p) if p.phase == aegis_ota::firmware::state::Phase::Switched => {
                println!(
                    "firmware version {} on trial (slot {}): the agent confirms it",
                    p.version,
                    p.slot.map(|s| s.to_string()).unwrap_or_default()
                );
                ExitCode::FAILURE
            }
            _ => ExitCode::SUCCESS,
        },
        Err(e) => {
            eprintln!("error: {e}: not confirming this boot");
            ExitCode::FAILURE
        }
    }
}

/// The agent's firmware record, if it made one. Never creates its directory: these
/// commands run as root, and a directory they made would be root's, not the agent's.
pub(super) fn existing_record(
    dir: &Path,
) -> Result<Option<FirmwareState>, aegis_ota::firmware::state::FirmwareStateError> {
    if !dir.join(aegis_ota::firmware::state::STATE_FILE).exists() && !dir.exists() {
        return Ok(None);
    }
    FirmwareState::open(dir).map(Some)
}

fn status(dir: &Path, local: &Local) -> ExitCode {
    let st = match existing_record(dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let version = match local.run(&Step::Version) {
        Ok(Done::Version(v)) => serde_json::json!(v),
        other => serde_json::json!({ "error": format!("{other:?}") }),
    };
    let boot = match local.run(&Step::State) {
        Ok(Done::State(b)) => serde_json::json!(b),
        other => serde_json::json!({ "error": format!("{other:?}") }),
    };
    let out = serde_json::json!({
        "running_version": version, "boot": boot,
        "pending": st.as_ref().and_then(|s| s.pending()),
    });
    println!("{}", serde_json::to_string_pretty(&out).expect("json"));
    ExitCode::SUCCESS
}
