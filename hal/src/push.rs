//! Pushing an encoded H.264 stream to a server with libavformat: FLV over RTMP/RTMPS, or
//! MPEG-TS over SRT (caller mode). The caller hands packets it already has (the live
//! slot's: no encode here) and reconnects on errors; every network wait is bounded by
//! `rw_timeout`, so a dead server never holds the caller longer than that.
//!
//! Errors name what failed with the URL as the caller shows it (redacted): the stream key
//! and the SRT passphrase never reach a message.

use std::time::Duration;

use ffmpeg_next as ff;

use crate::fmp4::AvcConfig;

/// Where a push goes, which picks the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushProtocol {
    /// RTMP or RTMPS: FLV.
    Rtmp,
    /// SRT: MPEG-TS.
    Srt,
}

/// A push that failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {shown}: {source}")]
pub struct PushError {
    /// What was being done (`connecting to`, `writing to`).
    pub what: &'static str,
    /// The destination as it may be shown (no secrets).
    pub shown: String,
    /// libavformat's error.
    #[source]
    pub source: ff::Error,
}

/// An open connection with its muxer.
pub struct PushMuxer {
    octx: ff::format::context::Output,
    time_base: ff::Rational,
    /// The first packet's decode time: the stream starts at 0.
    origin: Option<i64>,
    last_dts: Option<i64>,
    shown: String,
    bytes: u64,
}

impl PushMuxer {
    /// Connects to `url` (secrets included: it is never shown) and writes the container
    /// header for `avc`; `shown` is the URL as messages may show it; `options` are protocol
    /// options (the SRT passphrase); network waits end after `timeout`.
    pub fn open(
        url: &str,
        shown: &str,
        protocol: PushProtocol,
        options: &[(&str, &str)],
        avc: &AvcConfig,
        timeout: Duration,
    ) -> Result<PushMuxer, PushError> {
        let err = |what, source| PushError {
            what,
            shown: shown.to_owned(),
            source,
        };
        let format = match protocol {
            PushProtocol::Rtmp => "flv",
            PushProtocol::Srt => "mpegts",
        };
        let mut opts = ff::Dictionary::new();
        let us = timeout.as_micros().to_string();
        opts.set("rw_timeout", &us);
        if protocol == PushProtocol::Rtmp {
            opts.set("rtmp_live", "live");
        } else {
            // SRT's own connect timeout is in milliseconds.
            opts.set("connect_timeout", &timeout.as_millis().to_string());
        }
        // Live: every packet goes out when it is written (no buffering for throughput),
        // and MPEG-TS adds no mux delay in front of the timestamps.
        opts.set("flush_packets", "1");
        opts.set("max_delay", "0");
        for (k, v) in options {
            opts.set(k, v);
        }
        let mut octx =
            ff::format::output_as_with(&url, format, opts).map_err(|e| err("connecting to", e))?;
        {
            let mut ost = octx
                .add_stream(ff::encoder::find(ff::codec::Id::H264))
                .map_err(|e| err("setting up", e))?;
            ost.set_parameters(h264_parameters(avc));
            ost.set_time_base(ff::Rational(1, 90_000));
        }
        octx.write_header()
            .map_err(|e| err("writing the header to", e))?;
        let time_base = octx
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(ff::Rational(1, 90_000));
        Ok(PushMuxer {
            octx,
            time_base,
            origin: None,
            last_dts: None,
            shown: shown.to_owned(),
            bytes: 0,
        })
    }

    /// Sends one access unit (Annex-B; 90 kHz timestamps, decode order).
    pub fn write(
        &mut self,
        data: &[u8],
        pts: i64,
        dts: i64,
        duration: i64,
        key: bool,
    ) -> Result<(), PushError> {
        let origin = *self.origin.get_or_insert(dts);
        // Decode times must grow: a repeat (a resync's first packet) moves up one tick.
        let mut dts = dts - origin;
        if let Some(last) = self.last_dts
            && dts <= last
        {
            dts = last + 1;
        }
        self.last_dts = Some(dts);
        let pts = (pts - origin).max(dts);
        let mut pkt = ff::Packet::copy(data);
        pkt.set_pts(Some(pts));
        pkt.set_dts(Some(dts));
        pkt.set_duration(duration);
        if key {
            pkt.set_flags(ff::packet::Flags::KEY);
        }
        pkt.rescale_ts(ff::Rational(1, 90_000), self.time_base);
        pkt.set_stream(0);
        self.bytes += data.len() as u64;
        pkt.write_interleaved(&mut self.octx)
            .map_err(|source| PushError {
                what: "writing to",
                shown: self.shown.clone(),
                source,
            })
    }

    /// Video bytes sent so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Writes the trailer (a clean end for the server).
    pub fn finish(mut self) -> Result<(), PushError> {
        self.octx.write_trailer().map_err(|source| PushError {
            what: "closing",
            shown: self.shown.clone(),
            source,
        })
    }
}

/// Codec parameters of an H.264 stream: size and the SPS/PPS as Annex-B extradata (the
/// FLV muxer turns them into an avcC record, MPEG-TS keeps them in band).
fn h264_parameters(avc: &AvcConfig) -> ff::codec::Parameters {
    let mut extradata = Vec::with_capacity(avc.sps().len() + avc.pps().len() + 8);
    for nal in [avc.sps(), avc.pps()] {
        extradata.extend_from_slice(&[0, 0, 0, 1]);
        extradata.extend_from_slice(nal);
    }
    let (w, h) = avc.size();
    let mut params = ff::codec::Parameters::new();
    // SAFETY: `params` owns a fresh AVCodecParameters; the extradata buffer is allocated
    // with av_mallocz (with the padding libavcodec requires) and handed to it, which frees
    // it with the parameters.
    unsafe {
        let p = &mut *params.as_mut_ptr();
        p.codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
        p.codec_id = ff::ffi::AVCodecID::AV_CODEC_ID_H264;
        p.width = i32::from(w);
        p.height = i32::from(h);
        let buf =
            ff::ffi::av_mallocz(extradata.len() + ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize)
                as *mut u8;
        if !buf.is_null() {
            std::ptr::copy_nonoverlapping(extradata.as_ptr(), buf, extradata.len());
            p.extradata = buf;
            p.extradata_size = extradata.len() as i32;
        }
    }
    params
}
