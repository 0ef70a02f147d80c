//! The `jetson` backend's encoder on Orin AGX/NX: H.264 by the V4L2 M2M hardware encoder,
//! fed the frame's NVMM surface itself (its DMA-buf, [`crate::frame::DeviceSurface::dmabuf`]):
//! decode → VIC → CUDA stages → encoder with no host copy of a picture.
//!
//! Each frame is encoded before [`NvmmEncoder::encode`] returns the frame to its caller: the
//! encoder reads the surface asynchronously, and the surface goes back to its pool (and to
//! the VIC, for a later picture) when the frame is dropped, so `encode` waits until the
//! encoder has given the buffer back (`Encoder::reclaim`). Orin's encoder without B-frames
//! gives each buffer back once it has encoded it. Packets leave as libav packets in the
//! 90 kHz time base the recorder uses; the stream parameters (SPS/PPS) come from the first
//! IDR packet, which the encoder makes carry them (`INSERT_SPS_PPS_AT_IDR`).

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;
use std::time::{Duration, Instant};

use aegis_jetson::m2m::{
    Codec, Device, Encoder, EncoderConfig, EncoderEvent, H264Profile, InputFrame,
};
use ffmpeg_next as ff;

use super::{CodecError, EncoderSettings};
use crate::codec::nvmm::NvmmCodecs;
use crate::frame::Frame;

/// How long the encoder may keep a frame's buffer before the frame is failed.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// The hardware encoder over NVMM frames (module docs).
pub struct NvmmEncoder {
    encoder: Encoder<Box<dyn Device + Send>>,
    width: usize,
    height: usize,
    /// Nominal frame duration in 90 kHz ticks.
    frame_ticks: i64,
    /// Encoder timestamps (90 kHz) of the frames queued, by frame number.
    in_flight: VecDeque<(u64, i64)>,
    /// SPS/PPS (Annex-B) and the stream parameters made of them, from the first IDR.
    extradata: Vec<u8>,
    params: Option<ff::codec::Parameters>,
    eos: bool,
}

impl NvmmEncoder {
    /// Opens the hardware encoder of `codecs` for `width`×`height` frames (even sizes).
    pub(crate) fn open(
        codecs: &NvmmCodecs,
        settings: &EncoderSettings,
        width: usize,
        height: usize,
    ) -> Result<NvmmEncoder, CodecError> {
        let device = codecs
            .encoder_device()
            .ok_or_else(|| CodecError::Nvmm("this module has no hardware encoder".into()))?
            .map_err(CodecError::Nvmm)?;
        let (num, den) = settings.frame_rate;
        let fps = if num > 0 && den > 0 {
            (num as u32, den as u32)
        } else {
            (30, 1)
        };
        let mut config = EncoderConfig::new(
            Codec::H264,
            width as u32,
            height as u32,
            1,
            settings.bitrate_kbps.saturating_mul(1000),
        );
        config.fps = fps;
        config.idr_interval = settings.gop_frames.max(1);
        config.iframe_interval = settings.gop_frames.max(1);
        // One frame at a time is in the encoder (`encode` waits for it); two buffers let
        // the end-of-stream buffer go in beside the last frame.
        config.input_buffers = 2;
        config.h264_profile = match settings.profile {
            Some("baseline") => H264Profile::Baseline,
            Some("main") => H264Profile::Main,
            _ => H264Profile::High,
        };
        let encoder =
            Encoder::open(device, &config).map_err(|e| CodecError::Nvmm(e.to_string()))?;
        Ok(NvmmEncoder {
            encoder,
            width,
            height,
            frame_ticks: (90_000 * fps.1 as i64 / fps.0.max(1) as i64).max(1),
            in_flight: VecDeque::new(),
            extradata: Vec::new(),
            params: None,
            eos: false,
        })
    }

    /// The encoder's name, as the recorder reports it.
    pub fn codec_name(&self) -> &'static str {
        "h264 (V4L2 M2M hardware encoder, NVMM)"
    }

    /// Width and height the encoder was opened for.
    pub fn geometry(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    /// Whether `frame` can be encoded here: its NVMM surface at the encoder's size.
    pub fn accepts(&self, frame: &Frame) -> bool {
        frame
            .device
            .as_ref()
            .is_some_and(|d| d.dmabuf().is_some() && d.size() == (self.width, self.height))
    }

    /// SPS/PPS (Annex-B) once the first IDR is out; empty before.
    pub fn extradata(&self) -> &[u8] {
        &self.extradata
    }

    /// The stream parameters for a muxer, once the first IDR is out.
    pub(crate) fn parameters(&self) -> Option<&ff::codec::Parameters> {
        self.params.as_ref()
    }

    /// Encodes `frame`'s NVMM surface at `pts` (90 kHz ticks; an IDR when `force_key`),
    /// appending the packets that come out to `out`; returns once the encoder has read the
    /// surface. No pixel is copied ([`Frame::copies`] unchanged).
    pub fn encode(
        &mut self,
        frame: &Frame,
        pts: i64,
        force_key: bool,
        out: &mut Vec<ff::Packet>,
    ) -> Result<(), CodecError> {
        let device = frame
            .device
            .as_ref()
            .ok_or_else(|| CodecError::Nvmm(format!("frame {} has no NVMM surface", frame.seq)))?;
        let dmabuf = device.dmabuf().ok_or_else(|| {
            CodecError::Nvmm(format!(
                "frame {}'s pixels are not an NVMM surface",
                frame.seq
            ))
        })?;
        if device.size() != (self.width, self.height) {
            let (w, h) = device.size();
            return Err(CodecError::Geometry {
                got_w: w,
                got_h: h,
                want_w: self.width,
                want_h: self.height,
            });
        }
        // The stages' kernels on the surface finish before the encoder reads it.
        device.gpu().wait_stream()?;
        // SAFETY: the frame's lender keeps the fd open while the frame is lent (`frame` is
        // borrowed for this call); the encoder dups it for as long as it reads.
        let fd = unsafe { BorrowedFd::borrow_raw(dmabuf.fd) };
        let planes = [(fd, dmabuf.plane_bytes[0]), (fd, dmabuf.plane_bytes[1])];
        let number = self.encoder.frames_queued();
        let input = InputFrame {
            planes: &planes,
            pts_us: number,
        };
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self.encoder.try_encode(&input, force_key).map_err(m2m)? {
            self.step(out, deadline, frame.seq)?;
        }
        self.in_flight.push_back((number, pts));
        // The surface is the encoder's until it gives the buffer back.
        loop {
            self.drain(out)?;
            if self.encoder.reclaim().map_err(m2m)?.contains(&number) {
                return Ok(());
            }
            self.step(out, deadline, frame.seq)?;
        }
    }

    /// Ends the stream: every packet the encoder still holds goes to `out`.
    pub fn finish(&mut self, out: &mut Vec<ff::Packet>) -> Result<(), CodecError> {
        let deadline = Instant::now() + READ_TIMEOUT;
        while !self.encoder.try_finish().map_err(m2m)? {
            self.step(out, deadline, u64::MAX)?;
        }
        while !self.eos {
            self.drain(out)?;
            if !self.eos {
                self.step(out, deadline, u64::MAX)?;
            }
        }
        Ok(())
    }

    /// Waits a little for the encoder, failing past `deadline`.
    fn step(
        &mut self,
        out: &mut Vec<ff::Packet>,
        deadline: Instant,
        seq: u64,
    ) -> Result<(), CodecError> {
        if Instant::now() > deadline {
            return Err(CodecError::Nvmm(format!(
                "the hardware encoder kept frame {seq} for more than {} s",
                READ_TIMEOUT.as_secs()
            )));
        }
        self.encoder.wait(10).map_err(m2m)?;
        self.drain(out)
    }

    /// The encoder's packets, as libav packets in the 90 kHz time base.
    fn drain(&mut self, out: &mut Vec<ff::Packet>) -> Result<(), CodecError> {
        while let Some(ev) = self.encoder.poll().map_err(m2m)? {
            let p = match ev {
                EncoderEvent::Packet(p) => p,
                EncoderEvent::EndOfStream => {
                    self.eos = true;
                    return Ok(());
                }
            };
            let pts = match self.in_flight.iter().position(|(n, _)| *n == p.pts_us) {
                Some(i) => self.in_flight.remove(i).expect("index from position").1,
                None => {
                    return Err(CodecError::Nvmm(format!(
                        "the hardware encoder returned a packet for frame {} it was not given",
                        p.pts_us
                    )));
                }
            };
            if p.key_frame && self.params.is_none() {
                self.stream_parameters(&p.data)?;
            }
            let mut pkt = ff::Packet::copy(&p.data);
            pkt.set_pts(Some(pts));
            // No B-frames: decode order is presentation order.
            pkt.set_dts(Some(pts));
            pkt.set_duration(self.frame_ticks);
            if p.key_frame {
                pkt.set_flags(ff::packet::Flags::KEY);
            }
            out.push(pkt);
        }
        Ok(())
    }

    /// The SPS and PPS of the first IDR, and the stream parameters a muxer needs.
    fn stream_parameters(&mut self, idr: &[u8]) -> Result<(), CodecError> {
        self.extradata = parameter_sets(idr).ok_or_else(|| {
            CodecError::Nvmm("the hardware encoder's first IDR carries no SPS and PPS".into())
        })?;
        let mut params = ff::codec::Parameters::new();
        // SAFETY: `params` owns a fresh AVCodecParameters; the extradata buffer is allocated
        // by libav (with its padding) and owned by the parameters from here.
        unsafe {
            let p = &mut *params.as_mut_ptr();
            p.codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
            p.codec_id = ff::ffi::AVCodecID::AV_CODEC_ID_H264;
            p.width = self.width as i32;
            p.height = self.height as i32;
            p.format = ff::ffi::AVPixelFormat::AV_PIX_FMT_YUV420P as i32;
            let n = self.extradata.len();
            let buf =
                ff::ffi::av_mallocz(n + ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize) as *mut u8;
            if buf.is_null() {
                return Err(CodecError::Nvmm("out of memory for the SPS/PPS".into()));
            }
            std::ptr::copy_nonoverlapping(self.extradata.as_ptr(), buf, n);
            p.extradata = buf;
            p.extradata_size = n as i32;
        }
        self.params = Some(params);
        Ok(())
    }
}

/// The SPS and PPS NAL units of an Annex-B access unit, with their start codes, in order;
/// `None` unless both are there.
pub(crate) fn parameter_sets(au: &[u8]) -> Option<Vec<u8>> {
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 3 <= au.len() {
        if au[i..i + 3] == [0, 0, 1] {
            starts.push(i + 3);
            i += 3;
        } else {
            i += 1;
        }
    }
    let mut out = Vec::new();
    let (mut sps, mut pps) = (false, false);
    for (k, &start) in starts.iter().enumerate() {
        let Some(&header) = au.get(start) else {
            continue;
        };
        // This unit ends where the next start code begins, less the zero bytes before it
        // (a 4-byte start code's first, or trailing zeros).
        let mut end = starts.get(k + 1).map_or(au.len(), |&next| next - 3);
        while end > start && au[end - 1] == 0 {
            end -= 1;
        }
        let kind = header & 0x1f;
        if kind == 7 || kind == 8 {
            sps |= kind == 7;
            pps |= kind == 8;
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&au[start..end]);
        }
    }
    (sps && pps).then_some(out)
}

fn m2m(e: aegis_jetson::m2m::M2mError) -> CodecError {
    CodecError::Nvmm(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_sets_come_out_of_an_idr_with_their_start_codes() {
        // An access unit as encoders write them: AUD, SPS, PPS (3-byte start code), IDR.
        let au = [
            0, 0, 0, 1, 0x09, 0xf0, // AUD
            0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, // SPS
            0, 0, 1, 0x68, 0xee, 0x3c, 0x80, // PPS
            0, 0, 0, 1, 0x65, 0x88, 0x84, // IDR slice
        ];
        assert_eq!(
            parameter_sets(&au).unwrap(),
            [
                0, 0, 0, 1, 0x67, 0x64, 0x00, 0x1f, 0, 0, 0, 1, 0x68, 0xee, 0x3c, 0x80
            ]
        );
        // Trailing zeros before the next start code are not part of a unit.
        let padded = [
            0, 0, 1, 0x67, 0x42, 0, 0, 0, 0, 0, 0, 1, 0x68, 0xce, 0, 0, 1, 0x65, 0x88,
        ];
        assert_eq!(
            parameter_sets(&padded).unwrap(),
            [0, 0, 0, 1, 0x67, 0x42, 0, 0, 0, 1, 0x68, 0xce]
        );
        // An IDR without them (or with only one) gives none.
        assert_eq!(parameter_sets(&au[20..]), None);
        assert_eq!(parameter_sets(&au[..14]), None);
        assert_eq!(parameter_sets(&[]), None);
        assert_eq!(parameter_sets(&[0, 0, 1]), None);
    }
}
