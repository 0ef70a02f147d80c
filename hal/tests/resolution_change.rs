//! A raw H.264 stream that changes resolution mid-way: the source re-creates its pool, and the
//! recorder starts a new encoder and segment.

mod common;

use std::time::Duration;

use aegis_hal::record::{DiskBudget, RecorderSettings, SegmentRecorder};
use aegis_hal::source::FileSource;
use common::*;

const N1: usize = 20;
const N2: usize = 25;

#[test]
fn resolution_change_mid_stream() {
    if !require_tool("ffmpeg") {
        return;
    }
    let dir = tmpdir();
    let mut originals = Vec::new();
    let mut parts = Vec::new();
    for (name, w, h, n) in [("a", 320, 240, N1), ("b", 640, 360, N2)] {
        let mp4 = dir.path().join(format!("{name}.mp4"));
        originals.extend(write_clip(&mp4, w, h, n, &encoder(3000, 10)));
        let raw = dir.path().join(format!("{name}.h264"));
        to_annexb(&mp4, &raw);
        parts.push(std::fs::read(raw).unwrap());
    }
    let both = dir.path().join("both.h264");
    std::fs::write(&both, parts.concat()).unwrap();

    let mut src = FileSource::open(source_settings(&both)).expect("open");
    assert_eq!((src.info().width, src.info().height), (320, 240));
    let first_pool = src.pool().clone();
    assert_eq!(first_pool.layout().width, 320);

    // Keep the last small frame alive across the change: it belongs to the old pool and must
    // go back there safely.
    let mut kept_small = None;
    let mut sizes = Vec::new();
    let mut pts = Vec::new();
    let budget = DiskBudget::open(&dir.path().join("rec"), u64::MAX).unwrap();
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: dir.path().join("rec"),
            stream: aegis_hal::StreamId::new("file"),
            segment: Duration::from_secs(600),
            encoder: encoder(3000, 30),
        },
        budget,
    );
    let mut i = 0;
    while let Some(mut f) = src
        .next_frame()
        .expect("no error across the resolution change")
    {
        let size = (f.layout.width, f.layout.height);
        let expected = if i < N1 { (320, 240) } else { (640, 360) };
        assert_eq!(size, expected, "frame {i}");
        let p = psnr(&originals[i], &luma(&f));
        assert!(p > 30.0, "frame {i} ({size:?}): Y PSNR {p:.1} dB");
        sizes.push(size);
        pts.push(f.pts_us);
        rec.push(&mut f)
            .expect("recorder follows the resolution change");
        if i == N1 - 1 {
            kept_small = Some(f);
        }
        i += 1;
    }
    rec.finish().unwrap();
    let stats = src.stats();
    assert_eq!(sizes.len(), N1 + N2, "{stats:?}");
    assert!(sizes[..N1].iter().all(|&s| s == (320, 240)), "{sizes:?}");
    assert!(sizes[N1..].iter().all(|&s| s == (640, 360)), "{sizes:?}");
    assert!(
        pts.windows(2).all(|p| p[1] > p[0]),
        "pts must keep increasing: {pts:?}"
    );
    assert_eq!(stats.decode.errors, 0, "{stats:?}");
    assert_eq!(stats.read_errors, 0);

    // The source now draws from a new pool of the new geometry; the old one was closed and
    // still takes its frame back.
    assert_eq!(
        (src.pool().layout().width, src.pool().layout().height),
        (640, 360)
    );
    assert!(first_pool.acquire().is_err(), "the old pool is closed");
    let before = first_pool.available();
    drop(kept_small);
    assert_eq!(first_pool.available(), before + 1);

    // The recorder cut a new segment at the change: one per geometry.
    assert_eq!(rec.stats().segments, 2);
    let segs = list_with_suffix(&dir.path().join("rec").join("file"), ".mp4");
    assert_eq!(segs.len(), 2);
    let a = decode_all(&segs[0]);
    let b = decode_all(&segs[1]);
    assert_eq!((a.pts_us.len(), a.sizes[0]), (N1, (320, 240)));
    assert_eq!((b.pts_us.len(), b.sizes[0]), (N2, (640, 360)));
}
