//! DiskBudget: oldest segments deleted past the budget, reopening counts what is on disk, and
//! `.part` segments left by a crash are recovered and still play.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use aegis_hal::record::{DiskBudget, RecorderSettings, SegmentRecorder};
use aegis_hal::source::FileSource;
use aegis_hal::synth::SyntheticScene;
use aegis_hal::{FrameLayout, PixelFormat, StreamId, SurfacePool};
use common::*;

const W: usize = 320;
const H: usize = 240;
/// 5 segments of 1 s at 30 fps, GOP 10 (3 fragments per segment).
const FRAMES: usize = 150;

fn record(root: &Path, budget: &DiskBudget) -> u64 {
    let stream = StreamId::new("cam1");
    let mut rec = SegmentRecorder::new(
        RecorderSettings {
            dir: root.to_path_buf(),
            stream: stream.clone(),
            segment: Duration::from_secs(1),
            encoder: encoder(2000, 10),
        },
        budget.clone(),
    );
    let pool = SurfacePool::new(FrameLayout::new(PixelFormat::I420, W, H), 2);
    let mut scene = SyntheticScene::new(W, H, 3, 5, None);
    for i in 0..FRAMES {
        let mut f = blank_frame(&pool, &stream, i as u64, i as i64 * FRAME_US);
        scene.render(&mut f);
        rec.push(&mut f).expect("push");
    }
    rec.finish().expect("finish");
    rec.stats().segments
}

fn sizes(paths: &[PathBuf]) -> Vec<u64> {
    paths
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .collect()
}

fn index_of(p: &Path) -> String {
    // NAME = cam1-<utc>-<index>.mp4: the index tells segments of two runs apart from the time.
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    name.rsplit('-').next().unwrap().to_string()
}

#[test]
fn disk_budget_deletes_oldest_and_recovers_parts() {
    // Run 1, unlimited budget: learn the segment sizes (x264 with one thread is deterministic).
    let free = tmpdir();
    let b = DiskBudget::open(free.path(), u64::MAX).unwrap();
    assert_eq!(record(free.path(), &b), 5);
    let all = list_with_suffix(&free.path().join("cam1"), ".mp4");
    assert_eq!(all.len(), 5);
    let s = sizes(&all);
    assert_eq!(b.usage(), (s.iter().sum(), 0));

    // Budget below three segments: simulate what the ledger must keep.
    let budget_bytes = s[3] + s[4] + s[2] / 2;
    let mut used = 0;
    let mut kept: std::collections::VecDeque<usize> = Default::default();
    let mut deleted = 0;
    for (i, &sz) in s.iter().enumerate() {
        used += sz;
        kept.push_back(i);
        while used > budget_bytes && kept.len() > 1 {
            used -= s[kept.pop_front().unwrap()];
            deleted += 1;
        }
    }
    assert!(
        deleted >= 3,
        "budget should force at least 3 deletions ({s:?})"
    );

    // Run 2 with the small budget.
    let root = tmpdir();
    let budget = DiskBudget::open(root.path(), budget_bytes).unwrap();
    assert_eq!(budget.usage(), (0, 0));
    assert_eq!(
        record(root.path(), &budget),
        5,
        "segments completed (before deletion)"
    );
    let sdir = root.path().join("cam1");
    let left = list_with_suffix(&sdir, ".mp4");
    let left_idx: Vec<String> = left.iter().map(|p| index_of(p)).collect();
    let want_idx: Vec<String> = kept.iter().map(|&i| format!("{i:06}.mp4")).collect();
    assert_eq!(left_idx, want_idx, "newest segments kept, oldest deleted");
    assert_eq!(
        sizes(&left),
        kept.iter().map(|&i| s[i]).collect::<Vec<_>>(),
        "encode is not deterministic?"
    );
    assert!(
        left_idx.contains(&"000004.mp4".to_string()),
        "the newest segment is always kept"
    );
    let on_disk: u64 = sizes(&left).iter().sum();
    assert_eq!(budget.usage(), (on_disk, deleted), "ledger vs disk");
    assert!(on_disk <= budget_bytes);
    assert_eq!(budget.segments(), left);
    assert!(list_with_suffix(&sdir, ".part").is_empty());

    // Reopening counts what is there (and deletes nothing while inside the budget).
    let reopened = DiskBudget::open(root.path(), budget_bytes).unwrap();
    assert_eq!(reopened.usage(), (on_disk, 0));
    assert_eq!(reopened.segments(), left);

    // A crash left a half-written fragmented segment: a copy of the newest one cut in the
    // middle of its last fragment, named `.part`.
    let newest = left.last().unwrap().clone();
    let full = std::fs::read(&newest).unwrap();
    let full_frames = decode_all(&newest).pts_us.len();
    assert_eq!(full_frames, 30);
    let cut = full.len() * 3 / 4;
    let part = sdir.join("cam1-crashed-000099.mp4.part");
    std::fs::write(&part, &full[..cut]).unwrap();
    // Junk that is not a segment is ignored.
    std::fs::write(sdir.join("notes.txt"), b"not video").unwrap();

    let recovered = DiskBudget::open(root.path(), u64::MAX).unwrap();
    let done = sdir.join("cam1-crashed-000099.mp4");
    assert!(!part.exists(), ".part must be renamed on open");
    assert!(done.exists(), "recovered segment must be named .mp4");
    assert_eq!(recovered.usage(), (on_disk + cut as u64, 0));
    assert_eq!(recovered.segments().len(), left.len() + 1);
    assert!(recovered.segments().contains(&done));

    // It plays up to its last complete fragment (GOP 10 → fragments of 10 frames).
    let src = FileSource::open(source_settings(&done))
        .unwrap_or_else(|e| panic!("recovered segment does not open: {e}"));
    let d = drain(src).expect("recovered segment decodes to a clean end");
    let n = d.pts_us.len();
    eprintln!(
        "recovered segment: {n} of {full_frames} frames, stats {:?}",
        d.stats
    );
    assert!(
        n >= 10,
        "at least the first complete fragment plays ({n} frames)"
    );
    assert!(
        n < full_frames,
        "a truncated file cannot hold every frame ({n})"
    );
    assert!(d.keyframes[0]);
    // Its frames are the original's frames.
    let orig = decode_all(&newest);
    for i in 0..n.min(20) {
        assert!(
            psnr(&orig.lumas[i], &d.lumas[i]) > 40.0,
            "frame {i} differs from the original"
        );
    }

    // A budget of one byte keeps only the newest segment.
    let tight = DiskBudget::open(root.path(), 1).unwrap();
    let remaining = tight.segments();
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert_eq!(list_with_suffix(&sdir, ".mp4"), remaining);
    assert_eq!(
        tight.usage().0,
        std::fs::metadata(&remaining[0]).unwrap().len()
    );
    assert_eq!(tight.usage().1, left.len() as u64);
}

#[test]
fn disk_budget_open_errors_name_the_path() {
    let dir = tmpdir();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    // A regular file where the sink directory should be.
    let e = DiskBudget::open(&file, 1000).unwrap_err();
    assert!(e.to_string().contains("plain-file"), "{e}");
}

#[test]
fn the_budget_deletes_only_its_own_segments_and_follows_no_symlink() {
    // A recordings directory shared with things the recorder never wrote: foreign files in
    // the stream's directory, a symlink posing as a segment, a symlinked "stream" directory
    // pointing outside. A budget far too small must evict only real segments of its own.
    let root = tmpdir();
    let outside = tmpdir();
    let cam = root.path().join("cam1");
    std::fs::create_dir_all(&cam).unwrap();
    let victim = outside.path().join("victim.mp4");
    let far = outside.path().join("cam9");
    std::fs::create_dir_all(&far).unwrap();
    let far_segment = far.join("cam9-20260101T000000Z-0.mp4");
    let foreign = [
        cam.join("notes.mp4"),
        cam.join("other-20260101T000000Z-0.mp4"),
        cam.join("cam1-20260101T000000Z-0.txt"),
    ];
    for f in foreign.iter().chain([&victim, &far_segment]) {
        std::fs::write(f, vec![7u8; 100_000]).unwrap();
    }
    std::os::unix::fs::symlink(&victim, cam.join("cam1-20260101T000000Z-9.mp4")).unwrap();
    std::os::unix::fs::symlink(&far, root.path().join("cam9")).unwrap();

    let budget = DiskBudget::open(root.path(), 1).unwrap();
    assert!(budget.segments().is_empty(), "{:?}", budget.segments());
    assert_eq!(record(root.path(), &budget), 5);
    // Only the newest of its own segments is left; everything else is untouched.
    let kept = budget.segments();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut left = list_with_suffix(&cam, ".mp4");
    left.sort();
    let mut want = vec![
        foreign[0].clone(),
        foreign[1].clone(),
        cam.join("cam1-20260101T000000Z-9.mp4"),
        kept[0].clone(),
    ];
    want.sort();
    assert_eq!(left, want);
    for f in foreign.iter().chain([&victim, &far_segment]) {
        assert_eq!(
            std::fs::metadata(f).map(|m| m.len()).ok(),
            Some(100_000),
            "{f:?}"
        );
    }
    assert!(cam.join("cam1-20260101T000000Z-9.mp4").is_symlink());
}
