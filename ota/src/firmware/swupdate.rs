//! The updater of a Jetson image built with OE4T's tegra-demo-distro SWUpdate layer: the
//! real `swupdate` writes the slot that is not running, `nvbootctrl` switches and
//! confirms slots.
//!
//! **The bundle.** A `.swu` is a cpio archive (`sw-description` first, then
//! `sw-description.sig`, then the images). Debian's and meta-swupdate's builds verify
//! `sw-description.sig` as a CMS signature (`openssl cms -sign … -outform DER -nosmimecap
//! -binary`) against the certificate given with `-k`, and every image against the
//! `sha256` that the signed `sw-description` lists (an image without one is refused:
//! "Hash not set"). A plain RSA signature (`openssl dgst -sign`) is refused by those
//! builds. See the tests in `ota/tests/firmware_swupdate.rs`, which check all of this
//! against Debian 12's `swupdate` 2022.12.
//!
//! **Slots.** tegra-demo-distro's `sw-description` describes one software set (`system`)
//! with a mode per running slot: `slot_a` (running on A) writes `APP_b`, `slot_b` writes
//! `APP`; its `swupdate-genconfig` selects `system,slot_<current>` from `nvbootctrl
//! get-current-slot` (0 is A, 1 is B). This driver passes the same selection with `-e`.
//! Sources: OE4T/tegra-demo-distro, `layers/meta-tegrademo/dynamic-layers/meta-swupdate/`
//! (`recipes-demo/images/files/sw-description`,
//! `recipes-support/swupdate/swupdate-machine-config/swupdate-genconfig.sh.in`).
//!
//! **Install** runs `swupdate -c` first (a dry run: the signature, every image's hash and
//! the hardware compatibility are checked while the images stream through a dummy
//! handler) and only then `swupdate -i`. tegra-demo-distro installs the root filesystem
//! with `installed-directly = true` (streamed into the partition, its hash known only at
//! the end), so without the dry run a tampered image would be written before it is
//! refused — into the slot nobody boots, but written.
//!
//! **The verdict** is read from swupdate's console output, not from its exit status: in
//! 2022.12 a subprocess (the delta downloader) that exits while the main process finishes
//! makes `sigchld_handler` (core/pctl.c) overwrite the exit code, so a successful run
//! sometimes exits 1 (seen here in about one run of five), and the check of a bundle with
//! a tampered image reports "SWUpdate was successful !" from its end callback after
//! "HASH mismatch". Success is the notifier's `SWUPDATE successful !` line with no
//! `SWUPDATE failed` line (core/notifier.c, `console_notifier`).
//!
//! **Switch and confirm** use `nvbootctrl` as tegra-demo-distro's update script does
//! (`set-active-boot-slot N`), and `nvbootctrl verify`, which meta-tegra's
//! `nv_update_verifier.service` runs at every boot to give the running slot its retries
//! back (recipes-bsp/tegra-binaries/tegra-redundant-boot). On an Aegis image that service
//! must not confirm a boot while a firmware trial is pending: the agent does, once healthy.
//!
//! Not done here (only a Jetson can show it is needed and right): resetting
//! `RootfsStatusSlotA/B` (UEFI variables, GUID 781e084c-a330-417c-b678-38e696380cb9) for a
//! slot the bootloader marked unbootable, and staging the bootloader capsule
//! (`oe4t-set-uefi-OSIndications`), which tegra-demo-distro's Lua post-install script does.
//!
//! Everything runs as the caller: writing partitions and EFI variables needs root, which
//! the agent's service does not have. A privileged helper must run this driver.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::updater::{BootState, Slot, SlotStatus, Updater, UpdaterError};

/// The updater's name in orders and configuration.
pub const NAME: &str = "swupdate";
/// Most of swupdate's output read back (its end).
const MAX_OUTPUT: u64 = 256 * 1024;

/// How `swupdate` is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwUpdateConfig {
    /// The binary (`/usr/bin/swupdate`).
    pub binary: PathBuf,
    /// The CMS signer's certificate (PEM) that bundles must be signed by (`-k`).
    pub certificate: PathBuf,
    /// The software set of `sw-description` (`system` in tegra-demo-distro); the mode is
    /// `slot_a` or `slot_b`, the running slot.
    pub software_set: String,
    /// `-H BOARD:REVISION` (None: swupdate reads `/etc/hwrevision`).
    pub hwrevision: Option<String>,
    /// `-f FILE`, swupdate's own configuration (None: its default).
    pub config: Option<PathBuf>,
    /// `-B NAME`, the bootloader interface (None: the build's default; `none` keeps its
    /// environment in memory).
    pub bootloader: Option<String>,
    /// swupdate's `TMPDIR`: its control sockets and the images it extracts (made 0700).
    /// Its own directory, so that two runs never share sockets.
    pub work_dir: PathBuf,
    /// Longest run of one swupdate call before it is killed.
    pub timeout: Duration,
}

/// `nvbootctrl`, the Jetson boot-slot tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvbootctrl {
    /// The binary (`/usr/sbin/nvbootctrl`).
    pub binary: PathBuf,
    /// `RootfsRetryCountMax` (3 by default on r35/r36), which `dump-slots-info` does not
    /// print.
    pub max_attempts: u32,
}

/// The SWUpdate + `nvbootctrl` updater.
#[derive(Debug, Clone)]
pub struct SwUpdate {
    /// How swupdate runs.
    pub config: SwUpdateConfig,
    /// The boot-slot tool.
    pub boot: Nvbootctrl,
}

/// Runs `program args…` with `TMPDIR` (when given), its output (both streams) in a file
/// in `work_dir`, killed after `timeout`. Returns the exit status's code (None: killed by
/// a signal) and the output's end.
fn run(
    program: &Path,
    args: &[String],
    work_dir: &Path,
    tmpdir: bool,
    timeout: Duration,
) -> Result<(Option<i32>, String), UpdaterError> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let tool = |reason: String| UpdaterError::Tool {
        command: command.clone(),
        reason,
    };
    crate::fsutil::private_dir(work_dir)
        .map_err(|e| tool(format!("work directory {}: {e}", work_dir.display())))?;
    let log_path = work_dir.join("output.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| tool(format!("{}: {e}", log_path.display())))?;
    let err_log = log
        .try_clone()
        .map_err(|e| tool(format!("{}: {e}", log_path.display())))?;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    if tmpdir {
        cmd.env("TMPDIR", work_dir);
    }
    let mut child = cmd.spawn().map_err(|e| tool(format!("cannot run: {e}")))?;
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(tool(format!("still running after {timeout:?}: killed")));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(tool(format!("wait: {e}"))),
        }
    };
    let mut file =
        std::fs::File::open(&log_path).map_err(|e| tool(format!("{}: {e}", log_path.display())))?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len > MAX_OUTPUT {
        use std::io::Seek;
        let _ = file.seek(std::io::SeekFrom::Start(len - MAX_OUTPUT));
    }
    let mut bytes = Vec::new();
    file.take(MAX_OUTPUT)
        .read_to_end(&mut bytes)
        .map_err(|e| tool(format!("{}: {e}", log_path.display())))?;
    Ok((status.code(), String::from_utf8_lossy(&bytes).into_owned()))
}

/// swupdate's verdict from its console output (see the module documentation): Ok when
/// the notifier reported `SWUPDATE successful !` and no `SWUPDATE failed`; otherwise the
/// error lines (at most five), or what was printed when there are none.
pub fn verdict(output: &str, exit: Option<i32>) -> Result<(), String> {
    let failed = output.lines().any(|l| l.contains("SWUPDATE failed"));
    let succeeded = output.lines().any(|l| l.contains("SWUPDATE successful !"));
    if succeeded && !failed {
        return Ok(());
    }
    let errors: Vec<&str> = output
        .lines()
        .filter(|l| l.contains("[ERROR]") || l.starts_with("Error:"))
        .map(|l| match l.rfind("ERROR : ") {
            Some(i) => l[i + "ERROR : ".len()..].trim(),
            None => l
                .split_once("] ")
                .map_or(l, |(_, rest)| rest)
                .trim_start_matches(": ")
                .trim(),
        })
        .filter(|l| !l.is_empty())
        .take(5)
        .collect();
    if errors.is_empty() {
        let tail: Vec<&str> = output.lines().rev().take(3).collect();
        Err(format!(
            "no success reported (exit status {exit:?}); last output: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ))
    } else {
        Err(errors.join("; "))
    }
}

impl SwUpdate {
    fn swupdate_args(&self, check: bool, image: &Path, mode: &str) -> Vec<String> {
        let c = &self.config;
        let mut args: Vec<String> = Vec::new();
        if check {
            args.push("-c".into());
        }
        args.extend([
            "-i".into(),
            image.display().to_string(),
            "-k".into(),
            c.certificate.display().to_string(),
            "-e".into(),
            format!("{},{mode}", c.software_set),
            // Info level: the notifier's verdict lines are printed at every level; this
            // adds what a technician reading the log wants (board, selection, steps).
            "-l".into(),
            "3".into(),
        ]);
        if let Some(hw) = &c.hwrevision {
            args.extend(["-H".into(), hw.clone()]);
        }
        if let Some(f) = &c.config {
            args.extend(["-f".into(), f.display().to_string()]);
        }
        if let Some(b) = &c.bootloader {
            args.extend(["-B".into(), b.clone()]);
        }
        args
    }

    fn swupdate(&self, check: bool, image: &Path, mode: &str) -> Result<(), UpdaterError> {
        let args = self.swupdate_args(check, image, mode);
        let (code, output) = run(
            &self.config.binary,
            &args,
            &self.config.work_dir,
            true,
            self.config.timeout,
        )?;
        verdict(&output, code).map_err(|why| {
            if check {
                UpdaterError::Refused(why)
            } else {
                UpdaterError::Tool {
                    command: format!("{} {}", self.config.binary.display(), args.join(" ")),
                    reason: why,
                }
            }
        })
    }

    /// Checks a bundle as the install would (signature, hashes, hardware, the selection
    /// for the running slot) without writing anything (`swupdate -c`).
    pub fn check(&self, image: &Path) -> Result<(), UpdaterError> {
        let current = self.boot.current()?;
        self.swupdate(true, image, &mode(current))
    }
}

/// The `sw-description` mode for a running slot (tegra-demo-distro's names).
pub fn mode(running: Slot) -> String {
    format!("slot_{}", running.letter())
}

impl Updater for SwUpdate {
    fn install(&mut self, image: &Path) -> Result<Slot, UpdaterError> {
        let state = self.boot.state()?;
        let current = state.current;
        if state.next != current {
            // A switch is pending to the slot about to be written: point the next boot
            // back at the running slot first, so an interrupted write is never booted.
            self.boot.set_active(current)?;
        }
        self.swupdate(true, image, &mode(current))?;
        self.swupdate(false, image, &mode(current))?;
        Ok(current.other())
    }

    fn switch(&mut self, slot: Slot) -> Result<(), UpdaterError> {
        let current = self.boot.current()?;
        if slot == current {
            return Err(UpdaterError::State(format!(
                "slot {slot} runs: switch to the other slot"
            )));
        }
        self.boot.set_active(slot)
    }

    fn mark_good(&mut self) -> Result<(), UpdaterError> {
        self.boot.verify()
    }

    fn state(&self) -> Result<BootState, UpdaterError> {
        self.boot.state()
    }
}

impl Nvbootctrl {
    fn call(&self, args: &[&str]) -> Result<String, UpdaterError> {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let command = format!("{} {}", self.binary.display(), args.join(" "));
        let out = Command::new(&self.binary)
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| UpdaterError::Tool {
                command: command.clone(),
                reason: format!("cannot run: {e}"),
            })?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(UpdaterError::Tool {
                command,
                reason: format!(
                    "{}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        Ok(text)
    }

    /// The running slot (`nvbootctrl get-current-slot`: 0 or 1).
    pub fn current(&self) -> Result<Slot, UpdaterError> {
        let out = self.call(&["get-current-slot"])?;
        out.trim()
            .parse::<u32>()
            .ok()
            .and_then(Slot::from_index)
            .ok_or_else(|| UpdaterError::Tool {
                command: format!("{} get-current-slot", self.binary.display()),
                reason: format!("answered {:?}, not 0 or 1", out.trim()),
            })
    }

    /// The next boot starts `slot` (`nvbootctrl set-active-boot-slot N`).
    pub fn set_active(&self, slot: Slot) -> Result<(), UpdaterError> {
        self.call(&["set-active-boot-slot", &slot.index().to_string()])
            .map(|_| ())
    }

    /// Confirms the running boot (`nvbootctrl verify`).
    pub fn verify(&self) -> Result<(), UpdaterError> {
        self.call(&["verify"]).map(|_| ())
    }

    /// The slots' state (`nvbootctrl -t rootfs dump-slots-info`).
    pub fn state(&self) -> Result<BootState, UpdaterError> {
        let out = self.call(&["-t", "rootfs", "dump-slots-info"])?;
        parse_slots_info(&out, self.max_attempts).map_err(|reason| UpdaterError::Tool {
            command: format!("{} -t rootfs dump-slots-info", self.binary.display()),
            reason,
        })
    }
}

/// Parses `nvbootctrl -t rootfs dump-slots-info`, as r35/r36 print it:
///
/// ```text
/// Current rootfs slot: A
/// Active rootfs slot: A
/// num_slots: 2
/// slot: 0,             retry_count: 3,             status: normal
/// slot: 1,             retry_count: 3,             status: normal
/// ```
pub fn parse_slots_info(out: &str, max_attempts: u32) -> Result<BootState, String> {
    let letter = |line: &str| -> Result<Slot, String> {
        match line.rsplit(':').next().map(str::trim) {
            Some("A") => Ok(Slot::A),
            Some("B") => Ok(Slot::B),
            other => Err(format!("slot {other:?} is not A or B")),
        }
    };
    let mut current = None;
    let mut next = None;
    let mut slots: [Option<SlotStatus>; 2] = [None, None];
    for line in out.lines().map(str::trim) {
        if line.starts_with("Current rootfs slot:") {
            current = Some(letter(line)?);
        } else if line.starts_with("Active rootfs slot:") {
            next = Some(letter(line)?);
        } else if let Some(rest) = line.strip_prefix("slot:") {
            let mut index = None;
            let mut retry = None;
            let mut status = None;
            for (i, part) in rest.split(',').enumerate() {
                let part = part.trim();
                if i == 0 {
                    index = part.parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("retry_count:") {
                    retry = v.trim().parse::<u32>().ok();
                } else if let Some(v) = part.strip_prefix("status:") {
                    status = Some(v.trim().to_string());
                }
            }
            let slot = index
                .and_then(Slot::from_index)
                .ok_or_else(|| format!("line {line:?}: no slot 0 or 1"))?;
            let attempts_left = retry.ok_or_else(|| format!("line {line:?}: no retry_count"))?;
            let bootable = match status.as_deref() {
                Some("normal") => true,
                Some("unbootable") => false,
                other => return Err(format!("line {line:?}: status {other:?}")),
            };
            slots[slot.index()] = Some(SlotStatus {
                bootable,
                attempts_left,
            });
        }
    }
    let current = current.ok_or("no \"Current rootfs slot\" line")?;
    let next = next.ok_or("no \"Active rootfs slot\" line")?;
    let [Some(a), Some(b)] = slots else {
        return Err("not both slots 0 and 1 listed (is rootfs A/B enabled?)".into());
    };
    Ok(BootState {
        current,
        next,
        slots: [a, b],
        max_attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_info_parses_as_nvidia_prints_it_and_refuses_the_rest() {
        // The output NVIDIA's forum shows for r35 (Xavier NX, after a fallback to B).
        let out = "Current rootfs slot: B\nActive rootfs slot: B\nnum_slots: 2\n\
                   slot: 0,             retry_count: 0,             status: unbootable\n\
                   slot: 1,             retry_count: 3,             status: normal\n";
        let s = parse_slots_info(out, 3).unwrap();
        assert_eq!((s.current, s.next), (Slot::B, Slot::B));
        assert_eq!(
            s.slots,
            [
                SlotStatus {
                    bootable: false,
                    attempts_left: 0
                },
                SlotStatus {
                    bootable: true,
                    attempts_left: 3
                }
            ]
        );
        assert!(!s.unconfirmed());
        for (bad, why) in [
            (
                "Active rootfs slot: A\nslot: 0, retry_count: 3, status: normal\nslot: 1, retry_count: 3, status: normal",
                "Current",
            ),
            ("Current rootfs slot: C\n", "not A or B"),
            (
                "Current rootfs slot: A\nActive rootfs slot: A\nslot: 0, retry_count: 3, status: normal\n",
                "both slots",
            ),
            (
                "Current rootfs slot: A\nActive rootfs slot: A\nslot: 0, retry_count: x, status: normal\n",
                "retry_count",
            ),
            (
                "Current rootfs slot: A\nActive rootfs slot: A\nslot: 0, retry_count: 3, status: weird\n",
                "status",
            ),
            (
                "Current rootfs slot: A\nActive rootfs slot: A\nslot: 2, retry_count: 3, status: normal\n",
                "slot 0 or 1",
            ),
        ] {
            let e = parse_slots_info(bad, 3).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_verdict_is_the_notifiers_not_the_exit_status() {
        // Lines as Debian's swupdate 2022.12 prints them (from the real tool, see
        // ota/tests/firmware_swupdate.rs).
        let ok = "[INFO ] : SWUPDATE started :  Software Update started !\n\
                  [INFO ] : SWUPDATE successful ! SWUPDATE successful !\n\
                  [INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !\n";
        // The exit status of a successful run is sometimes 1 (sigchld race).
        assert_eq!(verdict(ok, Some(1)), Ok(()));
        let hash = "[ERROR] : SWUPDATE failed [0] ERROR : HASH mismatch : 1c14 <--> f769\n\
                    [ERROR] : SWUPDATE failed [1] Image invalid or corrupted. Not installing ...\n\
                    [INFO ] : SWUPDATE running :  [endupdate] : SWUpdate was successful !\n";
        let e = verdict(hash, Some(1)).unwrap_err();
        assert!(e.starts_with("HASH mismatch"), "{e}");
        assert!(e.contains("Not installing"), "{e}");
        let nokey = "Error: SWUpdate is built for signed images, provide a public key file.\n";
        assert!(verdict(nokey, Some(1)).unwrap_err().contains("public key"));
        // Neither success nor an error line: not a success, whatever the exit status.
        let e = verdict("SWUpdate v\n\nsomething else\n", Some(0)).unwrap_err();
        assert!(e.contains("no success reported"), "{e}");
        // A success line with a failure line is a failure.
        let mixed = format!("{ok}[ERROR] : SWUPDATE failed [0] ERROR : late failure\n");
        assert!(
            verdict(&mixed, Some(0))
                .unwrap_err()
                .contains("late failure")
        );
    }
}
