//! The device's firmware record, kept in the persistent state directory (e.g.
//! `/var/lib/aegis/workflows/firmware`, 0700; `state.json` 0600, replaced whole by
//! [`crate::fsutil::write_atomic`]) — never on an A/B slot, so that switching slots neither
//! forgets an order under way nor brings back consumed sequences.
//!
//! It holds the last sequence accepted per issuer key and target (anti-replay), the
//! digests of orders answered already (a retained order delivered again gets no second
//! receipt), and the one order under way ([`Pending`]) with how far it got
//! ([`Phase`]). After every start of the agent, [`FirmwareState::resume`] compares that
//! record with the bootloader's state and says what to do next ([`Resume`]); that
//! decision, not the agent's memory, carries an update across reboots and power loss.
//!
//! The agent's protocol, each arrow one atomic write of this file or one updater call:
//!
//! ```text
//! verify_order → begin (sequence consumed, Accepted) → download + check the file
//!   → Updater::install → installed(slot) → Updater::switch(slot) → switched → reboot
//! after every start: resume(boot state, running version) →
//!   Abandon | Switch | Reboot | Trial (health → mark_good) | Applied | FellBack | WrongVersion
//!   → the receipt into the outbox → finish
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::VerifiedOrder;
use super::updater::{BootState, Slot};

/// Digests remembered as answered.
pub const ANSWERED: usize = 64;
/// Largest state file read.
pub const MAX_STATE_BYTES: u64 = 256 * 1024;
/// The state file's name in its directory.
pub const STATE_FILE: &str = "state.json";

/// How far the order under way got. Each is written after the step it names succeeded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Verified and its sequence consumed; nothing written to a slot that will boot.
    Accepted,
    /// The updater wrote the image into [`Pending::slot`].
    Installed,
    /// The next boot starts that slot.
    Switched,
}

/// The order under way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    /// SHA-256 of the signed order.
    pub digest: String,
    /// Its image family.
    pub image: String,
    /// The version it installs.
    pub version: String,
    /// The version that ran when it was accepted.
    pub from_version: String,
    /// The slot it was installed into (from [`Phase::Installed`] on).
    pub slot: Option<Slot>,
    /// How far it got.
    pub phase: Phase,
    /// When it was accepted (RFC 3339 UTC).
    pub accepted_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// Last accepted sequence per replay key ([`super::replay_key`]).
    #[serde(default)]
    sequences: BTreeMap<String, u64>,
    /// Digests of orders answered with a receipt, newest last.
    #[serde(default)]
    answered: VecDeque<String>,
    /// The order under way.
    #[serde(default)]
    pending: Option<Pending>,
}

/// What to do about the order under way, decided from the record and the bootloader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// It never got to switch the boot slot (the agent stopped, or power failed, while it
    /// downloaded or installed): the device runs what it ran. Answer `rolled_back`; the
    /// fleet orders again (with a new sequence).
    Abandon,
    /// Installed, switch not recorded: call [`super::updater::Updater::switch`] with the
    /// slot (again: it is idempotent), then [`FirmwareState::switched`], then reboot.
    Switch(Slot),
    /// Switched, and this is still the boot before it: reboot.
    Reboot,
    /// Running the new slot, not confirmed: run the health check, then
    /// [`super::updater::Updater::mark_good`] (and resume again: [`Resume::Applied`]).
    /// Unhealthy: do not confirm; reboot, and the bootloader falls back once the slot's
    /// attempts are spent.
    Trial(Slot),
    /// Running the new slot, confirmed: answer `applied`.
    Applied(Slot),
    /// Switched and rebooted, and the device runs the other slot: the new one was not
    /// confirmed and the bootloader fell back. Answer `rolled_back`.
    FellBack {
        /// The slot that was tried.
        tried: Slot,
        /// The slot running.
        running: Slot,
    },
    /// Running the new slot, but not the version ordered: never confirm it. Answer
    /// `rolled_back`, switch to the other slot and reboot.
    WrongVersion {
        /// The slot running.
        slot: Slot,
        /// The version it runs.
        running: String,
    },
}

/// Why the record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareStateError {
    /// The state file is unreadable or not a valid record.
    #[error("{}: {reason}", .path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Writing failed.
    #[error("{}: {source}", .path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The step does not fit the record (another order under way; no order; a step out
    /// of order).
    #[error("{0}")]
    Step(String),
}

/// The record, as on disk.
#[derive(Debug)]
pub struct FirmwareState {
    dir: PathBuf,
    record: Record,
}

impl FirmwareState {
    /// Opens (or creates, 0700) `dir` and reads its record (none yet: empty). A record
    /// that is a link, not a regular file, too large, not JSON or with fields out of shape
    /// is refused: nothing is changed.
    pub fn open(dir: &Path) -> Result<FirmwareState, FirmwareStateError> {
        crate::fsutil::private_dir(dir).map_err(|source| FirmwareStateError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let path = dir.join(STATE_FILE);
        let bad = |reason: String| FirmwareStateError::State {
            path: path.clone(),
            reason,
        };
        let record = match crate::fsutil::read_bounded(&path, MAX_STATE_BYTES) {
            Ok(None) => Record::default(),
            Ok(Some(bytes)) => {
                let r: Record = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                check_record(&r).map_err(bad)?;
                r
            }
            Err(e) => return Err(bad(e.to_string())),
        };
        Ok(FirmwareState {
            dir: dir.to_path_buf(),
            record,
        })
    }

    /// The last sequence accepted under `replay_key` (0: none): what
    /// [`super::verify_order`] needs.
    pub fn last_sequence(&self, replay_key: &str) -> u64 {
        self.record.sequences.get(replay_key).copied().unwrap_or(0)
    }

    /// Whether the order of `digest` was answered already.
    pub fn answered(&self, digest: &str) -> bool {
        self.record.answered.iter().any(|d| d == digest)
    }

    /// The order under way.
    pub fn pending(&self) -> Option<&Pending> {
        self.record.pending.as_ref()
    }

    /// Accepts a verified order: its sequence is consumed and it is the order under way
    /// ([`Phase::Accepted`]). Refused while another order is under way.
    pub fn begin(
        &mut self,
        v: &VerifiedOrder,
        running_version: &str,
    ) -> Result<(), FirmwareStateError> {
        if let Some(p) = &self.record.pending {
            return Err(FirmwareStateError::Step(format!(
                "firmware order {} ({} {}) is under way since {}: one at a time",
                p.digest, p.image, p.version, p.accepted_at
            )));
        }
        let mut next = self.record.clone();
        let seq = next.sequences.entry(v.replay_key.clone()).or_insert(0);
        *seq = (*seq).max(v.order.sequence);
        next.pending = Some(Pending {
            digest: v.digest.clone(),
            image: v.order.image.clone(),
            version: v.order.version.clone(),
            from_version: running_version.to_string(),
            slot: None,
            phase: Phase::Accepted,
            accepted_at: crate::maml::format_time(crate::maml::now_s()),
        });
        self.commit(next)
    }

    /// Records that the image was installed into `slot`.
    pub fn installed(&mut self, slot: Slot) -> Result<(), FirmwareStateError> {
        self.advance(Phase::Accepted, |p| {
            p.slot = Some(slot);
            p.phase = Phase::Installed;
        })
    }

    /// Records that the next boot starts the installed slot.
    pub fn switched(&mut self) -> Result<(), FirmwareStateError> {
        self.advance(Phase::Installed, |p| p.phase = Phase::Switched)
    }

    fn advance(
        &mut self,
        from: Phase,
        f: impl FnOnce(&mut Pending),
    ) -> Result<(), FirmwareStateError> {
        let mut next = self.record.clone();
        match next.pending.as_mut() {
            Some(p) if p.phase == from => f(p),
            Some(p) => {
                return Err(FirmwareStateError::Step(format!(
                    "firmware order {} is {:?}, not {from:?}",
                    p.digest, p.phase
                )));
            }
            None => {
                return Err(FirmwareStateError::Step(
                    "no firmware order under way".into(),
                ));
            }
        }
        self.commit(next)
    }

    /// Ends the order under way (after its receipt went into the outbox): it is no longer
    /// pending and its digest is answered. Returns it.
    pub fn finish(&mut self) -> Result<Pending, FirmwareStateError> {
        let mut next = self.record.clone();
        let p = next
            .pending
            .take()
            .ok_or_else(|| FirmwareStateError::Step("no firmware order under way".into()))?;
        remember(&mut next.answered, &p.digest);
        self.commit(next)?;
        Ok(p)
    }

    /// Records that an authenticated order was answered without being accepted (a
    /// `rejected` receipt): its redelivery gets no second receipt.
    pub fn record_answer(&mut self, digest: &str) -> Result<(), FirmwareStateError> {
        let mut next = self.record.clone();
        remember(&mut next.answered, digest);
        self.commit(next)
    }

    /// What to do about the order under way (None: there is none), from the bootloader's
    /// `boot` state and the version the running slot reports. See [`Resume`].
    pub fn resume(&self, boot: &BootState, running_version: &str) -> Option<Resume> {
        let p = self.record.pending.as_ref()?;
        let Some(slot) = p.slot else {
            // Accepted only: whatever was written went to a slot that nothing boots.
            return Some(Resume::Abandon);
        };
        Some(if boot.current == slot {
            if running_version != p.version {
                Resume::WrongVersion {
                    slot,
                    running: running_version.to_string(),
                }
            } else if boot.unconfirmed() {
                Resume::Trial(slot)
            } else {
                Resume::Applied(slot)
            }
        } else {
            match p.phase {
                Phase::Accepted => Resume::Abandon,
                Phase::Installed => Resume::Switch(slot),
                Phase::Switched if boot.next == slot => Resume::Reboot,
                Phase::Switched => Resume::FellBack {
                    tried: slot,
                    running: boot.current,
                },
            }
        })
    }

    fn commit(&mut self, next: Record) -> Result<(), FirmwareStateError> {
        let path = self.dir.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(&next).expect("the record serialises");
        crate::fsutil::write_atomic(&path, &bytes)
            .map_err(|source| FirmwareStateError::Io { path, source })?;
        self.record = next;
        Ok(())
    }
}

fn remember(answered: &mut VecDeque<String>, digest: &str) {
    if !answered.iter().any(|d| d == digest) {
        answered.push_back(digest.to_string());
    }
    while answered.len() > ANSWERED {
        answered.pop_front();
    }
}

/// The shape rules of a record read back: digests are SHA-256, the pending order's
/// version and phase agree with its slot, at most [`ANSWERED`] answered digests.
fn check_record(r: &Record) -> Result<(), String> {
    if r.answered.len() > ANSWERED {
        return Err(format!("more than {ANSWERED} answered digests"));
    }
    if let Some(d) = r.answered.iter().find(|d| !crate::model::is_sha256_hex(d)) {
        return Err(format!("answered digest {d:?} is not a SHA-256"));
    }
    if let Some(p) = &r.pending {
        if !crate::model::is_sha256_hex(&p.digest) {
            return Err(format!("pending digest {:?} is not a SHA-256", p.digest));
        }
        for (what, v) in [("version", &p.version), ("from_version", &p.from_version)] {
            if super::parse_version(v).is_none() {
                return Err(format!("pending {what} {v:?} is not MAJOR.MINOR.PATCH"));
            }
        }
        if (p.phase == Phase::Accepted) != p.slot.is_none() {
            return Err(format!(
                "pending order in phase {:?} with slot {:?}",
                p.phase, p.slot
            ));
        }
    }
    Ok(())
}
