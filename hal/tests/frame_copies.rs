//! `Frame::copies` counts the whole-frame pixel copies where they are made: the decoder's
//! picture → the pooled surface (plus one for a conversion to I420), the surface → the
//! encoder's picture; a copy site that does not copy adds nothing.

mod common;

use std::time::Duration;

use aegis_hal::record::{DiskBudget, RecordError, RecorderSettings, SegmentRecorder};
use aegis_hal::source::FileSource;
use aegis_hal::{Frame, FrameLayout, PixelFormat, StreamId, SurfacePool};
use common::*;

fn recorder(dir: &std::path::Path) -> SegmentRecorder {
    SegmentRecorder::new(
        RecorderSettings {
            dir: dir.to_path_buf(),
            stream: StreamId::new("cam"),
            segment: Duration::from_secs(60),
            encoder: encoder(1000, 10),
        },
        DiskBudget::open(dir, u64::MAX).expect("budget"),
    )
}

#[test]
fn decoded_frames_count_one_copy_and_the_encoder_one_more() {
    let dir = tmpdir();
    let clip = dir.path().join("clip.mp4");
    write_clip(&clip, 160, 120, 6, &encoder(1000, 10));
    let mut src = FileSource::open(source_settings(&clip)).expect("open");
    let mut rec = recorder(&dir.path().join("rec"));
    let mut n = 0;
    while let Some(mut f) = src.next_frame().expect("decode") {
        // H.264 4:2:0 needs no conversion: libavcodec's picture → the surface, one copy.
        assert_eq!(f.copies, 1, "frame {n} as decoded");
        // Not on the GPU: nothing to download, nothing counted.
        f.to_host().expect("host frame");
        assert_eq!(f.copies, 1, "frame {n} after a to_host with nothing to do");
        rec.push(&mut f).expect("record");
        assert_eq!(f.copies, 2, "frame {n} after the encoder's input copy");
        n += 1;
    }
    assert_eq!(n, 6);
    rec.finish().expect("finish");
}

#[test]
fn a_frame_the_encoder_refuses_is_not_counted_as_copied() {
    let dir = tmpdir();
    let mut rec = recorder(dir.path());
    // One pixel wide: a 4:2:0 encoder cannot open for it, so nothing is copied into one.
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 1, 16), 1);
    let mut f = Frame::from_pool(&pool, StreamId::new("cam"), 0, 0, FRAME_US).expect("pool");
    assert_eq!(f.copies, 0, "rendered in place: no copy yet");
    let e = rec.push(&mut f).expect_err("1x16 cannot be encoded");
    assert!(matches!(e, RecordError::Codec(_)), "{e}");
    assert_eq!(f.copies, 0, "the encoder refused it before copying");
    // Refused again, fast, and still not counted.
    let e = rec.push(&mut f).expect_err("refused again");
    assert!(matches!(e, RecordError::Unrecordable { .. }), "{e}");
    assert_eq!(f.copies, 0);

    // A frame it takes is counted once per push.
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, 64, 48), 1);
    let mut f = Frame::from_pool(&pool, StreamId::new("cam"), 1, FRAME_US, FRAME_US).unwrap();
    rec.push(&mut f).expect("64x48 records");
    assert_eq!(f.copies, 1);
    rec.finish().expect("finish");
}
