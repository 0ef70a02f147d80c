//! What the two hardware decoders (NVDEC, `nvdec.rs`; Orin's V4L2 M2M decoder, `nvmm.rs`)
//! share in front of the chip: which streams they take (8-bit 4:2:0 H.264 and H.265 within
//! a size limit, known before the first packet so that anything else goes to libavcodec),
//! packets as the chip's parser takes them (Annex-B: MP4's length-prefixed NAL units
//! rewritten, the avcC/hvcC parameter sets sent first and after every reset), and the
//! timestamps of pictures that come out without one.

use ffmpeg_next as ff;

use super::decode_rescale_us;

/// The timestamp fed for packets that carry none; frames that come out with it get one
/// from the previous frame and the nominal duration (as the CPU decoder does).
pub(crate) const NO_PTS: i64 = i64::MIN;

/// The two codecs both hardware decoders take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HwCodec {
    H264,
    Hevc,
}

/// How the packets reach the parser.
enum Framing {
    /// MP4/MKV: NAL units with `n`-byte length prefixes; parameter sets from the header.
    LengthPrefixed(usize),
    /// Raw, MPEG-TS and RTP streams: already Annex-B.
    AnnexB,
}

/// A demuxed stream a hardware decoder takes, and its packets in Annex-B form.
pub(crate) struct HwStream {
    pub(crate) codec: HwCodec,
    framing: Framing,
    /// Parameter sets (Annex-B) sent before the first packet and after every reset.
    headers: Vec<u8>,
    headers_due: bool,
    annexb: Vec<u8>,
    time_base: ff::Rational,
    frame_us: i64,
    last_raw_pts_us: Option<i64>,
}

impl HwStream {
    /// The stream behind `params`, if it is 8-bit 4:2:0 H.264 or H.265 no larger than
    /// `max_side(codec)` on either side; otherwise why not (the caller decodes on the CPU).
    pub(crate) fn probe(
        params: &ff::codec::Parameters,
        time_base: ff::Rational,
        frame_us: i64,
        max_side: impl Fn(HwCodec) -> usize,
    ) -> Result<HwStream, String> {
        let codec = match params.id() {
            ff::codec::Id::H264 => HwCodec::H264,
            ff::codec::Id::HEVC => HwCodec::Hevc,
            other => return Err(format!("decodes H.264 and H.265 here, not {other:?}")),
        };
        // SAFETY: `params` wraps a live AVCodecParameters; extradata is `extradata_size`
        // bytes (or null).
        let (extra, width, height, format) = unsafe {
            let p = &*params.as_ptr();
            let extra = if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            };
            (
                extra,
                p.width.max(0) as usize,
                p.height.max(0) as usize,
                p.format,
            )
        };
        // 8-bit 4:2:0 within the size limit. Anything else goes to the CPU decoder now
        // rather than failing at the first sequence header.
        use ff::ffi::AVPixelFormat as P;
        let known_420 = [
            P::AV_PIX_FMT_NONE as i32,
            P::AV_PIX_FMT_YUV420P as i32,
            P::AV_PIX_FMT_YUVJ420P as i32,
            P::AV_PIX_FMT_NV12 as i32,
        ];
        if !known_420.contains(&format) {
            return Err("decodes 8-bit 4:2:0 here; this stream is another format".into());
        }
        let max = max_side(codec);
        if width > max || height > max {
            return Err(format!(
                "{width}x{height} exceeds the decoder's {max}x{max} for this codec"
            ));
        }
        // MP4/MKV headers are length-prefixed records (avcC/hvcC); raw and TS streams carry
        // Annex-B parameter sets (start codes), or none.
        let annexb = extra.starts_with(&[0, 0, 1]) || extra.starts_with(&[0, 0, 0, 1]);
        use aegis_cuda::nvdec::{avcc_parameter_sets, hvcc_parameter_sets};
        let (headers, framing) = match (extra.is_empty() || annexb, codec) {
            (true, _) => (extra, Framing::AnnexB),
            (false, HwCodec::H264) => {
                avcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))?
            }
            (false, HwCodec::Hevc) => {
                hvcc_parameter_sets(&extra).map(|(h, n)| (h, Framing::LengthPrefixed(n)))?
            }
        };
        Ok(HwStream {
            codec,
            framing,
            headers,
            headers_due: true,
            annexb: Vec::new(),
            time_base,
            frame_us,
            last_raw_pts_us: None,
        })
    }

    /// The packet as Annex-B (the parameter sets first when due) and its timestamp (µs,
    /// [`NO_PTS`] if it has none); `Err` for a damaged packet (count and skip it). Call
    /// [`HwStream::headers_sent`] once the decoder has taken it.
    pub(crate) fn packet(&mut self, pkt: &ff::Packet) -> Result<(&[u8], i64), String> {
        self.annexb.clear();
        if self.headers_due {
            self.annexb.extend_from_slice(&self.headers);
        }
        let data = pkt.data().unwrap_or_default();
        match self.framing {
            Framing::LengthPrefixed(n) => {
                aegis_cuda::nvdec::avcc_to_annexb(data, n, &mut self.annexb)?
            }
            Framing::AnnexB => self.annexb.extend_from_slice(data),
        }
        let pts = pkt
            .pts()
            .or(pkt.dts())
            .map_or(NO_PTS, |p| decode_rescale_us(p, self.time_base));
        Ok((&self.annexb, pts))
    }

    /// The decoder took the last packet, and the parameter sets with it.
    pub(crate) fn headers_sent(&mut self) {
        self.headers_due = false;
    }

    /// Whether the next packet carries the parameter sets.
    pub(crate) fn headers_due(&self) -> bool {
        self.headers_due
    }

    /// The packet that carried the parameter sets never reached the decoder: the next one
    /// carries them again.
    pub(crate) fn headers_lost(&mut self) {
        self.headers_due = true;
    }

    /// After a seek or a new decoder: parameter sets go first again; timestamps restart.
    pub(crate) fn reset(&mut self) {
        self.headers_due = true;
        self.last_raw_pts_us = None;
    }

    /// A decoded picture's timestamp: its own, or (for [`NO_PTS`]) the previous one plus
    /// the nominal frame duration.
    pub(crate) fn picture_pts(&mut self, pts: i64) -> i64 {
        let raw = if pts == NO_PTS {
            self.last_raw_pts_us.map_or(0, |p| p + self.frame_us)
        } else {
            pts
        };
        self.last_raw_pts_us = Some(raw);
        raw
    }

    /// The nominal frame duration (µs).
    pub(crate) fn frame_us(&self) -> i64 {
        self.frame_us
    }
}
