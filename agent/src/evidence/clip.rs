//! Event clips of one stream, cut from the record sink's encoded packets (no second encode).
//!
//! [`ClipTap`] is a [`PacketTap`] on the stream's recorder. It keeps the last `pre_roll` of
//! packets in a [`PacketRing`] (from a keyframe), and on a [`Trigger`] opens a clip that starts
//! at the keyframe at or before `trigger - pre_roll` and ends `post_roll` after the last
//! trigger it covers: a trigger whose pre-roll reaches into the open clip extends it (up to
//! `max_clip`), so overlapping events make one clip; any other waits for a clip of its own.
//!
//! A clip is written as `<dir>/<stream>/<id>.mp4[.sealed].part` — fragmented MP4, sealed with
//! AES-256-GCM ([`aegis_ota::evidence::SealWriter`]) when a key is given, hashed (SHA-256 of
//! the plain MP4) as it goes — then, in this order: its signed manifest
//! (`<id>.manifest.json`, written atomically), the rename of the clip to its final name, the
//! callback that indexes it. [`recover`] at start removes what a crash left half-done, so
//! after `kill -9` there is a complete clip with its manifest, or nothing.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aegis_hal::clip::{ClipMuxer, OwnedPacket, PacketRing, ticks};
use aegis_hal::fmp4::AvcConfig;
use aegis_hal::record::{PacketTap, TapPacket};
use aegis_ota::evidence::{ClipManifest, Geotag, ManifestEvent, SealKey, SealWriter, hex};
use aegis_ota::sign::SecretKey;
use sha2::{Digest, Sha256};

/// Suffix of a clip being written.
const PART: &str = ".part";
/// Suffix of a clip's signed manifest.
pub const MANIFEST_SUFFIX: &str = ".manifest.json";
/// Pre-roll memory cap per stream (a long GOP at a high bitrate).
const RING_MAX_BYTES: usize = 64 << 20;
/// Triggers that may wait for the encoder per stream.
pub const MAX_PENDING: usize = 64;

/// How one stream's clips are cut and kept.
pub struct ClipSettings {
    /// Clips go to `dir/<stream>/`.
    pub dir: PathBuf,
    /// Stream id.
    pub stream: String,
    /// Device id (in the manifest).
    pub device: String,
    /// Before the first trigger.
    pub pre_roll: Duration,
    /// After the last trigger.
    pub post_roll: Duration,
    /// Longest clip.
    pub max_clip: Duration,
    /// Seal clips under this key (None: plain MP4).
    pub seal: Option<Arc<SealKey>>,
    /// Signs manifests (the device key).
    pub signer: Arc<SecretKey>,
}

/// Why a clip is wanted.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    /// The frame's presentation time (µs, the stream's clock).
    pub pts_us: i64,
    /// Its wall clock (µs since the Unix epoch).
    pub wall_us: i64,
    /// `detection`, `moderation`, `rule`, `manual`.
    pub kind: String,
    /// The event's id.
    pub event_id: String,
    /// Where the device was.
    pub geotag: Option<Geotag>,
    /// Keep the clip until (µs since the Unix epoch): the latest of its triggers' counts.
    pub retain_until_us: i64,
}

/// A clip written and indexed-to-be.
#[derive(Debug, Clone)]
pub struct FinishedClip {
    /// The clip file (sealed or plain).
    pub path: PathBuf,
    /// Its manifest.
    pub manifest_path: PathBuf,
    /// What the manifest says.
    pub manifest: ClipManifest,
    /// Whether the file is sealed.
    pub sealed: bool,
    /// Its size on disk.
    pub disk_bytes: u64,
}

/// Called with each finished clip, or the error that lost it.
pub type OnClip = Box<dyn Fn(Result<FinishedClip, String>) + Send + Sync>;

/// A [`PacketTap`] that cuts event clips from one stream (module docs).
pub struct ClipTap {
    settings: ClipSettings,
    state: Mutex<State>,
    on_clip: OnClip,
}

struct State {
    ring: PacketRing,
    config: Option<AvcConfig>,
    pending: Vec<Trigger>,
    open: Option<OpenClip>,
}

struct OpenClip {
    id: String,
    muxer: ClipMuxer<Hashing>,
    part: PathBuf,
    done: PathBuf,
    /// First packet's pts (90 kHz) and its wall clock (µs).
    start_pts: i64,
    start_wall_us: i64,
    /// Ends at the first packet at or after this pts; never after `cap`.
    end_pts: i64,
    cap_pts: i64,
    events: Vec<Trigger>,
}

/// The clip's bytes on their way to disk: hashed (plain), then sealed or not.
struct Hashing {
    hash: Sha256,
    bytes: u64,
    out: Out,
}

enum Out {
    Plain(BufWriter<File>),
    Sealed(Box<SealWriter<BufWriter<File>>>),
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.bytes += buf.len() as u64;
        match &mut self.out {
            Out::Plain(w) => w.write_all(buf)?,
            Out::Sealed(w) => w.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            Out::Plain(w) => w.flush(),
            Out::Sealed(w) => w.flush(),
        }
    }
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn us_to_ticks(us: i64) -> i64 {
    us.saturating_mul(9) / 100
}

impl ClipTap {
    /// A tap cutting clips as `settings` say; `on_clip` hears of each.
    pub fn new(settings: ClipSettings, on_clip: OnClip) -> Self {
        let ring = PacketRing::new(settings.pre_roll, RING_MAX_BYTES);
        ClipTap {
            settings,
            state: Mutex::new(State {
                ring,
                config: None,
                pending: Vec::new(),
                open: None,
            }),
            on_clip,
        }
    }

    /// Asks for a clip around `t` (taken at the next packet). At most [`MAX_PENDING`]
    /// wait (for the encoder to reach their pre-roll's start); beyond that the oldest is
    /// dropped and reported.
    pub fn trigger(&self, t: Trigger) {
        let dropped = {
            let mut st = lock(&self.state);
            st.pending.push(t);
            (st.pending.len() > MAX_PENDING).then(|| st.pending.remove(0))
        };
        if let Some(d) = dropped {
            (self.on_clip)(Err(format!(
                "stream {}: more than {MAX_PENDING} events waiting for the encoder; event {} dropped",
                self.settings.stream, d.event_id
            )));
        }
    }

    /// Bytes of packets the pre-roll ring holds.
    pub fn ring_bytes(&self) -> usize {
        lock(&self.state).ring.bytes()
    }

    /// The newest packet's presentation time in µs (for a manual trigger "now").
    pub fn newest_pts_us(&self) -> Option<i64> {
        lock(&self.state)
            .ring
            .span()
            .map(|(_, last)| last * 100 / 9)
    }

    /// Closes the open clip (the stream ended or the encoder restarts).
    pub fn close(&self) {
        let open = lock(&self.state).open.take();
        if let Some(c) = open {
            (self.on_clip)(self.finish(c));
        }
    }

    fn open_clip(&self, st: &mut State, t: Trigger) -> Result<OpenClip, String> {
        let config = st
            .config
            .as_ref()
            .ok_or("no stream parameters from the encoder yet")?;
        let at = us_to_ticks(t.pts_us);
        // Microsecond timestamps in 90 kHz are a few ticks off the frame grid: a keyframe
        // that far after the pre-roll's start still starts it (1 ms of slack).
        let from = at - ticks(self.settings.pre_roll) + 90;
        let first = st.ring.since(from).next().ok_or("no packets yet")?.clone();
        let id = crate::store::new_event_id();
        let dir = self.settings.dir.join(&self.settings.stream);
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let name = if self.settings.seal.is_some() {
            format!("{id}.mp4.sealed")
        } else {
            format!("{id}.mp4")
        };
        let done = dir.join(&name);
        let part = dir.join(format!("{name}{PART}"));
        let file = File::create(&part).map_err(|e| format!("creating {}: {e}", part.display()))?;
        let file = BufWriter::with_capacity(256 * 1024, file);
        let out = match &self.settings.seal {
            Some(key) => Out::Sealed(Box::new(
                SealWriter::new(file, key).map_err(|e| e.to_string())?,
            )),
            None => Out::Plain(file),
        };
        let hashing = Hashing {
            hash: Sha256::new(),
            bytes: 0,
            out,
        };
        let mut muxer = ClipMuxer::new(hashing, config).map_err(|e| e.to_string())?;
        for p in st.ring.since(from) {
            muxer.push(p).map_err(|e| e.to_string())?;
        }
        let start_wall_us = t.wall_us - (at - first.pts) * 100 / 9;
        let cap_pts = first.pts + ticks(self.settings.max_clip);
        Ok(OpenClip {
            id,
            muxer,
            part,
            done,
            start_pts: first.pts,
            start_wall_us,
            end_pts: (at + ticks(self.settings.post_roll)).min(cap_pts),
            cap_pts,
            events: vec![t],
        })
    }

    /// Seals, signs, renames; the finished clip.
    fn finish(&self, c: OpenClip) -> Result<FinishedClip, String> {
        let frames = c.muxer.frames();
        let end_pts = c.muxer.span().map_or(c.start_pts, |(_, e)| e);
        let part = c.part.clone();
        let result = (|| {
            let hashing = c.muxer.finish().map_err(|e| e.to_string())?;
            let sha256 = hex(&hashing.hash.finalize());
            let file = match hashing.out {
                Out::Plain(w) => w,
                Out::Sealed(w) => w.finish().map_err(|e| e.to_string())?,
            };
            let file = file.into_inner().map_err(|e| e.to_string())?;
            file.sync_all().map_err(|e| e.to_string())?;
            let disk_bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
            let manifest = ClipManifest {
                version: 1,
                clip_id: c.id.clone(),
                device: self.settings.device.clone(),
                stream: self.settings.stream.clone(),
                sha256,
                bytes: hashing.bytes,
                start_us: c.start_wall_us,
                end_us: c.start_wall_us + (end_pts - c.start_pts) * 100 / 9,
                frames,
                geotag: c.events.iter().find_map(|e| e.geotag),
                events: c
                    .events
                    .iter()
                    .map(|e| ManifestEvent {
                        id: e.event_id.clone(),
                        kind: e.kind.clone(),
                        ts_us: e.wall_us,
                    })
                    .collect(),
                retain_until_us: c
                    .events
                    .iter()
                    .map(|e| e.retain_until_us)
                    .max()
                    .unwrap_or(0),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            let signed = aegis_ota::evidence::sign_manifest(&manifest, &self.settings.signer)
                .map_err(|e| e.to_string())?;
            let manifest_path = manifest_path(&c.done);
            // Manifest first, then the clip's final name: a crash between the two leaves a
            // manifest without its clip, which `recover` removes.
            aegis_ota::fsutil::write_atomic(&manifest_path, &signed)
                .map_err(|e| format!("writing {}: {e}", manifest_path.display()))?;
            std::fs::rename(&c.part, &c.done)
                .map_err(|e| format!("renaming {}: {e}", c.part.display()))?;
            if let Some(dir) = c.done.parent() {
                let _ = File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(FinishedClip {
                path: c.done.clone(),
                manifest_path,
                manifest,
                sealed: self.settings.seal.is_some(),
                disk_bytes,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&part);
        }
        result
    }
}

/// `<clip>.manifest.json` beside the clip (the name without `.mp4[.sealed]`).
pub fn manifest_path(clip: &Path) -> PathBuf {
    let name = clip.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let stem = name.split('.').next().unwrap_or(name);
    clip.with_file_name(format!("{stem}{MANIFEST_SUFFIX}"))
}

impl PacketTap for ClipTap {
    fn active(&self) -> bool {
        true
    }

    fn take_keyframe_request(&self) -> bool {
        false
    }

    fn stream_end(&self) {
        self.close();
    }

    fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
        self.close();
        let mut st = lock(&self.state);
        st.ring.clear();
        st.config = match AvcConfig::from_extradata(extradata, width, height) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(stream = %self.settings.stream, error = %e,
                    "event clips: no stream parameters; no clips until the encoder restarts");
                None
            }
        };
    }

    fn packet(&self, p: &TapPacket<'_>) {
        let packet = OwnedPacket::from(p);
        let mut finished = Vec::new();
        let mut errors = Vec::new();
        {
            let mut st = lock(&self.state);
            st.ring.push(packet.clone());
            let mut written = false;
            let (pre, post) = (
                ticks(self.settings.pre_roll),
                ticks(self.settings.post_roll),
            );
            let mut waiting = Vec::new();
            for t in std::mem::take(&mut st.pending) {
                let at = us_to_ticks(t.pts_us);
                let from = at - pre;
                match &mut st.open {
                    // The event's window reaches into the open clip: it extends it, unless
                    // that would pass the longest clip — then it waits and gets its own.
                    Some(c) if from <= c.end_pts && at + post <= c.cap_pts => {
                        c.end_pts = c.end_pts.max(at + post);
                        c.events.push(t);
                    }
                    Some(_) => waiting.push(t),
                    // A trigger waits until its pre-roll's start has come out of the encoder
                    // (it lags the frames by its look-ahead): the keyframe at or before that
                    // point may not be in the ring yet.
                    None if from > packet.pts => waiting.push(t),
                    None => match self.open_clip(&mut st, t) {
                        Ok(c) => {
                            st.open = Some(c);
                            written = true;
                        }
                        Err(e) => errors.push(e),
                    },
                }
            }
            st.pending = waiting;
            if let Some(c) = &mut st.open {
                let pushed = if written {
                    Ok(())
                } else {
                    c.muxer.push(&packet)
                };
                match pushed {
                    Err(e) => {
                        if let Some(c) = st.open.take() {
                            let _ = std::fs::remove_file(&c.part);
                            errors.push(format!("clip {}: {e}", c.id));
                        }
                    }
                    Ok(()) if packet.pts >= c.end_pts => finished.extend(st.open.take()),
                    Ok(()) => {}
                }
            }
        }
        for e in errors {
            (self.on_clip)(Err(e));
        }
        for c in finished {
            (self.on_clip)(self.finish(c));
        }
    }
}

/// A tap that keeps every packet and the stream parameters, to replay them into a
/// [`ClipTap`] (`aegis bench evidence`, tests).
#[derive(Default)]
pub struct PacketCapture {
    /// The packets, in decode order.
    pub packets: Mutex<Vec<OwnedPacket>>,
    /// The last `stream_start`: extradata, width, height.
    pub start: Mutex<Option<(Vec<u8>, usize, usize)>>,
}

impl PacketTap for PacketCapture {
    fn active(&self) -> bool {
        true
    }
    fn take_keyframe_request(&self) -> bool {
        false
    }
    fn stream_start(&self, extradata: &[u8], width: usize, height: usize) {
        *self.start.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((extradata.to_vec(), width, height));
    }
    fn packet(&self, p: &TapPacket<'_>) {
        self.packets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(p.into());
    }
}

/// Whether `s` is a clip id (a UUID, as [`crate::store::new_event_id`] makes them).
pub fn is_clip_id(s: &str) -> bool {
    s.len() == 36
        && s.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}

/// The files this module writes, by name: `<id>.mp4[.sealed][.part]`, `<id>.manifest.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ClipFile {
    Part,
    Clip,
    Manifest,
}

fn clip_file(name: &str) -> Option<ClipFile> {
    let (id, rest) = name.split_at_checked(36)?;
    if !is_clip_id(id) {
        return None;
    }
    match rest {
        ".mp4.part" | ".mp4.sealed.part" => Some(ClipFile::Part),
        ".mp4" | ".mp4.sealed" => Some(ClipFile::Clip),
        MANIFEST_SUFFIX => Some(ClipFile::Manifest),
        _ => None,
    }
}

/// Stream directories are named as stream ids (`[a-z0-9_-]{1,64}`); others are not ours.
fn is_stream_dir(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// At start: removes what a crash left half-done under `dir` — `.part` clips, and manifests
/// whose clip never got its final name. Returns the complete clips found (each with its
/// manifest), for re-indexing. Only names this module writes are touched (stream-id
/// directories, clip-id files): a directory set by mistake to one holding other files
/// loses none of them. With `clean` false nothing is removed (another pipeline of this
/// process may be writing there: a workflow switch starts the new one beside the old).
pub fn recover(dir: &Path, clean: bool) -> std::io::Result<Vec<PathBuf>> {
    let mut complete = Vec::new();
    let Ok(streams) = std::fs::read_dir(dir) else {
        return Ok(complete);
    };
    for stream in streams.flatten() {
        let ours = stream.file_name().to_str().is_some_and(is_stream_dir);
        let Ok(files) = std::fs::read_dir(stream.path()) else {
            continue;
        };
        if !ours {
            continue;
        }
        let mut names: Vec<(PathBuf, ClipFile)> = files
            .flatten()
            .filter_map(|f| {
                let kind = clip_file(f.file_name().to_str()?)?;
                Some((f.path(), kind))
            })
            .collect();
        names.sort();
        for (path, kind) in &names {
            match kind {
                ClipFile::Part if !clean => {}
                ClipFile::Part => {
                    std::fs::remove_file(path)?;
                    tracing::info!(clip = %path.display(), "removed a clip a crash left unfinished");
                }
                ClipFile::Clip if manifest_path(path).exists() => complete.push(path.clone()),
                ClipFile::Clip => {
                    tracing::warn!(clip = %path.display(), "a clip without its manifest: left alone");
                }
                ClipFile::Manifest => {}
            }
        }
        for (path, kind) in &names {
            if clean
                && *kind == ClipFile::Manifest
                && !complete.iter().any(|c| manifest_path(c) == *path)
            {
                std::fs::remove_file(path)?;
                tracing::info!(manifest = %path.display(),
                    "removed a manifest whose clip a crash left unfinished");
            }
        }
    }
    Ok(complete)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use aegis_hal::codec::EncoderSettings;
    use aegis_hal::record::{DiskBudget, RecorderSettings, SegmentRecorder, TapFanout};
    use aegis_hal::synth::SyntheticScene;
    use aegis_hal::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};

    use super::*;

    const FRAME_US: i64 = 33_333;
    const GOP: u32 = 30;

    type Clips = Arc<Mutex<Vec<Result<FinishedClip, String>>>>;

    fn tap(dir: &Path, seal: Option<Arc<SealKey>>, key: &Arc<SecretKey>) -> (Arc<ClipTap>, Clips) {
        let clips: Clips = Arc::default();
        let sink = clips.clone();
        let t = ClipTap::new(
            ClipSettings {
                dir: dir.join("evidence"),
                stream: "cam".into(),
                device: "dev-1".into(),
                pre_roll: Duration::from_secs(1),
                post_roll: Duration::from_secs(1),
                max_clip: Duration::from_secs(60),
                seal,
                signer: key.clone(),
            },
            Box::new(move |c| sink.lock().unwrap().push(c)),
        );
        (Arc::new(t), clips)
    }

    fn trigger(frame: i64, kind: &str) -> Trigger {
        Trigger {
            pts_us: frame * FRAME_US,
            wall_us: 1_800_000_000_000_000 + frame * FRAME_US,
            kind: kind.into(),
            event_id: format!("ev-{frame}"),
            geotag: None,
            retain_until_us: 1_900_000_000_000_000,
        }
    }

    /// Records `frames` synthetic frames through the real recorder with `tap` on it, calling
    /// `before(i)` ahead of each frame (triggers come from the stage thread, before the
    /// frame reaches the encoder).
    fn record(dir: &Path, tap: Arc<ClipTap>, frames: i64, before: impl Fn(i64)) {
        record_into(dir, tap.clone(), frames, before);
        tap.close();
    }

    /// The recorder part of [`record`], with any tap.
    fn record_into(dir: &Path, tap: Arc<dyn PacketTap>, frames: i64, before: impl Fn(i64)) {
        let encoder = EncoderSettings {
            gop_frames: GOP,
            threads: 1,
            ..EncoderSettings::default()
        };
        let mut rec = SegmentRecorder::new(
            RecorderSettings {
                dir: dir.join("rec"),
                stream: StreamId::new("cam"),
                segment: Duration::from_secs(60),
                encoder,
            },
            DiskBudget::open(&dir.join("rec"), u64::MAX).unwrap(),
        )
        .with_tap(Arc::new(TapFanout(vec![tap])));
        let layout = FrameLayout::new(PixelFormat::I420, 160, 120);
        let pool = SurfacePool::new(layout, 2);
        let mut scene = SyntheticScene::new(160, 120, 2, 3, None);
        for i in 0..frames {
            before(i);
            let mut f = Frame::from_pool(
                &pool,
                StreamId::new("cam"),
                i as u64,
                i * FRAME_US,
                FRAME_US,
            )
            .unwrap();
            scene.render(&mut f);
            rec.push(&mut f).unwrap();
        }
        rec.finish().unwrap();
    }

    /// ffprobe's frames of a plain clip: (pts in seconds, key).
    fn probe(path: &Path) -> Option<Vec<(f64, bool)>> {
        let out = Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["frame=pts_time,key_frame", "-of", "csv=p=0"])
            .arg(path)
            .output();
        let Ok(out) = out else {
            assert!(std::env::var_os("CI").is_none(), "CI must install ffprobe");
            eprintln!("SKIPPED: no ffprobe");
            return None;
        };
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| {
                    let mut f = l.split(',');
                    let (k, t) = (f.next()?, f.next()?);
                    Some((t.parse().ok()?, k == "1"))
                })
                .collect(),
        )
    }

    #[test]
    fn overlapping_events_make_one_clip_from_a_keyframe_with_the_whole_pre_roll() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretKey::generate().unwrap());
        let (t, clips) = tap(dir.path(), None, &key);
        // Events at 3.0 s and 3.5 s (inside the first clip's post-roll), then at 8 s.
        let tt = t.clone();
        record(dir.path(), t, 300, move |i| {
            if [90, 105, 240].contains(&i) {
                tt.trigger(trigger(i, "rule"));
            }
        });
        let clips: Vec<FinishedClip> = clips
            .lock()
            .unwrap()
            .drain(..)
            .map(Result::unwrap)
            .collect();
        assert_eq!(clips.len(), 2, "{clips:?}");
        let first = &clips[0];
        let events: Vec<&str> = first
            .manifest
            .events
            .iter()
            .map(|e| e.id.as_str())
            .collect();
        assert_eq!(events, ["ev-90", "ev-105"]);
        // The manifest verifies, and names these bytes.
        let file = std::fs::read(&first.manifest_path).unwrap();
        let clip = std::fs::File::open(&first.path).unwrap();
        aegis_ota::evidence::verify_clip(&file, clip, key.public()).unwrap();
        let Some(frames) = probe(&first.path) else {
            return;
        };
        assert_eq!(frames.len() as u64, first.manifest.frames);
        // Starts on a keyframe at or before 3.0 - 1.0 s (keyframes every second here), so the
        // whole pre-roll is in; ends at least 1 s after the last event (3.5 s).
        assert!(frames[0].1, "the first frame is a keyframe");
        let span = frames.last().unwrap().0 - frames[0].0;
        let expected_first = 60; // the keyframe at 2.0 s
        let expected_last = 105 + 30; // 3.5 s + 1 s
        // The frame that reaches the end is the clip's last (timestamps round by a tick, so
        // that may be the one after).
        let n = frames.len() as i64;
        let want = expected_last - expected_first + 1;
        assert!(n == want || n == want + 1, "{n} frames, span {span} s");
        let start = 1_800_000_000_000_000 + 60 * FRAME_US;
        assert!(
            (first.manifest.start_us - start).abs() < 1000,
            "{}",
            first.manifest.start_us
        );
    }

    #[test]
    fn an_event_past_the_open_clip_waits_for_its_own_and_never_cuts_the_first_short() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretKey::generate().unwrap());
        // The packets of 300 frames, replayed so that triggers can come at any point.
        let capture = Arc::new(PacketCapture::default());
        record_into(dir.path(), capture.clone(), 300, |_| {});
        let packets = std::mem::take(&mut *capture.packets.lock().unwrap());
        let start = capture.start.lock().unwrap().clone().unwrap();
        let (t, clips) = tap(&dir.path().join("replay"), None, &key);
        t.stream_start(&start.0, start.1, start.2);
        let frame_of = |p: &OwnedPacket| (p.pts as f64 / 3000.0).round() as i64;
        for p in &packets {
            let f = frame_of(p);
            if f == 91 {
                t.trigger(trigger(90, "rule"));
            }
            // While the first clip (frames 60..=120) is open, an event whose pre-roll starts
            // after that clip's end (frame 200: from frame 170).
            if f == 110 {
                t.trigger(trigger(200, "rule"));
            }
            t.packet(&TapPacket {
                data: &p.data,
                pts: p.pts,
                dts: p.dts,
                duration: p.duration,
                key: p.key,
            });
        }
        t.close();
        let clips: Vec<FinishedClip> = clips
            .lock()
            .unwrap()
            .drain(..)
            .map(Result::unwrap)
            .collect();
        assert_eq!(clips.len(), 2, "{clips:?}");
        let span = |c: &FinishedClip| {
            let start = (c.manifest.start_us - 1_800_000_000_000_000) / FRAME_US;
            (start, start + c.manifest.frames as i64 - 1)
        };
        let (a, b) = (span(&clips[0]), span(&clips[1]));
        assert!(
            a.0 <= 60 && a.1 >= 120,
            "the first clip {a:?} keeps its post-roll"
        );
        assert!(
            b.0 <= 170 && b.0 > 120 && b.1 >= 230,
            "the second clip {b:?}"
        );
        assert_eq!(clips[1].manifest.events[0].id, "ev-200");
    }

    #[test]
    fn a_sealed_clip_is_unreadable_without_the_key_and_verifies_once_exported() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretKey::generate().unwrap());
        let seal = Arc::new(SealKey::generate().unwrap());
        let (t, clips) = tap(dir.path(), Some(seal.clone()), &key);
        let tt = t.clone();
        record(dir.path(), t, 120, move |i| {
            if i == 60 {
                tt.trigger(trigger(i, "manual"));
            }
        });
        let c = clips.lock().unwrap().pop().unwrap().unwrap();
        assert!(c.sealed && c.path.to_string_lossy().ends_with(".mp4.sealed"));
        let sealed = std::fs::read(&c.path).unwrap();
        assert!(sealed.starts_with(aegis_ota::evidence::SEALED_MAGIC));
        // No MP4 box in the clear.
        assert!(!sealed.windows(4).any(|w| w == b"ftyp" || w == b"moof"));
        let manifest = std::fs::read(&c.manifest_path).unwrap();
        assert!(aegis_ota::evidence::verify_clip(&manifest, &sealed[..], key.public()).is_err());
        let mut plain = Vec::new();
        aegis_ota::evidence::unseal(&sealed[..], &mut plain, &seal).unwrap();
        aegis_ota::evidence::verify_clip(&manifest, &plain[..], key.public()).unwrap();
        // One byte of the exported clip changed: verification fails.
        let mut edited = plain.clone();
        let at = edited.len() / 2;
        edited[at] ^= 0x40;
        let err = aegis_ota::evidence::verify_clip(&manifest, &edited[..], key.public());
        assert!(matches!(
            err,
            Err(aegis_ota::evidence::EvidenceError::Digest { .. })
        ));
        let exported = dir.path().join("exported.mp4");
        std::fs::write(&exported, &plain).unwrap();
        if let Some(frames) = probe(&exported) {
            assert!(frames[0].1, "{frames:?}");
            assert_eq!(frames.len() as u64, c.manifest.frames);
        }
    }

    #[test]
    fn recovery_removes_half_written_clips_and_keeps_complete_ones() {
        let dir = tempfile::tempdir().unwrap();
        let key = Arc::new(SecretKey::generate().unwrap());
        let (t, clips) = tap(dir.path(), None, &key);
        let tt = t.clone();
        record(dir.path(), t, 90, move |i| {
            if i == 40 {
                tt.trigger(trigger(i, "manual"));
            }
        });
        let c = clips.lock().unwrap().pop().unwrap().unwrap();
        let stream_dir = c.path.parent().unwrap().to_path_buf();
        // What a kill -9 can leave: a clip still being written (no manifest yet), and a
        // manifest whose clip was not renamed yet.
        let (a, b) = (
            "0192a0a0-0000-7000-8000-00000000000a",
            "0192a0a0-0000-7000-8000-00000000000b",
        );
        std::fs::write(stream_dir.join(format!("{a}.mp4.sealed.part")), b"half").unwrap();
        std::fs::write(stream_dir.join(format!("{b}.mp4.part")), b"half").unwrap();
        std::fs::write(stream_dir.join(format!("{b}{MANIFEST_SUFFIX}")), b"{}").unwrap();
        // Files this module did not write stay, whatever their names look like.
        std::fs::write(stream_dir.join("notes.part"), b"mine").unwrap();
        let foreign = dir.path().join("evidence/Not A Stream");
        std::fs::create_dir_all(&foreign).unwrap();
        std::fs::write(foreign.join(format!("{a}.mp4.part")), b"mine").unwrap();
        // Without cleaning (another pipeline may be writing), nothing goes.
        let kept = recover(&dir.path().join("evidence"), false).unwrap();
        assert_eq!(kept, vec![c.path.clone()]);
        assert!(stream_dir.join(format!("{b}.mp4.part")).exists());
        let kept = recover(&dir.path().join("evidence"), true).unwrap();
        assert_eq!(kept, vec![c.path.clone()]);
        assert!(foreign.join(format!("{a}.mp4.part")).exists());
        std::fs::remove_file(stream_dir.join("notes.part")).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&stream_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let mut want = vec![
            c.path.file_name().unwrap().to_string_lossy().into_owned(),
            c.manifest_path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
        ];
        want.sort();
        assert_eq!(left, want);
    }
}
