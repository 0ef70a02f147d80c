//! A test double of an A/B device: two slots, the updater's writes, and NVIDIA's UEFI boot
//! logic, with power loss before any write.
//!
//! The boot logic is the one of edk2-nvidia's `L4TLauncher/L4TRootfsValidation.c`
//! (`ValidateRootfsStatus`), with redundancy for bootloader and rootfs:
//!
//! - per slot, a status variable (`RootfsStatusSlotA/B`: normal or unbootable; non-volatile)
//!   and a retry count (in a scratch register: it survives a warm reset, and a cold boot
//!   sets it again to `RootfsRetryCountMax`, or 0 for a slot marked unbootable);
//! - both slots unbootable: recovery;
//! - the slot to boot (`BootChainFwNext`) has retries left: one is spent, it boots;
//! - otherwise it is marked unbootable; if the other slot has retries left the boot chain
//!   switches to it (and the board resets, re-reading the retry counts), else recovery.
//!
//! On top, what the updater and `nvbootctrl` do, as this double models them: `install`
//! points the next boot back at the running slot if a switch was pending, then writes the
//! other slot (first incomplete, then complete); `switch` marks the slot normal, gives it
//! its retries and points the next boot at it; `mark_good` (`nvbootctrl verify`) gives the
//! running slot its retries back. A slot holding no complete image does not come up when
//! booted: the watchdog resets the board (a warm reset), so it spends its attempts like any
//! other failing boot.
//!
//! Every change of non-volatile or scratch state is one write; a power budget makes the
//! board lose power before a chosen write (the write does not happen; what is in RAM —
//! which slot runs — is lost). The caller then powers it on (a cold boot).
//!
//! What the double does not model: how long anything takes, the bootloader's own A/B
//! update by capsule, partial writes *within* one variable or one partition write step,
//! and whether the real `nvbootctrl set-active-boot-slot` gives a slot marked unbootable
//! its retries back (the double assumes it does, as tegra-demo-distro's update script
//! resets the status variable itself). Only a Jetson shows those.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::updater::{BootState, Slot, SlotStatus, Updater, UpdaterError};

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Content {
    /// An interrupted write: nothing that boots.
    Partial,
    /// A complete image of this version.
    Image(String),
}

/// What survives a power loss (and the scratch register, which survives warm resets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nv {
    /// What each slot holds.
    pub contents: [Content; 2],
    /// `RootfsStatusSlotA/B`: true while normal, false once unbootable.
    pub bootable: [bool; 2],
    /// The retry counts (scratch register).
    pub retries: [u32; 2],
    /// The slot the next boot starts (`BootChainFwNext`).
    pub next: Slot,
    /// `RootfsRetryCountMax`.
    pub max_attempts: u32,
}

/// What a boot ended in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Boot {
    /// This slot runs.
    Slot(Slot),
    /// Neither slot is bootable: the recovery kernel runs.
    Recovery,
}

/// An A/B device with a simulated updater (see the module documentation). It serialises
/// (JSON), so that a test can keep a board in a file across the agent's "reboots" (the
/// agent's `simulated` updater).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatedBoard {
    nv: Nv,
    running: Option<Boot>,
    signed: BTreeMap<String, String>,
    budget: Option<usize>,
    writes: usize,
    boots: Vec<Boot>,
}

/// A warm reset (reboot, watchdog) keeps the retry counts; a cold boot sets them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reset {
    Warm,
    Cold,
}

impl SimulatedBoard {
    /// A freshly flashed device: both slots hold `version`, slot A boots next, nothing
    /// runs yet (call [`SimulatedBoard::power_on`]).
    pub fn flashed(version: &str, max_attempts: u32) -> SimulatedBoard {
        SimulatedBoard {
            nv: Nv {
                contents: [
                    Content::Image(version.to_string()),
                    Content::Image(version.to_string()),
                ],
                bootable: [true, true],
                retries: [max_attempts; 2],
                next: Slot::A,
                max_attempts,
            },
            running: None,
            signed: BTreeMap::new(),
            budget: None,
            writes: 0,
            boots: Vec::new(),
        }
    }

    /// Lets the simulated updater accept an image file whose SHA-256 is `sha256` as a
    /// correctly signed image of `version` (the double's stand-in for the updater's own
    /// signature check: any other file is refused).
    pub fn sign(&mut self, sha256: &str, version: &str) {
        self.signed.insert(sha256.to_string(), version.to_string());
    }

    /// Power fails before the write after `writes` more writes (None: never).
    pub fn set_power_budget(&mut self, writes: Option<usize>) {
        self.budget = writes;
    }

    /// Writes done so far (every write, also those of [`SimulatedBoard::external_write`]).
    pub fn writes(&self) -> usize {
        self.writes
    }

    /// The non-volatile state.
    pub fn nv(&self) -> &Nv {
        &self.nv
    }

    /// What runs (None: powered off).
    pub fn running(&self) -> Option<Boot> {
        self.running
    }

    /// The version the running slot holds (None: off, recovery).
    pub fn running_version(&self) -> Option<String> {
        match self.running? {
            Boot::Slot(s) => match &self.nv.contents[s.index()] {
                Content::Image(v) => Some(v.clone()),
                Content::Partial => None,
            },
            Boot::Recovery => None,
        }
    }

    /// Every boot that ended in a running system, in order.
    pub fn boots(&self) -> &[Boot] {
        &self.boots
    }

    /// One write done by someone else on this device (the agent's state file): it too
    /// happens only if power holds.
    pub fn external_write(&mut self) -> Result<(), UpdaterError> {
        self.write(|_| {})
    }

    fn write(&mut self, f: impl FnOnce(&mut Nv)) -> Result<(), UpdaterError> {
        match &mut self.budget {
            Some(0) => {
                self.running = None;
                return Err(UpdaterError::PowerLost);
            }
            Some(n) => *n -= 1,
            None => {}
        }
        f(&mut self.nv);
        self.writes += 1;
        Ok(())
    }

    /// Powers the board on (a cold boot) and boots.
    pub fn power_on(&mut self) -> Result<Boot, UpdaterError> {
        self.boot(Reset::Cold)
    }

    /// A warm reset of the running board (`reboot`, the watchdog), then the boot; a board
    /// that is off is powered on instead.
    pub fn reboot(&mut self) -> Result<Boot, UpdaterError> {
        let reset = if self.running.is_some() {
            Reset::Warm
        } else {
            Reset::Cold
        };
        self.boot(reset)
    }

    fn boot(&mut self, mut reset: Reset) -> Result<Boot, UpdaterError> {
        self.running = None;
        // Each pass is one boot attempt; a slot that does not come up costs one retry, so
        // the loop ends within 2 × (max + 1) + 2 passes.
        loop {
            if reset == Reset::Cold {
                for s in [Slot::A, Slot::B] {
                    self.nv.retries[s.index()] = if self.nv.bootable[s.index()] {
                        self.nv.max_attempts
                    } else {
                        0
                    };
                }
            }
            if !self.nv.bootable.iter().any(|b| *b) {
                return self.come_up(Boot::Recovery);
            }
            let chosen = self.nv.next;
            if self.nv.retries[chosen.index()] > 0 {
                self.write(|nv| nv.retries[chosen.index()] -= 1)?;
                if matches!(self.nv.contents[chosen.index()], Content::Image(_)) {
                    return self.come_up(Boot::Slot(chosen));
                }
                // The kernel or the root filesystem does not come up: the watchdog resets.
                reset = Reset::Warm;
                continue;
            }
            self.write(|nv| nv.bootable[chosen.index()] = false)?;
            let other = chosen.other();
            if self.nv.retries[other.index()] > 0 {
                self.write(|nv| nv.next = other)?;
                // UEFI clears the scratch register and resets: the counts are read again.
                reset = Reset::Cold;
                continue;
            }
            self.write(|nv| nv.bootable[other.index()] = false)?;
            return self.come_up(Boot::Recovery);
        }
    }

    fn come_up(&mut self, boot: Boot) -> Result<Boot, UpdaterError> {
        self.running = Some(boot);
        self.boots.push(boot);
        Ok(boot)
    }

    fn current(&self) -> Result<Slot, UpdaterError> {
        match self.running {
            Some(Boot::Slot(s)) => Ok(s),
            Some(Boot::Recovery) => Err(UpdaterError::State(
                "the recovery kernel runs: no slot to update from".into(),
            )),
            None => Err(UpdaterError::State("the board is off".into())),
        }
    }
}

impl Updater for SimulatedBoard {
    fn install(&mut self, image: &Path) -> Result<Slot, UpdaterError> {
        let current = self.current()?;
        let bytes = std::fs::read(image).map_err(|e| UpdaterError::Tool {
            command: format!("read {}", image.display()),
            reason: e.to_string(),
        })?;
        let digest = crate::sha256_hex(&bytes);
        let version = self.signed.get(&digest).cloned().ok_or_else(|| {
            UpdaterError::Refused(format!(
                "{}: sha256 {digest} is not an image signed by the updater's key",
                image.display()
            ))
        })?;
        let target = current.other();
        if self.nv.next == target {
            // A switch to that slot is pending: undo it before the slot is overwritten, so
            // an interrupted write is never booted.
            self.write(|nv| nv.next = current)?;
        }
        self.write(|nv| nv.contents[target.index()] = Content::Partial)?;
        self.write(|nv| nv.contents[target.index()] = Content::Image(version))?;
        Ok(target)
    }

    fn switch(&mut self, slot: Slot) -> Result<(), UpdaterError> {
        let current = self.current()?;
        if slot == current {
            return Err(UpdaterError::State(format!(
                "slot {slot} runs: switch to the other slot"
            )));
        }
        if !matches!(self.nv.contents[slot.index()], Content::Image(_)) {
            return Err(UpdaterError::State(format!(
                "slot {slot} holds no complete image"
            )));
        }
        let max = self.nv.max_attempts;
        self.write(|nv| nv.bootable[slot.index()] = true)?;
        self.write(|nv| nv.retries[slot.index()] = max)?;
        self.write(|nv| nv.next = slot)
    }

    fn mark_good(&mut self) -> Result<(), UpdaterError> {
        let current = self.current()?;
        let max = self.nv.max_attempts;
        self.write(|nv| nv.retries[current.index()] = max)
    }

    fn state(&self) -> Result<BootState, UpdaterError> {
        let current = self.current()?;
        let status = |s: Slot| SlotStatus {
            bootable: self.nv.bootable[s.index()],
            attempts_left: self.nv.retries[s.index()],
        };
        Ok(BootState {
            current,
            next: self.nv.next,
            slots: [status(Slot::A), status(Slot::B)],
            max_attempts: self.nv.max_attempts,
        })
    }
}

#[cfg(test)]
#[path = "tests_simulated.rs"]
mod tests;
