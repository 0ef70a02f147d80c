//! The CPU encoder: H.264 with libx264 through libavcodec (libopenh264 when libavcodec has
//! no x264), fed from pooled frames, behind [`VideoEncoder`] and configured by
//! [`EncoderSettings`] (the sink's `encoder:` section).
//!
//! Why it exists: recording and re-streaming sinks need compressed video from the frames the
//! pipeline produced; the encoder copies each frame once into its own picture (NV12 frames
//! are converted to I420 on the way) and timestamps in a 90 kHz time base so microsecond
//! timestamps survive. It must not mux (containers are `crate::container` / `crate::record`)
//! nor decide which frames to encode.

use ffmpeg_next as ff;

use super::{CodecError, is_again};
use crate::frame::{Frame, FrameLayout, PixelFormat};
use crate::pixel::{Plane, PlaneMut, copy_plane, nv12_to_i420};

/// Encoder time base: 90 kHz, the MPEG clock, so microsecond timestamps survive rounding.
pub(crate) const ENCODER_TIME_BASE: ff::Rational = ff::Rational(1, 90_000);

/// How to encode: the knobs an operator sets in the sink's `encoder:` section.
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderSettings {
    /// x264 preset (ultrafast … veryslow); ignored by libopenh264.
    pub preset: String,
    /// Target bitrate in kbit/s.
    pub bitrate_kbps: u32,
    /// Maximum distance between keyframes, in frames.
    pub gop_frames: u32,
    /// Encoder threads; 0 = one per core.
    pub threads: u32,
    /// Nominal frame rate (numerator, denominator), used for rate control.
    pub frame_rate: (i32, i32),
    /// x264's `zerolatency` tune: no frames held in the encoder (sliced threads instead of
    /// frame threads, no sync lookahead), so a live output gets each frame as soon as it
    /// is encoded; a little less efficient.
    pub low_latency: bool,
    /// The H.264 profile x264 is held to (`baseline`, `main`, `high`); `None`: its choice.
    pub profile: Option<&'static str>,
}

impl Default for EncoderSettings {
    fn default() -> Self {
        EncoderSettings {
            preset: "ultrafast".into(),
            bitrate_kbps: 4000,
            gop_frames: 60,
            threads: 0,
            frame_rate: (30, 1),
            low_latency: false,
            profile: None,
        }
    }
}

/// An H.264 encoder fed from pooled frames.
pub struct VideoEncoder {
    enc: ff::encoder::video::Encoder,
    picture: ff::frame::Video,
    packet: ff::Packet,
    codec_name: &'static str,
    width: usize,
    height: usize,
    frames: u64,
    /// Nominal frame duration in [`ENCODER_TIME_BASE`] ticks, stamped on packets that come
    /// out of the encoder without one.
    frame_ticks: i64,
}

impl VideoEncoder {
    /// Opens libx264 (or libopenh264) for frames of `layout`. `global_header` puts SPS/PPS in
    /// the codec extradata, as MP4 wants.
    pub fn open(
        settings: &EncoderSettings,
        layout: FrameLayout,
        global_header: bool,
    ) -> Result<Self, CodecError> {
        // Encoders can be opened before any demuxer (recording synthetic video), and only
        // `init` quiets libav's logging: without it libx264 printed its banner and stats.
        crate::init();
        crate::init();
        let codec_name = super::h264_encoder_name().ok_or(CodecError::NoEncoder)?;
        let codec = ff::encoder::find_by_name(codec_name).ok_or(CodecError::NoEncoder)?;
        // 4:2:0 encoders need even sizes; an odd cropped size loses its last row/column.
        let (width, height) = (layout.width & !1, layout.height & !1);
        if width == 0 || height == 0 {
            return Err(CodecError::Geometry {
                got_w: layout.width,
                got_h: layout.height,
                want_w: width.max(2),
                want_h: height.max(2),
            });
        }
        let open_err = |e| CodecError::Open {
            codec: codec_name.to_string(),
            source: e,
        };
        let mut ctx = ff::codec::context::Context::new_with_codec(codec);
        if global_header {
            ctx.set_flags(ff::codec::Flags::GLOBAL_HEADER);
        }
        // libavcodec's libx264 wrapper picks sliced or frame threads from the thread type
        // (overriding the tune): frame threads hold frames, slices do not.
        ctx.set_threading(ff::codec::threading::Config {
            kind: if settings.low_latency {
                ff::codec::threading::Type::Slice
            } else {
                ff::codec::threading::Type::Frame
            },
            count: settings.threads as usize,
            ..Default::default()
        });
        let mut enc = ctx.encoder().video().map_err(open_err)?;
        enc.set_width(width as u32);
        enc.set_height(height as u32);
        enc.set_format(ff::format::Pixel::YUV420P);
        enc.set_time_base(ENCODER_TIME_BASE);
        let (n, d) = settings.frame_rate;
        enc.set_frame_rate(Some(ff::Rational(n.max(1), d.max(1))));
        enc.set_bit_rate(settings.bitrate_kbps as usize * 1000);
        enc.set_gop(settings.gop_frames);
        // No B-frames: packets leave in display order, so a segment can be cut at any
        // keyframe and live latency stays one frame.
        enc.set_max_b_frames(0);
        let mut opts = ff::Dictionary::new();
        if codec_name == "libx264" {
            opts.set("preset", &settings.preset);
            // A forced keyframe (segment boundary) must be an IDR so the segment stands alone.
            opts.set("forced-idr", "1");
            if settings.low_latency {
                opts.set("tune", "zerolatency");
            }
            if let Some(p) = settings.profile {
                opts.set("profile", p);
            }
        }
        let enc = enc.open_with(opts).map_err(open_err)?;
        let picture =
            ff::frame::Video::new(ff::format::Pixel::YUV420P, width as u32, height as u32);
        Ok(VideoEncoder {
            enc,
            picture,
            packet: ff::Packet::empty(),
            codec_name,
            width,
            height,
            frames: 0,
            frame_ticks: (ENCODER_TIME_BASE.denominator() as i64 * d.max(1) as i64
                / n.max(1) as i64)
                .max(1),
        })
    }

    /// Which libavcodec encoder is in use.
    pub fn codec_name(&self) -> &'static str {
        self.codec_name
    }

    /// Stream parameters (codec, size, SPS/PPS extradata) for a muxer.
    pub(crate) fn parameters(&self) -> ff::codec::Parameters {
        ff::codec::Parameters::from(&self.enc.0)
    }

    /// The codec extradata (SPS/PPS, Annex-B as libx264 writes it with a global header;
    /// empty without one): what an fMP4 init segment is built from.
    pub fn extradata(&self) -> Vec<u8> {
        // SAFETY: `enc` wraps an open AVCodecContext; `extradata` is null or points to
        // `extradata_size` bytes the codec owns for the context's lifetime, copied here.
        unsafe {
            let ctx = &*self.enc.0.as_ptr();
            if ctx.extradata.is_null() || ctx.extradata_size <= 0 {
                return Vec::new();
            }
            std::slice::from_raw_parts(ctx.extradata, ctx.extradata_size as usize).to_vec()
        }
    }

    /// Width and height the encoder was opened for (the frame size rounded down to even).
    pub fn geometry(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Whether frames of `layout` can be fed to this encoder.
    pub fn accepts(&self, layout: &FrameLayout) -> bool {
        (layout.width & !1, layout.height & !1) == (self.width, self.height)
    }

    /// Encodes `frame` at `pts` (in [`ENCODER_TIME_BASE`] ticks, strictly increasing; a
    /// keyframe when `force_key`); every packet that comes out is passed to `sink` with
    /// timestamps in the same time base. Packets may lag frames by the encoder's thread delay.
    /// Filling the encoder's picture from the frame is one whole-frame copy, added to
    /// [`Frame::copies`] once it is made (a frame refused before that is not counted).
    pub fn encode(
        &mut self,
        frame: &mut Frame,
        pts: i64,
        force_key: bool,
        sink: &mut dyn FnMut(&mut ff::Packet) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let l = &frame.layout;
        if !self.accepts(l) {
            return Err(CodecError::Geometry {
                got_w: l.width,
                got_h: l.height,
                want_w: self.width,
                want_h: self.height,
            });
        }
        self.make_picture_writable(frame)?;
        self.fill_picture(frame)?;
        frame.copies += 1;
        self.picture.set_pts(Some(pts));
        self.picture.set_kind(if force_key {
            ff::picture::Type::I
        } else {
            ff::picture::Type::None
        });
        let err = |e, codec_name, frame: &Frame| CodecError::Encode {
            codec: codec_name,
            stream: frame.stream.to_string(),
            seq: frame.seq,
            source: e,
        };
        self.enc
            .send_frame(&self.picture)
            .map_err(|e| err(e, self.codec_name, frame))?;
        self.frames += 1;
        self.drain(sink).map_err(|e| match e {
            DrainError::Codec(c) => c,
            DrainError::Av(e) => err(e, self.codec_name, frame),
        })
    }

    /// Flushes the encoder at end of stream, passing the remaining packets to `sink`.
    pub fn finish(
        &mut self,
        sink: &mut dyn FnMut(&mut ff::Packet) -> Result<(), CodecError>,
    ) -> Result<(), CodecError> {
        let _ = self.enc.send_eof();
        match self.drain(sink) {
            Ok(()) => Ok(()),
            Err(DrainError::Codec(c)) => Err(c),
            Err(DrainError::Av(e)) => Err(CodecError::Encode {
                codec: self.codec_name,
                stream: String::new(),
                seq: self.frames,
                source: e,
            }),
        }
    }

    fn drain(
        &mut self,
        sink: &mut dyn FnMut(&mut ff::Packet) -> Result<(), CodecError>,
    ) -> Result<(), DrainError> {
        loop {
            match self.enc.receive_packet(&mut self.packet) {
                Ok(()) => {
                    // libx264 leaves packet durations at 0, so the muxer would give the last
                    // sample of a file or fragment no duration: MP4 durations came out one
                    // frame short and the derived average frame rate wrong (30.34 fps for a
                    // 30 fps clip of 90 frames). Stamp the nominal duration instead.
                    if self.packet.duration() <= 0 {
                        self.packet.set_duration(self.frame_ticks);
                    }
                    sink(&mut self.packet).map_err(DrainError::Codec)?
                }
                Err(ff::Error::Eof) => return Ok(()),
                Err(e) if is_again(&e) => return Ok(()),
                Err(e) => return Err(DrainError::Av(e)),
            }
        }
    }

    fn make_picture_writable(&mut self, frame: &Frame) -> Result<(), CodecError> {
        // SAFETY: `picture` owns a valid AVFrame allocated by `frame::Video::new`;
        // av_frame_make_writable only reallocates its buffers when the encoder still holds a
        // reference to them, which keeps the encoder's copy intact.
        let rc = unsafe { ff::ffi::av_frame_make_writable(self.picture.as_mut_ptr()) };
        if rc < 0 {
            // Writing anyway would alias buffers the encoder still reads.
            return Err(CodecError::Encode {
                codec: self.codec_name,
                stream: frame.stream.to_string(),
                seq: frame.seq,
                source: ff::Error::from(rc),
            });
        }
        Ok(())
    }

    fn fill_picture(&mut self, frame: &Frame) -> Result<(), CodecError> {
        // The encoder's (even) size; an odd frame's last row/column is left out.
        let l = FrameLayout {
            width: self.width,
            height: self.height,
            ..frame.layout
        };
        let (cw, ch) = l.chroma_size();
        let [sy, s1, s2] = frame.planes();
        let (ys, us, vs) = (
            self.picture.stride(0),
            self.picture.stride(1),
            self.picture.stride(2),
        );
        // SAFETY: the three plane pointers of a YUV420P AVFrame allocated for
        // width×height point to disjoint buffers of at least stride×rows bytes each; we
        // build non-overlapping slices of exactly those sizes and the frame outlives them.
        // `make_picture_writable` just succeeded, so no encoder reference aliases them.
        let (py, pu, pv) = unsafe {
            let f = &*self.picture.as_ptr();
            (
                std::slice::from_raw_parts_mut(f.data[0], ys * l.height),
                std::slice::from_raw_parts_mut(f.data[1], us * ch),
                std::slice::from_raw_parts_mut(f.data[2], vs * ch),
            )
        };
        let (oy, ou, ov) = (
            PlaneMut {
                data: py,
                stride: ys,
            },
            PlaneMut {
                data: pu,
                stride: us,
            },
            PlaneMut {
                data: pv,
                stride: vs,
            },
        );
        match l.format {
            PixelFormat::I420 => {
                copy_plane(sy, oy, l.width, l.height)?;
                copy_plane(s1, ou, cw, ch)?;
                copy_plane(s2, ov, cw, ch)?;
            }
            PixelFormat::Nv12 => {
                nv12_to_i420(
                    Plane {
                        data: sy.data,
                        stride: sy.stride,
                    },
                    Plane {
                        data: s1.data,
                        stride: s1.stride,
                    },
                    l.width,
                    l.height,
                    oy,
                    ou,
                    ov,
                )?;
            }
        }
        Ok(())
    }
}

enum DrainError {
    Codec(CodecError),
    Av(ff::Error),
}
