//! Decoded layouts the pools do not hold natively (H.264 4:2:2, MJPEG as USB cameras send it,
//! 10-bit) are converted to I420 and still match the original pictures.

mod common;

use common::*;

#[test]
fn non_420_streams_are_converted_to_i420() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = tmpdir();
    let src = dir.path().join("src.mp4");
    let originals = write_clip(&src, 320, 240, 20, &encoder(4000, 10));
    let cases: [(&str, &[&str]); 3] = [
        (
            "h264-422.mp4",
            &["-c:v", "libx264", "-pix_fmt", "yuv422p", "-crf", "10"],
        ),
        (
            "mjpeg-422.mkv",
            &["-c:v", "mjpeg", "-pix_fmt", "yuvj422p", "-q:v", "2"],
        ),
        (
            "h264-10bit.mkv",
            &["-c:v", "libx264", "-pix_fmt", "yuv420p10le", "-crf", "10"],
        ),
    ];
    for (name, args) in cases {
        let out = dir.path().join(name);
        let mut all = vec!["-i", src.to_str().unwrap()];
        all.extend_from_slice(args);
        all.push(out.to_str().unwrap());
        ffmpeg(&all);
        let mut s = aegis_hal::source::FileSource::open(source_settings(&out)).expect("open");
        let mut clip: Option<aegis_hal::record::ClipWriter> = None;
        let mut n = 0;
        while let Some(mut f) = s.next_frame().expect("decodes") {
            assert_eq!(f.layout.format, aegis_hal::PixelFormat::I420, "{name}");
            // Counted by the decoder: the conversion to I420, then into the surface.
            assert_eq!(f.copies, 2, "{name}: conversion is one more copy");
            let p = psnr(&originals[n], &luma(&f));
            assert!(p > 30.0, "{name} frame {n}: Y PSNR {p:.1} dB");
            let w = clip.get_or_insert_with(|| {
                let path = dir.path().join(format!("{name}.out.mp4"));
                aegis_hal::record::ClipWriter::create(&path, &encoder(1000, 10), f.layout)
                    .expect("clip")
            });
            w.push(&mut f).expect("encode");
            assert_eq!(
                f.copies, 3,
                "{name}: the encoder's input copy counted on top"
            );
            n += 1;
        }
        assert_eq!(n, 20, "{name}");
        clip.expect("frames were encoded").finish().expect("finish");
    }
}
