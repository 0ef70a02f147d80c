//! `aegis bench evidence`: what event clips cost, in one process.
//!
//! 1. **The pre-roll ring per stream**: the real recorder (x264, fragmented MP4 segments)
//!    encodes the same synthetic frames with and without a [`ClipTap`] on it (arms
//!    alternate, several runs each); the process CPU time of each, their ratio, and the
//!    ring's memory (packets held for the pre-roll at the encoder's bitrate).
//! 2. **Clip available**: the encoded packets of one run are replayed into a tap with a
//!    trigger every `clip_seconds` (pre-roll that long, no post-roll): each clip's time from
//!    the packet that ends it to the clip sealed, signed, synced and renamed (what the agent
//!    spends after the post-roll), and clips per second sustained over the burst — sealed and
//!    plain. The baseline is what other NVRs do to cut a clip from recordings:
//!    `ffmpeg -ss … -t … -c copy` of the same span from the recorded segment (stream copy,
//!    no re-encode), timed per clip.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aegis_hal::clip::OwnedPacket;
use aegis_hal::codec::EncoderSettings;
use aegis_hal::record::{
    DiskBudget, PacketTap, RecorderSettings, SegmentRecorder, TapFanout, TapPacket,
};
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};
use aegis_ota::evidence::SealKey;
use aegis_ota::sign::SecretKey;
use serde::Serialize;

use crate::evidence::{ClipSettings, ClipTap, PacketCapture as Capture, Trigger};

const FRAME_US: i64 = 33_333;

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct EvidenceBench {
    /// Frame size.
    pub width: usize,
    /// Frame height.
    pub height: usize,
    /// Frames per run.
    pub frames: u64,
    /// Encoder bitrate, kbit/s.
    pub bitrate_kbps: u32,
    /// Runs per arm.
    pub runs: usize,
    /// Process CPU seconds per run, recording alone (median).
    pub record_cpu_s: f64,
    /// …recording with the clip ring (median).
    pub record_with_ring_cpu_s: f64,
    /// Ratio with/without, per pair of runs (min, median, max).
    pub ring_cpu_ratio: [f64; 3],
    /// Bytes the ring holds for `pre_roll_s`.
    pub ring_bytes: usize,
    /// What the encoder actually made of the synthetic scene, kbit/s.
    pub encoded_kbps: f64,
    /// The pre-roll measured.
    pub pre_roll_s: f64,
    /// Clip length in the burst.
    pub clip_seconds: f64,
    /// Clips written in each burst.
    pub clips: usize,
    /// Packet ending a clip → clip sealed, signed, synced, renamed: p50, ms.
    pub sealed_finish_p50_ms: f64,
    /// …p99, ms.
    pub sealed_finish_p99_ms: f64,
    /// Clips per second over the sealed burst (replayed packets, one stream).
    pub sealed_clips_per_s: f64,
    /// Plain (unsealed) clips: p50, ms.
    pub plain_finish_p50_ms: f64,
    /// Plain clips per second.
    pub plain_clips_per_s: f64,
    /// Baseline: `ffmpeg -c copy` of the same span from the recording, per clip: p50, ms.
    pub ffmpeg_copy_p50_ms: Option<f64>,
    /// …p99, ms.
    pub ffmpeg_copy_p99_ms: Option<f64>,
}

fn cpu_s() -> f64 {
    crate::process::sample().map_or(0.0, |s| s.cpu_ms as f64 / 1e3)
}

fn settings(
    dir: &Path,
    pre: f64,
    post: f64,
    seal: Option<Arc<SealKey>>,
    key: &Arc<SecretKey>,
) -> ClipSettings {
    ClipSettings {
        dir: dir.to_path_buf(),
        stream: "bench".into(),
        device: "bench".into(),
        pre_roll: Duration::from_secs_f64(pre),
        post_roll: Duration::from_secs_f64(post),
        max_clip: Duration::from_secs(600),
        seal,
        signer: key.clone(),
    }
}

/// Encodes `count` frames (the rendered ones in turn, timestamps going on) through the
/// recorder with `tap`: process CPU seconds.
fn record(
    dir: &Path,
    frames: &mut [Frame],
    count: u64,
    encoder: &EncoderSettings,
    tap: Option<Arc<dyn PacketTap>>,
) -> anyhow::Result<f64> {
    let _ = std::fs::remove_dir_all(dir);
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.to_path_buf(),
            stream: StreamId::new("bench"),
            segment: Duration::from_secs(3600),
            encoder: encoder.clone(),
        },
        DiskBudget::open(dir, u64::MAX)?,
    );
    if let Some(t) = tap {
        rec = rec.with_tap(t);
    }
    let t0 = cpu_s();
    let n = frames.len();
    for i in 0..count {
        let f = &mut frames[i as usize % n];
        f.pts_us = i as i64 * FRAME_US;
        rec.push(f)?;
    }
    rec.finish()?;
    Ok(cpu_s() - t0)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// Replays `packets` (looped, timestamps shifted on) into a tap with a trigger every
/// `clip_s`: per-clip finish times (ms) and clips per second.
fn burst(
    dir: &Path,
    start: &(Vec<u8>, usize, usize),
    packets: &[OwnedPacket],
    clip_s: f64,
    clips: usize,
    seal: Option<Arc<SealKey>>,
    key: &Arc<SecretKey>,
) -> anyhow::Result<(Vec<f64>, f64)> {
    let _ = std::fs::remove_dir_all(dir);
    let done = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let sink = done.clone();
    let tap = ClipTap::new(
        settings(dir, clip_s, 0.0, seal, key),
        Box::new(move |r| {
            if r.is_ok() {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Instant::now());
            }
        }),
    );
    tap.stream_start(&start.0, start.1, start.2);
    let span = packets.last().map_or(0, |p| p.dts + p.duration) - packets[0].dts;
    let every_ticks = (clip_s * 90_000.0) as i64;
    let mut next_trigger = every_ticks;
    let mut finishes = Vec::new();
    let t0 = Instant::now();
    'outer: for round in 0.. {
        for p in packets {
            let shift = round * span;
            let data = p.data.clone();
            let pts = p.pts + shift;
            if pts >= next_trigger {
                tap.trigger(Trigger {
                    pts_us: pts * 100 / 9,
                    wall_us: crate::store::now_us(),
                    kind: "manual".into(),
                    event_id: "bench".into(),
                    geotag: None,
                    retain_until_us: i64::MAX,
                });
                next_trigger += every_ticks;
            }
            let before = done.lock().unwrap_or_else(|p| p.into_inner()).len();
            let pushed = Instant::now();
            tap.packet(&TapPacket {
                data: &data,
                pts,
                dts: p.dts + shift,
                duration: p.duration,
                key: p.key,
            });
            let d = done.lock().unwrap_or_else(|p| p.into_inner());
            if d.len() > before {
                finishes.push(d[d.len() - 1].duration_since(pushed).as_secs_f64() * 1e3);
            }
            if d.len() >= clips {
                break 'outer;
            }
        }
    }
    let n = done.lock().unwrap_or_else(|p| p.into_inner()).len();
    Ok((finishes, n as f64 / t0.elapsed().as_secs_f64()))
}

/// `ffmpeg -ss … -t … -c copy` of `clips` spans of `clip_s` from `recording`: ms each.
fn ffmpeg_copy(
    dir: &Path,
    recording: &Path,
    clip_s: f64,
    clips: usize,
    span_s: f64,
) -> Option<Vec<f64>> {
    let mut times = Vec::new();
    for i in 0..clips {
        let start = (i as f64 * clip_s) % (span_s - clip_s).max(clip_s);
        let out = dir.join(format!("copy-{i}.mp4"));
        let t0 = Instant::now();
        let st = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-ss",
                &format!("{start:.3}"),
                "-t",
                &format!("{clip_s:.3}"),
            ])
            .arg("-i")
            .arg(recording)
            .args(["-c", "copy", "-movflags", "+faststart"])
            .arg(&out)
            .status()
            .ok()?;
        if !st.success() {
            return None;
        }
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Some(times)
}

/// The first `.mp4` under `dir` (the recording of the last run).
fn first_mp4(dir: &Path) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.is_dir() {
            if let Some(f) = first_mp4(&p) {
                return Some(f);
            }
        } else if p.extension().is_some_and(|x| x == "mp4") {
            return Some(p);
        }
    }
    None
}

/// Runs the benchmark.
pub fn bench_evidence(
    width: usize,
    height: usize,
    frames: u64,
    runs: usize,
    clips: usize,
) -> anyhow::Result<EvidenceBench> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let key = Arc::new(SecretKey::generate()?);
    let seal = Arc::new(SealKey::generate()?);
    let encoder = EncoderSettings {
        threads: 1,
        frame_rate: (30, 1),
        ..EncoderSettings::default()
    };
    let layout = FrameLayout::new(PixelFormat::I420, width, height);
    // A second of distinct frames, pushed in turn: rendering is not in what is measured.
    let distinct = 30;
    let pool = SurfacePool::new(layout, distinct + 1);
    let mut scene = SyntheticScene::new(width, height, 3, 7, None);
    let mut rendered = Vec::with_capacity(distinct);
    for i in 0..distinct as u64 {
        let mut f = Frame::from_pool(
            &pool,
            StreamId::new("bench"),
            i,
            i as i64 * FRAME_US,
            FRAME_US,
        )
        .map_err(|e| anyhow::anyhow!("frame pool: {e}"))?;
        scene.render(&mut f);
        rendered.push(f);
    }
    let pre_roll_s = 5.0;
    let (mut alone, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut ring_bytes = 0;
    for _ in 0..runs {
        let a = record(&dir.join("rec"), &mut rendered, frames, &encoder, None)?;
        let tap = Arc::new(ClipTap::new(
            settings(&dir.join("ev"), pre_roll_s, 5.0, Some(seal.clone()), &key),
            Box::new(|_| {}),
        ));
        let fan: Arc<dyn PacketTap> = Arc::new(TapFanout(vec![tap.clone()]));
        let b = record(&dir.join("rec"), &mut rendered, frames, &encoder, Some(fan))?;
        ring_bytes = ring_bytes.max(tap.ring_bytes());
        alone.push(a);
        with.push(b);
        ratios.push(b / a.max(1e-9));
    }
    // The packets of one run, to replay, and the recording for the ffmpeg baseline.
    let capture = Arc::new(Capture::default());
    record(
        &dir.join("rec"),
        &mut rendered,
        frames,
        &encoder,
        Some(capture.clone()),
    )?;
    let packets = std::mem::take(&mut *capture.packets.lock().unwrap_or_else(|p| p.into_inner()));
    let start = capture
        .start
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the encoder gave no stream parameters"))?;
    let encoded_kbps = packets.iter().map(|p| p.data.len()).sum::<usize>() as f64 * 8.0
        / 1e3
        / (frames as f64 * FRAME_US as f64 / 1e6);
    let clip_seconds = 2.0;
    let (mut sealed, sealed_rate) = burst(
        &dir.join("burst-sealed"),
        &start,
        &packets,
        clip_seconds,
        clips,
        Some(seal),
        &key,
    )?;
    let (mut plain, plain_rate) = burst(
        &dir.join("burst-plain"),
        &start,
        &packets,
        clip_seconds,
        clips,
        None,
        &key,
    )?;
    let recording = first_mp4(&dir.join("rec"));
    let span_s = frames as f64 * FRAME_US as f64 / 1e6;
    let mut copies = recording
        .as_deref()
        .and_then(|r| ffmpeg_copy(dir, r, clip_seconds, clips.min(20), span_s));
    Ok(EvidenceBench {
        width,
        height,
        frames,
        bitrate_kbps: encoder.bitrate_kbps,
        runs,
        record_cpu_s: pct(&mut alone, 0.5),
        record_with_ring_cpu_s: pct(&mut with, 0.5),
        ring_cpu_ratio: [
            pct(&mut ratios, 0.0),
            pct(&mut ratios, 0.5),
            pct(&mut ratios, 1.0),
        ],
        ring_bytes,
        encoded_kbps,
        pre_roll_s,
        clip_seconds,
        clips,
        sealed_finish_p50_ms: pct(&mut sealed, 0.5),
        sealed_finish_p99_ms: pct(&mut sealed, 0.99),
        sealed_clips_per_s: sealed_rate,
        plain_finish_p50_ms: pct(&mut plain, 0.5),
        plain_clips_per_s: plain_rate,
        ffmpeg_copy_p50_ms: copies.as_mut().map(|c| pct(c, 0.5)),
        ffmpeg_copy_p99_ms: copies.as_mut().map(|c| pct(c, 0.99)),
    })
}

/// Prints the results.
pub fn print(r: &EvidenceBench) {
    println!(
        "event clips, {}x{} H.264 at {} kbit/s, {} frames per run, {} runs per arm:",
        r.width, r.height, r.bitrate_kbps, r.frames, r.runs
    );
    println!(
        "  recording alone {:.2} CPU s, with the clip ring {:.2} CPU s: ratio {:.3} (min {:.3}, max {:.3})",
        r.record_cpu_s,
        r.record_with_ring_cpu_s,
        r.ring_cpu_ratio[1],
        r.ring_cpu_ratio[0],
        r.ring_cpu_ratio[2]
    );
    println!(
        "  ring memory for {:.0} s of pre-roll (from a keyframe): {:.2} MiB at the {:.0} kbit/s the encoder made",
        r.pre_roll_s,
        r.ring_bytes as f64 / (1 << 20) as f64,
        r.encoded_kbps
    );
    println!(
        "  {} clips of {:.0} s: sealed+signed+synced p50 {:.1} ms, p99 {:.1} ms ({:.1} clips/s); plain p50 {:.1} ms ({:.1} clips/s)",
        r.clips,
        r.clip_seconds,
        r.sealed_finish_p50_ms,
        r.sealed_finish_p99_ms,
        r.sealed_clips_per_s,
        r.plain_finish_p50_ms,
        r.plain_clips_per_s
    );
    match (r.ffmpeg_copy_p50_ms, r.ffmpeg_copy_p99_ms) {
        (Some(p50), Some(p99)) => println!(
            "  baseline ffmpeg -c copy of the same span from the recording: p50 {p50:.1} ms, p99 {p99:.1} ms ({:.1}x the sealed clip's p50)",
            p50 / r.sealed_finish_p50_ms.max(1e-9)
        ),
        _ => println!("  baseline: ffmpeg not found"),
    }
}
