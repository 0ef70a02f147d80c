//! Event clips cut from the packets the recorder's encoder already makes (no second encode):
//! [`PacketRing`] keeps the last seconds of one stream's encoded packets, always from a
//! keyframe, so a clip can start with its whole pre-roll; [`ClipMuxer`] writes packets as one
//! fragmented MP4 (init segment, then a `moof` + `mdat` per frame, [`crate::fmp4`]) to any
//! [`std::io::Write`], so the caller decides where the bytes go (a hash, a cipher, a file) and
//! no plaintext needs to touch the disk.
//!
//! Timestamps are the encoder's 90 kHz ticks ([`crate::record::TapPacket`]).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::fmp4::{AvcConfig, Fmp4Error, FragmentWriter, Sample, init_segment};
use crate::record::TapPacket;

/// Ticks per second of the encoder's time base.
pub const TICKS_PER_SECOND: i64 = 90_000;

/// An encoded packet kept after the encoder handed it on.
#[derive(Debug, Clone)]
pub struct OwnedPacket {
    /// The access unit (Annex-B), shared between the ring and clip writers.
    pub data: Arc<[u8]>,
    /// Presentation time (90 kHz).
    pub pts: i64,
    /// Decode time (90 kHz).
    pub dts: i64,
    /// Duration (90 kHz ticks).
    pub duration: i64,
    /// An IDR picture.
    pub key: bool,
}

impl From<&TapPacket<'_>> for OwnedPacket {
    fn from(p: &TapPacket<'_>) -> Self {
        OwnedPacket {
            data: p.data.into(),
            pts: p.pts,
            dts: p.dts,
            duration: p.duration,
            key: p.key,
        }
    }
}

/// Converts a duration to 90 kHz ticks.
pub fn ticks(d: Duration) -> i64 {
    (d.as_micros() as i64).saturating_mul(9) / 100
}

/// The last `keep` of one stream's packets, starting at a keyframe: the oldest group of
/// pictures is dropped only once the next keyframe is itself at least `keep` old, so a clip
/// asked for at any moment finds a keyframe at or before `now - keep`. A byte cap bounds the
/// memory when the encoder makes long GOPs at a high bitrate; a GOP dropped for it shortens
/// the available pre-roll and is counted ([`Self::short_drops`]).
#[derive(Debug)]
pub struct PacketRing {
    packets: VecDeque<OwnedPacket>,
    bytes: usize,
    keep: i64,
    max_bytes: usize,
    short_drops: u64,
}

impl PacketRing {
    /// A ring keeping at least `keep` (when `max_bytes` allows).
    pub fn new(keep: Duration, max_bytes: usize) -> Self {
        PacketRing {
            packets: VecDeque::new(),
            bytes: 0,
            keep: ticks(keep),
            max_bytes,
            short_drops: 0,
        }
    }

    /// Forgets everything (the encoder restarted: new parameters, timestamps from zero).
    pub fn clear(&mut self) {
        self.packets.clear();
        self.bytes = 0;
    }

    /// Packets held.
    pub fn len(&self) -> usize {
        self.packets.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }

    /// Bytes of packet data held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// GOPs dropped for the byte cap before they were `keep` old.
    pub fn short_drops(&self) -> u64 {
        self.short_drops
    }

    /// The presentation time covered: first to last packet.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.packets.front()?.pts, self.packets.back()?.pts))
    }

    /// Adds the next packet (decode order). Packets before the first keyframe cannot start
    /// anything and are not kept.
    pub fn push(&mut self, p: OwnedPacket) {
        if self.packets.is_empty() && !p.key {
            return;
        }
        let newest = p.pts;
        self.bytes += p.data.len();
        self.packets.push_back(p);
        while let Some(next_key) = self.second_keyframe() {
            let old_enough = self.packets[next_key].pts <= newest - self.keep;
            let over = self.bytes > self.max_bytes;
            if !old_enough && !over {
                break;
            }
            if !old_enough {
                self.short_drops += 1;
            }
            for gone in self.packets.drain(..next_key) {
                self.bytes -= gone.data.len();
            }
        }
    }

    /// Index of the first keyframe after the front one.
    fn second_keyframe(&self) -> Option<usize> {
        self.packets
            .iter()
            .skip(1)
            .position(|p| p.key)
            .map(|i| i + 1)
    }

    /// The packets from the last keyframe at or before `pts` (or from the oldest keyframe,
    /// when the ring does not reach back that far) to the newest.
    pub fn since(&self, pts: i64) -> impl Iterator<Item = &OwnedPacket> {
        let start = self
            .packets
            .iter()
            .rposition(|p| p.key && p.pts <= pts)
            .unwrap_or(0);
        self.packets.range(start..)
    }
}

/// Writes packets as one fragmented MP4 to `out`: the init segment first, then one fragment
/// per packet, decode times counted from the first packet's. The first packet must be a
/// keyframe.
pub struct ClipMuxer<W: Write> {
    out: W,
    fragments: FragmentWriter,
    origin: Option<i64>,
    end: u64,
    frames: u64,
    first_pts: Option<i64>,
    last_pts: i64,
}

/// Why a clip could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ClipError {
    /// The packets or parameters were not usable H.264.
    #[error("clip: {0}")]
    Format(#[from] Fmp4Error),
    /// The first packet was not a keyframe.
    #[error("clip: the first packet is not a keyframe")]
    NoKeyframe,
    /// Writing failed.
    #[error("clip: writing: {0}")]
    Io(#[from] std::io::Error),
}

impl<W: Write> ClipMuxer<W> {
    /// Starts a clip of the stream `config` describes.
    pub fn new(mut out: W, config: &AvcConfig) -> Result<Self, ClipError> {
        out.write_all(&init_segment(config, TICKS_PER_SECOND as u32)?)?;
        Ok(ClipMuxer {
            out,
            fragments: FragmentWriter::new(),
            origin: None,
            end: 0,
            frames: 0,
            first_pts: None,
            last_pts: 0,
        })
    }

    /// Appends one packet.
    pub fn push(&mut self, p: &OwnedPacket) -> Result<(), ClipError> {
        let origin = match self.origin {
            Some(o) => o,
            None if p.key => {
                self.origin = Some(p.dts);
                self.first_pts = Some(p.pts);
                p.dts
            }
            None => return Err(ClipError::NoKeyframe),
        };
        // Microsecond timestamps in 90 kHz may start a frame a tick before the previous one
        // ended; it starts at that end instead (as the live view does).
        let dts = ((p.dts - origin).max(0) as u64).max(self.end);
        let duration = p.duration.clamp(0, u32::MAX as i64) as u32;
        let fragment = self.fragments.fragment(&Sample {
            decode_time: dts,
            duration,
            composition_offset: (p.pts - origin - dts as i64)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            is_key: p.key,
            data: &p.data,
        })?;
        self.out.write_all(&fragment)?;
        self.end = dts + u64::from(duration);
        self.frames += 1;
        self.last_pts = p.pts + p.duration;
        Ok(())
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Presentation time covered (first packet's pts to the last one's end), when any.
    pub fn span(&self) -> Option<(i64, i64)> {
        Some((self.first_pts?, self.last_pts))
    }

    /// Flushes and hands back the writer.
    pub fn finish(mut self) -> Result<W, ClipError> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(i: i64, key: bool) -> OwnedPacket {
        OwnedPacket {
            data: vec![0u8; 100].into(),
            pts: i * 3000,
            dts: i * 3000,
            duration: 3000,
            key,
        }
    }

    /// 30 fps, a keyframe every `gop` frames, `n` frames.
    fn fill(ring: &mut PacketRing, n: i64, gop: i64) {
        for i in 0..n {
            ring.push(packet(i, i % gop == 0));
        }
    }

    #[test]
    fn the_ring_starts_at_a_keyframe_and_holds_the_whole_pre_roll() {
        let mut ring = PacketRing::new(Duration::from_secs(2), usize::MAX);
        fill(&mut ring, 300, 45); // 10 s, keyframes every 1.5 s
        let (first, last) = ring.span().unwrap();
        let newest = 299 * 3000;
        assert_eq!(last, newest);
        assert!(first <= newest - 2 * TICKS_PER_SECOND, "pre-roll cut short");
        // ...and no more than one GOP beyond it.
        assert!(first > newest - 2 * TICKS_PER_SECOND - 45 * 3000);
        assert!(ring.since(first).next().unwrap().key);
        // From any time inside it, a clip starts on the last keyframe at or before it.
        let want = newest - 2 * TICKS_PER_SECOND;
        let start = ring.since(want).next().unwrap();
        assert!(start.key && start.pts <= want && start.pts > want - 45 * 3000);
        assert_eq!(ring.short_drops(), 0);
    }

    #[test]
    fn packets_before_the_first_keyframe_are_not_kept() {
        let mut ring = PacketRing::new(Duration::from_secs(1), usize::MAX);
        ring.push(packet(0, false));
        ring.push(packet(1, false));
        assert!(ring.is_empty());
        ring.push(packet(2, true));
        assert_eq!(ring.len(), 1);
    }

    #[test]
    fn the_byte_cap_drops_whole_gops_and_counts_them() {
        let mut ring = PacketRing::new(Duration::from_secs(60), 100 * 50);
        fill(&mut ring, 200, 30);
        assert!(ring.bytes() <= 100 * 50 || ring.second_keyframe().is_none());
        assert!(ring.short_drops() > 0);
        assert!(ring.since(0).next().unwrap().key);
    }

    #[test]
    fn a_clip_must_start_on_a_keyframe() {
        let cfg = crate::fmp4::tests::test_config();
        let mut m = ClipMuxer::new(Vec::new(), &cfg).unwrap();
        assert!(matches!(
            m.push(&packet(0, false)),
            Err(ClipError::NoKeyframe)
        ));
    }
}
