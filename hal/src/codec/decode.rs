//! The CPU decoder: libavcodec's H.264/H.265 decoders (frame threads) behind
//! [`VideoDecoder`], counting what they reject in [`DecodeStats`].
//!
//! Why it exists apart from the demuxer: a decoder is fed packets by a source (file or live)
//! and must write each picture into a pooled surface with exactly one copy out of
//! libavcodec's buffer (counted in `Frame::copies`), waiting for a keyframe after open, seek
//! or an error burst rather than emitting smeared pictures. It must not allocate per frame,
//! own the pool, or know where packets come from; NVDEC (`nvdec.rs`) is the CUDA backend's
//! counterpart behind the same `Decoding` interface.

use ffmpeg_next as ff;
use std::time::Instant;

use super::{CodecError, is_again};
use crate::frame::{Frame, FrameLayout, FrameMeta, PixelFormat, StreamId};
use crate::pixel::{Plane, copy_plane};
use crate::pool::SurfacePool;

/// Counters a decoder keeps; the source turns them into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeStats {
    /// Packets handed to the decoder.
    pub packets: u64,
    /// Frames produced.
    pub frames: u64,
    /// Packets or pictures the decoder rejected as damaged.
    pub errors: u64,
    /// Packets dropped while waiting for a keyframe (after open, seek or an error burst).
    pub skipped_before_keyframe: u64,
    /// Frames the decoder returned with concealed damage.
    pub corrupt_frames: u64,
    /// Times a picture waited for a device work surface the pipeline still held (the
    /// `jetson` backend's NVMM pools; host pools count their own waits).
    pub device_pool_waits: u64,
    /// Pictures dropped unseen: by a live camera with no buffer free, or given back for a
    /// newer one while the pipeline was behind.
    pub dropped: u64,
}

impl DecodeStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DecodeStats) {
        self.packets += other.packets;
        self.frames += other.frames;
        self.errors += other.errors;
        self.skipped_before_keyframe += other.skipped_before_keyframe;
        self.corrupt_frames += other.corrupt_frames;
        self.device_pool_waits += other.device_pool_waits;
        self.dropped += other.dropped;
    }
}

/// Decodes one compressed stream into pooled surfaces.
pub struct VideoDecoder {
    dec: ff::decoder::Video,
    picture: ff::frame::Video,
    stream: StreamId,
    time_base: ff::Rational,
    default_duration_us: i64,
    next_seq: u64,
    waiting_for_key: bool,
    /// `picture` holds a decoded picture not yet copied out (its surface was not ready).
    pending: bool,
    /// Converter for pictures in layouts the pools do not hold, and its output.
    scaler: Option<Scaler>,
    converted: ff::frame::Video,
    /// Timestamp (µs, before the caller's offset) of the last frame emitted since open/reset,
    /// to synthesise timestamps for pictures that carry none.
    last_raw_pts_us: Option<i64>,
    stats: DecodeStats,
}

impl VideoDecoder {
    /// Opens a decoder for a demuxed stream. `threads` = 0 lets libavcodec pick (one per core).
    pub(crate) fn open(
        params: ff::codec::Parameters,
        time_base: ff::Rational,
        default_duration_us: i64,
        stream: StreamId,
        threads: usize,
    ) -> Result<Self, CodecError> {
        let id = params.id();
        let mut ctx =
            ff::codec::context::Context::from_parameters(params).map_err(|e| CodecError::Open {
                codec: format!("{id:?}"),
                source: e,
            })?;
        ctx.set_threading(ff::codec::threading::Config {
            kind: ff::codec::threading::Type::Frame,
            count: threads,
            ..Default::default()
        });
        let dec = ctx.decoder().video().map_err(|e| match e {
            ff::Error::DecoderNotFound => CodecError::NoDecoder {
                codec: format!("{id:?}"),
            },
            e => CodecError::Open {
                codec: format!("{id:?}"),
                source: e,
            },
        })?;
        Ok(VideoDecoder {
            dec,
            picture: ff::frame::Video::empty(),
            stream,
            time_base,
            default_duration_us,
            next_seq: 0,
            waiting_for_key: true,
            pending: false,
            last_raw_pts_us: None,
            scaler: None,
            converted: ff::frame::Video::empty(),
            stats: DecodeStats::default(),
        })
    }

    /// Counters so far.
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Hands one packet to the decoder. Damaged packets are counted and skipped, never fatal.
    pub(crate) fn send(&mut self, pkt: &ff::Packet) {
        if self.waiting_for_key {
            if !pkt.is_key() {
                self.stats.skipped_before_keyframe += 1;
                return;
            }
            self.waiting_for_key = false;
        }
        self.stats.packets += 1;
        match self.dec.send_packet(pkt) {
            Ok(()) => {}
            Err(e) if is_again(&e) => {
                // Cannot happen with our drain-after-every-send loop; treat as a dropped packet.
                self.stats.errors += 1;
            }
            Err(ff::Error::Eof) => {}
            Err(e) => {
                self.stats.errors += 1;
                tracing::debug!(stream = %self.stream, error = %e, "decoder rejected packet");
            }
        }
    }

    /// Signals end of stream so the decoder releases the pictures it still holds.
    pub(crate) fn send_eof(&mut self) {
        let _ = self.dec.send_eof();
    }

    /// Drops buffered pictures and waits for the next keyframe (after a seek or loop).
    pub(crate) fn reset(&mut self) {
        self.dec.flush();
        self.waiting_for_key = true;
        self.pending = false;
        self.last_raw_pts_us = None;
    }

    /// Next decoded frame, copied into a surface of `pool` (waiting for one: backpressure).
    /// `Ok(None)` means the decoder needs more input (or is drained after `send_eof`).
    /// On [`CodecError::Geometry`] (the stream changed resolution) the picture is kept: call
    /// again with a pool of [`VideoDecoder::pending_layout`].
    pub(crate) fn receive(
        &mut self,
        pool: &SurfacePool,
        pts_offset_us: i64,
    ) -> Result<Option<Frame>, CodecError> {
        while !self.pending {
            match self.dec.receive_frame(&mut self.picture) {
                Ok(()) => self.pending = true,
                Err(ff::Error::Eof) => return Ok(None),
                Err(e) if is_again(&e) => return Ok(None),
                Err(e) => {
                    self.stats.errors += 1;
                    tracing::debug!(stream = %self.stream, error = %e, "decoder dropped a picture");
                }
            }
        }
        let layout = self.pending_layout()?;
        let format = layout.format;
        if layout != pool.layout() {
            return Err(CodecError::Geometry {
                got_w: layout.width,
                got_h: layout.height,
                want_w: pool.layout().width,
                want_h: pool.layout().height,
            });
        }
        let mut surface = pool.acquire()?;
        // Whole-frame copies made here, counted as each one is done (see `Frame::copies`).
        let mut copies = 0;
        // Other layouts (MJPEG's 4:2:2, 10-bit, 4:4:4) are converted to I420 first: swscale
        // writes the whole picture into `converted`, one copy of its own.
        let converted = !native_layout(self.picture.format());
        if converted {
            self.convert_to_i420()?;
            copies += 1;
        }
        let pic = if converted {
            &self.converted
        } else {
            &self.picture
        };
        {
            let data: &mut [u8] = &mut surface;
            for i in 0..layout.planes() {
                let (w_bytes, rows) = if i == 0 {
                    (layout.width, layout.height)
                } else {
                    let (cw, ch) = layout.chroma_size();
                    (
                        if format == PixelFormat::Nv12 {
                            cw * 2
                        } else {
                            cw
                        },
                        ch,
                    )
                };
                let off = layout.offsets[i];
                let dst = crate::pixel::PlaneMut {
                    data: &mut data[off..off + layout.plane_len(i)],
                    stride: layout.strides[i],
                };
                let src = Plane {
                    data: pic.data(i),
                    stride: pic.stride(i),
                };
                copy_plane(src, dst, w_bytes, rows)?;
            }
        }
        // The picture → the pooled surface.
        copies += 1;
        self.pending = false;
        // Raw Annex-B H.264/H.265 files carry no timestamps at all: every picture used to get
        // pts 0. Such pictures now follow the previous one by the nominal frame duration.
        // From the decoder's picture: swscale's output carries no timestamps.
        let raw_pts_us = match self.picture.timestamp().or(self.picture.pts()) {
            Some(pts) => rescale_us(pts, self.time_base),
            None => self
                .last_raw_pts_us
                .map_or(0, |p| p + self.default_duration_us),
        };
        self.last_raw_pts_us = Some(raw_pts_us);
        let pts_us = raw_pts_us + pts_offset_us;
        let pic = &self.picture;
        let corrupt = pic.is_corrupt() || pic.has_decode_errors();
        if corrupt {
            self.stats.corrupt_frames += 1;
        }
        self.stats.frames += 1;
        let seq = self.next_seq;
        self.next_seq += 1;
        Ok(Some(Frame {
            stream: self.stream.clone(),
            seq,
            pts_us,
            duration_us: self.default_duration_us,
            layout,
            surface,
            copies,
            meta: FrameMeta {
                keyframe: pic.is_key(),
                corrupt,
                ..FrameMeta::new(Instant::now())
            },
            device: None,
        }))
    }
}

impl VideoDecoder {
    /// Layout of the decoded picture waiting to be copied out.
    pub(crate) fn pending_layout(&self) -> Result<FrameLayout, CodecError> {
        let pic = &self.picture;
        let format = match pic.format() {
            ff::format::Pixel::NV12 => PixelFormat::Nv12,
            ff::format::Pixel::None => {
                return Err(CodecError::UnsupportedPixelFormat {
                    format: ff::format::Pixel::None,
                });
            }
            // Everything else arrives as (or is converted to) I420.
            _ => PixelFormat::I420,
        };
        Ok(FrameLayout::new(
            format,
            pic.width() as usize,
            pic.height() as usize,
        ))
    }

    /// Converts `picture` into `converted` (I420) with swscale, reusing the scaler and the
    /// target picture while format and size stay the same.
    fn convert_to_i420(&mut self) -> Result<(), CodecError> {
        let (src, w, h) = (
            self.picture.format(),
            self.picture.width(),
            self.picture.height(),
        );
        let reuse = self.scaler.as_ref().is_some_and(|s| {
            let i = s.0.input();
            (i.format, i.width, i.height) == (src, w, h)
        });
        if !reuse {
            let scaler = ff::software::scaling::Context::get(
                src,
                w,
                h,
                ff::format::Pixel::YUV420P,
                w,
                h,
                ff::software::scaling::Flags::BILINEAR,
            )
            .map_err(|_| CodecError::UnsupportedPixelFormat { format: src })?;
            self.scaler = Some(Scaler(scaler));
            self.converted = ff::frame::Video::new(ff::format::Pixel::YUV420P, w, h);
            tracing::info!(stream = %self.stream, from = ?src, "converting decoded pictures to I420");
        }
        if let Some(scaler) = self.scaler.as_mut() {
            scaler
                .0
                .run(&self.picture, &mut self.converted)
                .map_err(|_| CodecError::UnsupportedPixelFormat { format: src })?;
        }
        Ok(())
    }
}

/// A swscale context owned by one decoder.
struct Scaler(ff::software::scaling::Context);

// SAFETY: an SwsContext has no thread affinity (no thread-local state, no callbacks); this
// wrapper owns it exclusively and it is only ever used through `&mut` by the thread that holds
// the decoder, so moving it to another thread is sound.
unsafe impl Send for Scaler {}

/// Layouts the decoder's pictures can be copied from directly.
fn native_layout(f: ff::format::Pixel) -> bool {
    matches!(
        f,
        ff::format::Pixel::YUV420P | ff::format::Pixel::YUVJ420P | ff::format::Pixel::NV12
    )
}

/// `ts` in `tb` units → microseconds.
pub(crate) fn rescale_us(ts: i64, tb: ff::Rational) -> i64 {
    let (n, d) = (tb.numerator() as i128, tb.denominator() as i128);
    if d == 0 {
        return 0;
    }
    (ts as i128 * n * 1_000_000 / d) as i64
}
