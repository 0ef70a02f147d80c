//! Still pictures: one frame as a JPEG (libavcodec's MJPEG encoder), downscaled to a width
//! limit, for snapshots (fleet `snapshot` command, technician page preview).

use ffmpeg_next as ff;

use super::CodecError;
use crate::frame::{Frame, PixelFormat};
use crate::pixel::{Plane, PlaneMut, nv12_to_i420, scale_i420};

/// Encodes `frame` as a baseline JPEG at most `max_width` pixels wide (aspect kept, even
/// sizes), with quantiser `quality` (2 = best … 31 = smallest).
pub fn encode_jpeg(frame: &Frame, max_width: usize, quality: u32) -> Result<Vec<u8>, CodecError> {
    crate::init();
    let (sw, sh) = (frame.layout.width & !1, frame.layout.height & !1);
    let (dw, dh) = if sw > max_width.max(2) {
        let dw = max_width.max(2) & !1;
        (dw, ((sh * dw / sw.max(1)) & !1).max(2))
    } else {
        (sw, sh)
    };
    if sw == 0 || sh == 0 {
        return Err(CodecError::Geometry {
            got_w: frame.layout.width,
            got_h: frame.layout.height,
            want_w: 2,
            want_h: 2,
        });
    }
    // The frame as I420 at the source size (NV12 de-interleaved), then scaled.
    let [y, p1, p2] = frame.planes();
    let (scw, sch) = (sw / 2, sh / 2);
    let mut tmp = Vec::new();
    let (sy, su, sv) = match frame.layout.format {
        PixelFormat::I420 => (y, p1, p2),
        PixelFormat::Nv12 => {
            tmp.resize(sw * sh + 2 * scw * sch, 0);
            let (ty, rest) = tmp.split_at_mut(sw * sh);
            let (tu, tv) = rest.split_at_mut(scw * sch);
            nv12_to_i420(
                y,
                p1,
                sw,
                sh,
                PlaneMut::new(ty, sw),
                PlaneMut::new(tu, scw),
                PlaneMut::new(tv, scw),
            )?;
            let (ty, rest) = tmp.split_at(sw * sh);
            let (tu, tv) = rest.split_at(scw * sch);
            (Plane::new(ty, sw), Plane::new(tu, scw), Plane::new(tv, scw))
        }
    };
    let (dcw, dch) = (dw / 2, dh / 2);
    let mut out = vec![0u8; dw * dh + 2 * dcw * dch];
    {
        let (oy, rest) = out.split_at_mut(dw * dh);
        let (ou, ov) = rest.split_at_mut(dcw * dch);
        scale_i420(
            (sy, su, sv),
            sw,
            sh,
            (
                PlaneMut::new(oy, dw),
                PlaneMut::new(ou, dcw),
                PlaneMut::new(ov, dcw),
            ),
            dw,
            dh,
        )?;
    }
    let open_err = |e| CodecError::Open {
        codec: "mjpeg".into(),
        source: e,
    };
    let codec = ff::encoder::find(ff::codec::Id::MJPEG).ok_or(CodecError::NoEncoder)?;
    let mut ctx = ff::codec::context::Context::new_with_codec(codec);
    // Limited-range 4:2:0 is "unofficial" JPEG; every decoder reads it (the range is signalled).
    ctx.compliance(ff::codec::Compliance::Unofficial);
    let mut enc = ctx.encoder().video().map_err(open_err)?;
    enc.set_width(dw as u32);
    enc.set_height(dh as u32);
    enc.set_format(ff::format::Pixel::YUV420P);
    enc.set_color_range(ff::color::Range::MPEG);
    enc.set_time_base(ff::Rational(1, 25));
    enc.set_flags(ff::codec::Flags::QSCALE);
    // FF_QP2LAMBDA = 118.
    enc.set_global_quality(quality.clamp(2, 31) as i32 * 118);
    let mut enc = enc.open().map_err(open_err)?;
    let mut pic = ff::frame::Video::new(ff::format::Pixel::YUV420P, dw as u32, dh as u32);
    let planes = [
        (0, dw, dh, 0),
        (1, dcw, dch, dw * dh),
        (2, dcw, dch, dw * dh + dcw * dch),
    ];
    for (i, w, h, offset) in planes {
        let stride = pic.stride(i);
        let data = pic.data_mut(i);
        for r in 0..h {
            data[r * stride..r * stride + w]
                .copy_from_slice(&out[offset + r * w..offset + (r + 1) * w]);
        }
    }
    pic.set_pts(Some(0));
    let encode_err = |e| CodecError::Encode {
        codec: "mjpeg",
        stream: frame.stream.to_string(),
        seq: frame.seq,
        source: e,
    };
    enc.send_frame(&pic).map_err(encode_err)?;
    enc.send_eof().map_err(encode_err)?;
    let mut packet = ff::Packet::empty();
    enc.receive_packet(&mut packet).map_err(encode_err)?;
    Ok(packet.data().unwrap_or_default().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameLayout;
    use crate::{StreamId, SurfacePool};

    #[test]
    fn a_frame_becomes_a_decodable_jpeg_of_the_right_size() {
        for format in [PixelFormat::I420, PixelFormat::Nv12] {
            let pool = SurfacePool::new(FrameLayout::new(format, 1280, 720), 1);
            let mut f = Frame::from_pool(&pool, StreamId::new("s"), 7, 0, 0).unwrap();
            let [y, p1, p2] = f.planes_mut();
            for (i, b) in y.data.iter_mut().enumerate() {
                *b = (i % 251) as u8;
            }
            p1.data.fill(100);
            p2.data.fill(150);
            let jpeg = encode_jpeg(&f, 640, 5).unwrap();
            assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "SOI marker");
            assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "EOI marker");
            // SOF0: ... height (2 bytes), width (2 bytes).
            let sof = jpeg
                .windows(2)
                .position(|w| w == [0xFF, 0xC0])
                .expect("SOF0");
            let h = u16::from_be_bytes([jpeg[sof + 5], jpeg[sof + 6]]);
            let w = u16::from_be_bytes([jpeg[sof + 7], jpeg[sof + 8]]);
            assert_eq!((w, h), (640, 360), "{format:?}");
        }
    }
}
