//! Event clips and the evidence policy (`pipeline.evidence`, docs/evidence.md).
//!
//! * [`ClipTap`] (one per stream, on the record sink's encoder) cuts the clips: pre-roll from
//!   a keyframe, post-roll after the last event, overlapping events in one clip, sealed and
//!   signed as they are written.
//! * [`Evidence`] holds the policy and what is kept: it decides which events keep a clip
//!   (the first matching `keep` entry), keeps moderation hits as metadata only unless the
//!   policy says otherwise, indexes every clip in the store (`clips`), deletes clips past
//!   their retention and the oldest ones over the disk budget — never one under legal hold
//!   (a `<id>.hold` marker beside the clip, so the CLI and the agent agree without talking)
//!   — and re-indexes complete clips a crash left unindexed.

mod clip;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use aegis_config::{EvidenceConfig, EvidenceTrigger, KeepRule, SourceConfig};
use aegis_ota::evidence::{ClipManifest, Geotag, SealKey};
use aegis_ota::sign::SecretKey;
use serde_json::json;

pub use clip::{
    ClipSettings, ClipTap, FinishedClip, MANIFEST_SUFFIX, OnClip, PacketCapture, Trigger,
    manifest_path, recover,
};

use crate::store::{ClipRow, Record, StoreHandle, now_us};

/// The device's evidence (sealing) key, beside its signing key in `workflows.keys_dir`.
pub const SEAL_KEY_FILE: &str = "evidence.key";
const SEAL_KEY_HEADER: &str = "aegis-evidence-key-v1";
/// Retention of manual clips when no `on: manual` entry says otherwise.
const MANUAL_RETENTION_DAYS: u32 = 30;
/// Detection triggers remembered per stream (track, entry), so a track fires once per entry.
const FIRED_MEMORY: usize = 4096;
/// How often retention is enforced when nothing else happens.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
const DAY_US: i64 = 86_400_000_000;

/// What the policy decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// The event kind.
    pub on: EvidenceTrigger,
    /// Keep video (false: the event's metadata only).
    pub imagery: bool,
    /// Days to keep it.
    pub retention_days: u32,
}

impl Decision {
    fn of(k: &KeepRule) -> Decision {
        Decision {
            on: k.on,
            imagery: k.keeps_imagery(),
            retention_days: k.retention_days,
        }
    }
}

/// Counts for metrics and status.
#[derive(Debug, Default)]
pub struct EvidenceCounters {
    /// Clips written.
    pub clips: AtomicU64,
    /// Clips lost to an error.
    pub failed: AtomicU64,
    /// Evidence records kept without imagery.
    pub metadata_only: AtomicU64,
    /// Clips deleted at the end of their retention.
    pub expired: AtomicU64,
    /// Clips deleted for the disk budget.
    pub evicted: AtomicU64,
}

struct Kept {
    id: String,
    path: PathBuf,
    disk_bytes: u64,
    retain_until_us: i64,
}

#[derive(Default)]
struct Ledger {
    /// Oldest first.
    clips: VecDeque<Kept>,
    used: u64,
}

/// One stream's detection triggers that fired: (track, `keep` entry).
#[derive(Default)]
struct Fired {
    set: HashSet<(u64, usize)>,
    order: VecDeque<(u64, usize)>,
}

/// A zone's name and polygon.
type NamedZone = (String, Vec<[f64; 2]>);

/// The evidence policy and the clips it keeps (module docs).
pub struct Evidence {
    cfg: EvidenceConfig,
    device: String,
    signer: Arc<SecretKey>,
    seal: Option<Arc<SealKey>>,
    store: Option<StoreHandle>,
    zones: HashMap<String, Vec<NamedZone>>,
    taps: Mutex<HashMap<String, Arc<ClipTap>>>,
    ledger: Mutex<Ledger>,
    fired: Mutex<HashMap<String, Fired>>,
    budget: u64,
    /// What happened so far.
    pub counters: EvidenceCounters,
}

/// Why evidence clips cannot start; each names the file or setting.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceStartError {
    /// No device signing key: manifests cannot be signed.
    #[error(
        "evidence clips need the device's signing key {path} to sign their manifests \
         (run `aegis provision`): {reason}"
    )]
    NoDeviceKey {
        /// The key file.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
    /// The sealing key could not be read or created.
    #[error("evidence sealing key {path}: {reason}")]
    SealKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The clips directory is unusable.
    #[error("evidence directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl std::fmt::Debug for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Evidence")
            .field("dir", &self.cfg.dir)
            .field("sealed", &self.seal.is_some())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Reads the device's sealing key, creating it (0600) on first use.
pub fn load_or_create_seal_key(keys_dir: &Path) -> Result<SealKey, EvidenceStartError> {
    load_seal_key(keys_dir, true)
}

/// Reads the device's sealing key (with the secret-key checks: a regular file of this user,
/// no group or other permissions, no link); with `create`, makes it (0600, never
/// overwriting) when there is none.
pub fn load_seal_key(keys_dir: &Path, create: bool) -> Result<SealKey, EvidenceStartError> {
    let path = keys_dir.join(SEAL_KEY_FILE);
    let err = |reason: String| EvidenceStartError::SealKey {
        path: path.clone(),
        reason,
    };
    if create && !path.exists() {
        let key = SealKey::generate().map_err(|e| err(e.to_string()))?;
        let text = zeroize::Zeroizing::new(format!(
            "{SEAL_KEY_HEADER}\n{}\n",
            aegis_ota::evidence::hex(key.bytes())
        ));
        aegis_ota::fsutil::private_dir(keys_dir).map_err(|e| err(e.to_string()))?;
        aegis_ota::write_private(&path, text.as_bytes()).map_err(|(_, why)| err(why))?;
        tracing::info!(key = %path.display(), "created the evidence sealing key");
        return Ok(key);
    }
    let bytes = aegis_ota::read_private(&path).map_err(|(_, why)| err(why))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| err("not UTF-8 text".into()))?;
    let mut lines = text.lines();
    if lines.next() != Some(SEAL_KEY_HEADER) {
        return Err(err(format!(
            "not an evidence key (its first line must be {SEAL_KEY_HEADER})"
        )));
    }
    let hex = lines.next().unwrap_or("").trim();
    let key: Option<zeroize::Zeroizing<Vec<u8>>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .map(zeroize::Zeroizing::new);
    SealKey::from_bytes(&key.ok_or_else(|| err("the key is not hex".into()))?)
        .map_err(|e| err(e.to_string()))
}

/// `<id>.hold` beside a clip: a legal hold.
pub fn hold_path(clip: &Path) -> PathBuf {
    let m = manifest_path(clip);
    let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("");
    m.with_file_name(name.replace(MANIFEST_SUFFIX, ".hold"))
}

/// Point in polygon (even-odd), image fractions.
fn inside(p: (f64, f64), poly: &[[f64; 2]]) -> bool {
    aegis_sensors::rules::inside(p, poly)
}

impl Evidence {
    /// Opens the evidence store for `cfg`: the device key from `keys_dir` (required), the
    /// sealing key (created when missing) when `cfg.encrypt`, crash leftovers cleaned (with
    /// `clean`: the first open of this directory in this process) and complete clips
    /// re-indexed, retention and the disk budget enforced.
    pub fn open(
        cfg: &EvidenceConfig,
        sources: &[SourceConfig],
        device: &str,
        keys_dir: &Path,
        store: Option<StoreHandle>,
        clean: bool,
    ) -> Result<Arc<Evidence>, EvidenceStartError> {
        let key_path = keys_dir.join("device.key");
        let signer = SecretKey::read(&key_path).map_err(|e| EvidenceStartError::NoDeviceKey {
            path: key_path.clone(),
            reason: e.to_string(),
        })?;
        let seal = if cfg.encrypt {
            Some(Arc::new(load_or_create_seal_key(keys_dir)?))
        } else {
            None
        };
        std::fs::create_dir_all(&cfg.dir).map_err(|source| EvidenceStartError::Dir {
            path: cfg.dir.clone(),
            source,
        })?;
        let complete = recover(&cfg.dir, clean).map_err(|source| EvidenceStartError::Dir {
            path: cfg.dir.clone(),
            source,
        })?;
        let evidence = Arc::new(Evidence {
            cfg: cfg.clone(),
            device: device.to_string(),
            signer: Arc::new(signer),
            seal,
            store,
            zones: sources
                .iter()
                .map(|s| {
                    let zones = s.zones.iter().map(|z| (z.name.clone(), z.polygon.clone()));
                    (s.id.clone(), zones.collect())
                })
                .collect(),
            taps: Mutex::default(),
            ledger: Mutex::default(),
            fired: Mutex::default(),
            budget: cfg.disk_budget_mb.saturating_mul(1 << 20),
            counters: EvidenceCounters::default(),
        });
        evidence.reindex(complete);
        evidence.enforce(now_us());
        let weak = Arc::downgrade(&evidence);
        std::thread::Builder::new()
            .name("evidence-sweep".into())
            .spawn(move || sweep_loop(weak))
            .ok();
        Ok(evidence)
    }

    /// The clips directory.
    pub fn dir(&self) -> &Path {
        &self.cfg.dir
    }

    /// The key clips are sealed under, when they are.
    pub fn seal_key(&self) -> Option<&SealKey> {
        self.seal.as_deref()
    }

    /// The tap for `stream`'s recorder (made on first use).
    pub fn tap(self: &Arc<Self>, stream: &str) -> Arc<ClipTap> {
        let mut taps = lock(&self.taps);
        if let Some(t) = taps.get(stream) {
            return t.clone();
        }
        let weak = Arc::downgrade(self);
        let on_clip: OnClip = Box::new(move |r| {
            if let Some(e) = weak.upgrade() {
                e.finished(r);
            }
        });
        let tap = Arc::new(ClipTap::new(
            ClipSettings {
                dir: self.cfg.dir.clone(),
                stream: stream.to_string(),
                device: self.device.clone(),
                pre_roll: Duration::from_secs_f64(self.cfg.pre_roll_seconds),
                post_roll: Duration::from_secs_f64(self.cfg.post_roll_seconds),
                max_clip: Duration::from_secs_f64(self.cfg.max_clip_seconds),
                seal: self.seal.clone(),
                signer: self.signer.clone(),
            },
            on_clip,
        ));
        taps.insert(stream.to_string(), tap.clone());
        tap
    }

    fn first(&self, on: EvidenceTrigger, matches: impl Fn(&KeepRule) -> bool) -> Option<Decision> {
        self.cfg
            .keep
            .iter()
            .find(|k| k.on == on && matches(k))
            .map(Decision::of)
    }

    /// A tracked object on `stream`: the first `detection` entry it satisfies (label, and
    /// its foot point inside the entry's zone), once per track and entry; with the zone's
    /// name.
    pub fn decide_detection(
        &self,
        stream: &str,
        track_id: u64,
        label: &str,
        foot: (f64, f64),
    ) -> Option<(Decision, Option<String>)> {
        let zones = self.zones.get(stream);
        let (index, k) = self.cfg.keep.iter().enumerate().find(|(_, k)| {
            k.on == EvidenceTrigger::Detection
                && (k.labels.is_empty() || k.labels.iter().any(|l| l == label))
                && k.zone.as_ref().is_none_or(|name| {
                    zones
                        .and_then(|z| z.iter().find(|(n, _)| n == name))
                        .is_some_and(|(_, poly)| inside(foot, poly))
                })
        })?;
        // Called for every tracked object of every frame: a track that fired already is
        // found without allocating (the stream's entry is made once).
        let key = (track_id, index);
        let mut streams = lock(&self.fired);
        let fired = match streams.get_mut(stream) {
            Some(f) => f,
            None => streams.entry(stream.to_string()).or_default(),
        };
        if !fired.set.insert(key) {
            return None;
        }
        fired.order.push_back(key);
        if fired.order.len() > FIRED_MEMORY
            && let Some(old) = fired.order.pop_front()
        {
            fired.set.remove(&old);
        }
        Some((Decision::of(k), k.zone.clone()))
    }

    /// A moderation verdict: flagged frames only.
    pub fn decide_moderation(&self, flagged: bool) -> Option<Decision> {
        if !flagged {
            return None;
        }
        self.first(EvidenceTrigger::Moderation, |_| true)
    }

    /// A rule fired.
    pub fn decide_rule(&self, rule: &str) -> Option<Decision> {
        self.first(EvidenceTrigger::Rule, |k| {
            k.rule.as_deref().is_none_or(|r| r == rule)
        })
    }

    /// A manual request: always kept (an `on: manual` entry may set retention or imagery).
    pub fn decide_manual(&self) -> Decision {
        self.first(EvidenceTrigger::Manual, |_| true)
            .unwrap_or(Decision {
                on: EvidenceTrigger::Manual,
                imagery: true,
                retention_days: MANUAL_RETENTION_DAYS,
            })
    }

    /// Keeps what `decision` says for the event `event_id` on `stream` at frame time `pts_us`
    /// (wall clock `wall_us`): a clip around it, or its metadata only.
    pub fn keep(
        self: &Arc<Self>,
        stream: &str,
        decision: Decision,
        event_id: &str,
        pts_us: i64,
        wall_us: i64,
        geotag: Option<Geotag>,
    ) {
        let retain_until_us =
            wall_us.saturating_add(i64::from(decision.retention_days).saturating_mul(DAY_US));
        let trigger = Trigger {
            pts_us,
            wall_us,
            kind: decision.on.as_str().to_string(),
            event_id: event_id.to_string(),
            geotag,
            retain_until_us,
        };
        if decision.imagery {
            self.tap(stream).trigger(trigger);
            return;
        }
        self.counters.metadata_only.fetch_add(1, Ordering::Relaxed);
        if let Some(store) = &self.store {
            store.submit(Record::Clip(Box::new(ClipRow {
                id: crate::store::new_event_id(),
                stream: stream.to_string(),
                start_us: wall_us,
                end_us: wall_us,
                path: None,
                manifest: None,
                sha256: None,
                bytes: None,
                frames: None,
                sealed: false,
                imagery: false,
                kinds: trigger.kind.clone(),
                events: json!([{ "id": event_id, "kind": trigger.kind, "ts_us": wall_us }]),
                retain_until_us,
                legal_hold: false,
                deleted_us: None,
                deleted_why: None,
            })));
        }
    }

    /// A clip asked for by a technician or the fleet, around the newest frame of `stream`:
    /// the event id.
    pub fn manual(self: &Arc<Self>, stream: &str, actor: &str) -> Result<String, String> {
        let tap = lock(&self.taps).get(stream).cloned();
        let pts_us = tap
            .and_then(|t| t.newest_pts_us())
            .ok_or_else(|| format!("stream {stream:?} has no recorded video yet"))?;
        let id = crate::store::new_event_id();
        let wall_us = now_us();
        if let Some(store) = &self.store {
            store.submit(Record::Event {
                event: crate::store::Event {
                    id: id.clone(),
                    ts_us: wall_us,
                    stream: Some(stream.to_string()),
                    kind: "manual_clip".into(),
                    payload: json!({ "actor": actor, "pts_us": pts_us }),
                },
                outbox_topic: None,
            });
        }
        self.keep(stream, self.decide_manual(), &id, pts_us, wall_us, None);
        Ok(id)
    }

    /// Closes every open clip (the pipeline stops).
    pub fn close_all(&self) {
        let taps: Vec<Arc<ClipTap>> = lock(&self.taps).values().cloned().collect();
        for t in taps {
            t.close();
        }
    }

    fn row(&self, c: &FinishedClip) -> ClipRow {
        let m = &c.manifest;
        let kinds: Vec<&str> = m.events.iter().map(|e| e.kind.as_str()).collect();
        ClipRow {
            id: m.clip_id.clone(),
            stream: m.stream.clone(),
            start_us: m.start_us,
            end_us: m.end_us,
            path: Some(c.path.display().to_string()),
            manifest: Some(c.manifest_path.display().to_string()),
            sha256: Some(m.sha256.clone()),
            bytes: Some(m.bytes),
            frames: Some(m.frames),
            sealed: c.sealed,
            imagery: true,
            kinds: kinds.join(","),
            events: serde_json::to_value(&m.events).unwrap_or_default(),
            retain_until_us: m.retain_until_us,
            legal_hold: hold_path(&c.path).exists(),
            deleted_us: None,
            deleted_why: None,
        }
    }

    fn finished(&self, r: Result<FinishedClip, String>) {
        match r {
            Ok(c) => {
                self.counters.clips.fetch_add(1, Ordering::Relaxed);
                tracing::info!(clip = %c.path.display(), stream = %c.manifest.stream,
                    frames = c.manifest.frames, events = c.manifest.events.len(), "event clip written");
                self.index(c);
                self.enforce(now_us());
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "event clip lost");
            }
        }
    }

    fn index(&self, c: FinishedClip) {
        if let Some(store) = &self.store {
            store.submit(Record::Clip(Box::new(self.row(&c))));
        }
        let mut l = lock(&self.ledger);
        l.used += c.disk_bytes;
        let kept = Kept {
            id: c.manifest.clip_id.clone(),
            path: c.path,
            disk_bytes: c.disk_bytes,
            retain_until_us: c.manifest.retain_until_us,
        };
        // Oldest first (ids are UUIDv7: time-ordered); a re-indexed clip may be older than
        // the newest one.
        let at = l
            .clips
            .iter()
            .position(|k| k.id > kept.id)
            .unwrap_or(l.clips.len());
        l.clips.insert(at, kept);
    }

    /// Complete clips found at start: verified with the device's own key, indexed again
    /// (`INSERT OR IGNORE`: the ones the store has stay as they are).
    fn reindex(&self, complete: Vec<PathBuf>) {
        for path in complete {
            let manifest_path = manifest_path(&path);
            let manifest = std::fs::read(&manifest_path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    aegis_ota::evidence::verify_manifest(&b, self.signer.public())
                        .map_err(|e| e.to_string())
                });
            match manifest {
                Ok(manifest) => {
                    let disk_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    let sealed = path.to_string_lossy().ends_with(".sealed");
                    self.index(FinishedClip {
                        path,
                        manifest_path,
                        manifest,
                        sealed,
                        disk_bytes,
                    });
                }
                Err(e) => tracing::warn!(clip = %path.display(), error = %e,
                    "a clip whose manifest does not verify with this device's key: left alone"),
            }
        }
    }

    /// Deletes clips past their retention, then the oldest while over the disk budget;
    /// clips under legal hold stay whatever happens.
    pub fn enforce(&self, now: i64) {
        let mut gone: Vec<(Kept, &'static str)> = Vec::new();
        {
            let mut l = lock(&self.ledger);
            let mut i = 0;
            while i < l.clips.len() {
                let k = &l.clips[i];
                if k.retain_until_us < now && !hold_path(&k.path).exists() {
                    let k = l.clips.remove(i).expect("index in range");
                    l.used -= k.disk_bytes;
                    gone.push((k, "retention"));
                } else {
                    i += 1;
                }
            }
            let mut i = 0;
            while l.used > self.budget && i < l.clips.len() {
                if hold_path(&l.clips[i].path).exists() {
                    i += 1;
                    continue;
                }
                let k = l.clips.remove(i).expect("index in range");
                l.used -= k.disk_bytes;
                gone.push((k, "disk_budget"));
            }
        }
        for (k, why) in gone {
            let counter = if why == "retention" {
                &self.counters.expired
            } else {
                &self.counters.evicted
            };
            counter.fetch_add(1, Ordering::Relaxed);
            for p in [manifest_path(&k.path), k.path.clone()] {
                if let Err(e) = std::fs::remove_file(&p)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(file = %p.display(), error = %e, "cannot delete a clip");
                }
            }
            tracing::info!(clip = %k.path.display(), why, "event clip deleted");
            if let Some(store) = &self.store {
                store.submit(Record::ClipDeleted {
                    id: k.id,
                    ts_us: now,
                    why: why.into(),
                });
            }
        }
    }

    /// Bytes the clips on disk use, and how many there are.
    pub fn usage(&self) -> (u64, usize) {
        let l = lock(&self.ledger);
        (l.used, l.clips.len())
    }

    /// The plain MP4 of `clip` (one of this device's), checked against its signed manifest,
    /// into `out`: the manifest.
    pub fn export_clip(
        &self,
        clip: &Path,
        out: &mut dyn std::io::Write,
    ) -> Result<ClipManifest, String> {
        export(clip, self.seal.as_deref(), self.signer.public(), out)
    }

    #[cfg(test)]
    fn find_id(&self, path: &Path) -> String {
        lock(&self.ledger)
            .clips
            .iter()
            .find(|k| k.path == path)
            .map(|k| k.id.clone())
            .unwrap_or_default()
    }
}

fn sweep_loop(weak: Weak<Evidence>) {
    loop {
        std::thread::sleep(SWEEP_EVERY);
        match weak.upgrade() {
            Some(e) => e.enforce(now_us()),
            None => return,
        }
    }
}

/// Rows of `clips` in the store file `db`, newest first (of `stream`, when given).
pub fn clip_rows(db: &Path, stream: Option<&str>, limit: u32) -> Result<Vec<ClipRow>, String> {
    let conn = crate::store::open_reader(db).map_err(|e| e.to_string())?;
    let mut q = conn
        .prepare(&format!(
            "SELECT {} FROM clips WHERE ?1 IS NULL OR stream = ?1 ORDER BY start_us DESC LIMIT ?2",
            crate::store::CLIP_COLUMNS
        ))
        .map_err(|e| e.to_string())?;
    q.query_map(rusqlite::params![stream, limit], ClipRow::from_row)
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(|e| e.to_string())
}

/// Puts the clip `id` under `dir` under legal hold (or releases it): the marker file beside
/// it, which the agent's budget and retention honour. The clip's path.
pub fn set_hold(dir: &Path, id: &str, hold: bool) -> Result<PathBuf, String> {
    let clip = find_clip(dir, id)?;
    let marker = hold_path(&clip);
    if hold {
        aegis_ota::fsutil::write_atomic(&marker, b"legal hold\n")
            .map_err(|e| format!("writing {}: {e}", marker.display()))?;
    } else if let Err(e) = std::fs::remove_file(&marker)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        return Err(format!("removing {}: {e}", marker.display()));
    }
    Ok(clip)
}

/// The clip file with this id under `dir` (any stream).
pub fn find_clip(dir: &Path, id: &str) -> Result<PathBuf, String> {
    if !clip::is_clip_id(id) {
        return Err(format!("{id:?} is not a clip id"));
    }
    let streams = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for s in streams.flatten() {
        for name in [format!("{id}.mp4"), format!("{id}.mp4.sealed")] {
            let p = s.path().join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    Err(format!("no clip {id} under {}", dir.display()))
}

/// Writes the plain MP4 of `clip` (unsealed with `key` when it is sealed) to `out`, and checks
/// it against its signed manifest with `device`'s public key: the manifest.
pub fn export(
    clip: &Path,
    key: Option<&SealKey>,
    device: &aegis_ota::sign::PublicKey,
    out: &mut dyn std::io::Write,
) -> Result<ClipManifest, String> {
    let manifest = std::fs::read(manifest_path(clip)).map_err(|e| format!("manifest: {e}"))?;
    let file = std::fs::File::open(clip).map_err(|e| format!("{}: {e}", clip.display()))?;
    let mut plain = Vec::new();
    if clip.to_string_lossy().ends_with(".sealed") {
        let key = key.ok_or("the clip is sealed and no evidence key was given")?;
        aegis_ota::evidence::unseal(std::io::BufReader::new(file), &mut plain, key)
            .map_err(|e| e.to_string())?;
    } else {
        use std::io::Read;
        std::io::BufReader::new(file)
            .read_to_end(&mut plain)
            .map_err(|e| e.to_string())?;
    }
    let m = aegis_ota::evidence::verify_clip(&manifest, &plain[..], device)
        .map_err(|e| e.to_string())?;
    out.write_all(&plain).map_err(|e| e.to_string())?;
    Ok(m)
}

/// The evidence of the running pipeline, with the policy and sources it was opened for.
type Running = (EvidenceConfig, Vec<SourceConfig>, Arc<Evidence>);

/// What the agent keeps across pipeline starts: the keys' directory, the store, and the
/// [`Evidence`] of the running pipeline (reused while its policy and zones stay the same).
pub struct EvidenceHost {
    keys_dir: PathBuf,
    device: String,
    store: Option<StoreHandle>,
    db: Option<PathBuf>,
    current: Mutex<Option<Running>>,
    error: Mutex<Option<String>>,
    /// Directories already cleaned of crash leftovers in this process.
    cleaned: Mutex<HashSet<PathBuf>>,
}

impl EvidenceHost {
    /// Evidence for pipelines of this device; `db` is the store's file (read for listings).
    pub fn new(
        keys_dir: &Path,
        device: &str,
        store: Option<StoreHandle>,
        db: Option<PathBuf>,
    ) -> Self {
        EvidenceHost {
            keys_dir: keys_dir.to_path_buf(),
            device: device.to_string(),
            store,
            db,
            current: Mutex::default(),
            error: Mutex::default(),
            cleaned: Mutex::default(),
        }
    }

    /// The evidence of a pipeline about to start: `None` when it has no `evidence` section,
    /// or when it cannot be opened — video runs on without clips, and the reason is logged,
    /// audited and shown ([`Self::status`]).
    pub fn for_pipeline(&self, cfg: &aegis_config::PipelineConfig) -> Option<Arc<Evidence>> {
        let mut current = lock(&self.current);
        let Some(e) = &cfg.evidence else {
            *current = None;
            *lock(&self.error) = None;
            return None;
        };
        if let Some((c, s, ev)) = current.as_ref()
            && c == e
            && s == &cfg.sources
        {
            return Some(ev.clone());
        }
        let clean = !lock(&self.cleaned).contains(&e.dir);
        let opened = Evidence::open(
            e,
            &cfg.sources,
            &self.device,
            &self.keys_dir,
            self.store.clone(),
            clean,
        );
        if opened.is_ok() {
            lock(&self.cleaned).insert(e.dir.clone());
        }
        match opened {
            Ok(ev) => {
                *current = Some((e.clone(), cfg.sources.clone(), ev.clone()));
                *lock(&self.error) = None;
                Some(ev)
            }
            Err(err) => {
                tracing::error!(error = %err, "event clips are off");
                if let Some(store) = &self.store {
                    store.submit(Record::Audit {
                        ts_us: now_us(),
                        actor: "agent".into(),
                        action: "evidence.off".into(),
                        detail: err.to_string(),
                    });
                }
                *current = None;
                *lock(&self.error) = Some(err.to_string());
                None
            }
        }
    }

    /// The running pipeline's evidence, if any.
    pub fn current(&self) -> Option<Arc<Evidence>> {
        lock(&self.current).as_ref().map(|(_, _, e)| e.clone())
    }

    fn running(&self) -> Result<Arc<Evidence>, String> {
        self.current().ok_or_else(|| {
            lock(&self.error).clone().map_or_else(
                || "event clips are not configured (pipeline.evidence)".to_string(),
                |e| format!("event clips are off: {e}"),
            )
        })
    }

    /// The fleet's clip commands: `keep_clip {stream}`, `list_clips {stream?, limit?}`,
    /// `get_clip_manifest {id}`, `hold_clip {id, hold}`.
    pub fn command(
        &self,
        name: &str,
        args: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let text = |k: &str| args.get(k).and_then(serde_json::Value::as_str);
        let id = || text("id").ok_or_else(|| format!("{name} needs {{\"id\": CLIP_ID}}"));
        match name {
            "keep_clip" => {
                let stream = text("stream").ok_or("keep_clip needs {\"stream\": STREAM}")?;
                let event = self.running()?.manual(stream, "fleet")?;
                Ok(json!({ "event_id": event, "stream": stream }))
            }
            "list_clips" => {
                let limit = match args.get("limit") {
                    None | Some(serde_json::Value::Null) => 50,
                    Some(v) => v
                        .as_u64()
                        .filter(|n| (1..=500).contains(n))
                        .ok_or_else(|| format!("limit must be 1 to 500, got {v}"))?,
                };
                let db = self.db.as_deref().ok_or("this run has no store")?;
                Ok(json!({ "clips": clip_rows(db, text("stream"), limit as u32)? }))
            }
            "get_clip_manifest" => {
                let clip = find_clip(self.running()?.dir(), id()?)?;
                let m = std::fs::read_to_string(manifest_path(&clip))
                    .map_err(|e| format!("the manifest: {e}"))?;
                Ok(json!({ "id": id()?, "manifest": m }))
            }
            "hold_clip" => {
                let hold = args
                    .get("hold")
                    .and_then(serde_json::Value::as_bool)
                    .ok_or("hold_clip needs {\"id\": CLIP_ID, \"hold\": true|false}")?;
                set_hold(self.running()?.dir(), id()?, hold)?;
                if let Some(store) = &self.store {
                    store.submit(Record::ClipHold {
                        id: id()?.to_string(),
                        hold,
                    });
                }
                Ok(json!({ "id": id()?, "legal_hold": hold }))
            }
            other => Err(format!("unknown clip command {other:?}")),
        }
    }

    /// A clip's plain MP4 (decrypted, checked against its signed manifest), at most
    /// `limit` bytes on disk.
    pub fn video(&self, id: &str, limit: u64) -> Result<Vec<u8>, String> {
        let ev = self.running()?;
        let clip = find_clip(ev.dir(), id)?;
        if std::fs::metadata(&clip).map(|m| m.len()).unwrap_or(0) > limit {
            return Err(format!(
                "clip {id} is larger than {limit} bytes; export it on the device (aegis evidence export)"
            ));
        }
        let mut out = Vec::new();
        ev.export_clip(&clip, &mut out)?;
        Ok(out)
    }

    /// For status and the web page: on/off, why off, counts, disk use.
    pub fn status(&self) -> serde_json::Value {
        if let Some(err) = lock(&self.error).clone() {
            return json!({ "state": "off", "error": err });
        }
        match self.current() {
            None => json!({ "state": "not configured" }),
            Some(e) => {
                let (used, clips) = e.usage();
                let c = &e.counters;
                json!({
                    "state": "on",
                    "dir": e.dir(),
                    "sealed": e.seal_key().is_some(),
                    "clips_on_disk": clips,
                    "disk_used_bytes": used,
                    "disk_budget_bytes": e.budget,
                    "written": c.clips.load(Ordering::Relaxed),
                    "failed": c.failed.load(Ordering::Relaxed),
                    "metadata_only": c.metadata_only.load(Ordering::Relaxed),
                    "expired": c.expired.load(Ordering::Relaxed),
                    "evicted": c.evicted.load(Ordering::Relaxed),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Store, StoreSettings};

    fn config(dir: &Path, keep: &str, budget_mb: u64) -> EvidenceConfig {
        let text = format!(
            "device: {{id: d}}\npipeline:\n  sources: [{{id: cam, url: clip.mp4, zones: [{{name: door, polygon: [[0, 0.5], [0.5, 0.5], [0.5, 1], [0, 1]]}}]}}]\n  sinks: [{{kind: record, dir: {rec}}}]\n  evidence:\n    dir: {ev}\n    disk_budget_mb: {budget_mb}\n    keep: {keep}\n",
            rec = dir.join("rec").display(),
            ev = dir.join("ev").display(),
        );
        aegis_config::from_yaml_str(&text, "t.yaml")
            .unwrap()
            .pipeline
            .evidence
            .unwrap()
    }

    fn open(dir: &Path, cfg: &EvidenceConfig, store: Option<StoreHandle>) -> Arc<Evidence> {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        if !keys.join("device.key").exists() {
            SecretKey::generate()
                .unwrap()
                .write(&keys.join("device.key"))
                .unwrap();
        }
        let sources = vec![{
            let mut s = SourceConfig::new("cam", "clip.mp4");
            s.zones = vec![aegis_config::ZoneConfig {
                name: "door".into(),
                polygon: vec![[0.0, 0.5], [0.5, 0.5], [0.5, 1.0], [0.0, 1.0]],
            }];
            s
        }];
        Evidence::open(cfg, &sources, "d", &keys, store, true).unwrap()
    }

    #[test]
    fn the_policy_decides_by_kind_label_zone_and_rule_and_fires_once_per_track() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(
            dir.path(),
            "[{on: detection, labels: [person], zone: door, retention_days: 7}, {on: moderation}, {on: rule, rule: r1, imagery: false}]",
            64,
        );
        let e = open(dir.path(), &cfg, None);
        // In the zone (bottom-left quarter), a person: yes, once per track.
        let (d, zone) = e.decide_detection("cam", 1, "person", (0.2, 0.9)).unwrap();
        assert_eq!(
            (d.imagery, d.retention_days, zone.as_deref()),
            (true, 7, Some("door"))
        );
        assert!(e.decide_detection("cam", 1, "person", (0.2, 0.9)).is_none());
        assert!(e.decide_detection("cam", 2, "person", (0.2, 0.9)).is_some());
        // Outside the zone, another label, another stream's zones: no.
        assert!(e.decide_detection("cam", 3, "person", (0.9, 0.9)).is_none());
        assert!(e.decide_detection("cam", 4, "car", (0.2, 0.9)).is_none());
        assert!(
            e.decide_detection("other", 5, "person", (0.2, 0.9))
                .is_none()
        );
        // Moderation hits keep no imagery by default; unflagged verdicts nothing.
        assert!(!e.decide_moderation(true).unwrap().imagery);
        assert!(e.decide_moderation(false).is_none());
        assert!(e.decide_rule("r1").is_some() && e.decide_rule("r2").is_none());
        // Manual always, 30 days by default.
        assert_eq!(e.decide_manual().retention_days, 30);
    }

    #[test]
    fn a_moderation_hit_keeps_its_metadata_and_no_frames_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(StoreSettings::for_test(dir.path())).unwrap();
        let cfg = config(dir.path(), "[{on: moderation}]", 64);
        let e = open(dir.path(), &cfg, Some(store.handle()));
        let d = e.decide_moderation(true).unwrap();
        e.keep("cam", d, "ev-1", 1_000_000, 1_800_000_000_000_000, None);
        assert!(store.handle().flush(Duration::from_secs(5)));
        let rows = clip_rows(store.path(), None, 10).unwrap();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert!(!r.imagery && r.path.is_none() && r.sha256.is_none());
        assert_eq!(r.kinds, "moderation");
        assert_eq!(r.events[0]["id"], "ev-1");
        // No clip was even started: the stream's tap has no pending trigger, nothing on disk.
        let on_disk: Vec<_> = walk(&cfg.dir);
        assert!(on_disk.is_empty(), "{on_disk:?}");
        assert_eq!(e.counters.metadata_only.load(Ordering::Relaxed), 1);
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for d in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if d.path().is_dir() {
                out.extend(walk(&d.path()));
            } else {
                out.push(d.path());
            }
        }
        out
    }

    /// A finished clip of `bytes` bytes, as the tap hands it over.
    fn fake_clip(e: &Evidence, n: u32, bytes: usize, retain_until_us: i64) -> FinishedClip {
        let id = format!("0190{n:04x}-0000-7000-8000-000000000000");
        let dir = e.dir().join("cam");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{id}.mp4"));
        std::fs::write(&path, vec![0u8; bytes]).unwrap();
        let manifest_path = manifest_path(&path);
        std::fs::write(&manifest_path, b"{}").unwrap();
        FinishedClip {
            path,
            manifest_path,
            manifest: ClipManifest {
                version: 1,
                clip_id: id,
                device: "d".into(),
                stream: "cam".into(),
                sha256: String::new(),
                bytes: bytes as u64,
                start_us: 0,
                end_us: 0,
                frames: 0,
                geotag: None,
                events: Vec::new(),
                retain_until_us,
                agent_version: String::new(),
            },
            sealed: false,
            disk_bytes: bytes as u64,
        }
    }

    #[test]
    fn a_burst_stays_inside_the_budget_oldest_first_and_held_clips_stay() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), "[]", 1);
        let e = open(dir.path(), &cfg, None);
        let far = i64::MAX / 2;
        let first = fake_clip(&e, 0, 300_000, far);
        let held = first.path.clone();
        e.finished(Ok(first));
        set_hold(e.dir(), &e.find_id(&held), true).unwrap();
        let mut paths = Vec::new();
        for n in 1..=20 {
            let c = fake_clip(&e, n, 300_000, far);
            paths.push(c.path.clone());
            e.finished(Ok(c));
            let (used, _) = e.usage();
            assert!(used <= 1 << 20, "{used} bytes after clip {n}");
        }
        // The held clip survived every eviction; the newest ones are there; the oldest not.
        assert!(held.exists() && hold_path(&held).exists());
        assert!(paths[19].exists() && paths[18].exists());
        assert!(!paths[0].exists() && !manifest_path(&paths[0]).exists());
        assert_eq!(e.counters.evicted.load(Ordering::Relaxed), 20 - 2);
        // Past its retention a clip goes — unless held.
        let old = fake_clip(&e, 99, 10, 5);
        let old_path = old.path.clone();
        e.finished(Ok(old));
        assert!(!old_path.exists());
        e.enforce(far + 1);
        assert!(held.exists(), "a held clip outlives its retention");
        set_hold(e.dir(), &e.find_id(&held), false).unwrap();
        e.enforce(far + 1);
        assert!(!held.exists());
    }
}
