//! What the agent needs from an A/B updater, and nothing more: write an image into the slot
//! that is not running ([`Updater::install`], after the updater checked the image's own
//! signature), boot the next time from that slot on trial ([`Updater::switch`]), confirm
//! the running slot once the agent is healthy on it ([`Updater::mark_good`]), and say where
//! things stand ([`Updater::state`]).
//!
//! The boot side follows NVIDIA's UEFI rootfs A/B logic (edk2-nvidia,
//! `L4TLauncher/L4TRootfsValidation.c`): every boot of a slot spends one of its attempts;
//! a slot whose attempts reach 0 is marked unbootable and the other slot boots instead
//! (while it has attempts left); confirming the running slot (`nvbootctrl verify`) gives
//! it its attempts back. So a new slot that is never confirmed is left by the bootloader
//! after its attempts, without the agent's help — the agent cannot be trusted to roll back
//! from a slot it may not even start on.
//!
//! Implementations: [`super::swupdate::SwUpdate`] (the real `swupdate` and `nvbootctrl`)
//! and [`super::simulated::SimulatedBoard`] (a test double with the same state machine and
//! power loss at every write).

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One of the two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// Slot A (`nvbootctrl` slot 0, partition `APP`).
    A,
    /// Slot B (slot 1, `APP_b`).
    B,
}

impl Slot {
    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    /// Its index: A is 0, B is 1 (`nvbootctrl`'s numbering).
    pub fn index(self) -> usize {
        match self {
            Slot::A => 0,
            Slot::B => 1,
        }
    }

    /// The slot of index 0 or 1.
    pub fn from_index(i: u32) -> Option<Slot> {
        match i {
            0 => Some(Slot::A),
            1 => Some(Slot::B),
            _ => None,
        }
    }

    /// `a` or `b`.
    pub fn letter(self) -> char {
        match self {
            Slot::A => 'a',
            Slot::B => 'b',
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Slot::A => "A",
            Slot::B => "B",
        })
    }
}

/// One slot as the bootloader sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotStatus {
    /// Not marked unbootable (`RootfsStatusSlotX` is normal).
    pub bootable: bool,
    /// Boots left before the bootloader gives up on it.
    pub attempts_left: u32,
}

/// Where the device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    /// The slot the running system booted from.
    pub current: Slot,
    /// The slot the next boot starts (`nvbootctrl`'s "active" slot).
    pub next: Slot,
    /// Both slots, A then B.
    pub slots: [SlotStatus; 2],
    /// Attempts a slot gets when it is switched to or confirmed (`RootfsRetryCountMax`).
    pub max_attempts: u32,
}

impl BootState {
    /// The status of `slot`.
    pub fn slot(&self, slot: Slot) -> SlotStatus {
        self.slots[slot.index()]
    }

    /// Whether the running slot has not been confirmed since it booted: the boot spent one
    /// of its attempts and [`Updater::mark_good`] has not given them back. (On a device the
    /// stock verifier confirms every ordinary boot; while a firmware trial is pending, only
    /// the agent does.)
    pub fn unconfirmed(&self) -> bool {
        self.slot(self.current).attempts_left < self.max_attempts
    }
}

/// Why an updater call failed. `Refused` and `State` change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdaterError {
    /// The updater refused the image (its signature, hashes, hardware compatibility)
    /// before writing anything.
    #[error("the updater refused the image: {0}")]
    Refused(String),
    /// The call does not fit the state (a switch to the running slot, to a slot that
    /// holds no complete image, mark-good with nothing to confirm).
    #[error("{0}")]
    State(String),
    /// A tool did not run, failed, or said something this driver does not understand.
    #[error("{command}: {reason}")]
    Tool {
        /// The command line.
        command: String,
        /// What happened.
        reason: String,
    },
    /// The (simulated) device lost power in the middle of the call: only the writes
    /// before it happened. [`super::simulated::SimulatedBoard`] only.
    #[error("power lost")]
    PowerLost,
}

/// What the agent needs from an A/B updater.
pub trait Updater {
    /// Writes `image` into the slot that is not running, after the updater checked the
    /// image's own signature (and hashes, and that it is for this hardware); returns that
    /// slot. The running slot stays what the next boot starts until [`Updater::switch`]:
    /// an interrupted install leaves a slot nobody boots.
    fn install(&mut self, image: &Path) -> Result<Slot, UpdaterError>;

    /// Makes the next boot start `slot` (the one [`Updater::install`] wrote) with
    /// `max_attempts` attempts; the running slot stays bootable as the fallback. Refused
    /// for the running slot.
    fn switch(&mut self, slot: Slot) -> Result<(), UpdaterError>;

    /// Confirms the running slot: its attempts are given back, so it keeps booting. Call
    /// it only once the agent is healthy after the boot.
    fn mark_good(&mut self) -> Result<(), UpdaterError>;

    /// Where the device stands.
    fn state(&self) -> Result<BootState, UpdaterError>;
}
