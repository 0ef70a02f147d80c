//! RTP for the RTSP server: H.264 packetization (RFC 6184, single NAL unit and FU-A:
//! packetization-mode 1), RTCP sender reports (RFC 3550) and the session description
//! (RFC 8866) a client needs to decode.

use std::time::{SystemTime, UNIX_EPOCH};

use aegis_hal::fmp4::{AvcConfig, annexb_nals};
use base64::Engine as _;

/// Largest RTP payload: fits a 1500-byte Ethernet MTU with IP, UDP and RTP headers and an
/// RTSP interleaved frame's 4 bytes.
pub const MAX_PAYLOAD: usize = 1400;
/// The dynamic payload type of the video track.
pub const PAYLOAD_TYPE: u8 = 96;
/// The RTP clock of H.264 (and of the encoder's timestamps).
pub const CLOCK_RATE: u32 = 90_000;

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_AUD: u8 = 9;
const FU_A: u8 = 28;
/// Seconds from 1900 (NTP) to 1970 (Unix).
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// One outgoing RTP stream: sequence numbers, timestamps and the counts a sender report
/// carries.
#[derive(Debug)]
pub struct H264Packetizer {
    ssrc: u32,
    seq: u16,
    /// Added to the encoder's 90 kHz timestamps (a random start, RFC 3550 5.1).
    ts_offset: u32,
    packets: u32,
    octets: u32,
    /// The RTP timestamp and wall-clock time of the last access unit sent.
    last: Option<(u32, SystemTime)>,
}

impl H264Packetizer {
    /// A stream with the given SSRC, first sequence number and timestamp offset (random,
    /// from the caller).
    pub fn new(ssrc: u32, first_seq: u16, ts_offset: u32) -> H264Packetizer {
        H264Packetizer {
            ssrc,
            seq: first_seq,
            ts_offset,
            packets: 0,
            octets: 0,
            last: None,
        }
    }

    /// The SSRC.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    /// The sequence number the next packet gets.
    pub fn next_seq(&self) -> u16 {
        self.seq
    }

    /// The RTP timestamp of a 90 kHz presentation time.
    pub fn rtp_time(&self, pts: i64) -> u32 {
        (pts as u32).wrapping_add(self.ts_offset)
    }

    /// The RTP packets of one access unit (Annex-B) presented at `pts` (90 kHz), handed to
    /// `send` in order; the last carries the marker bit. Access unit delimiters are left
    /// out; a keyframe without its SPS and PPS in band gets `params`' first (so a client
    /// that joins there can decode). Returns the packets made; data that is not Annex-B
    /// makes none.
    pub fn packetize(
        &mut self,
        au: &[u8],
        pts: i64,
        params: Option<&AvcConfig>,
        mut send: impl FnMut(&[u8]),
    ) -> usize {
        let Ok(nals) = annexb_nals(au, "access unit") else {
            return 0;
        };
        let mut units: Vec<&[u8]> = Vec::with_capacity(nals.len() + 2);
        let kinds = || nals.iter().map(|n| n[0] & 0x1f);
        if let Some(p) = params
            && kinds().any(|k| k == NAL_IDR)
            && !kinds().any(|k| k == NAL_SPS)
        {
            units.push(p.sps());
            units.push(p.pps());
        }
        units.extend(nals.iter().copied().filter(|n| n[0] & 0x1f != NAL_AUD));
        let ts = self.rtp_time(pts);
        let mut buf = Vec::with_capacity(12 + MAX_PAYLOAD);
        let mut made = 0;
        for (i, nal) in units.iter().enumerate() {
            let last_nal = i + 1 == units.len();
            if nal.len() <= MAX_PAYLOAD {
                self.header(&mut buf, last_nal, ts);
                buf.extend_from_slice(nal);
                self.count(&buf, &mut send);
                made += 1;
                continue;
            }
            // FU-A: the NAL header's F and NRI bits in the indicator, its type in the FU
            // header, the payload after the header byte in pieces.
            let indicator = (nal[0] & 0xe0) | FU_A;
            let kind = nal[0] & 0x1f;
            let body = &nal[1..];
            let pieces = body.len().div_ceil(MAX_PAYLOAD - 2);
            for (k, piece) in body.chunks(MAX_PAYLOAD - 2).enumerate() {
                let (start, end) = (k == 0, k + 1 == pieces);
                self.header(&mut buf, last_nal && end, ts);
                buf.push(indicator);
                buf.push(u8::from(start) << 7 | u8::from(end) << 6 | kind);
                buf.extend_from_slice(piece);
                self.count(&buf, &mut send);
                made += 1;
            }
        }
        if made > 0 {
            self.last = Some((ts, SystemTime::now()));
        }
        made
    }

    fn header(&mut self, buf: &mut Vec<u8>, marker: bool, ts: u32) {
        buf.clear();
        buf.push(0x80);
        buf.push(u8::from(marker) << 7 | PAYLOAD_TYPE);
        buf.extend_from_slice(&self.seq.to_be_bytes());
        buf.extend_from_slice(&ts.to_be_bytes());
        buf.extend_from_slice(&self.ssrc.to_be_bytes());
        self.seq = self.seq.wrapping_add(1);
    }

    fn count(&mut self, buf: &[u8], send: &mut impl FnMut(&[u8])) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add((buf.len() - 12) as u32);
        send(buf);
    }

    /// An RTCP sender report for `now` (no report blocks), or `None` before the first
    /// packet: the RTP time of `now` is extrapolated from the last access unit sent.
    pub fn sender_report(&self, now: SystemTime) -> Option<[u8; 28]> {
        let (ts, at) = self.last?;
        let ahead = now.duration_since(at).unwrap_or_default();
        let rtp = ts.wrapping_add((ahead.as_secs_f64() * f64::from(CLOCK_RATE)) as u32);
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ntp_secs = (since.as_secs() + NTP_UNIX_OFFSET) as u32;
        let ntp_frac = ((u64::from(since.subsec_nanos()) << 32) / 1_000_000_000) as u32;
        let mut sr = [0u8; 28];
        sr[0] = 0x80;
        sr[1] = 200;
        sr[2..4].copy_from_slice(&6u16.to_be_bytes());
        sr[4..8].copy_from_slice(&self.ssrc.to_be_bytes());
        sr[8..12].copy_from_slice(&ntp_secs.to_be_bytes());
        sr[12..16].copy_from_slice(&ntp_frac.to_be_bytes());
        sr[16..20].copy_from_slice(&rtp.to_be_bytes());
        sr[20..24].copy_from_slice(&self.packets.to_be_bytes());
        sr[24..28].copy_from_slice(&self.octets.to_be_bytes());
        Some(sr)
    }
}

/// The session description of one H.264 stream: packetization mode 1, the profile and
/// level from the SPS, the parameter sets in `sprop-parameter-sets`, the track's control
/// URL `trackID=0` (relative to the stream's URL).
pub fn sdp(stream: &str, avc: &AvcConfig, session_id: u64, server_ip: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let sps = avc.sps();
    let profile = sps
        .get(1..4)
        .map(|p| format!("{:02X}{:02X}{:02X}", p[0], p[1], p[2]))
        .unwrap_or_else(|| "42E01F".into());
    let family = if server_ip.contains(':') {
        "IP6"
    } else {
        "IP4"
    };
    format!(
        "v=0\r\no=- {session_id} 1 IN {family} {server_ip}\r\ns={stream}\r\nc=IN {family} {}\r\nt=0 0\r\na=tool:aegis\r\na=control:*\r\nm=video 0 RTP/AVP {PAYLOAD_TYPE}\r\na=rtpmap:{PAYLOAD_TYPE} H264/{CLOCK_RATE}\r\na=fmtp:{PAYLOAD_TYPE} packetization-mode=1;profile-level-id={profile};sprop-parameter-sets={},{}\r\na=control:trackID=0\r\n",
        if family == "IP6" { "::" } else { "0.0.0.0" },
        b64.encode(sps),
        b64.encode(avc.pps()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reassembles RTP packets of packetization mode 1 into Annex-B, as a receiver does.
    fn depacketize(packets: &[Vec<u8>]) -> (Vec<u8>, Vec<bool>) {
        let mut out = Vec::new();
        let mut markers = Vec::new();
        for p in packets {
            assert_eq!(p[0], 0x80);
            assert_eq!(p[1] & 0x7f, PAYLOAD_TYPE);
            markers.push(p[1] & 0x80 != 0);
            let payload = &p[12..];
            if payload[0] & 0x1f == FU_A {
                if payload[1] & 0x80 != 0 {
                    out.extend_from_slice(&[0, 0, 0, 1, (payload[0] & 0xe0) | (payload[1] & 0x1f)]);
                }
                out.extend_from_slice(&payload[2..]);
            } else {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(payload);
            }
        }
        (out, markers)
    }

    /// Constrained Baseline, as x264 writes it.
    fn avc() -> AvcConfig {
        crate::outputs::test_avc(0x42, 0xc0)
    }

    #[test]
    fn large_units_are_split_and_reassemble_exactly() {
        let mut idr = vec![0x65];
        idr.extend((0..5000u32).map(|i| (i * 7 % 251) as u8 | 1));
        let small = [0x06, 0x05, 0x01, 0x02];
        let mut au = vec![0, 0, 0, 1, 0x09, 0xf0]; // an AUD, left out
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(&small);
        au.extend_from_slice(&[0, 0, 0, 1]);
        au.extend_from_slice(&idr);
        let params = avc();
        let mut p = H264Packetizer::new(0x1234_5678, 65534, 1000);
        let mut packets = Vec::new();
        let n = p.packetize(&au, 3000, Some(&params), |b| packets.push(b.to_vec()));
        assert_eq!(n, packets.len());
        // SPS, PPS, SEI, then the IDR in ceil(5000 / 1398) = 4 fragments.
        assert_eq!(packets.len(), 3 + 4);
        assert!(packets.iter().all(|b| b.len() <= 12 + MAX_PAYLOAD));
        let (annexb, markers) = depacketize(&packets);
        let mut want = vec![0, 0, 0, 1];
        want.extend_from_slice(params.sps());
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(params.pps());
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&small);
        want.extend_from_slice(&[0, 0, 0, 1]);
        want.extend_from_slice(&idr);
        assert_eq!(annexb, want);
        assert_eq!(markers.iter().filter(|m| **m).count(), 1);
        assert!(markers[markers.len() - 1]);
        // Sequence numbers wrap; every packet has the access unit's timestamp.
        let seqs: Vec<u16> = packets
            .iter()
            .map(|b| u16::from_be_bytes([b[2], b[3]]))
            .collect();
        assert_eq!(&seqs[..3], &[65534, 65535, 0]);
        assert!(
            packets
                .iter()
                .all(|b| u32::from_be_bytes([b[4], b[5], b[6], b[7]]) == 4000)
        );
        // A delta frame gets no parameter sets; garbage makes nothing.
        let mut delta = Vec::new();
        assert_eq!(
            p.packetize(&[0, 0, 1, 0x41, 0x9a, 0x02], 6000, Some(&params), |b| delta
                .push(b.to_vec())),
            1
        );
        assert_eq!(delta[0][12], 0x41);
        assert_eq!(p.packetize(b"not annex-b", 9000, None, |_| {}), 0);
    }

    #[test]
    fn sender_report_counts_packets_and_extrapolates_the_clock() {
        let mut p = H264Packetizer::new(7, 0, 0);
        assert!(p.sender_report(SystemTime::now()).is_none());
        let mut sent = 0;
        p.packetize(&[0, 0, 1, 0x65, 1, 2, 3], 90_000, None, |_| sent += 1);
        let (ts, at) = p.last.unwrap();
        let sr = p
            .sender_report(at + std::time::Duration::from_millis(500))
            .unwrap();
        assert_eq!(&sr[..2], &[0x80, 200]);
        assert_eq!(
            u32::from_be_bytes(sr[16..20].try_into().unwrap()),
            ts + 45_000
        );
        assert_eq!(u32::from_be_bytes(sr[20..24].try_into().unwrap()), 1);
        assert_eq!(u32::from_be_bytes(sr[24..28].try_into().unwrap()), 4);
    }

    #[test]
    fn sdp_names_profile_and_parameter_sets() {
        let s = sdp("cam0", &avc(), 42, "192.0.2.1");
        assert!(s.contains("profile-level-id=42C01F"), "{s}");
        assert!(
            s.contains("sprop-parameter-sets=Z0LAH9oBQBboQA==,aM48gA=="),
            "{s}"
        );
        assert!(s.contains("a=control:trackID=0"));
        assert!(s.contains("o=- 42 1 IN IP4 192.0.2.1"));
        assert!(sdp("cam0", &avc(), 1, "::1").contains("c=IN IP6 ::"));
    }
}
