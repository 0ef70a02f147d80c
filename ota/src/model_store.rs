//! The device's model store: where verified model bundles are staged, installed, tried,
//! confirmed and rolled back, within a disk budget, so that a crash at any moment leaves
//! every model's `active` version a complete directory.
//!
//! On disk, under the store root (0700, e.g. `/var/lib/aegis/models`):
//!
//! ```text
//! state.json                 per model name: active, previous and trial versions (with the
//!                            manifest digest and byte total of each) and the highest
//!                            version ever installed; the only commit point
//! <name>/<version>/…         an installed bundle, exactly the manifest's files
//! <name>/<version>.manifest  the signed manifest it was installed from (0600)
//! .staging/<name>-<version>/ where the downloader writes a bundle before install (kept
//!                            across restarts, so a download resumes)
//! .trash/                    directories on their way out (renamed here, then deleted)
//! ```
//!
//! Model names are `[a-z0-9_-]`, so `.staging`, `.trash` and `state.json` never collide with
//! one. Every change is a sequence of atomic steps — a directory rename (then an fsync of
//! the directories involved) or a whole-file replacement of `state.json`
//! ([`crate::fsutil::write_atomic`]) — ordered so that `state.json` only ever names
//! directories that are complete: a bundle is verified in staging and renamed into place,
//! and its signed manifest written beside it, *before* the state names it; a version leaves
//! the state *before* its directory and manifest are moved to `.trash`. A directory or
//! manifest the state does not name is an orphan of an interrupted change, and
//! [`ModelStore::open`] removes it.
//!
//! The API, in the order of a version's life: [`ModelStore::open`] (recovery) →
//! [`staging_dir`](ModelStore::staging_dir) → [`install`](ModelStore::install) (on trial)
//! → [`confirm`](ModelStore::confirm) or [`rollback`](ModelStore::rollback) → later perhaps
//! [`rollback_to`](ModelStore::rollback_to) (a signed rollback order). Reading:
//! [`active`](ModelStore::active), [`trial`](ModelStore::trial),
//! [`manifest`](ModelStore::manifest), [`list`](ModelStore::list),
//! [`installed_bytes`](ModelStore::installed_bytes), and [`ModelStore::inspect`] for a
//! reader in another process.
//!
//! This module moves and deletes directories and keeps the record; it never loads a model,
//! runs a health check, checks a signature or downloads anything (the agent does, and calls
//! [`ModelStore::confirm`] or [`ModelStore::rollback`] with the verdict).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::fsutil::{private_dir, write_atomic};
use crate::model::{
    BundleError, MAX_MANIFEST_BYTES, VerifiedManifest, check_name, is_sha256_hex, manifest_digest,
    verify_bundle_files,
};
use crate::model_rollback::VerifiedRollback;

/// The state file's name under the root.
pub const STATE_FILE: &str = "state.json";
/// The staging area under the root.
pub const STAGING_DIR: &str = ".staging";
/// Where directories go before they are deleted.
pub const TRASH_DIR: &str = ".trash";
/// Largest state file read (bytes): a record per model name, each a few hundred bytes.
pub const MAX_STATE_BYTES: u64 = 1 << 20;
/// The `format` of the state file this module writes.
pub const STATE_FORMAT: u32 = 1;
/// The extension of a version's signed manifest, beside its directory.
pub const MANIFEST_EXTENSION: &str = "manifest";
/// How long a staged download is kept across restarts after its last write (the newest
/// modification time of anything in its directory); older ones are removed by
/// [`ModelStore::open`].
pub const STAGING_MAX_AGE: Duration = Duration::from_secs(7 * 86_400);

/// One installed version, as the state records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// The manifest's version.
    pub version: u64,
    /// SHA-256 of the signed manifest it was installed from.
    pub digest: String,
    /// The bundle's total size (sum of its files), bytes.
    pub bytes: u64,
}

/// What the store records for one model name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The confirmed version that runs (None: none confirmed yet).
    #[serde(default)]
    pub active: Option<VersionRecord>,
    /// The confirmed version before it (the rollback target).
    #[serde(default)]
    pub previous: Option<VersionRecord>,
    /// A version installed and activated but not yet confirmed healthy.
    #[serde(default)]
    pub trial: Option<VersionRecord>,
    /// The highest version ever installed under this name: an install must be above it
    /// (a version rolled back from is never installed again; its fix gets a new version).
    pub highest: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreState {
    format: u32,
    models: BTreeMap<String, ModelRecord>,
}

/// One model in [`ModelStore::list`] (for `aegis models list` and the web page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelEntry {
    /// Its name.
    pub name: String,
    /// Its record (versions, digests, sizes).
    pub record: ModelRecord,
}

/// A bundle installed on trial by [`ModelStore::install`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// The model name.
    pub name: String,
    /// The version.
    pub version: u64,
    /// Its directory (the bundle's files, verified).
    pub dir: PathBuf,
}

/// A staged download found by [`ModelStore::open`].
struct Staged {
    name: String,
    version: u64,
    path: PathBuf,
    bytes: u64,
}

/// What [`ModelStore::open`] repaired after an interruption, and which staged downloads it
/// kept or removed, one line each (for the log and status).
pub type Recovered = Vec<String>;

/// Why a store operation failed; each names the path, model or version.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or directory of the store could not be read, written or moved.
    #[error("model store: {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The store root is not a plain directory.
    #[error("model store: root {path}: {reason}")]
    Root {
        /// The root.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The state file is damaged or hostile; nothing it says is followed.
    #[error("model store: state file {path}: {reason} (refused; nothing was changed)")]
    State {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A name the store cannot use as a directory.
    #[error("model store: model name {name:?}: {reason}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// Not above the highest version ever installed under this name.
    #[error(
        "model {name:?}: version {offered} is not above version {highest}, the highest installed \
         (versions only move forward; going back is a rollback)"
    )]
    NotNewer {
        /// The model.
        name: String,
        /// Offered.
        offered: u64,
        /// The highest ever installed.
        highest: u64,
    },
    /// A version is on trial: confirm or roll it back first.
    #[error("model {name:?}: version {version} is on trial; confirm or roll it back first")]
    TrialPending {
        /// The model.
        name: String,
        /// The version on trial.
        version: u64,
    },
    /// Nothing on trial to confirm.
    #[error("model {name:?}: no version on trial to confirm")]
    NoTrial {
        /// The model.
        name: String,
    },
    /// Nothing to roll back to.
    #[error("model {name:?}: nothing to roll back to (no trial and no previous version)")]
    NoPrevious {
        /// The model.
        name: String,
    },
    /// A signed manifest that cannot be kept or read back: not the manifest that was
    /// verified (install), or missing, not a regular file, too large or with another
    /// digest than the state records ([`ModelStore::manifest`]).
    #[error("model {name:?} version {version}: signed manifest: {reason}")]
    Manifest {
        /// The model.
        name: String,
        /// The version.
        version: u64,
        /// What is wrong.
        reason: String,
    },
    /// Not a version the store holds (active, previous or on trial).
    #[error(
        "model {name:?}: version {version} is not installed (not active, previous or on trial)"
    )]
    NotInstalled {
        /// The model.
        name: String,
        /// The version asked for.
        version: u64,
    },
    /// A rollback order that does not fit the versions held: it applies only while
    /// `from` is active and `to` is previous (so never twice).
    #[error(
        "model {name:?}: the rollback order from version {from} to version {to} does not apply: \
         active is {}, previous is {} (an order applies only while `from` is active and `to` \
         is the previous version)",
        shown(active),
        shown(previous)
    )]
    RollbackMismatch {
        /// The model.
        name: String,
        /// The order's `from_version`.
        from: u64,
        /// The order's `to_version`.
        to: u64,
        /// The active version (None: none).
        active: Option<u64>,
        /// The previous version (None: none).
        previous: Option<u64>,
    },
    /// The bundle would not fit in the budget.
    #[error(
        "model {name:?} version {version}: {needed} bytes do not fit: {used} bytes of the \
         {budget}-byte budget are used by installed and staged bundles"
    )]
    Budget {
        /// The model.
        name: String,
        /// The version.
        version: u64,
        /// The bundle's size.
        needed: u64,
        /// Installed + staged bytes.
        used: u64,
        /// The budget.
        budget: u64,
    },
    /// The staged files do not match the manifest (the staging directory was removed).
    #[error("model {name:?} version {version}: staged bundle refused: {source}")]
    Bundle {
        /// The model.
        name: String,
        /// The version.
        version: u64,
        /// What did not match.
        #[source]
        source: BundleError,
    },
    /// A test stopped the operation at this step, as a crash would.
    #[cfg(test)]
    #[error("interrupted at step {0}")]
    Interrupted(&'static str),
}

fn shown(v: &Option<u64>) -> String {
    v.map_or("none".into(), |v| format!("version {v}"))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The device's model store (see the module docs). One per root; not shared between
/// processes.
#[derive(Debug)]
pub struct ModelStore {
    root: PathBuf,
    budget: u64,
    state: StoreState,
    /// Versions [`open`](Self::open) found on trial and rolled back (name, record).
    rolled_back_at_open: Vec<(String, VersionRecord)>,
    /// Test hook: fail with `Interrupted` when this many steps have run.
    #[cfg(test)]
    pub(crate) crash_after: Option<usize>,
}

impl ModelStore {
    /// Opens (creating if absent) the store at `root` with a budget of `budget_bytes` for
    /// installed plus staged bundles, and recovers from an interrupted change: empties the
    /// trash, rolls back a version left on trial (the device keeps only models that passed
    /// their health check), checks that every recorded version is complete — a plain
    /// directory holding exactly the recorded bytes, no symbolic link, and beside it its
    /// signed manifest, a regular file of at most [`MAX_MANIFEST_BYTES`] whose digest is
    /// the recorded one — (an incomplete `active` falls back to `previous`, or to none),
    /// and removes directories and manifests the state does not name.
    ///
    /// Staged downloads are kept, so that they resume: a `.staging/<name>-<version>`
    /// directory stays when its name is a model name and a version above the highest
    /// installed under that name, it is a plain directory holding only directories and
    /// regular files, something in it was written within [`STAGING_MAX_AGE`], it is the
    /// highest such version of its name, and it fits in the budget beside the installed
    /// versions; everything else in `.staging` is removed. Each kept or removed download is
    /// a line of [`Recovered`].
    ///
    /// A damaged or hostile state file is refused ([`StoreError::State`]) and nothing is
    /// changed.
    pub fn open(root: &Path, budget_bytes: u64) -> Result<(ModelStore, Recovered), StoreError> {
        match std::fs::symlink_metadata(root) {
            Ok(m) if !m.is_dir() => {
                return Err(StoreError::Root {
                    path: root.to_path_buf(),
                    reason: "not a directory (or a symbolic link)".into(),
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(root)(e)),
        }
        private_dir(root).map_err(io(root))?;
        let state = read_state(&root.join(STATE_FILE))?;
        let mut store = ModelStore {
            root: root.to_path_buf(),
            budget: budget_bytes,
            state,
            rolled_back_at_open: Vec::new(),
            #[cfg(test)]
            crash_after: None,
        };
        let mut recovered = Vec::new();
        let trash = store.root.join(TRASH_DIR);
        remove_path(&trash)?;
        private_dir(&trash).map_err(io(&trash))?;
        let mut next = store.state.clone();
        for (name, rec) in next.models.iter_mut() {
            if let Some(t) = rec.trial.take() {
                recovered.push(format!(
                    "model {name:?}: version {} was on trial at start-up: rolled back",
                    t.version
                ));
                store.rolled_back_at_open.push((name.clone(), t));
            }
            if let Some(p) = rec.previous.take() {
                match store.incomplete(name, &p)? {
                    None => rec.previous = Some(p),
                    Some(why) => recovered.push(format!(
                        "model {name:?}: previous version {} is incomplete ({why}): dropped",
                        p.version
                    )),
                }
            }
            if let Some(a) = rec.active.take() {
                match store.incomplete(name, &a)? {
                    None => rec.active = Some(a),
                    Some(why) => {
                        recovered.push(format!(
                            "model {name:?}: active version {} is incomplete ({why}): {}",
                            a.version,
                            match &rec.previous {
                                Some(p) => format!("back to version {}", p.version),
                                None => "none active".into(),
                            }
                        ));
                        rec.active = rec.previous.take();
                    }
                }
            }
        }
        if next != store.state {
            store.commit(next)?;
        }
        store.remove_orphans(&mut recovered)?;
        store.recover_staging(&mut recovered)?;
        Ok((store, recovered))
    }

    /// The versions [`open`](Self::open) found on trial and rolled back (the agent stopped
    /// while judging them), to be answered: name and the trial's record (its manifest
    /// digest included).
    pub fn rolled_back_at_open(&self) -> &[(String, VersionRecord)] {
        &self.rolled_back_at_open
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The staging directory for `v`'s bundle, created empty if absent (a partial download
    /// of the same version is kept, for resume). Other staged versions of the same name are
    /// removed first. Refuses, before creating anything, a bundle that does not fit in the
    /// budget counting every installed version and every other staged directory, and a
    /// version that [`install`](Self::install) would refuse.
    pub fn staging_dir(&mut self, v: &VerifiedManifest) -> Result<PathBuf, StoreError> {
        let (name, version) = (&v.manifest.name, v.manifest.version);
        self.check_installable(name, version)?;
        let staging = self.root.join(STAGING_DIR);
        let mine = format!("{name}-{version}");
        let mut staged = 0u64;
        let mut stale = Vec::new();
        for entry in std::fs::read_dir(&staging).map_err(io(&staging))? {
            let entry = entry.map_err(io(&staging))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if file_name == mine {
                continue;
            }
            let same_name = file_name
                .rsplit_once('-')
                .is_some_and(|(n, ver)| n == name && ver.parse::<u64>().is_ok());
            if same_name {
                stale.push(entry.path());
            } else {
                staged = staged.saturating_add(tree_info(&entry.path())?.map_or(0, |(b, _)| b));
            }
        }
        let used = self.installed_bytes().saturating_add(staged);
        if used.saturating_add(v.total_bytes) > self.budget {
            return Err(StoreError::Budget {
                name: name.clone(),
                version,
                needed: v.total_bytes,
                used,
                budget: self.budget,
            });
        }
        for p in stale {
            self.discard(&p)?;
        }
        let dir = staging.join(mine);
        private_dir(&dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// Installs `v`'s staged bundle on trial, keeping `signed` — the signed manifest `v`
    /// was verified from, as received — beside it: refuses (changing nothing) a `signed`
    /// whose digest ([`manifest_digest`]) is not `v.digest`; checks the staged files against
    /// the manifest ([`verify_bundle_files`]; on a mismatch the staging directory is
    /// removed and nothing else changes); renames the directory into `<name>/<version>`;
    /// writes `<name>/<version>.manifest` (atomically, 0600); then records the version as
    /// `trial`. The confirmed `active` version is untouched until
    /// [`confirm`](Self::confirm).
    pub fn install(
        &mut self,
        v: &VerifiedManifest,
        signed: &[u8],
    ) -> Result<Installed, StoreError> {
        let (name, version) = (v.manifest.name.clone(), v.manifest.version);
        self.check_installable(&name, version)?;
        let refused = |reason: String| StoreError::Manifest {
            name: name.clone(),
            version,
            reason,
        };
        match manifest_digest(signed) {
            Ok(d) if d == v.digest => {}
            Ok(d) => {
                return Err(refused(format!(
                    "the bytes given hash to {d}, not to {}, the manifest that was verified",
                    v.digest
                )));
            }
            Err(e) => return Err(refused(format!("the bytes given: {e}"))),
        }
        let staged = self
            .root
            .join(STAGING_DIR)
            .join(format!("{name}-{version}"));
        if let Err(source) = verify_bundle_files(&staged, v) {
            if std::fs::symlink_metadata(&staged).is_ok() {
                self.discard(&staged)?;
            }
            return Err(StoreError::Bundle {
                name,
                version,
                source,
            });
        }
        self.step("verified")?;
        let name_dir = self.root.join(&name);
        private_dir(&name_dir).map_err(io(&name_dir))?;
        let dest = self.version_dir(&name, version);
        let manifest = self.manifest_path(&name, version);
        for orphan in [&dest, &manifest] {
            if std::fs::symlink_metadata(orphan).is_ok() {
                // An orphan of an earlier interrupted install in this session.
                self.discard(orphan)?;
            }
        }
        self.step("name directory")?;
        std::fs::rename(&staged, &dest).map_err(io(&dest))?;
        sync_dir(&name_dir)?;
        sync_dir(&self.root.join(STAGING_DIR))?;
        self.step("renamed into place")?;
        write_atomic(&manifest, signed).map_err(io(&manifest))?;
        self.step("manifest written")?;
        let mut next = self.state.clone();
        let rec = next.models.entry(name.clone()).or_default();
        rec.trial = Some(VersionRecord {
            version,
            digest: v.digest.clone(),
            bytes: v.total_bytes,
        });
        rec.highest = version;
        self.commit(next)?;
        Ok(Installed {
            name,
            version,
            dir: dest,
        })
    }

    /// Confirms `name`'s trial version healthy: it becomes `active`, the old active becomes
    /// `previous`, and the old previous is deleted.
    pub fn confirm(&mut self, name: &str) -> Result<(), StoreError> {
        let mut next = self.state.clone();
        let rec = next
            .models
            .get_mut(name)
            .ok_or_else(|| StoreError::NoTrial { name: name.into() })?;
        let trial = rec
            .trial
            .take()
            .ok_or_else(|| StoreError::NoTrial { name: name.into() })?;
        let dropped = rec.previous.take();
        rec.previous = rec.active.replace(trial);
        self.step("confirm")?;
        self.commit(next)?;
        self.step("confirmed")?;
        if let Some(old) = dropped {
            self.discard_version(name, old.version)?;
        }
        Ok(())
    }

    /// Rolls `name` back: a version on trial is dropped (the health check failed; `active`
    /// stays what it was), otherwise `active` returns to `previous` (a technician's
    /// decision on the device; the fleet's is [`rollback_to`](Self::rollback_to)). The
    /// version left is deleted with its manifest and never installed again
    /// ([`ModelRecord::highest`]). Returns the version left.
    pub fn rollback(&mut self, name: &str) -> Result<u64, StoreError> {
        let mut next = self.state.clone();
        let rec = next
            .models
            .get_mut(name)
            .ok_or_else(|| StoreError::NoPrevious { name: name.into() })?;
        let dropped = if let Some(t) = rec.trial.take() {
            t
        } else if let Some(p) = rec.previous.take() {
            match rec.active.replace(p) {
                Some(a) => a,
                None => return Err(StoreError::NoPrevious { name: name.into() }),
            }
        } else {
            return Err(StoreError::NoPrevious { name: name.into() });
        };
        self.leave(next, name, dropped.version)
    }

    /// Applies a verified rollback order: `active` returns to `previous`, and the version
    /// left is deleted with its manifest and never installed again. Refused, changing
    /// nothing, unless the order's `from_version` is the active version and its
    /// `to_version` the previous one ([`StoreError::RollbackMismatch`], naming both and
    /// what the store holds), or while a version is on trial. Because the version left can
    /// never be active again (versions only move forward), an order applies at most once:
    /// replayed, it is refused. Returns the version left (`from_version`).
    pub fn rollback_to(&mut self, order: &VerifiedRollback) -> Result<u64, StoreError> {
        let o = &order.order;
        let (name, from, to) = (o.name.as_str(), o.from_version, o.to_version);
        let mut next = self.state.clone();
        let Some(rec) = next.models.get_mut(name) else {
            return Err(StoreError::RollbackMismatch {
                name: name.into(),
                from,
                to,
                active: None,
                previous: None,
            });
        };
        if let Some(t) = &rec.trial {
            return Err(StoreError::TrialPending {
                name: name.into(),
                version: t.version,
            });
        }
        let active = rec.active.as_ref().map(|v| v.version);
        let previous = rec.previous.as_ref().map(|v| v.version);
        if active != Some(from) || previous != Some(to) {
            return Err(StoreError::RollbackMismatch {
                name: name.into(),
                from,
                to,
                active,
                previous,
            });
        }
        rec.active = rec.previous.take();
        self.leave(next, name, from)
    }

    /// Commits `next` (where `name`'s `version` is no longer recorded), then deletes that
    /// version's directory and manifest. Returns `version`.
    fn leave(&mut self, next: StoreState, name: &str, version: u64) -> Result<u64, StoreError> {
        self.step("rollback")?;
        self.commit(next)?;
        self.step("rolled back")?;
        self.discard_version(name, version)?;
        Ok(version)
    }

    /// The signed manifest `name`'s `version` was installed from, as received: opened
    /// without following a symbolic link, a regular file of at most
    /// [`MAX_MANIFEST_BYTES`], whose digest is the one the state records (else
    /// [`StoreError::Manifest`] says which). Only for a version the store holds (active,
    /// previous or on trial; else [`StoreError::NotInstalled`]). Its signature is not
    /// checked here: see [`crate::model::verify_installed_manifest`].
    pub fn manifest(&self, name: &str, version: u64) -> Result<Vec<u8>, StoreError> {
        let rec = self
            .state
            .models
            .get(name)
            .and_then(|r| {
                [&r.active, &r.previous, &r.trial]
                    .into_iter()
                    .flatten()
                    .find(|v| v.version == version)
            })
            .ok_or_else(|| StoreError::NotInstalled {
                name: name.into(),
                version,
            })?;
        read_manifest(&self.manifest_path(name, version), &rec.digest)?.map_err(|reason| {
            StoreError::Manifest {
                name: name.into(),
                version,
                reason,
            }
        })
    }

    /// `name`'s confirmed active version and its directory.
    pub fn active(&self, name: &str) -> Option<(u64, PathBuf)> {
        let a = self.state.models.get(name)?.active.as_ref()?;
        Some((a.version, self.version_dir(name, a.version)))
    }

    /// `name`'s version on trial and its directory.
    pub fn trial(&self, name: &str) -> Option<(u64, PathBuf)> {
        let t = self.state.models.get(name)?.trial.as_ref()?;
        Some((t.version, self.version_dir(name, t.version)))
    }

    /// The records under `root` as they are, changing nothing (no recovery, no lock): for
    /// `aegis models list` while the agent runs. A store never opened lists nothing.
    pub fn inspect(root: &Path) -> Result<Vec<ModelEntry>, StoreError> {
        let state = read_state(&root.join(STATE_FILE))?;
        Ok(state
            .models
            .into_iter()
            .map(|(name, record)| ModelEntry { name, record })
            .collect())
    }

    /// Every model name with its record, sorted by name.
    pub fn list(&self) -> Vec<ModelEntry> {
        self.state
            .models
            .iter()
            .map(|(name, record)| ModelEntry {
                name: name.clone(),
                record: record.clone(),
            })
            .collect()
    }

    /// Bytes of every installed version (active, previous, trial) of every model.
    pub fn installed_bytes(&self) -> u64 {
        self.state
            .models
            .values()
            .flat_map(|r| [&r.active, &r.previous, &r.trial])
            .flatten()
            .fold(0u64, |acc, v| acc.saturating_add(v.bytes))
    }

    fn version_dir(&self, name: &str, version: u64) -> PathBuf {
        self.root.join(name).join(version.to_string())
    }

    fn manifest_path(&self, name: &str, version: u64) -> PathBuf {
        self.root
            .join(name)
            .join(format!("{version}.{MANIFEST_EXTENSION}"))
    }

    /// Deletes a version's directory and manifest (after the state stopped naming it).
    fn discard_version(&mut self, name: &str, version: u64) -> Result<(), StoreError> {
        let dir = self.version_dir(name, version);
        self.discard(&dir)?;
        let manifest = self.manifest_path(name, version);
        self.discard(&manifest)
    }

    fn check_installable(&self, name: &str, version: u64) -> Result<(), StoreError> {
        check_name(name).map_err(|reason| StoreError::Name {
            name: name.into(),
            reason,
        })?;
        if let Some(rec) = self.state.models.get(name) {
            if let Some(t) = &rec.trial {
                return Err(StoreError::TrialPending {
                    name: name.into(),
                    version: t.version,
                });
            }
            if version <= rec.highest {
                return Err(StoreError::NotNewer {
                    name: name.into(),
                    offered: version,
                    highest: rec.highest,
                });
            }
        }
        Ok(())
    }

    /// Why `name`'s version `v` cannot be used, or None when it is complete: a plain
    /// directory of exactly its recorded bytes with no symbolic link (a cheap check at
    /// start-up; the loader checks the hashes), and beside it its signed manifest with the
    /// recorded digest.
    fn incomplete(&self, name: &str, v: &VersionRecord) -> Result<Option<String>, StoreError> {
        let name_dir = self.root.join(name);
        match std::fs::symlink_metadata(&name_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Ok(Some(format!("{name} is not a directory"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Some(format!("{name} is missing")));
            }
            Err(e) => return Err(io(&name_dir)(e)),
        }
        match tree_info(&self.version_dir(name, v.version))? {
            None => {
                return Ok(Some(
                    "its directory is missing, not a plain directory, or holds a link or a \
                     special file"
                        .into(),
                ));
            }
            Some((bytes, _)) if bytes != v.bytes => {
                return Ok(Some(format!(
                    "its directory holds {bytes} bytes, the record says {}",
                    v.bytes
                )));
            }
            Some(_) => {}
        }
        Ok(
            read_manifest(&self.manifest_path(name, v.version), &v.digest)?
                .err()
                .map(|why| format!("its signed manifest: {why}")),
        )
    }

    /// Removes what the state does not name: unknown version directories and manifests
    /// (and temporary files) under a model's directory, and directories of names with no
    /// record (only entries shaped like a
    /// model name; anything else at the root is left alone).
    fn remove_orphans(&mut self, recovered: &mut Recovered) -> Result<(), StoreError> {
        let root = self.root.clone();
        for entry in std::fs::read_dir(&root).map_err(io(&root))? {
            let entry = entry.map_err(io(&root))?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            if check_name(&file_name).is_err() {
                continue;
            }
            let ft = entry.file_type().map_err(io(&entry.path()))?;
            let rec = match self.state.models.get(&file_name) {
                // A link or file where a model's directory belongs is never followed.
                Some(rec) if ft.is_dir() => rec.clone(),
                _ => {
                    recovered.push(format!(
                        "{file_name}: no record, or not a directory: removed"
                    ));
                    self.discard(&entry.path())?;
                    continue;
                }
            };
            let keep: Vec<String> = [&rec.active, &rec.previous, &rec.trial]
                .into_iter()
                .flatten()
                .flat_map(|v| {
                    [
                        v.version.to_string(),
                        format!("{}.{MANIFEST_EXTENSION}", v.version),
                    ]
                })
                .collect();
            let dir = entry.path();
            for sub in std::fs::read_dir(&dir).map_err(io(&dir))? {
                let sub = sub.map_err(io(&dir))?;
                let n = sub.file_name().to_string_lossy().into_owned();
                if !keep.contains(&n) {
                    recovered.push(format!("{file_name}/{n}: not in the state: removed"));
                    self.discard(&sub.path())?;
                }
            }
        }
        Ok(())
    }

    /// Sorts out `.staging` at start-up (see [`open`](Self::open)): keeps the downloads
    /// that may resume, removes the rest, one line each in `recovered`.
    fn recover_staging(&mut self, recovered: &mut Recovered) -> Result<(), StoreError> {
        let staging = self.root.join(STAGING_DIR);
        match std::fs::symlink_metadata(&staging) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                recovered.push(format!("{STAGING_DIR}: not a directory: removed"));
                remove_path(&staging)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&staging)(e)),
        }
        private_dir(&staging).map_err(io(&staging))?;
        let now = SystemTime::now();
        let mut keep: BTreeMap<String, Staged> = BTreeMap::new();
        let mut remove: Vec<(PathBuf, String)> = Vec::new();
        for entry in std::fs::read_dir(&staging).map_err(io(&staging))? {
            let entry = entry.map_err(io(&staging))?;
            let shown = format!("{STAGING_DIR}/{}", entry.file_name().to_string_lossy());
            let s = match self.staged(&entry, now)? {
                Ok(s) => s,
                Err(why) => {
                    remove.push((entry.path(), format!("{shown}: {why}: removed")));
                    continue;
                }
            };
            let newer = match keep.get(&s.name) {
                Some(k) if k.version > s.version => Some(k.version),
                _ => None,
            };
            if let Some(v) = newer {
                remove.push((
                    entry.path(),
                    format!("{shown}: version {v} is staged too: removed"),
                ));
            } else if let Some(old) = keep.insert(s.name.clone(), s) {
                let v = keep[&old.name].version;
                remove.push((
                    old.path,
                    format!(
                        "{STAGING_DIR}/{}-{}: version {v} is staged too: removed",
                        old.name, old.version
                    ),
                ));
            }
        }
        let mut used = self.installed_bytes();
        for s in keep.into_values() {
            let shown = format!("{STAGING_DIR}/{}-{}", s.name, s.version);
            let with = used.saturating_add(s.bytes);
            if with > self.budget {
                remove.push((
                    s.path,
                    format!(
                        "{shown}: its {} bytes do not fit the {}-byte budget beside {used} \
                         bytes in use: removed",
                        s.bytes, self.budget
                    ),
                ));
            } else {
                used = with;
                recovered.push(format!(
                    "{shown}: a download of {} bytes so far: kept (it resumes)",
                    s.bytes
                ));
            }
        }
        for (path, line) in remove {
            recovered.push(line);
            self.discard(&path)?;
        }
        Ok(())
    }

    /// A staging entry that may be kept (apart from the one-per-name and budget rules), or
    /// why not.
    fn staged(
        &self,
        entry: &std::fs::DirEntry,
        now: SystemTime,
    ) -> Result<Result<Staged, String>, StoreError> {
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else {
            return Ok(Err("not a UTF-8 name".into()));
        };
        let Some((name, ver)) = file_name.rsplit_once('-') else {
            return Ok(Err("not named <model>-<version>".into()));
        };
        if let Err(why) = check_name(name) {
            return Ok(Err(format!("model {why}")));
        }
        let version = match ver.parse::<u64>() {
            Ok(v) if v >= 1 && v.to_string() == ver => v,
            _ => return Ok(Err(format!("version {ver:?} is not a number from 1"))),
        };
        if !entry.file_type().map_err(io(&entry.path()))?.is_dir() {
            return Ok(Err("not a directory (or a symbolic link)".into()));
        }
        let highest = self.state.models.get(name).map_or(0, |r| r.highest);
        if version <= highest {
            return Ok(Err(format!(
                "version {version} is not above version {highest}, the highest installed"
            )));
        }
        let Some((bytes, newest)) = tree_info(&entry.path())? else {
            return Ok(Err(
                "holds a symbolic link or a special file, or is nested too deep".into(),
            ));
        };
        let age = now.duration_since(newest).unwrap_or_default();
        if age > STAGING_MAX_AGE {
            return Ok(Err(format!(
                "last written {} days ago (kept for {})",
                age.as_secs() / 86_400,
                STAGING_MAX_AGE.as_secs() / 86_400
            )));
        }
        Ok(Ok(Staged {
            name: name.to_string(),
            version,
            path: entry.path(),
            bytes,
        }))
    }

    /// Deletes `path` crash-safely: renamed into the trash first (so a half-deleted tree
    /// never sits where a version is looked for), then removed.
    fn discard(&mut self, path: &Path) -> Result<(), StoreError> {
        let trash = self.root.join(TRASH_DIR);
        private_dir(&trash).map_err(io(&trash))?;
        let mut n = 0u32;
        let target = loop {
            let t = trash.join(format!("{}-{n}", std::process::id()));
            if std::fs::symlink_metadata(&t).is_err() {
                break t;
            }
            n += 1;
        };
        match std::fs::rename(path, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(path)(e)),
        }
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
        self.step("moved to the trash")?;
        remove_path(&target)
    }

    /// Writes `next` as the state (the commit point), then holds it in memory.
    fn commit(&mut self, mut next: StoreState) -> Result<(), StoreError> {
        next.format = STATE_FORMAT;
        next.models.retain(|_, r| {
            r.active.is_some() || r.previous.is_some() || r.trial.is_some() || r.highest > 0
        });
        let path = self.root.join(STATE_FILE);
        let bytes = serde_json::to_vec_pretty(&next).map_err(|e| StoreError::State {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_atomic(&path, &bytes).map_err(io(&path))?;
        self.state = next;
        Ok(())
    }

    #[cfg(test)]
    fn step(&mut self, what: &'static str) -> Result<(), StoreError> {
        match self.crash_after.as_mut() {
            Some(0) => Err(StoreError::Interrupted(what)),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn step(&mut self, _what: &'static str) -> Result<(), StoreError> {
        Ok(())
    }
}

/// Reads and validates the state file (absent: empty).
fn read_state(path: &Path) -> Result<StoreState, StoreError> {
    let bad = |reason: String| StoreError::State {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = match crate::fsutil::read_bounded(path, MAX_STATE_BYTES) {
        Ok(Some(b)) => b,
        Ok(None) => {
            return Ok(StoreState {
                format: STATE_FORMAT,
                models: BTreeMap::new(),
            });
        }
        Err(crate::fsutil::ReadError::Io(e)) => return Err(io(path)(e)),
        Err(e) => return Err(bad(e.to_string())),
    };
    let state: StoreState = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if state.format != STATE_FORMAT {
        return Err(bad(format!(
            "format {} (this agent reads {STATE_FORMAT})",
            state.format
        )));
    }
    for (name, rec) in &state.models {
        check_name(name).map_err(|r| bad(format!("model {r}")))?;
        let versions = [
            ("active", &rec.active),
            ("previous", &rec.previous),
            ("trial", &rec.trial),
        ];
        for (what, v) in versions {
            let Some(v) = v else { continue };
            if v.version == 0 || v.version > rec.highest {
                return Err(bad(format!(
                    "model {name:?}: {what} version {} is not between 1 and highest {}",
                    v.version, rec.highest
                )));
            }
            if !is_sha256_hex(&v.digest) {
                return Err(bad(format!(
                    "model {name:?}: {what} digest {:?} is not a sha256",
                    v.digest
                )));
            }
        }
        let order = |lo: &Option<VersionRecord>, hi: &Option<VersionRecord>| match (lo, hi) {
            (Some(l), Some(h)) => l.version < h.version,
            _ => true,
        };
        if !order(&rec.previous, &rec.active)
            || !order(&rec.active, &rec.trial)
            || !order(&rec.previous, &rec.trial)
            || (rec.previous.is_some() && rec.active.is_none())
        {
            return Err(bad(format!(
                "model {name:?}: versions out of order (previous < active < trial required)"
            )));
        }
    }
    Ok(state)
}

/// The total size of the regular files under `dir` and the newest modification time of
/// anything in it (`dir` included), or None if it is missing, not a plain directory, or
/// holds a symbolic link or special file anywhere (depth bounded by the manifest path
/// rule).
fn tree_info(dir: &Path) -> Result<Option<(u64, SystemTime)>, StoreError> {
    fn walk(dir: &Path, depth: usize, newest: &mut SystemTime) -> Result<Option<u64>, StoreError> {
        if depth > crate::model::MAX_PATH_DEPTH {
            return Ok(None);
        }
        let mut total = 0u64;
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(io(&path))?;
            // `DirEntry::metadata` does not follow a link (and links are refused below).
            let meta = entry.metadata().map_err(io(&path))?;
            *newest = (*newest).max(meta.modified().map_err(io(&path))?);
            if ft.is_dir() {
                match walk(&path, depth + 1, newest)? {
                    Some(n) => total = total.saturating_add(n),
                    None => return Ok(None),
                }
            } else if ft.is_file() {
                total = total.saturating_add(meta.len());
            } else {
                return Ok(None);
            }
        }
        Ok(Some(total))
    }
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            let mut newest = m.modified().map_err(io(dir))?;
            Ok(walk(dir, 0, &mut newest)?.map(|bytes| (bytes, newest)))
        }
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(dir)(e)),
    }
}

/// Reads a kept signed manifest: a regular file (looked at before it is opened, so a
/// device node or socket is never opened; then opened without following a link nor
/// blocking on a FIFO, and looked at again) of at most [`MAX_MANIFEST_BYTES`] (read at
/// most one byte more), whose digest is `digest`. The inner error says what is wrong with
/// the file; the outer one is an I/O failure other than its absence.
fn read_manifest(path: &Path, digest: &str) -> Result<Result<Vec<u8>, String>, StoreError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => {
            return Ok(Err(format!("{} is a symbolic link", path.display())));
        }
        Ok(m) if !m.is_file() => {
            return Ok(Err(format!("{} is not a regular file", path.display())));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("{} is missing", path.display())));
        }
        Err(e) => return Err(io(path)(e)),
    }
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Err(format!("{} is missing", path.display())));
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(Err(format!("{} is a symbolic link", path.display())));
        }
        Err(e) => return Err(io(path)(e)),
    };
    let meta = file.metadata().map_err(io(path))?;
    if !meta.is_file() {
        return Ok(Err(format!("{} is not a regular file", path.display())));
    }
    let mut bytes = Vec::new();
    file.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(io(path))?;
    if bytes.len() > MAX_MANIFEST_BYTES {
        return Ok(Err(format!(
            "{} is larger than {MAX_MANIFEST_BYTES} bytes",
            path.display()
        )));
    }
    Ok(match manifest_digest(&bytes) {
        Ok(d) if d == digest => Ok(bytes),
        Ok(d) => Err(format!(
            "{} has digest {d}, the state records {digest}",
            path.display()
        )),
        Err(e) => Err(format!("{}: {e}", path.display())),
    })
}

/// Removes a file, link or directory tree (never following a link: `remove_dir_all` removes
/// a link, not its target); absent is fine.
fn remove_path(path: &Path) -> Result<(), StoreError> {
    let r = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io(dir))
}
