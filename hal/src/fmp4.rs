//! A fragmented-MP4 (ISO BMFF) writer for one H.264 video track, written by hand.
//!
//! Why it exists: the technician page's live view feeds fMP4 over a WebSocket into the
//! browser's Media Source Extensions, one fragment per encoded frame so latency stays one
//! frame, and LL-HLS parts want the same fragments. libavformat's mp4 muxer writes to an
//! `AVIOContext` and buffers fragments its own way; the boxes needed here are few and fixed,
//! so they are written directly: an init segment ([`init_segment`]: `ftyp` + `moov`) once
//! per viewer, then `moof` + `mdat` per frame ([`FragmentWriter`]).
//!
//! Input is what [`crate::codec::VideoEncoder`] makes: Annex-B access units (start codes) in a
//! 90 kHz time base, and SPS/PPS either in the codec extradata (`global_header`; libx264
//! writes it in Annex-B form, other encoders may write an avcC record, both are read:
//! [`AvcConfig::from_extradata`]) or in-band in keyframes ([`AvcConfig::from_annexb`]).
//! Every byte is treated as hostile: malformed input gives an [`Fmp4Error`], never a panic.
//! This module must not touch libav* (beyond reading an encoder's extradata) nor decide
//! which frames to send.

use crate::codec::VideoEncoder;

/// NAL unit types this module looks at (H.264 Table 7-1).
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
const NAL_AUD: u8 = 9;

/// The one track's id in every box that names it.
const TRACK_ID: u32 = 1;

/// Sample flags (ISO/IEC 14496-12 8.8.3.1): a sync sample depends on no other
/// (`sample_depends_on = 2`); any other sample depends on others and is non-sync.
const FLAGS_SYNC: u32 = 0x0200_0000;
const FLAGS_NON_SYNC: u32 = 0x0101_0000;

/// What went wrong writing fMP4 or reading the H.264 configuration; each names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fmp4Error {
    /// Annex-B data had bytes other than zeros before its first start code.
    #[error("{what} is not Annex-B H.264: no start code (00 00 01) before byte {offset} of {len}")]
    NotAnnexB {
        /// Which input (`"sample 3"`, `"parameter sets"`).
        what: String,
        /// Where the first non-zero byte before any start code is.
        offset: usize,
        /// Input length.
        len: usize,
    },
    /// No SPS (NAL type 7) in the data.
    #[error("no SPS (NAL unit type 7) in {len} bytes of {form} data")]
    NoSps {
        /// `"Annex-B"` or `"avcC"`.
        form: &'static str,
        /// Input length.
        len: usize,
    },
    /// No PPS (NAL type 8) in the data.
    #[error("no PPS (NAL unit type 8) in {len} bytes of {form} data")]
    NoPps {
        /// `"Annex-B"` or `"avcC"`.
        form: &'static str,
        /// Input length.
        len: usize,
    },
    /// The SPS could not be read far enough for the avcC record and the codec string.
    #[error("SPS of {len} bytes is malformed: {why}")]
    BadSps {
        /// SPS length including its NAL header.
        len: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// What should be an SPS or PPS has another NAL header.
    #[error("the NAL unit given as {what} has header byte {header:02x?}, not an {what} header")]
    WrongNalType {
        /// `"SPS"` or `"PPS"`.
        what: &'static str,
        /// Its first byte, `None` when empty.
        header: Option<u8>,
    },
    /// An avcC record (ISO/IEC 14496-15 5.3.3.1) was malformed or cut short.
    #[error("avcC record of {len} bytes is malformed: {why}")]
    BadAvcc {
        /// Record length.
        len: usize,
        /// What was wrong.
        why: &'static str,
    },
    /// Extradata was empty: the encoder was opened without `global_header`.
    #[error(
        "the encoder has no extradata (opened without global_header): take SPS/PPS from a keyframe with AvcConfig::from_annexb"
    )]
    NoExtradata,
    /// A NAL unit had its forbidden_zero_bit set, which no H.264 stream does.
    #[error(
        "NAL unit {nal} of {what} has forbidden_zero_bit set (header byte {header:#04x}): not H.264"
    )]
    ForbiddenBit {
        /// Which input.
        what: String,
        /// Index of the NAL unit in it.
        nal: usize,
        /// The header byte.
        header: u8,
    },
    /// A NAL unit is larger than its length field can say.
    #[error("{what} NAL unit of {len} bytes is larger than the {max} bytes its length field holds")]
    NalTooLarge {
        /// Which NAL unit (`"SPS"`, `"PPS"`, `"sample 0"`).
        what: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A sample had no NAL units once access unit delimiters and empty units were dropped.
    #[error("sample {index} of the fragment is empty: no NAL units besides access unit delimiters")]
    EmptyAccessUnit {
        /// Index of the sample in the fragment.
        index: usize,
    },
    /// A fragment was asked for with no samples.
    #[error("a fragment needs at least one sample")]
    NoSamples,
    /// Samples in one fragment must follow each other without gaps or overlaps.
    #[error(
        "sample {index} decodes at {got} but the sample before it ends at {want}: samples in one fragment must be contiguous"
    )]
    DecodeTimeGap {
        /// Index of the sample in the fragment.
        index: usize,
        /// Its decode time.
        got: u64,
        /// Previous decode time + duration.
        want: u64,
    },
    /// A fragment starts before the previous one ended.
    #[error("fragment decodes at {got}, before the previous fragment ended at {previous_end}")]
    DecodeTimeBackwards {
        /// The new fragment's first decode time.
        got: u64,
        /// Where the previous fragment ended.
        previous_end: u64,
    },
    /// Decode time + duration overflowed 64 bits.
    #[error("sample {index} decode time {decode_time} + duration {duration} overflows")]
    TimeOverflow {
        /// Index of the sample in the fragment.
        index: usize,
        /// Its decode time.
        decode_time: u64,
        /// Its duration.
        duration: u32,
    },
    /// The fragment would not fit 32-bit box sizes.
    #[error("a fragment of {samples} samples would be {bytes} bytes, over the 4 GiB a box holds")]
    FragmentTooLarge {
        /// Samples in the fragment.
        samples: usize,
        /// Its size.
        bytes: u64,
    },
    /// The picture size does not fit a sample entry.
    #[error("video size {width}x{height} does not fit an MP4 sample entry (1..=65535 each)")]
    Geometry {
        /// Width asked for.
        width: usize,
        /// Height asked for.
        height: usize,
    },
    /// A timescale of 0 ticks per second.
    #[error("timescale must be at least 1 tick per second")]
    ZeroTimescale,
}

/// The H.264 decoder configuration the init segment carries: one SPS, one PPS (NAL units
/// without start codes or length prefixes) and the picture size. Built only by the
/// constructors, which check what the init segment and [`Self::codec_string`] rely on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AvcConfig {
    sps: Vec<u8>,
    pps: Vec<u8>,
    width: u16,
    height: u16,
    /// `chroma_format_idc`, `bit_depth_luma_minus8`, `bit_depth_chroma_minus8` for the
    /// profiles whose SPS carries them (High and above); `None` for the others.
    high: Option<(u8, u8, u8)>,
}

impl AvcConfig {
    /// The first SPS and PPS in Annex-B data (an encoder's extradata or a keyframe packet).
    pub fn from_annexb(data: &[u8], width: usize, height: usize) -> Result<Self, Fmp4Error> {
        let nals = annexb_nals(data, "parameter sets")?;
        let first = |t: u8| nals.iter().copied().find(|n| n[0] & 0x1f == t);
        let len = data.len();
        let sps = first(NAL_SPS).ok_or(Fmp4Error::NoSps {
            form: "Annex-B",
            len,
        })?;
        let pps = first(NAL_PPS).ok_or(Fmp4Error::NoPps {
            form: "Annex-B",
            len,
        })?;
        Self::new(sps, pps, width, height)
    }

    /// The first SPS and PPS of an avcC record (`AVCDecoderConfigurationRecord`).
    pub fn from_avcc(record: &[u8], width: usize, height: usize) -> Result<Self, Fmp4Error> {
        let len = record.len();
        let bad = |why| Fmp4Error::BadAvcc { len, why };
        let mut r = Reader(record);
        if r.u8().ok_or(bad("shorter than its 6-byte header"))? != 1 {
            return Err(bad("configurationVersion is not 1"));
        }
        r.take(4).ok_or(bad("shorter than its 6-byte header"))?;
        let units = |r: &mut Reader, count: usize| -> Result<Option<Vec<u8>>, Fmp4Error> {
            let mut first = None;
            for _ in 0..count {
                let n = r.u16().ok_or(bad("parameter set length cut short"))? as usize;
                let unit = r.take(n).ok_or(bad("parameter set cut short"))?;
                if first.is_none() && !unit.is_empty() {
                    first = Some(unit.to_vec());
                }
            }
            Ok(first)
        };
        let sps_count = (r.u8().ok_or(bad("shorter than its 6-byte header"))? & 0x1f) as usize;
        let sps = units(&mut r, sps_count)?.ok_or(Fmp4Error::NoSps { form: "avcC", len })?;
        let pps_count = r.u8().ok_or(bad("PPS count missing"))? as usize;
        let pps = units(&mut r, pps_count)?.ok_or(Fmp4Error::NoPps { form: "avcC", len })?;
        Self::new(&sps, &pps, width, height)
    }

    /// Codec extradata in either form: an avcC record starts with its version byte 1, which
    /// Annex-B data (zeros, then a start code) never does.
    pub fn from_extradata(
        extradata: &[u8],
        width: usize,
        height: usize,
    ) -> Result<Self, Fmp4Error> {
        match extradata.first() {
            None => Err(Fmp4Error::NoExtradata),
            Some(1) => Self::from_avcc(extradata, width, height),
            Some(_) => Self::from_annexb(extradata, width, height),
        }
    }

    /// The configuration of an encoder opened with `global_header`, from its extradata and
    /// size. Without `global_header` the SPS/PPS come in-band: use [`Self::from_annexb`] on
    /// the first keyframe packet.
    pub fn from_encoder(encoder: &VideoEncoder) -> Result<Self, Fmp4Error> {
        let params = encoder.parameters();
        // SAFETY: `params` owns a live AVCodecParameters; its extradata is null or points to
        // `extradata_size` bytes, which we copy before `params` is dropped.
        let extradata = unsafe {
            let p = &*params.as_ptr();
            if p.extradata.is_null() || p.extradata_size <= 0 {
                Vec::new()
            } else {
                std::slice::from_raw_parts(p.extradata, p.extradata_size as usize).to_vec()
            }
        };
        let (width, height) = encoder.geometry();
        Self::from_extradata(&extradata, width, height)
    }

    fn new(sps: &[u8], pps: &[u8], width: usize, height: usize) -> Result<Self, Fmp4Error> {
        let fits = |v: usize| (1..=usize::from(u16::MAX)).contains(&v);
        if !fits(width) || !fits(height) {
            return Err(Fmp4Error::Geometry { width, height });
        }
        for (what, unit, ty) in [("SPS", sps, NAL_SPS), ("PPS", pps, NAL_PPS)] {
            if unit.len() > usize::from(u16::MAX) {
                return Err(Fmp4Error::NalTooLarge {
                    what: what.into(),
                    len: unit.len(),
                    max: usize::from(u16::MAX),
                });
            }
            // The type bits and forbidden_zero_bit; nal_ref_idc may be anything.
            if unit.first().map(|h| h & 0x9f) != Some(ty) {
                return Err(Fmp4Error::WrongNalType {
                    what,
                    header: unit.first().copied(),
                });
            }
        }
        Ok(AvcConfig {
            high: parse_sps(sps)?,
            sps: sps.to_vec(),
            pps: pps.to_vec(),
            width: width as u16,
            height: height as u16,
        })
    }

    /// The RFC 6381 codec string, `avc1.PPCCLL` (profile_idc, constraint flags, level_idc in
    /// hex), for `MediaSource.isTypeSupported` and `addSourceBuffer`.
    pub fn codec_string(&self) -> String {
        // `new` checked that the SPS has these bytes.
        format!(
            "avc1.{:02X}{:02X}{:02X}",
            self.sps[1], self.sps[2], self.sps[3]
        )
    }

    /// The MIME type with codecs parameter: `video/mp4; codecs="avc1.42C01F"`.
    pub fn mime_type(&self) -> String {
        format!("video/mp4; codecs=\"{}\"", self.codec_string())
    }

    /// The sequence parameter set, from its NAL header byte on.
    pub fn sps(&self) -> &[u8] {
        &self.sps
    }

    /// The picture parameter set, from its NAL header byte on.
    pub fn pps(&self) -> &[u8] {
        &self.pps
    }

    /// Picture width and height in pixels.
    pub fn size(&self) -> (u16, u16) {
        (self.width, self.height)
    }
}

/// Reads the SPS as far as the avcC record needs: profile_idc, and for the High profiles
/// chroma format and bit depths (the record's extension, ISO/IEC 14496-15 5.3.3.1.2).
fn parse_sps(sps: &[u8]) -> Result<Option<(u8, u8, u8)>, Fmp4Error> {
    let bad = |why| Fmp4Error::BadSps {
        len: sps.len(),
        why,
    };
    if sps.len() < 4 {
        return Err(bad(
            "shorter than header, profile, constraint flags and level",
        ));
    }
    // Only these profile_idc values carry chroma_format_idc in the SPS (7.3.2.1.1).
    const CHROMA_PROFILES: [u8; 12] = [100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134];
    if !CHROMA_PROFILES.contains(&sps[1]) {
        return Ok(None);
    }
    let mut b = Bits::new(&sps[4..]);
    let short = || bad("cut short before its bit depths");
    b.ue().ok_or_else(short)?; // seq_parameter_set_id
    let chroma = b.ue().ok_or_else(short)?;
    if chroma > 3 {
        return Err(bad("chroma_format_idc above 3"));
    }
    if chroma == 3 {
        b.bit().ok_or_else(short)?; // separate_colour_plane_flag
    }
    let luma_depth = b.ue().ok_or_else(short)?;
    let chroma_depth = b.ue().ok_or_else(short)?;
    if luma_depth > 6 || chroma_depth > 6 {
        return Err(bad("bit depth above 14"));
    }
    Ok(Some((chroma as u8, luma_depth as u8, chroma_depth as u8)))
}

/// A bit reader over an RBSP that skips emulation prevention bytes (00 00 03) on the fly.
struct Bits<'a> {
    data: &'a [u8],
    byte: usize,
    bit: u8,
    zeros: u8,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits {
            data,
            byte: 0,
            bit: 0,
            zeros: 0,
        }
    }

    fn bit(&mut self) -> Option<u32> {
        if self.bit == 0 {
            // At a byte boundary: an 03 after two zero bytes is an emulation prevention byte.
            if self.zeros >= 2 && *self.data.get(self.byte)? == 3 {
                self.byte += 1;
                self.zeros = 0;
            }
            let b = *self.data.get(self.byte)?;
            self.zeros = if b == 0 { self.zeros + 1 } else { 0 };
        }
        let b = *self.data.get(self.byte)?;
        let v = (b >> (7 - self.bit)) & 1;
        self.bit += 1;
        if self.bit == 8 {
            self.bit = 0;
            self.byte += 1;
        }
        Some(u32::from(v))
    }

    /// Unsigned Exp-Golomb; `None` when cut short or longer than 32 bits.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        let mut v = 0u32;
        for _ in 0..zeros {
            v = (v << 1) | self.bit()?;
        }
        Some((1u32 << zeros) - 1 + v)
    }
}

/// A byte cursor that returns `None` instead of running off the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
}

/// The NAL units of Annex-B data, without start codes and trailing zero bytes, empty units
/// skipped. Leading zero bytes are allowed (leading_zero_8bits); anything else before the
/// first start code is an error, as is a NAL unit with forbidden_zero_bit set.
pub fn annexb_nals<'a>(data: &'a [u8], what: &str) -> Result<Vec<&'a [u8]>, Fmp4Error> {
    // Start of each start code (the 00 00 01) and of the payload after it.
    let mut codes = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            codes.push((i, i + 3));
            i += 3;
        } else {
            i += 1;
        }
    }
    let first = codes.first().map_or(data.len(), |c| c.0);
    if let Some(offset) = data[..first].iter().position(|&b| b != 0) {
        return Err(Fmp4Error::NotAnnexB {
            what: what.into(),
            offset,
            len: data.len(),
        });
    }
    if codes.is_empty() && !data.is_empty() {
        return Err(Fmp4Error::NotAnnexB {
            what: what.into(),
            offset: data.len(),
            len: data.len(),
        });
    }
    let mut nals = Vec::with_capacity(codes.len());
    for (k, &(_, start)) in codes.iter().enumerate() {
        let end = codes.get(k + 1).map_or(data.len(), |c| c.0);
        let mut nal = &data[start..end];
        // A NAL unit never ends in a zero byte: zeros there belong to the next start code.
        while let [rest @ .., 0] = nal {
            nal = rest;
        }
        let Some(&header) = nal.first() else { continue };
        if header & 0x80 != 0 {
            return Err(Fmp4Error::ForbiddenBit {
                what: what.into(),
                nal: nals.len(),
                header,
            });
        }
        nals.push(nal);
    }
    Ok(nals)
}

/// Writes ISO BMFF boxes into one buffer, patching each box's 32-bit size when it closes.
#[derive(Default)]
struct Boxes {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Boxes {
    fn begin(&mut self, kind: &[u8; 4]) {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0; 4]);
        self.buf.extend_from_slice(kind);
    }
    /// A full box: version and 24-bit flags after the header.
    fn begin_full(&mut self, kind: &[u8; 4], version: u8, flags: u32) {
        self.begin(kind);
        self.u32((u32::from(version) << 24) | (flags & 0x00ff_ffff));
    }
    /// Closes the innermost box. Callers bound sizes beforehand (fragments check their total
    /// against `u32::MAX`; init segments are at most a few hundred KiB), so a size that still
    /// does not fit is a bug here, reported rather than written wrong.
    fn end(&mut self) -> Result<(), Fmp4Error> {
        let Some(start) = self.open.pop() else {
            return Ok(());
        };
        let size = self.buf.len() - start;
        let size32 = u32::try_from(size).map_err(|_| Fmp4Error::FragmentTooLarge {
            samples: 0,
            bytes: size as u64,
        })?;
        self.buf[start..start + 4].copy_from_slice(&size32.to_be_bytes());
        Ok(())
    }
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    fn bytes(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    fn zeros(&mut self, n: usize) {
        self.buf.resize(self.buf.len() + n, 0);
    }
    /// The unity transformation matrix of mvhd and tkhd.
    fn matrix(&mut self) {
        for v in [0x0001_0000, 0, 0, 0, 0x0001_0000, 0, 0, 0, 0x4000_0000] {
            self.u32(v);
        }
    }
}

/// The init segment: `ftyp` + `moov` for one H.264 track of `config`, whose samples are
/// timed in `timescale` ticks per second (90 000 for [`VideoEncoder`] packets). Sent once,
/// before any fragment, to each new viewer.
pub fn init_segment(config: &AvcConfig, timescale: u32) -> Result<Vec<u8>, Fmp4Error> {
    if timescale == 0 {
        return Err(Fmp4Error::ZeroTimescale);
    }
    let mut b = Boxes::default();
    b.begin(b"ftyp");
    b.bytes(b"iso5");
    b.u32(512);
    b.bytes(b"iso5iso6avc1mp41");
    b.end()?;

    b.begin(b"moov");
    b.begin_full(b"mvhd", 0, 0);
    b.u32(0); // creation_time
    b.u32(0); // modification_time
    b.u32(timescale);
    b.u32(0); // duration: unknown, the samples are in fragments
    b.u32(0x0001_0000); // rate 1.0
    b.u16(0x0100); // volume 1.0
    b.zeros(10);
    b.matrix();
    b.zeros(24); // pre_defined
    b.u32(TRACK_ID + 1); // next_track_ID
    b.end()?;

    b.begin(b"trak");
    b.begin_full(b"tkhd", 0, 0x3); // enabled, in movie
    b.u32(0);
    b.u32(0);
    b.u32(TRACK_ID);
    b.u32(0); // reserved
    b.u32(0); // duration
    b.zeros(8);
    b.u16(0); // layer
    b.u16(0); // alternate_group
    b.u16(0); // volume: video
    b.u16(0);
    b.matrix();
    b.u32(u32::from(config.width) << 16);
    b.u32(u32::from(config.height) << 16);
    b.end()?;

    b.begin(b"mdia");
    b.begin_full(b"mdhd", 0, 0);
    b.u32(0);
    b.u32(0);
    b.u32(timescale);
    b.u32(0);
    b.u16(0x55c4); // language "und", packed ISO-639-2/T
    b.u16(0);
    b.end()?;
    b.begin_full(b"hdlr", 0, 0);
    b.u32(0);
    b.bytes(b"vide");
    b.zeros(12);
    b.bytes(b"VideoHandler\0");
    b.end()?;

    b.begin(b"minf");
    b.begin_full(b"vmhd", 0, 1);
    b.zeros(8); // graphicsmode, opcolor
    b.end()?;
    b.begin(b"dinf");
    b.begin_full(b"dref", 0, 0);
    b.u32(1);
    b.begin_full(b"url ", 0, 1); // media data in this file
    b.end()?;
    b.end()?;
    b.end()?;

    b.begin(b"stbl");
    b.begin_full(b"stsd", 0, 0);
    b.u32(1);
    write_avc1(&mut b, config)?;
    b.end()?;
    // The sample tables are empty: every sample is in a fragment.
    for kind in [b"stts", b"stsc", b"stsz", b"stco"] {
        b.begin_full(kind, 0, 0);
        if kind == b"stsz" {
            b.u32(0); // sample_size
        }
        b.u32(0); // entry_count / sample_count
        b.end()?;
    }
    b.end()?; // stbl
    b.end()?; // minf
    b.end()?; // mdia
    b.end()?; // trak

    b.begin(b"mvex");
    b.begin_full(b"trex", 0, 0);
    b.u32(TRACK_ID);
    b.u32(1); // default_sample_description_index
    b.u32(0); // default_sample_duration
    b.u32(0); // default_sample_size
    b.u32(0); // default_sample_flags
    b.end()?;
    b.end()?;
    b.end()?; // moov
    Ok(b.buf)
}

/// The `avc1` sample entry with its `avcC` record.
fn write_avc1(b: &mut Boxes, c: &AvcConfig) -> Result<(), Fmp4Error> {
    b.begin(b"avc1");
    b.zeros(6);
    b.u16(1); // data_reference_index
    b.zeros(16); // pre_defined, reserved
    b.u16(c.width);
    b.u16(c.height);
    b.u32(0x0048_0000); // 72 dpi
    b.u32(0x0048_0000);
    b.u32(0);
    b.u16(1); // frame_count
    b.zeros(32); // compressorname
    b.u16(0x0018); // depth
    b.u16(0xffff); // pre_defined = -1
    b.begin(b"avcC");
    b.u8(1);
    b.bytes(&c.sps[1..4]); // profile, compatibility, level
    b.u8(0xff); // lengthSizeMinusOne = 3: 4-byte length prefixes
    b.u8(0xe1); // one SPS
    // `AvcConfig::new` bounded both to u16::MAX bytes.
    b.u16(c.sps.len() as u16);
    b.bytes(&c.sps);
    b.u8(1); // one PPS
    b.u16(c.pps.len() as u16);
    b.bytes(&c.pps);
    // The extension only for the profiles that ISO/IEC 14496-15 first listed (what
    // libavformat writes too); readers of older editions stop after the PPS.
    if let Some((chroma, luma_depth, chroma_depth)) = c.high
        && [100, 110, 122, 144].contains(&c.sps[1])
    {
        b.u8(0xfc | chroma);
        b.u8(0xf8 | luma_depth);
        b.u8(0xf8 | chroma_depth);
        b.u8(0); // numOfSequenceParameterSetExt
    }
    b.end()?;
    b.end()
}

/// One encoded frame, timed in the init segment's timescale.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    /// Decode timestamp (the packet's dts).
    pub decode_time: u64,
    /// How long the frame shows, in ticks (the packet's duration).
    pub duration: u32,
    /// Presentation minus decode time (0 without B-frames).
    pub composition_offset: i32,
    /// Whether the frame is a sync sample (IDR): a viewer can start decoding here.
    pub is_key: bool,
    /// The access unit in Annex-B form (start codes), as the encoder's packets carry it.
    pub data: &'a [u8],
}

/// Turns samples into `moof` + `mdat` fragments, numbering them (mfhd sequence numbers
/// from one) and checking that fragments do not go back in time. One per viewer stream,
/// after that viewer's init segment; when the encoder restarts (new SPS, timestamps from
/// zero), start a new writer and send a new init segment. Decode times are written as given:
/// a browser's buffered range starts at the first one, so a page joining mid-stream seeks
/// there (or the caller subtracts the first decode time from every sample).
#[derive(Debug, Clone)]
pub struct FragmentWriter {
    sequence: u32,
    end: Option<u64>,
}

impl Default for FragmentWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl FragmentWriter {
    /// A writer whose first fragment has sequence number 1.
    pub fn new() -> Self {
        FragmentWriter {
            sequence: 1,
            end: None,
        }
    }

    /// The sequence number the next fragment gets.
    pub fn next_sequence(&self) -> u32 {
        self.sequence
    }

    /// One fragment holding one frame (the live view's latency: a frame, not a GOP).
    pub fn fragment(&mut self, sample: &Sample) -> Result<Vec<u8>, Fmp4Error> {
        self.fragment_samples(std::slice::from_ref(sample))
    }

    /// One fragment holding several frames that follow each other without gaps (an LL-HLS
    /// part). On error nothing is written and the sequence number is not used up.
    pub fn fragment_samples(&mut self, samples: &[Sample]) -> Result<Vec<u8>, Fmp4Error> {
        let first = samples.first().ok_or(Fmp4Error::NoSamples)?;
        if let Some(previous_end) = self.end
            && first.decode_time < previous_end
        {
            return Err(Fmp4Error::DecodeTimeBackwards {
                got: first.decode_time,
                previous_end,
            });
        }
        // Pass 1: the NAL units of each sample, the sizes, the timing checks.
        let mut units = Vec::with_capacity(samples.len());
        let mut sizes = Vec::with_capacity(samples.len());
        let mut t = first.decode_time;
        let mut payload: u64 = 0;
        for (index, s) in samples.iter().enumerate() {
            if s.decode_time != t {
                return Err(Fmp4Error::DecodeTimeGap {
                    index,
                    got: s.decode_time,
                    want: t,
                });
            }
            t = t
                .checked_add(u64::from(s.duration))
                .ok_or(Fmp4Error::TimeOverflow {
                    index,
                    decode_time: s.decode_time,
                    duration: s.duration,
                })?;
            let nals: Vec<&[u8]> = annexb_nals(s.data, &format!("sample {index}"))?
                .into_iter()
                .filter(|n| n[0] & 0x1f != NAL_AUD)
                .collect();
            if nals.is_empty() {
                return Err(Fmp4Error::EmptyAccessUnit { index });
            }
            let mut size: u64 = 0;
            for n in &nals {
                if u32::try_from(n.len()).is_err() {
                    return Err(Fmp4Error::NalTooLarge {
                        what: format!("sample {index}"),
                        len: n.len(),
                        max: u32::MAX as usize,
                    });
                }
                size += 4 + n.len() as u64;
            }
            let too_large = |bytes| Fmp4Error::FragmentTooLarge {
                samples: samples.len(),
                bytes,
            };
            sizes.push(u32::try_from(size).map_err(|_| too_large(size))?);
            payload += size;
            units.push(nals);
        }
        // Composition offsets only when some sample has one (B-frames): without them a
        // trun is 4 bytes a sample smaller, and libavformat's demuxer only derives packet
        // durations for tracks without offsets.
        let offsets = samples.iter().any(|s| s.composition_offset != 0);
        let per_sample = if offsets { 16 } else { 12 };
        // moof: 8 + mfhd 16 + traf (8 + tfhd 16 + tfdt 20 + trun 20 + per sample).
        let moof_len = 8 + 16 + 8 + 16 + 20 + 20 + per_sample * samples.len() as u64;
        let total = moof_len + 8 + payload;
        if total > u64::from(u32::MAX) || moof_len + 8 > i32::MAX as u64 {
            return Err(Fmp4Error::FragmentTooLarge {
                samples: samples.len(),
                bytes: total,
            });
        }

        // Pass 2: write.
        let mut b = Boxes {
            buf: Vec::with_capacity(total as usize),
            open: Vec::new(),
        };
        b.begin(b"moof");
        b.begin_full(b"mfhd", 0, 0);
        b.u32(self.sequence);
        b.end()?;
        b.begin(b"traf");
        b.begin_full(b"tfhd", 0, 0x02_0000); // default-base-is-moof
        b.u32(TRACK_ID);
        b.end()?;
        b.begin_full(b"tfdt", 1, 0);
        b.u64(first.decode_time);
        b.end()?;
        // data-offset, then per sample: duration, size, flags and maybe composition offset
        // (signed in version 1).
        b.begin_full(b"trun", 1, if offsets { 0x0f01 } else { 0x0701 });
        b.u32(samples.len() as u32);
        b.u32((moof_len + 8) as u32); // data_offset: from the moof's first byte to the data
        for (s, size) in samples.iter().zip(&sizes) {
            b.u32(s.duration);
            b.u32(*size);
            b.u32(if s.is_key { FLAGS_SYNC } else { FLAGS_NON_SYNC });
            if offsets {
                b.bytes(&s.composition_offset.to_be_bytes());
            }
        }
        b.end()?;
        b.end()?; // traf
        b.end()?; // moof
        debug_assert_eq!(b.buf.len() as u64, moof_len);
        b.begin(b"mdat");
        for n in units.iter().flatten() {
            // Checked in pass 1: every NAL unit fits a u32 length.
            b.u32(n.len() as u32);
            b.bytes(n);
        }
        b.end()?;

        self.sequence = self.sequence.wrapping_add(1).max(1);
        self.end = Some(t);
        Ok(b.buf)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;
    use std::process::Command;

    use super::*;
    use crate::codec::EncoderSettings;
    use crate::rng::XorShift;
    use crate::synth::SyntheticScene;
    use crate::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};

    const W: usize = 160;
    const H: usize = 120;
    const FRAMES: usize = 60;
    const FORCED_KEY: usize = 30;
    /// One frame at 30 fps in the encoder's 90 kHz time base.
    const TICKS: i64 = 3000;

    /// What the encoder put out for one frame.
    struct Packet {
        dts: i64,
        pts: i64,
        duration: i64,
        key: bool,
        data: Vec<u8>,
    }

    impl Packet {
        fn sample(&self) -> Sample<'_> {
            Sample {
                decode_time: u64::try_from(self.dts).expect("dts >= 0"),
                duration: u32::try_from(self.duration).expect("duration fits"),
                composition_offset: i32::try_from(self.pts - self.dts).expect("offset fits"),
                is_key: self.key,
                data: &self.data,
            }
        }
    }

    /// Encodes the synthetic scene (a keyframe forced at `FORCED_KEY`) and returns the
    /// packets and the encoder's own configuration (with `global_header`).
    fn encode(preset: &str, global_header: bool) -> (Vec<Packet>, Option<AvcConfig>) {
        let layout = FrameLayout::new(PixelFormat::I420, W, H);
        let settings = EncoderSettings {
            preset: preset.into(),
            threads: 1,
            ..Default::default()
        };
        let mut enc = VideoEncoder::open(&settings, layout, global_header).expect("open encoder");
        let config = global_header.then(|| AvcConfig::from_encoder(&enc).expect("extradata"));
        let pool = SurfacePool::new(layout, 2);
        let mut scene = SyntheticScene::new(W, H, 3, 7, None);
        let mut packets = Vec::new();
        let mut sink = |p: &mut ffmpeg_next::Packet| {
            packets.push(Packet {
                dts: p.dts().expect("dts"),
                pts: p.pts().expect("pts"),
                duration: p.duration(),
                key: p.is_key(),
                data: p.data().expect("data").to_vec(),
            });
            Ok(())
        };
        for i in 0..FRAMES {
            let mut f = Frame::from_pool(&pool, StreamId::new("fmp4"), i as u64, 0, 33_333)
                .expect("pool open");
            scene.render(&mut f);
            enc.encode(&mut f, i as i64 * TICKS, i == FORCED_KEY, &mut sink)
                .expect("encode");
        }
        enc.finish(&mut sink).expect("flush");
        assert_eq!(packets.len(), FRAMES);
        (packets, config)
    }

    /// Init segment + one fragment per `part` packets, written to `path`.
    fn write_file(path: &Path, config: &AvcConfig, packets: &[Packet], part: usize) {
        let mut out = init_segment(config, 90_000).expect("init segment");
        let mut w = FragmentWriter::new();
        for chunk in packets.chunks(part) {
            let samples: Vec<Sample> = chunk.iter().map(Packet::sample).collect();
            out.extend(w.fragment_samples(&samples).expect("fragment"));
        }
        assert_eq!(w.next_sequence() as usize, packets.len().div_ceil(part) + 1);
        std::fs::write(path, &out).expect("write file");
    }

    /// Whether ffprobe and ffmpeg run; without them the check is skipped (and fails under CI,
    /// which installs ffmpeg), as the HAL's integration tests do.
    fn tools_present() -> bool {
        let ok = ["ffprobe", "ffmpeg"].iter().all(|t| {
            Command::new(t)
                .arg("-version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !ok {
            assert!(
                std::env::var_os("CI").is_none(),
                "ffprobe/ffmpeg not found on PATH, but CI is set: CI must install ffmpeg"
            );
            eprintln!("SKIPPED fmp4: ffprobe/ffmpeg not found");
        }
        ok
    }

    fn run(tool: &str, args: &[&str], path: &Path) -> (String, String) {
        let out = Command::new(tool)
            .args(args)
            .arg(path)
            .args(if tool == "ffmpeg" {
                &["-f", "null", "-"][..]
            } else {
                &[]
            })
            .output()
            .expect("run tool");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "{tool} failed: {stderr}");
        (stdout, stderr)
    }

    /// `key=value|key=value` lines of ffprobe's compact writer.
    fn compact(text: &str) -> Vec<std::collections::HashMap<String, String>> {
        text.lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                l.split('|')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            })
            .collect()
    }

    /// What the real tools must see in the file: the codec and size, every frame decoded
    /// without complaint, keyframes where the encoder made them, the encoder's timestamps.
    fn check_with_ffmpeg(path: &Path, packets: &[Packet]) {
        let (json, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-count_frames",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=codec_name,width,height,nb_read_frames,duration_ts",
                "-of",
                "json",
            ],
            path,
        );
        let squeezed: String = json.split_whitespace().collect();
        for want in [
            "\"codec_name\":\"h264\"".to_string(),
            format!("\"width\":{W}"),
            format!("\"height\":{H}"),
            format!("\"nb_read_frames\":\"{FRAMES}\""),
            // The track lasts as long as the samples' durations add up to (libavformat leaves
            // fragmented packets' own durations unset, so this is where they show).
            format!(
                "\"duration_ts\":{}",
                packets.iter().map(|p| p.duration).sum::<i64>()
            ),
        ] {
            assert!(
                squeezed.contains(&want),
                "ffprobe says {json}, wanted {want}"
            );
        }

        let (_, errors) = run("ffmpeg", &["-v", "error", "-i"], path);
        assert_eq!(errors, "", "ffmpeg reported decode errors");

        let encoder_keys: Vec<usize> = (0..packets.len()).filter(|&i| packets[i].key).collect();
        assert!(
            encoder_keys.contains(&0) && encoder_keys.contains(&FORCED_KEY),
            "encoder keyframes {encoder_keys:?}"
        );
        // Container side: the trun's own sync flags and durations (libavformat takes packet
        // key flags from its H.264 parser and leaves fragmented packets' durations unset, so
        // neither is visible through ffprobe).
        let file = std::fs::read(path).expect("read file");
        let runs = trun_samples(&file);
        let trun_keys: Vec<usize> = (0..runs.len()).filter(|&i| runs[i].1).collect();
        assert_eq!(trun_keys, encoder_keys, "sync samples in the truns");
        let durations: Vec<i64> = runs.iter().map(|r| i64::from(r.0)).collect();
        assert_eq!(
            durations,
            packets.iter().map(|p| p.duration).collect::<Vec<_>>()
        );
        // What libavformat reads: timestamps, and keyframes where the bitstream has IDRs.
        let (text, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "packet=pts,dts,flags",
                "-of",
                "compact=p=0",
            ],
            path,
        );
        let rows = compact(&text);
        assert_eq!(rows.len(), FRAMES);
        let demuxed_keys: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i]["flags"].starts_with('K'))
            .collect();
        assert_eq!(demuxed_keys, encoder_keys, "demuxed keyframes");
        for (i, (row, p)) in rows.iter().zip(packets).enumerate() {
            assert_eq!(row["dts"], p.dts.to_string(), "dts of packet {i}");
            assert_eq!(row["pts"], p.pts.to_string(), "pts of packet {i}");
        }
        // Bitstream side: what the decoder calls a keyframe, and presentation times.
        let (text, _) = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "frame=pts,key_frame,pict_type",
                "-of",
                "compact=p=0",
            ],
            path,
        );
        let rows = compact(&text);
        assert_eq!(rows.len(), FRAMES);
        let decoded_keys: Vec<usize> = (0..rows.len())
            .filter(|&i| rows[i]["key_frame"] == "1")
            .collect();
        assert_eq!(decoded_keys, encoder_keys, "decoded keyframes");
        for (k, row) in rows.iter().enumerate() {
            assert_eq!(
                row["pts"],
                (k as i64 * TICKS).to_string(),
                "pts of frame {k}"
            );
        }
    }

    #[test]
    fn one_frame_fragments_play_in_ffmpeg() {
        let (packets, config) = encode("ultrafast", true);
        let config = config.expect("global header config");
        // libx264's extradata is Annex-B; its packets then carry no SPS/PPS.
        assert!(
            config.codec_string().starts_with("avc1.42"),
            "{}",
            config.codec_string()
        );
        assert_eq!(
            config.mime_type(),
            format!("video/mp4; codecs=\"{}\"", config.codec_string())
        );
        assert_eq!(config.size(), (W as u16, H as u16));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("live.mp4");
        write_file(&path, &config, &packets, 1);
        if tools_present() {
            check_with_ffmpeg(&path, &packets);
        }
    }

    #[test]
    fn in_band_parameter_sets_and_multi_frame_parts_play_in_ffmpeg() {
        // veryfast is High profile: the avcC record gets its chroma/bit-depth extension.
        let (packets, config) = encode("veryfast", false);
        assert!(config.is_none());
        let config = AvcConfig::from_annexb(&packets[0].data, W, H).expect("SPS/PPS in keyframe");
        assert!(
            config.codec_string().starts_with("avc1.64"),
            "{}",
            config.codec_string()
        );
        assert_eq!(config.high, Some((1, 0, 0)));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("parts.mp4");
        write_file(&path, &config, &packets, 4);
        if tools_present() {
            check_with_ffmpeg(&path, &packets);
        }
    }

    /// The top-level boxes of `data`: (type, start, size); panics on inconsistent sizes.
    fn boxes(data: &[u8]) -> Vec<([u8; 4], usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < data.len() {
            let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
            assert!(
                size >= 8 && at + size <= data.len(),
                "box at {at} of size {size}"
            );
            out.push((data[at + 4..at + 8].try_into().unwrap(), at, size));
            at += size;
        }
        out
    }

    /// (duration, is sync) of every sample in the truns of `file`'s fragments.
    fn trun_samples(file: &[u8]) -> Vec<(u32, bool)> {
        let be32 = |d: &[u8], at: usize| u32::from_be_bytes(d[at..at + 4].try_into().unwrap());
        let child = |d: &[u8], kind: &[u8; 4]| -> Vec<u8> {
            let (_, at, size) = *boxes(d).iter().find(|b| &b.0 == kind).expect("child box");
            d[at + 8..at + size].to_vec()
        };
        let mut out = Vec::new();
        for (kind, at, size) in boxes(file) {
            if &kind != b"moof" {
                continue;
            }
            let trun = child(&child(&file[at + 8..at + size], b"traf"), b"trun");
            let flags = be32(&trun, 0) & 0xff_ffff;
            assert_eq!(
                flags & 0x0700,
                0x0700,
                "duration, size and flags per sample"
            );
            let per_sample = 4 * (flags >> 8).count_ones() as usize;
            let mut pos = 8 + 4 * (flags & 1) as usize + 4 * ((flags >> 2) & 1) as usize;
            for _ in 0..be32(&trun, 4) {
                out.push((be32(&trun, pos), be32(&trun, pos + 8) & 0x0001_0000 == 0));
                pos += per_sample;
            }
        }
        out
    }

    pub(crate) fn test_config() -> AvcConfig {
        // Constrained Baseline 3.1: header, profile 66, constraints C0, level 31, then bits.
        AvcConfig::from_annexb(
            &[
                0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0xda, 0, 0, 1, 0x68, 0xce, 0x3c, 0x80,
            ],
            W,
            H,
        )
        .expect("config")
    }

    #[test]
    fn fragment_layout_and_length_prefixes() {
        let config = test_config();
        assert_eq!(config.codec_string(), "avc1.42C01F");
        assert_eq!(config.sps(), [0x67, 0x42, 0xc0, 0x1f, 0xda]);
        assert_eq!(config.pps(), [0x68, 0xce, 0x3c, 0x80]);
        let init = init_segment(&config, 90_000).expect("init");
        let kinds: Vec<_> = boxes(&init).iter().map(|b| b.0).collect();
        assert_eq!(kinds, [*b"ftyp", *b"moov"]);

        // AUD dropped, trailing zeros trimmed, 3- and 4-byte start codes.
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1, 0x65, 0x88, 0x84, 0, 0, 0, 0, 1, 0x41, 0x9a,
        ];
        let mut w = FragmentWriter::new();
        let frag = w
            .fragment(&Sample {
                decode_time: 1 << 40,
                duration: 3000,
                composition_offset: -5,
                is_key: true,
                data: &au,
            })
            .expect("fragment");
        let b = boxes(&frag);
        assert_eq!(
            b.iter().map(|b| b.0).collect::<Vec<_>>(),
            [*b"moof", *b"mdat"]
        );
        let (moof, mdat) = (&frag[..b[0].2], &frag[b[1].1 + 8..]);
        assert_eq!(mdat, [0, 0, 0, 3, 0x65, 0x88, 0x84, 0, 0, 0, 2, 0x41, 0x9a]);
        let find = |kind: &[u8]| moof.windows(4).position(|x| x == kind).expect("box") + 4;
        let be32 = |at: usize| u32::from_be_bytes(moof[at..at + 4].try_into().unwrap());
        assert_eq!(be32(find(b"mfhd") + 4), 1, "sequence number");
        assert_eq!(be32(find(b"tfhd")), 0x0002_0000, "default-base-is-moof");
        let tfdt = find(b"tfdt");
        assert_eq!(moof[tfdt], 1, "tfdt version 1");
        assert_eq!(&moof[tfdt + 4..tfdt + 12], &(1u64 << 40).to_be_bytes());
        let trun = find(b"trun");
        assert_eq!(be32(trun), 0x0100_0f01, "trun v1 flags");
        assert_eq!(be32(trun + 4), 1, "sample count");
        assert_eq!(
            be32(trun + 8) as usize,
            b[1].1 + 8,
            "data offset points at the mdat payload"
        );
        assert_eq!(
            [
                be32(trun + 12),
                be32(trun + 16),
                be32(trun + 20),
                be32(trun + 24)
            ],
            [3000, 13, FLAGS_SYNC, -5i32 as u32]
        );
        assert_eq!(w.next_sequence(), 2);
        // Without composition offsets the trun leaves the field out.
        let frag = w
            .fragment(&Sample {
                decode_time: (1 << 40) + 3000,
                duration: 3000,
                composition_offset: 0,
                is_key: false,
                data: &au,
            })
            .expect("second fragment");
        let at = frag.windows(4).position(|x| x == b"trun").expect("trun") + 4;
        let be32 = |at: usize| u32::from_be_bytes(frag[at..at + 4].try_into().unwrap());
        assert_eq!(be32(at - 8), 32, "trun size");
        assert_eq!(be32(at), 0x0100_0701);
        assert_eq!(
            [be32(at + 12), be32(at + 16), be32(at + 20)],
            [3000, 13, FLAGS_NON_SYNC]
        );
        assert_eq!(be32(at + 8) as usize, frag.len() - 13, "data offset");
    }

    #[test]
    fn avcc_extradata_gives_the_same_config() {
        let c = test_config();
        let mut avcc = vec![1, 0x42, 0xc0, 0x1f, 0xff, 0xe1];
        avcc.extend((c.sps.len() as u16).to_be_bytes());
        avcc.extend(&c.sps);
        avcc.push(1);
        avcc.extend((c.pps.len() as u16).to_be_bytes());
        avcc.extend(&c.pps);
        assert_eq!(AvcConfig::from_avcc(&avcc, W, H), Ok(c.clone()));
        assert_eq!(AvcConfig::from_extradata(&avcc, W, H), Ok(c.clone()));
        // Every truncation is an error, not a panic.
        for n in 0..avcc.len() {
            assert!(
                AvcConfig::from_avcc(&avcc[..n], W, H).is_err(),
                "cut at {n}"
            );
        }
        // High profile: the SPS's chroma format and bit depths go into the record.
        let high = AvcConfig::from_avcc(
            &[
                1, 0x64, 0, 0x1f, 0xff, 0xe1, 0, 5, 0x67, 0x64, 0, 0x1f, 0xac, 1, 0, 2, 0x68, 0xee,
            ],
            W,
            H,
        )
        .expect("high");
        assert_eq!(high.high, Some((1, 0, 0)));
        let init = init_segment(&high, 1000).expect("init");
        let at = init.windows(4).position(|x| x == b"avcC").expect("avcC");
        assert!(
            init[at + 4..].ends_with(&[0x68, 0xee, 0xfd, 0xf8, 0xf8, 0]) || {
                // avcC is the last box of stbl's stsd, followed by the empty tables.
                let size = u32::from_be_bytes(init[at - 4..at].try_into().unwrap()) as usize;
                init[at - 4..at - 4 + size].ends_with(&[0x68, 0xee, 0xfd, 0xf8, 0xf8, 0])
            }
        );
    }

    #[test]
    fn malformed_input_gives_typed_errors() {
        let good_slice = [0, 0, 1, 0x65, 0x88];
        let sample = |data| Sample {
            decode_time: 0,
            duration: 1,
            composition_offset: 0,
            is_key: true,
            data,
        };
        let mut w = FragmentWriter::new();
        assert!(matches!(
            w.fragment(&sample(&[0x65, 0x88, 0, 0, 1, 0x65])),
            Err(Fmp4Error::NotAnnexB { offset: 0, .. })
        ));
        assert!(matches!(
            w.fragment(&sample(&[])),
            Err(Fmp4Error::EmptyAccessUnit { index: 0 })
        ));
        assert!(matches!(
            w.fragment(&sample(&[0, 0, 0, 1, 0x09, 0xf0, 0, 0, 1])),
            Err(Fmp4Error::EmptyAccessUnit { index: 0 })
        ));
        assert!(matches!(
            w.fragment(&sample(&[0, 0, 1, 0xe5, 1])),
            Err(Fmp4Error::ForbiddenBit { header: 0xe5, .. })
        ));
        assert_eq!(w.fragment_samples(&[]), Err(Fmp4Error::NoSamples));
        let mut second = sample(&good_slice);
        second.decode_time = 2;
        assert_eq!(
            w.fragment_samples(&[sample(&good_slice), second]),
            Err(Fmp4Error::DecodeTimeGap {
                index: 1,
                got: 2,
                want: 1
            })
        );
        assert_eq!(
            w.next_sequence(),
            1,
            "failed fragments use no sequence number"
        );
        second.decode_time = 1;
        w.fragment_samples(&[sample(&good_slice), second])
            .expect("contiguous");
        assert_eq!(
            w.fragment(&sample(&good_slice)),
            Err(Fmp4Error::DecodeTimeBackwards {
                got: 0,
                previous_end: 2
            })
        );
        let mut late = sample(&good_slice);
        late.decode_time = u64::MAX;
        assert!(matches!(
            w.fragment(&late),
            Err(Fmp4Error::TimeOverflow { .. })
        ));

        let sps_only = [0, 0, 1, 0x67, 0x42, 0xc0, 0x1f];
        assert!(matches!(
            AvcConfig::from_annexb(&sps_only, W, H),
            Err(Fmp4Error::NoPps { .. })
        ));
        assert!(matches!(
            AvcConfig::from_annexb(&[0, 0, 1, 0x68, 1], W, H),
            Err(Fmp4Error::NoSps { .. })
        ));
        assert!(matches!(
            AvcConfig::from_annexb(&[0, 0, 1, 0x67, 0x42, 0, 0, 1, 0x68, 1], W, H),
            Err(Fmp4Error::BadSps { .. })
        ));
        let good = [0, 0, 1, 0x67, 0x42, 0xc0, 0x1f, 0, 0, 1, 0x68, 1];
        assert!(matches!(
            AvcConfig::from_annexb(&good, 0, H),
            Err(Fmp4Error::Geometry { .. })
        ));
        assert!(matches!(
            AvcConfig::from_annexb(&good, W, 70_000),
            Err(Fmp4Error::Geometry { .. })
        ));
        assert_eq!(
            AvcConfig::from_extradata(&[], W, H),
            Err(Fmp4Error::NoExtradata)
        );
        // A High-profile SPS cut before its bit depths.
        let high_cut = [0, 0, 1, 0x67, 0x64, 0, 0x1f, 0x80, 0, 0, 1, 0x68, 1];
        assert!(matches!(
            AvcConfig::from_annexb(&high_cut, W, H),
            Err(Fmp4Error::BadSps { .. })
        ));
        let config = AvcConfig::from_annexb(&good, W, H).expect("config");
        assert_eq!(init_segment(&config, 0), Err(Fmp4Error::ZeroTimescale));
        // Messages name the input.
        let e = FragmentWriter::new()
            .fragment(&sample(&[1, 2, 3]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("sample 0") && e.contains("not Annex-B"), "{e}");
    }

    /// Random Annex-B-ish data: a few NAL units with likely headers and short payloads
    /// (SPS payloads often start like a real one), then sometimes cut or corrupted, so that
    /// parsing reaches both its errors and success.
    fn random_units(rng: &mut XorShift) -> Vec<Vec<u8>> {
        let headers = [0x67, 0x68, 0x65, 0x41, 0x09, 0x06, 0xe7, 0];
        (0..rng.below(5))
            .map(|_| {
                let h = if rng.below(4) == 0 {
                    rng.byte()
                } else {
                    headers[rng.below(8)]
                };
                let mut u = vec![h];
                if h == 0x67 && rng.below(2) == 0 {
                    u.extend(
                        [[0x42, 0xc0, 0x1f], [0x64, 0, 0x28], [0x4d, 0x40, 0x1e]][rng.below(3)],
                    );
                }
                let bias = [0, 0, 1, 3, 0x80, 0xac, 0xff];
                u.extend((0..rng.below(12)).map(|_| {
                    if rng.below(2) == 0 {
                        bias[rng.below(bias.len())]
                    } else {
                        rng.byte()
                    }
                }));
                u
            })
            .collect()
    }

    /// Cuts `data` short or flips a byte, a third of the time each.
    fn mutate(rng: &mut XorShift, data: &mut Vec<u8>) {
        match rng.below(3) {
            0 if !data.is_empty() => data.truncate(rng.below(data.len())),
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            _ => {}
        }
    }

    #[test]
    fn random_and_truncated_bytes_never_panic() {
        let mut rng = XorShift(0x5eed);
        let mut w = FragmentWriter::new();
        let (mut ok, mut err, mut fragments) = (0, 0, 0);
        for round in 0..20_000u64 {
            let units = random_units(&mut rng);
            let mut annexb = Vec::new();
            for u in &units {
                annexb.extend(if rng.below(2) == 0 {
                    &[0, 0, 1][..]
                } else {
                    &[0, 0, 0, 1]
                });
                annexb.extend(u);
            }
            let mut avcc = vec![1, rng.byte(), rng.byte(), rng.byte(), 0xff];
            let split = rng.below(units.len() + 1);
            for (i, group) in [&units[..split], &units[split..]].iter().enumerate() {
                avcc.push(if i == 0 {
                    0xe0 | group.len() as u8
                } else {
                    group.len() as u8
                });
                for u in group.iter() {
                    avcc.extend((u.len() as u16).to_be_bytes());
                    avcc.extend(u);
                }
            }
            mutate(&mut rng, &mut annexb);
            mutate(&mut rng, &mut avcc);
            let random: Vec<u8> = (0..rng.below(48)).map(|_| rng.byte()).collect();
            let (width, height) = (1 + rng.below(4000), 1 + rng.below(4000));
            for data in [&annexb, &avcc, &random] {
                for r in [
                    AvcConfig::from_annexb(data, width, height),
                    AvcConfig::from_avcc(data, width, height),
                    AvcConfig::from_extradata(data, width, height),
                ] {
                    match r {
                        Ok(c) => {
                            ok += 1;
                            assert!(c.codec_string().starts_with("avc1."));
                            let init = init_segment(&c, 90_000).expect("init of a parsed config");
                            assert_eq!(boxes(&init).len(), 2);
                        }
                        Err(e) => {
                            err += 1;
                            assert!(!e.to_string().is_empty());
                        }
                    }
                }
                let s = Sample {
                    decode_time: round,
                    duration: 1,
                    composition_offset: rng.below(3) as i32 - 1,
                    is_key: rng.below(2) == 0,
                    data,
                };
                if let Ok(frag) = w.fragment(&s) {
                    fragments += 1;
                    assert_eq!(boxes(&frag).len(), 2);
                }
            }
        }
        assert!(
            ok > 100 && err > 100 && fragments > 100,
            "the bytes reach both outcomes: {ok} configs, {err} errors, {fragments} fragments"
        );

        // Every prefix of a real keyframe with in-band SPS/PPS.
        let (packets, _) = encode("ultrafast", false);
        let key = &packets[0].data;
        for n in 0..key.len().min(400) {
            let _ = AvcConfig::from_annexb(&key[..n], W, H);
            let _ = FragmentWriter::new().fragment(&packets[0].sample_with(&key[..n]));
        }
    }

    impl Packet {
        fn sample_with<'a>(&self, data: &'a [u8]) -> Sample<'a> {
            Sample {
                data,
                ..self.sample()
            }
        }
    }
}
